"""Many queues: a queue that nobody uses costs only its record on disk. Idle queues are unloaded
from memory (empty ones a few seconds after their last use, others least recently used first
once the loaded ones are over --queue-memory) and loaded again when a command names them, with
every message, counter and expiry as it was; --max-queues refuses a new queue. The figures at a
million queues are scripts/bench-many-queues'."""

import socket
import time

from conftest import wait_for


def metric(server, name):
    """A server-wide sample of /metrics, or None."""
    with socket.create_connection(server.addr, timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def set_many(mc, items):
    """Pipelines `set`s of (queue, body, exptime) and checks every reply."""
    mc.send(b"".join(b"set %s 0 %d %d\r\n%s\r\n" % (q, e, len(b), b) for q, b, e in items))
    for _ in items:
        assert mc.read_line() == b"STORED\r\n"


def test_max_queues_refuses_a_new_queue_and_delete_makes_room(make_server):
    server = make_server(args=["--max-queues", "3"])
    with server.mc() as mc, server.mq() as mq:
        for q in (b"a", b"b", b"c"):
            assert mc.set(q, b"x") == b"STORED\r\n"
        assert mc.set(b"d", b"x") == b"SERVER_ERROR too many queues\r\n"
        mc.send(b"set d 0 0 1 noreply\r\nx\r\n")
        assert mc.read_line() == b"SERVER_ERROR too many queues\r\n", "sent even with noreply"
        assert mq.put(b"e", b"x") == [b"Error", b"REQUEST_TOO_MANY_QUEUES"]
        assert mc.set(b"a", b"more") == b"STORED\r\n", "existing queues take messages"
        # A refused set leaves nothing behind.
        assert mc.stats()["curr_queues"] == "3"
        assert mc.get_one(b"d") is None
        assert mc.cmd(b"delete a") == b"DELETED\r\n"
        assert mc.set(b"d", b"y") == b"STORED\r\n"
        assert mc.set(b"a", b"z") == b"SERVER_ERROR too many queues\r\n"
    server.restart()
    with server.mc() as mc:
        assert mc.set(b"f", b"x") == b"SERVER_ERROR too many queues\r\n", "counted after a restart"
        assert mc.get_one(b"d") == b"y"


def test_idle_queues_are_unloaded_and_come_back_whole(make_server):
    # Room for about one loaded queue: the others go to disk within a second of going idle.
    server = make_server(args=["--queue-memory", "1k"])
    names = [b"u%02d" % i for i in range(40)]
    with server.mc() as mc:
        set_many(mc, [(q, b"%s-%d" % (q, n), 0) for q in names for n in range(3)])
        for q in names[:20]:
            assert mc.get_one(q) == q + b"-0"
        # One message given back: it stays in its queue's record, first in line.
        mc.send(b"get u20/open\r\n")
        assert mc.read_values() == [(b"u20/open", 0, b"u20-0", None)]
        mc.send(b"get u20/abort\r\n")
        assert mc.read_values() == []
        # One empty queue too.
        assert mc.get_one(b"u21") == b"u21-0"
        assert mc.get_one(b"u21") == b"u21-1"
        assert mc.get_one(b"u21") == b"u21-2"
    assert wait_for(lambda: metric(server, "mqd_queues_loaded") <= 2, timeout=15), (
        "idle queues were not unloaded"
    )
    with server.mc() as mc:
        listed = dict(
            line.split(b" ")[1:]
            for line in _stats_queue_lines(mc)
        )
        assert len(listed) == 40, "every queue is listed, loaded or not"
        assert listed[b"u00"] == b"3/1" and listed[b"u21"] == b"3/3" and listed[b"u39"] == b"3/0"
        assert mc.stats()["curr_items"] == str(20 * 2 + 3 + 0 + 18 * 3)
        # Loaded again when named: messages in order, the given-back one first.
        assert mc.get_one(b"u20") == b"u20-0"
        assert [mc.get_one(b"u00"), mc.get_one(b"u00"), mc.get_one(b"u00")] == [
            b"u00-1", b"u00-2", None
        ]
        assert mc.get_one(b"u21") is None
        assert mc.set(b"u21", b"again") == b"STORED\r\n"
        assert mc.get_one(b"u21") == b"again"
        assert mc.stats(b"queue")  # stats still answers
    server.restart()
    with server.mc() as mc:
        assert mc.get_one(b"u39") == b"u39-0"
        assert mc.get_one(b"u20") == b"u20-1"


def test_messages_of_unloaded_queues_still_expire(make_server):
    server = make_server(args=["--queue-memory", "1k"])
    with server.mc() as mc:
        set_many(mc, [(b"e%02d" % i, b"soon", 1) for i in range(20)])
        set_many(mc, [(b"e%02d" % i, b"later", 3600) for i in range(20)])
    # Nobody reads them: the sweep finds the due ones through the expiry index.
    def expired():
        with server.mc() as mc:
            return sum(int(v) for k, v in mc.stats().items() if k.endswith("_expired_items"))

    assert wait_for(lambda: expired() == 20, timeout=15), expired()
    with server.mc() as mc:
        assert mc.stats()["curr_items"] == "20"
        assert mc.get_one(b"e07") == b"later"


def test_emptied_queues_leave_memory(make_server):
    """A client naming a new queue per job: once read, each queue leaves memory."""
    server = make_server()
    with server.mc() as mc:
        set_many(mc, [(b"job%d" % i, b"x", 0) for i in range(5000)])
        mc.send(b"".join(b"get job%d\r\n" % i for i in range(5000)))
        for _ in range(5000):
            assert len(mc.read_values()) == 1
    assert metric(server, "mqd_queues") == 5000
    assert wait_for(lambda: metric(server, "mqd_queues_loaded") == 0, timeout=20), metric(
        server, "mqd_queues_loaded"
    )
    with server.mq() as mq:
        assert mq.put(b"job42", b"again") == [b"OK"]
        assert mq.get(b"job42") == [b"OK", b"again"]
        assert mq.request(b"Info")[0] == b"OK"


def _stats_queue_lines(mc):
    mc.send(b"stats queue\r\n")
    lines = []
    while (line := mc.read_line()) != b"END\r\n":
        lines.append(line.rstrip(b"\r\n"))
    return lines


def test_reads_of_unknown_queues_create_nothing(make_server):
    """Reads of ever-new names look for a record on disk and find none: nothing is loaded,
    counted or listed."""
    server = make_server(args=["--max-queues", "1"])
    with server.mq() as mq, server.mc() as mc:
        for i in range(50):
            assert mq.get(b"nothing%d" % i, 1) == [b"Timeout"]
            assert mc.get_one(b"none%d" % i) is None
        assert mc.stats()["curr_queues"] == "0"
        assert mc.set(b"one", b"x") == b"STORED\r\n", "none of them counted"
