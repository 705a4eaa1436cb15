//! Connections counted by the protocol their first byte chose, for `/metrics`: how many are
//! open now and how many were ever opened. A connection holds a [`Counted`] from the moment its
//! protocol is known; dropping the connection drops it and the open count goes down, whichever
//! way the connection ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::protocol::Protocol;

/// Every protocol, in the order the counts are kept and reported.
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Memcache, Protocol::Mqmq, Protocol::Http];

/// The label a protocol is reported under.
pub fn label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Memcache | Protocol::MemcacheBinary => "memcache",
        Protocol::Mqmq => "mqmq",
        Protocol::Http => "http",
    }
}

fn index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Memcache | Protocol::MemcacheBinary => 0,
        Protocol::Mqmq => 1,
        Protocol::Http => 2,
    }
}

#[derive(Default)]
pub struct ConnectionCounts {
    open: [AtomicU64; 3],
    opened: [AtomicU64; 3],
}

impl ConnectionCounts {
    /// Counts a connection whose protocol was just chosen, until the returned guard is dropped.
    pub fn count(self: &Arc<Self>, protocol: Protocol) -> Counted {
        self.open[index(protocol)].fetch_add(1, Ordering::Relaxed);
        self.opened[index(protocol)].fetch_add(1, Ordering::Relaxed);
        Counted {
            counts: self.clone(),
            protocol,
        }
    }

    /// Connections open now with this protocol.
    pub fn open(&self, protocol: Protocol) -> u64 {
        self.open[index(protocol)].load(Ordering::Relaxed)
    }

    /// Connections ever opened with this protocol.
    pub fn opened(&self, protocol: Protocol) -> u64 {
        self.opened[index(protocol)].load(Ordering::Relaxed)
    }
}

/// One counted connection; the open count drops with it.
pub struct Counted {
    counts: Arc<ConnectionCounts>,
    protocol: Protocol,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counts.open[index(self.protocol)].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_count_follows_the_guard() {
        let counts = Arc::new(ConnectionCounts::default());
        let a = counts.count(Protocol::Http);
        let b = counts.count(Protocol::Http);
        assert_eq!(counts.open(Protocol::Http), 2);
        drop(a);
        drop(b);
        assert_eq!(counts.open(Protocol::Http), 0);
        assert_eq!(counts.opened(Protocol::Http), 2);
        assert_eq!(counts.open(Protocol::Mqmq), 0);
    }
}
