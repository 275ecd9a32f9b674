//! Where sealed chunks lie: a directory, `<dir>/<space id>/<chunk number>`.
//! Several instances share the content when they share the directory (a
//! shared file system mounted at the same path).
//!
//! Invariants: a chunk file is written whole (to a temporary name, synced,
//! renamed, the directory synced), so a crash leaves a chunk either absent
//! or complete; a space's directory is removed with everything in it; every
//! call blocks (the caller runs it off the async threads).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The content directory.
#[derive(Debug, Clone)]
pub(crate) struct Dir {
    root: PathBuf,
}

impl Dir {
    /// The directory at `root`, created (mode 0700) when absent.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(root)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Where the directory is.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn space(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Writes chunk `n` of space `id`, replacing one written before.
    pub(crate) fn put(&self, id: &str, n: u32, sealed: &[u8]) -> io::Result<()> {
        let dir = self.space(id);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{n}.{}.tmp", rand::random::<u64>()));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(sealed)?;
            f.sync_all()?;
            fs::rename(&tmp, dir.join(n.to_string()))?;
            fs::File::open(&dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Chunk `n` of space `id`, sealed; `None` when it was never written.
    pub(crate) fn get(&self, id: &str, n: u32) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.space(id).join(n.to_string())) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The numbers of the chunks written for space `id`, in order.
    pub(crate) fn chunks(&self, id: &str) -> io::Result<Vec<u32>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(self.space(id)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries {
            if let Some(n) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Removes space `id` and everything in it (nothing when it is absent).
    pub(crate) fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_dir_all(self.space(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => fs::File::open(&self.root)?.sync_all(),
        }
    }

    /// When a chunk of space `id` was last written (ms since the epoch),
    /// if any was.
    pub(crate) fn touched(&self, id: &str) -> io::Result<Option<i64>> {
        match fs::metadata(self.space(id)).and_then(|m| m.modified()) {
            Ok(t) => Ok(t
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as i64)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The spaces that have a directory (content written at some time).
    pub(crate) fn ids(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root)? {
            if let Some(s) = e?.file_name().to_str() {
                out.push(s.to_owned());
            }
        }
        Ok(out)
    }
}
