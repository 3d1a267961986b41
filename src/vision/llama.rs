//! The llama.cpp and mtmd calls llama-cpp-2 0.1.160 does not wrap, wrapped: a context
//! with an eval callback that captures named graph tensors, batches of input embeddings,
//! switching causal attention, and the vision encoder's output embeddings.
//!
//! The model itself stays a `llama_cpp_2::model::LlamaModel` (loading, vocabulary); its
//! raw pointer is read through `LlamaModel`'s `#[repr(transparent)]` layout, which the
//! exact version pin keeps fixed and [`raw_model`] checks against the model's own size
//! queries. Everything here runs on the engine thread.

use std::ffi::{c_void, CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_sys_2 as sys;

use super::EngineError;

// `LlamaModel` is `#[repr(transparent)]` over a `#[repr(transparent)]` non-null pointer.
const _: () = assert!(std::mem::size_of::<LlamaModel>() == std::mem::size_of::<*mut u8>());

/// The `llama_model*` behind `model`.
pub fn raw_model(model: &LlamaModel) -> Result<*mut sys::llama_model, EngineError> {
    // SAFETY: `LlamaModel` is a transparent wrapper of a transparent `NonNull<llama_model>`
    // (llama-cpp-2 =0.1.160, pinned); reading the pointer does not move or free it.
    let ptr = unsafe { *(model as *const LlamaModel).cast::<*mut sys::llama_model>() };
    // SAFETY: a live model pointer, if the layout assumption holds; checked next.
    let same = !ptr.is_null()
        && unsafe { sys::llama_model_n_embd(ptr) } == model.n_embd()
        && unsafe { sys::llama_model_n_layer(ptr) } as u32 == model.n_layer();
    if same {
        Ok(ptr)
    } else {
        Err(EngineError::Load(
            "llama-cpp-2's model layout changed: update src/vision/llama.rs".into(),
        ))
    }
}

/// What the eval callback looks for and what it found.
#[derive(Debug, Default)]
struct Capture {
    on: bool,
    names: Vec<CString>,
    /// The last row of each wanted tensor, by index in `names`.
    rows: Vec<Vec<f32>>,
    /// Whether each was seen in the last graph evaluated while `on`.
    seen: Vec<bool>,
}

/// ggml's scheduler asks for each node whether we want it (`ask`), then hands over the
/// ones we said yes to once computed.
unsafe extern "C" fn eval_callback(t: *mut sys::ggml_tensor, ask: bool, user: *mut c_void) -> bool {
    // SAFETY: `user` is the `Capture` boxed in `Context`, alive as long as the context;
    // the engine thread is the only one running graphs on it.
    let cap = unsafe { &mut *user.cast::<Capture>() };
    if !cap.on {
        return !ask;
    }
    // SAFETY: ggml passes a valid tensor whose name is NUL-terminated.
    let name = unsafe { CStr::from_ptr((*t).name.as_ptr()) };
    let Some(i) = cap.names.iter().position(|n| n.as_c_str() == name) else {
        return !ask;
    };
    if ask {
        return true;
    }
    // SAFETY: as above; the data is computed when `ask` is false.
    unsafe {
        let t = &*t;
        if t.type_ == sys::GGML_TYPE_F32 && sys::ggml_is_contiguous(t) {
            let width = t.ne[0] as usize;
            let rows = (sys::ggml_nelements(t) as usize) / width.max(1);
            let mut row = vec![0f32; width];
            let offset = rows.saturating_sub(1) * width * 4;
            sys::ggml_backend_tensor_get(t, row.as_mut_ptr().cast(), offset, width * 4);
            cap.rows[i] = row;
            cap.seen[i] = true;
        }
    }
    true
}

/// Context settings.
#[derive(Debug, Clone, Copy)]
pub struct ContextParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub threads: i32,
    pub kv_type: sys::ggml_type,
    /// Flash attention on or off; None: llama.cpp decides.
    pub flash_attention: Option<bool>,
}

/// llama.cpp's flash attention setting for `on` (None: its own choice).
pub fn flash_attn_type(on: Option<bool>) -> sys::llama_flash_attn_type {
    match on {
        Some(true) => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        Some(false) => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        None => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
    }
}

