//! The `pagemig` command line: argument parsing and the subcommands.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use pagemig::migrate::Mode;

use crate::spec::{parse_engine, parse_folio_size, parse_knob, parse_list, parse_size};
use crate::{bench, spec, stress};

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
    /// Migrate folios between node 0 and node 1 and report GB/s per folio size and engine.
    Bench(BenchArgs),
    /// Run accessor and migrating threads together with faults injected; fail on any loss.
    Stress(StressArgs),
}

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
    #[arg(long, default_value = "batch,mtcopy:2,dcbm:2")]
    engines: String,
    /// Accessor threads (reading and writing while pages migrate).
    #[arg(long, default_value_t = 2)]
    accessors: usize,
    /// Migrating threads.
    #[arg(long, default_value_t = 1)]
    migrators: usize,
    /// Faults: all, none, or KIND[=RATE],... with kinds eagain, lock, writeback, poison,
    /// enomem, engine, timeout, unregister, reason.
    #[arg(long, default_value = "all")]
    inject: String,
    /// Memory backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Builtin)]
    backend: BackendArg,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Async,
    SyncLight,
    Sync,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Folio sizes, comma-separated (powers of two from 4K to 2M).
    #[arg(long, default_value = "4K,16K,64K,256K,1M,2M")]
    sizes: String,
    /// Bytes moved per migration (a multiple of the largest folio size).
    #[arg(long, default_value = "1G")]
    total: String,
    /// Engines, comma-separated: vanilla, batch, mtcopy:THREADS, dcbm:CHANNELS, auto.
    #[arg(
        long,
        default_value = "vanilla,batch,mtcopy:1,mtcopy:2,dcbm:1,dcbm:2,dcbm:4,auto"
    )]
    engines: String,
    /// An engine knob, ENGINE.NAME=VALUE (repeatable), e.g. dcbm.min_batch_bytes=65536,
    /// mtcopy.cpuselect=spread, batch.reason_mask=all.
    #[arg(long = "knob", value_name = "ENGINE.NAME=VALUE")]
    knobs: Vec<String>,
    /// Migrations per (size, engine); mean and standard deviation are reported.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// NR_MAX_BATCHED_MIGRATION in base pages; a comma-separated list measures each
    /// (latency against batch size), the first one fills the main tables.
    #[arg(long, default_value = "512")]
    batch_pages: String,
    /// Accessor threads reading the region during the migrations, to measure how long
    /// their accesses stall on migration entries (p50/p99/max).
    #[arg(long, default_value_t = 0)]
    accessors: usize,
    /// Print how the auto engine decided (its calibration).
    #[arg(long)]
    explain: bool,
    /// Write a Markdown report to this file.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Write SVG plots into this directory.
    #[arg(long)]
    svg_dir: Option<std::path::PathBuf>,
    /// Migration mode (move_pages(2) uses sync).
    #[arg(long, value_enum, default_value_t = ModeArg::Sync)]
    mode: ModeArg,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Small totals and 2 runs, for smoke tests.
    #[arg(long)]
    quick: bool,
    /// Memory backend: builtin (the memory model), live (this process's own pages, moved
    /// with userfaultfd), or kernel (move_pages(2) on a host with two or more NUMA nodes).
    #[arg(long, value_enum, default_value_t = BackendArg::Builtin)]
    backend: BackendArg,
    /// Live backend: batch the kernel calls per contiguous run, or one call per folio.
    #[arg(long, value_enum, default_value_t = LiveMovesArg::Batched)]
    live_moves: LiveMovesArg,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

