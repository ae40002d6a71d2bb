//! `pagemig bench`: migrate folios between node 0 and node 1 and report GB/s per folio
//! size and engine, next to this machine's copy limit measured in the same run. The folios
//! are the built-in backend's, or (`--backend live`) this process's own memory, moved with
//! userfaultfd while its threads may keep using it.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use pagemig::live::{Live, LiveConfig, LiveCounts, LiveRegion, RegionConfig};
use pagemig::migrate::{alloc_on_node, migrate_pages, Mode, PhaseTimes, Reason};
use pagemig::mm::{
    AddressSpace, Folio, Memory, MemoryConfig, NodeId, Order, VirtAddr, HPAGE_PMD_ORDER,
};
use pagemig_engines::{Engine, EngineCache};
use serde::Serialize;

use crate::spec::{format_size, EngineSpec};

/// Options of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Folio sizes in bytes.
    pub sizes: Vec<usize>,
    /// Bytes moved per migration.
    pub total_bytes: usize,
    /// Engines to compare.
    pub engines: Vec<EngineSpec>,
    /// Migrations per (size, engine).
    pub runs: usize,
    /// `NR_MAX_BATCHED_MIGRATION` values to measure, in base pages.
    pub batch_pages: Vec<usize>,
    /// Accessor threads reading the workload during the migrations (stall times).
    pub accessors: usize,
    /// Keep the auto engine's calibration for the report.
    pub explain: bool,
    /// Migration mode (the series measured `move_pages(2)`: `Sync`).
    pub mode: Mode,
    /// Show a progress bar on stderr (only if it is a terminal).
    pub verbose: bool,
    /// Knobs: (engine family, name, value).
    pub knobs: Vec<(String, String, String)>,
    /// Memory backend.
    pub backend: Backend,
    /// Live backend: batch the kernel calls (one `UFFDIO_MOVE` per contiguous run) or make
    /// one per folio.
    pub live_batch_moves: bool,
}

/// Which memory the benchmark migrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-process memory model.
    Builtin,
    /// This process's own memory, through userfaultfd.
    Live,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Builtin => "builtin",
            Backend::Live => "live",
        }
    }
}

/// Kernel calls of the live backend per migration (means over runs).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LiveRunStats {
    /// Kernel calls were batched per contiguous run.
    pub batch_moves: bool,
    /// `UFFDIO_MOVE` calls taking pages out of the program (each is one kernel TLB flush).
    pub unmap_calls: f64,
    /// `UFFDIO_MOVE` calls putting pages back.
    pub remap_calls: f64,
    /// Page faults the handler served.
    pub faults: f64,
}

/// The machine section of the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// Copy limit in GB/s keyed by thread count.
    pub copy_limit_gbps: std::collections::BTreeMap<String, f64>,
    /// Every single-thread pass of the copy limit (GB/s), in order.
    pub copy_limit_samples_1t: Vec<f64>,
    /// The copy primitive in use.
    pub copy_primitive: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// Host NUMA nodes.
    pub host_numa_nodes: usize,
}

/// Per-phase times (mean over runs, ns per migration).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhasesNs {
    /// Unmap loop.
    pub unmap: u64,
    /// TLB flush.
    pub flush: u64,
    /// Batch copy.
    pub copy: u64,
    /// Move loop (includes per-folio CPU copies).
    pub r#move: u64,
}

/// One (engine, folio size) result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// `builtin`.
    pub backend: String,
    /// Engine name.
    pub engine: String,
    /// Threads or channels.
    pub width: usize,
    /// Folio size in bytes.
    pub folio_size: usize,
    /// `NR_MAX_BATCHED_MIGRATION` of this result.
    pub batch_pages: usize,
    /// Folios per migration.
    pub nr_folios: usize,
    /// Mean throughput.
    pub gbps_mean: f64,
    /// Standard deviation.
    pub gbps_sd: f64,
    /// Each run's throughput, in the order the runs were made.
    pub gbps_runs: Vec<f64>,
    /// Mean as a fraction of the single-thread copy limit.
    pub frac_of_limit: f64,
    /// Mean as a fraction of the copy limit with as many threads as the engine's width
    /// (capped at the CPUs measured).
    pub frac_of_width_limit: f64,
    /// The engine's own counters after the last run (folios_migrated, ...), summed over runs.
    pub engine_counters: std::collections::BTreeMap<String, u64>,
    /// Folios not migrated, summed over runs.
    pub nr_failed: usize,
    /// Mean phase times.
    pub phases_ns: PhasesNs,
    /// Folios whose copy came from the batch copy, summed over runs.
    pub nr_copied_by_batch: usize,
    /// TLB flushes per migration (mean).
    pub tlb_flushes_per_run: f64,
    /// Mean time per batch from its first unmap until its first folio was usable again.
    pub first_usable_us: f64,
    /// Mean time per batch from its first unmap until its last folio was usable again.
    pub last_usable_us: f64,
    /// Worst batch's last-folio time.
    pub last_usable_us_max: f64,
    /// Accessor waits on migration entries recorded.
    pub nr_stalls: usize,
    /// Median wait.
    pub stall_p50_us: f64,
    /// 99th percentile wait.
    pub stall_p99_us: f64,
    /// Longest wait.
    pub stall_max_us: f64,
    /// Runs.
    pub runs: usize,
    /// Live backend only: its kernel calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveRunStats>,
}

