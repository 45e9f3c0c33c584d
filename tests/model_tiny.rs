//! The CPU decoder on tiny random Llama, Qwen2 and Qwen3 models vs transformers' logits.
//!
//! Fixtures: `tests/fixtures/gen/tiny_models.py` wrote each Llama/Qwen2 model as safetensors
//! (HF layout, NeoX rope) and as GGUF (llama.cpp's layout: Llama's Q/K rows permuted,
//! interleaved rope), and transformers' f32 logits for a few id sequences;
//! `tests/fixtures/gen/tiny_qwen3.py` did the same for Qwen3 (q/k norm, head_dim 32 ≠
//! 64 / 4 heads, tied embeddings) with GGUFs from llama.cpp's own convert_hf_to_gguf.py.
//! Every file must reproduce them.

use pensive::quant::CpuKernels;
use pensive::backend::{block_on, Backend};
use pensive::loader;
use pensive::model::{CpuModel, KvPrecision};

mod common;

/// f32 path (f32 KV cache) vs transformers' f32: only summation order differs.
const F32_TOLERANCE: f32 = 1e-4;
/// The default f16 KV cache vs transformers' f32 (tiny models: logits up to ~13, 2 layers):
/// each cached key and value rounded to 11 significant bits.
const F16_KV_TOLERANCE: f32 = 1e-2;
/// The Q8_0 file vs transformers on the *original* f32 weights: the quantization error itself
/// (each weight rounded to 1/254 of its block's largest magnitude) through 2 layers. The two
/// reference files differ by up to 0.38 on logits up to 12.8 (tiny Qwen3).
const Q8_0_VS_F32_TOLERANCE: f32 = 0.5;

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
    check_within(make, reference, what, F32_TOLERANCE);
}

fn check_within(make: &dyn Fn() -> CpuModel, reference: &Reference, what: &str, tolerance: f32) {
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
            assert!(max_diff <= tolerance, "{what} case {ci} {mode}: max |diff| {max_diff}");
        }
    }
}

fn safetensors(arch: &str) -> CpuModel {
    let dir = common::root_path(&format!("tests/fixtures/tiny/{arch}"));
    let mut model = CpuModel::with_kv_precision(loader::load_safetensors_dir(&dir).unwrap(), None, KvPrecision::F32).unwrap();
    model.set_kernels(CpuKernels::F32);
    model
}

fn gguf_with(arch: &str, file: &str, kv: KvPrecision) -> CpuModel {
    let path = common::root_path(&format!("tests/fixtures/tiny/{arch}/{file}"));
    let mut model = CpuModel::with_kv_precision(loader::load_gguf_file(&path).unwrap(), None, kv).unwrap();
    model.set_kernels(CpuKernels::F32);
    model
}

/// The f32 reference kernels: these tests hold the decoder to transformers' f32 arithmetic
/// on the same weights (the int8 kernels' own tolerance is tested in tests/quant.rs and on
/// the real models).
fn gguf(arch: &str, file: &str) -> CpuModel {
    gguf_with(arch, file, KvPrecision::F32)
}

/// The backend as it runs, with its f16 KV cache.
#[test]
fn f16_kv_cache_is_close_to_transformers() {
    for arch in ["llama", "qwen2", "qwen3"] {
        let what = format!("{arch} gguf, f16 KV cache");
        check_within(&|| gguf_with(arch, "model.gguf", KvPrecision::F16), &reference(arch, "logits.json"), &what, F16_KV_TOLERANCE);
    }
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
    for arch in ["llama", "qwen2", "qwen3"] {
        check(&|| gguf(arch, "model.q8_0.gguf"), &reference(arch, "logits.q8_0.json"), &format!("{arch} q8_0"));
    }
}

#[test]
fn qwen3_safetensors_matches_transformers() {
    check(&|| safetensors("qwen3"), &reference("qwen3", "logits.json"), "qwen3 safetensors");
}

