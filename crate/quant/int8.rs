//! 8-bit activations with integer dot products: the CPU backend's opt-in decode kernels
//! ([`CpuKernels::Int8`]; why not the default is said there).
//!
//! The idea is llama.cpp's (ggml-cpu's `quantize_row_q8_0` + `vec_dot_*_q8_0`): quantize the
//! activation vector once per mat-vec into 32-value blocks, `x ≈ dx * q` with one f32 scale
//! per block ([`BlockQ8`]), then multiply integer weights by integer activations, 32 at a
//! time, and apply both scales once per 32 products instead of once per product.
//!
//! One kernel for every weight format. Each format only says how a 32-weight chunk of its
//! blocks unpacks to the common integer form ([`IntBlock::int_chunk`] → [`IntChunk`]:
//! 32 signed bytes, a scale per 16 weights, an offset); [`dot_row`] is the one block-dot
//! kernel, and the one thing that differs by instruction set is the inner product of 32
//! signed bytes ([`IntDot`]: AVX2 `vpmaddubsw`/`vpmaddwd`, wasm simd128 `i32x4.dot_i16x8_s`,
//! a portable fallback).
//!
//! These are the mat-vec (decode) kernels. Decode reads every weight once per token and is
//! bound by memory and by the work per weight, which this cuts (4x less activation traffic,
//! no f32 conversion of weights). Prefill keeps the f32 tile kernels: they reuse each
//! dequantized weight for eight multiply-adds, and on AVX2 an FMA per 8 products beats the
//! `maddubs + madd + cvt + fma` per 32 products that 32-value scales need (a batched int8
//! kernel measured 1.5x slower than the f32 tiles on SmolLM2 and Qwen2.5-0.5B prefill). An
//! int8 prefill would need activation scales per 256 values (llama.cpp's Q8_K) so that
//! integer sums can run across a K-quant super-block before one conversion to f32.
//!
//! Numerics (the tolerance `tests/quant.rs` checks): the integer products and their sums
//! are exact; the only new error is the activations' rounding to 8 bits, at most `dx / 2`
//! per value (`dx = max |x| / 127` of its 32-value block), so `|y - W x| <= sum_i |w_i| *
//! dx_i / 2` plus f32 rounding — about 0.3% of a typical dot product, far below the
//! weights' own 4-6-bit quantization error.

use bytemuck::{Pod, Zeroable};

use super::*;

/// Values per activation block (and per weight chunk).
pub const Q8_LEN: usize = 32;

/// 32 activations quantized to 8 bits: `x[l] ≈ d * qs[l]`, `qs` in [-127, 127].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ8 {
    /// Scale: max |x| / 127 over the block (0 for an all-zero block).
    pub d: f32,
    /// `d * sum(qs)`: the block's sum, for the weight formats with an offset (`w = d q + m`).
    pub sum: f32,
    /// (32,) i8: the quantized values, in order.
    pub qs: [i8; Q8_LEN],
}
const _: () = assert!(std::mem::size_of::<BlockQ8>() == 40);

/// Quantize `x` (a multiple of 32 values) into `out` (x.len() / 32 blocks): round to
/// nearest, ties away from zero, as ggml's `quantize_row_q8_0` (which stores `d` as f16;
/// we keep f32, it costs nothing here).
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (x, out) in x.chunks_exact(Q8_LEN).zip(out) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in out.qs.iter_mut().zip(x) {
            // |v * inv| <= 127 (up to rounding, which `as` saturates); NaN becomes 0.
            *q = (v * inv).round() as i8;
            sum += *q as i32;
        }
        out.d = d;
        out.sum = d * sum as f32;
    }
}

/// A 32-weight chunk in integer form: `w[l] = d[l / 16] * q[l] + m`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IntChunk {
    /// (32,) i8: the weights' integers, offset removed where the format has a fixed one
    /// (Q4_0's 8, Q5_0's 16, Q6_K's 32).
    pub q: [i8; Q8_LEN],
    /// Scale of weights 0..16 and 16..32 (equal except for Q6_K's 16-weight groups).
    pub d: [f32; 2],
    /// Offset of every weight (Q4_1/Q5_1's min, minus Q4_K/Q5_K's scaled min; else 0).
    pub m: f32,
}

