//! The command line: `mqd serve`'s flags, MemcacheQ's start line (`memcacheq_cli`), what they
//! do to the process before it serves (`process`: daemon, core limit, allocator), logging, and
//! `mqd top`, the terminal view of a running server's `/stats.json`, and `mqd cluster`, a
//! replicated group's membership. It builds a
//! `net::ServerConfig` and hands it to `net::server`; nothing below it imports this module.

pub mod cluster;
pub mod logging;
pub mod memcacheq_cli;
pub mod parse;
pub mod process;
pub mod repair;
pub mod serve_args;
pub mod top;
