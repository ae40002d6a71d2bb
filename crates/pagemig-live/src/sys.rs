//! The userfaultfd ABI that the live backend needs, and the few raw calls around it: the
//! crate's only `unsafe` module, and private to the crate (the public, safe faces of what
//! the tests and the CLI need are in [`crate::kernel`] and the re-exported feature bits).
//!
//! The system headers on the reference machine are from Linux 6.1 and the Rust crates
//! (`libc`, `nix`, `rustix`, `userfaultfd-sys`) stop before Linux 6.8, so none of them has
//! `UFFDIO_MOVE` or `UFFD_FEATURE_MOVE`. The constants and structure layouts below are
//! copied from `include/uapi/linux/userfaultfd.h` (Linux 6.8+, x86-64 ioctl encoding) and are
//! checked against the kernel at run time: `UFFDIO_API` reports the features and
//! `UFFDIO_REGISTER` reports the ioctls of each registered range.
//!
//! Contract of this module: every pointer handed to the kernel points at a live, correctly
//! sized `#[repr(C)]` value on the caller's stack; the only memory the kernel writes is that
//! value (and, for `UFFDIO_MOVE`, pages of mappings that the caller owns).

#![allow(
    unsafe_code,
    reason = "the userfaultfd ABI and raw system calls, behind the contract above"
)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use pagemig::mm::PAGE_SIZE;

/// `UFFD_API`.
pub const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY` (Linux 5.11): handle only faults from user mode; allowed without
/// privilege even when `vm.unprivileged_userfaultfd = 0`.
pub const UFFD_USER_MODE_ONLY: i32 = 1;

/// `UFFD_FEATURE_THREAD_ID`.
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// `UFFD_FEATURE_MOVE` (Linux 6.8): `UFFDIO_MOVE` on anonymous private memory.
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `UFFDIO_MOVE_MODE_DONTWAKE`.
pub const UFFDIO_MOVE_MODE_DONTWAKE: u64 = 1;

/// `_UFFDIO_MOVE`: its bit in the ioctl mask `UFFDIO_REGISTER` reports for a range.
pub const UFFDIO_NR_MOVE: u64 = 0x05;

/// `UFFD_EVENT_PAGEFAULT`.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    /// API version (`UFFD_API`).
    pub api: u64,
    /// In: features requested; out: features supported.
    pub features: u64,
    /// Out: ioctls supported on the fd.
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRegister {
    /// The range.
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// Out: ioctls available on the range (bit `_UFFDIO_*`).
    pub ioctls: u64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioZeropage {
    /// The range.
    pub range: UffdioRange,
    /// `UFFDIO_ZEROPAGE_MODE_*`.
    pub mode: u64,
    /// Out: bytes mapped, or a negative errno.
    pub zeropage: i64,
}

/// `struct uffdio_move`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioMove {
    /// Destination address.
    pub dst: u64,
    /// Source address.
    pub src: u64,
    /// Length in bytes.
    pub len: u64,
    /// `UFFDIO_MOVE_MODE_*`.
    pub mode: u64,
    /// Out: bytes moved, or a negative errno.
    pub moved: i64,
}

/// `struct uffd_msg` (32 bytes; only the page-fault member of the union is decoded).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    /// `arg.pagefault.flags`.
    pub pf_flags: u64,
    /// `arg.pagefault.address`.
    pub pf_address: u64,
    /// `arg.pagefault.feat.ptid` (with `UFFD_FEATURE_THREAD_ID`).
    pub pf_ptid: u32,
    reserved4: u32,
}

const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioMove>() == 40);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);

/// `UFFDIO_API`.
pub const UFFDIO_API: u64 = iowr(0x3F, std::mem::size_of::<UffdioApi>());
/// `UFFDIO_REGISTER`.
pub const UFFDIO_REGISTER: u64 = iowr(0x00, std::mem::size_of::<UffdioRegister>());
/// `UFFDIO_UNREGISTER`.
pub const UFFDIO_UNREGISTER: u64 = ior(0x01, std::mem::size_of::<UffdioRange>());
/// `UFFDIO_WAKE`.
pub const UFFDIO_WAKE: u64 = ior(0x02, std::mem::size_of::<UffdioRange>());
/// `UFFDIO_MOVE`.
pub const UFFDIO_MOVE: u64 = iowr(0x05, std::mem::size_of::<UffdioMove>());
/// `UFFDIO_ZEROPAGE`.
pub const UFFDIO_ZEROPAGE: u64 = iowr(0x04, std::mem::size_of::<UffdioZeropage>());

/// Creates a userfaultfd (`userfaultfd(2)`), close-on-exec and non-blocking.
pub fn userfaultfd(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes one integer argument and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Issues an ioctl whose argument is `*arg`.
fn ioctl<T>(fd: &OwnedFd, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, exclusively borrowed `#[repr(C)]` value of the size encoded
    // in `req` (every caller passes the matching struct).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `UFFDIO_API`: handshake, requesting `features`; returns what the kernel filled in.
pub fn api(fd: &OwnedFd, features: u64) -> io::Result<UffdioApi> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    ioctl(fd, UFFDIO_API, &mut a)?;
    Ok(a)
}

