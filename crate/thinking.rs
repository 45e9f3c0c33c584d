//! The thinking budget: s1-style budget forcing (Muennighoff et al. 2025, arXiv 2501.19393
//! §3.1) as a pure state machine over token ids.
//!
//! The generation loop consults it twice per step:
//! - [`ThinkingController::before_sample`]: which ids must not be sampled now (an end of
//!   thinking under `min_tokens` when no continuation may be inserted), or stop.
//! - [`ThinkingController::after_sample`]: what to do with the token just drawn, as an ordered
//!   list of [`Action`]s: keep it, drop it and force a continuation ("Wait"), roll back the
//!   tokens of a multi-token end marker and insert, force the exit (wrap-up, end marker,
//!   answer prefix), ...
//!
//! It never sees logits or text beyond what the loop hands it (the token's decoded piece, and
//! whether a *string* marker just completed in the text), so every path is testable with a
//! scripted model and the same controller will drive the WebGPU backend and the browser.
//!
//! Counting: thinking tokens are the tokens strictly between the start and end markers,
//! forced continuation and wrap-up tokens included, markers excluded. s1 ablations: "Wait"
//! beat "Hmm"/"Alternatively"; gains flatten after ~6 insertions and suppressing too often
//! pushes a model into loops, hence `max_continuations`.

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, TextCodec};
use crate::sampler::Rng;

/// The default markers of DeepSeek-R1-Distill and Qwen3.
pub const DEFAULT_START_MARKER: &str = "<think>";
pub const DEFAULT_END_MARKER: &str = "</think>";
pub const DEFAULT_CONTINUATION: &str = "Wait";

