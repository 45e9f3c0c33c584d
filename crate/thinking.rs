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
//!
//! Beyond s1 (each an option of this same controller; see [`Preset`] for the sources):
//! - `suppress` (NoWait): words masked while thinking, in their case and leading-space forms.
//! - `confidence_exit` (DEER): at a trigger word the loop runs a *probe* — forced answer
//!   inducer, a short greedy trial, then a rollback out of the KV cache — and reports the
//!   trial's mean top-1 probability; above the threshold thinking ends there.
//! - `schedule` (AlphaOne): before α × `max_tokens`, a continuation after a paragraph break
//!   with a seeded, annealed probability; after it, a model-written continuation word ends
//!   thinking instead.

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, TextCodec};
use crate::sampler::{Rng, SamplerOptions};

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
#[serde(remote = "Self", default, deny_unknown_fields, rename_all = "snake_case")]
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
    /// Text forced before the end marker when the engine closes thinking (budget, confident
    /// probe, schedule). It is part of the budget: the exit starts `len(wrap_up)` tokens before
    /// `max_tokens`, and a wrap-up that cannot fit under `max_tokens + grace_tokens` is left out.
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
    /// Seed of the `random` continuation order and the schedule's draws; `None` = derived
    /// from the sampler's seed.
    pub seed: Option<u64>,
    /// The preset these options started from (informational: its values are already in the
    /// other fields, and any field given next to it overrides it).
    pub preset: Option<Preset>,
    /// Words masked while thinking (NoWait): every single-token form of each word (as
    /// written, lower case, capitalised, upper case; with and without a leading space).
    pub suppress: Vec<String>,
    pub confidence_exit: Option<ConfidenceExit>,
    pub schedule: Option<Schedule>,
    /// Sampling while thinking / while answering; fields left out keep the request's own.
    pub thinking_sampling: Option<PhaseSampling>,
    pub answer_sampling: Option<PhaseSampling>,
    /// End of generation is masked in the answer until it holds this many answer tokens (an
    /// answer prefix included): small models often end their turn right after `</think>`.
    pub answer_min_tokens: usize,
}

/// DEER (Yang et al. 2025, arXiv 2504.15895): probe for a confident early answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct ConfidenceExit {
    /// The answer inducer forced at a trigger (DEER's `\n**Final Answer**\n\boxed`).
    pub probe: String,
    /// Greedy trial tokens after the probe, at most (the trial also ends at end of
    /// generation or at its first newline).
    pub max_probe_tokens: usize,
    /// Mean top-1 probability of the trial tokens at or above which thinking ends.
    pub threshold: f64,
    /// Sampled thinking tokens that trigger a probe: a token whose text, trimmed, equals a
    /// word trigger ("Wait"), or that ends with a whitespace trigger ("\n\n", a paragraph
    /// break, for models that never write "Wait").
    pub triggers: Vec<String>,
}

impl Default for ConfidenceExit {
    fn default() -> Self {
        Self {
            probe: "\n**Final Answer**\n\\boxed".to_string(),
            max_probe_tokens: 8,
            threshold: 0.95,
            triggers: vec![DEFAULT_CONTINUATION.to_string()],
        }
    }
}

/// AlphaOne (Zhang et al. 2025, arXiv 2505.24863): scheduled slow thinking, then a fast exit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct Schedule {
    /// The α moment as a fraction of `max_tokens` (which must be set). AlphaOne scales the
    /// model's own average thinking length by α ≈ 1.4; a budgeted request has no such
    /// average, so the budget stands in and α ≤ 1.
    pub alpha: f64,
    /// Probability of a continuation after a paragraph break at the start of thinking.
    pub probability: f64,
    /// How the probability changes up to the α moment.
    pub anneal: Anneal,
}

