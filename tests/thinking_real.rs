//! The thinking budget with real vocabularies and real models.
//!
//! - DeepSeek-R1-Distill's vocabulary and chat template (GGUF header) and Qwen3's
//!   tokenizer.json: `<think>`/`</think>` are single tokens there, found by text (never by a
//!   hard-coded id), and the forced "Wait" is the tokenizer's own encoding of it.
//! - SmolLM2 and Qwen2.5-Coder, which have no thinking tokens: string markers, greedy.
//!   The guarantees of issue 3 hold and the event stream is identical across runs.

use std::rc::Rc;

use pensive::quant::CpuKernels;
use pensive::backend::block_on;
use pensive::chat::{ChatTemplate, Message};
use pensive::engine::{BackendChoice, Engine, GenerateRequest, LoadOptions, Prompt};
use pensive::generate::{Event, GenerateOptions, Generation, Stats, TextCodec};
use pensive::transcript::Transcript;
use pensive::gguf::GgufHeader;
use pensive::loader;
use pensive::sampler::SamplerOptions;
use pensive::thinking::{Marker, Phase, ThinkingController, ThinkingOptions};
use pensive::tokenizer::Tokenizer;

mod common;
mod scripted;

use scripted::ScriptedBackend;

fn deepseek() -> Option<Tokenizer> {
    let path = common::root_path("models/testdata/deepseek-r1-distill-qwen-7b.header.gguf");
    if !path.exists() {
        assert!(std::env::var("PENSIVE_REQUIRE_MODELS").as_deref() != Ok("1"), "run scripts/fetch-test-data.sh");
        eprintln!("SKIPPED: {} missing (scripts/fetch-test-data.sh)", path.display());
        return None;
    }
    let header = GgufHeader::parse(&std::fs::read(path).unwrap()).unwrap();
    Some(Tokenizer::from_gguf(&header.metadata).unwrap())
}

fn qwen3() -> Option<Tokenizer> {
    let dir = common::root_path("models/testdata/qwen3");
    if !dir.exists() {
        assert!(std::env::var("PENSIVE_REQUIRE_MODELS").as_deref() != Ok("1"), "run scripts/fetch-test-data.sh");
        eprintln!("SKIPPED: {} missing (scripts/fetch-test-data.sh)", dir.display());
        return None;
    }
    let json = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let config = std::fs::read(dir.join("tokenizer_config.json")).unwrap();
    Some(Tokenizer::from_json(&json, Some(&config)).unwrap())
}

fn render(t: &Tokenizer, question: &str) -> Vec<u32> {
    let template = ChatTemplate::new(t.chat_template().expect("template")).unwrap();
    let text_of = |id: Option<u32>| id.and_then(|i| t.token_text(i)).unwrap_or_default();
    let messages = [Message { role: "user".into(), content: question.into() }];
    let text = template.render(&messages, true, &text_of(t.bos()), &text_of(t.eos())).unwrap();
    let add_bos = t.add_bos() && !text.starts_with(&text_of(t.bos()));
    t.encode(&text, add_bos).unwrap()
}

/// A model that opens thinking if the prompt has not, thinks " so" until `end_after`
/// thinking tokens, closes with `</think>`, answers " yes" and ends.
fn scripted_thinker(t: &Tokenizer, end_after: usize) -> ScriptedBackend {
    let think = t.token_id("<think>").expect("<think> is one token");
    let end = t.token_id("</think>").expect("</think> is one token");
    let so = single(t, " so");
    let answer = single(t, " yes");
    let eos = t.end_of_generation_ids()[0];
    ScriptedBackend::favour(t.vocab_size(), move |seq| {
        let opened = seq.iter().rposition(|&x| x == think);
        let closed = seq.iter().rposition(|&x| x == end);
        match (opened, closed) {
            (None, _) => think,
            (Some(o), c) if c.is_none_or(|c| c < o) => {
                let thought = seq.len() - o - 1;
                if thought >= end_after { end } else { so }
            }
            _ if seq.last() == Some(&answer) => eos,
            _ => answer,
        }
    })
}

