//! GGML tensor types: block layouts, CPU dequantization (the reference every fast path
//! must match) and the quantized matrix-vector kernels the CPU backend runs on.
//!
//! Layout of this file:
//! 1. [`GgmlType`]: the type ids and block sizes GGUF files store.
//! 2. f16 / bf16 conversion.
//! 3. One `#[repr(C)]` struct per block format with its reference dequantization,
//!    following the semantics of ggml's `dequantize_row_*` (ggml-quants.c).
//! 4. [`dequantize`]: bytes of any type to f32.
//! 5. [`QMatrix`]: a 2-D weight kept quantized, with `matvec` (decode) and `matmul`
//!    (prefill) kernels, and [`QMatrix::mul`], which runs the kernels [`CpuKernels`] picks.
//! 6. The f32 kernels, instantiated once portably and once for AVX2+FMA.
//! 7. [`int8`]: the int8 kernels (8-bit activations, integer dot products) for decode and
//!    prefill.
//!
//! Numerics of the f32 kernels (`matvec`, `matmul`, the reference): activations stay f32;
//! every kernel dequantizes a weight block exactly as the reference does and takes an f32
//! dot product with it, so a kernel's result differs from `dequantize` + a naive f32 dot
//! only in summation order (and in fused multiply-adds rounding once instead of twice).
//! The int8 kernels quantize the activations to 8 bits first, as llama.cpp does; their
//! added error is bounded in [`int8`]'s comment.

// The kernels index fixed-size arrays in counted loops on purpose: that is the shape
// LLVM's vectorizers handle best (see the comments at `sum_lanes` and `dot_tile`).
#![allow(clippy::needless_range_loop)]

use bytemuck::{Pod, Zeroable};
use half::f16;

use crate::bytes::AlignedBytes;

// Blocks are read by casting little-endian file bytes onto these structs.
#[cfg(target_endian = "big")]
compile_error!("pensive reads GGUF data in place and only supports little-endian targets");

// ======================================================================================
// GGML types
// ======================================================================================

/// A GGML tensor type, with the numeric ids GGUF files store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    BF16,
}

impl GgmlType {
    /// Every type Pensive runs.
    pub const ALL: [GgmlType; 11] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// The type for a GGUF `ggml_type` id, or `None` for types Pensive does not run.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub const fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// Bytes taken by `n_elements` elements, or `None` if `n_elements` is not a whole
    /// number of blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let block = self.block_len() as u64;
        if n_elements % block != 0 {
            return None;
        }
        (n_elements / block).checked_mul(self.block_bytes() as u64)
    }

    /// Whether this is one of the block-quantized formats (not F32/F16/BF16).
    pub const fn is_quantized(self) -> bool {
        !matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }
}

/// Errors from dequantizing bytes or building a [`QMatrix`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{ty:?}: {elements} elements is not a whole number of {block_len}-element blocks")]
    ElementsNotBlockMultiple { ty: GgmlType, elements: usize, block_len: usize },
    #[error("{ty:?}: {elements} elements take {expected} bytes, got {actual}")]
    ByteLength { ty: GgmlType, elements: usize, expected: usize, actual: usize },
    #[error("{ty:?}: {cols} columns is not a multiple of the block length {block_len}")]
    ColsNotBlockMultiple { ty: GgmlType, cols: usize, block_len: usize },
    #[error("{ty:?} matrix of {rows}x{cols} needs {expected} bytes, got {actual}")]
    MatrixBytes { ty: GgmlType, rows: usize, cols: usize, expected: usize, actual: usize },
    #[error("{ty:?} matrix of {rows}x{cols} is too large to address")]
    MatrixTooLarge { ty: GgmlType, rows: usize, cols: usize },
    #[error("row {row} is out of range for a matrix of {rows} rows")]
    RowOutOfRange { row: usize, rows: usize },
    #[error("output holds {actual} values but a row has {expected}")]
    RowOutputLength { expected: usize, actual: usize },
}

// ======================================================================================
// f16 / bf16
// ======================================================================================

/// IEEE half → f32, exact for every bit pattern (subnormals, ±inf, NaN payloads).
///
/// Branch-free so that it inlines into the kernels' per-block code: `half::f16::to_f32`
/// checks for F16C at run time on every call. The trick: place the f16 exponent and
/// mantissa where an f32's go and multiply by 2^112 (the difference of the exponent
/// biases, 127 - 15). Normal values are rescaled exactly; f16 subnormals land on f32
/// subnormals and the multiply normalizes them exactly; exponent 31 (inf/NaN) comes out
/// at >= 2^16 and gets the all-ones f32 exponent, keeping the mantissa (NaN payload).
#[inline(always)]
pub fn f16_bits_to_f32(bits: u16) -> f32 {
    const TWO_POW_112: f32 = f32::from_bits((127 + 112) << 23);
    const F16_INF_RESCALED: f32 = 65536.0; // 2^16: the smallest f16 exponent-31 value, rescaled
    let magnitude = f32::from_bits(((bits & 0x7fff) as u32) << 13) * TWO_POW_112;
    let inf_nan = if magnitude >= F16_INF_RESCALED { 0x7f80_0000 } else { 0 };
    f32::from_bits(magnitude.to_bits() | inf_nan | (((bits & 0x8000) as u32) << 16))
}

/// [`f16_bits_to_f32`] for a `half::f16`.
#[inline(always)]
pub fn f16_to_f32(h: f16) -> f32 {
    f16_bits_to_f32(h.to_bits())
}

/// bfloat16 → f32: bf16 is the top half of an f32, so this is exact.
#[inline(always)]
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

// ======================================================================================
// Block formats and their reference dequantization
// ======================================================================================

/// Weights per chunk: the unit every block dequantizes in (a Q*_0/Q*_1 block is one
/// chunk, a K-quant super-block eight). Fixed-size `[f32; 32]` chunks are what lets the
/// kernels auto-vectorize: each becomes four 8-lane (or eight 4-lane) registers.
pub const CHUNK: usize = 32;

/// A GGML quantization block: `LEN` weights stored in `size_of::<Self>()` bytes.
///
/// `dequantize_chunk` is the reference: it reproduces ggml's `dequantize_row_*` (and the
/// gguf Python package's `dequantize_blocks`) bit for bit, with the same order of f32
/// operations and no fused multiply-adds. Every fast path dequantizes through it.
pub trait QuantBlock: Pod + Zeroable + Send + Sync {
    /// The GGUF type this block stores.
    const TYPE: GgmlType;
    /// Weights per block, a multiple of [`CHUNK`].
    const LEN: usize;

    /// Write weights `CHUNK * i .. CHUNK * (i + 1)` of the block (`i < LEN / CHUNK`).
    fn dequantize_chunk(&self, i: usize, out: &mut [f32; CHUNK]);

    /// Write the block's `LEN` weights to `out[..LEN]`. Panics if `out` is shorter.
    #[inline(always)]
    fn dequantize(&self, out: &mut [f32]) {
        for (i, out) in out[..Self::LEN].chunks_exact_mut(CHUNK).enumerate() {
            let mut chunk = [0.0; CHUNK];
            self.dequantize_chunk(i, &mut chunk);
            out.copy_from_slice(&chunk);
        }
    }
}

/// Q4_0: 32 weights, `w = d * (q - 8)` with 4-bit q. Byte j of `qs` holds weight j in its
/// low nibble and weight j + 16 in its high nibble (not j, j+1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// (16,) u8: nibbles of weights (j, j + 16).
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == GgmlType::Q4_0.block_bytes());

