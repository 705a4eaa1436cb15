"""Damage in a cluster (issue 22, protocol-spec/cluster.md 8): a member that finds a damaged
block gets a whole copy back from the group, nothing acknowledged lost, without an operator.

One bit is flipped in a follower's table file (a message's body, in the messages column
family); the follower is made the leader, so that its reads reach the damaged block. It answers
`SERVER_ERROR storage failure` (never damaged data), stops leading (`cluster_role resyncing`),
and once the other two committed without it exits with status 75; started again, as systemd's
`Restart=on-failure` would, it empties its directory, takes a snapshot, and can lead with every
message that was not read."""

import socket
import time

import pytest

from test_cluster import (NO_LEADER, PATIENCE, agreed_leader, cluster_of, one_by_one,
                          take, until_served, view, wait_for_commit, wait_for_exit,
                          wait_for_installed, wait_for_leader)
from test_damaged_blocks import body, fill

EXIT_RESYNC = 75
N = 4000
# The message whose body gets the flipped bit: well inside the table file's data blocks.
DAMAGED = 2500
STORAGE_FAILURE = b"SERVER_ERROR storage failure\r\n"


def family_of(table):
    """The column family a table file belongs to, from its properties block near its end."""
    with open(table, "rb") as f:
        f.seek(max(0, table.stat().st_size - 8192))
        tail = f.read()
    return next((f for f in ("messages", "raft_log", "meta")
                 if b"name" + f.encode() + b"\n" in tail or f.encode() in tail), "?")


def flip_a_bit_in(data_dir, family, marker):
    """Flips one bit 500 bytes into the message starting with `marker`, in the table file of
    column family `family` holding it (`messages`; `raft_log`, whose entries hold the same
    bytes)."""
    hits = []
    for sst in sorted(data_dir.glob("*.sst")):
        data = bytearray(sst.read_bytes())
        at = data.find(marker)
        if at >= 0 and family_of(sst) == family:
            hits.append((sst, data, at))
    assert len(hits) == 1, f"expected one {family} table with {marker!r}, found {len(hits)}"
    sst, data, at = hits[0]
    data[at + 500] ^= 0x10
    sst.write_bytes(bytes(data))
    return sst


def running(servers):
    return [s for s in servers if s.alive()]


def make_leader(servers, wanted):
    """Kills whoever leads (started again once another leads) until `wanted` is elected."""
    deadline = time.monotonic() + 10 * PATIENCE
    while True:
        leader, _ = wait_for_leader(running(servers), timeout=2 * PATIENCE)
        if servers[leader - 1] is wanted:
            return
        assert time.monotonic() < deadline, "the wanted member was never elected"
        loser = servers[leader - 1]
        loser.kill()
        wait_for_leader(running(servers), timeout=2 * PATIENCE)
        loser.start()


def read_until_failure(server, queue):
    """Plain gets through `server` until one is not a message: (bodies, the reply that ended
    it: STORAGE_FAILURE, END, or None if the server closed the connection)."""
    bodies = []
    first = until_served(server, lambda c: take(c, queue))
    if first is None:
        return bodies, b"END\r\n"
    bodies.append(first)
    try:
        with server.mc() as c:
            while True:
                line = c.cmd(b"get " + queue)
                if not line.startswith(b"VALUE "):
                    return bodies, line
                block = c.read_exactly(int(line.split()[3]) + 2)
                assert c.read_line() == b"END\r\n"
                bodies.append(block[:-2])
    except ConnectionError:
        return bodies, None


def wait_for_rejoined(server, log_from):
    """Until `server`'s marker is gone: it installed the group's copy and takes part again."""
    deadline = time.monotonic() + 4 * PATIENCE
    while (server.data_dir / "mqd-resync").exists():
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    assert b"takes part again" in server.log_path.read_bytes()[log_from:]


def drain_through(server, queue):
    got = []
    with server.mc() as c:
        while True:
            b = take(c, queue)
            if b is None:
                return got
            assert b != NO_LEADER
            got.append(b)


