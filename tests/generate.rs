//! The generation loop without a thinking budget, and teacher-forced scoring, on a
//! scripted model.

mod scripted;

use pensive::backend::{block_on, Backend};
use pensive::generate::{score, Completion, Event, FinishReason, GenerateError, GenerateOptions, Generation, TextCodec};
use pensive::transcript::Transcript;
use pensive::engine::{GenerateRequest, MAX_DRAWN_SEED};
use pensive::sampler::SamplerOptions;
use scripted::{ScriptedBackend, ToyCodec, FAVOURED};

/// log-probabilities are computed in f64 from f32 logits: agreement to 1e-9 is exact enough.
const LOGPROB_TOLERANCE: f64 = 1e-9;

const PIECES: &[&str] = &["Hel", "lo", " wo", "rld", "!", "x", "y", "z"];

fn codec() -> ToyCodec {
    ToyCodec::new(&["<eos>"], PIECES)
}

/// A model that says `reply` (ids, one per position after the prompt), then EOS.
fn says(codec: &ToyCodec, prompt_len: usize, reply: Vec<u32>) -> ScriptedBackend {
    ScriptedBackend::favour(codec.vocab_size(), move |seq| reply.get(seq.len() - prompt_len).copied().unwrap_or(0))
}

fn greedy(max_tokens: usize, stop: &[&str]) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        stop: stop.iter().map(|s| s.to_string()).collect(),
        stop_in_thinking: false,
        sampler: SamplerOptions::greedy(),
        thinking: None,
        logprobs: None,
    }
}

fn run(codec: &ToyCodec, backend: &mut ScriptedBackend, prompt: &[u32], options: GenerateOptions) -> Completion {
    let mut t = Transcript::new(backend).unwrap();
    block_on(Generation::new(&mut t, codec, prompt, options).unwrap().run_to_end(&mut t)).unwrap()
}

fn token_texts(c: &Completion) -> Vec<String> {
    c.events.iter().filter_map(|e| if let Event::Token { text, .. } = e { Some(text.clone()) } else { None }).collect()
}

#[test]
fn prompt_then_its_last_token_then_one_token_per_step_and_stats_add_up() {
    let codec = codec();
    let prompt = codec.ids(&["x", "y", "z"]);
    let reply = codec.ids(&["Hel", "lo", " wo", "rld", "!"]);
    let mut backend = says(&codec, prompt.len(), reply.clone());
    let c = run(&codec, &mut backend, &prompt, greedy(100, &[]));
    assert_eq!(c.tokens, reply);
    assert_eq!(c.text, "Hello world!");
    assert_eq!(c.prompt_ids, prompt);
    // Prompt: one call without logits, then its last token alone (as it runs when the rest
    // is cached, so cached and fresh prompts compute the first logits alike); then one
    // token per call (the last one's logits drew the EOS, which is dropped).
    assert_eq!(backend.calls[0], (prompt[..2].to_vec(), 0));
    assert!(backend.calls[1..].iter().all(|(t, n)| t.len() == 1 && *n == 1));
    assert_eq!(backend.calls.len(), 7);
    assert_eq!(backend.greedy_calls, 6, "greedy with nothing banned takes the backend's argmax path");
    let s = &c.stats;
    assert_eq!((s.prompt_tokens, s.sampled_tokens, s.forced_tokens, s.processed_tokens), (3, 5, 0, 8));
    assert_eq!((s.dropped_tokens, s.answer_tokens, s.thinking_tokens), (1, 5, 0));
    assert_eq!(s.finish_reason, Some(FinishReason::EndOfGeneration));
    assert_eq!(backend.cache.len(), 8, "the cache holds the whole transcript");
    assert!(s.prefill_s >= 0.0 && s.decode_s >= 0.0);
    assert!(!c.events.iter().any(|e| matches!(e, Event::Phase { .. })), "no thinking, no phase events");
}

