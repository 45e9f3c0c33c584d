// Sampling on the GPU: sampler::sample_with_uniform's chain on one row of logits, so a
// sampled decode step reads back the chosen id (4 bytes) instead of the vocabulary's logits.
//
// The CPU sorts the candidates (logit descending, equal logits in id order) and cuts that
// order: top-k, then top-p on the temperature-1 probabilities, then min-p, then one walk
// down the temperature-scaled probabilities to u × their sum. Every one of those cuts is a
// *prefix* of the sorted order, and a prefix is named by its last element (key, id): it
// holds every element with a larger key, and those with an equal key and an id ≤ id. So
// nothing is sorted here: each cut is found by bisection over the 32-bit order-preserving
// key of the f32 logit (the largest key whose "key ≥" part reaches the goal), then, when
// several logits equal that key, by bisection over the id within them. Each bisection step
// is one pass over the row with a workgroup reduction of a count or a probability mass.
//
// The candidate prefix: a row has 150k logits, and those passes (~100 of them) over all of
// them in one workgroup would cost more than the rest of a step on a fast GPU. So after
// the max, one pass histograms every logit's distance below it (BIN_W-wide bins), and
// where the cuts are sure to fall among the logits above some distance (top-k: at least k
// of them; top-p: their mass, one more pass, reaches the goal; min-p alone: every
// candidate is that close; temperature alone: their scaled mass passes the draw's goal,
// u × the row's), those — all logits with a key above a threshold, which is a
// prefix of the sorted order — are copied to `list` (at most LIST_CAP, in a fixed order:
// per invocation, then by index) and every later pass reads the list instead of the row.
// A bisection over the prefix asks the same questions as over the row (every sum at or
// above the threshold is over the same elements; below it, both reach the goal), so the
// cuts are the same up to f32 summation order. Otherwise the passes read the whole row.
// The prefix taken is the fewest distance bins that (by the histogram's counts and its
// fixed-point masses) hold every cut, checked exactly before it is used. A prefix of at most
// SMALL logits (a model's usual nucleus) skips the bisections: it is sorted in workgroup
// memory and one invocation walks it as the CPU does (f32 sums in sorted order).
//
// Differences from the CPU, by design: sums are f32 (tree-reduced) where the CPU sums f64
// in sorted order, so a cut can differ when the running sum lies within f32 rounding of
// its goal (top_p × total, or u × the scaled total); tests/gpu_sample.rs counts those.
//
// adjust: penalties and bans, one list entry per distinct id (the host deduplicates, so no
//         two invocations write the same logit).
// sample: one workgroup of WG invocations; writes the chosen id (NONE: no candidate).

