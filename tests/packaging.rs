//! Packaging checks: the systemd unit and its drop-ins, and the Yocto layer's crate list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The unit as installed, pointing at the binary under test, with the given drop-ins.
fn staged_unit(dropins: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(root().join("systemd/moonwatch.service"))
        .unwrap()
        .replace("/usr/bin/moonwatch", env!("CARGO_BIN_EXE_moonwatch"));
    std::fs::write(dir.path().join("moonwatch.service"), unit).unwrap();
    let d = dir.path().join("moonwatch.service.d");
    std::fs::create_dir(&d).unwrap();
    for drop in dropins {
        let src = root().join("systemd").join(drop);
        std::fs::copy(&src, d.join(src.file_name().unwrap())).unwrap();
    }
    dir
}

fn analyze(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(dir.join("moonwatch.service"))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .output()
        .expect("systemd-analyze (package systemd; scripts/setup.sh installs it)")
}

#[test]
fn the_unit_and_each_drop_in_verify_without_a_word_and_score_at_most_2() {
    for dropins in [
        &[][..],
        &["jetson/moonwatch-jetson.conf"],
        &["raspberry-pi-camera/moonwatch-libcamera.conf"],
    ] {
        let dir = staged_unit(dropins);
        let out = analyze(dir.path(), &["verify"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{dropins:?}: systemd-analyze verify said:\n{said}"
        );

        let out = analyze(dir.path(), &["security", "--offline=yes"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| {
                l.split("Overall exposure level for moonwatch.service: ")
                    .nth(1)
            })
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
        println!("exposure score with {dropins:?}: {score}");
        assert!(score <= 2.0, "{dropins:?}: exposure {score} > 2.0");
    }
}

#[test]
fn the_unit_has_what_a_daemon_under_systemd_needs() {
    let unit = std::fs::read_to_string(root().join("systemd/moonwatch.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "SupplementaryGroups=video",
        "StateDirectory=moonwatch",
        "CacheDirectory=moonwatch",
        "ProtectSystem=strict",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux rw",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(line), "moonwatch.service lacks {line}");
    }
}
