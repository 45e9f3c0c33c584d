// The demo page: a chat with a reasoning model under a thinking budget. Load a model (preset,
// URL or file), talk to it over several turns, regenerate the last answer; each answer shows
// its thinking (folded away once the answer starts, forced insertions highlighted), the
// answer, live tok/s while it streams, the seed and stats. It speaks to the engine through
// the OpenAI-style `engine.chat.completions.create` stream, as a chat UI written for WebLLM
// or DeepSeek's API would.
//
// The conversation is a list of {role, content} sent whole on every turn; the engine renders
// it through the model's chat template. An assistant turn is stored as the model wrote it,
// thinking included ("<think>…</think>answer"): templates that drop earlier turns' thinking
// (DeepSeek-R1-Distill, Qwen3) do so themselves, others (SmolLM2) keep it. The page never
// edits the history behind the template's back.
import { Pensive, PensiveError } from '../src/index.js';

const $ = (id) => document.getElementById(id);

/** The thinking markers the engine uses by default (ThinkingOptions::start / end). */
const THINK_START = '<think>';
const THINK_END = '</think>';
/**
 * Room in `max_tokens` for what neither budget counts: the thinking markers and an answer
 * prefix are forced tokens outside both the thinking and the answer count.
 */
const MARKER_ALLOWANCE = 64;

/**
 * Per-preset sampling and budget, keyed by the model option's value. Hub models get their
 * authors' recommended sampling (Qwen3 thinking mode: T 0.6, top-p 0.95, top-k 20, min-p 0;
 * DeepSeek-R1-Distill: T 0.6, top-p 0.95); their templates (or the model) open thinking
 * themselves. SmolLM2 is not a reasoning model: thinking is opened for it, greedy, with a
 * minimum that makes the s1 "Wait" visible; without a repeat penalty its greedy text falls
 * into a loop ("I'm not entirely sure." over and over) within a hundred tokens.
 */
const PRESETS = {
  '/models/smollm2-135m-instruct-q4_1.gguf': {
    sampling: { temperature: 0, top_p: 1, top_k: 0, min_p: 0, repeat_penalty: 1.1 },
    thinking: { min: 8, max: 64, answer: 128, open: true },
  },
  'hf:unsloth/Qwen3-0.6B-GGUF/Qwen3-0.6B-Q4_K_M.gguf': {
    sampling: { temperature: 0.6, top_p: 0.95, top_k: 20, min_p: 0, repeat_penalty: 1 },
    thinking: { min: 0, max: 1024, answer: 512, open: false },
  },
  'hf:unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF/DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf': {
    sampling: { temperature: 0.6, top_p: 0.95, top_k: 0, min_p: 0, repeat_penalty: 1 },
    thinking: { min: 0, max: 1024, answer: 512, open: false },
  },
  'hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf': {
    sampling: { temperature: 0.7, top_p: 0.8, top_k: 20, min_p: 0, repeat_penalty: 1.05 },
    thinking: { min: 0, max: 256, answer: 256, open: true },
  },
};

let engine = null;
let controller = null;
let busy = false;
/** The conversation sent to the model: [{role, content}], assistant turns with their thinking. */
let conversation = [];
/** The chat bubble of each message in `conversation` (same index). */
let bubbles = [];

// ---------------------------------------------------------------------------------------------
// Model and settings

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function describeError(e) {
  return e instanceof PensiveError ? `${e.code}: ${e.message}` : String(e?.message ?? e);
}

function selectedModel() {
  const file = $('file').files?.[0];
  if (file) return file;
  const preset = $('model').value;
  return preset === 'custom' ? $('custom-url').value.trim() : preset;
}

