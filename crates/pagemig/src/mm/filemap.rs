//! The page cache — the analogue of a file's `struct address_space` (`mm/filemap.c`,
//! `mm/truncate.c`, `mm/shmem.c`): an index → folio map under its lock (`i_pages` and
//! `xa_lock`), the spaces that map the file (`i_mmap`, walked by the file rmap), the
//! mapping's `a_ops->migrate_folio`, dirty and writeback state, buffer heads and shmem.
//!
//! A file is a [`File`] (its inode): created by [`Memory::create_file`], filled with
//! folios by [`File::add_folio`], read and written through the cache ([`File::read`],
//! [`File::write`]), written back ([`File::start_writeback`]), mapped into address spaces
//! ([`AddressSpace::map_file`]) and truncated ([`File::truncate`], and on drop). Its
//! `Mapping` lives as long as the memory model, like an anon_vma, so that a folio's
//! `mapping` handle never dangles; dropping the `File` truncates it.
//!
//! Reference counts are the kernel's: a cached folio holds `nr_pages` references for the
//! cache, one per mapping, one for `PG_private`; a lookup takes one more with
//! `folio_try_get`, which fails while migration has the count frozen
//! (`__folio_migrate_mapping`), and the lookup retries.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use super::buffer_head::Buffers;
use super::folio::pg;
use super::page_table::{AddressSpace, Pte};
use super::{
    Folio, FolioRef, Memory, MigrateFolio, MmError, NodeId, NodeStat, Order, Pfn, VirtAddr,
    PAGE_SHIFT, PAGE_SIZE,
};
use crate::sync::IgnorePoison as _;
use crate::sync::{lock, Arc, Mutex, Ordering, Weak};
use crate::Errno;

/// A mapping's `a_ops->migrate_folio`.
#[derive(Clone)]
pub enum MigrateFolioOp {
    /// `filemap_migrate_folio`: iomap filesystems (xfs, and most of the others).
    Filemap,
    /// `buffer_migrate_folio`: block filesystems with buffer heads (ext4's data).
    Buffer,
    /// `buffer_migrate_folio_norefs`: block devices, whose buffer heads are looked up and
    /// held directly — migration must also find no `b_count` user.
    BufferNorefs,
    /// `migrate_folio`: shmem and the swap cache.
    Migrate,
    /// No callback: `fallback_migrate_folio` (dirty folios are `EBUSY`; private data must be
    /// released first).
    None,
    /// A filesystem's own callback (btrfs, f2fs, nfs, ...), which the series never hands a
    /// pre-copied folio.
    Custom(Arc<dyn MigrateFolio>),
}

impl fmt::Debug for MigrateFolioOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrateFolioOp::Filemap => "filemap_migrate_folio",
            MigrateFolioOp::Buffer => "buffer_migrate_folio",
            MigrateFolioOp::BufferNorefs => "buffer_migrate_folio_norefs",
            MigrateFolioOp::Migrate => "migrate_folio",
            MigrateFolioOp::None => "(none)",
            MigrateFolioOp::Custom(_) => "(filesystem's own)",
        })
    }
}

/// What kind of file a [`File`] is.
#[derive(Debug, Clone)]
pub enum FileKind {
    /// A regular file of a filesystem that writes back, with its `migrate_folio`.
    Regular(MigrateFolioOp),
    /// A shmem / tmpfs file: swap-backed, never written back, `migrate_folio`.
    Shmem,
    /// A mapping whose folios must never be touched (`mapping_inaccessible`: secretmem,
    /// guest_memfd): migration fails with `EOPNOTSUPP`.
    Inaccessible,
}

/// Data attached to a folio with `PG_private` (`folio->private`).
#[derive(Debug, Clone)]
pub enum FolioPrivate {
    /// Buffer heads.
    Buffers(Arc<Buffers>),
    /// A filesystem's own per-folio state (iomap's `iomap_folio_state`, say): released by
    /// `release_folio` only when the folio is clean and not under writeback.
    Fs(u64),
}

