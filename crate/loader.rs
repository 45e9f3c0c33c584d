//! Turning model files into tensors, one code path for every source.
//!
//! GGUF is read as a *stream*: [`GgufStream::push`] takes the file's bytes in order, in chunks
//! of any size, parses the header as soon as the prefix holds it, then hands each tensor to a
//! sink the moment its last byte arrives. Natively the chunks come from a file; in the browser
//! from a `fetch` body. A sink that uploads to the GPU and drops the bytes means the whole file
//! is never held in memory (at most one tensor is, twice).
//!
//! Hugging Face folders (config.json + *.safetensors) are mapped onto the same GGUF tensor
//! names, so the decoder only ever sees one naming scheme.

use std::collections::HashMap;

use crate::bytes::AlignedBytes;
use crate::config::{ConfigError, ModelConfig};
use crate::gguf::{GgufError, GgufHeader};
use crate::quant::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("model file truncated: got {got} bytes, expected {expected}")]
    Truncated { got: u64, expected: u64 },
    #[error("model lacks tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {got:?}, expected {expected:?}")]
    BadShape { name: String, got: Vec<u64>, expected: Vec<u64> },
    #[error("tensor '{name}' has type {ty:?}, which is not supported there")]
    BadType { name: String, ty: GgmlType },
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Other(String),
}

/// One tensor's bytes as stored in the file, under its GGUF name.
#[derive(Clone, Debug)]
pub struct RawTensor {
    /// GGUF naming: "token_embd.weight", "blk.3.attn_q.weight", "output_norm.weight", …
    pub name: String,
    pub ty: GgmlType,
    /// GGUF order: dims[0] is contiguous, so a matrix is [cols, rows].
    pub dims: Vec<u64>,
    pub data: AlignedBytes,
}

/// Progress of a streaming load, for progress bars.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct LoadProgress {
    pub bytes_seen: u64,
    /// Known once the header is parsed.
    pub bytes_total: Option<u64>,
    pub tensors_done: usize,
    pub tensors_total: Option<usize>,
}

enum StreamState {
    /// Accumulating the header; re-parse once `buf.len() >= need`.
    Header { buf: Vec<u8>, need: u64 },
    Tensors(TensorsState),
    Failed,
}

struct TensorsState {
    header: GgufHeader,
    /// Indices of the tensors the decoder reads, in ascending offset order. Others (a
    /// vision tower, rope tables, anything unknown) are skipped: never allocated nor
    /// handed to a sink, so never uploaded.
    order: Vec<usize>,
    next: usize,
    /// The tensor being filled and how many of its bytes have arrived.
    current: Option<(usize, AlignedBytes, usize)>,
    /// Absolute file position of the next byte to arrive.
    pos: u64,
}

/// Push-based GGUF reader; see the module docs.
///
/// Memory is bounded by the bytes that really arrive, never by what the header declares:
/// once the header is in, the model's config is derived and every tensor the decoder reads
/// is checked against the shape the config implies (and against the source length when the
/// caller knows it: file size, Content-Length); a tensor's buffer then grows with its bytes
/// as they are received. A header that declares a 1 TB tensor in a 1 KB file is an error
/// before any allocation, or at worst a buffer as large as what was sent.
pub struct GgufStream {
    state: StreamState,
    progress: LoadProgress,
    /// Total bytes the source will deliver, when known.
    source_len: Option<u64>,
}

impl Default for GgufStream {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufStream {
    pub fn new() -> Self {
        Self { state: StreamState::Header { buf: Vec::new(), need: 0 }, progress: LoadProgress::default(), source_len: None }
    }

    /// Tell the stream how many bytes the source holds (a file's size, an HTTP
    /// Content-Length): a header whose tensors lie past it is refused before any tensor
    /// buffer is allocated, and a header that cannot fit in it fails at once.
    pub fn set_source_len(&mut self, len: u64) {
        self.source_len = Some(len);
    }

    pub fn header(&self) -> Option<&GgufHeader> {
        match &self.state {
            StreamState::Tensors(t) => Some(&t.header),
            _ => None,
        }
    }

    pub fn progress(&self) -> LoadProgress {
        self.progress
    }

