//! File-backed and shmem folios through `migrate_pages()`: the page cache's slots,
//! references and counters, `__folio_migrate_mapping()`'s refcount freeze after the copy,
//! each `a_ops->migrate_folio` path (migrate_folio, filemap, buffer heads, norefs,
//! fallback, a filesystem's own), and the series' eligibility rules for the batch copy.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pagemig::migrate::{Mode, Reason};
use pagemig::mm::{
    FaultHooks, File, FileKind, Folio, Memory, MigrateFolio, MigrateFolioOp, NodeId, NodeStat,
    Order, VirtAddr, PAGE_SIZE,
};
use pagemig::offload::{Migrator, ReasonMask};
use pagemig::Errno;

const MB: usize = 1 << 20;

/// Adds folios of the given orders back to back on node 0 and writes each page's pattern
/// through the cache. Returns (index, folio) of each.
fn fill_file(file: &File, orders: &[u8], tag: u64) -> Vec<(u64, Folio)> {
    let mut index = 0u64;
    let mut out = Vec::new();
    for &o in orders {
        let nr = 1u64 << o;
        index = index.div_ceil(nr) * nr;
        let f = file.add_folio(index, NodeId(0), Order(o)).unwrap();
        for p in 0..nr {
            file.write(
                (index + p) * PAGE_SIZE as u64,
                &pattern(tag, (index + p) as usize),
            )
            .unwrap();
        }
        out.push((index, f));
        index += nr;
    }
    out
}

/// Every page of `folios` reads its pattern back through the cache.
fn check_file(file: &File, folios: &[(u64, Folio)], mm: &Memory, tag: u64) {
    let mut buf = vec![0u8; PAGE_SIZE];
    for &(index, f) in folios {
        let nr = mm.folio(f).nr_pages() as u64;
        for p in 0..nr {
            file.read((index + p) * PAGE_SIZE as u64, &mut buf).unwrap();
            assert!(
                buf == pattern(tag, (index + p) as usize),
                "page {} lost its content",
                index + p
            );
        }
    }
}

fn register_counting(mm: &Memory) -> Arc<CountingCopier> {
    let c = Arc::new(CountingCopier::default());
    let m: Arc<dyn Migrator> = c.clone();
    mm.offload().register(m, ReasonMask::ALL).unwrap();
    c
}

fn isolated(mm: &Memory, node: u32) -> (i64, i64) {
    (
        mm.node_stat(NodeId(node), NodeStat::IsolatedAnon),
        mm.node_stat(NodeId(node), NodeStat::IsolatedFile),
    )
}

#[test]
fn page_cache_folios_move_with_their_slots_mappings_references_and_counters() {
    for mode in [Mode::Async, Mode::Sync] {
        let mm = memory(32 * MB);
        let copier = register_counting(&mm);
        let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap));
        let folios = fill_file(&file, &[0, 2, 9, 0], 1);
        let nr_pages = 1 + 4 + 512 + 1;
        let sp = space(&mm, 8 * MB);
        sp.map_file(VirtAddr(BASE), &file, 0, 1025).unwrap();
        assert_eq!(
            mm.node_stat(NodeId(0), NodeStat::FilePages),
            nr_pages as i64
        );
        assert_eq!(
            mm.node_stat(NodeId(0), NodeStat::FileDirty),
            nr_pages as i64
        );
        let srcs: Vec<Folio> = folios.iter().map(|x| x.1).collect();
        for &f in &srcs {
            // The cache's nr_pages, the mapping's one.
            let fr = mm.folio(f);
            assert_eq!(fr.ref_count(), fr.nr_pages() as i32 + 1);
        }
        let mut list = isolate_all(&mm, &srcs);
        assert_eq!(isolated(&mm, 0), (0, nr_pages as i64));
        let res = migrate_to(&mm, &mut list, 1, mode, Reason::Syscall);
        assert_eq!(res.rc, Ok(0), "{mode:?}");
        assert!(list.is_empty());
        assert_eq!(res.nr_succeeded, nr_pages);
        assert_eq!(res.stats.nr_thp_succeeded, 1);
        assert_eq!(
            res.stats.nr_copied_by_batch, 4,
            "page-cache folios of filemap_migrate_folio are batch-copied"
        );
        assert_eq!(copier.nr_copied.load(Ordering::SeqCst), 4);
        assert_eq!(isolated(&mm, 0), (0, 0), "NR_ISOLATED_FILE drops back");
        for &(index, old) in &folios {
            let now = file.folio_at(index).unwrap();
            assert_ne!(now, old);
            let f = mm.folio(now);
            assert_eq!(f.node(), NodeId(1));
            assert_eq!(f.index(), index);
            assert_eq!(f.ref_count(), f.nr_pages() as i32 + 1, "cache + mapping");
            assert_eq!(f.mapcount(), 1);
            assert!(f.test(pagemig::mm::pg::DIRTY), "dirty moved with the folio");
            assert!(!f.test(pagemig::mm::pg::SWAPBACKED));
            for k in 0..f.nr_pages() as u64 {
                assert_eq!(file.folio_at(index + k), Some(now), "every slot");
            }
            assert_eq!(
                sp.folio_at(VirtAddr(BASE + index * PAGE_SIZE as u64)),
                Some(now),
                "the mapping maps the new folio"
            );
        }
        for (item, n) in [
            (NodeStat::FilePages, nr_pages as i64),
            (NodeStat::FileDirty, nr_pages as i64),
        ] {
            assert_eq!(mm.node_stat(NodeId(0), item), 0, "{item:?} left node 0");
            assert_eq!(mm.node_stat(NodeId(1), item), n, "{item:?} on node 1");
        }
        check_file(&file, &folios, &mm, 1);
        check_filled_at(&sp, nr_pages, 1);
        drop(sp);
        drop(file);
        assert_eq!(mm.node_stat(NodeId(1), NodeStat::FilePages), 0);
        assert_frames_balanced(&mm);
    }
}

