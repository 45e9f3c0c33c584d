//! The engine: a loaded model, its tokenizer and chat template, and at most one generation
//! in flight. The CLI and the browser bindings are thin shells around this one type, so
//! native and web share every step from bytes to events.

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError};
use crate::chat::{ChatError, ChatTemplate, Message, TemplateVariables};
use crate::config::ModelConfig;
use crate::transcript::Transcript;
pub use crate::builder::{AnyBackend, BackendChoice, EngineLoader, LoadOptions};
use crate::builder::check_vocab;
use crate::generate::{self, Event, GenerateError, GenerateOptions, Generation, ScoreResult};
use crate::loader::{LoadError, LoadedModel};
use crate::sampler::SamplerOptions;
use crate::thinking::ThinkingOptions;
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("a generation is already running; abort it or wait for its `done` event")]
    Busy,
    #[error("no generation is running")]
    Idle,
    #[error("backend '{0}' is not available: {1}")]
    BackendUnavailable(String, String),
    /// The model needs more memory than the backend can address (the CPU backend in a page:
    /// wasm32's 4 GiB).
    #[error("the model needs about {} MiB, more than the {} MiB this backend can hold", need >> 20, limit >> 20)]
    TooLarge { need: u64, limit: u64 },
}

impl EngineError {
    /// A stable machine-readable code (the JS `PensiveError.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Load(LoadError::Config(crate::config::ConfigError::UnsupportedArch(_))) => "unsupported_model",
            Self::Load(LoadError::Io(_)) => "io",
            Self::Load(_) => "model_format",
            Self::Tokenizer(TokenizerError::UnsupportedModel(_) | TokenizerError::UnsupportedPreTokenizer(_)) => {
                "unsupported_model"
            }
            Self::Tokenizer(_) => "model_format",
            Self::Chat(_) => "chat_template",
            Self::Generate(GenerateError::PromptTooLong { .. }) => "context_overflow",
            Self::Generate(GenerateError::Backend(BackendError::ContextFull { .. }))
            | Self::Backend(BackendError::ContextFull { .. }) => "context_overflow",
            Self::Generate(GenerateError::Backend(BackendError::DeviceLost(_))) | Self::Backend(BackendError::DeviceLost(_)) => {
                "device_lost"
            }
            Self::Generate(GenerateError::Backend(_)) | Self::Backend(_) => "backend",
            Self::Generate(_) | Self::InvalidOptions(_) => "invalid_options",
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::BackendUnavailable(..) => "backend_unavailable",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// What to respond to: raw text (no template; BOS only if the model's metadata asks for it)
/// or a conversation rendered through the model's chat template.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

/// A continuation to score: text (tokenized without BOS) or ids.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Continuation {
    Text(String),
    Ids(Vec<u32>),
}

/// Generation options as users write them (CLI flags, JS objects): flat, snake_case, every
/// field optional, unknown fields refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateRequest {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    /// `None`: the engine draws a fresh seed for this request and reports it in
    /// `done.stats.seed`, so that asking again gives another answer and any one answer can be
    /// reproduced.
    pub seed: Option<u64>,
    /// OpenAI's `logit_bias`: token id → bias added to its logit, in [-100, 100].
    pub logit_bias: std::collections::BTreeMap<u32, f32>,
    /// Put `logprob` on every sampled token event.
    pub logprobs: bool,
    /// Also put the this many most likely alternatives on it (at most 20; needs `logprobs`).
    pub top_logprobs: Option<usize>,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Let stop strings end the generation inside thinking too (default: answer only).
    pub stop_in_thinking: bool,
    pub thinking: Option<ThinkingOptions>,
    /// Extra chat template variables (vLLM's name), e.g. `{"enable_thinking": false}`.
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// A raw text prompt's special-token texts ("<|im_start|>") become those tokens, for a
    /// page that writes the chat format itself. Message contents never do.
    pub special_tokens_in_text: bool,
}

impl GenerateRequest {
    pub fn into_options(self) -> Result<GenerateOptions, EngineError> {
        let d = SamplerOptions::default();
        let sampler = SamplerOptions {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(d.repeat_last_n),
            seed: self.seed.unwrap_or_else(draw_seed),
            logit_bias: self.logit_bias,
        };
        sampler.validate().map_err(|e| EngineError::InvalidOptions(e.to_string()))?;
        if let Some(t) = &self.thinking {
            t.validate().map_err(|e| EngineError::InvalidOptions(e.to_string()))?;
        }
        if self.max_tokens == Some(0) {
            return Err(EngineError::InvalidOptions("max_tokens must be at least 1".into()));
        }
        let top_logprobs = self.top_logprobs.unwrap_or(0);
        if top_logprobs > 0 && !self.logprobs {
            return Err(EngineError::InvalidOptions("top_logprobs needs logprobs: true".into()));
        }
        Ok(GenerateOptions {
            logprobs: self.logprobs.then_some(top_logprobs),
            max_tokens: self.max_tokens.unwrap_or(GenerateOptions::default().max_tokens),
            stop: self.stop,
            stop_in_thinking: self.stop_in_thinking,
            sampler,
            thinking: self.thinking,
        })
    }
}

