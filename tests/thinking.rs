//! The thinking budget on a scripted model: every path of issue 3, then a property test
//! over random scripted models and random options.

mod scripted;

use std::rc::Rc;

use pensive::backend::{block_on, Backend};
use pensive::generate::{Completion, Event, FinishReason, GenerateOptions, Generation, TextCodec};
use pensive::transcript::Transcript;
use pensive::sampler::{Rng, SamplerOptions};
use pensive::thinking::{
    Anneal, ConfidenceExit, ContinuationOrder, EarlyEnd, ExitReason, Marker, PhaseSampling, Preset, Schedule, Phase, ThinkingController, ThinkingError, ThinkingOptions,
};
use scripted::{ScriptedBackend, ToyCodec, FAVOURED};

/// Logit of the script's runner-up: what greedy picks when the favourite is masked.
const RUNNER_UP: f32 = 5.0;

const PIECES: &[&str] =
    &["a", " b", ".", "\n", "Wait", "Hmm", " So", "Final", " Answer:", "<", "</", "think", ">", "x", "\n\n", " wait"];

/// `<think>`/`</think>` as single special tokens (DeepSeek-R1, Qwen3).
fn token_codec() -> Rc<ToyCodec> {
    Rc::new(ToyCodec::new(&["<eos>", "<think>", "</think>"], PIECES))
}

/// No marker tokens: `<think>` is "<" "think" ">" and `</think>` is "</" "think" ">".
fn text_codec() -> Rc<ToyCodec> {
    Rc::new(ToyCodec::new(&["<eos>"], PIECES))
}

#[derive(Clone, Copy, PartialEq)]
enum EndWith {
    /// The end marker (token or text).
    Marker,
    Eos,
    /// Never ends thinking on its own.
    Never,
}

#[derive(Clone, Copy)]
struct Model {
    /// Thinking: this many "a"s in a row, then an attempt to end.
    run: usize,
    end_with: EndWith,
    /// Opens thinking itself when the sequence has no start marker.
    opens: bool,
    /// With `EndWith::Never`: every `sentence`-th thinking token is "." (for grace).
    sentence: usize,
}

impl Default for Model {
    fn default() -> Self {
        Self { run: 3, end_with: EndWith::Marker, opens: false, sentence: 0 }
    }
}

fn last_occurrence(seq: &[u32], pattern: &[u32]) -> Option<usize> {
    (0..=seq.len().checked_sub(pattern.len())?).rev().find(|&i| &seq[i..i + pattern.len()] == pattern)
}

/// The scripted model: reads the sequence to know its phase, then favours one token (and
/// gives "a" a runner-up logit, so masking an end makes it keep thinking).
fn script(codec: &Rc<ToyCodec>, model: Model) -> ScriptedBackend {
    let c = codec.clone();
    let (start, end): (Vec<u32>, Vec<u32>) = match c.token_id("<think>") {
        Some(s) => (vec![s], vec![c.id("</think>")]),
        None => (c.ids(&["<", "think", ">"]), c.ids(&["</", "think", ">"])),
    };
    let [a, b, dot, lt, slash, think, gt] = ["a", " b", ".", "<", "</", "think", ">"].map(|p| c.id(p));
    let eos = 0;
    let vocab = c.vocab_size();
    ScriptedBackend::new(
        vocab,
        Box::new(move |seq: &[u32]| {
            let last = seq.last().copied();
            let last2 = (seq.len() >= 2).then(|| [seq[seq.len() - 2], seq[seq.len() - 1]]);
            let opened = last_occurrence(seq, &start);
            let next = match opened {
                None if model.opens => {
                    // Spell the start marker.
                    if start.len() == 1 {
                        start[0]
                    } else if last == Some(lt) {
                        think
                    } else if last2 == Some([lt, think]) {
                        gt
                    } else {
                        lt
                    }
                }
                Some(s) if last_occurrence(&seq[s..], &end).is_none() => {
                    // Thinking.
                    if end.len() > 1 && last == Some(slash) {
                        think
                    } else if end.len() > 1 && last2 == Some([slash, think]) {
                        gt
                    } else if model.end_with == EndWith::Never {
                        let n = seq[s..].iter().filter(|&&t| t == a || t == dot).count();
                        if model.sentence > 0 && n % model.sentence == model.sentence - 1 { dot } else { a }
                    } else {
                        let run = seq.iter().rev().take_while(|&&t| t == a).count();
                        match (run >= model.run, model.end_with) {
                            (false, _) => a,
                            (true, EndWith::Eos) => eos,
                            (true, _) => end[0],
                        }
                    }
                }
                // Answer (or never thinking): " b" then end of generation.
                _ => {
                    if last == Some(b) {
                        eos
                    } else {
                        b
                    }
                }
            };
            let mut logits = vec![(next, FAVOURED)];
            if next != a {
                logits.push((a, RUNNER_UP));
            }
            logits
        }),
    )
}

fn options(thinking: ThinkingOptions) -> GenerateOptions {
    GenerateOptions { max_tokens: 200, sampler: SamplerOptions::greedy(), thinking: Some(thinking), ..GenerateOptions::default() }
}

fn run(codec: &Rc<ToyCodec>, backend: &mut ScriptedBackend, prompt: &[u32], options: GenerateOptions) -> Completion {
    let mut t = Transcript::new(&mut *backend).expect("an empty cache");
    let mut generation = Generation::new(&mut t, codec.clone(), prompt, options).expect("valid setup");
    block_on(generation.run_to_end(&mut t)).expect("generation runs")
}

/// The tokens the stream shows, as text with forced tokens in [brackets].
fn transcript(c: &Completion) -> String {
    c.events
        .iter()
        .map(|e| match e {
            Event::Token { text, probe: true, .. } => format!("<{text}>"),
            Event::Token { text, forced: true, .. } => format!("[{text}]"),
            Event::Token { text, .. } => text.clone(),
            Event::Continuation { .. } => "{cont}".into(),
            Event::BudgetExhausted { .. } => "{budget}".into(),
            Event::Phase { phase: Phase::Thinking } => "{think}".into(),
            Event::Phase { phase: Phase::Answer } => "{answer}".into(),
            Event::Done { .. } => "{done}".into(),
            Event::Probe { exit, .. } => format!("{{probe {exit}}}"),
            Event::EarlyExit { .. } => "{exit}".into(),
            Event::Suppressed { text, .. } => format!("{{-{text}}}"),
        })
        .collect()
}

/// The accounting every generation must satisfy.
fn check_accounting(c: &Completion, backend: &ScriptedBackend) {
    let s = &c.stats;
    assert_eq!(s.processed_tokens, backend.fed_tokens(), "processed counts what forward saw");
    assert_eq!(s.processed_tokens, s.prompt_tokens - s.cached_tokens + s.sampled_tokens + s.forced_tokens + s.probe_tokens);
    assert_eq!(backend.kv_len(), s.cached_tokens + s.processed_tokens - s.rolled_back_tokens);
    // The cache holds exactly the transcript: prompt then every kept response token.
    let mut transcript = c.prompt_ids.clone();
    transcript.extend(&c.tokens);
    assert_eq!(backend.cache, transcript);
    assert_eq!(s.response_tokens, c.tokens.len());
    // Events carry exactly the kept tokens (a stop string's tokens leave the transcript).
    let event_ids: Vec<u32> = c
        .events
        .iter()
        .filter_map(|e| if let Event::Token { id, probe: false, .. } = e { Some(*id) } else { None })
        .collect();
    assert_eq!(event_ids, c.tokens, "token events (probes aside) = kept response tokens");
    assert!(matches!(c.events.last(), Some(Event::Done { .. })));
    // The counts are the events' own: recounted here, never read from the controller.
    let recount = Recount::of(&c.events);
    assert_eq!((s.thinking_tokens, s.answer_tokens, s.continuations), (recount.thinking, recount.answer, recount.continuations));
    assert_eq!((s.probes, s.probe_tokens, s.words_suppressed), (recount.probes, recount.probe_tokens, recount.suppressed));
    assert_eq!((s.confidence_exit, s.schedule_exit), (recount.confidence_exit, recount.schedule_exit));
}

