"""Messages and queue totals survive a clean stop and a crash (kill -9)."""

import threading
import time

import pytest

from conftest import frame

# Every test runs as users run the server (one event loop) and with several loops.
pytestmark = pytest.mark.event_loops


def drain_mc(conn, queue):
    out = []
    while True:
        body = conn.get_one(queue)
        if body is None:
            return out
        out.append(body)


def test_messages_survive_sigterm_and_restart(server):
    with server.mc() as mc, server.mq() as mq:
        for i in range(5):
            assert mc.set("p1", "a%d" % i, flags=i) == b"STORED\r\n"
        assert mq.put(b"p2", b"b0") == [b"OK"]
        assert mq.put(b"p2", b"b1") == [b"OK"]
        assert mc.get_one("p1") == b"a0"
    assert server.stop() == 0, server.log_tail()
    server.start()
    with server.mc() as mc, server.mq() as mq:
        assert mc.get("p1") == [(b"p1", 1, b"a1", None)], "flags must survive too"
        assert drain_mc(mc, "p1") == [b"a2", b"a3", b"a4"]
        assert mq.get(b"p2") == [b"OK", b"b0"]
        assert mq.get(b"p2") == [b"OK", b"b1"]
        assert mq.get(b"p2") == [b"Timeout"]


def test_acknowledged_messages_survive_kill_9(server):
    """Default --sync always: every STORED / OK is on disk, in order."""
    n = 300
    with server.mc() as mc:
        request = b"".join(b"set crash 0 0 %d\r\nm%04d\r\n" % (5, i) for i in range(n))
        mc.send(request)
        mc.expect(b"STORED\r\n" * n, timeout=60)
    with server.mq() as mq:
        for i in range(20):
            assert mq.put(b"crash2", b"x%d" % i) == [b"OK"]
    server.kill()
    server.start()
    with server.mc() as mc:
        assert drain_mc(mc, "crash") == [b"m%04d" % i for i in range(n)]
        assert drain_mc(mc, "crash2") == [b"x%d" % i for i in range(20)]


def test_acknowledged_messages_survive_kill_9_under_concurrent_load(server):
    """Kill while writers are still going: whatever was acknowledged must be there."""
    acked = {0: [], 1: []}
    stop = threading.Event()

    def writer(w):
        try:
            with server.mq() as c:
                i = 0
                while not stop.is_set():
                    body = b"w%d-%05d" % (w, i)
                    if c.put(b"load", body) != [b"OK"]:
                        return
                    acked[w].append(body)
                    i += 1
        except (OSError, AssertionError):
            pass  # the server died under us: expected

    threads = [threading.Thread(target=writer, args=(w,)) for w in acked]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while sum(len(v) for v in acked.values()) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()
    stop.set()
    for t in threads:
        t.join(10)
    assert all(acked.values()), "writers made no progress before the kill"
    server.start()
    with server.mc() as mc:
        stored = drain_mc(mc, "load")
    for w, bodies in acked.items():
        mine = [b for b in stored if b.startswith(b"w%d-" % w)]
        assert mine[: len(bodies)] == bodies, f"writer {w}: acknowledged messages lost or reordered"
        # At most the one unacknowledged in-flight message may also be there.
        assert len(mine) - len(bodies) <= 1


def test_stats_queue_totals_survive_restart(server):
    with server.mc() as mc:
        for i in range(4):
            assert mc.set("tot", str(i)) == b"STORED\r\n"
        assert mc.get_one("tot") == b"0"
        assert mc.get_one("tot") == b"1"
        assert mc.set("other", "x") == b"STORED\r\n"
        mc.send(b"stats queue\r\n")
        mc.expect(b"STAT other 1/0\r\nSTAT tot 4/2\r\nEND\r\n")
    server.restart()
    with server.mc() as mc:
        mc.send(b"stats queue\r\n")
        mc.expect(b"STAT other 1/0\r\nSTAT tot 4/2\r\nEND\r\n")
        assert mc.set("tot", "4") == b"STORED\r\n"
        assert mc.get_one("tot") == b"2"
        mc.send(b"stats queue\r\n")
        mc.expect(b"STAT other 1/0\r\nSTAT tot 5/3\r\nEND\r\n")


