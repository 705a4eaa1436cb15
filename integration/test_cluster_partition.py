"""A network partition of the leader, tested as Jepsen would (issue 22), short enough for CI.

Three `mqd serve --cluster` members, each in its own network namespace, joined by two networks:
a peer network that carries raft and forwarding (the `--cluster` addresses), and a client network
(the `--listen` addresses) that this process reaches. Producers write through every member while
the leader's peer link is taken down: its peers cannot reach it, its clients still can. That is
the split-brain case a kill or a SIGSTOP does not test: an old leader that keeps running, keeps
its clients and still believes it leads.

What must hold (protocol-spec/cluster.md 2, 3.1, 4): the cut-off leader steps down within an
election timeout and keeps running; it acknowledges nothing sent to it after the cut (a write
it cannot replicate is never committed); the majority elects a new leader and serves again; once
the link is back the old leader follows the new one, in its term. Then a checker reads the queue
back through the leader: every acknowledged write is there (an acknowledgement the log does not
hold is a split-brain acknowledgement, listed), each producer's messages in the order it sent
them, duplicates only of writes whose outcome the producer could not know, and nothing that was
only ever refused with `no leader`. A second test feeds the checker made-up histories (a
split-brain acknowledgement, a lost one, reordering, a duplicate) to show it fails on each.

No firewall is needed: the partition is `ip link set down` on the leader's peer veth, inside its
namespace. The test skips where it cannot build namespaces (not root, no `ip`, no netns).
"""

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from test_cluster import NO_LEADER, PATIENCE, STEP_DOWN_LIMIT, agreed_leader, view, wait_for_leader

SIZE = 3
RAFT_PORT = 7700
QUEUE = b"q"
STORED = b"STORED\r\n"
ELECTION_LIMIT = 3.0
# A producer that has no reply within this many seconds gives the write up as unknown, closes the
# connection and sends the same message again on a new one. Longer than the 10 s after which the
# kernel ends a pipe to a leader that went silent (TCP_USER_TIMEOUT), so that the producers going
# through a follower are served again only if the follower itself drops its pipes to the cut-off
# leader when it learns of the new one (`SERVED_AGAIN_LIMIT`).
REPLY_TIMEOUT = 15.0
# From the cut to the first acknowledgement on every producer of the majority side: the
# election, then the followers' clients reconnecting to be forwarded to the new leader.
SERVED_AGAIN_LIMIT = 5.0
WARM_UP_ACKS = 20
ACKS_PER_PHASE = 10


# --------------------------------------------------------------------------------------------
# The network: a namespace per node, a peer network and a client network
# --------------------------------------------------------------------------------------------


class NetworkSetupError(Exception):
    pass


def ip(*args):
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NetworkSetupError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def unused_octet():
    """A third octet x such that neither 10.201.x.0/24 nor 10.202.x.0/24 is routed here yet."""
    routes = ip("-4", "route", "show", "table", "all") + ip("-4", "-o", "addr", "show")
    start = os.getpid() % 250
    for x in [(start + k) % 250 for k in range(250)]:
        if f"10.201.{x}." not in routes and f"10.202.{x}." not in routes:
            return x
    raise NetworkSetupError("every 10.201.x.0/24 and 10.202.x.0/24 is in use")


