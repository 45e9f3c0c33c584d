// Causal grouped-query attention over the KV cache, split over the sequence
// ("flash-decoding"): decode has one query per head, far too little parallelism for a long
// cache, so positions are cut into splits that run in parallel and are merged afterwards.
//
// attend_group_split: one workgroup per (split, kv head, token) serving all G = n_heads /
//   n_kv_heads query heads that share the kv head (GQA), so each K and V row is read once
//   per group, not once per query head (Qwen2.5-0.5B: 7 times fewer loads). It walks its
//   positions 128 at a time with an online softmax per head: for the scores a lane takes two
//   positions (their K rows read 16 bytes at a time, dotted with the G queries in workgroup
//   memory: each query load serves both); for the values a lane takes a (head, 8 dims) pair
//   and reads one 16-byte V word (f16) per position, neighbouring lanes neighbouring words,
//   with the probabilities 4 positions a load. It writes, per query head, (max score m, sum
//   of exp l, unnormalized output acc). The loads per product matter most on a CPU adapter,
//   where (Mesa lavapipe) a load whose address is not a constant runs as a loop over lanes.
// attend_split: the same per query head, for head_dim not a multiple of 8 or groups larger
//   than MAX_GROUP.
// attend_merge: one workgroup per (head, token) rescales the splits by exp(m_s - M) and
//   normalizes. Token t sees positions < pos0 + t + 1, so prefill (many tokens) and decode
//   (one) are the same kernels. Query head h reads kv head h / (n_heads / n_kv_heads).

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,    // ≤ 256 (4 dims per lane)
    n_tok: u32,
    pos0: u32,        // cached positions before token 0
    split_len: u32,   // positions per split, a multiple of 64
    n_splits: u32,
    scale: f32,       // 1 / sqrt(head_dim)
}

const NEG_BIG: f32 = -3.0e38; // "no score yet": exp(NEG_BIG - m) is 0 without inf - inf = NaN

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<act>;              // (n_tok, n_heads, head_dim)
@group(0) @binding(2) var<storage, read> k_cache: array<act>;        // (max_context, n_kv_heads, head_dim)
@group(0) @binding(3) var<storage, read> v_cache: array<act>;        // (max_context, n_kv_heads, head_dim)
@group(0) @binding(4) var<storage, read_write> parts: array<f32>;    // (n_tok, n_heads, n_splits, head_dim + 2)
@group(0) @binding(5) var<storage, read> parts_in: array<f32>;       // attend_merge: the same buffer
@group(0) @binding(6) var<storage, read_write> out: array<act>;      // (n_tok, n_heads, head_dim)
@group(0) @binding(7) var<storage, read> k_words: array<vec4<u32>>;  // attend_group_split: k_cache in 16-byte words
@group(0) @binding(8) var<storage, read> v_words: array<vec4<u32>>;  // attend_group_split: v_cache in 16-byte words

var<workgroup> q_sh: array<f32, 256>;   // (head_dim)
var<workgroup> probs: array<f32, 64>;   // scores, then exp(score - m) of the current 64 positions

const MAX_GROUP: u32 = 8u;              // query heads per kv head that attend_group_split serves
const WORD_ELEMS: u32 = select(4u, 8u, ACT_F16); // act elements per 16-byte word
var<workgroup> qg_sh: array<vec4<f32>, 512>;      // (G, head_dim / 4): the group's queries × scale, 4 dims a load
var<workgroup> mg: array<f32, MAX_GROUP>;          // the running max of each head
const CHUNK: u32 = 128u;                           // positions per step of attend_group_split: two per lane
var<workgroup> pq: array<array<vec4<f32>, 32>, MAX_GROUP>; // (G, CHUNK positions): scores, then exp(score - m), 4 positions a load
var<workgroup> corr_sh: array<f32, MAX_GROUP>;     // exp(previous max - max) of each head
const MAX_PAIRS: u32 = 4u;                         // (head, 8 dims) pairs per lane: MAX_GROUP × 256 / 8 / 64

// act elements 4w..4w+4 of a 16-byte word read as f32: half 0 or 1 of it (f16), or all of it.
fn word_half(kw: vec4<u32>, half: u32) -> vec4<f32> {
    if ACT_F16 {
        if half == 0u {
            return vec4<f32>(unpack2x16float(kw.x), unpack2x16float(kw.y));
        }
        return vec4<f32>(unpack2x16float(kw.z), unpack2x16float(kw.w));
    }
    return bitcast<vec4<f32>>(kw);
}

