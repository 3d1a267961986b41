//! The triggers' change test: what it costs, what it skips, how soon it sees a figure.
//! `cargo bench --bench scene`.
//!
//! 1. The cost per frame of a region's signature and of a comparison, at 1280x720 and
//!    1920x1080 (one thread).
//! 2. The generated scenes of `tests/scenes.rs` (tests/common/scenes.rs) through the
//!    daemon's core on a fake clock, with a simulated Raspberry Pi 5 engine (15 s for a new
//!    picture, 0.5 s for a further question on it): skip rate per scene, and the delay
//!    from a figure appearing (and leaving) to the evaluation that looks at it, per size.
//!    Default trigger settings (interval 10 s, `recheck` 600 s, two agreeing answers).
//! 3. The engine's duty on the full-shape model: `moonwatch run` with three triggers
//!    (interval 10 s) on a still, noisy 1280x720 camera for MOONWATCH_BENCH_SECS (600),
//!    then a figure of 1% of the frame (its colour alone differs from the wall) walks in
//!    and out, and the delay to each evaluation is read from the trigger attributes. The
//!    text model is the full-shape known-answer model (it answers " no" to everything, so
//!    the triggers settle as on a quiet scene); the speed of a model depends on its
//!    shapes, not its values. Set MOONWATCH_BENCH_SECS=0 to leave this part out.
//!
//! Environment: MOONWATCH_BENCH_SECS, MOONWATCH_BENCH_THREADS (2), MOONWATCH_BENCH_MODELS
//! (the full-shape models, as `cargo bench --bench engine` makes them).

#[path = "../tests/common/scenes.rs"]
mod scenes;

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use moonwatch::frame::scene::{difference, Signature};
use moonwatch::frame::Frame;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use scenes::{Background, Figure, Scene, PI5};

use common::env_or;

fn signature_cost() {
    println!("### Cost per frame (one thread)\n");
    println!("| frame | signature of the frame | signature of a quarter zone | comparison |");
    println!("|---|---|---|---|");
    for (w, h) in [(1280u32, 720u32), (1920, 1080)] {
        let mut cam = scenes::Camera::new(Scene {
            width: w,
            height: h,
            ..Scene::still("cost").noisy(4.0)
        });
        let (f, _) = cam.frame(0.0, 1);
        let reps = 200;
        let time = |rect: Option<(u32, u32, u32, u32)>| {
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(Signature::of_frame(std::hint::black_box(&f), rect));
            }
            t.elapsed().as_secs_f64() * 1e3 / reps as f64
        };
        let whole = time(None);
        let zone = time(Some((w / 2, h / 2, w, h)));
        let (a, b) = (
            Signature::of_frame(&f, None).expect("sig"),
            Signature::of_frame(&cam.frame(1.0, 2).0, None).expect("sig"),
        );
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(difference(&a, std::hint::black_box(&b), 4.0));
        }
        let cmp = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("| {w}x{h} | {whole:.2} ms | {zone:.2} ms | {cmp:.3} ms |");
    }
    println!();
}

fn figure(area: f32, matched: bool, at: (f32, f32), within: Option<[f32; 4]>) -> Figure {
    Figure {
        area,
        matched,
        within,
        at,
        appear: 300.0,
        leave: 420.0,
    }
}

/// A scene at 1280x720, a camera frame's size.
fn hd(name: &str, noise: f32) -> Scene {
    Scene {
        width: 1280,
        height: 720,
        ..Scene::still(name).noisy(noise)
    }
}