impl QuantBlock for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const LEN: usize = 32;
    #[inline(always)]
    fn dequantize_chunk(&self, _: usize, out: &mut [f32; CHUNK]) {
        let d = f16_to_f32(self.d);
        for j in 0..16 {
            out[j] = ((self.qs[j] & 0x0f) as i32 - 8) as f32 * d;
        }
        for j in 0..16 {
            out[j + 16] = ((self.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1: 32 weights, `w = d * q + m` with 4-bit q; nibble order as in Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum).
    pub m: f16,
    /// (16,) u8: nibbles of weights (j, j + 16).
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == GgmlType::Q4_1.block_bytes());

impl QuantBlock for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const LEN: usize = 32;
    #[inline(always)]
    fn dequantize_chunk(&self, _: usize, out: &mut [f32; CHUNK]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        for j in 0..16 {
            out[j] = (self.qs[j] & 0x0f) as f32 * d + m;
        }
        for j in 0..16 {
            out[j + 16] = (self.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// Q5_0: 32 weights, `w = d * (q - 16)` with 5-bit q. The low 4 bits are nibbles as in
/// Q4_0; the fifth bit of weight j is bit j of `qh` read as a little-endian u32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// (4,) u8: little-endian u32, bit j = fifth bit of weight j.
    pub qh: [u8; 4],
    /// (16,) u8: low nibbles of weights (j, j + 16).
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == GgmlType::Q5_0.block_bytes());

impl QuantBlock for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const LEN: usize = 32;
    #[inline(always)]
    fn dequantize_chunk(&self, _: usize, out: &mut [f32; CHUNK]) {
        let d = f16_to_f32(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let q = (self.qs[j] & 0x0f) as u32 | (((qh >> j) & 1) << 4);
            out[j] = (q as i32 - 16) as f32 * d;
        }
        for j in 0..16 {
            let q = (self.qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
            out[j + 16] = (q as i32 - 16) as f32 * d;
        }
    }
}

/// Q5_1: 32 weights, `w = d * q + m` with 5-bit q; bits as in Q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum).
    pub m: f16,
    /// (4,) u8: little-endian u32, bit j = fifth bit of weight j.
    pub qh: [u8; 4],
    /// (16,) u8: low nibbles of weights (j, j + 16).
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == GgmlType::Q5_1.block_bytes());

impl QuantBlock for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const LEN: usize = 32;
    #[inline(always)]
    fn dequantize_chunk(&self, _: usize, out: &mut [f32; CHUNK]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let q = (self.qs[j] & 0x0f) as u32 | (((qh >> j) & 1) << 4);
            out[j] = q as f32 * d + m;
        }
        for j in 0..16 {
            let q = (self.qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
            out[j + 16] = q as f32 * d + m;
        }
    }
}

/// Q8_0: 32 weights, `w = d * q` with signed 8-bit q.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// (32,) i8: the weights, in order.
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == GgmlType::Q8_0.block_bytes());

impl QuantBlock for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const LEN: usize = 32;
    #[inline(always)]
    fn dequantize_chunk(&self, _: usize, out: &mut [f32; CHUNK]) {
        let d = f16_to_f32(self.d);
        for j in 0..32 {
            out[j] = self.qs[j] as f32 * d;
        }
    }
}

/// Scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block: eight 6-bit scales
/// and eight 6-bit mins packed into 12 bytes (ggml's `get_scale_min_k4`). Bytes 0..4 hold
/// scales 0..4 in their low 6 bits, bytes 4..8 the mins 0..4; sub-blocks 4..8 take their
/// low 4 bits from the nibbles of bytes 8..12 (scale low, min high) and their top 2 bits
/// from the spare top bits of bytes 0..4 (scales) and 4..8 (mins).
#[inline(always)]
pub fn k_scale_min(j: usize, scales: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let scale = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
        let min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (scale, min)
    }
}

/// Q4_K: a 256-weight super-block of eight 32-weight sub-blocks; sub-block s has
/// `w = (d * scale_s) * q - (dmin * min_s)` with 4-bit q and 6-bit scale/min
/// ([`k_scale_min`]). Each 32 bytes of `qs` serve two consecutive sub-blocks: low nibbles
/// sub-block 2i, high nibbles sub-block 2i + 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_K {
    /// Super-block scale of the sub-block scales.
    pub d: f16,
    /// Super-block scale of the sub-block mins.
    pub dmin: f16,
    /// (12,) u8: eight packed 6-bit (scale, min) pairs, see [`k_scale_min`].
    pub scales: [u8; 12],
    /// (4, 32) u8: nibbles of sub-blocks (2i, 2i + 1).
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ4_K>() == GgmlType::Q4_K.block_bytes());

impl QuantBlock for BlockQ4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const LEN: usize = 256;
    #[inline(always)]
    fn dequantize_chunk(&self, s: usize, out: &mut [f32; CHUNK]) {
        let (scale, min) = k_scale_min(s, &self.scales);
        let d = f16_to_f32(self.d) * scale as f32;
        let m = f16_to_f32(self.dmin) * min as f32;
        let qs = &self.qs[32 * (s / 2)..32 * (s / 2) + 32];
        let shift = 4 * (s % 2);
        for l in 0..32 {
            out[l] = d * ((qs[l] >> shift) & 0x0f) as f32 - m;
        }
    }
}

/// Q5_K: Q4_K plus a fifth bit per weight: bit s of `qh[l]` is the fifth bit of weight l
/// of sub-block s, so `w = (d * scale_s) * (q + 16 * bit) - (dmin * min_s)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_K {
    /// Super-block scale of the sub-block scales.
    pub d: f16,
    /// Super-block scale of the sub-block mins.
    pub dmin: f16,
    /// (12,) u8: eight packed 6-bit (scale, min) pairs, see [`k_scale_min`].
    pub scales: [u8; 12],
    /// (32,) u8: bit s of byte l = fifth bit of weight l of sub-block s.
    pub qh: [u8; 32],
    /// (4, 32) u8: low nibbles of sub-blocks (2i, 2i + 1).
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ5_K>() == GgmlType::Q5_K.block_bytes());

impl QuantBlock for BlockQ5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const LEN: usize = 256;
    #[inline(always)]
    fn dequantize_chunk(&self, s: usize, out: &mut [f32; CHUNK]) {
        let (scale, min) = k_scale_min(s, &self.scales);
        let d = f16_to_f32(self.d) * scale as f32;
        let m = f16_to_f32(self.dmin) * min as f32;
        let qs = &self.qs[32 * (s / 2)..32 * (s / 2) + 32];
        let shift = 4 * (s % 2);
        for l in 0..32 {
            let q = ((qs[l] >> shift) & 0x0f) | (((self.qh[l] >> s) & 1) << 4);
            out[l] = d * q as f32 - m;
        }
    }
}

/// Q6_K: 256 weights in sixteen 16-weight groups, `w = (d * scale_g) * (q - 32)` with
/// 6-bit q and a signed 8-bit scale per group. Each 128-weight half h reads 64 bytes of
/// `ql` and 32 of `qh`: weight h*128 + 32k + l (k = 0..4, l = 0..32) takes its low 4 bits
/// from `ql[h*64 + 32*(k % 2) + l]` (low nibble for k < 2, high for k >= 2) and its top 2
/// bits from bits 2k, 2k+1 of `qh[h*32 + l]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6_K {
    /// (2, 64) u8: low 4 bits, see the type's comment.
    pub ql: [u8; 128],
    /// (2, 32) u8: top 2 bits, four weights per byte.
    pub qh: [u8; 64],
    /// (16,) i8: one scale per 16 consecutive weights.
    pub scales: [i8; 16],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6_K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ6_K>() == GgmlType::Q6_K.block_bytes());