/// A llama.cpp context over a model owned elsewhere (`'m`), with tensor capture.
#[derive(Debug)]
pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    capture: Box<Capture>,
    n_embd: usize,
    n_vocab: usize,
    _model: PhantomData<&'m LlamaModel>,
}

impl<'m> Context<'m> {
    /// A context that can capture the graph tensors named in `capture` (see
    /// [`Context::set_capture`]).
    pub fn new(
        model: &'m LlamaModel,
        p: ContextParams,
        capture: &[String],
    ) -> Result<Self, EngineError> {
        let raw = raw_model(model)?;
        let mut cap = Box::new(Capture {
            on: false,
            names: capture
                .iter()
                .map(|n| CString::new(n.as_str()).unwrap_or_default())
                .collect(),
            rows: vec![Vec::new(); capture.len()],
            seen: vec![false; capture.len()],
        });
        // SAFETY: default params, then plain field writes; the callback's user data is the
        // boxed `Capture`, which lives (at a fixed address) as long as the context.
        let ptr = unsafe {
            let mut cp = sys::llama_context_default_params();
            cp.n_ctx = p.n_ctx;
            cp.n_batch = p.n_batch;
            cp.n_ubatch = p.n_batch;
            cp.n_threads = p.threads;
            cp.n_threads_batch = p.threads;
            cp.type_k = p.kv_type;
            cp.type_v = p.kv_type;
            cp.flash_attn_type = flash_attn_type(p.flash_attention);
            // Every batch asks for the logits of its last position only (decode_tokens,
            // decode_embeddings), so llama.cpp need not reserve logits for a whole batch
            // (51,200 floats a position: 150 MB for the region heads' 730-position
            // prefix). On the CPU the untouched pages never cost memory (the Pi
            // configuration peaks at the same 1,536 MB either way); a GPU buffer would.
            cp.n_outputs_max = 1;
            cp.no_perf = false;
            if !capture.is_empty() {
                cp.cb_eval = Some(eval_callback);
                cp.cb_eval_user_data = (&mut *cap as *mut Capture).cast();
            }
            sys::llama_init_from_model(raw, cp)
        };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| EngineError::Load("cannot create llama.cpp context".into()))?;
        Ok(Self {
            ptr,
            capture: cap,
            n_embd: model.n_embd() as usize,
            n_vocab: model.n_vocab() as usize,
            _model: PhantomData,
        })
    }

    fn raw(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    /// Turns capture on or off; on, every later decode records the last row of each
    /// named tensor.
    pub fn set_capture(&mut self, on: bool) {
        self.capture.on = on;
        self.capture.seen.iter_mut().for_each(|s| *s = false);
    }

    /// The last row of capture `i` from the last decode, if that decode computed it.
    pub fn captured(&self, i: usize) -> Option<&[f32]> {
        (self.capture.seen.get(i) == Some(&true)).then(|| self.capture.rows[i].as_slice())
    }

    /// Attention over the batches that follow: causal, or both ways within a batch.
    pub fn set_causal(&mut self, causal: bool) {
        // SAFETY: a live context.
        unsafe { sys::llama_set_causal_attn(self.raw(), causal) }
    }

    /// Decodes `tokens` at `pos..`, in batches of `n_batch`; logits for the last only.
    pub fn decode_tokens(
        &mut self,
        tokens: &[i32],
        pos: i32,
        n_batch: usize,
    ) -> Result<(), EngineError> {
        let n_batch = n_batch.max(1);
        for (c, chunk) in tokens.chunks(n_batch).enumerate() {
            let last_chunk = (c + 1) * n_batch >= tokens.len();
            let mut b = Batch::new(chunk.len(), 0)?;
            for (i, t) in chunk.iter().enumerate() {
                b.push(
                    Input::Token(*t),
                    pos + (c * n_batch + i) as i32,
                    last_chunk && i + 1 == chunk.len(),
                );
            }
            self.decode(&b)?;
        }
        Ok(())
    }

    /// Decodes rows of input embeddings (`n_embd` each) at `pos..` as one batch; logits
    /// for the last only.
    pub fn decode_embeddings(&mut self, embd: &[f32], pos: i32) -> Result<(), EngineError> {
        let n = embd.len() / self.n_embd;
        if n == 0 || n * self.n_embd != embd.len() {
            return Err(EngineError::Inference(format!(
                "{} values are not whole rows of {}",
                embd.len(),
                self.n_embd
            )));
        }
        let mut b = Batch::new(n, self.n_embd)?;
        for (i, row) in embd.chunks_exact(self.n_embd).enumerate() {
            b.push(Input::Embedding(row), pos + i as i32, i + 1 == n);
        }
        self.decode(&b)
    }

    fn decode(&mut self, b: &Batch) -> Result<(), EngineError> {
        // SAFETY: a live context and a batch filled within its allocation.
        let rc = unsafe { sys::llama_decode(self.raw(), b.raw) };
        match rc {
            0 => Ok(()),
            1 => Err(EngineError::Inference(
                "decode: no room in the KV cache".into(),
            )),
            rc => Err(EngineError::Inference(format!("decode failed ({rc})"))),
        }
    }

    /// The logits of the last decoded batch's output.
    pub fn logits(&self) -> &[f32] {
        // SAFETY: -1 is the last output; llama.cpp keeps n_vocab floats there until the
        // next decode, which needs `&mut self`.
        unsafe {
            let p = sys::llama_get_logits_ith(self.raw(), -1);
            if p.is_null() {
                return &[];
            }
            std::slice::from_raw_parts(p, self.n_vocab)
        }
    }

    /// Forgets everything in the KV cache.
    pub fn clear(&mut self) {
        // SAFETY: a live context.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.raw()), true) }
    }

    /// Forgets positions `pos..` of the sequence.
    pub fn clear_from(&mut self, pos: i32) {
        // SAFETY: a live context; -1 means "to the end".
        unsafe {
            sys::llama_memory_seq_rm(sys::llama_get_memory(self.raw()), 0, pos, -1);
        }
    }

    /// Waits for queued work (backends may run asynchronously).
    pub fn synchronize(&mut self) {
        // SAFETY: a live context.
        unsafe { sys::llama_synchronize(self.raw()) }
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: created in `new`, freed once; the capture box outlives this call.
        unsafe { sys::llama_free(self.raw()) }
    }
}

