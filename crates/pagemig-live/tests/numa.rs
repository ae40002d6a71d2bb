//! On a host with several NUMA nodes: where pagemig says a page is, the kernel must agree,
//! and `LiveRegion::move_pages` must answer as the kernel's `move_pages(2)` does.
//!
//! These tests need two or more NUMA nodes, so they are `#[ignore]`d on an ordinary run;
//! `.ci/numa` runs them with `--ignored` inside multi-node guests (`tools/numa-vm`). Run on a
//! single-node host with `--ignored`, they fail and say why: they never pass without
//! checking.
//!
//! The differential test runs each scenario against the kernel (a plain anonymous mapping)
//! and against pagemig (a live region), compares return values and status arrays, and
//! fails on every mismatch that DESIGN.md ("move_pages(2) against the kernel's") does not
//! document; a documented difference that no longer shows fails too, so that the
//! document stays true.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use pagemig::migrate::{alloc_on_node, migrate_pages, Mode, Reason};
use pagemig::mm::numa::host_topology;
use pagemig::mm::{Memory, MemoryConfig, NodeId, NumaBinding, Order, Pfn, VirtAddr, PAGE_SIZE};
use pagemig_live::kernel::{self, AnonMapping};
use pagemig_live::{Live, LiveConfig, LiveRegion, RegionConfig, MPOL_MF_MOVE, MPOL_MF_MOVE_ALL};

/// One test at a time: a forked child shares every private page of the process, and the
/// kernel's view of this process's mappings is what the tests read.
static SERIAL: Mutex<()> = Mutex::new(());

const THP: usize = 2 << 20;

/// The host's nodes; fails (never skips) on a host with fewer than two.
fn host_nodes() -> Vec<u32> {
    let topo = host_topology();
    let ids: Vec<u32> = topo.iter().map(|n| n.id).collect();
    assert!(
        ids.len() >= 2,
        "these tests need a host with two or more NUMA nodes (this one has {ids:?}); \
         .ci/numa runs them in multi-node guests"
    );
    assert_eq!(
        ids,
        (0..ids.len() as u32).collect::<Vec<_>>(),
        "node ids must be dense for pagemig's node i to be host node i"
    );
    ids
}

fn kernel_nodes(addrs: &[usize]) -> Vec<i32> {
    let mut st = vec![i32::MIN; addrs.len()];
    assert_eq!(kernel::move_pages(addrs, None, &mut st, 0).unwrap(), 0);
    st
}

fn numa_maps_at(start: usize) -> kernel::NumaMapsEntry {
    kernel::numa_maps()
        .unwrap()
        .into_iter()
        .find(|e| e.start == start)
        .unwrap_or_else(|| panic!("no numa_maps entry starts at {start:#x}"))
}

