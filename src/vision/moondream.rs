//! Moondream2 on llama.cpp: the production [`Vision`] implementation.
//!
//! Owns the text model, its context and the mtmd (vision) context, all on the engine
//! thread. The KV cache of the current frame's prefix (BOS + 729 image tokens) is kept:
//! every further skill on the same frame only removes the previous question tail and
//! prefills its own, so the image is encoded and prefilled once per frame.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llama_cpp_2::gguf::GgufContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::llama::{self, argmax, log_prob, Context, ContextParams};
use super::parse;
use super::prompt::{self, Prompts};
use super::region::{self, RegionHeads};
use super::{
    Answer, Answered, Cancel, Engine, EngineError, Method, PrefixTiming, Request, Response, Skill,
    SkillTiming, StopReason, Vision, YesNo,
};
use crate::config::{Config, ModelConfig};
use crate::frame::Frame;

/// Everything needed to load and run the model: the `[model]` section with the thread
/// count resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: ModelConfig,
    /// CPU threads for llama.cpp and the vision encoder (never 0).
    pub threads: u32,
    /// Generate the full token budget regardless of end-of-text and stop sequences
    /// (benchmarks, to compare decode speed with `llama-mtmd-cli --ignore-eos`).
    pub ignore_eos: bool,
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            model: c.model.clone(),
            threads: c.threads(),
            ignore_eos: false,
        }
    }

    /// Settings for a model pair with every other key at its default.
    pub fn for_files(text: &Path, mmproj: &Path, threads: u32) -> Self {
        Self {
            model: ModelConfig {
                text: text.to_owned(),
                mmproj: mmproj.to_owned(),
                ..ModelConfig::default()
            },
            threads,
            ignore_eos: false,
        }
    }
}

/// llama.cpp's backend may be initialised once per process.
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp, ggml and mtmd log through `tracing` (target `llama-cpp-2`).
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load(format!("llama.cpp backend: {e}")))
}

