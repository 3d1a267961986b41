//! The vision projector's quantizer (llama.cpp has none for projectors in this version):
//! Q8_0 for every weight matrix llama.cpp can run as Q8_0, after widening SigLIP's
//! 4304-unit feed-forward layers to 4320 with zero units so that their down matrices can
//! be Q8_0 too.
//!
//! The zero units change nothing the model computes: their rows of the up matrix and their
//! biases are zero, and so are their columns of the down matrix, so whatever the
//! activation makes of them is multiplied by zero. What Q8_0 costs in accuracy is measured
//! in BENCHMARKS.md.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use llama_cpp_sys_2 as sys;

use super::synth::{Init, SynthError, Writer};
use crate::gguf;

/// Q8_0 stores blocks of 32 values along a row.
const BLOCK: i64 = 32;

/// What [`rewrite`] does to a projector.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// F16 weight matrices whose rows are whole Q8_0 blocks become Q8_0.
    pub quantize: bool,
    /// Feed-forward layers whose width is not a whole number of blocks get zero units up
    /// to the next block.
    pub pad_ffn: bool,
    /// Keep the last vision block, which llava-style projectors store but never run.
    pub keep_unused_block: bool,
}

impl Default for Options {
    /// What `moonwatch model quantize --mmproj` and `model pull` do.
    fn default() -> Self {
        Self {
            quantize: true,
            pad_ffn: true,
            keep_unused_block: false,
        }
    }
}

/// What [`rewrite`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Matrices written as Q8_0.
    pub quantized: usize,
    /// Tensors written in their own type.
    pub kept: usize,
    /// Tensors widened with zero units (counted in one of the above too).
    pub padded: usize,
    /// The feed-forward width before and after (equal when nothing was padded).
    pub ffn: (u32, u32),
}

/// Quantizes a projector as shipped ([`Options::default`]).
pub fn quantize_mmproj(input: &Path, output: &Path) -> Result<Report, SynthError> {
    rewrite(input, output, Options::default())
}

/// Whether a projector has feed-forward layers that [`quantize_mmproj`] would now widen
/// (one quantized before widening existed: about 124 MB more for Moondream2's). False for
/// anything unreadable.
pub fn needs_widening(path: &Path) -> bool {
    let Some(gguf) = llama_cpp_2::gguf::GgufContext::from_file(path) else {
        return false;
    };
    let i = gguf.find_key("clip.vision.feed_forward_length");
    i >= 0 && gguf.kv_type(i) == sys::GGUF_TYPE_UINT32 && i64::from(gguf.val_u32(i)) % BLOCK != 0
}

/// One tensor of the input and what becomes of it.
struct Plan {
    name: String,
    offset: u64,
    size: usize,
    ty: sys::ggml_type,
    ne: Vec<i64>,
    out_ty: sys::ggml_type,
    out_ne: Vec<i64>,
}

