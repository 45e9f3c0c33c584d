// Hostile variants of a real GGUF file, generated deterministically from it: truncations,
// broken counts, zero / huge / overflowing dimensions, unknown types, bad offsets and
// alignments, NaN and out-of-range hyperparameters, broken vocabularies and string lengths,
// chat templates that loop or explode. Every variant is a file the engine must refuse with a
// typed error (at load, or — for a template, which only runs on a conversation — at the
// first chat request), without hanging and without killing the wasm module.
//
// Plain ES module over Uint8Array/DataView (no Node Buffer): the browser test imports it in
// the page (served at /tests/hostile-gguf.js) and builds the files there.

const T = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12 };
const SCALAR_BYTES = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
const U64_MAX = (1n << 64n) - 1n;

/** Parse a GGUF v2/v3 file: header, metadata and tensor infos; the data section stays bytes. */
export function parseGguf(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const u32 = () => { const v = view.getUint32(at, true); at += 4; return v; };
  const u64 = () => { const v = view.getBigUint64(at, true); at += 8; return v; };
  const str = () => { const n = Number(u64()); const s = new TextDecoder().decode(bytes.subarray(at, at + n)); at += n; return s; };
  const scalar = (type) => {
    const n = SCALAR_BYTES[type];
    const raw = bytes.slice(at, at + n);
    at += n;
    return raw;
  };
  const value = (type) => {
    if (type === T.string) return str();
    if (type === T.array) {
      const itemType = u32();
      const count = Number(u64());
      const items = [];
      for (let i = 0; i < count; i++) items.push(value(itemType));
      return { itemType, items };
    }
    return scalar(type);
  };
  if (u32() !== 0x46554747) throw new Error('not a GGUF file');
  const version = u32();
  const nTensors = Number(u64());
  const nKv = Number(u64());
  const kvs = [];
  for (let i = 0; i < nKv; i++) {
    const key = str();
    const type = u32();
    kvs.push({ key, type, value: value(type) });
  }
  const tensors = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nDims = u32();
    const dims = [];
    for (let d = 0; d < nDims; d++) dims.push(u64());
    tensors.push({ name, dims, type: u32(), offset: u64() });
  }
  const alignKv = kvs.find((kv) => kv.key === 'general.alignment');
  const alignment = alignKv ? new DataView(alignKv.value.buffer).getUint32(0, true) : 32;
  const dataStart = Math.ceil(at / alignment) * alignment;
  return { version, kvs, tensors, alignment, data: bytes.slice(dataStart) };
}

class Writer {
  parts = [];
  length = 0;
  push(b) { this.parts.push(b); this.length += b.length; }
  u32(v) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v >>> 0, true); this.push(b); }
  u64(v) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, BigInt(v)), true); this.push(b); }
  /** A string; raw bytes (a Uint8Array) stay as they are, valid UTF-8 or not. */
  str(s, length) {
    const b = s instanceof Uint8Array ? s : new TextEncoder().encode(s);
    this.u64(length ?? b.length);
    this.push(b);
  }
  value(type, v) {
    if (type === T.string) return this.str(v);
    if (type === T.array) {
      this.u32(v.itemType);
      this.u64(v.count ?? v.items.length);
      for (const item of v.items) this.value(v.itemType, item);
      return;
    }
    this.push(v);
  }
  done() {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const p of this.parts) { out.set(p, at); at += p.length; }
    return out;
  }
}

/**
 * Serialize a parsed (and perhaps edited) file. `g.counts` overrides the tensor / metadata
 * counts written in the header; `g.magic` and `g.version` the first fields; a kv may carry
 * `keyLength` (a lying key length); tensors `nDims` (a lying dimension count).
 */
