// The threaded wasm build (shared memory, rayon on a pool of Web Workers) in headless
// Chromium: on a cross-origin isolated page an engine in a worker runs it on more than one
// thread and decodes exactly the tokens the single-thread build does; where the page is not
// isolated, or the engine runs on the page's main thread, the single-thread build runs and
// `engine.info.wasm` says why.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { SMOLLM2, requireModel, startBrowser, withPensive } from './harness.mjs';

const PROMPT = [{ role: 'user', content: 'Name three colours of the rainbow.' }];
const TOKENS = 24;

/** Load SmolLM2 on the CPU with `options`, decode greedily, return the info and the token ids. */
function greedy(page, options, tokens = TOKENS) {
  return withPensive(page, async (m, { model, options, prompt, tokens }) => {
    const engine = await m.Pensive.load({ model, backend: 'cpu', ...options });
    try {
      const done = await engine.complete(prompt, { max_tokens: tokens, temperature: 0 });
      const ids = done.events.filter((e) => e.type === 'token').map((e) => e.id);
      return { info: engine.info, ids, isolated: globalThis.crossOriginIsolated };
    } finally {
      engine.dispose();
    }
  }, { model: `/${SMOLLM2}`, options, prompt: PROMPT, tokens });
}

let isolated;
let plain;

before(async () => {
  isolated = await startBrowser();
  plain = await startBrowser({ isolated: false });
});

after(async () => {
  await isolated?.close();
  await plain?.close();
});

test('on a cross-origin isolated page a worker engine runs the threaded build on 2 threads, with the single-thread build\'s greedy tokens', { timeout: 180_000 }, async (t) => {
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const page = await isolated.newPage();
  const threaded = await greedy(page, { worker: true, threads: 2, cache: false });
  assert.equal(threaded.error, undefined, JSON.stringify(threaded.error));
  assert.equal(threaded.isolated, true, 'the test server did not make the page cross-origin isolated');
  assert.deepEqual(threaded.info.wasm, { module: 'threads', threads: 2, reason: null, simd: 'relaxed' });
  assert.equal(threaded.info.backend, 'cpu (wasm, 2 threads)');

  // threads: 1 is the single-thread build, in a worker of its own, on the same page.
  const single = await greedy(page, { worker: true, threads: 1, cache: false });
  assert.equal(single.error, undefined, JSON.stringify(single.error));
  assert.equal(single.info.wasm.module, 'single');
  assert.equal(single.info.wasm.threads, 1);
  assert.match(single.info.wasm.reason, /threads: 1/);
  assert.equal(single.info.backend, 'cpu (wasm)');

  // Rows split across threads are each computed by the same kernel: not a bit may differ.
  assert.ok(threaded.ids.length >= 8, `only ${threaded.ids.length} tokens`);
  assert.deepEqual(threaded.ids, single.ids);
  assert.deepEqual(page.errors, []);
});

test('on an isolated page, an engine on the main thread runs the single-thread build and says why', { timeout: 120_000 }, async (t) => {
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const page = await isolated.newPage();
  const r = await greedy(page, { threads: 2, cache: false }, 4);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(r.isolated, true);
  assert.equal(r.info.wasm.module, 'single');
  assert.match(r.info.wasm.reason, /main thread/);
  assert.equal(r.ids.length, 4);
  assert.deepEqual(page.errors, []);
});

test('on a page that is not cross-origin isolated, a worker engine falls back to the single-thread build and says why', { timeout: 120_000 }, async (t) => {
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const page = await plain.newPage();
  // No `threads`: the default (the browser's core count) would use the pool if it could.
  const r = await greedy(page, { worker: true, cache: false }, 4);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(r.isolated, false);
  assert.equal(r.info.wasm.module, 'single');
  assert.equal(r.info.wasm.threads, 1);
  assert.match(r.info.wasm.reason, /not cross-origin isolated/);
  assert.equal(r.info.backend, 'cpu (wasm)');
  assert.equal(r.ids.length, 4);
  assert.deepEqual(page.errors, []);
});

