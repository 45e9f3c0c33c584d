//! The WebGPU backend: the whole forward pass in WGSL compute shaders, through wgpu.
//!
//! - this file: the device ([`GpuContext`]: adapter choice split from everything else, so
//!   tests and the browser can inject their own device), shader sources and their knobs, the
//!   pipeline cache, and [`Recorder`], which batches a step's dispatches into one command
//!   encoder and one `queue.submit`.
//! - [`repack`]: GGUF blocks → word-aligned GPU layout; [`GpuMatrix`] (split by rows when a
//!   tensor exceeds the adapter's binding size).
//! - [`kernels`]: one typed method per kernel on [`Recorder`].
//! - [`model`]: [`GpuModel`], the decoder, implementing [`crate::backend::Backend`].
//!
//! Activations and the KV cache are f16 where the adapter has `shader-f16` and f32 otherwise
//! (the `act` knob); accumulations are always f32; logits are always f32.

pub mod kernels;
pub mod model;
pub mod repack;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use model::{check_fits, AheadStats, GpuFootprint, GpuModel, GpuModelBuilder};
pub use repack::{FusedMatrix, GpuMatrix};

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no WebGPU adapter: {0}")]
    NoAdapter(String),
    #[error("the WebGPU device could not be created: {0}")]
    Device(String),
    #[error("the adapter cannot hold this model: {what} needs {needed} bytes, the adapter allows {allowed}")]
    TooLarge { what: String, needed: u64, allowed: u64 },
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    #[error("tensor '{name}' has type {ty:?}, which has no WebGPU kernel")]
    UnsupportedType { name: String, ty: crate::quant::GgmlType },
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
    #[error("model: {0}")]
    Model(String),
    #[error("invalid GPU option: {0}")]
    Option(String),
    /// The device is gone (driver reset, `GPUDevice.destroy()`, a crashed GPU process): every
    /// buffer with it. Only a new device (a new load) can run the model again.
    #[error("the WebGPU device was lost: {0}")]
    DeviceLost(String),
    #[error("the GPU is out of memory: {0}")]
    OutOfMemory(String),
    /// A WebGPU validation or internal error: a limit the checks before it missed, or a bug.
    #[error("WebGPU error: {0}")]
    Fault(String),
}

impl From<wgpu::Error> for GpuError {
    fn from(e: wgpu::Error) -> Self {
        match e {
            // Its Display is only "Out of Memory"; the source says which call.
            wgpu::Error::OutOfMemory { source } => GpuError::OutOfMemory(source.to_string()),
            wgpu::Error::Validation { description, .. } | wgpu::Error::Internal { description, .. } => {
                GpuError::Fault(description.trim_end().to_string())
            }
        }
    }
}

/// What the device reports outside the result of any one call: its loss (the device-lost
/// callback) and errors that no error scope caught (the uncaptured-error handler). Shared
/// with those callbacks, which wgpu may call from its own threads natively.
#[derive(Debug, Default)]
pub struct DeviceFaults {
    lost: Mutex<Option<String>>,
    uncaptured: Mutex<Option<GpuError>>,
}

impl DeviceFaults {
    /// Why the device was lost, once it has been.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_lost(&self, why: String) {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why);
    }

    /// The first error no scope caught since the last call, if any.
    pub fn take_uncaptured(&self) -> Option<GpuError> {
        self.uncaptured.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // no handler in the browser: see from_device
    fn record(&self, e: wgpu::Error) {
        let e = GpuError::from(e);
        // Shown where it happened, as wgpu's default handler would (which then panics).
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("pensive: uncaptured WebGPU error: {e}");
        self.uncaptured.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
    }
}

/// WebGPU error scopes for out-of-memory and validation errors: everything recorded on the
/// device between [`GpuContext::fault_scope`] and [`FaultScope::close`] reports its errors
/// here instead of to the uncaptured-error handler. Scopes form a stack: close them in the
/// reverse order of opening, and never hold one across a call that opens another.
pub struct FaultScope {
    // Dropped (and so popped) in field order: the inner scope first.
    validation: wgpu::ErrorScopeGuard,
    out_of_memory: wgpu::ErrorScopeGuard,
}

/// The outcome of a closed [`FaultScope`]: natively known at once, in the browser once the
/// GPU process has checked every call made inside the scope.
pub struct FaultCheck(std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), GpuError>>>>);

impl FaultScope {
    /// Close the scope now (later calls are outside it); its first error, out-of-memory
    /// before validation, arrives through the returned check.
    pub fn close(self) -> FaultCheck {
        let FaultScope { validation, out_of_memory } = self;
        let validation = validation.pop();
        let out_of_memory = out_of_memory.pop();
        FaultCheck(Box::pin(async move {
            let (validation, out_of_memory) = (validation.await, out_of_memory.await);
            match out_of_memory.or(validation) {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        }))
    }
}

impl FaultCheck {
    pub async fn result(self) -> Result<(), GpuError> {
        self.0.await
    }
}

/// Element type of activations and the KV cache on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }
}

/// One kernel family = one `.wgsl` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    Norm,
    Rope,
    Attention,
    Elementwise,
    Matmul,
    Embed,
    Argmax,
    Sample,
}

/// Shared by the weight-reading kernels (matmul, embed); see its header for the layout.
pub const DEQUANT_WGSL: &str = include_str!("../../shaders/dequant.wgsl");
/// Shared by the kernels that rotate (rope, and matmul's fused q/k/v epilogue).
pub const ROTARY_WGSL: &str = include_str!("../../shaders/rotary.wgsl");

impl Shader {
    pub const ALL: [Shader; 8] = [
        Shader::Norm,
        Shader::Rope,
        Shader::Attention,
        Shader::Elementwise,
        Shader::Matmul,
        Shader::Embed,
        Shader::Argmax,
        Shader::Sample,
    ];