function formatBytes(n) {
  return n == null ? '?' : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** Set a control and let its listeners (the range sliders' outputs) know. */
function setControl(id, value) {
  const el = $(id);
  if (el.type === 'checkbox') el.checked = value;
  else el.value = String(value);
  el.dispatchEvent(new Event('input', { bubbles: true }));
}

function applyPreset(value) {
  const preset = PRESETS[value];
  if (!preset) return;
  const { sampling: s, thinking: t } = preset;
  setControl('temperature', s.temperature);
  setControl('top-p', s.top_p);
  setControl('top-k', s.top_k);
  setControl('min-p', s.min_p);
  setControl('repeat-penalty', s.repeat_penalty);
  setControl('think-min', t.min);
  setControl('think-max', t.max);
  setControl('max-tokens', t.answer);
  setControl('think-open', t.open);
}

function updateButtons() {
  const ready = engine !== null && !busy;
  $('send').disabled = !ready;
  $('regenerate').disabled = !ready || !conversation.some((m) => m.role === 'user');
  $('stop').disabled = !busy;
  $('load').disabled = busy;
  $('new-chat').disabled = busy || conversation.length === 0;
}

async function load() {
  engine?.dispose();
  engine = null;
  updateButtons();
  $('load').disabled = true;
  const model = selectedModel();
  const started = performance.now();
  try {
    engine = await Pensive.load({
      model,
      backend: $('backend').value,
      worker: $('worker').checked,
      cache: $('cache').checked,
      onProgress: ({ loaded, total, phase }) => {
        $('progress').value = total ? loaded / total : 0;
        setStatus(`${phase}: ${formatBytes(loaded)} of ${formatBytes(total)}`);
      },
    });
    $('progress').value = 1;
    const info = engine.info ?? {};
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(`Loaded ${typeof model === 'string' ? model : model.name} in ${seconds} s.`);
    $('backend-info').textContent = `backend: ${info.backend ?? '?'}${info.adapter ? ` (${info.adapter})` : ''}` +
      (info.fallback_reason ? ` — not WebGPU: ${info.fallback_reason}` : '') + ` — ${wasmSummary(info.wasm)}`;
  } catch (e) {
    setStatus(`Load failed — ${describeError(e)}`, true);
  } finally {
    updateButtons();
  }
}

function thinkingOptions() {
  const words = $('continuations').value.split(',').map((w) => w.trim()).filter(Boolean);
  const opts = {
    min_tokens: Number($('think-min').value),
    max_tokens: Number($('think-max').value),
    max_continuations: Number($('max-continuations').value),
    answer_max_tokens: Number($('max-tokens').value),
    open: $('think-open').checked,
  };
  if (words.length > 0) opts.continuations = words;
  const prefix = $('answer-prefix').value;
  if (prefix) opts.answer_prefix = prefix;
  return opts;
}

/**
 * The seed a turn sends: the Seed field's for a new turn when set; otherwise none, and the
 * engine draws a fresh one (reported in the stats), so Regenerate samples a new answer.
 */
function seedFor({ regenerate }) {
  if (Number($('temperature').value) === 0) return null;
  const fixed = $('seed').value.trim();
  if (!regenerate && fixed !== '') return Number(fixed);
  return null;
}

/** The chat request of a turn (the engine's option names; `stream` set by the caller). */
function generateOptions(seed, signal) {
  const options = {
    temperature: Number($('temperature').value),
    top_p: Number($('top-p').value),
    top_k: Number($('top-k').value),
    min_p: Number($('min-p').value),
    repeat_penalty: Number($('repeat-penalty').value),
    max_tokens: Number($('max-tokens').value) + Number($('think-max').value) + MARKER_ALLOWANCE,
    thinking: thinkingOptions(),
    signal,
  };
  if (seed !== null) options.seed = seed;
  return options;
}

/** `seed`: the one the turn ran with (its stats'), also when the engine drew it. */
function samplingLabel(options, seed) {
  const parts = options.temperature === 0 ? ['greedy'] : [`seed ${seed ?? '(drawn)'}`, `T ${options.temperature}`, `top-p ${options.top_p}`];
  if (options.temperature !== 0 && options.top_k > 0) parts.push(`top-k ${options.top_k}`);
  if (options.temperature !== 0 && options.min_p > 0) parts.push(`min-p ${options.min_p}`);
  if (options.repeat_penalty !== 1) parts.push(`repeat penalty ${options.repeat_penalty}`);
  return parts.join(' · ');
}

// ---------------------------------------------------------------------------------------------
// Chat view

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function userBubble(text) {
  const turn = element('div', 'turn user');
  turn.append(element('div', 'bubble', text));
  return turn;
}

/** An empty assistant turn: a collapsible thinking block, the answer, a footer. */
function assistantBubble() {
  const turn = element('div', 'turn assistant');
  const bubble = element('div', 'bubble');
  const thinking = element('details', 'thinking');
  thinking.open = true;
  thinking.hidden = true;
  const summary = element('summary', '', 'Thinking…');
  const thinkingText = element('div', 'stream thinking-text');
  thinking.append(summary, thinkingText);
  const answer = element('div', 'stream answer-text');
  const footer = element('div', 'turn-footer');
  // Tokens and tok/s while the turn streams; replaced by the stats when it ends.
  const rate = element('span', 'tag live-rate');
  rate.hidden = true;
  footer.append(rate);
  bubble.append(thinking, answer);
  turn.append(bubble, footer);
  return { turn, thinking, summary, thinkingText, answer, footer, rate };
}

/**
 * Live speed of a streaming turn: text chunks (≈ tokens: markers and pieces of a character
 * are not chunks) per second since the first one, so the prompt's prefill is not in it.
 */
function liveRate() {
  let first = null;
  let chunks = 0;
  return () => {
    const now = performance.now();
    first ??= now;
    chunks += 1;
    const seconds = (now - first) / 1000;
    return seconds > 0 ? `${chunks} tokens · ${((chunks - 1) / seconds).toFixed(1)} tok/s` : `${chunks} tokens`;
  };
}

/** Append token text to a stream view; forced tokens go into a highlighted <mark>. */
function append(view, text, forced) {
  // Leading blank lines of a view (the answer after "</think>\n\n") only push the text down.
  if (!view.hasChildNodes()) text = text.replace(/^\s+/, '');
  if (text === '') return;
  if (!forced) {
    view.append(text);
    return;
  }
  const last = view.lastChild;
  if (last?.nodeName === 'MARK') last.textContent += text;
  else view.append(element('mark', 'forced', text));
}

/** Which wasm build runs the engine, e.g. "wasm: 2 threads" or "wasm: 1 thread (why)". */
function wasmSummary(wasm) {
  if (!wasm) return 'wasm: ?';
  return wasm.module === 'threads' ? `wasm: ${wasm.threads} threads` : `wasm: 1 thread${wasm.reason ? ` (${wasm.reason})` : ''}`;
}

function statsTable(stats, info) {
  const rows = [
    ['backend', `${info?.backend ?? '?'}${info?.adapter ? ` (${info.adapter})` : ''}`],
    ['prefill', `${stats.prefill_tok_s?.toFixed?.(1) ?? '?'} tok/s (${stats.prompt_tokens} prompt tokens)`],
    // Earlier turns already in the KV cache are not run again (engines that report it).
    ...(stats.cached_tokens === undefined ? [] : [['cached prompt tokens', stats.cached_tokens]]),
    ['decode', `${stats.decode_tok_s?.toFixed?.(1) ?? '?'} tok/s`],
    ['thinking tokens', stats.thinking_tokens],
    ['answer tokens', stats.answer_tokens],
    ['continuations', stats.continuations],
    ['forced exit', stats.forced_exit ? 'yes' : 'no'],
    ['forced / sampled tokens', `${stats.forced_tokens} / ${stats.sampled_tokens}`],
  ];
  const table = element('table', 'stats');
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = String(v);
  }
  return table;
}

function footerTag(text, className = 'tag') {
  return element('span', className, text);
}

function scrollToLatest(el) {
  el.scrollIntoView({ block: 'end', behavior: 'instant' });
}

// ---------------------------------------------------------------------------------------------
// Turns

/**
 * Generate the assistant's reply to `history` (which ends with a user turn) into a new
 * bubble; `replaces` is the bubble of the answer being regenerated, hidden meanwhile. A reply
 * with text (finished or stopped) becomes the conversation's last turn; a failed or empty one
 * leaves the conversation as it was. Returns whether a reply was kept.
 */
async function runTurn(history, { regenerate, replaces = null }) {
  busy = true;
  updateButtons();
  $('chat-empty').hidden = true;
  const view = assistantBubble();
  if (replaces) {
    replaces.hidden = true;
    replaces.after(view.turn);
  } else {
    $('chat').append(view.turn);
  }
  scrollToLatest(view.turn);
  controller = new AbortController();
  const options = generateOptions(seedFor({ regenerate }), controller.signal);
  let thinking = '';
  let answer = '';
  let stats = null;
  let stopped = false;
  let error = null;
  const rate = liveRate();
  setStatus(regenerate ? 'Regenerating…' : 'Generating…');
  try {
    const stream = await engine.chat.completions.create({ messages: history, ...options, stream: true });
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta ?? {};
      if (chunk.stats) stats = chunk.stats;
      if (delta.reasoning_content) {
        view.thinking.hidden = false;
        thinking += delta.reasoning_content;
        append(view.thinkingText, delta.reasoning_content, chunk.forced);
      }
      if (delta.content) {
        // The answer has started: the thinking folds away (its summary opens it again).
        if (answer === '') view.thinking.open = false;
        answer += delta.content;
        append(view.answer, delta.content, chunk.forced);
      }
      if (delta.reasoning_content || delta.content) {
        view.rate.hidden = false;
        view.rate.textContent = rate();
      }
    }
  } catch (e) {
    if (e?.code === 'aborted') stopped = true;
    else error = e;
  } finally {
    controller = null;
    busy = false;
  }
  view.rate.remove();
  if (stats) {
    view.summary.textContent = `Thought for ${stats.thinking_tokens} tokens` +
      (stats.continuations ? ` · ${stats.continuations} × continued` : '') + (stats.forced_exit ? ' · cut by the budget' : '');
    if (stats.forced_exit) view.footer.append(footerTag('thinking budget spent', 'tag warn'));
    const details = element('details', 'turn-stats');
    details.append(element('summary', '', `${stats.answer_tokens} answer tokens · ${stats.decode_tok_s?.toFixed?.(1) ?? '?'} tok/s`),
      statsTable(stats, engine.info));
    view.footer.append(details);
  }

  // The turn as the model wrote it, "<think>…</think>answer": `reasoning_content` holds the
  // thinking without its markers (whichever side wrote them, the template or the model), so
  // they are put back around it.
  const content = (thinking !== '' ? `${THINK_START}\n${thinking}${THINK_END}` : '') + answer;
  const kept = error === null && content.trim() !== '';
  if (kept) {
    view.answer.classList.add('finished');
    // A stopped turn has no stats: the seed is then the one it sent, if any.
    const seed = stats?.seed ?? options.seed;
    view.footer.prepend(footerTag(samplingLabel(options, seed), 'tag sampling'));
    if (regenerate) view.footer.prepend(footerTag('regenerated'));
    if (stopped) view.footer.prepend(footerTag('stopped', 'tag warn'));
    replaces?.remove();
    const n = history.length;
    conversation = [...history, { role: 'assistant', content }];
    bubbles = [...bubbles.slice(0, n), view.turn];
    setStatus(stopped ? 'Stopped.' : 'Done.');
  } else {
    view.turn.remove();
    if (replaces) replaces.hidden = false;
    setStatus(error ? `Generation failed — ${describeError(error)}` : 'Stopped before any text.', error !== null);
  }
  updateButtons();
  return kept;
}

