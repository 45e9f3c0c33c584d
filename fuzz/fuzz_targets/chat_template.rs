#![no_main]
//! Body: `targets::chat_template` (fuzz/targets.rs).

#[path = "../../tests/scripted/mod.rs"]
mod scripted;
#[path = "../targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::chat_template(data));
