//! TLB shootdown — the analogue of `flush_tlb_mm()` / `try_to_unmap_flush()` and the
//! deferred `struct tlbflush_unmap_batch` that `TTU_BATCH_FLUSH` fills.
//!
//! Every [`Accessor`](super::Accessor) caches translations. A shootdown bumps the space's
//! flush generation and then waits until every live accessor of that space has either
//! acknowledged the new generation or is provably outside an access (the analogue of a CPU
//! that is not running the mm and so needs no IPI). The protocol is a Dekker-style
//! handshake on sequentially consistent atomics:
//!
//! ```text
//! flusher:  gen += 1          ; for each accessor: wait until !busy || acked >= gen
//! accessor: busy = true       ; if gen != seen { drop cached translations; acked = gen }
//!           ... access ...    ; busy = false
//! ```
//!
//! Either the flusher sees `busy` set (and waits for the access to end or acknowledge) or
//! the accessor's read of `gen` comes after the bump and it drops its stale entries before
//! use. After `flush_tlb_space` returns no accessor can write through a translation taken
//! before the unmap — which is what lets the batch copy run right after the flush.

#![forbid(unsafe_code)]

use crate::sync::{lock, Arc, Ordering};

use super::access::AccessorSlot;
use super::page_table::AddressSpace;

/// Shoots down every accessor's cached translations for `space` and waits for their
/// acknowledgements.
pub fn flush_tlb_space(space: &AddressSpace) {
    let gen = space.flush_gen.fetch_add(1, Ordering::SeqCst) + 1;
    let slots: Vec<Arc<AccessorSlot>> = lock(&space.accessors).clone();
    space
        .mm
        .events
        .nr_tlb_flushes
        .fetch_add(1, Ordering::Relaxed);
    for slot in &slots {
        let mut spins = 0u32;
        while slot.busy.load(Ordering::SeqCst) && slot.acked.load(Ordering::SeqCst) < gen {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Spaces whose TLB flush was deferred (`struct tlbflush_unmap_batch`), flushed once by
/// [`TlbBatch::flush`] (`try_to_unmap_flush`).
#[derive(Default)]
pub struct TlbBatch {
    pending: Vec<Arc<AddressSpace>>,
}

impl TlbBatch {
    /// A batch with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `space` needs a flush (`set_tlb_ubc_flush_pending`).
    pub fn add(&mut self, space: &Arc<AddressSpace>) {
        if self.pending.last().is_some_and(|s| Arc::ptr_eq(s, space)) {
            return;
        }
        if !self.pending.iter().any(|s| Arc::ptr_eq(s, space)) {
            self.pending.push(space.clone());
        }
    }

    /// Whether a flush is pending.
    pub fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Flushes every pending space once; returns the number of shootdowns done.
    pub fn flush(&mut self) -> usize {
        let n = self.pending.len();
        for s in self.pending.drain(..) {
            flush_tlb_space(&s);
        }
        n
    }
}
