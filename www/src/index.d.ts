// Types of the `pensive` package. Field names are snake_case where they are the engine's
// (options, events, stats: the same names as the CLI's JSON), camelCase where they are
// JavaScript's (onProgress, signal).

export type ErrorCode =
  | 'invalid_options'
  | 'model_format'
  | 'unsupported_model'
  | 'context_overflow'
  | 'busy'
  | 'aborted'
  | 'backend'
  | 'backend_unavailable'
  | 'chat_template'
  | 'io';

export declare const ERROR_CODES: readonly ErrorCode[];

export declare class PensiveError extends Error {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown });
  readonly name: 'PensiveError';
  readonly code: ErrorCode;
  toJSON(): { code: ErrorCode; message: string };
}

/** A folder-like model: Hugging Face config.json + safetensors (+ tokenizer.json). */
export interface FolderModel {
  config: Blob | string;
  weights: Array<Blob | string>;
  tokenizer?: Blob | string;
  /** tokenizer_config.json: the chat template. */
  tokenizer_config?: Blob | string;
}

/**
 * A URL, `hf:owner/repo[@revision]/file.gguf`, a File/Blob of a GGUF, a FileList or array of
 * Files from a folder, or a {@link FolderModel}.
 */
export type ModelSource = string | URL | Blob | FileList | File[] | FolderModel;

export type LoadPhase = 'download' | 'cache' | 'read' | 'finish' | 'ready';

export interface LoadProgress {
  /** Bytes handed to the loader so far. */
  loaded: number;
  /** Total bytes when known (Content-Length, file size), else null. */
  total: number | null;
  phase: LoadPhase;
}

export interface LoadOptions {
  model: ModelSource;
  /** tokenizer.json for a folder model that lacks one. */
  tokenizer?: Blob | string;
  /**
   * `auto` (default) picks WebGPU when an adapter exists and can hold the model (weight types,
   * binding and buffer limits, a memory estimate), else the wasm CPU backend
   * (`engine.info.fallback_reason` says why); `webgpu` then fails with `backend_unavailable`.
   */
  backend?: 'auto' | 'webgpu' | 'cpu';
  /** KV cache capacity in tokens (default: min(model context, 8192)). */
  max_context?: number;
  /**
   * The CPU backend's kernels: `int8` (default: 8-bit activations times integer weights, as
   * llama.cpp, for prompt and decode: faster decode; a repeated request that reuses the
   * cache still equals a fresh one) or `f32` (the reference). Ignored on WebGPU.
   */
  cpu_kernels?: 'int8' | 'f32';
  onProgress?: (progress: LoadProgress) => void;
  /** Cache downloads (Cache API, keyed by URL + size + ETag). Default true; quota errors only warn. */
  cache?: boolean;
  /**
   * Ask the browser to keep the model cache under storage pressure
   * (`navigator.storage.persist()`) before loading; its answer is `engine.info.persisted`.
   */
  persist?: boolean;
  /** Run the engine in a Web Worker; `load` then resolves to a {@link PensiveWorker}. */
  worker?: boolean;
  /** Abort the download/load. */
  signal?: AbortSignal;
  /** Where to fetch pensive_bg.wasm (the single-thread build) from when a bundler moved it. */
  wasmUrl?: string | URL;
  /** Where to fetch threads/pensive_bg.wasm (the threaded build) from when a bundler moved it. */
  wasmThreadsUrl?: string | URL;
  /**
   * Where to fetch pensive_relaxed_bg.wasm (the single-thread build's relaxed-SIMD module)
   * from when a bundler moved it. Where `wasmUrl` is given without it, the simd128 module runs.
   */
  wasmRelaxedUrl?: string | URL;
  /** Where to fetch threads/pensive_relaxed_bg.wasm from (as `wasmRelaxedUrl`, for `wasmThreadsUrl`). */
  wasmThreadsRelaxedUrl?: string | URL;
  /**
   * Which of the build's two modules runs: `relaxed` (relaxed SIMD: faster int8 kernels of the
   * CPU backend, Chrome 114+), `simd128` (every browser with WebAssembly SIMD), or `auto`
   * (default: relaxed where the browser validates its instructions). Both compute the same
   * bits. `relaxed` where the browser lacks it fails with `backend_unavailable`. Counts at the
   * module's first initialisation in its thread, as `threads`.
   */
  wasmSimd?: 'auto' | 'relaxed' | 'simd128';
  /**
   * Threads of the wasm CPU backend (default: `navigator.hardwareConcurrency`, at most 8).
   * More than 1 runs the threaded build, whose memory is shared with a pool of Web Workers:
   * it needs a cross-origin isolated page (COOP `same-origin` + COEP `require-corp`) and
   * `worker: true`; elsewhere the single-thread build runs and `engine.info.wasm.reason`
   * says why. 1 always runs the single-thread build. Counts at the module's first
   * initialisation in its thread (each `worker: true` engine has a thread of its own).
   */
  threads?: number;
}

