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

use serde::Serialize;

use crate::chat::Message;
use crate::engine::{Engine, EngineError, GenerateRequest, Prompt};
use crate::generate::{Event, Stats};
use crate::sampler::Rng;
use crate::thinking::{Phase, ThinkingOptions};

// ----------------------------------------------------------------------------
// Problems

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

#[derive(Clone, Debug, Serialize)]
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

/// Run `problem` under `thinking` (whose `max_tokens` is the budget), greedily, on `engine`.
/// The request's seed is the problem's index: decoding is greedy, but seeded policies
/// (AlphaOne's draws, a random continuation order) would otherwise replay one stream of
/// draws on every problem.
pub async fn run_item(
    engine: &mut Engine,
    model: &str,
    policy: &str,
    thinking: ThinkingOptions,
    problem: &Problem,
) -> Result<ItemResult, EngineError> {
    let budget = thinking.max_tokens.unwrap_or(usize::MAX);
    // Room for the whole thought (wrap-up, markers, continuations inside the budget), the
    // grace period and the answer.
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
    let t0 = crate::generate::monotonic_seconds();
    engine.start(&prompt, request)?;
    let (mut answer, mut stats) = (String::new(), Stats::default());
    while let Some(event) = engine.next_event().await? {
        match event {
            Event::Token { text, phase: Phase::Answer, marker: false, probe: false, .. } => answer.push_str(&text),
            Event::Done { stats: s } => stats = s,
            _ => {}
        }
    }
    let wall_s = crate::generate::monotonic_seconds() - t0;
    let predicted = extract_answer(&answer);
    let s = &stats;
    let accounted = s.prompt_tokens - s.cached_tokens + s.sampled_tokens + s.forced_tokens + s.probe_tokens;
    Ok(ItemResult {
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
        answer,
    })
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
