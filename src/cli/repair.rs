//! `mqd repair`: the command line of the offline repair (`engine::repair`), and how its report
//! is printed: one `lost <queue> <seq>` line per message dropped (or, with `--dry-run`, that
//! would be), on stdout so it can be kept, then a summary; and its exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

use crate::engine::repair::{self, Outcome, Report};
use crate::protocol::memcache::printable_name;

/// Exit status of a dry run that found damage (0: none found; 1: could not survey or repair).
pub const DAMAGE_FOUND: u8 = 3;

#[derive(FromArgs)]
#[argh(subcommand, name = "repair")]
/// with the server stopped: drop the messages a damaged table file made unreadable, naming each
/// (`lost <queue> <seq>`), so their queues go on; the damaged directory is kept beside it
pub struct Repair {
    /// data directory (default ./mqd-data)
    #[argh(option, short = 'H', default = "PathBuf::from(\"./mqd-data\")")]
    data_dir: PathBuf,
    /// only report what would be dropped; exit 3 if anything would, 0 if nothing is damaged
    #[argh(switch)]
    dry_run: bool,
}

impl Repair {
    pub fn run(&self) -> ExitCode {
        let started = std::time::Instant::now();
        match repair::run(&self.data_dir, self.dry_run) {
            Ok(report) => {
                print!("{}", render(&report, started.elapsed()));
                match report.outcome {
                    Outcome::WouldRepair => ExitCode::from(DAMAGE_FOUND),
                    Outcome::Clean | Outcome::Repaired { .. } => ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprintln!("mqd repair: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The report as printed.
fn render(report: &Report, took: std::time::Duration) -> String {
    let mut out = String::new();
    for (queue, seqs) in &report.lost {
        let queue = printable_name(queue);
        for seq in seqs {
            out.push_str(&format!("lost {queue} {seq}\n"));
        }
    }
    let lost = report.lost_count();
    let checked = format!(
        "{}, {} checked in {:.1} s",
        count(report.queues, "queue"),
        count(report.intact + lost, "message"),
        took.as_secs_f64()
    );
    let files = if report.damaged_files.is_empty() {
        String::new()
    } else {
        format!(", damaged table files: {}", report.damaged_files.join(", "))
    };
    let elsewhere = if report.damage_elsewhere {
        "; damaged blocks outside the queues' messages (consumed ones), which would stop a \
         compaction"
    } else {
        ""
    };
    let summary = match &report.outcome {
        Outcome::Clean => format!("no damage found: {checked}; nothing changed\n"),
        Outcome::WouldRepair => format!(
            "would lose {} in {}{files}{elsewhere} ({checked}); nothing changed (dry run)\n",
            count(lost, "message"),
            count(report.lost.len() as u64, "queue")
        ),
        Outcome::Repaired { damaged_kept_in } => format!(
            "lost {} in {}{files}{elsewhere} ({checked}); repaired: every other message is \
             kept, the damaged directory was moved to {} (remove it once the queues are \
             checked)\n",
            count(lost, "message"),
            count(report.lost.len() as u64, "queue"),
            damaged_kept_in.display()
        ),
    };
    out.push_str("mqd repair: ");
    out.push_str(&summary);
    out
}

/// `1 queue`, `2 queues`.
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
