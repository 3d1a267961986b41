//! The MQTT topic API: topic names, request parsing and reply payloads. Pure: bytes in,
//! typed requests or typed errors out; see docs/mqtt-api.md for the reference.

use base64::Engine as _;
use serde_json::{json, Value};

use super::requests::{ParseError, Request};
use super::topics::Topics;
pub use super::wire::Code;
use crate::triggers::TriggerConfig;
use crate::vision::{CaptionLength, Skill};

/// A failed request: a code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run a skill on the request's image or the newest camera frame.
    Skill(Skill),
    /// Publish and return the newest frame as JPEG.
    Snapshot,
    /// Add (or replace) a standing trigger; kept across restarts.
    AddTrigger(TriggerConfig),
    RemoveTrigger(String),
    ListTriggers,
    /// Answer at once (liveness check).
    HealthCheck,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub action: Action,
    /// An image carried by the request (JPEG/PNG bytes, raw or base64 in JSON).
    pub image: Option<Vec<u8>>,
    /// Echoed in the reply (Zigbee2MQTT style), any JSON value.
    pub transaction: Option<Value>,
    /// Reply topic asked for in the payload (MQTT v3.1.1 clients).
    pub reply_to: Option<String>,
    /// The part of the picture to look at.
    pub zone: Option<crate::zone::ZoneRef>,
    /// Publish the picture with the boxes or points drawn on it.
    pub annotate: bool,
}

/// Where a reply goes and what travels with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    pub topic: String,
    /// MQTT v5 Correlation Data, echoed unchanged.
    pub correlation: Option<Vec<u8>>,
}

/// Picks the reply address: the v5 Response Topic, else the payload's `reply_to`, else
/// `{base}/response/{name}`.
pub fn reply_address(
    topics: &Topics,
    name: &str,
    response_topic: Option<&str>,
    correlation: Option<&[u8]>,
    reply_to: Option<&str>,
) -> ReplyAddress {
    let topic = response_topic
        .filter(|t| valid_publish_topic(t))
        .or(reply_to.filter(|t| valid_publish_topic(t)))
        .map(str::to_owned)
        .unwrap_or_else(|| topics.response(name));
    ReplyAddress {
        topic,
        correlation: correlation.map(<[u8]>::to_vec),
    }
}

/// A topic the broker will take: a PUBLISH to anything else makes brokers drop the
/// connection, and a persistent session would send it again on every reconnect.
fn valid_publish_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['#', '+']) && !t.chars().any(char::is_control) && t.len() < 65_535
}

