//! The generation loop, pull-based: [`Generation::next_event`] does at most one sampling
//! step per call, so the browser can yield to its event loop (and abort) between steps. It
//! is async because `Backend::forward` is (a WebGPU readback can only be awaited); native
//! callers use `backend::block_on`.
//!
//! As in llama2.c, prompt tokens, forced tokens ("Wait", `</think>`, an answer prefix) and
//! sampled tokens all travel the same path: every kept token is appended to `sequence`, and
//! the not-yet-fed tail of `sequence` (the pending queue) goes to `Backend::forward` in ONE
//! call that returns the logits of its last position only. A forced insertion therefore
//! costs one batched forward of its own tokens and nothing else: no recomputation.
//!
//! Accounting, exact by construction and checked by tests:
//! `processed_tokens` (counted where `forward` is called) = `prompt_tokens` +
//! `sampled_tokens` + `forced_tokens`, and the KV cache holds `processed_tokens` −
//! `rolled_back_tokens` new positions. To keep that exact, the last kept token is fed
//! (without logits) when generation ends, so the cache always equals the transcript — which
//! is also what a follow-up chat turn wants to reuse. Drawn-but-discarded tokens (an end of
//! thinking replaced by "Wait", the end-of-generation token that stopped the response) are
//! never fed and are counted in `dropped_tokens`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError};
use crate::config::ModelConfig;
use crate::sampler::{Sampler, SamplerError, SamplerOptions};
use crate::thinking::{Action, BeforeSample, Phase, StopReason, ThinkingController, ThinkingError, ThinkingOptions};

// ----------------------------------------------------------------------------
// Text codec: what the loop needs from a tokenizer

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{0}")]
pub struct CodecError(pub String);

/// The tokenizer as the loop sees it (the real `Tokenizer` implements it; tests use a toy).
pub trait TextCodec {
    /// Text to ids, no BOS/EOS added.
    fn encode(&self, text: &str) -> Result<Vec<u32>, CodecError>;
    /// Ids to text, special tokens rendered as their text (so `</think>` shows). A sequence
    /// that ends inside a multi-byte character ends with U+FFFD; the loop relies on that to
    /// hold such pieces back.
    fn decode(&self, ids: &[u32]) -> String;
    /// The id of `text` when it is exactly one token of the vocabulary (e.g. `<think>`).
    fn token_id(&self, text: &str) -> Option<u32>;
    /// Ids that end a response (EOS, `<|im_end|>`, `<|eot_id|>`, ...).
    fn end_of_generation_ids(&self) -> Vec<u32>;
}

/// A codec behind any pointer (`&T`, `Rc<T>`, `Box<T>`) is a codec.
impl<P: std::ops::Deref> TextCodec for P
where
    P::Target: TextCodec,
{
    fn encode(&self, text: &str) -> Result<Vec<u32>, CodecError> {
        (**self).encode(text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        (**self).decode(ids)
    }
    fn token_id(&self, text: &str) -> Option<u32> {
        (**self).token_id(text)
    }
    fn end_of_generation_ids(&self) -> Vec<u32> {
        (**self).end_of_generation_ids()
    }
}

/// Lets a `Generation` borrow a backend (`&mut cpu`) as well as own one (the browser,
/// where a generation outlives any borrow, owns it and gives it back with `into_parts`).
impl<T: Backend + ?Sized> Backend for &mut T {
    fn config(&self) -> &ModelConfig {
        (**self).config()
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn kv_len(&self) -> usize {
        (**self).kv_len()
    }
    fn max_context(&self) -> usize {
        (**self).max_context()
    }
    fn truncate(&mut self, len: usize) -> Result<(), BackendError> {
        (**self).truncate(len)
    }
    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        (**self).forward(tokens, n_logits).await
    }
    async fn forward_greedy(&mut self, tokens: &[u32], banned: &[u32]) -> Result<u32, BackendError> {
        (**self).forward_greedy(tokens, banned).await
    }
}

/// The real tokenizer as the loop sees it.
impl TextCodec for crate::tokenizer::Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, CodecError> {
        crate::tokenizer::Tokenizer::encode(self, text, false).map_err(|e| CodecError(e.to_string()))
    }
    fn decode(&self, ids: &[u32]) -> String {
        crate::tokenizer::Tokenizer::decode(self, ids)
    }
    fn token_id(&self, text: &str) -> Option<u32> {
        crate::tokenizer::Tokenizer::token_id(self, text)
    }
    fn end_of_generation_ids(&self) -> Vec<u32> {
        crate::tokenizer::Tokenizer::end_of_generation_ids(self).to_vec()
    }
}

