//! The kernel's own page migration, for comparison with the live backend: `move_pages(2)`
//! on this process, `mlock(2)`, and a plain anonymous mapping ([`AnonMapping`]) that no
//! userfaultfd watches, whose pages the kernel moves itself.
//!
//! Everything here is safe: the raw calls are in the crate-private `sys` module.

#![forbid(unsafe_code)]

use std::io;
use std::sync::atomic::AtomicU64;

use pagemig::mm::PAGE_SIZE;

use crate::sys;

/// `move_pages(2)` on the calling process (`pid = 0`): `nodes = None` queries each page's
/// node. Returns the system call's value (pages not migrated) or its error; `status`
/// receives the node or a negative errno per page. Arrays of different lengths are
/// `EINVAL` (checked here, before the call).
pub fn move_pages(
    pages: &[usize],
    nodes: Option<&[i32]>,
    status: &mut [i32],
    flags: i32,
) -> io::Result<usize> {
    if pages.len() != status.len() || nodes.is_some_and(|n| n.len() != pages.len()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    sys::sys_move_pages(pages, nodes, status, flags)
}

/// `mlock(2)` (`on`) or `munlock(2)` of `[addr, addr + len)`. Locking changes residency,
/// never contents; an unmapped range fails with `ENOMEM`.
pub fn mlock_range(addr: usize, len: usize, on: bool) -> io::Result<()> {
    sys::mlock_range(addr, len, on)
}

/// A private anonymous mapping owned by its value, page-aligned (2 MiB-aligned and
/// advised for THP when asked), handed out as atomic words: what a program's heap looks
/// like to the kernel's `move_pages(2)`.
#[derive(Debug)]
pub struct AnonMapping {
    map: sys::Mapping,
}

impl AnonMapping {
    /// Maps `len_bytes` (rounded up to the alignment: 2 MiB with `thp`, else a page).
    pub fn new(len_bytes: usize, thp: bool) -> io::Result<AnonMapping> {
        let align = if thp { 2 << 20 } else { PAGE_SIZE };
        let len = len_bytes.max(1).div_ceil(align) * align;
        Ok(AnonMapping {
            map: sys::Mapping::new(len, align, thp)?,
        })
    }

    /// First address.
    pub fn addr(&self) -> usize {
        self.map.addr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The mapping as 64-bit words.
    pub fn words(&self) -> &[AtomicU64] {
        self.map.words()
    }
}
