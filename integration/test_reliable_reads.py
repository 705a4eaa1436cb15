"""Kestrel-style reads over memcache: blocking reads (`/t=`), reliable reads (`/open`,
`/close`, `/abort`), `/peek`, Kestrel's refusals, `--max-open-reads`, `--open-timeout`, and
consumers dying between `/open` and `/close` in every way they can.

Contract: protocol-spec/memcache.md sections 3.2, 4, 5 and 8."""

import os
import signal
import subprocess
import sys
import time

import pytest
from pymemcache.client.base import Client as PymemcacheClient
from pymemcache.exceptions import MemcacheUnknownCommandError

from conftest import wait_for
from kestrel_helpers import (
    Background,
    Timed,
    drain,
    get_body,
    peek,
    queue_stats,
    reset_close,
    set_many,
    stats_queue,
)

# Every test runs as users run the server (one event loop) and with several loops.
pytestmark = pytest.mark.event_loops


def _put_later(server, queue, body, delay=0.3):
    """An mqmq Put from another connection after `delay` seconds (run in the background)."""
    time.sleep(delay)
    with server.mq() as p:
        return p.put(queue, body)


# --------------------------------------------------------------------------------------------
# Blocking reads: /t=<ms>
# --------------------------------------------------------------------------------------------


def test_blocking_get_times_out_with_end(server):
    with server.mc() as c:
        with Timed() as t:
            c.send(b"get bt/t=400\r\n")
            c.expect(b"END\r\n", timeout=15)
        assert t.elapsed >= 0.35, f"answered after {t.elapsed:.3f}s, before the 400 ms were up"
        assert t.elapsed < 5, f"a 400 ms wait took {t.elapsed:.3f}s"
        # The connection is usable afterwards and the wait took nothing.
        assert c.set("bt", "after") == b"STORED\r\n"
        assert get_body(c, "bt") == b"after"


def test_blocking_get_t0_does_not_wait(server):
    with server.mc() as c:
        with Timed() as t:
            c.send(b"get t0/t=0\r\n")
            c.expect(b"END\r\n")
        assert t.elapsed < 1.5


def test_blocking_get_answers_at_once_when_a_message_is_there(server):
    with server.mc() as c:
        assert c.set("now", "ready") == b"STORED\r\n"
        with Timed() as t:
            c.send(b"get now/t=60000\r\n")
            c.expect(b"VALUE now/t=60000 0 5\r\nready\r\nEND\r\n")
        assert t.elapsed < 3


@pytest.mark.parametrize("producer", ["memcache", "mqmq"])
def test_blocking_get_woken_by_put_from_another_connection(server, producer):
    with server.mc() as waiter:
        with Timed() as t:
            waiter.send(b"get wake/t=20000\r\n")
            time.sleep(0.3)
            if producer == "memcache":
                with server.mc() as p:
                    assert p.set("wake", "hello", flags=9) == b"STORED\r\n"
                expected = b"VALUE wake/t=20000 9 5\r\nhello\r\nEND\r\n"
            else:
                with server.mq() as p:
                    assert p.put(b"wake", b"hello") == [b"OK"]
                expected = b"VALUE wake/t=20000 0 5\r\nhello\r\nEND\r\n"
            waiter.expect(expected, timeout=15)
        assert t.elapsed < 8, f"woken only after {t.elapsed:.2f}s (the wait was 20 s)"
        with server.mc() as other:
            assert get_body(other, "wake") is None, "the message was delivered twice"


def test_largest_t_value_waits_and_is_woken(server):
    """`/t=` is unsigned 64-bit with no upper bound: the largest value must neither overflow
    nor be refused; one past it is not an option, so the key is a queue name."""
    key = b"huge/t=18446744073709551615"
    with server.mc() as waiter, server.mc() as p:
        waiter.send(b"get " + key + b"\r\n")
        assert wait_for(lambda: queue_stats(p, "huge").get("waiters") == 1, 10)
        assert p.set("huge", "x") == b"STORED\r\n"
        waiter.expect(b"VALUE " + key + b" 0 1\r\nx\r\nEND\r\n", timeout=15)
        assert p.cmd(b"get huge/t=18446744073709551616") == b"END\r\n"
        assert "huge/t=18446744073709551616" not in stats_queue(p)


def test_last_t_option_wins(server):
    with server.mc() as c:
        with Timed() as t:
            c.send(b"get lt/t=60000/t=300\r\n")
            c.expect(b"END\r\n", timeout=15)
        assert 0.25 <= t.elapsed < 5, t.elapsed


