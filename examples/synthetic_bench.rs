//! Decode/prefill speed of a model *shape* with synthetic weights, on any backend.
//!
//! Speed does not depend on weight values, only on shapes and types, so this measures the
//! headline model (DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M: Qwen2 shape, Q4_K/Q6_K) on machines
//! where the real file cannot be copied. Weights are random blocks with small finite scales.
//!
//! cargo run --release --example synthetic_bench -- --shape r1-1.5b --backend gpu|cpu

#[path = "common/synthetic.rs"]
mod synthetic;

use pensive::backend::{block_on, Backend};
use pensive::engine::{AnyBackend, BackendChoice, LoadOptions};

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shape_name: String = arg(&args, "--shape", "r1-1.5b".to_string());
    let backend_name: String = arg(&args, "--backend", "gpu".to_string());
    let prompt_tokens: usize = arg(&args, "--prompt-tokens", 128);
    let gen_tokens: usize = arg(&args, "--gen-tokens", 64);
    let Some(model) = synthetic::model(&shape_name) else {
        eprintln!("unknown --shape {shape_name} ({})", synthetic::NAMES);
        std::process::exit(2);
    };
    let config = model.config.clone();
    // Bytes a decode step must read: every weight except the embedding (one row of it),
    // unless the embedding doubles as the LM head (tied).
    let weight_bytes: usize = model
        .tensors
        .values()
        .filter(|t| t.name != "token_embd.weight" || config.tied_embeddings)
        .map(|t| t.data.len())
        .sum();
    let backend = match backend_name.as_str() {
        "cpu" => BackendChoice::Cpu,
        _ => BackendChoice::Gpu,
    };
    let t0 = std::time::Instant::now();
    let mut b = match block_on(AnyBackend::new(model, &LoadOptions { backend, max_context: Some(2048), ..LoadOptions::default() })) {
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
