// Typed errors of the package. Every failure a caller can meet — bad options, a broken or
// unsupported model file, a download error, a busy or aborted engine, a backend fault —
// arrives as a PensiveError whose `code` says which, never as a dead wasm module.

/** Every code a PensiveError may carry (the Rust engine's `EngineError::code()` values). */
export const ERROR_CODES = Object.freeze([
  'invalid_options', // an option is unknown, mistyped or out of range
  'model_format', // the model file is corrupt, truncated or not GGUF/safetensors
  'unsupported_model', // a well-formed model of an architecture Pensive does not run
  'context_overflow', // prompt + generation exceed the model's context
  'busy', // a generation (or score) is already running on this engine
  'aborted', // the AbortSignal fired, or the engine was disposed mid-generation
  'backend', // WebGPU / wasm failure (device lost, out of memory, internal error)
  'backend_unavailable', // backend 'webgpu' was asked for and no adapter exists or it cannot hold the model
  'chat_template', // the model's chat template cannot render these messages
  'io', // network, cache or file read failure
  'too_large', // the model cannot fit this backend's memory (wasm32's 4 GiB on the CPU backend)
  'device_lost', // the WebGPU device was lost (driver reset, destroy()); load the model again
]);

export class PensiveError extends Error {
  /**
   * @param {string} code one of ERROR_CODES
   * @param {string} message
   * @param {{cause?: unknown}} [options]
   */
  constructor(code, message, options) {
    super(message, options);
    this.name = 'PensiveError';
    this.code = code;
  }

  /** A plain object that survives postMessage (Error subclasses lose their fields there). */
  toJSON() {
    return { code: this.code, message: this.message };
  }
}

/** Convert anything thrown by wasm, fetch, the Cache API or a worker into a PensiveError. */
export function toPensiveError(e, fallbackCode = 'backend') {
  if (e instanceof PensiveError) return e;
  if (e && typeof e === 'object' && typeof e.code === 'string' && ERROR_CODES.includes(e.code)) {
    return new PensiveError(e.code, String(e.message ?? e.code), { cause: e });
  }
  if (e && typeof e === 'object' && e.name === 'AbortError') {
    return new PensiveError('aborted', 'aborted', { cause: e });
  }
  // A wasm trap (RuntimeError) or a JS exception from the bindings: a bug, but still typed.
  const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return new PensiveError(fallbackCode, message, { cause: e });
}
