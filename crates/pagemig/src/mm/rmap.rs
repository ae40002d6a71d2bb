//! Reverse mapping — the analogue of `mm/rmap.c`: the anon_vma that lists every address
//! space an anonymous folio may be mapped in, `try_to_migrate()` that replaces present
//! PTEs with migration entries, and `remove_migration_ptes()` that installs PTEs to the
//! new (or, on undo, the old) folio.
//!
//! As in Linux, an anonymous folio is found in each space of its anon_vma at the same
//! virtual address (`folio->index`), which is what `fork()` gives; a folio shared by two
//! spaces is mapped at the same address in both.

#![forbid(unsafe_code)]

use crate::sync::IgnorePoison as _;
use crate::sync::{lock, Arc, Mutex, Ordering, Weak};

use super::folio::{Folio, FolioRef};
use super::page_table::{AddressSpace, Pte};
use super::tlb::{flush_tlb_space, TlbBatch};
use super::{Memory, Pfn, PAGE_SHIFT};

/// An anon_vma: the spaces an anonymous folio may be mapped in.
#[derive(Default)]
pub struct AnonVma {
    pub(crate) spaces: Mutex<Vec<Weak<AddressSpace>>>,
}

/// Handle of the anon_vma at table index `i`: 8-aligned, so that the series' state bits
/// fit below it in `migrate_info`.
pub(crate) fn anon_vma_handle(i: usize) -> u64 {
    ((i as u64) + 1) << 3
}

fn anon_vma_index(h: u64) -> Option<usize> {
    (h >= 8).then(|| ((h >> 3) - 1) as usize)
}

impl Memory {
    pub(crate) fn anon_vma_new(&self) -> u64 {
        let mut t = self.anon_vmas.write().ignore_poison();
        t.push(Arc::new(AnonVma::default()));
        anon_vma_handle(t.len() - 1)
    }

    pub(crate) fn anon_vma_get(&self, h: u64) -> Option<Arc<AnonVma>> {
        let t = self.anon_vmas.read().ignore_poison();
        t.get(anon_vma_index(h)?).cloned()
    }

