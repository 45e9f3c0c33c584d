//! GPU faults as typed errors (the browser side: tests/browser/faults.test.mjs): a device
//! that is lost mid-generation fails the pending call and every later one with
//! `device_lost` while a fresh load runs again; an allocation the device refuses is an
//! error of the call that made it (or the next call), never wgpu's default panic.

mod common;
mod gpu_common;

use std::path::Path;
use std::rc::Rc;

use pensive::backend::block_on;
use pensive::engine::{BackendChoice, Continuation, Engine, EngineError, EngineLoader, GenerateRequest, LoadOptions, Prompt};
use pensive::generate::Event;
use pensive::gpu::{GpuContext, GpuError};

const SMOLLM2: &str = "smollm2-135m-instruct-q4_1.gguf";
const PROMPT: &str = "The capital of France is";
const GREEDY_TOKENS: usize = 12;
/// Events taken before the device is destroyed: the generation is well under way.
const EVENTS_BEFORE_LOSS: usize = 4;

fn gpu_engine(path: &Path, ctx: &Rc<GpuContext>) -> Result<Engine, EngineError> {
    let options = LoadOptions { backend: BackendChoice::Gpu, max_context: Some(128), ..LoadOptions::default() };
    let mut loader = EngineLoader::with_gpu(&options, Ok(Rc::clone(ctx)))?;
    loader.push_file(path)?;
    block_on(loader.finish(None))
}

fn start_greedy(engine: &mut Engine) -> Result<(), EngineError> {
    let request = GenerateRequest { temperature: Some(0.0), max_tokens: Some(GREEDY_TOKENS), ..Default::default() };
    engine.start(&Prompt::Text(PROMPT.into()), request)
}

fn greedy_ids(engine: &mut Engine) -> Vec<u32> {
    start_greedy(engine).unwrap();
    let mut ids = Vec::new();
    while let Some(event) = block_on(engine.next_event()).unwrap() {
        if let Event::Token { id, .. } = event {
            ids.push(id);
        }
    }
    ids
}

fn new_context() -> Option<Rc<GpuContext>> {
    gpu_common::context(false, None).map(Rc::new)
}

#[test]
fn a_device_destroyed_mid_generation_is_device_lost_and_a_new_load_generates() {
    let Some(path) = common::model_path(SMOLLM2) else { return };
    let Some(ctx) = new_context() else { return };
    let mut engine = gpu_engine(&path, &ctx).unwrap();
    let want = greedy_ids(&mut engine);
    assert_eq!(want.len(), GREEDY_TOKENS);

    start_greedy(&mut engine).unwrap();
    for _ in 0..EVENTS_BEFORE_LOSS {
        assert!(block_on(engine.next_event()).unwrap().is_some());
    }
    assert!(engine.usable());
    ctx.device.destroy();
    let err = block_on(engine.next_event()).expect_err("a step on a destroyed device succeeded");
    eprintln!("pending call: {err}");
    assert_eq!(err.code(), "device_lost", "{err}");
    assert!(!engine.usable());
    assert!(engine.lost_reason().is_some());
    // Every later call that would run the model says so too.
    let err = start_greedy(&mut engine).expect_err("a generation started on a lost device");
    assert_eq!(err.code(), "device_lost", "{err}");
    let err = block_on(engine.score(&Prompt::Text(PROMPT.into()), &Continuation::Text(" Paris".into()))).expect_err("scored");
    assert_eq!(err.code(), "device_lost", "{err}");
    engine.dispose();

    // A new load (a new device) runs as before.
    let Some(fresh) = new_context() else { return };
    let mut engine = gpu_engine(&path, &fresh).unwrap();
    assert!(engine.usable());
    assert_eq!(greedy_ids(&mut engine), want);
}

#[test]
fn an_allocation_the_device_refuses_is_a_typed_error_not_a_panic() {
    let Some(ctx) = new_context() else { return };
    let too_large = ctx.device.limits().max_buffer_size + 4;
    // Inside an error scope: the scope's check reports it.
    let scope = ctx.fault_scope();
    let _buffer = ctx.storage("too large", too_large);
    match block_on(scope.close().result()) {
        Err(e @ (GpuError::Fault(_) | GpuError::OutOfMemory(_))) => eprintln!("scoped: {e}"),
        other => panic!("expected a typed fault, got {other:?}"),
    }
    assert!(ctx.check_faults().is_ok(), "a scoped error leaked to the uncaptured handler");
    // Outside any scope: recorded instead of wgpu's default panic, reported once.
    let _buffer = ctx.storage("too large", too_large);
    assert!(matches!(ctx.check_faults(), Err(GpuError::Fault(_) | GpuError::OutOfMemory(_))));
    assert!(ctx.check_faults().is_ok());
}

#[test]
fn a_fault_during_a_load_or_a_generation_is_a_backend_error_and_the_engine_stays_usable() {
    let Some(path) = common::model_path(SMOLLM2) else { return };
    let Some(ctx) = new_context() else { return };
    let too_large = ctx.device.limits().max_buffer_size + 4;

    // The device reports an error in the middle of the upload: the load fails with it.
    let options = LoadOptions { backend: BackendChoice::Gpu, max_context: Some(128), ..LoadOptions::default() };
    let mut loader = EngineLoader::with_gpu(&options, Ok(Rc::clone(&ctx))).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    loader.push(head).unwrap();
    let _buffer = ctx.storage("too large", too_large);
    let err = loader.push(tail).map(|_| ()).and_then(|()| block_on(loader.finish(None)).map(|_| ()));
    let err = err.expect_err("the load ignored the device's error");
    eprintln!("load: {err}");
    assert_eq!(err.code(), "backend", "{err}");

    // And during a generation: that step fails with it; the engine stays usable.
    let Some(ctx) = new_context() else { return };
    let mut engine = gpu_engine(&path, &ctx).unwrap();
    let want = greedy_ids(&mut engine);
    start_greedy(&mut engine).unwrap();
    assert!(block_on(engine.next_event()).unwrap().is_some());
    let _buffer = ctx.storage("too large", too_large);
    let err = block_on(engine.next_event()).expect_err("the step ignored the device's error");
    eprintln!("step: {err}");
    assert_eq!(err.code(), "backend", "{err}");
    assert!(engine.usable());
    assert_eq!(greedy_ids(&mut engine), want);
}
