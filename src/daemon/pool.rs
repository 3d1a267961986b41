//! A camera node's side of the pool: engine jobs handed to workers through the broker.
//!
//! A job is an ordinary skill request (`docs/mqtt-api.md`) published to
//! `{prefix}/pool/request/{skill}` with the picture it is about (the frame, or its zone,
//! stretched to the model's 378x378 input and JPEG-encoded), a Response Topic of this
//! node's own (`{prefix}/{device_id}/pool/reply`), the job's id as Correlation Data and its
//! deadline as Message Expiry. Workers take jobs through the shared subscription
//! `$share/{group}/{prefix}/pool/request/+`, so the broker spreads them. A job that is not
//! answered within `pool.job_timeout`, or answered `busy`, is sent again (up to
//! `pool.attempts`), then runs on this node's model if it has one. Results are matched by
//! job id: the first answer wins, a late or duplicate one is counted and ignored. Workers'
//! retained heartbeats (`{prefix}/pool/worker/{id}`) say who is alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::frame::Frame;
use crate::mqtt::api::Code;
use crate::mqtt::requests::Request;
use crate::mqtt::wire::{self, response_of, Outcome, PoolStats, Status, WorkerStatus};
use crate::mqtt::{Class, Incoming, Outgoing, Publisher};
use crate::vision::{EngineError, Response, Skill};

/// The side of the picture sent with a job: the model's input (Moondream2 stretches every
/// picture to 378x378), so nothing is sent that the worker would throw away.
pub const JOB_SIDE: u32 = 378;
/// JPEG quality of a job's picture.
const JOB_QUALITY: u8 = 90;
/// A busy worker's job is sent again after this pause.
const BUSY_PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct Inner {
    /// Jobs waiting for their result, by correlation id.
    waiting: HashMap<String, oneshot::Sender<wire::Reply>>,
    /// Workers by id: when their last heartbeat came, and what it said.
    workers: HashMap<String, (Instant, WorkerStatus)>,
    stats: PoolStats,
    /// The picture of the last job answered (a hash of its JPEG) and the worker that has
    /// it cached.
    affinity: Option<(u64, String)>,
}

/// The pool client: cheap to clone into job futures.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Mutex<Inner>>,
    publisher: Publisher,
    /// `{prefix}/pool`
    base: String,
    reply_topic: String,
    timeout: Duration,
    attempts: u32,
    /// Prefix of this node's correlation ids (unique per run).
    run: String,
}

/// Why a pool job did not produce an answer.
#[derive(Debug)]
pub enum PoolFailure {
    /// No worker answered in time, in every attempt: run it here if possible.
    NoAnswer,
    /// A worker answered with an error that another attempt would not change.
    Engine(EngineError),
}

/// Where the results of node `device_id`'s jobs arrive.
fn reply_topic(prefix: &str, device_id: &str) -> String {
    format!("{prefix}/{device_id}/pool/reply")
}

impl Pool {
    /// What node `device_id` subscribes to for the pool: its results and the workers'
    /// heartbeats. (The connection needs them before the pool client has its publisher.)
    pub fn subscriptions(prefix: &str, device_id: &str) -> Vec<String> {
        vec![
            reply_topic(prefix, device_id),
            format!("{prefix}/pool/worker/+"),
        ]
    }

    pub fn new(
        cfg: &crate::config::PoolConfig,
        prefix: &str,
        device_id: &str,
        publisher: Publisher,
    ) -> Self {
        let run = format!(
            "{device_id}-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        Self {
            inner: Arc::default(),
            publisher,
            base: format!("{prefix}/pool"),
            reply_topic: reply_topic(prefix, device_id),
            timeout: Duration::from_secs(cfg.job_timeout),
            attempts: cfg.attempts,
            run,
        }
    }

    /// The shared state (a panic elsewhere while holding it leaves it usable).
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a message that is the pool's (a result, a heartbeat); gives back any other.
    pub fn take(&self, m: Incoming) -> Option<Incoming> {
        if m.topic == self.reply_topic {
            self.on_result(&m);
            return None;
        }
        let worker = m
            .topic
            .strip_prefix(&self.base)
            .and_then(|t| t.strip_prefix("/worker/"))
            .filter(|w| !w.contains('/'));
        match worker {
            Some(id) => {
                let mut inner = self.inner();
                match serde_json::from_slice::<WorkerStatus>(&m.payload) {
                    Ok(s) => {
                        inner.workers.insert(id.to_owned(), (Instant::now(), s));
                    }
                    // An empty retained message clears a worker.
                    Err(_) => {
                        inner.workers.remove(id);
                    }
                }
                None
            }
            None => Some(m),
        }
    }

    fn on_result(&self, m: &Incoming) {
        let id = m
            .correlation
            .as_deref()
            .map(|c| String::from_utf8_lossy(c).into_owned());
        let reply = serde_json::from_slice::<wire::Reply>(&m.payload);
        let mut inner = self.inner();
        match (id.and_then(|id| inner.waiting.remove(&id)), reply) {
            (Some(tx), Ok(r)) => {
                let _ = tx.send(r);
            }
            (Some(_), Err(e)) => tracing::warn!("a pool result that is not a reply: {e}"),
            (None, _) => {
                inner.stats.late += 1;
                tracing::debug!("a pool result for a job already answered (ignored)");
            }
        }
    }

