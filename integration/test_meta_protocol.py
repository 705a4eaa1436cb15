"""memcached's meta commands on raw sockets: protocol-spec/meta.md, byte for byte. They share the
text connection with the classic commands. The meta-memcache client is in
test_binary_meta_clients.py."""

import base64
import time

import pytest

# Every test runs as users run the server (one event loop) and with several loops.
pytestmark = pytest.mark.event_loops


def ms(c, key, body, flags=b""):
    c.send(b"ms %s %d%s\r\n%s\r\n" % (key, len(body), b" " + flags if flags else b"", body))
    return c.read_line()


def test_ms_appends_and_mg_v_takes_in_order_with_flags(server):
    with server.mc() as c:
        assert ms(c, b"q", b"hello", b"T0 F7") == b"HD\r\n"
        assert ms(c, b"q", b"world", b"F3 k O1 c s") == b"HD kq O1 c0 s5\r\n"
        c.send(b"mg q v\r\n")
        c.expect(b"VA 5\r\nhello\r\n")
        c.send(b"mg q s v t f k O123 l h\r\n")
        c.expect(b"VA 5 s5 t-1 f3 kq O123 l0 h0\r\nworld\r\n")
        # An empty queue: EN, with O and k still returned.
        assert c.cmd(b"mg q v") == b"EN\r\n"
        assert c.cmd(b"mg q v k O9") == b"EN kq O9\r\n"


def test_mg_without_v_peeks(server):
    with server.mc() as c:
        assert c.cmd(b"mg q s f") == b"EN\r\n"
        assert ms(c, b"q", b"hello", b"F3") == b"HD\r\n"
        assert c.cmd(b"mg q s f") == b"HD s5 f3\r\n"
        assert c.cmd(b"mg q s f") == b"HD s5 f3\r\n", "a peek took the message"
        c.send(b"mg q v\r\n")
        c.expect(b"VA 5\r\nhello\r\n")
        assert c.cmd(b"mg q/open") == b"CLIENT_ERROR bad option combination\r\n"


def test_quiet_pipeline_ends_with_mn(server):
    with server.mc() as c:
        assert ms(c, b"a", b"1") == b"HD\r\n"
        c.send(b"mg a v q k\r\nmg b v q k\r\nmn\r\n")
        c.expect(b"VA 1 ka\r\n1\r\nMN\r\n")
        assert c.nothing_pending(0.2)


def test_quiet_sets_then_mn_answer_once_everything_is_stored(server):
    n = 300
    with server.mc() as c, server.mc() as other:
        c.send(b"".join(b"ms mq %d q F%d\r\nm%d\r\n" % (len(b"m%d" % i), i, i) for i in range(n)) + b"mn\r\n")
        assert c.read_line(timeout=30) == b"MN\r\n", "a quiet ms answered"
        assert other.stats(b"queue") == {"mq": f"{n}/0"}
        for i in range(n):
            c.send(b"mg mq v f\r\n")
            c.expect(b"VA %d f%d\r\nm%d\r\n" % (len(b"m%d" % i), i, i))


def test_quiet_mode_never_hides_an_error(make_server):
    server = make_server(args=["--max-message-size", "16"])
    with server.mc() as c:
        c.send(
            b"ms e 20 q\r\n" + b"x" * 20 + b"\r\n"  # too large
            + b"ms e 2 q MA\r\nab\r\n"  # append: not stored
            + b"ms e 2 q C5\r\nab\r\n"  # compare-and-swap: exists
            + b"md nothing q\r\n"  # NF is not hidden
            + b"mg e/peek/open v q\r\n"  # bad option combination
            + b"ms e 2 q\r\nok\r\n"
            + b"mn\r\n"
        )
        c.expect(
            b"SERVER_ERROR object too large for cache\r\n"
            b"NS\r\n"
            b"EX\r\n"
            b"NF\r\n"
            b"CLIENT_ERROR bad option combination\r\n"
            b"MN\r\n"
        )
        c.send(b"mg e v\r\n")
        c.expect(b"VA 2\r\nok\r\n")


