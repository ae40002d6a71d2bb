//! Address spaces and their page tables — the analogue of `struct mm_struct`, its PTEs
//! (`pte_t`, with swap-type migration entries) and the page-table lock.
//!
//! A PTE is one `AtomicU64`, so accessors walk the table without locks (like a hardware
//! walker); every change is made under the space's page-table lock (`ptl`).

#![forbid(unsafe_code)]

use crate::sync::{lock, Arc, AtomicU64, Mutex, Ordering};

use super::access::Accessor;
use super::folio::{pg, Folio};
use super::tlb::TlbDomain;
use super::{Memory, MmError, NodeId, Order, Pfn, VirtAddr, PAGE_SHIFT, PAGE_SIZE};

/// A page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pte {
    /// `pte_none()`: nothing mapped.
    None,
    /// `pte_present()`: maps this page frame.
    Present {
        /// the page frame
        pfn: Pfn,
    },
    /// A migration entry (`make_migration_entry`): the page at `pfn` is being migrated;
    /// an access waits for the folio lock (`migration_entry_wait`).
    Migration {
        /// the source page frame
        pfn: Pfn,
    },
}

const KIND_SHIFT: u32 = 62;
const PFN_MASK: u64 = (1 << 52) - 1;

impl Pte {
    /// Encodes the PTE as the word stored in the table.
    pub fn encode(self) -> u64 {
        match self {
            Pte::None => 0,
            Pte::Present { pfn } => (1 << KIND_SHIFT) | (pfn.0 & PFN_MASK),
            Pte::Migration { pfn } => (2 << KIND_SHIFT) | (pfn.0 & PFN_MASK),
        }
    }
    /// Decodes a table word.
    pub fn decode(w: u64) -> Pte {
        match w >> KIND_SHIFT {
            1 => Pte::Present {
                pfn: Pfn(w & PFN_MASK),
            },
            2 => Pte::Migration {
                pfn: Pfn(w & PFN_MASK),
            },
            _ => Pte::None,
        }
    }
}

/// An address space (`struct mm_struct`): a virtual range with a page table, an anon_vma
/// for its anonymous folios, and the accessors that may cache its translations.
pub struct AddressSpace {
    pub(crate) mm: Arc<Memory>,
    pub(crate) id: u32,
    pub(crate) base: VirtAddr,
    pub(crate) ptes: Vec<AtomicU64>,
    /// The page-table lock.
    pub(crate) ptl: Mutex<()>,
    /// Handle of this space's anon_vma.
    pub(crate) anon_vma: u64,
    /// Flush generation and live accessors (the CPUs in `mm_cpumask`).
    pub(crate) tlb: TlbDomain,
    /// Real pages behind this space (the live backend), if any.
    pub(crate) backend: Option<std::sync::Arc<dyn super::SpaceBackend>>,
    /// `VM_LOCKED` on the whole space (`mlockall(MCL_CURRENT | MCL_FUTURE)`).
    pub(crate) vm_locked: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("id", &self.id)
            .field("base", &self.base)
            .field("len_bytes", &self.len_bytes())
            .finish()
    }
}

