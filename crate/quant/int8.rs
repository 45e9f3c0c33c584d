//! 8-bit activations with integer dot products: the CPU backend's int8 kernels
//! ([`CpuKernels::Int8`]), for decode (one activation row) and prefill (many) alike.
//!
//! The idea is llama.cpp's (ggml-cpu's `quantize_row_q8_0` / `quantize_row_q8_K` +
//! `vec_dot_*`): quantize the activations once per matrix product, then multiply integer
//! weights by integer activations and apply the scales once per block of products instead
//! of once per product. Two activation schemes, one per weight family, as llama.cpp:
//! - 32-value weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): activations in 32-value blocks
//!   with an f32 scale and sum ([`BlockQ8`]); each 32-product integer dot is converted to
//!   f32 and scaled by `d_w * d_x` (the weight's own scale is per 32 values anyway). The
//!   offsets (`w = d q + m`; Q4_0's and Q5_0's fixed 8 and 16 are offsets here too, so all
//!   these weights but Q8_0's are unsigned bytes) add `m * sum(x)` per block.
//! - K-quants (Q4_K, Q5_K, Q6_K): activations in 256-value blocks with one scale
//!   ([`BlockQ8K`], llama.cpp's Q8_K), so the sub-block scales (6- or 8-bit integers) are
//!   applied in integer arithmetic and a whole super-block's sum is exact; it is converted to
//!   f32 once per 256 products. The mins (and Q6_K's fixed 32) take the activation
//!   block's integer sums per 16 values.
//!
//! One kernel per family for every format and both uses. Each format only says how its
//! blocks unpack to the family's integer form ([`Block32::unpack`], [`BlockK::unpack`]);
//! the instruction-set-specific pieces are inner products of 32 bytes ([`IntDot`]: AVX2
//! `vpmaddubsw`/`vpmaddwd`, wasm simd128 `i32x4.dot_i16x8_s` or relaxed SIMD's
//! `i16x8.relaxed_dot_i8x16_i7x16_s` for the K-quants, a portable fallback).
//!
//! Batching cannot change a result: [`rows_q8`] / [`rows_q8k`] unpack a weight row once
//! and take its dot product with every activation row (that reuse is the prefill's speed),
//! and each (weight row, activation row) pair runs the same operations in the same order
//! whether it is alone (decode) or one of many, on whichever thread (the order is written
//! out at `rows_32` and [`dot_k`]). So a token's result is the same computed alone or in a
//! prompt, and a cached prefix reproduces a fresh one.
//!
//! Speed (1 thread, x86_64 AVX2, against the f32 tiles): an earlier batched kernel, the
//! mat-vec's per-chunk work (sign fix-up, scale multiply, offset) run per activation row,
//! measured 1.5x slower than the f32 tiles in prefill. What makes this one as fast or
//! faster: the K-quants sum a super-block in integers; the 32-value formats take unsigned
//! weights (no sign fix-up), compute `d_w * d_x` and the offsets of one weight row for
//! all its activation rows at once, reading the activations' scales and sums column by
//! column ([`Q8Rows`]), and four activation rows share each unpacked weight chunk (K-quants
//! too, with their four integer totals reduced together). In decode (one activation row)
//! weights are unpacked in registers ([`IntDot::Q`]) and used at once: going through a
//! 32-byte array cost a store-forwarding stall per chunk (two 16-byte stores, one 32-byte
//! load). With VNNI (x86: AVX512-VNNI or AVX-VNNI) one `vpdpbusd` replaces two
//! instructions per chunk. `cargo run --release --example quant_bench -- --int8` measures
//! the kernels on Qwen2.5-0.5B's shapes.
//!
//! Numerics (the tolerance `tests/quant.rs` checks): the integer products and their sums
//! are exact; the only new error is the activations' rounding to 8 bits, at most `dx / 2`
//! per value (`dx = max |x| / 127` of its 32- or 256-value block), so `|y - W x| <= sum_i
//! |w_i| * dx_i / 2` plus f32 rounding — about 1% of a typical dot product, below the
//! weights' own 4-6-bit quantization error. For K-quants the f32 arithmetic after the exact
//! integer sums is scalar and the same on every instruction set, so AVX2, simd128 and the
//! portable code agree bit for bit; the 32-value formats sum their per-block products in
//! the vector lanes of each instruction set, which differ from the portable order by a few
//! f32 roundings.

use bytemuck::{Pod, Zeroable};

use super::*;

/// Values per activation block of the 32-value weight formats (and per weight chunk).
pub const Q8_LEN: usize = 32;

/// Values per activation block of the K-quants (one super-block).
pub const Q8K_LEN: usize = 256;

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

/// 256 activations quantized to 8 bits with one scale (llama.cpp's `block_q8_K`):
/// `x[32 c + l] ≈ d * qs[c][l]`, `qs` in [-127, 127].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale: max |x| / 127 over the 256 values (0 for an all-zero block).
    pub d: f32,
    /// (8, 32) i8: the quantized values, in order.
    pub qs: [[i8; Q8_LEN]; 8],
    /// (16,) i16: `bsums[g]` = the sum of `qs` over values 16 g .. 16 g + 16 (|.| <= 2032).
    pub bsums: [i16; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl Default for BlockQ8K {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// Round `x` to `d * q` for d = max |x| / 127: nearest, ties away from zero, as ggml's
/// `quantize_row_q8_0` (which stores `d` as f16; we keep f32, it costs nothing here).
/// Returns d.
#[inline(always)]
fn quantize_block(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v * inv| <= 127 (up to rounding, which saturates); NaN becomes 0.
        *q = round_i8(v * inv);
    }
    d
}

/// `r.round() as i8` (half away from zero, saturating, NaN to 0) in operations that
/// vectorize: `round` is a libm call on baseline x86_64 (2% of a prefill). The clamp keeps
/// the integer part in i8 range and leaves NaN, which `as` makes 0 and no comparison
/// takes; r - t is exact (|r| < 2^23).
#[inline(always)]
fn round_i8(r: f32) -> i8 {
    let r = r.clamp(-128.0, 127.0);
    let t = r as i32;
    let f = r - t as f32;
    (t + i32::from(f >= 0.5) - i32::from(f <= -0.5)) as i8
}

/// Quantize `x` (a multiple of 32 values) into `out` (x.len() / 32 blocks).
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (x, out) in x.chunks_exact(Q8_LEN).zip(out) {
        out.d = quantize_block(x, &mut out.qs);
        out.sum = out.d * out.qs.iter().map(|&q| q as i32).sum::<i32>() as f32;
    }
}

/// Quantize `x` (a multiple of 256 values) into `out` (x.len() / 256 blocks).
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (x, out) in x.chunks_exact(Q8K_LEN).zip(out) {
        let mut qs = [0i8; Q8K_LEN];
        out.d = quantize_block(x, &mut qs);
        for (dst, src) in out.qs.iter_mut().zip(qs.chunks_exact(Q8_LEN)) {
            dst.copy_from_slice(src);
        }
        for (s, g) in out.bsums.iter_mut().zip(qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
    }
}

/// Activations (n, cols) quantized for the 32-value weight formats, laid out for the
/// kernel: the quants by row, the scales and sums by column (chunk k of every row
/// together), which a weight row's scale and offset multiply all at once.
pub struct Q8Rows {
    /// Rows.
    n: usize,
    /// (n, cols / 32) blocks of 32 quants.
    qs: Vec<[i8; Q8_LEN]>,
    /// (cols / 32, n) f32 scales.
    d: Vec<f32>,
    /// (cols / 32, n) f32 sums, `d * sum(qs)`.
    sum: Vec<f32>,
}

impl Q8Rows {
    /// `x` (n, cols), cols a multiple of 32 (any rest is ignored).
    pub fn new(x: &[f32], cols: usize) -> Self {
        let chunks = cols / Q8_LEN;
        let n = x.len().checked_div(cols).unwrap_or(0);
        let mut out = Self { n, qs: Vec::with_capacity(n * chunks), d: vec![0.0; n * chunks], sum: vec![0.0; n * chunks] };
        let mut block = BlockQ8::default();
        for (j, row) in x.chunks_exact(cols.max(1)).take(n).enumerate() {
            for (k, x) in row.chunks_exact(Q8_LEN).enumerate() {
                quantize_q8(x, std::slice::from_mut(&mut block));
                out.qs.push(block.qs);
                out.d[k * n + j] = block.d;
                out.sum[k * n + j] = block.sum;
            }
        }
        out
    }
}

/// Activations (n, cols) quantized for the K-quants: (n, cols / 256) blocks.
pub struct Q8KRows {
    /// (n, cols / 256) blocks.
    blocks: Vec<BlockQ8K>,
}

impl Q8KRows {
    /// `x` (n, cols), cols a multiple of 256 (any rest is ignored).
    pub fn new(x: &[f32], cols: usize) -> Self {
        let blocks_per_row = cols / Q8K_LEN;
        let n = x.len().checked_div(cols).unwrap_or(0);
        let mut blocks = vec![BlockQ8K::default(); n * blocks_per_row];
        if blocks_per_row > 0 {
            for (row, out) in x.chunks_exact(cols).zip(blocks.chunks_exact_mut(blocks_per_row)) {
                quantize_q8k(row, out);
            }
        }
        Self { blocks }
    }
}