def test_several_waiting_keys_wait_one_after_another(server):
    with server.mc() as c:
        with Timed() as t:
            c.send(b"get wa/t=300 wb/t=300\r\n")
            c.expect(b"END\r\n", timeout=15)
        assert 0.5 <= t.elapsed < 6, t.elapsed


def test_blocking_read_holds_the_connection(server):
    """Requests pipelined after a waiting get run only once it is answered."""
    with server.mc() as c:
        c.send(b"get hold/t=1500\r\nversion\r\n")
        assert c.nothing_pending(0.3), "the request after a waiting get ran before it"
        c.expect(b"END\r\n", timeout=15)
        assert c.read_line().startswith(b"VERSION ")


def test_a_blocking_read_leaves_no_queue_behind(server):
    """A queue that never held a message is listed only while somebody waits on it (issue 7:
    no ghost queues)."""
    with server.mc() as c, server.mc() as waiter:
        waiter.send(b"get born/t=2000\r\n")
        assert wait_for(lambda: "born" in stats_queue(c), 5), "a waiting read is not listed"
        waiter.expect(b"END\r\n", timeout=10)
        assert wait_for(lambda: "born" not in stats_queue(c), 5), "the timed-out wait left a queue"
        assert get_body(c, "never") is None
        assert "never" not in stats_queue(c), "a read without t= created a queue"


def test_waiters_are_served_in_arrival_order_across_protocols(server):
    """Six readers block on one queue, alternating memcache `/t=` and mqmq `Get`; six messages
    then arrive one by one. The oldest waiter gets the first message, and so on, each message
    goes to exactly one waiter."""
    n = 6
    waiters = []
    try:
        with server.mc() as ctl:
            for i in range(n):
                if i % 2 == 0:
                    w = server.mc(timeout=30)
                    w.send(b"get order/t=30000\r\n")
                else:
                    w = server.mq(timeout=30)
                    w.send_frame(b"Get", b"order", b"30000")
                waiters.append(w)
                # Only start the next waiter once the server has registered this one.
                assert wait_for(lambda: queue_stats(ctl, "order").get("waiters") == i + 1, 10), (
                    f"waiter {i} not registered: {queue_stats(ctl, 'order')}"
                )
            for i in range(n):
                assert ctl.set("order", b"m%d" % i) == b"STORED\r\n"
            got = []
            for i, w in enumerate(waiters):
                if i % 2 == 0:
                    values = w.read_values()
                    got.append(values[0][2] if values else None)
                else:
                    reply = w.read_frame(timeout=30)
                    got.append(reply[1] if reply[0] == b"OK" else None)
            assert got == [b"m%d" % i for i in range(n)]
            assert queue_stats(ctl, "order")["waiters"] == 0
            assert get_body(ctl, "order") is None
    finally:
        for w in waiters:
            w.close()


@pytest.mark.parametrize("options", [b"/t=30000", b"/t=30000/open"])
def test_waiter_that_disconnects_takes_nothing(server, options):
    """spec 4: if the connection closes while waiting, the wait is cancelled and no message is
    taken for it."""
    with server.mc() as ctl:
        gone = server.mc()
        gone.send(b"get wd" + options + b"\r\n")
        assert wait_for(lambda: queue_stats(ctl, "wd").get("waiters") == 1, 10)
        gone.close()
        time.sleep(0.5)
        assert ctl.set("wd", "kept") == b"STORED\r\n"
        assert wait_for(lambda: peek(ctl, "wd") == b"kept", timeout=3), (
            "the message went to a reader that had already disconnected"
        )
        assert get_body(ctl, "wd") == b"kept"
        assert queue_stats(ctl, "wd")["waiters"] == 0


# --------------------------------------------------------------------------------------------
# /peek
# --------------------------------------------------------------------------------------------


def test_peek_returns_head_without_removing(server):
    with server.mc() as c:
        assert c.set("pk", "one", flags=3) == b"STORED\r\n"
        assert c.set("pk", "two") == b"STORED\r\n"
        for _ in range(3):
            c.send(b"get pk/peek\r\n")
            c.expect(b"VALUE pk/peek 3 3\r\none\r\nEND\r\n")
        assert drain(c, "pk") == [b"one", b"two"]
        c.send(b"get pk/peek\r\n")
        c.expect(b"END\r\n")


