"""Membership changes online (issue 22, step 7; protocol-spec/cluster.md 7): `mqd cluster add`
makes a new node (started with `--join` on an empty directory) a learner that catches up, then a
voter; `mqd cluster remove` takes a member out; a dead member is replaced (add the new one,
then remove the dead one) while a producer writes; a restart of every member keeps the new
membership (the stored map wins over `--cluster`); and the errors of cluster.md 7.3. The CLI is
the real binary's, talking to a member's client port (memcache text `cluster …` lines) or, with
`--peer`, to its replication address; `status` is also read on the wire there."""

import shutil
import socket
import subprocess
import threading
import time

from conftest import free_port, mqd_bin
from test_cluster import PATIENCE, view, wait_for_exit, wait_for_leader
from test_persistence import drain_mc

ADMIN_MARKER = b"\xff\xff\xff\xfd"


class Group:
    """Members started with `--node N --cluster <spec>` on loopback, each keeping the
    `--cluster` it was started with (a restart reuses it)."""

    def __init__(self, make_server, size=3, tick_ms=None):
        self.make_server = make_server
        self.tick_ms = tick_ms
        self.raft = {i + 1: f"127.0.0.1:{free_port()}" for i in range(size)}
        self.servers = {}
        spec = self.spec(self.raft)
        for node in self.raft:
            self.servers[node] = self.start(node, spec)

    @staticmethod
    def spec(raft):
        return ",".join(f"{i}={a}" for i, a in sorted(raft.items()))

    def start(self, node, spec, join=False):
        args = ["--node", str(node), "--cluster", spec]
        if join:
            args.append("--join")
        if self.tick_ms is not None:
            args += ["--raft-tick-ms", str(self.tick_ms)]
        return self.make_server(args=args, prime_wal=False)

    def join(self, node):
        """A new node on an empty directory, with `--join` and every member in `--cluster`."""
        self.raft[node] = f"127.0.0.1:{free_port()}"
        self.servers[node] = self.start(node, self.spec(self.raft), join=True)
        return self.servers[node]

    def client(self, node):
        """Member `node`'s client address, where `mqd cluster` talks by default."""
        return f"127.0.0.1:{self.servers[node].port}"

    def alive(self, exclude=()):
        return [s for n, s in self.servers.items() if n not in exclude and s.alive()]

    def leader(self, exclude=()):
        leader, _ = wait_for_leader(self.alive(exclude))
        return leader


