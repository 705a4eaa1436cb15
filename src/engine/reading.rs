//! How a read claims a message: under the queue's lock it takes the next sequence number (a given
//! back one first), fetches that one key, drops it if expired, skips it if gone, and removes,
//! opens or merely looks at it. Also how waiting readers are handed messages as they arrive.
//!
//! A message RocksDB cannot read (a damaged table file fails its block checksum) is never
//! skipped nor served: the read fails with `Error::Storage`, counted in the engine's storage
//! errors, and so does every read of that queue after it, until `mqd repair` (`super::repair`)
//! drops the damaged messages with the server stopped. Under `--cluster` the damage is reported
//! to the replication instead (`cluster::damaged`), which gets a whole copy back from the group.

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::events::{Event, Outbox, QueueHandle, Taken};
use super::queue::QueueState;
use super::recent::Fresh;
use super::{message, store, Engine, Error, Op, QueueRef, TakeMode, Uncommitted};

/// One message's stored value, pinned in RocksDB's memtable or block cache rather than
/// copied out (the caller copies the body once, into the reply).
pub(super) fn read<'a>(
    engine: &'a Engine,
    q: &QueueState,
    seq: u64,
) -> Result<Option<rocksdb::DBPinnableSlice<'a>>, Error> {
    engine
        .db
        .get_pinned_cf(engine.messages(), store::message_key(q.id(), seq))
        .map_err(|e| failed(engine, &e))
}

/// A read RocksDB failed: logged, with what the operator can do if it is damage, and counted.
fn failed(engine: &Engine, e: &rocksdb::Error) -> Error {
    if e.kind() == rocksdb::ErrorKind::Corruption && super::cluster::damaged(engine, e.as_ref()) {
        log::error!(
            "read failed: {e}; a damaged table file: this member gets its copy back from the \
             group (protocol-spec/cluster.md 8)"
        );
    } else if e.kind() == rocksdb::ErrorKind::Corruption {
        log::error!(
            "read failed: {e}; a damaged table file: stop the server and run `mqd repair \
             --data-dir {}` to drop the damaged messages",
            engine.config.data_dir.display()
        );
    } else {
        log::error!("read failed: {e}");
    }
    engine.metrics.storage_error();
    Error::Storage
}

/// Where in memory a message was found.
enum Kept {
    Recent,
    Ahead,
}

/// Most messages, and body bytes, one read of a backlog's head reads ahead.
const READ_AHEAD: u64 = 64;
const READ_AHEAD_BYTES: usize = 256 << 10;

/// A message read from RocksDB: its header, its body's length, and the body unless it was
/// longer than the reader has room for (it is not copied then).
type Read = (message::Header, u64, Option<Vec<u8>>);

/// The body of a stored message if it fits in `max_body` (else not copied).
fn copy_body(header: message::Header, body: &[u8], max_body: usize) -> Read {
    let copied = (body.len() <= max_body).then(|| body.to_vec());
    (header, body.len() as u64, copied)
}

/// Reads message `seq`, the head of a backlog not in memory, and the messages after it in the
/// same scan (up to what is in memory or not yet written), keeping those in `q.ahead()` as far as
/// the budget of in-memory messages allows: one seek instead of a point lookup per message.
/// None if `seq` has no message (removed before a crash). A scan that fails after it read `seq`
/// (a damaged block further on) keeps what it read: the reads up to the damage succeed, and
/// the one that reaches it fails.
fn read_ahead(
    engine: &Engine,
    q: &mut QueueState,
    seq: u64,
    max_body: usize,
) -> Result<Option<Read>, Error> {
    let mut end = q.written_end().min(seq.saturating_add(READ_AHEAD));
    if let Some(first) = q.recent().first() {
        end = end.min(first.max(seq + 1));
    }
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(store::message_key(q.id(), end).to_vec());
    let from = store::message_key(q.id(), seq);
    let scan = engine.db.iterator_cf_opt(
        engine.messages(),
        options,
        IteratorMode::From(&from, Direction::Forward),
    );
    let mut head = None;
    let mut fresh = Fresh::new(&engine.caches.ahead);
    let mut bytes = 0;
    for item in scan {
        let (key, value) = match item {
            Ok(item) => item,
            Err(_) if head.is_some() => break,
            Err(e) => return Err(failed(engine, &e)),
        };
        let Some((header, body)) = message::decode(&value) else {
            continue;
        };
        let at = store::message_seq(&key);
        if at == seq {
            head = Some(copy_body(header, body, max_body));
            continue;
        }
        if bytes >= READ_AHEAD_BYTES {
            break;
        }
        bytes += body.len();
        fresh.keep(at, header, body.to_vec());
    }
    q.keep_read_ahead(fresh, seq + 1);
    Ok(head)
}

