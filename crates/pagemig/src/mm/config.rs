//! [`MemoryConfig`] and [`NodeConfig`]: how many nodes, how large, bound to which host node.

#![forbid(unsafe_code)]

use std::fmt;

use super::{FaultHooks, MovableOps};
use crate::sync::Arc;

/// Configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Capacity; rounded up to 2 MiB. Pre-faulted when the node is made.
    pub capacity_bytes: usize,
    /// Grow on demand up to this many bytes (rounded up to 2 MiB): when an allocation
    /// finds the node full, the node commits more of its reserve, like memory hotplug
    /// onlining a section. `None` (the default): a fixed node of `capacity_bytes`.
    pub max_bytes: Option<usize>,
    /// Host NUMA node to bind to when the host has several (default: same id).
    pub host_node: Option<u32>,
    /// Advise the arena `MADV_NOHUGEPAGE` instead of `MADV_HUGEPAGE`: for pools that only
    /// ever hand out base pages. Moving base pages out of a THP-backed arena splits its
    /// huge pages, and since Linux 6.12 a split maps the zero-filled ones to the shared
    /// zero page, which the live backend must then make real pages again, page by page.
    pub no_huge_pages: bool,
}

/// Configuration of a [`Memory`](super::Memory).
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
                    max_bytes: None,
                    host_node: None,
                    no_huge_pages: false,
                })
                .collect(),
            hooks: None,
            movable_ops: None,
        }
    }
}