struct Params {
    n: u32,          // vocabulary size (adjust: entries in the list)
    top_k: u32,      // 0 = off
    greedy: u32,     // 1: temperature 0, the argmax of the adjusted logits
    min_p_on: u32,   // 1: min_p > 0
    top_p: f32,      // 1 = off
    min_p: f32,
    inv_temp: f32,   // 1 / temperature
    penalty: f32,    // repeat penalty (adjust)
    uniform: f32,    // the step's uniform, in [0, 1)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>; // (≥ n) f32, row 0 is sampled
@group(0) @binding(2) var<storage, read> adjust_ids: array<u32>;  // (n_adjust): id | BANNED
@group(0) @binding(3) var<storage, read_write> result: array<u32>; // (1): the chosen id
@group(0) @binding(4) var<storage, read_write> list: array<vec2<u32>>; // (LIST_CAP): (logit bits, id) of the prefix

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
const BANNED: u32 = 0x80000000u;
// Metrics a pass sums: how many, the temperature-1 weight exp(l - max), the scaled weight.
const COUNT: u32 = 0u;
const MASS: u32 = 1u;
const SCALED: u32 = 2u;
// The candidate prefix: at most this many logits; distance bins of this width (in logits
// at temperature 1), this many (covering 32 below the max).
const LIST_CAP: u32 = 32768u;
const BIN_W: f32 = 0.25;
const BINS: u32 = 128u;
// A bin's temperature-1 mass is also summed, in fixed point (each weight exp(l - max) ≤ 1
// rounded down to 1/MASS_FX: a lower bound, and 151,936 × 4096 fits a u32), to pick the
// fewest bins that hold top-p's nucleus.
const MASS_FX: f32 = 4096.0;
// A prefix of at most SMALL logits is sorted in workgroup memory (bitonic) and walked in
// order by one invocation, as the CPU walks it, instead of bisected.
const SMALL: u32 = 1024u;

// -inf's bits, from a private variable: an infinite const-expression is a shader-creation
// error in WGSL (Tint rejects it; naga lets it pass). See argmax.wgsl.
var<private> NEG_INF_BITS: u32 = 0xff800000u;

@compute @workgroup_size(64)
fn adjust(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x < p.n {
        let e = adjust_ids[gid.x];
        let id = e & ~BANNED;
        let l = logits[id];
        if (e & BANNED) != 0u {
            logits[id] = bitcast<f32>(NEG_INF_BITS);
        } else {
            // llama.cpp / CTRL: shrink a positive logit, push a negative one further down.
            logits[id] = select(l * p.penalty, l / p.penalty, l > 0.0);
        }
    }
}

fn is_finite(bits: u32) -> bool {
    return (bits & 0x7f800000u) != 0x7f800000u;
}

// Order-preserving key of an f32: a < b (as numbers) iff key(a) < key(b) (as u32).
fn order_key(bits: u32) -> u32 {
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

fn key_value(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u));
}

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_k: array<u32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> out_f: f32;
var<workgroup> out_k: u32;
var<workgroup> out_i: u32;
var<workgroup> hist: array<atomic<u32>, BINS>;
var<workgroup> hist_mass: array<atomic<u32>, BINS>;
var<workgroup> hist_scaled: array<atomic<u32>, BINS>;
var<workgroup> sorted: array<vec2<u32>, SMALL>; // (key, id) of a small prefix
// Where the passes read: the row (list 0, n = the vocabulary) or the list (list 1, n = its
// length). Passed down as a value (from the uniform buffer or a workgroupUniformLoad) so
// that the passes' loop bounds stay uniform: a reduction's barrier follows every loop.
struct Src {
    list: u32,
    n: u32,
}

// Element j of `src`: (logit bits, id).
fn elem(src: Src, j: u32) -> vec2<u32> {
    if src.list == 1u {
        return list[j];
    }
    return vec2<u32>(bitcast<u32>(logits[j]), j);
}

// The distance bin of logit l below the max m (BINS: too far).
fn bin_of(l: f32, m: f32) -> u32 {
    return u32(clamp((m - l) / BIN_W, 0.0, f32(BINS)));
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier(); // the previous reduction's readers are done with red_f
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red_f[lid] += red_f[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out_f = red_f[0];
    }
    return workgroupUniformLoad(&out_f);
}