    /// Feed the next bytes of the file. Each tensor completed by them goes to `sink`, with
    /// the (complete) header: the first call is where a sink can decide from the model's
    /// shapes where tensors go. `E` is the sink's error type (the engine's loader refuses a
    /// backend with its own error).
    pub fn push<E: From<LoadError>>(
        &mut self,
        mut chunk: &[u8],
        sink: &mut dyn FnMut(&GgufHeader, RawTensor) -> Result<(), E>,
    ) -> Result<(), E> {
        self.progress.bytes_seen += chunk.len() as u64;
        if let StreamState::Header { buf, need } = &mut self.state {
            buf.extend_from_slice(chunk);
            if (buf.len() as u64) < *need {
                return Ok(());
            }
            match GgufHeader::parse(buf) {
                // The whole source cannot hold the header: no point waiting for it.
                Err(GgufError::Truncated { needed, .. }) if self.source_len.is_some_and(|len| needed > len) => {
                    self.state = StreamState::Failed;
                    let have = self.source_len.unwrap_or(0);
                    return Err(LoadError::from(GgufError::Truncated { needed, have }).into());
                }
                Err(GgufError::Truncated { needed, .. }) => {
                    // Wait for at least `needed` bytes, and grow geometrically so a large
                    // header delivered in tiny chunks is not re-parsed once per chunk.
                    *need = needed.max(buf.len() as u64 * 3 / 2);
                    return Ok(());
                }
                Err(e) => {
                    self.state = StreamState::Failed;
                    return Err(LoadError::from(e).into());
                }
                Ok(header) => {
                    let buf = std::mem::take(buf);
                    let order = match wanted_tensors(&header, self.source_len) {
                        Ok(order) => order,
                        Err(e) => {
                            self.state = StreamState::Failed;
                            return Err(e.into());
                        }
                    };
                    self.progress.bytes_total = Some(header.implied_file_len());
                    self.progress.tensors_total = Some(header.tensors.len());
                    self.state = StreamState::Tensors(TensorsState { header, order, next: 0, current: None, pos: 0 });
                    // Replay the bytes already buffered as tensor data.
                    self.progress.bytes_seen -= buf.len() as u64;
                    return self.push(&buf, sink);
                }
            }
        }
        let StreamState::Tensors(st) = &mut self.state else {
            return Err(LoadError::Other("model stream already failed".into()).into());
        };
        while !chunk.is_empty() {
            if st.current.is_none() {
                let Some(&idx) = st.order.get(st.next) else { return Ok(()) }; // trailing bytes
                st.current = Some((idx, AlignedBytes::default(), 0));
            }
            let Some((idx, data, _)) = st.current.as_mut() else { break };
            let info = &st.header.tensors[*idx];
            let start = st.header.data_offset.saturating_add(info.offset);
            // Where the next byte of this tensor lies in the file.
            let at = start.saturating_add(data.len() as u64);
            if st.pos < at {
                // Skip padding, unused tensors and gaps before this tensor.
                let skip = usize::try_from(at - st.pos).unwrap_or(usize::MAX).min(chunk.len());
                chunk = &chunk[skip..];
                st.pos += skip as u64;
                continue;
            }
            if st.pos > at {
                // Overlapping tensors: this one began inside the previous one's bytes.
                let e = GgufError::Corrupt(format!("tensor '{}' overlaps the tensor before it", info.name));
                self.state = StreamState::Failed;
                return Err(LoadError::from(e).into());
            }
            // Grow the buffer with the bytes received, up to the declared size.
            let missing = info.n_bytes - data.len() as u64;
            let n = usize::try_from(missing).unwrap_or(usize::MAX).min(chunk.len());
            data.extend_within(&chunk[..n], info.n_bytes);
            chunk = &chunk[n..];
            st.pos += n as u64;
            if (data.len() as u64) < info.n_bytes {
                continue;
            }
            if let Some((idx, data, _)) = st.current.take() {
                let info = st.header.tensors[idx].clone();
                st.next += 1;
                self.progress.tensors_done += 1;
                sink(&st.header, RawTensor { name: info.name, ty: info.ty, dims: info.dims, data })?;
            }
        }
        Ok(())
    }

