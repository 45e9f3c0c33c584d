//! `pensive eval`: thinking policies × budgets on a problem set written for the project, with
//! s1's metrics (Muennighoff et al. 2025, arXiv 2501.19393 §3.2).
//!
//! - **Problems**: seeded arithmetic and word problems with integer answers, generated here
//!   (no data set to download, none to leak into training data).
//! - **Answers**: the last `\boxed{…}` of the answer text, else its last integer.
//! - **Metrics** per policy, over its budgets A: *Control* = share of runs whose thinking
//!   tokens stay within the budget; *Scaling* = mean over budget pairs a < b of the slope
//!   (accuracy_b − accuracy_a) / (thinking_b − thinking_a), here in accuracy points per 1000
//!   mean thinking tokens (pairs with equal thinking are skipped); *Performance* = the best
//!   accuracy. Plus mean thinking tokens, tokens re-prefilled and wall time.
//!
//! *Re-prefilled tokens* are what a server harness pays on every continuation (s1 re-sends
//! prompt + thinking so far to vLLM): here `processed − (prompt − cached) − sampled − forced −
//! probe`, zero by construction because forced text and probes extend (or roll back) the one
//! KV cache. It is computed from the stats, not assumed.

use serde::{Deserialize, Serialize};

use crate::chat::Message;
use crate::engine::{Engine, EngineError, GenerateRequest, Prompt};
use crate::generate::{Event, Stats};
use crate::sampler::Rng;
use crate::thinking::{Phase, Preset, ThinkingOptions};

// ----------------------------------------------------------------------------
// Problems

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub id: usize,
    pub question: String,
    pub answer: i64,
}