// ----------------------------------------------------------------------------
// Options, events, stats

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Thinking(#[from] ThinkingError),
    #[error("tokenizer: {0}")]
    Codec(#[from] CodecError),
    #[error("the prompt is empty: at least one token (e.g. BOS) is needed to predict from")]
    EmptyPrompt,
    #[error("prompt of {prompt} tokens leaves no room to generate in a context of {context} ({cached} already cached)")]
    PromptTooLong { prompt: usize, cached: usize, context: usize },
    #[error("nothing to score: the continuation is empty")]
    EmptyContinuation,
    #[error("backend returned {got} logits, expected {expected}")]
    BadLogits { got: usize, expected: usize },
    #[error("invalid generate option {option}: {reason}")]
    InvalidOption { option: &'static str, reason: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct GenerateOptions {
    /// Stop sampling once the response holds this many tokens (forced ones included; a
    /// forced insertion under way is not cut).
    pub max_tokens: usize,
    /// Stop when the response text contains one of these; the stop string is not emitted.
    /// Only the model's own text is searched, never forced text.
    pub stop: Vec<String>,
    pub sampler: SamplerOptions,
    /// Thinking budget; `None` = no thinking control at all.
    pub thinking: Option<ThinkingOptions>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 256, stop: Vec::new(), sampler: SamplerOptions::default(), thinking: None }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token in its answer.
    EndOfGeneration,
    StopString,
    MaxTokens,
    AnswerMaxTokens,
    /// The context is full: a normal end (reported here, not as an error), as when the
    /// response simply reaches the model's length.
    ContextFull,
}

/// One schema for the CLI's `--json` and the JS API:
/// `{"type":"token","id":N,"text":"…","phase":"thinking","forced":false}`, ...
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Token { id: u32, text: String, phase: Phase, forced: bool },
    Continuation { text: String, round: usize },
    BudgetExhausted { thinking_tokens: usize },
    Phase { phase: Phase },
    Done { stats: Stats },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Sampled tokens kept and fed to the model (rolled-back ones included).
    pub sampled_tokens: usize,
    /// Tokens the engine inserted and fed: start marker, continuations, wrap-up, end
    /// marker, answer prefix.
    pub forced_tokens: usize,
    /// Every token fed to `Backend::forward` = prompt + sampled + forced.
    pub processed_tokens: usize,
    /// Kept tokens later removed from the cache (a multi-token end marker).
    pub rolled_back_tokens: usize,
    /// Tokens drawn but never kept or fed (a replaced end of thinking, the end-of-generation
    /// token that stopped the response, a token resampled away).
    pub dropped_tokens: usize,
    /// Tokens in the response now: sampled + forced − rolled back.
    pub response_tokens: usize,
    /// Tokens strictly between the thinking markers, forced continuations included.
    pub thinking_tokens: usize,
    pub answer_tokens: usize,
    /// Continuations inserted.
    pub continuations: usize,
    /// Sampling steps where an end of thinking was masked while it was the most likely token
    /// (with greedy decoding: exactly the ends the mask prevented), plus string end markers
    /// taken back and resampled.
    pub ends_suppressed: usize,
    /// Thinking was cut by the budget.
    pub forced_exit: bool,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub prefill_tok_s: f64,
    /// Tokens fed after the prefill per second of decoding (forward + sampling).
    pub decode_tok_s: f64,
    pub finish_reason: Option<FinishReason>,
}

/// Everything a finished generation produced (what the CLI's `--json` prints).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completion {
    pub prompt_ids: Vec<u32>,
    /// Response ids kept in the sequence (sampled and forced).
    pub tokens: Vec<u32>,
    /// Concatenated text of the token events (stop string excluded).
    pub text: String,
    pub events: Vec<Event>,
    pub stats: Stats,
}

// ----------------------------------------------------------------------------
// Clock

/// Monotonic seconds since an arbitrary origin. `std::time::Instant` panics on
/// wasm32-unknown-unknown, so the browser build reads `performance.now()` (milliseconds
/// since the page or worker started), which both a page and a Web Worker have as a global.
pub fn monotonic_seconds() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
    }
    #[cfg(target_arch = "wasm32")]
    {
        js_clock::performance_now() / 1000.0
    }
}

#[cfg(target_arch = "wasm32")]
mod js_clock {
    use wasm_bindgen::prelude::wasm_bindgen;

