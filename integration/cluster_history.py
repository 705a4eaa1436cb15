"""Histories of a replicated group's clients, and the checker that judges them (Jepsen-style).

Owns what clients did and were told, and the verdict on it, for test_cluster_partition.py (one
partition, short) and cluster_torture.py (scripts/cluster-torture: many faults, long):

- `Producer`: writes `p<producer>-<seq>` bodies through one member, memcache `set` or an mqmq
  `Put`, one at a time, and records every `Attempt` with its outcome (ack, refused with
  `no leader`, unknown, unexpected). A body is sent again until acknowledged, then the next seq.
- `Consumer`: a reliable reader on one member (`get q/open`, then `get q/close`, Kestrel-style,
  protocol-spec/memcache.md 5) that records every `Read`: what it was shown and whether the
  close that confirms it was answered.
- `drain_reliably`: everything left in the queue, read through the leader at the end.
- `examine` / `check_history`: every acknowledged write delivered, each producer's messages in
  the order sent, nothing acknowledged by a member while it was cut off (`cuts`), nothing shown
  to a reader and then lost, duplicates only where at-least-once allows them (writes of unknown
  outcome, opens not closed; a message delivered again after its close was answered is counted
  apart, `again-after-close`).
"""

import threading
import time
from dataclasses import dataclass

from test_cluster import NO_LEADER, PATIENCE, wait_for_leader

QUEUE = b"q"
STORED = b"STORED\r\n"
# A producer that has no reply within this many seconds gives the write up as unknown, closes the
# connection and sends the same message again on a new one.
REPLY_TIMEOUT = 15.0


def message_body(producer, seq):
    return b"p%d-%06d" % (producer, seq)


def parse_body(body):
    producer, seq = body[1:].split(b"-")
    return int(producer), int(seq)


@dataclass
class Attempt:
    producer: int
    seq: int
    node: int  # the member the producer's connection goes to
    sent: float  # time.monotonic() before sending
    answered: float  # when the outcome was known
    outcome: str  # "ack" (STORED, OK), "refused" (no leader: nothing done), "unknown", "unexpected"
    detail: str = ""

    @property
    def body(self):
        return message_body(self.producer, self.seq)

    def __repr__(self):
        detail = f" {self.detail}" if self.detail else ""
        return (f"<{self.body.decode()} via node {self.node}: {self.outcome}{detail}, "
                f"sent at {self.sent:.3f}, answered at {self.answered:.3f}>")


# --------------------------------------------------------------------------------------------
# Producers
# --------------------------------------------------------------------------------------------

MQMQ_OK = [b"OK"]
MQMQ_NO_LEADER = [b"Error", b"SERVER_NO_LEADER"]


class Producer(threading.Thread):
    """Writes `p<producer>-<seq>` to QUEUE through one member, one at a time, seq from 0, with
    memcache `set` (`protocol="mc"`) or an mqmq `Put` (`"mq"`). A message is sent again (same
    body) until acknowledged: after `no leader` on the same connection, after a closed connection
    or no reply within `reply_timeout` on a new one; then the next seq, after `pause` s."""

    def __init__(self, producer, node, server, halt, protocol="mc", pause=0.0,
                 reply_timeout=REPLY_TIMEOUT):
        super().__init__(name=f"producer-{producer}", daemon=True)
        self.producer, self.node, self.server, self.halt = producer, node, server, halt
        self.protocol, self.pause, self.reply_timeout = protocol, pause, reply_timeout
        self.attempts = []
        self.failure = None

    def run(self):
        try:
            self.produce()
        except BaseException as e:  # noqa: BLE001 -- reported by the caller, not lost in a thread
            self.failure = e

    def connect(self):
        if self.protocol == "mq":
            return self.server.mq(timeout=self.reply_timeout)
        return self.server.mc(timeout=self.reply_timeout)

    def write(self, conn, body):
        """"ack", "refused" or ("unexpected", reply)."""
        if self.protocol == "mq":
            reply = conn.put(QUEUE, body)
            ack, refused = MQMQ_OK, MQMQ_NO_LEADER
        else:
            reply = conn.set(QUEUE, body)
            ack, refused = STORED, NO_LEADER
        return "ack" if reply == ack else "refused" if reply == refused else ("unexpected", reply)

    def produce(self):
        seq, conn = 0, None
        while not self.halt.is_set():
            if conn is None:
                try:
                    conn = self.connect()
                except OSError:
                    time.sleep(0.05)
                    continue
            sent = time.monotonic()
            try:
                outcome = self.write(conn, message_body(self.producer, seq))
            except (OSError, AssertionError) as e:  # AssertionError: a truncated mqmq frame
                self.record(seq, sent, "unknown", type(e).__name__)
                conn.close()
                conn = None
                time.sleep(0.02)
                continue
            if outcome == "ack":
                self.record(seq, sent, "ack")
                seq += 1
                if self.pause:
                    time.sleep(self.pause)
            elif outcome == "refused":
                self.record(seq, sent, "refused")
                time.sleep(0.02)
            else:
                self.record(seq, sent, "unexpected", repr(outcome[1]))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def record(self, seq, sent, outcome, detail=""):
        self.attempts.append(
            Attempt(self.producer, seq, self.node, sent, time.monotonic(), outcome, detail))

    def acks_sent_after(self, moment):
        return [a for a in list(self.attempts) if a.outcome == "ack" and a.sent > moment]


