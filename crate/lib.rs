//! Pensive: quantized Llama/Qwen2 language models on WebGPU and the CPU, with an
//! s1-style thinking budget ("Wait" continuations, forced exits) built into generation.
//!
//! Map of the crate, bottom to top:
//! - [`bytes`]: aligned byte buffers that weights live in.
//! - [`gguf`]: the GGUF container (header, metadata, tensor infos), read from a byte prefix.
//! - [`quant`]: GGML block formats, CPU dequantization (the reference) and mat-vec kernels.

pub mod bytes;
pub mod quant;
pub mod gguf;
pub mod config;
pub mod backend;
pub mod ops;
pub mod loader;
pub mod model;
pub mod tokenizer;
pub mod gpu;
pub mod chat;
pub mod codec;
pub mod sampler;
pub mod thinking;
pub mod transcript;
pub mod generate;
pub mod builder;
pub mod engine;
pub mod eval;
#[cfg(target_arch = "wasm32")]
pub mod wasm;
