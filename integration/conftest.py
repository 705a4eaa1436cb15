"""Shared machinery for the end-to-end tests: a real `mqd` process and raw socket clients.

The binary comes from the `MQD_BIN` environment variable (scripts/test sets it). Every test gets
its own server on its own data directory and ports, so tests never share state.
"""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0
IO_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------
# Ports and the server process
# --------------------------------------------------------------------------------------------


def free_port():
    """A TCP port nothing listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mqd_bin():
    path = os.environ.get("MQD_BIN")
    if not path:
        pytest.fail("MQD_BIN is not set: point it at the mqd binary (scripts/test does)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"MQD_BIN={path} is not an executable file")
    return path


class ServerDied(AssertionError):
    pass


class Server:
    """One `mqd serve` process. Ports and data directory stay the same across restarts."""

    def __init__(self, tmp_path, args=(), listeners=1, name="mqd", env=None, prime_wal=True,
                 loops=None, host="127.0.0.1", wrapper=()):
        self.bin = mqd_bin()
        # The address its listeners bind and clients connect to, and a command the server runs
        # under (`ip netns exec NS`: in a network namespace, whose address `host` is).
        self.host = host
        self.wrapper = list(wrapper)
        # The server runs as `scripts/run` starts it: one event loop per core but one, and under
        # `--sync always` a primed WAL. `loops` (an int) asks for more event loops, as the
        # `event_loops` variants do; `prime_wal=False` skips priming (a test that starts
        # hundreds of servers, or measures something else).
        self.prime_wal = prime_wal
        self.loops = loops
        # Extra environment for the process (e.g. the power-cut shim's LD_PRELOAD).
        self.env = dict(env or {})
        self.data_dir = tmp_path / f"{name}-data"
        self.data_dir.mkdir(exist_ok=True)
        self.ports = [free_port() for _ in range(listeners)]
        self.args = list(args)
        self.log_path = tmp_path / f"{name}.log"
        self.proc = None
        self.starts = 0
        # False after a deliberate stop or kill: teardown then does not report a crash.
        self.expect_running = False

    @property
    def port(self):
        return self.ports[0]

    @property
    def addr(self):
        return (self.host, self.port)

    def command(self):
        cmd = [*self.wrapper, self.bin, "serve", "--data-dir", str(self.data_dir)]
        for port in self.ports:
            cmd += ["--listen", f"{self.host}:{port}"]
        if self.loops is not None and not any(arg in ("--threads", "-t") for arg in self.args):
            cmd += ["--threads", str(self.loops)]
        if not self.prime_wal:
            cmd += ["--no-wal-prime"]
        return cmd + self.args

    def start(self, wait=True):
        """Starts the server and, unless `wait` is false, waits until it answers."""
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        # Never let the server think systemd handed it sockets or wants notifications.
        for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
            env.pop(var, None)
        env.update(self.env)
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        self.expect_running = True
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self):
        """Returns once every port accepts connections and the server answers a request: the
        ports are bound before the data directory is opened (and, under `--sync always`, the
        WAL primed), and a connection made before that waits for its answer."""
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(self.ports)
        answered = False
        while pending or not answered:
            if not pending:
                try:
                    with socket.create_connection((self.host, self.ports[0]), timeout=0.5) as s:
                        s.sendall(b"version\r\n")
                        answered = s.recv(64).startswith(b"VERSION")
                except OSError:
                    pass
                if answered:
                    continue
                if self.proc.poll() is not None:
                    raise ServerDied(
                        f"mqd exited with {self.proc.returncode} while starting\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(
                        f"mqd did not answer within {READY_TIMEOUT}s\n{self.log_tail()}"
                    )
                time.sleep(0.05)
                continue
            if self.proc.poll() is not None:
                raise ServerDied(
                    f"mqd exited with {self.proc.returncode} while starting\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, pending[0]), timeout=0.5):
                    pass
                pending.pop(0)
                continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"mqd did not accept connections on {pending} within {READY_TIMEOUT}s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def wait_ready_once(self):
        """One try of `wait_ready`: raises OSError unless every port accepts a connection and
        the first answers a request."""
        for port in self.ports:
            socket.create_connection((self.host, port), timeout=0.5).close()
        with socket.create_connection((self.host, self.ports[0]), timeout=0.5) as s:
            s.sendall(b"version\r\n")
            if not s.recv(64).startswith(b"VERSION"):
                raise OSError("no answer to version")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        if not self.alive():
            raise ServerDied(
                f"mqd is not running (exit status {self.proc.returncode})\n{self.log_tail()}"
            )

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait; returns the exit status. SIGKILLs (and fails) if it hangs."""
        self.expect_running = False
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"mqd did not stop within {timeout}s of SIGTERM\n{self.log_tail()}")

    def kill(self):
        """SIGKILL: a crash, nothing gets flushed."""
        self.expect_running = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, crash=False):
        if crash:
            self.kill()
        else:
            status = self.stop()
            assert status == 0, f"mqd exited with {status} on SIGTERM\n{self.log_tail()}"
        return self.start()

    def log_tail(self, lines=40):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "----- mqd log (tail) -----\n" + "\n".join(text.splitlines()[-lines:])

    # Clients bound to this server.
    def mc(self, port=None, timeout=IO_TIMEOUT):
        return MemcacheConn(port or self.port, timeout, self.host)

    def mq(self, port=None, timeout=IO_TIMEOUT):
        return MqmqConn(port or self.port, timeout, self.host)

    def mb(self, port=None, timeout=IO_TIMEOUT):
        return BinaryConn(port or self.port, timeout, self.host)


