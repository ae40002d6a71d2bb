//! The options of the live backend ([`LiveConfig`]) and of a region ([`RegionConfig`]).

#![forbid(unsafe_code)]

use pagemig::mm::NodeId;

/// Options of [`Live::new`](crate::Live::new).
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
    /// Interleave first touches over every node, folio by folio (`MPOL_INTERLEAVE`): the
    /// folio at index `i` of the region is served from node `i % nodes`, else, when that
    /// pool is empty, from the next. `placement` is then unused.
    pub interleave: bool,
    /// Fault-around (beyond the kernel, which has it for file pages only,
    /// `fault_around_bytes`): a first touch also populates up to this many folios after
    /// the faulting one that were never touched, in the same `UFFDIO_MOVE`, so a program
    /// that fills new memory page by page takes one fault in that many. 1 (the default):
    /// the faulting folio alone, as the kernel does for anonymous memory.
    pub fault_around: usize,
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
            interleave: false,
            fault_around: 1,
            batch_moves: true,
        }
    }
}
