// y = W x for quantized W: mat-vec when decoding (TT = 1), a token-tiled mat-mul in prefill.
//
// Decode is bound by reading W once, so each weight unit is dequantized once and used for TT
// tokens. Two rows per workgroup, 32 lanes per row: lanes stride over the row's 8-weight units
// (dequant.wgsl), then a tree reduction in workgroup memory. Optional epilogue: + bias[row]
// (Qwen2's q/k/v) and += y (the residual stream), so neither needs its own dispatch.
//
// Knobs (prelude): WTYPE, TT (tokens per workgroup), act (activation type), out_t (y's type).

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

const LANES: u32 = 32u;
const ROWS_PER_GROUP: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;          // (rows, blocks_per_row, words_per_block) repacked
@group(0) @binding(2) var<storage, read> x: array<act>;          // (n_tok, x_stride) from x_off
@group(0) @binding(3) var<storage, read_write> y: array<out_t>;  // (n_tok, y_stride)
@group(0) @binding(4) var<storage, read> bias: array<f32>;       // (row0 + rows); a dummy without flag bit 0

var<workgroup> partial: array<array<f32, TT>, 64>; // (lanes × rows, TT)

fn x4(t: u32, c: u32, cols: u32) -> vec4<f32> {
    let i = p.x_off + t * p.x_stride + c;
    var v = vec4<f32>(f32(x[i]), f32(x[i + 1u]), f32(x[i + 2u]), f32(x[i + 3u]));
    if has_ragged_rows() {
        // Padding weights are zero, but x past the row may hold anything (even inf).
        v = select(v, vec4<f32>(0.0), vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>(cols));
    }
    return v;
}

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * p.groups_x) * ROWS_PER_GROUP + lid / LANES;
    let lane = lid % LANES;
    let t0 = wid.z * TT;
    let upb = units_per_block();
    let epb = elems_per_block();
    let bpr = (p.cols + epb - 1u) / epb;
    var acc: array<f32, TT>;
    if r < p.rows {
        for (var i = lane; i < bpr * upb; i += LANES) {
            let blk = i / upb;
            let un = dequant_unit(r * bpr + blk, i % upb);
            let c = blk * epb;
            for (var t = 0u; t < TT; t++) {
                if t0 + t < p.n_tok {
                    acc[t] += dot(un.lo, x4(t0 + t, c + un.lo_off, p.cols)) + dot(un.hi, x4(t0 + t, c + un.hi_off, p.cols));
                }
            }
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            for (var t = 0u; t < TT; t++) {
                partial[lid][t] += partial[lid + s][t];
            }
        }
        workgroupBarrier();
    }
    if lane == 0u && r < p.rows {
        for (var t = 0u; t < TT; t++) {
            if t0 + t < p.n_tok {
                var v = partial[lid][t];
                if (p.flags & 1u) != 0u {
                    v += bias[p.row0 + r];
                }
                let yi = (t0 + t) * p.y_stride + p.row0 + r;
                if (p.flags & 2u) != 0u {
                    v += f32(y[yi]);
                }
                y[yi] = out_t(v);
            }
        }
    }
}