enum Input<'a> {
    Token(i32),
    Embedding(&'a [f32]),
}

/// One `llama_batch` of tokens or of embeddings, for sequence 0.
struct Batch {
    raw: sys::llama_batch,
    cap: usize,
    n_embd: usize,
}

impl Batch {
    fn new(cap: usize, n_embd: usize) -> Result<Self, EngineError> {
        let cap_i32 = i32::try_from(cap)
            .map_err(|_| EngineError::Inference(format!("batch of {cap} is too large")))?;
        // SAFETY: allocates `cap` entries (embeddings of `n_embd` when non-zero).
        let raw = unsafe { sys::llama_batch_init(cap_i32, n_embd as i32, 1) };
        Ok(Self { raw, cap, n_embd })
    }

    fn push(&mut self, input: Input<'_>, pos: i32, logits: bool) {
        let i = self.raw.n_tokens as usize;
        if i >= self.cap {
            return;
        }
        // SAFETY: `i < cap`, and each array was allocated with `cap` entries (the
        // embedding array with `cap * n_embd`).
        unsafe {
            match input {
                Input::Token(t) if !self.raw.token.is_null() => *self.raw.token.add(i) = t,
                Input::Embedding(row) if !self.raw.embd.is_null() => {
                    let n = row.len().min(self.n_embd);
                    std::ptr::copy_nonoverlapping(
                        row.as_ptr(),
                        self.raw.embd.add(i * self.n_embd),
                        n,
                    );
                }
                _ => return,
            }
            *self.raw.pos.add(i) = pos;
            *self.raw.n_seq_id.add(i) = 1;
            *(*self.raw.seq_id.add(i)) = 0;
            *self.raw.logits.add(i) = i8::from(logits);
        }
        self.raw.n_tokens += 1;
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init, freed once.
        unsafe { sys::llama_batch_free(self.raw) }
    }
}

/// mtmd's vision encoder: a picture in, image embeddings out; or, for pictures of several
/// crops, the encoder's features before the projector ([`Vision::features`]).
#[derive(Debug)]
pub struct Vision {
    ptr: NonNull<sys::mtmd_context>,
    n_embd: usize,
    features: Box<Features>,
}

