#!/usr/bin/env node
// In-browser benchmark (not a CI test): load a GGUF in headless Chromium on each backend and
// report load time, peak memory and tok/s — the figures issue 5 asks for, e.g. for the
// 1.5B stand-in of DeepSeek-R1-Distill-Qwen-1.5B.
//
//   node tests/browser/bench.mjs [--model models/x.gguf] [--backend cpu,webgpu] [--tokens 32]
//                                [--max-context 512] [--prompt "..."] [--raw-prompt]
//                                [--probe]   (stream through the GGUF parser only, no engine)
//
// Greedy generation from a chat prompt through the whole engine (tokenizer, template,
// sampler); the rates are the engine's own stats (`done` event), timed by performance.now().
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
    // Feed --prompt as raw text instead of a chat message (a few tokens: SwiftShader is slow).
    'raw-prompt': { type: 'boolean', default: false },
    // The KV cache (GPU memory on WebGPU) is sized for this many tokens.
    'max-context': { type: 'string', default: '512' },
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
    const result = await page.evaluate(async ({ model, backend, tokens, prompt, probe, maxContext, rawPrompt }) => {
      const { Pensive } = await import('/src/index.js');
      const { wasmMemoryBytes } = await import('/src/engine.js');
      const t0 = performance.now();
      if (probe) {
        const r = await Pensive.inspect({ model: `/${model}`, cache: false });
        return { loadS: (performance.now() - t0) / 1000, bytes: r.bytes, wasmBytes: wasmMemoryBytes() };
      }
      const engine = await Pensive.load({ model: `/${model}`, backend, cache: false, max_context: maxContext });
      const loadS = (performance.now() - t0) / 1000;
      const done = await engine.complete(rawPrompt ? prompt : [{ role: 'user', content: prompt }], { max_tokens: tokens, temperature: 0 });
      const ids = done.events.filter((e) => e.type === 'token').map((e) => e.id);
      const out = { loadS, info: engine.info.backend, stats: done.stats, ids: ids.join(' '), text: done.text.slice(0, 200), wasmBytes: wasmMemoryBytes() };
      engine.dispose();
      return out;
    }, { model: args.model, backend, tokens: Number(args.tokens), prompt: args.prompt, probe: args.probe,
      maxContext: Number(args['max-context']), rawPrompt: args['raw-prompt'] });
    const peak = stop();
    console.log(JSON.stringify({ model: args.model, backend: args.probe ? 'probe' : backend, ...result,
      peak_rss: Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, mib(v)])), wasm_memory: mib(result.wasmBytes) }, null, 1));
    await page.close();
    if (args.probe) break;
  }
} finally {
  await browser.close();
}
