//! `pensive eval`: the problem generator, answer extraction and s1's metrics, then a few
//! items of the real command on the real small models (every preset holds its budget).

mod common;

use pensive::backend::block_on;
use pensive::engine::{BackendChoice, Engine, LoadOptions};
use pensive::eval::{
    extract_answer, item_result, problems, scaling, summarize, BudgetRow, ItemResult, RunEvents, Sweep, DEFAULT_THINKING,
};
use pensive::generate::Event;
use pensive::loader;
use pensive::thinking::Phase;

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

/// A few items of the real command (its flags, floor and JSON; the library's sweep below runs
/// both small models): every preset with a cap keeps Control at 100 %, and nothing is ever
/// re-prefilled.
#[test]
fn pensive_eval_command_on_smollm2_holds_every_budget_and_floor() {
    let models: Vec<_> = ["smollm2-135m-instruct-q4_1.gguf"].iter().filter_map(|m| common::model_path(m)).collect();
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

/// The default sweep's options parse (the `Sweep::default` fallback is never taken), and a
/// sweep plans every policy × budget × problem with the eval's own request.
#[test]
fn sweeps_plan_every_policy_budget_and_problem() {
    let default_thinking: serde_json::Map<String, serde_json::Value> = serde_json::from_str(DEFAULT_THINKING).unwrap();
    let d = Sweep::default();
    assert_eq!(d.thinking, default_thinking);
    assert_eq!(d.policies.iter().map(|p| p.label.as_str()).collect::<Vec<_>>(), ["s1", "qwen3", "nowait", "deer", "alphaone"]);
    // As the page writes it: presets by name, a labelled policy, the rest defaulted.
    let sweep: Sweep = serde_json::from_str(
        r#"{"problems": 2, "budgets": [0, 32], "floor": 0.5,
            "policies": ["s1", {"label": "deer-para", "thinking": {"preset": "deer", "max_continuations": 1}}]}"#,
    )
    .unwrap();
    let plan = sweep.plan().unwrap();
    assert_eq!(plan.len(), 2 * 2 * 2);
    let problems = problems(0, 2);
    for (i, run) in plan.iter().enumerate() {
        assert_eq!(run.policy, ["s1", "deer-para"][i / 4]);
        assert_eq!(run.budget, [0, 32][i / 2 % 2]);
        assert_eq!(run.problem, problems[i % 2]);
        let thinking = run.request.thinking.as_ref().unwrap();
        assert_eq!((thinking.max_tokens, thinking.min_tokens), (Some(run.budget), run.budget / 2));
        assert!(thinking.open && thinking.answer_prefix.as_deref() == Some("\nFinal Answer: \\boxed{"));
        assert_eq!(run.request.temperature, Some(0.0));
        assert_eq!(run.request.seed, Some(run.problem.id as u64));
    }
    assert_eq!(plan[4].request.thinking.as_ref().unwrap().max_continuations, Some(1), "a policy's own field over its preset");
    assert!(plan[4].request.thinking.as_ref().unwrap().confidence_exit.is_some(), "the preset underneath");
    // Mistakes are refused before anything runs.
    for bad in [r#"{"policies": ["s2"]}"#, r#"{"budgets": [8], "thinking": {"min_tokens": 9, "max_token": 1}}"#, r#"{"problems": 1000000}"#] {
        let refused = serde_json::from_str::<Sweep>(bad).map_err(|e| e.to_string()).and_then(|s| s.plan().map_err(|e| e.to_string()));
        assert!(refused.is_err(), "{bad}");
    }
}

/// Two problems × budgets 0/32 × the five presets on both small models, on the CPU, run
/// through the library as the browser's sweep runs them (plan, events, `item_result`):
/// thinking tokens recounted from the events stay within every cap, Control is 100 % and
/// nothing is re-prefilled; after the first item the shared system prompt comes from the cache.
#[test]
fn the_sweep_holds_every_cap_on_the_real_small_models() {
    let sweep = Sweep { problems: 2, budgets: vec![0, 32], ..Sweep::default() };
    let plan = sweep.plan().unwrap();
    for file in ["smollm2-135m-instruct-q4_1.gguf", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"] {
        let Some(path) = common::model_path(file) else { continue };
        let model = loader::load_gguf_file(&path).unwrap();
        let options = LoadOptions { backend: BackendChoice::Cpu, max_context: Some(512), ..LoadOptions::default() };
        let mut engine = block_on(Engine::new(model, None, &options)).unwrap();
        let mut results = Vec::new();
        for (i, run) in plan.iter().enumerate() {
            engine.start(&run.prompt, run.request.clone()).unwrap();
            let (mut events, mut folded) = (Vec::new(), RunEvents::default());
            while let Some(event) = block_on(engine.next_event()).unwrap() {
                folded.observe(&event);
                events.push(event);
            }
            let recounted = events
                .iter()
                .filter(|e| matches!(e, Event::Token { phase: Phase::Thinking, marker: false, probe: false, .. }))
                .count();
            let grace = run.request.thinking.as_ref().unwrap().grace_tokens;
            let what = format!("{file} {} budget {} #{}", run.policy, run.budget, run.problem.id);
            assert!(recounted <= run.budget + grace, "{what}: {recounted} thinking tokens");
            assert!(folded.stats.cached_tokens > 0 || i == 0, "{what}: the system prompt was run again");
            let r = item_result(file, &run.policy, run.budget, &run.problem, folded, 0.0);
            assert_eq!(r.thinking_tokens, recounted, "{what}: the stats' count is the events'");
            assert_eq!(r.reprefilled_tokens, 0, "{what}");
            results.push(r);
        }
        let summaries = summarize(&results);
        assert_eq!(summaries.len(), 5);
        for s in &summaries {
            assert_eq!(s.control, 100.0, "{file} {}", s.policy);
            assert_eq!(s.budgets.iter().map(|b| b.runs).collect::<Vec<_>>(), [2, 2]);
        }
    }
}
