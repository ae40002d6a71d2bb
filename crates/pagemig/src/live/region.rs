//! [`Live`] (the userfaultfd, its fault-handler thread) and [`LiveRegion`] (a program's
//! region, its backend and its `move_pages(2)`).

#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::thread::JoinHandle;

use crate::migrate::{alloc_on_node, migrate_pages, Mode, Reason};
use crate::mm::{
    pg, AddressSpace, FailedUnmap, Folio, Memory, MmError, NodeId, Order, Pfn, Pte, SpaceBackend,
    VirtAddr, HPAGE_PMD_ORDER, PAGE_SIZE,
};
use crate::sync::lock;
use crate::Errno;

use super::sys;

/// `MPOL_MF_MOVE`: move pages mapped only by this process.
pub const MPOL_MF_MOVE: i32 = 1 << 1;
/// `MPOL_MF_MOVE_ALL`: move every page (needs `CAP_SYS_NICE` in the kernel).
pub const MPOL_MF_MOVE_ALL: i32 = 1 << 2;

/// The oldest kernel with `UFFDIO_MOVE`.
const MIN_KERNEL: (u32, u32) = (6, 8);

/// Options of [`Live::new`].
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Create the userfaultfd with `UFFD_USER_MODE_ONLY` (works without privilege). Faults
    /// taken in kernel mode (a system call reading a page under migration) then fail with
    /// `EFAULT` instead of waiting.
    pub user_mode_only: bool,
    /// Testing: features to treat as missing even if the kernel offers them.
    pub pretend_missing_features: u64,
    /// Testing: a kernel release to check instead of the running one.
    pub pretend_kernel_release: Option<String>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            user_mode_only: true,
            pretend_missing_features: 0,
            pretend_kernel_release: None,
        }
    }
}

/// Why the live backend cannot run, or a bad request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// `userfaultfd(2)` does not exist.
    #[error("this kernel has no userfaultfd (userfaultfd(2) returned ENOSYS): it was built without CONFIG_USERFAULTFD; the live backend cannot run here")]
    NoUserfaultfd,
    /// `userfaultfd(2)` was refused.
    #[error("userfaultfd(2) was refused ({0}); with vm.unprivileged_userfaultfd = 0 only UFFD_USER_MODE_ONLY works without privilege (Linux 5.11+), or run with CAP_SYS_PTRACE")]
    Refused(String),
    /// The kernel is older than 6.8.
    #[error("kernel {release} is older than {}.{}: the live backend needs UFFDIO_MOVE (Linux 6.8+)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld {
        /// `uname -r`
        release: String,
    },
    /// A userfaultfd feature is missing.
    #[error("the kernel's userfaultfd lacks {feature} (UFFDIO_API reported features {features:#x}); the live backend needs it to move anonymous pages (Linux 6.8+)")]
    MissingFeature {
        /// the feature
        feature: &'static str,
        /// what the kernel offered
        features: u64,
    },
    /// Registering a range failed, or it lacks `UFFDIO_MOVE`.
    #[error("cannot register {what} with userfaultfd: {detail}")]
    Register {
        /// which range
        what: String,
        /// why
        detail: String,
    },
    /// Another system call failed.
    #[error("{call} failed: {err}")]
    Sys {
        /// the call
        call: &'static str,
        /// the error
        err: String,
    },
    /// A bad region configuration.
    #[error("invalid live region: {0}")]
    InvalidConfig(String),
    /// The memory model refused.
    #[error(transparent)]
    Mm(#[from] MmError),
}

/// Counters of a [`Live`] backend (all regions).
#[derive(Debug, Default)]
struct Counters {
    faults: AtomicU64,
    faults_populated: AtomicU64,
    faults_on_migration: AtomicU64,
    faults_woken: AtomicU64,
    stray_faults: AtomicU64,
    unmap_ioctls: AtomicU64,
    pages_unmapped: AtomicU64,
    unmap_failures: AtomicU64,
    remap_ioctls: AtomicU64,
    pages_remapped: AtomicU64,
    remap_errors: AtomicU64,
    no_memory: AtomicU64,
    handler_errors: AtomicU64,
    remap_retries: AtomicU64,
}

/// A snapshot of the live backend's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// Page-fault messages read by the handler.
    pub faults: u64,
    /// Faults on never-touched pages, populated from a node's pool.
    pub faults_populated: u64,
    /// Faults on pages under migration (the thread waits for the migration's move-in).
    pub faults_on_migration: u64,
    /// Faults on pages already mapped again (the thread was woken).
    pub faults_woken: u64,
    /// Faults on frames' arena slots: a bug in the backend; always 0.
    pub stray_faults: u64,
    /// `UFFDIO_MOVE` calls taking pages out of the program (each is one kernel TLB flush).
    pub unmap_ioctls: u64,
    /// Base pages taken out.
    pub pages_unmapped: u64,
    /// Folios whose move out failed (left mapped, migration retried or failed).
    pub unmap_failures: u64,
    /// `UFFDIO_MOVE` calls putting pages into the program.
    pub remap_ioctls: u64,
    /// Base pages put in.
    pub pages_remapped: u64,
    /// Moves into the program that still failed after many attempts (the page stays
    /// queued, its threads wait): a bug; always 0.
    pub remap_errors: u64,
    /// First touches that found no free frame on any node.
    pub no_memory: u64,
    /// Errors reading the userfaultfd.
    pub handler_errors: u64,
    /// Moves into the program that failed once and were queued again (they succeeded
    /// later unless `remap_errors` says otherwise).
    pub remap_retries: u64,
}

