//! `moonwatch run`: the camera, the engine and the broker joined into a service.
//!
//! [`core::Core`] decides; this module only carries its decisions out. One async task (the
//! executor) owns the camera, the engine handle and the broker connection's command
//! channel, turns every event (broker, engine, tick, signal, save, model load) into a
//! [`core::Input`], and performs the [`core::Act`]s the core returns. Nothing in the
//! executor awaits the broker: publishes go to the connection task's outbox, so a burst
//! or an outage never stalls ticks, the watchdog or signals.

pub mod core;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::core::{Act, CameraView, Core, Input, Notify, Now, Picture, REQUEST_IMAGE_SIDE};
use crate::camera::Camera;
use crate::config::Config;
use crate::frame::Frame;
use crate::mqtt::topics::Topics;
use crate::mqtt::{Command, Connection, MqttEvent};
use crate::vision::{moondream, Cancel, Engine, EngineError, Request, Response};
use crate::zone::Zone;

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

/// How long the connection may take to flush replies and `offline` on shutdown.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);
/// JPEG quality of the snapshots the daemon publishes.
const SNAPSHOT_QUALITY: u8 = 85;
/// JPEG quality of a pool job's picture.
const JOB_QUALITY: u8 = 90;

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

/// What an engine job gives back: its result, and the whole picture.
type JobResult = (Result<Response, EngineError>, Option<Arc<Frame>>);

pub struct Daemon {
    core: Core,
    config_path: PathBuf,
    conn: Connection,
    events: mpsc::UnboundedReceiver<MqttEvent>,
    /// This node's model; `None` on a camera node that only hands jobs to the pool.
    engine: Option<Arc<Engine>>,
    /// A model loaded by a reload, waiting for the core to swap it in.
    next_engine: Option<Engine>,
    /// The cameras, in configuration order (the core's camera indices).
    cameras: Vec<Camera>,
    /// Engine jobs running (one at a time, but for pool jobs no worker answered), with
    /// their cancel flags by job id and their job ids by task.
    jobs: JoinSet<JobResult>,
    cancels: HashMap<u64, Cancel>,
    job_tasks: HashMap<tokio::task::Id, u64>,
    /// Models loaded by a reload arrive here.
    models_tx: mpsc::UnboundedSender<Result<Engine, String>>,
    models: mpsc::UnboundedReceiver<Result<Engine, String>>,
    saves: SaveRequests,
    saved: SaveResults,
    /// JPEGs the core asked for arrive here, encoded on blocking threads.
    encoded_tx: mpsc::UnboundedSender<(u64, Bytes)>,
    encoded: mpsc::UnboundedReceiver<(u64, Bytes)>,
    /// Pool jobs' pictures, prepared on blocking threads.
    pool_pictures_tx: mpsc::UnboundedSender<(u64, PoolPicture)>,
    pool_pictures: mpsc::UnboundedReceiver<(u64, PoolPicture)>,
}