    /// End of input: every tensor must have arrived.
    pub fn finish(self) -> Result<GgufHeader, LoadError> {
        match self.state {
            // Every tensor the decoder reads arrived, and the whole file (skipped tensors too):
            // a cut file is an error even where the cut only hits an unused tensor.
            StreamState::Tensors(st)
                if st.next == st.order.len() && self.progress.bytes_seen >= st.header.implied_file_len() =>
            {
                Ok(st.header)
            }
            StreamState::Tensors(st) => {
                Err(LoadError::Truncated { got: self.progress.bytes_seen, expected: st.header.implied_file_len() })
            }
            // The header never completed: report why (usually Truncated).
            StreamState::Header { buf, .. } => Err(match GgufHeader::parse(&buf) {
                Err(e) => e.into(),
                Ok(h) => LoadError::Truncated { got: buf.len() as u64, expected: h.implied_file_len() },
            }),
            StreamState::Failed => Err(LoadError::Other("model stream failed earlier".into())),
        }
    }
}

/// The indices of the tensors the decoder for this header's model reads, in offset order,
/// after checking each one's shape against the config and, when known, that it lies within
/// `source_len` bytes: all before any tensor data is allocated.
fn wanted_tensors(header: &GgufHeader, source_len: Option<u64>) -> Result<Vec<usize>, LoadError> {
    if let Some(len) = source_len {
        header.check_bounds(len)?;
    }
    let config = config_from_gguf(header)?;
    // Each layer has at least nine tensors: a count the header cannot back is refused before
    // listing names for it.
    if config.n_layers.saturating_mul(9) > header.tensors.len() {
        let last = config.n_layers.saturating_sub(1);
        return Err(LoadError::MissingTensor(format!("blk.{last}.attn_norm.weight")));
    }
    let mut order = Vec::new();
    for (name, dims) in decoder_tensors(&config)? {
        let i = header
            .tensors
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| LoadError::MissingTensor(name.clone()))?;
        check_dims(&name, &header.tensors[i].dims, &dims)?;
        order.push(i);
    }
    order.sort_by_key(|&i| header.tensors[i].offset);
    Ok(order)
}

/// Every tensor the decoder reads for `c`, with its GGUF dims (`[cols, rows]` for a matrix),
/// computed in u64 so that no width overflows on wasm32.
pub fn decoder_tensors(c: &ModelConfig) -> Result<Vec<(String, Vec<u64>)>, LoadError> {
    let (dim, head, ffn, vocab) = (c.dim as u64, c.head_dim as u64, c.ffn_dim as u64, c.vocab_size as u64);
    let width = |heads: usize| {
        (heads as u64).checked_mul(head).ok_or_else(|| LoadError::Other(format!("{heads} heads of width {head} overflow")))
    };
    let (q_dim, kv_dim) = (width(c.n_heads)?, width(c.n_kv_heads)?);
    let mut out = vec![("token_embd.weight".to_owned(), vec![dim, vocab]), ("output_norm.weight".to_owned(), vec![dim])];
    if !c.tied_embeddings {
        out.push(("output.weight".to_owned(), vec![dim, vocab]));
    }
    for l in 0..c.n_layers {
        let mut layer = |part: &str, dims: Vec<u64>| out.push((format!("blk.{l}.{part}"), dims));
        layer("attn_norm.weight", vec![dim]);
        layer("attn_q.weight", vec![dim, q_dim]);
        layer("attn_k.weight", vec![dim, kv_dim]);
        layer("attn_v.weight", vec![dim, kv_dim]);
        layer("attn_output.weight", vec![q_dim, dim]);
        layer("ffn_norm.weight", vec![dim]);
        layer("ffn_gate.weight", vec![dim, ffn]);
        layer("ffn_up.weight", vec![dim, ffn]);
        layer("ffn_down.weight", vec![ffn, dim]);
        if c.qkv_bias {
            layer("attn_q.bias", vec![q_dim]);
            layer("attn_k.bias", vec![kv_dim]);
            layer("attn_v.bias", vec![kv_dim]);
        }
        if c.qk_norm {
            layer("attn_q_norm.weight", vec![head]);
            layer("attn_k_norm.weight", vec![head]);
        }
    }
    Ok(out)
}

/// GGUF drops trailing 1-sized dims; compare ignoring them.
fn check_dims(name: &str, got: &[u64], expected: &[u64]) -> Result<(), LoadError> {
    let trim = |d: &[u64]| d.iter().rposition(|&x| x != 1).map_or(0, |i| i + 1);
    if got[..trim(got)] != expected[..trim(expected)] {
        return Err(LoadError::BadShape { name: name.into(), got: got.to_vec(), expected: expected.to_vec() });
    }
    Ok(())
}

/// A model's tensors by GGUF name, plus what the file says about it.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub tensors: HashMap<String, RawTensor>,
    /// GGUF metadata (tokenizer, chat template) when the source was GGUF.
    pub gguf: Option<GgufHeader>,
}

/// The model config implied by a GGUF header (tied embeddings and vocab from its tensors).
pub fn config_from_gguf(header: &GgufHeader) -> Result<ModelConfig, LoadError> {
    let embd = header
        .tensor("token_embd.weight")
        .ok_or_else(|| LoadError::MissingTensor("token_embd.weight".into()))?;
    let vocab = embd.dims.get(1).copied().unwrap_or(0) as usize;
    Ok(ModelConfig::from_gguf(&header.metadata, header.tensor("output.weight").is_some(), vocab)?)
}