#[test]
fn qwen3_gguf_matches_transformers() {
    check(&|| gguf("qwen3", "model.gguf"), &reference("qwen3", "logits.json"), "qwen3 gguf");
}

#[test]
fn qwen3_q8_0_gguf_is_close_to_the_f32_model() {
    let reference = reference("qwen3", "logits.json");
    check_within(&|| gguf("qwen3", "model.q8_0.gguf"), &reference, "qwen3 q8_0 vs f32", Q8_0_VS_F32_TOLERANCE);
}

/// Both sources describe the same model: config.json (transformers 5: rope_theta inside
/// rope_parameters) and the converter's `qwen3.*` keys (head_dim as attention.key_length).
#[test]
fn qwen3_config_is_the_same_from_both_sources() {
    use pensive::config::{Arch, RopeLayout};
    let dir = common::root_path("tests/fixtures/tiny/qwen3");
    let hf = loader::load_safetensors_dir(&dir).unwrap().config;
    let gguf = loader::load_gguf_file(&dir.join("model.gguf")).unwrap().config;
    assert_eq!(hf, gguf);
    assert_eq!((hf.arch, hf.rope_layout), (Arch::Qwen3, RopeLayout::NeoX));
    assert_eq!((hf.dim, hf.n_heads, hf.n_kv_heads, hf.head_dim), (64, 4, 2, 32));
    assert_eq!((hf.q_dim(), hf.kv_dim()), (128, 64));
    assert!(hf.qk_norm && hf.tied_embeddings && !hf.qkv_bias);
    assert_eq!(hf.rope_theta, 1e6);
}

/// A Qwen3 file without its q/k norms is refused, not run without them.
#[test]
fn qwen3_without_qk_norm_is_an_error() {
    let mut model = loader::load_gguf_file(&common::root_path("tests/fixtures/tiny/qwen3/model.gguf")).unwrap();
    model.tensors.remove("blk.1.attn_k_norm.weight");
    match CpuModel::new(model, None) {
        Err(loader::LoadError::MissingTensor(name)) => assert_eq!(name, "blk.1.attn_k_norm.weight"),
        Err(e) => panic!("expected MissingTensor, got {e}"),
        Ok(_) => panic!("a Qwen3 without k_norm loaded"),
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

/// A long prefill runs in passes of `PREFILL_CHUNK` tokens to bound its scratch memory.
/// Chunking must change no bit: every row of a batched pass is computed independently, and a
/// lone last token (which would take the mat-vec kernels) joins the pass before it.
#[test]
fn a_prefill_in_chunks_gives_the_same_bits_as_one_pass() {
    // The backend as it runs: f16 KV cache.
    let make = || gguf_with("qwen2", "model.gguf", KvPrecision::F16);
    let vocab = make().config().vocab_size;
    let ids: Vec<u32> = (0..41u32).map(|i| (i * 37 + 5) % vocab as u32).collect();
    let mut whole = make();
    whole.set_prefill_chunk(usize::MAX);
    let want = block_on(whole.forward(&ids, ids.len())).unwrap();
    let next_want = block_on(whole.forward(&[3], 1)).unwrap();
    for chunk in [2, 5, 8, 20, 40] {
        let mut model = make();
        model.set_prefill_chunk(chunk);
        let got = block_on(model.forward(&ids, ids.len())).unwrap();
        assert!(got == want, "chunk {chunk}: prefill logits differ");
        assert_eq!(model.kv_len(), ids.len());
        // The cache it left is the same too.
        assert!(block_on(model.forward(&[3], 1)).unwrap() == next_want, "chunk {chunk}: the next step differs");
        // Logits of the last few positions only.
        let mut model = make();
        model.set_prefill_chunk(chunk);
        let tail = block_on(model.forward(&ids, 3)).unwrap();
        assert!(tail[..] == want[(ids.len() - 3) * vocab..], "chunk {chunk}: last 3 rows differ");
    }
}
