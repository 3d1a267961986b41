//! Region heads benchmark: real detect and point (Moondream2 2025-04-14's region heads)
//! against a text-parsed box, and the two-way image prefix against the causal one, on a
//! full-shape random-weight 2025-04-14 checkpoint converted by `model convert` (speed
//! depends on shapes, not values).
//!
//! `cargo bench --bench region` (release build). Environment:
//! - `MOONWATCH_BENCH_MODELS`: model directory (default `~/.cache/moonwatch/bench-models`);
//!   `ref2025/` there is made when missing (a BF16 checkpoint in the release's layout,
//!   converted, the text model quantized to Q4_0, the checkpoint then removed).
//! - `MOONWATCH_BENCH_THREADS` (default 2), `MOONWATCH_BENCH_REPS` (default 3),
//!   `MOONWATCH_BENCH_FLASH` (`on`, `off`, default `auto`: `model.flash_attention`),
//!   `MOONWATCH_BENCH_KV` (`f16`, `f32`, default `auto`: `model.kv_cache_type`).
//!
//! Prints a Markdown table for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Ref2025;

use std::sync::Arc;
use std::time::Instant;

use moonwatch::config::{FlashAttention, KvCacheKind};
use moonwatch::frame::Frame;
use moonwatch::vision::moondream::{self, Settings};
use moonwatch::vision::region::RegionHeads;
use moonwatch::vision::{Answer, Engine, Request, Response, Skill};

fn env_or(key: &str, default: u32) -> u32 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings(f: &Ref2025, region: bool, threads: u32) -> Settings {
    let mut s = Settings::for_files(&f.text, &f.mmproj, threads);
    s.model.vision_on_gpu = false;
    s.model.revision = moonwatch::vision::Revision::Moondream20250414;
    if region {
        s.model.region = Some(f.region.clone());
    }
    // MOONWATCH_BENCH_FLASH=on|off|auto (default auto: off with region heads).
    s.model.flash_attention = match std::env::var("MOONWATCH_BENCH_FLASH").as_deref() {
        Ok("on") => FlashAttention::On,
        Ok("off") => FlashAttention::Off,
        _ => FlashAttention::Auto,
    };
    // MOONWATCH_BENCH_KV=f16|f32|auto (default auto: F32 with region heads).
    s.model.kv_cache_type = match std::env::var("MOONWATCH_BENCH_KV").as_deref() {
        Ok("f16") => KvCacheKind::F16,
        Ok("f32") => KvCacheKind::F32,
        _ => KvCacheKind::Auto,
    };
    s
}

fn frame(seed: u8) -> Arc<Frame> {
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(seed),
            (y as u8).wrapping_add(seed),
            seed,
        ])
    });
    Arc::new(Frame::from_rgb(640, 480, img.into_raw()).unwrap())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run(e: &Engine, f: &Arc<Frame>, skills: Vec<Skill>) -> Response {
    e.run(Request::new(f.clone(), skills)).unwrap()
}