class LinkedNamespaces:
    """Node i (from 1) runs in namespace `mqdp<pid>n<i>`, which has two veths: `peer`
    (10.201.x.i, on bridge `mqdp<pid>bp`, which the root namespace has no address on) and
    `client` (10.202.x.i, on bridge `mqdp<pid>bc`, where the root namespace is 10.202.x.254).
    Names carry this process's id, so runs side by side never meet."""

    def __init__(self, size):
        tag = f"mqdp{os.getpid()}"
        self.size = size
        self.namespaces = [f"{tag}n{i}" for i in range(1, size + 1)]
        self.bridges = {"peer": f"{tag}bp", "client": f"{tag}bc"}
        self.root_ends = {(kind, i): f"{tag}{kind[0]}{i}" for kind in self.bridges
                          for i in range(1, size + 1)}
        self.created = []  # what destroy() removes: ("netns", name) or ("link", name)
        self.peer_net = self.client_net = None

    def peer_address(self, node):
        return f"{self.peer_net}.{node}"

    def client_address(self, node):
        return f"{self.client_net}.{node}"

    def wrapper(self, node):
        """The command that runs a program in node's namespace (it execs: same pid)."""
        return ["ip", "netns", "exec", self.namespaces[node - 1]]

    def cut(self, node):
        """Node's peer link down: raft and forwarding to and from it stop; clients reach it."""
        ip("-n", self.namespaces[node - 1], "link", "set", "peer", "down")

    def heal(self, node):
        ip("-n", self.namespaces[node - 1], "link", "set", "peer", "up")

    def create(self):
        octet = unused_octet()
        self.peer_net, self.client_net = f"10.201.{octet}", f"10.202.{octet}"
        for bridge in self.bridges.values():
            ip("link", "add", bridge, "type", "bridge")
            self.created.append(("link", bridge))
            ip("link", "set", bridge, "up")
        ip("addr", "add", f"{self.client_net}.254/24", "dev", self.bridges["client"])
        for node, ns in enumerate(self.namespaces, 1):
            ip("netns", "add", ns)
            self.created.append(("netns", ns))
            ip("-n", ns, "link", "set", "lo", "up")
            for kind, net in (("peer", self.peer_net), ("client", self.client_net)):
                root_end = self.root_ends[(kind, node)]
                ip("link", "add", root_end, "type", "veth", "peer", "name", kind, "netns", ns)
                self.created.append(("link", root_end))
                ip("link", "set", root_end, "master", self.bridges[kind], "up")
                ip("-n", ns, "addr", "add", f"{net}.{node}/24", "dev", kind)
                ip("-n", ns, "link", "set", kind, "up")
            subprocess.run(self.wrapper(node) + ["true"], check=True, capture_output=True)

    def destroy(self):
        """Kills whatever still runs in the namespaces (the servers are stopped before), then
        removes every link and namespace made, newest first; carries on past errors."""
        for kind, name in self.created:
            if kind == "netns":
                pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
                for pid in pids.stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
        for kind, name in reversed(self.created):
            what = ["netns", "del"] if kind == "netns" else ["link", "del"]
            subprocess.run(["ip", *what, name], capture_output=True)
        self.created = []


@pytest.fixture
def network():
    if os.geteuid() != 0:
        pytest.skip("building network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed")
    net = LinkedNamespaces(SIZE)
    try:
        net.create()
    except (NetworkSetupError, subprocess.CalledProcessError, OSError) as e:
        net.destroy()
        pytest.skip(f"cannot build network namespaces here: {e}")
    try:
        yield net
    finally:
        net.destroy()


@pytest.fixture
def nodes(network, make_server):
    """Three members, node i in namespace i. Listed after `network`, make_server stops them
    before the namespaces go."""
    spec = ",".join(f"{i}={network.peer_address(i)}:{RAFT_PORT}" for i in range(1, SIZE + 1))
    return [
        make_server(args=["--node", str(i), "--cluster", spec], prime_wal=False,
                    host=network.client_address(i), wrapper=network.wrapper(i))
        for i in range(1, SIZE + 1)
    ]


# --------------------------------------------------------------------------------------------
# Producers: every attempt and its outcome
# --------------------------------------------------------------------------------------------


def message_body(producer, seq):
    return b"p%d-%06d" % (producer, seq)


def parse_body(body):
    producer, seq = body[1:].split(b"-")
    return int(producer), int(seq)


@dataclass
class Attempt:
    producer: int
    seq: int
    node: int  # the member the producer's connection goes to
    sent: float  # time.monotonic() before sending
    answered: float  # when the outcome was known
    outcome: str  # "ack" (STORED), "refused" (no leader: nothing done), "unknown", "unexpected"
    detail: str = ""

    @property
    def body(self):
        return message_body(self.producer, self.seq)

    def __repr__(self):
        detail = f" {self.detail}" if self.detail else ""
        return (f"<{self.body.decode()} via node {self.node}: {self.outcome}{detail}, "
                f"sent at {self.sent:.3f}, answered at {self.answered:.3f}>")


