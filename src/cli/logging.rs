//! Where log lines go and how they look. On a terminal or in a file: a timestamp, the level and
//! the module. Under systemd, whose journal stamps each line itself: an sd-daemon priority prefix
//! (`<3>` error ... `<7>` debug) and the message, so `journalctl -p warning` filters by level and
//! no logrotate is needed.

use std::io::Write;
use std::os::unix::fs::MetadataExt;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `[timestamp LEVEL module] message`.
    Plain,
    /// `<priority>message`, for the journal.
    Journal,
}

impl LogFormat {
    /// `--log-format`: `auto` (journal when stderr is the journal), `plain` or `journal`.
    pub fn parse(text: &str) -> Result<Option<LogFormat>, String> {
        match text {
            "auto" => Ok(None),
            "plain" => Ok(Some(LogFormat::Plain)),
            "journal" => Ok(Some(LogFormat::Journal)),
            _ => Err(format!(
                "bad --log-format {text:?}: expected auto, plain or journal"
            )),
        }
    }

    /// The journal format if systemd connected stderr to the journal, else plain.
    pub fn detect() -> LogFormat {
        if stderr_is_journal() {
            LogFormat::Journal
        } else {
            LogFormat::Plain
        }
    }
}

/// True if `$JOURNAL_STREAM` (`device:inode`, set by systemd) names the stream stderr is: a
/// child whose stderr was redirected elsewhere keeps the variable but must not use the format.
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", meta.dev(), meta.ino())
}

/// The sd-daemon priority of a level (syslog's numbers).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Starts logging to stderr at `default_level` (`RUST_LOG` overrides) in `format`.
pub fn init(default_level: &str, format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    match format {
        LogFormat::Plain => builder.format_timestamp_millis(),
        LogFormat::Journal => builder
            .format(|out, record| writeln!(out, "<{}>{}", priority(record.level()), record.args())),
    };
    builder.init();
}
