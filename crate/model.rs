//! The CPU backend: one decoder for Llama, Qwen2 and Qwen3, on quantized weights.
//!
//! Weights stay in their file format ([`QMatrix`]); each mat-vec unpacks blocks on the fly,
//! against activations quantized to 8 bits once per input ([`CpuKernels::Int8`], the
//! default, decode and prefill alike) or kept in f32 ([`CpuKernels::F32`], the reference). The forward pass below reads top to bottom, one step per line of transformers'
//! `LlamaDecoderLayer.forward` / `Qwen2DecoderLayer.forward` / `Qwen3DecoderLayer.forward`.

use half::f16;

use crate::backend::{Backend, BackendError};
use crate::config::ModelConfig;
use crate::loader::{LoadError, LoadedModel, RawTensor};
use crate::ops;
use crate::quant::{self, Activations, CpuKernels, QMatrix};

/// Default KV capacity when the caller sets none: long enough for reasoning traces, small
/// enough that a 32k-context model does not reserve gigabytes up front.
pub const DEFAULT_MAX_CONTEXT: usize = 8192;

/// Tokens per pass of a long prefill. The scratch of a pass is (n, 2 × ffn + 3 × dim +
/// 4 × q + 2 × kv) f32 (attention's tasks hold a scaled copy of q and their outputs): with
/// 256 tokens about 17 MB for Qwen2.5-0.5B and 30 MB for a 1.5B model, whatever the
/// prompt's length (a 16k-token prompt in one pass would need over 1 GB, more
/// than wasm32 can give).
pub const PREFILL_CHUNK: usize = 256;

struct Layer {
    attn_norm: Vec<f32>,     // (dim)
    wq: QMatrix,             // (q_dim, dim)
    wk: QMatrix,             // (kv_dim, dim)
    wv: QMatrix,             // (kv_dim, dim)
    bq: Option<Vec<f32>>,    // (q_dim), Qwen2 only
    bk: Option<Vec<f32>>,    // (kv_dim)
    bv: Option<Vec<f32>>,    // (kv_dim)
    qk_norm: Option<QkNorm>, // Qwen3 only
    wo: QMatrix,             // (dim, q_dim)
    ffn_norm: Vec<f32>,      // (dim)
    w_gate: QMatrix,         // (ffn_dim, dim)
    w_up: QMatrix,           // (ffn_dim, dim)
    w_down: QMatrix,         // (dim, ffn_dim)
}

/// Qwen3's per-head RMSNorm weights of q and k.
struct QkNorm {
    q: Vec<f32>, // (head_dim)
    k: Vec<f32>, // (head_dim)
}

/// How the CPU backend stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// Half the memory of f32 (1.5 GB less for a 1.5B model at 32k positions) and half the
    /// bytes a long-context decode step reads; what the GPU backend keeps too.
    #[default]
    F16,
    /// The reference for tests against f32 implementations (transformers) at tolerances
    /// that f16's three significant digits would not meet.
    F32,
}

/// Keys and values of every processed position.
struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
}

enum LayerKv {
    F16(KvHeads<f16>),
    F32(KvHeads<f32>),
}

/// One layer's cache, one vector per kv head so that a head's positions are contiguous for
/// [`ops::attention_cached`]. Each holds len × head_dim values, with capacity reserved for
/// `max_context` positions when the model is built: it never reallocates (no doubling, no
/// copy), and a reservation the allocator refuses is a load error, not an abort
/// mid-generation. (Reserved, not written: natively the OS maps the pages as positions
/// fill them.)
struct KvHeads<E> {
    keys: Vec<Vec<E>>,   // n_kv_heads × (len, head_dim)
    values: Vec<Vec<E>>, // n_kv_heads × (len, head_dim)
}