// The best (key, id): larger key first, then the lower id (NONE, NONE for no element).
fn reduce_best(lid: u32, k: u32, i: u32) -> vec2<u32> {
    workgroupBarrier();
    red_k[lid] = k;
    red_i[lid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let ok = red_k[lid + s];
            let oi = red_i[lid + s];
            if oi != NONE && (red_i[lid] == NONE || ok > red_k[lid] || (ok == red_k[lid] && oi < red_i[lid])) {
                red_k[lid] = ok;
                red_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out_k = red_k[0];
        out_i = red_i[0];
    }
    return vec2<u32>(workgroupUniformLoad(&out_k), workgroupUniformLoad(&out_i));
}

// The candidates a pass looks at: the prefix up to (cut_key, cut_id), finite logits only,
// and with min-p on, weights ≥ min_p.
struct Cands {
    m: f32, // the largest candidate logit
    cut_key: u32,
    cut_id: u32,
    min_p: bool,
}

fn metric(kind: u32, l: f32, m: f32) -> f32 {
    if kind == COUNT {
        return 1.0;
    }
    if kind == MASS {
        return exp(l - m);
    }
    return exp((l - m) * p.inv_temp);
}

// Whether logit l (bits, key) of id i is one of the candidates `cand`.
fn in_cands(l: f32, bits: u32, key: u32, i: u32, cand: Cands) -> bool {
    let in_cut = key > cand.cut_key || (key == cand.cut_key && i <= cand.cut_id);
    return is_finite(bits) && in_cut && (!cand.min_p || exp(l - cand.m) >= p.min_p);
}

// Sum of `kind` over the candidates with key ≥ at (eq: key == at and id ≤ id_max).
fn sum_where(src: Src, lid: u32, kind: u32, cand: Cands, at: u32, eq: bool, id_max: u32) -> f32 {
    var acc = 0.0;
    for (var j = lid; j < src.n; j += WG) {
        let e = elem(src, j);
        let i = e.y;
        let bits = e.x;
        let l = bitcast<f32>(bits);
        let key = order_key(bits);
        let hit = select(key >= at, key == at && i <= id_max, eq);
        if hit && in_cands(l, bits, key, i, cand) {
            acc += metric(kind, l, cand.m);
        }
    }
    return reduce_sum(lid, acc);
}

fn reaches(sum: f32, goal: f32, strict: bool) -> bool {
    return select(sum >= goal, sum > goal, strict);
}

// The first candidate of `cand`, in sorted order, at which the running sum of `kind` reaches
// `goal` (> when strict, else ≥): (key, id, 1), or (_, _, 0) when the whole set does not.
fn find_cut(src: Src, lid: u32, kind: u32, cand: Cands, goal: f32, strict: bool) -> vec3<u32> {
    let total = sum_where(src, lid, kind, cand, 0u, false, 0u);
    // The largest key v whose "key ≥ v" part reaches the goal. Always 32 steps (once lo
    // meets hi a step repeats lo), so no barrier sits under a data-dependent branch.
    var lo = 0u;
    var hi = NONE;
    for (var it = 0u; it < 32u; it++) {
        let mid = lo + (hi - lo) / 2u + ((hi - lo) & 1u);
        let g = sum_where(src, lid, kind, cand, mid, false, 0u);
        if lo < hi {
            if reaches(g, goal, strict) {
                lo = mid;
            } else {
                hi = mid - 1u;
            }
        }
    }
    let v = lo;
    // Within the logits equal to v (ids ascending), the first id that reaches the goal.
    var above = 0.0;
    if v != NONE {
        above = sum_where(src, lid, kind, cand, v + 1u, false, 0u);
    }
    var first_id = NONE;
    var count = 0.0;
    {
        var k = 0u;
        var best = NONE;
        var c = 0.0;
        for (var j = lid; j < src.n; j += WG) {
            let e = elem(src, j);
            let i = e.y;
            let bits = e.x;
            let l = bitcast<f32>(bits);
            let key = order_key(bits);
            if key == v && in_cands(l, bits, key, i, cand) {
                best = min(best, i);
                c += 1.0;
            }
        }
        first_id = reduce_best(lid, 0u, best).y;
        count = reduce_sum(lid, c);
    }
    var id_lo = first_id;
    if count > 1.0 {
        var id_hi = p.n - 1u;
        for (var it = 0u; it < 32u - countLeadingZeros(p.n); it++) {
            let mid = id_lo + (id_hi - id_lo) / 2u;
            let s = sum_where(src, lid, kind, cand, v, true, mid);
            if id_lo < id_hi {
                if reaches(above + s, goal, strict) {
                    id_hi = mid;
                } else {
                    id_lo = mid + 1u;
                }
            }
        }
    }
    return vec3<u32>(v, id_lo, u32(reaches(total, goal, strict)));
}

// Decide whether the cuts fall among the logits within some distance of the max m (see the
// top), and if so copy those to `list` and say to read it from now on. `topk_on`: a top-k
// cut comes first. Temperature alone (no top-k, top-p or min-p): the draw's cut, at u × the
// row's scaled mass, is the only one. Also returns the row's totals (temperature-1 mass for
// top-p, scaled mass for the draw by temperature alone, summed as sum_where sums them),
// taken in the histogram's pass: .x = the source's list flag (0 row, 1 list, 2 sorted), .y =
// its length, .z, .w = the totals' bits (.w: 0 unless by temperature alone).
fn use_prefix(lid: u32, m: f32, topk_on: bool) -> vec4<u32> {
    let temp_only = by_temperature_alone(topk_on);
    for (var b = lid; b < BINS; b += WG) {
        atomicStore(&hist[b], 0u);
        atomicStore(&hist_mass[b], 0u);
        atomicStore(&hist_scaled[b], 0u);
    }
    workgroupBarrier();
    var mass_all = 0.0;
    var scaled_all = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let l = logits[i];
        if is_finite(bitcast<u32>(l)) {
            let w = exp(l - m);
            mass_all += w;
            // The scaled weights only where the draw's cut picks the prefix.
            var ws = 0.0;
            if temp_only {
                ws = exp((l - m) * p.inv_temp);
                scaled_all += ws;
            }
            let b = bin_of(l, m);
            if b < BINS {
                atomicAdd(&hist[b], 1u);
                atomicAdd(&hist_mass[b], u32(w * MASS_FX));
                if temp_only {
                    atomicAdd(&hist_scaled[b], u32(ws * MASS_FX));
                }
            }
        }
    }
    let row_total = reduce_sum(lid, mass_all);
    let row_scaled = reduce_sum(lid, scaled_all);
    let draw_goal = p.uniform * row_scaled;
    if lid == 0u {
        // The fewest bins from the top that (by the histogram) hold every cut, else the
        // most whose logits fit the list; the exact check below decides.
        let goal_fx = p.top_p * row_total * 1.002 * MASS_FX;
        let draw_fx = draw_goal * 1.002 * MASS_FX;
        var count = 0u;
        var fx = 0u;
        var sfx = 0u;
        var nb = 0u;
        for (var b = 0u; b < BINS; b++) {
            let c = atomicLoad(&hist[b]);
            if count + c > LIST_CAP {
                break;
            }
            count += c;
            fx += atomicLoad(&hist_mass[b]);
            sfx += atomicLoad(&hist_scaled[b]);
            nb = b + 1u;
            var enough = false;
            if topk_on {
                enough = count >= p.top_k;
            } else if p.top_p < 1.0 {
                enough = f32(fx) >= goal_fx;
            } else if p.min_p_on == 1u {
                enough = exp(-f32(nb) * BIN_W) < p.min_p * 0.999;
            } else {
                enough = f32(sfx) > draw_fx;
            }
            if enough {
                break;
            }
        }
        out_i = nb;
    }
    let nb = workgroupUniformLoad(&out_i);
    let row = vec4<u32>(0u, p.n, bitcast<u32>(row_total), bitcast<u32>(row_scaled));
    // This invocation's share of the prefix, and the prefix's temperature-1 and scaled mass.
    var mine = 0u;
    var mass = 0.0;
    var scaled = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let l = logits[i];
        if is_finite(bitcast<u32>(l)) && bin_of(l, m) < nb {
            mine += 1u;
            mass += exp(l - m);
            if temp_only {
                scaled += exp((l - m) * p.inv_temp);
            }
        }
    }
    let prefix_mass = reduce_sum(lid, mass);
    let prefix_scaled = reduce_sum(lid, scaled);
    workgroupBarrier();
    red_k[lid] = mine;
    workgroupBarrier();
    if lid == 0u {
        var total = 0u;
        for (var t = 0u; t < WG; t++) {
            let c = red_k[t];
            red_k[t] = total;
            total += c;
        }
        out_k = total;
    }
    let count = workgroupUniformLoad(&out_k);
    var sure = false;
    if topk_on {
        sure = count >= p.top_k;
    } else if p.top_p < 1.0 {
        // The prefix's mass reaches top-p's goal, with room for rounding.
        sure = prefix_mass >= p.top_p * row_total * 1.001;
    } else if p.min_p_on == 1u {
        // Everything farther is below min_p × the max's weight.
        sure = exp(-f32(nb) * BIN_W) < p.min_p * 0.999;
    } else if temp_only {
        // The running scaled mass passes the draw's goal within the prefix.
        sure = prefix_scaled > draw_goal * 1.001;
    }
    if !sure || count == 0u {
        return row;
    }
    // Copy the prefix in a fixed order: each invocation's share at its offset.
    let small = count <= SMALL;
    var at = red_k[lid];
    for (var i = lid; i < p.n; i += WG) {
        let l = logits[i];
        if is_finite(bitcast<u32>(l)) && bin_of(l, m) < nb {
            let bits = bitcast<u32>(l);
            if small {
                sorted[at] = vec2<u32>(order_key(bits), i);
            } else {
                list[at] = vec2<u32>(bits, i);
            }
            at += 1u;
        }
    }
    storageBarrier();
    workgroupBarrier();
    return vec4<u32>(select(1u, 2u, small), count, row.z, row.w);
}

