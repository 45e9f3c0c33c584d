// The demo page: load a model (preset, URL, or file), ask a question with a thinking budget,
// stream thinking apart from the answer with forced insertions highlighted, show stats.
import { Pensive, PensiveError } from '../src/index.js';

const $ = (id) => document.getElementById(id);
let engine = null;
let controller = null;

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

async function load() {
  $('load').disabled = true;
  $('generate').disabled = true;
  engine?.dispose();
  engine = null;
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
    $('backend-info').textContent = `backend: ${info.backend ?? '?'}${info.adapter ? ` (${info.adapter})` : ''}`;
    $('generate').disabled = false;
  } catch (e) {
    setStatus(`Load failed — ${describeError(e)}`, true);
  } finally {
    $('load').disabled = false;
  }
}

function thinkingOptions() {
  const words = $('continuations').value.split(',').map((w) => w.trim()).filter(Boolean);
  const opts = {
    min_tokens: Number($('think-min').value),
    max_tokens: Number($('think-max').value),
    max_continuations: Number($('max-continuations').value),
    open: $('think-open').checked,
  };
  if (words.length > 0) opts.continuations = words;
  const prefix = $('answer-prefix').value;
  if (prefix) opts.answer_prefix = prefix;
  return opts;
}

/** Append token text to a stream view; forced tokens go into a highlighted <mark>. */
function append(view, text, forced) {
  if (!forced) {
    view.append(text);
    return;
  }
  const last = view.lastChild;
  if (last?.nodeName === 'MARK') last.textContent += text;
  else {
    const mark = document.createElement('mark');
    mark.className = 'forced';
    mark.textContent = text;
    view.append(mark);
  }
}

function showStats(stats, info) {
  const rows = [
    ['backend', `${info?.backend ?? '?'}${info?.adapter ? ` (${info.adapter})` : ''}`],
    ['prefill', `${stats.prefill_tok_s?.toFixed?.(1) ?? '?'} tok/s (${stats.prompt_tokens} prompt tokens)`],
    ['decode', `${stats.decode_tok_s?.toFixed?.(1) ?? '?'} tok/s`],
    ['thinking tokens', stats.thinking_tokens],
    ['answer tokens', stats.answer_tokens],
    ['continuations', stats.continuations],
    ['forced exit', stats.forced_exit ? 'yes' : 'no'],
    ['forced / sampled tokens', `${stats.forced_tokens} / ${stats.sampled_tokens}`],
  ];
  $('stats').replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement('tr');
    for (const cell of [k, String(v)]) {
      const td = document.createElement('td');
      td.textContent = cell;
      tr.append(td);
    }
    return tr;
  }));
}

async function generate() {
  $('thinking').replaceChildren();
  $('answer').replaceChildren();
  $('stats').replaceChildren();
  $('generate').disabled = true;
  $('stop').disabled = false;
  controller = new AbortController();
  const messages = [{ role: 'user', content: $('prompt').value }];
  const options = {
    max_tokens: Number($('max-tokens').value) + Number($('think-max').value),
    temperature: Number($('temperature').value),
    thinking: thinkingOptions(),
    signal: controller.signal,
  };
  try {
    for await (const ev of engine.generate(messages, options)) {
      if (ev.type === 'token') append(ev.phase === 'thinking' ? $('thinking') : $('answer'), ev.text, ev.forced);
      else if (ev.type === 'done') showStats(ev.stats, engine.info);
    }
    setStatus('Done.');
  } catch (e) {
    setStatus(e?.code === 'aborted' ? 'Stopped.' : `Generation failed — ${describeError(e)}`, e?.code !== 'aborted');
  } finally {
    $('generate').disabled = false;
    $('stop').disabled = true;
    controller = null;
  }
}

for (const [input, out] of [['think-min', 'min-out'], ['think-max', 'max-out']]) {
  $(input).addEventListener('input', () => ($(out).value = $(input).value));
}
$('model').addEventListener('change', () => ($('custom-row').hidden = $('model').value !== 'custom'));
$('load').addEventListener('click', load);
$('generate').addEventListener('click', generate);
$('stop').addEventListener('click', () => controller?.abort());

Pensive.version().then(
  (v) => ($('version').textContent = `v${v}`),
  (e) => setStatus(`The wasm module did not load — ${describeError(e)}`, true),
);
// Tests and curious users can reach the page state from the console.
window.pensiveDemo = { get engine() { return engine; }, load, generate };
