//! The pool as camera nodes use it: `cargo bench --bench fleet`.
//!
//! Every node is `moonwatch run` against a mosquitto of the bench's own, as a user would
//! run them. The load is what a camera node makes: one node without a model, with four
//! cameras (GStreamer's moving "ball" test pattern, 320x240) of two yes/no triggers each,
//! every trigger looked at again each second (`interval = recheck = 1`), and a burst of 10
//! interactive `yes_no` requests halfway through. The node decides how many jobs it keeps
//! out (one per healthy worker slot); the bench only watches the broker.
//!
//! - **Fixed-cost workers** (default): each worker is the real `moonwatch run` worker with
//!   its model replaced by the TEST DOUBLE in `src/vision/double.rs`
//!   (`MOONWATCH_TEST_DOUBLE_MS`, default 500 ms a job), so the machine's two cores do
//!   not bound what is measured: the pool's concurrency, with 1, 2 and 3 workers, then 2
//!   workers of which one is stopped with SIGSTOP (still connected) a third of the way in.
//! - **Model workers** (`MOONWATCH_BENCH_REAL=1`): the full-shape random model (Q4_0 text,
//!   Q8_0 projector), one thread per worker, 1, 2 and 3 workers on this machine's cores.
//! - The pool path's added latency against a local engine (`MOONWATCH_BENCH_REAL=1`), and
//!   the pool's own work per job in process (always; `MOONWATCH_BENCH_ONLY=overhead` for
//!   only that).
//!
//! Per run: jobs answered per second over MOONWATCH_BENCH_SECS (default 60; the first
//! answers, model warm-up, are left out), the interactive requests' median and longest
//! time to answer, and the longest time any job took from its first attempt to its answer.
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
        self.node_with(id, threads, body, &[]);
    }

    /// Starts a node as [`Setup::node`] does, with `env` set.
    fn node_with(&mut self, id: &str, threads: u32, body: &str, env: &[(&str, String)]) {
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
        self.procs.push(common::daemon_with(&path, env));
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

/// What the workers run.
#[derive(Debug, Clone, Copy)]
enum Workers {
    /// The full-shape model, one thread each.
    Model,
    /// The test double: a fixed cost per job.
    Double(Duration),
}

/// One run of the camera node's load.
struct NodeRun {
    jobs_per_s: f64,
    /// The burst of interactive requests: median and longest seconds to the answer.
    burst: (f64, f64),
    /// The longest seconds a job took from its first attempt to its answer.
    longest_job: f64,
    retries: u64,
}

/// The camera node's configuration: four cameras, two triggers each, due every second.
fn camera_node(job_timeout: u64) -> String {
    let mut body = format!("[pool]\noffload = true\njob_timeout = {job_timeout}\nattempts = 3\n");
    for i in 0..4 {
        body += &format!(
            "[[camera]]\nname = \"cam{i}\"\nsource = \"test\"\npattern = \"ball\"\n\
             width = 320\nheight = 240\nfps = 2\ncapture_rate = 1.0\n"
        );
        for (name, q) in [
            ("door", "Is the door open?"),
            ("person", "Is there a person?"),
        ] {
            body += &format!(
                "[[camera.trigger]]\nname = \"{name}\"\nquestion = \"{q}\"\n\
                 interval = 1\nrecheck = 1\nconsecutive = 1\nthreshold = 0.5\n"
            );
        }
    }
    body
}

/// The job an attempt's correlation id belongs to (`{run}-{job}-{attempt}`).
fn job_of(correlation: &[u8]) -> String {
    let c = String::from_utf8_lossy(correlation);
    c.rsplit_once('-')
        .map_or(c.to_string(), |(job, _)| job.to_owned())
}

/// Runs the camera node against `n` workers for `secs` measured seconds; with `stall`,
/// worker w0 is stopped (SIGSTOP) a third of the way in.
async fn node_load(
    models: &Path,
    workers: Workers,
    n: u32,
    secs: u64,
    stall: bool,
    job_timeout: u64,
) -> NodeRun {
    let mut s = Setup::new(models);
    let mut worker_pids = Vec::new();
    for w in 0..n {
        let (threads, env) = match workers {
            Workers::Model => (1, vec![]),
            Workers::Double(cost) => (
                1,
                vec![(moonwatch::vision::double::ENV, cost.as_millis().to_string())],
            ),
        };
        s.node_with(&format!("w{w}"), threads, WORKER, &env);
        worker_pids.push(s.procs.last().map_or(0, |k| k.0.id()));
    }
    let (c, mut el) = s
        .client(
            "watch",
            &[
                "moonwatch/pool/#",
                "moonwatch/node/pool/reply",
                "bench/burst",
            ],
        )
        .await;
    // The workers announce themselves before the node starts, as in a running fleet.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n as usize {
        if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await {
            if p.topic.starts_with(b"moonwatch/pool/worker/") {
                seen.insert(p.topic.clone());
            }
        }
    }
    s.node("node", 0, &camera_node(job_timeout));
    let mut first_sent: std::collections::HashMap<String, Instant> = Default::default();
    let mut started: Option<Instant> = None;
    let (mut done, mut retries, mut longest_job) = (0usize, 0u64, 0f64);
    let mut burst_sent: Vec<Instant> = Vec::new();
    let mut burst_times: Vec<f64> = Vec::new();
    let mut stalled = false;
    loop {
        let elapsed = started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        if started.is_some() && elapsed >= secs as f64 && burst_times.len() == burst_sent.len() {
            break;
        }
        if stall && !stalled && elapsed >= secs as f64 / 3.0 {
            stalled = true;
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &worker_pids[0].to_string()])
                .status();
        }
        if started.is_some() && burst_sent.is_empty() && elapsed >= secs as f64 / 2.0 {
            for i in 0..10 {
                let props = PublishProperties {
                    response_topic: Some("bench/burst".into()),
                    correlation_data: Some(Bytes::from(i.to_string())),
                    ..Default::default()
                };
                c.publish_with_properties(
                    format!("moonwatch/cam{}/request/yes_no", i % 4),
                    QoS::AtLeastOnce,
                    false,
                    serde_json::json!({"question": format!("Is there a cat {i}?")}).to_string(),
                    props,
                )
                .await
                .expect("publish");
                burst_sent.push(Instant::now());
            }
        }
        let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(500), el.poll()).await else {
            continue;
        };
        let Event::Incoming(Packet::Publish(p)) = ev else {
            continue;
        };
        let corr = p
            .properties
            .as_ref()
            .and_then(|pr| pr.correlation_data.clone())
            .unwrap_or_default();
        if p.topic.starts_with(b"moonwatch/pool/direct/")
            || p.topic.starts_with(b"moonwatch/pool/request/")
        {
            let job = job_of(&corr);
            match first_sent.entry(job) {
                std::collections::hash_map::Entry::Occupied(_) => retries += 1,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Instant::now());
                }
            }
        } else if p.topic == "moonwatch/node/pool/reply" {
            let ok = serde_json::from_slice::<serde_json::Value>(&p.payload)
                .is_ok_and(|v| v["status"] == "ok");
            // The first answers include each worker's warm-up: measured from then on.
            if started.is_none() {
                started = Some(Instant::now());
                continue;
            }
            if let (true, Some(t)) = (ok, first_sent.remove(&job_of(&corr))) {
                longest_job = longest_job.max(t.elapsed().as_secs_f64());
                if elapsed < secs as f64 {
                    done += 1;
                }
            }
        } else if p.topic == "bench/burst" {
            let i: usize = String::from_utf8_lossy(&corr).parse().unwrap_or(0);
            if let Some(t) = burst_sent.get(i) {
                burst_times.push(t.elapsed().as_secs_f64());
            }
        }
    }
    if stalled {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &worker_pids[0].to_string()])
            .status();
    }
    burst_times.sort_by(f64::total_cmp);
    NodeRun {
        jobs_per_s: done as f64 / secs as f64,
        burst: (
            burst_times[burst_times.len() / 2],
            burst_times.last().copied().unwrap_or(0.0),
        ),
        longest_job,
        retries,
    }
}

