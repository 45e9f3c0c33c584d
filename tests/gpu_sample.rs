//! Sampling on the GPU (shaders/sample.wgsl) against the CPU sampler
//! (`sampler::sample_with_uniform`): on fixed logits, and on a real model.
//!
//! The GPU sums probabilities in f32 (tree-reduced), the CPU in f64 (in sorted order), so
//! the two may differ where a running sum lies within rounding of a cut (top_p × total, or
//! u × the scaled total). Such a case is counted as a *boundary* case, not a failure, when
//! the CPU picks the GPU's token with u, top_p and min_p each moved by at most
//! [`BOUNDARY`]; everything else must be identical. Counts (top-k) and ties (equal logits
//! in id order) are exact on both.
//!
//! Run with a Vulkan adapter (e.g. Mesa lavapipe): `WGPU_BACKEND=vulkan cargo test --release
//! --test gpu_sample`. Without one the tests skip loudly, or fail under PENSIVE_REQUIRE_GPU=1.

mod common;
mod gpu_common;

use std::rc::Rc;

use gpu_common::{contexts, Rng};
use pensive::quant::CpuKernels;
use pensive::backend::{Backend, SampleRequest};
use pensive::gpu::kernels::SAMPLE_LIST_LEN;
use pensive::gpu::{GpuContext, GpuModel};
use pensive::model::CpuModel;
use pensive::ops;
use pensive::sampler::{penalized_ids, sample_with_uniform, SamplerOptions};
use pollster::block_on;

/// How far (absolute, on [0, 1] quantities) u, top_p and min_p may move for a differing
/// pick to count as an f32-vs-f64 rounding boundary on fixed logits.
const BOUNDARY: f64 = 1e-5;
/// At most this fraction of fixed-logit draws may be boundary cases.
const MAX_BOUNDARY_FRACTION: f64 = 0.01;
/// On a real model the GPU's logits differ from the CPU's by f16 rounding (~1e-2 in a
/// logit), which moves probabilities by ~1 %: the tolerance for a near-tie there.
const MODEL_BOUNDARY: f64 = 0.02;

const BANNED_FLAG: u32 = 1 << 31;

/// The GPU's pick for one row: bans and penalties as the backend builds them.
fn gpu_pick(ctx: &GpuContext, logits: &[f32], options: &SamplerOptions, history: &[u32], banned: &[u32], u: f64) -> Option<u32> {
    let buf = ctx.storage_init("logits", bytemuck::cast_slice(logits));
    let mut adjust: Vec<u32> = banned.iter().map(|&id| id | BANNED_FLAG).collect();
    adjust.extend(penalized_ids(options, history).into_iter().filter(|id| !banned.contains(id)));
    let adjust_buf = ctx.storage_init("adjust", bytemuck::cast_slice(&adjust));
    let result = ctx.storage("result", 4);
    let list = ctx.storage("list", SAMPLE_LIST_LEN as u64 * 8);
    let mut rec = ctx.recorder();
    rec.sample(&buf, logits.len(), &adjust_buf, adjust.len(), options, u, &result, &list);
    rec.submit();
    let bytes = block_on(ctx.read_bytes(&result, 0, 4)).expect("read");
    let id = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    (id != u32::MAX).then_some(id)
}

/// Whether the CPU picks `id` with u, top_p and min_p each moved by at most `delta`.
fn reachable(options: &SamplerOptions, logits: &[f32], history: &[u32], banned: &[u32], u: f64, id: u32, delta: f64) -> bool {
    let moves = [-delta, 0.0, delta];
    for du in moves {
        for dp in moves {
            for dm in moves {
                let o = SamplerOptions {
                    top_p: (options.top_p as f64 + dp).clamp(1e-9, 1.0) as f32,
                    min_p: if options.min_p > 0.0 { (options.min_p as f64 + dm).clamp(0.0, 0.999) as f32 } else { 0.0 },
                    ..options.clone()
                };
                let uu = (u + du).clamp(0.0, 1.0 - f64::EPSILON);
                if sample_with_uniform(&o, logits, history, banned, uu) == Ok(id) {
                    return true;
                }
            }
        }
    }
    false
}

/// Rows shaped like a language model's: a broad background, a few strong candidates, and
/// (odd rows) logits rounded to 1/4 so that equal logits are common and ties must go in
/// id order.
fn rows(rng: &mut Rng, vocab: usize, n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|r| {
            let mut row: Vec<f32> = (0..vocab).map(|_| 3.0 * rng.f32()).collect();
            for _ in 0..(5 + r * 7) {
                let i = rng.below(vocab);
                row[i] = 6.0 + 6.0 * rng.f32();
            }
            if r % 2 == 1 {
                for l in &mut row {
                    *l = (*l * 4.0).round() / 4.0;
                }
            }
            row
        })
        .collect()
}