/// Largest seed a request reports: 2^53 − 1, JavaScript's `Number.MAX_SAFE_INTEGER`, so a
/// seed read from `done.stats` in a page and passed back is the very same number.
pub const MAX_DRAWN_SEED: u64 = (1 << 53) - 1;

/// A fresh seed for a request that brought none: the operating system's entropy (in a page,
/// `crypto.getRandomValues`), else the clock mixed with a counter, so that two requests in a
/// row never share one.
pub fn draw_seed() -> u64 {
    static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let fallback = || {
        let n = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut rng = crate::sampler::Rng::new(generate::monotonic_seconds().to_bits() ^ n.rotate_left(32));
        rng.next_u64()
    };
    getrandom::u64().unwrap_or_else(|_| fallback()) & MAX_DRAWN_SEED
}

// Message contents through the template without token injection: each special-token text a
// user wrote is wrapped in two private-use characters before rendering; after rendering the
// marks are removed and what they enclosed is tokenized as plain text. Contents that hold no
// special-token text pass unchanged, so their prompt ids are exactly llama.cpp's.
const LITERAL_OPEN: char = '\u{F8FE}';
const LITERAL_CLOSE: char = '\u{F8FF}';

/// `m` with each special-token text in its content marked as literal (and any mark
/// characters of its own replaced, so that a user cannot forge one).
fn mark_literals(t: &Tokenizer, m: &Message) -> Result<Message, TokenizerError> {
    let content = m.content.replace([LITERAL_OPEN, LITERAL_CLOSE], "\u{FFFD}");
    let mut out = String::with_capacity(content.len());
    let mut at = 0;
    for span in t.special_spans(&content)? {
        let Some(text) = content.get(span.clone()) else { continue };
        if m.role == "assistant" && matches!(text, "<think>" | "</think>") {
            continue;
        }
        out.push_str(content.get(at..span.start).unwrap_or_default());
        out.push(LITERAL_OPEN);
        out.push_str(text);
        out.push(LITERAL_CLOSE);
        at = span.end;
    }
    out.push_str(content.get(at..).unwrap_or_default());
    Ok(Message { role: m.role.clone(), content: out })
}

/// The rendered prompt without the literal marks, and the byte ranges they enclosed (an
/// opening mark the template cut from its closing one extends to the end).
fn take_literal_marks(rendered: &str) -> (String, Vec<std::ops::Range<usize>>) {
    let mut text = String::with_capacity(rendered.len());
    let mut ranges = Vec::new();
    let mut open: Option<usize> = None;
    for c in rendered.chars() {
        match c {
            LITERAL_OPEN => open = open.or(Some(text.len())),
            LITERAL_CLOSE => {
                if let Some(start) = open.take() {
                    ranges.push(start..text.len());
                }
            }
            c => text.push(c),
        }
    }
    if let Some(start) = open {
        ranges.push(start..text.len());
    }
    (text, ranges)
}

/// What the engine runs, for display.
#[derive(Clone, Debug, Serialize)]
pub struct EngineInfo {
    pub backend: String,
    /// Why `auto` runs on the CPU rather than WebGPU (no adapter, or one that cannot hold
    /// the model); `None` when the backend is the one asked for.
    pub fallback_reason: Option<String>,
    pub config: ModelConfig,
    pub vocab_size: usize,
    pub max_context: usize,
    pub has_chat_template: bool,
}

pub struct Engine {
    /// The KV cache and the ids in it: the one owner of both.
    transcript: Transcript<AnyBackend>,
    /// The request in flight, stepped on `transcript`.
    active: Option<Generation<Rc<Tokenizer>>>,
    tokenizer: Rc<Tokenizer>,
    chat: Option<ChatTemplate>,
}

