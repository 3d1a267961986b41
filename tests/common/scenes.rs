//! Generated camera scenes for the triggers' change test, and a driver that runs them
//! through the daemon's core on a fake clock with a simulated engine.
//!
//! A scene is a textured wall with a door, seen by a camera with sensor noise, JPEG
//! compression, light that drifts or steps, and a figure that walks in and out. The
//! simulated model answers "yes" exactly when the figure is in the picture it was given,
//! so a trigger that is not evaluated after a change keeps a wrong answer: the tests and
//! `benches/scene.rs` measure which evaluations ran, were skipped, and how late.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use moonwatch::camera::CameraStatus;
use moonwatch::config::Config;
use moonwatch::daemon::core::{Act, CameraView, Core, Input, Now, Picture};
use moonwatch::frame::Frame;
use moonwatch::mqtt::wire;
use moonwatch::mqtt::MqttEvent;
use moonwatch::triggers::TriggerConfig;
use moonwatch::vision::{Answer, Answered, PrefixTiming, Response, Skill, SkillTiming};
use moonwatch::zone::Zone;

/// A figure that appears and leaves.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// Its area as a part of the frame, or of `within` when given.
    pub area: f32,
    /// Same brightness as the wall behind it, only its colour differs.
    pub matched: bool,
    /// Where it stands: a relative rectangle it is centred in (the whole frame when None).
    pub within: Option<[f32; 4]>,
    /// Where in `within` its centre is (relative).
    pub at: (f32, f32),
    /// Seconds from the start.
    pub appear: f64,
    pub leave: f64,
}

/// What the camera looks at when nothing happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    /// A grey-green wall with a door, a lit window and a floor, by day.
    Wall,
    /// A driveway at night: dark, coarse asphalt, a dim garage door, a porch light.
    Night,
}

/// A camera's view over time.
#[derive(Debug, Clone)]
pub struct Scene {
    pub name: String,
    pub background: Background,
    pub width: u32,
    pub height: u32,
    /// Sensor noise, standard deviation per pixel and channel (0..255 levels).
    pub noise: f32,
    /// Each frame goes through JPEG at this quality (an MJPEG camera).
    pub jpeg: Option<u8>,
    /// Brightness grows by this part of itself over `drift_over` seconds from `drift_from`.
    pub drift: f32,
    pub drift_from: f64,
    pub drift_over: f64,
    /// From this time on, brightness is multiplied by the factor (auto-exposure).
    pub step: Option<(f64, f32)>,
    pub figure: Option<Figure>,
    pub seed: u64,
}

impl Scene {
    pub fn still(name: &str) -> Self {
        Self {
            name: name.into(),
            background: Background::Wall,
            width: 320,
            height: 240,
            noise: 0.0,
            jpeg: None,
            drift: 0.0,
            drift_from: 0.0,
            drift_over: 60.0,
            step: None,
            figure: None,
            seed: 1,
        }
    }

    pub fn noisy(mut self, sigma: f32) -> Self {
        self.noise = sigma;
        self
    }

    pub fn with_figure(mut self, f: Figure) -> Self {
        self.figure = Some(f);
        self
    }

    /// The light's gain at `t`.
    fn gain(&self, t: f64) -> f32 {
        let ramp = ((t - self.drift_from) / self.drift_over).clamp(0.0, 1.0) as f32;
        let step = self.step.filter(|(at, _)| t >= *at).map_or(1.0, |(_, g)| g);
        (1.0 + self.drift * ramp) * step
    }

