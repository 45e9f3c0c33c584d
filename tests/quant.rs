//! GGML block formats and quantized kernels.
//!
//! 1. The reference dequantization against the `gguf` Python package
//!    (`tests/fixtures/quant/`, made by `tests/fixtures/gen/quant_fixtures.py`).
//! 2. `QMatrix::matvec` / `matmul` against dequantize + an f64 dot product, on seeded
//!    random weights of every type and odd shapes, sequential and threaded.
//! 3. The int8 kernels against their error bound and the f32 kernels, per type.
//! 4. Bad input gives typed errors.

use std::path::PathBuf;

use half::f16;
use pensive::bytes::AlignedBytes;
use pensive::quant::*;

/// Our dequantization vs the gguf package's: both compute the same f32 expression in the
/// same order, so they should agree exactly; allow one unit in the last place.
const MAX_ULPS_VS_GGUF: u64 = 1;

/// matvec/matmul vs dequantize + exact dot: the kernels sum in a different order (32 or
/// 8 lanes, then a tree) and fuse multiply-adds, so the error is a few f32 roundings per
/// term, relative to the sum of |w * x| (not to the result, which can cancel to ~0).
const KERNEL_REL_TOLERANCE: f64 = 1e-5;

/// The int8 kernels (8-bit activations, [`CpuKernels::Int8`]) vs the f32 kernels on the
/// same random weights and activations: relative RMS error over all outputs,
/// ||y_int8 - y_f32|| / ||y_f32||, per weight type. Rounding x to 8 bits moves each value by
/// up to half a step (uniformly, about step / sqrt(12)) of its block's max / 127; the
/// weights only set how those errors add up, so every type measures about the same (about
/// 1% on this test's outlier-heavy activations; comments: measured on x86_64 AVX2).
/// The hard per-output bound is checked separately ([`check_int8_bound`]).
const INT8_REL_RMS: [(GgmlType, f64); 8] = [
    (GgmlType::Q4_0, 1.5e-2), // measured 1.21e-2
    (GgmlType::Q4_1, 1.5e-2), // measured 1.11e-2
    (GgmlType::Q5_0, 1.5e-2), // measured 1.09e-2
    (GgmlType::Q5_1, 1.5e-2), // measured 1.00e-2
    (GgmlType::Q8_0, 1.5e-2), // measured 1.05e-2
    (GgmlType::Q4_K, 2.5e-2), // measured 1.77e-2 (256-value activation blocks: coarser steps)
    (GgmlType::Q5_K, 2.5e-2), // measured 1.48e-2
    (GgmlType::Q6_K, 2.5e-2), // measured 1.33e-2
];


// --------------------------------------------------------------------------------------
// helpers
// --------------------------------------------------------------------------------------

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

    /// A finite f16 scale of either sign, magnitude in [1e-3, 1).
    fn scale(&mut self) -> f16 {
        let magnitude = 10f32.powf(-3.0 * (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32);
        f16::from_f32(if self.next_u64() & 1 == 0 { magnitude } else { -magnitude })
    }
}

/// A `rows` x `cols` matrix of `ty` with uniformly random bits and finite random scales.
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> QMatrix {
    let len = rows * cols / ty.block_len() * ty.block_bytes();
    let mut data = AlignedBytes::zeroed(len);
    for b in data.as_mut_slice() {
        *b = rng.next_u64() as u8;
    }
    let bytes = data.as_mut_slice();
    fn set<B: bytemuck::Pod>(bytes: &mut [u8], f: impl FnMut(&mut B)) {
        bytemuck::cast_slice_mut::<u8, B>(bytes).iter_mut().for_each(f);
    }
    match ty {
        GgmlType::Q4_0 => set(bytes, |b: &mut BlockQ4_0| b.d = rng.scale()),
        GgmlType::Q4_1 => set(bytes, |b: &mut BlockQ4_1| (b.d, b.m) = (rng.scale(), rng.scale())),
        GgmlType::Q5_0 => set(bytes, |b: &mut BlockQ5_0| b.d = rng.scale()),
        GgmlType::Q5_1 => set(bytes, |b: &mut BlockQ5_1| (b.d, b.m) = (rng.scale(), rng.scale())),
        GgmlType::Q8_0 => set(bytes, |b: &mut BlockQ8_0| b.d = rng.scale()),
        GgmlType::Q4_K => set(bytes, |b: &mut BlockQ4_K| (b.d, b.dmin) = (rng.scale(), rng.scale())),
        GgmlType::Q5_K => set(bytes, |b: &mut BlockQ5_K| (b.d, b.dmin) = (rng.scale(), rng.scale())),
        GgmlType::Q6_K => set(bytes, |b: &mut BlockQ6_K| b.d = rng.scale()),
        GgmlType::F32 => set(bytes, |v: &mut f32| *v = rng.f32()),
        GgmlType::F16 => set(bytes, |v: &mut u16| *v = f16::from_f32(rng.f32()).to_bits()),
        GgmlType::BF16 => set(bytes, |v: &mut u16| *v = half::bf16::from_f32(rng.f32()).to_bits()),
    }
    QMatrix::new(ty, rows, cols, data).unwrap_or_else(|e| panic!("random {ty:?} matrix: {e}"))
}

