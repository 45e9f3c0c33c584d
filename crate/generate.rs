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
//! `processed_tokens` (counted where `forward` is called) = `prompt_tokens` − `cached_tokens`
//! + `sampled_tokens` + `forced_tokens` + `probe_tokens`, and the KV cache holds
//! `processed_tokens` − `rolled_back_tokens` new positions (a confidence probe's tokens are
//! fed, then rolled back: they never stay). To keep that exact, the last kept token is fed
//! (without logits) when generation ends, so the cache always equals the transcript — which
//! is also what a follow-up chat turn wants to reuse. Drawn-but-discarded tokens (an end of
//! thinking replaced by "Wait", the end-of-generation token that stopped the response) are
//! never fed and are counted in `dropped_tokens`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, SampledToken};
pub use crate::codec::{CodecError, TextCodec};
use crate::sampler::{self, sample_with_uniform, Sampler, SamplerError, SamplerOptions, TokenLogprobs, MAX_TOP_LOGPROBS};
use crate::transcript::Transcript;
use crate::thinking::{
    Action, BeforeSample, ExitReason, Phase, StopReason, ThinkingController, ThinkingError, ThinkingOptions,
};

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
    #[error("prompt of {prompt} tokens leaves no room to generate in a context of {context}")]
    PromptTooLong { prompt: usize, context: usize },
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
    /// The most tokens the response may hold, forced ones included. A forced insertion that
    /// would pass it is not started: the generation ends there with `max_tokens`.
    pub max_tokens: usize,
    /// Stop when the response text contains one of these; the stop string is not emitted.
    /// Only the model's own text is searched, never forced text.
    pub stop: Vec<String>,
    /// Let a stop string end the generation inside thinking too. Off by default: a stop
    /// string is meant for the answer, and a reasoning model's thinking quotes anything.
    pub stop_in_thinking: bool,
    pub sampler: SamplerOptions,
    /// Thinking budget; `None` = no thinking control at all.
    pub thinking: Option<ThinkingOptions>,
    /// `Some(n)`: every sampled token event carries its `logprob` and the `n` most likely
    /// alternatives (0..=20); forced tokens carry none (nothing was chosen).
    pub logprobs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            stop: Vec::new(),
            stop_in_thinking: false,
            sampler: SamplerOptions::default(),
            thinking: None,
            logprobs: None,
        }
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
/// `{"type":"token","id":N,"text":"…","phase":"thinking","forced":false,"marker":false}`, ...
/// `marker`: the token is (part of) a thinking marker, `<think>` or `</think>`, which count
/// neither as thinking nor as answer tokens. `probe` (present only when true): a token of a
/// confidence probe, rolled back right after: neither thinking nor answer, not in `tokens`.
///
/// It reads back too (`Deserialize`): the browser's eval sweep hands a run's events, as the
/// page received them, back to [`crate::eval`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Token {
        id: u32,
        text: String,
        phase: Phase,
        forced: bool,
        marker: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        probe: bool,
        /// Only when asked for (`logprobs`), on sampled tokens: see [`sampler::token_logprobs`].
        #[serde(skip_serializing_if = "Option::is_none")]
        logprob: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        top_logprobs: Option<Vec<TopLogprob>>,
    },
    Continuation { text: String, round: usize },
    BudgetExhausted { thinking_tokens: usize },
    /// A confidence probe ran (its `tokens` probe token events came just before) and was
    /// rolled back; `exit`: confident enough, thinking ends.
    Probe { confidence: f64, tokens: usize, exit: bool },
    /// Thinking ends before its budget (a confident probe, or a continuation word after α).
    EarlyExit { reason: ExitReason, thinking_tokens: usize },
    /// A `suppress` word was the most likely token and was masked.
    Suppressed { id: u32, text: String },
    Phase { phase: Phase },
    Done { stats: Stats },
}

/// What a generation produced and what it cost. Everything but the cost fields (`cached_tokens`,
/// `processed_tokens` and the timings) depends only on the request, never on what an earlier
/// request left in the cache.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Cost: prompt tokens whose keys and values were already cached (a repeated or extended
    /// conversation) and so not run again.
    pub cached_tokens: usize,
    /// Sampled tokens kept and fed to the model (rolled-back ones included).
    pub sampled_tokens: usize,
    /// Tokens the engine inserted and fed: start marker, continuations, wrap-up, end
    /// marker, answer prefix.
    pub forced_tokens: usize,
    /// Cost: every token this request ran through `Backend::forward` = prompt − cached +
    /// sampled + forced + probe.
    pub processed_tokens: usize,
    /// Kept tokens later removed from the cache (a multi-token end marker).
    pub rolled_back_tokens: usize,
    /// Tokens drawn but never kept or fed (a replaced end of thinking, the end-of-generation
    /// token that stopped the response, a token resampled away).
    pub dropped_tokens: usize,
    /// Tokens in the response now: sampled + forced − rolled back.
    pub response_tokens: usize,
    /// Tokens strictly between the thinking markers, forced continuations included: the
    /// `token` events with phase `thinking` and `marker: false`.
    pub thinking_tokens: usize,
    /// The `token` events with phase `answer` and `marker: false` (an answer prefix included).
    pub answer_tokens: usize,
    /// Continuations inserted: the `continuation` events.
    pub continuations: usize,
    /// Sampling steps where an end of thinking was masked while it was the most likely token
    /// (with greedy decoding: exactly the ends the mask prevented), plus string end markers
    /// taken back and resampled.
    pub ends_suppressed: usize,
    /// Thinking was cut by the budget: the engine wrote the end marker after `budget_exhausted`.
    pub forced_exit: bool,
    /// Sampling steps where a `suppress` word was the most likely token: the `suppressed`
    /// events.
    pub words_suppressed: usize,
    /// Confidence probes run: the `probe` events.
    pub probes: usize,
    /// Tokens the probes fed and rolled back (forced probe text and greedy trials): the
    /// `token` events with `probe: true`. Counted in `processed_tokens` and
    /// `rolled_back_tokens`, never in `sampled_tokens` or `forced_tokens`.
    pub probe_tokens: usize,
    /// Thinking ended early: `early_exit` events with reason `confidence` / `schedule`.
    pub confidence_exit: bool,
    pub schedule_exit: bool,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub prefill_tok_s: f64,
    /// Tokens fed after the prefill per second of decoding (forward + sampling).
    pub decode_tok_s: f64,
    pub finish_reason: Option<FinishReason>,
    /// The sampler's seed: the request's own, or the one the engine drew for it. A result,
    /// not a cost: the same seed and request give the same stats.
    pub seed: u64,
}