/// Reads every page of the first `n` pages of the space (mapped from file page 0).
fn check_filled_at(sp: &Arc<pagemig::mm::AddressSpace>, n: usize, tag: u64) {
    let acc = sp.accessor();
    let mut buf = vec![0u8; PAGE_SIZE];
    // The file has holes where folios were aligned; read only cached pages.
    for page in 0..1025usize {
        let va = VirtAddr(BASE + (page * PAGE_SIZE) as u64);
        if sp.folio_at(va).is_none() {
            continue;
        }
        acc.read(va, &mut buf).unwrap();
        assert!(
            buf == pattern(tag, page),
            "mapped page {page} lost its content"
        );
    }
    let _ = n;
}

#[test]
fn shmem_folios_move_swap_backed_and_counted_as_shmem() {
    let mm = memory(16 * MB);
    let copier = register_counting(&mm);
    let file = mm.create_file(FileKind::Shmem);
    let folios = fill_file(&file, &[0, 0, 4, 9], 2);
    let nr_pages = 1 + 1 + 16 + 512;
    assert_eq!(mm.node_stat(NodeId(0), NodeStat::Shmem), nr_pages as i64);
    assert_eq!(
        mm.node_stat(NodeId(0), NodeStat::FileDirty),
        0,
        "shmem does not write back"
    );
    let srcs: Vec<Folio> = folios.iter().map(|x| x.1).collect();
    let mut list = isolate_all(&mm, &srcs);
    assert_eq!(
        isolated(&mm, 0),
        (nr_pages as i64, 0),
        "shmem is swap-backed: NR_ISOLATED_ANON"
    );
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Demotion);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(res.stats.nr_copied_by_batch, 4);
    assert_eq!(copier.nr_copied.load(Ordering::SeqCst), 4);
    // MR_DEMOTION: the caller (reclaim) accounts its isolated folios itself.
    assert_eq!(isolated(&mm, 0), (nr_pages as i64, 0));
    mm.mod_node_stat(NodeId(0), NodeStat::IsolatedAnon, -(nr_pages as i64));
    for &(index, _) in &folios {
        let f = mm.folio(file.folio_at(index).unwrap());
        assert_eq!(f.node(), NodeId(1));
        assert!(f.test(pagemig::mm::pg::SWAPBACKED));
    }
    assert_eq!(mm.node_stat(NodeId(0), NodeStat::Shmem), 0);
    assert_eq!(mm.node_stat(NodeId(1), NodeStat::Shmem), nr_pages as i64);
    assert_eq!(
        mm.node_stat(NodeId(1), NodeStat::FilePages),
        nr_pages as i64
    );
    check_file(&file, &folios, &mm, 2);
    drop(file);
    assert_frames_balanced(&mm);
}

