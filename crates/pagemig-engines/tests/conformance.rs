//! The conformance suite every copy engine passes: the default copier, mtcopy and dcbm.
//! The migrated folios are anonymous, page cache and shmem in turn (`mapped`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemig::migrate::{alloc_on_node, migrate_pages, MigratePagesResult, Mode, Reason};
use pagemig::mm::{
    migrate_info, AddressSpace, File, FileKind, Folio, Memory, MemoryConfig, MigrateFolioOp,
    NodeId, Order, Pfn, VirtAddr, PAGE_SIZE,
};
use pagemig::offload::{CopyBatch, DefaultCopier, Migrator, ReasonMask};
use pagemig_engines::dcbm::Dcbm;
use pagemig_engines::emulated::{EmulatedConfig, EmulatedDmaDevice};
use pagemig_engines::mtcopy::MtCopy;
use pagemig_engines::ModuleParams;

const MB: usize = 1 << 20;
const BASE: u64 = 0x10_0000_0000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Default,
    MtCopy(usize),
    Dcbm(usize),
}

const KINDS: [Kind; 5] = [
    Kind::Default,
    Kind::MtCopy(2),
    Kind::MtCopy(3),
    Kind::Dcbm(1),
    Kind::Dcbm(4),
];

struct Rig {
    mm: Arc<Memory>,
    kind: Kind,
    default: Option<Arc<dyn Migrator>>,
    mt: Option<MtCopy>,
    dcbm: Option<Dcbm>,
    dev: Option<Arc<EmulatedDmaDevice>>,
}

impl Rig {
    fn new(kind: Kind, capacity: usize, cfg: EmulatedConfig) -> Rig {
        let mm = Memory::new(MemoryConfig::with_nodes(2, capacity)).unwrap();
        // `PAGEMIG_TEST_PIPELINE=BYTES[,overlap]`: the same suite over the pipelined batch
        // copy, sub-batches from BYTES up, in turn or overlapped (CI runs it each way).
        if let Ok(v) = std::env::var("PAGEMIG_TEST_PIPELINE") {
            let (bytes, overlap) = match v.split_once(',') {
                Some((b, "overlap")) => (b.to_string(), true),
                None => (v.clone(), false),
                Some(_) => panic!("PAGEMIG_TEST_PIPELINE is BYTES or BYTES,overlap"),
            };
            mm.offload()
                .set_pipeline(Some(pagemig::offload::PipelineConfig {
                    first_sub_batch_bytes: bytes.parse().expect("a size in bytes"),
                    overlap,
                }));
        }
        let mut r = Rig {
            mm: mm.clone(),
            kind,
            default: None,
            mt: None,
            dcbm: None,
            dev: None,
        };
        match kind {
            Kind::Default => {
                let m: Arc<dyn Migrator> = Arc::new(DefaultCopier);
                mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
                r.default = Some(m);
            }
            Kind::MtCopy(n) => {
                let d = MtCopy::new(&mm);
                d.set_param("threads", &n.to_string()).unwrap();
                d.set_param("offloading", "1").unwrap();
                r.mt = Some(d);
            }
            Kind::Dcbm(n) => {
                let dev = EmulatedDmaDevice::new(&mm, cfg);
                let d = Dcbm::new(&mm, dev.clone());
                d.set_param("nr_dma_chan", &n.to_string()).unwrap();
                d.set_param("offloading", "1").unwrap();
                r.dcbm = Some(d);
                r.dev = Some(dev);
            }
        }
        r
    }

    fn simple(kind: Kind) -> Rig {
        Rig::new(kind, 32 * MB, EmulatedConfig::default())
    }

    fn migrator(&self) -> Arc<dyn Migrator> {
        match self.kind {
            Kind::Default => self.default.clone().unwrap(),
            Kind::MtCopy(_) => self.mt.as_ref().unwrap().migrator(),
            Kind::Dcbm(_) => self.dcbm.as_ref().unwrap().migrator(),
        }
    }

