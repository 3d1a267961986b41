//! Requests: parsing, redeliveries, the queue's door (`busy`), pool jobs on a worker,
//! and the requests answered at once (health, trigger list, snapshot).

use super::*;

impl Core {
    /// A request to camera `ci`, or a pool job (`None`: this node is a worker).
    pub(super) fn on_request(
        &mut self,
        now: Now,
        ci: Option<usize>,
        name: String,
        views: &[CameraView],
        m: Incoming,
        out: &mut Vec<Act>,
    ) {
        let key = m.ack.map(|_| request_key(&m));
        if let (true, Some(k), Some(token)) = (m.redelivered, key, m.ack) {
            match self.recent.get_mut(&k) {
                Some(Recent::Done) => {
                    self.counters.duplicates += 1;
                    tracing::debug!(request = ?name, "redelivered request already answered");
                    out.push(Act::Ack(token));
                    return;
                }
                Some(Recent::InProgress(acks)) => {
                    self.counters.duplicates += 1;
                    tracing::debug!(request = ?name, "redelivered request still being served");
                    acks.push(token);
                    return;
                }
                None => {}
            }
        }
        if let Some(k) = key {
            self.remember(k, Recent::InProgress(Vec::new()));
        }
        self.counters.requests += 1;
        let topics = match ci {
            Some(ci) => &self.cams[ci].topics,
            None => &self.pool_topics,
        };
        tracing::debug!(base = %topics.base, request = ?name, "request received");
        let corr = m.correlation.as_deref();
        let expiry = m.expiry.map(|s| (s, now.mono));
        let parsed = api::parse_request(&name, &m.payload, self.cfg.mqtt.max_payload);
        let reply_to = |payload_reply_to: Option<&str>, transaction| ReplyTo {
            address: api::reply_address(
                topics,
                &name,
                m.response_topic.as_deref(),
                corr,
                payload_reply_to,
            ),
            name: name.clone(),
            transaction,
            ack: m.ack,
            expiry,
            key,
            worker: ci.is_none().then(|| self.device_id.clone()),
            question: None,
        };
        let (req, reply) = match parsed {
            Ok(req) => {
                let reply = reply_to(req.reply_to.as_deref(), req.transaction.clone());
                (req, reply)
            }
            Err((err, transaction, payload_reply_to)) => {
                let reply = reply_to(payload_reply_to.as_deref(), transaction);
                self.reply(now, reply, Err(err), out);
                return;
            }
        };
        if self.life.stopping.is_some() {
            let e = ApiError::new(Code::ShuttingDown, "moonwatch is stopping");
            self.reply(now, reply, Err(e), out);
            return;
        }
        let Some(ci) = ci else {
            return self.on_pool_job(now, req, reply, m.expiry, out);
        };
        let result = match req.action {
            Action::HealthCheck => Ok(ReplyData::Health(self.health(now, ci, views))),
            Action::ListTriggers => Ok(ReplyData::Triggers(self.trigger_list(ci))),
            Action::AddTrigger(t) => return self.add_trigger(now, ci, t, reply, out),
            Action::RemoveTrigger(n) => return self.remove_trigger(now, ci, &n, reply, out),
            Action::Snapshot => {
                let starting = matches!(self.camera_health(now, ci, views), CameraHealth::Starting);
                let waiters = &mut self.cams[ci].snapshot_waiters;
                if req.image.is_none() && starting {
                    if waiters.len() < SNAPSHOT_WAITERS {
                        // Answered with the first frame, or after the grace period.
                        waiters.push((reply, now.mono));
                        return;
                    }
                    Err(ApiError::new(
                        Code::Busy,
                        "too many snapshots wait for the camera",
                    ))
                } else {
                    return self.snapshot(now, ci, views, req.image.is_some(), reply, out);
                }
            }
            Action::Skill(skill) => match self.cams[ci].zone(req.zone.as_ref()) {
                Err(m) => Err(ApiError::new(Code::BadRequest, m)),
                Ok(zone) => {
                    let job = Pending {
                        cam: Some(ci),
                        reply,
                        skill,
                        image: req.image.map(Bytes::from),
                        zone,
                        annotate: req.annotate,
                        received: now.mono,
                        deadline: now.mono,
                    };
                    self.enqueue(now, m.expiry, job, "requests", out);
                    return;
                }
            },
        };
        self.reply(now, reply, result, out);
    }

