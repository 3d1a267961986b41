//! Cameras end to end with real GStreamer pipelines (videotestsrc, a video file made here,
//! pipelines that fail) and the camera commands of the CLI.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use moonwatch::camera::{self, Camera, CameraStatus, CaptureTiming};
use moonwatch::config::{CameraConfig, SourceKind};

fn timing(rate: f64) -> CaptureTiming {
    CaptureTiming {
        rate,
        stall_after: Duration::from_secs(5),
        backoff_first: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
    }
}

/// Writes a short MJPEG AVI with GStreamer itself.
fn make_video(path: &Path, frames: u32) {
    gst::init().unwrap();
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,width=160,height=120,framerate=30/1 ! \
         jpegenc ! avimux ! filesink location=\"{}\"",
        path.display()
    ))
    .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(20),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap();
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    p.set_state(gst::State::Null).unwrap();
}

fn wait_status(cam: &Camera, want: impl Fn(&CameraStatus) -> bool) -> CameraStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = cam.status();
        if want(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "status stuck at {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn test_pattern_frames_arrive_newest_first_at_the_capture_rate() {
    let c = CameraConfig {
        source: SourceKind::Test,
        width: 320,
        height: 240,
        fps: 30,
        capture_rate: 10.0,
        ..CameraConfig::default()
    };
    let cam = Camera::spawn(camera::source_for(&c), timing(c.capture_rate)).unwrap();
    let first = cam
        .wait_newer(0, Duration::from_secs(10))
        .expect("first frame");
    assert_eq!((first.width, first.height), (320, 240));
    assert_eq!(first.rgb.len(), 320 * 240 * 3);
    let t = Instant::now();
    let mut last = first.seq;
    while t.elapsed() < Duration::from_millis(1000) {
        if let Some(f) = cam.wait_newer(last, Duration::from_secs(2)) {
            assert!(f.seq > last);
            last = f.seq;
        }
    }
    // 10 frames a second were asked for out of 30 offered: about 10 in the second.
    let n = last - first.seq;
    assert!(
        (5..=13).contains(&n),
        "{n} frames in one second at capture_rate 10"
    );
    assert_eq!(cam.status(), CameraStatus::Running);
}

#[test]
fn a_video_file_loops_at_end_of_stream() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.avi");
    make_video(&video, 6); // 0.2 s of video
    let c = CameraConfig {
        source: SourceKind::File,
        path: video,
        width: 160,
        height: 120,
        capture_rate: 20.0,
        ..CameraConfig::default()
    };
    let cam = Camera::spawn(camera::source_for(&c), timing(c.capture_rate)).unwrap();
    let mut last = 0;
    let t = Instant::now();
    // Well past the clip's length frames keep coming: the pipeline restarted at EOS.
    while t.elapsed() < Duration::from_millis(1500) {
        if let Some(f) = cam.wait_newer(last, Duration::from_secs(3)) {
            assert_eq!((f.width, f.height), (160, 120));
            last = f.seq;
        }
    }
    assert!(last > 8, "only {last} frames from a looping 6-frame clip");
}

#[test]
fn a_camera_missing_at_start_is_reported_retried_and_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("late.avi");
    let c = CameraConfig {
        source: SourceKind::File,
        path: video.clone(),
        width: 160,
        height: 120,
        ..CameraConfig::default()
    };
    let cam = Camera::spawn(camera::source_for(&c), timing(10.0)).unwrap();
    let down = wait_status(&cam, |s| matches!(s, CameraStatus::Down { .. }));
    if let CameraStatus::Down { reason, .. } = down {
        assert!(reason.contains("late.avi"), "{reason}");
    }
    make_video(&video, 30);
    let f = cam
        .wait_newer(0, Duration::from_secs(10))
        .expect("frames once the file exists");
    assert_eq!(f.seq, 1);
    wait_status(&cam, |s| *s == CameraStatus::Running);
}

#[test]
fn a_camera_that_returns_after_a_long_outage_is_picked_up_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("unplugged.avi");
    let c = CameraConfig {
        source: SourceKind::File,
        path: video.clone(),
        width: 160,
        height: 120,
        ..CameraConfig::default()
    };
    // The shipped timing: the retry delay grows to its cap during a long outage.
    let timing = CaptureTiming::new(4.0);
    let cam = Camera::spawn(camera::source_for(&c), timing).unwrap();
    wait_status(
        &cam,
        |s| matches!(s, CameraStatus::Down { retry_in, .. } if *retry_in == timing.backoff_max),
    );
    make_video(&video, 30);
    let back = std::time::Instant::now();
    let f = cam
        .wait_newer(0, Duration::from_secs(30))
        .expect("frames once the camera is back");
    let took = back.elapsed();
    eprintln!(
        "first frame {took:?} after the camera came back (retry cap {:?})",
        timing.backoff_max
    );
    assert_eq!(f.seq, 1);
    assert!(
        took < timing.backoff_max + Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn a_pipeline_that_errors_is_reported_with_the_reason() {
    let c = CameraConfig {
        source: SourceKind::GstV4l2,
        device: "/dev/video-moonwatch-missing".into(),
        ..CameraConfig::default()
    };
    let cam = Camera::spawn(camera::source_for(&c), timing(5.0)).unwrap();
    let s = wait_status(&cam, |s| matches!(s, CameraStatus::Down { .. }));
    let CameraStatus::Down { reason, retry_in } = s else {
        unreachable!()
    };
    assert!(reason.contains("/dev/video-moonwatch-missing"), "{reason}");
    assert!(retry_in >= Duration::from_millis(100));
    // It keeps retrying with growing delays rather than giving up.
    wait_status(
        &cam,
        |s| matches!(s, CameraStatus::Down { retry_in, .. } if *retry_in >= Duration::from_millis(200)),
    );
    cam.stop();
}

fn moonwatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moonwatch"))
        .args(args)
        .env_remove("MOONWATCH_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn snapshot_writes_a_jpeg_from_a_test_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("snap.jpg");
    let o = moonwatch(&["snapshot", "--camera", "test", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (640, 480));
    let o = moonwatch(&[
        "snapshot",
        "--camera",
        "gst:videotestsrc pattern=ball ! video/x-raw,width=200,height=100",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(image::open(&out).unwrap().width(), 200);
}

#[test]
fn camera_commands_fail_cleanly_without_hardware() {
    let o = moonwatch(&["cameras"]);
    assert!(o.status.success());
    if camera::v4l2::list_devices().is_empty() {
        assert!(String::from_utf8_lossy(&o.stdout).contains("no V4L2 cameras"));
    }
    let o = moonwatch(&[
        "snapshot",
        "--camera",
        "/dev/video-moonwatch-missing",
        "-o",
        "/tmp/never.jpg",
        "--timeout",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(66));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("/dev/video-moonwatch-missing"), "{err}");
    let o = moonwatch(&["snapshot", "--camera", "webcam", "-o", "/tmp/never.jpg"]);
    assert_eq!(o.status.code(), Some(64));
}

#[test]
fn caption_from_the_test_camera_runs_end_to_end() {
    let pair = common::tiny();
    let o = moonwatch(&[
        "caption",
        "--camera",
        "test",
        "--model",
        pair.text.to_str().unwrap(),
        "--mmproj",
        pair.mmproj.to_str().unwrap(),
        "--threads",
        "2",
        "--max-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!o.stdout.is_empty());
}
