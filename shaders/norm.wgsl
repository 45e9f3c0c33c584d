// RMSNorm: out = x / sqrt(mean(x²) + eps) * weight, one workgroup per token.

struct Params {
    dim: u32,
    n_tok: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<act>;         // (n_tok, dim)
@group(0) @binding(2) var<storage, read> weight: array<f32>;    // (dim)
@group(0) @binding(3) var<storage, read_write> out: array<act>; // (n_tok, dim)

var<workgroup> sums: array<f32, 64>;

@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * p.dim;
    var s = 0.0;
    for (var i = lid; i < p.dim; i += 64u) {
        let v = f32(x[base + i]);
        s += v * v;
    }
    sums[lid] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if lid < k {
            sums[lid] += sums[lid + k];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(sums[0] / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += 64u) {
        out[base + i] = act(f32(x[base + i]) * scale * weight[i]);
    }
}