/// An alternative at a sampled position, as the `token` event carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub id: u32,
    pub text: String,
    pub logprob: f64,
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

/// One kept response token: where its text is and how it is tagged.
#[derive(Clone, Debug)]
struct ResponseToken {
    id: u32,
    /// Byte range of its text in `Response::text`.
    start: usize,
    end: usize,
    phase: Phase,
    forced: bool,
    /// (Part of) a thinking marker.
    marker: bool,
    /// When asked for and the token was sampled.
    logprobs: Option<TokenLogprobs>,
}

/// The response so far: its text, a tag per kept token, and how much has gone out as events.
#[derive(Debug)]
struct Response {
    stream: TextStream,
    text: String,
    /// (response tokens,): parallel to the transcript's ids after the prompt.
    tokens: Vec<ResponseToken>,
    /// `tokens[released..]` have no event yet: their text could still turn out to be (part
    /// of) a stop string or a string marker, which must not be shown or must be tagged.
    released: usize,
    /// No stop string or marker match starts before this text offset (forced text, text
    /// already searched, thinking text when stop strings are for the answer).
    match_floor: usize,
}

/// Logits on the host: the current position's and, while a string end marker may be taken
/// back, those of recent positions so a taken-back position is resampled without recomputing.
#[derive(Debug, Default)]
struct HostLogits {
    /// (vocab,) f32, predicting the transcript's token at index `at`.
    current: Vec<f32>,
    at: Option<usize>,
    /// (≤ capacity) × (index predicted, (vocab,) f32).
    recent: VecDeque<(usize, Vec<f32>)>,
    capacity: usize,
}

/// Stop strings: searched in the model's own answer text (thinking too if asked).
#[derive(Debug)]
struct StopStrings {
    texts: Vec<String>,
    longest: usize,
    in_thinking: bool,
}

/// A string marker just completed in the text.
#[derive(Clone, Copy, Debug)]
struct MarkerHit {
    /// Byte offset of the marker in the response text.
    at: usize,
    /// Kept tokens (before the current one) that overlap it.
    tokens_before: usize,
}

/// Where a request is. Feeds before the first choice are prefill time, later ones decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Nothing ran yet; the controller's start actions (a forced `<think>`) come first.
    New,
    /// The prompt (and forced start) still to run before the first token is chosen.
    Prefill,
    Decode,
    /// `done` is queued (or the request failed).
    Done,
}

/// The state of one request. The KV cache and the ids in it belong to the [`Transcript`]
/// that every method takes: pass the same one from `new` to the end.
pub struct Generation<C: TextCodec> {
    codec: C,
    /// The request's sampler: its options apply unless the phase has its own, its PRNG
    /// serves every phase (one uniform per step, whichever options shape it).
    sampler: Sampler,
    /// Per-phase sampler options: [thinking, answer].
    phase_sampling: [Option<SamplerOptions>; 2],
    /// Suppressed words masked at the current step (to tell their masking from an end's).
    suppressed_now: Vec<u32>,
    thinking: Option<ThinkingController>,
    max_tokens: usize,
    stop: StopStrings,
    end_of_generation: Vec<u32>,
    /// Transcript index where the response begins.
    prompt_len: usize,
    response: Response,
    logits: HostLogits,
    /// Banned while thinking is under `min_tokens`: the first tokens of string end markers
    /// taken back, then every token holding the marker's first character.
    early_end_bans: Vec<u32>,
    budget_exhausted: bool,
    events: VecDeque<Event>,
    stats: Stats,
    /// Tokens fed before the first token was chosen (the prompt's uncached part, a forced
    /// start marker).
    prefill_tokens: usize,
    stage: Stage,
    /// `top_logprobs` when the caller asked for log-probabilities.
    logprobs: Option<usize>,
    /// Those of the token `choose` picked last, for `keep_sampled`.
    chosen_logprobs: Option<TokenLogprobs>,
}

