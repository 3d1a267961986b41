//! `moonwatch model pull` against a local stand-in for the Hugging Face hub on loopback.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use moonwatch::model::convert;
use sha2::{Digest, Sha256};

const REV: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `/{repo}/resolve/{REV}/{name}` like the hub: ETag is the SHA-256 (as for LFS
/// files), X-Repo-Commit names the revision, Range requests are honoured.
struct Hub {
    url: String,
    gets: Arc<AtomicUsize>,
}

fn hub(files: Vec<(&'static str, Vec<u8>, String)>) -> Hub {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = gets.clone();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let path = req.url().to_owned();
            let Some((_, body, etag)) = files
                .iter()
                .find(|(name, _, _)| path == format!("/acme/moondream/resolve/{REV}/{name}"))
            else {
                let _ = req.respond(tiny_http::Response::empty(404));
                continue;
            };
            let range = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Range"))
                .map(|h| h.value.as_str().to_owned());
            let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
                Some(r) => {
                    let (a, b) = r.split_once('-').unwrap();
                    let a: usize = a.parse().unwrap();
                    let b: usize = if b.is_empty() {
                        body.len() - 1
                    } else {
                        b.parse().unwrap()
                    };
                    (a, b.min(body.len() - 1))
                }
                None => (0, body.len() - 1),
            };
            if end > start {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let h = |k: &str, v: &str| {
                tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap()
            };
            let resp = tiny_http::Response::from_data(body[start..=end].to_vec())
                .with_status_code(206)
                .with_header(h("ETag", &format!("\"{etag}\"")))
                .with_header(h("X-Repo-Commit", REV))
                .with_header(h(
                    "Content-Range",
                    &format!("bytes {start}-{end}/{}", body.len()),
                ));
            let _ = req.respond(resp);
        }
    });
    Hub { url, gets }
}

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn config(dir: &Path, text_sha: &str) -> std::path::PathBuf {
    let path = dir.join("moonwatch.toml");
    std::fs::write(
        &path,
        format!(
            "[model]\ntext = \"models/text.gguf\"\nmmproj = \"models/mmproj.gguf\"\n\
             [model.download]\nrepo = \"acme/moondream\"\nrevision = \"{REV}\"\n\
             text_file = \"t.gguf\"\nmmproj_file = \"m.gguf\"\ntext_sha256 = \"{text_sha}\"\n"
        ),
    )
    .unwrap();
    path
}

fn pull(hub: &Hub, config: &Path) -> std::process::Output {
    pull_with(hub, config, &[])
}

/// `moonwatch model pull EXTRA... --config CONFIG` against `hub`.
fn pull_with(hub: &Hub, config: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moonwatch"))
        .args(["model", "pull"])
        .args(extra)
        .arg("--config")
        .arg(config)
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", config.parent().unwrap().join("hf-home"))
        .output()
        .unwrap()
}

