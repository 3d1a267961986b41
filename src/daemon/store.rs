//! `{state_dir}/triggers.json` (`triggers-{camera}.json` for each `[[camera]]`): the
//! triggers added, removed, switched off and tuned over MQTT.
//!
//! Saved as write to a temporary file, fsync, rename, fsync the directory, so a crash or a
//! power cut leaves the old file or the new one, never a mix. A file that does not parse is
//! renamed aside (`triggers.json.corrupt-{unix time}`) and reported, never overwritten.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::triggers::{TriggerConfig, Tuning};

/// Triggers added or removed over MQTT.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeTriggers {
    pub added: Vec<TriggerConfig>,
    pub removed: Vec<String>,
    /// Triggers switched off (their Home Assistant switch), configured or added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled: Vec<String>,
    /// Settings changed while running (Home Assistant's number entities), by trigger.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tuned: BTreeMap<String, Tuning>,
}

/// The single camera's file; `[[camera]]` sections have `triggers-{name}.json`.
pub const DEFAULT_FILE: &str = "triggers.json";

/// What loading found.
#[derive(Debug)]
pub struct Loaded {
    pub triggers: RuntimeTriggers,
    /// A problem to report (a corrupt file kept aside, an unreadable file).
    pub problem: Option<String>,
}

/// Reads the runtime triggers from `{state_dir}/{file}`; a missing file is an empty set.
pub fn load(state_dir: &Path, file: &str) -> Loaded {
    let path = state_dir.join(file);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Loaded {
                triggers: RuntimeTriggers::default(),
                problem: None,
            }
        }
        Err(e) => {
            return Loaded {
                triggers: RuntimeTriggers::default(),
                problem: Some(format!("cannot read {}: {e}", path.display())),
            }
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(triggers) => Loaded {
            triggers,
            problem: None,
        },
        Err(e) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = state_dir.join(format!("{file}.corrupt-{stamp}"));
            let kept = std::fs::rename(&path, &aside);
            let problem = match kept {
                Ok(()) => format!(
                    "{} is corrupt ({e}); kept it as {} and started without runtime triggers",
                    path.display(),
                    aside.display()
                ),
                Err(re) => format!(
                    "{} is corrupt ({e}) and cannot be moved aside ({re}); runtime triggers \
                     are not saved until it is fixed",
                    path.display()
                ),
            };
            Loaded {
                triggers: RuntimeTriggers::default(),
                problem: Some(problem),
            }
        }
    }
}

/// Writes the runtime triggers to `{state_dir}/{file}` durably.
pub fn save(state_dir: &Path, file: &str, triggers: &RuntimeTriggers) -> std::io::Result<()> {
    let path = state_dir.join(file);
    // A corrupt file that could not be moved aside is never overwritten.
    if let Ok(b) = std::fs::read(&path) {
        if serde_json::from_slice::<RuntimeTriggers>(&b).is_err() {
            return Err(std::io::Error::other(format!(
                "{} is corrupt; move it away to save triggers again",
                path.display()
            )));
        }
    }
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!("{file}.tmp"));
    let body = serde_json::to_vec_pretty(triggers).map_err(std::io::Error::other)?;
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        // A full disk leaves a partial temporary file: it is not left to fill the disk
        // further or to confuse a reader.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(state_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_round_trip_and_a_corrupt_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), DEFAULT_FILE).problem.is_none());
        let rt = RuntimeTriggers {
            added: vec![],
            removed: vec!["a".into()],
            disabled: vec!["b".into()],
            tuned: [(
                "b".to_owned(),
                Tuning {
                    threshold: Some(0.8),
                    interval: None,
                    cooldown: Some(30),
                },
            )]
            .into_iter()
            .collect(),
        };
        save(dir.path(), DEFAULT_FILE, &rt).unwrap();
        assert_eq!(load(dir.path(), DEFAULT_FILE).triggers, rt);
        // A file of a version without tuning still reads.
        std::fs::write(
            dir.path().join(DEFAULT_FILE),
            br#"{"added":[],"removed":[],"disabled":["b"]}"#,
        )
        .unwrap();
        assert!(load(dir.path(), DEFAULT_FILE).triggers.tuned.is_empty());
        save(dir.path(), DEFAULT_FILE, &rt).unwrap();
        // Truncated, as by a crash of an older version that wrote in place.
        let full = std::fs::read(dir.path().join(DEFAULT_FILE)).unwrap();
        std::fs::write(dir.path().join(DEFAULT_FILE), &full[..full.len() / 2]).unwrap();
        let loaded = load(dir.path(), DEFAULT_FILE);
        assert_eq!(loaded.triggers, RuntimeTriggers::default());
        let problem = loaded.problem.unwrap();
        assert!(problem.contains("corrupt"), "{problem}");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("triggers.json.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            std::fs::read(aside[0].path()).unwrap(),
            &full[..full.len() / 2]
        );
        // A new save goes to a fresh file.
        save(dir.path(), DEFAULT_FILE, &rt).unwrap();
        assert_eq!(load(dir.path(), DEFAULT_FILE).triggers, rt);
    }

    #[test]
    fn a_failed_save_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename cannot replace a directory that holds a file: the save fails after
        // the temporary file was written, as it does when a disk fills mid-way.
        let blocker = dir.path().join(DEFAULT_FILE);
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), b"x").unwrap();
        assert!(save(dir.path(), DEFAULT_FILE, &RuntimeTriggers::default()).is_err());
        assert!(!dir.path().join(format!("{DEFAULT_FILE}.tmp")).exists());
    }
}
