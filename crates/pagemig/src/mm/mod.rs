//! The memory model — the built-in backend. Memory nodes (tiers) with real memory arenas
//! and buddy allocators, the memmap, address spaces with page tables and reverse mapping,
//! TLB shootdown and accessors.
//!
//! Linux analogues: `struct pglist_data` ([`Memory`] nodes), `mm/page_alloc.c`
//! ([`buddy`]), `struct page` ([`folio`]), `struct mm_struct` + page tables
//! ([`page_table`]), `mm/rmap.c` ([`rmap`]), `arch/x86/mm/tlb.c` ([`tlb`]), and a CPU's
//! loads and stores ([`access`]).

pub mod access;
pub mod arena;
pub mod backend;
pub mod buddy;
pub mod folio;
pub mod page_table;
pub mod rmap;
pub mod tlb;
pub mod waitbit;

use std::fmt;

use crate::migrate::Mode;
use crate::sync::{lock, Arc, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering, RwLock};
use crate::Errno;

pub use access::Accessor;
pub use arena::{Arena, NumaBinding};
pub use backend::{FailedUnmap, SpaceBackend};
pub use buddy::{Buddy, BuddyError, MAX_PAGE_ORDER};
pub use folio::{migrate_info, pg, Folio, FolioRef, PageMeta};
pub use page_table::{AddressSpace, Pte};
pub use tlb::{flush_tlb_space, TlbBatch};

/// Base page size.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Order of a PMD-sized folio (2 MiB).
pub const HPAGE_PMD_ORDER: u8 = 9;
/// Base pages in a PMD-sized folio.
pub const HPAGE_PMD_NR: usize = 1 << HPAGE_PMD_ORDER;

/// A page frame number, global across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pfn(pub u64);

/// A virtual address in an [`AddressSpace`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtAddr(pub u64);

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

/// A memory node (tier) id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A folio order: `1 << order` base pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Order(pub u8);

impl Order {
    /// The order of a folio of `bytes` bytes, if it is a power-of-two multiple of the page
    /// size up to 2 MiB.
    pub fn from_bytes(bytes: usize) -> Option<Order> {
        if bytes < PAGE_SIZE || !bytes.is_power_of_two() {
            return None;
        }
        let o = (bytes / PAGE_SIZE).trailing_zeros() as u8;
        (o <= MAX_PAGE_ORDER).then_some(Order(o))
    }
}

/// Errors of the memory model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MmError {
    /// No free block of the order on the node (`ENOMEM`).
    #[error("node {node:?}: no free block of order {order}")]
    NoMemory {
        /// node asked
        node: NodeId,
        /// order asked
        order: u8,
    },
    /// The node does not exist.
    #[error("no such node {0:?}")]
    NoSuchNode(NodeId),
    /// An order above [`MAX_PAGE_ORDER`].
    #[error("order {0} is larger than the maximum {MAX_PAGE_ORDER}")]
    BadOrder(u8),
    /// The pfn is not a live folio head.
    #[error("pfn {0:#x} is not an allocated folio")]
    NotAFolio(u64),
    /// Address outside the space.
    #[error("address {vaddr:?} outside the address space")]
    OutOfRange {
        /// the address
        vaddr: VirtAddr,
    },
    /// Address not aligned to the folio size.
    #[error("address {vaddr:?} not aligned to {align_bytes} bytes")]
    Misaligned {
        /// the address
        vaddr: VirtAddr,
        /// required alignment
        align_bytes: usize,
    },
    /// Something is already mapped there.
    #[error("address {vaddr:?} already mapped")]
    AlreadyMapped {
        /// the address
        vaddr: VirtAddr,
    },
    /// Nothing is mapped there.
    #[error("address {vaddr:?} not mapped")]
    NotMapped {
        /// the address
        vaddr: VirtAddr,
    },
    /// The folio is busy (already isolated, locked, or not in a state for this).
    #[error("folio busy")]
    Busy,
    /// A zero or otherwise invalid size or configuration.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The host refused to create an arena.
    #[error("cannot create arena: {0}")]
    Arena(String),
}

impl MmError {
    /// The Linux errno a caller would see.
    pub fn errno(&self) -> Errno {
        match self {
            MmError::NoMemory { .. } => Errno::NoMem,
            MmError::NoSuchNode(_) => Errno::NoDev,
            MmError::Busy => Errno::Busy,
            MmError::NotMapped { .. } => Errno::NoEnt,
            MmError::OutOfRange { .. } => Errno::Fault,
            _ => Errno::Inval,
        }
    }
}

