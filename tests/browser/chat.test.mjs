// The OpenAI-style chat API, seeds, logprobs, signals and the model cache in headless
// Chromium, on SmolLM2-135M (wasm CPU). Every chat response is checked against the engine's
// own event stream for the same request and seed: the same text in `content` and
// `reasoning_content`, the same stats, usage from those stats.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { SMOLLM2, requireModel, startBrowser, withPensive } from './harness.mjs';

const MODEL_URL = `/${SMOLLM2}`;
const CHAT = [{ role: 'user', content: 'What is the capital of France?' }];
/** Sampled (temperature 0.7, fixed seed), with a budget: thinking, a continuation, an answer. */
const THINKING = { max_tokens: 40, temperature: 0.7, seed: 3, thinking: { open: true, min_tokens: 12, max_tokens: 16 } };
/** No budget at all: every token is the answer. */
const PLAIN = { max_tokens: 12, temperature: 0.7, seed: 42 };
/** Stats that measure time or what the cache saved: they differ between two runs of one request. */
const COST_FIELDS = ['prefill_s', 'decode_s', 'prefill_tok_s', 'decode_tok_s', 'cached_tokens', 'processed_tokens'];

const withoutCosts = (stats) => Object.fromEntries(Object.entries(stats).filter(([k]) => !COST_FIELDS.includes(k)));

/** What the events say a chat response must hold. */
function expectedFromEvents(events) {
  const text = (phase) => events.filter((e) => e.type === 'token' && e.phase === phase && !e.marker).map((e) => e.text).join('');
  const stats = events.at(-1).stats;
  const thought = events.some((e) => e.type === 'token' && e.phase === 'thinking');
  return { content: text('answer'), reasoning: thought ? text('thinking') : null, stats };
}

const FINISH = { end_of_generation: 'stop', stop_string: 'stop', max_tokens: 'length', answer_max_tokens: 'length', context_full: 'length' };

function checkAgainstEvents(name, events, whole, chunks) {
  const want = expectedFromEvents(events);
  assert.equal(events.at(-1).type, 'done', name);
  // Non-streaming.
  assert.equal(whole.object, 'chat.completion', name);
  assert.match(whole.id, /^chatcmpl-/);
  assert.equal(whole.model, 'smollm2-135m-instruct-q4_1.gguf');
  const choice = whole.choices[0];
  assert.deepEqual(choice.message, { role: 'assistant', content: want.content, reasoning_content: want.reasoning }, name);
  assert.equal(choice.finish_reason, FINISH[want.stats.finish_reason], name);
  assert.deepEqual(withoutCosts(whole.stats), withoutCosts(want.stats), `${name}: same seed, same stats`);
  assert.deepEqual(whole.usage, {
    prompt_tokens: want.stats.prompt_tokens,
    completion_tokens: want.stats.response_tokens,
    total_tokens: want.stats.prompt_tokens + want.stats.response_tokens,
    completion_tokens_details: { reasoning_tokens: want.stats.thinking_tokens },
  }, name);
  // Streaming: deltas add up to the same text; the finish chunk, then the usage chunk.
  assert.ok(chunks.length >= 3, `${name}: ${chunks.length} chunks`);
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id), name);
  const body = chunks.slice(0, -2);
  const [finish, usage] = chunks.slice(-2);
  assert.equal(body[0].choices[0].delta.role, 'assistant');
  const joined = (field) => body.map((c) => c.choices[0].delta[field] ?? '').join('');
  assert.equal(joined('content'), want.content, name);
  assert.equal(joined('reasoning_content'), want.reasoning ?? '', name);
  assert.ok(body.every((c) => c.usage === null && c.choices[0].finish_reason === null), name);
  assert.ok(body.every((c) => Object.keys(c.choices[0].delta).filter((k) => k !== 'role').length === 1), `${name}: one field per delta`);
  const forcedText = events.filter((e) => e.type === 'token' && e.forced && !e.marker).map((e) => e.text).join('');
  assert.equal(body.filter((c) => c.forced).map((c) => Object.values(c.choices[0].delta).at(-1)).join(''), forcedText, name);
  assert.equal(finish.choices[0].finish_reason, choice.finish_reason, name);
  assert.deepEqual(withoutCosts(finish.stats), withoutCosts(want.stats), name);
  assert.deepEqual(usage.choices, [], name);
  assert.deepEqual(usage.usage, whole.usage, name);
}

