//! `mqd top`: the dashboard's view in a terminal, for a server without a browser. It reads
//! `/stats.json` over HTTP every interval and redraws a table of queues (depth, enqueue and
//! dequeue rates, oldest message's age, open reads, waiters) under a line of server totals.
//! `q` or Ctrl-C quits. The frame is a pure function of two samples, so it is unit-tested; the
//! terminal handling is a few termios calls.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use crate::client::http_get;
use crate::protocol::json::{self, Json};

/// One sample of `/stats.json`.
pub struct Sample {
    pub stats: Json,
}

impl Sample {
    pub fn fetch(addr: &str) -> Result<Sample, String> {
        let (status, body) = http_get(addr, "/stats.json").map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("/stats.json answered {status}"));
        }
        let text = String::from_utf8_lossy(&body);
        let stats = json::parse(&text).ok_or("/stats.json is not the JSON expected")?;
        Ok(Sample { stats })
    }

    fn number(&self, key: &str) -> u64 {
        self.stats.get(key).and_then(Json::as_u64).unwrap_or(0)
    }
}

fn field(queue: &Json, key: &str) -> u64 {
    queue.get(key).and_then(Json::as_u64).unwrap_or(0)
}

fn name(queue: &Json) -> String {
    match queue.get("name") {
        Some(Json::String(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    }
}

/// Widest queue name shown; longer ones are cut with `…`.
const NAME_WIDTH: usize = 32;

/// The frame for `now`, with rates against `before` (the previous sample) if there is one.
pub fn render(addr: &str, now: &Sample, before: Option<&Sample>) -> String {
    let mut out = String::new();
    let connections = now.stats.get("connections");
    let by_protocol: Vec<String> = ["memcache", "mqmq", "http"]
        .iter()
        .map(|p| {
            let open = connections
                .and_then(|c| c.get(p))
                .and_then(|c| c.get("open"))
                .and_then(Json::as_u64)
                .unwrap_or(0);
            format!("{p} {open}")
        })
        .collect();
    let _ = writeln!(
        out,
        "mqd {addr} · up {} · {} queues · {} messages · {} connections ({}) · {} commits",
        duration(now.number("uptime") * 1000),
        now.number("curr_queues"),
        now.number("curr_items"),
        now.number("curr_connections"),
        by_protocol.join(", "),
        now.number("commit_batches"),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<NAME_WIDTH$} {:>10} {:>9} {:>9} {:>9} {:>6} {:>6}",
        "QUEUE", "DEPTH", "IN/s", "OUT/s", "OLDEST", "OPEN", "WAIT"
    );
    let seconds = before
        .map(|b| {
            now.number("time_msec")
                .saturating_sub(b.number("time_msec")) as f64
                / 1000.0
        })
        .filter(|&s| s > 0.0);
    let queues = now.stats.get("queues").map_or(&[][..], Json::as_array);
    for queue in queues {
        let queue_name = name(queue);
        let previous = before.and_then(|b| {
            b.stats
                .get("queues")
                .map_or(&[][..], Json::as_array)
                .iter()
                .find(|q| name(q) == queue_name)
        });
        let rate = |key: &str| match (previous, seconds) {
            (Some(p), Some(s)) => {
                format!(
                    "{:.1}",
                    field(queue, key).saturating_sub(field(p, key)) as f64 / s
                )
            }
            _ => "-".into(),
        };
        let items = field(queue, "items");
        let oldest = if items > 0 {
            duration(field(queue, "age_msec"))
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<NAME_WIDTH$} {:>10} {:>9} {:>9} {:>9} {:>6} {:>6}",
            cut(&queue_name),
            items,
            rate("total_items"),
            rate("dequeued_items"),
            oldest,
            field(queue, "open_transactions"),
            field(queue, "waiters"),
        );
    }
    if queues.is_empty() {
        let _ = writeln!(out, "(no queues)");
    }
    out
}

fn cut(name: &str) -> String {
    // Control characters would move the cursor: show them as `?`.
    let clean: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.chars().count() <= NAME_WIDTH {
        clean
    } else {
        let mut short: String = clean.chars().take(NAME_WIDTH - 1).collect();
        short.push('…');
        short
    }
}

