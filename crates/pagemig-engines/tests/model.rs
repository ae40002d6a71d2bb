//! Property tests: random sequences of writes, reads and migrations of random subsets
//! between nodes, with injected faults and every copy engine, checked after every step
//! against a plain reference model. The folios are anonymous, page cache
//! (`filemap_migrate_folio`) and shmem, mapped side by side in one space.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pagemig::migrate::{migrate_pages, Mode, Reason};
use pagemig::mm::{
    AddressSpace, FaultHooks, File, FileKind, Folio, Memory, MemoryConfig, MigrateFolioOp, NodeId,
    Order, Pfn, Pte, VirtAddr, PAGE_SIZE,
};
use pagemig::offload::{CopyBatch, DefaultCopier, Migrator, ReasonMask};
use pagemig::Errno;
use pagemig_engines::{Engine, EngineSpec};
use proptest::prelude::*;

const BASE: u64 = 0x10_0000_0000;
/// The space: folios of these orders, back to back.
const ORDERS: [u8; 8] = [0, 0, 1, 2, 0, 4, 0, 9];
/// What each of them is: 0 anonymous, 1 a regular file's page cache, 2 shmem.
const KINDS: [u8; 8] = [0, 1, 2, 1, 2, 0, 0, 1];

fn layout() -> Vec<(u64, u8)> {
    let mut v = Vec::new();
    let mut va = BASE;
    for o in ORDERS {
        // Natural alignment.
        let size = (PAGE_SIZE << o) as u64;
        va = va.div_ceil(size) * size;
        v.push((va, o));
        va += size;
    }
    v
}

fn space_len() -> usize {
    let (va, o) = *layout().last().unwrap();
    (va - BASE) as usize + (PAGE_SIZE << o)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Eng {
    Vanilla,
    Default,
    /// Copies the first half, marks them, fails.
    Half,
    /// Fails without copying anything.
    Failing,
    MtCopy,
    Dcbm,
}

/// What goes wrong during one migration.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// Folio (index into the layout) with an extra reference held across the call.
    extra_ref: Option<usize>,
    /// Folio locked by someone else (only in async mode, which never waits).
    locked: Option<usize>,
    /// Folio under writeback (async and sync-light give EBUSY).
    writeback: Option<usize>,
    /// Folio with a poisoned page (index, page within).
    poison: Option<(usize, usize)>,
    /// Allocations that succeed before the destination node runs out.
    alloc_budget: Option<usize>,
    /// The driver is unregistered after the gate, right before the batch copy.
    unregister_mid_batch: bool,
    /// The reason mask excludes this migration's reason.
    masked_out: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        folio: usize,
        page: usize,
        word: usize,
        value: u64,
    },
    Migrate {
        subset: Vec<bool>,
        mode: Mode,
        reason: Reason,
        engine: Eng,
        faults: Faults,
    },
}

fn mode_strategy() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Async), Just(Mode::SyncLight), Just(Mode::Sync)]
}

fn reason_strategy() -> impl Strategy<Value = Reason> {
    prop_oneof![
        Just(Reason::Demotion),
        Just(Reason::Syscall),
        Just(Reason::Compaction),
        Just(Reason::NumaMisplaced)
    ]
}

fn engine_strategy() -> impl Strategy<Value = Eng> {
    prop_oneof![
        Just(Eng::Vanilla),
        Just(Eng::Default),
        Just(Eng::Half),
        Just(Eng::Failing),
        Just(Eng::MtCopy),
        Just(Eng::Dcbm)
    ]
}

