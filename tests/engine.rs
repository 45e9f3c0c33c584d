//! The engine end to end on the CPU: prompt ids against llama.cpp's, typed errors for bad
//! input, one generation at a time, abort, and KV prefix reuse.

use pensive::backend::block_on;
use pensive::chat::Message;
use pensive::engine::{BackendChoice, Continuation, Engine, EngineError, GenerateRequest, LoadOptions, Prompt};
use pensive::generate::Event;
use pensive::loader::{self, LoadError};

mod common;

fn engine(file: &str, max_context: Option<usize>) -> Option<Engine> {
    let path = common::model_path(file)?;
    let model = loader::load_gguf_file(&path).unwrap();
    Some(block_on(Engine::new(model, None, &LoadOptions { max_context, backend: BackendChoice::Cpu })).unwrap())
}

fn greedy(max_tokens: usize) -> GenerateRequest {
    GenerateRequest { temperature: Some(0.0), max_tokens: Some(max_tokens), ..Default::default() }
}

fn run(engine: &mut Engine) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(e) = block_on(engine.next_event()).unwrap() {
        events.push(e);
    }
    events
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    kind: String,
    text: String,
    prompt_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

/// Raw prompts and chat prompts (through the model's own template) tokenize to exactly
/// llama.cpp's ids.
#[test]
fn prompt_ids_equal_llama_cpp() {
    for (file, fixture) in [
        ("smollm2-135m-instruct-q4_1.gguf", "tests/fixtures/real/smollm2.llamacpp.json"),
        ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "tests/fixtures/real/qwen05.llamacpp.json"),
    ] {
        let Some(engine) = engine(file, None) else { return };
        let reference: Reference = serde_json::from_slice(&std::fs::read(common::root_path(fixture)).unwrap()).unwrap();
        for case in &reference.cases {
            let prompt = match case.kind.as_str() {
                "raw" => Prompt::Text(case.text.clone()),
                _ => Prompt::Messages(vec![Message { role: "user".into(), content: case.text.clone() }]),
            };
            assert_eq!(engine.prompt_ids(&prompt).unwrap(), case.prompt_ids, "{file} {}", case.name);
        }
    }
}

