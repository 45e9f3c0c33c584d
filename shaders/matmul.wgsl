// y = W x for quantized W: mat-vec when decoding (TT = 1), a token-tiled mat-mul in prefill;
// and the two fused forms a decoder layer uses, so that a layer is six dispatches.
//
// Decode is bound by reading W once, prefill by how often each weight and each x value is
// loaded. A workgroup of 64 is 64 / LANES row groups of LANES lanes; each row group owns RPL
// rows. Lanes stride over the rows' 8-weight units (dequant.wgsl), so neighbouring lanes read
// neighbouring words of a row (coalesced); each lane loads the x values of its unit once per
// token and uses them for all RPL rows, and each dequantized unit serves TT tokens. A tree
// reduction in workgroup memory then sums the lanes of a row group. Loads per weight·token are roughly
// (4·TT + words_per_unit·RPL) / (8·RPL·TT): 0.375 for a decoded Q4_1 row, 0.16 in prefill.
// (On lavapipe every non-uniform load is a scalar loop over the SIMD lanes, so this count is
// its run time too.) In decode a lane takes a *quad* (4 units, 32 weights, dequant.wgsl) per
// step instead of a unit: a block's scales are loaded and decoded once per quad, not per
// unit, and its quant words come as runs of 4 — one 16-byte load where aligned (K-quants,
// on the GPU shape: Knobs::wide, Knobs::weight_access). Header loads per 32 weights: Q4_K 16 → 4
// (one 16-byte load when wide), Q5_0 8 → 2.
//
// Entry points:
// - matmul: y = W x (+ bias[row]) (+= y: the residual stream), over one weight type.
// - matmul_qkv: q, k, v of a layer from one matrix of concatenated rows (q | k | v, each
//   segment in its own type, crate/gpu/repack.rs FusedMatrix), + bias, then in the epilogue
//   RoPE of q and k (with ROPE) and the store of k and v at cache row pos0 + t. A row group
//   must hold both rows of a rotation pair, so with NeoX pairs (i, i + head_dim/2) its four
//   rows are (2j, 2j+1, half+2j, half+2j+1) of a head instead of four adjacent ones.
//   Without ROPE (Qwen3: q/k norm needs whole heads first) q and k are stored unrotated and
//   rope.wgsl qk_norm_rope finishes them.
// - matmul_gate_up: silu(W_gate x) * (W_up x) from one matrix gate | up: half the row
//   groups of a workgroup compute gate rows, the other half the same up rows, and the
//   reduction's workgroup memory brings the two together.
// The fused entries can fold the RMSNorm before them into their prologue (NORM_COLS > 0,
// decode only): every workgroup normalizes the token's x (a few KB) into workgroup memory
// itself and reads x from there.
//
// How many lanes share a row is a knob: 32 on GPUs (wide coalesced reads, enough workgroups
// for small matrices), 8 on CPU adapters such as lavapipe, where a lane is a SIMD slot and
// fewer, longer loops with a shorter reduction run about twice as fast.
//
// Knobs (prelude): WTYPE, WTYPE1, WTYPE2 (types of segments 0, 1, 2), TT (tokens per
// workgroup), LANES (lanes per row group, a power of two ≤ 32), act (activation type),
// ACT_F16, X_EVEN (x_off and x_stride even: f16 runs of 4 start on a word), out_t (y's
// type), NORM_COLS / X_SH_LEN (the folded RMSNorm's width, 0: none), ROPE, X_F32 (x is
// f32 whatever act is: the residual stream, which the folded RMSNorm reads).

struct Params {
    rows: u32,     // rows of W in this binding (all segments; a big plain matrix is split by rows across bindings)
    cols: u32,     // input width
    row0: u32,     // matmul: global index of this binding's first row (indexes y and bias)
    n_tok: u32,    // tokens
    x_off: u32,    // element offset of token 0 in x
    x_stride: u32, // elements between tokens in x
    y_stride: u32, // elements between tokens in y
    flags: u32,    // bit 0: add bias; bit 1: accumulate into y; bit 2: NeoX rope pairs
    groups_x: u32, // workgroups along x (row groups fold into x, y for > 65535)
    eps: f32,      // NORM_COLS > 0: the RMSNorm epsilon
    pos0: u32,     // matmul_qkv: position of token 0
    head_dim: u32, // matmul_qkv
    seg_rows: vec4<u32>, // fused: rows of segment s (q, k, v or gate, up); matmul: (rows, ..)
    seg_word: vec4<u32>, // fused: first word of segment s in w
}