#[test]
#[ignore = "needs two or more NUMA nodes: .ci/numa runs it in a multi-node guest"]
fn builtin_arenas_are_bound_and_the_kernel_agrees_frame_by_frame() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = host_nodes();
    let mm = Memory::new(MemoryConfig::with_nodes(nodes.len(), 8 << 20)).unwrap();
    for (i, n) in mm.nodes().iter().enumerate() {
        assert_eq!(n.binding(), &NumaBinding::Bound(i as u32), "node {i}");
        let (base, len) = n.arena_range();
        let e = numa_maps_at(base);
        assert_eq!(e.policy, format!("bind:{i}"), "arena of node {i}: {e:?}");
        assert_eq!(
            e.pages_on(i as u32),
            (len / PAGE_SIZE) as u64,
            "every page of node {i}'s arena is on host node {i}: {e:?}"
        );
        assert_eq!(e.pages_by_node.len(), 1, "{e:?}");
    }
    // Folios of several orders on node 0, then migrated node to node; after each pass the
    // kernel's answer for every base page of every folio is the node pagemig reports.
    const BASE: u64 = 0x10_0000_0000;
    let space = mm.new_space(VirtAddr(BASE), 8 << 20).unwrap();
    let orders = [0u8, 0, 2, 4, 9, 0, 3];
    let mut vas = Vec::new();
    let mut off = 0u64;
    for &o in &orders {
        let sz = (PAGE_SIZE << o) as u64;
        off = off.div_ceil(sz) * sz;
        let f = space
            .map_anon(VirtAddr(BASE + off), NodeId(0), Order(o))
            .unwrap();
        mm.folio_fill(f, off);
        vas.push((VirtAddr(BASE + off), mm.folio_checksum(f)));
        off += sz;
    }
    let mut targets: Vec<u32> = nodes[1..].to_vec();
    targets.push(0);
    for to in targets {
        let mut list: Vec<_> = vas
            .iter()
            .map(|(va, _)| space.folio_at(*va).unwrap())
            .collect();
        for &f in &list {
            mm.isolate_folio(f).unwrap();
        }
        let res = migrate_pages(
            &mm,
            &mut list,
            &mut alloc_on_node(NodeId(to)),
            None,
            Mode::Sync,
            Reason::Syscall,
        )
        .unwrap();
        mm.putback_movable_pages(&mut list);
        assert_eq!(res.rc, Ok(0));
        for (va, sum) in &vas {
            let f = space.folio_at(*va).unwrap();
            assert_eq!(mm.folio(f).node(), NodeId(to));
            assert_eq!(
                mm.folio_checksum(f),
                *sum,
                "folio at {:#x} kept its bytes",
                va.0
            );
            let addrs: Vec<usize> = (0..mm.folio(f).nr_pages() as u64)
                .map(|k| mm.frame_addr(Pfn(f.0 .0 + k)))
                .collect();
            let ours: Vec<i32> = (0..addrs.len() as u64)
                .map(|k| mm.node_of(Pfn(f.0 .0 + k)).0 as i32)
                .collect();
            assert_eq!(kernel_nodes(&addrs), ours, "folio at {:#x}", va.0);
        }
    }
}

fn live_memory(nodes: usize, mib: usize) -> Arc<Memory> {
    Memory::new(MemoryConfig::with_nodes(nodes, mib << 20)).unwrap()
}

fn region_pages(r: &LiveRegion) -> Vec<usize> {
    (0..r.len())
        .step_by(PAGE_SIZE)
        .map(|o| r.addr() + o)
        .collect()
}

fn pagemig_nodes(r: &LiveRegion, addrs: &[usize]) -> Vec<i32> {
    let mut st = vec![i32::MIN; addrs.len()];
    assert_eq!(r.move_pages(addrs, None, &mut st, 0), Ok(0));
    st
}

/// pagemig, `move_pages(2)`, `get_mempolicy(2)` and `numa_maps` on every base page of `r`.
fn assert_placement_agrees(r: &LiveRegion, what: &str) -> BTreeMap<i32, u64> {
    let addrs = region_pages(r);
    let ours = pagemig_nodes(r, &addrs);
    let theirs = kernel_nodes(&addrs);
    for (k, (&a, (&o, &t))) in addrs.iter().zip(ours.iter().zip(&theirs)).enumerate() {
        assert_eq!(
            o,
            t,
            "{what}: page {k} at {a:#x}: pagemig says {o}, move_pages(2) {t}; pagemap {:#x}; {:?}",
            kernel::pagemap(&[a]).unwrap()[0],
            r.counts()
        );
        let g = kernel::node_of_addr(a).unwrap();
        assert_eq!(
            o, g,
            "{what}: page {k} at {a:#x}: pagemig says {o}, get_mempolicy(2) {g}"
        );
    }
    let mut by_node = BTreeMap::new();
    for &o in &ours {
        *by_node.entry(o).or_insert(0u64) += 1;
    }
    let e = numa_maps_at(r.addr());
    for (&n, &c) in &by_node {
        assert_eq!(
            e.pages_on(n as u32),
            c,
            "{what}: numa_maps {e:?} against {by_node:?}"
        );
    }
    assert_eq!(
        e.pages_by_node.len(),
        by_node.len(),
        "{what}: {e:?} against {by_node:?}"
    );
    by_node
}

