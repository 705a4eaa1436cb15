//! The engine's upkeep thread: once a second it starts a new second of queue use (`registry`),
//! unloads the queues that went idle (`unload`) and sweeps the queues whose messages are due to
//! expire (`expiry`). Each of those follows what changed, so an idle server with a million
//! queues on disk does next to nothing here.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::registry::UNLOAD_EMPTY_AFTER;
use super::{expiry, message, unload, Engine};

/// How often the upkeep runs.
pub(super) const UPKEEP_EVERY: Duration = Duration::from_secs(1);

pub(super) fn upkeep_every(engine: &Engine, every: Duration) {
    let mut next = Instant::now() + every;
    // Ticks left before the memory of many unloaded queues is given back to the system: by
    // then no list of recently used queues holds their states.
    let mut trim_in: Option<u32> = None;
    while !engine.stopping.load(Ordering::Acquire) {
        // Short naps so that shutdown is not held up by the interval.
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + every;
        engine.registry.tick();
        if unload::unload_idle(engine) >= unload::TRIM_AFTER {
            trim_in = Some(UNLOAD_EMPTY_AFTER + 1);
        }
        trim_in = match trim_in {
            Some(0) => {
                unload::give_memory_back();
                None
            }
            Some(n) => Some(n - 1),
            None => None,
        };
        expiry::sweep_due(engine, message::now_ms());
    }
}
