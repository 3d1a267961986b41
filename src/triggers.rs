//! Standing triggers: yes/no questions or watched objects, evaluated again and again, whose
//! state changes drive home automation.
//!
//! Pure: [`TriggerState::observe`] takes an observation and the time, and returns what to
//! publish. Debounce (`consecutive` agreeing observations), a confidence `threshold` and a
//! `cooldown` between changes keep a flickering answer from flapping the state.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a trigger asks about each frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// Identifier: lowercase letters, digits and underscores (used in topics and entity ids).
    pub name: String,
    /// A yes/no question ("Is the garage door open?"). Exactly one of question and object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// An object to detect ("car"); the trigger is on while at least one is found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Confidence an answer needs to count (yes/no triggers), 0.5..1.
    #[serde(default = "defaults::threshold")]
    pub threshold: f32,
    /// Agreeing observations in a row before the state changes.
    #[serde(default = "defaults::consecutive")]
    pub consecutive: u32,
    /// Seconds after a change during which the state does not change again.
    #[serde(default = "defaults::cooldown")]
    pub cooldown: u64,
    /// Seconds between evaluations (a scene change evaluates sooner).
    #[serde(default = "defaults::interval")]
    pub interval: u64,
    /// Longest a settled answer stands on a picture that seems unchanged, in seconds: then
    /// the trigger is evaluated whatever the change test says. 0: evaluated every
    /// interval, never skipped.
    #[serde(default = "defaults::recheck")]
    pub recheck: u64,
    /// Home Assistant device class of the binary sensor (occupancy, door, motion, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// The part of the frame to look at: a zone of the camera by name, or
    /// `[x_min, y_min, x_max, y_max]` (relative); the whole frame when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<crate::zone::ZoneRef>,
    /// Object triggers: the snapshot of a begin shows the boxes found, drawn on the frame
    /// (default); `false` keeps the plain frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotate: Option<bool>,
}

/// Home Assistant's binary_sensor device classes
/// (<https://www.home-assistant.io/integrations/binary_sensor/#device-class>).
pub const BINARY_SENSOR_CLASSES: &[&str] = &[
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
];

mod defaults {
    pub fn threshold() -> f32 {
        0.6
    }
    pub fn consecutive() -> u32 {
        2
    }
    pub fn cooldown() -> u64 {
        30
    }
    pub fn interval() -> u64 {
        10
    }
    /// Ten minutes: a change the scene test cannot see (too small, or too close to the
    /// background for the camera's noise) is looked at within ten minutes, for one cold
    /// frame per group of triggers (about 3% of a 2-core engine's time; BENCHMARKS.md).
    pub fn recheck() -> u64 {
        600
    }
}

impl TriggerConfig {
    /// Whether a begin's snapshot has the boxes drawn on it.
    pub fn annotates(&self) -> bool {
        self.object.is_some() && self.annotate != Some(false)
    }

    /// Every problem with this trigger, as (key, message); `key` is relative ("name").
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            out.push((
                "name",
                format!("{:?} must be 1-64 of a-z, 0-9 and _", self.name),
            ));
        }
        match (&self.question, &self.object) {
            // The same check as a request's question or object, so the engine never
            // refuses what was accepted here.
            (Some(_), None) | (None, Some(_)) => {
                let key = if self.question.is_some() {
                    "question"
                } else {
                    "object"
                };
                if let Err(m) = crate::vision::prompt::check(&self.skill()) {
                    out.push((key, m));
                }
            }
            _ => out.push((
                "question",
                "exactly one of question and object must be set".into(),
            )),
        }
        if self.annotate.is_some() && self.object.is_none() {
            out.push((
                "annotate",
                "is for object triggers (their snapshot shows the boxes)".into(),
            ));
        }
        if let Some(dc) = &self.device_class {
            if !BINARY_SENSOR_CLASSES.contains(&dc.as_str()) {
                out.push((
                    "device_class",
                    format!(
                        "{dc:?} is not a Home Assistant binary_sensor device class ({})",
                        BINARY_SENSOR_CLASSES.join(", ")
                    ),
                ));
            }
        }
        if !(0.5..=1.0).contains(&self.threshold) {
            out.push((
                "threshold",
                format!("{} must be between 0.5 and 1", self.threshold),
            ));
        }
        if self.consecutive == 0 || self.consecutive > 100 {
            out.push((
                "consecutive",
                format!("{} must be between 1 and 100", self.consecutive),
            ));
        }
        if self.interval == 0 || self.interval > 86_400 {
            out.push((
                "interval",
                format!("{} must be between 1 and 86400 seconds", self.interval),
            ));
        }
        if self.recheck != 0 && (self.recheck < self.interval || self.recheck > 86_400) {
            out.push((
                "recheck",
                format!(
                    "{} must be 0 (never skip) or between the interval ({} s) and 86400 seconds",
                    self.recheck, self.interval
                ),
            ));
        }
        out
    }

    pub fn skill(&self) -> crate::vision::Skill {
        match (&self.question, &self.object) {
            (Some(q), _) => crate::vision::Skill::YesNo {
                question: q.clone(),
            },
            (None, Some(o)) => crate::vision::Skill::Detect { object: o.clone() },
            (None, None) => crate::vision::Skill::YesNo {
                question: String::new(),
            },
        }
    }
}