/// A reference taken (and the source written through it) after the copy and before the
/// freeze, in pass 0; released before pass 1.
#[derive(Default)]
struct LateReference {
    taken: Mutex<Option<Folio>>,
    fired: AtomicBool,
}

impl FaultHooks for LateReference {
    fn after_copy_before_freeze(&self, mm: &Memory, src: Folio) {
        if self.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        // A get_user_pages() holder: its reference, then its write through the pin.
        mm.folio(src).get();
        mm.page_write(src.pfn(), 0, b"written after the copy");
        *self.taken.lock().unwrap() = Some(src);
    }
    fn before_move(&self, mm: &Memory, _src: Folio, pass: usize) {
        if pass == 1 {
            if let Some(f) = self.taken.lock().unwrap().take() {
                mm.folio_put(f);
            }
        }
    }
}

#[test]
fn a_reference_taken_after_the_copy_fails_the_freeze_and_the_retry_copies_again() {
    // Page cache (the xarray freeze), and an anonymous THP (large rmappable: frozen to
    // leave the deferred split queue).
    for kind in ["file", "shmem", "anon-thp"] {
        let hook = Arc::new(LateReference::default());
        let mm = memory_with(16 * MB, Some(hook.clone()), None);
        let copier = register_counting(&mm);
        let (src, file, sp) = match kind {
            "anon-thp" => {
                let sp = space(&mm, 4 * MB);
                let f = map_filled(&sp, 1, 9, 3)[0];
                (f, None, Some(sp))
            }
            _ => {
                let k = if kind == "shmem" {
                    FileKind::Shmem
                } else {
                    FileKind::Regular(MigrateFolioOp::Filemap)
                };
                let file = Arc::new(mm.create_file(k));
                let f = fill_file(&file, &[0], 3)[0].1;
                (f, Some(file), None)
            }
        };
        let mut list = isolate_all(&mm, &[src]);
        let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
        assert_eq!(res.rc, Ok(0), "{kind}: the retry migrates it");
        assert!(hook.fired.load(Ordering::SeqCst));
        assert_eq!(copier.nr_copied.load(Ordering::SeqCst), 1);
        assert_eq!(
            (res.stats.nr_copied_by_batch, res.stats.nr_copied_on_cpu),
            (1, 1),
            "{kind}: pass 0 consumed the batch copy's mark; pass 1 copied again"
        );
        let mut buf = vec![0u8; 22];
        match (&file, &sp) {
            (Some(file), _) => {
                let now = file.folio_at(0).unwrap();
                assert_eq!(mm.folio(now).node(), NodeId(1));
                file.read(0, &mut buf).unwrap();
            }
            (_, Some(sp)) => {
                assert_eq!(node_at(sp, BASE), 1);
                sp.accessor().read(VirtAddr(BASE), &mut buf).unwrap();
            }
            _ => unreachable!(),
        }
        assert_eq!(
            &buf[..],
            b"written after the copy",
            "{kind}: the write made after the first copy is in the new folio"
        );
        drop((file, sp));
        assert_frames_balanced(&mm);
    }
}

/// Writes through a buffer head right after the batch copy, before the move phase.
#[derive(Default)]
struct JournalWrite {
    buffers: Mutex<Option<Arc<pagemig::mm::Buffers>>>,
    done: AtomicBool,
}