fn single(t: &Tokenizer, text: &str) -> u32 {
    let ids = TextCodec::encode(t, text).unwrap();
    assert_eq!(ids.len(), 1, "{text:?} should be one token");
    ids[0]
}

fn generate(t: Rc<Tokenizer>, backend: &mut ScriptedBackend, prompt: &[u32], thinking: ThinkingOptions) -> Vec<Event> {
    let options = GenerateOptions { max_tokens: 400, sampler: SamplerOptions::greedy(), thinking: Some(thinking), ..GenerateOptions::default() };
    let mut transcript = Transcript::new(&mut *backend).unwrap();
    let mut g = Generation::new(&mut transcript, t, prompt, options).unwrap();
    block_on(g.run_to_end(&mut transcript)).unwrap().events
}

fn stats(events: &[Event]) -> &Stats {
    match events.last() {
        Some(Event::Done { stats }) => stats,
        other => panic!("last event {other:?}"),
    }
}

fn check_budget_with(t: Tokenizer, expect_opened_by_prompt: bool) {
    let t = Rc::new(t);
    let prompt = render(&t, "What is 6 times 7?");
    let end = t.token_id("</think>").unwrap();
    let options = ThinkingOptions { min_tokens: 20, max_tokens: Some(60), ..Default::default() };
    let controller = ThinkingController::new(options.clone(), &*t, &prompt, 0).unwrap();
    assert_eq!(controller.end_marker(), &Marker::Token(end));
    assert_eq!(controller.opened_by_prompt(), expect_opened_by_prompt);

    // The model tries to stop after 5 thinking tokens: each early end becomes "Wait".
    let mut backend = scripted_thinker(&t, 5);
    let events = generate(t.clone(), &mut backend, &prompt, options.clone());
    let s = stats(&events);
    assert!(s.thinking_tokens >= 20, "{s:?}");
    assert!(s.continuations >= 1);
    let wait_ids = TextCodec::encode(&*t, "Wait").unwrap();
    let forced: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Token { id, forced: true, phase: Phase::Thinking, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert!(forced.windows(wait_ids.len()).any(|w| w == wait_ids), "forced {forced:?}, Wait = {wait_ids:?}");
    let answer: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Token { text, phase: Phase::Answer, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(answer.contains("yes"), "{answer:?}");

    // A model that would think forever is cut at the cap, then answers.
    let mut backend = scripted_thinker(&t, usize::MAX);
    let events = generate(t.clone(), &mut backend, &prompt, options);
    let s = stats(&events);
    assert!(s.forced_exit);
    assert!(s.thinking_tokens <= 60, "{s:?}");
    assert!(events.iter().any(|e| matches!(e, Event::BudgetExhausted { .. })));
    assert!(events.iter().any(|e| matches!(e, Event::Token { id, forced: true, .. } if *id == end)));
}

#[test]
fn deepseek_r1_distill_vocabulary_and_template() {
    let Some(t) = deepseek() else { return };
    // The R1-Distill template opens thinking itself ("<｜Assistant｜><think>\n") in later
    // revisions; whichever this header carries, the controller must see it.
    let prompt = render(&t, "Hi");
    let think = t.token_id("<think>").unwrap();
    let opened = prompt.contains(&think);
    check_budget_with(t, opened);
}

#[test]
fn qwen3_tokenizer_json() {
    let Some(t) = qwen3() else { return };
    assert_eq!(t.token_id("<think>").map(|_| ()), Some(()));
    check_budget_with(t, false);
}

fn engine(file: &str) -> Option<Engine> {
    engine_on(file, BackendChoice::Cpu, CpuKernels::default())
}

fn engine_on(file: &str, backend: BackendChoice, cpu_kernels: CpuKernels) -> Option<Engine> {
    let path = common::model_path(file)?;
    let model = loader::load_gguf_file(&path).unwrap();
    let options = LoadOptions { backend, max_context: Some(512), cpu_kernels };
    match block_on(Engine::new(model, None, &options)) {
        Ok(e) => Some(e),
        Err(e) if std::env::var("PENSIVE_REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("SKIPPED: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Run one generation; events with the cost fields (timings, cache reuse) zeroed so runs
/// compare equal, and the seed when the engine drew it (these requests are greedy).
fn run(engine: &mut Engine, prompt: &Prompt, request: GenerateRequest) -> Vec<Event> {
    let drawn = request.seed.is_none();
    engine.start(prompt, request).unwrap();
    let mut events = Vec::new();
    while let Some(mut e) = block_on(engine.next_event()).unwrap() {
        if let Event::Done { stats } = &mut e {
            (stats.prefill_s, stats.decode_s, stats.prefill_tok_s, stats.decode_tok_s) = (0.0, 0.0, 0.0, 0.0);
            (stats.cached_tokens, stats.processed_tokens) = (0, 0);
            if drawn {
                stats.seed = 0;
            }
        }
        events.push(e);
    }
    events
}

/// SmolLM2 and Qwen2.5-Coder do not think on their own: `open` forces `<think>` (several
/// tokens in their vocabularies, so string markers), the floor replaces early ends and the
/// cap forces the exit. Greedy, so two runs must give the same stream.
fn check_real_model(file: &str) {
    let Some(mut engine) = engine(file) else { return };
    let (min, max) = (24usize, 64usize);
    let request = || GenerateRequest {
        temperature: Some(0.0),
        max_tokens: Some(160),
        thinking: Some(ThinkingOptions {
            min_tokens: min,
            max_tokens: Some(max),
            open: true,
            answer_prefix: Some("\nFinal Answer:".into()),
            answer_max_tokens: Some(24),
            ..Default::default()
        }),
        ..Default::default()
    };
    let prompt = Prompt::Messages(vec![Message {
        role: "user".into(),
        content: "Think step by step: what is 17 + 25?".into(),
    }]);
    let first = run(&mut engine, &prompt, request());
    let again = run(&mut engine, &prompt, request());
    let s = stats(&first).clone();
    eprintln!("{file}: {s:?}");
    let transcript: String = first
        .iter()
        .map(|e| match e {
            Event::Token { text, forced: true, .. } => format!("[{text}]"),
            Event::Token { text, .. } => text.clone(),
            _ => String::new(),
        })
        .collect();
    eprintln!("{file} transcript: {transcript}");
    // Control = 100 %: the floor always holds; the cap plus the forced exit text bounds it.
    assert!(s.thinking_tokens >= min, "{s:?}");
    assert!(s.thinking_tokens <= max, "{s:?}");
    assert!(first.iter().any(|e| matches!(e, Event::Phase { phase: Phase::Answer })));
    // Same seed and options, same events: the second run reuses the cached prompt, which
    // changes its cost only.
    assert_eq!(first, again);
}

#[test]
fn smollm2_budget_forcing_with_string_markers() {
    check_real_model("smollm2-135m-instruct-q4_1.gguf");
}

#[test]
fn qwen25_coder_budget_forcing_with_string_markers() {
    check_real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}

/// The same budget-forced generation on the CPU and on WebGPU (f16 on lavapipe) gives the
/// same event stream, for a prompt whose greedy path has no near-ties.
#[test]
fn budget_forced_stream_is_identical_on_cpu_and_gpu() {
    let file = "smollm2-135m-instruct-q4_1.gguf";
    // The CPU's f32 reference kernels: the GPU's activations are f16/f32, never 8-bit.
    let Some(mut cpu) = engine_on(file, BackendChoice::Cpu, CpuKernels::F32) else { return };
    let Some(mut gpu) = engine_on(file, BackendChoice::Gpu, CpuKernels::F32) else { return };
    let request = || GenerateRequest {
        temperature: Some(0.0),
        max_tokens: Some(40),
        thinking: Some(ThinkingOptions {
            min_tokens: 8,
            max_tokens: Some(16),
            open: true,
            answer_prefix: Some(" Answer:".into()),
            answer_max_tokens: Some(6),
            ..Default::default()
        }),
        ..Default::default()
    };
    let prompt = Prompt::Text("The capital of France is".into());
    let on_cpu = run(&mut cpu, &prompt, request());
    let on_gpu = run(&mut gpu, &prompt, request());
    let ids = |events: &[Event]| -> Vec<(u32, bool)> {
        events.iter().filter_map(|e| if let Event::Token { id, forced, .. } = e { Some((*id, *forced)) } else { None }).collect()
    };
    eprintln!("cpu {:?}\ngpu {:?}", ids(&on_cpu), ids(&on_gpu));
    assert!(stats(&on_cpu).forced_exit || stats(&on_cpu).continuations > 0, "the budget must act: {:?}", stats(&on_cpu));
    assert_eq!(on_cpu, on_gpu);
}

/// The command that never ended: string markers, `suppress`, greedy. Masking the
/// marker by take-back and resampling let the model spell it again another way, forever.
#[test]
fn qwen25_coder_suppressed_string_marker_finishes_with_the_minimum() {
    let Some(mut engine) = engine("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
    let request = GenerateRequest {
        temperature: Some(0.0),
        max_tokens: Some(256),
        thinking: Some(ThinkingOptions {
            min_tokens: 32,
            max_tokens: Some(64),
            open: true,
            on_early_end: pensive::thinking::EarlyEnd::Suppress,
            ..Default::default()
        }),
        ..Default::default()
    };
    let prompt = Prompt::Messages(vec![Message {
        role: "user".into(),
        content: "A farmer has 17 sheep and buys 25 more. How many sheep now? Think first.".into(),
    }]);
    let events = run(&mut engine, &prompt, request);
    let s = stats(&events).clone();
    eprintln!("{s:?}");
    let thinking = events.iter().filter(|e| matches!(e, Event::Token { phase: Phase::Thinking, marker: false, .. })).count();
    assert!(events.iter().any(|e| matches!(e, Event::Phase { phase: Phase::Answer })), "thinking closed");
    assert!((32..=64).contains(&thinking), "thinking {thinking}");
    assert_eq!(thinking, s.thinking_tokens);
}

/// A sampled thinking request (T 0.6, top_p 0.95, a floor with continuations and a cap) on
/// WebGPU with run-ahead (the default on GPUs), its Regenerate, and the same request with run-ahead
/// off: the same events. The controller's interventions drop steps run ahead; the
/// uninterrupted stretches claim them.
#[test]
fn run_ahead_keeps_a_sampled_thinking_stream() {
    let file = "smollm2-135m-instruct-q4_1.gguf";
    let Some(mut gpu) = engine_on(file, BackendChoice::Gpu, CpuKernels::default()) else { return };
    // Off by default on CPU adapters such as lavapipe.
    gpu.set_run_ahead(true);
    let request = || GenerateRequest {
        temperature: Some(0.6),
        top_p: Some(0.95),
        seed: Some(21),
        max_tokens: Some(96),
        thinking: Some(ThinkingOptions {
            min_tokens: 12,
            max_tokens: Some(48),
            open: true,
            answer_prefix: Some("\nFinal Answer:".into()),
            answer_max_tokens: Some(16),
            ..Default::default()
        }),
        ..Default::default()
    };
    let prompt = Prompt::Messages(vec![Message { role: "user".into(), content: "Think step by step: what is 17 + 25?".into() }]);
    let first = run(&mut gpu, &prompt, request());
    let again = run(&mut gpu, &prompt, request());
    let stats_on = gpu.run_ahead_stats().expect("a GPU engine");
    gpu.set_run_ahead(false);
    let off = run(&mut gpu, &prompt, request());
    eprintln!("run-ahead {stats_on:?}; {:?}", stats(&first));
    assert_eq!(first, again);
    assert_eq!(first, off);
    assert_eq!(gpu.run_ahead_stats(), Some(stats_on), "run-ahead off runs nothing ahead");
    assert!(stats_on.claimed >= 20, "{stats_on:?}");
    assert!(stats(&first).thinking_tokens >= 12);
}
