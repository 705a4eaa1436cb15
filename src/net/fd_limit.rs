//! Descriptors for `--max-connections`: like memcached, the server raises its soft
//! `RLIMIT_NOFILE` (up to the hard limit) so that the connections it is told to accept can be
//! accepted, and warns when the hard limit is too low for them.

/// Descriptors the server needs besides client connections: listeners, RocksDB's files, eventfds.
const SPARE: u64 = 600;

pub fn raise_for(max_connections: u64) {
    let wanted = max_connections.saturating_add(SPARE);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= wanted {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        log::warn!("cannot raise the descriptor limit to {wanted}");
        return;
    }
    if raised.rlim_cur < wanted {
        log::warn!(
            "the descriptor limit ({}) is below --max-connections plus {SPARE}: raise it (ulimit -n, LimitNOFILE=)",
            raised.rlim_cur
        );
    }
}
