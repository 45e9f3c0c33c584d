// y = W x for quantized W: mat-vec when decoding (TT = 1), a token-tiled mat-mul in prefill.
//
// Decode is bound by reading W once, prefill by how often each weight and each x value is
// loaded. A workgroup of 64 is 64 / LANES row groups of LANES lanes; each row group owns RPL
// adjacent rows. Lanes stride over the rows' 8-weight units (dequant.wgsl), so neighbouring lanes read
// neighbouring words of a row (coalesced); each lane loads the x values of its unit once per
// token and uses them for all RPL rows, and each dequantized unit serves TT tokens. A tree
// reduction in workgroup memory then sums the lanes of a row group. Loads per weight·token are roughly
// (4·TT + words_per_unit·RPL) / (8·RPL·TT): 0.375 for a decoded Q4_1 row, 0.16 in prefill.
// (On lavapipe every non-uniform load is a scalar loop over the SIMD lanes, so this count is
// its run time too.)
//
// Optional epilogue: + bias[row] (Qwen2's q/k/v) and += y (the residual stream), so neither
// needs its own dispatch.
//
// How many lanes share a row is a knob: 32 on GPUs (wide coalesced reads, enough workgroups
// for small matrices), 8 on CPU adapters such as lavapipe, where a lane is a SIMD slot and
// fewer, longer loops with a shorter reduction run about twice as fast.
//
// Knobs (prelude): WTYPE, TT (tokens per workgroup), LANES (lanes per row group, a power of
// two ≤ 64), act (activation type), ACT_F16,
// X_EVEN (x_off and x_stride even: f16 runs of 4 start on a word), out_t (y's type).

struct Params {
    rows: u32,     // rows of W in this binding (a big matrix is split by rows across bindings)
    cols: u32,     // input width
    row0: u32,     // global index of this binding's first row (indexes y and bias)
    n_tok: u32,    // tokens
    x_off: u32,    // element offset of token 0 in x
    x_stride: u32, // elements between tokens in x
    y_stride: u32, // elements between tokens in y
    flags: u32,    // bit 0: add bias; bit 1: accumulate into y
    groups_x: u32, // workgroups along x (row groups fold into x, y for > 65535)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const GROUPS: u32 = 64u / LANES; // row groups per workgroup (LANES lanes each)
const RPL: u32 = 4u;         // rows per lane: each loaded x serves this many rows
const ROWS_PER_WG: u32 = GROUPS * RPL;
const ACC: u32 = RPL * TT;   // accumulators per lane: (row, token)

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;          // (rows, blocks_per_row, words_per_block) repacked
@group(0) @binding(2) var<storage, read> x: array<u32>;          // (n_tok, x_stride) act from x_off, as words (f16: 2 per word)
@group(0) @binding(3) var<storage, read_write> y: array<out_t>;  // (n_tok, y_stride)
@group(0) @binding(4) var<storage, read> bias: array<f32>;       // (row0 + rows); a dummy without flag bit 0

var<workgroup> partial: array<array<f32, ACC>, 64>; // (lanes × groups, RPL × TT)

// Element i of x.
fn x1(i: u32) -> f32 {
    if ACT_F16 {
        return unpack2x16float(x[i / 2u])[i % 2u];
    }
    return bitcast<f32>(x[i]);
}

// x elements c..c+4 of token t (0 past `cols`: padding weights are zero, but x past the row
// may hold anything, even inf).
fn x4(t: u32, c: u32, cols: u32) -> vec4<f32> {
    let i = p.x_off + t * p.x_stride + c;
    var v: vec4<f32>;
    if ACT_F16 && X_EVEN {
        v = vec4<f32>(unpack2x16float(x[i / 2u]), unpack2x16float(x[i / 2u + 1u]));
    } else if ACT_F16 {
        v = vec4<f32>(x1(i), x1(i + 1u), x1(i + 2u), x1(i + 3u));
    } else {
        v = bitcast<vec4<f32>>(vec4<u32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]));
    }
    if has_ragged_rows() {
        v = select(v, vec4<f32>(0.0), vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>(cols));
    }
    return v;
}

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = lid / LANES;
    let lane = lid % LANES;
    let r0 = ((wid.x + wid.y * p.groups_x) * GROUPS + g) * RPL;
    let t0 = wid.z * TT;
    let upb = units_per_block();
    let epb = elems_per_block();
    let bpr = (p.cols + epb - 1u) / epb;
    // Rows and tokens past the end are clamped to the last real one (their results are
    // never written), so the loop has no bounds branches.
    var rows: array<u32, RPL>;
    for (var k = 0u; k < RPL; k++) {
        rows[k] = min(r0 + k, p.rows - 1u) * bpr;
    }
    var acc: array<f32, ACC>;
    for (var i = lane; i < bpr * upb; i += LANES) {
        let blk = i / upb;
        let u = i % upb;
        let c = blk * epb;
        let first = dequant_unit(rows[0] + blk, u);
        var xlo: array<vec4<f32>, TT>;
        var xhi: array<vec4<f32>, TT>;
        for (var t = 0u; t < TT; t++) {
            let tok = min(t0 + t, p.n_tok - 1u);
            xlo[t] = x4(tok, c + first.lo_off, p.cols);
            xhi[t] = x4(tok, c + first.hi_off, p.cols);
        }
        for (var k = 0u; k < RPL; k++) {
            var un = first;
            if k > 0u {
                un = dequant_unit(rows[k] + blk, u);
            }
            for (var t = 0u; t < TT; t++) {
                acc[k * TT + t] += dot(un.lo, xlo[t]) + dot(un.hi, xhi[t]);
            }
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            for (var j = 0u; j < ACC; j++) {
                partial[lid][j] += partial[lid + s][j];
            }
        }
        workgroupBarrier();
    }
    // Lane j of the group writes (row j / TT, token j % TT).
    for (var j = lane; j < ACC; j += LANES) {
        let r = r0 + j / TT;
        let t = t0 + j % TT;
        if r < p.rows && t < p.n_tok {
            var v = partial[g * LANES][j];
            if (p.flags & 1u) != 0u {
                v += bias[p.row0 + r];
            }
            let yi = t * p.y_stride + p.row0 + r;
            if (p.flags & 2u) != 0u {
                v += f32(y[yi]);
            }
            y[yi] = out_t(v);
        }
    }
}
