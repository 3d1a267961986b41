//! A still picture the engine can look at: RGB pixels plus where and when they came from.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use image::{ImageReader, Limits};

pub mod scene;

/// Largest image side accepted from files and payloads; the model sees 378x378 pixels
/// anyway, so bigger inputs only cost memory.
pub const MAX_SIDE: u32 = 8192;

/// Decoded RGB pixels with an identity for the frame-prefix cache.
#[derive(Clone)]
pub struct Frame {
    /// Content hash of size and pixels: equal keys mean the same picture, so the engine
    /// may reuse its encoded image prefix.
    pub key: u64,
    pub width: u32,
    pub height: u32,
    /// Packed RGB, `width * height * 3` bytes, shared without copying.
    pub rgb: Arc<[u8]>,
    /// When the picture was taken (for files: when it was read).
    pub captured_at: SystemTime,
    /// Position in its camera's stream (1, 2, ...); 0 for pictures not from a camera.
    pub seq: u64,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("key", &format_args!("{:016x}", self.key))
            .field("width", &self.width)
            .field("height", &self.height)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Why a picture could not be turned into a [`Frame`].
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("cannot read image {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} is not an image this build can decode (JPEG, PNG, BMP, WebP): {reason}")]
    Decode { what: String, reason: String },
    #[error("{what} is {width}x{height}; images must be between 1x1 and {MAX_SIDE}x{MAX_SIDE}")]
    Size {
        what: String,
        width: u32,
        height: u32,
    },
    #[error("RGB buffer holds {got} bytes, {width}x{height} needs {want}")]
    Buffer {
        width: u32,
        height: u32,
        got: usize,
        want: usize,
    },
}

impl Frame {
    /// Wraps packed RGB pixels, checking the buffer length and size limits.
    pub fn from_rgb(
        width: u32,
        height: u32,
        rgb: impl Into<Arc<[u8]>>,
    ) -> Result<Self, FrameError> {
        let rgb = rgb.into();
        let want = width as usize * height as usize * 3;
        if rgb.len() != want {
            return Err(FrameError::Buffer {
                width,
                height,
                got: rgb.len(),
                want,
            });
        }
        check_size("RGB frame", width, height)?;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&width.to_le_bytes());
        h.update(&height.to_le_bytes());
        h.update(&rgb);
        Ok(Self {
            key: h.digest(),
            width,
            height,
            rgb,
            captured_at: SystemTime::now(),
            seq: 0,
        })
    }

    /// Reads and decodes an image file.
    pub fn load(path: &Path) -> Result<Self, FrameError> {
        let bytes = std::fs::read(path).map_err(|source| FrameError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::decode(&bytes, &path.display().to_string())
    }

    /// Decodes an encoded image (format guessed from its bytes); `what` names it in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self, FrameError> {
        let rgb = decode_rgb(bytes, what, 512 * 1024 * 1024)?;
        let (w, h) = rgb.dimensions();
        Self::from_rgb(w, h, rgb.into_raw())
    }

    /// Decodes an image sent by a client, reduced at once so that neither side exceeds
    /// `max_side` (aspect ratio kept): memory stays bounded whatever the picture's size.
    /// PNG is decoded a row at a time into the reduced picture (an 8192x8192 PNG costs a
    /// few MB, not 200); other formats may decode to at most [`MAX_DECODE_BYTES`] before
    /// they are reduced.
    pub fn decode_bounded(bytes: &[u8], what: &str, max_side: u32) -> Result<Self, FrameError> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            if let Some(f) = png_reduced(bytes, what, max_side)? {
                return Ok(f);
            }
        }
        let rgb = decode_rgb(bytes, what, MAX_DECODE_BYTES)?;
        let (w, h) = rgb.dimensions();
        let (rw, rh) = reduced_size(w, h, max_side);
        if (rw, rh) == (w, h) {
            return Self::from_rgb(w, h, rgb.into_raw());
        }
        let small = image::imageops::resize(&rgb, rw, rh, image::imageops::FilterType::Triangle);
        drop(rgb);
        Self::from_rgb(rw, rh, small.into_raw())
    }

    /// The pixels stretched to `width` x `height` (bicubic, aspect ratio not kept), as
    /// Moondream's reference preprocessing resizes every picture to the encoder's input
    /// size. A frame already that size is returned as it is, without a copy.
    pub fn stretched(&self, width: u32, height: u32) -> Arc<[u8]> {
        if (self.width, self.height) == (width, height) {
            return self.rgb.clone();
        }
        let src = image::ImageBuffer::<image::Rgb<u8>, &[u8]>::from_raw(
            self.width,
            self.height,
            &self.rgb[..],
        );
        match src {
            Some(src) => image::imageops::resize(
                &src,
                width,
                height,
                image::imageops::FilterType::CatmullRom,
            )
            .into_raw()
            .into(),
            // Unreachable: from_rgb checked the buffer length.
            None => vec![0u8; width as usize * height as usize * 3].into(),
        }
    }

    /// The pixels resized to `width` x `height` as libvips' `resize` does with its default
    /// kernel (what Moondream 2025's reference crops with), exactly: an axis that shrinks
    /// goes through vips' `reducev` then `reduceh` ([`vips_reduce_rows`]), an axis that
    /// grows through vips' `affine` with its bicubic interpolator ([`vips_upsize`]). A frame
    /// already that size is returned as it is.
    pub fn resized_like_vips(&self, width: u32, height: u32) -> Arc<[u8]> {
        if (self.width, self.height) == (width, height) {
            return self.rgb.clone();
        }
        let (mut w, mut h) = (self.width as usize, self.height as usize);
        let mut rgb: std::borrow::Cow<'_, [u8]> = self.rgb[..].into();
        if (height as usize) < h {
            rgb = vips_reduce_rows(&rgb, w, h, height as usize).into();
            h = height as usize;
        }
        if (width as usize) < w {
            let t = vips_reduce_rows(&transpose(&rgb, w, h), h, w, width as usize);
            rgb = transpose(&t, h, width as usize).into();
            w = width as usize;
        }
        if (width as usize, height as usize) != (w, h) {
            rgb = vips_upsize(&rgb, w as u32, h as u32, width, height).into();
        }
        rgb.into_owned().into()
    }

    /// Encodes the frame as JPEG (for snapshots and replies).
    pub fn to_jpeg(&self, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
        // Encoding RGB8 of a size already checked cannot fail on a Vec.
        if let Err(e) = enc.encode(
            &self.rgb,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
        ) {
            tracing::error!("JPEG encoding failed: {e}");
        }
        out
    }
}

