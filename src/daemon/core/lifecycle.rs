//! Time and lifecycle: ticks (timeouts, stats, save retries, the watchdog), stop, reload
//! and the model swap.

use super::*;

/// Stopping, reloading, the model swap, and when the periodic duties last ran.
#[derive(Debug, Default)]
pub(super) struct Life {
    pub(super) stopping: Option<Instant>,
    pub(super) exited: bool,
    pub(super) reload_problem: Option<String>,
    /// A new model loads beside the running one.
    pub(super) model_loading: bool,
    /// The new model is loaded and waits for the engine to be idle.
    pub(super) model_ready: bool,
    pub(super) last_stats: Option<Instant>,
    /// When a worker's heartbeat was last published.
    pub(super) last_heartbeat: Option<Instant>,
    pub(super) last_watchdog: Option<Instant>,
    pub(super) watchdog_period: Option<Duration>,
}

impl Core {
    // ---- time -------------------------------------------------------------------------

    /// This node's engine has had a job for twice `daemon.request_timeout`.
    pub(super) fn engine_stuck(&self, now: Now) -> bool {
        self.sched.in_flight.values().any(|f| {
            f.place == Place::Local
                && now.mono.duration_since(f.started)
                    > Duration::from_secs(self.cfg.daemon.request_timeout) * 2
        })
    }

    /// Cancels job `job`: this node's engine is asked to stop it (its result comes back as
    /// `EngineDone`); a pool job ends now, and an answer to it later is ignored.
    pub(super) fn cancel(&mut self, now: Now, job: u64, out: &mut Vec<Act>) {
        let Some(f) = self.sched.in_flight.get_mut(&job) else {
            return;
        };
        if f.cancelled {
            return;
        }
        f.cancelled = true;
        match f.place {
            Place::Local => out.push(Act::Cancel { job }),
            Place::Pool => {
                let frame = self.offload.as_mut().and_then(|o| o.cancel(job));
                self.on_done(now, job, Err(EngineError::Cancelled), frame, None, out);
            }
        }
    }

