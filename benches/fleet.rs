//! The pool: jobs per second with one and two workers, the pool path's added latency
//! against a local engine, and the bytes of a job on the wire: `cargo bench --bench fleet`.
//!
//! Every node is `moonwatch run` with the full-shape random model (Q4_0 text, Q8_0
//! projector) against a mosquitto of the bench's own, as a user would run them.
//!
//! - Throughput: a load generator keeps 4 jobs outstanding on `moonwatch/pool/request/yes_no`,
//!   as camera nodes do, each with a picture the worker has not seen just before (every job
//!   pays an image encode, as a new frame does), for MOONWATCH_BENCH_SECS (default 180);
//!   workers run 1 thread each, so two workers use the two cores one worker leaves half idle.
//! - Latency: `yes_no` requests to a camera node on its newest camera frame, one after
//!   another, with its own model (2 threads) and with the same model on one worker
//!   (2 threads): the same work on both paths (each request's frame is new to the engine),
//!   so the difference is the pool's own cost (JPEG encode, transfer, decode, queueing).
//!
//! MOONWATCH_BENCH_MODELS as for `cargo bench --bench engine`, which makes the models.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

mod common;
use common::{env_or, Kill};

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    models: PathBuf,
    procs: Vec<Kill>,
}

impl Setup {
    fn new(models: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (broker, port) = common::broker(dir.path());
        Self {
            dir,
            port,
            models: models.to_owned(),
            procs: vec![broker],
        }
    }

    /// Starts a node: `model` with that many threads (0: none), `body` the rest.
    fn node(&mut self, id: &str, threads: u32, body: &str) {
        let model = if threads > 0 {
            format!(
                "[model]\ntext = \"{}\"\nmmproj = \"{}\"\nthreads = {threads}\n",
                self.models
                    .join("moondream2-text-model-q4_0.gguf")
                    .display(),
                self.models.join("moondream2-mmproj-q8_0.gguf").display()
            )
        } else {
            "[model]\ntext = \"\"\nmmproj = \"\"\n".into()
        };
        let cfg = format!(
            "{model}[mqtt]\nport = {}\ndevice_id = \"{id}\"\ndiscovery = false\n\
             [daemon]\nstate_dir = \"{}\"\nmax_pending = 16\nrequest_timeout = 600\n{body}",
            self.port,
            self.dir.path().join(id).display()
        );
        let path = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, cfg).expect("config");
        self.procs.push(common::daemon(&path));
    }

    async fn client(&self, id: &str, subs: &[&str]) -> (AsyncClient, EventLoop) {
        let mut o = MqttOptions::new(id, "127.0.0.1", self.port);
        o.set_max_packet_size(Some(16 << 20));
        let (c, el) = AsyncClient::new(o, 64);
        for s in subs {
            c.subscribe(*s, QoS::AtLeastOnce).await.expect("subscribe");
        }
        (c, el)
    }
}

const WORKER: &str = "[camera]\nsource = \"none\"\n[pool]\nserve = true\njob_timeout = 600\n";

/// A 378x378 JPEG (the size a camera node sends) of a scene that differs with `seed`:
/// gradients, a few shapes and a little sensor noise, not random noise (which no camera
/// sends, and which JPEG cannot compress).
fn picture(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(378, 378, |x, y| {
        let noise = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ seed) % 9;
        let shape = ((x / 40 + y / 50 + seed) % 5) * 20;
        let r = (x / 2 + shape + noise) as u8;
        let g = (y / 2 + seed * 30 + noise) as u8;
        let b = ((x + y) / 4 + shape) as u8;
        image::Rgb([r, g, b])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("jpeg");
    out.into_inner()
}

/// Jobs answered per second with `workers` workers of one thread each.
async fn throughput(models: &Path, workers: u32, secs: u64) -> (f64, usize) {
    let mut s = Setup::new(models);
    for w in 0..workers {
        s.node(&format!("w{w}"), 1, WORKER);
    }
    let (c, mut el) = s
        .client("load", &["bench/replies", "moonwatch/pool/worker/+"])
        .await;
    let pictures: Vec<String> = (0..8)
        .map(|i| base64::engine::general_purpose::STANDARD.encode(picture(i)))
        .collect();
    let body = |n: usize| {
        serde_json::json!({"question": "Is there a door?", "image": pictures[n % pictures.len()]})
            .to_string()
    };
    let bytes = body(0).len();
    // Wait until every worker announced itself.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < workers as usize {
        if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await {
            seen.insert(p.topic.clone());
        }
    }
    let send = |n: usize| {
        let c = c.clone();
        let payload = body(n);
        async move {
            let props = PublishProperties {
                response_topic: Some("bench/replies".into()),
                correlation_data: Some(Bytes::from(n.to_string())),
                ..Default::default()
            };
            c.publish_with_properties(
                "moonwatch/pool/request/yes_no",
                QoS::AtLeastOnce,
                false,
                payload,
                props,
            )
            .await
            .expect("publish");
        }
    };
    let mut next = 0;
    for _ in 0..4 {
        send(next).await;
        next += 1;
    }
    let mut started: Option<Instant> = None;
    let mut done = 0usize;
    loop {
        if started.is_some_and(|t| t.elapsed() >= Duration::from_secs(secs)) {
            break;
        }
        let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(1), el.poll()).await else {
            continue;
        };
        let Event::Incoming(Packet::Publish(p)) = ev else {
            continue;
        };
        if p.topic != "bench/replies" {
            continue;
        }
        let ok = serde_json::from_slice::<serde_json::Value>(&p.payload)
            .is_ok_and(|v| v["status"] == "ok");
        // The first answers include each worker's model warm-up: measured from then on.
        if started.is_none() {
            started = Some(Instant::now());
        } else if ok {
            done += 1;
        }
        send(next).await;
        next += 1;
    }
    let rate = done as f64 / started.map_or(1.0, |t| t.elapsed().as_secs_f64());
    (rate, bytes)
}