/// Decodes any supported format to RGB, within `MAX_SIDE` a side and `max_alloc` bytes.
fn decode_rgb(bytes: &[u8], what: &str, max_alloc: u64) -> Result<image::RgbImage, FrameError> {
    let derr = |reason: String| FrameError::Decode {
        what: what.to_owned(),
        reason,
    };
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| derr(e.to_string()))?;
    if reader.format().is_none() {
        return Err(derr("unrecognised file format".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => derr(format!(
            "larger than {MAX_SIDE}x{MAX_SIDE} pixels or {} MiB decoded (send a smaller image, or PNG)",
            max_alloc >> 20
        )),
        other => derr(other.to_string()),
    })?;
    Ok(img.into_rgb8())
}

/// Decoding memory allowed for a client's non-PNG image before it is reduced.
pub const MAX_DECODE_BYTES: u64 = 64 << 20;

/// `w` x `h` scaled down (never up) so that neither side exceeds `max_side`.
fn reduced_size(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let long = w.max(h);
    if long <= max_side {
        return (w, h);
    }
    let scale = f64::from(max_side) / f64::from(long);
    (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    )
}

/// A PNG decoded row by row into its reduced size (box filter), never holding the full
/// picture. `None` for interlaced files, which the caller decodes whole within its limit.
fn png_reduced(bytes: &[u8], what: &str, max_side: u32) -> Result<Option<Frame>, FrameError> {
    let derr = |reason: String| FrameError::Decode {
        what: what.to_owned(),
        reason,
    };
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| derr(e.to_string()))?;
    let (w, h, interlaced) = {
        let info = reader.info();
        (info.width, info.height, info.interlaced)
    };
    check_size(what, w, h)?;
    if interlaced {
        return Ok(None);
    }
    let (color, _) = reader.output_color_type();
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Ok(None),
    };
    let (rw, rh) = reduced_size(w, h, max_side);
    let mut sums = vec![0u32; rw as usize * rh as usize * 3];
    let mut counts = vec![0u32; rw as usize * rh as usize];
    // Output column of each input column, computed once.
    let column: Vec<usize> = (0..w as u64)
        .map(|x| (x * u64::from(rw) / u64::from(w)) as usize)
        .collect();
    let mut y = 0u64;
    while let Some(row) = reader.next_row().map_err(|e| derr(e.to_string()))? {
        let oy = (y * u64::from(rh) / u64::from(h)) as usize;
        let data = row.data();
        for (x, &ox) in column.iter().enumerate() {
            let p = &data[x * channels..x * channels + channels];
            let rgb = match channels {
                1 | 2 => [p[0], p[0], p[0]],
                _ => [p[0], p[1], p[2]],
            };
            let cell = oy * rw as usize + ox;
            for (c, v) in rgb.iter().enumerate() {
                sums[cell * 3 + c] += u32::from(*v);
            }
            counts[cell] += 1;
        }
        y += 1;
    }
    if y != u64::from(h) {
        return Err(derr(format!("truncated: {y} of {h} rows")));
    }
    let rgb: Vec<u8> = sums
        .chunks_exact(3)
        .zip(&counts)
        .flat_map(|(s, &n)| {
            let n = n.max(1);
            [(s[0] / n) as u8, (s[1] / n) as u8, (s[2] / n) as u8]
        })
        .collect();
    Frame::from_rgb(rw, rh, rgb).map(Some)
}

