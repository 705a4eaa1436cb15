"""The memcache ASCII protocol with MemcacheQ queue semantics, checked byte for byte."""

import re

import pytest

from conftest import wait_for
from kestrel_helpers import queue_stats


def test_classic_memcacheq_session(server):
    """The session from MemcacheQ's documentation, exactly."""
    with server.mc() as c:
        c.send(b"set q4 0 0 5\r\nhello\r\n")
        c.expect(b"STORED\r\n")
        c.send(b"set q4 0 0 5\r\nworld\r\n")
        c.expect(b"STORED\r\n")
        c.send(b"stats queue\r\n")
        c.expect(b"STAT q4 2/0\r\nEND\r\n")
        c.send(b"get q4\r\n")
        c.expect(b"VALUE q4 0 5\r\nhello\r\nEND\r\n")
        c.send(b"stats queue\r\n")
        c.expect(b"STAT q4 2/1\r\nEND\r\n")
        assert c.nothing_pending()


def test_set_get_is_fifo(server):
    with server.mc() as c:
        bodies = [b"m%d" % i for i in range(10)]
        for body in bodies:
            assert c.set("fifo", body) == b"STORED\r\n"
        got = [c.get_one("fifo") for _ in bodies]
        assert got == bodies
        c.send(b"get fifo\r\n")
        c.expect(b"END\r\n")


def test_binary_body_with_crlf_inside(server):
    body = bytes(range(256)) + b"\r\nEND\r\n" + b"\x00" * 10
    with server.mc() as c:
        assert c.set("bin", body) == b"STORED\r\n"
        assert c.get("bin") == [(b"bin", 0, body, None)]


def test_empty_body(server):
    with server.mc() as c:
        c.send(b"set e 0 0 0\r\n\r\n")
        c.expect(b"STORED\r\n")
        c.send(b"get e\r\n")
        c.expect(b"VALUE e 0 0\r\n\r\nEND\r\n")


@pytest.mark.parametrize("flags", [0, 1, 12345, 2**31, 2**32 - 1])
def test_flags_are_echoed_32_bit(server, flags):
    with server.mc() as c:
        c.send(b"set fl %d 0 3\r\nabc\r\n" % flags)
        c.expect(b"STORED\r\n")
        c.send(b"get fl\r\n")
        c.expect(b"VALUE fl %d 3\r\nabc\r\nEND\r\n" % flags)


def test_flags_over_32_bit_are_refused(server):
    with server.mc() as c:
        c.send(b"set fl 4294967296 0 3\r\n")
        c.expect(b"CLIENT_ERROR bad command line format\r\n")
        c.send(b"abc\r\n")  # the announced body is discarded unread
        c.send(b"get fl\r\n")
        c.expect(b"END\r\n")


def test_exptime_zero_and_flags_per_message(server):
    with server.mc() as c:
        c.send(b"set m 7 0 1\r\na\r\nset m 9 0 1\r\nb\r\n")
        c.expect(b"STORED\r\nSTORED\r\n")
        c.send(b"get m\r\nget m\r\n")
        c.expect(b"VALUE m 7 1\r\na\r\nEND\r\nVALUE m 9 1\r\nb\r\nEND\r\n")


def test_multi_key_get_in_request_order_and_repeats_pop_twice(server):
    with server.mc() as c:
        for q, body in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1")]:
            assert c.set(q, body) == b"STORED\r\n"
        c.send(b"get b nosuch a c a\r\n")
        c.expect(
            b"VALUE b 0 2\r\nb1\r\n"
            b"VALUE a 0 2\r\na1\r\n"
            b"VALUE c 0 2\r\nc1\r\n"
            b"VALUE a 0 2\r\na2\r\n"
            b"END\r\n"
        )
        assert c.get_one("a") == b"a3"
        assert c.get("a", "b", "c") == []


def test_get_of_empty_or_unknown_queue_is_end(server):
    with server.mc() as c:
        c.send(b"get never_created\r\n")
        c.expect(b"END\r\n")
        assert c.set("drained", "x") == b"STORED\r\n"
        assert c.get_one("drained") == b"x"
        c.send(b"get drained\r\n")
        c.expect(b"END\r\n")


