"""Priming the WAL (src/engine/wal_prime.rs): under `--sync always` the server writes two WAL
files' worth of filler before it serves, so that from the first write on its fdatasyncs overwrite
blocks in place instead of also journaling a grown file. What that buys is measured by
scripts/bench-compare; here, what it leaves on disk, and that recovery from a reused WAL file
gives back exactly what was acknowledged.

Contract: README (flags: `--no-wal-prime`)."""

import pytest

from kestrel_helpers import drain, set_many

MIB = 1 << 20
# A WAL file holds about a memtable of `messages` (64 MiB) when a flush retires it.
WAL_FILE = 64 * MIB


def wal_sizes(server):
    # The port accepts connections while the engine opens: an answer means it has opened.
    with server.mc() as mc:
        assert mc.cmd(b"version").startswith(b"VERSION ")
    return sorted(path.stat().st_size for path in server.data_dir.glob("*.log"))


def test_a_server_under_sync_always_writes_to_a_reused_full_size_wal(make_server):
    server = make_server(prime_wal=True)
    # The file written to and the spare for the next switch: both retired, full-size files.
    sizes = wal_sizes(server)
    assert len(sizes) >= 2 and sizes[-2] >= WAL_FILE, sizes
    assert "primed two WAL files" in server.log_tail()


def test_a_crash_on_a_reused_wal_gives_back_exactly_what_was_acknowledged(make_server):
    """SIGKILL, so that the restart replays the reused WAL file: its new records, then filler
    from the file's previous life, which must end the replay and add nothing."""
    server = make_server(prime_wal=True)
    bodies = [b"primed-%d" % i for i in range(2000)]
    with server.mc() as mc:
        set_many(mc, "primed", bodies)
    server.restart(crash=True)
    with server.mc() as mc:
        assert drain(mc, "primed") == bodies


@pytest.mark.parametrize(
    "args, prime_wal",
    [([], False), (["--sync", "none"], True), (["--sync", "interval:50"], True)],
    ids=["no-wal-prime", "sync-none", "sync-interval"],
)
def test_the_wal_is_primed_only_under_sync_always_and_unless_turned_off(
    make_server, args, prime_wal
):
    server = make_server(args=args, prime_wal=prime_wal)
    sizes = wal_sizes(server)
    assert sizes and sizes[-1] < MIB, sizes
    assert "primed two WAL files" not in server.log_tail()


def test_a_stop_asked_for_while_the_wal_is_primed_is_a_clean_stop(make_server):
    """The port accepts as soon as it is bound, before the engine opens and primes (about
    0.3 s): a SIGTERM then must stop the server cleanly once open, not kill it by signal."""
    server = make_server(prime_wal=True)
    assert server.stop() == 0, server.log_tail()
    assert "primed two WAL files" in server.log_tail()
