"""Upgrades keep data (issue 22): a data directory written by the single-node mqd of before
replication (commit 38f1984, `fixtures/single-server-38f1984`: queue `upgrade` with m10..m99,
flags 7, after ten gets took m0..m9; queue `big` with one 10,240-byte message; stopped with
SIGTERM) opens with this binary and keeps every message, across a restart too. Started as the
first member of a cluster it seeds the group: the others start with `--join` and get its
messages by snapshot; as a joining member it is refused with a clear error, since the snapshot
would replace its messages (protocol-spec/cluster.md 5)."""

import shutil
import subprocess
import time
from pathlib import Path

from conftest import free_port, mqd_bin

FIXTURE = Path(__file__).parent / "fixtures" / "single-server-38f1984"
BIG = bytes(range(256)) * 40


def with_fixture(server):
    shutil.rmtree(server.data_dir)
    shutil.copytree(FIXTURE, server.data_dir)
    return server


def test_a_single_server_directory_of_before_replication_keeps_every_message(make_server):
    server = with_fixture(make_server(start=False))
    server.start()
    with server.mc() as mc:
        stats = mc.stats()
        assert stats["curr_queues"] == "2" and stats["curr_items"] == "91", stats
        assert stats["queue_upgrade_items"] == "90"
        assert mc.get(b"upgrade") == [(b"upgrade", 7, b"m10", None)]
    server.restart()
    with server.mc() as mc:
        bodies = []
        while (values := mc.get(b"upgrade")) != []:
            assert values[0][1] == 7, values
            bodies.append(values[0][2])
        assert bodies == [b"m%d" % i for i in range(11, 100)]
        assert mc.get_one(b"big") == BIG
        assert mc.set(b"upgrade", b"new") == b"STORED\r\n"
    server.restart(crash=True)
    with server.mc() as mc:
        assert mc.get_one(b"upgrade") == b"new"
        assert mc.get_one(b"big") is None


def test_a_single_server_directory_is_not_started_as_a_joining_member(make_server):
    server = with_fixture(make_server(start=False))
    spec = f"1=127.0.0.1:{free_port()},2=127.0.0.1:{free_port()},3=127.0.0.1:{free_port()}"
    result = subprocess.run(
        [mqd_bin(), "serve", "--data-dir", str(server.data_dir), "--listen",
         f"127.0.0.1:{free_port()}", "--no-wal-prime", "--node", "2", "--cluster", spec,
         "--join"],
        capture_output=True, timeout=60,
    )
    assert result.returncode != 0
    error = result.stderr.decode(errors="replace")
    assert "holds 2 queues of a single server: a member started with --join" in error, error
    # Refused before anything was written: it still opens as the single server it was.
    server.start()
    with server.mc() as mc:
        assert mc.stats()["curr_items"] == "91"


def test_a_single_server_directory_seeds_a_group_whose_other_members_join(make_server):
    spec = ",".join(f"{i}=127.0.0.1:{free_port()}" for i in (1, 2, 3))
    seed = with_fixture(make_server(start=False, prime_wal=False))
    seed.args = ["--node", "1", "--cluster", spec]
    seed.start()
    joiners = [make_server(args=["--node", str(i), "--cluster", spec, "--join"], prime_wal=False)
               for i in (2, 3)]
    deadline = time.monotonic() + 20
    # Every member applied the seed's state and the first leadership's entry.
    while True:
        stats = [s.mc().stats() for s in (seed, *joiners)]
        if all(int(st["cluster_commit_index"]) >= 2 for st in stats) and all(
                st["cluster_snapshots_installed"] == "1" for st in stats[1:]):
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    seed.kill()
    deadline = time.monotonic() + 20
    while True:
        leaders = [j for j in joiners if j.mc().stats()["cluster_role"] == "leader"]
        if leaders:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with leaders[0].mc() as mc:
        deadline = time.monotonic() + 20
        # `no leader` until the new leader is established.
        while (line := mc.cmd(b"get upgrade")) == b"SERVER_ERROR no leader\r\n":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert line == b"VALUE upgrade 7 3\r\n", line
        assert mc.read_exactly(10) == b"m10\r\nEND\r\n"
        bodies = [b"m10"]
        while (values := mc.get(b"upgrade")) != []:
            assert values[0][1] == 7, values
            bodies.append(values[0][2])
        assert bodies == [b"m%d" % i for i in range(10, 100)]
        assert mc.get_one(b"big") == BIG
