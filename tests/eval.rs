//! `pensive eval`: the problem generator, answer extraction and s1's metrics, then a few
//! items of the real command on the real small models (every preset holds its budget).

mod common;

use pensive::eval::{extract_answer, problems, scaling, summarize, BudgetRow, ItemResult};

#[test]
fn problems_are_seeded_varied_and_have_integer_answers() {
    let a = problems(0, 60);
    assert_eq!(a, problems(0, 60), "same seed, same problems");
    assert_ne!(a, problems(1, 60));
    assert_eq!(a.len(), 60);
    let distinct: std::collections::HashSet<&str> = a.iter().map(|p| p.question.as_str()).collect();
    assert!(distinct.len() >= 58, "only {} distinct questions", distinct.len());
    assert!(a.iter().all(|p| p.answer >= 0));
    // A prefix of a longer set is the shorter set.
    assert_eq!(problems(0, 6), a[..6]);
    // The arithmetic kinds state their own answer: recompute it from the text.
    for p in a.iter().filter(|p| p.question.starts_with("What is ")) {
        let n: Vec<i64> = p.question.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
        let expected = if p.question.contains('(') { (n[0] - n[1]) * n[2] } else { n[0] + n[1] * n[2] };
        assert_eq!(p.answer, expected, "{}", p.question);
    }
}

#[test]
fn answers_come_from_the_last_box_else_the_last_integer() {
    assert_eq!(extract_answer("so 3 + 4 = 7, \\boxed{7} and later 9"), Some(7));
    assert_eq!(extract_answer("\\boxed{1} then \\boxed{1,234}"), Some(1234));
    assert_eq!(extract_answer("\\boxed{47 + 15}"), Some(15), "the box's last integer");
    assert_eq!(extract_answer("The answer is -12."), Some(-12));
    assert_eq!(extract_answer("x = 5 - 3"), Some(3), "a minus between numbers is subtraction");
    assert_eq!(extract_answer("\\boxed{} 42"), Some(42), "an empty box falls back to the text");
    assert_eq!(extract_answer("no digits"), None);
    assert_eq!(extract_answer("\\boxed{12"), Some(12), "an answer cut by the cap");
}

fn result(policy: &str, budget: usize, correct: bool, thinking: usize) -> ItemResult {
    ItemResult {
        model: "m".into(),
        policy: policy.into(),
        budget,
        problem: 0,
        expected: 1,
        predicted: Some(if correct { 1 } else { 2 }),
        correct,
        thinking_tokens: thinking,
        answer_tokens: 3,
        within_budget: thinking <= budget,
        continuations: 0,
        probes: 0,
        probe_tokens: 0,
        words_suppressed: 0,
        early_exit: false,
        forced_exit: false,
        reprefilled_tokens: 0,
        wall_s: 1.0,
        answer: String::new(),
    }
}

#[test]
fn s1_metrics_by_hand() {
    // Budgets 100 and 200: accuracy 50 % → 100 %, mean thinking 100 → 200 tokens; one run
    // of the second budget over its cap.
    let results = [
        result("p", 100, true, 100),
        result("p", 100, false, 100),
        result("p", 200, true, 150),
        result("p", 200, true, 250),
        result("q", 0, false, 0),
    ];
    let s = summarize(&results);
    assert_eq!(s.len(), 2);
    let p = &s[0];
    assert_eq!(p.control, 75.0);
    assert_eq!(p.performance, 100.0);
    // (100 − 50) points over 100 tokens = 500 points per 1000 tokens.
    assert_eq!(p.scaling, Some(500.0));
    assert_eq!(p.budgets.iter().map(|r| r.accuracy).collect::<Vec<_>>(), [50.0, 100.0]);
    assert_eq!(s[1].scaling, None, "one budget has no slope");
    let row = |accuracy, mean_thinking_tokens| BudgetRow {
        budget: 0,
        runs: 1,
        accuracy,
        mean_thinking_tokens,
        control: 100.0,
        probes: 0,
        continuations: 0,
        early_exits: 0,
        wall_s: 0.0,
    };
    // Three budgets: the mean of the three pairwise slopes (10, 0, 5 per 1000 → 5).
    assert_eq!(scaling(&[row(10.0, 0.0), row(20.0, 1000.0), row(20.0, 2000.0)]), Some(5.0));
}

/// A few items of the real command: every preset with a cap keeps Control at 100 %, and
/// nothing is ever re-prefilled.
#[test]
fn pensive_eval_on_the_real_small_models_holds_every_budget() {
    let models: Vec<_> = ["smollm2-135m-instruct-q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"]
        .iter()
        .filter_map(|m| common::model_path(m))
        .collect();
    if models.is_empty() {
        return;
    }
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pensive"));
    command.args(["eval", "--problems", "1", "--budgets", "0,16", "--floor", "0.5", "--json"]);
    command.args(["--thinking", r#"{"open": true, "answer_prefix": "\nFinal Answer: \\boxed{", "answer_max_tokens": 4}"#]);
    for m in &models {
        command.arg("--model").arg(m);
    }
    let output = command.output().expect("run pensive eval");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json prints one object");
    let summaries = json["summaries"].as_array().expect("summaries");
    assert_eq!(summaries.len(), models.len() * 5, "every model × preset");
    for s in summaries {
        assert_eq!(s["control"], 100.0, "{s}");
        assert_eq!(s["reprefilled_tokens"], 0, "{s}");
    }
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), models.len() * 5 * 2);
    for r in results {
        let (thinking, budget) = (r["thinking_tokens"].as_u64().unwrap(), r["budget"].as_u64().unwrap());
        // The floor (half the budget) holds too.
        assert!(thinking <= budget && thinking >= budget / 2, "{r}");
        assert!(r["answer"].as_str().unwrap().starts_with("\nFinal Answer: \\boxed{"), "{r}");
    }
}
