//! A sleepable RCU for the registry's dispatch (`DEFINE_SRCU(migrate_offload_srcu)`):
//! readers never wait for a writer and their sections nest; `synchronize` waits for every
//! section that began before it.
//!
//! Two reader counters and an index: a reader increments the counter the index names and
//! later decrements that same one. `synchronize` (serialized by its own mutex, as
//! `srcu_gp_mutex` serializes grace periods) flips the index and waits for the old counter
//! to drain, twice, so that a reader that read the index just before a flip and counted
//! itself just after it is waited for too. Everything is `SeqCst`: a writer updates the
//! protected pointer before `synchronize`, a reader loads it after counting itself, so a
//! reader the wait misses is one that sees the new pointer.
//!
//! std has no SRCU and the crates that offer epoch reclamation (crossbeam-epoch) do not
//! let a writer wait for readers, which is what unregister needs; so it is written here,
//! and model-checked (`tests/loom.rs`).

#![forbid(unsafe_code)]

use crate::sync::model::{self, AtomicU32, Mutex, Ordering::SeqCst};

/// An SRCU domain.
#[derive(Debug)]
pub(crate) struct Srcu {
    idx: AtomicU32,
    ctr: [AtomicU32; 2],
    gp_lock: Mutex<()>,
}

/// An open read section (`srcu_read_lock`'s index); closing it is `srcu_read_unlock`.
pub(crate) struct SrcuReadGuard<'a> {
    srcu: &'a Srcu,
    idx: usize,
}

impl Drop for SrcuReadGuard<'_> {
    fn drop(&mut self) {
        self.srcu.ctr[self.idx].fetch_sub(1, SeqCst);
    }
}

impl Srcu {
    pub(crate) fn new() -> Srcu {
        Srcu {
            idx: AtomicU32::new(0),
            ctr: [AtomicU32::new(0), AtomicU32::new(0)],
            gp_lock: Mutex::new(()),
        }
    }

    /// `srcu_read_lock()`: never blocks.
    pub(crate) fn read_lock(&self) -> SrcuReadGuard<'_> {
        let idx = (self.idx.load(SeqCst) & 1) as usize;
        self.ctr[idx].fetch_add(1, SeqCst);
        SrcuReadGuard { srcu: self, idx }
    }

    /// `synchronize_srcu()`: returns once every read section open when it was called has
    /// closed. Must not be called inside a read section of the same domain.
    pub(crate) fn synchronize(&self) {
        let _gp = model::lock(&self.gp_lock);
        for _ in 0..2 {
            let old = (self.idx.fetch_xor(1, SeqCst) & 1) as usize;
            let mut spins = 0;
            while self.ctr[old].load(SeqCst) != 0 {
                model::spin_step(spins);
                spins = spins.saturating_add(1);
                #[cfg(not(loom))]
                if spins > 1024 {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
        }
    }
}
