//! A RocksDB database holding only the replication's two column families (`keys::RAFT_LOG_CF`,
//! and `keys::STATE_CF` for the applied index and membership), for the tests that run nodes
//! without a queue engine. `mqd serve --cluster` keeps its raft state in the engine's
//! database. As there under `--sync always`, writes wait in RocksDB's WAL buffer
//! (`manual_wal_flush`) until an fsync writes them all at once.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

use super::keys::{RAFT_LOG_CF, STATE_CF};

/// Opens (or creates) the replication database at `path`.
pub fn open(path: &Path) -> Result<Arc<DB>, String> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_manual_wal_flush(true);
    options.set_keep_log_file_num(4);
    // The log is small and written in order: one memtable's worth of WAL at a time.
    options.set_max_total_wal_size(64 << 20);
    options.set_atomic_flush(true);
    let descriptors =
        [RAFT_LOG_CF, STATE_CF].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    DB::open_cf_descriptors(&options, path, descriptors)
        .map(Arc::new)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}
