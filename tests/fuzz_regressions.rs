//! Every input the fuzzers ever crashed on (minimized, in `fuzz/regressions/<target>/`) and
//! the committed seeds (`fuzz/seeds/<target>/`), replayed through the same target bodies the
//! fuzzers run (fuzz/targets.rs). A fixed bug that comes back fails here, without nightly Rust
//! or libFuzzer.

mod common;
mod scripted;
#[path = "../fuzz/targets.rs"]
#[allow(dead_code)]
mod targets;

use std::path::Path;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

#[test]
fn every_committed_fuzz_input_passes() {
    let mut replayed = 0;
    for (name, target) in targets::TARGETS {
        for kind in ["regressions", "seeds"] {
            for path in inputs(&common::root_path(&format!("fuzz/{kind}/{name}"))) {
                let data = std::fs::read(&path).unwrap();
                eprintln!("{name}: {}", path.display());
                target(&data);
                replayed += 1;
            }
        }
    }
    // Every target has seeds; an empty replay means the folders moved.
    assert!(replayed >= targets::TARGETS.len(), "only {replayed} inputs found");
    eprintln!("replayed {replayed} inputs");
}

/// The stream and safetensors seeds are complete models (so the fuzzers start from inputs
/// that reach the decoder's shape checks, not from ones every mutation leaves broken).
#[test]
fn the_model_seeds_load() {
    let gguf = std::fs::read(common::root_path("fuzz/seeds/gguf_header/tiny_llama.gguf")).unwrap();
    let model = pensive::loader::load_gguf_bytes(&gguf).unwrap();
    pensive::model::CpuModel::new(model, Some(16)).unwrap();
    let st = std::fs::read(common::root_path("fuzz/seeds/safetensors/tiny_llama")).unwrap();
    let len = usize::from(u16::from_le_bytes([st[0], st[1]]));
    let model = pensive::loader::load_safetensors(&st[2..2 + len], &[&st[2 + len..]]).unwrap();
    pensive::model::CpuModel::new(model, Some(16)).unwrap();
}
