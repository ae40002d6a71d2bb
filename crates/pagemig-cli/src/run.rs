//! `pagemig run`, `pagemig ctl` and `pagemig migratepages`: an unmodified program started
//! with the preload library, and the commands that steer it over its control socket.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use pagemig_harness::spec::{format_size, parse_size};
use pagemig_live::control::{self, MoveReport, MoveRequest, Reply, Request, Response, Stat};

use crate::cli::{human as out, write_json};

/// The options of `pagemig run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Allocations and anonymous mappings from this size up go to tiered regions.
    #[arg(long, default_value = "1M")]
    pub threshold: String,
    /// Where first touches are served from: a node, or `interleave` (folio by folio).
    #[arg(long, default_value = "0")]
    pub place: String,
    /// The copy engine (`pagemig bench --engines` syntax).
    #[arg(long, default_value = "batch")]
    pub engine: String,
    /// Each node's pool to start with (it grows on demand).
    #[arg(long, default_value = "16M")]
    pub pool: String,
    /// Regions of 2 MiB and more backed with 2 MiB folios (THPs): `--thp` (or
    /// `--thp=always`), `--thp=never`, or `--thp=auto`, the default: THPs where the kernel
    /// would give them to the program (`transparent_hugepage` `always` for 2 MiB pages; for
    /// its allocations also `madvise` with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`; none
    /// while the program has THP disabled with `prctl`).
    #[arg(
        long,
        value_enum,
        default_value_t = ThpWhen::Auto,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "always"
    )]
    pub thp: ThpWhen,
    /// No notes on standard error (warnings and refusals are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub program: Vec<OsString>,
}

/// When `pagemig run` backs a program's regions with THPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ThpWhen {
    /// As the kernel would back the program's anonymous memory: THPs where it gives them
    /// unasked, for the malloc family's allocations also where `GLIBC_TUNABLES` has glibc's
    /// malloc advise them (`glibc.malloc.hugetlb=1`), for a region the program advises
    /// `MADV_HUGEPAGE` before it touches it (and none for one it advises
    /// `MADV_NOHUGEPAGE`), and none while the program has THP disabled for itself
    /// (`PR_SET_THP_DISABLE`).
    Auto,
    /// Every region of 2 MiB and more.
    Always,
    /// Never: base pages only.
    Never,
}

/// The word in brackets of a `transparent_hugepage` setting (`always [madvise] never`).
pub(crate) fn bracketed_word(setting: &str) -> Option<&str> {
    setting
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']'))
}

/// What the kernel does about 2 MiB THPs for a process's anonymous memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelThp {
    /// THPs unasked (`always`).
    Always,
    /// THPs where the process advises `MADV_HUGEPAGE` (`madvise`).
    Madvise,
    /// None (`never`, THP disabled for the process, or unreadable).
    Never,
}

/// [`KernelThp`] from the contents of `/sys/kernel/mm/transparent_hugepage/enabled`, of
/// `hugepages-2048kB/enabled` beside it (Linux 6.8+: `inherit` defers to the first) and of
/// `/proc/self/status` (whose `THP_enabled: 0` says `PR_SET_THP_DISABLE`, inherited across
/// `fork` and `exec`). Anything unreadable counts as `Never`.
pub fn kernel_thp(enabled: &str, enabled_2m: Option<&str>, status: &str) -> KernelThp {
    let top = bracketed_word(enabled);
    let mode = match enabled_2m.and_then(bracketed_word) {
        Some("inherit") | None => top,
        m => m,
    };
    let disabled = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .is_some_and(|v| v.trim() == "0");
    match mode {
        _ if disabled => KernelThp::Never,
        Some("always") => KernelThp::Always,
        Some("madvise") => KernelThp::Madvise,
        _ => KernelThp::Never,
    }
}

/// Whether `GLIBC_TUNABLES` tells glibc's malloc to advise its mappings `MADV_HUGEPAGE`
/// (`glibc.malloc.hugetlb=1`; the last setting counts, as in glibc).
pub fn malloc_advises_thp(tunables: &str) -> bool {
    tunables
        .rsplit(':')
        .find_map(|t| t.strip_prefix("glibc.malloc.hugetlb="))
        .is_some_and(|v| v.trim() == "1")
}

