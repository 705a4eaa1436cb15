"""Both protocols on the same queues and the same ports; pipelining and byte-by-byte input."""

import re
import threading
import time

import pytest

from conftest import frame

# Every test runs as users run the server (one event loop) and with several loops.
pytestmark = pytest.mark.event_loops


def test_blocking_mqmq_get_woken_by_memcache_set(server):
    with server.mq() as waiter, server.mc() as producer:
        start = time.monotonic()
        waiter.send_frame(b"Get", b"xq", b"5000")
        time.sleep(0.3)
        assert waiter.nothing_pending(0.05), "Get answered before any message existed"
        assert producer.set("xq", "from memcache", flags=5) == b"STORED\r\n"
        assert waiter.read_frame(timeout=10) == [b"OK", b"from memcache"]
        elapsed = time.monotonic() - start
        assert elapsed < 4.0, f"woken only after {elapsed:.2f}s (timeout was 5s)"
        # It was taken, not copied.
        producer.send(b"get xq\r\n")
        producer.expect(b"END\r\n")


def test_blocking_memcache_get_woken_by_mqmq_put(server):
    """Kestrel's `get q/t=<ms>` blocks; an mqmq Put from another connection wakes it."""
    with server.mc() as waiter, server.mq() as producer:
        start = time.monotonic()
        waiter.send(b"get kq/t=5000\r\n")
        time.sleep(0.3)
        assert waiter.nothing_pending(0.05)
        assert producer.put(b"kq", b"from mqmq") == [b"OK"]
        waiter.expect(b"VALUE kq/t=5000 0 9\r\nfrom mqmq\r\nEND\r\n")
        assert time.monotonic() - start < 4.0


def test_memcache_timed_get_times_out_with_end(server):
    with server.mc() as c:
        start = time.monotonic()
        c.send(b"get none/t=400\r\n")
        c.expect(b"END\r\n")
        assert 0.3 <= time.monotonic() - start < 5.0


def test_mqmq_put_then_memcache_get(server):
    with server.mq() as mq, server.mc() as mc:
        assert mq.put(b"rev", b"one") == [b"OK"]
        assert mq.put(b"rev", b"two") == [b"OK"]
        mc.send(b"get rev\r\n")
        mc.expect(b"VALUE rev 0 3\r\none\r\nEND\r\n")
        assert mq.get(b"rev") == [b"OK", b"two"]


def test_memcache_flags_do_not_leak_into_mqmq(server):
    with server.mc() as mc, server.mq() as mq:
        assert mc.set("f", "body", flags=99) == b"STORED\r\n"
        assert mq.get(b"f") == [b"OK", b"body"]


def test_stats_queue_and_info_agree_across_protocols(server):
    with server.mc() as mc, server.mq() as mq:
        assert mc.set("shared", "a") == b"STORED\r\n"
        assert mq.put(b"shared", b"b") == [b"OK"]
        assert mq.put(b"shared", b"c") == [b"OK"]
        assert mc.get_one("shared") == b"a"
        assert mc.stats(b"queue") == {"shared": "3/1"}
        _, doc = mq.info()
        assert doc["Queues"] == {"shared": {"NumMessages": 2}}
        assert int(mc.stats()["curr_items"]) == 2
        mc.send(b"delete shared\r\n")
        mc.expect(b"DELETED\r\n")
        _, doc = mq.info()
        assert "shared" not in doc["Queues"]


def test_every_listener_speaks_both_protocols(make_server):
    server = make_server(listeners=2)
    a, b = server.ports
    with server.mc(port=a) as mc_a, server.mq(port=b) as mq_b:
        assert mc_a.set("ports", "via a") == b"STORED\r\n"
        assert mq_b.get(b"ports") == [b"OK", b"via a"]
    with server.mq(port=a) as mq_a, server.mc(port=b) as mc_b:
        assert mq_a.put(b"ports", b"via a again") == [b"OK"]
        assert mc_b.get_one("ports") == b"via a again"


def test_each_message_goes_to_exactly_one_waiter(server):
    waiters = [server.mq() for _ in range(3)]
    try:
        for w in waiters:
            w.send_frame(b"Get", b"fan", b"6000")
        time.sleep(0.3)
        with server.mc() as mc:
            for i in range(3):
                assert mc.set("fan", "m%d" % i) == b"STORED\r\n"
        got = sorted(w.read_frame(timeout=10)[1] for w in waiters)
        assert got == [b"m0", b"m1", b"m2"]
    finally:
        for w in waiters:
            w.close()


