// The demo page in headless Chromium, as a user drives it: load SmolLM2 (in a Web Worker, the
// page's default), type a question, press Generate, and see the thinking (with the forced
// "Wait" highlighted), the answer and the stats. Saves tests/browser/out/demo.png for the note.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { SMOLLM2, outDir, requireModel, startBrowser } from './harness.mjs';

/** Load and generate on the wasm CPU backend: seconds, where SwiftShader would take minutes. */
const LOAD_TIMEOUT_MS = 60_000;
const GENERATE_TIMEOUT_MS = 90_000;

let browser;
before(async () => {
  browser = await startBrowser();
});
after(async () => {
  await browser?.close();
});

/** Set a form control's value the way a user's input does (range sliders included). */
async function setValue(page, id, value) {
  await page.evaluate(([id, value]) => {
    const el = document.getElementById(id);
    el.value = String(value);
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  }, [id, value]);
}

test('the demo page renders its controls and presets', async () => {
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
  await page.close();
});

test('demo: load SmolLM2, ask, Generate, see thinking, answer and stats', { timeout: 180_000 }, async (t) => {
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const page = await browser.newPage('/demo/');
  await page.setViewportSize({ width: 1100, height: 1400 });
  await page.waitForFunction(() => document.getElementById('version').textContent.startsWith('v'), null, { timeout: 30_000 });
  await page.selectOption('#model', '/models/smollm2-135m-instruct-q4_1.gguf');
  await page.selectOption('#backend', 'cpu');
  assert.equal(await page.isChecked('#worker'), true, 'the demo runs the engine in a worker by default');
  await page.click('#load');
  await page.waitForFunction(() => !document.getElementById('generate').disabled, null, { timeout: LOAD_TIMEOUT_MS });
  assert.match(await page.textContent('#status'), /^Loaded/);
  assert.match(await page.textContent('#backend-info'), /cpu \(wasm\)/);

  // A budget under which SmolLM2 ends its thinking early, is told to "Wait", then answers.
  await setValue(page, 'think-min', 8);
  await setValue(page, 'think-max', 16);
  await setValue(page, 'max-tokens', 24);
  await page.fill('#prompt', 'What is the capital of France?');
  await page.click('#generate');
  await page.waitForFunction(() => document.getElementById('status').textContent !== '' &&
    !document.getElementById('generate').disabled, null, { timeout: GENERATE_TIMEOUT_MS });
  assert.equal(await page.textContent('#status'), 'Done.');

  const thinking = await page.textContent('#thinking');
  const answer = await page.textContent('#answer');
  assert.match(thinking, /Paris/);
  assert.ok(answer.trim().length > 0, 'no answer text');
  const forced = await page.locator('#thinking mark.forced').allTextContents();
  assert.ok(forced.some((f) => f.includes('Wait')), `forced insertions: ${JSON.stringify(forced)}`);
  const stats = Object.fromEntries(await page.$$eval('#stats tr', (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent))));
  assert.equal(stats.continuations, '1');
  assert.ok(Number(stats['thinking tokens']) >= 8, JSON.stringify(stats));
  assert.ok(parseFloat(stats.decode) > 0, `decode rate: ${stats.decode}`);
  assert.deepEqual(page.errors, []);
  mkdirSync(outDir, { recursive: true });
  await page.screenshot({ path: join(outDir, 'demo.png'), fullPage: true });
  await page.close();
});
