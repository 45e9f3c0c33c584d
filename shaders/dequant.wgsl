// Dequantization of repacked GGUF blocks: the library that matmul.wgsl and embed.wgsl share.
//
// It reads the weights through `wd(i)` (word i), `load4(i)` (words i..i+4) and `load4a(i)`
// (the same, i a multiple of 4) over the including kernel's binding `w: array<w_word>`
// (crate/gpu/mod.rs Knobs::weight_access: 16-byte words on GPUs, u32 on CPU adapters), and
// the knob `WTYPE` (a GGUF ggml_type id) from the prelude. Every function takes the type as
// its first argument; kernels pass constants (WTYPE, or the fused mat-mul's WTYPE1/WTYPE2),
// so after inlining each `switch` folds away and a loop carries the code of one format only.
//
// Repacked layout (crate/gpu/repack.rs): every GGUF block is kept byte for byte except that
// a lone leading f16 scale is padded to a whole word (Q4_0, Q5_0, Q8_0) and Q6_K gets two
// trailing pad bytes, so every block is a whole number of u32 words and a block index maps to
// a word offset with one multiply. F16/F32 rows are cut into "blocks" of 8 elements.
//
// A *unit* is 8 weights of one block: two runs of 4 consecutive elements at element offsets
// `lo_off` and `hi_off` inside the block. Every format splits this way (a quant word holds 4
// low nibbles and the 4 high nibbles of elements 16 or 32 further on), so kernels loop over
// units and never over formats.

struct Unit {
    lo: vec4<f32>,
    hi: vec4<f32>,
    lo_off: u32,
    hi_off: u32,
}

const T_F32: u32 = 0u;
const T_F16: u32 = 1u;
const T_Q4_0: u32 = 2u;
const T_Q4_1: u32 = 3u;
const T_Q5_0: u32 = 6u;
const T_Q5_1: u32 = 7u;
const T_Q8_0: u32 = 8u;
const T_Q4_K: u32 = 12u;
const T_Q5_K: u32 = 13u;
const T_Q6_K: u32 = 14u;

fn words_per_block(ty: u32) -> u32 {
    switch ty {
        case T_F32: { return 8u; }
        case T_F16: { return 4u; }
        case T_Q4_0, T_Q4_1: { return 5u; }
        case T_Q5_0, T_Q5_1: { return 6u; }
        case T_Q8_0: { return 9u; }
        case T_Q4_K: { return 36u; }
        case T_Q5_K: { return 44u; }
        default: { return 53u; } // Q6_K
    }
}

fn elems_per_block(ty: u32) -> u32 {
    switch ty {
        case T_F32, T_F16: { return 8u; }
        case T_Q4_K, T_Q5_K, T_Q6_K: { return 256u; }
        default: { return 32u; }
    }
}

fn units_per_block(ty: u32) -> u32 {
    return elems_per_block(ty) / 8u;
}

// F16/F32 rows may end inside a block (zero padded at repack); quantized rows never do.
fn has_ragged_rows(ty: u32) -> bool {
    return ty == T_F32 || ty == T_F16;
}

fn f16_at(word: u32) -> f32 {
    return unpack2x16float(word).x;
}

// The four bytes of `q`, masked, as floats: byte i of the word is element i.
fn bytes4(q: u32, mask: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(mask));
}

// The four bytes of `q` as signed int8.
fn i8x4(q: u32) -> vec4<f32> {
    let s = bitcast<vec4<i32>>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return vec4<f32>(s);
}

// Bit `bit` of each byte of `q`, times 16 (the fifth bit of a 5-bit quant).
fn bit_of_bytes(q: u32, bit: u32) -> vec4<f32> {
    return bytes4(q >> bit, 1u) * 16.0;
}

