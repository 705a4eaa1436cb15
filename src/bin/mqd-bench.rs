//! mqd-bench: a load generator for mqd (or any MemcacheQ or mqmq server), in the manner of
//! redis-benchmark: one thread, many non-blocking connections, each keeping `--pipeline`
//! requests in flight, so the client costs little CPU next to the server it measures. Prints
//! throughput and latency percentiles. Bodies are random bytes (every request a different
//! slice of a random pool), so nothing on the server side compresses them. `--protocol resp`
//! speaks Redis (set = LPUSH, get = RPOP) so `scripts/bench-compare` drives mqd, memcached and
//! Redis with the same client; `--protocol binary` speaks the memcache binary protocol (SET,
//! GET), which mqd and memcached both answer.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use argh::FromArgs;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use mqd::protocol::mqmq;

#[derive(FromArgs)]
/// Load generator for mqd: N connections doing set (put) or get against one or more queues.
struct Args {
    /// server address (default 127.0.0.1:22201)
    #[argh(option, default = "\"127.0.0.1:22201\".parse().unwrap()")]
    addr: SocketAddr,
    /// memcache, binary (memcache binary protocol), mqmq or resp (Redis LPUSH/RPOP) (default
    /// memcache)
    #[argh(option, default = "String::from(\"memcache\")")]
    protocol: String,
    /// set, get, or pair (set and get alternating on each connection) (default set)
    #[argh(option, default = "String::from(\"set\")")]
    op: String,
    /// connections (default 50)
    #[argh(option, default = "50")]
    connections: usize,
    /// total requests (default 100000, or no limit with --seconds)
    #[argh(option)]
    requests: Option<usize>,
    /// stop sending after this many seconds (with --requests too: whichever comes first)
    #[argh(option, default = "0.0")]
    seconds: f64,
    /// message size in bytes (default 64)
    #[argh(option, default = "64")]
    size: usize,
    /// requests in flight per connection (default 1)
    #[argh(option, default = "1")]
    pipeline: usize,
    /// queues to spread over, round-robin by request (default 1)
    #[argh(option, default = "1")]
    queues: usize,
    /// queue name prefix (default bench)
    #[argh(option, default = "String::from(\"bench\")")]
    prefix: String,
}

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    in_flight: VecDeque<Instant>,
    remaining: usize,
    sent: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Memcache,
    Binary,
    Mqmq,
    Resp,
}

/// Random bytes to cut bodies from: xorshift64*, seeded from the clock (no crate needed for
/// bytes that only have to be incompressible).
fn random_pool(len: usize) -> Vec<u8> {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    let mut pool = Vec::with_capacity(len + 8);
    while pool.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        pool.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    pool.truncate(len);
    pool
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    hits: u64,
    misses: u64,
    errors: u64,
}

