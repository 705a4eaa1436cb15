"""Small helpers shared by the Kestrel-feature tests (reliable reads, blocking reads, expiry,
limits, fan-out, mixed load). Everything talks to the real server through conftest's raw
socket clients; nothing here fakes the server."""

import socket
import struct
import threading
import time

# The nine per-queue lines of `stats`, in the order protocol-spec/memcache.md section 7.1 gives.
QUEUE_STAT_FIELDS = [
    "items",
    "bytes",
    "total_items",
    "expired_items",
    "age",
    "discarded",
    "waiters",
    "open_transactions",
    "total_flushes",
]


def queue_stats(mc, queue):
    """The `STAT queue_<q>_<field>` values of `stats` for one queue, as ints (missing -> KeyError
    at the caller, so a missing line fails the test)."""
    if isinstance(queue, bytes):
        queue = queue.decode()
    stats = mc.stats()
    prefix = f"queue_{queue}_"
    out = {}
    for field in QUEUE_STAT_FIELDS:
        key = prefix + field
        if key in stats:
            out[field] = int(stats[key])
    return out


def stats_queue(mc):
    """`stats queue` as {name: (enqueued, dequeued)}."""
    out = {}
    for name, value in mc.stats(b"queue").items():
        enq, deq = value.split("/")
        out[name] = (int(enq), int(deq))
    return out


def raw_stats_lines(mc, arg=b""):
    """The `stats` reply as a list of raw lines (without END)."""
    mc.send(b"stats" + (b" " + arg if arg else b"") + b"\r\n")
    lines = []
    while True:
        line = mc.read_line()
        if line == b"END\r\n":
            return lines
        lines.append(line)


def get_values(mc, line):
    """Sends one `get ...` line (bytes, without CRLF) and returns [(key, flags, body)]; raises
    AssertionError on an error reply instead of a VALUE/END block."""
    mc.send(line + b"\r\n")
    first = mc.read_line()
    if not (first.startswith(b"VALUE ") or first == b"END\r\n"):
        raise AssertionError(f"{line!r} answered {first!r}")
    mc.buf[0:0] = first  # put it back and let the conftest parser read the whole block
    return [(k, f, b) for (k, f, b, _cas) in mc.read_values()]


def get_body(mc, key):
    """Body of the single VALUE a one-key get returns, or None on a bare END."""
    if isinstance(key, str):
        key = key.encode()
    values = get_values(mc, b"get " + key)
    assert len(values) <= 1, values
    if not values:
        return None
    assert values[0][0] == key, f"key not echoed as sent: {values[0][0]!r} != {key!r}"
    return values[0][2]


def drain(mc, queue):
    """Pops `queue` with plain gets until it is empty."""
    out = []
    while True:
        body = get_body(mc, queue if isinstance(queue, bytes) else queue.encode())
        if body is None:
            return out
        out.append(body)


def peek(mc, queue):
    q = queue if isinstance(queue, bytes) else queue.encode()
    return get_body(mc, q + b"/peek")


def reset_close(conn):
    """Closes a conftest Conn the way a killed process's socket goes: SO_LINGER 0 -> RST."""
    try:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()


def set_many(mc, queue, bodies, exptime=0, flags=0):
    """Pipelines one `set` per body and checks every reply is STORED."""
    if isinstance(queue, str):
        queue = queue.encode()
    request = b"".join(
        b"set %s %d %d %d\r\n%s\r\n" % (queue, flags, exptime, len(b), b) for b in bodies
    )
    mc.send(request)
    mc.expect(b"STORED\r\n" * len(bodies), timeout=60)


class Timed:
    """Measures how long a block takes: `with Timed() as t: ...; t.elapsed`."""

    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.monotonic() - self.start


class Background:
    """Runs `fn` in a thread; `.result()` joins and re-raises its exception, if any."""

    def __init__(self, fn, *args):
        self._value = None
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn, args):
        try:
            self._value = fn(*args)
        except BaseException as e:  # reported by result()
            self._error = e

    def result(self, timeout=30):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish in time"
        if self._error is not None:
            raise self._error
        return self._value

    def done(self):
        return not self._thread.is_alive()
