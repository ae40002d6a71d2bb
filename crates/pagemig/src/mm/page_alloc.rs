//! Folio allocation and freeing (`mm/page_alloc.c`: `folio_alloc`, `folio_put`,
//! `folio_try_get`) over each node's buddy allocator.

#![forbid(unsafe_code)]

use super::{pg, Folio, FolioRef, Memory, MmError, NodeId, Order, Pfn, MAX_PAGE_ORDER};
use crate::sync::{lock, Ordering};

impl Memory {
    /// A view of a folio. Panics if `folio` names no page (use [`Memory::folio_checked`]
    /// for untrusted input).
    pub fn folio(&self, folio: Folio) -> FolioRef<'_> {
        FolioRef {
            mm: self,
            folio,
            meta: self.page(folio.0),
        }
    }

    /// A view of a folio after checking that it is a live folio head.
    pub fn folio_checked(&self, folio: Folio) -> Result<FolioRef<'_>, MmError> {
        if !self.pfn_valid(folio.0) {
            return Err(MmError::NotAFolio(folio.0 .0));
        }
        let f = self.folio(folio);
        if !self.is_live_head(folio.0) || f.test(pg::BUDDY) || f.ref_count() <= 0 {
            return Err(MmError::NotAFolio(folio.0 .0));
        }
        Ok(f)
    }

    /// Allocates a folio (`folio_alloc` / `__alloc_pages` on one node): refcount 1,
    /// mapcount 0, `flags` set on the head, every page's poison cleared.
    pub fn alloc_folio(&self, node: NodeId, order: Order, flags: u32) -> Result<Folio, MmError> {
        if order.0 > MAX_PAGE_ORDER {
            return Err(MmError::BadOrder(order.0));
        }
        let n = self.node(node)?;
        if let Some(h) = &self.hooks {
            if h.alloc_should_fail(node, order) {
                return Err(MmError::NoMemory {
                    node,
                    order: order.0,
                });
            }
        }
        let frame = loop {
            let seen = n.nr_pages();
            if let Some(f) = lock(&n.buddy).alloc(order.0) {
                break f;
            }
            if !self.grow_node(n, seen) {
                return Err(MmError::NoMemory {
                    node,
                    order: order.0,
                });
            }
        };
        let head = n.base_pfn + frame as u64;
        let nr = 1usize << order.0;
        for k in 1..nr {
            n.head_off[frame as usize + k].store(k as u32, Ordering::Relaxed);
        }
        self.set_hwpoison_range(Pfn(head), nr, false);
        self.set_live_head(Pfn(head), true);
        let m = &n.memmap[frame as usize];
        m.order.store(order.0, Ordering::Relaxed);
        m.mapcount.store(0, Ordering::Relaxed);
        m.migrate_info.store(0, Ordering::Relaxed);
        m.mapping.store(0, Ordering::Relaxed);
        m.index.store(0, Ordering::Relaxed);
        m.private.store(0, Ordering::Relaxed);
        m.refcount.store(1, Ordering::Relaxed);
        m.flags.store(
            flags & !(pg::BUDDY | pg::LOCKED | pg::HAS_HWPOISONED),
            Ordering::Release,
        );
        Ok(Folio(Pfn(head)))
    }

    /// `folio_put()`: drops a reference; the last one frees the folio to its node.
    pub fn folio_put(&self, folio: Folio) {
        let m = self.page(folio.0);
        let old = m.refcount.fetch_sub(1, Ordering::AcqRel);
        assert!(old > 0, "folio_put on a free folio {:#x}", folio.0 .0);
        if old == 1 {
            self.free_folio(folio);
        }
    }

    pub(in crate::mm) fn free_folio(&self, folio: Folio) {
        let idx = self.node_index_of(folio.0).expect("pfn outside every node");
        let n = &self.nodes[idx];
        let m = self.page(folio.0);
        self.unqueue_deferred_split(folio);
        let order = m.order.load(Ordering::Acquire);
        debug_assert_eq!(
            m.mapcount.load(Ordering::Acquire),
            0,
            "freeing a mapped folio"
        );
        debug_assert_eq!(
            m.private.load(Ordering::Acquire),
            0,
            "freeing a folio with private data"
        );
        m.flags.store(pg::BUDDY, Ordering::Release);
        m.mapping.store(0, Ordering::Relaxed);
        m.migrate_info.store(0, Ordering::Relaxed);
        self.clear_compound(folio.0, 1 << order);
        self.set_live_head(folio.0, false);
        m.order.store(0, Ordering::Relaxed);
        let r = lock(&n.buddy).free((folio.0 .0 - n.base_pfn) as u32, order);
        if let Err(e) = r {
            panic!("memory model corrupted: {e}");
        }
    }

    /// `folio_try_get()`: a reference on a folio found by pfn, only if it is live, checked
    /// again once the reference is held (a pfn walker can race with the folio's freeing
    /// and reuse).
    pub(crate) fn folio_try_get(&self, folio: Folio) -> Result<FolioRef<'_>, MmError> {
        if !self.pfn_valid(folio.0) || !self.is_live_head(folio.0) {
            return Err(MmError::NotAFolio(folio.0 .0));
        }
        let f = self.folio(folio);
        let mut r = f.meta.refcount.load(Ordering::Acquire);
        loop {
            if r <= 0 {
                return Err(MmError::NotAFolio(folio.0 .0));
            }
            match f.meta.refcount.compare_exchange_weak(
                r,
                r + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(v) => r = v,
            }
        }
        if !self.is_live_head(folio.0) || f.test(pg::BUDDY) {
            // It stopped being a folio head before our increment: not a reference at all.
            f.meta.refcount.fetch_sub(1, Ordering::AcqRel);
            return Err(MmError::NotAFolio(folio.0 .0));
        }
        Ok(f)
    }

    /// Allocates a movable_ops page (a balloon page, say): not mapped, owned by its driver
    /// with one reference, migrated through [`MovableOps`](super::MovableOps).
    pub fn alloc_movable_ops_page(&self, node: NodeId) -> Result<Folio, MmError> {
        self.alloc_folio(node, Order(0), pg::MOVABLE_OPS | pg::UPTODATE)
    }
}
