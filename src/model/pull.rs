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
    #[error("quantizing {path} to {quant} failed: {reason}")]
    Quantize {
        path: PathBuf,
        quant: &'static str,
        reason: String,
    },
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

/// Downloads the text model and the vision projector named by `model`; with
/// `download.quantize`, the verified text model is quantized into `model.text` and the
/// download removed.
pub fn pull(model: &ModelConfig, progress: bool) -> Result<Vec<Pulled>, PullError> {
    let d = &model.download;
    if !d.weights_file.is_empty() {
        return pull_release(model, progress);
    }
    let text = match d.quantize {
        None => pull_one(model, &d.text_file, &d.text_sha256, &model.text, progress)?,
        Some(q) => pull_quantized(
            model,
            (&d.text_file, &d.text_sha256, &model.text),
            q.name(),
            progress,
            |from, to| super::synth::quantize(from, to, q.ftype()),
        )?,
    };
    let mmproj = if d.quantize_mmproj {
        widen_in_place(&model.mmproj, progress)?;
        pull_quantized(
            model,
            (&d.mmproj_file, &d.mmproj_sha256, &model.mmproj),
            "q8_0",
            progress,
            |from, to| super::projector::quantize_mmproj(from, to).map(|_| ()),
        )?
    } else {
        pull_one(
            model,
            &d.mmproj_file,
            &d.mmproj_sha256,
            &model.mmproj,
            progress,
        )?
    };
    Ok(vec![text, mmproj])
}

/// The release's own weights (`download.weights_file`), downloaded, verified and
/// converted (`model convert`) into `model.text` (quantized with `download.quantize`),
/// `model.mmproj` and `model.region`; the 3.85 GB download is removed afterwards. Files
/// already in place with their recorded hashes are kept.
fn pull_release(model: &ModelConfig, progress: bool) -> Result<Vec<Pulled>, PullError> {
    let d = &model.download;
    let io = |path: &Path, reason: String| PullError::Io {
        path: path.to_owned(),
        reason,
    };
    let region = model.region.as_deref().ok_or_else(|| {
        io(
            &model.text,
            "model.download.weights_file needs model.region, where the region heads go".into(),
        )
    })?;
    let targets = [model.text.as_path(), model.mmproj.as_path(), region];
    let present: Vec<Pulled> = targets
        .iter()
        .map(|t| verified_in_place(t, ""))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    // A projector converted before moonwatch kept the first layer's two halves (for
    // `model.crops = "reference"`) is converted again: the halves cannot be recovered from
    // the folded layer, so the release is downloaded once more.
    let stale = present.iter().any(|p| p.path == model.mmproj)
        && !super::convert::has_crop_halves(&model.mmproj);
    if stale {
        eprintln!(
            "{} predates reference crops (no projector halves): converting the release again",
            model.mmproj.display()
        );
    }
    if present.len() == targets.len() && !stale {
        return Ok(present);
    }
    let dir = model.text.parent().unwrap_or(Path::new("."));
    let weights = dir.join(&d.weights_file);
    pull_one(
        model,
        &d.weights_file,
        &d.weights_sha256,
        &weights,
        progress,
    )?;
    let work = dir.join(".convert");
    let _ = std::fs::remove_dir_all(&work);
    if progress {
        eprintln!("converting {}", weights.display());
    }
    let converted = super::synth::Vocab::builtin()
        .map_err(|e| io(&weights, e.to_string()))
        .and_then(|vocab| {
            super::convert::convert(&weights, &work, &vocab)
                .map_err(|e| io(&weights, e.to_string()))
        });
    let converted = match converted {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let mut text = converted.text.clone();
    if let Some(q) = d.quantize {
        let out = work.join(q.text_file_name());
        if progress {
            eprintln!("quantizing the text model to {}", q.name());
        }
        let qerr = |reason: String| PullError::Quantize {
            path: converted.text.clone(),
            quant: q.name(),
            reason,
        };
        crate::vision::moondream::backend().map_err(|e| qerr(e.to_string()))?;
        super::synth::quantize(&converted.text, &out, q.ftype())
            .map_err(|e| qerr(e.to_string()))?;
        text = out;
    }
    let mut done = Vec::new();
    for (from, to) in [
        (&text, targets[0]),
        (&converted.mmproj, targets[1]),
        (&converted.region, targets[2]),
    ] {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e.to_string()))?;
        }
        let got = sha256_file(from).map_err(|e| io(from, e.to_string()))?;
        done.push(install(from, to, got)?);
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_file(&weights);
    let _ = std::fs::remove_file(sidecar(&weights));
    Ok(done)
}

