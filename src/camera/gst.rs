//! GStreamer sources: any pipeline ending in an appsink, and named presets that expand to
//! the right pipeline for Raspberry Pi cameras (libcamera), Jetson CSI cameras (nvargus),
//! RTSP streams, V4L2 devices, video files and the test pattern.

use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app::AppSink;

use super::convert::{self, PixelFormat};
use super::{CameraError, FrameSource};
use crate::config::{CameraConfig, SourceKind};
use crate::frame::Frame;

/// Name of the appsink moonwatch reads from.
pub const SINK: &str = "moonwatch";

/// The tail every preset ends with: frames beyond the capture rate dropped before any
/// conversion, then packed RGB into a one-buffer, dropping appsink.
fn rgb_tail(rate: f64, sync: bool) -> String {
    let max_rate = rate.ceil().max(1.0) as u32;
    format!(
        "videorate drop-only=true max-rate={max_rate} ! videoconvert ! video/x-raw,format=RGB ! \
         appsink name={SINK} max-buffers=1 drop=true sync={sync}"
    )
}

/// Quotes a value for gst-launch syntax.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The pipeline text for a configuration.
pub fn pipeline_for(c: &CameraConfig) -> String {
    let (w, h, fps) = (c.width, c.height, c.fps);
    let size = format!("width={w},height={h}");
    match c.source {
        SourceKind::Test => format!(
            "videotestsrc is-live=true pattern={} ! video/x-raw,{size},framerate={fps}/1 ! {}",
            c.pattern,
            rgb_tail(c.capture_rate, false)
        ),
        SourceKind::Libcamera => format!(
            "libcamerasrc ! video/x-raw,{size},framerate={fps}/1 ! {}",
            rgb_tail(c.capture_rate, false)
        ),
        SourceKind::Nvargus => format!(
            "nvarguscamerasrc sensor-id={} ! video/x-raw(memory:NVMM),{size},framerate={fps}/1 ! \
             nvvidconv ! video/x-raw,format=BGRx ! {}",
            c.sensor_id,
            rgb_tail(c.capture_rate, false)
        ),
        SourceKind::Rtsp => format!(
            "uridecodebin uri={} ! videoscale ! video/x-raw,{size} ! {}",
            quote(&c.url),
            rgb_tail(c.capture_rate, false)
        ),
        SourceKind::GstV4l2 => format!(
            "v4l2src device={} ! decodebin ! videoscale ! video/x-raw,{size} ! {}",
            quote(&c.device.to_string_lossy()),
            rgb_tail(c.capture_rate, false)
        ),
        SourceKind::File => format!(
            "filesrc location={} ! decodebin ! videoscale ! video/x-raw,{size} ! {}",
            quote(&c.path.to_string_lossy()),
            rgb_tail(c.capture_rate, true)
        ),
        SourceKind::Gstreamer => {
            if c.pipeline.contains("appsink") {
                c.pipeline.clone()
            } else {
                format!(
                    "{} ! {}",
                    c.pipeline.trim().trim_end_matches('!').trim_end(),
                    rgb_tail(c.capture_rate, false)
                )
            }
        }
        // Not GStreamer sources; listed for completeness of the match.
        SourceKind::V4l2 | SourceKind::Image | SourceKind::None => String::new(),
    }
}

/// A running (or startable) GStreamer pipeline.
pub struct GstSource {
    text: String,
    description: String,
    pipeline: Option<(gst::Pipeline, AppSink)>,
}

impl std::fmt::Debug for GstSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GstSource")
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}

impl GstSource {
    pub fn new(c: &CameraConfig) -> Self {
        Self::from_pipeline(
            pipeline_for(c),
            format!("gstreamer {:?}", c.source).to_lowercase(),
        )
    }

    pub fn from_pipeline(text: String, description: String) -> Self {
        Self {
            text,
            description,
            pipeline: None,
        }
    }

    /// The first error or end-of-stream waiting on the bus, if any.
    fn bus_failure(pipeline: &gst::Pipeline, wait: Duration) -> Option<CameraError> {
        let bus = pipeline.bus()?;
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(wait.as_millis() as u64),
            &[gst::MessageType::Error, gst::MessageType::Eos],
        )?;
        match msg.view() {
            gst::MessageView::Eos(_) => Some(CameraError::EndOfStream),
            gst::MessageView::Error(e) => Some(CameraError::Unavailable(format!(
                "{}{}",
                e.error(),
                e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
            ))),
            _ => None,
        }
    }
}

fn find_appsink(pipeline: &gst::Pipeline) -> Option<AppSink> {
    if let Some(e) = pipeline.by_name(SINK) {
        return e.downcast::<AppSink>().ok();
    }
    pipeline
        .iterate_sinks()
        .into_iter()
        .flatten()
        .find_map(|e| e.downcast::<AppSink>().ok())
}

