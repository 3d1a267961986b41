//! The core's rules, table-tested with a fake clock: no broker, camera or model.

use super::*;
use crate::mqtt::wire::Reply;
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

#[test]
fn interactive_requests_go_before_triggers_and_triggers_before_captions() {
    let now = t0();
    let mut c = core(
        config(|c| {
            c.triggers = vec![trigger("door", "Is the door open?", 10)];
            c.daemon.caption_interval = 30;
        }),
        now,
    );
    let f = frame_at(now, 10);
    let cam = running(f.clone());
    // A request and the first tick arrive together: the request runs first.
    let acts = c.handle(
        now,
        &cam,
        request("query", r#"{"question":"What is here?"}"#, 1),
    );
    let (job, skills) = submitted(&acts).expect("the request runs");
    assert!(matches!(skills[0], Skill::Query { .. }));
    let acts = c.handle(now, &cam, done(job, Ok(query("a cat")), &f));
    let r = replies(&acts);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].1,
        vec![1],
        "the reply carries the request's acknowledgement"
    );
    let (job, skills) = submitted(&acts).expect("then the trigger");
    assert!(matches!(skills[0], Skill::YesNo { .. }));
    let acts = c.handle(now, &cam, done(job, Ok(yes_no(true)), &f));
    assert_eq!(published(&acts, "mw/cam/trigger/door").len(), 1, "state ON");
    let (_, skills) = submitted(&acts).expect("then the caption");
    assert!(matches!(skills[0], Skill::Caption { .. }));
}

#[test]
fn a_full_queue_answers_busy_and_a_late_request_times_out() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let f = frame_at(now, 10);
    let cam = running(f.clone());
    let body = r#"{"question":"What?"}"#;
    let acts = c.handle(now, &cam, request("query", body, 1));
    let (job, _) = submitted(&acts).expect("runs");
    // Engine busy: two may wait (max_pending = 2), the fourth is busy at once.
    assert!(c.handle(now, &cam, request("query", body, 2)).is_empty());
    assert!(c.handle(now, &cam, request("query", body, 3)).is_empty());
    assert_eq!(
        codes(&c.handle(now, &cam, request("query", body, 4))),
        ["busy"]
    );
    // The job takes longer than request_timeout (10 s): the waiting ones time out.
    let later = now.after(Duration::from_secs(11));
    let acts = c.handle(
        later,
        &running(frame_at(later, 10)),
        done(job, Ok(query("x")), &f),
    );
    assert_eq!(codes(&acts), ["ok", "timeout", "timeout"]);
}

#[test]
fn stale_or_missing_frames_answer_camera_unavailable_but_images_are_served() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let body = r#"{"question":"What?"}"#;
    // The newest frame is 20 s old: stale.
    let old = frame_at(now.after(Duration::ZERO), 10);
    let later = now.after(Duration::from_secs(20));
    let acts = c.handle(later, &running(old.clone()), request("query", body, 1));
    assert_eq!(codes(&acts), ["camera_unavailable"]);
    // The camera is down: a request with its own image still runs, on that image.
    let down = CameraView {
        latest: Some(old),
        status: CameraStatus::Down {
            reason: "unplugged".into(),
            retry_in: Duration::from_secs(1),
        },
    };
    let png = png_base64();
    let acts = c.handle(
        later,
        &down,
        request(
            "query",
            &format!(r#"{{"question":"What?","image":"{png}"}}"#),
            2,
        ),
    );
    assert!(acts.iter().any(|a| matches!(
        a,
        Act::Submit {
            picture: Picture::Encoded(_),
            ..
        }
    )));
    // Health says why.
    let acts = c.handle(later, &down, request("health_check", "{}", 3));
    let (r, _) = replies(&acts).remove(0);
    let v = serde_json::to_value(r.data).expect("json");
    assert_eq!(v["healthy"], false);
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap_or("")
            .contains("unplugged"),
        "{v}"
    );
}

#[test]
fn a_starting_camera_gets_a_grace_period() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let starting = CameraView {
        latest: None,
        status: CameraStatus::Starting,
    };
    assert!(c
        .handle(now, &starting, request("query", r#"{"question":"Q?"}"#, 1))
        .is_empty());
    let f = frame_at(now.after(Duration::from_secs(2)), 1);
    let acts = c.handle(now.after(Duration::from_secs(2)), &running(f), Input::Tick);
    assert!(
        submitted(&acts).is_some(),
        "runs once the first frame arrives"
    );

    let mut c = core(config(|_| {}), now);
    assert!(c
        .handle(now, &starting, request("query", r#"{"question":"Q?"}"#, 1))
        .is_empty());
    let acts = c.handle(now.after(Duration::from_secs(6)), &starting, Input::Tick);
    assert_eq!(codes(&acts), ["camera_unavailable"]);
}

#[test]
fn stop_answers_everything_received_then_publishes_offline_and_exits() {
    let now = t0();
    let mut c = core(config(|c| c.daemon.max_pending = 8), now);
    let f = frame_at(now, 10);
    let cam = running(f.clone());
    let body = r#"{"question":"What?"}"#;
    let (job, _) = submitted(&c.handle(now, &cam, request("query", body, 1))).expect("runs");
    for pkid in 2..6 {
        c.handle(now, &cam, request("query", body, pkid));
    }
    let acts = c.handle(now, &cam, Input::Stop);
    assert_eq!(codes(&acts), ["shutting_down"; 4]);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Act::Notify(Notify::Stopping))));
    assert!(
        !acts.iter().any(|a| matches!(a, Act::Exit)),
        "the answer in flight is awaited"
    );
    // Requests arriving now are refused.
    assert_eq!(
        codes(&c.handle(now, &cam, request("query", body, 9))),
        ["shutting_down"]
    );
    let acts = c.handle(now, &cam, done(job, Ok(query("a dog")), &f));
    assert_eq!(codes(&acts), ["ok"]);
    let offline = published(&acts, "mw/cam/availability");
    assert_eq!(&offline[0].payload[..], b"offline");
    assert!(matches!(acts.last(), Some(Act::Exit)));
}