fn bench(a: BenchArgs) -> Result<(), String> {
    let sizes = parse_list(&a.sizes, "size", parse_folio_size).map_err(|e| e.to_string())?;
    let engines = parse_list(&a.engines, "engine", parse_engine).map_err(|e| e.to_string())?;
    let knobs = a
        .knobs
        .iter()
        .map(|k| parse_knob(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut total = parse_size(&a.total).map_err(|e| format!("--total: {e}"))?;
    let mut runs = a.runs;
    if a.quick {
        total = total.min(32 << 20);
        runs = runs.min(2);
    }
    let largest = *sizes.iter().max().expect("non-empty");
    if total == 0 {
        return Err("--total must be positive".into());
    }
    if total % largest != 0 {
        return Err(format!(
            "--total {} is not a multiple of the largest folio size {}",
            a.total,
            spec::format_size(largest)
        ));
    }
    if total > 8 << 30 {
        return Err("--total above 8G does not fit this tool's two nodes".into());
    }
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let batch_pages = parse_list(&a.batch_pages, "batch size", |s| {
        let n: usize = s.parse().map_err(|_| {
            spec::SpecError(format!(
                "bad --batch-pages value {s:?}: expected a number of base pages"
            ))
        })?;
        if n == 0 || n > 1 << 20 {
            return Err(spec::SpecError(format!(
                "--batch-pages {n} must be 1..=1048576"
            )));
        }
        Ok(n)
    })
    .map_err(|e| e.to_string())?;
    if a.accessors > 16 {
        return Err("--accessors must be at most 16".into());
    }
    let mode = match a.mode {
        ModeArg::Async => Mode::Async,
        ModeArg::SyncLight => Mode::SyncLight,
        ModeArg::Sync => Mode::Sync,
    };
    let opts = bench::BenchOptions {
        sizes: sizes.clone(),
        total_bytes: total,
        engines: engines.clone(),
        runs,
        batch_pages,
        accessors: a.accessors,
        explain: a.explain,
        mode,
        verbose: !a.quiet,
        knobs,
        backend: match a.backend {
            BackendArg::Live => bench::Backend::Live,
            _ => bench::Backend::Builtin,
        },
        live_batch_moves: a.live_moves == LiveMovesArg::Batched,
    };
    if a.backend == BackendArg::Kernel {
        let rep = crate::kernel::run(&opts).map_err(|e| e.to_string())?;
        print!("{}", crate::kernel::render(&rep));
        if let Some(p) = a.json {
            let text = serde_json::to_string_pretty(&rep).map_err(|e| e.to_string())?;
            std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        return Ok(());
    }
    let rep = bench::run(&opts).map_err(|e| e.to_string())?;
    print!("{}", bench::render_table(&rep, &sizes, &engines));
    if rep.batch_pages_list.len() > 1 || rep.accessors > 0 {
        print!("{}", crate::report::latency_text(&rep));
    }
    if a.explain {
        match &rep.explain {
            Some(t) => print!("\n{t}"),
            None => println!("\n--explain: no auto engine in this run"),
        }
    }
    if let Some(dir) = &a.svg_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        crate::report::write_svgs(&rep, dir).map_err(|e| format!("cannot write plots: {e}"))?;
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
        std::fs::write(p, md).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if let Some(p) = a.json {
        let text = serde_json::to_string_pretty(&rep).map_err(|e| e.to_string())?;
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    let failed: usize = rep.results.iter().map(|r| r.nr_failed).sum();
    if failed > 0 {
        return Err(format!("{failed} folio(s) failed to migrate"));
    }
    Ok(())
}

fn stress(a: StressArgs) -> Result<(), String> {
    if a.backend == BackendArg::Kernel {
        return Err(
            "stress runs on the builtin or live backend; the kernel backend is for bench".into(),
        );
    }
    let engines = parse_list(&a.engines, "engine", parse_engine).map_err(|e| e.to_string())?;
    let inject = stress::parse_inject(&a.inject).map_err(|e| e.to_string())?;
    if !(a.seconds > 0.0 && a.seconds <= 86_400.0) {
        return Err("--seconds must be in (0, 86400]".into());
    }
    if a.accessors == 0 || a.accessors > 64 || a.migrators == 0 || a.migrators > 64 {
        return Err("--accessors and --migrators must be 1..=64".into());
    }
    let opts = stress::StressOptions {
        seconds: a.seconds,
        accessors: a.accessors,
        migrators: a.migrators,
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
        println!(
            "{:<10} {:>6.1}s  ops {:>10}  pages migrated {:>9}  failed {:?}  faults {:?}  lost_writes {} torn_reads {} content_mismatches {} leaked_frames {}",
            r.engine,
            r.seconds,
            r.operations,
            r.pages_migrated,
            r.folios_failed_by_errno,
            r.faults_injected,
            r.lost_writes,
            r.torn_reads,
            r.content_mismatches,
            r.leaked_frames
        );
        reports.push(r);
    }
    let after = stress::process_resources();
    let summary = serde_json::json!({
        "inject": a.inject,
        "accessors": a.accessors,
        "migrators": a.migrators,
        "resources_before": before,
        "resources_after": after,
        "runs": reports,
    });
    if let Some(p) = a.json {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    let dirty: Vec<&str> = reports
        .iter()
        .filter(|r| !r.is_clean())
        .map(|r| r.engine.as_str())
        .collect();
    if !dirty.is_empty() {
        return Err(format!("data loss detected with {}", dirty.join(", ")));
    }
    if after.threads != before.threads || after.fds != before.fds {
        return Err(format!(
            "resources not released: threads {} -> {}, fds {} -> {}",
            before.threads, after.threads, before.fds, after.fds
        ));
    }
    Ok(())
}

/// Parses `args` (without running anything): what the fuzz target exercises.
pub fn parse(args: &[String]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(args)
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Bench(a) => bench(a),
        Cmd::Stress(a) => stress(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagemig: error: {e}");
            ExitCode::FAILURE
        }
    }
}
