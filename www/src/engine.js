// The engine in the current thread (page or worker): wasm initialisation, streamed loading
// with progress, and the async-iterator generation surface over the Rust engine.
// Both builds' JS glue is imported statically (tens of KB; nothing is instantiated until
// initWasm picks one): Vite's default worker format cannot bundle a dynamic import.
import initSingle, * as single from '../pkg/pensive.js';
import initThreads, * as threaded from '../pkg/threads/pensive.js';
import { chatNamespace } from './chat.js';
import { PensiveError, toPensiveError } from './errors.js';
import { openModelSource, readWhole } from './source.js';

let wasmReady = null;
/** The chosen build's JS bindings (`RawLoader`, `GgufProbe`, ...), once initialised. */
let wasm = null;
/** The instantiated module's exports (for its linear memory), once initialised. */
let wasmExports = null;
/** Which build runs in this thread: `{module: 'threads' | 'single', threads, reason, simd}`. */
let wasmBuild = null;

/**
 * The default size of the threaded build's pool: one worker per logical core the browser
 * reports, at most 8 (a decode step streams the weights once; past that many threads the
 * memory bus, not the cores, sets its pace).
 */
const MAX_DEFAULT_THREADS = 8;

/**
 * Why the threaded build cannot run in this thread, or null when it can. Its memory is a
 * SharedArrayBuffer, which browsers only hand to cross-origin isolated pages (COOP/COEP), and
 * rayon's caller blocks (Atomics.wait) until the pool has finished a mat-vec, which a page's
 * main thread may not do: only a Web Worker (`worker: true`) runs the engine on threads.
 */
function threadsUnavailable() {
  if (typeof SharedArrayBuffer !== 'function') return 'SharedArrayBuffer is unavailable (the page is not cross-origin isolated)';
  if (!globalThis.crossOriginIsolated) return 'the page is not cross-origin isolated (it needs the COOP/COEP headers)';
  if (typeof WorkerGlobalScope === 'undefined' || !(globalThis instanceof WorkerGlobalScope)) {
    return "the engine runs on the page's main thread, which may not block (load with worker: true)";
  }
  return null;
}

/**
 * A module whose one function runs `i16x8.relaxed_dot_i8x16_i7x16_s` (the instruction the
 * relaxed-SIMD modules' int8 kernels use): it validates only where the engine runs relaxed
 * SIMD (Chrome 114+; not Safari).
 */
const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // types: () -> v128
  0x03, 0x02, 0x01, 0x00, // functions: one, of type 0
  0x0a, 0x2b, 0x01, 0x29, 0x00, // code: one body of 41 bytes, no locals
  ...[0, 1].flatMap(() => [0xfd, 0x0c, ...new Array(16).fill(0)]), // v128.const 0, twice
  0xfd, 0x92, 0x02, // i16x8.relaxed_dot_i8x16_i7x16_s (0xfd 0x112)
  0x0b, // end
]);

function relaxedSimdSupported() {
  try {
    return WebAssembly.validate(RELAXED_SIMD_PROBE);
  } catch {
    return false;
  }
}

const WASM_SIMD = ['auto', 'relaxed', 'simd128'];

/**
 * Which of a build's two modules to load: the relaxed-SIMD one (same results, faster int8
 * kernels) where the browser validates its instructions, unless `wasmSimd` says simd128 or
 * the page moved the build's simd128 module (`moved`) without saying where its relaxed one is.
 */
function pickSimd(wasmSimd, moved, relaxedUrl) {
  if (wasmSimd === 'simd128') return 'simd128';
  if (!relaxedSimdSupported()) {
    if (wasmSimd === 'relaxed') throw new PensiveError('backend_unavailable', 'wasmSimd: relaxed was asked, but this browser does not run relaxed SIMD');
    return 'simd128';
  }
  return moved && !relaxedUrl && wasmSimd !== 'relaxed' ? 'simd128' : 'relaxed';
}

/**
 * The .wasm file of a build's module, or the page's own URL for it. Literal `new URL(...,
 * import.meta.url)`s: bundlers (Vite, webpack) find and copy assets named that way.
 */
