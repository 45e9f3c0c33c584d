//! Text ⇄ token ids, reproducing llama.cpp's byte-level BPE tokenization.
//!
//! Two sources build the same [`Tokenizer`]:
//! - [`Tokenizer::from_gguf`]: the vocabulary every GGUF carries (`tokenizer.ggml.*`). This is
//!   the path that matters: no model package ships a `tokenizer.json`.
//! - [`Tokenizer::from_json`]: Hugging Face `tokenizer.json` (+ `tokenizer_config.json`).
//!
//! Encoding is delegated to the `tokenizers` crate (BPE merges, added-token matching), built
//! with fancy-regex so that native and wasm32 tokenize identically. What we add is the part
//! llama.cpp decides and HF files do not say when they come from a GGUF:
//! 1. The pre-tokenizer. A GGUF names it (`tokenizer.ggml.pre`, e.g. `qwen2`, `smollm`);
//!    llama.cpp maps each name to a list of regexes (llama-vocab.cpp, `llm_tokenizer_bpe`).
//!    The list is applied as successive refinements: every regex splits each piece the
//!    previous ones produced, keeping the unmatched stretches as pieces too. That is exactly
//!    a `Sequence` of `Split(regex, Isolated)`, followed by the GPT-2 byte-to-unicode mapping
//!    (`ByteLevel` without its own regex). SmolLM's list, for example, starts with `\p{N}`,
//!    which is why it tokenizes "2024" as four digits.
//! 2. Which tokens are matched whole in the text: control (token_type 3), user-defined (4)
//!    and unknown (2) tokens, plus tokens llama.cpp promotes to control by their text
//!    (`<|im_end|>`, `<|fim_pad|>`, …). We always parse them, like llama.cpp's
//!    `tokenize(…, parse_special = true)`.
//! 3. End-of-generation ids: eos, eot, eom and every token whose text llama.cpp treats as
//!    ending a turn (`<|im_end|>`, `<|endoftext|>`, …) — found by text, never by number.
//!
//! Decoding does not go through `tokenizers`: each id maps to the exact bytes it stands for
//! (GPT-2 byte alphabet undone for ordinary tokens, raw text for special ones, as llama.cpp's
//! `token_to_piece(special = true)`), so a token holding half of a UTF-8 character stays
//! representable and [`StreamDecoder`] can hold it back until the character completes.

