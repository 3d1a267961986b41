//! Engine benchmark: moonwatch against llama.cpp's own `llama-mtmd-cli`, same llama.cpp
//! source, same full-shape random-weight Moondream2 pair, same image, threads and prompt,
//! once for every distinct model setting the shipped configurations use (files, context,
//! batch, KV cache type, mmap; `MOONWATCH_BENCH_CONFIGS=raspberry-pi-5-camera,...` picks).
//!
//! `cargo bench --bench engine` (release build). Environment:
//! - `MOONWATCH_BENCH_MODELS`: model directory (default `~/.cache/moonwatch/bench-models`);
//!   the full-shape pair and its Q4_K_M text model are generated there when missing.
//! - `MOONWATCH_BENCH_THREADS` (default 2), `MOONWATCH_BENCH_REPS` (default 3),
//!   `MOONWATCH_BENCH_TOKENS` (default 32).
//!
//! Both programs run as separate processes, alternating, and their peak RSS is read from
//! `wait4`. Timings come from each program's own report: moonwatch's `--json` timings, and
//! llama-mtmd-cli's log ("mtmd batch encoding done in", "image decoded", `--perf` lines).
//! Prints a Markdown table for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const QUESTION: &str = "Describe this image.";
const WARM_QUESTION: &str = "What is in the picture?";

fn env_or(key: &str, default: u32) -> u32 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
}

/// Runs a command to completion, returning (stdout, stderr, peak RSS in bytes, wall ms).
fn run_measured(cmd: &mut Command) -> (String, String, u64, f64) {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    // Read the pipes on threads so the child never blocks on a full pipe.
    let mut child = child;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4 failed");
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let (stdout, stderr) = (o.join().unwrap(), e.join().unwrap());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed:\n{stderr}"
    );
    (stdout, stderr, usage.ru_maxrss as u64 * 1024, wall)
}

#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    encode_ms: f64,
    image_prefill_ms: f64,
    prefill_tok_s: f64,
    ttft_cold_ms: f64,
    ttft_warm_ms: f64,
    decode_tok_s: f64,
    tokens: f64,
    /// Every prompt position evaluated before the first answer token (BOS, image, question).
    prompt_tokens: f64,
    rss: f64,
    wall_ms: f64,
}

/// One `moonwatch ask --json` run on the bench image.
struct Ask<'a> {
    bin: &'a str,
    text: &'a Path,
    mmproj: &'a Path,
    image: &'a Path,
    threads: u32,
    tokens: u32,
    /// `--ignore-eos` (the fixed-length mode, comparable with the peer's).
    ignore_eos: bool,
    /// Extra `[model]` keys (context size, KV cache type), written to a config file.
    model_toml: &'a str,
    /// A configuration file to use instead (a board's, from configs/).
    config_file: Option<&'a Path>,
}

impl Ask<'_> {
    fn run(&self, questions: &[&str]) -> (Sample, serde_json::Value) {
        let cfg = match self.config_file {
            Some(file) => file.to_owned(),
            None => {
                let cfg = std::env::temp_dir()
                    .join(format!("moonwatch-bench-{}.toml", std::process::id()));
                // MOONWATCH_BENCH_GPU_LAYERS: layers on the GPU (a CUDA build), as the
                // peer's -ngl; the vision encoder goes with them.
                let gpu = env_or("MOONWATCH_BENCH_GPU_LAYERS", 0);
                let offload = format!("gpu_layers = {gpu}\nvision_on_gpu = {}\n", gpu > 0);
                std::fs::write(&cfg, format!("[model]\n{}\n{offload}", self.model_toml)).unwrap();
                cfg
            }
        };
        let mut cmd = Command::new(self.bin);
        cmd.args(["ask", "--json", "--config"]).arg(&cfg);
        if self.ignore_eos {
            cmd.arg("--ignore-eos");
        }
        cmd.args(["--threads", &self.threads.to_string()])
            .args(["--max-tokens", &self.tokens.to_string()])
            .arg("--model")
            .arg(self.text)
            .arg("--mmproj")
            .arg(self.mmproj)
            .arg("--image")
            .arg(self.image)
            .args(questions)
            .env_remove("MOONWATCH_CONFIG");
        let (stdout, _, rss, wall) = run_measured(&mut cmd);
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("moonwatch JSON");
        let f = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
        let a0 = &v["answers"][0]["timing"];
        let prefix_tokens = f(&v["prefix"]["tokens"]);
        assert!(f(&v["prefix"]["image_encode_ms"]) > 0.0);
        let sample = Sample {
            encode_ms: f(&v["prefix"]["image_encode_ms"]),
            image_prefill_ms: f(&v["prefix"]["image_prefill_ms"]),
            prefill_tok_s: (prefix_tokens - 1.0 + f(&a0["prompt_tokens"]))
                / ((f(&v["prefix"]["image_prefill_ms"]) + f(&a0["prefill_ms"])) / 1e3),
            ttft_cold_ms: f(&a0["first_token_ms"]),
            ttft_warm_ms: f(&v["answers"][1]["timing"]["first_token_ms"]),
            decode_tok_s: f(&a0["decode_steps"]) / (f(&a0["decode_ms"]) / 1e3),
            tokens: f(&a0["generated_tokens"]),
            prompt_tokens: prefix_tokens + f(&a0["prompt_tokens"]),
            rss: rss as f64,
            wall_ms: wall,
        };
        (sample, v)
    }
}

