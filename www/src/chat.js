// `engine.chat.completions.create(...)`: the OpenAI chat-completions shape (the one WebLLM,
// vLLM, llama.cpp's server and DeepSeek's API speak), built on the engine's own event stream,
// so that chat UIs written for those work unchanged. Thinking goes to `reasoning_content`
// (DeepSeek's and vLLM's field), the answer to `content`; Pensive's budget stats ride along
// in the extra field `stats` (the `done` event's, untouched), and each streamed text chunk
// says in `forced` whether the engine inserted it (a continuation, the wrap-up).
//
// Nothing here decides anything: every token, its phase and every count comes from the
// events, so a chat response and `generate` with the same seed say the same thing.
import { PensiveError } from './errors.js';

/** Request fields that go to `generate` as they are (the engine's own names). */
const ENGINE_FIELDS = [
  'max_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'repeat_penalty', 'repeat_last_n', 'seed',
  'logit_bias', 'logprobs', 'top_logprobs', 'chat_template_kwargs', 'thinking', 'stop_in_thinking',
];
/** Every field `create` knows; anything else is an error, as in `load`. */
export const CHAT_FIELDS = [...ENGINE_FIELDS, 'messages', 'stop', 'stream', 'stream_options', 'signal', 'model'];

/**
 * The engine's `finish_reason` → OpenAI's: a natural end or a stop string is 'stop', every
 * limit ('max_tokens', 'answer_max_tokens', 'context_full') is 'length'.
 */
export function openaiFinishReason(reason) {
  return reason === 'end_of_generation' || reason === 'stop_string' ? 'stop' : 'length';
}

function checkRequest(request) {
  if (!request || typeof request !== 'object') throw new PensiveError('invalid_options', 'create() takes a request object');
  for (const key of Object.keys(request)) {
    if (!CHAT_FIELDS.includes(key)) {
      throw new PensiveError('invalid_options', `unknown chat.completions option '${key}' (known: ${CHAT_FIELDS.join(', ')})`);
    }
  }
  const { messages } = request;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new PensiveError('invalid_options', 'messages must be a non-empty array of {role, content}');
  }
  for (const m of messages) {
    if (!m || typeof m.role !== 'string' || typeof m.content !== 'string') {
      throw new PensiveError('invalid_options', 'every message needs a string role and a string content');
    }
  }
  if (request.stream_options !== undefined && !request.stream) {
    throw new PensiveError('invalid_options', 'stream_options needs stream: true');
  }
  const options = {};
  for (const key of ENGINE_FIELDS) if (request[key] !== undefined && request[key] !== null) options[key] = request[key];
  if (typeof request.stop === 'string') options.stop = [request.stop];
  else if (request.stop !== undefined && request.stop !== null) options.stop = request.stop;
  if (request.signal !== undefined) options.signal = request.signal;
  // Messages reach the template as {role, content} only (OpenAI's `name` etc. are not template variables).
  const prompt = messages.map(({ role, content }) => ({ role, content }));
  return { prompt, options };
}

function completionId() {
  const uuid = globalThis.crypto?.randomUUID?.();
  return `chatcmpl-${uuid ?? Math.random().toString(36).slice(2)}`;
}

function usageOf(stats) {
  return {
    prompt_tokens: stats.prompt_tokens,
    completion_tokens: stats.response_tokens,
    total_tokens: stats.prompt_tokens + stats.response_tokens,
    completion_tokens_details: { reasoning_tokens: stats.thinking_tokens },
  };
}

const utf8 = new TextEncoder();

/** A sampled token event with `logprob` → OpenAI's logprobs entry. */
function logprobEntry(event) {
  return {
    token: event.text,
    logprob: event.logprob,
    bytes: [...utf8.encode(event.text)],
    top_logprobs: (event.top_logprobs ?? []).map((t) => ({ token: t.text, logprob: t.logprob, bytes: [...utf8.encode(t.text)] })),
  };
}

