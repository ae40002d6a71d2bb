//! `move_pages(2)` on a live region: the analogue of the kernel's `do_pages_move()`,
//! `add_page_for_migration()`, `do_move_pages_to_node()` and `do_pages_stat_array()`
//! (`mm/migrate.c`), with the man page's statuses and return value.

#![forbid(unsafe_code)]

use pagemig::migrate::{alloc_on_node, migrate_pages, Mode, Reason};
use pagemig::mm::{Folio, NodeId, Pte, VirtAddr, PAGE_SIZE};
use pagemig::Errno;

use crate::region::LiveRegion;

/// `MPOL_MF_MOVE`: move pages mapped only by this process.
pub const MPOL_MF_MOVE: i32 = 1 << 1;
/// `MPOL_MF_MOVE_ALL`: move every page (needs `CAP_SYS_NICE`, as in the kernel).
pub const MPOL_MF_MOVE_ALL: i32 = 1 << 2;

impl LiveRegion {
    /// `move_pages(2)` on this region with `pid = 0`: for every address, `nodes = None`
    /// queries the node of its page, otherwise migrates the page to `nodes[i]`. `status[i]`
    /// receives the node or a negative errno as the man page defines them (`-EFAULT`
    /// outside the region, `-ENOENT` not present or under migration, `-EBUSY` already
    /// queued or isolated, `-EACCES` mapped by several spaces without
    /// [`MPOL_MF_MOVE_ALL`]). Returns the number of pages not migrated, as the system
    /// call does; whole-call errors: `EINVAL` (bad flags, arrays of different lengths),
    /// `EPERM` ([`MPOL_MF_MOVE_ALL`] without `CAP_SYS_NICE`, queries too), `ENODEV` (a node
    /// that does not exist), `ENOMEM`.
    ///
    /// The order of work and the abort after a failed chunk are those of the kernel's
    /// `do_pages_move()`: consecutive entries for the same node are migrated together
    /// (one `migrate_pages(MIGRATE_SYNC, MR_SYSCALL)` call); if a chunk leaves pages
    /// behind, the call stops and returns them plus every page not yet attempted.
    pub fn move_pages(
        &self,
        pages: &[usize],
        nodes: Option<&[i32]>,
        status: &mut [i32],
        flags: i32,
    ) -> Result<usize, Errno> {
        if flags & !(MPOL_MF_MOVE | MPOL_MF_MOVE_ALL) != 0 || status.len() != pages.len() {
            return Err(Errno::Inval);
        }
        // kernel_move_pages(): checked before anything else, queries included.
        if flags & MPOL_MF_MOVE_ALL != 0 && !crate::kernel::has_cap_sys_nice() {
            return Err(Errno::Perm);
        }
        let Some(nodes) = nodes else {
            for (s, &a) in status.iter_mut().zip(pages) {
                *s = self.page_status(a);
            }
            return Ok(0);
        };
        if nodes.len() != pages.len() {
            return Err(Errno::Inval);
        }
        let mm = &self.backend.shared.mm;
        let migrate_all = flags & MPOL_MF_MOVE_ALL != 0;
        let nr_pages = pages.len();
        let mut list: Vec<Folio> = Vec::new();
        let mut current: Option<NodeId> = None;
        let mut start = 0;
        // move_pages_and_store_status(): Ok(()) or the value to return now.
        let flush = |list: &mut Vec<Folio>,
                     current: Option<NodeId>,
                     status: &mut [i32],
                     start: usize,
                     i: usize|
         -> Result<(), Result<usize, Errno>> {
            let Some(node) = current else {
                return Ok(());
            };
            let failed = self.do_move_pages_to_node(list, node);
            match failed {
                Err(e) => Err(Err(e)),
                Ok(0) => {
                    status[start..i].fill(node.0 as i32);
                    Ok(())
                }
                // Abort: the failures plus every page not attempted yet.
                Ok(n) => Err(Ok(n + nr_pages - i)),
            }
        };
        // Which pages this process maps alone (folio_likely_mapped_shared()): a page shared
        // copy-on-write with a forked child is not, and UFFDIO_MOVE cannot move it.
        let exclusive = self.exclusive_pages(pages);
        let mut i = 0;
        let mut err: Result<usize, Errno> = Ok(0);
        while i < nr_pages {
            let node = nodes[i];
            if node < 0 || node as usize >= mm.nodes().len() {
                err = Err(Errno::NoDev);
                break;
            }
            let node = NodeId(node as u32);
            if current.is_none() {
                current = Some(node);
                start = i;
            } else if current != Some(node) {
                if let Err(r) = flush(&mut list, current, status, start, i) {
                    return r;
                }
                start = i;
                current = Some(node);
            }
            let r =
                self.add_page_for_migration(pages[i], node, &mut list, migrate_all, exclusive[i]);
            if r > 0 {
                i += 1;
                continue;
            }
            // Already on the target node: store the node; otherwise the error.
            status[i] = if r == 0 { node.0 as i32 } else { r };
            if let Err(r) = flush(&mut list, current, status, start, i) {
                // Page i is accounted for already.
                return r.map(|n| n.saturating_sub(1));
            }
            current = None;
            i += 1;
        }
        match flush(&mut list, current, status, start, i) {
            Ok(()) => err,
            Err(r) => match err {
                Err(e) => Err(e),
                Ok(_) => r,
            },
        }
    }