/// The whole matrix dequantized by the reference path, (rows, cols) f32.
fn dequantized(w: &QMatrix) -> Vec<f32> {
    let mut out = vec![0.0; w.rows() * w.cols()];
    dequantize(w.ty(), w.bytes(), &mut out).unwrap_or_else(|e| panic!("{:?}: {e}", w.ty()));
    out
}

/// Distance in units in the last place between two finite floats (+0 and -0 are equal).
fn ulps(a: f32, b: f32) -> u64 {
    fn key(f: f32) -> i64 {
        let bits = f.to_bits();
        let magnitude = (bits & 0x7fff_ffff) as i64;
        if bits >> 31 == 1 { -magnitude } else { magnitude }
    }
    (key(a) - key(b)).unsigned_abs()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn check_kernel_result(what: &str, got: &[f32], w: &[f32], x: &[f32], rows: usize, cols: usize) {
    let n = x.len() / cols;
    assert_eq!(got.len(), n * rows, "{what}: output length");
    for i in 0..n {
        for r in 0..rows {
            let (w_row, x_row) = (&w[r * cols..(r + 1) * cols], &x[i * cols..(i + 1) * cols]);
            let exact: f64 = w_row.iter().zip(x_row).map(|(&w, &x)| w as f64 * x as f64).sum();
            let scale: f64 = w_row.iter().zip(x_row).map(|(&w, &x)| (w as f64 * x as f64).abs()).sum();
            let err = (got[i * rows + r] as f64 - exact).abs();
            assert!(
                err <= KERNEL_REL_TOLERANCE * scale + f64::MIN_POSITIVE,
                "{what}: y[{i}, {r}] = {} but dequantize + dot = {exact} (|err| {err:e}, sum |w x| {scale:e})",
                got[i * rows + r]
            );
        }
    }
}

// --------------------------------------------------------------------------------------
// reference dequantization vs gguf-py
// --------------------------------------------------------------------------------------

#[test]
fn dequantize_matches_gguf_python_for_every_type() {
    for ty in GgmlType::ALL {
        let name = format!("{ty:?}");
        let blocks = fixture(&format!("{name}.blocks"));
        let expected: Vec<f32> = fixture(&format!("{name}.f32"))
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert!(expected.len() >= 1024, "{name}: fixture too small ({} values)", expected.len());

        let mut got = vec![f32::NAN; expected.len()];
        dequantize(ty, &blocks, &mut got).unwrap_or_else(|e| panic!("{name}: {e}"));
        let worst = got.iter().zip(&expected).map(|(&g, &e)| ulps(g, e)).max().unwrap_or(0);
        eprintln!("{name}: {} values, worst {worst} ulps from gguf-py", got.len());
        let first_bad = got.iter().zip(&expected).position(|(&g, &e)| ulps(g, e) > MAX_ULPS_VS_GGUF);
        assert!(
            first_bad.is_none(),
            "{name}: value {first_bad:?} is {:?}, gguf says {:?} (worst {worst} ulps)",
            first_bad.map(|i| got[i]),
            first_bad.map(|i| expected[i])
        );

        // The same bytes at an odd address (a tensor inside a plain byte slice).
        let mut shifted = vec![0u8; blocks.len() + 1];
        shifted[1..].copy_from_slice(&blocks);
        let mut unaligned = vec![f32::NAN; expected.len()];
        dequantize(ty, &shifted[1..], &mut unaligned).unwrap_or_else(|e| panic!("{name} unaligned: {e}"));
        assert!(
            unaligned.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: unaligned bytes dequantize differently"
        );
    }
}

#[test]
fn qmatrix_rows_dequantize_like_the_whole_tensor() {
    for ty in GgmlType::ALL {
        let name = format!("{ty:?}");
        let blocks = fixture(&format!("{name}.blocks"));
        let mut whole = vec![0.0f32; blocks.len() / ty.block_bytes() * ty.block_len()];
        dequantize(ty, &blocks, &mut whole).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Four rows of a quarter of the fixture each (all fixtures hold a multiple of 4 blocks).
        let (rows, cols) = (4, whole.len() / 4);
        let w = QMatrix::new(ty, rows, cols, AlignedBytes::copy_from(&blocks)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(w.row_bytes() * rows, blocks.len(), "{name}: row_bytes");
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            w.dequantize_row(r, &mut row).unwrap_or_else(|e| panic!("{name} row {r}: {e}"));
            assert!(
                row.iter().zip(&whole[r * cols..]).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: row {r} differs from the whole-tensor dequantization"
            );
        }
    }
}

#[test]
fn f16_conversion_is_exact_for_every_bit_pattern() {
    for bits in 0..=u16::MAX {
        let want = f16::from_bits(bits).to_f32();
        let got = f16_bits_to_f32(bits);
        if want.is_nan() {
            assert!(got.is_nan(), "{bits:#06x}: {got} is not NaN");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}: {got} != {want}");
        }
    }
}

