//! Every kernel vs the CPU reference (crate::ops, quant::dequantize) on seeded random
//! inputs with odd shapes, on both activation paths (f32 and f16).
//!
//! Run with a Vulkan adapter (e.g. Mesa lavapipe): `WGPU_BACKEND=vulkan cargo test --release
//! --test gpu_kernels`. Without one the tests skip loudly, or fail under PENSIVE_REQUIRE_GPU=1.

mod gpu_common;

use gpu_common::{as_act, assert_close, context, context_with, contexts, contexts_both_matmul_shapes, tol, Rng, TOL_F32};
use pensive::config::RopeLayout;
use pensive::gpu::kernels::{argmax_scratch_len, attention_scratch_len, FoldedNorm, QkvOut};
use pensive::gpu::{FusedMatrix, GpuContext, GpuMatrix, GpuOptions};
use pensive::ops;
use pensive::quant::{self, GgmlType};

use pollster::block_on;

/// Every weight type the GPU runs (all of GGUF's but BF16, which only safetensors use).
fn all_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL.into_iter().filter(|&t| t != GgmlType::BF16)
}

fn read_act(ctx: &GpuContext, buf: &wgpu::Buffer, n: usize) -> Vec<f32> {
    block_on(ctx.read_act(buf, n)).expect("readback")
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Random bytes of `rows × cols` elements of `ty`, with sane f16 scales (random bytes there
/// could be inf or NaN) so that dequantized weights are O(1).
fn random_weights(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let n_blocks = rows * cols / ty.block_len();
    let bb = ty.block_bytes();
    let mut bytes: Vec<u8> = (0..n_blocks * bb).map(|_| rng.next_u64() as u8).collect();
    for block in bytes.chunks_exact_mut(bb) {
        let mut scale = |at: usize, v: f32| block[at..at + 2].copy_from_slice(&f16_bytes(v));
        match ty {
            GgmlType::F32 => block.copy_from_slice(&rng.f32().to_le_bytes()),
            GgmlType::F16 => scale(0, rng.f32()),
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => scale(0, rng.f32() * 0.1),
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                scale(0, rng.f32() * 0.1);
                scale(2, rng.f32() * 0.5);
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                scale(0, rng.f32() * 0.01);
                scale(2, rng.f32() * 0.01);
            }
            GgmlType::Q6_K => scale(208, rng.f32() * 0.01),
            GgmlType::BF16 => unreachable!(),
        }
    }
    bytes
}

fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    quant::dequantize(ty, bytes, &mut out).expect("reference dequantize");
    out
}

/// Columns for `ty`: an odd number of blocks, and not a multiple of the 8-element unit or
/// the 32 lanes for the float types.
fn odd_cols(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F32 | GgmlType::F16 => 157,
        t if t.block_len() == 256 => 3 * 256,
        _ => 7 * 32,
    }
}

#[test]
fn rms_norm_matches_cpu() {
    for ctx in contexts() {
        let mut rng = Rng::new(1);
        for (dim, n_tok) in [(7, 1), (576, 3), (897, 2)] {
            // x is the residual stream: f32 on both paths.
            let x = rng.vec(dim * n_tok);
            let w = rng.vec(dim);
            let xb = ctx.storage_init("x", bytemuck::cast_slice(&x));
            let wb = ctx.storage_init("w", bytemuck::cast_slice(&w));
            let out = ctx.storage("out", (dim * n_tok * 4) as u64);
            let mut rec = ctx.recorder();
            rec.rms_norm(&xb, &wb, &out, dim, n_tok, 1e-5);
            rec.submit();
            let mut want = vec![0.0; dim * n_tok];
            for (o, xi) in want.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                ops::rms_norm(o, xi, &w, 1e-5);
            }
            let got = read_act(&ctx, &out, dim * n_tok);
            assert_close(&format!("rms_norm {:?} dim {dim}", ctx.act()), &got, &want, tol(&ctx), 1.0);
        }
    }
}