/// A whole GGUF read through the stream, keeping every tensor (the CPU backend's sink).
#[derive(Default)]
pub struct GgufCollector {
    stream: GgufStream,
    tensors: HashMap<String, RawTensor>,
}

impl GgufCollector {
    pub fn push(&mut self, chunk: &[u8]) -> Result<LoadProgress, LoadError> {
        let tensors = &mut self.tensors;
        self.stream.push(chunk, &mut |_, t| -> Result<(), LoadError> {
            tensors.insert(t.name.clone(), t);
            Ok(())
        })?;
        Ok(self.stream.progress())
    }

    /// End of input: every tensor must have arrived.
    pub fn finish(self) -> Result<LoadedModel, LoadError> {
        let header = self.stream.finish()?;
        let config = config_from_gguf(&header)?;
        Ok(LoadedModel { config, tensors: self.tensors, gguf: Some(header) })
    }
}

/// Load a GGUF held in memory.
pub fn load_gguf_bytes(bytes: &[u8]) -> Result<LoadedModel, LoadError> {
    const CHUNK: usize = 16 << 20;
    let mut collector = GgufCollector::default();
    collector.stream.set_source_len(bytes.len() as u64);
    for chunk in bytes.chunks(CHUNK) {
        collector.push(chunk)?;
    }
    collector.finish()
}

/// Load a GGUF file, reading it in chunks (never the whole file at once on top of the tensors).
#[cfg(not(target_arch = "wasm32"))]
pub fn load_gguf_file(path: &std::path::Path) -> Result<LoadedModel, LoadError> {
    use std::io::Read;
    let io = |e: std::io::Error| LoadError::Io(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut collector = GgufCollector::default();
    collector.stream.set_source_len(file.metadata().map_err(io)?.len());
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            return collector.finish();
        }
        collector.push(&buf[..n])?;
    }
}

/// HF tensor name → GGUF tensor name (None for tensors the decoder does not use, such as
/// `rotary_emb.inv_freq`).
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
}

/// Load a Hugging Face model from `config.json` and its safetensors files' bytes.
pub fn load_safetensors(config_json: &[u8], files: &[&[u8]]) -> Result<LoadedModel, LoadError> {
    use safetensors::{Dtype, SafeTensors};
    let config = ModelConfig::from_hf_json(config_json)?;
    let mut tensors = HashMap::new();
    for bytes in files {
        let st = SafeTensors::deserialize(bytes).map_err(|e| LoadError::Safetensors(e.to_string()))?;
        for (hf_name, view) in st.tensors() {
            let Some(name) = hf_to_gguf_name(&hf_name) else { continue };
            let ty = match view.dtype() {
                Dtype::F32 => GgmlType::F32,
                Dtype::F16 => GgmlType::F16,
                Dtype::BF16 => GgmlType::BF16,
                other => {
                    return Err(LoadError::Safetensors(format!("tensor '{hf_name}' has unsupported dtype {other:?}")))
                }
            };
            // safetensors shapes are row-major outermost-first; GGUF lists innermost first.
            let dims: Vec<u64> = view.shape().iter().rev().map(|&d| d as u64).collect();
            tensors.insert(name.clone(), RawTensor { name, ty, dims, data: AlignedBytes::copy_from(view.data()) });
        }
    }
    Ok(LoadedModel { config, tensors, gguf: None })
}

/// Load a folder holding `config.json` and `*.safetensors`.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_safetensors_dir(dir: &std::path::Path) -> Result<LoadedModel, LoadError> {
    let io = |p: &std::path::Path, e: std::io::Error| LoadError::Io(format!("{}: {e}", p.display()));
    let config_path = dir.join("config.json");
    let config = std::fs::read(&config_path).map_err(|e| io(&config_path, e))?;
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(LoadError::Io(format!("{}: no .safetensors files", dir.display())));
    }
    let files = paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| io(p, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    load_safetensors(&config, &refs)
}

impl LoadedModel {
    /// Take a tensor, checking its GGUF dims.
    pub fn take(&mut self, name: &str, dims: &[usize]) -> Result<RawTensor, LoadError> {
        let t = self.tensors.remove(name).ok_or_else(|| LoadError::MissingTensor(name.into()))?;
        let expected: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        check_dims(name, &t.dims, &expected)?;
        Ok(t)
    }
}