/// `UFFDIO_REGISTER` in missing mode; returns the ioctl mask of the range.
pub fn register_missing(fd: &OwnedFd, start: usize, len: usize) -> io::Result<u64> {
    let mut r = UffdioRegister {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    ioctl(fd, UFFDIO_REGISTER, &mut r)?;
    Ok(r.ioctls)
}

/// `UFFDIO_UNREGISTER`.
pub fn unregister(fd: &OwnedFd, start: usize, len: usize) -> io::Result<()> {
    let mut r = UffdioRange {
        start: start as u64,
        len: len as u64,
    };
    ioctl(fd, UFFDIO_UNREGISTER, &mut r)
}

/// `UFFDIO_WAKE`: wakes threads waiting on faults in the range.
pub fn wake(fd: &OwnedFd, start: usize, len: usize) -> io::Result<()> {
    let mut r = UffdioRange {
        start: start as u64,
        len: len as u64,
    };
    ioctl(fd, UFFDIO_WAKE, &mut r)
}

/// `UFFDIO_MOVE`: moves the pages of `[src, src+len)` to `[dst, dst+len)`. Returns the
/// bytes moved; on an error, the error and the bytes moved before it.
pub fn move_pages(
    fd: &OwnedFd,
    dst: usize,
    src: usize,
    len: usize,
    mode: u64,
) -> Result<usize, (io::Error, usize)> {
    let mut m = UffdioMove {
        dst: dst as u64,
        src: src as u64,
        len: len as u64,
        mode,
        moved: 0,
    };
    match ioctl(fd, UFFDIO_MOVE, &mut m) {
        Ok(()) => Ok(m.moved.max(0) as usize),
        Err(e) => Err((e, m.moved.max(0) as usize)),
    }
}

/// `UFFDIO_ZEROPAGE` without waking: maps the shared zero page at every missing page of
/// `[start, start+len)` (a registered range). A frame's arena slot left empty is backed
/// again this way; the first write to it gives it a page of its own, as for any zero page.
pub fn zeropage(fd: &OwnedFd, start: usize, len: usize) -> io::Result<()> {
    const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1;
    let mut z = UffdioZeropage {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: UFFDIO_ZEROPAGE_MODE_DONTWAKE,
        zeropage: 0,
    };
    ioctl(fd, UFFDIO_ZEROPAGE, &mut z)
}

/// Reads one message; `Ok(None)` when none is queued (the fd is non-blocking).
pub fn read_msg(fd: &OwnedFd) -> io::Result<Option<UffdMsg>> {
    let mut m = UffdMsg::default();
    // SAFETY: reads at most 32 bytes into `m`, a live 32-byte `#[repr(C)]` value.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            &mut m as *mut UffdMsg as *mut libc::c_void,
            std::mem::size_of::<UffdMsg>(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    if n as usize != std::mem::size_of::<UffdMsg>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short read from userfaultfd",
        ));
    }
    Ok(Some(m))
}

/// An eventfd used to stop the fault-handler thread.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signals an eventfd.
pub fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of `one`, a live u64.
    unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}

/// Waits until `a` or `b` is readable (or `timeout_ms` passes); returns (a ready, b ready).
pub fn poll2(a: &OwnedFd, b: &OwnedFd, timeout_ms: i32) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a live array of two pollfds and the count says two.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(e);
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

/// An anonymous private mapping owned by its value: the program's region.
///
/// # Invariants
/// `base` is the start of a private anonymous read/write mapping of exactly `len` bytes,
/// aligned to at least [`PAGE_SIZE`] (checked in [`Mapping::new`]), owned by this value and
/// unmapped only in `Drop`; `len` is a positive multiple of the page size.
#[derive(Debug)]
pub struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving the owner between threads
// moves no thread-bound state.
unsafe impl Send for Mapping {}
// SAFETY: the value itself is never written through `&self` in this module; the memory is
// accessed only through atomics (see `LiveRegion::words`) and by the kernel.
unsafe impl Sync for Mapping {}

/// `MADV_COLLAPSE` (Linux 6.1): collapse the range into PMD-mapped huge pages now.
const MADV_COLLAPSE: libc::c_int = 25;

