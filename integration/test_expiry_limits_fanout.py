"""Kestrel-style queue management: exptime, the background expiry sweep, queue limits
(`--max-queue-items`, `--max-queue-bytes`, `--discard-old-when-full`), fan-out to `q+child`
queues, `flush`/`flush_all`, and the per-queue `stats` lines.

Contract: protocol-spec/memcache.md sections 3.1, 3.4, 3.5, 6 and 7, mqmq.md sections 2 and 5."""

import json
import re
import time

import pytest

from conftest import wait_for
from kestrel_helpers import (
    QUEUE_STAT_FIELDS,
    drain,
    get_body,
    peek,
    queue_stats,
    raw_stats_lines,
    set_many,
    stats_queue,
)

FULL = b"SERVER_ERROR queue full\r\n"
MQ_FULL = [b"Error", b"REQUEST_QUEUE_FULL"]
THIRTY_DAYS = 2_592_000


# --------------------------------------------------------------------------------------------
# exptime
# --------------------------------------------------------------------------------------------


def _exptime_cases():
    # Callables: absolute times are computed when the test runs.
    return [
        ("zero-never", lambda: 0, True),
        ("relative-60s", lambda: 60, True),
        ("relative-30-days", lambda: THIRTY_DAYS, True),
        ("absolute-in-an-hour", lambda: int(time.time()) + 3600, True),
        ("absolute-i64-max", lambda: 9_223_372_036_854_775_807, True),
        ("negative-1", lambda: -1, False),
        ("negative-i64-min", lambda: -9_223_372_036_854_775_808, False),
        ("30-days-plus-1-is-absolute-1970", lambda: THIRTY_DAYS + 1, False),
        ("absolute-10s-ago", lambda: int(time.time()) - 10, False),
    ]


@pytest.mark.parametrize(
    "exptime,delivered",
    [pytest.param(f, d, id=name) for name, f, d in _exptime_cases()],
)
def test_exptime_rules(server, exptime, delivered):
    with server.mc() as c, server.mq() as mq:
        e = exptime()
        c.send(b"set ex 5 %d 4\r\nbody\r\n" % e)
        c.expect(b"STORED\r\n")
        assert c.set("ex", "next") == b"STORED\r\n"
        if delivered:
            c.send(b"get ex/peek\r\n")
            c.expect(b"VALUE ex/peek 5 4\r\nbody\r\nEND\r\n")
            assert mq.get(b"ex") == [b"OK", b"body"]
            assert queue_stats(c, "ex")["expired_items"] == 0
        else:
            # Never delivered to any reader: peek, open, plain get, mqmq Get.
            assert get_body(c, "ex/peek") == b"next"
            assert get_body(c, "ex/open") == b"next"
            assert c.cmd(b"get ex/abort") == b"END\r\n"
            assert mq.get(b"ex") == [b"OK", b"next"]
            qs = queue_stats(c, "ex")
            assert qs["expired_items"] == 1, qs
            assert qs["total_items"] == 2, qs
            assert stats_queue(c)["ex"] == (2, 2)
        assert mq.get(b"ex") == ([b"OK", b"next"] if delivered else [b"Timeout"])


def test_relative_exptime_runs_out(server):
    with server.mc() as c:
        c.send(b"set rel 0 2 5\r\nshort\r\n")
        c.expect(b"STORED\r\n")
        assert c.set("rel", "long") == b"STORED\r\n"
        assert peek(c, "rel") == b"short", "a 2 s message expired at once"
        time.sleep(2.6)
        assert get_body(c, "rel") == b"long"
        assert get_body(c, "rel") is None
        assert queue_stats(c, "rel")["expired_items"] == 1


def test_expired_message_in_the_middle_is_skipped(server):
    with server.mc() as c:
        assert c.set("mid", "a") == b"STORED\r\n"
        c.send(b"set mid 0 -1 4\r\ndead\r\n")
        c.expect(b"STORED\r\n")
        assert c.set("mid", "b") == b"STORED\r\n"
        c.send(b"get mid mid mid\r\n")
        c.expect(b"VALUE mid 0 1\r\na\r\nVALUE mid 0 1\r\nb\r\nEND\r\n")
        assert queue_stats(c, "mid")["expired_items"] == 1


