//! Moondream2 2025-04-14's own weights (`model.safetensors`, the torch module tree of
//! `vikhyat/moondream` f660ccb) into the three files moonwatch runs:
//!
//! - a `phi2` text GGUF (llama.cpp's tensor names, GPT-2 tokenizer);
//! - a `clip` vision GGUF for llama.cpp's llava graph, with the projector's first layer
//!   folded for one crop (`W[:, :n] + W[:, n:]`, exact for the 378x378 frames moonwatch
//!   sends; see docs/region-heads.md) and one unused block appended, because that graph
//!   runs all blocks but the last;
//! - a region GGUF: the region heads (`region.*`) plus the two things the engine needs
//!   beside them, the text model's final LayerNorm (to check the captured hidden state
//!   against llama.cpp's own) and the BOS embedding (the first row of the two-way prefix).
//!
//! Matrices keep F32 when the source is F32 and become F16 otherwise (the release is
//! BF16); vectors are F32. Quantize the text model afterwards with `moonwatch model quantize`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llama_cpp_sys_2 as sys;
use safetensors::{Dtype, SafeTensors};

use super::synth::{self, Shape, Vocab, Writer};

/// File names of a conversion's output.
pub const TEXT_FILE: &str = "moondream2-2025-04-14-text-model-f16.gguf";
pub use crate::vision::crops::{PROJ_GLOBAL as CROP_PROJ_GLOBAL, PROJ_LOCAL as CROP_PROJ_LOCAL};
pub const MMPROJ_FILE: &str = "moondream2-2025-04-14-mmproj-f16.gguf";
pub const REGION_FILE: &str = "moondream2-2025-04-14-region.gguf";

/// Reference head width: `apply_rotary_emb` rotates 32 dimensions, which its assertion
/// ties to `dim / n_heads == 64`.
const HEAD_DIM: i64 = 64;
const ROPE_DIMS: u32 = 32;
/// Patch side of the vision encoder (`VisionConfig`).
const PATCH: i64 = 14;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: not Moondream2 2025-04-14 weights: {reason}")]
    Layout { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] synth::SynthError),
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    pub text: PathBuf,
    pub mmproj: PathBuf,
    pub region: PathBuf,
    /// Dimensions read from the weights (and `config.json` for head counts).
    pub shape: Shape,
}

/// Head counts are not in the tensor shapes: read them from a `config.json` beside the
/// weights (`MoondreamConfig.to_dict()` form, at the top level or under `"config"`), or
/// take the reference's defaults (32 text heads of 64, 16 vision heads).
fn head_counts(dir: &Path, text_dim: i64) -> (u32, u32) {
    let json = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    let cfg = json.as_ref().map(|j| j.get("config").unwrap_or(j));
    let get = |section: &str, key: &str| {
        cfg.and_then(|c| c.get(section)?.get(key)?.as_u64())
            .map(|v| v as u32)
    };
    (
        get("text", "n_heads").unwrap_or((text_dim / HEAD_DIM) as u32),
        get("vision", "enc_n_heads").unwrap_or(16),
    )
}

/// Whether a converted vision GGUF holds the projector's first layer as two halves
/// (written since `model.crops = "reference"`), not only folded.
pub fn has_crop_halves(mmproj: &Path) -> bool {
    crate::gguf::Reader::open(mmproj, false)
        .and_then(|r| r.tensors())
        .is_ok_and(|t| {
            [CROP_PROJ_GLOBAL, CROP_PROJ_LOCAL]
                .iter()
                .all(|n| t.iter().any(|t| t.name == *n))
        })
}

/// How one output tensor's values come from the source.
#[derive(Debug, Clone)]
enum Recipe {
    Copy(String),
    /// Rows `start..start + len` of a matrix (the q, k or v part of a fused qkv).
    Rows(String, usize, usize),
    /// `W[:, :n] + W[:, n:]` of an (out, 2n) matrix.
    FoldHalves(String),
    /// `W[:, :n]` (false) or `W[:, n:]` (true) of an (out, 2n) matrix.
    Half(String, bool),
    Zeros,
}

/// The source weights, memory-mapped.
struct Source<'a> {
    path: &'a Path,
    st: SafeTensors<'a>,
}