const NAMES: &[&str] = &["Ada", "Ben", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana"];

/// `n` problems from `seed`: six kinds in turn, numbers drawn so every answer is a positive
/// integer (or zero for a remainder). The same seed gives the same problems on every platform
/// (integer-only PRNG).
pub fn problems(seed: u64, n: usize) -> Vec<Problem> {
    let mut rng = Rng::new(seed);
    let mut between = |lo: i64, hi: i64| lo + rng.below((hi - lo + 1) as usize) as i64;
    (0..n)
        .map(|id| {
            let name = NAMES[between(0, NAMES.len() as i64 - 1) as usize];
            let (question, answer) = match id % 6 {
                0 => {
                    let (a, b, c) = (between(2, 60), between(2, 12), between(2, 12));
                    (format!("What is {a} + {b} * {c}?"), a + b * c)
                }
                1 => {
                    let (b, c) = (between(2, 30), between(2, 9));
                    let a = b + between(1, 30);
                    (format!("What is ({a} - {b}) * {c}?"), (a - b) * c)
                }
                2 => {
                    let (boxes, each) = (between(2, 9), between(3, 15));
                    let given = between(1, boxes * each - 1);
                    (
                        format!(
                            "{name} has {boxes} boxes with {each} pencils in each box and gives away {given} pencils. \
                             How many pencils does {name} have left?"
                        ),
                        boxes * each - given,
                    )
                }
                3 => {
                    let (speed, hours) = (between(20, 90), between(2, 6));
                    (format!("A train travels {speed} km every hour for {hours} hours. How many km does it travel?"), speed * hours)
                }
                4 => {
                    let (count, price) = (between(2, 9), between(2, 12));
                    let paid = (count * price / 10 + 1 + between(0, 3)) * 10;
                    (
                        format!(
                            "{name} buys {count} notebooks at {price} dollars each and pays with {paid} dollars. \
                             How many dollars of change does {name} get?"
                        ),
                        paid - count * price,
                    )
                }
                _ => {
                    let (per_day, days) = (between(5, 40), between(3, 12));
                    (
                        format!("{name} reads {per_day} pages a day. How many days does a book of {} pages take?", per_day * days),
                        days,
                    )
                }
            };
            Problem { id, question, answer }
        })
        .collect()
}

/// The answer in `text`: the integer in the last `\boxed{…}`, else the last integer
/// (thousands separators allowed, a minus sign right before the digits kept).
pub fn extract_answer(text: &str) -> Option<i64> {
    if let Some(at) = text.rfind("\\boxed{") {
        let inner = &text[at + "\\boxed{".len()..];
        let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
        if let Some(n) = last_integer(inner) {
            return Some(n);
        }
    }
    last_integer(text)
}

fn last_integer(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let mut end = bytes.len();
    // The last digit, then back over digits and separators between digits.
    while end > 0 && !bytes[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0
        && (bytes[start - 1].is_ascii_digit()
            || (bytes[start - 1] == b',' && start >= 2 && bytes[start - 2].is_ascii_digit()))
    {
        start -= 1;
    }
    let digits: String = text[start..end].chars().filter(char::is_ascii_digit).collect();
    let value: i64 = digits.parse().ok()?;
    Some(if start > 0 && bytes[start - 1] == b'-' { -value } else { value })
}

// ----------------------------------------------------------------------------
// One run

/// What the eval asks each model (and how it reads the reply). No placeholder such as
/// `\boxed{N}`: small models copy it literally.
pub const SYSTEM_PROMPT: &str =
    "Think step by step between <think> and </think>, then give only the final answer: one integer inside \\boxed{}.";

/// Thinking options every policy gets unless a sweep says otherwise: thinking opened for
/// templates that do not open it, and every answer started with s1's "Final Answer:" and a
/// `\boxed{`, so that a small model answers at once.
pub const DEFAULT_THINKING: &str = r#"{"open": true, "answer_prefix": "\nFinal Answer: \\boxed{", "answer_max_tokens": 16}"#;

type Fields = serde_json::Map<String, serde_json::Value>;

/// A policy of a sweep: its label and its own thinking fields (a `preset` among them, if
/// wanted). Written as a preset's name, or as `{"label": …, "thinking": {…}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PolicySpec", into = "PolicySpec")]
pub struct Policy {
    pub label: String,
    pub fields: Fields,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum PolicySpec {
    Preset(String),
    Labelled { label: String, thinking: Fields },
}

impl Policy {
    /// A preset by name (`s1`, `qwen3`, `nowait`, `deer`, `alphaone`).
    pub fn preset(name: &str) -> Result<Policy, EngineError> {
        let preset = Preset::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            EngineError::InvalidOptions(format!("unknown policy {name:?} ({})", names.join(", ")))
        })?;
        let mut fields = Fields::new();
        fields.insert("preset".into(), preset.name().into());
        Ok(Policy { label: preset.name().to_string(), fields })
    }
}

impl TryFrom<PolicySpec> for Policy {
    type Error = EngineError;
    fn try_from(spec: PolicySpec) -> Result<Policy, EngineError> {
        match spec {
            PolicySpec::Preset(name) => Policy::preset(&name),
            PolicySpec::Labelled { label, thinking } => Ok(Policy { label, fields: thinking }),
        }
    }
}

impl From<Policy> for PolicySpec {
    fn from(p: Policy) -> PolicySpec {
        PolicySpec::Labelled { label: p.label, thinking: p.fields }
    }
}

/// What a sweep runs: every policy × budget × problem (the generator's first `problems`).
/// The CLI's `pensive eval` flags and the demo's sweep panel both come down to this.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sweep {
    pub seed: u64,
    pub problems: usize,
    pub policies: Vec<Policy>,
    /// Thinking budgets (`max_tokens`).
    pub budgets: Vec<usize>,
    /// Thinking floor as a fraction of each budget (`min_tokens` = floor × budget, rounded
    /// down so it never exceeds the budget): s1's forcing in both directions. 0 = a cap only.
    pub floor: f64,
    /// Thinking options over every policy's own (the budget and floor go over them).
    pub thinking: Fields,
}

impl Default for Sweep {
    fn default() -> Sweep {
        Sweep {
            seed: 0,
            problems: 60,
            policies: Preset::ALL.iter().filter_map(|p| Policy::preset(p.name()).ok()).collect(),
            budgets: vec![0, 64, 256],
            floor: 0.0,
            // A constant that parses: `sweeps_plan_every_policy_budget_and_problem` checks it.
            thinking: serde_json::from_str(DEFAULT_THINKING).unwrap_or_default(),
        }
    }
}

