//! Memory bounds for rendering a chat template from a downloaded file.
//!
//! minijinja bounds the instructions a render runs (fuel) and we bound what it writes, but
//! one instruction can double a string (`{% set ns.s = ns.s ~ ns.s %}` forty times is a
//! terabyte), repeat one (`s * n`), or join a long list with a long separator — the memory
//! is gone before any output exists, and in a page that aborts the wasm module. minijinja
//! has no hook on its operators, so the compiled program is rewritten instead (minijinja's
//! `unstable_machinery`, pinned to one version in Cargo.toml): every instruction that can
//! make a large value gets a call to one of our functions before it (which estimates the
//! result from its operands and refuses it past the limits) and, for filters, methods and
//! function calls, one after it (which charges what was made). Emitting is charged the
//! same way, so the output never grows past [`MAX_OUTPUT_BYTES`] either.
//!
//! The limits, per render:
//! - [`MAX_VALUE_BYTES`]: one string an operation makes;
//! - [`MAX_CREATED_BYTES`]: all strings and lists the operations make, together;
//! - [`MAX_ITEMS`]: the items of a list an operation takes or makes;
//! - [`MAX_OUTPUT_BYTES`]: what the template writes.
//!
//! An operand's size is measured, never trusted: a lazily nested list that prints as a
//! terabyte is counted by printing it into a counter that stops at the limit.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::machinery::{self, CompiledTemplate, Instruction, Instructions, TemplateConfig, WhitespaceConfig, Vm};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Rest, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, Value};

/// Bytes one render may write: far beyond any context window's worth of text (a 128k-token
/// context is well under 1 MiB).
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// Bytes of one string an operation may make (a prompt longer than the output limit could
/// not be written anyway).
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// Bytes all the operations of one render may make together (what a template keeps alive
/// is at most this). The real templates make a few times their output.
pub const MAX_CREATED_BYTES: usize = 128 << 20;

/// Items of one list an operation may take or make (minijinja's own `range` stops at
/// 100,000).
pub const MAX_ITEMS: usize = 1 << 20;

/// Bytes charged per list item or map entry (a minijinja `Value`).
const ITEM_BYTES: usize = 24;

/// Why a render stopped: carried as the source of the minijinja error our functions return.
#[derive(Debug)]
pub struct LimitExceeded(pub String);

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitExceeded {}

fn limit(message: String) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, "chat template limit").with_source(LimitExceeded(message))
}

/// What the current render has written and made (renders are synchronous: one per thread
/// at a time).
#[derive(Clone, Copy, Default)]
struct Budget {
    output: usize,
    created: usize,
}

thread_local! {
    static BUDGET: Cell<Budget> = const { Cell::new(Budget { output: 0, created: 0 }) };
}

fn charge_output(bytes: usize) -> Result<(), minijinja::Error> {
    BUDGET.with(|b| {
        let mut budget = b.get();
        budget.output = budget.output.saturating_add(bytes);
        b.set(budget);
        if budget.output > MAX_OUTPUT_BYTES {
            return Err(limit(format!("the prompt grew past {MAX_OUTPUT_BYTES} bytes")));
        }
        Ok(())
    })
}

/// Charge a string of `bytes` about to be made (refused past [`MAX_VALUE_BYTES`]) and
/// `items` list items.
fn charge_created(bytes: usize, items: usize) -> Result<(), minijinja::Error> {
    if bytes > MAX_VALUE_BYTES {
        return Err(limit(format!("an operation would make a string of more than {MAX_VALUE_BYTES} bytes")));
    }
    if items > MAX_ITEMS {
        return Err(limit(format!("an operation would make a list of more than {MAX_ITEMS} items")));
    }
    BUDGET.with(|b| {
        let mut budget = b.get();
        budget.created = budget.created.saturating_add(bytes).saturating_add(items.saturating_mul(ITEM_BYTES));
        b.set(budget);
        if budget.created > MAX_CREATED_BYTES {
            return Err(limit(format!("its operations made more than {MAX_CREATED_BYTES} bytes of values")));
        }
        Ok(())
    })
}

/// Counts the bytes written into it and fails once past `cap`.
struct Counter {
    n: usize,
    cap: usize,
}