impl FaultHooks for JournalWrite {
    fn after_batch_copy(&self, mm: &Memory) {
        if let Some(b) = self.buffers.lock().unwrap().as_ref() {
            b.write(mm, 1, 0, b"journal block").unwrap();
            self.done.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn folios_with_buffer_heads_are_not_batch_copied_so_a_journal_write_meanwhile_is_kept() {
    for op in [MigrateFolioOp::Buffer, MigrateFolioOp::BufferNorefs] {
        let hook = Arc::new(JournalWrite::default());
        let mm = memory_with(8 * MB, Some(hook.clone()), None);
        let copier = register_counting(&mm);
        let file = mm.create_file(FileKind::Regular(op.clone()));
        let folios = fill_file(&file, &[0, 0], 4);
        let b = file.attach_buffers(0, 1024).unwrap();
        assert_eq!(b.len(), 4);
        *hook.buffers.lock().unwrap() = Some(b.clone());
        let srcs: Vec<Folio> = folios.iter().map(|x| x.1).collect();
        assert_eq!(mm.folio(srcs[0]).ref_count(), 2, "cache + private data");
        let mut list = isolate_all(&mm, &srcs);
        let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
        assert_eq!(res.rc, Ok(0), "{op:?}");
        assert!(hook.done.load(Ordering::SeqCst));
        assert_eq!(
            copier.nr_copied.load(Ordering::SeqCst),
            1,
            "{op:?}: only the folio without buffers went to the batch copy"
        );
        assert_eq!(
            (res.stats.nr_copied_by_batch, res.stats.nr_copied_on_cpu),
            (1, 1)
        );
        let now = file.folio_at(0).unwrap();
        assert_eq!(mm.folio(now).node(), NodeId(1));
        assert_eq!(b.folio(), Some(now), "the buffers point at the new folio");
        assert!(mm.folio(now).test(pagemig::mm::pg::PRIVATE));
        assert_eq!(mm.folio(now).ref_count(), 2, "cache + private");
        let mut buf = vec![0u8; 13];
        file.read(1024, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            b"journal block",
            "{op:?}: the journal's write is kept"
        );
        let mut through_bh = vec![0u8; 13];
        b.read(&mm, 1, 0, &mut through_bh).unwrap();
        assert_eq!(through_bh, buf, "the buffer head reads the new folio");
        let mut page = vec![0u8; PAGE_SIZE];
        file.read(PAGE_SIZE as u64, &mut page).unwrap();
        assert!(page == pattern(4, 1));
        // A write through the buffers after the move lands in the new folio.
        b.write(&mm, 0, 0, b"after").unwrap();
        file.read(0, &mut buf[..5]).unwrap();
        assert_eq!(&buf[..5], b"after");
        *hook.buffers.lock().unwrap() = None;
        drop(file);
        assert_eq!(b.folio(), None, "truncation detached the buffers");
        assert_eq!(b.write(&mm, 0, 0, b"x"), Err(Errno::NoEnt));
        assert_frames_balanced(&mm);
    }
}

fn release_buffer_later(b: Arc<pagemig::mm::Buffers>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        b.unlock(2);
    })
}

#[test]
fn a_locked_buffer_makes_async_retry_and_fail_and_sync_wait() {
    let mm = memory(8 * MB);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Buffer));
    let folios = fill_file(&file, &[0], 5);
    let b = file.attach_buffers(0, 512).unwrap();
    // I/O in flight on block 2 holds its buffer lock.
    b.lock(2);
    let mut list = isolate_all(&mm, &[folios[0].1]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(1), "async never waits for a buffer lock");
    assert_eq!(res.stats.failures_by_errno(), vec![(Errno::Again, 1)]);
    assert_eq!(list, vec![folios[0].1], "left on the list, intact");
    assert_eq!(mm.folio(folios[0].1).node(), NodeId(0));
    let t = release_buffer_later(b.clone());
    let res = migrate_to(&mm, &mut list, 1, Mode::Sync, Reason::Compaction);
    t.join().unwrap();
    assert_eq!(res.rc, Ok(0), "sync waits for the buffer lock");
    assert_eq!(b.folio(), file.folio_at(0));
    check_file(&file, &[(0, folios[0].1)], &mm, 5);
    drop(file);
    assert_frames_balanced(&mm);
}

#[test]
fn norefs_refuses_a_folio_whose_buffer_heads_have_users() {
    let mm = memory(8 * MB);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::BufferNorefs));
    let folios = fill_file(&file, &[0], 6);
    let b = file.attach_buffers(0, 1024).unwrap();
    b.get_bh(3);
    let mut list = isolate_all(&mm, &[folios[0].1]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(1));
    assert_eq!(res.stats.failures_by_errno(), vec![(Errno::Again, 1)]);
    assert_eq!(mm.folio(folios[0].1).node(), NodeId(0));
    // buffer_migrate_folio (without norefs) does not look at b_count.
    let plain = mm.create_file(FileKind::Regular(MigrateFolioOp::Buffer));
    let pf = fill_file(&plain, &[0], 7);
    let pb = plain.attach_buffers(0, 1024).unwrap();
    pb.get_bh(3);
    let mut plist = isolate_all(&mm, &[pf[0].1]);
    assert_eq!(
        migrate_to(&mm, &mut plist, 1, Mode::Async, Reason::Compaction).rc,
        Ok(0)
    );
    pb.put_bh(3);
    b.put_bh(3);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(0), "no user left");
    check_file(&file, &[(0, folios[0].1)], &mm, 6);
    drop((file, plain));
    assert_frames_balanced(&mm);
}

