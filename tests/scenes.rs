//! Triggers that never go blind: generated scenes run through the daemon's core on a fake
//! clock (tests/common/scenes.rs). A settled trigger may skip evaluations while its
//! picture stays the same, so these tables hold the change test to what it must still
//! see: every figure of 1% or more of the frame or zone is evaluated within one interval
//! of appearing and of leaving, whether it differs from the wall in brightness or only in
//! colour, on clean and noisy cameras; a 0.5% figure within `recheck`; while still
//! pictures, noise, JPEG, drifting and stepping light are skipped (at least 90% of due
//! evaluations), and a change outside a zone costs that zone's triggers nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::scenes::{self, Background, Figure, Scene, PI5};

const INTERVAL: u64 = 10;

fn figure(area: f32, matched: bool, at: (f32, f32), within: Option<[f32; 4]>) -> Figure {
    Figure {
        area,
        matched,
        within,
        at,
        appear: 100.0,
        leave: 200.0,
    }
}

#[test]
fn still_noisy_and_drifting_scenes_are_skipped() {
    let mut jpeg = Scene::still("jpeg q75, noise 2").noisy(2.0);
    jpeg.jpeg = Some(75);
    let mut drift = Scene::still("brightness +20% over a minute, noise 2").noisy(2.0);
    (drift.drift, drift.drift_from, drift.drift_over) = (0.2, 120.0, 60.0);
    let mut step = Scene::still("auto-exposure step of 10%, noise 2").noisy(2.0);
    step.step = Some((150.0, 1.1));
    let mut night = Scene::still("night driveway, noise 8").noisy(8.0);
    (night.background, night.seed) = (Background::Night, 7);
    let cases = [
        Scene::still("still"),
        Scene::still("noise 2").noisy(2.0),
        Scene::still("noise 4").noisy(4.0),
        Scene::still("noise 8").noisy(8.0),
        jpeg,
        drift,
        step,
        night,
    ];
    for scene in cases {
        let name = scene.name.clone();
        let run = scenes::run(
            scene,
            vec![scenes::trigger("door", INTERVAL, 600, None)],
            600.0,
            PI5,
        );
        let c = run.counts;
        assert!(
            run.skip_rate() >= 0.9,
            "{name}: skipped {:.0}% of due evaluations ({c:?})",
            100.0 * run.skip_rate()
        );
        assert!(
            run.evaluations.iter().all(|e| !e.figure),
            "{name}: no figure"
        );
    }
}

#[test]
fn every_figure_is_evaluated_within_an_interval_of_appearing_and_of_leaving() {
    let mut failures = Vec::new();
    for (background, noise, seed) in [
        (Background::Wall, 2.0, 1),
        (Background::Wall, 8.0, 2),
        (Background::Night, 8.0, 3),
    ] {
        for matched in [false, true] {
            for (area, at) in [
                (0.01, (0.92, 0.55)),
                (0.025, (0.5, 0.5)),
                (0.2, (0.55, 0.55)),
                (0.005, (0.4, 0.45)),
            ] {
                let name = format!(
                    "{}% figure, {}, {background:?}, noise {noise}",
                    area * 100.0,
                    if matched { "colour only" } else { "darker" }
                );
                let mut scene = Scene::still(&name)
                    .noisy(noise)
                    .with_figure(figure(area, matched, at, None));
                (scene.background, scene.seed) = (background, seed);
                // A 0.5% figure need only be seen within `recheck` (120 s here); larger
                // ones within one interval, which `recheck` cannot provide.
                let bound = if area < 0.01 { 120.0 } else { INTERVAL as f64 };
                let run = scenes::run(
                    scene,
                    vec![scenes::trigger("door", INTERVAL, 120, None)],
                    330.0,
                    PI5,
                );
                let seen = run.delay_after("door", 100.0);
                let gone = run.delay_after("door", 200.0);
                let first_seen = run
                    .of("door")
                    .into_iter()
                    .find(|e| e.frame_t >= 100.0)
                    .map(|e| e.figure);
                if !seen.is_some_and(|d| d <= bound) || first_seen != Some(true) {
                    failures.push(format!("{name}: appearing seen after {seen:?} s"));
                }
                if !gone.is_some_and(|d| d <= bound) {
                    failures.push(format!("{name}: leaving seen after {gone:?} s"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_zones_triggers_see_figures_in_it_and_nothing_outside_it() {
    let zone = [0.5, 0.4, 1.0, 1.0];
    for area in [0.005, 0.01, 0.025, 0.2] {
        for matched in [false, true] {
            let scene = Scene::still("zone").noisy(4.0).with_figure(figure(
                area,
                matched,
                (0.6, 0.5),
                Some(zone),
            ));
            let run = scenes::run(
                scene,
                vec![scenes::trigger("gate", INTERVAL, 120, Some(zone))],
                330.0,
                PI5,
            );
            let bound = if area < 0.01 { 120.0 } else { INTERVAL as f64 };
            for t in [100.0, 200.0] {
                let d = run.delay_after("gate", t);
                assert!(
                    d.is_some_and(|d| d <= bound),
                    "{}% of the zone, matched {matched}: change at {t} s seen after {d:?} s",
                    area * 100.0
                );
            }
        }
    }
    // A figure of 20% of the frame beside the zone: the whole-frame trigger looks, the
    // zone's does not.
    let scene = Scene::still("outside").noisy(4.0).with_figure(figure(
        0.2 * 0.45,
        false,
        (0.5, 0.5),
        Some([0.0, 0.0, 0.45, 1.0]),
    ));
    let run = scenes::run(
        scene,
        vec![
            scenes::trigger("gate", INTERVAL, 600, Some(zone)),
            scenes::trigger("door", INTERVAL, 600, None),
        ],
        300.0,
        PI5,
    );
    assert!(run.delay_after("door", 100.0).is_some_and(|d| d <= 10.0));
    let gate_late: Vec<f64> = run
        .of("gate")
        .into_iter()
        .filter(|e| e.submitted >= 60.0)
        .map(|e| e.submitted)
        .collect();
    assert!(
        gate_late.is_empty(),
        "the zone's trigger was evaluated for a change outside it at {gate_late:?}"
    );
}

#[test]
fn a_settled_answer_stands_at_most_recheck_seconds() {
    let run = scenes::run(
        Scene::still("still, recheck 60").noisy(2.0),
        vec![scenes::trigger("door", INTERVAL, 60, None)],
        400.0,
        PI5,
    );
    let evals: Vec<f64> = run.of("door").iter().map(|e| e.answered).collect();
    for pair in evals.windows(2) {
        assert!(
            pair[1] - pair[0] <= 60.0 + INTERVAL as f64 + PI5.cold_s,
            "answers at {evals:?}"
        );
    }
    // Settled at about 40 s; then one recheck every 60 s plus the evaluation itself.
    assert!(run.counts.recheck >= 4, "{:?}", run.counts);
    assert_eq!(run.counts.change, 0, "{:?}", run.counts);
}