/** Which wasm build runs the engine (`engine.info.wasm`). */
export interface WasmBuildInfo {
  /** `threads`: shared memory, rayon on a pool of Web Workers; `single`: one thread. */
  module: 'threads' | 'single';
  /** Threads the CPU backend's mat-vecs run on (1 for `single`). */
  threads: number;
  /** Why the single-thread build runs (not cross-origin isolated, not in a worker, ...); null for `threads`. */
  reason: string | null;
  /** The build's module that runs: with relaxed SIMD, or simd128 only (see `wasmSimd`). */
  simd: 'relaxed' | 'simd128';
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
}

/** A raw prompt string, or messages that go through the model's chat template. */
export type Prompt = string | ChatMessage[];

export interface ThinkingOptions {
  /** The end of thinking is refused (replaced by a continuation) before this many thinking tokens. */
  min_tokens?: number;
  /** The budget: thinking is ended (wrap-up, end marker) at this many thinking tokens. */
  max_tokens?: number;
  /** Text forced in place of an early end of thinking (default "Wait"). */
  continuations?: string[];
  continuation_order?: 'cycle' | 'random';
  /** Ends of thinking to let through before the floor applies. */
  ignore_ends?: number;
  max_continuations?: number;
  on_early_end?: 'continue' | 'suppress';
  /** Tokens past the budget the model may take to finish its sentence. */
  grace_tokens?: number;
  wrap_up?: string;
  answer_prefix?: string;
  answer_max_tokens?: number;
  /** Thinking markers (default: the model's `<think>`/`</think>`). */
  start?: string;
  end?: string;
  /** Force the start marker: thinking begins at once. */
  open?: boolean;
  /** Seed of `continuation_order: 'random'` (default: the request's seed). */
  seed?: number;
  /** A named starting point; every other field given overrides it (see the README). */
  preset?: 's1' | 'qwen3' | 'nowait' | 'deer' | 'alphaone';
  /** Words masked while thinking, in their case and leading-space forms (NoWait). */
  suppress?: string[];
  /** DEER: at a trigger, probe a greedy trial answer (rolled back); exit if confident. */
  confidence_exit?: { probe?: string; max_probe_tokens?: number; threshold?: number; triggers?: string[] };
  /** AlphaOne: continuations after paragraph breaks before alpha × max_tokens, then "Wait" ends thinking. */
  schedule?: { alpha?: number; probability?: number; anneal?: 'constant' | 'linear' };
  thinking_sampling?: PhaseSampling;
  answer_sampling?: PhaseSampling;
  /** End of generation is masked in the answer until it holds this many tokens. */
  answer_min_tokens?: number;
}

/** Per-phase overrides of the request's sampling options. */
export interface PhaseSampling {
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
}

export interface GenerateOptions {
  temperature?: number;
  top_k?: number;
  top_p?: number;
  min_p?: number;
  repeat_penalty?: number;
  /** How many recent tokens the repeat penalty looks at (default 64). */
  repeat_last_n?: number;
  /**
   * Omitted: a fresh seed per request, reported as `done.stats.seed` (at most
   * `Number.MAX_SAFE_INTEGER`); passing it back reproduces the answer.
   */
  seed?: number;
  /** Token id → bias added to its logit, in [-100, 100] (OpenAI's `logit_bias`). */
  logit_bias?: Record<number, number>;
  /** Put `logprob` on every sampled token event. */
  logprobs?: boolean;
  /** And this many most likely alternatives, 0..20 (needs `logprobs`). */
  top_logprobs?: number;
  max_tokens?: number;
  /** Ends the answer when its text contains one of these (not emitted). */
  stop?: string[];
  /** Let `stop` end the generation inside thinking too (default false). */
  stop_in_thinking?: boolean;
  thinking?: ThinkingOptions;
  /**
   * Extra variables for the chat template (vLLM's name), e.g. `{ enable_thinking: false }`
   * for Qwen3, whose template then starts the answer with an empty thinking block.
   * Ignored for raw string prompts.
   */
  chat_template_kwargs?: Record<string, unknown>;
  /** Aborting ends the generation within one step; the engine stays usable. */
  signal?: AbortSignal;
}

