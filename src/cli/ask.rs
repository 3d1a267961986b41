//! `ask`, `caption`, `detect`, `point`, `yes-no` and `snapshot`: a picture (a file or a
//! camera) and the model here, or a running daemon over MQTT (`--broker`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use moonwatch::camera;
use moonwatch::config::{self, CameraConfig, Config};
use moonwatch::frame::Frame;
use moonwatch::vision::moondream::{self, Settings};
use moonwatch::vision::{Answer, Request, Response, Skill};

use super::{exit, Failure};

/// Where the picture and the model come from.
#[derive(Debug, Args)]
pub(crate) struct Input {
    /// Image file (JPEG, PNG, BMP, WebP).
    #[arg(
        long,
        short,
        required_unless_present_any = ["camera", "broker"],
        conflicts_with = "camera"
    )]
    pub(crate) image: Option<PathBuf>,
    /// Take the picture from a camera: test, v4l2[:DEVICE], /dev/videoN, libcamera,
    /// nvargus[:N], rtsp://..., file:PATH, image:PATH, gst:PIPELINE, or config.
    #[arg(long, conflicts_with = "broker")]
    pub(crate) camera: Option<String>,
    /// Ask a running moonwatch through this MQTT broker (HOST[:PORT], MQTT v5) instead of
    /// loading the model here; without --image it answers on its own camera.
    #[arg(long)]
    pub(crate) broker: Option<String>,
    /// The daemon's device id (with --broker); defaults to this machine's host name.
    #[arg(long, requires = "broker")]
    pub(crate) device: Option<String>,
    /// The daemon's topic prefix (with --broker).
    #[arg(long, default_value = "moonwatch", requires = "broker")]
    pub(crate) prefix: String,
    /// Seconds to wait for each reply (with --broker).
    #[arg(long, default_value_t = 120, requires = "broker")]
    pub(crate) timeout: u64,
    /// Configuration file; defaults to $MOONWATCH_CONFIG, then /etc/moonwatch/moonwatch.toml.
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
    /// Text model GGUF (overrides the configuration).
    #[arg(long, requires = "mmproj")]
    pub(crate) model: Option<PathBuf>,
    /// Vision projector GGUF (overrides the configuration).
    #[arg(long, requires = "model")]
    pub(crate) mmproj: Option<PathBuf>,
    /// Region heads GGUF from `model convert` (overrides the configuration; implies the
    /// 2025-04-14 revision): real detect and point.
    #[arg(long)]
    pub(crate) region: Option<PathBuf>,
    /// CPU threads (overrides the configuration; 0 = one per core).
    #[arg(long)]
    pub(crate) threads: Option<u32>,
    /// Most tokens generated for a free question (overrides the configuration).
    #[arg(long)]
    pub(crate) max_tokens: Option<u32>,
    /// Generate every allowed token, ignoring end-of-text (for benchmarks).
    #[arg(long, hide = true)]
    pub(crate) ignore_eos: bool,
    /// Print the full result with timings as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// One frame from the camera named by `spec`.
pub(crate) fn grab(spec: &str, base: &CameraConfig, timeout: u64) -> Result<Frame, Failure> {
    let cam = camera::parse_spec(spec, base).map_err(|e| Failure::new(64, e))?;
    // Checked as a single [camera] (a [[camera]] section's name is not one's).
    let probe = Config {
        camera: moonwatch::config::Cameras::One(CameraConfig {
            name: String::new(),
            ..cam.clone()
        }),
        ..Config::default()
    };
    let problems: Vec<String> = probe
        .problems()
        .iter()
        .filter(|p| p.key.starts_with("camera."))
        .map(ToString::to_string)
        .collect();
    if !problems.is_empty() {
        return Err(Failure::new(exit::CONFIG, problems.join("; ")));
    }
    let mut source = camera::source_for(&cam);
    camera::grab_one(source.as_mut(), std::time::Duration::from_secs(timeout))
        .map_err(|e| Failure::new(exit::NOINPUT, format!("camera {}: {e}", source.describe())))
}

