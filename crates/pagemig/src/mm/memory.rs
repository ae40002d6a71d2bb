//! [`Memory`]: the whole machine that migrations run on — its nodes, the folio wait table,
//! the anon_vmas, the vm events, the batch size and the backends of spaces with real pages.

#![forbid(unsafe_code)]

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use super::arena::Arena;
use super::node::{Node, NODE_PFN_SHIFT};
use super::{
    folio, rmap, tlb, waitbit, AddressSpace, Buddy, FaultHooks, MemoryConfig, MmError, MovableOps,
    NodeId, SpaceBackend, VirtAddr, VmEvents, HPAGE_PMD_NR, PAGE_SIZE,
};
use crate::sync::{lock, Arc, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering, RwLock};

/// The default `NR_MAX_BATCHED_MIGRATION`: `HPAGE_PMD_NR` base pages.
pub const NR_MAX_BATCHED_MIGRATION: usize = HPAGE_PMD_NR;

/// The whole memory model: the "machine" that migrations run on.
pub struct Memory {
    pub(super) nodes: Vec<Node>,
    pub(crate) wait_table: Vec<waitbit::WaitQueue>,
    pub(crate) anon_vmas: RwLock<Vec<Arc<rmap::AnonVma>>>,
    /// Every file's mapping (`struct address_space`), named by handle from `folio->mapping`.
    pub(crate) mappings: RwLock<Vec<Arc<super::filemap::Mapping>>>,
    /// `folio->private` data by handle.
    pub(crate) privates: Mutex<HashMap<u64, super::filemap::FolioPrivate>>,
    pub(crate) next_private: AtomicU64,
    /// Pages soft-offlined for good (`num_poisoned_pages`).
    pub(crate) nr_poisoned: AtomicU64,
    /// The tracepoints' buffer.
    pub(crate) trace: crate::trace::TraceBuffer,
    /// The deferred split queue (`struct deferred_split`; one for the machine).
    pub(crate) deferred_split: Mutex<std::collections::HashSet<super::Folio>>,
    next_space_id: AtomicU32,
    pub(crate) events: VmEvents,
    /// The copy-offload registry, which Linux keeps in a global of
    /// `mm/migrate_copy_offload.c`. The memory model stores it without naming its type, so
    /// that dependencies point one way (offload → mm); [`Memory::offload`] (in
    /// [`crate::offload`]) creates and types it.
    pub(crate) offload_slot: OnceLock<Box<dyn Any + Send + Sync>>,
    pub(crate) hooks: Option<Arc<dyn FaultHooks>>,
    pub(crate) movable_ops: Option<Arc<dyn MovableOps>>,
    batch_pages: AtomicUsize,
    /// Backends of spaces with real pages behind them (their queued remaps are flushed at
    /// the end of every batch).
    backends: Mutex<Vec<std::sync::Weak<dyn SpaceBackend>>>,
    /// Told of every growth of a node, before its new frames are handed out.
    grow_hook: Mutex<Option<GrowHook>>,
}

