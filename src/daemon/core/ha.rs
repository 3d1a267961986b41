//! Home Assistant in the core: discovery (read what the broker holds, then publish, moving
//! entities between the two forms), the server's state, and what Home Assistant's own
//! entities send: a question typed into a camera's text entity, a trigger's settings from
//! its number entities.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Act, Core, Now, Pending, ReplyTo, SavedKind};
use crate::mqtt::api::{ApiError, Code, ReplyAddress};
use crate::mqtt::discovery::{self, entities, Inventory, Publication};
use crate::mqtt::topics::Topics;
use crate::mqtt::wire::{self, ReplyData};
use crate::mqtt::{Incoming, Outgoing};
use crate::triggers::Tunable;
use crate::vision::{Answer, Skill};

/// How long discovery waits for the broker's retained discovery configs (read to move
/// entities between forms and remove what moonwatch no longer has) before it publishes
/// without them.
pub(super) const SYNC_WAIT: Duration = Duration::from_secs(5);
/// How long after a trigger's entities are removed its retained state topics are cleared:
/// Home Assistant drops the entities first, so no entity reads an empty payload.
pub(super) const CLEAR_AFTER: Duration = Duration::from_secs(5);
/// Longest question taken from the text entity (Home Assistant's own limit).
const QUESTION_MAX: usize = 255;

/// Where discovery stands in this broker session.
#[derive(Debug)]
pub(super) enum Sync {
    /// Reading the retained configs; ends with `marker` coming back. It names this
    /// process and session (the time it connected and a counter): a marker of an earlier
    /// process, redelivered from its persistent session, is not this one's.
    Reading {
        marker: String,
        since: Option<Instant>,
    },
    Done,
}

#[derive(Debug)]
pub(super) struct Discovery {
    pub inventory: Inventory,
    pub sync: Sync,
}

impl Discovery {
    pub fn new(prefix: &str) -> Self {
        Self {
            inventory: Inventory::new(prefix),
            sync: Sync::Done,
        }
    }
}

impl Core {
    /// The server's node id and each camera's.
    fn nodes(&self) -> Vec<String> {
        std::iter::once(entities::server_id(&self.device_id))
            .chain(
                self.cams
                    .iter()
                    .map(|c| entities::camera_id(&c.topics.device_id)),
            )
            .collect()
    }

    /// Where the end-of-retained marker travels (to this process alone).
    fn sync_topic(&self) -> String {
        format!("{}/discovery/sync", self.topics.process_base)
    }

    /// Subscriptions for reading what the broker holds of moonwatch's discovery.
    pub(super) fn discovery_subscriptions(&self) -> Vec<String> {
        if !self.cfg.mqtt.discovery {
            return Vec::new();
        }
        let prefix = &self.cfg.mqtt.discovery_prefix;
        let mut out: Vec<String> = self
            .nodes()
            .iter()
            .map(|n| discovery::node_filter(prefix, n))
            .collect();
        out.push(self.sync_topic());
        out
    }

    /// A new session: the broker sends its retained configs again after the subscriptions.
    pub(super) fn discovery_connected(&mut self, now: Now) {
        if !self.cfg.mqtt.discovery {
            return;
        }
        self.discovery.inventory = Inventory::new(&self.cfg.mqtt.discovery_prefix);
        let marker = format!("{:.6}-{}", now.unix, self.next_id());
        self.discovery.sync = Sync::Reading {
            marker,
            since: None,
        };
    }

    /// The subscriptions are granted: the broker has queued every retained config for us,
    /// so a marker published now comes back after the last of them.
    pub(super) fn discovery_subscribed(&mut self, now: Now, out: &mut Vec<Act>) {
        let topic = self.sync_topic();
        if let Sync::Reading { marker, since } = &mut self.discovery.sync {
            if since.is_none() {
                *since = Some(now.mono);
                out.push(Act::Publish(Outgoing::event(topic, marker.clone())));
            }
        }
    }