/// One mapping of a file range into an address space (a file `vm_area_struct` on
/// `i_mmap`).
#[derive(Debug)]
pub(crate) struct FileVma {
    pub(crate) space: Weak<AddressSpace>,
    /// Page-table slot of the first page.
    pub(crate) first_slot: usize,
    /// `vm_pgoff`.
    pub(crate) pgoff: u64,
    pub(crate) nr_pages: usize,
}

/// A file's `struct address_space`.
pub struct Mapping {
    pub(crate) handle: u64,
    pub(crate) kind: FileKind,
    /// `i_pages`, under its lock (`xa_lock`): one entry per base page index, naming the
    /// head of the folio that holds it.
    pub(crate) i_pages: Mutex<BTreeMap<u64, Folio>>,
    /// `i_mmap`, under `i_mmap_rwsem`.
    pub(crate) i_mmap: Mutex<Vec<FileVma>>,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("handle", &self.handle)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Mapping {
    /// The mapping's `a_ops->migrate_folio` (`None` for inaccessible mappings).
    pub fn migrate_folio_op(&self) -> Option<&MigrateFolioOp> {
        match &self.kind {
            FileKind::Regular(op) => Some(op),
            FileKind::Shmem => Some(&MigrateFolioOp::Migrate),
            FileKind::Inaccessible => None,
        }
    }
    /// `mapping_inaccessible()`.
    pub fn is_inaccessible(&self) -> bool {
        matches!(self.kind, FileKind::Inaccessible)
    }
    /// `shmem_mapping()`.
    pub fn is_shmem(&self) -> bool {
        matches!(self.kind, FileKind::Shmem)
    }
    /// `mapping_can_writeback()`: regular files write back; shmem does not.
    pub fn can_writeback(&self) -> bool {
        matches!(self.kind, FileKind::Regular(_))
    }
}

/// The largest file, in pages (`MAX_LFS_FILESIZE` / 4 KiB on 64-bit: 2^63 bytes).
pub const MAX_FILE_PAGES: u64 = 1 << 51;

/// Handle of the mapping at table index `i` (8-aligned like an anon_vma handle).
fn mapping_handle(i: usize) -> u64 {
    ((i as u64) + 1) << 3
}

impl Memory {
    /// The mapping a handle names.
    pub(crate) fn mapping(&self, h: u64) -> Option<Arc<Mapping>> {
        let i = (h >= 8).then(|| ((h >> 3) - 1) as usize)?;
        self.mappings.read().ignore_poison().get(i).cloned()
    }

    /// `folio_mapping()`: the file mapping of a page-cache folio, `None` for anonymous
    /// folios and for folios truncated out of their file.
    pub fn folio_mapping(&self, folio: Folio) -> Option<Arc<Mapping>> {
        self.mapping(self.folio(folio).file_mapping_handle())
    }

    /// Creates an empty file.
    pub fn create_file(self: &Arc<Self>, kind: FileKind) -> File {
        let mut t = self.mappings.write().ignore_poison();
        let handle = mapping_handle(t.len());
        let m = Arc::new(Mapping {
            handle,
            kind,
            i_pages: Mutex::new(BTreeMap::new()),
            i_mmap: Mutex::new(Vec::new()),
        });
        t.push(m.clone());
        File {
            mm: self.clone(),
            mapping: m,
        }
    }

    /// `folio_attach_private()`: `PG_private`, the data, and the reference it holds.
    pub(crate) fn folio_attach_private(&self, folio: Folio, private: FolioPrivate) {
        let id = self.next_private.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.privates).insert(id, private);
        self.folio_attach_private_handle(folio, id);
    }

    pub(crate) fn folio_attach_private_handle(&self, folio: Folio, id: u64) {
        let f = self.folio(folio);
        debug_assert!(!f.test(pg::PRIVATE), "private data attached twice");
        f.get();
        f.meta.private.store(id, Ordering::Release);
        f.set(pg::PRIVATE);
    }

    /// `folio_detach_private()`: returns the handle and drops the reference it held.
    pub(crate) fn folio_detach_private(&self, folio: Folio) -> u64 {
        let f = self.folio(folio);
        if !f.test(pg::PRIVATE) {
            return 0;
        }
        f.clear(pg::PRIVATE);
        let id = f.meta.private.swap(0, Ordering::AcqRel);
        f.put();
        id
    }

