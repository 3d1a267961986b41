//! Moondream2 on llama.cpp: the production [`Vision`] implementation.
//!
//! Owns the text model, its context and the mtmd (vision) context, all on the engine
//! thread. The KV cache of the current frame's prefix (BOS + 729 image tokens) is kept:
//! every further skill on the same frame only removes the previous question tail and
//! prefills its own, so the image is encoded and prefilled once per frame.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::gguf::GgufContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{
    mtmd_default_marker, MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputText,
};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::parse;
use super::prompt::{self, Prompts};
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
            let backend = backend()?;
            let model = load_text_model(backend, &settings)?;
            Ok::<_, EngineError>((backend, model))
        })();
        let (backend, model) = match loaded {
            Ok(x) => x,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let md = Moondream::new(backend, &model, &settings);
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
    let image_size = {
        let i = gguf.find_key("clip.vision.image_size");
        (i >= 0 && gguf.kv_type(i) == llama_cpp_sys_2::GGUF_TYPE_UINT32).then(|| gguf.val_u32(i))
    };
    Ok(GgufInfo {
        arch,
        name: string("general.name"),
        image_size,
    })
}

/// What [`inspect`] reads from a GGUF header.
struct GgufInfo {
    arch: String,
    name: Option<String>,
    /// The vision encoder's input side (`clip.vision.image_size`), for projectors.
    image_size: Option<u32>,
}

/// Where the last tensor's data ends, per the GGUF header.
fn tensor_data_end(path: &Path) -> Result<u64, EngineError> {
    use llama_cpp_sys_2 as sys;
    let c_path = CString::new(path.to_string_lossy().as_bytes())
        .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: metadata-only read of a file already checked to parse; freed below.
    unsafe {
        let ctx = sys::gguf_init_from_file(c_path.as_ptr(), params);
        if ctx.is_null() {
            return Err(EngineError::Load(format!(
                "{}: corrupt GGUF header",
                path.display()
            )));
        }
        let base = sys::gguf_get_data_offset(ctx) as u64;
        let end = (0..sys::gguf_get_n_tensors(ctx))
            .map(|i| {
                base + sys::gguf_get_tensor_offset(ctx, i) as u64
                    + sys::gguf_get_tensor_size(ctx, i) as u64
            })
            .max()
            .unwrap_or(base);
        sys::gguf_free(ctx);
        Ok(end)
    }
}

fn load_text_model(backend: &LlamaBackend, s: &Settings) -> Result<LlamaModel, EngineError> {
    let GgufInfo { arch, name, .. } = inspect(&s.model.text, "text model")?;
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

/// The frame whose prefix the KV cache holds.
#[derive(Debug, Clone, Copy)]
struct CachedPrefix {
    key: u64,
    /// Positions used by the prefix; question tails start here.
    n_past: i32,
}

/// GPT-2's byte-level BPE exactly as Moondream was trained with (`r50k_base`), built once.
fn gpt2() -> Option<&'static tiktoken_rs::CoreBPE> {
    static GPT2: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
    GPT2.get_or_init(|| match tiktoken_rs::r50k_base() {
        Ok(bpe) => Some(bpe),
        Err(e) => {
            tracing::warn!("GPT-2 tokenizer unavailable ({e}); using llama.cpp's");
            None
        }
    })
    .as_ref()
}

/// `text` as GPT-2 token ids, split by GPT-2's own rules (what Moondream's tokenizer
/// does for user text); `None` if the tokenizer could not be built.
pub fn gpt2_ids(text: &str) -> Option<Vec<u32>> {
    gpt2().map(|bpe| bpe.encode_ordinary(text))
}

/// The bytes of one GPT-2 token.
pub fn gpt2_piece(id: u32) -> Option<Vec<u8>> {
    gpt2().and_then(|bpe| bpe.decode_bytes(&[id]).ok())
}

/// What generation produced for one prompt.
struct Generated {
    raw: String,
    stop: StopReason,
}

