//! The daemon's decisions, apart from all I/O.
//!
//! [`Core::handle`] takes one [`Input`] (a broker event, the engine finishing, a tick, a
//! signal, a save or model load finishing) with the time and what the camera shows, and
//! returns [`Act`]s for the executor in `daemon/mod.rs` to carry out: publish, acknowledge,
//! submit to the engine, save, notify systemd. Nothing here awaits, sleeps, reads a clock
//! or touches a socket, so every rule (priorities, `busy`, `timeout`,
//! `camera_unavailable`, `shutting_down`, trigger pacing, captions, reload) is tested with
//! tables and a fake clock in `tests` below.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;

use super::store::RuntimeTriggers;
use crate::camera::CameraStatus;
use crate::config::{CameraConfig, CameraSpec, Config};
use crate::frame::scene::{self, Signature};
use crate::frame::Frame;
use crate::mqtt::api::{self, Action, ApiError, Code, ReplyAddress};
use crate::mqtt::topics::Topics;
use crate::mqtt::wire::{self, ReplyData};
use crate::mqtt::{AckToken, Class, Incoming, MqttEvent, OutboxStats, Outgoing};
use crate::triggers::{
    self, Cause, Change, Evaluated, Observation, Pace, TriggerConfig, TriggerState,
};
use crate::vision::{Answer, Answered, EngineError, Response, Skill};
use crate::zone::Zone;

/// The time, as the executor read it.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    /// Unix seconds.
    pub unix: f64,
}

impl Now {
    pub fn read() -> Self {
        Self {
            mono: Instant::now(),
            unix: unix(SystemTime::now()),
        }
    }
    /// `self` moved on by `d` (for tests).
    pub fn after(self, d: Duration) -> Self {
        Self {
            mono: self.mono + d,
            unix: self.unix + d.as_secs_f64(),
        }
    }
}

pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a camera shows at the moment of an input.
#[derive(Debug, Clone)]
pub struct CameraView {
    pub latest: Option<Arc<Frame>>,
    pub status: CameraStatus,
}

impl CameraView {
    /// A camera that is not there (a view missing from the executor's list).
    fn absent() -> Self {
        Self {
            latest: None,
            status: CameraStatus::Stopped,
        }
    }
}

/// What every camera shows, in configuration order; one camera's view stands for a
/// single-camera daemon.
pub trait Views {
    fn views(&self) -> &[CameraView];
}

impl Views for CameraView {
    fn views(&self) -> &[CameraView] {
        std::slice::from_ref(self)
    }
}

impl Views for [CameraView] {
    fn views(&self) -> &[CameraView] {
        self
    }
}

impl<const N: usize> Views for [CameraView; N] {
    fn views(&self) -> &[CameraView] {
        self
    }
}

impl Views for Vec<CameraView> {
    fn views(&self) -> &[CameraView] {
        self
    }
}

/// Everything the core reacts to.
#[derive(Debug)]
pub enum Input {
    Mqtt(MqttEvent),
    /// The engine finished job `job` (or could not run it); `frame` is the picture it
    /// looked at.
    EngineDone {
        job: u64,
        result: Result<Response, EngineError>,
        frame: Option<Arc<Frame>>,
    },
    /// A save of the runtime triggers finished.
    Saved {
        save: u64,
        result: Result<(), String>,
    },
    /// About four times a second.
    Tick,
    /// SIGTERM / SIGINT.
    Stop,
    /// SIGHUP: the configuration file as read again, or why it was refused.
    Reload(Result<Box<Config>, String>),
    /// A model asked for by [`Act::LoadModel`] is ready (or failed).
    ModelLoaded(Result<(), String>),
}

/// A picture for the engine: a camera frame, or a client's encoded image (decoded, and
/// reduced, only when its job runs).
#[derive(Debug, Clone)]
pub enum Picture {
    Frame(Arc<Frame>),
    Encoded(Bytes),
}

/// What the executor must do.
#[derive(Debug)]
pub enum Act {
    Publish(Outgoing),
    Ack(AckToken),
    /// Run `skills` on `picture`, or on its `zone` when one is given (the executor
    /// crops; `EngineDone` brings back the whole picture).
    Submit {
        job: u64,
        picture: Picture,
        zone: Option<Zone>,
        skills: Vec<Skill>,
    },
    Cancel {
        job: u64,
    },
    /// Write a camera's runtime triggers to `{state_dir}/{store}`.
    Save {
        save: u64,
        store: String,
        triggers: RuntimeTriggers,
    },
    Notify(Notify),
    LoadModel(Box<Config>),
    /// Swap in the model loaded last; the engine is idle.
    UseNewModel,
    /// Restart camera `index` (configuration order) with new capture settings.
    RestartCamera(usize, CameraConfig),
    /// Everything is answered and `offline` is queued: flush and end.
    Exit,
}

/// The pool as a camera node's executor sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolView {
    /// This node has a model of its own (jobs no worker answers run here).
    pub local_model: bool,
    pub stats: wire::PoolStats,
}

/// systemd notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    Ready,
    Reloading,
    Stopping,
    Watchdog,
    Status(String),
}

/// How long a request waits for a camera that has not delivered its first frame yet.
const CAMERA_GRACE: Duration = Duration::from_secs(5);
/// How long an engine job may take to finish after a stop before its request is answered
/// `shutting_down` anyway.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Requests remembered to recognise redeliveries.
const RECENT: usize = 512;
/// Seconds between INFO lines counting bad requests (each one is logged at debug).
const BAD_REQUEST_LOG_EVERY: Duration = Duration::from_secs(60);
/// Snapshot requests that may wait for a starting camera.
const SNAPSHOT_WAITERS: usize = 1024;
/// Largest side of a client's image once decoded.
pub const REQUEST_IMAGE_SIDE: u32 = 1024;
/// Interactive jobs run in a row while triggers wait; then one trigger job runs, so a
/// flood of requests slows triggers down but never stops them.
const INTERACTIVE_BURST: u32 = 4;

/// Where and how a request is answered.
#[derive(Debug, Clone)]
struct ReplyTo {
    name: String,
    address: ReplyAddress,
    transaction: Option<Value>,
    ack: Option<AckToken>,
    /// Message expiry of the request (v5), with when it was received.
    expiry: Option<(u32, Instant)>,
    /// Key in `recent`, for requests that can be redelivered.
    key: Option<u64>,
    /// A pool job: the reply names this worker.
    pool: bool,
    /// A question from a camera's text entity: the answer is retained on the address, as
    /// [`wire::Asked`].
    question: Option<String>,
}

#[derive(Debug)]
struct Pending {
    /// The camera it was asked of; `None` for a pool job (a worker's).
    cam: Option<usize>,
    reply: ReplyTo,
    skill: Skill,
    image: Option<Bytes>,
    zone: Option<Zone>,
    annotate: bool,
    received: Instant,
    deadline: Instant,
}

#[derive(Debug)]
enum Work {
    Interactive(Box<Pending>),
    Trigger {
        cam: usize,
        name: String,
        zone: Option<Zone>,
        cause: Cause,
    },
    Caption {
        cam: usize,
    },
}

/// Triggers of one camera due together (with why each is), and the frame they are
/// evaluated on.
#[derive(Debug)]
struct Round {
    cam: usize,
    frame: Arc<Frame>,
    names: VecDeque<(String, Cause)>,
}

#[derive(Debug)]
struct InFlight {
    job: u64,
    work: Work,
    started: Instant,
    cancelled: bool,
}

#[derive(Debug)]
struct Trigger {
    cfg: TriggerConfig,
    state: TriggerState,
    /// When it was last evaluated, or skipped.
    evaluated: Evaluated,
    /// The signature of the picture (its zone's) it was last evaluated on.
    reference: Option<Arc<Signature>>,
    /// Set when the engine refused it: it is not evaluated again until replaced.
    error: Option<String>,
    /// Its switch: off means not evaluated (kept across restarts).
    enabled: bool,
}

impl Trigger {
    fn new(cfg: TriggerConfig) -> Self {
        Self {
            cfg,
            state: TriggerState::new(),
            evaluated: Evaluated::default(),
            reference: None,
            error: None,
            enabled: true,
        }
    }
}

#[derive(Debug)]
enum Recent {
    /// Being served; redeliveries add their acknowledgements here.
    InProgress(Vec<AckToken>),
    Done,
}

/// A trigger change waiting for its save to finish before it is answered.
#[derive(Debug)]
struct Saving {
    cam: usize,
    /// `None` for a switch: nothing to answer.
    reply: Option<ReplyTo>,
    data: SavedKind,
}

#[derive(Debug)]
enum SavedKind {
    Added(String),
    Removed(String),
    Switched,
    /// A save tried again after one failed.
    Retry,
}

/// Runtime triggers a save could not write: lost on restart until a save succeeds.
#[derive(Debug)]
struct Unsaved {
    /// The failed save (a later success clears it).
    save: u64,
    error: String,
    /// When a save was last tried.
    tried: Instant,
}

/// How often a failed save of runtime triggers is tried again.
const SAVE_RETRY: Duration = Duration::from_secs(60);

/// Camera health as the core judges it.
#[derive(Debug, Clone)]
enum CameraHealth {
    Fresh(Arc<Frame>),
    Starting,
    Unavailable(String),
}

/// One camera: its topics, triggers and what was last published for it.
#[derive(Debug)]
struct Cam {
    spec: CameraSpec,
    topics: Topics,
    triggers: BTreeMap<String, Trigger>,
    runtime: RuntimeTriggers,
    /// The camera availability last published.
    online: Option<bool>,
    /// What each watched region (the frame, or a zone: its key) looks like on the newest
    /// frame, and how much it flickers.
    scenes: HashMap<Option<[u32; 4]>, scene::Watch>,
    /// Evaluations by cause, and skips.
    evaluations: wire::Evaluations,
    /// Snapshot requests waiting for a starting camera's first frame.
    snapshot_waiters: Vec<(ReplyTo, Instant)>,
    /// The frame last published as snapshot (key) and its JPEG.
    last_snapshot: Option<(u64, Bytes)>,
    last_caption: Option<f64>,
    /// Triggers removed or replaced in this run: their entities that no trigger has any
    /// more are listed as removed in every discovery config, so a config that replaces
    /// another before it was sent still removes them.
    gone: VecDeque<TriggerConfig>,
    /// Set while the runtime triggers are not on disk (a save failed).
    unsaved: Option<Unsaved>,
}