/// A trigger setting that can be changed while moonwatch runs (Home Assistant's number
/// entities), kept across restarts like the trigger's switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunable {
    Threshold,
    Interval,
    Cooldown,
}

/// Overrides of a trigger's tunable settings (`None`: as configured).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<u64>,
}

impl Tuning {
    /// `cfg` with these overrides.
    pub fn apply(&self, mut cfg: TriggerConfig) -> TriggerConfig {
        cfg.threshold = self.threshold.unwrap_or(cfg.threshold);
        cfg.interval = self.interval.unwrap_or(cfg.interval);
        cfg.cooldown = self.cooldown.unwrap_or(cfg.cooldown);
        cfg
    }
}

impl Tunable {
    pub const ALL: [Tunable; 3] = [Self::Threshold, Self::Interval, Self::Cooldown];

    /// Its key in topics, entity ids and the configuration.
    pub fn key(self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::Interval => "interval",
            Self::Cooldown => "cooldown",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.key() == key)
    }

    /// (min, max, step, unit) as Home Assistant's number entity shows it; the same bounds
    /// as the configuration's check (a cooldown is at most a day here).
    pub fn range(self) -> (f64, f64, f64, Option<&'static str>) {
        match self {
            Self::Threshold => (0.5, 1.0, 0.01, None),
            Self::Interval => (1.0, 86_400.0, 1.0, Some("s")),
            Self::Cooldown => (0.0, 86_400.0, 1.0, Some("s")),
        }
    }

    /// The value as published on its retained topic.
    pub fn text(self, cfg: &TriggerConfig) -> String {
        match self {
            Self::Threshold => cfg.threshold.to_string(),
            Self::Interval => cfg.interval.to_string(),
            Self::Cooldown => cfg.cooldown.to_string(),
        }
    }

    /// `tuning` with this setting read from `payload` (a number, as Home Assistant sends
    /// it), checked against its range and, applied to `cfg`, against the configuration's
    /// rules (an interval above the trigger's `recheck` is refused).
    pub fn parse(
        self,
        payload: &[u8],
        cfg: &TriggerConfig,
        tuning: Tuning,
    ) -> Result<Tuning, String> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| "not UTF-8".to_owned())?
            .trim();
        let v: f64 = text
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?;
        let (min, max, _, _) = self.range();
        if !(min..=max).contains(&v) {
            return Err(format!("{v} is outside {min}..{max}"));
        }
        let whole = || {
            if v.fract() == 0.0 {
                Ok(v as u64)
            } else {
                Err(format!("{v} is not a whole number of seconds"))
            }
        };
        let mut out = tuning;
        match self {
            Self::Threshold => out.threshold = Some(v as f32),
            Self::Interval => out.interval = Some(whole()?),
            Self::Cooldown => out.cooldown = Some(whole()?),
        }
        let tuned = out.apply(cfg.clone());
        if let Some((key, m)) = tuned.problems().into_iter().next() {
            return Err(format!("{key}: {m}"));
        }
        Ok(out)
    }
}

/// One evaluation of a trigger on a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// What the model said: yes / object present.
    pub on: bool,
    /// How sure it was (yes/no: the confidence; detection: 1 when found, else 0.5..1 never
    /// gates it).
    pub confidence: f32,
}

/// Something to publish after an observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// The state became known or changed: publish it (retained).
    State(bool),
    /// The trigger fired (off -> on).
    Begin,
    /// The trigger ended (on -> off), after being on for this long.
    End { duration: Duration },
}

