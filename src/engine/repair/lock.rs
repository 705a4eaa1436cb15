//! The data directory's `LOCK` file, held by `mqd repair` from start to end: the lock RocksDB
//! takes (an fcntl write lock on the whole file), so a server running on the directory makes the
//! repair refuse, and a server started during the repair fails to open the directory instead of
//! writing to files being replaced. The repair opens the directory read-only, which takes no
//! lock of its own.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Held while it lives; the lock goes with the process's last descriptor of the file.
pub struct DirLock {
    _file: File,
}

/// Locks `dir/LOCK` as RocksDB does; an error naming the process that holds it if one does.
pub fn hold(dir: &Path) -> Result<DirLock, String> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut lock = whole_file(libc::F_WRLCK);
    // SAFETY: fcntl reads and writes only the flock struct we pass.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
        return Ok(DirLock { _file: file });
    }
    let error = std::io::Error::last_os_error();
    let holder = match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) } {
        0 if lock.l_type != libc::F_UNLCK as libc::c_short => format!(" (pid {})", lock.l_pid),
        _ => String::new(),
    };
    Err(format!(
        "{} is in use by a running server{holder} ({error}): stop it first",
        dir.display()
    ))
}

fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain data; all zero is a valid value, the fields below set the rest.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}
