#![no_main]
//! Body: `targets::options_json` (fuzz/targets.rs).

#[path = "../../tests/scripted/mod.rs"]
mod scripted;
#[path = "../targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::options_json(data));
