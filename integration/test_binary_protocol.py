"""The memcache binary protocol on raw sockets: protocol-spec/memcache-binary.md, byte for byte
where it matters (statuses, opaque, quiet opcodes, NOOP ordering, refusals, the connection's
life). The client libraries that speak it are in test_binary_meta_clients.py."""

import socket
import struct
import threading
import time

import pytest

from conftest import BIN_HEADER, Op, binary_request, set_extras, wait_for

# Every test runs as users run the server (one event loop) and with several loops.
pytestmark = pytest.mark.event_loops

OK, NOT_FOUND, EXISTS, TOO_LARGE, INVALID, NOT_STORED, NON_NUMERIC = 0, 1, 2, 3, 4, 5, 6
AUTH_ERROR, UNKNOWN_COMMAND, OUT_OF_MEMORY = 0x20, 0x81, 0x82


def test_set_then_get_is_fifo_with_flags_opaque_echoed_and_cas_zero(server):
    with server.mb() as c:
        r = c.set(b"q", b"first", flags=7, opaque=0x11)
        assert (r.opcode, r.status, r.opaque, r.cas, r.value) == (Op.SET, OK, 0x11, 0, b"")
        assert c.set(b"q", b"second", flags=0xFFFFFFFF, opaque=0x12).status == OK
        r = c.get(b"q", opaque=0xDEADBEEF)
        assert (r.opcode, r.status, r.opaque, r.cas) == (Op.GET, OK, 0xDEADBEEF, 0)
        assert (r.flags, r.key, r.value) == (7, b"", b"first")
        r = c.get(b"q", opaque=2)
        assert (r.flags, r.value) == (0xFFFFFFFF, b"second")
        # An empty queue is a miss.
        r = c.get(b"q", opaque=3)
        assert (r.status, r.opaque, r.extras, r.value) == (NOT_FOUND, 3, b"", b"Not found")


def test_getk_returns_the_key_on_a_hit_and_a_miss(server):
    with server.mb() as c:
        assert c.set(b"kq", b"v", flags=3).status == OK
        r = c.request(Op.GETK, b"kq", opaque=5)
        assert (r.opcode, r.status, r.opaque, r.flags, r.key, r.value) == (Op.GETK, OK, 5, 3, b"kq", b"v")
        r = c.request(Op.GETK, b"kq", opaque=6)
        # The key, and no text: the body is the key alone, as memcached sends it.
        assert (r.status, r.key, r.value) == (NOT_FOUND, b"kq", b"")


def test_quiet_multi_get_answers_hits_then_the_noop(server):
    """GETKQ/GETQ ... NOOP, as dalli and pylibmc batch a multi-get: misses say nothing."""
    with server.mb() as c:
        assert c.set(b"a", b"1").status == OK
        assert c.set(b"c", b"3", flags=9).status == OK
        c.send(
            binary_request(Op.GETKQ, b"a", opaque=1)
            + binary_request(Op.GETKQ, b"b", opaque=2)
            + binary_request(Op.GETQ, b"c", opaque=3)
            + binary_request(Op.GETQ, b"d", opaque=4)
            + binary_request(Op.NOOP, opaque=5)
        )
        r = c.read_response()
        assert (r.opcode, r.opaque, r.key, r.value) == (Op.GETKQ, 1, b"a", b"1")
        r = c.read_response()
        assert (r.opcode, r.opaque, r.key, r.flags, r.value) == (Op.GETQ, 3, b"", 9, b"3")
        r = c.read_response()
        assert (r.opcode, r.status, r.opaque, r.value) == (Op.NOOP, OK, 5, b"")
        assert c.nothing_pending(0.2)


def test_setq_flood_then_noop_answers_once_everything_is_stored(server):
    n = 300
    with server.mb() as c, server.mc() as mc:
        c.send(
            b"".join(binary_request(Op.SETQ, b"sq", set_extras(i), b"m%d" % i, opaque=i) for i in range(n))
            + binary_request(Op.NOOP, opaque=0xAB)
        )
        r = c.read_response(timeout=30)
        assert (r.opcode, r.opaque) == (Op.NOOP, 0xAB), f"a quiet SET answered: {r!r}"
        # The NOOP came after every write was committed: all of them are there, in order.
        assert mc.stats(b"queue") == {"sq": f"{n}/0"}
        for i in range(n):
            r = c.get(b"sq")
            assert (r.flags, r.value) == (i, b"m%d" % i)


