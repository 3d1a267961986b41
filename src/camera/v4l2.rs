//! V4L2 devices read directly with the `v4l` crate: format, size and rate negotiated,
//! mmap streaming, the newest buffer converted to RGB.

use std::path::PathBuf;
use std::time::Duration;

use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::convert::{self, PixelFormat};
use super::{CameraError, FrameSource};
use crate::config::{CameraConfig, PixelFormatChoice};
use crate::frame::Frame;

/// Preference when the configuration says `auto`: compressed first (USB bandwidth), then
/// the formats cheapest to convert.
const PREFERENCE: [PixelFormat; 5] = [
    PixelFormat::Mjpeg,
    PixelFormat::Yuyv,
    PixelFormat::Rgb,
    PixelFormat::Bgr,
    PixelFormat::Nv12,
];

/// Picks the pixel format from what the device offers.
pub fn choose_format(offered: &[[u8; 4]], wanted: PixelFormatChoice) -> Option<PixelFormat> {
    let want = match wanted {
        PixelFormatChoice::Auto => None,
        PixelFormatChoice::Mjpeg => Some(PixelFormat::Mjpeg),
        PixelFormatChoice::Yuyv => Some(PixelFormat::Yuyv),
        PixelFormatChoice::Rgb => Some(PixelFormat::Rgb),
        PixelFormatChoice::Bgr => Some(PixelFormat::Bgr),
        PixelFormatChoice::Nv12 => Some(PixelFormat::Nv12),
    };
    let usable = |f: &PixelFormat| offered.contains(&f.fourcc());
    match want {
        Some(f) => usable(&f).then_some(f),
        None => PREFERENCE.into_iter().find(usable),
    }
}

/// Picks the offered size closest to the wanted one (by area difference).
pub fn choose_size(offered: &[(u32, u32)], want: (u32, u32)) -> Option<(u32, u32)> {
    let area = |(w, h): (u32, u32)| i64::from(w) * i64::from(h);
    offered
        .iter()
        .copied()
        .min_by_key(|s| ((area(*s) - area(want)).abs(), s.0))
}

struct Open {
    // Field order matters: the stream must be dropped before the device.
    stream: Stream<'static>,
    _device: Device,
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
    handle: std::sync::Arc<v4l::device::Handle>,
    scratch: Vec<u8>,
}

pub struct V4l2Source {
    device: PathBuf,
    width: u32,
    height: u32,
    fps: u32,
    pixel_format: PixelFormatChoice,
    open: Option<Open>,
}

impl std::fmt::Debug for V4l2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Source")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl V4l2Source {
    pub fn new(c: &CameraConfig) -> Self {
        Self {
            device: c.device.clone(),
            width: c.width,
            height: c.height,
            fps: c.fps,
            pixel_format: c.pixel_format,
            open: None,
        }
    }

    fn open(&self) -> Result<Open, CameraError> {
        let name = self.device.display().to_string();
        let err = |what: &str, e: std::io::Error| {
            CameraError::Unavailable(format!("{name}: {what}: {e}"))
        };
        let dev = Device::with_path(&self.device).map_err(|e| err("cannot open", e))?;
        let formats: Vec<[u8; 4]> = dev
            .enum_formats()
            .map_err(|e| err("cannot list formats", e))?
            .iter()
            .map(|f| f.fourcc.repr)
            .collect();
        let format = choose_format(&formats, self.pixel_format).ok_or_else(|| {
            let offered: Vec<String> = formats
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            CameraError::Unavailable(format!(
                "{name} offers {} but camera.pixel_format is {:?}",
                offered.join(", "),
                self.pixel_format
            ))
        })?;
        let fourcc = FourCC::new(&format.fourcc());
        let sizes: Vec<(u32, u32)> = dev
            .enum_framesizes(fourcc)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.size.to_discrete())
            .map(|d| (d.width, d.height))
            .collect();
        let (w, h) =
            choose_size(&sizes, (self.width, self.height)).unwrap_or((self.width, self.height));
        let mut fmt = dev.format().map_err(|e| err("cannot read format", e))?;
        fmt.width = w;
        fmt.height = h;
        fmt.fourcc = fourcc;
        let fmt = dev
            .set_format(&fmt)
            .map_err(|e| err("cannot set format", e))?;
        let got = PixelFormat::from_fourcc(&fmt.fourcc.repr).ok_or_else(|| {
            CameraError::Unavailable(format!(
                "{name} switched to unsupported format {}",
                fmt.fourcc
            ))
        })?;
        // Not every driver lets the rate be set; the capture loop paces itself anyway.
        if let Err(e) = dev.set_params(&v4l::video::capture::Parameters::with_fps(self.fps)) {
            tracing::debug!("{name}: cannot set {} fps: {e}", self.fps);
        }
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, 4)
            .map_err(|e| err("cannot start streaming", e))?;
        stream.set_timeout(Duration::from_secs(2));
        tracing::info!(
            "{name}: {}x{} {} ({} formats offered)",
            fmt.width,
            fmt.height,
            fmt.fourcc,
            formats.len()
        );
        Ok(Open {
            handle: dev.handle(),
            stream,
            _device: dev,
            format: got,
            width: fmt.width,
            height: fmt.height,
            stride: fmt.stride as usize,
            scratch: Vec::new(),
        })
    }
}

