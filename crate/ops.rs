//! CPU reference operators of the decoder, in f32.
//!
//! These are the numerics every other backend is tested against, so they stay plain:
//! one obvious loop per operator, shapes in the signatures' comments. The one exception is
//! [`attention_cached`], the CPU backend's attention over its (f16) KV cache: blocked,
//! threaded and vectorized because at long contexts it costs more than the weights; it is
//! tested against the plain [`attention`].

use half::f16;

use crate::config::RopeLayout;

/// 1 / rms(x), rms(x) = sqrt(mean(x²) + eps).
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (mean_sq + eps).sqrt()
}

/// out = x / rms(x) * weight.  x, weight, out: (dim)
pub fn rms_norm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let scale = inv_rms(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// Qwen3's `q_norm`/`k_norm`: the same RMSNorm applied to each head of x on its own, in place.
/// x: (n_heads × head_dim); weight: (head_dim), shared by every head.
pub fn rms_norm_heads(x: &mut [f32], weight: &[f32], eps: f32) {
    for head in x.chunks_exact_mut(weight.len()) {
        let scale = inv_rms(head, eps);
        for (v, &w) in head.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

/// RoPE inverse frequencies, theta^(-2i/head_dim) for i in 0..head_dim/2, computed the way
/// transformers does (f32 powers of the base).
pub fn rope_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Rotate each head of `x` (n_heads × head_dim) in place for position `pos`.
/// `inv_freq`: (head_dim/2). See [`RopeLayout`] for which dimensions form a pair.
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32], layout: RopeLayout) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = pos as f32 * f;
            let (sin, cos) = angle.sin_cos();
            let (a, b) = match layout {
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                RopeLayout::NeoX => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

/// In-place numerically stable softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Causal grouped-query attention of one query position over the first `n_pos` cached positions.
///
/// q: (n_heads × head_dim); keys, values: (≥ n_pos, n_kv_heads × head_dim) row-major;
/// out: (n_heads × head_dim); scores: scratch of ≥ n_pos. Query head h reads kv head
/// h / (n_heads / n_kv_heads), as in transformers' `repeat_kv`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    out: &mut [f32],
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n_pos: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scores: &mut [f32],
) {
    let group = n_heads / n_kv_heads;
    let kv_dim = n_kv_heads * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    for h in 0..n_heads {
        let kv_off = (h / group) * head_dim;
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        let scores = &mut scores[..n_pos];
        for (t, s) in scores.iter_mut().enumerate() {
            let k = &keys[t * kv_dim + kv_off..][..head_dim];
            *s = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        softmax(scores);
        let oh = &mut out[h * head_dim..(h + 1) * head_dim];
        oh.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let v = &values[t * kv_dim + kv_off..][..head_dim];
            for (o, &vv) in oh.iter_mut().zip(v) {
                *o += p * vv;
            }
        }
    }
}

/// SwiGLU: gate = silu(gate) * up.  gate, up: (ffn_dim)
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// x += y
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Index of the largest value; ties go to the lowest index. NaN never wins.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

// ======================================================================================
// Attention over the CPU backend's f16 KV cache
// ======================================================================================

/// The head layout of grouped-query attention: query head h reads kv head
/// h / (n_heads / n_kv_heads), as in transformers' `repeat_kv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Cached positions per tile. A task converts one tile of keys and one of values to f32
/// (2 × TILE × head_dim × 4 bytes: 16 KiB at head_dim 64, 32 KiB at 128, L1/L2-resident)
/// and runs every one of its query rows over it, so each f16 is converted once per task,
/// not once per query head and query position.
const TILE: usize = 32;

/// f32 lanes of one vector accumulator: one AVX2 register, two SSE / NEON / simd128 ones.
const LANES: usize = 8;

/// Keys scored (and values accumulated) together: a query chunk is loaded once for four
/// keys, and four independent accumulators hide the FMA latency.
const KEYS_PER_STEP: usize = 4;

/// How a KV cache stores a value: f16 (the CPU backend's cache) or f32 (a reference for
/// tests that compare with f32 implementations at tight tolerances).
pub trait KvElement: Copy + Send + Sync + 'static {
    /// dst = src as f32.  dst.len() == src.len()
    fn widen(src: &[Self], dst: &mut [f32]);
    /// dst = src rounded to Self (nearest, ties to even).  dst.len() == src.len()
    fn narrow(src: &[f32], dst: &mut [Self]);
}