impl Source<'_> {
    fn layout(&self, reason: String) -> ConvertError {
        ConvertError::Layout {
            path: self.path.to_owned(),
            reason,
        }
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>, ConvertError> {
        self.st
            .tensor(name)
            .map(|t| t.shape().to_vec())
            .map_err(|_| self.layout(format!("tensor {name} is missing")))
    }

    fn is_f32(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok_and(|t| t.dtype() == Dtype::F32)
    }

    fn values(&self, name: &str) -> Result<Vec<f32>, ConvertError> {
        self.rows(name, None)
    }

    /// Values of rows `start..start + len` (all rows when `None`), converted to f32; only
    /// those rows are read.
    fn rows(&self, name: &str, range: Option<(usize, usize)>) -> Result<Vec<f32>, ConvertError> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| self.layout(format!("tensor {name} is missing")))?;
        let convert: fn(&[u8]) -> Vec<f32> = match t.dtype() {
            Dtype::F32 => |d| {
                d.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            },
            Dtype::F16 => |d| {
                d.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect()
            },
            Dtype::BF16 => |d| {
                d.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect()
            },
            other => return Err(self.layout(format!("tensor {name} has type {other:?}"))),
        };
        let d = t.data();
        let d = match range {
            None => d,
            Some((start, len)) => {
                let row = d.len() / t.shape().first().copied().unwrap_or(1).max(1);
                d.get(start * row..(start + len) * row).ok_or_else(|| {
                    self.layout(format!(
                        "tensor {name} has no rows {start}..{}",
                        start + len
                    ))
                })?
            }
        };
        Ok(convert(d))
    }

    fn count(&self, prefix: &str) -> usize {
        // Text blocks have one LayerNorm (`ln`), vision blocks two (`ln1`, `ln2`).
        (0..)
            .take_while(|i| {
                ["ln", "ln1"]
                    .iter()
                    .any(|ln| self.st.tensor(&format!("{prefix}.{i}.{ln}.weight")).is_ok())
            })
            .count()
    }

    /// A matrix's values, row-major, with its row length.
    fn matrix(&self, name: &str) -> Result<(Vec<f32>, usize), ConvertError> {
        let cols = self.shape(name)?.get(1).copied().unwrap_or(1).max(1);
        Ok((self.values(name)?, cols))
    }

    fn make(&self, r: &Recipe, n: usize) -> Result<Vec<f32>, ConvertError> {
        match r {
            Recipe::Copy(name) => self.values(name),
            Recipe::Rows(name, start, len) => self.rows(name, Some((*start, *len))),
            Recipe::FoldHalves(name) => {
                let (v, cols) = self.matrix(name)?;
                Ok(v.chunks_exact(cols)
                    .flat_map(|row| {
                        let (a, b) = row.split_at(cols / 2);
                        a.iter().zip(b).map(|(x, y)| x + y)
                    })
                    .collect())
            }
            Recipe::Half(name, second) => {
                let (v, cols) = self.matrix(name)?;
                Ok(v.chunks_exact(cols)
                    .flat_map(|row| {
                        let (a, b) = row.split_at(cols / 2);
                        if *second {
                            b
                        } else {
                            a
                        }
                    })
                    .copied()
                    .collect())
            }
            Recipe::Zeros => Ok(vec![0.0; n]),
        }
    }
}

/// One GGUF file under construction: tensors with their recipes.
struct Plan<'s, 'a> {
    src: &'s Source<'a>,
    w: Writer,
    recipes: Vec<Recipe>,
}

impl<'s, 'a> Plan<'s, 'a> {
    fn new(src: &'s Source<'a>, max_tensors: usize) -> Self {
        Self {
            src,
            w: Writer::new(max_tensors),
            recipes: Vec::new(),
        }
    }

    /// Adds `name` with ggml dimensions `ne` (fastest first), F32 for vectors or when
    /// `f32` is asked, F16 otherwise.
    fn add(&mut self, name: &str, ne: &[i64], recipe: Recipe, f32: bool) {
        let ty = if ne.len() == 1 || f32 {
            sys::GGML_TYPE_F32
        } else {
            sys::GGML_TYPE_F16
        };
        self.w.tensor(name, ty, ne, synth::Init::Zeros);
        self.recipes.push(recipe);
    }

