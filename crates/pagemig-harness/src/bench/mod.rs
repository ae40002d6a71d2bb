//! `pagemig bench`: migrate folios between node 0 and node 1 and report GB/s per folio
//! size and engine, next to this machine's copy limit measured in the same run. The folios
//! are the built-in backend's, or (`--backend live`) this process's own memory, moved with
//! userfaultfd while its threads may keep using it.
//!
//! One concept a module: the options and the run (here), the JSON schema ([`schema`]), the
//! errors ([`BenchError`]), the copy-limit probe ([`CopyLimitProbe`]), the workload, the
//! accessor threads, and the ratios of `auto` against the fixed engines.

#![forbid(unsafe_code)]

mod error;
mod probe;
mod readers;
pub mod schema;
mod workload;

pub use error::BenchError;
pub use probe::CopyLimitProbe;
pub use schema::*;

pub use readers::LIVE_STALL_NS;
use readers::{Readers, NO_TAG};
use workload::Workload;

use crate::rng::Rng;
use crate::stats::{mean_sd, percentile, Ratio};

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use pagemig::migrate::{alloc_on_node, migrate_pages, Mode, PhaseTimes, Reason};
use pagemig::mm::{Memory, MemoryConfig, NodeId};
use pagemig::offload::PipelineConfig;
use pagemig_engines::{Engine, EngineCache};
use pagemig_live::{Live, LiveConfig, LiveCounts};

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
    /// Migration reason (`move_pages(2)` migrates with `MR_SYSCALL`; tiering demotes with
    /// `MR_DEMOTION`). The offload reason mask decides per reason whether the batch path runs.
    pub reason: Reason,
    /// The node the folios start on (numactl's `--from`).
    pub from_node: NodeId,
    /// The node they migrate to and back from (numactl's `--to`); not `from_node`.
    pub to_node: NodeId,
    /// Show a progress bar on stderr (only if it is a terminal).
    pub verbose: bool,
    /// Knobs: (engine family, name, value).
    pub knobs: Vec<(String, String, String)>,
    /// Memory backend.
    pub backend: Backend,
    /// Live backend: batch the kernel calls (one `UFFDIO_MOVE` per contiguous run) or make
    /// one per folio.
    pub live_batch_moves: bool,
    /// What the folios are: anonymous memory, a file's page cache, or shmem (built-in
    /// backend only).
    pub kind: FolioKind,
    /// Also measure every engine with a batch copy pipelined (beyond the series), beside
    /// the series' path, in the same runs: each sub-batch copied and moved in turn, and/or
    /// overlapped by a helper thread.
    pub pipeline: PipelineModes,
    /// Where auto's learned state is kept between runs (`None`: start from nothing and
    /// keep nothing, `--no-cache`).
    pub auto_state_dir: Option<std::path::PathBuf>,
}

/// Which pipelined variants a bench run measures besides the series' path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PipelineModes {
    /// Sub-batches copied and moved in turn (`PipelineConfig::overlap = false`).
    pub in_turn: bool,
    /// Sub-batches copied ahead by a helper thread (`overlap = true`).
    pub overlap: bool,
}

/// What kind of folios the benchmark migrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FolioKind {
    /// Anonymous memory (`migrate_folio`, no mapping).
    #[default]
    Anon,
    /// Page cache of a regular file (`filemap_migrate_folio`), mapped shared.
    File,
    /// shmem / tmpfs (`migrate_folio` on a swap-backed mapping), mapped shared.
    Shmem,
}

impl FolioKind {
    /// `anon`, `file` or `shmem`.
    pub fn name(self) -> &'static str {
        match self {
            FolioKind::Anon => "anon",
            FolioKind::File => "file",
            FolioKind::Shmem => "shmem",
        }
    }
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

pub(crate) const SPACE_BASE: u64 = 0x10_0000_0000;

