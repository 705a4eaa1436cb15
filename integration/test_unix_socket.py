"""MemcacheQ's `-s <file>`: a unix socket speaking both protocols (the first byte decides, as on
TCP), with `-a` its permission bits; a stale socket file is replaced, a live one is not stolen,
and the file goes away on a clean stop."""

import os
import signal
import socket
import stat
import subprocess

from conftest import IO_TIMEOUT, MemcacheConn, MqmqConn, mqd_bin, wait_for


def unix_conn(cls, path):
    """A conftest connection (MemcacheConn or MqmqConn) over a unix socket instead of TCP."""
    conn = cls.__new__(cls)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.settimeout(IO_TIMEOUT)
    conn.sock.connect(str(path))
    conn.timeout = IO_TIMEOUT
    conn.buf = bytearray()
    return conn


def test_classic_session_over_a_unix_socket(make_server, tmp_path):
    path = tmp_path / "mqd.sock"
    make_server(args=["-s", str(path)])
    with unix_conn(MemcacheConn, path) as mc:
        # MemcacheQ's documented session, byte for byte.
        mc.send(b"set q4 0 0 5\r\nhello\r\n")
        mc.expect(b"STORED\r\n")
        mc.send(b"set q4 0 0 5\r\nworld\r\n")
        mc.expect(b"STORED\r\n")
        mc.send(b"stats queue\r\n")
        mc.expect(b"STAT q4 2/0\r\nEND\r\n")
        mc.send(b"get q4\r\n")
        mc.expect(b"VALUE q4 0 5\r\nhello\r\nEND\r\n")
        mc.send(b"stats queue\r\n")
        mc.expect(b"STAT q4 2/1\r\nEND\r\n")
        assert mc.nothing_pending()


def test_mqmq_over_the_unix_socket_and_across_to_tcp(make_server, tmp_path):
    path = tmp_path / "mqd.sock"
    server = make_server(args=["-s", str(path)])
    with unix_conn(MqmqConn, path) as mq:
        assert mq.put(b"jobs", b"from unix") == [b"OK"]
        assert mq.put(b"jobs", b"second") == [b"OK"]
        assert mq.get(b"jobs", 1000) == [b"OK", b"from unix"]
    # Same queues whichever socket a client used.
    with server.mc() as mc:
        assert mc.get_one(b"jobs") == b"second"


def test_socket_mode_bits(make_server, tmp_path):
    default = tmp_path / "default.sock"
    make_server(args=["-s", str(default)])
    assert stat.S_IMODE(os.stat(default).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(default).st_mode)
    wide = tmp_path / "wide.sock"
    make_server(args=["-s", str(wide), "-a", "0666"])
    assert stat.S_IMODE(os.stat(wide).st_mode) == 0o666
    narrow = tmp_path / "narrow.sock"
    make_server(args=["-s", str(narrow), "-a", "600"])
    assert stat.S_IMODE(os.stat(narrow).st_mode) == 0o600


def test_bad_mode_is_refused(tmp_path):
    result = subprocess.run([mqd_bin(), "serve", "-s", str(tmp_path / "s"), "-a", "0999",
                             "-H", str(tmp_path / "d")], capture_output=True, timeout=30)
    assert result.returncode == 1
    assert "octal" in result.stderr.decode()


def test_stale_socket_replaced_live_one_kept_file_removed_on_stop(make_server, tmp_path):
    path = tmp_path / "mqd.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crashed server leaves
    server = make_server(args=["-s", str(path)])
    with unix_conn(MemcacheConn, path) as mc:
        assert mc.cmd(b"version").startswith(b"VERSION ")
    # A second server must not steal the live socket.
    second = subprocess.run([mqd_bin(), "serve", "-s", str(path), "-H", str(tmp_path / "d2")],
                            capture_output=True, timeout=30)
    assert second.returncode == 1
    assert "another server is listening" in second.stderr.decode()
    with unix_conn(MemcacheConn, path) as mc:
        assert mc.cmd(b"version").startswith(b"VERSION ")
    assert server.stop() == 0
    assert not path.exists()


def test_not_a_socket_is_never_deleted(tmp_path):
    path = tmp_path / "precious"
    path.write_text("data")
    result = subprocess.run([mqd_bin(), "serve", "-s", str(path), "-H", str(tmp_path / "d")],
                            capture_output=True, timeout=30)
    assert result.returncode == 1
    assert "not a socket" in result.stderr.decode()
    assert path.read_text() == "data"


def test_s_alone_listens_only_on_the_socket(tmp_path):
    """As MemcacheQ: -s without -p/-l disables TCP."""
    path = tmp_path / "mqd.sock"
    log = tmp_path / "mqd.log"
    proc = subprocess.Popen([mqd_bin(), "serve", "-s", str(path), "-H", str(tmp_path / "d")],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        assert wait_for(lambda: "serving" in log.read_text(), timeout=15), log.read_text()
        serving = next(l for l in log.read_text().splitlines() if "serving" in l)
        assert f"on unix:{path} with" in serving, serving
        with unix_conn(MemcacheConn, path) as mc:
            assert mc.set(b"q", b"x") == b"STORED\r\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert not path.exists()
