//! Hash maps and sets for keys the server assigns itself (queue ids, sequence numbers,
//! connection ids): one multiply per key instead of SipHash, whose resistance to flooding only
//! matters for keys a client chooses (queue names keep it). SipHash was about 250 instructions
//! of every `set` (callgrind).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash's step: the multiply spreads the key into the high bits hashbrown tags buckets with,
/// and sequential keys keep distinct low bits.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SEED);
    }
}

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_land_in_distinct_buckets_and_map_back() {
        let mut map = IdMap::default();
        for id in 0..10_000u64 {
            map.insert(id, id * 2);
        }
        assert!((0..10_000u64).all(|id| map.get(&id) == Some(&(id * 2))));
        let hash = |id: u64| {
            let mut h = IdHasher::default();
            h.write_u64(id);
            h.finish()
        };
        let low: HashSet<u64> = (0..1024).map(|id| hash(id) & 1023).collect();
        assert_eq!(low.len(), 1024, "sequential ids collide in the low bits");
    }
}
