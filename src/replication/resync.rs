//! A member whose copy is damaged gets a whole one back from the group (issue 22): this module
//! owns the record of that on disk, the `mqd-resync` marker file in the data directory, and
//! the wipe it leads to at the next start. The wait in between is `quarantine`'s.
//!
//! RocksDB refuses every write once a compaction met a damaged block, until it is reopened,
//! and the damaged table file stays until the whole database is replaced: so the copy is not
//! dropped in the running process but at its next start, before the engine opens the
//! database. The process exits with `EXIT_RESYNC` once dropping its copy is safe, and its
//! supervisor (systemd's `Restart=on-failure`) starts it again.
//!
//! The marker has two stages, each written durably (a temporary file fsynced, renamed, the
//! directory fsynced) before what depends on it:
//! - `damaged`: written first, as soon as the damage is found. A member that starts with it
//!   does not campaign, vote or acknowledge anything: it waits, as `quarantine` says, for the
//!   proof that the others hold every committed entry without it.
//! - `wipe`: written once that proof arrived, just before the exit. The next start empties the
//!   data directory (`wipe_if_decided`) and leaves the marker saying `rejoin`.
//! - `rejoin`: the member starts as a joiner (`--join`'s empty state: no log, no membership,
//!   whatever its command line says), so the leader sends it a snapshot of every queue and the
//!   current membership; it gives no vote until that snapshot is installed (it has forgotten
//!   its votes), and then removes the marker. As a founder at (1, 1) it could be sent the log
//!   from index 2 instead, which lacks the queues a group seeded from a single server holds at
//!   index 1, and `--cluster`'s members, which may no longer be the membership.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The exit status of a member leaving to drop its damaged copy (EX_TEMPFAIL): its supervisor
/// starts it again, and the start wipes it (protocol-spec/cluster.md 8).
pub const EXIT_RESYNC: i32 = 75;

/// Leaves with `EXIT_RESYNC`, the decision to drop the copy on disk: the next start empties the
/// directory (`wipe_if_decided`), and the supervisor starts it again.
pub fn leave() -> ! {
    log::warn!(
        "exiting with status {EXIT_RESYNC} to be started again on an empty data directory \
         (protocol-spec/cluster.md 8)"
    );
    std::process::exit(EXIT_RESYNC);
}

/// The marker's name in the data directory.
pub const MARKER: &str = "mqd-resync";

/// What the marker says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Damage was found: wait for the group, keep everything.
    Damaged,
    /// The group holds every committed entry without this member: drop the copy at start.
    Wipe,
    /// The copy was dropped: take the group's as a joiner, vote for nobody until then.
    Rejoin,
}

impl Stage {
    fn word(self) -> &'static str {
        match self {
            Stage::Damaged => "damaged",
            Stage::Wipe => "wipe",
            Stage::Rejoin => "rejoin",
        }
    }
}

pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER)
}

/// The marker's stage, if there is one. A marker that says anything else is taken as
/// `Damaged`: keeping the copy and waiting is the safe reading.
pub fn read(data_dir: &Path) -> Option<Stage> {
    let text = fs::read(marker_path(data_dir)).ok()?;
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    [Stage::Wipe, Stage::Rejoin]
        .into_iter()
        .find(|stage| first.trim_ascii() == stage.word().as_bytes())
        .or(Some(Stage::Damaged))
}

/// Writes the marker durably: on disk, under its name, when this returns.
pub fn record(data_dir: &Path, stage: Stage, why: &str) -> std::io::Result<()> {
    let temporary = data_dir.join(format!("{MARKER}.tmp"));
    let mut file = fs::File::create(&temporary)?;
    // The first line is the stage; the rest says why, for the operator.
    writeln!(file, "{}\n{}", stage.word(), why.replace('\n', " "))?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, marker_path(data_dir))?;
    fs::File::open(data_dir)?.sync_all()
}

