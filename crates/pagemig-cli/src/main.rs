//! `pagemig`: benchmark the page-migration engine.

#![forbid(unsafe_code)]

mod bench;
mod spec;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use pagemig::migrate::Mode;

use spec::{parse_engine, parse_folio_size, parse_knob, parse_list, parse_size};

#[derive(Parser, Debug)]
#[command(
    name = "pagemig",
    version,
    about = "Batched, offloaded page migration between memory tiers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Migrate folios between node 0 and node 1 and report GB/s per folio size and engine.
    Bench(BenchArgs),
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
    /// Engines, comma-separated: vanilla, batch, mtcopy:THREADS, dcbm:CHANNELS.
    #[arg(
        long,
        default_value = "vanilla,batch,mtcopy:1,mtcopy:2,dcbm:1,dcbm:2,dcbm:4"
    )]
    engines: String,
    /// An engine knob, ENGINE.NAME=VALUE (repeatable), e.g. dcbm.min_batch_bytes=65536,
    /// mtcopy.cpuselect=spread, batch.reason_mask=all.
    #[arg(long = "knob", value_name = "ENGINE.NAME=VALUE")]
    knobs: Vec<String>,
    /// Migrations per (size, engine); mean and standard deviation are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// NR_MAX_BATCHED_MIGRATION in base pages.
    #[arg(long, default_value_t = 512)]
    batch_pages: usize,
    /// Migration mode (move_pages(2) uses sync).
    #[arg(long, value_enum, default_value_t = ModeArg::Sync)]
    mode: ModeArg,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Small totals and 2 runs, for smoke tests.
    #[arg(long)]
    quick: bool,
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
    if a.batch_pages == 0 {
        return Err("--batch-pages must be at least 1".into());
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
        batch_pages: a.batch_pages,
        mode,
        verbose: !a.quiet,
        knobs,
    };
    let rep = bench::run(&opts).map_err(|e| e.to_string())?;
    print!("{}", bench::render_table(&rep, &sizes, &engines));
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Bench(a) => bench(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagemig: error: {e}");
            ExitCode::FAILURE
        }
    }
}