// ======================================================================================
// Weights in integer form
// ======================================================================================

/// A 32-weight block format: `w[l] = d * q[l] + m`, q unsigned (or, for [`Self::SIGNED`]
/// formats, the bytes of a signed q). `unpack` computes the same scales and offsets as the
/// format's `dequantize_chunk` (the reference) up to where the fixed offset is applied.
pub(crate) trait Block32: QuantBlock {
    /// q is signed (Q8_0): the AVX2 kernel moves its signs onto x first.
    const SIGNED: bool = false;
    /// `m` can be nonzero: the kernel adds `m * sum(x)` per block.
    const OFFSET: bool = true;
    /// (q, d, m), q in `D`'s register form; `D` converts the f16 scales.
    ///
    /// # Safety
    /// The CPU must have `D`'s instruction set.
    unsafe fn unpack<D: IntDot>(&self) -> (D::Q, f32, f32);
}

/// Byte j (of 32) of a 4-bit format: the low nibble of `qs[j]` for j < 16, the high nibble
/// of `qs[j - 16]` after.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
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
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
#[inline(always)]
fn fifth_bits(qh: &[u8; 4]) -> [u8; 32] {
    let mut h = [0u8; 32];
    for j in 0..32 {
        h[j] = if qh[j / 8] & (1 << (j % 8)) != 0 { 16 } else { 0 };
    }
    h
}

impl Block32 for BlockQ4_0 {
    /// `d (q - 8) = d q - 8 d` (`8 d` is exact).
    #[inline(always)]
    unsafe fn unpack<D: IntDot>(&self) -> (D::Q, f32, f32) {
        let d = D::f16(self.d);
        (D::nibbles(&self.qs), d, -8.0 * d)
    }
}

impl Block32 for BlockQ4_1 {
    #[inline(always)]
    unsafe fn unpack<D: IntDot>(&self) -> (D::Q, f32, f32) {
        (D::nibbles(&self.qs), D::f16(self.d), D::f16(self.m))
    }
}

impl Block32 for BlockQ5_0 {
    /// `d (q - 16) = d q - 16 d` (`16 d` is exact).
    #[inline(always)]
    unsafe fn unpack<D: IntDot>(&self) -> (D::Q, f32, f32) {
        let d = D::f16(self.d);
        (D::with_fifth_bits(D::nibbles(&self.qs), &self.qh), d, -16.0 * d)
    }
}

impl Block32 for BlockQ5_1 {
    #[inline(always)]
    unsafe fn unpack<D: IntDot>(&self) -> (D::Q, f32, f32) {
        (D::with_fifth_bits(D::nibbles(&self.qs), &self.qh), D::f16(self.d), D::f16(self.m))
    }
}

impl Block32 for BlockQ8_0 {
    const SIGNED: bool = true;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn unpack<D: IntDot>(&self) -> (D::Q, f32, f32) {
        (D::load(bytemuck::cast_ref(&self.qs)), D::f16(self.d), 0.0)
    }
}

/// A K-quant super-block's scales in integer form: `w[32 c + l] = d * s[c][l / 16] * q[c][l]
/// + dm * m[(32 c + l) / 16]`, q unsigned (<= 63): one scale per 16 weights.
#[derive(Clone, Copy, Default)]
pub(crate) struct KScales {
    /// (8, 2) i16: chunk c's scales for its two halves.
    pub s: [[i16; 2]; 8],
    /// (16,) i16: the offset's integer factor per 16 weights.
    pub m: [i16; 16],
    pub d: f32,
    pub dm: f32,
}

/// A K-quant super-block in integer form: the quants of its 8 chunks, their scales in the
/// form [`IntDot::idot_add`] takes, and [`KScales`].
pub(crate) struct KUnpacked<D: IntDot> {
    /// (8, 32) u8.
    pub q: [[u8; Q8_LEN]; 8],
    pub s: [D::S; 8],
    pub sc: KScales,
}

impl<D: IntDot> KUnpacked<D> {
    /// # Safety
    /// The CPU must have `D`'s instruction set.
    unsafe fn new() -> Self {
        Self { q: [[0; Q8_LEN]; 8], s: [D::scale_pair([0, 0]); 8], sc: KScales::default() }
    }
}

/// A K-quant block format (256 weights). The same scales and offsets as the format's
/// `dequantize_chunk`, factored into integer and f32 parts.
pub(crate) trait BlockK: QuantBlock {
    /// The scales; `D` converts the f16 ones.
    fn scales<D: IntDot>(&self, out: &mut KScales);
    /// The quants of chunk `c` (of 8), in `D`'s register form.
    ///
    /// # Safety
    /// The CPU must have `D`'s instruction set.
    unsafe fn quants<D: IntDot>(&self, c: usize) -> D::Q;
    /// The whole block into `out`.
    ///
    /// # Safety
    /// As for `quants`.
    #[inline(always)]
    unsafe fn unpack<D: IntDot>(&self, out: &mut KUnpacked<D>) {
        for (c, q) in out.q.iter_mut().enumerate() {
            *q = D::store(self.quants::<D>(c));
        }
        self.scales::<D>(&mut out.sc);
        for (s, &pair) in out.s.iter_mut().zip(&out.sc.s) {
            *s = D::scale_pair(pair);
        }
    }
}

/// Q4_K/Q5_K: sub-block c has scale `d * scale_c` and offset `-(dmin * min_c)`.
#[inline(always)]
fn k_scales(scales: &[u8; 12], out: &mut KScales) {
    for c in 0..8 {
        let (scale, min) = k_scale_min(c, scales);
        out.s[c] = [scale as i16; 2];
        out.m[2 * c] = min as i16;
        out.m[2 * c + 1] = min as i16;
    }
}

/// Bytes `32 (c / 2) ..` of a Q4_K/Q5_K `qs`: chunk c's nibbles (low for even c).
#[inline(always)]
fn k_nibble_bytes(qs: &[u8; 128], c: usize) -> &[u8; 32] {
    let start = 32 * (c / 2 % 4);
    qs[start..start + 32].try_into().unwrap_or(&[0; 32])
}

impl BlockK for BlockQ4_K {
    #[inline(always)]
    fn scales<D: IntDot>(&self, out: &mut KScales) {
        k_scales(&self.scales, out);
        out.d = D::f16(self.d);
        out.dm = -D::f16(self.dmin);
    }
    #[inline(always)]
    unsafe fn quants<D: IntDot>(&self, c: usize) -> D::Q {
        D::bits(k_nibble_bytes(&self.qs, c), 4 * (c as u32 % 2), 0x0f)
    }
}

impl BlockK for BlockQ5_K {
    #[inline(always)]
    fn scales<D: IntDot>(&self, out: &mut KScales) {
        k_scales(&self.scales, out);
        out.d = D::f16(self.d);
        out.dm = -D::f16(self.dmin);
    }
    #[inline(always)]
    unsafe fn quants<D: IntDot>(&self, c: usize) -> D::Q {
        let q = D::bits(k_nibble_bytes(&self.qs, c), 4 * (c as u32 % 2), 0x0f);
        D::add_high_bits(q, &self.qh, c as u32 % 8, 1)
    }
}

impl BlockK for BlockQ6_K {
    /// `d * scale_g * (q - 32) = d * scale_g * q - 32 d * scale_g`: the offset's integer
    /// factor is the group's scale, its f32 factor `-32 d` (exact).
    #[inline(always)]
    fn scales<D: IntDot>(&self, out: &mut KScales) {
        for (s, pair) in out.s.iter_mut().zip(self.scales.chunks_exact(2)) {
            *s = [pair[0] as i16, pair[1] as i16];
        }
        for (m, &s) in out.m.iter_mut().zip(&self.scales) {
            *m = s as i16;
        }
        let d = D::f16(self.d);
        out.d = d;
        out.dm = -32.0 * d;
    }
    /// Layout as in `BlockQ6_K::dequantize_chunk`.
    #[inline(always)]
    unsafe fn quants<D: IntDot>(&self, c: usize) -> D::Q {
        let (h, k) = (c / 4 % 2, c % 4);
        let lo = 64 * h + 32 * (k % 2);
        let ql: &[u8; 32] = self.ql[lo..lo + 32].try_into().unwrap_or(&[0; 32]);
        let qh: &[u8; 32] = self.qh[32 * h..32 * h + 32].try_into().unwrap_or(&[0; 32]);
        let q = D::bits(ql, 4 * (k as u32 / 2), 0x0f);
        D::add_high_bits(q, qh, 2 * k as u32, 3)
    }
}

// ======================================================================================
// The inner products, per instruction set
// ======================================================================================