let browser;
let hasModel = false;

before(async () => {
  hasModel = requireModel(SMOLLM2);
  browser = await startBrowser();
});

after(async () => {
  await browser?.close();
});

test('chat.completions (stream and not, thinking on and off) says what the event stream says on the same seed', { timeout: 300_000 }, async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { url, chat, cases }) => {
    const engine = await m.Pensive.load({ model: url, backend: 'cpu' });
    window.engine = engine;
    const out = {};
    for (const [name, options] of Object.entries(cases)) {
      const events = [];
      for await (const e of engine.generate(chat, options)) events.push(e);
      const whole = await engine.chat.completions.create({ model: 'any', messages: chat, ...options });
      const chunks = [];
      const stream = await engine.chat.completions.create({ messages: chat, ...options, stream: true, stream_options: { include_usage: true } });
      for await (const c of stream) chunks.push(c);
      out[name] = { events, whole, chunks };
    }
    return out;
  }, { url: MODEL_URL, chat: CHAT, cases: { thinking: THINKING, plain: PLAIN } });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  for (const [name, { events, whole, chunks }] of Object.entries(r)) checkAgainstEvents(name, events, whole, chunks);
  // The thinking case really thought, was pushed on, and answered; the plain one did not think.
  const thinking = r.thinking.whole;
  assert.ok(thinking.choices[0].message.reasoning_content.length > 0, JSON.stringify(thinking.choices[0]));
  assert.ok(thinking.stats.continuations >= 1 && thinking.stats.answer_tokens > 0, JSON.stringify(thinking.stats));
  assert.equal(r.plain.whole.choices[0].message.reasoning_content, null);
  assert.equal(r.plain.whole.usage.completion_tokens_details.reasoning_tokens, 0);
  console.error(`chat (thinking): ${JSON.stringify(thinking.choices[0].message)}`);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('seeds: a fresh one per request by default, reported; passing it back reproduces the answer', { timeout: 300_000 }, async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { url, chat }) => {
    const engine = await m.Pensive.load({ model: url, backend: 'cpu' });
    const ask = (extra) => engine.chat.completions.create({ messages: chat, max_tokens: 16, temperature: 1.0, ...extra });
    const first = await ask({});
    const second = await ask({});
    const again = await ask({ seed: first.stats.seed });
    return { first, second, again };
  }, { url: MODEL_URL, chat: CHAT });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  const { first, second, again } = r;
  assert.ok(Number.isSafeInteger(first.stats.seed) && Number.isSafeInteger(second.stats.seed), `${first.stats.seed} ${second.stats.seed}`);
  assert.notEqual(first.stats.seed, second.stats.seed, 'two requests without a seed drew the same one');
  assert.equal(again.choices[0].message.content, first.choices[0].message.content);
  assert.deepEqual(withoutCosts(again.stats), withoutCosts(first.stats));
  console.error(`seeds ${first.stats.seed} / ${second.stats.seed}: ${JSON.stringify(first.choices[0].message.content)} / ${JSON.stringify(second.choices[0].message.content)}`);
  await page.close();
});