#[test]
fn rms_norm_heads_matches_cpu() {
    for ctx in contexts() {
        let mut rng = Rng::new(9);
        // (heads, head_dim, tokens): Qwen3-0.6B's 16 × 128 and 8 × 128, odd widths, a
        // head_dim above the workgroup's 64 lanes and one below.
        for (n_heads, head_dim, n_tok) in [(16, 128, 3), (8, 128, 1), (3, 10, 2), (5, 96, 4)] {
            let n = n_tok * n_heads * head_dim;
            let x = as_act(&ctx, &rng.vec(n));
            let w: Vec<f32> = rng.vec(head_dim).iter().map(|v| 1.0 + 0.5 * v).collect();
            let xb = ctx.act_from_f32("x", &x);
            let wb = ctx.storage_init("w", bytemuck::cast_slice(&w));
            let mut rec = ctx.recorder();
            rec.rms_norm_heads(&xb, &wb, n_heads, head_dim, n_tok, 1e-6);
            rec.submit();
            let mut want = x.clone();
            ops::rms_norm_heads(&mut want, &w, 1e-6);
            let got = read_act(&ctx, &xb, n);
            let what = format!("rms_norm_heads {:?} {n_heads}x{head_dim} x {n_tok}", ctx.act());
            assert_close(&what, &got, &want, tol(&ctx), 1.0);
        }
    }
}

#[test]
fn rope_matches_cpu_both_layouts() {
    for ctx in contexts() {
        let mut rng = Rng::new(2);
        for layout in [RopeLayout::Interleaved, RopeLayout::NeoX] {
            for (n_heads, head_dim, pos0, n_tok) in [(3, 10, 0, 2), (5, 64, 1000, 3), (2, 128, 4095, 1)] {
                let inv_freq = ops::rope_inv_freq(head_dim, 1e6);
                let x = as_act(&ctx, &rng.vec(n_tok * n_heads * head_dim));
                let xb = ctx.act_from_f32("x", &x);
                let fb = ctx.storage_init("inv_freq", bytemuck::cast_slice(&inv_freq));
                let mut rec = ctx.recorder();
                rec.rope(&xb, &fb, n_heads, head_dim, pos0, n_tok, layout);
                rec.submit();
                let mut want = x.clone();
                for (t, row) in want.chunks_exact_mut(n_heads * head_dim).enumerate() {
                    ops::rope(row, head_dim, pos0 + t, &inv_freq, layout);
                }
                let got = read_act(&ctx, &xb, x.len());
                assert_close(&format!("rope {:?} {layout:?} hd {head_dim} pos {pos0}", ctx.act()), &got, &want, tol(&ctx), 1.0);
            }
        }
    }
}

#[test]
fn rope_store_kv_writes_rotated_keys_and_values_into_the_cache() {
    for ctx in contexts() {
        let mut rng = Rng::new(3);
        let (n_kv, hd, pos0, n_tok, max_ctx) = (3, 18, 5, 4, 12);
        let kv_dim = n_kv * hd;
        let inv_freq = ops::rope_inv_freq(hd, 1e4);
        let k = as_act(&ctx, &rng.vec(n_tok * kv_dim));
        let v = as_act(&ctx, &rng.vec(n_tok * kv_dim));
        let cache0 = as_act(&ctx, &rng.vec(max_ctx * kv_dim));
        let (kb, vb) = (ctx.act_from_f32("k", &k), ctx.act_from_f32("v", &v));
        let (kc, vc) = (ctx.act_from_f32("kc", &cache0), ctx.act_from_f32("vc", &cache0));
        let fb = ctx.storage_init("inv_freq", bytemuck::cast_slice(&inv_freq));
        for layout in [RopeLayout::Interleaved, RopeLayout::NeoX] {
            let mut rec = ctx.recorder();
            rec.rope_store_kv(&kb, &vb, &fb, &kc, &vc, n_kv, hd, pos0, n_tok, layout);
            rec.submit();
            let mut want_k = cache0.clone();
            let mut want_v = cache0.clone();
            for t in 0..n_tok {
                let row = &mut want_k[(pos0 + t) * kv_dim..(pos0 + t + 1) * kv_dim];
                row.copy_from_slice(&k[t * kv_dim..(t + 1) * kv_dim]);
                ops::rope(row, hd, pos0 + t, &inv_freq, layout);
                want_v[(pos0 + t) * kv_dim..(pos0 + t + 1) * kv_dim].copy_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
            }
            let what = format!("rope_store_kv {:?} {layout:?}", ctx.act());
            assert_close(&format!("{what} keys"), &read_act(&ctx, &kc, want_k.len()), &want_k, tol(&ctx), 1.0);
            assert_close(&format!("{what} values"), &read_act(&ctx, &vc, want_v.len()), &want_v, (0.0, 0.0), 1.0);
        }
    }
}

