// Shared setup of the browser tests: one static server (www/ at /, models/ at /models/, the
// test pages at /tests/) and headless Debian Chromium driven by playwright-core, with the
// flags TESTING.md found necessary for WebGPU on SwiftShader in a sandbox without network.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { defaultMounts, serve } from '../../www/serve.mjs';

export const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, '..', '..');
export const outDir = join(here, 'out');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/lib/chromium/chromium';
export const SMOLLM2 = 'models/smollm2-135m-instruct-q4_1.gguf';

export const CHROMIUM_ARGS = [
  '--no-sandbox', // root in a container
  '--enable-unsafe-webgpu', // without it navigator.gpu.requestAdapter() is null on Linux
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking', // otherwise Chromium floods the closed network
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

/**
 * Start the server and a browser with a fresh on-disk profile (a persistent profile, unlike
 * an incognito context, has a real Cache API quota, which the cache tests need).
 * `extraMounts` maps URL prefixes to folders; `isolated: false` serves the pages without
 * COOP/COEP (not cross-origin isolated). Returns {url, context, newPage, close}.
 */
export async function startBrowser({ extraMounts = {}, isolated = true } = {}) {
  const server = await serve({ port: 0, isolated, mounts: { ...defaultMounts(), '/tests/': join(here, 'pages'), ...extraMounts } });
  const profile = mkdtempSync(join(tmpdir(), 'pensive-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      // Playwright passes --disable-gpu by default, which removes WebGPU altogether.
      ignoreDefaultArgs: ['--disable-gpu'],
      args: CHROMIUM_ARGS,
    });
  } catch (e) {
    await server.close();
    rmSync(profile, { recursive: true, force: true });
    throw e;
  }
  /** A page with console/page errors collected (tests assert on them). */
  async function newPage(path = '/tests/') {
    const page = await context.newPage();
    page.errors = [];
    page.logs = [];
    page.on('pageerror', (e) => page.errors.push(String(e)));
    page.on('console', (m) => page.logs.push(`${m.type()}: ${m.text()}`));
    await page.goto(server.url + path);
    return page;
  }
  async function close() {
    await context.close();
    await server.close();
    rmSync(profile, { recursive: true, force: true });
  }
  return { url: server.url, context, newPage, close };
}

/**
 * Call the page's `Pensive` API: `fn` runs in the page with the module as its first
 * argument. A PensiveError is returned as {error: {name, code, message}} so tests can
 * assert on it (playwright would flatten it into a plain message).
 */
export async function withPensive(page, fn, arg) {
  return page.evaluate(
    async ([src, a]) => {
      const mod = await import('/src/index.js');
      // eslint-disable-next-line no-new-func
      const f = new Function(`return (${src})`)();
      try {
        return await f(mod, a);
      } catch (e) {
        return { error: { name: e?.name, code: e?.code, message: String(e?.message ?? e) } };
      }
    },
    [fn.toString(), arg],
  );
}

/**
 * Whether `path` (relative to the repository) exists. CI sets PENSIVE_REQUIRE_MODELS=1: a
 * missing model is then a failure, never a skip; elsewhere the skip is loud.
 */
export function requireModel(path) {
  if (existsSync(join(root, path))) return true;
  assert.ok(!process.env.PENSIVE_REQUIRE_MODELS, `${path} is missing (run scripts/fetch-models.sh)`);
  console.error(`SKIPPING: ${path} is missing (run scripts/fetch-models.sh)`);
  return false;
}

let nativeExe = null;

/**
 * Run the native `pensive` CLI (the reference the browser must match) with `args` and parse
 * its `--json` output. Built once through cargo, release mode, as the rest of the suite.
 */
export function nativePensive(args) {
  if (!nativeExe) {
    const out = execFileSync('cargo', ['build', '--release', '--quiet', '--bin', 'pensive', '--message-format=json'],
      { cwd: root, encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'inherit'] });
    for (const line of out.split('\n')) {
      if (!line.startsWith('{')) continue;
      const msg = JSON.parse(line);
      if (msg.reason === 'compiler-artifact' && msg.target?.name === 'pensive' && msg.target.kind.includes('bin')) nativeExe = msg.executable;
    }
    assert.ok(nativeExe, 'cargo built no pensive executable');
  }
  const out = execFileSync(nativeExe, args, { cwd: root, encoding: 'utf8', maxBuffer: 64 << 20 });
  try {
    return JSON.parse(out);
  } catch (e) {
    throw new Error(`${nativeExe} ${args.join(' ')} printed no JSON: ${JSON.stringify(out.slice(0, 200))}`, { cause: e });
  }
}
