//! JavaScript bindings (wasm-bindgen) for the browser build.
//!
//! This file only translates: JS values in (serde-wasm-bindgen), the same Rust calls the CLI
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
//! Still to come with the engine (`crate/engine.rs`), as `www/src/engine.js` already calls it:
//! `RawLoader` (`new()`, `push(chunk) -> progress`, `finish(backend) -> Promise<RawEngine>`,
//! `RawLoader.fromSafetensors(config, weights[], tokenizer?, backend) -> Promise<RawEngine>`)
//! and `RawEngine` (`info()`, `start(prompt, options)` (sync: option errors and `busy` throw),
//! `nextEvent() -> Promise<event | undefined>`, `abort()`, `score(prompt, continuation) ->
//! Promise`, `dispose()`), with the engine in an `Rc<RefCell<..>>` whose borrow during a step
//! is the lock, and abort/dispose requests honoured when the step in flight returns.

use std::fmt::Display;

use wasm_bindgen::prelude::*;

use crate::config::ConfigError;
use crate::loader::{GgufStream, LoadError};

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
    let code = match &e {
        LoadError::Config(ConfigError::UnsupportedArch(_)) => "unsupported_model",
        LoadError::Io(_) => "io",
        _ => "model_format",
    };
    js_error(code, e)
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
        stream.push(chunk, &mut |_, _| Ok(())).map_err(load_error)?;
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
// Diagnostics: raw forward passes of the CPU or WebGPU decoder in the page, without the
// engine's tokenizer, sampler or budget. For benchmarks (tests/browser/bench.mjs) and for
// checking that the WGSL kernels run on the browser's WebGPU; not part of the package's API.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use js_sys::Promise;
use wasm_bindgen_futures::future_to_promise;

use crate::backend::Backend;
use crate::gpu::model::{GpuModel, GpuModelBuilder};
use crate::gpu::{GpuContext, GpuOptions};
use crate::loader::{LoadedModel, RawTensor};
use crate::model::CpuModel;

/// Context the benchmark models are built for: prompt + decode steps must fit.
const BENCH_CONTEXT: usize = 512;

enum BenchModel {
    Cpu(CpuModel),
    // Boxed: GpuModel's buffer handles make it several times larger than CpuModel.
    Gpu(Box<GpuModel>),
}

impl BenchModel {
    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, crate::backend::BackendError> {
        match self {
            BenchModel::Cpu(m) => m.forward(tokens, n_logits).await,
            BenchModel::Gpu(m) => m.forward(tokens, n_logits).await,
        }
    }

    fn truncate(&mut self, len: usize) -> Result<(), crate::backend::BackendError> {
        match self {
            BenchModel::Cpu(m) => m.truncate(len),
            BenchModel::Gpu(m) => m.truncate(len),
        }
    }

    fn name(&self) -> String {
        match self {
            BenchModel::Cpu(m) => m.name(),
            BenchModel::Gpu(m) => m.name(),
        }
    }
}

/// Where streamed tensors go while loading.
enum BenchSink {
    /// Kept in wasm memory for the CPU decoder.
    Cpu(HashMap<String, RawTensor>),
    /// Uploaded at once; `None` until the header (and so the config) is known.
    Gpu(Rc<GpuContext>, Option<GpuModelBuilder>),
}

#[wasm_bindgen]
pub struct ForwardBench {
    stream: Option<GgufStream>,
    sink: Option<BenchSink>,
    model: Rc<RefCell<Option<BenchModel>>>,
}

fn gpu_error(e: crate::gpu::GpuError) -> JsValue {
    js_error("backend", e)
}