export function writeGguf(g) {
  const w = new Writer();
  w.push(new TextEncoder().encode(g.magic ?? 'GGUF'));
  w.u32(g.version);
  w.u64(g.counts?.tensors ?? g.tensors.length);
  w.u64(g.counts?.kvs ?? g.kvs.length);
  for (const kv of g.kvs) {
    w.str(kv.key, kv.keyLength);
    w.u32(kv.type);
    w.value(kv.type, kv.value);
  }
  for (const t of g.tensors) {
    w.str(t.name);
    w.u32(t.nDims ?? t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(t.type);
    w.u64(t.offset);
  }
  const pad = (g.alignment - (w.length % g.alignment)) % g.alignment;
  w.push(new Uint8Array(pad));
  w.push(g.data);
  return w.done();
}

const clone = (g) => ({
  ...g,
  kvs: g.kvs.map((kv) => ({ ...kv, value: kv.type === T.array ? { ...kv.value, items: [...kv.value.items] } : kv.value })),
  tensors: g.tensors.map((t) => ({ ...t, dims: [...t.dims] })),
});

const u32Bytes = (v) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v >>> 0, true); return b; };
const f32Bytes = (v) => { const b = new Uint8Array(4); new DataView(b.buffer).setFloat32(0, v, true); return b; };

function kv(g, suffix) {
  const found = g.kvs.find((k) => k.key === suffix || k.key.endsWith(`.${suffix}`));
  if (!found) throw new Error(`the base file has no metadata '${suffix}'`);
  return found;
}

function tensor(g, name) {
  const found = g.tensors.find((t) => t.name === name);
  if (!found) throw new Error(`the base file has no tensor '${name}'`);
  return found;
}

/** Set a scalar hyperparameter (u32 or f32, as the base stores it) to `v`. */
function setNumber(key, v) {
  return (g) => {
    const k = kv(g, key);
    k.value = k.type === T.f32 ? f32Bytes(v) : u32Bytes(v);
  };
}

/** A metadata entry's value replaced by one of another type. */
function retype(key, type, value) {
  return (g) => {
    const k = kv(g, key);
    k.type = type;
    k.value = value;
  };
}

/** A chat template (added, or replacing the file's). */
function template(source) {
  return (g) => {
    const k = g.kvs.find((x) => x.key === 'tokenizer.chat_template');
    if (k) k.value = source;
    else g.kvs.push({ key: 'tokenizer.chat_template', type: T.string, value: source });
  };
}

/** SplitMix64-style generator over 32-bit halves: the same choices on every run. */
function rng(seed) {
  let s = BigInt(seed);
  return () => {
    s = BigInt.asUintN(64, s + 0x9e3779b97f4a7c15n);
    let z = s;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94d049bb133111ebn);
    return Number((z ^ (z >> 31n)) >> 11n) / 2 ** 53;
  };
}

/**
 * The variants of `base` (a GGUF file's bytes): `[{name, bytes, stage}]`, where `stage` is
 * 'load' (the load must reject) or 'chat' (the file loads; its first chat request must
 * reject — a broken template only runs then). Deterministic for a given base and seed.
 */