fn looks_like_image(b: &[u8]) -> bool {
    b.starts_with(&[0xff, 0xd8, 0xff]) || b.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// Parses a request published on `{base}/request/{name}`.
///
/// Errors carry whatever `transaction` and `reply_to` could still be read, so that even a
/// bad request is answered where the client listens.
pub fn parse_request(
    name: &str,
    payload: &[u8],
    max_payload: usize,
) -> Result<ApiRequest, (ApiError, Option<Value>, Option<String>)> {
    let fail = |code, msg: String| (ApiError::new(code, msg), None, None);
    if payload.len() > max_payload {
        return Err(fail(
            Code::TooLarge,
            format!(
                "payload is {} bytes; at most {max_payload} are accepted",
                payload.len()
            ),
        ));
    }
    // A bare image is a caption request (or a snapshot-less skill without parameters).
    if looks_like_image(payload) {
        let action = match name {
            "caption" => Action::Skill(Skill::Caption { length: CaptionLength::default() }),
            _ => {
                return Err(fail(
                    Code::BadRequest,
                    format!("a bare image payload is accepted by request/caption only; send JSON with \"image\" (base64) to {name}"),
                ))
            }
        };
        return Ok(ApiRequest {
            action,
            image: Some(payload.to_vec()),
            transaction: None,
            reply_to: None,
            zone: None,
            annotate: false,
        });
    }
    let value: Value = if payload.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(payload)
            .map_err(|e| fail(Code::BadJson, format!("payload is not JSON: {e}")))?
    };
    if !value.is_object() {
        return Err(fail(Code::BadJson, "payload must be a JSON object".into()));
    }
    let transaction = value.get("transaction").cloned();
    let reply_to = value
        .get("reply_to")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let bad = |code, msg: String| {
        (
            ApiError::new(code, msg),
            transaction.clone(),
            reply_to.clone(),
        )
    };
    let request = Request::parse(name, value).map_err(|e| match e {
        ParseError::UnknownRequest(m) => bad(Code::UnknownRequest, m),
        ParseError::Bad(m) => bad(Code::BadRequest, m),
    })?;
    let (image, zone) = request.picture();
    let (image, zone) = (image.map(str::to_owned), zone.cloned());
    let annotate = match &request {
        Request::Detect(l) | Request::Point(l) => l.annotate.unwrap_or(false),
        _ => false,
    };
    let action = match request {
        Request::Snapshot(_) => Action::Snapshot,
        Request::HealthCheck(_) => Action::HealthCheck,
        Request::TriggerList(_) => Action::ListTriggers,
        Request::TriggerAdd(t) => {
            let problems: Vec<String> = t
                .trigger
                .problems()
                .into_iter()
                .map(|(k, m)| format!("trigger.{k}: {m}"))
                .collect();
            if !problems.is_empty() {
                return Err(bad(Code::BadRequest, problems.join("; ")));
            }
            Action::AddTrigger(t.trigger)
        }
        Request::TriggerRemove(t) => Action::RemoveTrigger(t.name),
        skill => match skill.as_skill() {
            Some(s) => Action::Skill(s),
            None => {
                return Err(bad(
                    Code::BadRequest,
                    format!("request/{name} is not a skill"),
                ))
            }
        },
    };
    if let Action::Skill(skill) = &action {
        crate::vision::prompt::check(skill).map_err(|m| bad(Code::BadRequest, m))?;
    }
    let image = match image {
        Some(b64) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| bad(Code::BadImage, format!("\"image\" is not base64: {e}")))?,
        ),
        None => None,
    };
    Ok(ApiRequest {
        action,
        image,
        transaction,
        reply_to,
        zone,
        annotate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttConfig;

    #[test]
    fn skill_requests_parse_back_to_their_skill() {
        let skills = [
            Skill::Query {
                question: "Q?".into(),
            },
            Skill::YesNo {
                question: "Y?".into(),
            },
            Skill::Caption {
                length: CaptionLength::Long,
            },
            Skill::Detect {
                object: "car".into(),
            },
            Skill::Point {
                object: "cat".into(),
            },
        ];
        for skill in skills {
            let r = Request::skill(&skill, None);
            let req =
                parse_request(r.name(), r.body().to_string().as_bytes(), 1 << 20).expect("parses");
            assert_eq!(req.action, Action::Skill(skill));
        }
    }

    fn topics() -> Topics {
        Topics::new(&MqttConfig::default(), "garage")
    }

    fn code(name: &str, payload: &[u8]) -> Code {
        parse_request(name, payload, 1024 * 1024)
            .unwrap_err()
            .0
            .code
    }

    #[test]
    fn good_requests_parse() {
        let r = parse_request(
            "query",
            br#"{"question":"What is there?","transaction":7}"#,
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            r.action,
            Action::Skill(Skill::Query {
                question: "What is there?".into()
            })
        );
        assert_eq!(r.transaction, Some(json!(7)));
        let r = parse_request("caption", b"", 1 << 20).unwrap();
        assert_eq!(
            r.action,
            Action::Skill(Skill::Caption {
                length: CaptionLength::Normal
            })
        );
        let r = parse_request(
            "caption",
            br#"{"length":"long","image":"aGVsbG8="}"#,
            1 << 20,
        )
        .unwrap();
        assert_eq!(r.image.as_deref(), Some(&b"hello"[..]));
        let jpeg = [0xff, 0xd8, 0xff, 0xe0, 0, 0];
        assert!(parse_request("caption", &jpeg, 1 << 20)
            .unwrap()
            .image
            .is_some());
        let r = parse_request(
            "trigger_add",
            br#"{"trigger":{"name":"door","question":"Is the door open?"},"reply_to":"me/replies"}"#,
            1 << 20,
        )
        .unwrap();
        assert!(
            matches!(r.action, Action::AddTrigger(ref t) if t.name == "door" && t.consecutive == 2)
        );
        assert_eq!(r.reply_to.as_deref(), Some("me/replies"));
    }

    #[test]
    fn bad_requests_get_codes() {
        assert_eq!(code("query", b"{not json"), Code::BadJson);
        assert_eq!(code("query", b"[1,2]"), Code::BadJson);
        assert_eq!(code("query", b"{}"), Code::BadRequest);
        assert_eq!(code("query", br#"{"question": 5}"#), Code::BadRequest);
        assert_eq!(code("query", br#"{"question": "   "}"#), Code::BadRequest);
        assert_eq!(
            code("query", br#"{"question": "q", "colour": "red"}"#),
            Code::BadRequest
        );
        assert_eq!(code("detect", br#"{"question": "q"}"#), Code::BadRequest);
        assert_eq!(code("dance", b"{}"), Code::UnknownRequest);
        assert_eq!(code("caption", br#"{"image": "!!!"}"#), Code::BadImage);
        assert_eq!(code("query", &[0xff, 0xd8, 0xff, 0xe0]), Code::BadRequest);
        assert_eq!(
            code(
                "trigger_add",
                br#"{"trigger":{"name":"X Y","question":"q"}}"#
            ),
            Code::BadRequest
        );
        assert_eq!(
            parse_request("query", &[b' '; 100], 10).unwrap_err().0.code,
            Code::TooLarge
        );
    }

    #[test]
    fn errors_keep_the_transaction_when_it_can_be_read() {
        let (e, t, r) = parse_request(
            "query",
            br#"{"transaction":"abc","reply_to":"x/y"}"#,
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
        assert_eq!((t, r.as_deref()), (Some(json!("abc")), Some("x/y")));
    }

    #[test]
    fn reply_addresses() {
        let t = topics();
        let a = reply_address(
            &t,
            "query",
            Some("client/inbox"),
            Some(b"\x01\x02"),
            Some("ignored"),
        );
        assert_eq!(
            a,
            ReplyAddress {
                topic: "client/inbox".into(),
                correlation: Some(vec![1, 2])
            }
        );
        assert_eq!(
            reply_address(&t, "query", None, None, Some("me/r")).topic,
            "me/r"
        );
        assert_eq!(
            reply_address(&t, "query", None, None, Some("bad/#")).topic,
            "moonwatch/garage/response/query"
        );
        assert_eq!(
            reply_address(&t, "query", None, None, None).topic,
            "moonwatch/garage/response/query"
        );
    }
}