    /// The file's own source (without prelude or library).
    pub fn source(self) -> &'static str {
        match self {
            Shader::Norm => include_str!("../../shaders/norm.wgsl"),
            Shader::Rope => include_str!("../../shaders/rope.wgsl"),
            Shader::Attention => include_str!("../../shaders/attention.wgsl"),
            Shader::Elementwise => include_str!("../../shaders/elementwise.wgsl"),
            Shader::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Shader::Embed => include_str!("../../shaders/embed.wgsl"),
            Shader::Argmax => include_str!("../../shaders/argmax.wgsl"),
            Shader::Sample => include_str!("../../shaders/sample.wgsl"),
        }
    }

    pub fn uses_dequant(self) -> bool {
        matches!(self, Shader::Matmul | Shader::Embed)
    }

    pub fn uses_rotary(self) -> bool {
        matches!(self, Shader::Matmul | Shader::Rope)
    }

    /// Entry points, for tests that validate every one.
    pub fn entries(self) -> &'static [&'static str] {
        match self {
            Shader::Norm => &["rms_norm", "rms_norm_heads"],
            Shader::Rope => &["rope", "rope_store_kv", "qk_norm_rope"],
            Shader::Attention => &["attend_split", "attend_group_split", "attend_merge"],
            Shader::Elementwise => &["silu_mul", "add"],
            Shader::Matmul => &["matmul", "matmul_qkv", "matmul_gate_up", "lanes_probe"],
            Shader::Embed => &["embed"],
            Shader::Argmax => &["ban", "argmax_part", "argmax_final"],
            Shader::Sample => &["adjust", "sample"],
        }
    }
}

/// The compile-time knobs of a shader, written as a WGSL prelude. Every knob is always
/// emitted (unused ones at their defaults), so one prelude fits every file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Knobs {
    /// `act`: activations and KV cache.
    pub act: Dtype,
    /// `WTYPE`: GGUF ggml_type id of the weights read (matmul, embed).
    pub wtype: u32,
    /// `TT`: tokens per matmul workgroup (1 for decode).
    pub tt: u32,
    /// `out_t`: f32 output from matmul (logits) instead of `act`.
    pub out_f32: bool,
    /// `X_EVEN`: matmul's x offset and stride are even, so with f16 activations every run of
    /// 4 elements starts on a word and is read as 2 words instead of 4 half-words.
    pub x_even: bool,
    /// `LANES`: matmul lanes per row group (see matmul.wgsl); [`GpuContext::matmul_lanes`].
    pub lanes: u32,
    /// `WTYPE1`, `WTYPE2`: weight types of segments 1 and 2 of a fused matmul (k, v / up).
    pub wtype1: u32,
    pub wtype2: u32,
    /// `NORM_COLS`: width of the RMSNorm a fused matmul folds into its prologue (0: none).
    pub norm_cols: u32,
    /// `ROPE`: matmul_qkv rotates q and k in its epilogue.
    pub rope: bool,
    /// `X_F32`: matmul's x is f32 whatever `act` is (the residual stream, which a folded
    /// RMSNorm reads).
    pub x_f32: bool,
    /// `SUBGROUP_REDUCE`: matmul sums a row group's lanes with subgroup shuffles instead of
    /// a tree in workgroup memory (`enable subgroups;`; [`GpuContext::subgroup_reduce`]).
    pub subgroups: bool,
}

impl Knobs {
    pub fn new(act: Dtype) -> Self {
        Knobs { act, wtype: 0, tt: 1, out_f32: false, x_even: true, lanes: 32, wtype1: 0, wtype2: 0, norm_cols: 0, rope: false, x_f32: false, subgroups: false }
    }

    pub fn prelude(&self) -> String {
        let act = match self.act {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
        };
        let out = if self.out_f32 { "f32" } else { act };
        let mut enable = String::new();
        if self.act == Dtype::F16 {
            enable.push_str("enable f16;\n");
        }
        // shuffle_xor exists either way, so that the dead branch compiles without subgroup
        // support; it is only called under SUBGROUP_REDUCE. (No `enable subgroups;`: naga 30
        // refuses the directive and gates the built-ins by the device's feature instead. A
        // browser would need it, but wgpu 30 cannot request the feature there.)
        let shuffle = if self.subgroups { "subgroupShuffleXor(v, mask)" } else { "v" };
        // x_sh holds the normed row in vec4s, zero padded to whole 8-element units.
        let x_sh_len = (self.norm_cols.div_ceil(8) * 2).max(1);
        format!(
            "{enable}alias act = {act};\nalias out_t = {out};\nconst ACT_F16: bool = {};\nconst WTYPE: u32 = {}u;\nconst WTYPE1: u32 = {}u;\nconst WTYPE2: u32 = {}u;\nconst TT: u32 = {}u;\nconst X_EVEN: bool = {};\nconst LANES: u32 = {}u;\nconst NORM_COLS: u32 = {}u;\nconst X_SH_LEN: u32 = {x_sh_len}u;\nconst ROPE: bool = {};\nconst X_F32: bool = {};\nconst SUBGROUP_REDUCE: bool = {};\nfn shuffle_xor(v: f32, mask: u32) -> f32 {{ return {shuffle}; }}\n",
            self.act == Dtype::F16, self.wtype, self.wtype1, self.wtype2, self.tt, self.x_even, self.lanes, self.norm_cols, self.rope, self.x_f32, self.subgroups
        )
    }
}

impl Knobs {
    /// `w_word`: whether matmul and embed bind the weights as `vec4<u32>` (16-byte loads of
    /// aligned quant runs) — with the GPU shape (wide rows, lanes ≥ 16) — or as `u32`: CPU
    /// adapters run 8 lanes, and there a 16-byte word read for one u32 costs four gathers.
    pub fn wide(&self) -> bool {
        self.lanes >= 16
    }

