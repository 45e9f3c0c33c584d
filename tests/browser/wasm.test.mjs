// The wasm module in headless Chromium: it instantiates, WebGPU is there, model files stream
// through the real GGUF loader with progress, the cache serves a second load, and broken
// files give a PensiveError while the page (and the module) stay alive.
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, readSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { SMOLLM2, root, startBrowser, withPensive } from './harness.mjs';
import { tinyGguf } from './gguf-writer.mjs';

const SMOLLM2_BYTES = 98_362_432;
/** Header bytes of SmolLM2 kept in the truncated fixture: enough for the header, not the tensors. */
const TRUNCATED_BYTES = 4 << 20;

let browser;
let fixtures;

function requireModel(path) {
  if (existsSync(join(root, path))) return true;
  // CI sets PENSIVE_REQUIRE_MODELS=1: a missing model is then a failure, never a skip.
  assert.ok(!process.env.PENSIVE_REQUIRE_MODELS, `${path} is missing (run scripts/fetch-models.sh)`);
  console.error(`SKIPPING: ${path} is missing (run scripts/fetch-models.sh)`);
  return false;
}

before(async () => {
  fixtures = mkdtempSync(join(tmpdir(), 'pensive-fixtures-'));
  // A GGUF whose header says it is a Mamba model: well-formed, unsupported.
  writeFileSync(join(fixtures, 'mamba.gguf'), tinyGguf({ arch: 'mamba' }));
  // Garbage: not GGUF at all.
  writeFileSync(join(fixtures, 'garbage.gguf'), Buffer.from('this is not a model file, just text\n'.repeat(1000)));
  if (existsSync(join(root, SMOLLM2))) {
    const buf = Buffer.alloc(TRUNCATED_BYTES);
    const fd = openSync(join(root, SMOLLM2), 'r');
    readSync(fd, buf, 0, TRUNCATED_BYTES, 0);
    closeSync(fd);
    writeFileSync(join(fixtures, 'truncated.gguf'), buf);
    copyFileSync(join(root, SMOLLM2), join(fixtures, 'smollm2-copy.gguf'));
  }
  browser = await startBrowser({ extraMounts: { '/fixtures/': fixtures } });
});

after(async () => {
  await browser?.close();
  if (fixtures) rmSync(fixtures, { recursive: true, force: true });
});

test('the wasm module instantiates and reports the crate version', async () => {
  const page = await browser.newPage();
  const v = await withPensive(page, (m) => m.Pensive.version());
  const cargoVersion = readFileSync(join(root, 'Cargo.toml'), 'utf8').match(/^version = "([^"]+)"/m)[1];
  assert.equal(v, cargoVersion);
  assert.deepEqual(page.errors, []);
});

test('WebGPU is available in headless Chromium (SwiftShader adapter)', async () => {
  const page = await browser.newPage();
  const info = await page.evaluate(async () => {
    if (!navigator.gpu) return { gpu: false };
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return { gpu: true, adapter: false };
    // A real compute dispatch: doubles 4 floats.
    const device = await adapter.requestDevice();
    const module = device.createShaderModule({ code: `
      @group(0) @binding(0) var<storage, read_write> x: array<f32>;
      @compute @workgroup_size(4) fn main(@builtin(global_invocation_id) i: vec3u) { x[i.x] = 2.0 * x[i.x]; }` });
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const data = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(data, 0, new Float32Array([1, 2, 3, 4.5]));
    const read = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: data } }] }));
    pass.dispatchWorkgroups(1);
    pass.end();
    enc.copyBufferToBuffer(data, 0, read, 0, 16);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const out = [...new Float32Array(read.getMappedRange())];
    return { gpu: true, adapter: true, fallback: adapter.info?.isFallbackAdapter ?? null, f16: adapter.features.has('shader-f16'), out };
  });
  assert.equal(info.gpu, true, 'navigator.gpu missing: --enable-unsafe-webgpu not applied?');
  assert.equal(info.adapter, true, 'no WebGPU adapter: was --disable-gpu passed?');
  assert.deepEqual(info.out, [2, 4, 6, 9]);
});

test('a SmolLM2 download streams through the GGUF loader with progress, then loads from the cache', async (t) => {
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const page = await browser.newPage();
  const run = (m) => {
    const progress = [];
    return m.Pensive.inspect({ model: '/fixtures/smollm2-copy.gguf', onProgress: (p) => progress.push(p) })
      .then((r) => ({ ...r, progress }));
  };
  const first = await withPensive(page, run);
  assert.equal(first.error, undefined, JSON.stringify(first.error));
  assert.equal(first.origin, 'network');
  assert.equal(first.bytes, SMOLLM2_BYTES);
  assert.equal(first.config.arch, 'llama');
  assert.equal(first.config.n_layers, 30);
  assert.equal(first.config.dim, 576);
  const downloads = first.progress.filter((p) => p.phase === 'download');
  assert.ok(downloads.length >= 10, `only ${downloads.length} download progress events`);
  assert.ok(downloads.every((p) => p.total === SMOLLM2_BYTES));
  assert.ok(downloads.every((p, i) => i === 0 || p.loaded >= downloads[i - 1].loaded), 'progress went backwards');
  assert.equal(downloads.at(-1).loaded, SMOLLM2_BYTES);

  // The server is now told to refuse the file: the second load must come from the cache.
  rmSync(join(fixtures, 'smollm2-copy.gguf'));
  const second = await withPensive(page, run);
  assert.equal(second.error, undefined, JSON.stringify(second.error));
  assert.equal(second.origin, 'cache');
  assert.equal(second.bytes, SMOLLM2_BYTES);
  assert.deepEqual(second.config, first.config);
  assert.ok(second.progress.some((p) => p.phase === 'cache' && p.loaded === SMOLLM2_BYTES));
});

