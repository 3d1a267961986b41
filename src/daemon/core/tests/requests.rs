//! Requests: priorities, the queue, camera availability, redeliveries, snapshots, expiry.

use super::*;

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
fn a_snapshot_is_the_cameras_picture_never_the_requests() {
    let now = t0();
    let mut c = core(config(|_| {}), now);
    let f = frame_at(now, 1);
    let cam = running(f);
    let acts = c.handle(now, &cam, request("snapshot", r#"{"image":"aGVsbG8="}"#, 1));
    assert_eq!(codes(&acts), ["bad_request"]);
    assert!(published(&acts, "mw/cam/snapshot").is_empty());
    let acts = c.handle(now, &cam, request("snapshot", "{}", 2));
    assert!(
        codes(&acts).is_empty(),
        "answered once the JPEG is published"
    );
    let acts = with_pictures(&mut c, now, &cam, acts);
    assert_eq!(codes(&acts), ["ok"]);
    assert_eq!(published(&acts, "mw/cam/snapshot").len(), 1);
    let snapshot = acts
        .iter()
        .position(|a| matches!(a, Act::Publish(m) if m.topic == "mw/cam/snapshot"));
    let reply = acts
        .iter()
        .position(|a| matches!(a, Act::Publish(m) if m.class == Class::Reply));
    assert!(snapshot < reply, "the picture is out before the reply");
    // The same frame again: answered, not encoded and published again.
    let acts = c.handle(now, &cam, request("snapshot", "{}", 3));
    assert_eq!(codes(&acts), ["ok"]);
    assert!(published(&acts, "mw/cam/snapshot").is_empty());
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
    let view = running(frame_at(t, 1));
    let acts = c.handle(t, &view, Input::Tick);
    let encodes = acts
        .iter()
        .filter(|a| matches!(a, Act::Encode { .. }))
        .count();
    assert_eq!(encodes, 1, "one frame, one encode");
    let acts = with_pictures(&mut c, t, &view, acts);
    assert_eq!(codes(&acts), ["ok"; 3]);
    assert_eq!(
        published(&acts, "mw/cam/snapshot").len(),
        1,
        "one frame, one JPEG"
    );
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
