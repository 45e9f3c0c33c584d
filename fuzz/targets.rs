//! The fuzz targets' bodies, shared by the libFuzzer binaries (`fuzz/fuzz_targets/*.rs`) and
//! by `tests/fuzz_regressions.rs`, which replays every committed input in
//! `fuzz/regressions/<target>/` under plain `cargo test`.
//!
//! Each target takes arbitrary bytes and must return: a typed error is fine, a panic, an
//! abort or an allocation the input did not pay for is a finding. Where the code promises
//! more than "no panic" (the thinking budget's guarantees, the stream's chunking not
//! mattering), the target asserts it.
//!
//! The including crate root must declare `mod scripted;` (tests/scripted/mod.rs) before
//! `mod targets;`.

use std::collections::BTreeMap;
use std::rc::Rc;

use pensive::backend::{block_on, Backend};
use pensive::chat::{ChatTemplate, Message, TemplateVariables};
use pensive::engine::{GenerateRequest, LoadOptions};
use pensive::generate::{Event, GenerateOptions, Generation, TextCodec};
use pensive::gguf::{GgufHeader, MetaValue, Metadata};
use pensive::loader::{self, GgufCollector};
use pensive::sampler::{Rng, SamplerOptions};
use pensive::thinking::{ContinuationOrder, EarlyEnd, Phase, ThinkingOptions};
use pensive::tokenizer::Tokenizer;
use pensive::transcript::Transcript;

use crate::scripted::{ScriptedBackend, ToyCodec};

/// Every target by name, for the regression replayer.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("gguf_header", gguf_header),
    ("gguf_stream", gguf_stream),
    ("safetensors", safetensors),
    ("tokenizer_gguf", tokenizer_gguf),
    ("chat_template", chat_template),
    ("options_json", options_json),
    ("thinking", thinking),
];

/// A GGUF header and tensor infos from a byte prefix, then what the loader derives from it.
pub fn gguf_header(data: &[u8]) {
    let Ok(header) = GgufHeader::parse(data) else { return };
    let _ = header.implied_file_len();
    let _ = header.check_bounds(data.len() as u64);
    if let Ok(config) = loader::config_from_gguf(&header) {
        // The widths every backend multiplies with must not overflow silently.
        let _ = (config.q_dim(), config.kv_dim());
    }
}

/// The streaming loader: the file in chunks of fuzzer-chosen sizes must give exactly what
/// the whole file in one chunk gives (the same tensors, or an error in both).
pub fn gguf_stream(data: &[u8]) {
    let Some((&seed, file)) = data.split_first() else { return };
    let whole = {
        let mut c = GgufCollector::default();
        c.push(file).and_then(|_| c.finish())
    };
    let chunked = {
        let mut c = GgufCollector::default();
        let mut rng = Rng::new(u64::from(seed));
        let mut rest = file;
        let mut result = Ok(());
        while !rest.is_empty() && result.is_ok() {
            let n = (1 + rng.below(64)).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            result = c.push(chunk).map(|_| ());
            rest = tail;
        }
        result.and_then(|_| c.finish())
    };
    match (whole, chunked) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.config, b.config);
            let mut names: Vec<_> = a.tensors.keys().collect();
            names.sort();
            for name in names {
                let (x, y) = (&a.tensors[name], &b.tensors[name]);
                assert_eq!((x.ty, &x.dims, x.data.as_slice()), (y.ty, &y.dims, y.data.as_slice()), "{name}");
            }
            assert_eq!(a.tensors.len(), b.tensors.len());
            // A complete model: the CPU decoder checks every shape against the config.
            let _ = pensive::model::CpuModel::new(a, Some(16));
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("chunking changed the outcome: whole {:?}, chunked {:?}", a.err(), b.err()),
    }
}

/// `config.json` and one safetensors file: the first two bytes give the config's length.
pub fn safetensors(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (config, file) = rest.split_at(len);
    if let Ok(model) = loader::load_safetensors(config, &[file]) {
        let _ = pensive::model::CpuModel::new(model, Some(16));
    }
}

