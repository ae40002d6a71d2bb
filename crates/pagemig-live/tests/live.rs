//! The live backend on this machine's kernel: a program's own pages, moved with
//! userfaultfd while its threads run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

mod common;

use common::{check, fill, memory};
use pagemig::mm::{Memory, MemoryConfig, NodeId};
use pagemig_live::{Live, LiveConfig, LiveError, LiveRegion, RegionConfig, MPOL_MF_MOVE};

fn pages(r: &LiveRegion, step: usize) -> Vec<usize> {
    (0..r.len()).step_by(step).map(|o| r.addr() + o).collect()
}

fn nodes_of(r: &LiveRegion, step: usize) -> Vec<i32> {
    let p = pages(r, step);
    let mut st = vec![0; p.len()];
    assert_eq!(r.move_pages(&p, None, &mut st, 0), Ok(0));
    st
}

fn round_trip(order: u8, len: usize) {
    let mm = memory(((2 * len) >> 20) | 8);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = live.region(RegionConfig::new(len, order)).unwrap();
    r.populate().unwrap();
    fill(&r, 7);
    let step = r.folio_bytes();
    assert!(nodes_of(&r, step).iter().all(|&n| n == 0));
    let p = pages(&r, step);
    let mut st = vec![-1; p.len()];
    assert_eq!(
        r.move_pages(&p, Some(&vec![1; p.len()]), &mut st, MPOL_MF_MOVE),
        Ok(0)
    );
    assert!(st.iter().all(|&s| s == 1), "{st:?}");
    assert!(nodes_of(&r, step).iter().all(|&n| n == 1));
    assert_eq!(check(&r, 7), 0);
    assert_eq!(
        r.move_pages(&p, Some(&vec![0; p.len()]), &mut st, MPOL_MF_MOVE),
        Ok(0)
    );
    assert!(nodes_of(&r, step).iter().all(|&n| n == 0));
    assert_eq!(check(&r, 7), 0);
    let c = live.counts();
    assert_eq!(
        c.stray_faults + c.remap_errors + c.unmap_failures,
        0,
        "{c:?}"
    );
    eprintln!("{c:?}");
}

#[test]
fn data_survives_4k() {
    round_trip(0, 4 << 20);
}

#[test]
fn data_survives_2m() {
    round_trip(9, 8 << 20);
}

/// A record of 8 words inside one page: every word carries the writer's sequence number.
fn rec_word(rec: usize, seq: u64, k: usize) -> u64 {
    (seq << 20) ^ ((rec as u64) << 4) ^ k as u64
}

