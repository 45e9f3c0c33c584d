// The page side of the worker engine: the same API as `Engine`, with every call forwarded to
// `worker.js`. Functions (onProgress) and AbortSignals cannot cross postMessage, so they stay
// here and travel as progress messages and 'abort' requests: a call whose signal fires
// rejects with 'aborted' at once, and the worker stops its side at its next step.
import { chatNamespace } from './chat.js';
import { PensiveError, toPensiveError } from './errors.js';
import { checkLoadOptions, checkSignal, collect } from './engine.js';

export class PensiveWorker {
  #worker;
  #nextId = 1;
  /** id → {resolve, reject, onProgress?, onEvent?} */
  #calls = new Map();
  #activeGeneration = null;
  /** Whether a model is loaded and its device has not been reported lost. */
  #usable = false;
  /** The engine info after `load` (backend, adapter, model). */
  info = null;
  /** OpenAI-style `chat.completions.create`, as on `Engine`. */
  chat = chatNamespace(this);

  /** @param {{worker?: Worker, workerUrl?: string | URL}} [options] */
  constructor({ worker, workerUrl } = {}) {
    // The default spelled out literally: Vite and webpack find the worker (and bundle it with
    // its wasm) only in exactly this form.
    this.#worker = worker
      ?? (workerUrl !== undefined
        ? new Worker(workerUrl, { type: 'module' })
        : new Worker(new URL('./worker.js', import.meta.url), { type: 'module' }));
    this.#worker.onmessage = (e) => this.#receive(e.data);
    this.#worker.onerror = (e) => this.#failAll(new PensiveError('backend', `worker error: ${e.message ?? e}`));
  }

  #receive({ id, type, ...msg }) {
    const call = this.#calls.get(id);
    if (!call) return;
    if (type === 'progress') call.onProgress?.(msg.progress);
    else if (type === 'event') call.onEvent?.(msg.event);
    else {
      this.#calls.delete(id);
      if (type === 'result') call.resolve(msg.value);
      else {
        const error = toPensiveError(msg.error);
        if (error.code === 'device_lost') this.#usable = false;
        call.reject(error);
      }
    }
  }

  #failAll(error) {
    for (const call of this.#calls.values()) call.reject(error);
    this.#calls.clear();
  }

  /** Post `op`; `signal` (optional) rejects the call at once and asks the worker to stop it. */
  #call(op, payload = {}, hooks = {}, signal = undefined) {
    checkSignal(signal);
    if (signal?.aborted) {
      return { id: null, done: Promise.reject(new PensiveError('aborted', `${op} aborted`, { cause: signal.reason })) };
    }
    const id = this.#nextId++;
    const done = new Promise((resolve, reject) => this.#calls.set(id, { resolve, reject, ...hooks }));
    this.#worker.postMessage({ id, op, ...payload });
    if (signal) {
      const onAbort = () => {
        const call = this.#calls.get(id);
        if (!call) return;
        this.#calls.delete(id);
        this.#worker.postMessage({ id: this.#nextId++, op: 'abort', target: id });
        call.reject(new PensiveError('aborted', `${op} aborted`, { cause: signal.reason }));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      done.then(() => {}, () => {}).finally(() => signal.removeEventListener('abort', onAbort));
    }
    return { id, done };
  }

  /** The worker's wasm linear memory in bytes (see `wasmMemoryBytes`). */
  async wasmMemoryBytes() {
    return this.#call('memory').done;
  }

  async version() {
    return this.#call('version').done;
  }

  /** Load a model into the worker; options as `Pensive.load`. Resolves to this object. */
  async load(options) {
    const { onProgress, signal, worker: _worker, persist: _persist, ...rest } = checkLoadOptions(options);
    this.#usable = false;
    this.info = await this.#call('load', { options: postable(rest) }, { onProgress }, signal).done;
    this.#usable = true;
    return this;
  }

  /**
   * False before a load, after `dispose`, and once a call rejected with 'device_lost' (the
   * worker's WebGPU device is gone: load again).
   */
  get usable() {
    return this.#usable;
  }

  async inspect(options) {
    const { onProgress, signal, worker: _worker, persist: _persist, ...rest } = checkLoadOptions(options);
    return this.#call('inspect', { options: postable(rest) }, { onProgress }, signal).done;
  }

  /** Same contract as `Engine.generate`, including 'busy' when a generation is active. */
  generate(prompt, options = {}) {
    const { signal, ...request } = options ?? {};
    const queue = [];
    let wake = null;
    let finished = false;
    let failure = null;
    const push = (item) => {
      queue.push(item);
      wake?.();
    };
    let id = null;
    const self = this;
    const stop = () => {
      if (id !== null && !finished) self.#call('abort', { target: id });
    };
    const end = () => {
      finished = true;
      signal?.removeEventListener('abort', stop);
      if (self.#activeGeneration === iterator) self.#activeGeneration = null;
    };
    const iterator = {
      [Symbol.asyncIterator]() {
        return this;
      },
      async next() {
        for (;;) {
          if (queue.length > 0) return { done: false, value: queue.shift() };
          if (failure) {
            const e = failure;
            failure = null;
            throw e;
          }
          if (finished) return { done: true, value: undefined };
          await new Promise((resolve) => (wake = resolve));
          wake = null;
        }
      },
      async return() {
        stop();
        end();
        queue.length = 0;
        return { done: true, value: undefined };
      },
    };
    if (this.#activeGeneration) {
      failure = new PensiveError('busy', 'a generation is already running on this engine; finish, break out of or abort it first');
      finished = true;
      return iterator;
    }
    if (signal?.aborted) {
      failure = new PensiveError('aborted', 'generation aborted');
      finished = true;
      return iterator;
    }
    this.#activeGeneration = iterator;
    const call = this.#call('generate', { prompt, options: request }, { onEvent: (event) => push(event) });
    id = call.id;
    signal?.addEventListener('abort', stop, { once: true });
    call.done.then(
      () => { end(); wake?.(); },
      (e) => { failure = e; end(); wake?.(); },
    );
    return iterator;
  }

  async complete(prompt, options = {}) {
    return collect(this.generate(prompt, options));
  }

  async score(prompt, continuation, { signal } = {}) {
    return this.#call('score', { prompt, continuation }, {}, signal).done;
  }

  /** Free the model in the worker and stop the worker. */
  dispose() {
    this.#usable = false;
    this.#call('dispose').done.catch(() => {});
    this.#failAll(new PensiveError('aborted', 'engine disposed'));
    // Let the dispose message go first; terminate frees everything the worker held.
    setTimeout(() => this.#worker.terminate(), 0);
  }
}

/**
 * Load options as postMessage can carry them: a `URL` object (model, tokenizer, wasmUrl,
 * wasmThreadsUrl) cannot be cloned, so it travels as its absolute address.
 */
function postable(options) {
  return Object.fromEntries(Object.entries(options).map(([k, v]) => [k, v instanceof URL ? v.href : v]));
}
