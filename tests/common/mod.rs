//! Shared fixtures: the tiny random-weight Moondream pair and small test images.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

pub mod scenes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moonwatch::frame::Frame;
use moonwatch::model::synth::{self, Pair};
use moonwatch::vision::moondream::Settings;

/// The tiny pair, generated once into cargo's per-target scratch directory.
pub fn tiny() -> Pair {
    synth::tiny_pair_in(&scratch("tiny-moondream")).expect("tiny model")
}

/// Engine settings for the tiny pair: two threads, so outputs are reproducible.
pub fn settings(pair: &Pair) -> Settings {
    let mut s = Settings::for_files(&pair.text, &pair.mmproj, 2);
    gpu(&mut s);
    s.model.max_tokens = 24;
    s.model.queue_depth = 4;
    s
}

/// MOONWATCH_TEST_GPU_LAYERS (default 0): layers on the GPU, the vision encoder with them,
/// for running the engine tests on a CUDA build (scripts/cuda-device/run.sh).
pub fn gpu(s: &mut Settings) {
    let layers = std::env::var("MOONWATCH_TEST_GPU_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    s.model.gpu_layers = layers;
    s.model.vision_on_gpu = layers > 0;
}

/// A deterministic picture; `seed` changes its content.
pub fn frame(seed: u8, w: u32, h: u32) -> Arc<Frame> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(seed),
            (y as u8).wrapping_add(seed),
            seed,
        ])
    });
    Arc::new(Frame::from_rgb(w, h, img.into_raw()).expect("frame"))
}

/// Writes a PNG for command-line tests and returns its path.
pub fn png(dir: &Path, name: &str, seed: u8) -> PathBuf {
    let f = frame(seed, 64, 48);
    let img = image::RgbImage::from_raw(f.width, f.height, f.rgb.to_vec()).expect("image");
    let path = dir.join(name);
    img.save(&path).expect("save png");
    path
}

/// A tiny pair that answers " Yes" to every question (known answers for event tests).
pub fn tiny_yes() -> Pair {
    synth::tiny_yes_pair_in(&scratch("tiny-moondream-yes")).expect("tiny yes model")
}

/// A tiny pair whose greedy answer to every prompt is `text`, then end-of-text when
/// `end_of_text` (a model with known answers; see `synth::KnownAnswer`).
pub fn answering(text: &str, end_of_text: bool) -> Pair {
    let tag = xxhash_rust::xxh3::xxh3_64(format!("{text}\u{0}{end_of_text}").as_bytes());
    synth::tiny_answer_pair_in(
        &scratch(&format!("tiny-answer-{tag:016x}")),
        text,
        end_of_text,
    )
    .expect("known-answer model")
}

/// A directory for generated models in cargo's per-target scratch space, named for the
/// generator's format so that a change to it never reuses stale files.
pub fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-v{}", synth::FORMAT))
}
