//! [`LiveRegion`]: a program's region — memory it uses through plain loads and stores,
//! whose pages the core migrates between nodes while the program runs.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pagemig::mm::{AddressSpace, Folio, MmError, NodeId, Pte, VirtAddr, PAGE_SIZE};

use crate::counters::{inc, LiveCounts};
use crate::error::LiveError;
use crate::handler::LiveInner;
use crate::moves::{Dir, Mv, RegionBackend};
use crate::sys;

/// A program's region: memory it uses through plain loads and stores, whose pages the
/// core migrates between nodes while the program runs.
pub struct LiveRegion {
    pub(crate) backend: Arc<RegionBackend>,
    pub(crate) space: Arc<AddressSpace>,
    pub(crate) map: sys::Mapping,
    pub(crate) _live: Arc<LiveInner>,
}

impl std::fmt::Debug for LiveRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRegion")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .field("order", &self.backend.order)
            .finish()
    }
}

impl LiveRegion {
    /// First address.
    pub fn addr(&self) -> usize {
        self.backend.base
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.backend.len
    }

    /// Always false: a region has at least one folio.
    pub fn is_empty(&self) -> bool {
        self.backend.len == 0
    }

    /// Folio size in bytes.
    pub fn folio_bytes(&self) -> usize {
        PAGE_SIZE << self.backend.order
    }

    /// The region as 64-bit words, for the program's threads. Any access may fault: a
    /// never-touched page is populated, a page under migration waits for it.
    pub fn words(&self) -> &[AtomicU64] {
        &self.map.words()[..self.backend.len / 8]
    }

    /// The region's first byte, as a raw pointer (`as_ptr` and `as_mut_ptr` are the same
    /// address): for memory handed to C code or to system calls. Any access may fault, as
    /// for [`LiveRegion::words`]; the caller keeps Rust's aliasing rules (no plain
    /// reference while another thread writes through [`LiveRegion::words`]).
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// See [`LiveRegion::as_ptr`].
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// The region as bytes, for as long as the borrow lasts. `&mut self` makes it the only
    /// access through this region (no `words()` meanwhile, no other thread holding the
    /// region), which is what a plain slice needs; migrations may go on: a page under
    /// migration waits in a fault, and a moved page holds the same bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.backend.len;
        &mut self.map.bytes_mut()[..len]
    }

    /// The core's shadow page table of the region: give its folios to `migrate_pages`.
    pub fn space(&self) -> &Arc<AddressSpace> {
        &self.space
    }

    /// The folio that backs `addr` now, if it is mapped.
    pub fn folio_at(&self, addr: usize) -> Option<Folio> {
        self.space.folio_at(VirtAddr(addr as u64))
    }

    /// Sets the node that first touches come from.
    pub fn set_placement(&self, node: NodeId) -> Result<(), LiveError> {
        self.backend
            .shared
            .mm
            .node(node)
            .map_err(|_| LiveError::InvalidConfig(format!("no node {}", node.0)))?;
        self.backend.placement.store(node.0, Ordering::Relaxed);
        Ok(())
    }

    /// Switches between batched kernel calls and one call per folio.
    pub fn set_batch_moves(&self, on: bool) {
        self.backend.batch_moves.store(on, Ordering::Relaxed);
    }

    /// Maps every page not yet mapped, from the placement node (like `MAP_POPULATE`), with
    /// one `UFFDIO_MOVE` per contiguous run.
    pub fn populate(&self) -> Result<(), LiveError> {
        let fb = self.folio_bytes();
        let mut res = Ok(());
        for off in (0..self.len()).step_by(fb) {
            let va = self.addr() + off;
            if self.space.pte(VirtAddr(va as u64))? != Pte::None {
                continue;
            }
            match self.backend.populate_one(&self.space, va, va) {
                Ok(()) | Err(MmError::AlreadyMapped { .. }) => {}
                Err(e) => {
                    res = Err(e.into());
                    break;
                }
            }
            if off % (64 << 20) == 0 {
                self.backend.do_flush_remaps();
            }
        }
        self.backend.do_flush_remaps();
        res
    }

    /// Counters of the backend (all regions of its [`Live`](crate::Live)).
    pub fn counts(&self) -> LiveCounts {
        self.backend.shared.counters.snapshot()
    }
}

impl Drop for LiveRegion {
    fn drop(&mut self) {
        // Every page goes back to its frame's arena slot (the frames return to their
        // pools), then the shadow mappings are dropped.
        let b = &self.backend;
        b.do_flush_remaps();
        let mut back = Vec::new();
        let mut va = self.addr();
        while va < self.addr() + self.len() {
            let mut step = PAGE_SIZE;
            if let Ok(Pte::Present { pfn }) = self.space.pte(VirtAddr(va as u64)) {
                let head = b.shared.mm.compound_head(pfn);
                if head == pfn {
                    let nr = b.shared.mm.folio(Folio(head)).nr_pages();
                    back.push(Mv { va, pfn: head, nr });
                    step = nr * PAGE_SIZE;
                }
            }
            va += step;
        }
        let failed = b.run_moves(Dir::Out, back.clone());
        if !failed.is_empty() {
            inc(&b.shared.counters.remap_errors, failed.len() as u64);
        }
        for m in back {
            if failed.iter().any(|(f, _)| f.va == m.va) {
                // Its page could not go back: leak the frame rather than hand out a slot
                // that is not backed.
                continue;
            }
            let _ = self.space.unmap(VirtAddr(m.va as u64));
        }
        // Dead before the range is unmapped (the mapping drops after this body): a new
        // region may get these addresses at once, and a flush or a fault that still holds
        // this backend must not move pages into it or take its faults.
        let mut p = pagemig::sync::lock(&b.pending);
        b.dead.store(true, Ordering::Release);
        let stranded = p.inn.len() + p.out.len();
        p.inn.clear();
        p.out.clear();
        drop(p);
        if stranded > 0 {
            inc(&b.shared.counters.remap_errors, stranded as u64);
        }
    }
}
