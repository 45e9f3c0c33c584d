#!/usr/bin/env node
// wasm CPU speed in headless Chromium, side by side (a benchmark, not a CI test; run it through
// scripts/bench-browser.sh, which installs wllama): Pensive's single-thread build, Pensive's
// threaded build, and wllama (llama.cpp in wasm) on 1 and 2 threads, on the same GGUF files,
// each greedy for --tokens tokens after the same short chat prompt, in one cross-origin
// isolated page per run so that every engine may use its threads.
//
//   node tests/browser/bench-cpu.mjs [--models a.gguf,b.gguf] [--tokens 64] [--runs 1]
//                                    [--threads 2] [--engines pensive,wllama]
//                                    [--simd auto|relaxed|simd128|relaxed,simd128]
//
// --simd: which of Pensive's modules (`wasmSimd`); a list runs each, so the relaxed-SIMD and
// simd128 modules are compared in the same run.
//
// Rates are each engine's own: Pensive's `done` stats (prefill_tok_s, decode_tok_s), wllama's
// llama.cpp timings (prompt_per_second, predicted_per_second). Configurations alternate within
// a run, so load on the machine hits them alike; one JSON line per measurement, then a table
// with the best of the runs.
import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { SMOLLM2, here, root, startBrowser } from './harness.mjs';

const { values: args } = parseArgs({
  options: {
    models: { type: 'string', default: `${SMOLLM2},models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf` },
    tokens: { type: 'string', default: '64' },
    runs: { type: 'string', default: '1' },
    threads: { type: 'string', default: '2' },
    engines: { type: 'string', default: 'pensive,wllama' },
    simd: { type: 'string', default: 'auto' },
    prompt: { type: 'string', default: 'Write a short story about a robot learning to paint.' },
    // Per measurement: a run past it (or a crashed page) is recorded as an error, and the rest go on.
    'timeout-s': { type: 'string', default: '300' },
  },
});
const tokens = Number(args.tokens);
const threads = Number(args.threads);
const engines = args.engines.split(',');
const wllamaDir = join(here, 'wllama', 'node_modules', '@wllama', 'wllama', 'esm');
if (engines.includes('wllama') && !existsSync(wllamaDir)) {
  throw new Error(`wllama is not installed (${wllamaDir}): run scripts/bench-browser.sh, or npm ci --prefix tests/browser/wllama`);
}

/** Pensive in a Web Worker (the threaded build needs one), `threads` 1 = the single-thread build. */
async function runPensive(page, { model, threads, tokens, prompt, simd }) {
  return page.evaluate(async ({ model, threads, tokens, prompt, simd }) => {
    const { Pensive } = await import('/src/index.js');
    const t0 = performance.now();
    const engine = await Pensive.load({ model, backend: 'cpu', worker: true, threads, cache: false, max_context: 512, wasmSimd: simd });
    const loadS = (performance.now() - t0) / 1000;
    try {
      const done = await engine.complete([{ role: 'user', content: prompt }], { max_tokens: tokens, temperature: 0 });
      const s = done.stats;
      return {
        engine: `pensive ${engine.info.wasm.module}`, simd: engine.info.wasm.simd, threads: engine.info.wasm.threads, backend: engine.info.backend,
        load_s: loadS, prompt_tokens: s.prompt_tokens, tokens: s.sampled_tokens,
        prefill_tok_s: s.prefill_tok_s, decode_tok_s: s.decode_tok_s, text: done.text.slice(0, 80),
      };
    } finally {
      engine.dispose();
    }
  }, { model, threads, tokens, prompt, simd });
}

/** wllama on the CPU only (`n_gpu_layers: 0`: its WebGPU offload is on by default). */
async function runWllama(page, { model, threads, tokens, prompt }) {
  return page.evaluate(async ({ model, threads, tokens, prompt }) => {
    const { Wllama } = await import('/wllama/index.js');
    const wllama = new Wllama({ default: '/wllama/wasm/wllama.wasm' }, { suppressNativeLog: true });
    const t0 = performance.now();
    await wllama.loadModelFromUrl(model, { n_threads: threads, n_gpu_layers: 0, n_ctx: 512, useCache: false });
    const loadS = (performance.now() - t0) / 1000;
    try {
      let timings = null;
      let text = '';
      let n = 0;
      const stream = await wllama.createChatCompletion({
        messages: [{ role: 'user', content: prompt }], stream: true, max_tokens: tokens, temperature: 0,
      });
      for await (const chunk of stream) {
        const piece = chunk.choices?.[0]?.delta?.content ?? '';
        if (piece) n++;
        text += piece;
        timings = chunk.timings ?? timings;
      }
      return {
        engine: 'wllama', threads, load_s: loadS, prompt_tokens: timings?.prompt_n, tokens: timings?.predicted_n ?? n,
        prefill_tok_s: timings?.prompt_per_second, decode_tok_s: timings?.predicted_per_second, text: text.slice(0, 80),
      };
    } finally {
      await wllama.exit();
    }
  }, { model, threads, tokens, prompt });
}

