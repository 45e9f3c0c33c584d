//! JavaScript bindings (wasm-bindgen) for the browser build.
//!
//! This file only translates: JS values in (serde-wasm-bindgen), the same Rust calls the CLI
//! makes, JS values out. Everything the page does around it — fetching and caching model
//! files, the async-iterator surface, option defaults, the Web Worker — lives in the npm
//! package's JavaScript (`www/src/`), which is the public API; these exports are its
//! private engine room and may change with it.
//!
//! Errors cross the boundary as JS `Error` objects carrying a string `code` (the same codes
//! as the Rust error enums' `code()`), which `www/src/errors.js` turns into `PensiveError`.
//! Nothing here may panic on input a page or a file controls: a panic in wasm leaves the
//! module unusable ("a dead module"), so every fallible step returns one of those errors.

use std::fmt::Display;

use wasm_bindgen::prelude::*;

use crate::config::ConfigError;
use crate::loader::{GgufStream, LoadError};

/// Build the JS `Error` (with a `code` property) that the package's wrapper recognises.
fn js_error(code: &str, message: impl Display) -> JsValue {
    let err = js_sys::Error::new(&message.to_string());
    // Defining a data property on a fresh, extensible Error object cannot fail, and if it
    // somehow did the caller would still get the message: ignoring the result is safe.
    let _ = js_sys::Reflect::set(&err, &JsValue::from_str("code"), &JsValue::from_str(code));
    err.into()
}

/// Serialize to plain JS objects (not `Map`s; u64 as numbers), matching the CLI's JSON.
fn to_js<T: serde::Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| js_error("backend", format_args!("cannot convert a result to JS: {e}")))
}

fn load_error(e: LoadError) -> JsValue {
    let code = match &e {
        LoadError::Config(ConfigError::UnsupportedArch(_)) => "unsupported_model",
        LoadError::Io(_) => "io",
        _ => "model_format",
    };
    js_error(code, e)
}

/// Runs once when the module is instantiated: route Rust panics (bugs, never expected) to
/// the console with their message instead of an opaque "unreachable" trap.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The crate version, e.g. "0.1.0"; the JS package reports it as `Pensive.version`.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Streams a GGUF file through the real loader and discards the tensors: validates a file
/// (truncation, corrupt header, unsupported architecture) and reports its configuration
/// without building an engine. The page feeds it chunk by chunk, exactly as it feeds the
/// engine loader, so it also exercises download, cache and progress paths cheaply.
#[wasm_bindgen]
pub struct GgufProbe {
    /// `None` once `finish` consumed it; later calls report a typed error.
    stream: Option<GgufStream>,
    /// Whether the header's architecture was checked (as soon as the header is complete, so
    /// an unsupported model fails after kilobytes, not after the whole download).
    config_checked: bool,
}

#[wasm_bindgen]
impl GgufProbe {
    #[wasm_bindgen(constructor)]
    pub fn new() -> GgufProbe {
        GgufProbe { stream: Some(GgufStream::new()), config_checked: false }
    }

    /// Feed the next bytes of the file; returns the progress so far
    /// (`{bytes_seen, bytes_total, tensors_done, tensors_total}`).
    pub fn push(&mut self, chunk: &[u8]) -> Result<JsValue, JsValue> {
        let stream = self.stream.as_mut().ok_or_else(|| js_error("invalid_options", "probe already finished"))?;
        // Dropping each tensor as it completes keeps at most one tensor in wasm memory.
        stream.push(chunk, &mut |_, _| Ok(())).map_err(load_error)?;
        if !self.config_checked {
            if let Some(header) = stream.header() {
                crate::loader::config_from_gguf(header).map_err(load_error)?;
                self.config_checked = true;
            }
        }
        to_js(&stream.progress())
    }

    /// End of the file: every tensor must have arrived. Returns the model configuration.
    pub fn finish(&mut self) -> Result<JsValue, JsValue> {
        let stream = self.stream.take().ok_or_else(|| js_error("invalid_options", "probe already finished"))?;
        let header = stream.finish().map_err(load_error)?;
        let config = crate::loader::config_from_gguf(&header).map_err(load_error)?;
        to_js(&config)
    }
}

impl Default for GgufProbe {
    fn default() -> Self {
        Self::new()
    }
}
