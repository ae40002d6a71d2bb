//! Accessor threads that read (or, on a live region, read and write) the workload while it
//! migrates, and the stall times they see.

#![forbid(unsafe_code)]

use pagemig::sync::IgnorePoison as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pagemig::mm::{AddressSpace, VirtAddr};
use pagemig_live::LiveRegion;

use super::SPACE_BASE;
use crate::rng::Rng;

/// Accessor threads reading the workload while it migrates; their migration-entry
/// waits are attributed to whichever (engine, batch size) is running.
pub(crate) struct Readers {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) tag: Arc<AtomicUsize>,
    pub(crate) samples: Arc<Mutex<Vec<(usize, u64)>>>,
    pub(crate) handles: Vec<std::thread::JoinHandle<()>>,
}

pub(crate) const NO_TAG: usize = usize::MAX;

/// A live-region access slower than this counts as a stall.
pub const LIVE_STALL_NS: u64 = 2_000;

impl Readers {
    /// Starts `n` threads. Each builds its access function with `make` (on its own
    /// thread), then calls it with random numbers until stopped; the stall times (ns) it
    /// returns are attributed to whichever (engine, batch size) is running.
    pub(crate) fn spawn<F, A>(n: usize, make: F) -> Readers
    where
        F: Fn(usize) -> A + Send + Sync + 'static,
        A: FnMut(u64) -> Vec<u64>,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let tag = Arc::new(AtomicUsize::new(NO_TAG));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let make = Arc::new(make);
        let handles = (0..n)
            .map(|i| {
                let (make, stop, tag, samples) =
                    (make.clone(), stop.clone(), tag.clone(), samples.clone());
                std::thread::spawn(move || {
                    let mut access = make(i);
                    let mut rng = Rng::new(i as u64);
                    let mut local = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let w = access(rng.next_u64());
                        if !w.is_empty() {
                            let t = tag.load(Ordering::Relaxed);
                            if t != NO_TAG {
                                local.extend(w.into_iter().map(|ns| (t, ns)));
                            }
                        }
                    }
                    samples.lock().ignore_poison().extend(local);
                })
            })
            .collect();
        Readers {
            stop,
            tag,
            samples,
            handles,
        }
    }

    /// Accessors of the built-in backend: their waits on migration entries.
    pub(crate) fn start(space: &Arc<AddressSpace>, n: usize, total: usize) -> Readers {
        let space = space.clone();
        Readers::spawn(n, move |_| {
            let acc = space.accessor();
            acc.record_waits();
            move |x: u64| {
                let off = (x as usize % total) & !7;
                let _ = acc.read_u64(VirtAddr(SPACE_BASE + off as u64));
                acc.take_wait_samples()
            }
        })
    }

    /// Program threads of a live region: each access is a plain load and an atomic
    /// read-modify-write that leaves the word unchanged (a write access), timed; accesses
    /// slower than [`LIVE_STALL_NS`] are counted as stalls (a userfaultfd fault round trip
    /// costs more than that here, a cache miss far less).
    pub(crate) fn start_live(region: &Arc<LiveRegion>, n: usize) -> Readers {
        let region = region.clone();
        Readers::spawn(n, move |_| {
            let region = region.clone();
            move |x: u64| {
                let words = region.words();
                let w = &words[x as usize % words.len()];
                let t0 = Instant::now();
                let v = w.load(Ordering::Relaxed);
                w.fetch_or(0, Ordering::Relaxed);
                std::hint::black_box(v);
                let ns = t0.elapsed().as_nanos() as u64;
                if ns > LIVE_STALL_NS {
                    vec![ns]
                } else {
                    Vec::new()
                }
            }
        })
    }

    pub(crate) fn finish(self) -> Vec<(usize, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.join();
        }
        std::mem::take(&mut *self.samples.lock().ignore_poison())
    }
}
