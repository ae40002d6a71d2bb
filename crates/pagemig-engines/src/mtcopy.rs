//! mtcopy — the multi-threaded CPU copier (Zi Yan's `drivers/migoffcopy/mtcopy`,
//! `copy_page_lists_mt`, in its `padata_do_multithreaded` form: the calling thread takes
//! one share of the work and the rest goes to a persistent pool).
//!
//! Work split as in the series: with fewer folios than threads each folio is cut into
//! equal chunks, one per thread (so a single 2 MiB folio is copied in parallel); otherwise
//! whole folios are dealt out in contiguous runs, `n / t` each plus one more for the first
//! `n % t` threads. A destination is marked right after its own copy completes (for a
//! chunked folio: when its last chunk completes); a failed chunk leaves only that folio
//! unmarked, for the CPU fallback.
//!
//! Knobs ([`ModuleParams`]): `offloading` (0/1: register/unregister; the pool lives only
//! while it is 1), `threads` (1..=64, default min(4, CPUs)), `cpuselect` (`none`, `spread`,
//! `fill`: where to pin the pool's threads), `min_batch_bytes` (below it the batch is
//! copied on the calling thread alone), `reason_mask`, `spin_us` (how long idle pool
//! threads spin before sleeping), `inject_fail_every` (fault injection: every n-th copy
//! fails), and the counters
//! `folios_migrated` and `folios_failures` (any write resets them).

use pagemig::sys::own_threads::{self, OwnThread};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pagemig::mm::{Folio, Memory};
use pagemig::offload::{migrate_folios_mc_copy, CopyBatch, Migrator, ReasonMask};
use pagemig::Errno;

use crate::lifecycle::{DriverResource, Lifecycle};
use crate::params::{parse_bool, parse_range, ModuleParams, ParamError};
use crate::sync::{lock, Parker, Pending};

/// `MAX_NUM_COPY_THREADS` of the padata version.
pub const MAX_THREADS: usize = 64;

/// The default thread count: min(4, CPUs).
pub fn default_threads() -> usize {
    pagemig::sys::nr_cpus().clamp(1, 4)
}

/// Where pool threads are pinned (`cpuselect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuSelect {
    /// Not pinned: the scheduler places them.
    None,
    /// Spread over the CPUs (`cpuselect=0`: one per die on the series' AMD box).
    Spread,
    /// Fill CPUs in order (`cpuselect=1`).
    Fill,
}

impl CpuSelect {
    fn name(self) -> &'static str {
        match self {
            CpuSelect::None => "none",
            CpuSelect::Spread => "spread",
            CpuSelect::Fill => "fill",
        }
    }
    /// The CPU of copy thread `i` of `nr_threads`, chosen among `allowed` (the CPUs this
    /// process may run on, as `sched_getaffinity` reports them: under `taskset -c 8-11`
    /// thread 0 goes to CPU 8, not to CPU 0).
    fn cpu_for(self, i: usize, nr_threads: usize, allowed: &[usize]) -> Option<usize> {
        let n = allowed.len();
        if n == 0 {
            return None;
        }
        match self {
            CpuSelect::None => None,
            CpuSelect::Fill => Some(allowed[i % n]),
            CpuSelect::Spread => Some(allowed[(i * (n / nr_threads.clamp(1, n)).max(1)) % n]),
        }
    }
}

/// mtcopy's knobs as one typed value ([`MtCopy::config`], [`MtCopy::configure`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MtCopyConfig {
    /// Copy threads, the caller included (1..=64).
    pub threads: usize,
    /// Where pool threads are pinned.
    pub cpuselect: CpuSelect,
    /// Batches smaller than this are copied on the calling thread alone.
    pub min_batch_bytes: usize,
    /// Reasons this driver copies for.
    pub reason_mask: ReasonMask,
    /// How long idle pool threads spin before sleeping (µs, 0..=100000).
    pub spin_us: u64,
    /// Fault injection: every n-th copy fails (0 = never).
    pub inject_fail_every: u64,
}

/// One copy: a byte range of one (dst, src) pair.
#[derive(Clone, Copy)]
struct Item {
    idx: usize,
    dst: Folio,
    src: Folio,
    off: usize,
    len: usize,
}

struct BatchState {
    items: Vec<Item>,
    /// Chunks left per folio (only used when folios are cut into chunks).
    chunks_left: Vec<AtomicU32>,
    failed: Vec<AtomicBool>,
    chunked: bool,
    workers_left: Pending,
    /// Fault injection: every n-th copy (by item number) fails without writing; 0 = never.
    fail_every: u64,
}