/// Fault-injection points (the analogue of the kernel's `should_fail()` sites). Every
/// method has a no-op default; tests and `pagemig stress` implement the ones they need.
pub trait FaultHooks: Send + Sync {
    /// Return true to make this allocation fail (`ENOMEM`).
    fn alloc_should_fail(&self, _node: NodeId, _order: Order) -> bool {
        false
    }
    /// Called at the start of each move attempt of `src` (pass number from 0).
    fn before_move(&self, _mm: &Memory, _src: Folio, _pass: usize) {}
    /// Called after the TLB flush, right before the batch copy is dispatched (the gate
    /// was evaluated at the top of the batch): a driver unregistered here is the case of
    /// an unregister racing with a batch that already chose the batch path.
    fn before_batch_copy(&self, _mm: &Memory) {}
    /// Called right after the batch copy, before the move phase.
    fn after_batch_copy(&self, _mm: &Memory) {}
    /// Negative control only: copy the batch *before* the TLB flush, which is wrong and
    /// loses writes that accessors make through stale translations.
    fn copy_before_flush(&self) -> bool {
        false
    }
}

/// Callbacks of movable_ops pages (balloon, zsmalloc: `struct movable_operations`).
pub trait MovableOps: Send + Sync {
    /// `migrate_page(dst, src, mode)`: move the page's contents and ownership. On success
    /// the owner keeps `dst` (its allocation reference) and drops its reference on `src`.
    fn migrate_page(&self, mm: &Memory, dst: Folio, src: Folio, mode: Mode) -> Result<(), Errno>;
}

/// Configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Capacity; rounded up to 2 MiB.
    pub capacity_bytes: usize,
    /// Host NUMA node to bind to when the host has several (default: same id).
    pub host_node: Option<u32>,
}

/// Configuration of a [`Memory`].
#[derive(Clone, Default)]
pub struct MemoryConfig {
    /// The nodes, in id order.
    pub nodes: Vec<NodeConfig>,
    /// Fault-injection hooks.
    pub hooks: Option<Arc<dyn FaultHooks>>,
    /// Callbacks for movable_ops pages.
    pub movable_ops: Option<Arc<dyn MovableOps>>,
}

impl fmt::Debug for MemoryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConfig")
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl MemoryConfig {
    /// `nr_nodes` nodes of `capacity_bytes` each.
    pub fn with_nodes(nr_nodes: usize, capacity_bytes: usize) -> MemoryConfig {
        MemoryConfig {
            nodes: (0..nr_nodes)
                .map(|_| NodeConfig {
                    capacity_bytes,
                    host_node: None,
                })
                .collect(),
            hooks: None,
            movable_ops: None,
        }
    }
}

/// One memory node: arena, buddy allocator, memmap.
pub struct Node {
    id: NodeId,
    base_pfn: u64,
    arena: Arena,
    buddy: Mutex<Buddy>,
    memmap: Vec<PageMeta>,
    /// Per page: distance to the head page (`compound_head`); 0 for heads and free pages.
    /// Kept apart from the memmap so that allocating or freeing a 2 MiB folio touches 2 KiB
    /// of metadata, not every tail `PageMeta`.
    head_off: Vec<AtomicU32>,
    /// Per page `PG_hwpoison`, as a bitmap.
    hwpoison: Vec<AtomicU64>,
    /// Per page: the page is the head of an allocated folio.
    live_head: Vec<AtomicU64>,
}

impl Node {
    /// Node id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// The arena.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }
    /// Base pages managed.
    pub fn nr_pages(&self) -> usize {
        self.memmap.len()
    }
    /// Free base pages.
    pub fn nr_free_pages(&self) -> usize {
        lock(&self.buddy).nr_free_pages()
    }
}

/// Kernel vm event counters the migration code updates (`/proc/vmstat`).
#[derive(Debug, Default)]
pub struct VmEvents {
    pub(crate) pgmigrate_success: AtomicU64,
    pub(crate) pgmigrate_fail: AtomicU64,
    pub(crate) thp_migration_success: AtomicU64,
    pub(crate) thp_migration_fail: AtomicU64,
    pub(crate) thp_migration_split: AtomicU64,
    pub(crate) nr_tlb_flushes: AtomicU64,
}

