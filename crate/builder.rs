//! Building a backend from model bytes, one path for the CLI and the browser.
//!
//! The backend is decided once, when the model's shapes are known and before the first
//! weight is uploaded: WebGPU when an adapter exists *and* can hold the model
//! ([`check_fits`]: a kernel for every dtype, bindings and buffers under the adapter's limits,
//! a memory estimate under its budget), else — under `auto` — the CPU, with the reason kept
//! for `engine.info().fallback_reason`; under `gpu` a refusal is a `backend_unavailable`
//! error naming it. A GGUF goes through the streaming [`EngineLoader`] (the CLI pushes a
//! file's chunks, the browser a `fetch` body's); a model already in memory (safetensors)
//! through [`AnyBackend::new`], which makes the same decision.

use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, SampleRequest, SampledToken};
use crate::config::ModelConfig;
use crate::engine::{Engine, EngineError};
use crate::gguf::GgufHeader;
use crate::gpu::{check_fits, GpuContext, GpuError, GpuModel, GpuModelBuilder, GpuOptions};
use crate::loader::{config_from_gguf, GgufStream, LoadError, LoadProgress, LoadedModel, RawTensor};
use crate::model::CpuModel;
use crate::quant::CpuKernels;
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
    /// `fallback_reason`: why `auto` did not choose WebGPU (`None` when the CPU was asked for).
    Cpu { model: CpuModel, fallback_reason: Option<String> },
    Gpu(GpuModel),
}

/// The largest buffer the GPU backend would like to bind whole: the largest tensor, or a
/// layer's tensors together (its q/k/v and its gate/up are joined into one matrix each when
/// they fit one binding; a layer's sum covers both). Asking for more than a fused matrix
/// needs costs nothing: the request is capped at the adapter's limit.
fn largest_binding_wanted(model: &LoadedModel) -> u64 {
    let mut per_layer: HashMap<&str, u64> = HashMap::new();
    let mut largest = 0u64;
    for (name, tensor) in &model.tensors {
        let bytes = tensor.data.len() as u64;
        largest = largest.max(bytes);
        // "blk.3.ffn_up.weight" / "model.layers.3.mlp.up_proj.weight": the part up to the
        // layer number.
        let parts: Vec<&str> = name.split('.').collect();
        if let Some(i) = parts.iter().position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            let end = parts[..=i].iter().map(|p| p.len() + 1).sum::<usize>() - 1;
            *per_layer.entry(&name[..end]).or_default() += bytes;
        }
    }
    per_layer.into_values().fold(largest, u64::max)
}

impl AnyBackend {
    /// Build the backend `options.backend` asks for from loaded tensors, asking for an
    /// adapter first unless the CPU was asked for.
    pub async fn new(model: LoadedModel, options: &LoadOptions) -> Result<Self, EngineError> {
        let gpu_options = GpuOptions { largest_tensor_bytes: largest_binding_wanted(&model), ..GpuOptions::default() };
        let gpu = Gpu::request(options.backend, &gpu_options).await?;
        let mut backend = Self::build(model, options, gpu)?;
        backend.settle().await?;
        Ok(backend)
    }

    /// The device's verdict on a GPU load (see [`GpuModel::settle`]): an allocation it
    /// refused is a `backend` error here, a lost device `device_lost`.
    pub async fn settle(&mut self) -> Result<(), EngineError> {
        match self {
            Self::Gpu(m) => m.settle().await.map_err(upload_error),
            Self::Cpu { .. } => Ok(()),
        }
    }

    /// [`AnyBackend::new`] on a device the caller brings (or the reason it has none), e.g. a
    /// test's device with lowered limits.
    pub fn with_gpu(model: LoadedModel, options: &LoadOptions, gpu: Result<Rc<GpuContext>, GpuError>) -> Result<Self, EngineError> {
        let gpu = Gpu::given(options.backend, gpu)?;
        Self::build(model, options, gpu)
    }

