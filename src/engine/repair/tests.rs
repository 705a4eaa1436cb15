//! The repair on a store written directly (no server): a flipped bit in a table file's data
//! block, a dry run, the repair, and the store after it.

use std::path::Path;

use super::super::message::{self, Header};
use super::super::queue::Counters;
use super::super::store::{self, MemoryBudget, QueueMeta, StoreOptions, MESSAGES_CF, META_CF};
use super::{run, Outcome};
use crate::test_dir::TempDir;

const N: u64 = 2000;
const BODY: usize = 500;

/// A directory (holding the data directory and what the repair puts beside it), removed when
/// dropped.
fn body(seq: u64) -> Vec<u8> {
    let mut body = format!("m{seq:06} ").into_bytes();
    body.resize(BODY, b'x');
    body
}

/// Queue `q` (id 1) with messages 0..N, flushed to a table file; queue `r` (id 2) with one.
fn fill(dir: &Path) {
    fill_consumed(dir, 0);
}

/// `fill`, with `q`'s messages below `consumed` taken (its head past them) but their keys not
/// yet deleted, as the reclaimer leaves them for a while.
fn fill_consumed(dir: &Path, consumed: u64) {
    let recovered = store::open(dir, &StoreOptions::new(MemoryBudget::default())).unwrap();
    let db = recovered.db;
    let (messages, meta) = (
        db.cf_handle(MESSAGES_CF).unwrap(),
        db.cf_handle(META_CF).unwrap(),
    );
    let header = Header {
        flags: 7,
        expires_at: 0,
        enqueued_at: 1,
    };
    let mut value = Vec::new();
    for (id, name, count) in [(1, &b"q"[..], N), (2, &b"r"[..], 1)] {
        for seq in 0..count {
            message::encode_into(&mut value, &header, &body(seq));
            db.put_cf(messages, store::message_key(id, seq), &value)
                .unwrap();
        }
        let head = if id == 1 { consumed } else { 0 };
        let record = QueueMeta {
            id,
            next_unclaimed: head,
            tail: count,
            counters: Counters {
                bytes: (count - head) * BODY as u64,
                ..Counters::default()
            },
            pending: Vec::new(),
            deleted_below: 0,
            next_expiry: 0,
        };
        db.put_cf(meta, store::meta_key(name), record.encode())
            .unwrap();
    }
    store::flush_memtables(&db).unwrap();
}

/// Flips one bit in the middle of message `seq`'s body, in the table file holding it.
fn flip_a_bit(dir: &Path, seq: u64) {
    let marker = format!("m{seq:06} ").into_bytes();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sst") {
            let mut data = std::fs::read(&path).unwrap();
            if let Some(at) = data.windows(marker.len()).position(|w| w == marker) {
                data[at + BODY / 2] ^= 0x10;
                std::fs::write(&path, data).unwrap();
                return;
            }
        }
    }
    panic!("no table file holds message {seq}");
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_repair_drops_exactly_the_damaged_messages() {
    let scratch = TempDir::new("repair");
    let dir = scratch.path().join("data");
    fill(&dir);
    flip_a_bit(&dir, 1000);
    let before = names(&dir);

    let dry = run(&dir, true).unwrap();
    assert_eq!(dry.outcome, Outcome::WouldRepair);
    assert_eq!(names(&dir), before, "a dry run changes nothing");
    let [(queue, lost)] = &dry.lost[..] else {
        panic!("one queue lost messages: {:?}", dry.lost);
    };
    assert_eq!(queue, b"q");
    assert!(
        lost.contains(&1000) && lost.len() <= 9,
        "one 4 KB block: {lost:?}"
    );
    assert!(lost.windows(2).all(|w| w[1] == w[0] + 1), "a run: {lost:?}");
    assert_eq!(dry.intact + dry.lost_count(), N + 1);
    assert_eq!(dry.damaged_files.len(), 1);

    let fixed = run(&dir, false).unwrap();
    assert_eq!(fixed.lost, dry.lost);
    let Outcome::Repaired { damaged_kept_in } = fixed.outcome else {
        panic!("not repaired");
    };
    assert_eq!(
        names(&damaged_kept_in),
        before,
        "the damaged directory is kept whole"
    );

    let recovered = store::open(&dir, &StoreOptions::new(MemoryBudget::default())).unwrap();
    let db = recovered.db;
    let messages = db.cf_handle(MESSAGES_CF).unwrap();
    for seq in 0..N {
        let value = db.get_cf(messages, store::message_key(1, seq)).unwrap();
        match value {
            Some(value) => {
                assert!(!lost.contains(&seq), "{seq} was reported lost");
                let (header, read) = message::decode(&value).unwrap();
                assert_eq!((header.flags, read), (7, &body(seq)[..]));
            }
            None => assert!(lost.contains(&seq), "intact message {seq} is missing"),
        }
    }
    assert!(db
        .get_cf(messages, store::message_key(2, 0))
        .unwrap()
        .is_some());
    // A compaction of everything reads every block: it trips over nothing now.
    db.compact_range_cf(messages, None::<&[u8]>, None::<&[u8]>);
    assert_eq!(background_errors(&db), 0);
    db.put_cf(messages, store::message_key(1, N), b"x").unwrap();
    let record = store::read_record(&db, b"q").unwrap().unwrap();
    assert_eq!(record.tail, N);
    assert_eq!(
        record.next_unclaimed, 0,
        "the lost messages are not at the head"
    );
    assert_eq!(
        record.counters.bytes,
        (N - lost.len() as u64) * BODY as u64,
        "the record counts the bytes kept"
    );
    drop(db);
    let again = run(&dir, true).unwrap();
    assert_eq!(again.outcome, Outcome::Clean);
}