def test_blocking_peek_leaves_the_arrived_message(server):
    with server.mc() as c:
        bg = Background(_put_later, server, b"bp", b"late")
        c.send(b"get bp/peek/t=20000\r\n")
        c.expect(b"VALUE bp/peek/t=20000 0 4\r\nlate\r\nEND\r\n", timeout=15)
        assert bg.result() == [b"OK"]
        assert get_body(c, "bp") == b"late"


# --------------------------------------------------------------------------------------------
# /open, /close, /abort
# --------------------------------------------------------------------------------------------


def test_open_message_is_invisible_to_others_until_closed(server):
    with server.mc() as a, server.mc() as b, server.mq() as mq:
        set_many(a, "inv", [b"m0", b"m1"])
        a.send(b"get inv/open\r\n")
        a.expect(b"VALUE inv/open 0 2\r\nm0\r\nEND\r\n")
        # Other readers, of both protocols, see the next message only.
        assert peek(b, "inv") == b"m1"
        assert mq.get(b"inv") == [b"OK", b"m1"]
        assert get_body(b, "inv") is None
        assert mq.get(b"inv") == [b"Timeout"]
        # Another connection's /close or /abort does not touch a's open message.
        assert b.cmd(b"get inv/close") == b"END\r\n"
        assert b.cmd(b"get inv/abort") == b"END\r\n"
        assert get_body(b, "inv") is None
        # a confirms: gone for good.
        assert a.cmd(b"get inv/close") == b"END\r\n"
        assert a.cmd(b"get inv/abort") == b"END\r\n"
        assert get_body(a, "inv") is None
        assert get_body(b, "inv") is None
        assert stats_queue(a)["inv"] == (2, 2)


def test_close_confirms_every_open_message_on_the_queue(server):
    with server.mc() as a:
        set_many(a, "cl", [b"m0", b"m1", b"m2"])
        a.send(b"get cl/open cl/open\r\n")
        a.expect(b"VALUE cl/open 0 2\r\nm0\r\nVALUE cl/open 0 2\r\nm1\r\nEND\r\n")
        assert queue_stats(a, "cl")["open_transactions"] == 2
        assert a.cmd(b"get cl/close") == b"END\r\n"
        assert queue_stats(a, "cl")["open_transactions"] == 0
        assert drain(a, "cl") == [b"m2"]


def test_close_open_is_one_round_trip_per_message(server):
    n = 20
    with server.mc() as c:
        set_many(c, "co", [b"job%02d" % i for i in range(n)])
        got = [get_body(c, "co/open")]
        while True:
            body = get_body(c, "co/close/open")
            if body is None:
                break
            got.append(body)
        assert got == [b"job%02d" % i for i in range(n)]
        assert stats_queue(c)["co"] == (n, n)
        assert queue_stats(c, "co")["open_transactions"] == 0
        assert c.cmd(b"get co/close") == b"END\r\n"


@pytest.mark.parametrize(
    "key",
    [b"oo/open/t=500", b"oo/t=500/open", b"oo/open/open", b"oo/t=1/open/t=500"],
)
def test_open_options_in_any_order(server, key):
    with server.mc() as c:
        assert c.set("oo", "x") == b"STORED\r\n"
        c.send(b"get " + key + b"\r\n")
        c.expect(b"VALUE " + key + b" 0 1\r\nx\r\nEND\r\n")
        assert queue_stats(c, "oo")["open_transactions"] == 1
        assert c.cmd(b"get oo/close") == b"END\r\n"
        assert queue_stats(c, "oo")["open_transactions"] == 0


@pytest.mark.parametrize("key", [b"cc/close/open", b"cc/open/close", b"cc/t=100/open/close"])
def test_close_and_open_in_either_order_confirm_then_open(server, key):
    with server.mc() as c:
        set_many(c, "cc", [b"a", b"b"])
        assert get_body(c, "cc/open") == b"a"
        c.send(b"get " + key + b"\r\n")
        c.expect(b"VALUE " + key + b" 0 1\r\nb\r\nEND\r\n")
        assert c.cmd(b"get cc/abort") == b"END\r\n"
        assert drain(c, "cc") == [b"b"], "the first message must have been confirmed"


def test_gets_open_has_a_cas_field(server):
    with server.mc() as c:
        set_many(c, "go", [b"a", b"b"])
        c.send(b"gets go/open\r\n")
        c.expect(b"VALUE go/open 0 1 0\r\na\r\nEND\r\n")
        c.send(b"gets go/close/open\r\n")
        c.expect(b"VALUE go/close/open 0 1 1\r\nb\r\nEND\r\n")


