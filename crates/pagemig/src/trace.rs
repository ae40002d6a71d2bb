//! Tracepoints (`include/trace/events/migrate.h`): `migrate:mm_migrate_pages`, which
//! `migrate_pages()` emits once per call with its totals, recorded in a bounded buffer that
//! tests and the benchmark read the way `trace_pipe` is read — each event once. Off by
//! default; while off, emitting costs one relaxed load.

#![forbid(unsafe_code)]

use std::collections::VecDeque;

use crate::migrate_mode::{Mode, Reason};
use crate::sync::{lock, AtomicBool, AtomicU64, Mutex, Ordering};

/// The `mm_migrate_pages` event's fields (`TP_STRUCT__entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmMigratePages {
    /// `succeeded`: base pages migrated.
    pub succeeded: usize,
    /// `failed`: base pages that failed.
    pub failed: usize,
    /// `thp_succeeded`.
    pub thp_succeeded: usize,
    /// `thp_failed`.
    pub thp_failed: usize,
    /// `thp_split`.
    pub thp_split: usize,
    /// `large_folio_split`.
    pub large_folio_split: usize,
    /// `mode`.
    pub mode: Mode,
    /// `reason`.
    pub reason: Reason,
}

/// Events kept when nobody reads (the ring buffer's size).
pub const TRACE_BUFFER_EVENTS: usize = 4096;

/// The trace buffer of one memory.
#[derive(Debug, Default)]
pub struct TraceBuffer {
    enabled: AtomicBool,
    events: Mutex<VecDeque<MmMigratePages>>,
    lost: AtomicU64,
}

impl TraceBuffer {
    /// Starts recording (`echo 1 > events/migrate/mm_migrate_pages/enable`).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// Stops recording; what was recorded stays until taken.
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
    }

    /// Whether the event is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Takes every recorded event, oldest first.
    pub fn take(&self) -> Vec<MmMigratePages> {
        lock(&self.events).drain(..).collect()
    }

    /// Events dropped because the buffer was full (the oldest go first).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// `trace_mm_migrate_pages(...)`.
    pub(crate) fn mm_migrate_pages(&self, ev: MmMigratePages) {
        if !self.is_enabled() {
            return;
        }
        let mut q = lock(&self.events);
        if q.len() == TRACE_BUFFER_EVENTS {
            q.pop_front();
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(ev);
    }
}