impl<C: TextCodec> Generation<C> {
    /// Set up a response to `prompt_ids` (the whole prompt, however much of it is cached):
    /// the transcript keeps the cached prefix it shares with the prompt. Nothing runs until
    /// the first `next_event`. On an error the transcript is untouched.
    pub fn new<B: Backend>(
        transcript: &mut Transcript<B>,
        codec: C,
        prompt_ids: &[u32],
        options: GenerateOptions,
    ) -> Result<Self, GenerateError> {
        if prompt_ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if options.stop.iter().any(|s| s.is_empty()) {
            return Err(GenerateError::InvalidOption { option: "stop", reason: "a stop string is empty".into() });
        }
        if options.max_tokens == 0 {
            return Err(GenerateError::InvalidOption { option: "max_tokens", reason: "must be at least 1".into() });
        }
        let sampler = Sampler::new(options.sampler.clone())?;
        let phase_options = |pick: fn(&ThinkingOptions) -> &Option<crate::thinking::PhaseSampling>| {
            let phase = options.thinking.as_ref().and_then(|t| pick(t).as_ref())?;
            Some(phase.apply(&options.sampler))
        };
        let phase_sampling = [phase_options(|t| &t.thinking_sampling), phase_options(|t| &t.answer_sampling)];
        for o in phase_sampling.iter().flatten() {
            o.validate()?;
        }
        let vocab = transcript.backend().config().vocab_size;
        if let Some(&id) = options.sampler.logit_bias.keys().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::InvalidOption {
                option: "logit_bias",
                reason: format!("token id {id} is outside the vocabulary of {vocab}"),
            });
        }
        if options.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(GenerateError::InvalidOption {
                option: "top_logprobs",
                reason: format!("at most {MAX_TOP_LOGPROBS}"),
            });
        }
        let context = transcript.max_context();
        // Room for the prompt and at least one generated token.
        if prompt_ids.len() >= context {
            return Err(GenerateError::PromptTooLong { prompt: prompt_ids.len(), context });
        }
        let thinking = match options.thinking {
            Some(t) => Some(ThinkingController::new(t, &codec, prompt_ids, options.sampler.seed)?),
            None => None,
        };
        if let Some(t) = &thinking {
            let needed = t.min_response_tokens();
            if options.max_tokens < needed {
                return Err(GenerateError::InvalidOption {
                    option: "max_tokens",
                    reason: format!(
                        "{} cannot hold thinking.min_tokens {} (with its markers at least {needed} tokens)",
                        options.max_tokens,
                        t.options().min_tokens
                    ),
                });
            }
        }
        let capacity = match thinking.as_ref().map(|t| t.end_marker()) {
            // One step per byte of the marker bounds the tokens that can spell it, plus the
            // step that sampled its first token.
            Some(crate::thinking::Marker::Text(end)) => end.len() + 1,
            _ => 0,
        };
        let longest = options.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        let cached = transcript.begin(prompt_ids)?;
        Ok(Self {
            end_of_generation: codec.end_of_generation_ids(),
            codec,
            sampler,
            phase_sampling,
            suppressed_now: Vec::new(),
            thinking,
            max_tokens: options.max_tokens,
            stop: StopStrings { texts: options.stop, longest, in_thinking: options.stop_in_thinking },
            prompt_len: prompt_ids.len(),
            response: Response {
                stream: TextStream::new(&prompt_ids[prompt_ids.len() - 1..]),
                text: String::new(),
                tokens: Vec::new(),
                released: 0,
                match_floor: 0,
            },
            logits: HostLogits { capacity, ..HostLogits::default() },
            early_end_bans: Vec::new(),
            budget_exhausted: false,
            events: VecDeque::new(),
            stats: Stats { prompt_tokens: prompt_ids.len(), cached_tokens: cached, seed: options.sampler.seed, ..Stats::default() },
            prefill_tokens: 0,
            stage: Stage::New,
            logprobs: options.logprobs,
            chosen_logprobs: None,
        })
    }

    /// The next event, running at most one sampling step (one forward, plus the resampling
    /// of a taken-back marker from saved logits, or a confidence probe's few forwards) to
    /// produce it; `None` once `done` has been returned. After an error the generation is
    /// over.
    pub async fn next_event<B: Backend>(&mut self, t: &mut Transcript<B>) -> Result<Option<Event>, GenerateError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.stage == Stage::Done {
                return Ok(None);
            }
            if let Err(e) = self.step(t).await {
                self.stage = Stage::Done;
                self.events.clear();
                return Err(e);
            }
        }
    }

    /// Run to the end and collect everything.
    pub async fn run_to_end<B: Backend>(&mut self, t: &mut Transcript<B>) -> Result<Completion, GenerateError> {
        let mut events = Vec::new();
        let mut text = String::new();
        while let Some(event) = self.next_event(t).await? {
            if let Event::Token { text: piece, .. } = &event {
                text.push_str(piece);
            }
            events.push(event);
        }
        let ids = t.ids();
        let split = self.prompt_len.min(ids.len());
        Ok(Completion {
            prompt_ids: ids[..split].to_vec(),
            tokens: ids[split..].to_vec(),
            text,
            events,
            stats: self.stats.clone(),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn is_finished(&self) -> bool {
        self.stage == Stage::Done && self.events.is_empty()
    }

    // --- one step ---

    async fn step<B: Backend>(&mut self, t: &mut Transcript<B>) -> Result<(), GenerateError> {
        if self.stage == Stage::New {
            self.stage = Stage::Prefill;
            if let Some(thinking) = self.thinking.as_mut() {
                let actions = thinking.start();
                self.apply(t, None, None, actions).await?;
                if self.stage == Stage::Done {
                    return Ok(());
                }
            }
        }
        let mut banned = match self.thinking.as_ref().map(|t| t.before_sample()) {
            Some(BeforeSample::Stop(StopReason::AnswerMaxTokens)) => {
                return self.finish(t, FinishReason::AnswerMaxTokens).await;
            }
            Some(BeforeSample::Sample { mut banned, suppressed }) => {
                banned.extend_from_slice(&suppressed);
                self.suppressed_now = suppressed;
                banned
            }
            None => Vec::new(),
        };
        if self.thinking.as_ref().is_some_and(|t| t.under_min()) {
            banned.extend_from_slice(&self.early_end_bans);
        }
        if t.len() - self.prompt_len >= self.max_tokens {
            return self.finish(t, FinishReason::MaxTokens).await;
        }
        // Every kept token gets fed, so one must fit after the pending ones.
        if t.len() >= t.max_context() {
            return self.finish(t, FinishReason::ContextFull).await;
        }
        let mut id = self.forward_and_choose(t, &banned).await?;
        loop {
            let start = self.response.text.len();
            let piece = self.response.stream.push(&self.codec, id);
            self.response.text.push_str(&piece);
            let hit = self.find_marker_hit(start);
            let mut actions = match self.thinking.as_mut() {
                Some(c) => c.after_sample(id, &piece, hit.map(|h| h.tokens_before)),
                None => vec![Action::Keep { phase: Phase::Answer, marker: false }],
            };
            if let [Action::Probe { ids, max_tokens }] = actions.as_slice() {
                let (ids, max_tokens) = (ids.clone(), *max_tokens);
                let confidence = self.probe(t, &ids, max_tokens).await?;
                if let Some(c) = self.thinking.as_mut() {
                    actions = c.after_probe(confidence, &piece);
                }
                if let Some(Event::Probe { exit, .. }) = self.events.back_mut() {
                    *exit = actions.iter().any(|a| matches!(a, Action::EarlyExit { .. }));
                }
            }
            let kept = actions.iter().any(|a| matches!(a, Action::Keep { .. })) && !self.end_of_generation.contains(&id);
            if !kept {
                self.response.stream.pop(1);
                self.response.text.truncate(start);
                self.stats.dropped_tokens += 1;
            }
            match self.apply(t, Some((id, start)), hit, actions).await? {
                Some(first_marker_token) => {
                    // Resample the same position with the marker's first token banned.
                    self.ban_early_end(first_marker_token, t.backend().config().vocab_size);
                    banned.extend_from_slice(&self.early_end_bans);
                    self.stats.ends_suppressed += 1;
                    id = self.choose_again(t, &banned)?;
                }
                None => return Ok(()),
            }
        }
    }

    /// A string end marker starting with `first_token` was taken back under `min_tokens`.
    /// Keep that token banned until the minimum; from the second take-back on, ban every
    /// token whose text holds the marker's first character, which leaves the model no way to
    /// spell it (the controller's MAX_TAKE_BACKS counts on that).
    fn ban_early_end(&mut self, first_token: u32, vocab_size: usize) {
        self.early_end_bans.push(first_token);
        let Some(thinking) = self.thinking.as_ref() else { return };
        if thinking.take_backs() != 2 {
            return;
        }
        let Some(first_char) = thinking.end_marker_text().and_then(|m| m.chars().next()) else { return };
        for id in 0..vocab_size as u32 {
            if self.codec.decode(&[id]).contains(first_char) {
                self.early_end_bans.push(id);
            }
        }
        self.early_end_bans.sort_unstable();
        self.early_end_bans.dedup();
    }

    /// A confidence probe at the current position (the trigger token not kept yet): force
    /// `probe_ids`, decode greedily up to `max_tokens` trial tokens (stopping at end of
    /// generation or at the first newline), feed them all, then truncate the transcript back
    /// so the KV cache holds what it held before. Returns the trial's mean top-1 probability
    /// (over every greedy step, a final end of generation included), or `None` when no probe
    /// could run here: text is held back (a possible marker or stop string, which forced
    /// text would split) or the context has no room.
    async fn probe<B: Backend>(&mut self, t: &mut Transcript<B>, probe_ids: &[u32], max_tokens: usize) -> Result<Option<f64>, GenerateError> {
        let held = self.response.released < self.response.tokens.len();
        if held || probe_ids.is_empty() || t.len() + probe_ids.len() + max_tokens > t.max_context() {
            return Ok(None);
        }
        let base = t.len();
        // The probe's text continues the response's, without the trigger just pushed.
        let mut stream = self.response.stream.clone();
        stream.pop(1);
        for &id in probe_ids {
            t.push(id);
            let text = stream.push(&self.codec, id);
            self.events.push_back(Event::Token { id, text, phase: Phase::Thinking, forced: true, marker: false, probe: true, logprob: None, top_logprobs: None });
        }
        let mut top1 = Vec::with_capacity(max_tokens);
        let mut trial = String::new();
        while top1.len() < max_tokens {
            self.feed(t, true).await?;
            let Some((id, p)) = top1_probability(&self.logits.current) else { break };
            top1.push(p);
            if self.end_of_generation.contains(&id) {
                break;
            }
            t.push(id);
            let text = stream.push(&self.codec, id);
            trial.push_str(&text);
            self.events.push_back(Event::Token { id, text, phase: Phase::Thinking, forced: false, marker: false, probe: true, logprob: None, top_logprobs: None });
            if trial.contains('\n') {
                break;
            }
        }
        // Fed whole, so that the rollback removes exactly what ran.
        self.feed(t, false).await?;
        let tokens = t.len() - base;
        t.truncate(base)?;
        self.logits.at = None;
        self.stats.probes += 1;
        self.stats.probe_tokens += tokens;
        self.stats.rolled_back_tokens += tokens;
        let confidence = if top1.is_empty() { 0.0 } else { top1.iter().sum::<f64>() / top1.len() as f64 };
        self.events.push_back(Event::Probe { confidence, tokens, exit: false });
        Ok(Some(confidence))
    }

    /// The sampler options of the phase a token chosen now belongs to.
    fn sampling_now(&self) -> &SamplerOptions {
        let phase = self.thinking.as_ref().map_or(Phase::Answer, |c| c.phase());
        let own = match phase {
            Phase::Thinking => &self.phase_sampling[0],
            Phase::Answer => &self.phase_sampling[1],
        };
        own.as_ref().unwrap_or(self.sampler.options())
    }

    /// Feed the pending tokens and choose the next one.
    async fn forward_and_choose<B: Backend>(&mut self, t: &mut Transcript<B>, banned: &[u32]) -> Result<u32, GenerateError> {
        if self.stage == Stage::Prefill {
            let t0 = monotonic_seconds();
            let n = t.feed_all_but_last().await?;
            self.account_feed(n, monotonic_seconds() - t0);
        }
        let id = self.forward_and_choose_inner(t, banned).await?;
        self.stage = Stage::Decode;
        Ok(id)
    }

    async fn forward_and_choose_inner<B: Backend>(&mut self, t: &mut Transcript<B>, banned: &[u32]) -> Result<u32, GenerateError> {
        let keep_recent = self.logits.capacity > 0 && self.thinking.as_ref().is_some_and(|c| c.may_take_back_end());
        if keep_recent || self.logprobs.is_some() || t.pending().is_empty() {
            // A string end marker may be taken back (its position is then resampled from
            // saved logits), logprobs are asked for, or this position was already run: the
            // logits live on the host.
            let uniform = self.sampler.next_uniform();
            self.feed(t, true).await?;
            if keep_recent {
                // Entries at or past this index belong to a rolled-back future.
                let at = t.len();
                self.logits.recent.retain(|(pos, _)| *pos < at);
                if self.logits.recent.len() == self.logits.capacity {
                    self.logits.recent.pop_front();
                }
                self.logits.recent.push_back((at, self.logits.current.clone()));
            }
            return self.choose(t, banned, true, uniform);
        }
        // Nothing needs the logits on the host: let the backend choose (a GPU reads back the
        // id instead of the vocabulary's logits). The uniform is drawn whichever path runs,
        // so the RNG stream does not depend on the backend.
        let uniform = self.sampler.next_uniform();
        let n = t.pending().len();
        let t0 = monotonic_seconds();
        let options = self.sampling_now().clone();
        // Another step will likely follow this one unless it is the last the limits allow
        // (an end of generation or a controller's intervention cannot be foreseen): the
        // backend may start it early with the next uniform (run-ahead).
        let room = t.len() + 2 <= t.max_context() && t.len() + 1 - self.prompt_len < self.max_tokens;
        let ahead = room.then(|| self.sampler.peek_uniform());
        let mut taken = t.feed_sample(&options, banned, uniform, !banned.is_empty(), ahead).await;
        if taken.is_none() && banned.is_empty() && options.is_greedy() {
            // A backend that does not choose itself may still have a cheaper greedy step.
            taken = Some(t.feed_greedy(&[]).await.map(|id| SampledToken { id: Some(id), raw_argmax: None }));
        }
        let Some(sampled) = taken else {
            // The backend does not sample this request itself: logits to the host.
            self.feed(t, true).await?;
            return self.choose(t, banned, true, uniform);
        };
        let sampled = sampled?;
        self.account_feed(n, monotonic_seconds() - t0);
        self.logits.at = None;
        if let Some(best) = sampled.raw_argmax {
            // As `choose` counts from the host logits.
            if self.suppressed_now.contains(&best) {
                self.stats.words_suppressed += 1;
                self.events.push_back(Event::Suppressed { id: best, text: self.codec.decode(&[best]) });
            } else if banned.contains(&best) {
                self.stats.ends_suppressed += 1;
            }
        }
        Ok(sampled.id.ok_or(SamplerError::NoCandidates)?)
    }

    /// Choose from the host logits with this step's `uniform`. `count_masked_end`: count the
    /// step in `ends_suppressed` when a banned id was the most likely one (a resample after
    /// a taken-back marker is counted by its caller).
    fn choose<B: Backend>(&mut self, t: &Transcript<B>, banned: &[u32], count_masked_end: bool, uniform: f64) -> Result<u32, GenerateError> {
        let t0 = monotonic_seconds();
        if count_masked_end && !banned.is_empty() {
            if let Some(best) = raw_argmax(&self.logits.current) {
                if self.suppressed_now.contains(&best) {
                    self.stats.words_suppressed += 1;
                    self.events.push_back(Event::Suppressed { id: best, text: self.codec.decode(&[best]) });
                } else if banned.contains(&best) {
                    self.stats.ends_suppressed += 1;
                }
            }
        }
        let options = self.sampling_now().clone();
        let id = sample_with_uniform(&options, &self.logits.current, t.ids(), banned, uniform)?;
        self.chosen_logprobs =
            self.logprobs.and_then(|top| sampler::token_logprobs(&options, &self.logits.current, banned, id, top));
        self.stats.decode_s += monotonic_seconds() - t0;
        Ok(id)
    }

    /// After a rollback, sample the current position again from its saved logits.
    fn choose_again<B: Backend>(&mut self, t: &Transcript<B>, banned: &[u32]) -> Result<u32, GenerateError> {
        let at = t.len();
        if self.logits.at != Some(at) {
            let Some((_, saved)) = self.logits.recent.iter().find(|(pos, _)| *pos == at) else {
                // Unreachable while `capacity` covers the longest marker; kept typed.
                return Err(GenerateError::BadLogits { got: 0, expected: t.backend().config().vocab_size });
            };
            self.logits.current = saved.clone();
            self.logits.at = Some(at);
        }
        let uniform = self.sampler.next_uniform();
        self.choose(t, banned, false, uniform)
    }

    /// Feed the pending queue in one forward; `with_logits`: keep the last position's logits.
    async fn feed<B: Backend>(&mut self, t: &mut Transcript<B>, with_logits: bool) -> Result<(), GenerateError> {
        let vocab = t.backend().config().vocab_size;
        let n = t.pending().len();
        if n == 0 {
            if with_logits && self.logits.at != Some(t.len()) {
                return Err(GenerateError::BadLogits { got: 0, expected: vocab });
            }
            return Ok(());
        }
        let t0 = monotonic_seconds();
        let logits = t.feed(usize::from(with_logits)).await?;
        if with_logits && logits.len() != vocab {
            return Err(GenerateError::BadLogits { got: logits.len(), expected: vocab });
        }
        self.account_feed(n, monotonic_seconds() - t0);
        if with_logits {
            self.logits.current = logits;
            self.logits.at = Some(t.len());
        }
        Ok(())
    }

    /// `n` tokens went through `forward` in `seconds`.
    fn account_feed(&mut self, n: usize, seconds: f64) {
        if self.stage == Stage::Prefill {
            self.prefill_tokens += n;
            self.stats.prefill_s += seconds;
        } else {
            self.stats.decode_s += seconds;
        }
        self.stats.processed_tokens += n;
    }

    /// Carry out the controller's actions for the sampled token `(id, text offset)` (or
    /// for the start, `None`). Returns the id to ban when a resample is asked for.
    async fn apply<B: Backend>(
        &mut self,
        t: &mut Transcript<B>,
        sampled: Option<(u32, usize)>,
        hit: Option<MarkerHit>,
        mut actions: Vec<Action>,
    ) -> Result<Option<u32>, GenerateError> {
        // Held text before a completed marker is plain text: out with it.
        if let Some(hit) = hit {
            self.release(hit.at);
        }
        // Forced tokens that do not fit the context or `max_tokens` are not started: the
        // actions before the first insertion run, then the generation ends, so that every
        // event announces something that happened and `max_tokens` is a hard cap.
        let no_room = self.no_room_for(t, &actions);
        if no_room.is_some() {
            let cut = actions.iter().position(|a| matches!(a, Action::Force { .. } | Action::Continuation { .. }));
            actions.truncate(cut.unwrap_or(actions.len()));
        }
        // Announcements go out after the text that is surely plain; tokens that may still
        // turn out to be (part of) a marker or stop string stay held, or a rollback could
        // not take them back.
        let marker_floor = hit.map_or(usize::MAX, |h| h.at);
        let mut first_rolled_back = None;
        for action in actions {
            if self.stage == Stage::Done {
                break;
            }
            match action {
                Action::Keep { phase, marker } => {
                    let Some((id, start)) = sampled else { continue };
                    let marker_from = marker.then(|| hit.map_or(start, |h| h.at));
                    if self.keep_sampled(t, id, start, phase, marker_from).await? {
                        break;
                    }
                }
                Action::Rollback { tokens } => first_rolled_back = self.roll_back(t, tokens)?,
                Action::Resample => return Ok(first_rolled_back.or(sampled.map(|(id, _)| id))),
                Action::Force { ids, phase, marker } => self.force(t, &ids, phase, marker)?,
                Action::Phase(phase) => {
                    self.announce(marker_floor, Event::Phase { phase });
                    if phase == Phase::Answer {
                        // Stop strings and markers are searched in the answer's own text.
                        self.response.match_floor = self.response.text.len();
                    }
                }
                Action::Continuation { text, round } => {
                    self.stats.continuations += 1;
                    self.announce(marker_floor, Event::Continuation { text, round });
                }
                Action::BudgetExhausted { .. } => {
                    self.budget_exhausted = true;
                    // An exit without grace follows at once: tidy before the announcement
                    // releases what was held.
                    if self.thinking.as_ref().is_some_and(|c| c.phase() == Phase::Answer) {
                        self.drop_partial_end_marker(t)?;
                    }
                    // Counted from the tags, like the stats (the controller's count can include
                    // the half marker just taken back).
                    self.count_tokens();
                    let thinking_tokens = self.stats.thinking_tokens;
                    self.announce(marker_floor, Event::BudgetExhausted { thinking_tokens });
                }
                Action::EarlyExit { reason, thinking_tokens } => {
                    match reason {
                        ExitReason::Confidence => self.stats.confidence_exit = true,
                        ExitReason::Schedule => self.stats.schedule_exit = true,
                    }
                    self.announce(marker_floor, Event::EarlyExit { reason, thinking_tokens });
                }
                // Run by `step` before the actions get here.
                Action::Probe { .. } => {}
                Action::Stop(StopReason::AnswerMaxTokens) => self.finish(t, FinishReason::AnswerMaxTokens).await?,
            }
        }
        if let Some(reason) = no_room {
            self.finish(t, reason).await?;
        }
        if self.stage != Stage::Done {
            let hold_from = self.hold_from();
            self.release(hold_from);
        }
        self.count_tokens();
        Ok(None)
    }

    /// Keep the sampled token `id` (its text starts at `start`); `marker_from`: it completes
    /// a marker that starts at that text offset. Returns whether the generation ended.
    async fn keep_sampled<B: Backend>(
        &mut self,
        t: &mut Transcript<B>,
        id: u32,
        start: usize,
        phase: Phase,
        marker_from: Option<usize>,
    ) -> Result<bool, GenerateError> {
        if self.end_of_generation.contains(&id) {
            self.finish(t, FinishReason::EndOfGeneration).await?;
            return Ok(true);
        }
        t.push(id);
        self.stats.sampled_tokens += 1;
        let end = self.response.text.len();
        let logprobs = self.chosen_logprobs.take();
        self.response.tokens.push(ResponseToken { id, start, end, phase, forced: false, marker: false, logprobs });
        let Some(from) = marker_from else { return self.check_stop_strings(t, start, phase).await };
        // The tokens spelling the marker belong to it: tag and emit them.
        let released = self.response.released;
        for token in &mut self.response.tokens[released..] {
            if token.end > from {
                token.phase = phase;
                token.marker = true;
            }
        }
        self.release(usize::MAX);
        Ok(false)
    }

    /// Take the last `tokens` kept tokens back out of the transcript and the response;
    /// returns the first of them.
    fn roll_back<B: Backend>(&mut self, t: &mut Transcript<B>, tokens: usize) -> Result<Option<u32>, GenerateError> {
        let keep = t.len() - tokens;
        let first = t.ids().get(keep).copied();
        // Tokens never fed leave no trace in the cache: they count as dropped, not rolled back.
        let unfed = t.pending().len().min(tokens);
        for token in &self.response.tokens[self.response.tokens.len() - unfed..] {
            if token.forced {
                self.stats.forced_tokens -= 1;
            } else {
                self.stats.sampled_tokens -= 1;
            }
        }
        self.stats.dropped_tokens += unfed;
        t.truncate(keep)?;
        self.stats.rolled_back_tokens += tokens - unfed;
        self.response.stream.pop(tokens);
        let kept = keep - self.prompt_len;
        if let Some(token) = self.response.tokens.get(kept) {
            self.response.text.truncate(token.start);
        }
        self.response.tokens.truncate(kept);
        self.response.released = self.response.released.min(kept);
        Ok(first)
    }

    /// Append `ids` as if the model had written them, emitting each at once.
    fn force<B: Backend>(&mut self, t: &mut Transcript<B>, ids: &[u32], phase: Phase, marker: bool) -> Result<(), GenerateError> {
        if self.budget_exhausted && phase == Phase::Thinking {
            self.drop_partial_end_marker(t)?;
        }
        self.release(usize::MAX);
        if marker && self.budget_exhausted {
            self.stats.forced_exit = true;
        }
        for &id in ids {
            let start = self.response.text.len();
            let piece = self.response.stream.push(&self.codec, id);
            self.response.text.push_str(&piece);
            t.push(id);
            let end = self.response.text.len();
            self.response.tokens.push(ResponseToken { id, start, end, phase, forced: true, marker, logprobs: None });
            self.stats.forced_tokens += 1;
            self.events.push_back(Event::Token { id, text: piece, phase, forced: true, marker, probe: false, logprob: None, top_logprobs: None });
        }
        self.response.released = self.response.tokens.len();
        self.response.match_floor = self.response.text.len();
        Ok(())
    }

    /// A forced exit cuts thinking wherever it is. Tokens held back because they may begin a
    /// string end marker ("…sure.</") would read as a broken marker in front of the forced
    /// one: take them back, unless that would leave thinking under its minimum.
    fn drop_partial_end_marker<B: Backend>(&mut self, t: &mut Transcript<B>) -> Result<(), GenerateError> {
        let Some(controller) = self.thinking.as_ref() else { return Ok(()) };
        let Some(marker) = controller.end_marker_text() else { return Ok(()) };
        let text = &self.response.text;
        let Some(from) = (1..marker.len())
            .rev()
            .filter(|&k| marker.is_char_boundary(k) && text.ends_with(&marker[..k]))
            .map(|k| text.len() - k)
            .find(|&from| from >= self.response.match_floor)
        else {
            return Ok(());
        };
        let held = &self.response.tokens[self.response.released..];
        let partial = held.iter().rev().take_while(|token| token.start >= from && !token.forced).count();
        let thinking = self.response.tokens.iter().filter(|token| token.phase == Phase::Thinking && !token.marker).count();
        if partial == 0 || thinking - partial < controller.options().min_tokens {
            return Ok(());
        }
        self.roll_back(t, partial)?;
        Ok(())
    }

    /// Queue an announcement after the text that is surely plain (before `marker_floor`, a
    /// marker completed this step, and before anything that may still become one).
    fn announce(&mut self, marker_floor: usize, event: Event) {
        self.release(marker_floor.min(self.hold_from()));
        self.events.push_back(event);
    }

    /// Why what `actions` would keep and force does not fit, if it does not: the context, or
    /// the response's `max_tokens`.
    fn no_room_for<B: Backend>(&self, t: &Transcript<B>, actions: &[Action]) -> Option<FinishReason> {
        let mut len = t.len();
        let mut forced = false;
        for action in actions {
            match action {
                Action::Keep { .. } => len += 1,
                Action::Rollback { tokens } => len = len.saturating_sub(*tokens),
                Action::Force { ids, .. } => {
                    len += ids.len();
                    forced = true;
                }
                _ => {}
            }
        }
        if len > t.max_context() {
            Some(FinishReason::ContextFull)
        } else if forced && len - self.prompt_len > self.max_tokens {
            Some(FinishReason::MaxTokens)
        } else {
            None
        }
    }

    /// The watched string marker, if the token that starts at text offset `start` completed it.
    fn find_marker_hit(&self, start: usize) -> Option<MarkerHit> {
        let marker = self.thinking.as_ref()?.watched_text()?;
        let text = &self.response.text;
        let from = char_floor(text, start.saturating_sub(marker.len() - 1).max(self.response.match_floor));
        let at = from + text[from..].find(marker)?;
        if at + marker.len() <= start {
            return None;
        }
        let tokens_before = self.response.tokens.iter().rev().take_while(|token| token.end > at).count();
        Some(MarkerHit { at, tokens_before })
    }

    /// Whether stop strings apply to a token of `phase`.
    fn stops_apply(&self, phase: Phase) -> bool {
        !self.stop.texts.is_empty() && (phase == Phase::Answer || self.stop.in_thinking)
    }

    /// Finish on a stop string completed by the token starting at `start`. Its text and
    /// everything after it is not emitted; the text before it in a straddling token is.
    async fn check_stop_strings<B: Backend>(&mut self, t: &mut Transcript<B>, start: usize, phase: Phase) -> Result<bool, GenerateError> {
        if !self.stops_apply(phase) {
            return Ok(false);
        }
        let text = &self.response.text;
        let from = char_floor(text, start.saturating_sub(self.stop.longest - 1).max(self.response.match_floor));
        let Some(at) = self.stop.texts.iter().filter_map(|s| text[from..].find(s.as_str()).map(|p| from + p)).min() else {
            return Ok(false);
        };
        self.release(at);
        let mut shown = self.response.released;
        if let Some(token) = self.response.tokens.get(shown) {
            if token.start < at {
                let text = self.response.text[token.start..at].to_string();
                let event = self.token_event(token, text);
                self.events.push_back(event);
                shown += 1;
            }
        }
        // Tokens wholly inside or after the stop string are not part of the response: they
        // leave the transcript too (fed first, so the accounting stays exact), and a
        // follow-up turn never builds on text the user did not see.
        self.feed(t, false).await?;
        let cut = self.response.tokens.len() - shown;
        if cut > 0 {
            t.truncate(self.prompt_len + shown)?;
            self.stats.rolled_back_tokens += cut;
            self.response.tokens.truncate(shown);
        }
        self.response.released = shown;
        self.finish(t, FinishReason::StopString).await?;
        Ok(true)
    }

    /// Text offset from which the text could still become a stop string or the watched
    /// marker; tokens ending before it are safe to emit.
    fn hold_from(&self) -> usize {
        let watched = self.thinking.as_ref().and_then(|c| c.watched_text());
        let phase = self.thinking.as_ref().map_or(Phase::Answer, |c| c.phase());
        let stops = if self.stops_apply(phase) { self.stop.texts.as_slice() } else { &[] };
        let text = &self.response.text;
        let mut from = text.len();
        for pattern in stops.iter().map(String::as_str).chain(watched) {
            for k in (1..pattern.len()).rev() {
                if pattern.is_char_boundary(k) && text.ends_with(&pattern[..k]) {
                    let candidate = text.len() - k;
                    if candidate >= self.response.match_floor {
                        from = from.min(candidate);
                    }
                    break;
                }
            }
        }
        from
    }

    /// Emit the held tokens whose text ends at or before `upto`.
    fn release(&mut self, upto: usize) {
        while let Some(token) = self.response.tokens.get(self.response.released) {
            if token.end > upto {
                break;
            }
            let end = token.end;
            let event = self.token_event(token, self.response.text[token.start..end].to_string());
            self.events.push_back(event);
            self.response.released += 1;
            // Shown text is final: no marker or stop string may start in it, even when a
            // take-back later re-exposes it as the text's tail.
            self.response.match_floor = self.response.match_floor.max(end);
        }
    }

    /// The `token` event of a kept token showing `text`.
    fn token_event(&self, token: &ResponseToken, text: String) -> Event {
        let (logprob, top_logprobs) = match &token.logprobs {
            Some(l) => {
                let top = l.top.iter().map(|a| TopLogprob { id: a.id, text: self.codec.decode(&[a.id]), logprob: a.logprob });
                (Some(l.logprob), Some(top.collect()))
            }
            None => (None, None),
        };
        Event::Token { id: token.id, text, phase: token.phase, forced: token.forced, marker: token.marker, probe: false, logprob, top_logprobs }
    }

    /// Counts come from the kept tokens' tags, the same tags the events carry.
    fn count_tokens(&mut self) {
        let tokens = &self.response.tokens;
        self.stats.response_tokens = tokens.len();
        let count = |phase| tokens.iter().filter(|t| t.phase == phase && !t.marker).count();
        self.stats.thinking_tokens = count(Phase::Thinking);
        self.stats.answer_tokens = count(Phase::Answer);
    }

    async fn finish<B: Backend>(&mut self, t: &mut Transcript<B>, reason: FinishReason) -> Result<(), GenerateError> {
        if self.stage == Stage::Done {
            return Ok(());
        }
        self.stage = Stage::Done;
        self.release(usize::MAX);
        // Feed the last kept tokens so that the cache holds the whole transcript.
        self.feed(t, false).await?;
        self.count_tokens();
        let prefill = self.prefill_tokens;
        self.stats.prefill_tok_s = rate(prefill, self.stats.prefill_s);
        self.stats.decode_tok_s = rate(self.stats.processed_tokens - prefill, self.stats.decode_s);
        self.stats.finish_reason = Some(reason);
        self.events.push_back(Event::Done { stats: self.stats.clone() });
        Ok(())
    }
}

/// The argmax of `logits` and its softmax probability (in f64), `None` if none is finite.
fn top1_probability(logits: &[f32]) -> Option<(u32, f64)> {
    let best = raw_argmax(logits)?;
    let max = logits[best as usize] as f64;
    let sum: f64 = logits.iter().filter(|l| l.is_finite()).map(|&l| (l as f64 - max).exp()).sum();
    Some((best, 1.0 / sum))
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
        return Err(GenerateError::PromptTooLong { prompt: needed, context: backend.max_context() });
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