impl<E: ops::KvElement + Default> KvHeads<E> {
    fn new(c: &ModelConfig, max_context: usize) -> Result<Self, LoadError> {
        let per_head = max_context.checked_mul(c.head_dim).ok_or_else(|| LoadError::Other("KV cache size overflows".into()))?;
        let head = || -> Result<Vec<E>, LoadError> {
            let mut v = Vec::new();
            v.try_reserve_exact(per_head).map_err(|e| {
                LoadError::Other(format!("cannot reserve the KV cache for {max_context} positions: {e}"))
            })?;
            Ok(v)
        };
        let heads = || (0..c.n_kv_heads).map(|_| head()).collect::<Result<Vec<_>, _>>();
        Ok(Self { keys: heads()?, values: heads()? })
    }

    /// Append k and v (n, n_kv_heads × head_dim) f32, rounded to E, then attend q's rows
    /// (n, n_heads × head_dim) over the whole cache into att (same shape as q).
    fn update_and_attend(&mut self, k: &[f32], v: &[f32], q: &[f32], att: &mut [f32], pos0: usize, heads: ops::Heads) {
        for (cache, x) in [(&mut self.keys, k), (&mut self.values, v)] {
            for row in x.chunks_exact(heads.n_kv_heads * heads.head_dim) {
                for (head, src) in cache.iter_mut().zip(row.chunks_exact(heads.head_dim)) {
                    let start = head.len();
                    head.resize(start + heads.head_dim, E::default());
                    E::narrow(src, &mut head[start..]);
                }
            }
        }
        ops::attention_cached(att, q, &self.keys, &self.values, pos0, heads);
    }

    fn truncate(&mut self, per_head: usize) {
        for head in self.keys.iter_mut().chain(&mut self.values) {
            head.truncate(per_head);
        }
    }

    /// Keys and values as f32 rows (len, n_kv_heads × head_dim).
    fn rows(&self, head_dim: usize) -> [Vec<f32>; 2] {
        [&self.keys, &self.values].map(|heads| {
            let len = heads.first().map_or(0, |h| h.len() / head_dim.max(1));
            let mut out = vec![0.0; len * heads.len() * head_dim];
            for (p, row) in out.chunks_exact_mut(heads.len() * head_dim).enumerate() {
                for (head, dst) in heads.iter().zip(row.chunks_exact_mut(head_dim)) {
                    E::widen(&head[p * head_dim..(p + 1) * head_dim], dst);
                }
            }
            out
        })
    }
}

impl KvCache {
    fn new(c: &ModelConfig, max_context: usize, precision: KvPrecision) -> Result<Self, LoadError> {
        let layers = (0..c.n_layers)
            .map(|_| {
                Ok(match precision {
                    KvPrecision::F16 => LayerKv::F16(KvHeads::new(c, max_context)?),
                    KvPrecision::F32 => LayerKv::F32(KvHeads::new(c, max_context)?),
                })
            })
            .collect::<Result<_, LoadError>>()?;
        Ok(Self { layers, len: 0 })
    }
}

impl LayerKv {
    fn update_and_attend(&mut self, k: &[f32], v: &[f32], q: &[f32], att: &mut [f32], pos0: usize, heads: ops::Heads) {
        match self {
            LayerKv::F16(c) => c.update_and_attend(k, v, q, att, pos0, heads),
            LayerKv::F32(c) => c.update_and_attend(k, v, q, att, pos0, heads),
        }
    }

    fn truncate(&mut self, per_head: usize) {
        match self {
            LayerKv::F16(c) => c.truncate(per_head),
            LayerKv::F32(c) => c.truncate(per_head),
        }
    }

    fn rows(&self, head_dim: usize) -> [Vec<f32>; 2] {
        match self {
            LayerKv::F16(c) => c.rows(head_dim),
            LayerKv::F32(c) => c.rows(head_dim),
        }
    }
}

pub struct CpuModel {
    config: ModelConfig,
    token_embd: QMatrix,        // (vocab, dim)
    layers: Vec<Layer>,
    output_norm: Vec<f32>,      // (dim)
    output: Option<QMatrix>,    // (vocab, dim); None = tied to token_embd
    inv_freq: Vec<f32>,         // (head_dim / 2)
    cache: KvCache,
    max_context: usize,
    /// Tokens per forward pass (see [`PREFILL_CHUNK`]).
    prefill_chunk: usize,
    /// Which kernels multiply activations by the weights.
    kernels: CpuKernels,
}