    #[wasm_bindgen]
    extern "C" {
        /// `globalThis.performance.now()`: resolved on the global object, not `window`, so
        /// it works in workers too.
        #[wasm_bindgen(js_namespace = performance, js_name = now)]
        pub fn performance_now() -> f64;
    }
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

// ----------------------------------------------------------------------------
// Streaming detokenization

/// Incremental text of a growing id sequence that never emits broken UTF-8 and can be
/// rolled back. The window `ids[prefix..]` is decoded and the text of `ids[prefix..read]`
/// subtracted (the same method as the `tokenizers` crate's DecodeStream): a leading token
/// gives the decoder context (SentencePiece strips the space of a sequence's first token),
/// and a window ending in U+FFFD waits for the rest of its character.
#[derive(Clone, Debug)]
struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    /// (prefix, read) before each advance, to restore on rollback.
    history: Vec<(usize, usize)>,
    /// Ids before this index are context only (the prompt's last token).
    floor: usize,
}

impl TextStream {
    fn new(context: &[u32]) -> Self {
        Self { ids: context.to_vec(), prefix: 0, read: context.len(), history: Vec::new(), floor: context.len() }
    }

    fn push(&mut self, codec: &dyn TextCodec, id: u32) -> String {
        self.ids.push(id);
        let before = codec.decode(&self.ids[self.prefix..self.read]);
        let all = codec.decode(&self.ids[self.prefix..]);
        if all.ends_with('\u{FFFD}') || all.len() <= before.len() || !all.is_char_boundary(before.len()) {
            return String::new();
        }
        self.history.push((self.prefix, self.read));
        self.prefix = self.read;
        self.read = self.ids.len();
        all[before.len()..].to_string()
    }

    /// Forget the last `n` ids (never the context ones).
    fn pop(&mut self, n: usize) {
        let len = self.ids.len().saturating_sub(n).max(self.floor);
        self.ids.truncate(len);
        while self.read > len {
            let Some((prefix, read)) = self.history.pop() else { break };
            self.prefix = prefix;
            self.read = read;
        }
    }
}

// ----------------------------------------------------------------------------
// The loop

/// A kept response token whose event is not out yet, because its text could be the start
/// of a stop string or of a string marker.
#[derive(Clone, Debug)]
struct HeldToken {
    /// Index in `sequence`.
    index: usize,
    phase: Phase,
}

/// A string marker just completed in the text.
#[derive(Clone, Copy, Debug)]
struct MarkerHit {
    /// Byte offset of the marker in the response text.
    at: usize,
    /// Kept tokens (before the current one) that overlap it.
    tokens_before: usize,
}

pub struct Generation<B: Backend, C: TextCodec> {
    backend: B,
    codec: C,
    sampler: Sampler,
    thinking: Option<ThinkingController>,
    max_tokens: usize,
    stop: Vec<String>,
    end_of_generation: Vec<u32>,
    /// Prompt then response ids, kept so far, fed or not: (len,) u32.
    sequence: Vec<u32>,
    prompt_len: usize,
    /// KV length when the generation began (the cache may hold an earlier conversation).
    base_kv: usize,
    /// `sequence[..fed]` is in the KV cache; `sequence[fed..]` is the pending queue.
    fed: usize,
    /// (vocab,) f32: the logits predicting `sequence[logits_at]`.
    logits: Vec<f32>,
    logits_at: Option<usize>,
    /// Logits of recent steps by the sequence length they predicted at: (≤ capacity) ×
    /// (vocab,) f32. Kept only when the end marker is a string, so that a marker taken back
    /// under `min_tokens` can be resampled without recomputing anything.
    recent_logits: VecDeque<(usize, Vec<f32>)>,
    recent_capacity: usize,
    stream: TextStream,
    /// Response text of the kept tokens.
    text: String,
    /// Per response token: byte range of its text in `text`.
    spans: Vec<(usize, usize)>,
    held: Vec<HeldToken>,
    /// Text before this offset is forced text or already searched: no match starts there.
    match_floor: usize,
    longest_stop: usize,
    events: VecDeque<Event>,
    stats: Stats,
    /// Tokens fed by the first forward (the prompt, and a forced start marker).
    prefill_tokens: usize,
    started: bool,
    finished: bool,
}

