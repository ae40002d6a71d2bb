//! The pipelined batch copy (beyond the series; off by default, see
//! [`crate::offload::PipelineConfig`]).
//!
//! The batch is unmapped and flushed once, exactly as the series does. Instead of one
//! migrator call for the whole batch followed by the whole move loop, the batch-copy list
//! is cut into sub-batches that grow geometrically (the first one small, so the first folio
//! is usable early), each handed to the migrator in a call of its own. The thread that
//! runs `migrate_pages()` moves sub-batch `k` as soon as its copy is done. In turn (the
//! default) it copies each sub-batch itself first; with overlap a helper thread (one per
//! `migrate_pages()` call, spawned only when the pipeline is on and the gate is open)
//! copies the next sub-batches meanwhile. Both threads claim sub-batches from one
//! counter, lowest first, one migrator call at a time: the mover copies the sub-batch it
//! is about to move if nobody has claimed it yet, so a helper that is slow to wake costs
//! little, and without a helper the sub-batches simply go in turn.
//!
//! Correctness rests on the same per-folio marks as the unpipelined path: a sub-batch's
//! copy ends with the registry's store fence, and its completion is published with a
//! sequentially consistent store that the mover reads with one before it consumes the
//! marks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::mm::{Folio, Memory};
use crate::offload::CopyBatch;

/// Sub-batches stop growing here: with overlap the move of the last full sub-batch is the
/// part of a batch that overlaps no copy, and in turn a sub-batch's folios wait for its
/// whole copy, so it is kept short (64 small folios, about 11 µs of moving on the
/// development machine); a folio larger than this is a sub-batch alone.
pub(crate) const MAX_SUB_BATCH_BYTES: usize = 256 << 10;

/// One batch's sub-batches, shared by the mover and the helper.
pub(crate) struct Job {
    dst: Vec<Folio>,
    src: Vec<Folio>,
    /// `bounds[k]..bounds[k + 1]` is sub-batch `k`.
    bounds: Vec<usize>,
    next: AtomicUsize,
    /// Held across each migrator call: one call of this batch at a time, in order, as the
    /// series makes them (a driver that refuses a second concurrent batch, as dcbm does
    /// when its channels are busy, never sees one from the pipeline).
    copying: Mutex<()>,
    done: Vec<AtomicBool>,
    copy_ns: AtomicU64,
    /// The part of `copy_ns` the mover spent (it is inside the move phase's wall time).
    mover_copy_ns: AtomicU64,
    /// The mover, and whether it sleeps waiting for a copy: it parks instead of spinning,
    /// so that it leaves the copying thread's CPU (on a two-CPU machine, perhaps its
    /// sibling) alone; the copier unparks it after each sub-batch it finishes.
    mover: std::thread::Thread,
    mover_parked: AtomicBool,
}

impl Job {
    /// Cuts the pairs into sub-batches: the first holds at least `first_bytes` (and at
    /// least one folio), each later one at least twice the bytes of the one before, up to
    /// [`MAX_SUB_BATCH_BYTES`] (or `first_bytes`, if that is larger).
    pub(crate) fn new(mm: &Memory, dst: &[Folio], src: &[Folio], first_bytes: usize) -> Job {
        let mut bounds = vec![0];
        let mut target = first_bytes.max(1);
        let mut acc = 0usize;
        for (i, &f) in src.iter().enumerate() {
            acc += mm.folio(f).size_bytes();
            if acc >= target {
                bounds.push(i + 1);
                // The next one twice the size of this one, up to MAX_SUB_BATCH_BYTES.
                target = acc
                    .saturating_mul(2)
                    .min(MAX_SUB_BATCH_BYTES.max(first_bytes));
                acc = 0;
            }
        }
        if *bounds.last().expect("bounds start with 0") != src.len() {
            bounds.push(src.len());
        }
        let n = bounds.len() - 1;
        Job {
            dst: dst.to_vec(),
            src: src.to_vec(),
            bounds,
            next: AtomicUsize::new(0),
            copying: Mutex::new(()),
            done: (0..n).map(|_| AtomicBool::new(false)).collect(),
            copy_ns: AtomicU64::new(0),
            mover_copy_ns: AtomicU64::new(0),
            mover: std::thread::current(),
            mover_parked: AtomicBool::new(false),
        }
    }

    /// Number of sub-batches.
    pub(crate) fn len(&self) -> usize {
        self.done.len()
    }

    /// The pairs of sub-batch `k` (sources, destinations).
    pub(crate) fn pairs(&self, k: usize) -> (&[Folio], &[Folio]) {
        let r = self.bounds[k]..self.bounds[k + 1];
        (&self.src[r.clone()], &self.dst[r])
    }

    /// Claims the lowest sub-batch nobody copies yet and copies it through the registry
    /// (one migrator call). False when every sub-batch is claimed.
    fn claim_and_copy(&self, mm: &Memory) -> bool {
        let g = self.copying.lock().unwrap_or_else(|e| e.into_inner());
        self.copy_next(mm, g, usize::MAX, false)
    }

