"""Unmodified client libraries that speak the memcache binary protocol or the meta commands, used
through their normal APIs: python-binary-memcached and pylibmc (binary=True), meta-memcache,
Ruby's dalli (Debian's ruby-dalli 3.0.6) and Node's memjs. scripts/test installs them all
(scripts/deps the Debian packages, pip and npm the others); a missing one fails its tests."""

import json
import os
import subprocess
import time
from pathlib import Path

import bmemcached
import pylibmc
import pytest
from meta_memcache import CacheClient, ServerAddress, connection_pool_factory_builder

CLIENTS = Path(__file__).resolve().parent / "clients"


def wait_in_thread(delay, fn):
    import threading

    timer = threading.Timer(delay, fn)
    timer.start()
    return timer


def check_reliable_and_blocking_reads(get, put, wake, value=str):
    """Kestrel's read modes through one client: `/open`, `/abort` and `/close/open` in turn, then
    a blocking read that times out and one that `wake` (another client's put of "woken" to
    `idle`, 0.3 s later) answers. `value` spells a message as the client returns it."""
    job = lambda i: value("job-%d" % i)
    for i in range(3):
        assert put("work", job(i))
    assert get("work/open") == job(0)
    assert get("work/abort") is None
    done = []
    item = get("work/open")
    while item is not None:
        done.append(item)
        item = get("work/close/open")
    assert done == [job(0), job(1), job(2)]
    assert get("work/open") is None
    start = time.monotonic()
    assert get("idle/t=500") is None
    assert 0.4 <= time.monotonic() - start < 3
    timer = wait_in_thread(0.3, wake)
    start = time.monotonic()
    assert get("idle/t=5000") == value("woken")
    assert time.monotonic() - start < 3
    timer.join()


# python-binary-memcached ----------------------------------------------------------------------


@pytest.fixture
def bmc(server):
    client = bmemcached.Client((f"127.0.0.1:{server.port}",), socket_timeout=10)
    yield client
    client.disconnect_all()


def test_bmemcached_fifo_flags_and_miss(bmc):
    assert bmc.set("jobs", "first") and bmc.set("jobs", b"second")
    assert bmc.set("jobs", {"id": 7, "tags": ["a"]}) and bmc.set("jobs", 42)
    # Its flags say how to decode each value: they come back as they were set.
    assert bmc.get("jobs") == "first"
    assert bmc.get("jobs") == b"second"
    assert bmc.get("jobs") == {"id": 7, "tags": ["a"]}
    assert bmc.get("jobs") == 42
    assert bmc.get("jobs") is None


def test_bmemcached_get_multi_takes_one_from_each(bmc):
    for q in ("ma", "mb"):
        assert bmc.set(q, q + "1") and bmc.set(q, q + "2")
    assert bmc.get_multi(["ma", "mb", "mc"]) == {"ma": "ma1", "mb": "mb1"}
    assert bmc.get_multi(["ma", "mb"]) == {"ma": "ma2", "mb": "mb2"}
    assert bmc.get_multi(["ma", "mb"]) == {}


def test_bmemcached_reliable_and_blocking_reads(bmc, server):
    with server.mc() as mc:
        check_reliable_and_blocking_reads(bmc.get, bmc.set, lambda: mc.set("idle", "woken"))


def test_bmemcached_delete_stats_and_refusals(bmc):
    assert bmc.set("gone", "x")
    assert bmc.delete("gone")
    assert bmc.get("gone") is None
    assert bmc.add("jobs", "x") is False
    with pytest.raises(bmemcached.exceptions.MemcachedException, match="Code: 6"):
        bmc.incr("counter", 1)
    assert bmc.set("kept", "y")
    ((_, stats),) = bmc.stats().items()
    assert stats["cmd_set"] == b"2"
    ((_, queues),) = bmc.stats("queue").items()
    assert queues == {"kept": b"1/0"}


def test_bmemcached_with_credentials_is_refused(server):
    """No SASL: a client configured with a password is told authentication failed."""
    client = bmemcached.Client((f"127.0.0.1:{server.port}",), "user", "secret", socket_timeout=10)
    try:
        # (Had the server answered SASL with 0x0081, as memcached without SASL does, this client
        # would take it as "no authentication needed" and go on.)
        with pytest.raises(bmemcached.exceptions.AuthenticationNotSupported):
            client.set("q", "x")
    finally:
        client.disconnect_all()
    with server.mc() as mc:
        assert mc.stats(b"queue") == {}, "an unauthenticated set was stored"


# pylibmc, binary=True ----------------------------------------------------------------------------


@pytest.fixture
def binlibmc(server):
    client = pylibmc.Client(
        [f"127.0.0.1:{server.port}"], binary=True, behaviors={"connect_timeout": 5000}
    )
    yield client
    client.disconnect_all()


def test_pylibmc_binary_fifo_flags_multi_get(binlibmc, server):
    assert binlibmc.set("jobs", b"first") and binlibmc.set("jobs", 42)
    assert binlibmc.set("jobs", {"id": 7})
    assert binlibmc.get("jobs") == b"first"
    assert binlibmc.get("jobs") == 42
    assert binlibmc.get("jobs") == {"id": 7}
    assert binlibmc.get("jobs") is None
    for q in ("ma", "mb"):
        assert binlibmc.set(q, q.encode() + b"1") and binlibmc.set(q, q.encode() + b"2")
    assert binlibmc.get_multi(["ma", "mb", "mc"]) == {"ma": b"ma1", "mb": b"mb1"}
    assert binlibmc.get_multi(["ma", "mb"]) == {"ma": b"ma2", "mb": b"mb2"}
    assert binlibmc.get_multi(["ma", "mb"]) == {}
    # The connection really speaks binary: the server counts it, and text sees the same queues.
    with server.mc() as mc:
        assert mc.stats(b"queue") == {"jobs": "3/3", "ma": "2/2", "mb": "2/2"}