def test_get_never_blocks(server):
    import time

    with server.mc() as c:
        start = time.monotonic()
        c.send(b"get empty1 empty2 empty3\r\n")
        c.expect(b"END\r\n")
        assert time.monotonic() - start < 2.0


def test_gets_adds_a_cas_field(server):
    with server.mc() as c:
        assert c.set("g", "one") == b"STORED\r\n"
        assert c.set("g", "two") == b"STORED\r\n"
        c.send(b"gets g\r\n")
        line = c.read_line()
        m = re.fullmatch(rb"VALUE g 0 3 (\d+)\r\n", line)
        assert m, f"gets reply without a cas field: {line!r}"
        c.expect(b"one\r\nEND\r\n")
        values = c.get("g", verb=b"gets")
        assert len(values) == 1 and values[0][2] == b"two" and values[0][3] is not None
        assert values[0][3] != int(m.group(1)), "two messages got the same cas value"


def test_delete_then_not_found(server):
    with server.mc() as c:
        assert c.set("d", "1") == b"STORED\r\n"
        assert c.set("d", "2") == b"STORED\r\n"
        c.send(b"delete d\r\n")
        c.expect(b"DELETED\r\n")
        c.send(b"get d\r\n")
        c.expect(b"END\r\n")
        c.send(b"delete d\r\n")
        c.expect(b"NOT_FOUND\r\n")
        c.send(b"delete never_was\r\n")
        c.expect(b"NOT_FOUND\r\n")
        assert "d" not in c.stats(b"queue")
        # The name can be used again.
        assert c.set("d", "3") == b"STORED\r\n"
        assert c.get_one("d") == b"3"


def test_noreply_set_and_delete(server):
    with server.mc() as c:
        c.send(b"set nr 0 0 2 noreply\r\nhi\r\n")
        c.send(b"set nr 0 0 2 noreply\r\nho\r\n")
        c.send(b"get nr\r\n")
        # No STORED lines: the first thing back is the value.
        c.expect(b"VALUE nr 0 2\r\nhi\r\nEND\r\n")
        c.send(b"delete nr noreply\r\n")
        c.send(b"get nr\r\n")
        c.expect(b"END\r\n")
        c.send(b"delete nr noreply\r\n")
        c.send(b"version\r\n")
        line = c.read_line()
        assert line.startswith(b"VERSION "), f"noreply delete answered: {line!r}"


def test_stats_has_memcacheq_and_memcached_keys(server):
    memcacheq_keys = [
        "pid", "uptime", "time", "version", "pointer_size", "rusage_user", "rusage_system",
        "curr_connections", "total_connections", "connection_structures", "get_cmds",
        "get_hits", "set_cmds", "set_hits", "bytes_read", "bytes_written", "threads",
    ]
    with server.mc() as c:
        stats = c.stats()
        for key in memcacheq_keys + ["cmd_get", "cmd_set", "get_misses", "curr_items"]:
            assert key in stats, f"stats lacks {key}: {sorted(stats)}"
        assert int(stats["pid"]) == server.proc.pid
        assert re.fullmatch(r"\d+\.\d+\.\d+", stats["version"])
        assert int(stats["curr_connections"]) >= 1

        assert c.set("s", "a") == b"STORED\r\n"
        assert c.set("s", "b") == b"STORED\r\n"
        assert c.get_one("s") == b"a"
        assert c.get_one("nothing_here") is None
        stats = c.stats()
        assert int(stats["cmd_set"]) == 2
        assert int(stats["set_cmds"]) == 2
        assert int(stats["cmd_get"]) == 2
        assert int(stats["get_hits"]) == 1
        assert int(stats["get_misses"]) == 1
        assert int(stats["curr_items"]) == 1
        assert int(stats["bytes_read"]) > 0
        assert int(stats["bytes_written"]) > 0


