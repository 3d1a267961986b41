//! Replies: where a request is answered, the reply envelope with its acknowledgements and
//! expiry, and the conversions from engine results and errors. Functions of their inputs
//! only: nothing here knows the rest of the core.

use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use super::protocol::{unix, Now};
use crate::frame::Frame;
use crate::mqtt::api::{ApiError, Code, ReplyAddress};
use crate::mqtt::wire::{self, ReplyData};
use crate::mqtt::{AckToken, Class, Outgoing};
use crate::vision::{Answer, Answered, EngineError, Response};

/// Where and how a request is answered.
#[derive(Debug, Clone)]
pub(super) struct ReplyTo {
    pub(super) name: String,
    pub(super) address: ReplyAddress,
    pub(super) transaction: Option<Value>,
    pub(super) ack: Option<AckToken>,
    /// Message expiry of the request (v5), with when it was received.
    pub(super) expiry: Option<(u32, Instant)>,
    /// Key in `recent`, for requests that can be redelivered.
    pub(super) key: Option<u64>,
    /// The worker the reply names: this node for a pool job it serves, the worker that
    /// served a camera node's request through the pool.
    pub(super) worker: Option<String>,
    /// A question from a camera's text entity: the answer is retained on the address, as
    /// [`wire::Asked`].
    pub(super) question: Option<String>,
}

/// The reply to a request `to`, acknowledging `acks` once the broker has it; its expiry is
/// what is left of the request's, or `default_expiry` seconds.
pub(super) fn envelope(
    now: Now,
    to: ReplyTo,
    result: Result<ReplyData, ApiError>,
    acks: Vec<AckToken>,
    default_expiry: u64,
) -> Outgoing {
    let (status, data, error) = match result {
        Ok(data) => (wire::Status::Ok, Some(data), None),
        Err(e) => (
            wire::Status::Error,
            None,
            Some(wire::ErrorBody {
                code: e.code,
                message: e.message,
            }),
        ),
    };
    let body = wire::Reply {
        status,
        request: to.name.clone(),
        data,
        error,
        transaction: to.transaction,
        worker: to.worker,
    };
    let expiry = match to.expiry {
        Some((secs, at)) => {
            let left = u64::from(secs).saturating_sub(now.mono.duration_since(at).as_secs());
            left.max(1) as u32
        }
        None => default_expiry.clamp(1, u64::from(u32::MAX)) as u32,
    };
    tracing::debug!(request = ?to.name, topic = ?to.address.topic, "reply");
    Outgoing {
        topic: to.address.topic,
        payload: wire::to_bytes(&body).into(),
        class: Class::Reply,
        correlation: to.address.correlation.map(Bytes::from),
        expiry: Some(expiry),
        response_topic: None,
        acks,
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