    /// `anon_vma_fork`-like: makes `space` one of the spaces of anon_vma `h`.
    pub(crate) fn anon_vma_link(&self, h: u64, space: &Arc<AddressSpace>) {
        if let Some(av) = self.anon_vma_get(h) {
            let mut v = lock(&av.spaces);
            if !v
                .iter()
                .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(space)))
            {
                v.push(Arc::downgrade(space));
            }
        }
    }

    /// `rmap_walk_anon()`: calls `f` for every live space of anon_vma `h`, under the
    /// anon_vma lock (lock order: anon_vma, then a space's page-table lock).
    fn rmap_walk(&self, h: u64, mut f: impl FnMut(&Arc<AddressSpace>)) {
        let Some(i) = anon_vma_index(h) else { return };
        let t = self.anon_vmas.read().ignore_poison();
        let Some(av) = t.get(i) else { return };
        let spaces = lock(&av.spaces);
        for w in spaces.iter() {
            if let Some(space) = w.upgrade() {
                f(&space);
            }
        }
    }

    /// `rmap_walk()`: for every live space that may map `folio`, under the anon_vma or
    /// `i_mmap` lock, calls `f(space, first, lo, hi)`: pages `lo..hi` of the folio would be
    /// at slots `first + k`. Anonymous folios are found through `anon_vma` (at
    /// `folio->index` in each space), page-cache folios through their file's mappings.
    pub(crate) fn rmap_walk_folio(
        &self,
        folio: &FolioRef<'_>,
        anon_vma: u64,
        mut f: impl FnMut(&Arc<AddressSpace>, isize, usize, usize),
    ) {
        if !folio.is_anon() {
            return self.rmap_walk_file(folio, f);
        }
        let nr = folio.nr_pages();
        let vpn = folio.meta.index.load(Ordering::Acquire);
        self.rmap_walk(anon_vma, |space| {
            if let Some(i) = space.slot(super::VirtAddr(vpn << PAGE_SHIFT)) {
                f(space, i as isize, 0, nr.min(space.ptes.len() - i));
            }
        });
    }

    /// `try_to_migrate()`: replaces every present PTE of `folio` with a migration entry,
    /// dropping one mapcount and one reference per mapping. With `batch` the TLB flush is
    /// deferred to it (`TTU_BATCH_FLUSH`), otherwise each space is flushed at once.
    /// Returns whether anything was unmapped.
    pub(crate) fn try_to_migrate(
        &self,
        folio: &FolioRef<'_>,
        anon_vma: u64,
        mut batch: Option<&mut TlbBatch>,
    ) -> bool {
        let nr = folio.nr_pages();
        let head = folio.pfn();
        let mut any = false;
        self.rmap_walk_folio(folio, anon_vma, |space, first, lo, hi| {
            let g = lock(&space.ptl);
            let mut hit = false;
            for k in lo..hi {
                let slot = (first + k as isize) as usize;
                let p = Pfn(head.0 + k as u64);
                if space.pte_at(slot) == (Pte::Present { pfn: p }) {
                    space.set_pte_at(slot, Pte::Migration { pfn: p });
                    hit = true;
                }
            }
            if hit {
                if let Some(be) = &space.backend {
                    // The real pages leave the program too (deferred with the flush).
                    let i = first as usize;
                    let va = super::VirtAddr(space.base.0 + ((i as u64) << PAGE_SHIFT));
                    let defer = batch.as_deref().map(TlbBatch::id);
                    if be.unmap(va, head, nr, defer).is_err() {
                        space.migration_to_present(i, head, nr);
                        hit = false;
                    }
                }
            }
            drop(g);
            if hit {
                any = true;
                folio.meta.mapcount.fetch_sub(1, Ordering::AcqRel);
                // The mapping's reference: the isolation reference keeps the folio alive.
                folio.meta.refcount.fetch_sub(1, Ordering::AcqRel);
                match batch.as_deref_mut() {
                    Some(b) => b.add(space),
                    None => flush_tlb_space(space),
                }
            }
        });
        any
    }

    /// `remove_migration_ptes(src, dst)`: every migration entry for `src` in the spaces
    /// that map it becomes a present PTE to the same page of `dst` (`dst == src` on undo).
    pub(crate) fn remove_migration_ptes(&self, src: Folio, dst: Folio, anon_vma: u64) {
        let s = self.folio(src);
        let d = self.folio(dst);
        let nr = s.nr_pages();
        // The walk goes by the folio that is in the file now: `dst` after a move (the
        // cache holds it and `src` has lost its mapping), `src` on undo.
        let walk = if !s.is_anon() && s.file_mapping_handle() == 0 {
            d
        } else {
            s
        };
        self.rmap_walk_folio(&walk, anon_vma, |space, first, lo, hi| {
            let g = lock(&space.ptl);
            let mut hit = false;
            for k in lo..hi {
                let slot = (first + k as isize) as usize;
                if space.pte_at(slot)
                    == (Pte::Migration {
                        pfn: Pfn(src.0 .0 + k as u64),
                    })
                {
                    space.set_pte_at(
                        slot,
                        Pte::Present {
                            pfn: Pfn(dst.0 .0 + k as u64),
                        },
                    );
                    hit = true;
                }
            }
            if hit {
                d.meta.mapcount.fetch_add(1, Ordering::AcqRel);
                d.meta.refcount.fetch_add(1, Ordering::AcqRel);
                if let Some(be) = &space.backend {
                    let va = super::VirtAddr(space.base.0 + ((first as u64) << PAGE_SHIFT));
                    be.remap(va, src.0, dst.0, nr);
                }
                if space.vm_locked() {
                    // mlock_vma_folio() from the rmap add: a VM_LOCKED mapping mlocks the
                    // folio it maps.
                    d.set(super::pg::MLOCKED);
                }
            }
            drop(g);
        });
    }
}
