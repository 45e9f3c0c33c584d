//! One owner of the transcript: a request's result (ids, events, phases, stats) never
//! depends on what an earlier request left in the KV cache — only its cost does. The matrix
//! of issue 8 on a real model, CPU and WebGPU: raw / chat prompt × prompt opens thinking /
//! `open: true` / no thinking × greedy / seeded temperature 0.7 × the sequences A; A again;
//! B then A; A with a longer prefix, each compared with a fresh engine's events (WebGPU: the
//! chat prompts).

use pensive::backend::block_on;
use pensive::chat::Message;
use pensive::engine::{BackendChoice, Engine, GenerateRequest, LoadOptions, Prompt};
use pensive::generate::{Event, Stats};
use pensive::loader;
use pensive::thinking::ThinkingOptions;

mod common;

const MODEL: &str = "smollm2-135m-instruct-q4_1.gguf";

/// SmolLM2's ChatML with DeepSeek-R1-Distill's habits: the generation prompt opens thinking,
/// and earlier assistant turns lose their thinking when re-rendered.
const THINKING_TEMPLATE: &str = "{%- for m in messages %}<|im_start|>{{ m.role }}\n\
{%- if m.role == 'assistant' and '</think>' in m.content %}{{ m.content.split('</think>')[-1] | trim }}\
{%- else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}\
{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";

fn engine(backend: BackendChoice) -> Option<Engine> {
    let path = common::model_path(MODEL)?;
    let model = loader::load_gguf_file(&path).unwrap();
    match block_on(Engine::new(model, None, &LoadOptions { backend, max_context: Some(512), ..LoadOptions::default() })) {
        Ok(e) => Some(e),
        Err(e) if backend == BackendChoice::Gpu && std::env::var("PENSIVE_REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("SKIPPED (no GPU adapter): {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// The request's events with the cost fields (timings, cache reuse) zeroed.
/// A request without a seed gets a fresh one each time, reported in the stats: zeroed too
/// (greedy, it changes nothing else).
fn run(engine: &mut Engine, prompt: &Prompt, request: &GenerateRequest) -> Vec<Event> {
    engine.start(prompt, request.clone()).unwrap();
    let mut events = Vec::new();
    while let Some(mut e) = block_on(engine.next_event()).unwrap() {
        if let Event::Done { stats } = &mut e {
            let seed = if request.seed.is_some() { stats.seed } else { 0 };
            *stats = Stats { prefill_s: 0.0, decode_s: 0.0, prefill_tok_s: 0.0, decode_tok_s: 0.0, cached_tokens: 0, processed_tokens: 0, seed, ..stats.clone() };
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
        // With OpenedByPrompt the engine's template is THINKING_TEMPLATE.
        Kind::Chat => (
            Prompt::Messages(vec![user("What is the capital of France?")]),
            Prompt::Messages(vec![user("Name a prime number.")]),
            Prompt::Messages(vec![
                user("What is the capital of France?"),
                Message { role: "assistant".into(), content: answer_a.into() },
                user("And of Spain?"),
            ]),
        ),
    }
}

/// `length`: response tokens; thinking gets a third to a half of them. (Lavapipe runs the
/// WebGPU matrix at a few tokens per second, so it gets shorter responses.)
fn request(thinking: Thinking, seed: Option<u64>, length: usize) -> GenerateRequest {
    GenerateRequest {
        temperature: Some(if seed.is_some() { 0.7 } else { 0.0 }),
        seed,
        max_tokens: Some(length),
        thinking: match thinking {
            Thinking::None => None,
            t => Some(ThinkingOptions {
                min_tokens: length / 3,
                max_tokens: Some(length / 2),
                open: t == Thinking::Forced,
                answer_prefix: Some(" Answer:".into()),
                ..Default::default()
            }),
        },
        ..Default::default()
    }
}

/// A fresh engine's result: the cache emptied first.
fn fresh(engine: &mut Engine, prompt: &Prompt, request: &GenerateRequest) -> Vec<Event> {
    engine.clear_cache().unwrap();
    run(engine, prompt, request)
}

/// `kinds`: the prompt kinds to run (how a prompt becomes ids is the engine's, the same on
/// every backend; what a backend adds — cache reuse, truncation, run-ahead, sampling on the
/// device — every kind exercises alike).
fn matrix(backend: BackendChoice, length: usize, kinds: &[Kind]) {
    let Some(mut engine) = engine(backend) else { return };
    let Some(mut reference) = self::engine(backend) else { return };
    let default_template = engine.tokenizer().chat_template().expect("SmolLM2 has a template").to_string();
    let mut cases = 0;
    for &kind in kinds {
        for thinking in [Thinking::OpenedByPrompt, Thinking::Forced, Thinking::None] {
            if kind == Kind::Chat {
                let template = if thinking == Thinking::OpenedByPrompt { THINKING_TEMPLATE } else { &default_template };
                engine.set_chat_template(template).unwrap();
                reference.set_chat_template(template).unwrap();
            }
            for seed in [None, Some(7)] {
                let request = request(thinking, seed, length);
                let ctx = format!("{backend:?} {kind:?} {thinking:?} seed {seed:?}");
                let (a, b, _) = prompts(kind, thinking, "");
                let first = run(&mut engine, &a, &request);
                let expected_a = fresh(&mut reference, &a, &request);
                assert_eq!(first, expected_a, "{ctx}: A");
                if thinking != Thinking::None {
                    assert!(
                        first.iter().any(|e| matches!(e, Event::Token { phase: pensive::thinking::Phase::Thinking, marker: false, .. })),
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
                assert_eq!(extended, fresh(&mut reference, &longer, &request), "{ctx}: A with a longer prefix");
                cases += 4;
            }
        }
    }
    eprintln!("{backend:?}: {cases} repeated requests, all identical to a fresh engine's");
}

#[test]
fn repeated_requests_equal_fresh_ones_on_the_cpu() {
    matrix(BackendChoice::Cpu, 24, &[Kind::Raw, Kind::Chat]);
}

#[test]
fn repeated_requests_equal_fresh_ones_on_webgpu() {
    // Chat prompts only: the whole matrix took 464 s of the suite on lavapipe (2 cores).
    matrix(BackendChoice::Gpu, 12, &[Kind::Chat]);
}
