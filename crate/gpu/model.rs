//! [`GpuModel`]: the Llama/Qwen2/Qwen3 decoder on the GPU, step for step the CPU decoder
//! (crate::model) — same ops in the same order, so the two agree to rounding.
//!
//! A step (a decode token, or a prefill chunk of up to [`PREFILL_CHUNK`] tokens) is one
//! command encoder and one `queue.submit`: embedding, the layers, final norm, LM head and
//! the choice of the next token (argmax, or the sampler of sample.wgsl) — the KV cache is
//! written in place and the only readback is the 4-byte token id (8 with the raw argmax the
//! budget controller counts; the logits only when they are asked for).

use std::collections::HashMap;
use std::rc::Rc;

use super::kernels::{argmax_scratch_len, attention_scratch_len, FoldedNorm, QkvOut, MAX_FOLDED_NORM, MAX_HEAD_DIM, SAMPLE_LIST_LEN};
use super::repack::{matrix_layout, FusedMatrix, GpuMatrix};
use super::{storage_bytes, to_act_bytes, FaultCheck, GpuContext, GpuError, Recorder};
use crate::backend::{Backend, BackendError, SampleRequest, SampledToken};
use crate::config::ModelConfig;
use crate::loader::{LoadedModel, RawTensor};
use crate::ops;
use crate::quant::GgmlType;
use crate::sampler::{penalized_ids, SamplerOptions};

/// Tokens per prefill step: bounds the scratch buffers (logits alone are chunk × vocab f32).
pub const PREFILL_CHUNK: usize = 32;
/// Most ids a greedy step can ban (the budget controller bans a handful).
pub const MAX_BANNED: usize = 64;
/// Most ids a sampling step can ban or penalize (repeat_last_n 64 penalizes at most 64);
/// a request with more is sampled on the host.
pub const MAX_ADJUSTED: usize = 1024;
/// Largest vocabulary the sampler takes: it counts candidates in f32, exact below 2^24.
const MAX_SAMPLED_VOCAB: usize = 1 << 24;
/// KV capacity when the caller sets none (as the CPU backend).
pub const DEFAULT_MAX_CONTEXT: usize = 8192;

struct Layer {
    attn_norm: wgpu::Buffer,      // (dim) f32
    qkv: Qkv,
    qk_norm: Option<QkNorm>,      // Qwen3 only
    wo: GpuMatrix,                // (dim, q_dim)
    ffn_norm: wgpu::Buffer,       // (dim) f32
    gate_up: GateUp,
    w_down: GpuMatrix,            // (dim, ffn_dim)
    k_cache: wgpu::Buffer,        // (max_context, kv_dim) act, keys already rotated
    v_cache: wgpu::Buffer,        // (max_context, kv_dim) act
}

/// The q, k, v projections.
enum Qkv {
    /// One matrix q | k | v (matmul.wgsl matmul_qkv: bias, RoPE and the cache store in its
    /// epilogue); bias: (q_dim + 2 kv_dim) f32, Qwen2 only.
    Fused { w: FusedMatrix, bias: Option<wgpu::Buffer> },
    /// Three matrices, where they cannot be fused (one is split across bindings, or
    /// head_dim is not a multiple of 4).
    Separate {
        wq: GpuMatrix,            // (q_dim, dim)
        wk: GpuMatrix,            // (kv_dim, dim)
        wv: GpuMatrix,            // (kv_dim, dim)
        bq: Option<wgpu::Buffer>, // (q_dim) f32, Qwen2 only
        bk: Option<wgpu::Buffer>, // (kv_dim) f32
        bv: Option<wgpu::Buffer>, // (kv_dim) f32
    },
}

/// The FFN's gate and up projections.
enum GateUp {
    /// One matrix gate | up (matmul.wgsl matmul_gate_up: SiLU·mul in its epilogue).
    Fused(FusedMatrix),
    /// Two matrices, where they cannot be fused (split across bindings, or a matmul lane
    /// count of 64).
    Separate {
        gate: GpuMatrix, // (ffn_dim, dim)
        up: GpuMatrix,   // (ffn_dim, dim)
    },
}

/// Qwen3's per-head RMSNorm weights of q and k.
struct QkNorm {
    q: wgpu::Buffer, // (head_dim) f32
    k: wgpu::Buffer, // (head_dim) f32
}

/// Per-step working buffers, sized for PREFILL_CHUNK tokens.
struct Scratch {
    ids: wgpu::Buffer,         // (chunk) u32
    x: wgpu::Buffer,           // (chunk, dim) f32, the residual stream (f32 on every adapter, as llama.cpp: an f16 stream drifts over thousands of tokens)
    h: wgpu::Buffer,           // (chunk, dim) act, normed block input
    q: wgpu::Buffer,           // (chunk, q_dim) act
    k: wgpu::Buffer,           // (chunk, kv_dim) act
    v: wgpu::Buffer,           // (chunk, kv_dim) act
    att: wgpu::Buffer,         // (chunk, q_dim) act, attention output
    gate: wgpu::Buffer,        // (chunk, ffn_dim) act
    up: wgpu::Buffer,          // (chunk, ffn_dim) act
    attn_parts: wgpu::Buffer,  // attention_scratch_len(chunk) f32
    logits: wgpu::Buffer,      // (chunk, vocab) f32
    banned: wgpu::Buffer,      // (MAX_BANNED) u32
    argmax_parts: wgpu::Buffer, // (argmax_scratch_len(vocab)) vec2<u32>
    next: wgpu::Buffer,        // (1) u32, the greedy token
    adjust: wgpu::Buffer,      // (MAX_ADJUSTED) u32: ids to ban (| 1 << 31) or penalize
    sampled: wgpu::Buffer,     // (1) u32, the sampled token
    sample_list: wgpu::Buffer, // (SAMPLE_LIST_LEN) vec2<u32>: the sampler's candidate prefix
    /// (2) u32 each, MAP_READ: the chosen token, the raw argmax. Two, so that a step run
    /// ahead copies its answer into one while the other is being read.
    readback: [wgpu::Buffer; 2],
}

