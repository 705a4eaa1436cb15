//! The group's identity: a number every member of one group holds (`G` in `meta`, written when
//! a founder bootstraps, and carried to every other member by the snapshot it starts from), and
//! that every connection between members states first (`GROUP_MARKER` and the number). A
//! member refuses a connection from another group's node.
//!
//! What it catches: a node bootstrapped as a founder when it should have joined (started
//! without `--join`, cluster.md 7, or an emptied member started again as a founder of a group
//! seeded from a single server's data). Such a node holds a state at the founders' starting
//! point (index 1, term 1) that is not the group's, and raft's log matching, which compares
//! positions and terms only, would take it for the group's: it would then be sent the log from
//! index 2, not a snapshot, and miss what the group's state at index 1 holds.
//!
//! Founders of a group started empty all compute the same number from the founders' ids (they
//! bootstrap without talking to each other); a founder that seeds the group with a single
//! server's queues (the only founder, the others join) draws a random one. Directories made
//! before the number existed have none (0), and a joiner has none until its snapshot brings it:
//! 0 matches every group.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The first four bytes of a connection between members that states its group: the number
/// follows (u64, big-endian), then what the connection would have sent without it. Read as a
/// frame's length it is over `frame::MAX_FRAME`, like the other markers.
pub const GROUP_MARKER: [u8; 4] = [0xff, 0xff, 0xff, 0xfa];

/// This node's group number, shared by the raft thread (which sets it at start and after an
/// install), the transport (which states it) and the listener (which checks it).
#[derive(Clone, Debug, Default)]
pub struct GroupId(Arc<AtomicU64>);

impl GroupId {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn set(&self, id: u64) {
        self.0.store(id, Ordering::Release);
    }

    /// What a connection to another member starts with.
    pub fn hello(&self) -> [u8; 12] {
        let mut hello = [0; 12];
        hello[..4].copy_from_slice(&GROUP_MARKER);
        hello[4..].copy_from_slice(&self.get().to_be_bytes());
        hello
    }
}

/// Whether a node of group `theirs` may talk to one of group `ours` (0: not known yet).
pub fn same_group(ours: u64, theirs: u64) -> bool {
    ours == 0 || theirs == 0 || ours == theirs
}

/// The number a founder bootstrapping with `founders` writes: the same on every founder of a
/// group started empty (FNV-1a of the sorted ids); random for one `seeding` the group with a
/// single server's data. Never 0.
pub fn founding(founders: &[u64], seeding: bool) -> u64 {
    let id = if seeding {
        std::collections::hash_map::RandomState::new()
            .hash_one((std::time::SystemTime::now(), std::process::id()))
    } else {
        let mut ids = founders.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in ids.iter().flat_map(|id| id.to_be_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    };
    id.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn founders_of_one_group_agree_and_another_list_or_a_seeding_founder_differs() {
        assert_eq!(founding(&[1, 2, 3], false), founding(&[3, 1, 2], false));
        assert_ne!(founding(&[1, 2, 3], false), founding(&[1, 2, 3, 4], false));
        assert_ne!(founding(&[1], true), founding(&[1], false));
        assert_ne!(founding(&[1], true), founding(&[1], true));
        assert_ne!(founding(&[1, 2, 3], false), 0);
    }

    #[test]
    fn an_unknown_group_matches_any_and_two_known_ones_must_be_equal() {
        assert!(same_group(0, 7) && same_group(7, 0) && same_group(7, 7));
        assert!(!same_group(7, 8));
        let group = GroupId::default();
        group.set(0x0102);
        assert_eq!(
            group.hello(),
            [0xff, 0xff, 0xff, 0xfa, 0, 0, 0, 0, 0, 0, 1, 2]
        );
    }
}
