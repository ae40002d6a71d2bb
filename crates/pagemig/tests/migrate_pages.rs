//! migrate_pages(): return conventions, modes, retries, splits, hugetlb, movable_ops,
//! poison and the batch-copy fallback.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pagemig::migrate::{alloc_on_node, migrate_pages, MigrateError, Mode, Reason};
use pagemig::mm::{
    pg, FaultHooks, Folio, Memory, MemoryConfig, MovableOps, NodeId, Order, Pfn, Pte, VirtAddr,
    PAGE_SIZE,
};
use pagemig::offload::{DefaultCopier, Migrator, ReasonMask};
use pagemig::Errno;

const MB: usize = 1 << 20;

#[test]
fn all_migrated_returns_zero_empties_the_list_and_counts_pages() {
    let mm = memory(16 * MB);
    let sp = space(&mm, 8 * MB);
    let folios = map_filled(&sp, 4, 0, 1);
    let big = sp
        .map_anon(VirtAddr(BASE + 2 * MB as u64), NodeId(0), Order(9))
        .unwrap();
    let mut list = isolate_all(&mm, &folios);
    mm.isolate_folio(big).unwrap();
    list.push(big);
    let before = mm.vm_events();
    let res = migrate_to(&mm, &mut list, 1, Mode::Sync, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    assert!(list.is_empty());
    assert_eq!(res.nr_succeeded, 4 + 512, "nr_succeeded is in base pages");
    let ev = mm.vm_events();
    assert_eq!(ev.pgmigrate_success - before.pgmigrate_success, 516);
    assert_eq!(ev.thp_migration_success - before.thp_migration_success, 1);
    assert_eq!(ev.pgmigrate_fail, before.pgmigrate_fail);
    check_filled(&sp, 4, 0, 1);
    for i in 0..4 {
        assert_eq!(node_at(&sp, BASE + (i * PAGE_SIZE) as u64), 1);
    }
    assert_eq!(node_at(&sp, BASE + 2 * MB as u64), 1);
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn invalid_lists_are_rejected_without_side_effects() {
    let mm = memory(8 * MB);
    let sp = space(&mm, MB);
    let folios = map_filled(&sp, 2, 0, 2);
    let free_before = mm.nr_free_pages_total();
    // Not isolated.
    let mut list = folios.clone();
    let mut alloc = alloc_on_node(NodeId(1));
    assert_eq!(
        migrate_pages(
            &mm,
            &mut list,
            &mut alloc,
            None,
            Mode::Async,
            Reason::Syscall
        )
        .unwrap_err(),
        MigrateError::NotIsolated(folios[0].pfn().0)
    );
    // Twice on the list.
    mm.isolate_folio(folios[0]).unwrap();
    let mut list = vec![folios[0], folios[0]];
    let mut alloc = alloc_on_node(NodeId(1));
    assert_eq!(
        migrate_pages(
            &mm,
            &mut list,
            &mut alloc,
            None,
            Mode::Async,
            Reason::Syscall
        )
        .unwrap_err(),
        MigrateError::Duplicate(folios[0].pfn().0)
    );
    // Not a folio (a tail page / a free frame).
    let mut list = vec![Folio(Pfn(folios[1].pfn().0 + 100))];
    let mut alloc = alloc_on_node(NodeId(1));
    assert!(matches!(
        migrate_pages(
            &mm,
            &mut list,
            &mut alloc,
            None,
            Mode::Async,
            Reason::Syscall
        ),
        Err(MigrateError::NotAFolio(_))
    ));
    assert_eq!(mm.nr_free_pages_total(), free_before, "nothing allocated");
    assert_eq!(node_at(&sp, BASE), 0);
    assert_eq!(mm.vm_events().pgmigrate_success, 0);
    assert_eq!(
        mm.isolate_folio(folios[0]),
        Err(pagemig::mm::MmError::Busy),
        "still isolated once"
    );
    mm.putback_folio(folios[0]).unwrap();
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn folio_freed_under_us_counts_as_success() {
    let mm = memory(8 * MB);
    let sp = space(&mm, MB);
    let folios = map_filled(&sp, 2, 0, 3);
    let mut list = isolate_all(&mm, &folios);
    sp.unmap(VirtAddr(BASE)).unwrap(); // last mapping gone: only the isolation ref left
    assert_eq!(mm.folio(folios[0]).ref_count(), 1);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(res.nr_succeeded, 2);
    assert!(list.is_empty());
    assert!(
        mm.folio(folios[0]).test(pg::BUDDY),
        "the freed folio went back to the allocator"
    );
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn extra_reference_exhausts_retries_and_the_folio_is_returned_intact() {
    for mode in [Mode::Async, Mode::SyncLight, Mode::Sync] {
        let mm = memory(8 * MB);
        let sp = space(&mm, MB);
        let folios = map_filled(&sp, 3, 0, 4);
        mm.folio(folios[1]).get(); // a pin nobody drops
        let mut list = isolate_all(&mm, &folios);
        let res = migrate_to(&mm, &mut list, 1, mode, Reason::Syscall);
        assert_eq!(res.rc, Ok(1), "{mode:?}");
        assert_eq!(list, vec![folios[1]]);
        assert_eq!(res.stats.nr_failed_pages, 1);
        assert_eq!(node_at(&sp, BASE + PAGE_SIZE as u64), 0);
        assert_eq!(
            sp.pte(VirtAddr(BASE + PAGE_SIZE as u64)).unwrap(),
            Pte::Present {
                pfn: folios[1].pfn()
            }
        );
        check_filled(&sp, 3, 0, 4);
        mm.putback_movable_pages(&mut list);
        mm.folio(folios[1]).put();
        drop(sp);
        assert_frames_balanced(&mm);
    }
}

/// Drops the extra reference of one folio when its second move attempt starts, after
/// taking it right after the batch copy: the first attempt meets EAGAIN with the copy
/// marker set.
struct RaceAfterCopy {
    victim: std::sync::Mutex<Option<Folio>>,
    nr_moves_seen: AtomicUsize,
}

impl FaultHooks for RaceAfterCopy {
    fn after_batch_copy(&self, mm: &Memory) {
        if let Some(f) = *self.victim.lock().unwrap() {
            mm.folio(f).get();
        }
    }
    fn before_move(&self, mm: &Memory, src: Folio, pass: usize) {
        if Some(src) == *self.victim.lock().unwrap() {
            self.nr_moves_seen.fetch_add(1, Ordering::SeqCst);
            if pass == 1 {
                mm.folio(src).put();
            }
        }
    }
}

#[test]
fn eagain_in_the_move_phase_consumes_the_mark_and_the_retry_copies_again() {
    let hooks = Arc::new(RaceAfterCopy {
        victim: Default::default(),
        nr_moves_seen: AtomicUsize::new(0),
    });
    let mm = memory_with(8 * MB, Some(hooks.clone()), None);
    let sp = space(&mm, MB);
    let folios = map_filled(&sp, 4, 0, 5);
    *hooks.victim.lock().unwrap() = Some(folios[2]);
    let copier = Arc::new(CountingCopier::default());
    let m: Arc<dyn Migrator> = copier.clone();
    mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(
        copier.nr_copied.load(Ordering::SeqCst),
        4,
        "the batch copied every folio once"
    );
    assert_eq!(
        hooks.nr_moves_seen.load(Ordering::SeqCst),
        2,
        "one EAGAIN, one retry"
    );
    assert_eq!(
        res.stats.nr_copied_by_batch, 3,
        "the victim's mark was consumed by the failed attempt"
    );
    assert_eq!(
        res.stats.nr_copied_on_cpu, 1,
        "the retry copied the victim again on the CPU"
    );
    check_filled(&sp, 4, 0, 5);
    mm.offload().unregister(&m).unwrap();
    drop(sp);
    assert_frames_balanced(&mm);
}

/// Fails allocations on node 1 after a budget.
struct AllocBudget {
    left: AtomicUsize,
    only_large: AtomicBool,
}

impl FaultHooks for AllocBudget {
    fn alloc_should_fail(&self, node: NodeId, order: Order) -> bool {
        if node != NodeId(1) {
            return false;
        }
        if self.only_large.load(Ordering::SeqCst) {
            return order.0 > 0;
        }
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_err()
    }
}

#[test]
fn enomem_mid_batch_moves_what_is_unmapped_and_returns_enomem() {
    for mode in [Mode::Async, Mode::Sync] {
        let hooks = Arc::new(AllocBudget {
            left: AtomicUsize::new(3),
            only_large: AtomicBool::new(false),
        });
        let mm = memory_with(8 * MB, Some(hooks.clone()), None);
        let sp = space(&mm, MB);
        let folios = map_filled(&sp, 8, 0, 6);
        let mut list = isolate_all(&mm, &folios);
        let res = migrate_to(&mm, &mut list, 1, mode, Reason::Syscall);
        assert_eq!(res.rc, Err(Errno::NoMem), "{mode:?}");
        assert_eq!(res.nr_succeeded, 3);
        assert_eq!(
            list.len(),
            5,
            "the failed folio and the untried rest stay on the list"
        );
        for (i, f) in folios.iter().enumerate() {
            let expect = if i < 3 { 1 } else { 0 };
            assert_eq!(node_at(&sp, BASE + (i * PAGE_SIZE) as u64), expect);
            assert_eq!(list.contains(f), i >= 3);
        }
        check_filled(&sp, 8, 0, 6);
        mm.putback_movable_pages(&mut list);
        drop(sp);
        assert_frames_balanced(&mm);
    }
}

#[test]
fn large_folio_is_split_on_enomem_and_counts_once() {
    let hooks = Arc::new(AllocBudget {
        left: AtomicUsize::new(0),
        only_large: AtomicBool::new(true),
    });
    let mm = memory_with(16 * MB, Some(hooks), None);
    let sp = space(&mm, 4 * MB);
    // A THP and an order-4 mTHP; one page of the mTHP is poisoned so that one split piece
    // fails: the split still counts as a single failure.
    let thp = sp.map_anon(VirtAddr(BASE), NodeId(0), Order(9)).unwrap();
    let m = sp
        .map_anon(VirtAddr(BASE + 2 * MB as u64), NodeId(0), Order(4))
        .unwrap();
    let acc = sp.accessor();
    for p in 0..512 + 16 {
        let va = if p < 512 {
            BASE + (p * PAGE_SIZE) as u64
        } else {
            BASE + 2 * MB as u64 + ((p - 512) * PAGE_SIZE) as u64
        };
        acc.write(VirtAddr(va), &pattern(7, p)).unwrap();
    }
    mm.inject_hwpoison(Pfn(m.pfn().0 + 5)).unwrap();
    let mut list = isolate_all(&mm, &[thp, m]);
    let before = mm.vm_events();
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
    assert_eq!(res.stats.nr_split, 2);
    assert_eq!(res.stats.nr_thp_split, 1);
    assert_eq!(
        res.rc,
        Ok(2),
        "each split large folio counts once, the failed piece not again"
    );
    assert_eq!(
        list,
        vec![Folio(Pfn(m.pfn().0 + 5))],
        "only the poisoned piece is handed back"
    );
    assert_eq!(res.nr_succeeded, 512 + 15);
    assert_eq!(
        mm.vm_events().thp_migration_split - before.thp_migration_split,
        1
    );
    for p in 0..512 + 16 {
        let va = if p < 512 {
            BASE + (p * PAGE_SIZE) as u64
        } else {
            BASE + 2 * MB as u64 + ((p - 512) * PAGE_SIZE) as u64
        };
        let f = sp.folio_at(VirtAddr(va)).unwrap();
        assert_eq!(mm.folio(f).order(), Order(0), "split into base pages");
        if p == 512 + 5 {
            assert_eq!(mm.folio(f).node(), NodeId(0));
            continue;
        }
        assert_eq!(mm.folio(f).node(), NodeId(1));
        let mut buf = vec![0u8; PAGE_SIZE];
        acc.read(VirtAddr(va), &mut buf).unwrap();
        assert!(buf == pattern(7, p));
    }
    mm.putback_movable_pages(&mut list);
    drop(acc);
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn numa_misplaced_never_splits() {
    let hooks = Arc::new(AllocBudget {
        left: AtomicUsize::new(0),
        only_large: AtomicBool::new(true),
    });
    let mm = memory_with(16 * MB, Some(hooks), None);
    let sp = space(&mm, 4 * MB);
    let folios = map_filled(&sp, 1, 9, 8);
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::NumaMisplaced);
    assert_eq!(res.rc, Err(Errno::NoMem));
    assert_eq!(res.stats.nr_split, 0);
    assert_eq!(list, folios);
    assert_eq!(mm.folio(folios[0]).order(), Order(9));
    check_filled(&sp, 1, 9, 8);
    mm.putback_movable_pages(&mut list);
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn async_mode_never_waits_for_a_lock_or_for_writeback() {
    let mm = memory(8 * MB);
    let sp = space(&mm, MB);
    let folios = map_filled(&sp, 3, 0, 9);
    assert!(mm.folio(folios[0]).trylock());
    mm.folio(folios[1]).start_writeback();
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(2));
    list.sort();
    let mut want = vec![folios[0], folios[1]];
    want.sort();
    assert_eq!(list, want);
    assert_eq!(node_at(&sp, BASE + 2 * PAGE_SIZE as u64), 1);
    assert_eq!(node_at(&sp, BASE), 0);
    assert_eq!(node_at(&sp, BASE + PAGE_SIZE as u64), 0);
    mm.folio(folios[0]).unlock();
    mm.folio(folios[1]).end_writeback();
    check_filled(&sp, 3, 0, 9);
    mm.putback_movable_pages(&mut list);
    drop(sp);
    assert_frames_balanced(&mm);
}

fn release_later(mm: &Arc<Memory>, f: Folio, what: &'static str) -> std::thread::JoinHandle<()> {
    let mm = mm.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        match what {
            "lock" => mm.folio(f).unlock(),
            _ => mm.folio(f).end_writeback(),
        }
    })
}

#[test]
fn sync_modes_wait_for_the_lock_and_only_sync_waits_for_writeback() {
    // SYNC_LIGHT and SYNC sleep on the folio lock of an uptodate folio.
    for mode in [Mode::SyncLight, Mode::Sync] {
        let mm = memory(8 * MB);
        let sp = space(&mm, MB);
        let folios = map_filled(&sp, 1, 0, 10);
        assert!(mm.folio(folios[0]).trylock());
        let h = release_later(&mm, folios[0], "lock");
        let mut list = isolate_all(&mm, &folios);
        let res = migrate_to(&mm, &mut list, 1, mode, Reason::Syscall);
        h.join().unwrap();
        assert_eq!(res.rc, Ok(0), "{mode:?} waits for the lock");
        check_filled(&sp, 1, 0, 10);
        drop(sp);
        assert_frames_balanced(&mm);
    }
    // SYNC_LIGHT does not wait for a lock held on a folio that is not uptodate (I/O).
    {
        let mm = memory(8 * MB);
        let sp = space(&mm, MB);
        let folios = map_filled(&sp, 1, 0, 11);
        mm.folio(folios[0]).clear(pg::UPTODATE);
        assert!(mm.folio(folios[0]).trylock());
        let mut list = isolate_all(&mm, &folios);
        let res = migrate_to(&mm, &mut list, 1, Mode::SyncLight, Reason::Syscall);
        assert_eq!(res.rc, Ok(1));
        mm.folio(folios[0]).unlock();
        mm.putback_movable_pages(&mut list);
        drop(sp);
        assert_frames_balanced(&mm);
    }
    // Writeback: SYNC_LIGHT gives EBUSY, SYNC waits.
    for (mode, want) in [(Mode::SyncLight, Ok(1)), (Mode::Sync, Ok(0))] {
        let mm = memory(8 * MB);
        let sp = space(&mm, MB);
        let folios = map_filled(&sp, 1, 0, 12);
        mm.folio(folios[0]).start_writeback();
        let h = (mode == Mode::Sync).then(|| release_later(&mm, folios[0], "writeback"));
        let mut list = isolate_all(&mm, &folios);
        let res = migrate_to(&mm, &mut list, 1, mode, Reason::Syscall);
        if let Some(h) = h {
            h.join().unwrap();
        } else {
            mm.folio(folios[0]).end_writeback();
        }
        assert_eq!(res.rc, want, "{mode:?}");
        check_filled(&sp, 1, 0, 12);
        mm.putback_movable_pages(&mut list);
        drop(sp);
        assert_frames_balanced(&mm);
    }
}

#[test]
fn hugetlb_goes_first_alone_and_is_never_batch_copied() {
    let mm = memory(16 * MB);
    let sp = space(&mm, 4 * MB);
    let h = sp.map_hugetlb(VirtAddr(BASE), NodeId(0)).unwrap();
    let acc = sp.accessor();
    for p in 0..512 {
        acc.write(VirtAddr(BASE + (p * PAGE_SIZE) as u64), &pattern(13, p))
            .unwrap();
    }
    let small = sp
        .map_anon(VirtAddr(BASE + 2 * MB as u64), NodeId(0), Order(0))
        .unwrap();
    let copier = Arc::new(CountingCopier::default());
    let m: Arc<dyn Migrator> = copier.clone();
    mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
    let mut list = isolate_all(&mm, &[small, h]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(
        copier.nr_copied.load(Ordering::SeqCst),
        1,
        "only the small folio was batched"
    );
    let nh = sp.folio_at(VirtAddr(BASE)).unwrap();
    assert!(mm.folio(nh).test(pg::HUGETLB));
    assert_eq!(mm.folio(nh).node(), NodeId(1));
    let mut buf = vec![0u8; PAGE_SIZE];
    for p in 0..512 {
        acc.read(VirtAddr(BASE + (p * PAGE_SIZE) as u64), &mut buf)
            .unwrap();
        assert!(buf == pattern(13, p));
    }
    mm.offload().unregister(&m).unwrap();
    drop(acc);
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn enomem_on_a_hugetlb_folio_leaves_it_and_every_later_folio_on_the_list() {
    // migrate_hugetlbs() walks `from` in place upstream: on -ENOMEM the folio that failed
    // and every folio after it, hugetlb or not, stay on it, isolated, for the caller's
    // putback.
    let hooks = Arc::new(AllocBudget {
        left: AtomicUsize::new(0),
        only_large: AtomicBool::new(true),
    });
    let mm = memory_with(16 * MB, Some(hooks), None);
    let sp = space(&mm, 8 * MB);
    let h1 = sp.map_hugetlb(VirtAddr(BASE), NodeId(0)).unwrap();
    let h2 = sp
        .map_hugetlb(VirtAddr(BASE + 2 * MB as u64), NodeId(0))
        .unwrap();
    let small = sp
        .map_anon(VirtAddr(BASE + 4 * MB as u64), NodeId(0), Order(0))
        .unwrap();
    let folios = [h1, h2, small];
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 1, Mode::Sync, Reason::Syscall);
    assert_eq!(res.rc, Err(Errno::NoMem));
    assert_eq!(res.nr_succeeded, 0);
    assert_eq!(
        list,
        folios.to_vec(),
        "every folio stays on the list, in order"
    );
    for f in folios {
        assert_eq!(mm.folio(f).node(), NodeId(0));
    }
    mm.putback_movable_pages(&mut list);
    drop(sp);
    assert_frames_balanced(&mm);
}

/// A balloon-like movable_ops owner: copies, takes `dst`, drops `src`.
#[derive(Default)]
struct Balloon {
    nr_migrated: AtomicUsize,
}

impl MovableOps for Balloon {
    fn migrate_page(&self, mm: &Memory, dst: Folio, src: Folio, _mode: Mode) -> Result<(), Errno> {
        mm.folio_mc_copy(dst, src)?;
        mm.folio(dst).set(pg::MOVABLE_OPS);
        mm.folio(dst).get();
        mm.folio(src).put();
        self.nr_migrated.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn movable_ops_pages_use_their_own_callback_and_are_never_batched() {
    let balloon = Arc::new(Balloon::default());
    let mm = memory_with(8 * MB, None, Some(balloon.clone()));
    let page = mm.alloc_movable_ops_page(NodeId(0)).unwrap();
    mm.page_write(page.pfn(), 0, &pattern(14, 0));
    let copier = Arc::new(CountingCopier::default());
    let m: Arc<dyn Migrator> = copier.clone();
    mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
    let mut list = isolate_all(&mm, &[page]);
    let mut new_page = None;
    let mut alloc = |mm: &Memory, src: Folio| {
        let f = mm.alloc_folio(NodeId(1), mm.folio(src).order(), 0).ok();
        new_page = f;
        f
    };
    let res = migrate_pages(
        &mm,
        &mut list,
        &mut alloc,
        None,
        Mode::Async,
        Reason::Compaction,
    )
    .unwrap();
    assert_eq!(res.rc, Ok(0));
    assert_eq!(balloon.nr_migrated.load(Ordering::SeqCst), 1);
    assert_eq!(
        copier.nr_calls.load(Ordering::SeqCst),
        0,
        "never offered to the migrator"
    );
    let np = new_page.unwrap();
    let mut buf = vec![0u8; PAGE_SIZE];
    mm.page_read(np.pfn(), 0, &mut buf).unwrap();
    assert!(buf == pattern(14, 0));
    assert!(mm.folio(page).test(pg::BUDDY), "the old page was freed");
    assert_eq!(mm.folio(np).ref_count(), 1, "the owner holds the new page");
    mm.offload().unregister(&m).unwrap();
    mm.folio_put(np);
    assert_frames_balanced(&mm);
}

#[test]
fn poisoned_source_in_a_batch_fails_alone_and_stays_mapped_and_intact() {
    for batched in [true, false] {
        let mm = memory(8 * MB);
        // Where the one migrator call stops (pipelined, each sub-batch is a call).
        mm.offload().set_pipeline(None);
        let sp = space(&mm, MB);
        let folios = map_filled(&sp, 8, 1, 15); // 8 KiB folios
        mm.inject_hwpoison(Pfn(folios[3].pfn().0 + 1)).unwrap();
        let m: Arc<dyn Migrator> = Arc::new(DefaultCopier);
        if batched {
            mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
        }
        let mut list = isolate_all(&mm, &folios);
        let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
        assert_eq!(res.rc, Ok(1), "batched={batched}");
        assert_eq!(list, vec![folios[3]]);
        if batched {
            assert_eq!(
                res.stats.nr_copied_by_batch, 3,
                "the default copier stops at the poisoned folio"
            );
            assert_eq!(
                res.stats.nr_copied_on_cpu, 4,
                "the rest fell back to the CPU"
            );
        }
        let va3 = BASE + (3 * 2 * PAGE_SIZE) as u64;
        assert_eq!(
            sp.folio_at(VirtAddr(va3)),
            Some(folios[3]),
            "source still mapped"
        );
        assert_eq!(
            sp.pte(VirtAddr(va3 + PAGE_SIZE as u64)).unwrap(),
            Pte::Present {
                pfn: Pfn(folios[3].pfn().0 + 1)
            }
        );
        let acc = sp.accessor();
        let mut buf = vec![0u8; PAGE_SIZE];
        acc.read(VirtAddr(va3), &mut buf).unwrap();
        assert!(
            buf == pattern(15, 6),
            "the clean page of the poisoned folio is intact"
        );
        assert_eq!(
            acc.read(VirtAddr(va3 + PAGE_SIZE as u64), &mut buf),
            Err(Errno::HwPoison)
        );
        for i in (0..8).filter(|&i| i != 3) {
            assert_eq!(node_at(&sp, BASE + (i * 2 * PAGE_SIZE) as u64), 1);
            for p in 0..2 {
                acc.read(VirtAddr(BASE + ((i * 2 + p) * PAGE_SIZE) as u64), &mut buf)
                    .unwrap();
                assert!(buf == pattern(15, i * 2 + p));
            }
        }
        if batched {
            mm.offload().unregister(&m).unwrap();
        }
        mm.putback_movable_pages(&mut list);
        drop(acc);
        drop(sp);
        assert_frames_balanced(&mm);
    }
}

#[test]
fn a_migrator_that_copies_half_and_fails_leaves_the_rest_to_the_cpu_and_nothing_is_copied_twice() {
    let mm = memory(8 * MB);
    // What one migrator call copies: the series' single call per batch (the pipelined
    // call shape has a test of its own below).
    mm.offload().set_pipeline(None);
    let sp = space(&mm, 2 * MB);
    let folios = map_filled(&sp, 10, 2, 16);
    let half = Arc::new(HalfCopier::default());
    let m: Arc<dyn Migrator> = half.clone();
    mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Demotion);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(half.nr_copied.load(Ordering::SeqCst), 5);
    assert_eq!(res.stats.nr_copied_by_batch, 5);
    assert_eq!(res.stats.nr_copied_on_cpu, 5);
    assert_eq!(
        half.nr_copied.load(Ordering::SeqCst) + res.stats.nr_copied_on_cpu,
        10,
        "every folio copied exactly once"
    );
    check_filled(&sp, 10, 2, 16);
    mm.offload().unregister(&m).unwrap();
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn batches_are_cut_at_nr_max_batched_migration_base_pages() {
    let mm = memory(8 * MB);
    // One migrator call per batch is the series' path (pipelined: one per sub-batch).
    mm.offload().set_pipeline(None);
    mm.set_batch_pages(8).unwrap();
    let sp = space(&mm, 2 * MB);
    let folios = map_filled(&sp, 20, 1, 17); // 40 pages: chunks of 4 folios (8 pages)
    let copier = Arc::new(CountingCopier::default());
    let m: Arc<dyn Migrator> = copier.clone();
    mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(copier.nr_calls.load(Ordering::SeqCst), 5);
    assert_eq!(res.stats.nr_tlb_flushes, 5, "one TLB flush per batch");
    check_filled(&sp, 20, 1, 17);
    mm.offload().unregister(&m).unwrap();
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn a_folio_mapped_by_two_spaces_moves_in_both() {
    let mm = memory(8 * MB);
    let a = space(&mm, MB);
    let b = mm.new_space(VirtAddr(BASE), MB).unwrap();
    let folios = map_filled(&a, 2, 0, 18);
    b.map_shared(folios[0]).unwrap();
    assert_eq!(mm.folio(folios[0]).mapcount(), 2);
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 1, Mode::Sync, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    let fa = a.folio_at(VirtAddr(BASE)).unwrap();
    assert_eq!(b.folio_at(VirtAddr(BASE)), Some(fa));
    assert_eq!(mm.folio(fa).node(), NodeId(1));
    assert_eq!(mm.folio(fa).mapcount(), 2);
    assert_eq!(mm.folio(fa).ref_count(), 2);
    let acc = b.accessor();
    let mut buf = vec![0u8; PAGE_SIZE];
    acc.read(VirtAddr(BASE), &mut buf).unwrap();
    assert!(buf == pattern(18, 0));
    drop(acc);
    drop(a);
    drop(b);
    assert_frames_balanced(&mm);
}

#[test]
fn soft_offline_moves_the_contents_within_the_node_and_keeps_the_old_page_out_of_use() {
    let mm = memory(8 * MB);
    let sp = space(&mm, 4 * MB);
    let small = map_filled(&sp, 2, 0, 30);
    let thp_va = BASE + 2 * MB as u64;
    let thp = sp.map_anon(VirtAddr(thp_va), NodeId(0), Order(9)).unwrap();
    let acc = sp.accessor();
    for k in 0..512u64 {
        acc.write(VirtAddr(thp_va + k * 4096), &pattern(31, k as usize))
            .unwrap();
    }
    // An order-0 page.
    let old = small[0];
    pagemig::migrate::soft_offline_page(&mm, old.pfn()).unwrap();
    let now = sp.folio_at(VirtAddr(BASE)).unwrap();
    assert_ne!(now, old);
    assert_eq!(
        mm.folio(now).node(),
        NodeId(0),
        "soft offline stays on the node"
    );
    check_filled(&sp, 2, 0, 30);
    assert!(mm.page_is_hwpoison(old.pfn()));
    let o = mm.folio(old);
    assert_eq!(
        (o.ref_count(), o.test(pg::BUDDY), o.test(pg::ISOLATED)),
        (1, false, false),
        "MR_MEMORY_FAILURE: the poison handler keeps the old page's reference"
    );
    // One page of a THP: split, and only that page moves.
    let bad = Pfn(thp.pfn().0 + 5);
    pagemig::migrate::soft_offline_page(&mm, bad).unwrap();
    for k in 0..512u64 {
        let f = sp.folio_at(VirtAddr(thp_va + k * 4096)).unwrap();
        assert_eq!(mm.folio(f).nr_pages(), 1);
        if k == 5 {
            assert_ne!(f.pfn(), bad);
        } else {
            assert_eq!(f.pfn(), Pfn(thp.pfn().0 + k), "page {k} stayed");
        }
        let mut buf = vec![0u8; PAGE_SIZE];
        acc.read(VirtAddr(thp_va + k * 4096), &mut buf).unwrap();
        assert!(buf == pattern(31, k as usize), "page {k}");
    }
    assert_eq!(mm.nr_poisoned_pages(), 2);
    for n in 0..2 {
        assert_eq!(
            mm.node_stat(NodeId(n), pagemig::mm::NodeStat::IsolatedAnon),
            0
        );
    }
    // Bad input.
    assert_eq!(
        pagemig::migrate::soft_offline_page(&mm, Pfn(u64::MAX)),
        Err(Errno::Inval)
    );
    let hsp = mm.new_space(VirtAddr(BASE + (1 << 30)), 2 * MB).unwrap();
    let huge = hsp
        .map_hugetlb(VirtAddr(BASE + (1 << 30)), NodeId(1))
        .unwrap();
    assert_eq!(
        pagemig::migrate::soft_offline_page(&mm, huge.pfn()),
        Err(Errno::NotSupported),
        "hugetlb soft offline is not modelled"
    );
    drop(hsp);
    let free = mm.alloc_folio(NodeId(1), Order(0), 0).unwrap();
    mm.folio_put(free);
    assert_eq!(
        pagemig::migrate::soft_offline_page(&mm, free.pfn()),
        Err(Errno::Busy),
        "a free page is not in use"
    );
    drop(acc);
    drop(sp);
    assert_eq!(
        mm.nr_free_pages_total(),
        mm.nr_pages_total() - 2,
        "the soft-offlined frames stay out of use"
    );
}

#[test]
fn mlocked_folios_are_mlocked_again_by_their_vm_locked_mapping_not_by_copying_the_flag() {
    let mm = memory(8 * MB);
    let locked = space(&mm, MB);
    locked.mlock_all();
    let fl = map_filled(&locked, 1, 0, 33)[0];
    assert!(
        mm.folio(fl).test(pg::MLOCKED),
        "mapped into a VM_LOCKED space"
    );
    let plain = mm.new_space(VirtAddr(BASE + (1 << 30)), MB).unwrap();
    let fp = plain
        .map_anon(VirtAddr(BASE + (1 << 30)), NodeId(0), Order(0))
        .unwrap();
    // PG_mlocked left from a VM_LOCKED mapping that is gone.
    mm.folio(fp).set(pg::MLOCKED);
    let mut list = isolate_all(&mm, &[fl, fp]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    let nl = locked.folio_at(VirtAddr(BASE)).unwrap();
    let np = plain.folio_at(VirtAddr(BASE + (1 << 30))).unwrap();
    assert!(
        mm.folio(nl).test(pg::MLOCKED),
        "its VM_LOCKED mapping mlocks it"
    );
    assert!(
        !mm.folio(np).test(pg::MLOCKED),
        "folio_migrate_flags does not copy PG_mlocked"
    );
    check_filled(&locked, 1, 0, 33);
    drop((locked, plain));
    assert_frames_balanced(&mm);
}

/// A balloon that knows which pages it owns: a page it released is left alone (the core
/// owns it then); a migrated page's owner reference moves to the new page — or, with
/// `keep_old`, it also keeps one on the old page for a while.
#[derive(Default)]
struct OwningBalloon {
    owned: std::sync::Mutex<std::collections::HashSet<Folio>>,
    calls: AtomicUsize,
    keep_old: bool,
}

impl MovableOps for OwningBalloon {
    fn migrate_page(&self, mm: &Memory, dst: Folio, src: Folio, _mode: Mode) -> Result<(), Errno> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut owned = self.owned.lock().unwrap();
        if !owned.remove(&src) {
            // Released by its owner: migration succeeds, the core owns both pages.
            return Ok(());
        }
        mm.folio_mc_copy(dst, src)?;
        mm.folio(dst).set(pg::MOVABLE_OPS);
        mm.folio(dst).get();
        owned.insert(dst);
        if !self.keep_old {
            mm.folio(src).put();
        }
        Ok(())
    }
}

#[test]
fn a_migrated_movable_ops_page_keeps_its_type_until_freed_and_is_no_longer_isolated() {
    let balloon = Arc::new(OwningBalloon {
        keep_old: true,
        ..Default::default()
    });
    let mm = memory_with(8 * MB, None, Some(balloon.clone()));
    let page = mm.alloc_movable_ops_page(NodeId(0)).unwrap();
    balloon.owned.lock().unwrap().insert(page);
    let mut list = isolate_all(&mm, &[page]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(0));
    let p = mm.folio(page);
    assert_eq!(p.ref_count(), 1, "the owner still holds the old page");
    assert!(
        p.test(pg::MOVABLE_OPS),
        "the page type is sticky until the page is freed"
    );
    assert!(!p.test(pg::ISOLATED), "no longer isolated");
    assert!(mm.putback_folio(page).is_err(), "nothing to put back");
    mm.folio_put(page);
    assert!(mm.folio(page).test(pg::BUDDY));
    let new = *balloon.owned.lock().unwrap().iter().next().unwrap();
    mm.folio_put(new);
    assert_frames_balanced(&mm);
}

#[test]
fn a_movable_ops_page_its_owner_released_still_goes_through_its_callback() {
    let balloon = Arc::new(OwningBalloon::default());
    let mm = memory_with(8 * MB, None, Some(balloon.clone()));
    let page = mm.alloc_movable_ops_page(NodeId(0)).unwrap();
    let mut list = isolate_all(&mm, &[page]);
    // The owner lets go of it while it is isolated: only the isolation reference is left.
    mm.folio_put(page);
    assert_eq!(mm.folio(page).ref_count(), 1);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(
        balloon.calls.load(Ordering::SeqCst),
        1,
        "not 'freed under us': movable_ops pages always reach migrate_page"
    );
    assert!(mm.folio(page).test(pg::BUDDY));
    assert_frames_balanced(&mm);
}

#[test]
fn a_partially_mapped_thp_is_split_before_migration_and_only_its_mapped_pages_move() {
    let mm = memory(8 * MB);
    let copier = Arc::new(CountingCopier::default());
    let m: Arc<dyn Migrator> = copier.clone();
    mm.offload().register(m, ReasonMask::ALL).unwrap();
    let sp = space(&mm, 2 * MB);
    let thp = map_filled(&sp, 1, 9, 34)[0];
    // MADV_DONTNEED of the second half.
    sp.zap_range(VirtAddr(BASE + 256 * 4096), 256).unwrap();
    assert!(mm.on_deferred_split_queue(thp));
    assert!(mm.folio(thp).test(pg::PARTIALLY_MAPPED));
    assert_eq!(mm.folio(thp).mapcount(), 1, "still mapped by the space");
    let mut list = isolate_all(&mm, &[thp]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    assert!(list.is_empty());
    assert_eq!((res.stats.nr_split, res.stats.nr_thp_split), (1, 1));
    assert_eq!(res.stats.nr_thp_failed, 1, "a split THP counts as failed");
    assert_eq!(res.nr_succeeded, 512, "256 moved, 256 freed under us");
    assert_eq!(
        copier.nr_copied.load(Ordering::SeqCst),
        256,
        "only the mapped pages were copied"
    );
    assert_eq!(mm.deferred_split_queue_len(), 0);
    let acc = sp.accessor();
    let mut buf = vec![0u8; PAGE_SIZE];
    for k in 0..512u64 {
        let va = VirtAddr(BASE + k * 4096);
        if k < 256 {
            assert_eq!(node_at(&sp, va.0), 1);
            acc.read(va, &mut buf).unwrap();
            assert!(buf == pattern(34, k as usize));
        } else {
            assert_eq!(sp.pte(va).unwrap(), Pte::None);
        }
    }
    drop(acc);
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn a_queued_thp_that_is_wholly_mapped_migrates_whole_and_its_destination_is_requeued() {
    let mm = memory(8 * MB);
    let sp = space(&mm, 2 * MB);
    let thp = map_filled(&sp, 1, 9, 35)[0];
    mm.deferred_split_folio(thp, false);
    let mut list = isolate_all(&mm, &[thp]);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    assert_eq!((res.stats.nr_split, res.stats.nr_thp_succeeded), (0, 1));
    let new = sp.folio_at(VirtAddr(BASE)).unwrap();
    assert!(mm.on_deferred_split_queue(new), "requeued");
    assert!(!mm.folio(new).test(pg::PARTIALLY_MAPPED));
    assert_eq!(
        mm.deferred_split_queue_len(),
        1,
        "the source left the queue"
    );
    check_filled(&sp, 1, 9, 35);
    drop(sp);
    assert_eq!(
        mm.deferred_split_queue_len(),
        0,
        "a freed folio leaves the queue"
    );
    assert_frames_balanced(&mm);
}

#[test]
fn the_mm_migrate_pages_tracepoint_records_each_call_once_when_enabled() {
    let hooks = Arc::new(AllocBudget {
        left: AtomicUsize::new(0),
        only_large: AtomicBool::new(true),
    });
    let mm = memory_with(16 * MB, Some(hooks), None);
    let sp = space(&mm, 4 * MB);
    let small = map_filled(&sp, 4, 0, 36);
    let mut list = isolate_all(&mm, &small);
    assert_eq!(
        migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall).rc,
        Ok(0)
    );
    assert!(mm.trace().take().is_empty(), "off by default");
    mm.trace().enable();
    // Back to node 0 (SYNC, MR_DEMOTION), then a THP that splits (no large allocation).
    let now: Vec<Folio> = (0..4)
        .map(|i| sp.folio_at(VirtAddr(BASE + i * PAGE_SIZE as u64)).unwrap())
        .collect();
    let mut list = isolate_all(&mm, &now);
    let a = migrate_to(&mm, &mut list, 0, Mode::Sync, Reason::Demotion);
    let thp = sp
        .map_anon(VirtAddr(BASE + 2 * MB as u64), NodeId(0), Order(9))
        .unwrap();
    let mut list = isolate_all(&mm, &[thp]);
    let b = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Compaction);
    mm.trace().disable();
    let ev = mm.trace().take();
    assert_eq!(ev.len(), 2);
    for (e, r, mode, reason) in [
        (&ev[0], &a, Mode::Sync, Reason::Demotion),
        (&ev[1], &b, Mode::Async, Reason::Compaction),
    ] {
        assert_eq!(
            *e,
            pagemig::trace::MmMigratePages {
                succeeded: r.stats.nr_succeeded,
                failed: r.stats.nr_failed_pages,
                thp_succeeded: r.stats.nr_thp_succeeded,
                thp_failed: r.stats.nr_thp_failed,
                thp_split: r.stats.nr_thp_split,
                large_folio_split: r.stats.nr_split,
                mode,
                reason,
            }
        );
    }
    assert_eq!(ev[0].succeeded, 4);
    assert_eq!((ev[1].thp_split, ev[1].large_folio_split), (1, 1));
    assert!(mm.trace().take().is_empty(), "each event is read once");
    assert_eq!(mm.trace().lost(), 0);
    drop(sp);
    assert_frames_balanced(&mm);
}

/// A node with a reserve (`NodeConfig::max_bytes`) starts at its capacity and grows when a
/// migration's allocations find it full, in steps, up to the reserve; past it the
/// allocation fails as on a full node and the folios stay where they were, intact.
#[test]
fn a_node_with_a_reserve_grows_as_migrations_fill_it_and_stops_at_the_reserve() {
    let mut c = MemoryConfig::with_nodes(2, 64 << 20);
    c.nodes[1].capacity_bytes = 2 << 20;
    c.nodes[1].max_bytes = Some(16 << 20);
    let mm = with_test_pipeline(Memory::new(c).unwrap());
    let (base, reserved) = mm.nodes()[1].arena_range();
    assert_eq!((reserved, mm.nodes()[1].max_pages()), (16 << 20, 4096));
    assert_ne!(base, 0);
    assert_eq!(mm.nodes()[1].nr_pages(), 512);
    let sp = space(&mm, 32 << 20);
    // 3072 base pages (12 MiB): node 1 grows 2 → 4 → 8 → 16 MiB.
    let folios = map_filled(&sp, 3072, 0, 7);
    let mut list = isolate_all(&mm, &folios);
    let r = migrate_to(&mm, &mut list, 1, Mode::Sync, Reason::Syscall);
    assert_eq!((r.nr_succeeded, r.stats.nr_failed_pages), (3072, 0));
    assert_eq!(mm.nodes()[1].nr_pages(), 4096);
    assert_eq!(mm.nr_free_pages(NodeId(1)), 1024);
    check_filled(&sp, 3072, 0, 7);
    assert!((0..3072).all(|p| node_at(&sp, BASE + (p * PAGE_SIZE) as u64) == 1));
    // 2048 more: 1024 fit, the rest stay on node 0 with their bytes.
    let more: Vec<Folio> = (3072..5120)
        .map(|i| {
            let va = VirtAddr(BASE + (i * PAGE_SIZE) as u64);
            let f = sp.map_anon(va, NodeId(0), Order(0)).unwrap();
            sp.accessor().write(va, &pattern(8, i)).unwrap();
            f
        })
        .collect();
    let mut list = isolate_all(&mm, &more);
    let r = migrate_to(&mm, &mut list, 1, Mode::Sync, Reason::Syscall);
    assert_eq!(r.nr_succeeded, 1024);
    assert_eq!(mm.nodes()[1].nr_pages(), 4096, "no growth past the reserve");
    mm.putback_movable_pages(&mut list);
    for i in 3072..5120 {
        let va = VirtAddr(BASE + (i * PAGE_SIZE) as u64);
        let mut buf = vec![0u8; PAGE_SIZE];
        sp.accessor().read(va, &mut buf).unwrap();
        assert!(buf == pattern(8, i), "page {i} lost its content");
    }
    drop(sp);
    assert_frames_balanced(&mm);
}