    /// A tensor copied as it is: torch (rows, cols) is ggml [cols, rows].
    fn copy(&mut self, name: &str, from: &str) -> Result<(), ConvertError> {
        let mut ne: Vec<i64> = self.src.shape(from)?.iter().map(|&d| d as i64).collect();
        ne.reverse();
        while ne.len() > 1 && ne.last() == Some(&1) {
            ne.pop();
        }
        let f32 = self.src.is_f32(from);
        self.add(name, &ne, Recipe::Copy(from.into()), f32);
        Ok(())
    }

    /// `{to}.weight` and `{to}.bias` from `{from}.weight` and `{from}.bias`.
    fn pair(&mut self, to: &str, from: &str) -> Result<(), ConvertError> {
        self.copy(&format!("{to}.weight"), &format!("{from}.weight"))?;
        self.copy(&format!("{to}.bias"), &format!("{from}.bias"))
    }

    fn write(self, path: &Path) -> Result<(), ConvertError> {
        let Plan { src, w, recipes } = self;
        let tmp = path.with_extension("gguf.part");
        w.write_with(&tmp, |i, spec| {
            let n: i64 = spec.ne.iter().product();
            let values =
                src.make(&recipes[i], n as usize)
                    .map_err(|e| synth::SynthError::Write {
                        path: tmp.clone(),
                        reason: e.to_string(),
                    })?;
            Ok(encode(&values, spec.ty))
        })?;
        std::fs::rename(&tmp, path).map_err(|e| {
            ConvertError::Write(synth::SynthError::Write {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        })
    }
}

fn encode(values: &[f32], ty: sys::ggml_type) -> Vec<u8> {
    if ty == sys::GGML_TYPE_F32 {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    } else {
        values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect()
    }
}

/// Converts `weights` (a 2025-04-14 `model.safetensors`) into `out_dir`.
pub fn convert(weights: &Path, out_dir: &Path, vocab: &Vocab) -> Result<Converted, ConvertError> {
    let rerr = |reason: String| ConvertError::Read {
        path: weights.to_owned(),
        reason,
    };
    let file = std::fs::File::open(weights).map_err(|e| rerr(e.to_string()))?;
    let map = crate::gguf::map(&file).map_err(|e| rerr(e.to_string()))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| {
        rerr(format!(
            "not a safetensors file ({e}); give the release's model.safetensors"
        ))
    })?;
    let src = Source { path: weights, st };
    std::fs::create_dir_all(out_dir).map_err(|e| ConvertError::Read {
        path: out_dir.to_owned(),
        reason: e.to_string(),
    })?;

    let wte = src.shape("model.text.wte")?;
    let (n_vocab, text_dim) = (wte[0], wte[1] as i64);
    if n_vocab != synth::N_VOCAB {
        return Err(src.layout(format!(
            "model.text.wte has {n_vocab} rows, expected {}",
            synth::N_VOCAB
        )));
    }
    let text_layers = src.count("model.text.blocks");
    let vision_layers = src.count("model.vision.blocks");
    let enc = src.shape("model.vision.patch_emb.weight")?;
    let vision_embd = enc[0] as i64;
    if enc[1] as i64 != 3 * PATCH * PATCH {
        return Err(src.layout(format!(
            "model.vision.patch_emb.weight is {enc:?}, expected [n, 588]"
        )));
    }
    let dir = weights.parent().unwrap_or(Path::new("."));
    let (text_heads, vision_heads) = head_counts(dir, text_dim);
    let shape = Shape {
        text_embd: text_dim,
        text_ff: src.shape("model.text.blocks.0.mlp.fc1.weight")?[0] as i64,
        text_layers: text_layers as i64,
        text_heads,
        rope_dims: ROPE_DIMS,
        vision_embd,
        vision_ff: src.shape("model.vision.blocks.0.mlp.fc1.weight")?[0] as i64,
        vision_layers: vision_layers as i64 + 1,
        vision_heads,
        proj_hidden: src.shape("model.vision.proj_mlp.fc1.weight")?[0] as i64,
        vocab_q8: false,
    };
    if text_layers == 0 || vision_layers == 0 {
        return Err(src.layout("no text or vision blocks".into()));
    }
    if text_dim / text_heads as i64 != HEAD_DIM {
        return Err(src.layout(format!(
            "text width {text_dim} with {text_heads} heads is not 64 per head"
        )));
    }
    let proj_in = src.shape("model.vision.proj_mlp.fc1.weight")?[1] as i64;
    if proj_in != 2 * vision_embd {
        return Err(src.layout(format!(
            "the projector takes {proj_in} inputs, expected 2 x {vision_embd}"
        )));
    }

    let out = Converted {
        text: out_dir.join(TEXT_FILE),
        mmproj: out_dir.join(MMPROJ_FILE),
        region: out_dir.join(REGION_FILE),
        shape,
    };
    text_gguf(&src, &shape, vocab)?.write(&out.text)?;
    vision_gguf(&src, &shape)?.write(&out.mmproj)?;
    region_gguf(&src, text_dim)?.write(&out.region)?;
    Ok(out)
}

fn text_gguf<'s, 'a>(
    src: &'s Source<'a>,
    s: &Shape,
    vocab: &Vocab,
) -> Result<Plan<'s, 'a>, ConvertError> {
    let mut p = Plan::new(src, 8 + 12 * s.text_layers as usize);
    synth::phi2_metadata(&mut p.w, "moondream2-2025-04-14-text", s, vocab);
    p.copy("token_embd.weight", "model.text.wte")?;
    for i in 0..s.text_layers {
        let (b, f) = (format!("blk.{i}"), format!("model.text.blocks.{i}"));
        p.pair(&format!("{b}.attn_norm"), &format!("{f}.ln"))?;
        p.pair(&format!("{b}.attn_qkv"), &format!("{f}.attn.qkv"))?;
        p.pair(&format!("{b}.attn_output"), &format!("{f}.attn.proj"))?;
        p.pair(&format!("{b}.ffn_up"), &format!("{f}.mlp.fc1"))?;
        p.pair(&format!("{b}.ffn_down"), &format!("{f}.mlp.fc2"))?;
    }
    p.pair("output_norm", "model.text.post_ln")?;
    p.pair("output", "model.text.lm_head")?;
    Ok(p)
}

fn vision_gguf<'s, 'a>(src: &'s Source<'a>, s: &Shape) -> Result<Plan<'s, 'a>, ConvertError> {
    let n = s.vision_embd;
    let f32 = src.is_f32("model.vision.patch_emb.weight");
    let mut p = Plan::new(src, 16 + 16 * s.vision_layers as usize);
    // torch's F.layer_norm default eps, which the reference uses.
    synth::clip_metadata(&mut p.w, "moondream2-2025-04-14-mmproj", s, 1e-5);
    // (n, 3*14*14) in (c, p1, p2) order is the conv kernel [14, 14, 3, n] as it is.
    p.add(
        "v.patch_embd.weight",
        &[PATCH, PATCH, 3, n],
        Recipe::Copy("model.vision.patch_emb.weight".into()),
        f32,
    );
    p.copy("v.patch_embd.bias", "model.vision.patch_emb.bias")?;
    p.add(
        "v.position_embd.weight",
        &[n, 729],
        Recipe::Copy("model.vision.pos_emb".into()),
        f32,
    );
    let real = s.vision_layers - 1;
    for i in 0..s.vision_layers {
        let (b, f) = (format!("v.blk.{i}"), format!("model.vision.blocks.{i}"));
        let pick = |part: usize| {
            if i < real {
                (
                    Recipe::Rows(
                        format!("{f}.attn.qkv.weight"),
                        part * n as usize,
                        n as usize,
                    ),
                    Recipe::Rows(format!("{f}.attn.qkv.bias"), part * n as usize, n as usize),
                )
            } else {
                (Recipe::Zeros, Recipe::Zeros)
            }
        };
        for (part, name) in ["attn_q", "attn_k", "attn_v"].into_iter().enumerate() {
            let (wr, br) = pick(part);
            p.add(&format!("{b}.{name}.weight"), &[n, n], wr, f32);
            p.add(&format!("{b}.{name}.bias"), &[n], br, true);
        }
        if i < real {
            p.pair(&format!("{b}.attn_out"), &format!("{f}.attn.proj"))?;
            p.pair(&format!("{b}.ln1"), &format!("{f}.ln1"))?;
            p.pair(&format!("{b}.ln2"), &format!("{f}.ln2"))?;
            p.pair(&format!("{b}.ffn_up"), &format!("{f}.mlp.fc1"))?;
            p.pair(&format!("{b}.ffn_down"), &format!("{f}.mlp.fc2"))?;
        } else {
            // Never run: llama.cpp's llava graph stops one block short.
            let ff = s.vision_ff;
            for (name, ne) in [
                ("attn_out.weight", vec![n, n]),
                ("attn_out.bias", vec![n]),
                ("ln1.weight", vec![n]),
                ("ln1.bias", vec![n]),
                ("ln2.weight", vec![n]),
                ("ln2.bias", vec![n]),
                ("ffn_up.weight", vec![n, ff]),
                ("ffn_up.bias", vec![ff]),
                ("ffn_down.weight", vec![ff, n]),
                ("ffn_down.bias", vec![n]),
            ] {
                p.add(&format!("{b}.{name}"), &ne, Recipe::Zeros, f32);
            }
        }
    }
    p.pair("v.post_ln", "model.vision.post_ln")?;
    p.add(
        "mm.0.weight",
        &[n, s.proj_hidden],
        Recipe::FoldHalves("model.vision.proj_mlp.fc1.weight".into()),
        f32,
    );
    p.copy("mm.0.bias", "model.vision.proj_mlp.fc1.bias")?;
    p.pair("mm.2", "model.vision.proj_mlp.fc2")?;
    // The two halves as trained, for pictures of several crops (`model.crops =
    // "reference"`), where the global and the pooled local features differ; llama.cpp's
    // clip loads only the tensors its graph names and leaves these alone.
    for (name, second) in [(CROP_PROJ_GLOBAL, false), (CROP_PROJ_LOCAL, true)] {
        p.add(
            name,
            &[n, s.proj_hidden],
            Recipe::Half("model.vision.proj_mlp.fc1.weight".into(), second),
            f32,
        );
    }
    Ok(p)
}

/// Region tensors, named without the `model.` prefix.
const REGION_TENSORS: [&str; 14] = [
    "region.coord_features",
    "region.size_features",
    "region.coord_encoder.weight",
    "region.coord_encoder.bias",
    "region.size_encoder.weight",
    "region.size_encoder.bias",
    "region.coord_decoder.fc1.weight",
    "region.coord_decoder.fc1.bias",
    "region.coord_decoder.fc2.weight",
    "region.coord_decoder.fc2.bias",
    "region.size_decoder.fc1.weight",
    "region.size_decoder.fc1.bias",
    "region.size_decoder.fc2.weight",
    "region.size_decoder.fc2.bias",
];

fn region_gguf<'s, 'a>(src: &'s Source<'a>, text_dim: i64) -> Result<Plan<'s, 'a>, ConvertError> {
    let mut p = Plan::new(src, 24);
    p.w.str("general.architecture", crate::vision::region::ARCH);
    p.w.str("general.name", "moondream2-2025-04-14-region");
    for name in REGION_TENSORS {
        // Fourier frequencies stay F32: they multiply coordinates by up to hundreds.
        let from = format!("model.{name}");
        let mut ne: Vec<i64> = src.shape(&from)?.iter().map(|&d| d as i64).collect();
        ne.reverse();
        let f32 = name.ends_with("_features") || src.is_f32(&from);
        p.add(name, &ne, Recipe::Copy(from), f32);
    }
    p.copy("text.post_ln.weight", "model.text.post_ln.weight")?;
    p.copy("text.post_ln.bias", "model.text.post_ln.bias")?;
    p.add(
        "text.bos_embd",
        &[text_dim],
        Recipe::Rows("model.text.wte".into(), synth::ENDOFTEXT as usize, 1),
        true,
    );
    Ok(p)
}

/// Every tensor name a 2025-04-14 checkpoint must have, with its shape for `shape`
/// (torch order), as the reference builds it (`build_text_model`, `build_vision_model`,
/// `MoondreamModel.region`).
pub fn reference_tensors(s: &RefShape) -> BTreeMap<String, Vec<usize>> {
    let mut t = BTreeMap::new();
    let lin = |t: &mut BTreeMap<String, Vec<usize>>, name: String, i: usize, o: usize| {
        t.insert(format!("{name}.weight"), vec![o, i]);
        t.insert(format!("{name}.bias"), vec![o]);
    };
    let d = s.text_dim;
    t.insert("model.text.wte".into(), vec![synth::N_VOCAB, d]);
    for i in 0..s.text_layers {
        let b = format!("model.text.blocks.{i}");
        t.insert(format!("{b}.ln.weight"), vec![d]);
        t.insert(format!("{b}.ln.bias"), vec![d]);
        lin(&mut t, format!("{b}.attn.qkv"), d, 3 * d);
        lin(&mut t, format!("{b}.attn.proj"), d, d);
        lin(&mut t, format!("{b}.mlp.fc1"), d, s.text_ff);
        lin(&mut t, format!("{b}.mlp.fc2"), s.text_ff, d);
    }
    t.insert("model.text.post_ln.weight".into(), vec![d]);
    t.insert("model.text.post_ln.bias".into(), vec![d]);
    lin(&mut t, "model.text.lm_head".into(), d, synth::N_VOCAB);
    let n = s.vision_dim;
    lin(&mut t, "model.vision.patch_emb".into(), 588, n);
    t.insert("model.vision.pos_emb".into(), vec![1, 729, n]);
    for i in 0..s.vision_layers {
        let b = format!("model.vision.blocks.{i}");
        for ln in ["ln1", "ln2"] {
            t.insert(format!("{b}.{ln}.weight"), vec![n]);
            t.insert(format!("{b}.{ln}.bias"), vec![n]);
        }
        lin(&mut t, format!("{b}.attn.qkv"), n, 3 * n);
        lin(&mut t, format!("{b}.attn.proj"), n, n);
        lin(&mut t, format!("{b}.mlp.fc1"), n, s.vision_ff);
        lin(&mut t, format!("{b}.mlp.fc2"), s.vision_ff, n);
    }
    t.insert("model.vision.post_ln.weight".into(), vec![n]);
    t.insert("model.vision.post_ln.bias".into(), vec![n]);
    lin(
        &mut t,
        "model.vision.proj_mlp.fc1".into(),
        2 * n,
        s.proj_inner,
    );
    lin(&mut t, "model.vision.proj_mlp.fc2".into(), s.proj_inner, d);
    t.insert("model.region.coord_features".into(), vec![1, 128]);
    t.insert("model.region.size_features".into(), vec![2, 256]);
    lin(&mut t, "model.region.coord_encoder".into(), 256, d);
    lin(&mut t, "model.region.size_encoder".into(), 512, d);
    lin(
        &mut t,
        "model.region.coord_decoder.fc1".into(),
        d,
        s.region_inner,
    );
    lin(
        &mut t,
        "model.region.coord_decoder.fc2".into(),
        s.region_inner,
        1024,
    );
    lin(
        &mut t,
        "model.region.size_decoder.fc1".into(),
        d,
        s.region_inner,
    );
    lin(
        &mut t,
        "model.region.size_decoder.fc2".into(),
        s.region_inner,
        2048,
    );
    t
}

/// Dimensions of a checkpoint in the reference's own terms (`MoondreamConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefShape {
    pub text_dim: usize,
    pub text_ff: usize,
    pub text_layers: usize,
    pub vision_dim: usize,
    pub vision_ff: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub proj_inner: usize,
    pub region_inner: usize,
    /// Store BF16, as the release does (else F32).
    pub bf16: bool,
}

