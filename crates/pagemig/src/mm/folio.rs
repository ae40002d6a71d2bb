//! Folio metadata — the analogue of `struct page` / `struct folio` in the memmap, the
//! `PG_*` flags, the folio lock with its wait queue (`folio_wait_table`), and the series'
//! `migrate_info` word.

#![forbid(unsafe_code)]

use crate::sync::model::AtomicU32;
use crate::sync::{AtomicI32, AtomicU64, AtomicU8, Ordering};

use super::waitbit::{self, WaitQueue};

use super::{Memory, NodeId, Order, Pfn};

/// Page flags (`enum pageflags`) of a folio's head page. Per-page state lives beside the
/// memmap: `PG_hwpoison` in a bitmap ([`Memory::page_is_hwpoison`]) and the tail-to-head
/// link in an offset array ([`Memory::compound_head`]).
pub mod pg {
    /// `PG_locked`: the folio lock.
    pub const LOCKED: u32 = 1 << 0;
    /// `PG_dirty`.
    pub const DIRTY: u32 = 1 << 1;
    /// `PG_writeback`: under writeback I/O.
    pub const WRITEBACK: u32 = 1 << 2;
    /// `PG_uptodate`: contents valid (SYNC_LIGHT waits for the lock only if set).
    pub const UPTODATE: u32 = 1 << 3;
    /// Anonymous memory (`PAGE_MAPPING_ANON`).
    pub const ANON: u32 = 1 << 4;
    /// A hugetlb folio: migrated first, one at a time, never batched.
    pub const HUGETLB: u32 = 1 << 5;
    /// A movable_ops page (balloon, zsmalloc): migrated through its own callback.
    pub const MOVABLE_OPS: u32 = 1 << 6;
    /// `PG_has_hwpoisoned`, on the head: some page of this large folio is poisoned.
    pub const HAS_HWPOISONED: u32 = 1 << 8;
    /// Isolated from the LRU for migration (`folio_isolate_lru` cleared `PG_lru`).
    pub const ISOLATED: u32 = 1 << 9;
    /// Free in the buddy allocator (`PG_buddy`).
    pub const BUDDY: u32 = 1 << 10;
    /// `PG_mlocked`.
    pub const MLOCKED: u32 = 1 << 11;
    /// `PG_lru`: on an LRU list, so it can be isolated for migration.
    pub const LRU: u32 = 1 << 14;
    /// `PG_private`: `folio->private` holds filesystem data (buffer heads); the private
    /// data holds one reference on the folio.
    pub const PRIVATE: u32 = 1 << 15;
    /// `PG_swapbacked`: anonymous and shmem memory (`!folio_is_file_lru`).
    pub const SWAPBACKED: u32 = 1 << 16;
    /// `PG_partially_mapped` (on a large folio): some of its pages are no longer mapped
    /// anywhere, and it waits on the deferred split queue.
    pub const PARTIALLY_MAPPED: u32 = 1 << 17;
    /// On the deferred split queue (`!list_empty(&folio->_deferred_list)`).
    pub const DEFERRED_SPLIT: u32 = 1 << 18;
    /// `PG_waiters`: someone sleeps on this folio's wait queue; unlock must wake it.
    pub const WAITERS: u32 = super::waitbit::WAITERS;
}

/// The series' `migrate_info` state bits (v6: `FOLIO_WAS_MAPPED`, `FOLIO_WAS_MLOCKED`,
/// `FOLIO_CONTENT_COPIED`), packed in the low bits of the saved anon_vma reference.
pub mod migrate_info {
    /// `FOLIO_WAS_MAPPED`, bit 0.
    pub const WAS_MAPPED: u64 = 1 << 0;
    /// `FOLIO_WAS_MLOCKED`, bit 1.
    pub const WAS_MLOCKED: u64 = 1 << 1;
    /// `FOLIO_OLD_STATES`.
    pub const OLD_STATES: u64 = WAS_MAPPED | WAS_MLOCKED;
    /// `FOLIO_CONTENT_COPIED`, bit 2: the destination already holds the source's bytes.
    pub const CONTENT_COPIED: u64 = 1 << 2;
    /// Every state bit; the rest of the word is the anon_vma reference (8-aligned).
    pub const STATE_MASK: u64 = OLD_STATES | CONTENT_COPIED;

