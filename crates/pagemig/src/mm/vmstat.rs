//! The vm event counters the migration code updates (`/proc/vmstat`: `pgmigrate_*`,
//! `thp_migration_*`).

#![forbid(unsafe_code)]

use super::Memory;
use crate::sync::{AtomicU64, Ordering};

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
