"""Hostile or broken peers must not hurt the server or other clients."""

import random
import socket
import struct
import time

import pytest

from conftest import frame, wait_for


def assert_serving(server):
    server.assert_alive()
    with server.mc() as mc:
        assert mc.set("health", "ok") == b"STORED\r\n"
        assert mc.get_one("health") == b"ok"
    with server.mq() as mq:
        assert mq.put(b"health", b"ok") == [b"OK"]
        assert mq.get(b"health") == [b"OK", b"ok"]


@pytest.mark.parametrize(
    "first",
    [b"\xff\xfe\xfd garbage", b"1234\r\n", b" set q 0 0 1\r\n", b"\x81\x00\x00\x00", b"{}\r\n", b"\x7f"],
    ids=["high-bytes", "digit", "space", "memcache-binary-response-magic", "brace", "del"],
)
def test_first_byte_of_neither_protocol_is_closed(server, first):
    with server.mc() as other:  # an innocent bystander, connected before
        assert other.set("by", "stander") == b"STORED\r\n"
        with server.mc() as bad:
            bad.send(first)
            assert bad.closed_by_server(), "connection of neither protocol left open"
            assert bad.buf == b"", f"answered {bad.buf!r} to a non-protocol connection"
        assert other.get_one("by") == b"stander"
    assert_serving(server)


def test_memcache_binary_magic_is_a_protocol_of_its_own(server):
    """0x80 starts a memcache binary request: answered in binary (magic 0x81, the request's
    opcode and opaque), not closed as a stranger."""
    with server.mc() as c:
        c.send(struct.pack(">BBHBBHIIQ", 0x80, 0x0B, 0, 0, 0, 0, 0, 0xFEEDF00D, 0))  # VERSION
        magic, opcode, _, _, _, status, body_len, opaque, cas = struct.unpack(
            ">BBHBBHIIQ", c.read_exactly(24)
        )
        assert (magic, opcode, status, opaque, cas) == (0x81, 0x0B, 0, 0xFEEDF00D, 0)
        assert c.read_exactly(body_len).count(b".") == 2
    assert_serving(server)


def test_random_garbage_connections(server):
    rng = random.Random(1234)
    for i in range(30):
        with server.mc(timeout=5) as c:
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000)))
            try:
                c.send(blob)
            except OSError:
                pass  # the server may already have closed it
        if i % 10 == 9:
            assert_serving(server)
    assert_serving(server)


def test_random_memcache_lines(server):
    """Printable junk in memcache mode gets answers (or a close), never a crash."""
    rng = random.Random(99)
    words = [b"set", b"get", b"gets", b"delete", b"stats", b"q", b"0", b"-1", b"99999999999999999999",
             b"noreply", b"/t=5", b"/open", b"/close", b"\t", b"", b"verbosity", b"flush_all"]
    for _ in range(5):
        with server.mc(timeout=5) as c:
            lines = b"".join(
                b"x" + b" ".join(rng.choice(words) for _ in range(rng.randrange(0, 7))) + b"\r\n"
                if rng.random() < 0.3
                else b" ".join(rng.choice(words) for _ in range(rng.randrange(0, 7))) + b"\r\n"
                for _ in range(200)
            )
            try:
                c.send(b"version\r\n" + lines)
                assert c.read_line().startswith(b"VERSION")
            except OSError:
                pass
    # The junk includes flush_all: let the server finish what it had already read from the
    # junk connections before checking it still serves.
    with server.mq() as watcher:
        assert wait_for(lambda: watcher.info()[1]["NumConnections"] == 1, timeout=10)
    assert_serving(server)


def test_random_mqmq_frames_get_only_ok_error_or_timeout(server):
    """Well-framed requests with random contents: the first reply value is only ever OK, Error
    or Timeout (or, after Quit / an unknown command, the connection closes)."""
    rng = random.Random(7)
    commands = [b"Put", b"Get", b"Info", b"Quit", b"put", b"", b"Get\x00", b"\xff"]
    values = [b"q", b"", b"0", b"-1", b"1", b"abc", b"3600001", b"x" * 1025, b"\x00\xff", b"5"]
    conn = server.mq(timeout=10)
    try:
        for _ in range(300):
            request = [rng.choice(commands)] + [rng.choice(values) for _ in range(rng.randrange(0, 4))]
            try:
                conn.send(frame(*request))
                reply = conn.read_frame()
            except (ConnectionError, BrokenPipeError):
                conn.close()
                conn = server.mq(timeout=10)
                continue
            assert reply and reply[0] in (b"OK", b"Error", b"Timeout"), (request, reply)
            if reply[0] == b"Error":
                assert len(reply) == 2 and reply[1].isupper(), (request, reply)
            if reply[0] == b"Timeout":
                assert reply == [b"Timeout"]
    finally:
        conn.close()
    assert_serving(server)


