//! One typed method per kernel, recording a dispatch on a [`Recorder`].
//!
//! Buffers are passed whole; their shapes are in each method's comment. Activation buffers
//! hold [`GpuContext::act`] elements; logits and norm weights are f32.

use bytemuck::{Pod, Zeroable};

use super::repack::{wtype_id, FusedMatrix, GpuMatrix};
use super::{grid, Knobs, Recorder, Shader};
use crate::config::RopeLayout;

/// Tokens per workgroup of the prefill mat-mul: each dequantized weight serves this many.
pub const MATMUL_TT: u32 = 8;
/// Rows per lane of the matmul (matmul.wgsl RPL): each x value loaded serves this many rows.
const MATMUL_ROWS_PER_LANE: u32 = 4;
/// Invocations per matmul workgroup.
const MATMUL_WORKGROUP: u32 = 64;
/// Widest RMSNorm the fused matmuls fold into their prologue: the normed row lives in
/// workgroup memory (f32), next to the reduction's (WebGPU guarantees 16 KiB in all).
pub const MAX_FOLDED_NORM: usize = 3072;

/// The RMSNorm a fused matmul applies to its input first (decode only: one token).
#[derive(Clone, Copy)]
pub struct FoldedNorm<'a> {
    pub weight: &'a wgpu::Buffer, // (cols) f32
    pub eps: f32,
}

/// Where matmul_qkv puts q, k and v, and how it rotates them.
pub struct QkvOut<'a> {
    pub q: &'a wgpu::Buffer,       // (n_tok, q_dim) act
    pub k_cache: &'a wgpu::Buffer, // (max_context, kv_dim) act, rows pos0.. written
    pub v_cache: &'a wgpu::Buffer, // (max_context, kv_dim) act
    pub bias: Option<&'a wgpu::Buffer>, // (q_dim + 2 kv_dim) f32: bq | bk | bv
    pub inv_freq: &'a wgpu::Buffer, // (head_dim / 2) f32
    /// Rotate q and k (else they are stored as computed: rope.wgsl qk_norm_rope follows).
    pub rope: Option<RopeLayout>,
    pub head_dim: usize,
    pub pos0: usize,
}

/// Rows one matmul workgroup computes: (64 / lanes) row groups × 4 rows per lane.
fn matmul_rows_per_group(lanes: u32) -> u32 {
    MATMUL_WORKGROUP / lanes * MATMUL_ROWS_PER_LANE
}
/// Splits of the sequence the attention scratch holds per token: a prefill chunk's tokens
/// get at most this many each; a decode step (one token) may use the whole scratch
/// ([`GpuContext::attention_max_splits`]).
pub const MAX_ATTENTION_SPLITS: usize = 32;
/// Query heads per kv head that attention.wgsl attend_group_split serves (its MAX_GROUP).
pub const MAX_ATTENTION_GROUP: usize = 8;
/// (logit, id) pairs the sampler's candidate prefix holds (sample.wgsl LIST_CAP): the
/// `list` scratch of [`Recorder::sample`] is this many × 8 bytes.
pub const SAMPLE_LIST_LEN: usize = 32768;
/// Logits per argmax_part workgroup.
const ARGMAX_PER_GROUP: u32 = 4096;
/// Largest head_dim the attention kernel holds (4 dims per lane × 64 lanes).
pub const MAX_HEAD_DIM: usize = 256;

