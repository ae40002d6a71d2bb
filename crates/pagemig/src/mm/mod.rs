//! The memory model — the built-in backend. Memory nodes (tiers) with real memory arenas
//! and buddy allocators, the memmap, address spaces with page tables and reverse mapping,
//! TLB shootdown and accessors.
//!
//! Linux analogues, one module each: `struct pglist_data` ([`Memory`] in `memory`, a
//! [`Node`] in `node`), `mm/page_alloc.c` ([`buddy`], `page_alloc`), `struct page`
//! ([`folio`]), `struct mm_struct` + page tables ([`page_table`]), `mm/rmap.c` ([`rmap`]),
//! `arch/x86/mm/tlb.c` ([`tlb`]), a file's `struct address_space` and the page cache
//! ([`filemap`]), buffer heads ([`buffer_head`]), `mm/memory-failure.c` (`memory_failure`), `/proc/vmstat`
//! (`vmstat`), `copy_mc_highpage` (`folio_copy`), the host's NUMA topology ([`numa`]) and a
//! CPU's loads and stores ([`access`]). The hardware side of a space with real pages is the
//! backend API ([`backend`]).
//!
//! A node's arena (its raw memory) is private to the memory model: the bytes are reached
//! only through [`Memory`]'s bounds-checked, poison-aware accessors, never by a reference
//! that two threads could race on.
//!
//! ```compile_fail
//! let a = pagemig::mm::arena::Arena::new(2 << 20, 0);
//! ```

pub mod access;
mod arena;
pub mod backend;
pub mod buddy;
pub mod buffer_head;
mod config;
mod error;
pub mod filemap;
pub mod folio;
mod folio_copy;
mod hooks;
mod huge_memory;
mod memory;
mod memory_failure;
mod node;
pub mod numa;
mod page_alloc;
pub mod page_table;
pub mod rmap;
pub mod tlb;
mod types;
mod vmstat;
pub mod waitbit;

pub use access::Accessor;
pub use arena::NumaBinding;
pub use backend::{FailedUnmap, SpaceBackend};
pub use buddy::{Buddy, BuddyError, MAX_PAGE_ORDER};
pub use buffer_head::Buffers;
pub use config::{MemoryConfig, NodeConfig};
pub use error::MmError;
pub use filemap::{File, FileKind, FolioPrivate, Mapping, MigrateFolioOp};
pub use folio::{migrate_info, pg, Folio, FolioRef, PageMeta};
pub use hooks::{FaultHooks, MigrateFolio, MovableOps};
pub use memory::{GrowHook, Memory, NR_MAX_BATCHED_MIGRATION};
pub use node::Node;
pub use page_table::{AddressSpace, Pte};
pub use tlb::{flush_tlb_space, TlbBatch};
pub use types::{
    NodeId, Order, Pfn, VirtAddr, HPAGE_PMD_NR, HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE,
};
pub use vmstat::{NodeStat, VmEventCounts, VmEvents};
