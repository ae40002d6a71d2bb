//! One memory node (`struct pglist_data`): its arena, buddy allocator and memmap, and the
//! pfn → node → memmap lookups (`pfn_to_nid`, `pfn_to_page`, `compound_head`).

#![forbid(unsafe_code)]

use super::arena::{Arena, NumaBinding};
use super::{Buddy, Memory, NodeId, PageMeta, Pfn, PAGE_SIZE};
use crate::sync::{lock, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering};

/// log2 of the pfn stride between nodes (so at most 1 TiB of 4 KiB pages per node).
pub(super) const NODE_PFN_SHIFT: u32 = 28;

/// One memory node: arena, buddy allocator, memmap.
pub struct Node {
    pub(super) id: NodeId,
    pub(super) base_pfn: u64,
    pub(super) arena: Arena,
    pub(super) buddy: Mutex<Buddy>,
    /// Per page of the whole reserve; the first `nr_pages` are the node's pages, the rest
    /// zero bytes the host has not backed.
    pub(super) memmap: Vec<PageMeta>,
    /// Pages the node manages now (its committed arena); grows, never shrinks.
    pub(super) nr_pages: AtomicUsize,
    /// Serializes growth (`online_pages`).
    pub(super) grow_lock: Mutex<()>,
    /// Per page: distance to the head page (`compound_head`); 0 for heads and free pages.
    /// Kept apart from the memmap so that allocating or freeing a 2 MiB folio touches 2 KiB
    /// of metadata, not every tail `PageMeta`.
    pub(super) head_off: Vec<AtomicU32>,
    /// Per page `PG_hwpoison`, as a bitmap.
    pub(super) hwpoison: Vec<AtomicU64>,
    /// Per page: the page is the head of an allocated folio.
    pub(super) live_head: Vec<AtomicU64>,
    /// The per-node page counters.
    pub(super) stats: super::vmstat::NodeStats,
}

impl Node {
    /// Node id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// The address range of the node's arena, `(first address, bytes)`: where its frames
    /// are, the reserve it may grow into included (the backend API: the live backend
    /// registers it with userfaultfd and moves pages in and out of it). Only addresses are handed out; the bytes are reached through
    /// [`Memory`]'s bounds-checked accessors.
    pub fn arena_range(&self) -> (usize, usize) {
        (self.arena.base_addr(), self.arena.reserved_bytes())
    }
    /// The most base pages the node can grow to (its reserve); equal to
    /// [`Node::nr_pages`] for a node of fixed size.
    pub fn max_pages(&self) -> usize {
        self.memmap.len()
    }
    /// How (and whether) the node's arena was bound to a host NUMA node.
    pub fn binding(&self) -> &NumaBinding {
        self.arena.binding()
    }
    /// The node's first pfn: frame `first_pfn + i` sits at byte `i * PAGE_SIZE` of the
    /// arena (the backend API, with [`Node::arena_range`]).
    pub fn first_pfn(&self) -> Pfn {
        Pfn(self.base_pfn)
    }
    /// Base pages managed.
    pub fn nr_pages(&self) -> usize {
        self.nr_pages.load(Ordering::Acquire)
    }
    /// Free base pages.
    pub fn nr_free_pages(&self) -> usize {
        lock(&self.buddy).nr_free_pages()
    }
}

impl Memory {
    #[inline]
    pub(in crate::mm) fn node_index_of(&self, pfn: Pfn) -> Option<usize> {
        let i = (pfn.0 >> NODE_PFN_SHIFT) as usize;
        let n = self.nodes.get(i)?;
        ((pfn.0 - n.base_pfn) < n.nr_pages() as u64).then_some(i)
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

    pub(in crate::mm) fn arena_off(&self, pfn: Pfn) -> (&Arena, usize) {
        let n = &self.nodes[self.node_index_of(pfn).expect("pfn outside every node")];
        (&n.arena, (pfn.0 - n.base_pfn) as usize * PAGE_SIZE)
    }

    /// The address of frame `pfn` in its node's arena (the backend API: where a frame's
    /// page sits while no program maps it). Panics on an invalid pfn.
    pub fn frame_addr(&self, pfn: Pfn) -> usize {
        let (a, off) = self.arena_off(pfn);
        a.base_addr() + off
    }

    pub(in crate::mm) fn node_idx(&self, pfn: Pfn) -> (&Node, usize) {
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

    pub(in crate::mm) fn set_live_head(&self, pfn: Pfn, on: bool) {
        let (n, i) = self.node_idx(pfn);
        let bit = 1u64 << (i % 64);
        if on {
            n.live_head[i / 64].fetch_or(bit, Ordering::AcqRel);
        } else {
            n.live_head[i / 64].fetch_and(!bit, Ordering::AcqRel);
        }
    }

    pub(in crate::mm) fn is_live_head(&self, pfn: Pfn) -> bool {
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
}
