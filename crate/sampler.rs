//! Choosing the next token from logits: greedy, or seeded sampling with temperature,
//! top-k, top-p, min-p, a repetition penalty and per-token logit biases; and the
//! log-probabilities a caller may ask for with each chosen token.
//!
//! Two promises shape this file:
//! - **Same seed → same tokens on every platform** (native and wasm32). The PRNG is integer
//!   arithmetic only (SplitMix64), the uniform comes from its top 53 bits, and the
//!   probabilities are computed in f64 from the f32 logits.
//! - **Exactly one uniform per sampling step**, drawn before anything else, greedy included.
//!   The RNG stream position therefore depends only on the step count, so a GPU backend can
//!   later sample on the device with the very number the CPU would have used
//!   ([`sample_with_uniform`] is the pure function of that number).
//!
//! The order follows llama.cpp's default chain (`common/common.h`: penalties, top_k, top_p,
//! min_p, temperature, dist): the truncations see the temperature-1 distribution and the
//! temperature only reshapes what survives them. The same options thus keep the same
//! candidate set as llama.cpp whatever the temperature.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error("sampler option {option} = {value}: {expected}")]
    InvalidOption { option: &'static str, value: String, expected: &'static str },
    #[error("no token can be chosen: every logit is banned, -inf or NaN")]
    NoCandidates,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct SamplerOptions {
    /// 0 = greedy (argmax, ties to the lowest id); otherwise the softmax temperature.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability sums to >= top_p; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one; 0 = off.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this
    /// (llama.cpp / CTRL paper semantics); 1 = off.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens (prompt included) the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
    /// Added to a token's logit before anything else (OpenAI's `logit_bias`, in
    /// [-LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT]; -100 in practice bans, +100 forces). In JSON an
    /// object whose keys are token ids: `{"1234": -100}`.
    pub logit_bias: BTreeMap<u32, f32>,
}

/// OpenAI's bound on a logit bias.
pub const LOGIT_BIAS_LIMIT: f32 = 100.0;

impl Default for SamplerOptions {
    /// llama.cpp's defaults, with a fixed seed so that runs are reproducible by default.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            logit_bias: BTreeMap::new(),
        }
    }
}

impl SamplerOptions {
    /// Argmax decoding with no penalty.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, repeat_penalty: 1.0, ..Self::default() }
    }

    /// Whether the choice is the plain argmax of the logits (no temperature, no penalty, no
    /// bias).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && (self.repeat_penalty == 1.0 || self.repeat_last_n == 0) && self.logit_bias.is_empty()
    }

    pub fn validate(&self) -> Result<(), SamplerError> {
        let bad = |option, value: f32, expected| {
            Err(SamplerError::InvalidOption { option, value: value.to_string(), expected })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "must be in (0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return bad("min_p", self.min_p, "must be in [0, 1)");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty", self.repeat_penalty, "must be a finite number > 0");
        }
        for &bias in self.logit_bias.values() {
            if !(bias.is_finite() && bias.abs() <= LOGIT_BIAS_LIMIT) {
                return bad("logit_bias", bias, "each bias must be a number in [-100, 100]");
            }
        }
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): a 64-bit counter through an integer mixer. Tiny,
/// passes BigCrush, and identical on every platform because it is integer-only.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits, exactly representable in an f64.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in 0..n (n > 0). The modulo bias is below 2^-40 for any n we use.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A validated [`SamplerOptions`] plus its PRNG.
#[derive(Clone, Debug)]
pub struct Sampler {
    options: SamplerOptions,
    rng: Rng,
    /// Uniforms drawn so far (= sampling steps taken).
    draws: u64,
}

impl Sampler {
    pub fn new(options: SamplerOptions) -> Result<Self, SamplerError> {
        options.validate()?;
        let rng = Rng::new(options.seed);
        Ok(Self { options, rng, draws: 0 })
    }

    pub fn options(&self) -> &SamplerOptions {
        &self.options
    }

    /// Whether the choice is the plain argmax of the logits (no temperature, no penalty), so
    /// a backend may take it without handing the logits over.
    pub fn is_greedy(&self) -> bool {
        self.options.is_greedy()
    }

    /// Sampling steps taken (uniforms drawn).
    pub fn draws(&self) -> u64 {
        self.draws
    }

    /// The uniform for the next step. [`Sampler::sample`] calls this exactly once; a backend
    /// that samples elsewhere (GPU) calls it instead, once per step, to stay in sync.
    pub fn next_uniform(&mut self) -> f64 {
        self.draws += 1;
        self.rng.uniform()
    }

    /// The uniform the next [`Sampler::next_uniform`] will return, without drawing it.
    pub fn peek_uniform(&self) -> f64 {
        self.rng.clone().uniform()
    }

    /// Choose the next token. `logits`: (vocab,) f32. `history`: every token id so far
    /// (prompt included), for the repetition penalty. `banned`: ids that must not be chosen
    /// (they get -inf before anything else, e.g. an end-of-thinking marker under budget).
    pub fn sample(&mut self, logits: &[f32], history: &[u32], banned: &[u32]) -> Result<u32, SamplerError> {
        let u = self.next_uniform();
        sample_with_uniform(&self.options, logits, history, banned, u)
    }
}

