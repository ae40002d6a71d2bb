//! The tiering state of a program under `pagemig run`: its nodes' pools, its regions (one
//! per large allocation or anonymous mapping), and what each interposed call does to
//! them. Safe code on addresses; the raw calls are [`crate::interpose`]'s.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use pagemig::mm::{Memory, MemoryConfig, NodeConfig, NodeId, PAGE_SIZE};
use pagemig::sync::lock;
use pagemig_engines::{Engine, EngineSpec};
use pagemig_live::{Live, LiveConfig, LiveError, LiveRegion, RegionConfig};

/// Regions are aligned to 2 MiB: any alignment up to that is met.
pub(crate) const REGION_ALIGN: usize = 2 << 20;

/// Where a region came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The malloc family.
    Malloc,
    /// `mmap`.
    Mmap,
}

/// The options, from the environment `pagemig run` sets.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) threshold: usize,
    /// `None`: interleave.
    pub(crate) place: Option<u32>,
    pub(crate) engine: String,
    pub(crate) pool_bytes: usize,
    pub(crate) max_region: usize,
    /// THP regions for every source (`PAGEMIG_RUN_THP=1` or `auto:all`).
    pub(crate) thp: bool,
    /// THP regions for the malloc family's allocations (`PAGEMIG_RUN_THP=auto:malloc`: glibc's
    /// malloc was told to advise its mappings `MADV_HUGEPAGE`; or with `thp`).
    pub(crate) thp_malloc: bool,
    /// `--thp=auto`: no THP region while the program has THP disabled for itself
    /// (`PR_SET_THP_DISABLE`, as redis does at startup), as the kernel would give it none.
    pub(crate) thp_follows_prctl: bool,
    /// `--thp=auto` where the kernel follows advice (`always` or `madvise`): a region the
    /// program advises `MADV_HUGEPAGE` (or `MADV_NOHUGEPAGE`) before touching it is remade
    /// with the folio size the kernel would then give it.
    pub(crate) thp_follows_advice: bool,
    pub(crate) fault_around: usize,
}

fn env_size(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number of bytes")),
        Err(_) => Ok(default),
    }
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let place = match std::env::var("PAGEMIG_RUN_PLACE").as_deref() {
            Err(_) | Ok("0") => Some(0),
            Ok("interleave") => None,
            Ok(n) => Some(
                n.parse()
                    .map_err(|_| format!("PAGEMIG_RUN_PLACE={n:?}: a node number or interleave"))?,
            ),
        };
        // "1" (--thp), "0", or what --thp=auto chose where the kernel gives THPs at all:
        // "auto:all" (every region), "auto:malloc" (the malloc family's regions only),
        // "auto:advice" (none unless the program advises them).
        let thp = std::env::var("PAGEMIG_RUN_THP");
        let c = Config {
            threshold: env_size("PAGEMIG_RUN_THRESHOLD", 1 << 20)?.max(PAGE_SIZE),
            place,
            engine: std::env::var("PAGEMIG_RUN_ENGINE").unwrap_or_else(|_| "batch".into()),
            pool_bytes: env_size("PAGEMIG_RUN_POOL", 16 << 20)?,
            max_region: env_size("PAGEMIG_RUN_MAX_REGION", 16 << 30)?,
            thp: thp.as_deref().is_ok_and(|v| v == "1" || v == "auto:all"),
            thp_malloc: thp
                .as_deref()
                .is_ok_and(|v| ["1", "auto:all", "auto:malloc"].contains(&v)),
            thp_follows_prctl: thp.as_deref().is_ok_and(|v| v.starts_with("auto:")),
            thp_follows_advice: thp.as_deref().is_ok_and(|v| v.starts_with("auto:")),
            fault_around: env_size("PAGEMIG_RUN_FAULT_AROUND", 64)?.clamp(1, 512),
        };
        if c.pool_bytes == 0 || c.pool_bytes % (2 << 20) != 0 {
            return Err(format!(
                "PAGEMIG_RUN_POOL={}: a positive multiple of 2 MiB",
                c.pool_bytes
            ));
        }
        Ok(c)
    }
}