/// A tokenizer built from GGUF-style metadata the fuzzer writes as lines:
/// `pre-tokenizer name`, tokens (one per line, `\x01`-prefixed ones typed control) up to an
/// empty line, merges up to the next empty line, then text to encode and decode.
pub fn tokenizer_gguf(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let pre = lines.next().unwrap_or_default().to_owned();
    let mut tokens = Vec::new();
    let mut types = Vec::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        match line.strip_prefix('\u{1}') {
            Some(control) => {
                tokens.push(MetaValue::Str(control.to_owned()));
                types.push(MetaValue::I32(3));
            }
            None => {
                tokens.push(MetaValue::Str(line.to_owned()));
                types.push(MetaValue::I32(1));
            }
        }
    }
    let mut merges = Vec::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        merges.push(MetaValue::Str(line.to_owned()));
    }
    let input: Vec<&str> = lines.collect();
    let input = input.join("\n");
    let n = tokens.len() as u32;
    let meta = Metadata(BTreeMap::from([
        ("tokenizer.ggml.model".to_owned(), MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".to_owned(), MetaValue::Str(pre)),
        ("tokenizer.ggml.tokens".to_owned(), MetaValue::Array(tokens)),
        ("tokenizer.ggml.token_type".to_owned(), MetaValue::Array(types)),
        ("tokenizer.ggml.merges".to_owned(), MetaValue::Array(merges)),
        ("tokenizer.ggml.bos_token_id".to_owned(), MetaValue::U32(0)),
        ("tokenizer.ggml.eos_token_id".to_owned(), MetaValue::U32(n.saturating_sub(1))),
    ]));
    let Ok(tokenizer) = Tokenizer::from_gguf(&meta) else { return };
    if let Ok(ids) = tokenizer.encode(&input, true) {
        assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
        let _ = tokenizer.decode(&ids);
        let mut stream = tokenizer.stream_decoder();
        for &id in &ids {
            let _ = stream.push(id);
        }
        let _ = stream.flush();
    }
    // Ids from outside the vocabulary must decode (to U+FFFD), never index out of bounds.
    let _ = tokenizer.decode(&[u32::MAX, n, n.wrapping_add(1)]);
}

/// A chat template (up to the first NUL) rendered over messages (the rest, split at `\x01`,
/// roles cycling user/assistant/system).
pub fn chat_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (source, rest) = text.split_once('\0').unwrap_or((&text, ""));
    // 1/20 of the real fuel: a looping template then costs milliseconds instead of a
    // second; memory explodes within a few dozen instructions anyway, and the value and
    // output limits are the real ones.
    let Ok(template) = ChatTemplate::new(source).map(|t| t.with_fuel(pensive::chat::MAX_FUEL / 20)) else { return };
    let roles = ["user", "assistant", "system"];
    let messages: Vec<Message> =
        rest.split('\u{1}').enumerate().map(|(i, c)| Message::new(roles[i % roles.len()], c)).collect();
    let _ = template.render_with(&messages, true, "<s>", "</s>", &TemplateVariables::new());
}

/// Every JSON options object a user writes: load, generate (with thinking inside) and
/// thinking alone; what deserializes must validate without panicking.
pub fn options_json(data: &[u8]) {
    let _ = serde_json::from_slice::<LoadOptions>(data);
    if let Ok(request) = serde_json::from_slice::<GenerateRequest>(data) {
        let _ = request.into_options();
    }
    if let Ok(thinking) = serde_json::from_slice::<ThinkingOptions>(data) {
        let _ = thinking.validate();
    }
}

// ---------------------------------------------------------------------------------------------
// The thinking controller on a random scripted model
// ---------------------------------------------------------------------------------------------

const PIECES: &[&str] = &["a", " b", ".", "\n", "Wait", "Hmm", " So", "Final", " Answer:", "<", "</", "think", ">", "x"];

/// Reads option values from the fuzzer's bytes (zeros once they run out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }
    fn below(&mut self, n: u8) -> usize {
        usize::from(self.byte() % n)
    }
    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    /// Text made of toy pieces (so the toy codec can encode it), 1..=3 pieces.
    fn text(&mut self) -> String {
        let n = 1 + self.below(3);
        (0..n).map(|_| PIECES[self.below(PIECES.len() as u8)]).collect()
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.byte()))
    }
}

fn random_model(codec: &Rc<ToyCodec>, salt: u64) -> ScriptedBackend {
    crate::scripted::random_model(codec, salt, &["a", " b", ".", "\n", "x", "<", "</", "think"])
}

