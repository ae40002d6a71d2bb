//! The `UFFDIO_MOVE` batching of a region: its backend queues the unmaps of a TLB batch
//! and the remaps of a migration batch and performs them one kernel call per run of pages
//! contiguous both in the program and in the arena (one kernel TLB shootdown per run, as
//! `try_to_unmap_flush` gives the kernel one per batch), redoing a failed run folio by folio.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use pagemig::mm::{AddressSpace, FailedUnmap, Pfn, SpaceBackend, VirtAddr, PAGE_SIZE};
use pagemig::sync::lock;
use pagemig::Errno;

use crate::counters::inc;
use crate::handler::Shared;
use crate::sys;

/// One queued move: the pages at `va` and the frames from `pfn`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mv {
    pub(crate) va: usize,
    pub(crate) pfn: Pfn,
    pub(crate) nr: usize,
}

/// An unmap queued by a TLB batch (its id).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueuedOut {
    pub(crate) batch: u64,
    pub(crate) mv: Mv,
}

/// Consecutive flushes with failed moves into the program before it counts as an error.
pub(crate) const REMAP_GIVE_UP: u32 = 64;

/// What a region's backend has queued. Its lock is also the lock of every kernel move of
/// the region's pages and of the fix-ups that follow a move (`fix_zero_pages`,
/// `fix_wrong_nodes`): a fix-up moves a page out of the program and back, and looks at
/// pages around the ones moved (the rest of a THP the move split), so two of them at once
/// — the fault handler's after a move in, a migrating thread's after a move out — would
/// move the same page from under each other (seen as a page whose slot was filled while
/// the program mapped the zero page, and a program that hung on it).
#[derive(Default)]
pub(crate) struct Pending {
    /// Consecutive flushes that left moves into the program queued.
    pub(crate) failed_flushes: u32,
    /// Unmaps queued until their batch's TLB flush: program -> arena slot.
    pub(crate) out: Vec<QueuedOut>,
    /// Remaps queued until the end of the batch: arena slot -> program.
    pub(crate) inn: Vec<Mv>,
}

/// The backend of one region: the glue between the core's shadow page table and the
/// program's real pages.
pub(crate) struct RegionBackend {
    pub(crate) shared: Arc<Shared>,
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) order: u8,
    pub(crate) placement: AtomicU32,
    /// First touches interleaved over the nodes, folio by folio.
    pub(crate) interleave: bool,
    /// Folios a first touch populates (the faulting one and the untouched ones after it).
    pub(crate) fault_around: usize,
    pub(crate) batch_moves: AtomicBool,
    pub(crate) pending: Mutex<Pending>,
    pub(crate) space: OnceLock<Weak<AddressSpace>>,
    /// Per base page of the region: 1 + the pfn of the frame its page came from at its last
    /// move in (0: none yet). Right for every page the program maps now, which is all
    /// `fix_zero_pages` asks about.
    pub(crate) frames: Vec<AtomicU64>,
    /// Set (under the pending lock) when its [`LiveRegion`](crate::LiveRegion) is dropped,
    /// before the range is unmapped: from then on the range may be another region's, so
    /// this backend makes no more kernel calls on it, the fault handler no longer finds it,
    /// and anything still queued is dropped. Whoever still holds the backend (an
    /// end-of-batch flush, a fault in flight) holds a dead one.
    pub(crate) dead: AtomicBool,
    /// Held by the fault handler while it serves a fault of this region, and by
    /// [`LiveRegion::remake`](crate::LiveRegion::remake) while it checks that no page was
    /// ever touched and retires this backend: a first touch is then either wholly before
    /// (and the region is not remade) or finds the backend dead (and faults again on the
    /// new one).
    pub(crate) faulting: Mutex<()>,
}

