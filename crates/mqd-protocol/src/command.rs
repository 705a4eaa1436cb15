//! The one command vocabulary: what a client can ask for and what the server can answer,
//! independent of how either protocol spells it on the wire.

use smallvec::SmallVec;

/// The keys of one get, in order: one inline (the common case), more on the heap.
pub type Reads = SmallVec<[Read; 1]>;
/// The messages one get returns, in order: one inline, more on the heap.
pub type Values = SmallVec<[Value; 1]>;
/// A queue name or get key as the client sent it: inline up to 32 bytes (most are), so that
/// a request allocates nothing for it.
pub type Key = SmallVec<[u8; 32]>;

/// A request, decoded from either protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Append a message (memcache `set`, mqmq `Put`).
    Set(Set),
    /// Take (or peek, open, close, abort) messages from one or more queues, in order
    /// (memcache `get`/`gets`, mqmq `Get`).
    Get(Reads),
    /// Remove a queue and all its messages.
    Delete { queue: Vec<u8>, noreply: bool },
    /// Empty one queue, keeping it.
    Flush { queue: Vec<u8>, noreply: bool },
    /// Empty every queue.
    FlushAll { noreply: bool },
    /// memcache `stats [queue|reset]`.
    Stats(StatsKind),
    /// mqmq `Info`.
    Info,
    /// memcache `version`.
    Version,
    /// memcache `verbosity <n>`: sets the log level.
    Verbosity { level: u32, noreply: bool },
    /// Close the connection: answered with [`Reply::Closing`], which only the binary
    /// protocol's non-quiet QUIT spells as bytes.
    Quit,
    /// Answer at once, after every earlier request's reply (meta `mn`, binary NOOP): how a
    /// client that pipelined quiet requests learns they are all done.
    Noop,
    /// memcache `cluster …`: a membership request of a replicated group (protocol-spec/cluster.md
    /// 7). Its words are not parsed here: the connection is handed, from this line on, to the
    /// member's admin side, which reads its lines.
    Cluster,
}

/// The body of a `set`/`Put`.
#[derive(Debug, PartialEq, Eq)]
pub struct Set {
    pub queue: Key,
    pub flags: u32,
    /// memcache exptime as sent: 0 never expires, up to 30 days is relative seconds,
    /// larger is an absolute unix time, negative is already expired.
    pub exptime: i64,
    pub body: Vec<u8>,
    pub noreply: bool,
}

/// memcached's rule: an exptime up to 30 days is relative seconds, larger is a unix time.
pub const RELATIVE_EXPTIME_LIMIT: i64 = 60 * 60 * 24 * 30;

impl Set {
    /// The absolute expiry (unix ms, 0 = never) of this message if it was received at
    /// `now_ms()`, which is only asked when the exptime is relative. A negative exptime means
    /// already expired, as in memcached.
    pub fn expires_at(&self, now_ms: impl FnOnce() -> u64) -> u64 {
        match self.exptime {
            0 => 0,
            e if e < 0 => now_ms().max(1),
            e if e <= RELATIVE_EXPTIME_LIMIT => now_ms() + e as u64 * 1000,
            e => (e as u64).saturating_mul(1000),
        }
    }
}

/// One key of a `get`: a queue and what to do with it.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Read {
    /// The key exactly as the client sent it (queue plus options), echoed in `VALUE` lines.
    pub key: Key,
    /// How much of `key` names the queue (`queue()`), which is not copied apart.
    pub(crate) queue_len: usize,
    /// Block up to this many milliseconds for a message (`/t=`, mqmq's timeout).
    pub wait_ms: Option<u64>,
    /// Keep the message until `close` or `abort` (`/open`).
    pub open: bool,
    /// Confirm this connection's open messages on the queue (`/close`).
    pub close: bool,
    /// Give this connection's open messages back to the head of the queue (`/abort`).
    pub abort: bool,
    /// Return the head message without removing it (`/peek`).
    pub peek: bool,
    /// Reply with a cas field (`gets`).
    pub cas: bool,
}

impl Read {
    /// A plain, non-blocking take of one message. The queue must be a valid name for the
    /// protocol at hand; this does not check it.
    pub fn take(queue: &[u8]) -> Read {
        Read {
            key: Key::from_slice(queue),
            queue_len: queue.len(),
            wait_ms: None,
            open: false,
            close: false,
            abort: false,
            peek: false,
            cas: false,
        }
    }

