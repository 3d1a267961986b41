//! Home Assistant: discovery's handover, tuning, questions, switches, zone counts.

use super::*;

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

#[test]
fn a_marker_redelivered_from_an_earlier_process_is_not_this_ones() {
    // A persistent session hands the new process what the old one had in flight, its
    // marker too: taken for this one's, discovery would go out before the broker's
    // configs were read.
    let now = t0();
    let (_, earlier) = connecting(config(|_| {}), now);
    let old = marker(&earlier);
    let later = now.after(Duration::from_secs(30));
    let (mut c, acts) = connecting(config(|_| {}), later);
    let m = marker(&acts);
    assert_ne!(old.payload, m.payload);
    let cam = running(frame_at(later, 1));
    let acts = c.handle(later, &cam, message(&old.topic, &old.payload, None));
    assert!(published(&acts, "homeassistant/device/moonwatch_cam/config").is_empty());
    let acts = c.handle(later, &cam, message(&m.topic, &m.payload, None));
    assert_eq!(
        published(&acts, "homeassistant/device/moonwatch_cam/config").len(),
        1
    );
}

#[test]
fn requests_still_reach_the_core_when_discovery_shares_the_topic_prefix() {
    // discovery_prefix = prefix: every request is under the discovery prefix too, and
    // only a node's discovery config is discovery's to take.
    let now = t0();
    let mut c = core(config(|c| c.mqtt.discovery_prefix = "mw".into()), now);
    let cam = running(frame_at(now, 1));
    let acts = c.handle(now, &cam, request("health_check", "{}", 1));
    assert_eq!(codes(&acts), ["ok"]);
    let acts = c.handle(
        now,
        &cam,
        message("mw/sensor/moonwatch_cam/caption/config", b"{}", Some(2)),
    );
    assert!(
        matches!(acts[..], [Act::Ack(AckToken { pkid: 2, .. })]),
        "{acts:?}"
    );
}
