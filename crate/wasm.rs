//! JavaScript bindings (wasm-bindgen) for the browser build.
//!
//! This file only translates: JS values in (as JSON, parsed like the CLI's), the same Rust calls the CLI
//! makes, JS values out. Everything the page does around it — fetching and caching model
//! files, the async-iterator surface, option defaults, the Web Worker — lives in the npm
//! package's JavaScript (`www/src/`), which is the public API; these exports are its
//! private engine room and may change with it.
//!
//! Errors cross the boundary as JS `Error` objects carrying a string `code` (the same codes
//! as the Rust error enums' `code()`), which `www/src/errors.js` turns into `PensiveError`.
//! Nothing here may panic on input a page or a file controls: a panic in wasm leaves the
//! module unusable ("a dead module"), so every fallible step returns one of those errors.
//!
//! The engine is two classes. `RawLoader` (`RawLoader.create({backend, max_context})`,
//! `push(chunk) -> progress`, `finish() -> RawEngine`, and
//! `RawLoader.fromSafetensors(config, weights[], tokenizer?, tokenizerConfig?, options)`)
//! asks for the WebGPU device before the bytes arrive and decides the backend from the
//! header (`crate::builder`), so that on WebGPU every tensor goes to a GPU buffer as soon as
//! it is complete. `RawEngine` (`info()`, `start(prompt, options)`
//! (sync: option errors and `busy` throw), `nextEvent() -> Promise<event | undefined>`,
//! `abort()`, `score(prompt, continuation) -> Promise`, `dispose()`) drives `Engine`.

use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::rc::Rc;

use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::chat::TemplateVariables;
use crate::engine::{Continuation, Engine, EngineError, EngineLoader, GenerateRequest, LoadOptions, Prompt};
use crate::loader::{GgufStream, LoadError};
use crate::tokenizer::Tokenizer;

/// Build the JS `Error` (with a `code` property) that the package's wrapper recognises.
fn js_error(code: &str, message: impl Display) -> JsValue {
    let err = js_sys::Error::new(&message.to_string());
    // Defining a data property on a fresh, extensible Error object cannot fail, and if it
    // somehow did the caller would still get the message: ignoring the result is safe.
    let _ = js_sys::Reflect::set(&err, &JsValue::from_str("code"), &JsValue::from_str(code));
    err.into()
}

/// Serialize to plain JS objects (not `Map`s; u64 as numbers), matching the CLI's JSON.
fn to_js<T: serde::Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| js_error("backend", format_args!("cannot convert a result to JS: {e}")))
}

fn load_error(e: LoadError) -> JsValue {
    engine_error(EngineError::Load(e))
}

fn engine_error(e: EngineError) -> JsValue {
    js_error(e.code(), e)
}

/// Runs once when the module is instantiated: route Rust panics (bugs, never expected) to
/// the console with their message instead of an opaque "unreachable" trap.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The crate version, e.g. "0.1.0"; the JS package reports it as `Pensive.version`.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Streams a GGUF file through the real loader and discards the tensors: validates a file
/// (truncation, corrupt header, unsupported architecture) and reports its configuration
/// without building an engine. The page feeds it chunk by chunk, exactly as it feeds the
/// engine loader, so it also exercises download, cache and progress paths cheaply.
#[wasm_bindgen]
pub struct GgufProbe {
    /// `None` once `finish` consumed it; later calls report a typed error.
    stream: Option<GgufStream>,
    /// Whether the header's architecture was checked (as soon as the header is complete, so
    /// an unsupported model fails after kilobytes, not after the whole download).
    config_checked: bool,
}

#[wasm_bindgen]
impl GgufProbe {
    #[wasm_bindgen(constructor)]
    pub fn new() -> GgufProbe {
        GgufProbe { stream: Some(GgufStream::new()), config_checked: false }
    }

    /// Feed the next bytes of the file; returns the progress so far
    /// (`{bytes_seen, bytes_total, tensors_done, tensors_total}`).
    pub fn push(&mut self, chunk: &[u8]) -> Result<JsValue, JsValue> {
        let stream = self.stream.as_mut().ok_or_else(|| js_error("invalid_options", "probe already finished"))?;
        // Dropping each tensor as it completes keeps at most one tensor in wasm memory.
        stream.push(chunk, &mut |_, _| -> Result<(), LoadError> { Ok(()) }).map_err(load_error)?;
        if !self.config_checked {
            if let Some(header) = stream.header() {
                crate::loader::config_from_gguf(header).map_err(load_error)?;
                self.config_checked = true;
            }
        }
        to_js(&stream.progress())
    }