#[test]
fn without_migrate_folio_dirty_folios_are_ebusy_and_private_data_must_be_released() {
    let mm = memory(8 * MB);
    let copier = register_counting(&mm);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::None));
    let folios = fill_file(&file, &[0, 0, 0], 8);
    let srcs: Vec<Folio> = folios.iter().map(|x| x.1).collect();
    // Folio 0 stays dirty; folio 1 is written back; folio 2 is written back and has
    // buffer heads with a user (they cannot be released).
    for i in [1u64, 2] {
        let f = file.start_writeback(i).unwrap();
        file.end_writeback(f).unwrap();
    }
    let b = file.attach_buffers(2, 4096).unwrap();
    b.get_bh(0);
    for mode in [Mode::Async, Mode::Sync] {
        let mut list = isolate_all(&mm, &[srcs[0], srcs[2]]);
        let res = migrate_to(&mm, &mut list, 1, mode, Reason::Compaction);
        assert_eq!(res.rc, Ok(2), "{mode:?}");
        let want = if mode == Mode::Sync {
            // Busy buffers are EAGAIN in sync mode: retried, then given up.
            vec![(Errno::Again, 1), (Errno::Busy, 1)]
        } else {
            vec![(Errno::Busy, 2)]
        };
        let mut got = res.stats.failures_by_errno();
        got.sort_by_key(|(e, _)| e.index());
        let mut want = want;
        want.sort_by_key(|(e, _)| e.index());
        assert_eq!(got, want, "{mode:?}");
        mm.putback_movable_pages(&mut list);
    }
    b.put_bh(0);
    // Now folio 2's buffers are free: released, then migrated; folio 1 is clean.
    let copied_before = copier.nr_copied.load(Ordering::SeqCst);
    let mut list = isolate_all(&mm, &[srcs[1], srcs[2]]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(
        copier.nr_copied.load(Ordering::SeqCst) - copied_before,
        1,
        "the folio with buffers was not batch-copied (they were released in the move)"
    );
    let now = file.folio_at(2).unwrap();
    assert!(!mm.folio(now).test(pagemig::mm::pg::PRIVATE));
    assert_eq!(b.folio(), None, "released buffers point nowhere");
    assert_eq!(mm.folio(now).ref_count(), 1, "only the cache's reference");
    check_file(&file, &folios, &mm, 8);
    drop(file);
    assert_frames_balanced(&mm);
}

/// A filesystem whose `migrate_folio` finishes the source's contents (a checksum block,
/// say) before calling the generic helper: a copy made before the callback would miss it.
#[derive(Default)]
struct SealingFs {
    calls: AtomicUsize,
}

impl MigrateFolio for SealingFs {
    fn migrate_folio(
        &self,
        mm: &Memory,
        _dst: Folio,
        src: Folio,
        _mode: Mode,
        filemap_migrate_folio: &mut dyn FnMut() -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        mm.page_write(src.pfn(), 100, b"sealed");
        filemap_migrate_folio()
    }
}

#[test]
fn a_filesystems_own_migrate_folio_runs_and_its_folios_are_never_batch_copied() {
    let fs = Arc::new(SealingFs::default());
    let mm = memory(8 * MB);
    let copier = register_counting(&mm);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Custom(fs.clone())));
    let folios = fill_file(&file, &[0, 1], 9);
    let srcs: Vec<Folio> = folios.iter().map(|x| x.1).collect();
    let mut list = isolate_all(&mm, &srcs);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(fs.calls.load(Ordering::SeqCst), 2);
    assert_eq!(copier.nr_copied.load(Ordering::SeqCst), 0);
    assert_eq!(res.stats.nr_copied_by_batch, 0);
    for &(index, _) in &folios {
        let mut buf = [0u8; 6];
        file.read(index * PAGE_SIZE as u64 + 100, &mut buf).unwrap();
        assert_eq!(
            &buf, b"sealed",
            "the callback's write reached the new folio"
        );
        assert_eq!(mm.folio(file.folio_at(index).unwrap()).node(), NodeId(1));
    }
    drop(file);
    assert_frames_balanced(&mm);
}