/// Which of a program's regions `--thp=auto` makes THP regions, as (every region, the
/// malloc family's): every one where the kernel gives THPs unasked; the malloc family's
/// also where it gives them on advice and glibc's malloc was told to advise
/// (`malloc_tunables`: `GLIBC_TUNABLES`), since under `pagemig run` the malloc family is
/// pagemig's and glibc's advice is never made.
pub fn auto_thp(kernel: KernelThp, malloc_tunables: &str) -> (bool, bool) {
    let all = kernel == KernelThp::Always;
    let malloc = all || (kernel == KernelThp::Madvise && malloc_advises_thp(malloc_tunables));
    (all, malloc)
}

/// [`KernelThp`] for this process (and so for a program it execs).
pub fn host_thp() -> KernelThp {
    const DIR: &str = "/sys/kernel/mm/transparent_hugepage";
    let read = |p: &str| std::fs::read_to_string(p).ok();
    kernel_thp(
        &read(&format!("{DIR}/enabled")).unwrap_or_default(),
        read(&format!("{DIR}/hugepages-2048kB/enabled")).as_deref(),
        &read("/proc/self/status").unwrap_or_default(),
    )
}

/// Where the preload library is: `$PAGEMIG_PRELOAD`, else beside the `pagemig` executable.
fn preload_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PAGEMIG_PRELOAD") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("PAGEMIG_PRELOAD={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot find the pagemig executable")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for cand in [
        dir.join("libpagemig_preload.so"),
        dir.join("../lib/pagemig/libpagemig_preload.so"),
    ] {
        if cand.is_file() {
            return Ok(cand.canonicalize().unwrap_or(cand));
        }
    }
    bail!(
        "cannot find libpagemig_preload.so beside {} (build it with `cargo build --release -p pagemig-preload`, or set PAGEMIG_PRELOAD)",
        exe.display()
    )
}

/// The program's file, found on `PATH` as `execvp` would.
fn find_program(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(p))
            .find(|c| c.is_file())
    })
}

/// Whether an ELF file asks for a dynamic loader (a `PT_INTERP` header): `LD_PRELOAD`
/// reaches only such programs. `None`: not an ELF file this check reads (a script, say).
fn is_dynamic(path: &Path) -> Option<bool> {
    let b = std::fs::read(path).ok()?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()) as usize)
    };
    let phoff = u64_at(32)?;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    Some((0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) == 3)
    }))
}

