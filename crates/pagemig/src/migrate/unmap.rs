//! `migrate_folio_unmap()`: allocate the destination, lock the source (by mode), handle
//! writeback, install migration entries (`try_to_migrate`), and record the state in the
//! destination's `migrate_info`. Also the split of large folios (`try_split_folio`) and the
//! series' batch-copy eligibility (`folio_can_batch_copy`).

use std::sync::atomic::Ordering;

use crate::mm::{migrate_info, pg, Folio, Memory, MigrateFolioOp, Pfn, TlbBatch};
use crate::Errno;

use super::undo::{migrate_folio_undo_dst, migrate_folio_undo_src};
use super::{Ctx, Mode};

/// `__migrate_folio_record()`: saves the anon_vma and the old states in `dst`.
pub(crate) fn migrate_folio_record(mm: &Memory, dst: Folio, states: u64, anon_vma: u64) {
    mm.folio(dst)
        .meta
        .migrate_info
        .store(migrate_info::pack(anon_vma, states), Ordering::Release);
}

/// `folio_can_batch_copy()` as the series' tree has it: not a movable_ops page (they have
/// their own path); no `PG_private` (buffer heads are written without a folio reference,
/// and `__buffer_migrate_folio` keeps such writers out only in the move phase, after a
/// batch copy would already have run; other private users have callbacks with checks of
/// their own); a mapping whose `migrate_folio` is one of the generic ones that consume the
/// copied mark (or none: the fallback ends in `migrate_folio`); and no reference beyond
/// the expected ones (a GUP holder could otherwise write the source between the early copy
/// and the move-phase refcount check).
pub(crate) fn folio_can_batch_copy(mm: &Memory, src: Folio) -> bool {
    let f = mm.folio(src);
    if f.test(pg::MOVABLE_OPS) || f.test(pg::PRIVATE) {
        return false;
    }
    if let Some(m) = mm.folio_mapping(src) {
        match m.migrate_folio_op() {
            Some(
                MigrateFolioOp::Migrate
                | MigrateFolioOp::Filemap
                | MigrateFolioOp::Buffer
                | MigrateFolioOp::BufferNorefs
                | MigrateFolioOp::None,
            ) => {}
            Some(MigrateFolioOp::Custom(_)) | None => return false,
        }
    }
    f.ref_count() == f.expected_ref_count()
}

/// `migrate_folio_unmap()`: allocate the destination, lock the source, handle writeback,
/// establish migration entries. Returns the destination (`MIGRATEPAGE_UNMAP`).
pub(crate) fn migrate_folio_unmap(
    ctx: &mut Ctx<'_, '_, '_>,
    src: Folio,
    mode: Mode,
    tlb: &mut TlbBatch,
    ret: &mut Vec<Folio>,
) -> Result<Folio, Errno> {
    let mm = ctx.mm;
    let s = mm.folio(src);

    let dst = (ctx.get_new_folio)(mm, src).ok_or(Errno::NoMem)?;
    let d = mm.folio(dst);
    d.meta.migrate_info.store(0, Ordering::Release);

    let mut locked = false;
    let mut dst_locked = false;
    let mut old_state = 0u64;
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
        if s.test(pg::MLOCKED) {
            old_state |= migrate_info::WAS_MLOCKED;
        }

        if s.test(pg::WRITEBACK) {
            // Only a full synchronous migration waits for writeback.
            if mode != Mode::Sync {
                break 'out Errno::Busy;
            }
            s.wait_writeback();
        }

        // folio_get_anon_vma(): keep the anon_vma while mapcount drops to zero.
        if s.is_anon() {
            anon_vma = s.meta.mapping.load(Ordering::Acquire);
        }

        if !d.trylock() {
            break 'out Errno::Again;
        }
        dst_locked = true;

        if s.test(pg::MOVABLE_OPS) {
            migrate_folio_record(mm, dst, old_state, anon_vma);
            return Ok(dst);
        }

        if s.meta.mapping.load(Ordering::Acquire) == 0 {
            // An orphaned page-cache folio (truncated while isolated) may still have
            // fs-private data: try to free it so the folio can be freed; retry later.
            if s.test(pg::PRIVATE) {
                mm.filemap_release_folio(src);
                break 'out Errno::Again;
            }
        } else if s.is_mapped() {
            // Establish migration entries; only async mode defers the flush.
            let batch = if mode == Mode::Async {
                Some(&mut *tlb)
            } else {
                None
            };
            mm.try_to_migrate(&s, anon_vma, batch);
            old_state |= migrate_info::WAS_MAPPED;
        }

        if !s.is_mapped() {
            migrate_folio_record(mm, dst, old_state, anon_vma);
            return Ok(dst);
        }
        Errno::Again
    };

    // A folio that has not been unmapped goes to the failed list unless we retry.
    let ret = if rc == Errno::Again { None } else { Some(ret) };
    let was_mapped = old_state & migrate_info::WAS_MAPPED != 0;
    migrate_folio_undo_src(mm, src, was_mapped, anon_vma, locked, ret);
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

