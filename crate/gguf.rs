//! The GGUF container: header, metadata and tensor infos.
//!
//! Layout (little endian; v2 and v3 are identical here, v1 used u32 counts and is refused):
//! ```text
//! magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv × (key: string, value_type: u32, value)
//! n_tensors × (name: string, n_dims u32, dims n_dims×u64 (ne[0] innermost), type u32, offset u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor's offset is relative to the start of this section
//! ```
//! The header is parsed from a byte *prefix*, never from a path: natively that prefix comes
//! from a file, in the browser from the first chunks of a `fetch` stream. A prefix that ends
//! too early gives [`GgufError::Truncated`] so a streaming caller can wait for more bytes.
//!
//! Every count and length in the file is checked against the bytes that remain before
//! anything is allocated, so a corrupt header cannot make us reserve absurd amounts of memory.

use std::collections::BTreeMap;

use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// A tensor may have at most this many dimensions (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Nesting limit for array values, so a malicious file cannot recurse us off the stack.
const MAX_ARRAY_DEPTH: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (magic {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// The header did not fit in the bytes given; `needed` is a lower bound on the prefix length.
    #[error("GGUF header truncated: need at least {needed} bytes, have {have}")]
    Truncated { needed: u64, have: u64 },
    #[error("GGUF header corrupt: {0}")]
    Corrupt(String),
    #[error("tensor '{name}' has unsupported type id {type_id}")]
    UnsupportedTensorType { name: String, type_id: u32 },
    #[error("tensor '{name}' lies past the end of the file ({end} > {file_len} bytes)")]
    TensorOutOfBounds { name: String, end: u64, file_len: u64 },
}

/// One metadata value. Arrays hold values of a single type in the file.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer value that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in u32.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer value that fits in i64 (token types are stored as i32).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any float value, or an integer converted to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// The key/value metadata of a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct Metadata(pub BTreeMap<String, MetaValue>);

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.0.get(key)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(MetaValue::as_u32)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(MetaValue::as_f32)
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }
    pub fn get_array(&self, key: &str) -> Option<&[MetaValue]> {
        self.get(key).and_then(MetaValue::as_array)
    }
}

/// Where one tensor's bytes are, and what they hold.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the contiguous (innermost) dimension, e.g. `[cols, rows]`.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the tensor data section.
    pub offset: u64,
    /// Bytes of data, derived from `dims` and `ty`.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Metadata,
    /// In file order (not necessarily offset order).
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the tensor data section.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parse the header from the first bytes of a GGUF file.
    pub fn parse(prefix: &[u8]) -> Result<Self, GgufError> {
        let mut r = Reader { bytes: prefix, pos: 0 };
        let magic: [u8; 4] = r.array()?;
        if &magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let value_type = r.u32()?;
            let value = r.value(value_type, 0)?;
            metadata.insert(key, value);
        }
        let metadata = Metadata(metadata);

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(GgufError::Corrupt(format!("bad general.alignment {v:?}"))),
            },
        };

        // Each tensor info takes at least 8 (name len) + 4 + 4 + 8 bytes; reject counts
        // the prefix cannot possibly hold before reserving anything.
        let mut tensors = Vec::with_capacity(r.bounded_count(n_tensors, 24)?);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Corrupt(format!("tensor '{name}' has {n_dims} dims")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let type_id = r.u32()?;
            let offset = r.u64()?;
            let ty = GgmlType::from_id(type_id)
                .ok_or_else(|| GgufError::UnsupportedTensorType { name: name.clone(), type_id })?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| GgufError::Corrupt(format!("tensor '{name}' dims {dims:?} overflow")))?;
            let n_bytes = ty.bytes_for(n_elements).ok_or_else(|| {
                GgufError::Corrupt(format!(
                    "tensor '{name}' ({ty:?}, dims {dims:?}) is not a whole number of blocks"
                ))
            })?;
            if offset % alignment != 0 {
                return Err(GgufError::Corrupt(format!(
                    "tensor '{name}' offset {offset} not aligned to {alignment}"
                )));
            }
            offset.checked_add(n_bytes).ok_or_else(|| {
                GgufError::Corrupt(format!("tensor '{name}' offset {offset} overflows"))
            })?;
            tensors.push(TensorInfo { name, dims, ty, offset, n_bytes });
        }
        // Two infos under one name: which one the model gets would be the loader's accident.
        let mut names = std::collections::HashSet::with_capacity(tensors.len());
        if let Some(t) = tensors.iter().find(|t| !names.insert(t.name.as_str())) {
            return Err(GgufError::Corrupt(format!("tensor '{}' appears twice", t.name)));
        }
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        Ok(Self { version, metadata, tensors, alignment, data_offset })
    }

    /// Total file size the tensor infos imply (end of the last tensor).
    /// Saturates at `u64::MAX` (a header that claims more cannot be backed by any file).
    pub fn implied_file_len(&self) -> u64 {
        self.tensors.iter().map(|t| self.tensor_end(t)).max().unwrap_or(self.data_offset)
    }

    /// Absolute file offset just past `t`'s data (saturating, as above).
    pub fn tensor_end(&self, t: &TensorInfo) -> u64 {
        self.data_offset.saturating_add(t.offset).saturating_add(t.n_bytes)
    }

    /// Check every tensor lies within a file of `file_len` bytes.
    pub fn check_bounds(&self, file_len: u64) -> Result<(), GgufError> {
        for t in &self.tensors {
            let end = self.tensor_end(t);
            if end > file_len {
                return Err(GgufError::TensorOutOfBounds { name: t.name.clone(), end, file_len });
            }
        }
        Ok(())
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// A cursor over the header prefix; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8], GgufError> {
        let have = self.bytes.len() as u64;
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= have).ok_or(
            GgufError::Truncated { needed: (self.pos as u64).saturating_add(n), have },
        )?;
        let s = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A declared element count, refused when even `min_item_bytes` per element could not
    /// fit in what remains: such a count is either corrupt or the prefix is too short.
    fn bounded_count(&self, n: u64, min_item_bytes: u64) -> Result<usize, GgufError> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        match n.checked_mul(min_item_bytes) {
            Some(total) if total <= remaining => Ok(n as usize),
            total => Err(GgufError::Truncated {
                needed: (self.pos as u64).saturating_add(total.unwrap_or(u64::MAX)),
                have: self.bytes.len() as u64,
            }),
        }
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        // llama.cpp tolerates invalid UTF-8 in token strings; so do we, lossily.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<MetaValue, GgufError> {
        Ok(match value_type {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(GgufError::Corrupt(format!("bool value {b}"))),
            },
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Corrupt("arrays nested too deeply".into()));
                }
                let item_type = self.u32()?;
                let n = self.u64()?;
                let min_item = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(GgufError::Corrupt(format!("unknown array item type {t}"))),
                };
                let mut items = Vec::with_capacity(self.bounded_count(n, min_item)?);
                for _ in 0..n {
                    items.push(self.value(item_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(GgufError::Corrupt(format!("unknown metadata value type {t}"))),
        })
    }
}
