//! Stop, reload, the watchdog, saves and systemd.

use super::*;

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