class Producer(threading.Thread):
    """Sets `p<producer>-<seq>` on one member, one at a time, seq from 0. A message is sent again
    (same body) until acknowledged: after `no leader` on the same connection, after a closed
    connection or no reply on a new one; then the next seq."""

    def __init__(self, producer, node, server, halt):
        super().__init__(name=f"producer-{producer}", daemon=True)
        self.producer, self.node, self.server, self.halt = producer, node, server, halt
        self.attempts = []
        self.failure = None

    def run(self):
        try:
            self.produce()
        except BaseException as e:  # noqa: BLE001 -- reported by the test, not lost in a thread
            self.failure = e

    def produce(self):
        seq, conn = 0, None
        while not self.halt.is_set():
            if conn is None:
                try:
                    conn = self.server.mc(timeout=REPLY_TIMEOUT)
                except OSError:
                    time.sleep(0.05)
                    continue
            sent = time.monotonic()
            try:
                reply = conn.set(QUEUE, message_body(self.producer, seq))
            except OSError as e:
                self.record(seq, sent, "unknown", type(e).__name__)
                conn.close()
                conn = None
                time.sleep(0.02)
                continue
            if reply == STORED:
                self.record(seq, sent, "ack")
                seq += 1
            elif reply == NO_LEADER:
                self.record(seq, sent, "refused")
                time.sleep(0.02)
            else:
                self.record(seq, sent, "unexpected", repr(reply))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def record(self, seq, sent, outcome, detail=""):
        self.attempts.append(
            Attempt(self.producer, seq, self.node, sent, time.monotonic(), outcome, detail))

    def acks_sent_after(self, moment):
        return [a for a in list(self.attempts) if a.outcome == "ack" and a.sent > moment]


class CutOffWrites:
    """Writes sent to the cut-off leader while it still says it leads, each on a connection of
    its own as producer `producer`, without waiting for the reply (it comes, if ever, once the
    leader steps down); `outcomes()` reads the replies then."""

    def __init__(self, producer, node, server):
        self.producer, self.node, self.server = producer, node, server
        self.pending = []

    def send_one(self):
        seq = len(self.pending)
        conn = self.server.mc(timeout=REPLY_TIMEOUT)
        sent = time.monotonic()
        body = message_body(self.producer, seq)
        conn.send(b"set %s 0 0 %d\r\n%s\r\n" % (QUEUE, len(body), body))
        self.pending.append((seq, sent, conn))

    def outcomes(self):
        attempts = []
        deadline = time.monotonic() + REPLY_TIMEOUT
        for seq, sent, conn in self.pending:
            try:
                reply = conn.read_line(timeout=max(0.1, deadline - time.monotonic()))
                outcome = {STORED: "ack", NO_LEADER: "refused"}.get(reply, "unexpected")
                detail = "" if outcome != "unexpected" else repr(reply)
            except OSError as e:
                outcome, detail = "unknown", type(e).__name__
            finally:
                conn.close()
            attempts.append(
                Attempt(self.producer, seq, self.node, sent, time.monotonic(), outcome, detail))
        return attempts


def drain_reliably(servers):
    """Every message of QUEUE, oldest first, read through the leader with `/close/open` (each
    read confirms the one before), so that a connection closed by a leader change under load
    loses none: the message then held open is given back to the head and may come again first,
    and is counted once."""
    got, again, conn = [], None, None
    deadline = time.monotonic() + PATIENCE
    while True:
        assert time.monotonic() < deadline, f"draining did not end: {len(got)} read"
        try:
            if conn is None:
                leader, _ = wait_for_leader(servers)
                conn = servers[leader - 1].mc()
            line = conn.cmd(b"get " + QUEUE + b"/close/open")
            if line == NO_LEADER:
                time.sleep(0.02)
                continue
            if line == b"END\r\n":
                conn.close()
                return got
            parts = line.split()
            assert parts[0] == b"VALUE", line
            body = conn.read_exactly(int(parts[3]) + 2)[:-2]
            assert conn.read_line() == b"END\r\n"
        except OSError:
            if conn is not None:
                conn.close()
            conn, again = None, got[-1] if got else None
            continue
        if body != again:
            got.append(body)
        again = None