def test_blocking_open_woken_by_mqmq_put_holds_the_message(server):
    with server.mc() as a, server.mc() as b:
        bg = Background(_put_later, server, b"bo", b"late")
        a.send(b"get bo/t=20000/open\r\n")
        a.expect(b"VALUE bo/t=20000/open 0 4\r\nlate\r\nEND\r\n", timeout=15)
        assert bg.result() == [b"OK"]
        assert get_body(b, "bo") is None, "an open message was visible to another reader"
        assert a.cmd(b"get bo/abort") == b"END\r\n"
        assert get_body(b, "bo") == b"late"


def test_open_messages_in_stats_info_and_stats_queue(server):
    with server.mc() as a, server.mq() as mq:
        set_many(a, "st", [b"12345", b"678"])
        assert get_body(a, "st/open") == b"12345"
        qs = queue_stats(a, "st")
        assert qs["items"] == 1, qs  # the open one is not readable
        assert qs["bytes"] == 8, qs  # but its bytes are still held
        assert qs["open_transactions"] == 1, qs
        assert qs["total_items"] == 2, qs
        assert int(a.stats()["curr_items"]) == 1
        assert mq.info()[1]["Queues"]["st"] == {"NumMessages": 1}
        assert stats_queue(a)["st"] == (2, 0)
        assert a.cmd(b"get st/close") == b"END\r\n"
        assert stats_queue(a)["st"] == (2, 1)
        qs = queue_stats(a, "st")
        assert (qs["items"], qs["bytes"], qs["open_transactions"]) == (1, 3, 0), qs


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------

BAD_COMBINATIONS = [
    b"peek/open",
    b"open/peek",
    b"peek/close",
    b"close/peek",
    b"abort/open",
    b"open/abort",
    b"abort/close",
    b"close/abort",
    b"peek/abort",
    b"abort/peek",
    b"t=100/peek/open",
    b"close/open/abort",
]


@pytest.mark.parametrize("options", BAD_COMBINATIONS)
def test_bad_option_combinations(server, options):
    with server.mc() as c:
        assert c.set("bc", "untouched") == b"STORED\r\n"
        assert c.cmd(b"get bc/" + options) == b"CLIENT_ERROR bad option combination\r\n"
        assert get_body(c, "bc") == b"untouched"


def test_bad_combination_refuses_the_whole_multi_key_get(server):
    with server.mc() as c:
        set_many(c, "w1", [b"a"])
        set_many(c, "w2", [b"b"])
        assert c.cmd(b"get w1 w2/open w2/peek/open") == b"CLIENT_ERROR bad option combination\r\n"
        assert queue_stats(c, "w2")["open_transactions"] == 0
        assert get_body(c, "w1") == b"a"
        assert get_body(c, "w2") == b"b"


@pytest.mark.parametrize("line", [b"get kq", b"get kq/t=100", b"get kq/t=0", b"gets kq", b"get other kq"])
def test_plain_get_while_holding_an_open_read_is_error(server, line):
    with server.mc() as c, server.mc() as other:
        set_many(c, "kq", [b"m0", b"m1"])
        set_many(c, "other", [b"o"])
        assert get_body(c, "kq/open") == b"m0"
        assert c.cmd(line) == b"ERROR\r\n"
        # Nothing in the refused command was done.
        assert get_body(other, "other/peek") == b"o"
        assert peek(other, "kq") == b"m1"
        # Still allowed: peek on that queue, plain reads of other queues.
        assert get_body(c, "kq/peek") == b"m1"
        assert get_body(c, "other") == b"o"
        # Still holding m0, and /close still confirms it.
        assert c.cmd(b"get kq/close") == b"END\r\n"
        assert drain(c, "kq") == [b"m1"]


def test_open_then_plain_get_in_one_command_is_error(server):
    with server.mc() as c:
        set_many(c, "oq", [b"m0", b"m1"])
        assert c.cmd(b"get oq/open oq") == b"ERROR\r\n"
        assert queue_stats(c, "oq")["open_transactions"] == 0, "the refused /open was done"
        # After close (or abort) in the same command the plain read is allowed again.
        c.send(b"get oq/open oq/close oq\r\n")
        c.expect(b"VALUE oq/open 0 2\r\nm0\r\nVALUE oq 0 2\r\nm1\r\nEND\r\n")
        assert get_body(c, "oq") is None


def test_open_on_an_empty_queue_counts_within_the_command_only(server):
    """spec 5: `/open` adds one to the replayed count even if the queue is empty, so a plain
    read of that queue later in the same command is refused; afterwards nothing is held."""
    with server.mc() as c:
        assert c.cmd(b"get eo/open eo") == b"ERROR\r\n"
        assert c.cmd(b"get eo/open") == b"END\r\n"
        assert c.cmd(b"get eo") == b"END\r\n"