const GROUPS: u32 = 64u / LANES; // row groups per workgroup (LANES lanes each)
const HALF: u32 = max(GROUPS / 2u, 1u); // matmul_gate_up: row groups per segment
const RPL: u32 = 4u;         // rows per lane: each loaded x serves this many rows
const ROWS_PER_WG: u32 = GROUPS * RPL;
const ACC: u32 = RPL * TT;   // accumulators per lane: (row, token)
const X_F16: bool = ACT_F16 && !X_F32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<w_word>;           // (rows, blocks_per_row, words_per_block) repacked (Knobs::weight_access)
@group(0) @binding(2) var<storage, read> x: array<u32>;              // (n_tok, x_stride) act (f32 with X_F32) from x_off, as words (f16: 2 per word)
@group(0) @binding(3) var<storage, read_write> y: array<out_t>;      // matmul: (n_tok, y_stride); matmul_gate_up: (n_tok, y_stride) act
@group(0) @binding(4) var<storage, read> bias: array<f32>;           // (row0 + rows); a dummy without flag bit 0
@group(0) @binding(5) var<storage, read> norm_w: array<f32>;         // NORM_COLS > 0: (cols), else a dummy
@group(0) @binding(6) var<storage, read> inv_freq: array<f32>;       // matmul_qkv: (head_dim / 2)
@group(0) @binding(7) var<storage, read_write> q_out: array<act>;    // matmul_qkv: (n_tok, seg_rows[0])
@group(0) @binding(8) var<storage, read_write> k_cache: array<act>;  // matmul_qkv: (max_context, seg_rows[1])
@group(0) @binding(9) var<storage, read_write> v_cache: array<act>;  // matmul_qkv: (max_context, seg_rows[2])

var<workgroup> partial: array<array<f32, ACC>, 64>; // (lanes × groups, RPL × TT)
var<workgroup> x_sh: array<vec4<f32>, X_SH_LEN>;    // NORM_COLS > 0: rms_norm(x) · norm_w, zero past cols

// Element i of x.
fn x1(i: u32) -> f32 {
    if X_F16 {
        return unpack2x16float(x[i / 2u])[i % 2u];
    }
    return bitcast<f32>(x[i]);
}

// x elements c..c+4 of token t (0 past `cols`: padding weights are zero, but x past the row
// may hold anything, even inf). c is a multiple of 4.
fn x4(t: u32, c: u32, ragged: bool) -> vec4<f32> {
    if NORM_COLS > 0u {
        return x_sh[c / 4u]; // zero padded to whole blocks
    }
    let i = p.x_off + t * p.x_stride + c;
    var v: vec4<f32>;
    if X_F16 && X_EVEN {
        v = vec4<f32>(unpack2x16float(x[i / 2u]), unpack2x16float(x[i / 2u + 1u]));
    } else if X_F16 {
        v = vec4<f32>(x1(i), x1(i + 1u), x1(i + 2u), x1(i + 3u));
    } else {
        v = bitcast<vec4<f32>>(vec4<u32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]));
    }
    if ragged {
        v = select(v, vec4<f32>(0.0), vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>(p.cols));
    }
    return v;
}

// The folded RMSNorm (decode: TT = 1, token t): x_sh = x / sqrt(mean(x²) + eps) · norm_w.
// Every workgroup computes it for itself; x is a few KB against the rows' weights.
fn norm_prologue(lid: u32, t: u32) {
    let base = p.x_off + t * p.x_stride;
    var s = 0.0;
    for (var i = lid; i < p.cols; i += 64u) {
        let v = x1(base + i);
        s += v * v;
    }
    partial[lid][0] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if lid < k {
            partial[lid][0] += partial[lid + k][0];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0][0] / f32(p.cols) + p.eps);
    for (var i = lid; i < X_SH_LEN * 4u; i += 64u) {
        var v = 0.0;
        if i < p.cols {
            v = x1(base + i) * scale * norm_w[i];
        }
        x_sh[i / 4u][i % 4u] = v;
    }
    workgroupBarrier();
}