def test_quiet_requests_still_send_their_errors(make_server):
    server = make_server(args=["--max-message-size", "1024"])
    with server.mb() as c:
        c.send(
            binary_request(Op.SETQ, b"e", set_extras(), b"x" * 2000, opaque=1)  # too large
            + binary_request(Op.SETQ, b"e", set_extras(), b"ok", opaque=2)
            + binary_request(Op.SETQ, b"e", set_extras(), b"cas", opaque=3, cas=99)  # a cas
            + binary_request(Op.DELETEQ, b"nothing-here", opaque=4)  # a miss
            + binary_request(Op.GETQ, b"e/peek/open", opaque=5)  # bad option combination
            + binary_request(Op.NOOP, opaque=6)
        )
        got = [c.read_response() for _ in range(5)]
        assert [(r.opcode, r.status, r.opaque) for r in got] == [
            (Op.SETQ, TOO_LARGE, 1),
            (Op.SETQ, EXISTS, 3),
            (Op.DELETEQ, NOT_FOUND, 4),
            (Op.GETQ, INVALID, 5),
            (Op.NOOP, OK, 6),
        ]
        assert got[0].value == b"Too large."
        assert got[3].value == b"bad option combination"
        # Only the good SETQ stored anything.
        assert c.get(b"e").value == b"ok"
        assert c.get(b"e").status == NOT_FOUND


@pytest.mark.parametrize(
    "opcode, extras, status, text",
    [
        (Op.ADD, set_extras(), EXISTS, b"Data exists for key."),
        (Op.APPEND, b"", NOT_STORED, b"Not stored."),
        (Op.PREPEND, b"", NOT_STORED, b"Not stored."),
        (Op.INCREMENT, b"\0" * 20, NON_NUMERIC, b"Non-numeric server-side value for incr or decr"),
        (Op.DECREMENT, b"\0" * 20, NON_NUMERIC, b"Non-numeric server-side value for incr or decr"),
        (Op.TOUCH, b"\0" * 4, UNKNOWN_COMMAND, b"Unknown command"),
        (0x55, b"", UNKNOWN_COMMAND, b"Unknown command"),
        (Op.SASL_LIST_MECHS, b"", AUTH_ERROR, b"Auth failure."),
        (Op.SASL_AUTH, b"", AUTH_ERROR, b"Auth failure."),
    ],
    ids=["add", "append", "prepend", "incr", "decr", "touch", "unknown", "sasl-list", "sasl-auth"],
)
def test_opcodes_a_queue_cannot_honour_are_refused_and_the_connection_goes_on(
    server, opcode, extras, status, text
):
    with server.mb() as c:
        key = b"" if opcode == Op.SASL_LIST_MECHS else b"rq"
        value = b"PLAIN\0user\0secret" if opcode == Op.SASL_AUTH else b"v" if extras == set_extras() else b""
        r = c.request(opcode, key, extras, value, opaque=77)
        assert (r.opcode, r.status, r.opaque, r.value) == (opcode, status, 77, text)
        # Nothing was stored, and the next request is read where it starts.
        r = c.get(b"rq")
        assert r.status == NOT_FOUND
        assert c.request(Op.VERSION).status == OK


def test_a_misshapen_request_gets_invalid_arguments_and_its_body_is_skipped(server):
    with server.mb() as c:
        # A GET with extras (and a body that looks like a request: it must not run).
        inner = binary_request(Op.FLUSH)
        c.send(binary_request(Op.GET, b"q", extras=inner[:8], value=inner[8:], opaque=1))
        r = c.read_response()
        assert (r.opcode, r.status, r.opaque) == (Op.GET, INVALID, 1)
        # A SET without its 8 bytes of extras; a key over 250 bytes.
        assert c.request(Op.SET, b"q", value=b"x", opaque=2).status == INVALID
        assert c.set(b"k" * 251, b"x").status == INVALID
        assert c.set(b"q", b"kept").status == OK
        assert c.get(b"q").value == b"kept"