#[test]
fn next_event_runs_at_most_one_forward() {
    let codec = codec();
    let prompt = codec.ids(&["x"]);
    let mut backend = says(&codec, 1, codec.ids(&["Hel", "lo", " wo"]));
    let mut t = Transcript::new(&mut backend).unwrap();
    let mut generation = Generation::new(&mut t, &codec, &prompt, greedy(100, &[])).unwrap();
    let mut calls_before = 0;
    let mut events = 0;
    while let Some(event) = block_on(generation.next_event(&mut t)).unwrap() {
        let calls = t.backend().calls.len();
        assert!(calls - calls_before <= 1, "one pull ran {} forwards", calls - calls_before);
        calls_before = calls;
        events += 1;
        if matches!(event, Event::Done { .. }) {
            assert!(block_on(generation.next_event(&mut t)).unwrap().is_none());
        }
    }
    assert_eq!(events, 4);
    assert!(generation.is_finished());
}

#[test]
fn max_tokens_stops_and_feeds_the_last_token() {
    let codec = codec();
    let prompt = codec.ids(&["x"]);
    let mut backend = ScriptedBackend::favour(codec.vocab_size(), {
        let y = codec.id("y");
        move |_| y
    });
    let c = run(&codec, &mut backend, &prompt, greedy(4, &[]));
    assert_eq!(c.tokens.len(), 4);
    assert_eq!(c.stats.finish_reason, Some(FinishReason::MaxTokens));
    assert_eq!(c.stats.dropped_tokens, 0, "nothing drawn beyond the cap");
    // The last token goes in without logits, so that the cache holds the transcript.
    assert_eq!(backend.calls.last(), Some(&(vec![codec.id("y")], 0)));
    assert_eq!(backend.kv_len(), 5);
}

#[test]
fn stop_string_is_not_emitted() {
    let codec = codec();
    let prompt = codec.ids(&["x"]);
    let reply = codec.ids(&["Hel", "lo", " wo", "rld", "!"]);
    // The stop string starts on a token boundary: the tokens before it come out whole.
    let mut backend = says(&codec, 1, reply.clone());
    let c = run(&codec, &mut backend, &prompt, greedy(100, &["lo wo"]));
    assert_eq!(c.text, "Hel");
    assert_eq!(token_texts(&c), ["Hel"]);
    assert_eq!(c.stats.finish_reason, Some(FinishReason::StopString));
    // The stop string's tokens were sampled, then taken back out of the transcript: the
    // cache holds what the user saw.
    assert_eq!(c.tokens, reply[..1]);
    assert_eq!(backend.kv_len(), 2);
    assert_eq!(c.stats.rolled_back_tokens, 2);
    // It starts inside a token: that token's text before it is emitted.
    let mut backend = says(&codec, 1, reply.clone());
    let c = run(&codec, &mut backend, &prompt, greedy(100, &["llo", "zzz"]));
    assert_eq!(token_texts(&c), ["He"]);
    // A stop string the model never writes changes nothing.
    let mut backend = says(&codec, 1, reply);
    let c = run(&codec, &mut backend, &prompt, greedy(100, &["Hello!"]));
    assert_eq!(c.text, "Hello world!");
}

#[test]
fn a_full_context_ends_with_a_reason_not_an_error() {
    let codec = codec();
    let prompt = codec.ids(&["x", "y"]);
    let mut backend = ScriptedBackend::favour(codec.vocab_size(), {
        let z = codec.id("z");
        move |_| z
    });
    backend.max_context = 6;
    let c = run(&codec, &mut backend, &prompt, greedy(100, &[]));
    assert_eq!(c.stats.finish_reason, Some(FinishReason::ContextFull));
    assert_eq!(c.tokens.len(), 4);
    assert_eq!(backend.kv_len(), 6);
}