/// Median seconds of `n` sequential yes_no requests to camera node `cam`, and the mean
/// size of the pool jobs they caused (0 without a pool).
async fn latency(s: &Setup, n: usize) -> (f64, usize) {
    let (c, mut el) = s
        .client(
            "lat",
            &[
                "bench/lat",
                "moonwatch/pool/request/+",
                "moonwatch/cam/camera/availability",
            ],
        )
        .await;
    // The node connects once its model is loaded: a request before would find no one.
    loop {
        if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await {
            if p.topic == "moonwatch/cam/camera/availability" && &p.payload[..] == b"online" {
                break;
            }
        }
    }
    let mut jobs = Vec::new();
    let mut times = Vec::new();
    for i in 0..n + 1 {
        let props = PublishProperties {
            response_topic: Some("bench/lat".into()),
            correlation_data: Some(Bytes::from(i.to_string())),
            ..Default::default()
        };
        let t = Instant::now();
        c.publish_with_properties(
            "moonwatch/cam/request/yes_no",
            QoS::AtLeastOnce,
            false,
            serde_json::json!({"question": "Is there a door?"}).to_string(),
            props,
        )
        .await
        .expect("publish");
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await {
                if p.topic.starts_with(b"moonwatch/pool/request/") {
                    jobs.push(p.payload.len());
                }
                if p.topic == "bench/lat" {
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    assert_eq!(v["status"], "ok", "{v}");
                    break;
                }
            }
        }
        // The first request includes the model's first use: left out.
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let bytes = jobs.iter().sum::<usize>() / jobs.len().max(1);
    (times[times.len() / 2], bytes)
}

const CAMERA: &str =
    "[camera]\nsource = \"test\"\nwidth = 640\nheight = 480\nfps = 5\ncapture_rate = 1.0\n";

/// The pool's own work on one job, in process: the camera node stretches a 640x480 frame to
/// 378x378 and encodes it (JPEG, base64, JSON); the worker decodes it. Milliseconds, median.
fn overhead() -> (f64, f64, f64) {
    use moonwatch::frame::Frame;
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x / 3) as u8, (y / 2) as u8, ((x + y) / 5) as u8])
    });
    let frame = Frame::from_rgb(640, 480, img.into_raw()).expect("frame");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut enc, mut wrap, mut dec) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..30 {
        let t = Instant::now();
        let small = Frame::from_rgb(378, 378, frame.stretched(378, 378)).expect("stretched");
        let jpeg = small.to_jpeg(90);
        enc.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&jpeg);
        let body = serde_json::json!({"question": "Is there a door?", "image": b64}).to_string();
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["image"].as_str().unwrap_or(""))
            .expect("base64");
        wrap.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let f = Frame::decode_bounded(&back, "job", 1024).expect("decode");
        assert_eq!((f.width, f.height), (378, 378));
        dec.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(enc), median(wrap), median(dec))
}

fn main() {
    let (enc, wrap, dec) = overhead();
    println!("pool work per job (640x480 frame, median of 30): stretch + JPEG {enc:.2} ms, base64 + JSON both ways {wrap:.2} ms, worker decode {dec:.2} ms");
    if std::env::var("MOONWATCH_BENCH_ONLY").is_ok_and(|v| v == "overhead") {
        return;
    }
    let secs = env_or("MOONWATCH_BENCH_SECS", 180);
    let models = common::models();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        println!(
            "pool throughput: yes_no jobs, 4 outstanding, a new picture each, {secs} s measured"
        );
        println!("| workers (1 thread each) | jobs/s | bytes per job (JSON, base64 JPEG) |");
        println!("|---|---|---|");
        for workers in [1, 2] {
            let (rate, bytes) = throughput(&models, workers, secs).await;
            println!("| {workers} | {rate:.3} | {bytes} |");
        }
        let mut local = Setup::new(&models);
        local.node("cam", 2, CAMERA);
        let (l, _) = latency(&local, 5).await;
        drop(local);
        let mut pooled = Setup::new(&models);
        pooled.node("w0", 2, WORKER);
        pooled.node(
            "cam",
            0,
            &format!("{CAMERA}[pool]\noffload = true\njob_timeout = 600\n"),
        );
        let (p, bytes) = latency(&pooled, 5).await;
        println!("\nrequest latency on the camera's newest frame (median of 5, 2 threads):");
        println!("| path | seconds |");
        println!("|---|---|");
        println!("| camera node's own model | {l:.3} |");
        println!("| through the pool (one worker) | {p:.3} |");
        println!("| added by the pool | {:.3} |", p - l);
        println!("\nbytes of a job from the camera node (640x480 test pattern, JSON with base64 JPEG): {bytes}");
    });
}