/// The thinking controller driven through the real generation loop by a random scripted
/// model, with fuzzer-chosen options; asserts the README's guarantees on counts recounted
/// from the events, the transcript accounting, and determinism.
pub fn thinking(data: &[u8]) {
    let mut b = Bytes(data);
    let codec = Rc::new(if b.flag() {
        ToyCodec::new(&["<eos>", "<think>", "</think>"], PIECES)
    } else {
        ToyCodec::new(&["<eos>"], PIECES)
    });
    let min = b.below(20);
    let options = ThinkingOptions {
        min_tokens: min,
        max_tokens: b.flag().then(|| min + b.below(30)),
        continuations: (0..b.below(3)).map(|_| b.text()).collect(),
        continuation_order: if b.flag() { ContinuationOrder::Random } else { ContinuationOrder::Cycle },
        ignore_ends: b.below(3),
        max_continuations: b.flag().then(|| b.below(6)),
        on_early_end: if b.flag() { EarlyEnd::Suppress } else { EarlyEnd::Continue },
        grace_tokens: b.below(6),
        wrap_up: b.flag().then(|| b.text()),
        answer_prefix: b.flag().then(|| b.text()),
        answer_max_tokens: b.flag().then(|| 1 + b.below(10)),
        open: b.flag(),
        seed: Some(b.u64()),
        ..ThinkingOptions::default()
    };
    let prompt: Vec<u32> = match (b.flag(), codec.token_id("<think>")) {
        (true, Some(start)) => vec![codec.id("x"), start, codec.id("\n")],
        (true, None) => codec.ids(&["x", "<", "think", ">", "\n"]),
        (false, _) => codec.ids(&["x"]),
    };
    let sampler = if b.flag() {
        SamplerOptions::greedy()
    } else {
        SamplerOptions { temperature: 0.9, top_k: 0, top_p: 1.0, min_p: 0.0, seed: b.u64(), ..SamplerOptions::default() }
    };
    let salt = b.u64();
    let max_tokens = 1 + b.below(200);
    let generate = GenerateOptions { max_tokens, sampler, thinking: Some(options.clone()), ..GenerateOptions::default() };

    let run = || {
        let mut backend = random_model(&codec, salt);
        let completion = {
            let mut t = Transcript::new(&mut backend).ok()?;
            // Options the loop refuses (e.g. max_tokens below the thinking minimum) are a
            // typed error, which is all a target asks of them.
            let mut g = Generation::new(&mut t, codec.clone(), &prompt, generate.clone()).ok()?;
            match block_on(g.run_to_end(&mut t)) {
                Ok(c) => c,
                Err(e) => panic!("a scripted generation failed: {e}"),
            }
        };
        Some((completion, backend))
    };
    let Some((c, backend)) = run() else { return };
    let Some((again, _)) = run() else { panic!("a rerun was refused") };

    // Accounting: the cache holds exactly the prompt and the kept tokens; stats recount.
    let s = &c.stats;
    assert_eq!(s.processed_tokens, backend.fed_tokens());
    assert_eq!(backend.kv_len(), s.cached_tokens + s.processed_tokens - s.rolled_back_tokens);
    let mut transcript = c.prompt_ids.clone();
    transcript.extend(&c.tokens);
    assert_eq!(backend.cache, transcript);
    let event_ids: Vec<u32> = c.events.iter().filter_map(|e| if let Event::Token { id, .. } = e { Some(*id) } else { None }).collect();
    assert_eq!(event_ids, c.tokens);
    assert!(matches!(c.events.last(), Some(Event::Done { .. })));
    // Determinism: the same request on a fresh model gives the same tokens and events.
    assert_eq!(c.tokens, again.tokens);
    assert_eq!(c.events.len(), again.events.len());

    // The budget guarantees (README, "What a thinking budget guarantees").
    let mut thinking_tokens = 0;
    let (mut opened, mut closed, mut continuations) = (false, false, 0);
    for e in &c.events {
        match e {
            Event::Token { phase: Phase::Thinking, marker: false, .. } => thinking_tokens += 1,
            Event::Phase { phase: Phase::Thinking } => opened = true,
            Event::Phase { phase: Phase::Answer } => closed = true,
            Event::Continuation { .. } => continuations += 1,
            _ => {}
        }
    }
    assert_eq!((s.thinking_tokens, s.continuations), (thinking_tokens, continuations));
    if opened && closed {
        assert!(
            thinking_tokens >= options.min_tokens,
            "thinking {thinking_tokens} below min {}: {options:?} max_tokens {max_tokens}\n{:?}",
            options.min_tokens,
            c.events
        );
    }
    if let Some(max) = options.max_tokens {
        let exit_text = options.wrap_up.as_deref().map_or(0, |w| codec.encode(w).map_or(0, |ids| ids.len()));
        assert!(thinking_tokens <= max + options.grace_tokens + exit_text, "thinking {thinking_tokens} above max {max}");
    }
    if let Some(cap) = options.max_continuations {
        assert!(continuations <= cap, "{continuations} continuations above the cap {cap}");
    }
    assert!(c.tokens.len() <= max_tokens, "{} response tokens above max_tokens {max_tokens}: {options:?}\n{:?}", c.tokens.len(), c.events);
}
