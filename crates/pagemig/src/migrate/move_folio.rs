//! The move phase: `migrate_folios_move()`, `migrate_folio_move()`,
//! `move_to_new_folio()` and `__migrate_folio()` — where the series' `FOLIO_CONTENT_COPIED`
//! mark is consumed and unmarked folios are copied on the CPU.

use std::sync::atomic::Ordering;

use crate::mm::{migrate_info, pg, Buffers, Folio, Mapping, Memory, MigrateFolioOp, NodeStat};
use crate::sync::lock;
use crate::Errno;

use super::batch::PassCounters;
use super::undo::{migrate_folio_done, migrate_folio_undo_dst, migrate_folio_undo_src};
use super::unmap::migrate_folio_record;
use super::{Ctx, MigratePagesStats, Mode};

/// `__migrate_folio_extract()`: recovers the old states (`FOLIO_OLD_STATES`) and the
/// anon_vma from `dst` and leaves only the `CONTENT_COPIED` bit in the word, so the mark
/// survives into `move_to_new_folio()`.
pub(crate) fn migrate_folio_extract(mm: &Memory, dst: Folio) -> (u64, u64) {
    let m = &mm.folio(dst).meta.migrate_info;
    let word = m.load(Ordering::Acquire);
    let (anon_vma, states) = migrate_info::unpack(word);
    m.store(states & migrate_info::CONTENT_COPIED, Ordering::Release);
    (states & migrate_info::OLD_STATES, anon_vma)
}

/// `migrate_folios_move()`: one pass over a (src, dst) list pair. Pairs that return
/// `EAGAIN` stay for the next pass; the rest leave the lists.
#[allow(clippy::too_many_arguments)]
pub(crate) fn migrate_folios_move(
    ctx: &mut Ctx<'_, '_, '_>,
    src_folios: &mut Vec<Folio>,
    dst_folios: &mut Vec<Folio>,
    mode: Mode,
    ret_folios: &mut Vec<Folio>,
    stats: &mut MigratePagesStats,
    c: &mut PassCounters,
    pass: usize,
) {
    let mut keep_src = Vec::new();
    let mut keep_dst = Vec::new();
    for (src, dst) in src_folios.drain(..).zip(dst_folios.drain(..)) {
        let f = ctx.mm.folio(src);
        let is_thp = f.is_thp() as usize;
        let nr_pages = f.nr_pages();
        match migrate_folio_move(ctx, src, dst, mode, ret_folios, stats, pass) {
            Err(Errno::Again) => {
                c.retry += 1;
                c.thp_retry += is_thp;
                c.nr_retry_pages += nr_pages;
                keep_src.push(src);
                keep_dst.push(dst);
            }
            Ok(()) => {
                stats.nr_succeeded += nr_pages;
                stats.nr_thp_succeeded += is_thp;
                if c.first_done.is_none() {
                    c.first_done = Some(std::time::Instant::now());
                }
            }
            Err(e) => {
                stats.record_failure(e, 1);
                c.nr_failed += 1;
                stats.nr_thp_failed += is_thp;
                stats.nr_failed_pages += nr_pages;
            }
        }
    }
    *src_folios = keep_src;
    *dst_folios = keep_dst;
}