/// The instruction-set-specific pieces: inner products of 32 weight bytes with 32
/// activation bytes, with the integer sums exact.
pub(crate) trait IntDot {
    /// f32 partial sums (a vector of lanes), reduced once per row pair by `sum2`.
    type Acc: Copy;
    /// i32 partial sums, reduced once per super-block by `isum`.
    type IAcc: Copy;
    /// A 32-value weight chunk's 32 quant bytes, in a register where the instruction set
    /// has one wide enough (unpacking there saves a round trip through memory).
    type Q: Copy;
    /// A K-quant chunk's scales, as `idot_add` takes them.
    type S: Copy;
    /// Prefill's kernels take twice [`ROWS_32`] / [`ROWS_K`] activation rows per weight
    /// chunk load (AVX-512's 32 vector registers hold their accumulators): 7-11% more
    /// products per second on Zen 4. Each row's result is the same either way.
    const WIDE_ROWS: bool = false;
    fn zero() -> Self::Acc;
    fn izero() -> Self::IAcc;
    /// f16 → f32, exactly (the value of [`f16_to_f32`]).
    #[inline(always)]
    fn f16(h: f16) -> f32 {
        f16_to_f32(h)
    }
    /// 32 quant bytes.
    ///
    /// # Safety
    /// The CPU must have the instruction set the implementation is written for.
    unsafe fn load(q: &[u8; 32]) -> Self::Q;
    /// The bytes of `q`.
    ///
    /// # Safety
    /// As for `load`.
    unsafe fn store(q: Self::Q) -> [u8; 32];
    /// The quants of a 4-bit format: byte j is the low nibble of `qs[j]` for j < 16, the high
    /// nibble of `qs[j - 16]` after (as [`nibbles`]).
    ///
    /// # Safety
    /// As for `load`.
    unsafe fn nibbles(qs: &[u8; 16]) -> Self::Q;
    /// Q5_0/Q5_1: `q` (nibbles) with bit j of little-endian `qh` added as 16 to byte j
    /// (as [`fifth_bits`]), 0..=31.
    ///
    /// # Safety
    /// As for `load`.
    unsafe fn with_fifth_bits(q: Self::Q, qh: &[u8; 4]) -> Self::Q;
    /// `(b[l] >> shift) & mask` for each byte (shift < 8, mask < 1 << (8 - shift)).
    ///
    /// # Safety
    /// As for `load`.
    unsafe fn bits(b: &[u8; 32], shift: u32, mask: u8) -> Self::Q;
    /// `q[l] | ((h[l] >> shift) & mask) << 4` for each byte (shift < 8, mask <= 3, q < 16).
    ///
    /// # Safety
    /// As for `load`.
    unsafe fn add_high_bits(q: Self::Q, h: &[u8; 32], shift: u32, mask: u8) -> Self::Q;
    /// `acc + d * sum_l q[l] x[l]`, q read as u8 (or as i8 when `SIGNED`).
    ///
    /// # Safety
    /// As for `load`.
    unsafe fn dot_add<const SIGNED: bool>(acc: Self::Acc, q: Self::Q, x: &[i8; 32], d: f32) -> Self::Acc;
    /// The total of two accumulators' lanes.
    ///
    /// # Safety
    /// As for `dot_add`.
    unsafe fn sum2(a: Self::Acc, b: Self::Acc) -> f32;
    /// A chunk's two scales ([`KScales::s`]) in the form `idot_add` takes.
    ///
    /// # Safety
    /// As for `dot_add`.
    unsafe fn scale_pair(s: [i16; 2]) -> Self::S;
    /// `acc + sum_l s[l / 16] q[l] x[l]`, q unsigned <= 63.
    ///
    /// # Safety
    /// As for `dot_add`.
    unsafe fn idot_add(acc: Self::IAcc, q: Self::Q, x: &[i8; 32], s: Self::S) -> Self::IAcc;
    /// `sum_g a[g] b[g]` as partial sums, exact (|.| <= 16 * 2^15 * 2032 < 2^31 for the
    /// offsets' factors and the activation sums).
    ///
    /// # Safety
    /// As for `dot_add`.
    unsafe fn ipairs(a: &[i16; 16], b: &[i16; 16]) -> Self::IAcc;
    /// [`IntDot::isum`] of four accumulators.
    ///
    /// # Safety
    /// As for `dot_add`.
    #[inline(always)]
    unsafe fn isum4(v: [Self::IAcc; 4]) -> [i32; 4] {
        v.map(|v| Self::isum(v))
    }
    /// The exact total of `acc`'s lanes (it fits an i32: see [`dot_k`]).
    ///
    /// # Safety
    /// As for `dot_add`.
    unsafe fn isum(acc: Self::IAcc) -> i32;
    /// [`dot_32`]'s loop over the pairs of chunks (chunks 2 p and 2 p + 1 into `acc[u][0]`
    /// and `acc[u][1]`), for an instruction set that does a pair at once with the same
    /// operations lane for lane; `None` (the default) where it has no such form.
    ///
    /// # Safety
    /// As for `dot_add`.
    #[inline(always)]
    unsafe fn dot_32_pairs<const J: usize>(
        signed: bool,
        q: &[[u8; Q8_LEN]],
        xq: &[[i8; Q8_LEN]],
        dd: &[f32],
        group: usize,
        t: usize,
    ) -> Option<[[Self::Acc; 2]; J]> {
        let _ = (signed, q, xq, dd, group, t);
        None
    }
}

/// Plain integer loops: any target (LLVM widens them where it can).
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
pub(crate) struct Portable;

#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
impl IntDot for Portable {
    type Acc = f32;
    type IAcc = i32;
    type Q = [u8; 32];
    type S = [i16; 2];
    fn zero() -> f32 {
        0.0
    }
    fn izero() -> i32 {
        0
    }
    #[inline(always)]
    unsafe fn load(q: &[u8; 32]) -> [u8; 32] {
        *q
    }
    #[inline(always)]
    unsafe fn store(q: [u8; 32]) -> [u8; 32] {
        q
    }
    #[inline(always)]
    unsafe fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
        nibbles(qs)
    }
    #[inline(always)]
    unsafe fn with_fifth_bits(q: [u8; 32], qh: &[u8; 4]) -> [u8; 32] {
        let h = fifth_bits(qh);
        std::array::from_fn(|l| q[l] | h[l])
    }
    #[inline(always)]
    unsafe fn bits(b: &[u8; 32], shift: u32, mask: u8) -> [u8; 32] {
        std::array::from_fn(|l| (b[l] >> shift) & mask)
    }
    #[inline(always)]
    unsafe fn add_high_bits(q: [u8; 32], h: &[u8; 32], shift: u32, mask: u8) -> [u8; 32] {
        std::array::from_fn(|l| q[l] | ((h[l] >> shift) & mask) << 4)
    }
    #[inline(always)]
    unsafe fn dot_add<const SIGNED: bool>(acc: f32, q: [u8; 32], x: &[i8; 32], d: f32) -> f32 {
        let mut s = 0i32;
        for l in 0..32 {
            let q = if SIGNED { q[l] as i8 as i32 } else { q[l] as i32 };
            s += q * x[l] as i32;
        }
        acc + d * s as f32
    }
    #[inline(always)]
    unsafe fn sum2(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn scale_pair(s: [i16; 2]) -> [i16; 2] {
        s
    }
    #[inline(always)]
    unsafe fn ipairs(a: &[i16; 16], b: &[i16; 16]) -> i32 {
        a.iter().zip(b).map(|(&a, &b)| a as i32 * b as i32).sum()
    }
    #[inline(always)]
    unsafe fn idot_add(acc: i32, q: [u8; 32], x: &[i8; 32], s: [i16; 2]) -> i32 {
        let mut total = acc;
        for k in 0..16 {
            let pair = q[2 * k] as i32 * x[2 * k] as i32 + q[2 * k + 1] as i32 * x[2 * k + 1] as i32;
            total += pair * s[k / 8] as i32;
        }
        total
    }
    #[inline(always)]
    unsafe fn isum(acc: i32) -> i32 {
        acc
    }
}

/// AVX2: `vpmaddubsw` multiplies unsigned by signed bytes and adds pairs to i16, `vpmaddwd`
/// multiplies those by i16 (ones, or the K-quants' scales) and adds pairs to i32. Signed
/// weights (Q8_0) move their signs onto x first (`|q| * sign(q) x`, llama.cpp's trick).
/// No i16 can saturate: |q| <= 128 and |x| <= 127, 2 * 128 * 127 < 2^15.
///
/// `VNNI` ([`NO_VNNI`], [`AVX_VNNI`], [`AVX512_VNNI`]): where the CPU has VNNI, `vpdpbusd`
/// multiplies bytes and adds fours to i32 in one instruction (instead of `vpmaddubsw` +
/// `vpmaddwd` by ones), and `vpdpwssd` multiplies i16 pairs and accumulates (instead of
/// `vpmaddwd` + `vpaddd`). The integer results are the same, so every variant gives the
/// same bits.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2<const VNNI: u8>;

/// [`Avx2`] without VNNI.
#[cfg(target_arch = "x86_64")]
pub(crate) const NO_VNNI: u8 = 0;
/// [`Avx2`] with AVX-VNNI (VEX encoded: Intel since Alder Lake, AMD since Zen 5).
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX_VNNI: u8 = 1;
/// [`Avx2`] with AVX512-VNNI on 256-bit registers (AVX512VL: Intel since Ice Lake, AMD Zen 4),
/// and prefill's pairs of 32-value chunks on 512-bit ones ([`dot_32_pairs_avx512`]).
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX512_VNNI: u8 = 2;