/// Starts the engine thread with Moondream loaded from `settings`.
pub fn start(settings: Settings) -> Result<Engine, EngineError> {
    let depth = settings.model.queue_depth as usize;
    Engine::spawn_scoped(depth, move |ready, jobs, stop| {
        let loaded = (|| {
            // Both files are checked, once, before anything is loaded.
            let text = text_model_info(&settings)?;
            let vision = projector_info(&settings)?;
            check_memory(&settings, &text, &vision)?;
            let backend = backend()?;
            let model = load_text_model(backend, &settings)?;
            Ok::<_, EngineError>((backend, model, vision))
        })();
        let (backend, model, vision) = match loaded {
            Ok(x) => x,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let md = Moondream::new(backend, &model, &settings, &vision);
        match md {
            Ok(mut md) => {
                let _ = ready.send(Ok(()));
                super::serve(&jobs, &mut md, &stop);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    })
}

/// Checks a file before llama.cpp sees it, so a wrong path or a swapped pair gets a plain
/// message instead of a loader failure. Returns the GGUF architecture.
fn inspect(path: &Path, role: &str) -> Result<GgufInfo, EngineError> {
    let fail = |why: String| EngineError::Load(format!("{role} {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut magic = [0u8; 4];
    use std::io::Read;
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| fail(format!("unreadable or too short: {e}")))?;
    if &magic != b"GGUF" {
        return Err(fail("not a GGUF file (wrong magic bytes)".into()));
    }
    let gguf = GgufContext::from_file(path)
        .ok_or_else(|| fail("corrupt or truncated GGUF header".into()))?;
    let string = |key: &str| {
        let i = gguf.find_key(key);
        (i >= 0 && gguf.kv_type(i) == llama_cpp_sys_2::GGUF_TYPE_STRING)
            .then(|| gguf.val_str(i).unwrap_or_default().to_owned())
    };
    let arch = string("general.architecture")
        .ok_or_else(|| fail("GGUF metadata lacks general.architecture".into()))?;
    let needed = tensor_data_end(path)?;
    if needed > meta.len() {
        return Err(fail(format!(
            "truncated: its tensors need {needed} bytes but the file has {}; download it again",
            meta.len()
        )));
    }
    let u32_key = |key: &str| {
        let i = gguf.find_key(key);
        (i >= 0 && gguf.kv_type(i) == llama_cpp_sys_2::GGUF_TYPE_UINT32).then(|| gguf.val_u32(i))
    };
    Ok(GgufInfo {
        name: string("general.name"),
        image_size: u32_key("clip.vision.image_size"),
        n_layer: u32_key(&format!("{arch}.block_count")),
        n_embd: u32_key(&format!("{arch}.embedding_length")),
        n_head: u32_key(&format!("{arch}.attention.head_count")),
        bytes: meta.len(),
        arch,
    })
}

/// What reference crops hold beside the files: the projector's halves and second layer
/// loaded again (`CropProjector`), every crop's features, and the projector's activations.
fn crop_bytes(mmproj: &Path, max_crops: u32) -> u64 {
    use super::crops::{PROJ_GLOBAL as CROP_PROJ_GLOBAL, PROJ_LOCAL as CROP_PROJ_LOCAL};
    let Ok(tensors) = crate::gguf::Reader::open(mmproj, false).and_then(|r| r.tensors()) else {
        return 0;
    };
    let find = |name: &str| tensors.iter().find(|t| t.name == name);
    let weights: u64 = [CROP_PROJ_GLOBAL, CROP_PROJ_LOCAL, "mm.2.weight"]
        .iter()
        .filter_map(|n| find(n))
        .map(|t| t.size as u64)
        .sum();
    let (n_in, n_hidden) = find(CROP_PROJ_GLOBAL)
        .map(|t| (t.ne[0] as u64, t.ne.get(1).copied().unwrap_or(0) as u64))
        .unwrap_or((0, 0));
    let rows = (super::crops::GRID * super::crops::GRID) as u64;
    let features = u64::from(max_crops + 1) * rows * n_in * 4;
    weights + features + 3 * rows * n_hidden * 4
}

/// What [`inspect`] reads from a GGUF header.
struct GgufInfo {
    arch: String,
    name: Option<String>,
    /// The vision encoder's input side (`clip.vision.image_size`), for projectors.
    image_size: Option<u32>,
    /// A text model's shape, where its header says it.
    n_layer: Option<u32>,
    n_embd: Option<u32>,
    n_head: Option<u32>,
    /// The file's size.
    bytes: u64,
}

/// Refuses to load what will not fit in the memory the machine or the service's cgroup
/// has free (see [`super::memory`]). Weights on a GPU are not counted against it, so the
/// check is skipped when layers are offloaded.
fn check_memory(s: &Settings, text: &GgufInfo, vision: &Projector) -> Result<(), EngineError> {
    if !s.model.memory_check || s.model.gpu_layers > 0 {
        return Ok(());
    }
    let mut bytes = text.bytes + vision.bytes;
    if s.model.crops == crate::config::CropMode::Reference {
        bytes += crop_bytes(&s.model.mmproj, s.model.max_crops);
    }
    if let Some(region) = &s.model.region {
        // Stored F16, held in F32.
        bytes += 2 * std::fs::metadata(region).map_or(0, |m| m.len());
    }
    let kv = kv_type(s.model.kv_cache());
    let kv_bytes = crate::gguf::bytes_per_value(kv);
    let load = super::memory::Load {
        file_bytes: bytes,
        n_ctx: s.model.context_size,
        kv_bytes_per_value: kv_bytes,
        n_batch: n_batch(s, vision.image_size),
        flash_attention: s.model.flash_attention_on() != Some(false),
    };
    let shape = super::memory::TextShape {
        n_layer: text.n_layer.unwrap_or(24),
        n_embd: text.n_embd.unwrap_or(2048),
        n_head: text.n_head.unwrap_or(32),
    };
    let need = super::memory::Estimate::new(&load, &shape);
    let Some(budget) = super::memory::budget(Path::new("/")) else {
        return Ok(());
    };
    tracing::debug!(?need, ?budget, "memory");
    let region = match &s.model.region {
        Some(_) => ", or leave out model.region (region heads hold about twice their file)",
        None => "",
    };
    super::memory::check(&need, &budget).map_err(|e| {
        EngineError::Load(format!(
            "{e}{region} (or model.memory_check = false to try anyway)"
        ))
    })
}

/// Where the last tensor's data ends, per the GGUF header.
fn tensor_data_end(path: &Path) -> Result<u64, EngineError> {
    crate::gguf::Reader::open(path, false)
        .map(|r| r.data_end())
        .map_err(|_| EngineError::Load(format!("{}: corrupt GGUF header", path.display())))
}

/// The text model's header, checked: not a projector, and what kind of model it is.
fn text_model_info(s: &Settings) -> Result<GgufInfo, EngineError> {
    let info = inspect(&s.model.text, "text model")?;
    let GgufInfo { arch, name, .. } = &info;
    if arch == "clip" {
        return Err(EngineError::Load(format!(
            "text model {} is a vision projector (clip); are model.text and model.mmproj swapped?",
            s.model.text.display()
        )));
    }
    if let Some(name) = name {
        if name.contains("known-answer") {
            tracing::info!(%name, "this is a known-answer test model: it runs like Moondream2 and answers everything with one chosen text");
        } else if name.contains("random") {
            tracing::info!(%name, "this is a random-weight test model: it runs like Moondream2 but its answers are gibberish");
        }
    }
    if arch != "phi2" {
        tracing::warn!(%arch, "text model is not phi2; Moondream2's prompt format may not fit it");
    }
    Ok(info)
}

/// What the engine needs from the vision projector's header.
struct Projector {
    /// The encoder's input side (`clip.vision.image_size`).
    image_size: u32,
    /// The file's size.
    bytes: u64,
}

/// The vision projector's header, checked: a `clip` file with a usable input size.
fn projector_info(s: &Settings) -> Result<Projector, EngineError> {
    let info = inspect(&s.model.mmproj, "vision projector")?;
    if info.arch != "clip" {
        return Err(EngineError::Load(format!(
            "vision projector {} has architecture {}, expected clip; are model.text and model.mmproj swapped?",
            s.model.mmproj.display(),
            info.arch
        )));
    }
    let image_size = info
        .image_size
        .filter(|&n| (14..=4096).contains(&n))
        .ok_or_else(|| {
            EngineError::Load(format!(
                "vision projector {} lacks a usable clip.vision.image_size",
                s.model.mmproj.display()
            ))
        })?;
    Ok(Projector {
        image_size,
        bytes: info.bytes,
    })
}

/// llama.cpp's element type for a KV cache kind.
fn kv_type(kind: crate::config::KvCacheKind) -> llama_cpp_sys_2::ggml_type {
    match kind {
        crate::config::KvCacheKind::F16 | crate::config::KvCacheKind::Auto => {
            llama_cpp_sys_2::GGML_TYPE_F16
        }
        crate::config::KvCacheKind::F32 => llama_cpp_sys_2::GGML_TYPE_F32,
        crate::config::KvCacheKind::Q8_0 => llama_cpp_sys_2::GGML_TYPE_Q8_0,
    }
}

/// Loads the text model [`text_model_info`] checked.
fn load_text_model(backend: &LlamaBackend, s: &Settings) -> Result<LlamaModel, EngineError> {
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(s.model.gpu_layers)
        .with_use_mmap(s.model.mmap);
    LlamaModel::load_from_file(backend, &s.model.text, &params).map_err(|e| {
        EngineError::Load(format!(
            "text model {}: llama.cpp could not load it ({e}); the file may be truncated or corrupt",
            s.model.text.display()
        ))
    })
}

/// The context's batch: the configured one, or with region heads at least the two-way
/// prefix, which is decoded as one batch (llama.cpp requires non-causal batches to fit one
/// ubatch): BOS and every image token of an `image_size` square encoder (14-pixel patches).
fn n_batch(s: &Settings, image_size: u32) -> u32 {
    let patches = (image_size / 14) * (image_size / 14);
    if s.model.region.is_some() {
        s.model.batch_size.max(1 + patches)
    } else {
        s.model.batch_size
    }
}

/// The frame whose prefix the KV cache holds.
#[derive(Debug, Clone, Copy)]
struct CachedPrefix {
    key: u64,
    /// Positions used by the prefix; question tails start here.
    n_past: i32,
}

/// What generation produced for one prompt.
struct Generated {
    raw: String,
    stop: StopReason,
    /// Geometric mean of the probabilities of the tokens chosen (the end of the text
    /// included when the model chose it).
    confidence: f32,
}

/// Moondream2 loaded and ready: the model's context, the vision context and the cache state.
pub struct Moondream<'m> {
    model: &'m LlamaModel,
    ctx: Context<'m>,
    vision: llama::Vision,
    /// Region heads (2025-04-14): real detect and point, and the two-way image prefix.
    /// Shared so a detection can hold them while it drives the context (`&mut self`).
    region: Option<Arc<RegionHeads>>,
    n_batch: i32,
    n_ctx: i32,
    max_tokens: u32,
    ignore_eos: bool,
    prompts: Prompts,
    yes_no_suffix: String,
    yes_no_min_mass: f32,
    /// The vision encoder's input side: frames are stretched to this square.
    image_size: u32,
    /// GPT-2's tokenizer when the model's vocabulary is GPT-2's (Moondream2's is);
    /// otherwise llama.cpp tokenizes.
    gpt2: Option<&'static tiktoken_rs::CoreBPE>,
    /// Token ids whose probabilities count as "yes" / "no" for the first answer token.
    yes_ids: Vec<usize>,
    no_ids: Vec<usize>,
    cached: Option<CachedPrefix>,
    /// `model.crops = "reference"`: the projector as trained and the most local crops.
    crops: Option<(llama::CropProjector, u32)>,
}

impl std::fmt::Debug for Moondream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moondream")
            .field("n_ctx", &self.n_ctx)
            .field("cached", &self.cached)
            .finish_non_exhaustive()
    }
}

impl<'m> Moondream<'m> {
    /// Creates the contexts for a loaded text model and loads the vision projector
    /// ([`projector_info`] checked).
    fn new(
        _backend: &LlamaBackend, // proof that llama.cpp is initialised
        model: &'m LlamaModel,
        s: &Settings,
        vision: &Projector,
    ) -> Result<Self, EngineError> {
        let image_size = vision.image_size;
        let threads = s.threads.max(1) as i32;
        let n_ctx = s.model.context_size;
        if n_ctx > model.n_ctx_train() {
            tracing::warn!(
                n_ctx,
                trained = model.n_ctx_train(),
                "context larger than the model was trained for"
            );
        }
        let kv_type = kv_type(s.model.kv_cache());
        let region = match &s.model.region {
            Some(path) => {
                // Missing, truncated or foreign files get the same plain messages as the
                // model files; RegionHeads::load checks the architecture and shapes.
                inspect(path, "region heads")?;
                Some(Arc::new(RegionHeads::load(path)?))
            }
            None => None,
        };
        if let Some(r) = &region {
            if r.dim != model.n_embd() as usize {
                return Err(EngineError::Load(format!(
                    "region heads are {} wide but the text model is {}: they come from different checkpoints",
                    r.dim,
                    model.n_embd()
                )));
            }
        }
        let n_batch = n_batch(s, image_size);
        // The last block's output (the heads read it) and the output norm's result (to
        // check that it is the right tensor).
        let capture = if region.is_some() {
            vec![
                format!("l_out-{}", model.n_layer() - 1),
                "result_norm".to_owned(),
            ]
        } else {
            Vec::new()
        };
        let flash_attention = s.model.flash_attention_on();
        if flash_attention == Some(true) && s.model.kv_cache() == crate::config::KvCacheKind::F32 {
            tracing::warn!(
                "model.kv_cache_type = \"f32\" with model.flash_attention = \"on\": llama.cpp's \
                 flash attention computes from F16 copies of K and V, so attention is F16 all \
                 the same (twice the memory for nothing); set flash_attention = \"auto\" or \
                 \"off\" for F32 attention"
            );
        }
        let params = ContextParams {
            n_ctx,
            n_batch,
            threads,
            kv_type,
            flash_attention,
        };
        let mut ctx = Context::new(model, params, &capture)?;
        // Warm up as llama.cpp's own tools do (one decode, then forget it), so the first
        // request does not pay for first-touch allocations and weight repacking. With
        // region heads, the same decode checks the captured hidden state.
        let bos = model.vocab().bos().0;
        ctx.set_capture(region.is_some());
        ctx.decode_tokens(&[bos], 0, 1)
            .map_err(|e| EngineError::Load(format!("warm-up decode failed: {e}")))?;
        if let Some(r) = &region {
            check_capture(&ctx, r)?;
        }
        ctx.set_capture(false);
        ctx.clear();
        let reference_crops = s.model.crops == crate::config::CropMode::Reference;
        let vision = llama::Vision::new(
            &s.model.mmproj,
            model,
            s.model.vision_on_gpu,
            threads,
            flash_attention,
            reference_crops,
        )?;
        let crops = if reference_crops {
            if image_size != super::crops::CROP {
                return Err(EngineError::Load(format!(
                    "model.crops = \"reference\" needs a {0}x{0} encoder; {1} takes {image_size}x{image_size}",
                    super::crops::CROP,
                    s.model.mmproj.display()
                )));
            }
            let projector =
                llama::CropProjector::load(&s.model.mmproj, s.model.vision_on_gpu, threads)
                    .map_err(|e| EngineError::Load(format!("model.crops = \"reference\": {e}")))?;
            Some((projector, s.model.max_crops))
        } else {
            None
        };
        let vocab = model.vocab();
        let prompts = prompt::prompts(s.model.revision);
        // GPT-2's rules where the model's vocabulary is GPT-2's: every token of the
        // template must read the same in the model as in GPT-2.
        let probe = prompts.tail(
            &Skill::Caption {
                length: super::CaptionLength::Normal,
            },
            "",
        );
        let gpt2 = super::gpt2::bpe().filter(|bpe| {
            let same = model.n_vocab() >= 50_257
                && bpe.encode_ordinary(&probe).iter().all(|&id| {
                    bpe.decode_bytes(&[id]).ok()
                        == Some(vocab.token_to_piece(LlamaToken(id as i32), false, None))
                });
            if !same {
                tracing::warn!(
                    "the text model's vocabulary is not GPT-2's; llama.cpp tokenizes questions"
                );
            }
            same
        });
        let single = |words: &[&str]| -> Vec<usize> {
            let mut ids: Vec<usize> = words
                .iter()
                .flat_map(|w| [w.to_string(), format!(" {w}")])
                .filter_map(|w| {
                    let ids: Vec<i32> = match gpt2 {
                        Some(bpe) => bpe
                            .encode_ordinary(&w)
                            .into_iter()
                            .map(|t| t as i32)
                            .collect(),
                        None => vocab
                            .tokenize(w.as_bytes(), false, false)
                            .iter()
                            .map(|t| t.0)
                            .collect(),
                    };
                    match ids.as_slice() {
                        [t] => Some(*t as usize),
                        _ => None,
                    }
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let yes_ids = single(&["yes", "Yes", "YES"]);
        let no_ids = single(&["no", "No", "NO"]);
        tracing::info!(
            text = %s.model.text.display(),
            mmproj = %s.model.mmproj.display(),
            threads,
            n_ctx,
            image_size,
            "Moondream2 loaded"
        );
        Ok(Self {
            model,
            ctx,
            vision,
            region,
            n_batch: n_batch as i32,
            n_ctx: n_ctx as i32,
            max_tokens: s.model.max_tokens,
            ignore_eos: s.ignore_eos,
            prompts,
            yes_no_suffix: s.model.yes_no_suffix.clone(),
            yes_no_min_mass: s.model.yes_no_min_mass,
            image_size,
            gpt2,
            yes_ids,
            no_ids,
            cached: None,
            crops,
        })
    }

    /// Tokens of a prompt tail, split by GPT-2's rules as Moondream's tokenizer does
    /// (special tokens are never parsed from text).
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        match self.gpt2 {
            Some(bpe) => bpe
                .encode_ordinary(text)
                .into_iter()
                .map(|t| LlamaToken(t as i32))
                .collect(),
            None => self.model.vocab().tokenize(text.as_bytes(), false, false),
        }
    }

    /// Makes the KV cache hold `frame`'s prefix, encoding it only when it is not there yet.
    ///
    /// The prefix is BOS then the image embeddings. With region heads (2025-04-14) it is
    /// decoded as one batch with attention both ways, as the reference's mask has it
    /// (`attn_mask[:730, :730] = 1`); otherwise causally, as llama.cpp's mtmd does.
    fn ensure_prefix(
        &mut self,
        frame: &Frame,
    ) -> Result<(CachedPrefix, PrefixTiming), EngineError> {
        if let Some(c) = self.cached.filter(|c| c.key == frame.key) {
            return Ok((
                c,
                PrefixTiming {
                    reused: true,
                    tokens: c.n_past as u32,
                    ..Default::default()
                },
            ));
        }
        self.cached = None;
        self.ctx.clear();
        let side = self.image_size;
        let (image, resize_ms, image_encode_ms, n_crops) = self.image_embeddings(frame)?;
        let n_image = (image.len() / self.model.n_embd() as usize) as i32;
        if n_image + 1 + 17 > self.n_ctx {
            return Err(EngineError::Image(format!(
                "the image takes {} positions; model.context_size {} leaves no room for a question",
                n_image + 1,
                self.n_ctx
            )));
        }
        let t = Instant::now();
        match &self.region {
            Some(r) => {
                let mut prefix = Vec::with_capacity(r.bos.len() + image.len());
                prefix.extend_from_slice(&r.bos);
                prefix.extend_from_slice(&image);
                self.ctx.set_causal(false);
                let done = self.ctx.decode_embeddings(&prefix, 0);
                self.ctx.set_causal(true);
                done.map_err(|e| EngineError::Inference(format!("image prefix: {e}")))?;
            }
            None => {
                // Moondream's prompt starts with <|endoftext|> whether or not the vocab
                // adds BOS.
                let bos = self.model.vocab().bos().0;
                self.ctx.decode_tokens(&[bos], 0, 1)?;
                let width = self.model.n_embd() as usize * self.n_batch.max(1) as usize;
                for (i, rows) in image.chunks(width).enumerate() {
                    self.ctx
                        .decode_embeddings(rows, 1 + i as i32 * self.n_batch)
                        .map_err(|e| EngineError::Inference(format!("image prefix: {e}")))?;
                }
            }
        }
        self.ctx.synchronize();
        let n_past = n_image + 1;
        let cached = CachedPrefix {
            key: frame.key,
            n_past,
        };
        self.cached = Some(cached);
        Ok((
            cached,
            PrefixTiming {
                reused: false,
                input_width: side,
                input_height: side,
                crops: n_crops,
                resize_ms,
                image_encode_ms,
                image_prefill_ms: ms(t),
                tokens: n_past as u32,
            },
        ))
    }

    /// The image embeddings of `frame`, with the time to resize it and to encode it, and
    /// the crops encoded. One crop: the frame stretched to the encoder's square (or, with
    /// reference crops, resized as the reference does), through mtmd's folded projector.
    /// Several: each crop's features before the projector, the local ones stitched and
    /// pooled, then the projector as trained.
    fn image_embeddings(
        &mut self,
        frame: &Frame,
    ) -> Result<(Vec<f32>, f64, f64, u32), EngineError> {
        let side = self.image_size;
        let t = Instant::now();
        let Some((projector, max_crops)) = &self.crops else {
            // Stretched to the encoder's square as the reference does; mtmd takes a
            // picture of exactly that size unchanged (no letterbox), so boxes in 0..1 of
            // what the model saw are 0..1 of the frame.
            let pixels = frame.stretched(side, side);
            let resize_ms = ms(t);
            let t = Instant::now();
            let image = self.vision.encode(&pixels, side)?;
            return Ok((image, resize_ms, ms(t), 1));
        };
        let cut = super::crops::overlap_crops(frame, *max_crops);
        let resize_ms = ms(t);
        let t = Instant::now();
        let image = encode_crops(&mut self.vision, projector, &cut)?;
        Ok((image, resize_ms, ms(t), cut.pictures.len() as u32))
    }

    /// Replaces the previous question's tail after the image prefix with `tokens`, and
    /// prefills them; the logits of the last one are then current. Returns the position
    /// after them.
    fn start_tail_tokens(
        &mut self,
        prefix: CachedPrefix,
        tokens: &[i32],
        timing: &mut SkillTiming,
    ) -> Result<i32, EngineError> {
        self.ctx.clear_from(prefix.n_past);
        let end = prefix.n_past + tokens.len() as i32;
        if end >= self.n_ctx {
            return Err(EngineError::Invalid(format!(
                "the question takes {} tokens; with the image that exceeds model.context_size {}",
                tokens.len(),
                self.n_ctx
            )));
        }
        let t = Instant::now();
        self.ctx
            .decode_tokens(tokens, prefix.n_past, self.n_batch.max(1) as usize)
            .map_err(|e| EngineError::Inference(format!("question prefill: {e}")))?;
        timing.prompt_tokens += tokens.len() as u32;
        timing.prefill_ms += ms(t);
        Ok(end)
    }

    /// [`Self::start_tail_tokens`] for a text tail.
    fn start_tail(
        &mut self,
        prefix: CachedPrefix,
        tail: &str,
        timing: &mut SkillTiming,
    ) -> Result<i32, EngineError> {
        let tokens: Vec<i32> = self.tokenize(tail).iter().map(|t| t.0).collect();
        self.start_tail_tokens(prefix, &tokens, timing)
    }

    /// Asks a yes/no tail and reads the first answer token's probabilities.
    fn ask_yes_no(
        &mut self,
        prefix: CachedPrefix,
        tail: &str,
        started: Instant,
        timing: &mut SkillTiming,
    ) -> Result<YesNo, EngineError> {
        self.start_tail(prefix, tail, timing)?;
        let logits = self.ctx.logits();
        let yn = parse::yes_no(logits, &self.yes_ids, &self.no_ids, self.yes_no_min_mass);
        timing.first_token_ms = ms(started);
        Ok(yn)
    }

    /// Generates greedily after `tail` until end-of-text, a stop sequence, the budget or
    /// a full context, whichever comes first.
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &mut self,
        prefix: CachedPrefix,
        tail: &str,
        budget: u32,
        started: Instant,
        timing: &mut SkillTiming,
        stop: &Cancel,
        cancel: &Cancel,
    ) -> Result<Generated, EngineError> {
        let mut pos = self.start_tail(prefix, tail, timing)?;
        let mut bytes = Vec::new();
        let vocab = self.model.vocab();
        let mut first = true;
        let (mut log_p, mut chosen) = (0.0f64, 0u32);
        let reason = loop {
            if stop.is_cancelled() || cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            if timing.generated_tokens >= budget {
                break StopReason::Budget;
            }
            let logits = self.ctx.logits();
            let best = argmax(logits);
            log_p += f64::from(log_prob(logits, best));
            chosen += 1;
            let token = LlamaToken(best as i32);
            if first {
                timing.first_token_ms = ms(started);
                first = false;
            }
            if vocab.is_eog(token) && !self.ignore_eos {
                break StopReason::EndOfText;
            }
            timing.generated_tokens += 1;
            bytes.extend(vocab.token_to_piece(token, false, None));
            if !self.ignore_eos && self.prompts.reached_stop(&String::from_utf8_lossy(&bytes)) {
                break StopReason::StopSequence;
            }
            if timing.generated_tokens >= budget {
                break StopReason::Budget;
            }
            if pos >= self.n_ctx {
                break StopReason::ContextFull;
            }
            let t = Instant::now();
            self.ctx.decode_tokens(&[token.0], pos, 1)?;
            timing.decode_ms += ms(t);
            timing.decode_steps += 1;
            pos += 1;
        };
        timing.stop_reason = Some(reason);
        Ok(Generated {
            raw: String::from_utf8_lossy(&bytes).into_owned(),
            stop: reason,
            confidence: if chosen == 0 {
                0.0
            } else {
                (log_p / f64::from(chosen)).exp() as f32
            },
        })
    }

    /// Runs one skill on the cached prefix.
    fn run_skill(
        &mut self,
        skill: &Skill,
        prefix: CachedPrefix,
        started: Instant,
        stop: &Cancel,
        cancel: &Cancel,
    ) -> Result<Answered, EngineError> {
        let mut timing = SkillTiming::default();
        let suffix = self.yes_no_suffix.clone();
        let budget = prompt::max_tokens(skill, self.max_tokens);
        let answer = match skill {
            Skill::YesNo { .. } => {
                let tail = self.prompts.tail(skill, &suffix);
                let yn = self.ask_yes_no(prefix, &tail, started, &mut timing)?;
                Answer::YesNo {
                    answer: yn.answer,
                    confidence: yn.confidence,
                    p_yes: yn.p_yes,
                    p_no: yn.p_no,
                }
            }
            Skill::Caption { .. } | Skill::Query { .. } => {
                let tail = self.prompts.tail(skill, &suffix);
                let g = self.generate(prefix, &tail, budget, started, &mut timing, stop, cancel)?;
                let text = self.prompts.clean_answer(&g.raw).to_owned();
                if g.stop == StopReason::Budget {
                    tracing::debug!(budget, "answer cut at the token budget");
                }
                match skill {
                    Skill::Caption { .. } => Answer::Caption { caption: text },
                    _ => Answer::Query {
                        answer: text,
                        confidence: g.confidence,
                    },
                }
            }
            Skill::Detect { object } | Skill::Point { object } if self.region.is_some() => {
                let with_size = matches!(skill, Skill::Detect { .. });
                let found = self.locate(
                    prefix,
                    object,
                    with_size,
                    started,
                    &mut timing,
                    stop,
                    cancel,
                )?;
                let present = Some(!found.points.is_empty());
                if with_size {
                    Answer::Detect {
                        present,
                        confidence: found.confidence,
                        objects: found.boxes,
                        method: Method::RegionHeads,
                        raw: String::new(),
                        parsed: true,
                    }
                } else {
                    Answer::Point {
                        present,
                        confidence: found.confidence,
                        points: found.points,
                        method: Method::RegionHeads,
                        raw: String::new(),
                        parsed: true,
                    }
                }
            }
            Skill::Detect { object } | Skill::Point { object } => {
                // This checkpoint gives a box even for what is not there: ask first.
                let tail = self.prompts.presence_tail(object, &suffix);
                let presence = self.ask_yes_no(prefix, &tail, started, &mut timing)?;
                let (objects, raw, parsed) = if presence.answer == Some(true) {
                    let tail = self.prompts.tail(skill, &suffix);
                    let g =
                        self.generate(prefix, &tail, budget, started, &mut timing, stop, cancel)?;
                    let raw = self.prompts.clean_answer(&g.raw).to_owned();
                    let objects = parse::boxes(&raw);
                    let parsed = !objects.is_empty();
                    (objects, raw, parsed)
                } else {
                    (Vec::new(), String::new(), true)
                };
                match skill {
                    Skill::Detect { .. } => Answer::Detect {
                        present: presence.answer,
                        confidence: presence.confidence,
                        objects,
                        method: Method::PromptedBoxes,
                        raw,
                        parsed,
                    },
                    _ => Answer::Point {
                        present: presence.answer,
                        confidence: presence.confidence,
                        points: objects.iter().map(|b| b.center()).collect(),
                        method: Method::BoxCenters,
                        raw,
                        parsed,
                    },
                }
            }
        };
        Ok(Answered { answer, timing })
    }
}

/// What the region heads found for one object.
#[derive(Debug, Default)]
struct Located {
    /// Centres, in order.
    points: Vec<parse::Point>,
    /// Boxes (detect only), in order.
    boxes: Vec<parse::BBox>,
    /// Probability of the first decision (end-of-text or not) that was taken.
    confidence: f32,
}

impl Moondream<'_> {
    /// Decodes one input embedding at `pos`; its last hidden state (before the final
    /// norm) is returned and its logits become current.
    fn step(
        &mut self,
        embd: &[f32],
        pos: i32,
        timing: &mut SkillTiming,
    ) -> Result<Vec<f32>, EngineError> {
        self.ctx.decode_embeddings(embd, pos)?;
        timing.decode_steps += 1;
        timing.generated_tokens += 1;
        self.hidden()
    }

    fn hidden(&self) -> Result<Vec<f32>, EngineError> {
        self.ctx.captured(0).map(<[f32]>::to_vec).ok_or_else(|| {
            EngineError::Inference("the text model's last hidden state was not captured".into())
        })
    }

    /// Moondream's `_generate_points`: the detect or point prompt, then per object the
    /// x and y coordinates (and the size, for boxes) from the region heads, each fed back
    /// as an input embedding, until the model says end-of-text or 50 objects are found.
    #[allow(clippy::too_many_arguments)]
    fn locate(
        &mut self,
        prefix: CachedPrefix,
        object: &str,
        with_size: bool,
        started: Instant,
        timing: &mut SkillTiming,
        stop: &Cancel,
        cancel: &Cancel,
    ) -> Result<Located, EngineError> {
        let Some(heads) = self.region.clone() else {
            return Ok(Located::default());
        };
        let mut prompt = Vec::with_capacity(8);
        prompt.extend(if with_size {
            region::DETECT_PREFIX
        } else {
            region::POINT_PREFIX
        });
        prompt.extend(
            self.tokenize(&format!(" {}", object.trim()))
                .iter()
                .map(|t| t.0),
        );
        prompt.extend(region::SUFFIX);
        self.ctx.set_capture(true);
        let found = (|| {
            let mut pos = self.start_tail_tokens(prefix, &prompt, timing)?;
            let mut hidden = self.hidden()?;
            let mut next = argmax(self.ctx.logits()) as i32;
            timing.first_token_ms = ms(started);
            let confidence = eos_probability(self.ctx.logits());
            let mut found = Located {
                confidence: if next == region::EOS {
                    confidence
                } else {
                    1.0 - confidence
                },
                ..Located::default()
            };
            // The loop's time, heads included, is booked as decode time.
            let looping = Instant::now();
            let mut full = false;
            while next != region::EOS && found.points.len() < region::MAX_OBJECTS {
                if stop.is_cancelled() || cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                // An object takes up to three positions; keep what was found when the
                // context cannot hold another.
                if pos + 3 > self.n_ctx {
                    full = true;
                    break;
                }
                let x = region::coord_of_bin(heads.decode_coord(&hidden).bin);
                hidden = self.step(&heads.encode_coord(x), pos, timing)?;
                pos += 1;
                let y = region::coord_of_bin(heads.decode_coord(&hidden).bin);
                let mut feed = heads.encode_coord(y);
                if with_size {
                    hidden = self.step(&feed, pos, timing)?;
                    pos += 1;
                    let [w, h] = heads.decode_size(&hidden);
                    let (w, h) = (region::size_of_bin(w.bin), region::size_of_bin(h.bin));
                    found.boxes.push(region::bbox(x, y, w, h));
                    feed = heads.encode_size(w, h);
                }
                found.points.push(region::point(x, y));
                hidden = self.step(&feed, pos, timing)?;
                pos += 1;
                next = argmax(self.ctx.logits()) as i32;
            }
            timing.decode_ms += ms(looping);
            timing.stop_reason = Some(if full {
                StopReason::ContextFull
            } else if next == region::EOS {
                StopReason::EndOfText
            } else {
                StopReason::Budget
            });
            Ok(found)
        })();
        self.ctx.set_capture(false);
        found
    }
}

/// Softmax probability of end-of-text among `logits`.
fn eos_probability(logits: &[f32]) -> f32 {
    let Some(&eos) = logits.get(region::EOS as usize) else {
        return 0.0;
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|v| f64::from((v - max).exp())).sum();
    ((eos - max).exp() as f64 / sum) as f32
}

/// Checks, on the warm-up decode, that the captured tensor is the last block's output:
/// the output norm applied to it must give llama.cpp's own `result_norm`. A llama.cpp
/// upgrade that renames or moves the node fails here instead of feeding the heads the
/// wrong numbers.
fn check_capture(ctx: &Context<'_>, heads: &RegionHeads) -> Result<(), EngineError> {
    let fail = |why: String| {
        EngineError::Load(format!(
            "region heads: {why}; this llama.cpp does not expose the hidden state they read"
        ))
    };
    let hidden = ctx
        .captured(0)
        .ok_or_else(|| fail("the last block's output (l_out) was not computed".into()))?;
    let normed = ctx
        .captured(1)
        .ok_or_else(|| fail("the output norm (result_norm) was not computed".into()))?;
    let ours = heads.post_ln(hidden);
    let scale = normed.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = ours
        .iter()
        .zip(normed)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    if ours.len() != normed.len() || worst > 1e-3 * scale {
        return Err(fail(format!(
            "the output norm of the captured state differs from llama.cpp's by {worst} \
             (the region file's text norm may come from another checkpoint)"
        )));
    }
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl Vision for Moondream<'_> {
    fn answer(&mut self, req: &Request, stop: &Cancel) -> Result<Response, EngineError> {
        let started = Instant::now();
        let (prefix, prefix_timing) = self.ensure_prefix(&req.frame)?;
        let mut answers = Vec::with_capacity(req.skills.len());
        for skill in &req.skills {
            // Each skill's first-token time counts from when its own work began, plus the
            // prefix cost for the skill that paid it.
            let skill_start = if answers.is_empty() {
                started
            } else {
                Instant::now()
            };
            answers.push(self.run_skill(skill, prefix, skill_start, stop, &req.cancel)?);
        }
        Ok(Response {
            frame_key: format!("{:016x}", req.frame.key),
            prefix: prefix_timing,
            answers,
            queued_ms: 0.0,
            total_ms: ms(started),
        })
    }
}

/// The image embeddings Moondream 2025's reference makes of a picture cut into `cut`
/// (`model.crops = "reference"`): one crop through mtmd's folded projector when the
/// picture needs no more; otherwise each crop's features before the projector, the local
/// ones stitched and pooled, then `projector` (the first layer's two halves as trained).
pub fn encode_crops(
    vision: &mut llama::Vision,
    projector: &llama::CropProjector,
    cut: &super::crops::Crops,
) -> Result<Vec<f32>, EngineError> {
    use super::crops::{stitch_and_pool, CROP, GRID};
    if cut.is_single() {
        return vision.encode(&cut.pictures[0], CROP);
    }
    let mut features = Vec::with_capacity(cut.pictures.len());
    let mut width = 0;
    for picture in &cut.pictures {
        let (f, w) = vision.features(picture, CROP)?;
        if w == 0 || f.len() != GRID * GRID * w {
            return Err(EngineError::Inference(format!(
                "the encoder gave {} features of width {w} for a crop",
                f.len()
            )));
        }
        width = w;
        features.push(f);
    }
    let global = features.remove(0);
    let pooled = stitch_and_pool(&features, cut.tiling, width);
    projector
        .run(&global, &pooled, GRID * GRID)
        .map_err(EngineError::Inference)
}