impl RefShape {
    /// Small enough for tests (a 56 MB file, most of it the two vocabulary matrices),
    /// shaped so the reference accepts it (64-wide text heads).
    pub fn tiny() -> Self {
        Self {
            text_dim: 128,
            text_ff: 256,
            text_layers: 2,
            vision_dim: 64,
            vision_ff: 128,
            // The reference reads its 27x27 patch grid from `enc_n_layers`
            // (`_run_vision_encoder`, `vision_projection`): it runs only with 27 blocks.
            vision_layers: 27,
            vision_heads: 4,
            proj_inner: 256,
            region_inner: 256,
            bf16: false,
        }
    }

    /// The release's dimensions.
    pub fn full() -> Self {
        Self {
            text_dim: 2048,
            text_ff: 8192,
            text_layers: 24,
            vision_dim: 1152,
            vision_ff: 4304,
            vision_layers: 27,
            vision_heads: 16,
            proj_inner: 8192,
            region_inner: 8192,
            bf16: true,
        }
    }

    /// `config.json` in the reference's `MoondreamConfig.to_dict()` form.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "text": {"dim": self.text_dim, "ff_dim": self.text_ff, "n_layers": self.text_layers,
                     "n_heads": self.text_dim / 64, "n_kv_heads": self.text_dim / 64},
            "vision": {"enc_dim": self.vision_dim, "enc_ff_dim": self.vision_ff,
                       "enc_n_layers": self.vision_layers, "enc_n_heads": self.vision_heads,
                       "proj_inner_dim": self.proj_inner, "proj_out_dim": self.text_dim},
            "region": {"dim": self.text_dim, "inner_dim": self.region_inner}
        })
    }
}

