//! `moonwatch run`: the camera, the engine and the broker joined into a service.
//!
//! One async task owns all daemon state and reacts to a closed set of inputs: broker
//! events, the engine finishing a job, a 250 ms tick (schedules triggers, captions, stats,
//! the systemd watchdog) and signals. The engine runs one job at a time; the daemon keeps
//! its own priority queue in front of it: interactive requests, then triggers, then
//! periodic captions. Every queue is bounded; a request that cannot be served in time is
//! answered with `busy` or `timeout`.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::camera::{Camera, CameraStatus};
use crate::config::Config;
use crate::frame::Frame;
use crate::mqtt::api::{self, Action, ApiError, Code, ReplyAddress, Topics};
use crate::mqtt::{discovery, Incoming, Link, MqttEvent};
use crate::triggers::{self, Change, Observation, TriggerConfig, TriggerState};
use crate::vision::{moondream, Answer, Engine, EngineError, Request, Response, Skill, Ticket};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Setup(String),
}

/// Signals the daemon reacts to, forwarded from a signal-hook thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
}

/// Triggers added or removed over MQTT, kept in `{state_dir}/triggers.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct RuntimeTriggers {
    added: Vec<TriggerConfig>,
    removed: Vec<String>,
}

struct Trigger {
    cfg: TriggerConfig,
    state: TriggerState,
    last_eval: Option<f64>,
}

/// Work waiting for the engine, by priority.
enum Work {
    Interactive(Interactive),
    Triggers {
        names: Vec<String>,
        frame: Arc<Frame>,
    },
    Caption {
        frame: Arc<Frame>,
    },
}

struct Interactive {
    name: String,
    skill: Skill,
    /// The request's own image; `None` until the job runs, when it takes the newest camera
    /// frame (set then, so the reply can say which frame was used).
    frame: Option<Arc<Frame>>,
    reply: ReplyAddress,
    transaction: Option<Value>,
    received: Instant,
}

struct InFlight {
    work: Work,
    ticket: Ticket,
    cancel: crate::vision::Cancel,
    started: Instant,
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    requests: u64,
    errors: u64,
    inferences: u64,
    trigger_evaluations: u64,
    captions: u64,
    last_request_ms: Option<f64>,
    last_trigger_ms: Option<f64>,
}

/// How long a request waits for a camera that has not delivered its first frame yet.
const CAMERA_GRACE: Duration = Duration::from_secs(5);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name, reduced to what topics and entity ids accept.
pub fn default_device_id() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "moonwatch".into());
    let id: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() {
        "moonwatch".into()
    } else {
        id
    }
}

pub struct Daemon {
    cfg: Config,
    config_path: PathBuf,
    topics: Topics,
    link: Link,
    engine: Engine,
    camera: Camera,
    triggers: BTreeMap<String, Trigger>,
    runtime: RuntimeTriggers,
    queue: VecDeque<Interactive>,
    in_flight: Option<InFlight>,
    stats: Stats,
    started: Instant,
    connected: bool,
    /// An outage of the broker has been logged (once per outage).
    broker_down_reported: bool,
    last_caption: Option<f64>,
    last_stats: Option<f64>,
    last_thumb: Option<[u8; 64]>,
    scene_changed: bool,
    last_watchdog: Option<Instant>,
    stopping: bool,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("base", &self.topics.base)
            .field("triggers", &self.triggers.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

fn load_runtime(state_dir: &Path) -> RuntimeTriggers {
    let path = state_dir.join("triggers.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!("{}: {e}; ignoring runtime triggers", path.display());
            RuntimeTriggers::default()
        }),
        Err(_) => RuntimeTriggers::default(),
    }
}

/// Configured triggers, less the removed, plus the added (an added one replaces a
/// configured one of the same name).
fn effective_triggers(cfg: &Config, rt: &RuntimeTriggers) -> BTreeMap<String, TriggerConfig> {
    let mut out: BTreeMap<String, TriggerConfig> = cfg
        .triggers
        .iter()
        .filter(|t| !rt.removed.contains(&t.name))
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    for t in &rt.added {
        out.insert(t.name.clone(), t.clone());
    }
    out
}