impl FrameSource for GstSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn start(&mut self) -> Result<(), CameraError> {
        gst::init().map_err(|e| CameraError::Unavailable(format!("GStreamer: {e}")))?;
        let element = gst::parse::launch(&self.text)
            .map_err(|e| CameraError::Unavailable(format!("pipeline {:?}: {e}", self.text)))?;
        let pipeline = element
            .downcast::<gst::Pipeline>()
            .map_err(|_| CameraError::Unavailable(format!("{:?} is not a pipeline", self.text)))?;
        let sink = find_appsink(&pipeline).ok_or_else(|| {
            CameraError::Unavailable(format!("pipeline {:?} has no appsink", self.text))
        })?;
        if sink.caps().is_none() {
            sink.set_caps(Some(
                &gst::Caps::builder("video/x-raw")
                    .field("format", "RGB")
                    .build(),
            ));
        }
        sink.set_max_buffers(1);
        sink.set_drop(true);
        let started = pipeline.set_state(gst::State::Playing);
        // Most failures (missing device, unreachable host) arrive on the bus at once.
        if let Some(e) = Self::bus_failure(
            &pipeline,
            Duration::from_millis(if started.is_err() { 500 } else { 50 }),
        ) {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(e);
        }
        if let Err(e) = started {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(CameraError::Unavailable(format!(
                "pipeline does not start: {e}"
            )));
        }
        self.pipeline = Some((pipeline, sink));
        Ok(())
    }

    fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, CameraError> {
        let Some((pipeline, sink)) = &self.pipeline else {
            return Err(CameraError::Unavailable("not started".into()));
        };
        if let Some(e) = Self::bus_failure(pipeline, Duration::ZERO) {
            return Err(e);
        }
        let Some(sample) =
            sink.try_pull_sample(gst::ClockTime::from_mseconds(timeout.as_millis() as u64))
        else {
            if sink.is_eos() {
                return Err(CameraError::EndOfStream);
            }
            return Ok(None);
        };
        let captured_at = std::time::SystemTime::now();
        frame_from_sample(&sample).map(|mut f| {
            f.captured_at = captured_at;
            Some(f)
        })
    }

    fn stop(&mut self) {
        if let Some((pipeline, _)) = self.pipeline.take() {
            let _ = pipeline.set_state(gst::State::Null);
        }
    }
}

impl Drop for GstSource {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies an RGB sample into a frame, dropping row padding.
fn frame_from_sample(sample: &gst::Sample) -> Result<Frame, CameraError> {
    let bad = |why: String| CameraError::BadFrame(why);
    let caps = sample
        .caps()
        .ok_or_else(|| bad("sample without caps".into()))?;
    let info = gstreamer_video::VideoInfo::from_caps(caps).map_err(|e| bad(e.to_string()))?;
    if info.format() != gstreamer_video::VideoFormat::Rgb {
        return Err(CameraError::Unavailable(format!(
            "the appsink receives {:?}; it must receive RGB (video/x-raw,format=RGB)",
            info.format()
        )));
    }
    let buffer = sample
        .buffer()
        .ok_or_else(|| bad("sample without buffer".into()))?;
    let map = buffer.map_readable().map_err(|e| bad(e.to_string()))?;
    let stride = info.stride()[0] as usize;
    let (rgb, w, h) = convert::to_rgb(
        PixelFormat::Rgb,
        info.width(),
        info.height(),
        stride,
        map.as_slice(),
    )
    .map_err(|e| bad(e.to_string()))?;
    Frame::from_rgb(w, h, rgb).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_expand_to_pipelines_ending_in_an_rgb_appsink() {
        let mut c = CameraConfig::default();
        for (kind, needle) in [
            (SourceKind::Test, "videotestsrc is-live=true pattern=smpte"),
            (SourceKind::Libcamera, "libcamerasrc"),
            (
                SourceKind::Nvargus,
                "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM)",
            ),
            (SourceKind::Rtsp, "uridecodebin uri=\"rtsp://cam/stream\""),
            (SourceKind::GstV4l2, "v4l2src device=\"/dev/video0\""),
            (
                SourceKind::File,
                "filesrc location=\"/tmp/a \\\"b\\\".mp4\"",
            ),
        ] {
            c.source = kind;
            c.url = "rtsp://cam/stream".into();
            c.path = "/tmp/a \"b\".mp4".into();
            let p = pipeline_for(&c);
            assert!(p.contains(needle), "{kind:?}: {p}");
            assert!(
                p.ends_with(&format!(
                    "appsink name={SINK} max-buffers=1 drop=true sync={}",
                    kind == SourceKind::File
                )),
                "{p}"
            );
        }
    }

    #[test]
    fn custom_pipelines_get_an_appsink_when_they_lack_one() {
        let mut c = CameraConfig {
            source: SourceKind::Gstreamer,
            pipeline: "videotestsrc ! ".into(),
            ..CameraConfig::default()
        };
        assert!(pipeline_for(&c).starts_with("videotestsrc ! videorate"));
        c.pipeline = "videotestsrc ! videoconvert ! appsink name=x".into();
        assert_eq!(pipeline_for(&c), c.pipeline);
    }
}
