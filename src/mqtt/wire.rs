//! Every JSON payload moonwatch publishes or accepts, as serde types. `moonwatch schema`
//! and `docs/schema/*.schema.json` (kept in step by a test) are generated from these, and
//! the daemon tests validate what the daemon really publishes against them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::OutboxStats;
use crate::triggers::TriggerConfig;
use crate::vision::Answered;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Error,
}

/// Every reply, on the Response Topic, `reply_to` or `{base}/response/{name}`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Reply {
    pub status: Status,
    /// The request name.
    pub request: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ReplyData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Value>,
    /// The pool worker that answered (its device id): in a worker's reply to a pool job
    /// (the camera node sends the next job on the same picture to it, where the picture is
    /// cached), and in a camera node's reply to a request it served through the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// What a skill's reply says, for a client of the API (the CLI with `--broker`, a camera
/// node's pool): its answer, the error it carries, or neither.
#[derive(Debug)]
pub enum Outcome {
    Answer(Box<AnswerReply>),
    Error(ErrorBody),
    NoAnswer,
}

impl Reply {
    pub fn outcome(self) -> Outcome {
        match (self.status, self.data, self.error) {
            (Status::Ok, Some(ReplyData::Answer(a)), _) => Outcome::Answer(Box::new(a)),
            (Status::Error, _, Some(e)) => Outcome::Error(e),
            _ => Outcome::NoAnswer,
        }
    }
}

/// Skill answers from replies as one engine response, as the engine would have given it:
/// the picture's encode and size from the first, the times summed.
pub fn response_of(answers: Vec<AnswerReply>) -> crate::vision::Response {
    let mut r = crate::vision::Response {
        frame_key: String::new(),
        prefix: Default::default(),
        answers: Vec::with_capacity(answers.len()),
        queued_ms: 0.0,
        total_ms: 0.0,
    };
    for (i, a) in answers.into_iter().enumerate() {
        if i == 0 {
            r.prefix.reused = a.prefix_reused;
            r.prefix.image_encode_ms = a.image_encode_ms;
            r.prefix.input_width = a.width;
            r.prefix.input_height = a.height;
        }
        r.total_ms += a.total_ms;
        r.answers.push(a.answered);
    }
    r
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub code: Code,
    pub message: String,
}

/// What a successful reply carries, by request.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ReplyData {
    Answer(AnswerReply),
    Snapshot(SnapshotReply),
    Health(Health),
    Triggers(TriggerList),
    Added(TriggerAdded),
    Removed(TriggerRemoved),
}

/// query, caption, detect, point, yes_no.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AnswerReply {
    /// The answer and its timing.
    #[serde(flatten)]
    pub answered: Answered,
    /// When the frame was taken (Unix seconds).
    pub frame_time: f64,
    /// The camera frame's number; 0 for the request's own image.
    pub frame_seq: u64,
    pub width: u32,
    pub height: u32,
    pub prefix_reused: bool,
    pub image_encode_ms: f64,
    pub total_ms: f64,
    /// The zone looked at, in the picture's relative coordinates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<crate::zone::Zone>,
    /// Where the annotated picture was published, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_topic: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotReply {
    /// Where the JPEG was published (retained).
    pub topic: String,
    pub width: u32,
    pub height: u32,
    pub frame_time: f64,
    pub frame_seq: u64,
    pub bytes: usize,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// Connected, subscribed, the engine working, the camera delivering.
    pub healthy: bool,
    pub uptime_s: u64,
    pub camera: String,
    /// Every reason `healthy` is false, or a reload was refused.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TriggerList {
    pub triggers: Vec<TriggerEntry>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TriggerEntry {
    pub trigger: TriggerConfig,
    /// "ON", "OFF", or null before the first decision.
    pub state: Option<String>,
    pub confidence: Option<f32>,
    /// Switched on (evaluated) or off.
    pub enabled: bool,
    /// Why the trigger is not evaluated (the engine refused it), if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TriggerAdded {
    pub added: String,
    pub persisted: bool,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TriggerRemoved {
    pub removed: String,
    pub persisted: bool,
}

/// Retained on `{base}/trigger/{name}/attributes` after every evaluation.
/// `snapshot_topic` is the trigger's own `{base}/trigger/{name}/snapshot`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TriggerAttributes {
    pub confidence: f32,
    /// true / false, or null when the model was unsure.
    pub answer: Option<bool>,
    pub frame_time: f64,
    pub frame_seq: u64,
    pub snapshot_topic: String,
    pub details: Details,
    /// Set when the engine refused the trigger; it is then not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the model last answered this trigger (Unix seconds). Between evaluations the
    /// answer stands on a picture that has not changed, for at most the trigger's
    /// `recheck` seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<f64>,
    /// Why this evaluation ran: `first`, `change` (the picture changed), `interval` (the
    /// answer was not settled) or `recheck` (a settled answer reached `recheck`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<crate::triggers::Cause>,
}