/// A snapshot of [`VmEvents`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmEventCounts {
    /// `pgmigrate_success` (base pages)
    pub pgmigrate_success: u64,
    /// `pgmigrate_fail` (base pages)
    pub pgmigrate_fail: u64,
    /// `thp_migration_success`
    pub thp_migration_success: u64,
    /// `thp_migration_fail`
    pub thp_migration_fail: u64,
    /// `thp_migration_split`
    pub thp_migration_split: u64,
    /// TLB shootdowns performed (the `tlb:tlb_flush` tracepoint)
    pub nr_tlb_flushes: u64,
}

/// log2 of the pfn stride between nodes (so at most 1 TiB of 4 KiB pages per node).
const NODE_PFN_SHIFT: u32 = 28;

/// The default `NR_MAX_BATCHED_MIGRATION`: `HPAGE_PMD_NR` base pages.
pub const NR_MAX_BATCHED_MIGRATION: usize = HPAGE_PMD_NR;

/// The whole memory model: the "machine" that migrations run on.
pub struct Memory {
    nodes: Vec<Node>,
    pub(crate) wait_table: Vec<waitbit::WaitQueue>,
    pub(crate) anon_vmas: RwLock<Vec<Arc<rmap::AnonVma>>>,
    next_space_id: AtomicU32,
    pub(crate) events: VmEvents,
    pub(crate) offload: crate::offload::Registry,
    pub(crate) hooks: Option<Arc<dyn FaultHooks>>,
    pub(crate) movable_ops: Option<Arc<dyn MovableOps>>,
    batch_pages: AtomicUsize,
    /// Backends of spaces with real pages behind them (their queued remaps are flushed at
    /// the end of every batch).
    backends: Mutex<Vec<std::sync::Weak<dyn SpaceBackend>>>,
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory")
            .field("nr_nodes", &self.nodes.len())
            .finish()
    }
}

