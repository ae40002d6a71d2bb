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
    /// Given to the program for good ([`LiveRegion::detach`]): dropping does nothing.
    pub(crate) detached: bool,
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

    /// Length of the mapping behind the region (its length rounded up to 2 MiB).
    pub fn mapping_len(&self) -> usize {
        self.map.len()
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

    /// Base pages of the region present now, per node (index: node id).
    pub fn pages_per_node(&self) -> Vec<usize> {
        let mm = &self.backend.shared.mm;
        let mut per = vec![0; mm.nodes().len()];
        for va in (self.addr()..self.addr() + self.len()).step_by(PAGE_SIZE) {
            if let Ok(Pte::Present { pfn } | Pte::Migration { pfn }) =
                self.space.pte(VirtAddr(va as u64))
            {
                per[mm.node_of(pfn).0 as usize] += 1;
            }
        }
        per
    }

    /// `MADV_DONTNEED` on `[addr, addr + len)` (page aligned, inside the region): the
    /// range reads zero afterwards. Each folio wholly inside goes back to its node's pool
    /// (its next touch is a first touch); the part of a large folio inside is zeroed.
    /// Returns the base pages given back. The caller keeps migrations of this region out
    /// meanwhile (a folio under migration is zeroed instead, after its move).
    pub fn discard(&self, addr: usize, len: usize) -> Result<usize, LiveError> {
        let (start, end) = (addr, addr.saturating_add(len));
        if start % PAGE_SIZE != 0 || start < self.addr() || end > self.addr() + self.len() {
            return Err(LiveError::InvalidConfig(format!(
                "discard of {len} bytes at {addr:#x}: not page aligned inside the region"
            )));
        }
        let b = &self.backend;
        b.do_flush_remaps();
        let fb = self.folio_bytes();
        let mut back = Vec::new();
        let mut zero = Vec::new();
        let first = self.addr() + (start - self.addr()) / fb * fb;
        for fva in (first..end).step_by(fb) {
            let (s, e) = (fva.max(start), (fva + fb).min(end));
            match self.space.pte(VirtAddr(fva as u64))? {
                Pte::Present { pfn } if s == fva && e == fva + fb => {
                    let head = b.shared.mm.compound_head(pfn);
                    let nr = b.shared.mm.folio(Folio(head)).nr_pages();
                    if head == pfn && nr * PAGE_SIZE == fb {
                        back.push(Mv {
                            va: fva,
                            pfn: head,
                            nr,
                        });
                    } else {
                        zero.push((s, e));
                    }
                }
                Pte::None => {
                    // A large-folio region that fell back to base pages: each is its own.
                    for va in (s..e).step_by(PAGE_SIZE) {
                        if let Ok(Pte::Present { pfn }) = self.space.pte(VirtAddr(va as u64)) {
                            if b.shared.mm.folio(Folio(pfn)).nr_pages() == 1 {
                                back.push(Mv { va, pfn, nr: 1 });
                            } else {
                                zero.push((va, va + PAGE_SIZE));
                            }
                        }
                    }
                }
                _ => zero.push((s, e)),
            }
        }
        // Under the pending lock, as every move of the region's pages is.
        let failed = {
            let _p = pagemig::sync::lock(&b.pending);
            b.run_moves(Dir::Out, back.clone())
        };
        let mut given = 0;
        for m in back {
            if failed.iter().any(|(f, _)| f.va == m.va) {
                zero.push((m.va, m.va + m.nr * PAGE_SIZE));
                continue;
            }
            self.space.unmap(VirtAddr(m.va as u64))?;
            given += m.nr;
        }
        let words = self.words();
        for (s, e) in zero {
            for w in &words[(s - self.addr()) / 8..(e - self.addr()) / 8] {
                w.store(0, Ordering::Relaxed);
            }
        }
        Ok(given)
    }

    /// Gives the region to the program for good: every page stays where it is, the range
    /// is unregistered from the userfaultfd (its faults are the kernel's again: a page
    /// never touched reads zero) and is no longer unmapped on drop. Its frames stay
    /// allocated — their pages are the program's now — and are counted in
    /// `detached_pages`. For an operation on the range that the live backend does not
    /// follow (a partial `munmap`, `mremap`, `mprotect`). The caller keeps migrations of
    /// this region out meanwhile.
    pub fn detach(mut self) -> usize {
        let b = self.backend.clone();
        b.do_flush_remaps();
        let mut p = pagemig::sync::lock(&b.pending);
        b.dead.store(true, Ordering::Release);
        p.inn.clear();
        p.out.clear();
        drop(p);
        let _ = sys::unregister(&b.shared.uffd, self.map.addr(), self.map.len());
        let pages = self.pages_per_node().iter().sum::<usize>();
        inc(&b.shared.counters.detached_pages, pages as u64);
        // The shadow page table keeps the frames allocated: it is never dropped.
        std::mem::forget(self.space.clone());
        self.map.release();
        self.detached = true;
        pages
    }

    /// Remakes a region of which no page was ever touched with folios of `folio_order`
    /// (0 or 9), at the same address: what a program's `madvise(MADV_HUGEPAGE)` (or
    /// `MADV_NOHUGEPAGE`) right after its `mmap` asks of the kernel, whose folio size is
    /// chosen at the first touch. A 2 MiB region spans the whole mapping (its length
    /// rounded up to 2 MiB, [`LiveRegion::mapping_len`]); a base-page region keeps its
    /// length. The mapping is advised to match, as [`Live::region`](crate::Live::region)
    /// does. `fault_around` is the new region's ([`RegionConfig::fault_around`](crate::RegionConfig)).
    ///
    /// Refused, the region unchanged, with [`LiveError::Touched`] once any page was
    /// touched, populated or queued for a move: the folio size of a page in use is not
    /// changed (the kernel does not either; `khugepaged` would collapse it later, which a
    /// region registered with a userfaultfd never gets). A first touch racing with this
    /// call is either served before it (and the call is refused) or after it, by the new
    /// region. The caller keeps migrations of the region out meanwhile.
    pub fn remake(&mut self, folio_order: u8, fault_around: usize) -> Result<(), LiveError> {
        let b = self.backend.clone();
        let huge = match folio_order {
            0 => false,
            pagemig::mm::HPAGE_PMD_ORDER => true,
            o => {
                return Err(LiveError::InvalidConfig(format!(
                    "a region is remade with 4 KiB or 2 MiB folios, not order {o}"
                )))
            }
        };
        if folio_order == b.order {
            return Ok(());
        }
        let sh = b.shared.clone();
        let _serving = pagemig::sync::lock(&b.faulting);
        b.do_flush_remaps();
        let p = pagemig::sync::lock(&b.pending);
        let queued = !p.inn.is_empty() || !p.out.is_empty();
        let touched = queued
            || (self.addr()..self.addr() + self.len())
                .step_by(PAGE_SIZE)
                .any(|va| !matches!(self.space.pte(VirtAddr(va as u64)), Ok(Pte::None)));
        if touched {
            return Err(LiveError::Touched {
                addr: self.addr(),
                len: self.len(),
            });
        }
        let cfg = crate::RegionConfig {
            len_bytes: if huge { self.map.len() } else { self.len() },
            folio_order,
            placement: NodeId(b.placement.load(Ordering::Relaxed)),
            interleave: b.interleave,
            fault_around,
            batch_moves: b.batch_moves.load(Ordering::Relaxed),
        };
        let (nb, space) = crate::handler::new_backend(&sh, self.addr(), &cfg)?;
        self.map
            .advise_thp(huge)
            .map_err(|e| crate::error::sys_err("madvise", e))?;
        // The old backend retires before the new one is seen: a fault in between finds
        // neither and faults again (the handler wakes it).
        b.dead.store(true, Ordering::Release);
        drop(p);
        crate::handler::publish(&sh, &nb);
        self.backend = nb;
        // No page was ever mapped in the old shadow page table: nothing to give back.
        self.space = space;
        Ok(())
    }

    /// Counters of the backend (all regions of its [`Live`](crate::Live)).
    pub fn counts(&self) -> LiveCounts {
        self.backend.shared.counters.snapshot()
    }
}

impl Drop for LiveRegion {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
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
        let failed = {
            let _p = pagemig::sync::lock(&b.pending);
            b.run_moves(Dir::Out, back.clone())
        };
        // A page that could not go back (one shared with a forked child, `EBUSY`) stays in
        // the program's mapping, which goes away below; its frame's slot is empty. The slot
        // is backed again by the zero page (its bytes no longer matter), so the frame can go
        // back to its pool; where even that fails, the frame stays mapped in the shadow page
        // table, which is kept for good: a frame whose slot is empty is never handed out
        // (its first use would fault on the arena, in the handler itself).
        let mut stranded = false;
        for m in back {
            if failed.iter().any(|(f, _)| f.va == m.va) {
                if sys::zeropage(&b.shared.uffd, b.slot(m.pfn), m.nr * PAGE_SIZE).is_err() {
                    stranded = true;
                    inc(&b.shared.counters.remap_errors, 1);
                    continue;
                }
                inc(&b.shared.counters.slots_refilled, m.nr as u64);
            }
            let _ = self.space.unmap(VirtAddr(m.va as u64));
        }
        if stranded {
            std::mem::forget(self.space.clone());
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