fn check_size(what: &str, width: u32, height: u32) -> Result<(), FrameError> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(FrameError::Size {
            what: what.into(),
            width,
            height,
        });
    }
    Ok(())
}

/// An RGB picture `w` wide and `h` tall, transposed (`h` wide and `w` tall).
fn transpose(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    for y in 0..h {
        for x in 0..w {
            let (from, to) = ((y * w + x) * 3, (x * h + y) * 3);
            out[to..to + 3].copy_from_slice(&src[from..from + 3]);
        }
    }
    out
}

/// libvips' `reducev` of an RGB picture `w` wide from `n_in` rows to `n_out` (kernel
/// Lanczos3, `gap` 2 as `resize` passes it), 8-bit path: first `shrinkv` by the whole part
/// of the shrink over the gap (box average, fixed point), then the residual shrink with
/// Lanczos3 masks for 65 sub-pixel positions in 12-bit fixed point, edges repeated.
/// Checked equal to pyvips 3.2 / libvips 8.18 on every pixel (1280x720, 1920x1080 and
/// 4000x3000 pictures to 1176x644, 1176x910 and 378x378).
fn vips_reduce_rows(src: &[u8], w: usize, n_in: usize, n_out: usize) -> Vec<u8> {
    let row = w * 3;
    let mut shrink = 1.0 / (n_out as f64 / n_in as f64);
    let height = (n_in as f64 / shrink + 0.5).floor() as usize;
    let mut extra = height as f64 * shrink - n_in as f64;
    let int_shrink = ((n_in as f64 / height as f64 / 2.0).floor() as usize).max(1);
    let mut rows: std::borrow::Cow<'_, [u8]> = src.into();
    let mut n_in = n_in;
    if int_shrink > 1 {
        // `shrinkv` with `ceil`: blocks of `int_shrink` rows, the last row repeated.
        let n = n_in.div_ceil(int_shrink);
        let multiplier = (1u64 << 32) / (256 * int_shrink as u64);
        let mut out = vec![0u8; n * row];
        for (y, block) in out.chunks_mut(row).enumerate() {
            for (i, q) in block.iter_mut().enumerate() {
                let sum: u64 = (0..int_shrink)
                    .map(|k| u64::from(src[(y * int_shrink + k).min(n_in - 1) * row + i]))
                    .sum();
                *q = (((sum + int_shrink as u64 / 2) * multiplier) >> 24) as u8;
            }
        }
        rows = out.into();
        n_in = n;
        extra /= int_shrink as f64;
        shrink /= int_shrink as f64;
    }
    if shrink == 1.0 {
        return rows.into_owned();
    }
    let points = (2.0 * (3.0 * shrink).round_ties_even() + 1.0) as usize;
    let offset = (1.0 + extra) / 2.0 - 1.0;
    let lanczos3 = |x: f64| {
        let sinc = |v: f64| {
            if v == 0.0 {
                1.0
            } else {
                (v * std::f64::consts::PI).sin() / (v * std::f64::consts::PI)
            }
        };
        if (-3.0..=3.0).contains(&x) {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    };
    let masks: Vec<Vec<i64>> = (0..=64)
        .map(|t| {
            let half = f64::from(t as f32 / 64.0) + points as f64 / 2.0 - 1.0;
            let c: Vec<f64> = (0..points)
                .map(|i| lanczos3((i as f64 - half) * (1.0 / shrink)))
                .collect();
            let sum: f64 = c.iter().sum();
            c.iter().map(|v| (v / sum * 4096.0) as i64).collect()
        })
        .collect();
    let pad = points.div_ceil(2) as i64 - 1;
    let mut out = vec![0u8; height * row];
    for (y, line) in out.chunks_mut(row).enumerate() {
        // In the input with `pad` repeated rows above it, as vips embeds it.
        let at = (y as f64 + 0.5) * shrink - 0.5 - offset;
        let first = at as i64 - pad;
        let mask = &masks[((((at * 128.0) as i64 & 127) + 1) >> 1) as usize];
        let taps: Vec<usize> = (0..points as i64)
            .map(|i| (first + i).clamp(0, n_in as i64 - 1) as usize * row)
            .collect();
        for (i, q) in line.iter_mut().enumerate() {
            let sum: i64 = mask
                .iter()
                .zip(&taps)
                .map(|(c, t)| c * i64::from(rows[t + i]))
                .sum();
            *q = ((sum + 2048) >> 12).clamp(0, 255) as u8;
        }
    }
    out
}

/// libvips' `resize` growing an RGB picture: `affine` with `idx = 0.5 * (1 - 1/scale)`
/// and its `bicubic` interpolator for 8-bit pixels. Output pixel `X` samples the input at
/// `X / scale - 0.5` (pixel centres at whole numbers; either axis, so an axis at scale 1
/// moves by half a pixel as it does in vips), the fraction rounded to 1/64, Catmull-Rom
/// weights truncated to 12-bit fixed point, each of the four rows rounded, then the
/// column, clamped to 0..255; edges repeat (`extend = copy`). Checked equal to pyvips
/// 3.2 / libvips 8.18 on every pixel of a 640x480 scene grown to 1176x644.
fn vips_upsize(src: &[u8], sw: u32, sh: u32, dw: u32, dh: u32) -> Vec<u8> {
    const SCALE: i64 = 1 << 12;
    let weights: Vec<[i64; 4]> = (0..=64)
        .map(|i| {
            let t = f64::from(i as f32 / 64.0);
            let cr1 = 1.0 - t;
            let cr3 = cr1 * (-0.5 * t);
            let (one, four) = (cr1 * cr3, t * cr3);
            let cr4 = four - one;
            [one, cr1 - one + cr4, t - four - cr4, four].map(|c| (c * SCALE as f64) as i64)
        })
        .collect();
    // For each output position: the first of its four input pixels and its weights.
    let taps = |n_out: u32, n_in: u32| -> Vec<(i64, usize)> {
        let step = f64::from(n_in) / f64::from(n_out);
        (0..n_out)
            .map(|x| {
                // Shifted by 8 so the position is positive, as vips' own is inside its
                // border; the fraction is what matters.
                let at = f64::from(x) * step - 0.5 + 8.0;
                let frac = ((at * 128.0) as i64 & 127) + 1;
                (at as i64 - 8 - 1, (frac >> 1) as usize)
            })
            .collect()
    };
    let (xs, ys) = (taps(dw, sw), taps(dh, sh));
    let clamp = |v: i64, n: u32| v.clamp(0, i64::from(n) - 1) as usize;
    let round = |v: i64| (v + SCALE / 2) >> 12;
    let mut out = vec![0u8; dw as usize * dh as usize * 3];
    for (y, &(y0, ty)) in ys.iter().enumerate() {
        let rows: [usize; 4] = std::array::from_fn(|k| clamp(y0 + k as i64, sh));
        for (x, &(x0, tx)) in xs.iter().enumerate() {
            let cols: [usize; 4] = std::array::from_fn(|k| clamp(x0 + k as i64, sw));
            for c in 0..3 {
                let mut v = 0;
                for (k, &row) in rows.iter().enumerate() {
                    let line = &src[row * sw as usize * 3..];
                    let r: i64 = (0..4)
                        .map(|j| weights[tx][j] * i64::from(line[cols[j] * 3 + c]))
                        .sum();
                    v += weights[ty][k] * round(r);
                }
                out[(y * dw as usize + x) * 3 + c] = round(v).clamp(0, 255) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> Frame {
        let path = format!("{}/tests/data/vips/{name}", env!("CARGO_MANIFEST_DIR"));
        let img = image::open(&path).unwrap().to_rgb8();
        Frame::from_rgb(img.width(), img.height(), img.into_raw()).unwrap()
    }

    #[test]
    fn resizing_like_vips_gives_vips_pixels() {
        // pyvips 3.2 / libvips 8.18 `resize(w / 200, vscale = h / 150)` of a noisy
        // 200x150 picture, made once and kept: shrinking both ways (by 1.6; by 5 and 5,
        // where vips box-shrinks by 2 first) and growing one way while shrinking the other.
        let input = load("input-200x150.png");
        for (w, h) in [(126, 94), (40, 30), (300, 100)] {
            let want = load(&format!("resize-{w}x{h}.png"));
            let got = input.resized_like_vips(w, h);
            let differ = got
                .iter()
                .zip(want.rgb.iter())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(
                differ,
                0,
                "{w}x{h}: {differ} of {} values differ",
                got.len()
            );
        }
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_and_keys_by_content() {
        let a = Frame::decode(&png(8, 4), "a").unwrap();
        assert_eq!((a.width, a.height, a.rgb.len()), (8, 4, 96));
        let b = Frame::decode(&png(8, 4), "b").unwrap();
        assert_eq!(a.key, b.key);
        let c = Frame::decode(&png(4, 8), "c").unwrap();
        assert_ne!(a.key, c.key);
    }

    #[test]
    fn rejects_text_and_truncated_files() {
        let err = Frame::decode(b"hello, I am text", "notes.txt").unwrap_err();
        assert!(err.to_string().contains("notes.txt"), "{err}");
        let p = png(16, 16);
        assert!(Frame::decode(&p[..p.len() / 2], "half.png").is_err());
    }

    #[test]
    fn rejects_bad_buffers_and_sizes() {
        assert!(matches!(
            Frame::from_rgb(2, 2, vec![0u8; 11]),
            Err(FrameError::Buffer { .. })
        ));
        assert!(matches!(
            Frame::from_rgb(0, 0, vec![]),
            Err(FrameError::Size { .. })
        ));
    }

    #[test]
    fn stretching_keeps_no_aspect_and_no_bars() {
        // Left half red, right half blue, 640x480: stretched to 378x378 the halves stay
        // halves (no letterbox bars above and below, no cropping at the sides).
        let img = image::RgbImage::from_fn(640, 480, |x, _| {
            if x < 320 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let f = Frame::from_rgb(640, 480, img.into_raw()).unwrap();
        let out = f.stretched(378, 378);
        assert_eq!(out.len(), 378 * 378 * 3);
        let px = |x: usize, y: usize| &out[(y * 378 + x) * 3..(y * 378 + x) * 3 + 3];
        assert_eq!(px(10, 0), [255, 0, 0]);
        assert_eq!(px(10, 377), [255, 0, 0]);
        assert_eq!(px(367, 0), [0, 0, 255]);
        assert_eq!(px(367, 377), [0, 0, 255]);
        // Already the right size: the same buffer.
        let g = Frame::from_rgb(378, 378, out.to_vec()).unwrap();
        assert!(Arc::ptr_eq(&g.rgb, &g.stretched(378, 378)));
    }

    #[test]
    fn client_images_are_reduced_at_once_with_their_aspect() {
        let p = png(2000, 1000);
        let f = Frame::decode_bounded(&p, "big.png", 1024).unwrap();
        assert_eq!((f.width, f.height), (1024, 512));
        // The box filter keeps the picture: column x of the original is value x mod 256.
        let full = Frame::decode(&p, "big.png").unwrap();
        let j = Frame::decode_bounded(&full.to_jpeg(95), "big.jpg", 1024).unwrap();
        assert_eq!((j.width, j.height), (1024, 512));
        let px = |f: &Frame, x: u32, y: u32| f.rgb[((y * f.width + x) * 3 + 2) as usize];
        assert_eq!(px(&f, 100, 100), 7, "blue channel is constant");
        // Small pictures are kept as they are.
        let s = Frame::decode_bounded(&png(8, 4), "s", 1024).unwrap();
        assert_eq!(s.key, Frame::decode(&png(8, 4), "s").unwrap().key);
        // Truncated and lying files are errors, not panics.
        assert!(Frame::decode_bounded(&p[..p.len() / 2], "half.png", 1024).is_err());
        assert!(Frame::decode_bounded(b"\x89PNG\r\n\x1a\nnope", "bad.png", 1024).is_err());
    }

    #[test]
    fn jpeg_round_trip() {
        let f = Frame::decode(&png(32, 16), "x").unwrap();
        let back = Frame::decode(&f.to_jpeg(90), "jpeg").unwrap();
        assert_eq!((back.width, back.height), (32, 16));
    }
}
