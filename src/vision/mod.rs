//! The vision engine: one OS thread owns the model; everyone else sends it jobs.
//!
//! [`Engine`] is the handle the rest of the program holds. It sends [`Request`]s over a
//! bounded queue (full queue: [`EngineError::Busy`], nothing waits unboundedly) to a worker
//! thread that owns a [`Vision`] implementation: [`moondream::Moondream`] on llama.cpp in
//! production, anything else in tests. Each request carries one frame and the skills to
//! run on it; the worker answers them all from one encoded image prefix.

pub mod crops;
pub mod double;
pub mod gpt2;
#[allow(unsafe_code)]
pub mod llama;
pub mod memory;
pub mod moondream;
pub mod parse;
pub mod prompt;
pub mod region;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use parse::{BBox, Point, YesNo};
pub use prompt::Revision;

use crate::frame::Frame;

/// How long a caption should be.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CaptionLength {
    Short,
    #[default]
    Normal,
    Long,
}

/// One thing to find out about a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "skill", rename_all = "snake_case")]
pub enum Skill {
    /// Describe the picture.
    Caption {
        #[serde(default)]
        length: CaptionLength,
    },
    /// Answer a free question.
    Query { question: String },
    /// Find boxes around every instance of an object.
    Detect { object: String },
    /// Find a point on every instance of an object.
    Point { object: String },
    /// Answer a yes/no question with a confidence.
    YesNo { question: String },
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced `<|endoftext|>`.
    EndOfText,
    /// The text reached a stop sequence (the model starting a new `Question:` turn).
    StopSequence,
    /// The skill's token budget was used up: the answer may be cut short.
    Budget,
    /// The context was full: the answer may be cut short.
    ContextFull,
}

/// How a detection or point result was obtained from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Asked `Bounding box: {object}` and parsed `[x1, y1, x2, y2]` from the answer text
    /// (the GGUF files carry no region heads).
    PromptedBoxes,
    /// The centres of the boxes found by [`Method::PromptedBoxes`].
    BoxCenters,
    /// Moondream's own region heads (2025-04-14 with `model.region`): coordinates and
    /// sizes decoded from the text model's hidden state, every object the model lists.
    RegionHeads,
}

/// The result of one skill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "skill", rename_all = "snake_case")]
pub enum Answer {
    Caption {
        caption: String,
    },
    Query {
        answer: String,
        /// How sure the model was of its words: the geometric mean of the probabilities of
        /// the tokens it chose (the end of the answer included), 0..1. For a yes/no
        /// question asked as a query this is about the probability of its yes or no.
        confidence: f32,
    },
    Detect {
        /// Whether the object is in the picture. `prompted_boxes`: from a yes/no question
        /// asked first, `null` when the model answered neither yes nor no, and boxes are
        /// asked for only when this is `true`. `region_heads`: whether any object was found.
        present: Option<bool>,
        /// `prompted_boxes`: probability of the presence answer among yes and no, 0.5..1.
        /// `region_heads`: probability of the model's first decision (stop or go on).
        confidence: f32,
        /// In the model's order; `region_heads` gives up to 50.
        objects: Vec<BBox>,
        method: Method,
        /// The model's text, kept so a user can see what was (or was not) parsed (empty
        /// for `region_heads`).
        raw: String,
        /// False when boxes were asked for and none could be read from the answer.
        parsed: bool,
    },
    Point {
        present: Option<bool>,
        confidence: f32,
        points: Vec<Point>,
        method: Method,
        raw: String,
        parsed: bool,
    },
    YesNo {
        /// `null` (uncertain) when yes and no together got less than the configured
        /// share of the probability: the model wanted to say something else.
        answer: Option<bool>,
        confidence: f32,
        p_yes: f32,
        p_no: f32,
    },
}

/// Where the time went for one skill.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SkillTiming {
    /// Question tokens prefilled after the image prefix.
    pub prompt_tokens: u32,
    pub prefill_ms: f64,
    pub generated_tokens: u32,
    /// Single-token decode steps and the time they took (decode speed = steps / time).
    pub decode_steps: u32,
    pub decode_ms: f64,
    /// From the start of this request's work to this skill's first answer token: includes
    /// the image encode and prefill when the frame was not cached yet.
    pub first_token_ms: f64,
    /// Why the answer ended; absent for yes/no, which generates nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
}

/// Where the time went for the image prefix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PrefixTiming {
    /// True when the frame's prefix was already in the KV cache: no encode, no prefill.
    pub reused: bool,
    /// The picture the model saw: the frame stretched to the encoder's input size, as
    /// Moondream's reference preprocessing does (0 when reused).
    pub input_width: u32,
    pub input_height: u32,
    /// Crops the encoder saw (`model.crops`): 1, or with reference crops the whole
    /// picture plus the local crops (0 when reused).
    #[serde(default)]
    pub crops: u32,
    /// Time to stretch the frame to that size (or cut it into crops).
    pub resize_ms: f64,
    pub image_encode_ms: f64,
    pub image_prefill_ms: f64,
    /// Positions the prefix takes in the context (BOS + image tokens).
    pub tokens: u32,
}