impl Engine {
    /// Build an engine from loaded tensors and a tokenizer (from the GGUF header when
    /// `tokenizer` is `None`).
    pub async fn new(mut model: LoadedModel, tokenizer: Option<Tokenizer>, options: &LoadOptions) -> Result<Self, EngineError> {
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => match &model.gguf {
                Some(h) => Tokenizer::from_gguf(&h.metadata)?,
                None => return Err(EngineError::InvalidOptions("a safetensors model needs a tokenizer.json".into())),
            },
        };
        check_vocab(&tokenizer, &model.config)?;
        model.gguf = None; // the metadata is not needed past this point
        let backend = AnyBackend::new(model, options).await?;
        Self::with_backend(backend, tokenizer)
    }

    /// Wrap a built backend (the streaming loader builds a GPU model as the bytes arrive).
    pub(crate) fn with_backend(backend: AnyBackend, tokenizer: Tokenizer) -> Result<Self, EngineError> {
        let chat = tokenizer.chat_template().map(ChatTemplate::new).transpose()?;
        Ok(Self { transcript: Transcript::new(backend)?, active: None, tokenizer: Rc::new(tokenizer), chat })
    }

    /// Free the model now. Dropping the engine frees it too, except on the web, where a
    /// dropped wgpu buffer only becomes garbage for the JS collector (wgpu's WebGPU backend
    /// does not destroy it): destroying the engine's own device releases every GPU buffer at
    /// once.
    pub fn dispose(mut self) {
        self.abort();
        if let AnyBackend::Gpu(m) = self.transcript.backend() {
            m.context().device.destroy();
        }
    }

    /// Whether a GPU engine may submit the next decode step before the host has read the
    /// previous token (on by default): the token is fed on the GPU, and a step the host
    /// then does not want is dropped, so the tokens never depend on it, only the speed.
    pub fn set_run_ahead(&mut self, on: bool) {
        if let AnyBackend::Gpu(m) = self.transcript.backend_mut() {
            m.set_run_ahead(on);
        }
    }

    /// Steps run ahead that their request claimed, and steps dropped (a GPU engine only).
    pub fn run_ahead_stats(&self) -> Option<crate::gpu::AheadStats> {
        match self.transcript.backend() {
            AnyBackend::Gpu(m) => Some(m.ahead_stats()),
            AnyBackend::Cpu { .. } => None,
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Whether the engine can still run the model: `false` once its GPU device was lost
    /// (every request then fails with `device_lost`; load the model again).
    pub fn usable(&self) -> bool {
        self.lost_reason().is_none()
    }

    /// Why the engine's GPU device was lost, once it has been.
    pub fn lost_reason(&self) -> Option<String> {
        match self.transcript.backend() {
            AnyBackend::Gpu(m) => m.lost_reason(),
            AnyBackend::Cpu { .. } => None,
        }
    }

    /// The loss and fault reports of the engine's GPU device (shared with its callbacks), for
    /// callers that must ask while a step holds the engine (the browser bindings).
    pub fn device_faults(&self) -> Option<std::sync::Arc<crate::gpu::DeviceFaults>> {
        match self.transcript.backend() {
            AnyBackend::Gpu(m) => Some(std::sync::Arc::clone(&m.context().faults)),
            AnyBackend::Cpu { .. } => None,
        }
    }

    /// A request on a lost device fails at once rather than at its first step.
    fn check_usable(&self) -> Result<(), EngineError> {
        match self.lost_reason() {
            Some(why) => Err(BackendError::DeviceLost(why).into()),
            None => Ok(()),
        }
    }

    pub fn info(&self) -> Result<EngineInfo, EngineError> {
        let b = self.transcript.backend();
        Ok(EngineInfo {
            backend: b.name(),
            fallback_reason: b.fallback_reason().map(String::from),
            config: b.config().clone(),
            vocab_size: self.tokenizer.vocab_size(),
            max_context: b.max_context(),
            has_chat_template: self.chat.is_some(),
        })
    }

    /// The prompt's token ids: raw text (BOS if the model asks for it) or the conversation
    /// through the chat template, given `template_kwargs` as extra variables, with the
    /// generation prompt appended.
    ///
    /// No text from a message becomes a special token: only what the template itself writes
    /// can (the one exception: `<think>`/`</think>` in assistant messages, which templates
    /// such as Qwen3's parse to strip old reasoning). Raw text is plain too unless
    /// `special_tokens_in_text`, for pages that write the template themselves.
    pub fn prompt_ids(&self, prompt: &Prompt, template_kwargs: Option<&TemplateVariables>) -> Result<Vec<u32>, EngineError> {
        self.prompt_ids_with(prompt, template_kwargs, false)
    }

    /// [`Engine::prompt_ids`], choosing whether special-token texts in a raw text prompt are
    /// those tokens.
    pub fn prompt_ids_with(
        &self,
        prompt: &Prompt,
        template_kwargs: Option<&TemplateVariables>,
        special_tokens_in_text: bool,
    ) -> Result<Vec<u32>, EngineError> {
        let t = &self.tokenizer;
        match prompt {
            Prompt::Text(text) if special_tokens_in_text => Ok(t.encode(text, t.add_bos())?),
            Prompt::Text(text) => Ok(t.bos().filter(|_| t.add_bos()).into_iter().chain(t.encode_plain(text)?).collect()),
            Prompt::Messages(messages) => {
                let chat = self
                    .chat
                    .as_ref()
                    .ok_or_else(|| EngineError::InvalidOptions("this model has no chat template".into()))?;
                let token_text = |id: Option<u32>| id.and_then(|i| t.token_text(i)).unwrap_or_default();
                let (bos, eos) = (token_text(t.bos()), token_text(t.eos()));
                let marked = messages.iter().map(|m| mark_literals(t, m)).collect::<Result<Vec<_>, _>>()?;
                let text = chat.render_with(&marked, true, &bos, &eos, template_kwargs.unwrap_or(&TemplateVariables::new()))?;
                let (text, literals) = take_literal_marks(&text);
                // Templates that write the BOS themselves must not get a second one.
                let add_bos = t.add_bos() && !t.bos().is_some_and(|b| text.starts_with(&token_text(Some(b))));
                Ok(t.encode_with_literals(&text, &literals, add_bos)?)
            }
        }
    }

    /// Begin generating a response; step it with [`Engine::next_event`]. The whole prompt
    /// goes to the generation; the transcript reuses whatever prefix of it is cached, which
    /// changes the cost of the request and nothing else.
    pub fn start(&mut self, prompt: &Prompt, request: GenerateRequest) -> Result<(), EngineError> {
        if self.active.is_some() {
            return Err(EngineError::Busy);
        }
        self.check_usable()?;
        let template_kwargs = request.chat_template_kwargs.clone();
        let special_tokens_in_text = request.special_tokens_in_text;
        let options = request.into_options()?;
        let ids = self.prompt_ids_with(prompt, template_kwargs.as_ref(), special_tokens_in_text)?;
        if ids.is_empty() {
            return Err(EngineError::InvalidOptions("the prompt is empty".into()));
        }
        let generation = Generation::new(&mut self.transcript, Rc::clone(&self.tokenizer), &ids, options)?;
        self.active = Some(generation);
        Ok(())
    }

    /// The next event of the running generation; `None` once it has finished.
    pub async fn next_event(&mut self) -> Result<Option<Event>, EngineError> {
        let Some(g) = self.active.as_mut() else { return Ok(None) };
        match g.next_event(&mut self.transcript).await {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => {
                self.finish()?;
                Ok(None)
            }
            Err(e) => {
                // The error is the one to report; settling after a failed step can fail too
                // (a lost device), and then the transcript is already as empty as it gets.
                let _ = self.finish();
                Err(e.into())
            }
        }
    }

    /// Stop the running generation (if any). The engine stays usable; the cache keeps what
    /// was fed, and the next request reuses whatever prefix it shares.
    pub fn abort(&mut self) {
        let _ = self.finish();
    }

    /// End the active request: the transcript drops the ids that were never fed.
    fn finish(&mut self) -> Result<(), EngineError> {
        if self.active.take().is_some() {
            self.transcript.settle()?;
        }
        Ok(())
    }

    /// Whether a generation is in flight.
    pub fn is_busy(&self) -> bool {
        self.active.is_some()
    }

    /// Replace the model's chat template (a Jinja source, as in `tokenizer_config.json`), for
    /// files whose template is missing or wrong.
    pub fn set_chat_template(&mut self, source: &str) -> Result<(), EngineError> {
        self.chat = Some(ChatTemplate::new(source)?);
        Ok(())
    }

    /// Empty the KV cache (the next request computes its whole prompt).
    pub fn clear_cache(&mut self) -> Result<(), EngineError> {
        if self.active.is_some() {
            return Err(EngineError::Busy);
        }
        Ok(self.transcript.clear()?)
    }

    /// The ids the KV cache holds (for tests and diagnostics).
    pub fn cached_ids(&self) -> &[u32] {
        &self.transcript.ids()[..self.transcript.fed()]
    }

    /// Teacher forcing: how the model rates `continuation` after `prompt`.
    pub async fn score(&mut self, prompt: &Prompt, continuation: &Continuation) -> Result<ScoreResult, EngineError> {
        if self.active.is_some() {
            return Err(EngineError::Busy);
        }
        self.check_usable()?;
        let ids = self.prompt_ids(prompt, None)?;
        let cont = match continuation {
            Continuation::Text(text) => self.tokenizer.encode(text, false)?,
            Continuation::Ids(ids) => ids.clone(),
        };
        let result = self
            .transcript
            .with_backend(async |backend: &mut AnyBackend| {
                let result = generate::score(backend, &ids, &cont).await?;
                // The cache now holds the prompt and every continuation token but the last.
                let mut fed = ids.clone();
                fed.extend_from_slice(&cont[..cont.len().saturating_sub(1)]);
                Ok::<_, GenerateError>((result, fed))
            })
            .await?;
        Ok(result)
    }
}
