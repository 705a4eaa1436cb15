//! The fsync of a node's raft writes: one thread writes and fsyncs the WAL whenever the raft
//! thread asks, each fsync covering every write made before it started, so one fsync serves
//! every `Ready` written while the previous one ran (the engine's group commit, for the log).
//! The raft thread keeps ticking and stepping meanwhile; it learns of each fsync through
//! `on_synced` and only then sends what had to wait for the disk.
//!
//! Plan step 4 replaces this thread with the engine's syncer: one WAL, one fsync for the
//! queue writes and the raft log together.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rocksdb::DB;

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

/// What the syncer reports after each fsync.
pub enum Synced {
    /// Every write made before `request(n)` was called, for every `n` up to this, is on disk.
    UpTo(u64),
    /// The fsync failed: what reached the disk is unknown, and the syncer has stopped.
    Failed(String),
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

    /// Asks for an fsync covering every write made so far; it will be reported as (at least)
    /// `number`. Numbers must grow.
    pub fn request(&self, number: u64) {
        let mut state = self.shared.state.lock();
        state.requested = state.requested.max(number);
        self.shared.wake.notify_one();
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