/// More problems than anyone evaluates in one sweep; a larger count is a mistake (and would
/// reserve its memory before the first run).
pub const MAX_PROBLEMS: usize = 10_000;

/// One run of a sweep, before it runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlannedRun {
    pub policy: String,
    pub budget: usize,
    pub problem: Problem,
    /// The conversation and the request to generate from (what [`run_item`] sends).
    pub prompt: Prompt,
    pub request: GenerateRequest,
}

impl Sweep {
    /// The thinking options of `policy` at `budget`: its own fields, the sweep's over them,
    /// then the budget and the floor.
    pub fn thinking_options(&self, policy: &Policy, budget: usize) -> Result<ThinkingOptions, EngineError> {
        let mut fields = policy.fields.clone();
        fields.extend(self.thinking.clone());
        fields.insert("max_tokens".into(), budget.into());
        fields.insert("min_tokens".into(), ((self.floor.clamp(0.0, 1.0) * budget as f64) as usize).into());
        let options: ThinkingOptions = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| EngineError::InvalidOptions(format!("policy {}: thinking: {e}", policy.label)))?;
        options.validate().map_err(|e| EngineError::InvalidOptions(format!("policy {}: {e}", policy.label)))?;
        Ok(options)
    }

    /// Every run, policy by policy, budget by budget, problem by problem (each policy's
    /// options checked before anything runs).
    pub fn plan(&self) -> Result<Vec<PlannedRun>, EngineError> {
        if self.problems > MAX_PROBLEMS {
            return Err(EngineError::InvalidOptions(format!("{} problems: at most {MAX_PROBLEMS}", self.problems)));
        }
        let problems = problems(self.seed, self.problems);
        let mut runs = Vec::new();
        for policy in &self.policies {
            for &budget in &self.budgets {
                let thinking = self.thinking_options(policy, budget)?;
                for problem in &problems {
                    let (prompt, request) = item_request(thinking.clone(), problem);
                    runs.push(PlannedRun { policy: policy.label.clone(), budget, problem: problem.clone(), prompt, request });
                }
            }
        }
        Ok(runs)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ItemResult {
    pub model: String,
    pub policy: String,
    pub budget: usize,
    pub problem: usize,
    pub expected: i64,
    pub predicted: Option<i64>,
    pub correct: bool,
    pub thinking_tokens: usize,
    pub answer_tokens: usize,
    pub within_budget: bool,
    pub continuations: usize,
    pub probes: usize,
    pub probe_tokens: usize,
    pub words_suppressed: usize,
    pub early_exit: bool,
    pub forced_exit: bool,
    pub reprefilled_tokens: usize,
    pub wall_s: f64,
    pub answer: String,
}

/// The conversation and request for `problem` under `thinking` (whose `max_tokens` is the
/// budget): greedy, with room for the whole thought (wrap-up, markers, continuations inside
/// the budget), the grace period and the answer. The request's seed is the problem's index:
/// decoding is greedy, but seeded policies (AlphaOne's draws, a random continuation order)
/// would otherwise replay one stream of draws on every problem.
pub fn item_request(thinking: ThinkingOptions, problem: &Problem) -> (Prompt, GenerateRequest) {
    let answer_cap = thinking.answer_max_tokens.unwrap_or(64);
    let max_tokens = thinking.max_tokens.unwrap_or(1024) + thinking.grace_tokens + answer_cap + 16;
    let request = GenerateRequest {
        temperature: Some(0.0),
        seed: Some(problem.id as u64),
        max_tokens: Some(max_tokens),
        thinking: Some(thinking),
        ..GenerateRequest::default()
    };
    let prompt = Prompt::Messages(vec![
        Message { role: "system".into(), content: SYSTEM_PROMPT.into() },
        Message { role: "user".into(), content: problem.question.clone() },
    ]);
    (prompt, request)
}

/// A run's events folded into what its result needs: the answer text (answer-phase tokens,
/// markers and rolled-back probe tokens left out) and the final stats.
#[derive(Clone, Debug, Default)]
pub struct RunEvents {
    pub answer: String,
    pub stats: Stats,
}

impl RunEvents {
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::Token { text, phase: Phase::Answer, marker: false, probe: false, .. } => self.answer.push_str(text),
            Event::Done { stats } => self.stats = stats.clone(),
            _ => {}
        }
    }
}