#[test]
fn writers_lose_nothing_during_thousands_of_migrations() {
    const PAGES: usize = 256;
    const RECS_PER_PAGE: usize = 4;
    let mm = memory(16);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = Arc::new(live.region(RegionConfig::new(PAGES * 4096, 0)).unwrap());
    r.populate().unwrap();
    let nrec = PAGES * RECS_PER_PAGE;
    let rec_base = |rec: usize| (rec / RECS_PER_PAGE) * 512 + (rec % RECS_PER_PAGE) * 8;
    for rec in 0..nrec {
        for k in 0..8 {
            r.words()[rec_base(rec) + k].store(rec_word(rec, 0, k), Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Records written so far by both writers (migrations wait for progress, so that the
    // writers really run while pages migrate, even when other tests load the CPUs).
    let progress = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (r, stop, progress) = (r.clone(), stop.clone(), progress.clone());
            std::thread::spawn(move || {
                let mine: Vec<usize> = (0..nrec).filter(|x| x % 2 == w).collect();
                let mut seq = vec![0u64; nrec];
                let (mut bad, mut writes) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    for &rec in &mine {
                        let b = rec_base(rec);
                        for k in 0..8 {
                            if r.words()[b + k].load(Ordering::Relaxed)
                                != rec_word(rec, seq[rec], k)
                            {
                                bad += 1;
                            }
                        }
                        seq[rec] += 1;
                        for k in 0..8 {
                            r.words()[b + k].store(rec_word(rec, seq[rec], k), Ordering::Relaxed);
                        }
                        writes += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (bad, writes, seq)
            })
        })
        .collect();
    let p = pages(&r, 4096);
    let mut migrated = 0usize;
    let mut st = vec![0; p.len()];
    // At least 24 rounds, and on until a writer has met a page under migration (a test
    // that never exercised the path would prove nothing); at most 4000 rounds.
    let mut round = 0;
    while round < 24 || (live.counts().faults == 0 && round < 4000) {
        let seen = progress.load(Ordering::Relaxed);
        while progress.load(Ordering::Relaxed) < seen + 64 {
            std::thread::yield_now();
        }
        let node = 1 - round % 2;
        let left = r
            .move_pages(&p, Some(&vec![node; p.len()]), &mut st, MPOL_MF_MOVE)
            .unwrap();
        migrated += p.len() - left;
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seqs = vec![0u64; nrec];
    let mut total_writes = 0;
    for (w, h) in writers.into_iter().enumerate() {
        let (bad, writes, seq) = h.join().unwrap();
        assert_eq!(bad, 0, "writer {w} saw lost or torn records");
        total_writes += writes;
        for rec in (0..nrec).filter(|x| x % 2 == w) {
            seqs[rec] = seq[rec];
        }
    }
    // Every record holds its writer's last write, whole.
    for (rec, &seq) in seqs.iter().enumerate() {
        for k in 0..8 {
            assert_eq!(
                r.words()[rec_base(rec) + k].load(Ordering::Relaxed),
                rec_word(rec, seq, k)
            );
        }
    }
    let c = live.counts();
    eprintln!("{migrated} page migrations, {total_writes} record writes, {c:?}");
    assert!(migrated >= 3000, "only {migrated} migrations");
    assert!(
        c.faults_on_migration + c.faults_woken > 0,
        "writers never met a page under migration: {c:?}"
    );
    assert_eq!(c.stray_faults + c.remap_errors, 0, "{c:?}");
}

#[test]
fn poisoned_copy_leaves_the_page_on_its_node_with_its_data() {
    let mm = memory(8);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = live.region(RegionConfig::new(64 * 4096, 0)).unwrap();
    r.populate().unwrap();
    fill(&r, 3);
    let victim = r.addr() + 5 * 4096;
    let f = r.folio_at(victim).unwrap();
    mm.inject_hwpoison(f.0).unwrap();
    let p = pages(&r, 4096);
    let mut st = vec![-7; p.len()];
    let left = r
        .move_pages(&p, Some(&vec![1; p.len()]), &mut st, MPOL_MF_MOVE)
        .unwrap();
    assert_eq!(left, 1);
    let nodes = nodes_of(&r, 4096);
    assert_eq!(nodes[5], 0);
    assert!(
        nodes.iter().enumerate().all(|(i, &n)| i == 5 || n == 1),
        "{nodes:?}"
    );
    assert_eq!(r.folio_at(victim), Some(f));
    mm.clear_hwpoison(f.0).unwrap();
    assert_eq!(check(&r, 3), 0);
}

#[derive(Default)]
struct FailAllocs(AtomicU64);
impl pagemig::mm::FaultHooks for FailAllocs {
    fn alloc_should_fail(&self, node: NodeId, _: pagemig::mm::Order) -> bool {
        node == NodeId(1) && self.0.fetch_add(1, Ordering::Relaxed) % 3 == 0
    }
}

#[test]
fn failed_allocations_leave_pages_where_they_were() {
    let hooks = Arc::new(FailAllocs::default());
    let mut cfg = MemoryConfig::with_nodes(2, 8 << 20);
    cfg.hooks = Some(hooks);
    let mm = Memory::new(cfg).unwrap();
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = live.region(RegionConfig::new(128 * 4096, 0)).unwrap();
    r.populate().unwrap();
    fill(&r, 11);
    let p = pages(&r, 4096);
    let mut st = vec![0; p.len()];
    let res = r.move_pages(&p, Some(&vec![1; p.len()]), &mut st, MPOL_MF_MOVE);
    // Every third allocation on node 1 fails: the call reports it (ENOMEM, or pages not
    // migrated) and the pages it could not move are still on node 0.
    assert_ne!(res, Ok(0));
    let nodes = nodes_of(&r, 4096);
    assert!(nodes.contains(&0), "{nodes:?}");
    assert!(nodes.iter().all(|&n| n == 0 || n == 1), "{nodes:?}");
    assert_eq!(check(&r, 11), 0);
    assert_eq!(live.counts().remap_errors, 0);
}

#[test]
fn move_pages_statuses_follow_the_man_page() {
    let mm = memory(16);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = live.region(RegionConfig::new(4 << 20, 9)).unwrap();
    // Touch only the first THP.
    r.words()[0].store(1, Ordering::Relaxed);
    let outside = r.addr() + r.len() + 4096;
    let untouched = r.addr() + (2 << 20);
    let q = [r.addr() + 8, untouched, outside, 0];
    let mut st = [0; 4];
    assert_eq!(r.move_pages(&q, None, &mut st, 0), Ok(0));
    assert_eq!(st, [0, -libc::ENOENT, -libc::EFAULT, -libc::EFAULT]);

    // Moving: already on the node, not present, outside, and a second address of a folio
    // already queued (isolated: -EBUSY).
    let a = [r.addr(), r.addr() + 4096, untouched, outside];
    let mut st = [9; 4];
    assert_eq!(
        r.move_pages(&a, Some(&[1, 1, 1, 1]), &mut st, MPOL_MF_MOVE),
        Ok(0)
    );
    assert_eq!(st, [1, -libc::EBUSY, -libc::ENOENT, -libc::EFAULT]);
    let mut st = [9; 1];
    assert_eq!(
        r.move_pages(&a[..1], Some(&[1]), &mut st, MPOL_MF_MOVE),
        Ok(0)
    );
    assert_eq!(st, [1], "already on the target node");
    assert_eq!(r.words()[0].load(Ordering::Relaxed), 1);

    // Whole-call errors.
    let mut st = [0; 1];
    assert_eq!(
        r.move_pages(&a[..1], Some(&[2]), &mut st, MPOL_MF_MOVE),
        Err(pagemig::Errno::NoDev)
    );
    assert_eq!(
        r.move_pages(&a[..1], Some(&[-1]), &mut st, MPOL_MF_MOVE),
        Err(pagemig::Errno::NoDev)
    );
    assert_eq!(
        r.move_pages(&a[..1], Some(&[0]), &mut st, 1 << 5),
        Err(pagemig::Errno::Inval)
    );
    assert_eq!(
        r.move_pages(&a, Some(&[0]), &mut [0; 4], MPOL_MF_MOVE),
        Err(pagemig::Errno::Inval)
    );
    assert_eq!(
        r.move_pages(&a, None, &mut st, 0),
        Err(pagemig::Errno::Inval)
    );
}

#[test]
fn first_touch_is_served_from_the_placement_node_and_threads_may_exit() {
    let mm = memory(8);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let mut cfg = RegionConfig::new(64 * 4096, 0);
    cfg.placement = NodeId(1);
    let r = Arc::new(live.region(cfg).unwrap());
    assert!(nodes_of(&r, 4096).iter().all(|&n| n == -libc::ENOENT));
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in (t..64).step_by(4) {
                    r.words()[i * 512].store(i as u64 + 1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert!(nodes_of(&r, 4096).iter().all(|&n| n == 1));
    assert_eq!(live.counts().faults_populated, 64);
    // The threads are gone; the pages still migrate and keep their data.
    let p = pages(&r, 4096);
    let mut st = vec![0; 64];
    assert_eq!(
        r.move_pages(&p, Some(&[0; 64]), &mut st, MPOL_MF_MOVE),
        Ok(0)
    );
    for i in 0..64 {
        assert_eq!(r.words()[i * 512].load(Ordering::Relaxed), i as u64 + 1);
    }
}

#[test]
fn missing_kernel_support_is_a_clear_error() {
    let mm = memory(4);
    let cfg = LiveConfig {
        pretend_missing_features: pagemig_live::UFFD_FEATURE_MOVE,
        ..Default::default()
    };
    let e = Live::new(&mm, cfg).unwrap_err();
    assert!(matches!(
        e,
        LiveError::MissingFeature {
            feature: "UFFD_FEATURE_MOVE",
            ..
        }
    ));
    assert!(e.to_string().contains("UFFD_FEATURE_MOVE"), "{e}");
    let cfg = LiveConfig {
        pretend_kernel_release: Some("6.6.30-generic".into()),
        ..Default::default()
    };
    let e = Live::new(&mm, cfg).unwrap_err();
    assert!(
        e.to_string().contains("6.6.30") && e.to_string().contains("6.8"),
        "{e}"
    );
    // One live backend per memory.
    let _a = Live::new(&mm, LiveConfig::default()).unwrap();
    let e = Live::new(&mm, LiveConfig::default()).unwrap_err();
    assert!(e.to_string().contains("another live backend"), "{e}");
    // Bad regions.
    assert!(_a.region(RegionConfig::new(4096 + 1, 0)).is_err());
    assert!(_a.region(RegionConfig::new(4 << 20, 10)).is_err());
    let mut c = RegionConfig::new(4096, 0);
    c.placement = NodeId(5);
    assert!(_a.region(c).is_err());
}

#[test]
fn a_page_the_kernel_refuses_to_move_stays_mapped_with_its_data() {
    let mm = memory(8);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = live.region(RegionConfig::new(16 * 4096, 0)).unwrap();
    r.populate().unwrap();
    fill(&r, 5);
    // UFFDIO_MOVE refuses pages of an mlock()ed range (EINVAL): the deferred unmap fails at
    // the flush, the core restores the PTEs and the sync retry fails again, page by page.
    pagemig_live::kernel::mlock_range(r.addr(), r.len(), true).unwrap();
    let p = pages(&r, 4096);
    let mut st = vec![0; p.len()];
    let left = r
        .move_pages(&p, Some(&vec![1; p.len()]), &mut st, MPOL_MF_MOVE)
        .unwrap();
    assert_eq!(left, p.len());
    assert!(nodes_of(&r, 4096).iter().all(|&n| n == 0));
    assert_eq!(check(&r, 5), 0);
    assert!(live.counts().unmap_failures > 0);
    pagemig_live::kernel::mlock_range(r.addr(), r.len(), false).unwrap();
    assert_eq!(
        r.move_pages(&p, Some(&vec![1; p.len()]), &mut st, MPOL_MF_MOVE),
        Ok(0)
    );
    assert!(nodes_of(&r, 4096).iter().all(|&n| n == 1));
    assert_eq!(check(&r, 5), 0);
    let c = live.counts();
    assert_eq!(c.stray_faults + c.remap_errors, 0, "{c:?}");
}

#[test]
fn a_thp_region_takes_huge_frames_from_other_nodes_then_base_pages() {
    // Each node holds exactly one 2 MiB block; the region wants two THPs, placed on node 0:
    // the second comes from node 1.
    let mm = Memory::new(MemoryConfig::with_nodes(2, 2 << 20)).unwrap();
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = live.region(RegionConfig::new(4 << 20, 9)).unwrap();
    r.words()[0].store(1, Ordering::Relaxed);
    r.words()[(2 << 20) / 8].store(2, Ordering::Relaxed);
    assert_eq!(nodes_of(&r, 2 << 20), vec![0, 1]);
    drop(r);
    drop(live);

    // One node whose only 2 MiB block is fragmented by one allocated base page: touches of
    // a THP region fall back to base pages, each mapped alone (the second one finds part
    // of the huge range mapped already).
    let mm = Memory::new(MemoryConfig::with_nodes(1, 2 << 20)).unwrap();
    let pin = mm.alloc_folio(NodeId(0), pagemig::mm::Order(0), 0).unwrap();
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = live.region(RegionConfig::new(2 << 20, 9)).unwrap();
    r.words()[0].store(7, Ordering::Relaxed);
    r.words()[4096 / 8 * 3].store(9, Ordering::Relaxed);
    assert_eq!(r.words()[0].load(Ordering::Relaxed), 7);
    assert_eq!(r.words()[4096 / 8 * 3].load(Ordering::Relaxed), 9);
    for a in [r.addr(), r.addr() + 3 * 4096] {
        let f = r.folio_at(a).unwrap();
        assert_eq!(mm.folio(f).nr_pages(), 1, "fell back to a base page");
    }
    assert_eq!(live.counts().faults_populated, 2);
    drop(r);
    mm.folio_put(pin);
    assert_eq!(
        mm.nr_free_pages_total(),
        mm.nr_pages_total(),
        "frames back in the pool"
    );
}

#[test]
fn two_migrating_threads_with_refused_pages_lose_nothing() {
    // Every fourth 16 KiB chunk is mlocked, so UFFDIO_MOVE refuses its pages: deferred
    // unmaps of both threads' batches fail at their flushes, and each failure must reach
    // the batch whose folio it is (a thread copying from a frame whose page never left the
    // program would read a hole).
    const PAGES: usize = 2048;
    let mm = memory(32);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = Arc::new(live.region(RegionConfig::new(PAGES * 4096, 0)).unwrap());
    r.populate().unwrap();
    fill(&r, 21);
    for chunk in (0..PAGES / 4).step_by(4) {
        pagemig_live::kernel::mlock_range(r.addr() + chunk * 4 * 4096, 4 * 4096, true).unwrap();
    }
    let migrators: Vec<_> = (0..2)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                let p = pages(&r, 4096);
                let mut st = vec![0; p.len()];
                for round in 0..40 {
                    let node = (round + t) % 2;
                    let _ = r.move_pages(&p, Some(&vec![node; p.len()]), &mut st, MPOL_MF_MOVE);
                }
            })
        })
        .collect();
    for m in migrators {
        m.join().unwrap();
    }
    assert_eq!(check(&r, 21), 0);
    let nodes = nodes_of(&r, 4096);
    for (i, n) in nodes.iter().enumerate() {
        if (i / 4) % 4 == 0 {
            assert_eq!(*n, 0, "page {i} is mlocked and cannot have moved");
        }
    }
    let c = live.counts();
    assert!(c.unmap_failures > 0, "{c:?}");
    assert_eq!(c.stray_faults + c.remap_errors, 0, "{c:?}");
    for chunk in (0..PAGES / 4).step_by(4) {
        pagemig_live::kernel::mlock_range(r.addr() + chunk * 4 * 4096, 4 * 4096, false).unwrap();
    }
}

#[test]
fn regions_made_and_dropped_while_others_migrate_never_strand_a_first_touch() {
    // One thread makes a region, writes and checks it and drops it, again and again, while
    // another keeps moving two other regions of the same backend between the nodes: a new
    // region often gets the addresses of the one just dropped, whose backend an
    // end-of-batch flush may still hold. Its first touches must be served (a fault the
    // handler reads and leaves unanswered blocks the thread forever).
    let mm = memory(64);
    let live = Arc::new(Live::new(&mm, LiveConfig::default()).unwrap());
    let others: Vec<Arc<LiveRegion>> = (0..2)
        .map(|k| {
            let r = Arc::new(live.region(RegionConfig::new(1 << 20, 0)).unwrap());
            r.populate().unwrap();
            fill(&r, 100 + k);
            r
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let migrator = {
        let (others, stop) = (others.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for r in &others {
                    let p = pages(r, 4096);
                    let mut st = vec![0; p.len()];
                    let node = (rounds % 2) as i32;
                    let _ = r.move_pages(&p, Some(&vec![node; p.len()]), &mut st, MPOL_MF_MOVE);
                }
                rounds += 1;
            }
            rounds
        })
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let churn = {
        let live = live.clone();
        std::thread::spawn(move || {
            let mut reused = 0;
            let mut last = 0;
            for i in 0..400u64 {
                let r = live.region(RegionConfig::new(64 << 10, 0)).unwrap();
                reused += usize::from(r.addr() == last);
                last = r.addr();
                fill(&r, i);
                assert_eq!(check(&r, i), 0, "round {i}");
                drop(r);
            }
            done_tx.send(reused).unwrap();
        })
    };
    let res = done_rx.recv_timeout(std::time::Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    let c = live.counts();
    let reused = res.unwrap_or_else(|_| panic!("a first touch was never served: {c:?}"));
    churn.join().unwrap();
    let rounds = migrator.join().unwrap();
    assert!(rounds > 0);
    eprintln!("{reused} of 400 regions reused the last one's addresses; {rounds} migration rounds");
    for (k, r) in others.iter().enumerate() {
        assert_eq!(check(r, 100 + k as u64), 0);
    }
    assert_eq!(c.stray_faults + c.remap_errors, 0, "{c:?}");
}

/// `AnonHugePages` of the mapping that holds `addr`, in KiB (`/proc/self/smaps`).
fn anon_huge_kib(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    panic!("no mapping holds {addr:#x}")
}

#[test]
fn thp_region_stays_pmd_mapped_while_writers_run_during_migrations() {
    const LEN: usize = 8 << 20;
    let mm = memory(24);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = Arc::new(live.region(RegionConfig::new(LEN, 9)).unwrap());
    r.populate().unwrap();
    fill(&r, 5);
    assert_eq!(
        anon_huge_kib(r.addr()),
        (LEN >> 10) as u64,
        "populated as THPs"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (r, stop) = (r.clone(), stop.clone());
            std::thread::spawn(move || {
                let words = r.words();
                let mut i = w * 8;
                while !stop.load(Ordering::Relaxed) {
                    // Rewrite the same value: the data stays checkable.
                    let v = words[i].load(Ordering::Relaxed);
                    words[i].store(v, Ordering::Relaxed);
                    i = (i + 4096 / 8 * 7 + 16) % words.len();
                }
            })
        })
        .collect();
    let p = pages(&r, 2 << 20);
    let mut st = vec![0; p.len()];
    let mut huge_after = Vec::new();
    for round in 0..40 {
        let node = 1 - round % 2;
        let left = r
            .move_pages(&p, Some(&vec![node; p.len()]), &mut st, MPOL_MF_MOVE)
            .unwrap();
        assert_eq!(left, 0, "round {round}: {st:?}");
        huge_after.push(anon_huge_kib(r.addr()));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(check(&r, 5), 0);
    let c = live.counts();
    eprintln!("AnonHugePages after each round (KiB): {huge_after:?}; {c:?}");
    assert!(
        huge_after.iter().all(|&k| k == (LEN >> 10) as u64),
        "the region stopped being PMD-mapped: {huge_after:?}; {c:?}"
    );
}

#[test]
fn a_thp_region_on_frames_a_small_folio_region_used_stays_pmd_mapped() {
    // A small-folio region's pages move in and out of the arena page by page, which
    // leaves the arena's 2 MiB ranges with page tables. A THP region that gets those frames
    // afterwards lost its huge pages at the first move in (the kernel moved them page by
    // page), silently: half of this region was not PMD-mapped before the fix.
    const LEN: usize = 8 << 20;
    let mm = memory(24);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    {
        let s = live.region(RegionConfig::new(LEN, 0)).unwrap();
        s.populate().unwrap();
        fill(&s, 3);
        let p = pages(&s, 4096);
        let mut st = vec![0; p.len()];
        for node in [1, 0] {
            assert_eq!(
                s.move_pages(&p, Some(&vec![node; p.len()]), &mut st, MPOL_MF_MOVE),
                Ok(0)
            );
        }
        assert_eq!(check(&s, 3), 0);
    }
    let r = live.region(RegionConfig::new(LEN, 9)).unwrap();
    r.populate().unwrap();
    fill(&r, 5);
    let p = pages(&r, 2 << 20);
    let mut st = vec![0; p.len()];
    let mut huge = vec![anon_huge_kib(r.addr())];
    for round in 0..6 {
        let node = 1 - round % 2;
        assert_eq!(
            r.move_pages(&p, Some(&vec![node; p.len()]), &mut st, MPOL_MF_MOVE),
            Ok(0)
        );
        huge.push(anon_huge_kib(r.addr()));
    }
    assert_eq!(check(&r, 5), 0);
    let c = live.counts();
    assert!(
        huge.iter().all(|&k| k == (LEN >> 10) as u64),
        "AnonHugePages (KiB) after populate and each round: {huge:?}; {c:?}"
    );
    assert_eq!(c.huge_slot_collapses_failed, 0, "{c:?}");
}

#[test]
fn byte_access_reads_and_writes_the_region_across_migrations() {
    let mm = memory(16);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let mut r = live.region(RegionConfig::new(256 << 10, 0)).unwrap();
    assert_eq!(r.as_ptr() as usize, r.addr());
    assert_eq!(r.as_mut_ptr() as usize, r.addr());
    // First touches through the slice: every page read zero, then takes the pattern.
    let b = r.bytes_mut();
    assert_eq!(b.len(), 256 << 10);
    assert!(b.iter().all(|&x| x == 0));
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i * 7 + 3) as u8;
    }
    let p = pages(&r, 4096);
    let mut st = vec![0; p.len()];
    for node in [1, 0, 1] {
        assert_eq!(
            r.move_pages(&p, Some(&vec![node; p.len()]), &mut st, MPOL_MF_MOVE),
            Ok(0)
        );
        assert!(nodes_of(&r, 4096).iter().all(|&n| n == node));
        let b = r.bytes_mut();
        assert!(b.iter().enumerate().all(|(i, &x)| x == (i * 7 + 3) as u8));
    }
    // A system call reads the region (kernel-mode accesses: this backend handles them).
    let path = std::env::temp_dir().join(format!("pagemig-bytes-{}", std::process::id()));
    std::fs::write(&path, &r.bytes_mut()[..4096]).unwrap();
    let back = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(back
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i * 7 + 3) as u8));
}

