//! A camera node's side of the pool (`pool.offload`): how many jobs are out at once, which
//! worker takes each, when a job is sent again, which workers are avoided, and when a job
//! runs on this node's own model instead. Decides only: the core publishes what this
//! returns, and the executor encodes each job's picture ([`Act::PoolPicture`]).
//!
//! A job is an ordinary skill request (`docs/mqtt-api.md`) with the picture it is about,
//! a Response Topic of this node's own (`{prefix}/{device_id}/pool/reply`), the attempt's
//! id as Correlation Data and `pool.job_timeout` as Message Expiry. Workers publish a
//! retained heartbeat on `{prefix}/pool/worker/{id}` every [`HEARTBEAT`] (slots, queue,
//! jobs served), so this node knows who is alive and how busy. Each attempt goes on the
//! direct topic `{prefix}/pool/direct/{worker}/request/{skill}` of a healthy worker with
//! room: the one that has the picture cached if it has a free slot, else the one holding
//! fewest of this node's jobs (then the shortest queue, then the one sent to least
//! recently). The shared subscription `$share/{group}/{prefix}/pool/request/+` takes a
//! job only when no healthy worker is known, as the broker's round robin knows nothing of
//! load or health. A worker is suspect, and avoided, when a job sent to it times out, its
//! heartbeat stops while it is still subscribed (a stalled process), or it reports work
//! without finishing any for a job_timeout; it is trusted again when it answers or
//! reports an empty queue. An attempt answered `busy` or timed out is sent again to
//! another worker (up to `pool.attempts`), then runs on this node's model if it has one.
//! Results are matched by attempt id: the first answer wins, a late or duplicate one is
//! counted and ignored.

use base64::Engine as _;

use super::*;

mod workers;
use crate::mqtt::requests::Request;
use crate::mqtt::wire::{response_of, Outcome as ReplyOutcome, PoolStats, Status, WorkerStatus};
use workers::{Worker, FORGET_AFTER};

/// How often a worker publishes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A job answered `busy` by every worker is sent again after this pause.
const BUSY_PAUSE: Duration = Duration::from_millis(250);
/// How long health reports a job lost on the shared subscription.
const SHARE_DISTRUST: Duration = Duration::from_secs(600);
/// The side of the picture sent with a job: the model's input (Moondream2 stretches every
/// picture to 378x378), so nothing is sent that the worker would throw away.
pub const JOB_SIDE: u32 = 378;

#[derive(Debug)]
struct Attempt {
    id: String,
    /// The worker it went to; `None`: the shared subscription.
    to: Option<String>,
    sent: Instant,
}

#[derive(Debug)]
struct Job {
    skill: Skill,
    zone: Option<Zone>,
    /// The whole picture (the job's result carries it; a local run needs it).
    frame: Option<Arc<Frame>>,
    /// The request, once its picture is encoded, and its name (the topic's last level).
    payload: Option<Bytes>,
    name: &'static str,
    /// A hash of the picture sent (follow-ups on it go to the worker that has it cached).
    picture: u64,
    attempts: u32,
    current: Option<Attempt>,
    /// Answered `busy` everywhere: the next attempt waits until then.
    retry_at: Option<Instant>,
    /// Where the last attempt went (the next one avoids it).
    last_worker: Option<String>,
    started: Instant,
}

/// What became of a job.
#[derive(Debug)]
pub(super) enum Outcome {
    /// A worker answered, or no attempt can: `worker` names who answered.
    Done {
        job: u64,
        result: Result<Response, EngineError>,
        frame: Option<Arc<Frame>>,
        worker: Option<String>,
    },
    /// No worker answered in `pool.attempts`: run it on this node's model.
    RunHere {
        job: u64,
        frame: Arc<Frame>,
        zone: Option<Zone>,
        skill: Skill,
    },
}

/// The pool client's state.
#[derive(Debug)]
pub(super) struct Offload {
    /// `{prefix}/pool`
    base: String,
    group: String,
    reply_topic: String,
    /// Prefix of this node's attempt ids (unique per run).
    run: String,
    timeout: Duration,
    attempts: u32,
    max_in_flight: usize,
    local_model: bool,
    workers: BTreeMap<String, Worker>,
    jobs: BTreeMap<u64, Job>,
    /// Attempt id to job.
    attempts_out: HashMap<String, u64>,
    /// The picture last answered and the worker that has it cached.
    affinity: Option<(u64, String)>,
    stats: PoolStats,
    /// When a job sent to the share was last lost while every known worker was idle.
    share_lost: Option<Instant>,
}