def wait_until(condition, what, timeout=PATIENCE, interval=0.02):
    """Polls `condition()` until truthy; returns (value, seconds taken). `what()` describes the
    state for the failure message."""
    started = time.monotonic()
    while not (value := condition()):
        assert time.monotonic() - started < timeout, f"{what()} after {timeout} s"
        time.sleep(interval)
    return value, time.monotonic() - started


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------


def check_history(attempts, delivered, cut_node, cut_at, healed_at):
    """Checks what producers were told against what the queue gave back (`delivered`, in order).
    Returns counts; raises AssertionError listing every violation."""
    by_body = {}
    for a in attempts:
        by_body.setdefault(a.body, []).append(a)
    acked = {body for body, tries in by_body.items() if any(a.outcome == "ack" for a in tries)}
    unknown = {body: sum(a.outcome == "unknown" for a in tries) for body, tries in by_body.items()}
    copies = {}
    for body in delivered:
        copies[body] = copies.get(body, 0) + 1
    problems = []

    unexpected = [a for a in attempts if a.outcome == "unexpected"]
    if unexpected:
        problems.append(f"replies neither STORED nor `no leader`: {unexpected[:10]}")
    # The cut-off member cannot have replicated anything sent to it after the cut: until the
    # link is back, an acknowledgement there (its own or forwarded) is one no majority holds.
    cut_off_acks = [a for a in attempts if a.node == cut_node and a.outcome == "ack"
                    and cut_at < a.sent < healed_at]
    if cut_off_acks:
        problems.append(f"the cut-off leader acknowledged {len(cut_off_acks)} writes sent after "
                        f"the partition: {cut_off_acks[:10]}")
    # Nor can such a write be committed, whatever the reply: a body sent nowhere else is never
    # delivered.
    stranded = {body for body, tries in by_body.items()
                if all(a.node == cut_node and cut_at < a.sent < healed_at for a in tries)}
    committed_stranded = sorted(body for body in copies if body in stranded)
    if committed_stranded:
        problems.append(f"delivered though only ever sent to the cut-off leader while cut off: "
                        f"{committed_stranded[:20]}")
    lost = [a for a in attempts if a.outcome == "ack" and a.body not in copies]
    split_brain = [a for a in lost if a.node == cut_node]
    if split_brain:
        problems.append(f"split-brain acknowledgements (STORED by the cut-off member, not in the "
                        f"log): {split_brain[:20]}")
    if len(lost) > len(split_brain):
        problems.append(f"acknowledged writes lost: {[a for a in lost if a.node != cut_node][:20]}")
    phantoms = sorted(body for body in copies if body not in by_body)
    if phantoms:
        problems.append(f"delivered but never sent: {phantoms[:20]}")
    only_refused = sorted(body for body in copies if body in by_body and body not in acked
                          and not unknown[body])
    if only_refused:
        problems.append(f"delivered though only ever refused with `no leader`: {only_refused[:20]}")
    # Each acknowledged attempt and each of unknown outcome may have been committed, no other.
    committable = {body: sum(a.outcome in ("ack", "unknown") for a in tries)
                   for body, tries in by_body.items()}
    bad_duplicates = sorted(body for body, n in copies.items()
                            if n > 1 and n > committable.get(body, 0))
    if bad_duplicates:
        problems.append(f"delivered more often than acknowledged or sent with an unknown outcome "
                        f"(body, copies, attempts that may have committed): "
                        f"{[(b, copies[b], committable.get(b, 0)) for b in bad_duplicates[:20]]}")
    # Per producer, first deliveries in the order sent (a message is sent only once the one
    # before it is acknowledged, so a late copy of an unknown write may come later, as a
    # duplicate, never first).
    last_seq, seen, out_of_order = {}, set(), []
    for body in delivered:
        if body in seen or body not in by_body:
            continue
        seen.add(body)
        producer, seq = parse_body(body)
        if seq <= last_seq.get(producer, -1):
            out_of_order.append((body, last_seq[producer]))
        last_seq[producer] = seq
    if out_of_order:
        problems.append(f"out of order (body, seq delivered before it): {out_of_order[:20]}")

    assert not problems, "\n".join(problems)
    return {
        "acknowledged": len(acked),
        "delivered": len(delivered),
        "unknown-outcome": sum(unknown.values()),
        "refused": sum(a.outcome == "refused" for a in attempts),
        "duplicates": len(delivered) - len(copies),
    }


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


