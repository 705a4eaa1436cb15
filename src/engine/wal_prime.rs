//! Priming the WAL before serving, under `--sync always`. There every acknowledged write waits
//! for an fdatasync of RocksDB's WAL, and an fdatasync that must also make a grown file size and
//! newly allocated blocks durable costs a file-system journal commit on top of the data. RocksDB
//! reuses retired WAL files, overwriting their blocks in place (`recycle_log_file_num`, see
//! `store`), but only files this process retired: each start began on a new, empty WAL, and the
//! first switch made another new one, so the first two memtables' worth of writes (a million
//! small messages) paid the journal. Measured here, 50 clients sending unpipelined sets got
//! 68K/s on a growing WAL and 90K/s on a reused one. PostgreSQL zero-fills its WAL segments
//! before use for the same reason.
//!
//! So the engine writes two WAL files' worth of filler and retires each with a memtable flush:
//! the WAL it then serves on, and the next one, are reused full-size files. The filler is log
//! data (`WriteBatch::put_log_data`): written to the WAL only, never to a memtable, and skipped
//! by recovery. It costs about 0.3 s and two WAL files of writes per start, and is done only
//! while RocksDB recycles WAL files at all (the disk has room to spare, see
//! `reclaim::recycle_wal`).

use std::time::Instant;

use rocksdb::WriteBatch;

use super::store::{self, Db, MemoryBudget, META_CF, WAL_PRIMED_KEY};

/// Filler bytes per WAL record.
const CHUNK: usize = 1 << 20;

/// Leaves the database writing to a recycled WAL file holding a memtable's worth, with another
/// one ready for the next switch.
pub(super) fn prime(db: &Db, budget: MemoryBudget) -> Result<(), rocksdb::Error> {
    let started = Instant::now();
    let file_bytes = wal_file_bytes(budget);
    let filler = vec![0u8; CHUNK];
    let meta = db
        .cf_handle(META_CF)
        .expect("meta column family is always opened");
    // The first flush retires the WAL the database opened on and switches to a new one; the
    // second retires that one and switches to the first, recycled.
    for _ in 0..2 {
        for _ in 0..file_bytes.div_ceil(CHUNK) {
            let mut batch = WriteBatch::default();
            batch.put_log_data(&filler);
            db.write(batch)?;
        }
        // On disk, so that a reuse overwrites allocated blocks.
        db.flush_wal(true)?;
        // A flush of empty memtables switches no WAL.
        db.put_cf(meta, WAL_PRIMED_KEY, [])?;
        store::flush_memtables(db)?;
    }
    log::info!(
        "primed two WAL files of {} MiB in {} ms",
        file_bytes >> 20,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// How much a WAL file holds when a memtable flush retires it: about a memtable of `messages`,
/// unless the memory budget makes RocksDB flush sooner.
fn wal_file_bytes(budget: MemoryBudget) -> usize {
    store::MESSAGES_WRITE_BUFFER.min(budget.write_buffers / 2)
}
