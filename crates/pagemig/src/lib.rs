//! pagemig: the Linux page-migration pipeline (`mm/migrate.c` plus the batch-copy /
//! copy-offload series) re-implemented in user space, on real memory.
//!
//! The crate is laid out in Linux order:
//!
//! * [`mm`] — the memory model: nodes with real memory arenas and buddy allocators, the
//!   memmap ([`mm::PageMeta`]), folios, address spaces with page tables and reverse mapping,
//!   TLB shootdown and accessors.
//! * [`migrate`] — `migrate_pages()` / `migrate_pages_batch()`: unmap, one TLB flush, batch
//!   copy, move, undo.
//! * [`offload`] — the copy-offload framework: the [`offload::Migrator`] trait, the registry
//!   (one active migrator, reason mask, gate), the default copier
//!   [`offload::migrate_folios_mc_copy`].
//! * [`copy`] — the copy primitives (non-temporal stores, poison-aware copy).
//! * [`migrate_mode`] — `Mode` and `Reason`, the leaf every layer names.
//!
//! Dependencies point one way: `migrate` → `offload` → `mm` → `copy`, all of them naming
//! the leaves `migrate_mode`, `errno`, `sync`, `sys` and `trace` (the `mm_migrate_pages`
//! tracepoint). Backends with real pages behind an
//! address space (the `pagemig-live` crate) use only the backend API of [`mm::backend`].
//!
//! ```
//! use pagemig::mm::{Memory, MemoryConfig, NodeId, Order, VirtAddr};
//! use pagemig::migrate::{migrate_pages, alloc_on_node, Mode, Reason};
//!
//! let mm = Memory::new(MemoryConfig::with_nodes(2, 8 << 20)).unwrap();
//! let space = mm.new_space(VirtAddr(0x10_0000_0000), 4 << 20).unwrap();
//! let folio = space.map_anon(VirtAddr(0x10_0000_0000), NodeId(0), Order(0)).unwrap();
//! let acc = space.accessor();
//! acc.write(VirtAddr(0x10_0000_0000), b"hello").unwrap();
//!
//! mm.isolate_folio(folio).unwrap();
//! let mut list = vec![folio];
//! let res = migrate_pages(&mm, &mut list, &mut alloc_on_node(NodeId(1)), None,
//!                         Mode::Sync, Reason::Syscall).unwrap();
//! assert_eq!(res.rc, Ok(0));
//! assert!(list.is_empty());
//! let now = space.folio_at(VirtAddr(0x10_0000_0000)).unwrap();
//! assert_eq!(mm.folio(now).node(), NodeId(1));
//! let mut buf = [0u8; 5];
//! acc.read(VirtAddr(0x10_0000_0000), &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! ```

#![deny(unsafe_code)]

pub mod checksum;
pub mod copy;
pub mod errno;
pub mod migrate;
pub mod migrate_mode;
pub mod mm;
pub mod offload;
pub mod sync;
pub mod trace;

pub use errno::Errno;
pub mod sys;
