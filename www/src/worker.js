// The Web Worker side of `Pensive.load({worker: true})` / `PensiveWorker`: runs the engine off
// the page's main thread and speaks a small message protocol with `worker-client.js`.
//
//   page → worker  {id, op: 'load', options} | {id, op: 'generate', prompt, options}
//                  {id, op: 'score', prompt, continuation} | {id, op: 'inspect', options}
//                  {id, op: 'abort', target} | {id, op: 'dispose'} | {id, op: 'version'}
//                  {id, op: 'memory'}
//   worker → page  {id, type: 'progress', progress} | {id, type: 'event', event}
//                  {id, type: 'result', value} | {id, type: 'error', error: {code, message}}
//
// AbortSignals cannot cross postMessage: each load, inspect, generate and score runs under
// an AbortController of its own here, which {op: 'abort', target: id} fires.
import { toPensiveError } from './errors.js';
import { inspect, loadInThread, version, wasmMemoryBytes } from './engine.js';

let engine = null;
/** Call id → its AbortController, so 'abort' stops the right one. */
const running = new Map();

const post = (message) => self.postMessage(message);
const fail = (id, e) => post({ id, type: 'error', error: toPensiveError(e).toJSON() });

// An 'abort' from the page reaches a CPU generation because `Engine.generate` yields a task
// between events (engine.js, `yieldToTasks`): a wasm step alone resolves through microtasks.

async function handle({ id, op, ...msg }) {
  switch (op) {
    case 'memory':
      return post({ id, type: 'result', value: wasmMemoryBytes() });
    case 'version':
      return post({ id, type: 'result', value: await version() });
    case 'load':
      return abortable(id, async (signal) => {
        engine?.dispose();
        engine = null;
        engine = await loadInThread({ ...msg.options, signal, onProgress: (progress) => post({ id, type: 'progress', progress }) });
        post({ id, type: 'result', value: engine.info });
      });
    case 'inspect':
      return abortable(id, async (signal) => {
        const onProgress = (progress) => post({ id, type: 'progress', progress });
        post({ id, type: 'result', value: await inspect({ ...msg.options, signal, onProgress }) });
      });
    case 'generate':
      return abortable(id, async (signal) => {
        for await (const event of requireEngine().generate(msg.prompt, { ...msg.options, signal })) {
          post({ id, type: 'event', event });
        }
        post({ id, type: 'result', value: null });
      });
    case 'score':
      return abortable(id, async (signal) => {
        post({ id, type: 'result', value: await requireEngine().score(msg.prompt, msg.continuation, { signal }) });
      });
    case 'abort':
      running.get(msg.target)?.abort();
      return post({ id, type: 'result', value: null });
    case 'dispose':
      for (const controller of running.values()) controller.abort();
      engine?.dispose();
      engine = null;
      return post({ id, type: 'result', value: null });
    default:
      throw new Error(`unknown worker op '${op}'`);
  }
}

async function abortable(id, run) {
  const controller = new AbortController();
  running.set(id, controller);
  try {
    await run(controller.signal);
  } finally {
    running.delete(id);
  }
}

function requireEngine() {
  if (!engine) throw toPensiveError({ code: 'invalid_options', message: 'no model loaded in this worker' });
  return engine;
}

self.onmessage = (e) => {
  handle(e.data).catch((err) => fail(e.data?.id, err));
};
