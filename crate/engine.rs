//! The engine: a loaded model, its tokenizer and chat template, and at most one generation
//! in flight. The CLI and the browser bindings are thin shells around this one type, so
//! native and web share every step from bytes to events.

use std::cell::RefCell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError};
use crate::chat::{ChatError, ChatTemplate, Message};
use crate::config::ModelConfig;
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
            Self::Generate(GenerateError::Backend(_)) | Self::Backend(_) => "backend",
            Self::Generate(_) | Self::InvalidOptions(_) => "invalid_options",
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::BackendUnavailable(..) => "backend_unavailable",
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
    pub seed: Option<u64>,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub thinking: Option<ThinkingOptions>,
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
            seed: self.seed.unwrap_or(d.seed),
        };
        sampler.validate().map_err(|e| EngineError::InvalidOptions(e.to_string()))?;
        if let Some(t) = &self.thinking {
            t.validate().map_err(|e| EngineError::InvalidOptions(e.to_string()))?;
        }
        if self.max_tokens == Some(0) {
            return Err(EngineError::InvalidOptions("max_tokens must be at least 1".into()));
        }
        Ok(GenerateOptions {
            max_tokens: self.max_tokens.unwrap_or(GenerateOptions::default().max_tokens),
            stop: self.stop,
            sampler,
            thinking: self.thinking,
        })
    }
}


/// The engine's backend, shared with the generation in flight. The engine allows one user
/// at a time (a second `start` or a `score` during a generation is refused with `Busy`), so
/// the borrow held across `forward`'s await is never contended.
#[derive(Clone)]
pub struct SharedBackend {
    inner: Rc<RefCell<AnyBackend>>,
    /// A copy, because `Backend::config` returns a reference.
    config: ModelConfig,
}

impl Backend for SharedBackend {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn name(&self) -> String {
        self.inner.borrow().name()
    }
    fn kv_len(&self) -> usize {
        self.inner.borrow().kv_len()
    }
    fn max_context(&self) -> usize {
        self.inner.borrow().max_context()
    }
    fn truncate(&mut self, len: usize) -> Result<(), BackendError> {
        self.inner.borrow_mut().truncate(len)
    }
    #[allow(clippy::await_holding_refcell_ref)]
    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        self.inner.borrow_mut().forward(tokens, n_logits).await
    }
    #[allow(clippy::await_holding_refcell_ref)]
    async fn forward_greedy(&mut self, tokens: &[u32], banned: &[u32]) -> Result<u32, BackendError> {
        self.inner.borrow_mut().forward_greedy(tokens, banned).await
    }
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

type Active = Generation<SharedBackend, Rc<Tokenizer>>;

