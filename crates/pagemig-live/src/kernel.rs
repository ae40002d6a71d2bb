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

/// `CAP_SYS_NICE` (capability 23): whether the calling thread has it, the `capable()` check
/// `move_pages(2)` makes for `MPOL_MF_MOVE_ALL`: in the thread's effective set (read from
/// `/proc/thread-self/status`; capabilities are per thread) and in the initial user
/// namespace (whose `/proc/self/ns/user` inode is the kernel's constant `0xEFFFFFFD`).
/// False where either cannot be read.
pub fn has_cap_sys_nice() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    const PROC_USER_INIT_INO: &str = "user:[4026531837]";
    let init_ns =
        std::fs::read_link("/proc/self/ns/user").is_ok_and(|l| l.as_os_str() == PROC_USER_INIT_INO);
    init_ns
        && std::fs::read_to_string("/proc/thread-self/status")
            .ok()
            .and_then(|t| {
                let hex = t
                    .lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))?
                    .trim()
                    .to_string();
                u64::from_str_radix(&hex, 16).ok()
            })
            .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// The calling process's effective user id (the owner of `/proc/self`; 0 where it cannot
/// be read).
pub fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
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

/// `get_mempolicy(2)` with `MPOL_F_NODE | MPOL_F_ADDR`: the node the kernel has the page at
/// `addr` on. The kernel faults the page in if it is not present, so ask only about pages
/// that are (on a live region a missing page would be populated by its fault handler, or
/// fail with `EFAULT` under `UFFD_USER_MODE_ONLY`).
pub fn node_of_addr(addr: usize) -> io::Result<i32> {
    sys::get_mempolicy_node(addr)
}

/// One mapping of `/proc/self/numa_maps`: where the kernel has its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaMapsEntry {
    /// First address of the mapping (VMA).
    pub start: usize,
    /// Its memory policy as the kernel writes it (`default`, `bind:1`, `prefer:0`, ...).
    pub policy: String,
    /// Pages on each node (`N0=12 N1=3`), in base pages, as `(node, pages)` sorted by node.
    pub pages_by_node: Vec<(u32, u64)>,
    /// Whether the kernel counts it anonymous memory (`anon=`).
    pub anon: bool,
}

impl NumaMapsEntry {
    /// Pages the kernel has on `node` in this mapping.
    pub fn pages_on(&self, node: u32) -> u64 {
        self.pages_by_node
            .iter()
            .find(|(n, _)| *n == node)
            .map_or(0, |(_, p)| *p)
    }
}

/// Parses the text of a `numa_maps` file; lines it cannot read are skipped.
pub fn parse_numa_maps(text: &str) -> Vec<NumaMapsEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(start), Some(policy)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(start) = usize::from_str_radix(start, 16) else {
            continue;
        };
        let mut e = NumaMapsEntry {
            start,
            policy: policy.to_string(),
            pages_by_node: Vec::new(),
            anon: false,
        };
        for w in words {
            if w.starts_with("anon=") {
                e.anon = true;
            } else if let Some((n, p)) = w.strip_prefix('N').and_then(|r| r.split_once('=')) {
                if let (Ok(n), Ok(p)) = (n.parse(), p.parse()) {
                    e.pages_by_node.push((n, p));
                }
            }
        }
        e.pages_by_node.sort_unstable();
        out.push(e);
    }
    out
}

/// This process's `/proc/self/numa_maps`.
pub fn numa_maps() -> io::Result<Vec<NumaMapsEntry>> {
    Ok(parse_numa_maps(&std::fs::read_to_string(
        "/proc/self/numa_maps",
    )?))
}

