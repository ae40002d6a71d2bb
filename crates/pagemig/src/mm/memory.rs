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
    NodeId, PageMeta, SpaceBackend, VirtAddr, VmEvents, HPAGE_PMD_NR, PAGE_SIZE,
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
            let arena =
                Arena::new(nc.capacity_bytes, nc.host_node.unwrap_or(i as u32)).map_err(|e| {
                    MmError::Arena {
                        node: NodeId(i as u32),
                        source: e.into(),
                    }
                })?;
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