impl Default for Schedule {
    fn default() -> Self {
        Self { alpha: 0.6, probability: 0.5, anneal: Anneal::Linear }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anneal {
    Constant,
    /// From `probability` at 0 thinking tokens down to 0 at the α moment (AlphaOne's best).
    #[default]
    Linear,
}

/// Per-phase overrides of the request's sampler.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct PhaseSampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
}

impl PhaseSampling {
    /// `base` with these overrides.
    pub fn apply(&self, base: &SamplerOptions) -> SamplerOptions {
        SamplerOptions {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_p: self.top_p.unwrap_or(base.top_p),
            top_k: self.top_k.unwrap_or(base.top_k),
            min_p: self.min_p.unwrap_or(base.min_p),
            ..base.clone()
        }
    }
}

/// Named starting points; any field given next to `preset` overrides the preset's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// s1 budget forcing (arXiv 2501.19393): "Wait" replaces an early end, the cap forces the
    /// end marker. The default options.
    S1,
    /// Qwen3's technical report (arXiv 2505.09388 §4.3): at the budget, the model is told to
    /// answer now; no floor.
    Qwen3,
    /// NoWait (arXiv 2506.08343): reflection words masked while thinking; no floor.
    Nowait,
    /// DEER (arXiv 2504.15895): confident early exit probed at each "Wait".
    Deer,
    /// AlphaOne (arXiv 2505.24863): "Wait" after paragraph breaks before α, "Wait" ends
    /// thinking after it.
    Alphaone,
}

/// NoWait's keyword list (arXiv 2506.08343, §3): reflection and self-verification words.
pub const NOWAIT_WORDS: &[&str] = &[
    "wait", "alternatively", "hmm", "but", "however", "alternative", "another", "check", "double-check", "oh",
    "maybe", "verify", "other", "again", "now", "ah", "any",
];

/// Qwen3's forced exit text (technical report §4.3, "thinking budget").
pub const QWEN3_WRAP_UP: &str =
    "Considering the limited time by the user, I have to give the solution based on the thinking directly now.\n";

impl Preset {
    pub fn options(self) -> ThinkingOptions {
        let d = ThinkingOptions { preset: Some(self), ..ThinkingOptions::default() };
        match self {
            Preset::S1 => d,
            Preset::Qwen3 => ThinkingOptions {
                continuations: Vec::new(),
                wrap_up: Some(QWEN3_WRAP_UP.to_string()),
                answer_prefix: Some(".\n\n".to_string()),
                ..d
            },
            Preset::Nowait => ThinkingOptions {
                continuations: Vec::new(),
                suppress: NOWAIT_WORDS.iter().map(|w| w.to_string()).collect(),
                ..d
            },
            Preset::Deer => ThinkingOptions { confidence_exit: Some(ConfidenceExit::default()), ..d },
            Preset::Alphaone => ThinkingOptions { schedule: Some(Schedule::default()), ..d },
        }
    }

    pub const ALL: [Preset; 5] = [Preset::S1, Preset::Qwen3, Preset::Nowait, Preset::Deer, Preset::Alphaone];

    pub fn name(self) -> &'static str {
        match self {
            Preset::S1 => "s1",
            Preset::Qwen3 => "qwen3",
            Preset::Nowait => "nowait",
            Preset::Deer => "deer",
            Preset::Alphaone => "alphaone",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
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
            preset: None,
            suppress: Vec::new(),
            confidence_exit: None,
            schedule: None,
            thinking_sampling: None,
            answer_sampling: None,
            answer_min_tokens: 0,
        }
    }
}

/// Options deserialize with their preset underneath: `{"preset": "deer", "max_tokens": 64}`
/// is the DEER preset with `max_tokens` 64. The fields themselves (`remote = "Self"` below)
/// are read as usual, unknown ones refused.
impl<'de> Deserialize<'de> for ThinkingOptions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        if let Some(name) = fields.get("preset").filter(|v| !v.is_null()) {
            let preset: Preset = serde_json::from_value(name.clone()).map_err(D::Error::custom)?;
            let serde_json::Value::Object(mut base) =
                serde_json::to_value(preset.options()).map_err(D::Error::custom)?
            else {
                return Err(D::Error::custom("a preset serializes to an object"));
            };
            base.extend(fields);
            fields = base;
        }
        ThinkingOptions::deserialize(serde_json::Value::Object(fields)).map_err(D::Error::custom)
    }
}