    /// The figure's pixel rectangle, if it is in view at `t`.
    pub fn figure_rect(&self, t: f64) -> Option<(u32, u32, u32, u32)> {
        let f = self.figure?;
        if t < f.appear || t >= f.leave {
            return None;
        }
        let [x0, y0, x1, y1] = f.within.unwrap_or([0.0, 0.0, 1.0, 1.0]);
        let (rw, rh) = (
            (x1 - x0) * self.width as f32,
            (y1 - y0) * self.height as f32,
        );
        // A standing figure, three times as tall as wide.
        let a = f.area * rw * rh;
        let fw = (a / 3.0).sqrt().max(1.0);
        let fh = (fw * 3.0).min(rh);
        let fw = (a / fh).max(1.0);
        let cx = x0 * self.width as f32 + f.at.0 * rw;
        let cy = y0 * self.height as f32 + f.at.1 * rh;
        let px = |v: f32, n: u32| v.round().clamp(0.0, n as f32) as u32;
        Some((
            px(cx - fw / 2.0, self.width),
            px(cy - fh / 2.0, self.height),
            px(cx + fw / 2.0, self.width),
            px(cy + fh / 2.0, self.height),
        ))
    }
}

/// Makes a scene's frames: the wall once, then light, figure, noise and JPEG per frame.
pub struct Camera {
    scene: Scene,
    wall: Vec<f32>,
    gauss: Vec<f32>,
    rng: u64,
}

impl Camera {
    pub fn new(scene: Scene) -> Self {
        let (w, h) = (scene.width as usize, scene.height as usize);
        let mut rng = scene.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut wall = vec![0f32; w * h * 3];
        // Grain of the surface: a fixed random texture per scene seed.
        let mut grain_rng = rng;
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
                let grain = (next(&mut grain_rng) % 11) as f32 - 5.0;
                let c = match scene.background {
                    // Grey-green plaster with a gentle gradient, a darker door on the
                    // left, a lit window at the top right and a floor band.
                    Background::Wall => {
                        if (0.12..0.3).contains(&fx) && fy > 0.25 && fy < 0.85 {
                            [92.0, 70.0, 52.0]
                        } else if (0.7..0.9).contains(&fx) && (0.1..0.35).contains(&fy) {
                            [190.0, 200.0, 205.0]
                        } else if fy >= 0.85 {
                            [80.0, 78.0, 74.0]
                        } else {
                            [118.0 + 20.0 * fx, 128.0, 106.0]
                        }
                    }
                    // Asphalt twice as grainy, a garage door, and a porch light whose
                    // glow falls off across the frame.
                    Background::Night => {
                        let glow = 40.0
                            * (1.0 - ((fx - 0.8).powi(2) + (fy - 0.2).powi(2)).sqrt()).max(0.0);
                        let base = if (0.1..0.45).contains(&fx) && fy < 0.6 {
                            [46.0, 46.0, 50.0]
                        } else {
                            [30.0, 31.0, 33.0]
                        };
                        [
                            base[0] + glow + grain,
                            base[1] + glow + grain,
                            base[2] + glow * 0.8 + grain,
                        ]
                    }
                };
                for (k, v) in c.iter().enumerate() {
                    wall[(y * w + x) * 3 + k] = v + grain;
                }
            }
        }
        // Gaussian noise by Box-Muller, reused with a random offset per frame.
        // Enough for a frame at any of 64 Ki offsets.
        let table = w * h * 3 + (1 << 16);
        let mut gauss = Vec::with_capacity(table + 1);
        while gauss.len() < table {
            let u1 = (next(&mut rng) as f64 + 1.0) / (u64::MAX as f64 + 2.0);
            let u2 = next(&mut rng) as f64 / u64::MAX as f64;
            let r = (-2.0 * u1.ln()).sqrt();
            let th = 2.0 * std::f64::consts::PI * u2;
            gauss.push((r * th.cos()) as f32);
            gauss.push((r * th.sin()) as f32);
        }
        Self {
            scene,
            wall,
            gauss,
            rng,
        }
    }

    pub fn scene(&self) -> &Scene {
        &self.scene
    }

    /// The frame at `t` with sequence number `seq`, and whether the figure is in it.
    pub fn frame(&mut self, t: f64, seq: u64) -> (Frame, bool) {
        let s = &self.scene;
        let (w, h) = (s.width as usize, s.height as usize);
        let gain = s.gain(t);
        let fig = s.figure_rect(t);
        let matched = s.figure.is_some_and(|f| f.matched);
        let offset = (next(&mut self.rng) as usize) % (self.gauss.len() - w * h * 3);
        let mut rgb = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let p = (y * w + x) * 3;
                let mut c = [self.wall[p], self.wall[p + 1], self.wall[p + 2]];
                let inside = fig.is_some_and(|(x0, y0, x1, y1)| {
                    (x0 as usize..x1 as usize).contains(&x)
                        && (y0 as usize..y1 as usize).contains(&y)
                });
                if inside {
                    c = if matched {
                        // A coat of another colour at the wall's brightness:
                        // 0.299 * 30 - 0.587 * 10 - 0.114 * 25 = 0.25 levels of luma.
                        [c[0] + 30.0, c[1] - 10.0, c[2] - 25.0]
                    } else {
                        // A dark coat.
                        [c[0] * 0.45, c[1] * 0.45, c[2] * 0.5]
                    };
                }
                for k in 0..3 {
                    let v = c[k] * gain + s.noise * self.gauss[offset + p + k];
                    rgb[p + k] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        let mut f = Frame::from_rgb(s.width, s.height, rgb).expect("frame");
        if let Some(q) = s.jpeg {
            f = Frame::decode(&f.to_jpeg(q), "scene").expect("jpeg");
        }
        f.captured_at = UNIX_EPOCH + Duration::from_secs_f64(T0 + t);
        f.seq = seq;
        (f, fig.is_some())
    }
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// The fake clock's Unix time at the scene's start.
pub const T0: f64 = 1_700_000_000.0;

/// A yes/no trigger with the daemon's defaults but for `interval` and `recheck`.
pub fn trigger(name: &str, interval: u64, recheck: u64, zone: Option<[f32; 4]>) -> TriggerConfig {
    let mut t: TriggerConfig = toml::from_str(&format!(
        "name = \"{name}\"\nquestion = \"Is there a person at the {name}?\"\ninterval = {interval}\nrecheck = {recheck}"
    ))
    .expect("trigger");
    t.zone = zone.map(|z| moonwatch::zone::ZoneRef::Rect(Zone::try_from(z).expect("zone")));
    t
}

/// How the simulated engine spends its time: a new picture costs an image encode and
/// prefill, a further question on the same picture only its own tokens.
#[derive(Debug, Clone, Copy)]
pub struct EngineCost {
    pub cold_s: f64,
    pub warm_s: f64,
}

/// A Raspberry Pi 5 class engine (BENCHMARKS.md: about 15 s to the first token of a new
/// frame, 0.5 s for a further yes/no question on it).
pub const PI5: EngineCost = EngineCost {
    cold_s: 15.0,
    warm_s: 0.5,
};

/// One trigger evaluation the core asked for.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub trigger: String,
    /// When the core submitted it (seconds from the start).
    pub submitted: f64,
    /// When the engine answered it.
    pub answered: f64,
    /// The time of the frame it looked at.
    pub frame_t: f64,
    /// Whether the figure was in that frame.
    pub figure: bool,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub evaluations: Vec<Evaluation>,
    /// The last published `stats` evaluations of the camera.
    pub counts: wire::Evaluations,
    /// Seconds the engine was busy.
    pub engine_busy_s: f64,
    pub duration_s: f64,
}

