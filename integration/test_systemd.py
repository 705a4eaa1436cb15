"""Running under systemd: sockets passed by socket activation, readiness/stopping notifications
on $NOTIFY_SOCKET and log lines for the journal, exercised the way systemd does them (no systemd
needed); and the shipped unit's sandbox, rated by systemd-analyze."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import MemcacheConn, MqmqConn, free_port, mqd_bin, wait_for

# bash puts the inherited socket on descriptor 3 and sets LISTEN_PID to its own pid, which
# `exec` hands on to mqd: exactly what systemd's socket activation does.
ACTIVATE = 'exec 3<&"$1"; eval "exec $1<&-"; shift; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_serves_on_a_socket_passed_by_systemd(tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    # A --listen address that must be ignored: the passed socket wins.
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    unused_port = unused.getsockname()[1]
    unused.close()
    fd = listener.fileno()
    proc = subprocess.Popen(
        ["bash", "-c", ACTIVATE, "activate", str(fd), mqd_bin(), "serve",
         "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{unused_port}"],
        pass_fds=(fd,),
        stderr=open(tmp_path / "mqd.log", "wb"),
    )
    listener.close()  # only mqd holds it now
    try:
        # Connections queue in the backlog even before mqd is ready: nothing is refused.
        with MemcacheConn(port) as mc:
            assert mc.set(b"activated", b"ok") == b"STORED\r\n"
        with MqmqConn(port) as mq:
            mq.send_frame(b"Get", b"activated", b"1000")
            assert mq.read_frame() == [b"OK", b"ok"]
        refused = socket.socket()
        assert refused.connect_ex(("127.0.0.1", unused_port)) != 0
        refused.close()
    finally:
        stop(proc)


def test_serves_on_a_unix_socket_passed_by_systemd(tmp_path):
    """`ListenStream=/run/mqd.sock` in mqd.socket: a passed unix socket serves both protocols."""
    from test_unix_socket import unix_conn

    path = tmp_path / "passed.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(128)
    fd = listener.fileno()
    proc = subprocess.Popen(
        ["bash", "-c", ACTIVATE, "activate", str(fd), mqd_bin(), "serve",
         "--data-dir", str(tmp_path / "data")],
        pass_fds=(fd,),
        stderr=open(tmp_path / "mqd.log", "wb"),
    )
    listener.close()
    try:
        with unix_conn(MemcacheConn, path) as mc:
            assert mc.set(b"passed", b"ok") == b"STORED\r\n"
        with unix_conn(MqmqConn, path) as mq:
            assert mq.get(b"passed", 1000) == [b"OK", b"ok"]
    finally:
        stop(proc)
    assert path.exists(), "a socket systemd owns must not be removed by mqd"


def test_notifies_ready_and_stopping(tmp_path):
    path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(path)
    notify.settimeout(10)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env = dict(os.environ, NOTIFY_SOCKET=path)
    proc = subprocess.Popen(
        [mqd_bin(), "serve", "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}"],
        env=env,
        stderr=open(tmp_path / "mqd.log", "wb"),
    )
    try:
        assert notify.recv(4096) == b"READY=1"
        # READY means listening: a connection made right after it is served.
        with MemcacheConn(port) as mc:
            assert mc.cmd(b"version").startswith(b"VERSION ")
    finally:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 15


# --------------------------------------------------------------------------------------------
# The unit's sandbox, and logging to the journal
# --------------------------------------------------------------------------------------------

UNIT_DIR = os.path.join(os.path.dirname(__file__), "..", "scripts", "systemd")


def test_unit_exposure_is_at_most_1_2():
    """`systemd-analyze security` rates the shipped unit (offline: no systemd needed as PID 1)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = os.path.join(UNIT_DIR, "mqd.service")
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit],
                            capture_output=True, timeout=60)
    out = result.stdout.decode() + result.stderr.decode()
    match = re.search(r"Overall exposure level for mqd\.service: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= 1.2, out
    # Hardening must not cost what the service is for.
    with open(unit) as f:
        directives = {line.split("=", 1)[0]: line.split("=", 1)[1].strip()
                      for line in f if "=" in line and not line.startswith("#")}
    assert directives["Type"] == "notify"
    assert directives["Requires"] == "mqd.socket"
    assert directives["StateDirectory"] == "mqd"
    assert "--data-dir /var/lib/mqd" in directives["ExecStart"]


def run_and_log(tmp_path, env_for_log, extra_args=()):
    """Starts mqd with stderr to a file, makes it log at info and warning, stops it; returns the
    log's lines. `env_for_log(log_file)` gives the extra environment."""
    port = free_port()
    log_path = tmp_path / "mqd.log"
    log = open(log_path, "wb")
    env = dict(os.environ)
    for var in ("LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET", "JOURNAL_STREAM", "RUST_LOG"):
        env.pop(var, None)
    env.update(env_for_log(log))
    proc = subprocess.Popen(
        [mqd_bin(), "serve", "--data-dir", str(tmp_path / "data"), "--listen",
         f"127.0.0.1:{port}", "--max-connections", "1", *extra_args],
        stdout=subprocess.DEVNULL, stderr=log, env=env)
    log.close()
    try:
        deadline = time.monotonic() + 10
        while "serving" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        # One connection is allowed: the second is refused with a warning.
        with MemcacheConn(port) as first:
            assert first.cmd(b"version").startswith(b"VERSION ")
            extra = socket.create_connection(("127.0.0.1", port))
            deadline = time.monotonic() + 10
            while "refusing" not in log_path.read_text():
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            extra.close()
    finally:
        stop(proc)
    return log_path.read_text().splitlines()


def journal_stream_of(log):
    st = os.fstat(log.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def assert_journal_format(lines):
    assert lines
    for line in lines:
        assert re.match(r"<[3-7]>[^<\[]", line), f"not an sd-daemon line: {line!r}"
    assert any(l.startswith("<6>mqd ") and "serving" in l for l in lines), lines
    assert any(l.startswith("<4>refusing") for l in lines), lines
    assert lines[-1] == "<6>stopped"


def test_logs_with_priority_prefixes_when_stderr_is_the_journal(tmp_path):
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it connected stderr to;
    mqd then writes `<N>message` lines (the journal adds the time)."""
    assert_journal_format(run_and_log(tmp_path, journal_stream_of))


def test_journal_format_on_request(tmp_path):
    assert_journal_format(run_and_log(tmp_path, lambda log: {}, ["--log-format", "journal"]))


def test_plain_logs_when_stderr_is_not_the_journal(tmp_path):
    """A process started from a journaled shell inherits JOURNAL_STREAM with its stderr
    redirected elsewhere: it must log plainly there."""
    lines = run_and_log(tmp_path, lambda log: {"JOURNAL_STREAM": "8:12345"})
    assert all(re.match(r"\[\d{4}-\d\d-\d\dT\S+ (INFO|WARN) ", l) for l in lines), lines
    assert any("WARN" in l and "refusing" in l for l in lines), lines


def filter_set(name):
    """The system calls a systemd filter set (e.g. @system-service) stands for, expanded."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name],
                         capture_output=True, timeout=60, check=True).stdout.decode()
    calls = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        calls |= filter_set(word) if word.startswith("@") else {word}
    return calls


def traced_children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except FileNotFoundError:
        return []


def test_the_units_system_call_filter_allows_what_mqd_uses(tmp_path):
    """PID 1 here is not systemd, so the unit's SystemCallFilter cannot be applied for real:
    instead every system call mqd makes (strace, through start, writes, reads, a blocking read,
    stats, a clean stop and a restart that recovers the log) must be in the set the unit allows."""
    if shutil.which("strace") is None or shutil.which("systemd-analyze") is None:
        pytest.skip("needs strace and systemd-analyze")
    trace = tmp_path / "trace"
    for round_ in range(2):
        port = free_port()
        proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", str(trace) + str(round_), mqd_bin(), "serve",
             "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}"],
            stderr=open(tmp_path / f"mqd{round_}.log", "wb"))
        try:
            deadline = time.monotonic() + 30
            while "serving" not in (tmp_path / f"mqd{round_}.log").read_text():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            with MemcacheConn(port) as mc:
                for i in range(300):
                    assert mc.set(b"q", b"x" * 1000) == b"STORED\r\n"
                for i in range(100):
                    assert mc.get_one(b"q") == b"x" * 1000
                mc.send(b"get empty/t=200\r\n")
                assert mc.read_values() == []
                assert "pid" in mc.stats()
            with MqmqConn(port) as mq:
                assert mq.put(b"m", b"y") == [b"OK"]
                assert mq.get(b"m", 100) == [b"OK", b"y"]
        finally:
            # SIGTERM to mqd itself (strace's child): strace exits with mqd's status.
            children = wait_for(lambda: traced_children(proc.pid), timeout=10) or []
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            try:
                assert proc.wait(timeout=20) == 0
            finally:
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.kill()
    assert_allowed_by_the_unit([str(trace) + str(round_) for round_ in range(2)])


