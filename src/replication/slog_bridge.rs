//! raft-rs logs only through a `slog::Logger`; mqd logs through `log`. This drain forwards each
//! slog record to `log` under the target "raft", with the record's key-values (raft-rs adds
//! `raft_id` to every record) appended to the message, so a raft line says which node wrote it.
//! About 40 lines, where `slog-stdlog` would bring a crate and its `slog-scope` globals.

use std::fmt::Write as _;

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

/// The `log` target of every record raft-rs writes.
pub const TARGET: &str = "raft";

/// A `slog::Drain` writing to the `log` crate's logger.
pub struct LogDrain;

/// Collects a record's key-values as ` key=value` text.
struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

fn level(level: slog::Level) -> log::Level {
    match level {
        slog::Level::Critical | slog::Level::Error => log::Level::Error,
        slog::Level::Warning => log::Level::Warn,
        slog::Level::Info => log::Level::Info,
        slog::Level::Debug => log::Level::Debug,
        slog::Level::Trace => log::Level::Trace,
    }
}

impl Drain for LogDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = level(record.level());
        // Format nothing unless the record will be written.
        if !log::log_enabled!(target: TARGET, level) {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        log::logger().log(
            &log::Record::builder()
                .args(format_args!("{}{}", record.msg(), kv.0))
                .level(level)
                .target(TARGET)
                .module_path_static(Some(record.module()))
                .file_static(Some(record.file()))
                .line(Some(record.line()))
                .build(),
        );
        Ok(())
    }
}

/// The logger to give raft-rs.
pub fn logger() -> slog::Logger {
    slog::Logger::root(LogDrain.fuse(), slog::o!())
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, OnceLock};

    use super::*;

    /// Keeps the records of target "raft" that reach `log`.
    struct Capture(Mutex<Vec<(log::Level, String)>>);

    impl log::Log for Capture {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.target() == TARGET
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                let line = record.args().to_string();
                self.0.lock().unwrap().push((record.level(), line));
            }
        }
        fn flush(&self) {}
    }

    /// The test binary's only logger (`log` allows one per process; no other test sets one).
    fn capture() -> &'static Capture {
        static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
        CAPTURE.get_or_init(|| {
            let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
            log::set_logger(capture).expect("no other logger in the unit tests");
            log::set_max_level(log::LevelFilter::Info);
            capture
        })
    }

    #[test]
    fn a_raft_record_reaches_log_with_the_raft_id() {
        let capture = capture();
        // A one-voter RawNode on raft-rs's own in-memory storage: campaigning makes raft-rs
        // log "became leader" at info level, through our drain.
        let storage = raft::storage::MemStorage::new_with_conf_state((vec![7], vec![]));
        let config = raft::Config {
            id: 7,
            ..Default::default()
        };
        let mut node = raft::RawNode::new(&config, storage, &logger()).unwrap();
        node.campaign().unwrap();
        let lines = capture.0.lock().unwrap().clone();
        assert!(
            lines.iter().any(|(level, line)| *level == log::Level::Info
                && line.contains("became leader")
                && line.contains("raft_id=7")),
            "raft's records, as `log` saw them: {lines:?}"
        );
    }
}