/// The first number after `key` on the first line containing it.
fn number_after(log: &str, key: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(key))?;
    let rest = &line[line.find(key)? + key.len()..];
    let s: String = rest
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    s.parse().ok()
}

/// Numbers on a perf line such as "prompt eval time = 123.4 ms / 742 tokens".
fn perf(log: &str, key: &str) -> (f64, f64) {
    let line = log
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no {key:?} in:\n{log}"));
    let after = &line[line.find('=').unwrap() + 1..];
    let nums: Vec<f64> = after
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// One configuration both programs run: the files and llama.cpp's settings.
#[derive(Debug, Clone)]
struct Setup {
    /// The shipped configuration files with these settings.
    label: String,
    text: PathBuf,
    mmproj: PathBuf,
    context: u32,
    batch: u32,
    /// llama.cpp's name of the KV cache type (`f16`, `q8_0`, `f32`).
    kv: String,
    mmap: bool,
}

impl Setup {
    /// Its `[model]` keys for moonwatch (the files and threads go on the command line).
    fn model_toml(&self) -> String {
        format!(
            "context_size = {}\nbatch_size = {}\nkv_cache_type = \"{}\"\nmmap = {}\n",
            self.context, self.batch, self.kv, self.mmap
        )
    }

    fn describe(&self) -> String {
        let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        format!(
            "{} + {}, n_ctx {}, batch {}, KV {}, mmap {}",
            name(&self.text),
            name(&self.mmproj),
            self.context,
            self.batch,
            self.kv,
            if self.mmap { "on" } else { "off" }
        )
    }
}

/// The distinct model settings of the shipped configurations (configs/*.toml) that run
/// without a GPU (with `MOONWATCH_BENCH_GPU_LAYERS`, the GPU ones too), with their files
/// taken from `models` by name. `MOONWATCH_BENCH_CONFIGS` (comma-separated file stems)
/// picks some.
fn shipped_setups(root: &Path, models: &Path) -> Vec<Setup> {
    let wanted: Vec<String> = std::env::var("MOONWATCH_BENCH_CONFIGS")
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default();
    let gpu = env_or("MOONWATCH_BENCH_GPU_LAYERS", 0) > 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut setups: Vec<Setup> = Vec::new();
    for file in files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        if !wanted.is_empty() && !wanted.contains(&stem) {
            continue;
        }
        let cfg = moonwatch::config::Config::parse(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let m = &cfg.model;
        // Region heads and the 2025 release run a prompt the peer does not; fleet camera
        // nodes run no model.
        if m.text.as_os_str().is_empty() || m.region.is_some() || (m.gpu_layers > 0) != gpu {
            continue;
        }
        let kv = serde_json::to_value(m.kv_cache_type).unwrap();
        let setup = Setup {
            label: format!("{stem}.toml"),
            text: models.join(m.text.file_name().unwrap()),
            mmproj: models.join(m.mmproj.file_name().unwrap()),
            context: m.context_size,
            batch: m.batch_size,
            kv: kv.as_str().unwrap().to_owned(),
            mmap: m.mmap,
        };
        match setups.iter_mut().find(|s| s.describe() == setup.describe()) {
            Some(same) => same.label = format!("{}, {}", same.label, setup.label),
            None => setups.push(setup),
        }
    }
    setups
}

fn peer(bin: &str, setup: &Setup, image: &Path, threads: u32, tokens: u32) -> Sample {
    // Moondream's format: BOS, image, "\n\nQuestion: {q}\n\nAnswer:".
    // The generation prompt is a string expression: as raw text after `{% if %}`, the
    // template engine's trim_blocks would eat its first newline (742 tokens, not 743).
    let template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}\
                    {% if add_generation_prompt %}{{ '\\n\\nAnswer:' }}{% endif %}";
    let prompt = format!("<__media__>\n\nQuestion: {QUESTION}");
    let (stdout, stderr, rss, wall) = run_measured(
        Command::new(bin)
            .arg("-m")
            .arg(&setup.text)
            .arg("--mmproj")
            .arg(&setup.mmproj)
            .arg("--image")
            .arg(image)
            .args(["-p", &prompt, "--jinja", "--chat-template", template])
            .args([
                "-n",
                &tokens.to_string(),
                "--ignore-eos",
                "--temp",
                "0",
                "--perf",
            ])
            .args(["-ngl", &env_or("MOONWATCH_BENCH_GPU_LAYERS", 0).to_string()])
            .args(["-t", &threads.to_string(), "-lv", "4"])
            .args(["-c", &setup.context.to_string()])
            .args([
                "-b",
                &setup.batch.to_string(),
                "-ub",
                &setup.batch.to_string(),
            ])
            .args(["-ctk", &setup.kv, "-ctv", &setup.kv])
            .args(["-lm", if setup.mmap { "mmap" } else { "none" }]),
    );
    let log = format!("{stdout}\n{stderr}");
    let encode = number_after(&log, "mtmd batch encoding done in").expect("encode time in the log");
    let image_prefill: f64 = log
        .lines()
        .filter(|l| l.contains("image decoded (batch"))
        .filter_map(|l| number_after(l, ") in"))
        .sum();
    // llama.cpp books decode time when the context synchronises: the BOS token decoded
    // before the image is only booked with the image batch, so "prompt eval time" runs
    // from the start of the prompt (BOS, image encode, image and question prefill) to the
    // first logits: the cold time to first token.
    let (p_ms, p_tok) = perf(&log, "prompt eval time");
    let (e_ms, e_runs) = perf(&log, "       eval time");
    Sample {
        encode_ms: encode,
        image_prefill_ms: image_prefill,
        prefill_tok_s: p_tok / ((p_ms - encode) / 1e3),
        ttft_cold_ms: p_ms,
        ttft_warm_ms: f64::NAN,
        decode_tok_s: e_runs / (e_ms / 1e3),
        tokens: e_runs + 1.0,
        prompt_tokens: p_tok,
        rss: rss as f64,
        wall_ms: wall,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median and range of paired ratios a/b.
fn ratios(a: &[Sample], b: &[Sample], f: fn(&Sample) -> f64) -> String {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect();
    if r.iter().any(|x| x.is_nan()) {
        return "-".into();
    }
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.3} ({lo:.3}..{hi:.3})", median(r))
}

/// The full-shape pair in `models`: F16 files from `model synth`, and the text model
/// quantized to each type asked for.
fn ensure_models(bin: &str, models: &Path, quants: &[&str]) {
    let f16 = models.join("moondream2-text-model-f16.gguf");
    let mmproj = models.join("moondream2-mmproj-f16.gguf");
    if !f16.is_file() || !mmproj.is_file() {
        eprintln!(
            "generating the full-shape random pair in {}",
            models.display()
        );
        let st = Command::new(bin)
            .args(["model", "synth", "--size", "full", "--out"])
            .arg(models)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mmproj_q8 = models.join("moondream2-mmproj-q8_0.gguf");
    if !mmproj_q8.is_file() {
        let st = Command::new(bin)
            .args(["model", "quantize", "--mmproj"])
            .arg(&mmproj)
            .arg(&mmproj_q8)
            .status()
            .unwrap();
        assert!(st.success());
    }
    for q in quants {
        let dst = models.join(format!("moondream2-text-model-{q}.gguf"));
        if *q == "f16" || dst.is_file() {
            continue;
        }
        eprintln!("quantizing the full-shape text model to {q}");
        let st = Command::new(bin)
            .args(["model", "quantize", "--type", q])
            .arg(&f16)
            .arg(&dst)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let threads = env_or("MOONWATCH_BENCH_THREADS", 2);
    let reps = env_or("MOONWATCH_BENCH_REPS", 7).max(1);
    let tokens = env_or("MOONWATCH_BENCH_TOKENS", 32);
    let only = std::env::var("MOONWATCH_BENCH_ONLY").unwrap_or_default();
    let bin = env!("CARGO_BIN_EXE_moonwatch");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = std::env::var_os("MOONWATCH_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/moonwatch/bench-models"));
    let quants = ["f16", "q8_0", "q4_k_m", "q4_0"];
    ensure_models(bin, &models, &quants);
    let text = models.join("moondream2-text-model-q4_k_m.gguf");
    let mmproj = models.join("moondream2-mmproj-f16.gguf");

    let image = std::env::temp_dir().join("moonwatch-bench.jpg");
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x / 3) as u8, (y / 2) as u8, ((x + y) / 5) as u8])
    });
    img.save(&image).unwrap();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "machine: {cpu}, {} cores; threads {threads}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let ask = Ask {
        bin,
        text: &text,
        mmproj: &mmproj,
        image: &image,
        threads,
        tokens,
        ignore_eos: true,
        model_toml: "",
        config_file: None,
    };

    if only.is_empty() || only == "peer" {
        for setup in shipped_setups(root, &models) {
            peer_comparison(&ask, &setup, root, reps, tokens);
        }
    }
    if only.is_empty() || only == "quant" {
        quant_table(&ask, &models, &quants, reps.min(3));
    }
    if only.is_empty() || only == "quality" {
        quality_table(&models, threads);
    }
}

