//! Pixel formats cameras deliver, converted to packed RGB for the engine.
//!
//! YUV conversions use `yuvutils-rs` (SIMD, BT.601 limited range as webcams send it);
//! MJPEG frames are decoded with the `image` crate's JPEG decoder. Pure functions: bytes in,
//! RGB out, an error for a buffer that does not hold what its format says.

use yuvutils_rs::{
    yuv_nv12_to_rgb, yuyv422_to_rgb, YuvBiPlanarImage, YuvConversionMode, YuvPackedImage, YuvRange,
    YuvStandardMatrix,
};

/// A camera pixel format moonwatch can convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Motion JPEG: each frame a JPEG image.
    Mjpeg,
    /// Packed 4:2:2, Y0 U Y1 V.
    Yuyv,
    /// Packed RGB, 3 bytes a pixel.
    Rgb,
    /// Packed BGR, 3 bytes a pixel.
    Bgr,
    /// Planar Y, then interleaved UV at half resolution (4:2:0).
    Nv12,
}

impl PixelFormat {
    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            Self::Mjpeg => *b"MJPG",
            Self::Yuyv => *b"YUYV",
            Self::Rgb => *b"RGB3",
            Self::Bgr => *b"BGR3",
            Self::Nv12 => *b"NV12",
        }
    }

    pub fn from_fourcc(code: &[u8; 4]) -> Option<Self> {
        [Self::Mjpeg, Self::Yuyv, Self::Rgb, Self::Bgr, Self::Nv12]
            .into_iter()
            .find(|f| &f.fourcc() == code)
    }

    /// Bytes a row of `width` pixels takes without padding (MJPEG: not applicable, 0).
    pub fn min_stride(self, width: u32) -> usize {
        match self {
            Self::Mjpeg => 0,
            Self::Yuyv => width as usize * 2,
            Self::Rgb | Self::Bgr => width as usize * 3,
            Self::Nv12 => width as usize,
        }
    }
}

/// Why a buffer could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error(
        "{format:?} frame of {width}x{height} (stride {stride}) needs {need} bytes, got {got}"
    )]
    Short {
        format: PixelFormat,
        width: u32,
        height: u32,
        stride: usize,
        need: usize,
        got: usize,
    },
    #[error("{0:?} needs an even width and height")]
    Odd(PixelFormat),
    #[error("MJPEG frame does not decode: {0}")]
    Jpeg(String),
    #[error("conversion failed: {0}")]
    Yuv(String),
}

/// Converts one frame to packed RGB. `stride` is the bytes per row of the (first) plane;
/// 0 means no padding. Returns the RGB bytes and the frame's size (MJPEG carries its own).
pub fn to_rgb(
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
    data: &[u8],
) -> Result<(Vec<u8>, u32, u32), ConvertError> {
    if format == PixelFormat::Mjpeg {
        return decode_mjpeg(data);
    }
    let stride = if stride == 0 {
        format.min_stride(width)
    } else {
        stride
    };
    let rows = match format {
        PixelFormat::Nv12 => height as usize + (height as usize).div_ceil(2),
        _ => height as usize,
    };
    let need = stride * rows;
    if data.len() < need || stride < format.min_stride(width) {
        return Err(ConvertError::Short {
            format,
            width,
            height,
            stride,
            need,
            got: data.len(),
        });
    }
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    let rgb_stride = width * 3;
    let yuv_err = |e: yuvutils_rs::YuvError| ConvertError::Yuv(e.to_string());
    match format {
        PixelFormat::Yuyv => {
            if !width.is_multiple_of(2) {
                return Err(ConvertError::Odd(format));
            }
            // yuvutils takes packed 4:2:2 only without row padding.
            let row = format.min_stride(width);
            let compact: std::borrow::Cow<[u8]> = if stride == row {
                data[..need].into()
            } else {
                data.chunks(stride)
                    .take(height as usize)
                    .flat_map(|r| &r[..row])
                    .copied()
                    .collect()
            };
            let img = YuvPackedImage {
                yuy: &compact,
                yuy_stride: row as u32,
                width,
                height,
            };
            yuyv422_to_rgb(
                &img,
                &mut rgb,
                rgb_stride,
                YuvRange::Limited,
                YuvStandardMatrix::Bt601,
            )
            .map_err(yuv_err)?;
        }
        PixelFormat::Nv12 => {
            if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
                return Err(ConvertError::Odd(format));
            }
            let y_len = stride * height as usize;
            let img = YuvBiPlanarImage {
                y_plane: &data[..y_len],
                y_stride: stride as u32,
                uv_plane: &data[y_len..need],
                uv_stride: stride as u32,
                width,
                height,
            };
            yuv_nv12_to_rgb(
                &img,
                &mut rgb,
                rgb_stride,
                YuvRange::Limited,
                YuvStandardMatrix::Bt601,
                YuvConversionMode::Balanced,
            )
            .map_err(yuv_err)?;
        }
        PixelFormat::Rgb | PixelFormat::Bgr => {
            let row = width as usize * 3;
            for (dst, src) in rgb.chunks_exact_mut(row).zip(data.chunks(stride)) {
                dst.copy_from_slice(&src[..row]);
                if format == PixelFormat::Bgr {
                    for px in dst.chunks_exact_mut(3) {
                        px.swap(0, 2);
                    }
                }
            }
        }
        PixelFormat::Mjpeg => {}
    }
    Ok((rgb, width, height))
}

