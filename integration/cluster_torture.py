"""The long Jepsen-style fault loop for a three-node group (issue 22), run by scripts/cluster-torture.

Owns the group under faults and the table of figures; the namespaces come from netns.py, the
power-cut shim from powercut/, the clients and the checker from cluster_history.py.

Three `mqd serve --cluster` members, each in its own network namespace (a peer network for raft
and forwarding, a client network this process reaches) and each data directory under the
power-cut shim. For each fault kind, CYCLES times: producers write through every member (memcache
`set` and mqmq `Put`, each acknowledgement recorded with a unique body `p<producer>-<seq>`),
reliable consumers on every member open and close messages, and then the fault strikes:

- `kill`: kill -9 of the leader, restarted after DOWN_SECONDS.
- `partition`: the leader's peer link down for CUT_SECONDS, its clients still reach it (it must
  step down and acknowledge nothing sent to it meanwhile).
- `pause`: SIGSTOP of the leader for PAUSE_SECONDS, then SIGCONT.
- `power-cut`: the leader and a follower lose power at once (SIGKILL, then every write not
  fsynced is dropped), both restarted after DOWN_SECONDS.
- `wipe`: a follower killed, its data directory emptied, restarted: it must catch up from the
  leader's log.
- `bit-flip`: a follower stopped, one bit flipped in its largest RocksDB table file (`*.sst`),
  restarted; on every second cycle the leader is then killed, so that the damaged member may
  lead (unless it found the damage at once: then it cannot). A member that finds the damage (a
  read as leader, a compaction) must get its copy back from the group by itself
  (protocol-spec/cluster.md 8): it exits with status 75 once the others committed without it,
  and is started again as systemd's `Restart=on-failure` would, which empties its directory. A flip still latent at the end of the cycle is flipped back.
- `replace`: a follower removed from the group (`mqd cluster remove` through the leader: it
  stops by itself with status 0), its directory emptied, and the node added back under its id
  as a new member (`--join`, then `mqd cluster add`: a learner that catches up by snapshot, then
  a voter). The group has two voters in between. Reported: seconds from the removal asked to
  the node a voter again.

After each kind the clients stop and the queue is drained through the leader. At the end the
whole history is checked (cluster_history.examine), and each kind's messages on their own (its
producers' ids are <kind's number> * 100 + k), wherever they were read: a message lost in one
kind may come back in a later one. Failover: from the fault to the next write
acknowledged through a member the fault spared, of a write sent after the fault (for
`power-cut`, through any member: the one spared cannot commit alone).
"""

import datetime
import os
import pathlib
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import powercut
from cluster_history import Consumer, Producer, Read, drain_reliably, examine, parse_body
from conftest import Server, ServerDied
from netns import LinkedNamespaces, NetworkSetupError, unavailable
from test_cluster import agreed_leader, view

SIZE = 3
RAFT_PORT = 7700
KINDS = ["kill", "partition", "pause", "power-cut", "wipe", "bit-flip", "replace"]
FAILOVER_TARGET = 2.0
# A member that found its copy damaged exits with this once the group can do without it.
EXIT_RESYNC = 75
# How long a fault's effect may take to appear or to heal before the loop gives up on it.
PATIENCE = 60.0


def setting(name, default, kind=float):
    return kind(os.environ.get(name, default))


