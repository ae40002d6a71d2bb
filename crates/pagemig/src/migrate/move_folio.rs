//! The move phase: `migrate_folios_move()`, `migrate_folio_move()`,
//! `move_to_new_folio()` and `__migrate_folio()` — where the series' `FOLIO_CONTENT_COPIED`
//! mark is consumed and unmarked folios are copied on the CPU.

use std::sync::atomic::Ordering;

use crate::mm::{migrate_info, pg, Folio, Memory};
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
    ctx: &mut Ctx<'_, '_>,
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
    ctx: &mut Ctx<'_, '_>,
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
    let is_lru = !s.test(pg::MOVABLE_OPS);
    let (old_states, anon_vma) = migrate_folio_extract(mm, dst);
    let page_was_mapped = old_states & migrate_info::WAS_MAPPED != 0;
    if let Some(h) = &mm.hooks {
        h.before_move(mm, src, pass);
    }

    if let Err(rc) = move_to_new_folio(mm, dst, src, mode, stats) {
        if rc == Errno::Again {
            // Stay on the list; re-record without the copied mark: a retry copies again.
            migrate_folio_record(mm, dst, old_states, anon_vma);
            return Err(rc);
        }
        migrate_folio_undo_src(mm, src, page_was_mapped, anon_vma, true, Some(ret));
        migrate_folio_undo_dst(ctx, dst, true);
        return Err(rc);
    }

    if is_lru {
        // folio_add_lru(dst): the new folio can be isolated again from now on.
        d.set(pg::LRU);
        if page_was_mapped {
            mm.remove_migration_ptes(src, dst, anon_vma);
        }
    }
    d.meta.migrate_info.store(0, Ordering::Release);
    d.unlock();
    // The new owner (the mappings) holds its references; drop the allocation's.
    d.put();
    // put_anon_vma(): see DESIGN.md.
    s.unlock();
    migrate_folio_done(mm, src);
    Ok(())
}

/// `move_to_new_folio()`: dispatch by kind. Anonymous folios have no address_space, so
/// they take `migrate_folio()`; movable_ops pages call their owner's `migrate_page`.
fn move_to_new_folio(
    mm: &Memory,
    dst: Folio,
    src: Folio,
    mode: Mode,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    let s = mm.folio(src);
    if s.test(pg::MOVABLE_OPS) {
        let ops = mm.movable_ops.as_ref().ok_or(Errno::NotSupported)?;
        ops.migrate_page(mm, dst, src, mode)?;
        stats.nr_copied_on_cpu += 1;
        s.clear(pg::MOVABLE_OPS);
        return Ok(());
    }
    migrate_folio(mm, dst, src, mode, stats)
}

/// `migrate_folio()` → `__migrate_folio()`: consume the copied mark, check references,
/// copy unless marked, move the mapping and the flags.
fn migrate_folio(
    mm: &Memory,
    dst: Folio,
    src: Folio,
    _mode: Mode,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    let s = mm.folio(src);
    let d = mm.folio(dst);
    // Read and clear at once, before the refcount check: consume-once.
    let already_copied = d.test_and_clear_content_copied();
    if s.ref_count() != s.expected_ref_count() {
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
    // __folio_migrate_mapping(): the new folio takes over the anon mapping and index.
    d.meta
        .mapping
        .store(s.meta.mapping.load(Ordering::Acquire), Ordering::Release);
    d.meta
        .index
        .store(s.meta.index.load(Ordering::Acquire), Ordering::Release);
    // folio_migrate_flags().
    let carry = s.flags() & (pg::ANON | pg::DIRTY | pg::UPTODATE | pg::MLOCKED | pg::HUGETLB);
    d.set(carry);
    Ok(())
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
    migrate_folio(mm, dst, src, Mode::Sync, stats)
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
            migrate_folio(&mm, dst, src, Mode::Async, &mut stats),
            Err(Errno::Again)
        );
        assert_eq!(
            mm.folio(dst).migrate_info() & migrate_info::CONTENT_COPIED,
            0,
            "consumed on first read"
        );
        mm.folio(src).put();
        assert_eq!(
            migrate_folio(&mm, dst, src, Mode::Async, &mut stats),
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
