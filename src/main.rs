//! The `moonwatch` command line.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use moonwatch::camera;
use moonwatch::config::{self, CameraConfig, Config, ConfigError};
use moonwatch::frame::{Frame, FrameError};
use moonwatch::model::{convert, projector, pull, synth, Quant};
use moonwatch::vision::moondream::{self, Settings};
use moonwatch::vision::{Answer, CaptionLength, EngineError, Request, Response, Skill};

/// Exit statuses (sysexits.h), one per kind of failure so scripts can tell them apart.
mod exit {
    pub const USAGE: u8 = 64; // the command line is wrong
    pub const DATAERR: u8 = 65; // the image cannot be decoded or the model refuses it
    pub const NOINPUT: u8 = 66; // the image file is missing or unreadable
    pub const UNAVAILABLE: u8 = 69; // the model files are missing or corrupt
    pub const SOFTWARE: u8 = 70; // inference failed
    pub const IOERR: u8 = 74; // download or file write failed
    pub const TEMPFAIL: u8 = 75; // the engine was busy
    pub const CONFIG: u8 = moonwatch::config::EX_CONFIG as u8;
}

#[derive(Debug, Parser)]
#[command(
    name = "moonwatch",
    version,
    about = "Edge vision daemon: Moondream2 on llama.cpp, cameras in, MQTT out"
)]
struct Cli {
    /// More logging (-v: info, -vv: debug, including llama.cpp's own messages).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: camera, model and MQTT (stop with SIGTERM, reload with SIGHUP).
    Run {
        /// Configuration file; defaults to $MOONWATCH_CONFIG, then /etc/moonwatch/moonwatch.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and list every problem in it (exit 78 when bad, 69 when
    /// it is valid but names model files that do not exist).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Check the file alone, not whether its model files exist (before `model pull`).
        #[arg(long)]
        no_files: bool,
    },
    /// Ask free questions about an image; several questions share one image encode.
    Ask {
        #[command(flatten)]
        input: Input,
        /// The questions, answered in order.
        #[arg(required = true)]
        questions: Vec<String>,
    },
    /// Describe an image.
    Caption {
        #[command(flatten)]
        input: Input,
        #[arg(long, value_enum, default_value_t = CaptionLength::Normal)]
        length: CaptionLength,
    },
    /// Find boxes around an object (relative 0..1 coordinates).
    Detect {
        #[command(flatten)]
        input: Input,
        /// What to look for, such as "person" or "red car".
        object: String,
        /// Also write the picture with the boxes drawn on it (JPEG).
        #[arg(long, value_name = "FILE")]
        annotate: Option<PathBuf>,
    },
    /// Find points on an object (relative 0..1 coordinates).
    Point {
        #[command(flatten)]
        input: Input,
        object: String,
        /// Also write the picture with the points drawn on it (JPEG).
        #[arg(long, value_name = "FILE")]
        annotate: Option<PathBuf>,
    },
    /// Answer a yes/no question with a confidence from the model's token probabilities.
    YesNo {
        #[command(flatten)]
        input: Input,
        question: String,
    },
    /// List V4L2 cameras with their formats, sizes and frame rates.
    Cameras,
    /// Print the JSON Schema of an MQTT payload (request, reply, trigger_attributes,
    /// trigger_event, caption, stats), or write them all into a directory.
    Schema {
        /// The payload; all of them when omitted (needs --out).
        name: Option<String>,
        /// Write `{name}.schema.json` files into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Grab one frame from a camera and write it as JPEG.
    Snapshot {
        /// The camera (see `ask --help`); defaults to the configuration's [camera].
        #[arg(long, default_value = "config")]
        camera: String,
        /// Configuration file (for `--camera config`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Output JPEG file.
        #[arg(long, short)]
        output: PathBuf,
        /// Seconds to wait for a frame.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Manage model files.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Download the Moondream2 GGUF pair to where the configuration expects it.
    Pull {
        /// Configuration naming the target paths and the repository.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Download into this directory instead of the configured paths.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Quantize the text model after the verified download (overrides
        /// model.download.quantize); the configuration's model.text names the result.
        #[arg(long, value_enum)]
        quantize: Option<Quant>,
    },
    /// Quantize a text model (--type) or a vision projector (--mmproj, to Q8_0) that is
    /// already on disk.
    Quantize {
        /// The text model type to write.
        #[arg(
            long = "type",
            value_enum,
            required_unless_present = "mmproj",
            conflicts_with = "mmproj"
        )]
        quant: Option<Quant>,
        /// The input is a vision projector: its matrices become Q8_0 where their rows
        /// allow (SigLIP's 4304-wide ffn_down stays F16).
        #[arg(long)]
        mmproj: bool,
        input: PathBuf,
        output: PathBuf,
    },
    /// Write a random-weight pair with Moondream2's exact architecture (tests, benchmarks).
    Synth {
        #[arg(long, value_enum, default_value_t = SynthSize::Tiny)]
        size: SynthSize,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Also write a quantized copy of the text model.
        #[arg(long, value_enum)]
        quantize: Option<Quant>,
        /// GPT-2 vocabulary directory (encoder.json, vocab.bpe).
        #[arg(long)]
        vocab: Option<PathBuf>,
        /// Make a model with a known answer: whatever it is asked, it answers this text
        /// (then end-of-text), for tests that must tell a right answer from a wrong one.
        #[arg(long, conflicts_with = "reference")]
        answer: Option<String>,
        /// Write a random-weight 2025-04-14 checkpoint in Moondream's own layout
        /// (model.safetensors and config.json) instead, as `model convert` takes it.
        #[arg(long, conflicts_with = "quantize")]
        reference: bool,
        /// With --reference: added to the end-of-text output bias, so that random weights
        /// end the object loop early (the goldens use 0 and 2.5).
        #[arg(
            long,
            default_value_t = 0.0,
            requires = "reference",
            allow_hyphen_values = true
        )]
        eos_bias: f32,
    },
    /// Convert Moondream2 2025-04-14's model.safetensors into a text GGUF, a vision GGUF
    /// and the region heads (for real detect and point); prints the three paths.
    Convert {
        /// The release's model.safetensors (head counts from a config.json beside it, if
        /// any).
        weights: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// GPT-2 vocabulary directory (encoder.json, vocab.bpe).
        #[arg(long)]
        vocab: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SynthSize {
    Tiny,
    Full,
}

/// Where the picture and the model come from.
#[derive(Debug, Args)]
struct Input {
    /// Image file (JPEG, PNG, BMP, WebP).
    #[arg(
        long,
        short,
        required_unless_present_any = ["camera", "broker"],
        conflicts_with = "camera"
    )]
    image: Option<PathBuf>,
    /// Take the picture from a camera: test, v4l2[:DEVICE], /dev/videoN, libcamera,
    /// nvargus[:N], rtsp://..., file:PATH, image:PATH, gst:PIPELINE, or config.
    #[arg(long, conflicts_with = "broker")]
    camera: Option<String>,
    /// Ask a running moonwatch through this MQTT broker (HOST[:PORT], MQTT v5) instead of
    /// loading the model here; without --image it answers on its own camera.
    #[arg(long)]
    broker: Option<String>,
    /// The daemon's device id (with --broker); defaults to this machine's host name.
    #[arg(long, requires = "broker")]
    device: Option<String>,
    /// The daemon's topic prefix (with --broker).
    #[arg(long, default_value = "moonwatch", requires = "broker")]
    prefix: String,
    /// Seconds to wait for each reply (with --broker).
    #[arg(long, default_value_t = 120, requires = "broker")]
    timeout: u64,
    /// Configuration file; defaults to $MOONWATCH_CONFIG, then /etc/moonwatch/moonwatch.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Text model GGUF (overrides the configuration).
    #[arg(long, requires = "mmproj")]
    model: Option<PathBuf>,
    /// Vision projector GGUF (overrides the configuration).
    #[arg(long, requires = "model")]
    mmproj: Option<PathBuf>,
    /// Region heads GGUF from `model convert` (overrides the configuration; implies the
    /// 2025-04-14 revision): real detect and point.
    #[arg(long)]
    region: Option<PathBuf>,
    /// CPU threads (overrides the configuration; 0 = one per core).
    #[arg(long)]
    threads: Option<u32>,
    /// Most tokens generated for a free question (overrides the configuration).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Generate every allowed token, ignoring end-of-text (for benchmarks).
    #[arg(long, hide = true)]
    ignore_eos: bool,
    /// Print the full result with timings as JSON.
    #[arg(long)]
    json: bool,
}