def test_pylibmc_binary_reliable_and_blocking_reads(binlibmc, server):
    with server.mq() as mq:
        check_reliable_and_blocking_reads(
            binlibmc.get, binlibmc.set, lambda: mq.put(b"idle", b"woken"), value=str.encode
        )


def test_pylibmc_binary_delete_and_stats(binlibmc):
    assert binlibmc.set("gone", b"x")
    assert binlibmc.delete("gone")
    assert not binlibmc.delete("gone")
    ((_, stats),) = binlibmc.get_stats()
    assert int(stats["cmd_set"]) == 1
    assert binlibmc.add("jobs", b"x") is False


# meta-memcache ----------------------------------------------------------------------------------


@pytest.fixture
def meta(server):
    return CacheClient.cache_client_from_servers(
        servers=[ServerAddress(host="127.0.0.1", port=server.port)],
        connection_pool_factory_fn=connection_pool_factory_builder(),
    )


def test_meta_memcache_fifo_flags_and_miss(meta):
    for value in ("first", b"second", {"id": 7}, 42):
        assert meta.set("jobs", value, ttl=0)
    # Its serializer's flags (F on ms, f on mg) say how to decode each value.
    assert meta.get("jobs") == "first"
    assert meta.get("jobs") == b"second"
    assert meta.get("jobs") == {"id": 7}
    assert meta.get("jobs") == 42
    assert meta.get("jobs") is None


def test_meta_memcache_multi_get_and_quiet_sets(meta, server):
    # no_reply sends `ms ... q`; the client reads nothing back, the server must answer nothing.
    for i in range(50):
        assert meta.set("quiet", "m%d" % i, ttl=0, no_reply=True)
    assert meta.set("other", "o1", ttl=0)
    results = meta.multi_get(["quiet", "other", "none"])
    assert {k.key: v for k, v in results.items()} == {"quiet": "m0", "other": "o1", "none": None}
    assert [meta.get("quiet") for _ in range(49)] == ["m%d" % i for i in range(1, 50)]
    with server.mc() as mc:
        assert mc.stats(b"queue") == {"quiet": "50/50", "other": "1/1"}


def test_meta_memcache_reliable_and_blocking_reads(meta, server):
    # A text set has flags 0, which meta-memcache's serializer reads as a string.
    with server.mc() as mc:
        check_reliable_and_blocking_reads(
            meta.get, lambda key, value: meta.set(key, value, ttl=0), lambda: mc.set("idle", "woken")
        )


def test_meta_memcache_delete(meta):
    assert meta.set("gone", "x", ttl=0)
    assert meta.delete("gone")
    assert meta.get("gone") is None


# dalli and memjs: a scenario script each, run as a separate process ----------------------------


def run_scenario(server, argv, env=None):
    """Runs a client scenario against `server` and returns what it printed (a JSON object). A
    text `set` is left for it to read first; afterwards its `to_text` message is read over
    text."""
    with server.mc() as mc:
        assert mc.set("from_text", "hello from text") == b"STORED\r\n"
    result = subprocess.run(
        argv + [str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
    )
    assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}"
    out = json.loads(result.stdout.strip().splitlines()[-1])
    with server.mc() as mc:
        out["to_text"] = mc.get("to_text")
    return out


def check_scenario(out):
    assert out["fifo"] == ["one", "two", "three", None]
    assert out["typed"] == [{"id": 7, "tags": ["a"]}, "plain"]
    assert out["from_text"] == "hello from text"
    assert out["add"] is False
    assert out["delete"] == [True, None]
    assert out["reliable"] == ["j1", None, "j1", "j2", None, None]
    assert out["timeout_miss"] is None and 0.4 <= out["timeout_s"] < 3
    assert out["woken"] == "woken" and out["woken_s"] < 3
    assert out["stats_curr_items"] in ("1", "2")


def test_dalli(server):
    ruby = "/usr/bin/ruby"
    assert os.access(ruby, os.X_OK), "ruby is missing: scripts/deps --tests installs it"
    out = run_scenario(server, [ruby, str(CLIENTS / "dalli_scenario.rb")])
    assert out["version"].startswith("3."), out["version"]
    check_scenario(out)
    assert out["multi"] == [{"ma": "a1", "mb": "b1"}, {"ma": "a2"}]
    # dalli marks a marshalled object with flag 1: read over text, the flag is still there.
    [(key, flags, body, _)] = out["to_text"]
    assert (key, flags) == (b"to_text", 1) and body.startswith(b"\x04\x08")


def node_modules():
    """Where scripts/test installs memjs: $MQD_NODE_MODULES, else node/node_modules beside the
    binary's release directory (the cargo target directory)."""
    path = os.environ.get("MQD_NODE_MODULES")
    if path:
        return Path(path)
    return Path(os.environ["MQD_BIN"]).resolve().parent.parent / "node" / "node_modules"


def test_memjs(server):
    modules = node_modules()
    assert (modules / "memjs" / "package.json").exists(), (
        f"memjs is not installed in {modules}: scripts/test installs it"
    )
    out = run_scenario(
        server, ["node", str(CLIENTS / "memjs_scenario.js")], env={"NODE_PATH": str(modules)}
    )
    check_scenario(out)
    assert out["typed_flags"] == [1, 0]
    [(key, flags, body, _)] = out["to_text"]
    assert (key, flags, body) == (b"to_text", 1, b"[1,2]")
