//! Moondream2 2025-04-14's region heads, as its own `region.py` and `_generate_points`
//! define them (vikhyat/moondream f660ccb; docs/region-heads.md): Fourier features,
//! coordinate and size encoders that turn a value into an input embedding, decoders that
//! read the text model's last hidden state (before its final LayerNorm) into 1024 bins.
//! Pure arithmetic over weights loaded from a region GGUF (`model convert`).

use std::collections::HashMap;
use std::path::Path;

use super::parse::{BBox, Point};
use super::EngineError;

/// The GGUF architecture name of a region file (`moonwatch model convert` writes it).
pub const ARCH: &str = "moondream2-region";
/// Bins of a coordinate (x = bin / 1024) and of a size (log scale, see [`size_of_bin`]).
pub const BINS: usize = 1024;
/// `DEFAULT_MAX_OBJECTS` in the reference.
pub const MAX_OBJECTS: usize = 50;
/// End-of-text, which ends the object loop (`TokenizerConfig.eos_id`).
pub const EOS: i32 = 50_256;
/// The prompts around `" " + object` (`TokenizerConfig.templates`): `\n\nDetect:` and
/// `\n\nPoint:`, then `\n\n` after the object.
pub const DETECT_PREFIX: [i32; 4] = [198, 198, 47504, 25];
pub const POINT_PREFIX: [i32; 4] = [198, 198, 12727, 25];
pub const SUFFIX: [i32; 1] = [628];

/// A size bin as a fraction of the picture: `2^(bin / 1023 * 10 - 10)`, 1/1024 to 1.
pub fn size_of_bin(bin: usize) -> f32 {
    2f32.powf(bin as f32 / 1023.0 * 10.0 - 10.0)
}

/// A coordinate bin as a fraction of the picture: `bin / 1024`.
pub fn coord_of_bin(bin: usize) -> f32 {
    bin as f32 / BINS as f32
}

/// The box the reference reports for a centre and size (not clamped to 0..1).
pub fn bbox(x: f32, y: f32, w: f32, h: f32) -> BBox {
    // The reference subtracts in Python floats (f64) from float32 values.
    let (x, y, w, h) = (x as f64, y as f64, w as f64, h as f64);
    BBox {
        x_min: (x - w / 2.0) as f32,
        y_min: (y - h / 2.0) as f32,
        x_max: (x + w / 2.0) as f32,
        y_max: (y + h / 2.0) as f32,
    }
}

pub fn point(x: f32, y: f32) -> Point {
    Point { x, y }
}

/// `y = W x + b` with W stored (out, in) row-major.
#[derive(Debug, Clone)]
struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
}

impl Linear {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.w
            .chunks_exact(self.n_in)
            .zip(&self.b)
            .map(|(row, b)| dot(row, x) + b)
            .collect()
    }
}

/// A dot product in eight lanes (vectorizes without `unsafe`).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2 / pi)
    0.5 * x * (1.0 + (K * (x + 0.044_715 * x * x * x)).tanh())
}

/// `fc2(gelu_tanh(fc1(x)))` (`layers.mlp`).
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let h: Vec<f32> = self.fc1.apply(x).into_iter().map(gelu_tanh).collect();
        self.fc2.apply(&h)
    }
}

/// `cat(cos(2 pi x @ w), sin(2 pi x @ w))` with `w` (len(x), n) row-major.
fn fourier(x: &[f32], w: &[f32]) -> Vec<f32> {
    let n = w.len() / x.len().max(1);
    let scaled: Vec<f32> = x
        .iter()
        .map(|v| (2.0 * std::f64::consts::PI) as f32 * v)
        .collect();
    let f: Vec<f32> = (0..n)
        .map(|j| {
            scaled
                .iter()
                .enumerate()
                .map(|(i, s)| s * w[i * n + j])
                .sum()
        })
        .collect();
    f.iter()
        .map(|v| v.cos())
        .chain(f.iter().map(|v| v.sin()))
        .collect()
}

/// A bin and how far its logit is ahead of the runner-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bin {
    pub bin: usize,
    pub margin: f32,
}