def test_pipelined_open_close_cycles(server):
    with server.mc() as c:
        set_many(c, "pp", [b"a", b"b", b"c"])
        c.send(b"get pp/open\r\nget pp/close\r\n" * 3 + b"get pp/open\r\n")
        c.expect(
            b"VALUE pp/open 0 1\r\na\r\nEND\r\nEND\r\n"
            b"VALUE pp/open 0 1\r\nb\r\nEND\r\nEND\r\n"
            b"VALUE pp/open 0 1\r\nc\r\nEND\r\nEND\r\n"
            b"END\r\n"
        )
        assert stats_queue(c)["pp"] == (3, 3)


@pytest.mark.parametrize("then", ["abort", "close", "disconnect"])
def test_delete_destroys_open_messages(server, then):
    """spec 3.3/5: `delete` destroys open messages, also those other connections hold. The
    holder's later /abort, /close or disconnect must not bring them back."""
    with server.mc() as holder, server.mc() as admin:
        set_many(admin, "dl", [b"old0", b"old1"])
        assert get_body(holder, "dl/open") == b"old0"
        assert admin.cmd(b"delete dl") == b"DELETED\r\n"
        assert admin.set("dl", "new") == b"STORED\r\n"
        if then == "disconnect":
            holder.close()
            time.sleep(0.3)
        else:
            assert holder.cmd(b"get dl/" + then.encode()) == b"END\r\n"
        assert wait_for(lambda: queue_stats(admin, "dl").get("open_transactions") == 0, 3)
        assert drain(admin, "dl") == [b"new"], "a message of the deleted queue came back"
        assert stats_queue(admin)["dl"] == (1, 1)


def test_holder_of_a_deleted_queue_stops_counting_its_open_message(server):
    """spec 3.3: open messages of a deleted queue are gone with it, so their holder may read
    the recreated queue plainly, and aborting gives nothing back."""
    with server.mc() as holder, server.mc() as admin:
        set_many(admin, "dh", [b"old0"])
        assert get_body(holder, "dh/open") == b"old0"
        assert admin.cmd(b"delete dh") == b"DELETED\r\n"
        assert admin.set("dh", "new") == b"STORED\r\n"
        assert get_body(holder, "dh") == b"new"
        assert holder.cmd(b"get dh/abort") == b"END\r\n"
        assert holder.cmd(b"get dh") == b"END\r\n"


def test_close_or_abort_with_nothing_open_is_end(server):
    with server.mc() as c:
        assert c.cmd(b"get nq/close") == b"END\r\n"
        assert c.cmd(b"get nq/abort") == b"END\r\n"
        assert c.cmd(b"get nq/t=5000/close") == b"END\r\n"  # t= ignored without open


def test_max_open_reads_across_queues(make_server):
    server = make_server(args=["--max-open-reads", "3"])
    with server.mc() as c, server.mc() as other:
        set_many(c, "ma", [b"a0", b"a1", b"a2"])
        set_many(c, "mb", [b"b0", b"b1"])
        assert get_body(c, "ma/open") == b"a0"
        assert get_body(c, "mb/open") == b"b0"
        assert get_body(c, "ma/open") == b"a1"
        assert c.cmd(b"get mb/open") == b"ERROR\r\n"
        assert c.cmd(b"get ma/open") == b"ERROR\r\n"
        # Another connection has its own allowance.
        assert get_body(other, "mb/open") == b"b1"
        # Confirming on one queue frees room on this connection.
        assert c.cmd(b"get mb/close") == b"END\r\n"
        assert get_body(c, "ma/open") == b"a2"
        assert c.cmd(b"get ma/open") == b"ERROR\r\n"
        # A close and an open in one key: the close frees the room first.
        assert c.cmd(b"get ma/close/open") == b"END\r\n"
        assert queue_stats(c, "ma")["open_transactions"] == 0


def test_max_open_reads_counts_keys_of_one_command(make_server):
    server = make_server(args=["--max-open-reads", "2"])
    with server.mc() as c:
        set_many(c, "mk", [b"a", b"b", b"c"])
        assert c.cmd(b"get mk/open mk/open mk/open") == b"ERROR\r\n"
        assert queue_stats(c, "mk")["open_transactions"] == 0
        c.send(b"get mk/open mk/open\r\n")
        c.expect(b"VALUE mk/open 0 1\r\na\r\nVALUE mk/open 0 1\r\nb\r\nEND\r\n")
        assert c.cmd(b"get mk/open") == b"ERROR\r\n"