    /// End of the file: every tensor must have arrived. Returns the model configuration.
    pub fn finish(&mut self) -> Result<JsValue, JsValue> {
        let stream = self.stream.take().ok_or_else(|| js_error("invalid_options", "probe already finished"))?;
        let header = stream.finish().map_err(load_error)?;
        let config = crate::loader::config_from_gguf(&header).map_err(load_error)?;
        to_js(&config)
    }
}

impl Default for GgufProbe {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------
// The engine: a push-based loader, then start / next_event / abort / score / dispose.
//
// JS drives one engine from one thread, but its calls interleave at every `await`: the page
// may call `abort()` or `dispose()` while `nextEvent()` waits on a WebGPU readback. So the
// engine lives in a `RefCell` behind an `Rc` that each call's future clones, and the borrow
// taken for the duration of a step *is* the engine's lock: a second step or a score finds
// it taken and reports `busy`; `abort`/`dispose` arriving mid-step leave a request that the
// step honours as soon as it returns (abort lands within one step). `try_borrow*` only:
// a failed `borrow_mut` would panic, and a panic kills the module.

/// Through JSON text rather than serde-wasm-bindgen: the latter reads only the fields a
/// struct names, so `deny_unknown_fields` would never see a misspelt option — and JSON is
/// what the CLI parses too. (`undefined` members vanish in `JSON.stringify`, as they should.)
fn from_js<T: serde::de::DeserializeOwned>(value: JsValue, what: &str) -> Result<T, JsValue> {
    let invalid = |msg: &dyn Display| js_error("invalid_options", format_args!("{what}: {msg}"));
    let text = js_sys::JSON::stringify(&value).map_err(|_| invalid(&"not representable as JSON"))?;
    let text = text.as_string().ok_or_else(|| invalid(&"missing"))?;
    serde_json::from_str(&text).map_err(|e| invalid(&e))
}

/// `undefined`/`null` options mean the defaults.
fn options_from_js<T: serde::de::DeserializeOwned + Default>(value: JsValue, what: &str) -> Result<T, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(T::default());
    }
    from_js(value, what)
}

fn disposed() -> JsValue {
    js_error("invalid_options", "the engine was disposed")
}

fn engine_busy() -> JsValue {
    js_error("busy", "the engine is running a step or a score; wait for it, or abort the generation")
}

/// Push-based loader: the page hands it the model file's bytes as they arrive.
#[wasm_bindgen]
pub struct RawLoader {
    /// `None` once `finish` took it.
    loader: Option<EngineLoader>,
}

#[wasm_bindgen]
impl RawLoader {
    /// `options`: `{backend: "auto" | "webgpu" | "gpu" | "cpu", max_context}`. Resolves once
    /// the WebGPU device exists (or is known to be unavailable: an error for `webgpu`, the
    /// CPU for `auto`); whether the model fits it is decided when the header has arrived.
    pub async fn create(options: JsValue) -> Result<RawLoader, JsValue> {
        let options: LoadOptions = options_from_js(options, "load options")?;
        let loader = EngineLoader::new(&options).await.map_err(engine_error)?;
        Ok(RawLoader { loader: Some(loader) })
    }

    /// The file's size when the page knows it (Content-Length, `File.size`): a header that
    /// claims more is refused before any tensor is allocated.
    #[wasm_bindgen(js_name = setSourceLen)]
    pub fn set_source_len(&mut self, len: f64) -> Result<(), JsValue> {
        let loader = self.loader.as_mut().ok_or_else(|| js_error("invalid_options", "loader already finished"))?;
        if !(len.is_finite() && len >= 0.0) {
            return Err(js_error("invalid_options", format_args!("source length {len} is not a byte count")));
        }
        loader.set_source_len(len as u64);
        Ok(())
    }

    /// The next bytes of the GGUF; returns `{bytes_seen, bytes_total, tensors_done, tensors_total}`.
    pub fn push(&mut self, chunk: &[u8]) -> Result<JsValue, JsValue> {
        let loader = self.loader.as_mut().ok_or_else(|| js_error("invalid_options", "loader already finished"))?;
        let progress = loader.push(chunk).map_err(engine_error)?;
        to_js(&progress)
    }

    /// End of the file: build the engine.
    pub fn finish(&mut self) -> Result<RawEngine, JsValue> {
        let loader = self.loader.take().ok_or_else(|| js_error("invalid_options", "loader already finished"))?;
        Ok(RawEngine::wrap(loader.finish(None).map_err(engine_error)?))
    }

