//! A node's real memory: one anonymous mapping, pre-faulted, advised for transparent huge
//! pages and — on a host with more than one NUMA node — bound to the matching node with
//! `mbind(2)`. The analogue of a node's `struct pglist_data` memory range.
//!
//! An arena may reserve more address space than it commits ([`Arena::with_reserve`]): the
//! reserve is mapped `MAP_NORESERVE` and costs nothing until [`Arena::commit_to`]
//! pre-faults the next part of it, the way memory hotplug onlines a section of a node.
//!
//! This is one of the few `unsafe` modules. Its contract, which every `// SAFETY:` in
//! this module relies on:
//!
//! # Invariants
//! `base` points to a private anonymous read/write mapping of exactly `reserved` bytes,
//! 2 MiB aligned, created in [`Arena::with_reserve`] and unmapped only in `Drop`; so any
//! `[base + off, base + off + n)` with `off + n <= reserved` is valid for reads and
//! writes for the whole life of the `Arena`. Accesses are checked against the committed
//! length (`committed <= reserved`, which only grows), the part that is pre-faulted.
//!
//! # Concurrency
//! The arena is memory shared by every thread of the model and by the copy engines (the
//! "hardware" of the model: DMA channels, copy threads), exactly as guest memory is in
//! `vm-memory`, whose volatile accessors are the model here. No Rust reference (`&[u8]`,
//! `&mut [u8]`) to its bytes is ever made. Byte accesses from safe code ([`Arena::read`],
//! [`Arena::write`], [`Arena::checksum`]) are volatile, word by word where aligned: two
//! threads that race on the same bytes read unspecified values (torn at word granularity at
//! worst), which the migration protocol's locks and migration entries exist to prevent, but
//! the compiler may not assume the bytes unchanged or elide an access. The bulk copy
//! ([`Arena::copy_from`]) uses the copy primitives, whose contract
//! ([`crate::copy::copy_bytes`]) states the same about concurrent writers. The module is
//! private to the memory model: only [`super::Memory`]'s bounds-checked accessors reach it.

#![allow(
    unsafe_code,
    reason = "raw memory and system calls, behind the contracts above"
)]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::numa::{host_numa_nodes, host_topology};

/// 2 MiB: the alignment of every arena (a PMD).
pub const ARENA_ALIGN: usize = 2 << 20;

/// What happened to the NUMA binding of an arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumaBinding {
    /// The host has a single NUMA node: binding skipped.
    SingleNodeHost,
    /// Bound with `MPOL_BIND` to this host node (any node number, 64 and up included).
    Bound(u32),
    /// The host has several nodes but this one does not exist there: not bound.
    NoSuchHostNode(u32),
}

/// One node's memory arena.
#[derive(Debug)]
pub struct Arena {
    base: *mut u8,
    /// Bytes committed (pre-faulted); only grows, under the node's grow lock.
    committed: AtomicUsize,
    /// Bytes mapped.
    reserved: usize,
    binding: NumaBinding,
}

// SAFETY: the arena is memory owned by this value (invariant); the pointer is never
// reallocated, and no thread-bound state is attached to it.
unsafe impl Send for Arena {}
// SAFETY: `&Arena` never hands out a reference into the mapping: every access is a
// volatile or primitive copy through raw pointers, bounds-checked (see "Concurrency").
unsafe impl Sync for Arena {}

