//! What the daemon and fleet benchmarks share: settings from the environment, the models,
//! and processes (mosquitto, `moonwatch run`) that end with the benchmark.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process killed when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The full-shape models `cargo bench --bench engine` makes (MOONWATCH_BENCH_MODELS).
pub fn models() -> PathBuf {
    let dir = std::env::var_os("MOONWATCH_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/moonwatch/bench-models")
        });
    for f in [
        "moondream2-text-model-q4_0.gguf",
        "moondream2-mmproj-q8_0.gguf",
    ] {
        assert!(
            dir.join(f).is_file(),
            "{} missing: run `cargo bench --bench engine` once to make the full-shape models",
            dir.join(f).display()
        );
    }
    dir
}

/// `moonwatch run --config config`, quiet, until dropped.
pub fn daemon(config: &std::path::Path) -> Kill {
    daemon_with(config, &[])
}

/// `moonwatch run --config config` with `env` set, quiet, until dropped.
pub fn daemon_with(config: &std::path::Path, env: &[(&str, String)]) -> Kill {
    let child = Command::new(env!("CARGO_BIN_EXE_moonwatch"))
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moonwatch run");
    Kill(child)
}

/// A mosquitto of the benchmark's own on a free loopback port: (process, port).
pub fn broker(dir: &std::path::Path) -> (Kill, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"),
    )
    .expect("mosquitto.conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    std::thread::sleep(Duration::from_millis(300));
    (Kill(child), port)
}

/// The full-shape 2025-04-14 files (`ref2025/` under the bench models directory).
pub struct Ref2025 {
    pub text: PathBuf,
    pub mmproj: PathBuf,
    pub region: PathBuf,
}

/// Makes (when missing, or converted before the projector's halves were written) a
/// full-shape random-weight 2025-04-14 checkpoint in the release's layout, converts it,
/// quantizes the text model to Q4_0 and removes the checkpoint.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub fn ref2025() -> Ref2025 {
    use moonwatch::model::{convert, synth, Quant};
    let base = std::env::var_os("MOONWATCH_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/moonwatch/bench-models")
        });
    let dir = base.join("ref2025");
    let f = Ref2025 {
        text: dir.join(
            Quant::Q4_0
                .text_file_name()
                .replace("moondream2-", "moondream2-2025-04-14-"),
        ),
        mmproj: dir.join(convert::MMPROJ_FILE),
        region: dir.join(convert::REGION_FILE),
    };
    let has_halves = moonwatch::gguf::Reader::open(&f.mmproj, false)
        .and_then(|r| r.tensors())
        .is_ok_and(|t| t.iter().any(|t| t.name == convert::CROP_PROJ_LOCAL));
    if f.text.is_file() && has_halves && f.region.is_file() {
        return f;
    }
    eprintln!(
        "making the full-shape 2025-04-14 checkpoint in {}",
        dir.display()
    );
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        convert::write_reference(
            &dir,
            &convert::RefShape::full(),
            convert::REFERENCE_SEED,
            convert::Fixture::Random {
                eos_bias: 0.0,
                attention: 1.0,
                values: 1.0,
            },
        )
        .unwrap();
    }
    let vocab = synth::Vocab::builtin().unwrap();
    let done = convert::convert(&weights, &dir, &vocab).unwrap();
    moonwatch::vision::moondream::backend().unwrap();
    synth::quantize(&done.text, &f.text, Quant::Q4_0.ftype()).unwrap();
    std::fs::remove_file(&done.text).unwrap();
    std::fs::remove_file(&weights).unwrap();
    f
}