impl BatchState {
    /// Copies items `[a, b)` and marks each folio right after its own copy completes.
    fn run(&self, mm: &Memory, a: usize, b: usize) {
        for (k, it) in self.items[a..b].iter().enumerate() {
            let injected = self.fail_every > 0 && ((a + k) as u64 + 1) % self.fail_every == 0;
            let ok = !injected && mm.copy_folio_range(it.dst, it.src, it.off, it.len).is_ok();
            if !ok {
                self.failed[it.idx].store(true, Ordering::Relaxed);
            }
            let last =
                !self.chunked || self.chunks_left[it.idx].fetch_sub(1, Ordering::AcqRel) == 1;
            if last && !self.failed[it.idx].load(Ordering::Acquire) {
                mm.folio(it.dst).mark_content_copied();
            }
        }
        // Publish the streaming stores before the completion.
        pagemig::copy::store_fence();
    }
}

struct Job {
    mm: Arc<Memory>,
    state: Arc<BatchState>,
    range: (usize, usize),
}

struct WorkerSlot {
    job: Mutex<Option<Job>>,
    has_job: AtomicBool,
    stop: AtomicBool,
    parker: Parker,
}

struct Pool {
    slots: Vec<Arc<WorkerSlot>>,
    handles: Vec<OwnThread<()>>,
    /// The CPUs each pool thread may run on once started (after its pinning).
    cpus: Vec<Vec<usize>>,
}

impl Pool {
    /// Starts `nr_workers` threads, pinned as `cpuselect` says within the CPUs the calling
    /// thread may use. A thread that cannot be pinned fails the start (the threads started
    /// are stopped): a pool that silently runs elsewhere than asked would mislead every
    /// measurement made with it.
    fn start(nr_workers: usize, cpuselect: CpuSelect, spin: Duration) -> Result<Pool, ParamError> {
        let allowed = pagemig::sys::allowed_cpus().map_err(|e| ParamError::Sys {
            call: "sched_getaffinity".into(),
            source: e.into(),
        })?;
        let mut slots = Vec::new();
        let mut handles = Vec::new();
        let (pinned_tx, pinned_rx) = std::sync::mpsc::channel();
        for i in 0..nr_workers {
            let slot = Arc::new(WorkerSlot {
                job: Mutex::new(None),
                has_job: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                parker: Parker::default(),
            });
            let s = slot.clone();
            // The caller is thread 0; pool thread i is copy thread i + 1.
            let cpu = cpuselect.cpu_for(i + 1, nr_workers + 1, &allowed);
            let tx = pinned_tx.clone();
            let b = std::thread::Builder::new().name(format!("mtcopy/{}", i + 1));
            let spawned = own_threads::spawn(b, move || {
                let pinned = match cpu {
                    Some(c) => pagemig::sys::pin_current_thread(c)
                        .map_err(|e| format!("pinning mtcopy/{} to CPU {c}: {e}", i + 1)),
                    None => Ok(()),
                };
                let cpus = pinned.and_then(|()| {
                    pagemig::sys::allowed_cpus().map_err(|e| format!("sched_getaffinity: {e}"))
                });
                let ok = cpus.is_ok();
                let _ = tx.send((i, cpus));
                if ok {
                    worker(s, spin);
                }
            });
            match spawned {
                Ok(h) => {
                    slots.push(slot);
                    handles.push(h);
                }
                Err(e) => {
                    Pool::stop_threads(&slots, handles);
                    return Err(ParamError::Sys {
                        call: format!("spawning mtcopy/{}", i + 1),
                        source: e.into(),
                    });
                }
            }
        }
        drop(pinned_tx);
        let mut cpus = vec![Vec::new(); nr_workers];
        let mut first_error = None;
        for (i, r) in pinned_rx.iter().take(nr_workers) {
            match r {
                Ok(c) => cpus[i] = c,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            Pool::stop_threads(&slots, handles);
            return Err(ParamError::Start(e));
        }
        Ok(Pool {
            slots,
            handles,
            cpus,
        })
    }

    fn stop_threads(slots: &[Arc<WorkerSlot>], handles: Vec<OwnThread<()>>) {
        for s in slots {
            s.stop.store(true, Ordering::SeqCst);
            s.parker.kick();
        }
        for h in handles {
            let _ = h.join();
        }
    }
}

impl DriverResource for Pool {
    fn release(self) {
        Pool::stop_threads(&self.slots, self.handles);
    }
}

fn worker(slot: Arc<WorkerSlot>, spin: Duration) {
    loop {
        slot.parker.wait_until(spin, || {
            slot.has_job.load(Ordering::Acquire) || slot.stop.load(Ordering::Acquire)
        });
        if slot.stop.load(Ordering::Acquire) && !slot.has_job.load(Ordering::Acquire) {
            return;
        }
        let job = lock(&slot.job).take();
        slot.has_job.store(false, Ordering::Release);
        if let Some(job) = job {
            job.state.run(&job.mm, job.range.0, job.range.1);
            job.state.workers_left.done();
        }
    }
}

struct Inner {
    mm: Weak<Memory>,
    params: Mutex<MtCopyConfig>,
    /// The pool and the registration.
    life: Lifecycle<Pool>,
    /// Serialises batches on this engine (the pool has one slot per worker).
    batch_lock: Mutex<()>,
    folios_migrated: AtomicU64,
    folios_failures: AtomicU64,
    batches_inline: AtomicU64,
}

/// The mtcopy driver. Cheap to clone (a handle).
#[derive(Clone)]
pub struct MtCopy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MtCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtCopy")
            .field("params", &*lock(&self.inner.params))
            .finish()
    }
}

