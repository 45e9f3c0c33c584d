#!/usr/bin/env node
// Build the npm package in place: www/pkg/ then holds what package.json's `exports` point at.
//
//   cargo build --release --lib --target wasm32-unknown-unknown   (simd128: ../.cargo/config.toml)
//   wasm-bindgen --target web           (must be the exact version of the crate in Cargo.lock)
//   wasm-opt -O3                        (binaryen from npm; Debian's v108 emits a broken module)
//
// Environment: CARGO_TARGET_DIR is honoured; PENSIVE_WASM_OPT=0 skips wasm-opt (faster
// development builds); WASM_BINDGEN overrides the wasm-bindgen executable.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const www = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const root = resolve(www, '..');
const outDir = join(www, 'pkg');
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(root, 'target');
const wasmIn = join(targetDir, 'wasm32-unknown-unknown', 'release', 'pensive.wasm');

function fail(message) {
  console.error(`build: ${message}`);
  process.exit(1);
}

function run(cmd, args, opts = {}) {
  console.error(`build: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.error) fail(`cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) fail(`${cmd} exited with ${r.status}`);
}

function output(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

// The CLI rewrites the module's import section according to a schema that changes between
// releases, so any mismatch with the crate yields a module that fails at instantiation.
function lockedVersion(name) {
  const lock = readFileSync(join(root, 'Cargo.lock'), 'utf8');
  const m = lock.match(new RegExp(`\\[\\[package\\]\\]\\nname = "${name}"\\nversion = "([^"]+)"`));
  if (!m) fail(`${name} is not in Cargo.lock`);
  return m[1];
}

function findWasmBindgen() {
  const candidates = [process.env.WASM_BINDGEN, 'wasm-bindgen', join(homedir(), '.cargo', 'bin', 'wasm-bindgen')];
  for (const c of candidates.filter(Boolean)) {
    const v = output(c, ['--version']);
    if (v) return { exe: c, version: v.split(/\s+/)[1] };
  }
  return null;
}

const want = lockedVersion('wasm-bindgen');
const bindgen = findWasmBindgen();
if (!bindgen) fail(`wasm-bindgen not found; install it with: cargo install wasm-bindgen-cli --version =${want}`);
if (bindgen.version !== want) {
  fail(`wasm-bindgen ${bindgen.version} does not match the crate's ${want}; run: cargo install wasm-bindgen-cli --version =${want}`);
}

const t0 = Date.now();
run('cargo', ['build', '--release', '--lib', '--target', 'wasm32-unknown-unknown']);
if (!existsSync(wasmIn)) fail(`cargo produced no ${wasmIn}`);

rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });
run(bindgen.exe, ['--target', 'web', '--out-dir', outDir, '--out-name', 'pensive', wasmIn]);

const wasmOut = join(outDir, 'pensive_bg.wasm');
const before = statSync(wasmOut).size;
if (process.env.PENSIVE_WASM_OPT !== '0') {
  const wasmOpt = join(www, 'node_modules', '.bin', 'wasm-opt');
  if (!existsSync(wasmOpt)) fail('wasm-opt (npm binaryen) is missing; run: npm ci --prefix www');
  const tmp = `${wasmOut}.opt`;
  // The features rustc enables by default for wasm32 plus simd128; wasm-opt refuses a module
  // that uses a feature it was not told about.
  const features = ['simd', 'bulk-memory', 'nontrapping-float-to-int', 'sign-ext', 'mutable-globals',
    'reference-types', 'multivalue'].map((f) => `--enable-${f}`);
  run(wasmOpt, ['-O3', ...features, wasmOut, '-o', tmp]);
  renameSync(tmp, wasmOut);
}
const after = statSync(wasmOut).size;
const mib = (n) => (n / 2 ** 20).toFixed(2);
console.error(`build: ${wasmOut}: ${mib(after)} MiB (before wasm-opt ${mib(before)} MiB), ${((Date.now() - t0) / 1000).toFixed(1)} s`);