impl Daemon {
    /// Loads the model, starts the camera and connects to the broker.
    pub async fn start(
        cfg: Config,
        config_path: PathBuf,
    ) -> Result<(Self, mpsc::Receiver<MqttEvent>, tokio::task::JoinHandle<()>), DaemonError> {
        let device_id = if cfg.mqtt.device_id.is_empty() {
            default_device_id()
        } else {
            cfg.mqtt.device_id.clone()
        };
        let topics = Topics::new(&cfg.mqtt, &device_id);
        let settings = moondream::Settings::from_config(&cfg);
        let engine = tokio::task::spawn_blocking(move || moondream::start(settings))
            .await
            .map_err(|e| DaemonError::Setup(e.to_string()))??;
        let camera = Camera::start(&cfg.camera)
            .map_err(|e| DaemonError::Setup(format!("cannot start the camera thread: {e}")))?;
        let client_id = if cfg.mqtt.client_id.is_empty() {
            format!("moonwatch-{device_id}")
        } else {
            cfg.mqtt.client_id.clone()
        };
        let spec = crate::mqtt::connect_spec(&cfg.mqtt, client_id, topics.availability())
            .map_err(DaemonError::Setup)?;
        let (link, events, task) = crate::mqtt::start(&cfg.mqtt, spec);
        let runtime = load_runtime(&cfg.daemon.state_dir);
        let triggers = effective_triggers(&cfg, &runtime)
            .into_values()
            .map(|c| {
                (
                    c.name.clone(),
                    Trigger {
                        cfg: c,
                        state: TriggerState::new(),
                        last_eval: None,
                    },
                )
            })
            .collect();
        tracing::info!(device = %device_id, base = %topics.base, "moonwatch running");
        let daemon = Self {
            cfg,
            config_path,
            topics,
            link,
            engine,
            camera,
            triggers,
            runtime,
            queue: VecDeque::new(),
            in_flight: None,
            stats: Stats::default(),
            started: Instant::now(),
            connected: false,
            broker_down_reported: false,
            last_caption: None,
            last_stats: None,
            last_thumb: None,
            scene_changed: false,
            last_watchdog: None,
            stopping: false,
        };
        Ok((daemon, events, task))
    }

