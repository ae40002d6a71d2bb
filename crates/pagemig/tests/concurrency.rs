//! Accessors reading and writing while their pages migrate: no lost or torn writes with
//! the real pipeline, and a negative control that copies before the TLB shootdown and
//! does lose writes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pagemig::migrate::{Mode, Reason};
use pagemig::mm::{AddressSpace, FaultHooks, Memory, NodeId, Order, VirtAddr, PAGE_SIZE};
use pagemig::offload::{CopyBatch, DefaultCopier, Migrator, ReasonMask};
use pagemig::Errno;

const MB: usize = 1 << 20;
const NR_WRITER_PAGES: usize = 48;
const NR_READER_PAGES: usize = 16;

struct Control(bool);
impl FaultHooks for Control {
    fn copy_before_flush(&self) -> bool {
        self.0
    }
}

/// Copies and marks the batch, then lingers, widening the window in which a writer with a
/// stale translation could still write the source.
struct LingeringCopier;
impl Migrator for LingeringCopier {
    fn name(&self) -> &str {
        "lingering"
    }
    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        for i in 0..batch.len() {
            batch.copy_folio(i)?;
            batch.mark_copied(i);
        }
        std::thread::sleep(Duration::from_millis(3));
        Ok(())
    }
}

#[derive(Default, Debug)]
struct Losses {
    lost_writes: u64,
    torn_reads: u64,
    writes: u64,
    reads: u64,
}

fn slot_va(s: usize) -> VirtAddr {
    VirtAddr(BASE + (s * PAGE_SIZE + (s * 16) % PAGE_SIZE) as u64)
}

fn reader_va(p: usize) -> VirtAddr {
    VirtAddr(BASE + ((NR_WRITER_PAGES + p) * PAGE_SIZE) as u64)
}

fn folio_starts() -> Vec<u64> {
    // Writer pages: 32 base pages, then an order-4 folio; reader pages: order-2 folios.
    let mut v: Vec<u64> = (0..32).map(|i| BASE + (i * PAGE_SIZE) as u64).collect();
    v.push(BASE + (32 * PAGE_SIZE) as u64);
    for k in 0..NR_READER_PAGES / 4 {
        v.push(BASE + ((NR_WRITER_PAGES + 4 * k) * PAGE_SIZE) as u64);
    }
    v
}

fn setup(mm: &Arc<Memory>) -> Arc<AddressSpace> {
    let sp = space(mm, 4 * MB);
    for i in 0..32 {
        sp.map_anon(VirtAddr(BASE + (i * PAGE_SIZE) as u64), NodeId(0), Order(0))
            .unwrap();
    }
    sp.map_anon(
        VirtAddr(BASE + (32 * PAGE_SIZE) as u64),
        NodeId(0),
        Order(4),
    )
    .unwrap();
    for k in 0..NR_READER_PAGES / 4 {
        sp.map_anon(
            VirtAddr(BASE + ((NR_WRITER_PAGES + 4 * k) * PAGE_SIZE) as u64),
            NodeId(0),
            Order(2),
        )
        .unwrap();
    }
    let acc = sp.accessor();
    for p in 0..NR_READER_PAGES {
        acc.write(reader_va(p), &pattern(99, p)).unwrap();
    }
    for s in 0..NR_WRITER_PAGES {
        acc.write(slot_va(s), &[0u8; 16]).unwrap();
        acc.write_u64(VirtAddr(slot_va(s).0 + 8), !0 ^ s as u64)
            .unwrap();
    }
    sp
}

