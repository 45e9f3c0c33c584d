#!/usr/bin/env node
// In-browser benchmark (not a CI test): load a GGUF in headless Chromium on each backend and
// report load time, peak memory and tok/s — the figures issue 5 asks for, e.g. for the
// 1.5B stand-in of DeepSeek-R1-Distill-Qwen-1.5B.
//
//   node tests/browser/bench.mjs [--model models/x.gguf] [--backend cpu,webgpu] [--tokens 32]
//                                [--probe]   (stream through the GGUF parser only, no engine)
//                                [--raw [--prompt-tokens 16]]   (decoder forward passes only)
//
// Memory: the renderer's peak RSS (where wasm memory lives) and the GPU process's peak RSS,
// sampled from /proc every 100 ms, plus the final size of the wasm linear memory.
import { readFileSync, readdirSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { SMOLLM2, startBrowser } from './harness.mjs';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: SMOLLM2 },
    backend: { type: 'string', default: 'cpu,webgpu' },
    tokens: { type: 'string', default: '32' },
    prompt: { type: 'string', default: 'Write a short story about a robot learning to paint.' },
    probe: { type: 'boolean', default: false },
    // Raw forward passes (no tokenizer/sampler/budget): arbitrary prompt ids, greedy argmax.
    raw: { type: 'boolean', default: false },
    'prompt-tokens': { type: 'string', default: '16' },
  },
});

/** Peak RSS (bytes) per Chromium process type, sampled until stop() is called. */
function sampleMemory(profileMarker) {
  const peak = {};
  const tick = () => {
    for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        if (!cmd.includes('chromium') || !cmd.includes(profileMarker)) continue;
        const type = cmd.match(/--type=([a-z-]+)/)?.[1] ?? 'browser';
        const rss = Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/)?.[1] ?? 0) * 1024;
        peak[type] = Math.max(peak[type] ?? 0, rss);
      } catch { /* the process exited */ }
    }
  };
  tick();
  const timer = setInterval(tick, 100);
  return () => {
    clearInterval(timer);
    tick();
    return peak;
  };
}

const mib = (n) => `${(n / 2 ** 20).toFixed(0)} MiB`;
const browser = await startBrowser();
try {
  for (const backend of args.backend.split(',')) {
    const page = await browser.newPage();
    const stop = sampleMemory('pensive-chromium-');
    const result = await page.evaluate(async ({ model, backend, tokens, prompt, probe, raw, promptTokens }) => {
      const { Pensive } = await import('/src/index.js');
      const { initWasm, wasmMemoryBytes } = await import('/src/engine.js');
      const t0 = performance.now();
      if (raw) {
        await initWasm();
        const wasm = await import('/pkg/pensive.js');
        const { openModelSource } = await import('/src/source.js');
        const bench = await wasm.ForwardBench.create(backend);
        const source = await openModelSource(`/${model}`, { cache: false });
        for await (const chunk of source.chunks) bench.push(chunk);
        const name = bench.finish();
        const loadS = (performance.now() - t0) / 1000;
        // Arbitrary but fixed prompt ids (a benchmark, not a generation).
        const ids = Array.from({ length: promptTokens }, (_, i) => 100 + 37 * i);
        // Run twice: the first run includes shader/pipeline compilation (slow on SwiftShader).
        const runs = [];
        for (let i = 0; i < 2; i++) {
          const r = await bench.run(new Uint32Array(ids), tokens);
          runs.push({ prefill_tok_s: promptTokens / (r.prefill_ms / 1000), decode_tok_s: tokens / (r.decode_ms / 1000), ids: r.ids.join(' ') });
        }
        return { loadS, name, runs, wasmBytes: wasmMemoryBytes() };
      }
      if (probe) {
        const r = await Pensive.inspect({ model: `/${model}`, cache: false });
        return { loadS: (performance.now() - t0) / 1000, bytes: r.bytes, wasmBytes: wasmMemoryBytes() };
      }
      const engine = await Pensive.load({ model: `/${model}`, backend, cache: false });
      const loadS = (performance.now() - t0) / 1000;
      const done = await engine.complete([{ role: 'user', content: prompt }], { max_tokens: tokens, temperature: 0 });
      const out = { loadS, info: engine.info, stats: done.stats, text: done.text.slice(0, 200), wasmBytes: wasmMemoryBytes() };
      engine.dispose();
      return out;
    }, { model: args.model, backend, tokens: Number(args.tokens), prompt: args.prompt, probe: args.probe, raw: args.raw,
      promptTokens: Number(args['prompt-tokens']) });
    const peak = stop();
    console.log(JSON.stringify({ model: args.model, backend: args.probe ? 'probe' : backend, ...result,
      peak_rss: Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, mib(v)])), wasm_memory: mib(result.wasmBytes) }, null, 1));
    await page.close();
    if (args.probe) break;
  }
} finally {
  await browser.close();
}