impl std::fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.n = self.n.saturating_add(s.len());
        if self.n > self.cap {
            return Err(std::fmt::Error);
        }
        Ok(())
    }
}

/// Bytes `value` prints as, or `cap + 1` once past `cap` (it is never printed whole).
fn printed_len(value: &Value, cap: usize) -> usize {
    if let Some(s) = value.as_str() {
        return s.len();
    }
    let mut counter = Counter { n: 0, cap };
    match write!(counter, "{value}") {
        Ok(()) => counter.n,
        Err(_) => cap.saturating_add(1),
    }
}

/// Items of a list, map or iterable (counting stops past [`MAX_ITEMS`]); 0 for other values.
fn items(value: &Value) -> usize {
    match value.kind() {
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => value
            .len()
            .unwrap_or_else(|| value.try_iter().map_or(0, |iter| iter.take(MAX_ITEMS + 1).count())),
        _ => 0,
    }
}

fn str_len(value: &Value) -> usize {
    value.as_str().map_or(0, str::len)
}

/// Every list, map or iterable an operation takes stays within [`MAX_ITEMS`]: whatever it
/// makes from them is then bounded too.
fn check_operands(args: &[Value]) -> Result<(), minijinja::Error> {
    for arg in args {
        if arg.is_kwargs() {
            for (_, v) in kwargs_entries(arg) {
                if items(&v) > MAX_ITEMS {
                    return Err(limit(format!("an operand has more than {MAX_ITEMS} items")));
                }
            }
        } else if items(arg) > MAX_ITEMS {
            return Err(limit(format!("an operand has more than {MAX_ITEMS} items")));
        }
    }
    Ok(())
}

fn kwargs_entries(kwargs: &Value) -> Vec<(Value, Value)> {
    let Ok(keys) = kwargs.try_iter() else { return Vec::new() };
    keys.take(MAX_ITEMS).map(|k| {
        let v = kwargs.get_item(&k).unwrap_or_default();
        (k, v)
    })
    .collect()
}

/// Positional arguments and keyword values, in order.
fn all_values(args: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for arg in args {
        if arg.is_kwargs() {
            out.extend(kwargs_entries(arg).into_iter().map(|(_, v)| v));
        } else {
            out.push(arg.clone());
        }
    }
    out
}

/// Sum of the bytes `values` print as, capped just past [`MAX_VALUE_BYTES`].
fn printed_sum<'a>(values: impl IntoIterator<Item = &'a Value>) -> usize {
    let mut total = 0usize;
    for v in values {
        total = total.saturating_add(printed_len(v, MAX_VALUE_BYTES.saturating_sub(total)));
        if total > MAX_VALUE_BYTES {
            break;
        }
    }
    total
}

/// Whether minijinja converting `value` to a string (a filter's string parameter, `in` on a
/// string) costs more than a few bytes: anything but a string, number, bool or none.
fn prints_large(value: &Value) -> bool {
    !matches!(value.kind(), ValueKind::String | ValueKind::Number | ValueKind::Bool | ValueKind::None | ValueKind::Undefined)
}

/// `value` may be converted to a string: refused when that string would pass
/// [`MAX_VALUE_BYTES`]. (The string lives only while the operation runs; what it makes is
/// charged after.)
fn printable(value: &Value) -> Result<(), minijinja::Error> {
    if prints_large(value) && printed_len(value, MAX_VALUE_BYTES) > MAX_VALUE_BYTES {
        return Err(limit(format!("a value converted to a string would pass {MAX_VALUE_BYTES} bytes")));
    }
    Ok(())
}

/// [`printable`] for every argument, keyword values included.
fn all_printable(args: &[Value]) -> Result<(), minijinja::Error> {
    all_values(args).iter().try_for_each(printable)
}

/// `value` as the string minijinja converts it to (a string parameter takes any value),
/// refused past [`MAX_VALUE_BYTES`] before it is made.
fn as_text(value: Option<&Value>) -> Result<std::borrow::Cow<'_, str>, minijinja::Error> {
    let Some(value) = value else { return Ok("".into()) };
    if let Some(s) = value.as_str() {
        return Ok(s.into());
    }
    printable(value)?;
    Ok(value.to_string().into())
}

