//! Where the export's files go: a small trait over "a folder of files",
//! with a local directory and an S3-compatible object store behind it.
//!
//! What the exactly-once rule needs of an output: a written file appears
//! whole or not at all ([`Output::write`]), can be listed, read and
//! deleted. Locally that is write to a temporary name, fsync, rename,
//! fsync the folder; an object store's PUT is already all or nothing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::layout;

#[derive(Debug, thiserror::Error)]
#[error("export output {location}: {message}")]
pub struct OutputError {
    pub location: String,
    pub message: String,
}

impl OutputError {
    pub fn new(location: impl Into<String>, message: impl ToString) -> Self {
        OutputError {
            location: location.into(),
            message: message.to_string(),
        }
    }
}

/// A folder of files, paths relative to it and `/`-separated.
pub trait Output {
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// Every file below the root (temporary ones included).
    fn list(&self) -> Result<Vec<String>, OutputError>;
    /// A file's bytes, None when it does not exist.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, OutputError>;
    /// Writes a file atomically: afterwards it holds `bytes`; after a crash
    /// it holds its previous content (or does not exist), never a part.
    fn write(&self, path: &str, bytes: &[u8]) -> Result<(), OutputError>;
    /// Deletes a file; a missing file is not an error.
    fn delete(&self, path: &str) -> Result<(), OutputError>;
}

/// A local directory.
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// Creates the directory if needed.
    pub fn open(root: &Path) -> Result<LocalDir, OutputError> {
        fs::create_dir_all(root).map_err(|e| OutputError::new(root.display().to_string(), e))?;
        Ok(LocalDir {
            root: root.to_path_buf(),
        })
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn err(&self, path: &str, e: impl ToString) -> OutputError {
        OutputError::new(self.full(path).display().to_string(), e)
    }

    fn walk(&self, dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), OutputError> {
        let entries = fs::read_dir(dir).map_err(|e| self.err(prefix, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.err(prefix, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type().map_err(|e| self.err(&rel, e))?;
            if kind.is_dir() {
                self.walk(&entry.path(), &rel, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
}

/// fsync of a directory, so a rename or delete in it survives a power loss.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Output for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self) -> Result<Vec<String>, OutputError> {
        let mut out = Vec::new();
        self.walk(&self.root, "", &mut out)?;
        out.sort();
        Ok(out)
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, OutputError> {
        match fs::read(self.full(path)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(path, e)),
        }
    }

    fn write(&self, path: &str, bytes: &[u8]) -> Result<(), OutputError> {
        let target = self.full(path);
        let temp = self.full(&layout::temp_path(path));
        let folder = target.parent().unwrap_or(&self.root).to_path_buf();
        let written = (|| -> std::io::Result<()> {
            fs::create_dir_all(&folder)?;
            let mut f = fs::File::create(&temp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&temp, &target)?;
            sync_dir(&folder)
        })();
        written.map_err(|e| self.err(path, e))
    }

    fn delete(&self, path: &str) -> Result<(), OutputError> {
        let target = self.full(path);
        match fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(path, e)),
        }
        sync_dir(target.parent().unwrap_or(&self.root)).map_err(|e| self.err(path, e))
    }
}

/// The output at an object store URL (`s3://bucket/prefix`).
pub fn open_url(url: &str) -> Result<Box<dyn Output>, OutputError> {
    Err(OutputError::new(
        url,
        "object store outputs are not built in yet",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dir_writes_whole_files_and_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalDir::open(&dir.path().join("x")).unwrap();
        out.write("event_date=2026-01-01/a.parquet", b"abc")
            .unwrap();
        out.write("_progress/partition-0.json", b"{}").unwrap();
        out.write("_progress/partition-0.json", b"{\"a\":1}")
            .unwrap();
        assert_eq!(
            out.list().unwrap(),
            vec![
                "_progress/partition-0.json".to_string(),
                "event_date=2026-01-01/a.parquet".to_string()
            ]
        );
        assert_eq!(
            out.read("_progress/partition-0.json").unwrap().unwrap(),
            b"{\"a\":1}"
        );
        assert_eq!(out.read("nope").unwrap(), None);
        out.delete("event_date=2026-01-01/a.parquet").unwrap();
        out.delete("event_date=2026-01-01/a.parquet").unwrap();
        assert_eq!(out.list().unwrap().len(), 1);
    }
}