# --------------------------------------------------------------------------------------------
# Reliable consumers
# --------------------------------------------------------------------------------------------


@dataclass
class Read:
    """One message shown to a reader. `fate`: "confirmed" (its close was answered), "given back"
    (the connection ended, or the close was refused, before a close was sent: the server gives
    it back), "close unknown" (a close was sent, no answer: removed or given back), "drained"
    (read by `drain_reliably`, whose next read confirms it)."""
    reader: str
    node: int
    body: bytes
    requested: float
    answered: float
    fate: str = "open"


class Consumer(threading.Thread):
    """Reads QUEUE through one member: `get q/open/t=<wait_ms>`, records what it was shown, then
    `get q/close` to confirm it, after `pause` s; on any error a new connection (the server gives
    back what the old one held). Refused (`no leader`) opens are retried after a moment."""

    def __init__(self, name, node, server, halt, pause=0.0, wait_ms=500,
                 reply_timeout=REPLY_TIMEOUT):
        super().__init__(name=f"consumer-{name}", daemon=True)
        self.reader, self.node, self.server, self.halt = name, node, server, halt
        self.pause, self.wait_ms, self.reply_timeout = pause, wait_ms, reply_timeout
        self.reads = []
        # Opens sent whose reply never came, (sent, given up): the server may have handed such
        # an open a message, held for the dead connection until it is given back.
        self.blind = []
        self.unexpected = []
        self.failure = None

    def run(self):
        try:
            self.consume()
        except BaseException as e:  # noqa: BLE001 -- reported by the caller
            self.failure = e

    def consume(self):
        conn = None
        open_key = b"get %s/open/t=%d" % (QUEUE, self.wait_ms)
        while not self.halt.is_set():
            if conn is None:
                try:
                    conn = self.server.mc(timeout=self.reply_timeout)
                except OSError:
                    time.sleep(0.05)
                    continue
            held = requested = None
            try:
                requested = time.monotonic()
                line = conn.cmd(open_key)
                if line == NO_LEADER:
                    time.sleep(0.02)
                    continue
                if line != b"END\r\n":
                    parts = line.split()
                    if parts[0] != b"VALUE":
                        raise ValueError(line)
                    body = conn.read_exactly(int(parts[3]) + 2)[:-2]
                    if conn.read_line() != b"END\r\n":
                        raise ValueError(b"no END after " + body)
                    held = Read(self.reader, self.node, body, requested, time.monotonic())
                    self.reads.append(held)
                    if self.pause:
                        time.sleep(self.pause)
                    held.fate = "close unknown"
                    reply = conn.cmd(b"get %s/close" % QUEUE)
                    if reply == b"END\r\n":
                        held.fate = "confirmed"
                    elif reply == NO_LEADER:
                        held.fate = "given back"
                        raise ValueError(reply)
                    else:
                        raise ValueError(reply)
            except (OSError, ValueError, AssertionError) as e:
                if held is not None and held.fate == "open":
                    held.fate = "given back"
                if held is None and requested is not None:
                    self.blind.append((requested, time.monotonic()))
                if isinstance(e, ValueError) and e.args and e.args[0] != NO_LEADER:
                    self.unexpected.append((self.node, time.monotonic(), e.args[0]))
                conn.close()
                conn = None
                time.sleep(0.02)
        if conn is not None:
            conn.close()