/// `pagemig run`: execs the program with the preload library (same process id, same exit
/// status).
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let threshold = parse_size(&a.threshold).map_err(|e| anyhow::anyhow!("--threshold: {e}"))?;
    if threshold < 4096 {
        bail!("--threshold {threshold}: at least 4K");
    }
    let pool = parse_size(&a.pool).map_err(|e| anyhow::anyhow!("--pool: {e}"))?;
    if pool == 0 || pool % (2 << 20) != 0 {
        bail!("--pool {}: a positive multiple of 2M", a.pool);
    }
    let hosts = pagemig::mm::numa::host_numa_nodes();
    let nr_nodes = if hosts.len() > 1 { hosts.len() } else { 2 };
    let place = match a.place.as_str() {
        "interleave" => "interleave".to_string(),
        n => match n.parse::<usize>() {
            Ok(v) if v < nr_nodes => v.to_string(),
            Ok(v) => bail!("--place {v}: the program's nodes are 0 to {}", nr_nodes - 1),
            Err(_) => bail!("--place {n:?}: a node number or interleave"),
        },
    };
    let engine: pagemig_engines::EngineSpec = a
        .engine
        .parse()
        .map_err(|e| anyhow::anyhow!("--engine {:?}: {e:?}", a.engine))?;
    let lib = preload_path()?;
    let prog = PathBuf::from(&a.program[0]);
    let Some(file) = find_program(&prog) else {
        bail!("{}: no such program", prog.display());
    };
    if is_dynamic(&file) == Some(false) {
        eprintln!(
            "pagemig run: {} is statically linked: the preload library cannot reach it, so it runs untiered",
            file.display()
        );
    }
    // With auto: whether the kernel gives THPs at all (then the program's advice counts).
    let mut kernel_gives_thp = false;
    let (thp, thp_malloc) = match a.thp {
        ThpWhen::Always => (true, true),
        ThpWhen::Never => (false, false),
        ThpWhen::Auto => {
            let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
            let kernel = host_thp();
            kernel_gives_thp = kernel != KernelThp::Never;
            auto_thp(kernel, &tunables)
        }
    };
    if !a.quiet && a.thp == ThpWhen::Auto && thp {
        eprintln!(
            "pagemig run: the kernel gives this program transparent huge pages unasked (transparent_hugepage: always), so its regions of 2 MiB and more are 2 MiB folios unless it disables THP for itself (--thp=never for base pages)"
        );
    } else if !a.quiet && a.thp == ThpWhen::Auto && thp_malloc {
        eprintln!(
            "pagemig run: GLIBC_TUNABLES asks glibc's malloc for transparent huge pages (glibc.malloc.hugetlb=1), so the program's allocations of 2 MiB and more are 2 MiB folios; its own mappings are base pages, as the kernel gives them without advice (--thp=never for base pages everywhere)"
        );
    }
    if !a.quiet && hosts.len() <= 1 {
        eprintln!(
            "pagemig run: this host has one NUMA node; the program's nodes 0 and 1 are two pools of it (moves between them copy memory but change no speed)"
        );
    }
    let mut preload = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let mut cmd = std::process::Command::new(&a.program[0]);
    cmd.args(&a.program[1..])
        .env("LD_PRELOAD", preload)
        .env("PAGEMIG_RUN_THRESHOLD", threshold.to_string())
        .env("PAGEMIG_RUN_PLACE", place)
        .env("PAGEMIG_RUN_ENGINE", engine.to_string())
        .env("PAGEMIG_RUN_POOL", pool.to_string())
        .env(
            "PAGEMIG_RUN_THP",
            match (a.thp, thp, thp_malloc) {
                (ThpWhen::Auto, true, _) => "auto:all",
                (ThpWhen::Auto, false, true) => "auto:malloc",
                (ThpWhen::Auto, false, false) if kernel_gives_thp => "auto:advice",
                (_, true, _) => "1",
                (_, false, _) => "0",
            },
        );
    if a.quiet {
        cmd.env("PAGEMIG_RUN_QUIET", "1");
    }
    let e = cmd.exec();
    bail!("cannot run {}: {e}", prog.display())
}

