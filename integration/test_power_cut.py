"""Power cuts: mqd runs under the powercut shim (integration/powercut/), so a kill followed by
`restore()` leaves only what was fsynced, files and directory entries alike. With `--sync
always` no acknowledged message may be lost; with `--sync none` the same loop must lose some
(else the shim would prove nothing); `--sync interval:<ms>` loses only what was acknowledged in
the last window before the cut. The long version is scripts/crash-loop.

Contract: protocol-spec/memcache.md section 9."""

import os
import subprocess
import sys

import pytest

import powercut
from kestrel_helpers import drain, set_many

# Every test runs as users run the server (one event loop) and with several loops.
pytestmark = pytest.mark.event_loops


@pytest.fixture
def powered(make_server):
    """`powered(args, prime_wal=True)`: a server under the power-cut shim. With `prime_wal`
    (the server's default) every start writes to a reused WAL file, full of older records that
    recovery must tell from new ones."""

    def make(args=(), prime_wal=True):
        server = make_server(args=args, start=False, prime_wal=prime_wal)
        server.env.update(powercut.env(server.data_dir))
        return server.start()

    return make


@pytest.mark.parametrize("prime_wal", [False, True], ids=["new-wal", "primed-wal"])
def test_power_cut_loses_nothing_acknowledged_with_sync_always(powered, prime_wal):
    server = powered(["--sync", "always"], prime_wal=prime_wal)
    figures = powercut.crash_loop(server, cycles=5, seconds=2.0)
    print(figures)
    assert figures["acknowledged"] > 2000, figures
    assert figures["lost"] == 0, figures
    assert figures["shown_lost"] == 0, figures


def test_a_reader_is_shown_only_messages_that_survive_a_power_cut(powered):
    """A message is handed to a blocked reader as soon as it is written, but the reply waits for
    the fsync: each message a watcher was shown (open, never confirmed) is delivered again after
    the cut. Fails when replies showing a message do not wait for its sync."""
    server = powered(["--sync", "always"])
    figures = powercut.crash_loop(server, cycles=12, seconds=0.4, watch_only=True)
    print(figures)
    assert figures["shown_open"] > 300, figures
    assert figures["shown_lost"] == 0, figures


def test_power_cut_loses_acknowledged_messages_with_sync_none(powered):
    """The same loop without fsyncs: proof that the shim really drops unsynced data."""
    server = powered(["--sync", "none"])
    figures = powercut.crash_loop(server, cycles=2, seconds=2.0)
    print(figures)
    assert figures["lost"] > 0, figures


def test_power_cut_with_sync_interval_loses_at_most_the_window(powered):
    interval_ms = 300
    server = powered(["--sync", f"interval:{interval_ms}"])
    figures = powercut.crash_loop(server, cycles=3, seconds=2.0)
    print(figures)
    # One interval, plus the sync's own time and scheduling on a busy 2-core machine.
    assert figures["oldest_lost_age_ms"] <= interval_ms + 250, figures


def test_a_message_taken_before_the_cut_may_come_back_but_an_unread_one_always_does(powered):
    server = powered()
    with server.mc() as c:
        set_many(c, "kept", [b"a", b"b", b"c"])
        assert c.get_one("kept") == b"a"
    powercut.cut(server)
    server.start()
    with server.mc() as c:
        assert drain(c, "kept") in ([b"a", b"b", b"c"], [b"b", b"c"])


def test_a_lone_clients_acknowledged_sets_survive_a_power_cut(powered):
    """One connection, one set at a time: every connection of its event loop waits for a reply,
    so the loop fsyncs on its own thread instead of handing over to the syncer. Fails if that
    fsync is skipped."""
    server = powered(["--sync", "always", "--threads", "1"], prime_wal=True)
    bodies = [b"lone%d" % i for i in range(200)]
    with server.mc() as c:
        for body in bodies:
            assert c.set(b"lone", body) == b"STORED\r\n"
    powercut.cut(server)
    server.start()
    with server.mc() as c:
        assert drain(c, "lone") == bodies


@pytest.mark.parametrize("command, reply", [(b"flush pf", b"END"), (b"flush_all", b"OK"), (b"delete pf", b"DELETED")])
def test_flush_and_delete_are_durable_when_answered(powered, command, reply):
    """Bug 6 of issue 8: `flush` was answered before any fsync (while `delete` was synced), so
    a power cut right after the answer brought the flushed messages back."""
    server = powered(["--sync", "always"])
    with server.mc() as c:
        set_many(c, "pf", [b"m%d" % i for i in range(5)])
        assert c.cmd(command) == reply + b"\r\n"
    powercut.cut(server)
    server.start()
    with server.mc() as c:
        assert drain(c, "pf") == []


SHIM_SCRIPT = r"""
import os, signal, sys
d = sys.argv[1]
def synced_dir():
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
fd = os.open(d + "/kept", os.O_CREAT | os.O_WRONLY, 0o644)
os.write(fd, b"synced")
os.fsync(fd)
synced_dir()
os.write(fd, b"+unsynced")                      # lost: never fsynced
t = os.open(d + "/hole", os.O_CREAT | os.O_WRONLY, 0o644)
os.write(t, b"0123456789")
os.fsync(t)
synced_dir()
t2 = os.open(d + "/hole", os.O_WRONLY | os.O_TRUNC)
os.pwrite(t2, b"zz", 5)                         # truncated, then a hole before zz
os.fsync(t2)
n = os.open(d + "/new", os.O_CREAT | os.O_WRONLY, 0o644)
os.write(n, b"fsynced, but its name never was")
os.fsync(n)
os.rename(d + "/kept", d + "/renamed")          # not durable without a directory fsync
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_shim_keeps_exactly_what_was_fsynced(tmp_path):
    """The model itself: file contents as of their last fsync, names as of the directory's."""
    data = tmp_path / "data"
    data.mkdir()
    env = dict(os.environ, **powercut.env(data))
    proc = subprocess.run([sys.executable, "-c", SHIM_SCRIPT, str(data)], env=env)
    assert proc.returncode == -9
    assert sorted(os.listdir(data)) == ["hole", "new", "renamed"]  # before the cut
    powercut.restore(data)
    assert sorted(os.listdir(data)) == ["hole", "kept"]
    assert (data / "kept").read_bytes() == b"synced"
    assert (data / "hole").read_bytes() == b"\0" * 5 + b"zz"