impl Counters {
    fn snapshot(&self) -> LiveCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LiveCounts {
            faults: g(&self.faults),
            faults_populated: g(&self.faults_populated),
            faults_on_migration: g(&self.faults_on_migration),
            faults_woken: g(&self.faults_woken),
            stray_faults: g(&self.stray_faults),
            unmap_ioctls: g(&self.unmap_ioctls),
            pages_unmapped: g(&self.pages_unmapped),
            unmap_failures: g(&self.unmap_failures),
            remap_ioctls: g(&self.remap_ioctls),
            pages_remapped: g(&self.pages_remapped),
            remap_errors: g(&self.remap_errors),
            no_memory: g(&self.no_memory),
            handler_errors: g(&self.handler_errors),
            remap_retries: g(&self.remap_retries),
        }
    }
}

fn inc(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

fn sys_err(call: &'static str, e: std::io::Error) -> LiveError {
    LiveError::Sys {
        call,
        err: e.to_string(),
    }
}

fn parse_release(r: &str) -> Option<(u32, u32)> {
    let mut it = r.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

struct Shared {
    mm: Arc<Memory>,
    uffd: OwnedFd,
    stop: OwnedFd,
    features: u64,
    arenas: Vec<(usize, usize)>,
    regions: RwLock<Vec<Weak<RegionBackend>>>,
    counters: Counters,
}

struct LiveInner {
    shared: Arc<Shared>,
    handler: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for LiveInner {
    fn drop(&mut self) {
        sys::eventfd_signal(&self.shared.stop);
        if let Some(h) = lock(&self.handler).take() {
            let _ = h.join();
        }
        for &(a, l) in &self.shared.arenas {
            let _ = sys::unregister(&self.shared.uffd, a, l);
        }
    }
}

/// The live backend of one [`Memory`]: a userfaultfd with every node's arena registered
/// (the frame pools) and a fault-handler thread. Regions come from [`Live::region`].
pub struct Live {
    inner: Arc<LiveInner>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field(
                "features",
                &format_args!("{:#x}", self.inner.shared.features),
            )
            .finish()
    }
}

impl Live {
    /// Opens a userfaultfd, checks that the kernel can move anonymous pages
    /// (`UFFD_FEATURE_MOVE`, Linux 6.8+), registers every node's arena and starts the
    /// fault handler. Only one `Live` may serve a given `Memory` at a time.
    pub fn new(mm: &Arc<Memory>, cfg: LiveConfig) -> Result<Live, LiveError> {
        let release = cfg
            .pretend_kernel_release
            .clone()
            .unwrap_or_else(sys::kernel_release);
        if let Some(v) = parse_release(&release) {
            if v < MIN_KERNEL {
                return Err(LiveError::KernelTooOld { release });
            }
        }
        let flags = if cfg.user_mode_only {
            sys::UFFD_USER_MODE_ONLY
        } else {
            0
        };
        let open = || match sys::userfaultfd(flags) {
            Ok(fd) => Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Err(LiveError::NoUserfaultfd),
            Err(e) => Err(LiveError::Refused(e.to_string())),
        };
        // Probe: UFFDIO_API with no features reports what the kernel supports.
        let probe = open()?;
        let offered = sys::api(&probe, 0)
            .map_err(|e| sys_err("UFFDIO_API", e))?
            .features
            & !cfg.pretend_missing_features;
        drop(probe);
        if offered & sys::UFFD_FEATURE_MOVE == 0 {
            return Err(LiveError::MissingFeature {
                feature: "UFFD_FEATURE_MOVE",
                features: offered,
            });
        }
        let uffd = open()?;
        let want = sys::UFFD_FEATURE_MOVE | (offered & sys::UFFD_FEATURE_THREAD_ID);
        let api = sys::api(&uffd, want).map_err(|e| sys_err("UFFDIO_API", e))?;
        let mut arenas = Vec::new();
        for n in mm.nodes() {
            let (a, l) = (n.arena().base_addr(), n.arena().len_bytes());
            let ioctls = sys::register_missing(&uffd, a, l).map_err(|e| {
                for &(a, l) in &arenas {
                    let _ = sys::unregister(&uffd, a, l);
                }
                LiveError::Register {
                    what: format!("node {} arena", n.id().0),
                    detail: if e.raw_os_error() == Some(libc::EBUSY) {
                        "it already serves another live backend (EBUSY)".into()
                    } else {
                        e.to_string()
                    },
                }
            })?;
            arenas.push((a, l));
            if ioctls & (1 << sys::UFFDIO_NR_MOVE) == 0 {
                for &(a, l) in &arenas {
                    let _ = sys::unregister(&uffd, a, l);
                }
                return Err(LiveError::Register {
                    what: format!("node {} arena", n.id().0),
                    detail: "the range does not offer UFFDIO_MOVE".into(),
                });
            }
        }
        let shared = Arc::new(Shared {
            mm: mm.clone(),
            uffd,
            stop: sys::eventfd().map_err(|e| sys_err("eventfd", e))?,
            features: api.features,
            arenas,
            regions: RwLock::new(Vec::new()),
            counters: Counters::default(),
        });
        let s = shared.clone();
        let handler = std::thread::Builder::new()
            .name("pagemig-uffd".into())
            .spawn(move || fault_handler(&s))
            .map_err(|e| sys_err("spawning the fault handler", e))?;
        Ok(Live {
            inner: Arc::new(LiveInner {
                shared,
                handler: Mutex::new(Some(handler)),
            }),
        })
    }

    /// The features the userfaultfd was opened with.
    pub fn features(&self) -> u64 {
        self.inner.shared.features
    }

    /// The memory whose nodes back the regions.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.inner.shared.mm
    }

    /// Counters over all regions.
    pub fn counts(&self) -> LiveCounts {
        self.inner.shared.counters.snapshot()
    }

    /// Maps a new region for the program. Its pages are populated on first touch (or by
    /// [`LiveRegion::populate`]) from `cfg.placement`'s pool.
    pub fn region(&self, cfg: RegionConfig) -> Result<LiveRegion, LiveError> {
        let sh = &self.inner.shared;
        if cfg.folio_order > HPAGE_PMD_ORDER {
            return Err(LiveError::InvalidConfig(format!(
                "folio order {} is above {HPAGE_PMD_ORDER} (2 MiB)",
                cfg.folio_order
            )));
        }
        let folio_bytes = PAGE_SIZE << cfg.folio_order;
        if cfg.len_bytes == 0 || cfg.len_bytes % folio_bytes != 0 {
            return Err(LiveError::InvalidConfig(format!(
                "length {} is not a positive multiple of the folio size {folio_bytes}",
                cfg.len_bytes
            )));
        }
        sh.mm
            .node(cfg.placement)
            .map_err(|_| LiveError::InvalidConfig(format!("no node {}", cfg.placement.0)))?;
        let align = PAGE_SIZE << HPAGE_PMD_ORDER;
        let map = sys::Mapping::new(
            cfg.len_bytes.div_ceil(align) * align,
            align,
            cfg.folio_order == HPAGE_PMD_ORDER,
        )
        .map_err(|e| sys_err("mmap", e))?;
        let ioctls = sys::register_missing(&sh.uffd, map.addr(), map.len()).map_err(|e| {
            LiveError::Register {
                what: "the region".into(),
                detail: e.to_string(),
            }
        })?;
        if ioctls & (1 << sys::UFFDIO_NR_MOVE) == 0 {
            return Err(LiveError::Register {
                what: "the region".into(),
                detail: "the range does not offer UFFDIO_MOVE".into(),
            });
        }
        let backend = Arc::new(RegionBackend {
            shared: sh.clone(),
            base: map.addr(),
            len: cfg.len_bytes,
            order: cfg.folio_order,
            placement: AtomicU32::new(cfg.placement.0),
            batch_moves: AtomicBool::new(cfg.batch_moves),
            pending: Mutex::new(Pending::default()),
            space: OnceLock::new(),
        });
        let dynb: Arc<dyn SpaceBackend> = backend.clone();
        let space =
            sh.mm
                .new_space_with_backend(VirtAddr(map.addr() as u64), cfg.len_bytes, Some(dynb))?;
        let _ = backend.space.set(Arc::downgrade(&space));
        {
            let mut r = sh.regions.write().unwrap_or_else(|p| p.into_inner());
            r.retain(|w| w.strong_count() > 0);
            r.push(Arc::downgrade(&backend));
        }
        Ok(LiveRegion {
            backend,
            space,
            map,
            _live: self.inner.clone(),
        })
    }
}

/// Options of a region.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    /// Length in bytes, a multiple of the folio size.
    pub len_bytes: usize,
    /// Order of the folios that back it (0: 4 KiB pages; 9: 2 MiB THPs). Orders 1..=8
    /// (mTHP sizes) are kept as folios by the core, but the kernel splits a large folio
    /// that `UFFDIO_MOVE` moves unless it is a PMD-mapped THP, so the program's memory is
    /// then made of base pages.
    pub folio_order: u8,
    /// The node that first touches are served from (the placement policy).
    pub placement: NodeId,
    /// Batch the kernel calls: one `UFFDIO_MOVE` per run of contiguous pages at the TLB
    /// flush and at the end of each batch (default), or one per folio at once.
    pub batch_moves: bool,
}