/// Runs a writer, a reader and `nr_migrations` whole-space migrations; returns the losses.
fn run(
    copy_before_flush: bool,
    migrator: Arc<dyn Migrator>,
    mode: Mode,
    nr_migrations: usize,
) -> Losses {
    let mm = memory_with(16 * MB, Some(Arc::new(Control(copy_before_flush))), None);
    let sp = setup(&mm);
    mm.offload()
        .register(migrator.clone(), ReasonMask::ALL)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));

    let writer = {
        let (sp, stop, started) = (sp.clone(), stop.clone(), started.clone());
        std::thread::spawn(move || {
            let acc = sp.accessor();
            let mut l = Losses::default();
            let mut last = vec![0u64; NR_WRITER_PAGES];
            let mut seq = 1u64;
            started.fetch_add(1, Ordering::SeqCst);
            while !stop.load(Ordering::Relaxed) {
                for (s, expect) in last.iter_mut().enumerate() {
                    let mut b = [0u8; 16];
                    acc.read(slot_va(s), &mut b).unwrap();
                    let v = u64::from_le_bytes(b[..8].try_into().unwrap());
                    let c = u64::from_le_bytes(b[8..].try_into().unwrap());
                    l.reads += 1;
                    if c != !v ^ s as u64 {
                        l.torn_reads += 1;
                    }
                    if v != *expect {
                        l.lost_writes += 1;
                    }
                    b[..8].copy_from_slice(&seq.to_le_bytes());
                    b[8..].copy_from_slice(&(!seq ^ s as u64).to_le_bytes());
                    acc.write(slot_va(s), &b).unwrap();
                    l.writes += 1;
                    *expect = seq;
                }
                seq += 1;
            }
            // Final check after the last migration.
            for (s, expect) in last.iter().enumerate() {
                if acc.read_u64(slot_va(s)).unwrap() != *expect {
                    l.lost_writes += 1;
                }
            }
            l
        })
    };
    let reader = {
        let (sp, stop, started) = (sp.clone(), stop.clone(), started.clone());
        std::thread::spawn(move || {
            let acc = sp.accessor();
            let mut l = Losses::default();
            let mut buf = vec![0u8; PAGE_SIZE];
            started.fetch_add(1, Ordering::SeqCst);
            while !stop.load(Ordering::Relaxed) {
                for p in 0..NR_READER_PAGES {
                    acc.read(reader_va(p), &mut buf).unwrap();
                    l.reads += 1;
                    if buf != pattern(99, p) {
                        l.torn_reads += 1;
                    }
                }
            }
            l
        })
    };
    while started.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    let mut node = 0;
    for _ in 0..nr_migrations {
        node = 1 - node;
        let folios: Vec<_> = folio_starts()
            .into_iter()
            .map(|va| sp.folio_at(VirtAddr(va)).unwrap())
            .collect();
        let mut list = isolate_all(&mm, &folios);
        let res = migrate_to(&mm, &mut list, node, mode, Reason::Demotion);
        assert_eq!(res.rc, Ok(0));
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::SeqCst);
    let w = writer.join().unwrap();
    let r = reader.join().unwrap();
    for va in folio_starts() {
        assert_eq!(node_at(&sp, va), node, "every folio migrated");
    }
    mm.offload().unregister(&migrator).unwrap();
    drop(sp);
    assert_frames_balanced(&mm);
    Losses {
        lost_writes: w.lost_writes,
        torn_reads: w.torn_reads + r.torn_reads,
        writes: w.writes,
        reads: w.reads + r.reads,
    }
}

#[test]
fn accessors_lose_no_write_and_see_no_torn_data_during_migration() {
    for (migrator, mode) in [
        (Arc::new(LingeringCopier) as Arc<dyn Migrator>, Mode::Async),
        (Arc::new(DefaultCopier) as Arc<dyn Migrator>, Mode::Async),
        (Arc::new(DefaultCopier) as Arc<dyn Migrator>, Mode::Sync),
    ] {
        let l = run(false, migrator, mode, 60);
        assert!(l.writes > 1000, "the writer made progress: {l:?}");
        assert_eq!(l.lost_writes, 0, "{l:?}");
        assert_eq!(l.torn_reads, 0, "{l:?}");
    }
}

#[test]
fn negative_control_copying_before_the_tlb_shootdown_loses_writes() {
    let l = run(true, Arc::new(LingeringCopier), Mode::Async, 30);
    eprintln!("negative control: {l:?}");
    assert!(
        l.lost_writes > 0,
        "copy before flush should lose concurrent writes: {l:?}"
    );
}
