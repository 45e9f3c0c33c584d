//! Chat templates: the Jinja program a model ships (`tokenizer.chat_template`) that turns a
//! conversation into the prompt text the model was trained on.
//!
//! Templates are written for Hugging Face transformers, which renders them with Jinja2 in a
//! particular environment (transformers `utils/chat_template_utils.py`). We reproduce that
//! environment with minijinja so that the prompt text is byte-identical:
//! - `trim_blocks` and `lstrip_blocks` on (a block tag eats its line's leading whitespace and
//!   the newline after it), trailing newline of the template dropped;
//! - `raise_exception(msg)` aborts rendering with the template's message;
//! - `tojson` is Python's `json.dumps` (no HTML escaping, `", "`/`": "` separators,
//!   non-ASCII kept), not minijinja's HTML-safe one;
//! - Python string methods (`.strip()`, `.split()`, `.startswith()`, …) via minijinja-contrib's
//!   pycompat, and `{% break %}`/`{% continue %}` (Jinja2's loopcontrols extension).
//!
//! Checked against transformers' own output for the Qwen2.5, Qwen3, SmolLM2 and
//! DeepSeek-R1-Distill templates (tests/chat.rs).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};

mod guard;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template does not compile: {0:#}")]
    Compile(#[source] minijinja::Error),
    /// The template itself refused the conversation (`raise_exception`), e.g. roles that do not
    /// alternate.
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),
    #[error("chat template failed to render: {0:#}")]
    Render(#[source] minijinja::Error),
    /// The template ran past [`MAX_FUEL`] instructions, wrote more than
    /// [`MAX_OUTPUT_BYTES`], or would have made values past [`MAX_VALUE_BYTES`],
    /// [`MAX_ITEMS`] or [`MAX_CREATED_BYTES`]: a template in a downloaded file may loop or
    /// explode, and the page must get an error rather than a frozen tab or a dead module.
    #[error("chat template exceeded its limit: {0}")]
    Limit(String),
    /// An extra template variable may not replace what the conversation itself sets.
    #[error("chat template variable '{0}' comes from the conversation and cannot be passed as an extra variable")]
    ReservedVariable(String),
}

/// Extra template variables (`chat_template_kwargs`), e.g. `{"enable_thinking": false}` for
/// Qwen3, whose template then closes an empty thinking block at the start of the answer.
pub type TemplateVariables = serde_json::Map<String, serde_json::Value>;

/// Variables that [`ChatTemplate::render_with`] sets from its own arguments. (transformers
/// raises a TypeError for these too: they are explicit parameters of its render call.)
const RESERVED_VARIABLES: [&str; 2] = ["messages", "add_generation_prompt"];

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// The template's own message from `raise_exception`, carried as the source of the
/// minijinja error so that [`ChatTemplate::render`] can report it as [`ChatError::Raised`].
#[derive(Debug)]
struct RaisedByTemplate(String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

const TEMPLATE_NAME: &str = "chat_template";

/// Instructions one render may execute (counting the checks crate/chat/guard.rs adds). The
/// real templates (Qwen2.5, Qwen3, DeepSeek-R1, SmolLM2) render a 1,000-message conversation
/// in 34,000-89,000 (tests/chat.rs checks 1,000 messages), so this holds over 20,000 messages,
/// more than any context window; a template that loops runs out in about a second.
pub const MAX_FUEL: u64 = 2_000_000;

pub use guard::{MAX_CREATED_BYTES, MAX_ITEMS, MAX_OUTPUT_BYTES, MAX_VALUE_BYTES};

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    fuel: u64,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source` (a Jinja template as found in `tokenizer.chat_template`).
    pub fn new(source: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(MAX_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, "raise_exception")
                .with_source(RaisedByTemplate(message)))
        });
        env.add_filter("tojson", tojson);
        env.add_filter("pprint", pprint);
        guard::register(&mut env);
        guard::compile(TEMPLATE_NAME, source, false).map_err(compile_error)?;
        Ok(Self { env, source: source.to_owned(), fuel: MAX_FUEL })
    }

    /// The same template with another instruction bound than [`MAX_FUEL`] (the fuzzer
    /// renders with less, so that a template that loops costs it milliseconds, not seconds;
    /// the value and output limits stay).
    pub fn with_fuel(mut self, fuel: u64) -> Self {
        self.env.set_fuel(Some(fuel));
        self.fuel = fuel;
        self
    }

    /// Render `messages` to prompt text. `add_generation_prompt` appends the opening of an
    /// assistant turn (what the model continues from); `bos_token`/`eos_token` are the token
    /// texts templates may insert (e.g. DeepSeek starts with `{{ bos_token }}`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, ChatError> {
        self.render_with(messages, add_generation_prompt, bos_token, eos_token, &TemplateVariables::new())
    }

    /// [`ChatTemplate::render`] with extra template variables, as transformers'
    /// `apply_chat_template(..., **kwargs)`: each one is visible to the template by its name,
    /// and may replace `bos_token`, `eos_token`, `tools` or `documents`.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
        extra: &TemplateVariables,
    ) -> Result<String, ChatError> {
        if let Some(name) = RESERVED_VARIABLES.iter().find(|&&name| extra.contains_key(name)) {
            return Err(ChatError::ReservedVariable((*name).to_owned()));
        }
        // Compiled again for each render: the program borrows the source, and compiling a
        // chat template takes well under a millisecond.
        let compiled = guard::compile(TEMPLATE_NAME, &self.source, true).map_err(compile_error)?;
        let mut context = std::collections::BTreeMap::from([
            ("messages".to_owned(), Value::from_serialize(messages)),
            ("add_generation_prompt".to_owned(), Value::from(add_generation_prompt)),
            ("bos_token".to_owned(), Value::from(bos_token)),
            ("eos_token".to_owned(), Value::from(eos_token)),
            // transformers passes these as None when the caller gives none.
            ("tools".to_owned(), Value::from(())),
            ("documents".to_owned(), Value::from(())),
        ]);
        for (name, value) in extra {
            context.insert(name.clone(), Value::from_serialize(value));
        }
        match guard::render(&self.env, &compiled, Value::from(context)) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                Err(ChatError::Limit(format!("it ran more than {} instructions", self.fuel)))
            }
            Err(e) => Err(match (guard::exceeded(&e), raised_message(&e)) {
                (Some(limit), _) => ChatError::Limit(limit),
                (None, Some(message)) => ChatError::Raised(message),
                (None, None) => ChatError::Render(e),
            }),
        }
    }
}

/// A template refused at compile time for its constants' size is over a limit, not broken.
fn compile_error(e: minijinja::Error) -> ChatError {
    match guard::exceeded(&e) {
        Some(limit) => ChatError::Limit(limit),
        None => ChatError::Compile(e),
    }
}

fn raised_message(error: &minijinja::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedByTemplate>() {
            return Some(raised.0.clone());
        }
        source = e.source();
    }
    None
}

// ---------------------------------------------------------------------------------------------
// tojson, as Python's json.dumps
// ---------------------------------------------------------------------------------------------

/// `value | tojson(indent=None, ensure_ascii=False, sort_keys=False, separators=None)` with
/// Python's output format: transformers overrides Jinja's HTML-escaping filter with
/// `json.dumps`, and tool schemas rendered into prompts must match it byte for byte.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators must be (item, key)"))
        }
        // Python drops the space after ',' when indenting (the newline replaces it).
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let style = JsonStyle { indent, ensure_ascii: ensure_ascii.unwrap_or(false), sort_keys: sort_keys.unwrap_or(false), item_sep, key_sep };
    let mut out = String::new();
    write_json(&value, &style, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// JSON longer than this is refused: a lazily nested list can describe far more than memory
/// holds, and [`write_json`] stops when it gets there.
const MAX_JSON_BYTES: usize = MAX_VALUE_BYTES;

fn json_too_long() -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, "chat template limit")
        .with_source(guard::LimitExceeded(format!("tojson would write more than {MAX_JSON_BYTES} bytes")))
}

/// `value | pprint`, refused past [`MAX_VALUE_BYTES`] instead of printed whole.
fn pprint(value: &Value) -> Result<String, minijinja::Error> {
    use std::fmt::Write as _;
    struct Capped(String);
    impl std::fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if self.0.len() + s.len() > MAX_VALUE_BYTES {
                return Err(std::fmt::Error);
            }
            self.0.push_str(s);
            Ok(())
        }
    }
    let mut out = Capped(String::new());
    write!(out, "{value:#?}").map_err(|_| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "chat template limit")
            .with_source(guard::LimitExceeded(format!("pprint would write more than {MAX_VALUE_BYTES} bytes")))
    })?;
    Ok(out.0)
}

struct JsonStyle {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
    item_sep: String,
    key_sep: String,
}

fn write_json(value: &Value, style: &JsonStyle, depth: usize, out: &mut String) -> Result<(), minijinja::Error> {
    if out.len() > MAX_JSON_BYTES {
        return Err(json_too_long());
    }
    let newline = |out: &mut String, depth: usize| -> Result<(), minijinja::Error> {
        if let Some(n) = style.indent {
            let width = n.saturating_mul(depth);
            if out.len().saturating_add(width) > MAX_JSON_BYTES {
                return Err(json_too_long());
            }
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', width));
        }
        Ok(())
    };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => match i64::try_from(value.clone()) {
            Ok(i) => out.push_str(&i.to_string()),
            Err(_) => {
                let f = f64::try_from(value.clone())?;
                // Python writes floats with a fractional part ("1.0"), as Rust's Debug does.
                out.push_str(&if f.is_finite() { format!("{f:?}") } else if f.is_nan() { "NaN".into() } else if f > 0.0 { "Infinity".into() } else { "-Infinity".into() });
            }
        },
        ValueKind::String => write_json_string(value.as_str().unwrap_or_default(), style.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1)?;
                write_json(item, style, depth + 1, out)?;
            }
            newline(out, depth)?;
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1)?;
                match key.as_str() {
                    Some(k) => write_json_string(k, style.ensure_ascii, out),
                    // Python turns non-string keys into strings.
                    None => write_json_string(&key.to_string(), style.ensure_ascii, out),
                }
                out.push_str(&style.key_sep);
                write_json(&value.get_item(key)?, style, depth + 1, out)?;
            }
            newline(out, depth)?;
            out.push('}');
        }
        _ => write_json_string(&value.to_string(), style.ensure_ascii, out),
    }
    Ok(())
}

/// A JSON string literal as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`,
/// other control characters as `\u00XX`; with `ensure_ascii` every non-ASCII character as
/// `\uXXXX` (UTF-16 surrogate pairs above U+FFFF).
fn write_json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