/// A pool job's JPEG and whole picture, or why there is none.
type PoolPicture = Result<(Bytes, Arc<Frame>), EngineError>;

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Loads the model, starts the camera and connects to the broker.
    pub async fn start(cfg: Config, config_path: PathBuf) -> Result<Self, DaemonError> {
        let device_id = if cfg.mqtt.device_id.is_empty() {
            default_device_id()
        } else {
            cfg.mqtt.device_id.clone()
        };
        let topics = Topics::new(&cfg.mqtt, &device_id);
        let double = crate::vision::double::from_env()?;
        let engine = if let (true, Some(cost)) = (cfg.has_model(), double) {
            tracing::warn!(
                "{} is set: a TEST DOUBLE answers every job after {cost:?} (no model is loaded)",
                crate::vision::double::ENV
            );
            let depth = cfg.model.queue_depth as usize;
            Some(Arc::new(crate::vision::double::Sleeper::start(
                cost, depth,
            )?))
        } else if cfg.has_model() {
            let settings = moondream::Settings::from_config(&cfg);
            let engine = tokio::task::spawn_blocking(move || moondream::start(settings))
                .await
                .map_err(|e| DaemonError::Setup(e.to_string()))??;
            Some(Arc::new(engine))
        } else {
            tracing::info!("no model here: every job goes to the pool");
            None
        };
        let specs = cfg.cameras(&device_id);
        let mut cameras = Vec::new();
        for spec in &specs {
            let camera = Camera::start(&spec.config).map_err(|e| {
                DaemonError::Setup(format!(
                    "cannot start the thread of camera {}: {e}",
                    spec.id
                ))
            })?;
            cameras.push(camera);
        }
        let client_id = if cfg.mqtt.client_id.is_empty() {
            format!("moonwatch-{device_id}")
        } else {
            cfg.mqtt.client_id.clone()
        };
        let mut spec = crate::mqtt::connect_spec(&cfg.mqtt, client_id, topics.availability())
            .map_err(DaemonError::Setup)?;
        if cfg.pool.serve && specs.is_empty() {
            spec.session_expiry = 0;
        }
        let state_dir = cfg.daemon.state_dir.clone();
        let (mut runtime, mut problems) = (Vec::new(), Vec::new());
        for spec in &specs {
            let loaded = store::load(&state_dir, &spec.store);
            if let Some(p) = loaded.problem {
                tracing::error!("{p}");
                problems.push(p);
            }
            runtime.push(loaded.triggers);
        }
        let bases: Vec<String> = specs
            .iter()
            .map(|s| format!("{}/{}", cfg.mqtt.prefix, s.id))
            .collect();
        tracing::info!(device = %device_id, cameras = ?bases, "moonwatch running");
        let mqtt = cfg.mqtt.clone();
        let core = Core::new(
            cfg,
            &device_id,
            runtime,
            problems,
            sd_notify::watchdog_enabled(),
            read_clock(),
        );
        let (conn, events) = crate::mqtt::start(&mqtt, spec, core.subscriptions());
        let (saves, saved) = saver(state_dir);
        let (encoded_tx, encoded) = mpsc::unbounded_channel();
        let (pool_pictures_tx, pool_pictures) = mpsc::unbounded_channel();
        let (models_tx, models) = mpsc::unbounded_channel();
        Ok(Self {
            core,
            config_path,
            conn,
            events,
            engine,
            next_engine: None,
            cameras,
            jobs: JoinSet::new(),
            cancels: HashMap::new(),
            job_tasks: HashMap::new(),
            models_tx,
            models,
            saves,
            saved,
            encoded_tx,
            encoded,
            pool_pictures_tx,
            pool_pictures,
        })
    }

    /// Runs until a stop signal has been carried out: every request received is answered
    /// and the replies and `offline` are flushed (at most [`FLUSH_WITHIN`]).
    pub async fn run(mut self, mut signals: mpsc::Receiver<Signal>) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut signals_open = true;
        loop {
            let input = tokio::select! {
                Some(ev) = self.events.recv() => Input::Mqtt(ev),
                Some(joined) = self.jobs.join_next_with_id() => {
                    let (task, (result, frame)) = match joined {
                        Ok(done) => done,
                        Err(e) => (
                            e.id(),
                            (Err(EngineError::Inference(format!("the job's task failed: {e}"))), None),
                        ),
                    };
                    let job = self.job_tasks.remove(&task).unwrap_or(0);
                    self.cancels.remove(&job);
                    Input::EngineDone { job, result, frame }
                }
                Some((job, result)) = self.pool_pictures.recv() => Input::PoolPicture { job, result },
                _ = tick.tick() => Input::Tick,
                sig = signals.recv(), if signals_open => match sig {
                    Some(Signal::Reload) => Input::Reload(
                        Config::load(&self.config_path).map(Box::new).map_err(|e| e.to_string()),
                    ),
                    Some(Signal::Stop) => Input::Stop,
                    None => {
                        signals_open = false;
                        Input::Stop
                    }
                },
                Some((save, result)) = self.saved.recv() => Input::Saved { save, result },
                Some((id, jpeg)) = self.encoded.recv() => Input::Encoded { id, jpeg },
                Some(loaded) = self.models.recv() => match loaded {
                    Ok(engine) => {
                        self.next_engine = Some(engine);
                        Input::ModelLoaded(Ok(()))
                    }
                    Err(e) => Input::ModelLoaded(Err(e)),
                },
            };
            if self.step(input) {
                break;
            }
        }
        self.conn.shutdown(FLUSH_WITHIN).await;
        tracing::info!("stopped");
    }

    /// Feeds one input to the core and carries out what it decides; true once it says
    /// to exit.
    fn step(&mut self, input: Input) -> bool {
        let mut exit = false;
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            let world = core::World {
                cameras: self
                    .cameras
                    .iter()
                    .map(|c| CameraView {
                        latest: c.latest(),
                        status: c.status(),
                    })
                    .collect(),
                outbox: Some(self.conn.stats()),
            };
            for act in self.core.handle(read_clock(), &world, input) {
                match act {
                    Act::Publish(m) => self.conn.publish(m),
                    Act::Ack(t) => self.conn.send(Command::Ack(t)),
                    Act::Encode { id, frame, drawing } => {
                        let tx = self.encoded_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let jpeg = match drawing {
                                Some(d) => crate::annotate::annotated_jpeg(
                                    &frame, &d.answer, &d.object, d.zone,
                                ),
                                None => frame.to_jpeg(SNAPSHOT_QUALITY),
                            };
                            let _ = tx.send((id, Bytes::from(jpeg)));
                        });
                    }
                    Act::Submit {
                        job,
                        picture,
                        zone,
                        skills,
                    } => self.submit(job, picture, zone, skills),
                    Act::PoolPicture {
                        job,
                        picture,
                        zone,
                        side,
                    } => {
                        let tx = self.pool_pictures_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let _ = tx.send((job, pool_picture(picture, zone, side)));
                        });
                    }
                    Act::Cancel { job } => {
                        if let Some(c) = self.cancels.get(&job) {
                            c.cancel();
                        }
                    }
                    Act::Save {
                        save,
                        store,
                        triggers,
                    } => {
                        if self.saves.send((save, store, triggers)).is_err() {
                            inputs.push(Input::Saved {
                                save,
                                result: Err("the save task ended".into()),
                            });
                        }
                    }
                    Act::Notify(n) => notify(&n),
                    Act::LoadModel(cfg) => {
                        let settings = moondream::Settings::from_config(&cfg);
                        let tx = self.models_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let _ = tx.send(moondream::start(settings).map_err(|e| e.to_string()));
                        });
                    }
                    Act::UseNewModel => {
                        if let Some(new) = self.next_engine.take() {
                            let old = self.engine.replace(Arc::new(new));
                            // Joining the old worker thread may take a moment.
                            tokio::task::spawn_blocking(move || drop(old));
                            tracing::info!("the new model serves from now on");
                        }
                    }
                    Act::RestartCamera(i, c) => match Camera::start(&c) {
                        Ok(cam) => {
                            if let Some(slot) = self.cameras.get_mut(i) {
                                let old = std::mem::replace(slot, cam);
                                tokio::task::spawn_blocking(move || old.stop());
                            }
                        }
                        Err(e) => tracing::error!("cannot restart camera {i}: {e}"),
                    },
                    Act::Exit => exit = true,
                }
            }
        }
        exit
    }

    /// Starts an engine job: a client's image is decoded (and reduced) only now, off the
    /// executor; with a zone, the engine gets the crop and the result comes back with the
    /// whole picture.
    fn submit(
        &mut self,
        id: u64,
        picture: Picture,
        zone: Option<Zone>,
        skills: Vec<crate::vision::Skill>,
    ) {
        let cancel = Cancel::new();
        let engine = self.engine.clone();
        let stop = cancel.clone();
        let task = self.jobs.spawn(async move {
            let (frame, seen) = match tokio::task::spawn_blocking(move || prepare(picture, zone))
                .await
                .unwrap_or_else(|e| Err((EngineError::Image(e.to_string()), None)))
            {
                Ok(p) => p,
                Err((e, frame)) => return (Err(e), frame),
            };
            let Some(engine) = engine else {
                return (Err(EngineError::Stopped), Some(frame));
            };
            let mut req = Request::new(seen, skills);
            req.cancel = stop;
            let result = match engine.submit(req) {
                Ok(ticket) => ticket.await.unwrap_or(Err(EngineError::Stopped)),
                Err(e) => Err(e),
            };
            (result, Some(frame))
        });
        self.cancels.insert(id, cancel);
        self.job_tasks.insert(task.id(), id);
    }
}