export type Phase = 'thinking' | 'answer';

export type FinishReason = 'end_of_generation' | 'stop_string' | 'max_tokens' | 'answer_max_tokens' | 'context_full';

/**
 * What a generation produced and cost. Cost fields (`cached_tokens`, `processed_tokens`, the
 * timings) may differ between a repeated and a fresh request; the others never do.
 */
export interface GenerationStats {
  prompt_tokens: number;
  /** Cost: prompt tokens reused from the KV cache (a repeated or extended conversation). */
  cached_tokens: number;
  sampled_tokens: number;
  forced_tokens: number;
  /** Cost: tokens run through the model for this request (prompt − cached + sampled + forced + probe). */
  processed_tokens: number;
  /** Kept tokens later taken out again (a multi-token end marker, a stop string). */
  rolled_back_tokens: number;
  /** Tokens drawn but never kept (a replaced end of thinking, the end-of-generation token). */
  dropped_tokens: number;
  /** Tokens in the response: sampled + forced − rolled back. */
  response_tokens: number;
  thinking_tokens: number;
  answer_tokens: number;
  continuations: number;
  ends_suppressed: number;
  forced_exit: boolean;
  /** Steps where a `suppress` word was the most likely token (the `suppressed` events). */
  words_suppressed: number;
  /** Confidence probes run, and the tokens they fed and rolled back. */
  probes: number;
  probe_tokens: number;
  confidence_exit: boolean;
  schedule_exit: boolean;
  prefill_s: number;
  decode_s: number;
  prefill_tok_s: number;
  decode_tok_s: number;
  finish_reason: FinishReason | null;
  /** The sampler's seed: the request's, or the one drawn for it. */
  seed: number;
}

export interface TopLogprob {
  id: number;
  text: string;
  logprob: number;
}

export interface TokenEvent {
  type: 'token';
  id: number;
  text: string;
  phase: Phase;
  /** Inserted by the engine (a continuation, wrap-up, marker, answer prefix), not sampled. */
  forced: boolean;
  /** (Part of) `<think>`/`</think>`, counted neither as thinking nor as answer. */
  marker: boolean;
  /**
   * With `logprobs`, on sampled tokens: log p of this token under the model's logits plus
   * `logit_bias` (temperature 1, before penalties and truncation).
   */
  logprob?: number;
  /** With `logprobs`: the `top_logprobs` most likely alternatives, most likely first. */
  top_logprobs?: TopLogprob[];
  /** A confidence probe's token, rolled back right after: neither thinking nor answer. */
  probe?: true;
}

export type GenerationEvent =
  | TokenEvent
  | { type: 'continuation'; text: string; round: number }
  | { type: 'budget_exhausted'; thinking_tokens: number }
  | { type: 'probe'; confidence: number; tokens: number; exit: boolean }
  | { type: 'early_exit'; reason: 'confidence' | 'schedule'; thinking_tokens: number }
  | { type: 'suppressed'; id: number; text: string }
  | { type: 'phase'; phase: Phase }
  | { type: 'done'; stats: GenerationStats };

export interface Completion {
  /** The answer (tokens in the answer phase). */
  text: string;
  /** The thinking, forced insertions included. */
  thinking: string;
  stats: GenerationStats | null;
  events: GenerationEvent[];
}

export interface ScoredToken {
  /** The continuation token at this position. */
  id: number;
  /** log p(id | everything before). */
  logprob: number;
  /** The model's own top choice here. */
  argmax: number;
  /** Top-1 minus top-2 logit. */
  margin: number;
}

/** The same object as `pensive score --json`. */
export interface ScoreResult {
  prompt_ids: number[];
  positions: ScoredToken[];
  /** Mean negative log-likelihood per continuation token (nats). */
  nll: number;
  perplexity: number;
}