/// Copies `n` bytes from `src` to `dst` with volatile accesses: 8-byte words where both are
/// 8-aligned, bytes elsewhere.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes, and the ranges must not
/// overlap.
unsafe fn copy_volatile(dst: *mut u8, src: *const u8, n: usize) {
    let mut i = 0;
    if (dst as usize) % 8 == (src as usize) % 8 {
        while i < n && (src as usize + i) % 8 != 0 {
            // SAFETY: `i < n`, inside both ranges (contract).
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n`, inside both ranges, and both addresses are 8-aligned
            // (equal alignment, advanced to a word boundary above).
            unsafe {
                (dst.add(i) as *mut u64).write_volatile((src.add(i) as *const u64).read_volatile())
            };
            i += 8;
        }
    }
    while i < n {
        // SAFETY: `i < n`, inside both ranges (contract).
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

impl Arena {
    /// Maps `len_bytes` (rounded up to 2 MiB), advises THP, binds to `host_node` when the
    /// host has more than one NUMA node, keeps it out of forked children
    /// (`MADV_DONTFORK`) and pre-faults every page. An arena larger than its host node, or
    /// one the node cannot fill (`ENOMEM` from the pre-fault), is an error.
    #[cfg(test)]
    pub fn new(len_bytes: usize, host_node: u32) -> io::Result<Arena> {
        Arena::with_reserve(len_bytes, len_bytes, host_node, true)
    }

    /// Like [`Arena::new`] for `commit_bytes`, with address space reserved up to
    /// `reserve_bytes` (both rounded up to 2 MiB) for [`Arena::commit_to`]. A bound arena's
    /// reserve is cut to its host node's memory: committing past it would end in the OOM
    /// killer, not in an error. `thp`: advise `MADV_HUGEPAGE` (else `MADV_NOHUGEPAGE`).
    pub fn with_reserve(
        commit_bytes: usize,
        reserve_bytes: usize,
        host_node: u32,
        thp: bool,
    ) -> io::Result<Arena> {
        let commit = commit_bytes.div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
        let mut reserved = reserve_bytes.max(commit_bytes).div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
        if commit == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "arena of zero bytes",
            ));
        }
        let hosts = host_numa_nodes();
        let host_total = if hosts.len() > 1 && hosts.contains(&host_node) {
            host_topology()
                .into_iter()
                .find(|n| n.id == host_node)
                .map_or(0, |n| n.mem_total_bytes)
        } else {
            0
        };
        if host_total > 0 {
            // An arena larger than its node cannot be bound there: with MPOL_BIND the
            // pre-fault below would end in the OOM killer, not in an error.
            if commit as u64 > host_total {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "host node {host_node} has {} MiB of memory in all; an arena of {} MiB \
                         bound to it does not fit",
                        host_total >> 20,
                        commit >> 20
                    ),
                ));
            }
            let cap = (host_total as usize / ARENA_ALIGN * ARENA_ALIGN).max(commit);
            reserved = reserved.min(cap);
        }
        let base = crate::sys::mmap_aligned(reserved, ARENA_ALIGN)?;
        // SAFETY: [base, base+reserved) is our mapping; madvise only changes advice.
        unsafe {
            let advice = if thp {
                libc::MADV_HUGEPAGE
            } else {
                libc::MADV_NOHUGEPAGE
            };
            libc::madvise(base as *mut libc::c_void, reserved, advice);
        }
        let unmap = |e: io::Error| {
            // SAFETY: unmapping the mapping we own before returning the error.
            unsafe { libc::munmap(base as *mut libc::c_void, reserved) };
            e
        };
        let binding = if hosts.len() <= 1 {
            NumaBinding::SingleNodeHost
        } else if hosts.contains(&host_node) {
            if let Err(e) = crate::sys::mbind(
                base as usize,
                reserved,
                crate::sys::MemPolicy::Bind(host_node),
            ) {
                return Err(unmap(e));
            }
            NumaBinding::Bound(host_node)
        } else {
            NumaBinding::NoSuchHostNode(host_node)
        };
        // The frames are the pools of the live backend: a forked child must not share
        // them copy-on-write (UFFDIO_MOVE refuses pages that are not exclusive).
        // SAFETY: as above; madvise only changes how fork treats our mapping.
        unsafe {
            libc::madvise(base as *mut libc::c_void, reserved, libc::MADV_DONTFORK);
        }
        let a = Arena {
            base,
            committed: AtomicUsize::new(0),
            reserved,
            binding,
        };
        // On error the arena drops and unmaps.
        a.commit_to(commit)?;
        Ok(a)
    }

    /// Pre-faults the reserve up to `len_bytes` (a multiple of 2 MiB, at most
    /// [`Arena::reserved_bytes`]) and makes it the committed length. The caller serializes
    /// calls (the node's grow lock). `ENOMEM` — the host or the bound node is full — leaves
    /// the committed length as it was.
    pub fn commit_to(&self, len_bytes: usize) -> io::Result<()> {
        let from = self.committed.load(Ordering::Acquire);
        if len_bytes <= from {
            return Ok(());
        }
        if len_bytes > self.reserved || len_bytes % ARENA_ALIGN != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "commit of {len_bytes} bytes: not a multiple of 2 MiB within the {} reserved",
                    self.reserved
                ),
            ));
        }
        // Pre-fault: first touch is very slow on the reference machine.
        // SAFETY: [from, len_bytes) is inside the mapping (checked above, invariant);
        // MADV_POPULATE_WRITE faults pages in without changing content.
        let rc = unsafe {
            libc::madvise(
                self.base.add(from) as *mut libc::c_void,
                len_bytes - from,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                // ENOMEM (the bound node is full), EFAULT, ...: not committed.
                return Err(e);
            }
            // Kernels before 5.14 lack MADV_POPULATE_WRITE: touch one byte per page.
            for off in (from..len_bytes).step_by(4096) {
                // SAFETY: `off < len_bytes <= reserved`, inside the mapping (invariant).
                unsafe { self.base.add(off).write_volatile(0) };
            }
        }
        self.committed.store(len_bytes, Ordering::Release);
        Ok(())
    }

    /// First address of the mapping (the live backend registers it with userfaultfd and
    /// moves pages in and out of it).
    pub fn base_addr(&self) -> usize {
        self.base as usize
    }

    /// Bytes committed: the part of the arena its node's frames use now.
    pub fn len_bytes(&self) -> usize {
        self.committed.load(Ordering::Acquire)
    }

    /// Bytes of address space reserved (the most the arena can commit).
    pub fn reserved_bytes(&self) -> usize {
        self.reserved
    }

    /// How (and whether) the arena was bound to a host NUMA node.
    pub fn binding(&self) -> &NumaBinding {
        &self.binding
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off.checked_add(n)
                .is_some_and(|end| end <= self.len_bytes()),
            "arena access out of bounds: {off}+{n} > {}",
            self.len_bytes()
        );
    }

    /// Copies `buf.len()` bytes at `off` into `buf` (volatile reads).
    pub fn read(&self, off: usize, buf: &mut [u8]) {
        self.check(off, buf.len());
        // SAFETY: in bounds (checked against the invariant); `buf` is a distinct Rust
        // allocation, so the ranges do not overlap.
        unsafe { copy_volatile(buf.as_mut_ptr(), self.base.add(off), buf.len()) };
    }

    /// Copies `buf` into the arena at `off` (volatile writes).
    pub fn write(&self, off: usize, buf: &[u8]) {
        self.check(off, buf.len());
        // SAFETY: in bounds (checked against the invariant); `buf` is a distinct Rust
        // allocation, so the ranges do not overlap.
        unsafe { copy_volatile(self.base.add(off), buf.as_ptr(), buf.len()) };
    }

    /// Copies `n` bytes from `src` at `src_off` into `self` at `dst_off` with the best copy
    /// primitive. The two ranges must not overlap when `src` is `self`.
    pub fn copy_from(&self, dst_off: usize, src: &Arena, src_off: usize, n: usize) {
        self.check(dst_off, n);
        src.check(src_off, n);
        if std::ptr::eq(self, src) {
            assert!(
                dst_off + n <= src_off || src_off + n <= dst_off,
                "overlapping copy inside one arena"
            );
        }
        // SAFETY: both ranges are in bounds of live arenas (invariant) and disjoint (checked
        // above for the same arena; distinct arenas are distinct mappings).
        unsafe { crate::copy::copy_bytes(self.base.add(dst_off), src.base.add(src_off), n) };
    }

    /// The project's checksum ([`crate::checksum`]) of `n` bytes at `off`, read 8 bytes at
    /// a time (volatile).
    pub fn checksum(&self, off: usize, n: usize) -> u64 {
        self.check(off, n);
        // Words are read at `off + 8k`: all aligned or none (decided once, not per word).
        let aligned = (self.base as usize + off) % 8 == 0;
        let word = |i: usize| {
            // SAFETY: callers pass `i + 8 <= n`, and `off + n` is in bounds (checked above),
            // so the pointer stays inside the mapping.
            let p = unsafe { self.base.add(off + i) };
            if aligned {
                // SAFETY: in bounds (above) and 8-aligned (`aligned`, and `i` is a multiple
                // of 8); a little-endian host
                // reads the same value as `from_le_bytes` of the bytes.
                u64::from_le(unsafe { (p as *const u64).read_volatile() })
            } else {
                let mut w = [0u8; 8];
                // SAFETY: in bounds (above); `w` is a distinct local.
                unsafe { copy_volatile(w.as_mut_ptr(), p, 8) };
                u64::from_le_bytes(w)
            }
        };
        let mut s = crate::checksum::Fnv4::new();
        let mut i = 0;
        while i + 32 <= n {
            s.block([word(i), word(i + 8), word(i + 16), word(i + 24)]);
            i += 32;
        }
        let words: Vec<u64> = (i..n.saturating_sub(7)).step_by(8).map(word).collect();
        i += 8 * words.len();
        let mut tail = [0u8; 8];
        self.read(off + i, &mut tail[..n - i]);
        s.finish(words, &tail[..n - i])
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: we own the mapping (invariant) and nothing can use it after drop.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.reserved) };
    }
}

/// Types whose all-zero bytes are a valid value.
///
/// # Safety
/// An implementor must be valid and meaningful when every byte of it is zero.
pub(super) unsafe trait ZeroValid {}

// SAFETY: the std atomics of integers have the layout of their integers; zero is a value.
unsafe impl ZeroValid for std::sync::atomic::AtomicU32 {}
// SAFETY: as above.
unsafe impl ZeroValid for std::sync::atomic::AtomicU64 {}
// SAFETY: a `PageMeta` is only std atomics of integers (outside loom, whose atomics are
// not plain integers); all zero is a page with no flags, order 0 and no references.
#[cfg(not(loom))]
unsafe impl ZeroValid for super::PageMeta {}

/// A vector of `n` zeroed values from `alloc_zeroed`: for a node's per-page metadata over
/// its whole reserve, whose untouched pages the host does not back (a large zeroed
/// allocation is a fresh anonymous mapping).
pub(super) fn zeroed_vec<T: ZeroValid>(n: usize) -> Vec<T> {
    if n == 0 {
        return Vec::new();
    }
    assert!(std::mem::size_of::<T>() > 0, "zero-sized metadata");
    let layout = std::alloc::Layout::array::<T>(n).expect("metadata size overflows");
    // SAFETY: the layout has a non-zero size (checked above).
    let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `p` was allocated by the global allocator with the layout of `[T; n]`, which
    // is the layout a `Vec<T>` of capacity `n` frees with; its `n` values are zero bytes,
    // valid values of `T` (`ZeroValid`).
    unsafe { Vec::from_raw_parts(p, n, n) }
}

/// A node's memmap over `n` pages, all zero bytes (not yet pages of the node).
#[cfg(not(loom))]
pub(super) fn zeroed_memmap(n: usize) -> Vec<super::PageMeta> {
    zeroed_vec(n)
}

/// Under loom a `PageMeta`'s atomics are loom's: made one by one.
#[cfg(loom)]
pub(super) fn zeroed_memmap(n: usize) -> Vec<super::PageMeta> {
    (0..n).map(|_| super::PageMeta::zeroed()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_commits_in_steps_and_checks_against_the_committed_part() {
        let a = Arena::with_reserve(2 << 20, 8 << 20, 0, true).unwrap();
        assert_eq!((a.len_bytes(), a.reserved_bytes()), (2 << 20, 8 << 20));
        a.commit_to(6 << 20).unwrap();
        a.write((6 << 20) - 3, b"xyz");
        let mut out = [0u8; 3];
        a.read((6 << 20) - 3, &mut out);
        assert_eq!(&out, b"xyz");
        assert!(a.commit_to(10 << 20).is_err(), "past the reserve");
        assert!(a.commit_to(7 << 20).is_err(), "not a multiple of 2 MiB");
        assert_eq!(a.len_bytes(), 6 << 20);
        let v: Vec<std::sync::atomic::AtomicU64> = zeroed_vec(1 << 20);
        assert!(v
            .iter()
            .step_by(4096)
            .all(|w| w.load(Ordering::Relaxed) == 0));
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn an_access_past_the_committed_part_panics() {
        let a = Arena::with_reserve(2 << 20, 8 << 20, 0, true).unwrap();
        a.write(2 << 20, b"x");
    }

    #[test]
    fn checksum_sees_each_word_and_its_place() {
        let a = Arena::new(2 << 20, 0).unwrap();
        let base = a.checksum(0, 4096 + 13);
        // Any one changed byte, in the lanes, in the 8-byte tail or in the byte tail.
        for off in [0, 7, 8, 31, 32, 2047, 4095, 4096, 4100, 4108] {
            let mut b = [0u8; 1];
            a.read(off, &mut b);
            a.write(off, &[b[0] ^ 0x10]);
            assert_ne!(a.checksum(0, 4096 + 13), base, "byte {off}");
            a.write(off, &b);
        }
        assert_eq!(a.checksum(0, 4096 + 13), base);
        // Two different words swapped between lanes.
        a.write(64, &1u64.to_le_bytes());
        a.write(72, &2u64.to_le_bytes());
        let one = a.checksum(0, 4096);
        a.write(64, &2u64.to_le_bytes());
        a.write(72, &1u64.to_le_bytes());
        assert_ne!(a.checksum(0, 4096), one);
    }

    #[test]
    fn arena_is_aligned_prefaulted_and_copies() {
        let a = Arena::new(3 << 20, 0).unwrap();
        assert_eq!(a.len_bytes(), 4 << 20);
        assert_eq!(a.base as usize % ARENA_ALIGN, 0);
        if host_numa_nodes().len() <= 1 {
            assert_eq!(a.binding(), &NumaBinding::SingleNodeHost);
        }
        a.write(4096, b"abc");
        let b = Arena::new(2 << 20, 0).unwrap();
        b.copy_from(0, &a, 0, 8192);
        let mut out = [0u8; 3];
        b.read(4096, &mut out);
        assert_eq!(&out, b"abc");
        assert_eq!(a.checksum(0, 8192), b.checksum(0, 8192));
        // The arena's checksum is the project's one checksum of the same bytes.
        let mut bytes = vec![0u8; 4096 + 13];
        a.read(0, &mut bytes);
        assert_eq!(
            a.checksum(0, 4096 + 13),
            crate::checksum::checksum_bytes(&bytes)
        );
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn out_of_bounds_access_panics_instead_of_corrupting() {
        let a = Arena::new(2 << 20, 0).unwrap();
        a.write((2 << 20) - 1, b"xy");
    }
}