    /// Packs a reference and state bits (`__migrate_folio_record`).
    pub fn pack(anon_vma: u64, states: u64) -> u64 {
        debug_assert_eq!(
            anon_vma & STATE_MASK,
            0,
            "anon_vma handle must be 8-aligned"
        );
        debug_assert_eq!(states & !STATE_MASK, 0);
        anon_vma | states
    }

    /// Splits a word into (reference, state bits).
    pub fn unpack(word: u64) -> (u64, u64) {
        (word & !STATE_MASK, word & STATE_MASK)
    }
}

/// One entry of the memmap (`struct page`).
#[derive(Debug)]
pub struct PageMeta {
    pub(crate) flags: AtomicU32,
    pub(crate) order: AtomicU8,
    pub(crate) refcount: AtomicI32,
    pub(crate) mapcount: AtomicI32,
    /// The series' `folio->migrate_info` (destination folios during migration).
    pub(crate) migrate_info: AtomicU64,
    /// anon_vma handle (`folio->mapping` with `PAGE_MAPPING_ANON`); 0 = none.
    pub(crate) mapping: AtomicU64,
    /// Virtual page number the folio is mapped at in every space of its anon_vma
    /// (`folio->index` for anon folios), or its page offset in its file.
    pub(crate) index: AtomicU64,
    /// `folio->private`: a handle of the filesystem data attached with `PG_private`
    /// ([`Memory::folio_private`]); 0 = none.
    pub(crate) private: AtomicU64,
}

impl PageMeta {
    /// No flags, no references: a memmap entry of a node's reserve, not yet one of its
    /// pages (loom's atomics are not zero bytes; see `arena::zeroed_memmap`).
    #[cfg(loom)]
    pub(crate) fn zeroed() -> PageMeta {
        PageMeta {
            flags: AtomicU32::new(0),
            order: AtomicU8::new(0),
            refcount: AtomicI32::new(0),
            mapcount: AtomicI32::new(0),
            migrate_info: AtomicU64::new(0),
            mapping: AtomicU64::new(0),
            index: AtomicU64::new(0),
            private: AtomicU64::new(0),
        }
    }
}

/// A folio, named by the pfn of its head page. Cheap to copy; all state is in the memmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Folio(pub Pfn);

impl Folio {
    /// The head pfn.
    pub fn pfn(self) -> Pfn {
        self.0
    }
}

/// A view of a folio's metadata (`struct folio *`).
#[derive(Clone, Copy)]
pub struct FolioRef<'a> {
    pub(crate) mm: &'a Memory,
    pub(crate) folio: Folio,
    pub(crate) meta: &'a PageMeta,
}

impl std::fmt::Debug for FolioRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folio")
            .field("pfn", &self.folio.0)
            .field("order", &self.order())
            .field("flags", &format_args!("{:#x}", self.flags()))
            .field("refcount", &self.ref_count())
            .field("mapcount", &self.mapcount())
            .finish()
    }
}

