//! The live backend's counters: kernel calls, pages moved, faults and their kinds.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a [`Live`](crate::Live) backend (all regions).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) faults: AtomicU64,
    pub(crate) faults_populated: AtomicU64,
    pub(crate) faults_on_migration: AtomicU64,
    pub(crate) faults_woken: AtomicU64,
    pub(crate) stray_faults: AtomicU64,
    pub(crate) unmap_ioctls: AtomicU64,
    pub(crate) pages_unmapped: AtomicU64,
    pub(crate) unmap_failures: AtomicU64,
    pub(crate) remap_ioctls: AtomicU64,
    pub(crate) pages_remapped: AtomicU64,
    pub(crate) remap_errors: AtomicU64,
    pub(crate) no_memory: AtomicU64,
    pub(crate) handler_errors: AtomicU64,
    pub(crate) remap_retries: AtomicU64,
    pub(crate) zero_page_fixups: AtomicU64,
    pub(crate) huge_slot_collapses_failed: AtomicU64,
    pub(crate) pool_growths: AtomicU64,
    pub(crate) pool_growth_errors: AtomicU64,
    pub(crate) detached_pages: AtomicU64,
    pub(crate) faulted_around: AtomicU64,
    pub(crate) slots_refilled: AtomicU64,
    pub(crate) wrong_node_fixups: AtomicU64,
    pub(crate) fixup_failures: AtomicU64,
    pub(crate) moves_misreported: AtomicU64,
}

/// A snapshot of the live backend's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveCounts {
    /// Page-fault messages read by the handler.
    pub faults: u64,
    /// Faults on never-touched pages, populated from a node's pool.
    pub faults_populated: u64,
    /// Faults on pages under migration (the thread waits for the migration's move-in).
    pub faults_on_migration: u64,
    /// Faults on pages already mapped again (the thread was woken).
    pub faults_woken: u64,
    /// Faults on frames' arena slots: a bug in the backend; always 0.
    pub stray_faults: u64,
    /// `UFFDIO_MOVE` calls taking pages out of the program (each is one kernel TLB flush).
    pub unmap_ioctls: u64,
    /// Base pages taken out.
    pub pages_unmapped: u64,
    /// Folios whose move out failed (left mapped, migration retried or failed).
    pub unmap_failures: u64,
    /// `UFFDIO_MOVE` calls putting pages into the program.
    pub remap_ioctls: u64,
    /// Base pages put in.
    pub pages_remapped: u64,
    /// Moves into the program that still failed after many attempts (the page stays
    /// queued, its threads wait): a bug; always 0.
    pub remap_errors: u64,
    /// First touches that found no free frame on any node.
    pub no_memory: u64,
    /// Errors reading the userfaultfd.
    pub handler_errors: u64,
    /// Moves into the program that failed once and were queued again (they succeeded
    /// later unless `remap_errors` says otherwise).
    pub remap_retries: u64,
    /// Pages that arrived in the program as the kernel's shared zero page (the kernel maps
    /// zero-filled pages of a THP it splits to it) and were made real pages on their node
    /// again.
    pub zero_page_fixups: u64,
    /// Moves of a 2 MiB folio into the program whose frame's arena range could not be made
    /// PMD-mapped first (`MADV_COLLAPSE` failed): the kernel then moves it page by page,
    /// and the program's huge page is split.
    pub huge_slot_collapses_failed: u64,
    /// Times a node's pool grew (its arena committed and registered more of its reserve).
    pub pool_growths: u64,
    /// Growths refused because the new part could not be registered with the userfaultfd.
    pub pool_growth_errors: u64,
    /// Base pages of regions given to the program for good
    /// ([`LiveRegion::detach`](crate::LiveRegion::detach)): their frames stay allocated.
    pub detached_pages: u64,
    /// Folios populated by fault-around (`RegionConfig::fault_around`), beyond the
    /// faulting ones.
    pub faulted_around: u64,
    /// Base pages of dropped regions that could not go back to their slots (shared with
    /// a forked child) and whose slots were backed with the zero page instead, so that
    /// their frames could return to their pools.
    pub slots_refilled: u64,
    /// Pages of a move into the program that a program thread wrote as the zero page
    /// before their fix-up, so that the kernel had put them after the program's policy,
    /// and that were migrated to their frame's host node with `move_pages(2)` (hosts with
    /// several NUMA nodes only).
    #[serde(default)]
    pub wrong_node_fixups: u64,
    /// Pages that a zero-page or wrong-node fix-up could not fix (the move out of the
    /// zero page, or the kernel's migration to the frame's node, failed each time it was
    /// tried): the page may stay off its frame's node until its next move.
    #[serde(default)]
    pub fixup_failures: u64,
    /// Pages that a `UFFDIO_MOVE` reported as not moved (an error, `EEXIST` where it was
    /// seen) but that the pagemap showed moved: the page left its source and its
    /// destination is mapped. Counted as moved; the move goes on after them.
    #[serde(default)]
    pub moves_misreported: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> LiveCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LiveCounts {
            faults: g(&self.faults),
            faults_populated: g(&self.faults_populated),
            faults_on_migration: g(&self.faults_on_migration),
            faults_woken: g(&self.faults_woken),
            stray_faults: g(&self.stray_faults),
            unmap_ioctls: g(&self.unmap_ioctls),
            pages_unmapped: g(&self.pages_unmapped),
            unmap_failures: g(&self.unmap_failures),
            remap_ioctls: g(&self.remap_ioctls),
            pages_remapped: g(&self.pages_remapped),
            remap_errors: g(&self.remap_errors),
            no_memory: g(&self.no_memory),
            handler_errors: g(&self.handler_errors),
            remap_retries: g(&self.remap_retries),
            zero_page_fixups: g(&self.zero_page_fixups),
            huge_slot_collapses_failed: g(&self.huge_slot_collapses_failed),
            pool_growths: g(&self.pool_growths),
            pool_growth_errors: g(&self.pool_growth_errors),
            detached_pages: g(&self.detached_pages),
            faulted_around: g(&self.faulted_around),
            slots_refilled: g(&self.slots_refilled),
            wrong_node_fixups: g(&self.wrong_node_fixups),
            fixup_failures: g(&self.fixup_failures),
            moves_misreported: g(&self.moves_misreported),
        }
    }
}

pub(crate) fn inc(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}