#[test]
fn bad_setups_are_typed_errors() {
    let codec = codec();
    let mut backend = says(&codec, 1, vec![]);
    backend.max_context = 4;
    let too_long = codec.ids(&["x", "y", "z", "x"]);
    let mut t = Transcript::new(&mut backend).unwrap();
    assert!(matches!(
        Generation::new(&mut t, &codec, &too_long, greedy(8, &[])),
        Err(GenerateError::PromptTooLong { prompt: 4, context: 4 })
    ));
    assert!(matches!(Generation::new(&mut t, &codec, &[], greedy(8, &[])), Err(GenerateError::EmptyPrompt)));
    assert!(matches!(
        Generation::new(&mut t, &codec, &[1], greedy(8, &[""])),
        Err(GenerateError::InvalidOption { option: "stop", .. })
    ));
    assert!(matches!(
        Generation::new(&mut t, &codec, &[1], greedy(0, &[])),
        Err(GenerateError::InvalidOption { option: "max_tokens", .. })
    ));
    let bad_sampler = GenerateOptions { sampler: SamplerOptions { top_p: 0.0, ..SamplerOptions::default() }, ..greedy(8, &[]) };
    assert!(matches!(Generation::new(&mut t, &codec, &[1], bad_sampler), Err(GenerateError::Sampler(_))));
    assert!(t.is_empty() && t.backend().cache.is_empty(), "a refused request leaves the transcript alone");
    assert!(serde_json::from_str::<GenerateOptions>(r#"{"max_token": 3}"#).is_err());
    let parsed: GenerateOptions =
        serde_json::from_str(r#"{"max_tokens": 3, "sampler": {"temperature": 0}, "thinking": {"min_tokens": 2}}"#).unwrap();
    assert_eq!(parsed.max_tokens, 3);
    assert_eq!(parsed.thinking.map(|t| t.min_tokens), Some(2));
}

#[test]
fn a_second_turn_reuses_the_cached_first_and_only_its_cost_changes() {
    let codec = codec();
    // Says "Hello" after any prompt, then EOS.
    let script = |codec: &ToyCodec| {
        let (hel, lo) = (codec.id("Hel"), codec.id("lo"));
        ScriptedBackend::favour(codec.vocab_size(), move |seq: &[u32]| match seq.last() {
            Some(&id) if id == hel => lo,
            Some(&id) if id == lo => 0,
            _ => hel,
        })
    };
    let first = codec.ids(&["x", "y"]);
    let mut backend = script(&codec);
    let mut t = Transcript::new(&mut backend).unwrap();
    let a = block_on(Generation::new(&mut t, &codec, &first, greedy(100, &[])).unwrap().run_to_end(&mut t)).unwrap();
    assert_eq!(a.text, "Hello");
    assert_eq!(t.ids(), codec.ids(&["x", "y", "Hel", "lo"]), "the transcript is the prompt and the reply");
    // The second turn's prompt extends the first exchange.
    let second = codec.ids(&["x", "y", "Hel", "lo", "z"]);
    let b = block_on(Generation::new(&mut t, &codec, &second, greedy(100, &[])).unwrap().run_to_end(&mut t)).unwrap();
    assert_eq!((b.stats.prompt_tokens, b.stats.cached_tokens), (5, 4));
    assert_eq!(b.stats.processed_tokens, 1 + 2, "only the new prompt token and the reply ran");
    assert!(t.check());
    drop(t);
    // A fresh model gives the same response and stats but the cost fields.
    let mut fresh = script(&codec);
    let c = run(&codec, &mut fresh, &second, greedy(100, &[]));
    assert_eq!((c.tokens.clone(), c.text.clone()), (b.tokens.clone(), b.text.clone()));
    assert_eq!(c.stats.cached_tokens, 0);
    let same = |mut s: pensive::generate::Stats| {
        (s.cached_tokens, s.processed_tokens, s.prefill_s, s.decode_s, s.prefill_tok_s, s.decode_tok_s) = (0, 0, 0.0, 0.0, 0.0, 0.0);
        s
    };
    assert_eq!(same(c.stats), same(b.stats));
}

#[test]
fn multi_byte_characters_are_never_split_in_the_stream() {
    let mut codec = codec();
    // "é" = C3 A9 as two byte tokens, as byte-level BPE vocabularies have them.
    codec.vocab.push(vec![0xC3]);
    codec.vocab.push(vec![0xA9]);
    let (lead, tail) = (codec.vocab_size() as u32 - 2, codec.vocab_size() as u32 - 1);
    let prompt = codec.ids(&["x"]);
    let reply = vec![codec.id("Hel"), lead, tail, lead, tail, codec.id("!")];
    let mut backend = says(&codec, 1, reply);
    let c = run(&codec, &mut backend, &prompt, greedy(100, &[]));
    assert_eq!(token_texts(&c), ["Hel", "", "é", "", "é", "!"]);
    assert_eq!(c.text, "Heléé!");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let codec = codec();
    let prompt = codec.ids(&["x"]);
    let options = |seed| GenerateOptions {
        max_tokens: 30,
        stop: vec![],
        stop_in_thinking: false,
        sampler: SamplerOptions { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed, ..SamplerOptions::default() },
        thinking: None,
        logprobs: None,
    };
    let sample = |seed| {
        // Flat logits over the pieces (never EOS): every draw is a real choice.
        let ids: Vec<u32> = (1..codec.vocab_size() as u32).collect();
        let mut backend = ScriptedBackend::new(codec.vocab_size(), Box::new(move |_| ids.iter().map(|&i| (i, FAVOURED)).collect()));
        let tokens = run(&codec, &mut backend, &prompt, options(seed)).tokens;
        assert_eq!(backend.greedy_calls, 0, "sampling needs the logits");
        tokens
    };
    assert_eq!(sample(3), sample(3));
    assert_ne!(sample(3), sample(4));
}

#[test]
fn completion_serializes_for_the_cli() {
    let codec = codec();
    let prompt = codec.ids(&["x"]);
    let mut backend = says(&codec, 1, codec.ids(&["Hel", "lo"]));
    let c = run(&codec, &mut backend, &prompt, greedy(100, &[]));
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["prompt_ids"], serde_json::json!(prompt));
    assert_eq!(json["tokens"], serde_json::json!(c.tokens));
    assert_eq!(json["text"], "Hello");
    assert_eq!(json["events"][0], serde_json::json!({"type": "token", "id": c.tokens[0], "text": "Hel", "phase": "answer", "forced": false, "marker": false}));
    assert_eq!(json["stats"]["finish_reason"], "end_of_generation");
}

// ----------------------------------------------------------------------------
// score

/// log p(id) for a scripted row: FAVOURED on one id, 0 on the other vocab − 1 ids.
fn scripted_logprob(vocab: usize, favoured: bool) -> f64 {
    let logit = if favoured { FAVOURED as f64 } else { 0.0 };
    logit - ((FAVOURED as f64).exp() + (vocab - 1) as f64).ln()
}

#[test]
fn score_rates_each_continuation_token_by_teacher_forcing() {
    let codec = codec();
    let vocab = codec.vocab_size();
    // The model always predicts "y".
    let y = codec.id("y");
    let mut backend = ScriptedBackend::favour(vocab, move |_| y);
    let prompt = codec.ids(&["x"]);
    let continuation = codec.ids(&["y", "z", "y"]);
    let r = block_on(score(&mut backend, &prompt, &continuation)).unwrap();
    assert_eq!(r.prompt_ids, prompt);
    assert_eq!(r.positions.len(), 3);
    for (p, &id) in r.positions.iter().zip(&continuation) {
        assert_eq!(p.id, id);
        assert_eq!(p.argmax, y);
        assert_eq!(p.margin, FAVOURED);
        assert!((p.logprob - scripted_logprob(vocab, id == y)).abs() < LOGPROB_TOLERANCE);
    }
    let nll = -(2.0 * scripted_logprob(vocab, true) + scripted_logprob(vocab, false)) / 3.0;
    assert!((r.nll - nll).abs() < LOGPROB_TOLERANCE);
    assert!((r.perplexity - nll.exp()).abs() < LOGPROB_TOLERANCE);
    // The last continuation token is predicted, never fed.
    assert_eq!(backend.calls, [(prompt.clone(), 1), (continuation[..2].to_vec(), 2)]);
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["positions"][0].get("logprob").is_some() && json.get("perplexity").is_some());
}

#[test]
fn score_in_chunks_matches_one_position_at_a_time() {
    let codec = codec();
    let vocab = codec.vocab_size();
    // The prediction depends on the whole history, so chunk boundaries would show.
    let next = move |seq: &[u32]| (seq.iter().map(|&t| t as usize).sum::<usize>() % (vocab - 1) + 1) as u32;
    let prompt = codec.ids(&["x", "y"]);
    let continuation: Vec<u32> = (0..150).map(|i| (i * 7 % (vocab - 1) + 1) as u32).collect();
    let mut backend = ScriptedBackend::favour(vocab, next);
    let r = block_on(score(&mut backend, &prompt, &continuation)).unwrap();
    assert!(backend.calls.len() > 2, "150 tokens must be split into chunks");
    let mut seq = prompt.clone();
    for (p, &id) in r.positions.iter().zip(&continuation) {
        assert_eq!(p.argmax, next(&seq));
        assert!((p.logprob - scripted_logprob(vocab, id == next(&seq))).abs() < LOGPROB_TOLERANCE);
        seq.push(id);
    }
    assert_eq!(backend.kv_len(), prompt.len() + continuation.len() - 1);
}

#[test]
fn score_rejects_bad_input() {
    let codec = codec();
    let mut backend = ScriptedBackend::favour(codec.vocab_size(), |_| 1);
    assert!(matches!(block_on(score(&mut backend, &[1], &[])), Err(GenerateError::EmptyContinuation)));
    assert!(matches!(block_on(score(&mut backend, &[], &[1])), Err(GenerateError::EmptyPrompt)));
    backend.max_context = 3;
    assert!(matches!(block_on(score(&mut backend, &[1, 2], &[1, 2, 3])), Err(GenerateError::PromptTooLong { .. })));
    assert!(matches!(block_on(score(&mut backend, &[1, 99], &[1])), Err(GenerateError::Backend(_))));
}

#[test]
fn logprobs_ride_on_sampled_token_events_when_asked() {
    let codec = codec();
    let prompt = codec.ids(&["x"]);
    let reply = codec.ids(&["Hel", "lo", "!"]);
    let mut backend = says(&codec, 1, reply.clone());
    let c = run(&codec, &mut backend, &prompt, GenerateOptions { logprobs: Some(2), ..greedy(100, &[]) });
    assert_eq!(c.tokens, reply);
    assert_eq!(backend.greedy_calls, 0, "log-probabilities need the logits on the host");
    // The scripted model: FAVOURED for the scripted id, 0 for the other vocab − 1 ids.
    let v = codec.vocab_size() as f64;
    let favoured = FAVOURED as f64 - (f64::from(FAVOURED).exp() + (v - 1.0)).ln();
    let other = -(f64::from(FAVOURED).exp() + (v - 1.0)).ln();
    let mut seen = 0;
    for e in &c.events {
        let Event::Token { id, logprob, top_logprobs, .. } = e else { continue };
        let (Some(logprob), Some(top)) = (logprob, top_logprobs) else { panic!("token {id} without logprobs") };
        assert!((logprob - favoured).abs() < LOGPROB_TOLERANCE, "{logprob} vs {favoured}");
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].id, *id);
        assert_eq!(top[0].text, codec.decode(&[*id]));
        // The runner-up: equal logits go to the lowest id, the EOS (0) unless it was chosen.
        assert_eq!(top[1].id, 0);
        assert!((top[1].logprob - other).abs() < LOGPROB_TOLERANCE);
        seen += 1;
    }
    assert_eq!(seen, reply.len());
    // Not asked: the events carry none and serialize without the fields.
    let mut backend = says(&codec, 1, reply.clone());
    let plain = run(&codec, &mut backend, &prompt, greedy(100, &[]));
    assert!(plain.events.iter().all(|e| !matches!(e, Event::Token { logprob: Some(_), .. } | Event::Token { top_logprobs: Some(_), .. })));
    assert!(!serde_json::to_string(&plain.events[0]).unwrap().contains("logprob"));
}

