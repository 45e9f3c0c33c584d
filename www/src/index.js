// Pensive in the browser: the package's public surface (explicit export list).
//
//   import { Pensive } from 'pensive';
//   const engine = await Pensive.load({ model: 'hf:owner/repo/model.gguf', onProgress: console.log });
//   for await (const ev of engine.generate([{ role: 'user', content: 'Why is the sky blue?' }],
//                                          { max_tokens: 256, thinking: { max_tokens: 128 } })) {
//     if (ev.type === 'token') show(ev.text, ev.phase, ev.forced);
//   }
//   // or, OpenAI-style (thinking in reasoning_content):
//   const r = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'Hi' }] });
import { checkLoadOptions, Engine, initWasm, inspect, loadInThread, version } from './engine.js';
import { PensiveWorker } from './worker-client.js';
import { ERROR_CODES, PensiveError } from './errors.js';
import { modelCache, resolveModelUrl } from './source.js';

export const Pensive = Object.freeze({
  /**
   * Load a model. `worker: true` runs it in a Web Worker (returns a PensiveWorker, which
   * has the same methods as Engine). `persist: true` first asks the browser to keep the
   * model cache (`navigator.storage.persist()`, which only pages have); its answer is
   * `engine.info.persisted`.
   */
  async load(options) {
    const { persist, ...rest } = checkLoadOptions(options);
    const persisted = persist ? await modelCache.persist() : null;
    let engine;
    if (rest.worker) {
      const worker = new PensiveWorker();
      try {
        engine = await worker.load(rest);
      } catch (e) {
        worker.dispose();
        throw e;
      }
    } else {
      engine = await loadInThread(rest);
    }
    engine.info.persisted = persisted;
    return engine;
  },
  /** Validate a GGUF and read its configuration without building an engine. */
  inspect,
  /** The engine's version (instantiates the wasm module). */
  version,
  /** Instantiate the wasm module ahead of time, optionally from another URL. */
  init: initWasm,
  /** The model cache: `list()`, `has(model)`, `delete(model)`, `clear()`, `persist()`. */
  cache: modelCache,
  /** Remove every cached model file (the same as `cache.clear()`). */
  clearCache: modelCache.clear,
});

export { Engine, PensiveWorker, PensiveError, ERROR_CODES, resolveModelUrl };
export default Pensive;