/// A 1-D tensor (norm weight, bias) as f32.
fn vector(t: RawTensor) -> Result<Vec<f32>, LoadError> {
    let n = t.dims.iter().product::<u64>() as usize;
    let mut out = vec![0.0; n];
    quant::dequantize(t.ty, t.data.as_slice(), &mut out)
        .map_err(|e| LoadError::Other(format!("{}: {e}", t.name)))?;
    Ok(out)
}

/// A 2-D weight kept quantized. `dims` = [cols, rows] as GGUF stores them.
fn matrix(t: RawTensor) -> Result<QMatrix, LoadError> {
    let (cols, rows) = (t.dims[0] as usize, t.dims.get(1).copied().unwrap_or(1) as usize);
    let name = t.name.clone();
    QMatrix::new(t.ty, rows, cols, t.data).map_err(|e| LoadError::Other(format!("{name}: {e}")))
}

impl CpuModel {
    /// The cached keys (rotated) and values of every layer as f32 rows (len, kv_dim): what
    /// [`crate::gpu::GpuModel::import_kv`] takes (`pensive bench --context-fill cpu`).
    pub fn kv_rows(&self) -> Vec<[Vec<f32>; 2]> {
        self.cache.layers.iter().map(|l| l.rows(self.config.head_dim)).collect()
    }

    /// Build the decoder from loaded tensors. `max_context` caps the KV cache (default:
    /// the smaller of the model's context and [`DEFAULT_MAX_CONTEXT`]).
    pub fn new(m: LoadedModel, max_context: Option<usize>) -> Result<Self, LoadError> {
        Self::with_kv_precision(m, max_context, KvPrecision::default())
    }