def test_stats_threads_follows_the_flag(make_server):
    server = make_server(["--threads", "1"])
    with server.mc() as c:
        assert c.stats()["threads"] == "1"
        assert c.set("t", "x") == b"STORED\r\n"
        assert c.get_one("t") == b"x"


def test_default_max_message_size_is_one_mib(server):
    with server.mc(timeout=30) as c:
        body = b"b" * (1 << 20)
        assert c.set("mib", body) == b"STORED\r\n"
        c.send(b"set mib 0 0 %d\r\n" % (len(body) + 1) + body + b"b\r\n")
        c.expect(b"SERVER_ERROR object too large for cache\r\n")
        assert c.get_one("mib") == body
        assert c.get_one("mib") is None


@pytest.mark.parametrize("line", [b"set q 0 0 -1", b"set q 0 0 +1", b"set q 0 x 1", b"set q x 0 1",
                                  b"set q 0 0 1 bogus", b"set q 0 0 99999999999999999999999"])
def test_bad_set_header_is_client_error(server, line):
    with server.mc() as c:
        # A line whose length can be read has that body discarded; the others have none.
        readable_length = line.split(b" ")[4].isdigit() and len(line.split(b" ")[4]) < 12
        c.send(line + b"\r\n" + (b"x\r\n" if readable_length else b""))
        c.expect(b"CLIENT_ERROR bad command line format\r\n")
        assert c.set("q", "ok") == b"STORED\r\n"
        assert c.get_one("q") == b"ok"


def test_stats_reset(server):
    with server.mc() as c:
        assert c.set("r", "a") == b"STORED\r\n"
        assert c.get_one("r") == b"a"
        c.send(b"stats reset\r\n")
        c.expect(b"RESET\r\n")
        stats = c.stats()
        assert int(stats["cmd_set"]) == 0
        assert int(stats["cmd_get"]) == 0
        # Queue totals are history and survive a reset.
        c.send(b"stats queue\r\n")
        c.expect(b"STAT r 1/1\r\nEND\r\n")


def test_stats_queue_lists_every_queue(server):
    with server.mc() as c:
        c.send(b"stats queue\r\n")
        c.expect(b"END\r\n")
        for q, n in [("beta", 2), ("alpha", 1)]:
            for i in range(n):
                assert c.set(q, str(i)) == b"STORED\r\n"
        assert c.get_one("beta") == b"0"
        assert c.stats(b"queue") == {"alpha": "1/0", "beta": "2/1"}


def test_stats_unknown_argument_is_error(server):
    with server.mc() as c:
        c.send(b"stats bogus\r\n")
        c.expect(b"ERROR\r\n")
        c.send(b"version\r\n")
        assert c.read_line().startswith(b"VERSION ")


def test_version(server):
    with server.mc() as c:
        line = c.cmd(b"version")
        assert re.fullmatch(rb"VERSION \d+\.\d+\.\d+\r\n", line), line


def test_verbosity(server):
    with server.mc() as c:
        assert c.cmd(b"verbosity 1") == b"OK\r\n"
        assert c.cmd(b"verbosity 0") == b"OK\r\n"


def test_quit_closes_without_reply(server):
    with server.mc() as c:
        c.send(b"quit\r\n")
        assert c.closed_by_server()
        assert c.buf == b""


@pytest.mark.parametrize(
    "line",
    [b"bogus", b"add q 0 0 1", b"incr q 1", b"SET q 0 0 1", b"", b"get", b"set q 0 0"],
)
def test_unknown_or_malformed_command_is_error(server, line):
    with server.mc() as c:
        # The first byte picks the protocol (a bare "\r\n" would start an mqmq frame), so the
        # connection first says something in memcache.
        assert c.cmd(b"version").startswith(b"VERSION ")
        c.send(line + b"\r\n")
        c.expect(b"ERROR\r\n")
        # The connection keeps working.
        assert c.set("after", "ok") == b"STORED\r\n"


