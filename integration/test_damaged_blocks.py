"""A damaged table file: one flipped bit in a data block of an .sst. RocksDB's block checksum
catches it, so the server never serves damaged data: reads of the queue stop at the damaged
block with `SERVER_ERROR storage failure`, counted in `stats`, /metrics and /stats.json. The
offline `mqd repair` then drops exactly the messages that cannot be read, naming each, and the
queue goes on: every intact message is read in order, new ones are stored and served."""

import json
import os
import re
import subprocess
import urllib.request

from conftest import mqd_bin
from test_dashboard import CHROMIUM, rendered_dom

N = 20_000
BODY = 1000
# The message whose body gets the flipped bit: well inside the table file's data blocks.
DAMAGED = 12_345


def body(i):
    head = b"m%06d " % i
    return head + b"x" * (BODY - len(head))


def fill(server, queue, n):
    with server.mc() as mc:
        for start in range(0, n, 500):
            batch = range(start, min(n, start + 500))
            mc.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (queue, BODY, body(i)) for i in batch))
            mc.expect(b"STORED\r\n" * len(batch), timeout=60)


def flip_a_bit_in(data_dir, marker):
    """Flips one bit 500 bytes into the message that starts with `marker`, in the one table
    file holding it (the messages' memtable was flushed by the clean stop, uncompressed)."""
    hits = []
    for sst in sorted(data_dir.glob("*.sst")):
        data = bytearray(sst.read_bytes())
        at = data.find(marker)
        if at >= 0:
            hits.append((sst, data, at))
    assert len(hits) == 1, f"expected one table file with {marker!r}, found {len(hits)}"
    sst, data, at = hits[0]
    assert 0.1 < at / len(data) < 0.9, "the bit must be in the data blocks, not index or footer"
    data[at + 500] ^= 0x10
    sst.write_bytes(bytes(data))
    return sst


def drain_until_error(mc, queue, limit):
    """Reads until the queue is empty or a read fails: (bodies read, the failing reply line)."""
    bodies = []
    while len(bodies) < limit:
        mc.send(b"get %s\r\n" % queue)
        line = mc.read_line()
        if line == b"END\r\n":
            return bodies, None
        if not line.startswith(b"VALUE "):
            return bodies, line
        n = int(line.split()[3])
        bodies.append(mc.read_exactly(n + 2)[:-2])
        assert mc.read_line() == b"END\r\n"
    return bodies, None