    fn params(&self) -> Option<&dyn ModuleParams> {
        match self.kind {
            Kind::Default => None,
            Kind::MtCopy(_) => Some(self.mt.as_ref().unwrap()),
            Kind::Dcbm(_) => Some(self.dcbm.as_ref().unwrap()),
        }
    }

    fn counter(&self, name: &str) -> u64 {
        self.params()
            .map_or(0, |p| p.param(name).unwrap().parse().unwrap())
    }

    fn stop(&self) {
        match self.kind {
            Kind::Default => {
                self.mm
                    .offload()
                    .unregister(self.default.as_ref().unwrap())
                    .unwrap();
            }
            _ => self.params().unwrap().set_param("offloading", "0").unwrap(),
        }
    }

    fn finish(self, spaces: Vec<Arc<AddressSpace>>) {
        self.stop();
        drop(spaces);
        // Then the files whose folios the spaces mapped (truncated on drop).
        drop_files();
        assert_eq!(
            self.mm.nr_free_pages_total(),
            self.mm.nr_pages_total(),
            "{:?}: frames leaked",
            self.kind
        );
        if let Some(d) = &self.dev {
            assert_eq!(d.nr_channels_in_use(), 0, "channels released");
        }
        if let Some(m) = &self.mt {
            assert_eq!(m.nr_pool_threads(), 0, "pool released");
        }
    }
}

fn fill(mm: &Memory, f: Folio, seed: u64) {
    mm.folio_fill(f, seed);
}

thread_local! {
    /// The files `mapped` created, kept until `Rig::finish` has dropped the spaces.
    static FILES: std::cell::RefCell<Vec<File>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Drops the files `mapped` created (after their spaces).
fn drop_files() {
    drop(FILES.with(|f| std::mem::take(&mut *f.borrow_mut())));
}

/// Maps `n` folios of `order` on node 0 in a fresh space from BASE: folio `i` is
/// anonymous, a regular file's page cache or shmem as `i % 3` is 0, 1 or 2.
fn mapped(mm: &Arc<Memory>, n: usize, order: u8) -> (Arc<AddressSpace>, Vec<u64>) {
    let size = PAGE_SIZE << order;
    let sp = mm
        .new_space(VirtAddr(BASE), (n * size).max(PAGE_SIZE))
        .unwrap();
    let file = mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap));
    let shmem = mm.create_file(FileKind::Shmem);
    let mut sums = Vec::new();
    for i in 0..n {
        let va = VirtAddr(BASE + (i * size) as u64);
        let f = match i % 3 {
            0 => sp.map_anon(va, NodeId(0), Order(order)).unwrap(),
            k => {
                let file = if k == 1 { &file } else { &shmem };
                let index = (i << order) as u64;
                let f = file.add_folio(index, NodeId(0), Order(order)).unwrap();
                sp.map_file(va, file, index, 1 << order).unwrap();
                f
            }
        };
        fill(mm, f, i as u64 * 31 + order as u64);
        sums.push(mm.folio_checksum(f));
    }
    FILES.with(|f| f.borrow_mut().extend([file, shmem]));
    (sp, sums)
}

fn folios_of(sp: &AddressSpace, n: usize, order: u8) -> Vec<Folio> {
    (0..n)
        .map(|i| {
            sp.folio_at(VirtAddr(BASE + (i * (PAGE_SIZE << order)) as u64))
                .unwrap()
        })
        .collect()
}

fn migrate_all(
    mm: &Memory,
    sp: &AddressSpace,
    n: usize,
    order: u8,
    node: u32,
    mode: Mode,
) -> (MigratePagesResult, Vec<Folio>) {
    let mut list = folios_of(sp, n, order);
    for &f in &list {
        mm.isolate_folio(f).unwrap();
    }
    let mut alloc = alloc_on_node(NodeId(node));
    let res = migrate_pages(mm, &mut list, &mut alloc, None, mode, Reason::Demotion).unwrap();
    (res, list)
}

