//! The deferred split queue (`mm/huge_memory.c`: `deferred_split_folio`,
//! `folio_unqueue_deferred_split`): large anonymous folios that are partially mapped — some
//! of their pages mapped by nobody any more — wait here to be split. Migration splits such
//! a folio instead of copying its unused pages (`migrate_pages_batch`), takes a folio off
//! the queue while its refcount is frozen (`__folio_migrate_mapping`) and requeues the
//! destination (`migrate_folio_move`).

#![forbid(unsafe_code)]

use super::{pg, Folio, Memory};
use crate::sync::lock;

impl Memory {
    /// `deferred_split_folio(folio, partially_mapped)`: queues a large (order > 1),
    /// non-hugetlb folio, marking it `PG_partially_mapped` if asked.
    pub fn deferred_split_folio(&self, folio: Folio, partially_mapped: bool) {
        let f = self.folio(folio);
        if f.order().0 <= 1 || f.test(pg::HUGETLB) {
            return;
        }
        let mut q = lock(&self.deferred_split);
        if partially_mapped {
            f.set(pg::PARTIALLY_MAPPED);
        }
        if q.insert(folio) {
            f.set(pg::DEFERRED_SPLIT);
        }
    }

    /// `folio_unqueue_deferred_split()`: off the queue, no longer partially mapped.
    /// Returns whether it was queued.
    pub(crate) fn unqueue_deferred_split(&self, folio: Folio) -> bool {
        let f = self.folio(folio);
        if !f.test(pg::DEFERRED_SPLIT) {
            return false;
        }
        let mut q = lock(&self.deferred_split);
        f.clear(pg::DEFERRED_SPLIT | pg::PARTIALLY_MAPPED);
        q.remove(&folio)
    }

    /// Whether the folio is on the deferred split queue (`!list_empty(&_deferred_list)`).
    pub fn on_deferred_split_queue(&self, folio: Folio) -> bool {
        self.folio(folio).test(pg::DEFERRED_SPLIT)
    }

    /// Whether some page of a mapped large folio is mapped by no space (the folio's
    /// mapcount counts mappings that map any of its pages).
    pub(crate) fn folio_partially_mapped(&self, folio: Folio) -> bool {
        let f = self.folio(folio);
        let nr = f.nr_pages();
        let mut mapped = vec![false; nr];
        let anon_vma = f.meta.mapping.load(crate::sync::Ordering::Acquire);
        self.rmap_walk_folio(&f, anon_vma, |space, first, lo, hi| {
            for (k, m) in mapped.iter_mut().enumerate().take(hi).skip(lo) {
                let slot = (first + k as isize) as usize;
                if space.pte_at(slot)
                    == (super::Pte::Present {
                        pfn: super::Pfn(folio.0 .0 + k as u64),
                    })
                {
                    *m = true;
                }
            }
        });
        mapped.iter().any(|m| !m)
    }

    /// Folios on the deferred split queue.
    pub fn deferred_split_queue_len(&self) -> usize {
        lock(&self.deferred_split).len()
    }
}