def test_expired_set_does_not_wake_a_blocked_reader(server):
    with server.mc() as waiter, server.mc() as p, server.mq() as mqw:
        waiter.send(b"get bw/t=1500\r\n")
        mqw.send_frame(b"Get", b"bw", b"1500")
        assert wait_for(lambda: queue_stats(p, "bw").get("waiters") == 2, 10)
        p.send(b"set bw 0 -1 4\r\ndead\r\nset bw 0 %d 4\r\ngone\r\n" % (int(time.time()) - 5))
        p.expect(b"STORED\r\nSTORED\r\n")
        waiter.expect(b"END\r\n", timeout=15)
        assert mqw.read_frame(timeout=15) == [b"Timeout"]
        assert wait_for(lambda: queue_stats(p, "bw")["expired_items"] == 2, timeout=5)


def test_background_sweep_drops_expired_messages_nobody_reads(server):
    with server.mc() as c, server.mq() as mq:
        for i in range(3):
            c.send(b"set sweep 0 1 2\r\ns%d\r\n" % i)
            c.expect(b"STORED\r\n")
        # Until dropped they still count.
        qs = queue_stats(c, "sweep")
        assert qs["items"] + qs["expired_items"] == 3, qs
        # No reader touches the queue: the sweep (about once a second) must drop them.
        ok = wait_for(lambda: queue_stats(c, "sweep")["expired_items"] == 3, timeout=8, interval=0.2)
        qs = queue_stats(c, "sweep")
        assert ok, f"the sweep did not drop the expired messages: {qs}"
        assert (qs["items"], qs["bytes"], qs["age"]) == (0, 0, 0), qs
        assert stats_queue(c)["sweep"] == (3, 3)
        assert int(c.stats()["curr_items"]) == 0
        assert mq.info()[1]["Queues"]["sweep"] == {"NumMessages": 0}


def test_expired_message_behind_a_live_head_is_swept(server):
    """spec 6: the background sweep drops expired messages wherever they are in the queue, so
    their space comes back without waiting for the head to reach them (issue 8, bug 6)."""
    with server.mc() as c:
        assert c.set("behind", "live") == b"STORED\r\n"
        c.send(b"set behind 0 -1 4\r\ndead\r\nset behind 0 0 5\r\nlive2\r\n")
        c.expect(b"STORED\r\nSTORED\r\n")
        time.sleep(2.5)  # at least one sweep
        qs = queue_stats(c, "behind")
        assert (qs["items"], qs["bytes"], qs["expired_items"]) == (2, 9, 1), qs
        assert drain(c, "behind") == [b"live", b"live2"]
        qs = queue_stats(c, "behind")
        assert (qs["items"], qs["bytes"], qs["expired_items"]) == (0, 0, 1), qs


def test_exptime_is_kept_across_a_restart(server):
    """The expiry moment is fixed when the set is received, not counted again from the
    restart: a 3 s message stored 1.5 s before a restart is gone 3.4 s after the set."""
    with server.mc() as c:
        c.send(b"set keep 0 3 5\r\nshort\r\n")
        c.expect(b"STORED\r\n")
        stored_at = time.monotonic()
        assert c.set("keep", "long") == b"STORED\r\n"
        c.send(b"set keep 0 %d 4\r\nabs1\r\n" % (int(time.time()) + 3600))
        c.expect(b"STORED\r\n")
    time.sleep(1.5)
    server.restart()
    time.sleep(max(0, 3.4 - (time.monotonic() - stored_at)))
    with server.mc() as c:
        assert drain(c, "keep") == [b"long", b"abs1"]
        assert queue_stats(c, "keep")["expired_items"] == 1


def test_mqmq_puts_never_expire_and_are_readable_with_flags_zero(server):
    with server.mq() as mq, server.mc() as c:
        assert mq.put(b"mqx", b"forever") == [b"OK"]
        time.sleep(1.2)
        c.send(b"get mqx\r\n")
        c.expect(b"VALUE mqx 0 7\r\nforever\r\nEND\r\n")


# --------------------------------------------------------------------------------------------
# Queue limits
# --------------------------------------------------------------------------------------------


