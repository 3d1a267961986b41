//! Triggers: added, replaced, removed and saved at runtime, and what an answer does to
//! a trigger's state, events and snapshot.

use super::*;

impl Core {
    // ---- triggers ---------------------------------------------------------------------

    pub(super) fn add_trigger(
        &mut self,
        now: Now,
        ci: usize,
        t: TriggerConfig,
        reply: ReplyTo,
        out: &mut Vec<Act>,
    ) {
        let cam = &self.cams[ci];
        let replaces = cam.triggers.contains_key(&t.name);
        let refused = if let Err(m) = cam.zone(t.zone.as_ref()) {
            Some(format!("trigger.zone: {m}"))
        } else if !replaces && cam.triggers.len() >= self.cfg.daemon.max_triggers {
            Some(format!(
                "{} triggers exist, daemon.max_triggers allows {}; remove one first",
                cam.triggers.len(),
                self.cfg.daemon.max_triggers
            ))
        } else {
            None
        };
        if let Some(m) = refused {
            return self.reply(now, reply, Err(ApiError::new(Code::BadRequest, m)), out);
        }
        let rt = &mut self.cams[ci].runtime;
        rt.removed.retain(|n| n != &t.name);
        // A trigger added again starts from its new definition.
        rt.tuned.remove(&t.name);
        rt.added.retain(|x| x.name != t.name);
        rt.added.push(t.clone());
        let name = t.name.clone();
        self.install_trigger(ci, t, out);
        self.save(ci, Some(reply), SavedKind::Added(name), out);
    }

    /// Adds or replaces a trigger with a fresh state, and its entities: a count sensor
    /// the old one had and the new one lacks is removed.
    pub(super) fn install_trigger(&mut self, ci: usize, cfg: TriggerConfig, out: &mut Vec<Act>) {
        let cam = &mut self.cams[ci];
        let t = cam.new_trigger(cfg);
        out.push(Act::Publish(Outgoing::retained(
            cam.topics.trigger_enabled(&t.cfg.name),
            on_off(t.enabled),
        )));
        let name = t.cfg.name.clone();
        if let Some(old) = cam.triggers.insert(name.clone(), t) {
            cam.forget(old.cfg);
        }
        cam.prune_scenes();
        let topics = Self::trigger_topics(&cam.topics, &name);
        self.keep(&topics);
        self.publish_tuning(ci, &name, out);
        self.publish_device_discovery(ci, out);
    }

    pub(super) fn remove_trigger(
        &mut self,
        now: Now,
        ci: usize,
        name: &str,
        reply: ReplyTo,
        out: &mut Vec<Act>,
    ) {
        let cam = &mut self.cams[ci];
        let Some(t) = cam.triggers.remove(name) else {
            let e = ApiError::new(Code::NotFound, format!("no trigger named {name:?}"));
            return self.reply(now, reply, Err(e), out);
        };
        cam.runtime.added.retain(|x| x.name != name);
        cam.runtime.disabled.retain(|n| n != name);
        cam.runtime.tuned.remove(name);
        if cam.spec.config.triggers.iter().any(|c| c.name == name)
            && !cam.runtime.removed.iter().any(|n| n == name)
        {
            cam.runtime.removed.push(name.to_owned());
        }
        self.clear_trigger(now, ci, &t.cfg, out);
        self.save(ci, Some(reply), SavedKind::Removed(name.to_owned()), out);
    }

    /// Saves camera `ci`'s runtime triggers; `reply` is answered once the save is done.
    pub(super) fn save(
        &mut self,
        ci: usize,
        reply: Option<ReplyTo>,
        data: SavedKind,
        out: &mut Vec<Act>,
    ) {
        let save = self.next_id();
        self.saving.insert(
            save,
            Saving {
                cam: ci,
                reply,
                data,
            },
        );
        let cam = &self.cams[ci];
        out.push(Act::Save {
            save,
            store: cam.spec.store.clone(),
            triggers: cam.runtime.clone(),
        });
    }