// Words of one repacked `ty` row.
fn row_words(ty: u32) -> u32 {
    return (p.cols + elems_per_block(ty) - 1u) / elems_per_block(ty) * words_per_block(ty);
}

// This lane's share of W x for the row group's RPL rows (`rows`: row indices of a `ty`
// matrix starting at word `word0`) and tokens t0..t0+TT (clamped to the last real one).
// Kernels pass constant types, so each call compiles to a loop over one format.
fn rows_dot(ty: u32, word0: u32, rows: array<u32, RPL>, lane: u32, t0: u32) -> array<f32, ACC> {
    let upb = units_per_block(ty);
    let epb = elems_per_block(ty);
    let wpb = words_per_block(ty);
    let bpr = (p.cols + epb - 1u) / epb;
    let ragged = has_ragged_rows(ty);
    var starts: array<u32, RPL>;
    for (var k = 0u; k < RPL; k++) {
        starts[k] = word0 + rows[k] * bpr * wpb;
    }
    var acc: array<f32, ACC>;
    // Prefill (TT > 1) keeps the unit loop: its scale decodes serve TT tokens already, and
    // a CPU adapter spills the quads of TT-token steps to memory (half the speed).
    if !has_quads(ty) || TT > 1u {
        for (var i = lane; i < bpr * upb; i += LANES) {
            let blk = i / upb;
            let u = i % upb;
            let c = blk * epb;
            let first = dequant_unit(ty, starts[0] + blk * wpb, u);
            var xlo: array<vec4<f32>, TT>;
            var xhi: array<vec4<f32>, TT>;
            for (var t = 0u; t < TT; t++) {
                let tok = min(t0 + t, p.n_tok - 1u);
                xlo[t] = x4(tok, c + first.lo_off, ragged);
                xhi[t] = x4(tok, c + first.hi_off, ragged);
            }
            for (var k = 0u; k < RPL; k++) {
                var un = first;
                if k > 0u {
                    un = dequant_unit(ty, starts[k] + blk * wpb, u);
                }
                for (var t = 0u; t < TT; t++) {
                    acc[k * TT + t] += dot(un.lo, xlo[t]) + dot(un.hi, xhi[t]);
                }
            }
        }
        return acc;
    }
    // Decode of quantized rows: a lane takes a quad (4 units sharing their scales) per step,
    // loads the RPL rows' quads, then goes through its units: x of each unit loaded once for
    // all rows.
    let qpb = upb / 4u;
    for (var i = lane; i < bpr * qpb; i += LANES) {
        let blk = i / qpb;
        let g = i % qpb;
        let c = blk * epb;
        var quads: array<Quad, RPL>;
        for (var k = 0u; k < RPL; k++) {
            quads[k] = load_quad(ty, starts[k] + blk * wpb, g);
        }
        // Spelled out (not a loop): each call's v is a constant, so the quads' fields are
        // picked without indexing (a CPU adapter spills a private array indexed at run time).
        quad_step(ty, quads, g, 0u, c, t0, &acc);
        quad_step(ty, quads, g, 1u, c, t0, &acc);
        quad_step(ty, quads, g, 2u, c, t0, &acc);
        quad_step(ty, quads, g, 3u, c, t0, &acc);
    }
    return acc;
}

// Unit v of the RPL rows' loaded quads, for tokens t0..t0+TT: x of the unit loaded once.
fn quad_step(ty: u32, quads: array<Quad, RPL>, g: u32, v: u32, c: u32, t0: u32, acc: ptr<function, array<f32, ACC>>) {
    let first = quad_unit(ty, quads[0], g, v);
    var xlo: array<vec4<f32>, TT>;
    var xhi: array<vec4<f32>, TT>;
    for (var t = 0u; t < TT; t++) {
        let tok = min(t0 + t, p.n_tok - 1u);
        xlo[t] = x4(tok, c + first.lo_off, false);
        xhi[t] = x4(tok, c + first.hi_off, false);
    }
    for (var k = 0u; k < RPL; k++) {
        var un = first;
        if k > 0u {
            un = quad_unit(ty, quads[k], g, v);
        }
        for (var t = 0u; t < TT; t++) {
            (*acc)[k * TT + t] += dot(un.lo, xlo[t]) + dot(un.hi, xhi[t]);
        }
    }
}

