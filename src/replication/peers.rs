//! `mqd serve --node N --cluster 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`: which node this is, and
//! every member's replication address (this node listens on its own).

use std::collections::BTreeMap;
use std::time::Duration;

use super::members::parse_member;
use super::{LogLimits, Timing};

/// This node and the group's members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node: u64,
    /// Every member's id and replication address (`HOST:PORT`), this node's included.
    pub peers: BTreeMap<u64, String>,
    pub timing: Timing,
    /// `--raft-log-entries`: how large the raft log may grow before it is compacted.
    pub log: LogLimits,
    /// `--join`: a new member that takes its state from the group's snapshot.
    pub join: bool,
}

/// Most members a group may have: Raft groups are 3 or 5; more only slows every commit.
pub const MOST_MEMBERS: usize = 7;

impl ClusterConfig {
    /// Checks `--node` and `--cluster` together (both or neither), `--raft-tick-ms`,
    /// `--raft-log-entries` and `--join`.
    pub fn parse(
        node: Option<u64>,
        cluster: Option<&str>,
        tick_ms: Option<u64>,
        log_entries: Option<u64>,
        join: bool,
    ) -> Result<Option<ClusterConfig>, String> {
        let (node, spec) = match (node, cluster) {
            (None, None) if tick_ms.is_none() && log_entries.is_none() && !join => return Ok(None),
            (None, None) => {
                return Err("--raft-tick-ms, --raft-log-entries and --join need --cluster".into())
            }
            (Some(node), Some(spec)) => (node, spec),
            (Some(_), None) => return Err("--node needs --cluster".into()),
            (None, Some(_)) => return Err("--cluster needs --node (this node's id)".into()),
        };
        let mut peers = BTreeMap::new();
        for member in spec.split(',') {
            let (id, addr) = parse_member(member).map_err(|e| format!("--cluster: {e}"))?;
            if peers.insert(id, addr).is_some() {
                return Err(format!("--cluster: node {id} is listed twice"));
            }
        }
        if peers.len() > MOST_MEMBERS {
            return Err(format!("--cluster: at most {MOST_MEMBERS} members"));
        }
        if !peers.contains_key(&node) {
            return Err(format!("--node {node} is not in --cluster"));
        }
        let mut timing = Timing::default();
        if let Some(ms) = tick_ms {
            if !(1..=10_000).contains(&ms) {
                return Err("--raft-tick-ms: expected 1 to 10000".into());
            }
            timing.tick = Duration::from_millis(ms);
        }
        let log = match log_entries {
            None => LogLimits::default(),
            Some(n) if (8..=1 << 32).contains(&n) => LogLimits::entries(n),
            Some(_) => return Err("--raft-log-entries: expected 8 to 4294967296".into()),
        };
        Ok(Some(ClusterConfig {
            node,
            peers,
            timing,
            log,
            join,
        }))
    }

    /// This node's replication address.
    pub fn own_address(&self) -> &str {
        &self.peers[&self.node]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_lists_each_member_once_and_includes_this_node() {
        let c = ClusterConfig::parse(
            Some(2),
            Some("1=10.0.0.1:7701, 2=[::1]:7701,3=db3:7701"),
            None,
            None,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.ids(), [1, 2, 3]);
        assert_eq!(c.log, LogLimits::default());
        assert_eq!(c.own_address(), "[::1]:7701");
        assert_eq!(c.peers[&3], "db3:7701");
        assert_eq!(c.timing.tick, Duration::from_millis(50));
        assert_eq!(
            ClusterConfig::parse(None, None, None, None, false),
            Ok(None)
        );
        let fast = ClusterConfig::parse(Some(1), Some("1=a:1"), Some(20), Some(100), true)
            .unwrap()
            .unwrap();
        assert_eq!(fast.timing.tick, Duration::from_millis(20));
        assert_eq!(fast.log.max_entries, 100);
        assert!(fast.join);
        assert!(ClusterConfig::parse(None, None, None, None, true).is_err());
        assert!(ClusterConfig::parse(None, None, Some(20), None, false).is_err());
        assert!(ClusterConfig::parse(None, None, None, Some(100), false).is_err());
        assert!(ClusterConfig::parse(Some(1), Some("1=a:1"), Some(0), None, false).is_err());
        assert!(ClusterConfig::parse(Some(1), Some("1=a:1"), None, Some(7), false).is_err());
        for (node, spec) in [
            (Some(4), Some("1=a:1,2=b:2")),
            (Some(1), Some("1=a:1,1=b:2")),
            (Some(1), Some("1=a")),
            (Some(1), Some("1=a:99999")),
            (Some(0), Some("0=a:1")),
            (Some(1), Some("x=a:1")),
            (Some(1), Some("")),
            (Some(1), None),
            (None, Some("1=a:1")),
        ] {
            assert!(
                ClusterConfig::parse(node, spec, None, None, false).is_err(),
                "{node:?} {spec:?}"
            );
        }
    }
}
