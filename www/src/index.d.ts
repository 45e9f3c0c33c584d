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
  onProgress?: (progress: LoadProgress) => void;
  /** Cache downloads (Cache API, keyed by URL + size). Default true; quota errors only warn. */
  cache?: boolean;
  /** Run the engine in a Web Worker; `load` then resolves to a {@link PensiveWorker}. */
  worker?: boolean;
  /** Abort the download/load. */
  signal?: AbortSignal;
  /** Where to fetch pensive_bg.wasm from when a bundler moved it. */
  wasmUrl?: string | URL;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
}

/** A raw prompt string, or messages that go through the model's chat template. */
export type Prompt = string | ChatMessage[];

export interface ThinkingOptions {
  min_tokens?: number;
  max_tokens?: number;
  continuations?: string[];
  continuation_order?: 'cycle' | 'random';
  ignore_ends?: number;
  max_continuations?: number;
  on_early_end?: 'continue' | 'suppress';
  grace_tokens?: number;
  wrap_up?: string;
  answer_prefix?: string;
  answer_max_tokens?: number;
  start?: string;
  end?: string;
  open?: boolean;
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
  seed?: number;
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

export interface GenerationStats {
  prompt_tokens: number;
  /** Cost: prompt tokens reused from the KV cache (a repeated or extended conversation). */
  cached_tokens: number;
  sampled_tokens: number;
  forced_tokens: number;
  /** Cost: tokens run through the model for this request (prompt − cached + sampled + forced + probe). */
  processed_tokens: number;
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
  prefill_tok_s: number;
  decode_tok_s: number;
  [key: string]: unknown;
}

export type GenerationEvent =
  /** `marker`: (part of) `<think>`/`</think>`, counted neither as thinking nor as answer. */
  /** `probe`: a confidence probe's token, rolled back right after: neither thinking nor answer. */
  | { type: 'token'; id: number; text: string; phase: Phase; forced: boolean; marker: boolean; probe?: true }
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
  /** The backend actually used (what `auto` chose), e.g. "cpu (wasm)" or "webgpu (<adapter>, F32)". */
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
}

export interface ModelConfig {
  arch: string;
  [key: string]: unknown;
}

export interface InspectResult {
  config: ModelConfig;
  bytes: number;
  origin: 'network' | 'cache' | 'file';
}

/**
 * A loaded model. One generation or score runs at a time: `generate` while another is active
 * rejects (its iterator's first `next()`) with code `busy`; nothing is queued.
 */
export declare class Engine {
  readonly info: EngineInfo;
  /** The token ids `generate` feeds for `prompt` (chat template applied). */
  promptIds(prompt: Prompt, options?: Pick<GenerateOptions, 'chat_template_kwargs'>): number[];
  generate(prompt: Prompt, options?: GenerateOptions): AsyncIterableIterator<GenerationEvent>;
  complete(prompt: Prompt, options?: GenerateOptions): Promise<Completion>;
  score(prompt: Prompt, continuation: string | number[]): Promise<ScoreResult>;
  /** Frees the model (GPU buffers included); the engine is unusable afterwards. */
  dispose(): void;
}

/** The same API with the engine in a Web Worker. */
export declare class PensiveWorker {
  constructor(options?: { worker?: Worker; workerUrl?: string | URL });
  info: EngineInfo | null;
  version(): Promise<string>;
  load(options: LoadOptions): Promise<PensiveWorker>;
  inspect(options: LoadOptions): Promise<InspectResult>;
  generate(prompt: Prompt, options?: GenerateOptions): AsyncIterableIterator<GenerationEvent>;
  complete(prompt: Prompt, options?: GenerateOptions): Promise<Completion>;
  score(prompt: Prompt, continuation: string | number[]): Promise<ScoreResult>;
  dispose(): void;
}

export declare function resolveModelUrl(ref: string): string;

export declare const Pensive: {
  load(options: LoadOptions & { worker: true }): Promise<PensiveWorker>;
  load(options: LoadOptions): Promise<Engine>;
  inspect(options: LoadOptions): Promise<InspectResult>;
  version(): Promise<string>;
  init(wasmUrl?: string | URL): Promise<unknown>;
  clearCache(): Promise<void>;
};

export default Pensive;
