//! `RaftStorage` on a real RocksDB in a temporary directory, reopened to check what is stored.

use protobuf::Message as _;
use raft::prelude::{Entry, HardState};
use raft::{GetEntriesContext, Storage, StorageError};
use rocksdb::WriteBatch;

use super::super::db;
use super::super::test_support::TempDir;
use super::*;

fn open(dir: &TempDir, id: u64, founders: &[u64]) -> Result<RaftStorage, StoreError> {
    RaftStorage::open(db::open(dir.path()).unwrap(), id, founders)
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("{index}/{term}").into_bytes().into(),
        ..Default::default()
    }
}

fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    indexes.map(|i| entry(i, term)).collect()
}

fn all(s: &RaftStorage) -> Vec<(u64, u64)> {
    let (first, last) = s.bounds();
    s.entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap()
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

fn hard_state(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        commit,
        ..Default::default()
    }
}

fn is(result: raft::Result<impl std::fmt::Debug>, expected: StorageError) -> bool {
    matches!(result, Err(raft::Error::Store(e)) if e == expected)
}

#[test]
fn a_founder_starts_after_index_1_term_1_with_the_founders_as_voters() {
    let dir = TempDir::new("storage");
    let s = open(&dir, 2, &[1, 2, 3]).unwrap();
    let state = s.initial_state().unwrap();
    assert_eq!((state.hard_state.term, state.hard_state.commit), (1, 1));
    assert_eq!(state.hard_state.vote, 0);
    let mut voters = state.conf_state.voters.clone();
    voters.sort_unstable();
    assert_eq!(voters, [1, 2, 3]);
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 1));
    assert_eq!(s.term(1).unwrap(), 1);
    assert!(is(s.term(0), StorageError::Compacted));
    assert!(is(s.term(2), StorageError::Unavailable));
    assert_eq!(s.applied(), (1, 1));
}

#[test]
fn a_directory_is_only_ever_its_own_node() {
    let dir = TempDir::new("storage");
    drop(open(&dir, 2, &[1, 2, 3]).unwrap());
    let err = open(&dir, 3, &[1, 2, 3]).err().unwrap();
    assert!(err.to_string().contains("belongs to node 2"), "{err}");
    let fresh = TempDir::new("storage");
    assert!(open(&fresh, 4, &[1, 2, 3]).is_err(), "not a founder");
    assert!(open(&fresh, 0, &[0]).is_err());
    // Neither refusal wrote anything: the directory can still found node 1.
    assert_eq!(open(&fresh, 1, &[1, 2, 3]).unwrap().applied(), (1, 1));
}

#[test]
fn a_shorter_conflicting_suffix_replaces_the_stale_tail_and_stays_replaced() {
    let dir = TempDir::new("storage");
    let mut s = open(&dir, 1, &[1]).unwrap();
    s.persist(&entries(2..=6, 1), Some(&hard_state(1, 3)))
        .unwrap();
    assert_eq!(s.last_index().unwrap(), 6);
    // A new leader of term 2 overwrites from 4 with only two entries: 6 must go too.
    s.persist(&entries(4..=5, 2), Some(&hard_state(2, 3)))
        .unwrap();
    let expected = vec![(2, 1), (3, 1), (4, 2), (5, 2)];
    assert_eq!(all(&s), expected);
    assert!(is(s.term(6), StorageError::Unavailable));
    drop(s);
    let s = open(&dir, 1, &[1]).unwrap();
    assert_eq!(
        s.last_index().unwrap(),
        5,
        "the stale entry 6 survived a reopen"
    );
    assert_eq!(all(&s), expected);
    assert_eq!(s.hard_state().term, 2);
}

#[test]
fn appends_that_leave_a_gap_or_rewrite_compacted_entries_are_refused() {
    let dir = TempDir::new("storage");
    let mut s = open(&dir, 1, &[1]).unwrap();
    assert!(s.persist(&entries(3..=4, 1), None).is_err(), "gap after 1");
    assert!(
        s.persist(&entries(1..=2, 1), None).is_err(),
        "index 1 is compacted"
    );
    assert_eq!(s.last_index().unwrap(), 1);
}