pub struct GpuModel {
    ctx: Rc<GpuContext>,
    config: ModelConfig,
    token_embd: GpuMatrix,        // (vocab, dim)
    layers: Vec<Layer>,
    output_norm: wgpu::Buffer,    // (dim) f32
    output: Option<GpuMatrix>,    // (vocab, dim); None = tied to token_embd
    inv_freq: wgpu::Buffer,       // (head_dim / 2) f32, from ops::rope_inv_freq
    scratch: Scratch,
    kv_len: usize,
    max_context: usize,
    /// The error scopes of the load (uploads, allocations, pipelines), closed but not yet
    /// awaited: [`GpuModel::settle`] or the first step awaits them.
    load_checks: Vec<FaultCheck>,
    /// Whether a step has run (the first runs inside an error scope of its own).
    stepped: bool,
    /// Whether a token choice may start the next step before it is read back (run-ahead).
    run_ahead: bool,
    /// The step run ahead, submitted and not yet claimed.
    ahead: Option<Ahead>,
    ahead_stats: AheadStats,
}

/// A decode step submitted before its request came (run-ahead): it feeds the token the
/// previous step chose, straight from the GPU buffer the choice was written to, at the
/// position after the committed cache, and chooses the next token with what the previous
/// request predicted (`key`). The next request claims it if it feeds that token and asks
/// the same; anything else drops it (its cache row is rewritten by whatever runs next).
struct Ahead {
    /// The token it feeds: the previous step's answer, known once that was read.
    fed: u32,
    key: ChoiceKey,
    /// Which of scratch.readback it copies its answer to.
    slot: usize,
    submission: wgpu::SubmissionIndex,
}

/// Everything a token choice on the GPU depends on besides the logits.
#[derive(Clone, Debug, PartialEq)]
struct ChoiceKey {
    options: SamplerOptions,
    /// scratch.adjust's contents: banned ids | BANNED_FLAG, then penalized ids.
    adjust: Vec<u32>,
    uniform: f64,
    raw_argmax: bool,
}

/// How run-ahead fared: steps claimed by the request they guessed, and steps dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AheadStats {
    pub claimed: u64,
    pub dropped: u64,
}

enum Uploaded {
    Matrix(GpuMatrix),
    Vector(wgpu::Buffer),
}

/// Receives the model's tensors one by one (a sink for the streaming GGUF loader), uploads
/// each at once so host memory never holds more than the tensor in flight.
pub struct GpuModelBuilder {
    ctx: Rc<GpuContext>,
    config: ModelConfig,
    max_context: usize,
    tensors: HashMap<String, Uploaded>,
    /// One per upload, each closed before the call returns (so scopes never interleave with
    /// another builder's on the same device): an allocation the device refuses is an error of
    /// the load, not a panic and not a model that "loads" with invalid buffers.
    checks: Vec<FaultCheck>,
}

/// KV cache capacity in tokens for a requested `max_context` (as the CPU backend).
fn kv_capacity(config: &ModelConfig, max_context: Option<usize>) -> usize {
    max_context.unwrap_or(DEFAULT_MAX_CONTEXT).min(config.context_length).max(1)
}

fn check_head_dim(config: &ModelConfig) -> Result<(), GpuError> {
    if config.head_dim > MAX_HEAD_DIM {
        return Err(GpuError::Model(format!("head_dim {} > {MAX_HEAD_DIM} is not supported", config.head_dim)));
    }
    Ok(())
}

/// GPU memory a model takes, in bytes of storage buffers, as [`GpuModelBuilder::finish`]
/// allocates them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuFootprint {
    /// Repacked matrices and f32 vectors.
    pub weights: u64,
    /// Keys and values of every layer for the whole context.
    pub kv_cache: u64,
    /// Per-step working buffers (sized for a prefill chunk) and the rope frequencies.
    pub scratch: u64,
}

impl GpuFootprint {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.scratch
    }
}

/// Whether `ctx` can hold a model of `config` with these tensors (name, type, GGUF dims),
/// decided from shapes alone, before any byte is uploaded: every tensor's type has a kernel,
/// every matrix row fits one binding (longer matrices are split by rows), one layer's KV
/// cache and one prefill chunk's logits fit one binding, and the whole [`GpuFootprint`]
/// fits the context's memory budget where one is known. Tensors the decoder does not use
/// are counted too (the builder refuses them later anyway).
pub fn check_fits<'a>(
    ctx: &GpuContext,
    config: &ModelConfig,
    tensors: impl IntoIterator<Item = (&'a str, GgmlType, &'a [u64])>,
    max_context: Option<usize>,
) -> Result<GpuFootprint, GpuError> {
    check_head_dim(config)?;
    let c = config;
    let max_binding = ctx.max_binding();
    let mut weights = 0;
    for (name, ty, dims) in tensors {
        let rows: u64 = dims.iter().skip(1).product();
        let cols = dims.first().copied().unwrap_or(0);
        weights += if rows > 1 {
            // Each part is its own buffer of whole rows: the parts add up to rows × row bytes.
            let (row_bytes, _) = matrix_layout(name, ty, cols as usize, max_binding)?;
            storage_bytes(rows * row_bytes)
        } else if matches!(ty, GgmlType::F32 | GgmlType::F16) {
            storage_bytes(cols * 4) // uploaded as f32
        } else {
            return Err(GpuError::UnsupportedType { name: name.to_string(), ty });
        };
    }
    let max_context = kv_capacity(c, max_context);
    let act = ctx.act().size() as u64;
    let cache_bytes = (max_context * c.kv_dim()) as u64 * act;
    if cache_bytes > max_binding {
        return Err(GpuError::TooLarge { what: "one layer's KV cache".into(), needed: cache_bytes, allowed: max_binding });
    }
    let n = PREFILL_CHUNK as u64;
    let logits_bytes = n * c.vocab_size as u64 * 4;
    if logits_bytes > max_binding {
        return Err(GpuError::TooLarge { what: "a prefill chunk's logits".into(), needed: logits_bytes, allowed: max_binding });
    }
    let (dim, q_dim, kv_dim, ffn) = (c.dim as u64, c.q_dim() as u64, c.kv_dim() as u64, c.ffn_dim as u64);
    // The buffers of `Scratch`, in its order, then inv_freq.
    let scratch = [
        n * 4,
        n * dim * 4,
        n * dim * act,
        n * q_dim * act,
        n * kv_dim * act,
        n * kv_dim * act,
        n * q_dim * act,
        n * ffn * act,
        n * ffn * act,
        attention_scratch_len(PREFILL_CHUNK, c.n_heads, c.head_dim) as u64 * 4,
        logits_bytes,
        MAX_BANNED as u64 * 4,
        argmax_scratch_len(c.vocab_size) as u64 * 8,
        4,
        MAX_ADJUSTED as u64 * 4,
        4,
        SAMPLE_LIST_LEN as u64 * 8,
        (c.head_dim / 2) as u64 * 4,
    ]
    .into_iter()
    .map(storage_bytes)
    .sum();
    let footprint = GpuFootprint { weights, kv_cache: 2 * c.n_layers as u64 * storage_bytes(cache_bytes), scratch };
    if let Some(budget) = ctx.memory_budget() {
        if footprint.total() > budget {
            return Err(GpuError::TooLarge {
                what: format!(
                    "the model (weights {} + KV cache for {max_context} tokens {} + scratch {})",
                    footprint.weights, footprint.kv_cache, footprint.scratch
                ),
                needed: footprint.total(),
                allowed: budget,
            });
        }
    }
    Ok(footprint)
}

