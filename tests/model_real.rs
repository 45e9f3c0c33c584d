//! The CPU backend on real quantized models vs llama.cpp (llama-cpp-python 0.3.36).
//!
//! llama.cpp multiplies 8-bit-quantized activations; we multiply f32 activations by the
//! dequantized weights. Both are correct, so they can only disagree where the model itself
//! hesitates. The bar (issue 2): teacher-forced along llama.cpp's greedy continuation, our
//! top-1 equals llama.cpp's wherever llama.cpp's top-1/top-2 margin exceeds
//! [`DECISIVE_MARGIN`], and the first step's top-20 logits are within [`TOP20_TOLERANCE`] —
//! or, on prompts where transformers itself is further than that from llama.cpp, within
//! transformers' own distance plus [`TRANSFORMERS_TOLERANCE`].
//!
//! Against transformers on the same dequantized weights (f32 both) the only difference is
//! summation order, so the bar there is tight: [`TRANSFORMERS_TOLERANCE`] on every top-20
//! logit of every teacher-forced position.

use pensive::backend::{block_on, Backend};
use pensive::loader;
use pensive::model::CpuModel;

mod common;

const DECISIVE_MARGIN: f32 = 0.5;
const TOP20_TOLERANCE: f32 = 0.6;
const TRANSFORMERS_TOLERANCE: f32 = 1e-3;

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

fn check_model(file: &str, fixture: &str) {
    let Some(path) = common::model_path(file) else { return };
    let read = |f: String| std::fs::read(common::root_path(&f)).unwrap();
    let reference: Reference = serde_json::from_slice(&read(format!("{fixture}.llamacpp.json"))).unwrap();
    let hf: HfReference = serde_json::from_slice(&read(format!("{fixture}.transformers.json"))).unwrap();
    let mut model = CpuModel::new(loader::load_gguf_file(&path).unwrap(), None).unwrap();
    let vocab = model.config().vocab_size;
    let (mut decisive, mut agreed, mut worst_top20, mut worst_hf) = (0, 0, 0f32, 0f32);
    for (case, hf_case) in reference.cases.iter().zip(&hf.cases) {
        assert_eq!(case.name, hf_case.name);
        model.truncate(0).unwrap();
        let mut ids = case.prompt_ids.clone();
        ids.extend(case.greedy[..case.greedy.len() - 1].iter().map(|s| s.id));
        // Logits at the last prompt position and at every continuation position but the last.
        let logits = block_on(model.forward(&ids, case.greedy.len())).unwrap();
        let first = &logits[..vocab];
        let top20 = max_diff(first, &case.top20);
        worst_top20 = worst_top20.max(top20);
        // transformers' own distance from llama.cpp on this prompt.
        let hf_vs_llama = case
            .top20
            .iter()
            .filter_map(|&(id, l)| hf_case.positions[0].top20.iter().find(|t| t.0 == id).map(|t| (t.1 - l).abs()))
            .fold(0f32, f32::max);
        let bar = TOP20_TOLERANCE.max(hf_vs_llama + TRANSFORMERS_TOLERANCE);
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
    }
    eprintln!(
        "{file}: {agreed}/{decisive} decisive positions agree with llama.cpp; first-step top-20 max |diff| \
         {worst_top20:.3} vs llama.cpp, {worst_hf:.2e} vs transformers"
    );
    assert!(worst_hf <= TRANSFORMERS_TOLERANCE, "{file}: logits differ from transformers by {worst_hf}");
    assert!(decisive > 0);
}

#[test]
fn smollm2_agrees_with_llama_cpp() {
    check_model("smollm2-135m-instruct-q4_1.gguf", "tests/fixtures/real/smollm2");
}

#[test]
fn qwen05_agrees_with_llama_cpp() {
    check_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "tests/fixtures/real/qwen05");
}
