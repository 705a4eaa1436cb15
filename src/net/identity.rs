//! `-u`: running as another user when started as root, as MemcacheQ does. The server binds its
//! sockets and opens the data directory first (`server`), then hands them to the user and
//! becomes it, on Linux through libc.

use std::ffi::CString;
use std::path::Path;

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
    ///
    /// RocksDB's background threads are running by then and may delete a file (an obsolete
    /// table or WAL) between the listing and the change: a file gone meanwhile is skipped.
    pub fn take_ownership(&self, path: &Path) -> Result<(), String> {
        let vanished = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if vanished(&e) => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        match std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)) {
            Ok(()) => {}
            Err(e) if vanished(&e) => return Ok(()),
            Err(e) => {
                return Err(format!(
                    "cannot give {} to {}: {e}",
                    path.display(),
                    self.name
                ))
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// RocksDB deletes obsolete files while `-u` walks the data directory: files that vanish
    /// between the listing and the change are skipped, never an error (a restart as `nobody`
    /// once failed on exactly that).
    #[test]
    fn files_deleted_during_the_walk_are_skipped() {
        let dir = std::env::temp_dir().join(format!("mqd-identity-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        // SAFETY: plain system calls with no preconditions.
        let me = Identity {
            name: "me".into(),
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
        };
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for sub in ["", "sub"] {
                        let file = dir.join(sub).join(format!("{:06}.sst", n % 64));
                        if std::fs::remove_file(&file).is_err() {
                            let _ = std::fs::write(&file, b"x");
                        }
                    }
                    n += 1;
                }
            })
        };
        let failures: Vec<String> = (0..300)
            .filter_map(|_| me.take_ownership(&dir).err())
            .collect();
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            failures.is_empty(),
            "{} walks failed: {:?}",
            failures.len(),
            failures.first()
        );
    }
}