#[test]
#[ignore = "needs two or more NUMA nodes: .ci/numa runs it in a multi-node guest"]
fn live_region_placement_agrees_with_the_kernel_page_by_page() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = host_nodes();
    let n = nodes.len();
    let mm = live_memory(n, 24);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    for (order, len) in [(0u8, 4 << 20), (9u8, 8 << 20), (2u8, 1 << 20)] {
        let r = live.region(RegionConfig::new(len, order)).unwrap();
        r.populate().unwrap();
        for (i, w) in r.words().iter().enumerate() {
            w.store(i as u64 ^ 0xfeed, Ordering::Relaxed);
        }
        let what = format!("order {order}");
        let all = assert_placement_agrees(&r, &format!("{what}, populated"));
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), vec![0]);
        // Folio i goes to node i mod n; then all to the last node; then back to 0.
        let fb = r.folio_bytes();
        let folios: Vec<usize> = (0..r.len() / fb).map(|i| r.addr() + i * fb).collect();
        let spread: Vec<i32> = (0..folios.len()).map(|i| (i % n) as i32).collect();
        for (label, to) in [
            ("spread", spread),
            ("to the last node", vec![n as i32 - 1; folios.len()]),
            ("back to node 0", vec![0; folios.len()]),
        ] {
            let mut st = vec![i32::MIN; folios.len()];
            assert_eq!(
                r.move_pages(&folios, Some(&to), &mut st, MPOL_MF_MOVE),
                Ok(0),
                "{what}, {label}"
            );
            assert_eq!(st, to, "{what}, {label}");
            let by_node = assert_placement_agrees(&r, &format!("{what}, {label}"));
            assert!(!by_node.is_empty());
        }
        for (i, w) in r.words().iter().enumerate() {
            assert_eq!(
                w.load(Ordering::Relaxed),
                i as u64 ^ 0xfeed,
                "{what}: word {i}"
            );
        }
    }
    let c = live.counts();
    assert_eq!(
        c.stray_faults + c.remap_errors + c.unmap_failures,
        0,
        "{c:?}"
    );
}

#[test]
#[ignore = "needs two or more NUMA nodes: .ci/numa runs it in a multi-node guest"]
fn an_arena_larger_than_its_host_node_is_a_clear_error() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let topo = host_topology();
    assert!(
        topo.len() >= 2,
        "needs two or more NUMA nodes, this host has {}",
        topo.len()
    );
    let last = topo.last().unwrap();
    let mut cfg = MemoryConfig::with_nodes(topo.len(), 2 << 20);
    cfg.nodes.last_mut().unwrap().capacity_bytes =
        (last.mem_total_bytes as usize).next_multiple_of(2 << 20) + (64 << 20);
    let Err(e) = Memory::new(cfg) else {
        panic!("an arena larger than its node must not be made");
    };
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("host node {} has", last.id)) && msg.contains("does not fit"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------
// The differential test of move_pages(2).

/// What a call gave: its return value (or errno) and the status array.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    ret: Result<usize, i32>,
    status: Vec<i32>,
}

/// A target of the same calls: the kernel on a plain mapping, or pagemig on a live region.
trait Target: Sync {
    /// First address.
    fn base(&self) -> usize;
    fn write(&self, addr: usize);
    fn read(&self, addr: usize) -> u64;
    fn move_pages(&self, pages: &[usize], nodes: Option<&[i32]>, flags: i32) -> Outcome;
}

/// Status entries start at this value, so that entries a call leaves alone compare too.
const UNTOUCHED: i32 = 0x5a5a;

struct KernelTarget(AnonMapping);