def http_get(server, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as reply:
        return reply.read().decode()


def repair(server, *flags):
    return subprocess.run(
        [mqd_bin(), "repair", "--data-dir", str(server.data_dir), *flags],
        capture_output=True,
        timeout=300,
    )


def lost_seqs(stdout, queue):
    """The `lost <queue> <seq>` lines of a repair's report."""
    return [int(m) for m in re.findall(rb"^lost %s (\d+)$" % queue, stdout, re.M)]


def test_repair_drops_exactly_the_damaged_messages_and_the_queue_goes_on(make_server):
    server = make_server(prime_wal=False)
    fill(server, b"big", N)
    with server.mc() as mc:
        assert mc.set(b"small", b"untouched") == b"STORED\r\n"
    assert server.stop() == 0, server.log_tail()
    flip_a_bit_in(server.data_dir, b"m%06d " % DAMAGED)

    # Today: reads stop at the damaged block, every time, and nothing damaged is served.
    server.start()
    with server.mc() as mc:
        read, error = drain_until_error(mc, b"big", N)
        assert error == b"SERVER_ERROR storage failure\r\n"
        assert read == [body(i) for i in range(len(read))], "in order, and intact"
        stopped_at = len(read)
        assert DAMAGED - 64 < stopped_at <= DAMAGED, stopped_at
        for _ in range(3):
            assert drain_until_error(mc, b"big", 1) == ([], b"SERVER_ERROR storage failure\r\n")
        assert mc.get_one(b"small/peek") == b"untouched", "other queues are served"
        errors = int(mc.stats()["storage_errors"])
        assert errors >= 4, errors
    assert re.search(r"^mqd_storage_errors_total (\d+)$", http_get(server, "/metrics"), re.M)
    assert json.loads(http_get(server, "/stats.json"))["storage_errors"] >= 4
    if os.access(CHROMIUM, os.X_OK):
        dom = rendered_dom(f"http://127.0.0.1:{server.port}/", server.data_dir.parent / "chrome")
        shown = re.search(r'id="storage-errors-stat"[^>]*class="stat alarm"|'
                          r'class="stat alarm"[^>]*id="storage-errors-stat"', dom)
        assert shown, "the dashboard shows the storage errors as an alarm"
        assert int(re.search(r'id="storage-errors">(\d+)<', dom).group(1)) >= 4
    assert server.stop() == 0, server.log_tail()

    # A dry run names the damaged messages and changes nothing.
    dry = repair(server, "--dry-run")
    assert dry.returncode == 3, dry
    damaged = lost_seqs(dry.stdout, b"big")
    assert damaged and DAMAGED in damaged, dry.stdout
    assert damaged == list(range(damaged[0], damaged[0] + len(damaged))), "one block's run"
    assert damaged[0] == stopped_at, "every intact message before the block was served"
    # A 4 KB block holds at most 5 of these 1 KB messages.
    assert len(damaged) <= 5, damaged

    # The repair drops exactly those.
    fixed = repair(server)
    assert fixed.returncode == 0, fixed
    assert lost_seqs(fixed.stdout, b"big") == damaged
    assert b"lost %d message" % len(damaged) in fixed.stdout, fixed.stdout
    # Nothing is left to repair.
    again = repair(server, "--dry-run")
    assert again.returncode == 0, again
    assert lost_seqs(again.stdout, b"big") == []

    server.start()
    with server.mc() as mc:
        # The readers stopped at the damage: the dropped messages are not counted any more.
        expected_items = N - stopped_at - len(damaged)
        assert mc.stats()["queue_big_items"] == str(expected_items)
        rest, error = drain_until_error(mc, b"big", N)
        assert error is None
        expected = [body(i) for i in range(stopped_at, N) if i not in damaged]
        assert rest == expected, "every intact message, in order"
        assert len(rest) == expected_items
        assert mc.get_one(b"small") == b"untouched"
        assert mc.set(b"big", b"after repair") == b"STORED\r\n"
        assert mc.get_one(b"big") == b"after repair"
        assert mc.get_one(b"big") is None
        assert mc.stats()["storage_errors"] == "0"


def test_repair_of_an_undamaged_directory_changes_nothing(make_server):
    server = make_server(prime_wal=False)
    with server.mc() as mc:
        for i in range(10):
            assert mc.set(b"q", body(i)) == b"STORED\r\n"
    assert server.stop() == 0, server.log_tail()
    before = sorted(p.name for p in server.data_dir.iterdir())
    result = repair(server)
    assert result.returncode == 0, result
    assert b"no damage found" in result.stdout
    assert sorted(p.name for p in server.data_dir.iterdir()) == before
    server.start()
    with server.mc() as mc:
        assert [mc.get_one(b"q") for _ in range(10)] == [body(i) for i in range(10)]


def test_repair_refuses_a_running_servers_directory_and_a_missing_one(make_server, tmp_path):
    server = make_server(prime_wal=False)
    result = repair(server)
    assert result.returncode == 1
    assert b"in use" in result.stderr, result.stderr
    missing = subprocess.run(
        [mqd_bin(), "repair", "--data-dir", str(tmp_path / "nowhere")],
        capture_output=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert b"no mqd data directory" in missing.stderr, missing.stderr
    bad = subprocess.run([mqd_bin(), "repair", "--data-dir"], capture_output=True, timeout=60)
    assert bad.returncode == 2, bad