#[wasm_bindgen]
impl ForwardBench {
    /// `backend`: "cpu" or "webgpu". Resolves once the (WebGPU) device exists.
    pub fn create(backend: String) -> Promise {
        future_to_promise(async move {
            let sink = match backend.as_str() {
                "cpu" => BenchSink::Cpu(HashMap::new()),
                "webgpu" => {
                    // The largest tensor is unknown before the header: ask for the adapter's maximum.
                    let options = GpuOptions { largest_tensor_bytes: u64::MAX, ..Default::default() };
                    let ctx = GpuContext::new(&options).await.map_err(gpu_error)?;
                    BenchSink::Gpu(Rc::new(ctx), None)
                }
                other => return Err(js_error("invalid_options", format_args!("backend must be cpu or webgpu, not '{other}'"))),
            };
            Ok(ForwardBench { stream: Some(GgufStream::new()), sink: Some(sink), model: Rc::new(RefCell::new(None)) }.into())
        })
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsValue> {
        let (Some(stream), Some(sink)) = (self.stream.as_mut(), self.sink.as_mut()) else {
            return Err(js_error("invalid_options", "bench already finished loading"));
        };
        stream
            .push(chunk, &mut |header, t| match sink {
                BenchSink::Cpu(tensors) => {
                    tensors.insert(t.name.clone(), t);
                    Ok(())
                }
                BenchSink::Gpu(ctx, builder) => {
                    if builder.is_none() {
                        let config = crate::loader::config_from_gguf(header)?;
                        *builder = Some(
                            GpuModelBuilder::new(Rc::clone(ctx), config, Some(BENCH_CONTEXT))
                                .map_err(|e| LoadError::Other(e.to_string()))?,
                        );
                    }
                    match builder {
                        Some(b) => b.add(&t).map_err(|e| LoadError::Other(e.to_string())),
                        None => Ok(()),
                    }
                }
            })
            .map_err(load_error)
    }

    /// End of the file: build the model. Returns its backend name.
    pub fn finish(&mut self) -> Result<String, JsValue> {
        let (Some(stream), Some(sink)) = (self.stream.take(), self.sink.take()) else {
            return Err(js_error("invalid_options", "bench already finished loading"));
        };
        let header = stream.finish().map_err(load_error)?;
        let model = match sink {
            BenchSink::Cpu(tensors) => {
                let config = crate::loader::config_from_gguf(&header).map_err(load_error)?;
                let loaded = LoadedModel { config, tensors, gguf: Some(header) };
                BenchModel::Cpu(CpuModel::new(loaded, Some(BENCH_CONTEXT)).map_err(load_error)?)
            }
            BenchSink::Gpu(_, Some(builder)) => BenchModel::Gpu(Box::new(builder.finish().map_err(gpu_error)?)),
            BenchSink::Gpu(_, None) => return Err(js_error("model_format", "the model has no tensors")),
        };
        let name = model.name();
        *self.model.borrow_mut() = Some(model);
        Ok(name)
    }

    /// Prefill `prompt` (token ids) then decode `steps` tokens greedily from a fresh cache
    /// position 0. Resolves to `{prefill_ms, decode_ms, ids}`. The model's borrow is held
    /// across the awaits on purpose: it is the lock that makes an overlapping call `busy`.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn run(&self, prompt: Vec<u32>, steps: u32) -> Promise {
        let model = Rc::clone(&self.model);
        future_to_promise(async move {
            let mut slot = model.try_borrow_mut().map_err(|_| busy())?;
            let m = slot.as_mut().ok_or_else(|| js_error("invalid_options", "call finish() first"))?;
            let backend = |e: crate::backend::BackendError| js_error("backend", e);
            m.truncate(0).map_err(backend)?;
            let t0 = js_sys::Date::now();
            let mut logits = m.forward(&prompt, 1).await.map_err(backend)?;
            let t1 = js_sys::Date::now();
            let mut ids = Vec::with_capacity(steps as usize);
            for _ in 0..steps {
                let next = crate::ops::argmax(&logits) as u32;
                ids.push(next);
                logits = m.forward(&[next], 1).await.map_err(backend)?;
            }
            let t2 = js_sys::Date::now();
            #[derive(serde::Serialize)]
            struct Timing {
                prefill_ms: f64,
                decode_ms: f64,
                ids: Vec<u32>,
            }
            to_js(&Timing { prefill_ms: t1 - t0, decode_ms: t2 - t1, ids })
        })
    }
}

fn busy() -> JsValue {
    js_error("busy", "a forward pass is already running")
}