def test_contradicting_lengths_close_the_connection_after_the_error(server):
    with server.mb() as c:
        assert c.set(b"q", b"before").status == OK
        # key length 10 in a body of 4 bytes: nothing says where the next request starts.
        bad = BIN_HEADER.pack(0x80, Op.GET, 10, 0, 0, 0, 4, 9, 0) + b"abcd"
        c.send(binary_request(Op.NOOP, opaque=8) + bad)
        assert c.read_response().opaque == 8
        r = c.read_response()
        assert (r.opcode, r.status, r.opaque, r.value) == (Op.GET, INVALID, 9, b"Invalid arguments")
        assert c.closed_by_server(), "left open after a lost stream"
    with server.mb() as c:
        assert c.get(b"q").value == b"before"


def test_a_bad_magic_mid_stream_is_answered_then_closed(server):
    with server.mb() as c:
        c.send(binary_request(Op.NOOP, opaque=1) + b"\x81" + b"\0" * 23)
        assert c.read_response().opaque == 1
        r = c.read_response()
        assert (r.opcode, r.status, r.opaque) == (0, INVALID, 0)
        assert c.closed_by_server()


def test_a_value_over_the_limit_is_refused_from_its_header_and_skipped_unread(server):
    """Refused before its body arrives (nothing buffered for it); the body is then discarded
    as it streams in, and the request after it runs."""
    big = 3 << 20  # the default --max-message-size is 1 MiB
    with server.mb() as c:
        head = BIN_HEADER.pack(0x80, Op.SET, 1, 8, 0, 0, 8 + 1 + big, 4, 0)
        c.send(head)
        r = c.read_response(timeout=5)
        assert (r.opcode, r.status, r.opaque, r.value) == (Op.SET, TOO_LARGE, 4, b"Too large.")
        sender = threading.Thread(
            target=c.send, args=(set_extras() + b"q" + b"\x80" * big + binary_request(Op.NOOP, opaque=5),)
        )
        sender.start()
        assert c.read_response(timeout=30).opaque == 5
        sender.join()
        assert c.get(b"q").status == NOT_FOUND


def test_a_body_length_over_a_gigabyte_is_refused_without_allocating_it(server):
    with server.mb() as c:
        rss_before = _rss_mb(server)
        c.send(BIN_HEADER.pack(0x80, Op.SET, 1, 8, 0, 0, 0xFFFFFFF0, 6, 0) + b"\0" * 4096)
        r = c.read_response()
        assert (r.status, r.opaque, r.value) == (INVALID, 6, b"Invalid arguments")
        assert c.closed_by_server()
    assert _rss_mb(server) < rss_before + 64
    with server.mb() as c:
        assert c.request(Op.NOOP).status == OK


