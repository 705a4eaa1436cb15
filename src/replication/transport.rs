//! How raft messages leave a node. The raft thread hands each batch to a `Transport` and
//! never waits on it: a transport queues, and drops what it cannot deliver (raft-rs resends
//! what matters). Peers' messages come back in through the node's `Input` channel.

use raft::prelude::Message;

pub trait Transport: Send + 'static {
    /// Sends `messages` (each names its destination in `to`) in order, without blocking.
    fn send(&mut self, messages: Vec<Message>);

    /// The members' addresses changed (id -> `HOST:PORT`, this node's included): reach the
    /// new ones, stop sending to those gone.
    fn set_peers(&mut self, _peers: &super::members::Addresses) {}
}
