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

/// mtmd's vision encoder: a picture in, image embeddings out.
#[derive(Debug)]
pub struct Vision {
    ptr: NonNull<sys::mtmd_context>,
    n_embd: usize,
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
    ) -> Result<Self, EngineError> {
        let raw = raw_model(model)?;
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
        // SAFETY: default params with plain field writes; the marker is a static C string
        // inside llama.cpp; the path is NUL-terminated and copied.
        let ptr = unsafe {
            let mut p = sys::mtmd_context_params_default();
            p.use_gpu = use_gpu;
            p.print_timings = false;
            p.n_threads = threads;
            p.flash_attn_type = flash_attn_type(flash_attention);
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

    /// Encodes an RGB picture of `side` x `side` pixels; returns its image embeddings,
    /// one row of the text model's width per image token.
    pub fn encode(&mut self, rgb: &[u8], side: u32) -> Result<Vec<f32>, EngineError> {
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