impl<B: Backend, C: TextCodec> Generation<B, C> {
    /// Set up a generation of a response to `prompt_ids`, appended after whatever the
    /// backend's cache already holds. Nothing runs until the first `next_event`.
    pub fn new(backend: B, codec: C, prompt_ids: &[u32], options: GenerateOptions) -> Result<Self, GenerateError> {
        if prompt_ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if options.stop.iter().any(|s| s.is_empty()) {
            return Err(GenerateError::InvalidOption { option: "stop", reason: "a stop string is empty".into() });
        }
        let sampler = Sampler::new(options.sampler.clone())?;
        let base_kv = backend.kv_len();
        let context = backend.max_context();
        // Room for the prompt and at least one generated token.
        if base_kv + prompt_ids.len() >= context {
            return Err(GenerateError::PromptTooLong { prompt: prompt_ids.len(), cached: base_kv, context });
        }
        let thinking = match options.thinking {
            Some(t) => Some(ThinkingController::new(t, &codec, prompt_ids, options.sampler.seed)?),
            None => None,
        };
        let recent_capacity = match thinking.as_ref().map(|t| t.end_marker()) {
            // One step per byte of the marker bounds the tokens that can spell it, plus the
            // step that sampled its first token.
            Some(crate::thinking::Marker::Text(end)) => end.len() + 1,
            _ => 0,
        };
        let longest_stop = options.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        Ok(Self {
            end_of_generation: codec.end_of_generation_ids(),
            stream: TextStream::new(&prompt_ids[prompt_ids.len() - 1..]),
            backend,
            codec,
            sampler,
            thinking,
            max_tokens: options.max_tokens,
            stop: options.stop,
            sequence: prompt_ids.to_vec(),
            prompt_len: prompt_ids.len(),
            base_kv,
            fed: 0,
            logits: Vec::new(),
            logits_at: None,
            recent_logits: VecDeque::new(),
            recent_capacity,
            text: String::new(),
            spans: Vec::new(),
            held: Vec::new(),
            match_floor: 0,
            longest_stop,
            events: VecDeque::new(),
            stats: Stats { prompt_tokens: prompt_ids.len(), ..Stats::default() },
            prefill_tokens: 0,
            started: false,
            finished: false,
        })
    }

