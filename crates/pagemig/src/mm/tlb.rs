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
//! flusher:  gen += 1; fence(SeqCst); for each accessor: wait until !busy || acked >= gen
//! accessor: busy = true; fence(SeqCst); if gen != seen { drop cached translations; acked = gen }
//!           ... access ...    ; busy = false
//! ```
//!
//! The two sequentially consistent fences order the two sides: either the flusher's load
//! sees `busy` set (and waits for the access to end or acknowledge) or the accessor's load
//! of `gen` sees the bump and it drops its stale entries before use. After a shootdown returns no accessor can write through a translation taken
//! before the unmap — which is what lets the batch copy run right after the flush. The
//! protocol lives in [`TlbDomain`] and [`AccessorSlot`] and is model-checked with loom.

#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::sync::model::{self, fence, AtomicBool, AtomicU64, Mutex, Ordering};

use super::page_table::AddressSpace;

/// One accessor as the flusher sees it (a CPU in `mm_cpumask`).
#[derive(Debug)]
pub struct AccessorSlot {
    /// Inside an access.
    busy: AtomicBool,
    /// Last flush generation acknowledged.
    acked: AtomicU64,
}

impl AccessorSlot {
    /// Begins an access: publishes `busy`, then acknowledges a newer shootdown if there is
    /// one. Returns true when the caller must drop its cached translations first.
    pub fn enter(&self, domain: &TlbDomain, seen_gen: &mut u64) -> bool {
        self.busy.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let gen = domain.flush_gen.load(Ordering::Acquire);
        if gen != *seen_gen {
            *seen_gen = gen;
            self.acked.store(gen, Ordering::Release);
            return true;
        }
        false
    }

    /// Ends an access.
    pub fn exit(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// The TLB state of one address space: its flush generation and its live accessors.
#[derive(Debug)]
pub struct TlbDomain {
    flush_gen: AtomicU64,
    slots: Mutex<Vec<Arc<AccessorSlot>>>,
}

impl Default for TlbDomain {
    fn default() -> Self {
        Self::new()
    }
}

impl TlbDomain {
    /// A domain with no accessors.
    pub fn new() -> TlbDomain {
        TlbDomain {
            flush_gen: AtomicU64::new(0),
            slots: Mutex::new(Vec::new()),
        }
    }

    /// Registers an accessor; returns its slot and the generation it has seen.
    pub fn register(&self) -> (Arc<AccessorSlot>, u64) {
        let mut slots = model::lock(&self.slots);
        let gen = self.flush_gen.load(Ordering::SeqCst);
        let slot = Arc::new(AccessorSlot {
            busy: AtomicBool::new(false),
            acked: AtomicU64::new(gen),
        });
        slots.push(slot.clone());
        (slot, gen)
    }

    /// Removes an accessor.
    pub fn unregister(&self, slot: &Arc<AccessorSlot>) {
        model::lock(&self.slots).retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// Shoots down every accessor's cached translations and waits for the
    /// acknowledgements. Returns the new generation.
    pub fn shootdown(&self) -> u64 {
        let gen = self.flush_gen.fetch_add(1, Ordering::SeqCst) + 1;
        fence(Ordering::SeqCst);
        let slots: Vec<Arc<AccessorSlot>> = model::lock(&self.slots).clone();
        for slot in &slots {
            let mut i = 0;
            while slot.busy.load(Ordering::Acquire) && slot.acked.load(Ordering::Acquire) < gen {
                model::spin_step(i);
                i = i.saturating_add(1);
            }
        }
        gen
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.flush_gen.load(Ordering::SeqCst)
    }
}

/// Shoots down every accessor of `space` (`flush_tlb_mm`).
pub fn flush_tlb_space(space: &AddressSpace) {
    space.tlb.shootdown();
    space
        .mm
        .events
        .nr_tlb_flushes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Spaces whose TLB flush was deferred (`struct tlbflush_unmap_batch`), flushed once by
/// [`TlbBatch::flush`] (`try_to_unmap_flush`).
pub struct TlbBatch {
    /// Unique per batch: a backend keeps each batch's deferred unmaps apart.
    id: u64,
    pending: Vec<Arc<AddressSpace>>,
    unmap_failed: Vec<super::Folio>,
}

impl Default for TlbBatch {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        TlbBatch {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            pending: Vec::new(),
            unmap_failed: Vec::new(),
        }
    }
}

impl TlbBatch {
    /// A batch with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// This batch's id (what a backend files its deferred unmaps under).
    pub fn id(&self) -> u64 {
        self.id
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

    /// Flushes every pending space once; returns the number of shootdowns done. A space
    /// with a backend first performs its queued unmaps; folios whose unmap failed there get
    /// their PTEs back and are listed in [`take_unmap_failed`](Self::take_unmap_failed).
    pub fn flush(&mut self) -> usize {
        let n = self.pending.len();
        for s in self.pending.drain(..) {
            if let Some(be) = &s.backend {
                for f in be.flush_unmaps(self.id) {
                    s.restore_migration_ptes(f.vaddr, f.pfn, f.nr);
                    self.unmap_failed
                        .push(super::Folio(s.mm.compound_head(f.pfn)));
                }
            }
            flush_tlb_space(&s);
        }
        n
    }

    /// The folios whose deferred unmap failed in a backend at the last flush: they are
    /// mapped again, and the caller puts them back.
    pub fn take_unmap_failed(&mut self) -> Vec<super::Folio> {
        std::mem::take(&mut self.unmap_failed)
    }
}
