//! No ghost queues: a read or a wait names a queue without making it exist. A blocked read needs
//! an in-memory queue to wait on; once its last waiter leaves, a queue that never held a message
//! is forgotten, so reads of ever-new names (`get <random>/t=1`, mqmq `Get`) leave nothing behind.
//! `stats` and `Info` list such a queue only while someone waits on it.

use super::queue::QueueState;
use super::Engine;

impl QueueState {
    /// A queue that exists only because someone named it: nothing was ever committed to it or
    /// staged for it, and nothing is held open.
    pub(super) fn is_ghost(&self) -> bool {
        !self.persisted
            && self.next_seq.get() == 0
            && self.tail == 0
            && self.returned.is_empty()
            && self.open.is_empty()
    }

    /// Whether `stats` and `Info` show the queue: a ghost only while someone waits on it.
    pub(super) fn is_listed(&self) -> bool {
        !self.is_ghost() || !self.waiters.is_empty()
    }
}

/// Forgets `queue` if it is a ghost no one waits on. Safe against a put racing it: the
/// committer stages under the queue's lock and looks again if it finds the queue forgotten.
pub(super) fn forget_if_unused(engine: &Engine, queue: &[u8]) {
    let mut queues = engine.queues.write();
    let Some(state) = queues.get(queue).cloned() else {
        return;
    };
    {
        let mut q = state.lock();
        if q.deleted || !q.is_ghost() || !q.waiters.is_empty() {
            return;
        }
        q.deleted = true;
    }
    queues.remove(queue);
    // Lock order: `queues` before `fanout`, as everywhere.
    engine.fanout.write().remove(queue);
}
