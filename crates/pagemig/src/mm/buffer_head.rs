//! Buffer heads (`fs/buffer.c`, `include/linux/buffer_head.h`): the blocks of a page-cache
//! folio that a block filesystem (ext4, a journal) reads and writes by themselves, attached
//! to the folio as `folio->private` with `PG_private`.
//!
//! What matters to migration is how they are written: a journal writes a block through its
//! buffer head under the *buffer* lock, holding no folio reference and not the folio lock
//! ([`Buffers::write`]). `__buffer_migrate_folio` keeps such writers out by locking every
//! buffer before it copies, and points the buffers at the new folio before unlocking them —
//! which is why the series never batch-copies a folio with `PG_private`: a batch copy runs
//! before those locks are taken, and a block written in between would be lost.

#![forbid(unsafe_code)]

use super::waitbit::{self, WaitQueue};
use super::{Folio, Memory, Pfn, PAGE_SIZE};
use crate::sync::{AtomicI32, AtomicU64, Ordering};
use crate::Errno;

/// `BH_Lock`.
pub(crate) const BH_LOCK: u32 = 1 << 0;
/// `BH_Dirty`.
pub(crate) const BH_DIRTY: u32 = 1 << 1;
/// `BH_Uptodate`.
pub(crate) const BH_UPTODATE: u32 = 1 << 2;
/// `BH_Migrate`: `buffer_migrate_folio_norefs` is checking the buffers' users.
pub(crate) const BH_MIGRATE: u32 = 1 << 3;
/// `b_folio` of detached buffers (pfn 0 is a frame like any other).
pub(crate) const DETACHED: u64 = u64::MAX;

/// One block of a folio (`struct buffer_head`).
#[derive(Debug)]
pub struct BufferHead {
    pub(crate) state: crate::sync::model::AtomicU32,
    /// `b_count`: users holding the buffer head (`get_bh` / `put_bh`).
    pub(crate) count: AtomicI32,
    /// `b_folio`: the folio the block lives in (its head pfn), [`DETACHED`] once detached.
    pub(crate) folio: AtomicU64,
    /// `bh_offset()`: the block's byte offset in the folio.
    pub(crate) offset: usize,
}

/// The ring of a folio's buffer heads (`folio_buffers()`, linked by `b_this_page`).
#[derive(Debug)]
pub struct Buffers {
    pub(crate) bhs: Vec<BufferHead>,
    /// The block size.
    pub(crate) size: usize,
    /// Sleepers on `BH_Lock` (`wait_on_buffer`).
    wq: WaitQueue,
}

