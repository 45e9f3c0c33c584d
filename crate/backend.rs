//! The one interface the generation loop drives: a model with a KV cache.
//!
//! The CPU backend and the WebGPU backend both implement it, so generation, scoring and the
//! thinking-budget controller are written once.

use crate::config::ModelConfig;
use crate::sampler::SamplerOptions;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("sequence of {needed} tokens exceeds the context of {context} tokens")]
    ContextFull { needed: usize, context: usize },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    BadToken { id: u32, vocab: usize },
    #[error("cannot truncate the KV cache to {to}: it holds {len} positions")]
    BadTruncate { to: usize, len: usize },
    #[error("GPU: {0}")]
    Gpu(String),
    /// The GPU device is gone; the model cannot run again (load it again).
    #[error("the WebGPU device was lost ({0}); load the model again")]
    DeviceLost(String),
}

/// What a backend needs to choose the next token itself ([`Backend::forward_sample`]).
#[derive(Clone, Copy, Debug)]
pub struct SampleRequest<'a> {
    pub options: &'a SamplerOptions,
    /// Every id so far (prompt included, the ids being fed too), for the repetition penalty.
    pub history: &'a [u32],
    /// Ids that must not be chosen.
    pub banned: &'a [u32],
    /// This step's uniform, from [`crate::sampler::Sampler::next_uniform`].
    pub uniform: f64,
    /// Also report the argmax of the raw logits (before bans and penalties), which the
    /// loop counts in `ends_suppressed` when a banned id would have won.
    pub raw_argmax: bool,
    /// The uniform the next step will draw, when the caller expects that step to ask the
    /// same (same options and bans) after feeding this one's answer. A backend may then
    /// start it before this answer is read back (run-ahead); the next request claims it only
    /// if it matches, so a wrong guess costs time, never a different token.
    pub ahead: Option<f64>,
}

/// The answer of [`Backend::forward_sample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampledToken {
    /// The chosen id; `None` when no candidate is left (every logit banned or not finite).
    pub id: Option<u32>,
    /// When asked for: the argmax of the raw logits, ties to the lowest id.
    pub raw_argmax: Option<u32>,
}

/// `forward` is async because in the browser a WebGPU readback can only be awaited (there is
/// no blocking `map`); the CPU backend simply completes immediately, and native callers block
/// with [`block_on`]. The trait is used generically (`B: Backend`, or the [`AnyBackend`]-style
/// enum of the engine), not as `dyn Backend`, since async trait methods are not object safe.
#[allow(async_fn_in_trait)]
pub trait Backend {
    fn config(&self) -> &ModelConfig;

    /// Short human-readable name, e.g. "cpu (2 threads)" or "webgpu (llvmpipe)".
    fn name(&self) -> String;

    /// Positions currently held in the KV cache (= tokens processed and kept).
    fn kv_len(&self) -> usize;

    /// Longest sequence the cache can hold.
    fn max_context(&self) -> usize;

    /// Forget every cached position at or after `len` (`len <= kv_len()`). Used to roll back
    /// tokens (e.g. a multi-token end-of-thinking marker) before inserting others.
    fn truncate(&mut self, len: usize) -> Result<(), BackendError>;

    /// Run `tokens` at positions `kv_len()..kv_len()+tokens.len()`, appending their keys and
    /// values to the cache, and return the logits of the last `n_logits` of them:
    /// (n_logits, vocab_size) row-major. `n_logits` may be 0 (prefill only).
    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError>;

    /// Greedy fast path: run `tokens` and return the argmax of the last position's logits
    /// with `banned` ids excluded (the budget controller's masks). A GPU backend does this on
    /// the device and reads back 4 bytes instead of the vocabulary's logits.
    async fn forward_greedy(&mut self, tokens: &[u32], banned: &[u32]) -> Result<u32, BackendError> {
        let mut logits = self.forward(tokens, 1).await?;
        for &id in banned {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(crate::ops::argmax(&logits) as u32)
    }

    /// Sampling fast path: run `tokens` and choose the next token as
    /// [`crate::sampler::sample_with_uniform`] would from the last position's logits, on the
    /// backend. `None` (nothing ran) when this backend does not sample itself or cannot take
    /// this request (e.g. more banned ids than it holds); the caller then runs `forward` and
    /// samples on the host with the same uniform.
    async fn forward_sample(&mut self, tokens: &[u32], request: &SampleRequest<'_>) -> Option<Result<SampledToken, BackendError>> {
        let _ = (tokens, request);
        None
    }
}

/// Lets a `Generation` borrow a backend (`&mut cpu`) as well as own one (the browser,
/// where a generation outlives any borrow, owns it and gives it back with `into_parts`).
impl<T: Backend + ?Sized> Backend for &mut T {
    fn config(&self) -> &ModelConfig {
        (**self).config()
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn kv_len(&self) -> usize {
        (**self).kv_len()
    }
    fn max_context(&self) -> usize {
        (**self).max_context()
    }
    fn truncate(&mut self, len: usize) -> Result<(), BackendError> {
        (**self).truncate(len)
    }
    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        (**self).forward(tokens, n_logits).await
    }
    async fn forward_greedy(&mut self, tokens: &[u32], banned: &[u32]) -> Result<u32, BackendError> {
        (**self).forward_greedy(tokens, banned).await
    }
    async fn forward_sample(&mut self, tokens: &[u32], request: &SampleRequest<'_>) -> Option<Result<SampledToken, BackendError>> {
        (**self).forward_sample(tokens, request).await
    }
}

/// Run a future to completion on the current thread (native callers of the async API: CLI,
/// tests, benchmarks). Never used in the browser, where futures go to the JS event loop.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}