test('where the browser runs relaxed SIMD its module runs, and decodes the simd128 module\'s tokens bit for bit', { timeout: 240_000 }, async (t) => {
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const page = await plain.newPage();
  // Each worker engine instantiates a module of its own: one of each, on the same page.
  const relaxed = await greedy(page, { worker: true, cache: false });
  const simd128 = await greedy(page, { worker: true, cache: false, wasmSimd: 'simd128' });
  const forced = await greedy(page, { worker: true, cache: false, wasmSimd: 'relaxed' }, 4);
  for (const r of [relaxed, simd128, forced]) assert.equal(r.error, undefined, JSON.stringify(r.error));
  // Headless Chromium has had relaxed SIMD since 114: 'auto' must have picked it.
  assert.equal(relaxed.info.wasm.simd, 'relaxed');
  assert.equal(simd128.info.wasm.simd, 'simd128');
  assert.equal(forced.info.wasm.simd, 'relaxed');
  assert.ok(relaxed.ids.length >= 8, `only ${relaxed.ids.length} tokens`);
  assert.deepEqual(relaxed.ids, simd128.ids);
  assert.deepEqual(forced.ids, simd128.ids.slice(0, 4));
  // A relaxed module that is not where it should be (a bundler that left it out): 'auto'
  // falls back to the simd128 one, with a warning; 'relaxed' asked for explicitly fails.
  const missing = '/pkg/missing/pensive_relaxed_bg.wasm';
  const fallback = await greedy(page, { worker: true, cache: false, wasmRelaxedUrl: missing }, 4);
  assert.equal(fallback.error, undefined, JSON.stringify(fallback.error));
  assert.equal(fallback.info.wasm.simd, 'simd128');
  assert.deepEqual(fallback.ids, simd128.ids.slice(0, 4));
  const refused = await greedy(page, { worker: true, cache: false, wasmRelaxedUrl: missing, wasmSimd: 'relaxed' }, 4);
  assert.equal(refused.error?.code, 'backend', JSON.stringify(refused));
  // An unknown choice is refused before anything loads.
  const bad = await greedy(page, { cache: false, wasmSimd: 'avx512' }, 4);
  assert.equal(bad.error?.code, 'invalid_options', JSON.stringify(bad));
  assert.match(bad.error.message, /wasmSimd/);
  assert.deepEqual(page.errors, []);
});

/**
 * The users' workload on the threaded build: a long sampled thinking request (temperature
 * 0.6, top_p 0.95, 500+ thinking tokens: the attention's tasks run on the pool once the cache
 * holds a few hundred tokens), then the same request again on the same engine (Regenerate).
 */
function longSampled(page, options) {
  return withPensive(page, async (m, { model, options, prompt, request }) => {
    const engine = await m.Pensive.load({ model, backend: 'cpu', cache: false, ...options });
    try {
      const runs = [];
      for (let i = 0; i < 2; i++) {
        const done = await engine.complete(prompt, request);
        const tokens = done.events.filter((e) => e.type === 'token');
        runs.push({ ids: tokens.map((e) => e.id), thinking: tokens.filter((e) => e.phase === 'thinking').length });
      }
      return { info: engine.info, runs };
    } finally {
      engine.dispose();
    }
  }, {
    model: `/${SMOLLM2}`, options, prompt: PROMPT,
    request: { max_tokens: 700, temperature: 0.6, top_p: 0.95, seed: 11, thinking: { open: true, min_tokens: 500, max_tokens: 600 } },
  });
}

test('a long sampled thinking request and its Regenerate give the same tokens on 2 threads as on one', { timeout: 300_000 }, async (t) => {
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const page = await isolated.newPage();
  const threaded = await longSampled(page, { worker: true, threads: 2 });
  const single = await longSampled(page, { worker: true, threads: 1 });
  for (const r of [threaded, single]) assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(threaded.info.wasm.module, 'threads');
  assert.equal(single.info.wasm.module, 'single');
  const [first, again] = threaded.runs;
  assert.ok(first.thinking >= 500, `only ${first.thinking} thinking tokens`);
  assert.deepEqual(again.ids, first.ids, 'Regenerate with the same seed changed the tokens');
  assert.deepEqual(single.runs[0].ids, first.ids, 'the threaded build sampled other tokens');
  assert.deepEqual(page.errors, []);
});
