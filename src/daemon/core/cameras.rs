//! The cameras: their triggers and watched regions (`Cam`), health and availability, and
//! the trigger switches.

use super::*;

impl Cam {
    pub(super) fn new(
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
    pub(super) fn forget(&mut self, cfg: TriggerConfig) {
        self.gone.retain(|g| g.name != cfg.name);
        self.gone.push_back(cfg);
        while self.gone.len() > GONE {
            self.gone.pop_front();
        }
    }

    pub(super) fn new_trigger(&self, cfg: TriggerConfig) -> Trigger {
        let mut t = Trigger::new(cfg);
        t.enabled = !self.runtime.disabled.contains(&t.cfg.name);
        t
    }

    /// The rectangle a trigger or request names, from this camera's zones.
    pub(super) fn zone(&self, z: Option<&crate::zone::ZoneRef>) -> Result<Option<Zone>, String> {
        z.map(|z| z.resolve(&self.spec.config.zones)).transpose()
    }

    /// The signature of `zone` of `frame` (computed once per frame and zone; a newer
    /// frame also teaches the region's noise level), and the cell change that counts in
    /// that region.
    pub(super) fn scene(
        &mut self,
        frame: &Frame,
        zone: Option<Zone>,
    ) -> (Option<Arc<Signature>>, f32) {
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
    pub(super) fn prune_scenes(&mut self) {
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

impl Core {
    /// A trigger's switch: `ON` / `OFF` on `{base}/trigger/{name}/set`.
    pub(super) fn on_switch(&mut self, ci: usize, name: &str, m: &Incoming, out: &mut Vec<Act>) {
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
        if let Some(r) = self.sched.round.as_mut().filter(|r| r.cam == ci) {
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
        self.save(ci, None, SavedKind::Setting, out);
    }

    // ---- camera -----------------------------------------------------------------------

    pub(super) fn camera_health(&self, now: Now, ci: usize, views: &[CameraView]) -> CameraHealth {
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

    pub(super) fn camera_text(&self, now: Now, ci: usize, views: &[CameraView]) -> String {
        match self.camera_health(now, ci, views) {
            CameraHealth::Fresh(_) => "running".into(),
            CameraHealth::Starting => "starting".into(),
            CameraHealth::Unavailable(why) => format!("unavailable: {why}"),
        }
    }

    pub(super) fn publish_camera_availability(
        &mut self,
        now: Now,
        ci: usize,
        health: &CameraHealth,
        force: bool,
        out: &mut Vec<Act>,
    ) {
        let reachable = self.engine_reachable(now);
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
}