def test_bare_newline_line_endings(server):
    """Lines end at \\n; the \\r is optional on command lines."""
    with server.mc() as c:
        c.send(b"set lf 0 0 2\nhi\r\n")
        c.expect(b"STORED\r\n")
        c.send(b"get lf\n")
        c.expect(b"VALUE lf 0 2\r\nhi\r\nEND\r\n")


def test_bad_data_chunk(server):
    with server.mc() as c:
        # 3 bytes announced, then "lo" sits where the closing \r\n must be.
        c.send(b"set bad 0 0 3\r\nhello")
        c.expect(b"CLIENT_ERROR bad data chunk\r\n")
        c.send(b"get bad\r\n")
        c.expect(b"END\r\n")
        assert c.set("bad", "fine") == b"STORED\r\n"
        assert c.get_one("bad") == b"fine"


def test_too_large_body_is_refused_and_skipped(make_server):
    server = make_server(["--max-message-size", "100"])
    with server.mc() as c:
        assert c.set("big", b"x" * 100) == b"STORED\r\n"
        # The reply comes before the body is sent: the server need not read it first.
        c.send(b"set big 0 0 5000\r\n")
        c.expect(b"SERVER_ERROR object too large for cache\r\n")
        # The body, which looks like commands, is skipped unread.
        body = (b"set big 0 0 1\r\nZ\r\n" * 400)[:5000]
        c.send(body + b"\r\n")
        c.send(b"get big\r\n")
        c.expect(b"VALUE big 0 100\r\n" + b"x" * 100 + b"\r\nEND\r\n")
        c.send(b"get big\r\n")
        c.expect(b"END\r\n")
        assert c.set("big", "small") == b"STORED\r\n"
        assert c.get_one("big") == b"small"


def test_queue_name_length_limit(server):
    with server.mc() as c:
        ok = b"q" * 250
        assert c.set(ok, "fits") == b"STORED\r\n"
        assert c.get(ok) == [(ok, 0, b"fits", None)]
        long = b"q" * 251
        c.send(b"set " + long + b" 0 0 1\r\nx\r\n")
        c.expect(b"CLIENT_ERROR bad command line format\r\n")
        c.send(b"get " + long + b"\r\n")
        c.expect(b"CLIENT_ERROR bad command line format\r\n")
        c.send(b"delete " + long + b"\r\n")
        c.expect(b"CLIENT_ERROR bad command line format\r\n")
        c.send(b"stats queue\r\n")
        c.expect(b"STAT " + ok + b" 1/1\r\nEND\r\n")


def test_too_long_name_in_multi_get_loses_nothing(server):
    """MemcacheQ's defect: popping earlier keys, then failing on a long one, lost them."""
    with server.mc() as c:
        assert c.set("keep", "precious") == b"STORED\r\n"
        c.send(b"get keep " + b"z" * 251 + b"\r\n")
        c.expect(b"CLIENT_ERROR bad command line format\r\n")
        assert c.get_one("keep") == b"precious"


def test_line_too_long_closes(server):
    with server.mc() as c:
        c.send(b"set " + b"a" * 3000)
        c.expect(b"CLIENT_ERROR line too long\r\n")
        assert c.closed_by_server()
    with server.mc() as c:
        assert c.set("still", "up") == b"STORED\r\n"


def test_long_get_line_with_many_keys(server):
    """get lines may be longer than 2048 bytes (many keys), as in memcached."""
    keys = [b"k%03d" % i for i in range(600)]
    line = b"get " + b" ".join(keys)
    assert len(line) > 2048
    with server.mc() as c:
        assert c.set("k007", "seven") == b"STORED\r\n"
        c.send(line + b"\r\n")
        c.expect(b"VALUE k007 0 5\r\nseven\r\nEND\r\n")


def test_queue_names_are_case_sensitive_and_independent(server):
    with server.mc() as c:
        assert c.set("Q", "upper") == b"STORED\r\n"
        assert c.set("q", "lower") == b"STORED\r\n"
        assert c.get_one("q") == b"lower"
        assert c.get_one("Q") == b"upper"


