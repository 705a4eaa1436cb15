"""MemcacheQ 0.2.1's whole command line, through the real binary: the start line from its
documentation pasted verbatim, a real daemon (fork, setsid, pid file, start-up errors reaching the
shell), -r, -u, -h, -i, -U, and the BerkeleyDB options that are accepted without effect."""

import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import MemcacheConn, free_port, mqd_bin, wait_for

VERBATIM = "serve -d -r -u root -H {home} -N -R -v -L 1024 -B 1024"
BDB_OPTIONS = ["-A", "4096", "-L", "1024", "-C", "300", "-T", "30", "-S", "30", "-e", "60",
               "-E", "16", "-D", "100", "-R"]
IS_ROOT = os.geteuid() == 0


def run(args, **kwargs):
    return subprocess.run([mqd_bin(), *args], capture_output=True, timeout=60, **kwargs)


def proc_status(pid):
    """/proc/PID/status as a dict, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except FileNotFoundError:
        return None


def gone(pid):
    status = proc_status(pid)
    return status is None or status["State"].startswith("Z")


def stop_daemon(pid):
    """SIGTERM a daemon (not our child) and wait until it has exited."""
    if not gone(pid):
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: gone(pid), timeout=20), f"daemon {pid} did not stop on SIGTERM"


def server_log_lines(path):
    return path.read_text(errors="replace").splitlines()


# ------------------------------------------------------------------------------------------
# The line from MemcacheQ's documentation
# ------------------------------------------------------------------------------------------

# Run in a private network namespace: the line listens on the default ports (22201 and 47774),
# which other servers on this machine may use. Everything that talks to the daemon runs in the
# same namespace, through the real binary and a raw socket.
VERBATIM_SCRIPT = r"""
set -u
ip link set lo up
"$MQD" {line}
echo "start-exit=$?"
"$MQD" put jobs "resize image 42" && echo "put-ok"
"$MQD" get jobs --wait 1000
"$PY" - <<'EOF'
import socket
s = socket.create_connection(("127.0.0.1", 22201), timeout=10)
s.sendall(b"stats\r\n")
data = b""
while not data.endswith(b"END\r\n"):
    data += s.recv(65536)
pid = [l.split()[2] for l in data.decode().splitlines() if l.startswith("STAT pid ")][0]
print(f"daemon-pid={{pid}}")
EOF
"""


def test_memcacheq_start_line_works_verbatim(tmp_path):
    """`mqd serve -d -r -u root -H /data1/memcacheq -N -R -v -L 1024 -B 1024`, with a temporary
    directory for -H: it returns to the shell with status 0 and a daemon serving both protocols."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip for a private network namespace")
    home = tmp_path / "memcacheq"
    line = VERBATIM.format(home=home)
    unshare = ["unshare", "--net"] if IS_ROOT else ["unshare", "--net", "--map-root-user"]
    env = dict(os.environ, MQD=mqd_bin(), PY=shutil.which("python3"))
    for var in ("LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET", "JOURNAL_STREAM"):
        env.pop(var, None)
    # Capturing through pipes also proves the daemon let go of the shell's stdout and stderr:
    # otherwise this would wait until the daemon exits.
    result = subprocess.run([*unshare, "bash", "-c", VERBATIM_SCRIPT.format(line=line)],
                            capture_output=True, timeout=60, env=env)
    out = result.stdout.decode()
    match = re.search(r"daemon-pid=(\d+)", out)
    pid = int(match.group(1)) if match else None
    try:
        assert "start-exit=0" in out, f"{out}\n{result.stderr.decode()}"
        assert "put-ok\nresize image 42\n" in out, f"{out}\n{result.stderr.decode()}"
        assert pid is not None, out
        # A real daemon: its own session, reparented away from the shell, cwd /, no terminal.
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        session = int(fields[3])
        assert session == pid, "the daemon is not the leader of its own session"
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        # -r: the core file limit is raised to the maximum.
        with open(f"/proc/{pid}/limits") as f:
            core = next(l for l in f if l.startswith("Max core file size")).split()
        assert core[4] == core[5], f"soft core limit not raised to the hard one: {core}"
        # The data went to -H.
        assert any(home.iterdir())
    finally:
        if pid is not None:
            stop_daemon(pid)


# ------------------------------------------------------------------------------------------
# -d: a real daemon
# ------------------------------------------------------------------------------------------


