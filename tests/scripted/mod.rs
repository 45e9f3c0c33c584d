//! A scripted model and a toy tokenizer, so that the generation loop and the thinking
//! controller can be tested on every path without real weights.
#![allow(dead_code)]

use pensive::backend::{Backend, BackendError};
use pensive::config::{Arch, ModelConfig, RopeLayout};
use pensive::generate::{CodecError, TextCodec};

/// Logit of the token the script favours; everything else is 0 unless the script says so.
pub const FAVOURED: f32 = 10.0;

/// A byte-level toy vocabulary: each token is a byte string; decoding concatenates them
/// and renders an unfinished UTF-8 character as U+FFFD, as a real byte-level BPE does.
pub struct ToyCodec {
    pub vocab: Vec<Vec<u8>>,
    /// Ids encode() must not produce from text (special tokens).
    pub special: Vec<u32>,
    pub end_of_generation: Vec<u32>,
}

impl ToyCodec {
    /// `specials` come first (ids 0..), then `pieces`. The first special is the EOS.
    pub fn new(specials: &[&str], pieces: &[&str]) -> Self {
        let mut vocab: Vec<Vec<u8>> = specials.iter().map(|s| s.as_bytes().to_vec()).collect();
        vocab.extend(pieces.iter().map(|s| s.as_bytes().to_vec()));
        Self { vocab, special: (0..specials.len() as u32).collect(), end_of_generation: vec![0] }
    }

    pub fn id(&self, piece: &str) -> u32 {
        self.vocab
            .iter()
            .position(|v| v == piece.as_bytes())
            .unwrap_or_else(|| panic!("{piece:?} is not in the toy vocabulary")) as u32
    }

    pub fn ids(&self, pieces: &[&str]) -> Vec<u32> {
        pieces.iter().map(|p| self.id(p)).collect()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
}

impl TextCodec for ToyCodec {
    /// Greedy longest match over the non-special tokens.
    fn encode(&self, text: &str) -> Result<Vec<u32>, CodecError> {
        let bytes = text.as_bytes();
        let mut ids = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let best = self
                .vocab
                .iter()
                .enumerate()
                .filter(|(id, v)| !self.special.contains(&(*id as u32)) && !v.is_empty() && bytes[at..].starts_with(v))
                .max_by_key(|(id, v)| (v.len(), std::cmp::Reverse(*id)));
            let Some((id, v)) = best else {
                return Err(CodecError(format!("no token for {:?}", &text[at..])));
            };
            ids.push(id as u32);
            at += v.len();
        }
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.vocab[id as usize].clone()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.iter().position(|v| v == text.as_bytes()).map(|i| i as u32)
    }

    fn end_of_generation_ids(&self) -> Vec<u32> {
        self.end_of_generation.clone()
    }
}

pub type Script = Box<dyn Fn(&[u32]) -> Vec<(u32, f32)>>;

/// A "model" whose logits at each position come from a script over the whole sequence so
/// far (cache contents); it records every call so tests can check what was fed.
pub struct ScriptedBackend {
    config: ModelConfig,
    pub max_context: usize,
    /// The KV cache: token ids at positions 0..kv_len.
    pub cache: Vec<u32>,
    pub script: Script,
    /// (tokens fed, n_logits) per forward call.
    pub calls: Vec<(Vec<u32>, usize)>,
    /// Lengths passed to truncate.
    pub truncations: Vec<usize>,
    /// Calls that took the greedy fast path (also listed in `calls`, with n_logits 1).
    pub greedy_calls: usize,
}

pub fn toy_config(vocab_size: usize) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        n_layers: 1,
        dim: 8,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 8,
        ffn_dim: 16,
        vocab_size,
        rope_theta: 10000.0,
        rope_layout: RopeLayout::NeoX,
        rms_eps: 1e-5,
        qkv_bias: false,
        qk_norm: false,
        tied_embeddings: true,
        context_length: 4096,
    }
}

impl ScriptedBackend {
    pub fn new(vocab_size: usize, script: Script) -> Self {
        Self {
            config: toy_config(vocab_size),
            max_context: 4096,
            cache: Vec::new(),
            script,
            calls: Vec::new(),
            truncations: Vec::new(),
            greedy_calls: 0,
        }
    }

