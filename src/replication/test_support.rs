//! What the replication tests share: temporary directories, and a simulated power cut.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "mqd-replication-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a power cut would keep of a database's WAL: the length of each WAL file after the last
/// fsync. Dropping a RocksDB does not lose unsynced writes (closing writes its WAL buffer out),
/// so a test simulates the cut: stop the node, close the database, `cut`.
#[derive(Clone)]
pub struct PowerCut {
    dir: PathBuf,
    synced: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>>,
}

impl PowerCut {
    pub fn new(dir: &Path) -> PowerCut {
        PowerCut {
            dir: dir.to_path_buf(),
            synced: Default::default(),
        }
    }

    fn wal_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect()
    }

    /// Records what is on disk now; called right after an fsync (before the next one).
    pub fn synced(&self) {
        let mut synced = self.synced.lock().unwrap();
        for path in self.wal_files() {
            if let Ok(meta) = std::fs::metadata(&path) {
                synced.insert(path, meta.len());
            }
        }
    }

    /// Truncates every WAL file to its length at the last fsync (0 if created since): the
    /// database must be closed. Returns how many bytes were thrown away.
    pub fn cut(&self) -> u64 {
        let synced = self.synced.lock().unwrap();
        let mut lost = 0;
        for path in self.wal_files() {
            let keep = synced.get(&path).copied().unwrap_or(0);
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let len = file.metadata().unwrap().len();
            if len > keep {
                lost += len - keep;
                file.set_len(keep).unwrap();
            }
        }
        lost
    }
}