use std::collections::HashSet;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::gguf::Metadata;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata has no '{0}'")]
    MissingKey(&'static str),
    #[error("GGUF metadata '{key}' is not {expected}")]
    BadKey { key: &'static str, expected: &'static str },
    #[error("unsupported tokenizer model '{0}' (supported: 'gpt2', byte-level BPE)")]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer '{0}' (supported: {SUPPORTED_PRE})")]
    UnsupportedPreTokenizer(String),
    #[error("'{key}' has {got} entries but the vocabulary has {expected} tokens")]
    LengthMismatch { key: &'static str, got: usize, expected: usize },
    #[error("BPE merge #{index} '{merge}' is not two tokens separated by a space")]
    BadMerge { index: usize, merge: String },
    #[error("token '{0}' appears twice in the vocabulary")]
    DuplicateToken(String),
    #[error("tokenizer.json is not supported: {0}")]
    UnsupportedJson(String),
    #[error("invalid tokenizer JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// An error from the `tokenizers` crate (a regex that does not compile, a bad
    /// tokenizer.json, an encoding failure).
    #[error("tokenizers: {0}")]
    Library(String),
}

fn lib_err(e: tokenizers::Error) -> TokenizerError {
    TokenizerError::Library(e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers, as llama.cpp defines them per `tokenizer.ggml.pre`
// ---------------------------------------------------------------------------------------------

/// GPT-2's split: contractions, letters, numbers, other symbols, whitespace runs.
const RE_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's split. llama.cpp spells the case-insensitive contractions out as character
/// classes (`'[sS]`) instead of HF's `(?i:'s|…)`; the two differ only on exotic case folds
/// (e.g. U+017F ſ folds to s), and we follow llama.cpp.
const RE_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with single digits (`\p{N}` instead of `\p{N}{1,3}`).
const RE_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's split: Qwen2's with combining marks kept inside words.
const RE_QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// One digit per piece (StarCoder, SmolLM): applied before GPT-2's split.
const RE_EACH_DIGIT: &str = r"\p{N}";

const SUPPORTED_PRE: &str = "default, gpt-2, mpt, olmo, llama3, llama-v3, llama-bpe, qwen2, \
                             deepseek-r1-qwen, stablelm2, qwen35, smollm, starcoder, refact, codeshell";

/// What `tokenizer.ggml.pre` decides.
struct PreTokenizerSpec {
    /// Applied in order, each refining the pieces of the previous one.
    regexes: &'static [&'static str],
    /// Emit a pre-token whole when it is itself in the vocabulary, without merging
    /// (llama.cpp's `ignore_merges`, HF's BPE `ignore_merges`).
    ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the file has no `tokenizer.ggml.add_bos_token`.
    add_bos: bool,
}

fn pre_tokenizer_spec(name: Option<&str>) -> Result<PreTokenizerSpec, TokenizerError> {
    let spec = |regexes, ignore_merges, add_bos| PreTokenizerSpec { regexes, ignore_merges, add_bos };
    Ok(match name {
        // A file without a name gets llama.cpp's "default" (which it warns degrades quality).
        None | Some("default") => spec(
            &[r"[\p{P}\$\+<=>\^~\|]+", RE_GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
            false,
            false,
        ),
        Some("gpt-2" | "mpt" | "olmo") => spec(&[RE_GPT2], false, false),
        Some("llama3" | "llama-v3" | "llama-bpe") => spec(&[RE_LLAMA3], true, true),
        Some("qwen2" | "deepseek-r1-qwen" | "stablelm2") => spec(&[RE_QWEN2], false, false),
        Some("qwen35") => spec(&[RE_QWEN35], false, false),
        Some("smollm" | "starcoder" | "refact" | "codeshell") => {
            spec(&[RE_EACH_DIGIT, RE_GPT2], false, false)
        }
        Some(other) => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_owned())),
    })
}

fn build_pre_tokenizer(regexes: &[&str]) -> Result<PreTokenizerWrapper, TokenizerError> {
    let mut steps = Vec::with_capacity(regexes.len() + 1);
    for re in regexes {
        let split = Split::new(SplitPattern::Regex((*re).to_owned()), SplitDelimiterBehavior::Isolated, false)
            .map_err(lib_err)?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    // Only the byte → unicode mapping: the splitting was done above.
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte alphabet
// ---------------------------------------------------------------------------------------------

/// Byte-level BPE writes every byte as a printable character: bytes that already are
/// printable (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves, the other 68 are shifted to
/// U+0100.. in byte order (so the space 0x20 becomes U+0120 'Ġ'). This inverts that map.
fn byte_level_char_to_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let cp = c as u32;
    if cp < 0x100 {
        return printable(cp).then_some(cp as u8);
    }
    let shifted = cp.checked_sub(0x100)?;
    // The n-th non-printable byte, counting from 0.
    (0u32..0x100).filter(|&b| !printable(b)).nth(shifted as usize).map(|b| b as u8)
}

/// The bytes a byte-level token text stands for. A character outside the alphabet (which a
/// well-formed vocabulary does not contain) is kept as its UTF-8, as llama.cpp does.
fn byte_level_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match byte_level_char_to_byte(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Special tokens found by their text (llama-vocab.cpp, "auto-detect special tokens by text")
// ---------------------------------------------------------------------------------------------

/// Token texts llama.cpp treats as ending generation (its `special_eog_ids` list). Kept
/// verbatim for parity, quirks included: Qwen2's vocabulary has an ordinary BPE token "</s>"
/// (id 128247) that this list makes an end-of-generation *and* control token, exactly as in
/// llama.cpp (so "</s>" in a prompt is one token there and here, three in transformers).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
];
/// Texts llama.cpp takes as the end-of-turn token when the file names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
];
/// Fill-in-the-middle padding / repository / file-separator tokens: llama.cpp adds these to
/// the end-of-generation set too (a code model emitting one has left the current file).
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>",
    "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
];
/// Other fill-in-the-middle tokens llama.cpp promotes to control (so they are parsed whole).
const FIM_OTHER_TEXTS: &[&str] = &[
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
    "<|code_prefix|>", "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
    "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>",
    "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
    "<|middle|>",
];

/// `tokenizer.ggml.token_type` values (llama.h, `llama_token_type`).
mod token_type {
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
}

// ---------------------------------------------------------------------------------------------
// The tokenizer
// ---------------------------------------------------------------------------------------------

