// `backend: 'auto'` in headless Chromium: WebGPU when the adapter can hold the model, else the
// wasm CPU backend with `engine.info.fallback_reason` saying why. The page lowers what its
// adapter reports as maxStorageBufferBindingSize below one row of some of SmolLM2's weights
// (612 bytes for the Q8_0 embedding, 960 for a Q4_1 ffn_down): the loader's fit check, run
// on the header before any weight is uploaded, must then
// send `auto` to the CPU (whose greedy tokens equal the native CLI's) and refuse `webgpu`
// with `backend_unavailable`.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { SMOLLM2, nativePensive, requireModel, startBrowser, withPensive } from './harness.mjs';

const MODEL_URL = '/models/smollm2-135m-instruct-q4_1.gguf';
const RAW = 'The capital of France is';
const OPTIONS = { max_tokens: 8, temperature: 0 };
const FLAGS = ['--prompt', RAW, '--max-tokens', '8', '--temperature', '0'];
/** Below one row of several SmolLM2 matrices: no split by rows can fit them. */
const LOWERED_BINDING_LIMIT = 512;

const tokenIds = (events) => events.filter((e) => e.type === 'token').map((e) => e.id);

let browser;
let hasModel = false;
let native;

before(async () => {
  hasModel = requireModel(SMOLLM2);
  if (hasModel) native = nativePensive(['generate', '--model', SMOLLM2, '--backend', 'cpu', ...FLAGS, '--json']);
  browser = await startBrowser();
});

after(async () => {
  await browser?.close();
});

test('an adapter limit lowered by the page sends auto to the CPU, with the reason; webgpu is refused', { timeout: 240_000 }, async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { url, prompt, options, limit }) => {
    // Every adapter of this page now reports a smaller binding limit than it has. (wgpu reads
    // `adapter.limits` to size its device request; the engine holds itself to what it asked.)
    const realLimits = Object.getOwnPropertyDescriptor(GPUAdapter.prototype, 'limits').get;
    Object.defineProperty(GPUAdapter.prototype, 'limits', {
      configurable: true,
      get() {
        const limits = realLimits.call(this);
        return new Proxy(limits, { get: (target, key) => (key === 'maxStorageBufferBindingSize' ? limit : Reflect.get(target, key)) });
      },
    });
    const adapter = await navigator.gpu.requestAdapter();
    const reported = adapter?.limits.maxStorageBufferBindingSize;

    const engine = await m.Pensive.load({ model: url, backend: 'auto', max_context: 256, cache: false });
    const info = engine.info;
    const out = await engine.complete(prompt, options);
    engine.dispose();

    let refused = null;
    try {
      await m.Pensive.load({ model: url, backend: 'webgpu', max_context: 256, cache: false });
    } catch (e) {
      refused = { name: e?.name, code: e?.code, message: String(e?.message) };
    }
    return { reported, info, events: out.events, refused };
  }, { url: MODEL_URL, prompt: RAW, options: OPTIONS, limit: LOWERED_BINDING_LIMIT });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(r.reported, LOWERED_BINDING_LIMIT, 'the page did not lower the adapter limit');
  assert.equal(r.info.backend, 'cpu (wasm)');
  assert.match(r.info.fallback_reason ?? '', /one row of '.*' needs \d+ bytes, the adapter allows 512$/);
  const ids = tokenIds(r.events);
  assert.equal(ids.length, 8);
  assert.deepEqual(ids, native.tokens);
  assert.deepEqual([r.refused?.name, r.refused?.code], ['PensiveError', 'backend_unavailable'], JSON.stringify(r.refused));
  assert.match(r.refused.message, /one row of/);
  // The fallback is said on the console too, once (the refused `webgpu` load says nothing there).
  assert.equal(page.logs.filter((l) => /not using WebGPU/.test(l)).length, 1, page.logs.join('\n'));
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('auto takes WebGPU when the adapter can hold the model', { timeout: 240_000 }, async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, url) => {
    const engine = await m.Pensive.load({ model: url, backend: 'auto', max_context: 256, cache: false });
    const info = engine.info;
    engine.dispose();
    return { info, deviceMemory: navigator.deviceMemory };
  }, MODEL_URL);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  console.error(`auto: ${r.info.backend} (navigator.deviceMemory ${r.deviceMemory} GiB)`);
  assert.match(r.info.backend, /^webgpu/);
  assert.equal(r.info.fallback_reason, null);
  assert.deepEqual(page.errors, []);
  await page.close();
});
