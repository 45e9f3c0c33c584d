//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Path of a file under the package root.
pub fn root_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Path of a real model fetched by `scripts/fetch-models.sh`, or `None` (with a loud
/// message) when it is absent. With `PENSIVE_REQUIRE_MODELS=1` (CI) absence is a failure.
pub fn model_path(file: &str) -> Option<PathBuf> {
    let path = root_path("models").join(file);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("PENSIVE_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!("{} is missing (run scripts/fetch-models.sh)", path.display());
    }
    eprintln!("SKIPPED: {} is missing (run scripts/fetch-models.sh)", path.display());
    None
}

pub fn model_bytes(file: &str) -> Option<Vec<u8>> {
    model_path(file).map(|p| std::fs::read(&p).expect("read model file"))
}