    /// The data attached to a folio (`folio_get_private`).
    pub fn folio_private(&self, folio: Folio) -> Option<FolioPrivate> {
        let f = self.folio(folio);
        if !f.test(pg::PRIVATE) {
            return None;
        }
        let id = f.meta.private.load(Ordering::Acquire);
        lock(&self.privates).get(&id).cloned()
    }

    /// `folio_mark_dirty()`: `PG_dirty`, counted in `NR_FILE_DIRTY` when the folio's file
    /// writes back.
    pub(crate) fn folio_mark_dirty(&self, f: &FolioRef<'_>) {
        if f.meta.flags.fetch_or(pg::DIRTY, Ordering::AcqRel) & pg::DIRTY == 0
            && self
                .mapping(f.file_mapping_handle())
                .is_some_and(|m| m.can_writeback())
        {
            self.mod_node_stat(f.node(), NodeStat::FileDirty, f.nr_pages() as i64);
        }
    }

    /// `folio_buffers()`.
    pub fn folio_buffers(&self, folio: Folio) -> Option<Arc<Buffers>> {
        match self.folio_private(folio)? {
            FolioPrivate::Buffers(b) => Some(b),
            FolioPrivate::Fs(_) => None,
        }
    }

    /// `filemap_release_folio()` (`try_to_free_buffers` / the filesystem's
    /// `release_folio`): drops the private data if nothing uses it. The folio is locked.
    pub(crate) fn filemap_release_folio(&self, folio: Folio) -> bool {
        let f = self.folio(folio);
        if !f.test(pg::PRIVATE) {
            return true;
        }
        if f.test(pg::WRITEBACK) {
            return false;
        }
        match self.folio_private(folio) {
            Some(FolioPrivate::Buffers(b)) if b.any_busy() => return false,
            Some(FolioPrivate::Fs(_)) if f.test(pg::DIRTY) => return false,
            _ => {}
        }
        self.free_private(folio);
        true
    }

    /// Detaches and forgets the private data (its buffers point nowhere after this).
    pub(crate) fn free_private(&self, folio: Folio) {
        let id = self.folio_detach_private(folio);
        if id != 0 {
            if let Some(FolioPrivate::Buffers(b)) = lock(&self.privates).remove(&id) {
                b.set_folio(super::buffer_head::DETACHED);
            }
        }
    }

    /// The file rmap walk (`rmap_walk_file`): for every live space mapping a page of the
    /// folio, `(space, slot of page 0, first page, end page)` — pages `lo..hi` of the folio
    /// are at slots `first + k` (`first` may lie before the mapping: only `lo..hi` count).
    pub(crate) fn rmap_walk_file(
        &self,
        folio: &FolioRef<'_>,
        mut f: impl FnMut(&Arc<AddressSpace>, isize, usize, usize),
    ) {
        let Some(m) = self.mapping(folio.file_mapping_handle()) else {
            return;
        };
        let idx = folio.index();
        let nr = folio.nr_pages() as u64;
        let vmas = lock(&m.i_mmap);
        for v in vmas.iter() {
            let end = v.pgoff + v.nr_pages as u64;
            if idx + nr <= v.pgoff || idx >= end {
                continue;
            }
            let Some(space) = v.space.upgrade() else {
                continue;
            };
            let lo = v.pgoff.saturating_sub(idx) as usize;
            let hi = (end.min(idx + nr) - idx) as usize;
            let first = v.first_slot as isize + (idx as isize - v.pgoff as isize);
            f(&space, first, lo, hi);
        }
    }

    /// `filemap_get_entry` + `folio_try_get`: the folio caching page `index`, with a
    /// reference. Spins while the folio's count is frozen by a migration, as the RCU lookup
    /// retries.
    pub(crate) fn filemap_get_folio(&self, m: &Mapping, index: u64) -> Option<Folio> {
        let mut spins = 0;
        loop {
            let g = lock(&m.i_pages);
            let folio = *g.get(&index)?;
            match self.folio_try_get(folio) {
                Ok(_) => return Some(folio),
                Err(_) => {
                    drop(g);
                    crate::sync::model::spin_step(spins);
                    spins += 1;
                }
            }
        }
    }
}

