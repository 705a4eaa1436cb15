"""Orderings that must hold however requests from different connections interleave: blocking
peeks, readers that vanish with an open message, pipelined sets to a full queue that discards.
Each test was written to fail on the code before its fix
(issue 8); the races are forced with blocked readers and pipelining, and looped where a window
stays.

Contract: protocol-spec/memcache.md sections 3.1, 4 and 5."""

import time

from kestrel_helpers import drain, get_body, peek, queue_stats, reset_close


def test_blocking_peek_does_not_reorder_the_queue(server):
    """A message that arrives for a waiting `peek` stays at the head: a plain reader waiting
    behind the peek gets that same message, not the one after it."""
    for round_ in range(5):
        q = b"bp%d" % round_
        with server.mc() as peeker, server.mc() as reader, server.mc() as producer:
            peeker.send(b"get %s/t=10000/peek\r\n" % q)
            time.sleep(0.1)
            reader.send(b"get %s/t=10000\r\n" % q)
            time.sleep(0.1)
            # Both messages in one pipelined send: one commit publishes both, and the waiters
            # are served in order.
            producer.send(b"set %s 0 0 2\r\nm1\r\nset %s 0 0 2\r\nm2\r\n" % (q, q))
            producer.expect(b"STORED\r\nSTORED\r\n")
            peeker.expect(b"VALUE %s/t=10000/peek 0 2\r\nm1\r\nEND\r\n" % q)
            reader.expect(b"VALUE %s/t=10000 0 2\r\nm1\r\nEND\r\n" % q)
            assert drain(producer, q) == [b"m2"]


def test_peek_sees_a_message_given_back_by_a_vanished_reader(server):
    """A reader opens m1 of [m1, m2] and goes away: m1 is back at the head, for peek and get
    alike, as soon as the server has seen the reader go."""
    for round_ in range(20):
        q = b"gb%d" % round_
        with server.mc() as c:
            c.send(b"set %s 0 0 2\r\nm1\r\nset %s 0 0 2\r\nm2\r\n" % (q, q))
            c.expect(b"STORED\r\nSTORED\r\n")
            reader = server.mc()
            reader.send(b"get %s/open\r\n" % q)
            reader.expect(b"VALUE %s/open 0 2\r\nm1\r\nEND\r\n" % q)
            if round_ % 2:
                reset_close(reader)
            else:
                reader.close()
            time.sleep(0.3)
            assert peek(c, q) == b"m1", f"round {round_}"
            assert get_body(c, q) == b"m1", f"round {round_}"
            assert get_body(c, q) == b"m2", f"round {round_}"


def test_discard_old_when_full_takes_pipelined_sets(make_server):
    """With --discard-old-when-full every set is stored, even when one pipelined burst holds
    more messages than the queue may: the oldest make room, staged or not."""
    server = make_server(args=["--max-queue-items", "3", "--discard-old-when-full"])
    with server.mc() as c:
        for round_ in range(3):
            n = 10
            c.send(b"".join(b"set pd 0 0 3\r\nm%02d\r\n" % i for i in range(n)))
            c.expect(b"STORED\r\n" * n)
        qs = queue_stats(c, "pd")
        assert (qs["items"], qs["discarded"], qs["total_items"]) == (3, 27, 30), qs
        assert drain(c, "pd") == [b"m07", b"m08", b"m09"]


def test_discard_old_when_full_by_bytes_takes_pipelined_sets(make_server):
    server = make_server(args=["--max-queue-bytes", "10", "--discard-old-when-full"])
    with server.mc() as c:
        c.send(b"".join(b"set pb 0 0 4\r\nb%03d\r\n" % i for i in range(9)))
        c.expect(b"STORED\r\n" * 9)
        qs = queue_stats(c, "pb")
        assert (qs["items"], qs["bytes"], qs["discarded"]) == (2, 8, 7), qs
        assert drain(c, "pb") == [b"b007", b"b008"]