/// `split_folio_to_list()` for a large folio (anonymous or page cache) that the caller
/// holds locked and isolated: every page becomes an order-0 folio with its own mappings,
/// flags and isolation reference (and its own page-cache entry and reference); the PTEs
/// need no change (they name pages, not folios). Fails with `EAGAIN` if anyone holds an
/// extra reference, `EBUSY` under writeback, for a truncated page-cache folio or for
/// private data that cannot be released, `EINVAL` for hugetlb or order 0.
pub(crate) fn split_folio_to_list(
    mm: &Memory,
    folio: Folio,
    list: &mut Vec<Folio>,
) -> Result<(), Errno> {
    let f = mm.folio(folio);
    if !f.is_large() || f.test(pg::HUGETLB) || f.test(pg::MOVABLE_OPS) {
        return Err(Errno::Inval);
    }
    // A folio under writeback is not split (its I/O covers the whole folio).
    if f.test(pg::WRITEBACK) {
        return Err(Errno::Busy);
    }
    let file = mm.folio_mapping(folio);
    if !f.is_anon() {
        if file.is_none() {
            return Err(Errno::Busy);
        }
        if !mm.filemap_release_folio(folio) {
            return Err(Errno::Busy);
        }
    }
    let expected = f.expected_ref_count();
    if f.ref_count() != expected {
        return Err(Errno::Again);
    }
    let nr = f.nr_pages();
    // Each page's own mapcount: the mappings that map that page (a partially mapped folio
    // has pages that no mapping maps).
    let mut mapcounts = vec![0i32; nr];
    let anon_vma = f.meta.mapping.load(Ordering::Acquire);
    mm.rmap_walk_folio(&f, anon_vma, |space, first, lo, hi| {
        for (k, m) in mapcounts.iter_mut().enumerate().take(hi).skip(lo) {
            let slot = (first + k as isize) as usize;
            if space.pte_at(slot)
                == (crate::mm::Pte::Present {
                    pfn: Pfn(folio.0 .0 + k as u64),
                })
            {
                *m += 1;
            }
        }
    });
    let cache_ref = file.is_some() as i32;
    let flags = f.flags() & !(pg::HAS_HWPOISONED | pg::PARTIALLY_MAPPED);
    let mapping = f.meta.mapping.load(Ordering::Acquire);
    let index = f.meta.index.load(Ordering::Acquire);
    // The page cache's lock covers the whole split of a cached folio, and the refcount is
    // frozen (as `__folio_split` freezes it): a speculative `folio_try_get` (a page-cache
    // lookup, a pfn walker) fails until every piece has its own count, instead of taking
    // a reference on the whole folio that the split would then lose.
    let mut cache = file.as_ref().map(|m| crate::sync::lock(&m.i_pages));
    if !f.ref_freeze(expected) {
        return Err(Errno::Again);
    }
    mm.unqueue_deferred_split(folio);
    for k in 0..nr as u64 {
        let pfn = Pfn(folio.0 .0 + k);
        let m = mm.page(pfn);
        let extra = if mm.page_is_hwpoison(pfn) {
            pg::HAS_HWPOISONED
        } else {
            0
        };
        // Tail pieces are created locked like the head and unlocked below.
        let mc = mapcounts[k as usize];
        m.order.store(0, Ordering::Relaxed);
        m.mapping.store(mapping, Ordering::Relaxed);
        m.index.store(index + k, Ordering::Relaxed);
        m.private.store(0, Ordering::Relaxed);
        m.mapcount.store(mc, Ordering::Relaxed);
        m.refcount.store(mc + cache_ref + 1, Ordering::Relaxed);
        m.migrate_info.store(0, Ordering::Relaxed);
        m.flags.store(flags | extra, Ordering::Release);
        if let Some(c) = cache.as_mut() {
            c.insert(index + k, Folio(pfn));
        }
        list.push(Folio(pfn));
    }
    drop(cache);
    mm.clear_compound(folio.0, nr);
    mm.mark_split_heads(folio.0, nr);
    for k in 1..nr as u64 {
        mm.folio(Folio(Pfn(folio.0 .0 + k))).unlock();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::{alloc_on_node, Reason};
    use crate::mm::{MemoryConfig, NodeId, Order, VirtAddr};
    use std::sync::Arc;

    fn unmap_one(mm: &Arc<Memory>, src: Folio, mode: Mode) -> (Folio, u64) {
        let mut alloc = alloc_on_node(NodeId(1));
        let mut ctx = Ctx {
            mm,
            get_new_folio: &mut alloc,
            put_new_folio: None,
            reason: Reason::Syscall,
            pipe: None,
        };
        let mut tlb = TlbBatch::new();
        let mut ret = Vec::new();
        let dst = migrate_folio_unmap(&mut ctx, src, mode, &mut tlb, &mut ret).unwrap();
        tlb.flush();
        let (_, states) = migrate_info::unpack(mm.folio(dst).migrate_info());
        // Undo: the source is mapped again and unlocked, the destination freed.
        let was_mapped = states & migrate_info::WAS_MAPPED != 0;
        let anon_vma = mm.folio(src).meta.mapping.load(Ordering::Acquire);
        let anon_vma = if mm.folio(src).is_anon() { anon_vma } else { 0 };
        migrate_folio_undo_src(mm, src, was_mapped, anon_vma, true, None);
        migrate_folio_undo_dst(&mut ctx, dst, true);
        (dst, states)
    }

    #[test]
    fn was_mlocked_is_sampled_right_after_the_lock_not_after_the_writeback_wait() {
        let mm = Memory::new(MemoryConfig::with_nodes(2, 4 << 20)).unwrap();
        let space = mm.new_space(VirtAddr(0x1000_0000), 1 << 20).unwrap();
        let src = space
            .map_anon(VirtAddr(0x1000_0000), NodeId(0), Order(0))
            .unwrap();
        mm.isolate_folio(src).unwrap();
        let f = mm.folio(src);
        f.set(pg::MLOCKED);
        f.start_writeback();
        // munlock races with the writeback wait.
        let t = {
            let mm = mm.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                mm.folio(src).clear(pg::MLOCKED);
                mm.folio(src).end_writeback();
            })
        };
        let (_, states) = unmap_one(&mm, src, Mode::Sync);
        t.join().unwrap();
        assert_eq!(
            states & migrate_info::OLD_STATES,
            migrate_info::WAS_MAPPED | migrate_info::WAS_MLOCKED,
            "mlocked when the folio was locked"
        );
        mm.putback_folio(src).unwrap();
        drop(space);
        assert_eq!(mm.nr_free_pages_total(), mm.nr_pages_total());
    }

    #[test]
    fn a_movable_ops_page_records_its_old_state() {
        let mm = Memory::new(MemoryConfig::with_nodes(2, 4 << 20)).unwrap();
        let page = mm.alloc_movable_ops_page(NodeId(0)).unwrap();
        mm.isolate_folio(page).unwrap();
        mm.folio(page).set(pg::MLOCKED);
        let (_, states) = unmap_one(&mm, page, Mode::Async);
        assert_eq!(states & migrate_info::OLD_STATES, migrate_info::WAS_MLOCKED);
        mm.putback_folio(page).unwrap();
        mm.folio_put(page);
        assert_eq!(mm.nr_free_pages_total(), mm.nr_pages_total());
    }
}
