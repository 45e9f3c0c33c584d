//! Helpers of the GPU tests: a device (or a loud skip), seeded random data, tolerances.
#![allow(dead_code)]

use pensive::gpu::{GpuContext, GpuOptions};

/// A context on the default adapter, f16 activations or not. Without an adapter: a failure
/// when PENSIVE_REQUIRE_GPU=1 (CI), otherwise a loud skip (None). An adapter without
/// shader-f16 asked for f16 also skips loudly (the f32 path still runs).
pub fn context(f16: bool, binding_cap: Option<u64>) -> Option<GpuContext> {
    context_with(GpuOptions { prefer_f16: f16, binding_cap, ..Default::default() })
}

/// [`context`] with any options.
pub fn context_with(options: GpuOptions) -> Option<GpuContext> {
    let f16 = options.prefer_f16;
    match pollster::block_on(GpuContext::new(&options)) {
        Ok(ctx) => {
            if f16 && ctx.act() != pensive::gpu::Dtype::F16 {
                eprintln!("SKIPPED (f16 path): adapter '{}' lacks shader-f16", ctx.info.name);
                return None;
            }
            Some(ctx)
        }
        Err(e) => {
            if std::env::var("PENSIVE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("PENSIVE_REQUIRE_GPU=1 but no GPU: {e}");
            }
            eprintln!("SKIPPED: no WebGPU adapter ({e}); install mesa-vulkan-drivers and set WGPU_BACKEND=vulkan");
            None
        }
    }
}

/// Both activation paths: f32 and f16.
pub fn contexts() -> Vec<GpuContext> {
    [false, true].into_iter().filter_map(|f16| context(f16, None)).collect()
}

/// Both activation paths, then f16 again with the matmul lanes per row that this adapter
/// does not use by default (8 on CPU adapters, 32 on GPUs), so both matmul shapes are tested
/// on any machine, and where the adapter reduces with subgroups, f16 again without them.
pub fn contexts_both_matmul_shapes() -> Vec<GpuContext> {
    let mut all = contexts();
    if let Some((default, subgroups)) = all.first().map(|c| (c.matmul_lanes(), c.subgroup_reduce())) {
        let other = if default == 8 { 32 } else { 8 };
        all.extend(context_with(GpuOptions { matmul_lanes: Some(other), ..Default::default() }));
        if subgroups {
            // The workgroup-memory reduction, which adapters without subgroups run.
            all.extend(context_with(GpuOptions { subgroups: false, ..Default::default() }));
        }
    }
    all
}

/// SplitMix64: a tiny seeded generator so every run sees the same inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Round-trip through the activation type, so CPU references see what the GPU saw.
pub fn as_act(ctx: &GpuContext, v: &[f32]) -> Vec<f32> {
    pensive::gpu::from_act_bytes(ctx.act(), &pensive::gpu::to_act_bytes(ctx.act(), v))
}

/// Tolerance of results stored as f32: |gpu - cpu| ≤ abs + rel·|cpu| (f32 rounding of
/// different summation orders).
pub const TOL_F32: (f32, f32) = (1e-4, 1e-4);
/// Results stored as f16 (half an ulp is 2^-11 ≈ 4.9e-4 relative) after f32 accumulation.
pub const TOL_F16: (f32, f32) = (2e-3, 2e-3);

pub fn tol(ctx: &GpuContext) -> (f32, f32) {
    match ctx.act() {
        pensive::gpu::Dtype::F32 => TOL_F32,
        pensive::gpu::Dtype::F16 => TOL_F16,
    }
}

/// Assert `got` ≈ `want` elementwise with (abs, rel) scaled by `scale`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], (abs, rel): (f32, f32), scale: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let allowed = (abs + rel * w.abs()) * scale;
        assert!(err <= allowed && g.is_finite(), "{what}[{i}]: gpu {g} vs cpu {w} (|diff| {err} > {allowed})");
        if err > worst.0 {
            worst = (err, i);
        }
    }
    eprintln!("{what}: max |diff| {:.3e} at {}", worst.0, worst.1);
}