test('logprobs, top_logprobs and logit_bias through the chat API', { timeout: 300_000 }, async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { url, chat }) => {
    const engine = await m.Pensive.load({ model: url, backend: 'cpu' });
    const greedy = { messages: chat, max_tokens: 6, temperature: 0 };
    const plain = await engine.chat.completions.create(greedy);
    const withLogprobs = await engine.chat.completions.create({ ...greedy, logprobs: true, top_logprobs: 3 });
    const events = [];
    for await (const e of engine.generate(chat, { max_tokens: 6, temperature: 0 })) events.push(e);
    const first = events.find((e) => e.type === 'token').id;
    const banned = await engine.chat.completions.create({ ...greedy, logit_bias: { [first]: -100 }, logprobs: true });
    const bannedEvents = [];
    for await (const e of engine.generate(chat, { max_tokens: 6, temperature: 0, logit_bias: { [first]: -100 } })) bannedEvents.push(e);
    return { plain, withLogprobs, first, banned, bannedFirst: bannedEvents.find((e) => e.type === 'token').id };
  }, { url: MODEL_URL, chat: CHAT });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(r.plain.choices[0].logprobs, null);
  const content = r.withLogprobs.choices[0].logprobs.content;
  assert.equal(r.withLogprobs.choices[0].message.content, r.plain.choices[0].message.content, 'logprobs change nothing else');
  assert.equal(content.map((c) => c.token).join(''), r.plain.choices[0].message.content);
  for (const c of content) {
    assert.equal(c.top_logprobs.length, 3);
    // Greedy: the chosen token is the most likely one.
    assert.equal(c.top_logprobs[0].token, c.token);
    assert.equal(c.top_logprobs[0].logprob, c.logprob);
    assert.ok(c.logprob <= 0 && c.top_logprobs[1].logprob <= c.logprob, JSON.stringify(c));
    assert.deepEqual(c.bytes, [...Buffer.from(c.token, 'utf8')]);
  }
  assert.notEqual(r.bannedFirst, r.first, 'logit_bias -100 keeps the token out');
  assert.notEqual(r.banned.choices[0].message.content, r.plain.choices[0].message.content);
  console.error(`greedy: ${JSON.stringify(r.plain.choices[0].message.content)}, first token banned: ${JSON.stringify(r.banned.choices[0].message.content)}`);
  await page.close();
});