/// What the vision graph's eval callback reads: the projector's input (`rows` stays empty
/// until the node is read).
#[derive(Debug, Default)]
struct Features {
    on: bool,
    rows: Vec<f32>,
    width: usize,
}

/// The llava graph's projector input is `get_rows(post_ln output, patches)`: the node a
/// [`Features`] capture reads. Once read, the graph stops, so the projector never runs.
unsafe extern "C" fn features_callback(
    t: *mut sys::ggml_tensor,
    ask: bool,
    user: *mut c_void,
) -> bool {
    // SAFETY: `user` is the `Features` boxed in `Vision`, alive as long as the mtmd
    // context; the engine thread is the only one encoding on it.
    let cap = unsafe { &mut *user.cast::<Features>() };
    // SAFETY: ggml passes a valid tensor; its sources are valid or null, and names are
    // NUL-terminated.
    let wanted = cap.on
        && unsafe {
            let t = &*t;
            let patches = t.src[1];
            t.op == sys::GGML_OP_GET_ROWS
                && !patches.is_null()
                && CStr::from_ptr((*patches).name.as_ptr()).to_bytes() == b"patches"
        };
    if !wanted {
        return !ask;
    }
    if ask {
        return true;
    }
    // SAFETY: the node is computed when `ask` is false; its F32 contiguous data is copied.
    unsafe {
        let t = &*t;
        if t.type_ == sys::GGML_TYPE_F32 && sys::ggml_is_contiguous(t) {
            let n = sys::ggml_nelements(t) as usize;
            cap.rows.resize(n, 0.0);
            sys::ggml_backend_tensor_get(t, cap.rows.as_mut_ptr().cast(), 0, n * 4);
            cap.width = t.ne[0] as usize;
        }
    }
    // Stop here: what follows is the (folded) projector, which these features skip.
    false
}

// SAFETY: the context is used from one thread at a time (`&mut self` for encoding).
unsafe impl Send for Vision {}