export interface EngineInfo {
  /** The backend actually used (what `auto` chose), e.g. "cpu (wasm)", "cpu (wasm, 2 threads)" or "webgpu (<adapter>, F32)". */
  backend: string;
  /**
   * Why `auto` runs on the CPU rather than WebGPU: no adapter, or one that cannot hold the
   * model (a weight type without a WebGPU kernel, a tensor or buffer over the adapter's
   * limits, more memory than the estimate allows). `null` when the backend is the one asked for.
   */
  fallback_reason: string | null;
  config: ModelConfig;
  vocab_size: number;
  max_context: number;
  has_chat_template: boolean;
  /** The model file's name; `chat` responses report it as `model`. */
  model: string;
  /** What `navigator.storage.persist()` answered for `persist: true`; null when not asked. */
  persisted: boolean | null;
  /** Which wasm build runs the engine and on how many threads. */
  wasm: WasmBuildInfo;
}

export interface ModelConfig {
  arch: 'llama' | 'qwen2' | 'qwen3';
  n_layers: number;
  dim: number;
  n_heads: number;
  n_kv_heads: number;
  head_dim: number;
  ffn_dim: number;
  vocab_size: number;
  rope_theta: number;
  rope_layout: 'interleaved' | 'neo_x';
  rms_eps: number;
  qkv_bias: boolean;
  qk_norm: boolean;
  tied_embeddings: boolean;
  context_length: number;
}

export interface InspectResult {
  config: ModelConfig;
  bytes: number;
  origin: 'network' | 'cache' | 'file';
}

// ---------------------------------------------------------------------------
// OpenAI-style chat completions (`engine.chat.completions.create`)

/** Options of `chat.completions.create`: OpenAI's names, plus Pensive's `thinking` and the rest of {@link GenerateOptions}. */
export interface ChatCompletionRequestBase extends Omit<GenerateOptions, 'stop'> {
  messages: ChatMessage[];
  /** Accepted for compatibility and ignored: the engine runs the model it loaded. */
  model?: string;
  stop?: string | string[];
}

export interface ChatCompletionRequestNonStreaming extends ChatCompletionRequestBase {
  stream?: false;
}

export interface ChatCompletionRequestStreaming extends ChatCompletionRequestBase {
  stream: true;
  /** `include_usage`: one last chunk with no choices and the usage (earlier chunks: `usage: null`). */
  stream_options?: { include_usage?: boolean };
}

export type ChatCompletionRequest = ChatCompletionRequestNonStreaming | ChatCompletionRequestStreaming;

/** 'stop': the model ended or a stop string matched; 'length': a token or context limit. */
export type ChatFinishReason = 'stop' | 'length';

export interface ChatCompletionTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>;
}

/** With `logprobs`: one entry per sampled token, answer and thinking apart. */
export interface ChatLogprobs {
  content?: ChatCompletionTokenLogprob[];
  reasoning_content?: ChatCompletionTokenLogprob[];
}

export interface CompletionUsage {
  prompt_tokens: number;
  /** Response tokens (thinking, forced insertions and markers included). */
  completion_tokens: number;
  total_tokens: number;
  completion_tokens_details: { reasoning_tokens: number };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  /** Unix seconds. */
  created: number;
  model: string;
  choices: [{
    index: 0;
    message: {
      role: 'assistant';
      content: string;
      /** The thinking (forced continuations included, markers excluded); null when there was no thinking phase. */
      reasoning_content: string | null;
    };
    logprobs: ChatLogprobs | null;
    finish_reason: ChatFinishReason;
  }];
  usage: CompletionUsage;
  /** Pensive's own: the `done` event's stats (budget, continuations, seed, speed). */
  stats: GenerationStats;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  /** Empty in the usage chunk (`stream_options.include_usage`). */
  choices: Array<{
    index: 0;
    delta: { role?: 'assistant'; content?: string; reasoning_content?: string };
    logprobs: ChatLogprobs | null;
    finish_reason: ChatFinishReason | null;
  }>;
  /** With `include_usage`: null except on the last chunk. */
  usage?: CompletionUsage | null;
  /** Pensive's, on chunks with text: the engine inserted it (a continuation, the wrap-up, an answer prefix). */
  forced?: boolean;
  /** On the chunk that carries `finish_reason`. */
  stats?: GenerationStats;
}

export interface ChatCompletions {
  create(request: ChatCompletionRequestStreaming): Promise<AsyncIterableIterator<ChatCompletionChunk>>;
  create(request: ChatCompletionRequestNonStreaming): Promise<ChatCompletion>;
  create(request: ChatCompletionRequest): Promise<ChatCompletion | AsyncIterableIterator<ChatCompletionChunk>>;
}

