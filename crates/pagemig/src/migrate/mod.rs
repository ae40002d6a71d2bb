//! `migrate_pages()` — the analogue of `mm/migrate.c` with the series' batch-copy path (v6).
//!
//! Files follow Linux order: [`migrate_pages`] and `migrate_pages_sync` /
//! `migrate_hugetlbs` here, `migrate_pages_batch` in `batch.rs`, `migrate_folio_unmap` and
//! the split in `unmap.rs`, `migrate_folio_move` / `move_to_new_folio` /
//! `__migrate_folio` in `move_folio.rs`, and the undo helpers in `undo.rs`.

#![forbid(unsafe_code)]

mod batch;
mod hugetlb;
mod isolate;
mod move_folio;
mod pipeline;
mod undo;
mod unmap;

use std::time::Instant;

pub use crate::migrate_mode::{Mode, Reason};
use crate::mm::{pg, Folio, Memory, NodeId};
use crate::Errno;

/// `NR_MAX_MIGRATE_PAGES_RETRY`: passes of an async batch.
pub const NR_MAX_MIGRATE_PAGES_RETRY: usize = 10;
/// `NR_MAX_MIGRATE_ASYNC_RETRY`: passes of the async attempt of a sync migration.
pub const NR_MAX_MIGRATE_ASYNC_RETRY: usize = 3;
/// `NR_MAX_MIGRATE_SYNC_RETRY`: passes of each one-folio sync attempt.
pub const NR_MAX_MIGRATE_SYNC_RETRY: usize =
    NR_MAX_MIGRATE_PAGES_RETRY - NR_MAX_MIGRATE_ASYNC_RETRY;

/// Per-phase wall time of `migrate_pages_batch`, summed over batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// The unmap loop (allocation, locking, migration entries).
    pub unmap_ns: u64,
    /// The single TLB flush.
    pub flush_ns: u64,
    /// The batch copy (the migrator call). Per-folio CPU copies happen inside `move`.
    pub copy_ns: u64,
    /// The move loop (including per-folio CPU copies of unmarked folios) and the undo.
    pub move_ns: u64,
}

impl MigratePagesStats {
    pub(crate) fn record_failure(&mut self, e: Errno, n: usize) {
        self.nr_failed_by_errno[e.index()] += n;
    }

    /// The failures by errno, as (errno, count) for the non-zero ones.
    pub fn failures_by_errno(&self) -> Vec<(Errno, usize)> {
        Errno::ALL
            .iter()
            .zip(self.nr_failed_by_errno)
            .filter(|(_, n)| *n > 0)
            .map(|(e, n)| (*e, n))
            .collect()
    }
}

impl PhaseTimes {
    pub(crate) fn add(&mut self, o: &PhaseTimes) {
        self.unmap_ns += o.unmap_ns;
        self.flush_ns += o.flush_ns;
        self.copy_ns += o.copy_ns;
        self.move_ns += o.move_ns;
    }
}

/// `struct migrate_pages_stats`, plus what the benchmark needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigratePagesStats {
    /// Base pages migrated.
    pub nr_succeeded: usize,
    /// Base pages that failed (untried folios are not counted).
    pub nr_failed_pages: usize,
    /// THPs migrated.
    pub nr_thp_succeeded: usize,
    /// THPs that failed.
    pub nr_thp_failed: usize,
    /// THPs split.
    pub nr_thp_split: usize,
    /// Large folios split (any order).
    pub nr_split: usize,
    /// Folios whose content the move phase took from the batch copy (marker consumed).
    pub nr_copied_by_batch: usize,
    /// Folios copied on the CPU inside their own move step.
    pub nr_copied_on_cpu: usize,
    /// TLB flushes issued by the batch path (`try_to_unmap_flush`) and inline flushes.
    pub nr_tlb_flushes: usize,
    /// Batches (`migrate_pages_batch` calls) in which at least one folio moved.
    pub nr_batches: usize,
    /// Sum over those batches of the time from the batch's start (its first unmap) until
    /// the first folio was usable again (its PTEs restored).
    pub first_usable_ns_sum: u64,
    /// Sum over those batches of the time from the batch's start until the move loop
    /// finished (the last folio usable again).
    pub last_usable_ns_sum: u64,
    /// Worst first-folio time of any batch.
    pub first_usable_ns_max: u64,
    /// Worst last-folio time of any batch.
    pub last_usable_ns_max: u64,
    /// Folios that failed for good, by the error they failed with (indexed like
    /// [`Errno::ALL`]; retries that ran out count as `EAGAIN`). The async attempt of a
    /// sync migration is retried, so its failures are not counted here.
    pub nr_failed_by_errno: [usize; Errno::ALL.len()],
    /// Phase times.
    pub phases: PhaseTimes,
}

