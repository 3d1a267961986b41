//! The core's rules, table-tested with a fake clock: no broker, camera or model.

use super::*;
use std::time::UNIX_EPOCH;

use serde_json::Value;

use crate::mqtt::wire::Reply;
use crate::vision::Answered;
use crate::vision::{PrefixTiming, SkillTiming};

fn t0() -> Now {
    Now {
        mono: Instant::now(),
        unix: 1_000_000.0,
    }
}

fn frame_at(now: Now, shade: u8) -> Arc<Frame> {
    let mut f = Frame::from_rgb(16, 16, vec![shade; 16 * 16 * 3]).expect("frame");
    f.captured_at = UNIX_EPOCH + Duration::from_secs_f64(now.unix);
    f.seq = 1;
    Arc::new(f)
}

fn running(f: Arc<Frame>) -> CameraView {
    CameraView {
        latest: Some(f),
        status: CameraStatus::Running,
    }
}

fn trigger(name: &str, question: &str, interval: u64) -> TriggerConfig {
    TriggerConfig {
        name: name.into(),
        question: Some(question.into()),
        object: None,
        threshold: 0.6,
        consecutive: 1,
        cooldown: 0,
        interval,
        recheck: 600,
        device_class: None,
        zone: None,
        annotate: None,
    }
}

fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    c.mqtt.prefix = "mw".into();
    c.daemon.request_timeout = 10;
    c.daemon.max_pending = 2;
    f(&mut c);
    c
}

fn core(cfg: Config, now: Now) -> Core {
    let mut c = Core::new(
        cfg,
        "cam",
        Vec::new(),
        Vec::new(),
        Some(Duration::from_secs(2)),
        now,
    );
    let cam = CameraView {
        latest: None,
        status: CameraStatus::Starting,
    };
    c.handle(
        now,
        &cam,
        Input::Mqtt(MqttEvent::Connected {
            session_present: false,
        }),
    );
    sync(&mut c, now, &cam);
    c
}

/// The broker grants the subscriptions and returns the discovery marker (no retained
/// discovery configs): what discovery publishes.
fn sync(c: &mut Core, now: Now, cam: &CameraView) -> Vec<Act> {
    let acts = c.handle(
        now,
        cam,
        Input::Mqtt(MqttEvent::Subscribed { refused: vec![] }),
    );
    let marker = acts
        .iter()
        .find_map(|a| match a {
            Act::Publish(m) if m.topic.ends_with("/discovery/sync") => Some(m.clone()),
            _ => None,
        })
        .expect("the discovery marker");
    c.handle(now, cam, message(&marker.topic, &marker.payload, None))
}

/// A message on `topic` (QoS 1 when `pkid` is given).
fn message(topic: &str, payload: &[u8], pkid: Option<u16>) -> Input {
    Input::Mqtt(MqttEvent::Message(Incoming {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        response_topic: None,
        correlation: None,
        expiry: None,
        redelivered: false,
        ack: pkid.map(|pkid| AckToken {
            connection: 1,
            pkid,
        }),
    }))
}

/// Topics published empty (retained state cleared, discovery configs removed).
fn cleared(acts: &[Act]) -> Vec<&str> {
    acts.iter()
        .filter_map(|a| match a {
            Act::Publish(m) if m.payload.is_empty() => Some(m.topic.as_str()),
            _ => None,
        })
        .collect()
}

/// A QoS 1 request on `mw/cam/request/{name}`.
fn request(name: &str, body: &str, pkid: u16) -> Input {
    request_at(&format!("mw/cam/request/{name}"), body, pkid)
}

/// A QoS 1 request (or pool job) on `topic`.
fn request_at(topic: &str, body: &str, pkid: u16) -> Input {
    Input::Mqtt(MqttEvent::Message(Incoming {
        topic: topic.into(),
        payload: Bytes::from(body.to_owned()),
        response_topic: Some("client/replies".into()),
        correlation: Some(Bytes::from(format!("c{pkid}"))),
        expiry: None,
        redelivered: false,
        ack: Some(AckToken {
            connection: 1,
            pkid,
        }),
    }))
}