export interface Chat {
  readonly completions: ChatCompletions;
}

/** `signal`: rejects with code `aborted` at once; a forward already running finishes first. */
export interface ScoreOptions {
  signal?: AbortSignal;
}

/**
 * A loaded model. One generation or score runs at a time: `generate` while another is active
 * rejects (its iterator's first `next()`) with code `busy`; nothing is queued.
 */
export declare class Engine {
  readonly info: EngineInfo;
  /** OpenAI-style chat completions over `generate`. */
  readonly chat: Chat;
  /** The token ids `generate` feeds for `prompt` (chat template applied). */
  promptIds(prompt: Prompt, options?: Pick<GenerateOptions, 'chat_template_kwargs'>): number[];
  generate(prompt: Prompt, options?: GenerateOptions): AsyncIterableIterator<GenerationEvent>;
  complete(prompt: Prompt, options?: GenerateOptions): Promise<Completion>;
  score(prompt: Prompt, continuation: string | number[], options?: ScoreOptions): Promise<ScoreResult>;
  /**
   * False once disposed, or once the WebGPU device was lost (driver reset, GPU process
   * crash, `GPUDevice.destroy()`): every request then rejects with `device_lost`; load the
   * model again with `Pensive.load`.
   */
  readonly usable: boolean;
  /** Frees the model (GPU buffers included); the engine is unusable afterwards. */
  dispose(): void;
}

/** The same API with the engine in a Web Worker; every call honours its `signal`. */
export declare class PensiveWorker {
  /**
   * By default the worker is `new Worker(new URL('./worker.js', import.meta.url), { type: 'module' })`,
   * which bundlers (Vite, webpack) detect; `worker`/`workerUrl` replace it.
   */
  constructor(options?: { worker?: Worker; workerUrl?: string | URL });
  info: EngineInfo | null;
  readonly chat: Chat;
  version(): Promise<string>;
  /** The worker's wasm linear memory in bytes. */
  wasmMemoryBytes(): Promise<number>;
  load(options: LoadOptions): Promise<PensiveWorker>;
  inspect(options: LoadOptions): Promise<InspectResult>;
  generate(prompt: Prompt, options?: GenerateOptions): AsyncIterableIterator<GenerationEvent>;
  complete(prompt: Prompt, options?: GenerateOptions): Promise<Completion>;
  score(prompt: Prompt, continuation: string | number[], options?: ScoreOptions): Promise<ScoreResult>;
  /**
   * False before a load, after `dispose`, and once a call has rejected with `device_lost`
   * (the worker's WebGPU device is gone; load again).
   */
  readonly usable: boolean;
  dispose(): void;
}

export declare function resolveModelUrl(ref: string): string;

export interface CachedModel {
  /** The resolved URL the file was downloaded from. */
  url: string;
  size: number;
  /** The server's ETag, when it sent one. */
  etag: string | null;
}

/**
 * The model cache (Cache API). A cached model loads without the network; `delete` it to pick
 * up a file changed on the server. `model`: a URL or `hf:` reference, as given to `load`.
 */
export interface ModelCache {
  list(): Promise<CachedModel[]>;
  has(model: string | URL): Promise<boolean>;
  /** Resolves to whether there was an entry. */
  delete(model: string | URL): Promise<boolean>;
  clear(): Promise<void>;
  /** `navigator.storage.persist()`'s answer (false where it is missing, e.g. in a worker). */
  persist(): Promise<boolean>;
}

export declare const Pensive: {
  load(options: LoadOptions & { worker: true }): Promise<PensiveWorker>;
  load(options: LoadOptions): Promise<Engine>;
  inspect(options: LoadOptions): Promise<InspectResult>;
  version(): Promise<string>;
  /** Instantiate the wasm module ahead of time (options as `load`'s of the same names). */
  init(
    wasmUrl?: string | URL,
    options?: Pick<LoadOptions, 'threads' | 'wasmThreadsUrl' | 'wasmRelaxedUrl' | 'wasmThreadsRelaxedUrl' | 'wasmSimd'>,
  ): Promise<unknown>;
  readonly cache: ModelCache;
  clearCache(): Promise<void>;
};

export default Pensive;
