//! The daemon against a real mosquitto on a free loopback port, with the tiny model and a
//! GStreamer test camera: requests and replies (v5 and v3.1.1), bad input, triggers,
//! discovery, SIGHUP, SIGTERM, broker restarts, passwords and TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A mosquitto broker of the test's own, on a port the OS picked.
struct Broker {
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(dir: &Path, extra: &str) -> Self {
        Self::start_with(dir, &format!("persistence false\n{extra}"))
    }

    /// A broker that keeps sessions (and their queued QoS 1 messages) across restarts.
    fn start_persistent(dir: &Path, extra: &str) -> Self {
        Self::start_with(
            dir,
            &format!(
                "persistence true\npersistence_location {}/\n{extra}",
                dir.display()
            ),
        )
    }

    fn start_with(dir: &Path, extra: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            // set_tcp_nodelay: replies without the broker's 40 ms Nagle delay.
            format!("listener {port} 127.0.0.1\nuser root\nset_tcp_nodelay true\n{extra}\n"),
        )
        .unwrap();
        let mut b = Self {
            port,
            conf,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            // mosquitto logs to stderr (unbuffered): kept for tests that read it.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.conf.with_extension("log"))
                    .unwrap(),
            )
            .spawn()
            .expect("mosquitto must be installed (scripts/setup.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops like a service manager would (SIGTERM), so a persistent broker saves its state.
    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `moonwatch run`.
struct Daemon {
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, config: &str) -> Self {
        Self::start_env(dir, config, &[])
    }

    fn start_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let path = dir.join("moonwatch.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_moonwatch"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info,llama-cpp-2=off")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            config: path,
            log,
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, port: u16, protocol: &str, extra: &str) -> String {
    config_for(&common::tiny(), dir, port, protocol, extra)
}

fn config_for(
    pair: &moonwatch::model::synth::Pair,
    dir: &Path,
    port: u16,
    protocol: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[model]
text = "{}"
mmproj = "{}"
threads = 2
max_tokens = 12
[camera]
source = "test"
width = 160
height = 120
fps = 10
capture_rate = 4.0
[mqtt]
port = {port}
protocol = "{protocol}"
device_id = "cam1"
max_payload = 65536
[daemon]
state_dir = "{}"
stats_interval = 2
max_pending = 4
{extra}
"#,
        pair.text.display(),
        pair.mmproj.display(),
        dir.join("state").display()
    )
}

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Bytes,
    retain: bool,
    correlation: Option<Bytes>,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// A v5 test client that records everything it receives.
struct Client {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    seen: Vec<Msg>,
}

impl Client {
    async fn connect(port: u16, id: &str, subs: &[&str]) -> Self {
        Self::connect_opts(MqttOptions::new(id, "127.0.0.1", port), subs).await
    }

    async fn connect_as(port: u16, id: &str, user: &str, password: &str, subs: &[&str]) -> Self {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_credentials(user, password);
        Self::connect_opts(o, subs).await
    }

