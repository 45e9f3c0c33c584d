// RMSNorm: out = x / sqrt(mean(x²) + eps) * weight, one workgroup per row.
//
// rms_norm: the rows are tokens of the residual stream (f32 on every adapter), normalized
// into act. rms_norm_heads: the rows are the
// heads of q or k (Qwen3's q_norm / k_norm), normalized in place before RoPE.

struct Params {
    dim: u32,       // row width: dim, or head_dim for rms_norm_heads
    n_tok: u32,     // rows: tokens, or tokens × heads for rms_norm_heads
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;            // rms_norm: (n_tok, dim)
@group(0) @binding(2) var<storage, read> weight: array<f32>;       // (dim)
@group(0) @binding(3) var<storage, read_write> out: array<act>;    // rms_norm: (n_tok, dim)
@group(0) @binding(4) var<storage, read_write> heads: array<act>;  // rms_norm_heads: (n_tok, dim), in place

var<workgroup> sums: array<f32, 64>;

// Sum of `s` over the workgroup's 64 invocations, returned to each of them.
fn workgroup_sum(lid: u32, s: f32) -> f32 {
    sums[lid] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if lid < k {
            sums[lid] += sums[lid + k];
        }
        workgroupBarrier();
    }
    return sums[0];
}

@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.dim;
    var s = 0.0;
    for (var i = lid; i < p.dim; i += 64u) {
        let v = f32(x[base + i]);
        s += v * v;
    }
    let scale = inverseSqrt(workgroup_sum(lid, s) / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += 64u) {
        out[base + i] = act(f32(x[base + i]) * scale * weight[i]);
    }
}

@compute @workgroup_size(64)
fn rms_norm_heads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.dim;
    var s = 0.0;
    for (var i = lid; i < p.dim; i += 64u) {
        let v = f32(heads[base + i]);
        s += v * v;
    }
    // In place is safe: each invocation rewrites only the elements it read itself.
    let scale = inverseSqrt(workgroup_sum(lid, s) / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += 64u) {
        heads[base + i] = act(f32(heads[base + i]) * scale * weight[i]);
    }
}
