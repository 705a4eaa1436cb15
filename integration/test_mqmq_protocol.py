"""The mqmq length-prefixed frame protocol: requests, replies and every error code."""

import json
import struct
import time

import pytest

from conftest import MQMQ_MAX_FRAME, frame, wait_for

# Every test runs as users run the server (one event loop) and with several loops.
pytestmark = pytest.mark.event_loops

OK = [b"OK"]
TIMEOUT = [b"Timeout"]


def error(code):
    return [b"Error", code]


def test_frame_encoding_of_replies(server):
    with server.mq() as c:
        c.send(frame("Put", "q", "hello"))
        c.expect(b"\x00\x00\x00\x06" + b"\x00\x00\x00\x02OK")
        c.send(frame("Get", "q"))
        c.expect(b"\x00\x00\x00\x0f" + b"\x00\x00\x00\x02OK" + b"\x00\x00\x00\x05hello")
        c.send(frame("Get", "q"))
        c.expect(b"\x00\x00\x00\x0b" + b"\x00\x00\x00\x07Timeout")


def test_put_get_fifo(server):
    with server.mq() as c:
        for i in range(5):
            assert c.put(b"jobs", b"job%d" % i) == OK
        for i in range(5):
            assert c.get(b"jobs", 100) == [b"OK", b"job%d" % i]
        assert c.get(b"jobs") == TIMEOUT


def test_binary_and_empty_bodies(server):
    body = bytes(range(256)) * 4
    with server.mq() as c:
        assert c.put(b"bin", body) == OK
        assert c.put(b"bin", b"") == OK
        assert c.get(b"bin") == [b"OK", body]
        assert c.get(b"bin") == [b"OK", b""]


def test_extra_values_are_ignored(server):
    with server.mq() as c:
        assert c.request(b"Put", b"x", b"body", b"extra", b"more") == OK
        assert c.request(b"Get", b"x", b"100", b"extra") == [b"OK", b"body"]
        reply = c.request(b"Info", b"whatever")
        assert reply[0] == b"OK"


def test_get_times_out_after_roughly_the_timeout(server):
    with server.mq() as c:
        start = time.monotonic()
        assert c.get(b"empty", 700) == TIMEOUT
        elapsed = time.monotonic() - start
        assert 0.6 <= elapsed < 6.0, f"Get with a 700 ms timeout answered after {elapsed:.3f}s"


@pytest.mark.parametrize("timeout", [None, b"0", b"1", b"-5", b"+1"])
def test_get_with_no_or_tiny_timeout_answers_quickly(server, timeout):
    with server.mq() as c:
        start = time.monotonic()
        assert c.get(b"empty", timeout) == TIMEOUT
        assert time.monotonic() - start < 2.0


def test_get_with_maximum_timeout_returns_at_once_when_a_message_is_there(server):
    with server.mq() as c:
        assert c.put(b"q", b"m") == OK
        start = time.monotonic()
        assert c.get(b"q", 3600000) == [b"OK", b"m"]
        assert time.monotonic() - start < 2.0


def test_blocked_get_woken_by_put_on_another_connection(server):
    with server.mq() as waiter, server.mq() as producer:
        start = time.monotonic()
        waiter.send_frame(b"Get", b"wake", b"8000")
        time.sleep(0.3)
        assert producer.put(b"wake", b"now") == OK
        assert waiter.read_frame() == [b"OK", b"now"]
        assert time.monotonic() - start < 5.0


def test_pipelined_get_is_not_served_by_a_later_put_on_the_same_connection(server):
    """Requests on one connection run in order: a Get ahead of a Put times out first."""
    with server.mq() as c:
        start = time.monotonic()
        c.send(frame(b"Get", b"seq", b"400") + frame(b"Put", b"seq", b"later") + frame(b"Get", b"seq"))
        assert c.read_frame() == TIMEOUT
        assert time.monotonic() - start >= 0.3
        assert c.read_frame() == OK
        assert c.read_frame() == [b"OK", b"later"]