#[cfg(target_arch = "x86_64")]
impl<const VNNI: u8> Avx2<VNNI> {
    /// `acc + sum of each four `a[l] b[l]`` per i32 lane, a unsigned, b signed bytes.
    #[inline(always)]
    unsafe fn dot4(acc: std::arch::x86_64::__m256i, a: std::arch::x86_64::__m256i, b: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        match VNNI {
            AVX_VNNI => _mm256_dpbusd_avx_epi32(acc, a, b),
            AVX512_VNNI => _mm256_dpbusd_epi32(acc, a, b),
            _ => _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))),
        }
    }
    /// `acc + sum of each pair `a[l] b[l]`` per i32 lane, i16 values.
    #[inline(always)]
    unsafe fn dot2(acc: std::arch::x86_64::__m256i, a: std::arch::x86_64::__m256i, b: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        match VNNI {
            AVX_VNNI => _mm256_dpwssd_avx_epi32(acc, a, b),
            AVX512_VNNI => _mm256_dpwssd_epi32(acc, a, b),
            _ => _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)),
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl<const VNNI: u8> IntDot for Avx2<VNNI> {
    type Acc = std::arch::x86_64::__m256;
    type IAcc = std::arch::x86_64::__m256i;
    type Q = std::arch::x86_64::__m256i;
    type S = std::arch::x86_64::__m256i;
    const WIDE_ROWS: bool = VNNI == AVX512_VNNI;
    #[inline(always)]
    unsafe fn dot_32_pairs<const J: usize>(
        signed: bool,
        q: &[[u8; Q8_LEN]],
        xq: &[[i8; Q8_LEN]],
        dd: &[f32],
        group: usize,
        t: usize,
    ) -> Option<[[Self::Acc; 2]; J]> {
        if VNNI != AVX512_VNNI {
            return None;
        }
        Some(dot_32_pairs_avx512::<J>(signed, q, xq, dd, group, t))
    }
    #[inline(always)]
    fn zero() -> Self::Acc {
        // SAFETY: AVX is implied by the AVX2 every caller of this type checks for.
        unsafe { std::arch::x86_64::_mm256_setzero_ps() }
    }
    #[inline(always)]
    fn izero() -> Self::IAcc {
        // SAFETY: as for `zero`.
        unsafe { std::arch::x86_64::_mm256_setzero_si256() }
    }
    /// F16C: one instruction instead of `f16_to_f32`'s dozen scalar ones.
    #[inline(always)]
    fn f16(h: f16) -> f32 {
        use std::arch::x86_64::*;
        // SAFETY: F16C is checked with AVX2 by every caller of this type.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32))) }
    }
    #[inline(always)]
    unsafe fn load(q: &[u8; 32]) -> Self::Q {
        std::arch::x86_64::_mm256_loadu_si256(q.as_ptr().cast())
    }
    #[inline(always)]
    unsafe fn store(q: Self::Q) -> [u8; 32] {
        let mut out = [0u8; 32];
        std::arch::x86_64::_mm256_storeu_si256(out.as_mut_ptr().cast(), q);
        out
    }
    #[inline(always)]
    unsafe fn nibbles(qs: &[u8; 16]) -> Self::Q {
        use std::arch::x86_64::*;
        let b = _mm_loadu_si128(qs.as_ptr().cast());
        let low = _mm_set1_epi8(0x0f);
        // 16-bit shifts move the next byte's low bits in: masked off.
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(b), low), _mm_and_si128(b, low))
    }
    #[inline(always)]
    unsafe fn with_fifth_bits(q: Self::Q, qh: &[u8; 4]) -> Self::Q {
        use std::arch::x86_64::*;
        // Byte j takes qh[j / 8] (a shuffle of the broadcast word), keeps its bit j % 8,
        // and becomes 16 where that bit is set.
        let word = _mm256_set1_epi32(i32::from_le_bytes(*qh));
        let spread = _mm256_shuffle_epi8(word, _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303));
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(16)))
    }
    #[inline(always)]
    unsafe fn bits(b: &[u8; 32], shift: u32, mask: u8) -> Self::Q {
        use std::arch::x86_64::*;
        // A 16-bit shift moves the next byte's low bits in: the mask drops them.
        let v = _mm256_srl_epi16(_mm256_loadu_si256(b.as_ptr().cast()), _mm_cvtsi32_si128(shift as i32));
        _mm256_and_si256(v, _mm256_set1_epi8(mask as i8))
    }
    #[inline(always)]
    unsafe fn add_high_bits(q: Self::Q, h: &[u8; 32], shift: u32, mask: u8) -> Self::Q {
        use std::arch::x86_64::*;
        // (h >> shift) & mask <= 3 per byte: shifting the 16-bit lanes left by 4 keeps each
        // byte's bits in that byte.
        let high = _mm256_slli_epi16::<4>(Self::bits(h, shift, mask));
        _mm256_or_si256(q, high)
    }
    #[inline(always)]
    unsafe fn dot_add<const SIGNED: bool>(acc: Self::Acc, q: Self::Q, x: &[i8; 32], d: f32) -> Self::Acc {
        use std::arch::x86_64::*;
        let x = _mm256_loadu_si256(x.as_ptr().cast());
        let zero = _mm256_setzero_si256();
        let sums = if SIGNED { Self::dot4(zero, _mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q)) } else { Self::dot4(zero, q, x) };
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d), acc)
    }
    #[inline(always)]
    unsafe fn sum2(a: Self::Acc, b: Self::Acc) -> f32 {
        use std::arch::x86_64::*;
        let v = _mm256_add_ps(a, b);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn scale_pair(s: [i16; 2]) -> Self::S {
        use std::arch::x86_64::*;
        _mm256_set_m128i(_mm_set1_epi16(s[1]), _mm_set1_epi16(s[0]))
    }
    #[inline(always)]
    unsafe fn idot_add(acc: Self::IAcc, q: Self::Q, x: &[i8; 32], s: Self::S) -> Self::IAcc {
        use std::arch::x86_64::*;
        let x = _mm256_loadu_si256(x.as_ptr().cast());
        Self::dot2(acc, _mm256_maddubs_epi16(q, x), s)
    }
    #[inline(always)]
    unsafe fn ipairs(a: &[i16; 16], b: &[i16; 16]) -> Self::IAcc {
        use std::arch::x86_64::*;
        _mm256_madd_epi16(_mm256_loadu_si256(a.as_ptr().cast()), _mm256_loadu_si256(b.as_ptr().cast()))
    }
    #[inline(always)]
    unsafe fn isum4(v: [Self::IAcc; 4]) -> [i32; 4] {
        use std::arch::x86_64::*;
        // Pairwise adds within each 128-bit half give each accumulator's half totals, in
        // order; the two halves then add. Integer adds: the same totals as `isum`.
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
        let mut out = [0i32; 4];
        _mm_storeu_si128(out.as_mut_ptr().cast(), s);
        out
    }
    #[inline(always)]
    unsafe fn isum(v: Self::IAcc) -> i32 {
        use std::arch::x86_64::*;
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}

/// [`IntDot::dot_32_pairs`] with AVX-512 (F, BW, VNNI): a pair of chunks per 512-bit
/// register, chunk 2 p in the low half and 2 p + 1 in the high half, each half the
/// operations of [`Avx2::dot_add`] on its chunk (`vpdpbusd` from zero, convert, fused
/// multiply-add of `d_w d_x` into its accumulator; signed weights by their magnitude times
/// the activations with the weights' sign, as `vpsignb` does): the same bits as the AVX2
/// loop, in half the instructions. Zen 5 and Intel cores run 512-bit vectors at full width.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_32_pairs_avx512<const J: usize>(
    signed: bool,
    q: &[[u8; Q8_LEN]],
    xq: &[[i8; Q8_LEN]],
    dd: &[f32],
    group: usize,
    t: usize,
) -> [[std::arch::x86_64::__m256; 2]; J] {
    use std::arch::x86_64::*;
    let chunks = q.len();
    let xq = &xq[..J * chunks];
    let dd = &dd[..chunks * group];
    let mut acc = [_mm512_setzero_ps(); J];
    for p in 0..chunks / 2 {
        let (k0, k1) = (2 * p, 2 * p + 1);
        // q[k0] and q[k1] are adjacent, as are each row's activation chunks k0 and k1.
        let qv = _mm512_loadu_si512(q[k0..=k1].as_ptr().cast());
        let (qa, negative) = if signed { (_mm512_abs_epi8(qv), _mm512_movepi8_mask(qv)) } else { (qv, 0) };
        for (u, acc) in acc.iter_mut().enumerate() {
            let mut x = _mm512_loadu_si512(xq[u * chunks + k0..=u * chunks + k1].as_ptr().cast());
            if signed {
                x = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
            }
            let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, x);
            let d0 = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_set1_ps(dd[k0 * group + t + u])));
            let d = _mm512_castpd_ps(_mm512_insertf64x4::<1>(d0, _mm256_castps_pd(_mm256_set1_ps(dd[k1 * group + t + u]))));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), d, *acc);
        }
    }
    // A loop, not `map`: a closure would not inherit the caller's target features, and its
    // intrinsics would become calls.
    let mut halves = [[_mm256_setzero_ps(); 2]; J];
    for (h, a) in halves.iter_mut().zip(acc) {
        *h = [_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)))];
    }
    halves
}