/// A file (its inode): the handle that owns the page cache of one [`Mapping`].
pub struct File {
    mm: Arc<Memory>,
    mapping: Arc<Mapping>,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("mapping", &self.mapping)
            .field("nr_pages", &self.nr_cached_pages())
            .finish()
    }
}

impl File {
    /// The memory the file's folios live in.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.mm
    }

    /// The file's mapping.
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    /// Base pages in the cache.
    pub fn nr_cached_pages(&self) -> usize {
        lock(&self.mapping.i_pages).len()
    }

    /// The folios in the cache, by index.
    pub fn folios(&self) -> Vec<(u64, Folio)> {
        let g = lock(&self.mapping.i_pages);
        let mut v: Vec<(u64, Folio)> = Vec::new();
        for (&i, &f) in g.iter() {
            if v.last().map(|l| l.1) != Some(f) {
                v.push((i, f));
            }
        }
        v
    }

    /// The folio caching page `index`, if any (no reference taken: a snapshot).
    pub fn folio_at(&self, index: u64) -> Option<Folio> {
        lock(&self.mapping.i_pages).get(&index).copied()
    }

    /// `filemap_get_folio()`: the folio caching page `index`, with a reference the caller
    /// drops with `folio_put` (a `get_user_pages` pin or a reader, say).
    pub fn get_folio(&self, index: u64) -> Option<Folio> {
        self.mm.filemap_get_folio(&self.mapping, index)
    }

    /// `filemap_add_folio()` of a new folio: allocates a zeroed, uptodate folio of `order`
    /// on `node` for pages `index..index + 2^order` (aligned) and inserts it.
    pub fn add_folio(&self, index: u64, node: NodeId, order: Order) -> Result<Folio, MmError> {
        let nr = 1u64 << order.0;
        if index.checked_add(nr).is_none_or(|end| end > MAX_FILE_PAGES) {
            return Err(MmError::InvalidConfig(format!(
                "index {index} is beyond the largest file ({MAX_FILE_PAGES} pages)"
            )));
        }
        if index % nr != 0 {
            return Err(MmError::InvalidConfig(format!(
                "index {index} is not aligned to a folio of {nr} pages"
            )));
        }
        let mut flags = pg::UPTODATE | pg::LRU;
        if self.mapping.is_shmem() {
            flags |= pg::SWAPBACKED;
        }
        let folio = self.mm.alloc_folio(node, order, flags)?;
        self.mm.folio_zero(folio);
        let f = self.mm.folio(folio);
        f.meta.index.store(index, Ordering::Release);
        {
            let mut g = lock(&self.mapping.i_pages);
            if g.range(index..index + nr).next().is_some() {
                drop(g);
                self.mm.folio_put(folio);
                return Err(MmError::InvalidConfig(format!(
                    "page {index} of the file is already cached"
                )));
            }
            f.meta.mapping.store(self.mapping.handle, Ordering::Release);
            // __filemap_add_folio: the cache's references.
            f.meta.refcount.fetch_add(nr as i32, Ordering::AcqRel);
            for k in 0..nr {
                g.insert(index + k, folio);
            }
        }
        self.mm.mod_node_stat(node, NodeStat::FilePages, nr as i64);
        if self.mapping.is_shmem() {
            self.mm.mod_node_stat(node, NodeStat::Shmem, nr as i64);
            // shmem folios are dirty from the start: there is no backing store to agree with.
            f.set(pg::DIRTY);
        }
        // The allocation reference goes; the cache holds the folio now.
        f.put();
        Ok(folio)
    }

    /// Finds, references and locks the folio caching `index`, still in this file.
    fn lock_folio(&self, index: u64) -> Result<Folio, Errno> {
        loop {
            let folio = self.get_folio(index).ok_or(Errno::NoEnt)?;
            let f = self.mm.folio(folio);
            f.lock();
            if f.file_mapping_handle() == self.mapping.handle && self.folio_at(index) == Some(folio)
            {
                return Ok(folio);
            }
            // Migrated or truncated while we slept: look again.
            f.unlock();
            f.put();
        }
    }

    fn for_each_page<T>(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(Pfn, usize, usize, usize) -> Result<T, Errno>,
    ) -> Result<(), Errno> {
        if offset.checked_add(len as u64).is_none() {
            return Err(Errno::Inval);
        }
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let index = at >> PAGE_SHIFT;
            let off = (at as usize) & (PAGE_SIZE - 1);
            let n = (PAGE_SIZE - off).min(len - done);
            f(Pfn(index), off, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// `generic_perform_write()`: writes `buf` at byte `offset` through the cache, each
    /// page under its folio's lock, and dirties the folios. `ENOENT` where nothing is
    /// cached (pages must be added first).
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), Errno> {
        self.for_each_page(offset, buf.len(), |index, off, done, n| {
            let folio = self.lock_folio(index.0)?;
            let f = self.mm.folio(folio);
            let pfn = Pfn(folio.0 .0 + (index.0 - f.index()));
            self.mm.page_write(pfn, off, &buf[done..done + n]);
            self.folio_mark_dirty(&f);
            f.unlock();
            f.put();
            Ok(())
        })
    }

    /// `filemap_read()`: reads from a referenced folio without its lock, as the kernel
    /// does for an uptodate folio.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.for_each_page(offset, buf.len(), |index, off, done, n| {
            let folio = self.get_folio(index.0).ok_or(Errno::NoEnt)?;
            let f = self.mm.folio(folio);
            let pfn = Pfn(folio.0 .0 + (index.0 - f.index()));
            let rc = self.mm.page_read(pfn, off, &mut buf[done..done + n]);
            f.put();
            rc
        })
    }

    fn folio_mark_dirty(&self, f: &FolioRef<'_>) {
        self.mm.folio_mark_dirty(f);
    }

    /// Writeback begins for the folio caching `index` (`folio_clear_dirty_for_io` +
    /// `folio_start_writeback`, under the folio lock). Returns the folio, which stays in
    /// the cache, unmigrated and untruncated, until [`File::end_writeback`] (both wait for
    /// writeback, or refuse it). `EINVAL` for shmem, `EBUSY` if writeback is under way.
    pub fn start_writeback(&self, index: u64) -> Result<Folio, Errno> {
        if !self.mapping.can_writeback() {
            return Err(Errno::Inval);
        }
        let folio = self.lock_folio(index)?;
        let f = self.mm.folio(folio);
        if f.test(pg::WRITEBACK) {
            f.unlock();
            f.put();
            return Err(Errno::Busy);
        }
        if f.meta.flags.fetch_and(!pg::DIRTY, Ordering::AcqRel) & pg::DIRTY != 0 {
            self.mm
                .mod_node_stat(f.node(), NodeStat::FileDirty, -(f.nr_pages() as i64));
        }
        if let Some(b) = self.mm.folio_buffers(folio) {
            b.clean();
        }
        f.start_writeback();
        f.unlock();
        f.put();
        Ok(folio)
    }

    /// The write-out of a folio from [`File::start_writeback`] completed
    /// (`folio_end_writeback`): clears `PG_writeback` and wakes waiters. `EINVAL` if the
    /// folio is not under writeback in this file.
    pub fn end_writeback(&self, folio: Folio) -> Result<(), Errno> {
        let f = self.mm.folio_checked(folio).map_err(|_| Errno::Inval)?;
        if !f.test(pg::WRITEBACK) || f.file_mapping_handle() != self.mapping.handle {
            return Err(Errno::Inval);
        }
        f.end_writeback();
        Ok(())
    }

    /// `create_empty_buffers()`: attaches buffer heads of `block_size` bytes to the folio
    /// caching `index` (`PG_private`, one more reference), as a block filesystem does when
    /// it first touches the folio's blocks. `EBUSY` if it has private data already.
    pub fn attach_buffers(&self, index: u64, block_size: usize) -> Result<Arc<Buffers>, Errno> {
        if block_size == 0 || !block_size.is_power_of_two() || block_size > PAGE_SIZE {
            return Err(Errno::Inval);
        }
        let folio = self.lock_folio(index)?;
        let f = self.mm.folio(folio);
        let rc = if f.test(pg::PRIVATE) {
            Err(Errno::Busy)
        } else {
            let b = Arc::new(Buffers::new(folio, f.size_bytes(), block_size));
            self.mm
                .folio_attach_private(folio, FolioPrivate::Buffers(b.clone()));
            Ok(b)
        };
        f.unlock();
        f.put();
        rc
    }

    /// Attaches a filesystem's own private state (iomap's per-folio state, say) to the
    /// folio caching `index`.
    pub fn attach_fs_private(&self, index: u64, tag: u64) -> Result<(), Errno> {
        let folio = self.lock_folio(index)?;
        let f = self.mm.folio(folio);
        let rc = if f.test(pg::PRIVATE) {
            Err(Errno::Busy)
        } else {
            self.mm.folio_attach_private(folio, FolioPrivate::Fs(tag));
            Ok(())
        };
        f.unlock();
        f.put();
        rc
    }

    /// `truncate_inode_folio()` of the folio caching `index`: waits for its lock, unmaps it
    /// from every space, frees its private data, removes it from the cache. `ENOENT` if
    /// nothing is cached there.
    pub fn truncate(&self, index: u64) -> Result<(), Errno> {
        let folio = self.lock_folio(index)?;
        self.mm.folio(folio).wait_writeback();
        self.mm.delete_from_page_cache(&self.mapping, folio);
        let f = self.mm.folio(folio);
        f.unlock();
        f.put();
        Ok(())
    }

    /// Truncates every folio (`truncate_inode_pages`).
    pub fn truncate_all(&self) {
        while let Some((i, _)) = self.folios().first().copied() {
            // A folio migrated meanwhile is simply found again under its new frame.
            let _ = self.truncate(i);
        }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // evict(): the inode's pages go with it.
        self.truncate_all();
    }
}

