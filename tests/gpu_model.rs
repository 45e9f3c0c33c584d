//! GpuModel vs the CPU decoder (crate::model::CpuModel) built from the same tensors:
//! tiny synthetic Llama-, Qwen2- and Qwen3-shaped models (every code path: chunked prefill,
//! decode, truncate, bias, q/k norm, head_dim ≠ dim / heads, tied/untied heads, greedy on the
//! GPU with banned ids), the tiny random Qwen3 of tests/fixtures/tiny against transformers'
//! logits, then the real models.

mod common;
mod gpu_common;

use std::collections::HashMap;
use std::rc::Rc;

use gpu_common::{context, Rng};
use pensive::quant::CpuKernels;
use pensive::backend::Backend;
use pensive::bytes::AlignedBytes;
use pensive::config::{Arch, ModelConfig, RopeLayout};
use pensive::gpu::{GpuContext, GpuModel, GpuOptions};
use pensive::loader::{LoadedModel, RawTensor};
use pensive::model::{CpuModel, KvPrecision};
use pensive::ops;
use pensive::quant::GgmlType;
use pollster::block_on;

/// Logits of a tiny model: f32 path vs CPU (both f32 math, different summation order).
const TINY_LOGIT_TOL_F32: f32 = 1e-3;
/// f16 activations/KV: ~3 decimal digits per stored value, compounded over 2 layers.
const TINY_LOGIT_TOL_F16: f32 = 3e-2;

/// Llama: tied, interleaved rope. Qwen2: q/k/v bias, untied. Qwen3: q/k norm, head_dim 32
/// (q_dim 128 ≠ dim 64), untied (the Qwen3 fixture below covers tied).
fn tiny_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        n_layers: 2,
        dim: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: if arch == Arch::Qwen3 { 32 } else { 16 },
        ffn_dim: 96,
        vocab_size: 301,
        rope_theta: 10_000.0,
        rope_layout: if arch == Arch::Llama { RopeLayout::Interleaved } else { RopeLayout::NeoX },
        rms_eps: 1e-5,
        qkv_bias: arch == Arch::Qwen2,
        qk_norm: arch == Arch::Qwen3,
        tied_embeddings: arch == Arch::Llama,
        context_length: 128,
    }
}