/** Send the composer's text as a new user turn and answer it. */
async function send() {
  if (busy || !engine) return false;
  const text = $('prompt').value.trim();
  if (text === '') return false;
  // Earlier thinking folds away: the conversation goes on from the answers.
  for (const details of $('chat').querySelectorAll('details.thinking')) details.open = false;
  const bubble = userBubble(text);
  $('chat').append(bubble);
  $('prompt').value = '';
  conversation.push({ role: 'user', content: text });
  bubbles.push(bubble);
  const kept = await runTurn(conversation.slice(), { regenerate: false });
  if (!kept) {
    // Nothing answered it: the question goes back to the composer rather than dangling.
    conversation.pop();
    bubbles.pop().remove();
    if ($('prompt').value === '') $('prompt').value = text;
    $('chat-empty').hidden = conversation.length > 0;
  }
  return kept;
}

/** Generate the last answer again for the same history (or answer an unanswered last turn). */
async function regenerate() {
  if (busy || !engine) return false;
  const lastIsAnswer = conversation.at(-1)?.role === 'assistant';
  const history = lastIsAnswer ? conversation.slice(0, -1) : conversation.slice();
  if (history.at(-1)?.role !== 'user') return false;
  return runTurn(history, { regenerate: true, replaces: lastIsAnswer ? bubbles.at(-1) : null });
}

