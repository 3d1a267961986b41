//! `moonwatch model pull`: download the Moondream2 GGUF pair from Hugging Face.
//!
//! Files come through `hf-hub` (which honours `HF_ENDPOINT`, so tests serve them from
//! loopback) into a cache beside the target directory, are checked against their SHA-256
//! (the configured one, else the hub's LFS hash), and are then moved to the paths the
//! configuration names. A file already there with the right hash is not fetched again.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};
use sha2::{Digest, Sha256};

use crate::config::{is_sha256_hex, ModelConfig};

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot download {file} from {repo}@{revision}: {reason}")]
    Download {
        repo: String,
        revision: String,
        file: String,
        reason: String,
    },
    #[error("{path}: SHA-256 is {got}, expected {want}; the file was removed")]
    Checksum {
        path: PathBuf,
        got: String,
        want: String,
    },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// False when the file was already in place with the expected hash.
    pub downloaded: bool,
}

/// Where the verified hash of a pulled file is recorded.
fn sidecar(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_owned();
    name.push(".sha256");
    target.with_file_name(name)
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Downloads the text model and the vision projector named by `model`.
pub fn pull(model: &ModelConfig, progress: bool) -> Result<Vec<Pulled>, PullError> {
    let d = &model.download;
    let files = [
        (&d.text_file, &d.text_sha256, &model.text),
        (&d.mmproj_file, &d.mmproj_sha256, &model.mmproj),
    ];
    files
        .into_iter()
        .map(|(file, want, target)| pull_one(model, file, want, target, progress))
        .collect()
}

fn pull_one(
    model: &ModelConfig,
    file: &str,
    want: &str,
    target: &Path,
    progress: bool,
) -> Result<Pulled, PullError> {
    let d = &model.download;
    let io = |path: &Path, e: std::io::Error| PullError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let dl = |reason: String| PullError::Download {
        repo: d.repo.clone(),
        revision: d.revision.clone(),
        file: file.to_owned(),
        reason,
    };
    let want = want.to_ascii_lowercase();
    // A hash recorded by an earlier pull lets a rerun skip files already in place.
    let recorded = std::fs::read_to_string(sidecar(target))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let expect = if want.is_empty() {
        recorded
    } else {
        want.clone()
    };
    if target.is_file() && is_sha256_hex(&expect) {
        let got = sha256_file(target).map_err(|e| io(target, e))?;
        if got == expect {
            let size = std::fs::metadata(target).map_err(|e| io(target, e))?.len();
            return Ok(Pulled {
                path: target.to_owned(),
                sha256: got,
                size,
                downloaded: false,
            });
        }
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let cache = dir.join(".download-cache");
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache.clone())
        .with_progress(false)
        .build()
        .map_err(|e| dl(e.to_string()))?;
    let repo = api.repo(Repo::with_revision(
        d.repo.clone(),
        RepoType::Model,
        d.revision.clone(),
    ));
    let bar = if progress {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let fetched = repo
        .download_with_progress(file, bar)
        .map_err(|e| dl(e.to_string()))?;
    // The cache names each blob after the hub's ETag, which for LFS files is the SHA-256.
    let blob = std::fs::canonicalize(&fetched).map_err(|e| io(&fetched, e))?;
    let etag = blob
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let want = if !want.is_empty() {
        want
    } else if is_sha256_hex(&etag) {
        etag
    } else {
        String::new()
    };
    let got = sha256_file(&blob).map_err(|e| io(&blob, e))?;
    if want.is_empty() {
        tracing::warn!(
            file,
            "the hub gave no SHA-256 for this file and none is configured; it is not verified"
        );
    } else if got != want {
        let _ = std::fs::remove_dir_all(&cache);
        return Err(PullError::Checksum {
            path: target.to_owned(),
            got,
            want,
        });
    }
    std::fs::rename(&blob, target).map_err(|e| io(target, e))?;
    std::fs::write(sidecar(target), format!("{got}\n")).map_err(|e| io(target, e))?;
    let size = std::fs::metadata(target).map_err(|e| io(target, e))?.len();
    let _ = std::fs::remove_dir_all(&cache);
    Ok(Pulled {
        path: target.to_owned(),
        sha256: got,
        size,
        downloaded: true,
    })
}
