//! The CPU backend's attention over its f16 KV cache (`ops::attention_cached`: tiled, online
//! softmax, vectorized, threaded over heads) against the plain reference `ops::attention`
//! run on the same f16 values widened to f32; and over an f32 cache (the tests' reference
//! option) against the same.

use half::f16;
use pensive::ops::{self, Heads};

/// Against the reference: the two differ only in summation order (partial sums, online
/// softmax over tiles), the 1/√d applied to q instead of to each score, and a polynomial
/// exp within ~2 ulp — a few f32 roundings on outputs of magnitude ≤ max |value|.
const MAX_ABS_ERROR: f32 = 2e-5;

/// splitmix64: a tiny seeded PRNG so the tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

/// (len, n_kv × hd) f32 rows → n_kv × (len, hd) f16 per-head caches, and the f16 values
/// widened back to f32 in the row layout the reference reads.
fn to_cache(x: &[f32], n_kv: usize, hd: usize) -> (Vec<Vec<f16>>, Vec<f32>) {
    let mut heads = vec![Vec::new(); n_kv];
    let mut widened = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n_kv * hd) {
        for (head, src) in heads.iter_mut().zip(row.chunks_exact(hd)) {
            let h: Vec<f16> = src.iter().map(|&v| f16::from_f32(v)).collect();
            widened.extend(h.iter().map(|v| v.to_f32()));
            head.extend(h);
        }
    }
    (heads, widened)
}

/// Runs one shape through both and returns the largest absolute difference.
fn max_error(rng: &mut Rng, heads: Heads, pos0: usize, n: usize, q_scale: f32) -> f32 {
    let Heads { n_heads, n_kv_heads, head_dim } = heads;
    let (q_dim, kv_dim, len) = (n_heads * head_dim, n_kv_heads * head_dim, pos0 + n);
    let q = rng.vec(n * q_dim, q_scale);
    let (keys, keys_f32) = to_cache(&rng.vec(len * kv_dim, 1.0), n_kv_heads, head_dim);
    let (values, values_f32) = to_cache(&rng.vec(len * kv_dim, 1.0), n_kv_heads, head_dim);
    let mut want = vec![0.0; n * q_dim];
    let mut scores = vec![0.0; len];
    for t in 0..n {
        let o = &mut want[t * q_dim..(t + 1) * q_dim];
        ops::attention(o, &q[t * q_dim..(t + 1) * q_dim], &keys_f32, &values_f32, pos0 + t + 1, n_heads, n_kv_heads, head_dim, &mut scores);
    }
    let mut got = vec![f32::NAN; n * q_dim];
    ops::attention_cached(&mut got, &q, &keys, &values, pos0, heads);
    assert!(got.iter().all(|v| v.is_finite()), "{heads:?} pos0 {pos0} n {n}: non-finite output");
    // The f32 cache (the tests' reference option) through the same kernel.
    let split = |x: &[f32]| -> Vec<Vec<f32>> {
        (0..n_kv_heads).map(|g| x.chunks_exact(kv_dim).flat_map(|row| row[g * head_dim..][..head_dim].to_vec()).collect()).collect()
    };
    let mut got_f32 = vec![f32::NAN; n * q_dim];
    ops::attention_cached(&mut got_f32, &q, &split(&keys_f32), &split(&values_f32), pos0, heads);
    got.iter().chain(&got_f32).zip(want.iter().chain(&want)).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max)
}

/// Decode and prefill, head widths that are and are not a multiple of the vector width,
/// contexts inside one tile, across tile borders and long, GQA groups of 1 to 7.
#[test]
fn attention_cached_matches_reference() {
    let mut rng = Rng(1);
    // (n_heads, n_kv_heads, head_dim, pos0, n)
    let shapes = [
        (1, 1, 8, 0, 1),
        (9, 3, 64, 0, 1),
        (9, 3, 64, 31, 1),
        (9, 3, 64, 32, 1),
        (14, 2, 64, 1000, 1),
        (14, 2, 64, 4095, 1),
        (12, 2, 128, 300, 1),
        (4, 4, 250, 40, 1),
        (6, 2, 18, 37, 5),
        (14, 2, 64, 0, 70),
        (14, 2, 64, 100, 33),
        (2, 1, 16, 0, 13),
    ];
    for (n_heads, n_kv_heads, head_dim, pos0, n) in shapes {
        let heads = Heads { n_heads, n_kv_heads, head_dim };
        let err = max_error(&mut rng, heads, pos0, n, 1.0);
        assert!(err <= MAX_ABS_ERROR, "{heads:?} pos0 {pos0} n {n}: max |diff| {err:e}");
    }
}

/// Scores far apart (q scaled up: logits spread over about ±60, weights down to e^-100) stay finite
/// and match: the running max keeps every exp argument ≤ 0, whichever tile holds the max.
#[test]
fn attention_cached_is_stable_for_large_scores() {
    let mut rng = Rng(2);
    for (pos0, n) in [(200, 1), (0, 40)] {
        let heads = Heads { n_heads: 4, n_kv_heads: 2, head_dim: 32 };
        let err = max_error(&mut rng, heads, pos0, n, 60.0);
        assert!(err <= MAX_ABS_ERROR, "pos0 {pos0} n {n}: max |diff| {err:e}");
    }
}

/// Rows are split into tasks by thread count; a row's result must not depend on it.
#[test]
fn attention_cached_is_identical_across_thread_counts() {
    let mut rng = Rng(3);
    let heads = Heads { n_heads: 14, n_kv_heads: 2, head_dim: 64 };
    let (pos0, n) = (500, 40);
    let len = pos0 + n;
    let q = rng.vec(n * 14 * 64, 1.0);
    let (keys, _) = to_cache(&rng.vec(len * 2 * 64, 1.0), 2, 64);
    let (values, _) = to_cache(&rng.vec(len * 2 * 64, 1.0), 2, 64);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        let mut out = vec![0.0; q.len()];
        pool.install(|| ops::attention_cached(&mut out, &q, &keys, &values, pos0, heads));
        out
    };
    let one = run(1);
    for threads in [2, 3, 8] {
        assert!(run(threads) == one, "{threads} threads differ from 1");
    }
}