/// Bytes joining the items of `seq` with `sep` makes.
fn joined_len(seq: &Value, sep: &str) -> Result<usize, minijinja::Error> {
    if let Some(s) = seq.as_str() {
        // A string joins its characters.
        return Ok(s.len().saturating_add(s.chars().count().saturating_mul(sep.len())));
    }
    let Ok(iter) = seq.try_iter() else { return Ok(0) };
    let mut total = 0usize;
    for (i, item) in iter.enumerate() {
        if i >= MAX_ITEMS || total > MAX_VALUE_BYTES {
            break;
        }
        let sep_len = if i > 0 { sep.len() } else { 0 };
        total = total.saturating_add(sep_len).saturating_add(printed_len(&item, MAX_VALUE_BYTES.saturating_sub(total)));
    }
    Ok(total)
}

/// The largest number written in a format string (a width or precision), summed: what
/// padding can add beyond the arguments.
fn format_padding(fmt: &str) -> usize {
    fmt.split(|c: char| !c.is_ascii_digit())
        .filter(|run| !run.is_empty())
        .map(|run| run.parse::<usize>().unwrap_or(usize::MAX))
        .fold(0usize, usize::saturating_add)
}

/// The largest integer among the arguments (a width, a count): what padding can add.
fn largest_int(args: &[Value]) -> usize {
    all_values(args).iter().filter_map(|v| v.as_i64()).map(|n| usize::try_from(n).unwrap_or(0)).max().unwrap_or(0)
}

/// Pieces splitting `s` by `sep` (whitespace runs when none) makes.
fn pieces(s: &str, sep: Option<&str>) -> usize {
    match sep {
        Some(sep) if !sep.is_empty() => s.matches(sep).count().saturating_add(1),
        _ => s.split_whitespace().count().saturating_add(1),
    }
}

/// Estimate, before it runs, what a filter or method makes from `args` (for a method,
/// `args[0]` is the object), and refuse it past the limits.
fn estimate(op: Op, args: &[Value]) -> Result<(), minijinja::Error> {
    check_operands(args)?;
    match op {
        // A function call or a slice: nothing is converted to a string.
        Op::Call => {}
        // Every argument may be converted to a string.
        Op::Stringify => all_printable(args)?,
        // A filter's or method's parameters (after the value or object) may be strings: an
        // attribute or test name, a separator, characters to trim.
        _ => all_printable(&args[1.min(args.len())..])?,
    }
    let arg = |i: usize| args.get(i).filter(|v| !v.is_kwargs());
    let text = |i: usize| as_text(arg(i));
    match op {
        Op::Replace => {
            let s = text(0)?;
            let from = text(1)?;
            let to = text(2)?.len();
            let hits = if from.is_empty() { s.chars().count().saturating_add(1) } else { s.matches(&*from).count() };
            charge_created(s.len().saturating_add(hits.saturating_mul(to)), 0)
        }
        Op::JoinFilter => {
            let sep = text(1)?;
            charge_created(arg(0).map_or(Ok(0), |seq| joined_len(seq, &sep))?, 0)
        }
        Op::JoinMethod => {
            let sep = text(0)?;
            charge_created(arg(1).map_or(Ok(0), |seq| joined_len(seq, &sep))?, 0)
        }
        Op::Indent => {
            let s = text(0)?;
            let lines = s.matches('\n').count().saturating_add(1);
            // The width is a number or a string (minijinja takes either).
            let width = largest_int(&args[1.min(args.len())..]).max(all_values(&args[1.min(args.len())..]).iter().map(str_len).max().unwrap_or(0));
            charge_created(s.len().saturating_add(lines.saturating_mul(width)), 0)
        }
        Op::Format => {
            let fmt = text(0)?;
            let rest = all_values(&args[1.min(args.len())..]);
            charge_created(fmt.len().saturating_add(format_padding(&fmt)).saturating_add(printed_sum(&rest)), 0)
        }
        Op::Print(factor) => charge_created(arg(0).map_or(0, |v| printed_len(v, MAX_VALUE_BYTES)).saturating_mul(factor), 0),
        Op::List => charge_created(0, arg(0).map_or(0, |v| v.as_str().map_or_else(|| items(v), |s| s.chars().count()))),
        Op::Split => {
            let s = text(0)?;
            let sep = arg(1).map(|v| as_text(Some(v))).transpose()?;
            charge_created(s.len(), pieces(&s, sep.as_deref()))
        }
        Op::Lines => {
            let s = text(0)?;
            charge_created(s.len(), s.matches('\n').count().saturating_add(1))
        }
        Op::Grouping => {
            // batch(count, fill) / slice(slices, fill): `count` groups or fill items.
            charge_created(0, largest_int(&args[1.min(args.len())..]).saturating_add(arg(0).map_or(0, items)))
        }
        Op::Map => {
            // `map('name', args...)` applies a filter to every item; `map(attribute=...)` only
            // picks values (nothing new is made).
            let (Some(seq), Some(filter)) = (arg(0), arg(1).and_then(Value::as_str)) else { return Ok(()) };
            let op = filter_op(filter);
            let Ok(iter) = seq.try_iter() else { return Ok(()) };
            for item in iter.take(MAX_ITEMS) {
                let mut one = Vec::with_capacity(args.len() - 1);
                one.push(item);
                one.extend(args[2..].iter().cloned());
                match op {
                    // A filter without an estimate: a case or whitespace change, at most 3x.
                    Op::Any | Op::Map | Op::Stringify | Op::Call => charge_created(printed_len(&one[0], MAX_VALUE_BYTES).saturating_mul(3), 0)?,
                    op => estimate(op, &one)?,
                }
            }
            Ok(())
        }
        Op::Any | Op::Call | Op::Stringify => Ok(()),
    }
}