fn b(buf: &wgpu::Buffer) -> Option<wgpu::BindingResource<'_>> {
    Some(buf.as_entire_binding())
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    dim: u32,
    n_tok: u32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    n_heads: u32,
    head_dim: u32,
    pos0: u32,
    n_tok: u32,
    neox: u32,
    n_kv_heads: u32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttnParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    n_tok: u32,
    pos0: u32,
    split_len: u32,
    n_splits: u32,
    scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CountParams {
    n: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    rows: u32,
    cols: u32,
    row0: u32,
    n_tok: u32,
    x_off: u32,
    x_stride: u32,
    y_stride: u32,
    flags: u32,
    groups_x: u32,
    eps: f32,
    pos0: u32,
    head_dim: u32,
    seg_rows: [u32; 4],
    seg_word: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmbedParams {
    rows: u32,
    cols: u32,
    row0: u32,
    n_tok: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ArgmaxParams {
    n: u32,
    offset: u32,
    per_group: u32,
    n_parts: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SampleParams {
    n: u32,
    top_k: u32,
    greedy: u32,
    min_p_on: u32,
    top_p: f32,
    min_p: f32,
    inv_temp: f32,
    penalty: f32,
    uniform: f32,
    _pad: [u32; 3],
}

/// The largest f32 below 1: a uniform in [0, 1) drawn as f64 must stay below 1 in f32.
const BELOW_ONE: f32 = 0.999_999_94;

/// How attention cuts `len` positions: (split_len, n_splits), split_len a multiple of
/// `granule` (64 or 128: [`GpuContext::attention_split_granule`]), at most `max_splits`
/// splits.
pub fn attention_splits(len: usize, max_splits: usize, granule: usize) -> (usize, usize) {
    let granule = granule.next_multiple_of(64);
    let split_len = len.div_ceil(max_splits.max(1)).next_multiple_of(granule).max(granule);
    (split_len, len.div_ceil(split_len))
}

/// f32 elements of the attention scratch for `n_tok` tokens.
pub fn attention_scratch_len(n_tok: usize, n_heads: usize, head_dim: usize) -> usize {
    n_tok * n_heads * MAX_ATTENTION_SPLITS * (head_dim + 2)
}

/// (vec2<u32>) elements of the argmax scratch for a vocabulary of `n`.
pub fn argmax_scratch_len(n: usize) -> usize {
    n.div_ceil(ARGMAX_PER_GROUP as usize)
}

impl Recorder<'_> {
    fn knobs(&self) -> Knobs {
        self.ctx().knobs()
    }

    /// out = rms_norm(x) * weight.  x: (n_tok, dim) f32, the residual stream; out: (n_tok,
    /// dim) act; weight: (dim) f32.
    pub fn rms_norm(&mut self, x: &wgpu::Buffer, weight: &wgpu::Buffer, out: &wgpu::Buffer, dim: usize, n_tok: usize, eps: f32) {
        let p = NormParams { dim: dim as u32, n_tok: n_tok as u32, eps, _pad: 0 };
        self.dispatch(Shader::Norm, "rms_norm", self.knobs(), &p, &[b(x), b(weight), b(out)], [n_tok as u32, 1, 1]);
    }

    /// Qwen3's q_norm / k_norm: RMS-normalize each head of x in place.
    /// x: (n_tok, n_heads, head_dim) act; weight: (head_dim) f32.
    pub fn rms_norm_heads(&mut self, x: &wgpu::Buffer, weight: &wgpu::Buffer, n_heads: usize, head_dim: usize, n_tok: usize, eps: f32) {
        let rows = (n_tok * n_heads) as u32;
        let p = NormParams { dim: head_dim as u32, n_tok: rows, eps, _pad: 0 };
        self.dispatch(Shader::Norm, "rms_norm_heads", self.knobs(), &p, &[None, b(weight), None, b(x)], [rows, 1, 1]);
    }

    /// Rotate x in place for positions pos0.. .  x: (n_tok, n_heads, head_dim) act;
    /// inv_freq: (head_dim / 2) f32.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(&mut self, x: &wgpu::Buffer, inv_freq: &wgpu::Buffer, n_heads: usize, head_dim: usize, pos0: usize, n_tok: usize, layout: RopeLayout) {
        let p = rope_params(n_heads, head_dim, pos0, n_tok, layout);
        let n = (n_tok * n_heads * head_dim / 2) as u32;
        self.dispatch(Shader::Rope, "rope", self.knobs(), &p, &[b(inv_freq), b(x)], [n.div_ceil(64), 1, 1]);
    }

    /// Rotate k and store k and v at cache rows pos0..pos0+n_tok.
    /// k, v: (n_tok, n_kv_heads, head_dim) act; caches: (max_context, n_kv_heads, head_dim) act.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_store_kv(
        &mut self,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        inv_freq: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        n_kv_heads: usize,
        head_dim: usize,
        pos0: usize,
        n_tok: usize,
        layout: RopeLayout,
    ) {
        let p = rope_params(n_kv_heads, head_dim, pos0, n_tok, layout);
        let n = (n_tok * n_kv_heads * head_dim / 2) as u32;
        let bufs = [b(inv_freq), None, b(k), b(v), b(k_cache), b(v_cache)];
        self.dispatch(Shader::Rope, "rope_store_kv", self.knobs(), &p, &bufs, [n.div_ceil(64), 1, 1]);
    }

    /// Causal GQA attention of n_tok queries at positions pos0.. over the cache (which
    /// already holds them). q, out: (n_tok, n_heads, head_dim) act; caches: (≥ pos0+n_tok,
    /// n_kv_heads, head_dim) act; scratch: ≥ attention_scratch_len f32.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        scratch: &wgpu::Buffer,
        out: &wgpu::Buffer,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        pos0: usize,
        n_tok: usize,
    ) {
        // As many splits as the adapter wants for this context (a long context on a big GPU
        // needs many workgroups: one per kv head and split) and the scratch holds.
        let room = (scratch.size() / 4) as usize / (n_tok * n_heads * (head_dim + 2)).max(1);
        let (split_len, n_splits) = attention_splits(pos0 + n_tok, self.ctx().attention_max_splits().min(room), self.ctx().attention_split_granule());
        let p = AttnParams {
            n_heads: n_heads as u32,
            n_kv_heads: n_kv_heads as u32,
            head_dim: head_dim as u32,
            n_tok: n_tok as u32,
            pos0: pos0 as u32,
            split_len: split_len as u32,
            n_splits: n_splits as u32,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        let k = self.knobs();
        let group = n_heads / n_kv_heads.max(1);
        if head_dim % 8 == 0 && group <= MAX_ATTENTION_GROUP && n_heads % n_kv_heads.max(1) == 0 {
            let split = [b(q), None, None, b(scratch), None, None, b(k_cache), b(v_cache)];
            self.dispatch(Shader::Attention, "attend_group_split", k, &p, &split, [n_splits as u32, n_kv_heads as u32, n_tok as u32]);
        } else {
            let split = [b(q), b(k_cache), b(v_cache), b(scratch)];
            self.dispatch(Shader::Attention, "attend_split", k, &p, &split, [n_splits as u32, n_heads as u32, n_tok as u32]);
        }
        let merge = [None, None, None, None, b(scratch), b(out)];
        self.dispatch(Shader::Attention, "attend_merge", k, &p, &merge, [n_heads as u32, n_tok as u32, 1]);
    }

    /// gate = silu(gate) * up.  gate, up: (n) act.
    pub fn silu_mul(&mut self, gate: &wgpu::Buffer, up: &wgpu::Buffer, n: usize) {
        self.elementwise("silu_mul", gate, up, n);
    }

    /// x += y.  x, y: (n) act.
    pub fn add(&mut self, x: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) {
        self.elementwise("add", x, y, n);
    }

    fn elementwise(&mut self, entry: &'static str, a: &wgpu::Buffer, bb: &wgpu::Buffer, n: usize) {
        let p = CountParams { n: n as u32, _pad: [0; 3] };
        let [gx, gy] = grid((n as u32).div_ceil(64));
        // The shader linearizes (x, y) with a fixed row of 65535 workgroups.
        self.dispatch(Shader::Elementwise, entry, self.knobs(), &p, &[b(a), b(bb)], [gx, gy, 1]);
    }

    /// out[t] = table row ids[t], dequantized.  ids: (n_tok) u32; out: (n_tok, cols) f32,
    /// the residual stream.
    pub fn embed(&mut self, table: &GpuMatrix, ids: &wgpu::Buffer, out: &wgpu::Buffer, n_tok: usize) {
        let knobs = Knobs { wtype: wtype_id(table.ty), ..self.knobs() };
        for part in &table.parts {
            let p = EmbedParams { rows: part.n_rows as u32, cols: table.cols as u32, row0: part.row0 as u32, n_tok: n_tok as u32 };
            self.dispatch(Shader::Embed, "embed", knobs, &p, &[b(&part.buffer), b(ids), b(out)], [n_tok as u32, 1, 1]);
        }
    }

    /// y = W x (+ bias) (+ y), for n_tok tokens.  W: (rows, cols); x: (n_tok, x_stride) act
    /// from element x_off; y: (n_tok, rows) — f32 when `out_f32` (logits, the residual
    /// stream), else act;
    /// bias: (rows) f32.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        x_off: usize,
        x_stride: usize,
        y: &wgpu::Buffer,
        n_tok: usize,
        bias: Option<&wgpu::Buffer>,
        accumulate: bool,
        out_f32: bool,
    ) {
        let tt = if n_tok == 1 { 1 } else { MATMUL_TT };
        let x_even = x_off % 2 == 0 && x_stride % 2 == 0;
        let knobs = Knobs { wtype: wtype_id(w.ty), tt, out_f32, x_even, ..self.knobs() };
        let flags = u32::from(bias.is_some()) | (u32::from(accumulate) << 1);
        for part in &w.parts {
            let [gx, gy] = grid((part.n_rows as u32).div_ceil(matmul_rows_per_group(knobs.lanes)));
            let p = MatmulParams {
                rows: part.n_rows as u32,
                cols: w.cols as u32,
                row0: part.row0 as u32,
                n_tok: n_tok as u32,
                x_off: x_off as u32,
                x_stride: x_stride as u32,
                y_stride: w.rows as u32,
                flags,
                groups_x: gx,
                eps: 0.0,
                pos0: 0,
                head_dim: 0,
                seg_rows: [part.n_rows as u32, 0, 0, 0],
                seg_word: [0; 4],
            };
            // The bias binding must exist even when unused: any small buffer will do.
            let bias_buf = bias.unwrap_or(&part.buffer);
            let bufs = [b(&part.buffer), b(x), b(y), b(bias_buf)];
            self.dispatch(Shader::Matmul, "matmul", knobs, &p, &bufs, [gx, gy, (n_tok as u32).div_ceil(tt)]);
        }
    }

    /// q, k, v = W_qkv x (+ bias), rotated and stored (see [`QkvOut`]); x: (n_tok, cols) act,
    /// or with `norm` the f32 residual stream to normalize first (then n_tok is 1).
    /// W: q | k | v, segment rows multiples of 4 (head_dim is).
    pub fn matmul_qkv(&mut self, w: &FusedMatrix, x: &wgpu::Buffer, n_tok: usize, norm: Option<FoldedNorm<'_>>, out: &QkvOut<'_>) {
        let per_group = matmul_rows_per_group(self.knobs().lanes) as usize;
        // Whole workgroups per segment (matmul.wgsl matmul_qkv).
        let groups: usize = w.segments.iter().map(|s| s.rows.div_ceil(per_group)).sum();
        let [gx, gy] = grid(groups as u32);
        let rope = out.rope.map_or(0, |l| u32::from(l == RopeLayout::NeoX) << 2);
        let mut p = self.fused_params(w, n_tok, norm, gx);
        p.flags = u32::from(out.bias.is_some()) | rope;
        p.pos0 = out.pos0 as u32;
        p.head_dim = out.head_dim as u32;
        let knobs = Knobs { rope: out.rope.is_some(), ..self.fused_knobs(w, n_tok, norm) };
        let dummy = &w.buffer;
        let bufs = [
            b(&w.buffer),
            b(x),
            None,
            b(out.bias.unwrap_or(dummy)),
            b(norm.map_or(dummy, |n| n.weight)),
            b(out.inv_freq),
            b(out.q),
            b(out.k_cache),
            b(out.v_cache),
        ];
        self.dispatch(Shader::Matmul, "matmul_qkv", knobs, &p, &bufs, [gx, gy, (n_tok as u32).div_ceil(knobs.tt)]);
    }

    /// out = silu(W_gate x) * (W_up x); W: gate | up; x as for [`Self::matmul_qkv`];
    /// out: (n_tok, ffn_dim) act. Needs matmul lanes ≤ 32 (two row groups per workgroup).
    pub fn matmul_gate_up(&mut self, w: &FusedMatrix, x: &wgpu::Buffer, n_tok: usize, norm: Option<FoldedNorm<'_>>, out: &wgpu::Buffer) {
        let lanes = self.knobs().lanes;
        let ffn = w.segments.first().map_or(0, |s| s.rows) as u32;
        let [gx, gy] = grid(ffn.div_ceil(matmul_rows_per_group(lanes) / 2));
        let mut p = self.fused_params(w, n_tok, norm, gx);
        p.y_stride = ffn;
        let knobs = self.fused_knobs(w, n_tok, norm);
        let dummy = &w.buffer;
        let bufs = [b(&w.buffer), b(x), b(out), None, b(norm.map_or(dummy, |n| n.weight))];
        self.dispatch(Shader::Matmul, "matmul_gate_up", knobs, &p, &bufs, [gx, gy, (n_tok as u32).div_ceil(knobs.tt)]);
    }

    fn fused_knobs(&self, w: &FusedMatrix, n_tok: usize, norm: Option<FoldedNorm<'_>>) -> Knobs {
        let ty = |i: usize| w.segments.get(i).or(w.segments.first()).map_or(0, |s| wtype_id(s.ty));
        Knobs {
            wtype: ty(0),
            wtype1: ty(1),
            wtype2: ty(2),
            tt: if n_tok == 1 { 1 } else { MATMUL_TT },
            x_even: w.cols % 2 == 0,
            norm_cols: if norm.is_some() { w.cols as u32 } else { 0 },
            x_f32: norm.is_some(),
            ..self.knobs()
        }
    }

    /// Params of a fused matmul over x: (n_tok, cols) dense from element 0.
    fn fused_params(&self, w: &FusedMatrix, n_tok: usize, norm: Option<FoldedNorm<'_>>, groups_x: u32) -> MatmulParams {
        // The folded norm normalizes one token: the decode step's.
        debug_assert!(norm.is_none() || n_tok == 1, "a folded RMSNorm serves one token");
        let mut seg_rows = [0; 4];
        let mut seg_word = [0; 4];
        for (i, s) in w.segments.iter().enumerate().take(4) {
            seg_rows[i] = s.rows as u32;
            seg_word[i] = s.word0 as u32;
        }
        MatmulParams {
            rows: w.rows() as u32,
            cols: w.cols as u32,
            row0: 0,
            n_tok: n_tok as u32,
            x_off: 0,
            x_stride: w.cols as u32,
            y_stride: 0,
            flags: 0,
            groups_x,
            eps: norm.map_or(0.0, |n| n.eps),
            pos0: 0,
            head_dim: 0,
            seg_rows,
            seg_word,
        }
    }

    /// Qwen3 after [`Self::matmul_qkv`] without rope: RMS-normalize each head of q (in place)
    /// and of k (at cache rows pos0..), then rotate them. q: (n_tok, n_heads, head_dim) act;
    /// k_cache: (max_context, n_kv_heads, head_dim) act; norms: (head_dim) f32.
    #[allow(clippy::too_many_arguments)]
    pub fn qk_norm_rope(
        &mut self,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        q_norm: &wgpu::Buffer,
        k_norm: &wgpu::Buffer,
        inv_freq: &wgpu::Buffer,
        (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
        pos0: usize,
        n_tok: usize,
        layout: RopeLayout,
        eps: f32,
    ) {
        let p = RopeParams { n_kv_heads: n_kv_heads as u32, eps, ..rope_params(n_heads, head_dim, pos0, n_tok, layout) };
        let bufs = [b(inv_freq), b(q), None, None, b(k_cache), None, b(q_norm), b(k_norm)];
        self.dispatch(Shader::Rope, "qk_norm_rope", self.knobs(), &p, &bufs, [(n_heads + n_kv_heads) as u32, n_tok as u32, 1]);
    }

    /// result[0] = argmax of logits[offset..offset+n] after setting banned ids to -inf.
    /// logits: f32; banned: (n_banned) u32; scratch: ≥ argmax_scratch_len(n) vec2<u32>;
    /// result: (1) u32.
    #[allow(clippy::too_many_arguments)]
    pub fn argmax(
        &mut self,
        logits: &wgpu::Buffer,
        offset: usize,
        n: usize,
        banned: &wgpu::Buffer,
        n_banned: usize,
        scratch: &wgpu::Buffer,
        result: &wgpu::Buffer,
    ) {
        let k = self.knobs();
        let n_parts = argmax_scratch_len(n) as u32;
        let p = ArgmaxParams { n: n_banned as u32, offset: offset as u32, per_group: ARGMAX_PER_GROUP, n_parts };
        self.dispatch(Shader::Argmax, "ban", k, &p, &[b(logits), b(banned)], [(n_banned as u32).div_ceil(64), 1, 1]);
        let p = ArgmaxParams { n: n as u32, ..p };
        self.dispatch(Shader::Argmax, "argmax_part", k, &p, &[None, None, b(logits), b(scratch)], [n_parts, 1, 1]);
        let bufs = [None, None, None, None, b(scratch), b(result)];
        self.dispatch(Shader::Argmax, "argmax_final", k, &p, &bufs, [1, 1, 1]);
    }
}

