//! Cameras: frames in, newest first, nothing piling up.
//!
//! A [`FrameSource`] is one kind of camera (V4L2, a GStreamer pipeline, still images).
//! [`Camera::spawn`] runs a source on its own thread: it asks for a frame only when the
//! next one is due (`camera.capture_rate`), publishes it on a `watch` channel that holds
//! just the newest frame, and when the source fails (missing, unplugged, stream dropped,
//! end of file) reports it once, retries with backoff and says when it is back.

pub mod convert;
pub mod gst;
pub mod still;
pub mod v4l2;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use crate::backoff::Backoff;
use crate::config::{CameraConfig, SourceKind};
use crate::frame::Frame;

/// Why a camera produced no frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CameraError {
    #[error("{0}")]
    Unavailable(String),
    #[error("the stream ended")]
    EndOfStream,
    #[error("no frame for {0:?}")]
    Stalled(Duration),
    #[error("bad frame: {0}")]
    BadFrame(String),
}

/// One kind of camera. Implementations do I/O; [`Camera`] decides when.
pub trait FrameSource: Send {
    /// Human-readable name used in logs ("v4l2 /dev/video0").
    fn describe(&self) -> String;
    /// Opens the device or starts the pipeline.
    fn start(&mut self) -> Result<(), CameraError>;
    /// The newest frame, waiting up to `timeout`; `Ok(None)` when none came in time.
    fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, CameraError>;
    /// Releases the device; `start` may be called again after.
    fn stop(&mut self);
}

/// Builds the source a configuration names.
pub fn source_for(config: &CameraConfig) -> Box<dyn FrameSource> {
    match config.source {
        SourceKind::V4l2 => Box::new(v4l2::V4l2Source::new(config)),
        SourceKind::Image => Box::new(still::StillSource::new(&config.path)),
        _ => Box::new(gst::GstSource::new(config)),
    }
}

/// When the next frame is due, given the last published one and the rate.
pub fn next_due(last: Option<Instant>, rate: f64) -> Option<Instant> {
    last.map(|t| t + Duration::from_secs_f64(1.0 / rate))
}

/// What the capture thread is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraStatus {
    Starting,
    Running,
    /// The source failed; it is retried after `retry_in`.
    Down {
        reason: String,
        retry_in: Duration,
    },
    Stopped,
}

/// Timing knobs of the capture loop.
#[derive(Debug, Clone, Copy)]
pub struct CaptureTiming {
    /// Frames per second published.
    pub rate: f64,
    /// A source that yields nothing for this long is restarted.
    pub stall_after: Duration,
    pub backoff_first: Duration,
    pub backoff_max: Duration,
}

