//! Decode/prefill speed of a model *shape* with synthetic weights, on any backend.
//!
//! Speed does not depend on weight values, only on shapes and types, so this measures the
//! headline model (DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M: Qwen2 shape, Q4_K/Q6_K) on machines
//! where the real file cannot be copied. Weights are random blocks with small finite scales.
//!
//! cargo run --release --example synthetic_bench -- --shape r1-1.5b --backend gpu

use std::collections::HashMap;

use pensive::backend::{block_on, Backend};
use pensive::bytes::AlignedBytes;
use pensive::config::{Arch, ModelConfig, RopeLayout};
use pensive::engine::{AnyBackend, BackendChoice, LoadOptions};
use pensive::loader::{LoadedModel, RawTensor};
use pensive::quant::GgmlType;

/// (config, type of attn q/k/o + ffn gate/up, type of attn_v + ffn_down, embedding, head)
fn shape(name: &str) -> Option<(ModelConfig, GgmlType, GgmlType, GgmlType, GgmlType)> {
    let qwen = |n_layers, dim, n_heads, n_kv_heads, ffn_dim| ModelConfig {
        arch: Arch::Qwen2,
        n_layers,
        dim,
        n_heads,
        n_kv_heads,
        head_dim: dim / n_heads,
        ffn_dim,
        vocab_size: 151_936,
        rope_theta: 10_000.0,
        rope_layout: RopeLayout::NeoX,
        rms_eps: 1e-6,
        qkv_bias: true,
        tied_embeddings: false,
        context_length: 4096,
    };
    Some(match name {
        // DeepSeek-R1-Distill-Qwen-1.5B / Qwen2.5-1.5B, Q4_K_M.
        "r1-1.5b" => (qwen(28, 1536, 12, 2, 8960), GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::Q6_K),
        // Qwen2.5-0.5B Q4_K_M (896 is not a multiple of 256: llama.cpp falls back to Q5_0/Q8_0).
        "qwen-0.5b" => (qwen(24, 896, 14, 2, 4864), GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q8_0),
        _ => return None,
    })
}

/// Byte offsets of the f16 scale fields inside one block (see the block structs in quant.rs).
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

fn tensor(name: String, ty: GgmlType, dims: Vec<u64>, seed: &mut u64) -> RawTensor {
    let n: u64 = dims.iter().product();
    let bytes = ty.bytes_for(n).expect("whole blocks") as usize;
    let mut data = AlignedBytes::zeroed(bytes);
    let buf = data.as_mut_slice();
    for b in buf.iter_mut() {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *b = (*seed >> 56) as u8;
    }
    let small = match ty {
        GgmlType::F32 => 0.01f32.to_le_bytes().to_vec(),
        _ => half::f16::from_f32(0.001).to_le_bytes().to_vec(),
    };
    if ty == GgmlType::F32 {
        for v in buf.chunks_exact_mut(4) {
            v.copy_from_slice(&small);
        }
    } else {
        for block in buf.chunks_exact_mut(ty.block_bytes()) {
            for &o in scale_offsets(ty) {
                block[o..o + 2].copy_from_slice(&small);
            }
        }
    }
    RawTensor { name, ty, dims, data }
}

