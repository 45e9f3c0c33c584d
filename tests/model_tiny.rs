//! The CPU decoder on tiny random Llama and Qwen2 models vs transformers' logits.
//!
//! Fixtures: `tests/fixtures/gen/tiny_models.py` wrote each model as safetensors (HF layout,
//! NeoX rope) and as GGUF (llama.cpp's layout: Llama's Q/K rows permuted, interleaved rope),
//! and transformers' f32 logits for a few id sequences. Both files must reproduce them.

use pensive::backend::{block_on, Backend};
use pensive::loader;
use pensive::model::CpuModel;

mod common;

/// f32 path vs transformers' f32: only summation order differs.
const F32_TOLERANCE: f32 = 1e-4;

#[derive(serde::Deserialize)]
struct Case {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

fn reference(arch: &str, file: &str) -> Reference {
    let path = common::root_path(&format!("tests/fixtures/tiny/{arch}/{file}"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Run every case through a fresh model, once all at once (prefill) and once token by token
/// (decode through the KV cache); both must match the reference.
fn check(make: &dyn Fn() -> CpuModel, reference: &Reference, what: &str) {
    for (ci, case) in reference.cases.iter().enumerate() {
        let mut model = make();
        let vocab = model.config().vocab_size;
        let prefill = block_on(model.forward(&case.ids, case.ids.len())).unwrap();
        let mut model = make();
        let mut decode = Vec::new();
        for &id in &case.ids {
            decode.extend(block_on(model.forward(&[id], 1)).unwrap());
        }
        assert_eq!(model.kv_len(), case.ids.len());
        for (got, mode) in [(&prefill, "prefill"), (&decode, "decode")] {
            let mut max_diff = 0f32;
            for (pos, want) in case.logits.iter().enumerate() {
                for (a, b) in got[pos * vocab..(pos + 1) * vocab].iter().zip(want) {
                    max_diff = max_diff.max((a - b).abs());
                }
            }
            eprintln!("{what} case {ci} ({mode}, {} tokens): max |diff| {max_diff:.2e}", case.ids.len());
            assert!(max_diff <= F32_TOLERANCE, "{what} case {ci} {mode}: max |diff| {max_diff}");
        }
    }
}

fn safetensors(arch: &str) -> CpuModel {
    let dir = common::root_path(&format!("tests/fixtures/tiny/{arch}"));
    CpuModel::new(loader::load_safetensors_dir(&dir).unwrap(), None).unwrap()
}

fn gguf(arch: &str, file: &str) -> CpuModel {
    let path = common::root_path(&format!("tests/fixtures/tiny/{arch}/{file}"));
    CpuModel::new(loader::load_gguf_file(&path).unwrap(), None).unwrap()
}

#[test]
fn llama_safetensors_matches_transformers() {
    check(&|| safetensors("llama"), &reference("llama", "logits.json"), "llama safetensors");
}

#[test]
fn llama_gguf_matches_transformers() {
    check(&|| gguf("llama", "model.gguf"), &reference("llama", "logits.json"), "llama gguf");
}

#[test]
fn qwen2_safetensors_matches_transformers() {
    check(&|| safetensors("qwen2"), &reference("qwen2", "logits.json"), "qwen2 safetensors");
}

#[test]
fn qwen2_gguf_matches_transformers() {
    check(&|| gguf("qwen2", "model.gguf"), &reference("qwen2", "logits.json"), "qwen2 gguf");
}

#[test]
fn q8_0_gguf_matches_transformers_on_dequantized_weights() {
    for arch in ["llama", "qwen2"] {
        check(&|| gguf(arch, "model.q8_0.gguf"), &reference(arch, "logits.q8_0.json"), &format!("{arch} q8_0"));
    }
}

#[test]
fn truncate_then_replay_gives_the_same_logits() {
    let ids = &reference("qwen2", "logits.json").cases.last().unwrap().ids.clone();
    let mut model = safetensors("qwen2");
    let full = block_on(model.forward(ids, 1)).unwrap();
    let keep = ids.len() / 2;
    model.truncate(keep).unwrap();
    assert_eq!(model.kv_len(), keep);
    let again = block_on(model.forward(&ids[keep..], 1)).unwrap();
    let diff = full.iter().zip(&again).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff <= F32_TOLERANCE, "replay after truncate differs by {diff}");
    assert!(model.truncate(ids.len() + 1).is_err());
}

#[test]
fn bad_tokens_and_full_context_are_typed_errors() {
    use pensive::backend::BackendError;
    let mut model = CpuModel::new(
        loader::load_safetensors_dir(&common::root_path("tests/fixtures/tiny/llama")).unwrap(),
        Some(8),
    )
    .unwrap();
    let vocab = model.config().vocab_size as u32;
    assert!(matches!(block_on(model.forward(&[vocab], 1)), Err(BackendError::BadToken { .. })));
    assert!(matches!(block_on(model.forward(&[1; 9], 1)), Err(BackendError::ContextFull { needed: 9, context: 8 })));
    assert_eq!(model.kv_len(), 0, "a refused forward must not touch the cache");
    block_on(model.forward(&[1; 8], 1)).unwrap();
}