/// The seed of the checkpoints the committed goldens were made from.
pub const REFERENCE_SEED: u64 = 0x7265_6769;

/// What a reference-layout checkpoint written by [`write_reference`] does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fixture {
    /// Random weights; `eos_bias` is added to the end-of-text output bias (to end the
    /// object loop early), for comparison with the reference's own outputs; the text
    /// model's attention logits are multiplied by `attention` (its query and key weights by
    /// the square root; 1: as drawn), for sharper attention that rounding K and V to F16
    /// (flash attention) can move.
    ///
    /// `values` multiplies the text model's value weights and biases and divides its
    /// attention output weights, a power of two leaving the function unchanged in float32:
    /// with 2^-24 the values of V fall below F16's smallest subnormal number, where an F16
    /// KV cache or flash attention loses them.
    Random {
        eos_bias: f32,
        attention: f32,
        values: f32,
    },
    /// Chosen answers, without the reference: the text blocks add nothing (so each hidden
    /// state is its input embedding), the coordinate encoder's output is a marker in
    /// dimension 0 and the size encoder's in dimension 1, the coordinate decoder gives
    /// [`KNOWN_X_BIN`] for a state without the coordinate marker and [`KNOWN_Y_BIN`] for
    /// one with it, the size decoder always gives [`KNOWN_SIZE_BINS`], and end-of-text
    /// comes as [`Ends`] says.
    Known(Ends),
}

