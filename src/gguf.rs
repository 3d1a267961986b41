//! GGUF files through ggml's own reader and writer (llama-cpp-sys-2, the pinned llama.cpp),
//! and ggml's number formats. With `vision/llama.rs` this is the crate's only unsafe code
//! (the crate denies it elsewhere): each function here is a safe API over the C calls,
//! with the reason each call is sound beside it. Imports nothing of moonwatch.

use std::ffi::{c_void, CStr, CString};
use std::path::Path;

use llama_cpp_sys_2 as sys;

pub use sys::ggml_type as Type;

fn c(s: &str) -> CString {
    // Keys, names and paths are literals or formatted identifiers; a NUL byte in one is
    // dropped to an empty string, which no key or file matches.
    CString::new(s).unwrap_or_default()
}

/// One tensor's header: its name, type, shape (ggml order) and where its data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: Type,
    pub ne: Vec<i64>,
    /// From the start of the file.
    pub offset: u64,
    pub size: usize,
}

/// An open GGUF file: its metadata and tensor headers, and with `with_data` its tensors'
/// data in memory.
#[derive(Debug)]
pub struct Reader {
    gguf: *mut sys::gguf_context,
    ctx: *mut sys::ggml_context,
}

impl Reader {
    pub fn open(path: &Path, with_data: bool) -> Result<Self, String> {
        let p = c(&path.to_string_lossy());
        let mut ctx: *mut sys::ggml_context = std::ptr::null_mut();
        // SAFETY: ggml reads the file into contexts it allocates and this value owns (freed
        // in Drop); a NUL-terminated path.
        let gguf = unsafe {
            sys::gguf_init_from_file(
                p.as_ptr(),
                sys::gguf_init_params {
                    no_alloc: !with_data,
                    ctx: &mut ctx,
                },
            )
        };
        if gguf.is_null() || ctx.is_null() {
            // SAFETY: frees whichever of the two was made (null is accepted by neither,
            // so each is checked).
            unsafe {
                if !gguf.is_null() {
                    sys::gguf_free(gguf);
                }
                if !ctx.is_null() {
                    sys::ggml_free(ctx);
                }
            }
            return Err("not a readable GGUF file".into());
        }
        Ok(Self { gguf, ctx })
    }

    fn key(&self, key: &str, ty: sys::gguf_type) -> Option<i64> {
        let k = c(key);
        // SAFETY: a valid context and a NUL-terminated key.
        unsafe {
            let i = sys::gguf_find_key(self.gguf, k.as_ptr());
            (i >= 0 && sys::gguf_get_kv_type(self.gguf, i) == ty).then_some(i)
        }
    }

    pub fn has(&self, key: &str) -> bool {
        let k = c(key);
        // SAFETY: as above.
        unsafe { sys::gguf_find_key(self.gguf, k.as_ptr()) >= 0 }
    }

    pub fn u32(&self, key: &str) -> Option<u32> {
        let i = self.key(key, sys::GGUF_TYPE_UINT32)?;
        // SAFETY: the key exists with this type.
        Some(unsafe { sys::gguf_get_val_u32(self.gguf, i) })
    }

    pub fn str(&self, key: &str) -> Option<String> {
        let i = self.key(key, sys::GGUF_TYPE_STRING)?;
        // SAFETY: the key exists with this type; the string is owned by the context and
        // copied here.
        Some(unsafe {
            CStr::from_ptr(sys::gguf_get_val_str(self.gguf, i))
                .to_string_lossy()
                .into_owned()
        })
    }

    fn n_tensors(&self) -> i64 {
        // SAFETY: a valid context.
        unsafe { sys::gguf_get_n_tensors(self.gguf) }
    }

    /// Every tensor's header, in file order.
    pub fn tensors(&self) -> Result<Vec<TensorInfo>, String> {
        // SAFETY: indices below n_tensors; names are NUL-terminated strings owned by the
        // context; `ctx` holds a header for every tensor of the file (checked).
        unsafe {
            let base = sys::gguf_get_data_offset(self.gguf) as u64;
            (0..self.n_tensors())
                .map(|i| {
                    let name_ptr = sys::gguf_get_tensor_name(self.gguf, i);
                    let name = CStr::from_ptr(name_ptr).to_string_lossy().into_owned();
                    let t = sys::ggml_get_tensor(self.ctx, name_ptr);
                    if t.is_null() {
                        return Err(format!("tensor {name} has no header"));
                    }
                    let dims = sys::ggml_n_dims(t) as usize;
                    let t = &*t;
                    Ok(TensorInfo {
                        ty: t.type_,
                        ne: t.ne[..dims].to_vec(),
                        offset: base + sys::gguf_get_tensor_offset(self.gguf, i) as u64,
                        size: sys::gguf_get_tensor_size(self.gguf, i),
                        name,
                    })
                })
                .collect()
        }
    }