fn sequences() {
    println!(
        "### Scenes through the core (1280x720, simulated Pi 5 engine, default trigger settings)\n"
    );
    println!("| scene | trigger | due evaluations skipped | evaluations (first, change, interval, recheck) | engine duty | figure seen after | gone seen after |");
    println!("|---|---|---|---|---|---|---|");
    let door = || vec![scenes::trigger("door", 10, 600, None)];
    let zone = [0.5, 0.4, 1.0, 1.0];
    let gate = || vec![scenes::trigger("gate", 10, 600, Some(zone))];
    let mut jpeg = hd("JPEG q75, noise 2", 2.0);
    jpeg.jpeg = Some(75);
    let mut drift = hd("brightness +20% over a minute, noise 2", 2.0);
    (drift.drift, drift.drift_from, drift.drift_over) = (0.2, 120.0, 60.0);
    let mut step = hd("auto-exposure step 10%, noise 2", 2.0);
    step.step = Some((150.0, 1.1));
    let mut night = hd("night driveway, noise 8", 8.0);
    night.background = Background::Night;
    let mut cases = vec![
        (hd("still", 0.0), door()),
        (hd("noise 2", 2.0), door()),
        (hd("noise 4", 4.0), door()),
        (hd("noise 8", 8.0), door()),
        (jpeg, door()),
        (drift, door()),
        (step, door()),
        (night.clone(), door()),
    ];
    for (background, noise) in [(Background::Wall, 4.0), (Background::Night, 8.0)] {
        for matched in [false, true] {
            for (area, at) in [
                (0.005, (0.4, 0.45)),
                (0.01, (0.92, 0.55)),
                (0.025, (0.5, 0.5)),
                (0.2, (0.55, 0.55)),
            ] {
                let kind = if matched { "colour only" } else { "darker" };
                let mut scene = hd(
                    &format!(
                        "{}% figure, {kind}, {background:?}, noise {noise}",
                        area * 100.0
                    ),
                    noise,
                )
                .with_figure(figure(area, matched, at, None));
                scene.background = background;
                cases.push((scene, door()));
            }
        }
    }
    for (area, matched) in [(0.005, true), (0.01, false), (0.01, true), (0.2, true)] {
        let kind = if matched { "colour only" } else { "darker" };
        let scene = hd(
            &format!("{}% of the zone, {kind}, noise 4", area * 100.0),
            4.0,
        )
        .with_figure(figure(area, matched, (0.6, 0.5), Some(zone)));
        cases.push((scene, gate()));
    }
    let outside = hd("20% of the frame beside the zone, noise 4", 4.0).with_figure(figure(
        0.2 / 0.45,
        false,
        (0.5, 0.5),
        Some([0.0, 0.0, 0.45, 1.0]),
    ));
    cases.push((outside, gate()));
    for (scene, triggers) in cases {
        let name = scene.name.clone();
        let has_figure = scene.figure.is_some();
        let watched = triggers[0].name.clone();
        let run = scenes::run(scene, triggers, 600.0, PI5);
        let c = run.counts;
        let delay = |t: f64| {
            run.delay_after(&watched, t)
                .filter(|d| *d < 300.0)
                .map_or("not evaluated".into(), |d| format!("{d:.1} s"))
        };
        let (seen, gone) = if has_figure {
            (delay(300.0), delay(420.0))
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "| {name} | {watched} | {:.0}% ({} of {}) | {}, {}, {}, {} | {:.1}% | {seen} | {gone} |",
            100.0 * run.skip_rate(),
            c.skipped,
            c.skipped + c.change + c.interval + c.recheck,
            c.first,
            c.change,
            c.interval,
            c.recheck,
            100.0 * run.duty()
        );
    }
    println!();
}

/// Writes `n` noisy 1280x720 frames of the scene at time `t` into `dir` (replacing what
/// is there atomically, so the camera never reads half a file).
fn write_frames(dir: &Path, cam: &mut scenes::Camera, t: f64, n: u64) {
    for i in 0..n {
        let (f, _) = cam.frame(t, i + 1);
        let tmp = dir.join(format!(".f{i:02}.tmp"));
        std::fs::write(&tmp, Frame::to_jpeg(&f, 90)).expect("frame");
        std::fs::rename(&tmp, dir.join(format!("f{i:02}.jpg"))).expect("rename");
    }
}

