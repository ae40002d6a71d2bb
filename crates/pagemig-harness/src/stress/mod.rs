//! `pagemig stress`: accessor threads and migrating threads together for a while, with
//! faults injected, checked for lost writes, torn reads, corrupted content and leaked
//! frames — all of which must be zero.
//!
//! One concept a module: fault injection ([`inject`]), `/proc` sampling ([`procfs`]), the
//! built-in backend's runner (`builtin`) and the live backend's (`live`); here the
//! options, the report, the totals the threads add to, the control loop and the
//! `Session` both runners set up and tear down through.

#![forbid(unsafe_code)]

mod builtin;
pub mod inject;
mod live;
pub mod procfs;

pub use builtin::run_one;
pub use inject::{parse_inject, FaultKind};
pub use live::run_live;
pub use procfs::{process_resources, Resources};

use inject::{rate, Hooks};
use procfs::resources;

use pagemig::sync::IgnorePoison as _;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagemig::mm::{Memory, MemoryConfig};
use pagemig::offload::ReasonMask;
use pagemig_engines::{Engine, EngineSpec};
use serde::Serialize;

use crate::rng::SharedRng;

/// Why a stress run could not be set up or finished (data loss is not an error: it is
/// reported in [`StressReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StressError {
    /// The memory model refused the setup.
    #[error("memory setup: {0}")]
    Mm(#[from] pagemig::mm::MmError),
    /// An access failed in a way the run does not expect.
    #[error("access: {0}")]
    Access(#[from] pagemig::Errno),
    /// The engine could not be started or stopped.
    #[error("engine: {0}")]
    Engine(#[from] pagemig_engines::ParamError),
    /// The live backend cannot run here.
    #[error("live backend: {0}")]
    Live(#[from] pagemig_live::LiveError),
    /// A thread of the run panicked.
    #[error("{0} panicked")]
    ThreadPanicked(&'static str),
}

/// Options of a stress run.
#[derive(Debug, Clone)]
pub struct StressOptions {
    /// Seconds per engine.
    pub seconds: f64,
    /// Accessor threads.
    pub accessors: usize,
    /// Migrating threads.
    pub migrators: usize,
    /// Nodes the pages move between (2 or more; on a host with that many NUMA nodes, node
    /// `i` is bound to host node `i`).
    pub nodes: usize,
    /// Faults and rates.
    pub inject: Vec<(FaultKind, f64)>,
    /// Progress on stderr.
    pub verbose: bool,
}

/// The summary of one engine's run.
#[derive(Debug, Clone, Serialize)]
pub struct StressReport {
    /// Engine.
    pub engine: String,
    /// Seconds run.
    pub seconds: f64,
    /// Accessor reads and writes.
    pub operations: u64,
    /// `migrate_pages()` calls.
    pub migrate_calls: u64,
    /// Base pages migrated.
    pub pages_migrated: u64,
    /// Folios that failed, by errno name.
    pub folios_failed_by_errno: BTreeMap<String, u64>,
    /// Whole calls that returned an error, by errno name.
    pub calls_failed_by_errno: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults_injected: BTreeMap<String, u64>,
    /// Reads that returned `EHWPOISON` (expected while a page is poisoned).
    pub poisoned_reads: u64,
    /// Writes whose value was not read back later.
    pub lost_writes: u64,
    /// Records read half-old, half-new.
    pub torn_reads: u64,
    /// Pages whose content changed though nobody wrote them.
    pub content_mismatches: u64,
    /// Frames not free after everything was released.
    pub leaked_frames: u64,
    /// Live backend on a host with the nodes: pages where the kernel's `move_pages(2)` query
    /// and pagemig's disagree at the end of the run (`None`: not checked, the host lacks the
    /// nodes or the backend is the builtin one). Not a loss figure (no data is lost when a
    /// page is on another node than the core says), but `pagemig stress` fails on it.
    pub placement_mismatches: Option<u64>,
    /// Resources after setup and at the end.
    pub resources_start: Resources,
    /// Resources after the run and the teardown of its engine and memory.
    pub resources_end: Resources,
    /// The engine's counters.
    pub engine_counters: BTreeMap<String, u64>,
}

impl StressReport {
    /// Whether every loss figure is zero.
    pub fn is_clean(&self) -> bool {
        self.lost_writes == 0
            && self.torn_reads == 0
            && self.content_mismatches == 0
            && self.leaked_frames == 0
    }
}

#[derive(Default)]
struct Totals {
    ops: AtomicU64,
    poisoned_reads: AtomicU64,
    lost: AtomicU64,
    torn: AtomicU64,
    mismatches: AtomicU64,
    placement_mismatches: Mutex<Option<u64>>,
    migrate_calls: AtomicU64,
    migrated: AtomicU64,
    failed: Mutex<BTreeMap<String, u64>>,
    calls_failed: Mutex<BTreeMap<String, u64>>,
    injected: Mutex<BTreeMap<String, u64>>,
}

impl Totals {
    fn inject(&self, k: FaultKind) {
        *self
            .injected
            .lock()
            .ignore_poison()
            .entry(k.name().into())
            .or_default() += 1;
    }
}

/// The control loop of a stress run, for `o.seconds`: progress on stderr once a second
/// (`progress` formats it), and the faults that act on the engine itself (unregister and
/// register again, reason-mask changes). Returns the error that stopped it early, if any.
fn control_loop(
    engine: &Engine,
    o: &StressOptions,
    totals: &Totals,
    seed: u64,
    progress: impl Fn() -> String,
) -> Option<StressError> {
    let t0 = Instant::now();
    let rng = SharedRng::new(seed);
    let mut next_report = Duration::from_secs(1);
    let mut reason_all = true;
    while t0.elapsed().as_secs_f64() < o.seconds {
        std::thread::sleep(Duration::from_millis(10));
        if rng.chance(rate(&o.inject, FaultKind::Unregister)) {
            if let Err(e) = engine.restart() {
                return Some(StressError::Engine(e));
            }
            totals.inject(FaultKind::Unregister);
        }
        if rng.chance(rate(&o.inject, FaultKind::Reason)) {
            reason_all = !reason_all;
            let mask = if reason_all {
                ReasonMask::ALL
            } else {
                "compaction,demotion".parse().expect("valid mask")
            };
            if let Err(e) = engine.set_reason_mask(mask) {
                return Some(StressError::Engine(e));
            }
            totals.inject(FaultKind::Reason);
        }
        if o.verbose && t0.elapsed() >= next_report {
            next_report += Duration::from_secs(1);
            eprintln!("{}", progress());
        }
    }
    None
}

/// The faults injected, by kind: the control loop's and the chaos threads', the allocation
/// failures of the hooks, and (for drivers with engine faults) the folios the engine left
/// to the CPU fallback.
fn injected_faults(
    totals: &Totals,
    hooks: &Hooks,
    o: &StressOptions,
    spec: EngineSpec,
    engine_counters: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut injected = totals.injected.lock().ignore_poison().clone();
    let n = hooks.injected.load(Ordering::Relaxed);
    if n > 0 {
        injected.insert("enomem".into(), n);
    }
    if (rate(&o.inject, FaultKind::Engine) > 0.0 || rate(&o.inject, FaultKind::Timeout) > 0.0)
        && matches!(spec, EngineSpec::MtCopy(_) | EngineSpec::Dcbm(_))
    {
        injected.insert(
            "engine_folio_failures".into(),
            engine_counters.get("folios_failures").copied().unwrap_or(0),
        );
    }
    injected
}

/// `errno` name of a positive error number, for status codes.
pub(crate) fn errno_name(e: i32) -> &'static str {
    pagemig::Errno::ALL
        .iter()
        .find(|x| x.errno() == e)
        .map_or("other", |x| x.name())
}

/// What both runners set up and tear down the same way: the allocation hook, the totals
/// the threads add to, the stop flag, the resources at the start, and the report.
struct Session {
    hooks: Arc<Hooks>,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
    res_start: Resources,
    /// The report's name for the run.
    name: String,
    spec: EngineSpec,
    o: StressOptions,
}

impl Session {
    /// A session of `spec` (reported as `name`) whose allocation hook draws from `seed`.
    fn new(name: String, spec: EngineSpec, o: &StressOptions, seed: u64) -> Session {
        Session {
            name,
            spec,
            o: o.clone(),
            res_start: resources(),
            hooks: Arc::new(Hooks {
                enomem_rate: rate(&o.inject, FaultKind::Enomem),
                rng: SharedRng::new(seed),
                injected: AtomicU64::new(0),
                armed: AtomicBool::new(false),
            }),
            totals: Arc::new(Totals::default()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Two nodes of `capacity_bytes` each, with the allocation hook (disarmed until
    /// [`Session::start`]).
    fn memory(&self, capacity_bytes: usize) -> Result<Arc<Memory>, StressError> {
        let mut cfg = MemoryConfig::with_nodes(self.o.nodes, capacity_bytes);
        cfg.hooks = Some(self.hooks.clone());
        Ok(Memory::new(cfg)?)
    }

    /// Starts the engine with its fault knobs and arms the allocation hook.
    fn start(&self, mm: &Arc<Memory>) -> Result<Engine, StressError> {
        let engine = Engine::start(
            self.spec,
            mm,
            &inject::engine_knobs(self.spec, &self.o.inject),
        )?;
        self.hooks.armed.store(true, Ordering::SeqCst);
        Ok(engine)
    }

    /// Runs the control loop for `--seconds`, then stops the threads and joins `handles`
    /// and disarms the hook; the seconds run, or the error that stopped the run.
    fn run(
        &self,
        engine: &Engine,
        seed: u64,
        handles: Vec<std::thread::JoinHandle<()>>,
        progress: impl Fn(f64) -> String,
    ) -> Result<f64, StressError> {
        let t0 = Instant::now();
        let control_error = control_loop(engine, &self.o, &self.totals, seed, || {
            progress(t0.elapsed().as_secs_f64())
        });
        self.stop.store(true, Ordering::SeqCst);
        for h in handles {
            h.join()
                .map_err(|_| StressError::ThreadPanicked("a stress thread"))?;
        }
        self.hooks.armed.store(false, Ordering::SeqCst);
        let seconds = t0.elapsed().as_secs_f64();
        match control_error {
            Some(e) => Err(e),
            None => Ok(seconds),
        }
    }

    /// The engine's counters by name.
    fn engine_counters(engine: &Engine) -> BTreeMap<String, u64> {
        engine
            .counters()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// Stops the engine, then counts the frames `mm` still has allocated once everything
    /// else holding them (`release`: the space, the regions) is dropped, and makes the report.
    fn finish(
        self,
        seconds: f64,
        engine: Engine,
        engine_counters: BTreeMap<String, u64>,
        mm: Arc<Memory>,
        release: impl FnOnce(),
    ) -> Result<StressReport, StressError> {
        engine.stop()?;
        release();
        let leaked = (mm.nr_pages_total() - mm.nr_free_pages_total()) as u64;
        let injected = injected_faults(
            &self.totals,
            &self.hooks,
            &self.o,
            self.spec,
            &engine_counters,
        );
        drop(mm);
        let t = &self.totals;
        let get = |m: &Mutex<BTreeMap<String, u64>>| m.lock().ignore_poison().clone();
        Ok(StressReport {
            engine: self.name,
            seconds,
            operations: t.ops.load(Ordering::Relaxed),
            migrate_calls: t.migrate_calls.load(Ordering::Relaxed),
            pages_migrated: t.migrated.load(Ordering::Relaxed),
            folios_failed_by_errno: get(&t.failed),
            calls_failed_by_errno: get(&t.calls_failed),
            faults_injected: injected,
            poisoned_reads: t.poisoned_reads.load(Ordering::Relaxed),
            lost_writes: t.lost.load(Ordering::Relaxed),
            torn_reads: t.torn.load(Ordering::Relaxed),
            content_mismatches: t.mismatches.load(Ordering::Relaxed),
            leaked_frames: leaked,
            placement_mismatches: *t.placement_mismatches.lock().ignore_poison(),
            resources_start: self.res_start,
            resources_end: resources(),
            engine_counters,
        })
    }
}
