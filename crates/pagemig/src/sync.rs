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
    atomic::{
        fence, AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
        Ordering,
    },
    Arc, Condvar, Mutex, MutexGuard, RwLock, Weak,
};

/// The project's one way of treating lock poisoning: ignore it. A panic on another thread
/// must not take the memory model, a driver or a harness down with it (the data under our
/// locks stays consistent at every unlock point). For any `LockResult`: `lock()`, `read()`,
/// `write()`, a condition variable's `wait()`, std's or loom's.
pub trait IgnorePoison<G> {
    /// The guard, poisoned or not.
    fn ignore_poison(self) -> G;
}

impl<G> IgnorePoison<G> for std::sync::LockResult<G> {
    fn ignore_poison(self) -> G {
        self.unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Locks a mutex, ignoring poisoning ([`IgnorePoison`]).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().ignore_poison()
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

    use super::IgnorePoison as _;

    /// Locks, ignoring poisoning.
    pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().ignore_poison()
    }

    /// Waits on a condition variable, ignoring poisoning.
    pub fn wait<'a, T>(c: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        c.wait(g).ignore_poison()
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
