//! `pagemig stress`: accessor threads and migrating threads together for a while, with
//! faults injected, checked for lost writes, torn reads, corrupted content and leaked
//! frames — all of which must be zero.

use pagemig::sync::IgnorePoison as _;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pagemig::migrate::{migrate_pages, Mode, Reason};
use pagemig::mm::{
    AddressSpace, FaultHooks, Folio, Memory, MemoryConfig, NodeId, Order, Pfn, VirtAddr, PAGE_SIZE,
};
use pagemig::offload::ReasonMask;
use pagemig::Errno;
use pagemig_engines::{Engine, EngineSpec};
use serde::Serialize;

use crate::rng::SharedRng;
use crate::spec::SpecError;

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

const BASE: u64 = 0x20_0000_0000;
/// Folios of the stressed space: (order, count), laid out back to back.
const LAYOUT: &[(u8, usize)] = &[(9, 2), (4, 64), (0, 1024), (2, 256)];

/// Fault kinds `--inject` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// An extra reference held across a migration (a GUP pin): `EAGAIN`.
    Eagain,
    /// The folio lock held by someone else for a while.
    Lock,
    /// Writeback in progress for a while (`EBUSY` in async modes, waits in sync).
    Writeback,
    /// A page poisoned for a while (the copy fails with `EHWPOISON`).
    Poison,
    /// Destination allocation fails (`ENOMEM`; large folios split).
    Enomem,
    /// The copy engine fails copies (mtcopy chunks, dcbm descriptors).
    Engine,
    /// A DMA channel stalls past the driver's timeout (dcbm).
    Timeout,
    /// The driver is unregistered and registered again mid-run.
    Unregister,
    /// The reason mask changes mid-run.
    Reason,
}

impl FaultKind {
    const ALL: [FaultKind; 9] = [
        FaultKind::Eagain,
        FaultKind::Lock,
        FaultKind::Writeback,
        FaultKind::Poison,
        FaultKind::Enomem,
        FaultKind::Engine,
        FaultKind::Timeout,
        FaultKind::Unregister,
        FaultKind::Reason,
    ];
    fn name(self) -> &'static str {
        match self {
            FaultKind::Eagain => "eagain",
            FaultKind::Lock => "lock",
            FaultKind::Writeback => "writeback",
            FaultKind::Poison => "poison",
            FaultKind::Enomem => "enomem",
            FaultKind::Engine => "engine",
            FaultKind::Timeout => "timeout",
            FaultKind::Unregister => "unregister",
            FaultKind::Reason => "reason",
        }
    }
    /// The rate `all` uses.
    fn default_rate(self) -> f64 {
        match self {
            FaultKind::Eagain | FaultKind::Lock | FaultKind::Writeback => 0.2,
            FaultKind::Poison => 0.05,
            FaultKind::Enomem => 0.01,
            FaultKind::Engine => 0.05,
            FaultKind::Timeout => 0.01,
            FaultKind::Unregister | FaultKind::Reason => 0.05,
        }
    }
}

/// Parses `--inject`: `none`, `all`, or `kind[=rate],...` with rates in (0, 1].
pub fn parse_inject(s: &str) -> Result<Vec<(FaultKind, f64)>, SpecError> {
    match s.trim() {
        "none" | "" => return Ok(Vec::new()),
        "all" => {
            return Ok(FaultKind::ALL
                .iter()
                .map(|k| (*k, k.default_rate()))
                .collect())
        }
        _ => {}
    }
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        let (name, rate) = match item.split_once('=') {
            Some((n, r)) => {
                let r: f64 = r.parse().map_err(|_| {
                    SpecError(format!("bad rate in {item:?}: expected a number in (0, 1]"))
                })?;
                (n, Some(r))
            }
            None => (item, None),
        };
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                SpecError(format!(
                    "unknown fault kind {name:?} (known: all, none, {})",
                    FaultKind::ALL.map(|k| k.name()).join(", ")
                ))
            })?;
        let rate = rate.unwrap_or_else(|| kind.default_rate());
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(SpecError(format!(
                "rate of {name} must be in (0, 1], got {rate}"
            )));
        }
        out.push((kind, rate));
    }
    Ok(out)
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
    /// Faults and rates.
    pub inject: Vec<(FaultKind, f64)>,
    /// Progress on stderr.
    pub verbose: bool,
}