// rows_dot over segment `seg` of a fused matrix (uniform across the row group).
fn segment_dot(seg: u32, rows: array<u32, RPL>, lane: u32, t0: u32) -> array<f32, ACC> {
    let word0 = p.seg_word[seg];
    if seg == 0u || (WTYPE1 == WTYPE && WTYPE2 == WTYPE) {
        return rows_dot(WTYPE, word0, rows, lane, t0);
    }
    if seg == 1u || WTYPE2 == WTYPE1 {
        return rows_dot(WTYPE1, word0, rows, lane, t0);
    }
    return rows_dot(WTYPE2, word0, rows, lane, t0);
}

// Sums partial over the lanes of each row group, into the group's first lane.
fn reduce_lanes(lane: u32, lid: u32) {
    if SUBGROUP_REDUCE {
        // A row group is LANES adjacent lanes of one subgroup (checked at load: lanes_probe).
        // The butterfly adds in the tree's order (lane 0: ((l0 + l4) + (l2 + l6)) + ...), so
        // the sums are the same bits, without a barrier per step.
        var a = partial[lid];
        for (var s = LANES / 2u; s > 0u; s >>= 1u) {
            for (var j = 0u; j < ACC; j++) {
                a[j] += shuffle_xor(a[j], s);
            }
        }
        partial[lid] = a;
        workgroupBarrier();
        return;
    }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            for (var j = 0u; j < ACC; j++) {
                partial[lid][j] += partial[lid + s][j];
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = lid / LANES;
    let lane = lid % LANES;
    let r0 = ((wid.x + wid.y * p.groups_x) * GROUPS + g) * RPL;
    let t0 = wid.z * TT;
    // Rows and tokens past the end are clamped to the last real one (their results are
    // never written), so the loop has no bounds branches.
    var rows: array<u32, RPL>;
    for (var k = 0u; k < RPL; k++) {
        rows[k] = min(r0 + k, p.rows - 1u);
    }
    partial[lid] = rows_dot(WTYPE, 0u, rows, lane, t0);
    reduce_lanes(lane, lid);
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

@compute @workgroup_size(64)
fn matmul_qkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = lid / LANES;
    let lane = lid % LANES;
    let t0 = wid.z * TT;
    if NORM_COLS > 0u {
        norm_prologue(lid, t0);
    }
    // Each workgroup lies in one segment (the segment is uniform across it, so a CPU
    // adapter branches instead of running every segment's loop under a mask). Segment sizes
    // are multiples of 4 (head_dim is): row groups past a segment's end redo its last rows
    // and write nothing.
    let wg = wid.x + wid.y * p.groups_x;
    let q_rows = p.seg_rows.x;
    let kv_rows = p.seg_rows.y;
    let q_wgs = (q_rows + ROWS_PER_WG - 1u) / ROWS_PER_WG;
    let kv_wgs = (kv_rows + ROWS_PER_WG - 1u) / ROWS_PER_WG;
    var seg = 0u;
    var start = 0u;     // the segment's first row in w's rows
    var seg_wg = wg;    // the workgroup's index within its segment
    if wg >= q_wgs {
        seg = 1u;
        start = q_rows;
        seg_wg = wg - q_wgs;
    }
    if wg >= q_wgs + kv_wgs {
        seg = 2u;
        start = q_rows + kv_rows;
        seg_wg = wg - q_wgs - kv_wgs;
    }
    let n_seg = select(kv_rows, q_rows, seg == 0u);
    let r0 = (seg_wg * GROUPS + g) * RPL; // within the segment
    let local = min(r0, n_seg - RPL);
    let hd = p.head_dim;
    let neox = ROPE && seg < 2u && (p.flags & 4u) != 0u;
    // Rows of the segment this group computes: (a, b) rotation pairs are rows (k, k + 2)
    // with NeoX pairs, (2k, 2k + 1) otherwise.
    var rows: array<u32, RPL>;
    for (var k = 0u; k < RPL; k++) {
        if neox {
            let head0 = local - local % hd;
            let jj = (local % hd) / 4u;
            rows[k] = head0 + select(2u * jj + k, hd / 2u + 2u * jj + k - 2u, k >= 2u);
        } else {
            rows[k] = local + k;
        }
    }
    partial[lid] = segment_dot(seg, rows, lane, t0);
    reduce_lanes(lane, lid);
    if r0 >= n_seg {
        return;
    }
    for (var j = lane; j < 2u * TT; j += LANES) {
        let pp = j / TT;
        let t = t0 + j % TT;
        if t >= p.n_tok {
            continue;
        }
        let ka = select(2u * pp, pp, neox);
        let kb = select(2u * pp + 1u, pp + 2u, neox);
        let ra = rows[ka];
        let rb = rows[kb];
        var va = partial[g * LANES][ka * TT + j % TT];
        var vb = partial[g * LANES][kb * TT + j % TT];
        if (p.flags & 1u) != 0u {
            va += bias[start + ra];
            vb += bias[start + rb];
        }
        if ROPE && seg < 2u {
            // Pair index within the head: NeoX rows (i, i + half), interleaved (2i, 2i + 1).
            let i = select((ra % hd) / 2u, ra % hd, neox);
            let cs = cos_sin(f32(p.pos0 + t) * inv_freq[i]);
            let a = va * cs.x - vb * cs.y;
            vb = va * cs.y + vb * cs.x;
            va = a;
        }
        if seg == 0u {
            q_out[t * q_rows + ra] = act(va);
            q_out[t * q_rows + rb] = act(vb);
        } else if seg == 1u {
            k_cache[(p.pos0 + t) * kv_rows + ra] = act(va);
            k_cache[(p.pos0 + t) * kv_rows + rb] = act(vb);
        } else {
            v_cache[(p.pos0 + t) * kv_rows + ra] = act(va);
            v_cache[(p.pos0 + t) * kv_rows + rb] = act(vb);
        }
    }
}

@compute @workgroup_size(64)
fn matmul_gate_up(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = lid / LANES;
    let lane = lid % LANES;
    let t0 = wid.z * TT;
    if NORM_COLS > 0u {
        norm_prologue(lid, t0);
    }
    let seg = min(g / HALF, 1u); // 0: gate rows, 1: the same rows of up
    let n = p.seg_rows.x;
    let r0 = ((wid.x + wid.y * p.groups_x) * HALF + g % HALF) * RPL;
    var rows: array<u32, RPL>;
    for (var k = 0u; k < RPL; k++) {
        rows[k] = min(r0 + k, n - 1u);
    }
    partial[lid] = segment_dot(seg, rows, lane, t0);
    reduce_lanes(lane, lid);
    if g >= HALF {
        return;
    }
    for (var j = lane; j < ACC; j += LANES) {
        let r = r0 + j / TT;
        let t = t0 + j % TT;
        if r < n && t < p.n_tok {
            let gate = partial[g * LANES][j];
            let up = partial[(g + HALF) * LANES][j];
            y[t * p.y_stride + r] = out_t(gate / (1.0 + exp(-gate)) * up);
        }
    }
}

// The load-time check of reduce_lanes under SUBGROUP_REDUCE (crate/gpu/mod.rs
// probe_subgroup_reduce): invocation i puts 4 i + j in accumulator j, each row group's first
// lane writes its sums. Needs TT = 1 and out_t = f32.
@compute @workgroup_size(64)
fn lanes_probe(@builtin(local_invocation_index) lid: u32) {
    let lane = lid % LANES;
    for (var j = 0u; j < ACC; j++) {
        partial[lid][j] = f32(4u * lid + j);
    }
    reduce_lanes(lane, lid);
    if lane == 0u {
        for (var j = 0u; j < ACC; j++) {
            y[(lid / LANES) * ACC + j] = out_t(partial[lid][j]);
        }
    }
}