/// moonwatch against llama-mtmd-cli with `setup`'s files and settings: equal work (one
/// question each, same warm-up, the same prompt tokens, checked), paired ratios over
/// `reps` interleaved runs.
fn peer_comparison(ask: &Ask, setup: &Setup, root: &Path, reps: u32, tokens: u32) {
    let out = Command::new(root.join("benches/build-llama-mtmd-cli.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer_bin = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (image, threads) = (ask.image, ask.threads);
    let model_toml = setup.model_toml();
    let ask = &Ask {
        text: &setup.text,
        mmproj: &setup.mmproj,
        model_toml: &model_toml,
        ..*ask
    };

    let mut mw = Vec::new();
    let mut pr = Vec::new();
    for rep in 0..reps as usize {
        // Alternate the order so neither always runs on a warm page cache.
        let (a, b) = if rep % 2 == 0 {
            let a = ask.run(&[QUESTION]).0;
            (a, peer(&peer_bin, setup, image, threads, tokens))
        } else {
            let b = peer(&peer_bin, setup, image, threads, tokens);
            (ask.run(&[QUESTION]).0, b)
        };
        assert_eq!(
            a.prompt_tokens, b.prompt_tokens,
            "moonwatch and llama-mtmd-cli evaluated different prompts"
        );
        eprintln!("rep {}: moonwatch {a:?}\n        peer {b:?}", rep + 1);
        mw.push(a);
        pr.push(b);
    }
    // Warm time to first token: a second question on the cached frame.
    let (warm, _) = ask.run(&[QUESTION, WARM_QUESTION]);
    // The mode users run: end-of-text honoured. On random weights the answer runs to the
    // budget; it must not stop early (the one-word bug) and must say why it stopped.
    let users = Ask {
        ignore_eos: false,
        ..*ask
    };
    let (_, v) = users.run(&[QUESTION]);
    let t = &v["answers"][0]["timing"];
    let generated = t["generated_tokens"].as_u64().unwrap_or(0);
    let reason = t["stop_reason"].as_str().unwrap_or("none").to_owned();
    let whole = match reason.as_str() {
        "end_of_text" | "stop_sequence" => true,
        "budget" => generated == u64::from(tokens),
        _ => false,
    };
    assert!(
        whole,
        "answer cut short: {generated} tokens, stop_reason {reason}"
    );

    let m = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    println!(
        "\nmoonwatch vs llama-mtmd-cli, {}: full-shape random Moondream2, {}, {threads} threads, \
         {tokens} tokens with end-of-text ignored, {reps} interleaved pairs; \
         medians, and the median (min..max) of the paired ratios\n",
        setup.label,
        setup.describe()
    );
    println!("| metric | moonwatch | llama-mtmd-cli | moonwatch / peer |");
    println!("|---|---|---|---|");
    let row = |name: &str, f: fn(&Sample) -> f64, unit: &str, scale: f64| {
        let (a, b) = (m(&mw, f) * scale, m(&pr, f) * scale);
        println!(
            "| {name} | {a:.1} {unit} | {b:.1} {unit} | {} |",
            ratios(&mw, &pr, f)
        );
    };
    row("prompt positions evaluated", |s| s.prompt_tokens, "", 1.0);
    row("image encode", |s| s.encode_ms, "ms", 1.0);
    row("image prefill (729 tok)", |s| s.image_prefill_ms, "ms", 1.0);
    row("prefill", |s| s.prefill_tok_s, "tok/s", 1.0);
    row("time to first token, cold", |s| s.ttft_cold_ms, "ms", 1.0);
    row("decode", |s| s.decode_tok_s, "tok/s", 1.0);
    row("tokens generated", |s| s.tokens, "", 1.0);
    row("peak RSS", |s| s.rss, "MB", 1e-6);
    row(
        "whole process (load, warm-up, 1 question)",
        |s| s.wall_ms,
        "ms",
        1.0,
    );
    println!(
        "| time to first token, warm (second question, cached frame) | {:.1} ms | - | {:.1}% of cold |",
        warm.ttft_warm_ms,
        warm.ttft_warm_ms / warm.ttft_cold_ms * 100.0
    );
    println!(
        "| users' mode (end-of-text honoured) | {generated} tokens, stop_reason {reason} | - | whole |"
    );
}

/// The text model's weight types, and the Raspberry Pi 5 configuration, on moonwatch alone.
fn quant_table(ask: &Ask, models: &Path, quants: &[&str], reps: u32) {
    println!(
        "\nWeight types and memory levers (mmproj F16, n_ctx 2048, KV F16 unless noted), {} tokens, medians of {reps} runs\n",
        ask.tokens
    );
    println!("| configuration | files | cold TTFT | decode | peak RSS |");
    println!("|---|---|---|---|---|");
    let text = |q: &str| models.join(format!("moondream2-text-model-{q}.gguf"));
    let f16_proj = models.join("moondream2-mmproj-f16.gguf");
    let q8_proj = models.join("moondream2-mmproj-q8_0.gguf");
    // (label, text model, projector, extra [model] keys, or a board's whole config file)
    type Row<'a> = (String, PathBuf, PathBuf, &'a str, Option<PathBuf>);
    let row = |name: &str, q: &str, proj: &Path, toml: &'static str| -> Row<'static> {
        (name.to_owned(), text(q), proj.to_owned(), toml, None)
    };
    let mut rows: Vec<Row> = quants
        .iter()
        .map(|q| row(&format!("text {}", q.to_uppercase()), q, &f16_proj, ""))
        .collect();
    // The levers for a 2 GB board, one at a time, then together as configs/ ships them.
    let small_ctx = "context_size = 1024";
    let small_ctx_q8_kv = "context_size = 1024\nkv_cache_type = \"q8_0\"";
    rows.push(row("text Q4_0, n_ctx 1024", "q4_0", &f16_proj, small_ctx));
    rows.push(row(
        "text Q4_0, n_ctx 1024, KV q8_0",
        "q4_0",
        &f16_proj,
        small_ctx_q8_kv,
    ));
    // Before the feed-forward layers were widened (ffn_down F16), when that file is kept.
    let unpadded = models.join("moondream2-mmproj-q8_0-unpadded.gguf");
    if unpadded.is_file() {
        rows.push(row(
            "text Q4_0, mmproj Q8_0 with ffn_down F16",
            "q4_0",
            &unpadded,
            "",
        ));
    }
    rows.push(row("text Q4_0, mmproj Q8_0", "q4_0", &q8_proj, ""));
    let pi5 = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/raspberry-pi-5-camera.toml");
    rows.push((
        "configs/raspberry-pi-5-camera.toml: text Q4_0, mmproj Q8_0, n_ctx 1024, KV q8_0, batch 128"
            .into(),
        text("q4_0"),
        q8_proj.clone(),
        "",
        Some(pi5),
    ));
    for (name, path, proj, toml, file) in rows {
        let a = Ask {
            text: &path,
            mmproj: &proj,
            model_toml: toml,
            config_file: file.as_deref(),
            ..*ask
        };
        let runs: Vec<Sample> = (0..reps).map(|_| a.run(&[QUESTION]).0).collect();
        let m = |f: fn(&Sample) -> f64| median(runs.iter().map(f).collect());
        let size = [&path, &proj]
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum::<u64>();
        println!(
            "| {name} | {:.0} MB | {:.0} ms | {:.1} tok/s | {:.0} MB |",
            size as f64 / 1e6,
            m(|s| s.ttft_cold_ms),
            m(|s| s.decode_tok_s),
            m(|s| s.rss) / 1e6
        );
    }
}

/// What each memory lever costs in answer quality, judged on random weights as llama.cpp
/// judges quantizations: how far the model's first-token distribution moves from the F16
/// files with an F16 KV cache. Moondream's yes/no answers read two of its tokens, so the
/// distance is the mean absolute change of ln p(yes) and ln p(no) (the logits' change less
/// the change of their normaliser), over 4 pictures x 2 questions, the second question on
/// the cached picture as triggers ask them.
fn quality_table(models: &Path, threads: u32) {
    use moonwatch::config::KvCacheKind;
    use moonwatch::vision::moondream::{self, Settings};
    use moonwatch::vision::{Answer, Request, Skill};

    let text = |q: &str| models.join(format!("moondream2-text-model-{q}.gguf"));
    let proj = |q: &str| models.join(format!("moondream2-mmproj-{q}.gguf"));
    let unpadded = proj("q8_0-unpadded");
    let probe = |text: PathBuf, mmproj: PathBuf, kv: KvCacheKind, ctx: u32| -> Vec<f64> {
        let mut s = Settings::for_files(&text, &mmproj, threads);
        s.model.kv_cache_type = kv;
        s.model.context_size = ctx;
        s.model.batch_size = 128;
        let engine = moondream::start(s).expect("engine");
        let mut out = Vec::new();
        for seed in [11u8, 47, 101, 173] {
            let img = image::RgbImage::from_fn(640, 480, |x, y| {
                image::Rgb([
                    (x as u8).wrapping_mul(seed),
                    (y as u8).wrapping_add(seed),
                    ((x ^ y) as u8).wrapping_add(seed),
                ])
            });
            let frame = std::sync::Arc::new(
                moonwatch::frame::Frame::from_rgb(640, 480, img.into_raw()).unwrap(),
            );
            let skills = ["Is there a person in the picture?", "Is the door open?"]
                .map(|q| Skill::YesNo { question: q.into() })
                .to_vec();
            let r = engine.run(Request::new(frame, skills)).expect("answer");
            for a in &r.answers {
                match a.answer {
                    Answer::YesNo { p_yes, p_no, .. } => {
                        out.push(f64::from(p_yes).ln());
                        out.push(f64::from(p_no).ln());
                    }
                    ref other => panic!("{other:?}"),
                }
            }
        }
        out
    };
    println!(
        "\nAnswer quality of the memory levers: mean |change of ln p| of the yes and no tokens from \
         F16 files with an F16 KV cache (n_ctx 1024, batch 128, {threads} threads), 4 pictures x 2 questions\n"
    );
    println!("| configuration | mean abs change of ln p | largest |");
    println!("|---|---|---|");
    let reference = probe(text("f16"), proj("f16"), KvCacheKind::F16, 1024);
    let mut rows = vec![
        ("text Q4_0", text("q4_0"), proj("f16"), KvCacheKind::F16),
        ("KV cache q8_0", text("f16"), proj("f16"), KvCacheKind::Q8_0),
        (
            "mmproj Q8_0, ffn_down F16 (before)",
            text("f16"),
            unpadded.clone(),
            KvCacheKind::F16,
        ),
        (
            "mmproj Q8_0, ffn_down Q8_0 (widened)",
            text("f16"),
            proj("q8_0"),
            KvCacheKind::F16,
        ),
        (
            "Raspberry Pi 5 (all three)",
            text("q4_0"),
            proj("q8_0"),
            KvCacheKind::Q8_0,
        ),
    ];
    if !unpadded.is_file() {
        rows.retain(|r| r.2 != unpadded);
    }
    for (name, t, p, kv) in rows {
        let v = probe(t, p, kv, 1024);
        let d: Vec<f64> = v
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let max = d.iter().copied().fold(0.0, f64::max);
        println!("| {name} | {mean:.4} | {max:.4} |");
    }
}