/// The configuration named on the command line, in the environment, or installed.
pub(crate) fn find_config(explicit: Option<&Path>) -> Result<Option<Config>, Failure> {
    if let Some(p) = explicit {
        return Ok(Some(Config::load(p)?));
    }
    if let Some(p) = std::env::var_os("MOONWATCH_CONFIG") {
        return Ok(Some(Config::load(Path::new(&p))?));
    }
    let installed = Path::new(config::DEFAULT_PATH);
    if installed.exists() {
        return Ok(Some(Config::load(installed)?));
    }
    Ok(None)
}

pub(crate) fn settings(input: &Input) -> Result<Settings, Failure> {
    let mut cfg = match (find_config(input.config.as_deref())?, &input.model) {
        (Some(c), _) => c,
        (None, Some(_)) => Config::default(),
        (None, None) => {
            return Err(Failure::new(
                exit::CONFIG,
                format!(
                    "no configuration: pass --config FILE, set MOONWATCH_CONFIG, install {}, or pass --model and --mmproj",
                    config::DEFAULT_PATH
                ),
            ))
        }
    };
    if let (Some(m), Some(p)) = (&input.model, &input.mmproj) {
        cfg.model.text = m.clone();
        cfg.model.mmproj = p.clone();
    }
    if let Some(r) = &input.region {
        cfg.model.region = Some(r.clone());
        cfg.model.revision = moonwatch::vision::Revision::Moondream20250414;
    }
    if let Some(t) = input.threads {
        cfg.model.threads = t;
    }
    if let Some(n) = input.max_tokens {
        cfg.model.max_tokens = n;
    }
    let problems = cfg.problems();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Failure::new(exit::CONFIG, list.join("; ")));
    }
    let mut settings = Settings::from_config(&cfg);
    settings.ignore_eos = input.ignore_eos;
    Ok(settings)
}

pub(crate) fn ask(
    input: &Input,
    skills: Vec<Skill>,
    annotate: Option<&Path>,
) -> Result<(), Failure> {
    if let Some(broker) = &input.broker {
        if annotate.is_some() && input.image.is_none() {
            return Err(Failure::new(
                exit::USAGE,
                "--annotate with --broker needs --image: the camera's frame stays on the \
                 daemon (ask it with \"annotate\": true to have it publish the picture on \
                 {base}/annotated)",
            ));
        }
        let response = ask_remote(input, broker, &skills)?;
        if let (Some(out), Some(path)) = (annotate, &input.image) {
            write_annotated(&Frame::load(path)?, &skills, &response, out)?;
        }
        return print_response(input, &response);
    }
    // Get the picture first: a bad path or a missing camera should not cost a model load.
    let frame = match (&input.image, &input.camera) {
        (Some(path), _) => Frame::load(path)?,
        (None, Some(spec)) => {
            let cfg = find_config(input.config.as_deref())?.unwrap_or_default();
            grab(spec, &cfg.first_camera(), 10)?
        }
        (None, None) => return Err(Failure::new(64, "pass --image FILE or --camera SPEC")),
    };
    let frame = Arc::new(frame);
    let engine = moondream::start(settings(input)?)?;
    let response = engine.run(Request::new(frame.clone(), skills.clone()))?;
    engine.shutdown();
    if let Some(out) = annotate {
        write_annotated(&frame, &skills, &response, out)?;
    }
    print_response(input, &response)
}