/// A failure to report: one line on stderr and an exit status.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl ToString) -> Self {
        Self {
            code,
            message: message.to_string(),
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::Load(_) => exit::UNAVAILABLE,
            EngineError::Image(_) => exit::DATAERR,
            EngineError::Invalid(_) => 64,
            EngineError::Busy(_) => exit::TEMPFAIL,
            EngineError::Inference(_) | EngineError::Cancelled | EngineError::Stopped => {
                exit::SOFTWARE
            }
        };
        Self::new(code, e)
    }
}

impl From<FrameError> for Failure {
    fn from(e: FrameError) -> Self {
        let code = match &e {
            FrameError::Read { .. } => exit::NOINPUT,
            _ => exit::DATAERR,
        };
        Self::new(code, e)
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::new(exit::CONFIG, e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, matches!(cli.command, Command::Run { .. }));
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("moonwatch: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(verbose: u8, daemon: bool) {
    let default = match verbose + u8::from(daemon) {
        0 => "warn,llama-cpp-2=off",
        1 => "info,llama-cpp-2=warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: under systemd stderr goes to the journal.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::CheckConfig { file, no_files } => check_config(&file, !no_files),
        Command::Run { config } => run_daemon(config),
        Command::Ask { input, questions } => {
            let skills = questions
                .into_iter()
                .map(|question| Skill::Query { question })
                .collect();
            ask(&input, skills, None)
        }
        Command::Caption { input, length } => ask(&input, vec![Skill::Caption { length }], None),
        Command::Detect {
            input,
            object,
            annotate,
        } => ask(&input, vec![Skill::Detect { object }], annotate.as_deref()),
        Command::Point {
            input,
            object,
            annotate,
        } => ask(&input, vec![Skill::Point { object }], annotate.as_deref()),
        Command::YesNo { input, question } => ask(&input, vec![Skill::YesNo { question }], None),
        Command::Model { command } => model(command),
        Command::Cameras => cameras(),
        Command::Schema { name, out } => schema(name.as_deref(), out.as_deref()),
        Command::Snapshot {
            camera,
            config,
            output,
            timeout,
        } => {
            let cfg = find_config(config.as_deref())?.unwrap_or_default();
            let frame = grab(&camera, &cfg.first_camera(), timeout)?;
            std::fs::write(&output, frame.to_jpeg(90)).map_err(|e| {
                Failure::new(
                    exit::IOERR,
                    format!("cannot write {}: {e}", output.display()),
                )
            })?;
            println!("{} ({}x{})", output.display(), frame.width, frame.height);
            Ok(())
        }
    }
}

/// One frame from the camera named by `spec`.
fn grab(spec: &str, base: &CameraConfig, timeout: u64) -> Result<Frame, Failure> {
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

fn cameras() -> Result<(), Failure> {
    let devices = camera::v4l2::list_devices();
    if devices.is_empty() {
        println!("no V4L2 cameras found (no video capture devices under /dev/video*)");
        return Ok(());
    }
    for d in devices {
        println!(
            "{}: {} (driver {}, {})",
            d.path.display(),
            d.name,
            d.driver,
            d.bus
        );
        for f in d.formats {
            println!("  {}", f.format);
            for s in f.sizes {
                let rates: Vec<String> = s.rates.iter().map(|r| format!("{r:.0}")).collect();
                let rates = if rates.is_empty() {
                    "?".into()
                } else {
                    rates.join("/")
                };
                println!("    {}x{} @ {rates} fps", s.width, s.height);
            }
        }
    }
    Ok(())
}

fn run_daemon(config: Option<PathBuf>) -> Result<(), Failure> {
    let path = config
        .or_else(|| std::env::var_os("MOONWATCH_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let cfg = Config::load(&path)?;
    moonwatch::daemon::run(cfg, path).map_err(|e| match e {
        moonwatch::daemon::DaemonError::Engine(e) => Failure::from(e),
        other => Failure::new(exit::SOFTWARE, other),
    })
}

fn check_config(file: &Path, files: bool) -> Result<(), Failure> {
    let c = Config::load(file)?;
    let missing = if files {
        c.missing_model_files()
    } else {
        Vec::new()
    };
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
        return Err(Failure::new(
            exit::UNAVAILABLE,
            format!(
                "config {} is valid, but names model files that do not exist: {}",
                file.display(),
                list.join("; ")
            ),
        ));
    }
    println!(
        "{}: ok (text model {}, projector {})",
        file.display(),
        c.model.text.display(),
        c.model.mmproj.display()
    );
    Ok(())
}

/// The configuration named on the command line, in the environment, or installed.
fn find_config(explicit: Option<&Path>) -> Result<Option<Config>, Failure> {
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

fn settings(input: &Input) -> Result<Settings, Failure> {
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

fn ask(input: &Input, skills: Vec<Skill>, annotate: Option<&Path>) -> Result<(), Failure> {
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
fn write_annotated(
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

fn presence(present: Option<bool>, confidence: f32) -> String {
    match present {
        Some(true) => format!("present (confidence {confidence:.2})"),
        Some(false) => format!("not present (confidence {confidence:.2})"),
        None => "presence uncertain (the model answered neither yes nor no)".into(),
    }
}

/// `ask` and friends with `--broker`: the same questions, put to a running daemon.
fn ask_remote(input: &Input, broker: &str, skills: &[Skill]) -> Result<Response, Failure> {
    use base64::Engine as _;
    use moonwatch::mqtt::api::Code;
    use moonwatch::mqtt::remote::{Remote, RemoteError};
    use moonwatch::mqtt::wire::{ReplyData, Status};
    use serde_json::json;
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
            let (name, mut body) = moonwatch::mqtt::api::skill_request(skill);
            if let Some(img) = &image {
                body["image"] = json!(img);
            }
            (name.to_owned(), body)
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
    let mut response = Response {
        frame_key: String::new(),
        prefix: Default::default(),
        answers: Vec::new(),
        queued_ms: 0.0,
        total_ms: 0.0,
    };
    for (reply, (name, _)) in replies.into_iter().zip(&requests) {
        match (reply.status, reply.data, reply.error) {
            (Status::Ok, Some(ReplyData::Answer(a)), _) => {
                if response.answers.is_empty() {
                    response.prefix.reused = a.prefix_reused;
                    response.prefix.image_encode_ms = a.image_encode_ms;
                    response.prefix.input_width = a.width;
                    response.prefix.input_height = a.height;
                }
                response.total_ms += a.total_ms;
                response.answers.push(a.answered);
            }
            (Status::Error, _, Some(e)) => {
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
            _ => {
                return Err(Failure::new(
                    exit::SOFTWARE,
                    format!("the reply to {name} carries no answer"),
                ))
            }
        }
    }
    Ok(response)
}

/// A response as JSON (`--json`) or as lines for people.
fn print_response(input: &Input, response: &Response) -> Result<(), Failure> {
    if input.json {
        let text =
            serde_json::to_string_pretty(response).map_err(|e| Failure::new(exit::SOFTWARE, e))?;
        println!("{text}");
    } else {
        print_human(response);
    }
    Ok(())
}

fn print_human(r: &Response) {
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

fn model(command: ModelCommand) -> Result<(), Failure> {
    match command {
        ModelCommand::Pull {
            config,
            dir,
            quantize,
        } => {
            let mut cfg = find_config(config.as_deref())?.unwrap_or_default();
            if quantize.is_some() {
                cfg.model.download.quantize = quantize;
            }
            let d = &cfg.model.download;
            if let Some(dir) = dir {
                cfg.model.text = match d.quantize {
                    Some(q) => dir.join(q.text_file_name()),
                    None => dir.join(&d.text_file),
                };
                cfg.model.mmproj = if d.quantize_mmproj {
                    dir.join(moonwatch::model::MMPROJ_Q8_FILE_NAME)
                } else {
                    dir.join(&d.mmproj_file)
                };
            } else if let Some(q) = d.quantize {
                if cfg.model.text.file_name() == Some(std::ffi::OsStr::new(&d.text_file)) {
                    // The configured name is the download's: put the result beside it.
                    cfg.model.text = cfg.model.text.with_file_name(q.text_file_name());
                    eprintln!(
                        "note: model.text names the download; writing the {} model to {} (set model.text to it)",
                        q.name(),
                        cfg.model.text.display()
                    );
                }
            }
            let done = pull::pull(&cfg.model, true).map_err(|e| Failure::new(exit::IOERR, e))?;
            for p in done {
                let what = if p.downloaded {
                    "downloaded"
                } else {
                    "already present"
                };
                println!(
                    "{} {what} ({} bytes, sha256 {})",
                    p.path.display(),
                    p.size,
                    p.sha256
                );
            }
            Ok(())
        }
        ModelCommand::Quantize {
            quant,
            mmproj,
            input,
            output,
        } => {
            if input == output {
                return Err(Failure::new(
                    exit::USAGE,
                    "the output must be another file than the input",
                ));
            }
            if !input.is_file() {
                return Err(Failure::new(
                    exit::NOINPUT,
                    format!("{}: no such file", input.display()),
                ));
            }
            // Routes llama.cpp's per-tensor log to tracing (shown with -v).
            moondream::backend()?;
            match (quant, mmproj) {
                (_, true) => {
                    let r = projector::quantize_mmproj(&input, &output)
                        .map_err(|e| Failure::new(exit::IOERR, e))?;
                    let widened = if r.ffn.0 == r.ffn.1 {
                        String::new()
                    } else {
                        format!(" (feed-forward {} -> {} units)", r.ffn.0, r.ffn.1)
                    };
                    println!(
                        "{}: {} matrices Q8_0{widened}, {} tensors kept",
                        output.display(),
                        r.quantized,
                        r.kept
                    );
                }
                (Some(q), false) => {
                    synth::quantize(&input, &output, q.ftype())
                        .map_err(|e| Failure::new(exit::IOERR, e))?;
                    println!("{}: {}", output.display(), q.name());
                }
                (None, false) => {
                    return Err(Failure::new(exit::USAGE, "--type or --mmproj is needed"))
                }
            }
            Ok(())
        }
        ModelCommand::Synth {
            size,
            out,
            reference: true,
            eos_bias,
            ..
        } => {
            let shape = match size {
                SynthSize::Tiny => convert::RefShape::tiny(),
                SynthSize::Full => convert::RefShape::full(),
            };
            let fixture = convert::Fixture::Random { eos_bias };
            let path = convert::write_reference(&out, &shape, convert::REFERENCE_SEED, fixture)
                .map_err(|e| Failure::new(exit::IOERR, e))?;
            println!("{}", path.display());
            Ok(())
        }
        ModelCommand::Synth {
            size,
            out,
            quantize,
            vocab,
            answer,
            reference: false,
            ..
        } => {
            let shape = match size {
                SynthSize::Tiny => synth::Shape::tiny(),
                SynthSize::Full => synth::Shape::full(),
            };
            let vocab = vocab.unwrap_or_else(synth::default_vocab_dir);
            let pair = synth::write_pair_answering(
                &out,
                &shape,
                &vocab,
                answer.as_deref().map(|a| (a, true)),
            )
            .map_err(|e| Failure::new(exit::IOERR, e))?;
            println!("{}\n{}", pair.text.display(), pair.mmproj.display());
            if let Some(q) = quantize {
                let dst = out.join(q.text_file_name());
                // Routes llama.cpp's per-tensor log to tracing (shown with -v).
                moondream::backend()?;
                synth::quantize(&pair.text, &dst, q.ftype())
                    .map_err(|e| Failure::new(exit::IOERR, e))?;
                println!("{}", dst.display());
            }
            Ok(())
        }
        ModelCommand::Convert {
            weights,
            out,
            vocab,
        } => {
            let vocab = synth::Vocab::load(&vocab.unwrap_or_else(synth::default_vocab_dir))
                .map_err(|e| Failure::new(exit::IOERR, e))?;
            let done = convert::convert(&weights, &out, &vocab).map_err(|e| match e {
                convert::ConvertError::Write(_) => Failure::new(exit::IOERR, e),
                _ => Failure::new(exit::DATAERR, e),
            })?;
            println!(
                "{}\n{}\n{}",
                done.text.display(),
                done.mmproj.display(),
                done.region.display()
            );
            Ok(())
        }
    }
}

/// `moonwatch schema`: the wire format's JSON Schemas.
fn schema(name: Option<&str>, out: Option<&Path>) -> Result<(), Failure> {
    let all = moonwatch::mqtt::wire::schemas();
    let pick: Vec<_> = all
        .iter()
        .filter(|(n, _)| name.is_none_or(|want| want == *n))
        .collect();
    if pick.is_empty() {
        let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
        return Err(Failure::new(
            exit::USAGE,
            format!("no payload named {name:?}; known: {}", names.join(", ")),
        ));
    }
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    match out {
        Some(dir) => {
            let io =
                |e: std::io::Error| Failure::new(exit::IOERR, format!("{}: {e}", dir.display()));
            std::fs::create_dir_all(dir).map_err(io)?;
            for (n, v) in pick {
                let path = dir.join(format!("{n}.schema.json"));
                std::fs::write(&path, pretty(v) + "\n").map_err(io)?;
                eprintln!("wrote {}", path.display());
            }
        }
        None if pick.len() == 1 => println!("{}", pretty(&pick[0].1)),
        None => {
            return Err(Failure::new(
                exit::USAGE,
                "name a payload, or give --out DIR for all of them",
            ))
        }
    }
    Ok(())
}