/// Whole-call input errors: nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// A folio on the list is not isolated (`folio_isolate_lru` was not called).
    #[error("folio at pfn {0:#x} is not isolated")]
    NotIsolated(u64),
    /// The list holds the same folio twice.
    #[error("folio at pfn {0:#x} is on the list twice")]
    Duplicate(u64),
    /// A list entry is not an allocated folio head.
    #[error("pfn {0:#x} is not an allocated folio")]
    NotAFolio(u64),
    /// The target node does not exist.
    #[error("no such node {0:?}")]
    NoSuchNode(NodeId),
    /// A folio is already on the target node.
    #[error("folio at pfn {pfn:#x} is already on node {node:?}")]
    SameNode {
        /// the folio
        pfn: u64,
        /// the target
        node: NodeId,
    },
}

impl MigrateError {
    /// The errno.
    pub fn errno(&self) -> Errno {
        Errno::Inval
    }
}

/// What `migrate_pages()` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigratePagesResult {
    /// The kernel's return value: the number of folios (normal, large, hugetlb) not
    /// migrated — a split large folio counts once — or an error (`ENOMEM`).
    pub rc: Result<usize, Errno>,
    /// `*ret_succeeded`: base pages migrated.
    pub nr_succeeded: usize,
    /// Detailed statistics.
    pub stats: MigratePagesStats,
}

/// The `get_new_folio` callback.
pub type NewFolioFn<'a> = dyn FnMut(&Memory, Folio) -> Option<Folio> + 'a;
/// The `put_new_folio` callback.
pub type PutNewFolioFn<'a> = dyn FnMut(&Memory, Folio) + 'a;

/// `alloc_migration_target()` for one node: a folio of the source's order (hugetlb stays
/// hugetlb), or `None` (`ENOMEM`).
pub fn alloc_on_node(node: NodeId) -> impl FnMut(&Memory, Folio) -> Option<Folio> {
    move |mm: &Memory, src: Folio| {
        let f = mm.folio(src);
        let flags = if f.test(pg::HUGETLB) { pg::HUGETLB } else { 0 };
        mm.alloc_folio(node, f.order(), flags).ok()
    }
}

pub(crate) struct Ctx<'a, 'b, 'c> {
    pub(crate) mm: &'a Memory,
    pub(crate) get_new_folio: &'b mut NewFolioFn<'b>,
    pub(crate) put_new_folio: Option<&'b mut PutNewFolioFn<'b>>,
    pub(crate) reason: Reason,
    /// The pipelined batch copy of this call, when it is on (beyond the series).
    pub(crate) pipe: Option<Pipe<'c>>,
}

/// The pipeline of one `migrate_pages()` call: its helper (with overlap) and the first
/// sub-batch size.
#[derive(Clone, Copy)]
pub(crate) struct Pipe<'c> {
    pub(crate) helper: Option<&'c pipeline::Helper>,
    pub(crate) first_bytes: usize,
}

impl Ctx<'_, '_, '_> {
    pub(crate) fn put_new(&mut self, dst: Folio) {
        match self.put_new_folio.as_mut() {
            Some(f) => f(self.mm, dst),
            None => self.mm.folio_put(dst),
        }
    }
}

