//! Synthetic models for the benchmark examples: the shapes and GGUF types of real models with
//! random weights (finite, small block scales). Speed depends on shapes and types, not values,
//! so this measures a model on machines where its file cannot be copied.

use std::collections::HashMap;

use pensive::bytes::AlignedBytes;
use pensive::config::{Arch, ModelConfig, RopeLayout};
use pensive::loader::{LoadedModel, RawTensor};
use pensive::quant::GgmlType;

pub const NAMES: &str = "smollm2, qwen0.5b, qwen1.5b (= r1-1.5b), qwen3-0.6b";

/// The model `name` with random weights, or `None` for an unknown name.
pub fn model(name: &str) -> Option<LoadedModel> {
    use GgmlType::*;
    // Types of each model's Q4 GGUF: attention, ffn gate/up, ffn down, embedding, output.
    // (Qwen2.5-0.5B's width 896 is not a multiple of 256: llama.cpp falls back to Q5_0/Q8_0.)
    let (arch, n_layers, dim, n_heads, n_kv_heads, ffn_dim, vocab, [attn, gate_up, down, embd, out]) = match name {
        "smollm2" => (Arch::Llama, 30, 576, 9, 3, 1536, 49152, [Q4_1, Q4_1, Q4_1, Q8_0, Q8_0]),
        "qwen0.5b" => (Arch::Qwen2, 24, 896, 14, 2, 4864, 151936, [Q5_0, Q5_0, Q6_K, Q5_0, Q8_0]),
        // DeepSeek-R1-Distill-Qwen-1.5B has Qwen2.5-1.5B's shapes.
        "qwen1.5b" | "r1-1.5b" => (Arch::Qwen2, 28, 1536, 12, 2, 8960, 151936, [Q4_K, Q4_K, Q6_K, Q4_K, Q6_K]),
        // Qwen3-0.6B: head_dim 128 on its own, q/k norm, tied embeddings.
        "qwen3-0.6b" => (Arch::Qwen3, 28, 1024, 16, 8, 3072, 151936, [Q4_K, Q4_K, Q6_K, Q6_K, Q6_K]),
        _ => return None,
    };
    let llama = arch == Arch::Llama;
    let qwen3 = arch == Arch::Qwen3;
    let config = ModelConfig {
        arch,
        n_layers,
        dim,
        n_heads,
        n_kv_heads,
        head_dim: if qwen3 { 128 } else { dim / n_heads },
        ffn_dim,
        vocab_size: vocab,
        rope_theta: 1e6,
        rope_layout: if llama { RopeLayout::Interleaved } else { RopeLayout::NeoX },
        rms_eps: 1e-6,
        qkv_bias: arch == Arch::Qwen2,
        qk_norm: qwen3,
        tied_embeddings: llama || qwen3,
        context_length: 32768,
    };
    let mut seed = 42u64;
    let mut tensors = HashMap::new();
    let mut add = |name: String, ty: GgmlType, dims: Vec<u64>| {
        tensors.insert(name.clone(), tensor(name, ty, dims, &mut seed));
    };
    let (d, q, kv, f, v) = (dim as u64, config.q_dim() as u64, config.kv_dim() as u64, ffn_dim as u64, vocab as u64);
    add("token_embd.weight".into(), embd, vec![d, v]);
    add("output_norm.weight".into(), F32, vec![d]);
    if !config.tied_embeddings {
        add("output.weight".into(), out, vec![d, v]);
    }
    for l in 0..n_layers {
        let n = |p: &str| format!("blk.{l}.{p}");
        add(n("attn_norm.weight"), F32, vec![d]);
        add(n("ffn_norm.weight"), F32, vec![d]);
        add(n("attn_q.weight"), attn, vec![d, q]);
        add(n("attn_k.weight"), attn, vec![d, kv]);
        add(n("attn_v.weight"), attn, vec![d, kv]);
        add(n("attn_output.weight"), attn, vec![q, d]);
        add(n("ffn_gate.weight"), gate_up, vec![d, f]);
        add(n("ffn_up.weight"), gate_up, vec![d, f]);
        add(n("ffn_down.weight"), down, vec![f, d]);
        if qwen3 {
            add(n("attn_q_norm.weight"), F32, vec![config.head_dim as u64]);
            add(n("attn_k_norm.weight"), F32, vec![config.head_dim as u64]);
        }
        if config.qkv_bias {
            add(n("attn_q.bias"), F32, vec![q]);
            add(n("attn_k.bias"), F32, vec![kv]);
            add(n("attn_v.bias"), F32, vec![kv]);
        }
    }
    Some(LoadedModel { config, tensors, gguf: None })
}

/// Byte offsets of the f16 scale fields inside one block (see the block structs in quant.rs).
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// Random bytes (an LCG), then every block scale set to 0.001 so values stay finite.
fn tensor(name: String, ty: GgmlType, dims: Vec<u64>, seed: &mut u64) -> RawTensor {
    let n: u64 = dims.iter().product();
    let mut data = AlignedBytes::zeroed(ty.bytes_for(n).unwrap_or(0) as usize);
    let buf = data.as_mut_slice();
    if ty == GgmlType::F32 {
        for v in buf.chunks_exact_mut(4) {
            v.copy_from_slice(&0.01f32.to_le_bytes());
        }
    } else {
        for b in buf.iter_mut() {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (*seed >> 56) as u8;
        }
        let scale = half::f16::from_f32(0.001).to_le_bytes();
        for block in buf.chunks_exact_mut(ty.block_bytes()) {
            for &o in scale_offsets(ty) {
                block[o..o + 2].copy_from_slice(&scale);
            }
        }
    }
    RawTensor { name, ty, dims, data }
}
