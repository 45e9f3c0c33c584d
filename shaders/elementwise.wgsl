// Element-wise kernels, one invocation per element.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<act>; // (n): gate / x, updated in place
@group(0) @binding(2) var<storage, read> b: array<act>;       // (n): up / y

// SwiGLU: a = silu(a) * b = a / (1 + exp(-a)) * b.
@compute @workgroup_size(64)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if i < p.n {
        let g = f32(a[i]);
        a[i] = act(g / (1.0 + exp(-g)) * f32(b[i]));
    }
}

// Residual add: a += b.
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if i < p.n {
        a[i] = act(f32(a[i]) + f32(b[i]));
    }
}