/// A block format that unpacks to [`IntChunk`]s. `int_chunk` computes the same scales and
/// offsets as the format's `dequantize_chunk` (the reference): `d * q + m` there is
/// `w` here before rounding.
pub(crate) trait IntBlock: QuantBlock {
    /// Chunks per block.
    const CHUNKS: usize = Self::LEN / Q8_LEN;
    /// Chunk `i` (< CHUNKS) of the block; `D` converts its f16 scales.
    fn int_chunk<D: IntDot>(&self, i: usize) -> IntChunk;
}

/// Byte j (of 32) of a 4-bit format: the low nibble of `qs[j]` for j < 16, the high nibble
/// of `qs[j - 16]` after.
#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0x0f;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

/// Q5_0/Q5_1's fifth bits: bit j of little-endian `qh` as 16 for weight j. Written as a
/// byte test against a per-lane mask (not a shift by the lane index), which vectorizes.
#[inline(always)]
fn fifth_bits(qh: &[u8; 4]) -> [u8; 32] {
    let mut h = [0u8; 32];
    for j in 0..32 {
        h[j] = if qh[j / 8] & (1 << (j % 8)) != 0 { 16 } else { 0 };
    }
    h
}

/// `q[l] - offset` as i8; every format's integers fit (at most 6 bits before the offset).
#[inline(always)]
fn offset_by(q: [u8; 32], offset: u8) -> [i8; 32] {
    let mut out = [0i8; 32];
    for l in 0..32 {
        out[l] = q[l].wrapping_sub(offset) as i8;
    }
    out
}

impl IntBlock for BlockQ4_0 {
    #[inline(always)]
    fn int_chunk<D: IntDot>(&self, _: usize) -> IntChunk {
        let d = D::f16(self.d);
        IntChunk { q: offset_by(nibbles(&self.qs), 8), d: [d, d], m: 0.0 }
    }
}

impl IntBlock for BlockQ4_1 {
    #[inline(always)]
    fn int_chunk<D: IntDot>(&self, _: usize) -> IntChunk {
        let d = D::f16(self.d);
        IntChunk { q: offset_by(nibbles(&self.qs), 0), d: [d, d], m: D::f16(self.m) }
    }
}

/// Q5_0/Q5_1 quants: the low nibbles with each weight's fifth bit on top, 0..=31.
#[inline(always)]
fn five_bits(qs: &[u8; 16], qh: &[u8; 4]) -> [u8; 32] {
    let (lo, hi) = (nibbles(qs), fifth_bits(qh));
    std::array::from_fn(|l| lo[l] | hi[l])
}

impl IntBlock for BlockQ5_0 {
    #[inline(always)]
    fn int_chunk<D: IntDot>(&self, _: usize) -> IntChunk {
        let q = five_bits(&self.qs, &self.qh);
        let d = D::f16(self.d);
        IntChunk { q: offset_by(q, 16), d: [d, d], m: 0.0 }
    }
}

impl IntBlock for BlockQ5_1 {
    #[inline(always)]
    fn int_chunk<D: IntDot>(&self, _: usize) -> IntChunk {
        let q = five_bits(&self.qs, &self.qh);
        let d = D::f16(self.d);
        IntChunk { q: offset_by(q, 0), d: [d, d], m: D::f16(self.m) }
    }
}

impl IntBlock for BlockQ8_0 {
    #[inline(always)]
    fn int_chunk<D: IntDot>(&self, _: usize) -> IntChunk {
        let d = D::f16(self.d);
        IntChunk { q: self.qs, d: [d, d], m: 0.0 }
    }
}

/// Q4_K/Q5_K sub-block `s`: scale `d * scale_s`, offset `-(dmin * min_s)`, as the reference.
#[inline(always)]
fn k_scales<D: IntDot>(d: f16, dmin: f16, scales: &[u8; 12], s: usize) -> ([f32; 2], f32) {
    let (scale, min) = k_scale_min(s, scales);
    let d = D::f16(d) * scale as f32;
    ([d, d], -(D::f16(dmin) * min as f32))
}

impl IntBlock for BlockQ4_K {
    #[inline(always)]
    fn int_chunk<D: IntDot>(&self, s: usize) -> IntChunk {
        let qs = &self.qs[32 * (s / 2)..32 * (s / 2) + 32];
        let shift = 4 * (s % 2);
        let mut q = [0u8; 32];
        for l in 0..32 {
            q[l] = (qs[l] >> shift) & 0x0f;
        }
        let (d, m) = k_scales::<D>(self.d, self.dmin, &self.scales, s);
        IntChunk { q: offset_by(q, 0), d, m }
    }
}