/// `migrate_pages(from, get_new_folio, put_new_folio, private, mode, reason, &nr_succeeded)`.
///
/// Every folio on `from` must be isolated ([`Memory::isolate_folio`]) and appear once;
/// otherwise [`MigrateError`] is returned and nothing changes. Migrated folios leave the
/// list (their isolation reference is dropped and the old frames are freed); folios that
/// could not be migrated are left on `from` for the caller's
/// [`Memory::putback_movable_pages`], which is needed only when the result is non-zero.
pub fn migrate_pages<'b>(
    mm: &Memory,
    from: &mut Vec<Folio>,
    get_new_folio: &'b mut NewFolioFn<'b>,
    put_new_folio: Option<&'b mut PutNewFolioFn<'b>>,
    mode: Mode,
    reason: Reason,
) -> Result<MigratePagesResult, MigrateError> {
    let mut pfns: Vec<u64> = Vec::with_capacity(from.len());
    for &f in from.iter() {
        let fr = mm
            .folio_checked(f)
            .map_err(|_| MigrateError::NotAFolio(f.0 .0))?;
        if !fr.test(pg::ISOLATED) {
            return Err(MigrateError::NotIsolated(f.0 .0));
        }
        pfns.push(f.0 .0);
    }
    // Each folio once: sorted, a duplicate sits next to its twin. Lists in pfn order, or
    // in reverse (a run the buddy allocator handed out), sort in one linear pass.
    if !pfns.windows(2).all(|w| w[0] < w[1]) {
        pfns.sort_unstable();
        if let Some(w) = pfns.windows(2).find(|w| w[0] == w[1]) {
            return Err(MigrateError::Duplicate(w[0]));
        }
    }
    drop(pfns);
    let flushes_before = mm.vm_events().nr_tlb_flushes;
    let pipeline = mm
        .offload()
        .pipeline()
        .filter(|_| from.len() > 1 && mm.offload().should_offload(reason));
    let lists = |pipe: Option<Pipe<'_>>| {
        migrate_pages_lists(
            &mut Ctx {
                mm,
                get_new_folio,
                put_new_folio,
                reason,
                pipe,
            },
            from,
            mode,
        )
    };
    let (rc_gather, mut stats) = match pipeline {
        None => lists(None),
        // Beyond the series: sub-batches in turn, on this thread.
        Some(p) if !p.overlap => lists(Some(Pipe {
            helper: None,
            first_bytes: p.first_sub_batch_bytes,
        })),
        // Overlapped: the helper thread lives for this call only (it ends when the scope
        // does).
        Some(p) => std::thread::scope(|s| {
            let helper = pipeline::Helper::spawn(s, mm);
            lists(Some(Pipe {
                helper: Some(&helper),
                first_bytes: p.first_sub_batch_bytes,
            }))
        }),
    };
    let e = &mm.events;
    use std::sync::atomic::Ordering::Relaxed;
    e.pgmigrate_success
        .fetch_add(stats.nr_succeeded as u64, Relaxed);
    e.pgmigrate_fail
        .fetch_add(stats.nr_failed_pages as u64, Relaxed);
    e.thp_migration_success
        .fetch_add(stats.nr_thp_succeeded as u64, Relaxed);
    e.thp_migration_fail
        .fetch_add(stats.nr_thp_failed as u64, Relaxed);
    e.thp_migration_split
        .fetch_add(stats.nr_thp_split as u64, Relaxed);
    mm.trace.mm_migrate_pages(crate::trace::MmMigratePages {
        succeeded: stats.nr_succeeded,
        failed: stats.nr_failed_pages,
        thp_succeeded: stats.nr_thp_succeeded,
        thp_failed: stats.nr_thp_failed,
        thp_split: stats.nr_thp_split,
        large_folio_split: stats.nr_split,
        mode,
        reason,
    });
    stats.nr_tlb_flushes = (mm.vm_events().nr_tlb_flushes - flushes_before) as usize;
    Ok(MigratePagesResult {
        rc: rc_gather,
        nr_succeeded: stats.nr_succeeded,
        stats,
    })
}