/// `madvise(addr, len, MADV_COLLAPSE)`: makes a 2 MiB-aligned range whose 512 pages are
/// all present PMD-mapped again (the kernel copies them into a new huge page), so that a
/// huge page can move out of it, and back into it, whole.
pub fn collapse(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: madvise with MADV_COLLAPSE changes how the range is mapped, never what it
    // holds; an address range that is not ours fails with an error, not undefined behaviour.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, MADV_COLLAPSE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Mapping {
    /// Maps `len` bytes (a positive multiple of `align`), aligned to `align` (a power of two
    /// and a multiple of the page size), unpopulated, advised `MADV_HUGEPAGE` when `thp`.
    /// Anything else is rejected with `EINVAL`: [`Mapping::words`] relies on the base being
    /// 8-byte aligned and on the mapping covering every word it hands out.
    pub fn new(len: usize, align: usize, thp: bool) -> io::Result<Mapping> {
        if !align.is_power_of_two() || align % PAGE_SIZE != 0 || len == 0 || len % align != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a mapping of {len} bytes aligned to {align}: the alignment must be a \
                     power-of-two multiple of {PAGE_SIZE} and the length a positive multiple of it"
                ),
            ));
        }
        let base = pagemig::sys::mmap_aligned(len, align)? as usize;
        let advice = if thp {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: [base, base+len) is our mapping; madvise only changes advice.
        unsafe { libc::madvise(base as *mut libc::c_void, len, advice) };
        Ok(Mapping {
            base: base as *mut u8,
            len,
        })
    }

    /// First address.
    pub fn addr(&self) -> usize {
        self.base as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping as 64-bit atomic words. Accessing a word whose page is not present
    /// faults into the live backend's handler, which maps it (or waits for its migration).
    pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: `base` is page-aligned (so 8-aligned; invariant) and the mapping of `len` bytes lives
        // as long as `self`; `AtomicU64` has the layout of u64 and allows shared mutation, so
        // concurrent access from any thread (and page moves by the kernel) are sound.
        unsafe {
            std::slice::from_raw_parts(
                self.base as *const std::sync::atomic::AtomicU64,
                self.len / 8,
            )
        }
    }

    /// The first byte, for code that hands the memory to something outside Rust's
    /// aliasing rules (a C library, a system call).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    /// The mapping as bytes, exclusively: `&mut self` rules out every other access through
    /// this mapping (`words` borrows `self`), and the kernel's page moves never change
    /// what the memory holds.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping of `len` bytes lives as long as `self` and is readable and
        // writable; `&mut self` makes this the only Rust reference into it for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }
}

impl Mapping {
    /// Advises the whole mapping `MADV_HUGEPAGE` (`thp`) or `MADV_NOHUGEPAGE`, as
    /// [`Mapping::new`] does.
    pub fn advise_thp(&self, thp: bool) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let advice = if thp {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: [base, base+len) is our mapping; madvise with these advices only changes
        // whether the kernel may back it with huge pages, never what it holds.
        let r = unsafe { libc::madvise(self.base as *mut libc::c_void, self.len, advice) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Gives the mapping away: it is no longer this value's to unmap (a detached region's
    /// memory stays the program's). Afterwards the value covers no bytes.
    pub fn release(&mut self) {
        self.len = 0;
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: unmapping the mapping this value owns; nothing borrows it any more (the
        // slices from `words` borrow `self`).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// `move_pages(2)` on the calling process: `nodes = None` queries. Returns the syscall's
/// value (pages not migrated) or the error.
pub fn sys_move_pages(
    pages: &[usize],
    nodes: Option<&[i32]>,
    status: &mut [i32],
    flags: i32,
) -> io::Result<usize> {
    assert_eq!(pages.len(), status.len());
    if let Some(n) = nodes {
        assert_eq!(n.len(), pages.len());
    }
    let nodes_ptr = nodes.map_or(std::ptr::null(), |n| n.as_ptr());
    // SAFETY: the three arrays are live, of `pages.len()` entries each (asserted), and only
    // `status` is written; pid 0 is the calling process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            pages.len(),
            pages.as_ptr(),
            nodes_ptr,
            status.as_mut_ptr(),
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// `get_mempolicy(2)` with `MPOL_F_NODE | MPOL_F_ADDR`: the node of the page at `addr`
/// (faulting it in if it is not present, as the kernel does for this query).
pub fn get_mempolicy_node(addr: usize) -> io::Result<i32> {
    const MPOL_F_NODE: usize = 1 << 0;
    const MPOL_F_ADDR: usize = 1 << 1;
    let mut node: i32 = -1;
    // SAFETY: `node` is a live int the kernel writes; no nodemask is passed (NULL, maxnode
    // 0); `addr` is only looked up in the page tables, never dereferenced by us.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut i32,
            std::ptr::null_mut::<u64>(),
            0usize,
            addr,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(node)
}

/// `mlock(2)` (`on`) or `munlock(2)` of a range. Locking changes residency only, never
/// contents, so any range is sound to pass; an unmapped one fails with `ENOMEM`.
pub fn mlock_range(addr: usize, len: usize, on: bool) -> io::Result<()> {
    // SAFETY: mlock/munlock read no memory through the pointer; the kernel validates it.
    let rc = unsafe {
        if on {
            libc::mlock(addr as *const libc::c_void, len)
        } else {
            libc::munlock(addr as *const libc::c_void, len)
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_that_would_misalign_words_are_rejected() {
        for (len, align) in [
            (8192, 3),
            (8192, 4),
            (8192, 2048),
            (0, 4096),
            (4096 + 8, 4096),
            (4096, 8192),
        ] {
            let e = Mapping::new(len, align, false).expect_err("must be rejected");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{len} {align}");
        }
        let m = Mapping::new(2 << 20, 2 << 20, true).unwrap();
        assert_eq!(m.addr() % (2 << 20), 0);
        assert_eq!(m.words().len(), (2 << 20) / 8);
        m.words()[7].store(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(m.words()[7].load(std::sync::atomic::Ordering::Relaxed), 7);
    }
}