def test_half_sent_frame_then_disconnect(server):
    with server.mq() as c:
        f = frame(b"Put", b"half", b"never completes")
        c.send(f[: len(f) - 5])
    with server.mq() as c:
        c.send(struct.pack(">I", 1000) + b"\x00\x00")  # a header promising far more
    with server.mq() as c:
        c.send(b"\x00\x00")  # half a length
    time.sleep(0.2)
    with server.mq() as mq:
        assert mq.get(b"half") == [b"Timeout"], "a half-sent Put was stored"
    assert_serving(server)


def test_half_sent_memcache_set_then_disconnect(server):
    with server.mc() as c:
        c.send(b"set half 0 0 100\r\nonly part of the body")
    with server.mc() as c:
        c.send(b"set half 0 0 5\r\nhello")  # body complete but no CRLF yet
    time.sleep(0.2)
    with server.mc() as mc:
        mc.send(b"get half\r\n")
        mc.expect(b"END\r\n")
    assert_serving(server)


def test_disconnect_with_unread_replies(server):
    """A client that pipelines a lot and leaves without reading its replies."""
    body = b"v" * 1000
    with server.mc() as c:
        c.send(b"set many 0 0 1000\r\n" + body + b"\r\n")
        c.expect(b"STORED\r\n")
        c.send(b"stats\r\n" * 2000)
    time.sleep(0.2)
    with server.mc() as mc:
        assert mc.get_one("many") == body
    assert_serving(server)


@pytest.mark.parametrize("protocol", ["mqmq", "memcache"])
def test_waiter_that_disconnects_does_not_swallow_a_message(server, protocol):
    """A blocked read whose client has gone must not take the next message with it."""
    if protocol == "mqmq":
        waiter = server.mq()
        waiter.send_frame(b"Get", b"orphan", b"10000")
    else:
        waiter = server.mc()
        waiter.send(b"get orphan/t=10000\r\n")
    time.sleep(0.3)
    waiter.close()
    time.sleep(0.5)
    with server.mq() as producer:
        assert producer.put(b"orphan", b"precious") == [b"OK"]
    time.sleep(0.3)
    with server.mq() as consumer:
        assert consumer.get(b"orphan", 2000) == [b"OK", b"precious"], (
            "the message went to a reader that had already disconnected"
        )


def test_disconnected_clients_are_counted_down(server):
    with server.mq() as watcher:
        conns = [server.mc() for _ in range(10)]
        for c in conns:
            c.cmd(b"version")
        assert wait_for(lambda: watcher.info()[1]["NumConnections"] == 11)
        for c in conns:
            c.close()
        assert wait_for(lambda: watcher.info()[1]["NumConnections"] == 1), watcher.info()[0]


def test_max_connections(make_server):
    server = make_server(["--max-connections", "2"])
    # Let the readiness probe's connection be counted down.
    time.sleep(0.3)
    with server.mc() as a, server.mc() as b:
        assert a.cmd(b"version").startswith(b"VERSION")
        assert b.cmd(b"version").startswith(b"VERSION")
        third = socket.create_connection(server.addr, timeout=5)
        try:
            third.settimeout(5)
            try:
                third.sendall(b"version\r\n")
                data = third.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            assert data == b"", f"a connection over --max-connections was served: {data!r}"
        finally:
            third.close()
    time.sleep(0.3)
    assert_serving(server)


def test_many_idle_connections(server):
    conns = []
    try:
        for _ in range(200):
            conns.append(socket.create_connection(server.addr, timeout=5))
        assert_serving(server)
    finally:
        for c in conns:
            c.close()
    assert_serving(server)


def test_slow_reader_of_large_values(server):
    """Replies bigger than the socket buffers to a client that reads slowly."""
    body = b"s" * 200_000
    with server.mc(timeout=30) as c:
        for _ in range(20):
            assert c.set("slowread", body) == b"STORED\r\n"
        c.send(b"get slowread\r\n" * 20)
        time.sleep(0.5)  # let the server fill the socket buffers
        for _ in range(20):
            c.expect(b"VALUE slowread 0 200000\r\n" + body + b"\r\nEND\r\n", timeout=30)
    assert_serving(server)


def test_a_huge_multi_get_is_capped_and_leaves_the_rest_queued(make_server):
    """One 64 KiB get line could name thousands of keys holding big messages; the reply stops at
    8 MiB of bodies (spec 3.2) and the remaining messages stay in their queues."""
    server = make_server(args=["--max-message-size", "1m"])
    body = b"x" * (1 << 20)
    with server.mc() as c:
        for _ in range(12):
            assert c.set(b"big", body) == b"STORED\r\n"
        values = c.get(*([b"big"] * 12))
        assert len(values) == 8 and all(v[2] == body for v in values)
        c.send(b"stats queue\r\n")
        c.expect(b"STAT big 12/8\r\nEND\r\n")
        assert len(c.get(*([b"big"] * 12))) == 4
