"""The dashboard page (`GET /`) opened in a real headless browser (Debian's chromium, fresh
profile): after puts, each queue's name and depth must be in the DOM the page's script built
from /stats.json, and a queue name that looks like HTML must stay text."""

import os
import subprocess
from html.parser import HTMLParser

import pytest

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is not installed (scripts/deps --tests installs Debian's chromium)",
)


def rendered_dom(url, profile):
    """The DOM after the page's scripts ran for a few (virtual) seconds."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
         "--dump-dom", url],
        capture_output=True, timeout=90, check=True,
    )
    return result.stdout.decode()


class Queues(HTMLParser):
    """Collects, per `<section class="queue" data-queue=NAME>`, the texts of its `h2.name` and
    `b.depth`."""

    def __init__(self):
        super().__init__()
        self.queues = {}
        self.current = None
        self.field = None
        self.tags_inside = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "section" and "queue" in classes:
            self.current = attrs["data-queue"]
            self.queues[self.current] = {"name": "", "depth": "", "tags_in_name": []}
        elif self.current is not None and tag == "h2" and "name" in classes:
            self.field = "name"
        elif self.current is not None and tag == "b" and "depth" in classes:
            self.field = "depth"
        elif self.field == "name":
            self.queues[self.current]["tags_in_name"].append(tag)

    def handle_endtag(self, tag):
        if tag in ("h2", "b") and self.field and not (tag == "b" and self.field == "name"):
            self.field = None
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current is not None and self.field:
            self.queues[self.current][self.field] += data


def queues_in(dom):
    parser = Queues()
    parser.feed(dom)
    return parser.queues


HTML_NAME = "<b>bold</b>&amp;"


def test_dashboard_shows_queue_names_and_depths(server, tmp_path):
    with server.mc() as mc:
        for i in range(3):
            assert mc.set(b"orders", b"order-%d" % i) == b"STORED\r\n"
        assert mc.set(HTML_NAME.encode(), b"x") == b"STORED\r\n"
        url = f"http://127.0.0.1:{server.port}/"
        queues = queues_in(rendered_dom(url, tmp_path / "profile1"))
        assert queues["orders"]["name"] == "orders"
        assert queues["orders"]["depth"] == "3"
        # The name is text, not markup: no <b> element was created from it.
        assert queues[HTML_NAME]["name"] == HTML_NAME
        assert queues[HTML_NAME]["tags_in_name"] == []
        assert queues[HTML_NAME]["depth"] == "1"

        assert mc.get_one(b"orders") == b"order-0"
        assert mc.set(b"later", b"y") == b"STORED\r\n"
        queues = queues_in(rendered_dom(url, tmp_path / "profile2"))
        assert queues["orders"]["depth"] == "2"
        assert queues["later"]["depth"] == "1"
        assert list(queues) == sorted(queues), "cards in name order"
