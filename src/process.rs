//! What MemcacheQ's process options do to the process itself, on Linux through libc: `-d` (become
//! a daemon, while the shell that started it still learns whether start-up worked), `-r` (raise
//! the core-file limit) and `-u` (run as another user when started as root); and how the
//! process's allocator is set up.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

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

/// A user to run as (`-u`).
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// The identity `-u name` asks for, if this process can take it: only root can, so any other
/// user gets `None` (logged) and runs as itself, as with MemcacheQ.
pub fn identity_to_assume(name: &str) -> Result<Option<Identity>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        log::info!("-u {name} ignored: not started as root");
        return Ok(None);
    }
    let c_name = CString::new(name).map_err(|_| format!("bad user name {name:?}"))?;
    // SAFETY: all-zero is a valid passwd (null pointers, zero ids) for getpwnam_r to fill.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is the buffer's size.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!("-u {name}: no such user"));
    }
    Ok(Some(Identity {
        name: name.to_string(),
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    }))
}

impl Identity {
    /// Gives `path` (a file, or a directory and everything in it) to this user, so the server
    /// can still create, rename and remove its files there once it runs as the user. Symbolic
    /// links are changed themselves, never followed.
    pub fn take_ownership(&self, path: &Path) -> Result<(), String> {
        let meta =
            std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| format!("cannot give {} to {}: {e}", path.display(), self.name))?;
        if meta.is_dir() {
            let entries =
                std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
                self.take_ownership(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Becomes this user for good: supplementary groups, group, then user (glibc applies each to
    /// every thread). Checks that root cannot be taken back.
    pub fn assume(&self) -> Result<(), String> {
        let fail = |what: &str| {
            format!(
                "{what} for -u {}: {}",
                self.name,
                std::io::Error::last_os_error()
            )
        };
        // SAFETY: plain system calls; the group list is one valid gid.
        unsafe {
            if libc::setgroups(1, &self.gid) != 0 {
                return Err(fail("setgroups"));
            }
            if libc::setgid(self.gid) != 0 {
                return Err(fail("setgid"));
            }
            if libc::setuid(self.uid) != 0 {
                return Err(fail("setuid"));
            }
            if self.uid != 0 && libc::setuid(0) == 0 {
                return Err(format!(
                    "-u {}: root privileges could be regained",
                    self.name
                ));
            }
        }
        log::info!(
            "running as user {} (uid {}, gid {})",
            self.name,
            self.uid,
            self.gid
        );
        Ok(())
    }
}

/// True if this process may create and remove files in `dir` (checked after `-u`).
pub fn can_write_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access reads a valid C string.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}