/// Thinking, answer and continuation counts as a client would take them from the events.
#[derive(Debug, Default, PartialEq)]
struct Recount {
    thinking: usize,
    answer: usize,
    continuations: usize,
    closed: bool,
    probes: usize,
    probe_tokens: usize,
    suppressed: usize,
    confidence_exit: bool,
    schedule_exit: bool,
}

impl Recount {
    fn of(events: &[Event]) -> Self {
        let mut r = Recount::default();
        for e in events {
            match e {
                Event::Token { probe: true, .. } => r.probe_tokens += 1,
                Event::Token { phase: Phase::Thinking, marker: false, .. } => r.thinking += 1,
                Event::Token { phase: Phase::Answer, marker: false, .. } => r.answer += 1,
                Event::Probe { .. } => r.probes += 1,
                Event::Suppressed { .. } => r.suppressed += 1,
                Event::EarlyExit { reason: ExitReason::Confidence, .. } => r.confidence_exit = true,
                Event::EarlyExit { reason: ExitReason::Schedule, .. } => r.schedule_exit = true,
                Event::Continuation { .. } => r.continuations += 1,
                Event::Phase { phase: Phase::Answer } => r.closed = true,
                _ => {}
            }
        }
        r
    }
}

fn continuation_texts(c: &Completion) -> Vec<(String, usize)> {
    c.events
        .iter()
        .filter_map(|e| if let Event::Continuation { text, round } = e { Some((text.clone(), *round)) } else { None })
        .collect()
}

fn opened_prompt(codec: &Rc<ToyCodec>) -> Vec<u32> {
    match codec.token_id("<think>") {
        Some(t) => vec![codec.id("x"), t, codec.id("\n")],
        None => codec.ids(&["x", "<", "think", ">", "\n"]),
    }
}

#[test]
fn early_end_becomes_cycled_continuations() {
    let codec = token_codec();
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions {
        min_tokens: 10,
        continuations: vec!["Wait".into(), "Hmm".into()],
        ..ThinkingOptions::default()
    };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaa{cont}[Wait]aaa{cont}[Hmm]aaa</think>{answer} b{done}");
    assert_eq!(continuation_texts(&c), [("Wait".to_string(), 1), ("Hmm".to_string(), 2)]);
    let s = &c.stats;
    assert_eq!((s.thinking_tokens, s.answer_tokens, s.continuations), (11, 1, 2));
    // Two replaced ends and the EOS that stopped: drawn, never fed.
    assert_eq!((s.sampled_tokens, s.forced_tokens, s.dropped_tokens), (11, 2, 3));
    assert_eq!(s.finish_reason, Some(FinishReason::EndOfGeneration));
    assert!(!s.forced_exit);
    check_accounting(&c, &backend);
    // No recomputation: each continuation is fed alone, in one call, after the kept tokens.
    let wait = codec.id("Wait");
    assert!(backend.calls.iter().any(|(t, n)| t == &[wait] && *n == 1));
    // The end marker carries the thinking phase; the answer the answer phase.
    let phases: Vec<(u32, Phase)> = c
        .events
        .iter()
        .filter_map(|e| if let Event::Token { id, phase, .. } = e { Some((*id, *phase)) } else { None })
        .collect();
    assert_eq!(phases[phases.len() - 2], (codec.id("</think>"), Phase::Thinking));
    assert_eq!(phases[phases.len() - 1], (codec.id(" b"), Phase::Answer));
}

#[test]
fn random_order_is_seeded() {
    let codec = token_codec();
    let opts = |seed| ThinkingOptions {
        min_tokens: 40,
        continuations: vec!["Wait".into(), "Hmm".into(), " So".into()],
        continuation_order: ContinuationOrder::Random,
        seed: Some(seed),
        ..ThinkingOptions::default()
    };
    let texts = |seed| {
        let mut backend = script(&codec, Model::default());
        let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts(seed)));
        check_accounting(&c, &backend);
        assert!(c.stats.thinking_tokens >= 40);
        continuation_texts(&c).into_iter().map(|(t, _)| t).collect::<Vec<_>>()
    };
    let first = texts(1);
    assert_eq!(first.len(), 10, "40 tokens at 3 + 1 per round");
    assert_eq!(first, texts(1), "same seed, same order");
    let others: Vec<Vec<String>> = (2..6).map(texts).collect();
    assert!(others.iter().any(|o| *o != first), "different seeds should give different orders");
    assert!(first.iter().any(|t| t != &first[0]), "a random order that never changes: {first:?}");
}

