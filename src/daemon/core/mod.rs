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
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::store::RuntimeTriggers;
use crate::camera::CameraStatus;
use crate::config::{CameraSpec, Config};
use crate::frame::scene::{self, Signature};
use crate::frame::Frame;
use crate::mqtt::api::{self, Action, ApiError, Code};
use crate::mqtt::topics::Topics;
use crate::mqtt::wire::{self, ReplyData};
use crate::mqtt::{AckToken, Class, Incoming, MqttEvent, OutboxStats, Outgoing};
use crate::triggers::{
    self, Cause, Change, Evaluated, Observation, Pace, TriggerConfig, TriggerState,
};
use crate::vision::{Answer, EngineError, Response, Skill};
use crate::zone::Zone;

mod cameras;
mod jobs;
mod lifecycle;
mod offload;
mod pictures;
mod protocol;
mod replies;
mod requests;
mod scheduler;
mod trigger_ops;

pub use offload::{HEARTBEAT, JOB_SIDE};
pub use protocol::*;
use replies::{answer_reply, engine_error, on_off, ReplyTo};
pub use trigger_ops::effective_triggers;

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
    place: Place,
}

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// This node's engine.
    Local,
    /// A pool worker (see [`offload`]).
    Pool,
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
    /// `None` for a switch or a setting: nothing to answer.
    reply: Option<ReplyTo>,
    data: SavedKind,
}

#[derive(Debug)]
enum SavedKind {
    Added(String),
    Removed(String),
    /// A trigger switched or tuned.
    Setting,
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

/// The broker connection as the core knows it.
#[derive(Debug, Default)]
struct Link {
    connected: bool,
    broker_down_reported: bool,
    refused_subscriptions: Vec<String>,
    outbox: OutboxStats,
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
    /// The pool client (camera nodes with `pool.offload`).
    offload: Option<offload::Offload>,
    started: Instant,
    /// What waits for the engine and what runs on it.
    sched: scheduler::Scheduler,
    /// The broker connection as the core knows it.
    link: Link,
    /// Stopping, reloading, the model swap, the periodic duties.
    life: lifecycle::Life,
    saving: BTreeMap<u64, Saving>,
    next_id: u64,
    counters: wire::Counters,
    recent: HashMap<u64, Recent>,
    recent_order: VecDeque<u64>,
    problems: Vec<String>,
    bad_requests: u64,
    last_bad_log: Option<Instant>,
    /// Home Assistant discovery: what the broker holds, and whether it was read.
    discovery: ha::Discovery,
    /// JPEGs being encoded, and what waits for each.
    encodes: HashMap<u64, pictures::Encoding>,
    /// Retained topics to clear at a time (see [`ha::CLEAR_AFTER`]).
    later: Vec<(Instant, String)>,
    /// When the server's state was last published, and the engine's busy time then.
    last_server: Option<(Instant, f64)>,
    /// The pool as the server's state last said (a change is published at once).
    pool_seen: Option<wire::ServerPool>,
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
            offload: cfg
                .pool
                .offload
                .then(|| offload::Offload::new(&cfg, device_id, now)),
            device_id: device_id.to_owned(),
            cams,
            started: now.mono,
            sched: scheduler::Scheduler::default(),
            link: Link::default(),
            life: lifecycle::Life {
                watchdog_period,
                ..lifecycle::Life::default()
            },
            saving: BTreeMap::new(),
            next_id: 1,
            counters: wire::Counters::default(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            problems,
            bad_requests: 0,
            last_bad_log: None,
            discovery: ha::Discovery::new(&cfg.mqtt.discovery_prefix),
            encodes: HashMap::new(),
            later: Vec::new(),
            last_server: None,
            pool_seen: None,
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
        if let Some(o) = &self.offload {
            out.extend(o.subscriptions());
        }
        out.extend(self.discovery_subscriptions());
        out
    }

    /// The cameras' ids and capture settings, in configuration order.
    pub fn cameras(&self) -> impl Iterator<Item = &CameraSpec> {
        self.cams.iter().map(|c| &c.spec)
    }