impl RegionConfig {
    /// A region of `len_bytes` of folios of `order`, placed on node 0, batched moves.
    pub fn new(len_bytes: usize, folio_order: u8) -> RegionConfig {
        RegionConfig {
            len_bytes,
            folio_order,
            placement: NodeId(0),
            batch_moves: true,
        }
    }
}

/// One queued move: the pages at `va` and the frames from `pfn`.
#[derive(Debug, Clone, Copy)]
struct Mv {
    va: usize,
    pfn: Pfn,
    nr: usize,
}

/// An unmap queued by a TLB batch (its id).
#[derive(Debug, Clone, Copy)]
struct QueuedOut {
    batch: u64,
    mv: Mv,
}

/// Consecutive flushes with failed moves into the program before it counts as an error.
const REMAP_GIVE_UP: u32 = 64;

#[derive(Default)]
struct Pending {
    /// Consecutive flushes that left moves into the program queued.
    failed_flushes: u32,
    /// Unmaps queued until their batch's TLB flush: program -> arena slot.
    out: Vec<QueuedOut>,
    /// Remaps queued until the end of the batch: arena slot -> program.
    inn: Vec<Mv>,
}

/// The backend of one region: the glue between the core's shadow page table and the
/// program's real pages.
struct RegionBackend {
    shared: Arc<Shared>,
    base: usize,
    len: usize,
    order: u8,
    placement: AtomicU32,
    batch_moves: AtomicBool,
    pending: Mutex<Pending>,
    space: OnceLock<Weak<AddressSpace>>,
}

