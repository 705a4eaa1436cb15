"""Running under systemd: sockets passed by socket activation, and readiness/stopping
notifications on $NOTIFY_SOCKET, exercised the way systemd does them (no systemd needed)."""

import os
import signal
import socket
import subprocess
import time

from conftest import MemcacheConn, MqmqConn, mqd_bin

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