/// The whole picture (a client's image decoded, at most [`REQUEST_IMAGE_SIDE`]) and what
/// the engine looks at (its zone's crop, or the whole); or why not, with the whole
/// picture when there is one.
#[allow(clippy::type_complexity)]
fn prepare(
    picture: Picture,
    zone: Option<Zone>,
) -> Result<(Arc<Frame>, Arc<Frame>), (EngineError, Option<Arc<Frame>>)> {
    let frame = match picture {
        Picture::Frame(f) => f,
        Picture::Encoded(bytes) => {
            Frame::decode_bounded(&bytes, "the request's image", REQUEST_IMAGE_SIDE)
                .map(Arc::new)
                .map_err(|e| (EngineError::Image(e.to_string()), None))?
        }
    };
    match zone.map(|z| z.crop(&frame)) {
        None => Ok((frame.clone(), frame)),
        Some(Ok(crop)) => Ok((frame, Arc::new(crop))),
        Some(Err(e)) => Err((EngineError::Image(e.to_string()), Some(frame))),
    }
}

/// A pool job's picture: what the engine would look at, stretched to the model's input
/// square (nothing is sent that the worker would throw away) or whole (`side` `None`, for
/// workers that cut it into the reference's crops), JPEG-encoded, with the whole picture.
fn pool_picture(picture: Picture, zone: Option<Zone>, side: Option<u32>) -> PoolPicture {
    let (frame, seen) = prepare(picture, zone).map_err(|(e, _)| e)?;
    let stretched =
        side.and_then(|side| Frame::from_rgb(side, side, seen.stretched(side, side)).ok());
    let jpeg = stretched.as_ref().unwrap_or(&seen).to_jpeg(JOB_QUALITY);
    Ok((Bytes::from(jpeg), frame))
}