def test_max_queue_items_refuses_on_both_protocols(make_server):
    server = make_server(args=["--max-queue-items", "3"])
    with server.mc() as c, server.mq() as mq:
        set_many(c, "lim", [b"m0", b"m1"])
        assert mq.put(b"lim", b"m2") == [b"OK"]
        assert c.set("lim", "m3") == FULL
        # An error reply is sent even with noreply.
        c.send(b"set lim 0 0 2 noreply\r\nm4\r\n")
        c.expect(FULL)
        assert mq.put(b"lim", b"m5") == MQ_FULL
        # Other queues are not affected.
        assert c.set("other", "o") == b"STORED\r\n"
        qs = queue_stats(c, "lim")
        assert (qs["items"], qs["total_items"], qs["discarded"]) == (3, 3, 0), qs
        # Open messages still count toward the limit.
        assert get_body(c, "lim/open") == b"m0"
        assert c.set("lim", "m6") == FULL
        assert c.cmd(b"get lim/close") == b"END\r\n"
        assert mq.put(b"lim", b"m7") == [b"OK"]
        assert c.set("lim", "m8") == FULL
        assert drain(c, "lim") == [b"m1", b"m2", b"m7"]


def test_expired_messages_count_toward_the_limit_until_dropped(make_server):
    server = make_server(args=["--max-queue-items", "2"])
    with server.mc() as c:
        assert c.set("el", "live") == b"STORED\r\n"
        c.send(b"set el 0 -1 4\r\ndead\r\n")
        c.expect(b"STORED\r\n")
        assert c.set("el", "more") == FULL
        assert get_body(c, "el") == b"live"
        assert get_body(c, "el") is None
        assert c.set("el", "more") == b"STORED\r\n"


def test_max_queue_bytes(make_server):
    server = make_server(args=["--max-queue-bytes", "10"])
    with server.mc() as c, server.mq() as mq:
        assert c.set("qb", "12345") == b"STORED\r\n"
        assert c.set("qb", "6789") == b"STORED\r\n"
        assert c.set("qb", "ab") == FULL
        assert mq.put(b"qb", b"ab") == MQ_FULL
        assert c.set("qb", "0") == b"STORED\r\n"  # exactly 10
        assert c.set("qb", "") == b"STORED\r\n"  # an empty body adds no bytes
        assert c.set("qb", "x") == FULL
        assert queue_stats(c, "qb")["bytes"] == 10
        assert get_body(c, "qb") == b"12345"
        assert c.set("qb", "abcde") == b"STORED\r\n"
        assert c.set("big", "12345678901") == FULL, "larger than the limit on its own"
        assert drain(c, "qb") == [b"6789", b"0", b"", b"abcde"]


def test_discard_old_when_full_by_items(make_server):
    server = make_server(args=["--max-queue-items", "3", "--discard-old-when-full"])
    with server.mc() as c, server.mq() as mq:
        for i in range(5):
            assert c.set("dq", b"m%d" % i) == b"STORED\r\n"
        assert mq.put(b"dq", b"m5") == [b"OK"]
        qs = queue_stats(c, "dq")
        assert (qs["items"], qs["discarded"], qs["total_items"]) == (3, 3, 6), qs
        assert stats_queue(c)["dq"] == (6, 3), "discarded messages count as dequeued"
        assert drain(c, "dq") == [b"m3", b"m4", b"m5"]
        assert queue_stats(c, "dq")["discarded"] == 3


def test_discard_cannot_drop_open_messages(make_server):
    server = make_server(args=["--max-queue-items", "2", "--discard-old-when-full"])
    with server.mc() as c, server.mc() as other:
        set_many(c, "do", [b"m0", b"m1"])
        assert get_body(c, "do/open") == b"m0"
        assert other.set("do", "m2") == b"STORED\r\n"  # discards m1, the only readable one
        assert get_body(c, "do/open") == b"m2"
        assert other.set("do", "m3") == FULL, "all that is left is open: nothing to discard"
        assert queue_stats(other, "do")["discarded"] == 1
        assert c.cmd(b"get do/abort") == b"END\r\n"
        assert sorted(drain(other, "do")) == [b"m0", b"m2"]