/// The state machine of one trigger. Times are seconds since any fixed origin.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerState {
    /// Known state; `None` until enough agreeing observations.
    pub state: Option<bool>,
    /// The candidate state and how many observations in a row agreed with it.
    streak: Option<(bool, u32)>,
    last_change: Option<f64>,
    on_since: Option<f64>,
    pub last_confidence: f32,
}

impl Default for TriggerState {
    fn default() -> Self {
        Self::new()
    }
}

impl TriggerState {
    pub fn new() -> Self {
        Self {
            state: None,
            streak: None,
            last_change: None,
            on_since: None,
            last_confidence: 0.0,
        }
    }

    /// The state is known and the last confident observation agreed with it: evaluating
    /// the same picture again would change nothing.
    pub fn settled(&self) -> bool {
        self.state.is_some() && self.streak.map(|(v, _)| v) == self.state
    }

    /// Feeds one observation taken at `now`; returns what changed.
    pub fn observe(&mut self, cfg: &TriggerConfig, obs: Observation, now: f64) -> Vec<Change> {
        self.last_confidence = obs.confidence;
        if obs.confidence < cfg.threshold {
            // Not sure enough either way: it neither confirms nor breaks a streak.
            return vec![];
        }
        let count = match self.streak {
            Some((v, n)) if v == obs.on => n + 1,
            _ => 1,
        };
        self.streak = Some((obs.on, count));
        if self.state == Some(obs.on) || count < cfg.consecutive.max(1) {
            return vec![];
        }
        let cooling = self
            .last_change
            .is_some_and(|t| now - t < cfg.cooldown as f64);
        if cooling && self.state.is_some() {
            return vec![];
        }
        let was = self.state.replace(obs.on);
        self.last_change = Some(now);
        let mut out = vec![Change::State(obs.on)];
        match (was, obs.on) {
            (Some(false) | None, true) => {
                self.on_since = Some(now);
                out.push(Change::Begin);
            }
            (Some(true), false) => {
                let since = self.on_since.take().unwrap_or(now);
                out.push(Change::End {
                    duration: Duration::from_secs_f64((now - since).max(0.0)),
                });
            }
            _ => {}
        }
        out
    }
}

/// Why a trigger is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Never evaluated (since start, reload, or its switch came on).
    First,
    /// Its picture changed since its last evaluation.
    Change,
    /// Its interval passed and its answer is not settled (or `recheck` is 0).
    Interval,
    /// Its settled answer on an unchanged picture reached `recheck` seconds.
    Recheck,
}

/// What the pacing rule says of one trigger at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Evaluate it now.
    Due(Cause),
    /// Not due yet but within half an interval: it joins a round that starts now rather
    /// than costing a frame of its own later.
    Soon(Cause),
    /// Due, but its settled answer stands on an unchanged picture: skip this interval.
    Skip,
    /// Nothing to do yet.
    Wait,
}

/// When a trigger was evaluated, as the pacing rule needs it (Unix seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evaluated {
    /// When its interval was last restarted: the end of its last evaluation, or the moment
    /// a due evaluation was skipped.
    pub interval_from: Option<f64>,
    /// When the model last answered it (the end of its last evaluation).
    pub answered: Option<f64>,
}

/// The pacing rule. A trigger is evaluated when it never was, when its picture `changed`
/// (at most once a second), and each `interval` while its answer is unsettled; a settled
/// answer on an unchanged picture is skipped, but stands at most `recheck` seconds
/// (`recheck = 0`: never skipped).
pub fn pace(cfg: &TriggerConfig, settled: bool, at: Evaluated, changed: bool, now: f64) -> Pace {
    let Some(from) = at.interval_from else {
        return Pace::Due(Cause::First);
    };
    let since = now - from;
    let interval = cfg.interval as f64;
    if changed && since >= CHANGE_MIN_GAP.min(interval) {
        return Pace::Due(Cause::Change);
    }
    // How long the answer will have stood when the interval is up.
    let stands_at_due = at
        .answered
        .map_or(f64::INFINITY, |t| now - t + (interval - since).max(0.0));
    let cause = if !settled || cfg.recheck == 0 {
        Some(Cause::Interval)
    } else if stands_at_due >= cfg.recheck as f64 {
        Some(Cause::Recheck)
    } else {
        None
    };
    match cause {
        Some(c) if since >= interval => Pace::Due(c),
        Some(c) if since >= interval / 2.0 => Pace::Soon(c),
        None if since >= interval => Pace::Skip,
        _ => Pace::Wait,
    }
}