/// `/proc/self/pagemap` bit 63: the page is present.
pub const PM_PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap` bit 56: the page is mapped exclusively (by this process alone; a page
/// shared copy-on-write with a forked child is not).
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;

/// `/proc/self/pagemap`, open: one 64-bit entry per page of this process (see
/// [`PM_PRESENT`], [`PM_MMAP_EXCLUSIVE`]). Without `CAP_SYS_ADMIN` the kernel zeroes the
/// frame numbers, not the flags.
#[derive(Debug)]
pub struct Pagemap(std::fs::File);

impl Pagemap {
    /// Opens this process's pagemap.
    pub fn open() -> io::Result<Pagemap> {
        Ok(Pagemap(std::fs::File::open("/proc/self/pagemap")?))
    }

    /// The entries of `n` consecutive pages from `addr` (one `pread`).
    pub fn range(&self, addr: usize, n: usize) -> io::Result<Vec<u64>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; n * 8];
        self.0
            .read_exact_at(&mut buf, (addr / PAGE_SIZE) as u64 * 8)?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// The entries of the pages of `addrs`, one `pread` per run of consecutive pages.
    pub fn entries(&self, addrs: &[usize]) -> io::Result<Vec<u64>> {
        let mut out = Vec::with_capacity(addrs.len());
        let mut i = 0;
        while i < addrs.len() {
            let first = addrs[i] / PAGE_SIZE;
            let mut j = i + 1;
            while j < addrs.len() && addrs[j] / PAGE_SIZE == first + (j - i) {
                j += 1;
            }
            out.extend(self.range(first * PAGE_SIZE, j - i)?);
            i = j;
        }
        Ok(out)
    }
}

/// The `/proc/self/pagemap` entries of `addrs` ([`Pagemap::entries`]).
pub fn pagemap(addrs: &[usize]) -> io::Result<Vec<u64>> {
    Pagemap::open()?.entries(addrs)
}

/// Whether a pagemap entry is a page mapped but not by this process alone: shared
/// copy-on-write with another process, or the shared zero page.
pub fn pm_shared(entry: u64) -> bool {
    entry & PM_PRESENT != 0 && entry & PM_MMAP_EXCLUSIVE == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numa_maps_lines_read_as_the_kernel_writes_them() {
        let t = "7f0000000000 bind:1 anon=512 dirty=512 active=0 N1=512 kernelpagesize_kB=4\n\
                 7f0000200000 default anon=3 dirty=3 N2=1 N0=2 kernelpagesize_kB=4\n\
                 55d0c0a00000 default file=/usr/bin/x mapped=1 mapmax=2 N0=1 kernelpagesize_kB=4\n\
                 garbage\n";
        let e = parse_numa_maps(t);
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].start, e[0].policy.as_str(), e[0].anon),
            (0x7f00_0000_0000, "bind:1", true)
        );
        assert_eq!(e[0].pages_on(1), 512);
        assert_eq!(e[1].pages_by_node, vec![(0, 2), (2, 1)]);
        assert!(!e[2].anon);
    }

    #[test]
    fn pagemap_says_which_pages_are_present_and_exclusive() {
        let m = AnonMapping::new(3 * PAGE_SIZE, false).unwrap();
        m.words()[0].store(1, std::sync::atomic::Ordering::Relaxed);
        m.words()[2 * PAGE_SIZE / 8].store(1, std::sync::atomic::Ordering::Relaxed);
        let a: Vec<usize> = (0..3).map(|i| m.addr() + i * PAGE_SIZE).collect();
        let pm = pagemap(&[a[0], a[1], a[2], a[0]]).unwrap();
        assert_eq!(pm[0] & PM_PRESENT, PM_PRESENT);
        assert_eq!(pm[1] & PM_PRESENT, 0);
        assert_eq!(pm[0] & PM_MMAP_EXCLUSIVE, PM_MMAP_EXCLUSIVE);
        assert_eq!(
            pm[2] & (PM_PRESENT | PM_MMAP_EXCLUSIVE),
            PM_PRESENT | PM_MMAP_EXCLUSIVE
        );
        assert_eq!(pm[3], pm[0]);
    }
}