# Event-loop variants: test files marked `pytestmark = pytest.mark.event_loops` run every test
# twice, once as users run the server (the default: one loop on two cores) and once with several
# loops (connections handed between loops, one loop waking another, loops committing at once).
EVENT_LOOP_VARIANTS = {"default": None, "3-loops": 3}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "event_loops: run each test under the default and with several event loops"
    )


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("event_loops") and "loops" in metafunc.fixturenames:
        metafunc.parametrize("loops", list(EVENT_LOOP_VARIANTS), indirect=True)


@pytest.fixture
def loops(request):
    """The event-loop variant of this test: None (the default), or a number of loops."""
    return EVENT_LOOP_VARIANTS[getattr(request, "param", "default")]


@pytest.fixture
def make_server(tmp_path, loops, request):
    """Factory: `make_server(args=[...], listeners=N, prime_wal=True)` starts a server (`host=`
    and `wrapper=` as Server takes them place it elsewhere, e.g. in a network namespace); all
    are stopped after, and their data directories removed if the test passed (each start under
    `--sync always` primes 128 MB of WAL)."""
    servers = []

    def make(args=(), listeners=1, start=True, prime_wal=True, **where):
        server = Server(
            tmp_path,
            args=args,
            listeners=listeners,
            name=f"mqd{len(servers)}",
            prime_wal=prime_wal,
            loops=loops,
            **where,
        )
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    crashed = [s for s in servers if s.expect_running and not s.alive()]
    for server in servers:
        try:
            server.stop()
        finally:
            server.kill()
    if crashed:
        pytest.fail(
            "mqd died during the test:\n"
            + "\n".join(f"exit status {s.proc.returncode}\n{s.log_tail()}" for s in crashed)
        )
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed:
        for server in servers:
            shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture
def server(make_server):
    """A fresh server with default options on a fresh data directory."""
    return make_server()


@pytest.fixture(autouse=True)
def _show_server_log_on_failure(request, tmp_path):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for log in sorted(tmp_path.glob("mqd*.log")):
            print(f"\n===== {log} =====")
            print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# --------------------------------------------------------------------------------------------
# Raw sockets
# --------------------------------------------------------------------------------------------


