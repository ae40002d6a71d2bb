//! `migrate_hugetlbs()` and `unmap_and_move_huge_page()`: hugetlb folios go first, one at a
//! time, with up to 10 passes; they are never batched and always copied on the CPU.

use crate::mm::{pg, Folio};
use crate::Errno;

use super::undo::folio_putback_hugetlb;
use super::{Ctx, MigratePagesStats, Mode, NR_MAX_MIGRATE_PAGES_RETRY};

pub(crate) fn migrate_hugetlbs(
    ctx: &mut Ctx<'_, '_, '_>,
    from: &mut Vec<Folio>,
    mode: Mode,
    stats: &mut MigratePagesStats,
    ret_folios: &mut Vec<Folio>,
) -> Result<usize, Errno> {
    let mm = ctx.mm;
    let mut retry = 1;
    let mut nr_failed = 0;
    let mut nr_retry_pages = 0;
    let mut pass = 0;
    while pass < NR_MAX_MIGRATE_PAGES_RETRY && retry > 0 {
        retry = 0;
        nr_retry_pages = 0;
        // Walked as upstream walks `from` in place: every folio not taken off it stays on
        // it, in order, including all those after an -ENOMEM.
        let mut list = std::mem::take(from).into_iter();
        while let Some(folio) = list.next() {
            if !mm.folio(folio).test(pg::HUGETLB) {
                from.push(folio);
                continue;
            }
            let nr_pages = mm.folio(folio).nr_pages();
            match unmap_and_move_huge_page(ctx, folio, pass > 2, mode, ret_folios, stats) {
                Err(Errno::NoMem) => {
                    stats.nr_failed_pages += nr_pages + nr_retry_pages;
                    from.push(folio);
                    from.extend(list);
                    return Err(Errno::NoMem);
                }
                Err(Errno::Again) => {
                    retry += 1;
                    nr_retry_pages += nr_pages;
                    from.push(folio);
                }
                Ok(()) => stats.nr_succeeded += nr_pages,
                Err(_) => {
                    nr_failed += 1;
                    stats.nr_failed_pages += nr_pages;
                }
            }
        }
        pass += 1;
    }
    nr_failed += retry;
    stats.nr_failed_pages += nr_retry_pages;
    Ok(nr_failed)
}

fn unmap_and_move_huge_page(
    ctx: &mut Ctx<'_, '_, '_>,
    src: Folio,
    force: bool,
    mode: Mode,
    ret: &mut Vec<Folio>,
    stats: &mut MigratePagesStats,
) -> Result<(), Errno> {
    let mm = ctx.mm;
    let s = mm.folio(src);
    if s.ref_count() == 1 {
        // Freed from under us.
        folio_putback_hugetlb(mm, src);
        return Ok(());
    }
    let dst = (ctx.get_new_folio)(mm, src).ok_or(Errno::NoMem)?;
    let d = mm.folio(dst);
    let mut rc = Err(Errno::Again);
    'out: {
        if !s.trylock() {
            if !force || mode != Mode::Sync {
                break 'out;
            }
            s.lock();
        }
        let anon_vma = s.meta.mapping.load(std::sync::atomic::Ordering::Acquire);
        if d.trylock() {
            let mut page_was_mapped = false;
            if s.is_mapped() {
                mm.try_to_migrate(&s, anon_vma, None);
                page_was_mapped = true;
            }
            if !s.is_mapped() {
                rc = super::move_folio::migrate_hugetlb_folio(mm, dst, src, stats);
            }
            if page_was_mapped {
                let to = if rc.is_ok() { dst } else { src };
                mm.remove_migration_ptes(src, to, anon_vma);
                mm.flush_backend_remaps();
            }
            d.unlock();
        }
        s.unlock();
    }
    match rc {
        Ok(()) => {
            // folio_putback_active_hugetlb(src/dst): the old one is freed, the new one
            // keeps only its mappings' references.
            folio_putback_hugetlb(mm, src);
            d.set(pg::LRU);
            d.put();
        }
        Err(e) => {
            if e != Errno::Again {
                ret.push(src);
            }
            ctx.put_new(dst);
        }
    }
    rc
}