/// Decode (one query, many splits, several 64-position chunks per split) and causal prefill.
#[test]
fn attention_matches_cpu_decode_and_prefill() {
    // Also a context that cuts a decode step's context into up to 256 splits of a multiple
    // of 64 positions (a GPU's defaults: a 128-position step of attend_group_split half
    // past its split), with a scratch that holds them, and one with 3 splits: many
    // 128-position steps per split, the last one partial.
    let many = gpu_common::context_with(pensive::gpu::GpuOptions {
        attention_splits: Some(256),
        attention_split_granule: Some(64),
        ..Default::default()
    });
    let few = gpu_common::context_with(pensive::gpu::GpuOptions { attention_splits: Some(3), ..Default::default() });
    for ctx in contexts().into_iter().chain(many).chain(few) {
        let mut rng = Rng::new(4);
        // (n_heads, n_kv_heads, head_dim, pos0, n_tok): GQA groups of 1 to 8 query heads
        // (attend_group_split), and head_dim 250 or a group of 9 (attend_split).
        let shapes = [
            (6, 2, 64, 0, 1),
            (6, 2, 64, 299, 1),
            (14, 2, 64, 2999, 1),
            (16, 2, 128, 700, 2),
            (4, 4, 250, 40, 1),
            (18, 2, 64, 100, 1),
            (9, 3, 64, 37, 5),
            (2, 1, 16, 0, 13),
            // R1-Distill-1.5B's and Qwen3-0.6B's shapes: 96 and 32 value pairs of (head, 8
            // dims), a round and a half of 64 lanes and half a round.
            (12, 2, 128, 1500, 1),
            (16, 8, 128, 900, 1),
        ];
        for (nh, nkv, hd, pos0, n_tok) in shapes {
            let len = pos0 + n_tok;
            let (q_dim, kv_dim) = (nh * hd, nkv * hd);
            let q = as_act(&ctx, &rng.vec(n_tok * q_dim));
            let keys = as_act(&ctx, &rng.vec(len * kv_dim));
            let values = as_act(&ctx, &rng.vec(len * kv_dim));
            let qb = ctx.act_from_f32("q", &q);
            let (kc, vc) = (ctx.act_from_f32("kc", &keys), ctx.act_from_f32("vc", &values));
            let parts = ctx.storage("parts", (attention_scratch_len(n_tok * 8, nh, hd) * 4) as u64);
            let out = ctx.storage("out", (n_tok * q_dim * 4) as u64);
            let mut rec = ctx.recorder();
            rec.attention(&qb, &kc, &vc, &parts, &out, nh, nkv, hd, pos0, n_tok);
            rec.submit();
            let mut want = vec![0.0; n_tok * q_dim];
            let mut scores = vec![0.0; len];
            for t in 0..n_tok {
                let o = &mut want[t * q_dim..(t + 1) * q_dim];
                ops::attention(o, &q[t * q_dim..(t + 1) * q_dim], &keys, &values, pos0 + t + 1, nh, nkv, hd, &mut scores);
            }
            let got = read_act(&ctx, &out, want.len());
            assert_close(&format!("attention {:?} heads {nh}/{nkv} hd {hd} len {len} tokens {n_tok}", ctx.act()), &got, &want, tol(&ctx), 1.0);
        }
    }
}

#[test]
fn silu_mul_and_add_match_cpu() {
    for ctx in contexts() {
        let mut rng = Rng::new(5);
        let n = 1001;
        let a: Vec<f32> = as_act(&ctx, &rng.vec(n).iter().map(|v| v * 6.0).collect::<Vec<_>>());
        let bv = as_act(&ctx, &rng.vec(n));
        let (ab, bb) = (ctx.act_from_f32("a", &a), ctx.act_from_f32("b", &bv));
        let mut rec = ctx.recorder();
        rec.silu_mul(&ab, &bb, n);
        rec.submit();
        let mut want = a.clone();
        ops::silu_mul(&mut want, &bv);
        assert_close(&format!("silu_mul {:?}", ctx.act()), &read_act(&ctx, &ab, n), &want, tol(&ctx), 1.0);

        let ab = ctx.act_from_f32("a", &a);
        let mut rec = ctx.recorder();
        rec.add(&ab, &bb, n);
        rec.submit();
        let mut want = a.clone();
        ops::add_assign(&mut want, &bv);
        assert_close(&format!("add {:?}", ctx.act()), &read_act(&ctx, &ab, n), &want, tol(&ctx), 1.0);
    }
}