/// The time for the core: the executor reads the clocks, the core never does.
fn read_clock() -> Now {
    Now {
        mono: std::time::Instant::now(),
        unix: core::unix(std::time::SystemTime::now()),
    }
}

fn notify(n: &Notify) {
    let state = match n {
        Notify::Ready => sd_notify::NotifyState::Ready,
        Notify::Reloading => sd_notify::NotifyState::Reloading,
        Notify::Stopping => sd_notify::NotifyState::Stopping,
        Notify::Watchdog => sd_notify::NotifyState::Watchdog,
        Notify::Status(s) => sd_notify::NotifyState::Status(s),
    };
    let _ = sd_notify::notify(&[state]);
}

/// Saves runtime triggers one after another (never two at once, never on the executor).
type SaveRequests = mpsc::UnboundedSender<(u64, String, store::RuntimeTriggers)>;
type SaveResults = mpsc::UnboundedReceiver<(u64, Result<(), String>)>;

fn saver(dir: PathBuf) -> (SaveRequests, SaveResults) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, String, store::RuntimeTriggers)>();
    let (done_tx, done) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((save, file, triggers)) = rx.recv().await {
            let dir = dir.clone();
            let result = tokio::task::spawn_blocking(move || {
                store::save(&dir, &file, &triggers).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            if done_tx.send((save, result)).is_err() {
                break;
            }
        }
    });
    (tx, done)
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
        let daemon = Daemon::start(cfg, config_path).await?;
        daemon.run(signals).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