impl Target for KernelTarget {
    fn base(&self) -> usize {
        self.0.addr()
    }
    fn write(&self, addr: usize) {
        self.0.words()[(addr - self.base()) / 8].fetch_add(1, Ordering::Relaxed);
    }
    fn read(&self, addr: usize) -> u64 {
        self.0.words()[(addr - self.base()) / 8].load(Ordering::Relaxed)
    }
    fn move_pages(&self, pages: &[usize], nodes: Option<&[i32]>, flags: i32) -> Outcome {
        let mut status = vec![UNTOUCHED; pages.len()];
        let ret = kernel::move_pages(pages, nodes, &mut status, flags)
            .map_err(|e| e.raw_os_error().unwrap_or(-1));
        Outcome { ret, status }
    }
}

struct PagemigTarget {
    region: LiveRegion,
    _live: Live,
    _mm: Arc<Memory>,
}

impl Target for PagemigTarget {
    fn base(&self) -> usize {
        self.region.addr()
    }
    fn write(&self, addr: usize) {
        self.region.words()[(addr - self.base()) / 8].fetch_add(1, Ordering::Relaxed);
    }
    fn read(&self, addr: usize) -> u64 {
        self.region.words()[(addr - self.base()) / 8].load(Ordering::Relaxed)
    }
    fn move_pages(&self, pages: &[usize], nodes: Option<&[i32]>, flags: i32) -> Outcome {
        let mut status = vec![UNTOUCHED; pages.len()];
        let ret = self
            .region
            .move_pages(pages, nodes, &mut status, flags)
            .map_err(|e| e.errno());
        Outcome { ret, status }
    }
}

/// The layout both targets get: 4 folios of 4 KiB or of 2 MiB (THP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Base,
    Thp,
}

impl Kind {
    fn folio(self) -> usize {
        match self {
            Kind::Base => PAGE_SIZE,
            Kind::Thp => THP,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Base => "4K",
            Kind::Thp => "THP",
        }
    }
}

const FOLIOS: usize = 4;

fn kernel_target(kind: Kind) -> Box<dyn Target> {
    Box::new(KernelTarget(
        AnonMapping::new(FOLIOS * kind.folio(), kind == Kind::Thp).unwrap(),
    ))
}

fn pagemig_target(kind: Kind, nodes: usize) -> Box<dyn Target> {
    let mm = live_memory(nodes, 4 * FOLIOS * kind.folio() / (1 << 20) + 8);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let order = kind.folio().trailing_zeros() as u8 - 12;
    let region = live
        .region(RegionConfig::new(FOLIOS * kind.folio(), order))
        .unwrap();
    Box::new(PagemigTarget {
        region,
        _live: live,
        _mm: mm,
    })
}

/// Runs a scenario's steps on one target; each step is named and gives an outcome.
type Steps = Vec<(String, Outcome)>;

/// Drops `CAP_SYS_NICE` from this thread's effective set (capabilities are per thread).
fn drop_cap_sys_nice() {
    caps::drop(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_NICE,
    )
    .unwrap();
    assert!(!kernel::has_cap_sys_nice());
}

/// A child that shares every private page of this process copy-on-write until it is
/// killed. It only sleeps: after fork in a threaded process it may call nothing else.
struct ForkedChild(libc::pid_t);

impl ForkedChild {
    fn start() -> ForkedChild {
        // SAFETY: the child calls only async-signal-safe functions (pause) until it is
        // killed; the parent continues as before.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            loop {
                // SAFETY: pause is async-signal-safe and takes no arguments.
                unsafe { libc::pause() };
            }
        }
        ForkedChild(pid)
    }
}