impl IntBlock for BlockQ5_K {
    #[inline(always)]
    fn int_chunk<D: IntDot>(&self, s: usize) -> IntChunk {
        let qs = &self.qs[32 * (s / 2)..32 * (s / 2) + 32];
        let shift = 4 * (s % 2);
        let mut q = [0u8; 32];
        for l in 0..32 {
            q[l] = ((qs[l] >> shift) & 0x0f) | (((self.qh[l] >> s) & 1) << 4);
        }
        let (d, m) = k_scales::<D>(self.d, self.dmin, &self.scales, s);
        IntChunk { q: offset_by(q, 0), d, m }
    }
}

impl IntBlock for BlockQ6_K {
    #[inline(always)]
    fn int_chunk<D: IntDot>(&self, i: usize) -> IntChunk {
        // Layout as in `BlockQ6_K::dequantize_chunk`.
        let (h, k) = (i / 4, i % 4);
        let ql = &self.ql[64 * h + 32 * (k % 2)..64 * h + 32 * (k % 2) + 32];
        let qh = &self.qh[32 * h..32 * h + 32];
        let (shift_l, shift_h) = (4 * (k / 2), 2 * k);
        let mut q = [0u8; 32];
        for l in 0..32 {
            q[l] = ((ql[l] >> shift_l) & 0x0f) | (((qh[l] >> shift_h) & 3) << 4);
        }
        let d = D::f16(self.d);
        let d = [d * self.scales[2 * i] as f32, d * self.scales[2 * i + 1] as f32];
        IntChunk { q: offset_by(q, 32), d, m: 0.0 }
    }
}

// ======================================================================================
// The inner product, per instruction set
// ======================================================================================

/// The one instruction-set-specific piece: `acc + d[0] * sum_{l<16} q[l] x[l] + d[1] *
/// sum_{l>=16} q[l] x[l]`, with the integer sums exact. `Acc` is whatever the target keeps
/// partial sums in (a vector of f32 lanes), reduced once per row by `sum`.
pub(crate) trait IntDot {
    type Acc: Copy;
    fn zero() -> Self::Acc;
    /// f16 → f32, exactly (the value of [`f16_to_f32`]).
    #[inline(always)]
    fn f16(h: f16) -> f32 {
        f16_to_f32(h)
    }
    /// # Safety
    /// The CPU must have the instruction set the implementation is written for.
    unsafe fn dot_add(acc: Self::Acc, q: &[i8; 32], x: &[i8; 32], d: [f32; 2]) -> Self::Acc;
    /// # Safety
    /// As for `dot_add`.
    unsafe fn sum(acc: Self::Acc) -> f32;
}

/// Plain integer loops: any target (LLVM widens them where it can).
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
pub(crate) struct Portable;

#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
impl IntDot for Portable {
    type Acc = f32;
    fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn dot_add(acc: f32, q: &[i8; 32], x: &[i8; 32], d: [f32; 2]) -> f32 {
        let mut s = [0i32; 2];
        for (h, s) in s.iter_mut().enumerate() {
            for l in 16 * h..16 * h + 16 {
                *s += q[l] as i32 * x[l] as i32;
            }
        }
        acc + d[0] * s[0] as f32 + d[1] * s[1] as f32
    }
    #[inline(always)]
    unsafe fn sum(acc: f32) -> f32 {
        acc
    }
}