#[test]
fn compaction_moves_the_first_index_and_keeps_the_term_at_the_truncated_index() {
    let dir = TempDir::new("storage");
    let mut s = open(&dir, 1, &[1]).unwrap();
    s.persist(&entries(2..=3, 1), None).unwrap();
    s.persist(&entries(4..=8, 2), Some(&hard_state(2, 8)))
        .unwrap();
    s.apply(WriteBatch::default(), 6, 2, None).unwrap();
    assert!(s.compact(7).is_err(), "7 is not applied");
    s.compact(4).unwrap();
    let check = |s: &RaftStorage| {
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (5, 8));
        assert_eq!(s.term(4).unwrap(), 2, "term at the truncated index");
        assert!(is(s.term(3), StorageError::Compacted));
        assert!(is(
            s.entries(4, 6, None, GetEntriesContext::empty(false)),
            StorageError::Compacted
        ));
        assert!(is(
            s.entries(5, 10, None, GetEntriesContext::empty(false)),
            StorageError::Unavailable
        ));
        assert_eq!(all(s), vec![(5, 2), (6, 2), (7, 2), (8, 2)]);
    };
    check(&s);
    s.compact(3).unwrap(); // at or before the compaction point: nothing
    check(&s);
    drop(s);
    check(&open(&dir, 1, &[1]).unwrap());
}

#[test]
fn the_log_size_follows_appends_replaced_tails_compaction_and_reopening() {
    let dir = TempDir::new("storage");
    let mut s = open(&dir, 1, &[1]).unwrap();
    assert_eq!(s.log_size(), (0, 0));
    s.persist(&entries(2..=9, 1), None).unwrap();
    let one = s.log_size().1 / 8;
    assert!(one > 0);
    assert_eq!(s.log_size(), (8, 8 * one));
    // A shorter conflicting suffix from 5: 2..=6 remain.
    s.persist(&entries(5..=6, 2), Some(&hard_state(2, 6)))
        .unwrap();
    assert_eq!(s.log_size(), (5, 5 * one));
    s.apply(WriteBatch::default(), 4, 1, None).unwrap();
    s.compact(4).unwrap();
    assert_eq!(s.log_size(), (2, 2 * one));
    drop(s);
    assert_eq!(open(&dir, 1, &[1]).unwrap().log_size(), (2, 2 * one));
}

#[test]
fn entries_stop_at_max_size_but_always_return_one() {
    let dir = TempDir::new("storage");
    let mut s = open(&dir, 1, &[1]).unwrap();
    s.persist(&entries(2..=11, 1), None).unwrap();
    let ctx = || GetEntriesContext::empty(false);
    let one = entry(2, 1).compute_size() as u64;
    assert_eq!(s.entries(2, 12, 0, ctx()).unwrap().len(), 1);
    assert_eq!(s.entries(2, 12, 3 * one, ctx()).unwrap().len(), 3);
    assert_eq!(s.entries(2, 12, None, ctx()).unwrap().len(), 10);
    assert_eq!(s.entries(5, 5, None, ctx()).unwrap().len(), 0);
}

#[test]
fn reopening_returns_the_same_state_and_raft_resumes_after_the_applied_index() {
    let dir = TempDir::new("storage");
    let mut s = open(&dir, 1, &[1]).unwrap();
    s.persist(&entries(2..=6, 3), Some(&hard_state(3, 6)))
        .unwrap();
    let mut batch = WriteBatch::default();
    batch.put_cf(s.db().cf_handle(STATE_CF).unwrap(), b"x", b"y");
    let cs = ConfState::from((vec![1], vec![9]));
    assert_eq!(s.addresses(), None, "none stored before a change");
    let addresses = [(1, "a:1".to_string()), (9, "b:9".to_string())].into();
    s.apply(batch, 4, 3, Some((&cs, &addresses, &Default::default())))
        .unwrap();
    assert!(
        s.apply(WriteBatch::default(), 7, 3, None).is_err(),
        "7 is not committed"
    );
    drop(s);

    let s = open(&dir, 1, &[1]).unwrap();
    assert_eq!(s.applied(), (4, 3));
    assert_eq!(s.hard_state(), &hard_state(3, 6));
    assert_eq!(s.conf_state().learners, [9]);
    assert_eq!(
        s.addresses(),
        Some(&addresses),
        "stored with the membership"
    );
    assert_eq!(s.bounds(), (2, 6));
    let db = s.db().clone();
    assert_eq!(
        db.get_cf(db.cf_handle(STATE_CF).unwrap(), b"x").unwrap(),
        Some(b"y".to_vec()),
        "the state machine's write went with the applied index"
    );
    // raft-rs restarted with `Config::applied` hands out only what is committed after it.
    let config = raft::Config {
        id: 1,
        applied: s.applied().0,
        ..Default::default()
    };
    let mut node = raft::RawNode::new(&config, s, &super::super::slog_bridge::logger()).unwrap();
    let mut ready = node.ready();
    let committed: Vec<u64> = ready
        .take_committed_entries()
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(committed, [5, 6]);
}