/// One region.
pub(crate) struct Entry {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) map_len: usize,
    /// The bytes the program asked for (`len` is that rounded up to the folio size).
    pub(crate) asked: usize,
    pub(crate) source: Source,
    /// `None` once freed or detached. Migrations hold it shared, a chunk at a time; a free,
    /// a discard or a detach holds it exclusively.
    pub(crate) region: RwLock<Option<LiveRegion>>,
}

/// The counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) regions_made: AtomicU64,
    pub(crate) regions_freed: AtomicU64,
    pub(crate) detached_regions: AtomicU64,
    pub(crate) passed_through: AtomicU64,
    pub(crate) passed_through_bytes: AtomicU64,
    pub(crate) pages_migrated: AtomicU64,
    pub(crate) pages_failed: AtomicU64,
    pub(crate) pages_discarded: AtomicU64,
    pub(crate) forks: AtomicU64,
    pub(crate) regions_remade: AtomicU64,
    pub(crate) thp_advice_not_followed: AtomicU64,
}

/// The process's tiering state (leaked: it lives as long as the process).
pub(crate) struct State {
    pub(crate) cfg: Config,
    pub(crate) mm: Arc<Memory>,
    pub(crate) live: Live,
    /// The engine's spec and the running driver.
    pub(crate) engine: Mutex<(String, Option<Engine>)>,
    pub(crate) regions: Mutex<BTreeMap<usize, Arc<Entry>>>,
    /// Held by a migration for each chunk, and by a fork for the fork: a child never sees
    /// a page in the middle of a move.
    pub(crate) migrating: Mutex<()>,
    /// The host node of each node (`None`: pools of one physical node).
    pub(crate) host_nodes: Vec<Option<u32>>,
    pub(crate) counters: Counters,
    pub(crate) warned: AtomicBool,
}

/// Ranges a forked child inherited from its parent's regions: plain memory there, freed
/// with `munmap`.
static INHERITED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
/// Some state holds regions, or a child inherited some: the interposed calls look.
static MAY_HOLD: AtomicBool = AtomicBool::new(false);
static NR_REGIONS: AtomicUsize = AtomicUsize::new(0);
/// Tiering started once in this process or an ancestor: a forked child may start its own.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub(crate) fn may_hold_regions() -> bool {
    MAY_HOLD.load(Ordering::Acquire)
}

fn say(msg: &str) {
    if std::env::var_os("PAGEMIG_RUN_QUIET").is_none() {
        eprintln!("pagemig run: {msg}");
    }
}

fn mem_total() -> usize {
    pagemig::mm::numa::host_mem_total_bytes().unwrap_or(4 << 30)
}

