// The decoders themselves in the browser, before the engine: SmolLM2 streamed into the wasm
// CPU decoder and into the WebGPU decoder (WGSL kernels on SwiftShader), then greedy decoding
// from the same prompt ids must give the same tokens on both.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { SMOLLM2, root, startBrowser } from './harness.mjs';

/** Few steps: SwiftShader runs a SmolLM2 step in seconds, not milliseconds. */
const PROMPT_IDS = [100, 137, 174, 211];
const STEPS = 4;

let browser;
before(async () => {
  browser = await startBrowser();
});
after(async () => {
  await browser?.close();
});

test('wasm CPU and WebGPU decoders agree on greedy SmolLM2 tokens in the browser', { timeout: 300_000 }, async (t) => {
  if (!existsSync(join(root, SMOLLM2))) {
    assert.ok(!process.env.PENSIVE_REQUIRE_MODELS, `${SMOLLM2} is missing`);
    return t.skip(`${SMOLLM2} missing`);
  }
  const page = await browser.newPage();
  const ids = {};
  for (const backend of ['cpu', 'webgpu']) {
    const r = await page.evaluate(async ({ backend, prompt, steps }) => {
      const { initWasm } = await import('/src/engine.js');
      await initWasm();
      const wasm = await import('/pkg/pensive.js');
      const { openModelSource } = await import('/src/source.js');
      try {
        const bench = await wasm.ForwardBench.create(backend);
        const source = await openModelSource('/models/smollm2-135m-instruct-q4_1.gguf', { cache: false });
        for await (const chunk of source.chunks) bench.push(chunk);
        const name = bench.finish();
        const run = await bench.run(new Uint32Array(prompt), steps);
        return { name, ids: run.ids };
      } catch (e) {
        return { error: `${e?.code}: ${e?.message ?? e}` };
      }
    }, { backend, prompt: PROMPT_IDS, steps: STEPS });
    assert.equal(r.error, undefined, r.error);
    assert.ok(r.name.startsWith(backend === 'cpu' ? 'cpu' : 'webgpu'), r.name);
    assert.equal(r.ids.length, STEPS);
    ids[backend] = r.ids;
  }
  assert.deepEqual(ids.webgpu, ids.cpu);
  assert.deepEqual(page.errors, []);
});
