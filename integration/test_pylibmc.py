"""pylibmc (libmemcached), unmodified: the C client many MemcacheQ and Kestrel users ran."""

import pylibmc
import pytest


@pytest.fixture
def client(server):
    mc = pylibmc.Client([f"127.0.0.1:{server.port}"], behaviors={"connect_timeout": 5000})
    yield mc
    mc.disconnect_all()


def test_set_get_is_fifo_and_removes(client):
    assert client.set("jobs", b"first")
    assert client.set("jobs", b"second")
    assert client.get("jobs") == b"first"
    assert client.get("jobs") == b"second"
    assert client.get("jobs") is None


def test_flags_carry_python_types(client):
    # pylibmc stores ints and pickles with its own flags; the server must hand them back.
    assert client.set("typed", 42)
    assert client.set("typed", {"id": 7, "tags": ["a"]})
    assert client.get("typed") == 42
    assert client.get("typed") == {"id": 7, "tags": ["a"]}


def test_get_multi_pops_one_from_each(client):
    for q in ("ma", "mb"):
        assert client.set(q, q.encode() + b"1")
        assert client.set(q, q.encode() + b"2")
    assert client.get_multi(["ma", "mb", "mc"]) == {"ma": b"ma1", "mb": b"mb1"}
    assert client.get_multi(["ma", "mb"]) == {"ma": b"ma2", "mb": b"mb2"}
    assert client.get_multi(["ma", "mb"]) == {}


def test_delete_and_stats(client):
    assert client.set("gone", b"x")
    assert client.delete("gone")
    assert client.get("gone") is None
    ((_, stats),) = client.get_stats()
    assert int(stats["curr_connections"]) >= 1
    assert "cmd_get" in stats and "get_misses" in stats


def test_reliable_read_loop(client, server):
    for i in range(3):
        assert client.set("work", b"job-%d" % i)
    done = []
    job = client.get("work/open")
    while job is not None:
        done.append(job)
        job = client.get("work/close/open")
    assert done == [b"job-0", b"job-1", b"job-2"]
    with server.mc() as mc:
        mc.send(b"stats queue\r\n")
        mc.expect(b"STAT work 3/3\r\nEND\r\n")
