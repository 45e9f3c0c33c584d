// The package as a web developer bundles it: `npm pack` of www/, installed offline into a fresh
// app whose main.js is the README's 10-line example (a Web Worker, the chat API, streaming),
// built by Vite with no configuration at all, served and run in headless Chromium. Vite must
// find the worker and the wasm on its own (`new Worker(new URL('./worker.js',
// import.meta.url), { type: 'module' })`), and the answer must be the native CLI's.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { build } from 'vite';
import { SMOLLM2, nativePensive, requireModel, root, startBrowser } from './harness.mjs';

/** The usage example, exactly as the README shows it (the model path is where the test server has it). */
export const EXAMPLE = `import { Pensive } from 'pensive';

const engine = await Pensive.load({ model: '/models/smollm2-135m-instruct-q4_1.gguf', backend: 'cpu', worker: true });
const stream = await engine.chat.completions.create({
  messages: [{ role: 'user', content: 'What is the capital of France?' }],
  stream: true, max_tokens: 40, temperature: 0, thinking: { open: true, min_tokens: 12, max_tokens: 15 },
});
let reasoning = '', answer = '';
for await (const chunk of stream) { reasoning += chunk.choices[0]?.delta.reasoning_content ?? ''; answer += chunk.choices[0]?.delta.content ?? ''; }
document.body.textContent = JSON.stringify({ reasoning, answer });
`;
const NATIVE_FLAGS = ['--chat', 'What is the capital of France?', '--max-tokens', '40', '--temperature', '0', '--think-open', '--think-min', '12', '--think-max', '15'];

let tmp;
let app;

before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'pensive-vite-'));
  const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: join(root, 'www'), encoding: 'utf8' }));
  app = join(tmp, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--offline', join(tmp, packed[0].filename)], { cwd: app, stdio: 'pipe' });
  writeFileSync(join(app, 'index.html'), '<!doctype html><meta charset="utf-8"><title>app</title><script type="module" src="./main.js"></script>\n');
  writeFileSync(join(app, 'main.js'), EXAMPLE);
});

after(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('the 10-line example, bundled by Vite from the packed package, runs in Chromium and answers as the native CLI', { timeout: 120_000 }, async (t) => {
  assert.equal(EXAMPLE.trimEnd().split('\n').length, 10);
  if (!requireModel(SMOLLM2)) return t.skip('model missing');
  const t0 = Date.now();
  // No vite.config: what `npm create vite` users get. `base` only because the test server mounts the app under /app/.
  await build({ root: app, base: '/app/', configFile: false, logLevel: 'warn', build: { outDir: join(app, 'dist') } });
  const buildS = (Date.now() - t0) / 1000;
  const assets = readdirSync(join(app, 'dist', 'assets'));
  assert.ok(assets.some((f) => f.endsWith('.wasm')), `no wasm among ${assets}`);
  const workers = assets.filter((f) => f.startsWith('worker-') && f.endsWith('.js'));
  assert.equal(workers.length, 1, `Vite did not emit the worker as its own chunk: ${assets}`);
  // The threaded build's pool workers (wasm-bindgen-rayon's script) and the four modules
  // (single and threaded builds, each simd128 and relaxed SIMD).
  assert.ok(assets.some((f) => f.startsWith('workerHelpers') && f.endsWith('.js')), `no pool worker among ${assets}`);
  assert.equal(assets.filter((f) => f.endsWith('.wasm')).length, 4, `not all four wasm modules among ${assets}`);
  assert.equal(assets.filter((f) => f.startsWith('pensive_relaxed_bg') && f.endsWith('.wasm')).length, 2, `not both relaxed-SIMD modules among ${assets}`);

  const native = nativePensive(['generate', '--model', SMOLLM2, ...NATIVE_FLAGS, '--json']);
  const text = (phase) => native.events.filter((e) => e.type === 'token' && e.phase === phase && !e.marker).map((e) => e.text).join('');

  const browser = await startBrowser({ extraMounts: { '/app/': join(app, 'dist') } });
  try {
    const requests = [];
    browser.context.on('request', (r) => requests.push(new URL(r.url()).pathname));
    const page = await browser.newPage('/app/');
    await page.waitForFunction(() => document.body?.textContent.startsWith('{'), null, { timeout: 90_000 });
    const result = JSON.parse(await page.evaluate(() => document.body.textContent));
    assert.deepEqual(result, { reasoning: text('thinking'), answer: text('answer') });
    assert.ok(result.reasoning.length > 0 && result.answer.length > 0, JSON.stringify(result));
    assert.deepEqual(page.errors, []);
    // The worker and the wasm came from the bundle, not from the package's own layout.
    assert.ok(requests.some((p) => p.startsWith('/app/assets/worker')), requests.join(' '));
    assert.ok(requests.some((p) => p.startsWith('/app/assets/') && p.endsWith('.wasm')), requests.join(' '));
    // Chromium runs relaxed SIMD: the bundled relaxed module is the one that was fetched.
    assert.ok(requests.some((p) => p.startsWith('/app/assets/pensive_relaxed_bg') && p.endsWith('.wasm')), requests.join(' '));
    // The test server makes the page cross-origin isolated: the bundled worker ran the threaded
    // build and started its pool from the bundle.
    assert.ok(requests.some((p) => p.startsWith('/app/assets/workerHelpers')), requests.join(' '));
    console.error(`vite build ${buildS.toFixed(1)} s, whole test ${((Date.now() - t0) / 1000).toFixed(1)} s: ${JSON.stringify(result)}`);
    // Kept for the report: the example's own file, as the app built it.
    assert.equal(readFileSync(join(app, 'main.js'), 'utf8'), EXAMPLE);
  } finally {
    await browser.close();
  }
});