def cli(*args, timeout=PATIENCE * 6):
    """`mqd cluster ARGS`: (exit status, stdout, stderr)."""
    done = subprocess.run(
        [mqd_bin(), "cluster", *args], capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout, done.stderr


def admin(raft_addr, line, timeout=PATIENCE * 4):
    """One request line on an admin connection (cluster.md 7.1): the reply lines."""
    host, port = raft_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(ADMIN_MARKER + line + b"\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            assert chunk, f"closed after {data!r}"
            data += chunk
            lines = data.decode().split("\r\n")
            done = lines[-2] if len(lines) >= 2 else ""
            if done == "END" or done.startswith(("SERVER_ERROR", "CLIENT_ERROR", "ERROR")):
                return lines[:-1]


def members(raft_addr):
    """`cluster status` on the wire: {id: (role, matched, lag)} and the other fields."""
    lines = admin(raft_addr, b"cluster status")
    assert lines[-1] == "END", lines
    found, fields = {}, {}
    for line in lines[:-1]:
        words = line.split(" ")
        if words[0] == "MEMBER":
            found[int(words[1])] = (words[2], words[3], words[4], words[5])
        else:
            fields[words[0]] = int(words[1])
    return found, fields


def wait_members(raft_addr, want, timeout=PATIENCE):
    """Waits until the leader (asked through `raft_addr`) shows exactly `want` ({id: role})."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found, fields = members(raft_addr)
            if {i: m[1] for i, m in found.items()} == want and fields["LEADER"]:
                return found, fields
        except (OSError, AssertionError) as e:
            found = e
        assert time.monotonic() < deadline, f"membership {found}, wanted {want}"
        time.sleep(0.1)


def write(server, queue, bodies):
    """Sets each body through `server` (a member: forwarded if it does not lead), asking again
    while the answer is `no leader` (an election, or a leader not established yet: nothing was
    done, cluster.md 3)."""
    deadline = time.monotonic() + PATIENCE
    with server.mc() as c:
        for body in bodies:
            while True:
                reply = c.set(queue, body)
                if reply != b"SERVER_ERROR no leader\r\n" or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert reply == b"STORED\r\n", (body, reply)


def drain(server, queue):
    with server.mc() as c:
        return drain_mc(c, queue)


def stats(server):
    with server.mc() as c:
        return c.stats()


def test_a_joined_node_catches_up_as_a_learner_then_votes_and_holds_every_message(make_server):
    group = Group(make_server)
    leader = group.leader()
    first = [b"before-%d" % i for i in range(200)]
    write(group.servers[leader], "q", first)

    new = group.join(4)
    assert stats(new)["cluster_voters"] == "0", "a joining node has no membership yet"
    follower = next(n for n in (1, 2, 3) if n != leader)
    status, out, err = cli("add", "4", group.raft[4], "--addr", group.client(follower))
    assert status == 0, (out, err)
    assert "node 4 added: a voter now" in out, out
    table = {line.split()[0]: line.split() for line in out.splitlines()[2:-1]}
    assert table["4"][1:3] == [group.raft[4], "voter"], out

    # Every member knows the four voters (the new one learned them from a snapshot or the log).
    for server in group.servers.values():
        deadline = time.monotonic() + PATIENCE
        while stats(server)["cluster_voters"] != "4":
            assert time.monotonic() < deadline, stats(server)
            time.sleep(0.05)
    found, fields = wait_members(group.raft[4], {1: "voter", 2: "voter", 3: "voter", 4: "voter"})
    assert fields["LEADER"] == leader and fields["NODE"] == leader, (found, fields)

    # Writes after the change go through the new member too (it forwards to the leader) and
    # are committed with it as a voter.
    second = [b"after-%d" % i for i in range(50)]
    write(new, "q", second)

    # The new node holds every message: its directory, opened alone, serves all of them.
    commit = view(group.servers[leader])["commit"]
    deadline = time.monotonic() + PATIENCE
    while view(new)["commit"] < commit:
        assert time.monotonic() < deadline, (view(new), commit)
        time.sleep(0.05)
    time.sleep(0.5)  # applied right after it learns the commit
    assert new.stop() == 0
    alone = make_server(start=False, prime_wal=False)
    shutil.copytree(new.data_dir, alone.data_dir, dirs_exist_ok=True)
    alone.start()
    assert drain(alone, "q") == first + second
    alone.stop()

    # And the group, four voters, one stopped, still commits (3 of 4).
    write(group.servers[leader], "q", [b"three-of-four"])
    new.start()
    assert drain(group.servers[1], "q") == first + second + [b"three-of-four"]


def test_a_removed_member_stops_the_rest_serve_and_restarts_keep_the_membership(make_server):
    group = Group(make_server)
    leader = group.leader()
    write(group.servers[leader], "q", [b"a-%d" % i for i in range(100)])
    group.join(4)
    status, out, err = cli("add", "4", group.raft[4], "--addr", group.client(leader))
    assert status == 0, (out, err)

    # Remove a follower, through itself: once it applies its removal it stops as on SIGTERM
    # (status 0: a supervisor leaves it stopped); the other three keep serving.
    gone = next(n for n in (1, 2, 3) if n != leader)
    removed = group.servers[gone]
    log_from = removed.log_path.stat().st_size
    status, out, err = cli("remove", str(gone), "--addr", group.raft[gone], "--peer")
    assert status == 0, (out, err)
    assert f"node {gone} removed" in out
    rest = [n for n in (1, 2, 3, 4) if n != gone]
    wait_members(group.raft[leader], {n: "voter" for n in rest})
    assert wait_for_exit(removed) == 0, removed.log_tail()
    log = removed.log_path.read_bytes()[log_from:]
    assert b"was removed from the group by the membership change at index" in log, log[-2000:]
    assert b"stopped" in log
    write(group.servers[rest[0]], "q", [b"b-%d" % i for i in range(100)])
    assert stats(group.servers[leader])["cluster_voters"] == "3"

    # Started again on its directory, it refuses: its data is no member's any more.
    removed.start(wait=False)
    assert wait_for_exit(removed) == 1, removed.log_tail()
    assert f"node {gone} was removed from the group".encode() in removed.log_path.read_bytes()

    # The group of three elects without it: the leader killed, the other two elect one.
    group.servers[leader].kill()
    survivors = [n for n in rest if n != leader]
    new_leader, _ = wait_for_leader([group.servers[n] for n in survivors])
    assert new_leader in survivors
    group.servers[leader].start()
    write(group.servers[new_leader], "q", [b"c-%d" % i for i in range(10)])

    # A restart of every member, each with the `--cluster` it was started with (the founders'
    # list node 4 in none, node 4's lists the removed one): the stored membership wins.
    for n in rest:
        assert group.servers[n].stop() == 0
    for n in rest:
        group.servers[n].start()
    found, _ = wait_members(group.raft[rest[0]], {n: "voter" for n in rest})
    assert {n: found[n][0] for n in rest} == {n: group.raft[n] for n in rest}
    assert drain(group.servers[rest[1]], "q") == (
        [b"a-%d" % i for i in range(100)] + [b"b-%d" % i for i in range(100)]
        + [b"c-%d" % i for i in range(10)])



class Producer(threading.Thread):
    """Sets numbered messages through one member until stopped, reconnecting after an error;
    remembers which were acknowledged (`STORED`)."""

    def __init__(self, server, queue):
        super().__init__(daemon=True)
        self.server, self.queue = server, queue
        self.acked, self.unknown, self.errors = [], [], 0
        self.halt = threading.Event()

    def run(self):
        n = 0
        while not self.halt.is_set():
            try:
                with self.server.mc(timeout=PATIENCE) as c:
                    while not self.halt.is_set():
                        body = b"m-%d" % n
                        n += 1
                        try:
                            reply = c.set(self.queue, body)
                        except (OSError, AssertionError):
                            self.unknown.append(body)
                            raise
                        if reply == b"STORED\r\n":
                            self.acked.append(body)
                        else:
                            self.errors += 1
                            time.sleep(0.05)
            except (OSError, AssertionError):
                self.errors += 1
                time.sleep(0.05)


def test_a_dead_member_is_replaced_while_a_producer_writes_and_nothing_acknowledged_is_lost(
        make_server):
    group = Group(make_server)
    leader = group.leader()
    dead = next(n for n in (1, 2, 3) if n != leader)
    alive = [n for n in (1, 2, 3) if n != dead]
    producer = Producer(group.servers[alive[0]], "q")
    producer.start()
    time.sleep(0.5)
    group.servers[dead].kill()

    # The new member first, as a learner that becomes a voter (4 voters, 3 alive: a majority),
    # then the dead one out: the group never has fewer live voters than a majority.
    group.join(5)

    def acked_more_since(count):
        """The producer's writes are acknowledged again after `count`: the group serves."""
        deadline = time.monotonic() + PATIENCE
        while len(producer.acked) <= count + 5:
            assert time.monotonic() < deadline, (count, len(producer.acked), producer.errors)
            time.sleep(0.02)
        return len(producer.acked)

    served = acked_more_since(len(producer.acked))
    status, out, err = cli("add", "5", group.raft[5], "--addr", group.client(alive[1]))
    assert status == 0, (out, err)
    served = acked_more_since(served)
    status, out, err = cli("remove", str(dead), "--addr", group.client(alive[1]))
    assert status == 0, (out, err)
    wait_members(group.raft[5], {alive[0]: "voter", alive[1]: "voter", 5: "voter"})
    served = acked_more_since(served)

    # The dead member comes back on its directory, believing it is one (it never applied its
    # removal): the members it campaigns to say so, and it stops as a removed member does
    # (exit status 0: a supervisor leaves it stopped), while the group goes on serving.
    revenant = group.servers[dead]
    log_from = revenant.log_path.stat().st_size
    revenant.start(wait=False)
    assert wait_for_exit(revenant) == 0, revenant.log_tail()
    log = revenant.log_path.read_bytes()[log_from:]
    assert b"which removed node %d while it was down" % dead in log, log[-3000:]
    assert b"was removed from the group by the membership change at index" in log
    acked_more_since(served)
    producer.halt.set()
    producer.join(PATIENCE)
    assert len(producer.acked) > 20, (len(producer.acked), producer.errors)

    # One of the two old members down: the new one makes the majority, and every acknowledged
    # message is there, in order.
    group.servers[alive[0]].kill()
    group.leader(exclude=(dead, alive[0]))
    got = drain(group.servers[5], "q")
    acked = set(producer.acked)
    kept = [b for b in got if b in acked]
    assert kept == producer.acked, "acknowledged messages lost or reordered"
    assert set(got) <= acked | set(producer.unknown)


def test_changes_are_refused_with_a_reason_one_at_a_time(make_server):
    group = Group(make_server)
    leader = group.leader()
    addr, client = group.raft[leader], group.client(leader)
    # Unknown command, bad lines, an unknown id, an existing id, a taken address.
    assert admin(addr, b"cluster")[-1].startswith("CLIENT_ERROR usage: ")
    assert admin(addr, b"bogus") == ["ERROR"]
    assert admin(addr, b"cluster add 0 127.0.0.1:1")[-1].startswith("CLIENT_ERROR ")
    assert admin(addr, b"cluster add 4 nowhere")[-1].startswith("CLIENT_ERROR ")
    status, out, err = cli("remove", "9", "--addr", client)
    assert status == 1 and "CLIENT_ERROR node 9 is not a member" in err, (out, err)
    status, out, err = cli("add", "2", "127.0.0.1:1", "--addr", client)
    assert status == 1 and "CLIENT_ERROR node 2 is already a member" in err, (out, err)
    status, out, err = cli("add", "4", group.raft[1], "--addr", addr, "--peer")
    assert status == 1 and "CLIENT_ERROR " in err and "node 1's address" in err, (out, err)

    # A node that never starts stays a learner: the add times out, and a second change is
    # refused while the first waits, and after it while the learner is there.
    nowhere = f"127.0.0.1:{free_port()}"
    waiting = {}

    def add_nowhere():
        waiting["result"] = cli("add", "4", nowhere, "--addr", client, "--wait", "8")

    adding = threading.Thread(target=add_nowhere)
    adding.start()
    deadline = time.monotonic() + PATIENCE
    while members(addr)[0].get(4, (None, None))[1] != "learner":
        assert time.monotonic() < deadline, members(addr)
        time.sleep(0.02)
    follower = next(n for n in (1, 2, 3) if n != leader)
    reply = admin(addr, b"cluster remove %d" % follower)
    assert reply == ["SERVER_ERROR busy: a change is under way (adding node 4)"], reply
    adding.join(PATIENCE * 2)
    status, out, err = waiting["result"]
    assert status == 1 and "SERVER_ERROR timeout: node 4 is not a voter yet" in err, (out, err)
    found, _ = members(addr)
    assert found[4][:2] == (nowhere, "learner"), found
    status, out, err = cli("add", "5", f"127.0.0.1:{free_port()}", "--addr", client)
    assert status == 1 and "SERVER_ERROR busy: node 4 is a learner" in err, (out, err)
    # Giving up on it: removing the learner is allowed.
    status, out, err = cli("remove", "4", "--addr", client)
    assert status == 0, (out, err)
    wait_members(addr, {1: "voter", 2: "voter", 3: "voter"})

    # Removing the leader itself: it hands the leadership on, and the CLI asks again.
    status, out, err = cli("remove", str(leader), "--addr", client)
    assert status == 0, (out, err)
    # Having applied its removal, the old leader stops by itself.
    assert wait_for_exit(group.servers[leader]) == 0, group.servers[leader].log_tail()
    rest = [n for n in (1, 2, 3) if n != leader]
    found, fields = wait_members(group.raft[rest[0]], {n: "voter" for n in rest})
    assert fields["LEADER"] in rest
    write(group.servers[rest[1]], "q", [b"still serving"])


def test_a_node_started_without_join_is_refused_by_the_group_it_would_corrupt(make_server):
    # A group seeded with a single server's queues (cluster.md 5): the other two joined.
    seed = make_server(prime_wal=False)
    seeded = [b"s%d" % i for i in range(50)]
    write(seed, "q", seeded)
    seed.stop()
    raft = {i: f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
    seed.args = ["--node", "1", "--cluster", Group.spec(raft)]
    seed.start()
    servers = [seed] + [
        make_server(args=["--node", str(i), "--cluster", Group.spec(raft), "--join"],
                    prime_wal=False)
        for i in (2, 3)]
    leader, _ = wait_for_leader(servers)
    later = [b"t%d" % i for i in range(20)]
    write(seed, "q", later)

    # A fourth node started as a founder by mistake (no --join): its state at the founders'
    # starting point lacks the seeded queues, and log matching alone would take it for the
    # group's (the log still starts at index 2). Its group's number differs: every connection
    # between it and the group is refused, so the add never completes.
    raft[4] = f"127.0.0.1:{free_port()}"
    wrong = make_server(args=["--node", "4", "--cluster", Group.spec(raft)], prime_wal=False)
    client = f"127.0.0.1:{servers[leader - 1].port}"
    status, out, err = cli("add", "4", raft[4], "--addr", client, "--wait", "3")
    assert status == 1 and "SERVER_ERROR timeout: node 4 is not a voter yet" in err, (out, err)
    refused = b"belongs to another group"
    assert refused in wrong.log_path.read_bytes(), wrong.log_tail()
    assert any(refused in s.log_path.read_bytes() for s in servers)
    found, _ = members(raft[leader])
    assert found[4][1] == "learner" and found[4][2] == "0", found

    # Given up on, stopped, emptied and started with --join, it takes the group's copy.
    status, out, err = cli("remove", "4", "--addr", client)
    assert status == 0, (out, err)
    assert wrong.stop() == 0
    shutil.rmtree(wrong.data_dir)
    wrong.args = wrong.args + ["--join"]
    wrong.start()
    status, out, err = cli("add", "4", raft[4], "--addr", client)
    assert status == 0, (out, err)
    wait_members(raft[leader], {1: "voter", 2: "voter", 3: "voter", 4: "voter"})
    assert drain(wrong, "q") == seeded + later


def test_cluster_lines_on_the_client_port_of_any_member_and_a_single_server(make_server):
    group = Group(make_server)
    leader = group.leader()
    follower = next(n for n in (1, 2, 3) if n != leader)
    # A follower's client port: a memcache text `cluster status` is answered by the leader
    # (its progress figures), as on the admin connection; later lines on that connection too.
    with group.servers[follower].mc() as c:
        c.send(b"cluster status\r\n")
        lines = []
        while not lines or lines[-1] != b"END\r\n":
            lines.append(c.read_line())
        assert lines[0].startswith(b"MEMBER 1 " + group.raft[1].encode() + b" voter ")
        assert b"LEADER %d\r\n" % leader in lines and b"NODE %d\r\n" % leader in lines
        assert b" - " not in b"".join(lines), "the leader's figures"
        c.send(b"cluster remove 9\r\n")
        assert c.read_line() == b"CLIENT_ERROR node 9 is not a member\r\n"
    # The CLI through a follower's client port, as an operator runs it.
    status, out, err = cli("status", "--addr", group.client(follower))
    assert status == 0, (out, err)
    assert out.splitlines()[0].split() == ["NODE", "ADDRESS", "ROLE", "MATCHED", "LAG"]
    assert f"leader {leader}, term " in out and f"(as node {leader} sees it)" in out
    # A single server has no membership.
    single = make_server(prime_wal=False)
    with single.mc() as c:
        assert c.cmd(b"cluster status") == b"ERROR\r\n"
        assert c.cmd(b"version").startswith(b"VERSION ")
    status, out, err = cli("status", "--addr", f"127.0.0.1:{single.port}")
    assert status == 1 and "ERROR" in err, (out, err)
