// Greedy pick on the GPU, so a decode step reads back 4 bytes instead of the logits.
//
// ban: logits of banned ids (the thinking-budget controller's masks) become -inf.
// argmax_part: each workgroup reduces a slice to (value, index); argmax_final reduces those.
// Ties go to the lowest index and NaN never wins, as in ops::argmax.

struct Params {
    n: u32,         // vocab size (ban: number of banned ids)
    offset: u32,    // element offset of the logits row
    per_group: u32, // argmax_part: elements per workgroup
    n_parts: u32,   // argmax_final: partial results
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>; // (n_rows, vocab)
@group(0) @binding(2) var<storage, read> banned: array<u32>;       // (n_banned)
@group(0) @binding(3) var<storage, read> logits_in: array<f32>;    // argmax_part: (n_rows, vocab)
@group(0) @binding(4) var<storage, read_write> parts: array<vec2<u32>>; // (n_parts): (f32 bits, index)
@group(0) @binding(5) var<storage, read> parts_in: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read_write> result: array<u32>; // (1): the winning id

@compute @workgroup_size(64)
fn ban(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x < p.n {
        logits[p.offset + banned[gid.x]] = bitcast<f32>(0xff800000u);
    }
}

var<workgroup> best_v: array<f32, 64>;
var<workgroup> best_i: array<u32, 64>;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

fn reduce_workgroup(lid: u32) {
    for (var s = 32u; s > 0u; s >>= 1u) {
        if lid < s && better(best_v[lid + s], best_i[lid + s], best_v[lid], best_i[lid]) {
            best_v[lid] = best_v[lid + s];
            best_i[lid] = best_i[lid + s];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn argmax_part(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var bv = bitcast<f32>(0xff800000u);
    var bi = 0xffffffffu;
    let start = wid.x * p.per_group;
    let end = min(start + p.per_group, p.n);
    for (var i = start + lid; i < end; i += 64u) {
        let v = logits_in[p.offset + i];
        if better(v, i, bv, bi) {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    reduce_workgroup(lid);
    if lid == 0u {
        parts[wid.x] = vec2<u32>(bitcast<u32>(best_v[0]), best_i[0]);
    }
}

@compute @workgroup_size(64)
fn argmax_final(@builtin(local_invocation_index) lid: u32) {
    var bv = bitcast<f32>(0xff800000u);
    var bi = 0xffffffffu;
    for (var i = lid; i < p.n_parts; i += 64u) {
        let v = bitcast<f32>(parts_in[i].x);
        if better(v, parts_in[i].y, bv, bi) {
            bv = v;
            bi = parts_in[i].y;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    reduce_workgroup(lid);
    if lid == 0u {
        // All -inf or NaN: ops::argmax answers 0.
        result[0] = select(best_i[0], 0u, best_i[0] == 0xffffffffu);
    }
}