impl GpuModelBuilder {
    pub fn new(ctx: Rc<GpuContext>, config: ModelConfig, max_context: Option<usize>) -> Result<Self, GpuError> {
        check_head_dim(&config)?;
        let max_context = kv_capacity(&config, max_context);
        Ok(GpuModelBuilder { ctx, config, max_context, tensors: HashMap::new(), checks: Vec::new() })
    }

    /// Upload one tensor. Matrices (2-D) stay quantized; vectors (norms, biases) become f32.
    pub fn add(&mut self, t: &RawTensor) -> Result<(), GpuError> {
        self.ctx.check_faults()?;
        let scope = self.ctx.fault_scope();
        let uploaded = self.upload(t);
        self.checks.push(scope.close());
        self.tensors.insert(t.name.clone(), uploaded?);
        Ok(())
    }

    fn upload(&self, t: &RawTensor) -> Result<Uploaded, GpuError> {
        let rows: u64 = t.dims.iter().skip(1).product();
        let cols = t.dims.first().copied().unwrap_or(0);
        let uploaded = if rows > 1 {
            Uploaded::Matrix(GpuMatrix::upload(&self.ctx, &t.name, t.ty, rows as usize, cols as usize, t.data.as_slice())?)
        } else {
            let values: Vec<f32> = match t.ty {
                GgmlType::F32 => bytemuck::pod_collect_to_vec(t.data.as_slice()),
                GgmlType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(t.data.as_slice()).iter().map(|h| h.to_f32()).collect(),
                ty => return Err(GpuError::UnsupportedType { name: t.name.clone(), ty }),
            };
            if values.len() as u64 != cols {
                return Err(GpuError::Tensor { name: t.name.clone(), msg: format!("{} values, expected {cols}", values.len()) });
            }
            Uploaded::Vector(self.ctx.storage_init(&t.name, bytemuck::cast_slice(&values)))
        };
        Ok(uploaded)
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<GpuMatrix, GpuError> {
        match self.tensors.remove(name) {
            Some(Uploaded::Matrix(m)) if m.rows == rows && m.cols == cols => Ok(m),
            Some(Uploaded::Matrix(m)) => Err(GpuError::Tensor {
                name: name.into(),
                msg: format!("shape ({}, {}), expected ({rows}, {cols})", m.rows, m.cols),
            }),
            Some(Uploaded::Vector(_)) => Err(GpuError::Tensor { name: name.into(), msg: "a vector where a matrix belongs".into() }),
            None => Err(GpuError::Tensor { name: name.into(), msg: "missing".into() }),
        }
    }

    /// A vector of `len` f32.
    fn vector(&mut self, name: &str, len: usize) -> Result<wgpu::Buffer, GpuError> {
        match self.tensors.remove(name) {
            Some(Uploaded::Vector(v)) if v.size() == len as u64 * 4 => Ok(v),
            Some(Uploaded::Vector(v)) => {
                Err(GpuError::Tensor { name: name.into(), msg: format!("{} values, expected {len}", v.size() / 4) })
            }
            _ => Err(GpuError::Tensor { name: name.into(), msg: "missing or not a vector".into() }),
        }
    }

    /// The model, once every tensor is in: allocates the KV cache and the scratch buffers and
    /// compiles the pipelines, in an error scope of its own. The device's verdict on the whole
    /// load comes with [`GpuModel::settle`] (or the first step).
    pub fn finish(mut self) -> Result<GpuModel, GpuError> {
        self.ctx.check_faults()?;
        let scope = self.ctx.fault_scope();
        let model = self.build();
        let mut load_checks = std::mem::take(&mut self.checks);
        load_checks.push(scope.close());
        let mut model = model?;
        model.load_checks = load_checks;
        Ok(model)
    }

    fn build(&mut self) -> Result<GpuModel, GpuError> {
        let c = self.config.clone();
        let (dim, q_dim, kv_dim, ffn, vocab) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.vocab_size);
        let ctx = self.ctx.clone();
        let act = ctx.act().size() as u64;
        let cache_bytes = (self.max_context * kv_dim) as u64 * act;
        if cache_bytes > ctx.max_binding() {
            return Err(GpuError::TooLarge { what: "one layer's KV cache".into(), needed: cache_bytes, allowed: ctx.max_binding() });
        }
        let token_embd = self.matrix("token_embd.weight", vocab, dim)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let name = |part: &str| format!("blk.{l}.{part}");
            let bias = |s: &mut Self, part: &str, len| if c.qkv_bias { s.vector(&name(part), len).map(Some) } else { Ok(None) };
            let qk_norm = if c.qk_norm {
                Some(QkNorm {
                    q: self.vector(&name("attn_q_norm.weight"), c.head_dim)?,
                    k: self.vector(&name("attn_k_norm.weight"), c.head_dim)?,
                })
            } else {
                None
            };
            let wq = self.matrix(&name("attn_q.weight"), q_dim, dim)?;
            let wk = self.matrix(&name("attn_k.weight"), kv_dim, dim)?;
            let wv = self.matrix(&name("attn_v.weight"), kv_dim, dim)?;
            let (bq, bk, bv) = (bias(self, "attn_q.bias", q_dim)?, bias(self, "attn_k.bias", kv_dim)?, bias(self, "attn_v.bias", kv_dim)?);
            let gate = self.matrix(&name("ffn_gate.weight"), ffn, dim)?;
            let up = self.matrix(&name("ffn_up.weight"), ffn, dim)?;
            layers.push(Layer {
                attn_norm: self.vector(&name("attn_norm.weight"), dim)?,
                qkv: fuse_qkv(&ctx, &c, [wq, wk, wv], [bq, bk, bv])?,
                qk_norm,
                wo: self.matrix(&name("attn_output.weight"), dim, q_dim)?,
                ffn_norm: self.vector(&name("ffn_norm.weight"), dim)?,
                gate_up: fuse_gate_up(&ctx, gate, up)?,
                w_down: self.matrix(&name("ffn_down.weight"), dim, ffn)?,
                k_cache: ctx.storage("k_cache", cache_bytes),
                v_cache: ctx.storage("v_cache", cache_bytes),
            });
        }
        let output_norm = self.vector("output_norm.weight", dim)?;
        let output = if c.tied_embeddings { None } else { Some(self.matrix("output.weight", vocab, dim)?) };
        let n = PREFILL_CHUNK as u64;
        let logits_bytes = n * vocab as u64 * 4;
        if logits_bytes > ctx.max_binding() {
            return Err(GpuError::TooLarge { what: "a prefill chunk's logits".into(), needed: logits_bytes, allowed: ctx.max_binding() });
        }
        let scratch = Scratch {
            ids: ctx.storage("ids", n * 4),
            x: ctx.storage("x", n * dim as u64 * 4),
            h: ctx.storage("h", n * dim as u64 * act),
            q: ctx.storage("q", n * q_dim as u64 * act),
            k: ctx.storage("k", n * kv_dim as u64 * act),
            v: ctx.storage("v", n * kv_dim as u64 * act),
            att: ctx.storage("att", n * q_dim as u64 * act),
            gate: ctx.storage("gate", n * ffn as u64 * act),
            up: ctx.storage("up", n * ffn as u64 * act),
            attn_parts: ctx.storage("attn_parts", attention_scratch_len(PREFILL_CHUNK, c.n_heads, c.head_dim) as u64 * 4),
            logits: ctx.storage("logits", logits_bytes),
            banned: ctx.storage("banned", MAX_BANNED as u64 * 4),
            argmax_parts: ctx.storage("argmax_parts", argmax_scratch_len(vocab) as u64 * 8),
            next: ctx.storage("next", 4),
            adjust: ctx.storage("adjust", MAX_ADJUSTED as u64 * 4),
            sampled: ctx.storage("sampled", 4),
            sample_list: ctx.storage("sample_list", SAMPLE_LIST_LEN as u64 * 8),
            readback: [0, 1].map(|_| {
                ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("token readback"),
                    size: 8,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }),
        };
        if let Some(name) = self.tensors.keys().next() {
            return Err(GpuError::Tensor { name: name.clone(), msg: "not used by the decoder".into() });
        }
        let inv_freq = ops::rope_inv_freq(c.head_dim, c.rope_theta);
        // A CPU adapter (lavapipe, SwiftShader) is the same cores the host records on:
        // there is nothing to overlap, and on 2 cores it measured from +10% to -20%.
        let run_ahead = ctx.info.device_type != wgpu::DeviceType::Cpu;
        let model = GpuModel {
            inv_freq: ctx.storage_init("inv_freq", bytemuck::cast_slice(&inv_freq)),
            ctx,
            config: c,
            token_embd,
            layers,
            output_norm,
            output,
            scratch,
            kv_len: 0,
            max_context: self.max_context,
            load_checks: Vec::new(),
            stepped: false,
            run_ahead,
            ahead: None,
            ahead_stats: AheadStats::default(),
        };
        model.warm_up();
        Ok(model)
    }
}

