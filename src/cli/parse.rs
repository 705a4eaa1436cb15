//! The values of `mqd serve`'s flags that need more than a number: sync policies and sizes with
//! units, and the check that a whole `ServerConfig` makes sense.

use std::time::Duration;

use crate::engine::SyncPolicy;
use crate::net::{ServerConfig, MAX_MESSAGE_SIZE_LIMIT};

/// `always`, `none`, or `interval:<ms>`.
pub fn parse_sync(text: &str) -> Result<SyncPolicy, String> {
    match text {
        "always" => Ok(SyncPolicy::Always),
        "none" => Ok(SyncPolicy::Never),
        _ => match text.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => Ok(SyncPolicy::Interval(Duration::from_millis(ms))),
            _ => Err(format!(
                "bad --sync {text:?}: expected always, none or interval:<ms> (ms > 0)"
            )),
        },
    }
}

/// A size in bytes, with an optional k/m/g suffix (MemcacheQ's -B takes plain bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 1 << 10),
        Some(b'm') => (&lower[..lower.len() - 1], 1 << 20),
        Some(b'g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("bad size {text:?}"))
}

/// Checks that the combination makes sense.
pub fn validate(config: &ServerConfig) -> Result<(), String> {
    if config.max_message_size == 0 || config.max_message_size > MAX_MESSAGE_SIZE_LIMIT {
        return Err(format!(
            "--max-message-size must be between 1 and {MAX_MESSAGE_SIZE_LIMIT} bytes"
        ));
    }
    if config.threads == 0 || config.threads > 256 {
        return Err("--threads must be between 1 and 256".into());
    }
    if config.listen.is_empty() && config.unix_socket.is_none() {
        return Err("nothing to listen on".into());
    }
    if config.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policies() {
        assert_eq!(parse_sync("always"), Ok(SyncPolicy::Always));
        assert_eq!(parse_sync("none"), Ok(SyncPolicy::Never));
        assert_eq!(
            parse_sync("interval:100"),
            Ok(SyncPolicy::Interval(Duration::from_millis(100)))
        );
        assert!(parse_sync("interval:0").is_err());
        assert!(parse_sync("sometimes").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("3g"), Ok(3 << 30));
        assert!(parse_size("x").is_err());
    }
}