/// Score a finished run of `problem` at `budget`.
pub fn item_result(model: &str, policy: &str, budget: usize, problem: &Problem, run: RunEvents, wall_s: f64) -> ItemResult {
    let predicted = extract_answer(&run.answer);
    let s = &run.stats;
    // Saturating: in the browser the stats come back from the page.
    let accounted = [s.sampled_tokens, s.forced_tokens, s.probe_tokens]
        .iter()
        .fold(s.prompt_tokens.saturating_sub(s.cached_tokens), |sum, n| sum.saturating_add(*n));
    ItemResult {
        model: model.to_string(),
        policy: policy.to_string(),
        budget,
        problem: problem.id,
        expected: problem.answer,
        predicted,
        correct: predicted == Some(problem.answer),
        thinking_tokens: s.thinking_tokens,
        answer_tokens: s.answer_tokens,
        within_budget: s.thinking_tokens <= budget,
        continuations: s.continuations,
        probes: s.probes,
        probe_tokens: s.probe_tokens,
        words_suppressed: s.words_suppressed,
        early_exit: s.confidence_exit || s.schedule_exit,
        forced_exit: s.forced_exit,
        reprefilled_tokens: s.processed_tokens.saturating_sub(accounted),
        wall_s,
        answer: run.answer,
    }
}

/// Run a planned item on `engine`: the same KV cache as every other request (the shared
/// system prompt stays cached between items; forced text and probes extend or roll back it).
pub async fn run_item(engine: &mut Engine, model: &str, run: &PlannedRun) -> Result<ItemResult, EngineError> {
    let t0 = crate::generate::monotonic_seconds();
    engine.start(&run.prompt, run.request.clone())?;
    let mut events = RunEvents::default();
    while let Some(event) = engine.next_event().await? {
        events.observe(&event);
    }
    let wall_s = crate::generate::monotonic_seconds() - t0;
    Ok(item_result(model, &run.policy, run.budget, &run.problem, events, wall_s))
}

// ----------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetRow {
    pub budget: usize,
    pub runs: usize,
    /// Percent correct.
    pub accuracy: f64,
    pub mean_thinking_tokens: f64,
    /// Percent of runs within the budget.
    pub control: f64,
    pub probes: usize,
    pub continuations: usize,
    pub early_exits: usize,
    pub wall_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicySummary {
    pub model: String,
    pub policy: String,
    pub budgets: Vec<BudgetRow>,
    /// s1's Control, percent of all runs within their budget.
    pub control: f64,
    /// s1's Scaling: mean pairwise slope, accuracy points per 1000 thinking tokens; `None`
    /// with fewer than two budgets of different mean thinking.
    pub scaling: Option<f64>,
    /// s1's Performance: the best accuracy over the budgets, percent.
    pub performance: f64,
    pub mean_thinking_tokens: f64,
    pub reprefilled_tokens: usize,
    pub wall_s: f64,
}