    /// dequant.wgsl's access to the weights `w: array<w_word>` that its users declare: word
    /// i (`wd`), words i..i+4 (`load4`), and the same with i a multiple of 4 (`load4a`: one
    /// 16-byte load when wide; every weight buffer and fused segment starts on 16 bytes).
    pub fn weight_access(&self) -> &'static str {
        if self.wide() {
            "alias w_word = vec4<u32>;\n\
             fn wd(i: u32) -> u32 { return w[i >> 2u][i & 3u]; }\n\
             fn load4(i: u32) -> vec4<u32> { return vec4<u32>(wd(i), wd(i + 1u), wd(i + 2u), wd(i + 3u)); }\n\
             fn load4a(i: u32) -> vec4<u32> { return w[i >> 2u]; }\n"
        } else {
            "alias w_word = u32;\n\
             fn wd(i: u32) -> u32 { return w[i]; }\n\
             fn load4(i: u32) -> vec4<u32> { return vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]); }\n\
             fn load4a(i: u32) -> vec4<u32> { return load4(i); }\n"
        }
    }
}

/// Full WGSL of `shader` under `knobs`: prelude, then dequant.wgsl if used (with the weight
/// accessors), then the file.
pub fn shader_source(shader: Shader, knobs: &Knobs) -> String {
    let mut s = knobs.prelude();
    if shader.uses_dequant() {
        s.push_str(knobs.weight_access());
        s.push_str(DEQUANT_WGSL);
    }
    if shader.uses_rotary() {
        s.push_str(ROTARY_WGSL);
    }
    s.push_str(shader.source());
    s
}

/// What a model needs from the adapter. Limits are the WebGPU defaults (which every
/// adapter has) except the binding/buffer sizes, raised only as far as the largest tensor
/// asks — tensors beyond the adapter's limit are split, so the adapter's maximum suffices.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Bytes of the largest single buffer the model would like to bind whole.
    pub largest_tensor_bytes: u64,
    /// Use f16 activations/KV when the adapter has `shader-f16`.
    pub prefer_f16: bool,
    /// Cap on the bytes of one binding below the adapter's limit (tests prove splitting).
    pub binding_cap: Option<u64>,
    /// Matmul lanes per row (a power of two ≤ 64) instead of the adapter's default
    /// ([`GpuContext::matmul_lanes`]); tests use it to run both shapes on one adapter.
    pub matmul_lanes: Option<u32>,
    /// Bytes of GPU memory a model may use; `None`: [`default_memory_budget`].
    pub memory_budget: Option<u64>,
    /// Keep each layer's q/k/v and gate/up as separate matrices run by separate kernels, as
    /// when they cannot be fused (tests of that path; before/after comparisons).
    pub separate_projections: bool,
    /// Use subgroup operations where the adapter has them and they check out
    /// ([`GpuContext::subgroup_reduce`]); off: the workgroup-memory paths only.
    pub subgroups: bool,
    /// Most splits attention cuts a decode step's context into instead of the adapter's
    /// default ([`GpuContext::attention_max_splits`]).
    pub attention_splits: Option<usize>,
    /// Split lengths a multiple of this instead of the adapter's default
    /// ([`GpuContext::attention_split_granule`]); tests run a GPU's 64 on a CPU adapter.
    pub attention_split_granule: Option<usize>,
    /// Request `timestamp-query` where the adapter has it ([`GpuContext::enable_profiling`];
    /// on by default natively).
    pub timestamps: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            largest_tensor_bytes: 0,
            prefer_f16: true,
            binding_cap: None,
            matmul_lanes: None,
            memory_budget: None,
            separate_projections: false,
            subgroups: true,
            attention_splits: None,
            attention_split_granule: None,
            // Natively, where a bench may profile ([`GpuContext::enable_profiling`]).
            timestamps: cfg!(not(target_arch = "wasm32")),
        }
    }
}

/// How much GPU memory a model may take when the caller sets no budget.
///
/// WebGPU reports no memory size (neither does wgpu natively), so this is an estimate's rule,
/// not a measurement. In the browser the only hint is `navigator.deviceMemory`: the machine's
/// RAM in GiB, rounded to a power of two and capped by the browser (the headless Chromium of
/// our tests reports 16). Integrated GPUs and software adapters (SwiftShader) draw on that
/// RAM, discrete GPUs rarely have more than it; we allow half of it, leaving the rest to the
/// page, the browser and the system. Natively (and where the hint is absent) no budget is
/// checked: a model larger than the device's memory fails when wgpu cannot allocate it.
pub fn default_memory_budget() -> Option<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
        let gib = js_sys::Reflect::get(&navigator, &"deviceMemory".into()).ok()?.as_f64()?;
        (gib.is_finite() && gib > 0.0).then(|| (gib / 2.0 * (1u64 << 30) as f64) as u64)
    }
    #[cfg(not(target_arch = "wasm32"))]
    None
}

/// Bytes a storage buffer of `bytes` really takes ([`GpuContext::storage`] rounds up): whole
/// 16-byte words, so that matmul.wgsl can bind any weight buffer as `array<vec4<u32>>`.
pub fn storage_bytes(bytes: u64) -> u64 {
    bytes.max(16).next_multiple_of(16)
}

/// Pipelines are cached by (shader, entry, knobs).
type PipelineKey = (Shader, &'static str, Knobs);

/// A bind group is cached by its pipeline, its uniform slot and its buffer ranges. A model's
/// steps record the same dispatches in the same order, so dispatch i of every decode step
/// lands on the same arena slot with the same buffers: after the first step (or the warm-up
/// at load) a step creates no bind groups. The slot's *contents* (the parameters) are
/// rewritten every step; the bind group only names the range.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BindKey {
    pipeline: PipelineKey,
    slot: u64,
    buffers: Vec<Option<(wgpu::Buffer, u64, Option<wgpu::BufferSize>)>>,
}