def drain_reliably(servers, patience=PATIENCE):
    """Every message of QUEUE, oldest first, read through the leader of `servers` (the members
    that run; any subset) with `/close/open` (each
    read confirms the one before), so that a connection closed by a leader change under load
    loses none: the message then held open is given back to the head and may come again first,
    and is counted once. `patience`: seconds the whole drain may take."""
    got, again, conn = [], None, None
    deadline = time.monotonic() + patience
    while True:
        assert time.monotonic() < deadline, f"draining did not end: {len(got)} read"
        try:
            if conn is None:
                leader, views = wait_for_leader(servers)
                conn = servers[[v["node"] for v in views].index(leader)].mc()
            line = conn.cmd(b"get " + QUEUE + b"/close/open")
            if line == NO_LEADER:
                time.sleep(0.02)
                continue
            if line == b"END\r\n":
                conn.close()
                return got
            parts = line.split()
            assert parts[0] == b"VALUE", line
            body = conn.read_exactly(int(parts[3]) + 2)[:-2]
            assert conn.read_line() == b"END\r\n"
        except OSError:
            if conn is not None:
                conn.close()
            conn, again = None, got[-1] if got else None
            continue
        if body != again:
            got.append(body)
        again = None


def wait_until(condition, what, timeout=PATIENCE, interval=0.02):
    """Polls `condition()` until truthy; returns (value, seconds taken). `what()` describes the
    state for the failure message."""
    started = time.monotonic()
    while not (value := condition()):
        assert time.monotonic() - started < timeout, f"{what()} after {timeout} s"
        time.sleep(interval)
    return value, time.monotonic() - started


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------