impl Vision {
    pub fn new(
        path: &std::path::Path,
        model: &LlamaModel,
        use_gpu: bool,
        threads: i32,
        flash_attention: Option<bool>,
        with_features: bool,
    ) -> Result<Self, EngineError> {
        let raw = raw_model(model)?;
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
        let mut features = Box::<Features>::default();
        // SAFETY: default params with plain field writes; the marker is a static C string
        // inside llama.cpp; the path is NUL-terminated and copied; the callback's user
        // data is the boxed `Features`, which lives (at a fixed address) as long as the
        // context.
        let ptr = unsafe {
            let mut p = sys::mtmd_context_params_default();
            p.use_gpu = use_gpu;
            p.print_timings = false;
            p.n_threads = threads;
            p.flash_attn_type = flash_attn_type(flash_attention);
            if with_features {
                p.cb_eval = Some(features_callback);
                p.cb_eval_user_data = (&mut *features as *mut Features).cast();
            }
            sys::mtmd_init_from_file(c_path.as_ptr(), raw, p)
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            EngineError::Load(format!(
                "vision projector {}: llama.cpp could not load it; it may be truncated, corrupt, or not match the text model",
                path.display()
            ))
        })?;
        let v = Self {
            ptr,
            n_embd: model.n_embd() as usize,
            features,
        };
        // SAFETY: a live context.
        if !unsafe { sys::mtmd_support_vision(v.ptr.as_ptr()) } {
            return Err(EngineError::Load(format!(
                "vision projector {} has no vision encoder",
                path.display()
            )));
        }
        Ok(v)
    }

    /// The vision encoder's features for an RGB picture of `side` x `side` pixels, before
    /// the projector: one row of the encoder's width per patch, and that width. Needs a
    /// context made `with_features`.
    pub fn features(&mut self, rgb: &[u8], side: u32) -> Result<(Vec<f32>, usize), EngineError> {
        self.features.on = true;
        self.features.rows.clear();
        let done = self.run(rgb, side, false);
        self.features.on = false;
        done?;
        if self.features.rows.is_empty() {
            return Err(EngineError::Inference(
                "the vision graph has no projector input to read (llama.cpp's llava graph changed?)"
                    .into(),
            ));
        }
        Ok((std::mem::take(&mut self.features.rows), self.features.width))
    }

    /// Encodes an RGB picture of `side` x `side` pixels; returns its image embeddings,
    /// one row of the text model's width per image token.
    pub fn encode(&mut self, rgb: &[u8], side: u32) -> Result<Vec<f32>, EngineError> {
        self.run(rgb, side, true)
    }

    /// Runs the encoder on a picture; with `output`, copies the image embeddings out.
    fn run(&mut self, rgb: &[u8], side: u32, output: bool) -> Result<Vec<f32>, EngineError> {
        if rgb.len() != (side * side * 3) as usize {
            return Err(EngineError::Image(format!(
                "{} bytes are not a {side}x{side} RGB picture",
                rgb.len()
            )));
        }
        let marker = CString::new(llama_cpp_2::mtmd::mtmd_default_marker())
            .map_err(|e| EngineError::Image(e.to_string()))?;
        // SAFETY: every pointer below is created here and freed before returning; the
        // output embeddings are copied out before the next mtmd call.
        unsafe {
            let bitmap = sys::mtmd_bitmap_init(side, side, rgb.as_ptr());
            let chunks = sys::mtmd_input_chunks_init();
            let _free = Guard(|| {
                sys::mtmd_input_chunks_free(chunks);
                sys::mtmd_bitmap_free(bitmap);
            });
            if bitmap.is_null() || chunks.is_null() {
                return Err(EngineError::Image("out of memory for the picture".into()));
            }
            let text = sys::mtmd_input_text {
                text: marker.as_ptr(),
                text_len: marker.as_bytes().len(),
                add_special: false,
                parse_special: true,
            };
            let bitmaps = [bitmap.cast_const()];
            let rc = sys::mtmd_tokenize(self.ptr.as_ptr(), chunks, &text, bitmaps.as_ptr(), 1);
            if rc != 0 {
                return Err(EngineError::Image(format!("preprocessing failed ({rc})")));
            }
            let image = (0..sys::mtmd_input_chunks_size(chunks))
                .map(|i| sys::mtmd_input_chunks_get(chunks, i))
                .find(|&c| sys::mtmd_input_chunk_get_type(c) == sys::MTMD_INPUT_CHUNK_TYPE_IMAGE)
                .ok_or_else(|| EngineError::Image("no image chunk".into()))?;
            let rc = sys::mtmd_encode_chunk(self.ptr.as_ptr(), image);
            if rc != 0 {
                return Err(EngineError::Inference(format!(
                    "image encoding failed ({rc})"
                )));
            }
            if !output {
                return Ok(Vec::new());
            }
            let n = sys::mtmd_input_chunk_get_n_tokens(image) * self.n_embd;
            let out = sys::mtmd_get_output_embd(self.ptr.as_ptr());
            if out.is_null() {
                return Err(EngineError::Inference("image encoding gave nothing".into()));
            }
            Ok(std::slice::from_raw_parts(out, n).to_vec())
        }
    }
}

impl Drop for Vision {
    fn drop(&mut self) {
        // SAFETY: created in `new`, freed once.
        unsafe { sys::mtmd_free(self.ptr.as_ptr()) }
    }
}

/// Runs a closure when dropped (frees C allocations on every return path).
struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Index of the largest value (the first of equals), as greedy sampling picks.
/// Quantizes the model file `input` into `output` as `ftype` with llama.cpp, on `threads`
/// threads; the error is llama.cpp's code.
pub fn quantize_model(
    input: &std::path::Path,
    output: &std::path::Path,
    ftype: sys::llama_ftype,
    threads: i32,
) -> Result<(), u32> {
    let path = |p: &std::path::Path| std::ffi::CString::new(p.to_string_lossy().as_bytes());
    let (Ok(i), Ok(o)) = (path(input), path(output)) else {
        return Err(u32::MAX);
    };
    // SAFETY: default params, then plain field writes; paths are NUL-terminated.
    let code = unsafe {
        let mut params = sys::llama_model_quantize_default_params();
        params.ftype = ftype;
        params.nthread = threads;
        sys::llama_model_quantize(i.as_ptr(), o.as_ptr(), &params)
    };
    if code == 0 {
        Ok(())
    } else {
        Err(code)
    }
}

