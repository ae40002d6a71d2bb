//! [`MmError`]: the errors of the memory model, with the errno a Linux caller would see.

#![forbid(unsafe_code)]

use super::{NodeId, VirtAddr, MAX_PAGE_ORDER};
use crate::errno::OsError;
use crate::Errno;

/// Errors of the memory model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MmError {
    /// No free block of the order on the node (`ENOMEM`).
    #[error("node {node:?}: no free block of order {order}")]
    NoMemory {
        /// node asked
        node: NodeId,
        /// order asked
        order: u8,
    },
    /// The node does not exist.
    #[error("no such node {0:?}")]
    NoSuchNode(NodeId),
    /// An order above [`MAX_PAGE_ORDER`].
    #[error("order {0} is larger than the maximum {MAX_PAGE_ORDER}")]
    BadOrder(u8),
    /// The pfn is not a live folio head.
    #[error("pfn {0:#x} is not an allocated folio")]
    NotAFolio(u64),
    /// Address outside the space.
    #[error("address {vaddr:?} outside the address space")]
    OutOfRange {
        /// the address
        vaddr: VirtAddr,
    },
    /// Address not aligned to the folio size.
    #[error("address {vaddr:?} not aligned to {align_bytes} bytes")]
    Misaligned {
        /// the address
        vaddr: VirtAddr,
        /// required alignment
        align_bytes: usize,
    },
    /// Something is already mapped there.
    #[error("address {vaddr:?} already mapped")]
    AlreadyMapped {
        /// the address
        vaddr: VirtAddr,
    },
    /// Nothing is mapped there.
    #[error("address {vaddr:?} not mapped")]
    NotMapped {
        /// the address
        vaddr: VirtAddr,
    },
    /// The folio is busy (already isolated, locked, or not in a state for this).
    #[error("folio busy")]
    Busy,
    /// A zero or otherwise invalid size or configuration.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The host refused to create a node's arena (`mmap`, `mbind`).
    #[error("cannot create the arena of node {node:?}: {source}")]
    Arena {
        /// The node whose arena failed.
        node: NodeId,
        /// The system call's error.
        #[source]
        source: OsError,
    },
}

impl MmError {
    /// The Linux errno a caller would see.
    pub fn errno(&self) -> Errno {
        match self {
            MmError::NoMemory { .. } => Errno::NoMem,
            MmError::NoSuchNode(_) => Errno::NoDev,
            MmError::Busy => Errno::Busy,
            MmError::NotMapped { .. } => Errno::NoEnt,
            MmError::OutOfRange { .. } => Errno::Fault,
            _ => Errno::Inval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn an_arena_error_keeps_its_source() {
        let e = MmError::Arena {
            node: NodeId(1),
            source: std::io::Error::from_raw_os_error(libc::ENOMEM).into(),
        };
        let src = e.source().expect("the OS error is the source");
        assert!(src.to_string().contains("memory"), "{src}");
        assert_eq!(e.clone(), e);
        assert_ne!(e, MmError::Busy);
    }
}