/// The error of a failed `UFFDIO_MOVE` as the kernel gave it (`EEXIST` for a page
/// already there, `EBUSY` for one shared with a child, ...). Only a number [`Errno`] does
/// not name, or an error without one, becomes `EINVAL`, and is reported on stderr once
/// with its real value.
pub(crate) fn move_errno(e: &std::io::Error) -> Errno {
    match e.raw_os_error().and_then(Errno::from_raw) {
        Some(errno) => errno,
        None => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                eprintln!("pagemig live: UFFDIO_MOVE failed with {e}; counted as EINVAL")
            });
            Errno::Inval
        }
    }
}

/// Whether the page of a move from `src` to `dst` is at `dst` now: `src` empty and `dst`
/// mapped.
fn moved_anyway(pm: &crate::kernel::Pagemap, src: usize, dst: usize) -> bool {
    use crate::kernel::PM_PRESENT;
    match (pm.range(src, 1), pm.range(dst, 1)) {
        (Ok(a), Ok(b)) => a[0] & PM_PRESENT == 0 && b[0] & PM_PRESENT != 0,
        _ => false,
    }
}

/// Direction of a run of moves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// program -> arena slot
    Out,
    /// arena slot -> program
    In,
}

impl RegionBackend {
    pub(crate) fn slot(&self, pfn: Pfn) -> usize {
        self.shared.mm.frame_addr(pfn)
    }

    pub(crate) fn contains(&self, addr: usize) -> bool {
        addr >= self.base && addr - self.base < self.len
    }

    /// Before a 2 MiB folio moves into the program: its frame's arena range must be one
    /// PMD-mapped huge page, or the kernel moves it page by page and the program's huge
    /// page is split (and stays split: every later move of it is 512 PTEs). An arena range
    /// that ever held base pages (frames of a small-folio region, a base-page fallback, a
    /// zero-page fix-up) keeps a page table after its pages came back, so it is collapsed
    /// here (`MADV_COLLAPSE`; on a range that is a huge page already it returns at once).
    fn collapse_huge_slots(&self, va: usize, slot: usize, len: usize) {
        const PMD: usize = 2 << 20;
        if va % PMD != 0 || slot % PMD != 0 || len % PMD != 0 {
            return;
        }
        for off in (0..len).step_by(PMD) {
            if sys::collapse(slot + off, PMD).is_err() {
                inc(&self.shared.counters.huge_slot_collapses_failed, 1);
            }
        }
    }

    /// One `UFFDIO_MOVE` of `len` bytes; on an error the bytes moved before it.
    pub(crate) fn mv(
        &self,
        dir: Dir,
        va: usize,
        slot: usize,
        len: usize,
    ) -> Result<(), (Errno, usize)> {
        let c = &self.shared.counters;
        // A move in wakes the waiting threads only after `fix_zero_pages` has looked at
        // what arrived.
        let check = dir == Dir::In && self.shared.pagemap.is_some();
        if dir == Dir::In && self.order == pagemig::mm::HPAGE_PMD_ORDER {
            self.collapse_huge_slots(va, slot, len);
        }
        let (dst, src, mode) = match dir {
            Dir::Out => (slot, va, sys::UFFDIO_MOVE_MODE_DONTWAKE),
            Dir::In if check => (va, slot, sys::UFFDIO_MOVE_MODE_DONTWAKE),
            Dir::In => (va, slot, 0),
        };
        let r = self.move_checked(dst, src, len, mode);
        let (ioctls, pages) = match dir {
            Dir::Out => (&c.unmap_ioctls, &c.pages_unmapped),
            Dir::In => (&c.remap_ioctls, &c.pages_remapped),
        };
        inc(ioctls, 1);
        let moved = match &r {
            Ok(n) | Err((_, n)) => *n,
        };
        if dir == Dir::In && moved > 0 {
            // The program's pages from `va` are now the frames from `slot`'s.
            let first = self.pfn_of_slot(slot);
            let i0 = (va - self.base) / PAGE_SIZE;
            for k in 0..moved / PAGE_SIZE {
                self.frames[i0 + k].store(first.0 + k as u64 + 1, Ordering::Release);
            }
        }
        if check {
            self.fix_zero_pages(va, moved);
            self.fix_wrong_nodes(va, moved);
            if sys::wake(&self.shared.uffd, va, len).is_err() {
                inc(&self.shared.counters.remap_errors, 1);
            }
        }
        if dir == Dir::Out && self.shared.pagemap.is_some() {
            const PMD: usize = 2 << 20;
            if moved < len {
                // A move out that stopped part way may have split a THP of the program
                // first: the pages left behind can be zero pages now.
                self.fix_zero_pages(va + moved, len - moved);
                self.fix_wrong_nodes(va + moved, len - moved);
            }
            if !(va % PMD == 0 && len % PMD == 0) {
                // Part of a THP of the program moved out (a run of small folios that moved
                // in as one THP, or a THP whose folio the core split): the kernel split the
                // THP, and its pages still in the program can be zero pages now.
                let start = (va & !(PMD - 1)).max(self.base);
                let end = (va + len).next_multiple_of(PMD).min(self.base + self.len);
                self.fix_zero_pages(start, end - start);
                self.fix_wrong_nodes(start, end - start);
            }
        }
        match r {
            Ok(n) if n == len => {
                inc(pages, (len / PAGE_SIZE) as u64);
                Ok(())
            }
            Ok(n) => {
                inc(pages, (n / PAGE_SIZE) as u64);
                Err((Errno::Again, n))
            }
            Err((e, n)) => {
                inc(pages, (n / PAGE_SIZE) as u64);
                Err((move_errno(&e), n))
            }
        }
    }