/// True when another buffer is ready to dequeue at once.
fn ready(handle: &v4l::device::Handle) -> bool {
    // Readable, or in error (then the next dequeue reports it).
    handle.poll(libc::POLLIN, 0).is_ok_and(|n| n > 0)
}

impl FrameSource for V4l2Source {
    fn describe(&self) -> String {
        format!("v4l2 {}", self.device.display())
    }

    fn start(&mut self) -> Result<(), CameraError> {
        self.open = Some(self.open()?);
        Ok(())
    }

    fn next(&mut self, _timeout: Duration) -> Result<Option<Frame>, CameraError> {
        let Some(o) = self.open.as_mut() else {
            return Err(CameraError::Unavailable("not started".into()));
        };
        // Drain what the driver queued while we were idle; only the newest is converted.
        let mut captured_at;
        loop {
            let (buf, meta) = o.stream.next().map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    CameraError::Stalled(Duration::from_secs(2))
                }
                _ => CameraError::Unavailable(format!("capture failed (unplugged?): {e}")),
            })?;
            captured_at = std::time::SystemTime::now();
            let used = (meta.bytesused as usize).min(buf.len());
            o.scratch.clear();
            o.scratch.extend_from_slice(&buf[..used]);
            if !ready(&o.handle) {
                break;
            }
        }
        let (rgb, w, h) = convert::to_rgb(o.format, o.width, o.height, o.stride, &o.scratch)
            .map_err(|e| CameraError::BadFrame(e.to_string()))?;
        let mut frame =
            Frame::from_rgb(w, h, rgb).map_err(|e| CameraError::BadFrame(e.to_string()))?;
        frame.captured_at = captured_at;
        Ok(Some(frame))
    }

    fn stop(&mut self) {
        self.open = None;
    }
}

/// A frame size and the frame rates offered at it.
#[derive(Debug, Clone)]
pub struct SizeInfo {
    pub width: u32,
    pub height: u32,
    pub rates: Vec<f64>,
}

/// A pixel format ("YUYV (YUYV 4:2:2)") and its sizes.
#[derive(Debug, Clone)]
pub struct FormatInfo {
    pub format: String,
    pub sizes: Vec<SizeInfo>,
}

/// One V4L2 device and what it offers.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub path: PathBuf,
    pub name: String,
    pub driver: String,
    pub bus: String,
    pub formats: Vec<FormatInfo>,
}

/// Lists V4L2 capture devices; an empty list when there are none.
pub fn list_devices() -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    let mut nodes = v4l::context::enum_devices();
    nodes.sort_by_key(|n| n.index());
    for node in nodes {
        let Ok(dev) = Device::with_path(node.path()) else {
            continue;
        };
        let Ok(caps) = dev.query_caps() else { continue };
        if !caps
            .capabilities
            .contains(v4l::capability::Flags::VIDEO_CAPTURE)
        {
            continue;
        }
        let formats = dev
            .enum_formats()
            .unwrap_or_default()
            .into_iter()
            .map(|f| {
                let sizes = dev
                    .enum_framesizes(f.fourcc)
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|s| s.size.to_discrete())
                    .map(|d| {
                        let rates = dev
                            .enum_frameintervals(f.fourcc, d.width, d.height)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|i| match i.interval {
                                v4l::frameinterval::FrameIntervalEnum::Discrete(fr)
                                    if fr.numerator > 0 =>
                                {
                                    Some(f64::from(fr.denominator) / f64::from(fr.numerator))
                                }
                                _ => None,
                            })
                            .collect();
                        SizeInfo {
                            width: d.width,
                            height: d.height,
                            rates,
                        }
                    })
                    .collect();
                FormatInfo {
                    format: format!("{} ({})", f.fourcc, f.description),
                    sizes,
                }
            })
            .collect();
        out.push(DeviceInfo {
            path: node.path().to_owned(),
            name: caps.card,
            driver: caps.driver,
            bus: caps.bus,
            formats,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_chosen_by_preference_or_request() {
        let offered = [*b"YUYV", *b"MJPG"];
        assert_eq!(
            choose_format(&offered, PixelFormatChoice::Auto),
            Some(PixelFormat::Mjpeg)
        );
        assert_eq!(
            choose_format(&offered, PixelFormatChoice::Yuyv),
            Some(PixelFormat::Yuyv)
        );
        assert_eq!(choose_format(&offered, PixelFormatChoice::Nv12), None);
        assert_eq!(choose_format(&[*b"H264"], PixelFormatChoice::Auto), None);
    }

    #[test]
    fn sizes_are_the_closest_offered() {
        let offered = [(320, 240), (640, 480), (1280, 720), (1920, 1080)];
        assert_eq!(choose_size(&offered, (640, 480)), Some((640, 480)));
        assert_eq!(choose_size(&offered, (800, 600)), Some((640, 480)));
        assert_eq!(choose_size(&offered, (1600, 900)), Some((1280, 720)));
        assert_eq!(choose_size(&[], (640, 480)), None);
    }

    #[test]
    fn a_missing_device_is_unavailable_with_its_path() {
        let c = CameraConfig {
            device: "/dev/video-does-not-exist".into(),
            ..CameraConfig::default()
        };
        let mut s = V4l2Source::new(&c);
        match s.start() {
            Err(CameraError::Unavailable(m)) => {
                assert!(m.contains("/dev/video-does-not-exist"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