/// q | k | v as one [`FusedMatrix`] (and their biases as one vector) where matmul_qkv can
/// take them: segments whose rows are multiples of 4 (a row group's rotation pairs).
fn fuse_qkv(ctx: &GpuContext, c: &ModelConfig, w: [GpuMatrix; 3], bias: [Option<wgpu::Buffer>; 3]) -> Result<Qkv, GpuError> {
    let separate = |[wq, wk, wv]: [GpuMatrix; 3], [bq, bk, bv]: [Option<wgpu::Buffer>; 3]| Qkv::Separate { wq, wk, wv, bq, bk, bv };
    if c.head_dim % 4 != 0 || ctx.separate_projections {
        return Ok(separate(w, bias));
    }
    match FusedMatrix::concat(ctx, "qkv", w.into()) {
        Ok(w) => {
            let bias = match bias {
                [Some(bq), Some(bk), Some(bv)] => Some(concat_vectors(ctx, "qkv bias", [bq, bk, bv])),
                _ => None,
            };
            Ok(Qkv::Fused { w, bias })
        }
        Err(mats) => {
            let w = <[GpuMatrix; 3]>::try_from(mats).map_err(|_| GpuError::Model("q/k/v matrices lost".into()))?;
            Ok(separate(w, bias))
        }
    }
}

/// gate | up as one [`FusedMatrix`] where matmul_gate_up can take them (it pairs two row
/// groups per workgroup: matmul lanes ≤ 32).
fn fuse_gate_up(ctx: &GpuContext, gate: GpuMatrix, up: GpuMatrix) -> Result<GateUp, GpuError> {
    if ctx.matmul_lanes() > 32 || ctx.separate_projections {
        return Ok(GateUp::Separate { gate, up });
    }
    match FusedMatrix::concat(ctx, "gate_up", vec![gate, up]) {
        Ok(w) => Ok(GateUp::Fused(w)),
        Err(mats) => match <[GpuMatrix; 2]>::try_from(mats) {
            Ok([gate, up]) => Ok(GateUp::Separate { gate, up }),
            Err(_) => Err(GpuError::Model("gate/up matrices lost".into())),
        },
    }
}

/// The f32 vectors back to back in one buffer (copied on the GPU; the parts are released).
fn concat_vectors<const N: usize>(ctx: &GpuContext, label: &str, parts: [wgpu::Buffer; N]) -> wgpu::Buffer {
    let out = ctx.storage(label, parts.iter().map(|b| b.size()).sum());
    let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
    let mut offset = 0;
    for part in &parts {
        encoder.copy_buffer_to_buffer(part, 0, &out, offset, part.size());
        offset += part.size();
    }
    ctx.queue.submit([encoder.finish()]);
    for part in parts {
        ctx.release(part);
    }
    out
}