    /// Queues `job` for the engine, or answers it `busy` when `daemon.max_pending` wait
    /// (`what` names them in the message). It may wait `daemon.request_timeout`, or less
    /// when its message expires sooner. True when queued.
    pub(super) fn enqueue(
        &mut self,
        now: Now,
        expiry: Option<u32>,
        mut job: Pending,
        what: &str,
        out: &mut Vec<Act>,
    ) -> bool {
        if self.sched.queue.len() >= self.cfg.daemon.max_pending {
            let e = ApiError::new(
                Code::Busy,
                format!("{} {what} are already waiting", self.sched.queue.len()),
            );
            self.reply(now, job.reply, Err(e), out);
            return false;
        }
        let timeout = Duration::from_secs(self.cfg.daemon.request_timeout);
        let limit = expiry.map_or(timeout, |s| timeout.min(Duration::from_secs(u64::from(s))));
        job.deadline = now.mono + limit;
        self.sched.queue.push_back(job);
        true
    }

    /// A job from the pool: a skill on the picture it carries, queued like a request (a
    /// full queue answers `busy` at once, so the camera node sends it again elsewhere).
    pub(super) fn on_pool_job(
        &mut self,
        now: Now,
        req: api::ApiRequest,
        reply: ReplyTo,
        expiry: Option<u32>,
        out: &mut Vec<Act>,
    ) {
        let result = match (req.action, req.image) {
            (Action::Skill(_), None) => Err(ApiError::new(
                Code::BadRequest,
                "a pool job carries its picture (\"image\")",
            )),
            (Action::Skill(skill), Some(image)) => {
                let zone = match req.zone.map(|z| z.resolve(&BTreeMap::new())).transpose() {
                    Ok(z) => z,
                    Err(m) => {
                        return self.reply(now, reply, Err(ApiError::new(Code::BadRequest, m)), out)
                    }
                };
                let job = Pending {
                    cam: None,
                    reply,
                    skill,
                    image: Some(Bytes::from(image)),
                    zone,
                    annotate: false,
                    received: now.mono,
                    deadline: now.mono,
                };
                if self.enqueue(now, expiry, job, "jobs", out) {
                    self.served += 1;
                }
                return;
            }
            _ => Err(ApiError::new(
                Code::BadRequest,
                "the pool takes skills only (query, yes_no, caption, detect, point)",
            )),
        };
        self.reply(now, reply, result, out);
    }

    /// `{prefix}/pool/direct/{device_id}`: jobs for this worker alone.
    pub(super) fn direct_topics(&self) -> Topics {
        Topics::camera(
            &self.cfg.mqtt,
            &self.device_id,
            &format!("pool/direct/{}", self.device_id),
        )
    }

    /// A worker's heartbeat: retained, so a camera node that starts later sees it.
    pub(super) fn publish_heartbeat(&self, online: bool, out: &mut Vec<Act>) {
        if !self.cfg.pool.serve {
            return;
        }
        let v = wire::WorkerStatus {
            online,
            queue_depth: self.sched.depth(),
            max_pending: self.cfg.daemon.max_pending,
            served: self.served,
            interval_s: HEARTBEAT.as_secs(),
            slots: 1,
            full_pictures: self.cfg.model.crops == crate::config::CropMode::Reference,
        };
        let topic = format!("{}/worker/{}", self.pool_topics.base, self.device_id);
        self.publish_retained(out, topic, wire::to_bytes(&v));
    }