#[test]
fn embedding_lookup_matches_dequantized_rows_for_every_type() {
    // Both shapes: the GPU one reads the table as 16-byte words (Knobs::wide).
    for ctx in contexts_both_matmul_shapes() {
        let mut rng = Rng::new(6);
        for ty in all_types() {
            let (rows, cols) = (11, odd_cols(ty));
            let bytes = random_weights(&mut rng, ty, rows, cols);
            let table = dequant(ty, &bytes, rows * cols);
            let m = GpuMatrix::upload(&ctx, "embd", ty, rows, cols, &bytes).expect("upload");
            let ids = [4u32, 0, 10, 4];
            let idb = ctx.storage_init("ids", bytemuck::cast_slice(&ids));
            let out = ctx.storage("out", (ids.len() * cols * 4) as u64);
            let mut rec = ctx.recorder();
            rec.embed(&m, &idb, &out, ids.len());
            rec.submit();
            let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * cols..(i as usize + 1) * cols].to_vec()).collect();
            // Dequantization is exact in f32, and the residual stream is f32 on both paths.
            let got = block_on(ctx.read_f32(&out, 0, want.len())).expect("read");
            assert_close(&format!("embed {ty:?} {:?} lanes {}", ctx.act(), ctx.matmul_lanes()), &got, &want, TOL_F32, 1.0);
        }
    }
}

/// CPU reference of y = W x (+ bias) (+ y0) for n_tok tokens.
fn matmul_ref(w: &[f32], rows: usize, cols: usize, x: &[f32], n_tok: usize, bias: Option<&[f32]>, y0: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0.0; n_tok * rows];
    for t in 0..n_tok {
        for r in 0..rows {
            let dot: f32 = w[r * cols..(r + 1) * cols].iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| a * b).sum();
            y[t * rows + r] = dot + bias.map_or(0.0, |b| b[r]) + y0.map_or(0.0, |y0| y0[t * rows + r]);
        }
    }
    y
}

/// Mat-vec (decode, 1 token) and tiled mat-mul (prefill: 11 tokens = a full tile of 8 and a
/// ragged one) for every type, 67 rows (not a multiple of the rows per workgroup... nor of
/// anything else), both matmul shapes (8 and 32 lanes per row), with and without the
/// bias/residual epilogue and f32 output (logits).
#[test]
fn quantized_matmul_matches_cpu_for_every_type() {
    for ctx in contexts_both_matmul_shapes() {
        let mut rng = Rng::new(7);
        for ty in all_types() {
            let (rows, cols) = (67, odd_cols(ty));
            let bytes = random_weights(&mut rng, ty, rows, cols);
            let w = dequant(ty, &bytes, rows * cols);
            let m = GpuMatrix::upload(&ctx, "w", ty, rows, cols, &bytes).expect("upload");
            for n_tok in [1, 11] {
                for (with_bias, accumulate, out_f32) in [(false, false, false), (true, true, false), (false, false, true)] {
                    let x = as_act(&ctx, &rng.vec(n_tok * cols));
                    let bias = rng.vec(rows);
                    let y0 = as_act(&ctx, &rng.vec(n_tok * rows));
                    let xb = ctx.act_from_f32("x", &x);
                    let bb = ctx.storage_init("bias", bytemuck::cast_slice(&bias));
                    let yb = if out_f32 { ctx.storage_init("y", bytemuck::cast_slice(&y0)) } else { ctx.act_from_f32("y", &y0) };
                    let mut rec = ctx.recorder();
                    rec.matmul(&m, &xb, 0, cols, &yb, n_tok, with_bias.then_some(&bb), accumulate, out_f32);
                    rec.submit();
                    let want = matmul_ref(&w, rows, cols, &x, n_tok, with_bias.then_some(&bias[..]), accumulate.then_some(&y0[..]));
                    let got = if out_f32 { block_on(ctx.read_f32(&yb, 0, want.len())).expect("read") } else { read_act(&ctx, &yb, want.len()) };
                    // Dot products of `cols` terms: scale the tolerance by the typical |y|.
                    let scale = (cols as f32).sqrt() * w.iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1.0) * 0.1;
                    let t = if out_f32 { TOL_F32 } else { tol(&ctx) };
                    let what = format!("matmul {ty:?} {:?} lanes {} tokens {n_tok} bias {with_bias} acc {accumulate} f32-out {out_f32}", ctx.act(), ctx.matmul_lanes());
                    assert_close(&what, &got, &want, t, scale);
                }
            }
        }
    }
}