    /// The next event, running at most one sampling step (one forward) to produce it;
    /// `None` once `done` has been returned. After an error the generation is over.
    pub async fn next_event(&mut self) -> Result<Option<Event>, GenerateError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.finished {
                return Ok(None);
            }
            if let Err(e) = self.step().await {
                self.finished = true;
                self.events.clear();
                return Err(e);
            }
        }
    }

    /// Run to the end and collect everything.
    pub async fn run_to_end(&mut self) -> Result<Completion, GenerateError> {
        let mut events = Vec::new();
        let mut text = String::new();
        while let Some(event) = self.next_event().await? {
            if let Event::Token { text: piece, .. } = &event {
                text.push_str(piece);
            }
            events.push(event);
        }
        Ok(Completion {
            prompt_ids: self.sequence[..self.prompt_len].to_vec(),
            tokens: self.response_ids().to_vec(),
            text,
            events,
            stats: self.stats.clone(),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn is_finished(&self) -> bool {
        self.finished && self.events.is_empty()
    }

    /// Prompt and response ids kept so far.
    pub fn sequence(&self) -> &[u32] {
        &self.sequence
    }

    pub fn response_ids(&self) -> &[u32] {
        &self.sequence[self.prompt_len..]
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Give the backend (its cache holds the whole transcript once finished) and codec back.
    pub fn into_parts(self) -> (B, C) {
        (self.backend, self.codec)
    }

    // --- one step ---

    async fn step(&mut self) -> Result<(), GenerateError> {
        if !self.started {
            self.started = true;
            if let Some(thinking) = self.thinking.as_mut() {
                let actions = thinking.start();
                self.apply(None, None, actions).await?;
                if self.finished {
                    return Ok(());
                }
            }
        }
        let mut banned = match self.thinking.as_ref().map(|t| t.before_sample()) {
            Some(BeforeSample::Stop(StopReason::AnswerMaxTokens)) => {
                return self.finish(FinishReason::AnswerMaxTokens).await;
            }
            Some(BeforeSample::Sample { banned }) => banned,
            None => Vec::new(),
        };
        if self.sequence.len() - self.prompt_len >= self.max_tokens {
            return self.finish(FinishReason::MaxTokens).await;
        }
        // Every kept token gets fed, so one must fit after the pending ones.
        if self.base_kv + self.sequence.len() >= self.backend.max_context() {
            return self.finish(FinishReason::ContextFull).await;
        }
        let mut id = self.forward_and_choose(&banned).await?;
        loop {
            let start = self.text.len();
            let piece = self.stream.push(&self.codec, id);
            self.text.push_str(&piece);
            let hit = self.find_marker_hit(start);
            let actions = match self.thinking.as_mut() {
                Some(t) => t.after_sample(id, &piece, hit.map(|h| h.tokens_before)),
                None => vec![Action::Keep { phase: Phase::Answer, marker: false }],
            };
            let kept = actions.iter().any(|a| matches!(a, Action::Keep { .. }))
                && !self.end_of_generation.contains(&id);
            if !kept {
                self.stream.pop(1);
                self.text.truncate(start);
                self.stats.dropped_tokens += 1;
            }
            match self.apply(Some((id, start)), hit, actions).await? {
                Some(first_marker_token) => {
                    // Resample the same position with the marker's first token banned.
                    banned.push(first_marker_token);
                    self.stats.ends_suppressed += 1;
                    id = self.choose_again(&banned)?;
                }
                None => return Ok(()),
            }
        }
    }

    /// Feed the pending tokens and choose the next one: the one place a backend that
    /// samples on its own device would take over. Proposed (not yet in `Backend`), a
    /// default method
    /// `fn forward_sample(&mut self, tokens: &[u32], options: &SamplerOptions, history: &[u32],
    /// banned: &[u32], uniform: f64) -> Option<Result<u32, BackendError>> { None }`
    /// that runs `forward` and `sample_with_uniform` on the GPU and reads back one id;
    /// the loop would call it with `self.sampler.next_uniform()` and fall back to this
    /// path on `None`. The logits stay needed on the host only for `ends_suppressed`'s
    /// argmax (the GPU can return it too) and for a string end marker's resampling.
    async fn forward_and_choose(&mut self, banned: &[u32]) -> Result<u32, GenerateError> {
        let keep_recent = self.recent_capacity > 0 && self.thinking.as_ref().is_some_and(|t| t.may_take_back_end());
        if banned.is_empty() && !keep_recent && self.sampler.is_greedy() && self.fed < self.sequence.len() {
            // Nothing needs the logits on the host: let the backend pick the argmax (a GPU
            // reads back 4 bytes instead of the vocabulary). The uniform is still drawn, so
            // the RNG stream does not depend on which path ran.
            self.sampler.next_uniform();
            let t0 = monotonic_seconds();
            let id = self.backend.forward_greedy(&self.sequence[self.fed..], &[]).await?;
            self.account_feed(monotonic_seconds() - t0);
            self.logits_at = None;
            return Ok(id);
        }
        self.feed(true).await?;
        if keep_recent {
            // Entries at or past this position belong to a rolled-back future.
            let at = self.sequence.len();
            self.recent_logits.retain(|(pos, _)| *pos < at);
            if self.recent_logits.len() == self.recent_capacity {
                self.recent_logits.pop_front();
            }
            self.recent_logits.push_back((self.sequence.len(), self.logits.clone()));
        }
        self.choose(banned, true)
    }

    /// `count_masked_end`: count the step in `ends_suppressed` when a banned id was the
    /// most likely one (a resample after a taken-back marker is counted by its caller).
    fn choose(&mut self, banned: &[u32], count_masked_end: bool) -> Result<u32, GenerateError> {
        let t0 = monotonic_seconds();
        if count_masked_end && !banned.is_empty() {
            if let Some(best) = raw_argmax(&self.logits) {
                if banned.contains(&best) {
                    self.stats.ends_suppressed += 1;
                }
            }
        }
        let id = self.sampler.sample(&self.logits, &self.sequence, banned)?;
        self.stats.decode_s += monotonic_seconds() - t0;
        Ok(id)
    }

    /// After a rollback, sample the current position again from its saved logits.
    fn choose_again(&mut self, banned: &[u32]) -> Result<u32, GenerateError> {
        let at = self.sequence.len();
        if self.logits_at == Some(at) {
            // Nothing was rolled back: the current logits are the ones.
            return self.choose(banned, false);
        }
        let Some((_, logits)) = self.recent_logits.iter().find(|(pos, _)| *pos == at) else {
            // Unreachable while `recent_capacity` covers the longest marker; kept typed.
            return Err(GenerateError::BadLogits { got: 0, expected: self.backend.config().vocab_size });
        };
        self.logits = logits.clone();
        self.logits_at = Some(at);
        self.choose(banned, false)
    }

    /// Feed the pending queue in one forward; `with_logits`: keep the last position's logits.
    async fn feed(&mut self, with_logits: bool) -> Result<(), GenerateError> {
        let pending = &self.sequence[self.fed..];
        if pending.is_empty() {
            if with_logits && self.logits_at != Some(self.sequence.len()) {
                return Err(GenerateError::BadLogits { got: 0, expected: self.backend.config().vocab_size });
            }
            return Ok(());
        }
        let t0 = monotonic_seconds();
        let logits = self.backend.forward(pending, usize::from(with_logits)).await?;
        let vocab = self.backend.config().vocab_size;
        if with_logits && logits.len() != vocab {
            return Err(GenerateError::BadLogits { got: logits.len(), expected: vocab });
        }
        self.account_feed(monotonic_seconds() - t0);
        if with_logits {
            self.logits = logits;
            self.logits_at = Some(self.sequence.len());
        }
        Ok(())
    }

    /// The pending queue went through `forward` in `seconds`.
    fn account_feed(&mut self, seconds: f64) {
        let fed_now = self.sequence.len() - self.fed;
        if self.stats.processed_tokens == 0 {
            self.prefill_tokens = fed_now;
            self.stats.prefill_s += seconds;
        } else {
            self.stats.decode_s += seconds;
        }
        self.stats.processed_tokens += fed_now;
        self.fed = self.sequence.len();
    }

    /// Carry out the controller's actions for the sampled token `(id, text offset)` (or
    /// for the start, `None`). Returns the id to ban when a resample is asked for.
    async fn apply(
        &mut self,
        sampled: Option<(u32, usize)>,
        hit: Option<MarkerHit>,
        actions: Vec<Action>,
    ) -> Result<Option<u32>, GenerateError> {
        // Held text before a completed marker is plain text: out with it.
        if let Some(hit) = hit {
            self.release_held(hit.at);
        }
        // Announcements go out after the text that is surely plain; tokens that may still
        // turn out to be (part of) a marker or stop string stay held, or a rollback could
        // not take them back.
        let marker_floor = hit.map_or(usize::MAX, |h| h.at);
        let mut first_rolled_back = None;
        for action in actions {
            if self.finished {
                break;
            }
            match action {
                Action::Keep { phase, marker } => {
                    let Some((id, start)) = sampled else { continue };
                    if self.end_of_generation.contains(&id) {
                        self.finish(FinishReason::EndOfGeneration).await?;
                        break;
                    }
                    self.sequence.push(id);
                    self.stats.sampled_tokens += 1;
                    self.spans.push((start, self.text.len()));
                    self.held.push(HeldToken { index: self.sequence.len() - 1, phase });
                    if marker {
                        // The tokens spelling the marker belong to it: tag and emit them.
                        let from = hit.map_or(start, |h| h.at);
                        for held in &mut self.held {
                            if self.spans[held.index - self.prompt_len].1 > from {
                                held.phase = phase;
                            }
                        }
                        self.release_held(usize::MAX);
                    } else if self.check_stop_strings(start).await? {
                        break;
                    }
                }
                Action::Rollback { tokens } => {
                    let keep = self.sequence.len() - tokens;
                    first_rolled_back = self.sequence.get(keep).copied();
                    self.backend.truncate(self.base_kv + keep)?;
                    self.sequence.truncate(keep);
                    self.fed = self.fed.min(keep);
                    self.stats.rolled_back_tokens += tokens;
                    self.stream.pop(tokens);
                    let response_len = keep - self.prompt_len;
                    if let Some(&(cut, _)) = self.spans.get(response_len) {
                        self.text.truncate(cut);
                    }
                    self.spans.truncate(response_len);
                    self.held.retain(|h| h.index < keep);
                }
                Action::Resample => {
                    let banned = first_rolled_back.or(sampled.map(|(id, _)| id));
                    return Ok(banned);
                }
                Action::Force { ids, phase } => {
                    self.release_held(usize::MAX);
                    if self.base_kv + self.sequence.len() + ids.len() > self.backend.max_context() {
                        self.finish(FinishReason::ContextFull).await?;
                        break;
                    }
                    for id in ids {
                        let start = self.text.len();
                        let piece = self.stream.push(&self.codec, id);
                        self.text.push_str(&piece);
                        self.sequence.push(id);
                        self.spans.push((start, self.text.len()));
                        self.stats.forced_tokens += 1;
                        self.events.push_back(Event::Token { id, text: piece, phase, forced: true });
                    }
                    self.match_floor = self.text.len();
                }
                Action::Phase(phase) => {
                    self.release_held(marker_floor.min(self.hold_from()));
                    self.events.push_back(Event::Phase { phase });
                }
                Action::Continuation { text, round } => {
                    self.release_held(marker_floor.min(self.hold_from()));
                    self.events.push_back(Event::Continuation { text, round });
                }
                Action::BudgetExhausted { thinking_tokens } => {
                    self.release_held(marker_floor.min(self.hold_from()));
                    self.events.push_back(Event::BudgetExhausted { thinking_tokens });
                }
                Action::Stop(StopReason::AnswerMaxTokens) => {
                    self.finish(FinishReason::AnswerMaxTokens).await?;
                }
            }
        }
        if !self.finished {
            let hold_from = self.hold_from();
            self.release_held(hold_from);
        }
        self.sync_counts();
        Ok(None)
    }

    /// The watched string marker, if the token that starts at text offset `start` completed it.
    fn find_marker_hit(&self, start: usize) -> Option<MarkerHit> {
        let marker = self.thinking.as_ref()?.watched_text()?;
        let from = char_floor(&self.text, start.saturating_sub(marker.len() - 1).max(self.match_floor));
        let at = from + self.text[from..].find(marker)?;
        if at + marker.len() <= start {
            return None;
        }
        let tokens_before = self.spans.iter().rev().take_while(|&&(_, end)| end > at).count();
        Some(MarkerHit { at, tokens_before })
    }

    /// Finish on a stop string completed by the token starting at `start`. Its text and
    /// everything after it is not emitted; the text before it in a straddling token is.
    async fn check_stop_strings(&mut self, start: usize) -> Result<bool, GenerateError> {
        if self.stop.is_empty() {
            return Ok(false);
        }
        let from = char_floor(&self.text, start.saturating_sub(self.longest_stop - 1).max(self.match_floor));
        let Some(at) = self.stop.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|p| from + p)).min()
        else {
            return Ok(false);
        };
        self.release_held(at);
        if let Some(held) = self.held.first() {
            let (token_start, _) = self.spans[held.index - self.prompt_len];
            if token_start < at {
                let id = self.sequence[held.index];
                let text = self.text[token_start..at].to_string();
                self.events.push_back(Event::Token { id, text, phase: held.phase, forced: false });
            }
        }
        self.held.clear();
        self.finish(FinishReason::StopString).await?;
        Ok(true)
    }

    /// Text offset from which the text could still become a stop string or the watched
    /// marker; tokens ending before it are safe to emit.
    fn hold_from(&self) -> usize {
        let marker = self.thinking.as_ref().and_then(|t| t.watched_text());
        let mut from = self.text.len();
        for pattern in self.stop.iter().map(String::as_str).chain(marker) {
            for k in (1..pattern.len()).rev() {
                if pattern.is_char_boundary(k) && self.text.ends_with(&pattern[..k]) {
                    let candidate = self.text.len() - k;
                    if candidate >= self.match_floor {
                        from = from.min(candidate);
                    }
                    break;
                }
            }
        }
        from
    }

    /// Emit the held tokens whose text ends at or before `upto`.
    fn release_held(&mut self, upto: usize) {
        let mut released = 0;
        for held in &self.held {
            let (start, end) = self.spans[held.index - self.prompt_len];
            if end > upto {
                break;
            }
            let id = self.sequence[held.index];
            self.events.push_back(Event::Token { id, text: self.text[start..end].to_string(), phase: held.phase, forced: false });
            released += 1;
        }
        self.held.drain(..released);
    }

    fn sync_counts(&mut self) {
        self.stats.response_tokens = self.sequence.len() - self.prompt_len;
        match self.thinking.as_ref().map(|t| t.counts()) {
            Some(counts) => {
                self.stats.thinking_tokens = counts.thinking_tokens;
                self.stats.answer_tokens = counts.answer_tokens;
                self.stats.continuations = counts.continuations;
                self.stats.forced_exit = counts.forced_exit;
            }
            None => self.stats.answer_tokens = self.stats.response_tokens,
        }
    }

    async fn finish(&mut self, reason: FinishReason) -> Result<(), GenerateError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.release_held(usize::MAX);
        // Feed the last kept tokens so that the cache holds the whole transcript.
        self.feed(false).await?;
        self.sync_counts();
        self.stats.prefill_tok_s = rate(self.prefill_tokens, self.stats.prefill_s);
        self.stats.decode_tok_s = rate(self.stats.processed_tokens - self.prefill_tokens, self.stats.decode_s);
        self.stats.finish_reason = Some(reason);
        self.events.push_back(Event::Done { stats: self.stats.clone() });
        Ok(())
    }
}

