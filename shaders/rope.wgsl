// RoPE, and the fused "rotate K, then store K and V into the cache" of each layer; the
// angles come from rotary.wgsl.
//
// Pairs: interleaved (2i, 2i+1) for GGUF Llama, whose Q/K rows llama.cpp permuted, or NeoX
// (i, i + head_dim/2) for Qwen2 (see config.rs RopeLayout). inv_freq comes from the CPU
// (ops::rope_inv_freq) so both backends rotate by bit-identical frequencies.
//
// When the fused q/k/v mat-mul (matmul_qkv) runs, it rotates q and k itself; only Qwen3,
// whose q/k norm needs a whole head before the rotation, runs qk_norm_rope after it.

struct Params {
    n_heads: u32,   // heads in x (q: n_heads, k: n_kv_heads)
    head_dim: u32,
    pos0: u32,      // position of token 0
    n_tok: u32,
    neox: u32,      // 1: NeoX pairs, 0: interleaved
    n_kv_heads: u32, // qk_norm_rope: heads of k (n_heads counts those of q)
    eps: f32,       // qk_norm_rope: RMSNorm epsilon
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inv_freq: array<f32>;     // (head_dim / 2)
@group(0) @binding(2) var<storage, read_write> x: array<act>;      // rope: (n_tok, n_heads, head_dim), in place
@group(0) @binding(3) var<storage, read> k: array<act>;            // rope_store_kv: (n_tok, n_heads, head_dim)
@group(0) @binding(4) var<storage, read> v: array<act>;            // (n_tok, n_heads, head_dim)
@group(0) @binding(5) var<storage, read_write> k_cache: array<act>; // (max_context, n_heads, head_dim)
@group(0) @binding(6) var<storage, read_write> v_cache: array<act>; // (max_context, n_heads, head_dim)
@group(0) @binding(7) var<storage, read> q_norm: array<f32>;        // qk_norm_rope: (head_dim)
@group(0) @binding(8) var<storage, read> k_norm: array<f32>;        // qk_norm_rope: (head_dim)

var<workgroup> head_sh: array<f32, 256>; // qk_norm_rope: one head, normalized
var<workgroup> sums: array<f32, 64>;

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

// Qwen3 after matmul_qkv: q (in x) and k (already at cache row pos0 + t) are RMS-normalized
// per head (q_norm / k_norm weights), then rotated in place. One workgroup per (head, token);
// heads n_heads.. are the kv heads of k. head_dim ≤ 256.
@compute @workgroup_size(64)
fn qk_norm_rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let is_k = h >= p.n_heads;
    var base = (t * p.n_heads + h) * hd;
    if is_k {
        base = ((p.pos0 + t) * p.n_kv_heads + h - p.n_heads) * hd;
    }
    var s = 0.0;
    for (var d = lid; d < hd; d += 64u) {
        var v: f32;
        if is_k {
            v = f32(k_cache[base + d]);
        } else {
            v = f32(x[base + d]);
        }
        head_sh[d] = v;
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
    let scale = inverseSqrt(sums[0] / f32(hd) + p.eps);
    for (var i = lid; i < hd / 2u; i += 64u) {
        let ab = pair(i);
        var wa = q_norm[ab.x];
        var wb = q_norm[ab.y];
        if is_k {
            wa = k_norm[ab.x];
            wb = k_norm[ab.y];
        }
        let x0 = head_sh[ab.x] * scale * wa;
        let x1 = head_sh[ab.y] * scale * wb;
        let cs = cos_sin(f32(p.pos0 + t) * inv_freq[i]);
        let ra = act(x0 * cs.x - x1 * cs.y);
        let rb = act(x0 * cs.y + x1 * cs.x);
        if is_k {
            k_cache[base + ab.x] = ra;
            k_cache[base + ab.y] = rb;
        } else {
            x[base + ab.x] = ra;
            x[base + ab.y] = rb;
        }
    }
}