/// Per-kind details of a trigger's last answer.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Details {
    Object {
        count: usize,
        objects: Vec<crate::vision::BBox>,
        /// For a trigger over the whole frame: how many of the objects have their centre
        /// in each of the camera's zones, by zone name.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        zones: BTreeMap<String, usize>,
    },
    Question {
        p_yes: f32,
        p_no: f32,
    },
    None {},
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Begin,
    End,
}

/// On `{base}/trigger/{name}/event` (not retained) when a trigger's state changes.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TriggerEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The same as `type`, under the key Home Assistant's event entities read.
    pub event_type: EventKind,
    pub trigger: String,
    pub confidence: f32,
    pub frame_time: f64,
    pub frame_seq: u64,
    pub snapshot_topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
}

/// Retained on `{base}/caption`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Caption {
    pub caption: String,
    pub frame_time: f64,
    pub frame_seq: u64,
}

/// Retained on `{base}/stats`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Stats {
    pub uptime_s: u64,
    pub frames: u64,
    /// "running", "starting", "stale: ...", "down: ..."
    pub camera: String,
    pub queue_depth: usize,
    pub triggers: usize,
    /// This camera's trigger evaluations by cause, and the due ones skipped.
    #[serde(default)]
    pub evaluations: Evaluations,
    pub counters: Counters,
    pub outbox: OutboxStats,
    /// A camera node that hands its jobs to the pool (`pool.offload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolStats>,
}

/// The pool as a camera node sees it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PoolStats {
    /// Workers whose heartbeat is fresh.
    pub workers: usize,
    /// Jobs out now (their picture being encoded, sent, or waiting to be sent again).
    #[serde(default)]
    pub in_flight: usize,
    /// Jobs this node keeps out at once now: the healthy workers' slots, capped by
    /// `pool.max_in_flight`.
    #[serde(default)]
    pub window: usize,
    /// Attempts sent (each attempt counts).
    pub sent: u64,
    /// Attempts sent again: no answer within `pool.job_timeout`, or a busy worker.
    pub retries: u64,
    /// Results for jobs already answered (a late worker), ignored.
    pub late: u64,
    /// Jobs that ran on this node's own model after the pool did not answer.
    pub local: u64,
    /// Jobs that failed: no worker answered in `pool.attempts` and no model here.
    pub failed: u64,
    /// Attempts sent on a worker's direct topic.
    pub direct: u64,
    /// Attempts sent to the shared subscription (no healthy worker known).
    #[serde(default)]
    pub shared: u64,
    /// Attempts not answered within `pool.job_timeout`.
    #[serde(default)]
    pub timeouts: u64,
    /// Attempts sent to the shared subscription and lost while every known worker was
    /// idle (a member of the group that cannot receive: see docs/fleet.md).
    #[serde(default)]
    pub lost: u64,
    /// Each worker known by its heartbeat, by id.
    #[serde(default)]
    pub by_worker: std::collections::BTreeMap<String, WorkerStats>,
}

/// One worker as a camera node sees it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerStats {
    /// Its heartbeat is fresh enough to count it (three intervals).
    pub live: bool,
    /// Live, trusted, on time and not full: it gets jobs.
    pub healthy: bool,
    /// Why it is avoided, if it is (a job timed out there, its heartbeat stopped, or it
    /// has work without finishing any); cleared when it answers or reports an empty
    /// queue.
    pub suspect: Option<String>,
    /// Jobs of this node it holds now.
    pub holds: usize,
    /// Jobs of this node it answered.
    pub answered: u64,
    /// Jobs of this node that timed out there.
    pub timeouts: u64,
    /// Jobs waiting or running there, as its last heartbeat said.
    pub queue_depth: usize,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: f64,
}

/// A worker's heartbeat, retained on `{prefix}/pool/worker/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkerStatus {
    pub online: bool,
    /// Jobs waiting or running here.
    pub queue_depth: usize,
    /// Jobs it takes before it answers `busy` (`daemon.max_pending`).
    pub max_pending: usize,
    /// Jobs answered since it started.
    pub served: u64,
    /// Seconds between heartbeats: three missed mean the worker is gone.
    pub interval_s: u64,
    /// Jobs it runs at once (its engines).
    #[serde(default = "one")]
    pub slots: usize,
    /// It wants whole pictures, not pictures stretched to the model's 378x378 input: its
    /// model cuts them into the reference's overlapping crops (`model.crops =
    /// "reference"`).
    #[serde(default)]
    pub full_pictures: bool,
}

fn one() -> usize {
    1
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
    /// Requests redelivered by the broker and recognised (not run again).
    pub duplicates: u64,
    pub inferences: u64,
    /// Engine jobs that encoded their picture (the rest reused the cached prefix of the
    /// same picture or crop).
    #[serde(default)]
    pub image_encodes: u64,
    pub trigger_evaluations: u64,
    /// Due evaluations skipped because the scene had not changed.
    pub trigger_skips: u64,
    pub captions: u64,
    /// Milliseconds the engine spent on jobs since the start: its duty is the growth of
    /// this over the growth of `uptime_s`.
    #[serde(default)]
    pub engine_busy_ms: f64,
    pub last_request_ms: Option<f64>,
    pub last_trigger_ms: Option<f64>,
}