impl Memory {
    /// `unmap_mapping_folio` + `filemap_remove_folio` + private release, for a locked
    /// folio of `m`.
    fn delete_from_page_cache(&self, m: &Mapping, folio: Folio) {
        let f = self.folio(folio);
        let nr = f.nr_pages();
        // unmap_mapping_folio(): zap the PTEs in every mapping of the file.
        self.rmap_walk_file(&f, |space, first, lo, hi| {
            let g = lock(&space.ptl);
            let mut hit = false;
            for k in lo..hi {
                let slot = (first + k as isize) as usize;
                let p = Pfn(folio.0 .0 + k as u64);
                match space.pte_at(slot) {
                    Pte::Present { pfn } if pfn == p => {
                        space.set_pte_at(slot, Pte::None);
                        hit = true;
                    }
                    Pte::Migration { pfn } if pfn == p => space.set_pte_at(slot, Pte::None),
                    _ => {}
                }
            }
            drop(g);
            if hit {
                f.meta.mapcount.fetch_sub(1, Ordering::AcqRel);
                super::tlb::flush_tlb_space(space);
                f.put();
            }
        });
        // block_invalidate_folio / release_folio.
        if let Some(FolioPrivate::Buffers(b)) = self.folio_private(folio) {
            for i in 0..b.len() {
                b.lock(i);
            }
            b.clean();
            for i in 0..b.len() {
                b.unlock(i);
            }
        }
        self.free_private(folio);
        let node = f.node();
        {
            let mut g = lock(&m.i_pages);
            let idx = f.index();
            for k in 0..nr as u64 {
                if g.get(&(idx + k)) == Some(&folio) {
                    g.remove(&(idx + k));
                }
            }
            f.meta.mapping.store(0, Ordering::Release);
        }
        self.mod_node_stat(node, NodeStat::FilePages, -(nr as i64));
        if m.is_shmem() {
            self.mod_node_stat(node, NodeStat::Shmem, -(nr as i64));
        }
        if f.meta.flags.fetch_and(!pg::DIRTY, Ordering::AcqRel) & pg::DIRTY != 0
            && m.can_writeback()
        {
            self.mod_node_stat(node, NodeStat::FileDirty, -(nr as i64));
        }
        // The cache's references.
        let old = f.meta.refcount.fetch_sub(nr as i32, Ordering::AcqRel);
        debug_assert!(old > nr as i32, "the caller's reference keeps the folio");
    }
}