    pub(super) fn on_tick(&mut self, now: Now, views: &[CameraView], out: &mut Vec<Act>) {
        self.discovery_tick(now, out);
        if self.link.connected {
            for ci in 0..self.cams.len() {
                let health = self.camera_health(now, ci, views);
                self.publish_camera_availability(now, ci, &health, false, out);
            }
        }
        // Pool jobs no worker answered in time are sent again, or run here.
        if let Some(o) = self.offload.as_mut() {
            for outcome in o.tick(now, out) {
                self.on_pool(now, outcome, out);
            }
        }
        // A worker gone sick, back or lost: Home Assistant hears it now, not at the next
        // stats interval (jobs out and the counters alone wait for it).
        if let Some(o) = &self.offload {
            let s = o.summary(now);
            let seen = self.pool_seen.as_ref();
            let changed = seen.is_none_or(|p| {
                (p.healthy, p.live, &p.suspect, p.lost) != (s.healthy, s.live, &s.suspect, s.lost)
            });
            if changed && self.link.connected && self.life.stopping.is_none() {
                self.publish_server(now, out);
            }
        }
        // A job running far past its time is cancelled.
        let limit = Duration::from_secs(self.cfg.daemon.request_timeout);
        let stop_overdue = self
            .life
            .stopping
            .is_some_and(|s| now.mono.duration_since(s) > STOP_GRACE);
        let overdue: Vec<u64> = self
            .sched
            .in_flight
            .values()
            .filter(|f| stop_overdue || now.mono.duration_since(f.started) > limit)
            .map(|f| f.job)
            .collect();
        for job in overdue {
            self.cancel(now, job, out);
        }
        if self.cfg.pool.serve
            && self.life.stopping.is_none()
            && self
                .life
                .last_heartbeat
                .is_none_or(|t| now.mono.duration_since(t) >= HEARTBEAT)
        {
            self.life.last_heartbeat = Some(now.mono);
            self.publish_heartbeat(true, out);
        }
        if self.life.stopping.is_none()
            && self.life.last_stats.is_none_or(|t| {
                now.mono.duration_since(t).as_secs() >= self.cfg.daemon.stats_interval
            })
        {
            self.life.last_stats = Some(now.mono);
            for ci in 0..self.cams.len() {
                self.publish_stats(now, ci, views, out);
            }
            self.publish_server(now, out);
        }
        for ci in 0..self.cams.len() {
            let retry = self.cams[ci].unsaved.as_ref().is_some_and(|u| {
                now.mono.duration_since(u.tried) >= SAVE_RETRY
                    && !self.saving.values().any(|s| s.cam == ci)
            });
            if retry && self.life.stopping.is_none() {
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
        if let Some(period) = self.life.watchdog_period {
            let due = self
                .life
                .last_watchdog
                .is_none_or(|t| now.mono.duration_since(t) >= period / 2);
            if due && !self.engine_stuck(now) {
                self.life.last_watchdog = Some(now.mono);
                out.push(Act::Notify(Notify::Watchdog));
            }
        }
    }

    /// A camera's stats: its frames, state and triggers, and the engine's queue and
    /// counters (shared by every camera).
    pub(super) fn publish_stats(
        &self,
        now: Now,
        ci: usize,
        views: &[CameraView],
        out: &mut Vec<Act>,
    ) {
        let cam = &self.cams[ci];
        let v = wire::Stats {
            uptime_s: now.mono.duration_since(self.started).as_secs(),
            frames: views
                .get(ci)
                .and_then(|v| v.latest.as_ref())
                .map_or(0, |f| f.seq),
            camera: self.camera_text(now, ci, views),
            queue_depth: self.sched.depth(),
            triggers: cam.triggers.len(),
            evaluations: cam.evaluations,
            counters: self.counters.clone(),
            outbox: self.link.outbox,
            pool: self.offload.as_ref().map(|o| o.stats(now)),
        };
        self.publish_retained(out, cam.topics.stats(), wire::to_bytes(&v));
    }

    // ---- stop and reload ------------------------------------------------------------------

    pub(super) fn on_stop(&mut self, now: Now, out: &mut Vec<Act>) {
        if self.life.stopping.is_some() {
            return;
        }
        tracing::info!("stopping");
        self.life.stopping = Some(now.mono);
        self.flush_later(out);
        out.push(Act::Notify(Notify::Stopping));
        let stopping = || ApiError::new(Code::ShuttingDown, "moonwatch is stopping");
        while let Some(job) = self.sched.queue.pop_front() {
            self.reply(now, job.reply, Err(stopping()), out);
        }
        for ci in 0..self.cams.len() {
            for (reply, _) in std::mem::take(&mut self.cams[ci].snapshot_waiters) {
                self.reply(now, reply, Err(stopping()), out);
            }
        }
        // Jobs in flight may finish (interactive answers are worth a moment); their
        // results arrive, or they are cancelled after STOP_GRACE.
        let others: Vec<u64> = self
            .sched
            .in_flight
            .values()
            .filter(|f| !matches!(f.work, Work::Interactive(_)))
            .map(|f| f.job)
            .collect();
        for job in others {
            self.cancel(now, job, out);
        }
    }

    pub(super) fn maybe_exit(&mut self, now: Now, out: &mut Vec<Act>) {
        let Some(since) = self.life.stopping else {
            return;
        };
        if self.life.exited {
            return;
        }
        // A job that does not return even after being cancelled is answered anyway.
        if !self.sched.in_flight.is_empty() && now.mono.duration_since(since) > STOP_GRACE * 2 {
            for (_, f) in std::mem::take(&mut self.sched.in_flight) {
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
        // Pictures being encoded carry replies and events: they come back in moments.
        if !self.encodes.is_empty() && now.mono.duration_since(since) > STOP_GRACE * 2 {
            self.abandon_pictures(now, out);
        }
        if !self.sched.in_flight.is_empty() || !self.saving.is_empty() || !self.encodes.is_empty() {
            return;
        }
        self.life.exited = true;
        self.publish_heartbeat(false, out);
        self.publish_retained(out, self.topics.availability(), "offline");
        out.push(Act::Exit);
    }

    pub(super) fn on_reload(
        &mut self,
        now: Now,
        r: Result<Box<Config>, String>,
        out: &mut Vec<Act>,
    ) {
        let refuse = |this: &mut Self, out: &mut Vec<Act>, e: String| {
            tracing::error!("reload refused, keeping the running configuration: {e}");
            let p = format!("reload refused: {e}");
            out.push(Act::Notify(Notify::Status(p.clone())));
            this.life.reload_problem = Some(p);
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
        self.life.reload_problem = None;
        if new.mqtt != self.cfg.mqtt {
            tracing::warn!(
                "[mqtt] changed; restart moonwatch to apply it (the connection is kept)"
            );
        }
        if new.model != self.cfg.model {
            tracing::info!("[model] changed; loading the new model beside the running one");
            self.life.model_loading = true;
            self.life.model_ready = false;
            out.push(Act::LoadModel(Box::new(new.clone())));
        }
        // A round in progress may name triggers that change now.
        self.sched.round = None;
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
        if !self.life.model_loading {
            out.push(Act::Notify(Notify::Ready));
        }
    }

    pub(super) fn on_model_loaded(&mut self, r: Result<(), String>, out: &mut Vec<Act>) {
        self.life.model_loading = false;
        match r {
            Ok(()) => {
                tracing::info!("new model loaded; it takes over when the engine is idle");
                self.life.model_ready = true;
                out.push(Act::Notify(Notify::Ready));
            }
            Err(e) => {
                tracing::error!("new model not loaded, keeping the old one: {e}");
                let p = format!("reload refused: the new model did not load: {e}");
                out.push(Act::Notify(Notify::Status(p.clone())));
                out.push(Act::Notify(Notify::Ready));
                self.life.reload_problem = Some(p);
            }
        }
    }
}