def test_a_partitioned_leader_steps_down_and_acknowledges_nothing_the_majority_lacks(
    nodes, network
):
    wait_for_leader(nodes)
    halt = threading.Event()
    producers = [Producer(i, i, server, halt) for i, server in enumerate(nodes, 1)]
    for p in producers:
        p.start()
    figures = {}
    try:
        def acks_since(moment, who):
            return lambda: all(len(p.acks_sent_after(moment)) >= ACKS_PER_PHASE for p in who)

        def progress():
            acks = [sum(a.outcome == "ack" for a in p.attempts) for p in producers]
            return f"acknowledgements per producer: {acks}"

        wait_until(lambda: all(len(p.acks_sent_after(float("-inf"))) >= WARM_UP_ACKS
                               for p in producers),
                   lambda: f"producers not served before the partition ({progress()})")

        # The leader now (it may have changed under load), cut off from its peers.
        leader, views = wait_for_leader(nodes)
        term = next(v["term"] for v in views if v["node"] == leader)
        old = nodes[leader - 1]
        majority = [s for s in nodes if s is not old]
        majority_producers = [p for p in producers if p.node != leader]
        # The producer on the old leader has one write in flight at a time, stuck once cut off:
        # fresh writes go to it too while it still says it leads.
        cut_off_writes = CutOffWrites(SIZE + 1, leader, old)
        network.cut(leader)
        cut_at = time.monotonic()
        try:
            stepped_down = elected = None
            deadline = cut_at + PATIENCE
            while stepped_down is None or elected is None:
                now = time.monotonic()
                assert now < deadline, (f"after {PATIENCE} s: stepped down {stepped_down}, "
                                        f"elected {elected}; {[view(s) for s in nodes]}")
                if stepped_down is None and view(old)["role"] != "leader":
                    stepped_down = time.monotonic() - cut_at
                elif stepped_down is None:
                    cut_off_writes.send_one()
                if elected is None:
                    new_leader, new_views = agreed_leader(majority)
                    if new_leader is not None:
                        elected = time.monotonic() - cut_at
                time.sleep(0.02)
            assert old.alive(), "the cut-off leader exited instead of stepping down"
            new_term = new_views[0]["term"]
            assert new_term > term, new_views
            figures["step-down s"] = stepped_down
            figures["election s"] = elected
            # The majority's producers are served again, by the new leader.
            wait_until(acks_since(cut_at, majority_producers),
                       lambda: f"the majority did not serve again ({progress()})")
            figures["served again s"] = max(
                p.acks_sent_after(cut_at)[0].answered - cut_at for p in majority_producers)
        finally:
            network.heal(leader)
            healed_at = time.monotonic()

        # The old leader follows the new one, in its term, and its producer is served through it.
        def rejoined():
            now_leader, views_now = agreed_leader(nodes)
            return now_leader == new_leader and all(v["term"] == new_term for v in views_now)

        _, figures["rejoin s"] = wait_until(
            rejoined, lambda: f"the old leader did not rejoin: {[view(s) for s in nodes]}")
        wait_until(acks_since(healed_at, producers),
                   lambda: f"producers not all served after healing ({progress()})")
    finally:
        halt.set()
        for p in producers:
            p.join(timeout=REPLY_TIMEOUT + 5)
    assert not [p for p in producers if p.is_alive()], "a producer hangs"
    failures = [(p.name, p.failure) for p in producers if p.failure is not None]
    assert not failures, failures

    probes = cut_off_writes.outcomes()
    figures["fresh writes to cut-off"] = len(probes)
    figures["  closed unanswered"] = sum(a.outcome == "unknown" for a in probes)
    attempts = sorted([a for p in producers for a in p.attempts] + probes, key=lambda a: a.sent)
    old_acks = [a for a in attempts if a.node == leader and a.outcome == "ack" and a.sent < cut_at]
    figures["last old ack s"] = max(a.answered for a in old_acks) - cut_at if old_acks else None
    # The check on the cut-off member bites only if it was sent writes while cut off.
    to_cut_off = [a for a in attempts if a.node == leader and cut_at < a.sent < healed_at]
    assert to_cut_off, "nothing was sent to the cut-off leader during the partition"
    figures["writes to cut-off, all"] = len(to_cut_off)
    delivered = drain_reliably(nodes)
    counts = check_history(attempts, delivered, leader, cut_at, healed_at)
    print_table(leader, new_leader, term, new_term, figures, counts)
    print("  producers' unknown outcomes (body, node, error, sent after the cut s):",
          [(a.body.decode(), a.node, a.detail, round(a.sent - cut_at, 3))
           for a in attempts if a.outcome == "unknown" and a not in probes])
    assert figures["step-down s"] <= STEP_DOWN_LIMIT, f"stepping down took {figures}"
    assert figures["election s"] <= ELECTION_LIMIT, f"electing a new leader took {figures}"
    assert figures["served again s"] <= SERVED_AGAIN_LIMIT, f"serving again took {figures}"