/// One summary per (model, policy), in first-seen order, budgets ascending.
pub fn summarize(results: &[ItemResult]) -> Vec<PolicySummary> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in results {
        if !keys.contains(&(r.model.as_str(), r.policy.as_str())) {
            keys.push((r.model.as_str(), r.policy.as_str()));
        }
    }
    keys.into_iter()
        .map(|(model, policy)| {
            let runs: Vec<&ItemResult> = results.iter().filter(|r| r.model == model && r.policy == policy).collect();
            let mut budgets: Vec<usize> = runs.iter().map(|r| r.budget).collect();
            budgets.sort_unstable();
            budgets.dedup();
            let rows: Vec<BudgetRow> = budgets
                .iter()
                .map(|&budget| {
                    let at: Vec<&&ItemResult> = runs.iter().filter(|r| r.budget == budget).collect();
                    let n = at.len() as f64;
                    let percent = |f: &dyn Fn(&ItemResult) -> bool| 100.0 * at.iter().filter(|r| f(r)).count() as f64 / n;
                    BudgetRow {
                        budget,
                        runs: at.len(),
                        accuracy: percent(&|r| r.correct),
                        mean_thinking_tokens: at.iter().map(|r| r.thinking_tokens as f64).sum::<f64>() / n,
                        control: percent(&|r| r.within_budget),
                        probes: at.iter().map(|r| r.probes).sum(),
                        continuations: at.iter().map(|r| r.continuations).sum(),
                        early_exits: at.iter().filter(|r| r.early_exit).count(),
                        wall_s: at.iter().map(|r| r.wall_s).sum(),
                    }
                })
                .collect();
            let n = runs.len().max(1) as f64;
            PolicySummary {
                model: model.to_string(),
                policy: policy.to_string(),
                control: 100.0 * runs.iter().filter(|r| r.within_budget).count() as f64 / n,
                scaling: scaling(&rows),
                performance: rows.iter().map(|r| r.accuracy).fold(0.0, f64::max),
                mean_thinking_tokens: runs.iter().map(|r| r.thinking_tokens as f64).sum::<f64>() / n,
                reprefilled_tokens: runs.iter().map(|r| r.reprefilled_tokens).sum(),
                wall_s: runs.iter().map(|r| r.wall_s).sum(),
                budgets: rows,
            }
        })
        .collect()
}

/// s1's Scaling over budget rows (ascending budgets), per 1000 thinking tokens.
pub fn scaling(rows: &[BudgetRow]) -> Option<f64> {
    let mut slopes = Vec::new();
    for (i, a) in rows.iter().enumerate() {
        for b in &rows[i + 1..] {
            let dx = b.mean_thinking_tokens - a.mean_thinking_tokens;
            if dx.abs() > f64::EPSILON {
                slopes.push((b.accuracy - a.accuracy) / dx * 1000.0);
            }
        }
    }
    (!slopes.is_empty()).then(|| slopes.iter().sum::<f64>() / slopes.len() as f64)
}

/// The summaries as plain-text tables, one per (model, policy).
pub fn render_tables(summaries: &[PolicySummary]) -> String {
    let mut out = String::new();
    for s in summaries {
        let scaling = s.scaling.map_or("n/a".to_string(), |v| format!("{v:.1}"));
        out.push_str(&format!(
            "{} / {}: Control {:.0} %, Scaling {scaling} pts/1k tok, Performance {:.1} %, mean thinking {:.1}, \
             re-prefilled {}, wall {:.1} s\n",
            s.model, s.policy, s.control, s.performance, s.mean_thinking_tokens, s.reprefilled_tokens, s.wall_s
        ));
        out.push_str("  budget  runs  accuracy  thinking  control  continuations  probes  early exits  wall s\n");
        for r in &s.budgets {
            out.push_str(&format!(
                "  {:>6}  {:>4}  {:>7.1}%  {:>8.1}  {:>6.0}%  {:>13}  {:>6}  {:>11}  {:>6.1}\n",
                r.budget, r.runs, r.accuracy, r.mean_thinking_tokens, r.control, r.continuations, r.probes, r.early_exits, r.wall_s
            ));
        }
    }
    out
}

/// One CSV line per run (the answer text left out).
pub fn render_csv(results: &[ItemResult]) -> String {
    let mut out = String::from(
        "model,policy,budget,problem,expected,predicted,correct,thinking_tokens,answer_tokens,within_budget,\
         continuations,probes,probe_tokens,words_suppressed,early_exit,forced_exit,reprefilled_tokens,wall_s\n",
    );
    for r in results {
        let predicted = r.predicted.map_or(String::new(), |p| p.to_string());
        out.push_str(&format!(
            "{},{},{},{},{},{predicted},{},{},{},{},{},{},{},{},{},{},{},{:.3}\n",
            csv_field(&r.model),
            csv_field(&r.policy),
            r.budget,
            r.problem,
            r.expected,
            r.correct,
            r.thinking_tokens,
            r.answer_tokens,
            r.within_budget,
            r.continuations,
            r.probes,
            r.probe_tokens,
            r.words_suppressed,
            r.early_exit,
            r.forced_exit,
            r.reprefilled_tokens,
            r.wall_s
        ));
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