/// The whole sampling chain as a pure function of the logits and one uniform `u` in [0, 1).
pub fn sample_with_uniform(
    options: &SamplerOptions,
    logits: &[f32],
    history: &[u32],
    banned: &[u32],
    u: f64,
) -> Result<u32, SamplerError> {
    // Candidates (id, logit): banned ids and non-finite logits never enter.
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|&(id, l)| l.is_finite() && !banned.contains(&(id as u32)))
        .map(|(id, &l)| (id as u32, l + options.logit_bias.get(&(id as u32)).copied().unwrap_or(0.0)))
        .collect();
    if candidates.is_empty() {
        return Err(SamplerError::NoCandidates);
    }
    apply_repeat_penalty(options, &mut candidates, history);

    if options.temperature == 0.0 {
        return Ok(argmax(&candidates));
    }

    // Most likely first; equal logits in id order, so that truncation is deterministic.
    let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if options.top_k > 0 && options.top_k < candidates.len() {
        // Partial selection first: sorting 150k logits every step would dominate small models.
        candidates.select_nth_unstable_by(options.top_k - 1, by_logit_desc);
        candidates.truncate(options.top_k);
    }
    candidates.sort_unstable_by(by_logit_desc);

    // Temperature-1 probabilities for top-p and min-p (llama.cpp's order).
    let max_logit = candidates[0].1 as f64;
    let weights: Vec<f64> = candidates.iter().map(|&(_, l)| (l as f64 - max_logit).exp()).collect();
    let total: f64 = weights.iter().sum();

    let mut keep = candidates.len();
    if options.top_p < 1.0 {
        let mut cumulative = 0.0;
        for (i, w) in weights.iter().enumerate() {
            cumulative += w / total;
            if cumulative >= options.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    if options.min_p > 0.0 {
        // weights[0] = 1 is the most likely token, so the threshold is min_p itself.
        let survivors = weights[..keep].iter().take_while(|&&w| w >= options.min_p as f64).count();
        keep = survivors.max(1);
    }
    candidates.truncate(keep);

    // Temperature, then one draw along the cumulative distribution.
    let inv_t = 1.0 / options.temperature as f64;
    let scaled: Vec<f64> = candidates.iter().map(|&(_, l)| ((l as f64 - max_logit) * inv_t).exp()).collect();
    let target = u * scaled.iter().sum::<f64>();
    let mut cumulative = 0.0;
    for (&(id, _), w) in candidates.iter().zip(&scaled) {
        cumulative += w;
        if target < cumulative {
            return Ok(id);
        }
    }
    // Rounding can leave `target` a hair above the final sum: the last candidate owns it.
    Ok(candidates[candidates.len() - 1].0)
}

/// Highest logit; ties go to the lowest id so that greedy decoding is reproducible.
fn argmax(candidates: &[(u32, f32)]) -> u32 {
    let mut best = candidates[0];
    for &c in &candidates[1..] {
        if c.1 > best.1 || (c.1 == best.1 && c.0 < best.0) {
            best = c;
        }
    }
    best.0
}

/// The ids the repeat penalty applies to: each distinct id among the last `repeat_last_n`
/// of `history`, ascending (empty when the penalty is off). A backend that samples on its
/// device penalizes exactly these.
pub fn penalized_ids(options: &SamplerOptions, history: &[u32]) -> Vec<u32> {
    if options.repeat_penalty == 1.0 || options.repeat_last_n == 0 || history.is_empty() {
        return Vec::new();
    }
    let mut seen = history[history.len().saturating_sub(options.repeat_last_n)..].to_vec();
    seen.sort_unstable();
    seen.dedup();
    seen
}

/// llama.cpp's repeat penalty: each distinct id among the last `repeat_last_n` tokens once.
fn apply_repeat_penalty(options: &SamplerOptions, candidates: &mut [(u32, f32)], history: &[u32]) {
    let seen = penalized_ids(options, history);
    if seen.is_empty() {
        return;
    }
    for c in candidates.iter_mut() {
        if seen.binary_search(&c.0).is_ok() {
            c.1 = if c.1 > 0.0 { c.1 / options.repeat_penalty } else { c.1 * options.repeat_penalty };
        }
    }
}

/// One alternative at a sampled position.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopLogprob {
    pub id: u32,
    pub logprob: f64,
}

/// What a caller asked to know about each sampled token (OpenAI's `logprobs` /
/// `top_logprobs`).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f64,
    /// The `top` most likely ids, most likely first (equal ones in id order).
    pub top: Vec<TopLogprob>,
}

/// Most alternatives `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Log-probabilities of the distribution the truncations start from: the logits plus
/// `logit_bias`, banned ids excluded, temperature 1, before the repetition penalty, top-k/p
/// and min-p (as vLLM reports them by default: what the model thinks, not the sampler's
/// reshaped draw). A log-softmax in f64. `logits`: (vocab,) f32. `None` when no token is
/// possible.
pub fn token_logprobs(options: &SamplerOptions, logits: &[f32], banned: &[u32], id: u32, top: usize) -> Option<TokenLogprobs> {
    let biased = |i: usize| {
        let l = *logits.get(i)?;
        if !l.is_finite() || banned.contains(&(i as u32)) {
            return None;
        }
        Some(l as f64 + options.logit_bias.get(&(i as u32)).copied().unwrap_or(0.0) as f64)
    };
    let max = (0..logits.len()).filter_map(biased).fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return None;
    }
    let log_sum = (0..logits.len()).filter_map(biased).map(|l| (l - max).exp()).sum::<f64>().ln() + max;
    let logprob = biased(id as usize).map_or(f64::NEG_INFINITY, |l| l - log_sum);
    let mut best: Vec<TopLogprob> = Vec::with_capacity(top + 1);
    if top > 0 {
        for i in 0..logits.len() {
            let Some(l) = biased(i) else { continue };
            // Kept sorted descending; a later equal logit has a higher id and goes after.
            if best.len() == top && best[top - 1].logprob >= l - log_sum {
                continue;
            }
            let at = best.partition_point(|b| b.logprob >= l - log_sum);
            best.insert(at, TopLogprob { id: i as u32, logprob: l - log_sum });
            best.truncate(top);
        }
    }
    Some(TokenLogprobs { logprob, top: best })
}
