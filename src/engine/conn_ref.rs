//! How the engine names a connection it must answer: which event loop's mailbox, and the
//! connection within that loop. A leaf module, so that queue state (which records waiting
//! connections) and events (which carry queue handles) need not import each other.

/// Identifies a connection: which event loop's mailbox, and the connection within that loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub mailbox: u32,
    pub conn: u64,
}
