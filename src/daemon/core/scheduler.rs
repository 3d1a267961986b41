//! Scheduling: which jobs start while there is room (interactive requests first, trigger
//! rounds taking turns between cameras, captions last), where each runs (this node's
//! engine, one job at a time, or the pool, as many as its healthy workers have slots), and
//! what a finished job does.

use super::*;

/// What waits for the engine and what runs: the interactive queue, the jobs in flight,
/// the trigger round in progress and whose turn it is.
#[derive(Debug, Default)]
pub(super) struct Scheduler {
    pub(super) queue: VecDeque<Pending>,
    /// By job id.
    pub(super) in_flight: BTreeMap<u64, InFlight>,
    /// Triggers of one camera due together and the frame they are evaluated on.
    pub(super) round: Option<Round>,
    /// The camera whose triggers are looked at first for the next round, and for the
    /// next caption (round robin: one busy camera cannot starve another).
    pub(super) next_round_cam: usize,
    pub(super) next_caption_cam: usize,
    /// Interactive jobs run in a row (see [`INTERACTIVE_BURST`]).
    pub(super) interactive_streak: u32,
}

/// What the scheduler decided about the interactive queue.
#[derive(Debug, Default)]
pub(super) struct Interactive {
    /// The request to start, with its picture.
    pub(super) start: Option<(Pending, Picture)>,
    /// Requests that will never run, with why.
    pub(super) refused: Vec<(Pending, ApiError)>,
}

impl Scheduler {
    /// Requests waiting and jobs running.
    pub(super) fn depth(&self) -> usize {
        self.queue.len() + self.in_flight.len()
    }

    /// Whether this node's engine has a job.
    pub(super) fn local_busy(&self) -> bool {
        self.in_flight.values().any(|f| f.place == Place::Local)
    }

    /// Whether trigger `name` of camera `cam` is being evaluated.
    pub(super) fn evaluating(&self, cam: usize, name: &str) -> bool {
        self.in_flight.values().any(
            |f| matches!(&f.work, Work::Trigger { cam: c, name: n, .. } if *c == cam && n == name),
        )
    }

    /// The oldest interactive request that can run now, with its picture; and the
    /// requests before it that never will, with why (past their deadline, no camera
    /// frame, no engine). A request for a camera still starting waits its grace period
    /// while later ones go ahead. Decides only: the caller starts and answers.
    pub(super) fn next_interactive(
        &mut self,
        now: Now,
        health: &[CameraHealth],
        reachable: bool,
    ) -> Interactive {
        let mut refused = Vec::new();
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
                refused.push((job, e));
                continue;
            }
            let absent = CameraHealth::Unavailable("no camera".into());
            let cam_health = job.cam.and_then(|c| health.get(c)).unwrap_or(&absent);
            let picture = match (&job.image, cam_health) {
                (_, _) if !reachable => Err(ApiError::new(
                    Code::ModelError,
                    "no pool worker is alive and this node has no model",
                )),
                (Some(bytes), _) => Ok(Picture::Encoded(bytes.clone())),
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
            match picture {
                Ok(p) => {
                    return Interactive {
                        start: Some((job, p)),
                        refused,
                    }
                }
                Err(e) => refused.push((job, e)),
            }
        }
        Interactive {
            start: None,
            refused,
        }
    }
}

/// A job the scheduler chose to start.
#[derive(Debug)]
pub(super) enum Start {
    Interactive(Box<Pending>, Picture),
    /// Trigger `name` of camera `cam` on `frame`, on its zone (or why its zone cannot be
    /// found: the trigger fails instead).
    Trigger {
        cam: usize,
        name: String,
        cause: Cause,
        frame: Arc<Frame>,
        zone: Result<Option<Zone>, String>,
    },
    Caption {
        cam: usize,
        frame: Arc<Frame>,
    },
}

/// What the scheduler decided: the job to start, and the requests that will never run.
#[derive(Debug, Default)]
pub(super) struct Pick {
    pub(super) start: Option<Start>,
    pub(super) refused: Vec<(Pending, ApiError)>,
}