#[test]
fn block_structs_match_ggml_type_sizes() {
    fn check<B: QuantBlock>() {
        assert_eq!(std::mem::size_of::<B>(), B::TYPE.block_bytes(), "{:?}", B::TYPE);
        assert_eq!(B::LEN, B::TYPE.block_len(), "{:?}", B::TYPE);
    }
    check::<BlockQ4_0>();
    check::<BlockQ4_1>();
    check::<BlockQ5_0>();
    check::<BlockQ5_1>();
    check::<BlockQ8_0>();
    check::<BlockQ4_K>();
    check::<BlockQ5_K>();
    check::<BlockQ6_K>();
    for (ty, id) in [(GgmlType::F32, 0), (GgmlType::Q4_1, 3), (GgmlType::Q4_K, 12), (GgmlType::BF16, 30)] {
        assert_eq!(GgmlType::from_id(id), Some(ty));
    }
    assert_eq!(GgmlType::from_id(4), None, "Q4_2 (removed from ggml) must be rejected");
}

// --------------------------------------------------------------------------------------
// kernels vs dequantize + dot
// --------------------------------------------------------------------------------------

/// Columns for a type: a few blocks, and for dense types a length that is not a multiple
/// of any vector width.
fn odd_cols(ty: GgmlType) -> [usize; 2] {
    match ty.block_len() {
        1 => [37, 301],
        32 => [96, 608],
        _ => [256, 1280],
    }
}

#[test]
fn matvec_and_matmul_match_dequantize_then_dot() {
    let mut rng = Rng(0x5eed_0001);
    for ty in GgmlType::ALL {
        for cols in odd_cols(ty) {
            for rows in [1, 5, 37] {
                let w = random_matrix(ty, rows, cols, &mut rng);
                let dense = dequantized(&w);
                for n in [1, 3, 7] {
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
                    let mut y = vec![f32::NAN; n * rows];
                    w.matmul(&x, &mut y);
                    check_kernel_result(&format!("{ty:?} matmul {rows}x{cols} n={n}"), &y, &dense, &x, rows, cols);
                    if n == 1 {
                        let mut y = vec![f32::NAN; rows];
                        w.matvec(&x, &mut y);
                        check_kernel_result(&format!("{ty:?} matvec {rows}x{cols}"), &y, &dense, &x, rows, cols);
                    }
                }
            }
        }
    }
}

// --------------------------------------------------------------------------------------
// int8 kernels vs the f32 kernels
// --------------------------------------------------------------------------------------

/// Activations with a few outliers (as real hidden states have): they set their block's
/// 8-bit step, which every other value of the block is rounded to.
fn activations(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| rng.f32() * if rng.next_u64() % 16 == 0 { 20.0 } else { 1.0 }).collect()
}

/// Values per activation block of the int8 kernels for weights of `ty`: 32 for the
/// 32-value formats, 256 (one super-block) for the K-quants.
fn int8_block(ty: GgmlType) -> usize {
    if ty.block_len() == 256 { 256 } else { 32 }
}

