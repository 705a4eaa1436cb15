"""One client can never take the server down: each abuse case leaves the server's peak RSS
bounded (generous limits: these are not benchmarks) and a bystander's set/get answered, with
default flags. scripts/bench-abuse prints the same cases' figures (peak RSS, the bystander's
round trip) for any binary."""

import time

import pytest

import abuse
from conftest import wait_for

RSS_LIMIT_MB = 512
# A bystander left waiting behind the abuse is what this catches, not a latency (a benchmark's
# job): on this 2-core machine under a parallel build, a fair server answered in 1.3-1.6 s.
BYSTANDER_LIMIT_S = 5.0


def assert_bounded(result, what, bystander_limit=BYSTANDER_LIMIT_S):
    assert result["peak_mb"] < RSS_LIMIT_MB, f"{what}: server RSS peaked at {result['peak_mb']:.0f} MB"
    trip = result["bystander_s"]
    assert trip is not None, f"{what}: the bystander's set/get failed"
    assert trip < bystander_limit, f"{what}: the bystander's set/get took {trip:.2f} s"


def test_replies_never_read_stop_the_commands_not_the_server(server):
    # Output back-pressure per command: 2,000 peeks of a 1 MiB message would be 2 GB of replies.
    result = abuse.peek_flood(server)
    assert_bounded(result, "peek flood")
    # A client that does read gets every reply: held-back commands resume as it reads.
    with server.mc() as mc:
        mc.send(b"get big/peek\r\n" * 200)
        for _ in range(200):
            assert [len(v[2]) for v in mc.read_values()] == [abuse.MB]


@pytest.mark.skipif(not abuse.raise_fd_limit(4_000), reason="cannot raise the descriptor limit")
def test_many_connections_with_unread_replies_share_one_output_budget(server):
    """Issue 19: 900 connections each within the 4 MiB per-connection cap held 6.6 GB together.
    Past the server-wide output budget they run no more commands; once they read, every one of
    them is served again."""
    result = abuse.many_unread(server, conns=300, lines=20)
    assert_bounded(result, "300 connections with unread replies")
    assert result["served"] == 300, result["note"]


def test_quiet_floods_over_many_connections_leave_a_bystander_answered(server):
    """Writes refused for lack of budget wait in line: 300 flooding connections cannot keep a
    bystander's set out."""
    assert_bounded(abuse.many_quiet_floods(server, conns=300), "300 noreply floods")


@pytest.mark.parametrize("case", ["sets", "gets"])
def test_large_messages_in_and_out_count_against_the_budgets(make_server, case):
    """Issue 19: with -B 32m, 20 concurrent 32 MB sets took the server to 683 MB, and 20 readers
    of a 32 MB message to 690 MB. A request takes room for all of its body at once (or waits),
    and a reply for a large message waits for room in the output budget."""
    server = make_server(args=["-B", "32m"])
    if case == "sets":
        result = abuse.big_sets(server)
        assert result["stored"] == 20, result["note"]
    else:
        result = abuse.big_gets(server)
        assert result["served"] == 20, result["note"]
    # The bystander's set waits for an fsync behind up to 64 MB of other writes (the write
    # budget) on a disk taking 640 MB: 5.7 s in a CI run at load 9. Starved, it is not answered
    # at all within its 10 s patience (the build before the budgets: "failed").
    assert_bounded(result, f"20 concurrent 32 MB {case}", bystander_limit=10.0)


def test_large_stats_replies_never_read(server):
    assert_bounded(abuse.stats_flood(server), "stats flood")


def test_noreply_flood_is_slowed_not_buffered(server):
    result = abuse.noreply_flood(server)
    assert_bounded(result, "noreply flood")
    # Whatever was acknowledged as a set is there: the bystander's queue is intact.
    with server.mc() as mc:
        assert mc.set(b"after", b"flood") == b"STORED\r\n"
        assert mc.get_one(b"after") == b"flood"


def test_partial_bodies_do_not_pin_memory(server):
    result, socks = abuse.partial_bodies(server)
    try:
        assert_bounded(result, "800 partial bodies")
    finally:
        for s in socks:
            s.close()


def test_a_request_left_incomplete_is_closed_after_the_timeout(make_server):
    server = make_server(args=["--request-timeout", "1"])
    with server.mc() as slow, server.mc() as idle:
        slow.send(b"set h 0 0 100\r\nonly part of it")
        idle.send(b"version\r\n")
        assert idle.read_line().startswith(b"VERSION")
        assert slow.closed_by_server(timeout=5), "a request left incomplete was kept open"
        # A connection between requests is not affected by the request timeout.
        assert idle.cmd(b"version").startswith(b"VERSION")


