"""Mixed load on one queue: plain, blocking (`/t=`) and reliable (`/open` + `/close`) readers,
some aborting or dropping their connection mid-way, and mqmq readers, while producers of both
protocols write. Every message id produced must be consumed exactly once.

A reader that aborts, or disconnects before its `/close` is answered, does not count the
message as consumed: it goes back to the queue and someone else must take it.

Contract: protocol-spec/memcache.md sections 2, 4 and 5, mqmq.md section 2."""

import collections
import random
import threading
import time

import pytest

from conftest import frame, wait_for
from kestrel_helpers import get_values, queue_stats, reset_close, stats_queue

# Every test runs as users run the server (one event loop) and with several loops.
pytestmark = pytest.mark.event_loops

QUEUE = b"load"
PRODUCERS = 3
PER_PRODUCER = 1000
BATCH = 10
DEADLINE = 45.0  # seconds for everything to be consumed (normally a few)


class Ledger:
    """Thread-safe record of what every consumer took for good."""

    def __init__(self):
        self.lock = threading.Lock()
        self.consumed = collections.Counter()
        self.by_reader = collections.Counter()
        self.events = collections.Counter()
        self.errors = []

    def took(self, reader, bodies):
        with self.lock:
            for body in bodies:
                self.consumed[body] += 1
            self.by_reader[reader] += len(bodies)

    def event(self, name):
        with self.lock:
            self.events[name] += 1

    def total(self):
        with self.lock:
            return sum(self.consumed.values())

    def fail(self, who, error):
        with self.lock:
            self.errors.append(f"{who}: {error!r}")


def expected_ids():
    return {b"p%d-%04d" % (p, i) for p in range(PRODUCERS) for i in range(PER_PRODUCER)}


# Producers ------------------------------------------------------------------------------------


def produce_memcache(server, p, ledger):
    try:
        with server.mc(timeout=30) as c:
            for start in range(0, PER_PRODUCER, BATCH):
                bodies = [b"p%d-%04d" % (p, i) for i in range(start, start + BATCH)]
                c.send(b"".join(b"set load 0 0 %d\r\n%s\r\n" % (len(b), b) for b in bodies))
                c.expect(b"STORED\r\n" * len(bodies), timeout=30)
    except Exception as e:
        ledger.fail(f"memcache producer {p}", e)


def produce_mqmq(server, p, ledger):
    try:
        with server.mq(timeout=30) as c:
            for start in range(0, PER_PRODUCER, BATCH):
                bodies = [b"p%d-%04d" % (p, i) for i in range(start, start + BATCH)]
                c.send(b"".join(frame(b"Put", QUEUE, b) for b in bodies))
                for _ in bodies:
                    assert c.read_frame(timeout=30) == [b"OK"]
    except Exception as e:
        ledger.fail(f"mqmq producer {p}", e)


# Consumers ------------------------------------------------------------------------------------


def one_value(values, key):
    assert len(values) <= 1, values
    if not values:
        return None
    assert values[0][0] == key, values
    return values[0][2]


def plain_reader(server, stop, ledger, name):
    """`get load` in a loop, with a peek now and then (peeks must not consume)."""
    try:
        with server.mc() as c:
            n = 0
            while not stop.is_set():
                n += 1
                if n % 7 == 0:
                    get_values(c, b"get load/peek")
                body = one_value(get_values(c, b"get load"), QUEUE)
                if body is None:
                    time.sleep(0.005)
                else:
                    ledger.took(name, [body])
    except Exception as e:
        ledger.fail(name, e)


def blocking_reader(server, stop, ledger, name):
    """`get load/t=200`, sometimes two keys in one command."""
    try:
        with server.mc() as c:
            n = 0
            while not stop.is_set():
                n += 1
                if n % 5 == 0:
                    key = QUEUE + b"/t=100"
                    values = get_values(c, b"get " + key + b" " + key)
                    assert all(v[0] == key for v in values), values
                    ledger.took(name, [v[2] for v in values])
                else:
                    key = QUEUE + b"/t=200"
                    body = one_value(get_values(c, b"get " + key), key)
                    if body is not None:
                        ledger.took(name, [body])
    except Exception as e:
        ledger.fail(name, e)


def reliable_reader(server, stop, ledger, name):
    """`/t=/open`, then `/close`; counted only once the `/close` is answered."""
    try:
        with server.mc() as c:
            while not stop.is_set():
                key = QUEUE + b"/t=200/open"
                body = one_value(get_values(c, b"get " + key), key)
                if body is None:
                    continue
                c.send(b"get load/close\r\n")
                c.expect(b"END\r\n")
                ledger.took(name, [body])
    except Exception as e:
        ledger.fail(name, e)


def close_open_reader(server, stop, ledger, name):
    """One round trip per message: `/close/open` confirms the previous and opens the next."""
    try:
        with server.mc() as c:
            held = None
            while not stop.is_set():
                if held is None:
                    key = QUEUE + b"/t=200/open"
                else:
                    key = QUEUE + b"/close/open"
                body = one_value(get_values(c, b"get " + key), key)
                if held is not None:
                    ledger.took(name, [held])  # the reply came: the close was done
                held = body
            if held is not None:
                c.send(b"get load/close\r\n")
                c.expect(b"END\r\n")
                ledger.took(name, [held])
    except Exception as e:
        ledger.fail(name, e)