impl MtCopy {
    /// A driver for `mm`, offloading off.
    pub fn new(mm: &Arc<Memory>) -> MtCopy {
        MtCopy {
            inner: Arc::new(Inner {
                mm: Arc::downgrade(mm),
                params: Mutex::new(MtCopyConfig {
                    threads: default_threads(),
                    cpuselect: CpuSelect::None,
                    min_batch_bytes: 0,
                    reason_mask: ReasonMask::ALL,
                    spin_us: 300,
                    inject_fail_every: 0,
                }),
                life: Lifecycle::new(),
                batch_lock: Mutex::new(()),
                folios_migrated: AtomicU64::new(0),
                folios_failures: AtomicU64::new(0),
                batches_inline: AtomicU64::new(0),
            }),
        }
    }

    fn as_migrator(&self) -> Arc<dyn Migrator> {
        self.inner.clone()
    }

    /// The driver as the core sees it (what `offloading=1` registers).
    pub fn migrator(&self) -> Arc<dyn Migrator> {
        self.as_migrator()
    }

    /// Whether offloading is on (registered with the core).
    pub fn is_offloading(&self) -> bool {
        self.inner.life.is_offloading()
    }

    fn start_pool(&self) -> Result<Pool, ParamError> {
        let p = lock(&self.inner.params).clone();
        Pool::start(p.threads - 1, p.cpuselect, Duration::from_micros(p.spin_us))
    }

    /// Starts the pool without registering, for a driver that dispatches batches to this
    /// one (the `auto` engine).
    pub fn attach(&self) -> Result<(), ParamError> {
        self.inner
            .life
            .attach("the pool is running", || self.start_pool())
    }

    /// Makes the pool's idle threads sleep now rather than spin for `spin_us` first: for a
    /// caller that is about to copy with another engine on the same CPUs (`auto`). The next
    /// batch wakes them.
    pub fn quiesce(&self) {
        if let Some(p) = self.inner.life.resource().as_ref() {
            for s in &p.slots {
                s.parker.quiesce();
            }
        }
    }

    /// Whether a pool started by [`MtCopy::attach`] is running.
    pub fn is_attached(&self) -> bool {
        self.inner.life.is_attached()
    }

    /// Stops a pool started by [`MtCopy::attach`].
    pub fn detach(&self) {
        self.inner.life.detach();
    }

    fn set_offloading(&self, on: bool) -> Result<(), ParamError> {
        let mask = lock(&self.inner.params).reason_mask;
        self.inner
            .life
            .set_offloading(on, &self.inner.mm, self.as_migrator(), mask, || {
                self.start_pool()
            })
    }

    /// The knobs in force.
    pub fn config(&self) -> MtCopyConfig {
        lock(&self.inner.params).clone()
    }

    /// Sets every knob at once; all are validated first, so an invalid value changes
    /// nothing. A running pool is restarted if its size or placement changes.
    pub fn configure(&self, c: &MtCopyConfig) -> Result<(), ParamError> {
        if !(1..=MAX_THREADS).contains(&c.threads) {
            return Err(ParamError::invalid(
                "threads",
                &c.threads.to_string(),
                format!("must be 1..={MAX_THREADS}"),
            ));
        }
        if c.spin_us > 100_000 {
            return Err(ParamError::invalid(
                "spin_us",
                &c.spin_us.to_string(),
                "must be 0..=100000",
            ));
        }
        let old = self.config();
        let restart = self.is_offloading()
            && (old.threads != c.threads
                || old.cpuselect != c.cpuselect
                || old.spin_us != c.spin_us);
        if restart {
            self.set_offloading(false)?;
        }
        *lock(&self.inner.params) = c.clone();
        if self.is_offloading() && old.reason_mask != c.reason_mask {
            if let Some(mm) = self.inner.mm.upgrade() {
                mm.offload()
                    .set_reason_mask(&self.as_migrator(), c.reason_mask)
                    .map_err(ParamError::Offload)?;
            }
        }
        if restart {
            self.set_offloading(true)?;
        }
        Ok(())
    }