/// Reads `input` (a llama.cpp `clip` GGUF) and writes `output` as `opts` asks.
///
/// An MLP (llava) projector stores one block more than its graph runs (it stops before
/// the last); unless kept, that block is left out, and `clip.vision.feature_layer` tells
/// llama.cpp to run the same blocks as before and take their output, post-norm included,
/// exactly as it did.
pub fn rewrite(input: &Path, output: &Path, opts: Options) -> Result<Report, SynthError> {
    let rerr = |reason: String| SynthError::Read {
        path: input.to_owned(),
        reason,
    };
    let src = gguf::Reader::open(input, false).map_err(rerr)?;
    let blocks = src.u32("clip.vision.block_count");
    let ff = src.u32("clip.vision.feed_forward_length");
    let mlp = src.str("clip.projector_type").as_deref() == Some("mlp")
        && !src.has("clip.vision.feature_layer");
    let unused = match blocks {
        Some(b) if mlp && b > 1 && !opts.keep_unused_block => Some(format!("v.blk.{}.", b - 1)),
        _ => None,
    };
    let mut plans: Vec<Plan> = src
        .tensors()
        .map_err(rerr)?
        .into_iter()
        .filter(|t| !unused.as_deref().is_some_and(|u| t.name.starts_with(u)))
        .map(|t| Plan {
            offset: t.offset,
            size: t.size,
            ty: t.ty,
            out_ty: t.ty,
            out_ne: t.ne.clone(),
            ne: t.ne,
            name: t.name,
        })
        .collect();

    // The feed-forward width, padded when every tensor that has it can be rewritten.
    let ff = ff.unwrap_or(0);
    let padded_ff = (i64::from(ff) + BLOCK - 1) / BLOCK * BLOCK;
    let is_ffn = |p: &Plan| p.name.starts_with("v.blk.") && p.name.contains(".ffn_");
    let widens = |p: &Plan| is_ffn(p) && p.ne.iter().take(2).any(|&d| d == i64::from(ff));
    // F16 and F32 tensors widen any way; quantized ones (a projector quantized before
    // widening existed) only by whole rows of zero blocks.
    let widenable = |p: &Plan| {
        p.ne.len() <= 2
            && (matches!(p.ty, sys::GGML_TYPE_F16 | sys::GGML_TYPE_F32) || p.ne[0] != i64::from(ff))
    };
    let pad = opts.pad_ffn
        && ff > 0
        && padded_ff != i64::from(ff)
        && plans.iter().filter(|p| widens(p)).all(widenable);
    let mut report = Report {
        ffn: (ff, if pad { padded_ff as u32 } else { ff }),
        ..Report::default()
    };
    for p in &mut plans {
        if pad && widens(p) {
            for d in p.out_ne.iter_mut().take(2) {
                if *d == i64::from(ff) {
                    *d = padded_ff;
                }
            }
            report.padded += 1;
        }
        let matrix = p.out_ne.len() == 2 && p.out_ne[0] % BLOCK == 0 && p.name.ends_with(".weight");
        let embedding = p.name.contains("patch_embd") || p.name.contains("position_embd");
        if opts.quantize && p.ty == sys::GGML_TYPE_F16 && matrix && !embedding {
            p.out_ty = sys::GGML_TYPE_Q8_0;
            report.quantized += 1;
        } else {
            report.kept += 1;
        }
    }

    let mut w = Writer::new(plans.len());
    w.copy_kv(&src);
    drop(src);
    for p in &plans {
        w.tensor(&p.name, p.out_ty, &p.out_ne, Init::Zeros);
    }
    if opts.quantize {
        w.u32("general.file_type", sys::LLAMA_FTYPE_MOSTLY_Q8_0);
    }
    if pad {
        w.u32("clip.vision.feed_forward_length", padded_ff as u32);
    }
    if let (Some(_), Some(b)) = (&unused, blocks) {
        let run = b as i32 - 1;
        w.u32("clip.vision.block_count", run as u32);
        w.i32s("clip.vision.feature_layer", &[run]);
    }
    let mut file = File::open(input).map_err(|e| rerr(e.to_string()))?;
    w.write_with(output, |i, _| {
        let p = &plans[i];
        let mut raw = vec![0u8; p.size];
        file.seek(SeekFrom::Start(p.offset))
            .and_then(|_| file.read_exact(&mut raw))
            .map_err(|e| rerr(format!("reading tensor {}: {e}", p.name)))?;
        if p.out_ty == p.ty && p.out_ne == p.ne {
            return Ok(raw);
        }
        if p.out_ty == p.ty && p.out_ne[0] == p.ne[0] {
            // More rows of the same type: zero bytes are zero values in every ggml type
            // (a block's scale is zero).
            let rows = (p.out_ne[1] - p.ne.get(1).copied().unwrap_or(1)) as usize;
            let row = gguf::row_size(p.ty, p.ne[0]);
            raw.resize(raw.len() + rows * row, 0);
            return Ok(raw);
        }
        let values = widen(&to_f32(&raw, p.ty), &p.ne, &p.out_ne);
        Ok(gguf::encode(&values, p.out_ty, p.out_ne[0]))
    })?;
    Ok(report)
}

/// F16 or F32 data as f32 values.
fn to_f32(raw: &[u8], ty: sys::ggml_type) -> Vec<f32> {
    if ty == sys::GGML_TYPE_F32 {
        return raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
    }
    gguf::f16_to_f32(raw)
}

/// A tensor of shape `ne` (at most 2-D) copied into shape `out_ne`, zeros elsewhere.
fn widen(values: &[f32], ne: &[i64], out_ne: &[i64]) -> Vec<f32> {
    if ne == out_ne {
        return values.to_vec();
    }
    let (w, h) = (ne[0] as usize, ne.get(1).copied().unwrap_or(1) as usize);
    let (ow, oh) = (
        out_ne[0] as usize,
        out_ne.get(1).copied().unwrap_or(1) as usize,
    );
    let mut out = vec![0f32; ow * oh];
    for (r, row) in values.chunks_exact(w).take(h).enumerate() {
        out[r * ow..r * ow + w].copy_from_slice(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_keeps_every_value_in_place_and_fills_zeros() {
        // A 3-wide, 2-high matrix to 4x3: rows keep their values at the start.
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = widen(&v, &[3, 2], &[4, 3]);
        assert_eq!(
            w,
            [1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(widen(&[7.0, 8.0], &[2], &[4]), [7.0, 8.0, 0.0, 0.0]);
    }

    #[test]
    fn f16_round_trips_through_encode() {
        let v = [0.5f32, -2.0, 1024.0];
        let bytes = gguf::encode(&v, sys::GGML_TYPE_F16, 3);
        assert_eq!(to_f32(&bytes, sys::GGML_TYPE_F16), v);
    }
}
