//! The one content checksum of the project: four interleaved FNV-1a lanes over 64-bit
//! words (independent multiply chains, so it runs at memory speed rather than at one
//! multiply latency per word), folded together, then the remaining words and bytes.
//!
//! The memory model checksums folios with it ([`crate::mm::Memory::folio_checksum`]) and
//! the harness checksums a live region's words with [`checksum_words`]: the same bytes
//! give the same value either way.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

const PRIME: u64 = 0x0000_0100_0000_01b3;
const BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// The running state: feed blocks of four words, then [`Fnv4::finish`] with the rest.
#[derive(Debug, Clone, Copy)]
pub struct Fnv4 {
    lanes: [u64; 4],
}

impl Default for Fnv4 {
    fn default() -> Self {
        Fnv4::new()
    }
}

impl Fnv4 {
    /// The initial state.
    pub fn new() -> Fnv4 {
        Fnv4 {
            lanes: [
                BASIS,
                0x8422_2325_cbf2_9ce4,
                0x9ce4_8422_2325_cbf2,
                0x2325_cbf2_9ce4_8422,
            ],
        }
    }

    /// Four consecutive little-endian words (32 bytes).
    #[inline(always)]
    pub fn block(&mut self, w: [u64; 4]) {
        for (h, w) in self.lanes.iter_mut().zip(w) {
            *h = (*h ^ w).wrapping_mul(PRIME);
        }
    }

    /// Folds the lanes, then hashes the words (fewer than four) and bytes (fewer than
    /// eight) that followed the last block.
    pub fn finish(self, words: impl IntoIterator<Item = u64>, bytes: &[u8]) -> u64 {
        let h = self
            .lanes
            .iter()
            .fold(BASIS, |h, l| (h ^ l).wrapping_mul(PRIME));
        let h = words
            .into_iter()
            .fold(h, |h, w| (h ^ w).wrapping_mul(PRIME));
        bytes
            .iter()
            .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(PRIME))
    }
}

/// The checksum of words that other threads may be using (a live region, read through the
/// program's own mapping): each is loaded once, relaxed.
pub fn checksum_words(w: &[AtomicU64]) -> u64 {
    let mut s = Fnv4::new();
    let blocks = w.chunks_exact(4);
    let rest = blocks.remainder();
    for b in blocks {
        s.block([0, 1, 2, 3].map(|i| b[i].load(Ordering::Relaxed)));
    }
    s.finish(rest.iter().map(|x| x.load(Ordering::Relaxed)), &[])
}

/// The checksum of plain bytes (the reference the other two agree with).
pub fn checksum_bytes(b: &[u8]) -> u64 {
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
    let mut s = Fnv4::new();
    let blocks = b.chunks_exact(32);
    let rest = blocks.remainder();
    for c in blocks {
        s.block([0, 1, 2, 3].map(|i| word(&c[8 * i..8 * i + 8])));
    }
    let words = rest.chunks_exact(8);
    let tail = words.remainder();
    s.finish(words.map(word), tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_bytes_agree_and_see_every_word_and_its_place() {
        let words: Vec<u64> = (0..67u64).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut atomics: Vec<AtomicU64> = words.iter().map(|&w| AtomicU64::new(w)).collect();
        let base = checksum_bytes(&bytes);
        assert_eq!(checksum_words(&atomics), base);
        for i in [0, 3, 4, 31, 63, 64, 66] {
            atomics[i].fetch_xor(1 << 9, Ordering::Relaxed);
            assert_ne!(checksum_words(&atomics), base, "word {i}");
            atomics[i].fetch_xor(1 << 9, Ordering::Relaxed);
        }
        atomics.swap(1, 2);
        assert_ne!(checksum_words(&atomics), base, "two words swapped");
        assert_ne!(checksum_bytes(&bytes[..bytes.len() - 1]), base);
    }
}