impl KvElement for f16 {
    /// Written so that it vectorizes (bit operations, a multiply and a select per lane; see
    /// [`crate::quant::f16_bits_to_f32`]), F16C or not.
    #[inline(always)]
    fn widen(src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU has F16C and AVX (checked above).
            return unsafe { widen_f16c(src, dst) };
        }
        for (d, s) in dst.iter_mut().zip(src) {
            *d = crate::quant::f16_bits_to_f32(s.to_bits());
        }
    }

    fn narrow(src: &[f32], dst: &mut [f16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

impl KvElement for f32 {
    #[inline(always)]
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    fn narrow(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

/// Causal grouped-query attention of n query positions `pos0..pos0 + n` over a KV cache of
/// f16 (or f32) values.
///
/// q, out: (n, n_heads × head_dim) f32; keys[g], values[g]: (≥ pos0 + n, head_dim), the
/// cache of kv head g (g < n_kv_heads), already holding the n new positions. Query i sees
/// positions 0..=pos0 + i. The same result as [`attention`] on the cached values widened to
/// f32, up to rounding: softmax runs online over tiles (flash attention's running max and
/// sum) with a polynomial `exp`, and dot products sum in several partial sums.
///
/// The (kv head, block of query rows) tasks run on the thread pool (rayon natively, the
/// helpers of `quant::spin` in the threaded wasm build); a row's result does not depend on
/// how rows are split into tasks, so it does not depend on the thread count either.
pub fn attention_cached<E: KvElement>(out: &mut [f32], q: &[f32], keys: &[Vec<E>], values: &[Vec<E>], pos0: usize, heads: Heads) {
    let Heads { n_heads, n_kv_heads, head_dim } = heads;
    let q_dim = n_heads * head_dim;
    if q_dim == 0 || n_kv_heads == 0 {
        return;
    }
    let n = q.len() / q_dim;
    let group = n_heads / n_kv_heads;
    // Rows of kv head g: (query position i, head g × group + j) for row i × group + j, in
    // order of position, so a block of rows sees a growing prefix of the cache.
    let rows = n * group;
    let blocks_per_head = row_blocks_per_head(rows, n_kv_heads, (pos0 + n) * head_dim);
    let block_rows = rows.div_ceil(blocks_per_head);
    let tasks: Vec<(usize, std::ops::Range<usize>)> = (0..n_kv_heads)
        .flat_map(|g| (0..rows).step_by(block_rows).map(move |r| (g, r..(r + block_rows).min(rows))))
        .collect();
    let run = |(g, rows): &(usize, std::ops::Range<usize>)| {
        attend_rows(q, &keys[*g], &values[*g], pos0, heads, *g, rows.clone())
    };
    let results: Vec<Vec<f32>> = crate::quant::par_map(&tasks, run);
    // Scatter each task's (rows, head_dim) block into out's (n, n_heads × head_dim) rows.
    for ((g, rows), result) in tasks.iter().zip(&results) {
        for (r, o) in rows.clone().zip(result.chunks_exact(head_dim)) {
            let h = g * group + r % group;
            out[(r / group) * q_dim + h * head_dim..][..head_dim].copy_from_slice(o);
        }
    }
}

/// Into how many blocks of rows each kv head's work is split: one where threads would not
/// pay (one thread, little work), else enough for a few tasks per thread.
/// `work_per_row`: multiply-adds of one row against the whole cache (an upper bound).
fn row_blocks_per_head(rows: usize, n_kv_heads: usize, work_per_row: usize) -> usize {
    /// Below this a task costs more to schedule than it saves (a few µs).
    const MIN_WORK_PER_TASK: usize = 1 << 16;
    const TASKS_PER_THREAD: usize = 2;
    let threads = crate::quant::pool_threads();
    let work = rows.saturating_mul(work_per_row).saturating_mul(n_kv_heads);
    if threads > 1 && work >= 2 * MIN_WORK_PER_TASK {
        let tasks = (work / MIN_WORK_PER_TASK).min(threads * TASKS_PER_THREAD);
        return tasks.div_ceil(n_kv_heads).clamp(1, rows.max(1));
    }
    1
}

/// One task of [`attention_cached`]: the query rows `rows` of kv head `g` over that head's
/// cache. Returns their outputs, (rows.len(), head_dim) f32.
fn attend_rows<E: KvElement>(q: &[f32], keys: &[E], values: &[E], pos0: usize, heads: Heads, g: usize, rows: std::ops::Range<usize>) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        return unsafe { attend_rows_avx2(q, keys, values, pos0, heads, g, rows) };
    }
    // aarch64 (NEON) always has FMA; SSE2 and wasm simd128 have none, and `f32::mul_add`
    // without hardware FMA is a slow libm call.
    attend_rows_impl::<E, { cfg!(target_arch = "aarch64") }>(q, keys, values, pos0, heads, g, rows)
}

/// [`KvElement::widen`] for f16 with F16C: one instruction per 8 values (the portable
/// version takes ~7; in decode at long contexts the conversion was half the attention).
/// Exact, as the portable one.
// `unsafe fn`: the caller checks that the CPU has the features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
#[inline]
unsafe fn widen_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let full = n - n % 8;
    for i in (0..full).step_by(8) {
        let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
    for i in full..n {
        dst[i] = crate::quant::f16_bits_to_f32(src[i].to_bits());
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma_f16c() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
}

/// The same generic code as the portable path, compiled for 256-bit vectors with FMA.
// `unsafe fn`: the caller checks that the CPU has the features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_rows_avx2<E: KvElement>(q: &[f32], keys: &[E], values: &[E], pos0: usize, heads: Heads, g: usize, rows: std::ops::Range<usize>) -> Vec<f32> {
    attend_rows_impl::<E, true>(q, keys, values, pos0, heads, g, rows)
}

/// acc + a × b, fused where `FUSED` (the target has hardware FMA).
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FUSED {
        a.mul_add(b, acc)
    } else {
        acc + a * b
    }
}

/// Query rows a task runs over the cache together: their queries and outputs (2 × 64 ×
/// head_dim × 4 bytes: 32 KiB at head_dim 64) stay in L1/L2 while the tiles go by. (All of
/// a 4k-token prefill's rows at once streamed 15 MB of them through memory per tile.)
const ROW_BLOCK: usize = 64;

#[inline(always)]
fn attend_rows_impl<E: KvElement, const FUSED: bool>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    pos0: usize,
    heads: Heads,
    g: usize,
    rows: std::ops::Range<usize>,
) -> Vec<f32> {
    // Each row's result depends only on its own query and the cache: blocks change nothing
    // but the order in which rows are done.
    let mut out = Vec::with_capacity(rows.len() * heads.head_dim);
    for r0 in rows.clone().step_by(ROW_BLOCK) {
        out.extend(attend_block::<E, FUSED>(q, keys, values, pos0, heads, g, r0..(r0 + ROW_BLOCK).min(rows.end)));
    }
    out
}