#[test]
fn greedy_generation_answers_and_is_deterministic() {
    let Some(mut engine) = engine("smollm2-135m-instruct-q4_1.gguf", None) else { return };
    let prompt = Prompt::Messages(vec![Message { role: "user".into(), content: "What is the capital of France?".into() }]);
    let mut texts = Vec::new();
    for _ in 0..2 {
        engine.start(&prompt, greedy(32)).unwrap();
        let text: String = run(&mut engine)
            .iter()
            .filter_map(|e| match e {
                Event::Token { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        texts.push(text);
    }
    assert!(texts[0].contains("Paris"), "{:?}", texts[0]);
    assert_eq!(texts[0], texts[1]);
}

#[test]
fn second_generate_while_one_runs_is_busy_and_abort_frees_the_engine() {
    let Some(mut engine) = engine("smollm2-135m-instruct-q4_1.gguf", None) else { return };
    let prompt = Prompt::Text("Once upon a time".into());
    engine.start(&prompt, greedy(50)).unwrap();
    block_on(engine.next_event()).unwrap();
    let busy = engine.start(&prompt, greedy(5)).unwrap_err();
    assert_eq!(busy.code(), "busy");
    assert!(matches!(block_on(engine.score(&prompt, &Continuation::Text(" there".into()))), Err(EngineError::Busy)));
    engine.abort();
    assert!(!engine.is_busy());
    // After an abort the engine generates again, and the same prompt gives the same tokens
    // as on a fresh engine (the reused cache prefix is exact).
    engine.start(&prompt, greedy(8)).unwrap();
    let again = run(&mut engine);
    let mut fresh = self::engine("smollm2-135m-instruct-q4_1.gguf", None).unwrap();
    fresh.start(&prompt, greedy(8)).unwrap();
    assert_eq!(again, strip_timing(run(&mut fresh), &again));
}

/// `done` carries timings, which differ between runs; compare everything else.
fn strip_timing(mut events: Vec<Event>, like: &[Event]) -> Vec<Event> {
    if let (Some(Event::Done { stats: a }), Some(Event::Done { stats: b })) = (events.last_mut(), like.last()) {
        a.prefill_s = b.prefill_s;
        a.decode_s = b.decode_s;
        a.prefill_tok_s = b.prefill_tok_s;
        a.decode_tok_s = b.decode_tok_s;
        // The second run reused the cached prompt prefix: a cost, not a result.
        a.processed_tokens = b.processed_tokens;
        a.cached_tokens = b.cached_tokens;
    }
    events
}

#[test]
fn prompt_longer_than_the_context_is_a_typed_error() {
    let Some(mut engine) = engine("smollm2-135m-instruct-q4_1.gguf", Some(16)) else { return };
    let long = Prompt::Text("word ".repeat(40));
    let err = engine.start(&long, greedy(4)).unwrap_err();
    assert_eq!(err.code(), "context_overflow", "{err}");
    let err = block_on(engine.score(&long, &Continuation::Text(" more".into()))).unwrap_err();
    assert_eq!(err.code(), "context_overflow", "{err}");
    // Still usable.
    engine.start(&Prompt::Text("Hi".into()), greedy(2)).unwrap();
    assert!(matches!(run(&mut engine).last(), Some(Event::Done { .. })));
}

#[test]
fn invalid_options_are_typed_errors() {
    let Some(mut engine) = engine("smollm2-135m-instruct-q4_1.gguf", None) else { return };
    let prompt = Prompt::Text("Hi".into());
    for bad in [
        r#"{"temperature": -1}"#,
        r#"{"top_p": 0}"#,
        r#"{"max_tokens": 0}"#,
        r#"{"thinking": {"min_tokens": 10, "max_tokens": 5}}"#,
    ] {
        let request: GenerateRequest = serde_json::from_str(bad).unwrap();
        let err = engine.start(&prompt, request).unwrap_err();
        assert_eq!(err.code(), "invalid_options", "{bad}: {err}");
    }
    assert!(serde_json::from_str::<GenerateRequest>(r#"{"temprature": 1}"#).is_err(), "unknown fields are refused");
    assert!(!engine.is_busy());
}

/// A copy of the tiny Llama GGUF, edited.
fn tiny_gguf() -> Vec<u8> {
    std::fs::read(common::root_path("tests/fixtures/tiny/llama/model.gguf")).unwrap()
}

fn load_err(bytes: &[u8]) -> LoadError {
    match loader::load_gguf_bytes(bytes) {
        Ok(m) => match pensive::model::CpuModel::new(m, None) {
            Ok(_) => panic!("loaded a bad model"),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

#[test]
fn truncated_model_files_are_typed_errors_at_every_cut() {
    let bytes = tiny_gguf();
    // Cuts in the header, in the tensor infos and in the tensor data.
    for cut in [0, 3, 10, 200, 2000, bytes.len() / 2, bytes.len() - 1] {
        match load_err(&bytes[..cut]) {
            LoadError::Truncated { .. } | LoadError::Gguf(pensive::gguf::GgufError::Truncated { .. }) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn wrong_magic_and_unsupported_architecture_are_typed_errors() {
    let mut bytes = tiny_gguf();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(matches!(load_err(&bytes), LoadError::Gguf(pensive::gguf::GgufError::BadMagic(_))));
    // Rename the architecture value "llama" → "llamb" (same length, so the file stays valid).
    let mut bytes = tiny_gguf();
    let needle = b"general.architecture";
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap() + needle.len() + 4 + 8;
    assert_eq!(&bytes[at..at + 5], b"llama");
    bytes[at + 4] = b'b';
    match load_err(&bytes) {
        LoadError::Config(pensive::config::ConfigError::UnsupportedArch(a)) => assert_eq!(a, "llamb"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_tensor_is_named() {
    let mut bytes = tiny_gguf();
    // Rename one tensor so that the decoder cannot find it.
    let needle = b"blk.1.ffn_up.weight";
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
    bytes[at + 4] = b'X';
    match load_err(&bytes) {
        LoadError::MissingTensor(name) => assert_eq!(name, "blk.1.ffn_up.weight"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn engine_errors_carry_codes() {
    let mut bytes = tiny_gguf();
    bytes[..4].copy_from_slice(b"XXXX");
    let err = EngineError::from(loader::load_gguf_bytes(&bytes).err().unwrap());
    assert_eq!(err.code(), "model_format");
}