#[test]
fn inaccessible_mappings_are_eopnotsupp_and_stay_put() {
    let mm = memory(8 * MB);
    let file = mm.create_file(FileKind::Inaccessible);
    let folios = fill_file(&file, &[0], 10);
    let mut list = isolate_all(&mm, &[folios[0].1]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Sync, Reason::Compaction);
    assert_eq!(res.rc, Ok(1));
    assert_eq!(
        res.stats.failures_by_errno(),
        vec![(Errno::NotSupported, 1)]
    );
    assert_eq!(list, vec![folios[0].1]);
    mm.putback_movable_pages(&mut list);
    assert_eq!(file.folio_at(0), Some(folios[0].1));
    check_file(&file, &folios, &mm, 10);
    drop(file);
    assert_frames_balanced(&mm);
}

#[test]
fn writeback_is_ebusy_in_async_and_waited_for_in_sync() {
    let mm = memory(8 * MB);
    let file = Arc::new(mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap)));
    let folios = fill_file(&file, &[0], 11);
    let wb = file.start_writeback(0).unwrap();
    assert_eq!(mm.node_stat(NodeId(0), NodeStat::FileDirty), 0);
    let mut list = isolate_all(&mm, &[folios[0].1]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.stats.failures_by_errno(), vec![(Errno::Busy, 1)]);
    let t = {
        let file = file.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            file.end_writeback(wb).unwrap();
        })
    };
    let res = migrate_to(&mm, &mut list, 1, Mode::Sync, Reason::Compaction);
    t.join().unwrap();
    assert_eq!(res.rc, Ok(0));
    assert!(!mm
        .folio(file.folio_at(0).unwrap())
        .test(pagemig::mm::pg::DIRTY));
    check_file(&file, &folios, &mm, 11);
    drop(file);
    assert_frames_balanced(&mm);
}

#[test]
fn a_folio_truncated_while_isolated_is_freed_under_us() {
    let mm = memory(8 * MB);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap));
    let folios = fill_file(&file, &[0, 2], 12);
    let sp = space(&mm, MB);
    sp.map_file(VirtAddr(BASE), &file, 0, 8).unwrap();
    let mut list = isolate_all(&mm, &[folios[1].1]);
    file.truncate(4).unwrap();
    assert_eq!(file.folio_at(4), None);
    assert_eq!(sp.folio_at(VirtAddr(BASE + 4 * PAGE_SIZE as u64)), None);
    assert_eq!(mm.folio(folios[1].1).ref_count(), 1, "only the isolation's");
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(res.nr_succeeded, 4, "counts as migrated");
    assert_eq!(isolated(&mm, 0), (0, 0));
    drop(sp);
    drop(file);
    assert_frames_balanced(&mm);
}

/// Fails allocations of one order on node 1.
struct FailOrder(u8);
impl FaultHooks for FailOrder {
    fn alloc_should_fail(&self, node: NodeId, order: Order) -> bool {
        node == NodeId(1) && order.0 == self.0
    }
}

#[test]
fn a_large_page_cache_folio_split_on_enomem_gives_each_page_its_own_slot() {
    let mm = memory_with(8 * MB, Some(Arc::new(FailOrder(2))), None);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap));
    let folios = fill_file(&file, &[2], 13);
    let sp = space(&mm, MB);
    sp.map_file(VirtAddr(BASE), &file, 0, 4).unwrap();
    let mut list = isolate_all(&mm, &[folios[0].1]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.stats.nr_split, 1);
    assert_eq!(
        res.rc,
        Ok(0),
        "0 once every piece of the split folio migrated"
    );
    assert!(list.is_empty(), "every piece migrated");
    for i in 0..4u64 {
        let f = mm.folio(file.folio_at(i).unwrap());
        assert_eq!(f.nr_pages(), 1);
        assert_eq!(f.node(), NodeId(1));
        assert_eq!(f.index(), i);
        assert_eq!(f.ref_count(), 2, "page {i}: cache + mapping");
        assert_eq!(
            sp.folio_at(VirtAddr(BASE + i * PAGE_SIZE as u64)),
            Some(f.folio())
        );
    }
    check_file(&file, &folios, &mm, 13);
    assert_eq!(mm.node_stat(NodeId(1), NodeStat::FilePages), 4);
    assert_eq!(isolated(&mm, 0), (0, 0));
    drop(sp);
    drop(file);
    assert_frames_balanced(&mm);
}

