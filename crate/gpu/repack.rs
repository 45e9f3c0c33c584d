//! GGUF blocks → the word-aligned layout the shaders read (shaders/dequant.wgsl).
//!
//! GGUF blocks are 18, 22 or 34 bytes for Q4_0, Q5_0, Q8_0 and 210 for Q6_K, so they straddle
//! u32 words and WGSL storage arrays hold nothing smaller than a u32. Each block is kept byte
//! for byte, padded to a whole number of words in the one place that keeps every field
//! aligned (mirroring `quant::Block*`, whose field order is GGML's):
//!
//! | type | GGUF block (bytes)                         | repacked words                                  |
//! |------|--------------------------------------------|-------------------------------------------------|
//! | Q4_0 | d:f16, qs[16]                    (18)      | [d, pad] qs×4                             (5)   |
//! | Q4_1 | d:f16, m:f16, qs[16]             (20)      | unchanged                                 (5)   |
//! | Q5_0 | d:f16, qh[4], qs[16]             (22)      | [d, pad] qh qs×4                          (6)   |
//! | Q5_1 | d:f16, m:f16, qh[4], qs[16]      (24)      | unchanged                                 (6)   |
//! | Q8_0 | d:f16, qs[32] (i8)               (34)      | [d, pad] qs×8                             (9)   |
//! | Q4_K | d, dmin:f16, scales[12], qs[128] (144)     | unchanged                                 (36)  |
//! | Q5_K | d, dmin, scales[12], qh[32], qs[128] (176) | unchanged                                 (44)  |
//! | Q6_K | ql[128], qh[64], scales[16] (i8), d (210)  | unchanged + 2 pad bytes                   (53)  |
//! | F16  | 8 elements per "block"                     | 4 words; the row's end zero-padded to 8         |
//! | F32  | 8 elements per "block"                     | 8 words; the row's end zero-padded to 8         |
//!
//! Rows stay contiguous: row r, block b starts at word (r * blocks_per_row + b) * words.

use super::{GpuContext, GpuError};
use crate::quant::GgmlType;

/// Words of one repacked block.
pub fn words_per_block(ty: GgmlType) -> Option<usize> {
    Some(match ty {
        GgmlType::F32 => 8,
        GgmlType::F16 => 4,
        GgmlType::Q4_0 | GgmlType::Q4_1 => 5,
        GgmlType::Q5_0 | GgmlType::Q5_1 => 6,
        GgmlType::Q8_0 => 9,
        GgmlType::Q4_K => 36,
        GgmlType::Q5_K => 44,
        GgmlType::Q6_K => 53,
        GgmlType::BF16 => return None,
    })
}

/// Elements of one repacked block (8 for the float types).
pub fn elems_per_block(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 8,
        _ => ty.block_len(),
    }
}

/// The WGSL `WTYPE` knob: the GGUF ggml_type id.
pub fn wtype_id(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q5_1 => 7,
        GgmlType::Q8_0 => 8,
        GgmlType::Q4_K => 12,
        GgmlType::Q5_K => 13,
        GgmlType::Q6_K => 14,
        GgmlType::BF16 => 30,
    }
}

/// Words of one repacked row of `cols` elements.
pub fn row_words(ty: GgmlType, cols: usize) -> Option<usize> {
    Some(cols.div_ceil(elems_per_block(ty)) * words_per_block(ty)?)
}

/// Repack rows `rows` of a row-major `ty` matrix of `cols` columns held in `bytes`.
pub fn repack_rows(ty: GgmlType, cols: usize, bytes: &[u8], rows: std::ops::Range<usize>) -> Result<Vec<u32>, String> {
    let words = words_per_block(ty).ok_or_else(|| format!("{ty:?} is not supported on the GPU"))?;
    if cols % ty.block_len() != 0 {
        return Err(format!("{cols} columns is not a whole number of {ty:?} blocks"));
    }
    let row_bytes = cols / ty.block_len() * ty.block_bytes();
    if bytes.len() < rows.end * row_bytes {
        return Err(format!("{} bytes hold fewer than {} rows of {row_bytes}", bytes.len(), rows.end));
    }
    let rw = row_words(ty, cols).unwrap_or(0);
    let mut out = vec![0u32; rows.len() * rw];
    let out_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
    for (i, r) in rows.enumerate() {
        let src = &bytes[r * row_bytes..(r + 1) * row_bytes];
        let dst = &mut out_bytes[i * rw * 4..(i + 1) * rw * 4];
        match ty {
            // Floats: copied, the row's tail (to a multiple of 8 elements) stays zero.
            GgmlType::F32 | GgmlType::F16 => dst[..row_bytes].copy_from_slice(src),
            // A lone f16 scale, padded to a word.
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
                let bb = ty.block_bytes();
                for (s, d) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(words * 4)) {
                    d[..2].copy_from_slice(&s[..2]);
                    d[4..4 + bb - 2].copy_from_slice(&s[2..]);
                }
            }
            // Trailing 2 pad bytes.
            GgmlType::Q6_K => {
                for (s, d) in src.chunks_exact(210).zip(dst.chunks_exact_mut(212)) {
                    d[..210].copy_from_slice(s);
                }
            }
            // Already word-sized blocks.
            _ => dst.copy_from_slice(src),
        }
    }
    Ok(out)
}