impl QuantBlock for BlockQ6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const LEN: usize = 256;
    #[inline(always)]
    fn dequantize_chunk(&self, i: usize, out: &mut [f32; CHUNK]) {
        let (h, k) = (i / 4, i % 4);
        let d = f16_to_f32(self.d);
        let ql = &self.ql[64 * h + 32 * (k % 2)..64 * h + 32 * (k % 2) + 32];
        let qh = &self.qh[32 * h..32 * h + 32];
        let (shift_l, shift_h) = (4 * (k / 2), 2 * k);
        // Weights 0..16 and 16..32 of the chunk are two scale groups: 2i and 2i + 1.
        for (g, out) in out.chunks_exact_mut(16).enumerate() {
            let scale = d * self.scales[2 * i + g] as f32;
            for (l, out) in (16 * g..16 * g + 16).zip(out) {
                let q = ((ql[l] >> shift_l) & 0x0f) | (((qh[l] >> shift_h) & 3) << 4);
                *out = scale * (q as i32 - 32) as f32;
            }
        }
    }
}

/// Runs `$quant` with `$B` aliased to the block struct of a quantized `$ty`, or `$dense`
/// for F32/F16/BF16: the one place that maps types to block structs.
macro_rules! match_block_type {
    ($ty:expr, $B:ident => $quant:expr, dense => $dense:expr) => {
        match $ty {
            GgmlType::Q4_0 => {
                type $B = BlockQ4_0;
                $quant
            }
            GgmlType::Q4_1 => {
                type $B = BlockQ4_1;
                $quant
            }
            GgmlType::Q5_0 => {
                type $B = BlockQ5_0;
                $quant
            }
            GgmlType::Q5_1 => {
                type $B = BlockQ5_1;
                $quant
            }
            GgmlType::Q8_0 => {
                type $B = BlockQ8_0;
                $quant
            }
            GgmlType::Q4_K => {
                type $B = BlockQ4_K;
                $quant
            }
            GgmlType::Q5_K => {
                type $B = BlockQ5_K;
                $quant
            }
            GgmlType::Q6_K => {
                type $B = BlockQ6_K;
                $quant
            }
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => $dense,
        }
    };
}

pub mod int8;
// Natively only its test (rayon runs the native pool); wasm32 without threads has no rayon.
#[cfg(any(all(test, not(target_arch = "wasm32")), all(target_arch = "wasm32", feature = "wasm-threads")))]
mod spin;

// ======================================================================================
// dequantize: bytes of any type → f32
// ======================================================================================

/// Dequantize `bytes` of type `ty` into `out`, with the reference semantics.
///
/// `bytes` must be exactly the encoding of `out.len()` elements (a whole number of
/// blocks). It may sit at any address: blocks are read unaligned when needed.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let block_len = ty.block_len();
    if out.len() % block_len != 0 {
        return Err(QuantError::ElementsNotBlockMultiple { ty, elements: out.len(), block_len });
    }
    let expected = out.len() / block_len * ty.block_bytes();
    if bytes.len() != expected {
        return Err(QuantError::ByteLength { ty, elements: out.len(), expected, actual: bytes.len() });
    }
    match_block_type!(ty,
        B => dequantize_blocks::<B>(bytes, out),
        dense => dequantize_dense(ty, bytes, out));
    Ok(())
}

/// Reference dequantization of whole blocks; lengths are already checked.
fn dequantize_blocks<B: QuantBlock>(bytes: &[u8], out: &mut [f32]) {
    match bytemuck::try_cast_slice::<u8, B>(bytes) {
        Ok(blocks) => {
            for (block, out) in blocks.iter().zip(out.chunks_exact_mut(B::LEN)) {
                block.dequantize(out);
            }
        }
        // Misaligned (a GGUF tensor at an odd offset in a plain byte slice): copy each block out.
        Err(_) => {
            let size = std::mem::size_of::<B>();
            for (raw, out) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(B::LEN)) {
                bytemuck::pod_read_unaligned::<B>(raw).dequantize(out);
            }
        }
    }
}

/// F32/F16/BF16 little-endian bytes to f32; lengths are already checked.
fn dequantize_dense(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (raw, out) in bytes.chunks_exact(4).zip(out) {
                *out = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            }
        }
        GgmlType::F16 => {
            for (raw, out) in bytes.chunks_exact(2).zip(out) {
                *out = f16_bits_to_f32(u16::from_le_bytes([raw[0], raw[1]]));
            }
        }
        GgmlType::BF16 => {
            for (raw, out) in bytes.chunks_exact(2).zip(out) {
                *out = bf16_bits_to_f32(u16::from_le_bytes([raw[0], raw[1]]));
            }
        }
        _ => unreachable!("dequantize_dense is only called for dense types"),
    }
}

// ======================================================================================
// QMatrix: a quantized 2-D weight
// ======================================================================================

/// A row-major 2-D weight of `rows` x `cols`, kept in its GGUF encoding.
///
/// GGUF lists dims fastest-first, so a tensor with dims `[cols, rows]` (ne[0] = cols
/// contiguous) is this matrix; in a linear layer `y = W x`, rows = out features,
/// cols = in features. Each row is `cols / block_len` whole blocks, so rows start on
/// block boundaries.
#[derive(Clone, Debug)]
pub struct QMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// (rows, cols / block_len) blocks of `ty`; row r is bytes [r * row_bytes, (r + 1) * row_bytes).
    data: AlignedBytes,
}

impl QMatrix {
    /// Wrap `data`, the `rows` x `cols` encoding of a `ty` tensor.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: AlignedBytes) -> Result<Self, QuantError> {
        let block_len = ty.block_len();
        if cols % block_len != 0 {
            return Err(QuantError::ColsNotBlockMultiple { ty, cols, block_len });
        }
        let expected = (cols / block_len)
            .checked_mul(ty.block_bytes())
            .and_then(|row_bytes| row_bytes.checked_mul(rows))
            .ok_or(QuantError::MatrixTooLarge { ty, rows, cols })?;
        if data.len() != expected {
            return Err(QuantError::MatrixBytes { ty, rows, cols, expected, actual: data.len() });
        }
        Ok(Self { ty, rows, cols, data })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw encoding, (rows, row_bytes) u8.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// The aligned buffer itself (e.g. to upload it to a GPU without copying).
    pub fn data(&self) -> &AlignedBytes {
        &self.data
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_len() * self.ty.block_bytes()
    }

    /// The blocks, (rows, cols / B::LEN), if this matrix's type is `B::TYPE`.
    pub fn blocks<B: QuantBlock>(&self) -> Option<&[B]> {
        if B::TYPE != self.ty {
            return None;
        }
        // `new` checked the length against the block size and AlignedBytes is 8-aligned,
        // so the cast cannot fail; `.ok()` keeps it panic-free regardless.
        bytemuck::try_cast_slice(self.data.as_slice()).ok()
    }

    /// Dequantize row `row` into `out` (cols,): an embedding lookup.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if row >= self.rows {
            return Err(QuantError::RowOutOfRange { row, rows: self.rows });
        }
        if out.len() != self.cols {
            return Err(QuantError::RowOutputLength { expected: self.cols, actual: out.len() });
        }
        let row_bytes = self.row_bytes();
        dequantize(self.ty, &self.bytes()[row * row_bytes..(row + 1) * row_bytes], out)
    }

    /// `y = W x`: x (cols,), y (rows,), `y[r] = sum_c W[r, c] x[c]`. The decode step.
    ///
    /// # Panics
    /// If `x.len() != cols` or `y.len() != rows` (a caller bug: the model checks weight
    /// shapes when it loads them).
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "matvec: x has {} values, W has {} columns", x.len(), self.cols);
        assert_eq!(y.len(), self.rows, "matvec: y has {} values, W has {} rows", y.len(), self.rows);
        if self.cols == 0 {
            y.fill(0.0);
            return;
        }
        parallel_rows(y, 1, self.cols, 1, |row0, y| kernels::matvec_rows(self, row0, x, y));
    }

    /// `Y = X W^T`: x (n, cols) row-major, y (n, rows), n = x.len() / cols. The prefill step.
    ///
    /// Dequantizes a panel of [`kernels::PANEL_ROWS`] weight rows once and reuses it for
    /// all n activation rows, so dequantization cost is paid once per weight, not n times.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of `cols` or `y.len() != n * rows`.
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) {
        if self.cols == 0 {
            assert!(x.is_empty(), "matmul: W has no columns but x has {} values", x.len());
            y.fill(0.0);
            return;
        }
        assert_eq!(x.len() % self.cols, 0, "matmul: x has {} values, not a multiple of {} columns", x.len(), self.cols);
        let n = x.len() / self.cols;
        assert_eq!(y.len(), n * self.rows, "matmul: y has {} values, expected {n} x {}", y.len(), self.rows);
        match n {
            0 => {}
            1 => self.matvec(x, y),
            _ => rows_transposed(y, self.rows, n, self.cols, kernels::PANEL_ROWS, |row0, yt| {
                kernels::matmul_rows(self, row0, x, n, yt)
            }),
        }
    }
}