/// The full-shape text model that answers " no" to everything, made once.
fn known_no_model(models: &Path) -> std::path::PathBuf {
    let bin = env!("CARGO_BIN_EXE_moonwatch");
    let dir = models.join("answers-no");
    let q4 = dir.join("moondream2-text-model-q4_0.gguf");
    if !q4.is_file() {
        eprintln!(
            "making the full-shape known-answer text model in {}",
            dir.display()
        );
        let st = Command::new(bin)
            .args([
                "model", "synth", "--size", "full", "--answer", " no", "--out",
            ])
            .arg(&dir)
            .status()
            .expect("synth");
        assert!(st.success());
        let st = Command::new(bin)
            .args(["model", "quantize", "--type", "q4_0"])
            .arg(dir.join("moondream2-text-model-f16.gguf"))
            .arg(&q4)
            .status()
            .expect("quantize");
        assert!(st.success());
        for f in [
            "moondream2-text-model-f16.gguf",
            "moondream2-mmproj-f16.gguf",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    q4
}

fn duty(secs: u64) {
    let models = common::models();
    let text = known_no_model(&models);
    let dir = tempfile::tempdir().expect("temp dir");
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).expect("frames");
    let wall = Scene {
        width: 1280,
        height: 720,
        ..Scene::still("duty").noisy(4.0)
    };
    let mut still = scenes::Camera::new(wall.clone());
    write_frames(&frames, &mut still, 0.0, 20);
    let (_broker, port) = common::broker(dir.path());
    let mut cfg = format!(
        "[model]\ntext = \"{}\"\nmmproj = \"{}\"\nthreads = {}\ncontext_size = 1024\n\
         kv_cache_type = \"q8_0\"\nbatch_size = 128\n\
         [mqtt]\nport = {port}\ndevice_id = \"bench\"\ndiscovery = false\n\
         [daemon]\nstate_dir = \"{}\"\nstats_interval = 5\n\
         [camera]\nsource = \"image\"\npath = \"{}\"\ncapture_rate = 1.0\n",
        text.display(),
        models.join("moondream2-mmproj-q8_0.gguf").display(),
        env_or("MOONWATCH_BENCH_THREADS", 2),
        dir.path().join("state").display(),
        frames.display(),
    );
    for q in ["door", "gate", "parcel"] {
        cfg += &format!(
            "[[trigger]]\nname = \"{q}\"\nquestion = \"Is there a person at the {q}?\"\ninterval = 10\n"
        );
    }
    let path = dir.path().join("moonwatch.toml");
    std::fs::write(&path, cfg).expect("config");
    let _daemon = common::daemon(&path);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let (client, mut el) = AsyncClient::new(MqttOptions::new("bench", "127.0.0.1", port), 64);
        client
            .subscribe("moonwatch/bench/#", QoS::AtMostOnce)
            .await
            .expect("subscribe");
        // (when, cause) of every evaluation; stats as (when, uptime, engine busy ms).
        let mut evals: Vec<(Instant, String)> = Vec::new();
        let mut stats: Vec<(Instant, serde_json::Value)> = Vec::new();
        let mut started: Option<Instant> = None;
        let mut phase = 0;
        let mut marks: Vec<Instant> = Vec::new();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
            if let Some(t0) = started {
                let s = t0.elapsed().as_secs();
                // The still scene for `secs`, then the figure for 90 s, then gone for 90 s.
                if phase == 0 && s >= secs {
                    let mut cam = scenes::Camera::new(wall.clone().with_figure(Figure {
                        area: 0.01,
                        matched: true,
                        within: None,
                        at: (0.92, 0.55),
                        appear: 0.0,
                        leave: f64::INFINITY,
                    }));
                    write_frames(&frames, &mut cam, 0.0, 20);
                    marks.push(Instant::now());
                    phase = 1;
                } else if phase == 1 && s >= secs + 90 {
                    write_frames(&frames, &mut still, 0.0, 20);
                    marks.push(Instant::now());
                    phase = 2;
                } else if phase == 2 && s >= secs + 180 {
                    break;
                }
            }
            let Ok(Ok(Event::Incoming(Packet::Publish(p)))) = ev else {
                if let Ok(Err(_)) = ev {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            if p.topic.ends_with("/attributes") {
                started.get_or_insert_with(Instant::now);
                evals.push((Instant::now(), v["cause"].as_str().unwrap_or("").to_owned()));
            } else if p.topic.ends_with("/stats") {
                stats.push((Instant::now(), v));
            }
        }
        let t0 = started.expect("evaluations");
        let busy_at = |t: Instant| {
            stats
                .iter()
                .rfind(|(at, _)| *at <= t)
                .map(|(at, v)| {
                    (
                        *at,
                        v["counters"]["engine_busy_ms"].as_f64().unwrap_or(0.0) / 1e3,
                    )
                })
        };
        let still_end = marks.first().copied().unwrap_or_else(Instant::now);
        // Settled: after the first two rounds (first answers, then the confirming ones).
        let settled = evals.get(5).map_or(t0, |(t, _)| *t);
        let share = |from: Instant, to: Instant| match (busy_at(from), busy_at(to)) {
            (Some((a, ba)), Some((b, bb))) if b > a => (bb - ba) / (b - a).as_secs_f64(),
            _ => f64::NAN,
        };
        let causes = |from: Instant, to: Instant| {
            let mut c = std::collections::BTreeMap::<String, usize>::new();
            for (t, cause) in &evals {
                if *t >= from && *t < to {
                    *c.entry(cause.clone()).or_default() += 1;
                }
            }
            format!("{c:?}")
        };
        println!("### Engine duty, full-shape model, 3 triggers, interval 10 s, still noisy 1280x720 scene\n");
        println!("| window | engine duty | evaluations by cause |");
        println!("|---|---|---|");
        println!(
            "| the whole still part ({} s, settling included) | {:.1}% | {} |",
            (still_end - t0).as_secs(),
            100.0 * share(t0, still_end),
            causes(t0, still_end)
        );
        println!(
            "| settled still scene ({} s) | {:.1}% | {} |",
            (still_end - settled).as_secs(),
            100.0 * share(settled, still_end),
            causes(settled, still_end)
        );
        for (i, m) in marks.iter().enumerate() {
            let first = evals.iter().find(|(t, _)| t > m);
            let what = if i == 0 {
                "1% figure (colour only) walks in"
            } else {
                "it leaves"
            };
            match first {
                Some((t, cause)) => println!(
                    "| {what} | first evaluation answered after {:.1} s | cause {cause} |",
                    (*t - *m).as_secs_f64()
                ),
                None => println!("| {what} | never evaluated | |"),
            }
        }
        println!();
    });
}

fn main() {
    signature_cost();
    sequences();
    let secs = env_or("MOONWATCH_BENCH_SECS", 600);
    if secs == 0 {
        println!("engine duty: left out (MOONWATCH_BENCH_SECS=0)");
    } else {
        duty(secs);
    }
}