fn background_errors(db: &store::Db) -> u64 {
    db.property_int_value("rocksdb.background-errors")
        .unwrap()
        .unwrap()
}

#[test]
fn a_compaction_over_a_damaged_block_stops_the_writes() {
    // Why the repair rewrites the directory rather than leave the damaged file in place.
    let scratch = TempDir::new("repair");
    let dir = scratch.path().join("data");
    fill(&dir);
    flip_a_bit(&dir, 1000);
    let recovered = store::open(&dir, &StoreOptions::new(MemoryBudget::default())).unwrap();
    let db = recovered.db;
    let messages = db.cf_handle(MESSAGES_CF).unwrap();
    db.compact_range_cf(messages, None::<&[u8]>, None::<&[u8]>);
    assert!(background_errors(&db) > 0);
    assert!(db.put_cf(messages, store::message_key(1, N), b"x").is_err());
}

#[test]
fn an_undamaged_directory_is_left_as_it_is() {
    let scratch = TempDir::new("repair");
    let dir = scratch.path().join("data");
    fill(&dir);
    let before = names(&dir);
    let report = run(&dir, false).unwrap();
    assert_eq!(report.outcome, Outcome::Clean);
    assert!(report.lost.is_empty() && !report.damage_elsewhere);
    assert_eq!(report.intact, N + 1);
    assert_eq!(names(&dir), before);
    assert_eq!(names(scratch.path()), ["data"], "nothing made beside it");
}

#[test]
fn a_directory_that_is_not_a_data_directory_is_refused() {
    let scratch = TempDir::new("repair");
    let error = run(&scratch.path().join("missing"), true).err().unwrap();
    assert!(error.contains("no mqd data directory"), "{error}");
    std::fs::write(scratch.path().join("file"), b"x").unwrap();
    let error = run(scratch.path(), false).err().unwrap();
    assert!(error.contains("no mqd data directory"), "{error}");
}

#[test]
fn damage_among_consumed_messages_loses_nothing_and_is_repaired() {
    let scratch = TempDir::new("repair");
    let dir = scratch.path().join("data");
    fill_consumed(&dir, 1500);
    flip_a_bit(&dir, 1000);
    let dry = run(&dir, true).unwrap();
    assert!(dry.lost.is_empty(), "{:?}", dry.lost);
    assert!(dry.damage_elsewhere, "the scan of every block finds it");
    assert_eq!(dry.outcome, Outcome::WouldRepair);
    assert_eq!(dry.intact, N - 1500 + 1);

    let fixed = run(&dir, false).unwrap();
    assert!(matches!(fixed.outcome, Outcome::Repaired { .. }));
    let recovered = store::open(&dir, &StoreOptions::new(MemoryBudget::default())).unwrap();
    let db = recovered.db;
    let messages = db.cf_handle(MESSAGES_CF).unwrap();
    for seq in 0..N {
        let value = db.get_cf(messages, store::message_key(1, seq)).unwrap();
        assert_eq!(value.is_some(), seq >= 1500, "message {seq}");
    }
    drop(db);
    assert_eq!(run(&dir, true).unwrap().outcome, Outcome::Clean);
}

#[test]
fn a_record_this_version_cannot_read_is_refused_not_dropped() {
    let scratch = TempDir::new("repair");
    let dir = scratch.path().join("data");
    fill(&dir);
    {
        let recovered = store::open(&dir, &StoreOptions::new(MemoryBudget::default())).unwrap();
        let meta = recovered.db.cf_handle(META_CF).unwrap();
        recovered
            .db
            .put_cf(meta, store::meta_key(b"newer"), b"\x09from a later version")
            .unwrap();
    }
    let error = run(&dir, false).err().unwrap();
    assert!(error.contains("not one this mqd reads"), "{error}");
    assert_eq!(names(scratch.path()), ["data"], "nothing changed");
}

#[test]
fn lost_messages_at_the_head_are_no_longer_counted() {
    let scratch = TempDir::new("repair");
    let dir = scratch.path().join("data");
    fill_consumed(&dir, 1000);
    flip_a_bit(&dir, 1000);
    let fixed = run(&dir, false).unwrap();
    let [(_, lost)] = &fixed.lost[..] else {
        panic!("one queue lost messages: {:?}", fixed.lost);
    };
    assert_eq!(lost[0], 1000, "the head's block");
    let recovered = store::open(&dir, &StoreOptions::new(MemoryBudget::default())).unwrap();
    let record = store::read_record(&recovered.db, b"q").unwrap().unwrap();
    assert_eq!(record.next_unclaimed, 1000 + lost.len() as u64);
    assert_eq!(record.items(), N - 1000 - lost.len() as u64);
}
