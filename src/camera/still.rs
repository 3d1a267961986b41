//! Still pictures as a camera: one image file, or a directory of them shown in turn.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CameraError, FrameSource};
use crate::frame::Frame;

/// Image files moonwatch decodes.
const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "webp", "JPG"];

#[derive(Debug)]
pub struct StillSource {
    path: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
}

impl StillSource {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            files: Vec::new(),
            next: 0,
        }
    }
}

impl FrameSource for StillSource {
    fn describe(&self) -> String {
        format!("image {}", self.path.display())
    }

    fn start(&mut self) -> Result<(), CameraError> {
        let unavailable =
            |e: std::io::Error| CameraError::Unavailable(format!("{}: {e}", self.path.display()));
        let meta = std::fs::metadata(&self.path).map_err(unavailable)?;
        self.files = if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
                .map_err(unavailable)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| EXTENSIONS.iter().any(|e| x.eq_ignore_ascii_case(e)))
                })
                .collect();
            files.sort();
            files
        } else {
            vec![self.path.clone()]
        };
        if self.files.is_empty() {
            return Err(CameraError::Unavailable(format!(
                "{} holds no images",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn next(&mut self, _timeout: Duration) -> Result<Option<Frame>, CameraError> {
        let Some(path) = self.files.get(self.next % self.files.len().max(1)) else {
            return Err(CameraError::Unavailable("not started".into()));
        };
        self.next = (self.next + 1) % self.files.len();
        match Frame::load(path) {
            Ok(f) => Ok(Some(f)),
            // A file that vanished ends the listing; one that does not decode is skipped.
            Err(crate::frame::FrameError::Read { path, source }) => {
                Err(CameraError::Unavailable(format!("{path}: {source}")))
            }
            Err(e) => Err(CameraError::BadFrame(e.to_string())),
        }
    }

    fn stop(&mut self) {
        self.files.clear();
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_shown_in_order_and_bad_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for (name, v) in [("b.png", 2u8), ("a.png", 1)] {
            image::RgbImage::from_pixel(4, 4, image::Rgb([v, v, v]))
                .save(dir.path().join(name))
                .unwrap();
        }
        std::fs::write(dir.path().join("c.jpg"), "not a jpeg").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let mut s = StillSource::new(dir.path());
        s.start().unwrap();
        let t = Duration::ZERO;
        assert_eq!(s.next(t).unwrap().unwrap().rgb[0], 1);
        assert_eq!(s.next(t).unwrap().unwrap().rgb[0], 2);
        assert!(matches!(s.next(t), Err(CameraError::BadFrame(_))));
        assert_eq!(s.next(t).unwrap().unwrap().rgb[0], 1);
    }

    #[test]
    fn missing_and_empty_paths_are_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            StillSource::new(&dir.path().join("nope")).start(),
            Err(CameraError::Unavailable(_))
        ));
        assert!(
            matches!(StillSource::new(dir.path()).start(), Err(CameraError::Unavailable(m)) if m.contains("no images"))
        );
    }
}
