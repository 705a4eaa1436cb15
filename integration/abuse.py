"""Abuse cases shared by test_abuse.py (which asserts on them) and scripts/bench-abuse (which
prints them for any binary): one client, or many, doing what a hostile or broken client would,
against a real mqd process. Each case returns what it measured: the server's peak RSS (VmHWM
from /proc) and a bystander connection's set/get round trip taken while the abuse goes on, plus
what the case observed for the tests to check."""

import os
import socket
import struct
import threading
import time

MB = 1 << 20
STORED = b"STORED\r\n"


def rss_mb(pid, field="VmRSS"):
    """A field of /proc/PID/status in MiB (VmRSS now, VmHWM the peak so far)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for pid {pid}")


def peak_mb(server):
    return rss_mb(server.proc.pid, "VmHWM")


def bystander_round_trip(server, queue=b"bystander"):
    """Seconds for a fresh connection's set then get of a small message (None if it failed)."""
    start = time.monotonic()
    try:
        with server.mc(timeout=10) as mc:
            if mc.set(queue, b"still here") != b"STORED\r\n":
                return None
            if mc.get_one(queue) != b"still here":
                return None
    except (OSError, TimeoutError, AssertionError):
        return None
    return time.monotonic() - start


def _connect(server):
    sock = socket.create_connection(server.addr, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _push(socks_and_data, patience=1.0, unsent=None):
    """Sends each socket its bytes without blocking on any: a server that stops reading one
    connection must not stall the others. Gives up on a socket after `patience` seconds without
    progress on any. Returns the bytes sent; `unsent`, a dict, gets what each socket could not
    send."""
    pending = {}
    for sock, data in socks_and_data:
        sock.setblocking(False)
        pending[sock] = memoryview(data)
    sent_total = 0
    last_progress = time.monotonic()
    while pending and time.monotonic() - last_progress < patience:
        progressed = False
        for sock in list(pending):
            view = pending[sock]
            try:
                n = sock.send(view[: 1 << 20])
            except BlockingIOError:
                continue
            except OSError:
                del pending[sock]
                continue
            sent_total += n
            progressed = True
            if n == len(view):
                del pending[sock]
            else:
                pending[sock] = view[n:]
        if progressed:
            last_progress = time.monotonic()
        else:
            time.sleep(0.005)
    if unsent is not None:
        unsent.update(pending)
    return sent_total


def peek_flood(server, lines=2000, settle=3.0, request=b"get big/peek\r\n"):
    """A 1 MiB message, then `lines` pipelined peeks of it (`request`; text by default) never
    read: each reply is 1 MiB."""
    with server.mc() as mc:
        assert mc.set(b"big", b"x" * MB) == b"STORED\r\n"
    flooder = _connect(server)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    _push([(flooder, request * lines)], patience=settle)
    time.sleep(settle)
    result = {"peak_mb": peak_mb(server), "bystander_s": bystander_round_trip(server)}
    flooder.close()
    return result


def stats_flood(server, queues=2000, lines=2000, settle=3.0):
    """Many queues make `stats` long; thousands of pipelined `stats` never read."""
    with server.mc() as mc:
        mc.send(b"".join(b"set s%d 0 0 1 noreply\r\nx\r\n" % i for i in range(queues)))
        assert mc.cmd(b"version").startswith(b"VERSION")
    flooder = _connect(server)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    _push([(flooder, b"stats\r\n" * lines)], patience=settle)
    time.sleep(settle)
    result = {"peak_mb": peak_mb(server), "bystander_s": bystander_round_trip(server)}
    flooder.close()
    return result


def noreply_flood(server, seconds=4.0, body=1024, max_bytes=3 << 30):
    """`set ... noreply` of 1 KiB bodies as fast as one client can send, replies never read,
    while a bystander does set/get round trips. Returns the slowest round trip."""
    chunk = b"".join(
        b"set flood 0 0 %d noreply\r\n" % body + b"f" * body + b"\r\n" for _ in range(1024)
    )
    stop = threading.Event()
    sent = [0]

    def flood():
        sock = _connect(server)
        sock.settimeout(0.5)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and sent[0] < max_bytes and not stop.is_set():
                try:
                    sent[0] += sock.send(chunk)
                except socket.timeout:
                    continue
        except OSError:
            pass
        finally:
            stop.wait()
            sock.close()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    trips = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        trips.append(bystander_round_trip(server))
        time.sleep(0.1)
    result = {
        "peak_mb": peak_mb(server),
        "bystander_s": None if None in trips else max(trips),
        "sent_mb": sent[0] / MB,
        "note": f"flooder sent {sent[0] / MB:.0f} MB",
    }
    stop.set()
    thread.join()
    return result


def partial_bodies(server, conns=800, announced=1_000_000, sent=900_000, head=None):
    """`conns` connections each announce a body of `announced` bytes (in `head`: a text `set` by
    default), send `sent` bytes of it (counting what `head` already holds of the body), and then
    nothing. Returns the open connections too (the caller closes them)."""
    socks = [_connect(server) for _ in range(conns)]
    if head is None:
        head, in_head = b"set h 0 0 %d\r\n" % announced, 0
    else:
        head, in_head = head
    body = head + b"p" * (sent - in_head)
    _push([(s, body) for s in socks], patience=2.0)
    time.sleep(1.0)
    result = {"peak_mb": peak_mb(server), "bystander_s": bystander_round_trip(server)}
    return result, socks


def fanout(server, children=3000, body=MB):
    """`children` queues named q+c<n>, then one 1 MiB set to q."""
    with server.mc() as mc:
        mc.send(b"".join(b"set q+c%d 0 0 1\r\nx\r\n" % i for i in range(children)))
        replies = [mc.read_line() for _ in range(children)]
        start = time.monotonic()
        reply = mc.set(b"q", b"y" * body)
        put_s = time.monotonic() - start
    return {
        "peak_mb": peak_mb(server),
        "bystander_s": bystander_round_trip(server),
        "stored": replies.count(b"STORED\r\n"),
        "refusals": sorted(set(r for r in replies if r != b"STORED\r\n")),
        "set_reply": reply,
        "put_s": put_s,
        "note": f"{replies.count(STORED)} children created; set q took {put_s:.2f} s",
    }


def idle_connections(server, conns=10_000):
    """`conns` connections that connect and send nothing. Returns them too."""
    socks = []
    for _ in range(conns):
        socks.append(socket.create_connection(server.addr, timeout=10))
    time.sleep(1.0)
    result = {"peak_mb": peak_mb(server), "bystander_s": bystander_round_trip(server)}
    return result, socks


def ghost_queues(server, names=2000):
    """Blocking reads and mqmq Gets of ever-new names; returns how many queues the server then
    lists."""
    with server.mc() as mc:
        mc.send(b"".join(b"get ghost%d/t=1\r\n" % i for i in range(names)))
        for _ in range(names):
            assert mc.read_line() == b"END\r\n"
    with server.mq() as mq:
        for i in range(names // 10):
            assert mq.get(b"mqghost%d" % i, 1) == [b"Timeout"]
        _, info = mq.info()
    with server.mc() as mc:
        stats = mc.stats()
    return {
        "peak_mb": peak_mb(server),
        "bystander_s": bystander_round_trip(server),
        "info_queues": info["NumQueues"],
        "curr_queues": int(stats["curr_queues"]),
        "note": f"queues left behind: {stats['curr_queues']}",
    }


def _send_all(sock, data):
    """Sends `data` on a socket in blocking mode with a timeout (set by the caller)."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def _drain_replies(sock, expected_bytes, timeout=60.0):
    """Reads from `sock` until `expected_bytes` arrived (True) or `timeout` passes (False)."""
    sock.settimeout(timeout)
    got = 0
    deadline = time.monotonic() + timeout
    try:
        while got < expected_bytes and time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return False
            got += len(chunk)
    except OSError:
        return False
    return got >= expected_bytes


def many_unread(server, conns=900, lines=50, body=MB, settle=4.0, check=3, binary=False):
    """`conns` connections each send `lines` pipelined peeks (`get big/peek`, or binary `GET`)
    of a `body`-byte message and read nothing (each within its own per-connection cap). Then
    every one of them reads its first `check` replies, all at once: each must get them, nobody
    is starved once room is made."""
    with server.mc() as mc:
        assert mc.set(b"big", b"x" * body) == STORED
    socks = [_connect(server) for _ in range(conns)]
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    request = _binary(GET, b"big/peek") if binary else b"get big/peek\r\n"
    _push([(sock, request * lines) for sock in socks], patience=settle)
    time.sleep(settle)
    peak = peak_mb(server)
    bystander = bystander_round_trip(server)
    if binary:
        reply = 24 + 4 + body  # header, flags, value
    else:
        reply = len(b"VALUE big/peek 0 %d\r\n" % body) + body + len(b"\r\nEND\r\n")
    served = []

    def read_some(batch):
        for sock in batch:
            if _drain_replies(sock, reply * check, timeout=60):
                served.append(sock)

    threads = [threading.Thread(target=read_some, args=(socks[i::16],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for sock in socks:
        sock.close()
    return {
        "peak_mb": max(peak, peak_mb(server)),
        "bystander_s": bystander,
        "served": len(served),
        "note": f"{len(served)} of {conns} connections then read {check} replies",
    }


def many_quiet_floods(server, conns=300, seconds=4.0, body=1024, request=None):
    """`conns` connections each pipeline requests that are never answered (`request`; by
    default `set ... noreply` of `body` bytes) as fast as they can send, replies never read,
    while a bystander does set/get round trips."""
    if request is None:
        request = b"set qflood 0 0 %d noreply\r\n" % body + b"q" * body + b"\r\n"
    chunk = request * max(1, 64 * 1024 // len(request))
    stop = threading.Event()
    socks = [_connect(server) for _ in range(conns)]
    for sock in socks:
        sock.setblocking(False)
    sent = [0]

    def flood():
        while not stop.is_set():
            progressed = False
            for sock in socks:
                try:
                    n = sock.send(chunk)
                    sent[0] += n
                    progressed |= n > 0
                except (BlockingIOError, OSError):
                    pass
            if not progressed:
                time.sleep(0.002)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    trips = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        trips.append(bystander_round_trip(server))
        time.sleep(0.1)
    peak = peak_mb(server)
    stop.set()
    thread.join()
    for sock in socks:
        sock.close()
    return {
        "peak_mb": peak,
        "bystander_s": None if None in trips else max(trips),
        "note": f"flooders sent {sent[0] / MB:.0f} MB",
    }


def many_fanout_sets(server, conns=100, children=64, body=MB, settle=3.0):
    """A queue with `children` fan-out queues, then `conns` connections each send one
    `body`-byte set to it at once: every set is written `children + 1` times."""
    with server.mc() as mc:
        mc.send(b"".join(b"set fq+c%d 0 0 1\r\nx\r\n" % i for i in range(children)))
        for _ in range(children):
            assert mc.read_line() == STORED
    socks = [_connect(server) for _ in range(conns)]
    request = b"set fq 0 0 %d\r\n" % body + b"f" * body + b"\r\n"
    _push([(sock, request) for sock in socks], patience=settle)
    stored = 0
    for sock in socks:
        stored += _drain_replies(sock, len(STORED), timeout=120)
        sock.close()
    return {
        "peak_mb": peak_mb(server),
        "bystander_s": bystander_round_trip(server),
        "stored": stored,
        "note": f"{stored} of {conns} sets stored, {children} copies each",
    }


def big_sets(server, conns=20, body=32 * MB):
    """`conns` connections each send one `body`-byte set at once (needs `-B 32m`)."""
    socks = [_connect(server) for _ in range(conns)]
    request = b"set bigq 0 0 %d\r\n" % body + b"b" * body + b"\r\n"
    done = threading.Event()
    trips = []

    def watch():
        while not done.is_set():
            trips.append(bystander_round_trip(server))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _push([(sock, request) for sock in socks], patience=30.0)
    stored = 0
    for sock in socks:
        stored += _drain_replies(sock, len(STORED), timeout=120)
        sock.close()
    done.set()
    watcher.join()
    return {
        "peak_mb": peak_mb(server),
        "bystander_s": None if None in trips else max(trips),
        "stored": stored,
        "note": f"{stored} of {conns} stored",
    }


def big_gets(server, conns=20, body=32 * MB, settle=3.0):
    """A `body`-byte message, then `conns` connections each ask for it (`get bigg/peek`) at
    once and read their reply only after `settle` seconds (needs `-B 32m`)."""
    with server.mc() as mc:
        assert mc.set(b"bigg", b"g" * body) == STORED
    socks = [_connect(server) for _ in range(conns)]
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    _push([(sock, b"get bigg/peek\r\n") for sock in socks], patience=settle)
    time.sleep(settle)
    peak = peak_mb(server)
    bystander = bystander_round_trip(server)
    reply = len(b"VALUE bigg/peek 0 %d\r\n" % body) + body + len(b"\r\nEND\r\n")
    # Every client reads its own socket, as real ones do: read one at a time, the test would
    # wait on a reader still in line for room while the readers served first go unread.
    results = [False] * conns

    def read(i):
        results[i] = _drain_replies(socks[i], reply, timeout=120)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = sum(results)
    for sock in socks:
        sock.close()
    return {
        "peak_mb": max(peak, peak_mb(server)),
        "bystander_s": bystander,
        "served": served,
        "note": f"{served} of {conns} readers got the message",
    }


# The same abuse over the memcache binary protocol ---------------------------------------------

_HEADER = struct.Struct(">BBHBBHIIQ")
GET, SET, SETQ, GETQ = 0x00, 0x01, 0x11, 0x09


def _binary(opcode, key=b"", extras=b"", value=b"", body_len=None):
    if body_len is None:
        body_len = len(extras) + len(key) + len(value)
    return _HEADER.pack(0x80, opcode, len(key), len(extras), 0, 0, body_len, 0, 0) + extras + key + value


def _binary_set(opcode, key, body, flags=0):
    return _binary(opcode, key, struct.pack(">II", flags, 0), body)


def binary_peek_flood(server, lines=2000, settle=3.0):
    """`peek_flood` over the binary protocol."""
    return peek_flood(server, lines, settle, request=_binary(GET, b"big/peek"))


def binary_many_unread(server, conns=900, lines=50, settle=4.0, check=3):
    """`many_unread` over the binary protocol."""
    return many_unread(server, conns, lines, MB, settle, check, binary=True)


def binary_quiet_floods(server, conns=300, seconds=4.0, body=1024, opcode=SETQ):
    """`many_quiet_floods` over the binary protocol: `SETQ` of `body` bytes (nothing is
    answered on success), or `GETQ` of an empty queue (nothing is answered on a miss)."""
    if opcode == SETQ:
        request = _binary_set(SETQ, b"bqflood", b"q" * body)
    else:
        request = _binary(GETQ, b"bqempty")
    return many_quiet_floods(server, conns, seconds, request=request)


def binary_partial_bodies(server, conns=800, announced=1_000_000, sent=900_000):
    """`partial_bodies` over the binary protocol: a SET declaring `announced` body bytes."""
    head = _HEADER.pack(0x80, SET, 1, 8, 0, 0, announced, 0, 0) + struct.pack(">II", 0, 0) + b"h"
    # The body counts the extras (8 bytes) and the key (1).
    return partial_bodies(server, conns, announced, sent, head=(head, 9))


def binary_huge_declared(server, conns=800, body=MB):
    """`conns` binary connections each declare a SET body of almost 1 GiB (over the message
    limit: refused from its header, the body discarded as it streams) and send `body` bytes of
    it, and as many declare one of 4 GiB (refused, closed). Returns the open connections."""
    skipped = [_connect(server) for _ in range(conns)]
    closed = [_connect(server) for _ in range(conns)]
    extras = struct.pack(">II", 0, 0)
    big = _HEADER.pack(0x80, SET, 1, 8, 0, 0, (1 << 30) - 1, 0, 0) + extras + b"h"
    # The header alone: bytes the server never reads would turn its close into a reset, which
    # may destroy its answer before the client reads it.
    huge = _HEADER.pack(0x80, SET, 1, 8, 0, 0, 0xFFFFFFFF, 0, 0)
    _push([(s, big + b"z" * body) for s in skipped] + [(s, huge) for s in closed], patience=2.0)
    time.sleep(1.0)
    result = {"peak_mb": peak_mb(server), "bystander_s": bystander_round_trip(server)}
    refused = 0
    for sock in skipped:
        sock.setblocking(True)
        sock.settimeout(5)
        try:
            head = sock.recv(24, socket.MSG_WAITALL)
            refused += len(head) == 24 and _HEADER.unpack(head)[5] == 0x0003
        except OSError:
            pass
    closed_count = 0
    for sock in closed:
        sock.setblocking(True)
        sock.settimeout(5)
        try:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            closed_count += data[:1] == b"\x81"
        except OSError:
            pass
        sock.close()
    result["refused"] = refused
    result["closed"] = closed_count
    result["note"] = (f"{refused} of {conns} refused 'too large' and skipping; "
                      f"{closed_count} of {conns} over 1 GiB answered and closed")
    return result, skipped


def raise_fd_limit(wanted):
    """Raises this process's descriptor limit (inherited by servers started after it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return True
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        return False
    return True


def server_pid_alive(server):
    return server.proc is not None and server.proc.poll() is None and os.path.exists(
        f"/proc/{server.proc.pid}"
    )