/// Resource use of the process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Resources {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
}

/// The process's resource use now.
pub fn process_resources() -> Resources {
    resources()
}

fn resources() -> Resources {
    let page_kib = 4;
    let rss_kib = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * page_kib;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l[8..].trim().parse().ok())
        })
        .unwrap_or(0);
    Resources {
        rss_kib,
        fds,
        threads,
    }
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

struct Hooks {
    enomem_rate: f64,
    rng: SharedRng,
    injected: AtomicU64,
    /// Off while the space is set up.
    armed: AtomicBool,
}

impl FaultHooks for Hooks {
    fn alloc_should_fail(&self, _node: NodeId, _order: Order) -> bool {
        if self.armed.load(Ordering::Relaxed)
            && self.enomem_rate > 0.0
            && self.rng.chance(self.enomem_rate)
        {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

fn folio_starts() -> Vec<(u64, u8)> {
    let mut v = Vec::new();
    let mut va = BASE;
    for &(order, n) in LAYOUT {
        for _ in 0..n {
            v.push((va, order));
            va += (PAGE_SIZE << order) as u64;
        }
    }
    v
}

fn space_len() -> usize {
    LAYOUT.iter().map(|(o, n)| (PAGE_SIZE << o) * n).sum()
}

fn pattern_word(page: usize, w: usize) -> u64 {
    let mut x = (page as u64) << 20 ^ w as u64 ^ 0xA5A5_5A5A_DEAD_BEEF;
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}

/// Pages with writer slots: every 4th page; the others keep a fixed pattern.
fn is_writer_page(page: usize) -> bool {
    page % 4 == 0
}

#[derive(Default)]
struct Totals {
    ops: AtomicU64,
    poisoned_reads: AtomicU64,
    lost: AtomicU64,
    torn: AtomicU64,
    mismatches: AtomicU64,
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

fn accessor_loop(
    sp: Arc<AddressSpace>,
    id: usize,
    nr: usize,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    rng_seed: u64,
) {
    let acc = sp.accessor();
    let nr_pages = space_len() / PAGE_SIZE;
    let mine: Vec<usize> = (0..nr_pages)
        .filter(|p| is_writer_page(*p) && (p / 4) % nr == id)
        .collect();
    let mut last = vec![0u64; mine.len()];
    let slot = |p: usize| VirtAddr(BASE + (p * PAGE_SIZE + (p * 16) % PAGE_SIZE) as u64);
    let rng = SharedRng::new(rng_seed);
    let mut seq = 1u64;
    let mut ops = 0u64;
    let check = |p: usize, expect: u64| -> (u64, u64, u64) {
        let mut b = [0u8; 16];
        match acc.read(slot(p), &mut b) {
            Err(Errno::HwPoison) => (0, 0, 1),
            Err(e) => panic!("accessor read failed: {e}"),
            Ok(()) => {
                let v = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                let c = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
                let torn = (c != !v ^ p as u64) as u64;
                let lost = (v != expect) as u64;
                (lost, torn, 0)
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        for (k, &p) in mine.iter().enumerate() {
            let (lost, torn, pois) = check(p, last[k]);
            t.lost.fetch_add(lost, Ordering::Relaxed);
            t.torn.fetch_add(torn, Ordering::Relaxed);
            t.poisoned_reads.fetch_add(pois, Ordering::Relaxed);
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&seq.to_le_bytes());
            b[8..].copy_from_slice(&(!seq ^ p as u64).to_le_bytes());
            acc.write(slot(p), &b).expect("accessor write");
            last[k] = seq;
            ops += 2;
        }
        seq += 1;
        t.ops.fetch_add(ops, Ordering::Relaxed);
        ops = 0;
        // A few reads of pattern pages.
        for _ in 0..8 {
            let p = rng.below(nr_pages);
            if is_writer_page(p) {
                continue;
            }
            let w = rng.below(PAGE_SIZE / 8);
            match acc.read_u64(VirtAddr(BASE + (p * PAGE_SIZE + w * 8) as u64)) {
                Ok(v) => {
                    if v != pattern_word(p, w) {
                        t.mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(Errno::HwPoison) => {
                    t.poisoned_reads.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("accessor read failed: {e}"),
            }
            ops += 1;
        }
    }
    // Final check: every slot holds the last value written (retry poisoned reads).
    for (k, &p) in mine.iter().enumerate() {
        loop {
            let (lost, torn, pois) = check(p, last[k]);
            if pois == 1 {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            t.lost.fetch_add(lost, Ordering::Relaxed);
            t.torn.fetch_add(torn, Ordering::Relaxed);
            break;
        }
    }
    t.ops.fetch_add(ops, Ordering::Relaxed);
}

fn migrator_loop(
    mm: Arc<Memory>,
    sp: Arc<AddressSpace>,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    seed: u64,
) {
    let rng = SharedRng::new(seed);
    let starts = folio_starts();
    let modes = [Mode::Async, Mode::SyncLight, Mode::Sync];
    let reasons = [
        Reason::Demotion,
        Reason::Syscall,
        Reason::Compaction,
        Reason::NumaMisplaced,
        Reason::LongtermPin,
    ];
    while !stop.load(Ordering::Relaxed) {
        let mut list = Vec::new();
        for &(va, _) in &starts {
            if !rng.chance(0.25) {
                continue;
            }
            if let Some(f) = sp.folio_at(VirtAddr(va)) {
                if mm.isolate_folio(f).is_ok() {
                    list.push(f);
                }
            }
        }
        if list.is_empty() {
            continue;
        }
        let mode = modes[rng.below(modes.len())];
        let reason = reasons[rng.below(reasons.len())];
        let mut alloc = |mm: &Memory, src: Folio| {
            let f = mm.folio(src);
            let node = NodeId(1 - f.node().0);
            let flags = f.flags() & pagemig::mm::pg::HUGETLB;
            mm.alloc_folio(node, f.order(), flags).ok()
        };
        let res = migrate_pages(&mm, &mut list, &mut alloc, None, mode, reason)
            .expect("stress lists are valid");
        t.migrate_calls.fetch_add(1, Ordering::Relaxed);
        t.migrated
            .fetch_add(res.stats.nr_succeeded as u64, Ordering::Relaxed);
        {
            let mut f = t.failed.lock().ignore_poison();
            for (e, n) in res.stats.failures_by_errno() {
                *f.entry(e.name().into()).or_default() += n as u64;
            }
        }
        if let Err(e) = res.rc {
            *t.calls_failed
                .lock()
                .ignore_poison()
                .entry(e.name().into())
                .or_default() += 1;
        }
        mm.putback_movable_pages(&mut list);
    }
}

fn chaos_loop(
    mm: Arc<Memory>,
    sp: Arc<AddressSpace>,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    inject: Vec<(FaultKind, f64)>,
    starts: Vec<(u64, u8)>,
    seed: u64,
) {
    let rng = SharedRng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_micros(200));
        for &(k, rate) in &inject {
            if !matches!(
                k,
                FaultKind::Eagain | FaultKind::Lock | FaultKind::Writeback | FaultKind::Poison
            ) || !rng.chance(rate)
            {
                continue;
            }
            let (va, order) = starts[rng.below(starts.len())];
            let Some(f) = sp.get_folio(VirtAddr(va)) else {
                continue;
            };
            let fr = mm.folio(f);
            match k {
                FaultKind::Eagain => std::thread::sleep(Duration::from_micros(500)),
                FaultKind::Lock => {
                    if fr.trylock() {
                        std::thread::sleep(Duration::from_micros(500));
                        fr.unlock();
                    } else {
                        fr.put();
                        continue;
                    }
                }
                FaultKind::Writeback => {
                    // Writeback starts under the folio lock, as in the kernel.
                    if fr.trylock() {
                        fr.start_writeback();
                        fr.unlock();
                        std::thread::sleep(Duration::from_micros(500));
                        fr.end_writeback();
                    } else {
                        fr.put();
                        continue;
                    }
                }
                FaultKind::Poison => {
                    let nr = fr.nr_pages().min(1 << order);
                    let pfn = Pfn(f.pfn().0 + rng.below(nr) as u64);
                    let _ = mm.inject_hwpoison(pfn);
                    // Drop the reference while the page is poisoned, so migrations reach
                    // the copy (and fail with EHWPOISON) instead of stopping at EAGAIN.
                    // The frame stays this folio's: a poisoned source cannot be copied.
                    fr.put();
                    std::thread::sleep(Duration::from_millis(2));
                    let _ = mm.clear_hwpoison(pfn);
                    t.inject(k);
                    continue;
                }
                _ => {}
            }
            fr.put();
            t.inject(k);
        }
    }
}

fn rate(inject: &[(FaultKind, f64)], k: FaultKind) -> f64 {
    inject
        .iter()
        .find(|(x, _)| *x == k)
        .map_or(0.0, |(_, r)| *r)
}

fn engine_knobs(spec: EngineSpec, inject: &[(FaultKind, f64)]) -> Vec<(String, String)> {
    let mut knobs = Vec::new();
    let every = |r: f64| ((1.0 / r).round() as u64).max(1).to_string();
    match spec {
        EngineSpec::MtCopy(_) => {
            let r = rate(inject, FaultKind::Engine);
            if r > 0.0 {
                knobs.push(("inject_fail_every".into(), every(r)));
            }
        }
        EngineSpec::Dcbm(_) => {
            let r = rate(inject, FaultKind::Engine);
            if r > 0.0 {
                knobs.push(("dma.fail_every".into(), every(r)));
            }
            let r = rate(inject, FaultKind::Timeout);
            if r > 0.0 {
                knobs.push(("dma.stall_every".into(), every(r)));
                knobs.push(("dma.stall_ms".into(), "50".into()));
                knobs.push(("timeout_ms".into(), "5".into()));
            }
            knobs.push(("max_desc_bytes".into(), "65536".into()));
        }
        _ => {}
    }
    knobs
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

/// Folios failed by errno, and calls failed by errno.
fn failures(totals: &Totals) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let get = |m: &Mutex<BTreeMap<String, u64>>| m.lock().ignore_poison().clone();
    (get(&totals.failed), get(&totals.calls_failed))
}

/// Runs the stress for one engine.
pub fn run_one(spec: EngineSpec, o: &StressOptions) -> Result<StressReport, StressError> {
    let res_start = resources();
    let hooks = Arc::new(Hooks {
        enomem_rate: rate(&o.inject, FaultKind::Enomem),
        rng: SharedRng::new(0x1234),
        injected: AtomicU64::new(0),
        armed: AtomicBool::new(false),
    });
    let mut cfg = MemoryConfig::with_nodes(2, 2 * space_len() + (16 << 20));
    cfg.hooks = Some(hooks.clone());
    let mm = Memory::new(cfg)?;
    let sp = mm.new_space(VirtAddr(BASE), space_len())?;
    for &(va, order) in &folio_starts() {
        sp.map_anon(VirtAddr(va), NodeId(0), Order(order))?;
    }
    {
        let acc = sp.accessor();
        let mut buf = vec![0u8; PAGE_SIZE];
        for p in 0..space_len() / PAGE_SIZE {
            if is_writer_page(p) {
                let mut b = [0u8; 16];
                b[8..].copy_from_slice(&(!0u64 ^ p as u64).to_le_bytes());
                acc.write(
                    VirtAddr(BASE + (p * PAGE_SIZE + (p * 16) % PAGE_SIZE) as u64),
                    &b,
                )?;
            } else {
                for (w, c) in buf.chunks_exact_mut(8).enumerate() {
                    c.copy_from_slice(&pattern_word(p, w).to_le_bytes());
                }
                acc.write(VirtAddr(BASE + (p * PAGE_SIZE) as u64), &buf)?;
            }
        }
    }
    let engine = Engine::start(spec, &mm, &engine_knobs(spec, &o.inject))?;
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    hooks.armed.store(true, Ordering::SeqCst);
    let mut handles = Vec::new();
    for i in 0..o.accessors {
        let (sp, stop, t) = (sp.clone(), stop.clone(), totals.clone());
        let n = o.accessors;
        handles.push(std::thread::spawn(move || {
            accessor_loop(sp, i, n, stop, t, 77 + i as u64)
        }));
    }
    for i in 0..o.migrators {
        let (mm, sp, stop, t) = (mm.clone(), sp.clone(), stop.clone(), totals.clone());
        handles.push(std::thread::spawn(move || {
            migrator_loop(mm, sp, stop, t, 1000 + i as u64)
        }));
    }
    if !o.inject.is_empty() {
        let (mm, sp, stop, t, inj) = (
            mm.clone(),
            sp.clone(),
            stop.clone(),
            totals.clone(),
            o.inject.clone(),
        );
        handles.push(std::thread::spawn(move || {
            chaos_loop(mm, sp, stop, t, inj, folio_starts(), 5)
        }));
    }
    let t0 = Instant::now();
    let control_error = control_loop(&engine, o, &totals, 99, || {
        format!(
            "[{spec} {:>5.0}s] ops {} pages migrated {} failed {:?} lost {} torn {} mismatches {}",
            t0.elapsed().as_secs_f64(),
            totals.ops.load(Ordering::Relaxed),
            totals.migrated.load(Ordering::Relaxed),
            totals.failed.lock().ignore_poison().clone(),
            totals.lost.load(Ordering::Relaxed),
            totals.torn.load(Ordering::Relaxed),
            totals.mismatches.load(Ordering::Relaxed),
        )
    });
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join()
            .map_err(|_| StressError::ThreadPanicked("a stress thread"))?;
    }
    hooks.armed.store(false, Ordering::SeqCst);
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(e) = control_error {
        return Err(e);
    }
    // Pattern pages, checked once more in full.
    {
        let acc = sp.accessor();
        let mut buf = vec![0u8; PAGE_SIZE];
        for p in (0..space_len() / PAGE_SIZE).filter(|p| !is_writer_page(*p)) {
            acc.read(VirtAddr(BASE + (p * PAGE_SIZE) as u64), &mut buf)?;
            if buf
                .chunks_exact(8)
                .enumerate()
                .any(|(w, c)| u64::from_le_bytes(c.try_into().expect("8")) != pattern_word(p, w))
            {
                totals.mismatches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let engine_counters: BTreeMap<String, u64> = engine
        .counters()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    engine.stop()?;
    drop(sp);
    let leaked = (mm.nr_pages_total() - mm.nr_free_pages_total()) as u64;
    let injected = injected_faults(&totals, &hooks, o, spec, &engine_counters);
    drop(mm);
    let (failed, calls_failed) = failures(&totals);
    Ok(StressReport {
        engine: spec.to_string(),
        seconds,
        operations: totals.ops.load(Ordering::Relaxed),
        migrate_calls: totals.migrate_calls.load(Ordering::Relaxed),
        pages_migrated: totals.migrated.load(Ordering::Relaxed),
        folios_failed_by_errno: failed,
        calls_failed_by_errno: calls_failed,
        faults_injected: injected,
        poisoned_reads: totals.poisoned_reads.load(Ordering::Relaxed),
        lost_writes: totals.lost.load(Ordering::Relaxed),
        torn_reads: totals.torn.load(Ordering::Relaxed),
        content_mismatches: totals.mismatches.load(Ordering::Relaxed),
        leaked_frames: leaked,
        resources_start: res_start,
        resources_end: resources(),
        engine_counters,
    })
}

/// Regions of the live stress: (folio order, bytes).
const LIVE_LAYOUT: &[(u8, usize)] = &[(0, 4 << 20), (2, 2 << 20), (9, 4 << 20)];
/// Records (8 words) per page of a live region; writer `i` of `n` owns records `i mod n`.
const LIVE_RECS: usize = 8;

fn live_word(rec: usize, seq: u64, k: usize) -> u64 {
    (seq << 24) ^ ((rec as u64) << 4) ^ k as u64 ^ 0x5A5A_0000_0000_0000
}

/// Writer threads of the live stress: sequence-numbered records of 8 words, each checked
/// whole before the next write (a lost write or a torn record shows as a mismatch).
fn live_writer(
    regions: Arc<Vec<pagemig_live::LiveRegion>>,
    me: usize,
    n: usize,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    seed: u64,
) -> Vec<Vec<u64>> {
    let rng = SharedRng::new(seed);
    let mut seqs: Vec<Vec<u64>> = regions
        .iter()
        .map(|r| vec![0; r.len() / PAGE_SIZE * LIVE_RECS])
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let ri = rng.below(regions.len());
        let words = regions[ri].words();
        let nrec = seqs[ri].len();
        let rec = (rng.below(nrec / n) * n + me).min(nrec - 1);
        if rec % n != me {
            continue;
        }
        let base = rec * 8;
        let seq = seqs[ri][rec];
        let mut torn = false;
        let mut lost = false;
        for k in 0..8 {
            let v = words[base + k].load(Ordering::Relaxed);
            if v != live_word(rec, seq, k) {
                if k > 0 && !lost {
                    torn = true;
                } else {
                    lost = true;
                }
            }
        }
        if lost {
            t.lost.fetch_add(1, Ordering::Relaxed);
        } else if torn {
            t.torn.fetch_add(1, Ordering::Relaxed);
        }
        for k in 0..8 {
            words[base + k].store(live_word(rec, seq + 1, k), Ordering::Relaxed);
        }
        seqs[ri][rec] = seq + 1;
        t.ops.fetch_add(1, Ordering::Relaxed);
    }
    seqs
}

/// Migrating threads of the live stress: `move_pages(2)` of random runs of pages to a
/// random node.
fn live_migrator(
    regions: Arc<Vec<pagemig_live::LiveRegion>>,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    seed: u64,
) {
    let rng = SharedRng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let r = &regions[rng.below(regions.len())];
        let fb = r.folio_bytes();
        let nf = r.len() / fb;
        let first = rng.below(nf);
        let count = 1 + rng.below((nf - first).min(512 * PAGE_SIZE / fb).max(1));
        let addrs: Vec<usize> = (first..first + count).map(|i| r.addr() + i * fb).collect();
        let node = rng.below(2) as i32;
        let mut status = vec![0; addrs.len()];
        t.migrate_calls.fetch_add(1, Ordering::Relaxed);
        match r.move_pages(
            &addrs,
            Some(&vec![node; addrs.len()]),
            &mut status,
            pagemig_live::MPOL_MF_MOVE,
        ) {
            Ok(0) => {
                let moved = status.iter().filter(|&&s| s == node).count();
                t.migrated
                    .fetch_add((moved * fb / PAGE_SIZE) as u64, Ordering::Relaxed);
                let mut f = t.failed.lock().ignore_poison();
                for &s in status.iter().filter(|&&s| s < 0) {
                    *f.entry(format!("status {}", crate::stress::errno_name(-s)))
                        .or_default() += 1;
                }
            }
            Ok(left) => {
                *t.failed
                    .lock()
                    .ignore_poison()
                    .entry("not migrated (call aborted)".into())
                    .or_default() += left as u64;
            }
            Err(e) => {
                *t.calls_failed
                    .lock()
                    .ignore_poison()
                    .entry(e.name().into())
                    .or_default() += 1;
            }
        }
    }
}

/// `errno` name of a positive error number, for status codes.
pub(crate) fn errno_name(e: i32) -> &'static str {
    pagemig::Errno::ALL
        .iter()
        .find(|x| x.errno() == e)
        .map_or("other", |x| x.name())
}

/// Runs the live-backend stress for one engine: writer threads on this process's own
/// memory while migrating threads move its pages between nodes, with faults injected.
pub fn run_live(spec: EngineSpec, o: &StressOptions) -> Result<StressReport, StressError> {
    let res_start = resources();
    let hooks = Arc::new(Hooks {
        enomem_rate: rate(&o.inject, FaultKind::Enomem),
        rng: SharedRng::new(0x4321),
        injected: AtomicU64::new(0),
        armed: AtomicBool::new(false),
    });
    let total: usize = LIVE_LAYOUT.iter().map(|(_, b)| b).sum();
    let mut cfg = MemoryConfig::with_nodes(2, 2 * total + (16 << 20));
    cfg.hooks = Some(hooks.clone());
    let mm = Memory::new(cfg)?;
    let live = pagemig_live::Live::new(&mm, pagemig_live::LiveConfig::default())?;
    let mut regions = Vec::new();
    for &(order, bytes) in LIVE_LAYOUT {
        let r = live.region(pagemig_live::RegionConfig::new(bytes, order))?;
        r.populate()?;
        for rec in 0..r.len() / PAGE_SIZE * LIVE_RECS {
            for k in 0..8 {
                r.words()[rec * 8 + k].store(live_word(rec, 0, k), Ordering::Relaxed);
            }
        }
        regions.push(r);
    }
    let regions = Arc::new(regions);
    let engine = Engine::start(spec, &mm, &engine_knobs(spec, &o.inject))?;
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    hooks.armed.store(true, Ordering::SeqCst);
    let writers: Vec<_> = (0..o.accessors)
        .map(|i| {
            let (r, stop, t) = (regions.clone(), stop.clone(), totals.clone());
            let n = o.accessors;
            std::thread::spawn(move || live_writer(r, i, n, stop, t, 77 + i as u64))
        })
        .collect();
    let mut handles = Vec::new();
    for i in 0..o.migrators {
        let (r, stop, t) = (regions.clone(), stop.clone(), totals.clone());
        handles.push(std::thread::spawn(move || {
            live_migrator(r, stop, t, 1000 + i as u64)
        }));
    }
    if !o.inject.is_empty() {
        for (k, r) in regions.iter().enumerate() {
            let starts: Vec<(u64, u8)> = (0..r.len() / r.folio_bytes())
                .map(|i| {
                    (
                        (r.addr() + i * r.folio_bytes()) as u64,
                        r.folio_bytes().trailing_zeros() as u8 - 12,
                    )
                })
                .collect();
            let (mm, sp, stop, t, inj) = (
                mm.clone(),
                r.space().clone(),
                stop.clone(),
                totals.clone(),
                o.inject.clone(),
            );
            handles.push(std::thread::spawn(move || {
                chaos_loop(mm, sp, stop, t, inj, starts, 5 + k as u64)
            }));
        }
    }
    let t0 = Instant::now();
    let control_error = control_loop(&engine, o, &totals, 98, || {
        format!(
            "[live {spec} {:>5.0}s] ops {} pages migrated {} lost {} torn {} {:?}",
            t0.elapsed().as_secs_f64(),
            totals.ops.load(Ordering::Relaxed),
            totals.migrated.load(Ordering::Relaxed),
            totals.lost.load(Ordering::Relaxed),
            totals.torn.load(Ordering::Relaxed),
            live.counts(),
        )
    });
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join()
            .map_err(|_| StressError::ThreadPanicked("a stress thread"))?;
    }
    let mut seqs = Vec::new();
    for h in writers {
        seqs.push(
            h.join()
                .map_err(|_| StressError::ThreadPanicked("a writer thread"))?,
        );
    }
    hooks.armed.store(false, Ordering::SeqCst);
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(e) = control_error {
        return Err(e);
    }
    // Every record holds its writer's last write, whole.
    let n = o.accessors;
    for (ri, r) in regions.iter().enumerate() {
        for rec in 0..r.len() / PAGE_SIZE * LIVE_RECS {
            let seq = seqs[rec % n][ri][rec];
            if (0..8)
                .any(|k| r.words()[rec * 8 + k].load(Ordering::Relaxed) != live_word(rec, seq, k))
            {
                totals.mismatches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let lc = live.counts();
    let mut engine_counters: BTreeMap<String, u64> = engine
        .counters()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for (k, v) in [
        ("live.faults", lc.faults),
        ("live.faults_on_migration", lc.faults_on_migration),
        ("live.unmap_ioctls", lc.unmap_ioctls),
        ("live.remap_ioctls", lc.remap_ioctls),
        ("live.unmap_failures", lc.unmap_failures),
        ("live.stray_faults", lc.stray_faults),
        ("live.remap_errors", lc.remap_errors),
        ("live.remap_retries", lc.remap_retries),
    ] {
        engine_counters.insert(k.into(), v);
    }
    // A stray fault or a failed move into the program is a backend bug: count it as loss.
    totals
        .mismatches
        .fetch_add(lc.stray_faults + lc.remap_errors, Ordering::Relaxed);
    engine.stop()?;
    drop(regions);
    drop(live);
    let leaked = (mm.nr_pages_total() - mm.nr_free_pages_total()) as u64;
    let injected = injected_faults(&totals, &hooks, o, spec, &engine_counters);
    drop(mm);
    let (failed, calls_failed) = failures(&totals);
    Ok(StressReport {
        engine: format!("live {spec}"),
        seconds,
        operations: totals.ops.load(Ordering::Relaxed),
        migrate_calls: totals.migrate_calls.load(Ordering::Relaxed),
        pages_migrated: totals.migrated.load(Ordering::Relaxed),
        folios_failed_by_errno: failed,
        calls_failed_by_errno: calls_failed,
        faults_injected: injected,
        poisoned_reads: 0,
        lost_writes: totals.lost.load(Ordering::Relaxed),
        torn_reads: totals.torn.load(Ordering::Relaxed),
        content_mismatches: totals.mismatches.load(Ordering::Relaxed),
        leaked_frames: leaked,
        resources_start: res_start,
        resources_end: resources(),
        engine_counters,
    })
}