/// Median seconds of `n` sequential yes_no requests to camera node `cam`, and the mean
/// size of the pool jobs they caused (0 without a pool).
async fn latency(s: &Setup, n: usize) -> (f64, usize) {
    let (c, mut el) = s
        .client(
            "lat",
            &[
                "bench/lat",
                "moonwatch/pool/#",
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
                if p.topic.starts_with(b"moonwatch/pool/request/")
                    || p.topic.starts_with(b"moonwatch/pool/direct/")
                {
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
    let secs = env_or("MOONWATCH_BENCH_SECS", 60);
    let only = std::env::var("MOONWATCH_BENCH_ONLY").unwrap_or_default();
    let real = std::env::var("MOONWATCH_BENCH_REAL").is_ok_and(|v| v == "1") || only == "real";
    let cost = Duration::from_millis(env_or("MOONWATCH_TEST_DOUBLE_MS", 500));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        if only == "real" {
            return real_model(secs).await;
        }
        let job_timeout = 4;
        let none = PathBuf::from("/nonexistent");
        table(format!(
            "camera node, 4 cameras x 2 triggers + a burst of 10 requests; workers: TEST DOUBLE of {} ms a job; job_timeout {job_timeout} s; {secs} s measured",
            cost.as_millis()
        ));
        let mut one = 0.0;
        for n in 1..=3 {
            let r = node_load(&none, Workers::Double(cost), n, secs, false, job_timeout).await;
            if n == 1 {
                one = r.jobs_per_s;
            }
            row(&n.to_string(), &r, one);
        }
        let r = node_load(&none, Workers::Double(cost), 2, secs, true, job_timeout).await;
        row("2, one stopped (SIGSTOP) after a third", &r, one);
        if real {
            real_model(secs).await;
        }
    });
}

/// The camera node's load against workers running the full-shape model, and the pool
/// path's added latency.
async fn real_model(secs: u64) {
    let models = common::models();
    table(format!(
        "camera node as above; workers: the full-shape model, 1 thread each; job_timeout 600 s; {secs} s measured"
    ));
    let mut one = 0.0;
    for n in 1..=3 {
        let r = node_load(&models, Workers::Model, n, secs, false, 600).await;
        if n == 1 {
            one = r.jobs_per_s;
        }
        row(&n.to_string(), &r, one);
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
}

fn table(title: String) {
    println!("\n{title}");
    println!("| workers | jobs/s | vs one worker | burst median s | burst longest s | longest job s | attempts sent again |");
    println!("|---|---|---|---|---|---|---|");
}

fn row(label: &str, r: &NodeRun, one: f64) {
    println!(
        "| {label} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
        r.jobs_per_s,
        r.jobs_per_s / one,
        r.burst.0,
        r.burst.1,
        r.longest_job,
        r.retries
    );
}