/// The int8 kernels' guarantee: the integer products are exact, so the only error beyond
/// f32 rounding is x's rounding to 8 bits, at most half a step (`max |x| / 127` of its
/// `block`-value block) per value: `|y - W x| <= sum_c |w_c| step_c / 2`. The f32 rounding
/// of the per-block scaled sums is allowed [`KERNEL_REL_TOLERANCE`] (x 10, for the
/// cancellation between `d q` and an offset `m`) of `sum |w x|`.
fn check_int8_bound(what: &str, got: &[f32], w: &[f32], x: &[f32], rows: usize, cols: usize, block: usize) {
    let n = x.len() / cols;
    for i in 0..n {
        let x_row = &x[i * cols..(i + 1) * cols];
        let half_steps: Vec<f64> = x_row
            .chunks_exact(block)
            .flat_map(|b| {
                let step = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                std::iter::repeat_n(step / 2.0, block)
            })
            .collect();
        for r in 0..rows {
            let w_row = &w[r * cols..(r + 1) * cols];
            let exact: f64 = w_row.iter().zip(x_row).map(|(&w, &x)| w as f64 * x as f64).sum();
            let scale: f64 = w_row.iter().zip(x_row).map(|(&w, &x)| (w as f64 * x as f64).abs()).sum();
            let rounding: f64 = w_row.iter().zip(&half_steps).map(|(&w, h)| (w as f64).abs() * h).sum();
            let bound = rounding * (1.0 + 1e-6) + 10.0 * KERNEL_REL_TOLERANCE * scale + f64::MIN_POSITIVE;
            let err = (got[i * rows + r] as f64 - exact).abs();
            assert!(err <= bound, "{what}: y[{i}, {r}] = {} but W x = {exact} (|err| {err:e} > bound {bound:e})", got[i * rows + r]);
        }
    }
}

#[test]
fn int8_kernels_stay_within_the_activation_rounding_bound() {
    let mut rng = Rng(0x5eed_0003);
    for (ty, tolerance) in INT8_REL_RMS {
        let (mut err2, mut ref2) = (0f64, 0f64);
        // Columns with odd numbers of chunks (and, for 32-value blocks, not multiples of 256).
        let cols = match ty.block_len() {
            32 => [96, 608, 4864],
            _ => [256, 1280, 4864],
        };
        for cols in cols {
            for rows in [1, 5, 37] {
                let w = random_matrix(ty, rows, cols, &mut rng);
                let dense = dequantized(&w);
                for _ in 0..3 {
                    let x = activations(cols, &mut rng);
                    let mut y = vec![f32::NAN; rows];
                    w.mul(&Activations::new(&x, cols, CpuKernels::Int8), &mut y);
                    check_int8_bound(&format!("{ty:?} int8 {rows}x{cols}"), &y, &dense, &x, rows, cols, int8_block(ty));
                    let mut reference = vec![f32::NAN; rows];
                    w.mul(&Activations::new(&x, cols, CpuKernels::F32), &mut reference);
                    check_kernel_result(&format!("{ty:?} f32 {rows}x{cols}"), &reference, &dense, &x, rows, cols);
                    err2 += y.iter().zip(&reference).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>();
                    ref2 += reference.iter().map(|&b| (b as f64).powi(2)).sum::<f64>();
                }
            }
        }
        let rel_rms = (err2 / ref2).sqrt();
        eprintln!("{ty:?}: int8 vs f32 kernels, relative RMS error {rel_rms:.2e} (tolerance {tolerance:.1e})");
        assert!(rel_rms <= tolerance, "{ty:?}: int8 relative RMS error {rel_rms:e} > {tolerance:e}");
    }
}

#[test]
fn batched_int8_equals_the_int8_mat_vec_of_each_row() {
    // Prefill (n rows at once) and decode (one row) give every row the same bits, for every
    // weight type, odd batch sizes, whatever the thread count: batching cannot change a
    // result, so a cached prefix reproduces a fresh prompt.
    let pools: Vec<_> = [1, 2, 3]
        .into_iter()
        .map(|t| rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("thread pool"))
        .collect();
    let mut rng = Rng(0x5eed_0006);
    for (ty, _) in INT8_REL_RMS {
        // Enough work that 2 and 3 threads split the rows; rows odd.
        let (rows, cols) = (131, if ty.block_len() == 256 { 768 } else { 608 });
        let w = random_matrix(ty, rows, cols, &mut rng);
        let dense = dequantized(&w);
        for n in [2, 3, 7, 13, 21] {
            let x = activations(n * cols, &mut rng);
            let mut single = vec![f32::NAN; n * rows];
            for (i, y) in single.chunks_exact_mut(rows).enumerate() {
                pools[0].install(|| w.mul(&Activations::new(&x[i * cols..(i + 1) * cols], cols, CpuKernels::Int8), y));
            }
            check_int8_bound(&format!("{ty:?} int8 n={n}"), &single, &dense, &x, rows, cols, int8_block(ty));
            for pool in &pools {
                let mut batched = vec![f32::NAN; n * rows];
                pool.install(|| w.mul(&Activations::new(&x, cols, CpuKernels::Int8), &mut batched));
                let threads = pool.current_num_threads();
                for (i, (a, b)) in batched.iter().zip(&single).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{ty:?} n={n}, {threads} threads: y[{}, {}] batched {a} vs alone {b}",
                        i / rows,
                        i % rows
                    );
                }
            }
        }
    }
}

