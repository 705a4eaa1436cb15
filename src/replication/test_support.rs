//! What the replication tests share: temporary directories, a simulated power cut, and a
//! syncer of their own (`Syncer`: `mqd serve` fsyncs with the engine's, which these tests run
//! without).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rocksdb::DB;

use super::driver::{Synced, WalSync};

pub use crate::test_dir::TempDir;

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

/// A thread that writes and fsyncs the WAL whenever the raft thread asks, each fsync covering
/// every write made before it started, and reports each through `on_synced`.

#[derive(Default)]
struct State {
    /// Highest number asked for.
    requested: u64,
    /// Highest number covered by a finished fsync.
    synced: u64,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// Where the syncer is, for `Syncer::start`'s observer (tests stall or cut a node's disk there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncStage {
    Starting,
    Done,
}

pub struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread. `on_synced` runs on it after every fsync, `observe` just before and
    /// just after each.
    pub fn start(
        db: Arc<DB>,
        name: String,
        on_synced: impl Fn(Synced) + Send + 'static,
        observe: impl Fn(FsyncStage) + Send + 'static,
    ) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || run(&db, &shared, on_synced, observe))?
        };
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Finishes the fsync asked for, if any, and ends the thread.
    pub fn stop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl WalSync for Syncer {
    fn request(&self, number: u64) {
        let mut state = self.shared.state.lock();
        state.requested = state.requested.max(number);
        self.shared.wake.notify_one();
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(db: &DB, shared: &Shared, on_synced: impl Fn(Synced), observe: impl Fn(FsyncStage)) {
    loop {
        let target = {
            let mut state = shared.state.lock();
            while state.requested <= state.synced && !state.stop {
                shared.wake.wait(&mut state);
            }
            if state.requested <= state.synced {
                return;
            }
            state.requested
        };
        observe(FsyncStage::Starting);
        let started = Instant::now();
        if let Err(e) = db.flush_wal(true) {
            on_synced(Synced::Failed(format!("raft log fsync failed: {e}")));
            return;
        }
        observe(FsyncStage::Done);
        log::trace!("raft log fsync in {:?}", started.elapsed());
        shared.state.lock().synced = target;
        on_synced(Synced::UpTo(target));
    }
}
