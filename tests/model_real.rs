//! Both backends on real quantized models vs llama.cpp (llama-cpp-python 0.3.36) and
//! transformers, and the WebGPU backend vs the CPU backend on the same prompts.
//!
//! llama.cpp multiplies 8-bit-quantized activations, as our int8 CPU kernels do; our f32
//! kernels (the reference) multiply f32 activations by the dequantized weights. All
//! are correct, so they can only disagree where the model itself hesitates. The bar (issue 2): teacher-forced along llama.cpp's greedy continuation, our
//! top-1 equals llama.cpp's wherever llama.cpp's top-1/top-2 margin exceeds
//! [`DECISIVE_MARGIN`], and the first step's top-20 logits are within [`TOP20_TOLERANCE`] —
//! or, on prompts where transformers itself is further than that from llama.cpp, within
//! transformers' own distance plus [`TRANSFORMERS_TOLERANCE`].
//!
//! Against transformers on the same dequantized weights (f32 both, with the CPU backend's
//! f32 KV cache option) the only difference is summation order, so the bar there is tight
//! for the f32 kernels: [`TRANSFORMERS_TOLERANCE`] on every top-20 logit of every
//! teacher-forced position. The backend as it runs keeps keys and values in f16:
//! [`CPU_F16_KV_TOLERANCE`]; with the int8 kernels' 8-bit activations on top of it, up to
//! [`SMOLLM2_INT8_TOLERANCE`] / [`QWEN05_INT8_TOLERANCE`].

use pensive::backend::{block_on, Backend};
use pensive::engine::{AnyBackend, BackendChoice, LoadOptions};
use pensive::loader;
use pensive::model::{CpuModel, KvPrecision};
use pensive::quant::CpuKernels;

mod common;

const DECISIVE_MARGIN: f32 = 0.5;
const TOP20_TOLERANCE: f32 = 0.6;
const TRANSFORMERS_TOLERANCE: f32 = 1e-3;
/// The CPU backend with its f16 KV cache vs transformers' f32: about three significant digits
/// per cached key and value, compounded over 24-30 layers (seen: 1.5e-2 on Qwen2.5-0.5B).
const CPU_F16_KV_TOLERANCE: f32 = 0.05;
/// Cases the f32-cache reference runs against transformers: its numerics are the same on
/// every prompt, so a few cover them (the f16 backend runs them all against llama.cpp).
const F32_REFERENCE_CASES: usize = 2;
/// The int8 kernels vs transformers' f32 on every top-20 logit of every continuation
/// position: the activations' 8-bit rounding (<= 0.4% of each block's largest value; the
/// K-quants' blocks are 256 values, as llama.cpp's Q8_K), compounded over 30 / 24 layers.
/// About llama.cpp's own distance from transformers (0.86 on SmolLM2's chat_capital
/// first step): SmolLM2's logits are large. These bars are for the int8 kernels over the
/// f16 KV cache, as they run, prompt included (the prompt takes the int8 kernels too since
/// they batch bit-identically): measured 1.58 and 0.358 (every decisive position still
/// equal to llama.cpp's; first-step top-20 within 0.51 and 0.31 of llama.cpp's). With the
/// prompt in f32 and 32-value activation blocks for every format these were 1.36 and 0.21;
/// the prompt in f32 with today's decode kernels, 1.11 and 0.31.
const SMOLLM2_INT8_TOLERANCE: f32 = 1.75;
const QWEN05_INT8_TOLERANCE: f32 = 0.45;
/// The GPU backend with f16 activations and KV cache (lavapipe has shader-f16): about three
/// significant digits per stored value, compounded over 24-30 layers.
const GPU_F16_TOLERANCE: f32 = 0.15;

