//! Model hyper-parameters, from GGUF metadata or a Hugging Face `config.json`.
//!
//! Llama, Qwen2 and Qwen3 share one decoder; everything that differs between them is here.

use crate::gguf::Metadata;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unsupported architecture '{0}' (supported: llama, qwen2, qwen3)")]
    UnsupportedArch(String),
    #[error("model metadata lacks '{0}'")]
    Missing(String),
    #[error("invalid model config: {0}")]
    Invalid(String),
    #[error("config.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Limits a config from a file must respect (see `ModelConfig::validate`).
pub const MAX_LAYERS: usize = 4096;
pub const MAX_HEADS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

/// How RoPE pairs up the dimensions of a head.
///
/// HF checkpoints rotate dimension `i` with `i + head_dim/2` (`rotate_half`, "NeoX" style).
/// llama.cpp's converter permutes the rows of Llama's Q and K weights so that the same
/// rotation becomes one of adjacent pairs `(2i, 2i+1)` ("normal"/interleaved style); it does
/// not permute Qwen2 or Qwen3. Rather than un-permuting weights at load, we keep the file's
/// layout and let the rope kernel pair dimensions accordingly: the attention scores are
/// identical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeLayout {
    /// Pairs `(2i, 2i+1)`: GGUF Llama.
    Interleaved,
    /// Pairs `(i, i + head_dim/2)`: HF checkpoints, GGUF Qwen2 and Qwen3.
    NeoX,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    /// Residual stream width.
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Width of one attention head. Qwen3 sets it on its own (e.g. 128 with dim 1024 and 16
    /// heads), so `q_dim()` need not equal `dim`.
    pub head_dim: usize,
    /// Width of the SwiGLU hidden layer.
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub rope_theta: f32,
    pub rope_layout: RopeLayout,
    pub rms_eps: f32,
    /// Qwen2 adds a bias to the Q, K and V projections.
    pub qkv_bias: bool,
    /// Qwen3 RMS-normalizes every head of q and k (weights `attn_q_norm`/`attn_k_norm`,
    /// (head_dim) each) between the projection and RoPE.
    pub qk_norm: bool,
    /// The LM head reuses the token embedding matrix.
    pub tied_embeddings: bool,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
}