impl Recorder<'_> {
    /// result[0] = the token [`crate::sampler::sample_with_uniform`] picks from logits
    /// row 0 with `options` and the step's uniform `u` (`u32::MAX`: no candidate), after
    /// `adjust` (penalties and bans) is applied to the logits in place.
    /// logits: (≥ n) f32; adjust: (n_adjust) u32, each a distinct id, | 1 << 31 when banned
    /// (else repeat-penalized); result: (1) u32. One workgroup: see sample.wgsl.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &mut self,
        logits: &wgpu::Buffer,
        n: usize,
        adjust: &wgpu::Buffer,
        n_adjust: usize,
        options: &crate::sampler::SamplerOptions,
        u: f64,
        result: &wgpu::Buffer,
        list: &wgpu::Buffer,
    ) {
        let k = self.knobs();
        let temperature = options.temperature;
        let p = SampleParams {
            n: n_adjust as u32,
            top_k: options.top_k.min(u32::MAX as usize) as u32,
            greedy: u32::from(temperature == 0.0),
            min_p_on: u32::from(options.min_p > 0.0),
            top_p: options.top_p,
            min_p: options.min_p,
            inv_temp: if temperature > 0.0 { (1.0 / temperature as f64) as f32 } else { 0.0 },
            penalty: options.repeat_penalty,
            uniform: (u as f32).clamp(0.0, BELOW_ONE),
            _pad: [0; 3],
        };
        self.dispatch(Shader::Sample, "adjust", k, &p, &[b(logits), b(adjust)], [(n_adjust as u32).div_ceil(64), 1, 1]);
        let p = SampleParams { n: n as u32, ..p };
        self.dispatch(Shader::Sample, "sample", k, &p, &[b(logits), None, b(result), b(list)], [1, 1, 1]);
    }
}

fn rope_params(n_heads: usize, head_dim: usize, pos0: usize, n_tok: usize, layout: RopeLayout) -> RopeParams {
    RopeParams {
        n_heads: n_heads as u32,
        head_dim: head_dim as u32,
        pos0: pos0 as u32,
        n_tok: n_tok as u32,
        neox: u32::from(layout == RopeLayout::NeoX),
        n_kv_heads: 0,
        eps: 0.0,
        _pad: 0,
    }
}
