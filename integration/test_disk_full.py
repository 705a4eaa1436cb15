"""A full disk: below the --min-free-space reserve new messages are refused with a clear error,
while reads, deletes and flushes (which free space) keep working. A reserve larger than the
disk stands in for a full disk here, so no test fills a real file system."""

def test_messages_are_refused_below_the_reserve_and_reads_go_on(make_server):
    server = make_server()
    with server.mc() as mc:
        assert mc.set(b"q", b"before") == b"STORED\r\n"
    server.stop()
    server.args = ["--min-free-space", "1000000g"]
    server.start()
    with server.mc() as mc:
        assert mc.set(b"q", b"after") == b"SERVER_ERROR out of disk space\r\n"
        mc.send(b"set q 0 0 1 noreply\r\nx\r\n")
        assert mc.read_line() == b"SERVER_ERROR out of disk space\r\n"
        # The connection and the stored message are fine.
        assert mc.get_one(b"q") == b"before"
        assert mc.cmd(b"delete q") == b"DELETED\r\n"
    with server.mq() as mq:
        assert mq.put(b"q", b"x") == [b"Error", b"SERVER_DISK_FULL"]
        assert mq.get(b"q", 1) == [b"Timeout"]


def test_the_check_can_be_turned_off(make_server):
    server = make_server(args=["--min-free-space", "0"])
    with server.mc() as mc:
        assert mc.set(b"q", b"x") == b"STORED\r\n"