/// A byte-level BPE tokenizer with llama.cpp's special-token semantics.
pub struct Tokenizer {
    /// In a cell because plain-text encoding flips the library's "encode special tokens as
    /// text" switch for the duration of one call (a second copy of a 150k vocabulary would
    /// cost wasm memory instead).
    inner: std::cell::RefCell<tokenizers::Tokenizer>,
    /// Per id: the bytes the token stands for when decoded (empty for unused tokens).
    pieces: Vec<Vec<u8>>,
    /// Per id: matched whole in text and rendered verbatim (control, user-defined, unknown).
    special: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Every id that ends a turn, ascending.
    end_of_generation: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.pieces.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("end_of_generation", &self.end_of_generation)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// Read a GGUF string array.
fn string_array<'m>(meta: &'m Metadata, key: &'static str) -> Result<Vec<&'m str>, TokenizerError> {
    let values = meta.get_array(key).ok_or(TokenizerError::MissingKey(key))?;
    values
        .iter()
        .map(|v| v.as_str().ok_or(TokenizerError::BadKey { key, expected: "an array of strings" }))
        .collect()
}

/// An optional token id from metadata; ids outside the vocabulary are ignored, as llama.cpp
/// does ("bad special token … using default id").
fn optional_id(meta: &Metadata, key: &'static str, vocab_size: usize) -> Option<u32> {
    meta.get_u32(key).filter(|&id| (id as usize) < vocab_size)
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf(meta: &Metadata) -> Result<Self, TokenizerError> {
        let model = meta.get_str("tokenizer.ggml.model").ok_or(TokenizerError::MissingKey("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_owned()));
        }
        let pre = pre_tokenizer_spec(meta.get_str("tokenizer.ggml.pre"))?;

        let tokens = string_array(meta, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        // llama.cpp renames empty tokens so that every text is distinct; so do we.
        let texts: Vec<String> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| if t.is_empty() { format!("[EMPTY_{i}]") } else { (*t).to_owned() })
            .collect();

        let mut types: Vec<i64> = match meta.get_array("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(values) => {
                if values.len() < n {
                    return Err(TokenizerError::LengthMismatch { key: "tokenizer.ggml.token_type", got: values.len(), expected: n });
                }
                values[..n]
                    .iter()
                    .map(|v| v.as_i64().ok_or(TokenizerError::BadKey { key: "tokenizer.ggml.token_type", expected: "an integer array" }))
                    .collect::<Result<_, _>>()?
            }
        };

        let merges = string_array(meta, "tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(index, m)| {
                // llama.cpp splits at the first space after the first byte (so a merge may
                // start with a space token).
                match m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(p, _)| p) {
                    Some(p) => Ok((m[..p].to_owned(), m[p + 1..].to_owned())),
                    None => Err(TokenizerError::BadMerge { index, merge: m.to_owned() }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        let vocab: Vocab = texts.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
        if vocab.len() != n {
            // Name the first repeated text (llama.cpp refuses such a vocabulary too).
            let mut seen = HashSet::with_capacity(n);
            let dup = texts.iter().find(|t| !seen.insert(t.as_str())).cloned().unwrap_or_default();
            return Err(TokenizerError::DuplicateToken(dup));
        }

        // Tokens llama.cpp recognises by their text become control tokens even when the file
        // typed them as normal (so "<|im_end|>" in a prompt is one token, never "<|", "im", …).
        let promoted = |t: &str| {
            EOG_TEXTS.contains(&t) || EOT_TEXTS.contains(&t) || FIM_EOG_TEXTS.contains(&t)
                || FIM_OTHER_TEXTS.contains(&t)
        };
        for (ty, t) in types.iter_mut().zip(&texts) {
            if promoted(t) && *ty != token_type::USER_DEFINED && *ty != token_type::UNKNOWN {
                *ty = token_type::CONTROL;
            }
        }

        let special: Vec<bool> = types
            .iter()
            .map(|&t| matches!(t, token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN))
            .collect();
        let pieces: Vec<Vec<u8>> = texts
            .iter()
            .zip(&types)
            .zip(&special)
            .map(|((text, &ty), &is_special)| {
                if is_special {
                    text.as_bytes().to_vec()
                } else if ty == token_type::UNUSED {
                    Vec::new()
                } else {
                    byte_level_decode(text)
                }
            })
            .collect();

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(lib_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(build_pre_tokenizer(pre.regexes)?));
        let added: Vec<AddedToken> = texts
            .iter()
            .zip(&special)
            .filter(|(_, &s)| s)
            .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        inner.add_special_tokens(&added);

        let bos = optional_id(meta, "tokenizer.ggml.bos_token_id", n);
        let eos = optional_id(meta, "tokenizer.ggml.eos_token_id", n);
        // llama.cpp also guesses eot/eom from token texts when these keys are absent, but
        // every text it would pick is in EOG_TEXTS already.
        let eot = optional_id(meta, "tokenizer.ggml.eot_token_id", n);
        let eom = optional_id(meta, "tokenizer.ggml.eom_token_id", n);

        let mut end_of_generation: Vec<u32> = texts
            .iter()
            .enumerate()
            .filter(|(_, t)| EOG_TEXTS.contains(&t.as_str()) || FIM_EOG_TEXTS.contains(&t.as_str()))
            .map(|(i, _)| i as u32)
            .collect();
        end_of_generation.extend([eos, eot, eom].into_iter().flatten());
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        Ok(Self {
            inner: inner.into(),
            pieces,
            special,
            bos,
            eos,
            end_of_generation,
            add_bos: meta.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(pre.add_bos),
            chat_template: meta.get_str("tokenizer.chat_template").map(str::to_owned),
        })
    }

    /// Build from Hugging Face files. `tokenizer_config_json` supplies the chat template, the
    /// bos/eos token strings and `add_bos_token`. Only byte-level BPE tokenizers are accepted.
    pub fn from_json(tokenizer_json: &[u8], tokenizer_config_json: Option<&[u8]>) -> Result<Self, TokenizerError> {
        let raw: serde_json::Value = serde_json::from_slice(tokenizer_json)?;
        let decoder = raw.pointer("/decoder/type").and_then(|v| v.as_str()).unwrap_or("none");
        let model = raw.pointer("/model/type").and_then(|v| v.as_str()).unwrap_or("none");
        if model != "BPE" || decoder != "ByteLevel" {
            return Err(TokenizerError::UnsupportedJson(format!(
                "model '{model}' with decoder '{decoder}' (need BPE with a ByteLevel decoder)"
            )));
        }
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(lib_err)?;
        let config: serde_json::Value = match tokenizer_config_json {
            Some(bytes) => serde_json::from_slice(bytes)?,
            None => serde_json::Value::Null,
        };

        let n = inner.get_vocab_size(true);
        let added = inner.get_added_tokens_decoder();
        let mut pieces = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        for id in 0..n as u32 {
            match (added.get(&id), inner.id_to_token(id)) {
                (Some(tok), _) => {
                    pieces.push(tok.content.as_bytes().to_vec());
                    special.push(true);
                }
                (None, Some(text)) => {
                    pieces.push(byte_level_decode(&text));
                    special.push(false);
                }
                // A hole in the id range: nothing to decode to.
                (None, None) => {
                    pieces.push(Vec::new());
                    special.push(false);
                }
            }
        }

        // Token strings in tokenizer_config.json are either "…" or {"content": "…", …}.
        let token_of = |key: &str| -> Option<u32> {
            let v = config.get(key)?;
            let text = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(text)
        };
        let bos = token_of("bos_token");
        let eos = token_of("eos_token");

        let mut end_of_generation: Vec<u32> = EOG_TEXTS
            .iter()
            .chain(FIM_EOG_TEXTS)
            .filter_map(|t| added.iter().find(|(_, a)| a.content == *t).map(|(&id, _)| id))
            .collect();
        end_of_generation.extend(eos);
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        // Without an explicit flag, add bos exactly when the file's post-processor would.
        let add_bos = match config.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(flag) => flag,
            None => match bos {
                Some(bos) => inner.encode("", true).map_err(lib_err)?.get_ids().first() == Some(&bos),
                None => false,
            },
        };

        // A single template string, or a list of named templates of which "default" is used.
        let chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => None,
        };

        Ok(Self { inner: inner.into(), pieces, special, bos, eos, end_of_generation, add_bos, chat_template })
    }

    /// Token ids for `text`, with special-token texts in it (e.g. "<|im_start|>") parsed as
    /// those tokens. `add_bos` prepends the bos token when the vocabulary has one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let inner = self.inner.try_borrow().map_err(|_| TokenizerError::Library("tokenizer in use".into()))?;
        let encoding = inner.encode_fast(text, false).map_err(lib_err)?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Byte ranges of the special-token texts in `text`, as [`Tokenizer::encode`] would
    /// match them.
    pub fn special_spans(&self, text: &str) -> Result<Vec<std::ops::Range<usize>>, TokenizerError> {
        let inner = self.inner.try_borrow().map_err(|_| TokenizerError::Library("tokenizer in use".into()))?;
        let encoding = inner.encode(text, false).map_err(lib_err)?;
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .filter(|(&id, _)| self.is_special(id))
            .map(|(_, &(start, end))| start..end)
            .collect())
    }

