//! The preload library of `pagemig run`: it puts an unmodified, dynamically linked
//! program's large anonymous memory in live regions, which pagemig migrates between nodes
//! while the program runs, steered by `pagemig ctl` over a Unix socket.
//!
//! Loaded with `LD_PRELOAD` (which `pagemig run` sets), it interposes the malloc family and
//! the mapping calls. An allocation or a private anonymous read-write mapping of at least
//! the threshold becomes a region (a [`pagemig_live::LiveRegion`] of its own); everything
//! else goes to the next allocator — the program's own (jemalloc in redis) or glibc's — or
//! to the kernel. Its modules, one concept each:
//!
//! * `interpose` — the exported C symbols, the constructor, the fork handlers and the raw
//!   system calls (the crate's only `unsafe` module);
//! * `tier` — the state (node pools, regions, engine) and what each call does to regions;
//! * `ctl` — the control thread and its socket.
//!
//! DESIGN.md ("Unmodified programs") says what each call does to a region, what happens at
//! `fork` and `exec`, and what a program may not do.

#![deny(unsafe_code)]

mod ctl;
mod interpose;
mod tier;

#[global_allocator]
static ALLOC: interpose::LibcAlloc = interpose::LibcAlloc;
