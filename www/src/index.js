// Pensive in the browser: the package's public surface (explicit export list).
//
//   import { Pensive } from 'pensive';
//   const engine = await Pensive.load({ model: 'hf:owner/repo/model.gguf', onProgress: console.log });
//   for await (const ev of engine.generate([{ role: 'user', content: 'Why is the sky blue?' }],
//                                          { max_tokens: 256, thinking: { max_tokens: 128 } })) {
//     if (ev.type === 'token') show(ev.text, ev.phase, ev.forced);
//   }
import { Engine, initWasm, inspect, loadInThread, version } from './engine.js';
import { PensiveWorker } from './worker-client.js';
import { ERROR_CODES, PensiveError } from './errors.js';
import { CACHE_NAME, resolveModelUrl } from './source.js';

export const Pensive = Object.freeze({
  /**
   * Load a model. `worker: true` runs it in a Web Worker (returns a PensiveWorker, which
   * has the same methods as Engine).
   */
  async load(options) {
    if (options?.worker) return new PensiveWorker().load(options);
    return loadInThread(options);
  },
  /** Validate a GGUF and read its configuration without building an engine. */
  inspect,
  /** The engine's version (instantiates the wasm module). */
  version,
  /** Instantiate the wasm module ahead of time, optionally from another URL. */
  init: initWasm,
  /** Remove every cached model file. */
  async clearCache() {
    if (typeof caches !== 'undefined') await caches.delete(CACHE_NAME);
  },
});

export { Engine, PensiveWorker, PensiveError, ERROR_CODES, resolveModelUrl };
export default Pensive;