#[test]
fn pulls_verifies_and_skips_what_is_already_there() {
    let text = b"GGUF pretend text model".repeat(1000);
    let mmproj = b"GGUF pretend projector".repeat(700);
    let hub = hub(vec![
        ("t.gguf", text.clone(), sha(&text)),
        ("m.gguf", mmproj.clone(), sha(&mmproj)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");

    let out = pull(&hub, &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dir.path().join("models/text.gguf")).unwrap(),
        text
    );
    assert_eq!(
        std::fs::read(dir.path().join("models/mmproj.gguf")).unwrap(),
        mmproj
    );
    assert!(
        stdout.contains(&sha(&text)) && stdout.contains("downloaded"),
        "{stdout}"
    );
    assert!(
        !dir.path().join("models/.download-cache").exists(),
        "cache left behind"
    );
    let fetched = hub.gets.load(Ordering::SeqCst);
    assert_eq!(fetched, 2);

    // Second run: both files verified in place, nothing fetched.
    rerun_fetches_nothing(&hub, || pull(&hub, &cfg));
}

/// A rerun succeeds with both files "already present" and nothing fetched from `hub`.
fn rerun_fetches_nothing(hub: &Hub, rerun: impl FnOnce() -> std::process::Output) {
    let fetched = hub.gets.load(Ordering::SeqCst);
    let out = rerun();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("already present").count(), 2, "{stdout}");
    assert_eq!(hub.gets.load(Ordering::SeqCst), fetched);
}

#[test]
fn a_wrong_checksum_fails_and_leaves_no_file() {
    let text = b"GGUF bytes that do not match".to_vec();
    let hub = hub(vec![
        ("t.gguf", text.clone(), sha(&text)),
        ("m.gguf", b"GGUF m".to_vec(), sha(b"GGUF m")),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &"ab".repeat(32));
    let out = pull(&hub, &cfg);
    assert_eq!(out.status.code(), Some(74));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SHA-256") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!dir.path().join("models/text.gguf").exists());
}

#[test]
fn an_unreachable_hub_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_moonwatch"))
        .args(["model", "pull", "--config"])
        .arg(&cfg)
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("HF_HOME", dir.path().join("hf-home"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(74));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("acme/moondream") && stderr.contains("t.gguf"),
        "{stderr}"
    );
}

#[test]
fn pull_quantizes_the_verified_files_and_records_their_hashes() {
    let pair = moonwatch::model::synth::tiny_pair_in(&Path::new(env!("CARGO_TARGET_TMPDIR")).join(
        format!("tiny-moondream-v{}", moonwatch::model::synth::FORMAT),
    ))
    .unwrap();
    let text = std::fs::read(&pair.text).unwrap();
    let mmproj = std::fs::read(&pair.mmproj).unwrap();
    let hub = hub(vec![
        ("t.gguf", text.clone(), sha(&text)),
        ("m.gguf", mmproj.clone(), sha(&mmproj)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sha(&text));
    // The projector too: [model.download] is the file's last section.
    let mut toml = std::fs::read_to_string(&cfg).unwrap();
    toml.push_str("quantize_mmproj = true\n");
    std::fs::write(&cfg, toml).unwrap();
    let run = || pull_with(&hub, &cfg, &["--quantize", "q8_0"]);
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // model.text names the result; the download (t.gguf) lands beside it and goes.
    let q = dir.path().join("models/text.gguf");
    let bytes = std::fs::read(&q).unwrap();
    assert_ne!(bytes, text);
    let gguf = llama_cpp_2::gguf::GgufContext::from_file(&q).unwrap();
    let ft = gguf.find_key("general.file_type");
    assert_eq!(gguf.val_u32(ft), llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0);
    let recorded = std::fs::read_to_string(dir.path().join("models/text.gguf.sha256")).unwrap();
    assert_eq!(recorded.trim(), sha(&bytes));
    assert!(stdout.contains(&sha(&bytes)), "{stdout}");
    assert!(
        !dir.path().join("models/t.gguf").exists(),
        "the F16 download is removed"
    );

    // Again: the quantized files are verified in place, nothing is downloaded.
    rerun_fetches_nothing(&hub, run);
}

#[test]
fn an_old_narrow_projector_is_widened_in_place_and_a_damaged_one_pulled_afresh() {
    use moonwatch::model::{projector, synth};
    // A projector whose feed-forward width (120) is not whole Q8_0 blocks, like SigLIP's.
    let src = tempfile::tempdir().unwrap();
    let shape = synth::Shape {
        vision_ff: 120,
        ..synth::Shape::tiny()
    };
    let pair = synth::write_pair(src.path(), &shape, &synth::default_vocab_dir()).unwrap();
    let text = std::fs::read(&pair.text).unwrap();
    let mmproj = std::fs::read(&pair.mmproj).unwrap();
    let hub = hub(vec![
        ("t.gguf", text.clone(), sha(&text)),
        ("m.gguf", mmproj.clone(), sha(&mmproj)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sha(&text));
    let mut toml = std::fs::read_to_string(&cfg).unwrap();
    toml.push_str(
        "quantize_mmproj = true
",
    );
    std::fs::write(&cfg, toml).unwrap();
    let target = dir.path().join("models/mmproj.gguf");
    let sidecar = dir.path().join("models/mmproj.gguf.sha256");
    // What an earlier moonwatch's pull left: a narrow Q8_0 projector and its hash.
    let narrow = projector::Options {
        pad_ffn: false,
        ..Default::default()
    };
    let write_old = |hash: Option<&str>| {
        projector::rewrite(&pair.mmproj, &target, narrow).unwrap();
        let own = sha(&std::fs::read(&target).unwrap());
        std::fs::write(&sidecar, format!("{}\n", hash.unwrap_or(&own))).unwrap();
    };
    let run = || pull(&hub, &cfg);

    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    write_old(None);
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!projector::needs_widening(&target), "widened");
    let recorded = std::fs::read_to_string(&sidecar).unwrap();
    assert_eq!(recorded.trim(), sha(&std::fs::read(&target).unwrap()));
    // Only the text model was fetched: the projector was upgraded without a download.
    let gets = hub.gets.load(Ordering::SeqCst);
    assert_eq!(gets, 1, "only t.gguf");

    // A narrow file that no longer matches its recorded hash is not trusted: the pull
    // downloads the projector again and writes it widened.
    write_old(Some(&"0".repeat(64)));
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!projector::needs_widening(&target));
    assert_eq!(hub.gets.load(Ordering::SeqCst), gets + 1, "m.gguf fetched");
}

#[test]
fn the_release_weights_are_downloaded_verified_and_converted() {
    // The release's own layout (model.safetensors), random weights, served like the hub.
    let src = tempfile::tempdir().unwrap();
    let weights = moonwatch::model::convert::write_reference(
        src.path(),
        &moonwatch::model::convert::RefShape::tiny(),
        1,
        moonwatch::model::convert::Fixture::Random {
            eos_bias: 0.0,
            attention: 1.0,
            values: 1.0,
        },
    )
    .unwrap();
    let body = std::fs::read(&weights).unwrap();
    let hub = hub(vec![("model.safetensors", body.clone(), sha(&body))]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("moonwatch.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nrevision = \"moondream2-2025-04-14\"\ntext = \"models/text.gguf\"\n\
             mmproj = \"models/mmproj.gguf\"\nregion = \"models/region.gguf\"\n\
             [model.download]\nrepo = \"acme/moondream\"\nrevision = \"{REV}\"\n\
             weights_file = \"model.safetensors\"\n"
        ),
    )
    .unwrap();
    let out = pull(&hub, &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("downloaded").count(), 3, "{stdout}");
    assert!(
        !dir.path().join("models/model.safetensors").exists(),
        "the 3.85 GB download is removed once converted"
    );
    // The converted files run real detection.
    let image = png(dir.path(), "scene.png");
    let out = Command::new(env!("CARGO_BIN_EXE_moonwatch"))
        .args(["detect", "cat", "--json", "--threads", "2", "--image"])
        .arg(&image)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"method\": \"region_heads\""),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A rerun finds all three in place and fetches nothing.
    let fetched = hub.gets.load(Ordering::SeqCst);
    let out = pull(&hub, &cfg);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("already present").count(), 3, "{stdout}");
    assert_eq!(hub.gets.load(Ordering::SeqCst), fetched);

    // The upgrade: a projector an older moonwatch converted (no halves for reference
    // crops), its hash recorded, is converted again from a new download.
    let mmproj = dir.path().join("models/mmproj.gguf");
    assert!(convert::has_crop_halves(&mmproj));
    strip_crop_halves(&mmproj);
    assert!(!convert::has_crop_halves(&mmproj));
    let out = pull(&hub, &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("predates reference crops"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        hub.gets.load(Ordering::SeqCst),
        fetched + 1,
        "the release again"
    );
    assert!(convert::has_crop_halves(&mmproj));
}

/// Rewrites a converted projector as moonwatch wrote it before `model.crops`: without the
/// first layer's halves, its hash recorded beside it.
fn strip_crop_halves(path: &Path) {
    use std::io::Write;
    let r = moonwatch::gguf::Reader::open(path, false).unwrap();
    let keep: Vec<_> = r
        .tensors()
        .unwrap()
        .into_iter()
        .filter(|t| t.name != convert::CROP_PROJ_GLOBAL && t.name != convert::CROP_PROJ_LOCAL)
        .collect();
    let bytes = std::fs::read(path).unwrap();
    let mut w = moonwatch::gguf::Writer::new(keep.len());
    w.copy_kv(&r);
    for t in &keep {
        assert!(w.tensor(&t.name, t.ty, &t.ne));
    }
    let tmp = path.with_extension("old");
    assert!(w.write_header(&tmp));
    let mut f = std::fs::OpenOptions::new().append(true).open(&tmp).unwrap();
    for t in &keep {
        f.write_all(&bytes[t.offset as usize..][..t.size]).unwrap();
        f.write_all(&vec![0; (32 - t.size % 32) % 32]).unwrap();
    }
    drop(f);
    std::fs::rename(&tmp, path).unwrap();
    let mut sidecar = path.as_os_str().to_owned();
    sidecar.push(".sha256");
    std::fs::write(sidecar, sha(&std::fs::read(path).unwrap())).unwrap();
}

/// A small PNG picture.
fn png(dir: &Path, name: &str) -> std::path::PathBuf {
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 90]));
    let path = dir.join(name);
    img.save(&path).unwrap();
    path
}