    /// A script that favours one token (and optionally gives a runner-up `fallback` a
    /// smaller logit, so that masking the favourite picks it).
    pub fn favour(vocab_size: usize, next: impl Fn(&[u32]) -> u32 + 'static) -> Self {
        Self::new(vocab_size, Box::new(move |seq| vec![(next(seq), FAVOURED)]))
    }

    pub fn fed_tokens(&self) -> usize {
        self.calls.iter().map(|(t, _)| t.len()).sum()
    }

    fn logits_at(&self, prefix: &[u32]) -> Vec<f32> {
        let mut row = vec![0.0; self.config.vocab_size];
        for (id, value) in (self.script)(prefix) {
            row[id as usize] = value;
        }
        row
    }
}

impl Backend for ScriptedBackend {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn name(&self) -> String {
        "scripted".into()
    }
    fn kv_len(&self) -> usize {
        self.cache.len()
    }
    fn max_context(&self) -> usize {
        self.max_context
    }
    fn truncate(&mut self, len: usize) -> Result<(), BackendError> {
        if len > self.cache.len() {
            return Err(BackendError::BadTruncate { to: len, len: self.cache.len() });
        }
        self.truncations.push(len);
        self.cache.truncate(len);
        Ok(())
    }
    async fn forward(&mut self, tokens: &[u32], n_logits: usize) -> Result<Vec<f32>, BackendError> {
        assert!(n_logits <= tokens.len(), "asked for more logits than tokens");
        if self.cache.len() + tokens.len() > self.max_context {
            return Err(BackendError::ContextFull { needed: self.cache.len() + tokens.len(), context: self.max_context });
        }
        for &id in tokens {
            if id as usize >= self.config.vocab_size {
                return Err(BackendError::BadToken { id, vocab: self.config.vocab_size });
            }
        }
        self.calls.push((tokens.to_vec(), n_logits));
        let first_row = self.cache.len() + tokens.len() - n_logits;
        self.cache.extend_from_slice(tokens);
        let mut out = Vec::with_capacity(n_logits * self.config.vocab_size);
        for end in first_row + 1..=self.cache.len() {
            out.extend(self.logits_at(&self.cache[..end]));
        }
        Ok(out)
    }

    async fn forward_greedy(&mut self, tokens: &[u32], banned: &[u32]) -> Result<u32, BackendError> {
        self.greedy_calls += 1;
        let mut logits = self.forward(tokens, 1).await?;
        for &id in banned {
            logits[id as usize] = f32::NEG_INFINITY;
        }
        // Ties to the lowest id, as the sampler's greedy does.
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        Ok(best as u32)
    }
}

/// A model whose logits are a hash of the sequence so far (deterministic, so reruns agree):
/// `pieces` and the special tokens compete with random logits, so it tries to end thinking
/// or generation now and then; a started string marker ("<" or "</") is always completed
/// ("think", then ">"), so string ends really happen. Used by the property test and the
/// thinking fuzz target.
pub fn random_model(codec: &std::rc::Rc<ToyCodec>, salt: u64, pieces: &[&str]) -> ScriptedBackend {
    let c = codec.clone();
    let candidates: Vec<u32> = pieces.iter().map(|p| c.id(p)).collect();
    let specials: Vec<u32> = (0..c.special.len() as u32).collect();
    let (slash, think, gt, lt) = (c.id("</"), c.id("think"), c.id(">"), c.id("<"));
    ScriptedBackend::new(
        c.vocab_size(),
        Box::new(move |seq: &[u32]| {
            let mut h = salt;
            for &t in seq {
                h = (h ^ u64::from(t)).wrapping_mul(0x100_0000_01B3).rotate_left(17);
            }
            let mut rng = pensive::sampler::Rng::new(h);
            let last = seq.last().copied();
            if last == Some(slash) || last == Some(lt) {
                return vec![(think, FAVOURED)];
            }
            if last == Some(think) {
                return vec![(gt, FAVOURED)];
            }
            let mut logits: Vec<(u32, f32)> = candidates.iter().map(|&id| (id, (rng.uniform() * 6.0) as f32)).collect();
            logits.extend(specials.iter().map(|&id| (id, (rng.uniform() * 7.0) as f32)));
            logits
        }),
    )
}
