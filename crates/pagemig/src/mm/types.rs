//! The newtypes and sizes every layer names: `Pfn`, `VirtAddr`, `NodeId`, `Order`, and the
//! page and PMD sizes (`include/linux/mm_types.h`, `asm/page_types.h`).

#![forbid(unsafe_code)]

use std::fmt;

use super::MAX_PAGE_ORDER;

/// Base page size.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Order of a PMD-sized folio (2 MiB).
pub const HPAGE_PMD_ORDER: u8 = 9;
/// Base pages in a PMD-sized folio.
pub const HPAGE_PMD_NR: usize = 1 << HPAGE_PMD_ORDER;

/// A page frame number, global across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pfn(pub u64);

/// A virtual address in an [`AddressSpace`](super::AddressSpace).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtAddr(pub u64);

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

/// A memory node (tier) id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A folio order: `1 << order` base pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Order(pub u8);

impl Order {
    /// The order of a folio of `bytes` bytes, if it is a power-of-two multiple of the page
    /// size up to 2 MiB.
    pub fn from_bytes(bytes: usize) -> Option<Order> {
        if bytes < PAGE_SIZE || !bytes.is_power_of_two() {
            return None;
        }
        let o = (bytes / PAGE_SIZE).trailing_zeros() as u8;
        (o <= MAX_PAGE_ORDER).then_some(Order(o))
    }
}