    /// The pool's figures, with the workers whose heartbeat is fresh.
    pub fn stats(&self) -> PoolStats {
        let inner = self.inner();
        let mut s = inner.stats;
        s.workers = inner
            .workers
            .values()
            .filter(|(seen, w)| {
                let limit = Duration::from_secs(w.interval_s.max(1) * 3 + 5);
                w.online && seen.elapsed() <= limit
            })
            .count();
        s
    }

    pub fn count_local(&self) {
        self.inner().stats.local += 1;
    }

    pub fn count_failed(&self) {
        self.inner().stats.failed += 1;
    }

    /// Runs `skill` on `frame` on some worker: the first answer wins. A cancelled job
    /// (its request timed out, or a stop) is not sent again.
    pub async fn run(
        &self,
        job: u64,
        frame: Arc<Frame>,
        skill: Skill,
        cancel: &crate::vision::Cancel,
    ) -> Result<Response, PoolFailure> {
        let started = Instant::now();
        let jpeg = tokio::task::spawn_blocking(move || job_picture(&frame)).await;
        let Ok(jpeg) = jpeg else {
            return Err(PoolFailure::Engine(EngineError::Image(
                "encoding the job's picture failed".into(),
            )));
        };
        let image = base64::engine::general_purpose::STANDARD.encode(&jpeg);
        let request = Request::skill(&skill, Some(image));
        let (name, body) = (request.name(), request.body());
        let picture = xxhash_rust::xxh3::xxh3_64(&jpeg);
        let payload = Bytes::from(body.to_string());
        let shared = format!("{}/request/{name}", self.base);
        let mut attempt = 0;
        while attempt < self.attempts {
            if cancel.is_cancelled() {
                return Err(PoolFailure::Engine(EngineError::Cancelled));
            }
            attempt += 1;
            let id = format!("{}-{job}-{attempt}", self.run);
            let (tx, rx) = oneshot::channel();
            let topic = {
                let mut inner = self.inner();
                inner.waiting.insert(id.clone(), tx);
                inner.stats.sent += 1;
                if attempt > 1 {
                    inner.stats.retries += 1;
                }
                // The next job on a picture goes straight to the worker that has it cached
                // (one encode per frame, as on a local engine); a retry goes to the pool.
                let cached_on = inner
                    .affinity
                    .as_ref()
                    .filter(|(p, _)| *p == picture && attempt == 1)
                    .map(|(_, w)| w.clone());
                match cached_on {
                    Some(w) => {
                        inner.stats.direct += 1;
                        format!("{}/direct/{w}/request/{name}", self.base)
                    }
                    None => shared.clone(),
                }
            };
            let mut m = Outgoing::new(topic.clone(), payload.clone(), Class::Reply);
            m.correlation = Some(Bytes::from(id.clone()));
            m.response_topic = Some(self.reply_topic.clone());
            m.expiry = Some(self.timeout.as_secs().clamp(1, u64::from(u32::MAX)) as u32);
            self.publisher.publish(m);
            let reply = tokio::time::timeout(self.timeout, rx).await;
            // Whatever happens now, a later result for this attempt is late.
            self.inner().waiting.remove(&id);
            let reply = match reply {
                Ok(Ok(r)) => r,
                _ => {
                    tracing::warn!(
                        job,
                        attempt,
                        "no pool worker answered in {:?}",
                        self.timeout
                    );
                    continue;
                }
            };
            if let (Status::Ok, Some(w)) = (reply.status, &reply.worker) {
                self.inner().affinity = Some((picture, w.clone()));
            }
            match reply.outcome() {
                Outcome::Answer(a) => {
                    let mut r = response_of(vec![*a]);
                    r.total_ms = started.elapsed().as_secs_f64() * 1e3;
                    return Ok(r);
                }
                Outcome::Error(e)
                    if matches!(e.code, Code::Busy | Code::ShuttingDown | Code::Timeout) =>
                {
                    // That worker is full or leaving: another may take it.
                    tokio::time::sleep(BUSY_PAUSE).await;
                    continue;
                }
                Outcome::Error(e) => {
                    return Err(PoolFailure::Engine(match e.code {
                        Code::BadImage => EngineError::Image(e.message),
                        Code::BadRequest => EngineError::Invalid(e.message),
                        _ => EngineError::Inference(e.message),
                    }))
                }
                Outcome::NoAnswer => continue,
            }
        }
        Err(PoolFailure::NoAnswer)
    }
}

/// The frame as the model will see it: stretched to its input square, JPEG.
fn job_picture(frame: &Frame) -> Vec<u8> {
    let rgb = frame.stretched(JOB_SIDE, JOB_SIDE);
    match Frame::from_rgb(JOB_SIDE, JOB_SIDE, rgb) {
        Ok(f) => f.to_jpeg(JOB_QUALITY),
        Err(_) => frame.to_jpeg(JOB_QUALITY),
    }
}