    /// Where the last tensor's data ends.
    pub fn data_end(&self) -> u64 {
        // SAFETY: indices below n_tensors of a valid context.
        unsafe {
            let base = sys::gguf_get_data_offset(self.gguf) as u64;
            (0..self.n_tensors())
                .map(|i| {
                    base + sys::gguf_get_tensor_offset(self.gguf, i) as u64
                        + sys::gguf_get_tensor_size(self.gguf, i) as u64
                })
                .max()
                .unwrap_or(base)
        }
    }

    /// The values of F32 or F16 tensor `name` (the file opened with its data).
    pub fn values(&self, name: &str) -> Result<Vec<f32>, String> {
        let n = c(name);
        // SAFETY: the context holds the tensor's data (opened `with_data`, checked by
        // `data` being non-null); `n` elements of its type are read and copied.
        unsafe {
            let t = sys::ggml_get_tensor(self.ctx, n.as_ptr());
            if t.is_null() || (*t).data.is_null() {
                return Err(format!("tensor {name} has no data here"));
            }
            let t = &*t;
            let count = sys::ggml_nelements(t) as usize;
            match t.type_ {
                sys::GGML_TYPE_F32 => {
                    Ok(std::slice::from_raw_parts(t.data.cast::<f32>(), count).to_vec())
                }
                sys::GGML_TYPE_F16 => Ok(std::slice::from_raw_parts(t.data.cast::<u16>(), count)
                    .iter()
                    .map(|&b| half::f16::from_bits(b).to_f32())
                    .collect()),
                ty => Err(format!("tensor {name} has type {ty}, expected F32 or F16")),
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: both were made in `open` (non-null) and are freed once.
        unsafe {
            sys::gguf_free(self.gguf);
            sys::ggml_free(self.ctx);
        }
    }
}

/// GGUF metadata and tensor headers under construction; [`Writer::write_header`] writes
/// them, and the caller appends each tensor's data (aligned to 32 bytes) in order.
#[derive(Debug)]
pub struct Writer {
    gguf: *mut sys::gguf_context,
    ggml: *mut sys::ggml_context,
    room: usize,
    added: usize,
}

impl Writer {
    /// Room for `max_tensors` tensor headers.
    pub fn new(max_tensors: usize) -> Self {
        // SAFETY: plain constructors; a no_alloc ggml context only holds tensor headers.
        unsafe {
            let params = sys::ggml_init_params {
                mem_size: (max_tensors + 8) * sys::ggml_tensor_overhead(),
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            };
            Self {
                gguf: sys::gguf_init_empty(),
                ggml: sys::ggml_init(params),
                room: max_tensors + 8,
                added: 0,
            }
        }
    }

    /// Copies every key of `src`.
    pub fn copy_kv(&mut self, src: &Reader) {
        // SAFETY: both contexts are valid; gguf copies every key.
        unsafe { sys::gguf_set_kv(self.gguf, src.gguf) }
    }

    pub fn str(&mut self, key: &str, v: &str) {
        let (k, v) = (c(key), c(v));
        // SAFETY: valid context and NUL-terminated strings; gguf copies them.
        unsafe { sys::gguf_set_val_str(self.gguf, k.as_ptr(), v.as_ptr()) }
    }
    pub fn u32(&mut self, key: &str, v: u32) {
        let k = c(key);
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_u32(self.gguf, k.as_ptr(), v) }
    }
    pub fn f32(&mut self, key: &str, v: f32) {
        let k = c(key);
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_f32(self.gguf, k.as_ptr(), v) }
    }
    pub fn bool(&mut self, key: &str, v: bool) {
        let k = c(key);
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_bool(self.gguf, k.as_ptr(), v) }
    }
    pub fn f32s(&mut self, key: &str, v: &[f32]) {
        let k = c(key);
        // SAFETY: `v` is valid for `v.len()` f32 values; gguf copies them.
        unsafe {
            sys::gguf_set_arr_data(
                self.gguf,
                k.as_ptr(),
                sys::GGUF_TYPE_FLOAT32,
                v.as_ptr().cast(),
                v.len(),
            )
        }
    }
    pub fn i32s(&mut self, key: &str, v: &[i32]) {
        let k = c(key);
        // SAFETY: as above.
        unsafe {
            sys::gguf_set_arr_data(
                self.gguf,
                k.as_ptr(),
                sys::GGUF_TYPE_INT32,
                v.as_ptr().cast(),
                v.len(),
            )
        }
    }
    pub fn strs(&mut self, key: &str, v: &[String]) {
        let k = c(key);
        let owned: Vec<CString> = v.iter().map(|s| c(s)).collect();
        let mut ptrs: Vec<*const std::os::raw::c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: `ptrs` points at `owned`, alive for the call; gguf copies the strings.
        unsafe { sys::gguf_set_arr_str(self.gguf, k.as_ptr(), ptrs.as_mut_ptr(), ptrs.len()) }
    }

    /// Adds a tensor's header; false (nothing added) past the room given to `new`.
    pub fn tensor(&mut self, name: &str, ty: Type, ne: &[i64]) -> bool {
        if self.added >= self.room || ne.is_empty() || ne.len() > 4 {
            return false;
        }
        let n = c(name);
        // SAFETY: the ggml context has room for this header (counted above); gguf copies
        // the header.
        unsafe {
            let t = sys::ggml_new_tensor(self.ggml, ty, ne.len() as i32, ne.as_ptr());
            if t.is_null() {
                return false;
            }
            sys::ggml_set_name(t, n.as_ptr());
            sys::gguf_add_tensor(self.gguf, t);
        }
        self.added += 1;
        true
    }

    /// Writes the header, metadata and tensor headers (padded to the data's alignment).
    pub fn write_header(&self, path: &Path) -> bool {
        let p = c(&path.to_string_lossy());
        // SAFETY: a valid context and a NUL-terminated path.
        unsafe { sys::gguf_write_to_file(self.gguf, p.as_ptr(), true) }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // SAFETY: both were created in `new` and are freed once.
        unsafe {
            sys::gguf_free(self.gguf);
            sys::ggml_free(self.ggml);
        }
    }
}

