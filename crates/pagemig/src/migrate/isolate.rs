//! Isolation and putback (`folio_isolate_lru`, `isolate_movable_ops_page`,
//! `folio_putback_lru`, `putback_movable_pages`: `mm/migrate.c` and `mm/vmscan.c`): a
//! folio is taken off the LRU, with a reference, before it is handed to `migrate_pages()`.

#![forbid(unsafe_code)]

use crate::mm::{pg, Folio, Memory, MmError};
use crate::sync::Ordering;

impl Memory {
    /// `isolate_folio_to_list()`: `folio_isolate_lru()` (or `isolate_movable_ops_page()`)
    /// takes the folio off the LRU for migration, holding a reference, and counts it in
    /// `NR_ISOLATED_ANON` or `NR_ISOLATED_FILE`. `Busy` if it is not on the LRU (already
    /// isolated, or a destination still being migrated into); `NotAFolio` for a pfn that
    /// is no live folio.
    pub fn isolate_folio(&self, folio: Folio) -> Result<(), MmError> {
        let f = self.folio_try_get(folio)?;
        let taken = if f.test(pg::MOVABLE_OPS) {
            f.meta.flags.fetch_or(pg::ISOLATED, Ordering::AcqRel) & pg::ISOLATED == 0
        } else if f.meta.flags.fetch_and(!pg::LRU, Ordering::AcqRel) & pg::LRU != 0 {
            f.set(pg::ISOLATED);
            true
        } else {
            false
        };
        if !taken {
            f.put();
            return Err(MmError::Busy);
        }
        if !f.test(pg::MOVABLE_OPS) && !f.test(pg::HUGETLB) {
            // isolate_folio_to_list(): NR_ISOLATED_ANON + folio_is_file_lru().
            self.mod_isolated(&f, 1);
        }
        Ok(())
    }

    /// `folio_putback_lru()`: puts an isolated folio back on the LRU and drops the
    /// isolation reference.
    pub fn putback_folio(&self, folio: Folio) -> Result<(), MmError> {
        let f = self.folio_checked(folio)?;
        if f.meta.flags.fetch_and(!pg::ISOLATED, Ordering::AcqRel) & pg::ISOLATED == 0 {
            return Err(MmError::Busy);
        }
        if !f.test(pg::MOVABLE_OPS) {
            if !f.test(pg::HUGETLB) {
                self.mod_isolated(&f, -1);
            }
            f.set(pg::LRU);
        }
        f.put();
        Ok(())
    }

    /// `putback_movable_pages()`: puts back every folio of a failed migration list.
    pub fn putback_movable_pages(&self, list: &mut Vec<Folio>) {
        for f in list.drain(..) {
            let _ = self.putback_folio(f);
        }
    }
}