/// AVX2: `vpmaddubsw` multiplies unsigned by signed bytes and adds pairs to i16, so the
/// signs move onto x (`|q| * sign(q) x`, llama.cpp's trick); `vpmaddwd` with ones adds
/// pairs to i32. No i16 can saturate: |q| <= 128 and |x| <= 127, 2 * 128 * 127 < 2^15.
/// i32 lanes 0..4 hold weights 0..16, lanes 4..8 weights 16..32: one f32 scale per half.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl IntDot for Avx2 {
    type Acc = std::arch::x86_64::__m256;
    #[inline(always)]
    fn zero() -> Self::Acc {
        // SAFETY: AVX is implied by the AVX2 every caller of this type checks for.
        unsafe { std::arch::x86_64::_mm256_setzero_ps() }
    }
    /// F16C: one instruction instead of `f16_to_f32`'s dozen scalar ones.
    #[inline(always)]
    fn f16(h: f16) -> f32 {
        use std::arch::x86_64::*;
        // SAFETY: F16C is checked with AVX2 by every caller of this type.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32))) }
    }
    #[inline(always)]
    unsafe fn dot_add(acc: Self::Acc, q: &[i8; 32], x: &[i8; 32], d: [f32; 2]) -> Self::Acc {
        use std::arch::x86_64::*;
        // Two 16-byte loads: the unpacking may have written `q` as two halves, and a
        // 32-byte load of two 16-byte stores would stall on store forwarding.
        let q = _mm256_loadu2_m128i(q.as_ptr().add(16).cast(), q.as_ptr().cast());
        let x = _mm256_loadu_si256(x.as_ptr().cast());
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
        let sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        let scale = _mm256_setr_m128(_mm_set1_ps(d[0]), _mm_set1_ps(d[1]));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc)
    }
    #[inline(always)]
    unsafe fn sum(v: Self::Acc) -> f32 {
        use std::arch::x86_64::*;
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// wasm simd128: bytes widened to i16, then `i32x4.dot_i16x8_s` (pairwise products added
/// to i32). No FMA in simd128: a multiply and an add.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) struct Simd128;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl IntDot for Simd128 {
    type Acc = std::arch::wasm32::v128;
    #[inline(always)]
    fn zero() -> Self::Acc {
        std::arch::wasm32::f32x4_splat(0.0)
    }
    #[inline(always)]
    unsafe fn dot_add(acc: Self::Acc, q: &[i8; 32], x: &[i8; 32], d: [f32; 2]) -> Self::Acc {
        use std::arch::wasm32::*;
        let half = |h: usize| {
            let q = v128_load(q.as_ptr().add(16 * h).cast());
            let x = v128_load(x.as_ptr().add(16 * h).cast());
            let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(q), i16x8_extend_low_i8x16(x));
            let hi = i32x4_dot_i16x8(i16x8_extend_high_i8x16(q), i16x8_extend_high_i8x16(x));
            f32x4_convert_i32x4(i32x4_add(lo, hi))
        };
        let acc = f32x4_add(acc, f32x4_mul(half(0), f32x4_splat(d[0])));
        f32x4_add(acc, f32x4_mul(half(1), f32x4_splat(d[1])))
    }
    #[inline(always)]
    unsafe fn sum(v: Self::Acc) -> f32 {
        use std::arch::wasm32::*;
        (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v)) + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
    }
}

// ======================================================================================
// The block-dot kernel and the row loops
// ======================================================================================

/// Chunk `k` of a row of blocks. (A function, not a closure passed to [`dot_row`]:
/// closures do not inherit the `#[target_feature]`s of the function they are written in,
/// and were not inlined.)
#[inline(always)]
fn row_chunk<B: IntBlock, D: IntDot>(row: &[B], k: usize) -> IntChunk {
    row[k / B::CHUNKS].int_chunk::<D>(k % B::CHUNKS)
}

/// `sum_k chunk(k) . x[k]` over a row of blocks (`x.len()` chunks): THE kernel every format
/// and instruction set runs. Two accumulators alternate so that consecutive chunks' adds do
/// not wait on each other; the offsets take `m * sum(x)` per chunk.
#[inline(always)]
unsafe fn dot_row<B: IntBlock, D: IntDot>(x: &[BlockQ8], row: &[B]) -> f32 {
    let (mut acc0, mut acc1) = (D::zero(), D::zero());
    let (mut offsets0, mut offsets1) = (0.0f32, 0.0f32);
    let pairs = x.len() / 2;
    for p in 0..pairs {
        let (k0, k1) = (2 * p, 2 * p + 1);
        let (c0, c1) = (row_chunk::<B, D>(row, k0), row_chunk::<B, D>(row, k1));
        let (x0, x1) = (&x[k0], &x[k1]);
        acc0 = D::dot_add(acc0, &c0.q, &x0.qs, [c0.d[0] * x0.d, c0.d[1] * x0.d]);
        acc1 = D::dot_add(acc1, &c1.q, &x1.qs, [c1.d[0] * x1.d, c1.d[1] * x1.d]);
        offsets0 += c0.m * x0.sum;
        offsets1 += c1.m * x1.sum;
    }
    if x.len() % 2 == 1 {
        let k = x.len() - 1;
        let (c, xk) = (row_chunk::<B, D>(row, k), &x[k]);
        acc0 = D::dot_add(acc0, &c.q, &xk.qs, [c.d[0] * xk.d, c.d[1] * xk.d]);
        offsets0 += c.m * xk.sum;
    }
    (D::sum(acc0) + D::sum(acc1)) + (offsets0 + offsets1)
}