    /// `UFFDIO_MOVE` of `len` bytes from `src` to `dst`, with what the kernel reports
    /// checked against what happened. Linux 6.18 was seen to return `EEXIST` for a single
    /// page it had moved (its source empty, its destination mapped, while a program thread
    /// was writing the pages around it): taken at its word, that page was lost to the
    /// program — its address stayed empty while the shadow page table mapped it, and the
    /// thread that touched it waited forever. So where the pagemap is readable, the page
    /// at which a move stopped is looked at, counted as moved when it did move
    /// (`moves_misreported`), and the move goes on after it. A page that did not move is
    /// left to the caller's error path, as before. (A page whose move failed has its
    /// source mapped still, so it never reads as moved.)
    fn move_checked(
        &self,
        dst: usize,
        src: usize,
        len: usize,
        mode: u64,
    ) -> Result<usize, (std::io::Error, usize)> {
        let uffd = &self.shared.uffd;
        let mut r = sys::move_pages(uffd, dst, src, len, mode);
        let Some(pm) = &self.shared.pagemap else {
            return r;
        };
        while let Err((_, n)) = &r {
            let n = *n;
            if n >= len || !moved_anyway(pm, src + n, dst + n) {
                break;
            }
            inc(&self.shared.counters.moves_misreported, 1);
            let done = n + PAGE_SIZE;
            if mode & sys::UFFDIO_MOVE_MODE_DONTWAKE == 0 {
                // The kernel wakes only what it says it moved.
                let _ = sys::wake(uffd, dst + n, PAGE_SIZE);
            }
            r = if done == len {
                Ok(len)
            } else {
                match sys::move_pages(uffd, dst + done, src + done, len - done, mode) {
                    Ok(m) => Ok(done + m),
                    Err((e, m)) => Err((e, done + m)),
                }
            };
        }
        r
    }