/// A matrix larger than a (deliberately lowered) binding limit is split by rows across
/// buffers; mat-vec and embedding lookup still give the unsplit answer.
#[test]
fn tensors_larger_than_the_binding_limit_are_split() {
    let Some(ctx) = context(false, Some(4096)) else { return };
    // Both matmul shapes (the GPU one binds the parts as 16-byte words).
    let other = if ctx.matmul_lanes() == 8 { 32 } else { 8 };
    let other_shape = context_with(GpuOptions { prefer_f16: false, binding_cap: Some(4096), matmul_lanes: Some(other), ..Default::default() });
    for ctx in std::iter::once(&ctx).chain(other_shape.as_ref()) {
        let mut rng = Rng::new(8);
        let ty = GgmlType::Q8_0;
        let (rows, cols) = (301, 7 * 32); // 7 blocks × 36 B = 252 B per row → 16 rows per 4 KiB part
        let bytes = random_weights(&mut rng, ty, rows, cols);
        let w = dequant(ty, &bytes, rows * cols);
        let m = GpuMatrix::upload(&ctx, "big", ty, rows, cols, &bytes).expect("upload");
        assert_eq!(m.parts.len(), rows.div_ceil(4096 / 252), "parts");
        let x = rng.vec(cols);
        let xb = ctx.act_from_f32("x", &x);
        let yb = ctx.storage("y", (rows * 4) as u64);
        let ids = [300u32, 0, 17, 16];
        let idb = ctx.storage_init("ids", bytemuck::cast_slice(&ids));
        let eb = ctx.storage("e", (ids.len() * cols * 4) as u64);
        let mut rec = ctx.recorder();
        rec.matmul(&m, &xb, 0, cols, &yb, 1, None, false, true);
        rec.embed(&m, &idb, &eb, ids.len());
        rec.submit();
        let want = matmul_ref(&w, rows, cols, &x, 1, None, None);
        let got = block_on(ctx.read_f32(&yb, 0, rows)).expect("read");
        assert_close(&format!("split matmul, lanes {}", ctx.matmul_lanes()), &got, &want, TOL_F32, (cols as f32).sqrt());
        let want: Vec<f32> = ids.iter().flat_map(|&i| w[i as usize * cols..(i as usize + 1) * cols].to_vec()).collect();
        assert_close(&format!("split embed, lanes {}", ctx.matmul_lanes()), &block_on(ctx.read_f32(&eb, 0, want.len())).expect("read"), &want, TOL_F32, 1.0);
    }
    // A row that cannot fit any binding is a clear error, not a panic.
    let err = GpuMatrix::upload(&ctx, "wide", GgmlType::F32, 2, 2048, &vec![0u8; 2 * 2048 * 4]).err().expect("must fail");
    assert!(err.to_string().contains("cannot hold"), "{err}");
}

#[test]
fn argmax_with_banned_ids_matches_cpu() {
    let Some(ctx) = context(false, None) else { return };
    let mut rng = Rng::new(9);
    let vocab = 10007;
    let rows = 2;
    let mut logits = rng.vec(rows * vocab);
    // A tie on the second row: the lower index must win.
    let row1 = &mut logits[vocab..];
    row1[5000] = 3.0;
    row1[9000] = 3.0;
    row1[7] = f32::NAN;
    let lb = ctx.storage_init("logits", bytemuck::cast_slice(&logits));
    let parts = ctx.storage("parts", (argmax_scratch_len(vocab) * 8) as u64);
    let result = ctx.storage("result", 4);
    for banned in [vec![], vec![5000u32], vec![5000, 9000, 1, 2]] {
        let banned_buf = ctx.storage_init("banned", bytemuck::cast_slice(&banned));
        let mut rec = ctx.recorder();
        rec.argmax(&lb, vocab, vocab, &banned_buf, banned.len(), &parts, &result);
        rec.submit();
        let got = u32::from_le_bytes(block_on(ctx.read_bytes(&result, 0, 4)).expect("read")[..4].try_into().expect("4 bytes"));
        let mut row = logits[vocab..].to_vec();
        for &b in &banned {
            row[b as usize] = f32::NEG_INFINITY;
        }
        assert_eq!(got as usize, ops::argmax(&row), "argmax with banned {banned:?}");
    }
}

/// CPU reference of the folded RMSNorm: rms_norm(x_t) · weight for each token.
fn normed_ref(x: &[f32], weight: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (o, row) in out.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
        ops::rms_norm(o, row, weight, NORM_EPS);
    }
    out
}

const NORM_EPS: f32 = 1e-6;