/// Pools that grow: nodes of 2 MiB with 64 MiB reserves serve a 24 MiB region of base pages
/// and of THPs, first touch by first touch and migration by migration, and every byte
/// survives; the first touches find frames while the node grows under them (the growth
/// registers the new part of the arena with the userfaultfd before handing out its
/// frames: without that, the moves out of the program into a grown part fail).
#[test]
fn node_pools_grow_on_demand_under_first_touches_and_migrations() {
    let mut c = MemoryConfig::with_nodes(2, 2 << 20);
    for n in &mut c.nodes {
        n.max_bytes = Some(64 << 20);
    }
    let mm = Memory::new(c).unwrap();
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    for order in [0u8, 9] {
        let r = live.region(RegionConfig::new(24 << 20, order)).unwrap();
        fill(&r, 11 + order as u64);
        assert!(nodes_of(&r, 4096).iter().all(|&n| n == 0));
        for to in [1, 0, 1] {
            let p = pages(&r, r.folio_bytes());
            let mut st = vec![-1; p.len()];
            assert_eq!(
                r.move_pages(&p, Some(&vec![to; p.len()]), &mut st, MPOL_MF_MOVE),
                Ok(0)
            );
            assert!(nodes_of(&r, 4096).iter().all(|&n| n == to));
            assert_eq!(check(&r, 11 + order as u64), 0);
        }
    }
    let c = live.counts();
    assert!(c.pool_growths >= 8, "{c:?}");
    assert_eq!(
        (c.pool_growth_errors, c.remap_errors, c.stray_faults),
        (0, 0, 0)
    );
    assert!(mm.nodes().iter().all(|n| n.nr_pages() >= 6144));
    assert!(mm.nodes().iter().all(|n| n.nr_pages() <= n.max_pages()));
}