#[inline(always)]
fn attend_block<E: KvElement, const FUSED: bool>(
    q: &[f32],     // (n, n_heads × head_dim)
    keys: &[E],    // (≥ visible positions, head_dim)
    values: &[E],  // (≥ visible positions, head_dim)
    pos0: usize,
    heads: Heads,
    g: usize,
    rows: std::ops::Range<usize>,
) -> Vec<f32> {
    let Heads { n_heads, n_kv_heads, head_dim: hd } = heads;
    let (q_dim, group) = (n_heads * hd, n_heads / n_kv_heads);
    let n_rows = rows.len();
    if n_rows == 0 {
        return Vec::new();
    }
    // The task's query rows, pre-multiplied by 1/√d: (n_rows, hd).
    let scale = 1.0 / (hd as f32).sqrt();
    let mut qs = vec![0.0f32; n_rows * hd];
    for (qr, r) in qs.chunks_exact_mut(hd).zip(rows.clone()) {
        let src = &q[(r / group) * q_dim + (g * group + r % group) * hd..][..hd];
        for (d, &s) in qr.iter_mut().zip(src) {
            *d = s * scale;
        }
    }
    // Online softmax state per row: running max of the scores, running sum of
    // exp(score - max), and the output accumulated with the same weights: (n_rows, hd).
    let mut acc = vec![0.0f32; n_rows * hd];
    let mut run_max = vec![f32::NEG_INFINITY; n_rows];
    let mut run_sum = vec![0.0f32; n_rows];
    let mut kt = vec![0.0f32; TILE * hd]; // (TILE, hd) keys of the tile, f32
    let mut vt = vec![0.0f32; TILE * hd]; // (TILE, hd) values of the tile, f32
    let mut p = [0.0f32; TILE]; // scores of one row, then their softmax weights
    let visible = |r: usize| pos0 + r / group + 1;
    let end = visible(rows.end - 1);
    for t0 in (0..end).step_by(TILE) {
        let t1 = (t0 + TILE).min(end);
        E::widen(&keys[t0 * hd..t1 * hd], &mut kt[..(t1 - t0) * hd]);
        E::widen(&values[t0 * hd..t1 * hd], &mut vt[..(t1 - t0) * hd]);
        for (k, r) in rows.clone().enumerate() {
            if visible(r) <= t0 {
                continue; // this row's last position lies before the tile (causal mask)
            }
            let m = visible(r).min(t1) - t0;
            let p = &mut p[..m];
            scores::<FUSED>(&qs[k * hd..][..hd], &kt[..m * hd], p);
            let tile_max = lanes_max(p);
            let new_max = if tile_max > run_max[k] { tile_max } else { run_max[k] };
            // One pass that vectorizes (no running sum in it), then the sum, in order (the
            // order every build of this code has always used: browser and native runs of
            // one model agree token for token, and a sum in lanes moved near-ties).
            for s in p.iter_mut() {
                *s = exp_nonpositive(*s - new_max);
            }
            let tile_sum: f32 = p.iter().fold(0.0, |a, &b| a + b);
            let a = &mut acc[k * hd..][..hd];
            if new_max > run_max[k] {
                // Earlier weights were relative to a smaller max: rescale them (the first
                // tile rescales zeros by exp(-inf) = 0).
                let correction = exp_nonpositive(run_max[k] - new_max);
                run_sum[k] *= correction;
                for v in a.iter_mut() {
                    *v *= correction;
                }
                run_max[k] = new_max;
            }
            run_sum[k] += tile_sum;
            weighted_sum::<FUSED>(a, p, &vt[..m * hd]);
        }
    }
    for (a, &sum) in acc.chunks_exact_mut(hd).zip(&run_sum) {
        let inv = 1.0 / sum;
        for v in a {
            *v *= inv;
        }
    }
    acc
}