#[test]
fn max_continuations_then_masking() {
    let codec = token_codec();
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { min_tokens: 10, max_continuations: Some(1), ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    // One "Wait" at 3, then the end (the model's favourite) is masked at 7, 8 and 9.
    assert_eq!(transcript(&c), "{think}aaa{cont}[Wait]aaaaaa</think>{answer} b{done}");
    assert_eq!((c.stats.thinking_tokens, c.stats.continuations, c.stats.ends_suppressed), (10, 1, 3));
    check_accounting(&c, &backend);
}

#[test]
fn suppress_masks_without_inserting() {
    let codec = token_codec();
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { min_tokens: 5, on_early_end: EarlyEnd::Suppress, ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaaaa</think>{answer} b{done}");
    assert_eq!((c.stats.thinking_tokens, c.stats.continuations, c.stats.ends_suppressed), (5, 0, 2));
    check_accounting(&c, &backend);
}

#[test]
fn ignore_ends_replaces_ends_past_the_minimum() {
    let codec = token_codec();
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { ignore_ends: 2, ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaa{cont}[Wait]aaa{cont}[Wait]aaa</think>{answer} b{done}");
    assert_eq!(c.stats.continuations, 2);
    check_accounting(&c, &backend);
}

#[test]
fn max_budget_cuts_at_once_without_grace() {
    let codec = token_codec();
    let mut backend = script(&codec, Model { end_with: EndWith::Never, ..Model::default() });
    let opts = ThinkingOptions { max_tokens: Some(6), ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaaaaa{budget}[</think>]{answer} b{done}");
    assert!(c.events.contains(&Event::BudgetExhausted { thinking_tokens: 6 }));
    assert!(c.stats.forced_exit);
    assert_eq!((c.stats.thinking_tokens, c.stats.forced_tokens), (6, 1));
    check_accounting(&c, &backend);
}

#[test]
fn grace_tokens_run_to_a_sentence_end_or_their_limit() {
    let codec = token_codec();
    let model = Model { end_with: EndWith::Never, sentence: 4, ..Model::default() };
    // Thinking reads "aaa.aaa.": the cap at 5 waits for the "." at 8 with a grace of 5 ...
    let mut backend = script(&codec, model);
    let opts = ThinkingOptions { max_tokens: Some(5), grace_tokens: 5, ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaa.a{budget}aa.[</think>]{answer} b{done}");
    assert_eq!(c.stats.thinking_tokens, 8);
    check_accounting(&c, &backend);
    // ... and cuts at 5 + 2 with a grace of 2.
    let mut backend = script(&codec, model);
    let opts = ThinkingOptions { max_tokens: Some(5), grace_tokens: 2, ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaa.a{budget}aa[</think>]{answer} b{done}");
    assert_eq!(c.stats.thinking_tokens, 7);
    check_accounting(&c, &backend);
}

#[test]
fn forced_exit_with_wrap_up_and_answer_prefix() {
    let codec = token_codec();
    let mut backend = script(&codec, Model { end_with: EndWith::Never, ..Model::default() });
    let opts = ThinkingOptions {
        max_tokens: Some(4),
        wrap_up: Some("\n So".into()),
        answer_prefix: Some("Final Answer:".into()),
        ..ThinkingOptions::default()
    };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts.clone()));
    // The wrap-up is part of the budget: the exit starts two tokens early.
    assert_eq!(transcript(&c), "{think}aa{budget}[\n][ So][</think>]{answer}[Final][ Answer:] b{done}");
    let s = &c.stats;
    // The wrap-up is inside thinking; the prefix is answer.
    assert_eq!((s.thinking_tokens, s.answer_tokens, s.forced_tokens), (4, 3, 5));
    // The whole forced exit went to the model in one forward.
    let exit = codec.ids(&["\n", " So", "</think>", "Final", " Answer:"]);
    assert!(backend.calls.iter().any(|(t, n)| t.ends_with(&exit) && *n == 1), "{:?}", backend.calls);
    check_accounting(&c, &backend);
    // A wrap-up longer than the budget is left out (Qwen3's at a budget of 0).
    let mut backend = script(&codec, Model { end_with: EndWith::Never, ..Model::default() });
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(ThinkingOptions { max_tokens: Some(1), ..opts }));
    assert_eq!(transcript(&c), "{think}a{budget}[</think>]{answer}[Final][ Answer:] b{done}");
    check_accounting(&c, &backend);
}

#[test]
fn eos_inside_thinking_is_an_end_attempt() {
    let codec = token_codec();
    let model = Model { end_with: EndWith::Eos, ..Model::default() };
    // Early: replaced by a continuation like an end marker.
    let mut backend = script(&codec, model);
    let opts = ThinkingOptions { min_tokens: 5, answer_prefix: Some("Final".into()), ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    // Accepted: the engine closes thinking itself and the model answers.
    assert_eq!(transcript(&c), "{think}aaa{cont}[Wait]aaa[</think>]{answer}[Final] b{done}");
    assert!(!c.stats.forced_exit);
    assert_eq!(c.stats.thinking_tokens, 7);
    assert_eq!(c.stats.finish_reason, Some(FinishReason::EndOfGeneration));
    check_accounting(&c, &backend);
    // Under min with no continuation allowed: EOS is masked.
    let mut backend = script(&codec, model);
    let opts = ThinkingOptions { min_tokens: 5, on_early_end: EarlyEnd::Suppress, ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaaaa[</think>]{answer} b{done}");
    check_accounting(&c, &backend);
}

#[test]
fn string_end_marker_is_rolled_back_before_a_continuation() {
    let codec = text_codec();
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { min_tokens: 8, ..ThinkingOptions::default() };
    let prompt = opened_prompt(&codec);
    let controller = ThinkingController::new(opts.clone(), &*codec, &prompt, 0).unwrap();
    assert_eq!(controller.end_marker(), &Marker::Text("</think>".into()));
    assert!(controller.opened_by_prompt());

    let c = run(&codec, &mut backend, &prompt, options(opts));
    // "</" "think" were fed, then taken back when ">" completed the marker early: the
    // stream never showed them.
    assert_eq!(transcript(&c), "{think}aaa{cont}[Wait]aaa{cont}[Wait]aaa</think>{answer} b{done}");
    let s = &c.stats;
    assert_eq!(s.rolled_back_tokens, 4);
    assert_eq!(s.thinking_tokens, 11, "marker tokens are not thinking tokens");
    assert_eq!(backend.truncations.len(), 2);
    check_accounting(&c, &backend);
    // The accepted marker's three tokens are tagged thinking, then the phase changes.
    let tail: Vec<&Event> = c.events.iter().rev().take(6).collect();
    assert!(matches!(tail[2], Event::Phase { phase: Phase::Answer }));
    for e in &tail[3..6] {
        assert!(matches!(e, Event::Token { phase: Phase::Thinking, forced: false, .. }), "{e:?}");
    }
}

#[test]
fn string_end_marker_under_min_without_continuation_is_resampled() {
    let codec = text_codec();
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { min_tokens: 5, on_early_end: EarlyEnd::Suppress, ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    // The early marker at 3 is taken back and its "</" stays banned until the minimum (no
    // logits are recomputed: the saved ones are reused); at 4 the ban masks it outright.
    assert_eq!(transcript(&c), "{think}aaaaa</think>{answer} b{done}");
    let s = &c.stats;
    assert_eq!((s.thinking_tokens, s.continuations, s.ends_suppressed, s.rolled_back_tokens), (5, 0, 2, 2));
    check_accounting(&c, &backend);
}

#[test]
fn string_markers_for_forced_exit_and_model_opened_thinking() {
    let codec = text_codec();
    let mut backend = script(&codec, Model { end_with: EndWith::Never, opens: true, ..Model::default() });
    let opts = ThinkingOptions { max_tokens: Some(3), ..ThinkingOptions::default() };
    let prompt = codec.ids(&["x"]);
    let c = run(&codec, &mut backend, &prompt, options(opts));
    // The model spells "<think>": the phase event precedes the marker, tagged thinking.
    assert_eq!(transcript(&c), "{think}<think>aaa{budget}[</][think][>]{answer} b{done}");
    let first_token = c.events.iter().find(|e| matches!(e, Event::Token { .. })).unwrap();
    assert!(matches!(first_token, Event::Token { phase: Phase::Thinking, .. }));
    assert_eq!((c.stats.thinking_tokens, c.stats.answer_tokens), (3, 1));
    check_accounting(&c, &backend);
}

#[test]
fn model_opens_thinking_with_a_token_marker() {
    let codec = token_codec();
    let mut backend = script(&codec, Model { opens: true, ..Model::default() });
    let opts = ThinkingOptions { min_tokens: 4, ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &codec.ids(&["x"]), options(opts));
    assert_eq!(transcript(&c), "{think}<think>aaa{cont}[Wait]aaa</think>{answer} b{done}");
    check_accounting(&c, &backend);
}

#[test]
fn open_forces_the_start_marker_with_the_prompt() {
    let codec = token_codec();
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { open: true, ..ThinkingOptions::default() };
    let prompt = codec.ids(&["x"]);
    let c = run(&codec, &mut backend, &prompt, options(opts));
    assert_eq!(transcript(&c), "{think}[<think>]aaa</think>{answer} b{done}");
    // Prompt and forced start marker are the prefill: all but the last token, then it alone.
    assert_eq!(backend.calls[..2], [(vec![codec.id("x")], 0), (vec![codec.id("<think>")], 1)]);
    check_accounting(&c, &backend);
}

#[test]
fn a_model_that_never_opens_thinking_just_answers() {
    let codec = token_codec();
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { min_tokens: 10, max_tokens: Some(20), answer_max_tokens: Some(5), ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &codec.ids(&["x"]), options(opts));
    assert_eq!(transcript(&c), " b{done}");
    assert_eq!((c.stats.thinking_tokens, c.stats.answer_tokens), (0, 1));
    check_accounting(&c, &backend);
}

#[test]
fn answer_max_tokens_stops_the_answer() {
    let codec = token_codec();
    // After thinking the script answers " b" then EOS; a cap of 2 (prefix included) stops before the EOS draw.
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { answer_prefix: Some("Final".into()), answer_max_tokens: Some(2), ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaa</think>{answer}[Final] b{done}");
    assert_eq!(c.stats.finish_reason, Some(FinishReason::AnswerMaxTokens));
    check_accounting(&c, &backend);
}

#[test]
fn options_validation_and_serde() {
    let bad = [
        ("min_tokens", ThinkingOptions { min_tokens: 5, max_tokens: Some(4), ..ThinkingOptions::default() }),
        ("continuations", ThinkingOptions { continuations: vec!["".into()], ..ThinkingOptions::default() }),
        ("ignore_ends", ThinkingOptions { ignore_ends: 3, max_continuations: Some(2), ..ThinkingOptions::default() }),
        ("ignore_ends", ThinkingOptions { ignore_ends: 1, continuations: vec![], ..ThinkingOptions::default() }),
        ("wrap_up", ThinkingOptions { wrap_up: Some("".into()), ..ThinkingOptions::default() }),
        ("end", ThinkingOptions { end: Some(" ".into()), ..ThinkingOptions::default() }),
        ("end", ThinkingOptions { start: Some("T".into()), end: Some("T".into()), ..ThinkingOptions::default() }),
    ];
    for (name, options) in bad {
        match options.validate() {
            Err(ThinkingError::InvalidOption { option, .. }) => assert_eq!(option, name),
            other => panic!("{name}: expected InvalidOption, got {other:?}"),
        }
    }
    let parsed: ThinkingOptions = serde_json::from_str(
        r#"{"min_tokens": 3, "max_tokens": 9, "continuation_order": "random", "on_early_end": "suppress"}"#,
    )
    .unwrap();
    assert_eq!(parsed.continuation_order, ContinuationOrder::Random);
    assert_eq!(parsed.on_early_end, EarlyEnd::Suppress);
    assert_eq!(parsed.continuations, ["Wait"]);
    assert!(serde_json::from_str::<ThinkingOptions>(r#"{"min": 3}"#).is_err());
    // A continuation the vocabulary cannot spell is a typed error at setup.
    let codec = token_codec();
    let opts = ThinkingOptions { continuations: vec!["¿".into()], ..ThinkingOptions::default() };
    assert!(matches!(ThinkingController::new(opts, &*codec, &[1], 0), Err(ThinkingError::Encode { .. })));
}

#[test]
fn events_serialize_as_the_issue_specifies() {
    let json = |e: &Event| serde_json::to_string(e).unwrap();
    assert_eq!(
        json(&Event::Token { id: 7, text: "Wait".into(), phase: Phase::Thinking, forced: true, marker: false, probe: false, logprob: None, top_logprobs: None }),
        r#"{"type":"token","id":7,"text":"Wait","phase":"thinking","forced":true,"marker":false}"#
    );
    assert_eq!(json(&Event::Continuation { text: "Wait".into(), round: 2 }), r#"{"type":"continuation","text":"Wait","round":2}"#);
    assert_eq!(json(&Event::BudgetExhausted { thinking_tokens: 9 }), r#"{"type":"budget_exhausted","thinking_tokens":9}"#);
    assert_eq!(json(&Event::Phase { phase: Phase::Answer }), r#"{"type":"phase","phase":"answer"}"#);
    let done = serde_json::to_value(Event::Done { stats: Default::default() }).unwrap();
    assert_eq!(done["type"], "done");
    for key in [
        "prompt_tokens", "sampled_tokens", "forced_tokens", "processed_tokens", "thinking_tokens", "answer_tokens",
        "continuations", "ends_suppressed", "forced_exit", "prefill_tok_s", "decode_tok_s", "finish_reason", "seed",
    ] {
        assert!(done["stats"].get(key).is_some(), "done.stats lacks {key}");
    }
}

// ----------------------------------------------------------------------------
// Property test: random scripted models, random options.

fn random_model(codec: &Rc<ToyCodec>, salt: u64) -> ScriptedBackend {
    scripted::random_model(codec, salt, &["a", " b", ".", "\n", "x", "<", "</", "think", "Wait", "\n\n", " wait", "Hmm"])
}

fn random_options(rng: &mut Rng) -> ThinkingOptions {
    let min = rng.below(15);
    let pick = |rng: &mut Rng, p: f64| rng.uniform() < p;
    let all = ["Wait", "Hmm", "\n So"];
    let n = 1 + rng.below(3);
    ThinkingOptions {
        min_tokens: min,
        max_tokens: pick(rng, 0.7).then(|| min + rng.below(20)),
        continuations: all[..n].iter().map(|s| s.to_string()).collect(),
        continuation_order: if pick(rng, 0.5) { ContinuationOrder::Random } else { ContinuationOrder::Cycle },
        ignore_ends: rng.below(3),
        max_continuations: pick(rng, 0.5).then(|| 2 + rng.below(4)),
        on_early_end: if pick(rng, 0.3) { EarlyEnd::Suppress } else { EarlyEnd::Continue },
        grace_tokens: if pick(rng, 0.5) { rng.below(6) } else { 0 },
        wrap_up: pick(rng, 0.3).then(|| "\n So".to_string()),
        answer_prefix: pick(rng, 0.3).then(|| "Final Answer:".to_string()),
        answer_max_tokens: pick(rng, 0.3).then(|| 1 + rng.below(10)),
        open: pick(rng, 0.5),
        seed: Some(rng.next_u64()),
        suppress: if pick(rng, 0.3) { vec!["wait".into()] } else { Vec::new() },
        confidence_exit: pick(rng, 0.4).then(|| ConfidenceExit {
            probe: "\nFinal Answer:".into(),
            max_probe_tokens: 1 + rng.below(4),
            threshold: 0.1 + rng.uniform() * 0.6,
            triggers: vec!["Wait".into(), ".".into()],
        }),
        answer_min_tokens: if pick(rng, 0.3) { rng.below(6) } else { 0 },
        thinking_sampling: pick(rng, 0.2).then(|| PhaseSampling { temperature: Some(1.5), ..PhaseSampling::default() }),
        ..ThinkingOptions::default()
    }
}

/// AlphaOne needs a cap; the property test adds it to half the capped cases.
fn with_random_schedule(rng: &mut Rng, mut o: ThinkingOptions) -> ThinkingOptions {
    if o.max_tokens.is_some() && !o.continuations.is_empty() && rng.uniform() < 0.5 {
        let anneal = if rng.uniform() < 0.5 { Anneal::Constant } else { Anneal::Linear };
        o.schedule = Some(Schedule { alpha: rng.uniform() * 0.6, probability: rng.uniform(), anneal });
    }
    o
}

#[test]
fn property_budget_control_accounting_and_determinism() {
    const CASES: u64 = 300;
    let mut rng = Rng::new(2025);
    // forced exits, continuations, rollbacks, masked ends, probes, confident exits,
    // scheduled exits, suppressed words
    let mut stats_seen = [0usize; 8];
    for case in 0..CASES {
        let codec = if rng.uniform() < 0.5 { token_codec() } else { text_codec() };
        let thinking = random_options(&mut rng);
        let thinking = with_random_schedule(&mut rng, thinking);
        let prompt = if rng.uniform() < 0.5 { opened_prompt(&codec) } else { codec.ids(&["x"]) };
        let sampler = if rng.uniform() < 0.5 {
            SamplerOptions::greedy()
        } else {
            SamplerOptions { temperature: 0.9, top_k: 0, top_p: 1.0, min_p: 0.0, seed: rng.next_u64(), ..SamplerOptions::default() }
        };
        let salt = rng.next_u64();
        let opts = GenerateOptions { max_tokens: 400, sampler, thinking: Some(thinking.clone()), ..GenerateOptions::default() };
        eprintln!("case {case}: {thinking:?} prompt {prompt:?} sampler {:?}", opts.sampler);
        let once = || {
            let mut backend = random_model(&codec, salt);
            let c = run(&codec, &mut backend, &prompt, opts.clone());
            check_accounting(&c, &backend);
            c
        };
        let c = once();
        let ctx = format!("case {case}: {thinking:?}\n{}", transcript(&c));
        assert_eq!(strip_timing(c.clone()), strip_timing(once()), "{ctx}: not deterministic");
        let s = &c.stats;
        let closed = c.events.iter().any(|e| matches!(e, Event::Phase { phase: Phase::Answer }));
        let opened = c.events.iter().any(|e| matches!(e, Event::Phase { phase: Phase::Thinking }));
        // The guarantees, on counts taken from the events (check_accounting ties the stats
        // to them): thinking in [min, max + grace + wrap-up] once it closed.
        let thinking_tokens = Recount::of(&c.events).thinking;
        if opened && closed {
            assert!(thinking_tokens >= thinking.min_tokens, "{ctx}: thinking below min");
        }
        if let Some(max) = thinking.max_tokens {
            // The wrap-up is part of the budget.
            assert!(thinking_tokens <= max + thinking.grace_tokens, "{ctx}: thinking above max");
        }
        if let Some(cap) = thinking.max_continuations {
            assert!(s.continuations <= cap, "{ctx}");
        }
        stats_seen[0] += s.forced_exit as usize;
        stats_seen[1] += (s.continuations > 0) as usize;
        stats_seen[2] += (s.rolled_back_tokens > 0) as usize;
        stats_seen[3] += (s.ends_suppressed > 0) as usize;
        stats_seen[4] += (s.probes > 0) as usize;
        stats_seen[5] += s.confidence_exit as usize;
        stats_seen[6] += s.schedule_exit as usize;
        stats_seen[7] += (s.words_suppressed > 0) as usize;
        // Probes leave nothing behind: the cache is the transcript (check_accounting), and
        // no kept token is a probe's.
        if thinking.confidence_exit.is_none() {
            assert_eq!(s.probes, 0, "{ctx}");
        }
    }
    // The random cases must exercise every mechanism, or the property says little.
    eprintln!("paths exercised: {stats_seen:?}");
    assert!(stats_seen.iter().all(|&n| n >= 5), "paths exercised: {stats_seen:?}");
}

/// Timings differ between runs; everything else must not.
fn strip_timing(mut c: Completion) -> Completion {
    let zero = |s: &mut pensive::generate::Stats| {
        (s.prefill_s, s.decode_s, s.prefill_tok_s, s.decode_tok_s) = (0.0, 0.0, 0.0, 0.0);
        (s.cached_tokens, s.processed_tokens) = (0, 0);
    };
    zero(&mut c.stats);
    for e in &mut c.events {
        if let Event::Done { stats } = e {
            zero(stats);
        }
    }
    c
}

// ----------------------------------------------------------------------------
// Progress and stated guarantees (issue 8)

/// A vocabulary with many spellings of `</think>` (and of its pieces), no marker tokens.
fn spelling_codec() -> Rc<ToyCodec> {
    Rc::new(ToyCodec::new(
        &["<eos>"],
        &["a", " b", "\n", "Wait", "<", "</", "/", "th", "ink", "think", ">", "ink>", "</think", "/think>", "</th", "x<", " <", "k>", "k"],
    ))
}

/// In thinking, always tries to complete `</think>`: of the tokens that extend the longest
/// marker prefix the text ends with (or start one), the longest gets the highest logit, the
/// others descending below it, EOS next, "a" last. Masking one spelling just brings the next.
fn marker_speller(codec: &Rc<ToyCodec>) -> ScriptedBackend {
    let c = codec.clone();
    const MARKER: &str = "</think>";
    let pieces: Vec<(u32, String)> = (1..c.vocab_size() as u32).map(|id| (id, c.decode(&[id]))).collect();
    let a = c.id("a");
    let b = c.id(" b");
    let opened = c.ids(&["<", "think", ">"]);
    ScriptedBackend::new(
        c.vocab_size(),
        Box::new(move |seq: &[u32]| {
            let Some(open) = last_occurrence(seq, &opened) else { return vec![(a, FAVOURED)] };
            let text = c.decode(&seq[open + opened.len()..]);
            if text.contains(MARKER) {
                // Answer: " b" then EOS.
                return vec![(if seq.last() == Some(&b) { 0 } else { b }, FAVOURED)];
            }
            // The longest suffix of the text that is a proper prefix of the marker.
            let have = (0..MARKER.len()).rev().find(|&k| text.ends_with(&MARKER[..k])).unwrap_or(0);
            let mut moves: Vec<(u32, usize)> = Vec::new();
            for (id, piece) in &pieces {
                let extends = MARKER[have..].starts_with(piece.as_str()) || piece.starts_with(&MARKER[have..]);
                // Or a piece that starts the marker afresh after some text ("x<").
                let starts = (1..=piece.len()).any(|k| piece.is_char_boundary(piece.len() - k) && MARKER.starts_with(&piece[piece.len() - k..]) && piece.len() > k);
                if extends || starts {
                    moves.push((*id, piece.len()));
                }
            }
            moves.sort_by_key(|&(id, len)| (std::cmp::Reverse(len), id));
            let mut logits: Vec<(u32, f32)> = moves.iter().enumerate().map(|(i, &(id, _))| (id, FAVOURED - 0.01 * i as f32)).collect();
            logits.push((0, 2.0)); // EOS
            logits.push((a, 1.0));
            logits
        }),
    )
}

#[test]
fn a_model_that_spells_the_end_marker_in_ever_new_ways_still_finishes() {
    let codec = spelling_codec();
    let prompt = codec.ids(&["a", "<", "think", ">", "\n"]);
    let marker_len = "</think>".len();
    for on_early_end in [EarlyEnd::Suppress, EarlyEnd::Continue] {
        for min_tokens in [4, 32] {
            let max_tokens = 64;
            let mut backend = marker_speller(&codec);
            let opts = ThinkingOptions { min_tokens, on_early_end, max_continuations: Some(0), ..ThinkingOptions::default() };
            let c = run(&codec, &mut backend, &prompt, GenerateOptions { max_tokens, ..options(opts) });
            let ctx = format!("{on_early_end:?} min {min_tokens}: {}", transcript(&c));
            check_accounting(&c, &backend);
            // Every forward either kept a token or was one of at most MAX_TAKE_BACKS
            // take-backs of at most a marker's worth of tokens.
            let bound = max_tokens + pensive::thinking::MAX_TAKE_BACKS * marker_len + 1;
            eprintln!("{ctx}\n  forwards {} (bound {bound}), take-backs rolled back {}", backend.calls.len(), c.stats.rolled_back_tokens);
            assert!(backend.calls.len() <= bound, "{ctx}: {} forwards", backend.calls.len());
            let recount = Recount::of(&c.events);
            assert!(recount.closed, "{ctx}: thinking never closed");
            assert!(recount.thinking >= min_tokens, "{ctx}: thinking {} < min", recount.thinking);
            assert!(c.stats.rolled_back_tokens > 0, "{ctx}: the marker was never even tried early");
        }
    }
}

#[test]
fn an_end_of_generation_under_min_is_masked_or_continued_never_looped() {
    let codec = token_codec();
    // Favours EOS from the second thinking token on.
    let mut backend = script(&codec, Model { run: 1, end_with: EndWith::Eos, ..Model::default() });
    let opts = ThinkingOptions { min_tokens: 20, on_early_end: EarlyEnd::Suppress, ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    check_accounting(&c, &backend);
    let recount = Recount::of(&c.events);
    assert!(recount.closed && recount.thinking >= 20, "{}", transcript(&c));
    assert!(backend.calls.len() <= 200 + 1);
}

#[test]
fn max_tokens_too_small_for_the_thinking_minimum_is_refused() {
    let codec = token_codec();
    let mut backend = script(&codec, Model::default());
    let mut t = Transcript::new(&mut backend).unwrap();
    let opts = ThinkingOptions { min_tokens: 30, ..ThinkingOptions::default() };
    // Opened by the prompt: 30 thinking tokens and the end marker need 31.
    let err = Generation::new(&mut t, codec.clone(), &opened_prompt(&codec), GenerateOptions { max_tokens: 30, ..options(opts.clone()) });
    assert!(matches!(err, Err(pensive::generate::GenerateError::InvalidOption { option: "max_tokens", .. })));
    assert!(Generation::new(&mut t, codec.clone(), &opened_prompt(&codec), GenerateOptions { max_tokens: 31, ..options(opts.clone()) }).is_ok());
    // Forced open: the start marker needs one more.
    let open = ThinkingOptions { open: true, ..opts };
    let x = codec.ids(&["x"]);
    assert!(Generation::new(&mut t, codec.clone(), &x, GenerateOptions { max_tokens: 31, ..options(open.clone()) }).is_err());
    assert!(Generation::new(&mut t, codec.clone(), &x, GenerateOptions { max_tokens: 32, ..options(open) }).is_ok());
}

#[test]
fn stop_strings_wait_for_the_answer_unless_asked() {
    let codec = token_codec();
    let prompt = opened_prompt(&codec);
    let stop = |in_thinking| GenerateOptions {
        stop: vec!["a".into()],
        stop_in_thinking: in_thinking,
        ..options(ThinkingOptions::default())
    };
    let mut backend = script(&codec, Model::default());
    let c = run(&codec, &mut backend, &prompt, stop(false));
    assert_eq!(transcript(&c), "{think}aaa</think>{answer} b{done}", "\"a\" in thinking does not stop");
    assert_eq!(c.stats.finish_reason, Some(FinishReason::EndOfGeneration));
    check_accounting(&c, &backend);
    let mut backend = script(&codec, Model::default());
    let c = run(&codec, &mut backend, &prompt, stop(true));
    assert_eq!(transcript(&c), "{think}{done}");
    assert_eq!(c.stats.finish_reason, Some(FinishReason::StopString));
    check_accounting(&c, &backend);
    // In the answer a stop string stops, and the marker before it never matches.
    let mut backend = script(&codec, Model::default());
    let answer_stop = GenerateOptions { stop: vec!["a b".into(), "k> b".into()], ..options(ThinkingOptions::default()) };
    let c = run(&codec, &mut backend, &prompt, answer_stop);
    assert_eq!(c.stats.finish_reason, Some(FinishReason::EndOfGeneration), "{}", transcript(&c));
}

#[test]
fn a_context_that_fills_during_a_forced_insertion_ends_with_counts_matching_the_events() {
    let codec = token_codec();
    let prompt = opened_prompt(&codec); // 3 tokens
    for context in 6..=12 {
        let mut backend = script(&codec, Model::default());
        backend.max_context = context;
        let opts = ThinkingOptions {
            min_tokens: 10,
            continuations: vec!["Wait So".into()], // two tokens
            answer_prefix: Some("Final Answer:".into()),
            ..ThinkingOptions::default()
        };
        let c = run(&codec, &mut backend, &prompt, options(opts));
        let ctx = format!("context {context}: {}", transcript(&c));
        check_accounting(&c, &backend);
        assert_eq!(c.stats.finish_reason, Some(FinishReason::ContextFull), "{ctx}");
        assert!(c.prompt_ids.len() + c.tokens.len() <= context, "{ctx}");
        // Every continuation announced was inserted whole.
        let inserted = c.events.iter().filter(|e| matches!(e, Event::Token { text, forced: true, .. } if text == "Wait")).count();
        assert_eq!(inserted, c.stats.continuations, "{ctx}");
    }
}

#[test]
fn repeated_and_extended_requests_on_one_transcript_equal_fresh_ones() {
    // Greedy and seeded sampling; prompts that open thinking, force it open, or never think.
    let codec = token_codec();
    let a = opened_prompt(&codec);
    let b = codec.ids(&["x", "x"]);
    for (case, seed) in [(0, None), (1, Some(7u64)), (2, Some(8))] {
        let sampler = match seed {
            None => SamplerOptions::greedy(),
            Some(seed) => SamplerOptions { temperature: 0.7, seed, ..SamplerOptions::default() },
        };
        let thinking = ThinkingOptions { min_tokens: 6, max_tokens: Some(12), open: case == 2, ..ThinkingOptions::default() };
        let opts = GenerateOptions { max_tokens: 40, sampler, thinking: Some(thinking), ..GenerateOptions::default() };
        let fresh = |prompt: &[u32]| {
            let mut backend = random_model(&codec, 99);
            strip_timing(run(&codec, &mut backend, prompt, opts.clone()))
        };
        let mut backend = random_model(&codec, 99);
        let mut t = Transcript::new(&mut backend).unwrap();
        let mut go = |prompt: &[u32]| {
            let mut g = Generation::new(&mut t, codec.clone(), prompt, opts.clone()).unwrap();
            let c = block_on(g.run_to_end(&mut t)).unwrap();
            assert!(t.check());
            c
        };
        // A; A again; B then A; A with a longer prefix (A's own exchange, then more).
        let first = go(&a);
        assert_eq!(strip_timing(first.clone()), fresh(&a), "case {case}: A");
        let again = go(&a);
        assert!(again.stats.cached_tokens > 0);
        assert_eq!(strip_timing(again), fresh(&a), "case {case}: A again");
        go(&b);
        assert_eq!(strip_timing(go(&a)), fresh(&a), "case {case}: B then A");
        let mut longer = a.clone();
        longer.extend(&first.tokens);
        longer.extend(codec.ids(&["x", "<think>", "\n"]));
        go(&a);
        let extended = go(&longer);
        assert!(extended.stats.cached_tokens >= a.len(), "case {case}: the first exchange was reused");
        assert_eq!(strip_timing(extended), fresh(&longer), "case {case}: A extended");
    }
}

#[test]
fn a_forced_exit_takes_back_a_half_written_end_marker_unless_thinking_would_fall_under_min() {
    let codec = text_codec();
    // "aaa" then "</" "think" ">": the cap of 4 falls on "</".
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { max_tokens: Some(4), ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaa{budget}[</][think][>]{answer} b{done}");
    assert_eq!((c.stats.thinking_tokens, c.stats.dropped_tokens, c.stats.rolled_back_tokens), (3, 2, 0));
    assert!(c.events.contains(&Event::BudgetExhausted { thinking_tokens: 3 }), "the announcement counts what stays");
    check_accounting(&c, &backend);
    // With min = max = 4 the "</" is thinking the minimum needs: it stays.
    let mut backend = script(&codec, Model::default());
    let opts = ThinkingOptions { min_tokens: 4, max_tokens: Some(4), ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    assert_eq!(transcript(&c), "{think}aaa</{budget}[</][think][>]{answer} b{done}");
    assert_eq!(c.stats.thinking_tokens, 4);
    check_accounting(&c, &backend);
}

#[test]
fn a_forced_exit_that_would_pass_max_tokens_is_not_started() {
    // The fuzzer's finding: the cap falls on the response's last allowed token, and the exit
    // (wrap-up + end marker) would have made the response longer than max_tokens.
    let codec = token_codec();
    let mut backend = script(&codec, Model { end_with: EndWith::Never, ..Model::default() });
    let opts = ThinkingOptions { max_tokens: Some(2), wrap_up: Some(" b b".into()), ..ThinkingOptions::default() };
    let c = run(&codec, &mut backend, &opened_prompt(&codec), GenerateOptions { max_tokens: 2, ..options(opts) });
    assert!(c.tokens.len() <= 2, "{}", transcript(&c));
    assert_eq!(c.stats.finish_reason, Some(FinishReason::MaxTokens));
    assert!(!c.stats.forced_exit, "no exit was written");
    check_accounting(&c, &backend);
}

// ----------------------------------------------------------------------------
// Beyond s1 (issue 12): suppress, confidence exit, schedule, presets, per-phase sampling.

/// Thinks "a", "a", then `word`, forever; answers " b" then EOS. After a probe
/// ("\nFinal Answer:") it answers " b" and EOS; `confident: false` gives " b" four close
/// rivals, so the trial's mean top-1 probability drops to about 0.64.
fn word_thinker(codec: &Rc<ToyCodec>, word: &'static str, confident: bool) -> ScriptedBackend {
    let c = codec.clone();
    let [a, b, word_id, answer] = ["a", " b", word, " Answer:"].map(|p| c.id(p));
    let end = c.id("</think>");
    let runner_ups: Vec<u32> = ["x", ".", "Hmm", " So"].iter().map(|p| c.id(p)).collect();
    ScriptedBackend::new(
        c.vocab_size(),
        Box::new(move |seq: &[u32]| {
            let last = seq.last().copied();
            if seq.contains(&answer) && last == Some(b) {
                return vec![(0, FAVOURED)];
            }
            if last == Some(answer) {
                // The probe's trial: " b", with or without close rivals.
                let mut logits = vec![(b, FAVOURED)];
                if !confident {
                    logits.extend(runner_ups.iter().map(|&id| (id, FAVOURED - 0.5)));
                }
                return logits;
            }
            let closed = seq.contains(&end);
            let next = if closed {
                if last == Some(b) { 0 } else { b }
            } else if seq.len() >= 2 && seq[seq.len() - 2..] == [a, a] {
                word_id
            } else {
                a
            };
            let mut logits = vec![(next, FAVOURED)];
            if next != a {
                logits.push((a, RUNNER_UP));
            }
            logits
        }),
    )
}

fn deer(threshold: f64) -> ConfidenceExit {
    ConfidenceExit { probe: "\nFinal Answer:".into(), max_probe_tokens: 3, threshold, triggers: vec!["Wait".into()] }
}

#[test]
fn suppress_masks_every_single_token_form_while_thinking_only() {
    let codec = token_codec();
    // "WAIT" reaches "Wait" (capitalised) and " wait" (leading space, lower case).
    let opts = ThinkingOptions { suppress: vec!["WAIT".into()], max_tokens: Some(9), ..ThinkingOptions::default() };
    let mut backend = word_thinker(&codec, "Wait", true);
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts.clone()));
    let wait = [codec.id("Wait"), codec.id(" wait")];
    assert!(c.tokens.iter().all(|id| !wait.contains(id)), "{}", transcript(&c));
    // Each masked "Wait" is one suppressed event; the runner-up "a" took its place.
    assert_eq!(transcript(&c), format!("{{think}}aa{}{{budget}}[</think>]{{answer}} b{{done}}", "{-Wait}a".repeat(7)));
    assert_eq!(c.stats.words_suppressed, 7);
    check_accounting(&c, &backend);
    // The same word in the answer is not masked.
    let controller = ThinkingController::new(opts, &*codec, &opened_prompt(&codec), 0).unwrap();
    assert!(matches!(controller.before_sample(), pensive::thinking::BeforeSample::Sample { suppressed, .. } if suppressed.len() == 2));
}

#[test]
fn a_confident_probe_ends_thinking_and_leaves_the_cache_as_the_transcript() {
    let codec = token_codec();
    let opts = ThinkingOptions { confidence_exit: Some(deer(0.9)), max_tokens: Some(20), ..ThinkingOptions::default() };
    let mut backend = word_thinker(&codec, "Wait", true);
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    // The probe (forced "\nFinal Answer:", trial " b" then EOS) shows as probe tokens, is
    // rolled back, and the trigger "Wait" is replaced by the end of thinking.
    assert_eq!(
        transcript(&c),
        "{think}aa<\n><Final>< Answer:>< b>{probe true}{exit}[</think>]{answer} b{done}"
    );
    let s = &c.stats;
    assert_eq!((s.probes, s.probe_tokens, s.confidence_exit, s.forced_exit), (1, 4, true, false));
    assert_eq!(s.thinking_tokens, 2);
    assert_eq!(s.dropped_tokens, 2, "the trigger and the final EOS");
    check_accounting(&c, &backend);
    assert!(backend.truncations.contains(&(opened_prompt(&codec).len() + 2)), "the probe was truncated away");
}

#[test]
fn an_unconfident_probe_is_rolled_back_and_thinking_goes_on_where_it_was() {
    let codec = token_codec();
    let opts = ThinkingOptions { confidence_exit: Some(deer(0.9)), max_tokens: Some(7), ..ThinkingOptions::default() };
    let mut backend = word_thinker(&codec, "Wait", false);
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    let probe = "<\n><Final>< Answer:>< b>";
    assert_eq!(
        transcript(&c),
        format!("{{think}}aa{probe}{{probe false}}Waitaa{probe}{{probe false}}Waita{{budget}}[</think>]{{answer}} b{{done}}")
    );
    let s = &c.stats;
    assert_eq!((s.probes, s.probe_tokens, s.confidence_exit, s.forced_exit), (2, 8, false, true));
    assert_eq!(s.thinking_tokens, 7);
    check_accounting(&c, &backend);
    // Without the probes the same tokens come out: the rollback left no trace.
    let mut plain = word_thinker(&codec, "Wait", false);
    let without = run(&codec, &mut plain, &opened_prompt(&codec), options(ThinkingOptions { max_tokens: Some(7), ..ThinkingOptions::default() }));
    assert_eq!(without.tokens, c.tokens);
}

#[test]
fn probes_wait_for_the_minimum() {
    let codec = token_codec();
    let opts =
        ThinkingOptions { confidence_exit: Some(deer(0.5)), min_tokens: 5, max_tokens: Some(20), ..ThinkingOptions::default() };
    let mut backend = word_thinker(&codec, "Wait", true);
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    // "aaWait" is 3 thinking tokens (no probe under 5), "aaWaitaa" 5: the next trigger
    // probes and exits, replaced by the end of thinking.
    assert_eq!(c.stats.probes, 1);
    assert_eq!(c.stats.thinking_tokens, 5);
    assert!(c.stats.confidence_exit);
    check_accounting(&c, &backend);
}

/// Thinks "a", "a", "\n\n", "a", "a", "\n\n", ...; writes "Wait" itself after a paragraph
/// break only once `wait_after` thinking tokens have gone by.
fn paragraph_thinker(codec: &Rc<ToyCodec>, wait_after: usize) -> ScriptedBackend {
    let c = codec.clone();
    let [a, b, para, wait] = ["a", " b", "\n\n", "Wait"].map(|p| c.id(p));
    let (start, end) = (c.id("<think>"), c.id("</think>"));
    ScriptedBackend::new(
        c.vocab_size(),
        Box::new(move |seq: &[u32]| {
            let last = seq.last().copied();
            let next = if seq.contains(&end) {
                if last == Some(b) { 0 } else { b }
            } else {
                let opened = seq.iter().rposition(|&t| t == start).map_or(0, |p| p + 1);
                let thinking = &seq[opened..];
                let run = thinking.iter().rev().take_while(|&&t| t == a).count();
                if last == Some(para) && thinking.len() >= wait_after {
                    wait
                } else if run >= 2 {
                    para
                } else {
                    a
                }
            };
            let mut logits = vec![(next, FAVOURED)];
            if next != a {
                logits.push((a, RUNNER_UP));
            }
            logits
        }),
    )
}

#[test]
fn schedule_inserts_before_alpha_and_ends_at_a_wait_after_it() {
    let codec = token_codec();
    let schedule = Schedule { alpha: 0.5, probability: 1.0, anneal: Anneal::Constant };
    let opts = ThinkingOptions { schedule: Some(schedule), max_tokens: Some(20), ..ThinkingOptions::default() };
    let mut backend = paragraph_thinker(&codec, 12);
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    // Before α (10 thinking tokens) every paragraph break gets a forced "Wait"; the third
    // break comes at 11 (past α: none), and the model's own "Wait" after it is dropped and
    // thinking closes.
    assert_eq!(
        transcript(&c),
        "{think}aa\n\n{cont}[Wait]aa\n\n{cont}[Wait]aa\n\n{exit}[</think>]{answer} b{done}"
    );
    assert!(c.stats.schedule_exit && !c.stats.forced_exit);
    assert_eq!(c.stats.continuations, 2);
    check_accounting(&c, &backend);
}

#[test]
fn schedule_draws_are_seeded() {
    let codec = token_codec();
    let run_with = |seed| {
        let schedule = Schedule { alpha: 1.0, probability: 0.5, anneal: Anneal::Linear };
        let opts = ThinkingOptions { schedule: Some(schedule), max_tokens: Some(60), seed: Some(seed), ..ThinkingOptions::default() };
        let mut backend = paragraph_thinker(&codec, 1000);
        let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
        check_accounting(&c, &backend);
        c
    };
    let rounds = |c: &Completion| continuation_texts(c).len();
    assert_eq!(strip_timing(run_with(1)), strip_timing(run_with(1)));
    let counts: Vec<usize> = (0..8).map(|seed| rounds(&run_with(seed))).collect();
    assert!(counts.iter().any(|&n| n != counts[0]), "seeds give different schedules: {counts:?}");
    assert!(counts.iter().all(|&n| n < 60 / 3), "p < 1 skips some breaks: {counts:?}");
}

#[test]
fn answer_min_tokens_masks_the_end_of_the_answer() {
    let codec = token_codec();
    let opts = ThinkingOptions { answer_min_tokens: 3, ..ThinkingOptions::default() };
    let mut backend = script(&codec, Model::default());
    let c = run(&codec, &mut backend, &opened_prompt(&codec), options(opts));
    // " b", then EOS is masked (the runner-up "a" instead), " b", and EOS ends the turn.
    assert_eq!(transcript(&c), "{think}aaa</think>{answer} ba b{done}");
    assert_eq!(c.stats.answer_tokens, 3);
    assert_eq!(c.stats.finish_reason, Some(FinishReason::EndOfGeneration));
    check_accounting(&c, &backend);
}

#[test]
fn thinking_and_answer_sample_with_their_own_options() {
    let codec = token_codec();
    // Thinking at a high temperature, the answer greedy: thinking varies with the seed, the
    // answer never does (" b" then EOS), and without the override everything is greedy.
    let run_seed = |seed, thinking_sampling: Option<PhaseSampling>| {
        let opts = ThinkingOptions { max_tokens: Some(8), thinking_sampling, ..ThinkingOptions::default() };
        let mut generate = options(opts);
        generate.sampler.seed = seed;
        let mut backend = script(&codec, Model { end_with: EndWith::Never, ..Model::default() });
        let c = run(&codec, &mut backend, &opened_prompt(&codec), generate);
        check_accounting(&c, &backend);
        c
    };
    let hot = Some(PhaseSampling { temperature: Some(50.0), top_k: Some(0), top_p: Some(1.0), min_p: Some(0.0) });
    let texts: Vec<String> = (0..6).map(|seed| transcript(&run_seed(seed, hot.clone()))).collect();
    assert!(texts.iter().any(|t| t != &texts[0]), "thinking is sampled: {texts:?}");
    assert!(texts.iter().all(|t| t.ends_with("[</think>]{answer} b{done}")), "{texts:?}");
    let greedy: Vec<String> = (0..3).map(|seed| transcript(&run_seed(seed, None))).collect();
    assert!(greedy.iter().all(|t| t == "{think}aaaaaaaa{budget}[</think>]{answer} b{done}"), "{greedy:?}");
}

#[test]
fn presets_sit_under_the_fields_given_with_them() {
    let parse = |json: &str| serde_json::from_str::<ThinkingOptions>(json);
    let deer = parse(r#"{"preset": "deer", "max_tokens": 64}"#).unwrap();
    assert_eq!(deer.preset, Some(Preset::Deer));
    assert_eq!(deer.max_tokens, Some(64));
    assert_eq!(deer.confidence_exit.as_ref().map(|c| c.threshold), Some(0.95));
    let qwen3 = parse(r#"{"preset": "qwen3", "answer_prefix": null}"#).unwrap();
    assert!(qwen3.wrap_up.as_deref().is_some_and(|w| w.starts_with("Considering the limited time")));
    assert_eq!(qwen3.answer_prefix, None, "a field overrides the preset, null included");
    assert!(qwen3.continuations.is_empty());
    let nowait = parse(r#"{"preset": "nowait", "suppress": ["Hmm"]}"#).unwrap();
    assert_eq!(nowait.suppress, ["Hmm"]);
    assert_eq!(parse(r#"{"preset": "s1"}"#).unwrap(), Preset::S1.options());
    assert_eq!(Preset::S1.options(), ThinkingOptions { preset: Some(Preset::S1), ..ThinkingOptions::default() });
    assert!(parse(r#"{"preset": "r2d2"}"#).is_err());
    assert!(parse(r#"{"preset": "deer", "confidence_exit": {"probe": "x", "oops": 1}}"#).is_err());
    // Every preset round-trips and validates (AlphaOne once it has a cap).
    for preset in Preset::ALL {
        let o = ThinkingOptions { max_tokens: Some(32), ..preset.options() };
        o.validate().unwrap();
        assert_eq!(parse(&serde_json::to_string(&o).unwrap()).unwrap(), o);
        assert_eq!(Preset::from_name(preset.name()), Some(preset));
    }
    let no_cap = ThinkingOptions { schedule: Some(Schedule::default()), ..ThinkingOptions::default() };
    assert!(matches!(no_cap.validate(), Err(ThinkingError::InvalidOption { option: "schedule", .. })));
}
