//! One type per request of the API (docs/mqtt-api.md), as its JSON body on
//! `{base}/request/{name}`: what each request takes, checked once when it is parsed, and
//! what clients (the CLI with `--broker`, a camera node's pool) build and send. Each has a
//! JSON Schema of its own (`request.{name}`). Pure.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::triggers::TriggerConfig;
use crate::vision::{CaptionLength, Skill};
use crate::zone::ZoneRef;

/// `query`: a free question about the picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub question: String,
    /// A JPEG or PNG image, base64; the camera's newest frame when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Look at this part of the picture only: a zone of the camera by name, or
    /// `[x_min, y_min, x_max, y_max]` (relative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneRef>,
    /// Echoed in the reply, any JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Value>,
    /// Reply topic (for MQTT v3.1.1 clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// `yes_no`: a yes/no question, answered with a confidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct YesNo {
    pub question: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// `caption`: describe the picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Caption {
    /// `short`, `normal` (the default) or `long`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<CaptionLength>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// `detect` (boxes) and `point` (points): where an object is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Locate {
    pub object: String,
    /// Also publish the picture with the results drawn on it (JPEG, retained) on
    /// `{base}/annotated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// `trigger_add`: add or replace a standing trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerAdd {
    pub trigger: TriggerConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// `trigger_remove`: remove a trigger by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRemove {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// `snapshot`, `trigger_list`, `health_check`: nothing but the envelope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plain {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// Every request, by its name.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Query(Query),
    YesNo(YesNo),
    Caption(Caption),
    Detect(Locate),
    Point(Locate),
    Snapshot(Plain),
    TriggerAdd(TriggerAdd),
    TriggerRemove(TriggerRemove),
    TriggerList(Plain),
    HealthCheck(Plain),
}

/// The request names, as topics end.
pub const NAMES: &[&str] = &[
    "query",
    "yes_no",
    "caption",
    "detect",
    "point",
    "snapshot",
    "trigger_add",
    "trigger_remove",
    "trigger_list",
    "health_check",
];

/// Why a body is not the request its topic names: an unknown name, or what is wrong in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    UnknownRequest(String),
    Bad(String),
}

