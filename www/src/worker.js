// The Web Worker side of `Pensive.load({worker: true})` / `PensiveWorker`: runs the engine off
// the page's main thread and speaks a small message protocol with `worker-client.js`.
//
//   page → worker  {id, op: 'load', options} | {id, op: 'generate', prompt, options}
//                  {id, op: 'abort'} | {id, op: 'score', prompt, continuation}
//                  {id, op: 'inspect', options} | {id, op: 'dispose'} | {id, op: 'version'}
//                  {id, op: 'memory'}
//   worker → page  {id, type: 'progress', progress} | {id, type: 'event', event}
//                  {id, type: 'result', value} | {id, type: 'error', error: {code, message}}
import { toPensiveError } from './errors.js';
import { inspect, loadInThread, version, wasmMemoryBytes } from './engine.js';

let engine = null;
/** Generation id → its AbortController, so 'abort' stops the right one. */
const running = new Map();

const post = (message) => self.postMessage(message);
const fail = (id, e) => post({ id, type: 'error', error: toPensiveError(e).toJSON() });

// On the CPU backend a generation step waits on nothing outside wasm: its promises resolve as
// microtasks, so the worker would not read its messages (an 'abort' from the page) until the
// whole generation ended. `nextTask()` resolves from a macrotask, after the messages already
// queued; a MessageChannel message, unlike setTimeout, is not clamped to >= 4 ms.
const ticks = new MessageChannel();
const waitingForTick = [];
ticks.port1.onmessage = () => waitingForTick.shift()?.();
const nextTask = () => new Promise((resolve) => {
  waitingForTick.push(resolve);
  ticks.port2.postMessage(null);
});

async function handle({ id, op, ...msg }) {
  switch (op) {
    case 'memory':
      return post({ id, type: 'result', value: wasmMemoryBytes() });
    case 'version':
      return post({ id, type: 'result', value: await version() });
    case 'load': {
      engine?.dispose();
      engine = null;
      engine = await loadInThread({ ...msg.options, onProgress: (progress) => post({ id, type: 'progress', progress }) });
      return post({ id, type: 'result', value: engine.info });
    }
    case 'inspect':
      return post({ id, type: 'result', value: await inspect({ ...msg.options, onProgress: (progress) => post({ id, type: 'progress', progress }) }) });
    case 'generate': {
      const controller = new AbortController();
      running.set(id, controller);
      try {
        for await (const event of requireEngine().generate(msg.prompt, { ...msg.options, signal: controller.signal })) {
          post({ id, type: 'event', event });
          await nextTask(); // let a pending 'abort' in
        }
        return post({ id, type: 'result', value: null });
      } finally {
        running.delete(id);
      }
    }
    case 'abort':
      running.get(msg.target)?.abort();
      return post({ id, type: 'result', value: null });
    case 'score':
      return post({ id, type: 'result', value: await requireEngine().score(msg.prompt, msg.continuation) });
    case 'dispose':
      engine?.dispose();
      engine = null;
      return post({ id, type: 'result', value: null });
    default:
      throw new Error(`unknown worker op '${op}'`);
  }
}

function requireEngine() {
  if (!engine) throw toPensiveError({ code: 'invalid_options', message: 'no model loaded in this worker' });
  return engine;
}

self.onmessage = (e) => {
  handle(e.data).catch((err) => fail(e.data?.id, err));
};
