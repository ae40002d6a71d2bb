//! Sleeping on a page flag — the analogue of `folio_wait_bit()` / `folio_wake_bit()` with
//! `PG_waiters` and the hashed `folio_wait_table`. The folio lock, writeback waits and
//! `migration_entry_wait()` all sleep here. Model-checked with loom (`tests/loom.rs`).
//!
//! A waiter publishes `PG_waiters` and re-checks the bit under the queue lock; an unlocker
//! clears the bit first and wakes only if `PG_waiters` was set, taking the queue lock to
//! do it — so the common unlock costs no futex call and no wake-up is lost.

#![forbid(unsafe_code)]

use crate::sync::model::{self, AtomicU32, Condvar, Mutex, Ordering};

/// `PG_waiters`: someone sleeps on this page's wait queue.
pub const WAITERS: u32 = 1 << 13;

/// One hashed wait queue.
#[derive(Debug)]
pub struct WaitQueue {
    lock: Mutex<()>,
    cond: Condvar,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitQueue {
    /// An empty queue.
    pub fn new() -> WaitQueue {
        WaitQueue {
            lock: Mutex::new(()),
            cond: Condvar::new(),
        }
    }
}

/// Sleeps until `bit` is clear in `flags`.
pub fn wait_on_bit(flags: &AtomicU32, bit: u32, q: &WaitQueue) {
    let mut g = model::lock(&q.lock);
    // Publish PG_waiters before re-checking, under the queue lock: a clear of `bit` after
    // this sees the waiter bit and wakes us (it takes the queue lock to do so).
    while flags.fetch_or(WAITERS, Ordering::AcqRel) & bit != 0 {
        g = model::wait(&q.cond, g);
    }
}

/// Wakes every sleeper of the queue (`folio_wake_bit`). Sleepers whose bit is still set
/// re-arm `PG_waiters` and sleep again.
pub fn wake_bit(flags: &AtomicU32, q: &WaitQueue) {
    let g = model::lock(&q.lock);
    flags.fetch_and(!WAITERS, Ordering::AcqRel);
    q.cond.notify_all();
    drop(g);
}

/// Clears `bit` and wakes sleepers if there are any (`folio_unlock`,
/// `folio_end_writeback`). Returns the old flags.
pub fn clear_bit_unlock(flags: &AtomicU32, bit: u32, q: &WaitQueue) -> u32 {
    let old = flags.fetch_and(!bit, Ordering::AcqRel);
    if old & WAITERS != 0 {
        wake_bit(flags, q);
    }
    old
}