/// Operations with their own estimate ([`estimate`]); every other filter or method only
/// has its operands' lengths checked and its result charged.
#[derive(Clone, Copy)]
enum Op {
    Replace,
    JoinFilter,
    JoinMethod,
    Indent,
    Format,
    /// Prints its operand, into at most `factor` times its printed bytes (escaping).
    Print(usize),
    List,
    Split,
    Lines,
    Grouping,
    /// `map('filter', ...)`: the filter's estimate for every item.
    Map,
    /// Converts every argument to a string (`upper`, `trim`, `raise_exception`).
    Stringify,
    /// A function call or slice: no argument is converted to a string.
    Call,
    Any,
}

/// A filter's estimate, by name.
fn filter_op(name: &str) -> Op {
    match name {
        "replace" => Op::Replace,
        "join" => Op::JoinFilter,
        "indent" => Op::Indent,
        "format" => Op::Format,
        "string" | "pprint" => Op::Print(2),
        "escape" | "e" | "forceescape" => Op::Print(6),
        "urlencode" => Op::Print(3),
        "list" => Op::List,
        "split" => Op::Split,
        "lines" => Op::Lines,
        "batch" | "slice" => Op::Grouping,
        "map" => Op::Map,
        "safe" | "lower" | "upper" | "title" | "capitalize" | "trim" => Op::Stringify,
        _ => Op::Any,
    }
}

/// A method's estimate (object first), by name.
fn method_op(name: &str) -> Op {
    match name {
        "replace" => Op::Replace,
        "join" => Op::JoinMethod,
        "format" => Op::Format,
        "split" | "rsplit" => Op::Split,
        "splitlines" => Op::Lines,
        "center" | "ljust" | "rjust" | "zfill" | "expandtabs" => Op::Indent,
        _ => Op::Any,
    }
}

/// The function the rewritten program calls to check an operation's operands.
fn check_function(op: Op) -> &'static str {
    match op {
        Op::Replace => "pensive:replace",
        Op::JoinFilter => "pensive:join",
        Op::JoinMethod => "pensive:join-method",
        Op::Indent => "pensive:indent",
        Op::Format => "pensive:format",
        Op::Print(2) => "pensive:print",
        Op::Print(3) => "pensive:urlencode",
        Op::Print(_) => "pensive:escape",
        Op::List => "pensive:list",
        Op::Split => "pensive:split",
        Op::Lines => "pensive:lines",
        Op::Grouping => "pensive:grouping",
        Op::Map => "pensive:map",
        Op::Stringify => "pensive:stringify",
        Op::Call => "pensive:call",
        Op::Any => "pensive:check",
    }
}