fn configs() -> Vec<(&'static str, SamplerOptions)> {
    let base = SamplerOptions {
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
        ..SamplerOptions::default()
    };
    vec![
        ("greedy + penalty", SamplerOptions { temperature: 0.0, repeat_penalty: 1.3, ..base.clone() }),
        ("temperature only", base.clone()),
        ("top_k 40", SamplerOptions { top_k: 40, ..base.clone() }),
        ("top_k 1", SamplerOptions { top_k: 1, ..base.clone() }),
        // More candidates than the sampler sorts in workgroup memory: bisected in its list.
        ("top_k 3000", SamplerOptions { top_k: 3000, ..base.clone() }),
        ("top_p 0.95, T 0.6 (R1)", SamplerOptions { temperature: 0.6, top_p: 0.95, ..base.clone() }),
        ("top_p 0.5", SamplerOptions { top_p: 0.5, ..base.clone() }),
        ("min_p 0.05", SamplerOptions { min_p: 0.05, ..base.clone() }),
        ("repeat penalty 1.5", SamplerOptions { repeat_penalty: 1.5, ..base.clone() }),
        ("llama.cpp defaults", SamplerOptions::default()),
        ("all, T 1.7", SamplerOptions { temperature: 1.7, top_k: 200, top_p: 0.9, min_p: 0.01, repeat_penalty: 1.1, ..base }),
    ]
}

#[test]
fn gpu_sampler_picks_the_cpu_token_on_fixed_logits() {
    let ctxs = contexts();
    if ctxs.is_empty() {
        return;
    }
    let mut rng = Rng::new(91);
    let vocab = 20011;
    let rows = rows(&mut rng, vocab, 4);
    let (mut draws, mut same, mut boundary) = (0usize, 0usize, 0usize);
    for ctx in &ctxs {
        for (name, options) in configs() {
            for (r, row) in rows.iter().enumerate() {
                // History: some strong candidates (so the penalty matters) and random ids.
                let strong: Vec<u32> = (0..vocab as u32).filter(|&i| row[i as usize] > 8.0).take(3).collect();
                let history: Vec<u32> = strong.iter().copied().chain((0..20).map(|_| rng.below(vocab) as u32)).collect();
                let banned: Vec<u32> = if r >= 2 { strong.iter().take(1).copied().chain([7, 11]).collect() } else { vec![] };
                for _ in 0..6 {
                    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    let want = sample_with_uniform(&options, row, &history, &banned, u).expect("cpu sample");
                    let got = gpu_pick(ctx, row, &options, &history, &banned, u).expect("gpu sample");
                    draws += 1;
                    if got == want {
                        same += 1;
                    } else {
                        assert!(
                            reachable(&options, row, &history, &banned, u, got, BOUNDARY),
                            "{name}, row {r}, u {u}, act {:?}: gpu {got} (logit {}), cpu {want} (logit {}): not a rounding boundary",
                            ctx.act(),
                            row[got as usize],
                            row[want as usize]
                        );
                        boundary += 1;
                    }
                }
            }
        }
    }
    eprintln!("fixed logits: {draws} draws, {same} identical, {boundary} boundary cases (within {BOUNDARY})");
    assert!(boundary as f64 <= MAX_BOUNDARY_FRACTION * draws as f64, "{boundary} boundary cases of {draws}");
}

