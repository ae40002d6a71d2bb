//! Small synchronisation helpers shared by the drivers. [`Pending`] — the completion the
//! drivers wait on — takes its types from `pagemig::sync::model`, so it is model-checked
//! with loom (`RUSTFLAGS="--cfg loom" cargo test -p pagemig-engines --lib loom`).

use pagemig::sync::IgnorePoison as _;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use pagemig::sync::model;

/// Locks, ignoring poison (a panicking copy thread must not wedge the driver).
pub(crate) use pagemig::sync::lock;

/// A counter of outstanding work with a waiter: `struct completion` plus a count.
/// `done()` signals only when a waiter asked for the count it has now reached, so the
/// common case (no sleeper) costs no futex call.
pub(crate) struct Pending {
    state: model::Mutex<PendingState>,
    cond: model::Condvar,
}

struct PendingState {
    left: usize,
    wake_at: Option<usize>,
}

impl Pending {
    pub(crate) fn new(n: usize) -> Pending {
        Pending {
            state: model::Mutex::new(PendingState {
                left: n,
                wake_at: None,
            }),
            cond: model::Condvar::new(),
        }
    }

    pub(crate) fn add(&self, n: usize) {
        model::lock(&self.state).left += n;
    }

    /// One unit done.
    pub(crate) fn done(&self) {
        let mut g = model::lock(&self.state);
        g.left -= 1;
        if g.wake_at.is_some_and(|t| g.left <= t) {
            g.wake_at = None;
            self.cond.notify_all();
        }
    }

    pub(crate) fn left(&self) -> usize {
        model::lock(&self.state).left
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
        #[cfg(not(loom))]
        {
            let spin_until = Instant::now() + spin;
            while Instant::now() < spin_until {
                if model::lock(&self.state).left <= target {
                    return true;
                }
                std::thread::yield_now();
            }
        }
        #[cfg(loom)]
        let _ = spin;
        let mut g = model::lock(&self.state);
        while g.left > target {
            g.wake_at = Some(target);
            match deadline {
                None => g = model::wait(&self.cond, g),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        g.wake_at = None;
                        return false;
                    }
                    #[cfg(not(loom))]
                    {
                        g = self.cond.wait_timeout(g, d - now).ignore_poison().0;
                    }
                    #[cfg(loom)]
                    {
                        g = model::wait(&self.cond, g);
                    }
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
    /// Set by [`Parker::quiesce`]: skip the spin and sleep now; cleared by `kick`.
    nap: std::sync::atomic::AtomicBool,
}

impl Parker {
    /// Waits until `ready()` is true, spinning up to `spin` first.
    pub(crate) fn wait_until(&self, spin: Duration, mut ready: impl FnMut() -> bool) {
        let until = Instant::now() + spin;
        loop {
            if ready() {
                return;
            }
            if Instant::now() >= until || self.nap.load(std::sync::atomic::Ordering::Acquire) {
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
            sleeping = self.cond.wait(sleeping).ignore_poison();
        }
    }

    /// Wakes the worker if it sleeps. Call after making `ready()` true.
    pub(crate) fn kick(&self) {
        self.nap.store(false, std::sync::atomic::Ordering::Release);
        let mut sleeping = lock(&self.state);
        if *sleeping {
            *sleeping = false;
            self.cond.notify_one();
        }
    }

    /// Makes a spinning worker sleep now instead of at the end of its spin (its CPU is
    /// wanted elsewhere); the next `kick` wakes it as usual.
    pub(crate) fn quiesce(&self) {
        self.nap.store(true, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::Pending;
    use std::sync::Arc;

    /// Engine completion: the submitter waiting for the last of several descriptors
    /// completing on other threads is always woken, whatever the interleaving.
    #[test]
    fn loom_engine_completion_wakes_the_submitter() {
        loom::model(|| {
            let p = Arc::new(Pending::new(2));
            let engines: Vec<_> = (0..2)
                .map(|_| {
                    let p = p.clone();
                    loom::thread::spawn(move || p.done())
                })
                .collect();
            assert!(p.wait_at_most(0, None));
            assert_eq!(p.left(), 0);
            for e in engines {
                e.join().unwrap();
            }
        });
    }

    /// Ring back-pressure: waiting for room (count at most n - 1) returns as soon as one
    /// descriptor completes.
    #[test]
    fn loom_waiting_for_ring_room_wakes_on_one_completion() {
        loom::model(|| {
            let p = Arc::new(Pending::new(2));
            let e = {
                let p = p.clone();
                loom::thread::spawn(move || p.done())
            };
            assert!(p.wait_at_most(1, None));
            e.join().unwrap();
        });
    }
}
