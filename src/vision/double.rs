//! A test double of the model, for measuring what surrounds it (the pool, the scheduler):
//! every job takes a fixed time and gets a fixed answer, without loading a model.
//!
//! **Not a model.** It says yes to every yes/no question, "test double" to every question
//! and caption, and finds nothing. It is used only when the environment variable
//! [`ENV`] holds a cost in milliseconds (benches/fleet.rs sets it for its fixed-cost
//! workers), and the daemon logs a warning at start when it is.

use std::time::{Duration, Instant};

use super::{
    Answer, Answered, Cancel, Engine, EngineError, Method, PrefixTiming, Request, Response, Skill,
    SkillTiming,
};

/// The environment variable that swaps the model for this double: milliseconds per job.
pub const ENV: &str = "MOONWATCH_TEST_DOUBLE_MS";
/// The longest cost accepted (ten minutes).
const MAX_MS: u64 = 600_000;

/// The cost [`ENV`] asks for, if it is set (an unreadable value is an error).
pub fn from_env() -> Result<Option<Duration>, EngineError> {
    let Ok(v) = std::env::var(ENV) else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(ms) if ms <= MAX_MS => Ok(Some(Duration::from_millis(ms))),
        _ => Err(EngineError::Load(format!(
            "{ENV}={v:?}: milliseconds from 0 to {MAX_MS} expected"
        ))),
    }
}

/// The double: sleeps `cost` per job (a stop cuts it short), then answers.
#[derive(Debug)]
pub struct Sleeper {
    cost: Duration,
}

impl Sleeper {
    /// An engine running the double, with a queue of `depth` like the model's.
    pub fn start(cost: Duration, depth: usize) -> Result<Engine, EngineError> {
        Engine::spawn(depth, move || Ok(Sleeper { cost }))
    }
}

impl super::Vision for Sleeper {
    fn answer(&mut self, req: &Request, stop: &Cancel) -> Result<Response, EngineError> {
        let started = Instant::now();
        while started.elapsed() < self.cost {
            if stop.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let left = self.cost.saturating_sub(started.elapsed());
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
        let text = || "test double".to_owned();
        let answers = req
            .skills
            .iter()
            .map(|s| Answered {
                answer: match s {
                    Skill::Caption { .. } => Answer::Caption { caption: text() },
                    Skill::Query { .. } => Answer::Query {
                        answer: text(),
                        confidence: 1.0,
                    },
                    Skill::YesNo { .. } => Answer::YesNo {
                        answer: Some(true),
                        confidence: 1.0,
                        p_yes: 1.0,
                        p_no: 0.0,
                    },
                    Skill::Detect { .. } => Answer::Detect {
                        present: Some(false),
                        confidence: 1.0,
                        objects: Vec::new(),
                        method: Method::PromptedBoxes,
                        raw: String::new(),
                        parsed: true,
                    },
                    Skill::Point { .. } => Answer::Point {
                        present: Some(false),
                        confidence: 1.0,
                        points: Vec::new(),
                        method: Method::PromptedBoxes,
                        raw: String::new(),
                        parsed: true,
                    },
                },
                timing: SkillTiming::default(),
            })
            .collect();
        Ok(Response {
            frame_key: format!("{:016x}", req.frame.key),
            prefix: PrefixTiming::default(),
            answers,
            queued_ms: 0.0,
            total_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use std::sync::Arc;

    #[test]
    fn it_takes_its_time_and_says_yes() {
        let e = Sleeper::start(Duration::from_millis(30), 2).unwrap();
        let frame = Arc::new(Frame::from_rgb(1, 1, vec![1u8, 2, 3]).unwrap());
        let q = Skill::YesNo {
            question: "Q?".into(),
        };
        let t = Instant::now();
        let r = e.run(Request::new(frame, vec![q])).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert!(matches!(
            r.answers[0].answer,
            Answer::YesNo {
                answer: Some(true),
                ..
            }
        ));
    }
}
