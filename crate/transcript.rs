//! The one owner of what the KV cache holds.
//!
//! A chat engine answers many requests on one cache: Regenerate sends the same prompt
//! again, a second question extends the first turn. Each request gets its *full* prompt;
//! the transcript compares it with the ids it holds, keeps the longest common prefix in the
//! cache and leaves the rest pending. Nothing else tracks cache contents, so what a request
//! sees (its prompt, its history for repetition penalties, whether its template opened
//! thinking) never depends on what an earlier request left behind — only its cost does.
//!
//! Invariant, checked by [`Transcript::check`] in tests: `backend.kv_len() == fed`, and
//! positions `0..fed` of the cache hold the keys and values of `ids[..fed]`.

use crate::backend::{Backend, BackendError, SampleRequest, SampledToken};
use crate::sampler::SamplerOptions;

pub struct Transcript<B: Backend> {
    backend: B,
    /// Every kept token id, fed or not: (len,) u32.
    ids: Vec<u32>,
    /// `ids[..fed]` are in the KV cache; `ids[fed..]` wait for the next forward.
    fed: usize,
}

impl<B: Backend> Transcript<B> {
    /// Take over a backend; whatever its cache held is forgotten (its ids are unknown).
    pub fn new(mut backend: B) -> Result<Self, BackendError> {
        if backend.kv_len() > 0 {
            backend.truncate(0)?;
        }
        Ok(Self { backend, ids: Vec::new(), fed: 0 })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, for settings that leave its cache as it is.
    pub(crate) fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Kept ids, fed or pending.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// How many ids are in the KV cache.
    pub fn fed(&self) -> usize {
        self.fed
    }

    /// Ids waiting for the next forward.
    pub fn pending(&self) -> &[u32] {
        &self.ids[self.fed..]
    }

    pub fn max_context(&self) -> usize {
        self.backend.max_context()
    }

    /// Start a request on `prompt`: the cache keeps the longest prefix it shares with the
    /// prompt, except the prompt's last id, which stays pending so that the first forward
    /// yields the logits to sample from. Returns how many prompt ids came from the cache.
    pub fn begin(&mut self, prompt: &[u32]) -> Result<usize, BackendError> {
        let common = self.ids[..self.fed].iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(prompt.len().saturating_sub(1));
        if keep < self.fed {
            self.backend.truncate(keep)?;
        }
        self.ids.clear();
        self.ids.extend_from_slice(prompt);
        self.fed = keep;
        Ok(keep)
    }

    pub fn push(&mut self, id: u32) {
        self.ids.push(id);
    }

    /// Keep only the first `len` ids, removing later positions from the cache.
    pub fn truncate(&mut self, len: usize) -> Result<(), BackendError> {
        if len < self.fed {
            self.backend.truncate(len)?;
            self.fed = len;
        }
        self.ids.truncate(len);
        Ok(())
    }

    /// Run the pending ids through the model in one forward; returns the logits of the last
    /// `n_logits` of them, (n_logits, vocab) row-major.
    pub async fn feed(&mut self, n_logits: usize) -> Result<Vec<f32>, BackendError> {
        if self.fed == self.ids.len() {
            return Ok(Vec::new());
        }
        let result = self.backend.forward(&self.ids[self.fed..], n_logits).await;
        self.after_forward(result.is_ok())?;
        result
    }

    /// Run every pending id but the last, keeping no logits; returns how many ran. The last
    /// then goes alone through exactly the computation it gets when everything before it is
    /// cached, so a prompt's first logits do not depend on how much of it was (batched and
    /// single-token kernels round differently).
    pub async fn feed_all_but_last(&mut self) -> Result<usize, BackendError> {
        let n = self.pending().len().saturating_sub(1);
        if n == 0 {
            return Ok(0);
        }
        let result = self.backend.forward(&self.ids[self.fed..self.fed + n], 0).await;
        if result.is_ok() {
            self.fed += n;
            Ok(n)
        } else {
            self.settle()?;
            result.map(|_| 0)
        }
    }

    /// [`Transcript::feed`] and the argmax of the last position with `banned` excluded,
    /// chosen where the logits are (a GPU reads back 4 bytes).
    pub async fn feed_greedy(&mut self, banned: &[u32]) -> Result<u32, BackendError> {
        let result = self.backend.forward_greedy(&self.ids[self.fed..], banned).await;
        self.after_forward(result.is_ok())?;
        result
    }

    /// Run the pending ids and let the backend sample the next token (see
    /// [`Backend::forward_sample`]); `None`: the backend does not, and nothing ran.
    pub async fn feed_sample(
        &mut self,
        options: &SamplerOptions,
        banned: &[u32],
        uniform: f64,
        raw_argmax: bool,
        ahead: Option<f64>,
    ) -> Option<Result<SampledToken, BackendError>> {
        let request = SampleRequest { options, history: &self.ids, banned, uniform, raw_argmax, ahead };
        let result = self.backend.forward_sample(&self.ids[self.fed..], &request).await?;
        Some(self.after_forward(result.is_ok()).and(result))
    }

    /// A forward appends every pending id to the cache, or (failed) an unknown part of
    /// them: believe the backend's length.
    fn after_forward(&mut self, ok: bool) -> Result<(), BackendError> {
        if ok {
            self.fed = self.ids.len();
            Ok(())
        } else {
            self.settle()
        }
    }

    /// Forget the pending ids (an aborted or failed request) and reconcile with the
    /// backend's cache length, so that the transcript is exactly what the cache holds.
    pub fn settle(&mut self) -> Result<(), BackendError> {
        let kv = self.backend.kv_len();
        if kv > self.fed {
            self.backend.truncate(self.fed)?;
        }
        self.fed = self.fed.min(kv);
        self.ids.truncate(self.fed);
        Ok(())
    }

    /// Empty the cache.
    pub fn clear(&mut self) -> Result<(), BackendError> {
        self.truncate(0)
    }

    /// Lend the backend to work that leaves the cache holding exactly `ids` on success
    /// (scoring feeds the prompt and the continuation); on failure the cache is emptied.
    pub async fn with_backend<T, E>(
        &mut self,
        work: impl AsyncFnOnce(&mut B) -> Result<(T, Vec<u32>), E>,
    ) -> Result<T, E>
    where
        E: From<BackendError>,
    {
        self.clear()?;
        match work(&mut self.backend).await {
            Ok((value, ids)) if ids.len() == self.backend.kv_len() => {
                self.fed = ids.len();
                self.ids = ids;
                Ok(value)
            }
            Ok((value, _)) => {
                self.backend.truncate(0)?;
                Ok(value)
            }
            Err(e) => {
                self.backend.truncate(0)?;
                Err(e)
            }
        }
    }

    /// Whether the invariant holds (for tests and debug assertions).
    pub fn check(&self) -> bool {
        self.backend.kv_len() == self.fed && self.fed <= self.ids.len()
    }

    pub fn into_backend(self) -> B {
        self.backend
    }
}
