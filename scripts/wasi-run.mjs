// Runs a wasm32-wasip1 program under Node's WASI (the cargo runner for that target, see
// .cargo/config.toml): `cargo test --target wasm32-wasip1 --lib quant` runs the CPU kernels'
// unit tests compiled to wasm with simd128, as the browser's CPU backend runs them (and, with
// `-C target-feature=+relaxed-simd`, as its relaxed-SIMD module runs them).
import { readFileSync } from 'node:fs';
import { argv, env, exit } from 'node:process';
import { WASI } from 'node:wasi';

const [file, ...args] = argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env, returnOnExit: true, preopens: { '/': '/' } });
// getImportObject: Node 19.8+; before it, the same object by hand.
const imports = wasi.getImportObject ? wasi.getImportObject() : { wasi_snapshot_preview1: wasi.wasiImport };
let module;
try {
  module = await WebAssembly.compile(readFileSync(file));
} catch (e) {
  // Relaxed SIMD is on by default from V8 11.4 (Node 21+); Node 20's V8 11.3 has it behind
  // a flag only, with a wrong i32x4.relaxed_dot_i8x16_i7x16_add_s (it doubles the sums), so
  // the relaxed-SIMD tests need a newer Node (scripts/test.sh fetches one from npm).
  console.error(`wasi-run: cannot compile ${file} with Node ${process.version} (V8 ${process.versions.v8}): ${e.message}`);
  console.error('wasi-run: a module built with +relaxed-simd needs Node 22 or newer');
  exit(1);
}
exit(wasi.start(await WebAssembly.instantiate(module, imports)));
