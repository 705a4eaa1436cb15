//! The two systemd contracts a service needs, without libsystemd: sockets passed by socket
//! activation (`LISTEN_PID`/`LISTEN_FDS`, first descriptor 3) and readiness and stopping
//! notifications to `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

const FIRST_FD: i32 = 3;

/// Listening sockets systemd passed to this process, if any (TCP or unix).
pub fn listeners_from_env() -> Vec<OwnedFd> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !for_us || count <= 0 {
        return Vec::new();
    }
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    (FIRST_FD..FIRST_FD + count)
        // SAFETY: systemd hands these descriptors to this process alone, once; we take
        // ownership of each exactly once here.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// Sends `state` (e.g. `READY=1`) to systemd; does nothing when not run by systemd.
pub fn notify(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)
        }
        None => socket.send_to(state.as_bytes(), &path),
    });
    if let Err(e) = result {
        log::warn!("cannot notify systemd ({state}): {e}");
    }
}
