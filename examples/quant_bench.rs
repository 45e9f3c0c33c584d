//! Micro benchmark of the CPU quantized kernels: weights per second of `QMatrix::matvec`
//! (decode) and `QMatrix::matmul` (prefill) per GGML type, on 1 and 2 threads, plus the
//! matvec-only token rate of SmolLM2-135M's weight shapes.
//!
//!     cargo run --release --example quant_bench [-- --quick] [--int8 (only the int8 kernels)] [--attention (only the CPU attention)]
//!
//! Weights are random but valid (finite scales); only the shapes matter for speed.
//!
//! Also as wasm (one thread; simd128, or relaxed SIMD with the flag), under Node's WASI:
//!
//!     cargo build --release --target wasm32-wasip1 --example quant_bench
//!     node scripts/wasi-run.mjs target/wasm32-wasip1/release/examples/quant_bench.wasm --int8

use std::time::{Duration, Instant};

use half::f16;
use pensive::bytes::AlignedBytes;
use pensive::quant::*;
#[cfg(not(target_arch = "wasm32"))]
use rayon::ThreadPool;

/// wasm32 (WASI, one thread): the kernels run on the calling thread.
#[cfg(target_arch = "wasm32")]
struct ThreadPool;

#[cfg(target_arch = "wasm32")]
impl ThreadPool {
    fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn pools() -> Vec<(usize, ThreadPool)> {
    [1, 2]
        .into_iter()
        .map(|t| (t, rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("thread pool")))
        .collect()
}

#[cfg(target_arch = "wasm32")]
fn pools() -> Vec<(usize, ThreadPool)> {
    vec![(1, ThreadPool)]
}

/// splitmix64: a tiny seeded PRNG, enough for benchmark data.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QMatrix {
    let len = rows * cols / ty.block_len() * ty.block_bytes();
    let mut data = AlignedBytes::zeroed(len);
    for b in data.as_mut_slice() {
        *b = rng.next_u64() as u8;
    }
    let mut scale = || f16::from_f32(rng.f32() * 0.01);
    let bytes = data.as_mut_slice();
    match ty {
        GgmlType::Q4_0 => bytemuck::cast_slice_mut::<u8, BlockQ4_0>(bytes).iter_mut().for_each(|b| b.d = scale()),
        GgmlType::Q4_1 => bytemuck::cast_slice_mut::<u8, BlockQ4_1>(bytes).iter_mut().for_each(|b| (b.d, b.m) = (scale(), scale())),
        GgmlType::Q5_0 => bytemuck::cast_slice_mut::<u8, BlockQ5_0>(bytes).iter_mut().for_each(|b| b.d = scale()),
        GgmlType::Q5_1 => bytemuck::cast_slice_mut::<u8, BlockQ5_1>(bytes).iter_mut().for_each(|b| (b.d, b.m) = (scale(), scale())),
        GgmlType::Q8_0 => bytemuck::cast_slice_mut::<u8, BlockQ8_0>(bytes).iter_mut().for_each(|b| b.d = scale()),
        GgmlType::Q4_K => bytemuck::cast_slice_mut::<u8, BlockQ4_K>(bytes).iter_mut().for_each(|b| (b.d, b.dmin) = (scale(), scale())),
        GgmlType::Q5_K => bytemuck::cast_slice_mut::<u8, BlockQ5_K>(bytes).iter_mut().for_each(|b| (b.d, b.dmin) = (scale(), scale())),
        GgmlType::Q6_K => bytemuck::cast_slice_mut::<u8, BlockQ6_K>(bytes).iter_mut().for_each(|b| b.d = scale()),
        GgmlType::F32 => bytemuck::cast_slice_mut::<u8, f32>(bytes).iter_mut().for_each(|v| *v = rng.f32()),
        GgmlType::F16 | GgmlType::BF16 => {
            bytemuck::cast_slice_mut::<u8, u16>(bytes).iter_mut().for_each(|v| *v = f16::from_f32(rng.f32()).to_bits())
        }
    }
    match QMatrix::new(ty, rows, cols, data) {
        Ok(m) => m,
        Err(e) => panic!("bench matrix: {e}"),
    }
}