fn replies(acts: &[Act]) -> Vec<(Reply, Vec<u16>)> {
    acts.iter()
        .filter_map(|a| match a {
            Act::Publish(m) if m.class == Class::Reply => Some((
                serde_json::from_slice(&m.payload).expect("reply json"),
                m.acks.iter().map(|t| t.pkid).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn codes(acts: &[Act]) -> Vec<String> {
    replies(acts)
        .into_iter()
        .map(|(r, _)| match r.error {
            Some(e) => serde_json::to_value(e.code)
                .expect("code")
                .as_str()
                .unwrap_or("")
                .to_owned(),
            None => "ok".into(),
        })
        .collect()
}

fn submitted(acts: &[Act]) -> Option<(u64, Vec<Skill>)> {
    acts.iter().find_map(|a| match a {
        Act::Submit { job, skills, .. } => Some((*job, skills.clone())),
        _ => None,
    })
}

fn published<'a>(acts: &'a [Act], topic: &str) -> Vec<&'a Outgoing> {
    acts.iter()
        .filter_map(|a| match a {
            Act::Publish(m) if m.topic == topic => Some(m),
            _ => None,
        })
        .collect()
}

fn yes_no(yes: bool) -> Response {
    Response {
        frame_key: String::new(),
        prefix: PrefixTiming::default(),
        answers: vec![Answered {
            answer: Answer::YesNo {
                answer: Some(yes),
                confidence: 0.9,
                p_yes: if yes { 0.9 } else { 0.1 },
                p_no: if yes { 0.1 } else { 0.9 },
            },
            timing: SkillTiming::default(),
        }],
        queued_ms: 0.0,
        total_ms: 1.0,
    }
}

fn query(text: &str) -> Response {
    Response {
        answers: vec![Answered {
            answer: Answer::Query {
                answer: text.into(),
                confidence: 0.75,
            },
            timing: SkillTiming::default(),
        }],
        ..yes_no(true)
    }
}

/// A response with one answer.
fn answering(answer: Answer) -> Response {
    Response {
        answers: vec![Answered {
            answer,
            timing: SkillTiming::default(),
        }],
        ..yes_no(true)
    }
}

/// A small PNG, base64, as a request's `image`.
fn png_base64() -> String {
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, out.into_inner())
}

fn done(job: u64, r: Result<Response, EngineError>, f: &Arc<Frame>) -> Input {
    Input::EngineDone {
        job,
        result: r,
        frame: Some(f.clone()),
    }
}

/// A core started with `saved` runtime triggers, and what it publishes on connecting.
fn restarted(cfg: Config, saved: RuntimeTriggers, now: Now, cam: &CameraView) -> (Core, Vec<Act>) {
    let mut c = Core::new(cfg, "cam", vec![saved], Vec::new(), None, now);
    let acts = c.handle(
        now,
        cam,
        Input::Mqtt(MqttEvent::Connected {
            session_present: false,
        }),
    );
    (c, acts)
}

fn switch(name: &str, payload: &str, pkid: u16) -> Input {
    Input::Mqtt(MqttEvent::Message(Incoming {
        topic: format!("mw/cam/trigger/{name}/set"),
        payload: Bytes::from(payload.to_owned()),
        response_topic: None,
        correlation: None,
        expiry: None,
        redelivered: false,
        ack: Some(AckToken {
            connection: 1,
            pkid,
        }),
    }))
}

/// Two `[[camera]]` sections, `a` and `b`, with the given triggers.
fn two_cameras(a: Vec<TriggerConfig>, b: Vec<TriggerConfig>) -> Config {
    let cam = |name: &str, triggers| crate::config::CameraConfig {
        name: name.into(),
        triggers,
        ..Default::default()
    };
    config(|c| {
        c.daemon.max_pending = 16;
        c.camera = crate::config::Cameras::Many(vec![cam("a", a), cam("b", b)]);
    })
}

/// The question of the skill submitted, and the picture's shade.
fn job_of(acts: &[Act]) -> Option<(u64, String, u8)> {
    acts.iter().find_map(|a| match a {
        Act::Submit {
            job,
            picture: Picture::Frame(f),
            skills,
            ..
        } => {
            let q = match &skills[0] {
                Skill::YesNo { question } | Skill::Query { question } => question.clone(),
                Skill::Detect { object } => object.clone(),
                s => format!("{s:?}"),
            };
            Some((*job, q, f.rgb[0]))
        }
        _ => None,
    })
}

fn request_on(camera: &str, name: &str, body: &str, pkid: u16) -> Input {
    request_at(&format!("mw/{camera}/request/{name}"), body, pkid)
}

fn detect_answer(boxes: Vec<crate::vision::parse::BBox>) -> Response {
    answering(Answer::Detect {
        present: Some(!boxes.is_empty()),
        confidence: 0.9,
        objects: boxes,
        method: crate::vision::Method::PromptedBoxes,
        raw: String::new(),
        parsed: true,
    })
}

fn whole() -> crate::vision::parse::BBox {
    crate::vision::parse::BBox {
        x_min: 0.0,
        y_min: 0.0,
        x_max: 1.0,
        y_max: 1.0,
    }
}

/// The `Act::Save` among `acts`: (save id, triggers added).
fn save_of(acts: &[Act]) -> Option<(u64, usize)> {
    acts.iter().find_map(|a| match a {
        Act::Save { save, triggers, .. } => Some((*save, triggers.added.len())),
        _ => None,
    })
}

fn health_problems(c: &mut Core, now: Now, cam: &CameraView, pkid: u16) -> String {
    let acts = c.handle(now, cam, request("health_check", "{}", pkid));
    let v = serde_json::to_value(replies(&acts).remove(0).0.data).expect("json");
    v["problems"].to_string()
}

/// Connected and subscribed, with the broker's retained discovery configs not read yet.
fn connecting(cfg: Config, now: Now) -> (Core, Vec<Act>) {
    let mut c = Core::new(cfg, "cam", Vec::new(), Vec::new(), None, now);
    let cam = running(frame_at(now, 1));
    let mut acts = c.handle(
        now,
        &cam,
        Input::Mqtt(MqttEvent::Connected {
            session_present: false,
        }),
    );
    acts.extend(c.handle(
        now,
        &cam,
        Input::Mqtt(MqttEvent::Subscribed { refused: vec![] }),
    ));
    (c, acts)
}

fn marker(acts: &[Act]) -> Outgoing {
    acts.iter()
        .find_map(|a| match a {
            Act::Publish(m) if m.topic == "mw/cam/discovery/sync" => Some(m.clone()),
            _ => None,
        })
        .expect("marker")
}

fn on(topic: &str, payload: &str, pkid: u16) -> Input {
    message(topic, payload.as_bytes(), Some(pkid))
}

fn saved(acts: &[Act]) -> Option<RuntimeTriggers> {
    acts.iter().find_map(|a| match a {
        Act::Save { triggers, .. } => Some(triggers.clone()),
        _ => None,
    })
}

/// Carries out the picture encodes among `acts` as the executor would: `acts`, then what
/// the core does with the pictures.
fn with_pictures(c: &mut Core, now: Now, cam: &(impl Views + ?Sized), acts: Vec<Act>) -> Vec<Act> {
    let mut acts = acts;
    let mut i = 0;
    while i < acts.len() {
        if let Act::Encode { id, frame, drawing } = &acts[i] {
            let jpeg = match drawing {
                Some(d) => crate::annotate::annotated_jpeg(frame, &d.answer, &d.object, d.zone),
                None => frame.to_jpeg(85),
            };
            let id = *id;
            let more = c.handle(
                now,
                cam,
                Input::Encoded {
                    id,
                    jpeg: Bytes::from(jpeg),
                },
            );
            acts.extend(more);
        }
        i += 1;
    }
    acts
}

mod cameras;
mod home_assistant;
mod lifecycle;
mod pool;
mod requests;
mod triggers;