/// A fused matmul's input: the f32 residual stream when it folds the norm, else act.
fn fused_input(ctx: &GpuContext, rng: &mut Rng, n: usize, fold: bool) -> (Vec<f32>, wgpu::Buffer) {
    if fold {
        let x = rng.vec(n);
        let xb = ctx.storage_init("x", bytemuck::cast_slice(&x));
        (x, xb)
    } else {
        let x = as_act(ctx, &rng.vec(n));
        let xb = ctx.act_from_f32("x", &x);
        (x, xb)
    }
}

/// Upload `types.len()` random matrices of `rows[i] × cols` and fuse them; also return
/// their dequantized values.
fn random_fused(ctx: &GpuContext, rng: &mut Rng, types: &[GgmlType], rows: &[usize], cols: usize) -> (FusedMatrix, Vec<Vec<f32>>) {
    let mut mats = Vec::new();
    let mut values = Vec::new();
    for (&ty, &r) in types.iter().zip(rows) {
        let bytes = random_weights(rng, ty, r, cols);
        values.push(dequant(ty, &bytes, r * cols));
        mats.push(GpuMatrix::upload(ctx, "w", ty, r, cols, &bytes).expect("upload"));
    }
    let fused = FusedMatrix::concat(ctx, "fused", mats).unwrap_or_else(|_| panic!("{types:?} do not fuse"));
    (fused, values)
}

/// matmul_qkv: q | k | v of mixed types (the Q4_K_M mix, and three other formats), bias,
/// rope in both layouts (or none: the Qwen3 path), the cache store at pos0.., decode with
/// and without the folded RMSNorm and an 11-token prefill, both matmul shapes, both
/// activation paths. 3 q heads and 2 kv heads of 16: 112 rows, not a multiple of the rows
/// per workgroup.
#[test]
fn fused_qkv_matmul_matches_cpu() {
    let (n_heads, n_kv, hd, cols, pos0, max_ctx) = (3, 2, 16, 256, 5, 20);
    let (q_dim, kv_dim) = (n_heads * hd, n_kv * hd);
    let inv_freq = ops::rope_inv_freq(hd, 1e4);
    for ctx in contexts_both_matmul_shapes() {
        let mut rng = Rng::new(21);
        let fb = ctx.storage_init("inv_freq", bytemuck::cast_slice(&inv_freq));
        for types in [[GgmlType::Q5_0, GgmlType::Q5_0, GgmlType::Q8_0], [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16]] {
            let (w, values) = random_fused(&ctx, &mut rng, &types, &[q_dim, kv_dim, kv_dim], cols);
            let bias = rng.vec(q_dim + 2 * kv_dim);
            let bb = ctx.storage_init("bias", bytemuck::cast_slice(&bias));
            let norm_w = rng.vec(cols);
            let nb = ctx.storage_init("norm", bytemuck::cast_slice(&norm_w));
            for rope in [Some(RopeLayout::NeoX), Some(RopeLayout::Interleaved), None] {
                for (n_tok, fold) in [(1, true), (1, false), (11, false)] {
                    let (x, xb) = fused_input(&ctx, &mut rng, n_tok * cols, fold);
                    let cache0 = as_act(&ctx, &rng.vec(max_ctx * kv_dim));
                    let qb = ctx.act_from_f32("q", &vec![0.0; n_tok * q_dim]);
                    let (kc, vc) = (ctx.act_from_f32("kc", &cache0), ctx.act_from_f32("vc", &cache0));
                    let out = QkvOut { q: &qb, k_cache: &kc, v_cache: &vc, bias: Some(&bb), inv_freq: &fb, rope, head_dim: hd, pos0 };
                    let norm = fold.then_some(FoldedNorm { weight: &nb, eps: NORM_EPS });
                    let mut rec = ctx.recorder();
                    rec.matmul_qkv(&w, &xb, n_tok, norm, &out);
                    rec.submit();
                    let h = if fold { normed_ref(&x, &norm_w, cols) } else { x.clone() };
                    let mut want_q = matmul_ref(&values[0], q_dim, cols, &h, n_tok, Some(&bias[..q_dim]), None);
                    let k = matmul_ref(&values[1], kv_dim, cols, &h, n_tok, Some(&bias[q_dim..q_dim + kv_dim]), None);
                    let v = matmul_ref(&values[2], kv_dim, cols, &h, n_tok, Some(&bias[q_dim + kv_dim..]), None);
                    let (mut want_k, mut want_v) = (cache0.clone(), cache0.clone());
                    for t in 0..n_tok {
                        let row = (pos0 + t) * kv_dim..(pos0 + t + 1) * kv_dim;
                        want_k[row.clone()].copy_from_slice(&k[t * kv_dim..(t + 1) * kv_dim]);
                        want_v[row.clone()].copy_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
                        if let Some(layout) = rope {
                            ops::rope(&mut want_q[t * q_dim..(t + 1) * q_dim], hd, pos0 + t, &inv_freq, layout);
                            ops::rope(&mut want_k[row], hd, pos0 + t, &inv_freq, layout);
                        }
                    }
                    let scale = (cols as f32).sqrt() * 0.3;
                    let what = format!("qkv {types:?} {:?} lanes {} rope {rope:?} tokens {n_tok} norm {fold}", ctx.act(), ctx.matmul_lanes());
                    assert_close(&format!("{what} q"), &read_act(&ctx, &qb, want_q.len()), &want_q, tol(&ctx), scale);
                    assert_close(&format!("{what} k cache"), &read_act(&ctx, &kc, want_k.len()), &want_k, tol(&ctx), scale);
                    assert_close(&format!("{what} v cache"), &read_act(&ctx, &vc, want_v.len()), &want_v, tol(&ctx), scale);
                }
            }
        }
    }
}