/// A camera's trigger evaluations by what caused them, and the due evaluations skipped
/// because a settled answer stood on an unchanged picture.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Evaluations {
    /// Triggers never evaluated before (start, reload, switched on).
    pub first: u64,
    /// The picture (the trigger's zone) changed.
    pub change: u64,
    /// The interval passed with an answer not yet settled (or `recheck = 0`).
    pub interval: u64,
    /// A settled answer on an unchanged picture reached the trigger's `recheck`.
    pub recheck: u64,
    /// Due evaluations skipped: settled answer, unchanged picture.
    pub skipped: u64,
}

impl Evaluations {
    pub fn count(&mut self, cause: crate::triggers::Cause) {
        use crate::triggers::Cause;
        *match cause {
            Cause::First => &mut self.first,
            Cause::Change => &mut self.change,
            Cause::Interval => &mut self.interval,
            Cause::Recheck => &mut self.recheck,
        } += 1;
    }
}

/// Retained on `{base}/answer`: the last question asked on `{base}/question/set` (Home
/// Assistant's text entity) and its answer.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Asked {
    pub question: String,
    /// The model's answer; empty when it failed.
    pub answer: String,
    /// How sure the model was of its words (see the `query` reply), 0..1.
    pub confidence: Option<f32>,
    /// Why there is no answer.
    pub error: Option<String>,
    /// When the answer came (Unix seconds).
    pub answered_at: f64,
    /// The frame the question was asked about (0 when there was none).
    pub frame_seq: u64,
    pub frame_time: f64,
    pub total_ms: f64,
    pub image_encode_ms: f64,
    pub prefix_reused: bool,
}

/// Retained on `{prefix}/{device_id}/server` every `daemon.stats_interval`: the process
/// as Home Assistant's moonwatch server device shows it.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Server {
    pub version: String,
    /// The text model's file name, or `pool` for a camera node without a model.
    pub model: String,
    /// `ready`, `loading a new model` (a reload; the old one answers meanwhile), or `pool`
    /// (jobs go to the pool's workers).
    pub engine: String,
    /// Share of the last stats interval the engine spent on jobs, in percent.
    pub engine_busy_pct: f64,
    /// Jobs waiting or running.
    pub queue_depth: usize,
    pub uptime_s: u64,
    pub cameras: usize,
    /// A camera node that offloads (`pool.offload`): its workers at a glance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<ServerPool>,
}

/// A camera node's pool at a glance (the full figures are in `{base}/stats`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServerPool {
    /// Workers taking jobs now (live, trusted, on time, not full).
    pub healthy: usize,
    /// Workers whose heartbeat is fresh.
    pub live: usize,
    /// Workers avoided, each with why (`"w1: a job sent to it was not answered in 30 s"`).
    pub suspect: Vec<String>,
    /// Jobs out now, and how many the node keeps out at most now.
    pub in_flight: usize,
    pub window: usize,
    /// Attempts not answered in time, and attempts lost on the shared subscription, since
    /// the start.
    pub timeouts: u64,
    pub lost: u64,
}

/// Error codes in replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The payload is not JSON (or not a JSON object).
    BadJson,
    /// A field is missing, of the wrong type, or out of range.
    BadRequest,
    /// No such request name.
    UnknownRequest,
    /// The payload exceeds `mqtt.max_payload`.
    TooLarge,
    /// The image in the request does not decode, or the model cannot take it.
    BadImage,
    /// Too many requests are waiting.
    Busy,
    /// The request waited longer than `daemon.request_timeout`.
    Timeout,
    /// No frame from the camera (and no image in the request).
    CameraUnavailable,
    /// No such trigger.
    NotFound,
    /// The model failed.
    ModelError,
    /// The daemon is shutting down.
    ShuttingDown,
}

/// A JSON Schema (draft 2020-12) for every payload, by name: each request's body
/// (`request.query`, ...), `reply`,
/// `trigger_attributes`, `trigger_event`, `caption`, `stats`, `answer`, `server`, `discovery` (Home
/// Assistant entity configs). Written to
/// `docs/schema/{name}.schema.json` (a test keeps the files in step with these types).
pub fn schemas() -> Vec<(&'static str, Value)> {
    fn one<T: JsonSchema>() -> Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
    }
    let mut all = super::requests::Request::schemas();
    all.extend([
        ("reply", one::<Reply>()),
        ("trigger_attributes", one::<TriggerAttributes>()),
        ("trigger_event", one::<TriggerEvent>()),
        ("caption", one::<Caption>()),
        ("stats", one::<Stats>()),
        ("worker_status", one::<WorkerStatus>()),
        ("answer", one::<Asked>()),
        ("server", one::<Server>()),
        ("discovery", one::<super::discovery::EntityConfig>()),
    ]);
    all
}

pub fn to_bytes(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}