/// Bind groups kept alive at most (they hold their buffers): far above a model's few
/// thousand, a bound for callers that keep creating buffers (tests).
const MAX_CACHED_BIND_GROUPS: usize = 16384;

/// A device, its queue and the pipeline cache.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// Activation/KV type chosen for this device.
    act: Dtype,
    /// Largest binding (and buffer) this context creates, ≤ the device's limits and ≤ what
    /// was asked of the adapter.
    max_binding: u64,
    /// Bytes of GPU memory a model may take (see [`default_memory_budget`]).
    memory_budget: Option<u64>,
    /// Bytes of the storage buffers created so far (what [`model::check_fits`] estimates).
    pub storage_allocated: Cell<u64>,
    /// Uniform slots must start at multiples of this.
    uniform_align: u64,
    /// Matmul lanes per row (matmul.wgsl LANES).
    matmul_lanes: u32,
    /// Whether matmul reduces with subgroup shuffles ([`Self::subgroup_reduce`]).
    subgroup_reduce: bool,
    /// [`Self::attention_max_splits`].
    attention_max_splits: usize,
    /// [`Self::attention_split_granule`].
    attention_split_granule: usize,
    /// [`GpuOptions::separate_projections`].
    pub separate_projections: bool,
    pipelines: RefCell<HashMap<PipelineKey, (wgpu::ComputePipeline, wgpu::BindGroupLayout)>>,
    bind_groups: RefCell<HashMap<BindKey, wgpu::BindGroup>>,
    /// Per-step uniform arena: every dispatch of a step gets one slot.
    params: wgpu::Buffer,
    /// Dispatches, submits and bind groups created since creation (for the "per decode
    /// step" figures).
    pub dispatches: Cell<u64>,
    pub submits: Cell<u64>,
    pub bind_groups_created: Cell<u64>,
    /// Bytes mapped back to the host since creation.
    pub readback_bytes: Cell<u64>,
    /// Loss of the device and errors outside any scope, as its callbacks report them.
    pub faults: Arc<DeviceFaults>,
    /// GPU time per kernel entry point, when asked for ([`GpuContext::enable_profiling`]).
    profiler: std::cell::OnceCell<Profiler>,
}

/// Timestamps around every dispatch (each then gets a compute pass of its own), resolved
/// and read back after each submit, summed per entry point. Native only: the readback
/// blocks. It serializes the dispatches' passes and costs a readback per submit, so the
/// totals are for comparing kernels, not a speed figure.
struct Profiler {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period: f64,
    totals: RefCell<HashMap<&'static str, (f64, u64)>>,
}

/// Dispatches one submit may time (two queries each).
const PROFILED_DISPATCHES: u64 = 1024;

impl Profiler {
    /// Wait for `submission`, read its timestamps and add each dispatch's time to its
    /// entry's total. Failures (a lost device) only lose the sample.
    fn collect(&self, device: &wgpu::Device, entries: &[&'static str], submission: wgpu::SubmissionIndex) {
        let bytes = entries.len() as u64 * 16;
        self.readback.map_async(wgpu::MapMode::Read, ..bytes, |_| {});
        if device.poll(wgpu::PollType::Wait { submission_index: Some(submission), timeout: None }).is_err() {
            return;
        }
        if let Ok(view) = self.readback.get_mapped_range(..bytes) {
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&view);
            let mut totals = self.totals.borrow_mut();
            for (i, entry) in entries.iter().enumerate() {
                let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * self.period;
                let t = totals.entry(entry).or_insert((0.0, 0));
                t.0 += ns;
                t.1 += 1;
            }
        }
        self.readback.unmap();
    }
}

/// Total GPU time of one kernel entry point since profiling started (or was reset).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub entry: &'static str,
    pub ms: f64,
    pub dispatches: u64,
}

/// Bytes of one dispatch's uniform slot (the largest Params struct is 48 bytes).
const PARAM_SLOT: u64 = 256;
/// Slots in the arena: a step with more dispatches is submitted in several parts.
const PARAM_SLOTS: u64 = 4096;

