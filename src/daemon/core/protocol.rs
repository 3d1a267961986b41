//! What the core takes and returns: the time, what each camera shows, inputs and acts.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::camera::CameraStatus;
use crate::config::{CameraConfig, Config};
use crate::daemon::store::RuntimeTriggers;
use crate::frame::Frame;
use crate::mqtt::{AckToken, MqttEvent, OutboxStats, Outgoing};
use crate::vision::{EngineError, Response, Skill};
use crate::zone::Zone;

/// The time, as the executor read it.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    /// Unix seconds.
    pub unix: f64,
}

impl Now {
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
    pub(super) fn absent() -> Self {
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
    /// The outbox as the connection task counts it (`None`: as last seen).
    fn outbox(&self) -> Option<OutboxStats> {
        None
    }
}

/// What the executor sees with each input: the cameras and the outbox. The core takes
/// outside state only this way.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub cameras: Vec<CameraView>,
    pub outbox: Option<OutboxStats>,
}

impl Views for World {
    fn views(&self) -> &[CameraView] {
        &self.cameras
    }
    fn outbox(&self) -> Option<OutboxStats> {
        self.outbox
    }
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
    /// The JPEG an [`Act::Encode`] asked for.
    Encoded {
        id: u64,
        jpeg: Bytes,
    },
    /// The picture of pool job `job` as [`Act::PoolPicture`] asked for: the JPEG to send
    /// and the whole picture (decoded, for a client's image), or why there is none.
    PoolPicture {
        job: u64,
        result: Result<(Bytes, Arc<Frame>), EngineError>,
    },
}

/// Boxes or points to draw on a picture: a detection's answer, its label, the zone looked
/// at (outlined).
#[derive(Debug, Clone)]
pub struct Drawing {
    pub answer: crate::vision::Answer,
    pub object: String,
    pub zone: Option<Zone>,
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
    /// Encode `frame` as JPEG (with `drawing` on it) off the core's loop and hand it back
    /// as [`Input::Encoded`].
    Encode {
        id: u64,
        frame: Arc<Frame>,
        drawing: Option<Box<Drawing>>,
    },
    /// Run `skills` on `picture`, or on its `zone` when one is given (the executor
    /// crops; `EngineDone` brings back the whole picture).
    Submit {
        job: u64,
        picture: Picture,
        zone: Option<Zone>,
        skills: Vec<Skill>,
    },
    /// Prepare pool job `job`'s picture off the core's loop: decode a client's image,
    /// crop the zone, stretch to `side` x `side` (the model's input; `None`: keep it
    /// whole, for workers that cut it into the reference's crops) and JPEG-encode it;
    /// hand it back as [`Input::PoolPicture`].
    PoolPicture {
        job: u64,
        picture: Picture,
        zone: Option<Zone>,
        side: Option<u32>,
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

/// systemd notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    Ready,
    Reloading,
    Stopping,
    Watchdog,
    Status(String),
}