#[test]
fn stop_gives_up_on_an_engine_that_does_not_return() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let cam = running(frame_at(now, 10));
    submitted(&c.handle(now, &cam, request("query", r#"{"question":"Q?"}"#, 1))).expect("runs");
    c.handle(now, &cam, Input::Stop);
    let acts = c.handle(now.after(Duration::from_secs(4)), &cam, Input::Tick);
    assert!(
        acts.iter().any(|a| matches!(a, Act::Cancel { .. })),
        "cancelled after the grace"
    );
    let acts = c.handle(now.after(Duration::from_secs(7)), &cam, Input::Tick);
    assert_eq!(codes(&acts), ["shutting_down"]);
    assert!(matches!(acts.last(), Some(Act::Exit)));
}

#[test]
fn trigger_intervals_count_from_the_end_and_an_unchanged_settled_scene_is_not_rerun() {
    let now = t0();
    let mut c = core(
        config(|c| c.triggers = vec![trigger("door", "Door open?", 10)]),
        now,
    );
    let f = frame_at(now, 10);
    let (job, _) =
        submitted(&c.handle(now, &running(f.clone()), Input::Tick)).expect("first evaluation");
    // The evaluation takes 16 s (a Pi): the next is due 10 s after it ended, not at 10 s.
    let end = now.after(Duration::from_secs(16));
    let acts = c.handle(
        end,
        &running(frame_at(end, 10)),
        done(job, Ok(yes_no(true)), &f),
    );
    assert!(submitted(&acts).is_none());
    let t = end.after(Duration::from_secs(9));
    assert!(submitted(&c.handle(t, &running(frame_at(t, 10)), Input::Tick)).is_none());
    // At 10 s the state is settled and the picture the same: the answer stands.
    let t = end.after(Duration::from_secs(10));
    assert!(submitted(&c.handle(t, &running(frame_at(t, 10)), Input::Tick)).is_none());
    assert_eq!(c.counters.trigger_skips, 1);
    // The scene changes: looked at again at once (at most once a second).
    let t = t.after(Duration::from_secs(1));
    let (job, _) =
        submitted(&c.handle(t, &running(frame_at(t, 200)), Input::Tick)).expect("changed");
    let acts = c.handle(
        t,
        &running(frame_at(t, 200)),
        done(job, Ok(yes_no(false)), &frame_at(t, 200)),
    );
    let events = published(&acts, "mw/cam/trigger/door/event");
    assert_eq!(events.len(), 1);
    let ev: wire::TriggerEvent = serde_json::from_slice(&events[0].payload).expect("event");
    assert_eq!(ev.kind, wire::EventKind::End);
}

#[test]
fn an_unsettled_trigger_is_evaluated_again_on_the_same_picture() {
    let now = t0();
    let mut tr = trigger("door", "Door open?", 10);
    tr.consecutive = 2;
    let mut c = core(config(|c| c.triggers = vec![tr]), now);
    let f = frame_at(now, 10);
    let (job, _) = submitted(&c.handle(now, &running(f.clone()), Input::Tick)).expect("first");
    c.handle(now, &running(f.clone()), done(job, Ok(yes_no(true)), &f));
    let t = now.after(Duration::from_secs(10));
    let (job, _) = submitted(&c.handle(t, &running(frame_at(t, 10)), Input::Tick))
        .expect("one agreeing answer is not enough: ask again");
    let acts = c.handle(
        t,
        &running(frame_at(t, 10)),
        done(job, Ok(yes_no(true)), &f),
    );
    assert_eq!(
        &published(&acts, "mw/cam/trigger/door")[0].payload[..],
        b"ON"
    );
}

#[test]
fn a_trigger_the_engine_refuses_is_paused_and_the_others_go_on() {
    let now = t0();
    let mut c = core(
        config(|c| c.triggers = vec![trigger("a", "A?", 1), trigger("b", "B?", 1)]),
        now,
    );
    let f = frame_at(now, 10);
    let cam = running(f.clone());
    let (job, skills) = submitted(&c.handle(now, &cam, Input::Tick)).expect("a");
    assert_eq!(
        skills,
        vec![Skill::YesNo {
            question: "A?".into()
        }]
    );
    let acts = c.handle(
        now,
        &cam,
        done(job, Err(EngineError::Invalid("too long".into())), &f),
    );
    let attrs: wire::TriggerAttributes =
        serde_json::from_slice(&published(&acts, "mw/cam/trigger/a/attributes")[0].payload)
            .expect("attrs");
    assert_eq!(attrs.error.as_deref(), Some("too long"));
    let (job, skills) = submitted(&acts).expect("b goes on");
    assert_eq!(
        skills,
        vec![Skill::YesNo {
            question: "B?".into()
        }]
    );
    c.handle(now, &cam, done(job, Ok(yes_no(true)), &f));
    for s in 2..6 {
        let t = now.after(Duration::from_secs(s));
        let acts = c.handle(t, &running(frame_at(t, (s * 40) as u8)), Input::Tick);
        if let Some((job, skills)) = submitted(&acts) {
            assert_eq!(
                skills,
                vec![Skill::YesNo {
                    question: "B?".into()
                }],
                "a stays paused"
            );
            c.handle(t, &running(frame_at(t, 1)), done(job, Ok(yes_no(true)), &f));
        }
    }
}

#[test]
fn captions_follow_their_interval() {
    let now = t0();
    let mut c = core(config(|c| c.daemon.caption_interval = 30), now);
    let f = frame_at(now, 10);
    let (job, _) = submitted(&c.handle(now, &running(f.clone()), Input::Tick)).expect("caption");
    let caption = answering(Answer::Caption {
        caption: "a porch".into(),
    });
    let acts = c.handle(now, &running(f.clone()), done(job, Ok(caption), &f));
    let cap: wire::Caption =
        serde_json::from_slice(&published(&acts, "mw/cam/caption")[0].payload).expect("caption");
    assert_eq!(cap.caption, "a porch");
    let t = now.after(Duration::from_secs(29));
    assert!(submitted(&c.handle(t, &running(frame_at(t, 10)), Input::Tick)).is_none());
    let t = now.after(Duration::from_secs(30));
    assert!(submitted(&c.handle(t, &running(frame_at(t, 10)), Input::Tick)).is_some());
}

#[test]
fn a_redelivered_request_is_not_run_twice_and_both_copies_are_acknowledged() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let f = frame_at(now, 10);
    let cam = running(f.clone());
    let body = r#"{"question":"What?"}"#;
    let (job, _) = submitted(&c.handle(now, &cam, request("query", body, 7))).expect("runs");
    // The broker redelivers it (a reconnect) while it runs, with a new packet id.
    let Input::Mqtt(MqttEvent::Message(mut again)) = request("query", body, 7) else {
        unreachable!()
    };
    again.redelivered = true;
    again.ack = Some(AckToken {
        connection: 2,
        pkid: 3,
    });
    let acts = c.handle(now, &cam, Input::Mqtt(MqttEvent::Message(again.clone())));
    assert!(acts.is_empty(), "not run again, not answered twice");
    let acts = c.handle(now, &cam, done(job, Ok(query("x")), &f));
    assert_eq!(
        replies(&acts)[0].1,
        vec![7, 3],
        "one reply releases both acknowledgements"
    );
    // Redelivered once more after the answer: acknowledged at once, not run.
    again.ack = Some(AckToken {
        connection: 3,
        pkid: 4,
    });
    let acts = c.handle(now, &cam, Input::Mqtt(MqttEvent::Message(again)));
    assert!(
        matches!(acts[..], [Act::Ack(AckToken { pkid: 4, .. })]),
        "{acts:?}"
    );
    assert_eq!(c.counters.duplicates, 2);
    // The same request sent anew (not a redelivery) is a new request.
    assert!(submitted(&c.handle(now, &cam, request("query", body, 7))).is_some());
}

#[test]
fn bad_requests_are_answered_and_acknowledged() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let cam = running(frame_at(now, 1));
    let acts = c.handle(now, &cam, request("query", "{not json", 5));
    assert_eq!(codes(&acts), ["bad_json"]);
    assert_eq!(replies(&acts)[0].1, vec![5]);
    let long = "x".repeat(1001);
    let body = format!(r#"{{"trigger":{{"name":"t","question":"{long}"}}}}"#);
    assert_eq!(
        codes(&c.handle(now, &cam, request("trigger_add", &body, 6))),
        ["bad_request"]
    );
    let body = r#"{"trigger":{"name":"t","question":"Q?","device_class":"doorbell"}}"#;
    assert_eq!(
        codes(&c.handle(now, &cam, request("trigger_add", body, 7))),
        ["bad_request"]
    );
}

#[test]
fn triggers_are_limited_and_saved_before_the_reply() {
    let now = t0();
    let mut c = core(config(|c| c.daemon.max_triggers = 1), now);
    let cam = running(frame_at(now, 1));
    let acts = c.handle(
        now,
        &cam,
        request(
            "trigger_add",
            r#"{"trigger":{"name":"a","question":"A?"}}"#,
            1,
        ),
    );
    assert!(replies(&acts).is_empty(), "answered once saved");
    let save = acts
        .iter()
        .find_map(|a| match a {
            Act::Save { save, triggers, .. } => Some((*save, triggers.added.len())),
            _ => None,
        })
        .expect("saved");
    assert_eq!(save.1, 1);
    let acts = c.handle(
        now,
        &cam,
        Input::Saved {
            save: save.0,
            result: Ok(()),
        },
    );
    let (r, acks) = replies(&acts).remove(0);
    assert_eq!(acks, vec![1]);
    assert_eq!(
        serde_json::to_value(r.data).expect("json")["persisted"],
        true
    );
    let acts = c.handle(
        now,
        &cam,
        request(
            "trigger_add",
            r#"{"trigger":{"name":"b","question":"B?"}}"#,
            2,
        ),
    );
    assert_eq!(codes(&acts), ["bad_request"]);
    assert!(replies(&acts)[0]
        .0
        .error
        .as_ref()
        .is_some_and(|e| e.message.contains("max_triggers")));
}

#[test]
fn removing_an_object_trigger_removes_its_count_sensor() {
    let now = t0();
    let mut tr = trigger("car", "", 10);
    tr.question = None;
    tr.object = Some("car".into());
    let mut c = core(config(|c| c.triggers = vec![tr]), now);
    let cam = running(frame_at(now, 1));
    let acts = c.handle(now, &cam, request("trigger_remove", r#"{"name":"car"}"#, 1));
    // The device config removes every entity of the trigger.
    let device = published(&acts, "homeassistant/device/moonwatch_cam/config");
    let v: Value = serde_json::from_slice(&device[0].payload).expect("json");
    for (object, platform) in [
        ("car", "binary_sensor"),
        ("car_count", "sensor"),
        ("car_confidence", "sensor"),
        ("car_event", "event"),
        ("car_snapshot", "image"),
        ("car_enabled", "switch"),
        ("car_threshold", "number"),
    ] {
        assert_eq!(
            v["cmps"][object],
            serde_json::json!({ "p": platform }),
            "{object}"
        );
    }
    // Its retained state is cleared once Home Assistant has dropped the entities reading
    // it, not at once (an entity still subscribed would log the empty payload).
    assert!(!cleared(&acts).contains(&"mw/cam/trigger/car/attributes"));
    let t = now.after(ha::CLEAR_AFTER);
    let acts = c.handle(t, &running(frame_at(t, 1)), Input::Tick);
    let gone = cleared(&acts);
    for topic in [
        "mw/cam/trigger/car",
        "mw/cam/trigger/car/attributes",
        "mw/cam/trigger/car/snapshot",
        "mw/cam/trigger/car/enabled",
        "mw/cam/trigger/car/threshold",
    ] {
        assert!(gone.contains(&topic), "{topic}: {gone:?}");
    }
}

#[test]
fn a_trigger_added_again_keeps_its_retained_state() {
    let now = t0();
    let mut c = core(config(|c| c.triggers = vec![trigger("a", "A?", 10)]), now);
    let cam = running(frame_at(now, 1));
    c.handle(now, &cam, request("trigger_remove", r#"{"name":"a"}"#, 1));
    c.handle(
        now,
        &cam,
        request(
            "trigger_add",
            r#"{"trigger":{"name":"a","question":"A again?"}}"#,
            2,
        ),
    );
    let t = now.after(ha::CLEAR_AFTER * 2);
    let acts = c.handle(t, &running(frame_at(t, 1)), Input::Tick);
    assert!(
        !cleared(&acts)
            .iter()
            .any(|t| t.starts_with("mw/cam/trigger/a")),
        "{:?}",
        cleared(&acts)
    );
}

#[test]
fn a_snapshot_is_the_cameras_picture_never_the_requests() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let f = frame_at(now, 1);
    let cam = running(f);
    let acts = c.handle(now, &cam, request("snapshot", r#"{"image":"aGVsbG8="}"#, 1));
    assert_eq!(codes(&acts), ["bad_request"]);
    assert!(published(&acts, "mw/cam/snapshot").is_empty());
    let acts = c.handle(now, &cam, request("snapshot", "{}", 2));
    assert_eq!(codes(&acts), ["ok"]);
    assert_eq!(published(&acts, "mw/cam/snapshot").len(), 1);
    // The same frame again: answered, not encoded and published again.
    let acts = c.handle(now, &cam, request("snapshot", "{}", 3));
    assert_eq!(codes(&acts), ["ok"]);
    assert!(published(&acts, "mw/cam/snapshot").is_empty());
}

#[test]
fn the_watchdog_follows_the_engine_not_the_camera() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let down = CameraView {
        latest: None,
        status: CameraStatus::Down {
            reason: "unplugged".into(),
            retry_in: Duration::from_secs(1),
        },
    };
    let acts = c.handle(now, &down, Input::Tick);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Act::Notify(Notify::Watchdog))));
    let offline = published(&acts, "mw/cam/camera/availability");
    assert_eq!(&offline[0].payload[..], b"offline");
    // An engine job stuck for more than twice request_timeout stops the pings.
    let cam = running(frame_at(now, 1));
    c.handle(now, &cam, request("query", r#"{"question":"Q?"}"#, 1));
    let t = now.after(Duration::from_secs(21));
    let acts = c.handle(t, &running(frame_at(t, 1)), Input::Tick);
    assert!(!acts
        .iter()
        .any(|a| matches!(a, Act::Notify(Notify::Watchdog))));
    assert!(acts.iter().any(|a| matches!(a, Act::Cancel { .. })));
}

#[test]
fn reload_diffs_triggers_loads_the_model_aside_and_reports_refusals() {
    let now = t0();
    let mut c = core(
        config(|c| c.triggers = vec![trigger("a", "A?", 10), trigger("b", "B?", 10)]),
        now,
    );
    let cam = running(frame_at(now, 1));
    let acts = c.handle(now, &cam, Input::Reload(Err("bad toml at line 3".into())));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Act::Notify(Notify::Status(s)) if s.contains("line 3"))));
    let acts = c.handle(now, &cam, request("health_check", "{}", 1));
    let v = serde_json::to_value(replies(&acts).remove(0).0.data).expect("json");
    assert!(v["problems"].to_string().contains("line 3"), "{v}");

    let mut new = config(|c| c.triggers = vec![trigger("b", "B changed?", 10)]);
    new.model.text = "/models/other.gguf".into();
    let acts = c.handle(now, &cam, Input::Reload(Ok(Box::new(new))));
    assert!(acts.iter().any(|a| matches!(a, Act::LoadModel(_))));
    let t = now.after(ha::CLEAR_AFTER);
    let later = c.handle(t, &cam, Input::Tick);
    assert!(
        cleared(&later).contains(&"mw/cam/trigger/a"),
        "{:?}",
        cleared(&later)
    );
    // One device config: b's entities in it, a's removed with its platform alone.
    let device = published(&acts, "homeassistant/device/moonwatch_cam/config");
    let v: Value =
        serde_json::from_slice(&device.last().expect("device config").payload).expect("json");
    assert_eq!(v["cmps"]["b"]["state_topic"], "mw/cam/trigger/b");
    assert_eq!(v["cmps"]["a"], serde_json::json!({"p": "binary_sensor"}));
    assert_eq!(v["cmps"]["a_event"], serde_json::json!({"p": "event"}));
    // The old model serves meanwhile (a job is running on it); once the
    // new one is loaded, it is swapped in when the engine is idle.
    let job = c.job().expect("a job runs on the old model");
    let acts = c.handle(now, &cam, Input::ModelLoaded(Ok(())));
    assert!(
        !acts.iter().any(|a| matches!(a, Act::UseNewModel)),
        "not under a running job"
    );
    let acts = c.handle(now, &cam, done(job, Ok(yes_no(true)), &frame_at(now, 1)));
    assert!(acts.iter().any(|a| matches!(a, Act::UseNewModel)));
}

#[test]
fn message_expiry_bounds_the_wait_and_is_set_on_replies() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let f = frame_at(now, 1);
    let cam = running(f.clone());
    let (job, _) =
        submitted(&c.handle(now, &cam, request("query", r#"{"question":"Q?"}"#, 1))).expect("runs");
    let Input::Mqtt(MqttEvent::Message(mut m)) = request("query", r#"{"question":"Q?"}"#, 2) else {
        unreachable!()
    };
    m.expiry = Some(3);
    c.handle(now, &cam, Input::Mqtt(MqttEvent::Message(m)));
    let t = now.after(Duration::from_secs(4));
    let acts = c.handle(t, &running(frame_at(t, 1)), done(job, Ok(query("x")), &f));
    assert_eq!(codes(&acts), ["ok", "timeout"]);
    let expiries: Vec<Option<u32>> = acts
        .iter()
        .filter_map(|a| match a {
            Act::Publish(m) if m.class == Class::Reply => Some(m.expiry),
            _ => None,
        })
        .collect();
    assert_eq!(expiries, [Some(10), Some(1)]);
}

#[test]
fn a_refused_subscription_makes_the_daemon_unhealthy_and_tells_systemd() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let cam = running(frame_at(now, 1));
    let acts = c.handle(
        now,
        &cam,
        Input::Mqtt(MqttEvent::Subscribed {
            refused: vec!["homeassistant/status".into()],
        }),
    );
    assert!(acts.iter().any(
        |a| matches!(a, Act::Notify(Notify::Status(s)) if s.contains("homeassistant/status"))
    ));
    let acts = c.handle(now, &cam, request("health_check", "{}", 1));
    let v = serde_json::to_value(replies(&acts).remove(0).0.data).expect("json");
    assert_eq!(v["healthy"], false, "{v}");
}

#[test]
fn snapshots_wait_for_a_starting_camera() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let starting = CameraView {
        latest: None,
        status: CameraStatus::Starting,
    };
    for pkid in 1..4 {
        assert!(c
            .handle(now, &starting, request("snapshot", "{}", pkid))
            .is_empty());
    }
    let t = now.after(Duration::from_secs(1));
    let acts = c.handle(t, &running(frame_at(t, 1)), Input::Tick);
    assert_eq!(codes(&acts), ["ok"; 3]);
    assert_eq!(
        published(&acts, "mw/cam/snapshot").len(),
        1,
        "one frame, one JPEG"
    );
}

#[test]
fn triggers_due_together_share_one_frame_even_as_newer_ones_arrive() {
    let now = t0();
    let mut c = core(
        config(|c| {
            c.triggers = vec![
                trigger("a", "A?", 10),
                trigger("b", "B?", 10),
                trigger("c", "C?", 10),
            ]
        }),
        now,
    );
    let first = frame_at(now, 10);
    let mut seen = Vec::new();
    let mut t = now;
    let mut acts = c.handle(t, &running(first.clone()), Input::Tick);
    for n in 1..=3u64 {
        let Some(Act::Submit {
            job,
            picture: Picture::Frame(f),
            ..
        }) = acts.into_iter().find(|a| matches!(a, Act::Submit { .. }))
        else {
            panic!("trigger {n} not submitted");
        };
        seen.push(f.key);
        // Each evaluation takes 16 s; the camera has a new picture every time.
        t = t.after(Duration::from_secs(16));
        let newer = frame_at(t, 10 + n as u8 * 50);
        acts = c.handle(t, &running(newer.clone()), done(job, Ok(yes_no(true)), &f));
    }
    assert!(
        seen.iter().all(|k| *k == first.key),
        "all three on the round's frame"
    );
}

#[test]
fn triggers_almost_due_join_the_round_so_rounds_stay_together() {
    let now = t0();
    let mut c = core(
        config(|c| c.triggers = vec![trigger("a", "A?", 10), trigger("b", "B?", 10)]),
        now,
    );
    let f = frame_at(now, 10);
    // a and b run on one frame; b ends 1 s after a.
    let (ja, _) = submitted(&c.handle(now, &running(f.clone()), Input::Tick)).expect("a");
    let t = now.after(Duration::from_secs(15));
    let (jb, _) =
        submitted(&c.handle(t, &running(frame_at(t, 10)), done(ja, Ok(yes_no(true)), &f)))
            .expect("b, same round");
    let t = t.after(Duration::from_secs(1));
    // b's model is unsure: b is not settled and stays on its interval.
    let unsure = Response {
        answers: vec![Answered {
            answer: Answer::YesNo {
                answer: None,
                confidence: 0.5,
                p_yes: 0.2,
                p_no: 0.2,
            },
            timing: SkillTiming::default(),
        }],
        ..yes_no(true)
    };
    c.handle(
        t,
        &running(frame_at(t, 10)),
        done(jb, Ok(unsure.clone()), &f),
    );
    // At a's interval, b is 1 s short of its own: both go, on one new frame.
    let t = now.after(Duration::from_secs(25));
    let newer = frame_at(t, 99);
    let acts = c.handle(t, &running(newer.clone()), Input::Tick);
    let Some(Act::Submit { job, .. }) = acts.into_iter().find(|a| matches!(a, Act::Submit { .. }))
    else {
        panic!("a due");
    };
    let acts = c.handle(t, &running(frame_at(t, 150)), done(job, Ok(unsure), &newer));
    let Some(Act::Submit {
        picture: Picture::Frame(g),
        skills,
        ..
    }) = acts.into_iter().find(|a| matches!(a, Act::Submit { .. }))
    else {
        panic!("b joins the round");
    };
    assert_eq!(
        skills,
        vec![Skill::YesNo {
            question: "B?".into()
        }]
    );
    assert_eq!(g.key, newer.key);
}

#[test]
fn a_save_that_never_finishes_does_not_hold_up_the_stop() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let cam = running(frame_at(now, 1));
    let acts = c.handle(
        now,
        &cam,
        request(
            "trigger_add",
            r#"{"trigger":{"name":"a","question":"A?"}}"#,
            1,
        ),
    );
    assert!(replies(&acts).is_empty());
    let acts = c.handle(now, &cam, Input::Stop);
    assert!(!acts.iter().any(|a| matches!(a, Act::Exit)));
    let t = now.after(Duration::from_secs(7));
    let acts = c.handle(t, &running(frame_at(t, 1)), Input::Tick);
    let (r, acks) = replies(&acts).remove(0);
    assert_eq!(acks, vec![1]);
    assert_eq!(
        serde_json::to_value(r.data).expect("json")["persisted"],
        false
    );
    assert!(matches!(acts.last(), Some(Act::Exit)));
}

