// Faults in headless Chromium, through the npm package:
//  - hostile files: 135 variants of a real GGUF (tests/browser/pages/hostile-gguf.js: truncated,
//    lying counts, zero / huge / overflowing dims, unknown types, bad offsets, NaN and
//    infinite hyperparameters, broken vocabularies, looping templates…), built in the page
//    and loaded one after the other in that one page — on the CPU, and a subset on WebGPU.
//    Each must end in a typed PensiveError (at load, or at its first request for a file whose
//    fault only shows then, such as a template), within a per-file timeout; afterwards the
//    wasm module is alive and the good file still loads and generates what it did before.
//  - device loss: `GPUDevice.destroy()` in the middle of a WebGPU generation rejects the
//    pending generate with `device_lost`, the engine reports itself unusable and refuses
//    every later request the same way, and a new `Pensive.load` generates again. The test
//    reaches the device the engine created by wrapping `GPUAdapter.prototype.requestDevice`
//    in the page: no hook in the package.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { root, startBrowser, withPensive } from './harness.mjs';

/** The real file the variants are made from (F32 tiny Llama: loads in milliseconds). */
const BASE = '/fixtures/tiny/llama/model.gguf';
/** A load plus a first request of one variant: the CPU path takes milliseconds. */
const CPU_TIMEOUT_MS = 15_000;
/** On WebGPU a variant that gets as far as the pipelines compiles them on SwiftShader. */
const GPU_TIMEOUT_MS = 60_000;
/** Every this-many-th variant is loaded on WebGPU too (each load creates a device). */
const GPU_EVERY = 6;
const GREEDY = { max_tokens: 6, temperature: 0 };
/** A generation the worker test interrupts (within the tiny model's 256-token context). */
const LONG = { max_tokens: 200, temperature: 0 };
const PROMPT = 'hello world';

let browser;

before(async () => {
  browser = await startBrowser({ extraMounts: { '/fixtures/': join(root, 'tests', 'fixtures') } });
});

after(async () => {
  await browser?.close();
});

test('100+ hostile GGUF files in one page: each a typed error, none hangs, the module survives', async () => {
  const page = await browser.newPage();
  const t0 = Date.now();
  const r = await withPensive(page, async (m, { base, cpuMs, gpuMs, gpuEvery, greedy, prompt }) => {
    const { hostileVariants } = await import('/tests/hostile-gguf.js');
    const good = new Uint8Array(await (await fetch(base)).arrayBuffer());
    const variants = hostileVariants(good);
    const ids = (events) => events.filter((e) => e.type === 'token').map((e) => e.id);
    const generateWith = async (backend) => {
      const engine = await m.Pensive.load({ model: new Blob([good]), backend, max_context: 64 });
      try {
        return { backend: engine.info.backend, ids: ids((await engine.complete(prompt, greedy)).events) };
      } finally {
        engine.dispose();
      }
    };
    const typed = (stage, e) => ({ stage, pensive: e instanceof m.PensiveError, code: e?.code, message: String(e?.message ?? e) });
    const attempt = async (v, backend) => {
      let engine;
      try {
        engine = await m.Pensive.load({ model: new Blob([v.bytes], { type: 'application/octet-stream' }), backend, max_context: 64 });
      } catch (e) {
        return typed('load', e);
      }
      try {
        const request = v.stage === 'chat' ? [{ role: 'user', content: 'hi' }] : 'hi';
        await engine.complete(request, { max_tokens: 2, temperature: 0 });
        return { stage: 'accepted' };
      } catch (e) {
        return typed('first request', e);
      } finally {
        engine.dispose();
      }
    };
    const before = { cpu: await generateWith('cpu'), gpu: await generateWith('webgpu') };
    const results = [];
    for (const [i, v] of variants.entries()) {
      for (const backend of i % gpuEvery === 0 ? ['cpu', 'webgpu'] : ['cpu']) {
        const started = performance.now();
        let timer;
        const hang = new Promise((resolve) => {
          timer = setTimeout(() => resolve({ stage: 'hang' }), backend === 'cpu' ? cpuMs : gpuMs);
        });
        const outcome = await Promise.race([attempt(v, backend), hang]);
        clearTimeout(timer);
        results.push({ name: v.name, backend, ms: Math.round(performance.now() - started), ...outcome });
      }
    }
    const afterwards = { cpu: await generateWith('cpu'), gpu: await generateWith('webgpu') };
    return { n: variants.length, results, before, afterwards, codes: [...m.ERROR_CODES] };
  }, { base: BASE, cpuMs: CPU_TIMEOUT_MS, gpuMs: GPU_TIMEOUT_MS, gpuEvery: GPU_EVERY, greedy: GREEDY, prompt: PROMPT });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  const seconds = ((Date.now() - t0) / 1000).toFixed(1);
  const count = (pred) => r.results.filter(pred).length;
  console.log(`${r.n} hostile files, ${r.results.length} loads (${count((x) => x.backend === 'webgpu')} on WebGPU) in ${seconds} s: `
    + `${count((x) => x.stage === 'load')} refused at load, ${count((x) => x.stage === 'first request')} at the first request`);
  assert.ok(r.n >= 100, `only ${r.n} variants`);
  for (const x of r.results) {
    const what = `${x.name} (${x.backend}): ${JSON.stringify(x)}`;
    assert.notEqual(x.stage, 'hang', `hung: ${what}`);
    assert.notEqual(x.stage, 'accepted', `accepted: ${what}`);
    assert.ok(x.pensive, `not a PensiveError: ${what}`);
    assert.ok(r.codes.includes(x.code), `untyped: ${what}`);
    // A wasm trap (a panic) would arrive as a `backend` error naming a RuntimeError.
    assert.doesNotMatch(x.message, /RuntimeError|unreachable|panicked/, what);
  }
  // The module is alive: the good file gives what it gave before the hostile ones.
  assert.equal(r.before.cpu.ids.length, GREEDY.max_tokens);
  assert.match(r.before.gpu.backend, /^webgpu/);
  assert.deepEqual(r.afterwards, r.before);
  assert.deepEqual(page.errors, []);
  assert.ok(!page.logs.some((l) => /panicked/.test(l)), page.logs.filter((l) => /panicked/.test(l)).join('\n'));
  await page.close();
});