    fn build(model: LoadedModel, options: &LoadOptions, gpu: Gpu) -> Result<Self, EngineError> {
        let tensors = model.tensors.values().map(|t| (t.name.as_str(), t.ty, t.dims.as_slice()));
        match gpu.decide(options.backend, &model.config, tensors, options.max_context)? {
            Target::Cpu { fallback_reason } => {
                Ok(Self::Cpu { model: cpu_model(model, options)?, fallback_reason })
            }
            Target::Gpu(ctx) => Ok(Self::Gpu(GpuModel::from_loaded(ctx, model, options.max_context).map_err(upload_error)?)),
        }
    }

    /// Why `auto` runs on the CPU rather than WebGPU, if it does.
    pub fn fallback_reason(&self) -> Option<&str> {
        match self {
            Self::Cpu { fallback_reason, .. } => fallback_reason.as_deref(),
            Self::Gpu(_) => None,
        }
    }
}

impl Backend for AnyBackend {
    fn config(&self) -> &ModelConfig {
        match self {
            Self::Cpu { model: b, .. } => b.config(),
            Self::Gpu(b) => b.config(),
        }
    }
    fn name(&self) -> String {
        match self {
            Self::Cpu { model: b, .. } => b.name(),
            Self::Gpu(b) => b.name(),
        }
    }
    fn kv_len(&self) -> usize {
        match self {
            Self::Cpu { model: b, .. } => b.kv_len(),
            Self::Gpu(b) => b.kv_len(),
        }
    }
    fn max_context(&self) -> usize {
        match self {
            Self::Cpu { model: b, .. } => b.max_context(),
            Self::Gpu(b) => b.max_context(),
        }
    }
    fn truncate(&mut self, len: usize) -> Result<(), BackendError> {
        match self {
            Self::Cpu { model: b, .. } => b.truncate(len),
            Self::Gpu(b) => b.truncate(len),
        }
    }
    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        match self {
            Self::Cpu { model: b, .. } => b.forward(tokens, n_logits).await,
            Self::Gpu(b) => b.forward(tokens, n_logits).await,
        }
    }
    async fn forward_greedy(&mut self, tokens: &[u32], banned: &[u32]) -> Result<u32, BackendError> {
        match self {
            Self::Cpu { model: b, .. } => b.forward_greedy(tokens, banned).await,
            Self::Gpu(b) => b.forward_greedy(tokens, banned).await,
        }
    }
    async fn forward_sample(&mut self, tokens: &[u32], request: &SampleRequest<'_>) -> Option<Result<SampledToken, BackendError>> {
        match self {
            Self::Cpu { model: b, .. } => b.forward_sample(tokens, request).await,
            Self::Gpu(b) => b.forward_sample(tokens, request).await,
        }
    }
}

/// What the load knows about WebGPU before it has seen the model's shapes.
enum Gpu {
    /// `cpu` was asked for: nothing to decide.
    NotWanted,
    /// A device, still to be asked whether it can hold the model.
    Device(Rc<GpuContext>),
    /// No device, under `auto`: the reason, for `fallback_reason`.
    Unavailable(String),
}

/// Where the tensors go.
enum Target {
    Cpu { fallback_reason: Option<String> },
    Gpu(Rc<GpuContext>),
}

impl Gpu {
    /// Ask for an adapter and a device unless `choice` is `cpu`. Without one, `gpu` fails here,
    /// before any model byte is read; `auto` carries on towards the CPU.
    async fn request(choice: BackendChoice, options: &GpuOptions) -> Result<Self, EngineError> {
        if choice == BackendChoice::Cpu {
            return Ok(Self::NotWanted);
        }
        Self::given(choice, GpuContext::new(options).await.map(Rc::new))
    }

    fn given(choice: BackendChoice, gpu: Result<Rc<GpuContext>, GpuError>) -> Result<Self, EngineError> {
        match (choice, gpu) {
            (BackendChoice::Cpu, _) => Ok(Self::NotWanted),
            (_, Ok(ctx)) => Ok(Self::Device(ctx)),
            (BackendChoice::Auto, Err(e)) => Ok(Self::Unavailable(e.to_string())),
            (BackendChoice::Gpu, Err(e)) => Err(unavailable(e.to_string())),
        }
    }

