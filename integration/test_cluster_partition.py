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
only ever refused with `no leader`. Another test feeds the checker made-up histories (a
split-brain acknowledgement, a lost one, reordering, a duplicate) to show it fails on each:
test_cluster_history.py.

No firewall is needed: the partition is `ip link set down` on the leader's peer veth, inside its
namespace. The test skips where it cannot build namespaces (not root, no `ip`, no netns).
"""

import subprocess
import threading
import time

import pytest

from cluster_history import (QUEUE, STORED, Attempt, Producer, check_history, drain_reliably,
                             message_body, wait_until)
from netns import LinkedNamespaces, NetworkSetupError, unavailable
from test_cluster import NO_LEADER, PATIENCE, STEP_DOWN_LIMIT, agreed_leader, view, wait_for_leader

SIZE = 3
RAFT_PORT = 7700
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
# The network: a namespace per node, a peer network and a client network (netns.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def network():
    if (reason := unavailable()) is not None:
        pytest.skip(reason)
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
# Writes to the cut-off leader (producers, the drain and the checker: cluster_history.py)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


def test_a_partitioned_leader_steps_down_and_acknowledges_nothing_the_majority_lacks(
    nodes, network
):
    wait_for_leader(nodes)
    halt = threading.Event()
    producers = [Producer(i, i, server, halt, reply_timeout=REPLY_TIMEOUT)
                 for i, server in enumerate(nodes, 1)]
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
    counts = check_history(attempts, delivered, cuts=[(leader, cut_at, healed_at)])
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
