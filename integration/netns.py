"""Network namespaces for cluster tests: each member of a group in a namespace of its own, on a
peer network (raft and forwarding) and a client network (what the test process reaches), so a
member's peer link can be cut while its clients still reach it.

Owns `LinkedNamespaces` (build, cut, heal, tear down) and `unavailable()` (why namespaces cannot
be built here, or None). Used by test_cluster_partition.py and cluster_torture.py. Needs root and
iproute2's `ip`; no firewall: a cut is `ip link set down` on the member's peer veth.
"""

import os
import shutil
import signal
import subprocess


def unavailable():
    """Why namespaces cannot be built here (not root, no `ip`), or None."""
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


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