    pub(super) fn on_saved(
        &mut self,
        now: Now,
        save: u64,
        result: Result<(), String>,
        out: &mut Vec<Act>,
    ) {
        let Some(s) = self.saving.remove(&save) else {
            return;
        };
        let cam = &mut self.cams[s.cam];
        match &result {
            Err(e) => {
                tracing::warn!(camera = %cam.spec.id, "cannot save runtime triggers: {e}; trying again every {} s", SAVE_RETRY.as_secs());
                cam.unsaved = Some(Unsaved {
                    save,
                    error: e.clone(),
                    tried: now.mono,
                });
            }
            Ok(()) => {
                if cam.unsaved.as_ref().is_some_and(|u| u.save < save) {
                    tracing::info!(camera = %cam.spec.id, "runtime triggers saved again");
                    cam.unsaved = None;
                }
            }
        }
        let persisted = result.is_ok();
        let data = match s.data {
            SavedKind::Added(added) => ReplyData::Added(wire::TriggerAdded { added, persisted }),
            SavedKind::Removed(removed) => {
                ReplyData::Removed(wire::TriggerRemoved { removed, persisted })
            }
            SavedKind::Setting | SavedKind::Retry => return,
        };
        if let Some(reply) = s.reply {
            self.reply(now, reply, Ok(data), out);
        }
    }

    /// Deletes every entity and retained topic of a trigger (already taken out of the
    /// camera's triggers).
    pub(super) fn clear_trigger(
        &mut self,
        now: Now,
        ci: usize,
        cfg: &TriggerConfig,
        out: &mut Vec<Act>,
    ) {
        self.cams[ci].forget(cfg.clone());
        self.cams[ci].prune_scenes();
        self.publish_device_discovery(ci, out);
        let topics = Self::trigger_topics(&self.cams[ci].topics, &cfg.name);
        // Once Home Assistant has dropped the entities: an entity still reading a topic
        // would log the empty payload as bad JSON.
        self.clear_later(now, topics);
    }