/// What the scheduler needs to know besides its own state.
pub(super) struct Context<'a> {
    pub(super) now: Now,
    pub(super) health: &'a [CameraHealth],
    /// Jobs can run: on this node's model, or a live worker.
    pub(super) reachable: bool,
    /// `daemon.caption_interval` (0: no captions).
    pub(super) caption_every: u64,
}

impl Scheduler {
    /// The next job to start: interactive requests first (at most [`INTERACTIVE_BURST`] in
    /// a row while triggers wait), then trigger rounds with cameras taking turns, then
    /// captions; and the requests that will never run. Decides only: the caller starts
    /// and answers. Triggers skipped on an unchanged picture are counted in `counters`.
    pub(super) fn pick(
        &mut self,
        ctx: &Context,
        cams: &mut [Cam],
        counters: &mut wire::Counters,
    ) -> Pick {
        if !ctx.reachable {
            // Requests are answered (model_error); no rounds or captions until a worker
            // is back.
            self.round = None;
            let i = self.next_interactive(ctx.now, ctx.health, false);
            return Pick {
                start: None,
                refused: i.refused,
            };
        }
        if self.round.as_ref().is_none_or(|r| r.names.is_empty()) {
            self.round = self.next_round(ctx, cams, counters);
        }
        let mut refused = Vec::new();
        let triggers_wait = self.round.is_some();
        if !triggers_wait || self.interactive_streak < INTERACTIVE_BURST {
            let i = self.next_interactive(ctx.now, ctx.health, true);
            refused.extend(i.refused);
            if let Some((job, picture)) = i.start {
                self.interactive_streak += 1;
                return Pick {
                    start: Some(Start::Interactive(Box::new(job), picture)),
                    refused,
                };
            }
        }
        self.interactive_streak = 0;
        let mut start = self.next_trigger(ctx, cams, counters);
        if start.is_none() {
            let i = self.next_interactive(ctx.now, ctx.health, true);
            refused.extend(i.refused);
            start = i.start.map(|(job, p)| Start::Interactive(Box::new(job), p));
        }
        if start.is_none() {
            start = self.next_caption(ctx, cams);
        }
        Pick { start, refused }
    }

    /// The next trigger of the round in progress, or of the next camera's round.
    fn next_trigger(
        &mut self,
        ctx: &Context,
        cams: &mut [Cam],
        counters: &mut wire::Counters,
    ) -> Option<Start> {
        // Each camera's round at most once: triggers that cannot run end the search.
        for _ in 0..=cams.len() {
            if self.round.as_ref().is_none_or(|r| r.names.is_empty()) {
                self.round = self.next_round(ctx, cams, counters);
            }
            let round = self.round.as_mut()?;
            while let Some((name, cause)) = round.names.pop_front() {
                let cam = &cams[round.cam];
                let Some(t) = cam.triggers.get(&name) else {
                    continue;
                };
                if t.error.is_some() || !t.enabled {
                    continue;
                }
                return Some(Start::Trigger {
                    cam: round.cam,
                    zone: cam.zone(t.cfg.zone.as_ref()),
                    name,
                    cause,
                    frame: round.frame.clone(),
                });
            }
            self.round = None;
        }
        None
    }