/// wasm simd128: bytes widened to i16, then `i32x4.dot_i16x8_s` (pairwise products added
/// to i32). No FMA in simd128: a multiply and an add.
///
/// Built with relaxed SIMD too (`-C target-feature=+relaxed-simd`: the package's second
/// module, loaded where the browser validates it), the K-quants take relaxed SIMD's
/// `i16x8.relaxed_dot_i8x16_i7x16_s` (the products of byte pairs summed in i16; x86 engines
/// lower it to `pmaddubsw`) and apply the sub-block scale with `i32x4.dot_i16x8_s`: two
/// instructions per 16 bytes where simd128 needs four widenings, two dots and a multiply.
/// Its result is only implementation-defined where the second operand has its top bit set
/// or a pair's sum leaves i16; here that operand is the weights, 0..=63, and a pair's sum
/// is at most 2 * 128 * 63 in magnitude, so its sums are exact; the K-quants' totals are
/// exact integers in both modules, hence the same bits. The 32-value formats keep the
/// widening path: their i32 lanes become f32 lanes, whose sums depend on how the bytes are
/// split among lanes, and the relaxed dot's split differs (shuffling the operands into the
/// widening split cost more than the relaxed dot saved: V8 rebuilds a shuffle's constant on
/// every use). So do Q8_0's signed weights.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) struct Simd128;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl IntDot for Simd128 {
    type Acc = std::arch::wasm32::v128;
    type IAcc = std::arch::wasm32::v128;
    /// The two 16-byte halves.
    type Q = [std::arch::wasm32::v128; 2];
    type S = [i16; 2];
    #[inline(always)]
    fn zero() -> Self::Acc {
        std::arch::wasm32::f32x4_splat(0.0)
    }
    #[inline(always)]
    fn izero() -> Self::IAcc {
        std::arch::wasm32::i32x4_splat(0)
    }
    #[inline(always)]
    unsafe fn load(q: &[u8; 32]) -> Self::Q {
        use std::arch::wasm32::*;
        [v128_load(q.as_ptr().cast()), v128_load(q.as_ptr().add(16).cast())]
    }
    #[inline(always)]
    unsafe fn store(q: Self::Q) -> [u8; 32] {
        use std::arch::wasm32::*;
        let mut out = [0u8; 32];
        v128_store(out.as_mut_ptr().cast(), q[0]);
        v128_store(out.as_mut_ptr().add(16).cast(), q[1]);
        out
    }
    // The byte shifts below are 16-bit shifts with a mask: wasm engines lower `i8x16.shr_u`
    // and `i8x16.shl` to a 16-bit shift plus a mask they rebuild on every use (V8: three
    // more instructions each; by a variable count, unpack, two shifts and a pack), whereas
    // the mask here is one constant the compiler keeps in a register.
    #[inline(always)]
    unsafe fn nibbles(qs: &[u8; 16]) -> Self::Q {
        use std::arch::wasm32::*;
        let b = v128_load(qs.as_ptr().cast());
        let low = u8x16_splat(0x0f);
        // A 16-bit shift moves the next byte's low bits in: masked off.
        [v128_and(b, low), v128_and(u16x8_shr(b, 4), low)]
    }
    #[inline(always)]
    unsafe fn with_fifth_bits(q: Self::Q, qh: &[u8; 4]) -> Self::Q {
        use std::arch::wasm32::*;
        // Byte j becomes 16 where bit j of qh is set: eight bytes per byte of qh, looked up.
        let t = |b: u8| FIFTH_BITS[b as usize];
        let lo = u64x2(t(qh[0]), t(qh[1]));
        let hi = u64x2(t(qh[2]), t(qh[3]));
        [v128_or(q[0], lo), v128_or(q[1], hi)]
    }
    #[inline(always)]
    unsafe fn bits(b: &[u8; 32], shift: u32, mask: u8) -> Self::Q {
        use std::arch::wasm32::*;
        debug_assert!(shift < 8 && u32::from(mask) < 1 << (8 - shift));
        let [lo, hi] = Self::load(b);
        // A 16-bit shift moves the next byte's low bits in; `mask` (below 1 << (8 - shift),
        // as every caller's) drops them.
        let m = u8x16_splat(mask);
        [v128_and(u16x8_shr(lo, shift), m), v128_and(u16x8_shr(hi, shift), m)]
    }
    #[inline(always)]
    unsafe fn add_high_bits(q: Self::Q, h: &[u8; 32], shift: u32, mask: u8) -> Self::Q {
        use std::arch::wasm32::*;
        // (h >> shift) & mask <= 3 per byte: shifting the 16-bit lanes left by 4 keeps each
        // byte's bits in that byte.
        let [lo, hi] = Self::bits(h, shift, mask);
        [v128_or(q[0], u16x8_shl(lo, 4)), v128_or(q[1], u16x8_shl(hi, 4))]
    }
    #[inline(always)]
    unsafe fn dot_add<const SIGNED: bool>(acc: Self::Acc, q: Self::Q, x: &[i8; 32], d: f32) -> Self::Acc {
        use std::arch::wasm32::*;
        let s = half_dot_add::<SIGNED>(q[1], x, 1, half_dot_add::<SIGNED>(q[0], x, 0, i32x4_splat(0)));
        f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(s), f32x4_splat(d)))
    }
    #[inline(always)]
    unsafe fn sum2(a: Self::Acc, b: Self::Acc) -> f32 {
        use std::arch::wasm32::*;
        let v = f32x4_add(a, b);
        (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v)) + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
    }
    #[inline(always)]
    unsafe fn scale_pair(s: [i16; 2]) -> [i16; 2] {
        s
    }
    #[inline(always)]
    unsafe fn ipairs(a: &[i16; 16], b: &[i16; 16]) -> Self::IAcc {
        use std::arch::wasm32::*;
        let lo = i32x4_dot_i16x8(v128_load(a.as_ptr().cast()), v128_load(b.as_ptr().cast()));
        let hi = i32x4_dot_i16x8(v128_load(a.as_ptr().add(8).cast()), v128_load(b.as_ptr().add(8).cast()));
        i32x4_add(lo, hi)
    }
    #[inline(always)]
    unsafe fn idot_add(acc: Self::IAcc, q: Self::Q, x: &[i8; 32], s: [i16; 2]) -> Self::IAcc {
        use std::arch::wasm32::*;
        // One scale per 16-byte half.
        #[cfg(target_feature = "relaxed-simd")]
        {
            // Products of byte pairs summed in i16 (exact: see `relaxed_pairs`), times the
            // half's scale and summed pairwise into i32 by `i32x4.dot_i16x8_s` (exact: at
            // most 2 * 16_256 * 128 in magnitude). Only the total counts (`isum`), exact in
            // any split: the simd128 module's.
            let x0 = v128_load(x.as_ptr().cast());
            let x1 = v128_load(x.as_ptr().add(16).cast());
            let lo = i32x4_dot_i16x8(relaxed_pairs(q[0], x0), i16x8_splat(s[0]));
            let hi = i32x4_dot_i16x8(relaxed_pairs(q[1], x1), i16x8_splat(s[1]));
            i32x4_add(acc, i32x4_add(lo, hi))
        }
        #[cfg(not(target_feature = "relaxed-simd"))]
        {
            let lo = i32x4_mul(half_dot_add::<false>(q[0], x, 0, i32x4_splat(0)), i32x4_splat(s[0] as i32));
            let hi = i32x4_mul(half_dot_add::<false>(q[1], x, 1, i32x4_splat(0)), i32x4_splat(s[1] as i32));
            i32x4_add(acc, i32x4_add(lo, hi))
        }
    }
    #[inline(always)]
    unsafe fn isum(v: Self::IAcc) -> i32 {
        use std::arch::wasm32::*;
        i32x4_extract_lane::<0>(v)
            .wrapping_add(i32x4_extract_lane::<1>(v))
            .wrapping_add(i32x4_extract_lane::<2>(v))
            .wrapping_add(i32x4_extract_lane::<3>(v))
    }
}

/// Q5_0/Q5_1's fifth bits for wasm: entry b has byte i = 16 where bit i of b is set.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
static FIFTH_BITS: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            if b >> i & 1 == 1 {
                table[b] |= 16 << (8 * i);
            }
            i += 1;
        }
        b += 1;
    }
    table
};

/// `acc` plus the products of half h of q (16 bytes, u8, or i8 when `SIGNED`) and bytes
/// 16 h .. 16 h + 16 of x, summed in four i32 lanes (lane l: bytes 2 l, 2 l + 1, 2 l + 8 and
/// 2 l + 9).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
unsafe fn half_dot_add<const SIGNED: bool>(
    q: std::arch::wasm32::v128,
    x: &[i8; 32],
    h: usize,
    acc: std::arch::wasm32::v128,
) -> std::arch::wasm32::v128 {
    let x = std::arch::wasm32::v128_load(x.as_ptr().add(16 * h).cast());
    widened_dot_add::<SIGNED>(q, x, acc)
}