/// The Qwen vocabulary (151,936 logits) with the sampling R1-Distill and Qwen3 ask for:
/// broad rows (top-p reaches into the background: the sampler reads the whole row) and
/// peaked ones, as a model's usually are (the nucleus fits the candidate prefix).
#[test]
fn gpu_sampler_picks_the_cpu_token_on_a_qwen_sized_row() {
    let Some(ctx) = contexts().into_iter().next() else { return };
    let mut rng = Rng::new(7);
    let vocab = 151_936;
    let mut rows = rows(&mut rng, vocab, 4);
    for row in &mut rows[2..] {
        for l in row.iter_mut().filter(|l| **l < 3.0) {
            *l -= 8.0;
        }
    }
    let r1 = SamplerOptions { temperature: 0.6, top_k: 0, top_p: 0.95, min_p: 0.0, ..SamplerOptions::default() };
    // Temperature alone: the draw's cut decides the prefix (peaked rows), or the whole row.
    let temp_only = SamplerOptions { top_p: 1.0, ..r1.clone() };
    let mut boundary = 0;
    for (name, options) in [("T 0.6, top_p 0.95", r1), ("T 0.6 alone", temp_only)] {
        for row in &rows {
            for _ in 0..4 {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let want = sample_with_uniform(&options, row, &[], &[], u).expect("cpu sample");
                let t = std::time::Instant::now();
                let got = gpu_pick(&ctx, row, &options, &[], &[], u).expect("gpu sample");
                eprintln!("vocab {vocab}, {name}: gpu {got} cpu {want} ({:.1} ms incl. upload and readback)", t.elapsed().as_secs_f64() * 1e3);
                if got != want {
                    assert!(reachable(&options, row, &[], &[], u, got, BOUNDARY), "{name}: gpu {got}, cpu {want}");
                    boundary += 1;
                }
            }
        }
    }
    assert!(boundary <= 2, "{boundary} boundary cases of 32");
}

#[test]
fn no_candidate_left_is_reported_not_invented() {
    let Some(ctx) = contexts().into_iter().next() else { return };
    let mut row = vec![f32::NEG_INFINITY; 100];
    row[3] = f32::NAN;
    row[42] = 1.0;
    let options = SamplerOptions::default();
    assert_eq!(gpu_pick(&ctx, &row, &options, &[], &[], 0.5), Some(42));
    assert_eq!(gpu_pick(&ctx, &row, &options, &[], &[42], 0.5), None);
    assert!(sample_with_uniform(&options, &row, &[], &[42], 0.5).is_err());
}

/// SmolLM2 at temperature 0.7, teacher-forced along the CPU's own sampled tokens: at every
/// step the GPU backend samples on the device (4 bytes read back) with the CPU step's
/// uniform, every third step with the CPU's argmax banned. Differences are allowed only where the CPU's choice is a near-tie
/// ([`MODEL_BOUNDARY`]); the steps before the first one are reported.
#[test]
fn smollm2_sampled_on_the_gpu_follows_the_cpu() {
    let file = "smollm2-135m-instruct-q4_1.gguf";
    let Some(path) = common::model_path(file) else { return };
    let Some(ctx) = contexts().into_iter().last() else { return };
    let ctx = Rc::new(ctx);
    let mut cpu = CpuModel::new(pensive::loader::load_gguf_file(&path).expect("load"), Some(256)).expect("cpu");
    // The f32 reference kernels: the GPU's activations are f16/f32, never 8-bit.
    cpu.set_kernels(CpuKernels::F32);
    let mut gpu = GpuModel::from_loaded(ctx.clone(), pensive::loader::load_gguf_file(&path).expect("load"), Some(256)).expect("gpu");
    let options = SamplerOptions { temperature: 0.7, repeat_penalty: 1.1, seed: 5, ..SamplerOptions::default() };
    let mut sampler = pensive::sampler::Sampler::new(options.clone()).expect("options");
    let mut history: Vec<u32> = (0..24u32).map(|i| 300 + i * 53).collect();
    let mut pending = history.clone();
    let steps = 40;
    let (mut same, mut near, mut first_difference) = (0, 0, None);
    for step in 0..steps {
        let u = sampler.next_uniform();
        let logits = block_on(cpu.forward(&pending, 1)).expect("cpu forward");
        // Every third step bans the most likely token (as the budget controller bans an
        // early end) and asks for the raw argmax, which the loop counts in ends_suppressed.
        let best = ops::argmax(&logits) as u32;
        let banned = if step % 3 == 2 { vec![best] } else { vec![] };
        let want = sample_with_uniform(&options, &logits, &history, &banned, u).expect("cpu sample");
        let request = SampleRequest { options: &options, history: &history, banned: &banned, uniform: u, raw_argmax: !banned.is_empty(), ahead: None };
        let got = block_on(gpu.forward_sample(&pending, &request)).expect("the GPU samples itself").expect("gpu sample");
        if !banned.is_empty() {
            assert_eq!(got.raw_argmax, Some(best), "step {step}: raw argmax");
        }
        let got = got.id.expect("a candidate");
        assert!(!banned.contains(&got), "step {step}: banned {got} chosen");
        if got == want {
            same += 1;
        } else {
            assert!(
                reachable(&options, &logits, &history, &banned, u, got, MODEL_BOUNDARY),
                "step {step}: gpu {got}, cpu {want}: not a near-tie of the CPU's distribution"
            );
            near += 1;
            first_difference.get_or_insert(step);
        }
        history.push(want);
        pending = vec![want];
    }
    eprintln!(
        "{file}, {} act: {steps} sampled steps (T 0.7), {same} identical, {near} near-ties; identical up to step {}",
        format!("{:?}", ctx.act()),
        first_difference.unwrap_or(steps)
    );
    assert!(same >= steps * 9 / 10, "{same} of {steps} identical");
}

