//! The userfaultfd and its fault-handler thread: [`Live`] opens the userfaultfd, checks
//! that the kernel can move anonymous pages, registers every node's arena (the frame pools)
//! and serves the page faults of every region (`handle_mm_fault` for a missing page: a
//! first touch is populated from a node's pool; a page under migration waits).

#![forbid(unsafe_code)]

use pagemig::sync::IgnorePoison as _;
use pagemig::sys::own_threads::{self, OwnThread};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use pagemig::mm::{
    pg, AddressSpace, Memory, MmError, NodeId, Order, Pte, SpaceBackend, VirtAddr, HPAGE_PMD_ORDER,
    PAGE_SIZE,
};
use pagemig::sync::lock;

use crate::counters::{inc, Counters, LiveCounts};
use crate::error::{sys_err, LiveError};
use crate::moves::{Mv, Pending, RegionBackend};
use crate::region::LiveRegion;
use crate::{sys, LiveConfig, RegionConfig};

/// The oldest kernel with `UFFDIO_MOVE`.
pub(crate) const MIN_KERNEL: (u32, u32) = (6, 8);

pub(crate) fn parse_release(r: &str) -> Option<(u32, u32)> {
    let mut it = r.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

pub(crate) struct Shared {
    pub(crate) mm: Arc<Memory>,
    pub(crate) uffd: OwnedFd,
    pub(crate) stop: OwnedFd,
    pub(crate) features: u64,
    pub(crate) arenas: Vec<(usize, usize)>,
    pub(crate) regions: RwLock<Vec<Weak<RegionBackend>>>,
    pub(crate) counters: Counters,
    /// This process's pagemap, to find pages that arrived as the shared zero page (`None`
    /// where /proc cannot be read).
    pub(crate) pagemap: Option<crate::kernel::Pagemap>,
    /// Whether some node's arena is bound to a host NUMA node (a host with several):
    /// only then can a page of the program be on the wrong node.
    pub(crate) multi_node: bool,
}

pub(crate) struct LiveInner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) handler: Mutex<Option<OwnThread<()>>>,
}

impl Drop for LiveInner {
    fn drop(&mut self) {
        sys::eventfd_signal(&self.shared.stop);
        if let Some(h) = lock(&self.handler).take() {
            let _ = h.join();
        }
        self.shared.mm.set_grow_hook(None);
        for n in self.shared.mm.nodes() {
            let (a, _) = n.arena_range();
            let _ = sys::unregister(&self.shared.uffd, a, n.nr_pages() * PAGE_SIZE);
        }
    }
}

/// The live backend of one [`Memory`]: a userfaultfd with every node's arena registered
/// (the frame pools) and a fault-handler thread. Regions come from [`Live::region`].
pub struct Live {
    pub(crate) inner: Arc<LiveInner>,
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
            .unwrap_or_else(pagemig::sys::kernel_release);
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
            Err(e) => Err(LiveError::Refused(e)),
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
        let mut registered = Vec::new();
        for n in mm.nodes() {
            // The committed part: a node that grows registers each new part from the grow
            // hook below. Its reserve must not be registered before it is committed: the
            // pre-fault would then raise missing faults for this handler to resolve.
            let (a, l) = n.arena_range();
            let committed = n.nr_pages() * PAGE_SIZE;
            let r = register_arena(&uffd, n.id(), a, committed);
            if let Err(e) = r {
                for &(a, l) in &registered {
                    let _ = sys::unregister(&uffd, a, l);
                }
                return Err(e);
            }
            registered.push((a, committed));
            arenas.push((a, l));
        }
        let shared = Arc::new(Shared {
            mm: mm.clone(),
            uffd,
            stop: sys::eventfd().map_err(|e| sys_err("eventfd", e))?,
            features: api.features,
            arenas,
            regions: RwLock::new(Vec::new()),
            counters: Counters::default(),
            pagemap: crate::kernel::Pagemap::open().ok(),
            multi_node: mm
                .nodes()
                .iter()
                .any(|n| matches!(n.binding(), pagemig::mm::NumaBinding::Bound(_))),
        });
        let weak = Arc::downgrade(&shared);
        mm.set_grow_hook(Some(Arc::new(move |node, addr, len| {
            let Some(sh) = weak.upgrade() else {
                return false;
            };
            match register_arena(&sh.uffd, node, addr, len) {
                Ok(()) => {
                    inc(&sh.counters.pool_growths, 1);
                    true
                }
                Err(e) => {
                    if sh
                        .counters
                        .pool_growth_errors
                        .fetch_add(1, Ordering::Relaxed)
                        == 0
                    {
                        eprintln!("pagemig live: node {} cannot grow: {e}", node.0);
                    }
                    false
                }
            }
        })));
        let s = shared.clone();
        let handler = own_threads::spawn(
            std::thread::Builder::new().name("pagemig-uffd".into()),
            move || fault_handler(&s),
        )
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
        // Where pages are is pagemig's business: on a host with several nodes, the kernel's
        // automatic NUMA balancing would migrate them to the node of the CPU that touches
        // them, behind the core's back. A policy of the region's own (MPOL_LOCAL: the same
        // local allocation as the default) takes it out of the balancing scans.
        if pagemig::mm::numa::host_numa_nodes().len() > 1 {
            pagemig::sys::mbind(map.addr(), map.len(), pagemig::sys::MemPolicy::Local)
                .map_err(|e| sys_err("mbind", e))?;
        }
        let ioctls = sys::register_missing(&sh.uffd, map.addr(), map.len()).map_err(|e| {
            LiveError::Register {
                what: "the region".into(),
                detail: e.to_string(),
                source: Some(e),
            }
        })?;
        if ioctls & (1 << sys::UFFDIO_NR_MOVE) == 0 {
            return Err(LiveError::Register {
                what: "the region".into(),
                detail: "the range does not offer UFFDIO_MOVE".into(),
                source: None,
            });
        }
        let (backend, space) = new_backend(sh, map.addr(), &cfg)?;
        publish(sh, &backend);
        Ok(LiveRegion {
            backend,
            space,
            map,
            _live: self.inner.clone(),
            detached: false,
        })
    }
}