impl Buffers {
    /// `create_empty_buffers(folio, blocksize)`: blocks of `size` bytes covering `bytes`.
    pub(crate) fn new(folio: Folio, bytes: usize, size: usize) -> Buffers {
        Buffers {
            bhs: (0..bytes / size)
                .map(|k| BufferHead {
                    state: crate::sync::model::AtomicU32::new(BH_UPTODATE),
                    count: AtomicI32::new(0),
                    folio: AtomicU64::new(folio.0 .0),
                    offset: k * size,
                })
                .collect(),
            size,
            wq: WaitQueue::new(),
        }
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.bhs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.bhs.is_empty()
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> usize {
        self.size
    }

    /// `trylock_buffer()`.
    pub(crate) fn trylock(&self, i: usize) -> bool {
        self.bhs[i].state.fetch_or(BH_LOCK, Ordering::Acquire) & BH_LOCK == 0
    }

    /// `lock_buffer()`: sleeps until the buffer is free.
    pub fn lock(&self, i: usize) {
        while !self.trylock(i) {
            waitbit::wait_on_bit(&self.bhs[i].state, BH_LOCK, &self.wq);
        }
    }

    /// `unlock_buffer()`.
    pub fn unlock(&self, i: usize) {
        waitbit::clear_bit_unlock(&self.bhs[i].state, BH_LOCK, &self.wq);
    }

    /// `buffer_uptodate()`.
    pub(crate) fn uptodate(&self, i: usize) -> bool {
        self.bhs[i].state.load(Ordering::Acquire) & BH_UPTODATE != 0
    }

    /// `buffer_dirty()`.
    pub fn is_dirty(&self, i: usize) -> bool {
        self.bhs[i].state.load(Ordering::Acquire) & BH_DIRTY != 0
    }

    /// `get_bh()`: a user of block `i` (a lookup in the buffer-head LRU, say).
    pub fn get_bh(&self, i: usize) {
        self.bhs[i].count.fetch_add(1, Ordering::AcqRel);
    }

    /// `put_bh()`.
    pub fn put_bh(&self, i: usize) {
        let old = self.bhs[i].count.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(old > 0, "put_bh without get_bh");
    }

    /// Whether any block has users (`b_count`).
    pub(crate) fn any_users(&self) -> bool {
        self.bhs
            .iter()
            .any(|b| b.count.load(Ordering::Acquire) != 0)
    }

    /// `buffer_busy()` for every block: in use, dirty or locked (`try_to_free_buffers`
    /// refuses then).
    pub(crate) fn any_busy(&self) -> bool {
        self.bhs.iter().any(|b| {
            b.count.load(Ordering::Acquire) != 0
                || b.state.load(Ordering::Acquire) & (BH_DIRTY | BH_LOCK) != 0
        })
    }

    /// The folio the buffers point at (`bh->b_folio`).
    pub fn folio(&self) -> Option<Folio> {
        let pfn = self.bhs.first()?.folio.load(Ordering::Acquire);
        (pfn != DETACHED).then_some(Folio(Pfn(pfn)))
    }

    /// `folio_set_bh()` for every block: the buffers now live in `folio` ([`DETACHED`]).
    pub(crate) fn set_folio(&self, folio: u64) {
        for b in &self.bhs {
            b.folio.store(folio, Ordering::Release);
        }
    }

    /// Writes `buf` at byte `off` of block `i` the way a journal does: under the buffer
    /// lock, through `b_folio`, holding neither a folio reference nor the folio lock; then
    /// `mark_buffer_dirty()` (which dirties the folio too). `ENOENT` once the buffers are
    /// detached (the folio was truncated).
    pub fn write(&self, mm: &Memory, i: usize, off: usize, buf: &[u8]) -> Result<(), Errno> {
        if i >= self.bhs.len() || off + buf.len() > self.size {
            return Err(Errno::Inval);
        }
        self.lock(i);
        let head = self.bhs[i].folio.load(Ordering::Acquire);
        if head == DETACHED {
            self.unlock(i);
            return Err(Errno::NoEnt);
        }
        let mut at = self.bhs[i].offset + off;
        let mut done = 0;
        while done < buf.len() {
            let pfn = Pfn(head + (at / PAGE_SIZE) as u64);
            let o = at % PAGE_SIZE;
            let n = (PAGE_SIZE - o).min(buf.len() - done);
            mm.page_write(pfn, o, &buf[done..done + n]);
            done += n;
            at += n;
        }
        self.bhs[i].state.fetch_or(BH_DIRTY, Ordering::AcqRel);
        mm.folio_mark_dirty(&mm.folio(Folio(Pfn(head))));
        self.unlock(i);
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte `off` of block `i`, under the buffer lock.
    pub fn read(&self, mm: &Memory, i: usize, off: usize, buf: &mut [u8]) -> Result<(), Errno> {
        if i >= self.bhs.len() || off + buf.len() > self.size {
            return Err(Errno::Inval);
        }
        self.lock(i);
        let head = self.bhs[i].folio.load(Ordering::Acquire);
        let rc = if head == DETACHED {
            Err(Errno::NoEnt)
        } else {
            let mut at = self.bhs[i].offset + off;
            let mut done = 0;
            let mut rc = Ok(());
            while done < buf.len() && rc.is_ok() {
                let pfn = Pfn(head + (at / PAGE_SIZE) as u64);
                let o = at % PAGE_SIZE;
                let n = (PAGE_SIZE - o).min(buf.len() - done);
                rc = mm.page_read(pfn, o, &mut buf[done..done + n]);
                done += n;
                at += n;
            }
            rc
        };
        self.unlock(i);
        rc
    }

    /// `clear_buffer_dirty()` of every block (their write-out finished).
    pub fn clean(&self) {
        for b in &self.bhs {
            b.state.fetch_and(!BH_DIRTY, Ordering::AcqRel);
        }
    }
}
