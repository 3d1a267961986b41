//! Crops benchmark: what `model.crops = "reference"` (Moondream 2025's overlap crops) costs
//! against one stretched crop, on a full-shape random-weight 2025-04-14 checkpoint
//! converted by `model convert` (speed depends on shapes, not values), with region heads
//! as shipped (flash attention `auto`: off).
//!
//! `cargo bench --bench crops` (release build). Each case runs in a process of its own so
//! that its peak RSS is its own. Environment: `MOONWATCH_BENCH_MODELS` (see
//! `benches/common`), `MOONWATCH_BENCH_THREADS` (default 2), `MOONWATCH_BENCH_REPS`
//! (new pictures per case, default 2).
//!
//! Prints a Markdown table for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;

use moonwatch::config::CropMode;
use moonwatch::frame::Frame;
use moonwatch::vision::moondream::{self, Settings};
use moonwatch::vision::{Request, Skill};

/// (name, picture size, crops mode, max_crops).
const CASES: [(&str, (u32, u32), CropMode, u32); 4] = [
    (
        "one crop (1280x720 stretched)",
        (1280, 720),
        CropMode::One,
        12,
    ),
    (
        "reference, max_crops 4 (1280x720: 1x2)",
        (1280, 720),
        CropMode::Reference,
        4,
    ),
    (
        "reference, max_crops 4 (640x480: 2x2)",
        (640, 480),
        CropMode::Reference,
        4,
    ),
    (
        "reference, max_crops 12 (1280x720: 2x4)",
        (1280, 720),
        CropMode::Reference,
        12,
    ),
];

/// A picture with detail everywhere (what a camera frame has), new for each seed.
fn picture((w, h): (u32, u32), seed: u32) -> Arc<Frame> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) ^ (x * y / 97);
        image::Rgb([v as u8, (v >> 3) as u8, (x + y + seed) as u8])
    });
    Arc::new(Frame::from_rgb(w, h, img.into_raw()).unwrap())
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One case, in this process: prints `crops resize encode prefill ttft rss`.
fn child(case: usize) {
    let threads = common::env_or("MOONWATCH_BENCH_THREADS", 2) as u32;
    let reps = common::env_or("MOONWATCH_BENCH_REPS", 2) as u32;
    let (_, size, mode, max_crops) = CASES[case];
    let f = common::ref2025();
    let mut s = Settings::for_files(&f.text, &f.mmproj, threads);
    s.model.vision_on_gpu = false;
    s.model.revision = moonwatch::vision::Revision::Moondream20250414;
    s.model.region = Some(f.region.clone());
    s.model.crops = mode;
    s.model.max_crops = max_crops;
    let e = moondream::start(s).unwrap();
    let (mut crops, mut resize, mut encode, mut prefill, mut ttft) =
        (0, vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        let frame = picture(size, rep + 1);
        let question = Skill::Query {
            question: "What is in the picture?".into(),
        };
        let r = e.run(Request::new(frame, vec![question])).unwrap();
        let p = &r.prefix;
        assert!(!p.reused);
        crops = p.crops;
        resize.push(p.resize_ms);
        encode.push(p.image_encode_ms);
        prefill.push(p.image_prefill_ms);
        let first = r.answers[0].timing.first_token_ms;
        ttft.push(first);
    }
    e.shutdown();
    println!(
        "{crops} {} {} {} {} {}",
        median(resize),
        median(encode),
        median(prefill),
        median(ttft),
        peak_rss_mb()
    );
}

fn main() {
    if let Some(case) = std::env::var("MOONWATCH_BENCH_CROPS_CASE")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        return child(case);
    }
    // Make the files once, before the cases time anything.
    common::ref2025();
    println!("| case | crops | resize | vision encode | per crop | image prefill | time to first token | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (name, ..)) in CASES.iter().enumerate() {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("MOONWATCH_BENCH_CROPS_CASE", i.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<f64> = text
            .lines()
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() != 6 {
            panic!("{name}: {text}\n{}", String::from_utf8_lossy(&out.stderr));
        }
        println!(
            "| {name} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} s | {:.0} MB |",
            v[0],
            v[1],
            v[2],
            v[2] / v[0].max(1.0),
            v[3],
            v[4] / 1e3,
            v[5]
        );
    }
}
