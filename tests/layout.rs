//! The shape of the code, read from the sources: imports between modules run one way (no
//! circle), the lower layers import nothing above them, and `unsafe` stays in the FFI units.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Each module of the library (`vision::region`) and the modules of the crate it names
/// outside its tests.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut modules = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let last = parts.last().cloned().unwrap_or_default();
        if matches!(last.as_str(), "lib" | "main") || last.ends_with("_tests") || last == "tests" {
            continue;
        }
        let is_mod = last == "mod";
        if is_mod {
            parts.pop();
        }
        modules.insert(parts.join("::"), (f.clone(), parts, is_mod));
    }
    let resolve = |path: Vec<String>| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|k| path[..k].join("::"))
            .find(|c| modules.contains_key(c))
    };
    let mut out = BTreeMap::new();
    for (name, (file, parts, is_mod)) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut deps = BTreeSet::new();
        for (marker, base) in [
            ("crate::", Vec::new()),
            ("super::", {
                let mut b = parts.clone();
                if !is_mod {
                    b.pop();
                }
                b.pop();
                b
            }),
        ] {
            for (i, _) in code.match_indices(marker) {
                if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let rest: String = code[i + marker.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut path = base.clone();
                path.extend(
                    rest.split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                );
                if let Some(m) = resolve(path).filter(|m| m != name) {
                    deps.insert(m);
                }
            }
        }
        out.insert(name.clone(), deps);
    }
    out
}

#[test]
fn imports_between_modules_run_one_way() {
    let g = imports();
    assert!(g.contains_key("vision::region") && g.contains_key("mqtt::topics"));
    // A circle is a module that reaches itself.
    for start in g.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = g[start].iter().collect();
        while let Some(m) = stack.pop() {
            assert!(m != start, "{start} imports itself through {seen:?}");
            if seen.insert(m.clone()) {
                stack.extend(g.get(m).into_iter().flatten());
            }
        }
    }
    // Layers: what a module must not import.
    for (module, banned) in [
        ("gguf", &["vision", "model", "mqtt", "daemon", "config"][..]),
        ("vision", &["model", "mqtt", "daemon", "camera"]),
        ("frame", &["vision", "model", "mqtt", "daemon", "triggers"]),
        ("zone", &["triggers", "mqtt", "daemon"]),
        ("mqtt::topics", &["mqtt::api", "mqtt::wire", "daemon"]),
        ("mqtt::wire", &["mqtt::api", "daemon"]),
        ("mqtt::discovery", &["mqtt::api", "daemon"]),
        ("model", &["daemon", "mqtt"]),
    ] {
        for (name, deps) in &g {
            if name != module && !name.starts_with(&format!("{module}::")) {
                continue;
            }
            for d in deps {
                assert!(
                    !banned
                        .iter()
                        .any(|b| d == b || d.starts_with(&format!("{b}::"))),
                    "{name} imports {d}"
                );
            }
        }
    }
}

#[test]
fn unsafe_code_is_only_in_the_ffi_units() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    assert!(lib.contains("#![deny(unsafe_code)]"));
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap();
    assert!(main.contains("#![forbid(unsafe_code)]"));
    // Exactly two modules are let off, and only the lines that declare them.
    let mut files = Vec::new();
    sources(&src, &mut files);
    let allowed: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines
                .windows(2)
                .filter(|w| w[0].contains("allow(unsafe_code)"))
                .map(|w| w[1].trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(allowed, ["pub mod gguf;", "pub mod llama;"], "{allowed:?}");
}

#[test]
fn the_core_decides_without_a_clock_a_socket_a_runtime_or_an_encoder() {
    // Everything outside arrives as an input (the time too) and leaves as an act.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/daemon/core");
    let mut files = Vec::new();
    sources(&dir, &mut files);
    let mut checked = 0;
    for f in files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "tests"))
    {
        let text = std::fs::read_to_string(f).unwrap();
        for banned in [
            "tokio",
            "Instant::now",
            "SystemTime::now",
            "std::net",
            "std::fs",
            "std::thread",
            "rumqttc",
            "sleep(",
            // Pictures are encoded by the executor, off the core's loop.
            "to_jpeg(",
            "annotated_jpeg(",
        ] {
            assert!(!text.contains(banned), "{} uses {banned}", f.display());
        }
        checked += 1;
    }
    assert!(checked >= 8, "{checked} files");
}

#[test]
fn the_cores_bottom_layer_knows_nothing_above_it() {
    // What goes in and out (protocol.rs) and the replies (replies.rs) are functions and
    // types of their inputs: neither reaches into the rest of the core or its state.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/daemon/core");
    for file in ["protocol.rs", "replies.rs"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for banned in [
            "use super::*",
            "impl Core",
            "super::scheduler",
            "super::offload",
        ] {
            assert!(!text.contains(banned), "{file} has {banned}");
        }
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("use super::"))
        {
            assert!(
                line.contains("super::protocol"),
                "{file} imports from the core above it: {line}"
            );
        }
    }
}