/// A weight matrix on the GPU, (rows, cols) row-major, in the repacked layout; split by
/// rows into parts that each fit one binding.
pub struct GpuMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub parts: Vec<MatrixPart>,
}

pub struct MatrixPart {
    /// (n_rows, row_words) u32.
    pub buffer: wgpu::Buffer,
    pub row0: usize,
    pub n_rows: usize,
}

/// How a `ty` matrix of `cols` columns is laid out on the GPU under a binding limit of
/// `max_binding` bytes: (bytes of one repacked row, rows per part). Refuses types without a
/// kernel, rows that are not whole blocks and a single row larger than a binding (rows are
/// never split). The fit check before upload and the upload itself both ask this.
pub fn matrix_layout(name: &str, ty: GgmlType, cols: usize, max_binding: u64) -> Result<(u64, usize), GpuError> {
    let rw = row_words(ty, cols).ok_or_else(|| GpuError::UnsupportedType { name: name.to_string(), ty })?;
    if cols % ty.block_len() != 0 {
        return Err(GpuError::Tensor { name: name.to_string(), msg: format!("{cols} columns is not a whole number of {ty:?} blocks") });
    }
    let row_bytes = (rw * 4) as u64;
    let rows_per_part = (max_binding / row_bytes) as usize;
    if rows_per_part == 0 {
        return Err(GpuError::TooLarge { what: format!("one row of '{name}'"), needed: row_bytes, allowed: max_binding });
    }
    Ok((row_bytes, rows_per_part))
}

impl GpuMatrix {
    /// Upload a GGUF tensor of `rows` × `cols` (`bytes` in file layout).
    pub fn upload(ctx: &GpuContext, name: &str, ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, GpuError> {
        let err = |msg: String| GpuError::Tensor { name: name.to_string(), msg };
        let (_, rows_per_part) = matrix_layout(name, ty, cols, ctx.max_binding())?;
        let mut parts = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n_rows = rows_per_part.min(rows - row0);
            let words = repack_rows(ty, cols, bytes, row0..row0 + n_rows).map_err(err)?;
            let buffer = ctx.storage_init(name, bytemuck::cast_slice(&words));
            parts.push(MatrixPart { buffer, row0, n_rows });
            row0 += n_rows;
        }
        Ok(GpuMatrix { ty, rows, cols, parts })
    }
}

/// One matrix of a [`FusedMatrix`]: `rows` rows of type `ty`, from word `word0` on.
pub struct Segment {
    pub ty: GgmlType,
    pub rows: usize,
    pub word0: usize,
}

/// Matrices of one input that a kernel reads as one (q | k | v, gate | up: matmul.wgsl
/// matmul_qkv, matmul_gate_up): their repacked rows back to back in one binding, each
/// segment keeping its own type (Q4_K_M mixes Q5_0, Q8_0 and Q6_K within a layer).
pub struct FusedMatrix {
    /// (Σ segment rows × row words) u32.
    pub buffer: wgpu::Buffer,
    pub cols: usize,
    /// At most 3.
    pub segments: Vec<Segment>,
}

impl FusedMatrix {
    /// Concatenate `mats` (same cols, ≤ 3) on the GPU and release them; `Err` gives them
    /// back untouched when they cannot be fused: a matrix split across bindings, or together
    /// more than one binding holds.
    pub fn concat(ctx: &GpuContext, label: &str, mats: Vec<GpuMatrix>) -> Result<Self, Vec<GpuMatrix>> {
        let cols = mats.first().map_or(0, |m| m.cols);
        let fits = mats.len() <= 3
            && mats.iter().all(|m| m.cols == cols && m.parts.len() == 1 && row_words(m.ty, cols).is_some());
        if !fits {
            return Err(mats);
        }
        let words: Vec<usize> = mats.iter().map(|m| m.rows * row_words(m.ty, cols).unwrap_or(0)).collect();
        // Each segment starts on a 16-byte word (matmul.wgsl reads K-quant blocks with
        // 16-byte loads).
        let total: usize = words.iter().map(|n| n.next_multiple_of(4)).sum();
        if total as u64 * 4 > ctx.max_binding() {
            return Err(mats);
        }
        let buffer = ctx.storage(label, total as u64 * 4);
        let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        let mut segments = Vec::with_capacity(mats.len());
        let mut word0 = 0;
        for (m, &n) in mats.iter().zip(&words) {
            encoder.copy_buffer_to_buffer(&m.parts[0].buffer, 0, &buffer, word0 as u64 * 4, n as u64 * 4);
            segments.push(Segment { ty: m.ty, rows: m.rows, word0 });
            word0 += n.next_multiple_of(4);
        }
        ctx.queue.submit([encoder.finish()]);
        for m in mats {
            for part in m.parts {
                ctx.release(part.buffer);
            }
        }
        Ok(FusedMatrix { buffer, cols, segments })
    }

    pub fn rows(&self) -> usize {
        self.segments.iter().map(|s| s.rows).sum()
    }
}