test('abort: a chat stream, a whole chat request, score and load stop with code aborted, in the page and in a worker', { timeout: 300_000 }, async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { url, chat }) => {
    const code = async (promise) => promise.then(() => 'resolved', (e) => e.code ?? String(e));
    const out = {};
    for (const worker of [false, true]) {
      const engine = await m.Pensive.load({ model: url, backend: 'cpu', worker });
      const request = { messages: chat, max_tokens: 64, temperature: 0 };
      // Stream: abort after the second chunk.
      const controller = new AbortController();
      const chunks = [];
      const streamed = await code((async () => {
        for await (const c of await engine.chat.completions.create({ ...request, stream: true, signal: controller.signal })) {
          chunks.push(c);
          if (chunks.length === 2) controller.abort();
        }
      })());
      // Whole: a timer aborts it (as a Stop button would) while it must still think: the
      // floor of 48 thinking tokens keeps it going for well over a second.
      const late = new AbortController();
      const whole = engine.chat.completions.create({ ...request, thinking: { open: true, min_tokens: 48 }, signal: late.signal });
      setTimeout(() => late.abort(), 100);
      const wholeCode = await code(whole);
      const aborted = AbortSignal.abort();
      const scoreCode = await code(engine.score(chat, ' Paris', { signal: aborted }));
      const midScore = new AbortController();
      const scoring = engine.score(chat, ' Paris is the capital of France and its largest city.', { signal: midScore.signal });
      midScore.abort();
      const midScoreCode = await code(scoring);
      // Still usable, and greedy gives what it gave before the aborts.
      const after = await engine.chat.completions.create({ ...request, max_tokens: 4 });
      const loadCode = await code(m.Pensive.load({ model: url, backend: 'cpu', worker, signal: aborted }));
      const midLoad = new AbortController();
      const loading = m.Pensive.load({ model: url, backend: 'cpu', worker, cache: false, signal: midLoad.signal, onProgress: (p) => { if (p.loaded > 0) midLoad.abort(); } });
      const midLoadCode = await code(loading);
      const inspectCode = await code(m.Pensive.inspect({ model: url, signal: aborted }));
      out[worker ? 'worker' : 'page'] = { streamed, chunks: chunks.length, whole: wholeCode, score: scoreCode, midScore: midScoreCode, after: after.choices[0].message.content, load: loadCode, midLoad: midLoadCode, inspect: inspectCode };
      engine.dispose();
    }
    return out;
  }, { url: MODEL_URL, chat: CHAT });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  for (const where of ['page', 'worker']) {
    const c = r[where];
    // In the page the abort lands before the next chunk. A worker may already have posted the
    // next step's events when the abort message reaches it: at most that step comes through.
    if (where === 'worker') assert.ok(c.chunks >= 2 && c.chunks <= 4, `worker chunks ${c.chunks}`);
    assert.deepEqual(
      { streamed: c.streamed, chunks: where === 'page' ? c.chunks : Math.min(c.chunks, 2), whole: c.whole, score: c.score, midScore: c.midScore, load: c.load, midLoad: c.midLoad, inspect: c.inspect },
      { streamed: 'aborted', chunks: 2, whole: 'aborted', score: 'aborted', midScore: 'aborted', load: 'aborted', midLoad: 'aborted', inspect: 'aborted' },
      where,
    );
  }
  assert.equal(r.worker.after, r.page.after, 'the worker engine answers as the page one after the aborts');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('Pensive.cache: list, has and delete per model, keyed by URL + size + ETag; persist', { timeout: 300_000 }, async (t) => {
  if (!hasModel) return t.skip('model missing');
  const page = await browser.newPage();
  const r = await withPensive(page, async (m, { url }) => {
    await m.Pensive.cache.clear();
    const empty = await m.Pensive.cache.list();
    const engine = await m.Pensive.load({ model: url, backend: 'cpu', persist: true });
    const persisted = engine.info.persisted;
    engine.dispose();
    const absolute = new URL(url, location.href).href;
    const head = await fetch(absolute, { method: 'HEAD' });
    const listed = await m.Pensive.cache.list();
    const has = [await m.Pensive.cache.has(url), await m.Pensive.cache.has(absolute), await m.Pensive.cache.has('/models/other.gguf')];
    const deleted = [await m.Pensive.cache.delete('/models/other.gguf'), await m.Pensive.cache.delete(url), await m.Pensive.cache.delete(url)];
    const afterDelete = { list: await m.Pensive.cache.list(), has: await m.Pensive.cache.has(url) };
    const notUrl = await m.Pensive.cache.has(new Blob(['x'])).then(() => 'resolved', (e) => e.code);
    const progress = [];
    const reloaded = await m.Pensive.load({ model: url, backend: 'cpu', onProgress: (p) => progress.push(p.phase) });
    reloaded.dispose();
    return {
      empty, persisted, listed, has, deleted, afterDelete, notUrl, absolute,
      etag: head.headers.get('etag'), size: Number(head.headers.get('content-length')),
      reloadedFrom: progress.find((p) => p === 'download' || p === 'cache'), cachedAgain: await m.Pensive.cache.has(url),
    };
  }, { url: MODEL_URL });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.deepEqual(r.empty, []);
  assert.equal(typeof r.persisted, 'boolean');
  assert.ok(r.etag, 'the test server sends an ETag');
  assert.deepEqual(r.listed, [{ url: r.absolute, size: r.size, etag: r.etag }]);
  assert.deepEqual(r.has, [true, true, false]);
  assert.deepEqual(r.deleted, [false, true, false]);
  assert.deepEqual(r.afterDelete, { list: [], has: false });
  assert.equal(r.notUrl, 'invalid_options');
  assert.equal(r.reloadedFrom, 'download', 'a deleted model is downloaded again');
  assert.equal(r.cachedAgain, true);
  assert.deepEqual(page.errors, []);
  await page.close();
});
