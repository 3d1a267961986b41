//! Pictures: the JPEGs the core publishes (the camera's snapshot, a detection with its
//! boxes drawn, a trigger's own snapshot) are encoded by the executor off the core's loop
//! (`Act::Encode`); what waits on one (the topics it goes to, then an event or a reply)
//! goes out, in that order, when `Input::Encoded` brings it back. A camera's plain
//! snapshot is encoded once per frame.

use super::*;

/// What waits for a JPEG.
#[derive(Debug)]
pub(super) struct Encoding {
    cam: usize,
    /// The frame whose plain snapshot this is (cached per camera once encoded).
    plain_of: Option<u64>,
    /// Where the JPEG is published (retained).
    topics: Vec<String>,
    /// What goes out after it.
    then: Vec<Then>,
}

/// What goes out once a JPEG is published.
#[derive(Debug)]
pub(super) enum Then {
    Publish(Outgoing),
    /// A snapshot request's reply: it says how many bytes the JPEG has.
    Snapshot(ReplyTo, wire::SnapshotReply),
    Reply(ReplyTo, Result<ReplyData, ApiError>),
}

impl Core {
    /// The camera's plain snapshot of `frame`: published on `{base}/snapshot` (once per
    /// frame) and on `topics`, then `then`.
    pub(super) fn plain_picture(
        &mut self,
        now: Now,
        ci: usize,
        frame: &Arc<Frame>,
        topics: Vec<String>,
        then: Vec<Then>,
        out: &mut Vec<Act>,
    ) {
        if let Some((key, jpeg)) = &self.cams[ci].last_snapshot {
            if *key == frame.key {
                let jpeg = jpeg.clone();
                return self.pictured(now, jpeg, topics, then, out);
            }
        }
        let pending = self
            .encodes
            .values_mut()
            .find(|e| e.cam == ci && e.plain_of == Some(frame.key));
        if let Some(e) = pending {
            e.topics.extend(topics);
            e.then.extend(then);
            return;
        }
        let mut all = vec![self.cams[ci].topics.snapshot()];
        all.extend(topics);
        self.encode(ci, frame, None, Some(frame.key), all, then, out);
    }

    /// `frame` with `drawing` on it, published on `topics`, then `then`.
    pub(super) fn drawn_picture(
        &mut self,
        ci: usize,
        frame: &Arc<Frame>,
        drawing: Drawing,
        topics: Vec<String>,
        then: Vec<Then>,
        out: &mut Vec<Act>,
    ) {
        self.encode(ci, frame, Some(Box::new(drawing)), None, topics, then, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn encode(
        &mut self,
        cam: usize,
        frame: &Arc<Frame>,
        drawing: Option<Box<Drawing>>,
        plain_of: Option<u64>,
        topics: Vec<String>,
        then: Vec<Then>,
        out: &mut Vec<Act>,
    ) {
        let id = self.next_id();
        self.encodes.insert(
            id,
            Encoding {
                cam,
                plain_of,
                topics,
                then,
            },
        );
        out.push(Act::Encode {
            id,
            frame: frame.clone(),
            drawing,
        });
    }

    /// A JPEG the executor encoded.
    pub(super) fn on_encoded(&mut self, now: Now, id: u64, jpeg: Bytes, out: &mut Vec<Act>) {
        let Some(e) = self.encodes.remove(&id) else {
            return;
        };
        if let Some(key) = e.plain_of {
            self.cams[e.cam].last_snapshot = Some((key, jpeg.clone()));
        }
        self.pictured(now, jpeg, e.topics, e.then, out);
    }

    /// Pictures that did not come back in time at a stop: what waited for them goes out
    /// without them (a snapshot request is answered `shutting_down`).
    pub(super) fn abandon_pictures(&mut self, now: Now, out: &mut Vec<Act>) {
        for (_, e) in std::mem::take(&mut self.encodes) {
            for t in e.then {
                match t {
                    Then::Publish(m) => out.push(Act::Publish(m)),
                    Then::Snapshot(reply, _) => {
                        let e = ApiError::new(Code::ShuttingDown, "moonwatch is stopping");
                        self.reply(now, reply, Err(e), out);
                    }
                    Then::Reply(reply, result) => self.reply(now, reply, result, out),
                }
            }
        }
    }

    fn pictured(
        &mut self,
        now: Now,
        jpeg: Bytes,
        topics: Vec<String>,
        then: Vec<Then>,
        out: &mut Vec<Act>,
    ) {
        for topic in topics {
            self.publish_retained(out, topic, jpeg.clone());
        }
        for t in then {
            match t {
                Then::Publish(m) => out.push(Act::Publish(m)),
                Then::Snapshot(reply, mut data) => {
                    data.bytes = jpeg.len();
                    self.reply(now, reply, Ok(ReplyData::Snapshot(data)), out);
                }
                Then::Reply(reply, result) => self.reply(now, reply, result, out),
            }
        }
    }
}