/// `y[i] = W[row0 + i, :] . x` for a quantized W; x: (cols / 32,) blocks.
#[inline(always)]
unsafe fn matvec_rows_impl<D: IntDot>(w: &QMatrix, row0: usize, x: &[BlockQ8], y: &mut [f32]) {
    match_block_type!(w.ty,
        B => {
            let per_row = w.cols / B::LEN;
            if let Some(blocks) = w.blocks::<B>() {
                let blocks = &blocks[row0 * per_row..(row0 + y.len()) * per_row];
                for (row, y) in blocks.chunks_exact(per_row).zip(y) {
                    *y = dot_row::<B, D>(x, row);
                }
            }
        },
        dense => {})
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    // `unsafe fn`: safe `#[target_feature]` functions need Rust 1.86 (MSRV is 1.85).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn matvec_rows(w: &QMatrix, row0: usize, x: &[BlockQ8], y: &mut [f32]) {
        matvec_rows_impl::<Avx2>(w, row0, x, y)
    }
}

/// The portable instruction set of this build: simd128 on wasm32 when the module is built
/// with it (`.cargo/config.toml` does), plain integers elsewhere.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
type Baseline = Simd128;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
type Baseline = Portable;

/// [`matvec_rows_impl`] on the best instruction set the CPU has.
pub(super) fn matvec_rows(w: &QMatrix, row0: usize, x: &[BlockQ8], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if kernels::has_avx2_fma() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        return unsafe { avx2::matvec_rows(w, row0, x, y) };
    }
    // SAFETY: `Baseline` needs nothing past what this build targets.
    unsafe { matvec_rows_impl::<Baseline>(w, row0, x, y) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set's kernel against the portable one on random blocks of every
    /// format: the integer sums are exact in both, so they differ only in the order of the
    /// f32 sums (and fused multiply-adds): a few roundings of `sum |w x|`.
    #[test]
    fn instruction_sets_agree_with_the_portable_kernel() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let (rows, cols) = (7, 768);
            let mut data = AlignedBytes::zeroed(rows * cols / ty.block_len() * ty.block_bytes());
            // Every f16 (scales, mins) sits at an even offset (block sizes are even), so its
            // high byte is odd: clearing bit 6 there keeps its exponent below 31 (finite).
            for (i, b) in data.as_mut_slice().iter_mut().enumerate() {
                *b = next() as u8 & if i % 2 == 1 { 0xbf } else { 0xff };
            }
            let w = QMatrix::new(ty, rows, cols, data).expect("matrix");
            let x: Vec<f32> = (0..cols).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
            let mut xq = vec![BlockQ8::default(); cols / Q8_LEN];
            quantize_q8(&x, &mut xq);
            let mut portable = vec![0.0f32; rows];
            // SAFETY: the portable kernel needs no CPU feature.
            unsafe { matvec_rows_impl::<Portable>(&w, 0, &xq, &mut portable) };
            let mut best = vec![0.0f32; rows];
            matvec_rows(&w, 0, &xq, &mut best);
            let mut row = vec![0.0f32; cols];
            for r in 0..rows {
                w.dequantize_row(r, &mut row).expect("row");
                let scale: f64 = row
                    .iter()
                    .zip(xq.iter().flat_map(|b| b.qs.iter().map(move |&q| b.d * q as f32)))
                    .map(|(&w, x)| (w as f64 * x as f64).abs())
                    .sum();
                let err = (portable[r] as f64 - best[r] as f64).abs();
                assert!(err <= 1e-5 * scale, "{ty:?} row {r}: {} vs portable {} (sum |w x| {scale:e})", best[r], portable[r]);
            }
        }
    }
}