/// Removed triggers remembered per camera for discovery.
const GONE: usize = 64;

impl Cam {
    fn new(
        spec: CameraSpec,
        mqtt: &crate::config::MqttConfig,
        device_id: &str,
        runtime: RuntimeTriggers,
    ) -> Self {
        let mut cam = Self {
            topics: Topics::camera(mqtt, device_id, &spec.id),
            spec,
            triggers: BTreeMap::new(),
            runtime,
            online: None,
            scenes: HashMap::new(),
            evaluations: wire::Evaluations::default(),
            snapshot_waiters: Vec::new(),
            last_snapshot: None,
            last_caption: None,
            gone: VecDeque::new(),
            unsaved: None,
        };
        for (name, cfg) in effective_triggers(&cam.spec.config.triggers, &cam.runtime) {
            let t = cam.new_trigger(cfg);
            cam.triggers.insert(name, t);
        }
        cam
    }

    /// Remembers a removed or replaced trigger for discovery.
    fn forget(&mut self, cfg: TriggerConfig) {
        self.gone.retain(|g| g.name != cfg.name);
        self.gone.push_back(cfg);
        while self.gone.len() > GONE {
            self.gone.pop_front();
        }
    }

    fn new_trigger(&self, cfg: TriggerConfig) -> Trigger {
        let mut t = Trigger::new(cfg);
        t.enabled = !self.runtime.disabled.contains(&t.cfg.name);
        t
    }

    /// The rectangle a trigger or request names, from this camera's zones.
    fn zone(&self, z: Option<&crate::zone::ZoneRef>) -> Result<Option<Zone>, String> {
        z.map(|z| z.resolve(&self.spec.config.zones)).transpose()
    }

    /// The signature of `zone` of `frame` (computed once per frame and zone; a newer
    /// frame also teaches the region's noise level), and the cell change that counts in
    /// that region.
    fn scene(&mut self, frame: &Frame, zone: Option<Zone>) -> (Option<Arc<Signature>>, f32) {
        let rect = zone.map(|z| z.pixels(frame.width, frame.height));
        let make = || Signature::of_frame(frame, rect);
        let key = zone.as_ref().map(Zone::key);
        let watch = match self.scenes.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => match make() {
                Some(sig) => e.insert(scene::Watch::new(frame.key, frame.seq, sig)),
                None => return (None, scene::MIN_DELTA),
            },
        };
        let sig = watch.signature(frame.key, frame.seq, make);
        (sig, watch.noise().threshold())
    }

    /// Forgets regions no trigger looks at any more (a zone removed or changed).
    fn prune_scenes(&mut self) {
        let used: Vec<Option<[u32; 4]>> = self
            .triggers
            .values()
            .map(|t| {
                self.zone(t.cfg.zone.as_ref())
                    .ok()
                    .flatten()
                    .map(|z| z.key())
            })
            .collect();
        self.scenes.retain(|k, _| used.contains(k));
    }
}

/// The daemon's state and rules.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    /// The resolved `mqtt.device_id`.
    device_id: String,
    /// The cameras, in configuration order.
    cams: Vec<Cam>,
    /// Topics of the process (availability, Home Assistant's status).
    topics: Topics,
    /// `{prefix}/pool`: where pool jobs arrive (workers) and heartbeats go.
    pool_topics: Topics,
    /// Pool jobs answered (a worker's).
    served: u64,
    /// The pool as the executor sees it (camera nodes with `pool.offload`).
    pool: Option<PoolView>,
    started: Instant,
    queue: VecDeque<Pending>,
    in_flight: Option<InFlight>,
    saving: BTreeMap<u64, Saving>,
    next_id: u64,
    counters: wire::Counters,
    outbox: OutboxStats,
    connected: bool,
    broker_down_reported: bool,
    refused_subscriptions: Vec<String>,
    recent: HashMap<u64, Recent>,
    recent_order: VecDeque<u64>,
    last_stats: Option<Instant>,
    last_watchdog: Option<Instant>,
    /// Triggers of one camera due together and the frame they are evaluated on.
    round: Option<Round>,
    /// The camera whose triggers are looked at first for the next round, and for the
    /// next caption (round robin: one busy camera cannot starve another).
    next_round_cam: usize,
    next_caption_cam: usize,
    /// Interactive jobs run in a row (see [`INTERACTIVE_BURST`]).
    interactive_streak: u32,
    stopping: Option<Instant>,
    exited: bool,
    problems: Vec<String>,
    reload_problem: Option<String>,
    model_loading: bool,
    model_ready: bool,
    bad_requests: u64,
    last_bad_log: Option<Instant>,
    watchdog_period: Option<Duration>,
    /// Home Assistant discovery: what the broker holds, and whether it was read.
    discovery: ha::Discovery,
    /// Retained topics to clear at a time (see [`ha::CLEAR_AFTER`]).
    later: Vec<(Instant, String)>,
    /// When the server's state was last published, and the engine's busy time then.
    last_server: Option<(Instant, f64)>,
}

impl Core {
    /// `device_id` is the resolved `mqtt.device_id`; `runtime` holds each camera's
    /// runtime triggers (configuration order; missing ones are empty), `problems` what
    /// loading them reported.
    pub fn new(
        cfg: Config,
        device_id: &str,
        runtime: Vec<RuntimeTriggers>,
        problems: Vec<String>,
        watchdog_period: Option<Duration>,
        now: Now,
    ) -> Self {
        let mut runtime = runtime.into_iter();
        let cams = cfg
            .cameras(device_id)
            .into_iter()
            .map(|spec| {
                Cam::new(
                    spec,
                    &cfg.mqtt,
                    device_id,
                    runtime.next().unwrap_or_default(),
                )
            })
            .collect();
        Self {
            topics: Topics::new(&cfg.mqtt, device_id),
            pool_topics: Topics::camera(&cfg.mqtt, device_id, "pool"),
            served: 0,
            pool: None,
            device_id: device_id.to_owned(),
            cams,
            started: now.mono,
            queue: VecDeque::new(),
            in_flight: None,
            saving: BTreeMap::new(),
            next_id: 1,
            counters: wire::Counters::default(),
            outbox: OutboxStats::default(),
            connected: false,
            broker_down_reported: false,
            refused_subscriptions: Vec::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            last_stats: None,
            last_watchdog: None,
            round: None,
            next_round_cam: 0,
            next_caption_cam: 0,
            interactive_streak: 0,
            stopping: None,
            exited: false,
            problems,
            reload_problem: None,
            model_loading: false,
            model_ready: false,
            bad_requests: 0,
            last_bad_log: None,
            watchdog_period,
            discovery: ha::Discovery::new(&cfg.mqtt.discovery_prefix),
            later: Vec::new(),
            last_server: None,
            cfg,
        }
    }

