#![no_main]
//! Body: `targets::gguf_stream` (fuzz/targets.rs).

#[path = "../../tests/scripted/mod.rs"]
mod scripted;
#[path = "../targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::gguf_stream(data));