/// What a step ends with.
enum Tail {
    /// No logits (a prefill chunk whose tokens need none).
    None,
    /// Logits of the chunk's last `n` tokens, copied into `readback` ((n, vocab) f32).
    Logits { n: usize, readback: wgpu::Buffer },
    /// The argmax of the last token's logits (banned ids excluded), into scratch.next and
    /// readback[slot][0].
    Greedy { n_banned: usize, slot: usize },
    /// The token `options` sample from the last token's logits with `uniform`, after the
    /// `n_adjust` bans and penalties in scratch.adjust, into scratch.sampled and
    /// readback[slot][0]; with `raw_argmax`, the argmax of the unadjusted logits into
    /// readback[slot][1].
    Sample { options: SamplerOptions, uniform: f64, n_adjust: usize, raw_argmax: bool, slot: usize },
}

impl GpuModel {
    /// Upload a model the loader has already read (the CPU backend's input, so the two are
    /// built from the same tensors).
    pub fn from_loaded(ctx: Rc<GpuContext>, mut m: LoadedModel, max_context: Option<usize>) -> Result<Self, GpuError> {
        let mut builder = GpuModelBuilder::new(ctx, m.config.clone(), max_context)?;
        for (_, t) in m.tensors.drain() {
            builder.add(&t)?;
        }
        builder.finish()
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The device's verdict on the load: the first out-of-memory or validation error of any
    /// upload, allocation or pipeline, or the loss of the device. Natively known at once; in
    /// the browser it waits for the GPU process. The first step awaits it if no one did.
    pub async fn settle(&mut self) -> Result<(), GpuError> {
        let checks = std::mem::take(&mut self.load_checks);
        let mut first = Ok(());
        for check in checks {
            let result = check.result().await;
            if first.is_ok() {
                first = result;
            }
        }
        if let Some(why) = self.ctx.faults.lost() {
            return Err(GpuError::DeviceLost(why));
        }
        first
    }

    /// Why the device was lost, once it has been: the model cannot run again.
    pub fn lost_reason(&self) -> Option<String> {
        self.ctx.faults.lost()
    }

    /// Every step the engine runs goes through here. Before it: a lost device or an error no
    /// scope caught is this call's error. The first step runs in an error scope of its own
    /// and awaits the load's scopes too. After it: a device that turns out lost is the
    /// error, whatever the step itself returned (a rejected readback, garbage).
    async fn guarded<T>(&mut self, run: impl AsyncFnOnce(&mut Self) -> Result<T, BackendError>) -> Result<T, BackendError> {
        self.ctx.check_faults().map_err(gpu)?;
        let scope = (!self.stepped).then(|| self.ctx.fault_scope());
        let result = run(self).await;
        let scope = scope.map(|s| s.close());
        self.stepped = true;
        let step_faults = match scope {
            Some(check) => check.result().await,
            None => Ok(()),
        };
        let load = self.settle().await;
        // Only a failure on the device (a rejected readback) waits for the loss to be reported;
        // the host's own refusals (context full, a bad id) are not the device's.
        let lost = match result {
            Err(BackendError::Gpu(_)) => self.ctx.lost_after_failure().await,
            _ => self.ctx.faults.lost(),
        };
        if let Some(why) = lost {
            return Err(BackendError::DeviceLost(why));
        }
        load.and(step_faults).and_then(|()| self.ctx.faults.take_uncaptured().map_or(Ok(()), Err)).map_err(gpu)?;
        result
    }

    /// Bytes of weights one decode step reads: every layer's matrices and vectors, the
    /// final norm, the LM head, and one row of the embedding table.
    pub fn decode_weight_bytes(&self) -> u64 {
        let m = |w: &GpuMatrix| w.parts.iter().map(|p| p.buffer.size()).sum::<u64>();
        let v = |b: &wgpu::Buffer| b.size();
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let qkv = match &l.qkv {
                    Qkv::Fused { w, bias } => v(&w.buffer) + bias.as_ref().map_or(0, v),
                    Qkv::Separate { wq, wk, wv, bq, bk, bv } => {
                        m(wq) + m(wk) + m(wv) + [bq, bk, bv].into_iter().flatten().map(v).sum::<u64>()
                    }
                };
                let gate_up = match &l.gate_up {
                    GateUp::Fused(w) => v(&w.buffer),
                    GateUp::Separate { gate, up } => m(gate) + m(up),
                };
                let qk = l.qk_norm.as_ref().map_or(0, |n| v(&n.q) + v(&n.k));
                v(&l.attn_norm) + qkv + qk + m(&l.wo) + v(&l.ffn_norm) + gate_up + m(&l.w_down)
            })
            .sum();
        let embd = m(&self.token_embd);
        layers + v(&self.output_norm) + self.output.as_ref().map_or(embd, m) + embd / self.config.vocab_size.max(1) as u64
    }

    /// Replace the cache with `len` positions of keys (rotated, as this backend stores them)
    /// and values computed elsewhere: `layers[i]` = layer i's (keys, values), each (len,
    /// kv_dim) f32 rows ([`crate::model::CpuModel::kv_rows`]). What follows attends to them
    /// as to positions this backend processed itself; `pensive bench --context-fill cpu`
    /// fills a long context this way where prefill on a software adapter would take an hour.
    pub fn import_kv(&mut self, layers: &[[Vec<f32>; 2]], len: usize) -> Result<(), BackendError> {
        let c = &self.config;
        let rows = len * c.kv_dim();
        if len > self.max_context {
            return Err(BackendError::ContextFull { needed: len, context: self.max_context });
        }
        if layers.len() != c.n_layers || layers.iter().flatten().any(|x| x.len() != rows) {
            return Err(BackendError::Gpu(format!(
                "import_kv: want {} layers of {len} × {} keys and values",
                c.n_layers,
                c.kv_dim()
            )));
        }
        self.drop_ahead();
        for (layer, [k, v]) in self.layers.iter().zip(layers) {
            for (cache, x) in [(&layer.k_cache, k), (&layer.v_cache, v)] {
                let mut bytes = to_act_bytes(self.ctx.act(), x);
                bytes.resize(bytes.len().next_multiple_of(4), 0);
                self.ctx.queue.write_buffer(cache, 0, &bytes);
            }
        }
        self.kv_len = len;
        Ok(())
    }

    /// Bytes of keys and values one cached position holds (all layers): what attention
    /// reads per position of context at every decode step.
    pub fn kv_bytes_per_position(&self) -> u64 {
        (2 * self.config.n_layers * self.config.kv_dim() * self.ctx.act().size()) as u64
    }

    fn check(&self, tokens: &[u32]) -> Result<(), BackendError> {
        let vocab = self.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(BackendError::BadToken { id, vocab });
        }
        let needed = self.kv_len + tokens.len();
        if needed > self.max_context {
            return Err(BackendError::ContextFull { needed, context: self.max_context });
        }
        Ok(())
    }

    /// Record a decode step and a full prefill chunk without submitting them, so that their
    /// pipelines (shader compilation) and bind groups are created at load, not on the first
    /// token.
    fn warm_up(&self) {
        let sample = Tail::Sample { options: SamplerOptions::default(), uniform: 0.0, n_adjust: 1, raw_argmax: true, slot: 0 };
        for (n, tail) in [(1, Tail::Greedy { n_banned: 0, slot: 0 }), (1, sample), (PREFILL_CHUNK, Tail::None)] {
            let mut rec = self.ctx.recorder();
            self.record(&mut rec, n, 0, &tail);
            // Dropped unsubmitted: nothing runs.
        }
    }

    /// Record and submit one step over `tokens` (≤ PREFILL_CHUNK) at positions kv_len.. .
    fn step(&mut self, tokens: &[u32], tail: &Tail) -> wgpu::SubmissionIndex {
        self.ctx.queue.write_buffer(&self.scratch.ids, 0, bytemuck::cast_slice(tokens));
        let mut rec = self.ctx.recorder();
        self.record(&mut rec, tokens.len(), self.kv_len, tail);
        let submission = rec.submit();
        self.kv_len += tokens.len();
        submission
    }

    /// Submit a one-token step at position `pos` (past the committed cache, which it does
    /// not extend) fed with the id the last step chose, read on the GPU from `chosen`.
    fn step_ahead(&self, chosen: &wgpu::Buffer, pos: usize, tail: &Tail) -> wgpu::SubmissionIndex {
        let mut rec = self.ctx.recorder();
        rec.copy(chosen, 0, &self.scratch.ids, 0, 4);
        self.record(&mut rec, 1, pos, tail);
        rec.submit()
    }

    /// Forget the step run ahead, if any (something else runs at its position).
    fn drop_ahead(&mut self) {
        if self.ahead.take().is_some() {
            self.ahead_stats.dropped += 1;
        }
    }

    /// Whether token choices may run the next step ahead (by default on GPUs, off on CPU
    /// adapters).
    pub fn set_run_ahead(&mut self, on: bool) {
        self.run_ahead = on;
        if !on {
            self.drop_ahead();
        }
    }

    /// Whether token choices run the next step ahead.
    pub fn run_ahead(&self) -> bool {
        self.run_ahead
    }

    /// Steps run ahead that their request claimed, and steps dropped, so far.
    pub fn ahead_stats(&self) -> AheadStats {
        self.ahead_stats
    }

    /// Record one step of `n` tokens (ids already in scratch.ids) at positions pos0.. .
    fn record(&self, rec: &mut Recorder<'_>, n: usize, pos0: usize, tail: &Tail) {
        let c = &self.config;
        let s = &self.scratch;
        let (dim, q_dim, ffn) = (c.dim, c.q_dim(), c.ffn_dim);

        // x = embed(tokens)
        rec.embed(&self.token_embd, &s.ids, &s.x, n);
        // A decode step folds each RMSNorm into the fused matmul after it; a prefill chunk
        // (whose normed rows would not fit workgroup memory) normalizes into h first.
        let fold = n == 1 && dim <= MAX_FOLDED_NORM;
        let normed = |rec: &mut Recorder<'_>, weight| {
            if fold {
                (&s.x, Some(FoldedNorm { weight, eps: c.rms_eps }))
            } else {
                rec.rms_norm(&s.x, weight, &s.h, dim, n, c.rms_eps);
                (&s.h, None)
            }
        };
        for layer in &self.layers {
            match &layer.qkv {
                Qkv::Fused { w, bias } => {
                    // q, k, v = W rms_norm(x) (+ bias); rope(q), rope(k); append k, v to the
                    // cache — Qwen3 normalizes q and k per head before its rope
                    let (input, norm) = normed(rec, &layer.attn_norm);
                    let out = QkvOut {
                        q: &s.q,
                        k_cache: &layer.k_cache,
                        v_cache: &layer.v_cache,
                        bias: bias.as_ref(),
                        inv_freq: &self.inv_freq,
                        rope: layer.qk_norm.is_none().then_some(c.rope_layout),
                        head_dim: c.head_dim,
                        pos0,
                    };
                    rec.matmul_qkv(w, input, n, norm, &out);
                    if let Some(qk) = &layer.qk_norm {
                        let heads = (c.n_heads, c.n_kv_heads, c.head_dim);
                        rec.qk_norm_rope(&s.q, &layer.k_cache, &qk.q, &qk.k, &self.inv_freq, heads, pos0, n, c.rope_layout, c.rms_eps);
                    }
                }
                Qkv::Separate { wq, wk, wv, bq, bk, bv } => {
                    // h = rms_norm(x); q, k, v = W h (+ bias)
                    rec.rms_norm(&s.x, &layer.attn_norm, &s.h, dim, n, c.rms_eps);
                    rec.matmul(wq, &s.h, 0, dim, &s.q, n, bq.as_ref(), false, false);
                    rec.matmul(wk, &s.h, 0, dim, &s.k, n, bk.as_ref(), false, false);
                    rec.matmul(wv, &s.h, 0, dim, &s.v, n, bv.as_ref(), false, false);
                    // q, k = q_norm(q), k_norm(k), each head on its own (Qwen3)
                    if let Some(norm) = &layer.qk_norm {
                        rec.rms_norm_heads(&s.q, &norm.q, c.n_heads, c.head_dim, n, c.rms_eps);
                        rec.rms_norm_heads(&s.k, &norm.k, c.n_kv_heads, c.head_dim, n, c.rms_eps);
                    }
                    // rope(q), rope(k); append k, v to the cache
                    rec.rope(&s.q, &self.inv_freq, c.n_heads, c.head_dim, pos0, n, c.rope_layout);
                    rec.rope_store_kv(&s.k, &s.v, &self.inv_freq, &layer.k_cache, &layer.v_cache, c.n_kv_heads, c.head_dim, pos0, n, c.rope_layout);
                }
            }
            // a = attention(q, cache); x += Wo a
            rec.attention(&s.q, &layer.k_cache, &layer.v_cache, &s.attn_parts, &s.att, c.n_heads, c.n_kv_heads, c.head_dim, pos0, n);
            rec.matmul(&layer.wo, &s.att, 0, q_dim, &s.x, n, None, true, true);
            // gate = silu(W_gate h) * W_up h, h = rms_norm(x)
            match &layer.gate_up {
                GateUp::Fused(w) => {
                    let (input, norm) = normed(rec, &layer.ffn_norm);
                    rec.matmul_gate_up(w, input, n, norm, &s.gate);
                }
                GateUp::Separate { gate, up } => {
                    rec.rms_norm(&s.x, &layer.ffn_norm, &s.h, dim, n, c.rms_eps);
                    rec.matmul(gate, &s.h, 0, dim, &s.gate, n, None, false, false);
                    rec.matmul(up, &s.h, 0, dim, &s.up, n, None, false, false);
                    rec.silu_mul(&s.gate, &s.up, n * ffn);
                }
            }
            // x += W_down gate
            rec.matmul(&layer.w_down, &s.gate, 0, ffn, &s.x, n, None, true, true);
        }
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        let vocab = c.vocab_size;
        match tail {
            Tail::None => {}
            Tail::Logits { n: n_logits, readback } => {
                // logits of the last n_logits tokens = W_out rms_norm(x)
                rec.rms_norm(&s.x, &self.output_norm, &s.h, dim, n, c.rms_eps);
                rec.matmul(head, &s.h, (n - n_logits) * dim, dim, &s.logits, *n_logits, None, false, true);
                rec.copy(&s.logits, 0, readback, 0, (n_logits * vocab * 4) as u64);
            }
            Tail::Greedy { n_banned, slot } => {
                rec.rms_norm(&s.x, &self.output_norm, &s.h, dim, n, c.rms_eps);
                rec.matmul(head, &s.h, (n - 1) * dim, dim, &s.logits, 1, None, false, true);
                rec.argmax(&s.logits, 0, vocab, &s.banned, *n_banned, &s.argmax_parts, &s.next);
                rec.copy(&s.next, 0, &s.readback[*slot], 0, 4);
            }
            Tail::Sample { options, uniform, n_adjust, raw_argmax, slot } => {
                rec.rms_norm(&s.x, &self.output_norm, &s.h, dim, n, c.rms_eps);
                rec.matmul(head, &s.h, (n - 1) * dim, dim, &s.logits, 1, None, false, true);
                if *raw_argmax {
                    // Before the bans and penalties change the logits in place.
                    rec.argmax(&s.logits, 0, vocab, &s.banned, 0, &s.argmax_parts, &s.next);
                    rec.copy(&s.next, 0, &s.readback[*slot], 4, 4);
                }
                rec.sample(&s.logits, vocab, &s.adjust, *n_adjust, options, *uniform, &s.sampled, &s.sample_list);
                rec.copy(&s.sampled, 0, &s.readback[*slot], 0, 4);
            }
        }
    }

    /// Run `tokens`, returning the logits of the last `n_logits`: (n_logits, vocab) f32.
    pub async fn forward_logits(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        self.drop_ahead();
        self.check(tokens)?;
        let n_logits = n_logits.min(tokens.len());
        let vocab = self.config.vocab_size;
        let first_logit = tokens.len() - n_logits;
        let mut out = Vec::with_capacity(n_logits * vocab);
        let mut start = 0;
        while start < tokens.len() {
            let chunk = &tokens[start..(start + PREFILL_CHUNK).min(tokens.len())];
            let end = start + chunk.len();
            let wanted = end.saturating_sub(first_logit.max(start));
            if wanted == 0 {
                self.step(chunk, &Tail::None);
            } else {
                let readback = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("logits readback"),
                    size: (wanted * vocab * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.step(chunk, &Tail::Logits { n: wanted, readback: readback.clone() });
                let bytes = self.ctx.map_read(&readback, (wanted * vocab * 4) as u64).await.map_err(gpu)?;
                out.extend(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes));
            }
            start = end;
        }
        Ok(out)
    }

    /// Run `tokens` and return the greedy next token (argmax of the last logits, `banned`
    /// ids excluded), computed on the GPU: the step reads back 4 bytes.
    pub async fn forward_greedy_gpu(&mut self, tokens: &[u32], banned: &[u32]) -> Result<u32, BackendError> {
        self.drop_ahead();
        self.check(tokens)?;
        if tokens.is_empty() {
            return Err(BackendError::Gpu("greedy step over no tokens".into()));
        }
        if banned.len() > MAX_BANNED {
            return Err(BackendError::Gpu(format!("{} banned ids > {MAX_BANNED}", banned.len())));
        }
        let vocab = self.config.vocab_size;
        if let Some(&id) = banned.iter().find(|&&t| t as usize >= vocab) {
            return Err(BackendError::BadToken { id, vocab });
        }
        if !banned.is_empty() {
            self.ctx.queue.write_buffer(&self.scratch.banned, 0, bytemuck::cast_slice(banned));
        }
        let submission = self.run_with_tail(tokens, &Tail::Greedy { n_banned: banned.len(), slot: 0 });
        let bytes = self.ctx.map_read_after(&self.scratch.readback[0], 4, Some(submission)).await.map_err(gpu)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Run `tokens` (≥ 1) in chunks, the last chunk ending with `tail`.
    fn run_with_tail(&mut self, tokens: &[u32], tail: &Tail) -> wgpu::SubmissionIndex {
        let (body, last) = tokens.split_at(tokens.len() - tokens.len() % PREFILL_CHUNK.max(1));
        let (body, last) = if last.is_empty() { body.split_at(body.len() - PREFILL_CHUNK) } else { (body, last) };
        for chunk in body.chunks(PREFILL_CHUNK) {
            self.step(chunk, &Tail::None);
        }
        self.step(last, tail)
    }

    /// Run `tokens` and sample the next token on the GPU (sample.wgsl): the step reads back
    /// 4 bytes (8 with the raw argmax). `None` when the request does not fit the kernel's
    /// buffers or has a logit_bias (then nothing ran).
    pub async fn forward_sample_gpu(&mut self, tokens: &[u32], request: &SampleRequest<'_>) -> Option<Result<SampledToken, BackendError>> {
        let vocab = self.config.vocab_size;
        // Each id once, bans winning over penalties (a banned id is gone whatever its logit).
        // Ids outside the vocabulary have no logit: the CPU sampler ignores them too.
        let in_vocab = |id: &u32| (*id as usize) < vocab;
        let mut banned: Vec<u32> = request.banned.iter().copied().filter(in_vocab).collect();
        banned.sort_unstable();
        banned.dedup();
        let penalized = penalized_ids(request.options, request.history);
        let penalized: Vec<u32> = penalized.into_iter().filter(|id| in_vocab(id) && banned.binary_search(id).is_err()).collect();
        let n_penalized = penalized.len();
        let adjust: Vec<u32> = banned.iter().map(|&id| id | BANNED_FLAG).chain(penalized).collect();
        // logit_bias is applied on the host (sample.wgsl has no per-id bias yet).
        if adjust.len() > MAX_ADJUSTED || vocab >= MAX_SAMPLED_VOCAB || !request.options.logit_bias.is_empty() {
            self.drop_ahead();
            return None;
        }
        let key = ChoiceKey { options: request.options.clone(), adjust, uniform: request.uniform, raw_argmax: request.raw_argmax };
        // The next request's guess: the same choice with the next uniform. Penalties change
        // with every token fed, so such a guess would rarely hold: none is made.
        let next = request.ahead.filter(|_| self.run_ahead && n_penalized == 0).map(|uniform| ChoiceKey { uniform, ..key.clone() });
        Some(self.choose(tokens, key, next).await)
    }

    /// The tail that makes `key`'s choice into readback[slot]: the plain argmax kernel where
    /// nothing but the argmax is asked for, else the sampler.
    fn choice_tail(key: &ChoiceKey, slot: usize) -> Tail {
        if key.options.is_greedy() && key.adjust.is_empty() && !key.raw_argmax {
            Tail::Greedy { n_banned: 0, slot }
        } else {
            Tail::Sample { options: key.options.clone(), uniform: key.uniform, n_adjust: key.adjust.len(), raw_argmax: key.raw_argmax, slot }
        }
    }

    /// Where `tail` leaves its chosen id on the GPU.
    fn chosen_buffer(&self, tail: &Tail) -> &wgpu::Buffer {
        match tail {
            Tail::Greedy { .. } => &self.scratch.next,
            _ => &self.scratch.sampled,
        }
    }

    /// Run `tokens` and choose the next token as `key` says. With `next` (the guess of the
    /// next request), the step after it is submitted before this one is read back, fed with
    /// this one's answer on the GPU, so the GPU never waits for the host between tokens.
    async fn choose(&mut self, tokens: &[u32], key: ChoiceKey, next: Option<ChoiceKey>) -> Result<SampledToken, BackendError> {
        self.check(tokens)?;
        if tokens.is_empty() {
            return Err(BackendError::Gpu("sampling step over no tokens".into()));
        }
        key.options.validate().map_err(|e| BackendError::Gpu(e.to_string()))?;
        let claimed = match self.ahead.take() {
            Some(a) if tokens == [a.fed] && a.key == key => Some(a),
            Some(_) => {
                self.ahead_stats.dropped += 1;
                None
            }
            None => None,
        };
        let (slot, submission) = match claimed {
            Some(a) => {
                // It ran (or is running) at kv_len: that position is now committed.
                self.ahead_stats.claimed += 1;
                self.kv_len += 1;
                (a.slot, a.submission)
            }
            None => {
                if !key.adjust.is_empty() {
                    self.ctx.queue.write_buffer(&self.scratch.adjust, 0, bytemuck::cast_slice(&key.adjust));
                }
                (0, self.run_with_tail(tokens, &Self::choice_tail(&key, 0)))
            }
        };
        // Run the next step ahead where the cache has room for it; the adjust buffer already
        // holds what the guess needs (the same ids).
        let ahead = next.filter(|_| self.kv_len < self.max_context).map(|next| {
            let tail = Self::choice_tail(&next, 1 - slot);
            let submission = self.step_ahead(self.chosen_buffer(&Self::choice_tail(&key, slot)), self.kv_len, &tail);
            (next, 1 - slot, submission)
        });
        let bytes = if key.raw_argmax { 8 } else { 4 };
        let out = self.ctx.map_read_after(&self.scratch.readback[slot], bytes, Some(submission)).await.map_err(gpu)?;
        let word = |i: usize| u32::from_le_bytes([out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3]]);
        let id = Some(word(0)).filter(|&id| id != u32::MAX);
        match (id, ahead) {
            (Some(fed), Some((key, slot, submission))) => self.ahead = Some(Ahead { fed, key, slot, submission }),
            (None, Some(_)) => self.ahead_stats.dropped += 1,
            _ => {}
        }
        Ok(SampledToken { id, raw_argmax: key.raw_argmax.then(|| word(1)) })
    }
}