    /// [`CpuModel::new`] with keys and values stored as `kv`.
    pub fn with_kv_precision(mut m: LoadedModel, max_context: Option<usize>, kv: KvPrecision) -> Result<Self, LoadError> {
        let c = m.config.clone();
        let (dim, q_dim, kv_dim, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let token_embd = matrix(m.take("token_embd.weight", &[dim, c.vocab_size])?)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let name = |part: &str| format!("blk.{l}.{part}");
            let mut bias = |part: &str, n: usize| -> Result<Option<Vec<f32>>, LoadError> {
                if c.qkv_bias {
                    Ok(Some(vector(m.take(&name(part), &[n])?)?))
                } else {
                    Ok(None)
                }
            };
            let (bq, bk, bv) = (bias("attn_q.bias", q_dim)?, bias("attn_k.bias", kv_dim)?, bias("attn_v.bias", kv_dim)?);
            let qk_norm = if c.qk_norm {
                Some(QkNorm {
                    q: vector(m.take(&name("attn_q_norm.weight"), &[c.head_dim])?)?,
                    k: vector(m.take(&name("attn_k_norm.weight"), &[c.head_dim])?)?,
                })
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: vector(m.take(&name("attn_norm.weight"), &[dim])?)?,
                wq: matrix(m.take(&name("attn_q.weight"), &[dim, q_dim])?)?,
                wk: matrix(m.take(&name("attn_k.weight"), &[dim, kv_dim])?)?,
                wv: matrix(m.take(&name("attn_v.weight"), &[dim, kv_dim])?)?,
                bq,
                bk,
                bv,
                qk_norm,
                wo: matrix(m.take(&name("attn_output.weight"), &[q_dim, dim])?)?,
                ffn_norm: vector(m.take(&name("ffn_norm.weight"), &[dim])?)?,
                w_gate: matrix(m.take(&name("ffn_gate.weight"), &[dim, ffn])?)?,
                w_up: matrix(m.take(&name("ffn_up.weight"), &[dim, ffn])?)?,
                w_down: matrix(m.take(&name("ffn_down.weight"), &[ffn, dim])?)?,
            });
        }
        let output_norm = vector(m.take("output_norm.weight", &[dim])?)?;
        let output = if c.tied_embeddings {
            None
        } else {
            Some(matrix(m.take("output.weight", &[dim, c.vocab_size])?)?)
        };
        let max_context = max_context.unwrap_or(DEFAULT_MAX_CONTEXT).min(c.context_length).max(1);
        Ok(Self {
            inv_freq: ops::rope_inv_freq(c.head_dim, c.rope_theta),
            cache: KvCache::new(&c, max_context, kv)?,
            config: c,
            token_embd,
            layers,
            output_norm,
            output,
            max_context,
            prefill_chunk: PREFILL_CHUNK,
            kernels: CpuKernels::default(),
        })
    }

    /// The forward pass over `tokens` (n) at positions `kv_len..kv_len+n`; returns the
    /// final hidden states of the last `n_logits` positions projected to logits.
    fn forward_impl(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        let c = &self.config;
        let (n, dim, q_dim, kv_dim, ffn) = (tokens.len(), c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let pos0 = self.cache.len;

        // x: (n, dim), the residual stream.
        let mut x = vec![0.0f32; n * dim];
        for (row, &t) in x.chunks_exact_mut(dim).zip(tokens) {
            self.token_embd
                .dequantize_row(t as usize, row)
                .map_err(|_| BackendError::BadToken { id: t, vocab: c.vocab_size })?;
        }
        let mut h = vec![0.0f32; n * dim];       // (n, dim) normed input of a block
        let mut q = vec![0.0f32; n * q_dim];     // (n, q_dim)
        let mut k = vec![0.0f32; n * kv_dim];    // (n, kv_dim)
        let mut v = vec![0.0f32; n * kv_dim];    // (n, kv_dim)
        let mut att = vec![0.0f32; n * q_dim];   // (n, q_dim) attention output
        let mut o = vec![0.0f32; n * dim];       // (n, dim) block output
        let mut gate = vec![0.0f32; n * ffn];    // (n, ffn)
        let mut up = vec![0.0f32; n * ffn];      // (n, ffn)
        let heads = ops::Heads { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: c.head_dim };

        for (layer, kv) in self.layers.iter().zip(self.cache.layers.iter_mut()) {
            // h = input_layernorm(x)
            for (hr, xr) in h.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                ops::rms_norm(hr, xr, &layer.attn_norm, c.rms_eps);
            }
            // q, k, v = q_proj(h), k_proj(h), v_proj(h)  (+ bias on Qwen2)
            let hx = Activations::new(&h, dim, self.kernels);
            layer.wq.mul(&hx, &mut q);
            layer.wk.mul(&hx, &mut k);
            layer.wv.mul(&hx, &mut v);
            for (out, bias) in [(&mut q, &layer.bq), (&mut k, &layer.bk), (&mut v, &layer.bv)] {
                if let Some(b) = bias {
                    for row in out.chunks_exact_mut(b.len()) {
                        ops::add_assign(row, b);
                    }
                }
            }
            // q, k = q_norm(q), k_norm(k), each head on its own (Qwen3)
            if let Some(norm) = &layer.qk_norm {
                ops::rms_norm_heads(&mut q, &norm.q, c.rms_eps);
                ops::rms_norm_heads(&mut k, &norm.k, c.rms_eps);
            }
            // apply_rotary_pos_emb(q, k, cos, sin)
            for i in 0..n {
                ops::rope(&mut q[i * q_dim..(i + 1) * q_dim], c.head_dim, pos0 + i, &self.inv_freq, c.rope_layout);
                ops::rope(&mut k[i * kv_dim..(i + 1) * kv_dim], c.head_dim, pos0 + i, &self.inv_freq, c.rope_layout);
            }
            // past_key_value.update(k, v);
            // attn = softmax(q kᵀ / √d + causal mask) v, query i sees positions 0..=pos0+i
            kv.update_and_attend(&k, &v, &q, &mut att, pos0, heads);
            // x = x + o_proj(attn)
            layer.wo.mul(&Activations::new(&att, q_dim, self.kernels), &mut o);
            ops::add_assign(&mut x, &o);
            // x = x + down_proj(silu(gate_proj(h)) * up_proj(h)), h = post_attention_layernorm(x)
            for (hr, xr) in h.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                ops::rms_norm(hr, xr, &layer.ffn_norm, c.rms_eps);
            }
            let hx = Activations::new(&h, dim, self.kernels);
            layer.w_gate.mul(&hx, &mut gate);
            layer.w_up.mul(&hx, &mut up);
            ops::silu_mul(&mut gate, &up);
            layer.w_down.mul(&Activations::new(&gate, ffn, self.kernels), &mut o);
            ops::add_assign(&mut x, &o);
        }
        self.cache.len += n;

        // logits = lm_head(norm(x)) for the last n_logits positions only.
        let first = n - n_logits;
        let mut normed = vec![0.0f32; n_logits * dim];
        for (hr, xr) in normed.chunks_exact_mut(dim).zip(x[first * dim..].chunks_exact(dim)) {
            ops::rms_norm(hr, xr, &self.output_norm, c.rms_eps);
        }
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        let mut logits = vec![0.0f32; n_logits * c.vocab_size];
        head.mul(&Activations::new(&normed, dim, self.kernels), &mut logits);
        Ok(logits)
    }
}