fn raw_argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(u32, f32)> = None;
    for (id, &l) in logits.iter().enumerate() {
        if l.is_finite() && best.is_none_or(|(_, b)| l > b) {
            best = Some((id as u32, l));
        }
    }
    best.map(|(id, _)| id)
}

/// The largest char boundary of `text` at or below `index`.
fn char_floor(text: &str, index: usize) -> usize {
    let mut i = index.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

// ----------------------------------------------------------------------------
// Teacher-forced scoring

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScorePosition {
    /// The continuation token at this position.
    pub id: u32,
    /// The model's own top choice here.
    pub argmax: u32,
    /// log p(id | everything before), from a log-softmax in f64.
    pub logprob: f64,
    /// Top-1 minus top-2 logit: how close the model's choice was to a tie.
    pub margin: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoreResult {
    pub prompt_ids: Vec<u32>,
    pub positions: Vec<ScorePosition>,
    /// Mean negative log-likelihood per continuation token (nats).
    pub nll: f64,
    pub perplexity: f64,
}

/// Continuation tokens per forward when scoring: bounds the logits buffer to
/// (SCORE_CHUNK, vocab) f32 (≈ 39 MB for a 151,936-token vocabulary).
const SCORE_CHUNK: usize = 64;

/// Feed `continuation_ids` after `prompt_ids` (teacher forcing, as llama.cpp's perplexity
/// tool does) and report how the model rates each continuation token. The tokens are
/// appended to the backend's cache; call `truncate` to reuse it.
pub async fn score<B: Backend + ?Sized>(
    backend: &mut B,
    prompt_ids: &[u32],
    continuation_ids: &[u32],
) -> Result<ScoreResult, GenerateError> {
    if prompt_ids.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if continuation_ids.is_empty() {
        return Err(GenerateError::EmptyContinuation);
    }
    // The last continuation token is predicted, never fed.
    let needed = backend.kv_len() + prompt_ids.len() + continuation_ids.len() - 1;
    if needed > backend.max_context() {
        return Err(GenerateError::PromptTooLong {
            prompt: prompt_ids.len() + continuation_ids.len() - 1,
            cached: backend.kv_len(),
            context: backend.max_context(),
        });
    }
    let vocab = backend.config().vocab_size;
    let mut positions = Vec::with_capacity(continuation_ids.len());
    // Row r of a forward's logits predicts the token after its r-th fed token.
    let mut rate_rows = |logits: &[f32], targets: &[u32]| -> Result<(), GenerateError> {
        if logits.len() != targets.len() * vocab {
            return Err(GenerateError::BadLogits { got: logits.len(), expected: targets.len() * vocab });
        }
        for (row, &id) in logits.chunks_exact(vocab).zip(targets) {
            positions.push(rate_position(row, id));
        }
        Ok(())
    };
    let logits = backend.forward(prompt_ids, 1).await?;
    rate_rows(&logits, &continuation_ids[..1])?;
    let fed = &continuation_ids[..continuation_ids.len() - 1];
    for (chunk_index, chunk) in fed.chunks(SCORE_CHUNK).enumerate() {
        let logits = backend.forward(chunk, chunk.len()).await?;
        let first_target = chunk_index * SCORE_CHUNK + 1;
        rate_rows(&logits, &continuation_ids[first_target..first_target + chunk.len()])?;
    }
    let nll = -positions.iter().map(|p| p.logprob).sum::<f64>() / positions.len() as f64;
    Ok(ScoreResult { prompt_ids: prompt_ids.to_vec(), positions, nll, perplexity: nll.exp() })
}

fn rate_position(row: &[f32], id: u32) -> ScorePosition {
    let (mut top1, mut top2) = ((0u32, f32::NEG_INFINITY), f32::NEG_INFINITY);
    for (i, &l) in row.iter().enumerate() {
        if l > top1.1 {
            top2 = top1.1;
            top1 = (i as u32, l);
        } else if l > top2 {
            top2 = l;
        }
    }
    let max = top1.1 as f64;
    let log_sum = row.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    let logprob = row.get(id as usize).map_or(f64::NEG_INFINITY, |&l| l as f64 - log_sum);
    ScorePosition { id, argmax: top1.0, logprob, margin: top1.1 - top2 }
}