    /// Copies sub-batch `k` if nobody has claimed it and no call is in flight; false
    /// otherwise.
    fn try_claim_and_copy(&self, mm: &Memory, k: usize) -> bool {
        match self.copying.try_lock() {
            Ok(g) => self.copy_next(mm, g, k, true),
            Err(std::sync::TryLockError::Poisoned(e)) => {
                self.copy_next(mm, e.into_inner(), k, true)
            }
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    /// Under the copy lock (every claim is made under it): claims the lowest unclaimed
    /// sub-batch if it is at most `upto`, and copies it (`by_mover`: on the thread that
    /// moves).
    fn copy_next(
        &self,
        mm: &Memory,
        _in_flight: std::sync::MutexGuard<'_, ()>,
        upto: usize,
        by_mover: bool,
    ) -> bool {
        let k = self.next.load(Ordering::Acquire);
        if k >= self.len() || k > upto {
            return false;
        }
        self.next.store(k + 1, Ordering::Release);
        let r = self.bounds[k]..self.bounds[k + 1];
        let t = Instant::now();
        // Each sub-batch is a migrator call of its own; as in the unpipelined path the
        // return value is ignored (a driver's error ends only that call): the marks decide,
        // and whatever is unmarked is copied on the CPU in the move phase.
        let _ = mm
            .offload()
            .batch_copy(&CopyBatch::new(mm, &self.dst[r.clone()], &self.src[r]));
        let ns = super::elapsed_ns(t);
        self.copy_ns.fetch_add(ns, Ordering::Relaxed);
        if by_mover {
            self.mover_copy_ns.fetch_add(ns, Ordering::Relaxed);
        }
        // batch_copy() fenced the streaming stores; this publishes the marks.
        self.done[k].store(true, Ordering::SeqCst);
        if self.mover_parked.load(Ordering::SeqCst) {
            self.mover.unpark();
        }
        true
    }

    /// Waits until sub-batch `k` (every one before it is done) is copied, copying it
    /// itself if nobody has claimed it yet. Never a later one: the mover that copied
    /// ahead would leave sub-batch `k`, already copied, waiting for its move, and the two
    /// threads would take turns instead of overlapping.
    pub(crate) fn wait_copied(&self, mm: &Memory, k: usize) {
        let mut spins = 0u32;
        while !self.done[k].load(Ordering::Acquire) {
            if self.try_claim_and_copy(mm, k) {
                continue;
            }
            // The helper is copying sub-batch k: at most one sub-batch's copy away.
            if spins < 64 {
                std::hint::spin_loop();
                spins += 1;
                continue;
            }
            // Parked, with the flag set before the last look (SeqCst on both sides: the
            // copier either sees the flag and unparks, or the mover sees `done`).
            self.mover_parked.store(true, Ordering::SeqCst);
            if !self.done[k].load(Ordering::SeqCst) {
                std::thread::park_timeout(std::time::Duration::from_millis(1));
            }
            self.mover_parked.store(false, Ordering::SeqCst);
        }
    }

    /// Time spent copying: (both threads together, the mover's part).
    pub(crate) fn copy_ns(&self) -> (u64, u64) {
        (
            self.copy_ns.load(Ordering::Relaxed),
            self.mover_copy_ns.load(Ordering::Relaxed),
        )
    }
}

/// The helper thread's end of the pipeline: jobs go in, the helper claims sub-batches.
pub(crate) struct Helper {
    /// `None` without a helper (its spawn failed: out of threads); the mover then copies
    /// every sub-batch itself, in order.
    tx: Option<mpsc::Sender<Arc<Job>>>,
}

impl Helper {
    /// Spawns the helper in `scope`; it runs until the returned `Helper` is dropped.
    pub(crate) fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        mm: &'scope Memory,
    ) -> Helper {
        let (tx, rx) = mpsc::channel::<Arc<Job>>();
        let spawned = std::thread::Builder::new()
            .name("pagemig-pipe".into())
            .spawn_scoped(scope, move || {
                while let Some(job) = next_job(&rx) {
                    while job.claim_and_copy(mm) {}
                }
            });
        Helper {
            tx: spawned.ok().map(|_| tx),
        }
    }

    /// Hands `job` to the helper (no-op without one).
    pub(crate) fn submit(&self, job: &Arc<Job>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job.clone());
        }
    }
}

/// How long the helper keeps polling for the next job before it sleeps: longer than the
/// unmap phase of a full batch (about 70 µs for 512 small folios on the development
/// machine), so that between the batches of one call it does not pay a wake-up.
const HELPER_POLL: std::time::Duration = std::time::Duration::from_micros(500);

/// The next job: polled for [`HELPER_POLL`] (yielding the CPU to any other runnable
/// thread), then waited for. `None` once the mover hung up.
fn next_job(rx: &mpsc::Receiver<Arc<Job>>) -> Option<Arc<Job>> {
    let t = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if t.elapsed() < HELPER_POLL => {
                std::thread::yield_now();
            }
            Err(mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}