fn main() {
    let threads = env_or("MOONWATCH_BENCH_THREADS", 2);
    let reps = env_or("MOONWATCH_BENCH_REPS", 3) as u8;
    let f = common::ref2025();

    // The heads alone (Rust, one thread), full dimensions.
    let heads = RegionHeads::load(&f.region).unwrap();
    let hidden: Vec<f32> = (0..heads.dim)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let time = |g: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..20 {
            g();
        }
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    };
    let coord_ms = time(&|| {
        std::hint::black_box(heads.decode_coord(&hidden));
    });
    let size_ms = time(&|| {
        std::hint::black_box(heads.decode_size(&hidden));
    });
    let encode_ms = time(&|| {
        std::hint::black_box(heads.encode_coord(0.5));
        std::hint::black_box(heads.encode_size(0.1, 0.2));
    });

    // A text box answer such as " [0.12, 0.34, 0.56, 0.78]" is 17 tokens.
    let box_tokens = moonwatch::vision::gpt2::ids(" [0.12, 0.34, 0.56, 0.78]")
        .unwrap()
        .len() as u32;

    // Region heads: prefix (two-way), detect and point; a plain question on the same
    // engine gives its ms per token decode step (no capture) for comparison.
    let mut s = settings(&f, true, threads);
    s.ignore_eos = true;
    s.model.max_tokens = box_tokens;
    let e = moondream::start(s).unwrap();
    let (mut two_way, mut per_box, mut per_point, mut objects, mut first, mut step_region) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in 0..reps {
        let fr = frame(10 + r);
        let resp = run(
            &e,
            &fr,
            vec![
                Skill::Detect {
                    object: "person".into(),
                },
                Skill::Point {
                    object: "person".into(),
                },
                Skill::Query {
                    question: "What is it?".into(),
                },
            ],
        );
        two_way.push(resp.prefix.image_prefill_ms);
        for a in &resp.answers {
            let n = match &a.answer {
                Answer::Detect { objects, .. } => objects.len(),
                Answer::Point { points, .. } => points.len(),
                _ => 0,
            };
            let t = &a.timing;
            let loop_ms = t.decode_ms / n.max(1) as f64;
            match a.answer {
                Answer::Detect { .. } => {
                    per_box.push(loop_ms);
                    objects.push(n as f64);
                    first.push(t.prefill_ms);
                }
                Answer::Point { .. } => per_point.push(loop_ms),
                _ => step_region.push(t.decode_ms / f64::from(t.decode_steps.max(1))),
            }
        }
    }
    e.shutdown();

    // The prompted path on the same files: causal prefix, presence question, then a box
    // as text.
    let mut s = settings(&f, false, threads);
    s.ignore_eos = true;
    s.model.max_tokens = box_tokens;
    let e = moondream::start(s).unwrap();
    let (mut causal, mut text_box, mut step) = (vec![], vec![], vec![]);
    for r in 0..reps {
        let fr = frame(40 + r);
        let resp = run(
            &e,
            &fr,
            vec![
                Skill::YesNo {
                    question: "Is there a person in this image?".into(),
                },
                Skill::Query {
                    question: "Bounding box: person".into(),
                },
            ],
        );
        causal.push(resp.prefix.image_prefill_ms);
        let [yn, q] = [&resp.answers[0].timing, &resp.answers[1].timing];
        assert_eq!(q.generated_tokens, box_tokens);
        text_box.push(yn.prefill_ms + q.prefill_ms + q.decode_ms);
        step.push(q.decode_ms / f64::from(q.decode_steps.max(1)));
    }
    e.shutdown();

    println!("\n| measure (full-shape 2025-04-14, text Q4_0, {threads} threads, median of {reps}) | value |");
    println!("|---|---|");
    println!(
        "| image prefix prefill, causal (BOS token, then 729 embeddings) | {:.0} ms |",
        median(causal)
    );
    println!(
        "| image prefix prefill, two-way (730 embeddings, one batch) | {:.0} ms |",
        median(two_way)
    );
    println!(
        "| detect prompt prefill (region) | {:.0} ms |",
        median(first)
    );
    println!(
        "| region heads: time per box (3 decode steps + heads) | {:.0} ms |",
        median(per_box)
    );
    println!(
        "| region heads: time per point (2 decode steps + heads) | {:.0} ms |",
        median(per_point)
    );
    println!(
        "| objects per detect (random weights: the 50-object cap) | {:.0} |",
        median(objects)
    );
    println!(
        "| text-parsed box: presence question + box prompt + {box_tokens} tokens | {:.0} ms |",
        median(text_box)
    );
    println!(
        "| one decode step, token in (prompted engine / region engine) | {:.0} / {:.0} ms |",
        median(step),
        median(step_region)
    );
    println!("| heads alone: coordinate decoder / size decoder / both encoders | {coord_ms:.1} / {size_ms:.1} / {encode_ms:.2} ms |");
}