#[test]
fn logit_bias_steers_the_choice_and_is_checked_against_the_vocabulary() {
    let codec = codec();
    let prompt = codec.ids(&["x"]);
    let reply = codec.ids(&["Hel", "lo", "!"]);
    let z = codec.id("z");
    // +FAVOURED + 1 on "z" beats every scripted token; the model never wrote it.
    let mut backend = says(&codec, 1, reply.clone());
    let sampler = SamplerOptions { logit_bias: [(z, FAVOURED + 1.0)].into(), ..SamplerOptions::greedy() };
    let c = run(&codec, &mut backend, &prompt, GenerateOptions { sampler, ..greedy(3, &[]) });
    assert_eq!(c.tokens, vec![z; 3]);
    assert_eq!(backend.greedy_calls, 0, "a bias needs the logits on the host");
    // -100 on the scripted first token: the runner-up (lowest id at 0 = EOS) ends it.
    let mut backend = says(&codec, 1, reply.clone());
    let sampler = SamplerOptions { logit_bias: [(reply[0], -100.0)].into(), ..SamplerOptions::greedy() };
    let c = run(&codec, &mut backend, &prompt, GenerateOptions { sampler, ..greedy(3, &[]) });
    assert!(c.tokens.is_empty(), "{:?}", c.tokens);
    assert_eq!(c.stats.finish_reason, Some(FinishReason::EndOfGeneration));
    // Ids outside the vocabulary and biases outside [-100, 100] are refused.
    let mut backend = says(&codec, 1, reply);
    let mut t = Transcript::new(&mut backend).unwrap();
    let outside = SamplerOptions { logit_bias: [(codec.vocab_size() as u32, 1.0)].into(), ..SamplerOptions::greedy() };
    let err = Generation::new(&mut t, &codec, &prompt, GenerateOptions { sampler: outside, ..greedy(3, &[]) }).err();
    assert!(matches!(err, Some(GenerateError::InvalidOption { option: "logit_bias", .. })), "{err:?}");
    let huge = SamplerOptions { logit_bias: [(1, 101.0)].into(), ..SamplerOptions::greedy() };
    assert!(Generation::new(&mut t, &codec, &prompt, GenerateOptions { sampler: huge, ..greedy(3, &[]) }).is_err());
    let many = GenerateOptions { logprobs: Some(21), ..greedy(3, &[]) };
    assert!(Generation::new(&mut t, &codec, &prompt, many).is_err(), "top_logprobs is at most 20");
}

