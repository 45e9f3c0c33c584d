// The demo page in headless Chromium, as a user drives it: presets fill the sampling fields;
// then a chat with SmolLM2 (in a Web Worker, the page's default): two turns, the second sent
// with the first in its history, and Regenerate of the second, which must send the same
// history and replace the answer (not add one). Saves tests/browser/out/demo-chat.png.
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

async function openDemo() {
  const page = await browser.newPage('/demo/');
  await page.waitForFunction(() => document.getElementById('version').textContent.startsWith('v'), null, { timeout: 30_000 });
  return page;
}

async function sampling(page) {
  return page.evaluate(() => Object.fromEntries(['temperature', 'top-p', 'top-k', 'min-p', 'repeat-penalty', 'think-open']
    .map((id) => { const el = document.getElementById(id); return [id, el.type === 'checkbox' ? el.checked : el.value]; })));
}

test('the demo page renders its controls; presets fill the sampling fields', async () => {
  const page = await openDemo();
  for (const id of ['model', 'file', 'backend', 'load', 'progress', 'temperature', 'top-p', 'top-k', 'min-p', 'repeat-penalty', 'seed',
    'think-min', 'think-max', 'continuations', 'max-continuations', 'answer-prefix', 'chat', 'prompt', 'send',
    'regenerate', 'stop', 'new-chat']) {
    assert.equal(await page.locator(`#${id}`).count(), 1, `#${id} missing`);
  }
  const presets = await page.$$eval('#model option', (os) => os.map((o) => ({ value: o.value, text: o.textContent, selected: o.selected })));
  const find = (name) => presets.find((p) => p.text.includes(name)) ?? assert.fail(`no ${name} preset in ${JSON.stringify(presets)}`);
  const smol = find('SmolLM2-135M');
  const qwen3 = find('Qwen3-0.6B');
  const r1 = find('DeepSeek-R1-Distill-Qwen-1.5B');
  assert.ok(smol.selected && smol.text.includes('offline'), 'the local SmolLM2 is the default');
  assert.ok(smol.value.startsWith('/models/'), smol.value);

  // The hub presets are hf: references the package resolves (nothing is fetched here).
  const urls = await page.evaluate(async (refs) => {
    const { resolveModelUrl } = await import('/src/source.js');
    return refs.map(resolveModelUrl);
  }, [qwen3.value, r1.value]);
  assert.deepEqual(urls, [
    'https://huggingface.co/unsloth/Qwen3-0.6B-GGUF/resolve/main/Qwen3-0.6B-Q4_K_M.gguf',
    'https://huggingface.co/unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF/resolve/main/DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf',
  ]);

  assert.deepEqual(await sampling(page), { temperature: '0', 'top-p': '1', 'top-k': '0', 'min-p': '0', 'repeat-penalty': '1.1', 'think-open': true });
  await page.selectOption('#model', qwen3.value);
  assert.deepEqual(await sampling(page), { temperature: '0.6', 'top-p': '0.95', 'top-k': '20', 'min-p': '0', 'repeat-penalty': '1', 'think-open': false });
  assert.ok(Number(await page.inputValue('#think-max')) >= 512, 'a reasoning model gets a real thinking budget');
  await page.selectOption('#model', r1.value);
  assert.deepEqual(await sampling(page), { temperature: '0.6', 'top-p': '0.95', 'top-k': '0', 'min-p': '0', 'repeat-penalty': '1', 'think-open': false });
  await page.selectOption('#model', smol.value);
  assert.deepEqual(await sampling(page), { temperature: '0', 'top-p': '1', 'top-k': '0', 'min-p': '0', 'repeat-penalty': '1.1', 'think-open': true });
  assert.equal(await page.isDisabled('#send'), true, 'nothing to send to before a model is loaded');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('demo chat: two turns with SmolLM2, then Regenerate replaces the last answer', { timeout: 300_000 }, async (t) => {
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const page = await openDemo();
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.selectOption('#backend', 'cpu');
  assert.equal(await page.isChecked('#worker'), true, 'the demo runs the engine in a worker by default');
  await page.click('#load');
  await page.waitForFunction(() => !document.getElementById('send').disabled, null, { timeout: LOAD_TIMEOUT_MS });
  assert.match(await page.textContent('#status'), /^Loaded/);
  // The test server makes the page cross-origin isolated: the worker runs the threaded build.
  assert.match(await page.textContent('#backend-info'), /cpu \(wasm, \d+ threads\) — wasm: \d+ threads$/);

  // Record what the page sends: the chat API's requests, and what reaches the engine's own
  // generate underneath (the chat API is built on it).
  await page.evaluate(() => {
    const engine = window.pensiveDemo.engine;
    const generate = engine.generate.bind(engine);
    const chat = engine.chat;
    window.sent = [];
    window.chatRequests = [];
    engine.generate = (prompt, { signal, ...options }) => {
      window.sent.push({ prompt: structuredClone(prompt), options: structuredClone(options) });
      return generate(prompt, { signal, ...options });
    };
    engine.chat = { completions: { create: ({ signal, ...request }) => {
      window.chatRequests.push(structuredClone(request));
      return chat.completions.create({ signal, ...request });
    } } };
  });
  const sent = () => page.evaluate(() => window.sent);
  const conversation = () => page.evaluate(() => window.pensiveDemo.conversation);
  /** Press a button that starts a turn and wait for the turn to end. */
  async function turn(button) {
    await page.click(button);
    assert.equal(await page.isDisabled('#send'), true, 'a turn is running');
    await page.waitForFunction(() => !document.getElementById('send').disabled, null, { timeout: GENERATE_TIMEOUT_MS });
    assert.equal(await page.textContent('#status'), 'Done.');
  }
  const bubbles = (role) => page.locator(`#chat .turn.${role}`);

  // Turn 1 with the SmolLM2 preset (greedy, thinking 8..64 tokens): SmolLM2 ends its thinking
  // early and is told to "Wait" (the native CLI gives the same with these settings).
  assert.deepEqual([await page.inputValue('#think-min'), await page.inputValue('#think-max')], ['8', '64']);
  const q1 = 'What is the capital of France?';
  await page.fill('#prompt', q1);
  await turn('#send');
  assert.equal(await page.inputValue('#prompt'), '', 'the composer empties once sent');
  const first = bubbles('assistant').first();
  assert.match(await first.locator('.thinking-text').textContent(), /Paris/);
  assert.ok((await first.locator('.answer-text').textContent()).trim().length > 0, 'no answer text');
  const forced = await first.locator('.thinking-text mark.forced').allTextContents();
  assert.ok(forced.some((f) => f.includes('Wait')), `forced insertions: ${JSON.stringify(forced)}`);
  assert.match(await first.locator('.turn-footer').textContent(), /greedy/);
  // The thinking folded away once the answer started; its summary opens it.
  const thinkingBlock = first.locator('details.thinking');
  assert.equal(await thinkingBlock.evaluate((d) => d.open), false, 'thinking still open after the answer started');
  await thinkingBlock.locator('summary').click();
  assert.equal(await thinkingBlock.evaluate((d) => d.open), true);
  assert.equal(await first.locator('.live-rate').count(), 0, 'the live rate gives way to the stats');
  const chatRequests = await page.evaluate(() => window.chatRequests);
  assert.equal(chatRequests.length, 1, 'the demo asks through engine.chat.completions.create');
  assert.equal(chatRequests[0].stream, true);
  assert.deepEqual(chatRequests[0].messages, [{ role: 'user', content: q1 }]);
  const stats = Object.fromEntries(await first.locator('table.stats tr').evaluateAll(
    (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent))));
  assert.equal(stats.continuations, '1');
  assert.ok(Number(stats['thinking tokens']) >= 8, JSON.stringify(stats));
  assert.ok(parseFloat(stats.decode) > 0, `decode rate: ${stats.decode}`);

  // The stored turn is the model's whole turn, thinking included (the template decides what
  // of it the model sees again), and it is exactly what the bubble shows.
  const afterFirst = await conversation();
  assert.equal(afterFirst.length, 2);
  assert.deepEqual(afterFirst[0], { role: 'user', content: q1 });
  const a1 = afterFirst[1];
  assert.equal(a1.role, 'assistant');
  assert.match(a1.content, /^<think>[^]*Wait[^]*<\/think>[^]*\S/);
  // The view shows reasoning_content (no markers) and the answer; the stored turn puts the
  // markers back around the thinking.
  const shown = (await first.locator('.thinking-text').textContent()) + (await first.locator('.answer-text').textContent());
  assert.equal(a1.content.replace(/<\/?think>/g, '').replace(/\s+/g, ''), shown.replace(/\s+/g, ''));

  // Turn 2: the history sent holds turn 1 as stored.
  const q2 = 'And what is the capital of Germany?';
  await page.fill('#prompt', q2);
  await turn('#send');
  let requests = await sent();
  assert.equal(requests.length, 2);
  assert.deepEqual(requests[0].prompt, [{ role: 'user', content: q1 }]);
  assert.deepEqual(requests[1].prompt, [{ role: 'user', content: q1 }, a1, { role: 'user', content: q2 }]);
  assert.equal(requests[1].options.temperature, 0);
  assert.equal(requests[1].options.seed, undefined, 'greedy turns send no seed');
  assert.equal(await bubbles('user').count(), 2);
  assert.equal(await bubbles('assistant').count(), 2);
  const a2 = (await conversation())[3];
  assert.equal(a2.role, 'assistant');

  // Regenerate turn 2 twice while sampling: the same history each time (two user turns, one
  // assistant turn), no seed sent, so the engine draws a fresh one each time, shown on the
  // answer; the answer is replaced.
  await setValue(page, 'temperature', 0.6);
  const seeds = [];
  for (let i = 0; i < 2; i++) {
    await turn('#regenerate');
    requests = await sent();
    const { prompt, options } = requests.at(-1);
    assert.deepEqual(prompt, [{ role: 'user', content: q1 }, a1, { role: 'user', content: q2 }]);
    assert.deepEqual(prompt.map((m) => m.role), ['user', 'assistant', 'user']);
    assert.equal(options.temperature, 0.6);
    assert.equal(options.seed, undefined, 'Regenerate leaves the seed to the engine');
    assert.equal(await bubbles('user').count(), 2);
    assert.equal(await page.locator('#chat .turn.assistant').count(), 2, 'Regenerate replaces the answer, it does not add one');
    const footer = await bubbles('assistant').last().locator('.turn-footer').textContent();
    assert.match(footer, /regenerated/);
    const seed = footer.match(/seed (\d+)/);
    assert.ok(seed, footer);
    seeds.push(Number(seed[1]));
    const now = await conversation();
    assert.equal(now.length, 4);
    assert.deepEqual(now.slice(0, 3), [{ role: 'user', content: q1 }, a1, { role: 'user', content: q2 }]);
    assert.equal(now[3].role, 'assistant');
  }
  assert.notEqual(seeds[0], seeds[1], 'each Regenerate draws its own seed');
  assert.deepEqual(page.errors, []);

  mkdirSync(outDir, { recursive: true });
  await page.screenshot({ path: join(outDir, 'demo-chat.png'), fullPage: true });

  // A turn the engine refuses (minimum thinking above the maximum) leaves the conversation as
  // it was: a new question goes back to the composer, a refused Regenerate brings the
  // previous answer back.
  const kept = await conversation();
  const lastAnswer = await bubbles('assistant').last().textContent();
  await setValue(page, 'think-min', Number(await page.inputValue('#think-max')) + 8);
  const refused = async (button) => {
    await page.click(button);
    await page.waitForFunction(() => !document.getElementById('send').disabled, null, { timeout: GENERATE_TIMEOUT_MS });
    assert.match(await page.textContent('#status'), /^Generation failed — invalid_options: /);
    assert.deepEqual(await conversation(), kept);
    assert.equal(await bubbles('user').count(), 2);
    assert.equal(await page.locator('#chat .turn.assistant').count(), 2);
    assert.equal(await bubbles('assistant').last().isVisible(), true);
    assert.equal(await bubbles('assistant').last().textContent(), lastAnswer);
  };
  await page.fill('#prompt', 'Is this kept?');
  await refused('#send');
  assert.equal(await page.inputValue('#prompt'), 'Is this kept?');
  await refused('#regenerate');

  // Stop keeps what was written so far as the (stopped) answer.
  await setValue(page, 'think-min', 8);
  await page.click('#send');
  await page.waitForFunction(() => document.querySelectorAll('#chat .turn.assistant').length === 3 &&
    document.querySelector('#chat .turn.assistant:last-child .thinking-text')?.textContent.length > 0, null, { timeout: GENERATE_TIMEOUT_MS });
  // While it streams, the turn shows its speed.
  await page.waitForFunction(() => /^\d+ tokens · \d+\.\d tok\/s$/.test(document.querySelector('#chat .turn.assistant:last-child .live-rate')?.textContent ?? ''),
    null, { timeout: GENERATE_TIMEOUT_MS });
  await page.click('#stop');
  await page.waitForFunction(() => !document.getElementById('send').disabled, null, { timeout: GENERATE_TIMEOUT_MS });
  assert.equal(await page.textContent('#status'), 'Stopped.');
  const afterStop = await conversation();
  assert.deepEqual(afterStop.slice(0, 5), [...kept, { role: 'user', content: 'Is this kept?' }]);
  assert.equal(afterStop.length, 6);
  assert.match(afterStop[5].content, /^<think>/);
  assert.match(await bubbles('assistant').last().locator('.turn-footer').textContent(), /stopped/);
  assert.deepEqual(page.errors, []);
  await page.close();
});