fn read_proc_mem(addr: usize, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/mem")?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr as u64)?;
    Ok(buf)
}

/// Interleaved placement, `discard` (`MADV_DONTNEED`) and `detach`, as `pagemig run` uses
/// them: interleaving alternates the nodes folio by folio; a discarded range reads zero
/// and its frames are back in their pools, the rest of the region is intact; half of a
/// THP is zeroed in place; a detached region keeps every byte where the program is,
/// and its never-touched pages are the kernel's again (read here through /proc/self/mem,
/// a kernel-mode access that a still-registered range would refuse with EFAULT).
#[test]
fn interleave_discard_and_detach_keep_the_program_s_bytes_right() {
    let mm = memory(32);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let mut cfg = RegionConfig::new(8 << 20, 0);
    cfg.interleave = true;
    let r = live.region(cfg).unwrap();
    fill(&r, 21);
    assert_eq!(r.pages_per_node(), vec![1024, 1024]);
    let st = nodes_of(&r, 4096);
    assert!(st.iter().enumerate().all(|(i, &n)| n == (i % 2) as i32));
    let free = (mm.nr_free_pages(NodeId(0)), mm.nr_free_pages(NodeId(1)));
    assert_eq!(r.discard(r.addr() + (1 << 20), 1 << 20).unwrap(), 256);
    assert_eq!(
        (mm.nr_free_pages(NodeId(0)), mm.nr_free_pages(NodeId(1))),
        (free.0 + 128, free.1 + 128)
    );
    let w = r.words();
    let (lo, hi) = ((1 << 20) / 8, (2 << 20) / 8);
    assert!(w[lo..hi].iter().all(|x| x.load(Ordering::Relaxed) == 0));
    let bad = w
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < lo || *i >= hi)
        .filter(|(i, x)| {
            x.load(Ordering::Relaxed) != 21 ^ (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        })
        .count();
    assert_eq!(bad, 0);
    assert!(r.discard(r.addr() + 100, 4096).is_err(), "unaligned");
    assert!(r.discard(r.addr() + (8 << 20), 4096).is_err(), "outside");

    let t = live.region(RegionConfig::new(4 << 20, 9)).unwrap();
    fill(&t, 5);
    assert_eq!(t.discard(t.addr() + (1 << 20), 1 << 20).unwrap(), 0);
    let w = t.words();
    assert!(w[lo..hi].iter().all(|x| x.load(Ordering::Relaxed) == 0));
    assert!(w[..lo]
        .iter()
        .enumerate()
        .all(|(i, x)| x.load(Ordering::Relaxed)
            == 5 ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));

    // Detach: half the region written, half never touched.
    let d = live.region(RegionConfig::new(2 << 20, 0)).unwrap();
    for (i, x) in d.words()[..(1 << 20) / 8].iter().enumerate() {
        x.store(i as u64 * 3 + 1, Ordering::Relaxed);
    }
    let addr = d.addr();
    assert_eq!(d.detach(), 256);
    assert_eq!(live.counts().detached_pages, 256);
    let bytes = read_proc_mem(addr, 2 << 20).expect("a detached range is plain memory");
    let words: Vec<u64> = bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(words[..(1 << 20) / 8]
        .iter()
        .enumerate()
        .all(|(i, &x)| x == i as u64 * 3 + 1));
    assert!(words[(1 << 20) / 8..].iter().all(|&x| x == 0));
    assert_eq!(live.counts().stray_faults, 0);
}

