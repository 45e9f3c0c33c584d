// The engine in headless Chromium, checked against the native CLI (`pensive generate/score
// --json`, run from the test: native is the reference). SmolLM2-135M on the wasm CPU backend
// (in the page and in a Web Worker) and on WebGPU (SwiftShader): greedy generation with a
// thinking budget gives the native token ids and events, `score` the native ratings; progress,
// the cache, abort, busy, dispose and broken files behave as documented.
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, openSync, readSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { SMOLLM2, nativePensive, requireModel, root, startBrowser, withPensive } from './harness.mjs';
import { tinyGguf } from './gguf-writer.mjs';

const SMOLLM2_BYTES = 98_362_432;

/**
 * A chat prompt and a budget under which SmolLM2 (greedy) ends its thinking early, gets a
 * "Wait" continuation (min 12), then answers: thinking, forced tokens and answer all occur.
 * The budget (15) ends the thinking before its 16th token, where the model's top two are
 * 0.18 apart (f32 kernels): kernels that round differently (int8 vs f32, AVX2 vs simd128)
 * may part there, and an exact reference must not hinge on such a step.
 */
const CHAT = [{ role: 'user', content: 'What is the capital of France?' }];
const CHAT_OPTIONS = { max_tokens: 40, temperature: 0, thinking: { open: true, min_tokens: 12, max_tokens: 15 } };
const CHAT_FLAGS = ['--chat', CHAT[0].content, '--max-tokens', '40', '--temperature', '0', '--think-open', '--think-min', '12', '--think-max', '15'];

/** Short enough for SwiftShader (seconds per step): 5 prompt tokens, 2 thinking, a forced exit. */
const RAW = 'The capital of France is';
const RAW_OPTIONS = { max_tokens: 8, temperature: 0, thinking: { open: true, max_tokens: 2 } };
const RAW_FLAGS = ['--prompt', RAW, '--max-tokens', '8', '--temperature', '0', '--think-open', '--think-max', '2'];

/** Plain greedy decoding (no budget): the GPU's own argmax picks every token. */
const PLAIN_OPTIONS = { max_tokens: 3, temperature: 0 };
const PLAIN_FLAGS = ['--prompt', RAW, '--max-tokens', '3', '--temperature', '0'];
// Sampled (llama.cpp's default top-k/top-p/min-p): on WebGPU the token is drawn on the
// device with the uniform the native CPU sampler draws from the same seed.
const SAMPLED_OPTIONS = { max_tokens: 8, temperature: 0.8, seed: 3 };
const SAMPLED_FLAGS = ['--prompt', RAW, '--max-tokens', '8', '--temperature', '0.8', '--seed', '3'];

