//! Replies: the reply envelope with its acknowledgements and expiry, and the
//! conversions from engine results and errors.

use super::*;

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
        let transaction = to.transaction.clone();
        let body = match result {
            Ok(data) => wire::Reply {
                status: wire::Status::Ok,
                request: to.name.clone(),
                data: Some(data),
                error: None,
                transaction,
                worker: to.worker.clone(),
            },
            Err(e) => {
                self.counters.errors += 1;
                self.bad_requests += 1;
                tracing::debug!(request = ?to.name, code = ?e.code, message = ?e.message, "request failed");
                wire::Reply {
                    status: wire::Status::Error,
                    request: to.name.clone(),
                    data: None,
                    error: Some(wire::ErrorBody {
                        code: e.code,
                        message: e.message,
                    }),
                    transaction,
                    worker: to.worker.clone(),
                }
            }
        };
        let mut acks: Vec<AckToken> = to.ack.into_iter().collect();
        if let Some(k) = to.key {
            if let Some(Recent::InProgress(more)) = self.recent.get_mut(&k) {
                acks.append(more);
            }
            self.recent.insert(k, Recent::Done);
        }
        let expiry = match to.expiry {
            Some((secs, at)) => {
                let left = u64::from(secs).saturating_sub(now.mono.duration_since(at).as_secs());
                left.max(1) as u32
            }
            None => self
                .cfg
                .daemon
                .request_timeout
                .clamp(1, u64::from(u32::MAX)) as u32,
        };
        tracing::debug!(request = ?to.name, topic = ?to.address.topic, "reply");
        out.push(Act::Publish(Outgoing {
            topic: to.address.topic,
            payload: wire::to_bytes(&body).into(),
            class: Class::Reply,
            correlation: to.address.correlation.map(Bytes::from),
            expiry: Some(expiry),
            response_topic: None,
            acks,
        }));
    }

    pub(super) fn publish_retained(
        &self,
        out: &mut Vec<Act>,
        topic: String,
        payload: impl Into<Bytes>,
    ) {
        out.push(Act::Publish(Outgoing::retained(topic, payload)));
    }
}

pub(super) fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

pub(super) fn engine_error(e: EngineError, stopping: bool) -> ApiError {
    match e {
        EngineError::Image(m) => ApiError::new(Code::BadImage, m),
        EngineError::Invalid(m) => ApiError::new(Code::BadRequest, m),
        EngineError::Cancelled if stopping => {
            ApiError::new(Code::ShuttingDown, "moonwatch is stopping")
        }
        EngineError::Cancelled => {
            ApiError::new(Code::Timeout, "cancelled after daemon.request_timeout")
        }
        EngineError::Stopped => ApiError::new(Code::ShuttingDown, "the engine stopped"),
        EngineError::Busy(n) => {
            ApiError::new(Code::Busy, format!("the engine is busy ({n} waiting)"))
        }
        e => ApiError::new(Code::ModelError, e.to_string()),
    }
}

/// The reply data for the first answer of a response.
pub(super) fn answer_reply(r: &Response, frame: &Frame) -> wire::AnswerReply {
    let answered = r.answers.first().cloned().unwrap_or(Answered {
        answer: Answer::Query {
            answer: String::new(),
            confidence: 0.0,
        },
        timing: Default::default(),
    });
    wire::AnswerReply {
        answered,
        frame_time: unix(frame.captured_at),
        frame_seq: frame.seq,
        width: frame.width,
        height: frame.height,
        prefix_reused: r.prefix.reused,
        image_encode_ms: r.prefix.image_encode_ms,
        total_ms: r.total_ms,
        zone: None,
        annotated_topic: None,
    }
}
