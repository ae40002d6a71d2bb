//! Small synchronisation helpers shared by the drivers.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Locks, ignoring poison (a panicking copy thread must not wedge the driver).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A counter of outstanding work with a waiter: `struct completion` plus a count.
/// `done()` signals only when a waiter asked for the count it has now reached, so the
/// common case (no sleeper) costs no futex call.
#[derive(Default)]
pub(crate) struct Pending {
    state: Mutex<PendingState>,
    cond: Condvar,
}

#[derive(Default)]
struct PendingState {
    left: usize,
    wake_at: Option<usize>,
}

impl Pending {
    pub(crate) fn new(n: usize) -> Pending {
        Pending {
            state: Mutex::new(PendingState {
                left: n,
                wake_at: None,
            }),
            cond: Condvar::new(),
        }
    }
    pub(crate) fn add(&self, n: usize) {
        lock(&self.state).left += n;
    }
    /// One unit done.
    pub(crate) fn done(&self) {
        let mut g = lock(&self.state);
        g.left -= 1;
        if g.wake_at.is_some_and(|t| g.left <= t) {
            g.wake_at = None;
            self.cond.notify_all();
        }
    }
    pub(crate) fn left(&self) -> usize {
        lock(&self.state).left
    }
    /// Waits until the count is at most `target`, or until `deadline`; returns whether it
    /// got there. Spins briefly first: copy batches are short and a sleep/wake costs tens
    /// of microseconds in a VM.
    pub(crate) fn wait_at_most(&self, target: usize, deadline: Option<Instant>) -> bool {
        self.wait_at_most_spin(target, deadline, Duration::from_micros(30))
    }

    /// As [`Pending::wait_at_most`], spinning (and yielding the CPU) up to `spin` first.
    pub(crate) fn wait_at_most_spin(
        &self,
        target: usize,
        deadline: Option<Instant>,
        spin: Duration,
    ) -> bool {
        let spin_until = Instant::now() + spin;
        while Instant::now() < spin_until {
            if lock(&self.state).left <= target {
                return true;
            }
            std::thread::yield_now();
        }
        let mut g = lock(&self.state);
        while g.left > target {
            g.wake_at = Some(target);
            match deadline {
                None => g = self.cond.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        g.wake_at = None;
                        return false;
                    }
                    g = self
                        .cond
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        true
    }
}

/// A parking spot for a worker thread: spin (yielding) for a while, then sleep until
/// kicked. `kick` only makes a futex call when the worker is asleep.
#[derive(Default)]
pub(crate) struct Parker {
    state: Mutex<bool>, // sleeping
    cond: Condvar,
}

impl Parker {
    /// Waits until `ready()` is true, spinning up to `spin` first.
    pub(crate) fn wait_until(&self, spin: Duration, mut ready: impl FnMut() -> bool) {
        let until = Instant::now() + spin;
        loop {
            if ready() {
                return;
            }
            if Instant::now() >= until {
                break;
            }
            std::thread::yield_now();
        }
        let mut sleeping = lock(&self.state);
        loop {
            *sleeping = true;
            if ready() {
                *sleeping = false;
                return;
            }
            sleeping = self.cond.wait(sleeping).unwrap_or_else(|p| p.into_inner());
        }
    }
    /// Wakes the worker if it sleeps. Call after making `ready()` true.
    pub(crate) fn kick(&self) {
        let mut sleeping = lock(&self.state);
        if *sleeping {
            *sleeping = false;
            self.cond.notify_one();
        }
    }
}