def info_when(conn, connections, timeout=5.0):
    """Info, polled until NumConnections settles at `connections` (closing sockets are counted
    down asynchronously)."""
    last = [None]

    def probe():
        raw, doc = conn.info()
        last[0] = (raw, doc)
        return doc["NumConnections"] == connections

    wait_for(probe, timeout)
    return last[0]


def test_info_empty_server(server):
    with server.mq() as c:
        raw, doc = info_when(c, 1)
        assert raw == b'{"NumConnections":1,"NumQueues":0,"NumMessages":0,"Queues":{}}'


def test_info_counts_queues_messages_and_connections(server):
    with server.mq() as c:
        for q, n in [("queue2", 6), ("queue1", 10)]:
            for i in range(n):
                assert c.put(q, b"m") == OK
        raw, doc = info_when(c, 1)
        assert raw == (
            b'{"NumConnections":1,"NumQueues":2,"NumMessages":16,'
            b'"Queues":{"queue1":{"NumMessages":10},"queue2":{"NumMessages":6}}}'
        )
        assert c.get(b"queue2") == [b"OK", b"m"]
        _, doc = c.info()
        assert doc["NumMessages"] == 15
        assert doc["Queues"]["queue2"] == {"NumMessages": 5}

        others = [server.mq() for _ in range(2)]
        try:
            for o in others:  # make sure the server has taken them in
                assert o.request(b"Info")[0] == b"OK"
            _, doc = info_when(c, 3)
            assert doc["NumConnections"] == 3
        finally:
            for o in others:
                o.close()
        _, doc = info_when(c, 1)
        assert doc["NumConnections"] == 1


def test_info_field_names_and_types(server):
    with server.mq() as c:
        assert c.put(b"a", b"1") == OK
        _, doc = c.info()
        assert list(doc) == ["NumConnections", "NumQueues", "NumMessages", "Queues"]
        assert all(isinstance(doc[k], int) for k in ["NumConnections", "NumQueues", "NumMessages"])
        assert doc["Queues"] == {"a": {"NumMessages": 1}}


def test_info_escapes_queue_names_as_json(server):
    name = 'we"ird\\name'
    with server.mq() as c:
        assert c.put(name, b"x") == OK
        _, doc = c.info()
        assert doc["Queues"] == {name: {"NumMessages": 1}}


def test_get_creates_no_queue(server):
    with server.mq() as c:
        assert c.get(b"made_by_get", 10) == TIMEOUT
        _, doc = c.info()
        assert "made_by_get" not in doc["Queues"] and doc["NumQueues"] == 0, doc


def test_quit_closes_without_reply(server):
    with server.mq() as c:
        c.send_frame(b"Quit")
        assert c.closed_by_server()
        assert c.buf == b""


@pytest.mark.parametrize(
    "values",
    [[], [b"Put"], [b"Put", b"q"], [b"Get"]],
    ids=["empty-frame", "put-1", "put-2", "get-1"],
)
def test_too_few_values_is_bad_params(server, values):
    with server.mq() as c:
        assert c.request(*values) == error(b"REQUEST_BAD_PARAMS")
        # Not fatal: the connection keeps working.
        assert c.put(b"after", b"x") == OK
        assert c.get(b"after") == [b"OK", b"x"]


def test_empty_frame_literal_bytes(server):
    """`00 00 00 00` crashed the original server; here it is an error and nothing more."""
    with server.mq() as c:
        c.send(b"\x00\x00\x00\x00")
        assert c.read_frame() == error(b"REQUEST_BAD_PARAMS")
        assert c.put(b"q", b"x") == OK
    with server.mq() as c:
        assert c.get(b"q") == [b"OK", b"x"]


def test_queue_name_length_limit(server):
    with server.mq() as c:
        ok = b"n" * 1024
        assert c.put(ok, b"fits") == OK
        assert c.get(ok) == [b"OK", b"fits"]
        long = b"n" * 1025
        assert c.put(long, b"x") == error(b"REQUEST_BAD_QUEUE_NAME")
        assert c.get(long) == error(b"REQUEST_BAD_QUEUE_NAME")
        assert c.put(b"after", b"x") == OK