/// Direction of a run of moves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// program -> arena slot
    Out,
    /// arena slot -> program
    In,
}

impl RegionBackend {
    fn slot(&self, pfn: Pfn) -> usize {
        self.shared.mm.frame_addr(pfn)
    }

    fn contains(&self, addr: usize) -> bool {
        addr >= self.base && addr - self.base < self.len
    }

    /// One `UFFDIO_MOVE` of `len` bytes; on an error the bytes moved before it.
    fn mv(&self, dir: Dir, va: usize, slot: usize, len: usize) -> Result<(), (Errno, usize)> {
        let c = &self.shared.counters;
        let (dst, src, mode) = match dir {
            Dir::Out => (slot, va, sys::UFFDIO_MOVE_MODE_DONTWAKE),
            Dir::In => (va, slot, 0),
        };
        let r = sys::move_pages(&self.shared.uffd, dst, src, len, mode);
        let (ioctls, pages) = match dir {
            Dir::Out => (&c.unmap_ioctls, &c.pages_unmapped),
            Dir::In => (&c.remap_ioctls, &c.pages_remapped),
        };
        inc(ioctls, 1);
        match r {
            Ok(n) if n == len => {
                inc(pages, (len / PAGE_SIZE) as u64);
                Ok(())
            }
            Ok(n) => {
                inc(pages, (n / PAGE_SIZE) as u64);
                Err((Errno::Again, n))
            }
            Err((e, n)) => {
                inc(pages, (n / PAGE_SIZE) as u64);
                let errno = match e.raw_os_error() {
                    Some(libc::EBUSY) => Errno::Busy,
                    Some(libc::ENOENT) => Errno::NoEnt,
                    Some(libc::ENOMEM) => Errno::NoMem,
                    Some(libc::EAGAIN) => Errno::Again,
                    Some(libc::EFAULT) => Errno::Fault,
                    _ => Errno::Inval,
                };
                Err((errno, n))
            }
        }
    }

    /// Moves one folio's pages. Out of the program all or nothing (a partial move is moved
    /// back). Into the program, a large folio that cannot move whole moves page by page;
    /// the pages that still fail are returned, to be tried again.
    fn mv_folio_in(&self, m: Mv) -> Vec<(Mv, Errno)> {
        match self.mv_folio(Dir::In, m) {
            Ok(()) => Vec::new(),
            Err(e) if m.nr == 1 => vec![(m, e)],
            Err(_) => (0..m.nr)
                .filter_map(|i| {
                    let one = Mv {
                        va: m.va + i * PAGE_SIZE,
                        pfn: Pfn(m.pfn.0 + i as u64),
                        nr: 1,
                    };
                    self.mv_folio(Dir::In, one).err().map(|e| (one, e))
                })
                .collect(),
        }
    }

