//! The command line as a user runs it: outputs, one-line errors and exit codes.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn moonwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moonwatch"))
        .args(args)
        .env_remove("MOONWATCH_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a failure with `code` and a single stderr line containing `needle`.
fn fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    text: PathBuf,
    mmproj: PathBuf,
    image: PathBuf,
}

fn fixture() -> Fixture {
    let pair = common::tiny();
    let dir = tempfile::tempdir().unwrap();
    let image = common::png(dir.path(), "scene.png", 4);
    Fixture {
        dir: dir.path().to_owned(),
        _dir: dir,
        text: pair.text,
        mmproj: pair.mmproj,
        image,
    }
}

/// `moonwatch COMMAND --model TEXT --mmproj MMPROJ --threads 2 --image IMAGE EXTRA...`
fn run_skill(command: &str, text: &Path, mmproj: &Path, image: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        command,
        "--model",
        s(text),
        "--mmproj",
        s(mmproj),
        "--threads",
        "2",
        "--image",
        s(image),
    ];
    args.extend_from_slice(extra);
    moonwatch(&args)
}

#[test]
fn ask_json_prints_answers_and_timings_with_the_prefix_reused_for_the_second() {
    let f = fixture();
    let extra = ["--json", "What is this?", "Is it red?"];
    let out = run_skill("ask", &f.text, &f.mmproj, &f.image, &extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prefix"]["reused"], false);
    assert!(v["prefix"]["image_encode_ms"].as_f64().unwrap() > 0.0);
    let answers = v["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0]["skill"], "query");
    assert!(answers[0]["answer"].is_string());
    assert!(
        answers[1]["timing"]["first_token_ms"].as_f64().unwrap() < v["total_ms"].as_f64().unwrap()
    );
}

#[test]
fn each_skill_has_a_command() {
    let f = fixture();
    for cmd in [
        vec!["caption", "--length", "short"],
        vec!["detect", "car"],
        vec!["point", "car"],
        vec!["yes-no", "Is it daytime?"],
    ] {
        let out = run_skill(cmd[0], &f.text, &f.mmproj, &f.image, &cmd[1..]);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "{cmd:?} printed nothing");
    }
    let out = run_skill(
        "yes-no",
        &f.text,
        &f.mmproj,
        &f.image,
        &["--json", "Is it on?"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["answers"][0]["confidence"].as_f64().unwrap() >= 0.5);
}

#[test]
fn bad_inputs_give_one_line_and_distinct_codes() {
    let f = fixture();
    // A truncated text model.
    let truncated = f.dir.join("truncated.gguf");
    let bytes = std::fs::read(&f.text).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = run_skill("ask", &truncated, &f.mmproj, &f.image, &["q"]);
    fails(&out, 69, "truncated.gguf");
    // A missing vision projector.
    let missing = Path::new("/nonexistent/mmproj.gguf");
    let out = run_skill("ask", &f.text, missing, &f.image, &["q"]);
    fails(&out, 69, "/nonexistent/mmproj.gguf");
    // A text file passed as the image.
    let notes = f.dir.join("notes.txt");
    std::fs::write(&notes, "not a picture").unwrap();
    let out = run_skill("ask", &f.text, &f.mmproj, &notes, &["q"]);
    fails(&out, 65, "notes.txt");
    // A missing image.
    let cat = Path::new("/nonexistent/cat.jpg");
    let out = run_skill("ask", &f.text, &f.mmproj, cat, &["q"]);
    fails(&out, 66, "/nonexistent/cat.jpg");
    // An empty question.
    let out = run_skill("ask", &f.text, &f.mmproj, &f.image, &["   "]);
    fails(&out, 64, "empty");
}

#[test]
fn config_errors_exit_78_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\ncontext_size = 2048\nturbo = true\n").unwrap();
    let out = moonwatch(&["check-config", s(&bad)]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("turbo"));

    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[model]\ncontext_size = 100\nqueue_depth = 0\n").unwrap();
    let out = moonwatch(&["check-config", s(&invalid)]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.context_size") && err.contains("model.queue_depth"),
        "{err}"
    );

    // The same file given to ask fails before any model is touched.
    let img = common::png(dir.path(), "x.png", 1);
    let out = moonwatch(&["ask", "--config", s(&bad), "--image", s(&img), "q"]);
    assert_eq!(out.status.code(), Some(78));

    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/moonwatch.toml");
    let out = moonwatch(&["check-config", "--no-files", s(&shipped)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A valid file whose model files do not exist: 69, naming each missing file.
    let present = dir.path().join("text.gguf");
    std::fs::write(&present, b"GGUF").unwrap();
    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        format!(
            "[model]\ntext = {:?}\nmmproj = \"/nonexistent/mmproj.gguf\"\n",
            present.display().to_string()
        ),
    )
    .unwrap();
    let out = moonwatch(&["check-config", s(&missing)]);
    fails(
        &out,
        69,
        "model.mmproj: /nonexistent/mmproj.gguf does not exist",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("model.text"), "{err}");
    assert!(moonwatch(&["check-config", "--no-files", s(&missing)])
        .status
        .success());
}

#[test]
fn no_model_and_no_config_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::png(dir.path(), "x.png", 1);
    if Path::new(moonwatch::config::DEFAULT_PATH).exists() {
        eprintln!(
            "skipped: {} exists on this machine",
            moonwatch::config::DEFAULT_PATH
        );
        return;
    }
    let out = moonwatch(&["ask", "--image", s(&img), "q"]);
    fails(&out, 78, "--config");
}

#[test]
fn the_cli_prints_whole_known_answers() {
    let dir = tempfile::tempdir().unwrap();
    let image = common::png(dir.path(), "scene.png", 4);
    let square = common::answering(" a red square", true);
    let out = run_skill(
        "ask",
        &square.text,
        &square.mmproj,
        &image,
        &["What is this?"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().next(), Some("a red square"), "{stdout}");
    // The budget cuts it, and --json says so.
    let out = run_skill(
        "ask",
        &square.text,
        &square.mmproj,
        &image,
        &["--json", "--max-tokens", "2", "What is this?"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["answers"][0]["answer"], "a red");
    assert_eq!(v["answers"][0]["timing"]["stop_reason"], "budget");

    let boxed = common::answering(" Yes [0.25, 0.30, 0.75, 0.90]", true);
    let out = run_skill("detect", &boxed.text, &boxed.mmproj, &image, &["car"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("present (confidence 1.00)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("x_min 0.250 y_min 0.300 x_max 0.750 y_max 0.900"),
        "{stdout}"
    );
    // --annotate writes the picture with that box drawn where it was found.
    let drawn = dir.path().join("drawn.jpg");
    let out = run_skill(
        "detect",
        &boxed.text,
        &boxed.mmproj,
        &image,
        &["car", "--annotate", drawn.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&drawn).expect("a picture").to_rgb8();
    assert_eq!(img.dimensions(), (64, 48));
    // The left edge of the box: x 0.25 of 64, halfway between y 0.30 and 0.90 of 48.
    let near = |p: [u8; 3], q: [u8; 3]| p.iter().zip(q).all(|(a, b)| a.abs_diff(b) < 70);
    let edge = img.get_pixel(16, 29).0;
    assert!(near(edge, [0, 230, 64]), "box colour at the edge: {edge:?}");
    let out = run_skill(
        "yes-no",
        &boxed.text,
        &boxed.mmproj,
        &image,
        &["Is it a car?"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("yes (confidence 1.00)"));
    let out = run_skill(
        "yes-no",
        &square.text,
        &square.mmproj,
        &image,
        &["Is it a car?"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("uncertain"));
}

#[test]
fn the_committed_json_schemas_match_the_wire_types() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moonwatch"))
        .args(["schema", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema");
    let bless = std::env::var_os("MOONWATCH_BLESS").is_some();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let made = std::fs::read_to_string(entry.path()).unwrap();
        let committed = docs.join(entry.file_name());
        if bless {
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(&committed, &made).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&committed).unwrap_or_default(),
            made,
            "{} is out of date: MOONWATCH_BLESS=1 cargo test --test cli",
            committed.display()
        );
    }
    // One payload to stdout; an unknown name is a usage error.
    let one = std::process::Command::new(env!("CARGO_BIN_EXE_moonwatch"))
        .args(["schema", "reply"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(v["title"], "Reply");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_moonwatch"))
        .args(["schema", "nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
}

/// Every string in a YAML document, depth first.
fn yaml_strings(y: &yaml_rust2::Yaml, out: &mut Vec<String>) {
    use yaml_rust2::Yaml;
    match y {
        Yaml::String(s) => out.push(s.clone()),
        Yaml::Array(a) => a.iter().for_each(|v| yaml_strings(v, out)),
        Yaml::Hash(h) => h.iter().for_each(|(k, v)| {
            yaml_strings(k, out);
            yaml_strings(v, out);
        }),
        _ => {}
    }
}

/// Every property name any payload schema declares.
fn schema_keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                out.extend(props.keys().cloned());
            }
            m.values().for_each(|x| schema_keys(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| schema_keys(x, out)),
        _ => {}
    }
}

#[test]
fn the_home_assistant_examples_are_yaml_that_uses_only_what_the_api_has() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/home-assistant.md"),
    )
    .unwrap();
    let blueprint = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/blueprints/moonwatch_trigger_notify.yaml"),
    )
    .unwrap();
    let mut blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(
        blocks.len(),
        5,
        "notify, ask from a script, ask from the UI, tune, switch"
    );
    blocks.push(&blueprint);
    // What the API offers, from the code itself: the topics and entity ids of device
    // `garage` with the triggers the examples name, and every payload key.
    let cfg = moonwatch::config::MqttConfig::default();
    let t = moonwatch::mqtt::topics::Topics::new(&cfg, "garage");
    let mut entity_ids = std::collections::BTreeSet::new();
    let triggers: Vec<moonwatch::triggers::TriggerConfig> = ["garage_door", "porch"]
        .into_iter()
        .map(|name| {
            serde_json::from_value(serde_json::json!({"name": name, "question": "Q?"})).unwrap()
        })
        .collect();
    let refs: Vec<&moonwatch::triggers::TriggerConfig> = triggers.iter().collect();
    let nodes = [
        moonwatch::mqtt::discovery::camera_node(&t, &refs, &[]),
        moonwatch::mqtt::discovery::server_node(&t, true),
    ];
    for node in &nodes {
        for c in &node.components {
            entity_ids.insert(c.config.default_entity_id.clone());
        }
    }
    // The blueprint: an automation blueprint whose every `!input` is declared.
    let bp = &yaml_rust2::YamlLoader::load_from_str(&blueprint).unwrap()[0];
    assert_eq!(bp["blueprint"]["domain"].as_str(), Some("automation"));
    let inputs = bp["blueprint"]["input"].as_hash().expect("inputs");
    let mut used_inputs = 0;
    for word in blueprint.split("!input ").skip(1) {
        let name: String = word
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            inputs.contains_key(&yaml_rust2::Yaml::String(name.clone())),
            "!input {name} is not declared"
        );
        used_inputs += 1;
    }
    assert!(used_inputs >= 4);
    let topics: std::collections::BTreeSet<String> = [
        t.trigger_event("garage_door"),
        format!("{}/request/query", t.base),
        t.response("query"),
        t.trigger_tuning("porch", "interval"),
        format!("{}/set", t.trigger_tuning("porch", "interval")),
    ]
    .into_iter()
    .collect();
    let mut keys = std::collections::BTreeSet::new();
    for (_, schema) in moonwatch::mqtt::wire::schemas() {
        schema_keys(&schema, &mut keys);
    }
    let mut used_topics = 0;
    let mut used_entities = 0;
    let mut used_keys = 0;
    for block in blocks {
        let docs = yaml_rust2::YamlLoader::load_from_str(block)
            .unwrap_or_else(|e| panic!("not YAML: {e}\n{block}"));
        let mut strings = Vec::new();
        docs.iter().for_each(|d| yaml_strings(d, &mut strings));
        for s in &strings {
            if s.starts_with("moonwatch/") {
                assert!(
                    topics.contains(s),
                    "{s} is not a moonwatch topic here: {topics:?}"
                );
                used_topics += 1;
            }
            for word in s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')) {
                if word.contains(".moonwatch_") {
                    assert!(
                        entity_ids.contains(word),
                        "{word} is not an entity moonwatch makes: {entity_ids:?}"
                    );
                    used_entities += 1;
                }
            }
            for path in template_paths(s) {
                for key in path.split('.') {
                    assert!(
                        keys.contains(key),
                        "payload key {key:?} ({path}) is in no schema"
                    );
                }
                used_keys += 1;
            }
        }
    }
    assert!(used_topics >= 3 && used_entities >= 3 && used_keys >= 4);
}

/// The key paths a template reads from a payload: `value_json.a.b`, `payload_json.a`.
fn template_paths(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in ["value_json.", "payload_json."] {
        let mut rest = s;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            out.push(path.trim_end_matches('.').to_owned());
        }
    }
    out
}