/// Random tensors for `c`: Q8_0 attention/FFN matrices (a real quantized path), F32 others.
fn tiny_model(c: &ModelConfig, seed: u64) -> LoadedModel {
    let mut rng = Rng::new(seed);
    let mut tensors = HashMap::new();
    let mut add = |name: String, ty: GgmlType, dims: Vec<u64>, rng: &mut Rng| {
        let n: u64 = dims.iter().product();
        let data = match ty {
            GgmlType::F32 => {
                let v: Vec<f32> = (0..n).map(|_| rng.f32() * 0.5).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
            GgmlType::Q8_0 => {
                let mut b = Vec::new();
                for _ in 0..n / 32 {
                    b.extend_from_slice(&half::f16::from_f32(0.004 + rng.f32().abs() * 0.004).to_le_bytes());
                    b.extend((0..32).map(|_| rng.next_u64() as u8));
                }
                b
            }
            _ => unreachable!(),
        };
        let name_key = name.clone();
        tensors.insert(name_key, RawTensor { name, ty, dims, data: AlignedBytes::copy_from(&data) });
    };
    let (dim, q, kv, ffn, vocab) = (c.dim as u64, c.q_dim() as u64, c.kv_dim() as u64, c.ffn_dim as u64, c.vocab_size as u64);
    add("token_embd.weight".into(), GgmlType::F32, vec![dim, vocab], &mut rng);
    add("output_norm.weight".into(), GgmlType::F32, vec![dim], &mut rng);
    if !c.tied_embeddings {
        add("output.weight".into(), GgmlType::Q8_0, vec![dim, vocab], &mut rng);
    }
    for l in 0..c.n_layers {
        let n = |p: &str| format!("blk.{l}.{p}");
        add(n("attn_norm.weight"), GgmlType::F32, vec![dim], &mut rng);
        add(n("ffn_norm.weight"), GgmlType::F32, vec![dim], &mut rng);
        add(n("attn_q.weight"), GgmlType::Q8_0, vec![dim, q], &mut rng);
        add(n("attn_k.weight"), GgmlType::Q8_0, vec![dim, kv], &mut rng);
        add(n("attn_v.weight"), GgmlType::F32, vec![dim, kv], &mut rng);
        add(n("attn_output.weight"), GgmlType::Q8_0, vec![q, dim], &mut rng);
        add(n("ffn_gate.weight"), GgmlType::Q8_0, vec![dim, ffn], &mut rng);
        // Layer 1's up differs in type from its gate (as v from q and k): the fused matmuls'
        // segments each keep their own type.
        add(n("ffn_up.weight"), if l == 1 { GgmlType::F32 } else { GgmlType::Q8_0 }, vec![dim, ffn], &mut rng);
        add(n("ffn_down.weight"), GgmlType::Q8_0, vec![ffn, dim], &mut rng);
        if c.qk_norm {
            add(n("attn_q_norm.weight"), GgmlType::F32, vec![c.head_dim as u64], &mut rng);
            add(n("attn_k_norm.weight"), GgmlType::F32, vec![c.head_dim as u64], &mut rng);
        }
        if c.qkv_bias {
            add(n("attn_q.bias"), GgmlType::F32, vec![q], &mut rng);
            add(n("attn_k.bias"), GgmlType::F32, vec![kv], &mut rng);
            add(n("attn_v.bias"), GgmlType::F32, vec![kv], &mut rng);
        }
    }
    LoadedModel { config: c.clone(), tensors, gguf: None }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check_tiny(ctx: Rc<GpuContext>, arch: Arch) {
    let c = tiny_config(arch);
    let tol = match ctx.act() {
        pensive::gpu::Dtype::F32 => TINY_LOGIT_TOL_F32,
        pensive::gpu::Dtype::F16 => TINY_LOGIT_TOL_F16,
    };
    let what = format!("{arch:?} {:?} lanes {} binding {}", ctx.act(), ctx.matmul_lanes(), ctx.max_binding());
    // The CPU keeps its KV cache in the GPU context's activation type, so that only
    // summation order and the activations' own rounding differ.
    let kv = match ctx.act() {
        pensive::gpu::Dtype::F32 => KvPrecision::F32,
        pensive::gpu::Dtype::F16 => KvPrecision::F16,
    };
    let mut cpu = CpuModel::with_kv_precision(tiny_model(&c, 11), None, kv).expect("cpu model");
    // The f32 reference kernels: the GPU's activations are f16/f32, never 8-bit.
    cpu.set_kernels(CpuKernels::F32);
    let mut gpu = GpuModel::from_loaded(ctx.clone(), tiny_model(&c, 11), None).expect("gpu model");
    let mut rng = Rng::new(12);
    // 45 tokens: one full prefill chunk of 32 and a ragged one; logits of the last 40.
    let prompt: Vec<u32> = (0..45).map(|_| rng.below(c.vocab_size) as u32).collect();
    let want = block_on(cpu.forward(&prompt, 40)).expect("cpu forward");
    let got = block_on(gpu.forward(&prompt, 40)).expect("gpu forward");
    let d = max_diff(&got, &want);
    eprintln!("{what}: prefill logits max |diff| {d:.3e}");
    assert!(d < tol, "{what}: prefill logits differ by {d}");
    assert_eq!(gpu.kv_len(), 45);

    // Decode steps: logits, then the GPU greedy path against the CPU argmax.
    for step in 0..4 {
        let tok = [rng.below(c.vocab_size) as u32];
        let want = block_on(cpu.forward(&tok, 1)).expect("cpu");
        let got = block_on(gpu.forward(&tok, 1)).expect("gpu");
        let d = max_diff(&got, &want);
        assert!(d < tol, "{what}: decode step {step} logits differ by {d}");
    }
    // Roll back 3 positions on both and continue: truncate must forget them.
    cpu.truncate(46).expect("truncate");
    gpu.truncate(46).expect("truncate");
    let tok = [7u32];
    let want = block_on(cpu.forward(&tok, 1)).expect("cpu");
    let top = ops::argmax(&want) as u32;
    cpu.truncate(46).expect("truncate");
    let greedy = block_on(gpu.forward_greedy(&tok, &[])).expect("greedy");
    assert_eq!(greedy, top, "{what}: greedy after truncate");
    // Banning the winner picks the runner-up, as the CPU default method does.
    gpu.truncate(46).expect("truncate");
    let banned = [top, 0];
    let want_banned = block_on(cpu.forward_greedy(&tok, &banned)).expect("cpu greedy");
    let got_banned = block_on(gpu.forward_greedy(&tok, &banned)).expect("gpu greedy");
    assert_eq!(got_banned, want_banned, "{what}: greedy with banned ids");
    assert_ne!(got_banned, top);
    assert_eq!(gpu.kv_len(), 47);

    // The CPU's cache imported into a fresh GPU model (bench --context-fill cpu): the next
    // step sees the same 47 positions.
    let mut fresh = GpuModel::from_loaded(ctx.clone(), tiny_model(&c, 11), None).expect("gpu model");
    let kv = cpu.kv_rows();
    assert!(fresh.import_kv(&kv[1..], 47).is_err(), "{what}: a layer missing");
    assert!(fresh.import_kv(&kv, 46).is_err(), "{what}: rows of another length");
    fresh.import_kv(&kv, 47).expect("import_kv");
    assert_eq!(fresh.kv_len(), 47);
    let tok = [rng.below(c.vocab_size) as u32];
    let want = block_on(cpu.forward(&tok, 1)).expect("cpu");
    let got = block_on(fresh.forward(&tok, 1)).expect("gpu");
    let d = max_diff(&got, &want);
    assert!(d < tol, "{what}: step after import_kv: logits differ by {d}");
}

#[test]
fn tiny_models_match_the_cpu_decoder() {
    // Fused layers on both activation paths and both matmul shapes.
    for ctx in gpu_common::contexts_both_matmul_shapes() {
        let ctx = Rc::new(ctx);
        for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
            check_tiny(ctx.clone(), arch);
        }
    }
    // Separate projections (the path of matrices too large to fuse), f16.
    if let Some(ctx) = gpu_common::context_with(GpuOptions { separate_projections: true, ..Default::default() }) {
        let ctx = Rc::new(ctx);
        for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
            check_tiny(ctx.clone(), arch);
        }
    }
}

