//! A tiny synchronisation shim (the crossbeam / tokio pattern): the protocols in this crate
//! use these names, so that under `--cfg loom` the same code is model-checked by loom.

#![forbid(unsafe_code)]

#[cfg(not(loom))]
pub use std::sync::{
    atomic::{fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, Weak,
};

#[cfg(loom)]
pub use loom::sync::{
    atomic::{fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard,
};
#[cfg(loom)]
pub use std::sync::Weak;

/// Locks a mutex, ignoring poisoning: a panic on another thread must not take the memory
/// model down with it (the data under our locks stays consistent at every unlock point).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