def test_consumed_messages_stay_consumed_after_kill_9(server):
    """A get is committed like a set: once a later write is acknowledged (synced), the
    messages taken before it do not come back after a crash."""
    with server.mc() as mc:
        mc.send(b"".join(b"set taken 0 0 2\r\nm%d\r\n" % i for i in range(10)))
        mc.expect(b"STORED\r\n" * 10)
        assert [mc.get_one("taken") for _ in range(4)] == [b"m0", b"m1", b"m2", b"m3"]
        assert mc.set("marker", "x") == b"STORED\r\n"
    server.kill()
    server.start()
    with server.mc() as mc:
        assert drain_mc(mc, "taken") == [b"m%d" % i for i in range(4, 10)]
        assert mc.stats(b"queue")["taken"] == "10/10"


def test_consumed_messages_stay_consumed_after_kill_9_with_no_later_write(server):
    """Reads need no fsync of their own, but they do not wait for the next write either: within
    a fraction of a second they are on disk, so a crash does not hand them out again."""
    with server.mc() as mc:
        mc.send(b"".join(b"set idle 0 0 2\r\nm%d\r\n" % i for i in range(10)))
        mc.expect(b"STORED\r\n" * 10)
        assert [mc.get_one("idle") for _ in range(4)] == [b"m0", b"m1", b"m2", b"m3"]
        time.sleep(0.5)
    server.kill()
    server.start()
    with server.mc() as mc:
        assert drain_mc(mc, "idle") == [b"m%d" % i for i in range(4, 10)]


def test_deleted_queue_stays_deleted_after_restart(server):
    with server.mc() as mc:
        assert mc.set("gone", "x") == b"STORED\r\n"
        assert mc.set("kept", "y") == b"STORED\r\n"
        mc.send(b"delete gone\r\n")
        mc.expect(b"DELETED\r\n")
    server.restart(crash=True)
    with server.mc() as mc:
        assert mc.get_one("gone") is None
        assert mc.get_one("kept") == b"y"
        assert "gone" not in mc.stats(b"queue")


def test_consumed_messages_stay_consumed_after_clean_restart(server):
    with server.mq() as mq:
        for i in range(3):
            assert mq.put(b"once", b"%d" % i) == [b"OK"]
        assert mq.get(b"once") == [b"OK", b"0"]
    server.restart()
    with server.mq() as mq:
        assert mq.get(b"once") == [b"OK", b"1"]
        assert mq.get(b"once") == [b"OK", b"2"]
        assert mq.get(b"once") == [b"Timeout"]


def test_several_restarts_keep_order(server):
    expected = []
    for round_ in range(3):
        with server.mc() as mc:
            for i in range(5):
                body = b"r%d-%d" % (round_, i)
                assert mc.set("multi", body) == b"STORED\r\n"
                expected.append(body)
        server.restart(crash=(round_ % 2 == 1))
    with server.mc() as mc:
        assert drain_mc(mc, "multi") == expected


def test_sigterm_answers_a_blocked_get_and_exits_cleanly(server):
    with server.mq() as waiter:
        waiter.send(frame(b"Get", b"blocked", b"60000"))
        time.sleep(0.3)
        start = time.monotonic()
        status = server.stop()
        assert status == 0, server.log_tail()
        assert time.monotonic() - start < 10.0
        # The blocked reader is told, not left hanging (Timeout), then the connection closes.
        assert waiter.closed_by_server(timeout=5.0)
        assert waiter.buf == frame(b"Timeout"), waiter.buf


def test_sync_none_and_interval_still_persist_on_clean_stop(make_server):
    for sync in ["none", "interval:50"]:
        server = make_server(["--sync", sync])
        with server.mc() as mc:
            for i in range(20):
                assert mc.set("s", str(i)) == b"STORED\r\n"
        server.restart()
        with server.mc() as mc:
            assert drain_mc(mc, "s") == [str(i).encode() for i in range(20)]
        server.stop()
