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
                (Some(bytes), _) => Ok(Picture::Encoded(bytes.clone())),
                (None, _) if !reachable => Err(ApiError::new(
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

impl Core {
    // ---- scheduling ---------------------------------------------------------------------

    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Starts jobs while there is room (see [`Core::has_room`]): interactive requests first
    /// (at most [`INTERACTIVE_BURST`] in a row while triggers wait), then trigger rounds,
    /// then captions; cameras take turns for rounds and captions.
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
        if !self.engine_reachable(now) {
            // Requests are answered (model_error); no rounds or captions until a worker is
            // back.
            self.sched.round = None;
            self.run_interactive(now, &health, out);
            return;
        }
        while self.has_room(now) && self.start_next(now, &health, out) {}
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

    /// Starts one job; false when nothing is due.
    fn start_next(&mut self, now: Now, health: &[CameraHealth], out: &mut Vec<Act>) -> bool {
        if self.sched.round.as_ref().is_none_or(|r| r.names.is_empty()) {
            self.sched.round = self.next_round(now, health);
        }
        let triggers_wait = self.sched.round.is_some();
        if (!triggers_wait || self.sched.interactive_streak < INTERACTIVE_BURST)
            && self.run_interactive(now, health, out)
        {
            self.sched.interactive_streak += 1;
            return true;
        }
        self.sched.interactive_streak = 0;
        if self.run_round(now, health, out) || self.run_interactive(now, health, out) {
            return true;
        }
        let every = self.cfg.daemon.caption_interval;
        if every == 0 {
            return false;
        }
        let n = self.cams.len();
        for k in 0..n {
            let ci = (self.sched.next_caption_cam + k) % n;
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
            self.sched.next_caption_cam = ci + 1;
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
            return true;
        }
        false
    }

    /// Starts the next trigger of the round in progress, or of the next camera's round.
    /// False when no trigger is due.
    pub(super) fn run_round(
        &mut self,
        now: Now,
        health: &[CameraHealth],
        out: &mut Vec<Act>,
    ) -> bool {
        // Each camera's round at most once: triggers that cannot run end the search.
        for _ in 0..=self.cams.len() {
            if self.sched.round.as_ref().is_none_or(|r| r.names.is_empty()) {
                self.sched.round = self.next_round(now, health);
            }
            let Some(round) = self.sched.round.as_mut() else {
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
            self.sched.round = None;
        }
        false
    }

    /// Starts the oldest interactive request that can run; answers those that cannot
    /// (expired, camera unavailable). False when none was started.
    pub(super) fn run_interactive(
        &mut self,
        now: Now,
        health: &[CameraHealth],
        out: &mut Vec<Act>,
    ) -> bool {
        let reachable = self.engine_reachable(now);
        let Interactive { start, refused } = self.sched.next_interactive(now, health, reachable);
        for (job, e) in refused {
            self.reply(now, job.reply, Err(e), out);
        }
        let Some((job, picture)) = start else {
            return false;
        };
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
        true
    }

    /// The next camera (in turn) with triggers due on its newest frame, and those
    /// triggers, grouped by zone so that each zone's crop is encoded once.
    pub(super) fn next_round(&mut self, now: Now, health: &[CameraHealth]) -> Option<Round> {
        let n = self.cams.len();
        for k in 0..n {
            let ci = (self.sched.next_round_cam + k) % n;
            let CameraHealth::Fresh(frame) = &health[ci] else {
                continue;
            };
            // A trigger being evaluated (on another worker) is not started twice.
            let names: Vec<String> = self.cams[ci]
                .triggers
                .keys()
                .filter(|n| !self.sched.evaluating(ci, n))
                .cloned()
                .collect();
            let cam = &mut self.cams[ci];
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
            self.sched.next_round_cam = ci + 1;
            return Some(Round {
                cam: ci,
                frame: frame.clone(),
                names: due.into_iter().map(|(_, n)| n).collect(),
            });
        }
        None
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

    pub(super) fn publish_caption(
        &mut self,
        ci: usize,
        caption: &str,
        frame: &Frame,
        out: &mut Vec<Act>,
    ) {
        self.counters.captions += 1;
        let v = wire::Caption {
            caption: caption.to_owned(),
            frame_time: unix(frame.captured_at),
            frame_seq: frame.seq,
        };
        let topic = self.cams[ci].topics.caption();
        self.publish_retained(out, topic, wire::to_bytes(&v));
    }

    /// Starts a job: on the pool while a worker is alive (its picture is prepared off the
    /// loop first), else on this node's engine.
    pub(super) fn submit(
        &mut self,
        now: Now,
        work: Work,
        picture: Picture,
        zone: Option<Zone>,
        skills: Vec<Skill>,
        out: &mut Vec<Act>,
    ) {
        let job = self.next_id();
        let pool = match (&mut self.offload, skills.as_slice()) {
            (Some(o), [skill]) if o.reachable(now) => {
                o.start(now, job, skill.clone(), zone);
                true
            }
            _ => false,
        };
        self.sched.in_flight.insert(
            job,
            InFlight {
                job,
                work,
                started: now.mono,
                cancelled: false,
                place: if pool { Place::Pool } else { Place::Local },
            },
        );
        if pool {
            out.push(Act::PoolPicture {
                job,
                picture,
                zone,
                side: offload::JOB_SIDE,
            });
        } else {
            out.push(Act::Submit {
                job,
                picture,
                zone,
                skills,
            });
        }
    }

    /// What the pool made of a job: its result, or a run on this node's model.
    pub(super) fn on_pool(&mut self, now: Now, outcome: offload::Outcome, out: &mut Vec<Act>) {
        match outcome {
            offload::Outcome::Done {
                job,
                result,
                frame,
                worker,
            } => self.on_done(now, job, result, frame, worker, out),
            offload::Outcome::RunHere {
                job,
                frame,
                zone,
                skill,
            } => {
                if let Some(f) = self.sched.in_flight.get_mut(&job) {
                    f.place = Place::Local;
                }
                out.push(Act::Submit {
                    job,
                    picture: Picture::Frame(frame),
                    zone,
                    skills: vec![skill],
                });
            }
        }
    }

    pub(super) fn on_done(
        &mut self,
        now: Now,
        job: u64,
        result: Result<Response, EngineError>,
        frame: Option<Arc<Frame>>,
        worker: Option<String>,
        out: &mut Vec<Act>,
    ) {
        let Some(done) = self.sched.in_flight.remove(&job) else {
            return;
        };
        let elapsed = now.mono.duration_since(done.started).as_secs_f64() * 1e3;
        self.counters.engine_busy_ms += elapsed;
        if let Ok(r) = &result {
            self.counters.inferences += 1;
            self.counters.image_encodes += u64::from(!r.prefix.reused);
        }
        match done.work {
            Work::Interactive(mut p) => {
                self.counters.last_request_ms = Some(elapsed);
                // The requester learns which worker served it.
                if worker.is_some() {
                    p.reply.worker = worker;
                }
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
                        let drawing = match (p.cam, p.annotate, first, &p.skill) {
                            (
                                Some(cam),
                                true,
                                Some(a),
                                Skill::Detect { object } | Skill::Point { object },
                            ) => Some((
                                cam,
                                Drawing {
                                    answer: a.clone(),
                                    object: object.clone(),
                                    zone: p.zone,
                                },
                            )),
                            _ => None,
                        };
                        let mut data = answer_reply(&r, &f);
                        data.zone = p.zone;
                        if let Some((cam, drawing)) = drawing {
                            // Answered once the drawn picture is published.
                            let topic = self.cams[cam].topics.annotated();
                            data.annotated_topic = Some(topic.clone());
                            let then =
                                vec![pictures::Then::Reply(p.reply, Ok(ReplyData::Answer(data)))];
                            return self.drawn_picture(cam, &f, drawing, vec![topic], then, out);
                        }
                        Ok(ReplyData::Answer(data))
                    }
                    (Ok(_), None) => Err(ApiError::new(Code::ModelError, "no picture")),
                    (Err(e), _) => Err(engine_error(e, self.life.stopping.is_some())),
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
}