def test_pipelined_memcache_sets_and_gets(server):
    n = 200
    with server.mc() as c:
        request = b"".join(b"set pipe 0 0 %d\r\nmsg%d\r\n" % (len(b"msg%d" % i), i) for i in range(n))
        request += b"get pipe\r\n" * (n + 1)
        request += b"stats queue\r\n"
        c.send(request)
        expected = b"STORED\r\n" * n
        expected += b"".join(b"VALUE pipe 0 %d\r\nmsg%d\r\nEND\r\n" % (len(b"msg%d" % i), i) for i in range(n))
        expected += b"END\r\n"
        expected += b"STAT pipe %d/%d\r\nEND\r\n" % (n, n)
        c.expect(expected, timeout=60)


def test_pipelined_bulk_larger_than_the_input_buffer(server):
    """Several MB of pipelined sets then gets, sent from a thread while replies are read:
    back-pressure must neither lose nor reorder anything."""
    n, size = 3000, 2000
    bodies = [(b"%06d" % i) * (size // 6) for i in range(n)]
    request = b"".join(b"set bulk 0 0 %d\r\n%s\r\n" % (len(b), b) for b in bodies)
    request += b"get bulk\r\n" * n
    with server.mc(timeout=60) as c:
        sender = threading.Thread(target=c.send, args=(request,))
        sender.start()
        try:
            c.expect(b"STORED\r\n" * n, timeout=60)
            for body in bodies:
                c.expect(b"VALUE bulk 0 %d\r\n%s\r\nEND\r\n" % (len(body), body), timeout=60)
        finally:
            sender.join(60)


@pytest.mark.parametrize("dialect", ["text", "binary"])
def test_a_long_pipeline_then_a_half_close_gets_every_reply(server, dialect):
    """A connection runs a share of its requests per turn of its loop; a client that sends many
    and then closes its side (`printf ... | nc`) still gets all of their replies, then EOF, even
    when the server reads the pipeline and its end at once (a busy neighbour keeps the loop
    working meanwhile)."""
    import socket

    from conftest import Op, binary_request

    n = 2000
    if dialect == "text":
        request, reply = b"get none\r\n", b"END\r\n"
    else:
        request = binary_request(Op.GET, b"none")
        reply = bytes([0x81, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9]) + b"\0" * 12 + b"Not found"
    stop = threading.Event()

    busy = server.mc(timeout=30)

    def send_forever():
        while not stop.is_set():
            busy.sock.sendall(b"get none\r\n" * 20000)

    def read_forever():
        while not stop.is_set() and busy.sock.recv(1 << 20):
            pass

    threads = [threading.Thread(target=send_forever), threading.Thread(target=read_forever)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        for _ in range(10):
            # Without TCP_NODELAY, as `nc` sends: the FIN may ride on the last data segment.
            with socket.create_connection(server.addr, timeout=10) as c:
                c.sendall(request * n)
                c.shutdown(socket.SHUT_WR)
                got = b""
                try:
                    while chunk := c.recv(1 << 20):
                        got += chunk
                except socket.timeout:
                    pytest.fail(f"no EOF after {len(got) // len(reply)} of {n} replies")
                assert got == reply * n, f"{len(got) // len(reply)} of {n} replies"
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        busy.close()


def test_pipelined_interleaved_set_get(server):
    with server.mc() as c:
        request = b"".join(b"set il 0 0 1\r\n%d\r\nget il\r\n" % (i % 10) for i in range(50))
        c.send(request)
        expected = b"".join(b"STORED\r\nVALUE il 0 1\r\n%d\r\nEND\r\n" % (i % 10) for i in range(50))
        c.expect(expected, timeout=60)


def test_spec_example_a_get_pipelined_behind_a_set_sees_it(server):
    """protocol-spec/memcache.md section 9: one packet, three commands, replies in order."""
    with server.mc() as c:
        c.send(b"set q9 0 0 2\r\nm1\r\nget q9\r\nversion\r\n")
        c.expect(b"STORED\r\nVALUE q9 0 2\r\nm1\r\nEND\r\nVERSION ", timeout=10)


def test_pipelined_mqmq_frames(server):
    n = 100
    with server.mq() as c:
        request = b"".join(frame(b"Put", b"mp", b"m%d" % i) for i in range(n))
        request += b"".join(frame(b"Get", b"mp") for _ in range(n + 1))
        c.send(request)
        for _ in range(n):
            assert c.read_frame(timeout=60) == [b"OK"]
        for i in range(n):
            assert c.read_frame(timeout=60) == [b"OK", b"m%d" % i]
        assert c.read_frame() == [b"Timeout"]


def test_memcache_byte_by_byte(server):
    with server.mc() as c:
        c.send_slowly(b"set slow 3 0 5\r\nhello\r\n")
        c.expect(b"STORED\r\n")
        c.send_slowly(b"get slow\r\n")
        c.expect(b"VALUE slow 3 5\r\nhello\r\nEND\r\n")


def test_mqmq_byte_by_byte(server):
    with server.mq() as c:
        c.send_slowly(frame(b"Put", b"slow", b"hello"))
        assert c.read_frame() == [b"OK"]
        c.send_slowly(frame(b"Get", b"slow", b"100"))
        assert c.read_frame() == [b"OK", b"hello"]


def test_concurrent_producers_and_consumers(server):
    """Several connections of both protocols at once: nothing lost, nothing duplicated,
    and each producer's messages come out in the order it put them."""
    per_producer = 40
    producers = 4
    errors = []

    def produce(p):
        try:
            if p % 2:
                with server.mq() as c:
                    for i in range(per_producer):
                        assert c.put(b"cc", b"p%d-%03d" % (p, i)) == [b"OK"]
            else:
                with server.mc() as c:
                    for i in range(per_producer):
                        assert c.set("cc", b"p%d-%03d" % (p, i)) == b"STORED\r\n"
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    got = []
    with server.mc() as mc, server.mq() as mq:
        while True:
            body = mc.get_one("cc")
            if body is None:
                break
            got.append(body)
            reply = mq.get(b"cc")
            if reply == [b"Timeout"]:
                break
            got.append(reply[1])
    assert len(got) == producers * per_producer
    assert len(set(got)) == len(got)
    for p in range(producers):
        mine = [g for g in got if g.startswith(b"p%d-" % p)]
        assert mine == sorted(mine) and len(mine) == per_producer


def test_stats_stay_parseable_whatever_names_mqmq_clients_use(server):
    """mqmq allows any bytes in a queue name (up to 1024); memcache names cannot hold spaces
    or control characters. `stats queue` and `stats` are memcache replies and must keep their
    framing: one `STAT <name> <value>` line per entry, then END, nothing after it."""
    with server.mq() as mq:
        for name in [b"plain", b"with space", b"line\r\nEND\r\nbreak", b"tab\tctl\x01"]:
            assert mq.put(name, b"x") == [b"OK"]
    with server.mc() as mc:
        for command in [b"stats queue", b"stats"]:
            mc.send(command + b"\r\n")
            while True:
                line = mc.read_line()
                if line == b"END\r\n":
                    break
                assert re.fullmatch(rb"STAT [!-~\x80-\xff]+ [!-~]+\r\n", line), (
                    f"malformed line in `{command.decode()}` reply: {line!r}"
                )
            assert mc.cmd(b"version").startswith(b"VERSION "), "reply framing lost after stats"
        assert mc.stats(b"queue").get("plain") == "1/0"


# Every dialect puts, every dialect reads: text, memcache binary, meta, mqmq --------------------

DIALECTS = ["text", "binary", "meta", "mqmq"]


def put(server, dialect, queue, body, flags):
    """Appends over `dialect`; mqmq has no flags (its messages have flags 0)."""
    if dialect == "text":
        with server.mc() as c:
            assert c.set(queue, body, flags=flags) == b"STORED\r\n"
    elif dialect == "binary":
        with server.mb() as c:
            assert c.set(queue, body, flags=flags).status == 0
    elif dialect == "meta":
        with server.mc() as c:
            c.send(b"ms %s %d F%d\r\n%s\r\n" % (queue, len(body), flags, body))
            assert c.read_line() == b"HD\r\n"
    else:
        with server.mq() as c:
            assert c.put(queue, body) == [b"OK"]


def take(server, dialect, queue):
    """Removes the oldest message over `dialect`: (body, flags), flags None over mqmq."""
    if dialect == "text":
        with server.mc() as c:
            [(_, flags, body, _)] = c.get(queue)
            return body, flags
    if dialect == "binary":
        with server.mb() as c:
            r = c.get(queue)
            assert r.status == 0, r
            return r.value, r.flags
    if dialect == "meta":
        with server.mc() as c:
            c.send(b"mg %s v f\r\n" % queue)
            head = c.read_line().split()
            assert head[0] == b"VA", head
            body = c.read_exactly(int(head[1]) + 2)[:-2]
            return body, int(head[2][1:])
    with server.mq() as c:
        reply = c.get(queue)
        assert reply[0] == b"OK", reply
        return reply[1], None


@pytest.mark.parametrize("writer", DIALECTS)
def test_a_message_put_over_one_dialect_is_read_over_every_other(server, writer):
    flags = 0 if writer == "mqmq" else 0xC0FFEE
    for reader in DIALECTS:
        queue = b"x-%s-%s" % (writer.encode(), reader.encode())
        body = b"from %s to %s \x00\xff\r\n" % (writer.encode(), reader.encode())
        put(server, writer, queue, body, flags)
        put(server, writer, queue, body + b" #2", flags)
        got_body, got_flags = take(server, reader, queue)
        assert got_body == body, f"{writer} -> {reader}"
        if got_flags is not None:
            assert got_flags == flags, f"{writer} -> {reader}: flags {got_flags}"
        # FIFO across dialects too: the second one is next, whoever reads it.
        other = DIALECTS[(DIALECTS.index(reader) + 1) % len(DIALECTS)]
        assert take(server, other, queue)[0] == body + b" #2"
