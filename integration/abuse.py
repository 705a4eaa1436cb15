"""Abuse cases shared by test_abuse.py (which asserts on them) and scripts/bench-abuse (which
prints them for any binary): one client, or many, doing what a hostile or broken client would,
against a real mqd process. Each case returns what it measured: the server's peak RSS (VmHWM
from /proc) and a bystander connection's set/get round trip taken while the abuse goes on, plus
what the case observed for the tests to check."""

import os
import socket
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


def _push(socks_and_data, patience=1.0):
    """Sends each socket its bytes without blocking on any: a server that stops reading one
    connection must not stall the others. Gives up on a socket after `patience` seconds without
    progress on any. Returns the bytes sent."""
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
    return sent_total


def peek_flood(server, lines=2000, settle=3.0):
    """A 1 MiB message, then `lines` pipelined `get big/peek` never read: each reply is 1 MiB."""
    with server.mc() as mc:
        assert mc.set(b"big", b"x" * MB) == b"STORED\r\n"
    flooder = _connect(server)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    _push([(flooder, b"get big/peek\r\n" * lines)], patience=settle)
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


def partial_bodies(server, conns=800, announced=1_000_000, sent=900_000):
    """`conns` connections each announce a body of `announced` bytes, send `sent` of it, and then
    nothing. Returns the open connections too (the caller closes them)."""
    socks = [_connect(server) for _ in range(conns)]
    body = b"set h 0 0 %d\r\n" % announced + b"p" * sent
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