/// `migrate_folio_move()`: migrate `src` into the unmapped, locked `dst`.
pub(crate) fn migrate_folio_move(
    ctx: &mut Ctx<'_, '_, '_>,
    src: Folio,
    dst: Folio,
    mode: Mode,
    ret: &mut Vec<Folio>,
    stats: &mut MigratePagesStats,
    pass: usize,
) -> Result<(), Errno> {
    let mm = ctx.mm;
    let s = mm.folio(src);
    let d = mm.folio(dst);
    let (old_state, anon_vma) = migrate_folio_extract(mm, dst);
    if let Some(h) = &mm.hooks {
        h.before_move(mm, src, pass);
    }

    let rc: Result<(), Errno> = 'out: {
        if s.test(pg::MOVABLE_OPS) {
            break 'out migrate_movable_ops_page(mm, dst, src, mode, stats);
        }
        // The source's place on the deferred split queue, from before
        // __folio_migrate_mapping() takes it off.
        let src_deferred_split = s.order().0 > 1 && mm.on_deferred_split_queue(src);
        let src_partially_mapped = src_deferred_split && s.test(pg::PARTIALLY_MAPPED);

        if let Err(e) = move_to_new_folio(mm, dst, src, mode, stats) {
            break 'out Err(e);
        }
        // Requeue the destination if the source was queued.
        if src_deferred_split {
            mm.deferred_split_folio(dst, src_partially_mapped);
        }
        // folio_add_lru(dst): the new folio can be isolated again from now on.
        d.set(pg::LRU);
        if old_state & migrate_info::WAS_MAPPED != 0 {
            mm.remove_migration_ptes(src, dst, anon_vma);
        }
        Ok(())
    };
    if let Err(e) = rc {
        if e == Errno::Again {
            // Stay on the list; re-record without the copied mark: a retry copies again.
            migrate_folio_record(mm, dst, old_state, anon_vma);
            return Err(e);
        }
        let was_mapped = old_state & migrate_info::WAS_MAPPED != 0;
        migrate_folio_undo_src(mm, src, was_mapped, anon_vma, true, Some(ret));
        migrate_folio_undo_dst(ctx, dst, true);
        return Err(e);
    }
    // out_unlock_both:
    d.meta.migrate_info.store(0, Ordering::Release);
    d.unlock();
    // The new owner (the mappings, the cache) holds its references; drop the allocation's.
    d.put();
    // put_anon_vma(): see DESIGN.md.
    s.unlock();
    migrate_folio_done(mm, src, ctx.reason);
    Ok(())
}

/// `migrate_movable_ops_page()`: the owner's `migrate_page`; on success the source stops
/// being isolated (`ClearPageMovableOpsIsolated`) but keeps its page type, which stays
/// until the page is freed.
fn migrate_movable_ops_page(
    mm: &Memory,
    dst: Folio,
    src: Folio,
    mode: Mode,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    let ops = mm.movable_ops.as_ref().ok_or(Errno::NotSupported)?;
    ops.migrate_page(mm, dst, src, mode)?;
    stats.nr_copied_on_cpu += 1;
    mm.folio(src).clear(pg::ISOLATED);
    Ok(())
}

/// `move_to_new_folio()`: dispatch by the source's mapping — none (anonymous) takes
/// `migrate_folio()`, an inaccessible one is `EOPNOTSUPP`, otherwise its
/// `a_ops->migrate_folio` or `fallback_migrate_folio()`. On success a page-cache source
/// loses its mapping (anonymous folios stay anonymous until freed).
fn move_to_new_folio(
    mm: &Memory,
    dst: Folio,
    src: Folio,
    mode: Mode,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    let s = mm.folio(src);
    let rc = match mm.folio_mapping(src) {
        None => migrate_folio(mm, None, dst, src, mode, stats),
        Some(m) => match m.migrate_folio_op() {
            None => Err(Errno::NotSupported),
            Some(MigrateFolioOp::Migrate) => migrate_folio(mm, Some(&m), dst, src, mode, stats),
            Some(MigrateFolioOp::Filemap) => filemap_migrate_folio(mm, &m, dst, src, mode, stats),
            Some(MigrateFolioOp::Buffer) => {
                buffer_migrate_folio(mm, &m, dst, src, mode, stats, false)
            }
            Some(MigrateFolioOp::BufferNorefs) => {
                buffer_migrate_folio(mm, &m, dst, src, mode, stats, true)
            }
            Some(MigrateFolioOp::None) => fallback_migrate_folio(mm, &m, dst, src, mode, stats),
            Some(MigrateFolioOp::Custom(op)) => {
                let op = op.clone();
                op.migrate_folio(mm, dst, src, mode, &mut || {
                    filemap_migrate_folio(mm, &m, dst, src, mode, stats)
                })
            }
        },
    };
    if rc.is_ok() && !s.is_anon() {
        s.meta.mapping.store(0, Ordering::Release);
    }
    rc
}