impl AddressSpace {
    /// The memory this space maps.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.mm
    }
    /// Space id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// First virtual address.
    pub fn base(&self) -> VirtAddr {
        self.base
    }
    /// Length in bytes.
    pub fn len_bytes(&self) -> usize {
        self.ptes.len() * PAGE_SIZE
    }

    pub(crate) fn slot(&self, vaddr: VirtAddr) -> Option<usize> {
        let off = vaddr.0.checked_sub(self.base.0)?;
        let i = (off >> PAGE_SHIFT) as usize;
        (i < self.ptes.len()).then_some(i)
    }

    /// The PTE mapping `vaddr`.
    pub fn pte(&self, vaddr: VirtAddr) -> Result<Pte, MmError> {
        let i = self.slot(vaddr).ok_or(MmError::OutOfRange { vaddr })?;
        Ok(Pte::decode(self.ptes[i].load(Ordering::Acquire)))
    }

    pub(crate) fn pte_at(&self, i: usize) -> Pte {
        Pte::decode(self.ptes[i].load(Ordering::Acquire))
    }

    /// Undoes `try_to_migrate` in this space for pages whose backend unmap failed: the
    /// migration entries for `pfn..pfn+nr` at `vaddr` become present again, with the
    /// mapping's reference and mapcount (the backend still maps them).
    pub(crate) fn restore_migration_ptes(&self, vaddr: VirtAddr, pfn: Pfn, nr: usize) {
        let Some(i) = self.slot(vaddr) else { return };
        let _g = lock(&self.ptl);
        if self.migration_to_present(i, pfn, nr) {
            let f = self.mm.folio(Folio(self.mm.compound_head(pfn)));
            f.meta.mapcount.fetch_add(1, Ordering::AcqRel);
            f.meta.refcount.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Under the page-table lock: the migration entries for `pfn..pfn+nr` from slot `i`
    /// become present PTEs again. Returns whether any did.
    pub(crate) fn migration_to_present(&self, i: usize, pfn: Pfn, nr: usize) -> bool {
        let mut hit = false;
        for k in 0..nr.min(self.ptes.len() - i) {
            let p = Pfn(pfn.0 + k as u64);
            if self.pte_at(i + k) == (Pte::Migration { pfn: p }) {
                self.set_pte_at(i + k, Pte::Present { pfn: p });
                hit = true;
            }
        }
        hit
    }

    /// `mlockall(MCL_CURRENT | MCL_FUTURE)`: the space becomes `VM_LOCKED`; every folio
    /// it maps, and every folio mapped into it later, is `PG_mlocked` (`mlock_vma_folio`).
    pub fn mlock_all(&self) {
        let _g = lock(&self.ptl);
        self.vm_locked.store(true, Ordering::Release);
        for i in 0..self.ptes.len() {
            if let Pte::Present { pfn } = self.pte_at(i) {
                self.mm
                    .folio(Folio(self.mm.compound_head(pfn)))
                    .set(pg::MLOCKED);
            }
        }
    }

    /// Whether the space is `VM_LOCKED`.
    pub fn vm_locked(&self) -> bool {
        self.vm_locked.load(Ordering::Acquire)
    }

    pub(crate) fn set_pte_at(&self, i: usize, pte: Pte) {
        self.ptes[i].store(pte.encode(), Ordering::Release);
    }

    /// The folio mapped (present) at `vaddr` (`folio_walk_start` / `follow_page`).
    pub fn folio_at(&self, vaddr: VirtAddr) -> Option<Folio> {
        match self.pte(vaddr).ok()? {
            Pte::Present { pfn } => Some(Folio(self.mm.compound_head(pfn))),
            _ => None,
        }
    }

    /// Takes a reference on the folio mapped at `vaddr`, as `get_user_pages()` does: under
    /// the page-table lock the PTE is present, so the folio is alive and the reference is
    /// safe to take. The caller drops it with `folio_put`. `None` if nothing is present.
    pub fn get_folio(&self, vaddr: VirtAddr) -> Option<Folio> {
        let i = self.slot(vaddr)?;
        let _g = lock(&self.ptl);
        match self.pte_at(i) {
            Pte::Present { pfn } => {
                let f = Folio(self.mm.compound_head(pfn));
                self.mm.folio(f).get();
                Some(f)
            }
            _ => None,
        }
    }

    fn check_range(&self, vaddr: VirtAddr, nr_pages: usize) -> Result<usize, MmError> {
        let len = nr_pages * PAGE_SIZE;
        if vaddr.0 % len as u64 != 0 {
            return Err(MmError::Misaligned {
                vaddr,
                align_bytes: len,
            });
        }
        let i = self.slot(vaddr).ok_or(MmError::OutOfRange { vaddr })?;
        if i + nr_pages > self.ptes.len() {
            return Err(MmError::OutOfRange { vaddr });
        }
        Ok(i)
    }

    /// Allocates an anonymous folio of `order` on `node` and maps it at `vaddr` (an
    /// anonymous fault). The mapping owns the allocation reference: refcount 1, mapcount 1.
    pub fn map_anon(&self, vaddr: VirtAddr, node: NodeId, order: Order) -> Result<Folio, MmError> {
        self.map_new(
            vaddr,
            node,
            order,
            pg::ANON | pg::SWAPBACKED | pg::UPTODATE | pg::LRU,
        )
    }

    /// Maps a new hugetlb folio (order 9) at `vaddr`.
    pub fn map_hugetlb(&self, vaddr: VirtAddr, node: NodeId) -> Result<Folio, MmError> {
        self.map_new(
            vaddr,
            node,
            Order(super::HPAGE_PMD_ORDER),
            pg::ANON | pg::SWAPBACKED | pg::UPTODATE | pg::HUGETLB | pg::LRU,
        )
    }

    fn map_new(
        &self,
        vaddr: VirtAddr,
        node: NodeId,
        order: Order,
        flags: u32,
    ) -> Result<Folio, MmError> {
        self.map_new_with(vaddr, node, order, flags, |_| {})
    }

    /// `map_new`, calling `install(folio)` under the page-table lock once the folio is
    /// allocated and before the PTEs appear (the live backend queues the real page's move
    /// there). Part of the backend API (see [`super::backend`]).
    pub fn map_new_with(
        &self,
        vaddr: VirtAddr,
        node: NodeId,
        order: Order,
        flags: u32,
        install: impl FnOnce(Folio),
    ) -> Result<Folio, MmError> {
        let nr = 1usize << order.0;
        let i = self.check_range(vaddr, nr)?;
        let _g = lock(&self.ptl);
        if (i..i + nr).any(|j| self.pte_at(j) != Pte::None) {
            return Err(MmError::AlreadyMapped { vaddr });
        }
        let folio = self.mm.alloc_folio(node, order, flags)?;
        install(folio);
        let f = self.mm.folio(folio);
        if self.vm_locked() {
            f.set(pg::MLOCKED);
        }
        f.meta.mapping.store(self.anon_vma, Ordering::Release);
        f.meta.index.store(vaddr.0 >> PAGE_SHIFT, Ordering::Release);
        f.meta.mapcount.store(1, Ordering::Release);
        for k in 0..nr {
            self.set_pte_at(
                i + k,
                Pte::Present {
                    pfn: Pfn(folio.0 .0 + k as u64),
                },
            );
        }
        Ok(folio)
    }

    /// Maps an anonymous folio that another space maps into this one as well, at the same
    /// address (as after `fork()`): this space joins the folio's anon_vma, and the folio
    /// gains a mapping and a reference.
    pub fn map_shared(self: &Arc<Self>, folio: Folio) -> Result<(), MmError> {
        let f = self.mm.folio_checked(folio)?;
        let vaddr = VirtAddr(f.meta.index.load(Ordering::Acquire) << PAGE_SHIFT);
        let nr = f.nr_pages();
        let i = self.check_range(vaddr, nr)?;
        let av = f.meta.mapping.load(Ordering::Acquire);
        if av == 0 || !f.is_mapped() || f.test(pg::LOCKED) {
            return Err(MmError::Busy);
        }
        let _g = lock(&self.ptl);
        if (i..i + nr).any(|j| self.pte_at(j) != Pte::None) {
            return Err(MmError::AlreadyMapped { vaddr });
        }
        self.mm.anon_vma_link(av, self);
        f.get();
        f.meta.mapcount.fetch_add(1, Ordering::AcqRel);
        for k in 0..nr {
            self.set_pte_at(
                i + k,
                Pte::Present {
                    pfn: Pfn(folio.0 .0 + k as u64),
                },
            );
        }
        Ok(())
    }

    /// Unmaps the folio that starts at `vaddr` (`zap_pte_range`). A migration entry is
    /// simply cleared, as the kernel does: the entry holds no reference.
    pub fn unmap(&self, vaddr: VirtAddr) -> Result<(), MmError> {
        let i = self.slot(vaddr).ok_or(MmError::OutOfRange { vaddr })?;
        let g = lock(&self.ptl);
        match self.pte_at(i) {
            Pte::None => Err(MmError::NotMapped { vaddr }),
            Pte::Migration { pfn } => {
                let head = self.mm.compound_head(pfn);
                let nr = self.mm.folio(Folio(head)).nr_pages();
                let start = i - (pfn.0 - head.0) as usize;
                for k in start..start + nr {
                    if matches!(self.pte_at(k), Pte::Migration { pfn: p } if self.mm.compound_head(p) == head)
                    {
                        self.set_pte_at(k, Pte::None);
                    }
                }
                Ok(())
            }
            Pte::Present { pfn } => {
                let head = self.mm.compound_head(pfn);
                let f = self.mm.folio(Folio(head));
                let start = i - (pfn.0 - head.0) as usize;
                for k in start..start + f.nr_pages() {
                    self.set_pte_at(k, Pte::None);
                }
                f.meta.mapcount.fetch_sub(1, Ordering::AcqRel);
                drop(g);
                super::tlb::flush_tlb_space(self);
                f.put();
                Ok(())
            }
        }
    }

    /// `zap_page_range_single()` (`MADV_DONTNEED` of part of a mapping): unmaps the
    /// `nr_pages` pages from `vaddr`, which may cover part of a large folio. A folio this
    /// space no longer maps at all loses the mapping's reference; an anonymous large folio
    /// left with pages that no space maps is queued for a deferred split as partially
    /// mapped (`__folio_remove_rmap`). Migration entries are cleared like PTEs.
    pub fn zap_range(&self, vaddr: VirtAddr, nr_pages: usize) -> Result<(), MmError> {
        let first = self.slot(vaddr).ok_or(MmError::OutOfRange { vaddr })?;
        if vaddr.0 % PAGE_SIZE as u64 != 0 {
            return Err(MmError::Misaligned {
                vaddr,
                align_bytes: PAGE_SIZE,
            });
        }
        if first
            .checked_add(nr_pages)
            .is_none_or(|end| end > self.ptes.len())
        {
            return Err(MmError::OutOfRange { vaddr });
        }
        let g = lock(&self.ptl);
        let mut touched: Vec<Pfn> = Vec::new();
        for i in first..first + nr_pages {
            match self.pte_at(i) {
                Pte::Present { pfn } => {
                    let head = self.mm.compound_head(pfn);
                    if touched.last() != Some(&head) {
                        touched.push(head);
                    }
                    self.set_pte_at(i, Pte::None);
                }
                Pte::Migration { .. } => self.set_pte_at(i, Pte::None),
                Pte::None => {}
            }
        }
        // Which touched folios does this space still map somewhere?
        let mut gone = Vec::new();
        let mut partial = Vec::new();
        for &head in &touched {
            let f = self.mm.folio(Folio(head));
            let nr = f.nr_pages() as u64;
            // A folio's pages sit at consecutive slots: look within a folio of the range.
            let lo = first.saturating_sub(nr as usize);
            let hi = (first + nr_pages + nr as usize).min(self.ptes.len());
            let still = (lo..hi).any(|i| {
                matches!(self.pte_at(i), Pte::Present { pfn } if pfn.0 >= head.0 && pfn.0 < head.0 + nr)
            });
            if still {
                partial.push(head);
            } else {
                gone.push(head);
            }
        }
        drop(g);
        super::tlb::flush_tlb_space(self);
        for head in gone {
            let f = self.mm.folio(Folio(head));
            f.meta.mapcount.fetch_sub(1, Ordering::AcqRel);
            f.put();
        }
        for head in partial {
            let f = self.mm.folio(Folio(head));
            if f.is_anon() && f.is_large() && self.mm.folio_partially_mapped(Folio(head)) {
                self.mm.deferred_split_folio(Folio(head), true);
            }
        }
        Ok(())
    }

    /// A new accessor: a handle reading and writing this space from one thread, with its
    /// own TLB that shootdowns of this space invalidate.
    pub fn accessor(self: &Arc<Self>) -> Accessor {
        Accessor::new(self.clone())
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // exit_mmap(): drop every present mapping's reference.
        let mut i = 0;
        while i < self.ptes.len() {
            if let Pte::Present { pfn } = self.pte_at(i) {
                let head = self.mm.compound_head(pfn);
                let f = self.mm.folio(Folio(head));
                let nr = f.nr_pages();
                let start = i - (pfn.0 - head.0) as usize;
                for k in start..(start + nr).min(self.ptes.len()) {
                    self.set_pte_at(k, Pte::None);
                }
                f.meta.mapcount.fetch_sub(1, Ordering::AcqRel);
                f.put();
                i = start + nr;
            } else {
                self.set_pte_at(i, Pte::None);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pte_encoding_round_trips() {
        for pte in [
            Pte::None,
            Pte::Present { pfn: Pfn(12345) },
            Pte::Migration { pfn: Pfn(7) },
        ] {
            assert_eq!(Pte::decode(pte.encode()), pte);
        }
        assert_eq!(Pte::None.encode(), 0);
    }
}
