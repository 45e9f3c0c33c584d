//! Tokenizer parity with llama.cpp: its own test vectors (vocab-only GGUFs with .inp/.out
//! files, fetched by scripts/fetch-test-data.sh), the real model GGUFs, the DeepSeek-R1-Distill
//! GGUF header and a Hugging Face tokenizer.json.

use std::collections::BTreeMap;
use std::path::Path;

use pensive::gguf::{GgufError, GgufHeader, MetaValue, Metadata};
use pensive::tokenizer::{Tokenizer, TokenizerError};

mod common;

/// (input text, expected ids) pairs.
type Vectors = Vec<(String, Vec<u32>)>;

/// Metadata of a GGUF file, reading only as much of it as the header needs.
fn gguf_metadata(path: &Path) -> Metadata {
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut prefix = Vec::new();
    let mut want: u64 = 8 << 20;
    loop {
        let have = prefix.len() as u64;
        (&mut file).take(want - have).read_to_end(&mut prefix).expect("read GGUF");
        match GgufHeader::parse(&prefix) {
            Ok(header) => return header.metadata,
            Err(GgufError::Truncated { needed, .. }) if (prefix.len() as u64) == want => {
                want = needed.max(want * 2);
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}

fn tokenizer_from_gguf(path: &Path) -> Tokenizer {
    Tokenizer::from_gguf(&gguf_metadata(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// llama.cpp's test-tokenizer-0 format: inputs separated by "\n__ggml_vocab_test__\n", one
/// line of space-separated expected ids per input.
fn read_vectors(inp: &Path, out: &Path) -> Vectors {
    let raw = std::fs::read_to_string(inp).expect("read .inp");
    let expected = std::fs::read_to_string(out).expect("read .out");
    const SEP: &str = "\n__ggml_vocab_test__\n";
    let mut inputs: Vec<String> = Vec::new();
    let mut rest = raw.as_str();
    while !rest.is_empty() {
        match rest.find(SEP) {
            Some(i) => {
                inputs.push(rest[..i].to_owned());
                rest = &rest[i + SEP.len()..];
            }
            None => {
                inputs.push(rest.to_owned());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = expected
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().expect("token id")).collect())
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "{}: inputs and outputs differ in count", inp.display());
    inputs.into_iter().zip(outputs).collect()
}

/// Run every vector; report and fail on mismatches.
fn check_vectors(name: &str, tok: &Tokenizer, vectors: &[(String, Vec<u32>)]) {
    let mut failures = Vec::new();
    for (text, want) in vectors {
        let got = tok.encode(text, false).expect("encode");
        if &got != want {
            failures.push(format!("  {text:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    eprintln!("{name}: {}/{} vectors match", vectors.len() - failures.len(), vectors.len());
    assert!(failures.is_empty(), "{name}: {} mismatches:\n{}", failures.len(), failures.join("\n"));
}

fn llama_cpp_vocab(vocab: &str) -> Option<(Tokenizer, Vectors)> {
    let file = format!("testdata/ggml-vocab-{vocab}.gguf");
    let path = common::model_path(&file)?;
    let tok = tokenizer_from_gguf(&path);
    let vectors = read_vectors(&path.with_extension("gguf.inp"), &path.with_extension("gguf.out"));
    Some((tok, vectors))
}

#[test]
fn llama_cpp_vectors_qwen2() {
    let Some((tok, vectors)) = llama_cpp_vocab("qwen2") else { return };
    check_vectors("ggml-vocab-qwen2", &tok, &vectors);
}

#[test]
fn llama_cpp_vectors_llama_bpe() {
    let Some((tok, vectors)) = llama_cpp_vocab("llama-bpe") else { return };
    assert!(tok.add_bos(), "llama-bpe vocabularies start prompts with bos by default");
    check_vectors("ggml-vocab-llama-bpe", &tok, &vectors);
}

#[test]
fn llama_cpp_vectors_gpt2() {
    let Some((tok, vectors)) = llama_cpp_vocab("gpt-2") else { return };
    check_vectors("ggml-vocab-gpt-2", &tok, &vectors);
}

/// StarCoder's pre-tokenizer is the very regex list llama.cpp uses for `smollm`.
#[test]
fn llama_cpp_vectors_starcoder_same_split_as_smollm() {
    let Some((tok, vectors)) = llama_cpp_vocab("starcoder") else { return };
    check_vectors("ggml-vocab-starcoder", &tok, &vectors);
}

#[test]
fn llama_cpp_vectors_qwen35() {
    let Some((tok, vectors)) = llama_cpp_vocab("qwen35") else { return };
    check_vectors("ggml-vocab-qwen35", &tok, &vectors);
}

/// The Qwen2.5-Coder vocabulary is Qwen2's, so llama.cpp's qwen2 vectors hold for it too.
#[test]
fn qwen25_coder_gguf_matches_qwen2_vectors() {
    let Some(path) = common::model_path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
    let Some(vocab) = common::model_path("testdata/ggml-vocab-qwen2.gguf") else { return };
    let tok = tokenizer_from_gguf(&path);
    let vectors = read_vectors(&vocab.with_extension("gguf.inp"), &vocab.with_extension("gguf.out"));
    check_vectors("qwen2.5-coder-0.5b (qwen2 vectors)", &tok, &vectors);
}

/// Vectors committed under tests/fixtures/tokenizer/, made by tests/fixtures/gen/tok_*.py.
#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<FixtureCase>,
}
#[derive(serde::Deserialize)]
struct FixtureCase {
    text: String,
    ids: Vec<u32>,
}

fn fixture_vectors(file: &str) -> Vectors {
    let path = common::root_path("tests/fixtures/tokenizer").join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixture: Fixture = serde_json::from_slice(&bytes).expect("fixture JSON");
    assert!(!fixture.cases.is_empty());
    fixture.cases.into_iter().map(|c| (c.text, c.ids)).collect()
}

#[test]
fn smollm2_gguf_matches_hf_reference() {
    let Some(path) = common::model_path("smollm2-135m-instruct-q4_1.gguf") else { return };
    let tok = tokenizer_from_gguf(&path);
    check_vectors("smollm2-135m (HF reference)", &tok, &fixture_vectors("smollm2.json"));
}

#[test]
fn qwen25_coder_gguf_matches_hf_reference() {
    let Some(path) = common::model_path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
    let tok = tokenizer_from_gguf(&path);
    check_vectors("qwen2.5-coder-0.5b (HF reference)", &tok, &fixture_vectors("qwen2.5-coder.json"));
}

#[test]
fn smollm2_splits_digits_and_knows_its_specials() {
    let Some(path) = common::model_path("smollm2-135m-instruct-q4_1.gguf") else { return };
    let tok = tokenizer_from_gguf(&path);
    assert_eq!(tok.vocab_size(), 49152);
    // `smollm` isolates every digit before the GPT-2 split.
    let digits = tok.encode("2024", false).unwrap();
    assert_eq!(digits.len(), 4, "{digits:?}");
    assert_eq!(tok.decode(&digits), "2024");
    assert!(!tok.add_bos(), "the SmolLM2 GGUF sets add_bos_token = false");
    let im_start = tok.token_id("<|im_start|>").expect("<|im_start|> is one token");
    let im_end = tok.token_id("<|im_end|>").expect("<|im_end|> is one token");
    assert!(tok.is_special(im_start) && tok.is_special(im_end));
    assert_eq!(tok.eos(), Some(im_end), "SmolLM2-Instruct's eos is <|im_end|>");
    assert!(tok.end_of_generation_ids().contains(&im_end));
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(ids.first(), Some(&im_start));
    assert_eq!(ids.last(), Some(&im_end));
    assert_eq!(tok.decode(&ids), "<|im_start|>user\nHi<|im_end|>");
    assert!(tok.chat_template().is_some_and(|t| t.contains("<|im_start|>")));
}

#[test]
fn qwen25_end_of_generation_found_by_text() {
    let Some(path) = common::model_path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
    let tok = tokenizer_from_gguf(&path);
    let im_end = tok.token_id("<|im_end|>").expect("one token");
    let endoftext = tok.token_id("<|endoftext|>").expect("one token");
    let eog = tok.end_of_generation_ids();
    assert!(eog.contains(&im_end) && eog.contains(&endoftext), "{eog:?}");
    assert!(tok.is_end_of_generation(im_end));
    assert_eq!(tok.eos(), Some(im_end));
    // A plain word never ends generation.
    let hello = tok.token_id("Hello").expect("one token");
    assert!(!tok.is_end_of_generation(hello) && !tok.is_special(hello));
    assert!(eog.windows(2).all(|w| w[0] < w[1]), "ascending, no duplicates");
    assert!(!tok.add_bos());
    let bos = tok.bos().expect("the file names a bos id");
    assert_eq!(tok.encode("Hi", true).unwrap().first(), Some(&bos));
}

/// DeepSeek-R1-Distill-Qwen: only the first 8 MiB of the GGUF (the header) are on disk.
#[test]
fn deepseek_r1_distill_from_truncated_gguf_header() {
    let Some(path) = common::model_path("testdata/deepseek-r1-distill-qwen-7b.header.gguf") else { return };
    let prefix = std::fs::read(&path).expect("read header prefix");
    let header = GgufHeader::parse(&prefix).expect("the whole header fits in the prefix");
    assert_eq!(header.metadata.get_str("tokenizer.ggml.pre"), Some("deepseek-r1-qwen"));
    let tok = Tokenizer::from_gguf(&header.metadata).expect("tokenizer");
    let end_think = tok.token_id("</think>").expect("</think> is one token");
    assert_eq!(end_think, 151649);
    let think = tok.token_id("<think>").expect("<think> is one token");
    assert_eq!(tok.encode("<think>\nhmm</think>", false).unwrap().first(), Some(&think));
    let eos = tok.eos().expect("eos");
    assert_eq!(tok.token_text(eos).as_deref(), Some("<｜end▁of▁sentence｜>"));
    assert!(tok.is_end_of_generation(eos));
    assert!(!tok.is_end_of_generation(end_think));
    assert!(tok.add_bos(), "the file sets add_bos_token = true");
    assert_eq!(tok.token_text(tok.bos().expect("bos")).as_deref(), Some("<｜begin▁of▁sentence｜>"));
    assert!(tok.chat_template().is_some_and(|t| t.contains("<｜Assistant｜>")));
    // Same base vocabulary and split as Qwen2: llama.cpp's qwen2 vectors hold.
    if let Some(vocab) = common::model_path("testdata/ggml-vocab-qwen2.gguf") {
        let vectors = read_vectors(&vocab.with_extension("gguf.inp"), &vocab.with_extension("gguf.out"));
        check_vectors("deepseek-r1-distill-qwen (qwen2 vectors)", &tok, &vectors);
    }
}

#[test]
fn qwen3_from_tokenizer_json() {
    let Some(json) = common::model_path("testdata/qwen3/tokenizer.json") else { return };
    let Some(config) = common::model_path("testdata/qwen3/tokenizer_config.json") else { return };
    let json = std::fs::read(json).unwrap();
    let config = std::fs::read(config).unwrap();
    let tok = Tokenizer::from_json(&json, Some(&config)).expect("from_json");
    assert_eq!(tok.token_id("<think>"), Some(151667));
    assert_eq!(tok.token_id("</think>"), Some(151668));
    let ids = tok.encode("<think>\nok\n</think>\n\nHi", false).unwrap();
    assert_eq!(ids.first(), Some(&151667));
    assert!(ids.contains(&151668));
    assert_eq!(tok.decode(&ids), "<think>\nok\n</think>\n\nHi");
    let im_end = tok.token_id("<|im_end|>").expect("one token");
    assert_eq!(tok.eos(), Some(im_end));
    assert!(tok.end_of_generation_ids().contains(&im_end));
    assert!(tok.end_of_generation_ids().contains(&tok.token_id("<|endoftext|>").expect("one token")));
    assert!(!tok.add_bos());
    assert!(tok.chat_template().is_some_and(|t| t.contains("<think>")));
    // Qwen3 keeps Qwen2's merges for ordinary text.
    if let Some(vocab) = common::model_path("testdata/ggml-vocab-qwen2.gguf") {
        let vectors = read_vectors(&vocab.with_extension("gguf.inp"), &vocab.with_extension("gguf.out"));
        check_vectors("qwen3 tokenizer.json (qwen2 vectors)", &tok, &vectors);
    }
}

/// Texts whose characters span several byte-level tokens.
const MULTIBYTE_TEXTS: &[&str] = &["Hello 🦙🦙 world 😀!", "世界你好，今天天气很好。", "ключ 🇺🇦 中文 ½ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"];

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let Some(path) = common::model_path("testdata/ggml-vocab-qwen2.gguf") else { return };
    let tok = tokenizer_from_gguf(&path);
    let mut saw_partial_token = false;
    for text in MULTIBYTE_TEXTS {
        let ids = tok.encode(text, false).unwrap();
        let mut stream = tok.stream_decoder();
        let mut out = String::new();
        for &id in &ids {
            let chunk = stream.push(id);
            assert!(!chunk.contains('\u{FFFD}'), "{text:?}: chunk {chunk:?} has a replacement char");
            saw_partial_token |= std::str::from_utf8(tok.token_bytes(id).unwrap()).is_err();
            out.push_str(&chunk);
        }
        out.push_str(&stream.flush());
        assert_eq!(out, *text);
        assert_eq!(tok.decode(&ids), *text);
    }
    assert!(saw_partial_token, "the texts must exercise tokens that split a character");
}

#[test]
fn stream_decoder_flushes_an_incomplete_tail_as_replacement() {
    let Some(path) = common::model_path("testdata/ggml-vocab-qwen2.gguf") else { return };
    let tok = tokenizer_from_gguf(&path);
    // A token that is only the first bytes of a multi-byte character.
    let mut ids = Vec::new();
    for text in MULTIBYTE_TEXTS {
        ids.extend(tok.encode(text, false).unwrap());
    }
    let is_lead_fragment = |id: &u32| {
        std::str::from_utf8(tok.token_bytes(*id).unwrap())
            .is_err_and(|e| e.valid_up_to() == 0 && e.error_len().is_none())
    };
    let fragment = *ids.iter().find(|id| is_lead_fragment(id)).expect("the texts hold a split character");
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(fragment), "", "an incomplete character is held back");
    assert_eq!(stream.flush(), "\u{FFFD}");
    assert_eq!(stream.flush(), "", "flush empties the decoder");
}

fn meta(entries: &[(&str, MetaValue)]) -> Metadata {
    Metadata(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>())
}

fn strs(items: &[&str]) -> MetaValue {
    MetaValue::Array(items.iter().map(|s| MetaValue::Str(s.to_string())).collect())
}

#[test]
fn unsupported_model_and_pre_tokenizer_are_named() {
    let spm = meta(&[("tokenizer.ggml.model", MetaValue::Str("llama".into())), ("tokenizer.ggml.tokens", strs(&["a"]))]);
    match Tokenizer::from_gguf(&spm) {
        Err(TokenizerError::UnsupportedModel(name)) => assert_eq!(name, "llama"),
        other => panic!("expected UnsupportedModel, got {other:?}"),
    }
    let odd_pre = meta(&[
        ("tokenizer.ggml.model", MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre", MetaValue::Str("klingon".into())),
        ("tokenizer.ggml.tokens", strs(&["a"])),
        ("tokenizer.ggml.merges", strs(&[])),
    ]);
    match Tokenizer::from_gguf(&odd_pre) {
        Err(e @ TokenizerError::UnsupportedPreTokenizer(_)) => assert!(e.to_string().contains("klingon")),
        other => panic!("expected UnsupportedPreTokenizer, got {other:?}"),
    }
    let no_tokens = meta(&[("tokenizer.ggml.model", MetaValue::Str("gpt2".into())), ("tokenizer.ggml.pre", MetaValue::Str("qwen2".into()))]);
    assert!(matches!(Tokenizer::from_gguf(&no_tokens), Err(TokenizerError::MissingKey("tokenizer.ggml.tokens"))));
}

/// A hand-made vocabulary: merges, specials, byte alphabet and ids, without any file.
#[test]
fn tiny_vocabulary_from_metadata() {
    // "Ġ" is the byte-level spelling of a space.
    let tokens = ["h", "i", "Ġ", "hi", "Ġhi", "<|im_end|>", "<x>", "!"];
    let m = meta(&[
        ("tokenizer.ggml.model", MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre", MetaValue::Str("qwen2".into())),
        ("tokenizer.ggml.tokens", strs(&tokens)),
        // "<|im_end|>" is typed normal here: llama.cpp promotes it to control by its text.
        ("tokenizer.ggml.token_type", MetaValue::Array([1, 1, 1, 1, 1, 1, 4, 1].map(MetaValue::I32).to_vec())),
        ("tokenizer.ggml.merges", strs(&["h i", "Ġ hi"])),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(5)),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(99)), // out of range: ignored, as llama.cpp
    ]);
    let tok = Tokenizer::from_gguf(&m).expect("tokenizer");
    assert_eq!(tok.encode("hi hi!", false).unwrap(), vec![3, 4, 7]);
    assert_eq!(tok.encode("hi<|im_end|><x>", false).unwrap(), vec![3, 5, 6]);
    assert_eq!(tok.decode(&[3, 4, 7, 5]), "hi hi!<|im_end|>");
    assert_eq!(tok.bos(), None);
    assert_eq!(tok.encode("hi", true).unwrap(), vec![3], "no bos to add");
    assert_eq!(tok.end_of_generation_ids(), &[5]);
    assert!(tok.is_special(5) && tok.is_special(6) && !tok.is_special(3));
    assert_eq!(tok.token_id("<x>"), Some(6));
    assert_eq!(tok.token_id("hi hi"), None, "two tokens");
    assert_eq!(tok.decode(&[1000]), "\u{FFFD}");
}

#[test]
fn from_json_refuses_what_it_cannot_decode_byte_exactly() {
    // A word-level tokenizer has no byte alphabet to undo.
    let word_level = br#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,
        "post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}}"#;
    match Tokenizer::from_json(word_level, None) {
        Err(e @ TokenizerError::UnsupportedJson(_)) => assert!(e.to_string().contains("WordLevel")),
        other => panic!("expected UnsupportedJson, got {other:?}"),
    }
    assert!(matches!(Tokenizer::from_json(b"{not json", None), Err(TokenizerError::Json(_))));
}