def test_discard_old_when_full_by_bytes(make_server):
    server = make_server(args=["--max-queue-bytes", "10", "--discard-old-when-full"])
    with server.mc() as c:
        for body in [b"aaaa", b"bbbb", b"cccc"]:
            assert c.set("db", body) == b"STORED\r\n"
        qs = queue_stats(c, "db")
        assert (qs["bytes"], qs["discarded"]) == (8, 1), qs
        # A message that could never fit is refused without discarding anything.
        assert c.set("db", "x" * 11) == FULL
        assert queue_stats(c, "db")["discarded"] == 1
        assert c.set("db", "dddddddddd") == b"STORED\r\n"  # exactly the limit: drops both
        qs = queue_stats(c, "db")
        assert (qs["items"], qs["bytes"], qs["discarded"]) == (1, 10, 3), qs
        assert drain(c, "db") == [b"dddddddddd"]


def test_max_queue_items_zero_refuses_everything(make_server):
    server = make_server(args=["--max-queue-items", "0", "--discard-old-when-full"])
    with server.mc() as c, server.mq() as mq:
        assert c.set("z", "x") == FULL
        assert mq.put(b"z", b"x") == MQ_FULL
        assert get_body(c, "z") is None


# --------------------------------------------------------------------------------------------
# Fan-out
# --------------------------------------------------------------------------------------------


def test_fanout_copies_to_existing_children_only(server):
    with server.mc() as c, server.mq() as mq:
        # Children exist once something was stored in them (drained again) ...
        for child in ["fo+a", "fo+b"]:
            assert c.set(child, "init") == b"STORED\r\n"
            assert get_body(c, child) == b"init"
        # ... and names that are not children of "fo".
        for stranger in ["fo+", "foo+a", "fo-a", "xfo+a"]:
            assert c.set(stranger, "init") == b"STORED\r\n"
            assert get_body(c, stranger) == b"init"
        c.send(b"set fo 7 0 5\r\nhello\r\n")
        c.expect(b"STORED\r\n")
        assert mq.put(b"fo", b"world") == [b"OK"]
        for q in [b"fo", b"fo+a", b"fo+b"]:
            c.send(b"get %s %s %s\r\n" % (q, q, q))
            c.expect(b"VALUE %s 7 5\r\nhello\r\nVALUE %s 0 5\r\nworld\r\nEND\r\n" % (q, q))
        for stranger in ["fo+", "foo+a", "fo-a", "xfo+a"]:
            assert get_body(c, stranger) is None, f"{stranger} got a fan-out copy"
        sq = stats_queue(c)
        assert sq["fo"] == (2, 2) and sq["fo+a"] == (3, 3) and sq["fo+b"] == (3, 3), sq


def test_fanout_child_created_later_gets_only_later_messages(server):
    with server.mc() as c:
        assert c.set("late", "before") == b"STORED\r\n"
        assert c.set("late+kid", "own") == b"STORED\r\n"
        assert c.set("late", "after") == b"STORED\r\n"
        assert drain(c, "late+kid") == [b"own", b"after"]
        assert drain(c, "late") == [b"before", b"after"]


def test_fanout_reaches_a_child_created_by_a_blocking_read(server):
    with server.mc() as waiter, server.mq() as mqwaiter, server.mc() as p:
        waiter.send(b"get bf+w/t=20000\r\n")
        mqwaiter.send_frame(b"Get", b"bf+m", b"20000")
        assert wait_for(
            lambda: queue_stats(p, "bf+w").get("waiters") == 1
            and queue_stats(p, "bf+m").get("waiters") == 1,
            10,
        )
        assert p.set("bf", "news") == b"STORED\r\n"
        waiter.expect(b"VALUE bf+w/t=20000 0 4\r\nnews\r\nEND\r\n", timeout=15)
        assert mqwaiter.read_frame(timeout=15) == [b"OK", b"news"]
        assert get_body(p, "bf") == b"news"


def test_fanout_copy_refused_by_a_full_child_is_dropped_silently(make_server):
    server = make_server(args=["--max-queue-items", "1"])
    with server.mc() as c, server.mq() as mq:
        assert c.set("pf+full", "x") == b"STORED\r\n"
        assert c.set("pf+room", "y") == b"STORED\r\n"
        assert get_body(c, "pf+room") == b"y"
        assert c.set("pf", "m") == b"STORED\r\n"
        assert drain(c, "pf") == [b"m"]
        assert drain(c, "pf+full") == [b"x"]
        assert drain(c, "pf+room") == [b"m"]
        assert mq.put(b"pf+full", b"x2") == [b"OK"]
        assert mq.put(b"pf", b"m2") == [b"OK"]
        assert drain(c, "pf") == [b"m2"]
        assert drain(c, "pf+full") == [b"x2"]
        assert drain(c, "pf+room") == [b"m2"]