@pytest.mark.parametrize("dialect", ["binary", "text"])
def test_a_body_on_its_way_counts_against_the_input_budget(make_server, dialect):
    """A request whose length its header gives takes room for all of it at once, binary as text.
    With --input-budget 1m, one 900 KB body on its way holds most of the budget, a second one
    waits for room, and both are stored once their bodies arrive. (Each connection first sends
    a request that fixes its protocol: a connection's very first request is read before the
    framer knows its protocol, and then grows its buffer as it arrives, text as binary.)"""
    server = make_server(args=["--input-budget", "1m"])
    body = 900_000

    def head(key):
        if dialect == "text":
            return b"set %s 0 0 %d\r\n" % (key, body)
        return BIN_HEADER.pack(0x80, Op.SET, 1, 8, 0, 0, 9 + body, 0, 0) + set_extras() + key

    def stored(conn):
        if dialect == "text":
            return conn.read_line() == b"STORED\r\n"
        return conn.read_response().status == OK

    def tail(fill):
        return fill * (body - sent) + (b"\r\n" if dialect == "text" else b"")

    sent = 100_000  # past the 16 KiB a connection buffers for free
    with server.mb(timeout=30) as a, server.mb(timeout=30) as b:
        for conn in (a, b):
            if dialect == "text":
                conn.send(b"version\r\n")
                assert conn.read_line().startswith(b"VERSION ")
            else:
                assert conn.request(Op.NOOP).status == OK
        a.send(head(b"a") + b"x" * sent)
        used = wait_for(lambda: _input_budget_used(server) >= body - (16 << 10))
        assert used, f"a 900 KB body on its way took {_input_budget_used(server)} bytes"
        b.send(head(b"b") + b"y" * sent)
        time.sleep(0.3)
        assert _input_budget_used(server) <= 1 << 20, "the input budget was overdrawn"
        senders = [
            threading.Thread(target=a.send, args=(tail(b"x"),)),
            threading.Thread(target=b.send, args=(tail(b"y"),)),
        ]
        for t in senders:
            t.start()
        assert stored(a) and stored(b)
        for t in senders:
            t.join()
    with server.mb() as c:
        assert (c.get(b"a").value, c.get(b"b").value) == (b"x" * body, b"y" * body)
    assert wait_for(lambda: _input_budget_used(server) == 0), "input budget not given back"


def test_stat_groups(server):
    with server.mb() as c, server.mc() as mc:
        assert c.set(b"s1", b"x").status == OK
        assert c.set(b"s1", b"y").status == OK
        assert c.get(b"s1").status == OK
        stats = c.stat()
        assert int(stats[b"pid"]) == server.proc.pid
        assert stats[b"cmd_set"] == b"2" and stats[b"curr_items"] == b"1"
        assert c.stat(b"queue") == {b"s1": b"2/1"}
        assert mc.stats(b"queue") == {"s1": "2/1"}
        r = c.request(Op.STAT, b"slabs", opaque=3)
        assert (r.status, r.opaque) == (NOT_FOUND, 3)
        assert c.stat(b"reset") == {}
        assert c.stat()[b"cmd_set"] == b"0"


def test_version(server):
    with server.mb() as c, server.mc() as mc:
        r = c.request(Op.VERSION, opaque=12)
        assert (r.status, r.opaque) == (OK, 12)
        assert mc.cmd(b"version") == b"VERSION " + r.value + b"\r\n"


def test_delete_and_flush(server):
    with server.mb() as c:
        assert c.set(b"d", b"x").status == OK
        r = c.request(Op.DELETE, b"d", opaque=1)
        assert (r.opcode, r.status, r.opaque) == (Op.DELETE, OK, 1)
        assert c.request(Op.DELETE, b"d").status == NOT_FOUND
        assert c.stat(b"queue") == {}
        for q in (b"f1", b"f2"):
            assert c.set(q, b"x").status == OK
        assert c.request(Op.FLUSH, opaque=2).status == OK
        assert c.get(b"f1").status == NOT_FOUND and c.get(b"f2").status == NOT_FOUND
        # FLUSHQ with its optional expiration: silent, then the NOOP.
        assert c.set(b"f1", b"x").status == OK
        c.send(binary_request(Op.FLUSHQ, extras=b"\0" * 4, opaque=3) + binary_request(Op.NOOP, opaque=4))
        assert c.read_response().opaque == 4
        assert c.get(b"f1").status == NOT_FOUND


def test_quit_answers_then_closes_and_quitq_closes_silently(server):
    with server.mb() as c:
        c.send(binary_request(Op.SETQ, b"qq", set_extras(), b"x") + binary_request(Op.QUIT, opaque=7))
        r = c.read_response()
        assert (r.opcode, r.status, r.opaque) == (Op.QUIT, OK, 7)
        assert c.closed_by_server()
        assert c.buf == b""
    with server.mb() as c:
        c.send(binary_request(Op.GET, b"qq", opaque=1) + binary_request(Op.QUITQ))
        assert c.read_response().value == b"x"
        assert c.closed_by_server()
        assert c.buf == b"", "QUITQ answered"