#[test]
fn a_file_mapped_by_two_spaces_moves_in_both_and_new_mappings_see_the_new_folio() {
    let mm = memory(8 * MB);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap));
    let folios = fill_file(&file, &[0, 0, 0, 0], 14);
    let a = space(&mm, MB);
    let b = mm.new_space(VirtAddr(BASE + (1 << 30)), MB).unwrap();
    a.map_file(VirtAddr(BASE), &file, 0, 4).unwrap();
    // b maps pages 2..4 only.
    b.map_file(VirtAddr(BASE + (1 << 30)), &file, 2, 2).unwrap();
    assert_eq!(mm.folio(folios[2].1).mapcount(), 2);
    let srcs: Vec<Folio> = folios.iter().map(|x| x.1).collect();
    let mut list = isolate_all(&mm, &srcs);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(0));
    for i in 0..4u64 {
        let now = file.folio_at(i).unwrap();
        assert_eq!(a.folio_at(VirtAddr(BASE + i * PAGE_SIZE as u64)), Some(now));
        let want_mc = if i >= 2 { 2 } else { 1 };
        assert_eq!(mm.folio(now).mapcount(), want_mc);
        assert_eq!(mm.folio(now).ref_count(), 1 + want_mc);
    }
    assert_eq!(
        b.folio_at(VirtAddr(BASE + (1 << 30))),
        file.folio_at(2),
        "b's first page is file page 2"
    );
    let c = mm.new_space(VirtAddr(BASE + (2 << 30)), MB).unwrap();
    c.map_file(VirtAddr(BASE + (2 << 30)), &file, 0, 4).unwrap();
    assert_eq!(c.folio_at(VirtAddr(BASE + (2 << 30))), file.folio_at(0));
    drop((a, b, c));
    drop(file);
    assert_frames_balanced(&mm);
}

#[test]
fn bad_page_cache_input_is_an_error_not_a_panic() {
    let mm = memory(8 * MB);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap));
    assert!(
        file.add_folio(1, NodeId(0), Order(2)).is_err(),
        "misaligned"
    );
    file.add_folio(0, NodeId(0), Order(0)).unwrap();
    assert!(
        file.add_folio(0, NodeId(0), Order(0)).is_err(),
        "cached already"
    );
    assert!(file.add_folio(8, NodeId(7), Order(0)).is_err(), "no node 7");
    assert!(
        file.add_folio(u64::MAX, NodeId(0), Order(0)).is_err(),
        "overflow"
    );
    assert!(
        file.add_folio(pagemig::mm::filemap::MAX_FILE_PAGES, NodeId(0), Order(0))
            .is_err(),
        "beyond the largest file"
    );
    assert_eq!(file.write(u64::MAX, b"xy"), Err(Errno::Inval));
    assert_eq!(file.read(u64::MAX - 1, &mut [0u8; 4]), Err(Errno::Inval));
    assert_eq!(file.write(PAGE_SIZE as u64, b"x"), Err(Errno::NoEnt));
    let mut b = [0u8; 1];
    assert_eq!(file.read(5 * PAGE_SIZE as u64, &mut b), Err(Errno::NoEnt));
    assert_eq!(file.truncate(3), Err(Errno::NoEnt));
    assert_eq!(file.attach_buffers(0, 3).unwrap_err(), Errno::Inval);
    file.attach_buffers(0, 1024).unwrap();
    assert_eq!(file.attach_buffers(0, 1024).unwrap_err(), Errno::Busy);
    let shm = mm.create_file(FileKind::Shmem);
    shm.add_folio(0, NodeId(0), Order(0)).unwrap();
    assert_eq!(
        shm.start_writeback(0),
        Err(Errno::Inval),
        "shmem has no writeback"
    );
    let sp = space(&mm, MB);
    assert!(sp.map_file(VirtAddr(BASE + 1), &file, 0, 1).is_err());
    assert!(sp.map_file(VirtAddr(BASE), &file, 0, 1 << 20).is_err());
    assert!(sp.map_file(VirtAddr(BASE), &file, u64::MAX, 1).is_err());
    assert!(sp.map_file(VirtAddr(BASE), &file, 0, usize::MAX).is_err());
    assert!(sp.zap_range(VirtAddr(BASE), usize::MAX).is_err());
    assert!(sp.zap_range(VirtAddr(BASE + 1), 1).is_err(), "misaligned");
    sp.map_file(VirtAddr(BASE), &file, 0, 1).unwrap();
    assert!(
        sp.map_file(VirtAddr(BASE), &shm, 0, 1).is_err(),
        "already mapped"
    );
    let big = mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap));
    big.add_folio(0, NodeId(0), Order(2)).unwrap();
    assert!(
        sp.map_file(VirtAddr(BASE + 16 * PAGE_SIZE as u64), &big, 0, 2)
            .is_err(),
        "a folio straddling the mapping's end"
    );
    drop(sp);
    drop((file, shm, big));
    assert_frames_balanced(&mm);
}

