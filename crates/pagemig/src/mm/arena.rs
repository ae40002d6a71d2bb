//! A node's real memory: one anonymous mapping, pre-faulted, advised for transparent huge
//! pages and — on a host with more than one NUMA node — bound to the matching node with
//! `mbind(2)`. The analogue of a node's `struct pglist_data` memory range.
//!
//! This is one of the few `unsafe` modules. Its contract, which every `// SAFETY:` in
//! this module relies on:
//!
//! # Invariants
//! `base` points to a private anonymous read/write mapping of exactly `len_bytes` bytes,
//! 2 MiB aligned, created in [`Arena::new`] and unmapped only in `Drop`; so any
//! `[base + off, base + off + n)` with `off + n <= len_bytes` is valid for reads and
//! writes for the whole life of the `Arena`.
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
    len_bytes: usize,
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
    pub fn new(len_bytes: usize, host_node: u32) -> io::Result<Arena> {
        let len_bytes = len_bytes.div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
        if len_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "arena of zero bytes",
            ));
        }
        let base = crate::sys::mmap_aligned(len_bytes, ARENA_ALIGN)?;
        // SAFETY: [base, base+len_bytes) is our mapping; madvise only changes advice.
        unsafe {
            libc::madvise(base as *mut libc::c_void, len_bytes, libc::MADV_HUGEPAGE);
        }
        let hosts = host_numa_nodes();
        let unmap = |e: io::Error| {
            // SAFETY: unmapping the mapping we own before returning the error.
            unsafe { libc::munmap(base as *mut libc::c_void, len_bytes) };
            e
        };
        let binding = if hosts.len() <= 1 {
            NumaBinding::SingleNodeHost
        } else if hosts.contains(&host_node) {
            // An arena larger than its node cannot be bound there: with MPOL_BIND the
            // pre-fault below would end in the OOM killer, not in an error.
            let total = host_topology()
                .into_iter()
                .find(|n| n.id == host_node)
                .map_or(0, |n| n.mem_total_bytes);
            if total > 0 && len_bytes as u64 > total {
                return Err(unmap(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "host node {host_node} has {} MiB of memory in all; an arena of {} MiB \
                         bound to it does not fit",
                        total >> 20,
                        len_bytes >> 20
                    ),
                )));
            }
            if let Err(e) = crate::sys::mbind(
                base as usize,
                len_bytes,
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
            libc::madvise(base as *mut libc::c_void, len_bytes, libc::MADV_DONTFORK);
        }
        // Pre-fault: first touch is very slow on the reference machine.
        // SAFETY: as above; MADV_POPULATE_WRITE faults pages in without changing content.
        let rc = unsafe {
            libc::madvise(
                base as *mut libc::c_void,
                len_bytes,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                // ENOMEM (the bound node is full), EFAULT, ...: no arena.
                return Err(unmap(e));
            }
            // Kernels before 5.14 lack MADV_POPULATE_WRITE: touch one byte per page.
            for off in (0..len_bytes).step_by(4096) {
                // SAFETY: `off < len_bytes`, inside the mapping (invariant).
                unsafe { base.add(off).write_volatile(0) };
            }
        }
        Ok(Arena {
            base,
            len_bytes,
            binding,
        })
    }

    /// First address of the mapping (the live backend registers it with userfaultfd and
    /// moves pages in and out of it).
    pub fn base_addr(&self) -> usize {
        self.base as usize
    }

    /// Size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    /// How (and whether) the arena was bound to a host NUMA node.
    pub fn binding(&self) -> &NumaBinding {
        &self.binding
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off.checked_add(n).is_some_and(|end| end <= self.len_bytes),
            "arena access out of bounds: {off}+{n} > {}",
            self.len_bytes
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
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len_bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