const MODULE_URLS = {
  single: {
    simd128: () => new URL('../pkg/pensive_bg.wasm', import.meta.url),
    relaxed: () => new URL('../pkg/pensive_relaxed_bg.wasm', import.meta.url),
  },
  threads: {
    simd128: () => new URL('../pkg/threads/pensive_bg.wasm', import.meta.url),
    relaxed: () => new URL('../pkg/threads/pensive_relaxed_bg.wasm', import.meta.url),
  },
};

function moduleUrl(build, simd, url, relaxedUrl) {
  return (simd === 'relaxed' ? relaxedUrl : url) ?? MODULE_URLS[build][simd]();
}

/**
 * Instantiate a wasm module once per thread: the threaded build (shared memory, rayon on
 * `threads` Web Workers) when this thread can run it, else the single-thread build; of the
 * build, its relaxed-SIMD module where the browser runs relaxed SIMD (`wasmSimd`: 'auto',
 * 'relaxed' or 'simd128'). `wasmUrl` / `wasmThreadsUrl` / `wasmRelaxedUrl` /
 * `wasmThreadsRelaxedUrl` override where each .wasm file is fetched from (bundlers that move
 * assets); by default they sit next to their JS. Options count at the first call only.
 */
export function initWasm(wasmUrl, { threads, wasmThreadsUrl, wasmRelaxedUrl, wasmThreadsRelaxedUrl, wasmSimd } = {}) {
  if (threads !== undefined && !(Number.isInteger(threads) && threads > 0)) {
    return Promise.reject(new PensiveError('invalid_options', 'threads must be a positive integer'));
  }
  if (wasmSimd !== undefined && !WASM_SIMD.includes(wasmSimd)) {
    return Promise.reject(new PensiveError('invalid_options', `wasmSimd must be one of ${WASM_SIMD.join(', ')}, not '${wasmSimd}'`));
  }
  const urls = { wasmUrl, wasmThreadsUrl, wasmRelaxedUrl, wasmThreadsRelaxedUrl };
  wasmReady ??= instantiate(urls, threads, wasmSimd ?? 'auto')
    .catch((e) => {
      wasmReady = null;
      if (e instanceof PensiveError) throw e;
      throw new PensiveError('backend', `cannot instantiate the wasm module: ${e?.message ?? e}`, { cause: e });
    });
  return wasmReady;
}

const POOL_START_MS = 30_000;

function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Instantiate one build (`init`: its wasm-bindgen init) from the module `pickSimd` chooses;
 * sets `wasmExports` and returns which module ran. A relaxed module that fails to load
 * (a bundle that left it out) falls back to its simd128 twin, which computes the same,
 * unless relaxed SIMD was asked for.
 */
async function initModule(init, build, wasmSimd, url, relaxedUrl) {
  const simd = pickSimd(wasmSimd, url, relaxedUrl);
  try {
    wasmExports = await init({ module_or_path: moduleUrl(build, simd, url, relaxedUrl) });
    return simd;
  } catch (e) {
    if (simd !== 'relaxed' || wasmSimd === 'relaxed') throw e;
    console.warn(`pensive: the relaxed-SIMD module of the ${build} build failed to load (${e?.message ?? e}); using the simd128 one`);
    wasmExports = await init({ module_or_path: moduleUrl(build, 'simd128', url, relaxedUrl) });
    return 'simd128';
  }
}