/// `850 ms`, `12.5 s`, `3.2 min`, `5.0 h`.
fn duration(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if ms < 1000 {
        format!("{ms} ms")
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Runs until `q`/Ctrl-C, or for `iterations` frames if not 0.
pub fn run(addr: &str, interval: Duration, iterations: u64) -> Result<(), String> {
    let terminal = Terminal::enter();
    let mut before: Option<Sample> = None;
    let mut shown = 0;
    loop {
        let frame = match Sample::fetch(addr) {
            Ok(now) => {
                let frame = render(addr, &now, before.as_ref());
                before = Some(now);
                frame
            }
            Err(e) => format!("mqd top: cannot read http://{addr}/stats.json: {e}\n"),
        };
        let mut stdout = std::io::stdout().lock();
        let clear = if terminal.is_some() {
            "\x1b[H\x1b[2J"
        } else {
            ""
        };
        let (frame, footer) = if terminal.is_some() {
            // In raw mode a newline no longer returns the carriage.
            (frame.replace('\n', "\r\n"), "\r\nq: quit")
        } else {
            (frame, "\n")
        };
        let _ = write!(stdout, "{clear}{frame}{footer}");
        let _ = stdout.flush();
        drop(stdout);
        shown += 1;
        if iterations != 0 && shown >= iterations {
            return Ok(());
        }
        if wait_for_quit(terminal.is_some(), interval) {
            return Ok(());
        }
    }
}

/// Sleeps for `interval`, or less if `q` or Ctrl-C is typed (then true).
fn wait_for_quit(interactive: bool, interval: Duration) -> bool {
    if !interactive {
        std::thread::sleep(interval);
        return false;
    }
    let deadline = std::time::Instant::now() + interval;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut poll = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, and a one-byte read into a local buffer.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(60_000) as i32) };
        if ready > 0 {
            let mut byte = 0u8;
            let n = unsafe { libc::read(libc::STDIN_FILENO, (&mut byte as *mut u8).cast(), 1) };
            if n <= 0 || matches!(byte, b'q' | b'Q' | 3 | 4) {
                return true;
            }
        }
    }
}

/// The terminal in non-canonical, no-echo mode on the alternate screen; restored on drop.
struct Terminal {
    saved: libc::termios,
}

impl Terminal {
    /// `None` unless both stdin and stdout are terminals.
    fn enter() -> Option<Terminal> {
        // SAFETY: isatty and tcgetattr/tcsetattr only read or fill the termios we pass.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) != 1 || libc::isatty(libc::STDOUT_FILENO) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            raw.c_oflag &= !libc::OPOST;
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw);
            print!("\x1b[?1049h\x1b[?25l");
            Some(Terminal { saved })
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        // SAFETY: restores the attributes tcgetattr gave us.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str) -> Sample {
        Sample {
            stats: json::parse(text).unwrap(),
        }
    }

    #[test]
    fn renders_depth_rates_and_age() {
        let before = sample(
            r#"{"time_msec":1000,"queues":[{"name":"jobs","items":5,"total_items":10,"dequeued_items":5}]}"#,
        );
        let now = sample(
            r#"{"time_msec":3000,"uptime":65,"curr_queues":2,"curr_items":7,"curr_connections":1,
                "connections":{"http":{"open":1,"opened":4}},
                "queues":[{"name":"jobs","items":7,"total_items":30,"dequeued_items":23,"age_msec":2500,"open_transactions":1,"waiters":0},
                          {"name":"empty\n","items":0,"total_items":0,"dequeued_items":0,"age_msec":0}]}"#,
        );
        let frame = render("h:1", &now, Some(&before));
        let lines: Vec<&str> = frame.lines().collect();
        assert!(
            lines[0].contains("up 65.0 s · 2 queues · 7 messages"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("(memcache 0, mqmq 0, http 1)"),
            "{}",
            lines[0]
        );
        let jobs: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(jobs, ["jobs", "7", "10.0", "9.0", "2.5", "s", "1", "0"]);
        let empty: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(empty, ["empty?", "0", "-", "-", "-", "0", "0"]);
        assert!(!render("h:1", &now, None)
            .lines()
            .nth(3)
            .unwrap()
            .contains("10.0"));
    }

    #[test]
    fn long_names_are_cut() {
        assert_eq!(cut("a").as_str(), "a");
        let long = "x".repeat(40);
        assert_eq!(cut(&long).chars().count(), NAME_WIDTH);
    }
}