/// The JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Machine facts and limits.
    pub machine: MachineInfo,
    /// Bytes moved per migration.
    pub total_bytes: usize,
    /// Batch size of the main tables, in base pages.
    pub batch_pages: usize,
    /// Every batch size measured.
    pub batch_pages_list: Vec<usize>,
    /// Accessor threads that read during the migrations.
    pub accessors: usize,
    /// The auto engine's calibration, with `--explain`.
    pub explain: Option<String>,
    /// Mode name.
    pub mode: String,
    /// `builtin` or `live`.
    pub backend: String,
    /// Results.
    pub results: Vec<BenchResult>,
    /// `auto` against the fixed engines of this run, per folio size (main batch size);
    /// empty without `auto`.
    pub auto_ratios: Vec<AutoRatios>,
}

/// One engine's mean throughput divided by another's, with an approximate 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    /// The ratio of the two means.
    pub ratio: f64,
    /// The 95% interval, `[lo, hi]`; `None` with fewer than two runs on a side.
    pub interval: Option<[f64; 2]>,
}

impl Ratio {
    /// `mean(a) / mean(b)` for two sets of independent runs, with the 95% interval that
    /// their spread gives: the delta method on the ratio's logarithm (whose variance is
    /// about `cv_a²/n_a + cv_b²/n_b`, cv the coefficient of variation of one run) and
    /// Student's t with Welch's degrees of freedom. On the development machine a run's
    /// GB/s moves by ~10%, independently from run to run and from engine to engine, so
    /// the interval says how far a ratio from runs of this length can be trusted. `None`
    /// if either side is empty or its mean is not positive.
    pub fn of_runs(a: &[f64], b: &[f64]) -> Option<Ratio> {
        if a.is_empty() || b.is_empty() {
            return None;
        }
        let (ma, sa) = mean_sd(a);
        let (mb, sb) = mean_sd(b);
        if !(ma > 0.0 && mb > 0.0) {
            return None;
        }
        let ratio = ma / mb;
        let interval = (a.len() > 1 && b.len() > 1).then(|| {
            let (na, nb) = (a.len() as f64, b.len() as f64);
            let (va, vb) = ((sa / ma).powi(2) / na, (sb / mb).powi(2) / nb);
            let var = va + vb;
            if var == 0.0 {
                return [ratio, ratio];
            }
            let df = var * var / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
            let half = t975(df) * var.sqrt();
            [ratio * (-half).exp(), ratio * half.exp()]
        });
        Some(Ratio { ratio, interval })
    }