/// A growth hook (the backend API, [`Memory::set_grow_hook`]): called with the node and the
/// address range of its arena that was just committed, before any of its frames is
/// handed out; false refuses the growth (the allocation fails as on a full node, and a
/// later one asks again).
pub type GrowHook = Arc<dyn Fn(NodeId, usize, usize) -> bool + Send + Sync>;

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
            let reserve = nc.max_bytes.unwrap_or(0).max(nc.capacity_bytes);
            if reserve / PAGE_SIZE >= 1 << NODE_PFN_SHIFT {
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
            let arena = Arena::with_reserve(
                nc.capacity_bytes,
                reserve,
                nc.host_node.unwrap_or(i as u32),
                !nc.no_huge_pages,
            )
            .map_err(|e| MmError::Arena {
                node: NodeId(i as u32),
                source: e.into(),
            })?;
            let nr = arena.len_bytes() / PAGE_SIZE;
            let max = arena.reserved_bytes() / PAGE_SIZE;
            let memmap = super::arena::zeroed_memmap(max);
            for m in &memmap[..nr] {
                m.flags.store(super::pg::BUDDY, Ordering::Relaxed);
            }
            nodes.push(Node {
                id: NodeId(i as u32),
                base_pfn,
                arena,
                buddy: Mutex::new(Buddy::new(nr)),
                memmap,
                nr_pages: AtomicUsize::new(nr),
                grow_lock: Mutex::new(()),
                head_off: super::arena::zeroed_vec(max),
                hwpoison: super::arena::zeroed_vec(max.div_ceil(64)),
                live_head: super::arena::zeroed_vec(max.div_ceil(64)),
                stats: Default::default(),
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
            mappings: RwLock::new(Vec::new()),
            privates: Mutex::new(HashMap::new()),
            next_private: AtomicU64::new(0),
            nr_poisoned: AtomicU64::new(0),
            trace: Default::default(),
            deferred_split: Mutex::new(std::collections::HashSet::new()),
            next_space_id: AtomicU32::new(1),
            events: VmEvents::default(),
            offload_slot: OnceLock::new(),
            hooks: config.hooks,
            movable_ops: config.movable_ops,
            batch_pages: AtomicUsize::new(NR_MAX_BATCHED_MIGRATION),
            backends: Mutex::new(Vec::new()),
            grow_hook: Mutex::new(None),
        }))
    }

    /// Grows a node that has a reserve (`NodeConfig::max_bytes`) by one step — its size
    /// again, from 2 MiB up to 128 MiB at a time (the pre-fault of a step stalls the
    /// allocation that needs it: about 40 ms here), within the reserve — the way memory
    /// hotplug onlines a section: the arena's next part is pre-faulted, its pages get their
    /// memmap entries and go to the buddy allocator. False when the node is at its reserve
    /// or the host has no memory for the step (the allocation then fails as on a full
    /// node). Returns true at once when another thread grew the node meanwhile.
    pub(in crate::mm) fn grow_node(&self, n: &Node, seen_pages: usize) -> bool {
        let _g = lock(&n.grow_lock);
        let nr = n.nr_pages();
        if nr != seen_pages {
            return true;
        }
        let max = n.max_pages();
        if nr >= max {
            return false;
        }
        let step = nr.clamp(HPAGE_PMD_NR, (128 << 20) / PAGE_SIZE) / HPAGE_PMD_NR * HPAGE_PMD_NR;
        let to = (nr + step).min(max);
        if n.arena.commit_to(to * PAGE_SIZE).is_err() {
            return false;
        }
        let hook = lock(&self.grow_hook).clone();
        if let Some(h) = hook {
            let base = n.arena.base_addr();
            if !h(n.id, base + nr * PAGE_SIZE, (to - nr) * PAGE_SIZE) {
                return false;
            }
        }
        for m in &n.memmap[nr..to] {
            m.flags.store(super::pg::BUDDY, Ordering::Relaxed);
        }
        // Valid pfns first, then free frames: a frame the buddy hands out is always a pfn
        // of the node.
        n.nr_pages.store(to, Ordering::Release);
        lock(&n.buddy).grow(to);
        true
    }

    /// Installs (or with `None` removes) the hook told of every growth of a node with a
    /// reserve: the live backend registers the new part of the arena with its
    /// userfaultfd there.
    pub fn set_grow_hook(&self, hook: Option<GrowHook>) {
        *lock(&self.grow_hook) = hook;
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> Result<&Node, MmError> {
        self.nodes.get(id.0 as usize).ok_or(MmError::NoSuchNode(id))
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

    /// Creates an address space whose pages are also real pages of `backend` (the backend
    /// API, see [`super::backend`]): the core tells the backend of every PTE change it makes.
    pub fn new_space_with_backend(
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
            vm_locked: std::sync::atomic::AtomicBool::new(false),
        });
        if let Some(b) = backend {
            let mut v = lock(&self.backends);
            v.retain(|w| w.strong_count() > 0);
            v.push(std::sync::Arc::downgrade(&b));
        }
        self.anon_vma_link(av, &space);
        Ok(space)
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

    /// The tracepoints (`migrate:mm_migrate_pages`).
    pub fn trace(&self) -> &crate::trace::TraceBuffer {
        &self.trace
    }

    /// The fault hooks, if any.
    pub fn hooks(&self) -> Option<&Arc<dyn FaultHooks>> {
        self.hooks.as_ref()
    }
}