#[test]
fn dense_weights_take_the_f32_kernels_under_int8() {
    let mut rng = Rng(0x5eed_0004);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let (rows, cols) = (5, 301);
        let w = random_matrix(ty, rows, cols, &mut rng);
        let x = activations(3 * cols, &mut rng);
        let (mut a, mut b) = (vec![f32::NAN; 3 * rows], vec![f32::NAN; 3 * rows]);
        w.mul(&Activations::new(&x, cols, CpuKernels::Int8), &mut a);
        w.matmul(&x, &mut b);
        assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty:?}");
    }
}

#[test]
fn q8_activation_blocks_round_to_nearest() {
    let mut rng = Rng(0x5eed_0005);
    let x = activations(32 * 64, &mut rng);
    let mut blocks = vec![int8::BlockQ8::default(); 64];
    int8::quantize_q8(&x, &mut blocks);
    for (x, b) in x.chunks_exact(32).zip(&blocks) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(b.d, amax / 127.0);
        assert!(b.qs.iter().any(|&q| q.abs() == 127), "the largest value maps to ±127");
        for (&v, &q) in x.iter().zip(&b.qs) {
            assert!((v - b.d * q as f32).abs() <= b.d * 0.5 * (1.0 + 1e-6), "{v} -> {q} * {}", b.d);
        }
        assert_eq!(b.sum, b.d * b.qs.iter().map(|&q| q as i32).sum::<i32>() as f32);
    }
    // An all-zero block has step 0 and quantizes to zeros, not NaN.
    int8::quantize_q8(&[0.0; 32], &mut blocks[..1]);
    assert_eq!((blocks[0].d, blocks[0].sum, blocks[0].qs), (0.0, 0.0, [0; 32]));
}

#[test]
fn q8k_activation_blocks_round_to_nearest() {
    let mut rng = Rng(0x5eed_0007);
    let x = activations(256 * 8, &mut rng);
    let mut blocks = vec![int8::BlockQ8K::default(); 8];
    int8::quantize_q8k(&x, &mut blocks);
    for (x, b) in x.chunks_exact(256).zip(&blocks) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(b.d, amax / 127.0);
        let qs: Vec<i8> = b.qs.iter().flatten().copied().collect();
        assert!(qs.iter().any(|&q| q.abs() == 127), "the largest value maps to ±127");
        for (&v, &q) in x.iter().zip(&qs) {
            assert!((v - b.d * q as f32).abs() <= b.d * 0.5 * (1.0 + 1e-6), "{v} -> {q} * {}", b.d);
        }
        for (g, &s) in qs.chunks_exact(16).zip(&b.bsums) {
            assert_eq!(s as i32, g.iter().map(|&q| q as i32).sum::<i32>());
        }
    }
    int8::quantize_q8k(&[0.0; 256], &mut blocks[..1]);
    assert_eq!((blocks[0].d, blocks[0].bsums), (0.0, [0; 16]));
    assert!(blocks[0].qs.iter().flatten().all(|&q| q == 0));
}

#[test]
fn threaded_kernels_equal_sequential_ones() {
    // Large enough that parallel_rows splits the work; rows not a multiple of the chunking.
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("1-thread pool");
    let triple = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("3-thread pool");
    let mut rng = Rng(0x5eed_0002);
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16] {
        let (rows, cols) = (1027, if ty.block_len() == 256 { 512 } else { 288 });
        let w = random_matrix(ty, rows, cols, &mut rng);
        for n in [1, 7] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
            let (mut y1, mut y3) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
            single.install(|| w.matmul(&x, &mut y1));
            triple.install(|| w.matmul(&x, &mut y3));
            // Each row is computed by the same code whichever thread runs it: bit-identical.
            assert!(
                y1.iter().zip(&y3).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty:?} n={n}: 3 threads differ from 1"
            );
            let q8 = Activations::new(&x, cols, CpuKernels::Int8);
            let (mut z1, mut z3) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
            single.install(|| w.mul(&q8, &mut z1));
            triple.install(|| w.mul(&q8, &mut z3));
            assert!(z1.iter().zip(&z3).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty:?} n={n}: int8 on 3 threads differs from 1");
            check_kernel_result(&format!("{ty:?} threaded n={n}"), &y3, &dequantized(&w), &x, rows, cols);
        }
    }
}