def test_default_max_open_reads_is_100(server):
    with server.mc() as c:
        set_many(c, "hq", [b"m%03d" % i for i in range(101)])
        # One command asking for 101 opens is refused whole.
        assert c.cmd(b"get " + b" ".join([b"hq/open"] * 101)) == b"ERROR\r\n"
        assert queue_stats(c, "hq")["open_transactions"] == 0
        c.send(b"get " + b" ".join([b"hq/open"] * 100) + b"\r\n")
        values = c.read_values()
        assert [v[2] for v in values] == [b"m%03d" % i for i in range(100)]
        assert c.cmd(b"get hq/open") == b"ERROR\r\n"
        assert c.cmd(b"get other/open") == b"ERROR\r\n", "the limit is per connection, all queues"
        assert queue_stats(c, "hq")["open_transactions"] == 100
        assert c.cmd(b"get hq/abort") == b"END\r\n"
        assert queue_stats(c, "hq")["items"] == 101


def test_max_open_reads_zero_refuses_every_open(make_server):
    server = make_server(args=["--max-open-reads", "0"])
    with server.mc() as c:
        assert c.set("z", "x") == b"STORED\r\n"
        assert c.cmd(b"get z/open") == b"ERROR\r\n"
        assert c.cmd(b"get empty/open") == b"ERROR\r\n"
        assert get_body(c, "z/peek") == b"x"
        assert get_body(c, "z") == b"x"


# --------------------------------------------------------------------------------------------
# --open-timeout
# --------------------------------------------------------------------------------------------


def test_open_timeout_gives_the_message_back(make_server):
    server = make_server(args=["--open-timeout", "1200"])
    with server.mc() as a, server.mc() as b:
        set_many(a, "ot", [b"m0", b"m1"])
        opened = time.monotonic()
        assert get_body(a, "ot/open") == b"m0"
        time.sleep(0.3)
        assert peek(b, "ot") == b"m1", "the open message came back long before its timeout"
        assert wait_for(lambda: peek(b, "ot") == b"m0", timeout=10), "never came back"
        back = time.monotonic() - opened
        assert back >= 1.0, f"came back after {back:.2f}s, the timeout is 1.2 s"
        assert queue_stats(b, "ot")["open_transactions"] == 0
        # The connection no longer holds it: a late /close confirms nothing, and a plain get
        # on that queue is allowed again.
        assert a.cmd(b"get ot/close") == b"END\r\n"
        assert get_body(a, "ot") == b"m0"
        assert get_body(b, "ot") == b"m1"


def test_open_timeout_frees_the_open_read_allowance(make_server):
    server = make_server(args=["--open-timeout", "500", "--max-open-reads", "1"])
    with server.mc() as a:
        set_many(a, "of", [b"m0", b"m1"])
        assert get_body(a, "of/open") == b"m0"
        assert a.cmd(b"get of/open") == b"ERROR\r\n"
        assert wait_for(lambda: queue_stats(a, "of")["open_transactions"] == 0, timeout=10)
        assert get_body(a, "of/open") == b"m0", "the timed-out message goes back to the head"
        assert a.cmd(b"get of/close") == b"END\r\n"
        assert drain(a, "of") == [b"m1"]


def test_confirmed_before_open_timeout_stays_confirmed(make_server):
    server = make_server(args=["--open-timeout", "800"])
    with server.mc() as a:
        set_many(a, "oc", [b"m0"])
        assert get_body(a, "oc/open") == b"m0"
        assert a.cmd(b"get oc/close") == b"END\r\n"
        time.sleep(1.5)
        assert get_body(a, "oc") is None


# --------------------------------------------------------------------------------------------
# Consumers that die between /open and /close
# --------------------------------------------------------------------------------------------


def _queue_restored(server, expected):
    with server.mc() as c:
        return drain(c, "die") == expected