fn check(mm: &Memory, sp: &AddressSpace, sums: &[u64], order: u8) {
    for (i, s) in sums.iter().enumerate() {
        let f = sp
            .folio_at(VirtAddr(BASE + (i * (PAGE_SIZE << order)) as u64))
            .unwrap();
        assert_eq!(mm.folio_checksum(f), *s, "folio {i} content");
    }
}

#[test]
fn exact_bytes_for_every_folio_size_and_batch_size() {
    for kind in KINDS {
        let rig = Rig::new(kind, 40 * MB, EmulatedConfig::default());
        let mm = rig.mm.clone();
        let m = rig.migrator();
        for order in 0..=9u8 {
            let size = PAGE_SIZE << order;
            for n in [0usize, 1, 2, 3, 5, 16, 64] {
                if n * size > 16 * MB {
                    continue;
                }
                let src: Vec<Folio> = (0..n)
                    .map(|_| mm.alloc_folio(NodeId(0), Order(order), 0).unwrap())
                    .collect();
                let dst: Vec<Folio> = (0..n)
                    .map(|_| mm.alloc_folio(NodeId(1), Order(order), 0).unwrap())
                    .collect();
                for (i, &s) in src.iter().enumerate() {
                    fill(&mm, s, (i * 7 + order as usize) as u64);
                }
                let rc = m.offload_copy(&CopyBatch::new(&mm, &dst, &src));
                assert!(rc.is_ok(), "{kind:?} order {order} n {n}: {rc:?}");
                for i in 0..n {
                    assert_ne!(
                        mm.folio(dst[i]).migrate_info() & migrate_info::CONTENT_COPIED,
                        0,
                        "{kind:?} {order} {n}: marked"
                    );
                    assert_eq!(
                        mm.folio_checksum(dst[i]),
                        mm.folio_checksum(src[i]),
                        "{kind:?} order {order} n {n} folio {i}"
                    );
                }
                for f in src.into_iter().chain(dst) {
                    mm.folio_put(f);
                }
            }
        }
        // And through the whole pipeline, a large migration of 4 KiB folios with a raised
        // batch size (several engine batches of 2048 pages).
        mm.set_batch_pages(2048).unwrap();
        let (sp, sums) = mapped(&mm, 3000, 0);
        let (res, list) = migrate_all(&mm, &sp, 3000, 0, 1, Mode::Async);
        assert_eq!(res.rc, Ok(0), "{kind:?}");
        assert!(list.is_empty());
        assert_eq!(
            res.stats.nr_copied_by_batch, 3000,
            "{kind:?}: all copies came from the engine"
        );
        check(&mm, &sp, &sums, 0);
        rig.finish(vec![sp]);
    }
}

#[test]
fn a_declined_batch_is_still_copied_exactly_once() {
    for kind in [Kind::MtCopy(2), Kind::Dcbm(2)] {
        let rig = Rig::simple(kind);
        rig.params()
            .unwrap()
            .set_param("min_batch_bytes", &(64 * MB).to_string())
            .unwrap();
        let mm = rig.mm.clone();
        // One declined call: the series' one call per batch (pipelined, each sub-batch
        // is a call and is declined on its own; `pipelined_calls_...` below counts those).
        mm.offload().set_pipeline(None);
        let (sp, sums) = mapped(&mm, 32, 2);
        let (res, _) = migrate_all(&mm, &sp, 32, 2, 1, Mode::Async);
        assert_eq!(res.rc, Ok(0));
        assert_eq!(
            res.stats.nr_copied_by_batch + res.stats.nr_copied_on_cpu,
            32,
            "{kind:?}"
        );
        let declined = match kind {
            Kind::Dcbm(_) => rig.counter("batches_declined"),
            _ => {
                rig.mt
                    .as_ref()
                    .unwrap()
                    .counters()
                    .iter()
                    .find(|c| c.0 == "batches_inline")
                    .unwrap()
                    .1
            }
        };
        assert_eq!(declined, 1, "{kind:?}");
        check(&mm, &sp, &sums, 2);
        rig.finish(vec![sp]);
    }
}