def allowed_by_the_unit():
    """The system calls mqd.service's SystemCallFilter= lines allow."""
    with open(os.path.join(UNIT_DIR, "mqd.service")) as f:
        filters = [line.split("=", 1)[1].split() for line in f
                   if line.startswith("SystemCallFilter=")]
    allowed = set()
    for words in filters:
        if words[0].startswith("~"):
            words[0] = words[0][1:]
            allowed -= set().union(*(filter_set(w) for w in words))
        else:
            allowed |= set().union(*(filter_set(w) for w in words))
    return allowed


def assert_allowed_by_the_unit(traces):
    """Every system call in the strace output files `traces` is one the unit allows."""
    used = set()
    for trace in traces:
        for line in open(trace):
            match = re.match(r"\d+ +([a-z0-9_]+)\(", line)
            if match:
                used.add(match.group(1))
    used -= {"execve"}  # the exec that starts mqd happens before the filter applies
    assert "fdatasync" in used or "fsync" in used, sorted(used)  # the trace saw real work
    allowed = allowed_by_the_unit()
    assert used <= allowed, f"mqd uses system calls the unit forbids: {sorted(used - allowed)}"


CLUSTER = "1=10.0.0.1:7701,2=10.0.0.2:7701,3=10.0.0.3:7701"