/// Relaxed SIMD's `i16x8.relaxed_dot_i8x16_i7x16_s`: i16 lane l = q[2 l] x[2 l] + q[2 l + 1]
/// x[2 l + 1], exact for q <= 63 (at most 2 * 128 * 63 in magnitude, and q below 128: see
/// [`Simd128`]).
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
#[inline(always)]
fn relaxed_pairs(q: std::arch::wasm32::v128, x: std::arch::wasm32::v128) -> std::arch::wasm32::v128 {
    std::arch::wasm32::i16x8_relaxed_dot_i8x16_i7x16(x, q)
}

/// [`half_dot_add`] without relaxed SIMD, x loaded.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn widened_dot_add<const SIGNED: bool>(
    q: std::arch::wasm32::v128,
    x: std::arch::wasm32::v128,
    acc: std::arch::wasm32::v128,
) -> std::arch::wasm32::v128 {
    use std::arch::wasm32::*;
    let (q_lo, q_hi) = if SIGNED {
        (i16x8_extend_low_i8x16(q), i16x8_extend_high_i8x16(q))
    } else {
        (u16x8_extend_low_u8x16(q), u16x8_extend_high_u8x16(q))
    };
    let lo = i32x4_dot_i16x8(q_lo, i16x8_extend_low_i8x16(x));
    let hi = i32x4_dot_i16x8(q_hi, i16x8_extend_high_i8x16(x));
    i32x4_add(acc, i32x4_add(lo, hi))
}

// ======================================================================================
// The kernels
// ======================================================================================

/// Activation rows met by each unpacked weight row per pass: as many as fit this many
/// bytes, so that they stay in the L2 cache while the weight rows go by.
const GROUP_BYTES: usize = 256 << 10;

/// `yt[(i, j)] = W[row0 + i, :] . x[j, :]` for a 32-value format: yt (rows_chunk, n).
///
/// Per (weight row, activation row) pair, in this order, alone or batched:
/// - `dd[k] = d_w[k] * d_x[k]` (an f32 product: the same however it is vectorized);
/// - `offsets = ((m[0] * s[0] + m[1] * s[1]) + m[2] * s[2]) + ...` over the chunks in
///   order (unfused), `s` the activation blocks' sums;
/// - `acc0`, `acc1` (the instruction set's lanes): chunk k's exact integer dot, converted
///   and scaled by `dd[k]`, added into `acc0` for even k and `acc1` for odd k;
/// - `y = sum2(acc0, acc1) + offsets`.
#[inline(always)]
unsafe fn rows_32<B: Block32, D: IntDot>(w: &QMatrix, row0: usize, x: &Q8Rows, n: usize, yt: &mut [f32]) {
    let Some(blocks) = w.blocks::<B>() else { return };
    let chunks = w.cols / Q8_LEN;
    if chunks == 0 || n == 0 || x.n != n {
        return;
    }
    let blocks = &blocks[row0 * chunks..(row0 + yt.len() / n) * chunks];
    if n == 1 {
        // Decode: each weight row meets one activation row, so unpacking its quants to
        // memory first would cost more than it saves; `dot_32_fused` unpacks them in
        // registers as it goes.
        for (w_row, y) in blocks.chunks_exact(chunks).zip(yt.iter_mut()) {
            *y = dot_32_fused::<B, D>(w_row, &x.qs[..chunks], &x.d[..chunks], &x.sum[..chunks]);
        }
        return;
    }
    // One weight row in integer form: (chunks,) quants.
    let mut q = vec![[0u8; Q8_LEN]; chunks];
    let group = (GROUP_BYTES / (chunks * (Q8_LEN + 8))).clamp(1, n);
    // (chunks, group) d_w * d_x, (group,) offsets: of the activation rows of a pass.
    let mut dd = vec![0.0f32; chunks * group];
    let mut offsets = vec![0.0f32; group];
    for j0 in (0..n).step_by(group) {
        let rows = group.min(n - j0);
        for (w_row, yt) in blocks.chunks_exact(chunks).zip(yt.chunks_exact_mut(n)) {
            offsets.fill(0.0);
            for (k, ((b, q), dd)) in w_row.iter().zip(&mut q).zip(dd.chunks_exact_mut(group)).enumerate() {
                let (qk, d, m) = b.unpack::<D>();
                *q = D::store(qk);
                let column = k * n + j0..k * n + j0 + rows;
                for (dd, &xd) in dd.iter_mut().zip(&x.d[column.clone()]) {
                    *dd = d * xd;
                }
                if B::OFFSET {
                    for (o, &s) in offsets.iter_mut().zip(&x.sum[column]) {
                        *o += m * s;
                    }
                }
            }
            // ROWS_32 activation rows at a time (their chains interleave), then one by one.
            let yt = &mut yt[j0..j0 + rows];
            let mut t = 0;
            while D::WIDE_ROWS && t + 2 * ROWS_32 <= rows {
                let out = dot_32::<B, D, { 2 * ROWS_32 }>(&q, &x.qs[(j0 + t) * chunks..], &dd, group, t, &offsets);
                yt[t..t + 2 * ROWS_32].copy_from_slice(&out);
                t += 2 * ROWS_32;
            }
            while t + ROWS_32 <= rows {
                let out = dot_32::<B, D, ROWS_32>(&q, &x.qs[(j0 + t) * chunks..], &dd, group, t, &offsets);
                yt[t..t + ROWS_32].copy_from_slice(&out);
                t += ROWS_32;
            }
            for t in t..rows {
                yt[t] = dot_32::<B, D, 1>(&q, &x.qs[(j0 + t) * chunks..], &dd, group, t, &offsets)[0];
            }
        }
    }
}

/// Activation rows a 32-value weight row meets at once in prefill.
const ROWS_32: usize = 4;

/// Weight row `q` (chunks,) against activation rows t .. t + J of a pass, their quants
/// `xq` (J, chunks) (or longer), `dd` (chunks, group) and `offsets` (group,) computed as
/// [`rows_32`] says.
#[inline(always)]
unsafe fn dot_32<B: Block32, D: IntDot, const J: usize>(
    q: &[[u8; Q8_LEN]],
    xq: &[[i8; Q8_LEN]],
    dd: &[f32],
    group: usize,
    t: usize,
    offsets: &[f32],
) -> [f32; J] {
    let chunks = q.len();
    let xq = &xq[..J * chunks];
    let dd = &dd[..chunks * group];
    let mut acc = [[D::zero(); 2]; J];
    if let Some(pairs) = D::dot_32_pairs::<J>(B::SIGNED, q, xq, dd, group, t) {
        acc = pairs;
    } else {
        for p in 0..chunks / 2 {
            let (k0, k1) = (2 * p, 2 * p + 1);
            for u in 0..J {
                acc[u][0] = step::<B, D>(acc[u][0], D::load(&q[k0]), &xq[u * chunks + k0], dd[k0 * group + t + u]);
                acc[u][1] = step::<B, D>(acc[u][1], D::load(&q[k1]), &xq[u * chunks + k1], dd[k1 * group + t + u]);
            }
        }
    }
    if chunks % 2 == 1 {
        let k = chunks - 1;
        for u in 0..J {
            acc[u][0] = step::<B, D>(acc[u][0], D::load(&q[k]), &xq[u * chunks + k], dd[k * group + t + u]);
        }
    }
    std::array::from_fn(|u| D::sum2(acc[u][0], acc[u][1]) + offsets[t + u])
}

/// One weight row (blocks) against one activation row (`xq`, `xd`, `xsum`: (chunks,)),
/// unpacking the quants in registers; the arithmetic of [`rows_32`], bit for bit.
#[inline(always)]
unsafe fn dot_32_fused<B: Block32, D: IntDot>(row: &[B], xq: &[[i8; Q8_LEN]], xd: &[f32], xsum: &[f32]) -> f32 {
    let chunks = row.len().min(xq.len()).min(xd.len()).min(xsum.len());
    let mut offsets = 0.0f32;
    let (mut acc0, mut acc1) = (D::zero(), D::zero());
    let pairs = chunks / 2;
    for p in 0..pairs {
        let (k0, k1) = (2 * p, 2 * p + 1);
        let ((q0, d0, m0), (q1, d1, m1)) = (row[k0].unpack::<D>(), row[k1].unpack::<D>());
        acc0 = step::<B, D>(acc0, q0, &xq[k0], d0 * xd[k0]);
        acc1 = step::<B, D>(acc1, q1, &xq[k1], d1 * xd[k1]);
        if B::OFFSET {
            offsets += m0 * xsum[k0];
            offsets += m1 * xsum[k1];
        }
    }
    if chunks % 2 == 1 {
        let k = chunks - 1;
        let (q, d, m) = row[k].unpack::<D>();
        acc0 = step::<B, D>(acc0, q, &xq[k], d * xd[k]);
        if B::OFFSET {
            offsets += m * xsum[k];
        }
    }
    D::sum2(acc0, acc1) + offsets
}

#[inline(always)]
unsafe fn step<B: Block32, D: IntDot>(acc: D::Acc, q: D::Q, x: &[i8; Q8_LEN], d: f32) -> D::Acc {
    if B::SIGNED {
        D::dot_add::<true>(acc, q, x, d)
    } else {
        D::dot_add::<false>(acc, q, x, d)
    }
}