/// Makes the state: the nodes (the host's NUMA nodes, or two pools of its one node), the
/// userfaultfd (with kernel-mode faults: the program's system calls touch its memory), the
/// engine and the control thread. `None`, with the reason on stderr, when the program must
/// run untiered.
pub(crate) fn init(child: bool) -> Option<&'static State> {
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            say(&format!("{e}; running untiered"));
            return None;
        }
    };
    let hosts = pagemig::mm::numa::host_topology();
    let (nodes, host_nodes): (Vec<NodeConfig>, Vec<Option<u32>>) = if hosts.len() > 1 {
        hosts
            .iter()
            .map(|h| {
                (
                    NodeConfig {
                        capacity_bytes: cfg.pool_bytes,
                        max_bytes: Some(h.mem_total_bytes as usize),
                        host_node: Some(h.id),
                        no_huge_pages: !cfg.thp_malloc,
                    },
                    Some(h.id),
                )
            })
            .unzip()
    } else {
        let total = mem_total();
        (0..2)
            .map(|_| {
                (
                    NodeConfig {
                        capacity_bytes: cfg.pool_bytes,
                        max_bytes: Some(total),
                        host_node: None,
                        no_huge_pages: !cfg.thp_malloc,
                    },
                    None,
                )
            })
            .unzip()
    };
    if let Some(p) = cfg.place {
        if p as usize >= nodes.len() {
            say(&format!(
                "--place {p}: there are nodes 0 to {}; running untiered",
                nodes.len() - 1
            ));
            return None;
        }
    }
    let mm = match Memory::new(MemoryConfig {
        nodes,
        ..Default::default()
    }) {
        Ok(m) => m,
        Err(e) => {
            say(&format!(
                "cannot make the node pools: {e}; running untiered"
            ));
            return None;
        }
    };
    let live = match Live::new(
        &mm,
        LiveConfig {
            user_mode_only: false,
            ..Default::default()
        },
    ) {
        Ok(l) => l,
        Err(e) => {
            let why = match &e {
                LiveError::Refused(io) if io.raw_os_error() == Some(libc::EPERM) => {
                    "this process may not handle kernel-mode page faults with userfaultfd \
                     (it needs CAP_SYS_PTRACE, or vm.unprivileged_userfaultfd=1); without \
                     them a system call reading a page under migration would fail with \
                     EFAULT"
                        .to_string()
                }
                other => other.to_string(),
            };
            say(&format!("{why}; running the program untiered"));
            return None;
        }
    };
    let spec: EngineSpec = match cfg.engine.parse() {
        Ok(s) => s,
        Err(e) => {
            say(&format!("engine {:?}: {e:?}; running untiered", cfg.engine));
            return None;
        }
    };
    let eng = match Engine::start(spec, &mm, &[]) {
        Ok(e) => e,
        Err(e) => {
            say(&format!("engine {:?}: {e}; running untiered", cfg.engine));
            return None;
        }
    };
    let st: &'static State = Box::leak(Box::new(State {
        engine: Mutex::new((cfg.engine.clone(), Some(eng))),
        cfg,
        mm,
        live,
        regions: Mutex::new(BTreeMap::new()),
        migrating: Mutex::new(()),
        host_nodes,
        counters: Counters::default(),
        warned: AtomicBool::new(false),
    }));
    if let Err(e) = crate::ctl::start(st) {
        say(&format!(
            "no control socket: {e}; the program runs tiered but cannot be steered"
        ));
    }
    let _ = child;
    ENABLED.store(true, Ordering::Release);
    Some(st)
}

impl State {
    pub(crate) fn threshold(&self) -> usize {
        self.cfg.threshold
    }

