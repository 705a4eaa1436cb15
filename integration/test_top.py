"""`mqd top` in a real terminal: driven in tmux (its own server socket), the pane is read
back with capture-pane while queues change, and `q` must end it."""

import re
import shutil
import subprocess

import pytest

from conftest import free_port, mqd_bin, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None,
    reason="tmux is not installed (scripts/deps --tests installs it)",
)


class Tmux:
    def __init__(self, tmp_path):
        self.socket = str(tmp_path / "tmux.sock")

    def run(self, *args, check=True):
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True,
                              text=True, check=check, timeout=20)

    def start(self, command):
        self.run("new-session", "-d", "-s", "top", "-x", "140", "-y", "30", command)

    def screen(self):
        result = self.run("capture-pane", "-p", "-t", "top", check=False)
        return result.stdout if result.returncode == 0 else ""

    def alive(self):
        return self.run("has-session", "-t", "top", check=False).returncode == 0

    def kill(self):
        self.run("kill-server", check=False)


@pytest.fixture
def tmux(tmp_path):
    t = Tmux(tmp_path)
    yield t
    t.kill()


def row(screen, queue):
    """The table row of `queue` as its columns, or None."""
    for line in screen.splitlines():
        cols = line.split()
        if cols and cols[0] == queue:
            return cols
    return None


def test_top_follows_depth_and_rates_and_quits_on_q(server, tmux):
    with server.mc() as mc:
        for i in range(3):
            assert mc.set(b"jobs", b"job-%d" % i) == b"STORED\r\n"
        tmux.start(f"{mqd_bin()} top --addr 127.0.0.1:{server.port} --interval 200")
        screen = wait_for(lambda: (s := tmux.screen()) and row(s, "jobs") and s)
        assert screen, f"no jobs row in:\n{tmux.screen()}"
        assert re.search(r"QUEUE\s+DEPTH\s+IN/s\s+OUT/s\s+OLDEST\s+OPEN\s+WAIT", screen), screen
        assert f"mqd 127.0.0.1:{server.port}" in screen
        assert row(screen, "jobs")[1] == "3"

        for i in range(2):
            assert mc.set(b"jobs", b"more-%d" % i) == b"STORED\r\n"
        assert mc.get_one(b"jobs") == b"job-0"
        assert wait_for(lambda: (r := row(tmux.screen(), "jobs")) and r[1] == "4"), tmux.screen()
        assert mc.set(b"other", b"x") == b"STORED\r\n"
        other = wait_for(lambda: row(tmux.screen(), "other"))
        assert other and other[1] == "1", tmux.screen()

        # A steady producer shows up as an enqueue rate.
        def rate_seen():
            assert mc.set(b"jobs", b"tick") == b"STORED\r\n"
            r = row(tmux.screen(), "jobs")
            return r and r[2] not in ("-", "0.0")
        assert wait_for(rate_seen, timeout=10), tmux.screen()

    tmux.run("send-keys", "-t", "top", "q")
    assert wait_for(lambda: not tmux.alive()), "q did not end mqd top"


def test_top_says_when_the_server_cannot_be_reached(tmux):
    port = free_port()
    tmux.start(f"{mqd_bin()} top --addr 127.0.0.1:{port} --interval 200")
    assert wait_for(lambda: f"cannot read http://127.0.0.1:{port}/stats.json" in tmux.screen()), (
        tmux.screen())
    tmux.run("send-keys", "-t", "top", "C-c")
    assert wait_for(lambda: not tmux.alive()), "Ctrl-C did not end mqd top"