#[derive(Debug, thiserror::Error)]
pub enum ThinkingError {
    #[error("thinking option {option}: {reason}")]
    InvalidOption { option: &'static str, reason: String },
    #[error("thinking: tokenizing {what}: {source}")]
    Encode { what: &'static str, source: CodecError },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Thinking,
    Answer,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContinuationOrder {
    /// continuations[0], [1], ..., [0], ...
    #[default]
    Cycle,
    /// A seeded uniform choice each time.
    Random,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyEnd {
    /// Replace an end before `min_tokens` by a continuation (s1).
    #[default]
    Continue,
    /// Only mask the end marker and end of generation (vLLM's `min_tokens`).
    Suppress,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct ThinkingOptions {
    /// Thinking may not end before this many thinking tokens.
    pub min_tokens: usize,
    /// Thinking is cut (gracefully) at this many thinking tokens; `None` = no cap.
    pub max_tokens: Option<usize>,
    /// Texts inserted in place of a rejected end of thinking.
    pub continuations: Vec<String>,
    pub continuation_order: ContinuationOrder,
    /// Replace the first k natural ends by a continuation even after `min_tokens`
    /// (s1's `thinking_n_ignore`).
    pub ignore_ends: usize,
    /// Cap on insertions; past it an end before `min_tokens` is masked instead.
    pub max_continuations: Option<usize>,
    pub on_early_end: EarlyEnd,
    /// After the budget is spent, let up to this many more tokens run to reach a newline or
    /// sentence end before cutting (0 = cut at once, as s1 does).
    pub grace_tokens: usize,
    /// Text forced before the end marker on a forced exit.
    pub wrap_up: Option<String>,
    /// Text forced after the end marker whenever thinking closes, e.g. "Final Answer:".
    pub answer_prefix: Option<String>,
    /// Cap on answer tokens (after thinking, or all tokens if thinking never opens).
    pub answer_max_tokens: Option<usize>,
    /// Start marker: a single token when the vocabulary has it as one, else a string found
    /// in the decoded text. Default `<think>`.
    pub start: Option<String>,
    /// End marker, same rules. Default `</think>`.
    pub end: Option<String>,
    /// Force the start marker at the beginning of the response when the prompt has not
    /// opened thinking (for templates that do not).
    pub open: bool,
    /// Seed of the `random` continuation order; `None` = derived from the sampler's seed.
    pub seed: Option<u64>,
}

impl Default for ThinkingOptions {
    fn default() -> Self {
        Self {
            min_tokens: 0,
            max_tokens: None,
            continuations: vec![DEFAULT_CONTINUATION.to_string()],
            continuation_order: ContinuationOrder::Cycle,
            ignore_ends: 0,
            max_continuations: None,
            on_early_end: EarlyEnd::Continue,
            grace_tokens: 0,
            wrap_up: None,
            answer_prefix: None,
            answer_max_tokens: None,
            start: None,
            end: None,
            open: false,
            seed: None,
        }
    }
}

impl ThinkingOptions {
    pub fn validate(&self) -> Result<(), ThinkingError> {
        let bad = |option, reason: String| Err(ThinkingError::InvalidOption { option, reason });
        if let Some(max) = self.max_tokens {
            if self.min_tokens > max {
                return bad("min_tokens", format!("{} exceeds max_tokens {max}", self.min_tokens));
            }
        }
        if self.continuations.iter().any(|c| c.is_empty()) {
            return bad("continuations", "a continuation is empty".into());
        }
        if self.continuations.is_empty() && self.ignore_ends > 0 {
            return bad("ignore_ends", "needs at least one continuation to insert".into());
        }
        if let Some(cap) = self.max_continuations {
            if self.ignore_ends > cap {
                return bad("ignore_ends", format!("{} exceeds max_continuations {cap}", self.ignore_ends));
            }
        }
        for (option, text) in [("wrap_up", &self.wrap_up), ("answer_prefix", &self.answer_prefix)] {
            if text.as_deref() == Some("") {
                return bad(option, "is empty (leave it out instead)".into());
            }
        }
        for (option, text) in [("start", &self.start), ("end", &self.end)] {
            if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return bad(option, "marker is empty or only whitespace".into());
            }
        }
        if self.start_marker() == self.end_marker() {
            return bad("end", "start and end markers are the same".into());
        }
        Ok(())
    }

    fn start_marker(&self) -> &str {
        self.start.as_deref().unwrap_or(DEFAULT_START_MARKER)
    }

    fn end_marker(&self) -> &str {
        self.end.as_deref().unwrap_or(DEFAULT_END_MARKER)
    }
}

/// A marker as the controller recognises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// One vocabulary token (e.g. DeepSeek-R1's `</think>`): recognised by id, can be masked.
    Token(u32),
    /// Several tokens: recognised in the decoded text, rolled back out of the KV cache.
    Text(String),
}

/// What the loop must do, in order, after a sampled token (or at the start).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Keep the sampled token, tagged with `phase`. `marker`: it completes a marker; the
    /// loop tags the trailing tokens that spell a string marker with `phase` too. A list
    /// without `Keep` means the sampled token is dropped (never fed to the model).
    Keep { phase: Phase, marker: bool },
    /// Remove this many kept tokens from the end of the sequence (and the KV cache).
    Rollback { tokens: usize },
    /// Sample this position again from the logits that produced the first rolled-back
    /// token, with that token banned too (masking a string marker under `min_tokens`).
    Resample,
    /// Feed these tokens as if the model had produced them. `marker`: they write a thinking
    /// marker (counted neither as thinking nor as answer).
    Force { ids: Vec<u32>, phase: Phase, marker: bool },
    Phase(Phase),
    Continuation { text: String, round: usize },
    BudgetExhausted { thinking_tokens: usize },
    /// Stop generating.
    Stop(StopReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    AnswerMaxTokens,
}

/// What to do before sampling.
#[derive(Clone, Debug, PartialEq)]
pub enum BeforeSample {
    /// Sample with these ids banned.
    Sample { banned: Vec<u32> },
    Stop(StopReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Thinking not opened (yet): watching for the start marker; tokens are answer tokens.
    BeforeThinking,
    Thinking,
    /// Budget spent; up to `grace_left` more tokens to reach a sentence end.
    Exiting { grace_left: usize },
    Answer,
}

/// Counters the loop copies into its stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThinkingCounts {
    pub thinking_tokens: usize,
    pub answer_tokens: usize,
    pub continuations: usize,
    /// Natural ends of thinking the model attempted (sampled end marker or end of generation).
    pub natural_ends: usize,
    pub forced_exit: bool,
}

#[derive(Clone, Debug)]
struct Continuation {
    text: String,
    ids: Vec<u32>,
}

pub struct ThinkingController {
    options: ThinkingOptions,
    start: Marker,
    end: Marker,
    /// Ids forced to write each marker.
    start_ids: Vec<u32>,
    end_ids: Vec<u32>,
    wrap_up_ids: Vec<u32>,
    answer_prefix_ids: Vec<u32>,
    continuations: Vec<Continuation>,
    end_of_generation: Vec<u32>,
    rng: Rng,
    /// Index of the continuation to insert next (drawn ahead, so that "does it fit under
    /// max_tokens" can be asked before the end is sampled).
    next_continuation: usize,
    state: State,
    opened_by_prompt: bool,
    counts: ThinkingCounts,
    /// String end markers taken back under `min_tokens` so far.
    take_backs: usize,
}

/// Take-backs of a string end marker before the controller gives up on `min_tokens`: the
/// first bans one token, the second every token with the marker's first character, after
/// which the marker cannot be spelled (see `on_end_attempt`); the third is slack.
pub const MAX_TAKE_BACKS: usize = 3;

impl ThinkingController {
    /// Resolve the options against a vocabulary: markers become single tokens where the
    /// vocabulary has them, texts become ids. `prompt_ids` is checked for a start marker
    /// already opened by the chat template. `sampler_seed` seeds the random order unless
    /// the options carry their own seed.
    pub fn new(
        options: ThinkingOptions,
        codec: &dyn TextCodec,
        prompt_ids: &[u32],
        sampler_seed: u64,
    ) -> Result<Self, ThinkingError> {
        options.validate()?;
        let encode = |what, text: &str| codec.encode(text).map_err(|source| ThinkingError::Encode { what, source });
        let resolve = |what, text: &str| -> Result<(Marker, Vec<u32>), ThinkingError> {
            match codec.token_id(text) {
                Some(id) => Ok((Marker::Token(id), vec![id])),
                None => Ok((Marker::Text(text.to_string()), encode(what, text)?)),
            }
        };
        let (start, start_ids) = resolve("start marker", options.start_marker())?;
        let (end, end_ids) = resolve("end marker", options.end_marker())?;
        let wrap_up_ids = match &options.wrap_up {
            Some(t) => encode("wrap_up", t)?,
            None => Vec::new(),
        };
        let answer_prefix_ids = match &options.answer_prefix {
            Some(t) => encode("answer_prefix", t)?,
            None => Vec::new(),
        };
        let mut continuations = Vec::new();
        for text in &options.continuations {
            let ids = encode("continuation", text)?;
            if ids.is_empty() {
                return Err(ThinkingError::InvalidOption {
                    option: "continuations",
                    reason: format!("{text:?} encodes to no tokens"),
                });
            }
            continuations.push(Continuation { text: text.clone(), ids });
        }
        // A different stream from the sampler's even when the seeds are equal.
        let seed = options.seed.unwrap_or(sampler_seed ^ 0x7468_696E_6B69_6E67);
        let opened_by_prompt = prompt_opens(codec, prompt_ids, &start, &end);
        let mut controller = Self {
            start,
            end,
            start_ids,
            end_ids,
            wrap_up_ids,
            answer_prefix_ids,
            continuations,
            end_of_generation: codec.end_of_generation_ids(),
            rng: Rng::new(seed),
            next_continuation: 0,
            state: if opened_by_prompt { State::Thinking } else { State::BeforeThinking },
            opened_by_prompt,
            counts: ThinkingCounts::default(),
            take_backs: 0,
            options,
        };
        controller.draw_next_continuation();
        Ok(controller)
    }

    pub fn options(&self) -> &ThinkingOptions {
        &self.options
    }

    pub fn start_marker(&self) -> &Marker {
        &self.start
    }

    pub fn end_marker(&self) -> &Marker {
        &self.end
    }

    /// Whether the prompt's tail already opened thinking (R1-Distill and Qwen3 templates).
    pub fn opened_by_prompt(&self) -> bool {
        self.opened_by_prompt
    }

    pub fn counts(&self) -> ThinkingCounts {
        self.counts
    }

    /// The phase a token sampled now belongs to.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Thinking | State::Exiting { .. } => Phase::Thinking,
            State::BeforeThinking | State::Answer => Phase::Answer,
        }
    }

    /// The string marker the loop must look for in the text now (and hold back text that
    /// could be its beginning), if the marker it waits for is not a single token.
    pub fn watched_text(&self) -> Option<&str> {
        let marker = match self.state {
            State::BeforeThinking => &self.start,
            State::Thinking | State::Exiting { .. } => &self.end,
            State::Answer => return None,
        };
        match marker {
            Marker::Text(text) => Some(text),
            Marker::Token(_) => None,
        }
    }

    /// Could a string end marker sampled from now on be taken back and resampled (so the
    /// loop must keep recent logits)? Only under `min_tokens`; the marker's own tokens count
    /// as thinking until it completes, hence the allowance of its length.
    pub fn may_take_back_end(&self) -> bool {
        matches!(self.state, State::Thinking | State::Exiting { .. })
            && matches!(&self.end, Marker::Text(end) if self.counts.thinking_tokens < self.options.min_tokens + end.len())
    }

    /// The end marker's text when it is a string (not one vocabulary token).
    pub fn end_marker_text(&self) -> Option<&str> {
        match &self.end {
            Marker::Text(text) => Some(text),
            Marker::Token(_) => None,
        }
    }

    /// Thinking is open and under `min_tokens`: an end now would be early.
    pub fn under_min(&self) -> bool {
        matches!(self.state, State::Thinking | State::Exiting { .. }) && self.counts.thinking_tokens < self.options.min_tokens
    }

    /// String end markers taken back so far (the loop escalates its bans from the second).
    pub fn take_backs(&self) -> usize {
        self.take_backs
    }

    /// The fewest response tokens a generation needs to honour `min_tokens` when thinking is
    /// open from the start: the forced start marker (`open`), the minimum, the end marker.
    pub fn min_response_tokens(&self) -> usize {
        if self.options.min_tokens == 0 {
            return 0;
        }
        let start = match (self.opened_by_prompt, self.options.open) {
            (true, _) => 0,
            (false, true) => self.start_ids.len(),
            // Thinking may never open: nothing to honour up front.
            (false, false) => return 0,
        };
        start + self.options.min_tokens + self.end_ids.len()
    }

    /// Actions at the start of the response: announce thinking opened by the prompt, or
    /// open it with forced tokens when `open` is set.
    pub fn start(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.opened_by_prompt {
            actions.push(Action::Phase(Phase::Thinking));
        } else if self.options.open {
            actions.push(Action::Phase(Phase::Thinking));
            actions.push(Action::Force { ids: self.start_ids.clone(), phase: Phase::Thinking, marker: true });
            self.state = State::Thinking;
        }
        if self.state == State::Thinking {
            self.check_budget(&mut actions, "");
        }
        actions
    }

    pub fn before_sample(&self) -> BeforeSample {
        match self.state {
            State::Thinking | State::Exiting { .. } => {
                let t = self.counts.thinking_tokens;
                if t < self.options.min_tokens && !self.may_continue(t, true) {
                    BeforeSample::Sample { banned: self.end_ids_to_mask() }
                } else {
                    BeforeSample::Sample { banned: Vec::new() }
                }
            }
            State::Answer | State::BeforeThinking => {
                match self.options.answer_max_tokens {
                    Some(cap) if self.counts.answer_tokens >= cap => BeforeSample::Stop(StopReason::AnswerMaxTokens),
                    _ => BeforeSample::Sample { banned: Vec::new() },
                }
            }
        }
    }

    /// The ids that end thinking and can be masked: the end marker when it is one token, and
    /// every end-of-generation id (an EOS inside thinking is an attempt to end it).
    pub fn end_ids_to_mask(&self) -> Vec<u32> {
        let mut ids = self.end_of_generation.clone();
        if let Marker::Token(id) = self.end {
            ids.push(id);
        }
        ids
    }

    /// Decide about the sampled token `id`, whose decoded text is `piece`. `text_marker_hit`
    /// is `Some(n)` when the loop found the watched string marker completed by this token,
    /// `n` being how many already-kept tokens (at the end of the sequence) belong to it.
    pub fn after_sample(&mut self, id: u32, piece: &str, text_marker_hit: Option<usize>) -> Vec<Action> {
        let is_eog = self.end_of_generation.contains(&id);
        match self.state {
            State::BeforeThinking => {
                let opens = match &self.start {
                    Marker::Token(start) => (*start == id).then_some(0),
                    Marker::Text(_) => text_marker_hit,
                };
                if let Some(before) = opens {
                    // The marker's earlier tokens were counted as answer tokens when kept.
                    self.counts.answer_tokens -= before.min(self.counts.answer_tokens);
                    self.state = State::Thinking;
                    let mut actions =
                        vec![Action::Phase(Phase::Thinking), Action::Keep { phase: Phase::Thinking, marker: true }];
                    self.check_budget(&mut actions, "");
                    return actions;
                }
                if !is_eog {
                    self.counts.answer_tokens += 1;
                }
                vec![Action::Keep { phase: Phase::Answer, marker: false }]
            }
            State::Answer => {
                if !is_eog {
                    self.counts.answer_tokens += 1;
                }
                vec![Action::Keep { phase: Phase::Answer, marker: false }]
            }
            State::Thinking | State::Exiting { .. } => {
                let end_hit = match &self.end {
                    Marker::Token(end) => (*end == id).then_some(0),
                    Marker::Text(_) => text_marker_hit,
                };
                if end_hit.is_some() || is_eog {
                    return self.on_end_attempt(end_hit.unwrap_or(0), is_eog && end_hit.is_none());
                }
                self.counts.thinking_tokens += 1;
                let mut actions = vec![Action::Keep { phase: Phase::Thinking, marker: false }];
                if let State::Exiting { grace_left } = self.state {
                    let grace_left = grace_left.saturating_sub(1);
                    if grace_left == 0 || ends_sentence(piece) {
                        self.forced_exit(&mut actions);
                    } else {
                        self.state = State::Exiting { grace_left };
                    }
                } else {
                    self.check_budget(&mut actions, piece);
                }
                actions
            }
        }
    }

    /// The model tried to end thinking: with the end marker (whose first `before` tokens are
    /// already kept, for a string marker) or with end of generation (`eog`).
    fn on_end_attempt(&mut self, before: usize, eog: bool) -> Vec<Action> {
        // The marker's earlier tokens were counted as thinking tokens when they were kept.
        self.counts.thinking_tokens -= before.min(self.counts.thinking_tokens);
        let t = self.counts.thinking_tokens;
        let early = t < self.options.min_tokens;
        let ignored = self.counts.natural_ends < self.options.ignore_ends;
        self.counts.natural_ends += 1;
        let mut actions = Vec::new();
        if (early || ignored) && self.may_continue(t, early) {
            if before > 0 {
                actions.push(Action::Rollback { tokens: before });
            }
            let Continuation { text, ids } = self.continuations[self.next_continuation].clone();
            self.counts.continuations += 1;
            self.counts.thinking_tokens += ids.len();
            self.draw_next_continuation();
            actions.push(Action::Continuation { text, round: self.counts.continuations });
            actions.push(Action::Force { ids, phase: Phase::Thinking, marker: false });
            return actions;
        }
        if early && self.take_backs < MAX_TAKE_BACKS {
            // Only a string marker gets here (single-token ends are masked beforehand): take
            // it back and sample that position again without its first token. The loop
            // keeps that token banned while thinking is under `min_tokens`, and from the
            // second take-back on every token holding the marker's first character, so the
            // model cannot spell the marker in ever new ways (each try costs a forward).
            self.take_backs += 1;
            actions.push(Action::Rollback { tokens: before });
            actions.push(Action::Resample);
            return actions;
        }
        // Past MAX_TAKE_BACKS (a vocabulary that spells the marker without any token holding
        // its first character): accept the end rather than loop.

        // Accepted.
        if eog {
            // The engine closes thinking itself so that the user always gets an answer.
            actions.push(Action::Force { ids: self.end_ids.clone(), phase: Phase::Thinking, marker: true });
        } else {
            actions.push(Action::Keep { phase: Phase::Thinking, marker: true });
        }
        self.enter_answer(&mut actions);
        actions
    }

    /// May a continuation be inserted at `t` thinking tokens? `early`: the end came before
    /// `min_tokens` (then `on_early_end` decides; ignored ends always continue).
    fn may_continue(&self, t: usize, early: bool) -> bool {
        if early && self.options.on_early_end == EarlyEnd::Suppress {
            return false;
        }
        if self.continuations.is_empty() {
            return false;
        }
        if self.options.max_continuations.is_some_and(|cap| self.counts.continuations >= cap) {
            return false;
        }
        // The continuation must leave the model at least one token of its own under the cap,
        // else "Wait" would be followed at once by the forced exit.
        let len = self.continuations[self.next_continuation].ids.len();
        self.options.max_tokens.is_none_or(|max| t + len < max)
    }

    fn draw_next_continuation(&mut self) {
        let n = self.continuations.len();
        if n == 0 {
            return;
        }
        self.next_continuation = match self.options.continuation_order {
            ContinuationOrder::Cycle => self.counts.continuations % n,
            ContinuationOrder::Random => self.rng.below(n),
        };
    }

    /// After thinking grew: at the cap, announce it and exit now (no grace, or `piece`
    /// already ends a sentence) or enter the grace period.
    fn check_budget(&mut self, actions: &mut Vec<Action>, piece: &str) {
        let Some(max) = self.options.max_tokens else { return };
        if self.counts.thinking_tokens < max {
            return;
        }
        actions.push(Action::BudgetExhausted { thinking_tokens: self.counts.thinking_tokens });
        if self.options.grace_tokens == 0 || ends_sentence(piece) {
            self.forced_exit(actions);
        } else {
            self.state = State::Exiting { grace_left: self.options.grace_tokens };
        }
    }

    fn forced_exit(&mut self, actions: &mut Vec<Action>) {
        self.counts.forced_exit = true;
        if !self.wrap_up_ids.is_empty() {
            self.counts.thinking_tokens += self.wrap_up_ids.len();
            actions.push(Action::Force { ids: self.wrap_up_ids.clone(), phase: Phase::Thinking, marker: false });
        }
        actions.push(Action::Force { ids: self.end_ids.clone(), phase: Phase::Thinking, marker: true });
        self.enter_answer(actions);
    }

    fn enter_answer(&mut self, actions: &mut Vec<Action>) {
        self.state = State::Answer;
        actions.push(Action::Phase(Phase::Answer));
        if !self.answer_prefix_ids.is_empty() {
            self.counts.answer_tokens += self.answer_prefix_ids.len();
            actions.push(Action::Force { ids: self.answer_prefix_ids.clone(), phase: Phase::Answer, marker: false });
        }
    }
}

/// A natural place to cut: the piece ends a line or a sentence.
fn ends_sentence(piece: &str) -> bool {
    if piece.ends_with('\n') {
        return true;
    }
    piece.trim_end().ends_with(['.', '!', '?'])
}

/// Did the prompt's tail open thinking? The last start marker must come after the last end
/// marker and be followed by whitespace only (R1-Distill's template ends in "<think>\n").
fn prompt_opens(codec: &dyn TextCodec, prompt_ids: &[u32], start: &Marker, end: &Marker) -> bool {
    match (start, end) {
        (Marker::Token(start), end) => {
            let Some(pos) = prompt_ids.iter().rposition(|id| id == start) else { return false };
            let tail = &prompt_ids[pos + 1..];
            if let Marker::Token(end) = end {
                if tail.contains(end) {
                    return false;
                }
            }
            codec.decode(tail).trim().is_empty()
        }
        (Marker::Text(start), end) => {
            // Markers sit at the very end of a generation prompt; 64 tokens is ample context.
            let tail = &prompt_ids[prompt_ids.len().saturating_sub(64)..];
            let text = codec.decode(tail);
            let Some(pos) = text.rfind(start.as_str()) else { return false };
            let after = &text[pos + start.len()..];
            let end_after = match end {
                Marker::Text(end) => after.contains(end.as_str()),
                Marker::Token(_) => false,
            };
            !end_after && after.trim().is_empty()
        }
    }
}