def test_idle_timeout_is_off_by_default_and_closes_idle_connections_when_set(make_server):
    default = make_server()
    with default.mc() as mc:
        assert not mc.closed_by_server(timeout=2.5)
    server = make_server(args=["--idle-timeout", "1"])
    with server.mc() as idle, server.mc() as waiting:
        waiting.send(b"get w/t=4000\r\n")
        assert idle.closed_by_server(timeout=5), "--idle-timeout did not close an idle connection"
        # A blocked read is waiting on the server, not idle.
        assert waiting.read_line(timeout=6) == b"END\r\n"


def test_fanout_has_a_bounded_cost(server):
    result = abuse.fanout(server)
    assert_bounded(result, "fan-out to 3,000 queues")
    assert result["stored"] == 64, "the default --max-fanout is 64"
    assert result["refusals"] == [b"SERVER_ERROR too many fan-out queues\r\n"]
    assert result["set_reply"] == b"STORED\r\n"
    with server.mc() as mc:
        assert mc.get_one(b"q+c0") == b"x"
        assert mc.get_one(b"q+c0") == b"y" * abuse.MB, "the copy reached an existing child"
    with server.mq() as mq:
        assert mq.put(b"q+new", b"z") == [b"Error", b"REQUEST_FANOUT_LIMIT"]
        assert mq.put(b"q+c1", b"z") == [b"OK"], "existing fan-out queues keep working"


def test_fanout_limit_flag(make_server):
    server = make_server(args=["--max-fanout", "2"])
    with server.mc() as mc:
        assert mc.set(b"p+a", b"1") == b"STORED\r\n"
        assert mc.set(b"p+a+x", b"1") == b"STORED\r\n"
        assert mc.set(b"p+b", b"1") == b"SERVER_ERROR too many fan-out queues\r\n"
        assert mc.set(b"other+b", b"1") == b"STORED\r\n"


def test_reads_and_waits_leave_no_ghost_queues(server):
    result = abuse.ghost_queues(server)
    assert result["curr_queues"] == 0
    assert result["info_queues"] == 0
    # A waiter still gets a message put while it waits, and then the queue exists.
    with server.mc() as waiter, server.mc() as producer:
        waiter.send(b"get late/t=5000\r\n")
        time.sleep(0.2)
        assert producer.set(b"late", b"m") == b"STORED\r\n"
        assert waiter.read_values() == [(b"late/t=5000", 0, b"m", None)]
        assert "queue_late_items" in producer.stats()


def test_malformed_set_body_is_discarded_never_run(server):
    with server.mc() as mc:
        assert mc.set(b"keep", b"me") == b"STORED\r\n"
        mc.send(b"set keep x 0 11\r\nflush_all\r\n\r\n")
        assert mc.read_line() == b"CLIENT_ERROR bad command line format\r\n"
        mc.send(b"set keep 0 0 11 noreply extra\r\nflush_all\r\n\r\n")
        assert mc.read_line() == b"ERROR\r\n"
        assert mc.get_one(b"keep") == b"me", "the body was run as a command"


@pytest.mark.skipif(not abuse.raise_fd_limit(12_000), reason="cannot raise the descriptor limit")
def test_ten_thousand_idle_connections(make_server):
    server = make_server(args=["-c", "11000"])
    result, socks = abuse.idle_connections(server)
    try:
        assert_bounded(result, "10,000 idle connections")
    finally:
        for s in socks:
            s.close()


# The same abuse over the memcache binary protocol ---------------------------------------------


def test_binary_replies_never_read_stop_the_commands_not_the_server(server):
    assert_bounded(abuse.binary_peek_flood(server), "binary peek flood")


@pytest.mark.skipif(not abuse.raise_fd_limit(4_000), reason="cannot raise the descriptor limit")
def test_binary_connections_with_unread_replies_share_one_output_budget(server):
    result = abuse.binary_many_unread(server, conns=300, lines=20)
    assert_bounded(result, "300 binary connections with unread replies")
    assert result["served"] == 300, result["note"]


def test_binary_setq_floods_leave_a_bystander_answered(server):
    assert_bounded(abuse.binary_quiet_floods(server, conns=300), "300 binary SETQ floods")


def test_binary_getq_miss_floods_leave_a_bystander_answered(server):
    """A GETQ of an empty queue costs no reply, no write and no output room, so no budget slows
    it: only the per-pass share of requests each connection gets (before it, 100 such floods
    kept a bystander waiting past 10 s)."""
    result = abuse.binary_quiet_floods(server, conns=100, opcode=abuse.GETQ)
    assert_bounded(result, "100 binary GETQ-miss floods")


def test_binary_partial_bodies_do_not_pin_memory(server):
    result, socks = abuse.binary_partial_bodies(server)
    try:
        assert_bounded(result, "800 partial binary bodies")
    finally:
        for s in socks:
            s.close()


def test_binary_huge_declared_bodies_are_refused_before_anything_is_allocated(server):
    result, socks = abuse.binary_huge_declared(server, conns=300)
    try:
        assert_bounded(result, "huge declared binary bodies")
        assert result["refused"] == 300, result["note"]
        assert result["closed"] == 300, result["note"]
    finally:
        for s in socks:
            s.close()