    /// A Hugging Face folder: config.json, the *.safetensors files, tokenizer.json (and
    /// tokenizer_config.json, which carries the chat template), all read whole.
    #[wasm_bindgen(js_name = fromSafetensors)]
    pub async fn from_safetensors(
        config: Vec<u8>,
        weights: Vec<js_sys::Uint8Array>,
        tokenizer: Option<Vec<u8>>,
        tokenizer_config: Option<Vec<u8>>,
        options: JsValue,
    ) -> Result<RawEngine, JsValue> {
        let options: LoadOptions = options_from_js(options, "load options")?;
        let tokenizer = tokenizer
            .as_deref()
            .map(|json| Tokenizer::from_json(json, tokenizer_config.as_deref()))
            .transpose()
            .map_err(|e| engine_error(e.into()))?;
        let files: Vec<Vec<u8>> = weights.iter().map(|w| w.to_vec()).collect();
        let slices: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let model = crate::loader::load_safetensors(&config, &slices).map_err(load_error)?;
        drop(slices);
        drop(files);
        let engine = Engine::new(model, tokenizer, &options).await.map_err(engine_error)?;
        Ok(RawEngine::wrap(engine))
    }
}

struct Shared {
    /// `None` after `dispose`.
    engine: RefCell<Option<Engine>>,
    abort_requested: Cell<bool>,
    dispose_requested: Cell<bool>,
}

impl Shared {
    /// Honour an abort or dispose that arrived while a step held the engine.
    fn settle(&self, slot: &mut Option<Engine>) {
        if self.abort_requested.take() {
            if let Some(engine) = slot.as_mut() {
                engine.abort();
            }
        }
        if self.dispose_requested.take() {
            if let Some(engine) = slot.take() {
                engine.dispose();
            }
        }
    }
}

/// A loaded model; see the section comment for how calls interleave.
#[wasm_bindgen]
pub struct RawEngine {
    shared: Rc<Shared>,
}

impl RawEngine {
    fn wrap(engine: Engine) -> RawEngine {
        RawEngine {
            shared: Rc::new(Shared {
                engine: RefCell::new(Some(engine)),
                abort_requested: Cell::new(false),
                dispose_requested: Cell::new(false),
            }),
        }
    }
}