/// One answered skill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Answered {
    #[serde(flatten)]
    pub answer: Answer,
    pub timing: SkillTiming,
}

/// Everything learned about one frame in one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub frame_key: String,
    pub prefix: PrefixTiming,
    pub answers: Vec<Answered>,
    /// Time spent waiting in the queue before the worker took the request.
    pub queued_ms: f64,
    pub total_ms: f64,
}

/// Why the engine could not answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model: {0}")]
    Load(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the model cannot take this image: {0}")]
    Image(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("engine busy: {0} requests already waiting")]
    Busy(usize),
    #[error("request cancelled")]
    Cancelled,
    #[error("the engine has stopped")]
    Stopped,
}

/// A cancellation flag shared between a request's owner and the worker.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Work for the engine: one frame, the skills to run on it.
#[derive(Debug, Clone)]
pub struct Request {
    pub frame: Arc<Frame>,
    pub skills: Vec<Skill>,
    /// Set to abandon the request; checked before the image and between tokens.
    pub cancel: Cancel,
}

impl Request {
    pub fn new(frame: Arc<Frame>, skills: Vec<Skill>) -> Self {
        Self {
            frame,
            skills,
            cancel: Cancel::new(),
        }
    }
}

/// What the engine's owner thread runs requests on. The real one is
/// [`moondream::Moondream`]; tests of callers can supply a double.
pub trait Vision {
    /// Answers every skill in `req` about its frame, in order.
    fn answer(&mut self, req: &Request, stop: &Cancel) -> Result<Response, EngineError>;
}

struct Job {
    req: Request,
    queued: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Response, EngineError>>,
}

/// Pending answer to a submitted request; usable from async code (`.await`) or blocking
/// code ([`Ticket::wait`]).
pub type Ticket = tokio::sync::oneshot::Receiver<Result<Response, EngineError>>;

/// Handle to the engine thread. Dropping it stops the thread after cancelling the job
/// in progress.
#[derive(Debug)]
pub struct Engine {
    jobs: Option<SyncSender<Job>>,
    depth: usize,
    stop: Cancel,
    worker: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the worker thread; `init` builds the model on that thread, and its error
    /// is returned here.
    pub fn spawn<V, F>(depth: usize, init: F) -> Result<Self, EngineError>
    where
        V: Vision,
        F: FnOnce() -> Result<V, EngineError> + Send + 'static,
    {
        Self::spawn_scoped(depth, move |ready, jobs, stop| match init() {
            Ok(mut v) => {
                let _ = ready.send(Ok(()));
                serve(&jobs, &mut v, &stop);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        })
    }

    /// Like [`Engine::spawn`], for models that borrow from state living on the worker's
    /// stack (llama.cpp contexts borrow their model): `body` signals readiness itself and
    /// then calls [`serve`].
    fn spawn_scoped<F>(depth: usize, body: F) -> Result<Self, EngineError>
    where
        F: FnOnce(mpsc::Sender<Result<(), EngineError>>, Receiver<Job>, Cancel) + Send + 'static,
    {
        let depth = depth.max(1);
        let (tx, rx) = mpsc::sync_channel(depth);
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Cancel::new();
        let worker_stop = stop.clone();
        let worker = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || body(ready_tx, rx, worker_stop))
            .map_err(|e| EngineError::Load(format!("cannot start engine thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                jobs: Some(tx),
                depth,
                stop,
                worker: Some(worker),
            }),
            Ok(Err(e)) => {
                let _ = worker.join();
                Err(e)
            }
            Err(_) => {
                let _ = worker.join();
                Err(EngineError::Load(
                    "engine thread ended while loading".into(),
                ))
            }
        }
    }

    /// Queues a request; refuses at once with [`EngineError::Busy`] when the queue is full.
    pub fn submit(&self, req: Request) -> Result<Ticket, EngineError> {
        for skill in &req.skills {
            prompt::check(skill).map_err(EngineError::Invalid)?;
        }
        if req.skills.is_empty() {
            return Err(EngineError::Invalid("no skills requested".into()));
        }
        let (reply, ticket) = tokio::sync::oneshot::channel();
        let job = Job {
            req,
            queued: Instant::now(),
            reply,
        };
        let jobs = self.jobs.as_ref().ok_or(EngineError::Stopped)?;
        match jobs.try_send(job) {
            Ok(()) => Ok(ticket),
            Err(TrySendError::Full(_)) => Err(EngineError::Busy(self.depth)),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
        }
    }

    /// Submits and waits (for command-line use; not from inside an async runtime).
    pub fn run(&self, req: Request) -> Result<Response, EngineError> {
        self.submit(req)?
            .blocking_recv()
            .map_err(|_| EngineError::Stopped)?
    }

