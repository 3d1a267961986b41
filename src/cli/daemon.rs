//! `run`, `check-config`, `cameras` and `schema`: the daemon and what sets it up.

use std::path::{Path, PathBuf};

use moonwatch::camera;
use moonwatch::config::{self, Config};

use super::{exit, Failure};

pub(crate) fn cameras() -> Result<(), Failure> {
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

pub(crate) fn run_daemon(config: Option<PathBuf>) -> Result<(), Failure> {
    let path = config
        .or_else(|| std::env::var_os("MOONWATCH_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let cfg = Config::load(&path)?;
    moonwatch::daemon::run(cfg, path).map_err(|e| match e {
        moonwatch::daemon::DaemonError::Engine(e) => Failure::from(e),
        other => Failure::new(exit::SOFTWARE, other),
    })
}

pub(crate) fn check_config(file: &Path, files: bool) -> Result<(), Failure> {
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

/// `moonwatch schema`: the wire format's JSON Schemas.
pub(crate) fn schema(name: Option<&str>, out: Option<&Path>) -> Result<(), Failure> {
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

#[cfg(test)]
mod tests {
    use super::super::{exit, status_of};

    #[test]
    fn the_daemons_commands_say_what_is_wrong_by_status() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[mqtt]\nport = \"x\"\n").unwrap();
        let bad = bad.to_str().unwrap();
        assert_eq!(status_of(&["check-config", bad]), exit::CONFIG);
        assert_eq!(status_of(&["run", "--config", bad]), exit::CONFIG);
        let missing = dir.path().join("none.toml");
        assert_eq!(
            status_of(&["check-config", missing.to_str().unwrap()]),
            exit::CONFIG
        );
        // Valid, but naming model files that are not there: 69; without the file check, 0.
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "[model]\ntext = \"/nonexistent/t.gguf\"\n").unwrap();
        let ok = ok.to_str().unwrap();
        assert_eq!(status_of(&["check-config", ok]), exit::UNAVAILABLE);
        assert_eq!(status_of(&["check-config", "--no-files", ok]), 0);
        assert_eq!(status_of(&["schema", "nonsense"]), exit::USAGE);
        assert_eq!(status_of(&["schema", "request.query"]), 0);
        assert_eq!(status_of(&["frobnicate"]), exit::USAGE);
    }
}