/// The backend and the shadow page table of a region of `cfg` at `base` (a mapping
/// registered with the userfaultfd already), not yet seen by the fault handler.
pub(crate) fn new_backend(
    sh: &Arc<Shared>,
    base: usize,
    cfg: &RegionConfig,
) -> Result<(Arc<RegionBackend>, Arc<AddressSpace>), LiveError> {
    let backend = Arc::new(RegionBackend {
        shared: sh.clone(),
        base,
        len: cfg.len_bytes,
        order: cfg.folio_order,
        placement: AtomicU32::new(cfg.placement.0),
        interleave: cfg.interleave,
        fault_around: cfg.fault_around.max(1),
        batch_moves: AtomicBool::new(cfg.batch_moves),
        pending: Mutex::new(Pending::default()),
        space: OnceLock::new(),
        frames: (0..cfg.len_bytes / PAGE_SIZE)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
        dead: AtomicBool::new(false),
        faulting: Mutex::new(()),
    });
    let dynb: Arc<dyn SpaceBackend> = backend.clone();
    let space = sh
        .mm
        .new_space_with_backend(VirtAddr(base as u64), cfg.len_bytes, Some(dynb))?;
    let _ = backend.space.set(Arc::downgrade(&space));
    Ok((backend, space))
}

/// Makes `backend` the fault handler's for its range.
pub(crate) fn publish(sh: &Shared, backend: &Arc<RegionBackend>) {
    let mut r = sh.regions.write().ignore_poison();
    r.retain(|w| w.strong_count() > 0);
    r.push(Arc::downgrade(backend));
}

/// Registers `[a, a + l)` of node `node`'s arena for missing faults, and checks that it
/// offers `UFFDIO_MOVE`.
fn register_arena(uffd: &OwnedFd, node: NodeId, a: usize, l: usize) -> Result<(), LiveError> {
    let ioctls = sys::register_missing(uffd, a, l).map_err(|e| LiveError::Register {
        what: format!("node {} arena", node.0),
        detail: if e.raw_os_error() == Some(libc::EBUSY) {
            "it already serves another live backend (EBUSY)".into()
        } else {
            e.to_string()
        },
        source: Some(e),
    })?;
    if ioctls & (1 << sys::UFFDIO_NR_MOVE) == 0 {
        let _ = sys::unregister(uffd, a, l);
        return Err(LiveError::Register {
            what: format!("node {} arena", node.0),
            detail: "the range does not offer UFFDIO_MOVE".into(),
            source: None,
        });
    }
    Ok(())
}