/** What Chromium logs when a WGSL module or pipeline fails validation (it is only a warning). */
const WEBGPU_ERROR = /WGSL|\[Invalid|GPUValidationError|device lost/i;

const SCORED = 'The capital of France is Paris. It is known for the Eiffel Tower and the Louvre museum.';
/** Where the model's top-1 leads by more than this, the browser must pick the same token. */
const DECISIVE_MARGIN = 0.5;
/**
 * Largest |logprob difference| (nats) allowed between the wasm CPU decoder (simd128) and
 * the native one: the same f32 kernels with a different summation order. (The int8 kernels,
 * the default, differ more across instruction sets: a summation-order difference that moves
 * an activation across a rounding boundary of its 8-bit grid moves it by a whole step;
 * measured 0.021 at SmolLM2's first scored position.)
 */
const LOGPROB_TOLERANCE = 2e-2;

/**
 * Stats fields that differ run to run: the timings, and the seed each of these greedy requests
 * (none brings one) drew for itself.
 */
const TIMING_FIELDS = ['prefill_s', 'decode_s', 'prefill_tok_s', 'decode_tok_s', 'seed'];

function withoutTimings(events) {
  return events.map((e) => {
    if (e.type !== 'done') return e;
    const stats = { ...e.stats };
    for (const f of TIMING_FIELDS) delete stats[f];
    return { ...e, stats };
  });
}

const tokenIds = (events) => events.filter((e) => e.type === 'token').map((e) => e.id);

let browser;
let fixtures;
let hasModel = false;
let native = {};

before(async () => {
  hasModel = requireModel(SMOLLM2);
  fixtures = mkdtempSync(join(tmpdir(), 'pensive-engine-'));
  writeFileSync(join(fixtures, 'mamba.gguf'), tinyGguf({ arch: 'mamba' }));
  writeFileSync(join(fixtures, 'garbage.gguf'), Buffer.from('not a model\n'.repeat(4000)));
  if (hasModel) {
    // The cache test deletes this copy to prove the second load never touches the network.
    copyFileSync(join(root, SMOLLM2), join(fixtures, 'smollm2.gguf'));
    // All of the header and some tensors, then the file stops.
    const truncated = Buffer.alloc(8 << 20);
    const fd = openSync(join(root, SMOLLM2), 'r');
    readSync(fd, truncated, 0, truncated.length, 0);
    closeSync(fd);
    writeFileSync(join(fixtures, 'truncated.gguf'), truncated);
    const model = ['--model', SMOLLM2];
    native = {
      chat: nativePensive(['generate', ...model, ...CHAT_FLAGS, '--json']),
      raw: nativePensive(['generate', ...model, ...RAW_FLAGS, '--json']),
      // WebGPU's references: the CPU's f32 kernels (f32 activations, like the GPU's), named
      // so that they stay the reference whatever the CPU's default becomes.
      rawF32: nativePensive(['generate', ...model, ...RAW_FLAGS, '--cpu-kernels', 'f32', '--json']),
      plain: nativePensive(['generate', ...model, ...PLAIN_FLAGS, '--cpu-kernels', 'f32', '--json']),
      sampled: nativePensive(['generate', ...model, ...SAMPLED_FLAGS, '--cpu-kernels', 'f32', '--json']),
      // The f32 kernels on both sides of the score test: see LOGPROB_TOLERANCE.
      score: nativePensive(['score', ...model, '--chat', CHAT[0].content, '--continuation', SCORED, '--cpu-kernels', 'f32', '--json']),
    };
  }
  browser = await startBrowser({ extraMounts: { '/fixtures/': fixtures } });
});

after(async () => {
  await browser?.close();
  if (fixtures) rmSync(fixtures, { recursive: true, force: true });
});

test('wasm CPU: load with progress, then greedy chat generation with a thinking budget gives the native events', async (t) => {
  if (!hasModel) return t.skip('model missing');
  // The reference itself must exercise the budget: a continuation, then an answer.
  assert.ok(native.chat.stats.continuations >= 1, JSON.stringify(native.chat.stats));
  assert.ok(native.chat.stats.answer_tokens > 0 && native.chat.stats.thinking_tokens >= 12, JSON.stringify(native.chat.stats));

  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { chat, options }) => {
    const progress = [];
    const engine = await m.Pensive.load({ model: '/fixtures/smollm2.gguf', backend: 'cpu', onProgress: (p) => progress.push(p) });
    window.engine = engine;
    const promptIds = engine.promptIds(chat);
    const events = [];
    for await (const ev of engine.generate(chat, options)) events.push(ev);
    return { info: engine.info, progress, promptIds, events };
  }, { chat: CHAT, options: CHAT_OPTIONS });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(r.info.backend, 'cpu (wasm)');
  assert.equal(r.info.fallback_reason, null);
  assert.equal(r.info.config.n_layers, 30);

  const downloads = r.progress.filter((p) => p.phase === 'download');
  assert.ok(downloads.length >= 10, `only ${downloads.length} download progress events`);
  assert.ok(downloads.every((p, i) => p.total === SMOLLM2_BYTES && (i === 0 || p.loaded >= downloads[i - 1].loaded)));
  assert.equal(downloads.at(-1).loaded, SMOLLM2_BYTES);
  assert.deepEqual(r.progress.slice(-2).map((p) => p.phase), ['finish', 'ready']);

  assert.deepEqual(r.promptIds, native.chat.prompt_ids);
  assert.deepEqual(tokenIds(r.events), native.chat.tokens);
  assert.deepEqual(withoutTimings(r.events), withoutTimings(native.chat.events));
  const stats = r.events.at(-1).stats;
  // performance.now() drives the clock in wasm: rates are real numbers, not 0.
  assert.ok(stats.decode_tok_s > 0 && stats.prefill_tok_s > 0, JSON.stringify(stats));
  console.error(`wasm CPU, SmolLM2: prefill ${stats.prefill_tok_s.toFixed(1)} tok/s, decode ${stats.decode_tok_s.toFixed(1)} tok/s`);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a second load of the same URL comes from the cache, without the network', async (t) => {
  if (!hasModel) return t.skip('model missing');
  rmSync(join(fixtures, 'smollm2.gguf'));
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, options) => {
    const phases = new Set();
    const engine = await m.Pensive.load({ model: '/fixtures/smollm2.gguf', backend: 'cpu', onProgress: (p) => phases.add(p.phase) });
    const out = await engine.complete('The capital of France is', options);
    engine.dispose();
    return { phases: [...phases], ids: out.events.filter((e) => e.type === 'token').map((e) => e.id) };
  }, RAW_OPTIONS);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.ok(r.phases.includes('cache') && !r.phases.includes('download'), r.phases.join());
  assert.deepEqual(r.ids, native.raw.tokens);
  await page.close();
});