async function instantiate(urls, threads, wasmSimd) {
  const wanted = threads ?? Math.min(globalThis.navigator?.hardwareConcurrency || 1, MAX_DEFAULT_THREADS);
  let reason = wanted === 1 ? (threads === 1 ? 'threads: 1 was asked' : 'the browser reports one core') : threadsUnavailable();
  if (reason === null) {
    try {
      const simd = await initModule(initThreads, 'threads', wasmSimd, urls.wasmThreadsUrl, urls.wasmThreadsRelaxedUrl);
      // wasm-bindgen-rayon waits for every worker's 'ready' and never hears of one that failed
      // to load: a pool that has not started in this long is given up on.
      await withTimeout(threaded.initThreadPool(wanted), POOL_START_MS, `the pool of ${wanted} workers did not start in ${POOL_START_MS / 1000} s`);
      wasm = threaded;
      wasmBuild = { module: 'threads', threads: threaded.cpuThreads(), reason: null, simd };
      return wasmExports;
    } catch (e) {
      if (e instanceof PensiveError) throw e;
      // A browser without nested workers, a bundle without the threaded files: one thread
      // still works, and the info says why it is one.
      reason = `the threaded module failed to start: ${e?.message ?? e}`;
      console.warn(`pensive: ${reason}; using the single-thread module`);
      wasmExports = null;
    }
  }
  const simd = await initModule(initSingle, 'single', wasmSimd, urls.wasmUrl, urls.wasmRelaxedUrl);
  wasm = single;
  wasmBuild = { module: 'single', threads: 1, reason, simd };
  return wasmExports;
}

/**
 * Size of this thread's wasm linear memory in bytes (it only grows): the high-water mark of
 * what the engine held in wasm, for benchmarks and memory diagnostics.
 */
export function wasmMemoryBytes() {
  return wasmExports?.memory?.buffer?.byteLength ?? 0;
}

export async function version() {
  await initWasm();
  return wasm.version();
}

const BACKENDS = ['auto', 'webgpu', 'cpu'];
const CPU_KERNELS = ['int8', 'f32'];
export const LOAD_OPTIONS = ['model', 'tokenizer', 'backend', 'max_context', 'cpu_kernels', 'onProgress', 'cache', 'persist', 'worker', 'signal', 'wasmUrl',
  'wasmThreadsUrl', 'wasmRelaxedUrl', 'wasmThreadsRelaxedUrl', 'wasmSimd', 'threads'];
/** Progress is reported at most once per this many bytes (plus the first and last chunk). */
const PROGRESS_STEP = 1 << 20;

/** Flat options object, web-llm style: unknown keys and wrong types are errors, not ignored. */
export function checkLoadOptions(options) {
  if (!options || typeof options !== 'object') throw new PensiveError('invalid_options', 'load() takes an options object');
  for (const key of Object.keys(options)) {
    if (!LOAD_OPTIONS.includes(key)) {
      throw new PensiveError('invalid_options', `unknown load option '${key}' (known: ${LOAD_OPTIONS.join(', ')})`);
    }
  }
  if (options.model === undefined || options.model === null) throw new PensiveError('invalid_options', 'load() needs a model');
  const backend = options.backend ?? 'auto';
  if (!BACKENDS.includes(backend)) {
    throw new PensiveError('invalid_options', `backend must be one of ${BACKENDS.join(', ')}, not '${backend}'`);
  }
  if (options.onProgress !== undefined && typeof options.onProgress !== 'function') {
    throw new PensiveError('invalid_options', 'onProgress must be a function');
  }
  if (options.max_context !== undefined && !(Number.isInteger(options.max_context) && options.max_context > 0)) {
    throw new PensiveError('invalid_options', 'max_context must be a positive integer');
  }
  if (options.cpu_kernels !== undefined && !CPU_KERNELS.includes(options.cpu_kernels)) {
    throw new PensiveError('invalid_options', `cpu_kernels must be one of ${CPU_KERNELS.join(', ')}, not '${options.cpu_kernels}'`);
  }
  for (const flag of ['cache', 'persist', 'worker']) {
    if (options[flag] !== undefined && typeof options[flag] !== 'boolean') {
      throw new PensiveError('invalid_options', `${flag} must be true or false`);
    }
  }
  if (options.threads !== undefined && !(Number.isInteger(options.threads) && options.threads > 0)) {
    throw new PensiveError('invalid_options', 'threads must be a positive integer');
  }
  if (options.wasmSimd !== undefined && !WASM_SIMD.includes(options.wasmSimd)) {
    throw new PensiveError('invalid_options', `wasmSimd must be one of ${WASM_SIMD.join(', ')}, not '${options.wasmSimd}'`);
  }
  checkSignal(options.signal);
  return { ...options, backend, cache: options.cache ?? true };
}