const configs = [];
if (engines.includes('pensive')) {
  for (const simd of args.simd.split(',')) configs.push({ run: runPensive, threads: 1, simd }, { run: runPensive, threads, simd });
}
if (engines.includes('wllama')) configs.push({ run: runWllama, threads: 1 }, { run: runWllama, threads });

const browser = await startBrowser({ extraMounts: { '/wllama/': wllamaDir } });
const results = [];
console.error(`load average at start: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
try {
  for (let r = 0; r < Number(args.runs); r++) {
    for (const model of args.models.split(',')) {
      if (!existsSync(join(root, model))) throw new Error(`${model} is missing (scripts/fetch-models.sh)`);
      for (const c of configs) {
        const page = await browser.newPage();
        const base = { run: r, model: model.split('/').pop(), asked_threads: c.threads };
        let timer;
        try {
          const timeout = new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`no result in ${args['timeout-s']} s`)), Number(args['timeout-s']) * 1000);
          });
          const out = await Promise.race([c.run(page, { model: `/${model}`, threads: c.threads, simd: c.simd, tokens, prompt: args.prompt }), timeout]);
          const row = { ...base, ...out, load: loadavg()[0] };
          results.push(row);
          console.log(JSON.stringify(row));
        } catch (e) {
          const engine = c.run === runPensive ? 'pensive' : 'wllama';
          console.log(JSON.stringify({ ...base, engine, error: String(e?.message ?? e).split('\n')[0], load: loadavg()[0] }));
        } finally {
          clearTimeout(timer);
          if (page.errors.length) console.error(`page errors: ${page.errors.join(' | ')}`);
          await page.close();
        }
      }
    }
  }
} finally {
  await browser.close();
}
console.error(`load average at end: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);

// Best of the runs per (model, engine, threads); then Pensive's threaded speed-up and its
// ratio to wllama's best of 1 and N threads.
const best = new Map();
for (const r of results) {
  const key = `${r.model}|${r.engine}|${r.simd ?? ''}|${r.threads}`;
  const b = best.get(key) ?? { ...r };
  b.prefill_tok_s = Math.max(b.prefill_tok_s ?? 0, r.prefill_tok_s ?? 0);
  b.decode_tok_s = Math.max(b.decode_tok_s ?? 0, r.decode_tok_s ?? 0);
  best.set(key, b);
}
const f = (x) => (x ? x.toFixed(1) : '?');
console.log('\nmodel | engine | simd | threads | prefill tok/s | decode tok/s');
for (const b of best.values()) console.log(`${b.model} | ${b.engine} | ${b.simd ?? '-'} | ${b.threads} | ${f(b.prefill_tok_s)} | ${f(b.decode_tok_s)}`);
/** The best row of `engine` (over its modules): decode and prefill each their best. */
const bestOf = (rows, engine) => {
  const of = rows.filter((b) => b.engine === engine);
  if (!of.length) return undefined;
  return { decode_tok_s: Math.max(...of.map((b) => b.decode_tok_s ?? 0)), prefill_tok_s: Math.max(...of.map((b) => b.prefill_tok_s ?? 0)) };
};
for (const model of new Set(results.map((r) => r.model))) {
  const rows = [...best.values()].filter((b) => b.model === model);
  const simds = [...new Set(rows.filter((b) => b.simd).map((b) => b.simd))];
  if (simds.includes('relaxed') && simds.includes('simd128')) {
    for (const engine of ['pensive single', 'pensive threads']) {
      const [r, s] = ['relaxed', 'simd128'].map((m) => rows.find((b) => b.engine === engine && b.simd === m));
      if (r && s) console.log(`${model}: ${engine} relaxed/simd128 decode ${(r.decode_tok_s / s.decode_tok_s).toFixed(2)}x, prefill ${(r.prefill_tok_s / s.prefill_tok_s).toFixed(2)}x`);
    }
  }
  const one = bestOf(rows, 'pensive single');
  const many = bestOf(rows, 'pensive threads');
  const wl = rows.filter((b) => b.engine === 'wllama');
  const wlBest = (k) => Math.max(0, ...wl.map((b) => b[k] ?? 0));
  const ratio = (a, b) => (a && b ? `${(a / b).toFixed(2)}x` : '?');
  console.log(`${model}: threads/single decode ${ratio(many?.decode_tok_s, one?.decode_tok_s)}, prefill ${ratio(many?.prefill_tok_s, one?.prefill_tok_s)}; `
    + `pensive best / wllama best decode ${ratio(Math.max(one?.decode_tok_s ?? 0, many?.decode_tok_s ?? 0), wlBest('decode_tok_s'))}, `
    + `prefill ${ratio(Math.max(one?.prefill_tok_s ?? 0, many?.prefill_tok_s ?? 0), wlBest('prefill_tok_s'))}`);
}
