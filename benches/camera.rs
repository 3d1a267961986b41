//! Camera benchmark: pixel-format conversion throughput against a plain copy of the same
//! bytes, capture-to-ready latency, and the CPU an idle 1 fps capture costs.
//!
//! `cargo bench --bench camera`; prints Markdown for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use moonwatch::camera::convert::{to_rgb, PixelFormat};
use moonwatch::camera::{self, Camera, CaptureTiming};
use moonwatch::config::{CameraConfig, SourceKind};

/// Median seconds per call of `f`, over enough calls to fill about half a second.
fn time_it(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_millis(100) {
        f();
        n += 1;
    }
    let per = t.elapsed().as_secs_f64() / f64::from(n.max(1));
    let reps = ((0.5 / per) as usize).clamp(5, 2000);
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps / 5 + 1 {
                f();
            }
            t.elapsed().as_secs_f64() / (reps / 5 + 1) as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}

fn input(format: PixelFormat, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    match format {
        PixelFormat::Mjpeg => {
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
                .encode_image(&img)
                .unwrap();
            out
        }
        PixelFormat::Yuyv => (0..w * h * 2).map(|i| (i * 7 % 251) as u8).collect(),
        PixelFormat::Nv12 => (0..w * h * 3 / 2).map(|i| (i * 7 % 251) as u8).collect(),
        PixelFormat::Rgb | PixelFormat::Bgr => img.into_raw(),
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn main() {
    println!("| conversion | size | input MB | time | Mpixel/s | bytes moved/s | plain copy of input+output bytes | copy GB/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for (w, h) in [(640u32, 480u32), (1920, 1080)] {
        for format in [PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Mjpeg] {
            let data = input(format, w, h);
            let conv = time_it(|| {
                black_box(to_rgb(format, w, h, 0, black_box(&data)).unwrap());
            });
            // The same traffic as the conversion: read the input, write an RGB frame.
            let out_len = (w * h * 3) as usize;
            let mut out = vec![0u8; out_len];
            let copy = time_it(|| {
                let src = black_box(&data);
                for chunk in out.chunks_mut(src.len()) {
                    chunk.copy_from_slice(&src[..chunk.len()]);
                }
                black_box(&out);
            });
            let mp = f64::from(w * h) / 1e6;
            let moved = (data.len() + out_len) as f64;
            println!(
                "| {format:?} -> RGB | {w}x{h} | {:.2} | {:.3} ms | {:.0} | {:.1} GB/s | {:.3} ms | {:.1} GB/s |",
                data.len() as f64 / 1e6,
                conv * 1e3,
                mp / conv,
                moved / conv / 1e9,
                copy * 1e3,
                moved / copy / 1e9
            );
        }
    }

    // The model's input: every frame stretched to 378x378 (bicubic), as Moondream's
    // reference does, before the vision encoder (seconds on a Pi) sees it.
    println!();
    println!("| stretch to the model's input (Frame::stretched, Catmull-Rom) | time |");
    println!("|---|---|");
    for (w, h) in [(640u32, 480u32), (1280, 720), (1920, 1080)] {
        let rgb = input(PixelFormat::Rgb, w, h);
        let frame = moonwatch::frame::Frame::from_rgb(w, h, rgb).unwrap();
        let t = time_it(|| {
            black_box(black_box(&frame).stretched(378, 378));
        });
        println!("| {w}x{h} -> 378x378 | {:.2} ms |", t * 1e3);
    }
    println!();

    // Capture-to-ready: from the moment a frame is pulled from the pipeline to the moment a
    // consumer holding the watch channel sees it (conversion, hash, publish).
    let c = CameraConfig {
        source: SourceKind::Test,
        width: 640,
        height: 480,
        fps: 30,
        capture_rate: 30.0,
        ..CameraConfig::default()
    };
    let cam = Camera::spawn(camera::source_for(&c), CaptureTiming::new(30.0)).unwrap();
    let mut seq = cam.wait_newer(0, Duration::from_secs(10)).unwrap().seq;
    let mut lat = Vec::new();
    while lat.len() < 60 {
        if let Some(f) = cam.latest().filter(|f| f.seq > seq) {
            seq = f.seq;
            lat.push(
                SystemTime::now()
                    .duration_since(f.captured_at)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1e3,
            );
        } else {
            std::thread::yield_now();
        }
    }
    cam.stop();
    lat.sort_by(f64::total_cmp);
    println!();
    println!(
        "capture-to-ready, 640x480 test pattern, 60 frames: median {:.2} ms, p90 {:.2} ms",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10]
    );

    // Idle capture: the whole process's CPU time over 10 s at capture_rate 1.
    println!();
    println!("| idle capture, 640x480 test pattern | CPU over 10 s | share of one core |");
    println!("|---|---|---|");
    for camera_fps in [15, 1] {
        let c = CameraConfig {
            source: SourceKind::Test,
            fps: camera_fps,
            capture_rate: 1.0,
            ..CameraConfig::default()
        };
        let cam = Camera::spawn(camera::source_for(&c), CaptureTiming::new(1.0)).unwrap();
        cam.wait_newer(0, Duration::from_secs(10)).unwrap();
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        std::thread::sleep(Duration::from_secs(10));
        let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
        let frames = cam.latest().map_or(0, |f| f.seq);
        cam.stop();
        println!(
            "| camera at {camera_fps} fps, 1 frame/s to the engine ({frames} frames) | {:.3} s | {:.2}% |",
            cpu,
            cpu / wall * 100.0
        );
    }
}