#[test]
fn the_seed_is_reported_and_an_engine_request_without_one_draws_one() {
    let codec = codec();
    let prompt = codec.ids(&["x"]);
    let mut backend = says(&codec, 1, codec.ids(&["Hel"]));
    let options = GenerateOptions { sampler: SamplerOptions { seed: 1234, ..SamplerOptions::greedy() }, ..greedy(4, &[]) };
    assert_eq!(run(&codec, &mut backend, &prompt, options).stats.seed, 1234);

    // The engine's request: no seed → a fresh one each time, exact in a JS number; a given
    // seed is kept.
    let seeds: Vec<u64> = (0..8).map(|_| GenerateRequest::default().into_options().unwrap().sampler.seed).collect();
    assert!(seeds.iter().all(|&s| s <= MAX_DRAWN_SEED));
    let mut distinct = seeds.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), seeds.len(), "drawn seeds repeat: {seeds:?}");
    let given = GenerateRequest { seed: Some(u64::MAX), ..Default::default() };
    assert_eq!(given.into_options().unwrap().sampler.seed, u64::MAX);
    let bad = GenerateRequest { top_logprobs: Some(3), ..Default::default() };
    assert!(bad.into_options().is_err(), "top_logprobs without logprobs");
    let json: GenerateRequest = serde_json::from_str(r#"{"logit_bias": {"5": -100}, "logprobs": true, "top_logprobs": 2}"#).unwrap();
    let options = json.into_options().unwrap();
    assert_eq!(options.sampler.logit_bias.get(&5), Some(&-100.0));
    assert_eq!(options.logprobs, Some(2));
}