    /// `do_pages_stat_array()` for one address.
    fn page_status(&self, addr: usize) -> i32 {
        if !self.backend.contains(addr) {
            return -(libc::EFAULT);
        }
        match self.space.pte(VirtAddr((addr & !(PAGE_SIZE - 1)) as u64)) {
            Ok(Pte::Present { pfn }) => self.backend.shared.mm.node_of(pfn).0 as i32,
            Ok(_) => -(libc::ENOENT),
            Err(_) => -(libc::EFAULT),
        }
    }

    /// Per address: whether the process maps its page alone, from `/proc/self/pagemap`'s
    /// `PM_MMAP_EXCLUSIVE` (read in runs, one `pread` per run of consecutive pages). Where
    /// pagemap cannot be read every page counts as exclusive: the core's own mapcount still
    /// applies, and `UFFDIO_MOVE` refuses a shared page anyway (the migration then fails
    /// with the page left where it was).
    fn exclusive_pages(&self, pages: &[usize]) -> Vec<bool> {
        let pa: Vec<usize> = pages.iter().map(|a| a & !(PAGE_SIZE - 1)).collect();
        match self
            .backend
            .shared
            .pagemap
            .as_ref()
            .map(|pm| pm.entries(&pa))
        {
            Some(Ok(pm)) => pm.iter().map(|&e| !crate::kernel::pm_shared(e)).collect(),
            _ => vec![true; pages.len()],
        }
    }

    /// `add_page_for_migration()`: 1 queued, 0 already on `node`, or a negative errno.
    /// `exclusive`: this process alone maps the page (see [`Self::exclusive_pages`]).
    fn add_page_for_migration(
        &self,
        addr: usize,
        node: NodeId,
        list: &mut Vec<Folio>,
        migrate_all: bool,
        exclusive: bool,
    ) -> i32 {
        let mm = &self.backend.shared.mm;
        if !self.backend.contains(addr) {
            return -(libc::EFAULT);
        }
        let va = VirtAddr((addr & !(PAGE_SIZE - 1)) as u64);
        let Some(folio) = self.space.get_folio(va) else {
            return -(libc::ENOENT);
        };
        let f = mm.folio(folio);
        let r = if f.node() == node {
            0
        } else if (f.mapcount() > 1 || !exclusive) && !migrate_all {
            -(libc::EACCES)
        } else if !exclusive {
            // MPOL_MF_MOVE_ALL: the kernel would move a page shared with another process;
            // UFFDIO_MOVE refuses one (DESIGN.md, "move_pages(2) against the kernel's").
            -(libc::EBUSY)
        } else if mm.isolate_folio(folio).is_err() {
            -(libc::EBUSY)
        } else {
            list.push(folio);
            1
        };
        mm.folio_put(folio);
        r
    }

    /// `do_move_pages_to_node()`: migrates the list, puts back what failed; the number of
    /// folios not migrated, or `ENOMEM`.
    fn do_move_pages_to_node(&self, list: &mut Vec<Folio>, node: NodeId) -> Result<usize, Errno> {
        if list.is_empty() {
            return Ok(0);
        }
        let mm = &self.backend.shared.mm;
        let mut alloc = alloc_on_node(node);
        let res = migrate_pages(mm, list, &mut alloc, None, Mode::Sync, Reason::Syscall)
            .map_err(|e| e.errno())?;
        mm.putback_movable_pages(list);
        list.clear();
        res.rc
    }
}
