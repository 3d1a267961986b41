//! Several cameras on one engine, and zones.

use super::*;

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
    let acts = with_pictures(&mut c, now, &cam, acts);
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
    let acts = with_pictures(&mut c, now, &cam, acts);
    let v = serde_json::to_value(replies(&acts).remove(0).0.data).expect("json");
    assert_eq!(v["objects"][0]["y_min"], 0.5, "{v}");
    assert_eq!(v["zone"], serde_json::json!([0.0, 0.5, 0.5, 1.0]));
    assert_eq!(v["annotated_topic"], "mw/cam/annotated");
    let jpeg = &published(&acts, "mw/cam/annotated")[0].payload;
    assert!(jpeg.starts_with(&[0xff, 0xd8]), "a JPEG");
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