/// A changed picture is looked at again soon, but not more than once a second.
pub const CHANGE_MIN_GAP: f64 = 1.0;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(consecutive: u32, cooldown: u64) -> TriggerConfig {
        TriggerConfig {
            name: "door".into(),
            question: Some("Is the door open?".into()),
            object: None,
            threshold: 0.7,
            consecutive,
            cooldown,
            interval: 10,
            recheck: 600,
            device_class: None,
            zone: None,
            annotate: None,
        }
    }

    fn obs(on: bool, confidence: f32) -> Observation {
        Observation { on, confidence }
    }

    #[test]
    fn state_machine_table() {
        // (observation, time, expected changes)
        let c = cfg(2, 30);
        let mut s = TriggerState::new();
        let steps: Vec<(Observation, f64, Vec<Change>)> = vec![
            (obs(true, 0.9), 0.0, vec![]),  // one is not enough
            (obs(true, 0.6), 10.0, vec![]), // below threshold: ignored
            (
                obs(true, 0.8),
                20.0,
                vec![Change::State(true), Change::Begin],
            ), // second agreeing
            (obs(true, 0.9), 30.0, vec![]), // no change
            (obs(false, 0.9), 35.0, vec![]), // streak of one
            (obs(false, 0.9), 40.0, vec![]), // cooling down (20 s < 30 s)
            (
                obs(false, 0.9),
                55.0,
                vec![
                    Change::State(false),
                    Change::End {
                        duration: Duration::from_secs(35),
                    },
                ],
            ),
            (obs(true, 0.95), 60.0, vec![]),
            (obs(false, 0.95), 61.0, vec![]), // streak broken
            (obs(true, 0.95), 100.0, vec![]),
            (
                obs(true, 0.95),
                101.0,
                vec![Change::State(true), Change::Begin],
            ),
        ];
        for (i, (o, t, want)) in steps.into_iter().enumerate() {
            assert_eq!(s.observe(&c, o, t), want, "step {i}");
        }
    }

    #[test]
    fn first_known_state_is_published_without_an_event_when_off() {
        let c = cfg(1, 0);
        let mut s = TriggerState::new();
        assert_eq!(
            s.observe(&c, obs(false, 0.8), 0.0),
            vec![Change::State(false)]
        );
        assert_eq!(s.state, Some(false));
    }

    #[test]
    fn pace_table() {
        use Cause::*;
        let mut c = cfg(1, 0);
        c.interval = 10;
        c.recheck = 60;
        let at = |from: f64, answered: f64| Evaluated {
            interval_from: Some(from),
            answered: Some(answered),
        };
        // (settled, evaluated, changed, now, expected)
        let rows = [
            (false, Evaluated::default(), false, 0.0, Pace::Due(First)),
            (true, at(0.0, 0.0), false, 4.0, Pace::Wait),
            (true, at(0.0, 0.0), true, 0.5, Pace::Wait), // at most once a second
            (true, at(0.0, 0.0), true, 1.0, Pace::Due(Change)),
            (false, at(0.0, 0.0), false, 6.0, Pace::Soon(Interval)),
            (false, at(0.0, 0.0), false, 10.0, Pace::Due(Interval)),
            (true, at(0.0, 0.0), false, 10.0, Pace::Skip),
            // Skipped at 50 s: the answer of 0 s reaches 60 s at the next interval.
            (true, at(50.0, 0.0), false, 55.0, Pace::Soon(Recheck)),
            (true, at(50.0, 0.0), false, 60.0, Pace::Due(Recheck)),
            (true, at(50.0, 0.0), true, 60.0, Pace::Due(Change)),
        ];
        for (i, (settled, e, changed, now, want)) in rows.into_iter().enumerate() {
            assert_eq!(pace(&c, settled, e, changed, now), want, "row {i}");
        }
        // recheck = 0: a settled answer is never skipped.
        c.recheck = 0;
        assert_eq!(
            pace(&c, true, at(0.0, 0.0), false, 10.0),
            Pace::Due(Interval)
        );
    }

    #[test]
    fn config_problems_are_listed() {
        let mut c = cfg(0, 0);
        c.name = "Bad Name".into();
        c.object = Some("car".into());
        c.threshold = 0.2;
        c.interval = 0;
        let keys: Vec<_> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["name", "question", "threshold", "consecutive", "interval"]
        );
        assert!(cfg(2, 30).problems().is_empty());
    }
}