def test_daemon_writes_its_own_pid_and_stops_cleanly(tmp_path):
    port = free_port()
    pid_file = tmp_path / "mqd.pid"
    log = tmp_path / "mqd.log"
    started = time.monotonic()
    with open(log, "wb") as err:
        result = subprocess.run(
            [mqd_bin(), "serve", "-d", "-p", str(port), "-H", str(tmp_path / "data"),
             "-P", str(pid_file)],
            stdout=subprocess.DEVNULL, stderr=err, timeout=60)
    assert result.returncode == 0, log.read_text()
    # The parent returned once the daemon listens: no waiting needed.
    with MemcacheConn(port) as mc:
        assert mc.set(b"q", b"hello") == b"STORED\r\n"
        stats = mc.stats()
    pid = int(pid_file.read_text())
    try:
        assert int(stats["pid"]) == pid, "the pid file does not hold the daemon's pid"
        assert pid != os.getpid()
        status = proc_status(pid)
        assert int(status["PPid"]) != os.getpid()
        # stderr was a file: the daemon kept logging there.
        assert any("serving" in l for l in server_log_lines(log)), log.read_text()
    finally:
        stop_daemon(pid)
    assert not pid_file.exists(), "the pid file was not removed on a clean stop"
    assert any(l.endswith("stopped") for l in server_log_lines(log))
    assert time.monotonic() - started < 30