test('engine.score agrees with the native `pensive score`', async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { chat, text }) => {
    const engine = await m.Pensive.load({ model: '/models/smollm2-135m-instruct-q4_1.gguf', backend: 'cpu', cache: false, cpu_kernels: 'f32' });
    const byText = await engine.score(chat, text);
    const byIds = await engine.score(chat, byText.positions.map((p) => p.id));
    engine.dispose();
    return { byText, byIds };
  }, { chat: CHAT, text: SCORED });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  const want = native.score;
  assert.deepEqual(r.byText.prompt_ids, want.prompt_ids);
  assert.deepEqual(r.byText.positions.map((p) => p.id), want.positions.map((p) => p.id));
  let decisive = 0;
  want.positions.forEach((w, i) => {
    const got = r.byText.positions[i];
    if (w.margin > DECISIVE_MARGIN) {
      decisive++;
      assert.equal(got.argmax, w.argmax, `position ${i}: argmax ${got.argmax}, native ${w.argmax} (margin ${w.margin})`);
    }
    assert.ok(Math.abs(got.logprob - w.logprob) < LOGPROB_TOLERANCE, `position ${i}: logprob ${got.logprob}, native ${w.logprob}`);
  });
  assert.ok(decisive >= want.positions.length / 2, `only ${decisive} decisive positions: a weak reference`);
  assert.ok(Math.abs(r.byText.nll - want.nll) < LOGPROB_TOLERANCE);
  // Ids and the same text tokenized score the same.
  assert.deepEqual(r.byIds, r.byText);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('abort lands within a step and leaves the engine usable; a second generate is busy; dispose', async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { chat, options }) => {
    const engine = await m.Pensive.load({ model: '/models/smollm2-135m-instruct-q4_1.gguf', backend: 'cpu', cache: false });
    const err = (e) => ({ name: e?.name, code: e?.code });

    // Abort while the fourth step is in flight: that step's event is dropped, the iterator
    // throws `aborted`, and nothing more arrives.
    const controller = new AbortController();
    const beforeAbort = [];
    const it = engine.generate(chat, { ...options, signal: controller.signal });
    while (beforeAbort.length < 3) {
      const { value } = await it.next();
      if (value.type === 'token') beforeAbort.push(value.id);
    }
    const inFlight = it.next();
    controller.abort();
    let aborted = null;
    try {
      await inFlight;
    } catch (e) {
      aborted = err(e);
    }
    const afterAbort = await it.next();

    // One generation at a time: a second generate and a score are refused while one runs.
    const first = engine.generate(chat, options);
    await first.next();
    let second = null;
    try {
      await engine.generate(chat, options).next();
    } catch (e) {
      second = err(e);
    }
    let scoreWhileBusy = null;
    try {
      await engine.score(chat, 'Paris');
    } catch (e) {
      scoreWhileBusy = err(e);
    }
    await first.return(); // `break` out of a for-await loop does this

    // Usable again: the full generation, from a cache that holds the aborted transcripts.
    const again = await engine.complete(chat, options);

    engine.dispose();
    let afterDispose = null;
    try {
      await engine.generate(chat, options).next();
    } catch (e) {
      afterDispose = err(e);
    }
    return { beforeAbort, afterAbort, aborted, second, scoreWhileBusy, again: again.events.filter((e) => e.type === 'token').map((e) => e.id), afterDispose };
  }, { chat: CHAT, options: CHAT_OPTIONS });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.deepEqual(r.aborted, { name: 'PensiveError', code: 'aborted' });
  assert.deepEqual(r.afterAbort, { done: true, value: undefined });
  assert.deepEqual(r.beforeAbort, native.chat.tokens.slice(0, 3));
  assert.deepEqual(r.second, { name: 'PensiveError', code: 'busy' });
  assert.deepEqual(r.scoreWhileBusy, { name: 'PensiveError', code: 'busy' });
  assert.deepEqual(r.again, native.chat.tokens);
  assert.deepEqual(r.afterDispose, { name: 'PensiveError', code: 'invalid_options' });
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('bad options and broken model files give a PensiveError with a code; the page and module survive', async (t) => {
  const page = await browser.newPage();
  const load = (m, model) => m.Pensive.load({ model, backend: 'cpu', cache: false }).then(() => ({ loaded: true }));
  for (const [file, code] of [['garbage.gguf', 'model_format'], ['mamba.gguf', 'unsupported_model'], ['missing.gguf', 'io']]) {
    const r = await withPensive(page, load, `/fixtures/${file}`);
    assert.deepEqual([r.error?.name, r.error?.code], ['PensiveError', code], `${file}: ${JSON.stringify(r)}`);
  }
  if (hasModel) {
    const r = await withPensive(page, load, '/fixtures/truncated.gguf');
    assert.deepEqual([r.error?.name, r.error?.code], ['PensiveError', 'model_format'], JSON.stringify(r));
    // The server sends its length: the loader refuses the first tensor past it (before the
    // download would end early).
    assert.match(r.error.message, /truncated|past the end of the file/);
    const options = await withPensive(page, async (m, chat) => {
      const engine = await m.Pensive.load({ model: '/models/smollm2-135m-instruct-q4_1.gguf', backend: 'cpu', cache: false });
      const codes = [];
      for (const bad of [{ temperature: -1 }, { top_k: 'many' }, { no_such_option: 1 }, { thinking: { min_tokens: 9, max_tokens: 3 } }, { max_tokens: 0 }]) {
        const it = engine.generate(chat, bad);
        try {
          await it.next();
          codes.push(`accepted ${JSON.stringify(bad)}`);
          await it.return();
        } catch (e) {
          codes.push(`${e.name}:${e.code}`);
        }
      }
      try {
        await engine.score(chat, '');
      } catch (e) {
        codes.push(`${e.name}:${e.code}`);
      }
      // Still fine afterwards.
      const ok = await engine.complete('The capital of France is', { max_tokens: 2, temperature: 0 });
      engine.dispose();
      return { codes, ok: ok.stats.response_tokens };
    }, CHAT);
    assert.deepEqual(options.codes, Array(6).fill('PensiveError:invalid_options'), JSON.stringify(options));
    assert.equal(options.ok, 2);
  }
  const bad = await withPensive(page, (m) => m.Pensive.load({ model: '/x.gguf', backend: 'tpu' }));
  assert.equal(bad.error?.code, 'invalid_options');
  assert.equal(typeof (await withPensive(page, (m) => m.Pensive.version())), 'string');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('in a Web Worker: the same events as in the page, and typed errors', async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { prompt, options }) => {
    // A URL object, which postMessage cannot clone, reaches the worker as its address.
    const model = new URL('/models/smollm2-135m-instruct-q4_1.gguf', location.href);
    const engine = await m.Pensive.load({ model, backend: 'cpu', cache: false, worker: true });
    const out = await engine.complete(prompt, options);
    let busy = null;
    const first = engine.generate(prompt, options);
    await first.next();
    try {
      await engine.generate(prompt, options).next();
    } catch (e) {
      busy = e.code;
    }
    await first.return();
    engine.dispose();
    return { isWorker: engine instanceof m.PensiveWorker, events: out.events, busy };
  }, { prompt: RAW, options: RAW_OPTIONS });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(r.isWorker, true);
  assert.deepEqual(withoutTimings(r.events), withoutTimings(native.raw.events));
  assert.equal(r.busy, 'busy');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('WebGPU (SwiftShader): greedy generation with a thinking budget, and sampled generation, give the native events', { timeout: 240_000 }, async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { prompt, options, plain, sampled }) => {
    // A small KV cache: SwiftShader's buffers live in the GPU process's memory.
    const engine = await m.Pensive.load({ model: '/models/smollm2-135m-instruct-q4_1.gguf', backend: 'webgpu', max_context: 256, cache: false });
    const out = await engine.complete(prompt, options);
    const greedy = await engine.complete(prompt, plain);
    const drawn = await engine.complete(prompt, sampled);
    const info = engine.info;
    engine.dispose();
    return { info, events: out.events, plain: greedy.events, sampled: drawn.events };
  }, { prompt: RAW, options: RAW_OPTIONS, plain: PLAIN_OPTIONS, sampled: SAMPLED_OPTIONS });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.match(r.info.backend, /^webgpu/);
  assert.equal(r.info.fallback_reason, null);
  assert.equal(r.info.max_context, 256);
  assert.deepEqual(withoutTimings(r.events), withoutTimings(native.rawF32.events));
  // The second generation reuses the cached prompt, so only its stats differ from a fresh run.
  const notDone = (events) => events.filter((e) => e.type !== 'done');
  assert.deepEqual(notDone(r.plain), notDone(native.plain.events));
  // SwiftShader's f32 logits vs the native CPU's: the same draws unless one lands within
  // rounding of a cut (none does on this prompt and seed).
  assert.deepEqual(tokenIds(r.sampled), native.sampled.tokens);
  assert.deepEqual(page.logs.filter((l) => WEBGPU_ERROR.test(l)), []);
  const stats = r.events.at(-1).stats;
  assert.ok(stats.decode_tok_s > 0, JSON.stringify(stats));
  console.error(`WebGPU (SwiftShader), SmolLM2: prefill ${stats.prefill_tok_s.toFixed(2)} tok/s, decode ${stats.decode_tok_s.toFixed(2)} tok/s`);
  assert.deepEqual(page.errors, []);
  await page.close();
});