#[test]
fn decode_step_is_one_submit() {
    let Some(ctx) = context(true, None) else { return };
    let ctx = Rc::new(ctx);
    // Per layer: qkv (norm folded in, rope and the cache store in its epilogue), attention
    // split and merge, o-proj (+ residual), gate·up (norm folded in), down (+ residual);
    // Qwen3's per-head q/k norm and rope take one more.
    for (arch, per_layer) in [(Arch::Qwen2, 6), (Arch::Qwen3, 7)] {
        let c = tiny_config(arch);
        let mut gpu = GpuModel::from_loaded(ctx.clone(), tiny_model(&c, 3), None).expect("gpu model");
        block_on(gpu.forward_greedy(&[1, 2, 3], &[])).expect("prefill");
        let (d0, s0) = (ctx.dispatches.get(), ctx.submits.get());
        block_on(gpu.forward_greedy(&[4], &[5])).expect("decode");
        let (dispatches, submits) = (ctx.dispatches.get() - d0, ctx.submits.get() - s0);
        eprintln!("{arch:?} greedy decode step: {dispatches} dispatches, {submits} submits");
        assert_eq!(submits, 1);
        // embed + per layer + final norm + LM head + ban + 2 argmax
        assert_eq!(dispatches, 1 + per_layer * c.n_layers as u64 + 2 + 3);
    }
}

#[test]
fn too_long_sequences_and_bad_tokens_are_errors() {
    let Some(ctx) = context(false, None) else { return };
    let c = tiny_config(Arch::Llama);
    let mut gpu = GpuModel::from_loaded(Rc::new(ctx), tiny_model(&c, 4), Some(16)).expect("gpu model");
    assert!(block_on(gpu.forward(&[c.vocab_size as u32], 1)).is_err());
    assert!(block_on(gpu.forward(&[1; 17], 1)).is_err());
    assert_eq!(gpu.kv_len(), 0);
}

/// The committed tiny Qwen3 (tests/fixtures/gen/tiny_qwen3.py) vs transformers' f32 logits.
/// The f32 path differs from transformers only in summation order; on the f16 path every
/// stored activation and cached key/value carries ~3 decimal digits.
const QWEN3_LOGIT_TOL_F32: f32 = 1e-4;
const QWEN3_LOGIT_TOL_F16: f32 = 3e-2;
/// The Q8_0 file vs transformers on the original f32 weights: the quantization error (the two
/// reference files differ by up to 0.38), plus the f16 path's own.
const QWEN3_Q8_0_VS_F32_TOL: f32 = 0.5;