    /// Whether jobs can run at all: on this node's model or on a live worker.
    fn engine_reachable(&self, now: Now) -> bool {
        self.offload
            .as_ref()
            .is_none_or(|o| self.cfg.has_model() || o.reachable(now))
    }

    /// The oldest engine job in flight, if any.
    pub fn job(&self) -> Option<u64> {
        self.sched.in_flight.keys().next().copied()
    }

    /// Reacts to one input; `cams` is what each camera shows.
    pub fn handle(&mut self, now: Now, cams: &(impl Views + ?Sized), input: Input) -> Vec<Act> {
        let views = cams.views();
        if let Some(o) = cams.outbox() {
            self.link.outbox = o;
        }
        let mut out = Vec::new();
        match input {
            Input::Mqtt(ev) => self.on_mqtt(now, views, ev, &mut out),
            Input::EngineDone { job, result, frame } => {
                self.on_done(now, job, result, frame, None, &mut out)
            }
            Input::PoolPicture { job, result } => {
                let outcome = self
                    .offload
                    .as_mut()
                    .and_then(|o| o.picture(now, job, result, &mut out));
                if let Some(o) = outcome {
                    self.on_pool(now, o, &mut out);
                }
            }
            Input::Saved { save, result } => self.on_saved(now, save, result, &mut out),
            Input::Tick => self.on_tick(now, views, &mut out),
            Input::Stop => self.on_stop(now, &mut out),
            Input::Reload(r) => self.on_reload(now, r, &mut out),
            Input::ModelLoaded(r) => self.on_model_loaded(r, &mut out),
            Input::Encoded { id, jpeg } => self.on_encoded(now, id, jpeg, &mut out),
        }
        self.schedule(now, views, &mut out);
        self.maybe_exit(now, &mut out);
        out
    }

    pub(super) fn publish_retained(
        &self,
        out: &mut Vec<Act>,
        topic: String,
        payload: impl Into<Bytes>,
    ) {
        out.push(Act::Publish(Outgoing::retained(topic, payload)));
    }

    // ---- broker -------------------------------------------------------------------

    fn on_mqtt(&mut self, now: Now, views: &[CameraView], ev: MqttEvent, out: &mut Vec<Act>) {
        match ev {
            MqttEvent::Connected { session_present } => {
                tracing::info!(session_present, "connected to the broker");
                self.link.connected = true;
                self.link.broker_down_reported = false;
                self.link.refused_subscriptions.clear();
                self.publish_retained(out, self.topics.availability(), "online");
                self.publish_heartbeat(true, out);
                self.publish_server(now, out);
                // Discovery once the broker's retained configs are read.
                self.discovery_connected(now);
                for ci in 0..self.cams.len() {
                    let health = self.camera_health(now, ci, views);
                    self.publish_camera_availability(now, ci, &health, true, out);
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
                self.link.refused_subscriptions = refused;
                self.discovery_subscribed(now, out);
            }
            MqttEvent::Disconnected(reason) => {
                if self.link.connected {
                    tracing::warn!(%reason, "lost the broker; reconnecting with backoff");
                } else if !self.link.broker_down_reported {
                    tracing::warn!(
                        %reason,
                        "cannot reach the broker at {}:{}; retrying with backoff",
                        self.cfg.mqtt.host,
                        self.cfg.mqtt.port
                    );
                } else {
                    tracing::debug!(%reason, "broker still unreachable");
                }
                self.link.broker_down_reported = true;
                self.link.connected = false;
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
            MqttEvent::Message(m) if self.offload.as_ref().is_some_and(|o| o.takes(&m.topic)) => {
                if let Some(t) = m.ack {
                    out.push(Act::Ack(t));
                }
                let outcome = self
                    .offload
                    .as_mut()
                    .and_then(|o| o.on_message(now, &m, out));
                if let Some(o) = outcome {
                    self.on_pool(now, o, out);
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
}

mod ha;

#[cfg(test)]
mod tests;
