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
import { planSweep, runSweepItem, summarizeSweep } from '../src/sweep.js';

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
/** A sweep is running (it holds `busy` too: one request at a time on the engine). */
let sweeping = false;
/** The last sweep's `{plan, results, summaries, stopped}` (for tests and the console). */
let lastSweep = null;
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
  $('sweep-run').disabled = !ready;
  $('sweep-stop').disabled = !sweeping;
  $('send').disabled = !ready;
  $('regenerate').disabled = !ready || !conversation.some((m) => m.role === 'user');
  $('stop').disabled = !busy || sweeping;
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
    $('sweep-status').textContent = 'Ready: choose the problems, budgets and presets, then Run sweep.';
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
// Sweep: `pensive eval` on the loaded model, drawn against the budget

const SVG = 'http://www.w3.org/2000/svg';
/** One colour per policy, in the order the policies were chosen. */
const COLOURS = ['#0a66c2', '#d9480f', '#2b8a3e', '#862e9c', '#c2255c', '#5c940d'];
const DASHES = ['none', '7 3', '2 3', '9 3 2 3', '4 4', '1 2'];
/** The charts' viewBox (index.html) and the plot area inside it. */
const CHART = { width: 480, height: 290, left: 56, right: 112, top: 28, bottom: 46 };

function svgElement(tag, attributes = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Round tick values for [0, max]: about five steps of 1, 2 or 5 × 10^k. */
function ticks(max) {
  if (!(max > 0)) return [0];
  const raw = max / 5;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const out = [];
  for (let v = 0; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/**
 * Draw one line per policy of `value(row)` over the budgets into `svg`. The budget axis is
 * square-root scaled (budgets such as 0/64/256/1024 would otherwise crowd at its start);
 * `cap` draws y = budget (the thinking chart's ceiling). Each point is a <circle> carrying
 * data-policy / data-budget / data-value, for the test and for a hover title.
 */
function drawChart(svg, summaries, { title, yLabel, value, yMax, cap = false, unit = '' }) {
  svg.replaceChildren();
  const { width, height, left, right, top, bottom } = CHART;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const budgets = [...new Set(summaries.flatMap((s) => s.budgets.map((r) => r.budget)))].sort((a, b) => a - b);
  const maxBudget = Math.max(1, ...budgets);
  const x = (budget) => left + (Math.sqrt(budget) / Math.sqrt(maxBudget)) * plotW;
  const y = (v) => top + plotH - (Math.min(v, yMax) / yMax) * plotH;
  svg.append(svgElement('text', { x: left, y: 17, class: 'title' }, title));

  const axis = svgElement('g', { class: 'axis' });
  for (const t of ticks(yMax)) {
    axis.append(svgElement('line', { x1: left, x2: left + plotW, y1: y(t), y2: y(t), class: 'grid' }));
    axis.append(svgElement('text', { x: left - 6, y: y(t) + 4, 'text-anchor': 'end' }, `${t}${unit}`));
  }
  for (const b of budgets) {
    axis.append(svgElement('line', { x1: x(b), x2: x(b), y1: top + plotH, y2: top + plotH + 4 }));
    axis.append(svgElement('text', { x: x(b), y: top + plotH + 16, 'text-anchor': 'middle' }, b));
  }
  axis.append(svgElement('line', { x1: left, x2: left + plotW, y1: top + plotH, y2: top + plotH }));
  axis.append(svgElement('line', { x1: left, x2: left, y1: top, y2: top + plotH }));
  axis.append(svgElement('text', { x: left + plotW / 2, y: height - 8, 'text-anchor': 'middle', class: 'x-label' },
    'thinking budget (max_tokens, √ scale)'));
  axis.append(svgElement('text', { x: 14, y: top + plotH / 2, 'text-anchor': 'middle', class: 'y-label',
    transform: `rotate(-90 14 ${top + plotH / 2})` }, yLabel));
  svg.append(axis);

  const legend = (i, label, attributes) => {
    const ly = top + 8 + i * 18;
    svg.append(svgElement('line', { x1: left + plotW + 10, x2: left + plotW + 30, y1: ly, y2: ly, ...attributes }));
    svg.append(svgElement('text', { x: left + plotW + 34, y: ly + 4, class: 'legend' }, label));
  };
  if (cap && budgets.length > 1) {
    // y = budget, sampled along the √ axis so it draws as the curve it is there.
    const points = [];
    for (let i = 0; i <= 32; i++) {
      const b = (maxBudget * i * i) / (32 * 32);
      points.push(`${x(b).toFixed(1)},${y(b).toFixed(1)}`);
    }
    svg.append(svgElement('polyline', { points: points.join(' '), class: 'cap' }));
    legend(summaries.length, 'budget', { class: 'cap' });
  }

  // Policies often coincide (a small model ignores a policy's words): later series are drawn
  // thinner, dashed and with smaller points, so that every one stays visible on top of another.
  summaries.forEach((s, i) => {
    const style = { stroke: COLOURS[i % COLOURS.length], 'stroke-width': Math.max(1.5, 3 - i * 0.5), 'stroke-dasharray': DASHES[i % DASHES.length] };
    const radius = Math.max(2, 5 - i * 1.2);
    const rows = s.budgets;
    const g = svgElement('g', { class: 'series', 'data-policy': s.policy });
    g.append(svgElement('polyline', {
      points: rows.map((r) => `${x(r.budget).toFixed(1)},${y(value(r)).toFixed(1)}`).join(' '), fill: 'none', ...style,
    }));
    for (const r of rows) {
      const point = svgElement('circle', { cx: x(r.budget), cy: y(value(r)), r: radius, fill: style.stroke,
        'data-policy': s.policy, 'data-budget': r.budget, 'data-value': value(r) });
      point.append(svgElement('title', {}, `${s.policy}, budget ${r.budget}: ${value(r).toFixed(1)}${unit}`));
      g.append(point);
    }
    svg.append(g);
    legend(i, s.policy, style);
  });
}

const percent = (v) => `${v.toFixed(0)} %`;

/** The Control / Scaling / Performance table: a row per policy, then one per budget. */
function sweepTable(summaries) {
  const table = $('sweep-table');
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  for (const h of ['policy / budget', 'runs', 'accuracy', 'mean thinking', 'Control', 'Scaling (pts/1k tok)', 'Performance',
    'continuations', 'probes', 'early exits', 're-prefilled', 'wall s']) {
    head.append(element('th', '', h));
  }
  const body = table.createTBody();
  const row = (className, cells) => {
    const tr = body.insertRow();
    tr.className = className;
    for (const c of cells) tr.insertCell().textContent = c;
    return tr;
  };
  for (const s of summaries) {
    const runs = s.budgets.reduce((n, r) => n + r.runs, 0);
    const tr = row('policy', [s.policy, runs, '', s.mean_thinking_tokens.toFixed(1), percent(s.control),
      s.scaling == null ? 'n/a' : s.scaling.toFixed(1), percent(s.performance), '', '', '', s.reprefilled_tokens, s.wall_s.toFixed(1)]);
    tr.dataset.policy = s.policy;
    for (const r of s.budgets) {
      const br = row('budget', [`  ${r.budget}`, r.runs, percent(r.accuracy), r.mean_thinking_tokens.toFixed(1), percent(r.control),
        '', '', r.continuations, r.probes, r.early_exits, '', r.wall_s.toFixed(1)]);
      br.dataset.policy = s.policy;
      br.dataset.budget = r.budget;
    }
  }
}

function drawSweep(summaries) {
  drawChart($('sweep-accuracy'), summaries, {
    title: 'Accuracy', yLabel: 'accuracy (%)', unit: '%', yMax: 100, value: (r) => r.accuracy,
  });
  const maxBudget = Math.max(1, ...summaries.flatMap((s) => s.budgets.map((r) => r.budget)));
  const maxThinking = Math.max(0, ...summaries.flatMap((s) => s.budgets.map((r) => r.mean_thinking_tokens)));
  drawChart($('sweep-thinking'), summaries, {
    title: 'Mean thinking tokens', yLabel: 'thinking tokens', yMax: Math.max(maxBudget, maxThinking) * 1.05,
    value: (r) => r.mean_thinking_tokens, cap: true,
  });
  sweepTable(summaries);
}

function sweepSettings() {
  const budgets = $('sweep-budgets').value.split(',').map((b) => b.trim()).filter(Boolean).map(Number);
  return {
    problems: Number($('sweep-problems').value),
    budgets,
    floor: Number($('sweep-floor').value),
    policies: [...$('sweep-policies').querySelectorAll('input:checked')].map((c) => c.value),
  };
}

/**
 * Run the sweep: plan it (crate/eval.rs through wasm; an invalid setting fails here, before
 * anything runs), run its items one by one, redraw after each. Stop aborts the item in
 * flight; what finished stays drawn. Returns `{results, summaries, stopped}`.
 */
async function runSweep() {
  if (busy || !engine) return null;
  const settings = sweepSettings();
  let plan;
  try {
    if (settings.policies.length === 0) throw new Error('choose at least one preset');
    if (settings.budgets.some((b) => !Number.isInteger(b) || b < 0)) throw new Error(`budgets: ${$('sweep-budgets').value}`);
    plan = await planSweep(settings);
  } catch (e) {
    $('sweep-status').textContent = `Sweep not started — ${describeError(e)}`;
    $('sweep-status').classList.add('error');
    return null;
  }
  $('sweep-status').classList.remove('error');
  busy = true;
  sweeping = true;
  controller = new AbortController();
  updateButtons();
  const model = engine.info?.model ?? 'model';
  const results = [];
  let summaries = [];
  let stopped = false;
  let error = null;
  $('sweep-progress').max = plan.length;
  $('sweep-progress').value = 0;
  drawSweep([]);
  try {
    for (const [i, run] of plan.entries()) {
      let tokens = 0;
      const label = `${i + 1} of ${plan.length}: ${run.policy}, budget ${run.budget}, problem #${run.problem.id}`;
      $('sweep-status').textContent = `Run ${label}…`;
      const result = await runSweepItem(engine, run, model, {
        signal: controller.signal,
        onEvent: (event) => {
          if (event.type !== 'token') return;
          tokens += 1;
          $('sweep-status').textContent = `Run ${label}: ${tokens} tokens`;
        },
      });
      results.push(result);
      summaries = await summarizeSweep(results);
      $('sweep-progress').value = i + 1;
      drawSweep(summaries);
    }
  } catch (e) {
    if (e?.code === 'aborted') stopped = true;
    else error = e;
  } finally {
    controller = null;
    busy = false;
    sweeping = false;
    updateButtons();
  }
  const done = `${results.length} of ${plan.length} runs`;
  if (error) {
    $('sweep-status').textContent = `Sweep failed after ${done} — ${describeError(error)}`;
    $('sweep-status').classList.add('error');
  } else {
    $('sweep-status').textContent = stopped ? `Stopped after ${done}.` : `Done: ${done}.`;
  }
  lastSweep = { plan, results, summaries, stopped };
  return lastSweep;
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
$('sweep-run').addEventListener('click', runSweep);
$('sweep-stop').addEventListener('click', () => controller?.abort());
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
  /** The last sweep's `{plan, results, summaries, stopped}`. */
  get sweep() { return structuredClone(lastSweep); },
  load, send, regenerate, newChat, runSweep,
};
