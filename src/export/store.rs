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

/// Bound of one object store call (list, get, put, delete).
const OBJECT_STORE_CALL_TIMEOUT_S: u64 = 120;

/// An S3-compatible object store under a prefix (`s3://bucket/prefix`).
/// Credentials, region and endpoint come from the usual environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`, `AWS_ENDPOINT` for a store other than AWS, `AWS_ALLOW_HTTP=true`
/// for one without TLS). A PUT is all or nothing, which is what
/// [`Output::write`] needs; nothing is ever half visible.
pub struct ObjectStoreOutput {
    url: String,
    store: Box<dyn object_store::ObjectStore>,
    prefix: object_store::path::Path,
    rt: tokio::runtime::Runtime,
}

impl ObjectStoreOutput {
    fn location(&self, path: &str) -> object_store::path::Path {
        let mut full = self.prefix.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            full = full.child(part);
        }
        full
    }

    fn err(&self, path: &str, e: impl ToString) -> OutputError {
        OutputError::new(format!("{}/{path}", self.url.trim_end_matches('/')), e)
    }

    /// Runs one call on the output's own runtime, bounded.
    fn call<T>(
        &self,
        path: &str,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, OutputError> {
        let bound = std::time::Duration::from_secs(OBJECT_STORE_CALL_TIMEOUT_S);
        // The timer must be made inside the runtime.
        match self
            .rt
            .block_on(async { tokio::time::timeout(bound, f).await })
        {
            Ok(r) => r.map_err(|e| self.err(path, e)),
            Err(_) => Err(self.err(
                path,
                format!("no answer in {OBJECT_STORE_CALL_TIMEOUT_S} s"),
            )),
        }
    }
}

impl Output for ObjectStoreOutput {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn list(&self) -> Result<Vec<String>, OutputError> {
        use futures::TryStreamExt;
        let metas: Vec<object_store::ObjectMeta> =
            self.call("", self.store.list(Some(&self.prefix)).try_collect())?;
        let root = format!("{}/", self.prefix.as_ref());
        let mut out: Vec<String> = metas
            .into_iter()
            .map(|m| {
                let p = m.location.as_ref();
                p.strip_prefix(root.as_str()).unwrap_or(p).to_string()
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, OutputError> {
        let location = self.location(path);
        let got = self.call(path, async {
            match self.store.get(&location).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        Ok(got.map(|b| b.to_vec()))
    }

    fn write(&self, path: &str, bytes: &[u8]) -> Result<(), OutputError> {
        let location = self.location(path);
        let payload = object_store::PutPayload::from(bytes.to_vec());
        self.call(path, self.store.put(&location, payload))
            .map(|_| ())
    }

    fn delete(&self, path: &str) -> Result<(), OutputError> {
        let location = self.location(path);
        self.call(path, async {
            match self.store.delete(&location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

/// The output at an object store URL: `s3://bucket[/prefix]` (any
/// S3-compatible store; see [`ObjectStoreOutput`]).
pub fn open_url(url: &str) -> Result<Box<dyn Output>, OutputError> {
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(OutputError::new(
            url,
            "only s3:// URLs (S3 and S3-compatible stores) are supported; use --dir for a local directory",
        ));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(OutputError::new(url, "no bucket in the URL"));
    }
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| OutputError::new(url, e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OutputError::new(url, e))?;
    let prefix = object_store::path::Path::parse(prefix.trim_matches('/'))
        .map_err(|e| OutputError::new(url, e))?;
    Ok(Box::new(ObjectStoreOutput {
        url: url.to_string(),
        store: Box::new(store),
        prefix,
        rt,
    }))
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