const CHECKS: [Op; 16] = [
    Op::Any,
    Op::Call,
    Op::Stringify,
    Op::Replace,
    Op::JoinFilter,
    Op::JoinMethod,
    Op::Indent,
    Op::Format,
    Op::Print(2),
    Op::Print(3),
    Op::Print(6),
    Op::List,
    Op::Split,
    Op::Lines,
    Op::Grouping,
    Op::Map,
];

const CONCAT: &str = "pensive:concat";
const ADD: &str = "pensive:add";
const MUL: &str = "pensive:mul";
const EMIT: &str = "pensive:emit";
const RAW: &str = "pensive:raw";
const MADE: &str = "pensive:made";
const CONTAINS: &str = "pensive:contains";

/// `a ~ b`: both print into the new string.
fn check_concat(a: Value, b: Value) -> Result<Value, minijinja::Error> {
    let len = printed_len(&a, MAX_VALUE_BYTES).saturating_add(printed_len(&b, MAX_VALUE_BYTES));
    charge_created(len, 0)?;
    Ok(Value::from(vec![a, b]))
}

/// `a + b`: strings concatenate, lists chain (lazily: only their length is bounded).
fn check_add(a: Value, b: Value) -> Result<Value, minijinja::Error> {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        charge_created(x.len().saturating_add(y.len()), 0)?;
    } else if items(&a) > 0 || items(&b) > 0 {
        let n = items(&a).saturating_add(items(&b));
        if n > MAX_ITEMS {
            return Err(limit(format!("an operation would make a list of more than {MAX_ITEMS} items")));
        }
    }
    Ok(Value::from(vec![a, b]))
}

/// `a * b`: a string or list repeated.
fn check_mul(a: Value, b: Value) -> Result<Value, minijinja::Error> {
    let times = |v: &Value| v.as_i64().map_or(0, |n| usize::try_from(n).unwrap_or(0));
    if let Some(s) = a.as_str().or(b.as_str()) {
        let n = if a.as_str().is_some() { times(&b) } else { times(&a) };
        charge_created(s.len().saturating_mul(n), 0)?;
    } else if matches!(a.kind(), ValueKind::Seq | ValueKind::Iterable) || matches!(b.kind(), ValueKind::Seq | ValueKind::Iterable) {
        let (seq, n) = if items(&a) > 0 { (&a, times(&b)) } else { (&b, times(&a)) };
        charge_created(0, items(seq).saturating_mul(n))?;
    }
    Ok(Value::from(vec![a, b]))
}

/// `needle in container` (and the `in` test): a string container converts the needle to a
/// string.
fn check_contains(args: Rest<Value>) -> Result<Value, minijinja::Error> {
    if let [needle, container, ..] = args.0.as_slice() {
        if container.as_str().is_some() {
            printable(needle)?;
        }
    }
    Ok(Value::from(args.0))
}

/// `{{ value }}`: what it prints is output.
fn check_emit(value: Value) -> Result<Value, minijinja::Error> {
    let left = BUDGET.with(|b| MAX_OUTPUT_BYTES.saturating_sub(b.get().output));
    charge_output(printed_len(&value, left))?;
    Ok(value)
}

/// What a filter, method or function returned: its string bytes and items are charged.
fn charge_made(value: Value) -> Result<Value, minijinja::Error> {
    charge_created(str_len(&value), items(&value))?;
    Ok(value)
}

/// Register the functions the rewritten program calls. Their names contain ':', which no
/// template can write, so a template cannot replace or call them.
pub fn register(env: &mut Environment<'_>) {
    for op in CHECKS {
        env.add_function(check_function(op), move |args: Rest<Value>| -> Result<Value, minijinja::Error> {
            estimate(op, &args)?;
            Ok(Value::from(args.0))
        });
    }
    env.add_function(CONCAT, check_concat);
    env.add_function(ADD, check_add);
    env.add_function(MUL, check_mul);
    env.add_function(EMIT, check_emit);
    env.add_function(RAW, |bytes: usize| -> Result<(), minijinja::Error> { charge_output(bytes) });
    env.add_function(MADE, charge_made);
    env.add_function(CONTAINS, check_contains);
}