export function hostileVariants(base, { seed = 11 } = {}) {
  const g0 = parseGguf(base);
  const random = rng(seed);
  const out = [];
  const edit = (name, ...edits) => {
    const g = clone(g0);
    for (const e of edits) e(g);
    out.push({ name, bytes: writeGguf(g), stage: 'load' });
  };
  const chat = (name, source) => {
    const g = clone(g0);
    template(source)(g);
    out.push({ name, bytes: writeGguf(g), stage: 'chat' });
  };
  const whole = writeGguf(g0);
  const headerEnd = whole.length - g0.data.length;

  // Truncations: inside the magic, the counts, the metadata, the tensor infos, the padding,
  // the data (first tensor, middle, last byte). 24 cut points, half of them random.
  const cuts = [0, 2, 6, 12, 20, 23, 40, 100, headerEnd >> 2, headerEnd >> 1, headerEnd - 40, headerEnd - 1,
    headerEnd, headerEnd + 1, headerEnd + 1000, whole.length >> 1, whole.length - 4096, whole.length - 1];
  for (let i = 0; i < 6; i++) cuts.push(Math.floor(random() * (whole.length - 1)));
  for (const cut of cuts) out.push({ name: `truncated at ${cut} of ${whole.length}`, bytes: whole.slice(0, cut), stage: 'load' });

  // The fixed fields.
  edit('wrong magic', (g) => { g.magic = 'GGUG'; });
  edit('version 1', (g) => { g.version = 1; });
  edit('version 4', (g) => { g.version = 4; });
  edit('version 2^31', (g) => { g.version = 2 ** 31; });
  // Counts that lie.
  const nT = g0.tensors.length;
  const nK = g0.kvs.length;
  for (const [what, n] of [['0', 0n], ['+1', BigInt(nT + 1)], ['-1', BigInt(nT - 1)], ['2^32', 1n << 32n], ['2^63', 1n << 63n], ['u64 max', U64_MAX]]) {
    edit(`tensor count ${what}`, (g) => { g.counts = { tensors: n }; });
  }
  for (const [what, n] of [['0', 0n], ['+1', BigInt(nK + 1)], ['-1', BigInt(nK - 1)], ['2^40', 1n << 40n], ['u64 max', U64_MAX]]) {
    edit(`metadata count ${what}`, (g) => { g.counts = { kvs: n }; });
  }

  // Tensor shapes: a matrix, a norm vector and the embedding.
  const matrices = ['token_embd.weight', 'blk.0.attn_q.weight', 'blk.1.ffn_down.weight', 'output_norm.weight'];
  const dims = [['0', 0n], ['1', 1n], ['2^32', 1n << 32n], ['2^62', 1n << 62n], ['u64 max', U64_MAX]];
  for (const name of matrices) {
    for (const [what, d] of dims) edit(`${name} dim 0 = ${what}`, (g) => { tensor(g, name).dims[0] = d; });
  }
  edit('dims whose product overflows u64', (g) => { tensor(g, 'blk.0.attn_k.weight').dims = [1n << 33n, 1n << 33n]; });
  edit('a 5-D tensor', (g) => { tensor(g, 'blk.0.attn_v.weight').dims.push(1n, 1n, 1n); });
  edit('a 0-D tensor', (g) => { tensor(g, 'blk.0.attn_norm.weight').dims = []; });
  edit('n_dims 2^31 (a lying count)', (g) => { tensor(g, 'blk.0.attn_v.weight').nDims = 2 ** 31; });
  edit('transposed matrix', (g) => { tensor(g, 'blk.0.ffn_up.weight').dims.reverse(); });
  edit('a tensor missing', (g) => { g.tensors = g.tensors.filter((t) => t.name !== 'blk.1.attn_output.weight'); });
  edit('a tensor twice', (g) => { g.tensors.push({ ...tensor(g, 'blk.0.attn_q.weight'), dims: [...tensor(g, 'blk.0.attn_q.weight').dims] }); });

  // Types.
  for (const [what, ty] of [['4 (removed Q4_2)', 4], ['255', 255], ['2^31', 2 ** 31], ['u32 max', 0xffffffff]]) {
    edit(`blk.0.attn_k.weight type ${what}`, (g) => { tensor(g, 'blk.0.attn_k.weight').type = ty; });
  }

  // Offsets.
  const last = g0.tensors.reduce((a, t) => (t.offset > a.offset ? t : a));
  edit('an unaligned offset', (g) => { tensor(g, 'blk.0.ffn_gate.weight').offset += 1n; });
  edit('an offset past the end', (g) => { tensor(g, last.name).offset += BigInt(g0.data.length); });
  edit('offset 2^40', (g) => { tensor(g, 'blk.0.ffn_gate.weight').offset = 1n << 40n; });
  edit('offset u64 max - 31 (wraps)', (g) => { tensor(g, 'blk.0.ffn_gate.weight').offset = U64_MAX - 31n; });
  edit('the last tensor ends one block past the file', (g) => { tensor(g, last.name).offset += BigInt(g.alignment); });
  edit('general.alignment 0', (g) => { g.kvs.push({ key: 'general.alignment', type: T.u32, value: u32Bytes(0) }); });
  edit('general.alignment 3', (g) => { g.kvs.push({ key: 'general.alignment', type: T.u32, value: u32Bytes(3) }); });
  edit('general.alignment 2^31', (g) => { g.kvs.push({ key: 'general.alignment', type: T.u32, value: u32Bytes(2 ** 31) }); });

  // Hyperparameters.
  for (const [key, values] of [
    ['embedding_length', [0, 1, 2 ** 31, 65]],
    ['block_count', [0, 100000, 2 ** 32 - 1]],
    ['attention.head_count', [0, 3, 2 ** 31]],
    ['attention.head_count_kv', [0, 3, 64]],
    ['feed_forward_length', [0, 2 ** 31]],
    ['context_length', [0]],
    ['rope.dimension_count', [0, 7, 1024]],
  ]) {
    for (const v of values) edit(`${key} = ${v}`, setNumber(key, v));
  }
  for (const v of [NaN, Infinity, -1, 0]) {
    edit(`rms epsilon ${v}`, setNumber('attention.layer_norm_rms_epsilon', v));
    edit(`rope base ${v}`, setNumber('rope.freq_base', v));
  }
  edit('architecture mamba', (g) => { kv(g, 'general.architecture').value = 'mamba'; });
  edit('architecture as a u32', retype('general.architecture', T.u32, u32Bytes(7)));
  edit('head count as a string', retype('attention.head_count', T.string, 'four'));
  edit('head count as an array', retype('attention.head_count', T.array, { itemType: T.u32, items: [u32Bytes(4), u32Bytes(4)] }));
  edit('a metadata value type 99', (g) => { kv(g, 'general.name').type = 99; });
  edit('an array of type 99', (g) => { kv(g, 'tokenizer.ggml.merges').value.itemType = 99; });
  edit('a key length of 2^62', (g) => { kv(g, 'general.name').keyLength = 1n << 62n; });
  edit('the architecture key missing', (g) => { g.kvs = g.kvs.filter((k) => k.key !== 'general.architecture'); });

  // The vocabulary.
  edit('no tokens', (g) => { kv(g, 'tokenizer.ggml.tokens').value.items = []; });
  edit('token array count 2^62 (an allocation bomb)', (g) => { kv(g, 'tokenizer.ggml.tokens').value.count = 1n << 62n; });
  edit('tokens as u32s', (g) => { const k = kv(g, 'tokenizer.ggml.tokens'); k.value = { itemType: T.u32, items: k.value.items.map((_, i) => u32Bytes(i)) }; });
  edit('more tokens than the model has rows', (g) => { const k = kv(g, 'tokenizer.ggml.tokens').value; for (let i = 0; i < 64; i++) k.items.push(`extra${i}`); });
  edit('token types shorter than the tokens', (g) => { kv(g, 'tokenizer.ggml.token_type').value.items.length = 7; });
  edit('tokenizer model "unigram-ish"', (g) => { kv(g, 'tokenizer.ggml.model').value = 'unigram-ish'; });
  edit('pre-tokenizer "no-such-pre"', (g) => { kv(g, 'tokenizer.ggml.pre').value = 'no-such-pre'; });
  edit('token types as strings', (g) => { const k = kv(g, 'tokenizer.ggml.token_type'); k.value = { itemType: T.string, items: k.value.items.map(() => 'normal') }; });
  edit('merges as u32s', (g) => { const k = kv(g, 'tokenizer.ggml.merges'); k.value = { itemType: T.u32, items: k.value.items.map((_, i) => u32Bytes(i)) }; });
  edit('tokenizer model as an array', retype('tokenizer.ggml.model', T.array, { itemType: T.string, items: ['gpt2'] }));
  edit('a merge of unknown tokens', (g) => { kv(g, 'tokenizer.ggml.merges').value.items.push('qqqq zzzz'); });
  edit('a merge without a space', (g) => { kv(g, 'tokenizer.ggml.merges').value.items.unshift('nospace'); });

  // Chat templates: these load (a template only runs on a conversation) and their first
  // chat request must fail with `chat_template`, within the render's bound.
  chat('a template that loops', '{% for i in range(1000000000) %}{{ i }}{% endfor %}');
  chat('nested loops', '{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}');
  chat('a recursive macro', '{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}');
  chat('a repeated string', "{{ 'x' * 4000000000 }}");
  // Each doubling is one instruction: neither the fuel nor the output bound sees these; the
  // value limits of crate/chat/guard.rs do.
  chat('a string doubled in a loop', "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}");
  chat('a string doubled by a macro', "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ d('xxxxxxxx', 60) }}");
  chat('a join with a huge separator', "{{ range(100000) | list | join(range(100000) | list | join(',')) }}");
  chat('a nested list printed', "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l|tojson }}");
  chat('a syntax error', '{% for m in messages %}{{ m.content ');
  chat('raise_exception', "{{ raise_exception('no') }}");
  return out;
}