/// Moondream2 loaded and ready: the model's context, the vision context and the cache state.
pub struct Moondream<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    mtmd: MtmdContext,
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
    /// Creates the contexts for a loaded text model and loads the vision projector.
    pub fn new(
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        s: &Settings,
    ) -> Result<Self, EngineError> {
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
        let threads = s.threads.max(1) as i32;
        let n_ctx = s.model.context_size;
        if n_ctx > model.n_ctx_train() {
            tracing::warn!(
                n_ctx,
                trained = model.n_ctx_train(),
                "context larger than the model was trained for"
            );
        }
        let kv = match s.model.kv_cache_type {
            crate::config::KvCacheKind::F16 => KvCacheType::F16,
            crate::config::KvCacheKind::Q8_0 => KvCacheType::Q8_0,
        };
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(s.model.batch_size)
            .with_n_ubatch(s.model.batch_size)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_type_k(kv)
            .with_type_v(kv)
            .with_no_perf(false);
        let mut ctx = model
            .new_context(backend, params)
            .map_err(|e| EngineError::Load(format!("cannot create llama.cpp context: {e}")))?;
        // Warm up as llama.cpp's own tools do (one decode, then forget it), so the first
        // request does not pay for first-touch allocations and weight repacking.
        let mut batch = LlamaBatch::new(1, 1);
        batch
            .add(model.vocab().bos(), 0, &[0], true)
            .map_err(|e| e.to_string())
            .and_then(|()| ctx.decode(&mut batch).map_err(|e| e.to_string()))
            .map_err(|e| EngineError::Load(format!("warm-up decode failed: {e}")))?;
        ctx.clear_kv_cache();
        let mparams = MtmdContextParams {
            use_gpu: s.model.vision_on_gpu,
            print_timings: false,
            n_threads: threads,
            media_marker: CString::new(mtmd_default_marker())
                .map_err(|e| EngineError::Load(e.to_string()))?,
            image_min_tokens: -1,
            image_max_tokens: -1,
        };
        let mmproj = s.model.mmproj.to_str().ok_or_else(|| {
            EngineError::Load(format!(
                "vision projector path {} is not UTF-8",
                s.model.mmproj.display()
            ))
        })?;
        let mtmd = MtmdContext::init_from_file(mmproj, model, &mparams).map_err(|e| {
            EngineError::Load(format!(
                "vision projector {}: llama.cpp could not load it ({e}); it may be truncated, corrupt, or not match the text model",
                s.model.mmproj.display()
            ))
        })?;
        if !mtmd.support_vision() {
            return Err(EngineError::Load(format!(
                "vision projector {} has no vision encoder",
                s.model.mmproj.display()
            )));
        }
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
        let gpt2 = gpt2().filter(|bpe| {
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
            mtmd,
            n_batch: s.model.batch_size as i32,
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
        self.ctx.clear_kv_cache();
        // Stretched to the encoder's square as the reference does; mtmd takes a picture
        // of exactly that size unchanged (no letterbox), so boxes in 0..1 of what the
        // model saw are 0..1 of the frame.
        let side = self.image_size;
        let t = Instant::now();
        let pixels = frame.stretched(side, side);
        let resize_ms = ms(t);
        let bitmap = MtmdBitmap::from_image_data(side, side, &pixels)
            .map_err(|e| EngineError::Image(e.to_string()))?;
        // The image chunk alone: BOS is decoded separately below, so that the timings
        // split cleanly into encode and prefill.
        let chunks = self
            .mtmd
            .tokenize(
                MtmdInputText {
                    text: mtmd_default_marker().to_owned(),
                    add_special: false,
                    parse_special: true,
                },
                &[&bitmap],
            )
            .map_err(|e| EngineError::Image(format!("preprocessing failed: {e}")))?;
        if chunks.total_positions() + 17 > self.n_ctx {
            return Err(EngineError::Image(format!(
                "the image takes {} positions; model.context_size {} leaves no room for a question",
                chunks.total_positions(),
                self.n_ctx
            )));
        }
        // Moondream's prompt starts with <|endoftext|> whether or not the vocab adds BOS.
        let bos = self.model.vocab().bos();
        self.prefill(&[bos], 0)?;
        // llama.cpp books decode time when the context synchronises; the rest of the wall
        // time of eval_chunks is the vision encoder.
        self.ctx.synchronize();
        let before = self.ctx.timings().t_p_eval_ms();
        let t = Instant::now();
        let n_past = chunks
            .eval_chunks(&mut self.mtmd, &mut self.ctx, 1, 0, self.n_batch, false)
            .map_err(|e| EngineError::Inference(format!("image prefix: {e}")))?;
        self.ctx.synchronize();
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let prefill = (self.ctx.timings().t_p_eval_ms() - before).clamp(0.0, wall);
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
                resize_ms,
                image_encode_ms: wall - prefill,
                image_prefill_ms: prefill,
                tokens: n_past as u32,
            },
        ))
    }

    /// Prefills `tokens` at `pos` in batches; logits are kept for the last one only.
    /// Returns the batch index of that last token's logits.
    fn prefill(&mut self, tokens: &[LlamaToken], pos: i32) -> Result<i32, EngineError> {
        let n_batch = self.n_batch.max(1) as usize;
        let mut batch = LlamaBatch::new(n_batch, 1);
        let mut last = 0;
        for (c, chunk) in tokens.chunks(n_batch).enumerate() {
            batch.clear();
            for (i, t) in chunk.iter().enumerate() {
                let global = c * n_batch + i;
                let is_last = global + 1 == tokens.len();
                batch
                    .add(*t, pos + global as i32, &[0], is_last)
                    .map_err(|e| EngineError::Inference(e.to_string()))?;
                if is_last {
                    last = i as i32;
                }
            }
            self.ctx
                .decode(&mut batch)
                .map_err(|e| EngineError::Inference(format!("question prefill: {e}")))?;
        }
        Ok(last)
    }

    /// Replaces the previous question's tail after the image prefix with `tail`, and
    /// prefills it. Returns the tokens used and the batch index of the last one's logits.
    fn start_tail(
        &mut self,
        prefix: CachedPrefix,
        tail: &str,
        timing: &mut SkillTiming,
    ) -> Result<(i32, i32), EngineError> {
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(prefix.n_past as u32), None)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let tokens = self.tokenize(tail);
        let end = prefix.n_past + tokens.len() as i32;
        if end >= self.n_ctx {
            return Err(EngineError::Invalid(format!(
                "the question takes {} tokens; with the image that exceeds model.context_size {}",
                tokens.len(),
                self.n_ctx
            )));
        }
        let t = Instant::now();
        let logits_at = self.prefill(&tokens, prefix.n_past)?;
        timing.prompt_tokens += tokens.len() as u32;
        timing.prefill_ms += ms(t);
        Ok((end, logits_at))
    }

    /// Asks a yes/no tail and reads the first answer token's probabilities.
    fn ask_yes_no(
        &mut self,
        prefix: CachedPrefix,
        tail: &str,
        started: Instant,
        timing: &mut SkillTiming,
    ) -> Result<YesNo, EngineError> {
        let (_, logits_at) = self.start_tail(prefix, tail, timing)?;
        let logits = self.ctx.get_logits_ith(logits_at);
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
        let (mut pos, mut logits_at) = self.start_tail(prefix, tail, timing)?;
        let mut sampler = LlamaSampler::greedy();
        let mut batch = LlamaBatch::new(1, 1);
        let mut bytes = Vec::new();
        let vocab = self.model.vocab();
        let mut first = true;
        let reason = loop {
            if stop.is_cancelled() || cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            if timing.generated_tokens >= budget {
                break StopReason::Budget;
            }
            let token = sampler.sample(&self.ctx, logits_at);
            sampler.accept(token);
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
            batch.clear();
            batch
                .add(token, pos, &[0], true)
                .map_err(|e| EngineError::Inference(e.to_string()))?;
            let t = Instant::now();
            self.ctx
                .decode(&mut batch)
                .map_err(|e| EngineError::Inference(format!("decode: {e}")))?;
            timing.decode_ms += ms(t);
            timing.decode_steps += 1;
            pos += 1;
            logits_at = 0;
        };
        timing.stop_reason = Some(reason);
        Ok(Generated {
            raw: String::from_utf8_lossy(&bytes).into_owned(),
            stop: reason,
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
                    _ => Answer::Query { answer: text },
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
