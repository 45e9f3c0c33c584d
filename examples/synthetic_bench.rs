//! Decode/prefill speed of a model *shape* with synthetic weights, on any backend.
//!
//! Speed does not depend on weight values, only on shapes and types, so this measures the
//! headline model (DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M: Qwen2 shape, Q4_K/Q6_K) on machines
//! where the real file cannot be copied. Weights are random blocks with small finite scales.
//!
//! cargo run --release --example synthetic_bench -- --shape r1-1.5b --backend gpu|cpu
//!     [--context N] [--temperature T] [--run-ahead on|off] [--profile]
//!
//! `--context N`: decode after N cached tokens (prefilled untimed); `--temperature T`: decode
//! through the sampler (top_p 0.95; on the GPU, as generation does); `--profile`: GPU time per
//! kernel entry point over the decode steps (timestamp queries; slows the steps themselves).

#[path = "common/synthetic.rs"]
mod synthetic;

use pensive::backend::{block_on, Backend, SampleRequest};
use pensive::engine::{AnyBackend, BackendChoice, LoadOptions};
use pensive::sampler::{Sampler, SamplerOptions};

fn arg<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shape_name: String = arg(&args, "--shape", "r1-1.5b".to_string());
    let backend_name: String = arg(&args, "--backend", "gpu".to_string());
    let prompt_tokens: usize = arg(&args, "--prompt-tokens", 128);
    let gen_tokens: usize = arg(&args, "--gen-tokens", 64);
    let context: usize = arg(&args, "--context", 0);
    let temperature: f32 = arg(&args, "--temperature", 0.0);
    let run_ahead: String = arg(&args, "--run-ahead", "auto".to_string());
    let profile = args.iter().any(|a| a == "--profile");
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
    let max_context = (context + prompt_tokens + gen_tokens + 64).max(2048);
    let mut b = match block_on(AnyBackend::new(model, &LoadOptions { backend, max_context: Some(max_context), ..LoadOptions::default() })) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("synthetic_bench: {e}");
            std::process::exit(1);
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let vocab = config.vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let cached: Vec<u32> = (0..context as u32).map(|i| (i * 104_729 + 7) % vocab).collect();
    if let AnyBackend::Gpu(m) = &mut b {
        match run_ahead.as_str() {
            "on" => m.set_run_ahead(true),
            "off" => m.set_run_ahead(false),
            _ => {}
        }
        if profile && !m.context().enable_profiling() {
            eprintln!("--profile: no timestamp queries on this adapter");
        }
    }
    let options = SamplerOptions { temperature, top_p: if temperature > 0.0 { 0.95 } else { 1.0 }, seed: 1, ..SamplerOptions::default() };
    // One token choice as generation makes it: on the backend where it samples itself.
    let choose = |b: &mut AnyBackend, sampler: &mut Sampler, tokens: &[u32], last: bool| -> u32 {
        let uniform = sampler.next_uniform();
        let ahead = (!last).then(|| sampler.peek_uniform());
        let request = SampleRequest { options: &options, history: tokens, banned: &[], uniform, raw_argmax: false, ahead };
        match block_on(b.forward_sample(tokens, &request)) {
            Some(r) => r.expect("step").id.expect("a token"),
            None => block_on(b.forward_greedy(tokens, &[])).expect("step"),
        }
    };
    // Warm-up (pipeline compilation), then measure from the cached context.
    let run = |b: &mut AnyBackend| -> (f64, f64, f64, Vec<pensive::gpu::KernelTime>) {
        b.truncate(0).expect("truncate");
        if !cached.is_empty() {
            block_on(b.forward_greedy(&cached, &[])).expect("context");
        }
        let mut sampler = Sampler::new(options.clone()).expect("options");
        let t = std::time::Instant::now();
        let mut next = choose(b, &mut sampler, &prompt, gen_tokens == 0);
        let prefill = t.elapsed().as_secs_f64();
        if let AnyBackend::Gpu(m) = b {
            m.context().take_kernel_times();
        }
        let mut steps = Vec::new();
        for i in 0..gen_tokens {
            let t = std::time::Instant::now();
            next = choose(b, &mut sampler, &[next], i + 1 == gen_tokens);
            steps.push(t.elapsed().as_secs_f64());
        }
        let kernels = match b {
            AnyBackend::Gpu(m) => m.context().take_kernel_times(),
            AnyBackend::Cpu { .. } => Vec::new(),
        };
        let total: f64 = steps.iter().sum();
        steps.sort_by(|a, b| a.total_cmp(b));
        (prefill, total, steps.get(steps.len() / 2).copied().unwrap_or(0.0), kernels)
    };
    run(&mut b);
    let (prefill_s, decode_s, median_s, kernels) = run(&mut b);
    let decode_tok_s = gen_tokens as f64 / decode_s;
    // What a decode step reads besides the weights: the KV cache of the positions before it.
    let kv_per_position = match &b {
        AnyBackend::Gpu(m) => m.kv_bytes_per_position() as usize,
        // The CPU backend caches f16 keys and values by default (what this bench loads).
        AnyBackend::Cpu { .. } => 2 * config.n_layers * config.kv_dim() * 2,
    };
    let mean_len = (context + prompt_tokens) as f64 + (gen_tokens as f64 + 1.0) / 2.0;
    let kv_bytes = kv_per_position as f64 * mean_len;
    println!(
        "{}",
        serde_json::json!({
            "shape": shape_name,
            "backend": b.name(),
            "load_s": load_s,
            "weight_bytes_per_token": weight_bytes,
            "context": context,
            "temperature": temperature,
            "run_ahead": match &b {
                AnyBackend::Gpu(m) => Some(m.run_ahead()),
                AnyBackend::Cpu { .. } => None,
            },
            "kv_bytes_per_token": kv_bytes,
            "prompt_tokens": prompt_tokens,
            "prefill_tok_s": prompt_tokens as f64 / prefill_s,
            "gen_tokens": gen_tokens,
            "decode_tok_s": decode_tok_s,
            "decode_step_ms_median": median_s * 1e3,
            "weight_gb_s_at_median_step": weight_bytes as f64 / median_s / 1e9,
            "bytes_gb_s_at_median_step": (weight_bytes as f64 + kv_bytes) / median_s / 1e9,
            "gpu_kernels": kernels.iter().map(|k| serde_json::json!({ "entry": k.entry, "ms_per_token": k.ms / gen_tokens.max(1) as f64, "dispatches": k.dispatches })).collect::<Vec<_>>(),
        })
    );
}