fn main() {
    let args: Args = argh::from_env();
    let protocol = match args.protocol.as_str() {
        "memcache" => Protocol::Memcache,
        "binary" => Protocol::Binary,
        "mqmq" => Protocol::Mqmq,
        "resp" => Protocol::Resp,
        other => return eprintln!("unknown --protocol {other}"),
    };
    // Whether the first request is a set, and whether sets and gets take turns.
    let (set_first, alternate) = match args.op.as_str() {
        "set" | "put" => (true, false),
        "get" => (false, false),
        "pair" => (true, true),
        other => return eprintln!("unknown --op {other}"),
    };
    let timed = args.seconds > 0.0;
    let pool = random_pool((1 << 20).max(args.size * 4));
    let mut pool_offset = 0usize;
    let mut poll = Poll::new().expect("poll");
    let mut conns = Vec::new();
    for i in 0..args.connections {
        let std_stream = std::net::TcpStream::connect(args.addr).unwrap_or_else(|e| {
            eprintln!("cannot connect to {}: {e}", args.addr);
            std::process::exit(1)
        });
        std_stream.set_nonblocking(true).expect("nonblocking");
        let mut stream = TcpStream::from_std(std_stream);
        stream.set_nodelay(true).ok();
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .expect("register");
        let share = match (args.requests, timed) {
            (None, true) => usize::MAX,
            (requests, _) => {
                let requests = requests.unwrap_or(100_000);
                requests / args.connections + usize::from(i < requests % args.connections)
            }
        };
        conns.push(Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            in_flight: VecDeque::new(),
            remaining: share,
            sent: 0,
        });
    }
    let queues: Vec<String> = (0..args.queues.max(1))
        .map(|i| format!("{}{i}", args.prefix))
        .collect();
    let mut next_queue = 0usize;
    let mut request = |conn: &mut Conn| {
        let queue = queues[next_queue % queues.len()].as_bytes();
        next_queue += 1;
        let set = set_first != (alternate && conn.sent % 2 == 1);
        conn.sent += 1;
        let body = &pool[pool_offset..pool_offset + args.size];
        // Step past the whole body: consecutive messages (neighbours in one RocksDB block)
        // share no bytes, so block compression finds nothing to squeeze.
        pool_offset = (pool_offset + args.size + 61) % (pool.len() - args.size);
        let out = &mut conn.output;
        match (protocol, set) {
            (Protocol::Mqmq, true) => mqmq::frame(out, &[b"Put", queue, body]),
            (Protocol::Mqmq, false) => mqmq::frame(out, &[b"Get", queue, b"1"]),
            (Protocol::Memcache, true) => {
                out.extend_from_slice(b"set ");
                out.extend_from_slice(queue);
                out.extend_from_slice(format!(" 0 0 {}\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
            (Protocol::Memcache, false) => {
                out.extend_from_slice(b"get ");
                out.extend_from_slice(queue);
                out.extend_from_slice(b"\r\n");
            }
            (Protocol::Binary, true) => binary_request(out, BINARY_SET, queue, &[0; 8], body),
            (Protocol::Binary, false) => binary_request(out, BINARY_GET, queue, &[], &[]),
            (Protocol::Resp, true) => resp_command(out, &[b"LPUSH", queue, body]),
            (Protocol::Resp, false) => resp_command(out, &[b"RPOP", queue]),
        }
        conn.in_flight.push_back(Instant::now());
        conn.remaining -= 1;
    };
    for conn in &mut conns {
        for _ in 0..args.pipeline.min(conn.remaining) {
            request(conn);
        }
    }
    let mut tally = Tally::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds.max(0.0));
    let mut finished = started;
    let mut events = Events::with_capacity(1024);
    let mut open = conns.len();
    while open > 0 {
        poll.poll(&mut events, Some(Duration::from_secs(10)))
            .expect("poll");
        if events.is_empty() {
            eprintln!("no progress for 10 s; giving up");
            break;
        }
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if conn.in_flight.is_empty() && conn.remaining == 0 {
                continue;
            }
            if !flush(conn) || !fill(conn) {
                eprintln!("connection lost");
                std::process::exit(1);
            }
            while let Some((consumed, outcome)) = parse_reply(&conn.input, protocol) {
                conn.input.drain(..consumed);
                let sent = conn
                    .in_flight
                    .pop_front()
                    .expect("a reply to a request we sent");
                finished = Instant::now();
                tally
                    .latencies_us
                    .push(finished.duration_since(sent).as_micros() as u64);
                if timed && finished >= deadline {
                    conn.remaining = 0;
                }
                match outcome {
                    Outcome::Hit => tally.hits += 1,
                    Outcome::Miss => tally.misses += 1,
                    Outcome::Error => tally.errors += 1,
                }
                if conn.remaining > 0 {
                    request(conn);
                }
            }
            flush(conn);
            if conn.in_flight.is_empty() && conn.remaining == 0 {
                open -= 1;
            }
        }
    }
    report(&args, &mut tally, finished.duration_since(started));
}

/// A Redis command as a RESP array of bulk strings.
fn resp_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