    /// The queue the key names (the key without its options). Empty once the key has been
    /// moved into a reply.
    pub fn queue(&self) -> &[u8] {
        &self.key[..self.queue_len.min(self.key.len())]
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum StatsKind {
    General,
    Queue,
    Reset,
}

/// A message handed to a client.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Value {
    /// The key as requested, echoed back.
    pub key: Key,
    pub flags: u32,
    pub body: Vec<u8>,
    /// `Some` when the client asked with `gets`.
    pub cas: Option<u64>,
}

/// An answer, encoded by the codec of the connection that asked.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Reply {
    /// The message is committed per the sync policy.
    Stored,
    /// Messages taken by a `get` (possibly none). memcache: `VALUE` blocks then `END`;
    /// mqmq: `OK, <body>`, or `Timeout` when empty.
    Values(Values),
    Deleted,
    NotFound,
    /// memcache `END` alone (flush).
    End,
    /// `OK` (flush_all, verbosity).
    Ok,
    /// `RESET` (stats reset).
    Reset,
    /// `VERSION <v>`.
    Version(&'static str),
    /// `STAT <name> <value>` lines then `END`.
    Stats(Vec<(String, String)>),
    /// mqmq `Info`: what the server holds now.
    Info(Info),
    /// The answer to [`Command::Noop`]: meta `MN`, an empty binary NOOP response.
    Noop,
    /// The answer to [`Command::Quit`], encoded just before the connection closes: nothing in
    /// text, meta and mqmq, an empty success response to a binary QUIT (none to QUITQ).
    Closing,
    Error(ErrorKind),
}

/// What mqmq's `Info` reports.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Info {
    pub connections: u64,
    /// Every queue and its message count, sorted by name.
    pub queues: Vec<(Vec<u8>, u64)>,
}

/// Every error the server can answer with. Each codec spells them its own way; see
/// `protocol-spec/` for the exact strings.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ErrorKind {
    /// Not a command this server knows (memcache `ERROR`; mqmq `REQUEST_UNKNOWN_COMMAND`).
    UnknownCommand,
    /// A malformed request; the text is memcache's `CLIENT_ERROR` reason.
    BadFormat(&'static str),
    /// Too few values in an mqmq frame, or an empty frame.
    BadParams,
    /// Queue name too long, or with bytes the protocol does not allow.
    BadQueueName,
    /// mqmq timeout not an integer or over an hour.
    BadTimeout,
    /// memcache data block not followed by `\r\n`.
    BadDataChunk,
    /// memcache command line longer than the limit without a newline.
    LineTooLong,
    /// Body over `--max-message-size`.
    MessageTooLarge,
    /// mqmq frame length over the absolute frame limit.
    FrameTooLarge,
    /// mqmq frame whose values do not add up to its length.
    BadFrame,
    /// The queue is at its item or byte limit.
    QueueFull,
    /// The store failed to commit (disk full, I/O error): nothing was stored.
    Storage,
    /// The server is shutting down and takes no new writes.
    ShuttingDown,
    /// A member of a replicated group that is not its established leader (a follower, a
    /// candidate, a leader not yet sure of its log): retry, later or on another member.
    NoLeader,
    /// Free disk space is below the reserve (`--min-free-space`).
    DiskFull,
    /// The `set` would create one more fan-out queue (`<queue>+<child>`) than `--max-fanout`
    /// allows its parent.
    FanoutLimit,
    /// The `set` would create one more queue than `--max-queues` allows.
    TooManyQueues,
    /// A plain read of a queue this connection holds an open message of.
    OpenReadPending,
    /// More open messages than `--max-open-reads` on one connection.
    TooManyOpenReads,
    /// A store a queue can never satisfy, refused unstored: appending to or prepending to a
    /// stored value (binary APPEND/PREPEND, meta `ms` modes `A`/`P`). memcache `NOT_STORED`,
    /// binary status 0x0005, meta `NS`.
    NotStored,
    /// A store or delete conditional on something a queue never matches: an add (every queue
    /// name is taken), a compare-and-swap. memcache `EXISTS`, binary status 0x0002, meta `EX`.
    Exists,
    /// An increment or decrement: a queue is not a number. Binary status 0x0006.
    NonNumeric,
    /// A SASL request: mqd has no authentication. Binary status 0x0020.
    AuthUnsupported,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(exptime: i64) -> Set {
        Set {
            queue: Key::from_slice(b"q"),
            flags: 0,
            exptime,
            body: Vec::new(),
            noreply: false,
        }
    }

    #[test]
    fn exptime_follows_memcached() {
        let now = 1_700_000_000_000;
        assert_eq!(set(0).expires_at(|| now), 0);
        assert_eq!(set(10).expires_at(|| now), now + 10_000);
        assert_eq!(
            set(RELATIVE_EXPTIME_LIMIT).expires_at(|| now),
            now + 2_592_000_000
        );
        assert_eq!(set(1_800_000_000).expires_at(|| now), 1_800_000_000_000);
        let expired = set(-1).expires_at(|| now);
        assert!(expired != 0 && expired <= now, "already expired");
    }
}