/// matmul_gate_up: silu(gate) * up with gate and up of the same or of different types,
/// 37 rows (not a multiple of 4), decode with and without the folded norm, prefill.
#[test]
fn fused_gate_up_matmul_matches_cpu() {
    let (ffn, cols) = (37, 256);
    for ctx in contexts_both_matmul_shapes() {
        let mut rng = Rng::new(22);
        for types in [[GgmlType::Q5_0, GgmlType::Q5_0], [GgmlType::Q4_K, GgmlType::Q8_0], [GgmlType::F32, GgmlType::Q6_K]] {
            let (w, values) = random_fused(&ctx, &mut rng, &types, &[ffn, ffn], cols);
            let norm_w = rng.vec(cols);
            let nb = ctx.storage_init("norm", bytemuck::cast_slice(&norm_w));
            for (n_tok, fold) in [(1, true), (1, false), (11, false)] {
                let (x, xb) = fused_input(&ctx, &mut rng, n_tok * cols, fold);
                let yb = ctx.act_from_f32("y", &vec![0.0; n_tok * ffn]);
                let norm = fold.then_some(FoldedNorm { weight: &nb, eps: NORM_EPS });
                let mut rec = ctx.recorder();
                rec.matmul_gate_up(&w, &xb, n_tok, norm, &yb);
                rec.submit();
                let h = if fold { normed_ref(&x, &norm_w, cols) } else { x.clone() };
                let mut want = matmul_ref(&values[0], ffn, cols, &h, n_tok, None, None);
                let up = matmul_ref(&values[1], ffn, cols, &h, n_tok, None, None);
                ops::silu_mul(&mut want, &up);
                let what = format!("gate_up {types:?} {:?} lanes {} tokens {n_tok} norm {fold}", ctx.act(), ctx.matmul_lanes());
                assert_close(&what, &read_act(&ctx, &yb, want.len()), &want, tol(&ctx), (cols as f32).sqrt() * 3.0);
            }
        }
    }
}

/// qk_norm_rope: Qwen3's per-head RMSNorm of q (in place) and of k (in the cache at
/// pos0..), then rope, in both layouts.
#[test]
fn qk_norm_rope_matches_cpu() {
    let (n_heads, n_kv, hd, pos0, n_tok, max_ctx) = (4, 2, 32, 3, 3, 8);
    let (q_dim, kv_dim) = (n_heads * hd, n_kv * hd);
    let inv_freq = ops::rope_inv_freq(hd, 1e6);
    for ctx in contexts() {
        let mut rng = Rng::new(23);
        let q = as_act(&ctx, &rng.vec(n_tok * q_dim));
        let cache0 = as_act(&ctx, &rng.vec(max_ctx * kv_dim));
        let (qn, kn) = (rng.vec(hd), rng.vec(hd));
        let fb = ctx.storage_init("inv_freq", bytemuck::cast_slice(&inv_freq));
        let (qnb, knb) = (ctx.storage_init("qn", bytemuck::cast_slice(&qn)), ctx.storage_init("kn", bytemuck::cast_slice(&kn)));
        for layout in [RopeLayout::NeoX, RopeLayout::Interleaved] {
            let (qb, kc) = (ctx.act_from_f32("q", &q), ctx.act_from_f32("kc", &cache0));
            let mut rec = ctx.recorder();
            rec.qk_norm_rope(&qb, &kc, &qnb, &knb, &fb, (n_heads, n_kv, hd), pos0, n_tok, layout, NORM_EPS);
            rec.submit();
            let (mut want_q, mut want_k) = (q.clone(), cache0.clone());
            for t in 0..n_tok {
                let qrow = &mut want_q[t * q_dim..(t + 1) * q_dim];
                ops::rms_norm_heads(qrow, &qn, NORM_EPS);
                ops::rope(qrow, hd, pos0 + t, &inv_freq, layout);
                let krow = &mut want_k[(pos0 + t) * kv_dim..(pos0 + t + 1) * kv_dim];
                ops::rms_norm_heads(krow, &kn, NORM_EPS);
                ops::rope(krow, hd, pos0 + t, &inv_freq, layout);
            }
            let what = format!("qk_norm_rope {:?} {layout:?}", ctx.act());
            assert_close(&format!("{what} q"), &read_act(&ctx, &qb, want_q.len()), &want_q, tol(&ctx), 1.0);
            assert_close(&format!("{what} k cache"), &read_act(&ctx, &kc, want_k.len()), &want_k, tol(&ctx), 1.0);
        }
    }
}

