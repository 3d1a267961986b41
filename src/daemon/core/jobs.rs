//! Jobs: starting one (on this node's engine or the pool) and what a finished one does
//! (a reply, a trigger's answer, a caption).

use super::*;

impl Core {
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
                Some(o.picture_side(now))
            }
            _ => None,
        };
        self.sched.in_flight.insert(
            job,
            InFlight {
                job,
                work,
                started: now.mono,
                cancelled: false,
                place: if pool.is_some() {
                    Place::Pool
                } else {
                    Place::Local
                },
            },
        );
        if let Some(side) = pool {
            out.push(Act::PoolPicture {
                job,
                picture,
                zone,
                side,
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