/// The template as minijinja compiles it with transformers' whitespace rules (see chat.rs).
///
/// minijinja computes constant expressions while it compiles (`'x' * 99999999` becomes a
/// 100 MB constant, and a template can hold many): their sizes are estimated from the
/// syntax tree first, and a template whose constants pass the limits is refused here.
///
/// `checked`: the same source already passed that check (a template is checked once, when it
/// is created, and compiled again for each render).
pub fn compile<'s>(name: &'s str, source: &'s str, checked: bool) -> Result<CompiledTemplate<'s>, minijinja::Error> {
    let ws_config = WhitespaceConfig { keep_trailing_newline: false, lstrip_blocks: true, trim_blocks: true };
    if !checked {
        let ast = machinery::parse(source, name, SyntaxConfig, ws_config)?;
        let tree = serde_json::to_value(&ast)
            .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("chat template syntax tree: {e}")))?;
        let mut folded = 0u128;
        constant_size(&tree, &mut folded)?;
    }
    let config = TemplateConfig {
        syntax_config: SyntaxConfig,
        ws_config,
        default_auto_escape: Arc::new(|_: &str| AutoEscape::None),
    };
    CompiledTemplate::new(name, source, &config)
}

/// What a constant expression evaluates to, as far as its size goes.
#[derive(Clone, Copy)]
struct Constant {
    /// Bytes it prints as (a string's own length).
    bytes: u128,
    /// Items, for a list or map.
    items: u128,
    /// Its value, for an integer (a repeat count).
    int: Option<i128>,
    /// Whether it is a string (repeats and joins by `+`).
    text: bool,
}

impl Constant {
    fn scalar(bytes: u128) -> Self {
        Self { bytes, items: 0, int: None, text: false }
    }
}

/// Walk the serialized syntax tree (`{"expr": kind, "inner": [node, span]}`): the size of
/// each constant expression minijinja will compute at compile time, refused past the
/// limits; `folded` sums the largest ones. `None` for an expression that is not constant
/// (its constant parts are still checked).
fn constant_size(node: &serde_json::Value, folded: &mut u128) -> Result<Option<Constant>, minijinja::Error> {
    use serde_json::Value as J;
    let children = |node: &J, folded: &mut u128| -> Result<(), minijinja::Error> {
        match node {
            J::Array(items) => items.iter().try_for_each(|v| constant_size(v, folded).map(drop)),
            J::Object(map) => map.values().try_for_each(|v| constant_size(v, folded).map(drop)),
            _ => Ok(()),
        }
    };
    let J::Object(map) = node else {
        children(node, folded)?;
        return Ok(None);
    };
    let (Some(J::String(kind)), Some(inner)) = (map.get("expr"), map.get("inner").and_then(|i| i.get(0))) else {
        children(node, folded)?;
        return Ok(None);
    };
    let constant = match kind.as_str() {
        "Const" => Some(match inner.get("value") {
            Some(J::String(s)) => Constant { bytes: s.len() as u128, items: 0, int: None, text: true },
            Some(J::Number(n)) => Constant { bytes: 24, items: 0, int: n.as_i64().map(i128::from), text: false },
            Some(J::Array(items)) => Constant { bytes: 2 + 4 * items.len() as u128, items: items.len() as u128, int: None, text: false },
            Some(other) => Constant::scalar(other.to_string().len() as u128),
            None => Constant::scalar(0),
        }),
        "List" | "Map" => {
            let mut all = Some(Constant { bytes: 2, items: 0, int: None, text: false });
            let parts: Vec<&J> = match inner {
                J::Object(o) => o.values().flat_map(|v| v.as_array().into_iter().flatten()).collect(),
                _ => Vec::new(),
            };
            for part in parts {
                let c = constant_size(part, folded)?;
                all = match (all, c) {
                    (Some(a), Some(c)) => Some(Constant { bytes: a.bytes + c.bytes * 2 + 4, items: a.items + 1, ..a }),
                    _ => None,
                };
            }
            all
        }
        "UnaryOp" => constant_size(inner.get("expr").unwrap_or(&J::Null), folded)?.map(|c| Constant { int: c.int.map(i128::saturating_neg), ..c }),
        "BinOp" => {
            let left = constant_size(inner.get("left").unwrap_or(&J::Null), folded)?;
            let right = constant_size(inner.get("right").unwrap_or(&J::Null), folded)?;
            match (left, right, inner.get("op").and_then(J::as_str)) {
                (Some(a), Some(b), Some(op)) => Some(combine(op, a, b)),
                _ => None,
            }
        }
        _ => {
            children(inner, folded)?;
            None
        }
    };
    if let Some(c) = constant {
        if c.bytes > MAX_VALUE_BYTES as u128 || c.items > MAX_ITEMS as u128 {
            return Err(limit(format!(
                "a constant expression would make {} bytes / {} items at compile time",
                c.bytes, c.items
            )));
        }
        *folded += c.bytes + c.items * ITEM_BYTES as u128;
        if *folded > MAX_CREATED_BYTES as u128 {
            return Err(limit(format!("its constant expressions would make more than {MAX_CREATED_BYTES} bytes")));
        }
    }
    Ok(constant)
}