def test_fanout_stops_when_the_child_is_deleted(server):
    with server.mc() as c:
        assert c.set("del+c", "x") == b"STORED\r\n"
        assert c.cmd(b"delete del+c") == b"DELETED\r\n"
        assert c.set("del", "m") == b"STORED\r\n"
        assert "del+c" not in stats_queue(c)
        assert get_body(c, "del+c") is None


# --------------------------------------------------------------------------------------------
# flush and flush_all
# --------------------------------------------------------------------------------------------


def test_flush_one_queue(server):
    with server.mc() as c, server.mc() as holder:
        set_many(c, "fq", [b"m0", b"m1", b"m2"])
        set_many(c, "keep", [b"k"])
        assert get_body(holder, "fq/open") == b"m0"
        assert c.cmd(b"flush fq") == b"END\r\n"
        assert get_body(c, "fq") is None
        assert get_body(c, "keep/peek") == b"k"
        qs = queue_stats(c, "fq")
        assert (qs["items"], qs["total_items"], qs["open_transactions"]) == (0, 3, 1), qs
        assert qs["total_flushes"] == 1, qs
        # The open message was not touched: it comes back on abort.
        assert holder.cmd(b"get fq/abort") == b"END\r\n"
        assert drain(c, "fq") == [b"m0"]
        assert c.cmd(b"flush nosuchqueue") == b"END\r\n"
        assert "nosuchqueue" not in stats_queue(c)
        set_many(c, "fq", [b"n0"])
        c.send(b"flush fq noreply\r\nversion\r\n")
        assert c.read_line().startswith(b"VERSION "), "flush noreply sent a reply"
        assert get_body(c, "fq") is None
        assert stats_queue(c)["fq"] == (4, 4)


@pytest.mark.parametrize("line,reply", [(b"flush_all", b"OK\r\n"), (b"flush_all 0", b"OK\r\n"),
                                         (b"flush_all noreply", b""), (b"flush_all 10 noreply", b"")])
def test_flush_all(server, line, reply):
    with server.mc() as c, server.mq() as mq, server.mc() as holder:
        set_many(c, "fa1", [b"a", b"b"])
        assert mq.put(b"fa2", b"c") == [b"OK"]
        assert holder.cmd(b"get fa3/t=1") == b"END\r\n"  # only waited on: not a queue
        set_many(c, "fa4", [b"held", b"d"])
        assert get_body(holder, "fa4/open") == b"held"
        c.send(line + b"\r\nversion\r\n")
        c.expect(reply)
        assert c.read_line().startswith(b"VERSION ")
        for q in ["fa1", "fa2", "fa3", "fa4"]:
            assert get_body(c, q) is None, q
        _, info = mq.info()
        assert info["NumMessages"] == 0 and info["NumQueues"] == 3, info
        assert holder.cmd(b"get fa4/abort") == b"END\r\n"
        assert drain(c, "fa4") == [b"held"], "flush_all must leave open messages alone"


# --------------------------------------------------------------------------------------------
# stats: per-queue lines
# --------------------------------------------------------------------------------------------


def test_per_queue_stat_lines_order_and_values(server):
    with server.mc() as c, server.mc() as holder:
        set_many(c, "sb", [b"12345", b"678", b"9"])
        c.send(b"set sb 0 -1 4\r\ndead\r\n")  # behind live messages: still counted
        c.expect(b"STORED\r\n")
        assert get_body(holder, "sb/open") == b"12345"
        set_many(c, "sa", [b"x"])
        assert get_body(c, "sa") == b"x"
        lines = raw_stats_lines(c)
        names = [line.split(b" ")[1].decode() for line in lines]
        assert names.index("curr_queues") < names.index("queue_sa_items")
        queue_lines = [n for n in names if n.startswith("queue_")]
        assert queue_lines == [f"queue_{q}_{f}" for q in ["sa", "sb"] for f in QUEUE_STAT_FIELDS]
        for line in lines:
            assert re.fullmatch(rb"STAT \S+ \S+\r\n", line), line
        stats = {n: line.split(b" ")[2].strip().decode() for n, line in zip(names, lines)}
        sa = {f: int(stats[f"queue_sa_{f}"]) for f in QUEUE_STAT_FIELDS}
        sb = {f: int(stats[f"queue_sb_{f}"]) for f in QUEUE_STAT_FIELDS}
        assert sa == dict(items=0, bytes=0, total_items=1, expired_items=0, age=0, discarded=0,
                          waiters=0, open_transactions=0, total_flushes=0), sa
        age = sb.pop("age")
        assert 0 <= age < 60_000, age
        assert sb == dict(items=3, bytes=13, total_items=4, expired_items=0, discarded=0,
                          waiters=0, open_transactions=1, total_flushes=0), sb
        assert int(stats["curr_items"]) == 3
        assert int(stats["bytes"]) == 13
        assert int(stats["curr_queues"]) == 2