    /// Trigger `name` of camera `ci`, evaluated on `zone` of `frame`, got `answer`.
    pub(super) fn on_trigger_answer(
        &mut self,
        now: Now,
        (ci, name, zone, cause): (usize, &str, Option<Zone>, Cause),
        answer: &Answer,
        frame: &Arc<Frame>,
        out: &mut Vec<Act>,
    ) {
        // Object triggers decide on the presence answer, like question triggers on theirs:
        // the same confidence against the same threshold. An uncertain answer (neither
        // yes nor no) is no observation.
        let (said, confidence, details) = match answer {
            Answer::YesNo {
                answer,
                confidence,
                p_yes,
                p_no,
            } => (
                *answer,
                *confidence,
                wire::Details::Question {
                    p_yes: *p_yes,
                    p_no: *p_no,
                },
            ),
            Answer::Detect {
                present,
                confidence,
                objects,
                ..
            } => {
                let cam = &self.cams[ci];
                let whole_frame = cam.triggers.get(name).is_some_and(|t| t.cfg.zone.is_none());
                let zones = if whole_frame {
                    crate::zone::count_in(&cam.spec.config.zones, objects)
                } else {
                    BTreeMap::new()
                };
                (
                    *present,
                    *confidence,
                    wire::Details::Object {
                        count: objects.len(),
                        objects: objects.clone(),
                        zones,
                    },
                )
            }
            _ => return,
        };
        let cam = &mut self.cams[ci];
        let Some(t) = cam.triggers.get_mut(name) else {
            return;
        };
        let changes = match said {
            Some(on) => t
                .state
                .observe(&t.cfg, Observation { on, confidence }, now.unix),
            None => Vec::new(),
        };
        let annotates = t.cfg.annotates();
        let object = t.cfg.object.clone().unwrap_or_default();
        let topics = cam.topics.clone();
        let attrs = wire::TriggerAttributes {
            confidence,
            answer: said,
            frame_time: unix(frame.captured_at),
            frame_seq: frame.seq,
            snapshot_topic: topics.trigger_snapshot(name),
            details,
            error: None,
            answered_at: Some(now.unix),
            cause: Some(cause),
        };
        self.publish_retained(out, topics.trigger_attributes(name), wire::to_bytes(&attrs));
        for change in changes {
            match change {
                Change::State(on) => {
                    self.publish_retained(out, topics.trigger_state(name), on_off(on))
                }
                Change::Begin | Change::End { .. } => {
                    let (kind, duration) = match change {
                        Change::End { duration } => {
                            (wire::EventKind::End, Some(duration.as_secs_f64()))
                        }
                        _ => (wire::EventKind::Begin, None),
                    };
                    tracing::info!(camera = %topics.device_id, trigger = ?name, ?kind, "trigger event");
                    let ev = wire::TriggerEvent {
                        kind,
                        event_type: kind,
                        trigger: name.to_owned(),
                        confidence,
                        frame_time: unix(frame.captured_at),
                        frame_seq: frame.seq,
                        snapshot_topic: topics.trigger_snapshot(name),
                        duration_s: duration,
                    };
                    let event = Outgoing::event(topics.trigger_event(name), wire::to_bytes(&ev));
                    if kind == wire::EventKind::Begin {
                        // The trigger's own snapshot first (what an automation on this
                        // begin wants: with the boxes drawn for an object), then the event;
                        // and the camera's snapshot.
                        let then = vec![pictures::Then::Publish(event)];
                        let own = vec![topics.trigger_snapshot(name)];
                        if annotates {
                            let drawing = Drawing {
                                answer: answer.clone(),
                                object: object.clone(),
                                zone,
                            };
                            let drawn = vec![topics.annotated(), own[0].clone()];
                            self.drawn_picture(ci, frame, drawing, drawn, then, out);
                            self.plain_picture(now, ci, frame, Vec::new(), Vec::new(), out);
                        } else {
                            self.plain_picture(now, ci, frame, own, then, out);
                        }
                    } else {
                        out.push(Act::Publish(event));
                    }
                }
            }
        }
    }

    /// A trigger the engine refused (or whose zone is gone): it gets an error and is no
    /// longer evaluated; the others go on.
    pub(super) fn trigger_failed(
        &mut self,
        ci: usize,
        name: &str,
        why: String,
        out: &mut Vec<Act>,
    ) {
        let cam = &mut self.cams[ci];
        let Some(t) = cam.triggers.get_mut(name) else {
            return;
        };
        tracing::warn!(camera = %cam.spec.id, trigger = ?name, reason = ?why, "the trigger cannot be evaluated; it is paused until replaced");
        t.error = Some(why.clone());
        let attrs = wire::TriggerAttributes {
            confidence: 0.0,
            answer: None,
            frame_time: 0.0,
            frame_seq: 0,
            snapshot_topic: cam.topics.trigger_snapshot(name),
            details: wire::Details::None {},
            error: Some(why),
            answered_at: t.evaluated.answered,
            cause: None,
        };
        let topic = cam.topics.trigger_attributes(name);
        self.publish_retained(out, topic, wire::to_bytes(&attrs));
    }
}

/// Configured triggers, less the removed, plus the added (an added one replaces a
/// configured one of the same name).
pub fn effective_triggers(
    configured: &[TriggerConfig],
    rt: &RuntimeTriggers,
) -> BTreeMap<String, TriggerConfig> {
    let mut out: BTreeMap<String, TriggerConfig> = configured
        .iter()
        .filter(|t| !rt.removed.contains(&t.name))
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    for t in &rt.added {
        out.insert(t.name.clone(), t.clone());
    }
    for (name, tuning) in &rt.tuned {
        if let Some(t) = out.get_mut(name) {
            *t = tuning.apply(t.clone());
        }
    }
    out
}
