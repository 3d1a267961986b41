//! Triggers: pacing, rounds, refusals, runtime changes and their entities.

use super::*;

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
fn a_begin_publishes_the_frame_on_the_triggers_own_snapshot_topic() {
    let now = t0();
    let mut c = core(
        config(|c| c.triggers = vec![trigger("door", "Door?", 10)]),
        now,
    );
    let f = frame_at(now, 10);
    let (job, _) = submitted(&c.handle(now, &running(f.clone()), Input::Tick)).expect("runs");
    let view = running(f.clone());
    let acts = c.handle(now, &view, done(job, Ok(yes_no(true)), &f));
    assert!(
        published(&acts, "mw/cam/trigger/door/event").is_empty(),
        "not before its picture"
    );
    let acts = with_pictures(&mut c, now, &view, acts);
    let at = |topic: &str| {
        acts.iter()
            .position(|a| matches!(a, Act::Publish(m) if m.topic == topic))
    };
    assert!(at("mw/cam/trigger/door/snapshot") < at("mw/cam/trigger/door/event"));
    assert_eq!(published(&acts, "mw/cam/trigger/door/snapshot").len(), 1);
    assert_eq!(published(&acts, "mw/cam/snapshot").len(), 1);
    let ev: wire::TriggerEvent =
        serde_json::from_slice(&published(&acts, "mw/cam/trigger/door/event")[0].payload)
            .expect("event");
    assert_eq!(ev.event_type, wire::EventKind::Begin);
    assert_eq!(ev.snapshot_topic, "mw/cam/trigger/door/snapshot");
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
