//! Building a backend from model bytes: which backend (`auto` picks WebGPU when an adapter
//! can hold the model, else the CPU) and the one streaming loader that the CLI and the
//! browser both feed.

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError};
use crate::config::ModelConfig;
use crate::engine::{Engine, EngineError};
use crate::gpu::model::{GpuModel, GpuModelBuilder};
use crate::gpu::{GpuContext, GpuOptions};
use crate::loader::{GgufCollector, GgufStream, LoadError, LoadProgress, LoadedModel};
use crate::model::CpuModel;
use crate::tokenizer::Tokenizer;

/// Which compute backend to run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// WebGPU when an adapter can hold the model, else the CPU.
    #[default]
    Auto,
    #[serde(alias = "webgpu")]
    Gpu,
    Cpu,
}

/// The backends the engine can drive, as one type (async trait methods rule out `dyn`).
pub enum AnyBackend {
    Cpu(CpuModel),
    Gpu(GpuModel),
}

impl AnyBackend {
    /// Build the backend `options.backend` asks for from loaded tensors.
    pub async fn new(model: LoadedModel, options: &LoadOptions) -> Result<Self, EngineError> {
        if options.backend == BackendChoice::Cpu {
            return Ok(Self::Cpu(CpuModel::new(model, options.max_context)?));
        }
        let gpu_options = GpuOptions {
            largest_tensor_bytes: model.tensors.values().map(|t| t.data.len() as u64).max().unwrap_or(0),
            ..GpuOptions::default()
        };
        // The adapter is asked for before the tensors are handed over, so `auto` can still
        // fall back to the CPU with the model intact.
        let context = match GpuContext::new(&gpu_options).await {
            Ok(c) => c,
            Err(e) if options.backend == BackendChoice::Auto => {
                log_fallback(&e.to_string());
                return Ok(Self::Cpu(CpuModel::new(model, options.max_context)?));
            }
            Err(e) => return Err(EngineError::BackendUnavailable("gpu".into(), e.to_string())),
        };
        let model = GpuModel::from_loaded(Rc::new(context), model, options.max_context)
            .map_err(|e| EngineError::BackendUnavailable("gpu".into(), e.to_string()))?;
        Ok(Self::Gpu(model))
    }
}

impl Backend for AnyBackend {
    fn config(&self) -> &ModelConfig {
        match self {
            Self::Cpu(b) => b.config(),
            Self::Gpu(b) => b.config(),
        }
    }
    fn name(&self) -> String {
        match self {
            Self::Cpu(b) => b.name(),
            Self::Gpu(b) => b.name(),
        }
    }
    fn kv_len(&self) -> usize {
        match self {
            Self::Cpu(b) => b.kv_len(),
            Self::Gpu(b) => b.kv_len(),
        }
    }
    fn max_context(&self) -> usize {
        match self {
            Self::Cpu(b) => b.max_context(),
            Self::Gpu(b) => b.max_context(),
        }
    }
    fn truncate(&mut self, len: usize) -> Result<(), BackendError> {
        match self {
            Self::Cpu(b) => b.truncate(len),
            Self::Gpu(b) => b.truncate(len),
        }
    }
    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        match self {
            Self::Cpu(b) => b.forward(tokens, n_logits).await,
            Self::Gpu(b) => b.forward(tokens, n_logits).await,
        }
    }
    async fn forward_greedy(&mut self, tokens: &[u32], banned: &[u32]) -> Result<u32, BackendError> {
        match self {
            Self::Cpu(b) => b.forward_greedy(tokens, banned).await,
            Self::Gpu(b) => b.forward_greedy(tokens, banned).await,
        }
    }
}

/// `auto` found no usable WebGPU adapter: say so where the user will see it.
fn log_fallback(why: &str) {
    #[cfg(target_arch = "wasm32")]
    web_sys::console::warn_1(&format!("pensive: WebGPU unavailable ({why}); using the CPU backend").into());
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("pensive: WebGPU unavailable ({why}); using the CPU backend");
}

/// A tokenizer with ids the model has no embedding for would index out of its tables.
pub(crate) fn check_vocab(tokenizer: &Tokenizer, config: &ModelConfig) -> Result<(), EngineError> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(LoadError::Other(format!(
            "tokenizer has {} tokens but the model only {}",
            tokenizer.vocab_size(),
            config.vocab_size
        ))
        .into());
    }
    Ok(())
}

/// Options for loading a model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadOptions {
    pub backend: BackendChoice,
    /// KV cache capacity in tokens (default: min(model context, 8192)).
    pub max_context: Option<usize>,
}