@pytest.mark.parametrize("timeout", [b"abc", b"1.5", b"", b"10ms", b"3600001", b"99999999999999999999"])
def test_bad_timeout(server, timeout):
    with server.mq() as c:
        assert c.get(b"q", timeout) == error(b"REQUEST_BAD_TIMEOUT")
        assert c.put(b"q", b"x") == OK
        assert c.get(b"q", b"3600000") == [b"OK", b"x"]


@pytest.mark.parametrize("command", [b"put", b"GET", b"Stats", b"", b"Put "])
def test_unknown_command_then_closed(server, command):
    with server.mq() as c:
        assert c.request(command, b"q", b"body") == error(b"REQUEST_UNKNOWN_COMMAND")
        assert c.closed_by_server()
    with server.mq() as c:
        assert c.get(b"q") == TIMEOUT, "the refused request must not have stored anything"


def test_message_too_large(make_server):
    server = make_server(["--max-message-size", "100"])
    with server.mq() as c:
        assert c.put(b"q", b"x" * 100) == OK
        assert c.put(b"q", b"x" * 101) == error(b"REQUEST_MESSAGE_TOO_LARGE")
        assert c.get(b"q") == [b"OK", b"x" * 100]
        assert c.get(b"q") == TIMEOUT


def test_frame_far_over_the_message_limit_is_skipped(make_server):
    """A frame within the protocol's limit but far over --max-message-size is refused and
    discarded as it streams in; the next frame on the connection is served."""
    server = make_server(["--max-message-size", "100"])
    with server.mq() as c:
        big = frame(b"Put", b"q", b"y" * 200_000)
        c.send(big[:4])
        assert c.read_frame() == error(b"REQUEST_MESSAGE_TOO_LARGE")
        c.send(big[4:] + frame(b"Put", b"q", b"small"))
        assert c.read_frame() == OK
        assert c.get(b"q") == [b"OK", b"small"]


def test_frame_over_the_absolute_limit_is_refused_and_closed(server):
    with server.mq() as c:
        start = time.monotonic()
        c.send(struct.pack(">I", MQMQ_MAX_FRAME + 1))
        assert c.read_frame() == error(b"REQUEST_FRAME_TOO_LARGE")
        assert c.closed_by_server(), "connection left open after a too-large frame header"
        # It did not wait for the 32 MiB body that was never sent.
        assert time.monotonic() - start < 5.0
    with server.mq() as c:
        assert c.put(b"q", b"alive") == OK


def test_frame_at_the_absolute_limit_is_not_frame_too_large(make_server):
    """The largest frame the original allows: a 1024-byte name and a 32 MiB body."""
    server = make_server(["--max-message-size", "32m"])
    name = b"L" * 1024
    body = b"z" * (32 << 20)
    f = frame(b"Put", name, body)
    assert len(f) == 4 + MQMQ_MAX_FRAME
    with server.mq(timeout=60) as c:
        c.send(f)
        assert c.read_frame() == OK
        reply = c.get(name)
        assert reply[0] == b"OK" and len(reply) == 2
        assert len(reply[1]) == len(body) and reply[1] == body


def test_value_running_past_frame_end_is_an_error(server):
    with server.mq() as c:
        # One value claiming 100 bytes inside a 7-byte frame.
        c.send(b"\x00\x00\x00\x07" + b"\x00\x00\x00\x64Put")
        reply = c.read_frame()
        assert reply[0] == b"Error", reply
    with server.mq() as c:
        assert c.put(b"q", b"fine") == OK


def test_info_json_is_valid_json_with_many_queues(server):
    with server.mq() as c:
        for i in range(50):
            assert c.put(b"q%02d" % i, b"x") == OK
        raw, doc = c.info()
        assert json.loads(raw) == doc
        assert doc["NumQueues"] == 50 and doc["NumMessages"] == 50
        assert list(doc["Queues"]) == sorted(doc["Queues"])