/// The largest of `p` (-inf for none), in LANES partial maxima (which vectorize).
#[inline(always)]
fn lanes_max(p: &[f32]) -> f32 {
    let max = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = p.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            lanes[l] = max(lanes[l], c[l]);
        }
    }
    chunks.remainder().iter().fold(lanes.into_iter().fold(f32::NEG_INFINITY, max), |a, &b| max(a, b))
}

/// scores[j] = q · keys[j].  q: (hd); keys: (m, hd); scores: (m).
///
/// Each dot product sums in LANES partial sums (a vector register) reduced pairwise at the
/// end, not in one strict left-to-right chain, which would not vectorize.
#[inline(always)]
fn scores<const FUSED: bool>(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    // x86 with FMA (only `attend_rows_avx2` runs FUSED there): eight keys at a time, their
    // partial-sum registers reduced four at a time instead of one by one.
    #[cfg(target_arch = "x86_64")]
    if FUSED && q.len() % LANES == 0 {
        let hd = q.len();
        let eights = scores.len() / 8 * 8;
        // SAFETY: FUSED on x86_64 means AVX2 and FMA (checked by `attend_rows`).
        unsafe { scores8_avx2(q, &keys[..eights * hd], &mut scores[..eights]) };
        return scores_generic::<FUSED>(q, &keys[eights * hd..], &mut scores[eights..]);
    }
    scores_generic::<FUSED>(q, keys, scores)
}

/// [`scores`] for AVX2 + FMA: keys.len() == 8 k × hd, hd a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores8_avx2(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = q.len();
    for (kg, sg) in keys.chunks_exact(8 * hd).zip(scores.chunks_exact_mut(8)) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..hd).step_by(8) {
            let qc = _mm256_loadu_ps(q.as_ptr().add(c));
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kg.as_ptr().add(u * hd + c)), *a);
            }
        }
        // Each key's lanes summed in `reduce_lanes`' order, (h0 + h2) + (h1 + h3) with
        // h_i = a_i + a_(i+4), four keys per register: the same scores as the portable code
        // (which the f32 reference tests and the browser's simd128 build share).
        for (s4, a4) in sg.chunks_exact_mut(4).zip(acc.chunks_exact(4)) {
            let p: [__m128; 4] = std::array::from_fn(|u| {
                let h = _mm_add_ps(_mm256_castps256_ps128(a4[u]), _mm256_extractf128_ps::<1>(a4[u]));
                _mm_add_ps(h, _mm_movehl_ps(h, h))
            });
            let (p01, p23) = (_mm_unpacklo_ps(p[0], p[1]), _mm_unpacklo_ps(p[2], p[3]));
            _mm_storeu_ps(s4.as_mut_ptr(), _mm_add_ps(_mm_movelh_ps(p01, p23), _mm_movehl_ps(p23, p01)));
        }
    }
}