def aborting_reader(server, stop, ledger, name, seed):
    """Opens one or two messages; aborts about a third of the time (nothing consumed), closes
    otherwise."""
    rng = random.Random(seed)
    try:
        with server.mc() as c:
            while not stop.is_set():
                if rng.random() < 0.3:
                    line = b"get load/t=100/open load/open"
                else:
                    line = b"get load/t=200/open"
                values = get_values(c, line)
                if not values:
                    continue
                if rng.random() < 0.35:
                    c.send(b"get load/abort\r\n")
                    c.expect(b"END\r\n")
                    ledger.event("aborted")
                else:
                    c.send(b"get load/close\r\n")
                    c.expect(b"END\r\n")
                    ledger.took(name, [v[2] for v in values])
    except Exception as e:
        ledger.fail(name, e)


def disconnecting_reader(server, stop, ledger, name, seed):
    """Opens a message; a quarter of the time drops the connection instead of confirming
    (a plain close or an RST), then reconnects."""
    rng = random.Random(seed)
    try:
        c = server.mc()
        try:
            while not stop.is_set():
                key = QUEUE + b"/t=200/open"
                body = one_value(get_values(c, b"get " + key), key)
                if body is None:
                    continue
                if rng.random() < 0.25:
                    if rng.random() < 0.5:
                        c.close()
                        ledger.event("dropped (close)")
                    else:
                        reset_close(c)
                        ledger.event("dropped (reset)")
                    c = server.mc()
                    continue
                c.send(b"get load/close\r\n")
                c.expect(b"END\r\n")
                ledger.took(name, [body])
        finally:
            c.close()
    except Exception as e:
        ledger.fail(name, e)


def mqmq_reader(server, stop, ledger, name):
    try:
        with server.mq() as c:
            while not stop.is_set():
                reply = c.get(QUEUE, 200, read_timeout=15)
                if reply[0] == b"OK":
                    ledger.took(name, [reply[1]])
                else:
                    assert reply == [b"Timeout"], reply
    except Exception as e:
        ledger.fail(name, e)


def check_exactly_once(ledger, expected):
    consumed = ledger.consumed
    missing = expected - set(consumed)
    duplicated = {k: v for k, v in consumed.items() if v > 1}
    unknown = set(consumed) - expected
    assert not unknown, f"consumed ids nobody produced: {sorted(unknown)[:10]}"
    assert not missing, f"{len(missing)} ids never consumed, e.g. {sorted(missing)[:10]}"
    assert not duplicated, (
        f"{len(duplicated)} ids consumed more than once, e.g. {sorted(duplicated.items())[:10]}"
    )


def test_mixed_readers_and_producers_consume_every_message_exactly_once(server):
    ledger = Ledger()
    stop = threading.Event()
    consumers = [
        threading.Thread(target=plain_reader, args=(server, stop, ledger, "plain")),
        threading.Thread(target=blocking_reader, args=(server, stop, ledger, "blocking")),
        threading.Thread(target=reliable_reader, args=(server, stop, ledger, "reliable")),
        threading.Thread(target=close_open_reader, args=(server, stop, ledger, "close/open")),
        threading.Thread(target=aborting_reader, args=(server, stop, ledger, "aborting", 1)),
        threading.Thread(
            target=disconnecting_reader, args=(server, stop, ledger, "disconnecting", 2)
        ),
        threading.Thread(target=mqmq_reader, args=(server, stop, ledger, "mqmq")),
    ]
    producers = [
        threading.Thread(target=produce_memcache, args=(server, 0, ledger)),
        threading.Thread(target=produce_mqmq, args=(server, 1, ledger)),
        threading.Thread(target=produce_memcache, args=(server, 2, ledger)),
    ]
    total = PRODUCERS * PER_PRODUCER
    with server.mc() as c:
        # A fan-out child nobody reads: it must end up with one copy of every message.
        assert c.set("load+audit", "init") == b"STORED\r\n"
        assert get_values(c, b"get load+audit") == [(b"load+audit", 0, b"init")]
    started = time.monotonic()
    try:
        for t in consumers + producers:
            t.start()
        for t in producers:
            t.join(DEADLINE)
        assert not ledger.errors, ledger.errors
        wait_for(
            lambda: ledger.total() >= total or ledger.errors,
            timeout=max(1.0, DEADLINE - (time.monotonic() - started)),
            interval=0.05,
        )
        # Let readers settle a moment: a duplicate delivered late would show up now.
        time.sleep(0.3)
    finally:
        stop.set()
        for t in consumers:
            t.join(15)
    assert not any(t.is_alive() for t in consumers), "a consumer hung"
    assert not ledger.errors, ledger.errors
    check_exactly_once(ledger, expected_ids())
    # Every kind of reader took part, and aborts and drops really happened.
    assert all(ledger.by_reader[name] > 0 for name in
               ["plain", "blocking", "reliable", "close/open", "aborting", "disconnecting", "mqmq"]), (
        ledger.by_reader
    )
    assert ledger.events["aborted"] > 0 and (
        ledger.events["dropped (close)"] + ledger.events["dropped (reset)"] > 0
    ), ledger.events
    # The server agrees: nothing readable or open is left, and the totals add up.
    with server.mc() as c:
        assert wait_for(lambda: queue_stats(c, "load")["open_transactions"] == 0, timeout=5)
        qs = queue_stats(c, "load")
        assert (qs["items"], qs["open_transactions"], qs["total_items"]) == (0, 0, total), qs
        assert stats_queue(c)["load"] == (total, total)
        assert get_values(c, b"get load") == []
        copies = collections.Counter()
        while True:
            values = get_values(c, b"get " + b" ".join([b"load+audit"] * 100))
            copies.update(v[2] for v in values)
            if len(values) < 100:
                break
    assert set(copies) == expected_ids() and max(copies.values()) == 1, (
        f"fan-out copies: {sum(copies.values())} for {total} messages, "
        f"{len(expected_ids() - set(copies))} missing"
    )