/// The fault-handler thread: reads page faults until the stop eventfd fires.
fn fault_handler(sh: &Shared) {
    crate::alloc::backend_thread();
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
            // A dropped region's backend may still be alive (held by a flush or a batch
            // in flight) while a new region has its addresses: only a live one is the
            // region of this fault.
            let region = {
                let r = sh.regions.read().ignore_poison();
                r.iter()
                    .filter_map(|w| w.upgrade())
                    .find(|b| !b.dead.load(Ordering::Acquire) && b.contains(addr))
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

impl RegionBackend {
    /// The fault handler's work for one fault at `addr` (inside this region).
    pub(crate) fn handle_fault(&self, addr: usize) {
        let c = &self.shared.counters;
        let _serving = lock(&self.faulting);
        if self.dead.load(Ordering::Acquire) {
            // Retired while this fault waited for it (a region remade, or dropped): the
            // access faults again, on whatever region is there now.
            let _ = sys::wake(&self.shared.uffd, addr & !(PAGE_SIZE - 1), PAGE_SIZE);
            return;
        }
        #[cfg(test)]
        fault_hook::after_the_dead_check(self);
        let Some(space) = self.space.get().and_then(|w| w.upgrade()) else {
            // Never leave a faulting thread asleep: if its region is going away there is
            // nothing to populate, and the access faults again on whatever is there then.
            let _ = sys::wake(&self.shared.uffd, addr & !(PAGE_SIZE - 1), PAGE_SIZE);
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
                    Ok(()) => {
                        // Fault-around: the untouched folios after it, while there are
                        // frames (a failure here is no one's fault to report).
                        let end = self.base + self.len;
                        for k in 1..self.fault_around {
                            let next = fva + k * folio_bytes;
                            if next >= end
                                || space.pte(VirtAddr(next as u64)) != Ok(Pte::None)
                                || self.populate_one(&space, next, next).is_err()
                            {
                                break;
                            }
                            inc(&c.faulted_around, 1);
                        }
                    }
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
    pub(crate) fn populate_one(
        &self,
        space: &AddressSpace,
        fva: usize,
        va: usize,
    ) -> Result<(), MmError> {
        let mm = &self.shared.mm;
        let n = mm.nodes().len();
        let first = if self.interleave {
            (fva - self.base) / (PAGE_SIZE << self.order) % n
        } else {
            self.placement.load(Ordering::Relaxed) as usize
        };
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
                    pg::ANON | pg::SWAPBACKED | pg::UPTODATE | pg::LRU,
                    |folio| {
                        // A frame holds the bytes of its last use: a program's new page
                        // reads zero.
                        mm.folio_zero(folio);
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

/// What this machine's userfaultfd offers this process (for `pagemig info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UffdProbe {
    /// The features `UFFDIO_API` reports, or why the userfaultfd could not be opened.
    pub features: Result<u64, String>,
    /// Whether `UFFDIO_MOVE` is offered (`UFFD_FEATURE_MOVE`, Linux 6.8+).
    pub has_move: bool,
    /// Whether a userfaultfd that also handles kernel-mode faults (without
    /// `UFFD_USER_MODE_ONLY`) may be opened by this user (`vm.unprivileged_userfaultfd = 1`
    /// or `CAP_SYS_PTRACE`).
    pub kernel_mode_faults_allowed: bool,
}

/// Opens a userfaultfd (user-mode faults only, then with kernel-mode faults) to see what
/// it offers; changes nothing.
pub fn probe_userfaultfd() -> UffdProbe {
    let features = sys::userfaultfd(sys::UFFD_USER_MODE_ONLY)
        .and_then(|fd| sys::api(&fd, 0))
        .map(|a| a.features)
        .map_err(|e| e.to_string());
    let has_move = features
        .as_ref()
        .is_ok_and(|f| f & sys::UFFD_FEATURE_MOVE != 0);
    UffdProbe {
        features,
        has_move,
        kernel_mode_faults_allowed: sys::userfaultfd(0).is_ok(),
    }
}

/// A test's hold on the fault handler: the fault of one region's backend pauses after the
/// handler found the backend alive, until the test lets it go on (or 20 s pass).
#[cfg(test)]
pub(crate) mod fault_hook {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    use crate::moves::RegionBackend;

    /// The backend whose fault pauses (0: none).
    static HOOKED: AtomicUsize = AtomicUsize::new(0);
    /// (a fault paused, let it go on)
    static STATE: Mutex<(bool, bool)> = Mutex::new((false, false));
    static MOVED: Condvar = Condvar::new();

    pub(crate) fn hold(b: &std::sync::Arc<RegionBackend>) {
        *STATE.lock().unwrap() = (false, false);
        HOOKED.store(std::sync::Arc::as_ptr(b) as usize, Ordering::Release);
    }

    fn wait(want: impl Fn(&(bool, bool)) -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        let mut s = STATE.lock().unwrap();
        while !want(&s) {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the held fault did not come or was not let go"
            );
            s = MOVED.wait_timeout(s, left).unwrap().0;
        }
    }

    /// Waits until the held backend's fault has paused.
    pub(crate) fn wait_paused() {
        wait(|s| s.0);
    }

    /// Lets the paused fault go on.
    pub(crate) fn release() {
        STATE.lock().unwrap().1 = true;
        MOVED.notify_all();
    }

    pub(super) fn after_the_dead_check(b: &RegionBackend) {
        if HOOKED.load(Ordering::Acquire) != b as *const RegionBackend as usize {
            return;
        }
        HOOKED.store(0, Ordering::Release);
        STATE.lock().unwrap().0 = true;
        MOVED.notify_all();
        wait(|s| s.1);
    }
}