    /// The one decision: the device if it can hold a model of these shapes, else the CPU
    /// (`auto`) or a `backend_unavailable` error naming the reason (`gpu`).
    fn decide<'a>(
        self,
        choice: BackendChoice,
        config: &ModelConfig,
        tensors: impl IntoIterator<Item = (&'a str, crate::quant::GgmlType, &'a [u64])>,
        max_context: Option<usize>,
    ) -> Result<Target, EngineError> {
        let why = match self {
            Self::NotWanted => return Ok(Target::Cpu { fallback_reason: None }),
            Self::Unavailable(why) => why,
            Self::Device(ctx) => match check_fits(&ctx, config, tensors, max_context) {
                Ok(_) => return Ok(Target::Gpu(ctx)),
                Err(e) => e.to_string(),
            },
        };
        if choice == BackendChoice::Gpu {
            return Err(unavailable(why));
        }
        log_fallback(&why);
        Ok(Target::Cpu { fallback_reason: Some(why) })
    }
}

fn unavailable(why: String) -> EngineError {
    EngineError::BackendUnavailable("gpu".into(), why)
}

/// A failure while uploading a model that passed [`check_fits`]: a tensor that does not
/// match the decoder is the file's fault; an allocation or a pipeline the device refused is a
/// `backend` error, its loss `device_lost`; anything else says the device cannot run it.
fn upload_error(e: GpuError) -> EngineError {
    match e {
        GpuError::Tensor { .. } | GpuError::Model(_) => LoadError::Other(e.to_string()).into(),
        GpuError::DeviceLost(why) => BackendError::DeviceLost(why).into(),
        GpuError::OutOfMemory(_) | GpuError::Fault(_) | GpuError::Readback(_) => BackendError::Gpu(e.to_string()).into(),
        e => unavailable(e.to_string()),
    }
}

/// `auto` settled on the CPU: say so where the user will see it at once (the engine's info
/// keeps the reason too).
fn log_fallback(why: &str) {
    #[cfg(target_arch = "wasm32")]
    web_sys::console::warn_1(&format!("pensive: not using WebGPU ({why}); using the CPU backend").into());
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("pensive: not using WebGPU ({why}); using the CPU backend");
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

/// What the CPU backend may use of wasm32's 4 GiB address space: the rest holds the module,
/// the tokenizer, the stream's buffers and the activations.
pub const WASM_CPU_MEMORY: u64 = 3 << 30;

/// Refuse a model whose weights (the tensors the decoder reads, as stored) and KV cache
/// (f32 keys and values for `max_context` positions) exceed `budget` bytes: a `too_large`
/// error. All in u64, so a header's sizes cannot wrap on wasm32.
pub fn check_cpu_memory(header: &GgufHeader, config: &ModelConfig, max_context: Option<usize>, budget: u64) -> Result<(), EngineError> {
    let wanted: std::collections::HashSet<String> =
        crate::loader::decoder_tensors(config)?.into_iter().map(|(name, _)| name).collect();
    let weights = header.tensors.iter().filter(|t| wanted.contains(&t.name)).fold(0u64, |acc, t| acc.saturating_add(t.n_bytes));
    let context = max_context.unwrap_or(crate::model::DEFAULT_MAX_CONTEXT).min(config.context_length).max(1) as u64;
    let kv_cache = [2, config.n_layers as u64, context, config.n_kv_heads as u64, config.head_dim as u64, 4]
        .into_iter()
        .fold(1u64, u64::saturating_mul);
    let need = weights.saturating_add(kv_cache);
    if need > budget {
        return Err(EngineError::TooLarge { need, limit: budget });
    }
    Ok(())
}

/// The CPU decoder as `options` ask for it.
fn cpu_model(model: LoadedModel, options: &LoadOptions) -> Result<CpuModel, LoadError> {
    let mut cpu = CpuModel::new(model, options.max_context)?;
    cpu.set_kernels(options.cpu_kernels);
    Ok(cpu)
}

/// Options for loading a model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadOptions {
    pub backend: BackendChoice,
    /// KV cache capacity in tokens (default: min(model context, 8192)).
    pub max_context: Option<usize>,
    /// The CPU backend's kernels: `"int8"` (default: 8-bit activations and integer dot
    /// products, as llama.cpp, for prefill and decode) or `"f32"` (the reference).
    /// Ignored on WebGPU.
    pub cpu_kernels: CpuKernels,
}