    /// Moves one folio's pages, all or nothing: a partial move is moved back.
    fn mv_folio(&self, dir: Dir, m: Mv) -> Result<(), Errno> {
        let (va, slot, len) = (m.va, self.slot(m.pfn), m.nr * PAGE_SIZE);
        let mut last = Errno::Again;
        // EAGAIN is a transient race inside the kernel (a folio lock, a split): retry.
        for _ in 0..8 {
            match self.mv(dir, va, slot, len) {
                Ok(()) => return Ok(()),
                Err((e, done)) => {
                    last = e;
                    if done > 0 {
                        let back = match dir {
                            Dir::Out => Dir::In,
                            Dir::In => Dir::Out,
                        };
                        if self.mv(back, va, slot, done).is_err() {
                            inc(&self.shared.counters.remap_errors, 1);
                        }
                    }
                    if e != Errno::Again {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// One folio's move in either direction; what failed.
    fn mv_one(&self, dir: Dir, m: Mv) -> Vec<(Mv, Errno)> {
        match dir {
            Dir::In => self.mv_folio_in(m),
            Dir::Out => self
                .mv_folio(Dir::Out, m)
                .err()
                .map(|e| (m, e))
                .into_iter()
                .collect(),
        }
    }

    /// Performs a list of moves, one `UFFDIO_MOVE` per run contiguous both in the program
    /// and in the arena; a run that fails is redone folio by folio. Returns the folios that
    /// could not be moved.
    fn run_moves(&self, dir: Dir, mut list: Vec<Mv>) -> Vec<(Mv, Errno)> {
        let mut failed = Vec::new();
        if list.is_empty() {
            return failed;
        }
        list.sort_unstable_by_key(|m| m.va);
        let mut i = 0;
        while i < list.len() {
            let start = i;
            let mut len = list[i].nr * PAGE_SIZE;
            let slot0 = self.slot(list[i].pfn);
            while i + 1 < list.len()
                && list[i + 1].va == list[start].va + len
                && self.shared.mm.node_of(list[i + 1].pfn)
                    == self.shared.mm.node_of(list[start].pfn)
                && self.slot(list[i + 1].pfn) == slot0 + len
            {
                len += list[i + 1].nr * PAGE_SIZE;
                i += 1;
            }
            i += 1;
            let run = &list[start..i];
            if run.len() == 1 {
                failed.extend(self.mv_one(dir, run[0]));
                continue;
            }
            match self.mv(dir, run[0].va, slot0, len) {
                Ok(()) => {}
                Err((_, done)) => {
                    // Folios wholly moved stay moved; the rest go one by one.
                    let mut off = 0;
                    for &m in run {
                        let l = m.nr * PAGE_SIZE;
                        if off + l <= done {
                            off += l;
                            continue;
                        }
                        if off < done {
                            // Partly moved: move that part back, then retry the folio.
                            let back = match dir {
                                Dir::Out => Dir::In,
                                Dir::In => Dir::Out,
                            };
                            if self.mv(back, m.va, self.slot(m.pfn), done - off).is_err() {
                                inc(&self.shared.counters.remap_errors, 1);
                            }
                        }
                        off += l;
                        failed.extend(self.mv_one(dir, m));
                    }
                }
            }
        }
        failed
    }

    /// Performs the queued remaps (the pending lock is held across the moves, so a
    /// concurrent unmap of the same page waits for its move-in).
    fn do_flush_remaps(&self) {
        let mut p = lock(&self.pending);
        if p.inn.is_empty() {
            return;
        }
        let list = std::mem::take(&mut p.inn);
        let failed = self.run_moves(Dir::In, list);
        if failed.is_empty() {
            p.failed_flushes = 0;
            return;
        }
        // The shadow maps these pages already: they stay queued and are tried again at
        // the next flush (every batch end and every fault on them flushes).
        let c = &self.shared.counters;
        inc(&c.remap_retries, failed.len() as u64);
        p.failed_flushes += 1;
        if p.failed_flushes == REMAP_GIVE_UP {
            inc(&c.remap_errors, failed.len() as u64);
            let (m, e) = failed[0];
            eprintln!(
                "pagemig live: {} page moves into the program keep failing (first: {:#x}, {} \
                 pages from frame {:#x} at {:#x}: {:?}); still trying",
                failed.len(),
                m.va,
                m.nr,
                m.pfn.0,
                self.slot(m.pfn),
                e
            );
        }
        p.inn.extend(failed.into_iter().map(|(m, _)| m));
    }

    /// The fault handler's work for one fault at `addr` (inside this region).
    fn handle_fault(&self, addr: usize) {
        let c = &self.shared.counters;
        let Some(space) = self.space.get().and_then(|w| w.upgrade()) else {
            return;
        };
        // A page whose move-in is queued is mapped in the core already.
        self.do_flush_remaps();
        let folio_bytes = PAGE_SIZE << self.order;
        let va = addr & !(PAGE_SIZE - 1);
        match space.pte(VirtAddr(va as u64)) {
            Ok(Pte::Present { .. }) => {
                inc(&c.faults_woken, 1);
                let _ = sys::wake(&self.shared.uffd, va, PAGE_SIZE);
            }
            Ok(Pte::Migration { .. }) => {
                // The move-in (or the undo) of this page wakes the thread.
                inc(&c.faults_on_migration, 1);
            }
            Ok(Pte::None) => {
                inc(&c.faults_populated, 1);
                let fva = self.base + (va - self.base) / folio_bytes * folio_bytes;
                match self.populate_one(&space, fva, va) {
                    Ok(()) => {}
                    Err(MmError::AlreadyMapped { .. }) => {}
                    Err(_) => {
                        if c.no_memory.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!(
                                "pagemig live: no free frame on any node for {va:#x}; the faulting thread waits for one"
                            );
                        }
                    }
                }
                self.do_flush_remaps();
                let _ = sys::wake(&self.shared.uffd, va, PAGE_SIZE);
            }
            Err(_) => {
                let _ = sys::wake(&self.shared.uffd, va, PAGE_SIZE);
            }
        }
    }

    /// Maps a new folio at `fva` (its first address): from the placement node, else any
    /// node with memory; a large-folio region falls back to the base page at `va`. Queues
    /// the page moves.
    fn populate_one(&self, space: &AddressSpace, fva: usize, va: usize) -> Result<(), MmError> {
        let mm = &self.shared.mm;
        let first = self.placement.load(Ordering::Relaxed) as usize;
        let n = mm.nodes().len();
        let mut orders = vec![self.order];
        if self.order > 0 {
            orders.push(0);
        }
        let mut last = MmError::NoMemory {
            node: NodeId(first as u32),
            order: self.order,
        };
        'orders: for &order in &orders {
            for k in 0..n {
                let node = NodeId(((first + k) % n) as u32);
                let nr = 1usize << order;
                let va = if order == self.order { fva } else { va };
                let r = space.map_new_with(
                    VirtAddr(va as u64),
                    node,
                    Order(order),
                    pg::ANON | pg::UPTODATE | pg::LRU,
                    |folio| {
                        lock(&self.pending).inn.push(Mv {
                            va,
                            pfn: folio.0,
                            nr,
                        });
                    },
                );
                match r {
                    Ok(_) => return Ok(()),
                    Err(e @ MmError::NoMemory { .. }) => last = e,
                    // Part of the large folio's range is mapped already (an earlier
                    // fallback to base pages): map the faulting base page alone.
                    Err(MmError::AlreadyMapped { .. }) if order != 0 => continue 'orders,
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last)
    }
}

impl SpaceBackend for RegionBackend {
    fn unmap(&self, vaddr: VirtAddr, pfn: Pfn, nr: usize, defer: Option<u64>) -> Result<(), Errno> {
        // Under the page-table lock. A queued move-in of this page must happen first.
        self.do_flush_remaps();
        let m = Mv {
            va: vaddr.0 as usize,
            pfn,
            nr,
        };
        if let (Some(batch), true) = (defer, self.batch_moves.load(Ordering::Relaxed)) {
            lock(&self.pending).out.push(QueuedOut { batch, mv: m });
            return Ok(());
        }
        self.mv_folio(Dir::Out, m).inspect_err(|_| {
            inc(&self.shared.counters.unmap_failures, 1);
        })
    }

    fn flush_unmaps(&self, batch: u64) -> Vec<FailedUnmap> {
        // Only this batch's: a failure must reach the batch whose folio it is.
        let list: Vec<Mv> = {
            let mut p = lock(&self.pending);
            let (mine, others): (Vec<QueuedOut>, Vec<QueuedOut>) = std::mem::take(&mut p.out)
                .into_iter()
                .partition(|q| q.batch == batch);
            p.out = others;
            mine.into_iter().map(|q| q.mv).collect()
        };
        let failed = self.run_moves(Dir::Out, list);
        inc(&self.shared.counters.unmap_failures, failed.len() as u64);
        failed
            .into_iter()
            .map(|(m, _)| FailedUnmap {
                vaddr: VirtAddr(m.va as u64),
                pfn: m.pfn,
                nr: m.nr,
            })
            .collect()
    }

    fn remap(&self, vaddr: VirtAddr, old: Pfn, new: Pfn, nr: usize) {
        let va = vaddr.0 as usize;
        let mut p = lock(&self.pending);
        if let Some(k) = p.out.iter().position(|q| q.mv.va == va) {
            // Its unmap is still queued: the page never left the program.
            let m = p.out.swap_remove(k).mv;
            if new == old {
                return;
            }
            // Not reached by the core (it flushes before it copies); keep the data right.
            drop(p);
            if self.mv_folio(Dir::Out, m).is_err() {
                inc(&self.shared.counters.remap_errors, 1);
                return;
            }
            p = lock(&self.pending);
        }
        p.inn.push(Mv { va, pfn: new, nr });
        let now = !self.batch_moves.load(Ordering::Relaxed);
        drop(p);
        if now {
            self.do_flush_remaps();
        }
    }

    fn flush_remaps(&self) {
        self.do_flush_remaps();
    }
}

/// The fault-handler thread: reads page faults until the stop eventfd fires.
fn fault_handler(sh: &Shared) {
    loop {
        match sys::poll2(&sh.uffd, &sh.stop, -1) {
            Ok((_, true)) => return,
            Ok(_) => {}
            Err(_) => {
                inc(&sh.counters.handler_errors, 1);
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        }
        loop {
            let msg = match sys::read_msg(&sh.uffd) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    inc(&sh.counters.handler_errors, 1);
                    break;
                }
            };
            if msg.event != sys::UFFD_EVENT_PAGEFAULT {
                continue;
            }
            inc(&sh.counters.faults, 1);
            let addr = msg.pf_address as usize;
            let region = {
                let r = sh.regions.read().unwrap_or_else(|p| p.into_inner());
                r.iter()
                    .filter_map(|w| w.upgrade())
                    .find(|b| b.contains(addr))
            };
            match region {
                Some(b) => b.handle_fault(addr),
                None => {
                    if sh.arenas.iter().any(|&(a, l)| addr >= a && addr < a + l) {
                        // An access to a frame whose page is in the program: a bug.
                        if sh.counters.stray_faults.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!(
                                "pagemig live: stray fault on a frame's arena slot at {addr:#x}"
                            );
                        }
                    }
                    let _ = sys::wake(&sh.uffd, addr & !(PAGE_SIZE - 1), PAGE_SIZE);
                }
            }
        }
    }
}

/// A program's region: memory it uses through plain loads and stores, whose pages the
/// core migrates between nodes while the program runs.
pub struct LiveRegion {
    backend: Arc<RegionBackend>,
    space: Arc<AddressSpace>,
    map: sys::Mapping,
    _live: Arc<LiveInner>,
}

impl std::fmt::Debug for LiveRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRegion")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .field("order", &self.backend.order)
            .finish()
    }
}

impl LiveRegion {
    /// First address.
    pub fn addr(&self) -> usize {
        self.backend.base
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.backend.len
    }