#[test]
fn empty_shapes_are_fine() {
    let w = QMatrix::new(GgmlType::Q8_0, 0, 64, AlignedBytes::zeroed(0)).expect("0 rows");
    let mut y: Vec<f32> = vec![];
    w.matvec(&[0.5; 64], &mut y);
    w.matmul(&[0.5; 128], &mut y);
    let w = QMatrix::new(GgmlType::Q4_K, 3, 0, AlignedBytes::zeroed(0)).expect("0 cols");
    let mut y = vec![f32::NAN; 3];
    w.matvec(&[], &mut y);
    assert_eq!(y, [0.0; 3]);
}

// --------------------------------------------------------------------------------------
// bad input
// --------------------------------------------------------------------------------------

#[test]
fn wrong_byte_lengths_are_typed_errors() {
    let mut out = vec![0.0f32; 64];
    assert_eq!(
        dequantize(GgmlType::Q4_1, &[0u8; 39], &mut out),
        Err(QuantError::ByteLength { ty: GgmlType::Q4_1, elements: 64, expected: 40, actual: 39 })
    );
    assert_eq!(
        dequantize(GgmlType::Q4_K, &[0u8; 144], &mut out),
        Err(QuantError::ElementsNotBlockMultiple { ty: GgmlType::Q4_K, elements: 64, block_len: 256 })
    );
    assert_eq!(
        QMatrix::new(GgmlType::Q8_0, 2, 64, AlignedBytes::zeroed(135)).map(|_| ()),
        Err(QuantError::MatrixBytes { ty: GgmlType::Q8_0, rows: 2, cols: 64, expected: 136, actual: 135 })
    );
}

#[test]
fn cols_not_a_multiple_of_the_block_is_a_typed_error() {
    assert_eq!(
        QMatrix::new(GgmlType::Q4_K, 2, 896, AlignedBytes::zeroed(2 * 896 / 256 * 144)).map(|_| ()),
        Err(QuantError::ColsNotBlockMultiple { ty: GgmlType::Q4_K, cols: 896, block_len: 256 })
    );
    assert_eq!(
        QMatrix::new(GgmlType::Q5_0, 1, 33, AlignedBytes::zeroed(22)).map(|_| ()),
        Err(QuantError::ColsNotBlockMultiple { ty: GgmlType::Q5_0, cols: 33, block_len: 32 })
    );
    assert_eq!(
        QMatrix::new(GgmlType::Q6_K, usize::MAX / 2, 256, AlignedBytes::zeroed(0)).map(|_| ()),
        Err(QuantError::MatrixTooLarge { ty: GgmlType::Q6_K, rows: usize::MAX / 2, cols: 256 })
    );
}

#[test]
fn row_lookups_are_checked() {
    let mut rng = Rng(3);
    let w = random_matrix(GgmlType::Q4_0, 3, 64, &mut rng);
    let mut row = vec![0.0; 64];
    assert_eq!(w.dequantize_row(3, &mut row), Err(QuantError::RowOutOfRange { row: 3, rows: 3 }));
    assert_eq!(
        w.dequantize_row(0, &mut row[..32]),
        Err(QuantError::RowOutputLength { expected: 64, actual: 32 })
    );
    assert!(w.blocks::<BlockQ4_0>().is_some_and(|b| b.len() == 6));
    assert!(w.blocks::<BlockQ8_0>().is_none(), "blocks of the wrong type");
}

#[test]
#[should_panic(expected = "matvec: x has 63 values")]
fn matvec_with_a_wrong_x_length_panics() {
    let w = QMatrix::new(GgmlType::Q8_0, 1, 64, AlignedBytes::zeroed(68)).expect("matrix");
    w.matvec(&[0.0; 63], &mut [0.0; 1]);
}

#[test]
fn every_quantized_type_is_listed() {
    for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
        assert!(ty.is_quantized() && GgmlType::ALL.contains(&ty), "{ty:?}");
    }
    assert_eq!(GgmlType::ALL.iter().filter(|t| !t.is_quantized()).count(), 3);
}