impl GpuContext {
    /// Pick an adapter (high performance; `WGPU_BACKEND` etc. from the environment natively)
    /// and create the device. Adapter choice is split from [`GpuContext::from_device`] so
    /// that tests and the browser can bring their own device.
    pub async fn new(options: &GpuOptions) -> Result<Self, GpuError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        let descriptor = Self::device_descriptor(&adapter, options);
        let (device, queue) = adapter.request_device(&descriptor).await.map_err(|e| GpuError::Device(e.to_string()))?;
        let subgroups = device.features().contains(wgpu::Features::SUBGROUP);
        // A device may have higher limits than were asked for (WebGPU raises requests below
        // its defaults to the defaults), but the adapter only vouched for what it reported.
        let asked = &descriptor.required_limits;
        let cap = asked.max_storage_buffer_binding_size.min(asked.max_buffer_size);
        let options = GpuOptions { binding_cap: Some(options.binding_cap.map_or(cap, |c| c.min(cap))), ..options.clone() };
        let mut ctx = Self::from_device(device, queue, adapter.get_info(), &options)?;
        if subgroups {
            ctx.subgroup_reduce = ctx.probe_subgroup_reduce().await;
        }
        Ok(ctx)
    }

    /// Whether matmul's subgroup reduction gives the workgroup-memory tree's sums here.
    /// It assumes a row group's LANES lanes are adjacent invocations of one subgroup, which
    /// WGSL does not promise: the adapter's smallest subgroup must hold LANES lanes, and
    /// matmul.wgsl `lanes_probe` (the real reduction on known values) must come out exact.
    /// Any failure (no feature, an error, a wrong sum) means no.
    async fn probe_subgroup_reduce(&self) -> bool {
        if self.info.subgroup_min_size < self.matmul_lanes {
            return false;
        }
        let scope = self.fault_scope();
        let knobs = Knobs { out_f32: true, subgroups: true, ..self.knobs() };
        let (pipeline, layout) = self.pipeline(Shader::Matmul, "lanes_probe", knobs);
        let out = self.storage("lanes probe", 4 * 4 * 64);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("lanes probe"),
            layout: &layout,
            entries: &[wgpu::BindGroupEntry { binding: 3, resource: out.as_entire_binding() }],
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        self.queue.submit([encoder.finish()]);
        let got = self.read_bytes(&out, 0, 4 * 4 * 64).await;
        self.storage_allocated.set(self.storage_allocated.get().saturating_sub(out.size()));
        out.destroy();
        if scope.close().result().await.is_err() {
            return false;
        }
        let Ok(got) = got else { return false };
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&got);
        // Invocation i holds 4 i + j in accumulator j (ACC is 4 in decode); each row group's
        // first lane writes its sums at 4 g + j.
        let lanes = self.matmul_lanes as usize;
        (0..64 / lanes).all(|g| {
            (0..4).all(|j| {
                let want: usize = (g * lanes..(g + 1) * lanes).map(|i| 4 * i + j).sum();
                got.get(4 * g + j) == Some(&(want as f32))
            })
        })
    }

    /// The features and limits to request from `adapter` for `options`.
    pub fn device_descriptor(adapter: &wgpu::Adapter, options: &GpuOptions) -> wgpu::DeviceDescriptor<'static> {
        let have = adapter.limits();
        let mut limits = wgpu::Limits::default();
        let want = options.largest_tensor_bytes.max(limits.max_storage_buffer_binding_size);
        limits.max_storage_buffer_binding_size = want.min(have.max_storage_buffer_binding_size);
        limits.max_buffer_size = want.max(limits.max_buffer_size).min(have.max_buffer_size);
        let mut features = wgpu::Features::empty();
        if options.prefer_f16 && adapter.features().contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        if options.subgroups && adapter.features().contains(wgpu::Features::SUBGROUP) {
            features |= wgpu::Features::SUBGROUP;
        }
        if options.timestamps && adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        wgpu::DeviceDescriptor {
            label: Some("pensive"),
            required_features: features,
            required_limits: limits,
            ..Default::default()
        }
    }

    /// Wrap an existing device. f16 is used when the device has `SHADER_F16` enabled and
    /// `options.prefer_f16` is set. Takes over the device's lost callback and (natively) its
    /// uncaptured-error handler: see [`DeviceFaults`].
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        options: &GpuOptions,
    ) -> Result<Self, GpuError> {
        let limits = device.limits();
        let act = if options.prefer_f16 && device.features().contains(wgpu::Features::SHADER_F16) {
            Dtype::F16
        } else {
            Dtype::F32
        };
        let mut max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        if let Some(cap) = options.binding_cap {
            max_binding = max_binding.min(cap);
        }
        // Whole 16-byte words (storage_bytes): a buffer that fits never grows past the limit.
        max_binding &= !15;
        // A CPU "GPU" (lavapipe, SwiftShader) runs a workgroup as SIMD loops, where few lanes
        // per row and long loops win; a real GPU wants a wide, coalesced row read.
        let matmul_lanes = match options.matmul_lanes {
            Some(n) if n.is_power_of_two() && n <= 64 => n,
            Some(n) => return Err(GpuError::Option(format!("matmul_lanes {n} is not a power of two ≤ 64"))),
            None if info.device_type == wgpu::DeviceType::Cpu => 8,
            None => 32,
        };
        let faults = Arc::new(DeviceFaults::default());
        let on_lost = Arc::clone(&faults);
        device.set_device_lost_callback(move |reason, message| on_lost.set_lost(format!("{reason:?} {message}").trim_end().into()));
        // Natively wgpu's default handler panics on any error outside a scope (an allocation
        // the driver refuses, say); ours records it for the next call to report. In the
        // browser the default only logs, and wgpu's web handler would itself panic on a
        // GPUInternalError (it converts only validation and out-of-memory errors), so the
        // default stays there: the scopes and the lost flag carry what the calls report.
        #[cfg(not(target_arch = "wasm32"))]
        {
            let on_error = Arc::clone(&faults);
            device.on_uncaptured_error(Arc::new(move |e| on_error.record(e)));
        }
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params arena"),
            size: PARAM_SLOT * PARAM_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuContext {
            uniform_align: limits.min_uniform_buffer_offset_alignment as u64,
            matmul_lanes,
            subgroup_reduce: false,
            // A CPU adapter runs a handful of workgroups at once; a GPU needs hundreds, and
            // a decode step's attention has one per kv head and split.
            attention_max_splits: options.attention_splits.unwrap_or(if info.device_type == wgpu::DeviceType::Cpu { 32 } else { 256 }).max(1),
            attention_split_granule: options
                .attention_split_granule
                .unwrap_or(if info.device_type == wgpu::DeviceType::Cpu { 128 } else { 64 })
                .next_multiple_of(64),
            separate_projections: options.separate_projections,
            device,
            queue,
            info,
            act,
            max_binding,
            memory_budget: options.memory_budget.or_else(default_memory_budget),
            storage_allocated: Cell::new(0),
            pipelines: RefCell::new(HashMap::new()),
            bind_groups: RefCell::new(HashMap::new()),
            params,
            dispatches: Cell::new(0),
            submits: Cell::new(0),
            bind_groups_created: Cell::new(0),
            readback_bytes: Cell::new(0),
            faults,
            profiler: std::cell::OnceCell::new(),
        })
    }

    /// Open an error scope for out-of-memory and validation errors ([`FaultScope`]).
    pub fn fault_scope(&self) -> FaultScope {
        let out_of_memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        FaultScope { validation, out_of_memory }
    }

    /// Before work on the device: a lost device, or an error no scope caught since the last
    /// check, is the error of the call about to start.
    pub fn check_faults(&self) -> Result<(), GpuError> {
        if let Some(why) = self.faults.lost() {
            return Err(GpuError::DeviceLost(why));
        }
        self.faults.take_uncaptured().map_or(Ok(()), Err)
    }

    /// After work on the device failed: whether the device was lost, which then is the
    /// failure's real cause. In the browser a destroyed device rejects a pending readback and
    /// resolves `device.lost` in separate tasks, in either order, and on a loaded machine
    /// the loss can come from the GPU process well after the rejection (a worker saw it
    /// later than ten `setTimeout(0)` hops): the wait backs off up to [`LOST_WAIT_MS`]
    /// before the answer is no. Only a failed step pays it.
    pub async fn lost_after_failure(&self) -> Option<String> {
        // Natively wgpu reports a destroyed device's loss from `poll` once its queue is idle;
        // a wait on one submission (a step run ahead) can fail before that poll happens, with
        // "submission not returned by a successful submit". Drive the device once more so the
        // callback has run before the flag is read; its own error says nothing new.
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(std::time::Duration::from_secs(5)) });
        #[cfg(target_arch = "wasm32")]
        {
            let mut waited = 0;
            let mut delay = 0;
            while self.faults.lost().is_none() && waited < LOST_WAIT_MS {
                later_task(delay).await;
                waited += delay.max(1);
                delay = (delay * 2).clamp(1, 250);
            }
        }
        self.faults.lost()
    }

    /// Activation / KV cache element type.
    pub fn act(&self) -> Dtype {
        self.act
    }

    /// Matmul lanes per row (matmul.wgsl LANES): 8 on CPU adapters, 32 on GPUs.
    pub fn matmul_lanes(&self) -> u32 {
        self.matmul_lanes
    }

    /// Most splits (parallel parts, each ≥ 64 positions) attention cuts a decode step's
    /// context into: 32 on CPU adapters, 256 on GPUs (at 32k tokens, 128 splits of 256).
    pub fn attention_max_splits(&self) -> usize {
        self.attention_max_splits
    }

    /// Split lengths are multiples of this: 128 on CPU adapters, where attend_group_split's
    /// 128-position steps (two positions per lane) would otherwise run half masked, which
    /// costs a CPU as much as real work; 64 on GPUs, twice the splits (workgroups) for a
    /// context, the masked half costing no memory traffic.
    pub fn attention_split_granule(&self) -> usize {
        self.attention_split_granule
    }

    /// Time every dispatch from now on (natively, where the device has `TIMESTAMP_QUERY`,
    /// which [`GpuOptions::timestamps`] requests). Returns whether it could.
    pub fn enable_profiling(&self) -> bool {
        if self.profiler.get().is_some() {
            return true;
        }
        if cfg!(target_arch = "wasm32") || !self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return false;
        }
        let n = 2 * PROFILED_DISPATCHES;
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("profile"), ty: wgpu::QueryType::Timestamp, count: n as u32 });
        let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: n * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile readback"),
            size: n * 8,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let period = f64::from(self.queue.get_timestamp_period());
        self.profiler.get_or_init(|| Profiler { queries, resolved, readback, period, totals: RefCell::new(HashMap::new()) });
        true
    }

    /// GPU time per entry point since profiling started or the last call (which resets
    /// the totals), most expensive first. Empty when not profiling.
    pub fn take_kernel_times(&self) -> Vec<KernelTime> {
        let Some(p) = self.profiler.get() else { return Vec::new() };
        let mut all: Vec<KernelTime> =
            p.totals.borrow_mut().drain().map(|(entry, (ns, dispatches))| KernelTime { entry, ms: ns / 1e6, dispatches }).collect();
        all.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        all
    }

    /// Whether matmul sums a row's lanes with subgroup shuffles: the device has the
    /// `subgroups` feature (natively; wgpu's WebGPU backend does not request it yet) and
    /// the load-time probe checked the reduction.
    pub fn subgroup_reduce(&self) -> bool {
        self.subgroup_reduce
    }

    /// The knobs every pipeline of this context starts from.
    pub fn knobs(&self) -> Knobs {
        Knobs { lanes: self.matmul_lanes, subgroups: self.subgroup_reduce, ..Knobs::new(self.act) }
    }

    /// Bytes one binding (and one weight buffer) may hold here.
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// Bytes of GPU memory a model may take here, when known.
    pub fn memory_budget(&self) -> Option<u64> {
        self.memory_budget
    }

    /// One line about the adapter, its limits and features (for `--verbose` and reports).
    pub fn describe(&self) -> String {
        let l = self.device.limits();
        format!(
            "{} ({:?}, {:?}); act {:?}; matmul lanes {}{}{}; max_storage_buffer_binding_size {}, max_buffer_size {}, binding used {}",
            self.info.name, self.info.backend, self.info.device_type, self.act, self.matmul_lanes,
            if self.subgroup_reduce { ", subgroup reduction" } else { "" },
            if self.knobs().wide() { ", 16-byte weight words" } else { "" },
            l.max_storage_buffer_binding_size, l.max_buffer_size, self.max_binding
        )
    }

    /// The cached pipeline of `entry` in `shader` under `knobs`, compiling it on first use.
    pub fn pipeline(&self, shader: Shader, entry: &'static str, knobs: Knobs) -> (wgpu::ComputePipeline, wgpu::BindGroupLayout) {
        let key = (shader, entry, knobs);
        if let Some(p) = self.pipelines.borrow().get(&key) {
            return p.clone();
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(entry),
            source: wgpu::ShaderSource::Wgsl(shader_source(shader, &knobs).into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        self.pipelines.borrow_mut().insert(key, (pipeline.clone(), layout.clone()));
        (pipeline, layout)
    }

    /// A storage buffer of `bytes` (rounded up to 4), zeroed.
    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        let size = storage_bytes(bytes);
        self.storage_allocated.set(self.storage_allocated.get() + size);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data` (padded to 4 bytes).
    /// Give back a buffer made by [`Self::storage`] (its memory is freed once the GPU is done
    /// with it), so that `storage_allocated` counts only what the model holds.
    pub fn release(&self, buffer: wgpu::Buffer) {
        self.storage_allocated.set(self.storage_allocated.get().saturating_sub(buffer.size()));
        drop(buffer);
    }

    pub fn storage_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let buf = self.storage(label, data.len() as u64);
        if data.len() % 4 == 0 {
            self.queue.write_buffer(&buf, 0, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4), 0);
            self.queue.write_buffer(&buf, 0, &padded);
        }
        buf
    }

    /// An activation buffer of `n` elements of [`Self::act`], from f32 values.
    pub fn act_from_f32(&self, label: &str, values: &[f32]) -> wgpu::Buffer {
        self.storage_init(label, &to_act_bytes(self.act, values))
    }

    /// Copy `bytes` bytes of `src` back to the host. Natively this blocks in
    /// `device.poll`; in the browser the future resolves from the JS event loop.
    pub async fn read_bytes(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>, GpuError> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(src, offset, &staging, 0, bytes.next_multiple_of(4));
        self.queue.submit([encoder.finish()]);
        self.submits.set(self.submits.get() + 1);
        self.map_read(&staging, bytes).await
    }

    /// Map a MAP_READ buffer whose copy is already submitted and return its first `bytes`.
    pub async fn map_read(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, GpuError> {
        self.map_read_after(staging, bytes, None).await
    }

    /// [`Self::map_read`] of a buffer that `submission` (the last to write it) fills:
    /// natively only that submission is waited for, not later ones (a step run ahead).
    pub async fn map_read_after(&self, staging: &wgpu::Buffer, bytes: u64, submission: Option<wgpu::SubmissionIndex>) -> Result<Vec<u8>, GpuError> {
        let done = MapDone::default();
        let state = done.0.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.0 = Some(r.map_err(|e| e.to_string()));
            if let Some(w) = s.1.take() {
                w.wake();
            }
        });
        // Natively this drives the map to completion; on the web it is a no-op.
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait { submission_index: submission, timeout: None })
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        #[cfg(target_arch = "wasm32")]
        let _ = submission;
        done.await.map_err(GpuError::Readback)?;
        self.readback_bytes.set(self.readback_bytes.get() + bytes);
        let out = {
            let view = staging.get_mapped_range(..).map_err(|e| GpuError::Readback(e.to_string()))?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// Read `n` activations (of [`Self::act`]) as f32.
    pub async fn read_act(&self, src: &wgpu::Buffer, n: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_bytes(src, 0, (n * self.act.size()) as u64).await?;
        Ok(from_act_bytes(self.act, &bytes))
    }

    /// Read `n` f32 values.
    pub async fn read_f32(&self, src: &wgpu::Buffer, offset_elems: usize, n: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_bytes(src, (offset_elems * 4) as u64, (n * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Start recording one step (one command encoder, one submit at [`Recorder::submit`]).
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            ctx: self,
            encoder: self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") }),
            ops: Vec::new(),
            params: Vec::new(),
            timed: Vec::new(),
        }
    }
}

/// Milliseconds [`GpuContext::lost_after_failure`] waits for the device-lost callback.
#[cfg(target_arch = "wasm32")]
const LOST_WAIT_MS: u32 = 3000;

/// Resolves in a later task of the page's (or worker's) event loop: `setTimeout(ms)`.
#[cfg(target_arch = "wasm32")]
async fn later_task(ms: u32) {
    use wasm_bindgen::JsCast;
    let global = js_sys::global();
    let Ok(set_timeout) = js_sys::Reflect::get(&global, &"setTimeout".into()) else { return };
    let Ok(set_timeout) = set_timeout.dyn_into::<js_sys::Function>() else { return };
    let mut scheduled = true;
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        scheduled = set_timeout.call2(&global, &resolve, &ms.into()).is_ok();
    });
    if scheduled {
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }
}

/// f32 values as bytes of `dtype`.
pub fn to_act_bytes(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => bytemuck::cast_slice(values).to_vec(),
        Dtype::F16 => {
            let h: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
            bytemuck::cast_slice(&h).to_vec()
        }
    }
}

/// Bytes of `dtype` as f32 values.
pub fn from_act_bytes(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytemuck::pod_collect_to_vec(bytes),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes).iter().map(|h| h.to_f32()).collect(),
    }
}

/// A one-shot future completed by `map_async`'s callback (Arc/Mutex because wgpu requires
/// the callback to be Send natively).
#[derive(Default)]
struct MapDone(Arc<Mutex<MapState>>);
type MapState = (Option<Result<(), String>>, Option<std::task::Waker>);

impl std::future::Future for MapDone {
    type Output = Result<(), String>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match s.0.take() {
            Some(r) => std::task::Poll::Ready(r),
            None => {
                s.1 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

struct Op {
    entry: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
}

/// The dispatches of one step. Each dispatch's parameters go to a slot of the context's
/// uniform arena, written with one `write_buffer` just before the single `submit` (queue
/// writes are ordered before the submit that follows them, after earlier submits).
pub struct Recorder<'c> {
    ctx: &'c GpuContext,
    encoder: wgpu::CommandEncoder,
    ops: Vec<Op>,
    params: Vec<u8>,
    /// Profiling: the entry of each dispatch encoded since the last submit, in order.
    timed: Vec<&'static str>,
}

impl<'c> Recorder<'c> {
    pub fn ctx(&self) -> &'c GpuContext {
        self.ctx
    }

    /// Record `entry` of `shader` with uniform `params` at binding 0 and `buffers` at
    /// bindings 1.. in order (`None` skips a binding number the entry does not use).
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        shader: Shader,
        entry: &'static str,
        knobs: Knobs,
        params: &P,
        buffers: &[Option<wgpu::BindingResource<'_>>],
        groups: [u32; 3],
    ) {
        if groups.contains(&0) {
            return;
        }
        let slot = PARAM_SLOT.max(self.ctx.uniform_align);
        let profiled_full = self.ctx.profiler.get().is_some() && (self.timed.len() + self.ops.len()) as u64 >= PROFILED_DISPATCHES;
        if (self.params.len() as u64 + slot) > self.ctx.params.size() || profiled_full {
            self.flush();
        }
        let offset = self.params.len() as u64;
        let bytes = bytemuck::bytes_of(params);
        self.params.extend_from_slice(bytes);
        self.params.resize((offset + slot) as usize, 0);
        let (pipeline, layout) = self.ctx.pipeline(shader, entry, knobs);
        let param_size = wgpu::BufferSize::new((bytes.len() as u64).next_multiple_of(16));
        // Only whole-buffer ranges are cached (every kernel binds those); anything else is
        // built afresh.
        let ranges: Option<Vec<_>> = buffers
            .iter()
            .map(|b| match b {
                None => Some(None),
                Some(wgpu::BindingResource::Buffer(r)) => Some(Some((r.buffer.clone(), r.offset, r.size))),
                Some(_) => None,
            })
            .collect();
        let key = ranges.map(|buffers| BindKey { pipeline: (shader, entry, knobs), slot: offset, buffers });
        let cached = key.as_ref().and_then(|k| self.ctx.bind_groups.borrow().get(k).cloned());
        let bind_group = match cached {
            Some(bg) => bg,
            None => {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &self.ctx.params, offset, size: param_size }),
                }];
                for (i, b) in buffers.iter().enumerate() {
                    if let Some(b) = b {
                        entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.clone() });
                    }
                }
                let bg = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(entry),
                    layout: &layout,
                    entries: &entries,
                });
                self.ctx.bind_groups_created.set(self.ctx.bind_groups_created.get() + 1);
                if let Some(k) = key {
                    let mut cache = self.ctx.bind_groups.borrow_mut();
                    if cache.len() >= MAX_CACHED_BIND_GROUPS {
                        cache.clear();
                    }
                    cache.insert(k, bg.clone());
                }
                bg
            }
        };
        self.ops.push(Op { entry, pipeline, bind_group, groups });
    }

    /// Copy between buffers inside the step (recorded after the dispatches so far).
    pub fn copy(&mut self, src: &wgpu::Buffer, src_off: u64, dst: &wgpu::Buffer, dst_off: u64, bytes: u64) {
        self.encode_ops();
        self.encoder.copy_buffer_to_buffer(src, src_off, dst, dst_off, bytes);
    }

    fn encode_ops(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        if let Some(profiler) = self.ctx.profiler.get() {
            // A pass per dispatch, timestamps at its start and end.
            for op in &self.ops {
                let k = 2 * self.timed.len() as u32;
                let timestamp_writes = wgpu::ComputePassTimestampWrites {
                    query_set: &profiler.queries,
                    beginning_of_pass_write_index: Some(k),
                    end_of_pass_write_index: Some(k + 1),
                };
                let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(op.entry), timestamp_writes: Some(timestamp_writes) });
                pass.set_pipeline(&op.pipeline);
                pass.set_bind_group(0, &op.bind_group, &[]);
                pass.dispatch_workgroups(op.groups[0], op.groups[1], op.groups[2]);
                drop(pass);
                self.timed.push(op.entry);
            }
            self.ctx.dispatches.set(self.ctx.dispatches.get() + self.ops.len() as u64);
            self.ops.clear();
            return;
        }
        let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("step"), timestamp_writes: None });
        for op in &self.ops {
            pass.set_pipeline(&op.pipeline);
            pass.set_bind_group(0, &op.bind_group, &[]);
            pass.dispatch_workgroups(op.groups[0], op.groups[1], op.groups[2]);
        }
        drop(pass);
        self.ctx.dispatches.set(self.ctx.dispatches.get() + self.ops.len() as u64);
        self.ops.clear();
    }

    /// Submit what is recorded so far and keep recording (only when the arena is full).
    fn flush(&mut self) -> wgpu::SubmissionIndex {
        self.encode_ops();
        let timed = std::mem::take(&mut self.timed);
        if let (Some(p), false) = (self.ctx.profiler.get(), timed.is_empty()) {
            let n = 2 * timed.len() as u32;
            self.encoder.resolve_query_set(&p.queries, 0..n, &p.resolved, 0);
            self.encoder.copy_buffer_to_buffer(&p.resolved, 0, &p.readback, 0, u64::from(n) * 8);
        }
        let encoder = std::mem::replace(
            &mut self.encoder,
            self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") }),
        );
        self.ctx.queue.write_buffer(&self.ctx.params, 0, &self.params);
        let submission = self.ctx.queue.submit([encoder.finish()]);
        self.ctx.submits.set(self.ctx.submits.get() + 1);
        self.params.clear();
        if let (Some(p), false) = (self.ctx.profiler.get(), timed.is_empty()) {
            p.collect(&self.ctx.device, &timed, submission.clone());
        }
        submission
    }

    /// Write the parameters and submit the step: one `queue.submit`.
    pub fn submit(mut self) -> wgpu::SubmissionIndex {
        self.flush()
    }
}

/// Workgroup counts for `n` workgroups in a 2-D grid (each dimension ≤ 65535).
pub fn grid(n: u32) -> [u32; 2] {
    const MAX: u32 = 65535;
    if n <= MAX {
        [n, 1]
    } else {
        [MAX, n.div_ceil(MAX)]
    }
}