impl AddressSpace {
    /// `mmap(MAP_SHARED)` of pages `pgoff..pgoff + nr_pages` of `file` at `vaddr`, with
    /// every cached folio of the range mapped at once (`MAP_POPULATE`; the built-in
    /// model has no demand faults). Each folio must lie wholly inside the range, and the
    /// space must have no backend (the live backend moves only anonymous memory).
    /// Mapped folios are dirtied: a shared writable mapping may write them at any time.
    pub fn map_file(
        self: &Arc<Self>,
        vaddr: VirtAddr,
        file: &File,
        pgoff: u64,
        nr_pages: usize,
    ) -> Result<(), MmError> {
        if self.backend.is_some() {
            return Err(MmError::InvalidConfig(
                "file mappings need a space without a backend".into(),
            ));
        }
        if !Arc::ptr_eq(&self.mm, &file.mm) {
            return Err(MmError::InvalidConfig(
                "the file belongs to another memory".into(),
            ));
        }
        if vaddr.0 % PAGE_SIZE as u64 != 0 {
            return Err(MmError::Misaligned {
                vaddr,
                align_bytes: PAGE_SIZE,
            });
        }
        let first = self.slot(vaddr).ok_or(MmError::OutOfRange { vaddr })?;
        if nr_pages == 0
            || first
                .checked_add(nr_pages)
                .is_none_or(|e| e > self.ptes.len())
        {
            return Err(MmError::OutOfRange { vaddr });
        }
        if pgoff
            .checked_add(nr_pages as u64)
            .is_none_or(|end| end > MAX_FILE_PAGES)
        {
            return Err(MmError::InvalidConfig(format!(
                "file pages {pgoff}.. are beyond the largest file ({MAX_FILE_PAGES} pages)"
            )));
        }
        for (i, folio) in file.folios() {
            let n = self.mm.folio(folio).nr_pages() as u64;
            let inside = i >= pgoff && i + n <= pgoff + nr_pages as u64;
            let outside = i + n <= pgoff || i >= pgoff + nr_pages as u64;
            if !inside && !outside {
                return Err(MmError::Misaligned {
                    vaddr,
                    align_bytes: n as usize * PAGE_SIZE,
                });
            }
        }
        {
            let g = lock(&self.ptl);
            if (first..first + nr_pages).any(|j| self.pte_at(j) != Pte::None) {
                return Err(MmError::AlreadyMapped { vaddr });
            }
            drop(g);
        }
        let mut vmas = lock(&file.mapping.i_mmap);
        vmas.retain(|v| v.space.strong_count() > 0);
        vmas.push(FileVma {
            space: Arc::downgrade(self),
            first_slot: first,
            pgoff,
            nr_pages,
        });
        drop(vmas);
        // filemap_map_pages(): each folio under its lock, so that a folio being migrated
        // is mapped only once it is done (then as its new frame).
        let mut index = pgoff;
        while index < pgoff + nr_pages as u64 {
            let Ok(folio) = file.lock_folio(index) else {
                index += 1;
                continue;
            };
            let f = self.mm.folio(folio);
            let head_index = f.index();
            let n = f.nr_pages();
            let slot0 = first + (head_index - pgoff) as usize;
            {
                let _g = lock(&self.ptl);
                for k in 0..n {
                    self.set_pte_at(
                        slot0 + k,
                        Pte::Present {
                            pfn: Pfn(folio.0 .0 + k as u64),
                        },
                    );
                }
                f.meta.mapcount.fetch_add(1, Ordering::AcqRel);
                f.get();
            }
            file.folio_mark_dirty(&f);
            f.unlock();
            f.put();
            index = head_index + n as u64;
        }
        Ok(())
    }
}