// Four consecutive bits of `q` starting at `first`, times 16 (Q5_0/Q5_1 keep one bit per element).
fn bits4(q: u32, first: u32) -> vec4<f32> {
    let b = (vec4<u32>(q) >> (vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u);
    return vec4<f32>(b) * 16.0;
}

// Byte `k` of the block starting at word `base`, with the bytes counted from word `first`.
fn byte_at(base: u32, first: u32, k: u32) -> u32 {
    return (wd(base + first + k / 4u) >> (8u * (k % 4u))) & 0xffu;
}

// K-quant 6-bit (scale, min) of sub-blocks 2j and 2j+1 (j in 0..4), from the 12 packed scale
// bytes at words 1..4 (ggml's get_scale_min_k4). Sub-block s < 4: scale = byte s & 63, min =
// byte s+4 & 63; s ≥ 4: the low nibble (scale) / high nibble (min) of byte s+4, topped by the
// two high bits of byte s-4 / s. Bytes s, s+4, s+8 share one position in words 1, 2, 3, so the
// three words are read once and the result selected without branches.
fn k_scales(base: u32, j: u32) -> vec4<f32> {
    return k_scales_of(vec3<u32>(wd(base + 1u), wd(base + 2u), wd(base + 3u)), j);
}

// k_scales from the three scale words.
fn k_scales_of(sw: vec3<u32>, j: u32) -> vec4<f32> {
    let s0 = sw.x;
    let s1 = sw.y;
    let s2 = sw.z;
    var r: vec4<u32>;
    for (var h = 0u; h < 2u; h++) {
        let s = 2u * j + h;
        let sh = 8u * (s % 4u);
        let b0 = (s0 >> sh) & 0xffu;
        let b1 = (s1 >> sh) & 0xffu;
        let b2 = (s2 >> sh) & 0xffu;
        let low = vec2<u32>(b0 & 63u, b1 & 63u);
        let high = vec2<u32>((b2 & 0xfu) | ((b0 >> 6u) << 4u), (b2 >> 4u) | ((b1 >> 6u) << 4u));
        let sm = select(high, low, s < 4u);
        r[2u * h] = sm.x;
        r[2u * h + 1u] = sm.y;
    }
    return vec4<f32>(r);
}

// Unit `u` (0..units_per_block) of the `ty` block starting at word `base` of the binding.
fn dequant_unit(ty: u32, base: u32, u: u32) -> Unit {
    var r: Unit;
    switch ty {
        case T_F32: {
            r.lo = bitcast<vec4<f32>>(vec4<u32>(wd(base), wd(base + 1u), wd(base + 2u), wd(base + 3u)));
            r.hi = bitcast<vec4<f32>>(vec4<u32>(wd(base + 4u), wd(base + 5u), wd(base + 6u), wd(base + 7u)));
            r.lo_off = 0u;
            r.hi_off = 4u;
        }
        case T_F16: {
            r.lo = vec4<f32>(unpack2x16float(wd(base)), unpack2x16float(wd(base + 1u)));
            r.hi = vec4<f32>(unpack2x16float(wd(base + 2u)), unpack2x16float(wd(base + 3u)));
            r.lo_off = 0u;
            r.hi_off = 4u;
        }
        // [d | pad][qs: 4 words]: element i = (nibble - 8) * d, low nibbles 0..16, high 16..32.
        case T_Q4_0: {
            let d = f16_at(wd(base));
            let q = wd(base + 1u + u);
            r.lo = (bytes4(q, 0xfu) - 8.0) * d;
            r.hi = (bytes4(q >> 4u, 0xfu) - 8.0) * d;
            r.lo_off = 4u * u;
            r.hi_off = 16u + 4u * u;
        }
        // [d | m][qs: 4 words]: element = nibble * d + m.
        case T_Q4_1: {
            let dm = unpack2x16float(wd(base));
            let q = wd(base + 1u + u);
            r.lo = bytes4(q, 0xfu) * dm.x + dm.y;
            r.hi = bytes4(q >> 4u, 0xfu) * dm.x + dm.y;
            r.lo_off = 4u * u;
            r.hi_off = 16u + 4u * u;
        }
        // [d | pad][qh][qs: 4 words]: bit i of qh is the fifth bit of element i.
        case T_Q5_0: {
            let d = f16_at(wd(base));
            let qh = wd(base + 1u);
            let q = wd(base + 2u + u);
            r.lo = (bytes4(q, 0xfu) + bits4(qh, 4u * u) - 16.0) * d;
            r.hi = (bytes4(q >> 4u, 0xfu) + bits4(qh, 16u + 4u * u) - 16.0) * d;
            r.lo_off = 4u * u;
            r.hi_off = 16u + 4u * u;
        }
        case T_Q5_1: {
            let dm = unpack2x16float(wd(base));
            let qh = wd(base + 1u);
            let q = wd(base + 2u + u);
            r.lo = (bytes4(q, 0xfu) + bits4(qh, 4u * u)) * dm.x + dm.y;
            r.hi = (bytes4(q >> 4u, 0xfu) + bits4(qh, 16u + 4u * u)) * dm.x + dm.y;
            r.lo_off = 4u * u;
            r.hi_off = 16u + 4u * u;
        }
        // [d | pad][qs: 8 words of int8].
        case T_Q8_0: {
            let d = f16_at(wd(base));
            r.lo = i8x4(wd(base + 1u + 2u * u)) * d;
            r.hi = i8x4(wd(base + 2u + 2u * u)) * d;
            r.lo_off = 8u * u;
            r.hi_off = 8u * u + 4u;
        }
        // [d | dmin][scales: 3 words][qs: 32 words]. Chunk j = u/8 of 64 elements: low nibbles
        // of qs words 8j..8j+8 are sub-block 2j, high nibbles sub-block 2j+1.
        case T_Q4_K: {
            let dm = unpack2x16float(wd(base));
            let j = u / 8u;
            let l = 4u * (u % 8u);
            let q = wd(base + 4u + u);
            let sm = k_scales(base, j);
            r.lo = bytes4(q, 0xfu) * (dm.x * sm.x) - dm.y * sm.y;
            r.hi = bytes4(q >> 4u, 0xfu) * (dm.x * sm.z) - dm.y * sm.w;
            r.lo_off = 64u * j + l;
            r.hi_off = 64u * j + 32u + l;
        }
        // Q4_K plus [qh: 8 words] before qs: bit 2j / 2j+1 of qh byte l is the fifth bit of
        // element l of sub-block 2j / 2j+1.
        case T_Q5_K: {
            let dm = unpack2x16float(wd(base));
            let j = u / 8u;
            let l = 4u * (u % 8u);
            let q = wd(base + 12u + u);
            let qh = wd(base + 4u + u % 8u);
            let sm = k_scales(base, j);
            r.lo = (bytes4(q, 0xfu) + bit_of_bytes(qh, 2u * j)) * (dm.x * sm.x) - dm.y * sm.y;
            r.hi = (bytes4(q >> 4u, 0xfu) + bit_of_bytes(qh, 2u * j + 1u)) * (dm.x * sm.z) - dm.y * sm.w;
            r.lo_off = 64u * j + l;
            r.hi_off = 64u * j + 32u + l;
        }
        // [ql: 32 words][qh: 16 words][scales: 4 words of int8][d | pad]. Half n = u/16 of
        // 128 elements; its ql word k (0..16) holds, for l = 4(k%8): if k < 8 elements l (low
        // nibbles, qh bits 0-1) and l+64 (high nibbles, qh bits 4-5); else l+32 (bits 2-3)
        // and l+96 (bits 6-7). Scale index = 8n + l/16 + {0, 2, 4, 6} for the four groups.
        default: {
            let d = f16_at(wd(base + 52u));
            let n = u / 16u;
            let k = u % 16u;
            let l = 4u * (k % 8u);
            let second = select(0u, 1u, k >= 8u);
            let q = wd(base + u);
            let qh = wd(base + 32u + 8u * n + k % 8u);
            let sh = 2u * second;
            let is_lo = 8u * n + l / 16u + sh;
            let sc_lo = f32(bitcast<i32>(byte_at(base, 48u, is_lo) << 24u) >> 24u);
            let sc_hi = f32(bitcast<i32>(byte_at(base, 48u, is_lo + 4u) << 24u) >> 24u);
            let q_lo = bytes4(q, 0xfu) + bytes4(qh >> sh, 3u) * 16.0 - 32.0;
            let q_hi = bytes4(q >> 4u, 0xfu) + bytes4(qh >> (sh + 4u), 3u) * 16.0 - 32.0;
            r.lo = q_lo * (d * sc_lo);
            r.hi = q_hi * (d * sc_hi);
            r.lo_off = 128u * n + l + 32u * second;
            r.hi_off = r.lo_off + 64u;
        }
    }
    return r;
}

// A *quad*: units 4g..4g+4 of a quantized block (32 weights). Every format's four units of a
// quad share their scales (one K-quant sub-block pair, one Q6_K scale pair, one Q4_0..Q8_0
// block), so a mat-vec lane loads and decodes them once per quad instead of once per unit,
// and loads the quad's quant words as runs of 4 (one 16-byte load where the run is aligned:
// `load4a`). F32/F16 have no quads (a "block" is one unit).
struct Quad {
    q: vec4<u32>,  // the quant words of units 4g..4g+4 (Q8_0: words 0..4 of the 8)
    q2: vec4<u32>, // Q8_0: quant words 4..8; Q5_K, Q6_K: the units' qh words
    h: u32,        // Q5_0, Q5_1: the block's qh word
    sc: vec4<f32>, // (scale, min) of the low and of the high runs: element = q · sc.x - sc.y, q · sc.z - sc.w
}

fn has_quads(ty: u32) -> bool {
    return ty != T_F32 && ty != T_F16;
}

// Load and decode quad g of the `ty` block starting at word `base`.
fn load_quad(ty: u32, base: u32, g: u32) -> Quad {
    var r: Quad;
    switch ty {
        // [d | pad or m][qh: Q5 only][qs: 4 words]. Q4_0/Q5_0 as q · d − offset · d
        // (offset 8 or 16), Q4_1/Q5_1 as q · d + m.
        case T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1: {
            let five = ty == T_Q5_0 || ty == T_Q5_1;
            let dm = unpack2x16float(wd(base));
            if five {
                r.h = wd(base + 1u);
            }
            r.q = load4(base + select(1u, 2u, five));
            if ty == T_Q4_0 || ty == T_Q5_0 {
                let off = select(8.0, 16.0, five) * dm.x;
                r.sc = vec4<f32>(dm.x, off, dm.x, off);
            } else {
                r.sc = vec4<f32>(dm.x, -dm.y, dm.x, -dm.y);
            }
        }
        case T_Q8_0: {
            let d = f16_at(wd(base));
            r.q = load4(base + 1u);
            r.q2 = load4(base + 5u);
            r.sc = vec4<f32>(d, 0.0, d, 0.0);
        }
        // 36 and 44 words: blocks, their headers, qh and qs runs are all 16-byte aligned.
        case T_Q4_K, T_Q5_K: {
            let head = load4a(base);
            let dm = unpack2x16float(head.x);
            let sm = k_scales_of(head.yzw, g / 2u);
            if ty == T_Q4_K {
                r.q = load4a(base + 4u + 4u * g);
            } else {
                r.q = load4a(base + 12u + 4u * g);
                r.q2 = load4a(base + 4u + 4u * (g % 2u));
            }
            r.sc = vec4<f32>(dm.x * sm.x, dm.y * sm.y, dm.x * sm.z, dm.y * sm.w);
        }
        default: { // Q6_K: see dequant_unit; a quad is k % 8 in 0..4 or 4..8 of half n
            let d = f16_at(wd(base + 52u));
            let n = g / 4u;
            let second = (g % 4u) / 2u;
            r.q = load4(base + 4u * g);
            r.q2 = load4(base + 32u + 8u * n + 4u * (g % 2u));
            let is_lo = 8u * n + g % 2u + 2u * second;
            let sc_lo = f32(bitcast<i32>(byte_at(base, 48u, is_lo) << 24u) >> 24u);
            let sc_hi = f32(bitcast<i32>(byte_at(base, 48u, is_lo + 4u) << 24u) >> 24u);
            r.sc = vec4<f32>(d * sc_lo, 0.0, d * sc_hi, 0.0);
        }
    }
    return r;
}

// Unit 4g + v of a loaded quad: the same weights as dequant_unit (Q4_0, Q5_0 and Q8_0 as
// q · d - offset · d rather than (q - offset) · d: both exact in f32).
fn quad_unit(ty: u32, qd: Quad, g: u32, v: u32) -> Unit {
    var r: Unit;
    let u = 4u * g + v;
    let q = qd.q[v];
    switch ty {
        case T_Q4_0, T_Q4_1: {
            r.lo = bytes4(q, 0xfu) * qd.sc.x - qd.sc.y;
            r.hi = bytes4(q >> 4u, 0xfu) * qd.sc.z - qd.sc.w;
            r.lo_off = 4u * u;
            r.hi_off = 16u + 4u * u;
        }
        case T_Q5_0, T_Q5_1: {
            r.lo = (bytes4(q, 0xfu) + bits4(qd.h, 4u * u)) * qd.sc.x - qd.sc.y;
            r.hi = (bytes4(q >> 4u, 0xfu) + bits4(qd.h, 16u + 4u * u)) * qd.sc.z - qd.sc.w;
            r.lo_off = 4u * u;
            r.hi_off = 16u + 4u * u;
        }
        case T_Q8_0: {
            let lo = select(qd.q2[(2u * v) % 4u], qd.q[(2u * v) % 4u], v < 2u);
            let hi = select(qd.q2[(2u * v + 1u) % 4u], qd.q[(2u * v + 1u) % 4u], v < 2u);
            r.lo = i8x4(lo) * qd.sc.x;
            r.hi = i8x4(hi) * qd.sc.z;
            r.lo_off = 8u * u;
            r.hi_off = 8u * u + 4u;
        }
        case T_Q4_K: {
            r.lo = bytes4(q, 0xfu) * qd.sc.x - qd.sc.y;
            r.hi = bytes4(q >> 4u, 0xfu) * qd.sc.z - qd.sc.w;
            r.lo_off = 64u * (u / 8u) + 4u * (u % 8u);
            r.hi_off = r.lo_off + 32u;
        }
        case T_Q5_K: {
            let j = u / 8u;
            let qh = qd.q2[v];
            r.lo = (bytes4(q, 0xfu) + bit_of_bytes(qh, 2u * j)) * qd.sc.x - qd.sc.y;
            r.hi = (bytes4(q >> 4u, 0xfu) + bit_of_bytes(qh, 2u * j + 1u)) * qd.sc.z - qd.sc.w;
            r.lo_off = 64u * j + 4u * (u % 8u);
            r.hi_off = r.lo_off + 32u;
        }
        default: { // Q6_K
            let k = u % 16u;
            let sh = select(0u, 2u, k >= 8u);
            let qh = qd.q2[v];
            let q_lo = bytes4(q, 0xfu) + bytes4(qh >> sh, 3u) * 16.0 - 32.0;
            let q_hi = bytes4(q >> 4u, 0xfu) + bytes4(qh >> (sh + 4u), 3u) * 16.0 - 32.0;
            r.lo = q_lo * qd.sc.x;
            r.hi = q_hi * qd.sc.z;
            r.lo_off = 128u * (u / 16u) + 4u * (k % 8u) + 16u * sh;
            r.hi_off = r.lo_off + 64u;
        }
    }
    return r;
}