    async fn connect_opts(mut o: MqttOptions, subs: &[&str]) -> Self {
        o.set_max_packet_size(Some(1 << 20));
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let correlation = p.properties.and_then(|pr| pr.correlation_data);
                        let _ = tx.send(Msg {
                            topic: String::from_utf8_lossy(&p.topic).into(),
                            payload: p.payload,
                            retain: p.retain,
                            correlation,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for s in subs {
            client.subscribe(*s, QoS::AtLeastOnce).await.unwrap();
        }
        Self {
            client,
            rx,
            seen: vec![],
        }
    }

    async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    async fn publish_retained(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.to_owned())
            .await
            .unwrap();
    }

    async fn request_v5(
        &self,
        topic: &str,
        payload: Value,
        response_topic: &str,
        correlation: &[u8],
    ) {
        let props = PublishProperties {
            response_topic: Some(response_topic.into()),
            correlation_data: Some(Bytes::copy_from_slice(correlation)),
            ..Default::default()
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_string(), props)
            .await
            .unwrap();
    }

    /// A v5 request with `reply_topic` as its Response Topic (and correlation), then its
    /// reply as JSON.
    async fn ask_v5(
        &mut self,
        request_topic: &str,
        payload: Value,
        reply_topic: &str,
        what: &str,
        secs: u64,
    ) -> Value {
        self.request_v5(request_topic, payload, reply_topic, reply_topic.as_bytes())
            .await;
        self.wait(what, secs, topic(reply_topic)).await.json()
    }

    /// Waits for a message matching `pred` (looking at earlier ones first).
    async fn wait(&mut self, what: &str, secs: u64, pred: impl Fn(&Msg) -> bool) -> Msg {
        match self.try_wait(secs, pred).await {
            Some(m) => m,
            None => panic!(
                "timed out waiting for {what}; saw {:?}",
                self.seen.iter().map(|m| &m.topic).collect::<Vec<_>>()
            ),
        }
    }

    /// Like `wait`, but `None` on timeout (so the caller can say more).
    async fn try_wait(&mut self, secs: u64, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return Some(m.clone());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => {
                    self.seen.push(m.clone());
                    if pred(&m) {
                        return Some(m);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Forgets what was seen so far.
    fn clear(&mut self) {
        while self.rx.try_recv().is_ok() {}
        self.seen.clear();
    }
}

const BASE: &str = "moonwatch/cam1";

/// The usual start of a test: a scratch directory, a broker of its own (`broker_conf` in
/// its configuration), moonwatch with the configuration `cfg` writes for that directory and
/// broker port, and a client subscribed to `subs` (which cover `{BASE}/availability`),
/// returned once moonwatch says it is online.
struct Rig {
    dir: tempfile::TempDir,
    broker: Broker,
    daemon: Daemon,
    client: Client,
}

impl Rig {
    async fn start(
        broker_conf: &str,
        cfg: impl FnOnce(&Path, u16) -> String,
        client: &str,
        subs: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(dir.path(), broker_conf);
        let daemon = Daemon::start(dir.path(), &cfg(dir.path(), broker.port));
        let mut c = Client::connect(broker.port, client, subs).await;
        let online = format!("{BASE}/availability");
        c.wait("online", 60, |m| {
            m.topic == online && &m.payload[..] == b"online"
        })
        .await;
        Self {
            dir,
            broker,
            daemon,
            client: c,
        }
    }
}

/// The device-form discovery of camera `id`, where `object`'s component passes `test`.
fn component_where(
    id: &str,
    object: &str,
    test: fn(&serde_json::Map<String, Value>) -> bool,
) -> impl Fn(&Msg) -> bool {
    let topic = format!("homeassistant/device/moonwatch_{id}/config");
    let object = object.to_owned();
    move |m: &Msg| {
        m.topic == topic
            && !m.payload.is_empty()
            && m.json()["cmps"][&object].as_object().is_some_and(test)
    }
}

/// The device-form discovery of camera `id` lists `object` as a live entity.
fn component(id: &str, object: &str) -> impl Fn(&Msg) -> bool {
    component_where(id, object, |c| c.len() > 1)
}

/// The device-form discovery of camera `id` removes `object` (its platform alone).
fn component_removed(id: &str, object: &str) -> impl Fn(&Msg) -> bool {
    component_where(id, object, |c| c.len() == 1 && c.contains_key("p"))
}

/// Validates every JSON payload the daemon published (as seen by a client) against the
/// schema generated from the wire types; returns how many were checked.
fn validate_published(seen: &[Msg]) -> usize {
    let validators: std::collections::HashMap<&str, jsonschema::Validator> =
        moonwatch::mqtt::wire::schemas()
            .into_iter()
            .map(|(name, schema)| (name, jsonschema::validator_for(&schema).unwrap()))
            .collect();
    let mut checked = 0;
    for m in seen {
        if m.payload.is_empty() || m.topic.contains("/request/") {
            continue;
        }
        if m.topic.starts_with("homeassistant/device/") {
            // Device-form discovery: each component, with the device's blocks, is an
            // entity config.
            let v = m.json();
            for (object, c) in v["cmps"].as_object().expect("cmps") {
                let mut entity = c.clone();
                let Some(fields) = entity.as_object_mut() else {
                    panic!("component {object} is not an object")
                };
                assert!(
                    fields.remove("p").is_some(),
                    "component {object} has no platform"
                );
                if fields.is_empty() {
                    continue; // a removed component
                }
                fields.insert("device".into(), v["dev"].clone());
                fields.insert("origin".into(), v["o"].clone());
                let errors: Vec<String> = validators["discovery"]
                    .iter_errors(&entity)
                    .map(|e| e.to_string())
                    .collect();
                assert!(
                    errors.is_empty(),
                    "component {object}: {errors:?}\n{entity}"
                );
                checked += 1;
            }
            continue;
        }
        let kind = if m.json().get("status").is_some() && m.json().get("request").is_some() {
            "reply"
        } else if m.topic.starts_with("homeassistant/") && m.topic.ends_with("/config") {
            "discovery"
        } else if m.topic.ends_with("/stats") {
            "stats"
        } else if m.topic.ends_with("/caption") {
            "caption"
        } else if m.topic.contains("/trigger/") && m.topic.ends_with("/attributes") {
            "trigger_attributes"
        } else if m.topic.contains("/trigger/") && m.topic.ends_with("/event") {
            "trigger_event"
        } else {
            continue;
        };
        let v = m.json();
        let errors: Vec<String> = validators[kind]
            .iter_errors(&v)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{kind} on {} does not match its schema: {errors:?}\n{v}",
            m.topic
        );
        checked += 1;
    }
    checked
}

fn topic(t: &str) -> impl Fn(&Msg) -> bool + '_ {
    move |m| m.topic == t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_with_v5_correlation_and_v311_transactions() {
    let Rig {
        dir: _dir,
        broker,
        daemon: _d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| config(dir, port, "v5", "caption_interval = 1\n"),
        "t-v5",
        &["client/inbox", &format!("{BASE}/#")],
    )
    .await;
    let online = c
        .wait("online", 60, |m| {
            m.topic == format!("{BASE}/availability") && &m.payload[..] == b"online"
        })
        .await;
    assert_eq!(&online.payload[..], b"online");
    let retained = Client::connect(broker.port, "t-late", &[&format!("{BASE}/availability")])
        .await
        .wait("retained availability", 10, |_| true)
        .await;
    assert!(retained.retain && &retained.payload[..] == b"online");

    c.request_v5(
        &format!("{BASE}/request/query"),
        json!({"question": "What is here?"}),
        "client/inbox",
        b"\x00corr-1",
    )
    .await;
    let r = c.wait("v5 reply", 60, topic("client/inbox")).await;
    assert_eq!(r.correlation.as_deref(), Some(&b"\x00corr-1"[..]));
    let v = r.json();
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["data"]["skill"], "query");
    assert!(v["data"]["answer"].is_string());
    assert!(
        v["data"]["frame_seq"].as_u64().unwrap() > 0,
        "answered from the camera"
    );

    // A v3.1.1 client: no response topic, a transaction echoed on the default reply topic.
    let mut o = rumqttc::MqttOptions::new("t-v3", "127.0.0.1", broker.port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (v3, mut el) = rumqttc::AsyncClient::new(o, 16);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                let _ = tx.send(p);
            }
        }
    });
    v3.subscribe(format!("{BASE}/response/yes_no"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let req = json!({"question": "Is it daytime?", "transaction": {"id": 42}});
    v3.publish(
        format!("{BASE}/request/yes_no"),
        rumqttc::QoS::AtLeastOnce,
        false,
        req.to_string(),
    )
    .await
    .unwrap();
    let p = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["transaction"], json!({"id": 42}));
    assert_eq!(v["data"]["skill"], "yes_no");
    assert!(v["data"]["confidence"].as_f64().unwrap() >= 0.5);

    // An image carried by the request is used instead of the camera.
    let img = image::RgbImage::from_pixel(64, 48, image::Rgb([200, 30, 30]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(png.into_inner());
    c.request_v5(
        &format!("{BASE}/request/caption"),
        json!({"image": b64, "length": "short"}),
        "client/inbox",
        b"img",
    )
    .await;
    let r = c
        .wait("image reply", 60, |m| {
            m.topic == "client/inbox" && m.correlation.as_deref() == Some(b"img")
        })
        .await;
    assert_eq!(r.json()["data"]["frame_seq"], 0, "{}", r.json());

    // Snapshot: JPEG retained on the snapshot topic.
    c.publish(&format!("{BASE}/request/snapshot"), "{}").await;
    let s = c
        .wait("snapshot", 30, topic(&format!("{BASE}/snapshot")))
        .await;
    assert_eq!(&s.payload[..3], &[0xff, 0xd8, 0xff]);
    // Every payload published in this test matches the schema in docs/schema/.
    c.wait("caption", 60, topic(&format!("{BASE}/caption")))
        .await;
    c.wait("stats", 10, topic(&format!("{BASE}/stats"))).await;
    let kinds: std::collections::BTreeSet<&str> = c
        .seen
        .iter()
        .map(|m| m.topic.rsplit('/').next().unwrap_or(""))
        .collect();
    assert!(
        kinds.contains("caption") && kinds.contains("stats"),
        "{kinds:?}"
    );
    assert!(validate_published(&c.seen) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_error_replies_and_the_daemon_keeps_serving() {
    let Rig {
        dir: _dir,
        broker: _broker,
        daemon: _d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true\nmessage_size_limit 0",
        |dir, port| config(dir, port, "v5", ""),
        "t-bad",
        &[&format!("{BASE}/#")],
    )
    .await;
    c.wait("online", 60, |m| {
        m.topic == format!("{BASE}/availability") && &m.payload[..] == b"online"
    })
    .await;

    let text_b64 = base64::engine::general_purpose::STANDARD.encode(b"not an image at all");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("query", b"{not json".to_vec(), "bad_json"),
        ("dance", b"{}".to_vec(), "unknown_request"),
        ("detect", b"{}".to_vec(), "bad_request"),
        ("query", br#"{"question": 7}"#.to_vec(), "bad_request"),
        (
            "query",
            format!("{{\"question\": \"{}\"}}", "x".repeat(70_000)).into_bytes(),
            "too_large",
        ),
        ("caption", br#"{"image": "@@@"}"#.to_vec(), "bad_image"),
        (
            "caption",
            json!({"image": text_b64}).to_string().into_bytes(),
            "bad_image",
        ),
        (
            "trigger_remove",
            br#"{"name": "nope"}"#.to_vec(),
            "not_found",
        ),
    ];
    for (i, (name, payload, code)) in cases.into_iter().enumerate() {
        let mut p = payload;
        // Tag each request so its reply can be told apart (not possible for bad JSON).
        if code != "bad_json" && code != "too_large" {
            let mut v: Value = serde_json::from_slice(&p).unwrap();
            v["transaction"] = json!(i);
            p = v.to_string().into_bytes();
        }
        c.publish(&format!("{BASE}/request/{name}"), p).await;
        let want = format!("{BASE}/response/{name}");
        let r = c
            .wait(code, 30, |m| {
                m.topic == want && m.json()["error"]["code"] == code
            })
            .await;
        assert_eq!(r.json()["status"], "error");
        assert!(r.json()["error"]["message"].as_str().unwrap().len() > 5);
    }

    // A flood: every request is answered, some with busy, none lost.
    c.clear();
    for i in 0..20 {
        c.publish(
            &format!("{BASE}/request/yes_no"),
            json!({"question": "Is it on?", "transaction": i}).to_string(),
        )
        .await;
    }
    let mut answered = std::collections::HashSet::new();
    let mut busy = 0;
    while answered.len() < 20 {
        let m = c
            .wait("flood replies", 120, |m| {
                m.topic == format!("{BASE}/response/yes_no") && !m.retain
            })
            .await;
        c.seen.retain(|x| x.payload != m.payload);
        let v = m.json();
        answered.insert(v["transaction"].as_u64().unwrap());
        if v["status"] == "error" {
            assert_eq!(v["error"]["code"], "busy", "{v}");
            busy += 1;
        }
    }
    assert!(
        busy > 0,
        "max_pending 4 should have refused some of 20 requests"
    );
    c.publish(
        &format!("{BASE}/request/health_check"),
        json!({"transaction": "alive"}).to_string(),
    )
    .await;
    c.wait("still serving", 30, |m| {
        m.json()["transaction"] == "alive" && m.json()["status"] == "ok"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_publish_state_and_discovery_and_change_at_runtime() {
    let trigger = "[[trigger]]\nname = \"door\"\nquestion = \"Is the door open?\"\nthreshold = 0.5\nconsecutive = 1\ninterval = 1\ndevice_class = \"door\"\n";
    // A model that answers yes: the random one answers neither, which is no observation.
    let yes = common::tiny_yes();
    let Rig {
        dir,
        broker,
        daemon: d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| config_for(&yes, dir, port, "v5", trigger),
        "t-trig",
        &[&format!("{BASE}/#"), "homeassistant/#"],
    )
    .await;

    let disc = c
        .wait("door discovery", 60, component("cam1", "door"))
        .await;
    let retained = Client::connect(
        broker.port,
        "t-late",
        &["homeassistant/device/moonwatch_cam1/config"],
    )
    .await
    .wait("retained discovery", 10, |_| true)
    .await;
    assert!(retained.retain && retained.payload == disc.payload);
    let device = disc.json();
    assert_eq!(device["dev"]["identifiers"][0], "moonwatch_cam1");
    assert_eq!(device["o"]["name"], "moonwatch");
    let v = device["cmps"]["door"].clone();
    assert_eq!(v["p"], "binary_sensor");
    assert_eq!(
        (v["device_class"].as_str(), v["state_topic"].as_str()),
        (Some("door"), Some("moonwatch/cam1/trigger/door"))
    );
    // With threshold 0.5 and one observation, the first evaluation decides the state.
    let state = c
        .wait("door state", 60, topic(&format!("{BASE}/trigger/door")))
        .await;
    assert_eq!(&state.payload[..], b"ON");
    let attrs = c
        .wait(
            "door attributes",
            30,
            topic(&format!("{BASE}/trigger/door/attributes")),
        )
        .await
        .json();
    assert!(
        attrs["confidence"].as_f64().unwrap() >= 0.5 && attrs["frame_seq"].as_u64().unwrap() > 0
    );
    c.wait("stats", 30, topic(&format!("{BASE}/stats"))).await;

    // Add a trigger over MQTT: discovery, state, and persisted in the state directory.
    c.publish(
        &format!("{BASE}/request/trigger_add"),
        json!({"trigger": {"name": "car", "object": "car", "consecutive": 1, "interval": 1}, "transaction": "add"}).to_string(),
    )
    .await;
    let r = c
        .wait("add reply", 30, |m| {
            m.topic.contains("/response/") && m.json()["transaction"] == "add"
        })
        .await
        .json();
    assert_eq!(
        (r["status"].as_str(), r["data"]["persisted"].as_bool()),
        (Some("ok"), Some(true)),
        "{r}"
    );
    c.wait("car discovery", 30, component("cam1", "car_count"))
        .await;
    c.wait("car state", 60, topic(&format!("{BASE}/trigger/car")))
        .await;
    let saved = std::fs::read_to_string(dir.path().join("state/triggers.json")).unwrap();
    assert!(saved.contains("\"car\""), "{saved}");

    // Home Assistant coming online gets discovery again.
    c.clear();
    c.publish("homeassistant/status", "online").await;
    c.wait("rediscovery", 30, component("cam1", "car")).await;

    // Remove the configured one: its entity is deleted with an empty retained config.
    c.clear();
    c.publish(
        &format!("{BASE}/request/trigger_remove"),
        json!({"name": "door"}).to_string(),
    )
    .await;
    // Every entity of it: the device config lists each with its platform alone.
    for object in ["door", "door_enabled", "door_event", "door_snapshot"] {
        c.wait("door deleted", 30, component_removed("cam1", object))
            .await;
    }
    let list_req = json!({"transaction": "list"}).to_string();
    c.publish(&format!("{BASE}/request/trigger_list"), list_req)
        .await;
    let list = c
        .wait("list", 30, |m| {
            m.topic.contains("/response/") && m.json()["transaction"] == "list"
        })
        .await
        .json();
    let names: Vec<&str> = list["data"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trigger"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["car"]);

    // SIGHUP: a trigger added to the file appears without the connection dropping.
    c.clear();
    let cfg = std::fs::read_to_string(&d.config).unwrap()
        + "[[trigger]]\nname = \"porch\"\nquestion = \"Is someone on the porch?\"\ninterval = 1\n";
    std::fs::write(&d.config, cfg).unwrap();
    d.signal(libc::SIGHUP);
    c.wait(
        "porch discovery after SIGHUP",
        30,
        component("cam1", "porch"),
    )
    .await;
    assert!(!c
        .seen
        .iter()
        .any(|m| m.topic == format!("{BASE}/availability") && &m.payload[..] == b"offline"));
    // The new trigger is evaluated: an observable event, not a log line.
    c.wait(
        "porch evaluated after SIGHUP",
        60,
        topic(&format!("{BASE}/trigger/porch/attributes")),
    )
    .await;
    // stderr is a file here, as under systemd: no colour codes in it.
    assert!(
        !d.log().contains('\x1b'),
        "ANSI escapes in a non-terminal log"
    );
    // Discovery configs, states and attributes match their schemas.
    let discovery = c
        .seen
        .iter()
        .filter(|m| m.topic.starts_with("homeassistant/") && !m.payload.is_empty())
        .count();
    assert!(discovery > 0);
    assert!(validate_published(&c.seen) > discovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_offline_retained_with_password_and_acl_on_v311() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    std::fs::write(&pw, "").unwrap();
    let st = Command::new("mosquitto_passwd")
        .args(["-b"])
        .arg(&pw)
        .args(["cam", "s3cret"])
        .status()
        .unwrap();
    assert!(st.success());
    Command::new("mosquitto_passwd")
        .args(["-b"])
        .arg(&pw)
        .args(["watcher", "w"])
        .status()
        .unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user cam\ntopic readwrite moonwatch/#\ntopic readwrite homeassistant/#\n\nuser watcher\ntopic readwrite #\n").unwrap();
    let broker = Broker::start(
        dir.path(),
        &format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}",
            pw.display(),
            acl.display()
        ),
    );
    let secret = dir.path().join("mqtt-password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let mut cfg = config(dir.path(), broker.port, "v3.1.1", "");
    cfg = cfg.replace(
        "[daemon]",
        &format!(
            "username = \"cam\"\npassword_file = \"{}\"\n[daemon]",
            secret.display()
        ),
    );
    let mut d = Daemon::start(dir.path(), &cfg);

    let watcher = |id: &'static str| {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.port);
        o.set_credentials("watcher", "w");
        o
    };
    let (client, mut el) = AsyncClient::new(watcher("w1"), 16);
    client
        .subscribe(format!("{BASE}/availability"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let wait_for = |want: &'static [u8]| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "availability never became {want:?}"
            );
            if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
                tokio::time::timeout(Duration::from_secs(1), el.poll()).await
            {
                if &p.payload[..] == want {
                    return el;
                }
            }
        }
    };
    let _el = wait_for(b"online").await;

    d.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not stop on SIGTERM:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{}", d.log());
    // A new subscriber sees the retained offline.
    let (client2, mut el2) = AsyncClient::new(watcher("w2"), 16);
    client2
        .subscribe(format!("{BASE}/availability"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no retained availability");
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_secs(1), el2.poll()).await
        {
            assert_eq!(&p.payload[..], b"offline");
            assert!(p.retain);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_qos1_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_persistent(dir.path(), "allow_anonymous true");
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, "v5", ""));
    {
        let mut c = Client::connect(broker.port, "t-r1", &[&format!("{BASE}/availability")]).await;
        c.wait("online", 60, |m| &m.payload[..] == b"online").await;
    }
    broker.terminate();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.spawn();
    // Requests sent right after the restart, most likely before the daemon is back: the
    // broker queues them for the daemon's persistent session.
    let mut c = Client::connect(broker.port, "t-r2", &[&format!("{BASE}/response/yes_no")]).await;
    for i in 0..3 {
        c.publish(
            &format!("{BASE}/request/yes_no"),
            json!({"question": "Is it on?", "transaction": i}).to_string(),
        )
        .await;
    }
    for i in 0..3 {
        c.wait("reply after restart", 60, |m| {
            m.json()["transaction"] == i && m.json()["status"] == "ok"
        })
        .await;
    }
    assert!(d.log().contains("lost the broker"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    tls_round(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_client_certificates() {
    tls_round(true).await;
}

/// A TLS broker with a CA made here; with `mutual`, it also demands client certificates.
async fn tls_round(mutual: bool) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ssl = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl {args:?}");
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    // A key and a certificate signed by the CA, with one X.509 extension.
    let issue = |name: &str, subject: &str, extension: &str| {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.cnf"),
        );
        ssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ]);
        std::fs::write(p(&ext), format!("{extension}\n")).unwrap();
        ssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
    };
    issue("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1");
    let mut client_auth = None;
    let mut broker_extra = String::new();
    let mut daemon_extra = String::new();
    if mutual {
        issue("client", "/CN=moonwatch", "extendedKeyUsage=clientAuth");
        broker_extra = "require_certificate true".into();
        daemon_extra = format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\n",
            p("client.crt").display(),
            p("client.key").display()
        );
        client_auth = Some((
            std::fs::read(p("client.crt")).unwrap(),
            std::fs::read(p("client.key")).unwrap(),
        ));
    }
    let broker = Broker::start(
        dir.path(),
        &format!(
            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n{broker_extra}",
            p("ca.crt").display(),
            p("server.crt").display(),
            p("server.key").display()
        ),
    );
    let cfg = config(dir.path(), broker.port, "v5", "").replace(
        "[daemon]",
        &format!(
            "host = \"127.0.0.1\"\ntls = true\nca_file = \"{}\"\n{daemon_extra}[daemon]",
            p("ca.crt").display()
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    // The test client speaks TLS with the same CA.
    let mut o = MqttOptions::new("t-tls", "127.0.0.1", broker.port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: std::fs::read(p("ca.crt")).unwrap(),
            alpn: None,
            client_auth,
        },
    ));
    let (client, mut el) = AsyncClient::new(o, 16);
    client
        .subscribe(format!("{BASE}/availability"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no online over TLS:\n{}",
            d.log()
        );
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_secs(1), el.poll()).await
        {
            if &p.payload[..] == b"online" {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_begin_and_end_events_follow_the_models_answers() {
    // A model that always says yes, then (after SIGHUP) one that always says no.
    let yes = common::tiny_yes();
    let no = common::answering(" No", true);
    let trigger = "[[trigger]]\nname = \"door\"\nquestion = \"Is the door open?\"\n\
                   threshold = 0.55\nconsecutive = 1\ncooldown = 0\ninterval = 1\n";
    let Rig {
        dir,
        broker,
        daemon: d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| config_for(&yes, dir, port, "v5", trigger),
        "t-events",
        &[&format!("{BASE}/#")],
    )
    .await;
    let with_no = config_for(&no, dir.path(), broker.port, "v5", trigger);
    assert_ne!(std::fs::read_to_string(&d.config).unwrap(), with_no);

    let begin = c
        .wait("begin event", 60, |m| {
            m.topic == format!("{BASE}/trigger/door/event") && m.json()["type"] == "begin"
        })
        .await
        .json();
    assert!(begin["confidence"].as_f64().unwrap() > 0.9, "{begin}");
    assert_eq!(
        begin["snapshot_topic"],
        format!("{BASE}/trigger/door/snapshot")
    );
    assert_eq!(begin["event_type"], "begin");
    c.wait("ON", 10, |m| {
        m.topic == format!("{BASE}/trigger/door") && &m.payload[..] == b"ON"
    })
    .await;
    for t in [
        format!("{BASE}/snapshot"),
        format!("{BASE}/trigger/door/snapshot"),
    ] {
        let snap = c.wait("snapshot", 10, topic(&t)).await;
        assert_eq!(&snap.payload[..2], &[0xff, 0xd8]);
    }

    std::fs::write(&d.config, &with_no).unwrap();
    d.signal(libc::SIGHUP);
    let end = c
        .wait("end event", 60, |m| {
            m.topic == format!("{BASE}/trigger/door/event") && m.json()["type"] == "end"
        })
        .await
        .json();
    assert!(end["duration_s"].as_f64().unwrap() > 0.0, "{end}");
    c.wait("OFF", 10, |m| {
        m.topic == format!("{BASE}/trigger/door") && &m.payload[..] == b"OFF"
    })
    .await;
    // Events and attributes match their schemas.
    assert!(validate_published(&c.seen) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_mqtt_are_whole_and_object_triggers_use_presence() {
    // A model whose every answer is " Yes [0.25, 0.30, 0.75, 0.90]" then end-of-text.
    let pair = common::answering(" Yes [0.25, 0.30, 0.75, 0.90]", true);
    let trigger = "[[trigger]]\nname = \"car\"\nobject = \"car\"\n\
                   threshold = 0.9\nconsecutive = 1\ncooldown = 0\ninterval = 1\n";
    let Rig {
        dir: _dir,
        broker: _broker,
        daemon: _d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| {
            config_for(&pair, dir, port, "v5", trigger)
                .replace("max_tokens = 12", "max_tokens = 64")
        },
        "t-answers",
        &["client/inbox", &format!("{BASE}/#")],
    )
    .await;
    c.wait("online", 60, |m| {
        m.topic == format!("{BASE}/availability") && &m.payload[..] == b"online"
    })
    .await;

    let ask = |skill: &str, body: Value, corr: &'static [u8]| {
        let topic = format!("{BASE}/request/{skill}");
        (topic, body, corr)
    };
    for (topic, body, corr) in [
        ask("query", json!({"question": "What is here?"}), b"q"),
        ask("detect", json!({"object": "car"}), b"d"),
        ask("yes_no", json!({"question": "Is it a car?"}), b"y"),
    ] {
        c.request_v5(&topic, body, "client/inbox", corr).await;
    }
    async fn reply(c: &mut Client, corr: &[u8]) -> Value {
        c.wait("reply", 60, |m| {
            m.topic == "client/inbox" && m.correlation.as_deref() == Some(corr)
        })
        .await
        .json()
    }
    let q = reply(&mut c, b"q").await;
    assert_eq!(q["data"]["answer"], "Yes [0.25, 0.30, 0.75, 0.90]", "{q}");
    assert_eq!(q["data"]["timing"]["stop_reason"], "end_of_text", "{q}");
    let d = reply(&mut c, b"d").await;
    assert_eq!(d["data"]["present"], true, "{d}");
    let objects = d["data"]["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "{d}");
    for (k, want) in [
        ("x_min", 0.25),
        ("y_min", 0.30),
        ("x_max", 0.75),
        ("y_max", 0.90),
    ] {
        let got = objects[0][k].as_f64().unwrap();
        assert!((got - want).abs() < 1e-6, "{k}: {got} in {d}");
    }
    let y = reply(&mut c, b"y").await;
    assert_eq!(y["data"]["answer"], true, "{y}");

    // The object trigger goes on from the presence answer's confidence.
    c.wait("car ON", 60, |m| {
        m.topic == format!("{BASE}/trigger/car") && &m.payload[..] == b"ON"
    })
    .await;
    let attrs = c
        .wait(
            "car attributes",
            10,
            topic(&format!("{BASE}/trigger/car/attributes")),
        )
        .await
        .json();
    assert!(attrs["confidence"].as_f64().unwrap() > 0.99, "{attrs}");
    assert_eq!(attrs["details"]["count"], 1, "{attrs}");
}

/// Collects what the daemon tells systemd on a NOTIFY_SOCKET of the test's own.
fn notifications(sock: &std::os::unix::net::UnixDatagram, for_: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + for_;
    let mut out = vec![];
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    out
}

#[test]
fn systemd_hears_ready_and_a_watchdog_that_a_camera_outage_does_not_stop() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "allow_anonymous true");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let env = [
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        // 2 s: the daemon pings every second while healthy.
        ("WATCHDOG_USEC", "2000000"),
    ];
    let d = Daemon::start_env(dir.path(), &config(dir.path(), broker.port, "v5", ""), &env);
    let heard = notifications(&sock, Duration::from_secs(20));
    assert!(
        heard.iter().any(|m| m.contains("READY=1")),
        "{heard:?}\n{}",
        d.log()
    );
    let pings = heard.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        pings >= 5,
        "only {pings} watchdog pings in 20 s with a working camera: {heard:?}"
    );
    drop(d);

    // A camera that never delivers: the daemon and its engine are alive, so the watchdog
    // goes on (a restart cannot plug a camera in); the outage is reported instead.
    let dir2 = tempfile::tempdir().unwrap();
    let sock_path = dir2.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let env = [
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "2000000"),
    ];
    let no_camera = config(dir2.path(), broker.port, "v5", "").replace(
        "source = \"test\"",
        "source = \"file\"\npath = \"/nonexistent/clip.avi\"",
    );
    let d = Daemon::start_env(dir2.path(), &no_camera, &env);
    let heard = notifications(&sock, Duration::from_secs(8));
    assert!(
        heard.iter().any(|m| m.contains("READY=1")),
        "{heard:?}\n{}",
        d.log()
    );
    let pings = heard.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "{pings} pings without a camera: {heard:?}");
    assert!(d.log().contains("camera unavailable"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_answer_is_no_observation_for_a_trigger() {
    // Every answer is " a red square": neither yes nor no.
    let pair = common::answering(" a red square", true);
    let trigger = "[[trigger]]\nname = \"door\"\nquestion = \"Is the door open?\"\n\
                   threshold = 0.5\nconsecutive = 1\ncooldown = 0\ninterval = 1\n";
    let Rig {
        dir: _dir,
        broker: _broker,
        daemon: _d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| config_for(&pair, dir, port, "v5", trigger),
        "t-uncertain",
        &[&format!("{BASE}/#")],
    )
    .await;
    let attrs_topic = format!("{BASE}/trigger/door/attributes");
    let attrs = topic(&attrs_topic);
    let first = c.wait("attributes", 60, &attrs).await.json();
    assert_eq!(first["answer"], Value::Null, "{first}");
    // Two more evaluations later, still no state: the answers were not observations.
    for _ in 0..2 {
        c.clear();
        let a = c.wait("attributes", 60, &attrs).await.json();
        assert_eq!(a["answer"], Value::Null, "{a}");
        assert!(
            !c.seen
                .iter()
                .any(|m| m.topic == format!("{BASE}/trigger/door")),
            "a state was published from uncertain answers"
        );
    }
}

// ---- faults: bursts, outages, kills, hostile input ------------------------------------

/// Waits for the daemon process to end; panics after `secs`.
fn wait_exit(d: &mut Daemon, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not stop within {secs} s:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Collects replies on `topic` by correlation data until `want` distinct ones arrived;
/// returns how many times each was answered.
async fn replies_by_correlation(
    c: &mut Client,
    reply_topic: &str,
    want: usize,
    secs: u64,
) -> std::collections::HashMap<Vec<u8>, Vec<Value>> {
    let mut by: std::collections::HashMap<Vec<u8>, Vec<Value>> = Default::default();
    for m in c.seen.drain(..) {
        if m.topic == reply_topic {
            by.entry(m.correlation.clone().unwrap_or_default().to_vec())
                .or_default()
                .push(m.json());
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while by.len() < want {
        match tokio::time::timeout_at(deadline, c.rx.recv()).await {
            Ok(Some(m)) if m.topic == reply_topic => by
                .entry(m.correlation.clone().unwrap_or_default().to_vec())
                .or_default()
                .push(m.json()),
            Ok(Some(_)) => {}
            _ => panic!("only {} of {want} requests answered", by.len()),
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_300_requests_of_every_kind_are_each_answered_exactly_once() {
    let Rig {
        dir: _dir,
        broker: _broker,
        daemon: mut d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true\nmax_queued_messages 10000",
        |dir, port| config(dir, port, "v5", ""),
        "t-burst",
        &["burst/#", &format!("{BASE}/availability")],
    )
    .await;
    c.wait("online", 60, |m| &m.payload[..] == b"online").await;
    type Body = fn(usize) -> Value;
    let kinds: Vec<(&str, Body)> = vec![
        ("snapshot", |_| json!({})),
        (
            "trigger_add",
            |i| json!({"trigger": {"name": format!("t{i}"), "question": "Is it on?"}}),
        ),
        ("trigger_remove", |i| json!({"name": format!("t{i}")})),
        ("query", |_| json!({"question": "What is it?"})),
        ("yes_no", |_| json!({"question": "Is it on?"})),
        ("caption", |_| json!({})),
        ("detect", |_| json!({"object": "car"})),
        ("point", |_| json!({"object": "car"})),
        ("trigger_list", |_| json!({})),
        ("health_check", |_| json!({})),
    ];
    for (kind, body) in &kinds {
        let reply_topic = format!("burst/{kind}");
        for i in 0..300usize {
            c.request_v5(
                &format!("{BASE}/request/{kind}"),
                body(i),
                &reply_topic,
                &i.to_be_bytes(),
            )
            .await;
        }
        let by = replies_by_correlation(&mut c, &reply_topic, 300, 240).await;
        let all: Vec<Msg> = by
            .values()
            .flatten()
            .map(|v| Msg {
                topic: reply_topic.clone(),
                payload: Bytes::from(v.to_string()),
                retain: false,
                correlation: None,
            })
            .collect();
        assert_eq!(validate_published(&all), all.len());
        let twice: Vec<_> = by.values().filter(|v| v.len() > 1).collect();
        assert!(twice.is_empty(), "{kind}: answered twice: {twice:?}");
        let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
        for v in by.values() {
            let code = v[0]["error"]["code"].as_str().unwrap_or("ok").to_owned();
            *codes.entry(code).or_default() += 1;
        }
        eprintln!("{kind}: {codes:?}");
        assert!(
            codes.get("ok").copied().unwrap_or(0) > 0,
            "{kind}: {codes:?}"
        );
        match *kind {
            // 64 triggers at most (daemon.max_triggers).
            "trigger_add" => assert_eq!(codes.get("ok"), Some(&64), "{codes:?}"),
            "trigger_remove" => assert_eq!(codes.get("ok"), Some(&64), "{codes:?}"),
            "snapshot" | "health_check" | "trigger_list" => {
                assert_eq!(codes.get("ok"), Some(&300), "{codes:?}")
            }
            // The rest: answered or refused as busy, nothing else.
            _ => assert!(
                codes.keys().all(|k| k == "ok" || k == "busy"),
                "{kind}: {codes:?}"
            ),
        }
    }
    // Still responsive to signals after it all.
    d.signal(libc::SIGTERM);
    assert!(wait_exit(&mut d, 15).success(), "{}", d.log());
}

/// Publishes `n` queries (v5) with replies to `reply_topic`, correlation data 0..n.
async fn send_queries(c: &Client, n: u8, reply_topic: &str) {
    for i in 0..n {
        c.request_v5(
            &format!("{BASE}/request/query"),
            json!({"question": "What is it?"}),
            reply_topic,
            &[i],
        )
        .await;
    }
}

/// Reads `VmHWM` (peak) and `VmRSS` of a process, in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// An 8192x8192 RGB PNG (mostly one colour, so it is small on the wire), written a row
/// at a time.
fn huge_png() -> Vec<u8> {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file.reopen().unwrap()), 8192, 8192);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().unwrap().into_stream_writer().unwrap();
    let mut row = vec![90u8; 8192 * 3];
    for y in 0..8192usize {
        row[y * 3] = 200;
        std::io::Write::write_all(&mut w, &row).unwrap();
        row[y * 3] = 90;
    }
    w.finish().unwrap();
    std::fs::read(file.path()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_8192_pixel_pngs_keep_memory_bounded() {
    let png = huge_png();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let Rig {
        dir: _dir,
        broker: _broker,
        daemon: d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| {
            config(dir, port, "v5", "").replace(
                "max_payload = 65536",
                &format!("max_payload = {}", b64.len() + 4096),
            )
        },
        "t-png",
        &["png/#", &format!("{BASE}/availability")],
    )
    .await;
    // One small request first, so that everything lazily allocated is in the baseline.
    c.request_v5(
        &format!("{BASE}/request/query"),
        json!({"question": "What?"}),
        "png/r",
        b"warm",
    )
    .await;
    replies_by_correlation(&mut c, "png/r", 1, 60).await;
    let (peak_before, idle) = memory_kb(d.child.id());
    for i in 0..10u8 {
        c.request_v5(
            &format!("{BASE}/request/query"),
            json!({"question": "What is it?", "image": b64}),
            "png/r",
            &[i],
        )
        .await;
    }
    let by = replies_by_correlation(&mut c, "png/r", 10, 240).await;
    let answered: Vec<&Value> = by.values().map(|v| &v[0]).collect();
    assert!(answered.iter().any(|v| v["status"] == "ok"), "{answered:?}");
    for v in answered.iter().filter(|v| v["status"] == "ok") {
        // Reduced at once to 1024 pixels a side, aspect kept.
        assert_eq!(
            (v["data"]["width"].as_u64(), v["data"]["height"].as_u64()),
            (Some(1024), Some(1024)),
            "{v}"
        );
    }
    let (peak, _) = memory_kb(d.child.id());
    eprintln!(
        "idle {idle} kB, peak before {peak_before} kB, peak after ten 8192x8192 PNGs {peak} kB"
    );
    assert!(
        peak.max(peak_before) <= idle.max(peak_before) + 100 * 1024,
        "peak {peak} kB, idle {idle} kB, peak before {peak_before} kB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_requests_in_flight_loses_none() {
    let Rig {
        dir,
        broker: _broker,
        daemon: mut d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| config(dir, port, "v5", "").replace("max_pending = 4", "max_pending = 16"),
        "t-kill",
        &["kill/#", &format!("{BASE}/availability")],
    )
    .await;
    // The configuration it started with, to start it again.
    let cfg = std::fs::read_to_string(&d.config).unwrap();
    c.wait("online", 60, |m| &m.payload[..] == b"online").await;
    send_queries(&c, 10, "kill/r").await;
    // Kill as soon as the first answer is out: the rest are received, not yet answered.
    c.wait("first reply", 60, topic("kill/r")).await;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let answered_before = c.seen.iter().filter(|m| m.topic == "kill/r").count();
    let _d2 = Daemon::start(dir.path(), &cfg);
    let by = replies_by_correlation(&mut c, "kill/r", 10, 120).await;
    eprintln!("answered before the kill: {answered_before}; all 10 answered");
    for v in by.values() {
        assert_eq!(v[0]["status"], "ok", "{v:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_answers_every_request_and_disconnects_cleanly() {
    let Rig {
        dir,
        broker,
        daemon: mut d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| config(dir, port, "v5", ""),
        "t-term",
        &["term/#", &format!("{BASE}/availability")],
    )
    .await;
    // The configuration it started with, to start it again.
    let cfg = std::fs::read_to_string(&d.config).unwrap();
    let log = broker.conf.with_extension("log");
    c.wait("online", 60, |m| &m.payload[..] == b"online").await;
    send_queries(&c, 40, "term/r").await;
    c.wait("first reply", 60, topic("term/r")).await;
    d.signal(libc::SIGTERM);
    assert!(wait_exit(&mut d, 15).success(), "{}", d.log());
    let broker_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        broker_log.contains("Client moonwatch-cam1 disconnected."),
        "no clean DISCONNECT:\n{broker_log}"
    );
    c.wait("clean offline", 10, |m| {
        m.topic.ends_with("/availability") && &m.payload[..] == b"offline"
    })
    .await;
    // Requests the broker had not delivered yet wait in the session: a new run answers
    // them. None is answered twice.
    let _d2 = Daemon::start(dir.path(), &cfg);
    let by = replies_by_correlation(&mut c, "term/r", 40, 120).await;
    let twice: Vec<_> = by.values().filter(|v| v.len() > 1).collect();
    assert!(twice.is_empty(), "answered twice: {twice:?}");
    let stopping = by
        .values()
        .filter(|v| v[0]["error"]["code"] == "shutting_down")
        .count();
    eprintln!("40 answered once each; {stopping} with shutting_down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_broker_outage_keeps_ticks_signals_and_the_watchdog_going() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "allow_anonymous true");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let env = [
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "2000000"),
    ];
    let trigger = "[[trigger]]\nname = \"door\"\nquestion = \"Is the door open?\"\ninterval = 1\n";
    let mut d = Daemon::start_env(
        dir.path(),
        &config(dir.path(), broker.port, "v5", trigger),
        &env,
    );
    {
        let mut c =
            Client::connect(broker.port, "t-out1", &[&format!("{BASE}/availability")]).await;
        c.wait("online", 60, |m| &m.payload[..] == b"online").await;
    }
    broker.stop();
    let heard = notifications(&sock, Duration::from_secs(15));
    let pings = heard.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        pings >= 10,
        "{pings} watchdog pings in a 15 s outage: {heard:?}"
    );
    // The broker comes back: the daemon reconnects and publishes its newest state; what
    // was superseded during the outage is counted.
    broker.spawn();
    let mut c = Client::connect(broker.port, "t-out2", &[&format!("{BASE}/#")]).await;
    c.wait("online again", 60, |m| {
        m.topic.ends_with("/availability") && &m.payload[..] == b"online"
    })
    .await;
    let stats = c
        .wait("stats with superseded messages", 30, |m| {
            m.topic == format!("{BASE}/stats")
                && m.json()["outbox"]["superseded"].as_u64() > Some(0)
        })
        .await
        .json();
    eprintln!("after the outage: {}", stats["outbox"]);
    assert!(validate_published(&c.seen) >= 1);
    // A second outage, and SIGTERM in the middle of it: the daemon ends at once.
    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    d.signal(libc::SIGTERM);
    let t = Instant::now();
    assert!(wait_exit(&mut d, 10).success(), "{}", d.log());
    eprintln!(
        "stopped {:?} after SIGTERM with the broker down",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_answered_or_dropped_never_a_reconnect_loop() {
    for protocol in ["v3.1.1", "v5"] {
        // A rig (and broker) each: one client id must not carry a session from one
        // protocol to the other.
        let Rig {
            dir: _dir,
            broker: _broker,
            daemon: d,
            client: mut c,
        } = Rig::start(
            "allow_anonymous true",
            |dir, port| config(dir, port, protocol, ""),
            &format!("t-big-{protocol}"),
            &["big/#", &format!("{BASE}/#")],
        )
        .await;
        // Over max_payload (64 KiB) but readable: answered too_large (v5 carries the
        // response topic; v3.1.1 replies on the default topic).
        let mid = json!({"question": "x".repeat(100_000)});
        c.request_v5(&format!("{BASE}/request/query"), mid, "big/r", b"mid")
            .await;
        let answered = c
            .try_wait(30, |m| {
                (m.topic == "big/r" || m.topic == format!("{BASE}/response/query"))
                    && m.json()["error"]["code"] == "too_large"
            })
            .await;
        assert!(
            answered.is_some(),
            "no too_large over {protocol}:\n{}",
            d.log()
        );
        // Over the packet limit: v5 brokers drop it for us (Maximum Packet Size); v3.1.1
        // drops the session once. Either way the daemon serves the next request.
        let huge = vec![b'x'; 600_000];
        c.publish(&format!("{BASE}/request/query"), huge).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        c.request_v5(
            &format!("{BASE}/request/health_check"),
            json!({"transaction": "after"}),
            "big/r",
            b"after",
        )
        .await;
        c.wait("health after the oversized message", 30, |m| {
            m.json()["transaction"] == "after"
        })
        .await;
        let losses = d.log().matches("lost the broker").count();
        assert!(
            losses <= 1,
            "{losses} reconnects over {protocol}:\n{}",
            d.log()
        );
        drop(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_cannot_forge_or_flood_the_log() {
    let Rig {
        dir: _dir,
        broker: _broker,
        daemon: d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| config(dir, port, "v5", ""),
        "t-log",
        &[&format!("{BASE}/#")],
    )
    .await;
    c.wait("online", 60, |m| {
        m.topic.ends_with("/availability") && &m.payload[..] == b"online"
    })
    .await;
    let forged = "\n2026-01-01T00:00:00Z  INFO moonwatch: forged line";
    for i in 0..500 {
        c.publish(&format!("{BASE}/request/query"), format!("{{not json {i}"))
            .await;
    }
    // A reply topic the broker would refuse (control characters) is never used.
    c.publish(
        &format!("{BASE}/request/query"),
        json!({"question": "Q?", "reply_to": format!("x{forged}")}).to_string(),
    )
    .await;
    c.publish(
        &format!("{BASE}/request/trigger_add"),
        json!({"trigger": {"name": "x", "question": format!("Q?{forged}")}, "transaction": "last"})
            .to_string(),
    )
    .await;
    let last = c.try_wait(60, |m| m.json()["transaction"] == "last").await;
    assert!(last.is_some(), "no last reply:\n{}", d.log());
    c.wait("stats", 10, topic(&format!("{BASE}/stats"))).await;
    let log = d.log();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a forged line:\n{log}"
    );
    assert!(
        log.lines().count() < 40,
        "{} lines for 500 bad requests:\n{log}",
        log.lines().count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_asks_a_running_daemon_over_mqtt() {
    let pair = common::answering(" a red door", true);
    let Rig {
        dir,
        broker,
        daemon: _d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| config_for(&pair, dir, port, "v5", ""),
        "t-cli",
        &[&format!("{BASE}/availability")],
    )
    .await;
    c.wait("online", 60, |m| &m.payload[..] == b"online").await;
    let addr = format!("127.0.0.1:{}", broker.port);
    let cli = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_moonwatch"))
                .args(&args)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
    };
    let args = |v: &[&str]| -> Vec<String> { v.iter().map(|s| (*s).to_owned()).collect() };
    let remote = ["--broker", &addr, "--device", "cam1"];

    // On the daemon's camera, the whole known answer, as the local command prints it.
    let out = cli(args(
        &[&["ask"][..], &remote, &["What is this?", "And this?"]].concat(),
    ))
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[1] a red door\n[2] a red door\n"
    );

    // On an image sent along, with the JSON the local command prints.
    let img = common::png(dir.path(), "door.png", 3);
    let out = cli(args(
        &[
            &["caption", "--json", "--image", img.to_str().unwrap()][..],
            &remote,
        ]
        .concat(),
    ))
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["answers"][0]["caption"], "a red door", "{v}");

    // No daemon under that device id: a clear error, exit 75 (try again later).
    let out = cli(args(&[
        "yes-no",
        "--broker",
        &addr,
        "--device",
        "nosuch",
        "--timeout",
        "2",
        "Open?",
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(75));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("moonwatch/nosuch/request/yes_no"), "{err}");

    // No broker there: exit 69 (unavailable).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = cli(args(&["ask", "--broker", &closed.to_string(), "Q?"]))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A daemon error comes back as the local command's exit code: a bad image is 65.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = cli(args(
        &[
            &["ask", "--image", bad.to_str().unwrap()][..],
            &remote,
            &["Q?"],
        ]
        .concat(),
    ))
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_switched_off_from_home_assistant_stays_off_across_a_restart() {
    let trigger = "[[trigger]]\nname = \"door\"\nquestion = \"Is the door open?\"\ninterval = 1\n";
    // The per-entity discovery form, for Home Assistant before 2024.11.
    let entity_form = |dir: &Path, port| {
        config_for(&common::tiny_yes(), dir, port, "v5", trigger).replace(
            "device_id = \"cam1\"",
            "device_id = \"cam1\"\ndiscovery_form = \"entity\"",
        )
    };
    let Rig {
        dir,
        broker,
        daemon: mut d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        entity_form,
        "t-switch",
        &[&format!("{BASE}/#"), "homeassistant/#"],
    )
    .await;
    let cfg = entity_form(dir.path(), broker.port);
    c.wait(
        "switch entity",
        60,
        topic("homeassistant/switch/moonwatch_cam1/door_enabled/config"),
    )
    .await;
    c.wait(
        "evaluated",
        60,
        topic(&format!("{BASE}/trigger/door/attributes")),
    )
    .await;
    c.publish(&format!("{BASE}/trigger/door/set"), "OFF").await;
    c.wait("switched off", 30, |m| {
        m.topic == format!("{BASE}/trigger/door/enabled") && &m.payload[..] == b"OFF"
    })
    .await;
    // Two stats messages after the switch: no evaluation between them.
    let evals = |m: &Msg| m.json()["counters"]["trigger_evaluations"].as_u64();
    c.clear();
    let a = evals(&c.wait("stats", 30, topic(&format!("{BASE}/stats"))).await);
    c.clear();
    let b = evals(&c.wait("stats", 30, topic(&format!("{BASE}/stats"))).await);
    assert_eq!(a, b, "evaluated while switched off");
    // Restarted, it is still off (triggers.json), and says so.
    d.signal(libc::SIGTERM);
    assert!(wait_exit(&mut d, 15).success());
    let _d = Daemon::start(dir.path(), &cfg);
    c.clear();
    c.wait("online", 60, |m| {
        m.topic == format!("{BASE}/availability") && &m.payload[..] == b"online"
    })
    .await;
    c.publish(
        &format!("{BASE}/request/trigger_list"),
        json!({"transaction": "l"}).to_string(),
    )
    .await;
    let list = c
        .wait("list", 30, |m| {
            m.topic.contains("/response/") && m.json()["transaction"] == "l"
        })
        .await
        .json();
    assert_eq!(list["data"]["triggers"][0]["enabled"], false, "{list}");
    assert!(validate_published(&c.seen) > 0);
    // Restarted in the device form: what the entity form left on the broker is handed
    // over with Home Assistant's handshake and cleared, then the device config comes.
    drop(_d);
    let device = cfg.replace("discovery_form = \"entity\"", "discovery_form = \"device\"");
    c.clear();
    let _d = Daemon::start(dir.path(), &device);
    let old = "homeassistant/switch/moonwatch_cam1/door_enabled/config";
    c.wait("the handshake on the old config", 60, |m| {
        m.topic == old && &m.payload[..] == br#"{"migrate_discovery":true}"#
    })
    .await;
    c.wait("the old config cleared", 30, |m| {
        m.topic == old && m.payload.is_empty()
    })
    .await;
    c.wait(
        "the device config",
        30,
        topic("homeassistant/device/moonwatch_cam1/config"),
    )
    .await;
    let at = |p: &dyn Fn(&Msg) -> bool| c.seen.iter().position(p).unwrap();
    let order = [
        at(&|m| m.topic == old && !m.payload.is_empty()),
        at(&|m| m.topic == old && m.payload.is_empty()),
        at(&|m| m.topic == "homeassistant/device/moonwatch_cam1/config"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // Nothing of the entity form is left for a reload of Home Assistant to bring back.
    let mut fresh = Client::connect(
        broker.port,
        "t-fresh",
        &["homeassistant/+/moonwatch_cam1/+/config"],
    )
    .await;
    assert!(fresh.try_wait(3, |m| !m.payload.is_empty()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_cameras_share_one_engine_each_with_its_own_topics_and_device() {
    let single =
        "[camera]\nsource = \"test\"\nwidth = 160\nheight = 120\nfps = 10\ncapture_rate = 4.0\n";
    let cameras = r#"
[[camera]]
name = "drive"
source = "test"
pattern = "smpte"
width = 160
height = 120
fps = 10
capture_rate = 4.0
[camera.zones]
gate = [0.5, 0.0, 1.0, 0.5]
[[camera.trigger]]
name = "gate_open"
question = "Is the gate open?"
zone = "gate"
threshold = 0.5
consecutive = 1
interval = 1

[[camera]]
name = "porch"
source = "test"
pattern = "ball"
width = 160
height = 120
fps = 10
capture_rate = 4.0
[[camera.trigger]]
name = "someone"
question = "Is someone there?"
threshold = 0.5
consecutive = 1
interval = 1
"#;
    // One process (its availability under mqtt.device_id, which the Rig waits for), two
    // devices.
    let Rig {
        dir,
        broker: _broker,
        daemon: mut d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| {
            config_for(&common::tiny_yes(), dir, port, "v5", "").replace(single, "") + cameras
        },
        "t-cams",
        &["moonwatch/#", "homeassistant/#", "t-cams/#"],
    )
    .await;
    let drive = c
        .wait("drive's device", 60, component("drive", "gate_open"))
        .await
        .json();
    c.wait("porch's device", 60, component("porch", "someone"))
        .await;
    let gate = &drive["cmps"]["gate_open"];
    assert_eq!(gate["state_topic"], "moonwatch/drive/trigger/gate_open");
    assert_eq!(
        gate["availability"][0]["topic"],
        "moonwatch/cam1/availability"
    );
    assert_eq!(
        gate["availability"][1]["topic"],
        "moonwatch/drive/camera/availability"
    );
    assert_eq!(drive["dev"]["identifiers"][0], "moonwatch_drive");
    // Both cameras' triggers are evaluated by the one engine, each on its own topics.
    for t in [
        "moonwatch/drive/trigger/gate_open",
        "moonwatch/porch/trigger/someone",
    ] {
        let m = c.wait(t, 90, topic(t)).await;
        assert_eq!(&m.payload[..], b"ON", "{t}");
    }
    // A request names its camera by topic, and may look at a zone only.
    c.request_v5(
        "moonwatch/porch/request/yes_no",
        json!({"question": "Is it day?", "zone": [0.0, 0.0, 0.5, 0.5]}),
        "t-cams/replies",
        b"z1",
    )
    .await;
    let Some(r) = c.try_wait(60, topic("t-cams/replies")).await else {
        panic!("no zone reply; log:\n{}", d.log())
    };
    let r = r.json();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["data"]["answer"], true, "{r}");
    assert_eq!(r["data"]["zone"], json!([0.0, 0.0, 0.5, 0.5]), "{r}");
    // A zone the camera does not have is refused with the ones it has.
    let r = c
        .ask_v5(
            "moonwatch/porch/request/yes_no",
            json!({"question": "Is it day?", "zone": "gate"}),
            "t-cams/replies2",
            "bad zone reply",
            30,
        )
        .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // A detection asked to be annotated publishes its picture on the camera's topic.
    let r = c
        .ask_v5(
            "moonwatch/drive/request/detect",
            json!({"object": "car", "annotate": true}),
            "t-cams/replies3",
            "detect reply",
            60,
        )
        .await;
    assert_eq!(
        r["data"]["annotated_topic"], "moonwatch/drive/annotated",
        "{r}"
    );
    let jpeg = c
        .wait("annotated picture", 30, topic("moonwatch/drive/annotated"))
        .await;
    let img = image::load_from_memory(&jpeg.payload).expect("a JPEG");
    assert_eq!((img.width(), img.height()), (160, 120));
    // Triggers added to one camera are kept in that camera's file.
    c.publish(
        "moonwatch/porch/request/trigger_add",
        json!({"trigger": {"name": "cat", "question": "Is there a cat?"}, "transaction": "t"})
            .to_string(),
    )
    .await;
    c.wait("add reply", 30, |m| {
        m.topic == "moonwatch/porch/response/trigger_add" && m.json()["data"]["persisted"] == true
    })
    .await;
    let saved = std::fs::read_to_string(dir.path().join("state/triggers-porch.json")).unwrap();
    assert!(saved.contains("\"cat\""), "{saved}");
    assert!(!dir.path().join("state/triggers-drive.json").exists());
    for s in ["moonwatch/drive/stats", "moonwatch/porch/stats"] {
        c.wait(s, 30, topic(s)).await;
    }
    assert!(validate_published(&c.seen) > 0);
    d.signal(libc::SIGTERM);
    assert!(wait_exit(&mut d, 15).success());
    c.wait("offline", 15, |m| {
        m.topic == "moonwatch/cam1/availability" && &m.payload[..] == b"offline"
    })
    .await;
}

/// The mosquitto ACL of docs/fleet.md: the tests run the fleet under it.
fn fleet_acl() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/fleet.md"))
        .unwrap();
    let start = doc.find("```acl\n").expect("an acl block in docs/fleet.md") + 7;
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_without_a_model_hands_its_work_to_two_workers_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    std::fs::write(&pw, "").unwrap();
    for user in ["cam", "w1", "w2", "watcher"] {
        let st = Command::new("mosquitto_passwd")
            .args(["-b"])
            .arg(&pw)
            .args([user, &format!("{user}-pw")])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let acl = dir.path().join("acl");
    std::fs::write(&acl, fleet_acl() + "\nuser watcher\ntopic readwrite #\n").unwrap();
    let broker = Broker::start(
        dir.path(),
        &format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}",
            pw.display(),
            acl.display()
        ),
    );
    let yes = common::tiny_yes();
    let node = |id: &str, max_pending: u32, body: &str| {
        let d = dir.path().join(id);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = format!(
            "[mqtt]\nport = {}\ndevice_id = \"{id}\"\nusername = \"{id}\"\npassword = \"{id}-pw\"\n\
             [daemon]\nstate_dir = \"{}\"\nstats_interval = 1\nmax_pending = {max_pending}\n{body}",
            broker.port,
            d.join("state").display()
        );
        (d, cfg)
    };
    let worker_body = format!(
        "[model]\ntext = \"{}\"\nmmproj = \"{}\"\nthreads = 1\n[camera]\nsource = \"none\"\n[pool]\nserve = true\n",
        yes.text.display(),
        yes.mmproj.display()
    );
    let (d1, c1) = node("w1", 4, &worker_body);
    let (d2, c2) = node("w2", 4, &worker_body);
    let w1 = Daemon::start(&d1, &c1);
    let w2 = Daemon::start(&d2, &c2);
    let (dc, cc) = node(
        "cam",
        32,
        "[model]\ntext = \"\"\nmmproj = \"\"\n[camera]\nsource = \"test\"\npattern = \"white\"\nwidth = 160\nheight = 120\nfps = 10\ncapture_rate = 4.0\n\
         [pool]\noffload = true\njob_timeout = 4\nattempts = 5\n\
         [[trigger]]\nname = \"door\"\nquestion = \"Is the door open?\"\nthreshold = 0.5\nconsecutive = 1\ninterval = 1\n",
    );
    let cam = Daemon::start(&dc, &cc);
    let mut c = Client::connect_as(
        broker.port,
        "t-fleet",
        "watcher",
        "watcher-pw",
        &["moonwatch/#"],
    )
    .await;
    // A member of the workers' share group that never answers (a misconfigured client):
    // every other job sent to the share would vanish into it. The node sends its jobs on
    // the workers' direct topics, so none does.
    let _hole = Client::connect_as(
        broker.port,
        "t-hole",
        "watcher",
        "watcher-pw",
        &["$share/moonwatch/moonwatch/pool/request/+"],
    )
    .await;
    // The trigger is evaluated by a worker: the camera node has no model.
    let state = c
        .wait("door state", 60, topic("moonwatch/cam/trigger/door"))
        .await;
    assert_eq!(&state.payload[..], b"ON", "{}", cam.log());
    // Requests to the camera are answered through the pool, spread over both workers
    // (replies go to a topic the ACL lets the camera node write: under its own base).
    /// Waits for an `ok` answer to each request `q{i}`.
    async fn answered_ok(c: &mut Client, range: std::ops::Range<u32>, what: &str) {
        for i in range {
            let corr = format!("q{i}");
            let r = c
                .wait(what, 90, |m| {
                    m.topic == "moonwatch/cam/response/t-fleet"
                        && m.correlation.as_deref() == Some(corr.as_bytes())
                })
                .await
                .json();
            assert_eq!(r["status"], "ok", "{r}");
            let w = r["worker"].as_str().unwrap_or("");
            assert!(w == "w1" || w == "w2", "the reply names its worker: {r}");
        }
    }
    // Each request carries a picture of its own: a new picture goes to the shared topic.
    async fn ask(c: &Client, i: u32) {
        let img = image::RgbImage::from_pixel(32, 24, image::Rgb([i as u8 * 13, 40, 200]));
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let b64 =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png.into_inner());
        let body = json!({"question": format!("Is it day {i}?"), "image": b64});
        let corr = format!("q{i}");
        c.request_v5(
            "moonwatch/cam/request/yes_no",
            body,
            "moonwatch/cam/response/t-fleet",
            corr.as_bytes(),
        )
        .await
    }
    for i in 0..8 {
        ask(&c, i).await;
    }
    let answered = |c: &Client, i: u32| {
        let corr = format!("q{i}");
        c.seen
            .iter()
            .filter(|m| {
                m.topic == "moonwatch/cam/response/t-fleet"
                    && m.correlation.as_deref() == Some(corr.as_bytes())
            })
            .count()
    };
    c.wait("the 8th answer", 60, |m| {
        m.topic == "moonwatch/cam/response/t-fleet" && m.correlation.as_deref() == Some(&b"q7"[..])
    })
    .await;
    let served = |c: &Client, w: &str| {
        c.seen
            .iter()
            .rev()
            .find(|m| m.topic == format!("moonwatch/pool/worker/{w}"))
            .map_or(0, |m| m.json()["served"].as_u64().unwrap_or(0))
    };
    c.clear();
    c.wait("a heartbeat of w1", 10, topic("moonwatch/pool/worker/w1"))
        .await;
    c.wait("a heartbeat of w2", 10, topic("moonwatch/pool/worker/w2"))
        .await;
    assert!(
        served(&c, "w1") > 0 && served(&c, "w2") > 0,
        "jobs spread over both workers: w1 {}, w2 {}",
        served(&c, "w1"),
        served(&c, "w2")
    );
    // Questions on the camera's own frame (a still picture: pattern "white") follow the
    // picture to the worker that has it cached.
    for i in 0..3 {
        c.request_v5(
            "moonwatch/cam/request/yes_no",
            json!({"question": format!("Is it night {i}?")}),
            "moonwatch/cam/response/t-fleet-n",
            format!("n{i}").as_bytes(),
        )
        .await;
        c.wait("an answer on the camera frame", 30, |m| {
            m.topic == "moonwatch/cam/response/t-fleet-n"
                && m.correlation.as_deref() == Some(format!("n{i}").as_bytes())
        })
        .await;
    }
    c.clear();
    let stats = c
        .wait("stats with direct jobs", 10, topic("moonwatch/cam/stats"))
        .await
        .json();
    assert!(stats["pool"]["direct"].as_u64() >= Some(2), "{stats}");
    assert_eq!(
        stats["pool"]["shared"], 0,
        "nothing went to the share: {stats}"
    );
    assert_eq!(stats["pool"]["timeouts"], 0, "{stats}");
    // A worker that stalls mid-run (SIGSTOP: its connection stays up, the broker keeps
    // handing it jobs): every request is still answered once, by the other, after a retry.
    w1.signal(libc::SIGSTOP);
    for i in 8..16 {
        ask(&c, i).await;
    }
    answered_ok(&mut c, 8..16, "an answer while w1 stalls").await;
    // It wakes up and answers what it held: late results, ignored (each request was
    // answered exactly once).
    w1.signal(libc::SIGCONT);
    let stats = c
        .wait("stats counting late results", 30, |m| {
            m.topic == "moonwatch/cam/stats" && m.json()["pool"]["late"].as_u64() > Some(0)
        })
        .await
        .json();
    assert!(stats["pool"]["retries"].as_u64() > Some(0), "{stats}");
    // A forged duplicate result is ignored too.
    c.publish("moonwatch/cam/pool/reply", "{\"status\":\"ok\"}")
        .await;
    for i in 0..16 {
        assert_eq!(
            answered(&c, i),
            if i < 8 { 0 } else { 1 },
            "q{i} answered once"
        );
    }
    // A worker killed mid-run: what it held is sent again to the other; nothing is lost.
    for i in 16..20 {
        ask(&c, i).await;
    }
    w1.signal(libc::SIGKILL);
    answered_ok(&mut c, 16..20, "an answer after w1 was killed").await;
    // Both workers gone: the camera says so (health, stats, availability).
    drop(w2);
    c.wait("camera offline without workers", 30, |m| {
        m.topic == "moonwatch/cam/camera/availability" && &m.payload[..] == b"offline"
    })
    .await;
    c.request_v5(
        "moonwatch/cam/request/health_check",
        json!({}),
        "moonwatch/cam/response/t-fleet-h",
        b"h",
    )
    .await;
    let h = c
        .wait("health", 30, topic("moonwatch/cam/response/t-fleet-h"))
        .await
        .json();
    assert_eq!(h["data"]["healthy"], false, "{h}");
    assert!(
        h["data"]["problems"].to_string().contains("pool worker"),
        "{h}"
    );
    assert!(validate_published(&c.seen) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_node_with_a_model_runs_a_job_no_worker_answers_itself() {
    let trigger = "[[trigger]]\nname = \"door\"\nquestion = \"Is the door open?\"\nthreshold = 0.5\nconsecutive = 1\ninterval = 1\n";
    let Rig {
        dir: _dir,
        broker: _broker,
        daemon: _d,
        client: mut c,
    } = Rig::start(
        "allow_anonymous true",
        |dir, port| {
            config_for(&common::tiny_yes(), dir, port, "v5", trigger)
                + "[pool]\noffload = true\njob_timeout = 1\nattempts = 1\n"
        },
        "t-local",
        &[&format!("{BASE}/#"), "moonwatch/pool/#"],
    )
    .await;
    // No worker alive: the job runs here at once, without waiting on the pool.
    let state = c
        .wait("door state", 60, topic(&format!("{BASE}/trigger/door")))
        .await;
    assert_eq!(&state.payload[..], b"ON");
    assert!(
        !c.seen
            .iter()
            .any(|m| m.topic.starts_with("moonwatch/pool/")),
        "nothing was offered to a pool without workers"
    );
    // A worker that never answers (a heartbeat, and nothing behind it): after
    // pool.attempts x pool.job_timeout, here.
    let beat = json!({"online": true, "queue_depth": 0, "max_pending": 4, "served": 0,
        "interval_s": 3600, "slots": 1});
    c.publish_retained("moonwatch/pool/worker/ghost", &beat.to_string())
        .await;
    c.wait(
        "a job sent to the worker",
        30,
        topic("moonwatch/pool/direct/ghost/request/yes_no"),
    )
    .await;
    let stats = c
        .wait("stats counting the local run", 30, |m| {
            m.topic == format!("{BASE}/stats") && m.json()["pool"]["local"].as_u64() > Some(0)
        })
        .await
        .json();
    assert_eq!(stats["pool"]["workers"], 1, "{stats}");
    assert!(
        stats["pool"]["by_worker"]["ghost"]["suspect"].is_string(),
        "{stats}"
    );
    c.publish_retained("moonwatch/pool/worker/ghost", "").await;
}