    /// After a move into the program of `len` bytes at `va` from the arena at `slot` (or a
    /// move out that left them in the program): makes every page there that is the kernel's
    /// shared zero page a real page on its node.
    ///
    /// `UFFDIO_MOVE` splits a THP to move part of it, or to move it whole where the
    /// destination's page table is not empty (an arena range split before), and since Linux
    /// 6.12 a split maps the zero-filled pages of the THP to the shared zero page and frees
    /// them: a THP the program never wrote came back from such a round trip as 512 zero-page
    /// entries. Such a page in the program would be replaced on its first write by a page
    /// the kernel allocates after the program's policy, on whatever node that gives. So it
    /// moves back to its slot, is written there (the copy-on-write page comes from the
    /// arena's bound node, zero-filled like the page it replaces), and moves in again, a
    /// page of its own. One `pread` of the pagemap per move; a THP moved as one PMD shows
    /// exclusive pages and costs nothing more.
    ///
    /// The pages of the move are not woken yet, but a thread that touches one without having
    /// waited for it can still write the zero page first (the kernel then gives it a page
    /// after the program's policy). Its write is kept: the slot is written only while the
    /// pagemap still shows the zero page there.
    fn fix_zero_pages(&self, va: usize, len: usize) {
        if len == 0 {
            return;
        }
        let Some(pm) = &self.shared.pagemap else {
            return;
        };
        let Ok(entries) = pm.range(va, len / PAGE_SIZE) else {
            return;
        };
        let uffd = &self.shared.uffd;
        for (k, &e) in entries.iter().enumerate() {
            if !crate::kernel::pm_shared(e) {
                continue;
            }
            let v = va + k * PAGE_SIZE;
            // The frame whose page this is (its slot is a hole while the program maps it).
            let f = self.frames[(v - self.base) / PAGE_SIZE].load(Ordering::Acquire);
            if f == 0 {
                continue;
            }
            let pfn = Pfn(f - 1);
            let s = self.slot(pfn);
            // A page shared with a forked child stays where it is (the move out fails);
            // so does one the kernel holds for a moment (tried again once).
            let out = || self.move_checked(s, v, PAGE_SIZE, sys::UFFDIO_MOVE_MODE_DONTWAKE);
            if let Err((e, _)) = out().or_else(|_| {
                std::thread::yield_now();
                out()
            }) {
                self.fixup_failed(1, "the zero page's move out of the program", &e.to_string());
                continue;
            }
            // Still the zero page in the slot (no program thread wrote it meanwhile; the slot
            // is out of their reach now): a zero byte written there changes no content and
            // gives it a page of its own, from the bound node.
            if pm.range(s, 1).is_ok_and(|e| crate::kernel::pm_shared(e[0])) {
                self.shared.mm.page_write(pfn, 0, &[0]);
            }
            if self
                .move_checked(v, s, PAGE_SIZE, sys::UFFDIO_MOVE_MODE_DONTWAKE)
                .is_err()
            {
                inc(&self.shared.counters.remap_errors, 1);
            }
            // Whoever waits for it (a thread that faulted on it while it was out).
            let _ = sys::wake(uffd, v, PAGE_SIZE);
            inc(&self.shared.counters.zero_page_fixups, 1);
        }
    }

    /// On a host with several NUMA nodes, after a move into the program of `len` bytes at
    /// `va` and its zero-page fix-ups: asks the kernel where each of these pages is
    /// (`move_pages(2)` with no nodes) and migrates those not on their frame's host node
    /// there with `move_pages(2)` (`MPOL_MF_MOVE`, the kernel's own migration: the
    /// content is kept whatever the program does meanwhile).
    ///
    /// Such a page is one that was the zero page (it arrived as one, or a THP split left it
    /// behind in the program) and that a program thread wrote before its fix-up (it had
    /// not faulted on it, so nothing held it back): the kernel gave that write a page after
    /// the program's policy. Pages moved in are not woken yet, so the threads waiting for
    /// them find them on their node. Pages not in the program now (moved out) are skipped.
    fn fix_wrong_nodes(&self, va: usize, len: usize) {
        if len == 0 || !self.shared.multi_node {
            return;
        }
        let mm = &self.shared.mm;
        let addrs: Vec<usize> = (va..va + len).step_by(PAGE_SIZE).collect();
        let mut now = vec![0i32; addrs.len()];
        if crate::kernel::move_pages(&addrs, None, &mut now, 0).is_err() {
            return;
        }
        let (mut pages, mut nodes) = (Vec::new(), Vec::new());
        for (&a, &n) in addrs.iter().zip(&now) {
            let f = self.frames[(a - self.base) / PAGE_SIZE].load(Ordering::Acquire);
            if n < 0 || f == 0 {
                continue;
            }
            let want = match mm.node(mm.node_of(Pfn(f - 1))).map(|n| n.binding()) {
                Ok(&pagemig::mm::NumaBinding::Bound(h)) => h as i32,
                _ => continue,
            };
            if n != want {
                pages.push(a);
                nodes.push(want);
            }
        }
        // The kernel's migration can fail for a moment (`EBUSY`, `EAGAIN`: the page is
        // locked or has a passing extra reference): the pages not moved are tried again,
        // three times in all; what still fails is counted and said once.
        let mut last = 0i32;
        for attempt in 0..3 {
            if pages.is_empty() {
                return;
            }
            if attempt > 0 {
                std::thread::yield_now();
            }
            let mut status = vec![0i32; pages.len()];
            if let Err(e) =
                crate::kernel::move_pages(&pages, Some(&nodes), &mut status, crate::MPOL_MF_MOVE)
            {
                last = -e.raw_os_error().unwrap_or(libc::EIO);
                break;
            }
            let mut fixed = 0;
            let (mut again_p, mut again_n) = (Vec::new(), Vec::new());
            for ((&a, &n), &st) in pages.iter().zip(&nodes).zip(&status) {
                if st == n {
                    fixed += 1;
                } else {
                    last = st;
                    again_p.push(a);
                    again_n.push(n);
                }
            }
            inc(&self.shared.counters.wrong_node_fixups, fixed);
            (pages, nodes) = (again_p, again_n);
        }
        if !pages.is_empty() {
            self.fixup_failed(
                pages.len() as u64,
                "the kernel's migration to the frame's node",
                &format!("{} pages, status {last}", pages.len()),
            );
        }
    }