#[wasm_bindgen]
impl RawEngine {
    /// `{backend, fallback_reason, config, vocab_size, max_context, has_chat_template}`.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let slot = self.shared.engine.try_borrow().map_err(|_| engine_busy())?;
        let info = slot.as_ref().ok_or_else(disposed)?.info().map_err(engine_error)?;
        to_js(&info)
    }

    /// The prompt's token ids (chat template applied to messages), as `generate` feeds them.
    /// `chat_template_kwargs`: extra template variables (an object, or undefined/null).
    #[wasm_bindgen(js_name = promptIds)]
    pub fn prompt_ids(&self, prompt: JsValue, chat_template_kwargs: JsValue) -> Result<Vec<u32>, JsValue> {
        let prompt: Prompt = from_js(prompt, "prompt")?;
        let kwargs: Option<TemplateVariables> = options_from_js(chat_template_kwargs, "chat_template_kwargs")?;
        let slot = self.shared.engine.try_borrow().map_err(|_| engine_busy())?;
        slot.as_ref().ok_or_else(disposed)?.prompt_ids(&prompt, kwargs.as_ref()).map_err(engine_error)
    }

    /// Begin a generation. `prompt`: a string or `[{role, content}]`; `options`: the
    /// snake_case request (unknown fields are errors).
    pub fn start(&self, prompt: JsValue, options: JsValue) -> Result<(), JsValue> {
        let prompt: Prompt = from_js(prompt, "prompt")?;
        let request: GenerateRequest = options_from_js(options, "generate options")?;
        let mut slot = self.shared.engine.try_borrow_mut().map_err(|_| engine_busy())?;
        let engine = slot.as_mut().ok_or_else(disposed)?;
        self.shared.abort_requested.set(false);
        engine.start(&prompt, request).map_err(engine_error)
    }

    /// The next event of the active generation, or `undefined` once it finished (or was
    /// aborted).
    #[wasm_bindgen(js_name = nextEvent)]
    #[allow(clippy::await_holding_refcell_ref)] // the borrow is the lock, see above
    pub fn next_event(&self) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let mut slot = shared.engine.try_borrow_mut().map_err(|_| engine_busy())?;
            let event = match slot.as_mut() {
                Some(engine) if !shared.abort_requested.get() => engine.next_event().await,
                Some(_) => Ok(None),
                None => return Err(disposed()),
            };
            let aborted = shared.abort_requested.get();
            shared.settle(&mut slot);
            match event.map_err(engine_error)? {
                Some(event) if !aborted => to_js(&event),
                _ => Ok(JsValue::UNDEFINED),
            }
        })
    }

    /// End the active generation (now, or when the step in flight returns); the engine
    /// stays usable.
    pub fn abort(&self) {
        match self.shared.engine.try_borrow_mut() {
            Ok(mut slot) => {
                if let Some(engine) = slot.as_mut() {
                    engine.abort();
                }
            }
            Err(_) => self.shared.abort_requested.set(true),
        }
    }

    /// Whether a generation is active (started and not yet finished or aborted).
    #[wasm_bindgen(js_name = isBusy)]
    pub fn is_busy(&self) -> bool {
        match self.shared.engine.try_borrow() {
            Ok(slot) => slot.as_ref().is_some_and(Engine::is_busy),
            Err(_) => true,
        }
    }

    /// Teacher-forced scoring; `continuation` is a string or an array of token ids.
    /// Resolves to the `pensive score --json` object.
    #[allow(clippy::await_holding_refcell_ref)] // the borrow is the lock, see above
    pub fn score(&self, prompt: JsValue, continuation: JsValue) -> Promise {
        let shared = Rc::clone(&self.shared);
        let args = from_js::<Prompt>(prompt, "prompt").and_then(|p| Ok((p, from_js::<Continuation>(continuation, "continuation")?)));
        future_to_promise(async move {
            let (prompt, continuation) = args?;
            let mut slot = shared.engine.try_borrow_mut().map_err(|_| engine_busy())?;
            let result = match slot.as_mut() {
                Some(engine) => engine.score(&prompt, &continuation).await,
                None => return Err(disposed()),
            };
            shared.settle(&mut slot);
            to_js(&result.map_err(engine_error)?)
        })
    }

    /// Free the model (GPU buffers included), now or when the step in flight returns.
    pub fn dispose(&self) {
        match self.shared.engine.try_borrow_mut() {
            Ok(mut slot) => {
                if let Some(engine) = slot.take() {
                    engine.dispose();
                }
            }
            Err(_) => {
                self.shared.abort_requested.set(true);
                self.shared.dispose_requested.set(true);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// `pensive eval` for the demo's sweep panel. The page runs each planned item through the
// engine's ordinary `generate` (in a worker or not, on the one KV cache) and hands the
// item's events back; the problems, the requests, answer extraction and s1's metrics stay
// in `crate::eval`, the one implementation the CLI uses too.

/// `sweep`: `{seed, problems, policies, budgets, floor, thinking}` as `pensive eval`'s flags
/// (a policy is a preset's name or `{label, thinking}`; left-out fields take the CLI's
/// defaults). Returns the runs in order: `[{policy, budget, problem: {id, question, answer},
/// prompt, request}]`, `prompt` and `request` ready for `generate`.
#[wasm_bindgen(js_name = evalPlan)]
pub fn eval_plan(sweep: JsValue) -> Result<JsValue, JsValue> {
    let sweep: crate::eval::Sweep = options_from_js(sweep, "sweep")?;
    to_js(&sweep.plan().map_err(engine_error)?)
}

/// The result of a planned run (`evalPlan`'s element) from the events its `generate` yielded
/// (every one, `done` last) and its wall time: the `pensive eval --json` result object.
#[wasm_bindgen(js_name = evalItem)]
pub fn eval_item(run: JsValue, model: &str, events: JsValue, wall_s: f64) -> Result<JsValue, JsValue> {
    let run: crate::eval::PlannedRun = from_js(run, "planned run")?;
    let events: Vec<crate::generate::Event> = from_js(events, "events")?;
    if !matches!(events.last(), Some(crate::generate::Event::Done { .. })) {
        return Err(js_error("invalid_options", "events: a finished run ends with its done event"));
    }
    let mut folded = crate::eval::RunEvents::default();
    for event in &events {
        folded.observe(event);
    }
    to_js(&crate::eval::item_result(model, &run.policy, run.budget, &run.problem, folded, wall_s))
}

/// s1's Control, Scaling and Performance per (model, policy) over `evalItem` results: the
/// `summaries` of `pensive eval --json`.
#[wasm_bindgen(js_name = evalSummarize)]
pub fn eval_summarize(results: JsValue) -> Result<JsValue, JsValue> {
    let results: Vec<crate::eval::ItemResult> = from_js(results, "results")?;
    to_js(&crate::eval::summarize(&results))
}