/// Folio size of the page at `addr` of `r`, in bytes.
fn folio_bytes_at(mm: &Memory, r: &LiveRegion, addr: usize) -> usize {
    let f = r.folio_at(addr).expect("mapped");
    mm.folio(f).nr_pages() * 4096
}

#[test]
fn an_untouched_region_is_remade_with_the_folio_size_asked_and_a_touched_one_keeps_its_own() {
    const LEN: usize = (6 << 20) - 4096;
    let mm = memory(24);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    // Base pages -> 2 MiB folios: the region spans its whole mapping.
    let mut r = live.region(RegionConfig::new(LEN, 0)).unwrap();
    let addr = r.addr();
    r.remake(9, 1).unwrap();
    assert_eq!(
        (r.addr(), r.len(), r.folio_bytes()),
        (addr, 6 << 20, 2 << 20)
    );
    fill(&r, 7);
    assert_eq!(folio_bytes_at(&mm, &r, addr + (3 << 20)), 2 << 20);
    assert_eq!(anon_huge_kib(addr), 6 << 10);
    let p = pages(&r, 2 << 20);
    let mut st = vec![0; p.len()];
    for node in [1, 0] {
        assert_eq!(
            r.move_pages(&p, Some(&vec![node; p.len()]), &mut st, MPOL_MF_MOVE),
            Ok(0)
        );
    }
    assert_eq!(check(&r, 7), 0);
    // In use now: refused, and nothing changes.
    match r.remake(0, 1) {
        Err(LiveError::Touched { addr: a, len }) => assert_eq!((a, len), (addr, 6 << 20)),
        other => panic!("a touched region was remade: {other:?}"),
    }
    assert_eq!(r.folio_bytes(), 2 << 20);
    assert_eq!(check(&r, 7), 0);
    assert_eq!(anon_huge_kib(addr), 6 << 10);
    drop(r);
    // 2 MiB folios -> base pages.
    let mut r = live.region(RegionConfig::new(4 << 20, 9)).unwrap();
    r.remake(0, 1).unwrap();
    assert_eq!((r.len(), r.folio_bytes()), (4 << 20, 4096));
    fill(&r, 9);
    assert_eq!(folio_bytes_at(&mm, &r, r.addr() + (2 << 20)), 4096);
    assert_eq!(anon_huge_kib(r.addr()), 0);
    assert_eq!(check(&r, 9), 0);
    // A folio size that is neither is refused.
    assert!(matches!(r.remake(4, 1), Err(LiveError::InvalidConfig(_))));
    let c = live.counts();
    assert_eq!(c.remap_errors + c.stray_faults, 0, "{c:?}");
}