/// Which kernels the CPU backend multiplies activations by quantized weights with
/// (`LoadOptions::cpu_kernels`, `pensive --cpu-kernels`). F32/F16/BF16 weights always take
/// the f32 kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuKernels {
    /// f32 activations times dequantized weights ([`QMatrix::matmul`]): the reference the
    /// int8 kernels' tolerances are measured against.
    F32,
    /// 8-bit activations times integer weights ([`int8`]), as llama.cpp, for decode and
    /// prefill alike: the default. Every row's result is the same whether it is computed
    /// alone or in a batch, so a request that reuses a cached prefix equals a fresh one.
    /// Faster than
    /// [`CpuKernels::F32`] in decode (1.26-1.3x natively on SmolLM2 and Qwen2.5-0.5B) and
    /// as fast in prefill; the activations' 8-bit rounding moves logits further from
    /// transformers' f32 (tests/model_real.rs states how far) while every decisive token
    /// still equals llama.cpp's, which rounds the same way.
    #[default]
    Int8,
}

/// Activations x (n, cols) prepared once for every weight that multiplies them (q, k and v
/// share one input, gate and up another): for the int8 kernels, quantized to 8 bits once,
/// on first use, in the scheme each weight family takes, instead of once per matrix.
pub struct Activations<'a> {
    /// (n, cols) f32.
    x: &'a [f32],
    cols: usize,
    kernels: CpuKernels,
    /// x in 32-value blocks, for the 32-value weight formats.
    q8: std::sync::OnceLock<int8::Q8Rows>,
    /// x in 256-value blocks, for the K-quants.
    q8k: std::sync::OnceLock<int8::Q8KRows>,
}

impl<'a> Activations<'a> {
    /// `x` (n, cols) for `kernels`.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of `cols` (a caller bug).
    pub fn new(x: &'a [f32], cols: usize, kernels: CpuKernels) -> Self {
        assert!(cols > 0 && x.len() % cols == 0, "activations: {} values are not rows of {cols}", x.len());
        Self { x, cols, kernels, q8: std::sync::OnceLock::new(), q8k: std::sync::OnceLock::new() }
    }

    /// The f32 values, (n, cols).
    pub fn f32(&self) -> &[f32] {
        self.x
    }
}

/// Weight rows a prefill kernel computes into a small buffer before they go into y
/// ([`rows_transposed`]); a multiple of every kernel's row alignment.
const MUL_PANEL: usize = 32;

/// Prefill's `Y = X W^T`, y (n, rows): threads split the weight rows, and
/// `kernel(row0, yt)` writes a (weight rows, n) block of Y^T, MUL_PANEL rows at a time into
/// a small buffer whose values go to y's columns while they are in cache (a whole Y^T and
/// its transpose cost ~5% of a prefill). Ranges start at multiples of `row_align`, which
/// must divide MUL_PANEL, so every kernel call starts on one too.
fn rows_transposed<F>(y: &mut [f32], rows: usize, n: usize, cols: usize, row_align: usize, kernel: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    debug_assert!(y.len() == n * rows && MUL_PANEL.is_multiple_of(row_align.max(1)));
    let out = SyncPtr(y.as_mut_ptr());
    parallel_ranges(rows, n * cols, row_align, |first, count| {
        let mut panel = vec![0.0f32; MUL_PANEL.min(count) * n];
        for p0 in (first..first + count).step_by(MUL_PANEL) {
            let pr = MUL_PANEL.min(first + count - p0);
            let yt = &mut panel[..pr * n];
            kernel(p0, yt);
            // SAFETY: p0 + pr <= first + count <= rows: the panel's elements lie inside y
            // (n * rows values), and this range's rows are its own, so no other task
            // touches them.
            unsafe { scatter_panel(yt, pr, n, out.get().add(p0), rows) };
        }
    });
}

/// `y[j * stride + i] = yt[i * n + j]` for i < pr, j < n: a (pr, n) panel written
/// transposed into y's columns. On x86_64 in 4 x 4 blocks (four vector stores each): scalar
/// stores to n rows' lines, each line fetched before it is written, filled the store buffer.
///
/// # Safety
/// y must be valid for writes at every `j * stride + i`.
unsafe fn scatter_panel(yt: &[f32], pr: usize, n: usize, y: *mut f32, stride: usize) {
    debug_assert!(yt.len() >= pr * n);
    // Panel rows written so far.
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    #[cfg(target_arch = "x86_64")]
    let done = {
        use std::arch::x86_64::*;
        let (pi, pj) = (pr / 4 * 4, n / 4 * 4);
        for i in (0..pi).step_by(4) {
            for j in (0..pj).step_by(4) {
                let mut r: [__m128; 4] = std::array::from_fn(|k| _mm_loadu_ps(yt[(i + k) * n + j..][..4].as_ptr()));
                let [r0, r1, r2, r3] = &mut r;
                _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                for (k, v) in r.into_iter().enumerate() {
                    _mm_storeu_ps(y.add((j + k) * stride + i), v);
                }
            }
        }
        // Columns past the last block of four; rows past it go below.
        for i in 0..pi {
            for j in pj..n {
                *y.add(j * stride + i) = yt[i * n + j];
            }
        }
        pi
    };
    for i in done..pr {
        for j in 0..n {
            *y.add(j * stride + i) = yt[i * n + j];
        }
    }
}

impl QMatrix {
    /// `Y = X W^T` for prepared activations: x (n, cols), y (n, rows). The int8 kernels
    /// when `x` was prepared for them and W is block-quantized, else [`QMatrix::matmul`].
    ///
    /// # Panics
    /// If x's columns differ from W's or y's length from n * rows.
    pub fn mul(&self, x: &Activations, y: &mut [f32]) {
        if x.kernels != CpuKernels::Int8 || !self.ty.is_quantized() {
            return self.matmul(x.x, y);
        }
        assert_eq!(x.cols, self.cols, "mul: x has {} columns, W has {}", x.cols, self.cols);
        let n = x.x.len() / x.cols;
        assert_eq!(y.len(), n * self.rows, "mul: y has {} values, expected {n} x {}", y.len(), self.rows);
        let (q8, q8k) = if self.ty.block_len() == int8::Q8K_LEN {
            (None, Some(x.q8k.get_or_init(|| int8::Q8KRows::new(x.x, x.cols))))
        } else {
            (Some(x.q8.get_or_init(|| int8::Q8Rows::new(x.x, x.cols))), None)
        };
        let kernel = |row0: usize, n: usize, yt: &mut [f32]| match (q8, q8k) {
            (Some(q8), _) => int8::rows_q8(self, row0, q8, n, yt),
            (_, Some(q8k)) => int8::rows_q8k(self, row0, q8k, n, yt),
            _ => {}
        };
        match n {
            0 => {}
            1 => parallel_rows(y, 1, self.cols, 1, |row0, y| kernel(row0, 1, y)),
            _ => rows_transposed(y, self.rows, n, self.cols, 1, |row0, yt| kernel(row0, n, yt)),
        }
    }
}