@compute @workgroup_size(64)
fn attend_group_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x;
    let kvh = wid.y;
    let t = wid.z;
    let hd = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let h0 = kvh * group;
    let kv_dim = p.n_kv_heads * hd;
    let len = p.pos0 + t + 1u;
    let start = s * p.split_len;
    let end = min(start + p.split_len, len);
    let q0 = (t * p.n_heads + h0) * hd;
    for (var i = lid; i < group * hd / 4u; i += 64u) {
        let e = q0 + 4u * i;
        qg_sh[i] = vec4<f32>(f32(q[e]), f32(q[e + 1u]), f32(q[e + 2u]), f32(q[e + 3u])) * p.scale;
    }
    if lid < MAX_GROUP {
        mg[lid] = NEG_BIG;
    }
    // The values' lanes: pair lid + 64k = (head g, dims 8e..8e+8) for k < MAX_PAIRS.
    let octs = hd / 8u;
    let pairs = group * octs;
    var acc: array<vec4<f32>, 2 * MAX_PAIRS>; // (pair slot k: dims 8e..8e+4, 8e+4..8e+8)
    var l: array<f32, MAX_PAIRS>;             // sum of exp of the slot's head
    workgroupBarrier();
    let halves = WORD_ELEMS / 4u;
    for (var c0 = start; c0 < end; c0 += CHUNK) {
        // Scores: a lane per two positions (c0 + lid and c0 + 64 + lid, each query loaded
        // once for both), their K rows read 16 bytes at a time, dotted with the group's
        // queries. A position past `end` reads the last real row and scores NEG_BIG.
        let pos_a = c0 + lid;
        let pos_b = pos_a + 64u;
        var sa: array<f32, MAX_GROUP>;
        var sb: array<f32, MAX_GROUP>;
        let ka0 = (min(pos_a, end - 1u) * kv_dim + kvh * hd) / WORD_ELEMS;
        let kb0 = (min(pos_b, end - 1u) * kv_dim + kvh * hd) / WORD_ELEMS;
        for (var wd = 0u; wd < hd / WORD_ELEMS; wd++) {
            let kwa = k_words[ka0 + wd];
            let kwb = k_words[kb0 + wd];
            for (var hh = 0u; hh < halves; hh++) {
                let ka = word_half(kwa, hh);
                let kb = word_half(kwb, hh);
                let d = wd * WORD_ELEMS + 4u * hh;
                for (var g = 0u; g < MAX_GROUP; g++) {
                    if g < group {
                        let qv = qg_sh[(g * hd + d) / 4u];
                        sa[g] += dot(ka, qv);
                        sb[g] += dot(kb, qv);
                    }
                }
            }
        }
        for (var g = 0u; g < MAX_GROUP; g++) {
            sa[g] = select(NEG_BIG, sa[g], pos_a < end);
            sb[g] = select(NEG_BIG, sb[g], pos_b < end);
            if g < group {
                pq[g][lid / 4u][lid % 4u] = sa[g];
                pq[g][16u + lid / 4u][lid % 4u] = sb[g];
            }
        }
        workgroupBarrier();
        // The running max of head lid, and the factor that rescales what was summed so far.
        if lid < group {
            var mc = vec4<f32>(NEG_BIG);
            for (var j = 0u; j < CHUNK / 4u; j++) {
                mc = max(mc, pq[lid][j]);
            }
            let m_new = max(mg[lid], max(max(mc.x, mc.y), max(mc.z, mc.w)));
            corr_sh[lid] = exp(mg[lid] - m_new);
            mg[lid] = m_new;
        }
        workgroupBarrier();
        for (var g = 0u; g < MAX_GROUP; g++) {
            if g < group {
                pq[g][lid / 4u][lid % 4u] = exp(sa[g] - mg[g]);
                pq[g][16u + lid / 4u][lid % 4u] = exp(sb[g] - mg[g]);
            }
        }
        workgroupBarrier();
        // Values: a lane per (head, 8 dims), one 16-byte word (f16) per position, so each
        // position costs a lane two loads (its probability and its word) for 8 products.
        let n = min(CHUNK, end - c0);
        for (var k = 0u; k < MAX_PAIRS; k++) {
            let pair = lid + 64u * k;
            if pair < pairs {
                let g = pair / octs;
                let vb = kvh * hd + 8u * (pair % octs);
                let corr = corr_sh[g];
                var lo = acc[2u * k] * corr;
                var hi = acc[2u * k + 1u] * corr;
                var lk = l[k] * corr;
                for (var j = 0u; j < n; j += 4u) {
                    let p4 = pq[g][j / 4u];
                    lk += p4.x + p4.y + p4.z + p4.w;
                    for (var i = 0u; i < 4u; i++) {
                        // Past `end` (the last quad of a split) the probability is 0 and the
                        // row the last real one.
                        let e = min(c0 + j + i, end - 1u) * kv_dim + vb;
                        let w = v_words[e / WORD_ELEMS];
                        if ACT_F16 {
                            lo += p4[i] * word_half(w, 0u);
                            hi += p4[i] * word_half(w, 1u);
                        } else {
                            lo += p4[i] * bitcast<vec4<f32>>(w);
                            hi += p4[i] * bitcast<vec4<f32>>(v_words[e / WORD_ELEMS + 1u]);
                        }
                    }
                }
                acc[2u * k] = lo;
                acc[2u * k + 1u] = hi;
                l[k] = lk;
            }
        }
        workgroupBarrier();
    }
    for (var k = 0u; k < MAX_PAIRS; k++) {
        let pair = lid + 64u * k;
        if pair < pairs {
            let g = pair / octs;
            let e = pair % octs;
            let base = ((t * p.n_heads + h0 + g) * p.n_splits + s) * (hd + 2u);
            if e == 0u {
                parts[base] = mg[g];
                parts[base + 1u] = l[k];
            }
            for (var r = 0u; r < 4u; r++) {
                parts[base + 2u + 8u * e + r] = acc[2u * k][r];
                parts[base + 6u + 8u * e + r] = acc[2u * k + 1u][r];
            }
        }
    }
}