    /// Counts `n` pages a fix-up could not fix, and says the first such failure.
    fn fixup_failed(&self, n: u64, what: &str, why: &str) {
        if self
            .shared
            .counters
            .fixup_failures
            .fetch_add(n, Ordering::Relaxed)
            == 0
        {
            eprintln!(
                "pagemig live: a placement fix-up failed ({what}: {why}); the page may stay off \
                 its frame's node until it moves again (counted in fixup_failures)"
            );
        }
    }

    /// The frame whose arena slot is at `slot`.
    fn pfn_of_slot(&self, slot: usize) -> Pfn {
        self.shared
            .mm
            .nodes()
            .iter()
            .find_map(|n| {
                let (base, len) = n.arena_range();
                (slot >= base && slot < base + len)
                    .then(|| Pfn(n.first_pfn().0 + ((slot - base) / PAGE_SIZE) as u64))
            })
            .expect("a slot inside a node's arena")
    }

    /// Moves one folio's pages. Out of the program all or nothing (a partial move is moved
    /// back). Into the program, a large folio that cannot move whole moves page by page;
    /// the pages that still fail are returned, to be tried again.
    pub(crate) fn mv_folio_in(&self, m: Mv) -> Vec<(Mv, Errno)> {
        match self.mv_folio(Dir::In, m) {
            Ok(()) => Vec::new(),
            Err(e) if m.nr == 1 => vec![(m, e)],
            Err(_) => (0..m.nr)
                .filter_map(|i| {
                    let one = Mv {
                        va: m.va + i * PAGE_SIZE,
                        pfn: Pfn(m.pfn.0 + i as u64),
                        nr: 1,
                    };
                    self.mv_folio(Dir::In, one).err().map(|e| (one, e))
                })
                .collect(),
        }
    }