def test_stats_queue_is_not_cut_short(server):
    """MemcacheQ cut `stats queue` at 2048 bytes; every queue must be listed."""
    names = [b"%03d" % i + b"n" * 100 for i in range(40)]
    with server.mc() as c:
        c.send(b"".join(b"set %s 0 0 1\r\nx\r\n" % n for n in names))
        c.expect(b"STORED\r\n" * len(names))
        c.send(b"stats queue\r\n")
        c.expect(b"".join(b"STAT %s 1/0\r\n" % n for n in names) + b"END\r\n")


def test_flush_and_flush_all(server):
    with server.mc() as c:
        for q in ["f1", "f1", "f2"]:
            assert c.set(q, "x") == b"STORED\r\n"
        assert c.cmd(b"flush f1") == b"END\r\n"
        assert c.get_one("f1") is None
        assert c.get_one("f2") == b"x"
        assert c.set("f2", "y") == b"STORED\r\n"
        assert c.cmd(b"flush_all") == b"OK\r\n"
        assert c.get("f1", "f2") == []
        assert c.set("f1", "z") == b"STORED\r\n"
        assert c.get_one("f1") == b"z"


def test_reliable_read_open_close(server):
    """Kestrel's /open ... /close: the message is only gone once confirmed."""
    with server.mc() as c:
        assert c.set("rr", "one") == b"STORED\r\n"
        assert c.set("rr", "two") == b"STORED\r\n"
        c.send(b"get rr/open\r\n")
        c.expect(b"VALUE rr/open 0 3\r\none\r\nEND\r\n")
        # A plain get of a queue with an open read on this connection is refused.
        assert c.cmd(b"get rr") == b"ERROR\r\n"
        c.send(b"get rr/close/open\r\n")
        c.expect(b"VALUE rr/close/open 0 3\r\ntwo\r\nEND\r\n")
        assert c.cmd(b"get rr/close") == b"END\r\n"
        assert c.get_one("rr") is None


def test_reliable_read_abort_and_disconnect_give_the_message_back(server):
    with server.mc() as c:
        assert c.set("ra", "one") == b"STORED\r\n"
        assert c.set("ra", "two") == b"STORED\r\n"
        c.send(b"get ra/open\r\n")
        c.expect(b"VALUE ra/open 0 3\r\none\r\nEND\r\n")
        assert c.cmd(b"get ra/abort") == b"END\r\n"
        c.send(b"get ra/open\r\n")
        c.expect(b"VALUE ra/open 0 3\r\none\r\nEND\r\n")
    # Disconnected with "one" open: it goes back to the head of the queue once the server has
    # seen the disconnect (on its own event loop, unordered with other connections' commands).
    with server.mc() as c:
        assert wait_for(lambda: queue_stats(c, "ra")["open_transactions"] == 0), "never given back"
        c.send(b"get ra/peek\r\n")
        c.expect(b"VALUE ra/peek 0 3\r\none\r\nEND\r\n")
        assert c.get_one("ra") == b"one"
        assert c.get_one("ra") == b"two"


def test_bad_read_option_combinations(server):
    with server.mc() as c:
        assert c.cmd(b"get q/peek/open").startswith(b"CLIENT_ERROR ")
        assert c.cmd(b"get q/abort/close").startswith(b"CLIENT_ERROR ")
        assert c.cmd(b"get " + b"q" * 251 + b"/open").startswith(b"CLIENT_ERROR ")
        assert c.set("q", "untouched") == b"STORED\r\n"
        assert c.get_one("q") == b"untouched"


def test_slash_names_that_are_not_options_are_plain_queue_names(server):
    """MemcacheQ users may name queues `jobs/high`: a key whose '/' parts are not all read
    options is a queue name, the same for set and get."""
    with server.mc() as c:
        for name in [b"jobs/high", b"q/t=abc", b"a/b/c"]:
            assert c.set(name, b"v-" + name) == b"STORED\r\n"
        for name in [b"jobs/high", b"q/t=abc", b"a/b/c"]:
            assert c.get(name) == [(name, 0, b"v-" + name, None)]
        assert c.get_one("jobs") is None
