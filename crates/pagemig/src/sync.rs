//! Synchronisation types (the crossbeam / tokio shim pattern).
//!
//! The crate uses `std` types everywhere except in the concurrency protocols that are its
//! own and are model-checked: those take their types from [`model`], which is loom's under
//! `--cfg loom` (see `tests/loom.rs`). The protocols are the TLB shootdown handshake
//! ([`crate::mm::tlb::TlbDomain`]), the folio lock's wait-and-wake with `PG_waiters`
//! ([`crate::mm::waitbit`]) and the offload registry's gate and dispatch
//! ([`crate::offload::Registry`]).

#![forbid(unsafe_code)]

pub use std::sync::{
    atomic::{fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard, RwLock, Weak,
};

/// Locks a mutex, ignoring poisoning: a panic on another thread must not take the memory
/// model down with it (the data under our locks stays consistent at every unlock point).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The types of the model-checked protocols: `std`'s normally, loom's under `--cfg loom`.
pub mod model {
    #[cfg(not(loom))]
    pub use std::sync::{
        atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering},
        Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard,
    };

    #[cfg(loom)]
    pub use loom::sync::{
        atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering},
        Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard,
    };

    /// Locks, ignoring poisoning.
    pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        match m.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Waits on a condition variable, ignoring poisoning.
    pub fn wait<'a, T>(c: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        match c.wait(g) {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A busy-wait step: a CPU hint normally; a yield to the model checker under loom.
    pub fn spin_step(iteration: u32) {
        #[cfg(loom)]
        {
            let _ = iteration;
            loom::thread::yield_now();
        }
        #[cfg(not(loom))]
        {
            if iteration < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}