/// The picture with the first answer's boxes or points drawn on it, as `detect --annotate`
/// writes it (the same drawing the daemon publishes on `{base}/annotated`).
pub(crate) fn write_annotated(
    frame: &Frame,
    skills: &[Skill],
    response: &Response,
    out: &Path,
) -> Result<(), Failure> {
    let (Some(Skill::Detect { object } | Skill::Point { object }), Some(a)) =
        (skills.first(), response.answers.first())
    else {
        return Ok(());
    };
    let jpeg = moonwatch::annotate::annotated_jpeg(frame, &a.answer, object, None);
    std::fs::write(out, jpeg)
        .map_err(|e| Failure::new(exit::IOERR, format!("cannot write {}: {e}", out.display())))
}

pub(crate) fn presence(present: Option<bool>, confidence: f32) -> String {
    match present {
        Some(true) => format!("present (confidence {confidence:.2})"),
        Some(false) => format!("not present (confidence {confidence:.2})"),
        None => "presence uncertain (the model answered neither yes nor no)".into(),
    }
}

/// `ask` and friends with `--broker`: the same questions, put to a running daemon.
pub(crate) fn ask_remote(
    input: &Input,
    broker: &str,
    skills: &[Skill],
) -> Result<Response, Failure> {
    use base64::Engine as _;
    use moonwatch::mqtt::api::Code;
    use moonwatch::mqtt::remote::{Remote, RemoteError};
    use moonwatch::mqtt::requests::Request;
    use moonwatch::mqtt::wire::{response_of, Outcome};
    let image = match &input.image {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                Failure::new(
                    exit::NOINPUT,
                    format!("cannot read image {}: {e}", path.display()),
                )
            })?;
            Some(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        None => None,
    };
    let device = input
        .device
        .clone()
        .unwrap_or_else(moonwatch::daemon::default_device_id);
    let remote = Remote::new(
        broker,
        format!("{}/{device}", input.prefix),
        std::time::Duration::from_secs(input.timeout),
    )
    .map_err(|e| Failure::new(exit::USAGE, e))?;
    let requests: Vec<(String, serde_json::Value)> = skills
        .iter()
        .map(|skill| {
            let r = Request::skill(skill, image.clone());
            (r.name().to_owned(), r.body())
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::SOFTWARE, e))?;
    let replies = rt.block_on(remote.ask(&requests)).map_err(|e| {
        let code = match e {
            RemoteError::Broker { .. } => exit::UNAVAILABLE,
            RemoteError::Timeout { .. } => exit::TEMPFAIL,
            RemoteError::BadReply { .. } => exit::SOFTWARE,
        };
        Failure::new(code, e)
    })?;
    let mut answers = Vec::with_capacity(replies.len());
    for (reply, (name, _)) in replies.into_iter().zip(&requests) {
        match reply.outcome() {
            Outcome::Answer(a) => answers.push(*a),
            Outcome::Error(e) => {
                let code = match e.code {
                    Code::BadImage => exit::DATAERR,
                    Code::CameraUnavailable => exit::NOINPUT,
                    Code::Busy | Code::Timeout | Code::ShuttingDown => exit::TEMPFAIL,
                    Code::ModelError => exit::SOFTWARE,
                    _ => exit::USAGE,
                };
                let what = serde_json::to_value(e.code).unwrap_or_default();
                return Err(Failure::new(
                    code,
                    format!(
                        "moonwatch answered {name} with {}: {}",
                        what.as_str().unwrap_or("an error"),
                        e.message
                    ),
                ));
            }
            Outcome::NoAnswer => {
                return Err(Failure::new(
                    exit::SOFTWARE,
                    format!("the reply to {name} carries no answer"),
                ))
            }
        }
    }
    Ok(response_of(answers))
}

/// A response as JSON (`--json`) or as lines for people.
pub(crate) fn print_response(input: &Input, response: &Response) -> Result<(), Failure> {
    if input.json {
        let text =
            serde_json::to_string_pretty(response).map_err(|e| Failure::new(exit::SOFTWARE, e))?;
        println!("{text}");
    } else {
        print_human(response);
    }
    Ok(())
}