/// The terms `term()` answers from memory are those of the entries stored, through a
/// replaced conflicting tail, a compaction and a reopen.
#[test]
fn terms_answered_from_memory_are_the_stored_entries_terms() {
    let dir = TempDir::new("storage");
    let mut s = open(&dir, 1, &[1]).unwrap();
    let stored_terms = |s: &RaftStorage| -> Vec<(u64, u64)> {
        let (first, last) = s.bounds();
        (first..=last).map(|i| (i, s.term(i).unwrap())).collect()
    };
    s.persist(&entries(2..=9, 1), Some(&hard_state(1, 4)))
        .unwrap();
    s.persist(&entries(6..=7, 3), Some(&hard_state(3, 4)))
        .unwrap();
    s.persist(&entries(8..=8, 4), Some(&hard_state(4, 5)))
        .unwrap();
    assert_eq!(stored_terms(&s), all(&s));
    assert_eq!(s.term(7).unwrap(), 3);
    assert_eq!(s.term(8).unwrap(), 4);
    assert!(is(s.term(9), StorageError::Unavailable));
    s.apply(WriteBatch::default(), 5, 1, None).unwrap();
    s.compact(5).unwrap();
    assert_eq!(stored_terms(&s), all(&s));
    assert_eq!(s.term(5).unwrap(), 1);
    drop(s);
    let mut s = open(&dir, 1, &[1]).unwrap();
    assert_eq!(stored_terms(&s), vec![(6, 3), (7, 3), (8, 4)]);
    s.persist(&entries(9..=10, 5), None).unwrap();
    assert_eq!(stored_terms(&s), all(&s));
}

/// The entries answered from memory (the newest, at most `RECENT_BYTES`) are the stored
/// ones, whatever the range and size limit: after appends larger than what memory keeps, and
/// through a replaced conflicting tail.
#[test]
fn entries_answered_from_memory_are_the_stored_entries() {
    let dir = TempDir::new("storage");
    let mut s = open(&dir, 1, &[1]).unwrap();
    let big = |index: u64, term: u64| Entry {
        index,
        term,
        data: vec![index as u8; 1 << 20].into(),
        ..Default::default()
    };
    let appended = (2..=13).map(|i| big(i, 1)).collect::<Vec<_>>();
    s.persist(&appended, Some(&hard_state(1, 2))).unwrap();
    let conflicting = (10..=11).map(|i| big(i, 2)).collect::<Vec<_>>();
    s.persist(&conflicting, Some(&hard_state(2, 2))).unwrap();
    s.persist(&entries(12..=14, 3), Some(&hard_state(3, 2)))
        .unwrap();
    let (first, last) = s.bounds();
    assert!(s.recent_bytes <= RECENT_BYTES);
    assert!(s.recent_first() > first, "memory keeps only the newest");
    // The same database, nothing of it in memory: every entry read from RocksDB.
    let stored = RaftStorage::open(s.db().clone(), 1, &[1]).unwrap();
    let context = || GetEntriesContext::empty(false);
    for low in first..=last {
        for high in low + 1..=last + 1 {
            for max_size in [0, 1 << 20, 3 << 20, u64::MAX] {
                assert_eq!(
                    s.entries(low, high, max_size, context()).unwrap(),
                    stored.entries(low, high, max_size, context()).unwrap(),
                    "entries {low}..{high}, at most {max_size} bytes"
                );
            }
        }
    }
    assert_eq!(all(&s)[8..], [(10, 2), (11, 2), (12, 3), (13, 3), (14, 3)]);
}