def filled_then_a_follower_stopped(servers):
    """N messages in `big` on every member, then one follower cleanly stopped (its memtables
    flushed into table files): (servers, the leader, the stopped follower, the other one)."""
    leader, _ = wait_for_leader(servers)
    primary = servers[leader - 1]
    assert until_served(primary, lambda c: take(c, b"big")) is None
    fill(primary, b"big", N)
    damaged, down = [s for s in servers if s is not primary]
    wait_for_commit(damaged, view(primary)["commit"])
    wait_for_commit(down, view(primary)["commit"])
    assert damaged.stop() == 0
    return servers, primary, damaged, down


def resyncs_once_the_third_is_back(servers, primary, damaged, down, log_from):
    """The third member (`down`) back: the leader and it commit without the damaged member,
    which drops its copy, exits with 75, and started again takes the group's, then leads with
    every message."""
    down.start()
    leader, _ = wait_for_leader([primary, down], timeout=2 * PATIENCE)
    first = servers[leader - 1]
    assert until_served(first, lambda c: c.set("extra", b"e0")) == b"STORED\r\n"
    extra = [b"e0"] + one_by_one(first, "extra", [b"e%d" % i for i in range(1, 20)])
    status = wait_for_exit(damaged, 4 * PATIENCE)
    assert status == EXIT_RESYNC, f"exit status {status}\n{damaged.log_tail()}"
    assert b"dropping its damaged copy" in damaged.log_path.read_bytes()[log_from:]
    damaged.start()
    leader, _ = wait_for_leader(servers, timeout=4 * PATIENCE)
    wait_for_commit(damaged, view(servers[leader - 1])["commit"], timeout=4 * PATIENCE)
    assert wait_for_installed(damaged) >= 1
    wait_for_rejoined(damaged, log_from)
    make_leader(servers, damaged)
    assert drain_through(damaged, b"big") == [body(i) for i in range(N)]
    assert drain_through(damaged, b"extra") == extra


def test_a_member_that_finds_damage_gets_its_copy_back_from_the_group(make_server):
    # A short log: the leader compacts what the emptied member lacks, which then needs a snapshot.
    servers = cluster_of(make_server, log_entries=16)
    leader, _ = wait_for_leader(servers)
    primary = servers[leader - 1]
    assert until_served(primary, lambda c: take(c, b"big")) is None
    fill(primary, b"big", N)
    damaged = next(s for s in servers if s is not primary)
    wait_for_commit(damaged, view(primary)["commit"])
    # A clean stop flushes its memtables: the messages are in table files.
    assert damaged.stop() == 0
    flip_a_bit_in(damaged.data_dir, "messages", b"m%06d " % DAMAGED)
    damaged.start()

    # Elected, it reads the queue from its own copy: the damaged block is found.
    make_leader(servers, damaged)
    log_from = damaged.log_path.stat().st_size
    before, ended = read_until_failure(damaged, b"big")
    assert ended in (STORAGE_FAILURE, None), ended
    assert len(before) <= DAMAGED
    assert before == [body(i) for i in range(len(before))], "in order, nothing damaged served"

    # It stops leading and, once the others committed without it, leaves to drop its copy.
    others = [s for s in servers if s is not damaged]
    status = wait_for_exit(damaged, 4 * PATIENCE)
    assert status == EXIT_RESYNC, f"exit status {status}\n{damaged.log_tail()}"
    log = damaged.log_path.read_bytes()[log_from:]
    assert b"takes no part in the group" in log, damaged.log_tail()
    assert b"dropping its damaged copy" in log, damaged.log_tail()
    assert (damaged.data_dir / "mqd-resync").read_text().startswith("wipe")
    new_leader, _ = wait_for_leader(others)
    assert servers[new_leader - 1] is not damaged
    # Written while it is down, one entry each: past what the leader's log keeps for it.
    extra = one_by_one(servers[new_leader - 1], "extra", [b"e%d" % i for i in range(100)])

    # Started again (systemd's Restart=on-failure): emptied, rejoining as a joiner (no vote)
    # until the group's snapshot is installed, then a member as before.
    damaged.start()
    assert b"files of the damaged copy removed" in damaged.log_path.read_bytes()[log_from:]
    wait_for_commit(damaged, view(servers[new_leader - 1])["commit"], timeout=4 * PATIENCE)
    assert wait_for_installed(damaged) >= 1
    wait_for_rejoined(damaged, log_from)
    leader, views = agreed_leader(servers)
    assert leader is not None, views

    # It leads with every message not read, from its own copy, in order: none lost. A plain
    # get whose removal was not committed when it stopped leading comes back (cluster.md 2).
    make_leader(servers, damaged)
    after = drain_through(damaged, b"big")
    assert after, "nothing came back"
    start = int(after[0].split()[0][1:])
    assert start <= len(before), f"messages {start - len(before)} after the last read lost"
    assert after == [body(i) for i in range(start, N)], f"{len(after)} back from {start}"
    assert drain_through(damaged, b"extra") == extra
    assert damaged.alive()