#[derive(serde::Deserialize)]
struct Step {
    id: u32,
    margin: f32,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    prompt_ids: Vec<u32>,
    greedy: Vec<Step>,
    top20: Vec<(u32, f32)>,
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct HfPosition {
    top20: Vec<(u32, f32)>,
}

#[derive(serde::Deserialize)]
struct HfCase {
    name: String,
    positions: Vec<HfPosition>,
}

#[derive(serde::Deserialize)]
struct HfReference {
    cases: Vec<HfCase>,
}

fn max_diff(row: &[f32], top: &[(u32, f32)]) -> f32 {
    top.iter().map(|&(id, l)| (row[id as usize] - l).abs()).fold(0f32, f32::max)
}

fn backend(file: &str, choice: BackendChoice, cpu_kernels: CpuKernels) -> Option<AnyBackend> {
    let path = common::model_path(file)?;
    let model = loader::load_gguf_file(&path).unwrap();
    let options = LoadOptions { backend: choice, max_context: Some(1024), cpu_kernels };
    match block_on(AnyBackend::new(model, &options)) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("PENSIVE_REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("SKIPPED: no GPU backend ({e})");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// How the teacher-forced continuation goes through the model.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    /// Prompt and continuation in one forward pass (prefill kernels throughout).
    Batch,
    /// The prompt in one pass, then one token per pass, as generation runs (the decode
    /// kernels for every continuation position).
    Decode,
}

/// Teacher-force every reference case (the first `max_cases`) through `model`; returns
/// each case's first-step logits.
fn check_model(model: &mut AnyBackend, file: &str, fixture: &str, max_cases: usize, hf_tolerance: f32, feed: Feed) -> Vec<Vec<f32>> {
    let read = |f: String| std::fs::read(common::root_path(&f)).unwrap();
    let reference: Reference = serde_json::from_slice(&read(format!("{fixture}.llamacpp.json"))).unwrap();
    let hf: HfReference = serde_json::from_slice(&read(format!("{fixture}.transformers.json"))).unwrap();
    let vocab = model.config().vocab_size;
    let mut firsts = Vec::new();
    let (mut decisive, mut agreed, mut worst_top20, mut worst_hf) = (0, 0, 0f32, 0f32);
    for (case, hf_case) in reference.cases.iter().zip(&hf.cases).take(max_cases) {
        assert_eq!(case.name, hf_case.name);
        model.truncate(0).unwrap();
        let mut ids = case.prompt_ids.clone();
        ids.extend(case.greedy[..case.greedy.len() - 1].iter().map(|s| s.id));
        // Logits at the last prompt position and at every continuation position but the last.
        let logits = match feed {
            Feed::Batch => block_on(model.forward(&ids, case.greedy.len())).unwrap(),
            Feed::Decode => {
                let mut logits = block_on(model.forward(&case.prompt_ids, 1)).unwrap();
                for &id in &ids[case.prompt_ids.len()..] {
                    logits.extend(block_on(model.forward(&[id], 1)).unwrap());
                }
                logits
            }
        };
        let first = &logits[..vocab];
        let top20 = max_diff(first, &case.top20);
        worst_top20 = worst_top20.max(top20);
        // transformers' own distance from llama.cpp on this prompt.
        let hf_vs_llama = case
            .top20
            .iter()
            .filter_map(|&(id, l)| hf_case.positions[0].top20.iter().find(|t| t.0 == id).map(|t| (t.1 - l).abs()))
            .fold(0f32, f32::max);
        let bar = TOP20_TOLERANCE.max(hf_vs_llama + hf_tolerance);
        assert!(top20 <= bar, "{file} {}: first-step top-20 differ from llama.cpp by {top20} > {bar}", case.name);
        let mut hf_diff = 0f32;
        for (j, pos) in hf_case.positions.iter().enumerate() {
            hf_diff = hf_diff.max(max_diff(&logits[j * vocab..(j + 1) * vocab], &pos.top20));
        }
        worst_hf = worst_hf.max(hf_diff);
        let mut flips = Vec::new();
        for (j, step) in case.greedy.iter().enumerate() {
            let row = &logits[j * vocab..(j + 1) * vocab];
            let argmax = pensive::ops::argmax(row) as u32;
            if step.margin > DECISIVE_MARGIN {
                decisive += 1;
                if argmax == step.id {
                    agreed += 1;
                } else {
                    flips.push((j, step.id, argmax, step.margin));
                }
            }
        }
        eprintln!(
            "{file} {}: vs llama.cpp top-20 max |diff| {top20:.3} (transformers: {hf_vs_llama:.3}); \
             vs transformers, all positions: {hf_diff:.2e}; decisive disagreements {flips:?}",
            case.name
        );
        assert!(flips.is_empty(), "{file} {}: top-1 differs from llama.cpp at decisive steps {flips:?}", case.name);
        firsts.push(first.to_vec());
    }
    eprintln!(
        "{file}: {agreed}/{decisive} decisive positions agree with llama.cpp; first-step top-20 max |diff| \
         {worst_top20:.3} vs llama.cpp, {worst_hf:.2e} vs transformers"
    );
    assert!(worst_hf <= hf_tolerance, "{file}: logits differ from transformers by {worst_hf}");
    assert!(decisive > 0);
    firsts
}

/// (file, fixture prefix, int8 kernels' tolerance vs transformers)
type RealModel = (&'static str, &'static str, f32);
const SMOLLM2: RealModel = ("smollm2-135m-instruct-q4_1.gguf", "tests/fixtures/real/smollm2", SMOLLM2_INT8_TOLERANCE);
const QWEN05: RealModel = ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "tests/fixtures/real/qwen05", QWEN05_INT8_TOLERANCE);

fn cpu_backend(file: &str, kernels: CpuKernels, kv: KvPrecision) -> Option<AnyBackend> {
    let path = common::model_path(file)?;
    let mut model = CpuModel::with_kv_precision(loader::load_gguf_file(&path).unwrap(), Some(1024), kv).unwrap();
    model.set_kernels(kernels);
    Some(AnyBackend::Cpu { model, fallback_reason: None })
}

/// The CPU backend as it runs (f16 KV cache) with `kernels` on every case; with the f32
/// kernels, also the same weights with an f32 cache at the tight bar against transformers.
fn cpu((file, fixture, int8_tolerance): RealModel, kernels: CpuKernels) {
    let Some(mut cpu) = cpu_backend(file, kernels, KvPrecision::F16) else { return };
    // Feed the int8 kernels as generation runs: the prompt in one pass, then the
    // continuation one token at a time.
    let (hf_tolerance, feed) = match kernels {
        CpuKernels::F32 => (CPU_F16_KV_TOLERANCE, Feed::Batch),
        CpuKernels::Int8 => (int8_tolerance, Feed::Decode),
    };
    check_model(&mut cpu, file, fixture, usize::MAX, hf_tolerance, feed);
    if kernels == CpuKernels::F32 {
        let Some(mut reference) = cpu_backend(file, CpuKernels::F32, KvPrecision::F32) else { return };
        eprintln!("{file}: f32 KV cache");
        check_model(&mut reference, file, fixture, F32_REFERENCE_CASES, TRANSFORMERS_TOLERANCE, Feed::Batch);
    }
}

/// The GPU backend against the same references (on a subset of the cases: software
/// rasterizers are slow), and against the CPU backend's f32 reference kernels (the GPU's
/// activations are f16 or f32, never 8-bit): first-step logits and greedy continuations.
fn gpu((file, fixture, _): RealModel, cases: usize, greedy_steps: usize) {
    let Some(mut gpu) = backend(file, BackendChoice::Gpu, CpuKernels::F32) else { return };
    let Some(mut cpu) = backend(file, BackendChoice::Cpu, CpuKernels::F32) else { return };
    eprintln!("{file}: {}", gpu.name());
    let gpu_firsts = check_model(&mut gpu, file, fixture, cases, GPU_F16_TOLERANCE, Feed::Batch);
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(common::root_path(&format!("{fixture}.llamacpp.json"))).unwrap()).unwrap();
    let mut worst = 0f32;
    for (case, gpu_first) in reference.cases.iter().zip(&gpu_firsts) {
        cpu.truncate(0).unwrap();
        gpu.truncate(0).unwrap();
        let cpu_first = block_on(cpu.forward(&case.prompt_ids, 1)).unwrap();
        let diff = max_diff(&cpu_first, &case.top20.iter().map(|&(id, _)| (id, gpu_first[id as usize])).collect::<Vec<_>>());
        worst = worst.max(diff);
        // Greedy continuations on both backends; report where they part and how close the
        // CPU's choice was there.
        let (mut c_next, mut g_next) = (pensive::ops::argmax(&cpu_first) as u32, pensive::ops::argmax(gpu_first) as u32);
        block_on(gpu.forward(&case.prompt_ids, 0)).unwrap();
        let mut margin = margin_of(&cpu_first);
        let mut diverged = None;
        for step in 0..greedy_steps {
            if c_next != g_next {
                diverged = Some((step, c_next, g_next, margin));
                break;
            }
            let c = block_on(cpu.forward(&[c_next], 1)).unwrap();
            margin = margin_of(&c);
            c_next = pensive::ops::argmax(&c) as u32;
            g_next = block_on(gpu.forward_greedy(&[g_next], &[])).unwrap();
        }
        eprintln!("{file} {}: GPU vs CPU first-step top-20 max |diff| {diff:.3}; greedy {greedy_steps} steps: {}",
            case.name,
            match diverged {
                None => "identical".to_string(),
                Some((s, c, g, m)) => format!("diverge at step {s} (cpu {c}, gpu {g}, cpu margin {m:.3})"),
            });
        if let Some((_, _, _, m)) = diverged {
            assert!(m < DECISIVE_MARGIN, "{file} {}: GPU and CPU diverge at a decisive step", case.name);
        }
    }
    eprintln!("{file}: GPU vs CPU first-step top-20 max |diff| {worst:.3}");
    assert!(worst <= GPU_F16_TOLERANCE);
}

fn margin_of(row: &[f32]) -> f32 {
    let mut v = row.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    v[0] - v[1]
}

#[test]
fn smollm2_cpu_agrees_with_llama_cpp_and_transformers() {
    cpu(SMOLLM2, CpuKernels::Int8);
}

#[test]
fn qwen05_cpu_agrees_with_llama_cpp_and_transformers() {
    cpu(QWEN05, CpuKernels::Int8);
}

#[test]
fn smollm2_cpu_f32_kernels_agree_with_llama_cpp_and_transformers() {
    cpu(SMOLLM2, CpuKernels::F32);
}

#[test]
fn qwen05_cpu_f32_kernels_agree_with_llama_cpp_and_transformers() {
    cpu(QWEN05, CpuKernels::F32);
}

#[test]
fn smollm2_gpu_agrees_with_references_and_cpu() {
    gpu(SMOLLM2, 2, 8);
}

#[test]
fn qwen05_gpu_agrees_with_references_and_cpu() {
    gpu(QWEN05, 2, 8);
}
