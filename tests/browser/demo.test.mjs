// The demo page in headless Chromium; saves a screenshot to tests/browser/out/demo.png.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { outDir, startBrowser } from './harness.mjs';

let browser;
before(async () => {
  browser = await startBrowser();
});
after(async () => {
  await browser?.close();
});

test('the demo page renders its controls and the wasm module loads', async () => {
  const page = await browser.newPage('/demo/');
  await page.waitForFunction(() => document.getElementById('version').textContent.startsWith('v'), null, { timeout: 30_000 });
  for (const id of ['model', 'file', 'backend', 'load', 'progress', 'think-min', 'think-max', 'continuations',
    'max-continuations', 'answer-prefix', 'prompt', 'generate', 'stop', 'thinking', 'answer', 'stats']) {
    assert.equal(await page.locator(`#${id}`).count(), 1, `#${id} missing`);
  }
  const presets = await page.locator('#model option').allTextContents();
  assert.ok(presets.some((p) => p.includes('SmolLM2')));
  assert.ok(presets.some((p) => p.includes('Qwen2.5-0.5B-Instruct')));
  assert.ok(presets.some((p) => p.includes('DeepSeek-R1-Distill-Qwen-1.5B')));
  assert.deepEqual(page.errors, []);
  mkdirSync(outDir, { recursive: true });
  await page.screenshot({ path: join(outDir, 'demo.png'), fullPage: true });
});