#[test]
fn partial_failure_falls_back_per_folio_and_nothing_is_copied_twice() {
    for kind in [Kind::MtCopy(2), Kind::Dcbm(1), Kind::Dcbm(3)] {
        let rig = Rig::simple(kind);
        match kind {
            Kind::Dcbm(_) => {
                rig.params()
                    .unwrap()
                    .set_param("max_desc_bytes", "4096")
                    .unwrap();
                rig.dev
                    .as_ref()
                    .unwrap()
                    .faults()
                    .fail_every
                    .store(3, Ordering::SeqCst);
            }
            _ => rig
                .params()
                .unwrap()
                .set_param("inject_fail_every", "3")
                .unwrap(),
        }
        let mm = rig.mm.clone();
        let (sp, sums) = mapped(&mm, 60, 0);
        let (res, _) = migrate_all(&mm, &sp, 60, 0, 1, Mode::Async);
        assert_eq!(res.rc, Ok(0), "{kind:?}");
        let by_engine = rig.counter("folios_migrated") as usize;
        let failed = rig.counter("folios_failures") as usize;
        assert!(
            failed > 0 && by_engine > 0,
            "{kind:?}: some failed, some did not ({by_engine}/{failed})"
        );
        assert_eq!(by_engine + failed, 60, "{kind:?}: counters add up");
        assert_eq!(res.stats.nr_copied_by_batch, by_engine, "{kind:?}");
        assert_eq!(
            res.stats.nr_copied_on_cpu, failed,
            "{kind:?}: only unmarked folios copied on the CPU"
        );
        check(&mm, &sp, &sums, 0);
        rig.finish(vec![sp]);
    }
}

#[test]
fn a_poisoned_source_fails_only_its_folio() {
    for kind in KINDS {
        let rig = Rig::simple(kind);
        let mm = rig.mm.clone();
        let (sp, sums) = mapped(&mm, 16, 1);
        let victim = folios_of(&sp, 16, 1)[5];
        mm.inject_hwpoison(Pfn(victim.pfn().0 + 1)).unwrap();
        let (res, list) = migrate_all(&mm, &sp, 16, 1, 1, Mode::Async);
        assert_eq!(res.rc, Ok(1), "{kind:?}");
        assert_eq!(list, vec![victim]);
        assert_eq!(
            sp.folio_at(VirtAddr(BASE + (5 * 2 * PAGE_SIZE) as u64)),
            Some(victim),
            "still mapped"
        );
        for (i, s) in sums.iter().enumerate() {
            let f = sp
                .folio_at(VirtAddr(BASE + (i * 2 * PAGE_SIZE) as u64))
                .unwrap();
            assert_eq!(mm.folio(f).node(), NodeId(if i == 5 { 0 } else { 1 }));
            assert_eq!(mm.folio_checksum(f), *s, "{kind:?}: folio {i} intact");
        }
        let mut list = list;
        mm.putback_movable_pages(&mut list);
        rig.finish(vec![sp]);
    }
}

#[test]
fn out_of_order_completion_is_waited_for_descriptor_by_descriptor() {
    for kind in KINDS {
        let cfg = EmulatedConfig {
            engines_per_channel: 2,
            ..Default::default()
        };
        let rig = Rig::new(kind, 32 * MB, cfg);
        if let Some(dev) = &rig.dev {
            // The first of every pair completes 2 ms after the second.
            dev.faults().reorder_delay_us.store(2000, Ordering::SeqCst);
            rig.params()
                .unwrap()
                .set_param("max_desc_bytes", "8192")
                .unwrap();
        }
        let mm = rig.mm.clone();
        let (sp, sums) = mapped(&mm, 24, 1);
        let (res, _) = migrate_all(&mm, &sp, 24, 1, 1, Mode::Async);
        assert_eq!(res.rc, Ok(0), "{kind:?}");
        // Checked at once: a driver that trusted the last completion would leave
        // destinations still being written here.
        check(&mm, &sp, &sums, 1);
        if let Kind::Dcbm(_) = kind {
            assert_eq!(res.stats.nr_copied_by_batch, 24, "{kind:?}");
        }
        rig.finish(vec![sp]);
    }
}