/**
 * Where a token event's text goes: 'reasoning_content' (thinking, forced continuations
 * included), 'content' (the answer), or null (a `<think>`/`</think>` marker, a confidence
 * probe's token — rolled back, part of neither — or an empty piece still waiting for the
 * rest of its UTF-8 character).
 */
function fieldOf(event) {
  if (event.type !== 'token' || event.marker || event.probe || event.text === '') return null;
  return event.phase === 'thinking' ? 'reasoning_content' : 'content';
}

/**
 * The `chat` namespace of an engine (`Engine` or `PensiveWorker`): anything with
 * `generate(prompt, options)` yielding the engine's events, and `info.model`.
 */
export function chatNamespace(engine) {
  const create = async (request) => {
    const { prompt, options } = checkRequest(request);
    const base = { id: completionId(), created: Math.floor(Date.now() / 1000), model: engine.info?.model ?? '' };
    const events = engine.generate(prompt, options);
    if (request.stream) return streamChunks(events, base, Boolean(request.stream_options?.include_usage));
    return whole(events, base);
  };
  return Object.freeze({ completions: Object.freeze({ create }) });
}

async function whole(events, base) {
  const text = { content: '', reasoning_content: '' };
  const logprobs = { content: [], reasoning_content: [] };
  let wantLogprobs = false;
  let stats = null;
  let thought = false;
  for await (const event of events) {
    if (event.type === 'done') stats = event.stats;
    if (event.type === 'token' && event.phase === 'thinking') thought = true;
    const field = fieldOf(event);
    if (!field) continue;
    text[field] += event.text;
    if (event.logprob !== undefined) {
      wantLogprobs = true;
      logprobs[field].push(logprobEntry(event));
    }
  }
  if (!stats) throw new PensiveError('backend', 'the generation ended without a done event');
  return {
    ...base,
    object: 'chat.completion',
    choices: [{
      index: 0,
      // No thinking phase at all → null, as DeepSeek's API says for a non-reasoning answer.
      message: { role: 'assistant', content: text.content, reasoning_content: thought ? text.reasoning_content : null },
      logprobs: wantLogprobs ? logprobs : null,
      finish_reason: openaiFinishReason(stats.finish_reason),
    }],
    usage: usageOf(stats),
    stats,
  };
}

/**
 * The stream: one `chat.completion.chunk` per token event with text (its delta holds
 * `reasoning_content` or `content`), then one with an empty delta, `finish_reason` and
 * `stats`, then — with `include_usage` — one with no choices and the usage, OpenAI's order
 * (every earlier chunk then has `usage: null`). Breaking out of the loop or aborting stops
 * the generation, as with `generate`.
 */
function streamChunks(events, base, includeUsage) {
  const chunk = (choice, extra = {}) => ({
    ...base,
    object: 'chat.completion.chunk',
    choices: choice ? [{ index: 0, logprobs: null, finish_reason: null, ...choice }] : [],
    ...(includeUsage ? { usage: null } : {}),
    ...extra,
  });
  async function* chunks() {
    let first = true;
    let stats = null;
    try {
      for await (const event of events) {
        if (event.type === 'done') {
          stats = event.stats;
          continue;
        }
        const field = fieldOf(event);
        if (!field) continue;
        const delta = { ...(first ? { role: 'assistant' } : {}), [field]: event.text };
        first = false;
        const logprobs = event.logprob !== undefined ? { [field]: [logprobEntry(event)] } : null;
        // `forced` (Pensive's): the engine wrote this text (a "Wait", the wrap-up, an answer prefix).
        yield chunk({ delta, logprobs }, { forced: event.forced });
      }
    } finally {
      // A consumer that stops early: end the generation too.
      if (!stats) await events.return?.();
    }
    if (!stats) throw new PensiveError('backend', 'the generation ended without a done event');
    yield chunk({ delta: first ? { role: 'assistant' } : {}, finish_reason: openaiFinishReason(stats.finish_reason) }, { stats });
    if (includeUsage) yield { ...chunk(null), usage: usageOf(stats) };
  }
  return chunks();
}