def test_read_options_in_the_key(server):
    with server.mb() as c, server.mb() as other:
        for body in (b"j1", b"j2"):
            assert c.set(b"work", body).status == OK
        assert c.get(b"work/peek").value == b"j1"
        r = c.request(Op.GETK, b"work/open")
        assert (r.key, r.value) == (b"work/open", b"j1")
        # Held open: another connection gets the next one; abort gives j1 back.
        assert other.get(b"work").value == b"j2"
        assert c.get(b"work/abort").status == NOT_FOUND
        assert c.get(b"work/open").value == b"j1"
        assert c.get(b"work/close").status == NOT_FOUND
        assert other.get(b"work").status == NOT_FOUND
        # A plain read of a queue this connection holds open is refused (Kestrel's rule).
        assert c.set(b"work", b"j3").status == OK
        assert c.get(b"work/open").value == b"j3"
        r = c.get(b"work")
        assert (r.status, r.value) == (INVALID, b"an open message is held on this queue")
        # Closing the connection gives its open message back, once the server has seen the
        # close (on the connection's own event loop, unordered with the next connection's
        # commands: a CI run with 3 loops read the queue first and found it empty).
    with server.mb() as c:
        assert wait_for(lambda: c.get(b"work/peek").value == b"j3"), "never given back"
        assert c.get(b"work").value == b"j3"


def test_blocking_get_times_out_with_a_miss_and_is_woken_by_a_text_set(server):
    with server.mb() as c, server.mc() as mc:
        start = time.monotonic()
        r = c.request(Op.GETK, b"bq/t=500", opaque=1)
        elapsed = time.monotonic() - start
        assert (r.status, r.key) == (NOT_FOUND, b"bq/t=500")
        assert 0.4 <= elapsed < 3, f"answered after {elapsed:.2f} s"
        # GETQ blocks too: its miss is silent, so the NOOP after it shows when it ended.
        start = time.monotonic()
        c.send(binary_request(Op.GETQ, b"bq/t=300", opaque=2) + binary_request(Op.NOOP, opaque=3))
        assert c.read_response().opaque == 3
        assert time.monotonic() - start >= 0.25
        c.send_request(Op.GET, b"bq/t=5000", opaque=4)
        time.sleep(0.3)
        assert c.nothing_pending(0.05)
        assert mc.set("bq", "wake", flags=2) == b"STORED\r\n"
        r = c.read_response(timeout=5)
        assert (r.status, r.opaque, r.flags, r.value) == (OK, 4, 2, b"wake")


def test_keys_may_hold_any_byte(server):
    with server.mb() as c, server.mc() as mc:
        key = b"with space\r\n\xff"
        assert c.set(key, b"odd").status == OK
        assert mc.stats(b"queue") == {"with\\x20space\\x0d\\x0a\\xff": "1/0"}
        assert c.request(Op.GETK, key).key == key
        # Meta commands reach it with a base64 key.
        assert c.set(key, b"again").status == OK
        assert mc.cmd(b"mg d2l0aCBzcGFjZQ0K/w== b v") == b"VA 5\r\n"
        assert mc.read_line() == b"again\r\n"


def test_replies_wait_for_a_slow_reader_without_losing_any(server):
    """Back-pressure holds for binary as for text: many large GETs pipelined, read late."""
    n, size = 40, 500_000
    with server.mb(timeout=60) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        c.send(b"".join(binary_request(Op.SETQ, b"slow", set_extras(i), bytes([i]) * size) for i in range(n)))
        c.send(b"".join(binary_request(Op.GET, b"slow", opaque=i) for i in range(n)))
        time.sleep(1.0)
        for i in range(n):
            r = c.read_response(timeout=30)
            assert (r.opaque, r.flags, len(r.value), r.value[:1]) == (i, i, size, bytes([i]))


def _rss_mb(server):
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _input_budget_used(server):
    with socket.create_connection(server.addr, timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith('mqd_client_memory_bytes{budget="input"}'):
            return int(float(line.split()[-1]))
    raise AssertionError("no input budget in /metrics")