/// Claims the next deliverable message, dropping expired ones and skipping sequence numbers
/// whose message is gone (removed just before a crash). A message whose body is longer than
/// `max_body` is left where it is (`Error::NoRoom`): the reader has no room for it yet.
pub(super) fn take_locked(
    engine: &Engine,
    state: &QueueRef,
    q: &mut QueueState,
    mode: TakeMode,
    now_ms: impl Fn() -> u64,
    ops: &mut Uncommitted,
    max_body: usize,
) -> Result<Option<Taken>, Error> {
    if q.is_retired() {
        return Ok(None);
    }
    while let Some(seq) = q.front() {
        let from_head = q.returned().is_empty();
        // From memory if it is kept there (its body is taken below): the queue's tail of recent
        // messages, or what an earlier read read ahead. Else from RocksDB, reading ahead when
        // this is the head of a backlog; a sequence number with no message (removed before a
        // crash) is skipped.
        let kept = match q.recent().get(seq) {
            Some(kept) => Some((kept.header, kept.body.len() as u64, Kept::Recent)),
            None => q
                .ahead()
                .get(seq)
                .map(|kept| (kept.header, kept.body.len() as u64, Kept::Ahead)),
        };
        let (header, len, read_body) = match kept {
            Some((header, len, from)) => (header, len, Err(from)),
            // Published ahead of its write and no longer in memory: not readable until the
            // write (it must not be skipped as gone).
            None if seq >= q.written_end() => return Ok(None),
            // A backlog of one (the common case with many small queues) is a point lookup:
            // an iterator costs a seek in every table file, a lookup mostly a bloom filter each.
            None if seq == q.next_unclaimed() && q.written_end() - seq > 1 => {
                match read_ahead(engine, q, seq, max_body)? {
                    Some((header, len, body)) => (header, len, Ok(body)),
                    None => {
                        q.pop_front();
                        continue;
                    }
                }
            }
            None => match read(engine, q, seq)?.as_deref().and_then(message::decode) {
                Some((header, body)) => {
                    let (header, len, body) = copy_body(header, body, max_body);
                    (header, len, Ok(body))
                }
                None => {
                    q.pop_front();
                    continue;
                }
            },
        };
        if header.is_expired_by(&now_ms) {
            q.pop_front();
            q.count_expired(len);
            ops.push(removal(state, seq, from_head));
            continue;
        }
        if len > max_body as u64 {
            // Nothing was claimed, nor a body copied.
            return Err(Error::NoRoom(len as usize));
        }
        let body = match (read_body, mode) {
            (Ok(body), _) => body,
            (Err(Kept::Recent), TakeMode::Peek) => q.recent().get(seq).map(|k| k.body.clone()),
            (Err(Kept::Ahead), TakeMode::Peek) => q.ahead().get(seq).map(|k| k.body.clone()),
            // Claimed: the body moves out of memory, uncopied.
            (Err(Kept::Recent), _) => q.claim_kept(seq, true),
            (Err(Kept::Ahead), _) => q.claim_kept(seq, false),
        }
        .unwrap_or_default();
        match mode {
            TakeMode::Remove => {
                q.pop_front();
                q.forget_bytes(len);
                ops.push(removal(state, seq, from_head));
            }
            TakeMode::Open => {
                q.pop_front();
                q.hold_open(seq, len);
                ops.push(Op::SaveRecord {
                    queue: state.clone(),
                });
            }
            TakeMode::Peek => {}
        }
        return Ok(Some(Taken {
            queue: QueueHandle(state.clone()),
            seq,
            flags: header.flags,
            expires_at: header.expires_at,
            body,
            open: mode == TakeMode::Open,
            durable_at: q.durable_at(seq, engine.synced()),
        }));
    }
    Ok(None)
}

/// What makes a claimed or dropped message's removal durable. One taken from the head (not
/// given back) needs no delete of its own: the queue's record, written with the next commit,
/// moves the head past it, no read looks below the head, and the reclaimer later deletes the
/// whole consumed range with a few range tombstones (`store::delete_consumed`). A point delete
/// per message cost each get a memtable insert, and put the head's tombstones in the same
/// flushed files as the tail's new messages, so that every compaction of them spanned the
/// whole backlog.
fn removal(state: &QueueRef, seq: u64, from_head: bool) -> Op {
    if from_head {
        Op::SaveRecord {
            queue: state.clone(),
        }
    } else {
        Op::Remove {
            queue: state.clone(),
            seq,
        }
    }
}

/// Hands available messages to waiting readers, oldest waiter first. Each is delivered open
/// (the reader's loop confirms it, or gives it back if the reader is gone), except to a
/// waiting peek, which is shown the head and leaves it there for the waiters behind it. A
/// waiter without room for the head message (`Waiter::room`) is passed over and keeps waiting.
pub(super) fn serve_waiters(
    engine: &Engine,
    state: &QueueRef,
    q: &mut QueueState,
    ops: &mut Vec<Op>,
    outbox: &mut Outbox,
) {
    let mut uncommitted = Uncommitted {
        ops: std::mem::take(ops),
    };
    let mut next = 0;
    while let Some(waiter) = q.waiters().get(next) {
        if q.items() == 0 {
            break;
        }
        let mode = match waiter.mode {
            TakeMode::Peek => TakeMode::Peek,
            TakeMode::Open | TakeMode::Remove => TakeMode::Open,
        };
        let room = waiter.room;
        match take_locked(
            engine,
            state,
            q,
            mode,
            message::now_ms,
            &mut uncommitted,
            room,
        ) {
            Ok(Some(taken)) => {
                let waiter = q.served(next).expect("checked present");
                let event = Event::Delivered {
                    conn: waiter.conn.conn,
                    wait_id: waiter.wait_id,
                    taken,
                };
                outbox.send(waiter.conn, event);
            }
            Err(Error::NoRoom(_)) => next += 1,
            Ok(None) | Err(_) => break,
        }
    }
    *ops = uncommitted.ops;
}