def cluster_drop_in(node, cluster, join=False):
    """The drop-in scripts/install-systemd writes for member `node` of `cluster` (with `join`,
    a node to add to a running group: `MQD_JOIN=1`)."""
    script = os.path.join(UNIT_DIR, "..", "install-systemd")
    env = dict(os.environ, MQD_NODE=str(node), MQD_CLUSTER=cluster)
    env.pop("MQD_JOIN", None)
    if join:
        env["MQD_JOIN"] = "1"
    return subprocess.run([script, "--print-cluster-drop-in"], env=env, capture_output=True,
                          timeout=60, check=True).stdout.decode()


def test_the_cluster_drop_in_opens_the_network_to_the_members_only(tmp_path):
    """A member's unit (mqd.service with the drop-in install-systemd writes) keeps its sandbox
    but for the network: the host's, IPv4/IPv6 sockets, and IP traffic with the members only."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    drop_in = cluster_drop_in(2, CLUSTER)
    with open(os.path.join(UNIT_DIR, "mqd.service")) as f:
        unit = f.read() + "\n" + drop_in
    # systemd reads a drop-in's [Service] as more lines of the unit's: one file says the same.
    (tmp_path / "mqd.service").write_text(unit)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                             str(tmp_path / "mqd.service")], capture_output=True, timeout=60)
    out = result.stdout.decode() + result.stderr.decode()
    match = re.search(r"Overall exposure level for mqd\.service: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= 1.2, out
    settings = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            # Every assignment, in order; an empty one resets a list, as systemd reads it (a
            # setting that is not a list takes the last).
            settings[key] = [] if not value else settings.get(key, []) + [value]
    assert settings["ExecStart"] == [
        f"/usr/local/bin/mqd serve --data-dir /var/lib/mqd --node 2 --cluster {CLUSTER}"]
    assert settings["PrivateNetwork"][-1] == "no"
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert settings["IPAddressDeny"] == ["any"]
    assert settings["IPAddressAllow"] == ["10.0.0.1 10.0.0.2 10.0.0.3"]
    ipv6 = cluster_drop_in(1, "1=[fd00::1]:7701,2=[fd00::2]:7701,3=[fd00::3]:7701")
    assert "IPAddressAllow=fd00::1 fd00::2 fd00::3\n" in ipv6
    joining = cluster_drop_in(4, CLUSTER + ",4=10.0.0.4:7701", join=True)
    assert (f"ExecStart=/usr/local/bin/mqd serve --data-dir /var/lib/mqd --node 4 --cluster "
            f"{CLUSTER},4=10.0.0.4:7701 --join\n") in joining


def test_a_cluster_members_system_calls_are_allowed_by_the_unit(tmp_path, make_server):
    """A member of a three-node group traced through an election, writes and reads through it
    and through the others (so it forwards, or is forwarded to), a blocking read, a clean stop
    (a step-down if it leads) and a restart that recovers its raft log: every system call is
    one the unit's filter allows (the cluster drop-in changes the network, not the filter)."""
    if shutil.which("strace") is None or shutil.which("systemd-analyze") is None:
        pytest.skip("needs strace and systemd-analyze")
    from test_cluster import wait_for_leader

    ports = [free_port() for _ in range(3)]
    spec = ",".join(f"{i}=127.0.0.1:{port}" for i, port in enumerate(ports, 1))
    traces = [str(tmp_path / f"trace{round_}") for round_ in range(2)]
    traced = make_server(args=["--node", "1", "--cluster", spec], start=False,
                         wrapper=["strace", "-f", "-qq", "-o", traces[0]])
    others = [make_server(args=["--node", str(i), "--cluster", spec]) for i in (2, 3)]
    for round_, trace in enumerate(traces):
        traced.wrapper[-1] = trace
        traced.start()
        try:
            wait_for_leader([traced, *others])
            for server in (traced, *others):
                with server.mc() as mc:
                    for _ in range(50):
                        assert mc.set(b"q", b"x" * 1000) == b"STORED\r\n"
                    for _ in range(20):
                        assert mc.get_one(b"q") == b"x" * 1000
            with traced.mc() as mc:
                mc.send(b"get empty/t=200\r\n")
                assert mc.read_values() == []
                assert "cluster_role" in mc.stats()
            with traced.mq() as mq:
                assert mq.put(b"m", b"y") == [b"OK"]
                assert mq.get(b"m", 100) == [b"OK", b"y"]
        finally:
            # SIGTERM to mqd itself (strace's child): strace exits with mqd's status.
            children = wait_for(lambda: traced_children(traced.proc.pid), timeout=10) or []
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            traced.proc.wait(timeout=30)
            assert traced.stop() == 0
    assert_allowed_by_the_unit(traces)