def print_table(leader, new_leader, term, new_term, figures, counts):
    print(f"\npartition of leader {leader} (term {term}); "
          f"new leader {new_leader} (term {new_term})")
    rows = {**counts, **figures}
    for name, value in rows.items():
        shown = "-" if value is None else f"{value:.3f}" if isinstance(value, float) else value
        print(f"  {name:<24} {shown:>8}")


def test_the_checker_reports_a_split_brain_acknowledgement_and_lost_order():
    """The checker itself, on a made-up history: it is the only thing standing between a
    split-brain bug and a green test, so it is shown to fail."""
    def attempt(producer, seq, node, sent, outcome):
        return Attempt(producer, seq, node, sent, sent + 0.01, outcome)

    history = [attempt(1, 0, 1, 1.0, "ack"), attempt(1, 1, 1, 2.0, "unknown"),
               attempt(1, 1, 1, 2.5, "ack"), attempt(2, 0, 2, 1.0, "ack"),
               attempt(2, 1, 2, 3.0, "refused")]
    good = [b"p1-000000", b"p2-000000", b"p1-000001", b"p1-000001"]
    assert check_history(history, good, cut_node=1, cut_at=1.5, healed_at=2.2)["duplicates"] == 1

    # Node 1 was cut off from 1.5 to 2.2: a STORED from it for a write sent at 1.8 that no log
    # holds.
    fake = history + [attempt(3, 0, 1, 1.8, "ack")]
    with pytest.raises(AssertionError) as failed:
        check_history(fake, good, cut_node=1, cut_at=1.5, healed_at=2.2)
    assert "acknowledged 1 writes sent after the partition" in str(failed.value)
    assert "split-brain acknowledgements" in str(failed.value) and "p3-000000" in str(failed.value)
    for delivered, complaint in [
        ([b"p1-000001", b"p1-000000", b"p2-000000"], "out of order"),
        ([b"p1-000000", b"p1-000001"], "acknowledged writes lost"),
        (good + [b"p2-000001"], "only ever refused"),
        (good + [b"p2-000000"], "delivered more often"),
    ]:
        with pytest.raises(AssertionError, match=complaint):
            check_history(history, delivered, cut_node=1, cut_at=1.5, healed_at=2.2)
