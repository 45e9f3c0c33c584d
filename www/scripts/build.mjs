#!/usr/bin/env node
// Build the npm package in place: www/pkg/ then holds what package.json's `exports` point at.
// Two builds of the same crate:
//
//   pkg/pensive*          single thread: stable Rust, simd128 (../.cargo/config.toml)
//   pkg/threads/pensive*  shared memory + atomics (feature `wasm-threads`): nightly Rust with
//                         `-Z build-std` (the prebuilt std has no atomics), rayon on a pool of
//                         Web Workers (wasm-bindgen-rayon). Loaded by src/engine.js only where
//                         the page is cross-origin isolated; the single-thread one otherwise.
//
// and of each a second module with relaxed SIMD (pensive_relaxed_bg.wasm next to
// pensive_bg.wasm): the crate alone recompiled with `-C target-feature=+relaxed-simd` (its
// int8 kernels' `i16x8.relaxed_dot_i8x16_i7x16_s`; the dependencies are the same
// objects). It has the same exports and imports, so the same JS glue loads it (checked:
// wasm-bindgen must emit the same JS for both); src/engine.js picks it where the browser
// validates a relaxed-SIMD instruction. Both compute the same bits (crate/quant/int8.rs).
//
// For each: cargo rustc --release --lib --target wasm32-unknown-unknown, wasm-bindgen --target
// web (the exact version of the crate in Cargo.lock), wasm-opt -O3 (binaryen from npm; Debian's
// v108 emits a broken module).
//
// Environment: CARGO_TARGET_DIR is honoured (the threaded build uses <target>/wasm-threads:
// other flags and another toolchain); PENSIVE_WASM_OPT=0 skips wasm-opt (faster development
// builds); PENSIVE_WASM_THREADS=0 skips the threaded build (the package then always runs on
// one thread); PENSIVE_WASM_RELAXED=0 skips the relaxed-SIMD modules (the package then runs
// simd128 everywhere); WASM_BINDGEN overrides the wasm-bindgen executable.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const www = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const root = resolve(www, '..');
const outDir = join(www, 'pkg');
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(root, 'target');

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

/**
 * The threaded build's flags, for every crate std included: atomic instructions,
 * `bulk-memory` and `mutable-globals` (what wasm-bindgen's thread support needs), simd128 as
 * in the single-thread build (RUSTFLAGS replaces .cargo/config.toml's flags). A shared memory
 * needs a maximum: wasm32's full 4 GiB, as the single-thread module has (the CPU backend holds
 * every weight in it).
 */
const THREADS_RUSTFLAGS = [
  '-C', 'target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128',
  '-C', 'link-arg=--max-memory=4294967296',
].join(' ');

/**
 * The link of the module itself (`cargo rustc -- ...`: the dependencies' builds do not
 * change). Current nightlies no longer make the memory shared because of `+atomics` alone:
 * the memory is made shared and imported (every worker instantiates the module on the page's
 * one), and the thread-local storage symbols that wasm-bindgen's thread transform sets up per
 * worker are exported. Without them wasm-bindgen emits a single-thread module silently;
 * `checkShared` below catches that.
 */
const THREADS_LINK_ARGS = ['--shared-memory', '--import-memory', '--export=__wasm_init_tls', '--export=__tls_size',
  '--export=__tls_align', '--export=__tls_base'].flatMap((a) => ['-C', `link-arg=${a}`]);

// The features rustc enables by default for wasm32 plus simd128; wasm-opt refuses a module
// that uses a feature it was not told about.
const WASM_OPT_FEATURES = ['simd', 'bulk-memory', 'nontrapping-float-to-int', 'sign-ext', 'mutable-globals',
  'reference-types', 'multivalue'];

const mib = (n) => (n / 2 ** 20).toFixed(2);

/** The crate's own flags for the relaxed-SIMD module (`cargo rustc -- ...`). */
const RELAXED_RUSTC_ARGS = ['-C', 'target-feature=+relaxed-simd'];