/// Incremental loading from a byte stream (the browser's `fetch` body, a file natively).
///
/// Where each tensor goes as it completes depends on whether the backend is known before
/// the bytes arrive. [`EngineLoader::new`] keeps every tensor until `finish` (the CPU decoder
/// reads them in place, so that is no copy). [`EngineLoader::streaming`] asks for the GPU
/// first and then uploads each tensor the moment its last byte arrives, so a 1.1 GB model
/// passes through host memory one tensor at a time instead of being held whole next to
/// its GPU copy — what lets a 1.5B model load within wasm32's memory.
pub enum EngineLoader {
    /// Tensors by name, for `finish` to build the backend from. `cpu_only` when `streaming`
    /// already found no usable GPU under `auto`, so `finish` does not ask again.
    Keep { collector: GgufCollector, cpu_only: bool },
    /// Uploaded at once. The builder needs the model's configuration, so it is created
    /// when the first tensor arrives (the header is complete by then).
    Gpu { stream: GgufStream, ctx: Rc<GpuContext>, max_context: Option<usize>, builder: Option<GpuModelBuilder> },
}

impl Default for EngineLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineLoader {
    /// Keep the tensors; `finish`'s options choose the backend.
    pub fn new() -> Self {
        Self::Keep { collector: GgufCollector::default(), cpu_only: false }
    }

    /// Settle the backend before any byte arrives: on the GPU (or `auto` with a usable
    /// adapter), tensors are uploaded as they complete; otherwise kept for the CPU. The
    /// backend and `max_context` given here are the ones `finish` builds.
    pub async fn streaming(options: &LoadOptions) -> Result<Self, EngineError> {
        let cpu_only = || Self::Keep { collector: GgufCollector::default(), cpu_only: true };
        if options.backend == BackendChoice::Cpu {
            return Ok(cpu_only());
        }
        // The largest tensor is unknown before the header: ask for the adapter's maximum
        // binding size (larger tensors are split across bindings anyway).
        let gpu_options = GpuOptions { largest_tensor_bytes: u64::MAX, ..GpuOptions::default() };
        match GpuContext::new(&gpu_options).await {
            Ok(ctx) => Ok(Self::Gpu {
                stream: GgufStream::new(),
                ctx: Rc::new(ctx),
                max_context: options.max_context,
                builder: None,
            }),
            Err(e) if options.backend == BackendChoice::Auto => {
                log_fallback(&e.to_string());
                Ok(cpu_only())
            }
            Err(e) => Err(EngineError::BackendUnavailable("gpu".into(), e.to_string())),
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<LoadProgress, EngineError> {
        match self {
            Self::Keep { collector, .. } => Ok(collector.push(chunk)?),
            Self::Gpu { stream, ctx, max_context, builder } => {
                stream.push(chunk, &mut |header, t| {
                    let gpu_error = |e: crate::gpu::GpuError| LoadError::Other(e.to_string());
                    let b = match builder {
                        Some(b) => b,
                        None => builder.insert(
                            GpuModelBuilder::new(Rc::clone(ctx), crate::loader::config_from_gguf(header)?, *max_context)
                                .map_err(gpu_error)?,
                        ),
                    };
                    // `t` is dropped here: only the GPU copy remains.
                    b.add(&t).map_err(gpu_error)
                })?;
                Ok(stream.progress())
            }
        }
    }

    /// End of the file: build the engine. `options` choose the backend of a loader made by
    /// `new`; a `streaming` loader already settled it.
    pub async fn finish(self, options: &LoadOptions) -> Result<Engine, EngineError> {
        match self {
            Self::Keep { collector, cpu_only } => {
                let options = if cpu_only { LoadOptions { backend: BackendChoice::Cpu, ..options.clone() } } else { options.clone() };
                Engine::new(collector.finish()?, None, &options).await
            }
            Self::Gpu { stream, builder, .. } => {
                let header = stream.finish()?;
                let config = crate::loader::config_from_gguf(&header)?;
                let tokenizer = Tokenizer::from_gguf(&header.metadata)?;
                check_vocab(&tokenizer, &config)?;
                let builder = builder.ok_or_else(|| LoadError::Other("the model file has no tensors".into()))?;
                let model = builder.finish().map_err(|e| EngineError::BackendUnavailable("gpu".into(), e.to_string()))?;
                Engine::with_backend(AnyBackend::Gpu(model), tokenizer)
            }
        }
    }
}