/// The size of `a op b` for constant operands (bounded from above).
fn combine(op: &str, a: Constant, b: Constant) -> Constant {
    let count = |c: &Constant| c.int.map_or(0, |n| n.max(0) as u128);
    let int = |f: fn(i128, i128) -> i128| match (a.int, b.int) {
        (Some(x), Some(y)) => Constant { bytes: 24, items: 0, int: Some(f(x, y)), text: false },
        _ => Constant::scalar(a.bytes.saturating_add(b.bytes)),
    };
    match op {
        "Mul" if a.int.is_some() && b.int.is_some() => int(i128::saturating_mul),
        "Mul" => {
            let (seq, n) = if a.int.is_some() { (b, count(&a)) } else { (a, count(&b)) };
            Constant { bytes: seq.bytes.saturating_mul(n), items: seq.items.saturating_mul(n), int: None, text: seq.text }
        }
        "Pow" => int(|x, y| u32::try_from(y).ok().and_then(|y| x.checked_pow(y)).unwrap_or(i128::MAX)),
        "Add" if a.int.is_some() && b.int.is_some() => int(i128::saturating_add),
        "Sub" => int(|x, y| x.saturating_abs().saturating_add(y.saturating_abs())),
        "FloorDiv" | "Div" => int(|x, _| x.saturating_abs()),
        "Rem" => int(|_, y| y.saturating_abs()),
        "Add" | "Concat" => Constant {
            bytes: a.bytes.saturating_add(b.bytes),
            items: a.items.saturating_add(b.items),
            int: None,
            text: a.text || b.text || op == "Concat",
        },
        // Comparisons, `in`, `and`/`or`: a boolean or one of the operands.
        _ => Constant { bytes: a.bytes.max(b.bytes), items: a.items.max(b.items), int: a.int.or(b.int), text: a.text || b.text },
    }
}

