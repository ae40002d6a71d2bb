//! The JSON schema of `pagemig bench` (`--json`): one [`BenchReport`] per run. Fields
//! are added, never renamed or removed, without bumping [`SCHEMA_VERSION`].

#![forbid(unsafe_code)]

use serde::Serialize;

use crate::stats::Ratio;

/// The version of the bench JSON's layout: 2 added `schema_version`, `pagemig_version`,
/// `command`, `reason`, `from_node` and `to_node`.
pub const SCHEMA_VERSION: u32 = 2;

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
    /// TLB shootdown IPIs received by this machine's CPUs during a migration (mean; the
    /// `TLB` row of `/proc/interrupts`, system-wide; absent where there is none). A move
    /// of a PMD-mapped THP flushes every CPU that ran one of the process's threads since
    /// its last flush, idle or not (DESIGN.md, "The live backend's copy engines").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tlb_ipis: Option<f64>,
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
    /// The share of the CPU time the machine asked for (all but idle) that the hypervisor
    /// gave to other guests while the bench ran (`/proc/stat`'s steal); absent where the
    /// kernel does not say. Every
    /// timing of a run with much steal is slowed and noisier than the machine's own drift
    /// (added in version 2 without a bump).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_steal: Option<f64>,
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
    /// `anon`, `file` or `shmem` (added in version 2 without a bump: fields are only added).
    pub kind: String,
    /// Engine name.
    pub engine: String,
    /// Whether the batch copy ran pipelined (`--pipeline`, beyond the series): the batch
    /// copied and moved in sub-batches that overlap (added in version 2 without a bump).
    pub pipeline: bool,
    /// Pipelined with the copy of the next sub-batches overlapping the move, by a helper
    /// thread (`--pipeline overlap`); false: each sub-batch copied and moved in turn.
    pub pipeline_overlap: bool,
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
    /// The `mm_migrate_pages` tracepoint's fields, summed over runs.
    pub trace: TraceTotals,
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

impl BenchResult {
    /// The engine as tables and plots name it: `batch`, `batch+pipeline` (sub-batches in
    /// turn) or `batch+overlap` (pipelined with the helper thread).
    pub fn label(&self) -> String {
        match (self.pipeline, self.pipeline_overlap) {
            (false, _) => self.engine.clone(),
            (true, false) => format!("{}+pipeline", self.engine),
            (true, true) => format!("{}+overlap", self.engine),
        }
    }
}

/// auto's learned state in one run: read from (and written back to) `path`.
#[derive(Debug, Clone, Serialize)]
pub struct AutoStateInfo {
    /// The file.
    pub path: String,
    /// Folio orders that started from it (0: none, or no file yet).
    pub orders_applied: usize,
    /// Its age when read, in seconds (absent: there was none, or it was ignored).
    pub age_s: Option<u64>,
    /// Why a file that was there was ignored.
    pub ignored: Option<String>,
    /// Folio orders written back at the end.
    pub saved_orders: Option<usize>,
    /// Why writing it back failed.
    pub save_error: Option<String>,
}

/// The JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The version of pagemig that wrote the document.
    pub pagemig_version: String,
    /// The command line that produced it (set by the caller; empty from the library).
    pub command: String,
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
    /// What became of auto's learned state (runs with auto that keep it; added in
    /// version 2 without a bump).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_state: Option<AutoStateInfo>,
    /// Mode name.
    pub mode: String,
    /// The migration reason (`MR_*` name) every migration was made with.
    pub reason: String,
    /// The node the folios start on.
    pub from_node: u32,
    /// The node they are migrated to (and back from).
    pub to_node: u32,
    /// `builtin` or `live`.
    pub backend: String,
    /// What the folios are: `anon`, `file` (page cache) or `shmem`.
    pub kind: String,
    /// Results.
    pub results: Vec<BenchResult>,
    /// `auto` against the fixed engines of this run, per folio size (main batch size);
    /// empty without `auto`.
    pub auto_ratios: Vec<AutoRatios>,
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

/// The `migrate:mm_migrate_pages` events of a result's runs, summed field by field.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TraceTotals {
    /// Events (one per `migrate_pages()` call).
    pub events: usize,
    /// `succeeded` (base pages).
    pub succeeded: usize,
    /// `failed` (base pages).
    pub failed: usize,
    /// `thp_succeeded`.
    pub thp_succeeded: usize,
    /// `thp_failed`.
    pub thp_failed: usize,
    /// `thp_split`.
    pub thp_split: usize,
    /// `large_folio_split`.
    pub large_folio_split: usize,
}

impl TraceTotals {
    /// Sums events.
    pub fn of<'a>(events: impl Iterator<Item = &'a pagemig::trace::MmMigratePages>) -> Self {
        events.fold(TraceTotals::default(), |mut t, e| {
            t.events += 1;
            t.succeeded += e.succeeded;
            t.failed += e.failed;
            t.thp_succeeded += e.thp_succeeded;
            t.thp_failed += e.thp_failed;
            t.thp_split += e.thp_split;
            t.large_folio_split += e.large_folio_split;
            t
        })
    }
}