function newChat() {
  if (busy) return;
  conversation = [];
  for (const b of bubbles) b.remove();
  bubbles = [];
  $('chat-empty').hidden = false;
  updateButtons();
}

// ---------------------------------------------------------------------------------------------
// Wiring

for (const [input, out] of [['think-min', 'min-out'], ['think-max', 'max-out']]) {
  $(input).addEventListener('input', () => ($(out).value = $(input).value));
}
$('model').addEventListener('change', () => {
  $('custom-row').hidden = $('model').value !== 'custom';
  applyPreset($('model').value);
});
$('load').addEventListener('click', load);
$('send').addEventListener('click', send);
$('regenerate').addEventListener('click', regenerate);
$('stop').addEventListener('click', () => controller?.abort());
$('new-chat').addEventListener('click', newChat);
$('prompt').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    if (!$('send').disabled) send();
  }
});
applyPreset($('model').value);
updateButtons();

Pensive.version().then(
  (v) => ($('version').textContent = `v${v}`),
  (e) => setStatus(`The wasm module did not load — ${describeError(e)}`, true),
);
// Tests and curious users can reach the page state from the console.
window.pensiveDemo = {
  get engine() { return engine; },
  /** A copy of the conversation as the next turn would send it. */
  get conversation() { return structuredClone(conversation); },
  load, send, regenerate, newChat,
};