    /// Moves one folio's pages, all or nothing: a partial move is moved back.
    pub(crate) fn mv_folio(&self, dir: Dir, m: Mv) -> Result<(), Errno> {
        let (va, slot, len) = (m.va, self.slot(m.pfn), m.nr * PAGE_SIZE);
        let mut last = Errno::Again;
        // EAGAIN is a transient race inside the kernel (a folio lock, a split): retry.
        for _ in 0..8 {
            match self.mv(dir, va, slot, len) {
                Ok(()) => return Ok(()),
                Err((e, done)) => {
                    last = e;
                    if done > 0 {
                        let back = match dir {
                            Dir::Out => Dir::In,
                            Dir::In => Dir::Out,
                        };
                        if self.mv(back, va, slot, done).is_err() {
                            inc(&self.shared.counters.remap_errors, 1);
                        }
                    }
                    if e != Errno::Again {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// One folio's move in either direction; what failed.
    pub(crate) fn mv_one(&self, dir: Dir, m: Mv) -> Vec<(Mv, Errno)> {
        match dir {
            Dir::In => self.mv_folio_in(m),
            Dir::Out => self
                .mv_folio(Dir::Out, m)
                .err()
                .map(|e| (m, e))
                .into_iter()
                .collect(),
        }
    }

    /// Performs a list of moves, one `UFFDIO_MOVE` per run contiguous both in the program
    /// and in the arena; a run that fails is redone folio by folio. Returns the folios that
    /// could not be moved.
    pub(crate) fn run_moves(&self, dir: Dir, mut list: Vec<Mv>) -> Vec<(Mv, Errno)> {
        let mut failed = Vec::new();
        if list.is_empty() {
            return failed;
        }
        list.sort_unstable_by_key(|m| m.va);
        let mut i = 0;
        while i < list.len() {
            let start = i;
            let mut len = list[i].nr * PAGE_SIZE;
            let slot0 = self.slot(list[i].pfn);
            while i + 1 < list.len()
                && list[i + 1].va == list[start].va + len
                && self.shared.mm.node_of(list[i + 1].pfn)
                    == self.shared.mm.node_of(list[start].pfn)
                && self.slot(list[i + 1].pfn) == slot0 + len
            {
                len += list[i + 1].nr * PAGE_SIZE;
                i += 1;
            }
            i += 1;
            let run = &list[start..i];
            if run.len() == 1 {
                failed.extend(self.mv_one(dir, run[0]));
                continue;
            }
            match self.mv(dir, run[0].va, slot0, len) {
                Ok(()) => {}
                Err((_, done)) => {
                    // Folios wholly moved stay moved; the rest go one by one.
                    let mut off = 0;
                    for &m in run {
                        let l = m.nr * PAGE_SIZE;
                        if off + l <= done {
                            off += l;
                            continue;
                        }
                        if off < done {
                            // Partly moved: move that part back, then retry the folio.
                            let back = match dir {
                                Dir::Out => Dir::In,
                                Dir::In => Dir::Out,
                            };
                            if self.mv(back, m.va, self.slot(m.pfn), done - off).is_err() {
                                inc(&self.shared.counters.remap_errors, 1);
                            }
                        }
                        off += l;
                        failed.extend(self.mv_one(dir, m));
                    }
                }
            }
        }
        failed
    }

    /// Performs the queued remaps (the pending lock is held across the moves, so a
    /// concurrent unmap of the same page waits for its move-in).
    pub(crate) fn do_flush_remaps(&self) {
        let mut p = lock(&self.pending);
        if p.inn.is_empty() || self.dead.load(Ordering::Acquire) {
            return;
        }
        let list = std::mem::take(&mut p.inn);
        let failed = self.run_moves(Dir::In, list);
        if failed.is_empty() {
            p.failed_flushes = 0;
            return;
        }
        // The shadow maps these pages already: they stay queued and are tried again at
        // the next flush (every batch end and every fault on them flushes).
        let c = &self.shared.counters;
        inc(&c.remap_retries, failed.len() as u64);
        p.failed_flushes += 1;
        if p.failed_flushes == REMAP_GIVE_UP {
            inc(&c.remap_errors, failed.len() as u64);
            let (m, e) = failed[0];
            eprintln!(
                "pagemig live: {} page moves into the program keep failing (first: {:#x}, {} \
                 pages from frame {:#x} at {:#x}: {:?}); still trying",
                failed.len(),
                m.va,
                m.nr,
                m.pfn.0,
                self.slot(m.pfn),
                e
            );
        }
        p.inn.extend(failed.into_iter().map(|(m, _)| m));
    }
}

impl SpaceBackend for RegionBackend {
    fn unmap(&self, vaddr: VirtAddr, pfn: Pfn, nr: usize, defer: Option<u64>) -> Result<(), Errno> {
        if self.dead.load(Ordering::Acquire) {
            // The region is gone (its range may be another's now): nothing to move.
            return Err(Errno::NoEnt);
        }
        // Under the page-table lock. A queued move-in of this page must happen first.
        self.do_flush_remaps();
        let m = Mv {
            va: vaddr.0 as usize,
            pfn,
            nr,
        };
        let mut p = lock(&self.pending);
        if let (Some(batch), true) = (defer, self.batch_moves.load(Ordering::Relaxed)) {
            p.out.push(QueuedOut { batch, mv: m });
            return Ok(());
        }
        // Moves (and their fix-ups) only under the pending lock: see `Pending`.
        self.mv_folio(Dir::Out, m).inspect_err(|_| {
            inc(&self.shared.counters.unmap_failures, 1);
        })
    }

    fn flush_unmaps(&self, batch: u64) -> Vec<FailedUnmap> {
        // Only this batch's: a failure must reach the batch whose folio it is.
        let mut p = lock(&self.pending);
        let (mine, others): (Vec<QueuedOut>, Vec<QueuedOut>) = std::mem::take(&mut p.out)
            .into_iter()
            .partition(|q| q.batch == batch);
        p.out = others;
        let list: Vec<Mv> = mine.into_iter().map(|q| q.mv).collect();
        // The moves under the lock, as every move of the region's pages is (`Pending`).
        let failed = self.run_moves(Dir::Out, list);
        drop(p);
        inc(&self.shared.counters.unmap_failures, failed.len() as u64);
        failed
            .into_iter()
            .map(|(m, _)| FailedUnmap {
                vaddr: VirtAddr(m.va as u64),
                pfn: m.pfn,
                nr: m.nr,
            })
            .collect()
    }

    fn remap(&self, vaddr: VirtAddr, old: Pfn, new: Pfn, nr: usize) {
        let va = vaddr.0 as usize;
        let mut p = lock(&self.pending);
        if let Some(k) = p.out.iter().position(|q| q.mv.va == va) {
            // Its unmap is still queued: the page never left the program.
            let m = p.out.swap_remove(k).mv;
            if new == old {
                return;
            }
            // Not reached by the core (it flushes before it copies); keep the data right.
            if self.mv_folio(Dir::Out, m).is_err() {
                inc(&self.shared.counters.remap_errors, 1);
                return;
            }
        }
        p.inn.push(Mv { va, pfn: new, nr });
        let now = !self.batch_moves.load(Ordering::Relaxed);
        drop(p);
        if now {
            self.do_flush_remaps();
        }
    }

    fn flush_remaps(&self) {
        self.do_flush_remaps();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagemig::mm::{Memory, MemoryConfig, NodeId, Order};

    #[test]
    fn a_failed_move_into_the_program_keeps_the_kernels_errno() {
        for (raw, want) in [
            (libc::EEXIST, Errno::Exist),
            (libc::EBUSY, Errno::Busy),
            (libc::ENOENT, Errno::NoEnt),
            (libc::EINVAL, Errno::Inval),
            (libc::ESRCH, Errno::Srch),
            (libc::EPERM, Errno::Perm),
        ] {
            assert_eq!(move_errno(&std::io::Error::from_raw_os_error(raw)), want);
        }
        // The real call: a page moved onto a program page that is already there.
        let mm = Memory::new(MemoryConfig::with_nodes(2, 8 << 20)).unwrap();
        let live = crate::Live::new(&mm, crate::LiveConfig::default()).unwrap();
        let r = live.region(crate::RegionConfig::new(64 << 10, 0)).unwrap();
        r.populate().unwrap();
        let frame = mm.alloc_folio(NodeId(1), Order(0), 0).unwrap();
        let b = &r.backend;
        let got = b.mv(Dir::In, r.addr(), b.slot(frame.0), PAGE_SIZE);
        assert_eq!(got, Err((Errno::Exist, 0)), "a populated destination");
        mm.folio_put(frame);
    }
}
