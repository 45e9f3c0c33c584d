//! One owner of the transcript: a request's result (ids, events, phases, stats) never
//! depends on what an earlier request left in the KV cache — only its cost does. The matrix
//! of issue 8 on a real model, CPU and WebGPU: raw / chat prompt × prompt opens thinking /
//! `open: true` / no thinking × greedy / seeded temperature 0.7 × the sequences A; A again;
//! B then A; A with a longer prefix, each compared with a fresh engine's events.

use pensive::backend::block_on;
use pensive::chat::Message;
use pensive::engine::{BackendChoice, Engine, GenerateRequest, LoadOptions, Prompt};
use pensive::generate::{Event, Stats};
use pensive::loader;
use pensive::thinking::ThinkingOptions;

mod common;

const MODEL: &str = "smollm2-135m-instruct-q4_1.gguf";

fn engine(backend: BackendChoice) -> Option<Engine> {
    let path = common::model_path(MODEL)?;
    let model = loader::load_gguf_file(&path).unwrap();
    match block_on(Engine::new(model, None, &LoadOptions { backend, max_context: Some(512) })) {
        Ok(e) => Some(e),
        Err(e) if backend == BackendChoice::Gpu && std::env::var("PENSIVE_REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("SKIPPED (no GPU adapter): {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// The request's events with the cost fields (timings, cache reuse) zeroed.
fn run(engine: &mut Engine, prompt: &Prompt, request: &GenerateRequest) -> Vec<Event> {
    engine.start(prompt, request.clone()).unwrap();
    let mut events = Vec::new();
    while let Some(mut e) = block_on(engine.next_event()).unwrap() {
        if let Event::Done { stats } = &mut e {
            *stats = Stats { prefill_s: 0.0, decode_s: 0.0, prefill_tok_s: 0.0, decode_tok_s: 0.0, cached_tokens: 0, processed_tokens: 0, ..stats.clone() };
        }
        events.push(e);
    }
    events
}

fn text(events: &[Event]) -> String {
    events.iter().filter_map(|e| if let Event::Token { text, .. } = e { Some(text.as_str()) } else { None }).collect()
}

fn user(content: &str) -> Message {
    Message { role: "user".into(), content: content.into() }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Thinking {
    /// The prompt ends with `<think>\n` (what R1-Distill's and Qwen3's templates write).
    OpenedByPrompt,
    /// `open: true` forces the start marker.
    Forced,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Raw,
    Chat,
}

/// Prompt A, a different prompt B, and A extended by A's own exchange and a new question.
fn prompts(kind: Kind, thinking: Thinking, answer_a: &str) -> (Prompt, Prompt, Prompt) {
    let tail = if thinking == Thinking::OpenedByPrompt { "\n<think>\n" } else { "\n" };
    match kind {
        Kind::Raw => (
            Prompt::Text(format!("Question: What is the capital of France?{tail}")),
            Prompt::Text(format!("Question: Name a prime number.{tail}")),
            Prompt::Text(format!("Question: What is the capital of France?{tail}{answer_a}\nQuestion: And of Spain?{tail}")),
        ),
        Kind::Chat => {
            // A chat template does not end in `<think>`; the user turn's text does instead.
            let q = |s: &str| format!("{s}{}", if thinking == Thinking::OpenedByPrompt { "\n<think>\n" } else { "" });
            (
                Prompt::Messages(vec![user(&q("What is the capital of France?"))]),
                Prompt::Messages(vec![user(&q("Name a prime number."))]),
                Prompt::Messages(vec![
                    user(&q("What is the capital of France?")),
                    Message { role: "assistant".into(), content: answer_a.into() },
                    user(&q("And of Spain?")),
                ]),
            )
        }
    }
}

fn request(thinking: Thinking, seed: Option<u64>) -> GenerateRequest {
    GenerateRequest {
        temperature: Some(if seed.is_some() { 0.7 } else { 0.0 }),
        seed,
        max_tokens: Some(24),
        thinking: match thinking {
            Thinking::None => None,
            t => Some(ThinkingOptions {
                min_tokens: 8,
                max_tokens: Some(12),
                open: t == Thinking::Forced,
                answer_prefix: Some(" Answer:".into()),
                ..Default::default()
            }),
        },
        ..Default::default()
    }
}

fn matrix(backend: BackendChoice) {
    let Some(mut engine) = engine(backend) else { return };
    let Some(mut fresh_engine) = self::engine(backend) else { return };
    // A fresh result: the second engine's cache is emptied by scoring nothing shared.
    let mut fresh = |prompt: &Prompt, request: &GenerateRequest| {
        fresh_engine.clear_cache().unwrap();
        run(&mut fresh_engine, prompt, request)
    };
    let mut cases = 0;
    for kind in [Kind::Raw, Kind::Chat] {
        for thinking in [Thinking::OpenedByPrompt, Thinking::Forced, Thinking::None] {
            for seed in [None, Some(7)] {
                let request = request(thinking, seed);
                let ctx = format!("{backend:?} {kind:?} {thinking:?} seed {seed:?}");
                let (a, b, _) = prompts(kind, thinking, "");
                let first = run(&mut engine, &a, &request);
                let expected_a = fresh(&a, &request);
                assert_eq!(first, expected_a, "{ctx}: A");
                if thinking != Thinking::None {
                    assert!(
                        first.iter().any(|e| matches!(e, Event::Token { phase: pensive::thinking::Phase::Thinking, .. })),
                        "{ctx}: the budget saw thinking: {}",
                        text(&first)
                    );
                }
                assert_eq!(run(&mut engine, &a, &request), expected_a, "{ctx}: A again");
                run(&mut engine, &b, &request);
                assert_eq!(run(&mut engine, &a, &request), expected_a, "{ctx}: B then A");
                let (_, _, longer) = prompts(kind, thinking, &text(&first));
                run(&mut engine, &a, &request);
                let extended = run(&mut engine, &longer, &request);
                assert_eq!(extended, fresh(&longer, &request), "{ctx}: A with a longer prefix");
                cases += 4;
            }
        }
    }
    eprintln!("{backend:?}: {cases} repeated requests, all identical to a fresh engine's");
}

#[test]
fn repeated_requests_equal_fresh_ones_on_the_cpu() {
    matrix(BackendChoice::Cpu);
}

#[test]
fn repeated_requests_equal_fresh_ones_on_webgpu() {
    matrix(BackendChoice::Gpu);
}