/// `yt[(i, j)] = W[row0 + i, :] . x[j, :]` for a K-quant: yt (rows_chunk, n).
#[inline(always)]
unsafe fn rows_k<B: BlockK, D: IntDot>(w: &QMatrix, row0: usize, x: &Q8KRows, n: usize, yt: &mut [f32]) {
    let Some(blocks) = w.blocks::<B>() else { return };
    let per_row = w.cols / Q8K_LEN;
    if per_row == 0 || n == 0 {
        return;
    }
    let blocks = &blocks[row0 * per_row..(row0 + yt.len() / n) * per_row];
    if n == 1 {
        // Decode: unpack in registers as it goes (as `rows_32`).
        for (w_row, y) in blocks.chunks_exact(per_row).zip(yt.iter_mut()) {
            *y = dot_k_fused::<B, D>(w_row, &x.blocks[..per_row]);
        }
        return;
    }
    // One weight row in integer form.
    let mut row: Vec<KUnpacked<D>> = (0..per_row).map(|_| KUnpacked::new()).collect();
    let group = (GROUP_BYTES / (per_row * std::mem::size_of::<BlockQ8K>())).clamp(1, n);
    let x_row = |j: usize| &x.blocks[j * per_row..(j + 1) * per_row];
    for j0 in (0..n).step_by(group) {
        let rows = group.min(n - j0);
        for (w_row, yt) in blocks.chunks_exact(per_row).zip(yt.chunks_exact_mut(n)) {
            for (b, u) in w_row.iter().zip(&mut row) {
                b.unpack::<D>(u);
            }
            // ROWS_K activation rows at a time (sharing each chunk's loads and the
            // reductions), then one by one.
            let yt = &mut yt[j0..j0 + rows];
            let mut t = 0;
            while D::WIDE_ROWS && t + 2 * ROWS_K <= rows {
                let xs: [&[BlockQ8K]; 2 * ROWS_K] = std::array::from_fn(|u| x_row(j0 + t + u));
                yt[t..t + 2 * ROWS_K].copy_from_slice(&dot_k::<D, { 2 * ROWS_K }>(&row, xs));
                t += 2 * ROWS_K;
            }
            while t + ROWS_K <= rows {
                let xs: [&[BlockQ8K]; ROWS_K] = std::array::from_fn(|u| x_row(j0 + t + u));
                yt[t..t + ROWS_K].copy_from_slice(&dot_k::<D, ROWS_K>(&row, xs));
                t += ROWS_K;
            }
            for t in t..rows {
                yt[t] = dot_k::<D, 1>(&row, [x_row(j0 + t)])[0];
            }
        }
    }
}

/// Activation rows a K-quant weight row meets at once in prefill.
const ROWS_K: usize = 4;

/// Totals of `J` integer accumulators (four at once where the instruction set can).
#[inline(always)]
unsafe fn isums<D: IntDot, const J: usize>(v: [D::IAcc; J]) -> [i32; J] {
    let mut out = [0i32; J];
    let mut u = 0;
    while u + 4 <= J {
        out[u..u + 4].copy_from_slice(&D::isum4([v[u], v[u + 1], v[u + 2], v[u + 3]]));
        u += 4;
    }
    for u in u..J {
        out[u] = D::isum(v[u]);
    }
    out
}

/// One (weight row, activation row) dot product of a K-quant: per super-block, the exact
/// integer sum `sum_l s q x` and offset sum `sum_g m_g bsums_g` (|.| <= 256 * 63 * 127 *
/// 128 < 2^31 for Q6_K's q <= 63 and |s| <= 128; smaller for the others), then scalar f32:
/// the same arithmetic on every instruction set.
#[inline(always)]
unsafe fn dot_k<D: IntDot, const J: usize>(row: &[KUnpacked<D>], xs: [&[BlockQ8K]; J]) -> [f32; J] {
    let mut acc = [0.0f32; J];
    for (b, w) in row.iter().enumerate() {
        let x: [&BlockQ8K; J] = std::array::from_fn(|u| &xs[u][b]);
        let mut sums = [D::izero(); J];
        for c in 0..8 {
            let q = D::load(&w.q[c]);
            for u in 0..J {
                sums[u] = D::idot_add(sums[u], q, &x[u].qs[c], w.s[c]);
            }
        }
        let dots = isums::<D, J>(sums);
        let offsets = isums::<D, J>(std::array::from_fn(|u| D::ipairs(&w.sc.m, &x[u].bsums)));
        for u in 0..J {
            acc[u] += k_block_total(dots[u], offsets[u], &w.sc, x[u]);
        }
    }
    acc
}

/// [`dot_k`] for one weight row of blocks, unpacked in registers as it goes: the same
/// arithmetic, bit for bit.
#[inline(always)]
unsafe fn dot_k_fused<B: BlockK, D: IntDot>(row: &[B], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    let mut sc = KScales::default();
    for (w, x) in row.iter().zip(x) {
        w.scales::<D>(&mut sc);
        let mut sums = D::izero();
        for c in 0..8 {
            sums = D::idot_add(sums, w.quants::<D>(c), &x.qs[c], D::scale_pair(sc.s[c]));
        }
        acc += k_block_total(D::isum(sums), D::isum(D::ipairs(&sc.m, &x.bsums)), &sc, x);
    }
    acc
}

/// One super-block's share of [`dot_k`]: its integer sum `dot` scaled, plus its offsets
/// (`sum_g m_g bsums_g`).
#[inline(always)]
fn k_block_total(dot: i32, offsets: i32, sc: &KScales, x: &BlockQ8K) -> f32 {
    (sc.d * x.d) * dot as f32 + (sc.dm * x.d) * offsets as f32
}

#[inline(always)]
unsafe fn rows_q8_impl<D: IntDot>(w: &QMatrix, row0: usize, x: &Q8Rows, n: usize, yt: &mut [f32]) {
    match w.ty {
        GgmlType::Q4_0 => rows_32::<BlockQ4_0, D>(w, row0, x, n, yt),
        GgmlType::Q4_1 => rows_32::<BlockQ4_1, D>(w, row0, x, n, yt),
        GgmlType::Q5_0 => rows_32::<BlockQ5_0, D>(w, row0, x, n, yt),
        GgmlType::Q5_1 => rows_32::<BlockQ5_1, D>(w, row0, x, n, yt),
        GgmlType::Q8_0 => rows_32::<BlockQ8_0, D>(w, row0, x, n, yt),
        _ => {}
    }
}

#[inline(always)]
unsafe fn rows_q8k_impl<D: IntDot>(w: &QMatrix, row0: usize, x: &Q8KRows, n: usize, yt: &mut [f32]) {
    match w.ty {
        GgmlType::Q4_K => rows_k::<BlockQ4_K, D>(w, row0, x, n, yt),
        GgmlType::Q5_K => rows_k::<BlockQ5_K, D>(w, row0, x, n, yt),
        GgmlType::Q6_K => rows_k::<BlockQ6_K, D>(w, row0, x, n, yt),
        _ => {}
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    /// The kernels compiled for one x86 feature set (its [`Avx2`] variant).
    macro_rules! x86_kernels {
        ($module:ident, $features:literal, $vnni:expr) => {
            pub(super) mod $module {
                use super::*;
                // `unsafe fn`: the caller checks that the CPU has the features.
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn rows_q8(w: &QMatrix, row0: usize, x: &Q8Rows, n: usize, yt: &mut [f32]) {
                    rows_q8_impl::<Avx2<{ $vnni }>>(w, row0, x, n, yt)
                }
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn rows_q8k(w: &QMatrix, row0: usize, x: &Q8KRows, n: usize, yt: &mut [f32]) {
                    rows_q8k_impl::<Avx2<{ $vnni }>>(w, row0, x, n, yt)
                }
            }
        };
    }
    x86_kernels!(plain, "avx2,fma,f16c", NO_VNNI);
    x86_kernels!(avx_vnni, "avx2,fma,f16c,avxvnni", AVX_VNNI);
    x86_kernels!(avx512_vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", AVX512_VNNI);

    /// The best [`Avx2`] variant this CPU runs, or `None` without AVX2/FMA/F16C.
    pub(super) fn level() -> Option<u8> {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<Option<u8>> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            if !kernels::has_avx2_fma() {
                None
            } else if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                Some(AVX512_VNNI)
            } else if is_x86_feature_detected!("avxvnni") {
                Some(AVX_VNNI)
            } else {
                Some(NO_VNNI)
            }
        })
    }

    /// [`super::rows_q8`] on `level` (which the CPU must run).
    pub(super) unsafe fn rows_q8(level: u8, w: &QMatrix, row0: usize, x: &Q8Rows, n: usize, yt: &mut [f32]) {
        match level {
            AVX512_VNNI => avx512_vnni::rows_q8(w, row0, x, n, yt),
            AVX_VNNI => avx_vnni::rows_q8(w, row0, x, n, yt),
            _ => plain::rows_q8(w, row0, x, n, yt),
        }
    }

    /// [`super::rows_q8k`] on `level` (which the CPU must run).
    pub(super) unsafe fn rows_q8k(level: u8, w: &QMatrix, row0: usize, x: &Q8KRows, n: usize, yt: &mut [f32]) {
        match level {
            AVX512_VNNI => avx512_vnni::rows_q8k(w, row0, x, n, yt),
            AVX_VNNI => avx_vnni::rows_q8k(w, row0, x, n, yt),
            _ => plain::rows_q8k(w, row0, x, n, yt),
        }
    }
}