/// Incremental loading of a GGUF from a byte stream: a file's chunks natively, a `fetch`
/// body in the browser — the one way an engine is built from a GGUF.
///
/// The adapter is asked for at [`EngineLoader::new`] (so `gpu` without one fails before any
/// download); the backend is decided by the `push` that completes the header, before any
/// tensor is handled. On WebGPU each tensor is uploaded the moment its last byte arrives and then
/// dropped, so a 1.1 GB model passes through host memory one tensor at a time instead of
/// being held whole next to its GPU copy — what lets a 1.5B model load within wasm32's
/// memory. On the CPU the tensors are kept for the decoder, which reads them in place.
pub struct EngineLoader {
    options: LoadOptions,
    stream: GgufStream,
    sink: Sink,
}

enum Sink {
    /// No tensor has completed yet.
    Undecided(Gpu),
    /// For the CPU decoder, at `finish`.
    Keep { tensors: HashMap<String, RawTensor>, fallback_reason: Option<String> },
    /// Uploaded as they complete.
    Upload(GpuModelBuilder),
    /// An error was reported; the load cannot go on.
    Failed,
}

impl EngineLoader {
    /// Ask for the adapter `options.backend` may use; the backend itself is decided from the
    /// header. `options` (backend, `max_context`) are the ones `finish` builds with.
    pub async fn new(options: &LoadOptions) -> Result<Self, EngineError> {
        // The largest tensor is unknown before the header: ask for the adapter's maximum
        // binding size (larger tensors are split across bindings anyway).
        let gpu_options = GpuOptions { largest_tensor_bytes: u64::MAX, ..GpuOptions::default() };
        let gpu = Gpu::request(options.backend, &gpu_options).await?;
        Ok(Self { options: options.clone(), stream: GgufStream::new(), sink: Sink::Undecided(gpu) })
    }

    /// [`EngineLoader::new`] on a device the caller brings (or the reason it has none).
    pub fn with_gpu(options: &LoadOptions, gpu: Result<Rc<GpuContext>, GpuError>) -> Result<Self, EngineError> {
        let gpu = Gpu::given(options.backend, gpu)?;
        Ok(Self { options: options.clone(), stream: GgufStream::new(), sink: Sink::Undecided(gpu) })
    }

    /// The size of the whole file, when known (file size, HTTP Content-Length): tensors that
    /// lie past it are refused with the header, before any tensor buffer is allocated.
    pub fn set_source_len(&mut self, len: u64) {
        self.stream.set_source_len(len);
    }

    /// The next bytes of the file.
    pub fn push(&mut self, chunk: &[u8]) -> Result<LoadProgress, EngineError> {
        if let Sink::Failed = self.sink {
            return Err(LoadError::Other("the model load already failed".into()).into());
        }
        let Self { options, stream, sink } = self;
        let result = stream.push(chunk, &mut |header, t| -> Result<(), EngineError> {
            // A chunk that completes the header may complete tensors too.
            Self::settle(sink, header, options)?;
            match sink {
                Sink::Keep { tensors, .. } => {
                    tensors.insert(t.name.clone(), t);
                    Ok(())
                }
                // `t` is dropped after this: only the GPU copy remains.
                Sink::Upload(builder) => builder.add(&t).map_err(upload_error),
                Sink::Undecided(_) | Sink::Failed => Err(LoadError::Other("the model load already failed".into()).into()),
            }
        });
        // Otherwise as soon as the header is complete: a refusal comes with the header, not
        // after the first tensor (the embedding, often hundreds of MB) has downloaded.
        let result = result.and_then(|()| match self.stream.header() {
            Some(header) => Self::settle(&mut self.sink, header, &self.options),
            None => Ok(()),
        });
        if result.is_err() {
            self.sink = Sink::Failed;
        }
        result.map(|()| self.stream.progress())
    }