/// The body of [`migrate_pages`] after the list is checked: hugetlb folios first, then
/// batches of at most `NR_MAX_BATCHED_MIGRATION` base pages. Returns the result and the
/// statistics; `from` is left holding the folios that were not migrated.
fn migrate_pages_lists(
    ctx: &mut Ctx<'_, '_, '_>,
    from: &mut Vec<Folio>,
    mode: Mode,
) -> (Result<usize, Errno>, MigratePagesStats) {
    let mm = ctx.mm;
    let mut stats = MigratePagesStats::default();
    let mut ret_folios: Vec<Folio> = Vec::new();
    let mut split_folios: Vec<Folio> = Vec::new();
    let batch_pages = mm.batch_pages();

    let mut rc_gather = hugetlb::migrate_hugetlbs(ctx, from, mode, &mut stats, &mut ret_folios);
    if rc_gather.is_ok() {
        let mut queue: std::collections::VecDeque<Folio> = std::mem::take(from).into();
        while !queue.is_empty() {
            // Cut a chunk of at most NR_MAX_BATCHED_MIGRATION base pages; the folio that
            // crosses the limit stays in the chunk. Retried hugetlb folios go back.
            let mut folios = Vec::new();
            let mut nr_pages = 0;
            while let Some(f) = queue.pop_front() {
                if mm.folio(f).test(pg::HUGETLB) {
                    ret_folios.push(f);
                    continue;
                }
                nr_pages += mm.folio(f).nr_pages();
                folios.push(f);
                if nr_pages >= batch_pages {
                    break;
                }
            }
            let rc = if mode == Mode::Async {
                batch::migrate_pages_batch(
                    ctx,
                    &mut folios,
                    mode,
                    &mut ret_folios,
                    Some(&mut split_folios),
                    &mut stats,
                    NR_MAX_MIGRATE_PAGES_RETRY,
                )
            } else {
                migrate_pages_sync(
                    ctx,
                    &mut folios,
                    mode,
                    &mut ret_folios,
                    &mut split_folios,
                    &mut stats,
                )
            };
            ret_folios.append(&mut folios);
            match rc {
                Err(e) => {
                    rc_gather = Err(e);
                    ret_folios.append(&mut split_folios);
                    break;
                }
                Ok(n) => {
                    if !split_folios.is_empty() {
                        // Failures are not counted again: the split folio already counted
                        // once. Minimal effort: ASYNC, one pass.
                        let _ = batch::migrate_pages_batch(
                            ctx,
                            &mut split_folios,
                            Mode::Async,
                            &mut ret_folios,
                            None,
                            &mut stats,
                            1,
                        );
                        ret_folios.append(&mut split_folios);
                    }
                    rc_gather = rc_gather.map(|g| g + n);
                }
            }
        }
        from.extend(queue);
    }
    // Put the permanent failures back at the head of the caller's list.
    ret_folios.append(from);
    *from = ret_folios;
    if from.is_empty() {
        rc_gather = Ok(0);
    }
    (rc_gather, stats)
}

/// Migrates every folio of `from` to `node` (the core of `move_pages(2)` and of
/// demotion): `migrate_pages()` with `alloc_migration_target` for `node`. Rejects an unknown
/// node and a folio already on `node`, changing nothing.
pub fn migrate_folios_to_node(
    mm: &Memory,
    from: &mut Vec<Folio>,
    node: NodeId,
    mode: Mode,
    reason: Reason,
) -> Result<MigratePagesResult, MigrateError> {
    mm.node(node).map_err(|_| MigrateError::NoSuchNode(node))?;
    for &f in from.iter() {
        let fr = mm
            .folio_checked(f)
            .map_err(|_| MigrateError::NotAFolio(f.0 .0))?;
        if fr.node() == node {
            return Err(MigrateError::SameNode { pfn: f.0 .0, node });
        }
    }
    let mut alloc = alloc_on_node(node);
    migrate_pages(mm, from, &mut alloc, None, mode, reason)
}