test('an allocation the GPU refuses during the load is a backend error; the next load runs', async () => {
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { base, greedy, prompt }) => {
    // The KV cache buffers (labelled by the engine) are asked for one word more than the
    // device's largest buffer: the GPU refuses them as it would refuse memory it lacks.
    const createBuffer = GPUDevice.prototype.createBuffer;
    let refused = 0;
    GPUDevice.prototype.createBuffer = function (descriptor) {
      if (descriptor?.label !== 'k_cache') return createBuffer.call(this, descriptor);
      refused += 1;
      return createBuffer.call(this, { ...descriptor, size: this.limits.maxBufferSize + 4 });
    };
    const load = () => m.Pensive.load({ model: base, backend: 'webgpu', max_context: 64, cache: false });
    let failure = null;
    try {
      (await load()).dispose();
    } catch (e) {
      failure = { pensive: e instanceof m.PensiveError, code: e?.code, message: String(e?.message ?? e) };
    }
    GPUDevice.prototype.createBuffer = createBuffer;
    const engine = await load();
    const ids = (await engine.complete(prompt, greedy)).events.filter((e) => e.type === 'token').map((e) => e.id);
    engine.dispose();
    return { refused, failure, ids };
  }, { base: BASE, greedy: GREEDY, prompt: PROMPT });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  console.log(`refused allocation: ${JSON.stringify(r)}`);
  assert.ok(r.refused > 0);
  assert.deepEqual(r.failure && { pensive: r.failure.pensive, code: r.failure.code }, { pensive: true, code: 'backend' }, JSON.stringify(r.failure));
  assert.equal(r.ids.length, GREEDY.max_tokens);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('device.destroy() mid-generation: the pending generate rejects with device_lost, the engine is unusable, a new load generates', async () => {
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { base, greedy, prompt }) => {
    // Every GPUDevice the engine asks for, in order (the package keeps its own to itself).
    const devices = [];
    const requestDevice = GPUAdapter.prototype.requestDevice;
    GPUAdapter.prototype.requestDevice = async function (...args) {
      const device = await requestDevice.apply(this, args);
      devices.push(device);
      return device;
    };
    const ids = (events) => events.filter((e) => e.type === 'token').map((e) => e.id);
    const failure = async (f) => {
      try {
        await f();
        return null;
      } catch (e) {
        return { pensive: e instanceof m.PensiveError, code: e?.code, message: String(e?.message ?? e) };
      }
    };
    const load = () => m.Pensive.load({ model: base, backend: 'webgpu', max_context: 64, cache: false });
    const engine = await load();
    const backend = engine.info.backend;
    const reference = ids((await engine.complete(prompt, greedy)).events);
    const device = devices.at(-1);
    const seen = [];
    const pending = await failure(async () => {
      for await (const event of engine.generate(prompt, greedy)) {
        if (event.type !== 'token') continue;
        seen.push(event.id);
        if (seen.length === 2) device.destroy();
      }
    });
    const lost = await device.lost;
    const usable = engine.usable;
    const later = await failure(() => engine.complete(prompt, greedy));
    const score = await failure(() => engine.score(prompt, ' world'));
    engine.dispose();
    const fresh = await load();
    const again = ids((await fresh.complete(prompt, greedy)).events);
    const freshUsable = fresh.usable;
    fresh.dispose();
    return { backend, reference, seen, pending, lostReason: lost.reason, usable, later, score, again, freshUsable, devices: devices.length };
  }, { base: BASE, greedy: GREEDY, prompt: PROMPT });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  console.log(`device loss: ${JSON.stringify({ ...r, reference: r.reference.length, again: r.again.length })}`);
  assert.match(r.backend, /^webgpu/);
  assert.equal(r.reference.length, GREEDY.max_tokens);
  assert.equal(r.lostReason, 'destroyed');
  // The step in flight when the device went, or the next one, is the pending call's error.
  assert.ok(r.seen.length >= 2 && r.seen.length < GREEDY.max_tokens, `tokens after destroy: ${r.seen}`);
  assert.deepEqual(r.seen, r.reference.slice(0, r.seen.length));
  assert.deepEqual(r.pending && { pensive: r.pending.pensive, code: r.pending.code }, { pensive: true, code: 'device_lost' }, JSON.stringify(r.pending));
  assert.equal(r.usable, false);
  assert.equal(r.later?.code, 'device_lost', JSON.stringify(r.later));
  assert.equal(r.score?.code, 'device_lost', JSON.stringify(r.score));
  assert.equal(r.devices, 2, 'the new load did not create a device of its own');
  assert.ok(r.freshUsable);
  assert.deepEqual(r.again, r.reference);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('the same in a Web Worker: device_lost crosses postMessage, PensiveWorker.usable turns false, a new load generates', async () => {
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { base, greedy, long, prompt }) => {
    const ids = (events) => events.filter((e) => e.type === 'token').map((e) => e.id);
    const options = { model: base, backend: 'webgpu', max_context: 256, cache: false };
    const worker = new Worker('/tests/lost-worker.js', { type: 'module' });
    const engine = await new m.PensiveWorker({ worker }).load(options);
    const reference = ids((await engine.complete(prompt, greedy)).events);
    const seen = [];
    let pending = null;
    try {
      // Long: the worker keeps stepping while the message to destroy travels.
      for await (const event of engine.generate(prompt, long)) {
        if (event.type !== 'token') continue;
        seen.push(event.id);
        if (seen.length === 2) worker.postMessage({ op: 'test-destroy' });
      }
    } catch (e) {
      pending = { pensive: e instanceof m.PensiveError, code: e?.code };
    }
    const usable = engine.usable;
    let later = null;
    try {
      await engine.complete(prompt, greedy);
    } catch (e) {
      later = e?.code;
    }
    await engine.load(options);
    const again = ids((await engine.complete(prompt, greedy)).events);
    const reloaded = engine.usable;
    engine.dispose();
    return { reference, seen, pending, usable, later, again, reloaded };
  }, { base: BASE, greedy: GREEDY, long: LONG, prompt: PROMPT });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  console.log(`device loss in a worker: ${JSON.stringify({ ...r, seen: r.seen.length })}`);
  assert.equal(r.reference.length, GREEDY.max_tokens);
  assert.ok(r.seen.length >= 2 && r.seen.length < LONG.max_tokens, `${r.seen.length} tokens: the loss went unnoticed`);
  assert.deepEqual(r.seen.slice(0, GREEDY.max_tokens), r.reference.slice(0, r.seen.length));
  assert.deepEqual(r.pending, { pensive: true, code: 'device_lost' });
  assert.equal(r.usable, false);
  assert.equal(r.later, 'device_lost');
  assert.ok(r.reloaded);
  assert.deepEqual(r.again, r.reference);
  assert.deepEqual(page.errors, []);
  await page.close();
});