fn top(logits: &[f32]) -> Bin {
    let bin = super::llama::argmax(logits);
    let second = logits
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != bin)
        .map(|(_, v)| *v)
        .fold(f32::NEG_INFINITY, f32::max);
    Bin {
        bin,
        margin: logits[bin] - second,
    }
}

/// The region heads with the two text-model pieces the engine needs beside them.
#[derive(Debug, Clone)]
pub struct RegionHeads {
    coord_features: Vec<f32>,
    size_features: Vec<f32>,
    coord_encoder: Linear,
    size_encoder: Linear,
    coord_decoder: Mlp,
    size_decoder: Mlp,
    post_ln: (Vec<f32>, Vec<f32>),
    /// The BOS token's input embedding: the first row of the two-way prefix.
    pub bos: Vec<f32>,
    /// The text model's width.
    pub dim: usize,
}

impl RegionHeads {
    /// Loads a region GGUF written by `moonwatch model convert`.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let mut t = Weights {
            tensors: HashMap::new(),
            path,
        };
        t.tensors = read_gguf(path)
            .map_err(|e| t.fail(e))?
            .into_iter()
            .map(|(name, ne, v)| (name, (ne, v)))
            .collect();
        let heads = Self {
            coord_features: t.take("region.coord_features")?.1,
            size_features: t.take("region.size_features")?.1,
            coord_encoder: t.linear("region.coord_encoder")?,
            size_encoder: t.linear("region.size_encoder")?,
            coord_decoder: t.mlp("region.coord_decoder")?,
            size_decoder: t.mlp("region.size_decoder")?,
            post_ln: (
                t.take("text.post_ln.weight")?.1,
                t.take("text.post_ln.bias")?.1,
            ),
            bos: t.take("text.bos_embd")?.1,
            dim: 0,
        };
        let dim = heads.bos.len();
        let checks = [
            (
                heads.coord_features.len() * 2 == heads.coord_encoder.n_in,
                "coord_features vs coord_encoder",
            ),
            (
                heads.size_features.len() == heads.size_encoder.n_in,
                "size_features vs size_encoder",
            ),
            (heads.coord_encoder.b.len() == dim, "coord_encoder output"),
            (heads.size_encoder.b.len() == dim, "size_encoder output"),
            (heads.coord_decoder.fc1.n_in == dim, "coord_decoder input"),
            (
                heads.coord_decoder.fc2.b.len() == BINS,
                "coord_decoder bins",
            ),
            (heads.size_decoder.fc1.n_in == dim, "size_decoder input"),
            (
                heads.size_decoder.fc2.b.len() == 2 * BINS,
                "size_decoder bins",
            ),
            (
                heads.post_ln.0.len() == dim && heads.post_ln.1.len() == dim,
                "post_ln",
            ),
        ];
        if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(t.fail(format!("inconsistent shapes ({what})")));
        }
        Ok(Self { dim, ..heads })
    }

    /// The input embedding for a coordinate (`encode_coordinate`).
    pub fn encode_coord(&self, c: f32) -> Vec<f32> {
        self.coord_encoder
            .apply(&fourier(&[c], &self.coord_features))
    }

    /// The input embedding for a width and height (`encode_size`).
    pub fn encode_size(&self, w: f32, h: f32) -> Vec<f32> {
        self.size_encoder
            .apply(&fourier(&[w, h], &self.size_features))
    }

    /// The coordinate bin a hidden state gives (`decode_coordinate`, then argmax).
    pub fn decode_coord(&self, hidden: &[f32]) -> Bin {
        top(&self.coord_decoder.apply(hidden))
    }

    /// The width and height bins a hidden state gives (`decode_size`, then argmax).
    pub fn decode_size(&self, hidden: &[f32]) -> [Bin; 2] {
        let logits = self.size_decoder.apply(hidden);
        [top(&logits[..BINS]), top(&logits[BINS..])]
    }

    /// The text model's final LayerNorm (eps 1e-5) applied to a hidden state: what
    /// llama.cpp's `result_norm` must equal when the captured state is the right one.
    pub fn post_ln(&self, hidden: &[f32]) -> Vec<f32> {
        let n = hidden.len() as f32;
        let mean = hidden.iter().sum::<f32>() / n;
        let var = hidden.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + 1e-5).sqrt();
        hidden
            .iter()
            .zip(self.post_ln.0.iter().zip(&self.post_ln.1))
            .map(|(v, (g, b))| (v - mean) * inv * g + b)
            .collect()
    }
}