class Conn:
    """A TCP connection with a read buffer and timeouts on every read."""

    def __init__(self, port, timeout=IO_TIMEOUT, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def send_slowly(self, data, pause=0.002):
        """One byte per send, with a pause, so the server sees every partial state."""
        self.sock.settimeout(self.timeout)
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])
            time.sleep(pause)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no reply in time; buffered so far: {bytes(self.buf[:300])!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError(f"no reply in time; buffered so far: {bytes(self.buf[:300])!r}") from None
        if not chunk:
            raise ConnectionError(f"server closed the connection; buffered: {bytes(self.buf[:300])!r}")
        self.buf += chunk

    def read_exactly(self, n, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_line(self, timeout=None):
        """One line, including its `\\r\\n`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buf:
            self._fill(deadline)
        i = self.buf.index(b"\n") + 1
        line = bytes(self.buf[:i])
        del self.buf[:i]
        return line

    def expect(self, data, timeout=None):
        """Reads len(data) bytes and checks they are exactly `data`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        error = None
        # Stop reading as soon as what has arrived can no longer match.
        while len(self.buf) < len(data) and self.buf == data[: len(self.buf)]:
            try:
                self._fill(deadline)
            except (TimeoutError, ConnectionError) as e:
                error = e
                break
        got = bytes(self.buf[: len(data)])
        del self.buf[: len(data)]
        if error is not None and got == data[: len(got)]:
            raise AssertionError(
                f"expected {_clip(data, len(got))}, got only the first {len(got)} bytes: {error}"
            )
        if got != data:
            at = next(i for i in range(min(len(got), len(data)) + 1) if got[i : i + 1] != data[i : i + 1])
            raise AssertionError(
                f"reply differs at byte {at}:\n  expected {_clip(data, at)}\n  got      {_clip(got, at)}"
            )

    def closed_by_server(self, timeout=5.0):
        """True if the server closes the connection (EOF or reset) within `timeout` seconds.
        Bytes that arrive first are kept in the buffer."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
            self.buf += chunk

    def nothing_pending(self, wait=0.2, close_allowed=False):
        """True if no bytes arrive within `wait` seconds and the connection stays open; with
        `close_allowed`, a close by the server without a byte counts as nothing too."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return self.buf == b""
        except ConnectionError:
            return close_allowed and self.buf == b""
        self.buf += chunk
        return close_allowed and chunk == b"" and self.buf == b""


def _clip(data, at, context=60):
    """A readable window of `data` around offset `at`."""
    start = max(0, at - context)
    text = repr(data[start : at + context])
    return ("..." if start else "") + text + ("..." if at + context < len(data) else "")


class MemcacheConn(Conn):
    """memcache ASCII helpers on top of Conn."""

    def cmd(self, line):
        """Sends one command line, returns one reply line."""
        self.send(line + b"\r\n")
        return self.read_line()

    def set(self, queue, body, flags=0, exptime=0):
        if isinstance(queue, str):
            queue = queue.encode()
        if isinstance(body, str):
            body = body.encode()
        self.send(b"set %s %d %d %d\r\n%s\r\n" % (queue, flags, exptime, len(body), body))
        return self.read_line()

    def read_values(self):
        """Reads `VALUE` blocks up to `END`; returns [(key, flags, body, cas-or-None)]."""
        values = []
        while True:
            line = self.read_line()
            if line == b"END\r\n":
                return values
            parts = line.rstrip(b"\r\n").split(b" ")
            assert parts[0] == b"VALUE" and len(parts) in (4, 5), f"unexpected line {line!r}"
            n = int(parts[3])
            block = self.read_exactly(n + 2)
            assert block[-2:] == b"\r\n", f"data block not ended by CRLF: {block!r}"
            cas = int(parts[4]) if len(parts) == 5 else None
            values.append((parts[1], int(parts[2]), block[:-2], cas))

    def get(self, *queues, verb=b"get"):
        names = [q.encode() if isinstance(q, str) else q for q in queues]
        self.send(verb + b" " + b" ".join(names) + b"\r\n")
        return self.read_values()

    def get_one(self, queue):
        """The body popped from `queue`, or None."""
        values = self.get(queue)
        assert len(values) <= 1
        return values[0][2] if values else None

    def stats(self, arg=b""):
        self.send(b"stats" + (b" " + arg if arg else b"") + b"\r\n")
        stats = {}
        while True:
            line = self.read_line()
            if line == b"END\r\n":
                return stats
            assert line.startswith(b"STAT "), f"unexpected stats line {line!r}"
            _, name, value = line.rstrip(b"\r\n").split(b" ", 2)
            stats[name.decode()] = value.decode()


# mqmq frames --------------------------------------------------------------------------------

MQMQ_MAX_FRAME = 33_555_471


def frame(*values):
    """An mqmq frame: u32 BE length of the rest, then each value as u32 BE length + bytes."""
    body = b""
    for v in values:
        if isinstance(v, str):
            v = v.encode()
        body += struct.pack(">I", len(v)) + v
    return struct.pack(">I", len(body)) + body


def parse_frame_body(body):
    values = []
    while body:
        assert len(body) >= 4, f"truncated value length in reply frame: {body!r}"
        (n,) = struct.unpack(">I", body[:4])
        assert len(body) >= 4 + n, f"value runs past the frame end: {body!r}"
        values.append(body[4 : 4 + n])
        body = body[4 + n :]
    return values


class MqmqConn(Conn):
    """mqmq frame helpers on top of Conn."""

    def send_frame(self, *values):
        self.send(frame(*values))

    def read_frame(self, timeout=None):
        head = self.read_exactly(4, timeout)
        (n,) = struct.unpack(">I", head)
        assert n <= MQMQ_MAX_FRAME, f"absurd reply frame length {n}"
        return parse_frame_body(self.read_exactly(n, timeout))

    def request(self, *values, timeout=None):
        self.send_frame(*values)
        return self.read_frame(timeout)

    def put(self, queue, body):
        return self.request(b"Put", queue, body)

    def get(self, queue, timeout_ms=None, read_timeout=None):
        values = [b"Get", queue]
        if timeout_ms is not None:
            values.append(str(timeout_ms).encode() if isinstance(timeout_ms, int) else timeout_ms)
        return self.request(*values, timeout=read_timeout)

    def info(self):
        reply = self.request(b"Info")
        assert reply[0] == b"OK" and len(reply) == 2, f"bad Info reply {reply!r}"
        return reply[1], json.loads(reply[1])


# memcache binary protocol ----------------------------------------------------------------------

BIN_HEADER = struct.Struct(">BBHBBHIIQ")  # magic opcode keylen extlen type status/vb bodylen opaque cas


class Op:
    """memcache binary opcodes (memcached's protocol_binary.h)."""

    GET, SET, ADD, REPLACE, DELETE, INCREMENT, DECREMENT, QUIT, FLUSH = range(9)
    GETQ, NOOP, VERSION, GETK, GETKQ, APPEND, PREPEND, STAT, SETQ = range(9, 0x12)
    DELETEQ, QUITQ, FLUSHQ, TOUCH = 0x14, 0x17, 0x18, 0x1C
    SASL_LIST_MECHS, SASL_AUTH = 0x20, 0x21


def binary_request(opcode, key=b"", extras=b"", value=b"", opaque=0, cas=0, body_len=None):
    """One request packet; `body_len` overrides the declared total body length."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(value, str):
        value = value.encode()
    if body_len is None:
        body_len = len(extras) + len(key) + len(value)
    header = BIN_HEADER.pack(0x80, opcode, len(key), len(extras), 0, 0, body_len, opaque, cas)
    return header + extras + key + value


def set_extras(flags=0, exptime=0):
    return struct.pack(">II", flags, exptime)


class BinaryResponse:
    def __init__(self, opcode, status, opaque, cas, extras, key, value):
        self.opcode, self.status, self.opaque, self.cas = opcode, status, opaque, cas
        self.extras, self.key, self.value = extras, key, value

    @property
    def flags(self):
        assert len(self.extras) == 4, f"no flags in {self!r}"
        return struct.unpack(">I", self.extras)[0]

    def __repr__(self):
        return (f"BinaryResponse(opcode=0x{self.opcode:02x}, status=0x{self.status:04x}, "
                f"opaque={self.opaque}, cas={self.cas}, extras={self.extras!r}, key={self.key!r}, "
                f"value={self.value[:80]!r})")


class BinaryConn(Conn):
    """memcache binary protocol helpers on top of Conn."""

    def send_request(self, opcode, key=b"", extras=b"", value=b"", opaque=0, cas=0):
        self.send(binary_request(opcode, key, extras, value, opaque, cas))

    def read_response(self, timeout=None):
        magic, opcode, key_len, extras_len, _, status, body_len, opaque, cas = BIN_HEADER.unpack(
            self.read_exactly(24, timeout)
        )
        assert magic == 0x81, f"response magic 0x{magic:02x}"
        body = self.read_exactly(body_len, timeout)
        extras, key, value = body[:extras_len], body[extras_len : extras_len + key_len], body[extras_len + key_len :]
        return BinaryResponse(opcode, status, opaque, cas, extras, key, value)

    def request(self, opcode, key=b"", extras=b"", value=b"", opaque=0, cas=0, timeout=None):
        self.send_request(opcode, key, extras, value, opaque, cas)
        return self.read_response(timeout)

    def set(self, queue, body, flags=0, exptime=0, opaque=0):
        return self.request(Op.SET, queue, set_extras(flags, exptime), body, opaque)

    def get(self, queue, opaque=0, timeout=None):
        return self.request(Op.GET, queue, opaque=opaque, timeout=timeout)

    def stat(self, group=b""):
        """The statistics of a STAT group, as {name: value} (bytes)."""
        self.send_request(Op.STAT, group)
        stats = {}
        while True:
            r = self.read_response()
            assert r.opcode == Op.STAT and r.status == 0, r
            if not r.key:
                return stats
            stats[r.key] = r.value


def wait_for(predicate, timeout=5.0, interval=0.05):
    """Polls `predicate` until it returns a truthy value or `timeout` passes; returns the last
    value (for eventually-consistent counters such as connection counts)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