/// When a [`Fixture::Known`] model says end-of-text in the object loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// Right after the prompt: no objects.
    AtOnce,
    /// After an encoded coordinate or size: one object (its last feed decides).
    AfterOne,
    /// Never: the loop stops at the 50-object limit.
    Never,
}

pub const KNOWN_X_BIN: usize = 307;
pub const KNOWN_Y_BIN: usize = 614;
pub const KNOWN_SIZE_BINS: [usize; 2] = [800, 900];
/// The prompt's last token (`\n\n`), whose embedding starts the loop.
const PROMPT_END: usize = 628;

/// Overrides the random values of a [`Fixture::Known`] checkpoint.
fn known(name: &str, dims: &[usize], v: &mut [f32], ends: Ends) {
    let zero = |v: &mut [f32]| v.iter_mut().for_each(|x| *x = 0.0);
    let eos = synth::ENDOFTEXT as usize;
    let last = name.rsplit('.').next().unwrap_or_default();
    let module = name.trim_end_matches(&format!(".{last}"));
    match module {
        m if m.starts_with("model.text.blocks.")
            && (m.ends_with("attn.proj") || m.ends_with("mlp.fc2")) =>
        {
            zero(v)
        }
        "model.text.post_ln" => v
            .iter_mut()
            .for_each(|x| *x = if last == "weight" { 1.0 } else { 0.0 }),
        "model.text.wte" => {
            // The prompt's end carries neither marker.
            let d = dims[1];
            v[PROMPT_END * d] = 0.0;
            v[PROMPT_END * d + 1] = 0.0;
        }
        "model.text.lm_head" => {
            zero(v);
            let d = if last == "weight" { dims[1] } else { 1 };
            match (last, ends) {
                // Markers are ~11 after the norm, an unmarked state near 0: EOS > 0 only
                // after a feed.
                ("weight", Ends::AfterOne) => {
                    v[eos * d] = 1.0;
                    v[eos * d + 1] = 1.0;
                }
                ("bias", Ends::AfterOne) => v[eos] = -1.0,
                ("bias", Ends::AtOnce) => v[eos] = 10.0,
                ("bias", Ends::Never) => v[eos] = -10.0,
                _ => {}
            }
        }
        "model.region.coord_encoder" | "model.region.size_encoder" => {
            zero(v);
            if last == "bias" {
                v[usize::from(module.ends_with("size_encoder"))] = 10.0;
            }
        }
        "model.region.coord_decoder.fc1" => {
            // Unit 0 reads the coordinate marker.
            zero(v);
            if last == "weight" {
                v[0] = 1.0;
            }
        }
        "model.region.coord_decoder.fc2" => {
            zero(v);
            if last == "weight" {
                v[KNOWN_Y_BIN * dims[1]] = 1.0;
            } else {
                v[KNOWN_X_BIN] = 1.0;
            }
        }
        "model.region.size_decoder.fc1" => zero(v),
        "model.region.size_decoder.fc2" => {
            zero(v);
            if last == "bias" {
                v[KNOWN_SIZE_BINS[0]] = 1.0;
                v[BINS_FOR_SIZE + KNOWN_SIZE_BINS[1]] = 1.0;
            }
        }
        _ => {}
    }
}