def test_daemon_start_up_error_reaches_the_shell(tmp_path):
    """The port is taken: the daemon cannot listen, and the command that started it says so and
    exits 1, as a foreground server would."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        result = run(["serve", "-d", "-p", str(port), "-H", str(tmp_path / "data"),
                      "-P", str(tmp_path / "mqd.pid")])
    finally:
        taken.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.decode()
    assert not (tmp_path / "mqd.pid").exists()


# ------------------------------------------------------------------------------------------
# -r, -u
# ------------------------------------------------------------------------------------------


def test_r_raises_the_core_file_limit(make_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        pytest.skip("the hard core limit is 0 here: nothing to raise to")
    # Start it with no core files allowed (limits are inherited); -r must lift that.
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    try:
        server = make_server(args=["-r"])
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    with open(f"/proc/{server.proc.pid}/limits") as f:
        core = next(l for l in f if l.startswith("Max core file size")).split()
    assert core[4] == core[5] and core[4] != "0", core
    assert "core file limit raised" in server.log_path.read_text()


@pytest.fixture
def shared_dir():
    """A directory other users can reach (pytest's tmp_path is 0700 root-only)."""
    path = tempfile.mkdtemp(prefix="mqd-u-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_as(args, data_dir, log_path, preexec_fn=None, binary=None):
    port = free_port()
    proc = subprocess.Popen(
        [binary or mqd_bin(), "serve", "-p", str(port), "-H", data_dir, *args],
        stdin=subprocess.DEVNULL, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
        preexec_fn=preexec_fn)
    # Listening starts before the privileges are dropped: wait for the line saying it serves.
    assert wait_for(lambda: proc.poll() is not None or "serving" in log_path.read_text(),
                    timeout=15)
    assert proc.poll() is None, log_path.read_text()
    return proc, port


def sigterm(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


@pytest.mark.skipif(not IS_ROOT, reason="dropping privileges needs root")
def test_u_drops_root_for_the_user(shared_dir, tmp_path):
    nobody = pwd.getpwnam("nobody")
    data = os.path.join(shared_dir, "data")
    os.mkdir(data)  # made by root: -u must hand it over
    proc, port = start_as(["-u", "nobody"], data, tmp_path / "mqd.log")
    try:
        status = proc_status(proc.pid)
        uid = f"{nobody.pw_uid}\t" * 4
        assert status["Uid"] == uid.rstrip("\t"), status["Uid"]
        assert status["Gid"].split("\t")[0] == str(nobody.pw_gid), status["Gid"]
        assert status["Groups"].split() == [str(nobody.pw_gid)], status["Groups"]
        # Every thread, RocksDB's included, runs as the user, not only the main one.
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            with open(f"/proc/{proc.pid}/task/{task}/status") as f:
                line = next(l for l in f if l.startswith("Uid:"))
            assert line.split()[1:] == [str(nobody.pw_uid)] * 4, (task, line)
        with MemcacheConn(port) as mc:
            assert mc.set(b"q", b"kept") == b"STORED\r\n"
    finally:
        sigterm(proc)
    for entry in [data] + [os.path.join(data, n) for n in os.listdir(data)]:
        assert os.lstat(entry).st_uid == nobody.pw_uid, entry
    # And the directory stays usable as that user: restart and read the message back.
    proc, port = start_as(["-u", "nobody"], data, tmp_path / "mqd2.log")
    try:
        with MemcacheConn(port) as mc:
            assert mc.get_one(b"q") == b"kept"
    finally:
        sigterm(proc)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to start a process as another user")
def test_u_is_ignored_when_not_root(shared_dir, tmp_path):
    nobody = pwd.getpwnam("nobody")
    data = os.path.join(shared_dir, "data")
    os.mkdir(data)
    os.chown(data, nobody.pw_uid, nobody.pw_gid)

    def become_nobody():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    # The build may live where nobody cannot reach it (CI's target is under /root/.cache).
    binary = os.path.join(shared_dir, "mqd")
    shutil.copy2(mqd_bin(), binary)
    log = tmp_path / "mqd.log"
    proc, port = start_as(["-u", "root"], data, log, preexec_fn=become_nobody, binary=binary)
    try:
        assert proc_status(proc.pid)["Uid"].split()[0] == str(nobody.pw_uid)
        with MemcacheConn(port) as mc:
            assert mc.set(b"q", b"x") == b"STORED\r\n"
        assert "-u root ignored: not started as root" in log.read_text()
    finally:
        sigterm(proc)


@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_u_unknown_user_is_refused(tmp_path):
    result = run(["serve", "-p", str(free_port()), "-H", str(tmp_path / "d"),
                  "-u", "no-such-user-mqd"])
    assert result.returncode == 1
    assert "-u no-such-user-mqd: no such user" in result.stderr.decode()


# ------------------------------------------------------------------------------------------
# -h, -i, -U, the BerkeleyDB options
# ------------------------------------------------------------------------------------------


def test_h_prints_memcacheq_usage():
    result = run(["serve", "-h"])
    assert result.returncode == 0
    out = result.stdout.decode()
    for option in ["-p <num>", "-U <num>", "-s <file>", "-a <mask>", "-l <ip_addr>", "-d ", "-r ",
                   "-u <username>", "-c <num>", "-v ", "-vv ", "-h ", "-i ", "-P <file>",
                   "-t <num>", "-m <num>", "-A <num>", "-H <dir>", "-L <num>", "-C <num>",
                   "-T <num>", "-S <num>", "-e <num>", "-E <num>", "-B <num>", "-D <num>", "-N ",
                   "-R "]:
        assert f"\n{option}" in out, f"-h does not list {option!r}:\n{out}"


def test_i_prints_the_license():
    result = run(["serve", "-i"])
    assert result.returncode == 0
    license_path = os.path.join(os.path.dirname(__file__), "..", "LICENSE")
    with open(license_path, "rb") as f:
        assert result.stdout == f.read()


def test_udp_is_refused(tmp_path):
    result = run(["serve", "-U", "1", "-p", str(free_port()), "-H", str(tmp_path / "d")])
    assert result.returncode == 1
    assert "no UDP" in result.stderr.decode()


def test_udp_port_zero_and_every_berkeleydb_option_are_accepted(make_server):
    server = make_server(args=["-U", "0", "-vv", *BDB_OPTIONS])
    with server.mc() as mc:
        assert mc.set(b"q", b"x") == b"STORED\r\n"
        assert mc.get_one(b"q") == b"x"
    lines = [l for l in server_log_lines(server.log_path) if "no effect" in l]
    assert len(lines) == 1, lines
    assert ("-A 4096 -L 1024 -C 300 -T 30 -S 30 -e 60 -E 16 -D 100 -R" in lines[0]), lines[0]


@pytest.mark.parametrize("option", [o for o in BDB_OPTIONS if o.startswith("-")])
def test_each_berkeleydb_option_alone(option, tmp_path):
    """Each one is parsed with its argument (or none) as MemcacheQ's getopt takes it: a following
    option is not swallowed as its value, and a missing value is an error."""
    takes_value = BDB_OPTIONS.index(option) + 1 < len(BDB_OPTIONS) and \
        not BDB_OPTIONS[BDB_OPTIONS.index(option) + 1].startswith("-")
    args = ["serve", option] + (["7"] if takes_value else []) + ["-h"]
    assert run(args).returncode == 0, args
    if takes_value:
        assert run(["serve", option]).returncode != 0


def test_getopt_style_clusters(tmp_path):
    """`-vv`, `-dN` and `-p22201`-style attached values work as with getopt."""
    port = free_port()
    pid_file = tmp_path / "p"
    with open(tmp_path / "mqd.log", "wb") as err:
        result = subprocess.run(
            [mqd_bin(), "serve", "-dNvv", f"-p{port}", f"-H{tmp_path / 'data'}", f"-P{pid_file}"],
            stdout=subprocess.DEVNULL, stderr=err, timeout=60)
    assert result.returncode == 0, (tmp_path / "mqd.log").read_text()
    pid = int(pid_file.read_text())
    try:
        with MemcacheConn(port) as mc:
            assert mc.set(b"q", b"x") == b"STORED\r\n"
        log = (tmp_path / "mqd.log").read_text()
        assert "sync Never" in log and "DEBUG" in log, log
    finally:
        stop_daemon(pid)
