//! `migrate_pages_batch()`: unmap a batch, flush the TLB once, hand the batch-eligible
//! pairs to the migrator in one call, move every folio (copying on the CPU what is not
//! marked), and undo whatever is left.

use std::time::Instant;

use crate::mm::{pg, Folio, TlbBatch};
use crate::offload::CopyBatch;
use crate::Errno;

use super::move_folio::migrate_folios_move;
use super::pipeline::Job;
use super::undo::migrate_folio_done;
use super::undo::{migrate_folio_undo_dst, migrate_folio_undo_src};
use super::unmap::{folio_can_batch_copy, migrate_folio_unmap, try_split_folio};
use super::{elapsed_ns, Ctx, MigratePagesStats, Mode, Reason};

/// Retry and failure counters shared by both move loops (`retry`, `thp_retry`,
/// `nr_failed`, `nr_retry_pages`).
#[derive(Default)]
pub(crate) struct PassCounters {
    pub(crate) retry: usize,
    pub(crate) thp_retry: usize,
    pub(crate) nr_failed: usize,
    pub(crate) nr_retry_pages: usize,
    /// When the first folio of the batch was usable again.
    pub(crate) first_done: Option<Instant>,
}

/// `migrate_pages_batch(from, ..., mode, reason, ret_folios, split_folios, stats, nr_pass)`.
///
/// Holds more than one folio only in `Mode::Async` (holding several folio locks while
/// sleeping can deadlock). Folios that still want a retry after `nr_pass` passes stay on
/// `from`; permanent failures go to `ret_folios`. Returns the number of failed folios or
/// `ENOMEM`.
pub(crate) fn migrate_pages_batch(
    ctx: &mut Ctx<'_, '_, '_>,
    from: &mut Vec<Folio>,
    mode: Mode,
    ret_folios: &mut Vec<Folio>,
    mut split_folios: Option<&mut Vec<Folio>>,
    stats: &mut MigratePagesStats,
    nr_pass: usize,
) -> Result<usize, Errno> {
    debug_assert!(
        mode == Mode::Async || from.len() <= 1,
        "sync batch holds more than one folio"
    );
    let mm = ctx.mm;
    let reason = ctx.reason;
    let nosplit = reason == Reason::NumaMisplaced;
    // The gate: one decision for the whole batch (static key && reason mask).
    let offload = mm.offload().should_offload(reason);

    let mut unmap_batch: Vec<Folio> = Vec::new();
    let mut dst_batch: Vec<Folio> = Vec::new();
    let mut unmap_single: Vec<Folio> = Vec::new();
    let mut dst_single: Vec<Folio> = Vec::new();
    let mut tlb = TlbBatch::new();
    let mut c = PassCounters {
        retry: 1,
        ..Default::default()
    };
    let mut rc_saved: Option<Errno> = None;
    let mut go_out = false;

    let t_unmap = Instant::now();
    let mut pass = 0;
    'unmap: while pass < nr_pass && c.retry > 0 {
        c.retry = 0;
        c.thp_retry = 0;
        c.nr_retry_pages = 0;
        let list = std::mem::take(from);
        let mut it = list.into_iter();
        while let Some(folio) = it.next() {
            let f = mm.folio(folio);
            let is_thp = f.is_thp() as usize;
            let is_large = f.is_large();
            let nr_pages = f.nr_pages();

            // The rare folio on the deferred split list should be split now. It counts as
            // a failure (so migrate_pages() does not report success with split but
            // unmigrated pages left), as upstream does; nr_pages > 2 skips order-1 folios.
            if nr_pages > 2 && mm.on_deferred_split_queue(folio) && f.test(pg::PARTIALLY_MAPPED) {
                if let Some(split) = split_folios.as_deref_mut() {
                    if try_split_folio(mm, folio, split, mode).is_ok() {
                        c.nr_failed += 1;
                        stats.nr_thp_failed += is_thp;
                        stats.nr_thp_split += is_thp;
                        stats.nr_split += 1;
                        continue;
                    }
                }
            }

            // If we are holding the last folio reference, the folio was freed from under
            // us, so just drop our reference.
            if !f.test(pg::MOVABLE_OPS) && f.ref_count() == 1 {
                migrate_folio_done(mm, folio, reason);
                stats.nr_succeeded += nr_pages;
                stats.nr_thp_succeeded += is_thp;
                continue;
            }

            match migrate_folio_unmap(ctx, folio, mode, &mut tlb, ret_folios) {
                Ok(dst) => {
                    if offload && folio_can_batch_copy(mm, folio) {
                        unmap_batch.push(folio);
                        dst_batch.push(dst);
                    } else {
                        unmap_single.push(folio);
                        dst_single.push(dst);
                    }
                }
                Err(Errno::Again) => {
                    c.retry += 1;
                    c.thp_retry += is_thp;
                    c.nr_retry_pages += nr_pages;
                    from.push(folio);
                }
                Err(Errno::NoMem) => {
                    // Memory is low: stop unmapping, move what is unmapped, then exit.
                    c.nr_failed += 1;
                    stats.nr_thp_failed += is_thp;
                    if is_large && !nosplit {
                        if let Some(split) = split_folios.as_deref_mut() {
                            match try_split_folio(mm, folio, split, mode) {
                                Ok(()) => {
                                    stats.nr_thp_split += is_thp;
                                    stats.nr_split += 1;
                                    continue;
                                }
                                Err(Errno::Again) if reason == Reason::LongtermPin => {
                                    c.retry += 1;
                                    c.thp_retry += is_thp;
                                    c.nr_retry_pages += nr_pages;
                                    c.nr_failed -= 1;
                                    stats.nr_thp_failed -= is_thp;
                                    from.push(folio);
                                    continue;
                                }
                                Err(_) => {}
                            }
                        }
                    }
                    stats.nr_failed_pages += nr_pages + c.nr_retry_pages;
                    stats.nr_thp_failed += c.thp_retry;
                    stats.record_failure(Errno::NoMem, 1);
                    rc_saved = Some(Errno::NoMem);
                    // The folio and the untried rest stay on `from`.
                    from.push(folio);
                    from.extend(it);
                    go_out = unmap_batch.is_empty() && unmap_single.is_empty();
                    break 'unmap;
                }
                Err(e) => {
                    // Permanent failure (-EBUSY, ...): on ret_folios, not retried.
                    stats.record_failure(e, 1);
                    c.nr_failed += 1;
                    stats.nr_thp_failed += is_thp;
                    stats.nr_failed_pages += nr_pages;
                }
            }
        }
        pass += 1;
    }
    if rc_saved.is_none() {
        c.nr_failed += c.retry;
        stats.record_failure(Errno::Again, c.retry);
        stats.nr_thp_failed += c.thp_retry;
        stats.nr_failed_pages += c.nr_retry_pages;
    }
    stats.phases.unmap_ns += elapsed_ns(t_unmap);

    let mut rc: Result<usize, Errno> = Err(Errno::NoMem);
    if !go_out {
        let hooks = mm.hooks.clone();
        let copy_early = hooks.as_ref().is_some_and(|h| h.copy_before_flush());
        let batch_copy =
            |stats: &mut MigratePagesStats, dst_batch: &[Folio], unmap_batch: &[Folio]| {
                if !unmap_batch.is_empty() {
                    if let Some(h) = &hooks {
                        h.before_batch_copy(mm);
                    }
                    let t = Instant::now();
                    // One call for the whole batch; the return value is ignored: correctness
                    // rests on the per-folio CONTENT_COPIED marks.
                    let _ = mm
                        .offload()
                        .batch_copy(&CopyBatch::new(mm, dst_batch, unmap_batch));
                    stats.phases.copy_ns += elapsed_ns(t);
                }
            };
        if copy_early {
            // Negative control: copying before the shootdown races with accessors that
            // still hold the old translation.
            batch_copy(stats, &dst_batch, &unmap_batch);
        }
        // Flush TLBs for all unmapped folios (try_to_unmap_flush).
        let t = Instant::now();
        tlb.flush();
        // A backend's deferred unmap can fail (the live backend: a page pinned or shared
        // with a child): those folios are still mapped, so they are put back like a folio
        // that try_to_migrate() could not unmap, and retried by the caller.
        for src in tlb.take_unmap_failed() {
            for (srcs, dsts) in [
                (&mut unmap_batch, &mut dst_batch),
                (&mut unmap_single, &mut dst_single),
            ] {
                if let Some(k) = srcs.iter().position(|&f| f == src) {
                    let dst = dsts.remove(k);
                    srcs.remove(k);
                    let f = mm.folio(src);
                    stats.record_failure(Errno::Again, 1);
                    c.nr_failed += 1;
                    stats.nr_thp_failed += f.is_thp() as usize;
                    stats.nr_failed_pages += f.nr_pages();
                    migrate_folio_undo_src(mm, src, false, 0, true, None);
                    migrate_folio_undo_dst(ctx, dst, true);
                    from.push(src);
                    break;
                }
            }
        }
        stats.phases.flush_ns += elapsed_ns(t);
        // The pipelined path copies inside the move loop, sub-batch by sub-batch (never
        // with the negative control, which must copy the whole batch before the flush).
        let pipelined = ctx.pipe.is_some() && !copy_early && unmap_batch.len() > 1;
        if !copy_early && !pipelined {
            batch_copy(stats, &dst_batch, &unmap_batch);
        }
        if !pipelined {
            if let Some(h) = &hooks {
                h.after_batch_copy(mm);
            }
        }

        let t_move = Instant::now();
        // The pipelined path's copying on this thread, taken off the move phase's time.
        let mut mover_copy_total = 0u64;
        c.retry = 1;
        let mut pass = 0;
        while pass < nr_pass && c.retry > 0 {
            c.retry = 0;
            c.thp_retry = 0;
            c.nr_retry_pages = 0;
            // Batch-copied folios first, then the single list, sharing the counters.
            if pipelined && pass == 0 {
                // Beyond the series: each sub-batch's first move attempt as soon as its
                // copy is done (the helper, with overlap, copying the next ones).
                let (copy_ns, mover_copy_ns) = pipelined_first_pass(
                    ctx,
                    &mut unmap_batch,
                    &mut dst_batch,
                    mode,
                    ret_folios,
                    stats,
                    &mut c,
                );
                stats.phases.copy_ns += copy_ns;
                mover_copy_total += mover_copy_ns;
            } else {
                migrate_folios_move(
                    ctx,
                    &mut unmap_batch,
                    &mut dst_batch,
                    mode,
                    ret_folios,
                    stats,
                    &mut c,
                    pass,
                );
            }
            migrate_folios_move(
                ctx,
                &mut unmap_single,
                &mut dst_single,
                mode,
                ret_folios,
                stats,
                &mut c,
                pass,
            );
            pass += 1;
        }
        c.nr_failed += c.retry;
        stats.record_failure(Errno::Again, c.retry);
        stats.nr_thp_failed += c.thp_retry;
        stats.nr_failed_pages += c.nr_retry_pages;
        stats.phases.move_ns += elapsed_ns(t_move).saturating_sub(mover_copy_total);
        if let Some(first) = c.first_done {
            let first_ns = first.duration_since(t_unmap).as_nanos() as u64;
            let last_ns = elapsed_ns(t_unmap);
            stats.nr_batches += 1;
            stats.first_usable_ns_sum += first_ns;
            stats.last_usable_ns_sum += last_ns;
            stats.first_usable_ns_max = stats.first_usable_ns_max.max(first_ns);
            stats.last_usable_ns_max = stats.last_usable_ns_max.max(last_ns);
        }
        rc = match rc_saved {
            Some(e) => Err(e),
            None => Ok(c.nr_failed),
        };
    }

    // Cleanup: undo whatever is still unmapped, in both list pairs.
    let t_undo = Instant::now();
    for (srcs, dsts) in [
        (&mut unmap_batch, &mut dst_batch),
        (&mut unmap_single, &mut dst_single),
    ] {
        for (src, dst) in srcs.drain(..).zip(dsts.drain(..)) {
            let (old_states, anon_vma) = super::move_folio::migrate_folio_extract(mm, dst);
            let was_mapped = old_states & crate::mm::migrate_info::WAS_MAPPED != 0;
            migrate_folio_undo_src(mm, src, was_mapped, anon_vma, true, Some(ret_folios));
            migrate_folio_undo_dst(ctx, dst, true);
        }
    }
    // Remaps a backend queued during the move loop and the undo (one kernel call per run
    // of contiguous pages in the live backend).
    mm.flush_backend_remaps();
    stats.phases.move_ns += elapsed_ns(t_undo);
    rc
}