// No top-k, top-p or min-p cut: the draw (u × the row's scaled mass) is the only one.
fn by_temperature_alone(topk_on: bool) -> bool {
    return !topk_on && p.top_p >= 1.0 && p.min_p_on == 0u;
}

// Whether (key, id) a comes before b in the CPU's order: larger logit first, then lower id.
fn before(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y < b.y);
}

// Sort sorted[..n] into the CPU's order (bitonic; padded with entries that sort last).
fn sort_small(lid: u32, n: u32) {
    var size = 2u;
    while size < n {
        size <<= 1u;
    }
    for (var t = n + lid; t < size; t += WG) {
        sorted[t] = vec2<u32>(0u, NONE);
    }
    workgroupBarrier();
    for (var k = 2u; k <= size; k <<= 1u) {
        for (var j = k >> 1u; j > 0u; j >>= 1u) {
            for (var t = lid; t < size; t += WG) {
                let o = t ^ j;
                if o > t {
                    let a = sorted[t];
                    let b = sorted[o];
                    if select(before(a, b), before(b, a), (t & k) == 0u) {
                        sorted[t] = b;
                        sorted[o] = a;
                    }
                }
            }
            workgroupBarrier();
        }
    }
}

// The CPU's walk over the sorted candidates sorted[..n] (max logit m): top-k, top-p (its
// total: row_total, or the top-k's), min-p, then the draw (its total: the kept candidates',
// or by temperature alone the row's, row_scaled: then sorted[..n] is only the prefix that
// holds the draw). One invocation, in order.
fn walk_small(n: u32, row_total: f32, row_scaled: f32, topk_on: bool, m: f32) -> u32 {
    var keep = n;
    if topk_on {
        keep = min(p.top_k, n);
    }
    if p.top_p < 1.0 {
        var total = row_total;
        if topk_on {
            total = 0.0;
            for (var i = 0u; i < keep; i++) {
                total += exp(key_value(sorted[i].x) - m);
            }
        }
        let goal = p.top_p * total;
        var cum = 0.0;
        for (var i = 0u; i < keep; i++) {
            cum += exp(key_value(sorted[i].x) - m);
            if cum >= goal {
                keep = i + 1u;
                break;
            }
        }
    }
    if p.min_p_on == 1u {
        var s = 0u;
        while s < keep && exp(key_value(sorted[s].x) - m) >= p.min_p {
            s++;
        }
        keep = max(s, 1u);
    }
    var scaled = row_scaled;
    if !by_temperature_alone(topk_on) {
        scaled = 0.0;
        for (var i = 0u; i < keep; i++) {
            scaled += exp((key_value(sorted[i].x) - m) * p.inv_temp);
        }
    }
    let goal_u = p.uniform * scaled;
    var cum = 0.0;
    for (var i = 0u; i < keep; i++) {
        cum += exp((key_value(sorted[i].x) - m) * p.inv_temp);
        if goal_u < cum {
            return sorted[i].y;
        }
    }
    return sorted[keep - 1u].y;
}