/// `pagemig ctl`'s actions.
#[derive(clap::Subcommand, Debug)]
pub enum CtlAction {
    /// Where the program's pages are: per node and per region (like numa_maps).
    Stat {
        /// Also write the answer as JSON to this file (`-`: standard output, alone).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Migrate the program's pages.
    Move {
        /// The destination node.
        #[arg(long)]
        to: u32,
        /// Only pages now on these nodes (a node list: `0`, `0,2`, `0-3`).
        #[arg(long)]
        from: Option<String>,
        /// Only pages in START-END (addresses, hex with 0x or decimal).
        #[arg(long)]
        range: Option<String>,
        /// The copy engine for this move and after (`pagemig bench --engines` syntax).
        #[arg(long)]
        engine: Option<String>,
        /// Hold the migration at this rate, in MB/s.
        #[arg(long)]
        rate: Option<f64>,
        /// Folios per batch (1 to 512; default 512, the series' batch). Fewer pages are
        /// unmapped at a time, so a thread that touches one waits less.
        #[arg(long)]
        batch_pages: Option<usize>,
        /// Pipelined (beyond the series): each batch copied and moved in growing
        /// sub-batches, in turn, so its first pages are back in the program early.
        #[arg(long)]
        pipeline: bool,
        /// Also write the answer as JSON to this file (`-`: standard output, alone).
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn parse_addr(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| anyhow::anyhow!("bad address {s:?}"))
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let Some((a, b)) = s.split_once('-') else {
        bail!("--range {s:?}: START-END");
    };
    let (a, b) = (parse_addr(a)?, parse_addr(b)?);
    if a >= b {
        bail!("--range {s:?}: START must be below END");
    }
    Ok((a, b))
}

fn nodes(s: &str) -> anyhow::Result<Vec<u32>> {
    let v = pagemig::mm::numa::parse_node_list(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    if v.is_empty() {
        bail!("{s:?} names no node");
    }
    Ok(v)
}

fn ask(pid: u32, req: &Request) -> anyhow::Result<Reply> {
    match control::request(pid, req).map_err(|e| anyhow::anyhow!(e))? {
        Response::Ok(r) => Ok(r),
        Response::Error { message } => bail!("process {pid}: {message}"),
    }
}

/// The human form of a stat answer.
pub fn render_stat(s: &Stat) -> String {
    let mut t = String::new();
    let phys = if s.one_physical_node {
        " (two pools of one physical node)"
    } else {
        ""
    };
    t += &format!(
        "pid {}: {} nodes{phys}, engine {}, threshold {}, place {}\n",
        s.pid,
        s.nodes.len(),
        s.engine,
        format_size(s.threshold_bytes as usize),
        s.place
    );
    t += "node  host  pool        free        pages\n";
    for n in &s.nodes {
        t += &format!(
            "{:<5} {:<5} {:<11} {:<11} {}\n",
            n.id,
            n.host_node.map_or("-".into(), |h| h.to_string()),
            mib(n.pool_bytes),
            mib(n.free_bytes),
            n.pages
        );
    }
    t += &format!("{} regions\n", s.regions.len());
    for r in &s.regions {
        let per: Vec<String> = r
            .pages_per_node
            .iter()
            .enumerate()
            .filter(|(_, &p)| p > 0)
            .map(|(i, p)| format!("N{i}={p}"))
            .collect();
        t += &format!(
            "{:x}-{:x} {} {} {} folios {}\n",
            r.start,
            r.end,
            mib(r.end - r.start),
            r.source,
            format_size(r.folio_bytes as usize),
            if per.is_empty() {
                "untouched".into()
            } else {
                per.join(" ")
            }
        );
    }
    let c = &s.counters;
    t += &format!(
        "migrated {} pages ({} failed), {} first touches, {} faults on migration, {} discarded, {} pool growths, {} regions made, {} freed, {} forks\n",
        c.pages_migrated,
        c.pages_failed,
        c.first_touches,
        c.faults_on_migration,
        c.pages_discarded,
        c.pool_growths,
        c.regions_made,
        c.regions_freed,
        c.forks
    );
    if c.regions_remade + c.thp_advice_not_followed > 0 {
        t += &format!(
            "the program's THP advice: {} regions remade with the folio size it asked for, {} kept theirs (pages in use, or advice on part of a region)\n",
            c.regions_remade, c.thp_advice_not_followed
        );
    }
    let u = &s.untiered;
    if u.detached_regions + u.passed_through > 0 {
        t += &format!(
            "untiered: {} regions detached ({} pages), {} mappings left to the kernel ({})\n",
            u.detached_regions,
            u.detached_pages,
            u.passed_through,
            mib(u.passed_through_bytes)
        );
    }
    t
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn render_move(pid: u32, r: &MoveReport) -> String {
    format!(
        "pid {pid}: migrated {} pages ({} MiB) in {:.3} s, {} failed, {} already in place, {} regions\n",
        r.pages_migrated,
        (r.pages_migrated * 4096) >> 20,
        r.seconds,
        r.pages_failed,
        r.pages_in_place,
        r.regions
    )
}

/// `pagemig ctl PID ...`.
pub fn ctl(pid: u32, action: CtlAction) -> anyhow::Result<()> {
    match action {
        CtlAction::Stat { json } => {
            let Reply::Stat(s) = ask(pid, &Request::Stat)? else {
                bail!("process {pid} answered a stat with something else");
            };
            write!(out(&json), "{}", render_stat(&s))?;
            if let Some(p) = &json {
                write_json(p, &s)?;
            }
            Ok(())
        }
        CtlAction::Move {
            to,
            from,
            range,
            engine,
            rate,
            batch_pages,
            pipeline,
            json,
        } => {
            let req = MoveRequest {
                from: from.as_deref().map(nodes).transpose()?,
                to: vec![to],
                range: range.as_deref().map(parse_range).transpose()?,
                engine,
                rate_mb_s: rate,
                batch_pages,
                pipeline,
            };
            do_move(pid, req, &json)
        }
    }
}

fn do_move(pid: u32, req: MoveRequest, json: &Option<PathBuf>) -> anyhow::Result<()> {
    let Reply::Moved(r) = ask(pid, &Request::Move(req))? else {
        bail!("process {pid} answered a move with something else");
    };
    write!(out(json), "{}", render_move(pid, &r))?;
    if let Some(p) = json {
        write_json(p, &r)?;
    }
    if r.pages_failed > 0 {
        eprintln!(
            "pagemig: {} pages stayed where they were (busy, shared with a child, or no memory on the node)",
            r.pages_failed
        );
    }
    Ok(())
}

/// `pagemig migratepages PID FROM-NODES TO-NODES` (numactl's form): every page on the
/// first nodes moves to the second, paired in order (or all to one).
pub fn migratepages(pid: u32, from: &str, to: &str, json: &Option<PathBuf>) -> anyhow::Result<()> {
    let (f, t) = (nodes(from)?, nodes(to)?);
    if t.len() != 1 && t.len() != f.len() {
        bail!(
            "{} source nodes and {} destinations: give one destination or as many",
            f.len(),
            t.len()
        );
    }
    do_move(
        pid,
        MoveRequest {
            from: Some(f),
            to: t,
            range: None,
            engine: None,
            rate_mb_s: None,
            batch_pages: None,
            pipeline: false,
        },
        json,
    )
}

/// The options of `pagemig run-bench`.
#[derive(clap::Args, Debug)]
pub struct RunBenchArgs {
    /// The migration rate while moving, in MB/s (10^6 bytes).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Runs of each configuration (interleaved; the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Folios per batch of the moves (`pagemig ctl move --batch-pages`; default 512).
    #[arg(long)]
    pub batch_pages: Option<usize>,
    /// Each node's pool to start with, for both runs under `pagemig run` (`pagemig run
    /// --pool`): a pool as large as the program's memory is made before the program
    /// touches it, so no move waits for a pool to grow.
    #[arg(long)]
    pub pool: Option<String>,
    /// The moves pipelined (`pagemig ctl move --pipeline`; beyond the series).
    #[arg(long)]
    pub pipeline: bool,
    /// Transparent huge pages in every run: the program's regions are THP regions under
    /// `pagemig run` (`pagemig run --thp`), and its plain runs get them from glibc's malloc
    /// (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, which advises its mappings
    /// `MADV_HUGEPAGE`), so that both sides have the same page size.
    #[arg(long)]
    pub thp: bool,
    /// The copy engine of the runs under `pagemig run` (`pagemig run --engine`).
    #[arg(long, default_value = "batch")]
    pub engine: String,
    /// Also write the results as JSON to this file (`-`: standard output, alone).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The program and its arguments. Its throughput is the `ops_per_s` of a JSON object on
    /// its last line of output (as `pagemig-workload` prints), else 1 / its wall time.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub program: Vec<OsString>,
}

/// One run of the program.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSample {
    /// `plain`, `tiered` or `moving`.
    pub config: String,
    /// Operations per second (or 1 / seconds).
    pub throughput: f64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The longest stall the program reported, in µs (`None`: it reports none).
    pub max_stall_us: Option<f64>,
    /// Stalls over 1 ms it reported.
    pub stalls_over_1ms: Option<u64>,
    /// The share of its measuring threads' time on a CPU, as it reported it
    /// (`pagemig-workload`: from `/proc/thread-self/schedstat`); below 1, the rest is time
    /// asleep — on pages under migration, when it moves.
    pub on_cpu: Option<f64>,
    /// Times per second each of those threads was switched in (after a sleep or a
    /// preemption), as it reported it.
    pub switches_per_s: Option<f64>,
    /// Times per second each of those threads went to sleep itself (voluntary context
    /// switches: on a page under migration, when it moves), as it reported it; unlike
    /// the switches-in, no other load on the machine adds to these.
    pub sleeps_per_s: Option<f64>,
    /// Pages the mover migrated during the run.
    pub pages_migrated: u64,
    /// The rate the mover held while it moved, in MB/s: the pages of its completed moves
    /// over their time (the program's start-up, before its socket exists, and a move
    /// cut short by its exit are not in it).
    pub moved_mb_s: f64,
    /// The same pages over the program's whole wall time, in MB/s.
    pub moved_mb_s_wall: f64,
    /// The engine that copied, as `pagemig ctl stat` showed it to the mover after its
    /// moves (`None` in the runs without a mover).
    pub engine: Option<String>,
    /// The largest folio size of the program's regions it saw then (2 MiB with `--thp`).
    pub largest_folio_bytes: Option<u64>,
    /// The share of the CPU time the machine asked for (all but idle) that the hypervisor
    /// gave to other guests during the run (`/proc/stat`'s steal; `None` where the kernel
    /// does not say).
    pub cpu_steal: Option<f64>,
}

/// The report of `pagemig run-bench`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunBenchReport {
    /// The program.
    pub program: Vec<String>,
    /// The rate asked for while moving, MB/s.
    pub rate_mb_s: f64,
    /// Folios per batch of the moves (512 unless `--batch-pages` said otherwise).
    pub batch_pages: usize,
    /// `--pool`, if given.
    pub pool: Option<String>,
    /// Whether the moves were pipelined.
    pub pipeline: bool,
    /// Whether every run had transparent huge pages (`--thp`).
    pub thp: bool,
    /// The copy engine under `pagemig run`.
    pub engine: String,
    /// Every run.
    pub samples: Vec<RunSample>,
    /// Median throughput under `pagemig run` with no migration, over the plain median.
    pub tiered_over_plain: f64,
    /// Median throughput while migrating, over the plain median.
    pub moving_over_plain: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn one_run(a: &RunBenchArgs, config: &str) -> anyhow::Result<RunSample> {
    let dir = tempfile_dir()?;
    let mut cmd = if config == "plain" {
        let mut c = std::process::Command::new(&a.program[0]);
        c.args(&a.program[1..]);
        c
    } else {
        let mut c = std::process::Command::new(std::env::current_exe()?);
        c.args(["run", "--quiet"]);
        if let Some(p) = &a.pool {
            c.args(["--pool", p]);
        }
        // Like the plain runs: THPs with --thp, base pages without (whatever the host's
        // transparent_hugepage setting, which `pagemig run` follows by default).
        c.arg(if a.thp { "--thp" } else { "--thp=never" });
        c.args(["--engine", &a.engine]);
        c.arg("--").args(&a.program);
        c.env("PAGEMIG_RUN_DIR", &dir);
        c
    };
    if a.thp && config == "plain" {
        // Under `pagemig run` the program's large allocations are THP regions already.
        cmd.env("GLIBC_TUNABLES", thp_tunables());
    }
    cmd.stdout(std::process::Stdio::piped());
    let cpu0 = pagemig::sys::CpuTimes::now();
    let t0 = std::time::Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", a.program[0]))?;
    let pid = child.id();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (out, moved) = std::thread::scope(|s| {
        let mover = (config == "moving").then(|| {
            s.spawn(|| {
                let path = dir.join(format!("run-{pid}.sock"));
                let (mut pages, mut secs, mut to) = (0u64, 0f64, 1u32);
                let (mut engine, mut largest) = (None::<String>, None::<u64>);
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let req = Request::Move(MoveRequest {
                        from: None,
                        to: vec![to],
                        range: None,
                        engine: None,
                        rate_mb_s: Some(a.rate),
                        batch_pages: a.batch_pages,
                        pipeline: a.pipeline,
                    });
                    match control::request_at(&path, pid, &req) {
                        Ok(Response::Ok(Reply::Moved(r))) => {
                            pages += r.pages_migrated;
                            secs += r.seconds;
                            to ^= 1;
                            // What the moved regions were (between moves: a stat does
                            // not wait for a move).
                            if let Ok(Response::Ok(Reply::Stat(st))) =
                                control::request_at(&path, pid, &Request::Stat)
                            {
                                largest =
                                    largest.max(st.regions.iter().map(|r| r.folio_bytes).max());
                                engine = Some(st.engine);
                            }
                        }
                        _ => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
                (pages, secs, engine, largest)
            })
        });
        let out = child.wait_with_output();
        stop.store(true, std::sync::atomic::Ordering::Release);
        (
            out,
            mover
                .map(|m| m.join().unwrap())
                .unwrap_or((0, 0.0, None, None)),
        )
    });
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_steal = cpu0
        .zip(pagemig::sys::CpuTimes::now())
        .and_then(|(a, b)| b.steal_since(&a));
    let out = out?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!("{:?} ({config}) exited with {}", a.program[0], out.status);
    }
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    let j: Option<serde_json::Value> = serde_json::from_str(&last).ok();
    let get = |k: &str| j.as_ref().and_then(|v| v.get(k)).and_then(|v| v.as_f64());
    Ok(RunSample {
        config: config.into(),
        throughput: get("ops_per_s").unwrap_or(1.0 / seconds),
        seconds,
        max_stall_us: get("max_stall_us"),
        stalls_over_1ms: get("stalls_over_1ms").map(|v| v as u64),
        on_cpu: get("on_cpu"),
        switches_per_s: get("switches_per_s"),
        sleeps_per_s: get("sleeps_per_s"),
        pages_migrated: moved.0,
        moved_mb_s: if moved.1 > 0.0 {
            moved.0 as f64 * 4096.0 / 1e6 / moved.1
        } else {
            0.0
        },
        moved_mb_s_wall: moved.0 as f64 * 4096.0 / 1e6 / seconds,
        engine: moved.2,
        largest_folio_bytes: moved.3,
        cpu_steal,
    })
}

/// `GLIBC_TUNABLES` with glibc's malloc advising its mappings `MADV_HUGEPAGE`, after
/// whatever tunables the environment already sets.
fn thp_tunables() -> OsString {
    let mut t = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    if !t.is_empty() {
        t.push(":");
    }
    t.push("glibc.malloc.hugetlb=1");
    t
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "pagemig-run-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&d).with_context(|| format!("cannot make {}", d.display()))?;
    Ok(d)
}

/// `pagemig run-bench`: the program plainly, under `pagemig run` with no migration, and
/// under `pagemig run` while its memory moves at `--rate`, interleaved, `--runs` times each.
pub fn run_bench(a: RunBenchArgs) -> anyhow::Result<()> {
    if !(a.rate.is_finite() && a.rate > 0.0) {
        bail!("--rate {}: a positive number of MB/s", a.rate);
    }
    if let Some(p) = &a.pool {
        match parse_size(p) {
            Ok(n) if n > 0 && n % (2 << 20) == 0 => {}
            _ => bail!("--pool {p}: a positive multiple of 2M"),
        }
    }
    if a.batch_pages.is_some_and(|n| !(1..=512).contains(&n)) {
        bail!("--batch-pages {}: 1 to 512", a.batch_pages.unwrap_or(0));
    }
    if a.runs == 0 {
        bail!("--runs 0: at least one");
    }
    a.engine
        .parse::<pagemig_engines::EngineSpec>()
        .map_err(|err| anyhow::anyhow!("--engine {:?}: {err:?}", a.engine))?;
    preload_path()?;
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if !a.thp && auto_thp(host_thp(), &tunables).1 {
        eprintln!(
            "pagemig run-bench: the plain runs get transparent huge pages (transparent_hugepage: always, or GLIBC_TUNABLES with glibc.malloc.hugetlb=1) and the runs under pagemig run base pages (--thp=never); pass --thp to compare like with like"
        );
    }
    let mut samples = Vec::new();
    for i in 0..a.runs {
        for config in ["plain", "tiered", "moving"] {
            let s = one_run(&a, config)?;
            eprintln!(
                "run {}/{} {config:<7} {:>12.0}/s  {:.2} s{}",
                i + 1,
                a.runs,
                s.throughput,
                s.seconds,
                if config == "moving" {
                    format!("  {:.0} MB/s migrated", s.moved_mb_s)
                } else {
                    String::new()
                }
            );
            samples.push(s);
        }
    }
    let med = |c: &str| {
        median(
            samples
                .iter()
                .filter(|s| s.config == c)
                .map(|s| s.throughput)
                .collect(),
        )
    };
    let (p, t, m) = (med("plain"), med("tiered"), med("moving"));
    let rep = RunBenchReport {
        program: a
            .program
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect(),
        rate_mb_s: a.rate,
        batch_pages: a.batch_pages.unwrap_or(512),
        pool: a.pool.clone(),
        pipeline: a.pipeline,
        thp: a.thp,
        engine: a.engine.clone(),
        samples: samples.clone(),
        tiered_over_plain: t / p,
        moving_over_plain: m / p,
    };
    let mut o = out(&a.json);
    writeln!(
        o,
        "config   throughput (median)   vs plain   max stall   stalls > 1 ms   on CPU   switches/s    steal   migrated"
    )?;
    for (c, v) in [("plain", p), ("tiered", t), ("moving", m)] {
        let mine: Vec<&RunSample> = samples.iter().filter(|s| s.config == c).collect();
        let stall = mine
            .iter()
            .filter_map(|s| s.max_stall_us)
            .fold(f64::NAN, f64::max);
        let over: u64 = mine.iter().filter_map(|s| s.stalls_over_1ms).sum();
        let mb = median(mine.iter().map(|s| s.moved_mb_s).collect());
        // Medians of what the program reported (`-`: it reports none).
        let med_of = |f: fn(&RunSample) -> Option<f64>| {
            let v: Vec<f64> = mine.iter().filter_map(|s| f(s)).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let on = med_of(|s| s.on_cpu).map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
        let sw = med_of(|s| s.switches_per_s).map_or("-".into(), |v| format!("{v:.0}"));
        let st = med_of(|s| s.cpu_steal).map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
        writeln!(
            o,
            "{c:<8} {v:>18.0}/s   {:>8.3}   {:>7.0} µs   {:>13}   {on:>6}   {sw:>10}   {st:>6}   {}",
            v / p,
            stall,
            over,
            if c == "moving" {
                format!("{mb:.0} MB/s")
            } else {
                "-".into()
            }
        )?;
    }
    // Said only when it matters: steal slows the runs unevenly, so the ratios above
    // carry more than the program's own noise.
    let steal: Vec<f64> = samples.iter().filter_map(|s| s.cpu_steal).collect();
    if !steal.is_empty() && median(steal.clone()) >= crate::tables::STEAL_WARN {
        if let Some(line) = crate::tables::steal_line(Some(median(steal))) {
            writeln!(o, "{line}")?;
        }
    }
    if let Some(path) = &a.json {
        write_json(path, &rep)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{auto_thp, kernel_thp, malloc_advises_thp, KernelThp};

    const ON: &str = "Name:\tx\nTHP_enabled:\t1\n";
    const OFF: &str = "Name:\tx\nTHP_enabled:\t0\n";
    const ALWAYS: &str = "[always] madvise never\n";
    const MADVISE: &str = "always [madvise] never\n";
    const NEVER: &str = "always madvise [never]\n";

    #[test]
    fn thp_follows_the_kernels_setting_for_2m_pages_and_the_processs_prctl() {
        use KernelThp::*;
        // The top-level setting, with no per-size one (before Linux 6.8).
        assert_eq!(kernel_thp(ALWAYS, None, ON), Always);
        assert_eq!(kernel_thp(MADVISE, None, ON), Madvise);
        assert_eq!(kernel_thp(NEVER, None, ON), Never);
        // The 2 MiB size's own setting decides unless it inherits.
        let own_never = Some("always inherit madvise [never]\n");
        assert_eq!(kernel_thp(ALWAYS, own_never, ON), Never);
        let inherit = Some("always [inherit] madvise never\n");
        assert_eq!(kernel_thp(ALWAYS, inherit, ON), Always);
        let own_always = Some("[always] inherit madvise never\n");
        assert_eq!(kernel_thp(MADVISE, own_always, ON), Always);
        // PR_SET_THP_DISABLE (THP_enabled: 0) wins; no line (before Linux 5.0) does not.
        assert_eq!(kernel_thp(ALWAYS, None, OFF), Never);
        assert_eq!(kernel_thp(MADVISE, None, OFF), Never);
        assert_eq!(kernel_thp(ALWAYS, None, "Name:\tx\n"), Always);
        // Unreadable: none.
        assert_eq!(kernel_thp("", None, ""), Never);
    }

    #[test]
    fn malloc_regions_are_thps_where_glibcs_malloc_would_have_advised_them() {
        use KernelThp::*;
        assert!(malloc_advises_thp("glibc.malloc.hugetlb=1"));
        assert!(malloc_advises_thp(
            "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
        ));
        assert!(!malloc_advises_thp("glibc.malloc.hugetlb=0"));
        assert!(!malloc_advises_thp(
            "glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0"
        ));
        assert!(!malloc_advises_thp("glibc.malloc.hugetlb=2"));
        assert!(!malloc_advises_thp(""));
        let asks = "glibc.malloc.hugetlb=1";
        assert_eq!(auto_thp(Always, ""), (true, true));
        assert_eq!(auto_thp(Always, asks), (true, true));
        assert_eq!(auto_thp(Madvise, ""), (false, false));
        assert_eq!(auto_thp(Madvise, asks), (false, true));
        assert_eq!(auto_thp(Never, asks), (false, false));
    }
}