/// The first move pass over the batch-copy list when the pipeline is on: the list is cut
/// into sub-batches ([`Job`]), the helper (with overlap) is handed the job, and each
/// sub-batch is moved (first attempt, pass 0) as soon as its copy is done; the live
/// backend's remaps of a sub-batch are flushed right after it, so its folios are usable
/// before the next one. Folios that want a retry stay on the lists, in order, for the
/// later passes. Returns the time spent copying, both threads together, and the part of
/// it spent on this thread (which the caller takes off the move phase). With overlap the
/// helper's copying runs during the move phase, so the phases then add up to more than
/// the batch took.
fn pipelined_first_pass(
    ctx: &mut Ctx<'_, '_, '_>,
    unmap_batch: &mut Vec<Folio>,
    dst_batch: &mut Vec<Folio>,
    mode: Mode,
    ret_folios: &mut Vec<Folio>,
    stats: &mut MigratePagesStats,
    c: &mut PassCounters,
) -> (u64, u64) {
    let mm = ctx.mm;
    let pipe = ctx.pipe.expect("pipelined_first_pass without a pipeline");
    let job = std::sync::Arc::new(Job::new(mm, dst_batch, unmap_batch, pipe.first_bytes));
    let hooks = mm.hooks.clone();
    if let Some(h) = &hooks {
        h.before_batch_copy(mm);
    }
    if let Some(helper) = pipe.helper.filter(|_| job.len() > 1) {
        helper.submit(&job);
    }
    let mut keep_src = Vec::new();
    let mut keep_dst = Vec::new();
    for k in 0..job.len() {
        job.wait_copied(mm, k);
        if k == 0 {
            // The hook's point in this path: a copy is done, no folio is moved yet.
            if let Some(h) = &hooks {
                h.after_batch_copy(mm);
            }
        }
        let (src, dst) = job.pairs(k);
        let mut src = src.to_vec();
        let mut dst = dst.to_vec();
        migrate_folios_move(ctx, &mut src, &mut dst, mode, ret_folios, stats, c, 0);
        mm.flush_backend_remaps();
        keep_src.append(&mut src);
        keep_dst.append(&mut dst);
    }
    *unmap_batch = keep_src;
    *dst_batch = keep_dst;
    // Every sub-batch is done (the loop waited for each): the helper holds no claim.
    job.copy_ns()
}