    /// Always false: a region has at least one folio.
    pub fn is_empty(&self) -> bool {
        self.backend.len == 0
    }

    /// Folio size in bytes.
    pub fn folio_bytes(&self) -> usize {
        PAGE_SIZE << self.backend.order
    }

    /// The region as 64-bit words, for the program's threads. Any access may fault: a
    /// never-touched page is populated, a page under migration waits for it.
    pub fn words(&self) -> &[AtomicU64] {
        &self.map.words()[..self.backend.len / 8]
    }

    /// The core's shadow page table of the region: give its folios to `migrate_pages`.
    pub fn space(&self) -> &Arc<AddressSpace> {
        &self.space
    }

    /// The folio that backs `addr` now, if it is mapped.
    pub fn folio_at(&self, addr: usize) -> Option<Folio> {
        self.space.folio_at(VirtAddr(addr as u64))
    }

    /// Sets the node that first touches come from.
    pub fn set_placement(&self, node: NodeId) -> Result<(), LiveError> {
        self.backend
            .shared
            .mm
            .node(node)
            .map_err(|_| LiveError::InvalidConfig(format!("no node {}", node.0)))?;
        self.backend.placement.store(node.0, Ordering::Relaxed);
        Ok(())
    }

    /// Switches between batched kernel calls and one call per folio.
    pub fn set_batch_moves(&self, on: bool) {
        self.backend.batch_moves.store(on, Ordering::Relaxed);
    }