/// The portable instruction set of this build: simd128 on wasm32 when the module is built
/// with it (`.cargo/config.toml` does), plain integers elsewhere.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
type Baseline = Simd128;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
type Baseline = Portable;

/// `yt[(i, j)] = W[row0 + i, :] . x[j, :]` for W of a 32-value format, x (n, cols)
/// quantized by [`Q8Rows`], yt (rows_chunk, n); on the best instruction set the CPU has.
/// Other weight types leave yt as it is.
pub(super) fn rows_q8(w: &QMatrix, row0: usize, x: &Q8Rows, n: usize, yt: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(level) = avx2::level() {
        // SAFETY: the CPU runs `level` (checked by `level()`).
        return unsafe { avx2::rows_q8(level, w, row0, x, n, yt) };
    }
    // SAFETY: `Baseline` needs nothing past what this build targets.
    unsafe { rows_q8_impl::<Baseline>(w, row0, x, n, yt) }
}

/// [`rows_q8`] for the K-quants, x quantized by [`Q8KRows`].
pub(super) fn rows_q8k(w: &QMatrix, row0: usize, x: &Q8KRows, n: usize, yt: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(level) = avx2::level() {
        // SAFETY: the CPU runs `level` (checked by `level()`).
        return unsafe { avx2::rows_q8k(level, w, row0, x, n, yt) };
    }
    // SAFETY: `Baseline` needs nothing past what this build targets.
    unsafe { rows_q8k_impl::<Baseline>(w, row0, x, n, yt) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_i8_is_round_then_saturating_cast() {
        let specials = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5, -0.5, 1.5, -1.5, 2.5, 126.5, 127.5, -127.5, -128.5, 0.49999997, -0.49999997, 1e30, -1e30, 0.0, -0.0];
        let sweep = (0..=u32::MAX).step_by(997).map(f32::from_bits);
        let halves = (-600..=600).map(|k| k as f32 * 0.25);
        for r in specials.into_iter().chain(sweep).chain(halves) {
            assert_eq!(round_i8(r), r.round() as i8, "{r} ({:#x})", r.to_bits());
        }
    }

    /// `PENSIVE_EXPECT_RELAXED_SIMD=1` (scripts/test.sh's relaxed-SIMD run): this test binary
    /// must be the relaxed-SIMD build, or that run would test the simd128 code twice.
    #[test]
    fn the_build_has_the_instruction_set_asked_for() {
        let relaxed = cfg!(all(target_arch = "wasm32", target_feature = "relaxed-simd"));
        let asked = std::env::var("PENSIVE_EXPECT_RELAXED_SIMD").is_ok_and(|v| v == "1");
        assert_eq!(relaxed, asked, "relaxed-simd compiled in: {relaxed}, PENSIVE_EXPECT_RELAXED_SIMD=1: {asked}");
    }

    /// The relaxed pair sums, and the widening dot product, against plain integer sums on
    /// the extremes of their operands (weights 0..=63, activations -128..=127: every pair
    /// sum's largest magnitude) and on random bytes: each lane exact, so the K-quants'
    /// integer totals (the only sums the relaxed module computes otherwise) are the simd128
    /// module's.
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    #[test]
    fn relaxed_dot_is_the_exact_one() {
        use std::arch::wasm32::*;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut cases: Vec<([u8; 16], [i8; 16])> = vec![([63; 16], [-128; 16]), ([63; 16], [127; 16]), ([0; 16], [-128; 16])];
        for _ in 0..10_000 {
            let mut q = [0u8; 16];
            let mut x = [0i8; 16];
            for (q, x) in q.iter_mut().zip(&mut x) {
                let r = next();
                *q = (r as u8) & 63;
                *x = (r >> 8) as i8;
            }
            cases.push((q, x));
        }
        for (q, x) in cases {
            // SAFETY: 16-byte arrays, unaligned loads.
            let (qv, xv) = unsafe { (v128_load(q.as_ptr().cast()), v128_load(x.as_ptr().cast())) };
            let product = |b: usize| i32::from(q[b]) * i32::from(x[b]);
            let mut pairs = [0i16; 8];
            // SAFETY: 16 bytes into a 16-byte array.
            unsafe { v128_store(pairs.as_mut_ptr().cast(), relaxed_pairs(qv, xv)) };
            for (l, &p) in pairs.iter().enumerate() {
                assert_eq!(i32::from(p), product(2 * l) + product(2 * l + 1), "relaxed lane {l}: q {q:?} x {x:?}");
            }
            let acc = i32x4(7, -7, i32::MAX - 200_000, i32::MIN + 200_000);
            let widened = widened_dot_add::<false>(qv, xv, acc);
            let mut lanes = [0i32; 4];
            let mut a = [0i32; 4];
            // SAFETY: 16 bytes into 16-byte arrays.
            unsafe {
                v128_store(lanes.as_mut_ptr().cast(), widened);
                v128_store(a.as_mut_ptr().cast(), acc);
            }
            for l in 0..4 {
                let sum = product(2 * l) + product(2 * l + 1) + product(2 * l + 8) + product(2 * l + 9);
                assert_eq!(lanes[l], a[l].wrapping_add(sum), "widened lane {l}: q {q:?} x {x:?}");
            }
        }
    }

    /// The [`Avx2`] variants this CPU runs (printed: which ones a run covered).
    #[cfg(target_arch = "x86_64")]
    fn x86_levels() -> Vec<u8> {
        let Some(best) = avx2::level() else { return Vec::new() };
        let mut levels = vec![NO_VNNI];
        if best == AVX512_VNNI {
            levels.push(AVX512_VNNI);
        }
        if is_x86_feature_detected!("avxvnni") {
            levels.push(AVX_VNNI);
        }
        println!("x86 variants checked: {levels:?}");
        levels
    }

    /// Every instruction set's kernel against the portable one on random blocks of every
    /// format, 1 and 5 activation rows: the K-quants bit for bit (exact integer sums, then
    /// the same scalar f32); the 32-value formats differ only in the order of the f32 sums
    /// (and fused multiply-adds): a few roundings of `sum |w x|`.
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
            // 25 chunks for the 32-value formats: the pairs of chunks and the odd last one.
            let (rows, cols) = (7, if ty.block_len() == Q8K_LEN { 768 } else { 800 });
            let mut data = AlignedBytes::zeroed(rows * cols / ty.block_len() * ty.block_bytes());
            // Every f16 (scales, mins) sits at an even offset (block sizes are even), so its
            // high byte is odd: clearing bit 6 there keeps its exponent below 31 (finite).
            for (i, b) in data.as_mut_slice().iter_mut().enumerate() {
                *b = next() as u8 & if i % 2 == 1 { 0xbf } else { 0xff };
            }
            let w = QMatrix::new(ty, rows, cols, data).expect("matrix");
            for n in [1, 5] {
                let x: Vec<f32> = (0..n * cols).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
                let (mut portable, mut best) = (vec![0.0f32; rows * n], vec![0.0f32; rows * n]);
                let k = ty.block_len() == Q8K_LEN;
                if k {
                    let xq = Q8KRows::new(&x, cols);
                    // SAFETY: the portable kernel needs no CPU feature.
                    unsafe { rows_q8k_impl::<Portable>(&w, 0, &xq, n, &mut portable) };
                    rows_q8k(&w, 0, &xq, n, &mut best);
                    assert!(portable.iter().zip(&best).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty:?} n={n}: {best:?} vs portable {portable:?}");
                    #[cfg(target_arch = "x86_64")]
                    for level in x86_levels() {
                        let mut other = vec![0.0f32; rows * n];
                        // SAFETY: the CPU runs `level`.
                        unsafe { avx2::rows_q8k(level, &w, 0, &xq, n, &mut other) };
                        assert!(other.iter().zip(&best).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty:?} n={n} x86 level {level}");
                    }
                    continue;
                }
                let xq = Q8Rows::new(&x, cols);
                // SAFETY: the portable kernel needs no CPU feature.
                unsafe { rows_q8_impl::<Portable>(&w, 0, &xq, n, &mut portable) };
                rows_q8(&w, 0, &xq, n, &mut best);
                // The x86 variants (with and without VNNI) compute the same integers.
                #[cfg(target_arch = "x86_64")]
                for level in x86_levels() {
                    let mut other = vec![0.0f32; rows * n];
                    // SAFETY: the CPU runs `level`.
                    unsafe { avx2::rows_q8(level, &w, 0, &xq, n, &mut other) };
                    assert!(other.iter().zip(&best).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty:?} n={n} x86 level {level}");
                }
                let mut row = vec![0.0f32; cols];
                for r in 0..rows {
                    w.dequantize_row(r, &mut row).expect("row");
                    for j in 0..n {
                        let scale: f64 = row.iter().zip(&x[j * cols..]).map(|(&w, &x)| (w as f64 * x as f64).abs()).sum();
                        let (p, b) = (portable[r * n + j], best[r * n + j]);
                        let err = (p as f64 - b as f64).abs();
                        assert!(err <= 1e-5 * scale, "{ty:?} row {r} x {j}: {b} vs portable {p} (sum |w x| {scale:e})");
                    }
                }
            }
        }
    }
}