impl CaptureTiming {
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            stall_after: Duration::from_secs(10),
            // A camera plugged back in is found within about two seconds; retrying a
            // missing device this often costs nothing worth saving.
            backoff_first: Duration::from_millis(500),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// A running camera: the newest frame and the status, each on a `watch` channel.
#[derive(Debug)]
pub struct Camera {
    frames: watch::Receiver<Option<Arc<Frame>>>,
    status: watch::Receiver<CameraStatus>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Camera {
    /// Starts capturing from `source` on a thread of its own.
    pub fn spawn(source: Box<dyn FrameSource>, timing: CaptureTiming) -> std::io::Result<Self> {
        let (frame_tx, frames) = watch::channel(None);
        let (status_tx, status) = watch::channel(CameraStatus::Starting);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("camera".into())
            .spawn(move || capture_loop(source, timing, &frame_tx, &status_tx, &flag))?;
        Ok(Self {
            frames,
            status,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts the camera a configuration section describes, paced at its capture rate.
    pub fn start(config: &CameraConfig) -> std::io::Result<Self> {
        Self::spawn(source_for(config), CaptureTiming::new(config.capture_rate))
    }

    /// The newest frame, if any has arrived.
    pub fn latest(&self) -> Option<Arc<Frame>> {
        self.frames.borrow().clone()
    }

    /// A receiver that wakes on every new frame (async code).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Frame>>> {
        self.frames.clone()
    }

    pub fn status(&self) -> CameraStatus {
        self.status.borrow().clone()
    }

    /// Blocks until a frame newer than `after_seq` arrives, or `timeout` passes.
    pub fn wait_newer(&self, after_seq: u64, timeout: Duration) -> Option<Arc<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.latest().filter(|f| f.seq > after_seq) {
                return Some(f);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Sleeps until `until`, waking early when `stop` is set. Returns false when stopped.
fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

fn capture_loop(
    mut source: Box<dyn FrameSource>,
    timing: CaptureTiming,
    frames: &watch::Sender<Option<Arc<Frame>>>,
    status: &watch::Sender<CameraStatus>,
    stop: &AtomicBool,
) {
    let name = source.describe();
    let _span = tracing::info_span!("camera", source = %name).entered();
    let mut backoff = Backoff::new(timing.backoff_first, timing.backoff_max);
    let mut outage: Option<String> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let failure = match source.start() {
            Ok(()) => run_source(
                source.as_mut(),
                timing,
                frames,
                status,
                stop,
                &mut seq,
                &mut outage,
                &mut backoff,
            ),
            Err(e) => e,
        };
        source.stop();
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // A file that ended is simply played again.
        let delay = if failure == CameraError::EndOfStream && outage.is_none() {
            tracing::debug!("end of stream; restarting");
            Duration::from_millis(10)
        } else {
            let reason = failure.to_string();
            if outage.as_deref() != Some(reason.as_str()) {
                tracing::warn!("camera {name} unavailable: {reason}; retrying with backoff");
            }
            let d = backoff.next_delay();
            status.send_replace(CameraStatus::Down {
                reason: reason.clone(),
                retry_in: d,
            });
            outage = Some(reason);
            d
        };
        if !sleep_until(Instant::now() + delay, stop) {
            break;
        }
    }
    source.stop();
    status.send_replace(CameraStatus::Stopped);
}

/// Pulls frames from a started source until it fails or `stop` is set.
#[allow(clippy::too_many_arguments)]
fn run_source(
    source: &mut dyn FrameSource,
    timing: CaptureTiming,
    frames: &watch::Sender<Option<Arc<Frame>>>,
    status: &watch::Sender<CameraStatus>,
    stop: &AtomicBool,
    seq: &mut u64,
    outage: &mut Option<String>,
    backoff: &mut Backoff,
) -> CameraError {
    let mut last_published: Option<Instant> = None;
    let mut last_frame = Instant::now();
    loop {
        if let Some(due) = next_due(last_published, timing.rate) {
            if !sleep_until(due, stop) {
                return CameraError::Unavailable("stopped".into());
            }
        }
        if stop.load(Ordering::Relaxed) {
            return CameraError::Unavailable("stopped".into());
        }
        match source.next(Duration::from_millis(250)) {
            Ok(Some(mut frame)) => {
                if let Some(reason) = outage.take() {
                    tracing::info!("camera is back (was: {reason})");
                }
                backoff.reset();
                if *status.borrow() != CameraStatus::Running {
                    status.send_replace(CameraStatus::Running);
                }
                *seq += 1;
                frame.seq = *seq;
                frames.send_replace(Some(Arc::new(frame)));
                last_published = Some(Instant::now());
                last_frame = Instant::now();
            }
            Ok(None) if last_frame.elapsed() >= timing.stall_after => {
                return CameraError::Stalled(timing.stall_after);
            }
            Ok(None) => {}
            Err(CameraError::BadFrame(why)) => {
                // One broken frame is not an outage; a run of them ends in a stall.
                tracing::debug!("skipping a bad frame: {why}");
            }
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    #[test]
    fn frames_are_due_at_the_capture_rate() {
        let t = Instant::now();
        assert_eq!(next_due(None, 2.0), None);
        assert_eq!(next_due(Some(t), 2.0), Some(t + Duration::from_millis(500)));
    }

    type Outcomes<T> = Arc<Mutex<VecDeque<Result<T, CameraError>>>>;

    /// A scripted source: each start and each next pops the next scripted outcome.
    struct Script {
        starts: Outcomes<()>,
        frames: Outcomes<Option<u8>>,
    }

    impl FrameSource for Script {
        fn describe(&self) -> String {
            "script".into()
        }
        fn start(&mut self) -> Result<(), CameraError> {
            self.starts.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
        fn next(&mut self, _timeout: Duration) -> Result<Option<Frame>, CameraError> {
            match self.frames.lock().unwrap().pop_front() {
                Some(Ok(Some(v))) => Ok(Some(Frame::from_rgb(1, 1, vec![v, v, v]).unwrap())),
                Some(Ok(None)) | None => {
                    std::thread::sleep(Duration::from_millis(5));
                    Ok(None)
                }
                Some(Err(e)) => Err(e),
            }
        }
        fn stop(&mut self) {}
    }

    fn fast() -> CaptureTiming {
        CaptureTiming {
            rate: 1000.0,
            stall_after: Duration::from_millis(200),
            backoff_first: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
        }
    }

    #[test]
    fn a_missing_camera_is_retried_and_picked_up() {
        let starts = VecDeque::from([
            Err(CameraError::Unavailable("no such device".into())),
            Err(CameraError::Unavailable("no such device".into())),
            Ok(()),
        ]);
        let frames = VecDeque::from([Ok(Some(7u8)), Ok(Some(8))]);
        let src = Script {
            starts: Arc::new(Mutex::new(starts)),
            frames: Arc::new(Mutex::new(frames)),
        };
        // Slow enough for the 10 ms polling of wait_newer to see every frame.
        let cam = Camera::spawn(
            Box::new(src),
            CaptureTiming {
                rate: 20.0,
                ..fast()
            },
        )
        .unwrap();
        let f = cam
            .wait_newer(0, Duration::from_secs(5))
            .expect("a frame after the retries");
        assert_eq!(f.rgb[0], 7);
        assert_eq!(f.seq, 1);
        let g = cam.wait_newer(1, Duration::from_secs(5)).unwrap();
        assert_eq!((g.rgb[0], g.seq), (8, 2));
    }

    #[test]
    fn a_failing_stream_restarts_and_frames_resume_with_rising_seq() {
        let frames = VecDeque::from([
            Ok(Some(1u8)),
            Err(CameraError::Unavailable("stream dropped".into())),
            Ok(Some(2)),
            Err(CameraError::BadFrame("corrupt".into())),
            Ok(Some(3)),
        ]);
        let src = Script {
            starts: Arc::default(),
            frames: Arc::new(Mutex::new(frames)),
        };
        // Slow enough for the 10 ms polling of wait_newer to see every frame.
        let timing = CaptureTiming {
            rate: 20.0,
            ..fast()
        };
        let cam = Camera::spawn(Box::new(src), timing).unwrap();
        let mut seen = vec![];
        let mut seq = 0;
        while let Some(f) = cam.wait_newer(seq, Duration::from_secs(5)) {
            seen.push(f.rgb[0]);
            seq = f.seq;
            if seen.len() == 3 {
                break;
            }
        }
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(seq, 3);
    }

    #[test]
    fn a_silent_source_is_declared_stalled() {
        let src = Script {
            starts: Arc::default(),
            frames: Arc::default(),
        };
        let cam = Camera::spawn(Box::new(src), fast()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let CameraStatus::Down { reason, .. } = cam.status() {
                assert!(reason.contains("no frame"), "{reason}");
                break;
            }
            assert!(Instant::now() < deadline, "never declared down");
            std::thread::sleep(Duration::from_millis(10));
        }
        cam.stop();
    }
}

/// Takes one frame from a source started for the purpose (command-line use).
pub fn grab_one(source: &mut dyn FrameSource, timeout: Duration) -> Result<Frame, CameraError> {
    source.start()?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        match source.next(Duration::from_millis(200)) {
            Ok(Some(f)) => break Ok(f),
            Ok(None) | Err(CameraError::BadFrame(_)) if Instant::now() < deadline => {}
            Ok(None) | Err(CameraError::BadFrame(_)) => break Err(CameraError::Stalled(timeout)),
            Err(e) => break Err(e),
        }
    };
    source.stop();
    result
}

/// Reads a `--camera` argument into a camera section, starting from `base`:
/// `test[:pattern]`, `v4l2[:DEVICE]` or a `/dev/...` path, `gst-v4l2[:DEVICE]`,
/// `libcamera`, `nvargus[:SENSOR]`, `rtsp://...` (any `scheme://` URI), `file:PATH`,
/// `image:PATH`, `gst:PIPELINE`, or `config` for `base` itself.
pub fn parse_spec(spec: &str, base: &CameraConfig) -> Result<CameraConfig, String> {
    let mut c = base.clone();
    let (kind, arg) = match spec.split_once(':') {
        Some((k, a)) if !spec.contains("://") => (k, Some(a)),
        _ => (spec, None),
    };
    match (kind, arg) {
        ("config", None) => {}
        ("test", a) => {
            c.source = SourceKind::Test;
            if let Some(p) = a {
                c.pattern = p.into();
            }
        }
        ("v4l2" | "gst-v4l2", a) => {
            c.source = if kind == "v4l2" {
                SourceKind::V4l2
            } else {
                SourceKind::GstV4l2
            };
            if let Some(d) = a {
                c.device = d.into();
            }
        }
        (dev, None) if dev.starts_with("/dev/") => {
            c.source = SourceKind::V4l2;
            c.device = dev.into();
        }
        ("libcamera", None) => c.source = SourceKind::Libcamera,
        ("nvargus", a) => {
            c.source = SourceKind::Nvargus;
            if let Some(n) = a {
                c.sensor_id = n
                    .parse()
                    .map_err(|_| format!("nvargus sensor {n:?} is not a number"))?;
            }
        }
        (uri, None) if uri.contains("://") => {
            c.source = SourceKind::Rtsp;
            c.url = uri.into();
        }
        ("file" | "image", Some(p)) if !p.is_empty() => {
            c.source = if kind == "file" {
                SourceKind::File
            } else {
                SourceKind::Image
            };
            c.path = p.into();
        }
        ("gst", Some(p)) if !p.trim().is_empty() => {
            c.source = SourceKind::Gstreamer;
            c.pipeline = p.into();
        }
        _ => {
            return Err(format!(
                "unknown camera {spec:?}: use test, v4l2[:DEVICE], /dev/videoN, gst-v4l2[:DEVICE], \
                 libcamera, nvargus[:N], rtsp://..., file:PATH, image:PATH, gst:PIPELINE or config"
            ))
        }
    }
    Ok(c)
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn camera_specs_table() {
        let base = CameraConfig::default();
        let ok = |s: &str| parse_spec(s, &base).unwrap();
        assert_eq!(ok("test").source, SourceKind::Test);
        assert_eq!(ok("test:ball").pattern, "ball");
        assert_eq!(
            ok("/dev/video2").device,
            std::path::PathBuf::from("/dev/video2")
        );
        assert_eq!(
            ok("v4l2:/dev/v4l/by-id/usb-cam").device,
            std::path::PathBuf::from("/dev/v4l/by-id/usb-cam")
        );
        assert_eq!(ok("gst-v4l2").source, SourceKind::GstV4l2);
        assert_eq!(ok("nvargus:1").sensor_id, 1);
        assert_eq!(
            ok("rtsp://user:pw@cam:554/s").url,
            "rtsp://user:pw@cam:554/s"
        );
        assert_eq!(ok("file:/tmp/a.mp4").source, SourceKind::File);
        assert_eq!(ok("image:/tmp/pics").source, SourceKind::Image);
        assert_eq!(
            ok("gst:videotestsrc ! appsink").pipeline,
            "videotestsrc ! appsink"
        );
        assert_eq!(ok("config"), base);
        for bad in ["webcam", "file:", "nvargus:x", "gst: ", "libcamera:3"] {
            assert!(parse_spec(bad, &base).is_err(), "{bad}");
        }
    }
}
