//! Callbacks into the memory model from outside it: fault-injection points (the kernel's
//! `should_fail()` sites) and `struct movable_operations` for movable_ops pages.

#![forbid(unsafe_code)]

use super::{Folio, Memory, NodeId, Order};
use crate::migrate_mode::Mode;
use crate::Errno;

/// Fault-injection points (the analogue of the kernel's `should_fail()` sites). Every
/// method has a no-op default; tests and `pagemig stress` implement the ones they need.
pub trait FaultHooks: Send + Sync {
    /// Return true to make this allocation fail (`ENOMEM`).
    fn alloc_should_fail(&self, _node: NodeId, _order: Order) -> bool {
        false
    }
    /// Called at the start of each move attempt of `src` (pass number from 0).
    fn before_move(&self, _mm: &Memory, _src: Folio, _pass: usize) {}
    /// Called after the TLB flush, right before the batch copy is dispatched (the gate
    /// was evaluated at the top of the batch): a driver unregistered here is the case of
    /// an unregister racing with a batch that already chose the batch path.
    fn before_batch_copy(&self, _mm: &Memory) {}
    /// Called right after the batch copy, before the move phase.
    fn after_batch_copy(&self, _mm: &Memory) {}
    /// Called inside `__migrate_folio` after the copy (the CPU's, or the batch copy's that
    /// the move consumed) and before `__folio_migrate_mapping` freezes the refcount: a
    /// reference taken here makes the freeze fail after the copy.
    fn after_copy_before_freeze(&self, _mm: &Memory, _src: Folio) {}
    /// Negative control only: copy the batch *before* the TLB flush, which is wrong and
    /// loses writes that accessors make through stale translations.
    fn copy_before_flush(&self) -> bool {
        false
    }
}

/// Callbacks of movable_ops pages (balloon, zsmalloc: `struct movable_operations`).
pub trait MovableOps: Send + Sync {
    /// `migrate_page(dst, src, mode)`: move the page's contents and ownership. On success
    /// the owner keeps `dst` (its allocation reference) and drops its reference on `src`.
    fn migrate_page(&self, mm: &Memory, dst: Folio, src: Folio, mode: Mode) -> Result<(), Errno>;
}

/// A filesystem's own `a_ops->migrate_folio` ([`super::MigrateFolioOp::Custom`]): btrfs,
/// f2fs and nfs check state of their own and then call the generic helper, which the core
/// passes as `filemap_migrate_folio` (it copies unless the batch copy already did, swaps
/// the folio in the page cache and moves the private data). The series never batch-copies
/// the folios of such a mapping: a copy made before the callback would bypass its checks.
pub trait MigrateFolio: Send + Sync {
    /// Migrates locked `src` into locked `dst`.
    fn migrate_folio(
        &self,
        mm: &Memory,
        dst: Folio,
        src: Folio,
        mode: Mode,
        filemap_migrate_folio: &mut dyn FnMut() -> Result<(), Errno>,
    ) -> Result<(), Errno>;
}
