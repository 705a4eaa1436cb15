//! A member that found its copy damaged, between finding it and dropping it: it takes no part
//! in the group (no campaign, no vote, no acknowledgement: what it holds may be unreadable, so
//! it may not count toward a commit or an election) and waits for the **proof** that the other
//! members hold every committed entry without it. Only then may it drop its copy
//! (`resync`): dropped any sooner, it could have been one of the only copies of a committed
//! entry (in a group of three with one member down, every entry committed since is on the
//! two others alone).
//!
//! The proof is a leader's append carrying a commit index that covers an entry this member
//! never acknowledged: one past this member's last entry, or one of a term later than this
//! member's when the damage was found (it never was in that term, so never acknowledged any
//! of its entries). Such an entry was acknowledged by a majority of the others, and by log
//! matching they hold the leader's log up to it, every entry committed before it included
//! (raft's leader completeness: the leader has them all). Every entry this member ever
//! acknowledged is at or before its last index, hence before that entry, or was never
//! committed. A majority of the others also means they can elect and commit without it.
//!
//! A leader sends appends to a member that does not answer them only while it streams to it
//! (a replicating follower, as long as writes come); a new leader, or one that lost touch with
//! it (a restart), probes once and waits for an answer. So this member answers heartbeats from
//! leaders of its term or later, which lets the leader probe again with its current commit
//! index; but at most one every few election timeouts (`Quarantine::answer_every`), so that a
//! leader whose only other live member is this one still loses its quorum check and steps
//! down (clients then hear `no leader` rather than wait on writes nobody can commit). No
//! write, no new entry: a member in an idle group waits for the next write (or for a new
//! leader's first entry, when it was the leader itself).

use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use raft::prelude::{HardState, Message, MessageType};
use rocksdb::{Direction, IteratorMode, DB};

use super::admin::codec::AdminError;
use super::apply::{Applier, Outcome};
use super::driver::Input;
use super::keys::{entry_index, entry_key, HARD_STATE_KEY, RAFT_LOG_CF};
use super::resync::{self, Stage};
use super::transport::Transport;

/// What the damaged member knew when it stopped taking part.
#[derive(Clone, Copy, Debug)]
pub(super) struct Quarantine {
    pub node: u64,
    /// Its last log entry (written, maybe not yet fsynced): it acknowledged nothing after it.
    pub last_index: u64,
    /// Its term: it acknowledged nothing of a later one.
    pub term: u64,
    /// Its commit index, which it tells the leader with its heartbeat answers.
    pub committed: u64,
    /// Heartbeats are answered at most this often: longer than a leader's quorum check.
    pub answer_every: Duration,
}

/// How often a quarantined member answers heartbeats, for an election timeout of
/// `election`: a leader checks its quorum once per election timeout, and must find this member
/// silent in most of them.
pub(super) fn answer_every(election: Duration) -> Duration {
    election * 3
}

/// When the next heartbeat answer may go.
#[derive(Debug, Default)]
struct Answers {
    last: Option<Instant>,
}

impl Answers {
    fn due(&mut self, now: Instant, every: Duration) -> bool {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// What to do with a peer's message.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    Wait,
    /// Send this (a heartbeat's answer).
    Answer(Message),
    /// The others hold every committed entry: how it is known.
    Proven(String),
}

impl Quarantine {
    /// What node `node` knows when its raft state cannot be opened (damaged): the hard state's
    /// term and commit and the last entry's index, each read alone (a lookup reads only its
    /// own block). One that cannot be read is taken at its most cautious: no last entry known,
    /// no proof by index; no term known, no proof at all (the member waits for an operator).
    pub fn of_damaged_state(db: &DB, node: u64, answer_every: Duration) -> Quarantine {
        let log = db.cf_handle(RAFT_LOG_CF);
        let hard_state = log
            .and_then(|cf| db.get_cf(cf, HARD_STATE_KEY).ok().flatten())
            .and_then(|bytes| protobuf::Message::parse_from_bytes(&bytes).ok())
            .map(|hs: HardState| (hs.term, hs.commit));
        let last_index = log.and_then(|cf| {
            let from = entry_key(u64::MAX);
            let mut newest = db.iterator_cf(cf, IteratorMode::From(&from, Direction::Reverse));
            match newest.next() {
                Some(Err(_)) => None,
                // No entry (the key before them, or none): the log was empty (compacted, at
                // most up to the commit index, which is as far as it can have gone).
                Some(Ok((key, _))) => entry_index(&key).or(hard_state.map(|(_, commit)| commit)),
                None => hard_state.map(|(_, commit)| commit),
            }
        });
        Quarantine {
            node,
            last_index: last_index.unwrap_or(u64::MAX),
            term: hard_state.map_or(u64::MAX, |(term, _)| term),
            committed: hard_state.map_or(0, |(_, commit)| commit),
            answer_every,
        }
    }

