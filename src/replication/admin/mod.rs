//! `mqd cluster status|add|remove`: admin connections on a member's replication address
//! (protocol-spec/cluster.md 7). A connection opens with `ADMIN_MARKER` (no raft frame has
//! that length), then carries request lines and gets reply lines (`codec`). A member that does
//! not lead passes a request on to the leader it knows (`serve`); the leader's raft thread
//! carries it out (`super::membership`). They live here, beside the raft peers, rather than on
//! the client port: a change's answer waits for the change to be applied (seconds, or a
//! learner's catch-up), which a connection thread can do and an event loop cannot.

pub mod codec;
pub mod serve;

/// The first four bytes of an admin connection.
pub const ADMIN_MARKER: [u8; 4] = [0xff, 0xff, 0xff, 0xfd];
/// The first four bytes of an admin connection a member passes on to the leader: never passed
/// on again, so members that disagree on the leader cannot pass a request round.
pub const ADMIN_FORWARDED_MARKER: [u8; 4] = [0xff, 0xff, 0xff, 0xfc];
