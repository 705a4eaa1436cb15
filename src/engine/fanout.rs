//! Fan-out with a bounded cost: every put to `<queue>` is copied to each `<queue>+<child>`, so a
//! put is refused (`Error::FanoutLimit`) when it would create one fan-out queue more than
//! `--max-fanout` allows under any of its parents. Queues that already exist keep working.

use super::{Engine, Error, QueueRef};

/// The queue a put goes to, loaded or created (in memory) if new, unless creating it would
/// exceed the fan-out limit of one of its parents (`a` and `a+b` are both parents of `a+b+c`).
pub(super) fn queue_for_put(engine: &Engine, name: &[u8]) -> Result<QueueRef, Error> {
    if let Some(state) = engine.lookup(name)? {
        return Ok(state);
    }
    if engine.registry.fanout_full(name, engine.config.max_fanout) {
        return Err(Error::FanoutLimit);
    }
    engine.lookup_or_create(name)
}
