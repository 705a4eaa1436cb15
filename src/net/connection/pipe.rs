//! A connection turned into a pipe to the leader (`net::forward` says when and why): from its
//! first queue command on, its client's bytes go to the leader and the leader's come back
//! through its output buffer, after the replies it produced itself. Only the bytes move: the
//! connection parses nothing more, and its budgets see at most `forward::WINDOW` bytes of
//! output from the leader.
//!
//! If the leader cannot be reached (refused, or not accepting within `forward::CONNECT_WITHIN`)
//! before any byte went to it, the pipe is dropped and the command is answered here, with
//! `no leader`: the client learns at once that it may retry. Once bytes went, a failure on the
//! leader's side closes the connection (their outcome is unknown).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Connection;
use crate::engine::SyncPoint;
use crate::net::commands::{self, Client as _};
use crate::net::forward::{Upstream, CONNECT_WITHIN, WINDOW};
use crate::net::Ctx;
use crate::protocol::Command;

/// Bytes one pipe moves (both ways together) in one drive before the loop's other connections
/// have their turn (as `DRIVE_SHARE` for replies): it goes on in the loop's next pass.
const PUMP_SHARE: usize = 256 << 10;

impl Connection {
    /// Where `command` goes, if not to this node: the leader, when this is a queue command, this
    /// node does not serve, knows another member leads, and the connection did not arrive
    /// forwarded. One branch when not under `--cluster`.
    pub(super) fn forward_to(&mut self, command: &Command, ctx: &Ctx) -> Option<SocketAddr> {
        let forwarding = ctx.shared.forwarding.as_ref()?;
        if !commands::is_queue_command(command) || ctx.shared.engine.serving() {
            return None;
        }
        if std::mem::take(&mut self.answer_locally) {
            return None;
        }
        forwarding.route(self.forwarded)
    }

    /// Becomes a pipe to the leader at `address`, from the request at the front of the input
    /// on; the loop drives it again if the leader has not accepted it in time.
    pub(super) fn start_forwarding(&mut self, address: SocketAddr, ctx: &mut Ctx) {
        match Upstream::connect(address) {
            Ok(upstream) => {
                self.upstream = Some(Box::new(upstream));
                if let Some(f) = &ctx.shared.forwarding {
                    f.current.fetch_add(1, Ordering::Relaxed);
                }
                *ctx.next_wait_id += 1;
                ctx.timers
                    .add(Instant::now() + CONNECT_WITHIN, self.id, *ctx.next_wait_id);
            }
            Err(e) => {
                log::info!("cannot forward a connection to the leader at {address}: {e}");
                self.answer_locally = true;
            }
        }
    }

    /// Whether its pipe's upstream socket waits to be registered with the loop's poll.
    pub fn upstream_unregistered(&self) -> bool {
        self.upstream.as_ref().is_some_and(|u| !u.registered)
    }

    /// Its pipe's upstream socket, to register or deregister.
    pub fn upstream(&mut self) -> Option<&mut Upstream> {
        self.upstream.as_deref_mut()
    }

    /// The connection closes: its pipe (if any) is no longer counted.
    pub fn end_forwarding(&mut self, ctx: &Ctx) -> Option<Box<Upstream>> {
        let upstream = self.upstream.take()?;
        if let Some(f) = &ctx.shared.forwarding {
            f.current.fetch_sub(1, Ordering::Relaxed);
        }
        Some(upstream)
    }

    /// The leader's socket may have more to read.
    pub fn upstream_readable(&mut self) {
        if let Some(upstream) = &mut self.upstream {
            upstream.readable = true;
        }
    }

    /// The leader was not reached and nothing went to it: the pipe is dropped (its socket
    /// leaves the poll as it closes) and the command at the front of the input is answered
    /// here.
    fn unforward(&mut self, why: &str, ctx: &Ctx) {
        log::info!("a connection is not forwarded: the leader {why}");
        self.end_forwarding(ctx);
        self.answer_locally = true;
    }

    /// Moves bytes both ways as far as the sockets and the windows allow. False if the pipe
    /// was dropped before it carried anything: the connection goes on as an ordinary one.
    pub(super) fn pump(&mut self, ctx: &mut Ctx) -> bool {
        let mut moved = 0;
        loop {
            let Some(upstream) = self.upstream.as_deref_mut() else {
                return true;
            };
            if upstream.overdue(Instant::now()) {
                self.unforward("did not accept the connection in time", ctx);
                return false;
            }
            let was_connected = upstream.connected;
            let mut progressed = false;
            // Client to leader: the marker, what was buffered before the pipe, then the rest.
            let outcome = (|| -> std::io::Result<()> {
                progressed |= upstream.send()?;
                if upstream.drained() && self.input_start < self.input_end {
                    let input = &self.input[self.input_start..self.input_end];
                    let n = upstream.send_direct(input)?;
                    self.input_start += n;
                    moved += n;
                    progressed |= n > 0;
                }
                if self.input_start == self.input_end && !self.eof && self.readable {
                    let (n, eof) = upstream.take_from(&mut self.stream)?;
                    ctx.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    moved += n;
                    self.eof |= eof;
                    if n > 0 || eof {
                        progressed = true;
                        self.last_active = Instant::now();
                    }
                    if upstream.has_room() {
                        self.readable = false;
                    }
                    progressed |= upstream.send()?;
                }
                if self.eof && self.input_start == self.input_end {
                    upstream.finish();
                }
                // Leader to client, after the replies this node produced itself.
                let unsent = self.output.unsent();
                if unsent < WINDOW {
                    let out = self.output.append_after(SyncPoint::NONE);
                    let n = upstream.receive(out, WINDOW - unsent)?;
                    moved += n;
                    progressed |= n > 0;
                }
                Ok(())
            })();
            let (connected, closed) = (upstream.connected, upstream.closed);
            if connected && !was_connected {
                if let Some(f) = &ctx.shared.forwarding {
                    f.total.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Err(e) = outcome {
                if !connected {
                    self.unforward(&format!("cannot be reached: {e}"), ctx);
                    return false;
                }
                log::info!("forwarded connection closed: the leader's side failed: {e}");
                self.dead = true;
                return true;
            }
            if self.input_start == self.input_end && !self.input.is_empty() {
                self.input_start = 0;
                self.input_end = 0;
                self.set_input_len(0, ctx);
            }
            let unsent = self.output.unsent();
            self.flush(ctx);
            progressed |= self.output.unsent() < unsent;
            self.charge_output(self.output.memory(), ctx);
            if closed {
                // The leader is done (it answered a `quit`, died or lost the lead): so is the
                // client, once it has what came.
                self.closing = true;
            }
            if self.dead || !progressed {
                return true;
            }
            if moved >= PUMP_SHARE {
                // Its turn is over; the sockets' readiness is remembered for the next pass.
                self.yielded = true;
                return true;
            }
        }
    }
}