#[test]
fn a_large_folio_under_writeback_is_not_split() {
    // Found by the property test: split pieces kept PG_writeback that nobody would end.
    let mm = memory_with(8 * MB, Some(Arc::new(FailOrder(2))), None);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap));
    let folios = fill_file(&file, &[2], 15);
    let wb = file.start_writeback(0).unwrap();
    let mut list = isolate_all(&mm, &[folios[0].1]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    let nr_split = res.stats.nr_split;
    if nr_split > 0 {
        // End the I/O on every piece so that the failure below does not hang the drop.
        for (_, f) in file.folios() {
            let _ = file.end_writeback(f);
        }
    }
    assert_eq!(nr_split, 0, "a folio under writeback is EBUSY to split");
    assert_eq!(res.stats.failures_by_errno(), vec![(Errno::NoMem, 1)]);
    assert_eq!(list, vec![folios[0].1]);
    assert_eq!(mm.folio(file.folio_at(3).unwrap()).nr_pages(), 4);
    mm.putback_movable_pages(&mut list);
    file.end_writeback(wb).unwrap();
    assert_eq!(
        file.end_writeback(wb),
        Err(Errno::Inval),
        "not under writeback"
    );
    drop(file);
    assert_frames_balanced(&mm);
}

#[test]
fn page_cache_lookups_racing_with_splits_keep_every_reference() {
    // Found by the stress run: a lookup's reference taken between the split's refcount
    // check and the pieces' new counts was lost, and the folio was freed while mapped.
    let mm = memory_with(16 * MB, Some(Arc::new(FailOrder(2))), None);
    let file = Arc::new(mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap)));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (file, stop) = (file.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..64u64 {
                    if let Some(f) = file.get_folio(i) {
                        file.memory().folio_put(f);
                        n += 1;
                    }
                }
            }
            n
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    let mut splits = 0;
    while std::time::Instant::now() < deadline {
        let folios = fill_file(&file, &[2; 16], 16);
        let srcs: Vec<Folio> = folios.iter().map(|x| x.1).collect();
        let mut list = isolate_all(&mm, &srcs);
        let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
        mm.putback_movable_pages(&mut list);
        // (A split fails with EAGAIN while the reader holds the folio.)
        splits += res.stats.nr_split;
        check_file(&file, &folios, &mm, 16);
        // (The reader may hold a truncated folio a moment longer: frames are counted at
        // the end.)
        file.truncate_all();
    }
    stop.store(true, Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0 && splits > 0);
    drop(file);
    assert_frames_balanced(&mm);
}

#[test]
fn a_write_through_a_buffer_head_dirties_the_folio_and_counts_it() {
    let mm = memory(8 * MB);
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Buffer));
    let folios = fill_file(&file, &[0], 17);
    let f = file.start_writeback(0).unwrap();
    file.end_writeback(f).unwrap();
    assert_eq!(mm.node_stat(NodeId(0), NodeStat::FileDirty), 0, "clean");
    let b = file.attach_buffers(0, 1024).unwrap();
    b.write(&mm, 2, 0, b"journal").unwrap();
    assert!(b.is_dirty(2) && !b.is_dirty(1));
    assert!(mm.folio(folios[0].1).test(pagemig::mm::pg::DIRTY));
    assert_eq!(
        mm.node_stat(NodeId(0), NodeStat::FileDirty),
        1,
        "mark_buffer_dirty"
    );
    b.write(&mm, 3, 0, b"again").unwrap();
    assert_eq!(
        mm.node_stat(NodeId(0), NodeStat::FileDirty),
        1,
        "counted once"
    );
    drop(file);
    assert_eq!(mm.node_stat(NodeId(0), NodeStat::FileDirty), 0);
    assert_frames_balanced(&mm);
}