impl Drop for ForkedChild {
    fn drop(&mut self) {
        // SAFETY: kill and waitpid on our own child, with a null status pointer.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// The scenarios: (name, steps). `n` is the number of host nodes.
fn scenario(name: &str, kind: Kind, n: usize, t: &dyn Target) -> Steps {
    let fb = kind.folio();
    let f = |i: usize| t.base() + i * fb;
    let all: Vec<usize> = (0..FOLIOS).map(f).collect();
    let to = |node: i32, k: usize| vec![node; k];
    let mut s: Steps = Vec::new();
    let mut step = |label: &str, o: Outcome| s.push((label.to_string(), o));
    let touch_all = || all.iter().for_each(|&a| t.write(a));
    match name {
        "query touched pages" => {
            touch_all();
            step("query", t.move_pages(&all, None, 0));
            // An address inside a page names that page.
            let inner: Vec<usize> = all.iter().map(|a| a + 8).collect();
            step("query inside the pages", t.move_pages(&inner, None, 0));
        }
        "move to each node" => {
            touch_all();
            for node in (1..n as i32).chain([0]) {
                step(
                    &format!("move to {node}"),
                    t.move_pages(&all, Some(&to(node, FOLIOS)), MPOL_MF_MOVE),
                );
                step(&format!("query after {node}"), t.move_pages(&all, None, 0));
            }
            // Folio i to node i mod n, in one call (one migration per run of equal nodes).
            let spread: Vec<i32> = (0..FOLIOS).map(|i| (i % n) as i32).collect();
            step("spread", t.move_pages(&all, Some(&spread), MPOL_MF_MOVE));
            step("query spread", t.move_pages(&all, None, 0));
        }
        "pages already there" => {
            touch_all();
            step(
                "move to 0",
                t.move_pages(&all, Some(&to(0, FOLIOS)), MPOL_MF_MOVE),
            );
            step(
                "flags 0 move to 0",
                t.move_pages(&all, Some(&to(0, FOLIOS)), 0),
            );
        }
        "never-touched pages" => {
            t.write(f(0));
            step("query", t.move_pages(&all, None, 0));
            step(
                "move to 1",
                t.move_pages(&all, Some(&to(1, FOLIOS)), MPOL_MF_MOVE),
            );
        }
        "pages only read" => {
            let _ = t.read(f(1));
            t.write(f(0));
            step("query", t.move_pages(&all[..2], None, 0));
            step(
                "move to 1",
                t.move_pages(&all[..2], Some(&to(1, 2)), MPOL_MF_MOVE),
            );
        }
        "addresses outside any mapping" => {
            touch_all();
            let outside = [0usize, PAGE_SIZE, 1 << 46, f(0)];
            step("query", t.move_pages(&outside, None, 0));
            step(
                "move to 1",
                t.move_pages(&outside, Some(&to(1, 4)), MPOL_MF_MOVE),
            );
        }
        "duplicate addresses" => {
            touch_all();
            step("query", t.move_pages(&[f(0), f(0)], None, 0));
            step(
                "move twice to 1",
                t.move_pages(&[f(0), f(0), f(1)], Some(&to(1, 3)), MPOL_MF_MOVE),
            );
            let other = (n as i32 - 1).max(1);
            step(
                "to 0 then to the last node",
                t.move_pages(&[f(0), f(0)], Some(&[0, other]), MPOL_MF_MOVE),
            );
            step("query after", t.move_pages(&all, None, 0));
            if kind == Kind::Thp {
                // Two base pages of one THP: the second finds the folio isolated.
                step(
                    "two pages of one THP",
                    t.move_pages(&[f(2), f(2) + 7 * PAGE_SIZE], Some(&to(1, 2)), MPOL_MF_MOVE),
                );
                step(
                    "query inside the THP",
                    t.move_pages(&[f(2) + 7 * PAGE_SIZE, f(2) + fb - 8], None, 0),
                );
            }
        }
        "invalid nodes" => {
            touch_all();
            step(
                "a node past the last",
                t.move_pages(&all[..2], Some(&[1, n as i32]), MPOL_MF_MOVE),
            );
            step("query after", t.move_pages(&all, None, 0));
            step(
                "node -1",
                t.move_pages(&all[..1], Some(&[-1]), MPOL_MF_MOVE),
            );
            step(
                "node 64",
                t.move_pages(&all[..1], Some(&[64]), MPOL_MF_MOVE),
            );
            step(
                "node 1 << 20",
                t.move_pages(&all[..1], Some(&[1 << 20]), MPOL_MF_MOVE),
            );
        }
        "CPU-less nodes" => {
            touch_all();
            let cpuless: Vec<i32> = host_topology()
                .iter()
                .filter(|h| h.is_cpuless())
                .map(|h| h.id as i32)
                .collect();
            assert!(!cpuless.is_empty(), "the guests' nodes 1.. have no CPUs");
            for &c in &cpuless {
                step(
                    &format!("move to CPU-less {c}"),
                    t.move_pages(&all, Some(&to(c, FOLIOS)), MPOL_MF_MOVE),
                );
                step("query", t.move_pages(&all, None, 0));
                for &a in &all {
                    t.write(a);
                }
                step("query after writes", t.move_pages(&all, None, 0));
            }
        }
        "bad flags" => {
            touch_all();
            for (label, flags) in [("MPOL_MF_STRICT", 1), ("1 << 5", 1 << 5), ("-1", -1)] {
                step(&format!("query {label}"), t.move_pages(&all, None, flags));
                step(
                    &format!("move {label}"),
                    t.move_pages(&all, Some(&to(1, FOLIOS)), flags),
                );
            }
            step("query after", t.move_pages(&all, None, 0));
        }
        "MPOL_MF_MOVE_ALL" => {
            touch_all();
            step(
                "move all to 1",
                t.move_pages(&all, Some(&to(1, FOLIOS)), MPOL_MF_MOVE_ALL),
            );
            step("query", t.move_pages(&all, None, MPOL_MF_MOVE_ALL));
        }
        "MPOL_MF_MOVE_ALL without CAP_SYS_NICE" => {
            touch_all();
            std::thread::scope(|sc| {
                let out = sc
                    .spawn(|| {
                        drop_cap_sys_nice();
                        vec![
                            (
                                "query".to_string(),
                                t.move_pages(&all, None, MPOL_MF_MOVE_ALL),
                            ),
                            (
                                "move to 1".to_string(),
                                t.move_pages(&all, Some(&to(1, FOLIOS)), MPOL_MF_MOVE_ALL),
                            ),
                            (
                                "MPOL_MF_MOVE still moves".to_string(),
                                t.move_pages(&all[..1], Some(&[1]), MPOL_MF_MOVE),
                            ),
                        ]
                    })
                    .join()
                    .unwrap();
                for (l, o) in out {
                    step(&l, o);
                }
            });
            step("query with CAP_SYS_NICE", t.move_pages(&all, None, 0));
        }
        "pages shared with a forked child" => {
            touch_all();
            {
                let _child = ForkedChild::start();
                step(
                    "move to 1",
                    t.move_pages(&all, Some(&to(1, FOLIOS)), MPOL_MF_MOVE),
                );
                step("query", t.move_pages(&all, None, 0));
                step(
                    "move all to 1",
                    t.move_pages(&all[..2], Some(&to(1, 2)), MPOL_MF_MOVE_ALL),
                );
                step("query after move all", t.move_pages(&all, None, 0));
            }
            // The child is gone; a write makes each page this process's alone again.
            touch_all();
            step(
                "after the child, move to 1",
                t.move_pages(&all, Some(&to(1, FOLIOS)), MPOL_MF_MOVE),
            );
            step("after the child, query", t.move_pages(&all, None, 0));
        }
        _ => unreachable!("{name}"),
    }
    s
}

const SCENARIOS: &[&str] = &[
    "query touched pages",
    "move to each node",
    "pages already there",
    "never-touched pages",
    "pages only read",
    "addresses outside any mapping",
    "duplicate addresses",
    "invalid nodes",
    "CPU-less nodes",
    "bad flags",
    "MPOL_MF_MOVE_ALL",
    "MPOL_MF_MOVE_ALL without CAP_SYS_NICE",
    "pages shared with a forked child",
];

/// The differences DESIGN.md documents ("move_pages(2) against the kernel's"): (scenario,
/// step, what DESIGN.md calls it). Every other mismatch fails the test.
const DOCUMENTED: &[(&str, &str, &str)] = &[
    (
        "pages only read",
        "query",
        "a page only read is backed by a frame, not the zero page",
    ),
    (
        "pages only read",
        "move to 1",
        "a page only read is backed by a frame, not the zero page",
    ),
    (
        "pages shared with a forked child",
        "move all to 1",
        "a page shared with another process cannot be moved",
    ),
    (
        "pages shared with a forked child",
        "query after move all",
        "a page shared with another process cannot be moved",
    ),
];

#[test]
#[ignore = "needs two or more NUMA nodes: .ci/numa runs it in a multi-node guest"]
fn move_pages_answers_as_the_kernel_does() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = host_nodes().len();
    let mut undocumented = Vec::new();
    let mut documented_seen = Vec::new();
    let mut steps = 0;
    for kind in [Kind::Base, Kind::Thp] {
        for &name in SCENARIOS {
            let k = kernel_target(kind);
            let theirs = scenario(name, kind, n, &*k);
            drop(k);
            let p = pagemig_target(kind, n);
            let ours = scenario(name, kind, n, &*p);
            drop(p);
            assert_eq!(theirs.len(), ours.len());
            for ((label, t), (_, o)) in theirs.iter().zip(&ours) {
                steps += 1;
                let same = t == o;
                let doc = DOCUMENTED
                    .iter()
                    .find(|(s, l, _)| *s == name && *l == label.as_str());
                let line = format!(
                    "{:<4} {name} / {label}: kernel {:?} {:?}, pagemig {:?} {:?}",
                    kind.name(),
                    t.ret,
                    t.status,
                    o.ret,
                    o.status
                );
                match (same, doc) {
                    (true, _) => println!("same {line}"),
                    (false, Some((_, _, why))) => {
                        println!("DOCUMENTED ({why}) {line}");
                        documented_seen.push((name, label.clone()));
                    }
                    (false, None) => {
                        println!("MISMATCH {line}");
                        undocumented.push(line);
                    }
                }
            }
        }
    }
    println!("{steps} steps compared");
    for (s, l, why) in DOCUMENTED {
        assert!(
            documented_seen.iter().any(|(ss, ll)| ss == s && ll == l),
            "the documented difference '{why}' ({s} / {l}) no longer shows: update DESIGN.md and this list"
        );
    }
    assert!(
        undocumented.is_empty(),
        "{} undocumented mismatch(es):\n{}",
        undocumented.len(),
        undocumented.join("\n")
    );
}

#[test]
#[ignore = "needs two or more NUMA nodes: .ci/numa runs it in a multi-node guest"]
fn first_touch_on_a_far_node_agrees_with_the_kernel_and_reads_zero() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = host_nodes().len();
    let far = NodeId(n as u32 - 1);
    let mm = live_memory(n, 24);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    for (order, len, populate) in [
        (0u8, 4 << 20, true),
        (0, 4 << 20, false),
        (9, 4 << 20, true),
        (2, 1 << 20, false),
    ] {
        // A region whose frames held data before: the new one must still read zero.
        {
            let mut cfg = RegionConfig::new(len, order);
            cfg.placement = far;
            let old = live.region(cfg).unwrap();
            old.populate().unwrap();
            for w in old.words() {
                w.store(u64::MAX, Ordering::Relaxed);
            }
        }
        let mut cfg = RegionConfig::new(len, order);
        cfg.placement = far;
        let r = live.region(cfg).unwrap();
        if populate {
            r.populate().unwrap();
        }
        let what = format!("order {order}, populate {populate}");
        let nonzero = r
            .words()
            .iter()
            .filter(|w| w.load(Ordering::Relaxed) != 0)
            .count();
        assert_eq!(nonzero, 0, "{what}: a fresh region reads zero");
        // Half the pages written, half left zero-filled: both on the placement node.
        for (i, w) in r.words().iter().enumerate() {
            if (i * 8 / PAGE_SIZE) % 2 == 0 {
                w.store(i as u64 + 1, Ordering::Relaxed);
            }
        }
        let by_node = assert_placement_agrees(&r, &what);
        assert_eq!(
            by_node.keys().copied().collect::<Vec<_>>(),
            vec![far.0 as i32],
            "{what}"
        );
        // Migrated back and forth, zero-filled pages included.
        let fb = r.folio_bytes();
        let folios: Vec<usize> = (0..r.len() / fb).map(|i| r.addr() + i * fb).collect();
        for node in [0, far.0 as i32] {
            let mut st = vec![i32::MIN; folios.len()];
            assert_eq!(
                r.move_pages(
                    &folios,
                    Some(&vec![node; folios.len()]),
                    &mut st,
                    MPOL_MF_MOVE
                ),
                Ok(0)
            );
            assert_placement_agrees(&r, &format!("{what}, moved to {node}"));
        }
        // Every page written now: still where pagemig says.
        for w in r.words() {
            w.fetch_add(1, Ordering::Relaxed);
        }
        assert_placement_agrees(&r, &format!("{what}, all written"));
    }
    let c = live.counts();
    assert_eq!(
        c.stray_faults + c.remap_errors + c.unmap_failures,
        0,
        "{c:?}"
    );
}

