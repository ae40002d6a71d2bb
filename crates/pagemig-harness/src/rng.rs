//! The harness's one pseudo-random source: splitmix64 (Steele, Lea and Flood), owned
//! ([`Rng`]) or shared between threads through one atomic counter ([`SharedRng`]). The
//! sequences only need to be cheap, seedable and reproducible, not cryptographic.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A splitmix64 generator owned by one thread.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }
    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        unit(self.next_u64())
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A splitmix64 generator shared by threads: each draw advances one atomic counter.
#[derive(Debug)]
pub struct SharedRng(AtomicU64);

impl SharedRng {
    /// A shared generator seeded with `seed`.
    pub fn new(seed: u64) -> SharedRng {
        SharedRng(AtomicU64::new(seed))
    }
    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        mix(self
            .0
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA))
    }
    /// True with probability `p`.
    pub fn chance(&self, p: f64) -> bool {
        unit(self.next_u64()) <= p
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_and_shared_draw_the_same_sequence() {
        let (mut a, b) = (Rng::new(7), SharedRng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(1);
        let mean = (0..10_000).map(|_| r.next_f64()).sum::<f64>() / 10_000.0;
        assert!((0.48..0.52).contains(&mean), "{mean}");
        assert!((0..1000).all(|_| r.below(3) < 3));
    }
}