impl ModelConfig {
    /// From GGUF metadata. `has_output` says whether an `output.weight` tensor exists (a
    /// missing one means tied embeddings), `vocab_size` comes from `token_embd.weight`.
    pub fn from_gguf(meta: &Metadata, has_output: bool, vocab_size: usize) -> Result<Self, ConfigError> {
        let arch_name = meta
            .get_str("general.architecture")
            .ok_or_else(|| ConfigError::Missing("general.architecture".into()))?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => return Err(ConfigError::UnsupportedArch(other.to_string())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let usize_of = |k: &str| -> Result<usize, ConfigError> {
            meta.get_u64(&key(k))
                .map(|v| v as usize)
                .ok_or_else(|| ConfigError::Missing(key(k)))
        };
        let dim = usize_of("embedding_length")?;
        let n_heads = usize_of("attention.head_count")?;
        let n_kv_heads = usize_of("attention.head_count_kv").unwrap_or(n_heads);
        // Qwen3 writes its head width here; Llama and Qwen2 files usually leave it out.
        let head_dim = match meta.get_u64(&key("attention.key_length")) {
            Some(v) => v as usize,
            None if n_heads > 0 => dim / n_heads,
            None => 0,
        };
        // The decoder keeps keys and values in rows of one width.
        if let Some(v) = meta.get_u64(&key("attention.value_length")) {
            if v as usize != head_dim {
                return Err(ConfigError::Invalid(format!("value head width {v} differs from key head width {head_dim}")));
            }
        }
        // Rope over only the first dimensions of each head (partial rotary embeddings) is not
        // implemented: a file that asks for it would run, wrongly.
        if let Some(v) = meta.get_u64(&key("rope.dimension_count")) {
            if v as usize != head_dim {
                return Err(ConfigError::Invalid(format!("rope over {v} of {head_dim} head dimensions is not supported")));
            }
        }
        let config = Self {
            arch,
            n_layers: usize_of("block_count")?,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: usize_of("feed_forward_length")?,
            vocab_size,
            rope_theta: meta.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_layout: match arch {
                Arch::Llama => RopeLayout::Interleaved,
                Arch::Qwen2 | Arch::Qwen3 => RopeLayout::NeoX,
            },
            rms_eps: meta
                .get_f32(&key("attention.layer_norm_rms_epsilon"))
                .ok_or_else(|| ConfigError::Missing(key("attention.layer_norm_rms_epsilon")))?,
            qkv_bias: arch == Arch::Qwen2,
            qk_norm: arch == Arch::Qwen3,
            tied_embeddings: !has_output,
            context_length: usize_of("context_length").unwrap_or(4096),
        };
        config.validate()?;
        Ok(config)
    }

    /// From a Hugging Face `config.json` (LlamaForCausalLM / Qwen2ForCausalLM /
    /// Qwen3ForCausalLM).
    pub fn from_hf_json(json: &[u8]) -> Result<Self, ConfigError> {
        #[derive(serde::Deserialize)]
        struct Hf {
            #[serde(default)]
            architectures: Vec<String>,
            #[serde(default)]
            model_type: String,
            num_hidden_layers: usize,
            hidden_size: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            intermediate_size: usize,
            vocab_size: usize,
            rope_theta: Option<f32>,
            rope_parameters: Option<RopeParameters>,
            rms_norm_eps: f32,
            attention_bias: Option<bool>,
            tie_word_embeddings: Option<bool>,
            max_position_embeddings: Option<usize>,
        }
        /// transformers 5 moved `rope_theta` in here.
        #[derive(serde::Deserialize)]
        struct RopeParameters {
            rope_theta: Option<f32>,
        }
        let hf: Hf = serde_json::from_slice(json)?;
        let arch = match (hf.model_type.as_str(), hf.architectures.first().map(String::as_str)) {
            ("llama", _) | (_, Some("LlamaForCausalLM")) => Arch::Llama,
            ("qwen2", _) | (_, Some("Qwen2ForCausalLM")) => Arch::Qwen2,
            ("qwen3", _) | (_, Some("Qwen3ForCausalLM")) => Arch::Qwen3,
            (t, a) => return Err(ConfigError::UnsupportedArch(a.unwrap_or(t).to_string())),
        };
        let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
        let config = Self {
            arch,
            n_layers: hf.num_hidden_layers,
            dim: hf.hidden_size,
            n_heads: hf.num_attention_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim,
            ffn_dim: hf.intermediate_size,
            vocab_size: hf.vocab_size,
            rope_theta: hf.rope_theta.or(hf.rope_parameters.and_then(|r| r.rope_theta)).unwrap_or(10_000.0),
            rope_layout: RopeLayout::NeoX,
            rms_eps: hf.rms_norm_eps,
            qkv_bias: hf.attention_bias.unwrap_or(arch == Arch::Qwen2),
            qk_norm: arch == Arch::Qwen3,
            // Qwen2's transformers default is False, Llama's True... but both config classes
            // write the field; absent means the PretrainedConfig default (True).
            tied_embeddings: hf.tie_word_embeddings.unwrap_or(true),
            context_length: hf.max_position_embeddings.unwrap_or(4096),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.n_layers == 0 || self.dim == 0 || self.n_heads == 0 || self.n_kv_heads == 0 {
            return bad(format!("zero-sized model: {self:?}"));
        }
        // Far above any real model (hundreds of layers, heads in the hundreds), far below
        // what would make the loader's per-layer bookkeeping a denial of service.
        if self.n_layers > MAX_LAYERS || self.n_heads > MAX_HEADS {
            return bad(format!("{} layers / {} heads is beyond any supported model", self.n_layers, self.n_heads));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad(format!("{} heads not a multiple of {} kv heads", self.n_heads, self.n_kv_heads));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad(format!("head_dim {} must be even and non-zero", self.head_dim));
        }
        if self.vocab_size == 0 || self.ffn_dim == 0 {
            return bad("zero vocab or ffn size".into());
        }
        let positive = |v: f32| v > 0.0 && v.is_finite();
        if !(positive(self.rope_theta) && positive(self.rms_eps)) {
            return bad(format!("rope_theta {} / rms_eps {} must be finite and > 0", self.rope_theta, self.rms_eps));
        }
        Ok(())
    }

    /// Width of the Q projection output.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the K and V projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
