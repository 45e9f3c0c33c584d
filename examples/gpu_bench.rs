//! GPU timing of one model: load, prefill and greedy decode, printed as one JSON line.
//!
//! `cargo run --release --example gpu_bench -- models/smollm2-135m-instruct-q4_1.gguf
//!  --prompt-tokens 40 --gen-tokens 16 [--f32] [--lanes N] [--no-subgroups]`
//!
//! Instead of a file, `--synthetic smollm2|qwen0.5b|qwen1.5b` builds random weights of that
//! model's shapes and GGUF types (examples/common/synthetic.rs) (for machines without the model files: GPU time does not
//! depend on the values).
//!
//! The prompt is a fixed id sequence (timing does not depend on the text). Prefill runs
//! twice: "cold" (the first step after loading) and, after truncating the cache, the timed
//! one; decode steps are the greedy GPU path (one submit, a 4-byte readback each).

use std::rc::Rc;
use std::time::Instant;

#[path = "common/synthetic.rs"]
mod synthetic;

use pensive::backend::{block_on, Backend};
use pensive::gpu::{GpuContext, GpuModel, GpuOptions};

struct Args {
    model: String,
    synthetic: Option<String>,
    prompt_tokens: usize,
    gen_tokens: usize,
    f16: bool,
    lanes: Option<u32>,
    subgroups: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { model: String::new(), synthetic: None, prompt_tokens: 40, gen_tokens: 16, f16: true, lanes: None, subgroups: true };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--prompt-tokens" => args.prompt_tokens = num("--prompt-tokens")?.max(1),
            "--gen-tokens" => args.gen_tokens = num("--gen-tokens")?,
            "--f32" => args.f16 = false,
            "--lanes" => args.lanes = Some(num("--lanes")? as u32),
            "--no-subgroups" => args.subgroups = false,
            "--synthetic" => args.synthetic = it.next(),
            _ if a.starts_with("--") => return Err(format!("unknown option {a}")),
            _ => args.model = a,
        }
    }
    if args.model.is_empty() == args.synthetic.is_none() {
        return Err("usage: gpu_bench (MODEL.gguf | --synthetic NAME) [--prompt-tokens N] [--gen-tokens M] [--f32] [--lanes N] [--no-subgroups]".into());
    }
    Ok(args)
}

/// CPU seconds this process has used (all threads: lavapipe runs shaders on CPU threads),
/// from /proc on Linux; None elsewhere. On a shared machine wall-clock time understates a
/// CPU adapter, so the rates are also given per CPU-second.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) end with ')'; utime and stime
    // are the 12th and 13th after it, in clock ticks of 1/100 s.
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn run(args: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let loaded = match &args.synthetic {
        Some(name) => synthetic::model(name).ok_or_else(|| format!("unknown synthetic model {name} ({})", synthetic::NAMES))?,
        None => pensive::loader::load_gguf_file(std::path::Path::new(&args.model))?,
    };
    let read_s = t.elapsed().as_secs_f64();
    let options = GpuOptions { prefer_f16: args.f16, largest_tensor_bytes: u64::MAX, matmul_lanes: args.lanes, subgroups: args.subgroups, ..Default::default() };
    let ctx = Rc::new(block_on(GpuContext::new(&options))?);
    let t = Instant::now();
    let mut model = GpuModel::from_loaded(ctx.clone(), loaded, Some(args.prompt_tokens + args.gen_tokens + 1))?;
    // Uploads are queued writes: wait for them so that load time is not billed to prefill.
    ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
    let upload_s = t.elapsed().as_secs_f64();

    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32).map(|i| (200 + i * 37) % vocab).collect();
    let t = Instant::now();
    block_on(model.forward_greedy(&prompt, &[]))?;
    let prefill_cold_s = t.elapsed().as_secs_f64();
    model.truncate(0)?;
    let (t, c) = (Instant::now(), cpu_seconds());
    let mut token = block_on(model.forward_greedy(&prompt, &[]))?;
    let prefill_s = t.elapsed().as_secs_f64();
    let prefill_cpu_s = c.zip(cpu_seconds()).map(|(a, b)| b - a);

    let (d0, s0, b0) = (ctx.dispatches.get(), ctx.submits.get(), ctx.bind_groups_created.get());
    let (t, c) = (Instant::now(), cpu_seconds());
    for _ in 0..args.gen_tokens {
        token = block_on(model.forward_greedy(&[token], &[]))?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    let decode_cpu_s = c.zip(cpu_seconds()).map(|(a, b)| b - a);
    let steps = args.gen_tokens.max(1) as f64;
    let json = serde_json::json!({
        "model": args.synthetic.as_ref().map_or(args.model.clone(), |s| format!("synthetic {s}")),
        "adapter": ctx.describe(),
        "act": format!("{:?}", ctx.act()),
        "read_s": read_s,
        "load_s": upload_s,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "prefill_cold_s": prefill_cold_s,
        "prefill_s": prefill_s,
        "prefill_tok_s": args.prompt_tokens as f64 / prefill_s,
        "decode_tok_s": args.gen_tokens as f64 / decode_s,
        "step_ms": decode_s * 1e3 / steps,
        "prefill_tok_per_cpu_s": prefill_cpu_s.map(|s| args.prompt_tokens as f64 / s),
        "decode_tok_per_cpu_s": decode_cpu_s.map(|s| args.gen_tokens as f64 / s),
        "dispatches_per_step": (ctx.dispatches.get() - d0) as f64 / steps,
        "submits_per_step": (ctx.submits.get() - s0) as f64 / steps,
        "bind_groups_per_step": (ctx.bind_groups_created.get() - b0) as f64 / steps,
        "last_token": token,
    });
    Ok(json.to_string())
}

fn main() {
    let result = parse_args().map_err(|e| e.into()).and_then(|a| run(&a));
    match result {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            std::process::exit(1);
        }
    }
}
