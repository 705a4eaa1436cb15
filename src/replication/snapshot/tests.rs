//! Making a snapshot file on one node's RocksDB and installing it on another's, through
//! `RaftStorage`, and an install cut short by a crash, redone at the next start.

use std::sync::Arc;

use raft::prelude::{Entry, HardState};
use raft::Storage;
use rocksdb::{WriteBatch, DB};

use super::super::db;
use super::super::keys::{encode_position, INSTALLING_KEY, RAFT_LOG_CF, STATE_CF};
use super::super::storage::RaftStorage;
use super::super::test_support::TempDir;
use super::*;

/// A node 1 of {1, 2} that applied entries 2..=`last` of term 2, each putting `V<i>` in
/// `meta`; its log compacted up to `last`.
fn leader(dir: &TempDir, last: u64) -> (Arc<DB>, RaftStorage) {
    let db = db::open(dir.path()).unwrap();
    let mut s = RaftStorage::open(db.clone(), 1, &[1, 2]).unwrap();
    let entries: Vec<Entry> = (2..=last)
        .map(|index| Entry {
            index,
            term: 2,
            ..Default::default()
        })
        .collect();
    let hs = HardState {
        term: 2,
        commit: last,
        ..Default::default()
    };
    s.persist(&entries, Some(&hs)).unwrap();
    let mut batch = WriteBatch::default();
    let meta = db.cf_handle(STATE_CF).unwrap();
    for i in 2..=last {
        batch.put_cf(meta, format!("V{i:05}"), vec![b'x'; 100]);
    }
    s.apply(batch, last, 2, None).unwrap();
    s.compact(last).unwrap();
    (db, s)
}

fn values(db: &DB) -> Vec<String> {
    db.iterator_cf(
        db.cf_handle(STATE_CF).unwrap(),
        rocksdb::IteratorMode::Start,
    )
    .map(|item| String::from_utf8_lossy(&item.unwrap().0).into_owned())
    .filter(|key| key.starts_with('V') || key.starts_with('Z'))
    .collect()
}

/// A node 2 with a state of its own (`Z`, which the snapshot must remove).
fn follower(dir: &TempDir) -> (Arc<DB>, RaftStorage) {
    let db = db::open(dir.path()).unwrap();
    let s = RaftStorage::open(db.clone(), 2, &[1, 2]).unwrap();
    db.put_cf(db.cf_handle(STATE_CF).unwrap(), "Zstale", "x")
        .unwrap();
    (db, s)
}

fn received(from: &DB, to: &DB, generated: &Generated) {
    std::fs::create_dir_all(dir(to)).unwrap();
    std::fs::copy(
        generated_path(&dir(from), generated.index, generated.term),
        received_path(&dir(to), generated.index, generated.term),
    )
    .unwrap();
}

fn check_installed(db: &DB, s: &RaftStorage, leader_values: &[String]) {
    assert_eq!(values(db), leader_values);
    assert_eq!(s.applied(), (300, 2));
    assert_eq!(s.bounds(), (301, 300));
    assert_eq!(s.term(300).unwrap(), 2);
    assert_eq!(s.hard_state().commit, 300);
    let mut voters = s.conf_state().voters.clone();
    voters.sort_unstable();
    assert_eq!(voters, [1, 2]);
    assert!(db
        .get_cf(db.cf_handle(RAFT_LOG_CF).unwrap(), INSTALLING_KEY)
        .unwrap()
        .is_none());
    assert!(
        !received_path(&dir(db), 300, 2).exists(),
        "file left behind"
    );
}

#[test]
fn a_snapshot_made_on_one_node_replaces_the_state_and_log_of_another() {
    let (a, b) = (TempDir::new("snap-a"), TempDir::new("snap-b"));
    let (leader_db, _leader) = leader(&a, 300);
    let generated = generate::generate(&leader_db, &dir(&leader_db)).unwrap();
    assert_eq!((generated.index, generated.term), (300, 2));
    // Applied later: not in the file, which is the state at 300.
    leader_db
        .put_cf(leader_db.cf_handle(STATE_CF).unwrap(), "V99999", "later")
        .unwrap();
    let (db, mut s) = follower(&b);
    received(&leader_db, &db, &generated);
    let snapshot = generated.to_snapshot();
    s.install_snapshot(&snapshot).unwrap();
    let expected: Vec<String> = (2..=300).map(|i| format!("V{i:05}")).collect();
    check_installed(&db, &s, &expected);
    drop(s);
    let s = RaftStorage::open(db.clone(), 2, &[1, 2]).unwrap();
    check_installed(&db, &s, &expected);
}

#[test]
fn an_install_cut_short_by_a_crash_is_done_again_at_the_next_start() {
    let (a, b) = (TempDir::new("snap-a"), TempDir::new("snap-b"));
    let (leader_db, _leader) = leader(&a, 300);
    let generated = generate::generate(&leader_db, &dir(&leader_db)).unwrap();
    let (db, s) = follower(&b);
    received(&leader_db, &db, &generated);
    // The marker is durable, the state half replaced (some keys, the stale one still there),
    // the raft state untouched: then the process dies.
    let mut marker = WriteBatch::default();
    marker.put_cf(
        db.cf_handle(RAFT_LOG_CF).unwrap(),
        INSTALLING_KEY,
        encode_position(300, 2),
    );
    install::write_durably(&db, marker).unwrap();
    db.put_cf(db.cf_handle(STATE_CF).unwrap(), "V00002", "half")
        .unwrap();
    drop(s);
    let s = RaftStorage::open(db.clone(), 2, &[1, 2]).unwrap();
    let expected: Vec<String> = (2..=300).map(|i| format!("V{i:05}")).collect();
    check_installed(&db, &s, &expected);
}

#[test]
fn a_snapshot_is_made_in_the_background_and_handed_out_once_ready() {
    let a = TempDir::new("snap-a");
    let (db, _s) = leader(&a, 50);
    // What an earlier run left: its own files go, a received one (an install to redo) stays.
    std::fs::create_dir_all(dir(&db)).unwrap();
    for name in ["make-9-1.tmp", "9-1.snap", "received-5-1.snap"] {
        std::fs::write(dir(&db).join(name), b"").unwrap();
    }
    let snapshots = Snapshots::new(db.clone(), dir(&db));
    let mut left: Vec<_> = std::fs::read_dir(dir(&db))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["received-5-1.snap"]);
    assert!(snapshots.get(10, 2).is_none(), "made at once");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let snapshot = loop {
        if let Some(snapshot) = snapshots.get(10, 2) {
            break snapshot;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(snapshot.get_metadata().index, 50);
    assert_eq!(decode_snapshot_data(&snapshot.data), Some((50, 2)));
    // Not for a node outside the membership, nor older than asked.
    assert!(snapshots.get(10, 7).is_none());
    assert_eq!(snapshots.made(), 1);
}
