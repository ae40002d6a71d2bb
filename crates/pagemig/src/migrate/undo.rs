//! `migrate_folio_undo_src()` / `migrate_folio_undo_dst()` and `migrate_folio_done()`.

use crate::mm::{pg, Folio, Memory};

use super::{Ctx, Reason};

/// Restores the source: its PTEs come back (`remove_migration_ptes(src, src)`), it is
/// unlocked and, with `ret`, put on the failed list.
pub(crate) fn migrate_folio_undo_src(
    mm: &Memory,
    src: Folio,
    page_was_mapped: bool,
    anon_vma: u64,
    locked: bool,
    ret: Option<&mut Vec<Folio>>,
) {
    if page_was_mapped {
        mm.remove_migration_ptes(src, src, anon_vma);
    }
    // put_anon_vma(): anon_vmas live as long as the memory model (see DESIGN.md).
    if locked {
        mm.folio(src).unlock();
    }
    if let Some(ret) = ret {
        ret.push(src);
    }
}

/// Releases the destination: unlock, then `put_new_folio` or `folio_put`.
pub(crate) fn migrate_folio_undo_dst(ctx: &mut Ctx<'_, '_, '_>, dst: Folio, locked: bool) {
    let d = ctx.mm.folio(dst);
    d.meta
        .migrate_info
        .store(0, std::sync::atomic::Ordering::Release);
    if locked {
        d.unlock();
    }
    ctx.put_new(dst);
}

/// `migrate_folio_done(src, reason)`: a migrated (or freed-under-us) source leaves the
/// `NR_ISOLATED_*` count — except for movable_ops pages, which were never counted, and for
/// `MR_DEMOTION`, whose caller (reclaim) accounts its isolated folios itself — and drops
/// its isolation reference, except for `MR_MEMORY_FAILURE`: the poison handler
/// (`page_handle_poison`, [`crate::migrate::soft_offline_page`]) releases that one.
pub(crate) fn migrate_folio_done(mm: &Memory, src: Folio, reason: Reason) {
    let f = mm.folio(src);
    if !f.test(pg::MOVABLE_OPS) && reason != Reason::Demotion {
        mm.mod_isolated(&f, -1);
    }
    f.clear(pg::ISOLATED);
    if reason != Reason::MemoryFailure {
        f.put();
    }
}

/// `folio_putback_hugetlb()`: a migrated (or freed-under-us) hugetlb source drops its
/// isolation reference (hugetlb folios are not counted in `NR_ISOLATED_*`).
pub(crate) fn folio_putback_hugetlb(mm: &Memory, src: Folio) {
    let f = mm.folio(src);
    f.clear(pg::ISOLATED);
    f.put();
}