/// The natural log of the softmax of `v` at `i`: the log probability of token `i` when `v`
/// are a step's logits.
pub fn log_prob(v: &[f32], i: usize) -> f32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = v.iter().map(|x| (x - max).exp()).sum();
    v.get(i).map_or(f32::NEG_INFINITY, |x| x - max - sum.ln())
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Moondream 2025's projector as trained, for pictures of several crops: `fc2(gelu(
/// W_global g + W_local l + b1)) + b2` over the whole picture's features `g` and the
/// crops' pooled features `l`, as a ggml graph of its own (mtmd's projector holds only the
/// folded first layer, exact when `l = g`). Weights are read from the converted mmproj
/// (`mm.crops.global.weight`, `mm.crops.local.weight`, `mm.0.bias`, `mm.2.*`) in their
/// stored types (F16, F32 or Q8_0).
#[derive(Debug)]
pub struct CropProjector {
    backend: sys::ggml_backend_t,
    weights: *mut sys::ggml_context,
    buffer: sys::ggml_backend_buffer_t,
    /// global, local, b1, w2, b2.
    w: [*mut sys::ggml_tensor; 5],
    n_in: i64,
    n_out: i64,
}

// SAFETY: used from the engine thread only (`&self` for running, owned by `Moondream`).
unsafe impl Send for CropProjector {}

impl CropProjector {
    /// Loads the projector's tensors (global half, local half, first bias, second weight,
    /// second bias) from the converted vision GGUF at `path`.
    pub fn load(path: &std::path::Path, use_gpu: bool, threads: i32) -> Result<Self, String> {
        use std::io::{Read, Seek, SeekFrom};
        let names = [
            super::crops::PROJ_GLOBAL,
            super::crops::PROJ_LOCAL,
            "mm.0.bias",
            "mm.2.weight",
            "mm.2.bias",
        ];
        let tensors = crate::gguf::Reader::open(path, false)
            .and_then(|r| r.tensors())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let infos: Vec<&crate::gguf::TensorInfo> = names
            .iter()
            .map(|n| {
                tensors.iter().find(|t| t.name == *n).ok_or_else(|| {
                    format!("{} has no tensor {n}: convert the release again with this moonwatch (`moonwatch model convert` or `model pull`)", path.display())
                })
            })
            .collect::<Result<_, _>>()?;
        let (n_in, n_hidden) = (infos[0].ne[0], infos[0].ne.get(1).copied().unwrap_or(0));
        let n_out = infos[3].ne.get(1).copied().unwrap_or(0);
        let shapes_ok = infos[1].ne == infos[0].ne
            && infos[2].ne == [n_hidden]
            && infos[3].ne == [n_hidden, n_out]
            && infos[4].ne == [n_out];
        if !shapes_ok || n_in <= 0 || n_out <= 0 {
            return Err(format!(
                "{}: the crop projector's tensors do not fit together",
                path.display()
            ));
        }
        let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: a context for five tensor headers (no data: it goes to a backend buffer);
        // every pointer is checked, and freed in Drop (or below on failure through `me`).
        unsafe {
            let backend = if use_gpu {
                let b = sys::ggml_backend_init_by_type(
                    sys::GGML_BACKEND_DEVICE_TYPE_GPU,
                    std::ptr::null(),
                );
                if b.is_null() {
                    sys::ggml_backend_cpu_init()
                } else {
                    b
                }
            } else {
                sys::ggml_backend_cpu_init()
            };
            if backend.is_null() {
                return Err("no ggml backend for the crop projector".into());
            }
            if sys::ggml_backend_is_cpu(backend) {
                sys::ggml_backend_cpu_set_n_threads(backend, threads.max(1));
            }
            let weights = sys::ggml_init(sys::ggml_init_params {
                mem_size: 8 * sys::ggml_tensor_overhead(),
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            });
            let mut me = Self {
                backend,
                weights,
                buffer: std::ptr::null_mut(),
                w: [std::ptr::null_mut(); 5],
                n_in,
                n_out,
            };
            if weights.is_null() {
                return Err("out of memory for the crop projector".into());
            }
            for (slot, info) in me.w.iter_mut().zip(&infos) {
                *slot =
                    sys::ggml_new_tensor(weights, info.ty, info.ne.len() as i32, info.ne.as_ptr());
                if slot.is_null() || sys::ggml_nbytes(*slot) != info.size {
                    return Err(format!(
                        "{}: tensor {} has an unexpected size",
                        path.display(),
                        info.name
                    ));
                }
            }
            me.buffer = sys::ggml_backend_alloc_ctx_tensors(weights, backend);
            if me.buffer.is_null() {
                return Err("out of memory for the crop projector's weights".into());
            }
            for (t, info) in me.w.iter().zip(&infos) {
                let mut data = vec![0u8; info.size];
                file.seek(SeekFrom::Start(info.offset))
                    .and_then(|_| file.read_exact(&mut data))
                    .map_err(|e| format!("{}: tensor {}: {e}", path.display(), info.name))?;
                sys::ggml_backend_tensor_set(*t, data.as_ptr().cast(), 0, data.len());
            }
            Ok(me)
        }
    }

