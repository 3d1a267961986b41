//! Trigger rounds with one and with two cameras on one engine: `cargo bench --bench daemon`.
//!
//! Runs `moonwatch run` with the full-shape random model (Q4_0 text, Q8_0 projector: the
//! Raspberry Pi choice) against a mosquitto of its own, first with one camera and K
//! question triggers, then with two cameras and K triggers each, and reads what a user
//! would: the trigger attributes as they are published and the `stats` counters. The random
//! model answers neither yes nor no, so triggers never settle: every trigger is due at every
//! interval (the worst case). The test cameras show still patterns (a changing scene would
//! also make triggers due early, one by one). What it shows is how the frame-prefix cache is used across
//! cameras: a round on one camera encodes its frame once, so image encodes per evaluation
//! stay at 1/K with two cameras as with one.
//!
//! Environment: MOONWATCH_BENCH_SECS (measured seconds per configuration, default 150),
//! MOONWATCH_BENCH_K (triggers per camera, default 3), MOONWATCH_BENCH_THREADS (2),
//! MOONWATCH_BENCH_MODELS (the full-shape models, as `cargo bench --bench engine` makes
//! them; default ~/.cache/moonwatch/bench-models).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

mod common;
use common::env_or;

/// One configuration's figures.
struct Figures {
    evaluations: usize,
    /// Median time between two evaluations of one trigger.
    period_s: f64,
    image_encodes: u64,
    inferences: u64,
}

fn camera_section(name: &str, pattern: &str, k: u64) -> String {
    let mut s = format!(
        "[[camera]]\nname = \"{name}\"\nsource = \"test\"\npattern = \"{pattern}\"\n\
         width = 640\nheight = 480\nfps = 5\ncapture_rate = 1.0\n"
    );
    for i in 0..k {
        s += &format!(
            "[[camera.trigger]]\nname = \"q{i}\"\nquestion = \"Is there thing number {i}?\"\n\
             interval = 10\nconsecutive = 1\n"
        );
    }
    s
}

fn measure(models: &Path, cameras: &[(&str, &str)], k: u64, secs: u64) -> Figures {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_broker, port) = common::broker(dir.path());
    let mut cfg = format!(
        "[model]\ntext = \"{}\"\nmmproj = \"{}\"\nthreads = {}\n\
         [mqtt]\nport = {port}\ndevice_id = \"bench\"\ndiscovery = false\n\
         [daemon]\nstate_dir = \"{}\"\nstats_interval = 5\n",
        models.join("moondream2-text-model-q4_0.gguf").display(),
        models.join("moondream2-mmproj-q8_0.gguf").display(),
        env_or("MOONWATCH_BENCH_THREADS", 2),
        dir.path().join("state").display(),
    );
    for (name, pattern) in cameras {
        cfg += &camera_section(name, pattern, k);
    }
    let path = dir.path().join("moonwatch.toml");
    std::fs::write(&path, cfg).expect("config");
    let _daemon = common::daemon(&path);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let (client, mut el) = AsyncClient::new(MqttOptions::new("bench", "127.0.0.1", port), 64);
        client
            .subscribe("moonwatch/#", QoS::AtMostOnce)
            .await
            .expect("subscribe");
        let mut evals: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
        let mut stats: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut started: Option<Instant> = None;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
            if let Some(t) = started {
                if t.elapsed() >= Duration::from_secs(secs) {
                    break;
                }
            }
            let Ok(Ok(Event::Incoming(Packet::Publish(p)))) = ev else {
                if let Ok(Err(_)) = ev {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            };
            let topic = p.topic.clone();
            if topic.ends_with("/attributes") {
                // Measured from the first evaluation: model load and warm-up aside.
                started.get_or_insert_with(Instant::now);
                evals.entry(topic).or_default().push(Instant::now());
            } else if topic.ends_with("/stats") && started.is_some() {
                if let Ok(v) = serde_json::from_slice(&p.payload) {
                    stats.insert(topic, v);
                }
            }
        }
        let mut periods: Vec<f64> = evals
            .values()
            .flat_map(|ts| ts.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()))
            .collect();
        periods.sort_by(f64::total_cmp);
        // Counters are the engine's (shared by every camera): any camera's latest will do.
        let counters = stats
            .values()
            .next()
            .map(|v| v["counters"].clone())
            .unwrap_or_default();
        Figures {
            evaluations: evals.values().map(Vec::len).sum(),
            period_s: periods.get(periods.len() / 2).copied().unwrap_or(f64::NAN),
            image_encodes: counters["image_encodes"].as_u64().unwrap_or(0),
            inferences: counters["inferences"].as_u64().unwrap_or(0),
        }
    })
}

fn main() {
    let secs = env_or("MOONWATCH_BENCH_SECS", 150);
    let k = env_or("MOONWATCH_BENCH_K", 3);
    let models = common::models();
    println!(
        "trigger rounds: K = {k} question triggers per camera, interval 10 s, {secs} s measured"
    );
    println!("| cameras | evaluations/min | median period of one trigger | image encodes per evaluation |");
    println!("|---|---|---|---|");
    for cams in [
        vec![("one", "smpte")],
        vec![("one", "smpte"), ("two", "checkers-8")],
    ] {
        let f = measure(&models, &cams, k, secs);
        println!(
            "| {} | {:.1} | {:.1} s | {:.2} ({} of {}) |",
            cams.len(),
            f.evaluations as f64 * 60.0 / secs as f64,
            f.period_s,
            f.image_encodes as f64 / f.inferences.max(1) as f64,
            f.image_encodes,
            f.inferences
        );
    }
}
