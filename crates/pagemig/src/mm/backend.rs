//! The hardware side of an address space. In the built-in backend a PTE change *is* the
//! mapping change: accessors walk the same atomic table. A space with a [`SpaceBackend`]
//! also has real pages behind it (the live backend: a program's memory moved with
//! `UFFDIO_MOVE`), and the core tells the backend when a folio leaves its mapping
//! (`try_to_migrate`) and when it is mapped again (`remove_migration_ptes`), so that
//! `migrate_pages_batch` stays one function for both.
//!
//! # The backend API
//! What the core exports for a backend crate (`pagemig-live`), the way a kernel module sees
//! only exported symbols:
//!
//! * [`SpaceBackend`] (here) and [`FailedUnmap`], which the backend implements;
//! * [`Memory::new_space_with_backend`](super::Memory::new_space_with_backend), a space
//!   whose PTE changes the backend is told of;
//! * [`AddressSpace::map_new_with`](super::AddressSpace::map_new_with), a first-touch
//!   mapping with a hook under the page-table lock;
//! * [`Memory::frame_addr`](super::Memory::frame_addr) and
//!   [`Node::arena_range`](super::Node::arena_range): where frames are, as addresses (a
//!   backend moves pages in and out of them with its own system calls; it never reads the
//!   bytes through the core).
//!
//! Everything else a backend uses is the public API any caller has (`migrate_pages`,
//! isolation, PTE queries).
//!
//! Deferral mirrors the kernel's deferred TLB flush: in `MIGRATE_ASYNC` the unmaps of a
//! batch are queued and done together by [`TlbBatch::flush`](super::TlbBatch::flush)
//! (`try_to_unmap_flush`), and remaps are queued and done together at the end of the
//! batch, so a run of contiguous pages costs one kernel call and one real TLB shootdown.

use super::{Pfn, VirtAddr};
use crate::Errno;

/// A range of a space's pages whose unmap failed in the backend (still mapped there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedUnmap {
    /// First address.
    pub vaddr: VirtAddr,
    /// Frame of the first page.
    pub pfn: Pfn,
    /// Base pages.
    pub nr: usize,
}

/// The real pages behind an address space.
pub trait SpaceBackend: Send + Sync {
    /// `try_to_migrate`'s hardware part: the `nr` pages at `vaddr`, backed by the frames
    /// from `pfn`, now have migration entries; take them away from the program. Called under
    /// the space's page-table lock. With `defer = Some(batch)` the backend may queue the
    /// work until that batch's [`flush_unmaps`](Self::flush_unmaps). An error means the
    /// pages are still mapped.
    fn unmap(&self, vaddr: VirtAddr, pfn: Pfn, nr: usize, defer: Option<u64>) -> Result<(), Errno>;
    /// Performs the unmaps queued by TLB batch `batch` (each migrating thread has its own,
    /// like the kernel's per-task `tlbflush_unmap_batch`); returns those that failed (the
    /// pages are still mapped and the core restores their PTEs).
    fn flush_unmaps(&self, batch: u64) -> Vec<FailedUnmap>;
    /// `remove_migration_ptes`' hardware part: the pages at `vaddr` are mapped again, to the
    /// frames from `new` (`new == old` on undo). Called under the page-table lock; may be
    /// queued until [`flush_remaps`](Self::flush_remaps).
    fn remap(&self, vaddr: VirtAddr, old: Pfn, new: Pfn, nr: usize);
    /// Performs the queued remaps.
    fn flush_remaps(&self);
}