impl Memory {
    /// Creates the nodes: maps and pre-faults every arena.
    pub fn new(config: MemoryConfig) -> Result<Arc<Memory>, MmError> {
        if config.nodes.is_empty() {
            return Err(MmError::InvalidConfig("at least one node is needed".into()));
        }
        let mut nodes = Vec::with_capacity(config.nodes.len());
        let mut base_pfn = 0u64;
        for (i, nc) in config.nodes.iter().enumerate() {
            if nc.capacity_bytes / PAGE_SIZE >= 1 << NODE_PFN_SHIFT {
                return Err(MmError::InvalidConfig(format!(
                    "node {i} is larger than {} GiB",
                    (1u64 << NODE_PFN_SHIFT) >> 18
                )));
            }
            if nc.capacity_bytes == 0 {
                return Err(MmError::InvalidConfig(format!(
                    "node {i} has zero capacity"
                )));
            }
            let arena = Arena::new(nc.capacity_bytes, nc.host_node.unwrap_or(i as u32))
                .map_err(|e| MmError::Arena(e.to_string()))?;
            let nr = arena.len_bytes() / PAGE_SIZE;
            let memmap: Vec<PageMeta> = (0..nr).map(|_| PageMeta::new_free()).collect();
            nodes.push(Node {
                id: NodeId(i as u32),
                base_pfn,
                arena,
                buddy: Mutex::new(Buddy::new(nr)),
                memmap,
                head_off: (0..nr).map(|_| AtomicU32::new(0)).collect(),
                hwpoison: (0..nr.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
                live_head: (0..nr.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            });
            // Node `i` owns pfns from `i << NODE_PFN_SHIFT`: `pfn_to_nid` is a shift, and
            // pfns of different nodes are never contiguous.
            base_pfn += 1 << NODE_PFN_SHIFT;
        }
        Ok(Arc::new(Memory {
            nodes,
            wait_table: (0..folio::WAIT_TABLE_SIZE)
                .map(|_| Default::default())
                .collect(),
            anon_vmas: RwLock::new(Vec::new()),
            next_space_id: AtomicU32::new(1),
            events: VmEvents::default(),
            offload: crate::offload::Registry::new(),
            hooks: config.hooks,
            movable_ops: config.movable_ops,
            batch_pages: AtomicUsize::new(NR_MAX_BATCHED_MIGRATION),
            backends: Mutex::new(Vec::new()),
        }))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> Result<&Node, MmError> {
        self.nodes.get(id.0 as usize).ok_or(MmError::NoSuchNode(id))
    }

    #[inline]
    fn node_index_of(&self, pfn: Pfn) -> Option<usize> {
        let i = (pfn.0 >> NODE_PFN_SHIFT) as usize;
        let n = self.nodes.get(i)?;
        ((pfn.0 - n.base_pfn) < n.memmap.len() as u64).then_some(i)
    }

    /// The node a pfn belongs to. Panics on a pfn outside every node (an internal bug).
    pub fn node_of(&self, pfn: Pfn) -> NodeId {
        NodeId(self.node_index_of(pfn).expect("pfn outside every node") as u32)
    }

    /// Whether `pfn` names a page of some node.
    pub fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.node_index_of(pfn).is_some()
    }

    /// The memmap entry of `pfn` (`pfn_to_page`). Panics on an invalid pfn.
    pub fn page(&self, pfn: Pfn) -> &PageMeta {
        let n = &self.nodes[self.node_index_of(pfn).expect("pfn outside every node")];
        &n.memmap[(pfn.0 - n.base_pfn) as usize]
    }

    fn arena_off(&self, pfn: Pfn) -> (&Arena, usize) {
        let n = &self.nodes[self.node_index_of(pfn).expect("pfn outside every node")];
        (&n.arena, (pfn.0 - n.base_pfn) as usize * PAGE_SIZE)
    }

    /// The address of frame `pfn` in its node's arena.
    pub(crate) fn frame_addr(&self, pfn: Pfn) -> usize {
        let (a, off) = self.arena_off(pfn);
        a.base_addr() + off
    }

    fn node_idx(&self, pfn: Pfn) -> (&Node, usize) {
        let n = &self.nodes[self.node_index_of(pfn).expect("pfn outside every node")];
        (n, (pfn.0 - n.base_pfn) as usize)
    }

    /// `compound_head()`.
    pub fn compound_head(&self, pfn: Pfn) -> Pfn {
        let (n, i) = self.node_idx(pfn);
        Pfn(pfn.0 - n.head_off[i].load(Ordering::Acquire) as u64)
    }

    /// Whether `pfn` is a tail page of a large folio.
    pub fn is_tail_page(&self, pfn: Pfn) -> bool {
        let (n, i) = self.node_idx(pfn);
        n.head_off[i].load(Ordering::Acquire) != 0
    }

    /// `PageHWPoison()` of one page.
    pub fn page_is_hwpoison(&self, pfn: Pfn) -> bool {
        let (n, i) = self.node_idx(pfn);
        n.hwpoison[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Sets or clears `PG_hwpoison` of `nr` pages from `pfn` (one node).
    pub(crate) fn set_hwpoison_range(&self, pfn: Pfn, nr: usize, on: bool) {
        let (n, i) = self.node_idx(pfn);
        for k in i..i + nr {
            let bit = 1u64 << (k % 64);
            if on {
                n.hwpoison[k / 64].fetch_or(bit, Ordering::AcqRel);
            } else if n.hwpoison[k / 64].load(Ordering::Relaxed) & bit != 0 {
                n.hwpoison[k / 64].fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }

    fn set_live_head(&self, pfn: Pfn, on: bool) {
        let (n, i) = self.node_idx(pfn);
        let bit = 1u64 << (i % 64);
        if on {
            n.live_head[i / 64].fetch_or(bit, Ordering::AcqRel);
        } else {
            n.live_head[i / 64].fetch_and(!bit, Ordering::AcqRel);
        }
    }

    fn is_live_head(&self, pfn: Pfn) -> bool {
        let (n, i) = self.node_idx(pfn);
        n.live_head[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Makes every page of `[head, head + nr)` its own head (after a split).
    pub(crate) fn clear_compound(&self, head: Pfn, nr: usize) {
        let (n, i) = self.node_idx(head);
        for k in i..i + nr {
            n.head_off[k].store(0, Ordering::Release);
        }
    }

    /// Marks every page of `[head, head + nr)` a live folio head (after a split).
    pub(crate) fn mark_split_heads(&self, head: Pfn, nr: usize) {
        for k in 0..nr as u64 {
            self.set_live_head(Pfn(head.0 + k), true);
        }
    }

    /// A view of a folio. Panics if `folio` names no page (use [`Memory::folio_checked`]
    /// for untrusted input).
    pub fn folio(&self, folio: Folio) -> FolioRef<'_> {
        FolioRef {
            mm: self,
            folio,
            meta: self.page(folio.0),
        }
    }

    /// A view of a folio after checking that it is a live folio head.
    pub fn folio_checked(&self, folio: Folio) -> Result<FolioRef<'_>, MmError> {
        if !self.pfn_valid(folio.0) {
            return Err(MmError::NotAFolio(folio.0 .0));
        }
        let f = self.folio(folio);
        if !self.is_live_head(folio.0) || f.test(pg::BUDDY) || f.ref_count() <= 0 {
            return Err(MmError::NotAFolio(folio.0 .0));
        }
        Ok(f)
    }

    /// Allocates a folio (`folio_alloc` / `__alloc_pages` on one node): refcount 1,
    /// mapcount 0, `flags` set on the head, every page's poison cleared.
    pub fn alloc_folio(&self, node: NodeId, order: Order, flags: u32) -> Result<Folio, MmError> {
        if order.0 > MAX_PAGE_ORDER {
            return Err(MmError::BadOrder(order.0));
        }
        let n = self.node(node)?;
        if let Some(h) = &self.hooks {
            if h.alloc_should_fail(node, order) {
                return Err(MmError::NoMemory {
                    node,
                    order: order.0,
                });
            }
        }
        let frame = lock(&n.buddy).alloc(order.0).ok_or(MmError::NoMemory {
            node,
            order: order.0,
        })?;
        let head = n.base_pfn + frame as u64;
        let nr = 1usize << order.0;
        for k in 1..nr {
            n.head_off[frame as usize + k].store(k as u32, Ordering::Relaxed);
        }
        self.set_hwpoison_range(Pfn(head), nr, false);
        self.set_live_head(Pfn(head), true);
        let m = &n.memmap[frame as usize];
        m.order.store(order.0, Ordering::Relaxed);
        m.mapcount.store(0, Ordering::Relaxed);
        m.migrate_info.store(0, Ordering::Relaxed);
        m.mapping.store(0, Ordering::Relaxed);
        m.index.store(0, Ordering::Relaxed);
        m.refcount.store(1, Ordering::Relaxed);
        m.flags.store(
            flags & !(pg::BUDDY | pg::LOCKED | pg::HAS_HWPOISONED),
            Ordering::Release,
        );
        Ok(Folio(Pfn(head)))
    }

    /// `folio_put()`: drops a reference; the last one frees the folio to its node.
    pub fn folio_put(&self, folio: Folio) {
        let m = self.page(folio.0);
        let old = m.refcount.fetch_sub(1, Ordering::AcqRel);
        assert!(old > 0, "folio_put on a free folio {:#x}", folio.0 .0);
        if old == 1 {
            self.free_folio(folio);
        }
    }

    fn free_folio(&self, folio: Folio) {
        let idx = self.node_index_of(folio.0).expect("pfn outside every node");
        let n = &self.nodes[idx];
        let m = self.page(folio.0);
        let order = m.order.load(Ordering::Acquire);
        debug_assert_eq!(
            m.mapcount.load(Ordering::Acquire),
            0,
            "freeing a mapped folio"
        );
        m.flags.store(pg::BUDDY, Ordering::Release);
        m.mapping.store(0, Ordering::Relaxed);
        m.migrate_info.store(0, Ordering::Relaxed);
        self.clear_compound(folio.0, 1 << order);
        self.set_live_head(folio.0, false);
        m.order.store(0, Ordering::Relaxed);
        let r = lock(&n.buddy).free((folio.0 .0 - n.base_pfn) as u32, order);
        if let Err(e) = r {
            panic!("memory model corrupted: {e}");
        }
    }

    /// `folio_try_get()`: a reference on a folio found by pfn, only if it is live, checked
    /// again once the reference is held (a pfn walker can race with the folio's freeing
    /// and reuse).
    fn folio_try_get(&self, folio: Folio) -> Result<FolioRef<'_>, MmError> {
        if !self.pfn_valid(folio.0) || !self.is_live_head(folio.0) {
            return Err(MmError::NotAFolio(folio.0 .0));
        }
        let f = self.folio(folio);
        let mut r = f.meta.refcount.load(Ordering::Acquire);
        loop {
            if r <= 0 {
                return Err(MmError::NotAFolio(folio.0 .0));
            }
            match f.meta.refcount.compare_exchange_weak(
                r,
                r + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(v) => r = v,
            }
        }
        if !self.is_live_head(folio.0) || f.test(pg::BUDDY) {
            // It stopped being a folio head before our increment: not a reference at all.
            f.meta.refcount.fetch_sub(1, Ordering::AcqRel);
            return Err(MmError::NotAFolio(folio.0 .0));
        }
        Ok(f)
    }

    /// `folio_isolate_lru()` (or `isolate_movable_ops_page()`): takes the folio off the LRU
    /// for migration, holding a reference. `Busy` if it is not on the LRU (already
    /// isolated, or a destination still being migrated into); `NotAFolio` for a pfn that
    /// is no live folio.
    pub fn isolate_folio(&self, folio: Folio) -> Result<(), MmError> {
        let f = self.folio_try_get(folio)?;
        let taken = if f.test(pg::MOVABLE_OPS) {
            f.meta.flags.fetch_or(pg::ISOLATED, Ordering::AcqRel) & pg::ISOLATED == 0
        } else if f.meta.flags.fetch_and(!pg::LRU, Ordering::AcqRel) & pg::LRU != 0 {
            f.set(pg::ISOLATED);
            true
        } else {
            false
        };
        if !taken {
            f.put();
            return Err(MmError::Busy);
        }
        Ok(())
    }

    /// `folio_putback_lru()`: puts an isolated folio back on the LRU and drops the
    /// isolation reference.
    pub fn putback_folio(&self, folio: Folio) -> Result<(), MmError> {
        let f = self.folio_checked(folio)?;
        if f.meta.flags.fetch_and(!pg::ISOLATED, Ordering::AcqRel) & pg::ISOLATED == 0 {
            return Err(MmError::Busy);
        }
        if !f.test(pg::MOVABLE_OPS) {
            f.set(pg::LRU);
        }
        f.put();
        Ok(())
    }

    /// `putback_movable_pages()`: puts back every folio of a failed migration list.
    pub fn putback_movable_pages(&self, list: &mut Vec<Folio>) {
        for f in list.drain(..) {
            let _ = self.putback_folio(f);
        }
    }

    /// Allocates a movable_ops page (a balloon page, say): not mapped, owned by its driver
    /// with one reference, migrated through [`MovableOps`].
    pub fn alloc_movable_ops_page(&self, node: NodeId) -> Result<Folio, MmError> {
        self.alloc_folio(node, Order(0), pg::MOVABLE_OPS | pg::UPTODATE)
    }

    /// Marks one page hwpoisoned (`memory_failure()` on its pfn): reads of it fail with
    /// `EHWPOISON` and a machine-check-safe copy from it stops there. The mark lasts until
    /// the frame is allocated again.
    pub fn inject_hwpoison(&self, pfn: Pfn) -> Result<(), MmError> {
        if !self.pfn_valid(pfn) {
            return Err(MmError::NotAFolio(pfn.0));
        }
        self.set_hwpoison_range(pfn, 1, true);
        let head = self.compound_head(pfn);
        self.page(head)
            .flags
            .fetch_or(pg::HAS_HWPOISONED, Ordering::AcqRel);
        Ok(())
    }

    /// Clears the poison mark of one page (`unpoison_memory`, for fault injection that
    /// models a transient error).
    pub fn clear_hwpoison(&self, pfn: Pfn) -> Result<(), MmError> {
        if !self.pfn_valid(pfn) {
            return Err(MmError::NotAFolio(pfn.0));
        }
        self.set_hwpoison_range(pfn, 1, false);
        Ok(())
    }

    /// Reads within one page. `EHWPOISON` if the page is poisoned.
    pub fn page_read(&self, pfn: Pfn, off: usize, buf: &mut [u8]) -> Result<(), Errno> {
        assert!(off + buf.len() <= PAGE_SIZE);
        if self.page_is_hwpoison(pfn) {
            return Err(Errno::HwPoison);
        }
        let (a, o) = self.arena_off(pfn);
        a.read(o + off, buf);
        Ok(())
    }

    /// Writes within one page.
    pub fn page_write(&self, pfn: Pfn, off: usize, buf: &[u8]) {
        assert!(off + buf.len() <= PAGE_SIZE);
        let (a, o) = self.arena_off(pfn);
        a.write(o + off, buf);
    }

    /// Copies `len` bytes at byte offset `off` of folio `src` to the same offset of `dst`,
    /// machine-check safe: if a source page in the range is poisoned, the bytes before it
    /// are copied and `EHWPOISON` is returned (`copy_mc_to_kernel`). The stores stream:
    /// see [`crate::copy::store_fence`] before handing the bytes to another thread.
    pub fn copy_folio_range(
        &self,
        dst: Folio,
        src: Folio,
        off: usize,
        len: usize,
    ) -> Result<(), Errno> {
        let s = self.folio(src);
        let size = s.size_bytes();
        if off
            .checked_add(len)
            .is_none_or(|end| end > size || end > self.folio(dst).size_bytes())
        {
            return Err(Errno::Inval);
        }
        let (sn, s_byte) = self.node_byte(src.0);
        let (dn, d_byte) = self.node_byte(dst.0);
        Self::mc_copy(dn, d_byte + off, sn, s_byte + off, len, s.has_hwpoison())
    }

    fn node_byte(&self, pfn: Pfn) -> (&Node, usize) {
        let (n, i) = self.node_idx(pfn);
        (n, i * PAGE_SIZE)
    }

    /// The machine-check-safe copy of `len` bytes between two in-bounds node ranges: if a
    /// source page is poisoned, the bytes before it are copied and `EHWPOISON` returned.
    /// `may_be_poisoned = false` (no `PG_has_hwpoisoned`) skips the scan.
    fn mc_copy(
        dn: &Node,
        d_byte: usize,
        sn: &Node,
        s_byte: usize,
        len: usize,
        may_be_poisoned: bool,
    ) -> Result<(), Errno> {
        let mut copy_len = len;
        if may_be_poisoned {
            let poisoned = (s_byte / PAGE_SIZE..(s_byte + len).div_ceil(PAGE_SIZE))
                .find(|&p| sn.hwpoison[p / 64].load(Ordering::Acquire) & (1 << (p % 64)) != 0);
            if let Some(p) = poisoned {
                copy_len = (p * PAGE_SIZE).saturating_sub(s_byte);
            }
        }
        if copy_len > 0 {
            dn.arena.copy_from(d_byte, &sn.arena, s_byte, copy_len);
        }
        if copy_len < len {
            Err(Errno::HwPoison)
        } else {
            Ok(())
        }
    }

    /// `folio_mc_copy(dst, src)`: copies a whole folio, machine-check safe.
    pub fn folio_mc_copy(&self, dst: Folio, src: Folio) -> Result<(), Errno> {
        let size = self.folio(src).size_bytes();
        self.copy_folio_range(dst, src, 0, size)
    }

    /// Raw copy between two physically addressed ranges (`dst_pfn`/`src_pfn` plus byte
    /// offset), for DMA-style engines: every page in both ranges must exist and the ranges
    /// must stay within one node each. Machine-check safe like [`Memory::copy_folio_range`].
    pub fn copy_phys(
        &self,
        dst: Pfn,
        dst_off: usize,
        src: Pfn,
        src_off: usize,
        len: usize,
    ) -> Result<(), Errno> {
        let (Some(si), Some(di)) = (self.node_index_of(src), self.node_index_of(dst)) else {
            return Err(Errno::Fault);
        };
        let (sn, dn) = (&self.nodes[si], &self.nodes[di]);
        let s_byte = (src.0 - sn.base_pfn) as usize * PAGE_SIZE + src_off;
        let d_byte = (dst.0 - dn.base_pfn) as usize * PAGE_SIZE + dst_off;
        if s_byte + len > sn.arena.len_bytes() || d_byte + len > dn.arena.len_bytes() {
            return Err(Errno::Fault);
        }
        Self::mc_copy(dn, d_byte, sn, s_byte, len, true)
    }

    /// A checksum of a folio's bytes (ignores poison).
    pub fn folio_checksum(&self, folio: Folio) -> u64 {
        let size = self.folio(folio).size_bytes();
        let (a, o) = self.arena_off(folio.0);
        a.checksum(o, size)
    }

    /// Fills a folio's bytes directly (setup for benchmarks; not a migration-aware access).
    pub fn folio_fill(&self, folio: Folio, seed: u64) {
        let size = self.folio(folio).size_bytes();
        let (a, o) = self.arena_off(folio.0);
        let mut buf = vec![0u8; PAGE_SIZE];
        for p in 0..size / PAGE_SIZE {
            let mut x = seed ^ ((p as u64) << 32) ^ folio.0 .0;
            for w in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            a.write(o + p * PAGE_SIZE, &buf);
        }
    }

    /// Free base pages on a node.
    pub fn nr_free_pages(&self, node: NodeId) -> usize {
        self.node(node).map(|n| n.nr_free_pages()).unwrap_or(0)
    }

    /// Free base pages over all nodes (frame accounting: equal to the total when nothing
    /// is allocated).
    pub fn nr_free_pages_total(&self) -> usize {
        self.nodes.iter().map(|n| n.nr_free_pages()).sum()
    }

    /// Base pages over all nodes.
    pub fn nr_pages_total(&self) -> usize {
        self.nodes.iter().map(|n| n.nr_pages()).sum()
    }

    /// Creates an address space covering `[base, base + len_bytes)`.
    pub fn new_space(
        self: &Arc<Self>,
        base: VirtAddr,
        len_bytes: usize,
    ) -> Result<Arc<AddressSpace>, MmError> {
        self.new_space_with_backend(base, len_bytes, None)
    }

    /// Creates an address space whose pages are also real pages of `backend`.
    pub(crate) fn new_space_with_backend(
        self: &Arc<Self>,
        base: VirtAddr,
        len_bytes: usize,
        backend: Option<std::sync::Arc<dyn SpaceBackend>>,
    ) -> Result<Arc<AddressSpace>, MmError> {
        if len_bytes == 0 || len_bytes % PAGE_SIZE != 0 {
            return Err(MmError::InvalidConfig(format!(
                "space length {len_bytes} is not a positive multiple of 4096"
            )));
        }
        if base.0 % (PAGE_SIZE as u64) != 0 {
            return Err(MmError::Misaligned {
                vaddr: base,
                align_bytes: PAGE_SIZE,
            });
        }
        let av = self.anon_vma_new();
        let space = Arc::new(AddressSpace {
            mm: self.clone(),
            id: self.next_space_id.fetch_add(1, Ordering::Relaxed),
            base,
            ptes: (0..len_bytes / PAGE_SIZE)
                .map(|_| AtomicU64::new(0))
                .collect(),
            ptl: Mutex::new(()),
            anon_vma: av,
            tlb: tlb::TlbDomain::new(),
            backend: backend.clone(),
        });
        if let Some(b) = backend {
            let mut v = lock(&self.backends);
            v.retain(|w| w.strong_count() > 0);
            v.push(std::sync::Arc::downgrade(&b));
        }
        self.anon_vma_link(av, &space);
        Ok(space)
    }

    /// A snapshot of the vm event counters.
    pub fn vm_events(&self) -> VmEventCounts {
        let e = &self.events;
        VmEventCounts {
            pgmigrate_success: e.pgmigrate_success.load(Ordering::Relaxed),
            pgmigrate_fail: e.pgmigrate_fail.load(Ordering::Relaxed),
            thp_migration_success: e.thp_migration_success.load(Ordering::Relaxed),
            thp_migration_fail: e.thp_migration_fail.load(Ordering::Relaxed),
            thp_migration_split: e.thp_migration_split.load(Ordering::Relaxed),
            nr_tlb_flushes: e.nr_tlb_flushes.load(Ordering::Relaxed),
        }
    }

    /// `NR_MAX_BATCHED_MIGRATION` in base pages (default 512).
    pub fn batch_pages(&self) -> usize {
        self.batch_pages.load(Ordering::Relaxed)
    }

    /// Sets `NR_MAX_BATCHED_MIGRATION` (the series raised it for its measurements).
    pub fn set_batch_pages(&self, nr_pages: usize) -> Result<(), MmError> {
        if nr_pages == 0 {
            return Err(MmError::InvalidConfig("batch of zero pages".into()));
        }
        self.batch_pages.store(nr_pages, Ordering::Relaxed);
        Ok(())
    }

    /// The copy-offload registry of this memory (the kernel has one per system).
    pub fn offload(&self) -> &crate::offload::Registry {
        &self.offload
    }

    /// Performs every backend's queued remaps (the end of a batch).
    pub(crate) fn flush_backend_remaps(&self) {
        let live: Vec<std::sync::Arc<dyn SpaceBackend>> = {
            let v = lock(&self.backends);
            if v.is_empty() {
                return;
            }
            v.iter().filter_map(|w| w.upgrade()).collect()
        };
        for b in live {
            b.flush_remaps();
        }
    }

    /// The fault hooks, if any.
    pub fn hooks(&self) -> Option<&Arc<dyn FaultHooks>> {
        self.hooks.as_ref()
    }
}