#[test]
#[ignore = "needs two or more NUMA nodes: .ci/numa runs it in a multi-node guest"]
fn a_page_the_kernel_put_on_another_node_is_migrated_to_its_frames_node_at_its_move_in() {
    // A program thread that writes a page while it is the shared zero page (it arrived as
    // one, or a THP split left it behind) before the zero-page fix-up gets a page after
    // the program's policy, on whatever node that gives: the race is rare, so it is
    // made here with move_pages(2), which puts the region's pages on host node 0 while
    // pagemig says node 1. Moved out, such a page fills its frame's slot from the wrong
    // node, and the next move in of that frame brings it back: each move in must check
    // with the kernel and correct it.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = host_nodes();
    let len = 4 << 20;
    // Node 1's pool is exactly the region: the move back to node 1 takes the same frames.
    let mm = Memory::new(MemoryConfig::with_nodes(nodes.len(), len)).unwrap();
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let mut cfg = RegionConfig::new(len, 0);
    cfg.placement = NodeId(1);
    let r = live.region(cfg).unwrap();
    r.populate().unwrap();
    for (i, w) in r.words().iter().enumerate() {
        w.store(i as u64 ^ 0x5eed, Ordering::Relaxed);
    }
    assert_placement_agrees(&r, "populated on node 1");
    let addrs = region_pages(&r);
    // move_pages(2) may answer EBUSY for a page it could not lock this time: again.
    for _ in 0..10 {
        let left: Vec<usize> = addrs
            .iter()
            .zip(kernel_nodes(&addrs))
            .filter(|&(_, n)| n != 0)
            .map(|(&a, _)| a)
            .collect();
        if left.is_empty() {
            break;
        }
        let mut st = vec![i32::MIN; left.len()];
        kernel::move_pages(&left, Some(&vec![0; left.len()]), &mut st, MPOL_MF_MOVE).unwrap();
    }
    assert!(
        kernel_nodes(&addrs).iter().all(|&n| n == 0),
        "the kernel moved them all to node 0"
    );
    assert_eq!(
        pagemig_nodes(&r, &addrs[..1]),
        vec![1],
        "pagemig still says 1"
    );
    let fixed0 = live.counts().wrong_node_fixups;
    for to in [0, 1] {
        let mut st = vec![i32::MIN; addrs.len()];
        assert_eq!(
            r.move_pages(&addrs, Some(&vec![to; addrs.len()]), &mut st, MPOL_MF_MOVE),
            Ok(0)
        );
        assert_eq!(st, vec![to; addrs.len()]);
        assert_placement_agrees(&r, &format!("moved to node {to}"));
    }
    let c = live.counts();
    assert_eq!(
        c.wrong_node_fixups - fixed0,
        addrs.len() as u64,
        "every page came back to node 1 in a frame whose slot held a node-0 page: {c:?}"
    );
    for (i, w) in r.words().iter().enumerate() {
        assert_eq!(w.load(Ordering::Relaxed), i as u64 ^ 0x5eed, "word {i}");
    }
}
