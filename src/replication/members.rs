//! The members' replication addresses (issue 22, step 7): id -> `HOST:PORT`, for every voter
//! and learner. `--cluster` gives the starting point; a membership change carries the new
//! member's address in its log entry, so every member (and a snapshot's receiver, the map being
//! stored beside the membership) learns it from the log, and the stored map wins over
//! `--cluster` after a restart. The raft thread owns the map and publishes each new one here;
//! the listener (whose messages to accept), forwarding (where the leader is) and the admin
//! connections read it. The encoding of the stored map and of `ID=HOST:PORT` lives here too.
//!
//! Beside the map: the members removed, each with the index of the change that removed it
//! (`Removals`, stored as `R`), so that a member removed while it was down, which comes back
//! believing it is one, can be told so (`listener`) and stop.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

/// id -> `HOST:PORT`.
pub type Addresses = BTreeMap<u64, String>;

/// Removed members: id -> index of the membership change that removed it, until the id is
/// added again.
pub type Removals = BTreeMap<u64, u64>;

/// The current map, shared read-mostly.
#[derive(Debug, Default)]
pub struct Members {
    map: RwLock<Arc<Addresses>>,
    removals: RwLock<Arc<Removals>>,
}

impl Members {
    pub fn new(map: Addresses) -> Members {
        Members {
            map: RwLock::new(Arc::new(map)),
            removals: RwLock::default(),
        }
    }

    pub fn set_removals(&self, removals: Removals) {
        *self.removals.write() = Arc::new(removals);
    }

    /// The index of the change that removed `id`, if it was removed and not added since.
    pub fn removed_at(&self, id: u64) -> Option<u64> {
        self.removals.read().get(&id).copied()
    }

    /// The map as of now.
    pub fn get(&self) -> Arc<Addresses> {
        self.map.read().clone()
    }

    pub fn set(&self, map: Addresses) {
        *self.map.write() = Arc::new(map);
    }

    pub fn contains(&self, id: u64) -> bool {
        self.map.read().contains_key(&id)
    }

    pub fn address(&self, id: u64) -> Option<String> {
        self.map.read().get(&id).cloned()
    }
}

/// Checks a replication address: `HOST:PORT`, a non-empty host and a port that is a u16, no
/// spaces, commas or `=` (it is written in the stored map and on admin lines).
pub fn check_address(addr: &str) -> Result<(), String> {
    let bad = || format!("{addr:?} is not HOST:PORT");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty()
        || port.parse::<u16>().is_err()
        || addr
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b',' || b == b'=' || b.is_ascii_control())
    {
        return Err(bad());
    }
    Ok(())
}

/// Parses `ID=HOST:PORT` (an id above 0).
pub fn parse_member(member: &str) -> Result<(u64, String), String> {
    let bad = || format!("{member:?} is not ID=HOST:PORT");
    let (id, addr) = member.split_once('=').ok_or_else(bad)?;
    let id: u64 = id.trim().parse().map_err(|_| bad())?;
    let addr = addr.trim();
    if id == 0 || check_address(addr).is_err() {
        return Err(bad());
    }
    Ok((id, addr.to_string()))
}

/// The stored form: `ID=HOST:PORT` joined by commas (what `--cluster` takes).
pub fn encode(map: &Addresses) -> Vec<u8> {
    encode_pairs(map, '=')
}

/// The map `encode` wrote; `None` if it is not one.
pub fn decode(bytes: &[u8]) -> Option<Addresses> {
    decode_pairs(bytes, |member| parse_member(member).ok())
}

/// The stored form of `Removals`: `ID@INDEX` joined by commas.
pub fn encode_removals(removals: &Removals) -> Vec<u8> {
    encode_pairs(removals, '@')
}

/// The removals `encode_removals` wrote; `None` if it is not that.
pub fn decode_removals(bytes: &[u8]) -> Option<Removals> {
    decode_pairs(bytes, |removal| {
        let (id, index) = removal.split_once('@')?;
        Some((id.parse().ok()?, index.parse().ok()?))
    })
}

/// `ID<separator>VALUE` for each pair, joined by commas.
fn encode_pairs<V: std::fmt::Display>(map: &BTreeMap<u64, V>, separator: char) -> Vec<u8> {
    map.iter()
        .map(|(id, value)| format!("{id}{separator}{value}"))
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// What `encode_pairs` wrote, each pair read by `parse`; `None` if a pair does not read or an
/// id comes twice.
fn decode_pairs<V>(
    bytes: &[u8],
    parse: impl Fn(&str) -> Option<(u64, V)>,
) -> Option<BTreeMap<u64, V>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut map = BTreeMap::new();
    if text.is_empty() {
        return Some(map);
    }
    for pair in text.split(',') {
        let (id, value) = parse(pair)?;
        if map.insert(id, value).is_some() {
            return None;
        }
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_and_damaged_ones_are_refused() {
        let map: Addresses = [(1, "10.0.0.1:7701"), (4, "[::1]:7704"), (2, "db2:1")]
            .map(|(i, a)| (i, a.to_string()))
            .into();
        assert_eq!(decode(&encode(&map)), Some(map));
        assert_eq!(decode(b""), Some(Addresses::new()));
        for bad in [
            &b"1=a:1,1=b:2"[..],
            b"0=a:1",
            b"1=a",
            b"1=a:70000",
            b"x=a:1",
            b"1=a:1,",
            b"\xff",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn removals_round_trip_and_damaged_ones_are_refused() {
        let removals: Removals = [(3, 17), (12, 4096)].into();
        assert_eq!(decode_removals(&encode_removals(&removals)), Some(removals));
        assert_eq!(decode_removals(b""), Some(Removals::new()));
        for bad in [&b"3@1,3@2"[..], b"3", b"3@", b"x@1", b"3@1,", b"\xff"] {
            assert_eq!(decode_removals(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn addresses_are_host_and_port_with_nothing_that_breaks_a_line() {
        assert!(check_address("127.0.0.1:7701").is_ok());
        assert!(check_address("[::1]:1").is_ok());
        for bad in [
            "", ":1", "a", "a:", "a:x", "a b:1", "a,b:1", "a=b:1", "a:1\r",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_member(" 4 = h:9 "), Ok((4, "h:9".to_string())));
        assert!(parse_member("4h:9").is_err());
    }

    #[test]
    fn the_shared_map_is_replaced_whole() {
        let members = Members::new([(1, "a:1".to_string())].into());
        let before = members.get();
        members.set([(2, "b:2".to_string())].into());
        assert!(!members.contains(1) && members.contains(2));
        assert_eq!(members.address(2).as_deref(), Some("b:2"));
        assert_eq!(before.len(), 1, "a reader's copy stays as it was");
    }
}
