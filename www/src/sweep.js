// `pensive eval` in a page (the demo's sweep panel): plan a sweep, run each item through an
// engine's ordinary `generate` (in the page or a worker: the engine's one KV cache, nothing
// re-prefilled), score the items and summarise them. The problems, the requests, answer
// extraction and s1's Control / Scaling / Performance are crate/eval.rs's, reached through
// the wasm module, so the CLI and the page share one implementation; this file only moves
// values between them.
import * as wasm from '../pkg/pensive.js';
import { initWasm } from './engine.js';
import { toPensiveError } from './errors.js';

function call(fn, ...args) {
  try {
    return fn(...args);
  } catch (e) {
    throw toPensiveError(e, 'invalid_options');
  }
}

/**
 * The runs of a sweep, in order (policy by policy, budget by budget, problem by problem).
 * `sweep`: `{seed, problems, policies, budgets, floor, thinking}` as `pensive eval`'s flags;
 * a policy is a preset's name or `{label, thinking}`. Each run is
 * `{policy, budget, problem: {id, question, answer}, prompt, request}`.
 */
export async function planSweep(sweep) {
  await initWasm();
  return call(wasm.evalPlan, sweep);
}

/**
 * Run one planned item on `engine` (an Engine or a PensiveWorker) and score it: resolves to
 * the `pensive eval --json` result object (`thinking_tokens`, `within_budget`, `correct`,
 * `reprefilled_tokens`, …). `signal` aborts the generation (rejects with 'aborted').
 * `onEvent` sees each event as it arrives (progress).
 */
export async function runSweepItem(engine, run, model, { signal, onEvent } = {}) {
  await initWasm();
  const events = [];
  const started = performance.now();
  for await (const event of engine.generate(run.prompt, { ...run.request, signal })) {
    events.push(event);
    onEvent?.(event);
  }
  const wallS = (performance.now() - started) / 1000;
  return call(wasm.evalItem, run, model, events, wallS);
}

/** s1's metrics per (model, policy) over `runSweepItem` results (`pensive eval`'s summaries). */
export async function summarizeSweep(results) {
  await initWasm();
  return call(wasm.evalSummarize, results);
}