    /// The subscriptions every session makes.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut out = vec![self.topics.ha_status()];
        if self.cfg.pool.serve {
            // Shared: the broker hands each job to one member of the group.
            out.push(format!(
                "$share/{}/{}",
                self.cfg.pool.group,
                self.pool_topics.requests()
            ));
            // Jobs sent to this worker alone (the next job on a picture it has cached).
            out.push(self.direct_topics().requests());
        }
        for c in &self.cams {
            out.push(c.topics.requests());
            out.push(c.topics.trigger_set_filter());
            out.push(c.topics.trigger_tuning_filter());
            out.push(c.topics.question_set());
        }
        out.extend(self.discovery_subscriptions());
        out
    }

    /// The cameras' ids and capture settings, in configuration order.
    pub fn cameras(&self) -> impl Iterator<Item = &CameraSpec> {
        self.cams.iter().map(|c| &c.spec)
    }

    pub fn set_outbox_stats(&mut self, s: OutboxStats) {
        self.outbox = s;
    }

    /// What the executor knows of the pool (camera nodes with `pool.offload`).
    pub fn set_pool(&mut self, view: PoolView) {
        self.pool = Some(view);
    }

    /// Whether jobs can run at all: on this node's model or on a live worker.
    fn engine_reachable(&self) -> bool {
        self.pool
            .is_none_or(|p| p.local_model || p.stats.workers > 0)
    }

    /// The engine job in flight, if any.
    pub fn job(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|f| f.job)
    }

    /// Reacts to one input; `cams` is what each camera shows.
    pub fn handle(&mut self, now: Now, cams: &(impl Views + ?Sized), input: Input) -> Vec<Act> {
        let views = cams.views();
        let mut out = Vec::new();
        match input {
            Input::Mqtt(ev) => self.on_mqtt(now, views, ev, &mut out),
            Input::EngineDone { job, result, frame } => {
                self.on_done(now, job, result, frame, &mut out)
            }
            Input::Saved { save, result } => self.on_saved(now, save, result, &mut out),
            Input::Tick => self.on_tick(now, views, &mut out),
            Input::Stop => self.on_stop(now, &mut out),
            Input::Reload(r) => self.on_reload(now, r, &mut out),
            Input::ModelLoaded(r) => self.on_model_loaded(r, &mut out),
        }
        self.schedule(now, views, &mut out);
        self.maybe_exit(now, &mut out);
        out
    }

    // ---- broker -------------------------------------------------------------------

    fn on_mqtt(&mut self, now: Now, views: &[CameraView], ev: MqttEvent, out: &mut Vec<Act>) {
        match ev {
            MqttEvent::Connected { session_present } => {
                tracing::info!(session_present, "connected to the broker");
                self.connected = true;
                self.broker_down_reported = false;
                self.refused_subscriptions.clear();
                self.publish_retained(out, self.topics.availability(), "online");
                self.publish_heartbeat(true, out);
                self.publish_server(now, out);
                // Discovery once the broker's retained configs are read.
                self.discovery_connected();
                for ci in 0..self.cams.len() {
                    let health = self.camera_health(now, ci, views);
                    self.publish_camera_availability(ci, &health, true, out);
                    let cam = &self.cams[ci];
                    for t in cam.triggers.values() {
                        if let Some(on) = t.state.state {
                            out.push(Act::Publish(Outgoing::retained(
                                cam.topics.trigger_state(&t.cfg.name),
                                on_off(on),
                            )));
                        }
                        out.push(Act::Publish(Outgoing::retained(
                            cam.topics.trigger_enabled(&t.cfg.name),
                            on_off(t.enabled),
                        )));
                    }
                    let names: Vec<String> = cam.triggers.keys().cloned().collect();
                    for name in names {
                        self.publish_tuning(ci, &name, out);
                    }
                }
            }
            MqttEvent::Subscribed { refused } => {
                if !refused.is_empty() {
                    tracing::error!(
                        ?refused,
                        "the broker refused subscriptions (check its ACL); requests on them \
                         are never seen"
                    );
                    out.push(Act::Notify(Notify::Status(format!(
                        "broker refused subscriptions: {}",
                        refused.join(", ")
                    ))));
                }
                self.refused_subscriptions = refused;
                self.discovery_subscribed(now, out);
            }
            MqttEvent::Disconnected(reason) => {
                if self.connected {
                    tracing::warn!(%reason, "lost the broker; reconnecting with backoff");
                } else if !self.broker_down_reported {
                    tracing::warn!(
                        %reason,
                        "cannot reach the broker at {}:{}; retrying with backoff",
                        self.cfg.mqtt.host,
                        self.cfg.mqtt.port
                    );
                } else {
                    tracing::debug!(%reason, "broker still unreachable");
                }
                self.broker_down_reported = true;
                self.connected = false;
            }
            MqttEvent::Message(m) if m.topic == self.topics.ha_status() => {
                if let Some(t) = m.ack {
                    out.push(Act::Ack(t));
                }
                if m.payload.as_ref() == b"online" {
                    tracing::info!("Home Assistant is online; republishing discovery");
                    self.publish_discovery(out);
                }
            }
            MqttEvent::Message(m) if self.on_discovery_message(&m, out) => {}
            MqttEvent::Message(m) => {
                let tune = self.cams.iter().enumerate().find_map(|(ci, c)| {
                    c.topics
                        .trigger_tuning_name(&m.topic)
                        .map(|(n, k)| (ci, n.to_owned(), k.to_owned()))
                });
                if let Some((ci, name, key)) = tune {
                    return self.on_tune(ci, (&name, &key), &m, out);
                }
                if let Some(ci) = self
                    .cams
                    .iter()
                    .position(|c| c.topics.question_set() == m.topic)
                {
                    return self.on_question(now, ci, m, out);
                }
                let switch = self.cams.iter().enumerate().find_map(|(ci, c)| {
                    c.topics
                        .trigger_set_name(&m.topic)
                        .map(|n| (ci, n.to_owned()))
                });
                let request = self.cams.iter().enumerate().find_map(|(ci, c)| {
                    c.topics.request_name(&m.topic).map(|n| (ci, n.to_owned()))
                });
                let direct = self.direct_topics();
                let pool = self
                    .pool_topics
                    .request_name(&m.topic)
                    .or_else(|| direct.request_name(&m.topic))
                    .filter(|_| self.cfg.pool.serve)
                    .map(str::to_owned);
                match (switch, request, pool) {
                    (Some((ci, name)), _, _) => self.on_switch(ci, &name, &m, out),
                    (None, Some((ci, name)), _) => {
                        self.on_request(now, Some(ci), name, views, m, out)
                    }
                    (None, None, Some(name)) => self.on_request(now, None, name, views, m, out),
                    (None, None, None) => {
                        tracing::debug!(topic = ?m.topic, "message on an unexpected topic");
                        if let Some(t) = m.ack {
                            out.push(Act::Ack(t));
                        }
                    }
                }
            }
        }
    }

    /// A trigger's switch: `ON` / `OFF` on `{base}/trigger/{name}/set`.
    fn on_switch(&mut self, ci: usize, name: &str, m: &Incoming, out: &mut Vec<Act>) {
        let want = match m.payload.trim_ascii() {
            b"ON" | b"on" | b"true" => Some(true),
            b"OFF" | b"off" | b"false" => Some(false),
            _ => None,
        };
        let cam = &mut self.cams[ci];
        let topic = cam.topics.trigger_enabled(name);
        let (Some(on), Some(t)) = (want, cam.triggers.get_mut(name)) else {
            tracing::debug!(trigger = ?name, "ignored a switch command (unknown trigger or payload not ON/OFF)");
            self.bad_requests += 1;
            if let Some(a) = m.ack {
                out.push(Act::Ack(a));
            }
            return;
        };
        if on && !t.enabled {
            // Evaluated at once, as a new trigger is.
            t.evaluated.interval_from = None;
        }
        t.enabled = on;
        if let Some(r) = self.round.as_mut().filter(|r| r.cam == ci) {
            r.names.retain(|(n, _)| n != name);
        }
        tracing::info!(camera = %cam.spec.id, trigger = ?name, enabled = on, "trigger switched");
        cam.runtime.disabled.retain(|n| n != name);
        if !on {
            cam.runtime.disabled.push(name.to_owned());
        }
        let mut state = Outgoing::retained(topic, on_off(on));
        state.acks.extend(m.ack);
        out.push(Act::Publish(state));
        self.save(ci, None, SavedKind::Switched, out);
    }

    /// A request to camera `ci`, or a pool job (`None`: this node is a worker).
    fn on_request(
        &mut self,
        now: Now,
        ci: Option<usize>,
        name: String,
        views: &[CameraView],
        m: Incoming,
        out: &mut Vec<Act>,
    ) {
        let key = m.ack.map(|_| request_key(&m));
        if let (true, Some(k), Some(token)) = (m.redelivered, key, m.ack) {
            match self.recent.get_mut(&k) {
                Some(Recent::Done) => {
                    self.counters.duplicates += 1;
                    tracing::debug!(request = ?name, "redelivered request already answered");
                    out.push(Act::Ack(token));
                    return;
                }
                Some(Recent::InProgress(acks)) => {
                    self.counters.duplicates += 1;
                    tracing::debug!(request = ?name, "redelivered request still being served");
                    acks.push(token);
                    return;
                }
                None => {}
            }
        }
        if let Some(k) = key {
            self.remember(k, Recent::InProgress(Vec::new()));
        }
        self.counters.requests += 1;
        let topics = match ci {
            Some(ci) => &self.cams[ci].topics,
            None => &self.pool_topics,
        };
        tracing::debug!(base = %topics.base, request = ?name, "request received");
        let corr = m.correlation.as_deref();
        let expiry = m.expiry.map(|s| (s, now.mono));
        let parsed = api::parse_request(&name, &m.payload, self.cfg.mqtt.max_payload);
        let reply_to = |payload_reply_to: Option<&str>, transaction| ReplyTo {
            address: api::reply_address(
                topics,
                &name,
                m.response_topic.as_deref(),
                corr,
                payload_reply_to,
            ),
            name: name.clone(),
            transaction,
            ack: m.ack,
            expiry,
            key,
            pool: ci.is_none(),
            question: None,
        };
        let (req, reply) = match parsed {
            Ok(req) => {
                let reply = reply_to(req.reply_to.as_deref(), req.transaction.clone());
                (req, reply)
            }
            Err((err, transaction, payload_reply_to)) => {
                let reply = reply_to(payload_reply_to.as_deref(), transaction);
                self.reply(now, reply, Err(err), out);
                return;
            }
        };
        if self.stopping.is_some() {
            let e = ApiError::new(Code::ShuttingDown, "moonwatch is stopping");
            self.reply(now, reply, Err(e), out);
            return;
        }
        let Some(ci) = ci else {
            return self.on_pool_job(now, req, reply, m.expiry, out);
        };
        let result = match req.action {
            Action::HealthCheck => Ok(ReplyData::Health(self.health(now, ci, views))),
            Action::ListTriggers => Ok(ReplyData::Triggers(self.trigger_list(ci))),
            Action::AddTrigger(t) => return self.add_trigger(now, ci, t, reply, out),
            Action::RemoveTrigger(n) => return self.remove_trigger(now, ci, &n, reply, out),
            Action::Snapshot => {
                let starting = matches!(self.camera_health(now, ci, views), CameraHealth::Starting);
                let waiters = &mut self.cams[ci].snapshot_waiters;
                if req.image.is_none() && starting {
                    if waiters.len() < SNAPSHOT_WAITERS {
                        // Answered with the first frame, or after the grace period.
                        waiters.push((reply, now.mono));
                        return;
                    }
                    Err(ApiError::new(
                        Code::Busy,
                        "too many snapshots wait for the camera",
                    ))
                } else {
                    self.snapshot(now, ci, views, req.image.is_some(), out)
                }
            }
            Action::Skill(skill) => match self.cams[ci].zone(req.zone.as_ref()) {
                Err(m) => Err(ApiError::new(Code::BadRequest, m)),
                Ok(zone) => {
                    let job = Pending {
                        cam: Some(ci),
                        reply,
                        skill,
                        image: req.image.map(Bytes::from),
                        zone,
                        annotate: req.annotate,
                        received: now.mono,
                        deadline: now.mono,
                    };
                    self.enqueue(now, m.expiry, job, "requests", out);
                    return;
                }
            },
        };
        self.reply(now, reply, result, out);
    }

    /// Queues `job` for the engine, or answers it `busy` when `daemon.max_pending` wait
    /// (`what` names them in the message). It may wait `daemon.request_timeout`, or less
    /// when its message expires sooner. True when queued.
    fn enqueue(
        &mut self,
        now: Now,
        expiry: Option<u32>,
        mut job: Pending,
        what: &str,
        out: &mut Vec<Act>,
    ) -> bool {
        if self.queue.len() >= self.cfg.daemon.max_pending {
            let e = ApiError::new(
                Code::Busy,
                format!("{} {what} are already waiting", self.queue.len()),
            );
            self.reply(now, job.reply, Err(e), out);
            return false;
        }
        let timeout = Duration::from_secs(self.cfg.daemon.request_timeout);
        let limit = expiry.map_or(timeout, |s| timeout.min(Duration::from_secs(u64::from(s))));
        job.deadline = now.mono + limit;
        self.queue.push_back(job);
        true
    }

    /// A job from the pool: a skill on the picture it carries, queued like a request (a
    /// full queue answers `busy` at once, so the camera node sends it again elsewhere).
    fn on_pool_job(
        &mut self,
        now: Now,
        req: api::ApiRequest,
        reply: ReplyTo,
        expiry: Option<u32>,
        out: &mut Vec<Act>,
    ) {
        let result = match (req.action, req.image) {
            (Action::Skill(_), None) => Err(ApiError::new(
                Code::BadRequest,
                "a pool job carries its picture (\"image\")",
            )),
            (Action::Skill(skill), Some(image)) => {
                let zone = match req.zone.map(|z| z.resolve(&BTreeMap::new())).transpose() {
                    Ok(z) => z,
                    Err(m) => {
                        return self.reply(now, reply, Err(ApiError::new(Code::BadRequest, m)), out)
                    }
                };
                let job = Pending {
                    cam: None,
                    reply,
                    skill,
                    image: Some(Bytes::from(image)),
                    zone,
                    annotate: false,
                    received: now.mono,
                    deadline: now.mono,
                };
                if self.enqueue(now, expiry, job, "jobs", out) {
                    self.served += 1;
                }
                return;
            }
            _ => Err(ApiError::new(
                Code::BadRequest,
                "the pool takes skills only (query, yes_no, caption, detect, point)",
            )),
        };
        self.reply(now, reply, result, out);
    }

    /// `{prefix}/pool/direct/{device_id}`: jobs for this worker alone.
    fn direct_topics(&self) -> Topics {
        Topics::camera(
            &self.cfg.mqtt,
            &self.device_id,
            &format!("pool/direct/{}", self.device_id),
        )
    }

    /// A worker's heartbeat: retained, so a camera node that starts later sees it.
    fn publish_heartbeat(&self, online: bool, out: &mut Vec<Act>) {
        if !self.cfg.pool.serve {
            return;
        }
        let v = wire::WorkerStatus {
            online,
            queue_depth: self.queue.len() + usize::from(self.in_flight.is_some()),
            max_pending: self.cfg.daemon.max_pending,
            served: self.served,
            interval_s: self.cfg.daemon.stats_interval,
        };
        let topic = format!("{}/worker/{}", self.pool_topics.base, self.device_id);
        self.publish_retained(out, topic, wire::to_bytes(&v));
    }

    fn remember(&mut self, key: u64, state: Recent) {
        if self.recent.insert(key, state).is_none() {
            self.recent_order.push_back(key);
            while self.recent_order.len() > RECENT {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    /// Answers a request: the reply carries the acknowledgement of the request (and of any
    /// redelivery of it), released when the broker has the reply.
    fn reply(
        &mut self,
        now: Now,
        to: ReplyTo,
        result: Result<ReplyData, ApiError>,
        out: &mut Vec<Act>,
    ) {
        if let Some(question) = to.question {
            // From a camera's text entity: the answer (or why there is none) is the
            // retained state of its answer sensor.
            if let Err(e) = &result {
                self.counters.errors += 1;
                tracing::info!(question = ?question, code = ?e.code, "question not answered: {}", e.message);
            }
            let v = ha::asked(now, question, &result);
            let mut m = Outgoing::retained(to.address.topic, wire::to_bytes(&v));
            m.acks.extend(to.ack);
            out.push(Act::Publish(m));
            return;
        }
        let transaction = to.transaction.clone();
        let body = match result {
            Ok(data) => wire::Reply {
                status: wire::Status::Ok,
                request: to.name.clone(),
                data: Some(data),
                error: None,
                transaction,
                worker: to.pool.then(|| self.device_id.clone()),
            },
            Err(e) => {
                self.counters.errors += 1;
                self.bad_requests += 1;
                tracing::debug!(request = ?to.name, code = ?e.code, message = ?e.message, "request failed");
                wire::Reply {
                    status: wire::Status::Error,
                    request: to.name.clone(),
                    data: None,
                    error: Some(wire::ErrorBody {
                        code: e.code,
                        message: e.message,
                    }),
                    transaction,
                    worker: to.pool.then(|| self.device_id.clone()),
                }
            }
        };
        let mut acks: Vec<AckToken> = to.ack.into_iter().collect();
        if let Some(k) = to.key {
            if let Some(Recent::InProgress(more)) = self.recent.get_mut(&k) {
                acks.append(more);
            }
            self.recent.insert(k, Recent::Done);
        }
        let expiry = match to.expiry {
            Some((secs, at)) => {
                let left = u64::from(secs).saturating_sub(now.mono.duration_since(at).as_secs());
                left.max(1) as u32
            }
            None => self
                .cfg
                .daemon
                .request_timeout
                .clamp(1, u64::from(u32::MAX)) as u32,
        };
        tracing::debug!(request = ?to.name, topic = ?to.address.topic, "reply");
        out.push(Act::Publish(Outgoing {
            topic: to.address.topic,
            payload: wire::to_bytes(&body).into(),
            class: Class::Reply,
            correlation: to.address.correlation.map(Bytes::from),
            expiry: Some(expiry),
            response_topic: None,
            acks,
        }));
    }

    fn publish_retained(&self, out: &mut Vec<Act>, topic: String, payload: impl Into<Bytes>) {
        out.push(Act::Publish(Outgoing::retained(topic, payload)));
    }

    // ---- requests answered at once ----------------------------------------------------

    fn health(&self, now: Now, ci: usize, views: &[CameraView]) -> wire::Health {
        let mut problems = self.problems.clone();
        if !self.refused_subscriptions.is_empty() {
            problems.push(format!(
                "the broker refused subscriptions: {}",
                self.refused_subscriptions.join(", ")
            ));
        }
        if let CameraHealth::Unavailable(why) = self.camera_health(now, ci, views) {
            problems.push(format!("camera unavailable: {why}"));
        }
        if self.engine_stuck(now) {
            problems
                .push("the engine has not finished its job in twice daemon.request_timeout".into());
        }
        if let Some(p) = &self.reload_problem {
            problems.push(p.clone());
        }
        if !self.engine_reachable() {
            problems
                .push("no pool worker is alive (no heartbeat) and this node has no model".into());
        }
        if let Some(u) = &self.cams[ci].unsaved {
            problems.push(format!(
                "runtime triggers are not saved ({}): changes made over MQTT are lost at a \
                 restart until a save succeeds (tried again every {} s)",
                u.error,
                SAVE_RETRY.as_secs()
            ));
        }
        wire::Health {
            healthy: problems.is_empty(),
            uptime_s: now.mono.duration_since(self.started).as_secs(),
            camera: self.camera_text(now, ci, views),
            problems,
        }
    }

    fn trigger_list(&self, ci: usize) -> wire::TriggerList {
        wire::TriggerList {
            triggers: self.cams[ci]
                .triggers
                .values()
                .map(|t| wire::TriggerEntry {
                    trigger: t.cfg.clone(),
                    state: t
                        .state
                        .state
                        .map(|on| if on { "ON" } else { "OFF" }.to_owned()),
                    confidence: t.state.state.map(|_| t.state.last_confidence),
                    enabled: t.enabled,
                    error: t.error.clone(),
                })
                .collect(),
        }
    }

    /// Publishes the camera's newest frame as its retained snapshot. A request's own
    /// image is never published: the snapshot is the camera's picture.
    fn snapshot(
        &mut self,
        now: Now,
        ci: usize,
        views: &[CameraView],
        has_image: bool,
        out: &mut Vec<Act>,
    ) -> Result<ReplyData, ApiError> {
        if has_image {
            return Err(ApiError::new(
                Code::BadRequest,
                "request/snapshot publishes the camera's frame and takes no \"image\"",
            ));
        }
        let frame = match self.camera_health(now, ci, views) {
            CameraHealth::Fresh(f) => f,
            CameraHealth::Starting => {
                return Err(ApiError::new(
                    Code::CameraUnavailable,
                    "the camera has not delivered a frame yet",
                ))
            }
            CameraHealth::Unavailable(why) => {
                return Err(ApiError::new(
                    Code::CameraUnavailable,
                    format!("no camera frame ({why})"),
                ))
            }
        };
        let bytes = self.publish_snapshot(ci, &frame, out).len();
        Ok(ReplyData::Snapshot(wire::SnapshotReply {
            topic: self.cams[ci].topics.snapshot(),
            width: frame.width,
            height: frame.height,
            frame_time: unix(frame.captured_at),
            frame_seq: frame.seq,
            bytes,
        }))
    }

    /// Publishes `frame` as the camera's snapshot, encoding it once per frame; returns
    /// the JPEG.
    fn publish_snapshot(&mut self, ci: usize, frame: &Frame, out: &mut Vec<Act>) -> Bytes {
        let cam = &mut self.cams[ci];
        if let Some((key, jpeg)) = &cam.last_snapshot {
            if *key == frame.key {
                return jpeg.clone();
            }
        }
        let jpeg = Bytes::from(frame.to_jpeg(85));
        cam.last_snapshot = Some((frame.key, jpeg.clone()));
        out.push(Act::Publish(Outgoing::retained(
            cam.topics.snapshot(),
            jpeg.clone(),
        )));
        jpeg
    }

    // ---- triggers ---------------------------------------------------------------------

    fn add_trigger(
        &mut self,
        now: Now,
        ci: usize,
        t: TriggerConfig,
        reply: ReplyTo,
        out: &mut Vec<Act>,
    ) {
        let cam = &self.cams[ci];
        let replaces = cam.triggers.contains_key(&t.name);
        let refused = if let Err(m) = cam.zone(t.zone.as_ref()) {
            Some(format!("trigger.zone: {m}"))
        } else if !replaces && cam.triggers.len() >= self.cfg.daemon.max_triggers {
            Some(format!(
                "{} triggers exist, daemon.max_triggers allows {}; remove one first",
                cam.triggers.len(),
                self.cfg.daemon.max_triggers
            ))
        } else {
            None
        };
        if let Some(m) = refused {
            return self.reply(now, reply, Err(ApiError::new(Code::BadRequest, m)), out);
        }
        let rt = &mut self.cams[ci].runtime;
        rt.removed.retain(|n| n != &t.name);
        // A trigger added again starts from its new definition.
        rt.tuned.remove(&t.name);
        rt.added.retain(|x| x.name != t.name);
        rt.added.push(t.clone());
        let name = t.name.clone();
        self.install_trigger(ci, t, out);
        self.save(ci, Some(reply), SavedKind::Added(name), out);
    }

    /// Adds or replaces a trigger with a fresh state, and its entities: a count sensor
    /// the old one had and the new one lacks is removed.
    fn install_trigger(&mut self, ci: usize, cfg: TriggerConfig, out: &mut Vec<Act>) {
        let cam = &mut self.cams[ci];
        let t = cam.new_trigger(cfg);
        out.push(Act::Publish(Outgoing::retained(
            cam.topics.trigger_enabled(&t.cfg.name),
            on_off(t.enabled),
        )));
        let name = t.cfg.name.clone();
        if let Some(old) = cam.triggers.insert(name.clone(), t) {
            cam.forget(old.cfg);
        }
        cam.prune_scenes();
        let mut topics = Self::tuning_topics(&cam.topics, &name);
        topics.extend([
            cam.topics.trigger_state(&name),
            cam.topics.trigger_attributes(&name),
            cam.topics.trigger_snapshot(&name),
            cam.topics.trigger_enabled(&name),
        ]);
        self.keep(&topics);
        self.publish_tuning(ci, &name, out);
        self.publish_device_discovery(ci, out);
    }

    fn remove_trigger(
        &mut self,
        now: Now,
        ci: usize,
        name: &str,
        reply: ReplyTo,
        out: &mut Vec<Act>,
    ) {
        let cam = &mut self.cams[ci];
        let Some(t) = cam.triggers.remove(name) else {
            let e = ApiError::new(Code::NotFound, format!("no trigger named {name:?}"));
            return self.reply(now, reply, Err(e), out);
        };
        cam.runtime.added.retain(|x| x.name != name);
        cam.runtime.disabled.retain(|n| n != name);
        cam.runtime.tuned.remove(name);
        if cam.spec.config.triggers.iter().any(|c| c.name == name)
            && !cam.runtime.removed.iter().any(|n| n == name)
        {
            cam.runtime.removed.push(name.to_owned());
        }
        self.clear_trigger(now, ci, &t.cfg, out);
        self.save(ci, Some(reply), SavedKind::Removed(name.to_owned()), out);
    }

    /// Saves camera `ci`'s runtime triggers; `reply` is answered once the save is done.
    fn save(&mut self, ci: usize, reply: Option<ReplyTo>, data: SavedKind, out: &mut Vec<Act>) {
        let save = self.next_id();
        self.saving.insert(
            save,
            Saving {
                cam: ci,
                reply,
                data,
            },
        );
        let cam = &self.cams[ci];
        out.push(Act::Save {
            save,
            store: cam.spec.store.clone(),
            triggers: cam.runtime.clone(),
        });
    }

    fn on_saved(&mut self, now: Now, save: u64, result: Result<(), String>, out: &mut Vec<Act>) {
        let Some(s) = self.saving.remove(&save) else {
            return;
        };
        let cam = &mut self.cams[s.cam];
        match &result {
            Err(e) => {
                tracing::warn!(camera = %cam.spec.id, "cannot save runtime triggers: {e}; trying again every {} s", SAVE_RETRY.as_secs());
                cam.unsaved = Some(Unsaved {
                    save,
                    error: e.clone(),
                    tried: now.mono,
                });
            }
            Ok(()) => {
                if cam.unsaved.as_ref().is_some_and(|u| u.save < save) {
                    tracing::info!(camera = %cam.spec.id, "runtime triggers saved again");
                    cam.unsaved = None;
                }
            }
        }
        let persisted = result.is_ok();
        let data = match s.data {
            SavedKind::Added(added) => ReplyData::Added(wire::TriggerAdded { added, persisted }),
            SavedKind::Removed(removed) => {
                ReplyData::Removed(wire::TriggerRemoved { removed, persisted })
            }
            SavedKind::Switched | SavedKind::Retry => return,
        };
        if let Some(reply) = s.reply {
            self.reply(now, reply, Ok(data), out);
        }
    }

    /// Deletes every entity and retained topic of a trigger (already taken out of the
    /// camera's triggers).
    fn clear_trigger(&mut self, now: Now, ci: usize, cfg: &TriggerConfig, out: &mut Vec<Act>) {
        self.cams[ci].forget(cfg.clone());
        self.cams[ci].prune_scenes();
        self.publish_device_discovery(ci, out);
        let t = &self.cams[ci].topics;
        let mut topics = Self::tuning_topics(t, &cfg.name);
        topics.extend([
            t.trigger_state(&cfg.name),
            t.trigger_attributes(&cfg.name),
            t.trigger_snapshot(&cfg.name),
            t.trigger_enabled(&cfg.name),
        ]);
        // Once Home Assistant has dropped the entities: an entity still reading a topic
        // would log the empty payload as bad JSON.
        self.clear_later(now, topics);
    }

    /// Trigger `name` of camera `ci`, evaluated on `zone` of `frame`, got `answer`.
    fn on_trigger_answer(
        &mut self,
        now: Now,
        (ci, name, zone, cause): (usize, &str, Option<Zone>, Cause),
        answer: &Answer,
        frame: &Frame,
        out: &mut Vec<Act>,
    ) {
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
                wire::Details::Question {
                    p_yes: *p_yes,
                    p_no: *p_no,
                },
            ),
            Answer::Detect {
                present,
                confidence,
                objects,
                ..
            } => {
                let cam = &self.cams[ci];
                let whole_frame = cam.triggers.get(name).is_some_and(|t| t.cfg.zone.is_none());
                let zones = if whole_frame {
                    crate::zone::count_in(&cam.spec.config.zones, objects)
                } else {
                    BTreeMap::new()
                };
                (
                    *present,
                    *confidence,
                    wire::Details::Object {
                        count: objects.len(),
                        objects: objects.clone(),
                        zones,
                    },
                )
            }
            _ => return,
        };
        let cam = &mut self.cams[ci];
        let Some(t) = cam.triggers.get_mut(name) else {
            return;
        };
        let changes = match said {
            Some(on) => t
                .state
                .observe(&t.cfg, Observation { on, confidence }, now.unix),
            None => Vec::new(),
        };
        let annotates = t.cfg.annotates();
        let object = t.cfg.object.clone().unwrap_or_default();
        let topics = cam.topics.clone();
        let attrs = wire::TriggerAttributes {
            confidence,
            answer: said,
            frame_time: unix(frame.captured_at),
            frame_seq: frame.seq,
            snapshot_topic: topics.trigger_snapshot(name),
            details,
            error: None,
            answered_at: Some(now.unix),
            cause: Some(cause),
        };
        self.publish_retained(out, topics.trigger_attributes(name), wire::to_bytes(&attrs));
        for change in changes {
            match change {
                Change::State(on) => {
                    self.publish_retained(out, topics.trigger_state(name), on_off(on))
                }
                Change::Begin | Change::End { .. } => {
                    let (kind, duration) = match change {
                        Change::End { duration } => {
                            (wire::EventKind::End, Some(duration.as_secs_f64()))
                        }
                        _ => (wire::EventKind::Begin, None),
                    };
                    if kind == wire::EventKind::Begin {
                        // The trigger's own snapshot (what an automation on this begin
                        // wants: with the boxes drawn for an object), and the camera's.
                        let plain = self.publish_snapshot(ci, frame, out);
                        let jpeg = if annotates {
                            let drawn = Bytes::from(crate::annotate::annotated_jpeg(
                                frame, answer, &object, zone,
                            ));
                            self.publish_retained(out, topics.annotated(), drawn.clone());
                            drawn
                        } else {
                            plain
                        };
                        self.publish_retained(out, topics.trigger_snapshot(name), jpeg);
                    }
                    tracing::info!(camera = %topics.device_id, trigger = ?name, ?kind, "trigger event");
                    let ev = wire::TriggerEvent {
                        kind,
                        event_type: kind,
                        trigger: name.to_owned(),
                        confidence,
                        frame_time: unix(frame.captured_at),
                        frame_seq: frame.seq,
                        snapshot_topic: topics.trigger_snapshot(name),
                        duration_s: duration,
                    };
                    out.push(Act::Publish(Outgoing::event(
                        topics.trigger_event(name),
                        wire::to_bytes(&ev),
                    )));
                }
            }
        }
    }

    /// A trigger the engine refused (or whose zone is gone): it gets an error and is no
    /// longer evaluated; the others go on.
    fn trigger_failed(&mut self, ci: usize, name: &str, why: String, out: &mut Vec<Act>) {
        let cam = &mut self.cams[ci];
        let Some(t) = cam.triggers.get_mut(name) else {
            return;
        };
        tracing::warn!(camera = %cam.spec.id, trigger = ?name, reason = ?why, "the trigger cannot be evaluated; it is paused until replaced");
        t.error = Some(why.clone());
        let attrs = wire::TriggerAttributes {
            confidence: 0.0,
            answer: None,
            frame_time: 0.0,
            frame_seq: 0,
            snapshot_topic: cam.topics.trigger_snapshot(name),
            details: wire::Details::None {},
            error: Some(why),
            answered_at: t.evaluated.answered,
            cause: None,
        };
        let topic = cam.topics.trigger_attributes(name);
        self.publish_retained(out, topic, wire::to_bytes(&attrs));
    }

    // ---- camera -----------------------------------------------------------------------

    fn camera_health(&self, now: Now, ci: usize, views: &[CameraView]) -> CameraHealth {
        let absent = CameraView::absent();
        let cam = views.get(ci).unwrap_or(&absent);
        // Frames older than a few capture intervals are stale.
        let stale_after = (3.0 / self.cams[ci].spec.config.capture_rate).max(3.0);
        let fresh = cam
            .latest
            .as_ref()
            .filter(|f| now.unix - unix(f.captured_at) <= stale_after);
        match (&cam.status, fresh) {
            (CameraStatus::Down { reason, .. }, _) => CameraHealth::Unavailable(reason.clone()),
            (CameraStatus::Stopped, _) => CameraHealth::Unavailable("the camera is stopped".into()),
            (_, Some(f)) => CameraHealth::Fresh(f.clone()),
            (CameraStatus::Starting, None) if cam.latest.is_none() => CameraHealth::Starting,
            (_, None) => CameraHealth::Unavailable(match &cam.latest {
                Some(f) => format!(
                    "the newest frame is {:.0} s old",
                    now.unix - unix(f.captured_at)
                ),
                None => "no frame yet".into(),
            }),
        }
    }

    fn camera_text(&self, now: Now, ci: usize, views: &[CameraView]) -> String {
        match self.camera_health(now, ci, views) {
            CameraHealth::Fresh(_) => "running".into(),
            CameraHealth::Starting => "starting".into(),
            CameraHealth::Unavailable(why) => format!("unavailable: {why}"),
        }
    }

    fn publish_camera_availability(
        &mut self,
        ci: usize,
        health: &CameraHealth,
        force: bool,
        out: &mut Vec<Act>,
    ) {
        let reachable = self.engine_reachable();
        let cam = &mut self.cams[ci];
        let online = match health {
            // Without an engine (no live pool worker, no model here) the camera's entities
            // would only show stale answers.
            CameraHealth::Fresh(_) if !reachable => {
                if cam.online != Some(false) {
                    tracing::warn!(camera = %cam.spec.id, "no pool worker is alive; triggers paused");
                }
                false
            }
            CameraHealth::Fresh(_) => true,
            CameraHealth::Starting => return,
            CameraHealth::Unavailable(why) => {
                if cam.online != Some(false) {
                    tracing::warn!(camera = %cam.spec.id, reason = ?why, "camera unavailable; its triggers are paused");
                }
                false
            }
        };
        if force || cam.online != Some(online) {
            if online && cam.online == Some(false) {
                tracing::info!(camera = %cam.spec.id, "camera delivering again; its triggers resume");
            }
            cam.online = Some(online);
            out.push(Act::Publish(Outgoing::retained(
                cam.topics.camera_availability(),
                if online { "online" } else { "offline" },
            )));
        }
    }

    // ---- scheduling ---------------------------------------------------------------------

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Starts the next job when the engine is idle: interactive requests first (at most
    /// [`INTERACTIVE_BURST`] in a row while triggers wait), then trigger rounds, then
    /// captions; cameras take turns for rounds and captions.
    fn schedule(&mut self, now: Now, views: &[CameraView], out: &mut Vec<Act>) {
        if self.in_flight.is_some() || self.stopping.is_some() || self.exited {
            return;
        }
        if self.model_ready {
            // The engine is idle: the new model takes over now.
            self.model_ready = false;
            out.push(Act::UseNewModel);
            // Answers that stood on an unchanged picture came from the old model.
            for t in self.cams.iter_mut().flat_map(|c| c.triggers.values_mut()) {
                t.reference = None;
            }
        }
        let health: Vec<CameraHealth> = (0..self.cams.len())
            .map(|ci| self.camera_health(now, ci, views))
            .collect();
        for (ci, h) in health.iter().enumerate() {
            self.answer_snapshot_waiters(now, ci, views, h, out);
        }
        if !self.engine_reachable() {
            // Requests are answered (model_error) or run on their own image's path; no
            // rounds or captions until a worker is back.
            self.round = None;
            self.run_interactive(now, &health, out);
            return;
        }
        if self.round.as_ref().is_none_or(|r| r.names.is_empty()) {
            self.round = self.next_round(now, &health);
        }
        let triggers_wait = self.round.is_some();
        if (!triggers_wait || self.interactive_streak < INTERACTIVE_BURST)
            && self.run_interactive(now, &health, out)
        {
            self.interactive_streak += 1;
            return;
        }
        self.interactive_streak = 0;
        if self.run_round(now, &health, out) || self.run_interactive(now, &health, out) {
            return;
        }
        let every = self.cfg.daemon.caption_interval;
        if every == 0 {
            return;
        }
        let n = self.cams.len();
        for k in 0..n {
            let ci = (self.next_caption_cam + k) % n;
            let CameraHealth::Fresh(frame) = &health[ci] else {
                continue;
            };
            let cam = &mut self.cams[ci];
            if cam
                .last_caption
                .is_some_and(|t| now.unix - t < every as f64)
            {
                continue;
            }
            cam.last_caption = Some(now.unix);
            self.next_caption_cam = ci + 1;
            let skills = vec![Skill::Caption {
                length: self.cfg.daemon.caption_length,
            }];
            let frame = frame.clone();
            self.submit(
                now,
                Work::Caption { cam: ci },
                Picture::Frame(frame),
                None,
                skills,
                out,
            );
            return;
        }
    }

    /// Starts the next trigger of the round in progress, or of the next camera's round.
    /// False when no trigger is due.
    fn run_round(&mut self, now: Now, health: &[CameraHealth], out: &mut Vec<Act>) -> bool {
        // Each camera's round at most once: triggers that cannot run end the search.
        for _ in 0..=self.cams.len() {
            if self.round.as_ref().is_none_or(|r| r.names.is_empty()) {
                self.round = self.next_round(now, health);
            }
            let Some(round) = self.round.as_mut() else {
                return false;
            };
            while let Some((name, cause)) = round.names.pop_front() {
                let (ci, frame) = (round.cam, round.frame.clone());
                let cam = &mut self.cams[ci];
                let Some(t) = cam.triggers.get(&name) else {
                    continue;
                };
                if t.error.is_some() || !t.enabled {
                    continue;
                }
                let skills = vec![t.cfg.skill()];
                let zone = match cam.zone(t.cfg.zone.as_ref()) {
                    Ok(z) => z,
                    Err(why) => {
                        self.trigger_failed(ci, &name, why, out);
                        return self.run_round(now, health, out);
                    }
                };
                let (reference, _) = cam.scene(&frame, zone);
                if let Some(t) = cam.triggers.get_mut(&name) {
                    t.reference = reference;
                }
                let work = Work::Trigger {
                    cam: ci,
                    name,
                    zone,
                    cause,
                };
                self.submit(now, work, Picture::Frame(frame), zone, skills, out);
                return true;
            }
            self.round = None;
        }
        false
    }

    /// Starts the oldest interactive request that can run; answers those that cannot
    /// (expired, camera unavailable). False when none was started.
    fn run_interactive(&mut self, now: Now, health: &[CameraHealth], out: &mut Vec<Act>) -> bool {
        let mut i = 0;
        while i < self.queue.len() {
            let job = &self.queue[i];
            if now.mono >= job.deadline {
                let Some(job) = self.queue.remove(i) else {
                    break;
                };
                let e = ApiError::new(
                    Code::Timeout,
                    format!(
                        "waited {} s for the engine (daemon.request_timeout or the message's expiry)",
                        now.mono.duration_since(job.received).as_secs()
                    ),
                );
                self.reply(now, job.reply, Err(e), out);
                continue;
            }
            let absent = CameraHealth::Unavailable("no camera".into());
            let cam_health = job.cam.and_then(|c| health.get(c)).unwrap_or(&absent);
            let refused = match (&job.image, cam_health) {
                (Some(bytes), _) => Ok(Picture::Encoded(bytes.clone())),
                (None, _) if !self.engine_reachable() => Err(ApiError::new(
                    Code::ModelError,
                    "no pool worker is alive and this node has no model",
                )),
                (None, CameraHealth::Fresh(f)) => Ok(Picture::Frame(f.clone())),
                (None, CameraHealth::Starting)
                    if now.mono.duration_since(job.received) < CAMERA_GRACE =>
                {
                    // A camera still starting gets a few seconds; other cameras' requests
                    // go ahead meanwhile.
                    i += 1;
                    continue;
                }
                (None, CameraHealth::Starting) => Err(ApiError::new(
                    Code::CameraUnavailable,
                    "the camera has not delivered a frame yet; send an \"image\" instead",
                )),
                (None, CameraHealth::Unavailable(why)) => Err(ApiError::new(
                    Code::CameraUnavailable,
                    format!("no camera frame ({why}); send an \"image\" instead"),
                )),
            };
            let Some(job) = self.queue.remove(i) else {
                break;
            };
            match refused {
                Ok(picture) => {
                    let skills = vec![job.skill.clone()];
                    let zone = job.zone;
                    self.submit(
                        now,
                        Work::Interactive(Box::new(job)),
                        picture,
                        zone,
                        skills,
                        out,
                    );
                    return true;
                }
                Err(e) => self.reply(now, job.reply, Err(e), out),
            }
        }
        false
    }

    /// The next camera (in turn) with triggers due on its newest frame, and those
    /// triggers, grouped by zone so that each zone's crop is encoded once.
    fn next_round(&mut self, now: Now, health: &[CameraHealth]) -> Option<Round> {
        let n = self.cams.len();
        for k in 0..n {
            let ci = (self.next_round_cam + k) % n;
            let CameraHealth::Fresh(frame) = &health[ci] else {
                continue;
            };
            let cam = &mut self.cams[ci];
            let mut due = Vec::new();
            let mut soon = Vec::new();
            let names: Vec<String> = cam.triggers.keys().cloned().collect();
            for name in names {
                let Some(t) = cam.triggers.get(&name) else {
                    continue;
                };
                if t.error.is_some() || !t.enabled {
                    continue;
                }
                let zone = cam.zone(t.cfg.zone.as_ref()).ok().flatten();
                let zone_key = zone.as_ref().map(Zone::key);
                let (current, threshold) = cam.scene(frame, zone);
                let Some(t) = cam.triggers.get_mut(&name) else {
                    continue;
                };
                // No signature to compare (a new trigger, another frame size): changed.
                let changed = match (&t.reference, &current) {
                    (Some(r), Some(c)) => {
                        scene::difference(r, c, threshold).is_none_or(|d| d.is_change())
                    }
                    _ => true,
                };
                match triggers::pace(&t.cfg, t.state.settled(), t.evaluated, changed, now.unix) {
                    Pace::Due(cause) => due.push((zone_key, (name, cause))),
                    Pace::Soon(cause) => soon.push((zone_key, (name, cause))),
                    Pace::Skip => {
                        // Same picture, settled answer: it stands; look again next interval.
                        t.evaluated.interval_from = Some(now.unix);
                        cam.evaluations.skipped += 1;
                        self.counters.trigger_skips += 1;
                    }
                    Pace::Wait => {}
                }
            }
            if due.is_empty() {
                continue;
            }
            due.extend(soon);
            // Stable: within a zone, triggers keep their order.
            due.sort_by_key(|(z, _)| *z);
            self.next_round_cam = ci + 1;
            return Some(Round {
                cam: ci,
                frame: frame.clone(),
                names: due.into_iter().map(|(_, n)| n).collect(),
            });
        }
        None
    }

    fn answer_snapshot_waiters(
        &mut self,
        now: Now,
        ci: usize,
        views: &[CameraView],
        health: &CameraHealth,
        out: &mut Vec<Act>,
    ) {
        if self.cams[ci].snapshot_waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.cams[ci].snapshot_waiters);
        for (reply, since) in waiters {
            let waited_out = now.mono.duration_since(since) >= CAMERA_GRACE;
            if matches!(health, CameraHealth::Starting) && !waited_out {
                self.cams[ci].snapshot_waiters.push((reply, since));
            } else {
                let result = self.snapshot(now, ci, views, false, out);
                self.reply(now, reply, result, out);
            }
        }
    }

    fn publish_caption(&mut self, ci: usize, caption: &str, frame: &Frame, out: &mut Vec<Act>) {
        self.counters.captions += 1;
        let v = wire::Caption {
            caption: caption.to_owned(),
            frame_time: unix(frame.captured_at),
            frame_seq: frame.seq,
        };
        let topic = self.cams[ci].topics.caption();
        self.publish_retained(out, topic, wire::to_bytes(&v));
    }

    fn submit(
        &mut self,
        now: Now,
        work: Work,
        picture: Picture,
        zone: Option<Zone>,
        skills: Vec<Skill>,
        out: &mut Vec<Act>,
    ) {
        let job = self.next_id();
        self.in_flight = Some(InFlight {
            job,
            work,
            started: now.mono,
            cancelled: false,
        });
        out.push(Act::Submit {
            job,
            picture,
            zone,
            skills,
        });
    }

    fn on_done(
        &mut self,
        now: Now,
        job: u64,
        result: Result<Response, EngineError>,
        frame: Option<Arc<Frame>>,
        out: &mut Vec<Act>,
    ) {
        let Some(done) = self.in_flight.take_if(|f| f.job == job) else {
            return;
        };
        let elapsed = now.mono.duration_since(done.started).as_secs_f64() * 1e3;
        self.counters.engine_busy_ms += elapsed;
        if let Ok(r) = &result {
            self.counters.inferences += 1;
            self.counters.image_encodes += u64::from(!r.prefix.reused);
        }
        match done.work {
            Work::Interactive(p) => {
                self.counters.last_request_ms = Some(elapsed);
                let reply = match (result, frame) {
                    (Ok(mut r), Some(f)) => {
                        if let Some(z) = p.zone {
                            for a in &mut r.answers {
                                z.answer_to_frame(&mut a.answer);
                            }
                        }
                        let first = r.answers.first().map(|a| &a.answer);
                        // A caption of the camera's picture (the "caption now" button) is
                        // the camera's caption; one of a request's own image (or of a
                        // zone) is not.
                        if let (Some(cam), None, None, Some(Answer::Caption { caption })) =
                            (p.cam, &p.image, p.zone, first)
                        {
                            self.publish_caption(cam, caption, &f, out);
                        }
                        let annotated = match (p.cam, p.annotate, first, &p.skill) {
                            (
                                Some(cam),
                                true,
                                Some(a),
                                Skill::Detect { object } | Skill::Point { object },
                            ) => {
                                let jpeg = crate::annotate::annotated_jpeg(&f, a, object, p.zone);
                                let topic = self.cams[cam].topics.annotated();
                                self.publish_retained(out, topic.clone(), jpeg);
                                Some(topic)
                            }
                            _ => None,
                        };
                        let mut data = answer_reply(&r, &f);
                        data.zone = p.zone;
                        data.annotated_topic = annotated;
                        Ok(ReplyData::Answer(data))
                    }
                    (Ok(_), None) => Err(ApiError::new(Code::ModelError, "no picture")),
                    (Err(e), _) => Err(engine_error(e, self.stopping.is_some())),
                };
                self.reply(now, p.reply, reply, out);
            }
            Work::Trigger {
                cam,
                name,
                zone,
                cause,
            } => {
                self.counters.last_trigger_ms = Some(elapsed);
                if let Some(t) = self.cams[cam].triggers.get_mut(&name) {
                    t.evaluated.interval_from = Some(now.unix);
                }
                match (result, frame) {
                    (Ok(r), Some(f)) => {
                        if let Some(a) = r.answers.first() {
                            let mut answer = a.answer.clone();
                            if let Some(z) = zone {
                                z.answer_to_frame(&mut answer);
                            }
                            self.counters.trigger_evaluations += 1;
                            let c = &mut self.cams[cam];
                            c.evaluations.count(cause);
                            if let Some(t) = c.triggers.get_mut(&name) {
                                t.evaluated.answered = Some(now.unix);
                            }
                            let at = (cam, name.as_str(), zone, cause);
                            self.on_trigger_answer(now, at, &answer, &f, out);
                        }
                    }
                    (Err(EngineError::Invalid(why)), _) => {
                        self.trigger_failed(cam, &name, why, out)
                    }
                    (Err(e), _) => {
                        tracing::warn!(trigger = ?name, "trigger evaluation failed: {e}");
                    }
                    (Ok(_), None) => {}
                }
            }
            Work::Caption { cam } => match (result, frame) {
                (Ok(r), Some(f)) => {
                    if let Some(Answer::Caption { caption }) = r.answers.first().map(|a| &a.answer)
                    {
                        self.publish_caption(cam, caption, &f, out);
                    }
                }
                (Err(e), _) => tracing::warn!("caption failed: {e}"),
                (Ok(_), None) => {}
            },
        }
    }

    // ---- time -------------------------------------------------------------------------

    fn engine_stuck(&self, now: Now) -> bool {
        self.in_flight.as_ref().is_some_and(|f| {
            now.mono.duration_since(f.started)
                > Duration::from_secs(self.cfg.daemon.request_timeout) * 2
        })
    }

    fn on_tick(&mut self, now: Now, views: &[CameraView], out: &mut Vec<Act>) {
        self.discovery_tick(now, out);
        if self.connected {
            for ci in 0..self.cams.len() {
                let health = self.camera_health(now, ci, views);
                self.publish_camera_availability(ci, &health, false, out);
            }
        }
        // A job running far past its time is cancelled.
        if let Some(f) = self.in_flight.as_mut() {
            let limit = Duration::from_secs(self.cfg.daemon.request_timeout);
            let overdue = now.mono.duration_since(f.started) > limit;
            let stop_overdue = self
                .stopping
                .is_some_and(|s| now.mono.duration_since(s) > STOP_GRACE);
            if (overdue || stop_overdue) && !f.cancelled {
                f.cancelled = true;
                out.push(Act::Cancel { job: f.job });
            }
        }
        if self.stopping.is_none()
            && self.last_stats.is_none_or(|t| {
                now.mono.duration_since(t).as_secs() >= self.cfg.daemon.stats_interval
            })
        {
            self.last_stats = Some(now.mono);
            for ci in 0..self.cams.len() {
                self.publish_stats(now, ci, views, out);
            }
            self.publish_server(now, out);
            self.publish_heartbeat(true, out);
        }
        for ci in 0..self.cams.len() {
            let retry = self.cams[ci].unsaved.as_ref().is_some_and(|u| {
                now.mono.duration_since(u.tried) >= SAVE_RETRY
                    && !self.saving.values().any(|s| s.cam == ci)
            });
            if retry && self.stopping.is_none() {
                if let Some(u) = self.cams[ci].unsaved.as_mut() {
                    u.tried = now.mono;
                }
                self.save(ci, None, SavedKind::Retry, out);
            }
        }
        if self.bad_requests > 0
            && self
                .last_bad_log
                .is_none_or(|t| now.mono.duration_since(t) >= BAD_REQUEST_LOG_EVERY)
        {
            tracing::info!(
                count = self.bad_requests,
                "requests answered with an error since the last report (details at debug level)"
            );
            self.bad_requests = 0;
            self.last_bad_log = Some(now.mono);
        }
        // WATCHDOG=1 means the loop turns and the engine is not stuck; a camera outage is
        // reported (availability, health), not restarted.
        if let Some(period) = self.watchdog_period {
            let due = self
                .last_watchdog
                .is_none_or(|t| now.mono.duration_since(t) >= period / 2);
            if due && !self.engine_stuck(now) {
                self.last_watchdog = Some(now.mono);
                out.push(Act::Notify(Notify::Watchdog));
            }
        }
    }

    /// A camera's stats: its frames, state and triggers, and the engine's queue and
    /// counters (shared by every camera).
    fn publish_stats(&self, now: Now, ci: usize, views: &[CameraView], out: &mut Vec<Act>) {
        let cam = &self.cams[ci];
        let v = wire::Stats {
            uptime_s: now.mono.duration_since(self.started).as_secs(),
            frames: views
                .get(ci)
                .and_then(|v| v.latest.as_ref())
                .map_or(0, |f| f.seq),
            camera: self.camera_text(now, ci, views),
            queue_depth: self.queue.len() + usize::from(self.in_flight.is_some()),
            triggers: cam.triggers.len(),
            evaluations: cam.evaluations,
            counters: self.counters.clone(),
            outbox: self.outbox,
            pool: self.pool.map(|p| p.stats),
        };
        self.publish_retained(out, cam.topics.stats(), wire::to_bytes(&v));
    }

    // ---- stop and reload ------------------------------------------------------------------

    fn on_stop(&mut self, now: Now, out: &mut Vec<Act>) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!("stopping");
        self.stopping = Some(now.mono);
        self.flush_later(out);
        out.push(Act::Notify(Notify::Stopping));
        let stopping = || ApiError::new(Code::ShuttingDown, "moonwatch is stopping");
        while let Some(job) = self.queue.pop_front() {
            self.reply(now, job.reply, Err(stopping()), out);
        }
        for ci in 0..self.cams.len() {
            for (reply, _) in std::mem::take(&mut self.cams[ci].snapshot_waiters) {
                self.reply(now, reply, Err(stopping()), out);
            }
        }
        // A job in flight may finish (interactive answers are worth a moment); its
        // result arrives as EngineDone, or it is cancelled after STOP_GRACE.
        if let Some(f) = self.in_flight.as_mut() {
            if !matches!(f.work, Work::Interactive(_)) && !f.cancelled {
                f.cancelled = true;
                out.push(Act::Cancel { job: f.job });
            }
        }
    }

    fn maybe_exit(&mut self, now: Now, out: &mut Vec<Act>) {
        let Some(since) = self.stopping else {
            return;
        };
        if self.exited {
            return;
        }
        // A job that does not return even after being cancelled is answered anyway.
        if self.in_flight.is_some() && now.mono.duration_since(since) > STOP_GRACE * 2 {
            if let Some(f) = self.in_flight.take() {
                if let Work::Interactive(p) = f.work {
                    let e = ApiError::new(Code::ShuttingDown, "moonwatch is stopping");
                    self.reply(now, p.reply, Err(e), out);
                }
            }
        }
        // A save that does not finish (a hung disk) is answered as not persisted.
        if !self.saving.is_empty() && now.mono.duration_since(since) > STOP_GRACE * 2 {
            for save in self.saving.keys().copied().collect::<Vec<_>>() {
                self.on_saved(
                    now,
                    save,
                    Err("moonwatch stopped before the save finished".into()),
                    out,
                );
            }
        }
        if self.in_flight.is_some() || !self.saving.is_empty() {
            return;
        }
        self.exited = true;
        self.publish_heartbeat(false, out);
        self.publish_retained(out, self.topics.availability(), "offline");
        out.push(Act::Exit);
    }

    fn on_reload(&mut self, now: Now, r: Result<Box<Config>, String>, out: &mut Vec<Act>) {
        let refuse = |this: &mut Self, out: &mut Vec<Act>, e: String| {
            tracing::error!("reload refused, keeping the running configuration: {e}");
            let p = format!("reload refused: {e}");
            out.push(Act::Notify(Notify::Status(p.clone())));
            this.reload_problem = Some(p);
        };
        let new = match r {
            Ok(c) => *c,
            Err(e) => return refuse(self, out, e),
        };
        if let Some(e) = self.cfg.reload_losses(&new) {
            return refuse(self, out, e);
        }
        let specs = new.cameras(&self.device_id);
        let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
        let running: Vec<&str> = self.cams.iter().map(|c| c.spec.id.as_str()).collect();
        if ids != running {
            let e = format!(
                "the cameras changed ({} -> {}); restart moonwatch to add, remove or rename cameras",
                running.join(", "),
                ids.join(", ")
            );
            return refuse(self, out, e);
        }
        out.push(Act::Notify(Notify::Reloading));
        self.reload_problem = None;
        if new.mqtt != self.cfg.mqtt {
            tracing::warn!(
                "[mqtt] changed; restart moonwatch to apply it (the connection is kept)"
            );
        }
        if new.model != self.cfg.model {
            tracing::info!("[model] changed; loading the new model beside the running one");
            self.model_loading = true;
            self.model_ready = false;
            out.push(Act::LoadModel(Box::new(new.clone())));
        }
        // A round in progress may name triggers that change now.
        self.round = None;
        for (ci, spec) in specs.into_iter().enumerate() {
            let cam = &mut self.cams[ci];
            let restart = !spec.config.same_source(&cam.spec.config);
            if restart {
                tracing::info!(camera = %spec.id, "capture settings changed; restarting the camera");
                out.push(Act::RestartCamera(ci, spec.config.clone()));
            }
            let zones_changed = spec.config.zones != cam.spec.config.zones;
            if restart || zones_changed {
                for t in cam.triggers.values_mut() {
                    t.reference = None;
                }
                cam.scenes.clear();
            }
            cam.spec = spec;
            let want = effective_triggers(&cam.spec.config.triggers, &cam.runtime);
            let old: Vec<TriggerConfig> = cam.triggers.values().map(|t| t.cfg.clone()).collect();
            for cfg in &old {
                if !want.contains_key(&cfg.name) {
                    self.cams[ci].triggers.remove(&cfg.name);
                    self.clear_trigger(now, ci, cfg, out);
                }
            }
            for (name, cfg) in want {
                let same = self.cams[ci]
                    .triggers
                    .get(&name)
                    .is_some_and(|t| t.cfg == cfg);
                if !same {
                    self.install_trigger(ci, cfg, out);
                }
            }
            if zones_changed {
                // Object triggers count in each zone.
                self.publish_device_discovery(ci, out);
            }
        }
        let mqtt = self.cfg.mqtt.clone();
        self.cfg = new;
        self.cfg.mqtt = mqtt;
        tracing::info!("configuration reloaded");
        if !self.model_loading {
            out.push(Act::Notify(Notify::Ready));
        }
    }

    fn on_model_loaded(&mut self, r: Result<(), String>, out: &mut Vec<Act>) {
        self.model_loading = false;
        match r {
            Ok(()) => {
                tracing::info!("new model loaded; it takes over when the engine is idle");
                self.model_ready = true;
                out.push(Act::Notify(Notify::Ready));
            }
            Err(e) => {
                tracing::error!("new model not loaded, keeping the old one: {e}");
                let p = format!("reload refused: the new model did not load: {e}");
                out.push(Act::Notify(Notify::Status(p.clone())));
                out.push(Act::Notify(Notify::Ready));
                self.reload_problem = Some(p);
            }
        }
    }
}