    /// A message on a discovery topic or the marker; false when `m` is neither.
    pub(super) fn on_discovery_message(&mut self, m: &Incoming, out: &mut Vec<Act>) -> bool {
        if !self.cfg.mqtt.discovery {
            return false;
        }
        if m.topic == self.sync_topic() {
            if let Sync::Reading { marker, .. } = &self.discovery.sync {
                if m.payload.as_ref() == marker.as_bytes() {
                    let held = self.discovery.inventory.nodes.len();
                    tracing::debug!(nodes = held, "read the broker's discovery configs");
                    self.discovery.sync = Sync::Done;
                    self.publish_discovery(out);
                }
            }
        } else {
            let prefix = &self.cfg.mqtt.discovery_prefix;
            let under_prefix = m
                .topic
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
            if !under_prefix {
                // Every request passes here: no lists built for it.
                return false;
            }
            let nodes = self.nodes();
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let inventory = &mut self.discovery.inventory;
            let ours = match self.discovery.sync {
                // What the broker holds of our nodes.
                Sync::Reading { .. } => inventory.observe(&nodes, &m.topic, &m.payload),
                // Our own configs coming back: what the broker holds is what moonwatch
                // published since.
                Sync::Done => inventory.is_config(&nodes, &m.topic),
            };
            if !ours {
                return false;
            }
        }
        if let Some(t) = m.ack {
            out.push(Act::Ack(t));
        }
        true
    }

    /// Publishes discovery without the broker's configs when they did not come in time
    /// (a broker that never returns the marker, an ACL that hides the discovery prefix).
    pub(super) fn discovery_tick(&mut self, now: Now, out: &mut Vec<Act>) {
        if let Sync::Reading {
            since: Some(since), ..
        } = self.discovery.sync
        {
            if now.mono.duration_since(since) >= SYNC_WAIT {
                tracing::warn!(
                    "the broker did not return moonwatch's retained discovery configs within \
                     {} s (may it read {}/#?); publishing discovery without them, so configs \
                     of the other discovery form or of removed triggers are not cleared",
                    SYNC_WAIT.as_secs(),
                    self.cfg.mqtt.discovery_prefix
                );
                self.discovery.sync = Sync::Done;
                self.publish_discovery(out);
            }
        }
        let due: Vec<String> = self
            .later
            .iter()
            .filter(|(at, _)| now.mono >= *at)
            .map(|(_, t)| t.clone())
            .collect();
        self.later.retain(|(at, _)| now.mono < *at);
        for topic in due {
            self.publish_retained(out, topic, Bytes::new());
        }
    }

    /// Clears every retained topic waiting for [`CLEAR_AFTER`] now (moonwatch stops).
    pub(super) fn flush_later(&mut self, out: &mut Vec<Act>) {
        for (_, topic) in std::mem::take(&mut self.later) {
            self.publish_retained(out, topic, Bytes::new());
        }
    }

    /// Clears `topics` (retained) once Home Assistant has dropped the entities reading them.
    pub(super) fn clear_later(&mut self, now: Now, topics: Vec<String>) {
        for t in topics {
            self.later.retain(|(_, x)| x != &t);
            self.later.push((now.mono + CLEAR_AFTER, t));
        }
    }

    /// A topic is in use again (a trigger of the same name): it is not cleared.
    pub(super) fn keep(&mut self, topics: &[String]) {
        self.later.retain(|(_, t)| !topics.contains(t));
    }

    /// The server's and every camera's discovery.
    pub(super) fn publish_discovery(&mut self, out: &mut Vec<Act>) {
        if !self.discovery_ready() {
            return;
        }
        let server = discovery::server_node(&self.topics, self.offload.is_some());
        self.publish_node(&server, &[], out);
        for ci in 0..self.cams.len() {
            self.publish_device_discovery(ci, out);
        }
    }

    fn discovery_ready(&self) -> bool {
        self.cfg.mqtt.discovery && matches!(self.discovery.sync, Sync::Done) && self.link.connected
    }

