// out[t] = row ids[t] of a quantized embedding table, dequantized (dequant.wgsl), into the
// residual stream: f32 on every adapter (over thousands of tokens an f16 stream drifts).
//
// A table split by rows across bindings is looked up with one dispatch per part; each
// workgroup writes only when its token's row lies in this part.

struct Params {
    rows: u32,  // rows in this binding
    cols: u32,  // embedding width
    row0: u32,  // global index of this binding's first row
    n_tok: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<w_word>;      // (rows, blocks_per_row, words_per_block) repacked (Knobs::weight_access)
@group(0) @binding(2) var<storage, read> ids: array<u32>;       // (n_tok) token ids
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (n_tok, cols)

@compute @workgroup_size(64)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x;
    let id = ids[t];
    if t >= p.n_tok || id < p.row0 || id - p.row0 >= p.rows {
        return;
    }
    let upb = units_per_block(WTYPE);
    let epb = elems_per_block(WTYPE);
    let wpb = words_per_block(WTYPE);
    let bpr = (p.cols + epb - 1u) / epb;
    for (var i = lid; i < bpr * upb; i += 64u) {
        let blk = i / upb;
        let un = dequant_unit(WTYPE, ((id - p.row0) * bpr + blk) * wpb, i % upb);
        let c = blk * epb;
        for (var k = 0u; k < 4u; k++) {
            if c + un.lo_off + k < p.cols {
                out[t * p.cols + c + un.lo_off + k] = un.lo[k];
            }
            if c + un.hi_off + k < p.cols {
                out[t * p.cols + c + un.hi_off + k] = un.hi[k];
            }
        }
    }
}