def test_per_queue_age_grows_with_the_head_message(server):
    with server.mc() as c:
        assert c.set("age", "x") == b"STORED\r\n"
        time.sleep(0.6)
        age = queue_stats(c, "age")["age"]
        assert 500 <= age < 30_000, age
        assert get_body(c, "age") == b"x"
        assert queue_stats(c, "age")["age"] == 0


def test_per_queue_waiters(server):
    with server.mc() as c, server.mc() as w1, server.mq() as w2:
        w1.send(b"get wq/t=1000\r\n")
        w2.send_frame(b"Get", b"wq", b"1000")
        assert wait_for(lambda: queue_stats(c, "wq").get("waiters") == 2, 10), queue_stats(c, "wq")
        w1.expect(b"END\r\n", timeout=15)
        assert w2.read_frame(timeout=15) == [b"Timeout"]
        # A queue that never held a message is forgotten with its last waiter.
        assert wait_for(lambda: "waiters" not in queue_stats(c, "wq"), 5)


def test_stats_queue_and_info_keep_the_original_format(server):
    with server.mc() as c, server.mq() as mq, server.mc() as holder:
        set_many(c, "fa", [b"1", b"2", b"3"])
        assert get_body(c, "fa") == b"1"
        assert get_body(holder, "fa/open") == b"2"
        c.send(b"set fa+k 0 0 1\r\nk\r\n")
        c.expect(b"STORED\r\n")
        assert c.set("empty", "e") == b"STORED\r\n"
        assert get_body(c, "empty") == b"e"  # an emptied queue is still listed
        assert c.cmd(b"get never/t=1") == b"END\r\n"  # a name only waited on is not a queue
        c.send(b"stats queue\r\n")
        c.expect(b"STAT empty 1/1\r\nSTAT fa 3/1\r\nSTAT fa+k 1/0\r\nEND\r\n")
        assert wait_for(lambda: mq.info()[1]["NumConnections"] == 3, timeout=5)
        raw, info = mq.info()
        assert raw == json.dumps(
            {"NumConnections": 3, "NumQueues": 3, "NumMessages": 2,
             "Queues": {"empty": {"NumMessages": 0}, "fa": {"NumMessages": 1},
                        "fa+k": {"NumMessages": 1}}},
            separators=(",", ":"),
        ).encode(), raw


def test_get_counters_for_option_keys(server):
    """spec 7.1: get_cmds/cmd_get count plain, peek and open keys (not close/abort-only keys,
    and mqmq Get is counted); cmd_peek counts peek keys; get_misses keys that found nothing."""
    with server.mc() as c, server.mq() as mq:
        assert c.set("cnt", "x") == b"STORED\r\n"
        assert get_body(c, "cnt/peek") == b"x"  # hit
        assert get_body(c, "cnt/open") == b"x"  # hit
        assert c.cmd(b"get cnt/close") == b"END\r\n"  # not counted
        assert c.cmd(b"get cnt/abort") == b"END\r\n"  # not counted
        assert get_body(c, "cnt/peek") is None  # miss
        assert c.cmd(b"get cnt/t=50") == b"END\r\n"  # miss after waiting
        assert mq.get(b"cnt") == [b"Timeout"]  # miss
        stats = c.stats()
        assert (stats["get_cmds"], stats["cmd_get"]) == ("5", "5"), stats
        assert stats["cmd_peek"] == "2", stats
        assert stats["get_hits"] == "2", stats
        assert stats["get_misses"] == "3", stats
