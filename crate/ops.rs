//! CPU reference operators of the decoder, in f32.
//!
//! These are the numerics every other backend is tested against, so they stay plain:
//! one obvious loop per operator, shapes in the signatures' comments.

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
