//! Monitoring, in one place: what the server reports about itself and how. `snapshot` gathers
//! every number at one moment; `/metrics` (`prometheus`), `/stats.json` (`stats_json`) and the
//! dashboard page (`dashboard.html`) render it, routed by `http_service` on a connection whose
//! first byte chose HTTP (`body_stream` renders the large ones as their client reads them);
//! `report` gathers what memcache `stats` and mqmq `Info` answer; `connection_counts` counts
//! connections by protocol. (`mqd top`, the terminal view of
//! `/stats.json`, is a client: `crate::cli::top`.)

pub(super) mod body_stream;
pub mod connection_counts;
pub(super) mod http_service;
pub(super) mod prometheus;
pub(super) mod report;
pub mod snapshot;
pub(super) mod stats_json;