@compute @workgroup_size(256)
fn sample(@builtin(local_invocation_index) lid: u32) {
    // The most likely candidate (ties: lowest id) and the number of candidates.
    var bk = 0u;
    var bi = NONE;
    var n_cand = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let bits = bitcast<u32>(logits[i]);
        let key = order_key(bits);
        if is_finite(bits) {
            n_cand += 1.0;
            if bi == NONE || key > bk {
                bk = key;
                bi = i;
            }
        }
    }
    let best = reduce_best(lid, bk, bi);
    let n_candidates = reduce_sum(lid, n_cand);
    if best.y == NONE || p.greedy == 1u {
        if lid == 0u {
            result[0] = best.y;
        }
        return;
    }
    let m = key_value(best.x);
    var cand = Cands(m, 0u, NONE, false);

    let topk_on = p.top_k > 0u && f32(p.top_k) < n_candidates;
    let prefix = use_prefix(lid, m, topk_on);
    // Without top-k, top-p's total is over every candidate: taken from the row.
    let row_total = bitcast<f32>(prefix.z);
    let row_scaled = bitcast<f32>(prefix.w);
    if prefix.x == 2u {
        sort_small(lid, prefix.y);
        if lid == 0u {
            result[0] = walk_small(prefix.y, row_total, row_scaled, topk_on, m);
        }
        return;
    }
    let src = Src(prefix.x, prefix.y);

    // top-k: the k-th candidate in sorted order ends the cand.
    if topk_on {
        let cut = find_cut(src, lid, COUNT, cand, f32(p.top_k), false);
        cand.cut_key = cut.x;
        cand.cut_id = cut.y;
    }
    // top-p: the first candidate at which the temperature-1 mass reaches top_p × total.
    if p.top_p < 1.0 {
        var total = row_total;
        if topk_on {
            total = sum_where(src, lid, MASS, cand, 0u, false, 0u);
        }
        let cut = find_cut(src, lid, MASS, cand, p.top_p * total, false);
        if cut.z == 1u {
            cand.cut_key = cut.x;
            cand.cut_id = cut.y;
        }
    }
    // min-p: weight exp(l - max) ≥ min_p; the most likely candidate (weight 1) always stays.
    cand.min_p = p.min_p_on == 1u;
    // The draw: the first candidate whose running scaled mass exceeds u × the scaled total.
    // By temperature alone every candidate counts, also those past the list: the row's total.
    var scaled_total = row_scaled;
    if !by_temperature_alone(topk_on) || src.list == 0u {
        scaled_total = sum_where(src, lid, SCALED, cand, 0u, false, 0u);
    }
    let cut = find_cut(src, lid, SCALED, cand, p.uniform * scaled_total, true);
    var chosen = cut.y;
    if cut.z == 0u {
        // Rounding left the goal at or above the sum: the last candidate owns it (as on
        // the CPU). Last = the smallest key, then the largest id: the best of (~key, n-1-id).
        var lk = 0u;
        var li = NONE;
        for (var j = lid; j < src.n; j += WG) {
            let e = elem(src, j);
            let i = e.y;
            let bits = e.x;
            let l = bitcast<f32>(bits);
            let key = order_key(bits);
            let rev = p.n - 1u - i;
            if in_cands(l, bits, key, i, cand) && (li == NONE || ~key > lk || (~key == lk && rev < li)) {
                lk = ~key;
                li = rev;
            }
        }
        chosen = p.n - 1u - reduce_best(lid, lk, li).y;
    }
    if lid == 0u {
        result[0] = chosen;
    }
}