/// `migrate_folio()`: simple migration of a folio without private data.
fn migrate_folio(
    mm: &Memory,
    mapping: Option<&Mapping>,
    dst: Folio,
    src: Folio,
    mode: Mode,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    debug_assert!(
        !mm.folio(src).test(pg::WRITEBACK),
        "writeback must be complete"
    );
    migrate_folio_inner(mm, mapping, dst, src, false, mode, stats)
}

/// `filemap_migrate_folio()`: `__migrate_folio` moving the private data too.
fn filemap_migrate_folio(
    mm: &Memory,
    mapping: &Mapping,
    dst: Folio,
    src: Folio,
    mode: Mode,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    let private = mm.folio(src).test(pg::PRIVATE);
    migrate_folio_inner(mm, Some(mapping), dst, src, private, mode, stats)
}

/// `__migrate_folio()`: consume the copied mark, check references, copy unless marked,
/// then `__folio_migrate_mapping()` — whose refcount freeze comes *after* the copy and
/// can still fail with `EAGAIN`; the mark is gone by then, so the retry copies again —
/// and move the private data and the flags.
fn migrate_folio_inner(
    mm: &Memory,
    mapping: Option<&Mapping>,
    dst: Folio,
    src: Folio,
    src_private: bool,
    _mode: Mode,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    let s = mm.folio(src);
    let d = mm.folio(dst);
    let expected_count = s.expected_ref_count();
    // Read and clear at once, before the refcount check: consume-once.
    let already_copied = d.test_and_clear_content_copied();
    if s.ref_count() != expected_count {
        return Err(Errno::Again);
    }
    if already_copied {
        stats.nr_copied_by_batch += 1;
    } else {
        let rc = mm.folio_mc_copy(dst, src);
        crate::copy::store_fence();
        rc?;
        stats.nr_copied_on_cpu += 1;
    }
    if let Some(h) = &mm.hooks {
        h.after_copy_before_freeze(mm, src);
    }
    folio_migrate_mapping(mm, mapping, dst, src, expected_count)?;
    if src_private {
        let id = mm.folio_detach_private(src);
        mm.folio_attach_private_handle(dst, id);
    }
    folio_migrate_flags(mm, dst, src);
    Ok(())
}