def mqd_cluster(*args):
    """`mqd cluster ARGS` from this process (it reaches every member's client address):
    (exit status, stdout, stderr)."""
    done = subprocess.run([os.environ["MQD_BIN"], "cluster", *args], capture_output=True,
                          text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def quarantined_at_open(server):
    """Whether `server`, since its last start, runs the quarantine of a member whose database
    RocksDB cannot open: alive, no client port (cluster.md 8)."""
    text = server.log_path.read_bytes()
    since = text[text.rfind(b"===== start #"):]
    return (server.alive() and b"cannot open" in since
            and b"takes no part in the group" in since)


class Settings:
    def __init__(self):
        self.kinds = os.environ.get("KINDS", " ".join(KINDS)).split()
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise SystemExit(f"unknown fault kinds {unknown}: KINDS takes {' '.join(KINDS)}")
        self.cycles = setting("CYCLES", 15, int)
        self.run_seconds = setting("RUN_SECONDS", 3)  # traffic before each fault
        self.down_seconds = setting("DOWN_SECONDS", 2)
        self.cut_seconds = setting("CUT_SECONDS", 4)
        self.pause_seconds = setting("PAUSE_SECONDS", 3)
        self.producers = setting("PRODUCERS", 6, int)
        self.consumers = setting("CONSUMERS", 3, int)
        self.producer_pause = setting("PRODUCER_PAUSE", 0.01)
        self.consumer_pause = setting("CONSUMER_PAUSE", 0.01)
        self.reply_timeout = setting("REPLY_TIMEOUT", 10)
        self.seed = setting("SEED", int(time.time()), int)
        # POWERCUT=0: no shim (for builds whose data directory is not flat, which it cannot
        # follow); `power-cut` is then a kill -9 of two members.
        self.powercut = os.environ.get("POWERCUT", "1") != "0"


def log(line):
    print(f"  [{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The group
# --------------------------------------------------------------------------------------------


class Group:
    """The three members, node i (from 1) in namespace i, each under the power-cut shim."""

    def __init__(self, tmp, net, shim=True):
        self.net, self.shim = net, shim
        spec = ",".join(f"{i}={net.peer_address(i)}:{RAFT_PORT}" for i in range(1, SIZE + 1))
        self.servers = []
        for i in range(1, SIZE + 1):
            server = Server(tmp, args=["--node", str(i), "--cluster", spec], name=f"node{i}",
                            prime_wal=False, host=net.client_address(i), wrapper=net.wrapper(i))
            if shim:
                server.env.update(powercut.env(server.data_dir))
            self.servers.append(server)
        self.stopped = set()  # nodes under SIGSTOP

    def server(self, node):
        return self.servers[node - 1]

    def running(self):
        return [s for s in self.servers if s.alive()]

    def nodes_running(self):
        return [i for i, s in enumerate(self.servers, 1) if s.alive()]

    def start(self, node):
        """Starts node; False (and the log's tail noted) if it exits while starting. A node
        whose database RocksDB cannot open (damage) serves no client: started once it is in
        quarantine (cluster.md 8)."""
        server = self.server(node)
        try:
            server.start(wait=False)
            deadline = time.monotonic() + 60
            while not quarantined_at_open(server):
                try:
                    server.wait_ready_once()
                    return True
                except OSError:
                    pass
                if not server.alive():
                    raise ServerDied(f"exited with {server.proc.returncode}")
                if time.monotonic() > deadline:
                    server.kill()
                    raise AssertionError("did not answer within 60 s")
                time.sleep(0.05)
            log(f"node {node} cannot open its database: in quarantine, no client port")
            return True
        except (ServerDied, AssertionError) as e:
            log(f"node {node} did not start: {str(e).splitlines()[0]}")
            return False

    def healthy(self, node):
        """Running, and its replication not stopped (a storage failure stops it)."""
        server = self.server(node)
        try:
            return server.alive() and view(server)["role"] not in ("stopped", "resyncing")
        except OSError:
            return False

    def role(self, node):
        server = self.server(node)
        try:
            return view(server)["role"] if server.alive() else "down"
        except OSError:
            return "resyncing" if quarantined_at_open(server) else "down"

    def supervise(self):
        """What systemd's Restart=on-failure does for a member that left to drop its damaged
        copy (exit status 75): starts it again. The nodes started."""
        started = []
        for node, server in enumerate(self.servers, 1):
            if server.proc is not None and server.proc.poll() == EXIT_RESYNC:
                log(f"node {node} exited with {EXIT_RESYNC} to drop its damaged copy: started again")
                if self.start(node):
                    started.append(node)
        return started

    def members(self):
        """The members that take part: running, replication not stopped."""
        return [self.server(i) for i in range(1, SIZE + 1) if self.healthy(i)]

    def leader(self, timeout=PATIENCE):
        """The leader every member that takes part names: (node, views), or (None, views)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                leader, views = agreed_leader(self.members())
            except OSError as e:
                leader, views = None, str(e)
            if leader is not None or time.monotonic() > deadline:
                return leader, views
            time.sleep(0.05)

    def settled(self, timeout=PATIENCE):
        """Waits until every running member names one leader and has its commit index as it
        was when first seen: (leader, seconds), leader None on timeout."""
        started = time.monotonic()
        leader, _ = self.leader(timeout)
        if leader is None:
            return None, time.monotonic() - started
        target = view(self.server(leader))["commit"]
        while time.monotonic() - started < timeout:
            try:
                members = self.members()
                if all(view(s)["commit"] >= target for s in members):
                    return agreed_leader(members)[0], time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.05)
        return None, time.monotonic() - started

    def stop_all(self):
        for node in list(self.stopped):
            self.resume(node)
        for server in self.servers:
            server.kill()

    def pause(self, node):
        os.kill(self.server(node).proc.pid, signal.SIGSTOP)
        self.stopped.add(node)

    def resume(self, node):
        os.kill(self.server(node).proc.pid, signal.SIGCONT)
        self.stopped.discard(node)

    def wipe(self, node):
        """Kills node and empties its data directory (and the shim's record of it)."""
        server = self.server(node)
        server.kill()
        for entry in os.listdir(server.data_dir):
            path = os.path.join(server.data_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        shutil.rmtree(powercut.shadow_dir(server.data_dir), ignore_errors=True)

    def backup(self, node):
        """A copy of node's data directory and the shim's record of it (node not running)."""
        server = self.server(node)
        copy = pathlib.Path(f"{server.data_dir}.backup")
        for source, target in ((server.data_dir, copy / "data"),
                               (powercut.shadow_dir(server.data_dir), copy / "shadow")):
            shutil.rmtree(target, ignore_errors=True)
            if os.path.isdir(source):
                shutil.copytree(source, target)
        return copy

    def restore_backup(self, node, copy):
        server = self.server(node)
        shadow = powercut.shadow_dir(server.data_dir)
        shutil.rmtree(server.data_dir)
        shutil.rmtree(shadow, ignore_errors=True)
        shutil.copytree(copy / "data", server.data_dir)
        if (copy / "shadow").is_dir():
            shutil.copytree(copy / "shadow", shadow)

    def flip_bit(self, node, rng, family):
        """Flips one bit of its largest table file of column family
        `family` (`messages`: the queues; `raft_log`: the log; or of any if it has none), node
        not running, in the shim's copy too (a later power cut restores the damage, not the good copy). Returns a
        description, or None if it has no table file."""
        server = self.server(node)
        tables = sorted(pathlib.Path(server.data_dir).glob("*.sst"), key=lambda p: p.stat().st_size)
        if not tables:
            return None
        # The table's properties block, near its end, names its column family.
        of_family = [t for t in tables if b"name" + family.encode() + b"\n" in table_tail(t)]
        table = (of_family or tables)[-1]
        size = table.stat().st_size
        # Past the footer's reach: a data block, most likely (the footer is the last 53 bytes and
        # the index and meta blocks come just before it).
        offset = rng.randrange(0, max(1, int(size * 0.8)))
        bit = rng.randrange(8)
        copies = [table]
        shadow = pathlib.Path(powercut.shadow_dir(server.data_dir))
        try:
            for line in (shadow / "namespace").read_text().splitlines():
                file_id, name = line.split("\t", 1)
                if name == table.name and (shadow / "ids" / file_id).exists():
                    copies.append(shadow / "ids" / file_id)
        except FileNotFoundError:
            pass

        def flip():
            for path in copies:
                try:
                    with open(path, "r+b") as f:
                        f.seek(offset)
                        byte = f.read(1)
                        if len(byte) == 1:
                            f.seek(offset)
                            f.write(bytes([byte[0] ^ (1 << bit)]))
                except FileNotFoundError:
                    pass  # compacted away since
        flip()
        family = next((f for f in ("messages", "raft_log", "meta")
                       if b"name" + f.encode() + b"\n" in table_tail(table)), "?")
        # Flipping again undoes it.
        return f"{table.name} ({family}, {size} bytes), bit {bit} of byte {offset}", flip


def table_tail(path):
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 8192))
        return f.read()


def log_lines(server, since, patterns):
    """Lines of server's log after byte `since` that contain any of `patterns`."""
    with open(server.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if any(p in line for p in patterns)]


def log_size(server):
    try:
        return os.path.getsize(server.log_path)
    except OSError:
        return 0


# --------------------------------------------------------------------------------------------
# Faults: each does one cycle and returns its failover (seconds or None) and notes
# --------------------------------------------------------------------------------------------


class Phase:
    """One fault kind's run: its clients, its cycles, its figures."""

    def __init__(self, group, kind, number, settings, rng):
        self.group, self.kind, self.settings, self.rng = group, kind, settings, rng
        self.halt = threading.Event()
        self.number = number  # its producers are number * 100 + k
        self.producers = [
            Producer(number * 100 + k, k % SIZE + 1, group.server(k % SIZE + 1), self.halt,
                     protocol="mc" if k % 2 == 0 else "mq", pause=settings.producer_pause,
                     reply_timeout=settings.reply_timeout)
            for k in range(settings.producers)
        ]
        self.consumers = [
            Consumer(f"{kind}{k}", k % SIZE + 1, group.server(k % SIZE + 1), self.halt,
                     pause=settings.consumer_pause, reply_timeout=settings.reply_timeout)
            for k in range(settings.consumers)
        ]
        self.failovers = []
        self.caught_up = []  # wipe: seconds until a wiped member had the leader's commit index
        self.rejoined_after_leader_change = []  # wipe: the same, once a new leader replayed
        self.cuts = []
        self.fault_times = []
        self.backups = {}  # node -> its directory before this cycle's damage
        self.undo = {}  # node -> undoes this cycle's flipped bit
        self.flipped_at = {}  # node -> its log's size when this cycle's bit was flipped
        self.damage_noted = set()  # nodes whose finding of this cycle's damage is in the faults
        self.resynced = []  # bit-flip: seconds from the flip's restart to the copy back
        self.replaced = []  # replace: seconds from the removal asked to a voter again
        self.repairs = 0
        self.notes = []

    def note(self, line):
        self.notes.append(line)
        log(f"{self.kind}: {line}")

    def failover(self, at, spared):
        """Seconds from `at` to the first acknowledgement, through a member of `spared`, of a
        write sent after it (one sent before may have been committed before the fault), or None
        if none within PATIENCE."""
        deadline = at + PATIENCE
        while time.monotonic() < deadline:
            answered = [a.answered for p in self.producers if p.node in spared
                        for a in list(p.attempts)[-50:] if a.outcome == "ack" and a.sent > at]
            if answered:
                return min(answered) - at
            time.sleep(0.02)
        return None

    def leader_now(self):
        leader, views = self.group.leader()
        if leader is None:
            raise RuntimeError(f"no agreed leader: {views}")
        return leader

    def follower_now(self, leader, cycle):
        return self.rng.choice([i for i in range(1, SIZE + 1) if i != leader])

    # -- the faults ---------------------------------------------------------------------------

    def kill(self, cycle):
        leader = self.leader_now()
        self.group.server(leader).kill()
        at = time.monotonic()
        took = self.failover(at, [i for i in range(1, SIZE + 1) if i != leader])
        time.sleep(max(0.0, at + self.settings.down_seconds - time.monotonic()))
        self.group.start(leader)
        return took, f"killed leader {leader}"

    def partition(self, cycle):
        leader = self.leader_now()
        old = self.group.server(leader)
        self.group.net.cut(leader)
        at = time.monotonic()
        try:
            took = self.failover(at, [i for i in range(1, SIZE + 1) if i != leader])
            time.sleep(max(0.0, at + self.settings.cut_seconds - time.monotonic()))
            role = view(old)["role"]
        finally:
            self.group.net.heal(leader)
            self.cuts.append((leader, at, time.monotonic()))
        if role == "leader":
            self.note(f"cycle {cycle + 1}: leader {leader} still says it leads "
                      f"{self.settings.cut_seconds} s after the cut")
        return took, f"cut off leader {leader}"

    def pause(self, cycle):
        leader = self.leader_now()
        self.group.pause(leader)
        at = time.monotonic()
        try:
            took = self.failover(at, [i for i in range(1, SIZE + 1) if i != leader])
            time.sleep(max(0.0, at + self.settings.pause_seconds - time.monotonic()))
        finally:
            self.group.resume(leader)
        return took, f"paused leader {leader}"

    def power_cut(self, cycle):
        leader = self.leader_now()
        follower = self.follower_now(leader, cycle)
        pair = [self.group.server(leader), self.group.server(follower)]
        for server in pair:  # both at once: neither writes after the other is cut
            os.kill(server.proc.pid, signal.SIGKILL)
        at = time.monotonic()
        for server in pair:
            server.kill()
            if self.group.shim:
                powercut.restore(server.data_dir)
        time.sleep(max(0.0, at + self.settings.down_seconds - time.monotonic()))
        for node in (leader, follower):
            self.group.start(node)
        took = self.failover(at, range(1, SIZE + 1))
        return took, f"power cut of leader {leader} and follower {follower}"

    def caught_up_with(self, node, target, started, timeout):
        """Seconds from `started` until node's commit index reached `target`; or the reason it
        did not: "exited", "stopped" (its raft thread stopped) or "not caught up"."""
        server = self.group.server(node)
        while time.monotonic() - started < timeout:
            if not server.alive():
                return "exited"
            try:
                now = view(server)
                if now["commit"] >= target:
                    return time.monotonic() - started
                if now["role"] == "stopped":
                    return "stopped"
            except OSError:
                pass
            time.sleep(0.05)
        return "not caught up"

    def wipe(self, cycle):
        """A follower killed and its directory emptied, then started (same id): it must catch
        up from the leader (a snapshot, since step 6). Before step 6 it could not rejoin while
        the leader remembered how far it had got (raft-rs panicked on the leader's heartbeat
        commit, docs/replication.md); should it not catch up, it is started again and the
        leader killed, so that a new leader replays the log to it, and if even that fails, its
        directory as it was before the wipe is put back (noted, and counted in the table)."""
        leader = self.leader_now()
        follower = self.follower_now(leader, cycle)
        server = self.group.server(follower)
        since = log_size(server)
        server.kill()
        self.fault_times.append(time.monotonic())  # a member went: it may have led
        backup = self.group.backup(follower)
        self.group.wipe(follower)
        target = view(self.group.server(leader))["commit"]
        started = time.monotonic()
        result = self.caught_up_with(follower, target, started, 15) \
            if self.group.start(follower) else "did not start"
        if isinstance(result, float):
            self.caught_up.append(result)
            return None, f"wiped follower {follower}: caught up to {target} in {result:.2f} s"
        panics = log_lines(server, since, ["panicked", "out of range", "stopped"])
        self.note(f"cycle {cycle + 1}: wiped node {follower}: {result}: {panics[-3:]}")
        # A new leader, whose progress for the wiped member starts at zero. The old one goes
        # first: a heartbeat of its would stop the wiped member again as it starts.
        server.kill()
        self.group.server(leader).kill()
        at = time.monotonic()
        self.fault_times.append(at)
        self.group.start(follower)
        took = self.failover(at, [i for i in range(1, SIZE + 1) if i != leader])
        self.group.start(leader)
        new_leader, _ = self.group.leader(timeout=15)
        target = view(self.group.server(new_leader))["commit"] if new_leader else target
        again = self.caught_up_with(follower, target, at, PATIENCE)
        if isinstance(again, float):
            self.rejoined_after_leader_change.append(again)
            return took, (f"wiped follower {follower}: {result}; leader {leader} killed: it "
                          f"had the new leader's commit {target} {again:.2f} s after the kill")
        self.note(f"cycle {cycle + 1}: wiped node {follower} after a leader change: {again}; "
                  f"its directory from before the wipe put back")
        server.kill()
        self.fault_times.append(time.monotonic())  # a member went: it may have led
        self.group.restore_backup(follower, backup)
        self.group.start(follower)
        return took, f"wiped follower {follower}: {result}, then {again}: put back"

    def replace(self, cycle):
        leader = self.leader_now()
        node = self.follower_now(leader, cycle)
        server = self.group.server(node)
        through = self.group.server(leader)
        client = f"{through.host}:{through.port}"
        at = time.monotonic()
        self.fault_times.append(at)  # a member goes
        status, out, err = mqd_cluster("remove", str(node), "--addr", client)
        if status != 0:
            raise RuntimeError(f"remove {node} through {leader}: {(out + err).strip()}")
        try:
            exited = server.proc.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.note(f"cycle {cycle + 1}: removed node {node} still runs {PATIENCE} s later")
            exited = "still running"
        server.expect_running = False
        self.group.wipe(node)
        server.args.append("--join")
        try:
            started = self.group.start(node)
        finally:
            server.args.remove("--join")
        if not started:
            raise RuntimeError(f"node {node} did not start with --join")
        peer = f"{self.group.net.peer_address(node)}:{RAFT_PORT}"
        status, out, err = mqd_cluster("add", str(node), peer, "--addr", client, "--wait", "60")
        if status != 0:
            raise RuntimeError(f"add {node} through {leader}: {(out + err).strip()}")
        took = time.monotonic() - at
        self.replaced.append(took)
        return None, (f"removed follower {node} (it exited: {exited}), emptied it, added it "
                      f"back: a voter {took:.2f} s after the removal was asked")

    def bit_flip(self, cycle):
        leader = self.leader_now()
        follower = self.follower_now(leader, cycle)
        server = self.group.server(follower)
        since = log_size(server)
        server.stop()
        flipped = self.group.flip_bit(follower, self.rng,
                                      "messages" if cycle % 4 < 2 else "raft_log")
        if flipped is None:
            self.note(f"cycle {cycle + 1}: node {follower} has no table file to damage")
        else:
            flipped, self.undo[follower] = flipped
        self.flipped_at[follower] = since
        self.damage_noted.discard(follower)
        started = self.group.start(follower)
        started_at = time.monotonic()
        what = f"node {follower}: flipped {flipped}; {'started' if started else 'did not start'}"
        took = None
        if started and cycle % 2 == 1 and len(self.group.members()) == SIZE:
            # The leader goes, so that the damaged member may be elected and serve. Not when
            # the member found its damage already (it takes no part until it has the group's
            # copy): the group would be left one healthy member of three, waiting out this
            # script's patience for the leader to be started again.
            self.group.settled()
            leader = self.leader_now()
            if self.group.role(follower) == "resyncing":
                what += "; damage found at once, leader left alone"
            elif leader != follower:
                self.group.server(leader).kill()
                at = time.monotonic()
                self.fault_times.append(at)
                took = self.failover(at, [i for i in range(1, SIZE + 1) if i != leader])
                self.group.start(leader)
                now, _ = self.group.leader()
                what += f"; leader {leader} killed, node {now} leads"
        if self.wait_for_resync(follower):
            self.resynced.append(time.monotonic() - started_at)
            what += "; found, resynced from the group"
        errors = log_lines(server, since, ["orrupt", "storage", "panic", "checksum"])
        rocksdb_log = pathlib.Path(server.data_dir) / "LOG"
        if rocksdb_log.exists():
            errors += [line for line in rocksdb_log.read_text(errors="replace").splitlines()
                       if "orruption" in line][:2]
        if errors or not started:
            self.note(f"cycle {cycle + 1}: {what}: {errors[:3]}")
        return took, what

    def damage_found(self, node):
        """A member that found its damage stepped down then, if it led (a fault for the checker:
        a close it answered just before may come again): its log's time of it, as a monotonic
        time, added to the faults once per flip."""
        if node in self.damage_noted:
            return
        lines = log_lines(self.group.server(node), self.flipped_at.get(node, 0),
                          ["takes no part in the group"])
        if not lines:
            return
        stamp = lines[0].lstrip("[").split()[0]
        try:
            wall = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:
            return
        self.fault_times.append(time.monotonic() - (time.time() - wall))
        self.damage_noted.add(node)

    def resynced_since(self, node):
        return bool(log_lines(self.group.server(node), self.flipped_at.get(node, 0),
                              ["files of the damaged copy removed"]))

    def wait_for_resync(self, node, seconds=2.0):
        """Whether the damaged `node` got its copy back from the group: it is watched for
        `seconds`, or as long as it is `resyncing` (it found the damage and waits for the
        others), up to PATIENCE; started again when it exits with 75, then until it has the
        leader's commit index."""
        deadline = time.monotonic() + PATIENCE
        quiet_until = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.group.supervise()
            self.damage_found(node)
            if self.resynced_since(node):
                break
            if time.monotonic() > quiet_until and self.group.role(node) not in ("resyncing",):
                return False
            time.sleep(0.05)
        else:
            return False
        leader, _ = self.group.settled()
        return leader is not None and self.group.healthy(node)

    def repair(self, cycle):
        """A bit flipped in this cycle is flipped back (its member restarted) unless the member
        got its copy back from the group (its directory was emptied); members left down or
        stopped by the fault are noted, put back as they were before this cycle's damage if a
        copy was kept, and started, so that the next cycle begins with three."""
        self.group.supervise()
        for node in list(self.undo):
            if self.group.role(node) == "resyncing" and self.wait_for_resync(node, 0):
                self.resynced.append(None)
            if self.resynced_since(node):
                del self.undo[node]
        for node, undo in self.undo.items():
            self.group.server(node).kill()
            self.fault_times.append(time.monotonic())  # a member went: it may have led
            undo()
            self.group.start(node)
        self.undo = {}
        for node in range(1, SIZE + 1):
            if self.group.healthy(node):
                continue
            server = self.group.server(node)
            state = "stopped" if server.alive() else "down"
            self.note(f"cycle {cycle + 1}: node {node} {state} after the fault; "
                      f"{'its directory put back, ' if node in self.backups else ''}restarted")
            self.repairs += 1
            server.kill()
            self.fault_times.append(time.monotonic())  # a member went: it may have led
            if node in self.backups:
                self.group.restore_backup(node, self.backups[node])
            self.group.start(node)

    # -- the run ------------------------------------------------------------------------------

    def run(self):
        fault = getattr(self, self.kind.replace("-", "_"))
        for worker in self.producers + self.consumers:
            worker.start()
        try:
            for cycle in range(self.settings.cycles):
                time.sleep(self.settings.run_seconds)
                self.fault_times.append(time.monotonic())
                try:
                    took, what = fault(cycle)
                except (RuntimeError, AssertionError, OSError) as e:
                    took, what = None, f"failed: {e}"
                    self.note(f"cycle {cycle + 1}: the fault could not run: {e}")
                if took is not None:
                    self.failovers.append(took)
                self.repair(cycle)
                self.backups = {}
                leader, settled_in = self.group.settled()
                acks = sum(a.outcome == "ack" for p in self.producers for a in p.attempts)
                shown = sum(len(c.reads) for c in self.consumers)
                log(f"{self.kind} {cycle + 1}/{self.settings.cycles}: {what}; "
                    f"failover {'-' if took is None else f'{took:.3f} s'}; leader {leader} "
                    f"(settled in {settled_in:.2f} s); {acks} acknowledged, {shown} shown")
                if leader is None:
                    self.note(f"cycle {cycle + 1}: the group did not settle in {PATIENCE} s: "
                              f"{[(i, s.alive()) for i, s in enumerate(self.group.servers, 1)]}")
                    for node in range(1, SIZE + 1):
                        if not self.group.server(node).alive():
                            self.group.start(node)
        finally:
            self.halt.set()
            for worker in self.producers + self.consumers:
                worker.join(timeout=self.settings.reply_timeout + 10)
        hung = [w.name for w in self.producers + self.consumers if w.is_alive()]
        failed = [(w.name, repr(w.failure)) for w in self.producers + self.consumers
                  if w.failure is not None]
        if hung or failed:
            self.note(f"clients hung {hung}, failed {failed}")
        time.sleep(0.5)  # connections the consumers closed give their messages back
        started = time.monotonic()
        try:
            drained = drain_reliably(self.group.members(), patience=600)
        except (AssertionError, OSError) as e:
            drained = []
            self.note(f"the queue could not be drained: {e}")
        self.attempts = [a for p in self.producers for a in p.attempts]
        # The drain's reads, after every consumer's: spread over its start for their order.
        self.reads = [r for c in self.consumers for r in c.reads] + [
            Read("drain", 0, body, started + i * 1e-6, started + i * 1e-6, "drained")
            for i, body in enumerate(drained)]
        self.drained = len(drained)
        self.blind = [b for c in self.consumers for b in c.blind]
        unexpected = [u for c in self.consumers for u in c.unexpected]
        if unexpected:
            self.note(f"consumers' unexpected replies ({len(unexpected)}): "
                      f"{sorted({u[2] for u in unexpected})[:5]}")
        return self


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

COLUMNS = ["cycles", "acknowledged", "lost", "duplicated", "shown-then-lost", "unknown-outcome",
           "again-after-close", "bad-duplicates", "out-of-order", "failover min/median/max s"]


def failover_cell(values):
    if not values:
        return "-"
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"


def judge(phases):
    """Examines the whole history (a message written in one phase may come back in another's
    drain, on a build that loses it), then each phase's own messages, wherever they were read.
    Returns the whole history's (counts, problems); sets each phase's counts and problems."""
    attempts = [a for p in phases for a in p.attempts]
    reads = [r for p in phases for r in p.reads]
    cuts = [c for p in phases for c in p.cuts]
    faults = sorted(f for p in phases for f in p.fault_times)
    blind = [b for p in phases for b in p.blind]
    for p in phases:
        own = [r for r in reads if parse_body(r.body)[0] // 100 == p.number]
        p.counts, p.problems = examine(p.attempts, [], cuts, own, faults, blind)
        for shows in p.counts.pop("again-after-close examples"):
            p.notes.append(
                "delivered again after an answered close (reader/node/fate/s from the nearest "
                "fault): " + ", ".join(
                    f"{r.reader}/{r.node}/{r.fate}/"
                    f"{r.answered - min(faults, key=lambda f: abs(f - r.answered)):+.3f}"
                    for r in shows) + f" [{shows[0].body.decode()}]")
    counts, problems = examine(attempts, [], cuts, reads, faults, blind)
    counts.pop("again-after-close examples")
    return counts, problems


def save_history(phases, path):
    """Everything the checker judged, for a post-mortem: attempts, reads, cuts, faults."""
    import dataclasses
    import json

    def plain(x):
        return {k: v.decode() if isinstance(v, bytes) else v
                for k, v in dataclasses.asdict(x).items()}
    with open(path, "w") as f:
        json.dump({"attempts": [plain(a) for p in phases for a in p.attempts],
                   "reads": [plain(r) for p in phases for r in p.reads],
                   "cuts": [c for p in phases for c in p.cuts],
                   "faults": sorted(t for p in phases for t in p.fault_times),
                   "blind": [b for p in phases for b in p.blind]}, f)
    print(f"cluster-torture: the history is in {path}", file=sys.stderr)


def print_table(phases, settings, total):
    rows = []
    for p in phases:
        row = dict(p.counts, cycles=settings.cycles)
        row["failover min/median/max s"] = failover_cell(p.failovers)
        rows.append((p.kind, row))
    total = dict(total, cycles=settings.cycles * len(phases))
    total["failover min/median/max s"] = failover_cell([f for p in phases for f in p.failovers])
    rows.append(("all", total))
    width = max(len(k) for k, _ in rows) + 2
    print("\n" + "fault".ljust(width) + "  ".join(c.rjust(max(len(c), 8)) for c in COLUMNS))
    for kind, row in rows:
        print(kind.ljust(width) + "  ".join(str(row[c]).rjust(max(len(c), 8)) for c in COLUMNS))
    print(flush=True)


def main():
    reason = unavailable()
    if reason is not None:
        print(f"cluster-torture: skipped: {reason}", file=sys.stderr)
        return 77
    settings = Settings()
    rng = random.Random(settings.seed)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mqd-cluster-torture-"))
    net = LinkedNamespaces(SIZE)
    group = None
    phases = []
    failed = True
    # SIGTERM (and SIGHUP) end the run through the finally below, as Ctrl-C does.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(130))
    try:
        try:
            net.create()
        except (NetworkSetupError, subprocess.CalledProcessError, OSError) as e:
            print(f"cluster-torture: skipped: cannot build network namespaces here: {e}",
                  file=sys.stderr)
            failed = False
            return 77
        group = Group(tmp, net, shim=settings.powercut)
        for node in range(1, SIZE + 1):
            if not group.start(node):
                raise SystemExit(f"node {node} did not start: {group.server(node).log_tail()}")
        leader, _ = group.settled()
        log(f"binary {os.environ['MQD_BIN']}, seed {settings.seed}, logs in {tmp}; "
            f"leader {leader}; kinds {' '.join(settings.kinds)}, {settings.cycles} cycles each")
        for number, kind in enumerate(settings.kinds, 1):
            phase = Phase(group, kind, number, settings, rng).run()
            phases.append(phase)
            log(f"{kind}: done, {sum(a.outcome == 'ack' for a in phase.attempts)} acknowledged, "
                f"{phase.drained} left in the queue")
        total, problems = judge(phases)
        print_table(phases, settings, total)
        for p in phases:
            if p.kind == "bit-flip":
                times = [t for t in p.resynced if t is not None]
                print(f"bit-flip: the damaged member found the damage and got its copy back from "
                      f"the group in {len(p.resynced)} of {settings.cycles} cycles "
                      f"({failover_cell(times)} s from its start with the flip, min/median/max); "
                      f"latent (flipped back) in the others")
            if p.kind == "replace":
                print(f"replace: a follower removed and added back as a voter in "
                      f"{len(p.replaced)} of {settings.cycles} cycles "
                      f"({failover_cell(p.replaced)} s from the removal asked, min/median/max)")
            if p.kind == "wipe":
                print(f"wipe: a wiped follower caught up at once in {len(p.caught_up)} of "
                      f"{settings.cycles} cycles ({failover_cell(p.caught_up)} s), after a "
                      f"leader change in {len(p.rejoined_after_leader_change)} "
                      f"({failover_cell(p.rejoined_after_leader_change)} s, min/median/max)")
        failovers = [f for p in phases for f in p.failovers if p.kind != "power-cut"]
        if failovers:
            print(f"failover (kill, partition, pause, bit-flip): "
                  f"{sum(f <= FAILOVER_TARGET for f in failovers)} of {len(failovers)} within "
                  f"the {FAILOVER_TARGET:.0f} s target")
        for p in phases:
            for line in p.notes:
                print(f"{p.kind}: {line}")
            for problem in p.problems:
                print(f"{p.kind}: VIOLATION: {problem[:2000]}")
        for problem in problems if not any(p.problems for p in phases) else []:
            print(f"all: VIOLATION: {problem[:2000]}")
        failed = bool(problems) or any(p.problems for p in phases)
        if failed:
            save_history(phases, tmp / "history.json")
        print("cluster-torture: " + ("FAILED" if failed else "passed"), flush=True)
        return 1 if failed else 0
    finally:
        if group is not None:
            group.stop_all()
        net.destroy()
        if failed or os.environ.get("KEEP"):
            print(f"cluster-torture: logs and data directories kept in {tmp}", file=sys.stderr)
        else:
            for entry in tmp.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
            print(f"cluster-torture: the members' logs are in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
