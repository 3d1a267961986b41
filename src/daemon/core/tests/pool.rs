//! The pool: a worker's side, and a camera node without a live worker.

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

#[test]
fn a_camera_node_without_a_live_worker_or_a_model_says_so_and_pauses_triggers() {
    let now = t0();
    let mut c = core(
        config(|c| c.triggers = vec![trigger("door", "Door?", 1)]),
        now,
    );
    let cam = running(frame_at(now, 10));
    let pool = |workers| World {
        cameras: vec![cam.clone()],
        outbox: None,
        pool: Some(PoolView {
            local_model: false,
            stats: wire::PoolStats {
                workers,
                ..Default::default()
            },
        }),
    };
    let acts = c.handle(now, &pool(0), Input::Tick);
    assert!(submitted(&acts).is_none(), "no trigger without an engine");
    assert_eq!(
        &published(&acts, "mw/cam/camera/availability")[0].payload[..],
        b"offline"
    );
    let acts = c.handle(now, &cam, request("health_check", "{}", 1));
    let v = serde_json::to_value(replies(&acts).remove(0).0.data).expect("json");
    assert!(v["problems"].to_string().contains("pool worker"), "{v}");
    // A worker's heartbeat arrives: back to work.
    let acts = c.handle(now, &pool(1), Input::Tick);
    assert!(submitted(&acts).is_some());
    assert_eq!(
        &published(&acts, "mw/cam/camera/availability")[0].payload[..],
        b"online"
    );
}