/// At start, under `--cluster`, before the database is opened: a marker saying `wipe` empties
/// the data directory (durably), then says `rejoin`. True if it did.
pub fn wipe_if_decided(data_dir: &Path) -> Result<bool, String> {
    if read(data_dir) != Some(Stage::Wipe) {
        return Ok(false);
    }
    let failed =
        |e: std::io::Error| format!("dropping the damaged copy in {}: {e}", data_dir.display());
    // RocksDB's own lock, as `mqd repair` takes it: never empty a directory a process uses.
    let _lock = crate::engine::repair::lock::hold(data_dir)?;
    log::warn!(
        "{} says this member's copy was damaged and the group holds every committed entry: \
         emptying {}; the leader sends a snapshot (protocol-spec/cluster.md 8)",
        MARKER,
        data_dir.display()
    );
    let mut removed = 0;
    for entry in fs::read_dir(data_dir).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        if entry.file_name() == MARKER || entry.file_name() == "LOCK" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().map_err(failed)?.is_dir() {
            fs::remove_dir_all(&path).map_err(failed)?;
        } else {
            fs::remove_file(&path).map_err(failed)?;
        }
        removed += 1;
    }
    fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed)?;
    // Only once the copy is gone: a crash before this wipes again at the next start.
    record(data_dir, Stage::Rejoin, "the damaged copy was removed").map_err(failed)?;
    log::warn!("{removed} files of the damaged copy removed; rejoining as a joiner");
    Ok(true)
}

/// The member took the group's copy (a snapshot installed after a `rejoin`): the marker goes.
pub fn rejoined(data_dir: &Path) {
    match fs::remove_file(marker_path(data_dir)) {
        Ok(()) => log::warn!("the group's copy is installed: this member takes part again"),
        Err(e) => log::error!("cannot remove {}: {e}", marker_path(data_dir).display()),
    }
}

/// Whether a raft thread's failure means this node's copy is damaged (rather than, say, a
/// full disk or a failed fsync): RocksDB's `Corruption` status (a block checksum mismatch,
/// which a compaction's background error passes on to every later write), a stored raft
/// record that does not decode, or damage a read of the engine reported.
pub fn is_damage(failure: &str) -> bool {
    failure.contains("Corruption:")
        || failure.contains("damaged raft state")
        || failure.starts_with(DAMAGE_FOUND)
}

/// How the raft thread words damage the engine reported.
pub const DAMAGE_FOUND: &str = "damaged data found: ";

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temporary one, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let path =
                std::env::temp_dir().join(format!("mqd-resync-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Scratch(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_marker_says_its_stage_and_a_wipe_empties_the_directory_and_removes_it() {
        let dir = Scratch::new("stages");
        let data = dir.path();
        assert_eq!(read(data), None);
        assert!(!wipe_if_decided(data).unwrap(), "no marker: nothing");
        fs::write(data.join("000012.sst"), b"table").unwrap();
        fs::create_dir(data.join("raft-snap")).unwrap();
        fs::write(data.join("raft-snap/x.snap"), b"s").unwrap();

        record(
            data,
            Stage::Damaged,
            "Corruption: block checksum mismatch\nin 12",
        )
        .unwrap();
        assert_eq!(read(data), Some(Stage::Damaged));
        assert!(
            !wipe_if_decided(data).unwrap(),
            "damaged only: the copy is kept"
        );
        assert!(data.join("000012.sst").exists());

        record(data, Stage::Wipe, "node 2 committed 40").unwrap();
        assert_eq!(read(data), Some(Stage::Wipe));
        assert!(!data.join(format!("{MARKER}.tmp")).exists());
        assert!(wipe_if_decided(data).unwrap());
        let mut left: Vec<_> = fs::read_dir(data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["LOCK", MARKER],
            "everything gone but the marker and the lock"
        );
        assert_eq!(read(data), Some(Stage::Rejoin));
        assert!(!wipe_if_decided(data).unwrap(), "once");
        rejoined(data);
        assert_eq!(read(data), None);
    }

    #[test]
    fn an_unreadable_marker_keeps_the_copy() {
        let dir = Scratch::new("unreadable");
        fs::write(marker_path(dir.path()), b"wi").unwrap();
        assert_eq!(read(dir.path()), Some(Stage::Damaged));
        assert!(!wipe_if_decided(dir.path()).unwrap());
    }

    #[test]
    fn damage_is_told_from_other_failures() {
        assert!(is_damage(
            "raft log write failed: storage failure: Corruption: block checksum mismatch: \
             stored = 1, computed = 2"
        ));
        assert!(is_damage(
            "raft log write failed: damaged raft state: entry"
        ));
        assert!(is_damage(&format!("{DAMAGE_FOUND}Corruption")));
        assert!(!is_damage(
            "raft log write failed: storage failure: IO error: No space left on device"
        ));
        assert!(!is_damage("fsync failed: Input/output error"));
    }
}