function progressReporter(onProgress) {
  let lastReported = -Infinity;
  return (loaded, total, phase, force = false) => {
    if (!onProgress || (!force && loaded - lastReported < PROGRESS_STEP)) return;
    lastReported = loaded;
    try {
      onProgress({ loaded, total, phase });
    } catch (e) {
      // A throwing callback is the caller's bug; it must not abort a 1 GB download.
      console.error('pensive: onProgress threw', e);
    }
  };
}

function checkAborted(signal, what = 'load') {
  if (signal?.aborted) throw new PensiveError('aborted', `${what} aborted`, { cause: signal.reason });
}

export function checkSignal(signal) {
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new PensiveError('invalid_options', 'signal must be an AbortSignal');
}

/**
 * `promise`, or an 'aborted' rejection as soon as `signal` fires. What runs behind the
 * promise (one wasm call) is not interrupted: it finishes and its result is dropped.
 */
export function untilAborted(promise, signal, what) {
  if (!signal) return promise;
  checkAborted(signal, what);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(new PensiveError('aborted', `${what} aborted`, { cause: signal.reason }));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/**
 * Run a whole model source through `sink.push(chunk)`, reporting progress. Used by the
 * engine loader and by `inspect` (which streams through the GGUF parser only).
 */
async function streamInto(source, sink, report, signal) {
  const phase = source.origin === 'network' ? 'download' : source.origin === 'cache' ? 'cache' : 'read';
  let loaded = 0;
  report(0, source.total, phase, true);
  try {
    for await (const chunk of source.chunks) {
      checkAborted(signal);
      sink.push(chunk);
      loaded += chunk.byteLength;
      report(loaded, source.total, phase);
    }
  } catch (e) {
    throw toPensiveError(e, 'io');
  }
  report(loaded, source.total, phase, true);
  await source.settled;
  return loaded;
}

/**
 * Stream a GGUF through the parser without building an engine: validates it and returns its
 * model configuration (architecture, sizes). Accepts the same `model` forms as `load`.
 */
export async function inspect(options) {
  const opts = checkLoadOptions(options);
  checkAborted(opts.signal, 'inspect');
  await initWasm(opts.wasmUrl, opts);
  const report = progressReporter(opts.onProgress);
  const source = await openModelSource(opts.model, { cache: opts.cache, signal: opts.signal });
  if (source.kind !== 'gguf') throw new PensiveError('invalid_options', 'inspect() reads GGUF files only');
  const probe = new wasm.GgufProbe();
  try {
    checkAborted(opts.signal, 'inspect');
    const loaded = await streamInto(source, probe, report, opts.signal);
    const config = probe.finish();
    return { config, bytes: loaded, origin: source.origin };
  } catch (e) {
    throw toPensiveError(e, 'model_format');
  } finally {
    probe.free();
  }
}

/** Load a model in this thread. `options` as `Pensive.load` (without `worker`). */
export async function loadInThread(options) {
  const opts = checkLoadOptions(options);
  checkAborted(opts.signal);
  await initWasm(opts.wasmUrl, opts);
  const report = progressReporter(opts.onProgress);
  const source = await openModelSource(opts.model, { cache: opts.cache, tokenizer: opts.tokenizer, signal: opts.signal });
  // The Rust side's LoadOptions (snake_case, unknown fields refused).
  const engineOptions = {
    backend: opts.backend,
    ...(opts.max_context ? { max_context: opts.max_context } : {}),
    ...(opts.cpu_kernels ? { cpu_kernels: opts.cpu_kernels } : {}),
  };
  let raw;
  try {
    if (source.kind === 'gguf') {
      // The WebGPU device is created first (or `auto` knows there is none) and the backend is
      // decided from the header, so that each tensor is uploaded to the GPU the moment its
      // bytes are in; an adapter that cannot hold the model sends `auto` to the CPU.
      const loader = await wasm.RawLoader.create(engineOptions);
      let loaded;
      try {
        // A header that claims more bytes than the source has is refused before any
        // tensor buffer is allocated.
        if (source.total !== null && source.total !== undefined) loader.setSourceLen(source.total);
        loaded = await streamInto(source, loader, report, opts.signal);
        report(loaded, source.total, 'finish', true);
        raw = await loader.finish();
      } finally {
        loader.free();
      }
    } else {
      report(0, null, 'read', true);
      const config = await readWhole(source.config);
      const weights = [];
      for (const w of source.weights) weights.push(await readWhole(w));
      const tokenizer = source.tokenizer ? await readWhole(source.tokenizer) : undefined;
      const tokenizerConfig = source.tokenizerConfig ? await readWhole(source.tokenizerConfig) : undefined;
      report(0, null, 'finish', true);
      checkAborted(opts.signal);
      raw = await wasm.RawLoader.fromSafetensors(config, weights, tokenizer, tokenizerConfig, engineOptions);
    }
  } catch (e) {
    throw toPensiveError(e, 'model_format');
  }
  if (opts.signal?.aborted) {
    // The abort came while the engine was being built (one wasm call): free what was built.
    raw.dispose();
    raw.free();
    checkAborted(opts.signal);
  }
  const engine = new Engine(raw, source.name);
  report(1, 1, 'ready', true);
  return engine;
}

const GENERATE_ONLY_JS = ['signal'];

/**
 * Let the thread's task queue run. A wasm step resolves through microtasks only, so without
 * this a whole generation runs as one task: no Stop click, timer or worker 'abort' message
 * could land before it ends. A message-channel task costs no timer clamping and, unlike
 * `scheduler.yield()` (whose continuation jumps the queue), lets timers run too.
 */
function yieldToTasks() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

/**
 * A loaded model. One generation (or score) runs at a time: `generate` while another
 * generation is active rejects with code 'busy' rather than queueing, so a UI never streams
 * two answers into one view by accident. Finish, `break` out of, or abort the first one.
 */
export class Engine {
  #raw;
  #active = null;
  /** While an aborted score's forward still runs: what the next request waits for. */
  #settling = null;

  /** @param {string} model the model's name (file name), reported as `model` by `chat`. */
  constructor(raw, model) {
    this.#raw = raw;
    /**
     * `{backend, fallback_reason, config, vocab_size, max_context, has_chat_template, model,
     * persisted, wasm}`: `backend` says what `auto` chose, `fallback_reason` why it is not
     * WebGPU (else null); `persisted` what `navigator.storage.persist()` answered (null: not
     * asked); `wasm` which module build runs (`{module: 'threads' | 'single', threads,
     * reason}`, `reason` saying why it is the single-thread one).
     */
    this.info = { ...raw.info(), model, persisted: null, wasm: { ...wasmBuild } };
    /** OpenAI-style `chat.completions.create` over `generate` (see chat.js). */
    this.chat = chatNamespace(this);
  }

  #live() {
    if (!this.#raw) throw new PensiveError('invalid_options', 'engine was disposed');
    return this.#raw;
  }

  /**
   * The token ids `generate` feeds for `prompt` (a string, or messages through the chat
   * template). `options.chat_template_kwargs`: as in `generate`.
   */
  promptIds(prompt, options = {}) {
    try {
      return [...this.#live().promptIds(prompt, options?.chat_template_kwargs)];
    } catch (e) {
      throw toPensiveError(e, 'invalid_options');
    }
  }

  /**
   * Stream a generation. `prompt` is a raw string or an array of `{role, content}` (chat
   * template). Yields the engine's event objects (`token`, `continuation`,
   * `budget_exhausted`, `phase`, `done`). Option errors and 'busy' reject the first `next()`.
   * @returns {AsyncIterableIterator<object>}
   */
  generate(prompt, options = {}) {
    const engine = this;
    const signal = options?.signal;
    let pending = null; // an error to throw from the first next()
    let starting = null; // the start, deferred until an aborted score has finished
    let finished = false;
    const onAbort = () => {
      if (engine.#active === iterator) engine.#raw?.abort();
    };
    const finish = () => {
      finished = true;
      signal?.removeEventListener('abort', onAbort);
      if (engine.#active === iterator) engine.#active = null;
    };
    const iterator = {
      [Symbol.asyncIterator]() {
        return this;
      },
      async next() {
        if (starting) {
          const s = starting;
          starting = null;
          try {
            await s;
          } catch (e) {
            pending = toPensiveError(e, 'invalid_options');
          }
        }
        if (pending) {
          const e = pending;
          pending = null;
          finish();
          throw e;
        }
        if (finished) return { done: true, value: undefined };
        await yieldToTasks();
        if (finished) return { done: true, value: undefined };
        if (signal?.aborted) {
          engine.#raw?.abort();
          finish();
          throw new PensiveError('aborted', 'generation aborted', { cause: signal.reason });
        }
        let event;
        try {
          event = await engine.#live().nextEvent();
        } catch (e) {
          finish();
          throw toPensiveError(e);
        }
        // The step that was running when the signal fired is dropped: abort lands within one step.
        if (signal?.aborted) {
          finish();
          throw new PensiveError('aborted', 'generation aborted', { cause: signal.reason });
        }
        if (event === undefined) {
          finish();
          return { done: true, value: undefined };
        }
        return { done: false, value: event };
      },
      async return() {
        if (!finished) {
          if (engine.#active === iterator) engine.#raw?.abort();
          finish();
        }
        return { done: true, value: undefined };
      },
    };
    try {
      if (this.#active) throw new PensiveError('busy', 'a generation is already running on this engine; finish, break out of or abort it first');
      const request = { ...(options ?? {}) };
      for (const key of GENERATE_ONLY_JS) delete request[key];
      checkSignal(signal);
      const begin = () => {
        this.#live().start(prompt, request);
        signal?.addEventListener('abort', onAbort, { once: true });
      };
      this.#active = iterator;
      if (this.#settling) starting = this.#settling.then(begin);
      else begin();
    } catch (e) {
      pending = toPensiveError(e, 'invalid_options');
    }
    return iterator;
  }

  /**
   * Generate to the end and return `{text, thinking, stats, events}`: the answer, the
   * thinking (forced insertions included), and the `done` event's stats.
   */
  async complete(prompt, options = {}) {
    return collect(this.generate(prompt, options));
  }

  /**
   * Teacher-forced scoring of `continuation` (string or token ids) after `prompt`.
   * `options.signal`: rejects with 'aborted' at once; the forward in flight finishes (the
   * engine reports 'busy' until it has) and its result is dropped.
   */
  async score(prompt, continuation, { signal } = {}) {
    checkSignal(signal);
    checkAborted(signal, 'score');
    if (this.#active) throw new PensiveError('busy', 'a generation is running on this engine');
    await this.#settling;
    let pending;
    try {
      pending = this.#live().score(prompt, continuation);
    } catch (e) {
      throw toPensiveError(e);
    }
    try {
      return await untilAborted(pending, signal, 'score');
    } catch (e) {
      if (signal?.aborted) {
        // The caller has its answer; the next request waits for the forward instead of 'busy'.
        const settled = pending.then(() => {}, () => {});
        this.#settling = settled;
        settled.then(() => {
          if (this.#settling === settled) this.#settling = null;
        });
      }
      throw toPensiveError(e);
    }
  }

  /**
   * False once disposed, or once the WebGPU device was lost: every request then rejects with
   * 'device_lost' (load the model again).
   */
  get usable() {
    return this.#raw !== null && this.#raw.usable();
  }

  /** Free the model's memory (GPU buffers included). The engine is unusable afterwards. */
  dispose() {
    if (!this.#raw) return;
    this.#raw.abort();
    // dispose() frees the model (now, or when a step in flight returns); free() the handle.
    this.#raw.dispose();
    this.#raw.free();
    this.#raw = null;
    this.#active = null;
  }
}

/** Fold a stream of events into the `complete()` result. */
export async function collect(events) {
  let text = '';
  let thinking = '';
  let stats = null;
  const all = [];
  for await (const event of events) {
    all.push(event);
    if (event.type === 'token') {
      // A confidence probe's tokens were rolled back: neither thinking nor answer.
      if (event.probe) continue;
      if (event.phase === 'thinking') thinking += event.text;
      else text += event.text;
    } else if (event.type === 'done') {
      stats = event.stats ?? null;
    }
  }
  return { text, thinking, stats, events: all };
}
