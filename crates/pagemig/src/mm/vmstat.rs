//! The vm event counters the migration code updates (`/proc/vmstat`: `pgmigrate_*`,
//! `thp_migration_*`) and the per-node page counters (`node_stat_item`:
//! `NR_FILE_PAGES`, `NR_SHMEM`, `NR_FILE_DIRTY`, `NR_ISOLATED_ANON`, `NR_ISOLATED_FILE`).

#![forbid(unsafe_code)]

use super::Memory;
use super::{FolioRef, NodeId};
use crate::sync::{AtomicI64, AtomicU64, Ordering};

/// Kernel vm event counters the migration code updates (`/proc/vmstat`).
#[derive(Debug, Default)]
pub struct VmEvents {
    pub(crate) pgmigrate_success: AtomicU64,
    pub(crate) pgmigrate_fail: AtomicU64,
    pub(crate) thp_migration_success: AtomicU64,
    pub(crate) thp_migration_fail: AtomicU64,
    pub(crate) thp_migration_split: AtomicU64,
    pub(crate) nr_tlb_flushes: AtomicU64,
}

/// A snapshot of [`VmEvents`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmEventCounts {
    /// `pgmigrate_success` (base pages)
    pub pgmigrate_success: u64,
    /// `pgmigrate_fail` (base pages)
    pub pgmigrate_fail: u64,
    /// `thp_migration_success`
    pub thp_migration_success: u64,
    /// `thp_migration_fail`
    pub thp_migration_fail: u64,
    /// `thp_migration_split`
    pub thp_migration_split: u64,
    /// TLB shootdowns performed (the `tlb:tlb_flush` tracepoint)
    pub nr_tlb_flushes: u64,
}

impl Memory {
    /// A snapshot of the vm event counters.
    pub fn vm_events(&self) -> VmEventCounts {
        let e = &self.events;
        VmEventCounts {
            pgmigrate_success: e.pgmigrate_success.load(Ordering::Relaxed),
            pgmigrate_fail: e.pgmigrate_fail.load(Ordering::Relaxed),
            thp_migration_success: e.thp_migration_success.load(Ordering::Relaxed),
            thp_migration_fail: e.thp_migration_fail.load(Ordering::Relaxed),
            thp_migration_split: e.thp_migration_split.load(Ordering::Relaxed),
            nr_tlb_flushes: e.nr_tlb_flushes.load(Ordering::Relaxed),
        }
    }
}

/// A per-node page counter (`enum node_stat_item`), in base pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStat {
    /// `NR_FILE_PAGES`: page-cache pages (files and shmem).
    FilePages,
    /// `NR_SHMEM`: shmem pages.
    Shmem,
    /// `NR_FILE_DIRTY`: dirty page-cache pages of files that write back.
    FileDirty,
    /// `NR_ISOLATED_ANON`: swap-backed pages isolated for migration.
    IsolatedAnon,
    /// `NR_ISOLATED_FILE`: file pages isolated for migration.
    IsolatedFile,
}

/// Number of [`NodeStat`] items.
pub(crate) const NR_NODE_STATS: usize = 5;

/// The per-node counters.
#[derive(Debug, Default)]
pub(crate) struct NodeStats([AtomicI64; NR_NODE_STATS]);

impl NodeStats {
    fn get(&self, item: NodeStat) -> i64 {
        self.0[item as usize].load(Ordering::Relaxed)
    }
    fn add(&self, item: NodeStat, delta: i64) {
        self.0[item as usize].fetch_add(delta, Ordering::Relaxed);
    }
}

impl Memory {
    /// `node_page_state(node, item)`: a per-node counter (0 for an unknown node).
    pub fn node_stat(&self, node: NodeId, item: NodeStat) -> i64 {
        self.node(node).map(|n| n.stats.get(item)).unwrap_or(0)
    }

    /// `mod_node_page_state(node, item, delta)`. Callers that isolate folios themselves
    /// and account them (reclaim, which demotes) use it to drop their own accounting.
    pub fn mod_node_stat(&self, node: NodeId, item: NodeStat, delta: i64) {
        if let Ok(n) = self.node(node) {
            n.stats.add(item, delta);
        }
    }

    /// `node_stat_mod_folio(folio, NR_ISOLATED_ANON + folio_is_file_lru(folio), ±nr)`.
    pub(crate) fn mod_isolated(&self, f: &FolioRef<'_>, sign: i64) {
        let item = if f.is_file_lru() {
            NodeStat::IsolatedFile
        } else {
            NodeStat::IsolatedAnon
        };
        self.mod_node_stat(f.node(), item, sign * f.nr_pages() as i64);
    }
}
