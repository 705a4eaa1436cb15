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

/// Where a connection's bytes go from a command on.
#[derive(Clone, Copy, Debug)]
pub(super) enum Route {
    /// The leader's client side (`FORWARD_MARKER`).
    Leader(SocketAddr),
    /// This member's admin side (`ADMIN_MARKER`), for `cluster …` (protocol-spec/cluster.md 7):
    /// it passes a change on to the leader itself.
    Admin(SocketAddr),
}

/// Where `command` goes, if not to this node: the leader, when this is a queue command, this
/// node does not serve, knows another member leads, and the connection did not arrive
/// forwarded; this member's admin side for `cluster …`. One branch when not under
/// `--cluster`.
pub(super) fn forward_to(conn: &mut Connection, command: &Command, ctx: &Ctx) -> Option<Route> {
    let forwarding = ctx.shared.forwarding.as_ref()?;
    if commands::is_admin_command(command) {
        if std::mem::take(&mut conn.answer_locally) {
            return None;
        }
        return forwarding.admin_address().map(Route::Admin);
    }
    if !commands::is_queue_command(command) || ctx.shared.engine.serving() {
        return None;
    }
    if std::mem::take(&mut conn.answer_locally) {
        return None;
    }
    forwarding.route(conn.forwarded).map(Route::Leader)
}

/// Becomes a pipe to the leader (or the admin side) `route` names, from the request at the
/// front of the input on; the loop drives it again if it has not accepted it in time. Only
/// pipes to the leader are counted as forwarded connections.
pub(super) fn start(conn: &mut Connection, route: Route, ctx: &mut Ctx) {
    let (address, admin) = match route {
        Route::Leader(address) => (address, false),
        Route::Admin(address) => (address, true),
    };
    match Upstream::connect(address, admin) {
        Ok(upstream) => {
            conn.upstream = Some(Box::new(upstream));
            if let (Some(f), false) = (&ctx.shared.forwarding, admin) {
                f.current.fetch_add(1, Ordering::Relaxed);
            }
            *ctx.next_wait_id += 1;
            ctx.timers
                .add(Instant::now() + CONNECT_WITHIN, conn.id, *ctx.next_wait_id);
        }
        Err(e) => {
            log::info!("cannot forward a connection to the leader at {address}: {e}");
            conn.answer_locally = true;
        }
    }
}

/// The leader was not reached and nothing went to it: the pipe is dropped (its socket
/// leaves the poll as it closes) and the command at the front of the input is answered
/// here.
fn unforward(conn: &mut Connection, why: &str, ctx: &Ctx) {
    log::info!("a connection is not forwarded: the leader {why}");
    conn.end_forwarding(ctx);
    conn.answer_locally = true;
}

/// Moves bytes both ways as far as the sockets and the windows allow. False if the pipe
/// was dropped before it carried anything: the connection goes on as an ordinary one.
pub(super) fn pump(conn: &mut Connection, ctx: &mut Ctx) -> bool {
    let mut moved = 0;
    loop {
        let Some(upstream) = conn.upstream.as_deref_mut() else {
            return true;
        };
        if upstream.overdue(Instant::now()) {
            unforward(conn, "did not accept the connection in time", ctx);
            return false;
        }
        let was_connected = upstream.connected;
        let mut progressed = false;
        // Client to leader: the marker, what was buffered before the pipe, then the rest.
        let outcome = (|| -> std::io::Result<()> {
            progressed |= upstream.send()?;
            if upstream.drained() && conn.input_start < conn.input_end {
                let input = &conn.input[conn.input_start..conn.input_end];
                let n = upstream.send_direct(input)?;
                conn.input_start += n;
                moved += n;
                progressed |= n > 0;
            }
            if conn.input_start == conn.input_end && !conn.eof && conn.readable {
                let (n, eof) = upstream.take_from(&mut conn.stream)?;
                ctx.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                moved += n;
                conn.eof |= eof;
                if n > 0 || eof {
                    progressed = true;
                    conn.last_active = Instant::now();
                }
                if upstream.has_room() {
                    conn.readable = false;
                }
                progressed |= upstream.send()?;
            }
            if conn.eof && conn.input_start == conn.input_end {
                upstream.finish();
            }
            // Leader to client, after the replies this node produced itself.
            let unsent = conn.output.unsent();
            if unsent < WINDOW {
                let out = conn.output.append_after(SyncPoint::NONE);
                let n = upstream.receive(out, WINDOW - unsent)?;
                moved += n;
                progressed |= n > 0;
            }
            Ok(())
        })();
        let (connected, closed) = (upstream.connected, upstream.closed);
        if connected && !was_connected && !upstream.admin {
            if let Some(f) = &ctx.shared.forwarding {
                f.total.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = outcome {
            if !connected {
                unforward(conn, &format!("cannot be reached: {e}"), ctx);
                return false;
            }
            log::info!("forwarded connection closed: the leader's side failed: {e}");
            conn.dead = true;
            return true;
        }
        if conn.input_start == conn.input_end && !conn.input.is_empty() {
            conn.input_start = 0;
            conn.input_end = 0;
            conn.set_input_len(0, ctx);
        }
        let unsent = conn.output.unsent();
        conn.flush(ctx);
        progressed |= conn.output.unsent() < unsent;
        conn.charge_output(conn.output.memory(), ctx);
        if closed {
            // The leader is done (it answered a `quit`, died or lost the lead): so is the
            // client, once it has what came.
            conn.closing = true;
        }
        if conn.dead || !progressed {
            return true;
        }
        if moved >= PUMP_SHARE {
            // Its turn is over; the sockets' readiness is remembered for the next pass.
            conn.yielded = true;
            return true;
        }
    }
}