const BINARY_GET: u8 = 0x00;
const BINARY_SET: u8 = 0x01;

/// A memcache binary request: the 24-byte header (opaque and cas 0), extras, key, value.
fn binary_request(out: &mut Vec<u8>, opcode: u8, key: &[u8], extras: &[u8], value: &[u8]) {
    let body_len = (extras.len() + key.len() + value.len()) as u32;
    out.extend_from_slice(&[0x80, opcode]);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&[0; 12]);
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

fn flush(conn: &mut Conn) -> bool {
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

fn fill(conn: &mut Conn) -> bool {
    let mut chunk = [0u8; 64 << 10];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

enum Outcome {
    Hit,
    Miss,
    Error,
}

/// One complete reply at the front of `buf`: its length and what it said.
fn parse_reply(buf: &[u8], protocol: Protocol) -> Option<(usize, Outcome)> {
    if protocol == Protocol::Resp {
        let line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
        let line = &buf[..line_end - 2];
        return match line.first() {
            Some(b':') => Some((line_end, Outcome::Hit)),
            Some(b'_') => Some((line_end, Outcome::Miss)),
            Some(b'$') if line == b"$-1" => Some((line_end, Outcome::Miss)),
            Some(b'$') => {
                let len: usize = std::str::from_utf8(&line[1..]).ok()?.parse().ok()?;
                let end = line_end + len + 2;
                (buf.len() >= end).then_some((end, Outcome::Hit))
            }
            _ => Some((line_end, Outcome::Error)),
        };
    }
    if protocol == Protocol::Binary {
        let header = buf.get(..24)?;
        let status = u16::from_be_bytes([header[6], header[7]]);
        let body_len = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        let end = 24 + body_len;
        let outcome = match status {
            0 => Outcome::Hit,
            1 => Outcome::Miss,
            _ => Outcome::Error,
        };
        return (buf.len() >= end).then_some((end, outcome));
    }
    if protocol == Protocol::Mqmq {
        let (consumed, values) = mqmq::decode_frame(buf)?;
        let outcome = match values.first().map(Vec::as_slice) {
            Some(b"OK") => Outcome::Hit,
            Some(b"Timeout") => Outcome::Miss,
            _ => Outcome::Error,
        };
        return Some((consumed, outcome));
    }
    let line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    let line = &buf[..line_end - 2];
    if line == b"STORED" {
        return Some((line_end, Outcome::Hit));
    }
    if line == b"END" {
        return Some((line_end, Outcome::Miss));
    }
    if let Some(rest) = line.strip_prefix(b"VALUE ") {
        let len: usize = std::str::from_utf8(rest)
            .ok()?
            .split(' ')
            .nth(2)?
            .parse()
            .ok()?;
        let end = line_end + len + 2 + 5;
        if buf.len() < end {
            return None;
        }
        return Some((end, Outcome::Hit));
    }
    Some((line_end, Outcome::Error))
}

fn report(args: &Args, tally: &mut Tally, elapsed: Duration) {
    let n = tally.latencies_us.len();
    tally.latencies_us.sort_unstable();
    let pct = |p: f64| {
        if n == 0 {
            return 0.0;
        }
        tally.latencies_us[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0
    };
    let secs = elapsed.as_secs_f64();
    println!(
        "{} {} x{}B: {n} requests, {} connections, pipeline {}, {:.2} s, {:.0} req/s",
        args.protocol,
        args.op,
        args.size,
        args.connections,
        args.pipeline,
        secs,
        n as f64 / secs
    );
    println!(
        "  hits {} misses {} errors {} | latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        tally.hits,
        tally.misses,
        tally.errors,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    // One line for scripts (scripts/bench-compare) to pick apart.
    println!(
        "  summary rps={:.0} p50_ms={:.3} p99_ms={:.3} hits={} misses={} errors={}",
        n as f64 / secs,
        pct(0.50),
        pct(0.99),
        tally.hits,
        tally.misses,
        tally.errors
    );
}