pub struct Engine {
    backend: SharedBackend,
    active: Option<Active>,
    tokenizer: Rc<Tokenizer>,
    chat: Option<ChatTemplate>,
    /// The ids whose keys and values the cache holds (for prefix reuse across calls).
    cached_ids: Vec<u32>,
    /// Cached positions the active generation started after.
    base: usize,
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
        let backend = SharedBackend { config: backend.config().clone(), inner: Rc::new(RefCell::new(backend)) };
        Ok(Self { backend, active: None, tokenizer: Rc::new(tokenizer), chat, cached_ids: Vec::new(), base: 0 })
    }

    /// Free the model now. Dropping the engine frees it too, except on the web, where a
    /// dropped wgpu buffer only becomes garbage for the JS collector (wgpu's WebGPU backend
    /// does not destroy it): destroying the engine's own device releases every GPU buffer at
    /// once.
    pub fn dispose(mut self) {
        self.abort();
        if let Ok(backend) = self.backend.inner.try_borrow() {
            if let AnyBackend::Gpu(m) = &*backend {
                m.context().device.destroy();
            }
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn info(&self) -> Result<EngineInfo, EngineError> {
        let b = &self.backend;
        Ok(EngineInfo {
            backend: b.name(),
            fallback_reason: b.inner.borrow().fallback_reason().map(String::from),
            config: b.config().clone(),
            vocab_size: self.tokenizer.vocab_size(),
            max_context: b.max_context(),
            has_chat_template: self.chat.is_some(),
        })
    }

    /// The prompt's token ids: raw text (BOS if the model asks for it) or the conversation
    /// through the chat template with the generation prompt appended.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let t = &self.tokenizer;
        match prompt {
            Prompt::Text(text) => Ok(t.encode(text, t.add_bos())?),
            Prompt::Messages(messages) => {
                let chat = self
                    .chat
                    .as_ref()
                    .ok_or_else(|| EngineError::InvalidOptions("this model has no chat template".into()))?;
                let token_text = |id: Option<u32>| id.and_then(|i| t.token_text(i)).unwrap_or_default();
                let text = chat.render(messages, true, &token_text(t.bos()), &token_text(t.eos()))?;
                // Templates that write the BOS themselves must not get a second one.
                let add_bos = t.add_bos() && !t.bos().is_some_and(|b| text.starts_with(&token_text(Some(b))));
                Ok(t.encode(&text, add_bos)?)
            }
        }
    }

    /// Reuse the cached keys and values of the longest common prefix with `ids`; returns
    /// the ids still to feed (at least one, so that there are logits to sample from).
    fn reuse_prefix(&mut self, ids: &[u32]) -> Result<usize, EngineError> {
        let common = self.cached_ids.iter().zip(ids).take_while(|(a, b)| a == b).count();
        let keep = common.min(ids.len().saturating_sub(1)).min(self.backend.kv_len());
        self.backend.truncate(keep)?;
        self.cached_ids.truncate(keep);
        Ok(keep)
    }

    /// Begin generating a response; step it with [`Engine::next_event`].
    pub fn start(&mut self, prompt: &Prompt, request: GenerateRequest) -> Result<(), EngineError> {
        if self.active.is_some() {
            return Err(EngineError::Busy);
        }
        let options = request.into_options()?;
        let ids = self.prompt_ids(prompt)?;
        if ids.is_empty() {
            return Err(EngineError::InvalidOptions("the prompt is empty".into()));
        }
        let keep = self.reuse_prefix(&ids)?;
        let g = Generation::new(self.backend.clone(), Rc::clone(&self.tokenizer), &ids[keep..], options)?;
        self.base = keep;
        self.cached_ids = ids;
        self.active = Some(g);
        Ok(())
    }

    /// The next event of the running generation; `None` once it has finished.
    pub async fn next_event(&mut self) -> Result<Option<Event>, EngineError> {
        let Some(g) = self.active.as_mut() else { return Ok(None) };
        match g.next_event().await {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => {
                self.finish();
                Ok(None)
            }
            Err(e) => {
                self.finish();
                Err(e.into())
            }
        }
    }

    /// Stop the running generation (if any). The engine stays usable; the cache keeps what
    /// was processed, and the next call reuses whatever prefix it shares.
    pub fn abort(&mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(g) = self.active.take() {
            // The cache holds the reused prefix, then this generation's transcript as far
            // as it was fed.
            let mut cached = self.cached_ids[..self.base].to_vec();
            cached.extend_from_slice(g.sequence());
            cached.truncate(self.backend.kv_len());
            self.cached_ids = cached;
        }
    }

    /// Whether a generation is in flight.
    pub fn is_busy(&self) -> bool {
        self.active.is_some()
    }

    /// Teacher forcing: how the model rates `continuation` after `prompt`.
    pub async fn score(&mut self, prompt: &Prompt, continuation: &Continuation) -> Result<ScoreResult, EngineError> {
        if self.active.is_some() {
            return Err(EngineError::Busy);
        }
        let ids = self.prompt_ids(prompt)?;
        let cont = match continuation {
            Continuation::Text(text) => self.tokenizer.encode(text, false)?,
            Continuation::Ids(ids) => ids.clone(),
        };
        self.backend.truncate(0)?;
        self.cached_ids.clear();
        let result = generate::score(&mut self.backend, &ids, &cont).await;
        // Scoring leaves the prompt and continuation in the cache; forget them rather than
        // track which part was fed.
        self.backend.truncate(0)?;
        Ok(result?)
    }
}