/// Seconds per call of `f`: the best of many short timed runs (~5 ms each) spread over
/// `total`. The machine is shared, so the minimum, not the mean, estimates the speed of
/// an undisturbed core.
fn time_per_call(total: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    let first = start.elapsed().max(Duration::from_micros(1));
    let calls_per_run = (Duration::from_millis(5).as_secs_f64() / first.as_secs_f64()).ceil().max(1.0) as u32;
    let mut best = f64::INFINITY;
    let begin = Instant::now();
    while begin.elapsed() < total {
        let run = Instant::now();
        for _ in 0..calls_per_run {
            f();
        }
        best = best.min(run.elapsed().as_secs_f64() / calls_per_run as f64);
    }
    best
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let min = Duration::from_millis(if quick { 150 } else { 600 });
    let mut rng = Rng(0x5eed);
    let pools = pools();

    // (type, rows, cols): shapes of SmolLM2-135M (Q4_1, Q8_0), Qwen2.5-0.5B (d 896: only
    // its 4864-wide ffn_down can be a K-quant, 896 is not a multiple of 256) and Qwen2.5-1.5B.
    let shapes = [
        (GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q4_1, 576, 1536),
        (GgmlType::Q8_0, 49152, 576),
        (GgmlType::Q4_0, 1536, 576),
        (GgmlType::Q5_0, 896, 896),
        (GgmlType::Q5_1, 896, 896),
        (GgmlType::Q4_K, 896, 4864),
        (GgmlType::Q4_K, 8960, 1536),
        (GgmlType::Q5_K, 1536, 1536),
        (GgmlType::Q6_K, 1536, 8960),
        (GgmlType::Q8_0, 4864, 896),
        (GgmlType::F16, 896, 896),
        (GgmlType::F32, 896, 896),
    ];
    if std::env::args().any(|a| a == "--attention") {
        attention(min, &mut rng, &pools[0].1);
        return;
    }
    int8_decode(min, &mut rng, &pools[0].1);
    if std::env::args().any(|a| a == "--int8") {
        return;
    }
    println!("\nmatvec (decode), G weights/s");
    println!("{:<6} {:>12} {:>10} {:>10}", "type", "rows x cols", "1 thread", "2 threads");
    for &(ty, rows, cols) in &shapes {
        let w = random_matrix(ty, rows, cols, &mut rng);
        let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
        let mut y = vec![0.0; rows];
        let rates: Vec<f64> = pools
            .iter()
            .map(|(_, pool)| pool.install(|| (rows * cols) as f64 / time_per_call(min, || w.matvec(&x, &mut y)) / 1e9))
            .collect();
        println!("{:<6} {:>12} {:>10.2} {:>10.2}", format!("{ty:?}"), format!("{rows}x{cols}"), rates[0], rates[1]);
    }

    println!("\nmatmul (prefill), G weight-activation products/s");
    println!("{:<6} {:>12} {:>4} {:>10} {:>10}", "type", "rows x cols", "n", "1 thread", "2 threads");
    for &(ty, rows, cols, n) in &[(GgmlType::Q4_1, 1536, 576, 64), (GgmlType::Q4_K, 8960, 1536, 64), (GgmlType::Q6_K, 896, 4864, 64), (GgmlType::Q8_0, 4864, 896, 7)] {
        let w = random_matrix(ty, rows, cols, &mut rng);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
        let mut y = vec![0.0; n * rows];
        let rates: Vec<f64> = pools
            .iter()
            .map(|(_, pool)| pool.install(|| (n * rows * cols) as f64 / time_per_call(min, || w.matmul(&x, &mut y)) / 1e9))
            .collect();
        println!("{:<6} {:>12} {:>4} {:>10.2} {:>10.2}", format!("{ty:?}"), format!("{rows}x{cols}"), n, rates[0], rates[1]);
    }

    // SmolLM2-135M: 30 layers of q, k, v, o, gate, up, down (Q4_1) and the tied Q8_0 head.
    let (d, kv, ffn, vocab, layers) = (576, 192, 1536, 49152, 30);
    let layer = [(d, d), (kv, d), (kv, d), (d, d), (ffn, d), (ffn, d), (d, ffn)]
        .map(|(r, c)| random_matrix(GgmlType::Q4_1, r, c, &mut rng));
    let head = random_matrix(GgmlType::Q8_0, vocab, d, &mut rng);
    let xs = [vec![0.5f32; d], vec![0.5f32; ffn]];
    let mut ys: Vec<Vec<f32>> = layer.iter().map(|m| vec![0.0; m.rows()]).collect();
    let mut logits = vec![0.0; vocab];
    println!("\nSmolLM2-135M matvec-only decode (30 layers x 7 Q4_1 matrices + 49152x576 Q8_0 head)");
    for (threads, pool) in &pools {
        let secs = pool.install(|| {
            time_per_call(min * 2, || {
                for _ in 0..layers {
                    for (m, y) in layer.iter().zip(&mut ys) {
                        m.matvec(&xs[usize::from(m.cols() == ffn)], y);
                    }
                }
                head.matvec(&xs[0], &mut logits);
            })
        });
        println!("{threads} thread(s): {:.1} tok/s ({:.2} ms/token)", 1.0 / secs, secs * 1e3);
    }
}