/// `code` with the checks of this module around every instruction that makes a value or
/// writes output; jump targets follow the instructions they pointed at.
fn guard<'s>(code: &Instructions<'s>) -> Instructions<'s> {
    let mut out = Instructions::new(code.name(), code.source());
    // starts[i]: where old instruction i begins in `out` (one past the end for the end).
    let mut starts: Vec<u32> = Vec::with_capacity(code.len() + 1);
    for i in 0..code.len() as u32 {
        starts.push(out.len() as u32);
        let Some(instruction) = code.get(i) else { break };
        let span = code.get_span(i);
        let line = code.get_line(i);
        let mut add = |ins: Instruction<'s>| match (span, line) {
            (Some(span), _) => out.add_with_span(ins, span),
            (None, Some(line)) => out.add_with_line(ins, u16::try_from(line).unwrap_or(u16::MAX)),
            (None, None) => out.add(ins),
        };
        // Operands pass through a check that returns them as a list, unpacked back onto the
        // stack for the instruction itself.
        let checked = |add: &mut dyn FnMut(Instruction<'s>) -> u32, check: &'static str, argc: Option<u16>| {
            add(Instruction::CallFunction(check, argc));
            // UnpackLists pushes the items in order, then their count: a call with `*args`
            // keeps its count on top of the stack, any other call drops it.
            add(Instruction::UnpackLists(1));
            if argc.is_some() {
                add(Instruction::DiscardTop);
            }
        };
        match instruction {
            Instruction::EmitRaw(text) => {
                add(Instruction::LoadConst(Value::from(text.len())));
                add(Instruction::CallFunction(RAW, Some(1)));
                add(Instruction::DiscardTop);
                add(instruction.clone());
            }
            Instruction::Emit => {
                add(Instruction::CallFunction(EMIT, Some(1)));
                add(Instruction::Emit);
            }
            Instruction::StringConcat => {
                checked(&mut add, CONCAT, Some(2));
                add(instruction.clone());
            }
            Instruction::Add => {
                checked(&mut add, ADD, Some(2));
                add(instruction.clone());
            }
            Instruction::Mul => {
                checked(&mut add, MUL, Some(2));
                add(instruction.clone());
            }
            Instruction::In => {
                checked(&mut add, CONTAINS, Some(2));
                add(instruction.clone());
            }
            Instruction::PerformTest(name, argc, _) if *name == "in" => {
                checked(&mut add, CONTAINS, *argc);
                add(instruction.clone());
            }
            Instruction::Slice => {
                checked(&mut add, check_function(Op::Call), Some(4));
                add(instruction.clone());
                add(Instruction::CallFunction(MADE, Some(1)));
            }
            Instruction::ApplyFilter(name, argc, _) => {
                checked(&mut add, check_function(filter_op(name)), *argc);
                add(instruction.clone());
                add(Instruction::CallFunction(MADE, Some(1)));
            }
            Instruction::CallMethod(name, argc) => {
                checked(&mut add, check_function(method_op(name)), *argc);
                add(instruction.clone());
                add(Instruction::CallFunction(MADE, Some(1)));
            }
            // `loop(...)` recurses by jumping and `super()` renders a block: both return to
            // the next instruction like a call, but leave them as they are.
            Instruction::CallFunction(name, argc) if !matches!(*name, "loop" | "super") => {
                let op = if *name == "raise_exception" { Op::Stringify } else { Op::Call };
                checked(&mut add, check_function(op), *argc);
                add(instruction.clone());
                add(Instruction::CallFunction(MADE, Some(1)));
            }
            other => {
                add(other.clone());
            }
        }
    }
    starts.push(out.len() as u32);
    let end = out.len() as u32;
    let moved = |target: &mut u32| *target = starts.get(*target as usize).copied().unwrap_or(end);
    for j in 0..out.len() as u32 {
        if let Some(
            Instruction::Jump(t)
            | Instruction::JumpIfFalse(t)
            | Instruction::JumpIfFalseOrPop(t)
            | Instruction::JumpIfTrueOrPop(t)
            | Instruction::Iterate(t)
            | Instruction::BuildMacro(_, t, _),
        ) = out.get_mut(j)
        {
            moved(t);
        }
    }
    out
}

/// Render `compiled` with `root` as its context in `env` (which has [`register`]ed), within
/// the limits above.
pub fn render<'s>(env: &'s Environment<'s>, compiled: &CompiledTemplate<'s>, root: Value) -> Result<String, minijinja::Error> {
    let instructions = guard(&compiled.instructions);
    let blocks: BTreeMap<&'s str, Instructions<'s>> = compiled.blocks.iter().map(|(name, code)| (*name, guard(code))).collect();
    BUDGET.with(|b| b.set(Budget::default()));
    let mut text = String::new();
    let result = Vm::new(env).eval(&instructions, root, &blocks, &mut machinery::make_string_output(&mut text), AutoEscape::None);
    BUDGET.with(|b| b.set(Budget::default()));
    result.map(|_| text)
}

/// The limit a failed render ran into, if that is why it failed.
pub fn exceeded(error: &minijinja::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(limit) = e.downcast_ref::<LimitExceeded>() {
            return Some(limit.0.clone());
        }
        source = e.source();
    }
    None
}
