// A minimal GGUF v3 writer for test fixtures: a header with string/u32/f32 metadata and F32
// tensors. Enough to build well-formed files the engine must reject for their *content*
// (an unsupported architecture), without committing binary fixtures.
const GGUF_TYPE = { u32: 4, f32: 6, string: 8 };
const GGML_F32 = 0;
const ALIGNMENT = 32;

class Writer {
  parts = [];
  u32(v) { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.parts.push(b); }
  u64(v) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.parts.push(b); }
  f32(v) { const b = Buffer.alloc(4); b.writeFloatLE(v); this.parts.push(b); }
  str(s) { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.parts.push(b); }
  bytes(b) { this.parts.push(b); }
  get length() { return this.parts.reduce((n, p) => n + p.length, 0); }
  done() { return Buffer.concat(this.parts); }
}

/**
 * @param {{arch?: string, metadata?: Array<[string, 'u32'|'f32'|'string', number|string]>,
 *          tensors?: Array<{name: string, dims: number[]}>}} spec
 */
export function tinyGguf({ arch = 'llama', metadata = [], tensors = [{ name: 'token_embd.weight', dims: [8, 16] }] } = {}) {
  const kvs = [['general.architecture', 'string', arch], ...metadata];
  const w = new Writer();
  w.bytes(Buffer.from('GGUF'));
  w.u32(3);
  w.u64(tensors.length);
  w.u64(kvs.length);
  for (const [key, type, value] of kvs) {
    w.str(key);
    w.u32(GGUF_TYPE[type]);
    w[type === 'string' ? 'str' : type](value);
  }
  let offset = 0;
  const sizes = tensors.map((t) => t.dims.reduce((a, b) => a * b, 1) * 4);
  tensors.forEach((t, i) => {
    w.str(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(GGML_F32);
    w.u64(offset);
    offset += Math.ceil(sizes[i] / ALIGNMENT) * ALIGNMENT;
  });
  w.bytes(Buffer.alloc((ALIGNMENT - (w.length % ALIGNMENT)) % ALIGNMENT));
  sizes.forEach((size) => w.bytes(Buffer.alloc(Math.ceil(size / ALIGNMENT) * ALIGNMENT)));
  return w.done();
}
