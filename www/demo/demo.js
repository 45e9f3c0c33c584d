// The demo page: a chat with a reasoning model under a thinking budget. Load a model (preset,
// URL or file), talk to it over several turns, regenerate the last answer; each answer shows
// its thinking (collapsible, forced insertions highlighted), the answer, the seed and stats.
//
// The conversation is a list of {role, content} sent whole on every turn; the engine renders
// it through the model's chat template. An assistant turn is stored as the model wrote it,
// thinking included ("<think>…</think>answer"): templates that drop earlier turns' thinking
// (DeepSeek-R1-Distill, Qwen3) do so themselves, others (SmolLM2) keep it. The page never
// edits the history behind the template's back.
import { Pensive, PensiveError } from '../src/index.js';

const $ = (id) => document.getElementById(id);

/** The thinking start marker the engine uses by default (ThinkingOptions::start). */
const THINK_START = '<think>';
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
      (info.fallback_reason ? ` — not WebGPU: ${info.fallback_reason}` : '');
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
 * The seed of a turn, or null when decoding is greedy (the seed would not matter). The
 * engine's default seed is fixed, so a Regenerate that reused it would sample the same
 * answer again: Regenerate always draws a fresh one, a new turn uses the Seed field if set.
 */
function seedFor({ regenerate }) {
  if (Number($('temperature').value) === 0) return null;
  const fixed = $('seed').value.trim();
  if (!regenerate && fixed !== '') return Number(fixed);
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

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

function samplingLabel(options) {
  const parts = options.temperature === 0 ? ['greedy'] : [`seed ${options.seed}`, `T ${options.temperature}`, `top-p ${options.top_p}`];
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
  bubble.append(thinking, answer);
  turn.append(bubble, footer);
  return { turn, thinking, summary, thinkingText, answer, footer };
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
  let sawThinking = false;
  let stopped = false;
  let error = null;
  setStatus(regenerate ? 'Regenerating…' : 'Generating…');
  try {
    for await (const ev of engine.generate(history, options)) {
      if (ev.type === 'phase' && ev.phase === 'thinking') {
        sawThinking = true;
        view.thinking.hidden = false;
      } else if (ev.type === 'token' && !ev.probe) {
        // (A confidence probe's tokens are rolled back: they belong to neither view.)
        if (ev.phase === 'thinking') {
          sawThinking = true;
          view.thinking.hidden = false;
          thinking += ev.text;
          append(view.thinkingText, ev.text, ev.forced);
        } else {
          answer += ev.text;
          append(view.answer, ev.text, ev.forced);
        }
      } else if (ev.type === 'budget_exhausted') {
        view.footer.append(footerTag(`budget spent at ${ev.thinking_tokens} thinking tokens`, 'tag warn'));
      } else if (ev.type === 'done') {
        const s = ev.stats;
        view.summary.textContent = `Thought for ${s.thinking_tokens} tokens` +
          (s.continuations ? ` · ${s.continuations} × continued` : '') + (s.forced_exit ? ' · cut by the budget' : '');
        const details = element('details', 'turn-stats');
        details.append(element('summary', '', `${s.answer_tokens} answer tokens · ${s.decode_tok_s?.toFixed?.(1) ?? '?'} tok/s`),
          statsTable(s, engine.info));
        view.footer.append(details);
      }
    }
  } catch (e) {
    if (e?.code === 'aborted') stopped = true;
    else error = e;
  } finally {
    controller = null;
    busy = false;
  }

  // The turn as the model wrote it. When the template opened thinking (R1-Distill's prompt
  // ends in "<think>\n"), the start marker is part of the prompt, not of the generated text:
  // it is put back so the stored turn reads "<think>…</think>answer" whichever side wrote it.
  const opener = sawThinking && !thinking.trimStart().startsWith(THINK_START) ? `${THINK_START}\n` : '';
  const content = opener + thinking + answer;
  const kept = error === null && content.trim() !== '';
  if (kept) {
    view.answer.classList.add('finished');
    view.footer.prepend(footerTag(samplingLabel(options), 'tag sampling'));
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