test('broken model files give a PensiveError with a code, and the page survives', async (t) => {
  const page = await browser.newPage();
  const inspect = (m, model) => m.Pensive.inspect({ model, cache: false });
  const garbage = await withPensive(page, inspect, '/fixtures/garbage.gguf');
  assert.deepEqual([garbage.error?.name, garbage.error?.code], ['PensiveError', 'model_format'], JSON.stringify(garbage));

  const mamba = await withPensive(page, inspect, '/fixtures/mamba.gguf');
  assert.deepEqual([mamba.error?.name, mamba.error?.code], ['PensiveError', 'unsupported_model'], JSON.stringify(mamba));
  assert.match(mamba.error.message, /mamba/);

  const missing = await withPensive(page, inspect, '/fixtures/no-such-file.gguf');
  assert.deepEqual([missing.error?.name, missing.error?.code], ['PensiveError', 'io'], JSON.stringify(missing));

  const badOption = await withPensive(page, (m) => m.Pensive.inspect({ model: 'x.gguf', backend: 'tpu' }));
  assert.equal(badOption.error?.code, 'invalid_options');

  if (requireModel(SMOLLM2)) {
    const truncated = await withPensive(page, inspect, '/fixtures/truncated.gguf');
    assert.deepEqual([truncated.error?.name, truncated.error?.code], ['PensiveError', 'model_format'], JSON.stringify(truncated));
    assert.match(truncated.error.message, /truncated/);
  }
  // Still alive: the same module instance answers afterwards.
  assert.equal(typeof (await withPensive(page, (m) => m.Pensive.version())), 'string');
  assert.deepEqual(page.errors, []);
});

test('hf: references resolve to the hub download URL', async () => {
  const { resolveModelUrl } = await import('../../www/src/source.js');
  assert.equal(resolveModelUrl('hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf'),
    'https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf');
  assert.equal(resolveModelUrl('hf:a/b@v1.0/sub/dir/m.gguf'), 'https://huggingface.co/a/b/resolve/v1.0/sub/dir/m.gguf');
  assert.equal(resolveModelUrl('/models/x.gguf'), '/models/x.gguf');
  assert.throws(() => resolveModelUrl('hf:just-a-name'), (e) => e.code === 'invalid_options');
});

test('the same API runs in a Web Worker: progress, results and typed errors cross postMessage', async (t) => {
  const page = await browser.newPage();
  const garbage = await withPensive(page, async (m) => {
    const w = new m.PensiveWorker();
    try {
      return { version: await w.version(), result: await w.inspect({ model: '/fixtures/garbage.gguf', cache: false }) };
    } catch (e) {
      return { error: { name: e.name, code: e.code, isPensiveError: e instanceof m.PensiveError } };
    } finally {
      w.dispose();
    }
  });
  assert.deepEqual(garbage.error, { name: 'PensiveError', code: 'model_format', isPensiveError: true });

  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const smol = await withPensive(page, async (m) => {
    const w = new m.PensiveWorker();
    const progress = [];
    const r = await w.inspect({ model: '/models/smollm2-135m-instruct-q4_1.gguf', cache: false, onProgress: (p) => progress.push(p) });
    w.dispose();
    return { ...r, progress };
  });
  assert.equal(smol.error, undefined, JSON.stringify(smol.error));
  assert.equal(smol.config.arch, 'llama');
  assert.equal(smol.bytes, SMOLLM2_BYTES);
  assert.ok(smol.progress.length >= 10);
  assert.equal(smol.progress.at(-1).loaded, SMOLLM2_BYTES);
  assert.deepEqual(page.errors, []);
});

test('a cache quota error degrades to no cache with a warning, not a failure', async (t) => {
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m) => {
    // What a full profile does: Cache.put rejects once the body is written.
    Cache.prototype.put = async function put(_key, response) {
      await response.arrayBuffer().catch(() => {});
      throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
    };
    await m.Pensive.clearCache();
    const first = await m.Pensive.inspect({ model: '/models/smollm2-135m-instruct-q4_1.gguf' });
    const second = await m.Pensive.inspect({ model: '/models/smollm2-135m-instruct-q4_1.gguf' });
    return { first: first.origin, second: second.origin, arch: second.config.arch };
  });
  assert.deepEqual(r, { first: 'network', second: 'network', arch: 'llama' });
  assert.ok(page.logs.some((l) => l.startsWith('warning:') && l.includes('QuotaExceededError')), page.logs.join('\n'));
  assert.deepEqual(page.errors, []);
});
