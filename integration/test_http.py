"""HTTP on the memcache/mqmq listeners: /metrics parsed by the real prometheus_client text
parser, /stats.json, the dashboard page, and the HTTP rules (GET/HEAD only, keep-alive, head
size limit, 404) from protocol-spec/http.md."""

import http.client
import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Conn, frame, wait_for

MAX_HEAD = 8 << 10


def get(server, path, method="GET"):
    """One request on a fresh connection through Python's own HTTP client."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def read_response(c, head_only=False):
    """Reads one response off a raw connection: (status, headers, body)."""
    status_line = c.read_line()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = c.read_line()
        if line == b"\r\n":
            break
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    body = b"" if head_only else c.read_exactly(length)
    return status, headers, body


def scrape(server):
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    return families, body.decode()


def value(families, family, sample_name=None, **labels):
    """The value of the one sample of `family` named `sample_name` with exactly these labels."""
    f = families[family]
    name = sample_name or f.name
    found = [s.value for s in f.samples if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found} in {f.samples}"
    return found[0]


WEIRD = 'we\\ird"q'  # a backslash and a quote: the label value must be escaped


def test_metrics_follow_puts_gets_opens_and_waiters(server):
    started = time.monotonic()
    with server.mc() as mc, server.mq() as mq, server.mc() as opener, server.mq() as waiter:
        for i in range(3):
            assert mc.set(b"jobs", b"job-%d" % i) == b"STORED\r\n"
        assert mq.put(WEIRD.encode(), b"12345") == [b"OK"]
        assert mc.get_one(b"jobs") == b"job-0"
        opener.send(b"get jobs/open\r\n")
        opener.expect(b"VALUE jobs/open 0 5\r\njob-1\r\nEND\r\n")
        waiter.send_frame(b"Get", b"idle", b"5000")
        time.sleep(0.3)  # the oldest message's age grows past 0.3 s
        families, text = scrape(server)

        # Every family has HELP and TYPE lines, and counters end in _total.
        for f in families.values():
            assert f.documentation, f"{f.name} has no HELP"
            assert f.type in ("gauge", "counter", "histogram"), f"{f.name}: {f.type}"
            assert f.name.startswith("mqd_")
        assert text.count("# TYPE mqd_queue_enqueued_total counter") == 1

        q = {"queue": "jobs"}
        assert value(families, "mqd_queue_items", **q) == 1, "job-2 waits; job-1 is open"
        assert value(families, "mqd_queue_open_reads", **q) == 1
        assert value(families, "mqd_queue_bytes", **q) == 10, "job-1 (open) and job-2"
        assert value(families, "mqd_queue_enqueued", "mqd_queue_enqueued_total", **q) == 3
        assert value(families, "mqd_queue_dequeued", "mqd_queue_dequeued_total", **q) == 1
        assert value(families, "mqd_queue_expired", "mqd_queue_expired_total", **q) == 0
        assert value(families, "mqd_queue_discarded", "mqd_queue_discarded_total", **q) == 0
        assert value(families, "mqd_queue_oldest_age_seconds", **q) >= 0.3
        assert value(families, "mqd_queue_waiters", queue="idle") == 1
        assert value(families, "mqd_queue_items", queue=WEIRD) == 1, "escaped name read back"
        assert value(families, "mqd_queue_bytes", queue=WEIRD) == 5
        assert value(families, "mqd_queues") == 3

        assert value(families, "mqd_connections", protocol="memcache") == 2
        assert value(families, "mqd_connections", protocol="mqmq") == 2
        assert value(families, "mqd_connections", protocol="http") == 1, "this scrape"
        assert value(families, "mqd_commands", "mqd_commands_total", kind="set") == 4
        assert value(families, "mqd_commands", "mqd_commands_total", kind="get") == 3
        assert value(families, "mqd_commands", "mqd_commands_total", kind="peek") == 0
        assert value(families, "mqd_get_hits", "mqd_get_hits_total") == 2
        assert value(families, "mqd_commit_batches", "mqd_commit_batches_total") >= 1

        # Histograms: cumulative buckets ending in +Inf == _count. The default --sync always
        # fsyncs every commit that carries a put (there were four), and writes no reply waits
        # for (the get, the open) within 0.1 s: at most one more fsync per 0.1 s.
        for name in ("mqd_commit_batch_size", "mqd_fsync_duration_seconds"):
            samples = [s for s in families[name].samples if s.name == name + "_bucket"]
            counts = [s.value for s in samples]
            assert counts == sorted(counts), f"{name} buckets are not cumulative"
            assert samples[-1].labels["le"] == "+Inf"
            assert counts[-1] == value(families, name, name + "_count")
        fsyncs = value(families, "mqd_fsync_duration_seconds", "mqd_fsync_duration_seconds_count")
        idle_syncs = int((time.monotonic() - started) / 0.1) + 1
        assert 1 <= fsyncs <= 4 + idle_syncs
        assert value(families, "mqd_fsync_duration_seconds", "mqd_fsync_duration_seconds_sum") > 0
        puts = value(families, "mqd_commit_batch_size", "mqd_commit_batch_size_sum")
        assert puts == 4, "each put answered by exactly one commit"

        assert value(families, "mqd_disk_below_reserve") == 0
        assert value(families, "mqd_disk_free_bytes") > 0
        assert value(families, "mqd_rocksdb_memory_bytes", kind="memtables") > 0
        assert {s.labels["kind"] for s in families["mqd_rocksdb_memory_bytes"].samples} == {
            "memtables", "block_cache", "block_cache_pinned", "table_readers"}

        # The waiter is served by the next put; the gauges follow.
        assert mc.set(b"idle", b"now") == b"STORED\r\n"
        assert waiter.read_frame() == [b"OK", b"now"]
        opener.send(b"get jobs/close\r\n")
        opener.expect(b"END\r\n")
        families, _ = scrape(server)
        assert value(families, "mqd_queue_waiters", queue="idle") == 0
        assert value(families, "mqd_queue_open_reads", queue="jobs") == 0
        assert value(families, "mqd_queue_dequeued", "mqd_queue_dequeued_total", queue="jobs") == 2
        assert value(families, "mqd_queue_dequeued", "mqd_queue_dequeued_total", queue="idle") == 1
    assert wait_for(lambda: value(scrape(server)[0], "mqd_connections", protocol="memcache") == 0)


def test_message_memory_is_reported_and_given_back_when_read(server):
    # Messages are kept in memory from their commit until they are read: each costs its body
    # plus 64 bytes, in /metrics and /stats.json alike.
    with server.mc() as mc:
        for i in range(10):
            assert mc.set(b"mem", b"%06d" % i) == b"STORED\r\n"
        families, _ = scrape(server)
        assert value(families, "mqd_message_memory_bytes", kind="recent") == 10 * (6 + 64)
        assert value(families, "mqd_message_memory_bytes", kind="read_ahead") == 0
        status, _, body = get(server, "/stats.json")
        assert json.loads(body)["message_memory_bytes"] == {"recent": 700, "read_ahead": 0}
        for i in range(10):
            assert mc.get_one(b"mem") == b"%06d" % i
        families, _ = scrape(server)
        assert value(families, "mqd_message_memory_bytes", kind="recent") == 0


def test_expired_and_discarded_totals(make_server):
    server = make_server(["--max-queue-items", "2", "--discard-old-when-full"])
    with server.mc() as mc:
        assert mc.set(b"short", b"x", exptime=1) == b"STORED\r\n"
        for i in range(3):
            assert mc.set(b"full", b"%d" % i) == b"STORED\r\n"
        assert wait_for(lambda: value(scrape(server)[0], "mqd_queue_expired",
                                      "mqd_queue_expired_total", queue="short") == 1, timeout=5)
        families, _ = scrape(server)
        assert value(families, "mqd_queue_discarded", "mqd_queue_discarded_total", queue="full") == 1
        assert value(families, "mqd_queue_items", queue="full") == 2
        assert value(families, "mqd_queue_items", queue="short") == 0


def test_stats_json_has_kestrel_names_and_agrees_with_metrics(server):
    # The harness's readiness probe was a memcache connection of its own; count from here.
    opened_before = json.loads(get(server, "/stats.json")[2])["connections"]["memcache"]["opened"]
    with server.mc() as mc:
        mc.set(b"a", b"hello")
        mc.set(b"a", b"world")
        mc.set(b"b", b"x")
        assert mc.get_one(b"b") == b"x"
    status, headers, body = get(server, "/stats.json")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    stats = json.loads(body)
    assert stats["curr_queues"] == 2
    assert stats["curr_items"] == 2
    assert stats["total_items"] == 3
    assert stats["cmd_set"] == 3 and stats["cmd_get"] == 1 and stats["get_hits"] == 1
    assert stats["connections"]["http"]["open"] == 1
    assert stats["connections"]["memcache"]["opened"] == opened_before + 1
    assert stats["commit_batches"] >= 1
    assert stats["fsync_usec"]["count"] >= 1
    assert stats["disk"]["below_reserve"] is False
    assert stats["rocksdb_memory_bytes"]["memtables"] > 0
    assert abs(stats["time_msec"] / 1000 - time.time()) < 60
    queues = {q["name"]: q for q in stats["queues"]}
    assert [q["name"] for q in stats["queues"]] == ["a", "b"], "sorted by name"
    a = queues["a"]
    assert (a["items"], a["bytes"], a["total_items"], a["dequeued_items"]) == (2, 10, 2, 0)
    assert a["age_msec"] >= 0 and a["waiters"] == 0 and a["open_transactions"] == 0
    assert a["expired_items"] == 0 and a["discarded"] == 0 and a["total_flushes"] == 0
    b = queues["b"]
    assert (b["items"], b["total_items"], b["dequeued_items"], b["age_msec"]) == (0, 1, 1, 0)

    families, _ = scrape(server)
    assert value(families, "mqd_queue_items", queue="a") == a["items"]
    assert value(families, "mqd_queue_bytes", queue="a") == a["bytes"]


def test_keep_alive_pipelining_and_head(server):
    with Conn(server.port) as c:
        c.send(b"GET /stats.json HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(c)
        assert status == 200 and "connection" not in headers
        json.loads(body)
        # Two pipelined requests in one write, then a HEAD: all on the same connection.
        c.send(b"GET /metrics HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n")
        assert read_response(c)[0] == 200
        status, _, body = read_response(c)
        assert status == 404 and b"/metrics" in body
        c.send(b"HEAD /stats.json HTTP/1.1\r\n\r\n")
        status, headers, _ = read_response(c, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 100
        c.nothing_pending()
        # Sent a byte at a time, a request is answered once its head is complete.
        c.send_slowly(b"GET / HTTP/1.1\r\n\r\n")
        status, headers, body = read_response(c)
        assert status == 200 and headers["content-type"].startswith("text/html")
        c.send(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(c)
        assert status == 200 and headers["connection"] == "close"
        assert c.closed_by_server()
    with Conn(server.port) as c:
        c.send(b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = read_response(c)
        assert status == 200 and headers["connection"] == "keep-alive"
        c.send(b"GET /metrics HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(c)
        assert status == 200 and headers["connection"] == "close"
        assert c.closed_by_server(), "HTTP/1.0 without keep-alive closes"


def read_chunked(c):
    """A chunked body off a raw connection, up to and including its last chunk."""
    body = b""
    while True:
        size = int(c.read_line().split(b";")[0], 16)
        if size == 0:
            assert c.read_line() == b"\r\n", "no trailers"
            return body
        body += c.read_exactly(size + 2)[:-2]


def read_head(c):
    """A response's status line and headers off a raw connection."""
    status_line = c.read_line()
    headers = {}
    while (line := c.read_line()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers


def test_bodies_larger_than_a_piece_are_streamed(server):
    # 3,000 queues: /metrics is megabytes. It is rendered as the client reads it, chunked for
    # HTTP/1.1 (keep-alive and pipelining still hold) and ending at the close for HTTP/1.0.
    names = [b"many-%04d" % i for i in range(3000)]
    with server.mc() as mc:
        mc.send(b"".join(b"set %s 0 0 1\r\nx\r\n" % q for q in names))
        for _ in names:
            assert mc.read_line() == b"STORED\r\n"
    status, headers, body = get(server, "/metrics")
    assert status == 200 and headers.get("Transfer-Encoding") == "chunked", headers
    assert "Content-Length" not in headers
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    listed = {s.labels["queue"] for s in families["mqd_queue_items"].samples}
    assert listed == {q.decode() for q in names}
    assert value(families, "mqd_queue_oldest_age_seconds", queue="many-2999") >= 0
    assert value(families, "mqd_queues") == 3000, "the server-wide part follows the queues"

    with Conn(server.port) as c:
        c.send(b"GET /stats.json HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n")
        status_line, headers = read_head(c)
        assert status_line == b"HTTP/1.1 200 OK\r\n" and headers["transfer-encoding"] == "chunked"
        stats = json.loads(read_chunked(c))
        assert [q["name"] for q in stats["queues"]] == [q.decode() for q in names]
        status, _, body = read_response(c)
        assert status == 404, "the pipelined request is answered after the streamed body"
        c.send(b"HEAD /metrics HTTP/1.1\r\n\r\n")
        status_line, headers = read_head(c)
        assert status_line == b"HTTP/1.1 200 OK\r\n" and headers["transfer-encoding"] == "chunked"
        assert c.nothing_pending(), "HEAD sends no body"
    with Conn(server.port) as c:
        c.send(b"GET /stats.json HTTP/1.0\r\n\r\n")
        status_line, headers = read_head(c)
        assert headers["connection"] == "close" and "content-length" not in headers
        assert "transfer-encoding" not in headers, "HTTP/1.0 has no chunked encoding"
        assert c.closed_by_server(timeout=30), "the body ends at the close"
        assert len(json.loads(bytes(c.buf))["queues"]) == 3000


def test_only_get_and_head(server):
    status, headers, body = get(server, "/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, _ = get(server, "/", method="DELETE")
    assert status == 405
    with Conn(server.port) as c:
        c.send(b"PUT /metrics HTTP/1.1\r\n\r\n")
        assert read_response(c)[0] == 405
        c.send(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert read_response(c)[0] == 200, "a 405 without a body keeps the connection"
        # A body is never read: the answer comes and the connection closes.
        c.send(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        status, headers, _ = read_response(c)
        assert status == 405 and headers["connection"] == "close"
        assert c.closed_by_server()


def test_unknown_paths_and_bad_heads(server):
    assert get(server, "/metricsx")[0] == 404
    assert get(server, "/stats.json/")[0] == 404
    assert get(server, "/metrics?name[]=x")[0] == 200, "a query string is ignored"
    for bad in (b"GET /\r\n\r\n", b"GET metrics HTTP/1.1\r\n\r\n",
                b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"Get / HTTP/1.1\r\n\r\n"):
        with Conn(server.port) as c:
            c.send(bad)
            status, headers, _ = read_response(c)
            assert status == 400 and headers["connection"] == "close", bad
            assert c.closed_by_server()
    with Conn(server.port) as c:
        c.send(b"GET / HTTP/2.0\r\n\r\n")
        assert read_response(c)[0] == 505
        assert c.closed_by_server()


def test_oversized_head_is_refused_before_it_ends(server):
    with Conn(server.port) as c:
        c.send(b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * MAX_HEAD)
        status, headers, body = read_response(c)
        assert status == 431 and headers["connection"] == "close"
        assert c.closed_by_server()
    # Just under the limit is fine.
    with Conn(server.port) as c:
        head = b"GET /metrics HTTP/1.1\r\nX-Filler: "
        filler = MAX_HEAD - len(head) - 4
        c.send(head + b"a" * filler + b"\r\n\r\n")
        assert read_response(c)[0] == 200
    server.assert_alive()


def test_lowercase_is_still_memcache_and_binary_still_mqmq(server):
    with server.mc() as mc:
        assert mc.cmd(b"version").startswith(b"VERSION ")
    with Conn(server.port) as c:
        c.send(frame("Put", "q", "x"))
        c.expect(b"\x00\x00\x00\x06\x00\x00\x00\x02OK")
    # A memcache command in upper case is now an HTTP request line: 400 and close.
    with Conn(server.port) as c:
        c.send(b"GET q\r\n")
        status, _, _ = read_response(c)
        assert status == 400
        assert c.closed_by_server()


def test_dashboard_page_is_self_contained(server):
    status, headers, body = get(server, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert "stats.json" in page
    for external in ("<script src", "<link", "@import", "https://", "//cdn"):
        assert external not in page, f"the page loads something from elsewhere: {external}"
    assert get(server, "/index.html")[2] == body


@pytest.mark.parametrize("listeners", [2])
def test_every_listener_serves_http(make_server, listeners):
    server = make_server(listeners=listeners)
    for port in server.ports:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/stats.json")
        assert conn.getresponse().status == 200
        conn.close()


def test_grafana_dashboard_uses_only_exported_metrics(server):
    """scripts/grafana-dashboard.json must keep up with the names /metrics exports."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {name for e in exprs for name in re.findall(r"\bmqd_[a-z_]+", e)}
    assert len(used) >= 20, used
    with server.mc() as mc:
        assert mc.set(b"q", b"x") == b"STORED\r\n"
    families, _ = scrape(server)
    exported = {s.name for f in families.values() for s in f.samples}
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_only_pages_listing_every_queue_wait_for_output_room(make_server):
    """With more than 1,000 queues a `/metrics` or `/stats.json` request waits for room in the
    output budget like a large read (its snapshot and body grow with the queues); other pages
    do not wait. A scrape that waited and was served leaves the line: on a keep-alive
    connection it must not keep its place at the front and hold every later large read."""
    server = make_server(args=["--output-budget", "2m"])
    body = b"b" * (1 << 20)
    with server.mc() as mc:
        mc.send(b"".join(b"set q%04d 0 0 1\r\nx\r\n" % i for i in range(1001)))
        for _ in range(1001):
            assert mc.read_line() == b"STORED\r\n"
        assert mc.set(b"big", body) == b"STORED\r\n"
    # Blocked reads reserve room for the largest message (1 MB) each: two spend the budget.
    hogs = [Conn(server.port) for _ in range(3)]
    for hog in hogs:
        hog.send(b"get nothing-yet/t=30000\r\n")
    time.sleep(0.5)
    scraper = Conn(server.port)
    scraper.send(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert scraper.nothing_pending(wait=0.5), "a scrape listing 1,001 queues ran with no room"
    status, _, page = get(server, "/")
    assert status == 200 and b"<html" in page.lower(), "the dashboard page waited for room"
    for hog in hogs:
        hog.close()
    status_line, headers = read_head(scraper)
    assert status_line == b"HTTP/1.1 200 OK\r\n", status_line
    families = {f.name: f for f in text_string_to_metric_families(read_chunked(scraper).decode())}
    assert value(families, "mqd_queues") >= 1002
    # The scraper's connection stays open; a large read after it is served.
    with server.mc() as reader:
        reader.send(b"get big/peek\r\n")
        assert reader.read_line(timeout=10) == b"VALUE big/peek 0 %d\r\n" % len(body)
        assert reader.read_exactly(len(body) + 2) == body + b"\r\n"
        assert reader.read_line() == b"END\r\n"
    scraper.close()
