"""The checker of cluster_history.py on made-up histories: it is the only thing standing between
a split-brain or a lost message and a green test, so it is shown to fail on each violation (no
server runs here)."""

import pytest

from cluster_history import Attempt, Read, check_history, examine


def test_the_checker_reports_a_split_brain_acknowledgement_and_lost_order():
    """The checker itself, on a made-up history: it is the only thing standing between a
    split-brain bug and a green test, so it is shown to fail."""
    def attempt(producer, seq, node, sent, outcome):
        return Attempt(producer, seq, node, sent, sent + 0.01, outcome)

    history = [attempt(1, 0, 1, 1.0, "ack"), attempt(1, 1, 1, 2.0, "unknown"),
               attempt(1, 1, 1, 2.5, "ack"), attempt(2, 0, 2, 1.0, "ack"),
               attempt(2, 1, 2, 3.0, "refused")]
    good = [b"p1-000000", b"p2-000000", b"p1-000001", b"p1-000001"]
    assert check_history(history, good, cuts=[(1, 1.5, 2.2)])["duplicates"] == 1

    # Node 1 was cut off from 1.5 to 2.2: a STORED from it for a write sent at 1.8 that no log
    # holds.
    fake = history + [attempt(3, 0, 1, 1.8, "ack")]
    with pytest.raises(AssertionError) as failed:
        check_history(fake, good, cuts=[(1, 1.5, 2.2)])
    assert "acknowledged 1 writes sent after the partition" in str(failed.value)
    assert "split-brain acknowledgements" in str(failed.value) and "p3-000000" in str(failed.value)
    for delivered, complaint in [
        ([b"p1-000001", b"p1-000000", b"p2-000000"], "out of order"),
        ([b"p1-000000", b"p1-000001"], "acknowledged writes lost"),
        (good + [b"p2-000001"], "only ever refused"),
        (good + [b"p2-000000"], "delivered more often"),
    ]:
        with pytest.raises(AssertionError, match=complaint):
            check_history(history, delivered, cuts=[(1, 1.5, 2.2)])


def test_the_checker_follows_what_readers_were_shown_and_confirmed():
    def attempt(producer, seq, sent, outcome="ack"):
        return Attempt(producer, seq, 1, sent, sent + 0.01, outcome)

    def read(body, at, fate, reader="a"):
        return Read(reader, 2, body, at, at + 0.01, fate)

    history = [attempt(1, 0, 1.0), attempt(1, 1, 2.0), attempt(1, 2, 3.0), attempt(1, 3, 4.0),
               attempt(1, 4, 5.0, "unknown"), attempt(1, 4, 5.5)]
    # Reader a confirms 0; reader b is shown 1 and its connection dies (given back); a is shown
    # 1 again and its close goes unanswered; b confirms 2; 3 and both copies of 4 are drained.
    reads = [read(b"p1-000000", 3.0, "confirmed"), read(b"p1-000001", 3.1, "given back", "b"),
             read(b"p1-000001", 3.2, "close unknown"), read(b"p1-000002", 3.3, "confirmed", "b")]
    drained = [b"p1-000003", b"p1-000004", b"p1-000004"]
    counts = check_history(history, drained, reads=reads)
    assert (counts["lost"], counts["shown-then-lost"], counts["duplicated"]) == (0, 0, 2)

    for reads_now, drained_now, complaint in [
        # Shown, given back, never seen again.
        (reads[:1] + [read(b"p1-000001", 3.1, "given back", "b"), reads[3]], drained,
         "shown to a reader, then lost"),
        # Confirmed twice, written once, no fault in between.
        (reads + [read(b"p1-000000", 3.4, "confirmed", "b")], drained, "delivered more often"),
        # 2 first handed out to b after a had been handed 3.
        (reads[:3] + [read(b"p1-000003", 3.25, "confirmed"), read(b"p1-000002", 3.3, "confirmed",
                                                                    "b")],
         drained[1:], "out of order"),
        # 3 nowhere.
        (reads, drained[1:], "acknowledged writes lost"),
    ]:
        counts, problems = examine(history, drained_now, reads=reads_now)
        assert any(complaint in p for p in problems), (complaint, problems)

    # An open that got no reply, under way when 3 was handed out: it may have held 2.
    late = reads[:3] + [read(b"p1-000003", 3.25, "confirmed"), read(b"p1-000002", 3.3, "confirmed",
                                                                  "b")]
    assert check_history(history, drained[1:], reads=late, blind=[(3.2, 3.27)])["lost"] == 0

    # A leader fails after answering a close, before committing it: the message comes again.
    again = reads + [read(b"p1-000000", 3.4, "confirmed", "b")]
    counts = check_history(history, drained, reads=again, faults=[3.2])
    assert counts["again-after-close"] == 1