/// `__folio_migrate_mapping()`: replaces `folio` by `newfolio` in its mapping. For a
/// page-cache folio, under the cache's lock: freeze the refcount at `expected_count` (or
/// `EAGAIN`), take it off the deferred split queue, hand the index, the mapping, the
/// cache's references and the dirty bit over, store the new folio in every slot, unfreeze
/// without the cache's references, and move the node counters. An anonymous large folio
/// is frozen too (to leave the deferred split queue); a small one is not checked again.
fn folio_migrate_mapping(
    mm: &Memory,
    mapping: Option<&Mapping>,
    newfolio: Folio,
    folio: Folio,
    expected_count: i32,
) -> Result<(), Errno> {
    let old = mm.folio(folio);
    let new = mm.folio(newfolio);
    let nr = old.nr_pages();
    // newfolio->mapping = folio->mapping: the folio's kind goes with it.
    let kind = old.flags() & (pg::ANON | pg::HUGETLB);
    let Some(m) = mapping else {
        if old.is_large() && !old.test(pg::HUGETLB) {
            // Take off the deferred split queue while frozen.
            if !old.ref_freeze(expected_count) {
                return Err(Errno::Again);
            }
            mm.unqueue_deferred_split(folio);
            old.ref_unfreeze(expected_count);
        }
        // No turning back from here.
        new.meta.index.store(old.index(), Ordering::Release);
        new.meta
            .mapping
            .store(old.meta.mapping.load(Ordering::Acquire), Ordering::Release);
        new.set(kind);
        if old.test(pg::SWAPBACKED) {
            new.set(pg::SWAPBACKED);
        }
        return Ok(());
    };
    let old_node = old.node();
    let new_node = new.node();
    let dirty;
    {
        let mut cache = lock(&m.i_pages);
        if !old.ref_freeze(expected_count) {
            return Err(Errno::Again);
        }
        mm.unqueue_deferred_split(folio);
        // Now we know that no one else is looking at the folio: no turning back.
        let index = old.index();
        new.meta.index.store(index, Ordering::Release);
        new.meta
            .mapping
            .store(old.meta.mapping.load(Ordering::Acquire), Ordering::Release);
        new.set(kind);
        // The cache's references.
        new.meta.refcount.fetch_add(nr as i32, Ordering::AcqRel);
        if old.test(pg::SWAPBACKED) {
            new.set(pg::SWAPBACKED);
        }
        // Move dirty while the refs are frozen and the new folio not yet exposed.
        dirty = old.test(pg::DIRTY);
        if dirty {
            old.clear(pg::DIRTY);
            new.set(pg::DIRTY);
        }
        for k in 0..nr as u64 {
            cache.insert(index + k, newfolio);
        }
        // Drop the cache's references from the old folio by unfreezing to fewer.
        old.ref_unfreeze(expected_count - nr as i32);
    }
    if new_node != old_node {
        let n = nr as i64;
        mm.mod_node_stat(old_node, NodeStat::FilePages, -n);
        mm.mod_node_stat(new_node, NodeStat::FilePages, n);
        if old.test(pg::SWAPBACKED) {
            mm.mod_node_stat(old_node, NodeStat::Shmem, -n);
            mm.mod_node_stat(new_node, NodeStat::Shmem, n);
        }
        if dirty && m.can_writeback() {
            mm.mod_node_stat(old_node, NodeStat::FileDirty, -n);
            mm.mod_node_stat(new_node, NodeStat::FileDirty, n);
        }
    }
    Ok(())
}

/// `folio_migrate_flags()`: the flags that go with the contents (`PG_uptodate`, a dirty
/// bit `__folio_migrate_mapping` did not move). `PG_mlocked` is not among them: the new
/// folio is mlocked again by the `VM_LOCKED` mappings that map it
/// (`remove_migration_ptes`).
fn folio_migrate_flags(mm: &Memory, newfolio: Folio, folio: Folio) {
    let old = mm.folio(folio);
    let new = mm.folio(newfolio);
    if old.test(pg::UPTODATE) {
        new.set(pg::UPTODATE);
    }
    if old.test(pg::DIRTY) {
        new.set(pg::DIRTY);
    }
    old.clear(pg::PRIVATE);
    if new.test(pg::WRITEBACK) {
        new.end_writeback();
    }
}

/// `__buffer_migrate_folio()`: a folio with buffer heads. Checks references, locks every
/// buffer (trylock in async mode; in sync-light mode waits only for uptodate buffers), with
/// `check_refs` also finds no user of any buffer head, then `filemap_migrate_folio()` and
/// points the buffers at the new folio before unlocking them.
fn buffer_migrate_folio(
    mm: &Memory,
    mapping: &Mapping,
    dst: Folio,
    src: Folio,
    mode: Mode,
    stats: &mut MigratePagesStats,
    check_refs: bool,
) -> Result<(), Errno> {
    let Some(head) = mm.folio_buffers(src) else {
        return migrate_folio(mm, Some(mapping), dst, src, mode, stats);
    };
    let s = mm.folio(src);
    if s.ref_count() != s.expected_ref_count() {
        return Err(Errno::Again);
    }
    if !buffer_migrate_lock_buffers(&head, mode) {
        return Err(Errno::Again);
    }
    let rc = 'unlock: {
        if check_refs {
            let migrating = head.bhs[0]
                .state
                .fetch_or(crate::mm::buffer_head::BH_MIGRATE, Ordering::AcqRel)
                & crate::mm::buffer_head::BH_MIGRATE
                != 0;
            debug_assert!(!migrating);
            // invalidate_bh_lrus() would drop the per-CPU LRU's holds; the model keeps
            // none, so one look decides.
            if head.any_users() {
                break 'unlock Err(Errno::Again);
            }
        }
        let rc = filemap_migrate_folio(mm, mapping, dst, src, mode, stats);
        if rc.is_ok() {
            head.set_folio(dst.0 .0);
        }
        rc
    };
    if check_refs {
        head.bhs[0]
            .state
            .fetch_and(!crate::mm::buffer_head::BH_MIGRATE, Ordering::AcqRel);
    }
    for i in 0..head.len() {
        head.unlock(i);
    }
    rc
}

