"""Unmodified memcache client libraries, used the way MemcacheQ users use them."""

import memcache  # python-memcached
import pytest
from pymemcache.client.base import Client as PymemcacheClient


@pytest.fixture
def pymc(server):
    client = PymemcacheClient(("127.0.0.1", server.port), connect_timeout=5, timeout=10)
    yield client
    client.close()


@pytest.fixture
def pythonmc(server):
    client = memcache.Client([f"127.0.0.1:{server.port}"], socket_timeout=10)
    yield client
    client.disconnect_all()


# pymemcache ---------------------------------------------------------------------------------


def test_pymemcache_set_get_fifo(pymc):
    # Default noreply=True: pymemcache sends `set ... noreply` and does not wait.
    assert pymc.set("jobs", b"first") is True
    assert pymc.set("jobs", b"second", noreply=False) is True
    assert pymc.get("jobs") == b"first"
    assert pymc.get("jobs") == b"second"
    assert pymc.get("jobs") is None
    assert pymc.get("jobs", default=b"none") == b"none"


def test_pymemcache_get_many(pymc):
    pymc.set("qa", b"a1", noreply=False)
    pymc.set("qb", b"b1", noreply=False)
    assert pymc.get_many(["qa", "qb", "qc"]) == {"qa": b"a1", "qb": b"b1"}
    assert pymc.get_many(["qa", "qb"]) == {}


def test_pymemcache_delete(pymc):
    pymc.set("del", b"x", noreply=False)
    assert pymc.delete("del", noreply=False) is True
    assert pymc.delete("del", noreply=False) is False
    assert pymc.get("del") is None
    pymc.set("del", b"y", noreply=False)
    assert pymc.delete("del") is True  # noreply
    assert pymc.get("del") is None


def test_pymemcache_stats_and_version(pymc, server):
    pymc.set("st", b"1", noreply=False)
    pymc.set("st", b"2", noreply=False)
    assert pymc.get("st") == b"1"
    stats = pymc.stats()
    assert stats[b"pid"] == server.proc.pid
    assert stats[b"curr_items"] == 1
    assert stats[b"cmd_set"] == 2
    assert stats[b"cmd_get"] == 1
    # (pymemcache drops `stats queue` values: "2/1" is not an int, so it is not checked here.)
    version = pymc.version()
    assert version.count(b".") == 2


def test_pymemcache_large_binary_value(pymc):
    body = bytes(range(256)) * 1000
    assert pymc.set("big", body, noreply=False) is True
    assert pymc.get("big") == body


# python-memcached ---------------------------------------------------------------------------


def test_python_memcached_set_get_fifo(pythonmc):
    assert pythonmc.set("demoqueue1", "message body here")
    assert pythonmc.set("demoqueue1", "second message")
    assert pythonmc.get("demoqueue1") == "message body here"
    assert pythonmc.get("demoqueue1") == "second message"
    assert pythonmc.get("demoqueue1") is None


def test_python_memcached_bytes_and_objects(pythonmc):
    assert pythonmc.set("objs", b"raw bytes")
    assert pythonmc.set("objs", 42)
    assert pythonmc.set("objs", {"a": [1, 2]})
    assert pythonmc.get("objs") == b"raw bytes"
    assert pythonmc.get("objs") == 42
    assert pythonmc.get("objs") == {"a": [1, 2]}


def test_python_memcached_delete(pythonmc):
    assert pythonmc.set("dq", "x")
    assert pythonmc.delete("dq") == 1
    assert pythonmc.get("dq") is None
    assert pythonmc.delete("dq") == 0


def test_python_memcached_get_stats(pythonmc, server):
    assert pythonmc.set("sq", "a")
    assert pythonmc.set("sq", "b")
    assert pythonmc.get("sq") == "a"
    [(name, stats)] = pythonmc.get_stats()
    assert str(server.port) in name
    assert int(stats["pid"]) == server.proc.pid
    assert int(stats["curr_items"]) == 1
    assert int(stats["cmd_set"]) == 2
    [(_, queues)] = pythonmc.get_stats("queue")
    assert queues == {"sq": "2/1"}


def test_python_memcached_get_multi(pythonmc):
    assert pythonmc.set("m1", "one")
    assert pythonmc.set("m2", "two")
    assert pythonmc.get_multi(["m1", "m2", "m3"]) == {"m1": "one", "m2": "two"}
    assert pythonmc.get_multi(["m1", "m2"]) == {}
