//! `migrate_folio_undo_src()` / `migrate_folio_undo_dst()` and `migrate_folio_done()`.

use crate::mm::{pg, Folio, Memory};

use super::Ctx;

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
pub(crate) fn migrate_folio_undo_dst(ctx: &mut Ctx<'_, '_>, dst: Folio, locked: bool) {
    let d = ctx.mm.folio(dst);
    d.meta
        .migrate_info
        .store(0, std::sync::atomic::Ordering::Release);
    if locked {
        d.unlock();
    }
    ctx.put_new(dst);
}

/// `migrate_folio_done()`: a migrated (or freed-under-us) source drops its isolation
/// reference and is freed.
pub(crate) fn migrate_folio_done(mm: &Memory, src: Folio) {
    let f = mm.folio(src);
    f.clear(pg::ISOLATED);
    f.put();
}