impl Serialize for ThinkingOptions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ThinkingOptions::serialize(self, serializer)
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
        if self.suppress.iter().any(|w| w.trim().is_empty()) {
            return bad("suppress", "a word is empty or only whitespace".into());
        }
        if let Some(c) = &self.confidence_exit {
            if c.probe.is_empty() {
                return bad("confidence_exit.probe", "is empty".into());
            }
            if c.max_probe_tokens == 0 {
                return bad("confidence_exit.max_probe_tokens", "must be at least 1".into());
            }
            if !(c.threshold > 0.0 && c.threshold <= 1.0) {
                return bad("confidence_exit.threshold", format!("{} is not in (0, 1]", c.threshold));
            }
            if c.triggers.is_empty() || c.triggers.iter().any(|w| w.is_empty()) {
                return bad("confidence_exit.triggers", "needs at least one non-empty trigger".into());
            }
        }
        if let Some(s) = &self.schedule {
            if self.max_tokens.is_none() {
                return bad("schedule", "needs max_tokens (the α moment is a fraction of it)".into());
            }
            if !(s.alpha >= 0.0 && s.alpha <= 1.0) {
                return bad("schedule.alpha", format!("{} is not in [0, 1]", s.alpha));
            }
            if !(0.0..=1.0).contains(&s.probability) {
                return bad("schedule.probability", format!("{} is not in [0, 1]", s.probability));
            }
            if self.continuations.is_empty() {
                return bad("schedule", "needs a continuation to insert and to recognise".into());
            }
        }
        for (option, phase) in [("thinking_sampling", &self.thinking_sampling), ("answer_sampling", &self.answer_sampling)] {
            if let Some(p) = phase {
                p.apply(&SamplerOptions::default())
                    .validate()
                    .map_err(|e| ThinkingError::InvalidOption { option, reason: e.to_string() })?;
            }
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
    /// Instead of keeping the sampled token (a trigger), run a probe: force `ids` after the
    /// transcript, decode a greedy trial of at most `max_tokens`, roll both back out of the
    /// KV cache, and hand the trial's mean top-1 probability to
    /// [`ThinkingController::after_probe`], whose actions then apply to the sampled token.
    /// Only ever the sole action of a list.
    Probe { ids: Vec<u32>, max_tokens: usize },
    /// Thinking ends before the budget: a confident probe, or a continuation word after α.
    EarlyExit { reason: ExitReason, thinking_tokens: usize },
    /// Stop generating.
    Stop(StopReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// DEER: the probe's trial answer was confident enough.
    Confidence,
    /// AlphaOne: a continuation word written after the α moment.
    Schedule,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    AnswerMaxTokens,
}

/// What to do before sampling.
#[derive(Clone, Debug, PartialEq)]
pub enum BeforeSample {
    /// Sample with these ids banned: `banned` ends (of thinking under `min_tokens`, of the
    /// answer under `answer_min_tokens`), `suppressed` words (NoWait).
    Sample { banned: Vec<u32>, suppressed: Vec<u32> },
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
    /// `BudgetExhausted` has been sent.
    budget_announced: bool,
    /// Every single-token form of the `suppress` words, sorted.
    suppressed: Vec<u32>,
    /// The confidence probe's ids.
    probe_ids: Vec<u32>,
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
        let mut suppressed = Vec::new();
        for word in &options.suppress {
            suppressed.extend(single_token_forms(codec, word));
        }
        suppressed.sort_unstable();
        suppressed.dedup();
        let probe_ids = match &options.confidence_exit {
            Some(c) => encode("confidence_exit.probe", &c.probe)?,
            None => Vec::new(),
        };
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
            budget_announced: false,
            suppressed,
            probe_ids,
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
                let banned = if t < self.options.min_tokens && !self.may_continue(t, true) {
                    self.end_ids_to_mask()
                } else {
                    Vec::new()
                };
                BeforeSample::Sample { banned, suppressed: self.suppressed.clone() }
            }
            State::Answer | State::BeforeThinking => {
                let answer = self.counts.answer_tokens;
                match self.options.answer_max_tokens {
                    Some(cap) if answer >= cap => BeforeSample::Stop(StopReason::AnswerMaxTokens),
                    _ if answer < self.options.answer_min_tokens => {
                        BeforeSample::Sample { banned: self.end_of_generation.clone(), suppressed: Vec::new() }
                    }
                    _ => BeforeSample::Sample { banned: Vec::new(), suppressed: Vec::new() },
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
                if self.state == State::Thinking && self.counts.thinking_tokens >= self.options.min_tokens {
                    if let Some(c) = &self.options.confidence_exit {
                        if c.triggers.iter().any(|w| is_trigger(w, piece)) {
                            return vec![Action::Probe { ids: self.probe_ids.clone(), max_tokens: c.max_probe_tokens }];
                        }
                    }
                    if self.past_alpha() && self.continuations.iter().any(|c| c.text.trim() == piece.trim()) {
                        // AlphaOne's fast thinking: the model's own "Wait" becomes the end.
                        let mut actions = vec![Action::EarlyExit {
                            reason: ExitReason::Schedule,
                            thinking_tokens: self.counts.thinking_tokens,
                        }];
                        self.close_thinking(&mut actions);
                        return actions;
                    }
                }
                self.keep_thinking(piece)
            }
        }
    }

    /// The probe asked for by [`Action::Probe`] ran: `confidence` is its trial's mean top-1
    /// probability, or `None` when the loop could not run it (no room in the context, text
    /// held back as a possible marker). The actions apply to the trigger token.
    pub fn after_probe(&mut self, confidence: Option<f64>, piece: &str) -> Vec<Action> {
        let threshold = self.options.confidence_exit.as_ref().map_or(f64::INFINITY, |c| c.threshold);
        if confidence.is_some_and(|c| c >= threshold) {
            // DEER replaces the trigger by the answer: it is dropped.
            let mut actions =
                vec![Action::EarlyExit { reason: ExitReason::Confidence, thinking_tokens: self.counts.thinking_tokens }];
            self.close_thinking(&mut actions);
            return actions;
        }
        self.keep_thinking(piece)
    }

    /// Keep a sampled thinking token, then: the grace period, the budget, or a scheduled
    /// continuation after a paragraph break.
    fn keep_thinking(&mut self, piece: &str) -> Vec<Action> {
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
            if self.state == State::Thinking {
                self.maybe_schedule_continuation(&mut actions, piece);
            }
        }
        actions
    }

    /// Thinking tokens at which AlphaOne's α moment falls (`None` without a schedule).
    fn alpha_moment(&self) -> Option<f64> {
        let schedule = self.options.schedule.as_ref()?;
        Some(schedule.alpha * self.options.max_tokens? as f64)
    }

    fn past_alpha(&self) -> bool {
        self.alpha_moment().is_some_and(|at| self.counts.thinking_tokens as f64 >= at)
    }

    /// AlphaOne's slow thinking: before α, a paragraph break is followed by a continuation
    /// with the scheduled probability (one seeded draw per paragraph break).
    fn maybe_schedule_continuation(&mut self, actions: &mut Vec<Action>, piece: &str) {
        let (Some(schedule), Some(alpha_at)) = (self.options.schedule.as_ref(), self.alpha_moment()) else { return };
        let t = self.counts.thinking_tokens;
        if !piece.ends_with("\n\n") || t as f64 >= alpha_at {
            return;
        }
        let p = match schedule.anneal {
            Anneal::Constant => schedule.probability,
            Anneal::Linear => schedule.probability * (1.0 - t as f64 / alpha_at),
        };
        if self.rng.uniform() >= p || !self.may_continue(t, false) {
            return;
        }
        let Continuation { text, ids } = self.continuations[self.next_continuation].clone();
        self.counts.continuations += 1;
        self.counts.thinking_tokens += ids.len();
        self.draw_next_continuation();
        actions.push(Action::Continuation { text, round: self.counts.continuations });
        actions.push(Action::Force { ids, phase: Phase::Thinking, marker: false });
    }

    /// The model tried to end thinking: with the end marker (whose first `before` tokens are
    /// already kept, for a string marker) or with end of generation (`eog`).
    fn on_end_attempt(&mut self, before: usize, eog: bool) -> Vec<Action> {
        // The marker's earlier tokens were counted as thinking tokens when they were kept.
        self.counts.thinking_tokens -= before.min(self.counts.thinking_tokens);
        let t = self.counts.thinking_tokens;
        // Those tokens may be what reached the budget: without them the exit is no longer due
        // (else a grace period could close thinking under `min_tokens`).
        if matches!(self.state, State::Exiting { .. }) && self.exit_at().is_some_and(|at| t < at) {
            self.state = State::Thinking;
        }
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
        self.exit_at().is_none_or(|exit_at| t + len < exit_at)
    }

    /// Thinking tokens at which the budget is spent: the wrap-up is part of the budget, so the
    /// exit starts early enough for it to end at `max_tokens` (Qwen3's long wrap-up would
    /// otherwise overshoot every budget). A wrap-up longer than the whole budget is left out.
    fn exit_at(&self) -> Option<usize> {
        let max = self.options.max_tokens?;
        Some(max.checked_sub(self.wrap_up_ids.len()).unwrap_or(max))
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
        let Some(exit_at) = self.exit_at() else { return };
        if self.counts.thinking_tokens < exit_at {
            return;
        }
        // Announced once per response, even when a taken-back marker made the exit wait.
        if !self.budget_announced {
            self.budget_announced = true;
            actions.push(Action::BudgetExhausted { thinking_tokens: self.counts.thinking_tokens });
        }
        if self.options.grace_tokens == 0 || ends_sentence(piece) {
            self.forced_exit(actions);
        } else {
            self.state = State::Exiting { grace_left: self.options.grace_tokens };
        }
    }

    fn forced_exit(&mut self, actions: &mut Vec<Action>) {
        self.counts.forced_exit = true;
        self.close_thinking(actions);
    }

    /// Wrap-up, end marker, answer (prefix).
    fn close_thinking(&mut self, actions: &mut Vec<Action>) {
        let limit = self.options.max_tokens.map(|max| max + self.options.grace_tokens);
        let fits = limit.is_none_or(|limit| self.counts.thinking_tokens + self.wrap_up_ids.len() <= limit);
        if !self.wrap_up_ids.is_empty() && fits {
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

/// The ids of `word`'s single-token forms: as written, lower case, capitalised, upper case,
/// each with and without a leading space (how BPE vocabularies hold a word mid-sentence).
fn single_token_forms(codec: &dyn TextCodec, word: &str) -> Vec<u32> {
    let word = word.trim();
    let lower = word.to_lowercase();
    let mut capitalised: String = lower.chars().take(1).flat_map(char::to_uppercase).collect();
    capitalised.extend(lower.chars().skip(1));
    let mut ids = Vec::new();
    for form in [word.to_string(), lower.clone(), capitalised, word.to_uppercase()] {
        for text in [form.clone(), format!(" {form}")] {
            if let Ok([id]) = codec.encode(&text).as_deref() {
                ids.push(*id);
            }
        }
    }
    ids
}

/// Does the sampled `piece` fire `trigger` (see [`ConfidenceExit::triggers`])?
fn is_trigger(trigger: &str, piece: &str) -> bool {
    if trigger.trim().is_empty() {
        piece.ends_with(trigger)
    } else {
        piece.trim() == trigger.trim()
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