/// The int8 kernels (the CPU default) on Qwen2.5-0.5B Q4_K_M's decode shapes: 896-wide
/// matrices fall back from K-quants to Q5_0 / Q8_0 there. Activations are quantized once
/// outside the timing (as a layer shares them among matrices).
fn int8_decode(min: Duration, rng: &mut Rng, one: &ThreadPool) {
    println!("\nint8 matvec (decode), G weights/s and GB/s of weights, 1 thread");
    for &(ty, rows, cols) in &[
        (GgmlType::Q5_0, 4864, 896),
        (GgmlType::Q5_0, 896, 896),
        (GgmlType::Q8_0, 151936, 896),
        (GgmlType::Q4_K, 896, 4864),
        (GgmlType::Q6_K, 896, 4864),
        (GgmlType::Q4_1, 1536, 576),
    ] {
        let w = random_matrix(ty, rows, cols, rng);
        let xv: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
        let x = Activations::new(&xv, cols, CpuKernels::Int8);
        let mut y = vec![0.0; rows];
        let secs = one.install(|| time_per_call(min, || w.mul(&x, &mut y)));
        let bytes = (rows * cols / ty.block_len() * ty.block_bytes()) as f64;
        println!("{:<6} {:>12} {:>8.2} G/s {:>7.2} GB/s", format!("{ty:?}"), format!("{rows}x{cols}"), (rows * cols) as f64 / secs / 1e9, bytes / secs / 1e9);
    }
    let n = 64;
    println!("\nint8 matmul (prefill, {n} rows), G weight-activation products/s, 1 thread");
    for &(ty, rows, cols) in &[(GgmlType::Q5_0, 4864, 896), (GgmlType::Q8_0, 896, 896), (GgmlType::Q4_K, 896, 4864), (GgmlType::Q6_K, 896, 4864)] {
        let w = random_matrix(ty, rows, cols, rng);
        let xv: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
        let x = Activations::new(&xv, cols, CpuKernels::Int8);
        let mut y = vec![0.0; n * rows];
        let secs = one.install(|| time_per_call(min, || w.mul(&x, &mut y)));
        println!("{:<6} {:>12} {:>8.2} G/s", format!("{ty:?}"), format!("{rows}x{cols}"), (n * rows * cols) as f64 / secs / 1e9);
    }

}

/// The CPU attention over an f16 cache, Qwen2.5-0.5B's heads (14 query, 2 kv, 64 wide):
/// one decode step's attention per layer after 1k and 4k cached tokens, and a 512-token
/// prefill chunk's after 0 and 3584.
fn attention(min: Duration, rng: &mut Rng, one: &ThreadPool) {
    use pensive::ops::{self, Heads};
    let heads = Heads { n_heads: 14, n_kv_heads: 2, head_dim: 64 };
    println!("CPU attention per layer (Qwen2.5-0.5B heads), 1 thread");
    for (pos0, n) in [(1023, 1), (4095, 1), (0, 512), (3584, 512)] {
        let len = pos0 + n;
        let cache = |rng: &mut Rng| -> Vec<Vec<f16>> { (0..2).map(|_| (0..len * 64).map(|_| f16::from_f32(rng.f32())).collect()).collect() };
        let (keys, values) = (cache(rng), cache(rng));
        let q: Vec<f32> = (0..n * 14 * 64).map(|_| rng.f32()).collect();
        let mut out = vec![0.0; q.len()];
        let secs = one.install(|| time_per_call(min, || ops::attention_cached(&mut out, &q, &keys, &values, pos0, heads)));
        println!("context {pos0:>5} + {n:>3} rows: {:>8.3} ms", secs * 1e3);
    }
}