#[test]
fn a_stalled_channel_times_out_and_the_batch_falls_back() {
    for n in [1, 3] {
        let rig = Rig::simple(Kind::Dcbm(n));
        let d = rig.params().unwrap();
        d.set_param("timeout_ms", "50").unwrap();
        d.set_param("max_desc_bytes", "4096").unwrap();
        let f = rig.dev.as_ref().unwrap().faults().clone();
        f.stall_ms.store(5000, Ordering::SeqCst);
        f.stall_every.store(4, Ordering::SeqCst);
        let mm = rig.mm.clone();
        let (sp, sums) = mapped(&mm, 20, 0);
        let t = Instant::now();
        let (res, _) = migrate_all(&mm, &sp, 20, 0, 1, Mode::Async);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "did not wait for the stall"
        );
        assert_eq!(res.rc, Ok(0));
        assert!(f.nr_stalled.load(Ordering::SeqCst) > 0);
        assert!(rig.counter("folios_failures") > 0);
        assert_eq!(
            rig.counter("folios_failures") + rig.counter("folios_migrated"),
            20
        );
        check(&mm, &sp, &sums, 0);
        rig.finish(vec![sp]);
    }
}

#[test]
fn no_channel_means_offloading_cannot_start_and_nothing_changes() {
    let mm = Memory::new(MemoryConfig::with_nodes(2, 4 * MB)).unwrap();
    let dev = EmulatedDmaDevice::new(&mm, EmulatedConfig::default());
    dev.faults().no_channel.store(true, Ordering::SeqCst);
    let d = Dcbm::new(&mm, dev.clone());
    assert!(d.set_param("offloading", "1").is_err());
    assert_eq!(d.param("offloading").unwrap(), "0");
    assert!(!mm.offload().is_enabled());
}

#[test]
fn all_channels_busy_refuses_the_batch_to_the_cpu() {
    let rig = Rig::simple(Kind::Dcbm(1));
    let f = rig.dev.as_ref().unwrap().faults().clone();
    let mm = rig.mm.clone();
    // Two migrations race for the single channel; one stalls it for a while.
    f.reorder_delay_us.store(20_000, Ordering::SeqCst);
    rig.params()
        .unwrap()
        .set_param("max_desc_bytes", "4096")
        .unwrap();
    let (sp_a, sums_a) = mapped(&mm, 8, 0);
    let sp_b = mm.new_space(VirtAddr(BASE), 8 * PAGE_SIZE).unwrap();
    let mut sums_b = Vec::new();
    for i in 0..8 {
        let f = sp_b
            .map_anon(VirtAddr(BASE + (i * PAGE_SIZE) as u64), NodeId(0), Order(0))
            .unwrap();
        fill(&mm, f, 1000 + i as u64);
        sums_b.push(mm.folio_checksum(f));
    }
    let t = {
        let (mm, sp_a) = (mm.clone(), sp_a.clone());
        std::thread::spawn(move || migrate_all(&mm, &sp_a, 8, 0, 1, Mode::Async).0)
    };
    // Wait until the first migration's batch is on the engine (its first descriptor ran;
    // the pair's other one completes 20 ms later, and three more pairs follow).
    let t0 = Instant::now();
    while f.nr_done.load(Ordering::SeqCst) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the first batch never reached the engine"
        );
        std::thread::yield_now();
    }
    let (rb, _) = migrate_all(&mm, &sp_b, 8, 0, 1, Mode::Async);
    let ra = t.join().unwrap();
    assert_eq!((ra.rc, rb.rc), (Ok(0), Ok(0)));
    assert!(
        rig.counter("batches_refused") >= 1,
        "the second batch found the channel busy"
    );
    check(&mm, &sp_a, &sums_a, 0);
    check(&mm, &sp_b, &sums_b, 0);
    rig.finish(vec![sp_a, sp_b]);
}