/// The whole loop (`pensive generate`) twice on the GPU with one seed: the same tokens.
#[test]
fn seeded_sampled_runs_on_the_gpu_repeat() {
    let Some(path) = common::model_path("smollm2-135m-instruct-q4_1.gguf") else { return };
    if contexts().is_empty() {
        return;
    }
    let run = || -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pensive"))
            .args(["generate", "--backend", "gpu", "--max-context", "256", "--json", "--seed", "11"])
            .args(["--prompt", "Once upon a time", "--max-tokens", "24", "--temperature", "0.9"])
            .arg("--model")
            .arg(&path)
            .output()
            .expect("run pensive");
        assert!(out.status.success(), "pensive: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("--json output")
    };
    let (a, b) = (run(), run());
    eprintln!("sampled on the gpu: {}", a["tokens"]);
    assert_eq!(a["tokens"].as_array().map(Vec::len), Some(24));
    assert_eq!(a["tokens"], b["tokens"]);
}

/// Run-ahead (the next step submitted before this one's token is read, fed on the GPU):
/// SmolLM2 sampled on the device for 36 steps, its own tokens fed back, with and without
/// run-ahead on two models of one device. Every fifth request bans another id (a guess
/// that does not hold: the step run ahead is dropped), one step rolls a token back with
/// `truncate`, one feeds two tokens: the tokens must be the same, and steps must have been
/// claimed as well as dropped.
#[test]
fn run_ahead_gives_the_same_tokens() {
    let file = "smollm2-135m-instruct-q4_1.gguf";
    let Some(path) = common::model_path(file) else { return };
    let Some(ctx) = contexts().into_iter().last() else { return };
    let ctx = Rc::new(ctx);
    let load = || GpuModel::from_loaded(ctx.clone(), pensive::loader::load_gguf_file(&path).expect("load"), Some(128)).expect("gpu");
    let (mut with, mut without) = (load(), load());
    // Off by default on CPU adapters such as lavapipe.
    assert_eq!(with.run_ahead(), ctx.info.device_type != wgpu::DeviceType::Cpu);
    with.set_run_ahead(true);
    without.set_run_ahead(false);
    let options = SamplerOptions { temperature: 0.6, top_p: 0.95, seed: 9, ..SamplerOptions::default() };
    let run = |gpu: &mut GpuModel, ahead_on: bool| -> Vec<u32> {
        let mut sampler = pensive::sampler::Sampler::new(options.clone()).expect("options");
        let mut history: Vec<u32> = (0..20u32).map(|i| 400 + i * 37).collect();
        let mut pending = history.clone();
        let mut out = Vec::new();
        let steps = 36;
        for step in 0..steps {
            let u = sampler.next_uniform();
            let banned = if step % 5 == 4 { vec![13u32] } else { vec![] };
            let ahead = (ahead_on && step + 1 < steps).then(|| sampler.peek_uniform());
            let request = SampleRequest { options: &options, history: &history, banned: &banned, uniform: u, raw_argmax: false, ahead };
            let id = block_on(gpu.forward_sample(&pending, &request)).expect("the GPU samples itself").expect("gpu sample").id.expect("a candidate");
            out.push(id);
            if step == 20 {
                // Take the last fed token back and feed it again with this answer.
                let last = *history.last().expect("history");
                gpu.truncate(gpu.kv_len() - 1).expect("truncate");
                history.push(id);
                pending = vec![last, id];
                continue;
            }
            history.push(id);
            pending = vec![id];
        }
        out
    };
    let a = run(&mut with, true);
    let b = run(&mut without, false);
    let stats = with.ahead_stats();
    eprintln!("run-ahead: {stats:?}; tokens {a:?}");
    assert_eq!(a, b);
    assert_eq!(without.ahead_stats(), Default::default());
    assert!(stats.claimed >= 15, "{stats:?}");
    assert!(stats.dropped >= 5, "{stats:?}");
    // Again on the same model, after its cache was rolled back to nothing.
    with.truncate(0).expect("truncate");
    assert_eq!(run(&mut with, true), a);
}