impl<'a> FolioRef<'a> {
    /// The folio handle.
    pub fn folio(&self) -> Folio {
        self.folio
    }
    /// Head pfn.
    pub fn pfn(&self) -> Pfn {
        self.folio.0
    }
    /// Raw flags word.
    pub fn flags(&self) -> u32 {
        self.meta.flags.load(Ordering::Acquire)
    }
    /// Tests a flag (`folio_test_*`).
    pub fn test(&self, flag: u32) -> bool {
        self.flags() & flag != 0
    }
    /// Sets a flag (`folio_set_*`).
    pub fn set(&self, flag: u32) {
        self.meta.flags.fetch_or(flag, Ordering::AcqRel);
    }
    /// Clears a flag (`folio_clear_*`).
    pub fn clear(&self, flag: u32) {
        self.meta.flags.fetch_and(!flag, Ordering::AcqRel);
    }
    /// `folio_order()`.
    pub fn order(&self) -> Order {
        Order(self.meta.order.load(Ordering::Acquire))
    }
    /// `folio_nr_pages()`.
    #[doc(alias = "folio_nr_pages")]
    pub fn nr_pages(&self) -> usize {
        1 << self.order().0
    }
    /// `folio_size()`.
    pub fn size_bytes(&self) -> usize {
        self.nr_pages() * super::PAGE_SIZE
    }
    /// `folio_test_large()`.
    pub fn is_large(&self) -> bool {
        self.order().0 > 0
    }
    /// `folio_test_pmd_mappable()`: a THP (order 9).
    pub fn is_thp(&self) -> bool {
        self.order().0 == super::HPAGE_PMD_ORDER && !self.test(pg::HUGETLB)
    }
    /// `folio_nid()`.
    #[doc(alias = "folio_nid")]
    pub fn node(&self) -> NodeId {
        self.mm.node_of(self.folio.0)
    }
    /// `folio_ref_count()`.
    pub fn ref_count(&self) -> i32 {
        self.meta.refcount.load(Ordering::Acquire)
    }
    /// `folio_mapcount()`.
    pub fn mapcount(&self) -> i32 {
        self.meta.mapcount.load(Ordering::Acquire)
    }
    /// `folio_mapped()`.
    pub fn is_mapped(&self) -> bool {
        self.mapcount() > 0
    }
    /// The `migrate_info` word.
    pub fn migrate_info(&self) -> u64 {
        self.meta.migrate_info.load(Ordering::Acquire)
    }
    /// Sets `FOLIO_CONTENT_COPIED` (what a migrator does after each successful copy).
    ///
    /// While a batch copy runs, a destination's `migrate_info` has exactly one writer — the
    /// thread that copied it — so this is a plain load and store, not a locked
    /// read-modify-write: a locked instruction would drain the write-combining buffers and
    /// stall the next streaming copy. The batch's completion (the return of
    /// `offload_copy`, a join for multi-threaded drivers) publishes the marks.
    pub fn mark_content_copied(&self) {
        let w = self.meta.migrate_info.load(Ordering::Relaxed);
        self.meta
            .migrate_info
            .store(w | migrate_info::CONTENT_COPIED, Ordering::Release);
    }
    /// Reads and clears `FOLIO_CONTENT_COPIED` (consume-once, as `__migrate_folio` does).
    pub fn test_and_clear_content_copied(&self) -> bool {
        self.meta
            .migrate_info
            .fetch_and(!migrate_info::CONTENT_COPIED, Ordering::AcqRel)
            & migrate_info::CONTENT_COPIED
            != 0
    }
    /// Whether any page of this folio is hwpoisoned.
    pub fn has_hwpoison(&self) -> bool {
        self.test(pg::HAS_HWPOISONED)
    }

    /// `folio_test_anon()`.
    pub fn is_anon(&self) -> bool {
        self.test(pg::ANON)
    }

    /// `folio_is_file_lru()`: page cache that is not swap-backed (not anon, not shmem).
    pub fn is_file_lru(&self) -> bool {
        !self.test(pg::SWAPBACKED)
    }

    /// `folio->index`: the page offset in its file (or the virtual page number, for anon).
    pub fn index(&self) -> u64 {
        self.meta.index.load(Ordering::Acquire)
    }

    /// The page-cache handle `folio->mapping` names, if this is a file folio still in its
    /// file (`folio_mapping()`; 0 after truncation and for anon folios).
    pub(crate) fn file_mapping_handle(&self) -> u64 {
        if self.is_anon() {
            0
        } else {
            self.meta.mapping.load(Ordering::Acquire)
        }
    }

    /// `folio_expected_ref_count()`: the references a folio nobody else uses holds — one
    /// per mapping, `nr_pages` from the page cache, one for `PG_private`.
    pub fn folio_expected_ref_count(&self) -> i32 {
        let cache = if self.file_mapping_handle() != 0 {
            self.nr_pages() as i32
        } else {
            0
        };
        cache + self.test(pg::PRIVATE) as i32 + self.mapcount()
    }