/// F16 data as f32 values.
pub fn f16_to_f32(raw: &[u8]) -> Vec<f32> {
    let count = raw.len() / 2;
    let mut out = vec![0f32; count];
    // SAFETY: `raw` holds `count` F16 values and `out` has room for as many f32s.
    unsafe { sys::ggml_fp16_to_fp32_row(raw.as_ptr().cast(), out.as_mut_ptr(), count as i64) };
    out
}

/// Bytes of `n` values of `ty` in one row.
pub fn row_size(ty: Type, n: i64) -> usize {
    // SAFETY: a plain size computation.
    unsafe { sys::ggml_row_size(ty, n) }
}

/// Bytes per value of `ty` (fractional for block types).
pub fn bytes_per_value(ty: Type) -> f64 {
    // SAFETY: plain size lookups.
    unsafe { sys::ggml_type_size(ty) as f64 / sys::ggml_blck_size(ty) as f64 }
}

/// f32 values encoded as `ty` (F32, F16, or a quantized type) in rows of `row` values.
pub fn encode(values: &[f32], ty: Type, row: i64) -> Vec<u8> {
    match ty {
        sys::GGML_TYPE_F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        sys::GGML_TYPE_F16 => {
            let mut out = vec![0u16; values.len()];
            // SAFETY: both buffers hold `values.len()` elements; ggml_fp16_t is a u16.
            unsafe {
                sys::ggml_fp32_to_fp16_row(values.as_ptr(), out.as_mut_ptr(), values.len() as i64)
            };
            out.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        _ => {
            let rows = values.len() as i64 / row.max(1);
            let mut out = vec![0u8; row_size(ty, row) * rows as usize];
            // SAFETY: `values` holds `rows` rows of `row` values; the output is sized by
            // ggml_row_size for as many rows of `ty`.
            unsafe {
                sys::ggml_quantize_chunk(
                    ty,
                    values.as_ptr(),
                    out.as_mut_ptr().cast::<c_void>(),
                    0,
                    rows,
                    row,
                    std::ptr::null(),
                );
            }
            out
        }
    }
}

/// A read-only map of a large weights file (the 2025 release's safetensors).
pub fn map(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: read-only map of a file this process does not modify; a file changed by
    // another process while it is read gives wrong numbers, as for every mmap reader.
    unsafe { memmap2::Mmap::map(file) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let mut w = Writer::new(1);
        w.str("general.architecture", "test");
        w.u32("n", 7);
        assert!(w.tensor("a", sys::GGML_TYPE_F16, &[3]));
        assert!(!w.tensor("b", sys::GGML_TYPE_F16, &[]), "no shape");
        assert!(w.write_header(&path));
        let mut bytes = std::fs::read(&path).unwrap();
        let data = encode(&[0.5, -2.0, 1024.0], sys::GGML_TYPE_F16, 3);
        bytes.extend_from_slice(&data);
        bytes.resize(bytes.len() + (32 - data.len() % 32) % 32, 0);
        std::fs::write(&path, bytes).unwrap();
        let r = Reader::open(&path, true).unwrap();
        assert_eq!(r.str("general.architecture").as_deref(), Some("test"));
        assert_eq!(r.u32("n"), Some(7));
        assert_eq!(r.u32("general.architecture"), None, "a string, not a u32");
        let t = r.tensors().unwrap();
        assert_eq!(
            (t[0].name.as_str(), t[0].ne.as_slice(), t[0].size),
            ("a", &[3i64][..], 6)
        );
        assert_eq!(r.values("a").unwrap(), [0.5, -2.0, 1024.0]);
        assert_eq!(f16_to_f32(&data), [0.5, -2.0, 1024.0]);
        assert_eq!(r.data_end(), t[0].offset + 6);
        assert!(Reader::open(&dir.path().join("missing.gguf"), false).is_err());
    }
}