def test_md_deletes_and_md_x_flushes(server):
    with server.mc() as c:
        assert ms(c, b"d", b"x") == b"HD\r\n"
        assert c.cmd(b"md d k O5") == b"HD kd O5\r\n"
        assert c.cmd(b"md d") == b"NF\r\n"
        assert c.stats(b"queue") == {}
        assert ms(c, b"f", b"x") == b"HD\r\n"
        assert c.cmd(b"md f x") == b"HD\r\n"
        assert c.stats(b"queue") == {"f": "1/1"}, "md x deleted the queue"
        assert c.cmd(b"mg f v") == b"EN\r\n"
        c.send(b"md f q\r\nmn\r\n")
        c.expect(b"MN\r\n")


def test_base64_keys_name_any_queue(server):
    with server.mc() as c, server.mb() as b:
        name = b"sp ace\r\n\x00"
        key = base64.b64encode(name)
        assert ms(c, key, b"v1", b"b k") == b"HD k" + key + b" b\r\n"
        assert b.get(name).value == b"v1"
        assert b.set(name, b"v2").status == 0
        c.send(b"mg " + key + b" b v k\r\n")
        c.expect(b"VA 2 k" + key + b" b\r\nv2\r\n")
        # The read options are part of the encoded key.
        c.send(b"mg " + base64.b64encode(b"q/t=300") + b" b v\r\n")
        start = time.monotonic()
        assert c.read_line() == b"EN\r\n"
        assert time.monotonic() - start >= 0.25
        assert c.cmd(b"mg !!!! b v") == b"CLIENT_ERROR error decoding key\r\n"


def test_reliable_and_blocking_reads(server):
    with server.mc() as c, server.mc() as other:
        for body in (b"j1", b"j2"):
            assert ms(c, b"w", body) == b"HD\r\n"
        c.send(b"mg w/open v\r\n")
        c.expect(b"VA 2\r\nj1\r\n")
        other.send(b"mg w v\r\n")
        other.expect(b"VA 2\r\nj2\r\n")
        assert c.cmd(b"mg w/abort v") == b"EN\r\n"
        c.send(b"mg w/open v\r\n")
        c.expect(b"VA 2\r\nj1\r\n")
        assert c.cmd(b"mg w/close v") == b"EN\r\n"
        assert other.cmd(b"mg w v") == b"EN\r\n"
        # Blocking: times out with EN, or is woken by a set from another connection (mqmq here).
        start = time.monotonic()
        assert c.cmd(b"mg w/t=400 v") == b"EN\r\n"
        assert 0.3 <= time.monotonic() - start < 3
        c.send(b"mg w/t=5000 v f\r\n")
        time.sleep(0.3)
        assert c.nothing_pending(0.05)
        with server.mq() as mq:
            assert mq.put(b"w", b"woken") == [b"OK"]
        c.expect(b"VA 5 f0\r\nwoken\r\n", timeout=5)


def test_classic_and_meta_commands_mix_on_one_connection(server):
    with server.mc() as c:
        c.send(b"set q 0 0 1\r\nA\r\nms q 1 F5\r\nB\r\nget q\r\nmg q v f k\r\nmn\r\nget q\r\n")
        c.expect(b"STORED\r\nHD\r\nVALUE q 0 1\r\nA\r\nEND\r\nVA 1 f5 kq\r\nB\r\nMN\r\nEND\r\n")


def test_refusals(server):
    with server.mc() as c:
        assert c.cmd(b"ma q") == b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
        assert c.cmd(b"mg q v N30") == b"CLIENT_ERROR flag not supported on a queue\r\n"
        assert c.cmd(b"mg q v !") == b"CLIENT_ERROR invalid flag\r\n"
        assert c.cmd(b"md q I") == b"CLIENT_ERROR flag not supported on a queue\r\n"
        # A refused ms has its data block discarded, never run as a command.
        assert ms(c, b"q", b"flush_all", b"MZ") == b"CLIENT_ERROR invalid mode for ms M token\r\n"
        assert ms(c, b"q", b"x") == b"HD\r\n"
        c.send(b"mg q v\r\n")
        c.expect(b"VA 1\r\nx\r\n")


def test_me_shows_the_head_message(server):
    with server.mc() as c:
        assert c.cmd(b"me q") == b"EN\r\n"
        assert ms(c, b"q", b"hello") == b"HD\r\n"
        line = c.cmd(b"me q")
        assert line.startswith(b"ME q exp=-1 la=0 cas=") and line.endswith(b" fetch=no cls=1 size=5\r\n")
        c.send(b"mg q v\r\n")
        c.expect(b"VA 5\r\nhello\r\n")