    /// Token ids for `text` as plain text: a special token's text in it ("<|im_end|>")
    /// becomes the ordinary tokens that spell it, never that token. What users type goes
    /// through here, so that it cannot end a turn or open a system message.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| TokenizerError::Library("tokenizer in use".into()))?;
        inner.set_encode_special_tokens(true);
        let encoding = inner.encode_fast(text, false);
        inner.set_encode_special_tokens(false);
        Ok(encoding.map_err(lib_err)?.get_ids().to_vec())
    }

    /// Token ids for a rendered prompt in which the byte ranges `literal` (ascending, not
    /// overlapping) came from users: special-token texts outside them are those tokens,
    /// inside them plain text. Without such a text inside a range this is exactly
    /// [`Tokenizer::encode`], so ordinary prompts tokenize as llama.cpp does.
    pub fn encode_with_literals(&self, text: &str, literal: &[std::ops::Range<usize>], add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut ids: Vec<u32> = Vec::new();
        if add_bos {
            ids.extend(self.bos);
        }
        let inner = self.inner.try_borrow().map_err(|_| TokenizerError::Library("tokenizer in use".into()))?;
        // Which special tokens the library finds, and where (byte offsets).
        let encoding = inner.encode(text, false).map_err(lib_err)?;
        let inside = |r: &(usize, usize)| literal.iter().any(|l| r.0 < l.end && l.start < r.1);
        let specials: Vec<(u32, (usize, usize))> = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .filter(|(&id, _)| self.is_special(id))
            .map(|(&id, &o)| (id, o))
            .collect();
        if !specials.iter().any(|(_, o)| inside(o)) {
            ids.extend_from_slice(encoding.get_ids());
            return Ok(ids);
        }
        drop(inner);
        // Split at the template's own special tokens, as the library does, and encode each
        // stretch between them as plain text.
        let mut at = 0;
        for (id, (start, end)) in specials.into_iter().filter(|(_, o)| !inside(o)) {
            if start > at {
                ids.extend(self.encode_plain(text.get(at..start).unwrap_or_default())?);
            }
            ids.push(id);
            at = end;
        }
        if at < text.len() {
            ids.extend(self.encode_plain(text.get(at..).unwrap_or_default())?);
        }
        Ok(ids)
    }

    /// The bytes `ids` stand for, as text; invalid UTF-8 (a character cut at the end) becomes
    /// U+FFFD. Special tokens are rendered as their text; ids outside the vocabulary as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match self.pieces.get(id as usize) {
                Some(piece) => bytes.extend_from_slice(piece),
                None => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of the single token `text` encodes to, if it encodes to exactly one
    /// (e.g. "<think>", " Wait").
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match self.encode(text, false).ok()?.as_slice() {
            [id] => Some(*id),
            _ => None,
        }
    }

    /// The exact bytes token `id` decodes to.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(Vec::as_slice)
    }

    /// The text token `id` decodes to (U+FFFD for an incomplete UTF-8 sequence).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.token_bytes(id).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Every id that ends a turn (eos, eot, eom and the tokens llama.cpp treats as such by
    /// their text), ascending.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.end_of_generation
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// Whether prompts should start with bos (the vocabulary's own setting).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Control, user-defined or unknown tokens: matched whole in text, rendered verbatim.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// A decoder for streaming generated tokens.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder { tokenizer: self, pending: Vec::new() }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming detokenization
// ---------------------------------------------------------------------------------------------

/// Turns generated ids into text as they arrive. A byte-level token can end in the middle of
/// a UTF-8 character (an emoji is often two or three tokens), so bytes that do not yet form
/// a complete character are held back until a later token completes them.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    /// Bytes of an incomplete trailing character (at most 3).
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Append token `id`; returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        match self.tokenizer.pieces.get(id as usize) {
            Some(piece) => self.pending.extend_from_slice(piece),
            None => self.pending.extend_from_slice("\u{FFFD}".as_bytes()),
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Bytes that can never become valid: emit U+FFFD and go on after them.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// End of stream: whatever is still held back (an incomplete character) as U+FFFD.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