#[test]
fn a_caption_of_the_cameras_frame_is_the_cameras_caption() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let f = frame_at(now, 10);
    let cam = running(f.clone());
    let caption = answering(Answer::Caption {
        caption: "a porch".into(),
    });
    // The "caption now" button publishes {} to request/caption.
    let (job, _) = submitted(&c.handle(now, &cam, request("caption", "{}", 1))).expect("runs");
    let acts = c.handle(now, &cam, done(job, Ok(caption.clone()), &f));
    assert_eq!(published(&acts, "mw/cam/caption").len(), 1);
    // A caption of the request's own image is not the camera's.
    let png = png_base64();
    let body = format!(r#"{{"image":"{png}"}}"#);
    let (job, _) = submitted(&c.handle(now, &cam, request("caption", &body, 2))).expect("runs");
    let acts = c.handle(now, &cam, done(job, Ok(caption), &f));
    assert!(published(&acts, "mw/cam/caption").is_empty());
}

#[test]
fn a_begin_publishes_the_frame_on_the_triggers_own_snapshot_topic() {
    let now = t0();
    let mut c = core(
        config(|c| c.triggers = vec![trigger("door", "Door?", 10)]),
        now,
    );
    let f = frame_at(now, 10);
    let (job, _) = submitted(&c.handle(now, &running(f.clone()), Input::Tick)).expect("runs");
    let acts = c.handle(now, &running(f.clone()), done(job, Ok(yes_no(true)), &f));
    assert_eq!(published(&acts, "mw/cam/trigger/door/snapshot").len(), 1);
    assert_eq!(published(&acts, "mw/cam/snapshot").len(), 1);
    let ev: wire::TriggerEvent =
        serde_json::from_slice(&published(&acts, "mw/cam/trigger/door/event")[0].payload)
            .expect("event");
    assert_eq!(ev.event_type, wire::EventKind::Begin);
    assert_eq!(ev.snapshot_topic, "mw/cam/trigger/door/snapshot");
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

#[test]
fn a_switched_off_trigger_is_not_evaluated_and_stays_off_across_restarts() {
    let now = t0();
    let cfg = config(|c| c.triggers = vec![trigger("door", "Door?", 1)]);
    let mut c = core(cfg.clone(), now);
    assert!(c
        .subscriptions()
        .contains(&"mw/cam/trigger/+/set".to_owned()));
    let acts = c.handle(
        now,
        &CameraView {
            latest: None,
            status: CameraStatus::Starting,
        },
        switch("door", "OFF", 4),
    );
    let state = published(&acts, "mw/cam/trigger/door/enabled");
    assert_eq!(&state[0].payload[..], b"OFF");
    assert_eq!(
        state[0].acks,
        vec![AckToken {
            connection: 1,
            pkid: 4
        }],
        "acknowledged with the state"
    );
    let saved = acts
        .iter()
        .find_map(|a| match a {
            Act::Save { triggers, .. } => Some(triggers.clone()),
            _ => None,
        })
        .expect("persisted");
    assert_eq!(saved.disabled, vec!["door".to_owned()]);
    let cam = running(frame_at(now, 10));
    assert!(
        submitted(&c.handle(now, &cam, Input::Tick)).is_none(),
        "off: not evaluated"
    );
    // A restart with the saved state: still off, and says so.
    let (mut again, acts) = restarted(cfg, saved, now, &cam);
    assert_eq!(
        &published(&acts, "mw/cam/trigger/door/enabled")[0].payload[..],
        b"OFF"
    );
    assert!(submitted(&acts).is_none());
    // Switched on: evaluated again. Nonsense is ignored (and acknowledged).
    let acts = again.handle(now, &cam, switch("door", "maybe", 5));
    assert!(
        matches!(acts[..], [Act::Ack(AckToken { pkid: 5, .. })]),
        "{acts:?}"
    );
    let acts = again.handle(now, &cam, switch("door", "ON", 6));
    assert!(submitted(&acts).is_some());
}

// ---- several cameras, zones, annotations ---------------------------------------------

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

#[test]
fn cameras_take_turns_a_round_each_on_one_frame() {
    let now = t0();
    let mut c = core(
        two_cameras(
            vec![trigger("a1", "A1?", 10), trigger("a2", "A2?", 10)],
            vec![trigger("b1", "B1?", 10), trigger("b2", "B2?", 10)],
        ),
        now,
    );
    assert!(c.subscriptions().contains(&"mw/a/request/+".to_owned()));
    assert!(c.subscriptions().contains(&"mw/b/trigger/+/set".to_owned()));
    let (fa, fb) = (frame_at(now, 10), frame_at(now, 200));
    let views = [running(fa.clone()), running(fb.clone())];
    let mut order = Vec::new();
    let mut acts = c.handle(now, &views, Input::Tick);
    while let Some((job, q, shade)) = job_of(&acts) {
        order.push((q, shade));
        let f = if shade == 10 { &fa } else { &fb };
        acts = c.handle(now, &views, done(job, Ok(yes_no(false)), f));
    }
    let expect: Vec<(String, u8)> = [("A1?", 10), ("A2?", 10), ("B1?", 200), ("B2?", 200)]
        .iter()
        .map(|(q, s)| (q.to_string(), *s))
        .collect();
    assert_eq!(
        order, expect,
        "a whole round per camera, each on its own frame"
    );
    // Each camera's trigger state goes to its own topics.
    let later = now.after(Duration::from_secs(11));
    let (fa2, fb2) = (frame_at(later, 90), frame_at(later, 250));
    let views = [running(fa2.clone()), running(fb2)];
    let (job, q, _) = job_of(&c.handle(later, &views, Input::Tick)).expect("next round");
    assert_eq!(q, "A1?");
    let acts = c.handle(later, &views, done(job, Ok(yes_no(true)), &fa2));
    assert_eq!(published(&acts, "mw/a/trigger/a1").len(), 1);
    assert!(published(&acts, "mw/b/trigger/a1").is_empty());
}

#[test]
fn a_flood_of_requests_on_one_camera_does_not_starve_anothers_triggers() {
    let now = t0();
    let mut c = core(two_cameras(vec![], vec![trigger("b1", "B1?", 10)]), now);
    let (fa, fb) = (frame_at(now, 10), frame_at(now, 200));
    let views = [running(fa.clone()), running(fb.clone())];
    // A request is running when the flood arrives.
    let first = c.handle(
        now,
        &views,
        request_on("a", "query", r#"{"question":"Q0?"}"#, 1),
    );
    let (mut job, _, _) = job_of(&first).expect("runs");
    for i in 1..10u16 {
        let body = format!(r#"{{"question":"Q{i}?"}}"#);
        assert!(c
            .handle(now, &views, request_on("a", "query", &body, i + 1))
            .is_empty());
    }
    let mut order = Vec::new();
    loop {
        let acts = c.handle(now, &views, done(job, Ok(query("x")), &fa));
        let Some((next, q, _)) = job_of(&acts) else {
            break;
        };
        order.push(q);
        job = next;
    }
    let b = order
        .iter()
        .position(|q| q == "B1?")
        .expect("b's trigger ran");
    assert!(b <= 4, "b's trigger waited behind {b} requests: {order:?}");
    assert_eq!(order.len(), 10, "every request still answered: {order:?}");
    // Requests are answered on the camera they were asked of.
    let acts = c.handle(now, &views, request_on("b", "health_check", "{}", 99));
    let (r, _) = replies(&acts).remove(0);
    assert_eq!(r.status, wire::Status::Ok);
}

#[test]
fn a_request_for_a_starting_camera_does_not_hold_up_another_cameras() {
    let now = t0();
    let mut c = core(two_cameras(vec![], vec![]), now);
    let starting = CameraView {
        latest: None,
        status: CameraStatus::Starting,
    };
    let fb = frame_at(now, 200);
    let views = [starting, running(fb)];
    let body = r#"{"question":"Q?"}"#;
    assert!(c
        .handle(now, &views, request_on("a", "query", body, 1))
        .is_empty());
    let (_, q, shade) =
        job_of(&c.handle(now, &views, request_on("b", "query", body, 2))).expect("b runs");
    assert_eq!((q.as_str(), shade), ("Q?", 200));
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

#[test]
fn zones_crop_what_the_model_sees_and_boxes_come_back_in_frame_coordinates() {
    let now = t0();
    let mut car = trigger("car", "unused", 10);
    car.question = None;
    car.object = Some("car".into());
    car.consecutive = 1;
    car.zone = Some(crate::zone::ZoneRef::Named("drive".into()));
    let mut cfg = config(|c| c.triggers = vec![car]);
    let crate::config::Cameras::One(cam) = &mut cfg.camera else {
        unreachable!()
    };
    let drive = crate::zone::Zone::try_from([0.5, 0.0, 1.0, 0.5]).expect("zone");
    cam.zones.insert("drive".into(), drive);
    let mut c = core(cfg, now);
    let f = frame_at(now, 10);
    let cam = running(f.clone());
    let acts = c.handle(now, &cam, Input::Tick);
    let zone = acts.iter().find_map(|a| match a {
        Act::Submit { zone, .. } => Some(*zone),
        _ => None,
    });
    assert_eq!(zone, Some(Some(drive)), "the trigger looks at its zone");
    let (job, _) = submitted(&acts).expect("runs");
    let acts = c.handle(now, &cam, done(job, Ok(detect_answer(vec![whole()])), &f));
    let attrs: Value =
        serde_json::from_slice(&published(&acts, "mw/cam/trigger/car/attributes")[0].payload)
            .expect("json");
    assert_eq!(
        attrs["details"]["objects"][0],
        serde_json::json!({"x_min": 0.5, "y_min": 0.0, "x_max": 1.0, "y_max": 0.5})
    );
    // An object trigger's begin snapshot shows its boxes: not the plain frame.
    let plain = &published(&acts, "mw/cam/snapshot")[0].payload;
    let own = &published(&acts, "mw/cam/trigger/car/snapshot")[0].payload;
    assert_ne!(plain, own);
    assert_eq!(&published(&acts, "mw/cam/annotated")[0].payload, own);

    // Requests name zones too; an unknown one is refused at once.
    let acts = c.handle(
        now,
        &cam,
        request("detect", r#"{"object":"car","zone":"gate"}"#, 1),
    );
    assert_eq!(codes(&acts), vec!["bad_request"]);
    assert!(replies(&acts)[0]
        .0
        .error
        .as_ref()
        .expect("error")
        .message
        .contains("drive"));
    let acts = c.handle(
        now,
        &cam,
        request(
            "detect",
            r#"{"object":"car","zone":[0.0,0.5,0.5,1.0],"annotate":true}"#,
            2,
        ),
    );
    let (job, _) = submitted(&acts).expect("runs");
    let acts = c.handle(now, &cam, done(job, Ok(detect_answer(vec![whole()])), &f));
    let v = serde_json::to_value(replies(&acts).remove(0).0.data).expect("json");
    assert_eq!(v["objects"][0]["y_min"], 0.5, "{v}");
    assert_eq!(v["zone"], serde_json::json!([0.0, 0.5, 0.5, 1.0]));
    assert_eq!(v["annotated_topic"], "mw/cam/annotated");
    let jpeg = &published(&acts, "mw/cam/annotated")[0].payload;
    assert!(jpeg.starts_with(&[0xff, 0xd8]), "a JPEG");
}

#[test]
fn a_reload_that_adds_or_renames_cameras_is_refused() {
    let now = t0();
    let mut c = core(two_cameras(vec![], vec![]), now);
    let cam = running(frame_at(now, 1));
    let mut new = two_cameras(vec![], vec![]);
    if let crate::config::Cameras::Many(v) = &mut new.camera {
        v[1].name = "c".into();
    }
    let acts = c.handle(now, &cam, Input::Reload(Ok(Box::new(new))));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Act::Notify(Notify::Status(s)) if s.contains("restart moonwatch"))));
    // A changed source restarts that camera only.
    let mut new = two_cameras(vec![], vec![]);
    if let crate::config::Cameras::Many(v) = &mut new.camera {
        v[1].device = "/dev/video9".into();
    }
    let acts = c.handle(now, &cam, Input::Reload(Ok(Box::new(new))));
    let restarted: Vec<usize> = acts
        .iter()
        .filter_map(|a| match a {
            Act::RestartCamera(i, _) => Some(*i),
            _ => None,
        })
        .collect();
    assert_eq!(restarted, vec![1]);
}

#[test]
fn a_request_with_a_zone_runs_while_the_cameras_triggers_are_always_due() {
    let now = t0();
    let mut c = core(two_cameras(vec![], vec![trigger("b1", "B1?", 1)]), now);
    let mut t = now;
    let mut shade = 0u8;
    let mut views = [running(frame_at(t, 10)), running(frame_at(t, shade))];
    let (mut job, _, _) = job_of(&c.handle(t, &views, Input::Tick)).expect("trigger runs");
    let body = r#"{"question":"Q?","zone":[0.0,0.0,0.5,0.5]}"#;
    assert!(c
        .handle(t, &views, request_on("b", "yes_no", body, 7))
        .is_empty());
    for _ in 0..6 {
        t = t.after(Duration::from_secs(2));
        shade = shade.wrapping_add(60);
        views = [running(frame_at(t, 10)), running(frame_at(t, shade))];
        let f = views[1].latest.clone().expect("frame");
        let acts = c.handle(t, &views, done(job, Ok(yes_no(true)), &f));
        if !replies(&acts).is_empty() {
            return;
        }
        let (next, q, _) = job_of(&acts).expect("next job");
        if q == "Q?" {
            let acts = c.handle(t, &views, done(next, Ok(yes_no(true)), &f));
            assert_eq!(codes(&acts), vec!["ok"]);
            return;
        }
        job = next;
    }
    panic!("the request never ran");
}

#[test]
fn triggers_that_share_a_zone_run_one_after_another_on_one_crop() {
    let now = t0();
    let z = |v: [f32; 4]| {
        Some(crate::zone::ZoneRef::Rect(
            crate::zone::Zone::try_from(v).expect("zone"),
        ))
    };
    let mut a = trigger("a", "A?", 10);
    a.zone = z([0.0, 0.0, 0.5, 0.5]);
    let b = trigger("b", "B?", 10);
    let mut c_ = trigger("c", "C?", 10);
    c_.zone = z([0.0, 0.0, 0.5, 0.5]);
    let mut c = core(config(|c| c.triggers = vec![a, b, c_]), now);
    let f = frame_at(now, 10);
    let cam = running(f.clone());
    let mut zones = Vec::new();
    let mut acts = c.handle(now, &cam, Input::Tick);
    while let Some(Act::Submit { job, zone, .. }) =
        acts.iter().find(|a| matches!(a, Act::Submit { .. }))
    {
        zones.push(zone.map(<[f32; 4]>::from));
        let job = *job;
        acts = c.handle(now, &cam, done(job, Ok(yes_no(false)), &f));
    }
    assert_eq!(zones.len(), 3);
    // Whole frame first (no zone sorts first), then a and c together on their crop.
    assert_eq!(zones[0], None);
    assert_eq!(zones[1], zones[2]);
}

// ---- the pool: a worker's side ---------------------------------------------------------

#[test]
fn a_worker_queues_pool_jobs_like_requests_and_names_itself_in_replies() {
    let now = t0();
    let cfg = config(|c| {
        c.pool.serve = true;
        c.daemon.max_pending = 1;
        c.camera = crate::config::Cameras::One(crate::config::CameraConfig {
            source: crate::config::SourceKind::None,
            ..Default::default()
        });
    });
    let mut c = core(cfg, now);
    assert!(c
        .subscriptions()
        .contains(&"$share/moonwatch/mw/pool/request/+".to_owned()));
    assert!(c
        .subscriptions()
        .contains(&"mw/pool/direct/cam/request/+".to_owned()));
    let no_camera: [CameraView; 0] = [];
    let image = format!(r#"{{"question":"Q?","image":"{}"}}"#, png_base64());
    // Shared and direct jobs both run; a job without its picture is refused.
    let acts = c.handle(
        now,
        &no_camera,
        request_at("mw/pool/request/yes_no", &image, 1),
    );
    let (job, _) = submitted(&acts).expect("runs");
    let acts = c.handle(
        now,
        &no_camera,
        request_at("mw/pool/request/yes_no", r#"{"question":"Q?"}"#, 2),
    );
    assert_eq!(codes(&acts), vec!["bad_request"]);
    // One waits (max_pending 1), the next is busy at once: the node sends it elsewhere.
    assert!(c
        .handle(
            now,
            &no_camera,
            request_at("mw/pool/direct/cam/request/yes_no", &image, 3)
        )
        .is_empty());
    let acts = c.handle(
        now,
        &no_camera,
        request_at("mw/pool/request/yes_no", &image, 4),
    );
    assert_eq!(codes(&acts), vec!["busy"]);
    let f = frame_at(now, 1);
    let acts = c.handle(now, &no_camera, done(job, Ok(yes_no(true)), &f));
    let (reply, _) = replies(&acts).remove(0);
    assert_eq!(reply.worker.as_deref(), Some("cam"));
    // Its heartbeat says how much it served.
    let acts = c.handle(now.after(Duration::from_secs(61)), &no_camera, Input::Tick);
    let beat = published(&acts, "mw/pool/worker/cam");
    let v: Value = serde_json::from_slice(&beat[0].payload).expect("heartbeat");
    assert_eq!(
        (v["online"].as_bool(), v["served"].as_u64()),
        (Some(true), Some(2))
    );
}

#[test]
fn a_camera_node_without_a_live_worker_or_a_model_says_so_and_pauses_triggers() {
    let now = t0();
    let mut c = core(
        config(|c| c.triggers = vec![trigger("door", "Door?", 1)]),
        now,
    );
    c.set_pool(PoolView {
        local_model: false,
        stats: wire::PoolStats::default(),
    });
    let cam = running(frame_at(now, 10));
    let acts = c.handle(now, &cam, Input::Tick);
    assert!(submitted(&acts).is_none(), "no trigger without an engine");
    assert_eq!(
        &published(&acts, "mw/cam/camera/availability")[0].payload[..],
        b"offline"
    );
    let acts = c.handle(now, &cam, request("health_check", "{}", 1));
    let v = serde_json::to_value(replies(&acts).remove(0).0.data).expect("json");
    assert!(v["problems"].to_string().contains("pool worker"), "{v}");
    // A worker's heartbeat arrives: back to work.
    c.set_pool(PoolView {
        local_model: false,
        stats: wire::PoolStats {
            workers: 1,
            ..Default::default()
        },
    });
    let acts = c.handle(now, &cam, Input::Tick);
    assert!(submitted(&acts).is_some());
    assert_eq!(
        &published(&acts, "mw/cam/camera/availability")[0].payload[..],
        b"online"
    );
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

#[test]
fn unsaved_runtime_triggers_are_a_health_problem_until_a_retry_saves_them() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let cam = running(frame_at(now, 1));
    let body = r#"{"trigger":{"name":"a","question":"A?"}}"#;
    let acts = c.handle(now, &cam, request("trigger_add", body, 1));
    let (save, _) = save_of(&acts).expect("saved");
    let full = Err("No space left on device (os error 28)".to_owned());
    let acts = c.handle(now, &cam, Input::Saved { save, result: full });
    assert_eq!(
        serde_json::to_value(replies(&acts).remove(0).0.data).expect("json")["persisted"],
        false
    );
    let p = health_problems(&mut c, now, &cam, 2);
    assert!(
        p.contains("not saved") && p.contains("No space left"),
        "{p}"
    );
    // Tried again a minute later, and not before.
    let t = now.after(Duration::from_secs(30));
    assert!(save_of(&c.handle(t, &cam, Input::Tick)).is_none());
    let t = now.after(Duration::from_secs(61));
    let (retry, added) = save_of(&c.handle(t, &cam, Input::Tick)).expect("retried");
    assert_eq!(added, 1, "the retry saves the trigger added");
    // Still failing: still a problem; then the disk has room again.
    c.handle(
        t,
        &cam,
        Input::Saved {
            save: retry,
            result: Err("No space left on device (os error 28)".into()),
        },
    );
    assert!(health_problems(&mut c, t, &cam, 3).contains("not saved"));
    let t = t.after(Duration::from_secs(61));
    let (retry, _) = save_of(&c.handle(t, &cam, Input::Tick)).expect("retried again");
    c.handle(
        t,
        &cam,
        Input::Saved {
            save: retry,
            result: Ok(()),
        },
    );
    let p = health_problems(&mut c, t, &cam, 4);
    assert!(!p.contains("not saved"), "{p}");
}

#[test]
fn a_reload_of_an_emptied_file_is_refused_and_keeps_every_trigger() {
    let now = t0();
    let full =
        "[model]\ntext = \"/m/t.gguf\"\nmmproj = \"/m/p.gguf\"\n[camera]\nsource = \"test\"\n\
                [mqtt]\nprefix = \"mw\"\n[[trigger]]\nname = \"door\"\nquestion = \"Door open?\"\n";
    let mut c = core(Config::parse(full).expect("config"), now);
    let cam = running(frame_at(now, 1));
    let empty = Config::parse("").expect("an empty file is valid TOML");
    let acts = c.handle(now, &cam, Input::Reload(Ok(Box::new(empty))));
    assert!(
        acts.iter()
            .any(|a| matches!(a, Act::Notify(Notify::Status(s)) if s.contains("reload refused"))),
        "{acts:?}"
    );
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Act::LoadModel(_) | Act::RestartCamera(..))),
        "nothing changed"
    );
    let acts = c.handle(now, &cam, request("trigger_list", "{}", 1));
    let v = serde_json::to_value(replies(&acts).remove(0).0.data).expect("json");
    assert_eq!(v["triggers"][0]["trigger"]["name"], "door", "{v}");
    assert!(health_problems(&mut c, now, &cam, 2).contains("lost"));
}

// ---- Home Assistant ------------------------------------------------------------------

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

#[test]
fn discovery_reads_what_the_broker_holds_then_moves_the_entity_form_over() {
    let now = t0();
    let cfg = config(|c| c.triggers = vec![trigger("door", "Door?", 10)]);
    let (mut c, acts) = connecting(cfg, now);
    assert!(c
        .subscriptions()
        .contains(&"homeassistant/+/moonwatch_cam/#".to_owned()));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Act::Publish(m) if m.topic.starts_with("homeassistant/"))),
        "nothing before the broker's configs are read"
    );
    let m = marker(&acts);
    assert_eq!(m.class, Class::Event, "not retained");
    let cam = running(frame_at(now, 1));
    // What an older moonwatch left in the entity form: the door, and a trigger since removed.
    let door = "homeassistant/binary_sensor/moonwatch_cam/door/config";
    let ghost = "homeassistant/binary_sensor/moonwatch_cam/old/config";
    for (i, topic) in [door, ghost].into_iter().enumerate() {
        let acts = c.handle(
            now,
            &cam,
            message(topic, b"{\"name\":\"x\"}", Some(10 + i as u16)),
        );
        assert!(
            matches!(acts[..], [Act::Ack(AckToken { pkid, .. })] if pkid == 10 + i as u16),
            "{acts:?}"
        );
    }
    // A marker of another session is not ours.
    assert!(c
        .handle(now, &cam, message(&m.topic, b"999999", None))
        .is_empty());
    let acts = c.handle(now, &cam, message(&m.topic, &m.payload, None));
    let order: Vec<(&str, &[u8], Class)> = acts
        .iter()
        .filter_map(|a| match a {
            Act::Publish(m) if m.topic.contains("/moonwatch_cam/") => {
                Some((m.topic.as_str(), &m.payload[..], m.class))
            }
            _ => None,
        })
        .collect();
    // The handshake Home Assistant asks for, in the order that leaves its log clean.
    assert_eq!(
        order[0],
        (door, &br#"{"migrate_discovery":true}"#[..], Class::Event)
    );
    assert_eq!(order[1], (door, &b""[..], Class::Retained));
    assert_eq!(order[2], (ghost, &b""[..], Class::Retained));
    assert_eq!(order[3].0, "homeassistant/device/moonwatch_cam/config");
    assert_eq!(order.len(), 4, "{order:?}");
    // The server is a device too.
    assert_eq!(
        published(&acts, "homeassistant/device/moonwatch_cam_server/config").len(),
        1
    );
}