def test_a_follower_with_a_damaged_log_keeps_its_copy_until_the_others_can_do_without_it(
        make_server):
    servers, primary, damaged, down = filled_then_a_follower_stopped(cluster_of(make_server))
    # In the raft log's table: the start reads every entry, and meets the damaged block.
    flip_a_bit_in(damaged.data_dir, "raft_log", b"m%06d " % DAMAGED)
    # The third member down: every entry committed from now on would be on the leader and the
    # damaged member alone, and the damaged one must keep its copy.
    down.kill()
    log_from = damaged.log_path.stat().st_size
    damaged.start()
    deadline = time.monotonic() + PATIENCE
    while (view(damaged)["role"] != "resyncing"
           or b"takes no part in the group" not in damaged.log_path.read_bytes()[log_from:]):
        assert time.monotonic() < deadline, view(damaged)
        time.sleep(0.05)
    time.sleep(3)
    assert damaged.alive() and view(damaged)["role"] == "resyncing"
    assert (damaged.data_dir / "mqd-resync").read_text().startswith("damaged")
    with damaged.mc() as c:
        assert c.cmd(b"get big") == NO_LEADER, "it neither serves nor forwards"
    # Its few heartbeat answers do not keep the leader's quorum: no write is held for nothing.
    deadline = time.monotonic() + PATIENCE
    while view(primary)["role"] == "leader":
        assert time.monotonic() < deadline, "the leader kept a quorum it does not have"
        time.sleep(0.05)

    resyncs_once_the_third_is_back(servers, primary, damaged, down, log_from)


def break_a_footer(data_dir, family):
    """Flips one bit in the footer of `family`'s largest table file: RocksDB reads footers
    (and the blocks they point to) while it opens the database, which then fails to open."""
    tables = [sst for sst in data_dir.glob("*.sst") if family_of(sst) == family]
    assert tables, f"no {family} table file"
    sst = max(tables, key=lambda t: t.stat().st_size)
    data = bytearray(sst.read_bytes())
    data[-30] ^= 0x10
    sst.write_bytes(bytes(data))


def test_a_member_whose_database_cannot_open_waits_then_takes_the_groups_copy(make_server):
    servers, primary, damaged, down = filled_then_a_follower_stopped(
        cluster_of(make_server, log_entries=16))
    break_a_footer(damaged.data_dir, "messages")
    # The third member down: what the leader commits from now on needs the damaged member's
    # copy, which it must keep.
    down.kill()
    log_from = damaged.log_path.stat().st_size
    damaged.start(wait=False)
    deadline = time.monotonic() + PATIENCE
    while b"takes no part in the group" not in damaged.log_path.read_bytes()[log_from:]:
        assert damaged.alive(), f"the start failed\n{damaged.log_tail()}"
        assert time.monotonic() < deadline, damaged.log_tail()
        time.sleep(0.05)
    log = damaged.log_path.read_bytes()[log_from:]
    assert b"Corruption" in log, damaged.log_tail()
    time.sleep(3)
    assert damaged.alive(), damaged.log_tail()
    assert (damaged.data_dir / "mqd-resync").read_text().startswith("damaged")
    # No engine, so no client served: refused at once rather than left waiting.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", damaged.ports[0]), timeout=1).close()

    resyncs_once_the_third_is_back(servers, primary, damaged, down, log_from)
