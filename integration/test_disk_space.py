"""Disk space comes back: on a small file system (a 400 MB tmpfs mounted for the test), sets are
refused at the free-space reserve, and once the messages are consumed, or the queue is deleted
or flushed, the space is given back and sets are accepted again within seconds, with no
restart. Needs root to mount; skipped otherwise."""

import os
import subprocess
import time

import pytest

# Incompressible, as real payloads mostly are: RocksDB compresses its files with lz4.
BODY = os.urandom(256 << 10)
RECOVERY_S = 10.0


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "small-fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(mount)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_until_refused(mc, queue, limit=3000):
    """Sets until the reserve refuses one; returns how many were stored."""
    for stored in range(limit):
        reply = mc.set(queue, BODY)
        if reply == b"SERVER_ERROR out of disk space\r\n":
            return stored
        assert reply == b"STORED\r\n", reply
    raise AssertionError(f"{limit} messages of {len(BODY)} bytes never reached the reserve")


def accepted_again_within(mc, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reply = mc.set(b"probe", b"p")
        if reply == b"STORED\r\n":
            return True
        assert reply == b"SERVER_ERROR out of disk space\r\n", reply
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("free_by", ["draining", "delete", "flush"])
def test_freed_space_lets_writes_resume(make_server, small_fs, free_by):
    server = make_server(start=False)
    server.data_dir = small_fs / "data"
    server.data_dir.mkdir()
    server.start()
    with server.mc() as mc:
        stored = fill_until_refused(mc, b"big")
        assert stored > 50, f"only {stored} messages fit"
        if free_by == "draining":
            for _ in range(stored):
                assert mc.get_one(b"big") == BODY
        elif free_by == "delete":
            assert mc.cmd(b"delete big") == b"DELETED\r\n"
        else:
            assert mc.cmd(b"flush big") == b"END\r\n"
        start = time.monotonic()
        assert accepted_again_within(mc, RECOVERY_S), (
            f"sets still refused {RECOVERY_S} s after {free_by} freed {stored} messages"
        )
        print(f"{free_by}: {stored} messages, writes resumed after {time.monotonic() - start:.1f} s")
        # The rest of the space follows within a reclaim pass or two (sets resume as soon as
        # free space is back above the reserve); then the disk can be filled again.
        time.sleep(3)
        assert fill_until_refused(mc, b"again") > 50