/// Which reduction matmul runs here: with subgroups where the device has them and the
/// load-time probe checked them (`PENSIVE_EXPECT_SUBGROUPS=1`: they must be on, so that a
/// probe failing on an adapter known to have them does not go unseen), without when asked.
#[test]
fn matmul_reduction_follows_the_adapter_and_the_option() {
    let Some(ctx) = context(true, None) else { return };
    let has = ctx.device.features().contains(wgpu::Features::SUBGROUP);
    eprintln!("{}; subgroups feature {has}, sizes {}..={}", ctx.describe(), ctx.info.subgroup_min_size, ctx.info.subgroup_max_size);
    assert!(!ctx.subgroup_reduce() || has, "subgroup reduction without the feature");
    if std::env::var("PENSIVE_EXPECT_SUBGROUPS").as_deref() == Ok("1") {
        assert!(ctx.subgroup_reduce(), "subgroups expected on {}", ctx.describe());
    }
    let off = gpu_common::context_with(pensive::gpu::GpuOptions { subgroups: false, ..Default::default() }).expect("a context");
    assert!(!off.subgroup_reduce());
    assert!(!off.device.features().contains(wgpu::Features::SUBGROUP));
}

/// Profiling (`pensive bench --profile`): with timestamp queries every dispatch is timed and
/// summed per entry point, results unchanged; 1,500 dispatches in one step cross a
/// submit's 1,024 timed ones. Without the feature it says so and times nothing.
#[test]
fn profiling_times_every_dispatch_per_entry_point() {
    let Some(ctx) = context(true, None) else { return };
    let has = ctx.device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    assert_eq!(ctx.enable_profiling(), has);
    let (dim, n_tok) = (576, 2);
    let mut rng = Rng::new(3);
    let x = rng.vec(dim * n_tok);
    let w = rng.vec(dim);
    let xb = ctx.storage_init("x", bytemuck::cast_slice(&x));
    let wb = ctx.storage_init("w", bytemuck::cast_slice(&w));
    let out = ctx.storage("out", (dim * n_tok * 4) as u64);
    let (a, b) = (ctx.storage("a", 4 * 1000), ctx.storage("b", 4 * 1000));
    let mut rec = ctx.recorder();
    for _ in 0..1500 {
        rec.add(&a, &b, 1000);
    }
    rec.rms_norm(&xb, &wb, &out, dim, n_tok, 1e-5);
    rec.submit();
    let mut want = vec![0.0; dim * n_tok];
    for (o, xi) in want.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        ops::rms_norm(o, xi, &w, 1e-5);
    }
    assert_close("rms_norm, profiled", &read_act(&ctx, &out, dim * n_tok), &want, tol(&ctx), 1.0);
    let times = ctx.take_kernel_times();
    eprintln!("{times:?}");
    if !has {
        assert!(times.is_empty());
        return;
    }
    let count = |entry: &str| times.iter().find(|t| t.entry == entry).map(|t| (t.dispatches, t.ms));
    let (n_add, ms_add) = count("add").expect("add timed");
    assert_eq!(n_add, 1500);
    assert!(ms_add > 0.0 && ms_add.is_finite());
    assert_eq!(count("rms_norm").map(|t| t.0), Some(1));
    assert!(ctx.take_kernel_times().is_empty(), "taking the times resets them");
}
