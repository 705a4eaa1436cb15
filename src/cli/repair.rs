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
    let what = if lost == 0 {
        "no message".to_string()
    } else {
        format!(
            "{} in {}",
            count(lost, "message"),
            count(report.lost.len() as u64, "queue")
        )
    };
    let elsewhere = if report.damage_elsewhere {
        "; damaged blocks among consumed messages, which would stop a compaction"
    } else {
        ""
    };
    let summary = match &report.outcome {
        Outcome::Clean => format!("no damage found: {checked}; nothing changed\n"),
        Outcome::WouldRepair => {
            format!("would lose {what}{files}{elsewhere} ({checked}); nothing changed (dry run)\n")
        }
        Outcome::Repaired { damaged_kept_in } => format!(
            "lost {what}{files}{elsewhere} ({checked}); repaired: every other message is kept, \
             the damaged directory was moved to {} (remove it once the queues are checked)\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lost: Vec<(Vec<u8>, Vec<u64>)>, outcome: Outcome) -> Report {
        Report {
            queues: 2,
            intact: 10,
            lost,
            damaged_files: vec!["000010.sst".into()],
            damage_elsewhere: false,
            outcome,
        }
    }

    #[test]
    fn a_line_per_lost_message_then_the_summary() {
        let text = render(
            &report(vec![(b"a b".to_vec(), vec![7, 8])], Outcome::WouldRepair),
            std::time::Duration::from_millis(250),
        );
        assert_eq!(
            text,
            "lost a\\x20b 7\nlost a\\x20b 8\nmqd repair: would lose 2 messages in 1 queue, \
             damaged table files: 000010.sst (2 queues, 12 messages checked in 0.2 s); nothing \
             changed (dry run)\n"
        );
    }

    #[test]
    fn damage_among_consumed_messages_loses_no_message() {
        let mut damaged = report(Vec::new(), Outcome::WouldRepair);
        damaged.damaged_files.clear();
        damaged.damage_elsewhere = true;
        let text = render(&damaged, std::time::Duration::ZERO);
        assert!(
            text.starts_with("mqd repair: would lose no message; damaged blocks among consumed"),
            "{text}"
        );
    }
}
