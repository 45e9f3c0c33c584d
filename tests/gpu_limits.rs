//! Adapter limits on a real model: tensors larger than the binding limit are split across
//! bindings and give the same results; a model that cannot fit at all is a clear error.

mod common;
mod gpu_common;

use std::rc::Rc;

use pensive::backend::{block_on, Backend};
use pensive::gpu::{GpuError, GpuModel};
use pensive::loader;
use pensive::model::CpuModel;

const SMOLLM2: &str = "smollm2-135m-instruct-q4_1.gguf";
/// f32 activations on the GPU vs the CPU: summation order only, over 30 layers.
const F32_LOGIT_TOLERANCE: f32 = 1e-3;

#[test]
fn a_model_larger_than_the_binding_limit_runs_split() {
    let Some(path) = common::model_path(SMOLLM2) else { return };
    // 8 MiB bindings: SmolLM2's 49152×576 Q8_0 embedding/LM head (30 MB) needs four parts.
    // (A prefill chunk's logits, 32 × 49152 f32 = 6 MiB, must still fit in one binding.)
    let Some(ctx) = gpu_common::context(false, Some(8 << 20)) else { return };
    let mut gpu = GpuModel::from_loaded(Rc::new(ctx), loader::load_gguf_file(&path).unwrap(), Some(128)).unwrap();
    let mut cpu = CpuModel::new(loader::load_gguf_file(&path).unwrap(), Some(128)).unwrap();
    let prompt = [504u32, 3575, 282, 4649, 314]; // "The capital of France is"
    let g = block_on(gpu.forward(&prompt, 1)).unwrap();
    let c = block_on(cpu.forward(&prompt, 1)).unwrap();
    let diff = g.iter().zip(&c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("split model vs CPU: max |diff| {diff:.2e} over {} logits", c.len());
    assert!(diff <= F32_LOGIT_TOLERANCE, "split model differs from the CPU by {diff}");
    assert_eq!(pensive::ops::argmax(&g), pensive::ops::argmax(&c));
    // And decoding through the split head agrees too.
    let next = pensive::ops::argmax(&c) as u32;
    assert_eq!(block_on(gpu.forward_greedy(&[next], &[])).unwrap(), {
        let c2 = block_on(cpu.forward(&[next], 1)).unwrap();
        pensive::ops::argmax(&c2) as u32
    });
}

#[test]
fn a_model_too_large_for_the_adapter_is_a_clear_error() {
    let Some(path) = common::model_path(SMOLLM2) else { return };
    // One 576-wide Q8_0 row is 612 bytes: a 512-byte binding limit cannot hold it.
    let Some(ctx) = gpu_common::context(false, Some(512)) else { return };
    match GpuModel::from_loaded(Rc::new(ctx), loader::load_gguf_file(&path).unwrap(), Some(128)) {
        Err(e @ GpuError::TooLarge { .. }) => {
            let message = e.to_string();
            eprintln!("{message}");
            assert!(message.contains("cannot hold this model"), "{message}");
        }
        Err(other) => panic!("expected TooLarge, got {other}"),
        Ok(_) => panic!("a model that cannot fit loaded"),
    }
}