fn faults_strategy() -> impl Strategy<Value = Faults> {
    let n = ORDERS.len();
    (
        proptest::option::weighted(0.2, 0..n),
        proptest::option::weighted(0.2, 0..n),
        proptest::option::weighted(0.2, 0..n),
        proptest::option::weighted(0.2, (0..n, 0usize..4)),
        proptest::option::weighted(0.15, 0usize..6),
        proptest::bool::weighted(0.15),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(
                extra_ref,
                locked,
                writeback,
                poison,
                alloc_budget,
                unregister_mid_batch,
                masked_out,
            )| Faults {
                extra_ref,
                locked,
                writeback,
                poison,
                alloc_budget,
                unregister_mid_batch,
                masked_out,
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let n = ORDERS.len();
    prop_oneof![
        3 => (0..n, 0usize..512, 0usize..(PAGE_SIZE / 8), any::<u64>())
            .prop_map(|(folio, page, word, value)| Op::Write { folio, page, word, value }),
        2 => (proptest::collection::vec(any::<bool>(), n), mode_strategy(), reason_strategy(), engine_strategy(), faults_strategy())
            .prop_map(|(subset, mode, reason, engine, faults)| Op::Migrate { subset, mode, reason, engine, faults }),
    ]
}

/// Hooks the test drives: an allocation budget and an unregister before the batch copy.
#[derive(Default)]
struct TestHooks {
    budget: Mutex<Option<usize>>,
    unregister: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    nr_unregistered: AtomicUsize,
    armed: AtomicBool,
}

impl FaultHooks for TestHooks {
    fn alloc_should_fail(&self, node: NodeId, _order: Order) -> bool {
        let _ = node;
        if !self.armed.load(Ordering::SeqCst) {
            return false;
        }
        let mut b = self.budget.lock().unwrap();
        match b.as_mut() {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
    fn before_batch_copy(&self, _mm: &Memory) {
        if let Some(f) = self.unregister.lock().unwrap().take() {
            f();
            self.nr_unregistered.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct Half;
impl Migrator for Half {
    fn name(&self) -> &str {
        "half"
    }
    fn offload_copy(&self, b: &CopyBatch<'_>) -> Result<(), Errno> {
        for i in 0..b.len() / 2 {
            b.copy_folio(i)?;
            b.mark_copied(i);
        }
        Err(Errno::Io)
    }
}

struct Failing;
impl Migrator for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    fn offload_copy(&self, _b: &CopyBatch<'_>) -> Result<(), Errno> {
        Err(Errno::Io)
    }
}

enum Running {
    None,
    Plain(Arc<dyn Migrator>),
    Engine(Engine),
}

fn start(mm: &Arc<Memory>, e: Eng, mask: ReasonMask) -> Running {
    let plain = |m: Arc<dyn Migrator>| {
        mm.offload().register(m.clone(), mask).unwrap();
        Running::Plain(m)
    };
    match e {
        Eng::Vanilla => Running::None,
        Eng::Default => plain(Arc::new(DefaultCopier)),
        Eng::Half => plain(Arc::new(Half)),
        Eng::Failing => plain(Arc::new(Failing)),
        Eng::MtCopy => {
            let knobs = vec![
                ("inject_fail_every".to_string(), "3".to_string()),
                ("reason_mask".into(), mask.to_string()),
            ];
            Running::Engine(Engine::start(EngineSpec::MtCopy(2), mm, &knobs).unwrap())
        }
        Eng::Dcbm => {
            let knobs = vec![
                ("dma.fail_every".to_string(), "4".to_string()),
                ("dma.stall_every".into(), "5".into()),
                ("dma.stall_ms".into(), "100".into()),
                ("timeout_ms".into(), "2".into()),
                ("max_desc_bytes".into(), "8192".into()),
                ("reason_mask".into(), mask.to_string()),
            ];
            Running::Engine(Engine::start(EngineSpec::Dcbm(2), mm, &knobs).unwrap())
        }
    }
}

fn stop(mm: &Memory, r: Running) {
    match r {
        Running::None => {}
        Running::Plain(m) => {
            // May already be unregistered mid-batch.
            let _ = mm.offload().unregister(&m);
        }
        Running::Engine(e) => e.stop().unwrap(),
    }
}

struct World {
    mm: Arc<Memory>,
    sp: Arc<AddressSpace>,
    /// The regular file and the shmem file whose folios are mapped into `sp`.
    files: Vec<File>,
    hooks: Arc<TestHooks>,
    /// The reference model: every word ever written, by virtual address.
    words: BTreeMap<u64, u64>,
}

impl Drop for World {
    /// A case that failed midway leaves its injected faults: end them, so that truncating
    /// the files (which waits for locks and writeback) cannot hang the shrinking.
    fn drop(&mut self) {
        for file in &self.files {
            for (_, f) in file.folios() {
                let fr = self.mm.folio(f);
                if fr.test(pagemig::mm::pg::WRITEBACK) {
                    fr.end_writeback();
                }
                if fr.test(pagemig::mm::pg::LOCKED) {
                    fr.unlock();
                }
            }
        }
    }
}

impl World {
    fn new() -> World {
        let hooks = Arc::new(TestHooks::default());
        let mut cfg = MemoryConfig::with_nodes(2, 12 << 20);
        cfg.hooks = Some(hooks.clone());
        let mm = Memory::new(cfg).unwrap();
        let sp = mm.new_space(VirtAddr(BASE), space_len()).unwrap();
        let files = vec![
            mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap)),
            mm.create_file(FileKind::Shmem),
        ];
        for ((va, o), kind) in layout().into_iter().zip(KINDS) {
            if kind == 0 {
                sp.map_anon(VirtAddr(va), NodeId(0), Order(o)).unwrap();
            } else {
                // The file page index is the page's offset in the space.
                let file = &files[kind as usize - 1];
                let index = (va - BASE) / PAGE_SIZE as u64;
                file.add_folio(index, NodeId(0), Order(o)).unwrap();
                sp.map_file(VirtAddr(va), file, index, 1 << o).unwrap();
            }
        }
        World {
            mm,
            sp,
            files,
            hooks,
            words: BTreeMap::new(),
        }
    }

    fn page_va(&self, folio: usize, page: usize) -> u64 {
        let (va, o) = layout()[folio];
        va + ((page % (1 << o)) * PAGE_SIZE) as u64
    }

    /// Every address reads back what was last written (a poisoned page is skipped: its
    /// reads fail by design).
    fn check_contents(&self) -> Result<(), TestCaseError> {
        let acc = self.sp.accessor();
        for (&va, &v) in &self.words {
            match acc.read_u64(VirtAddr(va)) {
                Ok(got) => prop_assert_eq!(got, v, "word at {:#x}", va),
                Err(Errno::HwPoison) => {}
                Err(e) => prop_assert!(false, "read of {:#x} failed: {}", va, e),
            }
        }
        Ok(())
    }

    /// No migration entry survives; frames balance.
    fn check_structure(&self) -> Result<(), TestCaseError> {
        let mut mapped_pages = 0;
        let mut seen = BTreeSet::new();
        let pages = layout()
            .into_iter()
            .flat_map(|(va, o)| (0..1u64 << o).map(move |k| va + k * PAGE_SIZE as u64));
        for va in pages {
            let va = VirtAddr(va);
            match self.sp.pte(va).unwrap() {
                Pte::Migration { .. } => {
                    prop_assert!(false, "migration entry survived at {:?}", va)
                }
                Pte::None => prop_assert!(false, "mapping lost at {:?}", va),
                Pte::Present { .. } => {
                    let f = self.sp.folio_at(va).unwrap();
                    if seen.insert(f) {
                        let fr = self.mm.folio(f);
                        mapped_pages += fr.nr_pages();
                        // The mapping's reference, and the page cache's for a file folio.
                        let cache = if fr.is_anon() {
                            0
                        } else {
                            let m = self.mm.folio_mapping(f);
                            prop_assert!(m.is_some(), "file folio {:?} left its file", f);
                            let file = self
                                .files
                                .iter()
                                .find(|x| Arc::ptr_eq(x.mapping(), m.as_ref().unwrap()))
                                .unwrap();
                            prop_assert_eq!(file.folio_at(fr.index()), Some(f), "cache slot");
                            fr.nr_pages() as i32
                        };
                        prop_assert_eq!(fr.ref_count(), 1 + cache, "folio {:?} refcount", f);
                        prop_assert_eq!(fr.mapcount(), 1);
                    }
                }
            }
        }
        prop_assert_eq!(
            self.mm.nr_free_pages_total() + mapped_pages,
            self.mm.nr_pages_total(),
            "frames balance"
        );
        Ok(())
    }
}

fn run_migrate(
    w: &mut World,
    subset: &[bool],
    mode: Mode,
    reason: Reason,
    engine: Eng,
    f: &Faults,
) -> Result<(), TestCaseError> {
    let mm = w.mm.clone();
    let lay = layout();
    let mask = if f.masked_out {
        ReasonMask::NONE
    } else {
        ReasonMask::ALL
    };
    let running = start(&mm, engine, mask);
    if f.unregister_mid_batch {
        if let Running::Plain(m) = &running {
            let (mm2, m2) = (mm.clone(), m.clone());
            *w.hooks.unregister.lock().unwrap() = Some(Box::new(move || {
                let _ = mm2.offload().unregister(&m2);
            }));
        }
    }
    // Folios currently at each chosen layout slot (a split earlier may have left several
    // base folios where one large folio was: take the first page's).
    let mut list = Vec::new();
    let mut before: BTreeMap<Folio, (NodeId, u64)> = BTreeMap::new();
    for (i, &(va, _)) in lay.iter().enumerate() {
        if !subset[i] {
            continue;
        }
        let folio = w.sp.folio_at(VirtAddr(va)).unwrap();
        if before.contains_key(&folio) {
            continue;
        }
        mm.isolate_folio(folio).unwrap();
        before.insert(folio, (mm.folio(folio).node(), va));
        list.push(folio);
    }
    // Inject the folio-level faults.
    let at = |i: usize| w.sp.folio_at(VirtAddr(lay[i].0)).unwrap();
    let mut pinned = None;
    let mut locked = None;
    let mut wb = None;
    let mut poisoned = None;
    if let Some(i) = f.extra_ref {
        let fo = at(i);
        mm.folio(fo).get();
        pinned = Some(fo);
    }
    if let (Some(i), Mode::Async) = (f.locked, mode) {
        let fo = at(i);
        if mm.folio(fo).trylock() {
            locked = Some(fo);
        }
    }
    if let (Some(i), Mode::Async | Mode::SyncLight) = (f.writeback, mode) {
        let fo = at(i);
        if Some(fo) != locked {
            mm.folio(fo).start_writeback();
            wb = Some(fo);
        }
    }
    if let Some((i, p)) = f.poison {
        let fo = at(i);
        let pfn = Pfn(fo.pfn().0 + (p % mm.folio(fo).nr_pages()) as u64);
        mm.inject_hwpoison(pfn).unwrap();
        poisoned = Some((fo, pfn));
    }
    *w.hooks.budget.lock().unwrap() = f.alloc_budget;
    w.hooks.armed.store(true, Ordering::SeqCst);
    let events0 = mm.vm_events();
    let mut alloc = |mm: &Memory, src: Folio| {
        let node = NodeId(1 - mm.folio(src).node().0);
        mm.alloc_folio(node, mm.folio(src).order(), 0).ok()
    };
    let n_in = list.len();
    // Sizes before the call (migrated folios are freed by it).
    let sizes: BTreeMap<Folio, usize> = before
        .keys()
        .map(|f| (*f, mm.folio(*f).nr_pages()))
        .collect();
    let res = migrate_pages(&mm, &mut list, &mut alloc, None, mode, reason).unwrap();
    w.hooks.armed.store(false, Ordering::SeqCst);
    *w.hooks.unregister.lock().unwrap() = None;

    // The return convention and the counters.
    let ev = mm.vm_events();
    prop_assert_eq!(
        (ev.pgmigrate_success - events0.pgmigrate_success) as usize,
        res.nr_succeeded
    );
    let no_enomem = f.alloc_budget.is_none() && res.stats.nr_split == 0;
    if no_enomem {
        prop_assert_eq!(res.rc, Ok(list.len()), "rc counts the folios handed back");
        let pages_in: usize = sizes.values().sum();
        // Exactly the folios with a fault that stops them failed.
        let mut expect_fail = BTreeSet::new();
        for fo in [pinned, locked, wb, poisoned.map(|p| p.0)]
            .into_iter()
            .flatten()
        {
            if before.contains_key(&fo) {
                expect_fail.insert(fo);
            }
        }
        let got: BTreeSet<Folio> = list.iter().copied().collect();
        prop_assert_eq!(got, expect_fail, "failed set");
        // Every base page offered either migrated or is on a returned folio.
        let failed_pages: usize = list.iter().map(|f| mm.folio(*f).nr_pages()).sum();
        prop_assert_eq!(res.nr_succeeded + failed_pages, pages_in);
    } else {
        prop_assert!(res.rc.is_err() || res.rc == Ok(list.len()) || res.stats.nr_split > 0);
    }
    prop_assert!(list.len() <= n_in + res.stats.nr_split * 512);
    // Failed folios are intact, mapped, on their old node; the others moved.
    for fo in &list {
        prop_assert!(mm.folio(*fo).test(pagemig::mm::pg::ISOLATED));
    }
    let failed: BTreeSet<Folio> = list.iter().copied().collect();
    for (fo, (node, va)) in &before {
        if failed.contains(fo) {
            prop_assert_eq!(
                w.sp.folio_at(VirtAddr(*va)),
                Some(*fo),
                "failed folio still mapped"
            );
            prop_assert_eq!(mm.folio(*fo).node(), *node);
        } else if no_enomem {
            let now = w.sp.folio_at(VirtAddr(*va)).unwrap();
            prop_assert_eq!(
                mm.folio(now).node(),
                NodeId(1 - node.0),
                "moved to the other node"
            );
        }
    }
    mm.putback_movable_pages(&mut list);
    if let Some(fo) = pinned {
        mm.folio(fo).put();
    }
    if let Some(fo) = locked {
        mm.folio(fo).unlock();
    }
    if let Some(fo) = wb {
        mm.folio(fo).end_writeback();
    }
    if let Some((_, pfn)) = poisoned {
        mm.clear_hwpoison(pfn).unwrap();
    }
    stop(&mm, running);
    prop_assert!(!mm.offload().is_enabled());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PAGEMIG_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        max_shrink_iters: 2000,
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_operations_match_the_reference_model(ops in proptest::collection::vec(op_strategy(), 1..16)) {
        let mut w = World::new();
        for op in &ops {
            match op {
                Op::Write { folio, page, word, value } => {
                    let va = w.page_va(*folio, *page) + (*word * 8) as u64;
                    w.sp.accessor().write_u64(VirtAddr(va), *value).unwrap();
                    w.words.insert(va, *value);
                }
                Op::Migrate { subset, mode, reason, engine, faults } => {
                    run_migrate(&mut w, subset, *mode, *reason, *engine, faults)?;
                }
            }
            w.check_contents()?;
            w.check_structure()?;
        }
        let mm = w.mm.clone();
        drop(w);
        prop_assert_eq!(mm.nr_free_pages_total(), mm.nr_pages_total(), "no leak, no double free");
    }
}
