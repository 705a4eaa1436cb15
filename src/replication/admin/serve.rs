//! One admin connection, on a thread of the listener's: request lines in, reply lines out,
//! until the client closes or is silent for `IDLE`. A change (and a `status`, whose matched
//! indexes only the leader knows) goes to the leader this member knows, on an admin connection
//! of its own opened with `ADMIN_FORWARDED_MARKER`, whose reply lines come back as they are;
//! the leader (or a member that knows none) asks its own raft thread. A member that cannot
//! reach the leader answers `status` itself, and a change `no leader`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::codec::{self, AdminError, AdminReply, AdminRequest, MAX_LINE};
use super::ADMIN_FORWARDED_MARKER;
use crate::replication::driver::Input;
use crate::replication::status::Status;
use crate::replication::tcp::connect_to;

/// An admin connection silent this long is closed.
const IDLE: Duration = Duration::from_secs(120);
/// The leader must accept a passed-on request this soon.
const CONNECT_WITHIN: Duration = Duration::from_secs(1);

/// What an admin connection needs of its node.
#[derive(Clone)]
pub struct AdminContext {
    pub status: Arc<Status>,
    pub inputs: Sender<Input>,
    /// Requests being answered (the listener's stop lets them finish: `answering`).
    pub answering: Arc<AtomicUsize>,
}

/// Counts a request from its line read to its reply written.
struct Answering<'a>(&'a AtomicUsize);

impl<'a> Answering<'a> {
    fn start(count: &'a AtomicUsize) -> Answering<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Answering(count)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `stream` (its marker read) until it closes; `forwarded`: it came from another
/// member, and is answered here whatever this node's role.
pub fn serve(stream: TcpStream, forwarded: bool, ctx: &AdminContext) -> Result<(), String> {
    let _ = stream.set_read_timeout(Some(IDLE));
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let refused = codec::format_reply(&Err(AdminError::Refused(format!(
                "a request line is at most {MAX_LINE} bytes"
            ))));
            let _ = writer.write_all(refused.as_bytes());
            return Err("request line too long".into());
        }
        let _answering = Answering::start(&ctx.answering);
        let text = String::from_utf8_lossy(&line);
        let reply = match codec::parse_request(text.trim_end()) {
            Ok(request) => answer(&request, forwarded, ctx),
            Err(e) => codec::format_reply(&Err(e)),
        };
        writer
            .write_all(reply.as_bytes())
            .map_err(|e| e.to_string())?;
    }
}

/// The reply lines to `request`.
fn answer(request: &AdminRequest, forwarded: bool, ctx: &AdminContext) -> String {
    let view = ctx.status.view();
    let leader = view.leader;
    if !forwarded && leader != 0 && leader != view.node {
        if let Some(addr) = ctx.status.members().address(leader) {
            match pass_on(&addr, request) {
                Ok(lines) => return lines,
                Err(e) => log::info!("admin request not passed to node {leader} at {addr}: {e}"),
            }
        }
        if request.is_change() {
            return codec::format_reply(&Err(AdminError::NoLeader));
        }
    }
    codec::format_reply(&ask_raft(request.clone(), ctx))
}

/// Asks this node's raft thread.
fn ask_raft(request: AdminRequest, ctx: &AdminContext) -> AdminReply {
    let (reply, answer) = crossbeam_channel::bounded(1);
    let patience = request.patience();
    if ctx.inputs.send(Input::Admin { request, reply }).is_err() {
        return Err(AdminError::NoLeader);
    }
    match answer.recv_timeout(patience) {
        Ok(reply) => reply,
        // The raft thread stopped (it drops the sender).
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(AdminError::NoLeader),
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(AdminError::Unknown(
            "no answer from the raft thread in time".into(),
        )),
    }
}

/// Sends `request` to the member at `addr` and returns its reply lines.
fn pass_on(addr: &str, request: &AdminRequest) -> Result<String, String> {
    let mut stream = connect_to(addr, CONNECT_WITHIN)?;
    let _ = stream.set_read_timeout(Some(request.patience() + Duration::from_secs(5)));
    let mut out = ADMIN_FORWARDED_MARKER.to_vec();
    out.extend_from_slice(codec::request_line(request).as_bytes());
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(64 << 10)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if read == 0 || !line.ends_with('\n') {
            return Err("the leader closed before its answer ended".into());
        }
        reply.push_str(&line);
        if codec::ends_reply(line.trim_end()) {
            return Ok(reply);
        }
        if reply.len() > 1 << 20 {
            return Err("the leader's answer is too long".into());
        }
    }
}
