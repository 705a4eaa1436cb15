"""Sharding behind twemproxy (nutcracker): queues spread over two mqd servers, each queue stays
FIFO on its shard, and a hash tag keeps `{q}`, `{q}/open` and `{q}/close` on the same shard.
(Open messages belong to the proxy's server connection, shared by its clients: README.)"""

import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import MemcacheConn, free_port


def nutcracker_bin():
    path = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
    if not os.access(path, os.X_OK):
        pytest.fail("nutcracker (twemproxy) is not installed: scripts/deps --tests installs it")
    return path


@pytest.fixture
def proxy(make_server, tmp_path):
    shards = [make_server(), make_server()]
    port = free_port()
    config = tmp_path / "nutcracker.yml"
    servers = "\n".join(f"   - 127.0.0.1:{s.port}:1 shard{i}" for i, s in enumerate(shards))
    config.write_text(
        "queues:\n"
        f"  listen: 127.0.0.1:{port}\n"
        "  hash: fnv1a_64\n"
        '  hash_tag: "{}"\n'
        "  distribution: modula\n"
        "  timeout: 5000\n"
        "  auto_eject_hosts: false\n"
        "  servers:\n" + servers + "\n"
    )
    proc = subprocess.Popen(
        [nutcracker_bin(), "-c", str(config), "-o", str(tmp_path / "nutcracker.log")]
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            MemcacheConn(port, timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nutcracker did not start"
            time.sleep(0.05)
    yield port, shards
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def test_queues_spread_over_shards_and_stay_fifo(proxy):
    port, shards = proxy
    queues = [b"{queue-%d}" % i for i in range(60)]
    with MemcacheConn(port) as c:
        for round in range(3):
            for q in queues:
                assert c.set(q, b"%s-%d" % (q, round)) == b"STORED\r\n"
        for round in range(3):
            for q in queues:
                assert c.get_one(q) == b"%s-%d" % (q, round)
        assert c.get_one(queues[0]) is None
    per_shard = []
    for shard in shards:
        with shard.mc() as direct:
            direct.send(b"stats queue\r\n")
            lines = []
            while (line := direct.read_line()) != b"END\r\n":
                lines.append(line)
            per_shard.append(len(lines))
            assert all(line.endswith(b" 3/3\r\n") for line in lines), lines
    assert sum(per_shard) == len(queues)
    assert min(per_shard) > 0, f"one shard got every queue: {per_shard}"


def test_multi_get_and_reliable_reads_through_the_proxy(proxy):
    port, _ = proxy
    with MemcacheConn(port) as c:
        for i in range(10):
            assert c.set(b"{m%d}" % i, b"v%d" % i) == b"STORED\r\n"
        # twemproxy splits the keys over the shards and reassembles one reply, in order.
        values = c.get(*[b"{m%d}" % i for i in range(10)])
        assert [v[2] for v in values] == [b"v%d" % i for i in range(10)]
        assert c.set(b"{jobs}", b"job-1") == b"STORED\r\n"
        assert c.get_one(b"{jobs}/open") == b"job-1"
        # The hash tag routes /abort to the shard holding the open message.
        c.send(b"get {jobs}/abort\r\n")
        c.expect(b"END\r\n")
        assert c.get_one(b"{jobs}/close/open") == b"job-1"
        c.send(b"get {jobs}/close\r\n")
        c.expect(b"END\r\n")
        assert c.get_one(b"{jobs}") is None