@pytest.mark.parametrize("death", ["close", "quit", "reset", "sigterm_server", "kill9_server"])
def test_consumer_dying_between_open_and_close_loses_nothing(server, death):
    with server.mc() as setup:
        set_many(setup, "die", [b"m0", b"m1", b"m2", b"m3"])
        set_many(setup, "die2", [b"x0"])
    consumer = server.mc()
    # A confirmed message (it must stay confirmed), then an open one on each of two queues.
    # (Several open messages on one queue: see the in-order test below.)
    assert get_body(consumer, "die/open") == b"m0"
    assert consumer.cmd(b"get die/close") == b"END\r\n"
    assert get_body(consumer, "die/open") == b"m1"
    assert get_body(consumer, "die2/open") == b"x0"
    with server.mc() as other:
        # A later acknowledged write: it is fsync'd, and with it the /close above.
        assert other.set("marker", "x") == b"STORED\r\n"
        assert peek(other, "die") == b"m2"
        assert get_body(other, "die2") is None
    if death == "close":
        consumer.close()
    elif death == "quit":
        consumer.send(b"quit\r\n")
        assert consumer.closed_by_server(5)
        consumer.close()
    elif death == "reset":
        reset_close(consumer)
    elif death == "sigterm_server":
        assert server.stop() == 0, server.log_tail()
        consumer.close()
        server.start()
    elif death == "kill9_server":
        server.kill()
        consumer.close()
        server.start()
    with server.mc() as c:
        # "At once": within a couple of seconds on a loaded machine.
        assert wait_for(lambda: queue_stats(c, "die").get("items") == 3, timeout=3), (
            f"the open message was not given back: {queue_stats(c, 'die')}"
        )
        assert queue_stats(c, "die")["open_transactions"] == 0
        assert drain(c, "die") == [b"m1", b"m2", b"m3"], "lost, duplicated or not at the head"
        assert drain(c, "die2") == [b"x0"]


@pytest.mark.parametrize("death", ["abort", "close", "reset"])
def test_several_open_messages_go_back_in_their_original_order(server, death):
    """spec 5: on /abort or a closed connection, every open message goes back to the head of
    its queue "in its original order, and is the next delivered"."""
    with server.mc() as setup:
        set_many(setup, "ord", [b"m0", b"m1", b"m2", b"m3"])
    consumer = server.mc()
    assert get_body(consumer, "ord/open") == b"m0"
    assert get_body(consumer, "ord/open") == b"m1"
    assert get_body(consumer, "ord/open") == b"m2"
    if death == "abort":
        assert consumer.cmd(b"get ord/abort") == b"END\r\n"
    elif death == "close":
        consumer.close()
    else:
        reset_close(consumer)
    with server.mc() as c:
        assert wait_for(lambda: queue_stats(c, "ord").get("items") == 4, timeout=3)
        got = drain(c, "ord")
        assert sorted(got) == [b"m0", b"m1", b"m2", b"m3"], f"lost or duplicated: {got}"
        assert got == [b"m0", b"m1", b"m2", b"m3"], f"given back out of order: {got}"
    consumer.close()