/// Configured triggers, less the removed, plus the added (an added one replaces a
/// configured one of the same name).
pub fn effective_triggers(
    configured: &[TriggerConfig],
    rt: &RuntimeTriggers,
) -> BTreeMap<String, TriggerConfig> {
    let mut out: BTreeMap<String, TriggerConfig> = configured
        .iter()
        .filter(|t| !rt.removed.contains(&t.name))
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    for t in &rt.added {
        out.insert(t.name.clone(), t.clone());
    }
    for (name, tuning) in &rt.tuned {
        if let Some(t) = out.get_mut(name) {
            *t = tuning.apply(t.clone());
        }
    }
    out
}

/// Identifies a request across redeliveries: topic, payload and v5 properties.
fn request_key(m: &Incoming) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [
        m.topic.as_bytes(),
        &m.payload,
        m.response_topic.as_deref().unwrap_or("").as_bytes(),
        m.correlation.as_deref().unwrap_or(&[]),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.digest()
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

fn engine_error(e: EngineError, stopping: bool) -> ApiError {
    match e {
        EngineError::Image(m) => ApiError::new(Code::BadImage, m),
        EngineError::Invalid(m) => ApiError::new(Code::BadRequest, m),
        EngineError::Cancelled if stopping => {
            ApiError::new(Code::ShuttingDown, "moonwatch is stopping")
        }
        EngineError::Cancelled => {
            ApiError::new(Code::Timeout, "cancelled after daemon.request_timeout")
        }
        EngineError::Stopped => ApiError::new(Code::ShuttingDown, "the engine stopped"),
        EngineError::Busy(n) => {
            ApiError::new(Code::Busy, format!("the engine is busy ({n} waiting)"))
        }
        e => ApiError::new(Code::ModelError, e.to_string()),
    }
}

/// The reply data for the first answer of a response.
fn answer_reply(r: &Response, frame: &Frame) -> wire::AnswerReply {
    let answered = r.answers.first().cloned().unwrap_or(Answered {
        answer: Answer::Query {
            answer: String::new(),
            confidence: 0.0,
        },
        timing: Default::default(),
    });
    wire::AnswerReply {
        answered,
        frame_time: unix(frame.captured_at),
        frame_seq: frame.seq,
        width: frame.width,
        height: frame.height,
        prefix_reused: r.prefix.reused,
        image_encode_ms: r.prefix.image_encode_ms,
        total_ms: r.total_ms,
        zone: None,
        annotated_topic: None,
    }
}

#[path = "core_ha.rs"]
mod ha;

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
