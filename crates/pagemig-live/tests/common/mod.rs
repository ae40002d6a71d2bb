//! Helpers shared by the live backend's test binaries.
#![allow(dead_code)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pagemig::mm::{Memory, MemoryConfig};
use pagemig_live::LiveRegion;

/// A memory of two nodes of `mib` MiB each.
pub fn memory(mib: usize) -> Arc<Memory> {
    Memory::new(MemoryConfig::with_nodes(2, mib << 20)).unwrap()
}

/// Fills the region with a pattern of `seed`.
pub fn fill(r: &LiveRegion, seed: u64) {
    for (i, w) in r.words().iter().enumerate() {
        w.store(
            seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            Ordering::Relaxed,
        );
    }
}

/// The words of the region that do not hold `seed`'s pattern.
pub fn check(r: &LiveRegion, seed: u64) -> usize {
    r.words()
        .iter()
        .enumerate()
        .filter(|(i, w)| {
            w.load(Ordering::Relaxed) != seed ^ (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        })
        .count()
}