impl CpuModel {
    /// Tokens per forward pass of a long prefill (default [`PREFILL_CHUNK`], at least 2).
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens.max(2);
    }

    /// Multiply by the weights with `kernels` from the next forward pass on (default:
    /// [`CpuKernels::Int8`]).
    pub fn set_kernels(&mut self, kernels: CpuKernels) {
        self.kernels = kernels;
    }
}

/// `n` tokens in passes of `chunk`. A remainder of one token joins the pass before it: a
/// lone token takes the f32 mat-vec kernels, which round differently from the f32 tiles
/// (the int8 kernels give a row the same bits either way), and chunking must not change any
/// row's result.
fn prefill_chunks(n: usize, chunk: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut bounds: Vec<usize> = (0..n).step_by(chunk).collect();
    if n > 1 && n % chunk == 1 && bounds.len() > 1 {
        bounds.pop();
    }
    bounds.push(n);
    (0..bounds.len() - 1).map(move |i| bounds[i]..bounds[i + 1])
}

impl Backend for CpuModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn name(&self) -> String {
        #[cfg(not(target_arch = "wasm32"))]
        return format!("cpu ({} threads)", rayon::current_num_threads());
        #[cfg(all(target_arch = "wasm32", feature = "wasm-threads"))]
        return format!("cpu (wasm, {} threads)", rayon::current_num_threads());
        #[cfg(all(target_arch = "wasm32", not(feature = "wasm-threads")))]
        return "cpu (wasm)".to_string();
    }

    fn kv_len(&self) -> usize {
        self.cache.len
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn truncate(&mut self, len: usize) -> Result<(), BackendError> {
        if len > self.cache.len {
            return Err(BackendError::BadTruncate { to: len, len: self.cache.len });
        }
        let per_head = len * self.config.head_dim;
        for layer in &mut self.cache.layers {
            layer.truncate(per_head);
        }
        self.cache.len = len;
        Ok(())
    }

    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        let vocab = self.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(BackendError::BadToken { id, vocab });
        }
        let needed = self.cache.len + tokens.len();
        if needed > self.max_context {
            return Err(BackendError::ContextFull { needed, context: self.max_context });
        }
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let n_logits = n_logits.min(tokens.len());
        let wanted_from = tokens.len() - n_logits;
        let mut logits = Vec::with_capacity(n_logits * vocab);
        for chunk in prefill_chunks(tokens.len(), self.prefill_chunk) {
            let chunk_logits = chunk.end - chunk.start.max(wanted_from).min(chunk.end);
            logits.extend(self.forward_impl(&tokens[chunk], chunk_logits)?);
        }
        Ok(logits)
    }
}