    /// Maps every page not yet mapped, from the placement node (like `MAP_POPULATE`), with
    /// one `UFFDIO_MOVE` per contiguous run.
    pub fn populate(&self) -> Result<(), LiveError> {
        let fb = self.folio_bytes();
        let mut res = Ok(());
        for off in (0..self.len()).step_by(fb) {
            let va = self.addr() + off;
            if self.space.pte(VirtAddr(va as u64))? != Pte::None {
                continue;
            }
            match self.backend.populate_one(&self.space, va, va) {
                Ok(()) | Err(MmError::AlreadyMapped { .. }) => {}
                Err(e) => {
                    res = Err(e.into());
                    break;
                }
            }
            if off % (64 << 20) == 0 {
                self.backend.do_flush_remaps();
            }
        }
        self.backend.do_flush_remaps();
        res
    }

    /// Counters of the backend (all regions of its [`Live`]).
    pub fn counts(&self) -> LiveCounts {
        self.backend.shared.counters.snapshot()
    }

    /// `move_pages(2)` on this region with `pid = 0`: for every address, `nodes = None`
    /// queries the node of its page, otherwise migrates the page to `nodes[i]`. `status[i]`
    /// receives the node or a negative errno as the man page defines them (`-EFAULT`
    /// outside the region, `-ENOENT` not present or under migration, `-EBUSY` already
    /// queued or isolated, `-EACCES` mapped by several spaces without
    /// [`MPOL_MF_MOVE_ALL`]). Returns the number of pages not migrated, as the system
    /// call does; whole-call errors: `EINVAL` (bad flags, arrays of different lengths),
    /// `ENODEV` (a node that does not exist), `ENOMEM`.
    ///
    /// The order of work and the abort after a failed chunk are those of the kernel's
    /// `do_pages_move()`: consecutive entries for the same node are migrated together
    /// (one `migrate_pages(MIGRATE_SYNC, MR_SYSCALL)` call); if a chunk leaves pages
    /// behind, the call stops and returns them plus every page not yet attempted.
    pub fn move_pages(
        &self,
        pages: &[usize],
        nodes: Option<&[i32]>,
        status: &mut [i32],
        flags: i32,
    ) -> Result<usize, Errno> {
        if flags & !(MPOL_MF_MOVE | MPOL_MF_MOVE_ALL) != 0 || status.len() != pages.len() {
            return Err(Errno::Inval);
        }
        let Some(nodes) = nodes else {
            for (s, &a) in status.iter_mut().zip(pages) {
                *s = self.page_status(a);
            }
            return Ok(0);
        };
        if nodes.len() != pages.len() {
            return Err(Errno::Inval);
        }
        let mm = &self.backend.shared.mm;
        let migrate_all = flags & MPOL_MF_MOVE_ALL != 0;
        let nr_pages = pages.len();
        let mut list: Vec<Folio> = Vec::new();
        let mut current: Option<NodeId> = None;
        let mut start = 0;
        // move_pages_and_store_status(): Ok(()) or the value to return now.
        let flush = |list: &mut Vec<Folio>,
                     current: Option<NodeId>,
                     status: &mut [i32],
                     start: usize,
                     i: usize|
         -> Result<(), Result<usize, Errno>> {
            let Some(node) = current else {
                return Ok(());
            };
            let failed = self.do_move_pages_to_node(list, node);
            match failed {
                Err(e) => Err(Err(e)),
                Ok(0) => {
                    status[start..i].fill(node.0 as i32);
                    Ok(())
                }
                // Abort: the failures plus every page not attempted yet.
                Ok(n) => Err(Ok(n + nr_pages - i)),
            }
        };
        let mut i = 0;
        let mut err: Result<usize, Errno> = Ok(0);
        while i < nr_pages {
            let node = nodes[i];
            if node < 0 || node as usize >= mm.nodes().len() {
                err = Err(Errno::NoDev);
                break;
            }
            let node = NodeId(node as u32);
            if current.is_none() {
                current = Some(node);
                start = i;
            } else if current != Some(node) {
                if let Err(r) = flush(&mut list, current, status, start, i) {
                    return r;
                }
                start = i;
                current = Some(node);
            }
            let r = self.add_page_for_migration(pages[i], node, &mut list, migrate_all);
            if r > 0 {
                i += 1;
                continue;
            }
            // Already on the target node: store the node; otherwise the error.
            status[i] = if r == 0 { node.0 as i32 } else { r };
            if let Err(r) = flush(&mut list, current, status, start, i) {
                // Page i is accounted for already.
                return r.map(|n| n.saturating_sub(1));
            }
            current = None;
            i += 1;
        }
        match flush(&mut list, current, status, start, i) {
            Ok(()) => err,
            Err(r) => match err {
                Err(e) => Err(e),
                Ok(_) => r,
            },
        }
    }