struct RunOutcome {
    live: Option<LiveCounts>,
    /// Live backend: TLB shootdown IPIs this machine's CPUs received during the migration
    /// (system-wide; `None` where `/proc/interrupts` has no TLB row).
    tlb_ipis: Option<u64>,
    gbps: f64,
    nr_failed: usize,
    phases: PhaseTimes,
    nr_copied_by_batch: usize,
    nr_tlb_flushes: usize,
    nr_batches: u64,
    first_usable_ns: u64,
    last_usable_ns: u64,
    last_usable_ns_max: u64,
    /// The run's `mm_migrate_pages` event.
    trace: pagemig::trace::MmMigratePages,
}

fn migrate_once(
    mm: &Arc<Memory>,
    w: &mut Workload,
    opts: &BenchOptions,
    engine: &str,
) -> Result<RunOutcome, BenchError> {
    let (mode, reason) = (opts.mode, opts.reason);
    let target = if w.node == opts.from_node {
        opts.to_node
    } else {
        opts.from_node
    };
    let mut list = Vec::with_capacity(w.nr_folios);
    for i in 0..w.nr_folios {
        let f = w.folio(i).expect("workload folio mapped");
        mm.isolate_folio(f)?;
        list.push(f);
    }
    let mut alloc = alloc_on_node(target);
    let live0 = w.region.as_ref().map(|r| r.counts());
    let ipis0 = live0
        .is_some()
        .then(pagemig::sys::tlb_shootdowns_received)
        .flatten();
    let t = Instant::now();
    let res = migrate_pages(mm, &mut list, &mut alloc, None, mode, reason)
        .expect("bench input lists are valid");
    let secs = t.elapsed().as_secs_f64();
    let tlb_ipis = ipis0
        .zip(pagemig::sys::tlb_shootdowns_received())
        .map(|(a, b)| b.saturating_sub(a));
    // The tracepoint saw the same call (its totals are the kernel's trace fields).
    let events = mm.trace().take();
    let trace = match events[..] {
        [ev] if ev.succeeded == res.stats.nr_succeeded
            && ev.failed == res.stats.nr_failed_pages
            && ev.mode == mode
            && ev.reason == reason =>
        {
            ev
        }
        _ => {
            return Err(BenchError::Counters {
                engine: engine.into(),
                detail: format!(
                    "mm_migrate_pages recorded {events:?} for a call that migrated {} pages",
                    res.stats.nr_succeeded
                ),
            })
        }
    };
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
        tlb_ipis,
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
        trace,
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

/// A permutation of `0..n` for run `run`: Fisher–Yates driven by the harness's splitmix64
/// (`rng`), seeded by the run number (reproducible from run to run of the tool).
fn run_order(n: usize, run: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(run as u64 + 1);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// Whether `--pipeline` measures `e` pipelined too: a fixed engine with a batch copy.
fn pipelinable(e: EngineSpec) -> bool {
    !matches!(e, EngineSpec::Vanilla | EngineSpec::Auto)
}

fn progress_bar(opts: &BenchOptions) -> ProgressBar {
    let variants = 1 + usize::from(opts.pipeline.in_turn) + usize::from(opts.pipeline.overlap);
    let per_size: usize = opts
        .engines
        .iter()
        .map(|&e| if pipelinable(e) { variants } else { 1 })
        .sum();
    let total = (opts.sizes.len() * opts.batch_pages.len() * opts.runs * per_size) as u64;
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

/// At one folio size (main batch size): auto against the fixed engine with the highest
/// mean and against `batch`. `None` without auto or any fixed engine there.
fn auto_against_fixed(
    results: &[BenchResult],
    batch_pages: usize,
    size: usize,
) -> Option<AutoRatios> {
    // The series' path only: auto and the fixed engines it is compared with, unpipelined.
    let at = |r: &&BenchResult| r.folio_size == size && r.batch_pages == batch_pages && !r.pipeline;
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

/// The memory of a run: nodes up to the highest of `from` and `to`; those two hold
/// `capacity` bytes each, any node between them only one 2 MiB block (numactl names host
/// nodes, which exist whether or not they are used).
fn bench_memory_config(opts: &BenchOptions, capacity: usize) -> MemoryConfig {
    let nr = opts.from_node.0.max(opts.to_node.0) as usize + 1;
    let mut cfg = MemoryConfig::with_nodes(nr, 2 << 20);
    for n in [opts.from_node, opts.to_node] {
        cfg.nodes[n.0 as usize].capacity_bytes = capacity;
    }
    cfg
}

/// Runs the benchmark.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    // Each node holds one workload plus the copy-limit probe's half.
    if opts.from_node == opts.to_node {
        return Err(BenchError::SameNode(opts.from_node.0));
    }
    if opts.backend == Backend::Live && opts.kind != FolioKind::Anon {
        return Err(BenchError::KindUnsupported {
            backend: opts.backend.name(),
            kind: opts.kind.name(),
        });
    }
    let cpu_at_start = pagemig::sys::CpuTimes::now();
    let slack = 8 << 20;
    let mm = Memory::new(bench_memory_config(opts, 2 * opts.total_bytes + slack))?;
    mm.trace().enable();
    let pb = progress_bar(opts);
    pb.set_message("measuring the copy limit");
    // The limit is sampled before the table and again between runs, so that it sees the
    // same drift of the machine's memory bandwidth as the migrations do; the median of all
    // passes is the limit.
    let nr_cpus = pagemig::sys::nr_cpus();
    let mut probe = CopyLimitProbe::new(&mm, opts.total_bytes, opts.from_node, opts.to_node)?;
    for _ in 0..3 {
        probe.sample(&mm);
        probe.sample_threads(&mm, nr_cpus);
    }
    let mut results = Vec::new();
    // Engines that stay loaded across runs (auto keeps what it learned).
    let mut cache = EngineCache::with_state_dir(opts.auto_state_dir.clone());
    let live = match opts.backend {
        Backend::Live => Some(Live::new(&mm, LiveConfig::default())?),
        Backend::Builtin => None,
    };
    // The live backend's pipelined runs remap each sub-batch as soon as it is moved: a
    // sub-batch smaller than 2 MiB moves part of a transparent huge page of the arena,
    // which the kernel splits, and every later move of that memory costs one PTE per page.
    // So there every size's pipelined runs come after all the series' runs (two passes
    // over the sizes), and never split what those measure.
    let passes: &[Option<bool>] =
        if opts.backend == Backend::Live && (opts.pipeline.in_turn || opts.pipeline.overlap) {
            &[Some(false), Some(true)]
        } else {
            &[None]
        };
    for (pass, &size) in passes
        .iter()
        .flat_map(|&p| opts.sizes.iter().map(move |z| (p, z)))
    {
        pb.set_message(format!(
            "mapping {} of {} folios",
            format_size(opts.total_bytes),
            format_size(size)
        ));
        let mut w = match &live {
            Some(l) => Workload::new_live(
                l,
                size,
                opts.total_bytes,
                opts.live_batch_moves,
                opts.from_node,
            )?,
            None => Workload::new(&mm, size, opts.total_bytes, opts.from_node, opts.kind)?,
        };
        let readers = (opts.accessors > 0).then(|| match &w.region {
            Some(r) => Readers::start_live(r, opts.accessors),
            None => Readers::start(&w.space, opts.accessors, opts.total_bytes),
        });
        // (batch size, engine, pipeline): with --pipeline every fixed engine with a batch
        // copy is measured on the series' path and pipelined (vanilla has no batch copy;
        // auto learns on whole batches, and a pipelined auto would learn on sub-batches,
        // into the same learner and the state it keeps).
        let combos: Vec<(usize, EngineSpec, Option<PipelineConfig>)> = opts
            .batch_pages
            .iter()
            .flat_map(|&bp| {
                opts.engines.iter().flat_map(move |&e| {
                    let batch = pipelinable(e);
                    let cfg = |overlap| PipelineConfig {
                        overlap,
                        ..Default::default()
                    };
                    std::iter::once((bp, e, None))
                        .chain((batch && opts.pipeline.in_turn).then_some((
                            bp,
                            e,
                            Some(cfg(false)),
                        )))
                        .chain((batch && opts.pipeline.overlap).then_some((bp, e, Some(cfg(true)))))
                })
            })
            .collect();
        let combos: Vec<_> = combos
            .into_iter()
            .filter(|c| pass.is_none_or(|p| p == c.2.is_some()))
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
        migrate_once(&mm, &mut w, opts, &opts.engines[0].to_string())?;
        eng.stop()?;
        for run in 0..opts.runs {
            probe.sample(&mm);
            probe.sample_threads(&mm, nr_cpus);
            // Each run goes through the engines in its own shuffled order (the same for a
            // given run number), so that no engine always comes first or always follows the
            // same one: the one before leaves its mark on the CPUs and caches, and the
            // machine drifts during a run.
            for &k in &run_order(combos.len(), run) {
                let (bp, e, piped) = combos[k];
                let label = match piped {
                    None => e.to_string(),
                    Some(p) if p.overlap => format!("{e}+overlap"),
                    Some(_) => format!("{e}+pipeline"),
                };
                pb.set_message(format!("{label} {} batch {bp}", format_size(size)));
                mm.set_batch_pages(bp)?;
                mm.offload().set_pipeline(piped);
                let eng = Engine::start_cached(e, &mm, &knobs_for(opts, e), Some(&mut cache))?;
                // A cached engine (auto) counts from its creation: this run's share is the
                // difference.
                let c0: std::collections::BTreeMap<String, u64> =
                    eng.counters().into_iter().collect();
                let offered0 = mm.offload().stats().nr_folios_offered;
                if let Some(r) = &readers {
                    r.tag.store(k, Ordering::SeqCst);
                }
                let out = migrate_once(&mm, &mut w, opts, &e.to_string());
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
                mm.offload().set_pipeline(None);
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
        for (k, &(bp, e, piped)) in combos.iter().enumerate() {
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
                let ipis: Option<Vec<u64>> = o.iter().map(|o| o.tlb_ipis).collect();
                LiveRunStats {
                    tlb_ipis: ipis.map(|v| v.iter().sum::<u64>() as f64 / n as f64),
                    batch_moves: opts.live_batch_moves,
                    unmap_calls: f(|l| l.unmap_ioctls),
                    remap_calls: f(|l| l.remap_ioctls),
                    faults: f(|l| l.faults),
                }
            });
            results.push(BenchResult {
                live: live_stats,
                backend: opts.backend.name().into(),
                kind: opts.kind.name().into(),
                engine: e.to_string(),
                pipeline: piped.is_some(),
                pipeline_overlap: piped.is_some_and(|p| p.overlap),
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
                trace: TraceTotals::of(o.iter().map(|o| &o.trace)),
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
    let auto_state = cache.learned_state().map(|st| AutoStateInfo {
        path: st.path.display().to_string(),
        orders_applied: st.orders_applied,
        age_s: st.age.map(|a| a.as_secs()),
        ignored: st.ignored.clone(),
        saved_orders: st.saved.as_ref().and_then(|r| r.as_ref().ok().copied()),
        save_error: st.saved.as_ref().and_then(|r| r.as_ref().err().cloned()),
    });
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
            kernel: pagemig::sys::kernel_release(),
            host_numa_nodes: pagemig::mm::numa::host_numa_nodes().len(),
            cpu_steal: cpu_at_start
                .zip(pagemig::sys::CpuTimes::now())
                .and_then(|(a, b)| b.steal_since(&a)),
        },
        total_bytes: opts.total_bytes,
        batch_pages: opts.batch_pages[0],
        batch_pages_list: opts.batch_pages.clone(),
        accessors: opts.accessors,
        mode: format!("{:?}", opts.mode),
        reason: opts.reason.name().into(),
        from_node: opts.from_node.0,
        to_node: opts.to_node.0,
        schema_version: SCHEMA_VERSION,
        pagemig_version: env!("CARGO_PKG_VERSION").into(),
        command: String::new(),
        backend: opts.backend.name().into(),
        kind: opts.kind.name().into(),
        explain,
        auto_state,
        results,
        auto_ratios,
    })
}

#[cfg(test)]
mod tests {
    use super::run_order;

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