    /// What node `node` knows when not even its raft log can be opened: nothing, so no
    /// proof will do, and it waits for an operator (protocol-spec/cluster.md 8).
    pub fn knowing_nothing(node: u64, answer_every: Duration) -> Quarantine {
        Quarantine {
            node,
            last_index: u64::MAX,
            term: u64::MAX,
            committed: 0,
            answer_every,
        }
    }

    pub fn look(&self, m: &Message) -> Verdict {
        if m.term < self.term {
            return Verdict::Wait;
        }
        match m.get_msg_type() {
            MessageType::MsgHeartbeat => {
                let mut answer = Message::default();
                answer.set_msg_type(MessageType::MsgHeartbeatResponse);
                answer.to = m.from;
                answer.from = self.node;
                answer.term = m.term;
                answer.commit = self.committed;
                answer.context = m.context.clone();
                Verdict::Answer(answer)
            }
            MessageType::MsgAppend => self.proof(m).map_or(Verdict::Wait, Verdict::Proven),
            _ => Verdict::Wait,
        }
    }

    /// Why `m`, an append, proves that a majority of the others holds every committed entry.
    fn proof(&self, m: &Message) -> Option<String> {
        if m.commit > self.last_index {
            return Some(format!(
                "leader {} committed index {} (term {}), past this member's last entry {}",
                m.from, m.commit, m.term, self.last_index
            ));
        }
        let later = std::iter::once((m.index, m.log_term))
            .chain(m.entries.iter().map(|e| (e.index, e.term)))
            .find(|&(index, term)| index > 0 && index <= m.commit && term > self.term)?;
        Some(format!(
            "leader {} committed index {} of term {}, a term this member never was in ({})",
            m.from, later.0, later.1, self.term
        ))
    }
}

/// Records the damage (`why`) durably (`resync::Stage::Damaged`): the first thing a node that
/// found it does, before it stops leading. False (logged) if it cannot: the replication then
/// stops, as on any other storage failure.
pub(super) fn record_damage(why: &str, data_dir: &Path) -> bool {
    match resync::record(data_dir, Stage::Damaged, why) {
        Ok(()) => true,
        Err(e) => {
            log::error!("{why}; cannot record the damage ({e}): replication stops");
            false
        }
    }
}

/// Enters the quarantine for `why`, the damage recorded (`record_damage`): `wait`. What the
/// node did before (leading, proposals) is the caller's to undo first.
pub(super) fn enter(
    watch: &Quarantine,
    why: &str,
    inputs: &Receiver<Input>,
    transport: &mut dyn Transport,
    applier: &mut dyn Applier,
    data_dir: &Path,
) {
    if watch.term == u64::MAX {
        log::error!(
            "{why}: this member's copy is damaged and its raft state cannot be read; it takes \
             no part in the group (no vote, no lead) and cannot tell what the group would lose \
             without its copy: once the other members have a leader, stop it and empty {} \
             (protocol-spec/cluster.md 8)",
            data_dir.display()
        );
    } else {
        log::error!(
            "{why}: this member's copy is damaged; it takes no part in the group (no vote, no \
             lead) until the others have committed an entry without it (after its last entry \
             {}, or of a term after {}), then drops its copy and takes a snapshot",
            watch.last_index,
            watch.term
        );
    }
    wait(watch, inputs, transport, applier, data_dir);
}

/// The damaged member's wait: reads its inputs until the proof, then records the decision
/// (`resync::Stage::Wipe`) and has the applier drop the copy (`Applier::discard`; under
/// `mqd serve` the process exits there). Proposals are dropped (nothing is served meanwhile).
/// Returns on `Input::Stop`, when the inputs end, after a discard that returns (tests), or if
/// the decision cannot be recorded.
pub(super) fn wait(
    watch: &Quarantine,
    inputs: &Receiver<Input>,
    transport: &mut dyn Transport,
    applier: &mut dyn Applier,
    data_dir: &Path,
) {
    let mut answers = Answers::default();
    for input in inputs.iter() {
        match input {
            Input::Message(m) => match watch.look(&m) {
                Verdict::Wait => {}
                Verdict::Answer(answer) => {
                    if answers.due(Instant::now(), watch.answer_every) {
                        transport.send(vec![answer]);
                    }
                }
                Verdict::Proven(how) => {
                    if let Err(e) = resync::record(data_dir, Stage::Wipe, &how) {
                        log::error!(
                            "cannot record the decision to drop this member's copy ({e}): it \
                             stays stopped; empty its data directory and start it again"
                        );
                        return;
                    }
                    log::warn!(
                        "{how}: the group holds every committed entry without this member; \
                         dropping its damaged copy"
                    );
                    applier.discard();
                    return;
                }
            },
            Input::Propose { id, .. } => applier.settled(id, Outcome::Dropped),
            // It takes no part in the group: a membership request is for a member that does.
            Input::Admin { reply, .. } => {
                let _ = reply.send(Err(AdminError::NoLeader));
            }
            Input::Stop => return,
            Input::Unreachable(_)
            | Input::RemovedBy { .. }
            | Input::Synced(_)
            | Input::SnapshotSent { .. }
            | Input::Installed { .. }
            | Input::Damaged(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Entry;

    const WATCH: Quarantine = Quarantine {
        node: 2,
        last_index: 100,
        term: 5,
        committed: 98,
        answer_every: Duration::from_millis(1500),
    };

    #[test]
    fn heartbeats_are_answered_at_most_once_per_interval() {
        let mut answers = Answers::default();
        let every = Duration::from_millis(1500);
        let start = Instant::now();
        assert!(answers.due(start, every));
        assert!(!answers.due(start + Duration::from_millis(100), every));
        assert!(!answers.due(start + Duration::from_millis(1499), every));
        assert!(answers.due(start + every, every));
        assert!(!answers.due(start + every + Duration::from_millis(1), every));
        assert_eq!(answer_every(Duration::from_millis(500)), every);
    }

    fn message(kind: MessageType, term: u64, commit: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = 1;
        m.to = 2;
        m.term = term;
        m.commit = commit;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn a_commit_past_the_last_entry_it_had_proves_it() {
        let m = message(MessageType::MsgAppend, 5, 101);
        assert!(matches!(WATCH.look(&m), Verdict::Proven(_)));
        // Up to its last entry: it may have acknowledged that itself.
        let m = message(MessageType::MsgAppend, 5, 100);
        assert_eq!(WATCH.look(&m), Verdict::Wait);
    }

    #[test]
    fn a_member_that_knows_nothing_of_its_state_accepts_no_proof_and_answers_nothing() {
        let watch = Quarantine::knowing_nothing(2, Duration::from_millis(1500));
        let mut append = message(MessageType::MsgAppend, 1_000, u64::MAX - 1);
        append.entries = vec![entry(u64::MAX - 1, 1_000)].into();
        assert_eq!(watch.look(&append), Verdict::Wait);
        let heartbeat = message(MessageType::MsgHeartbeat, 1_000, 0);
        assert_eq!(watch.look(&heartbeat), Verdict::Wait);
    }

    #[test]
    fn a_committed_entry_of_a_later_term_proves_it() {
        // A new leader's first entry at 100, where this member has an entry of its own term.
        let mut m = message(MessageType::MsgAppend, 6, 99);
        m.index = 99;
        m.log_term = 5;
        m.entries = vec![entry(100, 6)].into();
        assert_eq!(WATCH.look(&m), Verdict::Wait, "not committed yet");
        m.commit = 100;
        assert!(matches!(WATCH.look(&m), Verdict::Proven(_)));
        // The previous entry of the append counts too.
        let mut m = message(MessageType::MsgAppend, 6, 100);
        m.index = 100;
        m.log_term = 6;
        assert!(matches!(WATCH.look(&m), Verdict::Proven(_)));
        // An entry of its own term proves nothing: it may have acknowledged it.
        let mut m = message(MessageType::MsgAppend, 5, 100);
        m.index = 99;
        m.log_term = 5;
        m.entries = vec![entry(100, 5)].into();
        assert_eq!(WATCH.look(&m), Verdict::Wait);
    }

    #[test]
    fn what_a_node_knows_of_a_state_it_cannot_open_is_read_record_by_record() {
        use super::super::storage::RaftStorage;
        use super::super::test_support::TempDir;
        let dir = TempDir::new("quarantine");
        let db = super::super::db::open(dir.path()).unwrap();
        let mut storage = RaftStorage::open(db.clone(), 2, &[1, 2, 3]).unwrap();
        let watch = Quarantine::of_damaged_state(&db, 2, Duration::ZERO);
        assert_eq!((watch.last_index, watch.term, watch.committed), (1, 1, 1));
        let entries: Vec<Entry> = (2..=5).map(|i| entry(i, 3)).collect();
        let hard_state = HardState {
            term: 3,
            commit: 4,
            ..Default::default()
        };
        storage.persist(&entries, Some(&hard_state)).unwrap();
        let watch = Quarantine::of_damaged_state(&db, 2, Duration::ZERO);
        assert_eq!(
            (watch.node, watch.last_index, watch.term, watch.committed),
            (2, 5, 3, 4)
        );
    }

    #[test]
    fn heartbeats_of_its_term_or_later_are_answered_and_nothing_else() {
        let m = message(MessageType::MsgHeartbeat, 7, 90);
        match WATCH.look(&m) {
            Verdict::Answer(a) => {
                assert_eq!(a.get_msg_type(), MessageType::MsgHeartbeatResponse);
                assert_eq!((a.from, a.to, a.term, a.commit), (2, 1, 7, 98));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            WATCH.look(&message(MessageType::MsgHeartbeat, 5, 0)),
            Verdict::Answer(_)
        ));
        for (kind, term) in [
            (MessageType::MsgHeartbeat, 4),
            (MessageType::MsgAppend, 4),
            (MessageType::MsgRequestVote, 9),
            (MessageType::MsgRequestPreVote, 9),
            (MessageType::MsgSnapshot, 9),
        ] {
            let mut m = message(kind, term, 500);
            m.index = 400;
            assert_eq!(WATCH.look(&m), Verdict::Wait, "{kind:?} at term {term}");
        }
    }
}
