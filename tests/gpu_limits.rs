//! Adapter limits on a real model: tensors larger than the binding limit are split across
//! bindings and give the same results; a model that cannot fit at all is a clear error — and,
//! through the engine's loader, `auto` then runs it on the CPU (saying why) while `gpu`
//! refuses with a typed error, both before the first weight is uploaded.

mod common;
mod gpu_common;

use std::path::Path;
use std::rc::Rc;

use pensive::quant::CpuKernels;
use pensive::backend::{block_on, Backend};
use pensive::engine::{AnyBackend, BackendChoice, Engine, EngineError, EngineLoader, GenerateRequest, LoadOptions, Prompt};
use pensive::generate::Event;
use pensive::gpu::{check_fits, GpuContext, GpuError, GpuModel, GpuOptions};
use pensive::loader;
use pensive::model::{CpuModel, KvPrecision};
use pensive::quant::GgmlType;

const SMOLLM2: &str = "smollm2-135m-instruct-q4_1.gguf";
/// f32 activations on the GPU vs the CPU: summation order only, over 30 layers.
const F32_LOGIT_TOLERANCE: f32 = 1e-3;

#[test]
fn a_model_larger_than_the_binding_limit_runs_split() {
    let Some(path) = common::model_path(SMOLLM2) else { return };
    // 8 MiB bindings: SmolLM2's 49152×576 Q8_0 embedding/LM head (30 MB) needs four parts.
    // (A prefill chunk's logits, 32 × 49152 f32 = 6 MiB, must still fit in one binding.)
    let Some(ctx) = gpu_common::context(false, Some(8 << 20)) else { return };
    let mut gpu = GpuModel::from_loaded(Rc::new(ctx), loader::load_gguf_file(&path).unwrap(), Some(128)).unwrap();
    // An f32 KV cache like the f32 context's, so that summation order is the only difference.
    let mut cpu = CpuModel::with_kv_precision(loader::load_gguf_file(&path).unwrap(), Some(128), KvPrecision::F32).unwrap();
    // The f32 reference kernels: the GPU's activations are f16/f32, never 8-bit.
    cpu.set_kernels(CpuKernels::F32);
    let prompt = [504u32, 3575, 282, 4649, 314]; // "The capital of France is"
    let g = block_on(gpu.forward(&prompt, 1)).unwrap();
    let c = block_on(cpu.forward(&prompt, 1)).unwrap();
    let diff = g.iter().zip(&c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("split model vs CPU: max |diff| {diff:.2e} over {} logits", c.len());
    assert!(diff <= F32_LOGIT_TOLERANCE, "split model differs from the CPU by {diff}");
    assert_eq!(pensive::ops::argmax(&g), pensive::ops::argmax(&c));
    // And decoding through the split head agrees too.
    let next = pensive::ops::argmax(&c) as u32;
    assert_eq!(block_on(gpu.forward_greedy(&[next], &[])).unwrap(), {
        let c2 = block_on(cpu.forward(&[next], 1)).unwrap();
        pensive::ops::argmax(&c2) as u32
    });
}

#[test]
fn a_model_too_large_for_the_adapter_is_a_clear_error() {
    let Some(path) = common::model_path(SMOLLM2) else { return };
    // One 576-wide Q8_0 row is 612 bytes: a 512-byte binding limit cannot hold it.
    let Some(ctx) = gpu_common::context(false, Some(512)) else { return };
    match GpuModel::from_loaded(Rc::new(ctx), loader::load_gguf_file(&path).unwrap(), Some(128)) {
        Err(e @ GpuError::TooLarge { .. }) => {
            let message = e.to_string();
            eprintln!("{message}");
            assert!(message.contains("cannot hold this model"), "{message}");
        }
        Err(other) => panic!("expected TooLarge, got {other}"),
        Ok(_) => panic!("a model that cannot fit loaded"),
    }
}

// ---------------------------------------------------------------------------------------
// The backend decision (crate::builder) on devices with lowered limits.

const PROMPT: &str = "The capital of France is";
const GREEDY_TOKENS: usize = 8;
const MAX_CONTEXT: usize = 128;

/// CPU engines here are references for the GPU's tokens: the f32 kernels (the GPU's
/// activations are f16/f32, never 8-bit).
fn options(backend: BackendChoice) -> LoadOptions {
    LoadOptions { backend, max_context: Some(MAX_CONTEXT), cpu_kernels: CpuKernels::F32 }
}

/// A GGUF file streamed through the engine loader (the CLI's and the browser's path) on a
/// given device.
fn streamed(path: &Path, backend: BackendChoice, ctx: &Rc<GpuContext>) -> Result<Engine, EngineError> {
    let mut loader = EngineLoader::with_gpu(&options(backend), Ok(Rc::clone(ctx)))?;
    loader.push_file(path)?;
    block_on(loader.finish(None))
}

/// The plain CPU engine, through the other loading path (the whole file collected first).
fn cpu_engine(model: loader::LoadedModel) -> Engine {
    block_on(Engine::new(model, None, &options(BackendChoice::Cpu))).unwrap()
}

fn greedy_ids(engine: &mut Engine, prompt: &str) -> Vec<u32> {
    let request = GenerateRequest { temperature: Some(0.0), max_tokens: Some(GREEDY_TOKENS), ..Default::default() };
    engine.start(&Prompt::Text(prompt.into()), request).unwrap();
    let mut ids = Vec::new();
    while let Some(event) = block_on(engine.next_event()).unwrap() {
        if let Event::Token { id, .. } = event {
            ids.push(id);
        }
    }
    ids
}

/// `auto` on a device that cannot hold the model: a CPU engine whose info says why, with the
/// plain CPU engine's greedy tokens, and nothing uploaded to the device.
fn assert_falls_back(path: &Path, ctx: &Rc<GpuContext>, reason: &str) {
    let mut engine = streamed(path, BackendChoice::Auto, ctx).unwrap();
    let info = engine.info().unwrap();
    eprintln!("auto: {} ({:?})", info.backend, info.fallback_reason);
    assert!(info.backend.starts_with("cpu"), "{}", info.backend);
    let why = info.fallback_reason.unwrap_or_default();
    assert!(why.contains(reason), "fallback_reason {why:?} does not mention {reason:?}");
    assert_eq!(ctx.storage_allocated.get(), 0, "weights were uploaded before the decision");
    let want = greedy_ids(&mut cpu_engine(loader::load_gguf_file(path).unwrap()), PROMPT);
    assert_eq!(want.len(), GREEDY_TOKENS);
    assert_eq!(greedy_ids(&mut engine, PROMPT), want);
}

/// `gpu` on the same device: a typed `backend_unavailable` error naming the reason, raised by
/// the chunk that completes the header (not after the first tensor, let alone the whole
/// file), nothing uploaded.
fn assert_refused(path: &Path, ctx: &Rc<GpuContext>, reason: &str) {
    const CHUNK: usize = 1 << 20;
    let mut loader = EngineLoader::with_gpu(&options(BackendChoice::Gpu), Ok(Rc::clone(ctx))).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let header_end = pensive::gguf::GgufHeader::parse(&bytes).unwrap().data_offset as usize;
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
    let (at, err) = chunks
        .iter()
        .enumerate()
        .find_map(|(i, c)| loader.push(c).err().map(|e| (i, e)))
        .expect("the load was not refused");
    eprintln!("gpu: refused at chunk {at} of {} (the header ends in chunk {}): {err}", chunks.len(), header_end / CHUNK);
    // The stream re-parses a growing header at most every 1.5× its size: one chunk late at most.
    assert!(at <= header_end / CHUNK + 1, "refused only after the header");
    assert_eq!(err.code(), "backend_unavailable", "{err}");
    assert!(err.to_string().contains(reason), "{err}");
    assert_eq!(ctx.storage_allocated.get(), 0);
    // And the loader stays failed rather than half-built.
    assert!(loader.push(&bytes[..16]).is_err());
}

#[test]
fn auto_runs_on_the_cpu_when_a_row_exceeds_the_binding_limit_and_gpu_refuses() {
    let Some(path) = common::model_path(SMOLLM2) else { return };
    // One 576-wide Q8_0 row is 612 bytes: a 512-byte binding limit cannot hold it.
    let Some(ctx) = gpu_common::context(false, Some(512)) else { return };
    let ctx = Rc::new(ctx);
    assert_refused(&path, &ctx, "one row of");
    assert_falls_back(&path, &ctx, "one row of");
}

#[test]
fn the_memory_estimate_is_what_the_upload_allocates_and_a_smaller_budget_falls_back() {
    let Some(path) = common::model_path(SMOLLM2) else { return };
    let Some(ctx) = gpu_common::context(false, None) else { return };
    let ctx = Rc::new(ctx);
    let model = loader::load_gguf_file(&path).unwrap();
    let tensors = model.tensors.values().map(|t| (t.name.as_str(), t.ty, t.dims.as_slice()));
    let footprint = check_fits(&ctx, &model.config, tensors, Some(MAX_CONTEXT)).unwrap();
    eprintln!("SmolLM2 at {MAX_CONTEXT} tokens: {footprint:?}, total {}", footprint.total());
    let gpu = GpuModel::from_loaded(Rc::clone(&ctx), model, Some(MAX_CONTEXT)).unwrap();
    assert_eq!(ctx.storage_allocated.get(), footprint.total(), "estimate vs allocation");
    drop(gpu);

    // One byte under the estimate: `auto` takes the CPU.
    let budget = footprint.total() - 1;
    let options = GpuOptions { prefer_f16: false, memory_budget: Some(budget), ..Default::default() };
    let Some(small) = gpu_common::context_with(options) else { return };
    assert_falls_back(&path, &Rc::new(small), "KV cache for 128 tokens");
    // Exactly the estimate: WebGPU.
    let options = GpuOptions { prefer_f16: false, memory_budget: Some(footprint.total()), ..Default::default() };
    let Some(enough) = gpu_common::context_with(options) else { return };
    let engine = streamed(&path, BackendChoice::Auto, &Rc::new(enough)).unwrap();
    let info = engine.info().unwrap();
    assert!(info.backend.starts_with("webgpu") && info.fallback_reason.is_none(), "{info:?}");
}

/// The tiny Llama GGUF with `blk.0.ffn_up.weight` (96 × 64) rewritten as BF16, a type with
/// no WebGPU kernel. Its tensor info gets the new type; its data the BF16 values in the first
/// half of the old F32 range, the second half becoming a gap the loader skips (offsets are
/// explicit in GGUF).
fn tiny_gguf_with_a_bf16_matrix() -> Vec<u8> {
    let mut bytes = std::fs::read(common::root_path("tests/fixtures/tiny/llama/model.gguf")).unwrap();
    let header = pensive::gguf::GgufHeader::parse(&bytes).unwrap();
    let name = "blk.0.ffn_up.weight";
    let info = header.tensor(name).unwrap();
    assert_eq!(info.ty, GgmlType::F32);
    // Tensor info: name (u64 length + bytes), n_dims u32, dims u64 × n, type u32, offset u64.
    let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap() + name.len();
    let ty_at = at + 4 + 8 * info.dims.len();
    assert_eq!(bytes[ty_at..ty_at + 4], 0u32.to_le_bytes()); // F32
    bytes[ty_at..ty_at + 4].copy_from_slice(&30u32.to_le_bytes()); // BF16
    let start = (header.data_offset + info.offset) as usize;
    let n = info.n_elements() as usize;
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[start..start + 4 * n]);
    for (i, v) in values.iter().enumerate() {
        bytes[start + 2 * i..start + 2 * i + 2].copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
    }
    bytes
}

