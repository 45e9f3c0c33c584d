//! The users' workload, end to end on one engine: a long sampled thinking request (1,000+
//! thinking tokens at temperature 0.6, top_p 0.95), the same request again (Regenerate with
//! the same seed: it must give the same events, reusing the cached prompt), then a second
//! question in the same conversation. Prints what each request did and how fast.
//!
//!     cargo run --release --example long_session -- MODEL.gguf [cpu|gpu] [MIN_THINKING]

use std::time::Instant;

use pensive::backend::block_on;
use pensive::chat::Message;
use pensive::engine::{BackendChoice, Engine, GenerateRequest, LoadOptions, Prompt};
use pensive::generate::{Event, Stats};
use pensive::loader;
use pensive::thinking::ThinkingOptions;

fn run(engine: &mut Engine, prompt: &Prompt, request: &GenerateRequest) -> Result<(Vec<Event>, Stats), String> {
    engine.start(prompt, request.clone()).map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    while let Some(e) = block_on(engine.next_event()).map_err(|e| e.to_string())? {
        events.push(e);
    }
    match events.last() {
        Some(Event::Done { stats }) => {
            let stats = stats.clone();
            Ok((events, stats))
        }
        _ => Err("no done event".into()),
    }
}

fn text(events: &[Event]) -> String {
    events.iter().filter_map(|e| if let Event::Token { text, .. } = e { Some(text.as_str()) } else { None }).collect()
}

/// The events without what differs between two runs of one request: the timings and the
/// cache reuse.
fn comparable(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .map(|e| match e {
            Event::Done { stats } => Event::Done {
                stats: Stats { prefill_s: 0.0, decode_s: 0.0, prefill_tok_s: 0.0, decode_tok_s: 0.0, cached_tokens: 0, processed_tokens: 0, ..stats.clone() },
            },
            e => e.clone(),
        })
        .collect()
}

fn report(name: &str, stats: &Stats, secs: f64) {
    println!(
        "{name}: {} thinking + {} answer tokens, {} continuations, forced exit {}, {} cached prompt tokens, prefill {:.1} tok/s, decode {:.1} tok/s, {secs:.1} s",
        stats.thinking_tokens, stats.answer_tokens, stats.continuations, stats.forced_exit, stats.cached_tokens, stats.prefill_tok_s, stats.decode_tok_s
    );
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or("usage: long_session MODEL.gguf [cpu|gpu] [MIN_THINKING]")?;
    let backend = if args.get(1).map(String::as_str) == Some("gpu") { BackendChoice::Gpu } else { BackendChoice::Cpu };
    let min_thinking: usize = args.get(2).map_or(Ok(1000), |s| s.parse()).map_err(|e| format!("MIN_THINKING: {e}"))?;
    let model = loader::load_gguf_file(std::path::Path::new(path)).map_err(|e| e.to_string())?;
    let mut engine = block_on(Engine::new(model, None, &LoadOptions { backend, max_context: Some(4096), ..LoadOptions::default() }))
        .map_err(|e| e.to_string())?;
    println!("{}", engine.info().map_err(|e| e.to_string())?.backend);
    let request = GenerateRequest {
        temperature: Some(0.6),
        top_p: Some(0.95),
        seed: Some(11),
        max_tokens: Some(min_thinking + min_thinking / 5 + 200),
        thinking: Some(ThinkingOptions {
            open: true,
            min_tokens: min_thinking,
            max_tokens: Some(min_thinking + min_thinking / 5),
            answer_min_tokens: 16,
            ..Default::default()
        }),
        ..Default::default()
    };
    let question = "A train leaves at 9:40 and travels 210 km at 84 km/h. A second train leaves the same \
                    station at 10:05 at 105 km/h on the same track. When and where does it catch up?";
    let first_turn = vec![Message { role: "user".into(), content: question.into() }];
    let prompt = Prompt::Messages(first_turn.clone());

    let t = Instant::now();
    let (first, stats) = run(&mut engine, &prompt, &request)?;
    report("request 1", &stats, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let (again, stats) = run(&mut engine, &prompt, &request)?;
    report("request 2 (same request, same seed)", &stats, t.elapsed().as_secs_f64());
    let same = comparable(&first) == comparable(&again);
    println!("request 2 gave the same events as request 1: {same}");

    let answer = text(&first);
    let mut second_turn = first_turn;
    second_turn.push(Message { role: "assistant".into(), content: answer.clone() });
    second_turn.push(Message { role: "user".into(), content: "And if the second train left at 10:20?".into() });
    let t = Instant::now();
    let (follow_up, stats) = run(&mut engine, &Prompt::Messages(second_turn), &GenerateRequest { seed: Some(12), ..request })?;
    report("request 3 (a second question)", &stats, t.elapsed().as_secs_f64());
    let tail: String = text(&follow_up).chars().rev().take(160).collect::<Vec<_>>().into_iter().rev().collect();
    println!("request 3 ends: {tail:?}");
    if !same {
        return Err("the repeated request differed".into());
    }
    Ok(())
}