/// `soft_offline_page(pfn)` (`mm/memory-failure.c`, `soft_offline_in_use_page`): moves
/// the contents of the page at `pfn` to another frame of the same node with
/// `MR_MEMORY_FAILURE`, then takes the old page out of use for good
/// (`page_handle_poison`). A large folio is split first and only that page migrates. The
/// page must be in use and on the LRU: `EBUSY` otherwise (`EINVAL` for a pfn of no node,
/// `EOPNOTSUPP` for hugetlb), or when the migration fails
/// (the page is put back, still in use).
pub fn soft_offline_page(mm: &Memory, pfn: crate::mm::Pfn) -> Result<(), Errno> {
    if !mm.pfn_valid(pfn) {
        return Err(Errno::Inval);
    }
    let head = Folio(mm.compound_head(pfn));
    if mm.folio(head).test(pg::HUGETLB) {
        // The hugetlb path (dissolving the free huge page) is not modelled.
        return Err(Errno::NotSupported);
    }
    mm.isolate_folio(head).map_err(|_| Errno::Busy)?;
    let mut folio = head;
    let f = mm.folio(head);
    if f.is_large() {
        // try_to_split_thp_page(): only the page that failed goes.
        f.lock();
        let mut pieces = Vec::new();
        let rc = unmap::split_folio_to_list(mm, head, &mut pieces);
        f.unlock();
        if rc.is_err() {
            let _ = mm.putback_folio(head);
            return Err(Errno::Busy);
        }
        for p in pieces {
            if p.0 == pfn {
                folio = p;
            } else {
                let _ = mm.putback_folio(p);
            }
        }
    }
    let node = mm.folio(folio).node();
    let mut list = vec![folio];
    let mut alloc = alloc_on_node(node);
    let res = migrate_pages(
        mm,
        &mut list,
        &mut alloc,
        None,
        Mode::Sync,
        Reason::MemoryFailure,
    )
    .map_err(|e| e.errno())?;
    if res.rc != Ok(0) || !list.is_empty() {
        mm.putback_movable_pages(&mut list);
        return Err(Errno::Busy);
    }
    mm.page_handle_poison(pfn);
    Ok(())
}

/// `migrate_pages_sync()`: first the whole chunk as one ASYNC batch with 3 passes, then
/// every failure one folio at a time in the caller's mode with 7 passes.
fn migrate_pages_sync(
    ctx: &mut Ctx<'_, '_, '_>,
    from: &mut Vec<Folio>,
    mode: Mode,
    ret_folios: &mut Vec<Folio>,
    split_folios: &mut Vec<Folio>,
    stats: &mut MigratePagesStats,
) -> Result<usize, Errno> {
    let mut nr_failed = 0;
    let mut folios = Vec::new();
    let mut astats = MigratePagesStats::default();
    let rc = batch::migrate_pages_batch(
        ctx,
        from,
        Mode::Async,
        &mut folios,
        Some(split_folios),
        &mut astats,
        NR_MAX_MIGRATE_ASYNC_RETRY,
    );
    stats.nr_succeeded += astats.nr_succeeded;
    stats.nr_thp_succeeded += astats.nr_thp_succeeded;
    stats.nr_thp_split += astats.nr_thp_split;
    stats.nr_split += astats.nr_split;
    stats.nr_copied_by_batch += astats.nr_copied_by_batch;
    stats.nr_copied_on_cpu += astats.nr_copied_on_cpu;
    stats.phases.add(&astats.phases);
    stats.nr_batches += astats.nr_batches;
    stats.first_usable_ns_sum += astats.first_usable_ns_sum;
    stats.last_usable_ns_sum += astats.last_usable_ns_sum;
    stats.first_usable_ns_max = stats.first_usable_ns_max.max(astats.first_usable_ns_max);
    stats.last_usable_ns_max = stats.last_usable_ns_max.max(astats.last_usable_ns_max);
    if let Err(e) = rc {
        stats.nr_failed_pages += astats.nr_failed_pages;
        stats.nr_thp_failed += astats.nr_thp_failed;
        ret_folios.append(&mut folios);
        return Err(e);
    }
    stats.nr_thp_failed += astats.nr_thp_split;
    // Failures are retried below, so only splits count here (nr_split includes THPs).
    nr_failed += astats.nr_split;
    from.append(&mut folios);
    let mut queue: std::collections::VecDeque<Folio> = std::mem::take(from).into();
    while let Some(f) = queue.pop_front() {
        let mut one = vec![f];
        let rc = batch::migrate_pages_batch(
            ctx,
            &mut one,
            mode,
            ret_folios,
            Some(split_folios),
            stats,
            NR_MAX_MIGRATE_SYNC_RETRY,
        );
        ret_folios.append(&mut one);
        match rc {
            Err(e) => {
                from.extend(queue);
                return Err(e);
            }
            Ok(n) => nr_failed += n,
        }
    }
    Ok(nr_failed)
}

pub(crate) fn elapsed_ns(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}