    pub(super) fn remember(&mut self, key: u64, state: Recent) {
        if self.recent.insert(key, state).is_none() {
            self.recent_order.push_back(key);
            while self.recent_order.len() > RECENT {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    // ---- requests answered at once ----------------------------------------------------

    pub(super) fn health(&self, now: Now, ci: usize, views: &[CameraView]) -> wire::Health {
        let mut problems = self.problems.clone();
        if !self.link.refused_subscriptions.is_empty() {
            problems.push(format!(
                "the broker refused subscriptions: {}",
                self.link.refused_subscriptions.join(", ")
            ));
        }
        if let CameraHealth::Unavailable(why) = self.camera_health(now, ci, views) {
            problems.push(format!("camera unavailable: {why}"));
        }
        if self.engine_stuck(now) {
            problems
                .push("the engine has not finished its job in twice daemon.request_timeout".into());
        }
        if let Some(p) = &self.life.reload_problem {
            problems.push(p.clone());
        }
        if !self.engine_reachable(now) {
            problems
                .push("no pool worker is alive (no heartbeat) and this node has no model".into());
        }
        if let Some(o) = &self.offload {
            problems.extend(o.problems(now));
        }
        if let Some(u) = &self.cams[ci].unsaved {
            problems.push(format!(
                "runtime triggers are not saved ({}): changes made over MQTT are lost at a \
                 restart until a save succeeds (tried again every {} s)",
                u.error,
                SAVE_RETRY.as_secs()
            ));
        }
        wire::Health {
            healthy: problems.is_empty(),
            uptime_s: now.mono.duration_since(self.started).as_secs(),
            camera: self.camera_text(now, ci, views),
            problems,
        }
    }

    pub(super) fn trigger_list(&self, ci: usize) -> wire::TriggerList {
        wire::TriggerList {
            triggers: self.cams[ci]
                .triggers
                .values()
                .map(|t| wire::TriggerEntry {
                    trigger: t.cfg.clone(),
                    state: t
                        .state
                        .state
                        .map(|on| if on { "ON" } else { "OFF" }.to_owned()),
                    confidence: t.state.state.map(|_| t.state.last_confidence),
                    enabled: t.enabled,
                    error: t.error.clone(),
                })
                .collect(),
        }
    }

    /// Publishes the camera's newest frame as its retained snapshot. A request's own
    /// image is never published: the snapshot is the camera's picture.
    /// Publishes the camera's newest frame as its retained snapshot and answers `reply`
    /// once it is (a request's own image is refused: the snapshot is the camera's).
    pub(super) fn snapshot(
        &mut self,
        now: Now,
        ci: usize,
        views: &[CameraView],
        has_image: bool,
        reply: ReplyTo,
        out: &mut Vec<Act>,
    ) {
        if has_image {
            let e = ApiError::new(
                Code::BadRequest,
                "request/snapshot publishes the camera's frame and takes no \"image\"",
            );
            return self.reply(now, reply, Err(e), out);
        }
        let frame = match self.camera_health(now, ci, views) {
            CameraHealth::Fresh(f) => f,
            CameraHealth::Starting => {
                let e = ApiError::new(
                    Code::CameraUnavailable,
                    "the camera has not delivered a frame yet",
                );
                return self.reply(now, reply, Err(e), out);
            }
            CameraHealth::Unavailable(why) => {
                let e = ApiError::new(Code::CameraUnavailable, format!("no camera frame ({why})"));
                return self.reply(now, reply, Err(e), out);
            }
        };
        let data = wire::SnapshotReply {
            topic: self.cams[ci].topics.snapshot(),
            width: frame.width,
            height: frame.height,
            frame_time: unix(frame.captured_at),
            frame_seq: frame.seq,
            bytes: 0,
        };
        let then = vec![pictures::Then::Snapshot(reply, data)];
        self.plain_picture(now, ci, &frame, Vec::new(), then, out);
    }
}

/// Identifies a request across redeliveries: topic, payload and v5 properties.
pub(super) fn request_key(m: &Incoming) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [
        m.topic.as_bytes(),
        &m.payload,
        m.response_topic.as_deref().unwrap_or("").as_bytes(),
        m.correlation.as_deref().unwrap_or(&[]),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.digest()
}

impl Core {
    /// Answers a request: the reply carries the acknowledgement of the request (and of any
    /// redelivery of it), released when the broker has the reply.
    pub(super) fn reply(
        &mut self,
        now: Now,
        to: ReplyTo,
        result: Result<ReplyData, ApiError>,
        out: &mut Vec<Act>,
    ) {
        if let Some(question) = to.question {
            // From a camera's text entity: the answer (or why there is none) is the
            // retained state of its answer sensor.
            if let Err(e) = &result {
                self.counters.errors += 1;
                tracing::info!(question = ?question, code = ?e.code, "question not answered: {}", e.message);
            }
            let v = ha::asked(now, question, &result);
            let mut m = Outgoing::retained(to.address.topic, wire::to_bytes(&v));
            m.acks.extend(to.ack);
            out.push(Act::Publish(m));
            return;
        }
        if let Err(e) = &result {
            self.counters.errors += 1;
            self.bad_requests += 1;
            tracing::debug!(request = ?to.name, code = ?e.code, message = ?e.message, "request failed");
        }
        let mut acks: Vec<AckToken> = to.ack.into_iter().collect();
        if let Some(k) = to.key {
            if let Some(Recent::InProgress(more)) = self.recent.get_mut(&k) {
                acks.append(more);
            }
            self.recent.insert(k, Recent::Done);
        }
        let m = replies::envelope(now, to, result, acks, self.cfg.daemon.request_timeout);
        out.push(Act::Publish(m));
    }
}