    /// The image embeddings for `rows` patches: `global` and `local` are `rows` rows of
    /// the encoder's width each; the result is `rows` rows of the text model's width.
    pub fn run(&self, global: &[f32], local: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let n_in = self.n_in as usize;
        if global.len() != rows * n_in || local.len() != rows * n_in {
            return Err(format!(
                "the crop projector takes {rows} rows of {n_in}, got {} and {} values",
                global.len(),
                local.len()
            ));
        }
        // SAFETY: a graph context (headers only) and an allocator made and freed here;
        // the weights live as long as `self`; inputs are copied in, the output out.
        unsafe {
            let ctx = sys::ggml_init(sys::ggml_init_params {
                mem_size: 16 * sys::ggml_tensor_overhead() + sys::ggml_graph_overhead(),
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            });
            if ctx.is_null() {
                return Err("out of memory for the crop projector's graph".into());
            }
            let alloc =
                sys::ggml_gallocr_new(sys::ggml_backend_get_default_buffer_type(self.backend));
            let _free = Guard(|| {
                sys::ggml_gallocr_free(alloc);
                sys::ggml_free(ctx);
            });
            let [wg, wl, b1, w2, b2] = self.w;
            let g = sys::ggml_new_tensor_2d(ctx, sys::GGML_TYPE_F32, self.n_in, rows as i64);
            let l = sys::ggml_new_tensor_2d(ctx, sys::GGML_TYPE_F32, self.n_in, rows as i64);
            sys::ggml_set_input(g);
            sys::ggml_set_input(l);
            let h = sys::ggml_add(
                ctx,
                sys::ggml_mul_mat(ctx, wg, g),
                sys::ggml_mul_mat(ctx, wl, l),
            );
            let h = sys::ggml_gelu(ctx, sys::ggml_add(ctx, h, b1));
            let out = sys::ggml_add(ctx, sys::ggml_mul_mat(ctx, w2, h), b2);
            sys::ggml_set_output(out);
            let graph = sys::ggml_new_graph(ctx);
            sys::ggml_build_forward_expand(graph, out);
            if alloc.is_null() || !sys::ggml_gallocr_alloc_graph(alloc, graph) {
                return Err("out of memory for the crop projector's activations".into());
            }
            sys::ggml_backend_tensor_set(g, global.as_ptr().cast(), 0, global.len() * 4);
            sys::ggml_backend_tensor_set(l, local.as_ptr().cast(), 0, local.len() * 4);
            if sys::ggml_backend_graph_compute(self.backend, graph) != sys::GGML_STATUS_SUCCESS {
                return Err("the crop projector failed".into());
            }
            let mut emb = vec![0f32; rows * self.n_out as usize];
            sys::ggml_backend_tensor_get(out, emb.as_mut_ptr().cast(), 0, emb.len() * 4);
            Ok(emb)
        }
    }
}

impl Drop for CropProjector {
    fn drop(&mut self) {
        // SAFETY: each made in `load` (or null), freed once.
        unsafe {
            if !self.buffer.is_null() {
                sys::ggml_backend_buffer_free(self.buffer);
            }
            if !self.weights.is_null() {
                sys::ggml_free(self.weights);
            }
            sys::ggml_backend_free(self.backend);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_prob_is_the_log_softmax() {
        let v = [1.0f32, 2.0, 3.0, -50.0];
        let total: f32 = (0..v.len()).map(|i| super::log_prob(&v, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        let z: f32 = v.iter().map(|x| x.exp()).sum();
        assert!((super::log_prob(&v, 2) - (3.0 - z.ln())).abs() < 1e-5);
        assert_eq!(super::log_prob(&v, 9), f32::NEG_INFINITY);
    }
}
