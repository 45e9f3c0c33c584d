//! Chat templates rendered exactly as transformers renders them
//! (fixtures from tests/fixtures/gen/chat_reference.py).

use pensive::chat::{ChatError, ChatTemplate, Message};
use pensive::gguf::GgufHeader;
use pensive::tokenizer::Tokenizer;

mod common;

#[derive(serde::Deserialize)]
struct Fixture {
    template: String,
    bos_token: String,
    eos_token: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    expected: String,
}

fn fixture(name: &str) -> Fixture {
    let path = common::root_path("tests/fixtures/chat").join(format!("{name}.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Render every case of a fixture and compare with transformers' text.
fn check_fixture(name: &str) -> Fixture {
    let fx = fixture(name);
    let template = ChatTemplate::new(&fx.template).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut failures = Vec::new();
    for case in &fx.cases {
        let label = format!("{name}/{} (add_generation_prompt={})", case.name, case.add_generation_prompt);
        match template.render(&case.messages, case.add_generation_prompt, &fx.bos_token, &fx.eos_token) {
            Ok(got) if got == case.expected => {}
            Ok(got) => failures.push(format!("{label}:\n--- want\n{}\n--- got\n{got}", case.expected)),
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }
    eprintln!("{name}: {}/{} renderings match transformers", fx.cases.len() - failures.len(), fx.cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(!fx.cases.is_empty());
    fx
}

/// The template a GGUF carries, read through the tokenizer.
fn gguf_template(file: &str) -> Option<String> {
    let path = common::model_path(file)?;
    let bytes = std::fs::read(&path).expect("read GGUF");
    let header = GgufHeader::parse(&bytes).expect("GGUF header");
    let tok = Tokenizer::from_gguf(&header.metadata).expect("tokenizer");
    Some(tok.chat_template().expect("the GGUF has a chat template").to_owned())
}

#[test]
fn qwen25_template_matches_transformers() {
    let fx = check_fixture("qwen2.5");
    if let Some(t) = gguf_template("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") {
        assert_eq!(t, fx.template, "the fixture holds the GGUF's template");
    }
}

#[test]
fn smollm2_template_matches_transformers() {
    let fx = check_fixture("smollm2");
    if let Some(t) = gguf_template("smollm2-135m-instruct-q4_1.gguf") {
        assert_eq!(t, fx.template, "the fixture holds the GGUF's template");
    }
}

#[test]
fn deepseek_r1_distill_template_matches_transformers() {
    let fx = check_fixture("deepseek-r1-distill");
    // The template drops the reasoning of earlier assistant turns.
    let multi = fx.cases.iter().find(|c| c.name == "multi_turn").expect("case");
    assert!(!multi.expected.contains("The user greets me."));
    if let Some(t) = gguf_template("testdata/deepseek-r1-distill-qwen-7b.header.gguf") {
        assert_eq!(t, fx.template, "the fixture holds the GGUF's template");
    }
}

#[test]
fn qwen3_template_matches_transformers() {
    let fx = check_fixture("qwen3");
    if let (Some(json), Some(config)) = (
        common::model_path("testdata/qwen3/tokenizer.json"),
        common::model_path("testdata/qwen3/tokenizer_config.json"),
    ) {
        let tok = Tokenizer::from_json(&std::fs::read(json).unwrap(), Some(&std::fs::read(config).unwrap()))
            .expect("tokenizer");
        assert_eq!(tok.chat_template(), Some(fx.template.as_str()), "the fixture holds the config's template");
    }
}

#[test]
fn tojson_is_pythons_json_dumps() {
    check_fixture("tojson");
}

#[test]
fn raise_exception_reports_the_templates_message() {
    let template = ChatTemplate::new(
        "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('tools are not supported: ' ~ m.content) }}{% endif %}{{ m.content }}{% endfor %}",
    )
    .expect("compiles");
    assert_eq!(template.render(&[Message::user("hi")], false, "", "").unwrap(), "hi");
    match template.render(&[Message::new("tool", "calc")], false, "", "") {
        Err(ChatError::Raised(message)) => assert_eq!(message, "tools are not supported: calc"),
        other => panic!("expected Raised, got {other:?}"),
    }
}

#[test]
fn bad_templates_are_errors_not_panics() {
    assert!(matches!(ChatTemplate::new("{% for m in messages %}"), Err(ChatError::Compile(_))));
    let t = ChatTemplate::new("{{ messages[0].content.no_such_method() }}").expect("compiles");
    assert!(matches!(t.render(&[Message::user("x")], false, "", ""), Err(ChatError::Render(_))));
}

#[test]
fn whitespace_control_follows_transformers() {
    // trim_blocks + lstrip_blocks: block tags on their own lines leave no blank lines.
    let t = ChatTemplate::new(
        "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content | trim }}]\n    {% endif %}\n{% endfor %}\n",
    )
    .expect("compiles");
    let out = t.render(&[Message::user("  a "), Message::assistant("b"), Message::user("c")], false, "", "").unwrap();
    assert_eq!(out, "[a]\n[c]\n");
}

/// llama.cpp's reference copies of the same templates (other revisions), from the
/// llama-cpp-python sdist that scripts/fetch-test-data.sh unpacks.
fn check_sdist_fixture(name: &str, file: &str) {
    let fx = check_fixture(name);
    if let Some(path) = common::model_path(&format!("testdata/templates/{file}")) {
        let source = std::fs::read_to_string(path).expect("read template");
        assert_eq!(source, fx.template, "the fixture holds the sdist's template");
    }
}

#[test]
fn sdist_qwen25_template_matches_transformers() {
    check_sdist_fixture("sdist-qwen2.5-7b-instruct", "Qwen-Qwen2.5-7B-Instruct.jinja");
}

#[test]
fn sdist_qwen3_template_matches_transformers() {
    check_sdist_fixture("sdist-qwen3-0.6b", "Qwen-Qwen3-0.6B.jinja");
}

#[test]
fn sdist_deepseek_r1_distill_template_matches_transformers() {
    check_sdist_fixture("sdist-deepseek-r1-distill-qwen-32b", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja");
}

#[test]
fn extra_variables_reach_the_template() {
    use pensive::chat::TemplateVariables;
    let t = ChatTemplate::new("{{ bos_token }}{% if enable_thinking is defined and enable_thinking is false %}off{% else %}on{% endif %}{{ depth }}")
        .expect("compiles");
    let vars = |json: &str| -> TemplateVariables { serde_json::from_str(json).unwrap() };
    let hi = [Message::user("hi")];
    assert_eq!(t.render(&hi, true, "<s>", "").unwrap(), "<s>on");
    assert_eq!(t.render_with(&hi, true, "<s>", "", &vars(r#"{"enable_thinking": true, "depth": 2}"#)).unwrap(), "<s>on2");
    assert_eq!(t.render_with(&hi, true, "<s>", "", &vars(r#"{"enable_thinking": false}"#)).unwrap(), "<s>off");
    // As transformers' apply_chat_template(**kwargs): a kwarg replaces a special token's text.
    assert_eq!(t.render_with(&hi, true, "<s>", "", &vars(r#"{"bos_token": "[B]"}"#)).unwrap(), "[B]on");
    // ... but not what the call itself sets.
    for reserved in ["messages", "add_generation_prompt"] {
        match t.render_with(&hi, true, "<s>", "", &vars(&format!(r#"{{"{reserved}": 1}}"#))) {
            Err(ChatError::ReservedVariable(name)) => assert_eq!(name, reserved),
            other => panic!("{reserved}: expected ReservedVariable, got {other:?}"),
        }
    }
}

/// The Qwen3 fixture's template with `enable_thinking`: unset and true render alike, false
/// closes an empty thinking block after the generation prompt (what transformers renders,
/// see tests/fixtures/tiny/qwen3/prompt_ids.json for the ids).
#[test]
fn qwen3_enable_thinking_false_renders_an_empty_thinking_block() {
    use pensive::chat::TemplateVariables;
    let fx = fixture("qwen3");
    let t = ChatTemplate::new(&fx.template).expect("compiles");
    let hi = [Message::user("What is 17 * 23?")];
    let render = |json: &str| t.render_with(&hi, true, &fx.bos_token, &fx.eos_token, &serde_json::from_str::<TemplateVariables>(json).unwrap()).unwrap();
    let on = render("{}");
    assert_eq!(on, "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(render(r#"{"enable_thinking": true}"#), on);
    assert_eq!(render(r#"{"enable_thinking": false}"#), format!("{on}<think>\n\n</think>\n\n"));
}

#[test]
fn looping_and_exploding_templates_hit_their_limit() {
    // 100,000³ iterations: without fuel this would run for days.
    let looping = ChatTemplate::new("{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}").unwrap();
    let started = std::time::Instant::now();
    match looping.render(&[Message::user("x")], true, "", "") {
        Err(ChatError::Limit(why)) => assert!(why.contains("instructions"), "{why}"),
        other => panic!("expected Limit, got {other:?}"),
    }
    assert!(started.elapsed().as_secs() < 20, "fuel ran out only after {:?}", started.elapsed());
    // Little fuel, much output: each instruction writes 1 MB.
    let exploding = ChatTemplate::new("{% for a in range(100) %}{{ 'x' * 1000000 }}{% endfor %}").unwrap();
    match exploding.render(&[Message::user("x")], true, "", "") {
        Err(ChatError::Limit(why)) => assert!(why.contains("bytes"), "{why}"),
        other => panic!("expected Limit, got {:?}", other.map(|s| s.len())),
    }
}

#[test]
fn real_templates_render_long_conversations_within_the_limits() {
    for name in ["qwen2.5", "qwen3", "smollm2", "deepseek-r1-distill"] {
        let fx = fixture(name);
        let template = ChatTemplate::new(&fx.template).unwrap();
        let mut messages = vec![Message::system("You are kind.")];
        for i in 0..500 {
            messages.push(Message::user(format!("question {i}?")));
            messages.push(Message::assistant(format!("<think>\nhm {i}\n</think>\n\nanswer {i}")));
        }
        messages.push(Message::user("last?"));
        let text = template.render(&messages, true, &fx.bos_token, &fx.eos_token).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains("question 499?") && text.ends_with('\n') || text.contains("last?"), "{name}");
    }
}

/// Templates whose values outgrow memory in a few instructions (found by the fuzzer and the
/// hostile-file generator, and their relatives): each is a `Limit` error, quickly, instead of
/// exhausting memory (in a page, an aborted wasm module).
#[test]
fn templates_that_make_huge_values_hit_their_limit() {
    let doubling = |step: &str| {
        format!("{{% set ns = namespace(s='xxxxxxxxxxxxxxxx', l=[1, 2]) %}}{{% for i in range(60) %}}{{% set ns.s = {step} %}}{{% endfor %}}{{{{ ns.s|length }}}}")
    };
    let unrolled: String = std::iter::once("{% set s0 = 'xxxxxxxx' %}".to_owned())
        .chain((1..=60).map(|i| format!("{{% set s{i} = s{j} ~ s{j} %}}", j = i - 1)))
        .chain(std::iter::once("{{ s60|length }}".to_owned()))
        .collect();
    let big = "{% set big = 'x' * 10000000 %}";
    // Few values, but it prints as 100 copies of a 590 KB list: 59 MB.
    let wide = "{% set a = range(100000)|list %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}{% set c = [b, b, b, b, b, b, b, b, b, b] %}";
    let cases: Vec<(&str, String)> = vec![
        ("~ doubling", doubling("ns.s ~ ns.s")),
        ("+ doubling", doubling("ns.s + ns.s")),
        ("format doubling", doubling("'%s%s'|format(ns.s, ns.s)")),
        ("join doubling", doubling("[ns.s, ns.s]|join")),
        ("method join doubling", doubling("ns.s.join(['', '', ''])")),
        ("replace doubling", doubling("ns.s|replace('x', 'xx')")),
        ("method replace doubling", doubling("ns.s.replace('x', 'xxx')")),
        ("list doubling printed", doubling("ns.s") + "{% set ns.l = [1] %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}"),
        ("nested list printed", "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}".into()),
        ("nested list joined", "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ (ns.l|string)|length }}".into()),
        ("nested list as json", "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ (ns.l|tojson)|length }}".into()),
        ("nested list pprint", "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ (ns.l|pprint)|length }}".into()),
        ("macro recursion", "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}{{ d('xxxxxxxx', 60) }}".into()),
        ("unrolled doubling", unrolled),
        ("join with a huge separator", "{{ range(100000) | list | join(range(100000) | list | join(',')) }}".into()),
        ("string times a huge count", "{{ ('x' * 99999999)|length }}".into()),
        ("list times a huge count", "{{ ([1, 2, 3] * 99999999)|length }}".into()),
        ("list of a repeated list", "{{ (([1, 2, 3] * 9999999)|list)|length }}".into()),
        ("huge indent", "{{ ('a\\n' * 1000)|indent(99999999)|length }}".into()),
        ("huge format width", "{{ ('%999999999s'|format(1))|length }}".into()),
        ("huge tojson indent", "{{ ([[[[1]]]]|tojson(indent=99999999))|length }}".into()),
        ("many distinct big strings", format!("{big}{{% set ns = namespace(l=[]) %}}{{% for i in range(1000) %}}{{% set ns.l = ns.l + [big ~ i] %}}{{% endfor %}}{{{{ ns.l|length }}}}")),
        ("many upper copies", format!("{big}{{% set ns = namespace(l=[]) %}}{{% for i in range(1000) %}}{{% set ns.l = ns.l + [big|upper] %}}{{% endfor %}}{{{{ ns.l|length }}}}")),
        ("characters of a big string", format!("{big}{{{{ (big|list)|length }}}}")),
        ("split into pieces", format!("{big}{{{{ (big.replace('x', 'x ')).split()|length }}}}")),
        ("a mapped big string", format!("{big}{{{{ ([big] * 1000)|map('upper')|list|length }}}}")),
        ("raw text in a loop", format!("{{% for i in range(100000) %}}{}{{% endfor %}}", "y".repeat(1000))),
        // Parameters that minijinja converts to strings, whatever their type.
        ("join with a range as separator", "{{ range(1+9300) | list | join(range(100000)) }}".into()),
        ("replace with a range", "{{ ('a' * 1000)|replace('a', range(100000))|length }}".into()),
        ("a wide list upper", format!("{wide}{{{{ (c|upper)|length }}}}")),
        ("a wide list safe", format!("{wide}{{{{ (c|safe)|length }}}}")),
        ("a wide list in a string", format!("{wide}{{{{ c in 'x' }}}}")),
        ("the in test on a string", format!("{wide}{{{{ c is in 'x' }}}}")),
        ("raise_exception of a wide list", format!("{wide}{{{{ raise_exception(c) }}}}")),
        ("trim by a wide list", format!("{wide}{{{{ 'x'|trim(c) }}}}")),
        ("selectattr by a wide list", format!("{wide}{{{{ [1]|selectattr(c)|list }}}}")),
        ("indent by a wide list", format!("{wide}{{{{ ('a\n' * 100)|indent(c)|length }}}}")),
        ("format of a wide list", format!("{wide}{{{{ ('%s'|format(c))|length }}}}")),
        ("emitting a big value in a loop", format!("{big}{{% for i in range(100) %}}{{{{ big }}}}{{% endfor %}}")),
    ];
    for (name, source) in cases {
        let started = std::time::Instant::now();
        // Constant expressions are computed when the template compiles: those are refused there.
        match ChatTemplate::new(&source).and_then(|t| t.render(&[Message::user("x")], true, "", "")) {
            Err(ChatError::Limit(_)) => {}
            other => panic!("{name}: expected a Limit error, got {:?}", other.map(|s| s.len())),
        }
        assert!(started.elapsed().as_secs() < 20, "{name}: the limit came only after {:?}", started.elapsed());
        println!("{name}: {:?}", started.elapsed());
    }
}