    /// `0.97 [0.92, 1.02]`, or the ratio alone without an interval.
    pub fn text(&self) -> String {
        match self.interval {
            Some([lo, hi]) => format!("{:.2} [{lo:.2}, {hi:.2}]", self.ratio),
            None => format!("{:.2}", self.ratio),
        }
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (Cornish–Fisher
/// expansion around the normal quantile, five terms; within 0.004 of the exact value from
/// 3 degrees of freedom on, 0.04 at 2, rough below).
fn t975(df: f64) -> f64 {
    let z: f64 = 1.959_964;
    let df = df.max(1.0);
    z + (z.powi(3) + z) / (4.0 * df)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * df * df)
        + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / (384.0 * df.powi(3))
        + (79.0 * z.powi(9) + 776.0 * z.powi(7) + 1482.0 * z.powi(5)
            - 1920.0 * z.powi(3)
            - 945.0 * z)
            / (92160.0 * df.powi(4))
}

/// `auto` at one folio size against the fixed engines measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct AutoRatios {
    /// Folio size in bytes.
    pub folio_size: usize,
    /// The fixed engine with the highest mean at this size.
    pub best_engine: String,
    /// auto ÷ that engine. Picking the highest of several close means favours the engine
    /// picked (its mean is the one most lifted by noise), so this leans low by up to about
    /// one standard error where two engines tie.
    pub vs_best: Ratio,
    /// auto ÷ `batch`, where `batch` was measured.
    pub vs_batch: Option<Ratio>,
}

/// Benchmark failures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Setting up memory failed.
    #[error("memory setup: {0}")]
    Mm(#[from] pagemig::mm::MmError),
    /// Engine setup failed.
    #[error("engine setup: {0}")]
    Engine(#[from] pagemig_engines::ParamError),
    /// A driver's counters disagree with what the core handed it.
    #[error("engine {engine}: counters do not add up: {detail}")]
    Counters {
        /// engine
        engine: String,
        /// what disagreed
        detail: String,
    },
    /// The live backend cannot run here.
    #[error("live backend: {0}")]
    Live(#[from] pagemig::live::LiveError),
    /// Content did not survive migration.
    #[error("checksum mismatch after migration: engine {engine}, folio size {size}, {nr_bad} folio(s) differ")]
    Mismatch {
        /// engine
        engine: String,
        /// folio size
        size: String,
        /// number of bad folios
        nr_bad: usize,
    },
    /// A folio ended on the wrong node.
    #[error(
        "engine {engine}: {nr} folio(s) not on node {node} after a migration that reported success"
    )]
    Misplaced {
        /// engine
        engine: String,
        /// count
        nr: usize,
        /// expected node
        node: u32,
    },
}

const SPACE_BASE: u64 = 0x10_0000_0000;

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Source and destination 2 MiB folios for measuring the single-thread copy limit with
/// the copy primitive the engines use.
pub struct CopyLimitProbe {
    src: Vec<Folio>,
    dst: Vec<Folio>,
    samples: Vec<f64>,
    /// Samples with every CPU copying its share at once, keyed by thread count.
    samples_mt: std::collections::BTreeMap<usize, Vec<f64>>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl CopyLimitProbe {
    /// Allocates `total` bytes of 2 MiB folios on node 0 (filled) and node 1.
    pub fn new(mm: &Memory, total: usize) -> Result<CopyLimitProbe, BenchError> {
        let n = (total / (2 << 20)).max(1);
        let mut src = Vec::with_capacity(n);
        let mut dst = Vec::with_capacity(n);
        for i in 0..n {
            let s = mm.alloc_folio(NodeId(0), Order(HPAGE_PMD_ORDER), 0)?;
            mm.folio_fill(s, i as u64);
            src.push(s);
            dst.push(mm.alloc_folio(NodeId(1), Order(HPAGE_PMD_ORDER), 0)?);
        }
        Ok(CopyLimitProbe {
            src,
            dst,
            samples: Vec::new(),
            samples_mt: Default::default(),
        })
    }

    /// One pass with `t` threads, each copying a contiguous share of the pairs at once.
    pub fn sample_threads(&mut self, mm: &Memory, t: usize) -> f64 {
        if t <= 1 {
            return self.sample(mm);
        }
        let n = self.src.len();
        let t0 = Instant::now();
        std::thread::scope(|sc| {
            for j in 0..t {
                let (a, b) = (n * j / t, n * (j + 1) / t);
                let (src, dst) = (&self.src[a..b], &self.dst[a..b]);
                sc.spawn(move || {
                    for (d, s) in dst.iter().zip(src) {
                        mm.folio_mc_copy(*d, *s)
                            .expect("fresh folios are not poisoned");
                    }
                    pagemig::copy::store_fence();
                });
            }
        });
        let gbps = (n * (2 << 20)) as f64 / t0.elapsed().as_secs_f64() / 1e9;
        self.samples_mt.entry(t).or_default().push(gbps);
        gbps
    }

    /// Median limit with `t` threads.
    pub fn limit_threads(&self, t: usize) -> f64 {
        if t <= 1 {
            return self.limit();
        }
        self.samples_mt.get(&t).map_or(0.0, |v| median(v))
    }

    /// One pass: copies every pair once and records GB/s.
    pub fn sample(&mut self, mm: &Memory) -> f64 {
        let t = Instant::now();
        for (d, s) in self.dst.iter().zip(&self.src) {
            mm.folio_mc_copy(*d, *s)
                .expect("fresh folios are not poisoned");
        }
        pagemig::copy::store_fence();
        let gbps = (self.src.len() * (2 << 20)) as f64 / t.elapsed().as_secs_f64() / 1e9;
        self.samples.push(gbps);
        gbps
    }

    /// The median of all passes: the limit the results are compared with.
    pub fn limit(&self) -> f64 {
        median(&self.samples)
    }

    /// Frees the folios.
    pub fn release(self, mm: &Memory) {
        for f in self.src.into_iter().chain(self.dst) {
            mm.folio_put(f);
        }
    }
}

struct Workload {
    space: Arc<AddressSpace>,
    /// The live region, when the folios are this process's memory.
    region: Option<Arc<LiveRegion>>,
    base: u64,
    folio_size: usize,
    nr_folios: usize,
    sums: Vec<u64>,
    node: NodeId,
}

/// Checksum of a live folio, read through the program's own mapping (the arena checksum's
/// four interleaved FNV-1a lanes, so that it runs at memory speed).
fn words_checksum(w: &[std::sync::atomic::AtomicU64]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut lanes = [0xcbf2_9ce4_8422_2325u64; 4];
    let chunks = w.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for (h, x) in lanes.iter_mut().zip(c) {
            *h = (*h ^ x.load(Ordering::Relaxed)).wrapping_mul(PRIME);
        }
    }
    let h = lanes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, l| (h ^ l).wrapping_mul(PRIME));
    tail.iter().fold(h, |h, x| {
        (h ^ x.load(Ordering::Relaxed)).wrapping_mul(PRIME)
    })
}

impl Workload {
    fn new(mm: &Arc<Memory>, folio_size: usize, total: usize) -> Result<Workload, BenchError> {
        let order = Order::from_bytes(folio_size).expect("validated folio size");
        let nr_folios = total / folio_size;
        let space = mm.new_space(VirtAddr(SPACE_BASE), total)?;
        let mut sums = Vec::with_capacity(nr_folios);
        for i in 0..nr_folios {
            let va = VirtAddr(SPACE_BASE + (i * folio_size) as u64);
            let f = space.map_anon(va, NodeId(0), order)?;
            mm.folio_fill(f, 0x5eed ^ i as u64);
            sums.push(mm.folio_checksum(f));
        }
        Ok(Workload {
            space,
            region: None,
            base: SPACE_BASE,
            folio_size,
            nr_folios,
            sums,
            node: NodeId(0),
        })
    }