    /// `folio_expected_ref_count() + 1`: what an isolated folio holds when nobody else
    /// uses it (the `+ 1` is the isolation reference migration holds).
    pub fn expected_ref_count(&self) -> i32 {
        self.folio_expected_ref_count() + 1
    }

    /// `folio_ref_freeze(folio, count)`: the refcount becomes 0 if it is exactly `count`
    /// (so that speculative lookups fail until it is unfrozen).
    pub(crate) fn ref_freeze(&self, count: i32) -> bool {
        self.meta
            .refcount
            .compare_exchange(count, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `folio_ref_unfreeze(folio, count)`.
    pub(crate) fn ref_unfreeze(&self, count: i32) {
        let old = self.meta.refcount.swap(count, Ordering::AcqRel);
        debug_assert_eq!(old, 0, "unfreeze of a folio that was not frozen");
    }

    /// `folio_trylock()`.
    pub fn trylock(&self) -> bool {
        self.meta.flags.fetch_or(pg::LOCKED, Ordering::Acquire) & pg::LOCKED == 0
    }
    /// `folio_lock()`: sleeps until the lock is free.
    pub fn lock(&self) {
        while !self.trylock() {
            self.mm.wait_on_flag(self.folio.0, pg::LOCKED);
        }
    }
    /// `folio_unlock()`: releases the lock and wakes waiters (`folio_wake_bit`).
    pub fn unlock(&self) {
        let old = self.mm.clear_flag_wake(self.folio.0, pg::LOCKED);
        debug_assert!(old & pg::LOCKED != 0, "unlock of an unlocked folio");
    }
    /// `folio_wait_writeback()`.
    pub fn wait_writeback(&self) {
        self.mm.wait_on_flag(self.folio.0, pg::WRITEBACK);
    }
    /// `folio_start_writeback()` (for tests and fault injection).
    pub fn start_writeback(&self) {
        self.set(pg::WRITEBACK);
    }
    /// `folio_end_writeback()`: clears writeback and wakes waiters.
    pub fn end_writeback(&self) {
        self.mm.clear_flag_wake(self.folio.0, pg::WRITEBACK);
    }
    /// `folio_get()`: takes an extra reference (a GUP pin, say).
    pub fn get(&self) {
        self.meta.refcount.fetch_add(1, Ordering::AcqRel);
    }
    /// `folio_put()`: drops a reference and frees the folio at zero.
    pub fn put(&self) {
        self.mm.folio_put(self.folio);
    }
}

/// Number of hashed wait queues (`folio_wait_table`).
pub(crate) const WAIT_TABLE_SIZE: usize = 256;

impl Memory {
    pub(crate) fn wait_queue(&self, pfn: Pfn) -> &WaitQueue {
        let h = (pfn.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize;
        &self.wait_table[h % WAIT_TABLE_SIZE]
    }

    /// Sleeps until `flag` is clear on the head page `pfn`.
    pub(crate) fn wait_on_flag(&self, pfn: Pfn, flag: u32) {
        waitbit::wait_on_bit(&self.page(pfn).flags, flag, self.wait_queue(pfn));
    }

    /// Clears `flag` on the head page `pfn` and wakes its sleepers.
    pub(crate) fn clear_flag_wake(&self, pfn: Pfn, flag: u32) -> u32 {
        waitbit::clear_bit_unlock(&self.page(pfn).flags, flag, self.wait_queue(pfn))
    }
}

#[cfg(test)]
mod tests {
    use super::migrate_info::*;

    #[test]
    fn migrate_info_packs_like_the_series() {
        let anon_vma = 0x1238u64;
        let w = pack(anon_vma, WAS_MAPPED | CONTENT_COPIED);
        assert_eq!(w, 0x1238 | 1 | 4);
        assert_eq!(unpack(w), (anon_vma, WAS_MAPPED | CONTENT_COPIED));
        assert_eq!(
            unpack(pack(anon_vma, WAS_MLOCKED)).1 & OLD_STATES,
            WAS_MLOCKED
        );
        assert_eq!(OLD_STATES, 3);
        assert_eq!(CONTENT_COPIED, 4);
    }
}