    /// The next camera (in turn) with triggers due on its newest frame, and those
    /// triggers, grouped by zone so that each zone's crop is encoded once. A trigger being
    /// evaluated (on another worker) is not started twice.
    fn next_round(
        &mut self,
        ctx: &Context,
        cams: &mut [Cam],
        counters: &mut wire::Counters,
    ) -> Option<Round> {
        let n = cams.len();
        for k in 0..n {
            let ci = (self.next_round_cam + k) % n;
            let CameraHealth::Fresh(frame) = &ctx.health[ci] else {
                continue;
            };
            let names: Vec<String> = cams[ci]
                .triggers
                .keys()
                .filter(|n| !self.evaluating(ci, n))
                .cloned()
                .collect();
            let cam = &mut cams[ci];
            let mut due = Vec::new();
            let mut soon = Vec::new();
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
                let now = ctx.now.unix;
                match triggers::pace(&t.cfg, t.state.settled(), t.evaluated, changed, now) {
                    Pace::Due(cause) => due.push((zone_key, (name, cause))),
                    Pace::Soon(cause) => soon.push((zone_key, (name, cause))),
                    Pace::Skip => {
                        // Same picture, settled answer: it stands; look again next interval.
                        t.evaluated.interval_from = Some(now);
                        cam.evaluations.skipped += 1;
                        counters.trigger_skips += 1;
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

    /// The next camera (in turn) due a caption.
    fn next_caption(&mut self, ctx: &Context, cams: &mut [Cam]) -> Option<Start> {
        if ctx.caption_every == 0 {
            return None;
        }
        let n = cams.len();
        for k in 0..n {
            let ci = (self.next_caption_cam + k) % n;
            let CameraHealth::Fresh(frame) = &ctx.health[ci] else {
                continue;
            };
            let cam = &mut cams[ci];
            if cam
                .last_caption
                .is_some_and(|t| ctx.now.unix - t < ctx.caption_every as f64)
            {
                continue;
            }
            cam.last_caption = Some(ctx.now.unix);
            self.next_caption_cam = ci + 1;
            return Some(Start::Caption {
                cam: ci,
                frame: frame.clone(),
            });
        }
        None
    }
}

impl Core {
    // ---- scheduling ---------------------------------------------------------------------

    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Starts jobs while there is room (see [`Core::has_room`]), in the order
    /// [`Scheduler::pick`] gives; answers the requests that will never run.
    pub(super) fn schedule(&mut self, now: Now, views: &[CameraView], out: &mut Vec<Act>) {
        if self.life.stopping.is_some() || self.life.exited {
            return;
        }
        if self.life.model_ready && !self.sched.local_busy() {
            // The engine is idle: the new model takes over now.
            self.life.model_ready = false;
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
        let ctx = Context {
            now,
            health: &health,
            reachable: self.engine_reachable(now),
            caption_every: self.cfg.daemon.caption_interval,
        };
        loop {
            let room = self.has_room(now);
            let Pick { start, refused } = if room || !ctx.reachable {
                self.sched.pick(&ctx, &mut self.cams, &mut self.counters)
            } else {
                Pick::default()
            };
            for (job, e) in refused {
                self.reply(now, job.reply, Err(e), out);
            }
            let Some(start) = start.filter(|_| room) else {
                return;
            };
            self.start(now, start, out);
        }
    }

    /// Whether another job may start: the pool has room while a worker is alive (this
    /// node's model only takes what the pool could not answer), else this node's engine
    /// is idle.
    pub(super) fn has_room(&self, now: Now) -> bool {
        match &self.offload {
            Some(o) if o.reachable(now) => o.has_room(now),
            _ => !self.sched.local_busy(),
        }
    }

    /// Starts what the scheduler picked.
    fn start(&mut self, now: Now, start: Start, out: &mut Vec<Act>) {
        match start {
            Start::Interactive(job, picture) => {
                let skills = vec![job.skill.clone()];
                let zone = job.zone;
                let work = Work::Interactive(job);
                self.submit(now, work, picture, zone, skills, out);
            }
            Start::Trigger {
                cam: ci,
                name,
                cause,
                frame,
                zone,
            } => {
                let zone = match zone {
                    Ok(z) => z,
                    Err(why) => return self.trigger_failed(ci, &name, why, out),
                };
                let cam = &mut self.cams[ci];
                let (reference, _) = cam.scene(&frame, zone);
                let Some(t) = cam.triggers.get_mut(&name) else {
                    return;
                };
                t.reference = reference;
                let skills = vec![t.cfg.skill()];
                let work = Work::Trigger {
                    cam: ci,
                    name,
                    zone,
                    cause,
                };
                self.submit(now, work, Picture::Frame(frame), zone, skills, out);
            }
            Start::Caption { cam, frame } => {
                let skills = vec![Skill::Caption {
                    length: self.cfg.daemon.caption_length,
                }];
                let work = Work::Caption { cam };
                self.submit(now, work, Picture::Frame(frame), None, skills, out);
            }
        }
    }

    pub(super) fn answer_snapshot_waiters(
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
                self.snapshot(now, ci, views, false, reply, out);
            }
        }
    }
}