#[test]
fn a_weight_type_without_a_gpu_kernel_sends_auto_to_the_cpu() {
    let Some(ctx) = gpu_common::context(false, None) else { return };
    let ctx = Rc::new(ctx);
    let bytes = tiny_gguf_with_a_bf16_matrix();
    let dir = std::env::temp_dir().join(format!("pensive-bf16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny-bf16.gguf");
    std::fs::write(&path, &bytes).unwrap();

    let mut engine = streamed(&path, BackendChoice::Auto, &ctx).unwrap();
    let why = engine.info().unwrap().fallback_reason.unwrap_or_default();
    assert!(why.contains("BF16"), "{why}");
    let prompt = "hello world";
    let want = greedy_ids(&mut cpu_engine(loader::load_gguf_bytes(&bytes).unwrap()), prompt);
    assert!(!want.is_empty());
    assert_eq!(greedy_ids(&mut engine, prompt), want);
    assert!(matches!(streamed(&path, BackendChoice::Gpu, &ctx), Err(e) if e.code() == "backend_unavailable"));

    // A model already in memory (the safetensors path) takes the same decision.
    let backend = AnyBackend::with_gpu(loader::load_gguf_bytes(&bytes).unwrap(), &options(BackendChoice::Auto), Ok(Rc::clone(&ctx)));
    assert!(backend.unwrap().fallback_reason().is_some_and(|r| r.contains("BF16")));
    let backend = AnyBackend::with_gpu(loader::load_gguf_bytes(&bytes).unwrap(), &options(BackendChoice::Gpu), Ok(Rc::clone(&ctx)));
    assert!(matches!(backend, Err(e) if e.code() == "backend_unavailable"));
    assert_eq!(ctx.storage_allocated.get(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_adapter_sends_auto_to_the_cpu_and_fails_gpu_at_once() {
    let path = common::root_path("tests/fixtures/tiny/llama/model.gguf");
    let none = || Err(GpuError::NoAdapter("none in this test".into()));
    let mut loader = EngineLoader::with_gpu(&options(BackendChoice::Auto), none()).unwrap();
    loader.push_file(&path).unwrap();
    let info = block_on(loader.finish(None)).unwrap().info().unwrap();
    assert!(info.backend.starts_with("cpu"));
    assert!(info.fallback_reason.is_some_and(|r| r.contains("none in this test")));
    // `gpu` without an adapter fails before any byte is read.
    assert!(matches!(EngineLoader::with_gpu(&options(BackendChoice::Gpu), none()), Err(e) if e.code() == "backend_unavailable"));
    // `cpu` never asks, and no reason is given.
    let mut loader = EngineLoader::with_gpu(&options(BackendChoice::Cpu), none()).unwrap();
    loader.push_file(&path).unwrap();
    assert_eq!(block_on(loader.finish(None)).unwrap().info().unwrap().fallback_reason, None);
}