// ======================================================================================
// Threads
// ======================================================================================

/// Below this many multiply-adds a task costs more to schedule than it saves: a rayon
/// task costs a few microseconds, 64K multiply-adds take 7-15 us at 5-9 G/s. (So decode
/// runs SmolLM2's 192x576 k/v projections on one thread and splits everything larger.)
#[cfg(not(target_arch = "wasm32"))]
const MIN_WORK_PER_TASK: usize = 1 << 16;

/// The threaded wasm build's [`spin::run`] hands a task over in well under a microsecond
/// (one atomic word watched by a spinning helper): 16K multiply-adds (~2 us at 9 G/s) pay.
#[cfg(all(target_arch = "wasm32", feature = "wasm-threads"))]
const MIN_WORK_PER_TASK: usize = 1 << 14;

/// `f(&tasks[i])` for each task, in order of the tasks, the tasks run on this thread's
/// pool: rayon natively, [`spin::run`] in the threaded wasm build, one after the other in
/// the single-thread one.
pub(crate) fn par_map<T: Sync, R: Send + Sync>(tasks: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        tasks.par_iter().map(f).collect()
    }
    #[cfg(all(target_arch = "wasm32", feature = "wasm-threads"))]
    {
        let slots: Vec<std::sync::OnceLock<R>> = tasks.iter().map(|_| std::sync::OnceLock::new()).collect();
        spin::run(tasks.len(), rayon::current_num_threads().saturating_sub(1), &|i| {
            let _ = slots[i].set(f(&tasks[i]));
        });
        // Every slot is set: `spin::run` ran each task once before returning.
        slots.into_iter().filter_map(std::sync::OnceLock::into_inner).collect()
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "wasm-threads")))]
    {
        tasks.iter().map(f).collect()
    }
}

/// Threads [`par_map`] and [`parallel_rows`] run on (1 in the single-thread wasm build).
pub(crate) fn pool_threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), feature = "wasm-threads"))]
    return rayon::current_num_threads();
    #[cfg(all(target_arch = "wasm32", not(feature = "wasm-threads")))]
    return 1;
}

/// Tasks per thread: a few, so a thread that is descheduled (2 cores shared with the OS)
/// does not hold up the whole matrix, but not so many that scheduling shows.
#[cfg(any(not(target_arch = "wasm32"), feature = "wasm-threads"))]
const TASKS_PER_THREAD: usize = 2;

/// A buffer's address, shared with the tasks of [`parallel_ranges`] that each write their
/// own disjoint elements of it.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);

// SAFETY: the tasks write disjoint elements (see `parallel_rows` and `rows_transposed`).
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}

impl SyncPtr {
    /// A method, so closures capture the `Sync` wrapper rather than its pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Run `f(first_row, row_count)` over `rows` rows, each costing `work_per_row`
/// multiply-adds, split into ranges of whole rows (a multiple of `row_align` rows, except
/// the last). The ranges run on rayon's current pool when the work is worth it: natively,
/// and in the threaded browser build (feature `wasm-threads`, a pool of Web Workers); in the
/// single-thread wasm build in one call.
fn parallel_ranges<F>(rows: usize, work_per_row: usize, row_align: usize, f: F)
where
    F: Fn(usize, usize) + Sync + Send,
{
    if rows == 0 {
        return;
    }
    #[cfg(any(not(target_arch = "wasm32"), feature = "wasm-threads"))]
    {
        let work = rows.saturating_mul(work_per_row);
        let threads = rayon::current_num_threads();
        if threads > 1 && work >= 2 * MIN_WORK_PER_TASK {
            let tasks = (work / MIN_WORK_PER_TASK).clamp(1, threads * TASKS_PER_THREAD);
            let chunk_rows = rows.div_ceil(tasks).next_multiple_of(row_align.max(1));
            let chunks = rows.div_ceil(chunk_rows);
            let run = |i: usize| {
                let first = i * chunk_rows;
                f(first, chunk_rows.min(rows - first))
            };
            #[cfg(not(target_arch = "wasm32"))]
            {
                use rayon::prelude::*;
                (0..chunks).into_par_iter().for_each(run);
            }
            // The browser's pool: this thread and threads - 1 spinning helpers (spin.rs).
            #[cfg(target_arch = "wasm32")]
            spin::run(chunks, threads - 1, &run);
            return;
        }
    }
    let _ = (work_per_row, row_align);
    f(0, rows)
}

/// Run `f(first_row, chunk)` over `out` — rows of `row_len` values — split as
/// [`parallel_ranges`] splits its rows.
fn parallel_rows<F>(out: &mut [f32], row_len: usize, work_per_row: usize, row_align: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    if out.is_empty() || row_len == 0 {
        return;
    }
    let (base, len) = (SyncPtr(out.as_mut_ptr()), out.len());
    parallel_ranges(len / row_len, work_per_row, row_align, |first, count| {
        let start = first * row_len;
        let end = (start + count * row_len).min(len);
        // SAFETY: each range of rows (each run once) takes elements start..end of `out`,
        // disjoint from every other range's; `out` outlives the run.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(first, chunk)
    });
}

// ======================================================================================
// Kernels
// ======================================================================================

/// The fused dequantize + dot kernels. Written as plain loops over fixed-size chunks that
/// LLVM auto-vectorizes (SSE2, AVX2, NEON, wasm simd128); on x86_64 the same generic code
/// is instantiated a second time inside `#[target_feature(enable = "avx2,fma")]`
/// functions, picked at run time, so one binary runs on any x86_64 and uses 256-bit
/// vectors and FMA where the CPU has them.
pub mod kernels {
    use super::*;

    /// Weight rows dequantized together in `matmul`: the micro-kernel computes a
    /// (PANEL_ROWS, 2) tile of outputs, loading each activation vector once per panel.
    pub const PANEL_ROWS: usize = 4;

    /// Independent f32 accumulators in a dot product, one per weight of a chunk: four
    /// AVX2 registers (eight SSE / NEON / simd128 registers), enough to cover FMA latency.
    const LANES: usize = CHUNK;

    /// How a kernel multiplies and accumulates: fused where the target has FMA in
    /// hardware, separately otherwise (`f32::mul_add` without hardware FMA is a slow
    /// libm call).
    pub(super) trait MulAdd {
        fn mul_add(a: f32, b: f32, acc: f32) -> f32;
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub(super) struct Fused;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    impl MulAdd for Fused {
        #[inline(always)]
        fn mul_add(a: f32, b: f32, acc: f32) -> f32 {
            a.mul_add(b, acc)
        }
    }

    #[cfg(not(target_arch = "aarch64"))]
    pub(super) struct Unfused;
    #[cfg(not(target_arch = "aarch64"))]
    impl MulAdd for Unfused {
        #[inline(always)]
        fn mul_add(a: f32, b: f32, acc: f32) -> f32 {
            acc + a * b
        }
    }

    /// The portable instantiation: aarch64 always has FMA (NEON); x86_64 without AVX2
    /// and wasm32 simd128 have none.
    #[cfg(target_arch = "aarch64")]
    type PortableMulAdd = Fused;
    #[cfg(not(target_arch = "aarch64"))]
    type PortableMulAdd = Unfused;