    /// Runs until a stop signal; then shuts down cleanly.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<MqttEvent>,
        mqtt_task: tokio::task::JoinHandle<()>,
        mut signals: mpsc::Receiver<Signal>,
    ) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                Some(ev) = events.recv() => self.on_mqtt(ev).await,
                result = finished(&mut self.in_flight) => {
                    if let Some(done) = self.in_flight.take() {
                        self.on_done(done, result).await;
                    }
                    self.schedule().await;
                }
                _ = tick.tick() => self.on_tick().await,
                sig = signals.recv() => match sig {
                    Some(Signal::Reload) => self.reload().await,
                    Some(Signal::Stop) | None => break,
                },
            }
        }
        self.shutdown(mqtt_task).await;
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        if let Err(e) = self.link.publish(topic, payload, retain, None).await {
            tracing::warn!("cannot publish to {topic}: {e}");
        }
    }

    async fn reply(
        &mut self,
        name: &str,
        to: &ReplyAddress,
        result: Result<Value, ApiError>,
        transaction: Option<&Value>,
    ) {
        let payload = match &result {
            Ok(data) => api::ok_reply(name, data.clone(), transaction),
            Err(e) => {
                self.stats.errors += 1;
                tracing::info!(request = name, code = ?e.code, "request failed: {}", e.message);
                api::error_reply(name, e, transaction)
            }
        };
        if let Err(e) = self
            .link
            .publish(&to.topic, payload, false, to.correlation.clone())
            .await
        {
            tracing::warn!("cannot reply on {}: {e}", to.topic);
        }
    }

    async fn on_connected(&mut self, session_present: bool) {
        tracing::info!(session_present, "connected to the broker");
        self.connected = true;
        self.broker_down_reported = false;
        for topic in [self.topics.requests(), self.topics.ha_status()] {
            if let Err(e) = self.link.subscribe(&topic).await {
                tracing::warn!("cannot subscribe to {topic}: {e}");
            }
        }
        self.publish(&self.topics.availability(), b"online".to_vec(), true)
            .await;
        self.publish_discovery().await;
        for t in self.triggers.values() {
            if let Some(on) = t.state.state {
                self.publish(&self.topics.trigger_state(&t.cfg.name), on_off(on), true)
                    .await;
            }
        }
    }

    async fn publish_discovery(&self) {
        if !self.cfg.mqtt.discovery {
            return;
        }
        for (topic, payload) in discovery::device_entities(&self.topics) {
            self.publish(&topic, payload, true).await;
        }
        for t in self.triggers.values() {
            self.publish_trigger_discovery(&t.cfg).await;
        }
    }

    /// A trigger's entities: its binary sensor, and a count sensor for object triggers.
    async fn publish_trigger_discovery(&self, cfg: &TriggerConfig) {
        if !self.cfg.mqtt.discovery {
            return;
        }
        let (topic, payload) = discovery::trigger(&self.topics, cfg);
        self.publish(&topic, payload, true).await;
        if let Some((topic, payload)) = discovery::object_count(&self.topics, cfg) {
            self.publish(&topic, payload, true).await;
        }
    }

    async fn on_mqtt(&mut self, ev: MqttEvent) {
        match ev {
            MqttEvent::Connected { session_present } => self.on_connected(session_present).await,
            MqttEvent::Disconnected(reason) => {
                if self.connected {
                    tracing::warn!("lost the broker: {reason}; reconnecting with backoff");
                } else if !self.broker_down_reported {
                    tracing::warn!(
                        "cannot reach the broker at {}:{}: {reason}; retrying with backoff",
                        self.cfg.mqtt.host,
                        self.cfg.mqtt.port
                    );
                } else {
                    tracing::debug!("broker still unreachable: {reason}");
                }
                self.broker_down_reported = true;
                self.connected = false;
            }
            MqttEvent::Message(m) if m.topic == self.topics.ha_status() => {
                if m.payload.as_ref() == b"online" {
                    tracing::info!("Home Assistant is online; republishing discovery");
                    self.publish_discovery().await;
                }
            }
            MqttEvent::Message(m) => self.on_request(m).await,
        }
    }

    async fn on_request(&mut self, m: Incoming) {
        let Some(name) = self.topics.request_name(&m.topic).map(str::to_owned) else {
            tracing::debug!(topic = %m.topic, "message on an unexpected topic");
            return;
        };
        self.stats.requests += 1;
        let corr = m.correlation.as_deref();
        let parsed = api::parse_request(&name, &m.payload, self.cfg.mqtt.max_payload);
        let req = match parsed {
            Ok(r) => r,
            Err((err, transaction, reply_to)) => {
                let to = api::reply_address(
                    &self.topics,
                    &name,
                    m.response_topic.as_deref(),
                    corr,
                    reply_to.as_deref(),
                );
                self.reply(&name, &to, Err(err), transaction.as_ref()).await;
                return;
            }
        };
        let to = api::reply_address(
            &self.topics,
            &name,
            m.response_topic.as_deref(),
            corr,
            req.reply_to.as_deref(),
        );
        let tx = req.transaction.clone();
        if self.stopping {
            let e = ApiError::new(Code::ShuttingDown, "moonwatch is stopping");
            self.reply(&name, &to, Err(e), tx.as_ref()).await;
            return;
        }
        let result = match req.action {
            Action::HealthCheck => {
                Ok(json!({ "healthy": true, "uptime_s": self.started.elapsed().as_secs() }))
            }
            Action::ListTriggers => Ok(self.trigger_list()),
            Action::AddTrigger(t) => Ok(self.add_trigger(t).await),
            Action::RemoveTrigger(n) => self.remove_trigger(&n).await,
            Action::Snapshot => self.snapshot(req.image.as_deref()).await,
            Action::Skill(skill) => {
                let frame = match req
                    .image
                    .as_deref()
                    .map(|b| Frame::decode(b, "the request's image"))
                {
                    None => None,
                    Some(Ok(f)) => Some(Arc::new(f)),
                    Some(Err(e)) => {
                        let e = ApiError::new(Code::BadImage, e.to_string());
                        self.reply(&name, &to, Err(e), tx.as_ref()).await;
                        return;
                    }
                };
                if self.queue.len() >= self.cfg.daemon.max_pending {
                    Err(ApiError::new(
                        Code::Busy,
                        format!("{} requests are already waiting", self.queue.len()),
                    ))
                } else {
                    self.queue.push_back(Interactive {
                        name,
                        skill,
                        frame,
                        reply: to,
                        transaction: tx,
                        received: Instant::now(),
                    });
                    self.schedule().await;
                    return;
                }
            }
        };
        self.reply(&name, &to, result, tx.as_ref()).await;
    }

    /// The request's own image, else the newest camera frame (waiting a few seconds for a
    /// camera that is starting).
    async fn frame_for(&self, image: Option<&[u8]>) -> Result<Arc<Frame>, ApiError> {
        if let Some(bytes) = image {
            return Frame::decode(bytes, "the request's image")
                .map(Arc::new)
                .map_err(|e| ApiError::new(Code::BadImage, e.to_string()));
        }
        let deadline = Instant::now() + CAMERA_GRACE;
        loop {
            if let Some(f) = self.camera.latest() {
                return Ok(f);
            }
            let status = self.camera.status();
            if let CameraStatus::Down { reason, .. } = &status {
                return Err(ApiError::new(
                    Code::CameraUnavailable,
                    format!("no camera frame ({reason}); send an \"image\" instead"),
                ));
            }
            if Instant::now() >= deadline {
                return Err(ApiError::new(
                    Code::CameraUnavailable,
                    "the camera has not delivered a frame yet; send an \"image\" instead",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn snapshot(&mut self, image: Option<&[u8]>) -> Result<Value, ApiError> {
        let frame = self.frame_for(image).await?;
        let jpeg = frame.to_jpeg(85);
        self.publish(&self.topics.snapshot(), jpeg.clone(), true)
            .await;
        Ok(json!({
            "topic": self.topics.snapshot(),
            "width": frame.width,
            "height": frame.height,
            "frame_time": unix(frame.captured_at),
            "frame_seq": frame.seq,
            "bytes": jpeg.len(),
        }))
    }

    fn trigger_list(&self) -> Value {
        let list: Vec<Value> = self
            .triggers
            .values()
            .map(|t| json!({ "trigger": t.cfg, "state": t.state.state.map(|on| if on { "ON" } else { "OFF" }), "confidence": t.state.last_confidence }))
            .collect();
        json!({ "triggers": list })
    }

    fn save_runtime(&self) -> bool {
        let dir = &self.cfg.daemon.state_dir;
        let path = dir.join("triggers.json");
        let tmp = dir.join("triggers.json.tmp");
        let result = std::fs::create_dir_all(dir)
            .and_then(|()| {
                std::fs::write(
                    &tmp,
                    serde_json::to_vec_pretty(&self.runtime).unwrap_or_default(),
                )
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = &result {
            tracing::warn!("cannot save runtime triggers to {}: {e}", path.display());
        }
        result.is_ok()
    }

    async fn add_trigger(&mut self, t: TriggerConfig) -> Value {
        self.runtime.removed.retain(|n| n != &t.name);
        self.runtime.added.retain(|x| x.name != t.name);
        self.runtime.added.push(t.clone());
        let persisted = self.save_runtime();
        self.publish_trigger_discovery(&t).await;
        let name = t.name.clone();
        self.triggers.insert(
            name.clone(),
            Trigger {
                cfg: t,
                state: TriggerState::new(),
                last_eval: None,
            },
        );
        json!({ "added": name, "persisted": persisted })
    }

    async fn remove_trigger(&mut self, name: &str) -> Result<Value, ApiError> {
        let Some(t) = self.triggers.remove(name) else {
            return Err(ApiError::new(
                Code::NotFound,
                format!("no trigger named {name:?}"),
            ));
        };
        self.runtime.added.retain(|x| x.name != name);
        if self.cfg.triggers.iter().any(|c| c.name == name)
            && !self.runtime.removed.iter().any(|n| n == name)
        {
            self.runtime.removed.push(name.to_owned());
        }
        let persisted = self.save_runtime();
        self.clear_trigger(&t.cfg).await;
        Ok(json!({ "removed": name, "persisted": persisted }))
    }

    /// Deletes a trigger's entity and its retained topics.
    async fn clear_trigger(&self, cfg: &TriggerConfig) {
        self.publish(&discovery::trigger_topic(&self.topics, cfg), vec![], true)
            .await;
        self.publish(&self.topics.trigger_state(&cfg.name), vec![], true)
            .await;
        self.publish(&self.topics.trigger_attributes(&cfg.name), vec![], true)
            .await;
    }

    /// Starts the next job when the engine is idle: interactive, then triggers, then captions.
    async fn schedule(&mut self) {
        if self.in_flight.is_some() || self.stopping {
            return;
        }
        let timeout = Duration::from_secs(self.cfg.daemon.request_timeout);
        while let Some(job) = self.queue.pop_front() {
            if job.received.elapsed() > timeout {
                let e = ApiError::new(
                    Code::Timeout,
                    format!("waited more than {} s for the engine", timeout.as_secs()),
                );
                self.reply(
                    &job.name.clone(),
                    &job.reply.clone(),
                    Err(e),
                    job.transaction.as_ref(),
                )
                .await;
                continue;
            }
            let frame = match job.frame.clone().or_else(|| self.camera.latest()) {
                Some(f) => f,
                None => match self.camera.status() {
                    // A camera still starting gets a few seconds; the job waits its turn.
                    CameraStatus::Starting | CameraStatus::Running
                        if job.received.elapsed() < CAMERA_GRACE =>
                    {
                        self.queue.push_front(job);
                        return;
                    }
                    status => {
                        let why = match status {
                            CameraStatus::Down { reason, .. } => reason,
                            _ => "the camera has not delivered a frame yet".into(),
                        };
                        let e = ApiError::new(
                            Code::CameraUnavailable,
                            format!("no camera frame ({why}); send an \"image\" instead"),
                        );
                        self.reply(&job.name, &job.reply, Err(e), job.transaction.as_ref())
                            .await;
                        continue;
                    }
                },
            };
            let skills = vec![job.skill.clone()];
            let job = Interactive {
                frame: Some(frame.clone()),
                ..job
            };
            self.submit(Work::Interactive(job), frame, skills).await;
            return;
        }
        let now = unix_now();
        let frame = self.camera.latest();
        if let Some(frame) = frame.clone() {
            let due: Vec<String> = self
                .triggers
                .values()
                .filter(|t| triggers::due(t.last_eval, t.cfg.interval, self.scene_changed, now))
                .map(|t| t.cfg.name.clone())
                .collect();
            if !due.is_empty() {
                self.scene_changed = false;
                let skills = due
                    .iter()
                    .filter_map(|n| self.triggers.get(n))
                    .map(|t| t.cfg.skill())
                    .collect();
                for n in &due {
                    if let Some(t) = self.triggers.get_mut(n) {
                        t.last_eval = Some(now);
                    }
                }
                self.submit(
                    Work::Triggers {
                        names: due,
                        frame: frame.clone(),
                    },
                    frame,
                    skills,
                )
                .await;
                return;
            }
        }
        let every = self.cfg.daemon.caption_interval;
        if let (Some(frame), true) = (frame, every > 0) {
            if self.last_caption.is_none_or(|t| now - t >= every as f64) {
                self.last_caption = Some(now);
                let skills = vec![Skill::Caption {
                    length: self.cfg.daemon.caption_length,
                }];
                self.submit(
                    Work::Caption {
                        frame: frame.clone(),
                    },
                    frame,
                    skills,
                )
                .await;
            }
        }
    }

    async fn submit(&mut self, work: Work, frame: Arc<Frame>, skills: Vec<Skill>) {
        let req = Request::new(frame, skills);
        let cancel = req.cancel.clone();
        match self.engine.submit(req) {
            Ok(ticket) => {
                self.in_flight = Some(InFlight {
                    work,
                    ticket,
                    cancel,
                    started: Instant::now(),
                })
            }
            Err(e) => {
                if let Work::Interactive(job) = work {
                    let err = ApiError::new(Code::Busy, e.to_string());
                    self.reply(&job.name, &job.reply, Err(err), job.transaction.as_ref())
                        .await;
                } else {
                    tracing::warn!("engine refused scheduled work: {e}");
                }
            }
        }
    }

    async fn on_done(&mut self, done: InFlight, result: Result<Response, EngineError>) {
        self.stats.inferences += 1;
        let elapsed = done.started.elapsed().as_secs_f64() * 1e3;
        match done.work {
            Work::Interactive(job) => {
                self.stats.last_request_ms = Some(elapsed);
                let out = match result {
                    Ok(r) => Ok(answer_json(&r, 0, job.frame.as_deref())),
                    Err(EngineError::Image(m)) => Err(ApiError::new(Code::BadImage, m)),
                    Err(EngineError::Invalid(m)) => Err(ApiError::new(Code::BadRequest, m)),
                    Err(EngineError::Cancelled) => Err(ApiError::new(
                        Code::Timeout,
                        "cancelled after daemon.request_timeout",
                    )),
                    Err(EngineError::Stopped) => {
                        Err(ApiError::new(Code::ShuttingDown, "the engine stopped"))
                    }
                    Err(e) => Err(ApiError::new(Code::ModelError, e.to_string())),
                };
                self.reply(&job.name, &job.reply, out, job.transaction.as_ref())
                    .await;
            }
            Work::Triggers { names, frame } => {
                self.stats.last_trigger_ms = Some(elapsed);
                match result {
                    Ok(r) => {
                        for (i, name) in names.iter().enumerate() {
                            if let Some(a) = r.answers.get(i) {
                                self.stats.trigger_evaluations += 1;
                                self.on_trigger_answer(name, &a.answer, &frame).await;
                            }
                        }
                    }
                    Err(e) => tracing::warn!("trigger evaluation failed: {e}"),
                }
            }
            Work::Caption { frame } => match result {
                Ok(r) => {
                    if let Some(Answer::Caption { caption }) = r.answers.first().map(|a| &a.answer)
                    {
                        self.stats.captions += 1;
                        let v = json!({ "caption": caption, "frame_time": unix(frame.captured_at), "frame_seq": frame.seq });
                        self.publish(&self.topics.caption(), v.to_string().into_bytes(), true)
                            .await;
                    }
                }
                Err(e) => tracing::warn!("caption failed: {e}"),
            },
        }
    }

    async fn on_trigger_answer(&mut self, name: &str, answer: &Answer, frame: &Arc<Frame>) {
        // Object triggers decide on the presence answer, like question triggers on theirs:
        // the same confidence against the same threshold. An uncertain answer (neither
        // yes nor no) is no observation.
        let (said, confidence, details) = match answer {
            Answer::YesNo {
                answer,
                confidence,
                p_yes,
                p_no,
            } => (
                *answer,
                *confidence,
                json!({ "p_yes": p_yes, "p_no": p_no }),
            ),
            Answer::Detect {
                present,
                confidence,
                objects,
                ..
            } => (
                *present,
                *confidence,
                json!({ "count": objects.len(), "objects": objects }),
            ),
            _ => return,
        };
        let obs = said.map(|on| Observation { on, confidence });
        let Some(t) = self.triggers.get_mut(name) else {
            return;
        };
        let changes = match obs {
            Some(obs) => t.state.observe(&t.cfg, obs, unix_now()),
            None => Vec::new(),
        };
        let attrs = json!({
            "confidence": confidence,
            "answer": said,
            "frame_time": unix(frame.captured_at),
            "frame_seq": frame.seq,
            "snapshot_topic": self.topics.snapshot(),
            "details": details,
        });
        self.publish(
            &self.topics.trigger_attributes(name),
            attrs.to_string().into_bytes(),
            true,
        )
        .await;
        for change in changes {
            match change {
                Change::State(on) => {
                    self.publish(&self.topics.trigger_state(name), on_off(on), true)
                        .await
                }
                Change::Begin | Change::End { .. } => {
                    let (kind, duration) = match change {
                        Change::End { duration } => ("end", Some(duration.as_secs_f64())),
                        _ => ("begin", None),
                    };
                    if kind == "begin" {
                        self.publish(&self.topics.snapshot(), frame.to_jpeg(85), true)
                            .await;
                    }
                    let mut ev = json!({
                        "type": kind,
                        "trigger": name,
                        "confidence": confidence,
                        "frame_time": unix(frame.captured_at),
                        "frame_seq": frame.seq,
                        "snapshot_topic": self.topics.snapshot(),
                    });
                    if let Some(d) = duration {
                        ev["duration_s"] = json!(d);
                    }
                    tracing::info!(trigger = name, kind, "trigger event");
                    self.publish(
                        &self.topics.trigger_event(name),
                        ev.to_string().into_bytes(),
                        false,
                    )
                    .await;
                }
            }
        }
    }

    async fn on_tick(&mut self) {
        // Scene changes bring trigger evaluations forward.
        if let Some(f) = self.camera.latest() {
            let thumb = triggers::thumbnail(&f.rgb, f.width, f.height);
            if let Some(prev) = self.last_thumb {
                if triggers::scene_difference(&prev, &thumb) > 12.0 {
                    self.scene_changed = true;
                }
            }
            self.last_thumb = Some(thumb);
        }
        // A job running far past its time is cancelled.
        if let Some(f) = &self.in_flight {
            if f.started.elapsed() > Duration::from_secs(self.cfg.daemon.request_timeout) * 2 {
                f.cancel.cancel();
            }
        }
        self.schedule().await;
        let now = unix_now();
        if self
            .last_stats
            .is_none_or(|t| now - t >= self.cfg.daemon.stats_interval as f64)
        {
            self.last_stats = Some(now);
            self.publish_stats().await;
        }
        self.feed_watchdog();
    }

    async fn publish_stats(&self) {
        let frame = self.camera.latest();
        let camera = match self.camera.status() {
            CameraStatus::Running => "running".to_owned(),
            CameraStatus::Down { reason, .. } => format!("down: {reason}"),
            other => format!("{other:?}").to_lowercase(),
        };
        let v = json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "frames": frame.as_ref().map_or(0, |f| f.seq),
            "camera": camera,
            "queue_depth": self.queue.len() + usize::from(self.in_flight.is_some()),
            "triggers": self.triggers.len(),
            "counters": self.stats,
        });
        self.publish(&self.topics.stats(), v.to_string().into_bytes(), true)
            .await;
    }

    /// WATCHDOG=1 only while frames arrive and the engine is not stuck.
    fn feed_watchdog(&mut self) {
        let Some(interval) = sd_notify::watchdog_enabled() else {
            return;
        };
        let period = interval / 2;
        if self.last_watchdog.is_some_and(|t| t.elapsed() < period) {
            return;
        }
        let frame_fresh = self.camera.latest().is_some_and(|f| {
            let max_age = Duration::from_secs_f64((3.0 / self.cfg.camera.capture_rate).max(15.0));
            SystemTime::now()
                .duration_since(f.captured_at)
                .unwrap_or_default()
                < max_age
        });
        let engine_ok = self.in_flight.as_ref().is_none_or(|f| {
            f.started.elapsed() < Duration::from_secs(self.cfg.daemon.request_timeout * 2)
        });
        if frame_fresh && engine_ok {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_watchdog = Some(Instant::now());
        }
    }

    /// SIGHUP: reread the configuration and apply what changed without dropping the broker.
    async fn reload(&mut self) {
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration: {e}");
                return;
            }
        };
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        if new.mqtt != self.cfg.mqtt {
            tracing::warn!(
                "[mqtt] changed; restart moonwatch to apply it (the connection is kept)"
            );
        }
        if new.camera != self.cfg.camera {
            tracing::info!("[camera] changed; restarting the camera");
            match Camera::start(&new.camera) {
                Ok(c) => self.camera = c,
                Err(e) => tracing::error!("cannot restart the camera: {e}"),
            }
        }
        if new.model != self.cfg.model {
            tracing::info!("[model] changed; loading the new model");
            let settings = moondream::Settings::from_config(&new);
            match tokio::task::spawn_blocking(move || moondream::start(settings)).await {
                Ok(Ok(engine)) => {
                    if let Some(f) = self.in_flight.take() {
                        f.cancel.cancel();
                        if let Work::Interactive(job) = f.work {
                            self.queue.push_front(job);
                        }
                    }
                    self.engine = engine;
                }
                Ok(Err(e)) => tracing::error!("new model not loaded, keeping the old one: {e}"),
                Err(e) => tracing::error!("model loader failed: {e}"),
            }
        }
        let old: BTreeMap<String, TriggerConfig> = self
            .triggers
            .iter()
            .map(|(k, t)| (k.clone(), t.cfg.clone()))
            .collect();
        let want = effective_triggers(&new, &self.runtime);
        for (name, cfg) in &old {
            if !want.contains_key(name) {
                self.clear_trigger(cfg).await;
                self.triggers.remove(name);
            }
        }
        for (name, cfg) in want {
            if old.get(&name) != Some(&cfg) {
                self.publish_trigger_discovery(&cfg).await;
                self.triggers.insert(
                    name,
                    Trigger {
                        cfg,
                        state: TriggerState::new(),
                        last_eval: None,
                    },
                );
            }
        }
        let mqtt = self.cfg.mqtt.clone();
        self.cfg = new;
        self.cfg.mqtt = mqtt;
        tracing::info!("configuration reloaded");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    async fn shutdown(mut self, mqtt_task: tokio::task::JoinHandle<()>) {
        tracing::info!("stopping");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.stopping = true;
        if let Some(f) = self.in_flight.take() {
            f.cancel.cancel();
            let result = tokio::time::timeout(Duration::from_secs(5), f.ticket).await;
            if let Work::Interactive(job) = f.work {
                let out = match result {
                    Ok(Ok(Ok(r))) => Ok(answer_json(&r, 0, job.frame.as_deref())),
                    _ => Err(ApiError::new(Code::ShuttingDown, "moonwatch is stopping")),
                };
                self.reply(&job.name, &job.reply, out, job.transaction.as_ref())
                    .await;
            }
        }
        while let Some(job) = self.queue.pop_front() {
            let e = ApiError::new(Code::ShuttingDown, "moonwatch is stopping");
            self.reply(&job.name, &job.reply, Err(e), job.transaction.as_ref())
                .await;
        }
        if self.connected {
            self.publish(&self.topics.availability(), b"offline".to_vec(), true)
                .await;
            self.link.disconnect().await;
            // Let the event loop flush the offline message and the DISCONNECT.
            let _ = tokio::time::timeout(Duration::from_secs(3), mqtt_task).await;
        } else {
            // Nothing can be flushed; the broker's copy of the Last Will says offline.
            mqtt_task.abort();
        }
        tracing::info!("stopped");
    }
}

/// The result of the job in flight; never resolves while there is none.
async fn finished(slot: &mut Option<InFlight>) -> Result<Response, EngineError> {
    match slot {
        Some(f) => (&mut f.ticket).await.unwrap_or(Err(EngineError::Stopped)),
        None => std::future::pending().await,
    }
}

fn on_off(on: bool) -> Vec<u8> {
    if on {
        b"ON".to_vec()
    } else {
        b"OFF".to_vec()
    }
}

/// The reply data for answer `i` of a response.
fn answer_json(r: &Response, i: usize, frame: Option<&Frame>) -> Value {
    let mut v = r.answers.get(i).map_or(json!({}), |a| json!(a));
    if let Some(frame) = frame {
        v["frame_time"] = json!(unix(frame.captured_at));
        v["frame_seq"] = json!(frame.seq);
    }
    v["prefix_reused"] = json!(r.prefix.reused);
    v["image_encode_ms"] = json!(r.prefix.image_encode_ms);
    v["total_ms"] = json!(r.total_ms);
    v
}

/// Forwards SIGTERM/SIGINT (stop) and SIGHUP (reload) into the daemon.
pub fn signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut sigs = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = mpsc::channel(8);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in sigs.forever() {
                let sig = if s == SIGHUP {
                    Signal::Reload
                } else {
                    Signal::Stop
                };
                if tx.blocking_send(sig).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Runs the daemon to completion on a fresh runtime.
pub fn run(cfg: Config, config_path: PathBuf) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    // One TLS provider for the process (ring, as the download client uses).
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async move {
        let signals = signals()
            .map_err(|e| DaemonError::Setup(format!("cannot install signal handlers: {e}")))?;
        let (daemon, events, task) = Daemon::start(cfg, config_path).await?;
        daemon.run(events, task, signals).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_triggers_override_and_remove_configured_ones() {
        let t = |name: &str, q: &str| TriggerConfig {
            name: name.into(),
            question: Some(q.into()),
            object: None,
            threshold: 0.6,
            consecutive: 2,
            cooldown: 30,
            interval: 10,
            device_class: None,
        };
        let cfg = Config {
            triggers: vec![t("a", "A?"), t("b", "B?")],
            ..Config::default()
        };
        let rt = RuntimeTriggers {
            added: vec![t("b", "B2?"), t("c", "C?")],
            removed: vec!["a".into()],
        };
        let eff = effective_triggers(&cfg, &rt);
        assert_eq!(eff.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(eff["b"].question.as_deref(), Some("B2?"));
    }

    #[test]
    fn device_ids_are_topic_safe() {
        let id = default_device_id();
        assert!(
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{id}"
        );
    }
}