/// The size decoder's second half holds the height bins.
const BINS_FOR_SIZE: usize = 1024;

/// Writes a checkpoint in the release's layout (`model.safetensors` in F32 or BF16, and
/// `config.json`) into `dir`: the input the goldens script gives Moondream's own code and
/// `convert` gives moonwatch. Random weights are uniform in ±1/sqrt(fan_in), LayerNorms
/// near one, biases small; see [`Fixture`] for what else.
pub fn write_reference(
    dir: &Path,
    shape: &RefShape,
    seed: u64,
    fixture: Fixture,
) -> Result<PathBuf, ConvertError> {
    use rand::{Rng, SeedableRng};
    let werr = |reason: String| {
        ConvertError::Write(synth::SynthError::Write {
            path: dir.to_owned(),
            reason,
        })
    };
    std::fs::create_dir_all(dir).map_err(|e| werr(e.to_string()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, dims) in reference_tensors(shape) {
        let n: usize = dims.iter().product();
        let fan_in = if dims.len() >= 2 {
            dims[dims.len() - 1]
        } else {
            1
        };
        let s = 1.0 / (fan_in as f32).sqrt();
        let mut v: Vec<f32> = if name.ends_with("ln.weight")
            || name.ends_with("ln1.weight")
            || name.ends_with("ln2.weight")
        {
            (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
        } else if name.ends_with("_features") {
            // The release's frequencies are of order ten (normal, std 10 in training).
            (0..n).map(|_| rng.random_range(-10.0..10.0)).collect()
        } else if dims.len() == 1 {
            (0..n).map(|_| rng.random_range(-0.05..0.05)).collect()
        } else {
            (0..n).map(|_| rng.random_range(-s..s)).collect()
        };
        match fixture {
            Fixture::Random { eos_bias, .. } if name == "model.text.lm_head.bias" => {
                v[synth::ENDOFTEXT as usize] += eos_bias;
            }
            Fixture::Random {
                attention, values, ..
            } if name.starts_with("model.text.blocks.") => {
                let (rows, cols) = (dims[0], if dims.len() == 2 { dims[1] } else { 1 });
                let d = shape.text_dim * cols;
                if name.ends_with(".attn.qkv.weight") && attention != 1.0 {
                    // Rows 0..2d are the query and key weights.
                    let scale = attention.max(0.0).sqrt();
                    for x in &mut v[..2 * d] {
                        *x *= scale;
                    }
                }
                if name.contains(".attn.qkv.") && values != 1.0 && rows == 3 * shape.text_dim {
                    // Rows (or entries) 2d..3d are the value part.
                    for x in &mut v[2 * d..3 * d] {
                        *x *= values;
                    }
                }
                if name.ends_with(".attn.proj.weight") && values != 1.0 {
                    for x in &mut v {
                        *x /= values;
                    }
                }
            }
            Fixture::Random { .. } => {}
            Fixture::Known(ends) => known(&name, &dims, &mut v, ends),
        }
        let bytes = if shape.bf16 {
            v.iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect()
        } else {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        };
        data.push((name, dims, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(name, dims, bytes)| {
            let dtype = if shape.bf16 { Dtype::BF16 } else { Dtype::F32 };
            safetensors::tensor::TensorView::new(dtype, dims.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| werr(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).map_err(|e| werr(e.to_string()))?;
    std::fs::write(dir.join("config.json"), shape.config_json().to_string())
        .map_err(|e| werr(e.to_string()))?;
    Ok(path)
}