    /// Counters: `folios_migrated`, `folios_failures`, `batches_inline`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "folios_migrated",
                self.inner.folios_migrated.load(Ordering::Relaxed),
            ),
            (
                "folios_failures",
                self.inner.folios_failures.load(Ordering::Relaxed),
            ),
            (
                "batches_inline",
                self.inner.batches_inline.load(Ordering::Relaxed),
            ),
        ]
    }

    /// Number of live pool threads (threads - 1 while offloading, else 0).
    pub fn nr_pool_threads(&self) -> usize {
        self.pool_cpus().len()
    }

    /// For each pool thread, the CPUs it may run on (after its pinning); empty when no
    /// pool runs.
    pub fn pool_cpus(&self) -> Vec<Vec<usize>> {
        self.inner
            .life
            .resource()
            .as_ref()
            .map_or(Vec::new(), |p| p.cpus.clone())
    }
}

const PARAMS: &[&str] = &[
    "offloading",
    "threads",
    "cpuselect",
    "min_batch_bytes",
    "reason_mask",
    "spin_us",
    "inject_fail_every",
    "folios_migrated",
    "folios_failures",
];

impl ModuleParams for MtCopy {
    fn param_names(&self) -> &'static [&'static str] {
        PARAMS
    }

    fn param(&self, name: &str) -> Result<String, ParamError> {
        let p = lock(&self.inner.params).clone();
        Ok(match name {
            "offloading" => (self.is_offloading() as u8).to_string(),
            "threads" => p.threads.to_string(),
            "cpuselect" => p.cpuselect.name().to_string(),
            "min_batch_bytes" => p.min_batch_bytes.to_string(),
            "reason_mask" => p.reason_mask.to_string(),
            "spin_us" => p.spin_us.to_string(),
            "inject_fail_every" => p.inject_fail_every.to_string(),
            "folios_migrated" => self
                .inner
                .folios_migrated
                .load(Ordering::Relaxed)
                .to_string(),
            "folios_failures" => self
                .inner
                .folios_failures
                .load(Ordering::Relaxed)
                .to_string(),
            _ => {
                return Err(ParamError::Unknown {
                    name: name.into(),
                    known: PARAMS.join(", "),
                })
            }
        })
    }

    fn set_param(&self, name: &str, value: &str) -> Result<(), ParamError> {
        match name {
            "offloading" => return self.set_offloading(parse_bool(name, value)?),
            "folios_migrated" => self.inner.folios_migrated.store(0, Ordering::Relaxed),
            "folios_failures" => self.inner.folios_failures.store(0, Ordering::Relaxed),
            "threads" | "cpuselect" | "spin_us" => {
                let mut p = lock(&self.inner.params).clone();
                match name {
                    "threads" => p.threads = parse_range(name, value, 1, MAX_THREADS)?,
                    "spin_us" => p.spin_us = parse_range(name, value, 0, 100_000)? as u64,
                    _ => {
                        p.cpuselect = match value.trim() {
                            "none" => CpuSelect::None,
                            "spread" | "0" => CpuSelect::Spread,
                            "fill" | "1" => CpuSelect::Fill,
                            _ => {
                                return Err(ParamError::invalid(
                                    name,
                                    value,
                                    "expected none, spread (0) or fill (1)",
                                ))
                            }
                        }
                    }
                }
                // The pool is sized at enable time: restart it if running.
                let running = self.is_offloading();
                if running {
                    self.set_offloading(false)?;
                }
                *lock(&self.inner.params) = p;
                if running {
                    self.set_offloading(true)?;
                }
            }
            "inject_fail_every" => {
                lock(&self.inner.params).inject_fail_every =
                    parse_range(name, value, 0, usize::MAX)? as u64;
            }
            "min_batch_bytes" => {
                let v = value
                    .trim()
                    .parse()
                    .map_err(|_| ParamError::invalid(name, value, "expected a byte count"))?;
                lock(&self.inner.params).min_batch_bytes = v;
            }
            "reason_mask" => {
                let m: ReasonMask = value
                    .parse()
                    .map_err(|e| ParamError::invalid(name, value, e))?;
                lock(&self.inner.params).reason_mask = m;
                if self.is_offloading() {
                    if let Some(mm) = self.inner.mm.upgrade() {
                        mm.offload()
                            .set_reason_mask(&self.as_migrator(), m)
                            .map_err(ParamError::Offload)?;
                    }
                }
            }
            _ => {
                return Err(ParamError::Unknown {
                    name: name.into(),
                    known: PARAMS.join(", "),
                })
            }
        }
        Ok(())
    }
}

