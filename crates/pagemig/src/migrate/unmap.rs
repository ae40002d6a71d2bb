//! `migrate_folio_unmap()`: allocate the destination, lock the source (by mode), handle
//! writeback, install migration entries (`try_to_migrate`), and record the state in the
//! destination's `migrate_info`. Also the split of large folios (`try_split_folio`) and the
//! series' batch-copy eligibility (`folio_can_batch_copy`).

use std::sync::atomic::Ordering;

use crate::mm::{migrate_info, pg, Folio, Memory, Pfn, TlbBatch};
use crate::Errno;

use super::undo::{migrate_folio_done, migrate_folio_undo_dst, migrate_folio_undo_src};
use super::{Ctx, Mode};

/// A successful unmap.
pub(crate) enum Unmapped {
    /// The folio was freed under us: counts as migrated (`MIGRATEPAGE_SUCCESS`).
    Freed,
    /// Unmapped; here is its destination (`MIGRATEPAGE_UNMAP`).
    Dst(Folio),
}

/// `__migrate_folio_record()`: saves the anon_vma and the old states in `dst`.
pub(crate) fn migrate_folio_record(mm: &Memory, dst: Folio, states: u64, anon_vma: u64) {
    mm.folio(dst)
        .meta
        .migrate_info
        .store(migrate_info::pack(anon_vma, states), Ordering::Release);
}

/// The series' eligibility test for the batch copy (v6 2/5): not a movable_ops page, and
/// no reference beyond the expected ones (a GUP holder could otherwise write the source
/// between the early copy and the move-phase refcount check).
pub(crate) fn folio_can_batch_copy(mm: &Memory, src: Folio) -> bool {
    let f = mm.folio(src);
    !f.test(pg::MOVABLE_OPS) && !f.test(pg::HUGETLB) && f.ref_count() == f.expected_ref_count()
}

pub(crate) fn migrate_folio_unmap(
    ctx: &mut Ctx<'_, '_>,
    src: Folio,
    mode: Mode,
    tlb: &mut TlbBatch,
    ret: &mut Vec<Folio>,
) -> Result<Unmapped, Errno> {
    let mm = ctx.mm;
    let s = mm.folio(src);
    let is_lru = !s.test(pg::MOVABLE_OPS);

    if s.ref_count() == 1 {
        // Folio was freed from under us. So we are done.
        migrate_folio_done(mm, src);
        return Ok(Unmapped::Freed);
    }

    let dst = (ctx.get_new_folio)(mm, src).ok_or(Errno::NoMem)?;
    let d = mm.folio(dst);
    d.meta.migrate_info.store(0, Ordering::Release);

    let mut locked = false;
    let mut dst_locked = false;
    let mut page_was_mapped = false;
    let mut anon_vma = 0u64;

    let rc: Errno = 'out: {
        if !s.trylock() {
            if mode == Mode::Async {
                break 'out Errno::Again;
            }
            // In "light" mode, wait for transient locks, but not for I/O.
            if mode == Mode::SyncLight && !s.test(pg::UPTODATE) {
                break 'out Errno::Again;
            }
            s.lock();
        }
        locked = true;

        if s.test(pg::WRITEBACK) {
            // Only a full synchronous migration waits for writeback.
            if mode != Mode::Sync {
                break 'out Errno::Busy;
            }
            s.wait_writeback();
        }

        // folio_get_anon_vma(): keep the anon_vma while mapcount drops to zero.
        if s.test(pg::ANON) {
            anon_vma = s.meta.mapping.load(Ordering::Acquire);
        }

        if !d.trylock() {
            break 'out Errno::Again;
        }
        dst_locked = true;

        if !is_lru {
            migrate_folio_record(mm, dst, 0, 0);
            return Ok(Unmapped::Dst(dst));
        }

        let was_mlocked = s.test(pg::MLOCKED);
        if s.is_mapped() {
            // Establish migration entries; only async mode defers the flush.
            let batch = if mode == Mode::Async {
                Some(&mut *tlb)
            } else {
                None
            };
            mm.try_to_migrate(&s, anon_vma, batch);
            page_was_mapped = true;
        }

        if !s.is_mapped() {
            let mut states = 0;
            if page_was_mapped {
                states |= migrate_info::WAS_MAPPED;
            }
            if was_mlocked {
                states |= migrate_info::WAS_MLOCKED;
            }
            migrate_folio_record(mm, dst, states, anon_vma);
            return Ok(Unmapped::Dst(dst));
        }
        Errno::Again
    };

    // A folio that has not been unmapped goes to the failed list unless we retry.
    let ret = if rc == Errno::Again { None } else { Some(ret) };
    migrate_folio_undo_src(mm, src, page_was_mapped, anon_vma, locked, ret);
    migrate_folio_undo_dst(ctx, dst, dst_locked);
    Err(rc)
}

/// `try_split_folio()`: locks (trylock in async mode), splits, unlocks; the order-0 pieces
/// go to `split_folios`, each isolated.
pub(crate) fn try_split_folio(
    mm: &Memory,
    folio: Folio,
    split_folios: &mut Vec<Folio>,
    mode: Mode,
) -> Result<(), Errno> {
    let f = mm.folio(folio);
    if mode == Mode::Async {
        if !f.trylock() {
            return Err(Errno::Again);
        }
    } else {
        f.lock();
    }
    let rc = split_folio_to_list(mm, folio, split_folios);
    f.unlock();
    rc
}

/// `split_folio_to_list()` for an anonymous large folio that the caller holds locked and
/// isolated: every page becomes an order-0 folio with the same mappings, flags and its own
/// isolation reference; the PTEs need no change (they name pages, not folios). Fails with
/// `EAGAIN` if anyone holds an extra reference, `EINVAL` for hugetlb or order 0.
pub(crate) fn split_folio_to_list(
    mm: &Memory,
    folio: Folio,
    list: &mut Vec<Folio>,
) -> Result<(), Errno> {
    let f = mm.folio(folio);
    if !f.is_large() || f.test(pg::HUGETLB) || f.test(pg::MOVABLE_OPS) {
        return Err(Errno::Inval);
    }
    let mapcount = f.mapcount();
    if f.ref_count() != f.expected_ref_count() {
        return Err(Errno::Again);
    }
    let nr = f.nr_pages();
    let flags = f.flags() & !pg::HAS_HWPOISONED;
    let mapping = f.meta.mapping.load(Ordering::Acquire);
    let index = f.meta.index.load(Ordering::Acquire);
    for k in 0..nr as u64 {
        let pfn = Pfn(folio.0 .0 + k);
        let m = mm.page(pfn);
        let extra = if mm.page_is_hwpoison(pfn) {
            pg::HAS_HWPOISONED
        } else {
            0
        };
        // Tail pieces are created locked like the head and unlocked below.
        m.order.store(0, Ordering::Relaxed);
        m.mapping.store(mapping, Ordering::Relaxed);
        m.index.store(index + k, Ordering::Relaxed);
        m.mapcount.store(mapcount, Ordering::Relaxed);
        m.refcount.store(mapcount + 1, Ordering::Relaxed);
        m.migrate_info.store(0, Ordering::Relaxed);
        m.flags.store(flags | extra, Ordering::Release);
        list.push(Folio(pfn));
    }
    mm.clear_compound(folio.0, nr);
    mm.mark_split_heads(folio.0, nr);
    for k in 1..nr as u64 {
        mm.folio(Folio(Pfn(folio.0 .0 + k))).unlock();
    }
    Ok(())
}
