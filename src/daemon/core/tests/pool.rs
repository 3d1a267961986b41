//! The pool: a worker's side, and a camera node's (how many jobs it keeps out, where
//! each goes, which workers it avoids, when a job runs here).

use super::*;

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

/// A camera node that offloads: no model of its own unless `model`.
fn node(triggers: Vec<TriggerConfig>, model: bool, f: impl FnOnce(&mut Config)) -> Config {
    config(|c| {
        c.pool.offload = true;
        c.pool.job_timeout = 4;
        c.pool.attempts = 3;
        c.daemon.max_pending = 16;
        if !model {
            c.model.text = std::path::PathBuf::new();
        }
        c.triggers = triggers;
        f(c);
    })
}

/// Worker `w`'s heartbeat: `queue` jobs waiting or running there, `served` so far.
fn beat(w: &str, queue: usize, served: u64) -> Input {
    beat_with(w, queue, served, false)
}

/// [`beat`] of a worker that may want whole pictures.
fn beat_with(w: &str, queue: usize, served: u64, full_pictures: bool) -> Input {
    let v = wire::WorkerStatus {
        online: true,
        queue_depth: queue,
        max_pending: 4,
        served,
        interval_s: 1,
        slots: 1,
        full_pictures,
    };
    message(
        &format!("mw/pool/worker/{w}"),
        &serde_json::to_vec(&v).expect("json"),
        None,
    )
}

/// Pool jobs whose pictures were asked for.
fn pictures(acts: &[Act]) -> Vec<u64> {
    acts.iter()
        .filter_map(|a| match a {
            Act::PoolPicture { job, .. } => Some(*job),
            _ => None,
        })
        .collect()
}

/// The pictures of `jobs`, encoded: what the core publishes then.
fn encoded(c: &mut Core, now: Now, cam: &CameraView, jobs: &[u64]) -> Vec<Act> {
    let f = frame_at(now, 10);
    jobs.iter()
        .flat_map(|&job| {
            let jpeg = Bytes::from(format!("jpeg of {job}"));
            let input = Input::PoolPicture {
                job,
                result: Ok((jpeg, f.clone())),
            };
            c.handle(now, cam, input)
        })
        .collect()
}

/// Attempts published: (worker, or "share"; correlation).
fn sent(acts: &[Act]) -> Vec<(String, String)> {
    acts.iter()
        .filter_map(|a| match a {
            Act::Publish(m) if m.response_topic.as_deref() == Some("mw/cam/pool/reply") => {
                let to = match m.topic.strip_prefix("mw/pool/direct/") {
                    Some(rest) => rest.split('/').next().unwrap_or("").to_owned(),
                    None if m.topic.starts_with("mw/pool/request/") => "share".to_owned(),
                    None => return None,
                };
                let corr = String::from_utf8_lossy(m.correlation.as_deref().unwrap_or(b""));
                Some((to, corr.into_owned()))
            }
            _ => None,
        })
        .collect()
}

/// Worker `w`'s reply to attempt `corr`: yes, or an error `code`.
fn result(w: &str, corr: &str, code: Option<Code>) -> Input {
    let f = frame_at(t0(), 10);
    let reply = wire::Reply {
        status: if code.is_some() {
            wire::Status::Error
        } else {
            wire::Status::Ok
        },
        request: "yes_no".into(),
        data: code
            .is_none()
            .then(|| ReplyData::Answer(replies::answer_reply(&yes_no(true), &f))),
        error: code.map(|code| wire::ErrorBody {
            code,
            message: "from the worker".into(),
        }),
        transaction: None,
        worker: Some(w.into()),
    };
    Input::Mqtt(MqttEvent::Message(Incoming {
        topic: "mw/cam/pool/reply".into(),
        payload: Bytes::from(serde_json::to_vec(&reply).expect("json")),
        response_topic: None,
        correlation: Some(Bytes::from(corr.to_owned())),
        expiry: None,
        redelivered: false,
        ack: None,
    }))
}