impl Migrator for Inner {
    fn name(&self) -> &str {
        "CPU_MT_COPY"
    }

    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        let p = lock(&self.params).clone();
        let _serial = lock(&self.batch_lock);
        let pool = self.life.resource();
        let mm_arc = self.mm.upgrade();
        let (Some(pool_ref), Some(mm_arc)) = (pool.as_ref(), mm_arc) else {
            // Switched off under us (the registry already points elsewhere): copy inline.
            drop(pool);
            return self.inline(batch);
        };
        let t = (pool_ref.slots.len() + 1).min(p.threads);
        if t == 1 || batch.total_bytes() < p.min_batch_bytes {
            drop(pool);
            return self.inline(batch);
        }
        // Work split (copy_page_lists_mt).
        let mut items = Vec::new();
        let mut ranges = Vec::with_capacity(t);
        let chunked = n < t;
        if chunked {
            for j in 0..t {
                let a = items.len();
                for i in 0..n {
                    let size = batch.size_bytes(i);
                    let lo = (size * j / t) & !63;
                    let hi = if j + 1 == t {
                        size
                    } else {
                        (size * (j + 1) / t) & !63
                    };
                    if hi > lo {
                        items.push(Item {
                            idx: i,
                            dst: batch.dst(i),
                            src: batch.src(i),
                            off: lo,
                            len: hi - lo,
                        });
                    }
                }
                ranges.push((a, items.len()));
            }
        } else {
            let (base, extra) = (n / t, n % t);
            let mut i = 0;
            for j in 0..t {
                let cnt = base + usize::from(j < extra);
                let a = items.len();
                for k in i..i + cnt {
                    items.push(Item {
                        idx: k,
                        dst: batch.dst(k),
                        src: batch.src(k),
                        off: 0,
                        len: batch.size_bytes(k),
                    });
                }
                i += cnt;
                ranges.push((a, items.len()));
            }
        }
        let mut chunks_left = Vec::new();
        if chunked {
            chunks_left = (0..n).map(|_| AtomicU32::new(0)).collect();
            for it in &items {
                chunks_left[it.idx].fetch_add(1, Ordering::Relaxed);
            }
        }
        let state = Arc::new(BatchState {
            items,
            chunks_left,
            failed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            chunked,
            workers_left: Pending::new(t - 1),
            fail_every: p.inject_fail_every,
        });
        for (w, &range) in ranges[1..].iter().enumerate() {
            let slot = &pool_ref.slots[w];
            *lock(&slot.job) = Some(Job {
                mm: mm_arc.clone(),
                state: state.clone(),
                range,
            });
            slot.has_job.store(true, Ordering::Release);
            slot.parker.kick();
        }
        // The calling thread takes share 0 (padata runs one chunk on the caller).
        state.run(batch.memory(), ranges[0].0, ranges[0].1);
        state.workers_left.wait_at_most(0, None);
        drop(pool);
        let nr_failed = state
            .failed
            .iter()
            .filter(|f| f.load(Ordering::Relaxed))
            .count();
        self.folios_migrated
            .fetch_add((n - nr_failed) as u64, Ordering::Relaxed);
        self.folios_failures
            .fetch_add(nr_failed as u64, Ordering::Relaxed);
        if nr_failed > 0 {
            Err(Errno::Again)
        } else {
            Ok(())
        }
    }
}

impl Inner {
    fn inline(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        self.batches_inline.fetch_add(1, Ordering::Relaxed);
        let rc = migrate_folios_mc_copy(batch);
        let nr_marked = (0..batch.len())
            .filter(|&i| {
                batch.memory().folio(batch.dst(i)).migrate_info()
                    & pagemig::mm::migrate_info::CONTENT_COPIED
                    != 0
            })
            .count();
        self.folios_migrated
            .fetch_add(nr_marked as u64, Ordering::Relaxed);
        self.folios_failures
            .fetch_add((batch.len() - nr_marked) as u64, Ordering::Relaxed);
        rc
    }
}