    /// `do_pages_stat_array()` for one address.
    fn page_status(&self, addr: usize) -> i32 {
        if !self.backend.contains(addr) {
            return -(libc::EFAULT);
        }
        match self.space.pte(VirtAddr((addr & !(PAGE_SIZE - 1)) as u64)) {
            Ok(Pte::Present { pfn }) => self.backend.shared.mm.node_of(pfn).0 as i32,
            Ok(_) => -(libc::ENOENT),
            Err(_) => -(libc::EFAULT),
        }
    }

    /// `add_page_for_migration()`: 1 queued, 0 already on `node`, or a negative errno.
    fn add_page_for_migration(
        &self,
        addr: usize,
        node: NodeId,
        list: &mut Vec<Folio>,
        migrate_all: bool,
    ) -> i32 {
        let mm = &self.backend.shared.mm;
        if !self.backend.contains(addr) {
            return -(libc::EFAULT);
        }
        let va = VirtAddr((addr & !(PAGE_SIZE - 1)) as u64);
        let Some(folio) = self.space.get_folio(va) else {
            return -(libc::ENOENT);
        };
        let f = mm.folio(folio);
        let r = if f.node() == node {
            0
        } else if f.mapcount() > 1 && !migrate_all {
            -(libc::EACCES)
        } else if mm.isolate_folio(folio).is_err() {
            -(libc::EBUSY)
        } else {
            list.push(folio);
            1
        };
        mm.folio_put(folio);
        r
    }

    /// `do_move_pages_to_node()`: migrates the list, puts back what failed; the number of
    /// folios not migrated, or `ENOMEM`.
    fn do_move_pages_to_node(&self, list: &mut Vec<Folio>, node: NodeId) -> Result<usize, Errno> {
        if list.is_empty() {
            return Ok(0);
        }
        let mm = &self.backend.shared.mm;
        let mut alloc = alloc_on_node(node);
        let res = migrate_pages(mm, list, &mut alloc, None, Mode::Sync, Reason::Syscall)
            .map_err(|e| e.errno())?;
        mm.putback_movable_pages(list);
        list.clear();
        res.rc
    }
}

impl Drop for LiveRegion {
    fn drop(&mut self) {
        // Every page goes back to its frame's arena slot (the frames return to their
        // pools), then the shadow mappings are dropped.
        let b = &self.backend;
        b.do_flush_remaps();
        let mut back = Vec::new();
        let mut va = self.addr();
        while va < self.addr() + self.len() {
            let mut step = PAGE_SIZE;
            if let Ok(Pte::Present { pfn }) = self.space.pte(VirtAddr(va as u64)) {
                let head = b.shared.mm.compound_head(pfn);
                if head == pfn {
                    let nr = b.shared.mm.folio(Folio(head)).nr_pages();
                    back.push(Mv { va, pfn: head, nr });
                    step = nr * PAGE_SIZE;
                }
            }
            va += step;
        }
        let failed = b.run_moves(Dir::Out, back.clone());
        if !failed.is_empty() {
            inc(&b.shared.counters.remap_errors, failed.len() as u64);
        }
        for m in back {
            if failed.iter().any(|(f, _)| f.va == m.va) {
                // Its page could not go back: leak the frame rather than hand out a slot
                // that is not backed.
                continue;
            }
            let _ = self.space.unmap(VirtAddr(m.va as u64));
        }
    }
}
