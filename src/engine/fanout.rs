//! Fan-out with a bounded cost: every put to `<queue>` is copied to each `<queue>+<child>`, so a
//! put is refused (`Error::FanoutLimit`) when it would create one fan-out queue more than
//! `--max-fanout` allows under any of its parents. Queues that already exist keep working.

use std::ops::Bound;

use super::{Engine, Error, QueueRef};

/// The queue a put goes to, created (in memory) if new, unless creating it would exceed the
/// fan-out limit of one of its parents (`a` and `a+b` are both parents of `a+b+c`).
pub(super) fn queue_for_put(engine: &Engine, name: &[u8]) -> Result<QueueRef, Error> {
    if let Some(state) = engine.lookup(name) {
        return Ok(state);
    }
    if fanout_full(engine, name) {
        return Err(Error::FanoutLimit);
    }
    Ok(engine.lookup_or_create(name))
}

fn fanout_full(engine: &Engine, name: &[u8]) -> bool {
    let max = engine.config.max_fanout;
    let names = engine.fanout.read();
    name.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'+')
        .any(|(at, _)| {
            let prefix = &name[..=at];
            names
                .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|child| child.starts_with(prefix))
                .take(max)
                .count()
                >= max
        })
}
