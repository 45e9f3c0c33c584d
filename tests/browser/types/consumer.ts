// A consumer of the package's declarations, type-checked with `tsc --strict --noEmit` by
// types.test.mjs. It uses every option, event, stats field and error code a user meets; the
// `@ts-expect-error` lines are misuses the declarations must refuse (a misspelt field is an
// error only without index signatures).
import Pensive, {
  ERROR_CODES,
  Engine,
  PensiveError,
  PensiveWorker,
  resolveModelUrl,
  type CachedModel,
  type ChatCompletion,
  type ChatCompletionChunk,
  type ErrorCode,
  type GenerateOptions,
  type GenerationEvent,
  type GenerationStats,
  type LoadOptions,
  type ModelConfig,
} from 'pensive';

const controller = new AbortController();

const load: LoadOptions = {
  model: resolveModelUrl('hf:owner/repo/model.gguf'),
  backend: 'auto',
  max_context: 2048,
  cache: true,
  persist: true,
  signal: controller.signal,
  wasmUrl: new URL('https://example.invalid/pensive_bg.wasm'),
  wasmThreadsUrl: 'https://example.invalid/threads/pensive_bg.wasm',
  threads: 2,
  onProgress: ({ loaded, total, phase }) => console.log(loaded, total ?? 0, phase),
};

const options: GenerateOptions = {
  temperature: 0.6,
  top_k: 40,
  top_p: 0.95,
  min_p: 0.05,
  repeat_penalty: 1.1,
  repeat_last_n: 64,
  seed: 42,
  logit_bias: { 1234: -100 },
  logprobs: true,
  top_logprobs: 3,
  max_tokens: 256,
  stop: ['\n\n'],
  stop_in_thinking: false,
  chat_template_kwargs: { enable_thinking: true },
  thinking: {
    min_tokens: 32, max_tokens: 128, continuations: ['Wait'], continuation_order: 'random', ignore_ends: 0,
    max_continuations: 2, on_early_end: 'continue', grace_tokens: 8, wrap_up: 'Time is up.',
    answer_prefix: 'Answer:', answer_max_tokens: 64, start: '<think>', end: '</think>', open: true, seed: 7,
  },
  signal: controller.signal,
};

function describeStats(s: GenerationStats): string {
  const counts: number[] = [
    s.prompt_tokens, s.cached_tokens, s.sampled_tokens, s.forced_tokens, s.processed_tokens, s.rolled_back_tokens,
    s.dropped_tokens, s.response_tokens, s.thinking_tokens, s.answer_tokens, s.continuations, s.ends_suppressed,
    s.prefill_s, s.decode_s, s.prefill_tok_s, s.decode_tok_s, s.seed,
  ];
  const reason: 'end_of_generation' | 'stop_string' | 'max_tokens' | 'answer_max_tokens' | 'context_full' | null = s.finish_reason;
  // @ts-expect-error no such stats field
  void s.thinking_tokenz;
  return `${counts.join(' ')} ${s.forced_exit} ${reason}`;
}

function describeEvent(e: GenerationEvent): string {
  switch (e.type) {
    case 'token': {
      const alternatives = (e.top_logprobs ?? []).map((t) => `${t.id}:${t.text}:${t.logprob.toFixed(2)}`);
      return `${e.id} ${e.text} ${e.phase} ${e.forced} ${e.marker} ${e.logprob ?? ''} ${alternatives.join(',')}`;
    }
    case 'continuation':
      return `${e.text} ${e.round}`;
    case 'budget_exhausted':
      return String(e.thinking_tokens);
    case 'probe':
      return `${e.confidence.toFixed(3)} ${e.tokens} ${e.exit}`;
    case 'early_exit':
      return `${e.reason} ${e.thinking_tokens}`;
    case 'suppressed':
      return `${e.id} ${e.text}`;
    case 'phase':
      return e.phase;
    case 'done':
      return describeStats(e.stats);
  }
}

function describeConfig(c: ModelConfig): string {
  // @ts-expect-error no such config field
  void c.layers;
  return `${c.arch} ${c.n_layers} ${c.dim} ${c.n_heads} ${c.n_kv_heads} ${c.head_dim} ${c.ffn_dim} ${c.vocab_size} ${c.rope_theta} ${c.rope_layout} ${c.rms_eps} ${c.qkv_bias} ${c.qk_norm} ${c.tied_embeddings} ${c.context_length}`;
}

async function main(): Promise<void> {
  const engine: Engine = await Pensive.load(load);
  const worker: PensiveWorker = await Pensive.load({ ...load, worker: true });
  console.log(describeConfig(engine.info.config), engine.info.model, engine.info.persisted, engine.info.fallback_reason);
  const build: 'threads' | 'single' = engine.info.wasm.module;
  console.log(build, engine.info.wasm.threads.toFixed(0), engine.info.wasm.reason ?? 'threads');
  await Pensive.init(undefined, { threads: 2, wasmThreadsUrl: '/threads/pensive_bg.wasm' });
  for await (const event of engine.generate([{ role: 'user', content: 'Hi' }], options)) console.log(describeEvent(event));

  const whole: ChatCompletion = await engine.chat.completions.create({
    model: 'ignored', messages: [{ role: 'user', content: 'Hi' }], stop: 'END', max_tokens: 64, seed: 1,
    thinking: { max_tokens: 32 },
  });
  const message = whole.choices[0].message;
  const reasoning: string | null = message.reasoning_content;
  console.log(message.content, reasoning, whole.usage.completion_tokens_details.reasoning_tokens, describeStats(whole.stats));
  // @ts-expect-error a non-streaming request gives no async iterable
  for await (const _ of whole) void _;

  const stream = await worker.chat.completions.create({
    messages: [{ role: 'user', content: 'Hi' }], stream: true, stream_options: { include_usage: true }, signal: controller.signal,
  });
  for await (const chunk of stream) {
    const c: ChatCompletionChunk = chunk;
    const delta = c.choices[0]?.delta;
    console.log(delta?.reasoning_content ?? '', delta?.content ?? '', c.choices[0]?.finish_reason, c.usage?.total_tokens);
  }
  // @ts-expect-error stream_options belongs to streaming requests
  await engine.chat.completions.create({ messages: [], stream: false, stream_options: { include_usage: true } });

  const scored = await worker.score('Hi', ' there', { signal: controller.signal });
  console.log(scored.nll, scored.perplexity, scored.positions.map((p) => p.logprob + p.margin + p.argmax + p.id));
  const cached: CachedModel[] = await Pensive.cache.list();
  console.log(cached.map((m) => `${m.url} ${m.size} ${m.etag ?? ''}`), await Pensive.cache.has(load.model as string));
  console.log(await Pensive.cache.delete('hf:owner/repo/model.gguf'), await Pensive.cache.persist());
  await Pensive.cache.clear();
  engine.dispose();
  worker.dispose();
}

main().catch((e: unknown) => {
  if (e instanceof PensiveError) {
    const code: ErrorCode = e.code;
    console.log(code, ERROR_CODES.includes(code), e.toJSON().message);
  }
});