pub(crate) fn print_human(r: &Response) {
    let several = r.answers.len() > 1;
    for (i, a) in r.answers.iter().enumerate() {
        let prefix = if several {
            format!("[{}] ", i + 1)
        } else {
            String::new()
        };
        match &a.answer {
            Answer::Caption { caption } => println!("{prefix}{caption}"),
            Answer::Query { answer, .. } => println!("{prefix}{answer}"),
            Answer::Detect {
                present,
                confidence,
                objects,
                parsed,
                raw,
                ..
            } => {
                println!("{prefix}{}", presence(*present, *confidence));
                if !parsed {
                    println!("{prefix}no box could be read from the model's answer: {raw:?}");
                }
                for b in objects {
                    println!(
                        "{prefix}x_min {:.3} y_min {:.3} x_max {:.3} y_max {:.3}",
                        b.x_min, b.y_min, b.x_max, b.y_max
                    );
                }
            }
            Answer::Point {
                present,
                confidence,
                points,
                parsed,
                raw,
                ..
            } => {
                println!("{prefix}{}", presence(*present, *confidence));
                if !parsed {
                    println!("{prefix}no point could be read from the model's answer: {raw:?}");
                }
                for p in points {
                    println!("{prefix}x {:.3} y {:.3}", p.x, p.y);
                }
            }
            Answer::YesNo {
                answer, confidence, ..
            } => match answer {
                Some(yes) => println!(
                    "{prefix}{} (confidence {:.2})",
                    if *yes { "yes" } else { "no" },
                    confidence
                ),
                None => println!("{prefix}uncertain (the model answered neither yes nor no)"),
            },
        }
    }
    let p = &r.prefix;
    let image = if p.reused {
        "image prefix reused".to_owned()
    } else {
        format!(
            "image encode {:.0} ms, image prefill {:.0} ms",
            p.image_encode_ms, p.image_prefill_ms
        )
    };
    tracing::info!("{image}, total {:.0} ms", r.total_ms);
}

#[cfg(test)]
mod tests {
    use super::super::{exit, status_of};

    #[test]
    fn each_failure_of_a_question_has_its_own_status() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let missing = missing.to_str().unwrap();
        let cfg = dir.path().join("empty.toml");
        std::fs::write(&cfg, "").unwrap();
        let cfg = cfg.to_str().unwrap();
        // No picture named; a picture that is not there; a file that is not a picture.
        assert_eq!(status_of(&["ask", "--config", cfg, "Q?"]), exit::USAGE);
        assert_eq!(status_of(&["ask", "--image", missing, "Q?"]), exit::NOINPUT);
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"not a picture").unwrap();
        assert_eq!(
            status_of(&["caption", "--image", junk.to_str().unwrap()]),
            exit::DATAERR
        );
        // A picture, but model files that do not exist.
        let img = dir.path().join("p.png");
        image::RgbImage::new(8, 8).save(&img).unwrap();
        let img = img.to_str().unwrap();
        let (text, mmproj) = (dir.path().join("t.gguf"), dir.path().join("p.gguf"));
        let (text, mmproj) = (text.to_str().unwrap(), mmproj.to_str().unwrap());
        assert_eq!(
            status_of(&["yes-no", "--image", img, "--model", text, "--mmproj", mmproj, "Q?"]),
            exit::UNAVAILABLE
        );
        // The same file for both is a configuration problem.
        assert_eq!(
            status_of(&["yes-no", "--image", img, "--model", text, "--mmproj", text, "Q?"]),
            exit::CONFIG
        );
        // --annotate over the broker needs the picture here.
        assert_eq!(
            status_of(&[
                "detect",
                "--broker",
                "127.0.0.1:1",
                "--annotate",
                "o.jpg",
                "cat"
            ]),
            exit::USAGE
        );
        // A broker that is not there.
        assert_eq!(
            status_of(&["ask", "--broker", "127.0.0.1:1", "--timeout", "2", "Q?"]),
            exit::UNAVAILABLE
        );
    }
}