/// Heartbeats of idle `workers`, then a tick: what the core did (jobs start as soon as a
/// worker is known).
fn with_workers(c: &mut Core, now: Now, cam: &CameraView, workers: &[&str]) -> Vec<Act> {
    let mut acts: Vec<Act> = workers
        .iter()
        .flat_map(|w| c.handle(now, cam, beat(w, 0, 0)))
        .collect();
    acts.extend(c.handle(now, cam, Input::Tick));
    acts
}

/// What `stats` would say of the pool now.
fn pool_stats(c: &Core, now: Now) -> Value {
    let stats = c.offload.as_ref().expect("offloads").stats(now);
    serde_json::to_value(stats).expect("json")
}

#[test]
fn a_camera_node_without_a_live_worker_or_a_model_says_so_and_pauses_triggers() {
    let now = t0();
    let mut c = core(node(vec![trigger("door", "Door?", 1)], false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    let acts = c.handle(now, &cam, Input::Tick);
    assert!(pictures(&acts).is_empty(), "no trigger without an engine");
    assert_eq!(
        &published(&acts, "mw/cam/camera/availability")[0].payload[..],
        b"offline"
    );
    let problems = health_problems(&mut c, now, &cam, 1);
    assert!(problems.contains("pool worker"), "{problems}");
    // A worker's heartbeat arrives: back to work, on the pool.
    let mut acts = c.handle(now, &cam, beat("w1", 0, 0));
    acts.extend(c.handle(now, &cam, Input::Tick));
    assert_eq!(pictures(&acts).len(), 1);
    assert!(submitted(&acts).is_none(), "no model here");
    assert_eq!(
        &published(&acts, "mw/cam/camera/availability")[0].payload[..],
        b"online"
    );
    // Its heartbeats stop: gone after three intervals and some slack.
    let later = now.after(Duration::from_secs(9));
    let acts = c.handle(later, &cam, Input::Tick);
    assert_eq!(
        &published(&acts, "mw/cam/camera/availability")[0].payload[..],
        b"offline"
    );
}

#[test]
fn a_node_keeps_a_job_on_every_healthy_worker_and_keeps_its_own_order() {
    let now = t0();
    let triggers = (0..6)
        .map(|i| trigger(&format!("t{i}"), &format!("Is {i} there?"), 60))
        .collect();
    let mut c = core(node(triggers, false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    // Three workers of one slot each: three jobs out, one per worker.
    let acts = with_workers(&mut c, now, &cam, &["w1", "w2", "w3"]);
    let jobs = pictures(&acts);
    assert_eq!(jobs.len(), 3, "one job per healthy worker");
    let out = sent(&encoded(&mut c, now, &cam, &jobs));
    let mut to: Vec<&str> = out.iter().map(|(w, _)| w.as_str()).collect();
    to.sort_unstable();
    assert_eq!(to, ["w1", "w2", "w3"], "each on a worker's direct topic");
    // A request waits for a free slot, then goes before the triggers still due.
    let acts = c.handle(now, &cam, request("yes_no", r#"{"question":"Q?"}"#, 7));
    assert!(pictures(&acts).is_empty(), "no room now");
    let acts = c.handle(now, &cam, result(&out[0].0, &out[0].1, None));
    let next = pictures(&acts);
    assert_eq!(next.len(), 1);
    let acts = encoded(&mut c, now, &cam, &next);
    let (w, corr) = sent(&acts).remove(0);
    assert_eq!(w, out[0].0, "the free worker (it has the picture, too)");
    let acts = c.handle(now, &cam, result(&w, &corr, None));
    let (reply, _) = replies(&acts).remove(0);
    assert_eq!(reply.request, "yes_no", "the request went first");
    assert_eq!(
        reply.worker.as_deref(),
        Some(w.as_str()),
        "it names the worker"
    );
    // pool.max_in_flight caps the window.
    let mut c = core(
        node(
            vec![
                trigger("a", "A?", 60),
                trigger("b", "B?", 60),
                trigger("c", "C?", 60),
            ],
            false,
            |c| c.pool.max_in_flight = 2,
        ),
        now,
    );
    let acts = with_workers(&mut c, now, &cam, &["w1", "w2", "w3"]);
    assert_eq!(pictures(&acts).len(), 2);
    let pool = pool_stats(&c, now);
    assert_eq!(
        (pool["in_flight"].as_u64(), pool["window"].as_u64()),
        (Some(2), Some(2)),
        "{pool}"
    );
}

/// The sides pool pictures were asked at.
fn sides(acts: &[Act]) -> Vec<Option<u32>> {
    acts.iter()
        .filter_map(|a| match a {
            Act::PoolPicture { side, .. } => Some(*side),
            _ => None,
        })
        .collect()
}

#[test]
fn whole_pictures_go_out_while_a_worker_cuts_the_references_crops() {
    let now = t0();
    let triggers = (0..2)
        .map(|i| trigger(&format!("t{i}"), &format!("Is {i} there?"), 60))
        .collect();
    let mut c = core(node(triggers, false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    // A one-crop worker: the model's 378x378 input, nothing more.
    let acts = with_workers(&mut c, now, &cam, &["w1"]);
    assert_eq!(sides(&acts), [Some(378)]);
    // A worker whose model cuts pictures into crops: whole pictures from now on (either
    // kind of worker takes either).
    let mut acts = c.handle(now, &cam, beat_with("w2", 0, 0, true));
    acts.extend(c.handle(now, &cam, Input::Tick));
    assert_eq!(sides(&acts), [None]);
}

#[test]
fn a_trigger_is_never_evaluated_twice_at_once() {
    let now = t0();
    let mut c = core(node(vec![trigger("door", "Door?", 1)], false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    let acts = with_workers(&mut c, now, &cam, &["w1", "w2"]);
    let jobs = pictures(&acts);
    assert_eq!(jobs.len(), 1);
    encoded(&mut c, now, &cam, &jobs);
    // Due again by its interval while the first evaluation is out, on a new frame.
    let later = now.after(Duration::from_secs(2));
    let cam2 = running(frame_at(later, 90));
    let mut acts = c.handle(later, &cam2, beat("w1", 1, 0));
    acts.extend(c.handle(later, &cam2, beat("w2", 0, 0)));
    acts.extend(c.handle(later, &cam2, Input::Tick));
    assert!(pictures(&acts).is_empty());
}

#[test]
fn a_stalled_worker_costs_one_job_timeout_and_is_avoided_until_it_answers() {
    let now = t0();
    let triggers = (0..4)
        .map(|i| trigger(&format!("t{i}"), &format!("Is {i} there?"), 60))
        .collect();
    let mut c = core(node(triggers, false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    let acts = with_workers(&mut c, now, &cam, &["w1", "w2"]);
    let jobs = pictures(&acts);
    let out = sent(&encoded(&mut c, now, &cam, &jobs));
    assert_eq!(out.len(), 2, "{out:?}");
    let (stalled, fine) = (&out[0], &out[1]);
    // The healthy worker answers each second and keeps its heartbeat; the other is silent.
    let mut t = now;
    let mut fine_corr = Some(fine.1.clone());
    for s in 1..=4u64 {
        t = now.after(Duration::from_secs(s));
        c.handle(t, &cam, beat(&fine.0, 1, s));
        let Some(corr) = fine_corr.take() else {
            continue;
        };
        let acts = c.handle(t, &cam, result(&fine.0, &corr, None));
        let acts = with_pool_pictures(&mut c, t, &cam, acts);
        if let Some((w, corr)) = sent(&acts).into_iter().next() {
            assert_eq!(w, fine.0, "jobs go to the worker that answers");
            fine_corr = Some(corr);
        }
    }
    // job_timeout (4 s) after it was sent, the stalled worker's job goes to the other at once.
    let acts = c.handle(t, &cam, Input::Tick);
    let retried = sent(&acts);
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(
        retried[0].0, fine.0,
        "the retry goes to a healthy worker, not the share"
    );
    let problems = health_problems(&mut c, t, &cam, 9);
    assert!(
        problems.contains(&format!("pool worker {} is avoided", stalled.0)),
        "{problems}"
    );
    let pool = pool_stats(&c, t);
    assert_eq!(pool["timeouts"], 1, "{pool}");
    assert_eq!(pool["by_worker"][&stalled.0]["timeouts"], 1, "{pool}");
    // It wakes and answers what it held: late, ignored, and it is trusted again.
    let acts = c.handle(t, &cam, result(&stalled.0, &stalled.1, None));
    assert!(replies(&acts).is_empty());
    let pool = pool_stats(&c, t);
    assert_eq!(pool["late"], 1, "{pool}");
    assert!(pool["by_worker"][&stalled.0]["suspect"].is_null(), "{pool}");
}

/// Feeds the pictures `acts` ask for back: what the core publishes then, with `acts`.
fn with_pool_pictures(c: &mut Core, now: Now, cam: &CameraView, mut acts: Vec<Act>) -> Vec<Act> {
    let jobs = pictures(&acts);
    acts.extend(encoded(c, now, cam, &jobs));
    acts
}

#[test]
fn a_busy_worker_s_job_goes_to_another_at_once() {
    let now = t0();
    let mut c = core(node(vec![trigger("door", "Door?", 60)], false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    let mut acts = c.handle(now, &cam, beat("w1", 0, 0));
    acts.extend(c.handle(now, &cam, beat("w2", 0, 0)));
    let acts = with_pool_pictures(&mut c, now, &cam, acts);
    let (w, corr) = sent(&acts).remove(0);
    let acts = c.handle(now, &cam, result(&w, &corr, Some(Code::Busy)));
    let (other, _) = sent(&acts).remove(0);
    assert_ne!(other, w);
}

#[test]
fn jobs_go_to_the_share_only_without_a_healthy_worker_and_a_lost_one_is_reported() {
    let now = t0();
    let mut c = core(node(vec![trigger("door", "Door?", 60)], false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    // Its only worker is full: the share may find one that is not.
    let acts = c.handle(now, &cam, beat("w1", 4, 0));
    let acts = with_pool_pictures(&mut c, now, &cam, acts);
    assert_eq!(sent(&acts)[0].0, "share");
    // It reports an empty queue, yet the job is never answered: something in the group
    // took it and cannot answer (a denied shared subscription).
    let mut t = now;
    for s in 1..=4 {
        t = now.after(Duration::from_secs(s));
        c.handle(t, &cam, beat("w1", 0, 0));
    }
    let acts = c.handle(t, &cam, Input::Tick);
    assert_eq!(
        sent(&acts)[0].0,
        "w1",
        "the retry goes to the worker directly"
    );
    let problems = health_problems(&mut c, t, &cam, 3);
    assert!(problems.contains("shared subscription"), "{problems}");
    assert_eq!(pool_stats(&c, t)["lost"], 1);
}

#[test]
fn a_node_with_a_model_runs_here_what_no_worker_answers() {
    let now = t0();
    let mut c = core(
        node(vec![trigger("door", "Door?", 60)], true, |c| {
            c.pool.attempts = 1
        }),
        now,
    );
    let cam = running(frame_at(now, 10));
    // No worker: at once on its own model.
    let acts = c.handle(now, &cam, Input::Tick);
    assert!(pictures(&acts).is_empty());
    let (job, _) = submitted(&acts).expect("runs here");
    let f = frame_at(now, 10);
    c.handle(now, &cam, done(job, Ok(yes_no(true)), &f));
    // A worker that does not answer: after pool.attempts, here.
    c.handle(now, &cam, beat("w1", 0, 0));
    let acts = c.handle(now, &cam, request("yes_no", r#"{"question":"Q?"}"#, 5));
    let acts = with_pool_pictures(&mut c, now, &cam, acts);
    assert_eq!(sent(&acts).len(), 1);
    let t = now.after(Duration::from_secs(4));
    c.handle(t, &cam, beat("w1", 1, 0));
    let acts = c.handle(t, &cam, Input::Tick);
    let (job, _) = submitted(&acts).expect("runs here after the pool");
    let acts = c.handle(t, &cam, done(job, Ok(yes_no(false)), &f));
    let (reply, _) = replies(&acts).remove(0);
    assert_eq!((reply.status, reply.worker), (wire::Status::Ok, None));
    assert_eq!(pool_stats(&c, t)["local"], 1);
}

#[test]
fn a_worker_that_reports_work_without_progress_is_avoided() {
    let now = t0();
    let mut c = core(node(vec![], false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    c.handle(now, &cam, beat("w1", 2, 5));
    c.handle(now, &cam, beat("w2", 0, 0));
    let t = now.after(Duration::from_secs(9));
    c.handle(t, &cam, beat("w1", 2, 5));
    c.handle(t, &cam, beat("w2", 0, 0));
    let pool = pool_stats(&c, t);
    assert!(
        pool["by_worker"]["w1"]["suspect"]
            .as_str()
            .is_some_and(|s| s.contains("without finishing")),
        "{pool}"
    );
    assert_eq!(pool["by_worker"]["w2"]["healthy"], true, "{pool}");
}

#[test]
fn heartbeats_are_bounded_input() {
    let now = t0();
    let mut c = core(node(vec![], false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    // Absurd figures do not overflow a clock or open a huge window.
    let v = serde_json::json!({"online": true, "queue_depth": 0, "max_pending": usize::MAX,
        "served": u64::MAX, "interval_s": u64::MAX, "slots": usize::MAX});
    c.handle(
        now,
        &cam,
        message("mw/pool/worker/big", v.to_string().as_bytes(), None),
    );
    let pool = pool_stats(&c, now);
    assert_eq!(pool["window"], 8, "pool.max_in_flight caps it: {pool}");
    let later = now.after(Duration::from_secs(86_400 * 365));
    c.handle(later, &cam, Input::Tick);
    let pool = pool_stats(&c, later);
    assert!(
        pool["by_worker"]["big"].is_null(),
        "forgotten after an hour: {pool}"
    );
    // Heartbeats from more ids than the node remembers are ignored.
    for i in 0..300 {
        c.handle(now, &cam, beat(&format!("w{i}"), 0, 0));
    }
    let pool = pool_stats(&c, now);
    let known = pool["by_worker"].as_object().map_or(0, |m| m.len());
    assert!(known <= 256, "{known}");
    // Garbage on the heartbeat topic forgets that worker, nothing more.
    c.handle(
        now,
        &cam,
        message("mw/pool/worker/w1", b"\xff not json", None),
    );
    let pool = pool_stats(&c, now);
    assert!(pool["by_worker"]["w1"].is_null(), "{pool}");
}

#[test]
fn home_assistant_hears_at_once_when_a_worker_turns_sick() {
    let now = t0();
    let mut c = core(node(vec![trigger("door", "Door?", 60)], false, |_| ()), now);
    let cam = running(frame_at(now, 10));
    let server = |acts: &[Act]| -> Option<Value> {
        published(acts, "mw/cam/server")
            .last()
            .map(|m| serde_json::from_slice(&m.payload).expect("json"))
    };
    let acts = with_workers(&mut c, now, &cam, &["w1", "w2"]);
    let s = server(&acts).expect("published when the workers come");
    assert_eq!(
        (s["pool"]["healthy"].as_u64(), s["pool"]["live"].as_u64()),
        (Some(2), Some(2))
    );
    // Nothing changed: nothing published before the stats interval.
    assert!(server(&c.handle(now, &cam, Input::Tick)).is_none());
    let acts = with_pool_pictures(&mut c, now, &cam, acts);
    let (sick, _) = sent(&acts).remove(0);
    let fine = if sick == "w1" { "w2" } else { "w1" };
    let t = now.after(Duration::from_secs(4));
    c.handle(t, &cam, beat(fine, 0, 0));
    let s = server(&c.handle(t, &cam, Input::Tick)).expect("published at once");
    assert_eq!(s["pool"]["healthy"], 1, "{s}");
    let why = s["pool"]["suspect"][0].as_str().unwrap_or("");
    assert!(why.starts_with(&format!("{sick}: ")), "{s}");
}