/// [`scores`] in portable code.
#[inline(always)]
fn scores_generic<const FUSED: bool>(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let hd = q.len();
    let full = hd - hd % LANES;
    let mut key_groups = keys.chunks_exact(KEYS_PER_STEP * hd);
    let mut score_groups = scores.chunks_exact_mut(KEYS_PER_STEP);
    for (kg, sg) in (&mut key_groups).zip(&mut score_groups) {
        let mut acc = [[0.0f32; LANES]; KEYS_PER_STEP];
        for c in (0..full).step_by(LANES) {
            let qc: &[f32; LANES] = q[c..c + LANES].try_into().unwrap_or(&[0.0; LANES]);
            for (u, au) in acc.iter_mut().enumerate() {
                let kc: &[f32; LANES] = kg[u * hd + c..u * hd + c + LANES].try_into().unwrap_or(&[0.0; LANES]);
                for l in 0..LANES {
                    au[l] = madd::<FUSED>(qc[l], kc[l], au[l]);
                }
            }
        }
        for (u, s) in sg.iter_mut().enumerate() {
            let tail: f32 = (full..hd).map(|d| q[d] * kg[u * hd + d]).sum();
            *s = reduce_lanes(&acc[u]) + tail;
        }
    }
    for (k, s) in key_groups.remainder().chunks_exact(hd).zip(score_groups.into_remainder()) {
        let mut acc = [0.0f32; LANES];
        for c in (0..full).step_by(LANES) {
            for l in 0..LANES {
                acc[l] = madd::<FUSED>(q[c + l], k[c + l], acc[l]);
            }
        }
        let tail: f32 = (full..hd).map(|d| q[d] * k[d]).sum();
        *s = reduce_lanes(&acc) + tail;
    }
}

/// Pairwise sum of one accumulator's lanes (halves added to halves: vector adds).
#[inline(always)]
fn reduce_lanes(a: &[f32; LANES]) -> f32 {
    let h: [f32; 4] = std::array::from_fn(|i| a[i] + a[i + 4]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// out += Σ_j p[j] × values[j].  out: (hd); p: (m); values: (m, hd).
///
/// Four values per pass over `out`, so each element of `out` is loaded and stored once per
/// four multiply-adds.
#[inline(always)]
fn weighted_sum<const FUSED: bool>(out: &mut [f32], p: &[f32], values: &[f32]) {
    let hd = out.len();
    let mut value_groups = values.chunks_exact(KEYS_PER_STEP * hd);
    let mut weight_groups = p.chunks_exact(KEYS_PER_STEP);
    for (vg, w) in (&mut value_groups).zip(&mut weight_groups) {
        let (v0, rest) = vg.split_at(hd);
        let (v1, rest) = rest.split_at(hd);
        let (v2, v3) = rest.split_at(hd);
        for d in 0..hd {
            let mut o = out[d];
            o = madd::<FUSED>(w[0], v0[d], o);
            o = madd::<FUSED>(w[1], v1[d], o);
            o = madd::<FUSED>(w[2], v2[d], o);
            o = madd::<FUSED>(w[3], v3[d], o);
            out[d] = o;
        }
    }
    for (v, &w) in value_groups.remainder().chunks_exact(hd).zip(weight_groups.remainder()) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o = madd::<FUSED>(w, x, *o);
        }
    }
}

/// e^x for x ≤ 0 (a score minus the running max), in operations that vectorize (std's
/// `exp` is a scalar libm call, and a 4k-token prefill needs billions of them).
///
/// Cody–Waite: x = n ln2 + r with |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial
/// (truncation error < r⁷/7! ≈ 1.2e-7 relative), 2^n built in the exponent bits. Below
/// -87 (e^-87 ≈ 1.6e-38, the f32 normal range's end) the input is clamped: such weights
/// are negligible next to the max's weight of 1. e^0 is exactly 1, e^-inf is ~1e-38.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n × LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 × 2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x > -87.0 { x } else { -87.0 };
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let poly = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // t's low mantissa bits hold n + 0x40_0000; 2^n = (n + 127) << 23 for n ≥ -126.
    let n_int = (t.to_bits() as i32) - 0x4B40_0000;
    poly * f32::from_bits(((n_int + 127) as u32) << 23)
}