class RestartGate:
    """Lets the main thread make every reader hold an open message when the server goes down."""

    def __init__(self, hold_after):
        self.hold_after = hold_after  # readers set `hold` once this many were consumed
        self.hold = threading.Event()  # readers: keep the next message open, do not close it
        self.resume = threading.Event()  # the server is back
        self.lock = threading.Lock()
        self.holding = []  # bodies held open at the moment of the restart

    def held(self, body):
        with self.lock:
            self.holding.append(body)


def _reliable_consumer_with_reconnect(server, stop, ledger, name, gate):
    """A reliable reader that survives server restarts: on any connection error it reconnects.
    A message is counted only when its `/close` was answered."""
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                if gate.hold.is_set() and not gate.resume.is_set():
                    time.sleep(0.02)
                    continue
                conn = server.mc(timeout=5)
            key = QUEUE + b"/t=100/open"
            body = one_value(get_values(conn, b"get " + key), key)
            if body is None:
                continue
            if gate.hold.is_set() and not gate.resume.is_set():
                gate.held(body)
                gate.resume.wait(60)  # the server goes down meanwhile
            conn.send(b"get load/close\r\n")
            conn.expect(b"END\r\n")
            ledger.took(name, [body])
            if ledger.total() >= gate.hold_after:
                gate.hold.set()
        except (OSError, ConnectionError, TimeoutError, AssertionError) as e:
            ledger.event(f"reconnect after {type(e).__name__}")
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)
    if conn is not None:
        conn.close()


def _restart_under_reliable_load(server, crash, readers=4):
    n = 1000
    with server.mc(timeout=60) as c:
        bodies = [b"r-%04d" % i for i in range(n)]
        c.send(b"".join(b"set load 0 0 %d\r\n%s\r\n" % (len(b), b) for b in bodies))
        c.expect(b"STORED\r\n" * n, timeout=60)
    ledger = Ledger()
    stop = threading.Event()
    gate = RestartGate(hold_after=n // 4)
    threads = [
        threading.Thread(
            target=_reliable_consumer_with_reconnect, args=(server, stop, ledger, f"r{i}", gate)
        )
        for i in range(readers)
    ]
    for t in threads:
        t.start()
    try:
        assert gate.hold.wait(30), "no progress"
        assert wait_for(lambda: len(gate.holding) == readers, timeout=10), gate.holding
        held = list(gate.holding)
        server.restart(crash=crash)
        assert ledger.total() < n
        gate.resume.set()
        wait_for(lambda: len(ledger.consumed) >= n, timeout=30)
        time.sleep(0.3)
    finally:
        gate.resume.set()
        stop.set()
        for t in threads:
            t.join(15)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert all(ledger.consumed[b] >= 1 for b in held), "a message open at the restart was lost"
    return ledger, {b"r-%04d" % i for i in range(n)}


def test_reliable_readers_across_a_sigterm_restart_lose_and_duplicate_nothing(server):
    """Open-but-unconfirmed messages are given back on shutdown and delivered again after the
    restart; confirmed ones stay confirmed (clean shutdown commits everything)."""
    ledger, expected = _restart_under_reliable_load(server, crash=False)
    check_exactly_once(ledger, expected)
    with server.mc() as c:
        assert get_values(c, b"get load") == []


def test_reliable_readers_across_a_kill_9_lose_nothing(server):
    """After a crash, a confirmation not yet fsync'd may be redone (spec section 9: delivered
    again), but no message may be lost."""
    ledger, expected = _restart_under_reliable_load(server, crash=True)
    missing = expected - set(ledger.consumed)
    assert not missing, f"{len(missing)} messages lost across kill -9: {sorted(missing)[:10]}"
    assert set(ledger.consumed) == expected
    with server.mc() as c:
        assert get_values(c, b"get load") == []