#[test]
fn unregister_while_a_batch_is_in_flight() {
    for kind in KINDS {
        let rig = Rig::new(kind, 48 * MB, EmulatedConfig::default());
        let mm = rig.mm.clone();
        let (sp, sums) = mapped(&mm, 16, 9);
        let t = {
            let (mm, sp) = (mm.clone(), sp.clone());
            std::thread::spawn(move || migrate_all(&mm, &sp, 16, 9, 1, Mode::Sync).0)
        };
        std::thread::sleep(Duration::from_millis(2));
        rig.stop();
        let res = t.join().unwrap();
        assert_eq!(res.rc, Ok(0), "{kind:?}");
        check(&mm, &sp, &sums, 9);
        // Offloading is off now: the next migration copies on the CPU alone.
        let (res, _) = migrate_all(&mm, &sp, 16, 9, 0, Mode::Sync);
        assert_eq!((res.rc, res.stats.nr_copied_by_batch), (Ok(0), 0));
        check(&mm, &sp, &sums, 9);
        drop(sp);
        drop_files();
        assert_eq!(mm.nr_free_pages_total(), mm.nr_pages_total());
        if let Some(d) = &rig.dev {
            assert_eq!(d.nr_channels_in_use(), 0);
        }
        if let Some(m) = &rig.mt {
            assert_eq!(m.nr_pool_threads(), 0);
        }
    }
}

#[test]
fn two_migrations_at_once_on_one_engine() {
    for kind in KINDS {
        let rig = Rig::new(kind, 48 * MB, EmulatedConfig::default());
        let mm = rig.mm.clone();
        let (sp_a, sums_a) = mapped(&mm, 600, 0);
        let sp_b = mm.new_space(VirtAddr(BASE), 8 * MB).unwrap();
        let mut sums_b = Vec::new();
        for i in 0..4 {
            let f = sp_b
                .map_anon(VirtAddr(BASE + (i * 2 * MB) as u64), NodeId(0), Order(9))
                .unwrap();
            fill(&mm, f, 77 + i as u64);
            sums_b.push(mm.folio_checksum(f));
        }
        for round in 0..4u32 {
            let node = 1 - round % 2;
            let a = {
                let (mm, sp) = (mm.clone(), sp_a.clone());
                std::thread::spawn(move || migrate_all(&mm, &sp, 600, 0, node, Mode::Async).0)
            };
            let (rb, _) = migrate_all(&mm, &sp_b, 4, 9, node, Mode::Sync);
            let ra = a.join().unwrap();
            assert_eq!((ra.rc, rb.rc), (Ok(0), Ok(0)), "{kind:?}");
            check(&mm, &sp_a, &sums_a, 0);
            check(&mm, &sp_b, &sums_b, 9);
        }
        rig.finish(vec![sp_a, sp_b]);
    }
}

#[test]
fn knobs_read_back_what_is_in_force_and_bad_values_change_nothing() {
    let mm = Memory::new(MemoryConfig::with_nodes(2, 4 * MB)).unwrap();
    let dev = EmulatedDmaDevice::new(&mm, EmulatedConfig::default());
    let d = Dcbm::new(&mm, dev);
    assert_eq!(d.param("nr_dma_chan").unwrap(), "1");
    assert_eq!(d.param("offloading").unwrap(), "0");
    assert!(d.set_param("nr_dma_chan", "0").is_err());
    assert!(d.set_param("nr_dma_chan", "17").is_err());
    assert!(d.set_param("reason_mask", "compaction,bogus").is_err());
    assert!(d.set_param("no_such_knob", "1").is_err());
    assert_eq!(d.param("nr_dma_chan").unwrap(), "1");
    assert_eq!(d.param("reason_mask").unwrap(), ReasonMask::ALL.to_string());
    d.set_param("nr_dma_chan", "4").unwrap();
    d.set_param("reason_mask", "demotion").unwrap();
    d.set_param("offloading", "1").unwrap();
    assert_eq!(d.nr_channels_held(), 4);
    assert_eq!(mm.offload().reason_mask().to_string(), "demotion");
    assert!(
        d.set_param("nr_dma_chan", "2").is_err(),
        "channels change only while off"
    );
    d.set_param("reason_mask", "compaction,demotion").unwrap();
    assert_eq!(
        mm.offload().reason_mask().to_string(),
        "compaction,demotion",
        "pushed live to the core"
    );
    d.set_param("offloading", "0").unwrap();
    assert!(!mm.offload().is_enabled());

    let m = MtCopy::new(&mm);
    assert!(m.set_param("threads", "65").is_err());
    assert!(m.set_param("threads", "0").is_err());
    assert!(m.set_param("cpuselect", "diagonal").is_err());
    m.set_param("threads", "3").unwrap();
    m.set_param("offloading", "1").unwrap();
    assert_eq!(
        m.nr_pool_threads(),
        2,
        "the caller is the third copy thread"
    );
    m.set_param("threads", "2").unwrap();
    assert_eq!(m.nr_pool_threads(), 1, "resized while on");
    assert_eq!(m.param("threads").unwrap(), "2");
    m.set_param("cpuselect", "fill").unwrap();
    assert_eq!(m.param("cpuselect").unwrap(), "fill");
    m.set_param("offloading", "0").unwrap();
    assert_eq!(m.nr_pool_threads(), 0);
    assert!(!mm.offload().is_enabled());
}