    /// A live region of `total` bytes, populated from node 0 and filled by this thread.
    fn new_live(
        live: &Live,
        folio_size: usize,
        total: usize,
        batch_moves: bool,
    ) -> Result<Workload, BenchError> {
        let order = Order::from_bytes(folio_size).expect("validated folio size");
        let mut cfg = RegionConfig::new(total, order.0);
        cfg.batch_moves = batch_moves;
        let region = Arc::new(live.region(cfg)?);
        region.populate()?;
        let nr_folios = total / folio_size;
        let per = folio_size / 8;
        let words = region.words();
        let mut sums = Vec::with_capacity(nr_folios);
        for i in 0..nr_folios {
            let w = &words[i * per..(i + 1) * per];
            let seed = 0x5eed ^ i as u64;
            for (j, x) in w.iter().enumerate() {
                x.store(
                    seed ^ (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    Ordering::Relaxed,
                );
            }
            sums.push(words_checksum(w));
        }
        Ok(Workload {
            space: region.space().clone(),
            base: region.addr() as u64,
            region: Some(region),
            folio_size,
            nr_folios,
            sums,
            node: NodeId(0),
        })
    }

    fn folio(&self, i: usize) -> Option<Folio> {
        self.space
            .folio_at(VirtAddr(self.base + (i * self.folio_size) as u64))
    }

    fn checksum(&self, mm: &Memory, i: usize) -> u64 {
        match &self.region {
            Some(r) => {
                let per = self.folio_size / 8;
                words_checksum(&r.words()[i * per..(i + 1) * per])
            }
            None => mm.folio_checksum(self.folio(i).expect("workload folio mapped")),
        }
    }
}

struct RunOutcome {
    live: Option<LiveCounts>,
    gbps: f64,
    nr_failed: usize,
    phases: PhaseTimes,
    nr_copied_by_batch: usize,
    nr_tlb_flushes: usize,
    nr_batches: u64,
    first_usable_ns: u64,
    last_usable_ns: u64,
    last_usable_ns_max: u64,
}

fn migrate_once(
    mm: &Arc<Memory>,
    w: &mut Workload,
    mode: Mode,
    engine: &str,
) -> Result<RunOutcome, BenchError> {
    let target = NodeId(1 - w.node.0);
    let mut list = Vec::with_capacity(w.nr_folios);
    for i in 0..w.nr_folios {
        let f = w.folio(i).expect("workload folio mapped");
        mm.isolate_folio(f)?;
        list.push(f);
    }
    let mut alloc = alloc_on_node(target);
    let live0 = w.region.as_ref().map(|r| r.counts());
    let t = Instant::now();
    let res = migrate_pages(mm, &mut list, &mut alloc, None, mode, Reason::Syscall)
        .expect("bench input lists are valid");
    let secs = t.elapsed().as_secs_f64();
    let live = w.region.as_ref().zip(live0).map(|(r, a)| {
        let b = r.counts();
        LiveCounts {
            unmap_ioctls: b.unmap_ioctls - a.unmap_ioctls,
            remap_ioctls: b.remap_ioctls - a.remap_ioctls,
            faults: b.faults - a.faults,
            stray_faults: b.stray_faults - a.stray_faults,
            remap_errors: b.remap_errors - a.remap_errors,
            ..b
        }
    });
    if let Some(l) = &live {
        if l.stray_faults + l.remap_errors > 0 {
            return Err(BenchError::Counters {
                engine: engine.into(),
                detail: format!("live backend errors: {l:?}"),
            });
        }
    }
    let nr_failed = list.len();
    mm.putback_movable_pages(&mut list);
    // Verify every folio: where it is, and what it holds (on every CPU: reading 1 GiB back
    // on one thread would take longer than the migration).
    let nr_threads = pagemig::sys::nr_cpus().clamp(1, 8);
    let per = w.nr_folios.div_ceil(nr_threads);
    let wr: &Workload = w;
    let (nr_bad, nr_misplaced) = std::thread::scope(|s| {
        let parts: Vec<_> = (0..nr_threads)
            .map(|t| {
                s.spawn(move || {
                    let (mut bad, mut misplaced) = (0usize, 0usize);
                    for i in t * per..((t + 1) * per).min(wr.nr_folios) {
                        let f = wr.folio(i).expect("workload folio mapped");
                        if wr.checksum(mm, i) != wr.sums[i] {
                            bad += 1;
                        }
                        if mm.folio(f).node() != target {
                            misplaced += 1;
                        }
                    }
                    (bad, misplaced)
                })
            })
            .collect();
        parts
            .into_iter()
            .map(|p| p.join().expect("verifier thread"))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    if nr_bad > 0 {
        return Err(BenchError::Mismatch {
            engine: engine.into(),
            size: format_size(w.folio_size),
            nr_bad,
        });
    }
    if nr_misplaced > nr_failed {
        return Err(BenchError::Misplaced {
            engine: engine.into(),
            nr: nr_misplaced,
            node: target.0,
        });
    }
    w.node = if nr_failed == 0 { target } else { w.node };
    let moved = (w.nr_folios - nr_failed) * w.folio_size;
    Ok(RunOutcome {
        live,
        gbps: moved as f64 / secs / 1e9,
        nr_failed,
        phases: res.stats.phases,
        nr_copied_by_batch: res.stats.nr_copied_by_batch,
        nr_tlb_flushes: res.stats.nr_tlb_flushes,
        nr_batches: res.stats.nr_batches as u64,
        first_usable_ns: res.stats.first_usable_ns_sum,
        last_usable_ns: res.stats.last_usable_ns_sum,
        last_usable_ns_max: res.stats.last_usable_ns_max,
    })
}

fn knobs_for(opts: &BenchOptions, e: EngineSpec) -> Vec<(String, String)> {
    opts.knobs
        .iter()
        .filter(|(f, _, _)| f == e.family())
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Every folio a driver was offered is either copied by it, left to the CPU, or declined,
/// and the core took exactly the copied (and declined-but-copied) ones from the batch.
fn check_counters(
    e: EngineSpec,
    c: &std::collections::BTreeMap<String, u64>,
    offered: u64,
    nr_copied_by_batch: u64,
) -> Result<(), BenchError> {
    if !c.contains_key("folios_migrated") {
        return Ok(());
    }
    let get = |n: &str| c.get(n).copied().unwrap_or(0);
    let (migrated, failures, declined) = (
        get("folios_migrated"),
        get("folios_failures"),
        get("folios_declined"),
    );
    let err = |detail: String| {
        Err(BenchError::Counters {
            engine: e.to_string(),
            detail,
        })
    };
    if migrated + failures + declined != offered {
        return err(format!(
            "migrated {migrated} + failures {failures} + declined {declined} != offered {offered}"
        ));
    }
    if migrated + declined != nr_copied_by_batch {
        return err(format!(
            "migrated {migrated} + declined {declined} != {nr_copied_by_batch} folios whose copy the move phase took from the batch"
        ));
    }
    Ok(())
}

/// A permutation of `0..n` for run `run`: Fisher–Yates driven by xorshift64, seeded by the
/// run number (reproducible from run to run of the tool).
fn run_order(n: usize, run: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (run as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Accessor threads reading the workload while it migrates; their migration-entry
/// waits are attributed to whichever (engine, batch size) is running.
struct Readers {
    stop: Arc<AtomicBool>,
    tag: Arc<AtomicUsize>,
    samples: Arc<Mutex<Vec<(usize, u64)>>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

const NO_TAG: usize = usize::MAX;

/// A live-region access slower than this counts as a stall.
pub const LIVE_STALL_NS: u64 = 2_000;

impl Readers {
    /// Starts `n` threads. Each builds its access function with `make` (on its own
    /// thread), then calls it with random numbers until stopped; the stall times (ns) it
    /// returns are attributed to whichever (engine, batch size) is running.
    fn spawn<F, A>(n: usize, make: F) -> Readers
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
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
                    let mut local = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let w = access(x);
                        if !w.is_empty() {
                            let t = tag.load(Ordering::Relaxed);
                            if t != NO_TAG {
                                local.extend(w.into_iter().map(|ns| (t, ns)));
                            }
                        }
                    }
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(local);
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
    fn start(space: &Arc<AddressSpace>, n: usize, total: usize) -> Readers {
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
    fn start_live(region: &Arc<LiveRegion>, n: usize) -> Readers {
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

    fn finish(self) -> Vec<(usize, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn progress_bar(opts: &BenchOptions) -> ProgressBar {
    let total = (opts.sizes.len() * opts.batch_pages.len() * opts.runs * opts.engines.len()) as u64;
    if !opts.verbose || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
    {
        pb.set_style(style);
    }
    pb
}

/// Runs the benchmark.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    // Each node holds one workload plus the copy-limit probe's half.
    let slack = 8 << 20;
    let mm = Memory::new(MemoryConfig::with_nodes(2, 2 * opts.total_bytes + slack))?;
    let pb = progress_bar(opts);
    pb.set_message("measuring the copy limit");
    // The limit is sampled before the table and again between runs, so that it sees the
    // same drift of the machine's memory bandwidth as the migrations do; the median of all
    // passes is the limit.
    let nr_cpus = pagemig::sys::nr_cpus();
    let mut probe = CopyLimitProbe::new(&mm, opts.total_bytes)?;
    for _ in 0..3 {
        probe.sample(&mm);
        probe.sample_threads(&mm, nr_cpus);
    }
    let mut results = Vec::new();
    // Engines that stay loaded across runs (auto keeps what it learned).
    let mut cache = EngineCache::default();
    let live = match opts.backend {
        Backend::Live => Some(Live::new(&mm, LiveConfig::default())?),
        Backend::Builtin => None,
    };
    for &size in &opts.sizes {
        pb.set_message(format!(
            "mapping {} of {} folios",
            format_size(opts.total_bytes),
            format_size(size)
        ));
        let mut w = match &live {
            Some(l) => Workload::new_live(l, size, opts.total_bytes, opts.live_batch_moves)?,
            None => Workload::new(&mm, size, opts.total_bytes)?,
        };
        let readers = (opts.accessors > 0).then(|| match &w.region {
            Some(r) => Readers::start_live(r, opts.accessors),
            None => Readers::start(&w.space, opts.accessors, opts.total_bytes),
        });
        let combos: Vec<(usize, EngineSpec)> = opts
            .batch_pages
            .iter()
            .flat_map(|&bp| opts.engines.iter().map(move |&e| (bp, e)))
            .collect();
        let mut outs: Vec<Vec<RunOutcome>> = (0..combos.len()).map(|_| Vec::new()).collect();
        let mut counters: Vec<std::collections::BTreeMap<String, u64>> =
            (0..combos.len()).map(|_| Default::default()).collect();
        // Warm-up: one untimed migration with the first engine.
        mm.set_batch_pages(opts.batch_pages[0])?;
        let eng = Engine::start_cached(
            opts.engines[0],
            &mm,
            &knobs_for(opts, opts.engines[0]),
            Some(&mut cache),
        )?;
        migrate_once(&mm, &mut w, opts.mode, &opts.engines[0].to_string())?;
        eng.stop()?;
        for run in 0..opts.runs {
            probe.sample(&mm);
            probe.sample_threads(&mm, nr_cpus);
            // Each run goes through the engines in its own shuffled order (the same for a
            // given run number), so that no engine always comes first or always follows the
            // same one: the one before leaves its mark on the CPUs and caches, and the
            // machine drifts during a run.
            for &k in &run_order(combos.len(), run) {
                let (bp, e) = combos[k];
                pb.set_message(format!("{} {} batch {}", e, format_size(size), bp));
                mm.set_batch_pages(bp)?;
                let eng = Engine::start_cached(e, &mm, &knobs_for(opts, e), Some(&mut cache))?;
                // A cached engine (auto) counts from its creation: this run's share is the
                // difference.
                let c0: std::collections::BTreeMap<String, u64> =
                    eng.counters().into_iter().collect();
                let offered0 = mm.offload().stats().nr_folios_offered;
                if let Some(r) = &readers {
                    r.tag.store(k, Ordering::SeqCst);
                }
                let out = migrate_once(&mm, &mut w, opts.mode, &e.to_string());
                if let Some(r) = &readers {
                    r.tag.store(NO_TAG, Ordering::SeqCst);
                }
                let offered = mm.offload().stats().nr_folios_offered - offered0;
                let c: std::collections::BTreeMap<String, u64> = eng
                    .counters()
                    .into_iter()
                    .map(|(k, v)| {
                        let v0 = c0.get(&k).copied().unwrap_or(0);
                        (k, v.saturating_sub(v0))
                    })
                    .collect();
                eng.stop()?;
                let out = out?;
                check_counters(e, &c, offered, out.nr_copied_by_batch as u64)?;
                for (name, v) in c {
                    *counters[k].entry(name).or_default() += v;
                }
                outs[k].push(out);
                pb.inc(1);
            }
        }
        let stalls = readers.map(Readers::finish).unwrap_or_default();
        for (k, &(bp, e)) in combos.iter().enumerate() {
            let o = &outs[k];
            let g: Vec<f64> = o.iter().map(|o| o.gbps).collect();
            let (mean, sd) = mean_sd(&g);
            let n = o.len() as u64;
            let ph = o.iter().fold(PhaseTimes::default(), |mut a, o| {
                a.unmap_ns += o.phases.unmap_ns;
                a.flush_ns += o.phases.flush_ns;
                a.copy_ns += o.phases.copy_ns;
                a.move_ns += o.phases.move_ns;
                a
            });
            let nr_batches: u64 = o.iter().map(|o| o.nr_batches).sum::<u64>().max(1);
            let mut st: Vec<u64> = stalls
                .iter()
                .filter(|(t, _)| *t == k)
                .map(|(_, ns)| *ns)
                .collect();
            st.sort_unstable();
            let live_stats = (opts.backend == Backend::Live).then(|| {
                let f = |g: fn(&LiveCounts) -> u64| {
                    o.iter()
                        .filter_map(|o| o.live.as_ref())
                        .map(|l| g(l) as f64)
                        .sum::<f64>()
                        / n as f64
                };
                LiveRunStats {
                    batch_moves: opts.live_batch_moves,
                    unmap_calls: f(|l| l.unmap_ioctls),
                    remap_calls: f(|l| l.remap_ioctls),
                    faults: f(|l| l.faults),
                }
            });
            results.push(BenchResult {
                live: live_stats,
                backend: opts.backend.name().into(),
                engine: e.to_string(),
                width: e.width(),
                folio_size: size,
                batch_pages: bp,
                nr_folios: w.nr_folios,
                gbps_mean: mean,
                gbps_sd: sd,
                gbps_runs: g.clone(),
                frac_of_limit: 0.0,
                frac_of_width_limit: 0.0,
                engine_counters: counters[k].clone(),
                nr_failed: o.iter().map(|o| o.nr_failed).sum(),
                phases_ns: PhasesNs {
                    unmap: ph.unmap_ns / n,
                    flush: ph.flush_ns / n,
                    copy: ph.copy_ns / n,
                    r#move: ph.move_ns / n,
                },
                nr_copied_by_batch: o.iter().map(|o| o.nr_copied_by_batch).sum(),
                tlb_flushes_per_run: o.iter().map(|o| o.nr_tlb_flushes as f64).sum::<f64>()
                    / n as f64,
                first_usable_us: o.iter().map(|o| o.first_usable_ns).sum::<u64>() as f64
                    / nr_batches as f64
                    / 1e3,
                last_usable_us: o.iter().map(|o| o.last_usable_ns).sum::<u64>() as f64
                    / nr_batches as f64
                    / 1e3,
                last_usable_us_max: o.iter().map(|o| o.last_usable_ns_max).max().unwrap_or(0)
                    as f64
                    / 1e3,
                nr_stalls: st.len(),
                stall_p50_us: percentile(&st, 0.5) as f64 / 1e3,
                stall_p99_us: percentile(&st, 0.99) as f64 / 1e3,
                stall_max_us: st.last().copied().unwrap_or(0) as f64 / 1e3,
                runs: o.len(),
            });
        }
        drop(w);
    }
    pb.finish_and_clear();
    let explain = if opts.explain { cache.explain() } else { None };
    cache.shutdown();
    let limit = probe.limit();
    for r in &mut results {
        r.frac_of_limit = r.gbps_mean / limit;
        let w = r.width.min(nr_cpus);
        r.frac_of_width_limit = r.gbps_mean / probe.limit_threads(w);
    }
    let mut copy_limit_gbps = std::collections::BTreeMap::new();
    copy_limit_gbps.insert("1".to_string(), limit);
    if nr_cpus > 1 {
        copy_limit_gbps.insert(nr_cpus.to_string(), probe.limit_threads(nr_cpus));
    }
    let copy_limit_samples = probe.samples.clone();
    probe.release(&mm);
    let auto_ratios = opts
        .sizes
        .iter()
        .filter_map(|&z| auto_against_fixed(&results, opts.batch_pages[0], z))
        .collect();
    Ok(BenchReport {
        machine: MachineInfo {
            copy_limit_gbps,
            copy_limit_samples_1t: copy_limit_samples,
            copy_primitive: pagemig::copy::best_kind().name().into(),
            cpus: nr_cpus,
            kernel: kernel_release(),
            host_numa_nodes: pagemig::mm::arena::host_numa_nodes().len(),
        },
        total_bytes: opts.total_bytes,
        batch_pages: opts.batch_pages[0],
        batch_pages_list: opts.batch_pages.clone(),
        accessors: opts.accessors,
        mode: format!("{:?}", opts.mode),
        backend: opts.backend.name().into(),
        explain,
        results,
        auto_ratios,
    })
}

/// Renders the series-style tables: baseline, mtcopy by threads, dcbm by channels.
pub fn render_table(rep: &BenchReport, sizes: &[usize], engines: &[EngineSpec]) -> String {
    let mut s = String::new();
    let limits: Vec<String> = rep
        .machine
        .copy_limit_gbps
        .iter()
        .map(|(t, g)| format!("{t} thread{}: {g:.2} GB/s", if t == "1" { "" } else { "s" }))
        .collect();
    s.push_str(&format!(
        "copy limit ({} in 2M chunks, {}; median of {} passes spread over the run): {}\n",
        format_size(rep.total_bytes),
        rep.machine.copy_primitive,
        rep.machine.copy_limit_samples_1t.len(),
        limits.join(", ")
    ));
    s.push_str(&format!(
        "backend {}, moved {} per run, batch {} pages, mode {}; GB/s mean±sd (fraction of the single-thread copy limit)\n",
        rep.backend,
        format_size(rep.total_bytes),
        rep.batch_pages,
        rep.mode
    ));
    for (title, fam) in [
        ("baseline", &["vanilla", "batch"][..]),
        ("mtcopy, by threads", &["mtcopy"][..]),
        ("dcbm, by channels", &["dcbm"][..]),
        ("auto", &["auto"][..]),
    ] {
        let rows: Vec<&EngineSpec> = engines
            .iter()
            .filter(|e| fam.contains(&e.family()))
            .collect();
        if rows.is_empty() {
            continue;
        }
        s.push_str(&format!("\n{title}\n{:<12}", "engine"));
        for &z in sizes {
            s.push_str(&format!(" {:>20}", format_size(z)));
        }
        s.push('\n');
        for e in rows {
            s.push_str(&format!("{:<12}", e.to_string()));
            for &z in sizes {
                let cell = rep
                    .results
                    .iter()
                    .find(|r| {
                        r.engine == e.to_string()
                            && r.folio_size == z
                            && r.batch_pages == rep.batch_pages
                    })
                    .map(|r| {
                        format!(
                            "{:.2}±{:.2} ({:.2})",
                            r.gbps_mean, r.gbps_sd, r.frac_of_limit
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                s.push_str(&format!(" {:>20}", cell));
            }
            s.push('\n');
        }
    }
    if let Some([names, best, batch]) = auto_ratio_cells(rep, sizes) {
        s.push('\n');
        for (label, cells) in [
            ("best fixed", names),
            ("auto ÷ best", best),
            ("auto ÷ batch", batch),
        ] {
            s.push_str(&format!("\n{label:<12}"));
            for c in cells {
                s.push_str(&format!(" {c:>20}"));
            }
        }
        s.push('\n');
        s.push_str(&wrap(&format!("({AUTO_RATIOS_NOTE})"), 96));
    }
    s.push_str(&live_calls_text(rep));
    s
}

/// `text` broken into lines of at most `width` characters (longer words stand alone),
/// each ending with a newline.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// What the ratio rows are, for the text table and the report.
pub const AUTO_RATIOS_NOTE: &str = "auto against the fixed engines of this run: ratios of the \
    means, with the 95% interval that the runs' spread gives; picking the highest of several \
    close means favours the engine picked, so auto ÷ best leans low where engines tie; auto \
    learns on the migrations' batches, so a run shorter than its first rounds (--quick) shows \
    it exploring";

/// `auto` against the fixed engines of the same run, per folio size (main batch size), as
/// the cells of three rows: the best fixed engine's name, auto ÷ that engine and auto ÷
/// `batch`, each ratio of the means with its 95% interval ("0.98 [0.93, 1.03]"; "-" where
/// a size lacks them). `None` without auto.
pub fn auto_ratio_cells(rep: &BenchReport, sizes: &[usize]) -> Option<[Vec<String>; 3]> {
    if rep.auto_ratios.is_empty() {
        return None;
    }
    let at = |z: usize| rep.auto_ratios.iter().find(|r| r.folio_size == z);
    let cells = |f: &dyn Fn(&AutoRatios) -> Option<String>| -> Vec<String> {
        sizes
            .iter()
            .map(|&z| at(z).and_then(f).unwrap_or_else(|| "-".into()))
            .collect()
    };
    Some([
        cells(&|r| Some(r.best_engine.clone())),
        cells(&|r| Some(r.vs_best.text())),
        cells(&|r| r.vs_batch.map(|b| b.text())),
    ])
}

/// At one folio size (main batch size): auto against the fixed engine with the highest
/// mean and against `batch`. `None` without auto or any fixed engine there.
fn auto_against_fixed(
    results: &[BenchResult],
    batch_pages: usize,
    size: usize,
) -> Option<AutoRatios> {
    let at = |r: &&BenchResult| r.folio_size == size && r.batch_pages == batch_pages;
    let auto = results.iter().filter(at).find(|r| r.engine == "auto")?;
    let best = results
        .iter()
        .filter(at)
        .filter(|r| r.engine != "auto")
        .max_by(|a, b| a.gbps_mean.total_cmp(&b.gbps_mean))?;
    let vs_batch = results
        .iter()
        .filter(at)
        .find(|r| r.engine == "batch")
        .and_then(|b| Ratio::of_runs(&auto.gbps_runs, &b.gbps_runs));
    Some(AutoRatios {
        folio_size: size,
        best_engine: best.engine.clone(),
        vs_best: Ratio::of_runs(&auto.gbps_runs, &best.gbps_runs)?,
        vs_batch,
    })
}

/// The live backend's kernel calls per migration (empty for the built-in backend).
pub fn live_calls_text(rep: &BenchReport) -> String {
    let rows: Vec<&BenchResult> = rep
        .results
        .iter()
        .filter(|r| r.live.is_some() && r.batch_pages == rep.batch_pages)
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\nlive backend: UFFDIO_MOVE calls per migration (each is one kernel TLB flush), unmap-phase time\n",
    );
    s.push_str(&format!(
        "{:<12} {:>6} {:>10} {:>12} {:>12} {:>10} {:>12}\n",
        "engine", "folio", "moves", "unmap calls", "remap calls", "faults", "unmap+flush"
    ));
    for r in rows {
        let l = r.live.expect("filtered");
        s.push_str(&format!(
            "{:<12} {:>6} {:>10} {:>12.1} {:>12.1} {:>10.1} {:>10.0}us\n",
            r.engine,
            format_size(r.folio_size),
            if l.batch_moves {
                "batched"
            } else {
                "per-folio"
            },
            l.unmap_calls,
            l.remap_calls,
            l.faults,
            (r.phases_ns.unmap + r.phases_ns.flush) as f64 / 1e3
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{run_order, t975, wrap, Ratio};

    #[test]
    fn wrap_breaks_at_words() {
        assert_eq!(wrap("ab cd ef", 5), "ab cd\nef\n");
        assert_eq!(wrap("abcdefg hi", 3), "abcdefg\nhi\n");
        assert_eq!(wrap("÷ ÷ ÷", 3), "÷ ÷\n÷\n");
        assert_eq!(wrap("", 3), "");
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        // Student's t, 97.5%: df 3, 5, 10, 38, 120, and the normal limit.
        for (df, t) in [
            (3.0, 3.182),
            (5.0, 2.571),
            (10.0, 2.228),
            (38.0, 2.024),
            (120.0, 1.980),
        ] {
            assert!((t975(df) - t).abs() < 0.004, "df {df}: {} vs {t}", t975(df));
        }
        assert!((t975(2.0) - 4.303).abs() < 0.04);
        assert!((t975(1e9) - 1.960).abs() < 1e-3);
    }

    #[test]
    fn ratio_intervals_cover_the_true_ratio_about_95_percent_of_the_time() {
        // Runs with 10% noise (as on the development machine), 20 a side, true ratio 0.97.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut normal = move || {
            let (u, v) = (uniform().max(1e-12), uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let trials = 4000;
        let (mut covered, mut width) = (0, 0.0);
        for _ in 0..trials {
            let a: Vec<f64> = (0..20).map(|_| 9.7 * (1.0 + 0.1 * normal())).collect();
            let b: Vec<f64> = (0..20).map(|_| 10.0 * (1.0 + 0.1 * normal())).collect();
            let r = Ratio::of_runs(&a, &b).unwrap();
            let [lo, hi] = r.interval.unwrap();
            assert!(lo < r.ratio && r.ratio < hi);
            covered += usize::from(lo <= 0.97 && 0.97 <= hi);
            width += (hi - lo) / trials as f64;
        }
        let coverage = covered as f64 / trials as f64;
        assert!((0.93..=0.97).contains(&coverage), "coverage {coverage}");
        // 2 × 2.02 × 0.97 × √(2 × 0.01 / 20): about ±0.062.
        assert!((0.11..0.14).contains(&width), "mean width {width}");
    }

    #[test]
    fn ratio_edge_cases() {
        let r = Ratio::of_runs(&[2.0, 2.0], &[4.0, 4.0]).unwrap();
        assert_eq!((r.ratio, r.interval), (0.5, Some([0.5, 0.5])));
        let r = Ratio::of_runs(&[3.0], &[2.0, 4.0]).unwrap();
        assert_eq!((r.ratio, r.interval), (1.0, None));
        assert_eq!(r.text(), "1.00");
        assert!(Ratio::of_runs(&[], &[1.0]).is_none());
        assert!(Ratio::of_runs(&[1.0, 2.0], &[0.0, 0.0]).is_none());
        let r = Ratio::of_runs(&[9.0, 11.0], &[10.0, 10.0]).unwrap();
        // One degree of freedom: a wide interval.
        let [lo, hi] = r.interval.unwrap();
        assert!(lo < 0.5 && hi > 2.0, "{lo} {hi}");
        assert_eq!(
            Ratio {
                ratio: 0.9712,
                interval: Some([0.921, 1.0249])
            }
            .text(),
            "0.97 [0.92, 1.02]"
        );
    }

    #[test]
    fn run_orders_are_permutations_that_change_each_run() {
        let orders: Vec<Vec<usize>> = (0..20).map(|r| run_order(8, r)).collect();
        for o in &orders {
            let mut s = o.clone();
            s.sort_unstable();
            assert_eq!(s, (0..8).collect::<Vec<_>>());
        }
        // No engine always first, none always after the same one.
        let firsts: std::collections::BTreeSet<usize> = orders.iter().map(|o| o[0]).collect();
        assert!(firsts.len() > 3, "{orders:?}");
        for e in 0..8 {
            let before: std::collections::BTreeSet<Option<usize>> = orders
                .iter()
                .map(|o| {
                    let i = o.iter().position(|&x| x == e).unwrap();
                    i.checked_sub(1).map(|i| o[i])
                })
                .collect();
            assert!(before.len() > 2, "engine {e} always after {before:?}");
        }
        assert_eq!(run_order(8, 3), run_order(8, 3));
        assert_eq!(run_order(1, 0), vec![0]);
    }
}
