//! The `pagemig` command line: argument parsing and the subcommands. The workloads are
//! `pagemig_harness`'s; this module parses, dispatches and reports.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use pagemig::migrate::{Mode, Reason};
use pagemig::mm::NodeId;
use pagemig_harness::spec::{
    format_size, parse_engine, parse_folio_size, parse_knob, parse_size, EngineSpec, SpecError,
};
use pagemig_harness::{bench, kernel, stress};

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "pagemig",
    version,
    about = "Batched, offloaded page migration between memory tiers"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Migrate folios between two nodes (--from, --to) and report GB/s per folio size and
    /// engine.
    Bench(BenchArgs),
    /// Run accessor and migrating threads together with faults injected; fail on any loss.
    Stress(StressArgs),
    /// Show what this machine offers: NUMA nodes (as numactl --hardware), THP,
    /// userfaultfd, the copy primitive and the allowed CPUs.
    Info {
        /// Write the information as JSON to this file (`-`: standard output, alone).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Show or forget what auto learned on this machine (kept under the user's cache
    /// directory between bench runs).
    Cache {
        /// show: the files and what they hold; clear: remove them.
        #[arg(value_enum, default_value_t = CacheAction::Show)]
        action: CacheAction,
    },
    /// Run an unmodified, dynamically linked program with its large anonymous memory in
    /// tiered regions (a preload library), steerable with `pagemig ctl PID`.
    Run(crate::run::RunArgs),
    /// Measure a program plainly, under `pagemig run` with no migration, and under `pagemig
    /// run` while its memory moves at a given rate (a benchmark, not a test).
    RunBench(crate::run::RunBenchArgs),
    /// Steer a program under `pagemig run`: where its pages are, and moves.
    Ctl {
        /// The program's process id.
        pid: u32,
        #[command(subcommand)]
        action: crate::run::CtlAction,
    },
    /// Move every page of a program under `pagemig run` from some nodes to others, as
    /// numactl's migratepages does: `pagemig migratepages PID 0 1`, `... PID 0,1 1,0`.
    Migratepages {
        /// The program's process id.
        pid: u32,
        /// The nodes to move pages from (a node list).
        from: String,
        /// The nodes to move them to: one, or as many as FROM, paired in order.
        to: String,
        /// Also write the answer as JSON to this file (`-`: standard output, alone).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// Parses a folio size for clap.
fn folio_size_arg(s: &str) -> Result<usize, SpecError> {
    parse_folio_size(s)
}

/// Parses an engine spec for clap.
fn engine_arg(s: &str) -> Result<EngineSpec, SpecError> {
    parse_engine(s)
}

/// Parses a knob for clap.
fn knob_arg(s: &str) -> Result<(String, String, String), SpecError> {
    parse_knob(s)
}

/// Parses a batch size in base pages for clap.
fn batch_pages_arg(s: &str) -> Result<usize, SpecError> {
    let n: usize = s.parse().map_err(|_| {
        SpecError(format!(
            "bad batch size {s:?}: expected a number of base pages"
        ))
    })?;
    if n == 0 || n > 1 << 20 {
        return Err(SpecError(format!("batch size {n} must be 1..=1048576")));
    }
    Ok(n)
}

/// Parses one node number for clap (numactl's `--from`/`--to`; a node list names one node).
fn node_arg(s: &str) -> Result<NodeId, SpecError> {
    let v = pagemig::mm::numa::parse_node_list(s).map_err(|e| SpecError(e.to_string()))?;
    match v.as_slice() {
        [n] if *n < 64 => Ok(NodeId(*n)),
        [n] => Err(SpecError(format!("node {n} is above 63"))),
        _ => Err(SpecError(format!(
            "{s:?} names {} nodes; a migration here goes from one node to one node",
            v.len()
        ))),
    }
}

/// The migration modes, for clap (one `Mode` type: the core's).
fn mode_parser() -> impl clap::builder::TypedValueParser<Value = Mode> {
    PossibleValuesParser::new(Mode::ALL.map(|m| m.name()))
        .map(|s| s.parse::<Mode>().expect("a possible value"))
}

/// The migration reasons, for clap: the kernel's `MR_*` names with dashes, and `syscall`.
fn reason_parser() -> impl clap::builder::TypedValueParser<Value = Reason> {
    PossibleValuesParser::new(REASON_NAMES).map(|s| s.parse::<Reason>().expect("a possible value"))
}

/// `--reason`'s values: `syscall`, then every `MR_*` name with dashes.
const REASON_NAMES: [&str; 11] = [
    "syscall",
    "compaction",
    "memory-failure",
    "memory-hotplug",
    "syscall-or-cpuset",
    "mempolicy-mbind",
    "numa-misplaced",
    "contig-range",
    "longterm-pin",
    "demotion",
    "damon",
];

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum BackendArg {
    /// The in-process memory model.
    Builtin,
    /// Live process memory through userfaultfd.
    Live,
    /// The kernel's own move_pages(2) on this process's memory (needs two NUMA nodes).
    Kernel,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum LiveMovesArg {
    /// One UFFDIO_MOVE per run of contiguous pages, at the TLB flush and at batch end.
    Batched,
    /// One UFFDIO_MOVE per folio, at once.
    PerFolio,
}

#[derive(clap::Args, Debug)]
struct StressArgs {
    /// Seconds per engine.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Engines, comma-separated, each stressed in turn.
    #[arg(long, value_delimiter = ',', value_parser = engine_arg, default_value = "batch,mtcopy:2,dcbm:2")]
    engines: Vec<EngineSpec>,
    /// Accessor threads (reading and writing while pages migrate), 1..=64.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=64))]
    accessors: u8,
    /// Migrating threads, 1..=64.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    migrators: u8,
    /// Nodes the pages move between, 2..=64 (with the live backend on a host with that
    /// many NUMA nodes, the kernel's placement of every page is checked at the end).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=64))]
    nodes: u8,
    /// Faults: all, none, or KIND[=RATE],... with kinds eagain, lock, writeback, poison,
    /// enomem, engine, timeout, unregister, reason.
    #[arg(long, default_value = "all")]
    inject: String,
    /// Memory backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Builtin)]
    backend: BackendArg,
    /// Write the summary as JSON to this file (`-`: standard output, alone).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Folio sizes, comma-separated (powers of two from 4K to 2M).
    #[arg(long, value_delimiter = ',', value_parser = folio_size_arg, default_value = "4K,16K,64K,256K,1M,2M")]
    sizes: Vec<usize>,
    /// Bytes moved per migration (a multiple of the largest folio size).
    #[arg(long, default_value = "1G")]
    total: String,
    /// Engines, comma-separated: vanilla, batch, mtcopy:THREADS, dcbm:CHANNELS, auto.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = engine_arg,
        default_value = "vanilla,batch,mtcopy:1,mtcopy:2,dcbm:1,dcbm:2,dcbm:4,auto"
    )]
    engines: Vec<EngineSpec>,
    /// An engine knob, ENGINE.NAME=VALUE (repeatable), e.g. dcbm.min_batch_bytes=65536,
    /// mtcopy.cpuselect=spread, batch.reason_mask=all.
    #[arg(long = "knob", value_name = "ENGINE.NAME=VALUE", value_parser = knob_arg)]
    knobs: Vec<(String, String, String)>,
    /// Migrations per (size, engine); mean and standard deviation are reported.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    runs: u32,
    /// NR_MAX_BATCHED_MIGRATION in base pages; a comma-separated list measures each
    /// (latency against batch size), the first one fills the main tables.
    #[arg(long, value_delimiter = ',', value_parser = batch_pages_arg, default_value = "512")]
    batch_pages: Vec<usize>,
    /// The node the folios start on (numactl's --from; builtin: a node of the memory
    /// model, kernel: a host node).
    #[arg(long, value_parser = node_arg, default_value = "0")]
    from: NodeId,
    /// The node they migrate to and back from (numactl's --to).
    #[arg(long, value_parser = node_arg, default_value = "1")]
    to: NodeId,
    /// Migration reason: syscall (move_pages(2), the default), demotion (memory tiering),
    /// numa-misplaced, compaction, ... The offload reason mask decides per reason whether
    /// the batch path runs.
    #[arg(long, value_parser = reason_parser(), default_value = "syscall")]
    reason: Reason,
    /// Accessor threads reading the region during the migrations, to measure how long
    /// their accesses stall on migration entries (p50/p99/max).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=16))]
    accessors: u8,
    /// Print how the auto engine decided (its calibration).
    #[arg(long)]
    explain: bool,
    /// Write a Markdown report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write SVG plots into this directory.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    /// Migration mode (move_pages(2) uses sync).
    #[arg(long, value_parser = mode_parser(), default_value = "sync")]
    mode: Mode,
    /// Write the results as JSON to this file (`-`: standard output, and the tables go to
    /// standard error).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Small totals and 2 runs, for smoke tests.
    #[arg(long)]
    quick: bool,
    /// Memory backend: builtin (the memory model), live (this process's own pages, moved
    /// with userfaultfd), or kernel (move_pages(2) on a host with two or more NUMA nodes).
    /// Several, comma-separated (kernel,live), run one after the other on the same nodes
    /// and sizes and are reported side by side in one table.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "builtin")]
    backend: Vec<BackendArg>,
    /// Live backend: batch the kernel calls per contiguous run, or one call per folio.
    #[arg(long, value_enum, default_value_t = LiveMovesArg::Batched)]
    live_moves: LiveMovesArg,
    /// What the folios are: anonymous memory, a file's page cache (filemap_migrate_folio),
    /// or shmem. The builtin backend only.
    #[arg(long, value_enum, default_value_t = KindArg::Anon)]
    kind: KindArg,
    /// Also run every fixed engine with a batch copy (not vanilla, not auto) pipelined
    /// (beyond the series): the batch
    /// unmapped and flushed once, then copied and moved in growing sub-batches, so the
    /// first folio is usable early. in-turn (the default): each sub-batch copied, then
    /// moved; overlap: a helper thread copies the next sub-batches while the migrating
    /// thread moves the ones done; both. Reported beside the series' path of the same run
    /// as ENGINE+pipeline and ENGINE+overlap ("pipeline": true in the JSON)
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "in-turn")]
    pipeline: Option<PipelineArg>,
    /// Start auto from nothing and keep nothing: without it, auto starts from what earlier
    /// runs learned on this machine (a file under the user's cache directory; `pagemig
    /// cache` shows and clears it) and writes back what this run learned
    #[arg(long)]
    no_cache: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum PipelineArg {
    /// Each sub-batch copied, then moved, on the migrating thread.
    InTurn,
    /// A helper thread copies ahead while the migrating thread moves.
    Overlap,
    /// Both variants.
    Both,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum KindArg {
    /// Anonymous memory.
    Anon,
    /// Page cache of a regular file, mapped shared.
    File,
    /// shmem (tmpfs), mapped shared.
    Shmem,
}

/// The command line as typed, for the JSON's `command`.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Writes `value` as pretty JSON to `path`, or to standard output for `-`.
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}").context("cannot write JSON to standard output")?;
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Where the human-readable output goes: standard error when standard output carries JSON.
pub(crate) fn human(json: &Option<PathBuf>) -> Box<dyn std::io::Write> {
    if json.as_deref() == Some(Path::new("-")) {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    }
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let sizes = a.sizes.clone();
    let engines = a.engines.clone();
    let mut total = parse_size(&a.total).map_err(|e| anyhow::anyhow!("--total: {e}"))?;
    let mut runs = a.runs as usize;
    if a.quick {
        total = total.min(32 << 20);
        runs = runs.min(2);
    }
    let Some(&largest) = sizes.iter().max() else {
        bail!("--sizes names no size");
    };
    if engines.is_empty() {
        bail!("--engines names no engine");
    }
    if total == 0 {
        bail!("--total must be positive");
    }
    if total % largest != 0 {
        bail!(
            "--total {} is not a multiple of the largest folio size {}",
            a.total,
            format_size(largest)
        );
    }
    if total > 8 << 30 {
        bail!("--total above 8G does not fit this tool's two nodes");
    }
    if a.from == a.to {
        bail!(
            "--from and --to are both node {}: a migration needs two nodes",
            a.from.0
        );
    }
    if a.batch_pages.is_empty() {
        bail!("--batch-pages names no batch size");
    }
    let opts = bench::BenchOptions {
        sizes: sizes.clone(),
        total_bytes: total,
        engines: engines.clone(),
        runs,
        batch_pages: a.batch_pages.clone(),
        accessors: a.accessors as usize,
        explain: a.explain,
        mode: a.mode,
        reason: a.reason,
        from_node: a.from,
        to_node: a.to,
        verbose: !a.quiet,
        knobs: a.knobs.clone(),
        backend: bench::Backend::Builtin,
        live_batch_moves: a.live_moves == LiveMovesArg::Batched,
        kind: match a.kind {
            KindArg::Anon => bench::FolioKind::Anon,
            KindArg::File => bench::FolioKind::File,
            KindArg::Shmem => bench::FolioKind::Shmem,
        },
        pipeline: bench::PipelineModes {
            in_turn: matches!(a.pipeline, Some(PipelineArg::InTurn | PipelineArg::Both)),
            overlap: matches!(a.pipeline, Some(PipelineArg::Overlap | PipelineArg::Both)),
        },
        auto_state_dir: if a.no_cache {
            None
        } else {
            pagemig_engines::auto::prior::cache_dir()
        },
    };
    let backends = a.backend.clone();
    if backends.is_empty() {
        bail!("--backend names no backend");
    }
    if let Some(b) = backends
        .iter()
        .enumerate()
        .find_map(|(i, b)| backends[..i].contains(b).then_some(b))
    {
        bail!("--backend names {} twice", format!("{b:?}").to_lowercase());
    }
    if opts.kind != bench::FolioKind::Anon {
        if let Some(b) = backends.iter().find(|b| **b != BackendArg::Builtin) {
            bail!(
                "--kind {}: the {} backend migrates anonymous memory only (use the builtin backend)",
                opts.kind.name(),
                format!("{b:?}").to_lowercase()
            );
        }
    }
    if a.pipeline.is_some() && backends.contains(&BackendArg::Kernel) {
        bail!("--pipeline: the kernel backend is the kernel's own move_pages(2), which has no batch copy to pipeline");
    }
    if backends.len() > 1 {
        return side_by_side(&a, &backends, opts);
    }
    let mut opts = opts;
    opts.backend = match backends[0] {
        BackendArg::Live => bench::Backend::Live,
        _ => bench::Backend::Builtin,
    };
    let mut out = human(&a.json);
    if backends[0] == BackendArg::Kernel {
        let rep = kernel::run(&opts)?;
        write!(out, "{}", crate::tables::kernel_table(&rep))?;
        if let Some(p) = &a.json {
            write_json(p, &rep)?;
        }
        return Ok(());
    }
    let mut rep = bench::run(&opts)?;
    rep.command = command_line();
    if let Some(st) = &rep.auto_state {
        if let Some(why) = &st.ignored {
            eprintln!(
                "pagemig: warning: auto's learned state {} was ignored: {why}; auto started from nothing",
                st.path
            );
        }
        if let Some(e) = &st.save_error {
            eprintln!(
                "pagemig: warning: cannot write auto's learned state {}: {e}",
                st.path
            );
        }
    }
    write!(
        out,
        "{}{}",
        crate::tables::emulation_warning(),
        crate::tables::render_table(&rep, &sizes, &engines)
    )?;
    if rep.batch_pages_list.len() > 1 || rep.accessors > 0 || rep.results.iter().any(|r| r.pipeline)
    {
        write!(out, "{}", crate::report::latency_text(&rep))?;
    }
    if a.explain {
        match &rep.explain {
            Some(t) => write!(out, "\n{t}")?,
            None => writeln!(out, "\n--explain: no auto engine in this run")?,
        }
    }
    if let Some(dir) = &a.svg_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::report::write_svgs(&rep, dir)
            .map_err(|e| anyhow::anyhow!("cannot write plots: {e}"))?;
    }
    if let Some(p) = &a.report {
        // Plots are linked relative to the report when they sit beside it.
        let same_dir = a.svg_dir.as_deref().map(|d| {
            let here = p
                .parent()
                .filter(|x| !x.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            std::fs::canonicalize(d).ok() == std::fs::canonicalize(here).ok()
        });
        let link_dir = match (same_dir, a.svg_dir.as_deref()) {
            (Some(true), _) => Some(std::path::Path::new(".")),
            (_, d) => d,
        };
        let md = crate::report::markdown(&rep, link_dir);
        std::fs::write(p, md).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.json {
        write_json(p, &rep)?;
    }
    let failed: usize = rep.results.iter().map(|r| r.nr_failed).sum();
    if failed > 0 {
        bail!("{failed} folio(s) failed to migrate");
    }
    Ok(())
}

/// `--backend kernel,live` (any two or more): each backend in turn on the same nodes and
/// sizes, one table.
fn side_by_side(
    a: &BenchArgs,
    backends: &[BackendArg],
    opts: bench::BenchOptions,
) -> anyhow::Result<()> {
    let mut out = human(&a.json);
    let mut kernel_rep = None;
    let mut reports = Vec::new();
    for b in backends {
        match b {
            BackendArg::Kernel => kernel_rep = Some(kernel::run(&opts)?),
            BackendArg::Live | BackendArg::Builtin => {
                let mut o = opts.clone();
                o.backend = if *b == BackendArg::Live {
                    bench::Backend::Live
                } else {
                    bench::Backend::Builtin
                };
                let mut rep = bench::run(&o)?;
                rep.command = command_line();
                reports.push(rep);
            }
        }
    }
    write!(
        out,
        "{}",
        crate::tables::side_by_side_table(kernel_rep.as_ref(), &reports, &opts.sizes)
    )?;
    if let Some(p) = &a.json {
        let doc = serde_json::json!({
            "schema_version": pagemig_harness::bench::schema::SCHEMA_VERSION,
            "pagemig_version": env!("CARGO_PKG_VERSION"),
            "command": command_line(),
            "side_by_side": backends.iter().map(|b| format!("{b:?}").to_lowercase()).collect::<Vec<_>>(),
            "kernel": kernel_rep,
            "reports": reports,
        });
        write_json(p, &doc)?;
    }
    let failed: usize = reports
        .iter()
        .flat_map(|r| &r.results)
        .map(|r| r.nr_failed)
        .sum::<usize>()
        + kernel_rep
            .iter()
            .flat_map(|k| &k.results)
            .map(|r| r.pages_not_migrated)
            .sum::<usize>();
    if failed > 0 {
        bail!("{failed} folio(s) or page(s) failed to migrate");
    }
    Ok(())
}

fn stress(a: StressArgs) -> anyhow::Result<()> {
    if a.backend == BackendArg::Kernel {
        bail!("stress runs on the builtin or live backend; the kernel backend is for bench");
    }
    let engines = a.engines.clone();
    if engines.is_empty() {
        bail!("--engines names no engine");
    }
    let inject = stress::parse_inject(&a.inject)?;
    if !(a.seconds > 0.0 && a.seconds <= 86_400.0) {
        bail!("--seconds must be in (0, 86400]");
    }
    let mut out = human(&a.json);
    let opts = stress::StressOptions {
        seconds: a.seconds,
        accessors: a.accessors as usize,
        migrators: a.migrators as usize,
        nodes: a.nodes as usize,
        inject,
        verbose: !a.quiet,
    };
    let before = stress::process_resources();
    let mut reports = Vec::new();
    for &e in &engines {
        let r = match a.backend {
            BackendArg::Live => stress::run_live(e, &opts)?,
            _ => stress::run_one(e, &opts)?,
        };
        if !a.quiet {
            eprintln!(
                "{}: {:.1}s, {} pages migrated, {} lost writes",
                r.engine, r.seconds, r.pages_migrated, r.lost_writes
            );
        }
        reports.push(r);
    }
    write!(out, "{}", crate::tables::stress_table(&reports))?;
    for r in &reports {
        if let Some(n) = r.placement_mismatches {
            writeln!(
                out,
                "{}: placement checked against the kernel's move_pages(2): {n} page(s) disagree",
                r.engine
            )?;
        }
    }
    let after = stress::process_resources();
    let summary = serde_json::json!({
        "schema_version": 2,
        "pagemig_version": env!("CARGO_PKG_VERSION"),
        "command": command_line(),
        "inject": a.inject,
        "accessors": a.accessors,
        "migrators": a.migrators,
        "resources_before": before,
        "resources_after": after,
        "runs": reports,
    });
    if let Some(p) = &a.json {
        write_json(p, &summary)?;
    }
    let dirty: Vec<&str> = reports
        .iter()
        .filter(|r| !r.is_clean())
        .map(|r| r.engine.as_str())
        .collect();
    if !dirty.is_empty() {
        bail!("data loss detected with {}", dirty.join(", "));
    }
    let misplaced: Vec<&str> = reports
        .iter()
        .filter(|r| r.placement_mismatches.unwrap_or(0) > 0)
        .map(|r| r.engine.as_str())
        .collect();
    if !misplaced.is_empty() {
        bail!(
            "pages are not where pagemig says with {} (the kernel's move_pages(2) disagrees)",
            misplaced.join(", ")
        );
    }
    if after.threads != before.threads || after.fds != before.fds {
        bail!(
            "resources not released: threads {} -> {}, fds {} -> {}",
            before.threads,
            after.threads,
            before.fds,
            after.fds
        );
    }
    Ok(())
}

/// Parses `args` (without running anything): what the fuzz target exercises.
pub fn parse(args: &[String]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(args)
}

fn info(json: Option<PathBuf>) -> anyhow::Result<()> {
    let i = crate::info::gather();
    write!(human(&json), "{}", crate::info::render(&i))?;
    if let Some(p) = &json {
        write_json(p, &i)?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum CacheAction {
    /// List the learned states and what each holds.
    Show,
    /// Remove them: auto starts from nothing on the next run.
    Clear,
}

/// `pagemig cache show|clear`.
fn cache(action: CacheAction) -> anyhow::Result<()> {
    use pagemig_engines::auto::prior;
    let Some(dir) = prior::cache_dir() else {
        bail!("no cache directory: set PAGEMIG_CACHE_DIR, XDG_CACHE_HOME or HOME");
    };
    match action {
        CacheAction::Clear => {
            let removed =
                prior::clear(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
            println!(
                "removed {} learned state{} from {}",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" },
                dir.display()
            );
        }
        CacheAction::Show => {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("auto-") && n.ends_with(".json"))
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
            };
            files.sort();
            if files.is_empty() {
                println!("no learned state in {}", dir.display());
            }
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                println!("{}\n{}", f.display(), text.trim_end());
            }
        }
    }
    Ok(())
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // Bad arguments: clap's message, under the tool's name, and exit status 2.
            eprint!("pagemig: {}", e.render());
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let r = match cli.cmd {
        Cmd::Bench(a) => bench(a),
        Cmd::Stress(a) => stress(a),
        Cmd::Info { json } => info(json),
        Cmd::Cache { action } => cache(action),
        Cmd::Run(a) => crate::run::run(a),
        Cmd::RunBench(a) => crate::run::run_bench(a),
        Cmd::Ctl { pid, action } => crate::run::ctl(pid, action),
        Cmd::Migratepages {
            pid,
            from,
            to,
            json,
        } => crate::run::migratepages(pid, &from, &to, &json),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "pagemig",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("cannot write the man page"),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagemig: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_name_and_every_name_parses() {
        for r in Reason::ALL {
            let dashed = r.name().replace('_', "-");
            assert!(REASON_NAMES.contains(&dashed.as_str()), "{dashed}");
        }
        for n in REASON_NAMES {
            assert!(n.parse::<Reason>().is_ok(), "{n}");
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
