//! The command line: its arguments, exit statuses and failures, and the dispatch to each
//! command family (`ask` and the other skills, `model`, the daemon and its setup).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use moonwatch::config::ConfigError;
use moonwatch::frame::FrameError;
use moonwatch::vision::{CaptionLength, EngineError, Skill};

mod ask;
mod daemon;
mod model;

pub(crate) use ask::Input;
use model::ModelCommand;

/// Exit statuses (sysexits.h), one per kind of failure so scripts can tell them apart.
pub(crate) mod exit {
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
pub(crate) struct Cli {
    /// More logging (-v: info, -vv: debug, including llama.cpp's own messages).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// Print the JSON Schema of an MQTT payload (request.query and each other request,
    /// reply, trigger_attributes, trigger_event, caption, stats, answer, server, ...), or
    /// write them all into a directory.
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

/// A failure to report: one line on stderr and an exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
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

pub(crate) fn init_logging(verbose: u8, daemon: bool) {
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

pub(crate) fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::CheckConfig { file, no_files } => daemon::check_config(&file, !no_files),
        Command::Run { config } => daemon::run_daemon(config),
        Command::Ask { input, questions } => {
            let skills = questions
                .into_iter()
                .map(|question| Skill::Query { question })
                .collect();
            ask::ask(&input, skills, None)
        }
        Command::Caption { input, length } => {
            ask::ask(&input, vec![Skill::Caption { length }], None)
        }
        Command::Detect {
            input,
            object,
            annotate,
        } => ask::ask(&input, vec![Skill::Detect { object }], annotate.as_deref()),
        Command::Point {
            input,
            object,
            annotate,
        } => ask::ask(&input, vec![Skill::Point { object }], annotate.as_deref()),
        Command::YesNo { input, question } => {
            ask::ask(&input, vec![Skill::YesNo { question }], None)
        }
        Command::Model { command } => model::model(command),
        Command::Cameras => daemon::cameras(),
        Command::Schema { name, out } => daemon::schema(name.as_deref(), out.as_deref()),
        Command::Snapshot {
            camera,
            config,
            output,
            timeout,
        } => {
            let cfg = ask::find_config(config.as_deref())?.unwrap_or_default();
            let frame = ask::grab(&camera, &cfg.first_camera(), timeout)?;
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

/// The exit status of a command line, as `main` would end with it (0 for success).
#[cfg(test)]
pub(crate) fn status_of(args: &[&str]) -> u8 {
    let args = std::iter::once("moonwatch").chain(args.iter().copied());
    match Cli::try_parse_from(args) {
        Ok(cli) => run(cli.command).map_or_else(|f| f.code, |()| 0),
        Err(_) => exit::USAGE,
    }
}
