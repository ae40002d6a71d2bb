//! The live backend: a running program's own memory, migrated between nodes by the same
//! `migrate_pages()` core and copy engines, through userfaultfd.
//!
//! A [`LiveRegion`] is an anonymous mapping registered with a userfaultfd and handed to
//! the program as plain memory ([`LiveRegion::words`]). Every page of it is backed by a
//! frame of one of the [`Memory`](pagemig::mm::Memory)'s nodes: the node arenas are the
//! pools of pre-faulted frames, and a frame's arena slot is where its page sits whenever
//! the program does not map it. The core keeps a shadow page table of the region (an
//! [`AddressSpace`](pagemig::mm::AddressSpace) with a backend), and the backend makes each
//! of the core's PTE changes real:
//!
//! | core step | live backend |
//! |---|---|
//! | first touch (anonymous fault) | the fault handler allocates a frame on the placement node and `UFFDIO_MOVE`s its page from the arena slot into the program |
//! | `try_to_migrate` (migration entry) | `UFFDIO_MOVE` the page out of the program into its frame's arena slot; the program's next access faults and waits, like a kernel migration entry |
//! | deferred flush (`TTU_BATCH_FLUSH`, `try_to_unmap_flush`) | the unmaps of a batch are queued and done at the flush, one `UFFDIO_MOVE` (one kernel TLB shootdown) per run of contiguous pages |
//! | batch copy / CPU copy | unchanged: arena slot to arena slot, by the registered migrator |
//! | `remove_migration_ptes(src, dst)` | `UFFDIO_MOVE` the destination's page from its slot into the program, which wakes the waiting threads; queued and done per contiguous run at the end of the batch |
//! | undo (`remove_migration_ptes(src, src)`) | the source page moves back |
//! | free of the old frame | its page stays in its arena slot: the frame is back in its node's pool |
//!
//! The crate sees only what the core exports for backends — the
//! [`SpaceBackend`](pagemig::mm::SpaceBackend) trait,
//! [`Memory::new_space_with_backend`](pagemig::mm::Memory::new_space_with_backend) and the
//! frame addresses of [`pagemig::mm::backend`] — the way a kernel module sees only exported
//! symbols. Its modules, one concept each:
//!
//! * `config`, `error`, `counters` — the options, [`LiveError`], [`LiveCounts`];
//! * `handler` — the userfaultfd and its fault-handler thread ([`Live`]);
//! * `moves` — the `UFFDIO_MOVE` batching of a region's unmaps and remaps;
//! * `region` — [`LiveRegion`];
//! * `alloc` — [`LiveAlloc`], a `GlobalAlloc` that puts large allocations in regions;
//! * `move_pages` — the `do_pages_move()` analogue ([`LiveRegion::move_pages`]);
//! * [`control`] — the protocol between `pagemig ctl` and a program under `pagemig run`;
//! * [`kernel`] — the kernel's own `move_pages(2)` and a plain mapping, to compare against;
//! * `sys` — the raw userfaultfd ABI (crate-private; with `alloc`'s allocator the crate's only
//!   `unsafe` code outside the tests of `tests`, which need the internals and a raw write).
//!
//! See DESIGN.md ("The live backend") for what differs from a kernel migration.
//!
//! The raw mappings and the userfaultfd ABI cannot be reached from outside the crate, so no
//! caller can make a misaligned mapping and read its words:
//!
//! ```compile_fail
//! let m = pagemig_live::sys::Mapping::new(8192, 3, false);
//! ```
//!
//! The public mapping is aligned by construction:
//!
//! ```
//! let m = pagemig_live::kernel::AnonMapping::new(5, false).unwrap();
//! assert_eq!((m.addr() % 4096, m.len()), (0, 4096));
//! let t = pagemig_live::kernel::AnonMapping::new(5, true).unwrap();
//! assert_eq!((t.addr() % (2 << 20), t.len()), (0, 2 << 20));
//! t.words()[0].store(1, std::sync::atomic::Ordering::Relaxed);
//! ```

#![deny(unsafe_code)]

mod alloc;
mod config;
pub mod control;
mod counters;
mod error;
mod handler;
pub mod kernel;
mod move_pages;
mod moves;
mod region;
mod sys;
#[cfg(test)]
#[allow(unsafe_code)]
mod tests;

pub use alloc::LiveAlloc;
pub use config::{LiveConfig, RegionConfig};
pub use counters::LiveCounts;
pub use error::LiveError;
pub use handler::{probe_userfaultfd, Live, UffdProbe};
pub use move_pages::{MPOL_MF_MOVE, MPOL_MF_MOVE_ALL};
pub use region::LiveRegion;
pub use sys::{UFFD_FEATURE_MOVE, UFFD_FEATURE_THREAD_ID};