#[derive(serde::Deserialize)]
struct LogitCase {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

#[derive(serde::Deserialize)]
struct LogitReference {
    cases: Vec<LogitCase>,
}

#[test]
fn tiny_qwen3_matches_transformers() {
    let dir = common::root_path("tests/fixtures/tiny/qwen3");
    let reference = |file: &str| -> LogitReference {
        serde_json::from_slice(&std::fs::read(dir.join(file)).expect("read logits")).expect("logits json")
    };
    let (f32_ref, q8_ref) = (reference("logits.json"), reference("logits.q8_0.json"));
    for f16 in [false, true] {
        let Some(ctx) = context(f16, None) else { continue };
        let ctx = Rc::new(ctx);
        let tol = if f16 { QWEN3_LOGIT_TOL_F16 } else { QWEN3_LOGIT_TOL_F32 };
        let safetensors = || pensive::loader::load_safetensors_dir(&dir).expect("load");
        let f32_gguf = || pensive::loader::load_gguf_file(&dir.join("model.gguf")).expect("load");
        let q8_0_gguf = || pensive::loader::load_gguf_file(&dir.join("model.q8_0.gguf")).expect("load");
        let sources: [(&str, &LogitReference, &dyn Fn() -> LoadedModel, f32); 4] = [
            ("safetensors", &f32_ref, &safetensors, tol),
            ("model.gguf", &f32_ref, &f32_gguf, tol),
            ("model.q8_0.gguf", &q8_ref, &q8_0_gguf, tol),
            ("model.q8_0.gguf vs the f32 weights", &f32_ref, &q8_0_gguf, QWEN3_Q8_0_VS_F32_TOL),
        ];
        for (what, reference, load, tol) in sources {
            let mut worst = 0f32;
            for case in &reference.cases {
                // Prefill of the whole case, then the same ids again one by one (decode).
                let mut gpu = GpuModel::from_loaded(ctx.clone(), load(), None).expect("gpu model");
                let prefill = block_on(gpu.forward(&case.ids, case.ids.len())).expect("prefill");
                gpu.truncate(0).expect("truncate");
                let mut decode = Vec::new();
                for &id in &case.ids {
                    decode.extend(block_on(gpu.forward(&[id], 1)).expect("decode"));
                }
                let want: Vec<f32> = case.logits.concat();
                worst = worst.max(max_diff(&prefill, &want)).max(max_diff(&decode, &want));
            }
            eprintln!("tiny qwen3 {what} on {:?}: max |diff| vs transformers {worst:.2e}", ctx.act());
            assert!(worst <= tol, "tiny qwen3 {what} {:?}: {worst} > {tol}", ctx.act());
        }
    }
}

/// Real models: GPU logits vs CPU logits on one prompt, then greedy continuations.
fn check_real(file: &str, n_greedy: usize) {
    let Some(path) = common::model_path(file) else { return };
    let Some(ctx) = context(true, None) else { return };
    let ctx = Rc::new(ctx);
    eprintln!("{file}: {}", ctx.describe());
    let t = std::time::Instant::now();
    let mut cpu = CpuModel::new(pensive::loader::load_gguf_file(&path).expect("load"), Some(512)).expect("cpu");
    // The f32 reference kernels: the GPU's activations are f16/f32, never 8-bit.
    cpu.set_kernels(CpuKernels::F32);
    let mut gpu = GpuModel::from_loaded(ctx.clone(), pensive::loader::load_gguf_file(&path).expect("load"), Some(512)).expect("gpu");
    eprintln!("{file}: loaded both in {:.1}s", t.elapsed().as_secs_f32());
    // Token ids of plain text are tokenizer-specific; a fixed id sequence is enough to
    // compare two backends on the same inputs.
    let prompt: Vec<u32> = (0..40u32).map(|i| 200 + i * 37).collect();
    let want = block_on(cpu.forward(&prompt, 1)).expect("cpu");
    let t = std::time::Instant::now();
    let got = block_on(gpu.forward(&prompt, 1)).expect("gpu");
    eprintln!("{file}: gpu prefill of {} tokens {:.2}s", prompt.len(), t.elapsed().as_secs_f32());
    let d = max_diff(&got, &want);
    eprintln!("{file}: first-step logits max |diff| {d:.3e}, top-1 cpu {} gpu {}", ops::argmax(&want), ops::argmax(&got));
    assert_eq!(ops::argmax(&got), ops::argmax(&want), "{file}: top-1");
    let (mut c_tok, mut g_tok) = (ops::argmax(&want) as u32, ops::argmax(&got) as u32);
    let mut cpu_seq = vec![];
    let mut gpu_seq = vec![];
    let t = std::time::Instant::now();
    for _ in 0..n_greedy {
        cpu_seq.push(c_tok);
        gpu_seq.push(g_tok);
        c_tok = block_on(cpu.forward_greedy(&[c_tok], &[])).expect("cpu");
        g_tok = block_on(gpu.forward_greedy(&[g_tok], &[])).expect("gpu");
    }
    eprintln!("{file}: greedy cpu {cpu_seq:?}\n{file}: greedy gpu {gpu_seq:?} ({:.2}s incl. cpu)", t.elapsed().as_secs_f32());
    assert_eq!(gpu_seq, cpu_seq, "{file}: greedy continuation");
}

#[test]
fn smollm2_gpu_matches_cpu() {
    check_real("smollm2-135m-instruct-q4_1.gguf", 16);
}

#[test]
fn qwen25_05b_gpu_matches_cpu() {
    check_real("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 8);
}

/// The CLI's path end to end: `pensive generate` streams the GGUF through the engine loader
/// (the browser's loader) in chunks, uploading each tensor as it completes; on the GPU its
/// greedy tokens equal the CPU's (f32 kernels), and `auto` takes the GPU where the adapter can hold the model.
#[test]
fn smollm2_cli_on_the_gpu_gives_the_cpu_greedy_tokens() {
    let Some(path) = common::model_path("smollm2-135m-instruct-q4_1.gguf") else { return };
    let Some(ctx) = context(false, None) else { return };
    drop(ctx); // only proves there is an adapter
    let run = |backend: &str| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pensive"))
            .args(["generate", "--backend", backend, "--max-context", "256", "--json"])
            // The CPU's reference kernels (f32 activations, as the GPU's); the default int8
            // kernels round activations to 8 bits and may pick another token where two are close.
            .args(["--cpu-kernels", "f32"])
            .args(["--prompt", "The capital of France is", "--max-tokens", "16", "--temperature", "0"])
            .arg("--model")
            .arg(&path)
            .output()
            .expect("run pensive");
        assert!(out.status.success(), "pensive --backend {backend}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("--json output")
    };
    let (cpu, gpu, auto) = (run("cpu"), run("gpu"), run("auto"));
    for (name, r) in [("cpu", &cpu), ("gpu", &gpu), ("auto", &auto)] {
        eprintln!("{name}: {} {:?} tokens {}", r["backend"], r["fallback_reason"], r["tokens"]);
        assert!(r["fallback_reason"].is_null(), "{name}: {}", r["fallback_reason"]);
    }
    assert!(cpu["backend"].as_str().is_some_and(|b| b.starts_with("cpu")));
    assert!(gpu["backend"].as_str().is_some_and(|b| b.starts_with("webgpu")));
    assert!(auto["backend"].as_str().is_some_and(|b| b.starts_with("webgpu")));
    assert_eq!(cpu["tokens"].as_array().map(Vec::len), Some(16));
    assert_eq!(gpu["tokens"], cpu["tokens"]);
    assert_eq!(auto["tokens"], cpu["tokens"]);
}

/// `pensive bench --context N --context-fill cpu` on the tiny Qwen3 (GGUF and safetensors):
/// the context comes from the CPU backend, the measured steps run on the GPU, and the JSON
/// says so.
#[test]
fn bench_fills_the_context_on_the_cpu() {
    let Some(ctx) = context(false, None) else { return };
    drop(ctx); // only proves there is an adapter
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/qwen3");
    for model in [dir.join("model.gguf"), dir.clone()] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pensive"))
            .args(["bench", "--backend", "gpu", "--context", "200", "--context-fill", "cpu"])
            .args(["--prompt-tokens", "5", "--gen-tokens", "3", "--temperature", "0.6", "--top-p", "0.9"])
            .arg("--model")
            .arg(&model)
            .output()
            .expect("run pensive");
        let what = model.display();
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("bench JSON");
        assert!(r["backend"].as_str().is_some_and(|b| b.starts_with("webgpu")), "{what}: {}", r["backend"]);
        assert_eq!(r["context"], 200, "{what}");
        assert_eq!(r["context_fill"], "cpu", "{what}");
        assert!(r["decode_tok_s"].as_f64().is_some_and(|v| v > 0.0), "{what}: {}", r["decode_tok_s"]);
        let kv = r["kv_bytes_per_token"].as_f64().expect("kv bytes");
        assert!(kv > 0.0, "{what}: {kv}");
    }
}