    /// Camera `ci`'s device and every entity of its triggers; entities of removed
    /// triggers are removed.
    pub(super) fn publish_device_discovery(&mut self, ci: usize, out: &mut Vec<Act>) {
        if !self.discovery_ready() {
            return;
        }
        let cam = &self.cams[ci];
        let zones: Vec<String> = cam.spec.config.zones.keys().cloned().collect();
        let triggers: Vec<&crate::triggers::TriggerConfig> =
            cam.triggers.values().map(|t| &t.cfg).collect();
        let node = discovery::camera_node(&cam.topics, &triggers, &zones);
        let removed: Vec<(&'static str, String)> = cam
            .gone
            .iter()
            .flat_map(|g| entities::trigger_objects(&cam.topics, g, &zones))
            .collect();
        self.publish_node(&node, &removed, out);
    }

    fn publish_node(
        &mut self,
        node: &discovery::Node,
        removed: &[(&'static str, String)],
        out: &mut Vec<Act>,
    ) {
        let prefix = self.cfg.mqtt.discovery_prefix.clone();
        let form = self.cfg.mqtt.discovery_form;
        let held = self
            .discovery
            .inventory
            .nodes
            .entry(node.id.clone())
            .or_default();
        for p in discovery::publish(&prefix, node, removed, form, held) {
            let Publication {
                topic,
                payload,
                retain,
            } = p;
            out.push(Act::Publish(if retain {
                Outgoing::retained(topic, payload)
            } else {
                Outgoing::event(topic, payload)
            }));
        }
    }

    /// The process as Home Assistant's server device shows it.
    pub(super) fn publish_server(&mut self, now: Now, out: &mut Vec<Act>) {
        let busy = self.counters.engine_busy_ms;
        let share = match self.last_server {
            Some((at, before)) => {
                let ms = now.mono.duration_since(at).as_secs_f64() * 1e3;
                if ms > 0.0 {
                    ((busy - before) / ms * 100.0).clamp(0.0, 100.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last_server = Some((now.mono, busy));
        let remote = self.offload.is_some() && !self.cfg.has_model();
        let engine = if remote {
            "pool"
        } else if self.life.model_loading {
            "loading a new model"
        } else {
            "ready"
        };
        let model = if remote {
            "pool".to_owned()
        } else {
            self.cfg
                .model
                .text
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        let v = wire::Server {
            version: env!("CARGO_PKG_VERSION").into(),
            model,
            engine: engine.into(),
            engine_busy_pct: (share * 10.0).round() / 10.0,
            queue_depth: self.sched.depth(),
            uptime_s: now.mono.duration_since(self.started).as_secs(),
            cameras: self.cams.len(),
            pool: self.offload.as_ref().map(|o| o.summary(now)),
        };
        self.pool_seen = v.pool.clone();
        self.publish_retained(out, self.topics.server(), wire::to_bytes(&v));
    }

    /// A number from Home Assistant (or anyone) for one of a trigger's settings, on
    /// `{base}/trigger/{name}/{setting}/set`: checked like the configuration, applied at
    /// once, kept across restarts. A refused value is logged and the setting stays.
    pub(super) fn on_tune(
        &mut self,
        ci: usize,
        (name, key): (&str, &str),
        m: &Incoming,
        out: &mut Vec<Act>,
    ) {
        let cam = &mut self.cams[ci];
        let tuned = match (Tunable::from_key(key), cam.triggers.get_mut(name)) {
            (Some(tunable), Some(t)) => {
                let before = cam.runtime.tuned.get(name).copied().unwrap_or_default();
                tunable
                    .parse(&m.payload, &t.cfg, before)
                    .map(|tuning| (tunable, t, tuning))
            }
            (None, _) => Err(format!(
                "{key:?} is not a setting (threshold, interval, cooldown)"
            )),
            (_, None) => Err(format!("no trigger named {name:?}")),
        };
        let (tunable, t, tuning) = match tuned {
            Ok(x) => x,
            Err(why) => {
                tracing::warn!(camera = %cam.spec.id, trigger = ?name, setting = ?key, "refused a setting: {why}");
                self.bad_requests += 1;
                if let Some(a) = m.ack {
                    out.push(Act::Ack(a));
                }
                return;
            }
        };
        t.cfg = tuning.apply(t.cfg.clone());
        let value = tunable.text(&t.cfg);
        tracing::info!(camera = %cam.spec.id, trigger = ?name, setting = key, %value, "trigger tuned");
        cam.runtime.tuned.insert(name.to_owned(), tuning);
        let mut state = Outgoing::retained(cam.topics.trigger_tuning(name, key), value);
        state.acks.extend(m.ack);
        out.push(Act::Publish(state));
        self.save(ci, None, SavedKind::Setting, out);
    }

    /// Every tunable setting of each trigger of camera `ci` (retained).
    pub(super) fn publish_tuning(&self, ci: usize, name: &str, out: &mut Vec<Act>) {
        let cam = &self.cams[ci];
        if let Some(t) = cam.triggers.get(name) {
            for tunable in Tunable::ALL {
                self.publish_retained(
                    out,
                    cam.topics.trigger_tuning(name, tunable.key()),
                    tunable.text(&t.cfg),
                );
            }
        }
    }

    /// Every retained topic of trigger `name`: state, attributes, snapshot, switch and
    /// settings.
    pub(super) fn trigger_topics(t: &Topics, name: &str) -> Vec<String> {
        let mut out = vec![
            t.trigger_state(name),
            t.trigger_attributes(name),
            t.trigger_snapshot(name),
            t.trigger_enabled(name),
        ];
        out.extend(Tunable::ALL.iter().map(|k| t.trigger_tuning(name, k.key())));
        out
    }

    /// A question typed into camera `ci`'s text entity (plain text on
    /// `{base}/question/set`): asked about the camera's picture like a `query` request;
    /// the answer, or why there is none, is retained on `{base}/answer`.
    pub(super) fn on_question(&mut self, now: Now, ci: usize, m: Incoming, out: &mut Vec<Act>) {
        let text = String::from_utf8_lossy(&m.payload).trim().to_owned();
        let topics = self.cams[ci].topics.clone();
        if text.is_empty() {
            if let Some(a) = m.ack {
                out.push(Act::Ack(a));
            }
            return;
        }
        let question: String = text.chars().take(QUESTION_MAX).collect();
        self.publish_retained(out, topics.question(), question.clone());
        let reply = ReplyTo {
            name: "question".into(),
            address: ReplyAddress {
                topic: topics.answer(),
                correlation: None,
            },
            transaction: None,
            ack: m.ack,
            expiry: None,
            key: None,
            worker: None,
            question: Some(question.clone()),
        };
        let skill = Skill::Query { question };
        if let Err(e) = crate::vision::prompt::check(&skill) {
            return self.reply(now, reply, Err(ApiError::new(Code::BadRequest, e)), out);
        }
        if self.life.stopping.is_some() {
            let e = ApiError::new(Code::ShuttingDown, "moonwatch is stopping");
            return self.reply(now, reply, Err(e), out);
        }
        let job = Pending {
            cam: Some(ci),
            reply,
            skill,
            image: None,
            zone: None,
            annotate: false,
            received: now.mono,
            deadline: now.mono,
        };
        self.enqueue(now, None, job, "requests", out);
    }
}

/// The retained answer to a question from the text entity.
pub(super) fn asked(
    now: Now,
    question: String,
    result: &Result<ReplyData, ApiError>,
) -> wire::Asked {
    let mut v = wire::Asked {
        question,
        answer: String::new(),
        confidence: None,
        error: None,
        answered_at: now.unix,
        frame_seq: 0,
        frame_time: 0.0,
        total_ms: 0.0,
        image_encode_ms: 0.0,
        prefix_reused: false,
    };
    match result {
        Ok(ReplyData::Answer(a)) => {
            if let Answer::Query { answer, confidence } = &a.answered.answer {
                v.answer = answer.trim().to_owned();
                v.confidence = Some(*confidence);
            }
            v.frame_seq = a.frame_seq;
            v.frame_time = a.frame_time;
            v.total_ms = a.total_ms;
            v.image_encode_ms = a.image_encode_ms;
            v.prefix_reused = a.prefix_reused;
        }
        Ok(_) => v.error = Some("no answer".into()),
        Err(e) => v.error = Some(e.message.clone()),
    }
    v
}