def test_consumer_process_killed_between_open_and_close(server):
    """A real consumer process opens a message and is killed with SIGKILL."""
    with server.mc() as c:
        set_many(c, "proc", [b"m0", b"m1"])
    code = (
        "import socket, sys, time\n"
        f"s = socket.create_connection(('127.0.0.1', {server.port}))\n"
        "s.sendall(b'get proc/open\\r\\n')\n"
        "buf = b''\n"
        "while not buf.endswith(b'END\\r\\n'):\n"
        "    buf += s.recv(4096)\n"
        "sys.stdout.write(buf.decode()); sys.stdout.flush()\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        out = b""
        deadline = time.monotonic() + 10
        while not out.endswith(b"END\r\n") and time.monotonic() < deadline:
            chunk = os.read(child.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
        assert out == b"VALUE proc/open 0 2\r\nm0\r\nEND\r\n", out
        with server.mc() as c:
            assert peek(c, "proc") == b"m1"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    with server.mc() as c:
        assert wait_for(lambda: peek(c, "proc") == b"m0", timeout=3)
        assert drain(c, "proc") == [b"m0", b"m1"]


@pytest.mark.parametrize("how", ["abort", "reset", "open-timeout"])
def test_a_given_back_message_wakes_a_blocked_reader(make_server, how):
    """A reader blocked on the queue gets the message another consumer gives back."""
    server = make_server(args=["--open-timeout", "1000" if how == "open-timeout" else "600000"])
    with server.mc() as c:
        assert c.set("handoff", "job") == b"STORED\r\n"
    consumer = server.mc()
    assert get_body(consumer, "handoff/open") == b"job"
    with server.mc() as waiter:
        waiter.send(b"get handoff/t=20000/open\r\n")
        with server.mc() as ctl:
            assert wait_for(lambda: queue_stats(ctl, "handoff").get("waiters") == 1, 10)
        with Timed() as t:
            if how == "abort":
                assert consumer.cmd(b"get handoff/abort") == b"END\r\n"
            elif how == "reset":
                reset_close(consumer)
            waiter.expect(b"VALUE handoff/t=20000/open 0 3\r\njob\r\nEND\r\n", timeout=15)
        assert t.elapsed < 6, f"the waiter got the message back only after {t.elapsed:.2f}s"
        assert waiter.cmd(b"get handoff/close") == b"END\r\n"
    consumer.close()
    with server.mc() as c:
        assert get_body(c, "handoff") is None


def test_message_that_expires_while_open_is_not_delivered_after_abort(server):
    """spec 6: an expired message is never delivered, also when it comes back from /abort."""
    with server.mc() as c, server.mc() as other:
        c.send(b"set eo 0 1 4\r\nsoon\r\n")
        c.expect(b"STORED\r\n")
        assert c.set("eo", "later") == b"STORED\r\n"
        assert get_body(c, "eo/open") == b"soon"
        time.sleep(1.6)
        assert c.cmd(b"get eo/abort") == b"END\r\n"
        assert get_body(other, "eo") == b"later"
        assert get_body(other, "eo") is None
        assert queue_stats(other, "eo")["expired_items"] == 1


def test_unconfirmed_messages_redelivered_after_kill_9_under_repeated_crashes(server):
    """Open, crash, restart, open again, crash again: still delivered, still once."""
    with server.mc() as c:
        set_many(c, "rc", [b"m0", b"m1"])
    for _ in range(2):
        c = server.mc()
        assert get_body(c, "rc/open") == b"m0"
        server.kill()
        c.close()
        server.start()
    with server.mc() as c:
        assert get_body(c, "rc/open") == b"m0"
        assert c.cmd(b"get rc/close") == b"END\r\n"
        assert c.set("rc-marker", "x") == b"STORED\r\n"  # makes the /close durable
    server.kill()
    server.start()
    with server.mc() as c:
        assert drain(c, "rc") == [b"m1"]


# --------------------------------------------------------------------------------------------
# A real client library: pymemcache
# --------------------------------------------------------------------------------------------


@pytest.fixture
def pymc_factory(server):
    clients = []

    def make():
        client = PymemcacheClient(("127.0.0.1", server.port), connect_timeout=5, timeout=15)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_pymemcache_reliable_consumer_loop(server, pymc_factory):
    producer = pymc_factory()
    for i in range(10):
        assert producer.set("jobs", b"job%d" % i, noreply=False) is True
    consumer = pymc_factory()
    done = []
    while True:
        body = consumer.get("jobs/t=300/open")
        if body is None:
            break
        done.append(body)
        assert consumer.get("jobs/close") is None
    assert done == [b"job%d" % i for i in range(10)]
    assert producer.get("jobs") is None
    stats = producer.stats()
    assert stats[b"queue_jobs_open_transactions"] == 0
    assert stats[b"queue_jobs_items"] == 0


def test_pymemcache_close_open_loop_and_plain_get_refused(server, pymc_factory):
    c = pymc_factory()
    watcher = pymc_factory()
    for i in range(5):
        c.set("pj", b"p%d" % i, noreply=False)
    assert c.get("pj/open") == b"p0"
    with pytest.raises(MemcacheUnknownCommandError):
        c.get("pj")  # a plain get while holding an open read: ERROR
    # pymemcache drops its connection after any error reply, so p0 goes back to the head.
    assert wait_for(lambda: watcher.get("pj/peek") == b"p0", timeout=3)
    got = [c.get("pj/open")]
    while True:
        body = c.get("pj/close/open")
        if body is None:
            break
        got.append(body)
    assert got == [b"p%d" % i for i in range(5)]
    assert c.get("pj/close") is None
    assert c.get("pj") is None
    assert watcher.get("pj/peek") is None


def test_pymemcache_consumer_crash_redelivers_to_the_next(server, pymc_factory):
    producer = pymc_factory()
    producer.set("crashjobs", b"important", noreply=False)
    producer.set("crashjobs", b"next", noreply=False)
    first = pymc_factory()
    assert first.get("crashjobs/open") == b"important"
    assert producer.get("crashjobs/peek") == b"next"
    first.close()  # dies without confirming
    second = pymc_factory()
    assert wait_for(lambda: second.get("crashjobs/peek") == b"important", timeout=3)
    assert second.get("crashjobs/open") == b"important"
    assert second.get("crashjobs/close") is None
    assert second.get("crashjobs/t=100/open") == b"next"
    second.get("crashjobs/abort")
    assert producer.get("crashjobs") == b"next"