    /// A new region of at least `size` bytes; `None`: leave it to the kernel or the next
    /// allocator.
    pub(crate) fn alloc(&self, size: usize, source: Source, populate: bool) -> Option<usize> {
        let thp = (self.cfg.thp || (self.cfg.thp_malloc && source == Source::Malloc))
            && !(self.cfg.thp_follows_prctl && crate::interpose::thp_disabled());
        let huge = thp && size >= REGION_ALIGN;
        let unit = if huge { REGION_ALIGN } else { PAGE_SIZE };
        let len = size.checked_next_multiple_of(unit)?;
        if len > self.cfg.max_region {
            self.counters.passed_through.fetch_add(1, Ordering::Relaxed);
            self.counters
                .passed_through_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
            return None;
        }
        let mut rc = RegionConfig::new(len, if huge { 9 } else { 0 });
        // Fault-around on every region of base pages, THP-advised pools (--thp) too: there
        // a first touch moves base pages out of an arena THP, which splits it, and the
        // zero-page fix-ups that follow run while the woken thread writes the pages around
        // them (DESIGN.md, "First touch"). A region of THPs is populated a folio a fault.
        rc.fault_around = if huge { 1 } else { self.cfg.fault_around };
        match self.cfg.place {
            Some(n) => rc.placement = NodeId(n),
            None => rc.interleave = true,
        }
        let r = match self.live.region(rc) {
            Ok(r) => r,
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    say(&format!(
                        "a region of {len} bytes could not be made ({e}): left untiered"
                    ));
                }
                self.counters.passed_through.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .passed_through_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                return None;
            }
        };
        if populate {
            let _ = r.populate();
        }
        let start = r.addr();
        let e = Arc::new(Entry {
            start,
            len: r.len(),
            map_len: r.mapping_len(),
            asked: size,
            source,
            region: RwLock::new(Some(r)),
        });
        lock(&self.regions).insert(start, e);
        NR_REGIONS.fetch_add(1, Ordering::Relaxed);
        MAY_HOLD.store(true, Ordering::Release);
        self.counters.regions_made.fetch_add(1, Ordering::Relaxed);
        Some(start)
    }

    /// The regions overlapping `[a, a + len)` (by their mappings), taken out of the map.
    fn take_overlapping(&self, a: usize, len: usize) -> Vec<Arc<Entry>> {
        let end = a.saturating_add(len);
        let mut m = lock(&self.regions);
        let keys: Vec<usize> = m
            .range(..end)
            .rev()
            .take_while(|(_, e)| e.start + e.map_len > a)
            .map(|(&k, _)| k)
            .collect();
        let out = keys.iter().filter_map(|k| m.remove(k)).collect::<Vec<_>>();
        NR_REGIONS.fetch_sub(out.len(), Ordering::Relaxed);
        out
    }

    /// The regions overlapping `[a, a + len)`, left in the map.
    pub(crate) fn overlapping(&self, a: usize, len: usize) -> Vec<Arc<Entry>> {
        let end = a.saturating_add(len);
        let m = lock(&self.regions);
        m.range(..end)
            .rev()
            .take_while(|(_, e)| e.start + e.map_len > a)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn detach(&self, e: &Entry) {
        let r = e.region.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(r) = r {
            r.detach();
            self.counters
                .detached_regions
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn drop_region(&self, e: &Entry) {
        let r = e.region.write().unwrap_or_else(|p| p.into_inner()).take();
        if r.is_some() {
            drop(r);
            self.counters.regions_freed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `madvise(a, len, MADV_HUGEPAGE)` (`huge`) or `MADV_NOHUGEPAGE` with
    /// [`Config::thp_follows_advice`]: every region the advice covers wholly and whose
    /// folio size it changes is remade with 2 MiB folios (one of 2 MiB or more, while the
    /// program has not disabled THP for itself) or with base pages, as the kernel chooses a
    /// folio size at the first touch. A region with pages in use keeps its folio size (the
    /// kernel's `khugepaged` would collapse them later; a userfaultfd region never gets
    /// that), and so does one the advice covers in part (the kernel would split the
    /// mapping); both are counted (`thp_advice_not_followed`).
    fn follow_thp_advice(&self, a: usize, len: usize, huge: bool) {
        if !self.cfg.thp_follows_advice || (huge && crate::interpose::thp_disabled()) {
            return;
        }
        let end = a.saturating_add(len);
        let (order, fault_around) = if huge {
            (9, 1)
        } else {
            (0, self.cfg.fault_around)
        };
        for e in self.overlapping(a, len) {
            if huge && e.asked < REGION_ALIGN {
                continue;
            }
            let mut g = e.region.write().unwrap_or_else(|p| p.into_inner());
            let Some(r) = g.as_mut() else { continue };
            if r.folio_bytes() == PAGE_SIZE << order {
                continue;
            }
            if !(a <= e.start && e.start + e.asked <= end) || r.remake(order, fault_around).is_err()
            {
                self.counters
                    .thp_advice_not_followed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.counters.regions_remade.fetch_add(1, Ordering::Relaxed);
            // The entry's length follows the region's: a new entry in its place. A
            // migration that holds the old one finds it empty, as after a free.
            let r = g.take().expect("remade above");
            drop(g);
            let ne = Arc::new(Entry {
                start: e.start,
                len: r.len(),
                map_len: r.mapping_len(),
                asked: e.asked,
                source: e.source,
                region: RwLock::new(Some(r)),
            });
            let mut m = lock(&self.regions);
            match m.get(&e.start) {
                Some(cur) if Arc::ptr_eq(cur, &e) => {
                    m.insert(e.start, ne);
                }
                // Freed or unmapped meanwhile by another thread of the program: so is
                // the region (dropped here, with `ne`).
                _ => {
                    drop(m);
                    self.drop_region(&ne);
                }
            }
        }
    }

    /// At exit: the control socket goes.
    pub(crate) fn at_exit(&self) {
        crate::ctl::remove_socket();
    }
}

/// What the interposer does after a call: these ranges to the kernel.
#[derive(Debug, Default)]
pub(crate) struct Action {
    pub(crate) unmap: Vec<(usize, usize)>,
    pub(crate) madvise: Vec<(usize, usize, c_int)>,
}

/// `[a, end)` less the `holes` (each `(start, len)`), as `(start, len)` ranges.
fn minus(a: usize, end: usize, mut holes: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    holes.sort_unstable();
    let mut out = Vec::new();
    let mut at = a;
    for (s, l) in holes {
        let (s, e) = (s.max(a), (s + l).min(end));
        if s >= e {
            continue;
        }
        if s > at {
            out.push((at, s - at));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end - at));
    }
    out
}

/// `free` of `a`: `None` if it is not a region's. Only a region of the malloc family is
/// freed so: memory the program mapped itself is the program's to carve up (an allocator
/// such as jemalloc hands out pointers at the start of its mappings, and frees them).
pub(crate) fn free(st: Option<&'static State>, a: usize) -> Option<Action> {
    {
        let mut inh = lock(&INHERITED);
        if let Some(i) = inh.iter().position(|&(s, _)| s == a) {
            let (s, l) = inh.swap_remove(i);
            return Some(Action {
                unmap: vec![(s, l)],
                ..Default::default()
            });
        }
    }
    let st = st?;
    let e = {
        let mut m = lock(&st.regions);
        if m.get(&a)?.source != Source::Malloc {
            return None;
        }
        let e = m.remove(&a)?;
        NR_REGIONS.fetch_sub(1, Ordering::Relaxed);
        e
    };
    st.drop_region(&e);
    Some(Action::default())
}

/// `malloc_usable_size` of a region's pointer (of the malloc family's regions only, as
/// [`free`]).
pub(crate) fn usable(st: Option<&'static State>, a: usize) -> Option<usize> {
    if let Some(&(_, l)) = lock(&INHERITED).iter().find(|&&(s, _)| s == a) {
        return Some(l);
    }
    lock(&st?.regions)
        .get(&a)
        .filter(|e| e.source == Source::Malloc)
        .map(|e| e.len)
}

/// `munmap(a, len)`: regions wholly inside are freed (their own mappings go with them),
/// regions partly inside are detached; the rest of the range goes to the kernel. "Wholly"
/// is by the length the program asked for: a region of 2 MiB folios is longer when that
/// is not a multiple of 2 MiB, and the program unmaps what it mapped.
pub(crate) fn munmap(st: Option<&'static State>, a: usize, len: usize) -> Action {
    let end = a.saturating_add(len);
    let mut freed = Vec::new();
    {
        let mut inh = lock(&INHERITED);
        inh.retain(|&(s, l)| s + l <= a || s >= end);
    }
    if let Some(st) = st {
        for e in st.take_overlapping(a, len) {
            if a <= e.start && e.start + e.asked <= end {
                st.drop_region(&e);
                freed.push((e.start, e.map_len));
            } else {
                st.detach(&e);
            }
        }
    }
    Action {
        unmap: minus(a, end, freed),
        ..Default::default()
    }
}

/// Whether `madvise(advice)` on a region is pagemig's business.
pub(crate) fn advice_is_followed(advice: c_int) -> bool {
    matches!(
        advice,
        libc::MADV_DONTNEED
            | libc::MADV_FREE
            | libc::MADV_COLD
            | libc::MADV_PAGEOUT
            | libc::MADV_HUGEPAGE
            | libc::MADV_NOHUGEPAGE
    ) || advice == MADV_DONTNEED_LOCKED
}

/// `MADV_DONTNEED_LOCKED` (Linux 5.18).
const MADV_DONTNEED_LOCKED: c_int = 24;

/// `madvise(a, len, advice)` for the advice [`advice_is_followed`] names: on regions,
/// `DONTNEED` discards (the range reads zero, its frames go back to their pools), and
/// `FREE`, `COLD` and `PAGEOUT` keep the pages as they are; the rest of the range goes to
/// the kernel. `HUGEPAGE` and `NOHUGEPAGE` go to the kernel for the whole range, after
/// the regions they cover were remade where they change the folio size
/// ([`State::follow_thp_advice`]).
pub(crate) fn madvise(st: Option<&'static State>, a: usize, len: usize, advice: c_int) -> Action {
    let end = a.saturating_add(len);
    if advice == libc::MADV_HUGEPAGE || advice == libc::MADV_NOHUGEPAGE {
        if let Some(st) = st {
            st.follow_thp_advice(a, len, advice == libc::MADV_HUGEPAGE);
        }
        return Action {
            madvise: vec![(a, len, advice)],
            ..Default::default()
        };
    }
    let Some(st) = st else {
        return Action {
            madvise: vec![(a, len, advice)],
            ..Default::default()
        };
    };
    let mut holes = Vec::new();
    for e in st.overlapping(a, len) {
        holes.push((e.start, e.map_len));
        if advice != libc::MADV_DONTNEED && advice != MADV_DONTNEED_LOCKED {
            continue;
        }
        let (s, t) = (a.max(e.start), end.min(e.start + e.len));
        if s >= t {
            continue;
        }
        let g = e.region.write().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = g.as_ref() {
            if let Ok(n) = r.discard(s, t - s) {
                st.counters
                    .pages_discarded
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    Action {
        madvise: minus(a, end, holes)
            .into_iter()
            .map(|(s, l)| (s, l, advice))
            .collect(),
        ..Default::default()
    }
}

/// Detaches every region overlapping `[a, a + len)` (the program is about to remap,
/// resize or protect that memory in a way the live backend does not follow).
pub(crate) fn detach_overlapping(st: Option<&'static State>, a: usize, len: usize) {
    {
        let mut inh = lock(&INHERITED);
        let end = a.saturating_add(len);
        inh.retain(|&(s, l)| s + l <= a || s >= end);
    }
    if let Some(st) = st {
        for e in st.take_overlapping(a, len) {
            st.detach(&e);
        }
    }
}

// ---- fork -------------------------------------------------------------------------------

/// The locks a fork holds, so that the child finds none of them taken.
struct Held {
    _migrating: MutexGuard<'static, ()>,
    regions: MutexGuard<'static, BTreeMap<usize, Arc<Entry>>>,
    inherited: MutexGuard<'static, Vec<(usize, usize)>>,
}

thread_local! {
    static HELD: std::cell::RefCell<Option<Held>> = const { std::cell::RefCell::new(None) };
}

/// Before `fork`: waits for the migration chunk in flight (every page of every region is
/// then in the program, none in the middle of a move) and holds the locks.
pub(crate) fn fork_prepare(st: Option<&'static State>) {
    let Some(st) = st else {
        return;
    };
    let migrating = lock(&st.migrating);
    let regions = lock(&st.regions);
    let inherited = lock(&INHERITED);
    st.counters.forks.fetch_add(1, Ordering::Relaxed);
    HELD.with(|h| {
        *h.borrow_mut() = Some(Held {
            _migrating: migrating,
            regions,
            inherited,
        })
    });
}

/// After `fork`, in the parent.
pub(crate) fn fork_parent() {
    HELD.with(|h| h.borrow_mut().take());
}

/// After `fork`, in the child: the parent's regions are plain memory here (the kernel
/// copied their pages and dropped their userfaultfd registration), freed with `munmap`;
/// the parent's state is left alone for good (its threads are not in the child). Returns
/// whether the child may make a state of its own for new memory.
pub(crate) fn fork_child() -> bool {
    let held = HELD.with(|h| h.borrow_mut().take());
    let Some(mut held) = held else {
        return ENABLED.load(Ordering::Acquire);
    };
    // Those of the malloc family, which the child may pass to `free`; the mapped ones it
    // unmaps itself, with `munmap`.
    let ranges: Vec<(usize, usize)> = held
        .regions
        .values()
        .filter(|e| e.source == Source::Malloc)
        .map(|e| (e.start, e.map_len))
        .collect();
    held.inherited.extend(ranges);
    // The child never touches the parent's regions through pagemig: forget them here.
    let old = std::mem::take(&mut *held.regions);
    std::mem::forget(old);
    drop(held);
    NR_REGIONS.store(0, Ordering::Relaxed);
    MAY_HOLD.store(true, Ordering::Release);
    true
}