impl Run {
    pub fn of(&self, trigger: &str) -> Vec<&Evaluation> {
        self.evaluations
            .iter()
            .filter(|e| e.trigger == trigger)
            .collect()
    }

    /// Due evaluations skipped, as a part of all due ones (first evaluations aside).
    pub fn skip_rate(&self) -> f64 {
        let c = self.counts;
        let due = c.change + c.interval + c.recheck + c.skipped;
        if due == 0 {
            return 0.0;
        }
        c.skipped as f64 / due as f64
    }

    /// Seconds from `t` to the first evaluation of `trigger` submitted on a frame taken
    /// at or after `t` (None: never).
    pub fn delay_after(&self, trigger: &str, t: f64) -> Option<f64> {
        self.of(trigger)
            .into_iter()
            .find(|e| e.frame_t >= t)
            .map(|e| e.submitted - t)
    }

    /// Whether the run's final answer for `trigger` matches the figure at the end.
    pub fn duty(&self) -> f64 {
        self.engine_busy_s / self.duration_s
    }
}

/// Runs `scene` through the core for `seconds` with `triggers` on one camera at one frame
/// a second, ticking four times a second as the executor does; the engine answers "yes"
/// when the figure is in the picture, after `cost`.
pub fn run(scene: Scene, triggers: Vec<TriggerConfig>, seconds: f64, cost: EngineCost) -> Run {
    let mut cfg = Config::default();
    cfg.mqtt.prefix = "mw".into();
    cfg.daemon.stats_interval = 1;
    cfg.daemon.request_timeout = 120;
    cfg.triggers = triggers;
    let questions: HashMap<String, String> = cfg
        .triggers
        .iter()
        .map(|t| (t.question.clone().unwrap_or_default(), t.name.clone()))
        .collect();
    let mono = Instant::now();
    let at = |t: f64| Now {
        mono: mono + Duration::from_secs_f64(t),
        unix: T0 + t,
    };
    let mut core = Core::new(cfg, "cam", Vec::new(), Vec::new(), None, at(0.0));
    let mut camera = Camera::new(scene);
    let mut view = CameraView {
        latest: None,
        status: CameraStatus::Running,
    };
    core.handle(
        at(0.0),
        &view,
        Input::Mqtt(MqttEvent::Connected {
            session_present: false,
        }),
    );
    let mut figure_in: BTreeMap<u64, (f64, bool)> = BTreeMap::new();
    let mut out = Run {
        duration_s: seconds,
        ..Run::default()
    };
    // (job, done at, frame, trigger, submitted)
    let mut busy: Option<(u64, f64, Arc<Frame>, String, f64)> = None;
    let mut last_key = None;
    let mut seq = 0;
    let mut t = 0.0;
    while t <= seconds {
        if (t - t.floor()).abs() < 1e-9 {
            seq += 1;
            let (f, fig) = camera.frame(t, seq);
            figure_in.insert(seq, (t, fig));
            view.latest = Some(Arc::new(f));
        }
        let mut input = Input::Tick;
        if let Some((job, done_at, frame, trigger, submitted)) = busy.take() {
            if t >= done_at {
                let (frame_t, fig) = figure_in[&frame.seq];
                out.evaluations.push(Evaluation {
                    trigger,
                    submitted,
                    answered: t,
                    frame_t,
                    figure: fig,
                });
                input = Input::EngineDone {
                    job,
                    result: Ok(yes_no(fig)),
                    frame: Some(frame),
                };
            } else {
                busy = Some((job, done_at, frame, trigger, submitted));
            }
        }
        for act in core.handle(at(t), &view, input) {
            match act {
                Act::Submit {
                    job,
                    picture: Picture::Frame(frame),
                    skills,
                    ..
                } => {
                    let question = match &skills[0] {
                        Skill::YesNo { question } => question.clone(),
                        other => panic!("a trigger asked {other:?}"),
                    };
                    let cost_s = if last_key == Some(frame.key) {
                        cost.warm_s
                    } else {
                        cost.cold_s
                    };
                    last_key = Some(frame.key);
                    out.engine_busy_s += cost_s;
                    busy = Some((job, t + cost_s, frame, questions[&question].clone(), t));
                }
                Act::Publish(m) if m.topic == "mw/cam/stats" => {
                    let s: wire::Stats = serde_json::from_slice(&m.payload).expect("stats");
                    out.counts = s.evaluations;
                }
                _ => {}
            }
        }
        t += 0.25;
    }
    out
}

fn yes_no(yes: bool) -> Response {
    Response {
        frame_key: String::new(),
        prefix: PrefixTiming::default(),
        answers: vec![Answered {
            answer: Answer::YesNo {
                answer: Some(yes),
                confidence: 0.95,
                p_yes: if yes { 0.95 } else { 0.05 },
                p_no: if yes { 0.05 } else { 0.95 },
            },
            timing: SkillTiming::default(),
        }],
        queued_ms: 0.0,
        total_ms: 1.0,
    }
}