fn synthetic(c: &ModelConfig, main: GgmlType, side: GgmlType, embd: GgmlType, head: GgmlType) -> LoadedModel {
    let mut seed = 42u64;
    let mut tensors = HashMap::new();
    let (dim, q, kv, ffn, vocab) = (c.dim as u64, c.q_dim() as u64, c.kv_dim() as u64, c.ffn_dim as u64, c.vocab_size as u64);
    let mut add = |name: String, ty, dims: Vec<u64>| {
        tensors.insert(name.clone(), tensor(name, ty, dims, &mut seed));
    };
    add("token_embd.weight".into(), embd, vec![dim, vocab]);
    add("output.weight".into(), head, vec![dim, vocab]);
    add("output_norm.weight".into(), GgmlType::F32, vec![dim]);
    for l in 0..c.n_layers {
        let n = |p: &str| format!("blk.{l}.{p}");
        add(n("attn_norm.weight"), GgmlType::F32, vec![dim]);
        add(n("ffn_norm.weight"), GgmlType::F32, vec![dim]);
        add(n("attn_q.weight"), main, vec![dim, q]);
        add(n("attn_k.weight"), main, vec![dim, kv]);
        add(n("attn_v.weight"), side, vec![dim, kv]);
        add(n("attn_q.bias"), GgmlType::F32, vec![q]);
        add(n("attn_k.bias"), GgmlType::F32, vec![kv]);
        add(n("attn_v.bias"), GgmlType::F32, vec![kv]);
        add(n("attn_output.weight"), main, vec![q, dim]);
        add(n("ffn_gate.weight"), main, vec![dim, ffn]);
        add(n("ffn_up.weight"), main, vec![dim, ffn]);
        add(n("ffn_down.weight"), side, vec![ffn, dim]);
    }
    LoadedModel { config: c.clone(), tensors, gguf: None }
}

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shape_name: String = arg(&args, "--shape", "r1-1.5b".to_string());
    let backend_name: String = arg(&args, "--backend", "gpu".to_string());
    let prompt_tokens: usize = arg(&args, "--prompt-tokens", 128);
    let gen_tokens: usize = arg(&args, "--gen-tokens", 64);
    let Some((config, main, side, embd, head)) = shape(&shape_name) else {
        eprintln!("unknown --shape {shape_name} (r1-1.5b, qwen-0.5b)");
        std::process::exit(2);
    };
    let model = synthetic(&config, main, side, embd, head);
    // Bytes a decode step must read: every weight except the embedding (one row of it).
    let weight_bytes: usize =
        model.tensors.values().filter(|t| t.name != "token_embd.weight").map(|t| t.data.len()).sum();
    let backend = match backend_name.as_str() {
        "cpu" => BackendChoice::Cpu,
        _ => BackendChoice::Gpu,
    };
    let t0 = std::time::Instant::now();
    let mut b = match block_on(AnyBackend::new(model, &LoadOptions { backend, max_context: Some(2048) })) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("synthetic_bench: {e}");
            std::process::exit(1);
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let vocab = config.vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    // Warm-up (pipeline compilation), then measure from an empty cache.
    let run = |b: &mut AnyBackend| -> (f64, f64, f64) {
        b.truncate(0).expect("truncate");
        let t = std::time::Instant::now();
        let mut next = block_on(b.forward_greedy(&prompt, &[])).expect("prefill");
        let prefill = t.elapsed().as_secs_f64();
        let mut steps = Vec::new();
        for _ in 0..gen_tokens {
            let t = std::time::Instant::now();
            next = block_on(b.forward_greedy(&[next], &[])).expect("decode");
            steps.push(t.elapsed().as_secs_f64());
        }
        let total: f64 = steps.iter().sum();
        steps.sort_by(|a, b| a.total_cmp(b));
        (prefill, total, steps[steps.len() / 2])
    };
    run(&mut b);
    let (prefill_s, decode_s, median_s) = run(&mut b);
    let decode_tok_s = gen_tokens as f64 / decode_s;
    println!(
        "{}",
        serde_json::json!({
            "shape": shape_name,
            "backend": b.name(),
            "load_s": load_s,
            "weight_bytes_per_token": weight_bytes,
            "prompt_tokens": prompt_tokens,
            "prefill_tok_s": prompt_tokens as f64 / prefill_s,
            "gen_tokens": gen_tokens,
            "decode_tok_s": decode_tok_s,
            "decode_step_ms_median": median_s * 1e3,
            "weight_gb_s_at_median_step": weight_bytes as f64 / median_s / 1e9,
        })
    );
}