impl Request {
    /// Request `name` from its JSON body (an object).
    pub fn parse(name: &str, body: Value) -> Result<Self, ParseError> {
        fn typed<T: serde::de::DeserializeOwned>(name: &str, v: Value) -> Result<T, ParseError> {
            serde_json::from_value(v).map_err(|e| {
                let text = e.to_string();
                // "missing field `question`": said as the API says it.
                match text
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    Some("trigger") => {
                        ParseError::Bad(format!("request/{name} needs a \"trigger\" object"))
                    }
                    Some(field) => {
                        ParseError::Bad(format!("request/{name} needs a non-empty \"{field}\""))
                    }
                    None => ParseError::Bad(text),
                }
            })
        }
        let r = match name {
            "query" => Self::Query(typed(name, body)?),
            "yes_no" => Self::YesNo(typed(name, body)?),
            "caption" => Self::Caption(typed(name, body)?),
            "detect" => Self::Detect(typed(name, body)?),
            "point" => Self::Point(typed(name, body)?),
            "snapshot" => Self::Snapshot(typed(name, body)?),
            "trigger_add" => Self::TriggerAdd(typed(name, body)?),
            "trigger_remove" => Self::TriggerRemove(typed(name, body)?),
            "trigger_list" => Self::TriggerList(typed(name, body)?),
            "health_check" => Self::HealthCheck(typed(name, body)?),
            other => {
                return Err(ParseError::UnknownRequest(format!(
                    "unknown request {other:?}; known: {}",
                    NAMES.join(", ")
                )))
            }
        };
        // A required text is there and says something.
        let needs = |field: &str, v: &str| {
            if v.trim().is_empty() {
                Err(ParseError::Bad(format!(
                    "request/{name} needs a non-empty \"{field}\""
                )))
            } else {
                Ok(())
            }
        };
        match &r {
            Self::Query(Query { question, .. }) | Self::YesNo(YesNo { question, .. }) => {
                needs("question", question)?
            }
            Self::Detect(l) | Self::Point(l) => needs("object", &l.object)?,
            Self::TriggerRemove(t) => needs("name", &t.name)?,
            _ => {}
        }
        Ok(r)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Query(_) => "query",
            Self::YesNo(_) => "yes_no",
            Self::Caption(_) => "caption",
            Self::Detect(_) => "detect",
            Self::Point(_) => "point",
            Self::Snapshot(_) => "snapshot",
            Self::TriggerAdd(_) => "trigger_add",
            Self::TriggerRemove(_) => "trigger_remove",
            Self::TriggerList(_) => "trigger_list",
            Self::HealthCheck(_) => "health_check",
        }
    }

    /// The request that runs `skill`, on `image` (base64) when given.
    pub fn skill(skill: &Skill, image: Option<String>) -> Self {
        match skill {
            Skill::Query { question } => Self::Query(Query {
                question: question.clone(),
                image,
                zone: None,
                transaction: None,
                reply_to: None,
            }),
            Skill::YesNo { question } => Self::YesNo(YesNo {
                question: question.clone(),
                image,
                zone: None,
                transaction: None,
                reply_to: None,
            }),
            Skill::Caption { length } => Self::Caption(Caption {
                length: Some(*length),
                image,
                zone: None,
                transaction: None,
                reply_to: None,
            }),
            Skill::Detect { object } | Skill::Point { object } => {
                let l = Locate {
                    object: object.clone(),
                    annotate: None,
                    image,
                    zone: None,
                    transaction: None,
                    reply_to: None,
                };
                if matches!(skill, Skill::Detect { .. }) {
                    Self::Detect(l)
                } else {
                    Self::Point(l)
                }
            }
        }
    }

    /// The skill a skill request runs.
    pub fn as_skill(&self) -> Option<Skill> {
        Some(match self {
            Self::Query(q) => Skill::Query {
                question: q.question.clone(),
            },
            Self::YesNo(q) => Skill::YesNo {
                question: q.question.clone(),
            },
            Self::Caption(c) => Skill::Caption {
                length: c.length.unwrap_or_default(),
            },
            Self::Detect(l) => Skill::Detect {
                object: l.object.clone(),
            },
            Self::Point(l) => Skill::Point {
                object: l.object.clone(),
            },
            _ => return None,
        })
    }

    /// The JSON body to publish.
    pub fn body(&self) -> Value {
        let v = match self {
            Self::Query(r) => serde_json::to_value(r),
            Self::YesNo(r) => serde_json::to_value(r),
            Self::Caption(r) => serde_json::to_value(r),
            Self::Detect(r) | Self::Point(r) => serde_json::to_value(r),
            Self::TriggerAdd(r) => serde_json::to_value(r),
            Self::TriggerRemove(r) => serde_json::to_value(r),
            Self::Snapshot(r) | Self::TriggerList(r) | Self::HealthCheck(r) => {
                serde_json::to_value(r)
            }
        };
        v.unwrap_or_default()
    }

    /// The picture a skill request names: (image, zone).
    pub fn picture(&self) -> (Option<&str>, Option<&ZoneRef>) {
        let (i, z) = match self {
            Self::Query(x) => (&x.image, &x.zone),
            Self::YesNo(x) => (&x.image, &x.zone),
            Self::Caption(x) => (&x.image, &x.zone),
            Self::Detect(x) | Self::Point(x) => (&x.image, &x.zone),
            _ => return (None, None),
        };
        (i.as_deref(), z.as_ref())
    }

    /// JSON Schemas of every request's body, by name (`request.query`, ...).
    pub fn schemas() -> Vec<(&'static str, Value)> {
        fn one<T: JsonSchema>() -> Value {
            serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
        }
        vec![
            ("request.query", one::<Query>()),
            ("request.yes_no", one::<YesNo>()),
            ("request.caption", one::<Caption>()),
            ("request.detect", one::<Locate>()),
            ("request.point", one::<Locate>()),
            ("request.snapshot", one::<Plain>()),
            ("request.trigger_add", one::<TriggerAdd>()),
            ("request.trigger_remove", one::<TriggerRemove>()),
            ("request.trigger_list", one::<Plain>()),
            ("request.health_check", one::<Plain>()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_request_takes_only_its_own_fields() {
        assert!(matches!(
            Request::parse("query", json!({"question": "Q?", "transaction": 7})),
            Ok(Request::Query(Query { ref question, .. })) if question == "Q?"
        ));
        // A field another request takes is not this one's.
        assert!(matches!(
            Request::parse("query", json!({"question": "Q?", "object": "cat"})),
            Err(ParseError::Bad(m)) if m.contains("object")
        ));
        assert!(matches!(
            Request::parse("snapshot", json!({"zone": "gate"})),
            Err(ParseError::Bad(_))
        ));
        assert_eq!(
            Request::parse("detect", json!({"object": " "})),
            Err(ParseError::Bad(
                "request/detect needs a non-empty \"object\"".into()
            ))
        );
        assert_eq!(
            Request::parse("yes_no", json!({})),
            Err(ParseError::Bad(
                "request/yes_no needs a non-empty \"question\"".into()
            ))
        );
        assert!(matches!(
            Request::parse("frobnicate", json!({})),
            Err(ParseError::UnknownRequest(_))
        ));
        assert_eq!(NAMES.len(), Request::schemas().len());
    }

    #[test]
    fn a_skill_request_round_trips_through_its_body() {
        for skill in [
            Skill::Query {
                question: "What?".into(),
            },
            Skill::YesNo {
                question: "Is it?".into(),
            },
            Skill::Caption {
                length: CaptionLength::Long,
            },
            Skill::Detect {
                object: "car".into(),
            },
            Skill::Point {
                object: "door".into(),
            },
        ] {
            let r = Request::skill(&skill, Some("aGVsbG8=".into()));
            let back = Request::parse(r.name(), r.body()).unwrap();
            assert_eq!(back, r);
            assert_eq!(back.as_skill(), Some(skill));
            assert_eq!(back.picture().0, Some("aGVsbG8="));
        }
    }
}
