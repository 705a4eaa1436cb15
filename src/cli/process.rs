//! What MemcacheQ's process options do to the process itself, on Linux through libc: `-d` (become
//! a daemon, while the shell that started it still learns whether start-up worked) and `-r` (raise
//! the core-file limit); and how the process's allocator is set up. (`-u`, which the server
//! applies once it has bound its sockets, is `net::identity`.)

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};

/// Makes glibc's malloc give large freed blocks back. By default glibc raises its mmap
/// threshold (up to 32 MiB) whenever a large mmapped block is freed; from then on RocksDB's
/// memtable blocks come from the heap, whose freed memory stays with the process: a fill of 10
/// million 1 KB messages peaked at 276 MB. A fixed threshold (which turns the raising off)
/// keeps blocks of 1 MiB and more mmapped, returned when freed; the heap is trimmed only past
/// 64 MiB free at its top, so that smaller churn does not pay for `brk` calls. Fill of 3
/// million: peak 217 -> 175 MB, RSS after it 161-216 -> 104 MB; callgrind's instructions per
/// request unchanged.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// What a daemon tells the process that started it, through a pipe, once start-up is decided.
const READY: &str = "READY\n";

/// The daemon's end of the start-up pipe: the parent waits on it, so report exactly once.
pub struct StartupPipe(File);

impl StartupPipe {
    /// The server listens: the parent exits 0.
    pub fn ready(mut self) {
        let _ = self.0.write_all(READY.as_bytes());
    }

    /// Start-up failed: the parent prints `error` and exits 1.
    pub fn failed(mut self, error: &str) {
        let _ = self.0.write_all(error.as_bytes());
    }
}

/// `-d`: forks; the parent waits until the child reports (it never returns from here) and the
/// child, which returns, leaves the terminal's session and works from `/`, with standard input
/// and output and error on /dev/null, unless stderr already goes to a file or the journal, where
/// the logs are wanted. Call it before any thread starts: only the calling thread survives a
/// fork. Paths in the configuration must be absolute by now.
pub fn daemonize(keep_stderr: bool) -> Result<StartupPipe, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: each descriptor is fresh from pipe2 and owned exactly once, by one File.
    let (reader, writer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (documented precondition), so the child is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(reader);
            // SAFETY: plain system calls on this process.
            unsafe { libc::setsid() };
            std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
            redirect_stdio(keep_stderr)?;
            Ok(StartupPipe(writer))
        }
        child => {
            drop(writer);
            std::process::exit(wait_for_daemon(reader, child))
        }
    }
}

/// The parent's side: the exit status for the shell.
fn wait_for_daemon(mut reader: File, child: libc::pid_t) -> i32 {
    let mut report = String::new();
    let _ = reader.read_to_string(&mut report);
    if report == READY {
        return 0;
    }
    if !report.is_empty() {
        eprintln!("mqd: {report}");
        return 1;
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    eprintln!("mqd: the daemon stopped during start-up (wait status {status})");
    1
}

fn redirect_stdio(keep_stderr: bool) -> Result<(), String> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    let mut targets = vec![0, 1];
    if !keep_stderr {
        targets.push(2);
    }
    for fd in targets {
        // SAFETY: dup2 onto a standard descriptor; `null` stays open until after the loop.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// True if standard error is a regular file (`2>>mqd.log`): a daemon keeps logging there.
pub fn stderr_is_file() -> bool {
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.is_file())
}

/// `-r`: raises the core-file size limit as far as allowed (unlimited when root may, else the
/// hard limit), so a crash leaves a whole core.
pub fn raise_core_limit() -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &unlimited) } == 0 {
        return Ok(libc::RLIM_INFINITY);
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) } != 0 {
        return Err(format!(
            "cannot raise the core file limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(limit.rlim_max)
}
