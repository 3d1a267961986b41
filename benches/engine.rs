//! Engine benchmark: moonwatch against llama.cpp's own `llama-mtmd-cli`, same llama.cpp
//! source, same full-shape random-weight Moondream2 pair, same image, threads and prompt.
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
    rss: f64,
    wall_ms: f64,
}

fn moonwatch(
    bin: &str,
    text: &Path,
    mmproj: &Path,
    image: &Path,
    threads: u32,
    tokens: u32,
) -> Sample {
    let (stdout, _, rss, wall) = run_measured(
        Command::new(bin)
            .args([
                "ask",
                "--json",
                "--ignore-eos",
                "--threads",
                &threads.to_string(),
                "--max-tokens",
                &tokens.to_string(),
            ])
            .arg("--model")
            .arg(text)
            .arg("--mmproj")
            .arg(mmproj)
            .arg("--image")
            .arg(image)
            .args([QUESTION, WARM_QUESTION])
            .env_remove("MOONWATCH_CONFIG"),
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("moonwatch JSON");
    let f = |x: &serde_json::Value| x.as_f64().unwrap();
    let (a0, a1) = (&v["answers"][0]["timing"], &v["answers"][1]["timing"]);
    let prefix_tokens = f(&v["prefix"]["tokens"]) - 1.0;
    assert!(f(&v["prefix"]["image_encode_ms"]) > 0.0);
    Sample {
        encode_ms: f(&v["prefix"]["image_encode_ms"]),
        image_prefill_ms: f(&v["prefix"]["image_prefill_ms"]),
        prefill_tok_s: (prefix_tokens + f(&a0["prompt_tokens"]))
            / ((f(&v["prefix"]["image_prefill_ms"]) + f(&a0["prefill_ms"])) / 1e3),
        ttft_cold_ms: f(&a0["first_token_ms"]),
        ttft_warm_ms: f(&a1["first_token_ms"]),
        decode_tok_s: f(&a0["decode_steps"]) / (f(&a0["decode_ms"]) / 1e3),
        tokens: f(&a0["generated_tokens"]),
        rss: rss as f64,
        wall_ms: wall,
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

fn peer(bin: &str, text: &Path, mmproj: &Path, image: &Path, threads: u32, tokens: u32) -> Sample {
    // Moondream's format: BOS, image, "\n\nQuestion: {q}\n\nAnswer:".
    let template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}\
                    {% if add_generation_prompt %}\n\nAnswer:{% endif %}";
    let prompt = format!("<__media__>\n\nQuestion: {QUESTION}");
    let (stdout, stderr, rss, wall) = run_measured(
        Command::new(bin)
            .arg("-m")
            .arg(text)
            .arg("--mmproj")
            .arg(mmproj)
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
            .args([
                "-t",
                &threads.to_string(),
                "-c",
                "2048",
                "-b",
                "512",
                "-ub",
                "512",
                "--no-warmup",
                "-lv",
                "4",
            ]),
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
        rss: rss as f64,
        wall_ms: wall,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let threads = env_or("MOONWATCH_BENCH_THREADS", 2);
    let reps = env_or("MOONWATCH_BENCH_REPS", 3).max(1);
    let tokens = env_or("MOONWATCH_BENCH_TOKENS", 32);
    let bin = env!("CARGO_BIN_EXE_moonwatch");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = std::env::var_os("MOONWATCH_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/moonwatch/bench-models"));
    let text = models.join("moondream2-text-model-q4_k_m.gguf");
    let mmproj = models.join("moondream2-mmproj-f16.gguf");
    if !text.is_file() || !mmproj.is_file() {
        eprintln!(
            "generating the full-shape random pair in {}",
            models.display()
        );
        let st = Command::new(bin)
            .args([
                "model",
                "synth",
                "--size",
                "full",
                "--quantize",
                "q4-km",
                "--out",
            ])
            .arg(&models)
            .status()
            .unwrap();
        assert!(st.success());
        // Only the quantized text model is used; drop the 2.8 GB F16 one.
        let _ = std::fs::remove_file(models.join("moondream2-text-model-f16.gguf"));
    }
    let out = Command::new(root.join("benches/build-llama-mtmd-cli.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer_bin = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let image = std::env::temp_dir().join("moonwatch-bench.jpg");
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x / 3) as u8, (y / 2) as u8, ((x + y) / 5) as u8])
    });
    img.save(&image).unwrap();

    let mut mw = Vec::new();
    let mut pr = Vec::new();
    for rep in 0..reps as usize {
        // Alternate the order so neither always runs on a warm page cache.
        if rep % 2 == 0 {
            mw.push(moonwatch(bin, &text, &mmproj, &image, threads, tokens));
            pr.push(peer(&peer_bin, &text, &mmproj, &image, threads, tokens));
        } else {
            pr.push(peer(&peer_bin, &text, &mmproj, &image, threads, tokens));
            mw.push(moonwatch(bin, &text, &mmproj, &image, threads, tokens));
        }
        eprintln!(
            "rep {}: moonwatch {:?}\n        peer {:?}",
            rep + 1,
            mw[rep],
            pr[rep]
        );
    }
    let m = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    let weights =
        std::fs::metadata(&text).unwrap().len() + std::fs::metadata(&mmproj).unwrap().len();
    // F16 K and V for 2048 positions x 24 layers x 2048 wide.
    let kv: u64 = 2 * 2048 * 24 * 2048 * 2;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "machine: {cpu}, {} cores; threads {threads}; {reps} runs each, medians",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("model: full-shape random Moondream2, text Q4_K_M + mmproj F16 ({:.2} GB), n_ctx 2048, {tokens} tokens", weights as f64 / 1e9);
    println!();
    println!("| metric | moonwatch | llama-mtmd-cli | moonwatch / peer |");
    println!("|---|---|---|---|");
    let row = |name: &str, f: fn(&Sample) -> f64, unit: &str, scale: f64| {
        let (a, b) = (m(&mw, f) * scale, m(&pr, f) * scale);
        let ratio = if b.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.3}", a / b)
        };
        let bs = if b.is_nan() {
            "-".to_owned()
        } else {
            format!("{b:.1} {unit}")
        };
        println!("| {name} | {a:.1} {unit} | {bs} | {ratio} |");
    };
    row("image encode", |s| s.encode_ms, "ms", 1.0);
    row("image prefill (729 tok)", |s| s.image_prefill_ms, "ms", 1.0);
    row("prefill", |s| s.prefill_tok_s, "tok/s", 1.0);
    row("time to first token, cold", |s| s.ttft_cold_ms, "ms", 1.0);
    row(
        "time to first token, warm (cached frame)",
        |s| s.ttft_warm_ms,
        "ms",
        1.0,
    );
    row("decode", |s| s.decode_tok_s, "tok/s", 1.0);
    row("tokens generated", |s| s.tokens, "", 1.0);
    row("peak RSS", |s| s.rss, "MB", 1e-6);
    row(
        "whole process (moonwatch: load + 2 questions; peer: load + 1)",
        |s| s.wall_ms,
        "ms",
        1.0,
    );
    println!();
    let cold = m(&mw, |s| s.ttft_cold_ms) / m(&pr, |s| s.ttft_cold_ms);
    let dec = m(&mw, |s| s.decode_tok_s) / m(&pr, |s| s.decode_tok_s);
    let warm = m(&mw, |s| s.ttft_warm_ms) / m(&mw, |s| s.ttft_cold_ms);
    let rss_budget = (weights + kv) as f64 * 1.15;
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("targets:");
    println!(
        "- cold TTFT within 3% of llama-mtmd-cli: {:+.1}% ({})",
        (cold - 1.0) * 100.0,
        check(cold <= 1.03)
    );
    println!(
        "- decode within 3% of llama-mtmd-cli: {:+.1}% ({})",
        (dec - 1.0) * 100.0,
        check(dec >= 0.97)
    );
    println!(
        "- warm TTFT at most 10% of cold: {:.1}% ({})",
        warm * 100.0,
        check(warm <= 0.10)
    );
    println!(
        "- peak RSS at most weights + KV + 15% = {:.0} MB: {:.0} MB ({})",
        rss_budget / 1e6,
        m(&mw, |s| s.rss) / 1e6,
        check(m(&mw, |s| s.rss) <= rss_budget)
    );
}