#[test]
fn discovery_is_published_without_the_brokers_configs_when_the_marker_never_comes() {
    let now = t0();
    let (mut c, _) = connecting(config(|_| {}), now);
    let t = now.after(ha::SYNC_WAIT - Duration::from_millis(10));
    let acts = c.handle(t, &running(frame_at(t, 1)), Input::Tick);
    assert!(published(&acts, "homeassistant/device/moonwatch_cam/config").is_empty());
    let t = now.after(ha::SYNC_WAIT);
    let acts = c.handle(t, &running(frame_at(t, 1)), Input::Tick);
    assert_eq!(
        published(&acts, "homeassistant/device/moonwatch_cam/config").len(),
        1
    );
}

#[test]
fn the_entity_form_rolls_back_a_device_config_and_leaves_no_components_in_it() {
    let now = t0();
    let cfg = config(|c| {
        c.triggers = vec![trigger("door", "Door?", 10)];
        c.mqtt.discovery_form = crate::config::DiscoveryForm::Entity;
    });
    let (mut c, acts) = connecting(cfg, now);
    let cam = running(frame_at(now, 1));
    let old = br#"{"dev":{"identifiers":["moonwatch_cam"]},"cmps":{"door":{"p":"binary_sensor","name":"door"},"gone":{"p":"sensor","name":"gone"}}}"#;
    c.handle(
        now,
        &cam,
        message("homeassistant/device/moonwatch_cam/config", old, None),
    );
    let m = marker(&acts);
    let acts = c.handle(now, &cam, message(&m.topic, &m.payload, None));
    let device: Vec<&Outgoing> = published(&acts, "homeassistant/device/moonwatch_cam/config");
    // Removes what moonwatch no longer has (not retained), hands the rest over, and leaves
    // a config without components.
    assert_eq!(device.len(), 3, "{device:?}");
    let first: Value = serde_json::from_slice(&device[0].payload).expect("json");
    assert_eq!(first["cmps"]["gone"], serde_json::json!({"p": "sensor"}));
    assert_eq!(device[0].class, Class::Event);
    assert_eq!(&device[1].payload[..], br#"{"migrate_discovery":true}"#);
    let last: Value = serde_json::from_slice(&device[2].payload).expect("json");
    assert_eq!(last["cmps"], serde_json::json!({}));
    assert_eq!(device[2].class, Class::Retained);
    assert_eq!(
        published(
            &acts,
            "homeassistant/binary_sensor/moonwatch_cam/door/config"
        )
        .len(),
        1
    );
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

#[test]
fn tuning_from_home_assistant_is_checked_applied_and_kept() {
    let now = t0();
    let cfg = config(|c| c.triggers = vec![trigger("door", "Door?", 10)]);
    let mut c = core(cfg.clone(), now);
    assert!(c
        .subscriptions()
        .contains(&"mw/cam/trigger/+/+/set".to_owned()));
    let cam = running(frame_at(now, 1));
    let acts = c.handle(now, &cam, on("mw/cam/trigger/door/threshold/set", "0.8", 1));
    let state = published(&acts, "mw/cam/trigger/door/threshold");
    assert_eq!(&state[0].payload[..], b"0.8");
    assert_eq!(state[0].acks[0].pkid, 1, "acknowledged with its state");
    let mut kept = saved(&acts).expect("saved");
    assert_eq!(kept.tuned["door"].threshold, Some(0.8));
    // Refused, each with the setting unchanged: below the range, not a whole number of
    // seconds, an interval past the trigger's recheck (600 s), an unknown setting or
    // trigger, and no number at all.
    for (i, (topic, payload)) in [
        ("mw/cam/trigger/door/threshold/set", "0.2"),
        ("mw/cam/trigger/door/interval/set", "2.5"),
        ("mw/cam/trigger/door/interval/set", "900"),
        ("mw/cam/trigger/door/consecutive/set", "3"),
        ("mw/cam/trigger/nope/cooldown/set", "3"),
        ("mw/cam/trigger/door/cooldown/set", "soon"),
    ]
    .into_iter()
    .enumerate()
    {
        let acts = c.handle(now, &cam, on(topic, payload, 10 + i as u16));
        assert!(
            matches!(acts[..], [Act::Ack(AckToken { pkid, .. })] if pkid == 10 + i as u16),
            "{topic} {payload}: {acts:?}"
        );
    }
    let acts = c.handle(now, &cam, on("mw/cam/trigger/door/cooldown/set", "30.0", 2));
    assert_eq!(
        &published(&acts, "mw/cam/trigger/door/cooldown")[0].payload[..],
        b"30"
    );
    kept = saved(&acts).expect("saved");
    // A restart applies what was kept, and publishes it.
    let (mut again, acts) = restarted(cfg, kept, now, &cam);
    assert_eq!(
        &published(&acts, "mw/cam/trigger/door/threshold")[0].payload[..],
        b"0.8"
    );
    assert_eq!(
        &published(&acts, "mw/cam/trigger/door/interval")[0].payload[..],
        b"10"
    );
    // Removing the trigger forgets its tuning.
    let acts = again.handle(
        now,
        &cam,
        request("trigger_remove", r#"{"name":"door"}"#, 3),
    );
    assert!(saved(&acts).expect("saved").tuned.is_empty());
}

#[test]
fn a_question_from_home_assistant_is_answered_on_its_retained_answer_topic() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let f = frame_at(now, 1);
    let cam = running(f.clone());
    let acts = c.handle(
        now,
        &cam,
        on("mw/cam/question/set", "  What is on the table?\n", 1),
    );
    assert_eq!(
        &published(&acts, "mw/cam/question")[0].payload[..],
        b"What is on the table?"
    );
    let (job, skills) = submitted(&acts).expect("asked");
    assert!(matches!(&skills[0], Skill::Query { question } if question == "What is on the table?"));
    let acts = c.handle(now, &cam, done(job, Ok(query(" A cup.")), &f));
    assert!(replies(&acts).is_empty(), "no reply of the request kind");
    let answer = published(&acts, "mw/cam/answer");
    assert_eq!(answer[0].class, Class::Retained);
    assert_eq!(answer[0].acks[0].pkid, 1);
    let v: Value = serde_json::from_slice(&answer[0].payload).expect("json");
    assert_eq!(v["question"], "What is on the table?");
    assert_eq!(v["answer"], "A cup.");
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["frame_seq"], 1);
    assert_eq!(v["confidence"], 0.75);
    // Empty text is nothing to ask; a failure is the answer's error.
    let acts = c.handle(now, &cam, on("mw/cam/question/set", " ", 2));
    assert!(matches!(acts[..], [Act::Ack(_)]), "{acts:?}");
    let acts = c.handle(now, &cam, on("mw/cam/question/set", "Why?", 3));
    let (job, _) = submitted(&acts).expect("asked");
    let acts = c.handle(
        now,
        &cam,
        done(job, Err(EngineError::Invalid("too long".into())), &f),
    );
    let v: Value =
        serde_json::from_slice(&published(&acts, "mw/cam/answer")[0].payload).expect("json");
    assert_eq!(v["answer"], "");
    assert_eq!(v["error"], "too long");
}

#[test]
fn a_trigger_switched_on_again_is_evaluated_at_once() {
    let now = t0();
    let mut c = core(
        config(|c| c.triggers = vec![trigger("door", "Door?", 60)]),
        now,
    );
    let f = frame_at(now, 1);
    let cam = running(f.clone());
    let (job, _) = submitted(&c.handle(now, &cam, Input::Tick)).expect("first evaluation");
    c.handle(now, &cam, done(job, Ok(yes_no(true)), &f));
    c.handle(now, &cam, switch("door", "OFF", 1));
    let t = now.after(Duration::from_secs(5));
    let acts = c.handle(t, &running(frame_at(t, 1)), switch("door", "ON", 2));
    assert!(
        submitted(&acts).is_some(),
        "evaluated now, not 55 s later on an unchanged picture"
    );
}

#[test]
fn an_object_trigger_over_the_frame_counts_in_each_zone() {
    let now = t0();
    let mut car = trigger("car", "unused", 10);
    car.question = None;
    car.object = Some("car".into());
    let mut cfg = config(|c| c.triggers = vec![car]);
    let crate::config::Cameras::One(cam) = &mut cfg.camera else {
        unreachable!()
    };
    for (name, z) in [
        ("left", [0.0, 0.0, 0.5, 1.0]),
        ("right", [0.5, 0.0, 1.0, 1.0]),
    ] {
        cam.zones
            .insert(name.into(), crate::zone::Zone::try_from(z).expect("zone"));
    }
    let mut c = core(cfg, now);
    let f = frame_at(now, 1);
    let view = running(f.clone());
    let (job, _) = submitted(&c.handle(now, &view, Input::Tick)).expect("evaluated");
    let b = |x0: f32, x1: f32| crate::vision::parse::BBox {
        x_min: x0,
        y_min: 0.1,
        x_max: x1,
        y_max: 0.3,
    };
    let acts = c.handle(
        now,
        &view,
        done(
            job,
            Ok(detect_answer(vec![b(0.1, 0.2), b(0.6, 0.8), b(0.7, 0.9)])),
            &f,
        ),
    );
    let v: Value =
        serde_json::from_slice(&published(&acts, "mw/cam/trigger/car/attributes")[0].payload)
            .expect("json");
    assert_eq!(v["details"]["count"], 3);
    assert_eq!(
        v["details"]["zones"],
        serde_json::json!({"left": 1, "right": 2})
    );
}