fn decode_mjpeg(data: &[u8]) -> Result<(Vec<u8>, u32, u32), ConvertError> {
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(data), image::ImageFormat::Jpeg);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(crate::frame::MAX_SIDE);
    limits.max_image_height = Some(crate::frame::MAX_SIDE);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| ConvertError::Jpeg(e.to_string()))?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok((rgb.into_raw(), w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BT.601 limited-range YUV of some known colours, with the RGB they stand for.
    const SWATCHES: [([u8; 3], [u8; 3]); 5] = [
        ([16, 128, 128], [0, 0, 0]),
        ([235, 128, 128], [255, 255, 255]),
        ([81, 90, 240], [255, 0, 0]),
        ([145, 54, 34], [0, 255, 0]),
        ([41, 240, 110], [0, 0, 255]),
    ];

    fn close(a: &[u8], b: &[u8; 3]) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| (i16::from(*x) - i16::from(*y)).abs() <= 3)
    }

    #[test]
    fn yuyv_known_colours() {
        for (yuv, rgb) in SWATCHES {
            let [y, u, v] = yuv;
            // 4x2 frame with 8 bytes of row padding.
            let row: Vec<u8> = [y, u, y, v, y, u, y, v].into_iter().chain([0; 8]).collect();
            let data = [row.clone(), row].concat();
            let (out, w, h) = to_rgb(PixelFormat::Yuyv, 4, 2, 16, &data).unwrap();
            assert_eq!((w, h, out.len()), (4, 2, 24));
            for px in out.chunks(3) {
                assert!(close(px, &rgb), "YUV {yuv:?} gave {px:?}, want {rgb:?}");
            }
        }
    }

    #[test]
    fn nv12_known_colours() {
        for (yuv, rgb) in SWATCHES {
            let [y, u, v] = yuv;
            let mut data = vec![y; 4 * 4];
            data.extend([u, v, u, v, u, v, u, v]);
            let (out, ..) = to_rgb(PixelFormat::Nv12, 4, 4, 0, &data).unwrap();
            for px in out.chunks(3) {
                assert!(close(px, &rgb), "NV12 {yuv:?} gave {px:?}, want {rgb:?}");
            }
        }
    }

    #[test]
    fn bgr_and_rgb_with_stride() {
        let data = [1u8, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0];
        let (rgb, ..) = to_rgb(PixelFormat::Rgb, 2, 2, 8, &data).unwrap();
        assert_eq!(rgb, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let (bgr, ..) = to_rgb(PixelFormat::Bgr, 2, 2, 8, &data).unwrap();
        assert_eq!(bgr, [3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10]);
    }

    #[test]
    fn mjpeg_decodes_to_the_encoded_picture() {
        let img = image::RgbImage::from_fn(32, 16, |x, _| {
            if x < 16 {
                image::Rgb([250, 10, 10])
            } else {
                image::Rgb([10, 10, 250])
            }
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .unwrap();
        let (rgb, w, h) = to_rgb(PixelFormat::Mjpeg, 0, 0, 0, &jpeg).unwrap();
        assert_eq!((w, h), (32, 16));
        assert!(close(&rgb[..3], &[250, 10, 10]));
        assert!(close(&rgb[rgb.len() - 3..], &[10, 10, 250]));
        assert!(matches!(
            to_rgb(PixelFormat::Mjpeg, 0, 0, 0, &jpeg[..jpeg.len() / 3]),
            Err(ConvertError::Jpeg(_))
        ));
    }

    #[test]
    fn short_and_odd_buffers_are_errors() {
        assert!(matches!(
            to_rgb(PixelFormat::Yuyv, 4, 2, 0, &[0; 15]),
            Err(ConvertError::Short { need: 16, .. })
        ));
        assert!(matches!(
            to_rgb(PixelFormat::Nv12, 4, 4, 0, &[0; 20]),
            Err(ConvertError::Short { need: 24, .. })
        ));
        assert!(matches!(
            to_rgb(PixelFormat::Yuyv, 3, 2, 6, &[0; 12]),
            Err(ConvertError::Odd(_))
        ));
        assert!(matches!(
            to_rgb(PixelFormat::Rgb, 4, 1, 6, &[0; 12]),
            Err(ConvertError::Short { .. })
        ));
    }

    #[test]
    fn fourcc_round_trip() {
        for f in [
            PixelFormat::Mjpeg,
            PixelFormat::Yuyv,
            PixelFormat::Rgb,
            PixelFormat::Bgr,
            PixelFormat::Nv12,
        ] {
            assert_eq!(PixelFormat::from_fourcc(&f.fourcc()), Some(f));
        }
        assert_eq!(PixelFormat::from_fourcc(b"H264"), None);
    }
}