/// Switching a driver off and on while batches run through it never deadlocks (the
/// stress test once found a driver holding its own lock across unregister, which waits
/// for a batch that wanted that lock), and every migration stays correct.
#[test]
fn switching_offloading_while_batches_run_never_deadlocks() {
    for kind in [Kind::MtCopy(2), Kind::Dcbm(2)] {
        let rig = Rig::simple(kind);
        let mm = rig.mm.clone();
        let (sp, sums) = mapped(&mm, 256, 0);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let migrator = {
            let (mm, sp, stop) = (mm.clone(), sp.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut node = 1;
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let (res, mut list) = migrate_all(&mm, &sp, 256, 0, node, Mode::Async);
                    assert_eq!(res.rc, Ok(0));
                    mm.putback_movable_pages(&mut list);
                    node = 1 - node;
                    n += 1;
                }
                n
            })
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let toggler = {
            let d: Box<dyn ModuleParams + Send> = match kind {
                Kind::MtCopy(_) => Box::new(rig.mt.clone().unwrap()),
                _ => Box::new(rig.dcbm.clone().unwrap()),
            };
            std::thread::spawn(move || {
                for _ in 0..300 {
                    d.set_param("offloading", "0").unwrap();
                    d.set_param("offloading", "1").unwrap();
                }
                done_tx.send(()).unwrap();
            })
        };
        assert!(
            done_rx.recv_timeout(Duration::from_secs(60)).is_ok(),
            "{kind:?}: switching offloading deadlocked with a batch in flight"
        );
        toggler.join().unwrap();
        stop.store(true, Ordering::SeqCst);
        assert!(migrator.join().unwrap() > 0);
        check(&mm, &sp, &sums, 0);
        rig.finish(vec![sp]);
    }
}

#[test]
fn the_typed_configuration_matches_the_named_knobs() {
    let mm = Memory::new(MemoryConfig::with_nodes(2, 4 * MB)).unwrap();
    let m = MtCopy::new(&mm);
    let mut c = m.config();
    c.threads = 3;
    c.cpuselect = pagemig_engines::mtcopy::CpuSelect::Fill;
    c.reason_mask = "demotion".parse().unwrap();
    m.configure(&c).unwrap();
    assert_eq!(m.param("threads").unwrap(), "3");
    assert_eq!(m.param("cpuselect").unwrap(), "fill");
    assert_eq!(m.param("reason_mask").unwrap(), "demotion");
    let mut bad = c.clone();
    bad.threads = 65;
    bad.reason_mask = ReasonMask::NONE;
    assert!(m.configure(&bad).is_err());
    assert_eq!(m.config(), c, "an invalid configuration changes nothing");
    m.set_param("offloading", "1").unwrap();
    c.threads = 2;
    m.configure(&c).unwrap();
    assert_eq!(m.nr_pool_threads(), 1, "resized while on");
    m.set_param("offloading", "0").unwrap();

    let dev = EmulatedDmaDevice::new(&mm, EmulatedConfig::default());
    let d = Dcbm::new(&mm, dev);
    let mut c = d.config();
    c.nr_dma_chan = 4;
    c.timeout_ms = 100;
    d.configure(&c).unwrap();
    assert_eq!(d.param("nr_dma_chan").unwrap(), "4");
    assert_eq!(d.param("timeout_ms").unwrap(), "100");
    let mut bad = c.clone();
    bad.max_desc_bytes = 1;
    assert!(d.configure(&bad).is_err());
    assert_eq!(d.config(), c);
    d.set_param("offloading", "1").unwrap();
    let mut more = c.clone();
    more.nr_dma_chan = 8;
    assert!(
        d.configure(&more).is_err(),
        "channels change only while off"
    );
    d.set_param("offloading", "0").unwrap();
}