/// Where the results of node `device_id`'s jobs arrive.
fn reply_topic(prefix: &str, device_id: &str) -> String {
    format!("{prefix}/{device_id}/pool/reply")
}

impl Offload {
    pub(super) fn new(cfg: &Config, device_id: &str, now: Now) -> Self {
        let p = &cfg.pool;
        Self {
            base: format!("{}/pool", cfg.mqtt.prefix),
            group: p.group.clone(),
            reply_topic: reply_topic(&cfg.mqtt.prefix, device_id),
            run: format!("{device_id}-{:x}", (now.unix * 1e3) as u64),
            timeout: Duration::from_secs(p.job_timeout.max(1)),
            attempts: p.attempts.max(1),
            max_in_flight: p.max_in_flight.max(1) as usize,
            local_model: cfg.has_model(),
            workers: BTreeMap::new(),
            jobs: BTreeMap::new(),
            attempts_out: HashMap::new(),
            affinity: None,
            stats: PoolStats::default(),
            share_lost: None,
        }
    }

    /// This node's results and the workers' heartbeats.
    pub(super) fn subscriptions(&self) -> Vec<String> {
        vec![self.reply_topic.clone(), format!("{}/worker/+", self.base)]
    }

    /// A worker id, if `topic` is a heartbeat's.
    fn heartbeat_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(&self.base)
            .and_then(|t| t.strip_prefix("/worker/"))
            .filter(|w| !w.is_empty() && !w.contains('/'))
    }

    /// Whether the message is the pool client's (a result, a heartbeat).
    pub(super) fn takes(&self, topic: &str) -> bool {
        topic == self.reply_topic || self.heartbeat_of(topic).is_some()
    }

    /// Whether a job can be sent at all: some worker's heartbeat is fresh.
    pub(super) fn reachable(&self, now: Now) -> bool {
        self.live_count(now) > 0
    }

    /// Jobs this node keeps out at once: the healthy workers' slots (one job each runs,
    /// none waits in a worker's queue behind another, so this node's own order holds),
    /// one while only suspect workers are left, at most `pool.max_in_flight`.
    pub(super) fn window(&self, now: Now) -> usize {
        let slots: usize = self
            .workers
            .values()
            .filter(|w| w.healthy(now))
            .map(Worker::slots)
            .sum();
        let slots = if slots == 0 && self.reachable(now) {
            1
        } else {
            slots
        };
        slots.min(self.max_in_flight)
    }

    /// The side a job's picture is stretched to before it is sent: the model's input
    /// (378), or `None` (the whole picture) while a live worker says its model cuts whole
    /// pictures into the reference's crops. A worker of either kind takes either picture.
    pub(super) fn picture_side(&self, now: Now) -> Option<u32> {
        let full = self
            .workers
            .values()
            .any(|w| w.live(now) && w.status.full_pictures);
        (!full).then_some(JOB_SIDE)
    }

    /// Whether another job may go out now.
    pub(super) fn has_room(&self, now: Now) -> bool {
        self.jobs.len() < self.window(now)
    }

    /// Takes job `job`; its picture is being encoded ([`Offload::picture`] follows).
    pub(super) fn start(&mut self, now: Now, job: u64, skill: Skill, zone: Option<Zone>) {
        self.jobs.insert(
            job,
            Job {
                skill,
                zone,
                frame: None,
                payload: None,
                name: "",
                picture: 0,
                attempts: 0,
                current: None,
                retry_at: None,
                last_worker: None,
                started: now.mono,
            },
        );
    }

    /// Job `job`'s picture is encoded (the JPEG sent and the whole frame): its first
    /// attempt goes out.
    pub(super) fn picture(
        &mut self,
        now: Now,
        job: u64,
        encoded: Result<(Bytes, Arc<Frame>), EngineError>,
        out: &mut Vec<Act>,
    ) -> Option<Outcome> {
        let j = self.jobs.get_mut(&job)?;
        let (jpeg, frame) = match encoded {
            Ok(e) => e,
            Err(e) => {
                let j = self.jobs.remove(&job)?;
                return Some(Outcome::Done {
                    job,
                    result: Err(e),
                    frame: j.frame,
                    worker: None,
                });
            }
        };
        let image = base64::engine::general_purpose::STANDARD.encode(&jpeg);
        let request = Request::skill(&j.skill, Some(image));
        j.name = request.name();
        j.payload = Some(Bytes::from(request.body().to_string()));
        j.picture = xxhash_rust::xxh3::xxh3_64(&jpeg);
        j.frame = Some(frame);
        self.send(now, job, out)
    }

    /// Where job attempts go now: a healthy worker with room (`None`: the share).
    fn choose(&self, now: Now, picture: u64, avoid: Option<&str>) -> Option<String> {
        let candidates = || {
            self.workers
                .iter()
                .filter(move |(id, w)| w.healthy(now) && Some(id.as_str()) != avoid)
        };
        // The next job on a picture goes to the worker that has it cached (one encode per
        // frame, as on a local engine), while it has a free slot.
        if let Some((_, id)) = self.affinity.as_ref().filter(|(p, _)| *p == picture) {
            if candidates().any(|(w, s)| w == id && s.room() > 0) {
                return Some(id.clone());
            }
        }
        candidates()
            .min_by_key(|(_, w)| (w.holds, w.status.queue_depth, w.last_sent))
            .map(|(id, _)| id.clone())
    }

    /// Sends job `job`'s next attempt, or gives it up after `pool.attempts`.
    fn send(&mut self, now: Now, job: u64, out: &mut Vec<Act>) -> Option<Outcome> {
        let j = self.jobs.get(&job)?;
        if j.attempts >= self.attempts {
            return Some(self.give_up(job));
        }
        let (picture, avoid) = (j.picture, j.last_worker.clone());
        let to = self.choose(now, picture, avoid.as_deref());
        let j = self.jobs.get_mut(&job)?;
        let payload = j.payload.clone()?;
        j.attempts += 1;
        j.retry_at = None;
        let id = format!("{}-{job}-{}", self.run, j.attempts);
        self.stats.sent += 1;
        if j.attempts > 1 {
            self.stats.retries += 1;
        }
        let name = j.name;
        let topic = match &to {
            Some(w) => {
                self.stats.direct += 1;
                format!("{}/direct/{w}/request/{name}", self.base)
            }
            None => {
                self.stats.shared += 1;
                format!("{}/request/{name}", self.base)
            }
        };
        j.current = Some(Attempt {
            id: id.clone(),
            to: to.clone(),
            sent: now.mono,
        });
        j.last_worker = to.clone();
        if let Some(w) = to.as_ref().and_then(|w| self.workers.get_mut(w)) {
            w.holds += 1;
            w.last_sent = Some(now.mono);
        }
        self.attempts_out.insert(id.clone(), job);
        let mut m = Outgoing::new(topic, payload, Class::Reply);
        m.correlation = Some(Bytes::from(id));
        m.response_topic = Some(self.reply_topic.clone());
        m.expiry = Some(self.timeout.as_secs().clamp(1, u64::from(u32::MAX)) as u32);
        out.push(Act::Publish(m));
        None
    }

    /// No attempt was answered: this node's model runs it, or it fails.
    fn give_up(&mut self, job: u64) -> Outcome {
        let j = self.jobs.remove(&job);
        match j {
            Some(Job {
                frame: Some(frame),
                zone,
                skill,
                ..
            }) if self.local_model => {
                self.stats.local += 1;
                Outcome::RunHere {
                    job,
                    frame,
                    zone,
                    skill,
                }
            }
            j => {
                self.stats.failed += 1;
                Outcome::Done {
                    job,
                    result: Err(EngineError::Inference(format!(
                        "no pool worker answered ({} attempts of {} s) and this node has no model",
                        self.attempts,
                        self.timeout.as_secs()
                    ))),
                    frame: j.and_then(|j| j.frame),
                    worker: None,
                }
            }
        }
    }

    /// Ends the attempt `id` is of, if it is still out: its job.
    fn end_attempt(&mut self, id: &str) -> Option<u64> {
        let job = self.attempts_out.remove(id)?;
        let j = self.jobs.get_mut(&job)?;
        let a = j.current.take_if(|a| a.id == id)?;
        if let Some(w) = a.to.and_then(|w| self.workers.get_mut(&w)) {
            w.holds = w.holds.saturating_sub(1);
        }
        Some(job)
    }

    /// A result or a heartbeat.
    pub(super) fn on_message(
        &mut self,
        now: Now,
        m: &Incoming,
        out: &mut Vec<Act>,
    ) -> Option<Outcome> {
        if let Some(id) = self.heartbeat_of(&m.topic) {
            let id = id.to_owned();
            self.on_heartbeat(now, id, &m.payload);
            return None;
        }
        let id = m
            .correlation
            .as_deref()
            .map(|c| String::from_utf8_lossy(c).into_owned());
        let reply = match serde_json::from_slice::<wire::Reply>(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("a pool result that is not a reply: {e}");
                return None;
            }
        };
        // Whoever answers is alive and working: trusted again.
        if let Some(w) = reply.worker.as_ref().and_then(|w| self.workers.get_mut(w)) {
            w.progress = now.mono;
            if w.suspect.take().is_some() {
                tracing::info!(worker = ?reply.worker, "pool worker answers again");
            }
        }
        let Some(job) = id.and_then(|id| self.end_attempt(&id)) else {
            self.stats.late += 1;
            tracing::debug!("a pool result for a job already answered (ignored)");
            return None;
        };
        let worker = reply.worker.clone();
        if let Some(w) = worker.as_ref().and_then(|w| self.workers.get_mut(w)) {
            w.answered += 1;
        }
        let picture = self.jobs.get(&job).map_or(0, |j| j.picture);
        if let (Status::Ok, Some(w)) = (reply.status, &worker) {
            self.affinity = Some((picture, w.clone()));
        }
        match reply.outcome() {
            ReplyOutcome::Answer(a) => {
                let j = self.jobs.remove(&job)?;
                let mut r = response_of(vec![*a]);
                r.total_ms = now.mono.duration_since(j.started).as_secs_f64() * 1e3;
                Some(Outcome::Done {
                    job,
                    result: Ok(r),
                    frame: j.frame,
                    worker,
                })
            }
            ReplyOutcome::Error(e)
                if matches!(e.code, Code::Busy | Code::ShuttingDown | Code::Timeout) =>
            {
                // That worker is full or leaving: another may take it now; with none, a
                // moment later.
                let j = self.jobs.get_mut(&job)?;
                // The next attempt avoids it (one sent to the share learns who it was).
                if worker.is_some() {
                    j.last_worker = worker.clone();
                }
                let picture = j.picture;
                if self.choose(now, picture, worker.as_deref()).is_some() {
                    return self.send(now, job, out);
                }
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.retry_at = Some(now.mono + BUSY_PAUSE);
                }
                None
            }
            ReplyOutcome::Error(e) => {
                let j = self.jobs.remove(&job)?;
                let e = match e.code {
                    Code::BadImage => EngineError::Image(e.message),
                    Code::BadRequest => EngineError::Invalid(e.message),
                    _ => EngineError::Inference(e.message),
                };
                Some(Outcome::Done {
                    job,
                    result: Err(e),
                    frame: j.frame,
                    worker,
                })
            }
            ReplyOutcome::NoAnswer => self.send(now, job, out),
        }
    }

    /// Timeouts, and jobs waiting out a busy pause.
    pub(super) fn tick(&mut self, now: Now, out: &mut Vec<Act>) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        let ids: Vec<u64> = self.jobs.keys().copied().collect();
        for job in ids {
            let Some(j) = self.jobs.get(&job) else {
                continue;
            };
            if j.retry_at.is_some_and(|t| now.mono >= t) {
                outcomes.extend(self.send(now, job, out));
                continue;
            }
            let Some(a) = j.current.as_ref() else {
                continue;
            };
            if now.mono.duration_since(a.sent) < self.timeout {
                continue;
            }
            let (id, to, sent) = (a.id.clone(), a.to.clone(), a.sent);
            self.end_attempt(&id);
            self.stats.timeouts += 1;
            match to {
                Some(w) => self.suspect(
                    &w,
                    format!(
                        "a job sent to it was not answered in {} s",
                        self.timeout.as_secs()
                    ),
                ),
                None => self.share_timed_out(now, sent),
            }
            tracing::warn!(job, "no pool worker answered in {:?}", self.timeout);
            outcomes.extend(self.send(now, job, out));
        }
        // A worker gone for long, holding nothing, is forgotten.
        self.workers
            .retain(|_, w| w.holds > 0 || now.mono.duration_since(w.seen) < FORGET_AFTER);
        // A worker whose heartbeat stopped while it holds jobs is avoided at once.
        for (id, w) in &mut self.workers {
            if !w.on_time(now) && w.holds > 0 && w.suspect.is_none() && w.status.online {
                tracing::warn!(worker = %id, "pool worker avoided: its heartbeat stopped");
                w.suspect = Some("its heartbeat stopped while it held jobs".into());
            }
        }
        outcomes
    }

    /// Drops job `job` (cancelled): a result for it is late.
    pub(super) fn cancel(&mut self, job: u64) -> Option<Arc<Frame>> {
        let j = self.jobs.get(&job)?;
        if let Some(id) = j.current.as_ref().map(|a| a.id.clone()) {
            self.end_attempt(&id);
        }
        self.jobs.remove(&job).and_then(|j| j.frame)
    }
}