/// A region file's tensors by name, each taken out once (no copies of the 60 M weights).
struct Weights<'p> {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    path: &'p Path,
}

impl Weights<'_> {
    fn fail(&self, why: String) -> EngineError {
        EngineError::Load(format!("region heads {}: {why}", self.path.display()))
    }

    /// A tensor's ggml dimensions and values.
    fn take(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        self.tensors
            .remove(name)
            .ok_or_else(|| self.fail(format!("tensor {name} is missing")))
    }

    fn linear(&mut self, name: &str) -> Result<Linear, EngineError> {
        let (ne, w) = self.take(&format!("{name}.weight"))?;
        let (bne, b) = self.take(&format!("{name}.bias"))?;
        if ne.len() != 2 || bne != [ne[1]] {
            return Err(self.fail(format!("{name} has shape {ne:?} with bias {bne:?}")));
        }
        Ok(Linear { w, b, n_in: ne[0] })
    }

    fn mlp(&mut self, name: &str) -> Result<Mlp, EngineError> {
        Ok(Mlp {
            fc1: self.linear(&format!("{name}.fc1"))?,
            fc2: self.linear(&format!("{name}.fc2"))?,
        })
    }
}

/// Every tensor of a GGUF file as (name, ggml dimensions, values as f32).
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn read_gguf(path: &Path) -> Result<Tensors, String> {
    let r = crate::gguf::Reader::open(path, true)?;
    let arch = r.str("general.architecture");
    if arch.as_deref() != Some(ARCH) {
        return Err(format!(
            "architecture {:?}, expected {ARCH} (made by `moonwatch model convert`)",
            arch.unwrap_or_default()
        ));
    }
    r.tensors()?
        .into_iter()
        .map(|t| {
            let values = r.values(&t.name)?;
            let ne = t.ne.iter().map(|&d| d as usize).collect();
            Ok((t.name, ne, values))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_map_as_the_reference_says() {
        assert_eq!(coord_of_bin(512), 0.5);
        assert_eq!(coord_of_bin(0), 0.0);
        assert!((size_of_bin(0) - 1.0 / 1024.0).abs() < 1e-9);
        assert!((size_of_bin(1023) - 1.0).abs() < 1e-6);
        // Log scale: each bin is 10/1023 of a doubling.
        let step = (size_of_bin(601) / size_of_bin(600)).log2();
        assert!((step - 10.0 / 1023.0).abs() < 1e-5, "{step}");
        let b = bbox(0.5, 0.25, 0.2, 0.1);
        assert!(
            (b.x_min - 0.4).abs() < 1e-7 && (b.y_max - 0.3).abs() < 1e-7,
            "{b:?}"
        );
    }

    #[test]
    fn fourier_features_are_cos_then_sin_of_two_pi_x_w() {
        // w is (2, 3): f_j = 2 pi (x0 w0j + x1 w1j).
        let w = [1.0, 0.5, 0.0, 0.0, 0.25, 1.0];
        let f = fourier(&[0.25, 1.0], &w);
        let two_pi = 2.0 * std::f32::consts::PI;
        let expect = [two_pi * 0.25, two_pi * (0.125 + 0.25), two_pi * 1.0];
        for j in 0..3 {
            assert!((f[j] - expect[j].cos()).abs() < 1e-5, "{f:?}");
            assert!((f[3 + j] - expect[j].sin()).abs() < 1e-5, "{f:?}");
        }
    }

    #[test]
    fn gelu_is_the_tanh_approximation() {
        // torch.nn.functional.gelu(x, approximate="tanh") at 1.0 and -2.0.
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-2.0) - -0.045_402_3).abs() < 1e-5);
    }

    #[test]
    fn top_gives_the_first_maximum_and_its_lead() {
        let b = top(&[0.1, 0.7, 0.7, 0.2]);
        assert_eq!((b.bin, b.margin), (1, 0.0));
        let b = top(&[0.1, 0.9, 0.5]);
        assert_eq!(b.bin, 1);
        assert!((b.margin - 0.4).abs() < 1e-6);
    }
}
