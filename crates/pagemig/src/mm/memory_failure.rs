//! Hardware poison (`mm/memory-failure.c`): `PG_hwpoison` per page, `PG_has_hwpoisoned` on
//! the head, injected and cleared for fault injection, and `page_handle_poison()`, which
//! takes a soft-offlined page out of use for good.

#![forbid(unsafe_code)]

use super::Memory;
use super::{pg, MmError, Pfn};
use crate::sync::Ordering;

impl Memory {
    /// `PageHWPoison()` of one page.
    pub fn page_is_hwpoison(&self, pfn: Pfn) -> bool {
        let (n, i) = self.node_idx(pfn);
        n.hwpoison[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Sets or clears `PG_hwpoison` of `nr` pages from `pfn` (one node).
    pub(crate) fn set_hwpoison_range(&self, pfn: Pfn, nr: usize, on: bool) {
        let (n, i) = self.node_idx(pfn);
        for k in i..i + nr {
            let bit = 1u64 << (k % 64);
            if on {
                n.hwpoison[k / 64].fetch_or(bit, Ordering::AcqRel);
            } else if n.hwpoison[k / 64].load(Ordering::Relaxed) & bit != 0 {
                n.hwpoison[k / 64].fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }

    /// Marks one page hwpoisoned (`memory_failure()` on its pfn): reads of it fail with
    /// `EHWPOISON` and a machine-check-safe copy from it stops there. The mark lasts until
    /// the frame is allocated again.
    pub fn inject_hwpoison(&self, pfn: Pfn) -> Result<(), MmError> {
        if !self.pfn_valid(pfn) {
            return Err(MmError::NotAFolio(pfn.0));
        }
        self.set_hwpoison_range(pfn, 1, true);
        let head = self.compound_head(pfn);
        self.page(head)
            .flags
            .fetch_or(pg::HAS_HWPOISONED, Ordering::AcqRel);
        Ok(())
    }

    /// Clears the poison mark of one page (`unpoison_memory`, for fault injection that
    /// models a transient error).
    pub fn clear_hwpoison(&self, pfn: Pfn) -> Result<(), MmError> {
        if !self.pfn_valid(pfn) {
            return Err(MmError::NotAFolio(pfn.0));
        }
        self.set_hwpoison_range(pfn, 1, false);
        Ok(())
    }

    /// `page_handle_poison(page, false, true)`, after an `MR_MEMORY_FAILURE` migration
    /// moved the contents away (`migrate_folio_done` left the source its isolation
    /// reference): the page is marked hwpoisoned, and where the kernel drops that
    /// reference (the free keeps a poisoned page out of the buddy) and takes one for good,
    /// the model keeps it — the frame stays allocated and is never handed out again.
    pub(crate) fn page_handle_poison(&self, pfn: Pfn) {
        self.set_hwpoison_range(pfn, 1, true);
        self.page(pfn)
            .flags
            .fetch_or(pg::HAS_HWPOISONED, Ordering::AcqRel);
        self.nr_poisoned
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// `num_poisoned_pages`: pages taken out of use by `page_handle_poison`
    /// ([`crate::migrate::soft_offline_page`]).
    pub fn nr_poisoned_pages(&self) -> usize {
        self.nr_poisoned.load(std::sync::atomic::Ordering::Relaxed) as usize
    }
}