/// The counts of `migrate_pages()` a test compares between the two paths.
fn counts(res: &MigratePagesResult) -> [usize; 8] {
    let s = &res.stats;
    [
        res.rc.unwrap_or(usize::MAX),
        res.nr_succeeded,
        s.nr_failed_pages,
        s.nr_thp_succeeded,
        s.nr_thp_failed,
        s.nr_thp_split,
        s.nr_copied_by_batch + s.nr_copied_on_cpu,
        s.nr_tlb_flushes,
    ]
}

#[test]
fn pipelined_calls_give_the_same_counts_and_bytes_as_the_series_path() {
    for (kind, overlap) in KINDS.into_iter().flat_map(|k| [(k, false), (k, true)]) {
        for order in [0u8, 2] {
            let rig = Rig::new(kind, 40 * MB, EmulatedConfig::default());
            let mm = rig.mm.clone();
            // 600 folios of anon, page cache and shmem in turn; batches of 512 pages.
            let n = 600;
            let (sp, sums) = mapped(&mm, n, order);
            mm.offload().set_pipeline(None);
            let (series, list) = migrate_all(&mm, &sp, n, order, 1, Mode::Async);
            assert!(list.is_empty(), "{kind:?}");
            check(&mm, &sp, &sums, order);
            let calls_before = mm.offload().stats().nr_batches;
            mm.offload()
                .set_pipeline(Some(pagemig::offload::PipelineConfig {
                    first_sub_batch_bytes: PAGE_SIZE,
                    overlap,
                }));
            let (piped, list) = migrate_all(&mm, &sp, n, order, 0, Mode::Async);
            assert!(list.is_empty(), "{kind:?}");
            check(&mm, &sp, &sums, order);
            assert_eq!(
                counts(&piped),
                counts(&series),
                "{kind:?} order {order} overlap {overlap}"
            );
            for (i, _) in sums.iter().enumerate() {
                let f = sp
                    .folio_at(VirtAddr(BASE + (i * (PAGE_SIZE << order)) as u64))
                    .unwrap();
                assert_eq!(mm.folio(f).node(), NodeId(0), "{kind:?}: folio {i} is back");
            }
            // Sub-batches of 1, 2, 4, ... folios (order 2: one 16K folio is already past
            // the first 4K), growing up to 256 KiB: each one migrator call.
            let mut expected_calls = 0;
            let per_batch = 512 >> order;
            let cap = (256 << 10) / (PAGE_SIZE << order);
            for first in (0..n).step_by(per_batch) {
                let (mut left, mut want) = (per_batch.min(n - first), 1usize);
                while left > 0 {
                    left -= want.min(left);
                    want = (want * 2).min(cap);
                    expected_calls += 1;
                }
            }
            assert_eq!(
                mm.offload().stats().nr_batches - calls_before,
                expected_calls,
                "{kind:?} order {order}: one call per sub-batch"
            );
            // The first folio of each batch was usable before its last one.
            assert!(
                piped.stats.first_usable_ns_sum < piped.stats.last_usable_ns_sum,
                "{kind:?}"
            );
            rig.finish(vec![sp]);
        }
    }
}