    #[cfg(target_arch = "x86_64")]
    pub(super) fn has_avx2_fma() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        })
    }

    /// `y[i] = W[row0 + i, :] . x` for the rows `y` covers.
    pub(super) fn matvec_rows(w: &QMatrix, row0: usize, x: &[f32], y: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { avx2::matvec_rows(w, row0, x, y) };
        }
        matvec_rows_impl::<PortableMulAdd>(w, row0, x, y)
    }

    /// `yt[(i, j)] = W[row0 + i, :] . x[j, :]` for yt (rows_chunk, n), x (n, cols).
    pub(super) fn matmul_rows(w: &QMatrix, row0: usize, x: &[f32], n: usize, yt: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { avx2::matmul_rows(w, row0, x, n, yt) };
        }
        matmul_rows_impl::<PortableMulAdd>(w, row0, x, n, yt)
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use super::*;

        // `unsafe fn`: the caller checks that the CPU has the features.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn matvec_rows(w: &QMatrix, row0: usize, x: &[f32], y: &mut [f32]) {
            // The formats real models use get hand-written kernels (`fused`); the rest
            // take the auto-vectorized generic path.
            match w.ty {
                GgmlType::Q8_0 => fused::rows::<BlockQ8_0>(w, row0, x, y, |row, x, _| fused::dot_q8_0(row, x)),
                GgmlType::Q5_0 => fused::rows::<BlockQ5_0>(w, row0, x, y, |row, x, _| fused::dot_q5_0(row, x)),
                GgmlType::Q4_0 => fused::rows::<BlockQ4_0>(w, row0, x, y, |row, x, _| fused::dot_q4_0(row, x)),
                GgmlType::Q4_1 => fused::rows::<BlockQ4_1>(w, row0, x, y, |row, x, s| fused::dot_q4_1(row, x, s)),
                GgmlType::Q4_K => fused::rows::<BlockQ4_K>(w, row0, x, y, |row, x, s| fused::dot_q4_k(row, x, s)),
                GgmlType::Q6_K => fused::rows::<BlockQ6_K>(w, row0, x, y, |row, x, _| fused::dot_q6_k(row, x)),
                _ => matvec_rows_impl::<Fused>(w, row0, x, y),
            }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn matmul_rows(w: &QMatrix, row0: usize, x: &[f32], n: usize, yt: &mut [f32]) {
            matmul_rows_impl::<Fused>(w, row0, x, n, yt)
        }
    }

    /// Decode kernels for AVX2 + FMA + F16C, one per block format: each unpacks a block's
    /// quants into integer lanes in registers, converts them to f32 and multiplies them
    /// with x, never writing dequantized weights to memory.
    ///
    /// Numerics: a block's scale is applied to the block's partial dot product instead of
    /// to each weight, `d * sum(q x)` for `sum((d q) x)` (and `m * sum(x)` for an offset
    /// `m`, with the per-block sums of x computed once per call). `d * q` is exact in f32
    /// for Q4_0/Q5_0/Q8_0/Q6_K's integer q (at most 8 significant bits times an f16's 11),
    /// so this is the reference's sum in another order; for the formats with an offset
    /// it is the same sum before rounding each weight, well inside the kernel tolerance.
    #[cfg(target_arch = "x86_64")]
    mod fused {
        use super::*;
        use std::arch::x86_64::*;

        /// `y[i] = dot(row row0 + i, x, xsums)` over `B` rows; `xsums` (cols / 32,) holds the
        /// sums of x over each 32-value chunk, for the formats whose weights have an offset.
        #[inline(always)]
        pub(super) unsafe fn rows<B: QuantBlock>(
            w: &QMatrix,
            row0: usize,
            x: &[f32],
            y: &mut [f32],
            dot: impl Fn(&[B], &[f32], &[f32]) -> f32,
        ) {
            let Some(blocks) = w.blocks::<B>() else { return };
            let per_row = w.cols / B::LEN;
            let needs_sums = matches!(B::TYPE, GgmlType::Q4_1 | GgmlType::Q4_K);
            // (cols / 32,) f32; empty for formats without offsets.
            let xsums: Vec<f32> = if needs_sums { x.chunks_exact(CHUNK).map(|c| c.iter().sum()).collect() } else { Vec::new() };
            let blocks = &blocks[row0 * per_row..(row0 + y.len()) * per_row];
            for (row, y) in blocks.chunks_exact(per_row).zip(y) {
                *y = dot(row, &x[..per_row * B::LEN], &xsums);
            }
        }

        /// An f16 scale, broadcast to 8 lanes.
        #[inline(always)]
        unsafe fn splat_f16(h: f16) -> __m256 {
            _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32))))
        }

        /// f16 → f32 with F16C (one instruction; the same value as `f16_to_f32`).
        #[inline(always)]
        unsafe fn f16c(h: f16) -> f32 {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
        }

        /// Sum of 8 lanes.
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }

        /// Dot products of 16 + 16 signed 8-bit quants (`lo`: weights 0..16, `hi`: 16..32)
        /// with x[0..16] and x[16..32], as two 8-lane partial sums.
        #[inline(always)]
        unsafe fn dot_i8x16x2(lo: __m128i, hi: __m128i, x: *const f32) -> (__m256, __m256) {
            let w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
            let w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)));
            let w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
            let w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)));
            let a = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), _mm256_mul_ps(w0, _mm256_loadu_ps(x)));
            let b = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x.add(24)), _mm256_mul_ps(w2, _mm256_loadu_ps(x.add(16))));
            (a, b)
        }

        /// [`dot_i8x16x2`] of 32 quants held in one register.
        #[inline(always)]
        unsafe fn dot_i8x32(q: __m256i, x: *const f32) -> (__m256, __m256) {
            dot_i8x16x2(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q), x)
        }

        /// (low nibbles, high nibbles) of 16 bytes: Q4/Q5's weights 0..16 and 16..32.
        #[inline(always)]
        unsafe fn nibbles(qs: &[u8; 16]) -> (__m128i, __m128i) {
            let v = _mm_loadu_si128(qs.as_ptr().cast());
            let m = _mm_set1_epi8(0x0f);
            (_mm_and_si128(v, m), _mm_and_si128(_mm_srli_epi16::<4>(v), m))
        }

        #[inline(always)]
        pub(super) unsafe fn dot_q8_0(row: &[BlockQ8_0], x: &[f32]) -> f32 {
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for (b, x) in row.iter().zip(x.chunks_exact(32)) {
                let q = b.qs.as_ptr().cast::<u8>();
                let x = x.as_ptr();
                // Each 8-byte load folds into the sign-extending vpmovsxbd.
                let w = |o: usize| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(o).cast())));
                let s0 = _mm256_fmadd_ps(w(8), _mm256_loadu_ps(x.add(8)), _mm256_mul_ps(w(0), _mm256_loadu_ps(x)));
                let s1 = _mm256_fmadd_ps(w(24), _mm256_loadu_ps(x.add(24)), _mm256_mul_ps(w(16), _mm256_loadu_ps(x.add(16))));
                let d = splat_f16(b.d);
                acc0 = _mm256_fmadd_ps(s0, d, acc0);
                acc1 = _mm256_fmadd_ps(s1, d, acc1);
            }
            hsum(_mm256_add_ps(acc0, acc1))
        }

        #[inline(always)]
        pub(super) unsafe fn dot_q4_0(row: &[BlockQ4_0], x: &[f32]) -> f32 {
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let eight = _mm_set1_epi8(8);
            for (b, x) in row.iter().zip(x.chunks_exact(32)) {
                let (lo, hi) = nibbles(&b.qs);
                let (s0, s1) = dot_i8x16x2(_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight), x.as_ptr());
                let d = splat_f16(b.d);
                acc0 = _mm256_fmadd_ps(s0, d, acc0);
                acc1 = _mm256_fmadd_ps(s1, d, acc1);
            }
            hsum(_mm256_add_ps(acc0, acc1))
        }

        /// Q4_1: `sum((d q + m) x) = d sum(q x) + m sum(x)`.
        #[inline(always)]
        pub(super) unsafe fn dot_q4_1(row: &[BlockQ4_1], x: &[f32], xsums: &[f32]) -> f32 {
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut offsets = 0.0f32;
            for ((b, x), &xsum) in row.iter().zip(x.chunks_exact(32)).zip(xsums) {
                let (lo, hi) = nibbles(&b.qs);
                let (s0, s1) = dot_i8x16x2(lo, hi, x.as_ptr());
                let d = splat_f16(b.d);
                acc0 = _mm256_fmadd_ps(s0, d, acc0);
                acc1 = _mm256_fmadd_ps(s1, d, acc1);
                offsets = f16c(b.m).mul_add(xsum, offsets);
            }
            hsum(_mm256_add_ps(acc0, acc1)) + offsets
        }

        /// Q5_0: the fifth bits of `qh` spread to bytes, then `q - 16` as a signed byte:
        /// `n` where the bit is set, `n - 16 = n | 0xf0` where it is not.
        #[inline(always)]
        pub(super) unsafe fn dot_q5_0(row: &[BlockQ5_0], x: &[f32]) -> f32 {
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            // Byte i (of 32) takes byte i / 8 of the broadcast u32 qh (vpshufb indexes
            // within each 16-byte lane; both lanes hold the same 4 bytes) ...
            let spread = _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            );
            // ... and keeps only its bit i % 8; a zero byte marks a clear fifth bit.
            let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            let high = _mm256_set1_epi8(0xf0u8 as i8);
            for (b, x) in row.iter().zip(x.chunks_exact(32)) {
                let (lo, hi) = nibbles(&b.qs);
                let qh = _mm256_set1_epi32(i32::from_le_bytes(b.qh));
                let bits = _mm256_and_si256(_mm256_shuffle_epi8(qh, spread), select);
                let minus16 = _mm256_and_si256(_mm256_cmpeq_epi8(bits, _mm256_setzero_si256()), high);
                let lo = _mm_or_si128(lo, _mm256_castsi256_si128(minus16));
                let hi = _mm_or_si128(hi, _mm256_extracti128_si256::<1>(minus16));
                let (s0, s1) = dot_i8x16x2(lo, hi, x.as_ptr());
                let d = splat_f16(b.d);
                acc0 = _mm256_fmadd_ps(s0, d, acc0);
                acc1 = _mm256_fmadd_ps(s1, d, acc1);
            }
            hsum(_mm256_add_ps(acc0, acc1))
        }

        /// Q4_K: sub-block s contributes `(d scale_s) sum(q x) - (dmin min_s) sum(x)`.
        #[inline(always)]
        pub(super) unsafe fn dot_q4_k(row: &[BlockQ4_K], x: &[f32], xsums: &[f32]) -> f32 {
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut offsets = 0.0f32;
            let m = _mm256_set1_epi8(0x0f);
            for ((b, x), xsums) in row.iter().zip(x.chunks_exact(256)).zip(xsums.chunks_exact(8)) {
                let (d, dmin) = (f16c(b.d), f16c(b.dmin));
                for p in 0..4 {
                    let v = _mm256_loadu_si256(b.qs.as_ptr().add(32 * p).cast());
                    let halves = [_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16::<4>(v), m)];
                    for (h, q) in halves.into_iter().enumerate() {
                        let s = 2 * p + h;
                        let (scale, min) = k_scale_min(s, &b.scales);
                        let (s0, s1) = dot_i8x32(q, x.as_ptr().add(32 * s));
                        let ds = _mm256_set1_ps(d * scale as f32);
                        acc0 = _mm256_fmadd_ps(s0, ds, acc0);
                        acc1 = _mm256_fmadd_ps(s1, ds, acc1);
                        offsets = (dmin * min as f32).mul_add(xsums[s], offsets);
                    }
                }
            }
            hsum(_mm256_add_ps(acc0, acc1)) - offsets
        }

        /// Q6_K: per 128-weight half, 64 bytes of low nibbles and 32 of 2-bit highs make
        /// four 32-weight chunks; each chunk is two 16-weight groups with their own scale.
        #[inline(always)]
        pub(super) unsafe fn dot_q6_k(row: &[BlockQ6_K], x: &[f32]) -> f32 {
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let m4 = _mm256_set1_epi8(0x0f);
            let m2 = _mm256_set1_epi8(0x30);
            let bias = _mm256_set1_epi8(32);
            for (b, x) in row.iter().zip(x.chunks_exact(256)) {
                let d = f16c(b.d);
                for h in 0..2 {
                    let ql0 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * h).cast());
                    let ql1 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * h + 32).cast());
                    let qh = _mm256_loadu_si256(b.qh.as_ptr().add(32 * h).cast());
                    // Chunk k: low 4 bits from ql(k % 2) (nibble k / 2), top 2 from bits 2k, 2k+1 of qh,
                    // moved to bits 4, 5 (16-bit shifts: bits crossing into the next byte are masked off).
                    let chunks = [
                        _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2)),
                        _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), _mm256_and_si256(qh, m2)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2)),
                    ];
                    for (k, q) in chunks.into_iter().enumerate() {
                        let i = 4 * h + k;
                        let (s0, s1) = dot_i8x32(_mm256_sub_epi8(q, bias), x.as_ptr().add(32 * i));
                        acc0 = _mm256_fmadd_ps(s0, _mm256_set1_ps(d * b.scales[2 * i] as f32), acc0);
                        acc1 = _mm256_fmadd_ps(s1, _mm256_set1_ps(d * b.scales[2 * i + 1] as f32), acc1);
                    }
                }
            }
            hsum(_mm256_add_ps(acc0, acc1))
        }
    }

    #[inline(always)]
    fn matvec_rows_impl<M: MulAdd>(w: &QMatrix, row0: usize, x: &[f32], y: &mut [f32]) {
        let rows = row0..row0 + y.len();
        match_block_type!(w.ty,
            B => {
                let per_row = w.cols / B::LEN;
                if let Some(blocks) = w.blocks::<B>() {
                    let blocks = &blocks[rows.start * per_row..rows.end * per_row];
                    for (row, y) in blocks.chunks_exact(per_row).zip(y) {
                        *y = dot_blocks::<B, M>(row, x);
                    }
                }
            },
            dense => {
                let row_bytes = w.row_bytes();
                let bytes = &w.bytes()[rows.start * row_bytes..rows.end * row_bytes];
                for (row, y) in bytes.chunks_exact(row_bytes).zip(y) {
                    *y = match w.ty {
                        GgmlType::F16 => dot_dense::<M, 2>(row, x, |b| f16_bits_to_f32(u16::from_le_bytes(b))),
                        GgmlType::BF16 => dot_dense::<M, 2>(row, x, |b| bf16_bits_to_f32(u16::from_le_bytes(b))),
                        _ => dot_dense::<M, 4>(row, x, f32::from_le_bytes),
                    };
                }
            })
    }

    /// Dequantize each chunk of each block (exactly as the reference does) into registers
    /// and accumulate its dot product with x in LANES independent sums.
    #[inline(always)]
    fn dot_blocks<B: QuantBlock, M: MulAdd>(row: &[B], x: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        for (block, x) in row.iter().zip(x.chunks_exact(B::LEN)) {
            for (i, x) in x.chunks_exact(CHUNK).enumerate() {
                let mut w = [0.0f32; CHUNK];
                block.dequantize_chunk(i, &mut w);
                for l in 0..CHUNK {
                    acc[l] = M::mul_add(w[l], x[l], acc[l]);
                }
            }
        }
        sum_lanes(&acc)
    }

    /// Dot product of a dense row (`SIZE`-byte little-endian values, any length) with x.
    #[inline(always)]
    fn dot_dense<M: MulAdd, const SIZE: usize>(row: &[u8], x: &[f32], decode: impl Fn([u8; SIZE]) -> f32) -> f32 {
        let decode_into = |raw: &[u8], out: &mut [f32; CHUNK]| {
            for (raw, out) in raw.chunks_exact(SIZE).zip(out) {
                let mut value = [0u8; SIZE];
                value.copy_from_slice(raw);
                *out = decode(value);
            }
        };
        let mut acc = [0.0f32; LANES];
        let (raw_chunks, x_chunks) = (row.chunks_exact(CHUNK * SIZE), x.chunks_exact(CHUNK));
        let (raw_tail, x_tail) = (raw_chunks.remainder(), x_chunks.remainder());
        for (raw, x) in raw_chunks.zip(x_chunks) {
            let mut w = [0.0f32; CHUNK];
            decode_into(raw, &mut w);
            for l in 0..CHUNK {
                acc[l] = M::mul_add(w[l], x[l], acc[l]);
            }
        }
        let mut w = [0.0f32; CHUNK];
        decode_into(raw_tail, &mut w);
        let mut tail = [0.0f32; CHUNK];
        for ((tail, &w), &x) in tail.iter_mut().zip(&w).zip(x_tail) {
            *tail = w * x;
        }
        sum_lanes(&acc) + sum_lanes(&tail)
    }

    /// Pairwise sum of the accumulators, once per dot product.
    ///
    /// `inline(never)` on purpose: when LLVM's SLP vectorizer sees this reduction tree in
    /// the same function as the accumulation loop it picks 2-lane vectors for the whole
    /// kernel (measured: Q4_1 matvec 3.2 → 9.4 G weights/s with the call kept out of line).
    #[inline(never)]
    fn sum_lanes(acc: &[f32; LANES]) -> f32 {
        let mut v = *acc;
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                v[i] += v[i + width];
            }
        }
        v[0]
    }

    fn dequantize_row_unchecked(w: &QMatrix, row: usize, out: &mut [f32]) {
        let row_bytes = w.row_bytes();
        let bytes = &w.bytes()[row * row_bytes..(row + 1) * row_bytes];
        match_block_type!(w.ty,
            B => dequantize_blocks::<B>(bytes, out),
            dense => dequantize_dense(w.ty, bytes, out))
    }

    #[inline(always)]
    fn matmul_rows_impl<M: MulAdd>(w: &QMatrix, row0: usize, x: &[f32], n: usize, yt: &mut [f32]) {
        let cols = w.cols;
        // (PANEL_ROWS, cols) f32: the dequantized weight rows of one panel.
        let mut panel = vec![0.0f32; PANEL_ROWS * cols];
        for (p, yt) in yt.chunks_mut(PANEL_ROWS * n).enumerate() {
            let panel_rows = yt.len() / n;
            for (k, out) in panel.chunks_exact_mut(cols).take(panel_rows).enumerate() {
                dequantize_row_unchecked(w, row0 + p * PANEL_ROWS + k, out);
            }
            let (p0, rest) = panel.split_at(cols);
            let (p1, rest) = rest.split_at(cols);
            let (p2, p3) = rest.split_at(cols);
            let panel_rows_ref = [p0, p1, p2, p3];
            // Two activation rows at a time; an odd last row is paired with itself.
            for j in (0..n).step_by(2) {
                let j1 = (j + 1).min(n - 1);
                let xa = &x[j * cols..(j + 1) * cols];
                let xb = &x[j1 * cols..(j1 + 1) * cols];
                let tile = dot_tile::<M>(&panel_rows_ref, xa, xb);
                for (k, out) in yt.chunks_exact_mut(n).enumerate() {
                    out[j] = tile[k][0];
                    out[j1] = tile[k][1];
                }
            }
        }
    }

    /// Lanes per accumulator in the matmul tile: (PANEL_ROWS x 2) accumulators of 8.
    const TILE_LANES: usize = 8;

    /// The (PANEL_ROWS, 2) dot products of four weight rows with two activation rows, all
    /// of length cols; each loaded vector feeds 2 or 4 multiply-adds.
    ///
    /// Written the way LLVM reliably vectorizes: rows pre-cut to a common length, one
    /// named [f32; 8] accumulator per output, fixed-size arrays per step. (A 3-D
    /// accumulator array or a six-way zip of chunk iterators came out scalar.)
    #[inline(always)]
    fn dot_tile<M: MulAdd>(w: &[&[f32]; PANEL_ROWS], xa: &[f32], xb: &[f32]) -> [[f32; 2]; PANEL_ROWS] {
        let len = xa.len();
        let body = len - len % TILE_LANES;
        let (xa_body, xb_body) = (&xa[..body], &xb[..body]);
        let (w0, w1, w2, w3) = (&w[0][..body], &w[1][..body], &w[2][..body], &w[3][..body]);
        let zero = [0.0f32; TILE_LANES];
        let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
        let (mut b0, mut b1, mut b2, mut b3) = (zero, zero, zero, zero);
        for k in 0..body / TILE_LANES {
            let at = TILE_LANES * k..TILE_LANES * (k + 1);
            let (xa, xb) = (lanes(&xa_body[at.clone()]), lanes(&xb_body[at.clone()]));
            let (w0, w1) = (lanes(&w0[at.clone()]), lanes(&w1[at.clone()]));
            let (w2, w3) = (lanes(&w2[at.clone()]), lanes(&w3[at]));
            mul_add_lanes::<M>(&mut a0, w0, xa);
            mul_add_lanes::<M>(&mut b0, w0, xb);
            mul_add_lanes::<M>(&mut a1, w1, xa);
            mul_add_lanes::<M>(&mut b1, w1, xb);
            mul_add_lanes::<M>(&mut a2, w2, xa);
            mul_add_lanes::<M>(&mut b2, w2, xb);
            mul_add_lanes::<M>(&mut a3, w3, xa);
            mul_add_lanes::<M>(&mut b3, w3, xb);
        }
        let ws = [&w[0][..len], &w[1][..len], &w[2][..len], &w[3][..len]];
        sum_tile([[a0, b0], [a1, b1], [a2, b2], [a3, b3]], &ws, [&xa[body..], &xb[body..len]], body)
    }

    #[inline(always)]
    fn mul_add_lanes<M: MulAdd>(acc: &mut [f32; TILE_LANES], w: &[f32; TILE_LANES], x: &[f32; TILE_LANES]) {
        for l in 0..TILE_LANES {
            acc[l] = M::mul_add(w[l], x[l], acc[l]);
        }
    }

    /// A TILE_LANES-long slice as an array (the fallback is never taken).
    #[inline(always)]
    fn lanes(s: &[f32]) -> &[f32; TILE_LANES] {
        s.try_into().unwrap_or(&[0.0; TILE_LANES])
    }

    /// Reduce a tile's (PANEL_ROWS, 2, TILE_LANES) accumulators and add the columns past
    /// the last full vector (only F32/F16/BF16 rows can have them). Out of line for the
    /// reason given at [`sum_lanes`].
    #[inline(never)]
    fn sum_tile(
        acc: [[[f32; TILE_LANES]; 2]; PANEL_ROWS],
        w: &[&[f32]; PANEL_ROWS],
        x_tails: [&[f32]; 2],
        body: usize,
    ) -> [[f32; 2]; PANEL_ROWS] {
        let mut out = [[0.0f32; 2]; PANEL_ROWS];
        for ((out, acc), w) in out.iter_mut().zip(&acc).zip(w) {
            for ((out, acc), x_tail) in out.iter_mut().zip(acc).zip(x_tails) {
                let tail: f32 = w[body..].iter().zip(x_tail).map(|(w, x)| w * x).sum();
                *out = acc.iter().sum::<f32>() + tail;
            }
        }
        out
    }
}
