// Runs a wasm32-wasip1 program under Node's WASI (the cargo runner for that target, see
// .cargo/config.toml): `cargo test --target wasm32-wasip1 --lib quant` runs the CPU kernels'
// unit tests compiled to wasm with simd128, as the browser's CPU backend runs them.
import { readFileSync } from 'node:fs';
import { argv, env, exit } from 'node:process';
import { WASI } from 'node:wasi';

const [file, ...args] = argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env, returnOnExit: true, preopens: { '/': '/' } });
// getImportObject: Node 19.8+; before it, the same object by hand.
const imports = wasi.getImportObject ? wasi.getImportObject() : { wasi_snapshot_preview1: wasi.wasiImport };
const { instance } = await WebAssembly.instantiate(readFileSync(file), imports);
exit(wasi.start(instance));