@compute @workgroup_size(64)
fn attend_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x;
    let h = wid.y;
    let t = wid.z;
    let hd = p.head_dim;
    let kv_dim = p.n_kv_heads * hd;
    let kv_off = (h / (p.n_heads / p.n_kv_heads)) * hd;
    let len = p.pos0 + t + 1u;
    let start = s * p.split_len;
    let end = min(start + p.split_len, len);
    for (var d = lid; d < hd; d += 64u) {
        q_sh[d] = f32(q[(t * p.n_heads + h) * hd + d]);
    }
    workgroupBarrier();
    var m = NEG_BIG;
    var l = 0.0;
    var acc = vec4<f32>(0.0); // dims lid, lid + 64, lid + 128, lid + 192
    for (var c0 = start; c0 < end; c0 += 64u) {
        let pos = c0 + lid;
        var score = NEG_BIG;
        if pos < end {
            var dot_qk = 0.0;
            let kb = pos * kv_dim + kv_off;
            for (var d = 0u; d < hd; d++) {
                dot_qk += q_sh[d] * f32(k_cache[kb + d]);
            }
            score = dot_qk * p.scale;
        }
        probs[lid] = score;
        workgroupBarrier();
        var m_chunk = NEG_BIG;
        for (var j = 0u; j < 64u; j++) {
            m_chunk = max(m_chunk, probs[j]);
        }
        let m_new = max(m, m_chunk);
        workgroupBarrier();
        probs[lid] = select(0.0, exp(score - m_new), pos < end);
        workgroupBarrier();
        let n = min(64u, end - c0);
        var sum = 0.0;
        let corr = exp(m - m_new);
        acc *= corr;
        for (var j = 0u; j < n; j++) {
            let pj = probs[j];
            sum += pj;
            let vb = (c0 + j) * kv_dim + kv_off;
            for (var r = 0u; r < 4u; r++) {
                let d = lid + 64u * r;
                if d < hd {
                    acc[r] += pj * f32(v_cache[vb + d]);
                }
            }
        }
        l = l * corr + sum;
        m = m_new;
        workgroupBarrier();
    }
    let base = ((t * p.n_heads + h) * p.n_splits + s) * (hd + 2u);
    if lid == 0u {
        parts[base] = m;
        parts[base + 1u] = l;
    }
    for (var r = 0u; r < 4u; r++) {
        let d = lid + 64u * r;
        if d < hd {
            parts[base + 2u + d] = acc[r];
        }
    }
}

@compute @workgroup_size(64)
fn attend_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let row = (t * p.n_heads + h) * p.n_splits;
    var m_max = NEG_BIG;
    for (var s = 0u; s < p.n_splits; s++) {
        m_max = max(m_max, parts_in[(row + s) * (hd + 2u)]);
    }
    var l_sum = 0.0;
    for (var s = 0u; s < p.n_splits; s++) {
        let b = (row + s) * (hd + 2u);
        l_sum += exp(parts_in[b] - m_max) * parts_in[b + 1u];
    }
    for (var d = lid; d < hd; d += 64u) {
        var o = 0.0;
        for (var s = 0u; s < p.n_splits; s++) {
            let b = (row + s) * (hd + 2u);
            o += exp(parts_in[b] - m_max) * parts_in[b + 2u + d];
        }
        out[(t * p.n_heads + h) * hd + d] = act(o / l_sum);
    }
}