/// A file downloaded and verified as `(file, sha256)` beside `target`, then quantized by
/// `quantize(download, result)` into `target`, with the result's hash recorded beside it.
/// A result already in place with its recorded hash is kept.
fn pull_quantized(
    model: &ModelConfig,
    (file, want, target): (&str, &str, &Path),
    quant: &'static str,
    progress: bool,
    quantize: impl FnOnce(&Path, &Path) -> Result<(), super::synth::SynthError>,
) -> Result<Pulled, PullError> {
    if let Some(done) = verified_in_place(target, "")? {
        return Ok(done);
    }
    let source = target.with_file_name(file);
    if source == target {
        return Err(PullError::Io {
            path: target.to_owned(),
            reason: format!(
                "the {quant} result needs a name of its own, not the download's ({file})"
            ),
        });
    }
    pull_one(model, file, want, &source, progress)?;
    if progress {
        eprintln!("quantizing {} to {quant}", source.display());
    }
    let pulled = quantize_into(target, &source, quant, |part| quantize(&source, part))?;
    // The download is not needed any more; 2.8 GB matter on a board's SD card.
    let _ = std::fs::remove_file(&source);
    let _ = std::fs::remove_file(sidecar(&source));
    Ok(pulled)
}

/// Writes `target` from `source` with `write(part)` into a `.gguf.part` beside it, then
/// installs it with its hash recorded; a failed write leaves no part behind.
fn quantize_into(
    target: &Path,
    source: &Path,
    quant: &'static str,
    write: impl FnOnce(&Path) -> Result<(), super::synth::SynthError>,
) -> Result<Pulled, PullError> {
    let part = target.with_extension("gguf.part");
    let qerr = |reason: String| PullError::Quantize {
        path: source.to_owned(),
        quant,
        reason,
    };
    crate::vision::moondream::backend().map_err(|e| qerr(e.to_string()))?;
    write(&part).map_err(|e| {
        let _ = std::fs::remove_file(&part);
        qerr(e.to_string())
    })?;
    let got = sha256_file(&part).map_err(|e| PullError::Io {
        path: part.clone(),
        reason: e.to_string(),
    })?;
    install(&part, target, got)
}

/// Upgrades a projector quantized by an earlier moonwatch, whose feed-forward layers were
/// not widened yet, without downloading it again: the same values, with ffn_down in Q8_0
/// too. Leaves anything else alone, including a file that no longer matches the hash its
/// pull recorded (the pull then writes it afresh).
fn widen_in_place(target: &Path, progress: bool) -> Result<(), PullError> {
    if !target.is_file()
        || !super::projector::needs_widening(target)
        || verified_in_place(target, "")?.is_none()
    {
        return Ok(());
    }
    if progress {
        eprintln!(
            "{}: widening the feed-forward layers so ffn_down can be Q8_0 too (about 120 MB less memory)",
            target.display()
        );
    }
    quantize_into(target, target, "q8_0", |part| {
        super::projector::quantize_mmproj(target, part).map(|_| ())
    })
    .map(|_| ())
}

/// Moves a verified file (SHA-256 `sha256`) to `target` and records its hash beside it.
fn install(from: &Path, target: &Path, sha256: String) -> Result<Pulled, PullError> {
    let io = |e: std::io::Error| PullError::Io {
        path: target.to_owned(),
        reason: e.to_string(),
    };
    std::fs::rename(from, target).map_err(io)?;
    std::fs::write(sidecar(target), format!("{sha256}\n")).map_err(io)?;
    let size = std::fs::metadata(target).map_err(io)?.len();
    Ok(Pulled {
        path: target.to_owned(),
        sha256,
        size,
        downloaded: true,
    })
}

/// The file at `target` when it matches `want` (or, when `want` is empty, the hash an
/// earlier pull recorded beside it).
fn verified_in_place(target: &Path, want: &str) -> Result<Option<Pulled>, PullError> {
    let io = |e: std::io::Error| PullError::Io {
        path: target.to_owned(),
        reason: e.to_string(),
    };
    let recorded = std::fs::read_to_string(sidecar(target))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let expect = if want.is_empty() {
        recorded
    } else {
        want.to_owned()
    };
    if !target.is_file() || !is_sha256_hex(&expect) {
        return Ok(None);
    }
    let got = sha256_file(target).map_err(io)?;
    if got != expect {
        return Ok(None);
    }
    let size = std::fs::metadata(target).map_err(io)?.len();
    Ok(Some(Pulled {
        path: target.to_owned(),
        sha256: got,
        size,
        downloaded: false,
    }))
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
    if let Some(done) = verified_in_place(target, &want)? {
        return Ok(done);
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
    let pulled = install(&blob, target, got)?;
    let _ = std::fs::remove_dir_all(&cache);
    Ok(pulled)
}