#[test]
fn a_first_touch_racing_a_remake_is_served_by_one_region_or_the_other_and_kept() {
    // The toucher's first touch reaches the fault handler while the main thread remakes
    // the region, 0 to 70 µs (and the timer's slack) after the two start, a different delay each round.
    let mm = memory(16);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let (mut remade, mut refused) = (0, 0);
    for round in 1..=200u64 {
        let mut r = live.region(RegionConfig::new(2 << 20, 0)).unwrap();
        let base = r.addr();
        let start = Arc::new(std::sync::Barrier::new(2));
        let s2 = start.clone();
        let toucher = std::thread::spawn(move || {
            s2.wait();
            for page in 0..4 {
                // SAFETY: the region lives until this thread is joined; the other thread
                // only remakes it, which makes no Rust reference into its memory.
                unsafe { std::ptr::write_volatile((base + page * 4096) as *mut u64, round) };
            }
        });
        start.wait();
        // A sleep: on two CPUs the handler thread needs the one this thread would spin on.
        std::thread::sleep(std::time::Duration::from_micros(round % 8 * 10));
        match r.remake(9, 1) {
            Ok(()) => remade += 1,
            Err(LiveError::Touched { .. }) => refused += 1,
            Err(e) => panic!("round {round}: {e}"),
        }
        toucher.join().unwrap();
        let w = r.words();
        for (i, x) in w.iter().enumerate() {
            let want = if i % 512 == 0 && i / 512 < 4 {
                round
            } else {
                0
            };
            assert_eq!(x.load(Ordering::Relaxed), want, "round {round}: word {i}");
        }
        let c = live.counts();
        assert_eq!(c.remap_errors + c.stray_faults, 0, "round {round}: {c:?}");
    }
    eprintln!("remade {remade}, refused {refused} of 200");
}
