// RoPE, and the fused "rotate K, then store K and V into the cache" of each layer.
//
// Pairs: interleaved (2i, 2i+1) for GGUF Llama, whose Q/K rows llama.cpp permuted, or NeoX
// (i, i + head_dim/2) for Qwen2 (see config.rs RopeLayout). inv_freq comes from the CPU
// (ops::rope_inv_freq) so both backends rotate by bit-identical frequencies. The angle
// pos * inv_freq is rounded to f32 exactly as the CPU does, then reduced into [-pi, pi]
// before sin/cos: GPU sin/cos are only accurate near zero and angles reach thousands.

struct Params {
    n_heads: u32,   // heads in x (q: n_heads, k: n_kv_heads)
    head_dim: u32,
    pos0: u32,      // position of token 0
    n_tok: u32,
    neox: u32,      // 1: NeoX pairs, 0: interleaved
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inv_freq: array<f32>;     // (head_dim / 2)
@group(0) @binding(2) var<storage, read_write> x: array<act>;      // rope: (n_tok, n_heads, head_dim), in place
@group(0) @binding(3) var<storage, read> k: array<act>;            // rope_store_kv: (n_tok, n_heads, head_dim)
@group(0) @binding(4) var<storage, read> v: array<act>;            // (n_tok, n_heads, head_dim)
@group(0) @binding(5) var<storage, read_write> k_cache: array<act>; // (max_context, n_heads, head_dim)
@group(0) @binding(6) var<storage, read_write> v_cache: array<act>; // (max_context, n_heads, head_dim)

const TWO_PI_HI: f32 = 6.28125;                 // 2π split so that n * TWO_PI_HI is exact
const TWO_PI_LO: f32 = 0.0019353071795864769;   // 2π - TWO_PI_HI

fn cos_sin(angle: f32) -> vec2<f32> {
    let n = round(angle / 6.283185307179586);
    let a = (angle - n * TWO_PI_HI) - n * TWO_PI_LO;
    return vec2<f32>(cos(a), sin(a));
}

// Element indices (a, b) of pair i of a head, and its frequency index.
fn pair(i: u32) -> vec2<u32> {
    if p.neox != 0u {
        return vec2<u32>(i, i + p.head_dim / 2u);
    }
    return vec2<u32>(2u * i, 2u * i + 1u);
}

// One invocation per (token, head, pair).
@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let idx = gid.x;
    if idx >= p.n_tok * p.n_heads * half {
        return;
    }
    let i = idx % half;
    let head = idx / half; // token * n_heads + head
    let t = head / p.n_heads;
    let cs = cos_sin(f32(p.pos0 + t) * inv_freq[i]);
    let ab = pair(i) + vec2<u32>(head * p.head_dim);
    let x0 = f32(x[ab.x]);
    let x1 = f32(x[ab.y]);
    x[ab.x] = act(x0 * cs.x - x1 * cs.y);
    x[ab.y] = act(x0 * cs.y + x1 * cs.x);
}

// One invocation per (token, kv head, pair): rotated k and plain v go to cache row pos0 + t.
@compute @workgroup_size(64)
fn rope_store_kv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let idx = gid.x;
    if idx >= p.n_tok * p.n_heads * half {
        return;
    }
    let i = idx % half;
    let head = idx / half;
    let t = head / p.n_heads;
    let cs = cos_sin(f32(p.pos0 + t) * inv_freq[i]);
    let ab = pair(i) + vec2<u32>(head * p.head_dim);
    let dst = pair(i) + vec2<u32>((p.pos0 * p.n_heads + head) * p.head_dim);
    let k0 = f32(k[ab.x]);
    let k1 = f32(k[ab.y]);
    k_cache[dst.x] = act(k0 * cs.x - k1 * cs.y);
    k_cache[dst.y] = act(k0 * cs.y + k1 * cs.x);
    v_cache[dst.x] = v[ab.x];
    v_cache[dst.y] = v[ab.y];
}