    /// Decide where tensors go, once: from the header, before any tensor is handled.
    fn settle(sink: &mut Sink, header: &GgufHeader, options: &LoadOptions) -> Result<(), EngineError> {
        if let Sink::Undecided(gpu) = sink {
            let gpu = std::mem::replace(gpu, Gpu::NotWanted);
            *sink = Self::decide(gpu, header, options)?;
        }
        Ok(())
    }

    fn decide(gpu: Gpu, header: &GgufHeader, options: &LoadOptions) -> Result<Sink, EngineError> {
        let config = config_from_gguf(header)?;
        let tensors = header.tensors.iter().map(|t| (t.name.as_str(), t.ty, t.dims.as_slice()));
        Ok(match gpu.decide(options.backend, &config, tensors, options.max_context)? {
            Target::Cpu { fallback_reason } => {
                // In a page the CPU decoder holds every weight in wasm32's 4 GiB: a model that
                // cannot fit is refused now, with the header, instead of aborting the module
                // halfway through the download.
                #[cfg(target_arch = "wasm32")]
                check_cpu_memory(header, &config, options.max_context, WASM_CPU_MEMORY)?;
                Sink::Keep { tensors: HashMap::new(), fallback_reason }
            }
            Target::Gpu(ctx) => Sink::Upload(GpuModelBuilder::new(ctx, config, options.max_context).map_err(upload_error)?),
        })
    }

    /// Read a whole GGUF file through [`EngineLoader::push`], in chunks (never the whole file
    /// at once on top of the tensors).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn push_file(&mut self, path: &std::path::Path) -> Result<LoadProgress, EngineError> {
        use std::io::Read;
        let io = |e: std::io::Error| EngineError::Load(LoadError::Io(format!("{}: {e}", path.display())));
        let mut file = std::fs::File::open(path).map_err(io)?;
        self.set_source_len(file.metadata().map_err(io)?.len());
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Ok(self.stream.progress());
            }
            self.push(&buf[..n])?;
        }
    }

    /// End of the file: the backend and the header (tokenizer, chat template), for callers
    /// that want the backend alone (benchmarks). Async for the device's verdict on the
    /// uploads ([`AnyBackend::settle`]), which in the browser only a promise brings.
    pub async fn finish_backend(self) -> Result<(AnyBackend, GgufHeader), EngineError> {
        let header = self.stream.finish()?;
        let backend = match self.sink {
            Sink::Keep { tensors, fallback_reason } => {
                let model = LoadedModel { config: config_from_gguf(&header)?, tensors, gguf: None };
                AnyBackend::Cpu { model: cpu_model(model, &self.options)?, fallback_reason }
            }
            Sink::Upload(builder) => AnyBackend::Gpu(builder.finish().map_err(upload_error)?),
            Sink::Undecided(_) => {
                config_from_gguf(&header)?;
                return Err(LoadError::Other("the model file has no tensors".into()).into());
            }
            Sink::Failed => return Err(LoadError::Other("the model load already failed".into()).into()),
        };
        let mut backend = backend;
        backend.settle().await?;
        Ok((backend, header))
    }

    /// End of the file: the engine, with `tokenizer` or else the GGUF's own.
    pub async fn finish(self, tokenizer: Option<Tokenizer>) -> Result<Engine, EngineError> {
        let (backend, header) = self.finish_backend().await?;
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => Tokenizer::from_gguf(&header.metadata)?,
        };
        check_vocab(&tokenizer, backend.config())?;
        Engine::with_backend(backend, tokenizer)
    }
}