def examine(attempts, delivered, cuts=(), reads=(), faults=(), blind=()):
    """Judges what producers were told (`attempts`) against what readers were shown (`reads`,
    any order) and what was left in the queue at the end (`delivered`, in the order drained).
    `cuts`: (node, from, to) windows during which `node` was cut off from its peers (monotonic
    times); `faults`: when faults struck (a leader killed, paused, cut off); `blind`: readers'
    opens that got no reply, (sent, given up) (Consumer.blind). Returns (counts,
    problems): problems is a list of sentences, empty if all held."""
    by_body = {}
    for a in attempts:
        by_body.setdefault(a.body, []).append(a)
    acked = {body for body, tries in by_body.items() if any(a.outcome == "ack" for a in tries)}
    unknown = {body: sum(a.outcome == "unknown" for a in tries) for body, tries in by_body.items()}
    # Every time a body was handed out, in one list: the readers' reads, then the drain's, which
    # came after all of them and in their order.
    drain_start = max([r.answered for r in reads], default=0.0) + 1.0
    shows = list(reads) + [Read("drain", 0, body, drain_start + i * 1e-6, drain_start + i * 1e-6,
                                "drained") for i, body in enumerate(delivered)]
    copies, final, kept = {}, {}, set()
    for r in shows:
        copies[r.body] = copies.get(r.body, 0) + 1
        if r.fate in ("confirmed", "drained"):
            final[r.body] = final.get(r.body, 0) + 1
        if r.fate in ("confirmed", "drained", "close unknown"):
            kept.add(r.body)
    problems = []

    unexpected = [a for a in attempts if a.outcome == "unexpected"]
    if unexpected:
        problems.append(f"replies neither an acknowledgement nor `no leader`: {unexpected[:10]}")

    def cut_off(a):
        return any(a.node == node and start < a.sent < end for node, start, end in cuts)

    # A member cut off from its peers cannot replicate anything sent to it after the cut: until
    # its link is back, an acknowledgement there (its own or forwarded) is one no majority holds.
    cut_off_acks = [a for a in attempts if a.outcome == "ack" and cut_off(a)]
    if cut_off_acks:
        problems.append(f"the cut-off leader acknowledged {len(cut_off_acks)} writes sent after "
                        f"the partition: {cut_off_acks[:10]}")
    # Nor can such a write be committed, whatever the reply: a body sent nowhere else is never
    # delivered.
    stranded = {body for body, tries in by_body.items() if all(cut_off(a) for a in tries)}
    committed_stranded = sorted(body for body in copies if body in stranded)
    if committed_stranded:
        problems.append(f"delivered though only ever sent to the cut-off leader while cut off: "
                        f"{committed_stranded[:20]}")
    lost = [a for a in attempts if a.outcome == "ack" and a.body not in copies]
    split_brain = [a for a in lost if cut_off(a)]
    if split_brain:
        problems.append(f"split-brain acknowledgements (STORED by the cut-off member, not in the "
                        f"log): {split_brain[:20]}")
    if len(lost) > len(split_brain):
        problems.append(f"acknowledged writes lost: "
                        f"{[a for a in lost if a not in split_brain][:20]}")
    # Shown to a reader, never confirmed by one nor drained: a message a client saw, then lost.
    shown_lost = sorted(body for body in copies if body not in kept)
    if shown_lost:
        problems.append(f"shown to a reader, then lost: "
                        f"{[(b, [r for r in reads if r.body == b][:3]) for b in shown_lost[:10]]}")
    phantoms = sorted(body for body in copies if body not in by_body)
    if phantoms:
        problems.append(f"delivered but never sent: {phantoms[:20]}")
    only_refused = sorted(body for body in copies if body in by_body and body not in acked
                          and not unknown[body])
    if only_refused:
        problems.append(f"delivered though only ever refused with `no leader`: {only_refused[:20]}")
    # Each acknowledged attempt and each of unknown outcome may have been committed, no other;
    # each copy is consumed for good once (a confirmed read or the drain). More is a duplicate
    # that at-least-once does not explain (readers' unconfirmed opens may come again freely).
    committable = {body: sum(a.outcome in ("ack", "unknown") for a in tries)
                   for body, tries in by_body.items()}
    # A close answered by a leader that then fails may not be committed (its END does not wait
    # for the removal, as a take's reply does not: protocol-spec/cluster.md 2), so the message
    # comes again: counted apart, not a violation, if a fault (`faults`: monotonic times) struck
    # between that read (less a second, for the close that follows it) and the next showing.
    later_shown = {}
    for r in sorted(shows, key=lambda r: r.answered):
        later_shown.setdefault(r.body, []).append(r)
    after_close = {body: sum(r.fate == "confirmed" and any(r.answered - 1.0 < f < nxt.requested
                                                           for f in faults)
                             for r, nxt in zip(rs, rs[1:]))
                   for body, rs in later_shown.items()}
    again_after_close = sorted(body for body, n in final.items()
                               if n > 1 and n > committable.get(body, 0)
                               and n - committable.get(body, 0) <= after_close[body])
    bad_duplicates = sorted(body for body, n in final.items()
                            if n > 1 and n > committable.get(body, 0)
                            and body not in again_after_close)
    if bad_duplicates:
        problems.append(f"delivered more often (confirmed or drained) than acknowledged or sent "
                        f"with an unknown outcome (body, copies, attempts that may have committed): "
                        f"{[(b, final[b], committable.get(b, 0)) for b in bad_duplicates[:20]]}; "
                        f"the first one's showings: {later_shown[bad_duplicates[0]]}")
    # Per producer, first deliveries in the order sent (a message is sent only once the one
    # before it is acknowledged, so a late copy of an unknown write may come later, as a
    # duplicate, never first): no body first handed out by a read asked for after a later body
    # of the same producer was first handed out. Unless an open that got no reply was under way
    # then: it may have been handed the earlier body, held until its connection's end gave it
    # back (at least once: the reader never saw it, so its first showing is the later one).
    first = {}
    for r in sorted(shows, key=lambda r: r.answered):
        if r.body in by_body and r.body not in first:
            first[r.body] = r
    by_producer = {}
    for body, r in first.items():
        producer, seq = parse_body(body)
        by_producer.setdefault(producer, []).append((seq, r))
    out_of_order = []
    for producer, firsts in by_producer.items():
        earliest_later = None  # the first handing-out, in time, of any higher seq
        for seq, r in sorted(firsts, key=lambda x: -x[0]):
            if earliest_later is not None and r.requested > earliest_later[1].answered:
                at = earliest_later[1].answered
                if not any(sent < at <= given_up + 2.0 for sent, given_up in blind):
                    out_of_order.append((r.body, earliest_later[1].body))
            if earliest_later is None or r.answered < earliest_later[1].answered:
                earliest_later = (seq, r)
    if out_of_order:
        problems.append(f"out of order (body, later body of its producer handed out before it "
                        f"was asked for): {sorted(out_of_order)[:20]}")

    counts = {
        "acknowledged": len(acked),
        "delivered": len(shows),
        "unknown-outcome": sum(unknown.values()),
        "refused": sum(a.outcome == "refused" for a in attempts),
        "lost": len(lost),
        "duplicated": sum(n > 1 for n in copies.values()),
        "duplicates": len(shows) - len(copies),
        "shown": len(reads),
        "shown-then-lost": len(shown_lost),
        "again-after-close": len(again_after_close),
        "bad-duplicates": len(bad_duplicates),
        "out-of-order": len(out_of_order),
    }
    counts["again-after-close examples"] = [later_shown[b] for b in again_after_close[:5]]
    return counts, problems


def check_history(attempts, delivered, cuts=(), reads=(), faults=(), blind=()):
    """`examine`, raising AssertionError listing every violation; returns the counts (numbers
    only)."""
    counts, problems = examine(attempts, delivered, cuts, reads, faults, blind)
    assert not problems, "\n".join(problems)
    counts.pop("again-after-close examples")
    return counts
