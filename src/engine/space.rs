//! The free-space reserve: new messages are refused while the data directory's file system has
//! less free space than `--min-free-space`. RocksDB cannot recover from a full disk by itself
//! (its C API has no Resume), so it must never meet one; reads, deletes and flushes, which free
//! space, go on below the reserve.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Whether the data directory's file system has room above the reserve, asked of the kernel
/// at most every 100 ms.
pub(super) struct FreeSpace {
    dir: PathBuf,
    reserve: u64,
    checked: Option<Instant>,
    enough: bool,
}

impl FreeSpace {
    pub(super) fn new(dir: PathBuf, reserve: u64) -> FreeSpace {
        FreeSpace {
            dir,
            reserve,
            checked: None,
            enough: true,
        }
    }

    pub(super) fn enough(&mut self) -> bool {
        let now = Instant::now();
        if self.reserve == 0 || self.checked.is_some_and(|at| now - at < FREE_SPACE_RECHECK) {
            return self.enough;
        }
        self.checked = Some(now);
        let was = self.enough;
        self.enough = match free_bytes(&self.dir) {
            Some(free) => free >= self.reserve,
            None => true,
        };
        if was != self.enough {
            if self.enough {
                log::warn!("free disk space is above the reserve again: accepting messages");
            } else {
                log::error!(
                    "free disk space under the {} MiB reserve: refusing new messages",
                    self.reserve >> 20
                );
            }
        }
        self.enough
    }
}

const FREE_SPACE_RECHECK: Duration = Duration::from_millis(100);

/// Bytes available to this process on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the struct we pass, and reads the NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}