/// Marks a banned id in scratch.adjust (sample.wgsl BANNED); vocabularies stay below it.
const BANNED_FLAG: u32 = 1 << 31;

fn gpu(e: GpuError) -> BackendError {
    match e {
        GpuError::DeviceLost(why) => BackendError::DeviceLost(why),
        e => BackendError::Gpu(e.to_string()),
    }
}

impl Backend for GpuModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn name(&self) -> String {
        format!("webgpu ({}, {:?})", self.ctx.info.name, self.ctx.act())
    }

    fn kv_len(&self) -> usize {
        self.kv_len
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn truncate(&mut self, len: usize) -> Result<(), BackendError> {
        if len > self.kv_len {
            return Err(BackendError::BadTruncate { to: len, len: self.kv_len });
        }
        // Rows past `len` are simply overwritten by the next tokens.
        self.drop_ahead();
        self.kv_len = len;
        Ok(())
    }

    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        self.guarded(async |m: &mut Self| m.forward_logits(tokens, n_logits).await).await
    }

    async fn forward_greedy(&mut self, tokens: &[u32], banned: &[u32]) -> Result<u32, BackendError> {
        self.guarded(async |m: &mut Self| m.forward_greedy_gpu(tokens, banned).await).await
    }

    async fn forward_sample(&mut self, tokens: &[u32], request: &SampleRequest<'_>) -> Option<Result<SampledToken, BackendError>> {
        // `None` (nothing ran) passes through as `Ok(None)`.
        self.guarded(async |m: &mut Self| m.forward_sample_gpu(tokens, request).await.transpose()).await.transpose()
    }
}
