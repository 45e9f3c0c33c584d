// The npm package as a user gets it: `npm pack` of www/, installed into a fresh folder,
// resolved through package.json's `exports`, and imported in the browser.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { root, startBrowser } from './harness.mjs';

let tmp;
let app;
let tarball;

before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'pensive-pack-'));
  const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: join(root, 'www'), encoding: 'utf8' }));
  tarball = packed[0];
  app = join(tmp, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--offline', join(tmp, tarball.filename)], { cwd: app, stdio: 'pipe' });
});

after(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('the packed tarball holds the built module, the JS API and its types, and nothing else', () => {
  const files = tarball.files.map((f) => f.path).sort();
  for (const f of ['package.json', 'src/index.js', 'src/index.d.ts', 'src/worker.js', 'pkg/pensive.js', 'pkg/pensive_bg.wasm',
    'pkg/pensive_relaxed_bg.wasm', 'pkg/threads/pensive.js', 'pkg/threads/pensive_bg.wasm', 'pkg/threads/pensive_relaxed_bg.wasm']) {
    assert.ok(files.includes(f), `${f} missing from the tarball: ${files.join(', ')}`);
  }
  // The threaded build's pool workers run wasm-bindgen-rayon's script from the package.
  assert.ok(files.some((f) => /^pkg\/threads\/snippets\/wasm-bindgen-rayon-[^/]+\/src\/workerHelpers\.js$/.test(f)), files.join(', '));
  assert.ok(!files.some((f) => f.startsWith('demo/') || f.startsWith('node_modules/') || f.startsWith('scripts/')), files.join(', '));
  for (const path of ['pkg/pensive_bg.wasm', 'pkg/pensive_relaxed_bg.wasm', 'pkg/threads/pensive_bg.wasm', 'pkg/threads/pensive_relaxed_bg.wasm']) {
    const wasm = tarball.files.find((f) => f.path === path);
    assert.ok(wasm.size > 100_000, `suspiciously small ${path}: ${wasm.size} bytes`);
  }
});

test('the installed package resolves through its exports map in node', () => {
  const script = `
    const m = await import('pensive');
    const wasm = import.meta.resolve('pensive/wasm');
    const wasmThreads = import.meta.resolve('pensive/wasm-threads');
    console.log(JSON.stringify({ keys: Object.keys(m).sort(), wasm, wasmThreads, types: import.meta.resolve('pensive/package.json') }));`;
  const out = JSON.parse(execFileSync('node', ['--input-type=module', '-e', script], { cwd: app, encoding: 'utf8' }));
  assert.deepEqual(out.keys, ['ERROR_CODES', 'Engine', 'Pensive', 'PensiveError', 'PensiveWorker', 'default', 'resolveModelUrl']);
  assert.ok(existsSync(new URL(out.wasm)), out.wasm);
  assert.ok(existsSync(new URL(out.wasmThreads)), out.wasmThreads);
  const pkg = JSON.parse(readFileSync(new URL(out.types), 'utf8'));
  assert.ok(existsSync(join(app, 'node_modules', 'pensive', pkg.types)), `types file ${pkg.types} missing`);
});

test('the installed package imports and runs in the browser', async () => {
  writeFileSync(join(app, 'index.html'), `<!doctype html><meta charset="utf-8">
<script type="importmap">{"imports": {"pensive": "/app/node_modules/pensive/src/index.js"}}</script>
<script type="module">
  import { Pensive } from 'pensive';
  window.result = Pensive.version().then((v) => ({ v }), (e) => ({ error: String(e) }));
</script>`);
  const browser = await startBrowser({ extraMounts: { '/app/': app } });
  try {
    const page = await browser.newPage('/app/');
    const result = await page.evaluate(() => window.result);
    const cargoVersion = readFileSync(join(root, 'Cargo.toml'), 'utf8').match(/^version = "([^"]+)"/m)[1];
    assert.deepEqual(result, { v: cargoVersion });
    assert.deepEqual(page.errors, []);
  } finally {
    await browser.close();
  }
});