/// `buffer_migrate_lock_buffers()`: true if every buffer is locked.
fn buffer_migrate_lock_buffers(head: &Buffers, mode: Mode) -> bool {
    for i in 0..head.len() {
        if !head.trylock(i) {
            if mode == Mode::Async || (mode == Mode::SyncLight && !head.uptodate(i)) {
                // We failed to lock the buffer and cannot stall.
                for j in 0..i {
                    head.unlock(j);
                }
                return false;
            }
            head.lock(i);
        }
    }
    true
}

/// `fallback_migrate_folio()`: a mapping without `migrate_folio`. A dirty folio is
/// `EBUSY` (the tree no longer writes it out from here); private data must be released
/// (`EAGAIN` in sync mode, `EBUSY` otherwise); then `migrate_folio()`.
fn fallback_migrate_folio(
    mm: &Memory,
    mapping: &Mapping,
    dst: Folio,
    src: Folio,
    mode: Mode,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    if mm.folio(src).test(pg::DIRTY) {
        return Err(Errno::Busy);
    }
    if !mm.filemap_release_folio(src) {
        return Err(if mode == Mode::Sync {
            Errno::Again
        } else {
            Errno::Busy
        });
    }
    migrate_folio(mm, Some(mapping), dst, src, mode, stats)
}

/// `move_to_new_folio()` for hugetlb (`hugetlbfs_migrate_folio`): always a CPU copy.
pub(crate) fn migrate_hugetlb_folio(
    mm: &Memory,
    dst: Folio,
    src: Folio,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    debug_assert_eq!(
        mm.folio(dst).migrate_info() & migrate_info::CONTENT_COPIED,
        0
    );
    migrate_folio(mm, None, dst, src, Mode::Sync, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::{MemoryConfig, NodeId, Order, VirtAddr};

    #[test]
    fn the_copied_mark_is_consumed_even_when_the_refcount_check_fails() {
        let mm = Memory::new(MemoryConfig::with_nodes(2, 4 << 20)).unwrap();
        let space = mm.new_space(VirtAddr(0x1000_0000), 1 << 20).unwrap();
        let src = space
            .map_anon(VirtAddr(0x1000_0000), NodeId(0), Order(0))
            .unwrap();
        mm.isolate_folio(src).unwrap();
        let dst = mm.alloc_folio(NodeId(1), Order(0), 0).unwrap();
        let mut stats = MigratePagesStats::default();
        mm.folio(src).get(); // a racing reference
        mm.folio(dst).mark_content_copied();
        assert_eq!(
            migrate_folio(&mm, None, dst, src, Mode::Async, &mut stats),
            Err(Errno::Again)
        );
        assert_eq!(
            mm.folio(dst).migrate_info() & migrate_info::CONTENT_COPIED,
            0,
            "consumed on first read"
        );
        mm.folio(src).put();
        assert_eq!(
            migrate_folio(&mm, None, dst, src, Mode::Async, &mut stats),
            Ok(())
        );
        assert_eq!(
            (stats.nr_copied_by_batch, stats.nr_copied_on_cpu),
            (0, 1),
            "the retry copied on the CPU"
        );
        mm.folio_put(dst);
        mm.putback_folio(src).unwrap();
        drop(space);
        assert_eq!(mm.nr_free_pages_total(), mm.nr_pages_total());
    }
}