function build({ name, outDir, toolchain = [], cargoArgs = [], rustcArgs = [], env = {}, targetDir: dir, features = [] }) {
  const t0 = Date.now();
  run('cargo', [...toolchain, 'rustc', '--release', '--lib', '--target', 'wasm32-unknown-unknown', ...cargoArgs, '--', ...rustcArgs],
    { env: { ...process.env, CARGO_TARGET_DIR: dir, ...env } });
  const wasmIn = join(dir, 'wasm32-unknown-unknown', 'release', 'pensive.wasm');
  if (!existsSync(wasmIn)) fail(`cargo produced no ${wasmIn}`);
  mkdirSync(outDir, { recursive: true });
  run(bindgen.exe, ['--target', 'web', '--out-dir', outDir, '--out-name', 'pensive', wasmIn]);
  const wasmOut = join(outDir, 'pensive_bg.wasm');
  const before = statSync(wasmOut).size;
  if (process.env.PENSIVE_WASM_OPT !== '0') {
    const wasmOpt = join(www, 'node_modules', '.bin', 'wasm-opt');
    if (!existsSync(wasmOpt)) fail('wasm-opt (npm binaryen) is missing; run: npm ci --prefix www');
    const tmp = `${wasmOut}.opt`;
    run(wasmOpt, ['-O3', ...[...WASM_OPT_FEATURES, ...features].map((f) => `--enable-${f}`), wasmOut, '-o', tmp]);
    renameSync(tmp, wasmOut);
  }
  const after = statSync(wasmOut).size;
  console.error(`build: ${name}: ${wasmOut}: ${mib(after)} MiB (before wasm-opt ${mib(before)} MiB), ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

/** The threaded module must import a shared memory, or its workers would not share one. */
function checkShared(outDir, file = 'pensive_bg.wasm') {
  if (!importsSharedMemory(readFileSync(join(outDir, file)))) {
    fail(`${outDir}/${file} does not import a shared memory: it was not linked with one`);
  }
}

/**
 * Whether a wasm binary imports a shared memory, read from its import section (not compiled:
 * this Node's V8 may not know every instruction the module uses, e.g. relaxed SIMD).
 */
function importsSharedMemory(bytes) {
  let at = 8; // magic and version
  const leb = () => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const b = bytes[at++];
      value += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return value;
    }
  };
  const name = () => {
    const n = leb();
    at += n;
  };
  while (at < bytes.length) {
    const id = bytes[at++];
    const size = leb();
    const end = at + size;
    if (id === 2) {
      for (let count = leb(); count > 0; count--) {
        name();
        name();
        const kind = bytes[at++];
        if (kind === 0) leb(); // function: type index
        else if (kind === 1) { at++; const flags = leb(); leb(); if (flags & 1) leb(); } // table
        else if (kind === 2) { const flags = leb(); return (flags & 2) !== 0; } // memory: bit 1 = shared
        else if (kind === 3) at += 2; // global: value type, mutability
        else return false;
      }
      return false;
    }
    at = end;
  }
  return false;
}

/**
 * Two edits to wasm-bindgen-rayon's worker script (the pool workers run it; the threaded
 * module's JS imports it). It finds the module's JS with `await import('../../..')`: a folder,
 * which bundlers resolve through a package.json but a browser cannot load, and a dynamic
 * import, which Vite's default worker format (iife, no code splitting) refuses: it imports the
 * file itself (pkg/threads/pensive.js) statically instead, which works unbundled and bundled
 * (the two modules import each other; neither uses the other's bindings before both have
 * run). And its top level listens on `self`, which node (a server-side render importing the
 * package) has not. Fails loudly if a new version of the crate changes either line, instead
 * of shipping a pool that never starts.
 */
const RAYON_WORKER_EDITS = [
  ["const pkg = await import('../../..');", 'const pkg = pensive;'],
  ["waitForMsgType(self, 'wasm_bindgen_worker_init').then(",
    "if (typeof self !== 'undefined') waitForMsgType(self, 'wasm_bindgen_worker_init').then("],
];

function patchRayonWorker(outDir) {
  const snippets = join(outDir, 'snippets');
  const dirs = existsSync(snippets) ? readdirSync(snippets).filter((d) => d.startsWith('wasm-bindgen-rayon-')) : [];
  if (dirs.length !== 1) fail(`expected one wasm-bindgen-rayon snippet in ${snippets}, found ${dirs.length}`);
  const file = join(snippets, dirs[0], 'src', 'workerHelpers.js');
  let text = readFileSync(file, 'utf8');
  for (const [from, to] of RAYON_WORKER_EDITS) {
    if (text.split(from).length !== 2) fail(`${file} no longer has exactly one ${from}: update RAYON_WORKER_EDITS`);
    text = text.replace(from, to);
  }
  writeFileSync(file, `// Edited by www/scripts/build.mjs (RAYON_WORKER_EDITS).\nimport * as pensive from '../../../pensive.js';\n${text}`);
}

/**
 * `spec` built a second time with relaxed SIMD into a scratch folder; its module moves next
 * to the first as pensive_relaxed_bg.wasm. The JS glue must be the same file, since the
 * package ships one per build.
 */
function buildRelaxed(spec) {
  const scratch = `${spec.outDir}.relaxed`;
  rmSync(scratch, { recursive: true, force: true });
  build({
    ...spec,
    name: `${spec.name}, relaxed SIMD`,
    outDir: scratch,
    rustcArgs: [...(spec.rustcArgs ?? []), ...RELAXED_RUSTC_ARGS],
    features: [...(spec.features ?? []), 'relaxed-simd'],
  });
  const glue = (dir) => readFileSync(join(dir, 'pensive.js'), 'utf8');
  if (glue(scratch) !== glue(spec.outDir)) {
    fail(`wasm-bindgen emitted other JS for the relaxed-SIMD module of '${spec.name}': it cannot share the glue`);
  }
  renameSync(join(scratch, 'pensive_bg.wasm'), join(spec.outDir, 'pensive_relaxed_bg.wasm'));
  rmSync(scratch, { recursive: true, force: true });
}

const relaxed = process.env.PENSIVE_WASM_RELAXED !== '0';
rmSync(outDir, { recursive: true, force: true });
const single = { name: 'single thread', outDir, targetDir };
build(single);
if (relaxed) buildRelaxed(single);
if (process.env.PENSIVE_WASM_THREADS !== '0') {
  const threadsDir = join(outDir, 'threads');
  const threads = {
    name: 'threads',
    outDir: threadsDir,
    toolchain: ['+nightly'],
    cargoArgs: ['--features', 'wasm-threads', '-Z', 'build-std=panic_abort,std'],
    rustcArgs: THREADS_LINK_ARGS,
    env: { RUSTFLAGS: THREADS_RUSTFLAGS },
    targetDir: join(targetDir, 'wasm-threads'),
    features: ['threads'],
  };
  build(threads);
  checkShared(threadsDir);
  if (relaxed) {
    buildRelaxed(threads);
    checkShared(threadsDir, 'pensive_relaxed_bg.wasm');
  }
  patchRayonWorker(threadsDir);
}