    /// Cancels the job in progress, refuses queued ones and joins the thread.
    pub fn shutdown(mut self) {
        self.stop_worker();
    }

    fn stop_worker(&mut self) {
        self.stop.cancel();
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// The worker loop: answers jobs until every sender is gone. After a stop, queued jobs are
/// answered with [`EngineError::Stopped`] instead of being run.
fn serve(jobs: &Receiver<Job>, vision: &mut dyn Vision, stop: &Cancel) {
    while let Ok(job) = jobs.recv() {
        let queued_ms = job.queued.elapsed().as_secs_f64() * 1e3;
        let result = if stop.is_cancelled() {
            Err(EngineError::Stopped)
        } else if job.req.cancel.is_cancelled() {
            Err(EngineError::Cancelled)
        } else {
            let _span = tracing::debug_span!("request", skills = job.req.skills.len()).entered();
            vision.answer(&job.req, stop).map(|mut r| {
                r.queued_ms = queued_ms;
                r
            })
        };
        // The caller may have given up waiting; that is not an error here.
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A double that records what it was asked and can be held up.
    struct Fake {
        seen: Arc<Mutex<Vec<usize>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Vision for Fake {
        fn answer(&mut self, req: &Request, stop: &Cancel) -> Result<Response, EngineError> {
            let _held = self.gate.lock().unwrap();
            if stop.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            self.seen.lock().unwrap().push(req.skills.len());
            Ok(Response {
                frame_key: format!("{:016x}", req.frame.key),
                prefix: PrefixTiming::default(),
                answers: vec![],
                queued_ms: 0.0,
                total_ms: 0.0,
            })
        }
    }

    fn frame() -> Arc<Frame> {
        Arc::new(Frame::from_rgb(1, 1, vec![1u8, 2, 3]).unwrap())
    }

    fn caption() -> Vec<Skill> {
        vec![Skill::Caption {
            length: CaptionLength::Short,
        }]
    }

    #[test]
    fn requests_reach_the_worker_and_come_back() {
        let seen = Arc::new(Mutex::new(vec![]));
        let s = seen.clone();
        let e = Engine::spawn(2, move || {
            Ok(Fake {
                seen: s,
                gate: Arc::default(),
            })
        })
        .unwrap();
        let r = e.run(Request::new(frame(), caption())).unwrap();
        assert_eq!(r.frame_key.len(), 16);
        assert_eq!(*seen.lock().unwrap(), vec![1]);
    }

    #[test]
    fn load_errors_come_back_from_spawn() {
        let err =
            Engine::spawn::<Fake, _>(1, || Err(EngineError::Load("no file".into()))).unwrap_err();
        assert_eq!(err, EngineError::Load("no file".into()));
    }

    #[test]
    fn a_full_queue_says_busy_instead_of_waiting() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let g = gate.clone();
        let e = Engine::spawn(1, move || {
            Ok(Fake {
                seen: Arc::default(),
                gate: g,
            })
        })
        .unwrap();
        // One job in the worker (blocked on the gate), one in the queue, then busy.
        let first = e.submit(Request::new(frame(), caption())).unwrap();
        let mut queued = vec![];
        let mut busy = None;
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            match e.submit(Request::new(frame(), caption())) {
                Ok(t) => queued.push(t),
                Err(err) => busy = Some(err),
            }
        }
        assert_eq!(busy, Some(EngineError::Busy(1)));
        drop(held);
        assert!(first.blocking_recv().unwrap().is_ok());
    }

    #[test]
    fn invalid_and_cancelled_requests_are_refused() {
        let e = Engine::spawn(1, || {
            Ok(Fake {
                seen: Arc::default(),
                gate: Arc::default(),
            })
        })
        .unwrap();
        let err = e
            .run(Request::new(
                frame(),
                vec![Skill::Query {
                    question: " ".into(),
                }],
            ))
            .unwrap_err();
        assert!(matches!(err, EngineError::Invalid(_)));
        assert!(matches!(
            e.run(Request::new(frame(), vec![])),
            Err(EngineError::Invalid(_))
        ));
        let req = Request::new(frame(), caption());
        req.cancel.cancel();
        assert_eq!(e.run(req).unwrap_err(), EngineError::Cancelled);
    }

    #[test]
    fn skills_round_trip_as_json() {
        let s: Skill = serde_json::from_str(r#"{"skill":"caption"}"#).unwrap();
        assert_eq!(
            s,
            Skill::Caption {
                length: CaptionLength::Normal
            }
        );
        let s: Skill =
            serde_json::from_str(r#"{"skill":"yes_no","question":"Is it on?"}"#).unwrap();
        assert_eq!(
            s,
            Skill::YesNo {
                question: "Is it on?".into()
            }
        );
        assert!(serde_json::from_str::<Skill>(r#"{"skill":"dance"}"#).is_err());
    }
}
