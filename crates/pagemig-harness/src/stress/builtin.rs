//! The stress test on the built-in backend: accessor threads read and write a space of
//! mixed folio sizes and kinds — of each size a third anonymous, a third a regular file's
//! page cache, a third shmem, the files mapped shared — (self-checking records on every
//! fourth page, a fixed pattern on the others) while migrating threads move random subsets
//! in random modes and reasons, and a reader reads the files' pattern pages through the
//! page cache (`read(2)`, racing with the refcount freeze of their migration).

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pagemig::migrate::{migrate_pages, Mode, Reason};
use pagemig::mm::{
    AddressSpace, File, FileKind, Folio, Memory, MigrateFolioOp, NodeId, Order, VirtAddr, PAGE_SIZE,
};
use pagemig::sync::IgnorePoison as _;
use pagemig::Errno;
use pagemig_engines::EngineSpec;

use crate::rng::SharedRng;

use super::inject::chaos_loop;
use super::{Session, StressError, StressOptions, StressReport, Totals};

pub(super) const BASE: u64 = 0x20_0000_0000;
/// Folios of the stressed space: (order, count), laid out back to back.
pub(super) const LAYOUT: &[(u8, usize)] = &[(9, 2), (4, 64), (0, 1024), (2, 256)];

/// What a folio of the layout is: 0 anonymous, 1 page cache, 2 shmem — by thirds of each
/// size group, so that each kind is a few runs of contiguous folios.
pub(super) fn folio_kinds() -> Vec<u8> {
    let mut v = Vec::new();
    for &(_, n) in LAYOUT {
        for pos in 0..n {
            v.push(if pos * 3 < n {
                0
            } else if pos * 3 < 2 * n {
                1
            } else {
                2
            });
        }
    }
    v
}

pub(super) fn folio_starts() -> Vec<(u64, u8)> {
    let mut v = Vec::new();
    let mut va = BASE;
    for &(order, n) in LAYOUT {
        for _ in 0..n {
            v.push((va, order));
            va += (PAGE_SIZE << order) as u64;
        }
    }
    v
}

pub(super) fn space_len() -> usize {
    LAYOUT.iter().map(|(o, n)| (PAGE_SIZE << o) * n).sum()
}

pub(super) fn pattern_word(page: usize, w: usize) -> u64 {
    let mut x = (page as u64) << 20 ^ w as u64 ^ 0xA5A5_5A5A_DEAD_BEEF;
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}

/// Pages with writer slots: every 4th page; the others keep a fixed pattern.
pub(super) fn is_writer_page(page: usize) -> bool {
    page % 4 == 0
}

pub(super) fn accessor_loop(
    sp: Arc<AddressSpace>,
    id: usize,
    nr: usize,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    rng_seed: u64,
) {
    let acc = sp.accessor();
    let nr_pages = space_len() / PAGE_SIZE;
    let mine: Vec<usize> = (0..nr_pages)
        .filter(|p| is_writer_page(*p) && (p / 4) % nr == id)
        .collect();
    let mut last = vec![0u64; mine.len()];
    let slot = |p: usize| VirtAddr(BASE + (p * PAGE_SIZE + (p * 16) % PAGE_SIZE) as u64);
    let rng = SharedRng::new(rng_seed);
    let mut seq = 1u64;
    let mut ops = 0u64;
    let check = |p: usize, expect: u64| -> (u64, u64, u64) {
        let mut b = [0u8; 16];
        match acc.read(slot(p), &mut b) {
            Err(Errno::HwPoison) => (0, 0, 1),
            Err(e) => panic!("accessor read failed: {e}"),
            Ok(()) => {
                let v = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                let c = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
                let torn = (c != !v ^ p as u64) as u64;
                let lost = (v != expect) as u64;
                (lost, torn, 0)
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        for (k, &p) in mine.iter().enumerate() {
            let (lost, torn, pois) = check(p, last[k]);
            t.lost.fetch_add(lost, Ordering::Relaxed);
            t.torn.fetch_add(torn, Ordering::Relaxed);
            t.poisoned_reads.fetch_add(pois, Ordering::Relaxed);
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&seq.to_le_bytes());
            b[8..].copy_from_slice(&(!seq ^ p as u64).to_le_bytes());
            acc.write(slot(p), &b).expect("accessor write");
            last[k] = seq;
            ops += 2;
        }
        seq += 1;
        t.ops.fetch_add(ops, Ordering::Relaxed);
        ops = 0;
        // A few reads of pattern pages.
        for _ in 0..8 {
            let p = rng.below(nr_pages);
            if is_writer_page(p) {
                continue;
            }
            let w = rng.below(PAGE_SIZE / 8);
            match acc.read_u64(VirtAddr(BASE + (p * PAGE_SIZE + w * 8) as u64)) {
                Ok(v) => {
                    if v != pattern_word(p, w) {
                        t.mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(Errno::HwPoison) => {
                    t.poisoned_reads.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("accessor read failed: {e}"),
            }
            ops += 1;
        }
    }
    // Final check: every slot holds the last value written (retry poisoned reads).
    for (k, &p) in mine.iter().enumerate() {
        loop {
            let (lost, torn, pois) = check(p, last[k]);
            if pois == 1 {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            t.lost.fetch_add(lost, Ordering::Relaxed);
            t.torn.fetch_add(torn, Ordering::Relaxed);
            break;
        }
    }
    t.ops.fetch_add(ops, Ordering::Relaxed);
}

pub(super) fn migrator_loop(
    mm: Arc<Memory>,
    sp: Arc<AddressSpace>,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    seed: u64,
) {
    let rng = SharedRng::new(seed);
    let starts = folio_starts();
    let modes = [Mode::Async, Mode::SyncLight, Mode::Sync];
    let reasons = [
        Reason::Demotion,
        Reason::Syscall,
        Reason::Compaction,
        Reason::NumaMisplaced,
        Reason::LongtermPin,
    ];
    while !stop.load(Ordering::Relaxed) {
        let mut list = Vec::new();
        for &(va, _) in &starts {
            if !rng.chance(0.25) {
                continue;
            }
            if let Some(f) = sp.folio_at(VirtAddr(va)) {
                if mm.isolate_folio(f).is_ok() {
                    list.push(f);
                }
            }
        }
        if list.is_empty() {
            continue;
        }
        let mode = modes[rng.below(modes.len())];
        let reason = reasons[rng.below(reasons.len())];
        let mut alloc = |mm: &Memory, src: Folio| {
            let f = mm.folio(src);
            // The next node, round the ring of nodes.
            let node = NodeId((f.node().0 + 1) % mm.nodes().len() as u32);
            let flags = f.flags() & pagemig::mm::pg::HUGETLB;
            mm.alloc_folio(node, f.order(), flags).ok()
        };
        let res = migrate_pages(&mm, &mut list, &mut alloc, None, mode, reason)
            .expect("stress lists are valid");
        t.migrate_calls.fetch_add(1, Ordering::Relaxed);
        t.migrated
            .fetch_add(res.stats.nr_succeeded as u64, Ordering::Relaxed);
        {
            let mut f = t.failed.lock().ignore_poison();
            for (e, n) in res.stats.failures_by_errno() {
                *f.entry(e.name().into()).or_default() += n as u64;
            }
        }
        if let Err(e) = res.rc {
            *t.calls_failed
                .lock()
                .ignore_poison()
                .entry(e.name().into())
                .or_default() += 1;
        }
        mm.putback_movable_pages(&mut list);
    }
}

/// Reads the files' pattern pages through the page cache until stopped.
fn cache_reader_loop(
    files: Arc<[File; 2]>,
    pages: Vec<(u8, usize)>,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    seed: u64,
) {
    let rng = SharedRng::new(seed);
    let mut buf = vec![0u8; PAGE_SIZE];
    while !stop.load(Ordering::Relaxed) && !pages.is_empty() {
        let (kind, p) = pages[rng.below(pages.len())];
        match files[kind as usize - 1].read((p * PAGE_SIZE) as u64, &mut buf) {
            Ok(()) => {
                let bad = buf.chunks_exact(8).enumerate().any(|(w, c)| {
                    u64::from_le_bytes(c.try_into().expect("8")) != pattern_word(p, w)
                });
                if bad {
                    t.mismatches.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(Errno::HwPoison) => {
                t.poisoned_reads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("page-cache read failed: {e}"),
        }
        t.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Maps the layout into `sp`: anonymous folios, and the page cache of the two files
/// (file page = page offset in the space), each run of one kind as one shared mapping.
fn map_layout(mm: &Arc<Memory>, sp: &Arc<AddressSpace>) -> Result<Arc<[File; 2]>, StressError> {
    let files = Arc::new([
        mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap)),
        mm.create_file(FileKind::Shmem),
    ]);
    let starts = folio_starts();
    let kinds = folio_kinds();
    let index = |va: u64| (va - BASE) / PAGE_SIZE as u64;
    for (&(va, order), &kind) in starts.iter().zip(&kinds) {
        match kind {
            0 => {
                sp.map_anon(VirtAddr(va), NodeId(0), Order(order))?;
            }
            k => {
                files[k as usize - 1].add_folio(index(va), NodeId(0), Order(order))?;
            }
        }
    }
    let mut j = 0;
    while j < starts.len() {
        let kind = kinds[j];
        let mut end = j;
        while end < starts.len() && kinds[end] == kind {
            end += 1;
        }
        if kind != 0 {
            let (va, _) = starts[j];
            let (last, order) = starts[end - 1];
            let nr = (last + (PAGE_SIZE << order) as u64 - va) as usize / PAGE_SIZE;
            sp.map_file(VirtAddr(va), &files[kind as usize - 1], index(va), nr)?;
        }
        j = end;
    }
    Ok(files)
}

/// Runs the stress for one engine on the built-in backend.
pub fn run_one(spec: EngineSpec, o: &StressOptions) -> Result<StressReport, StressError> {
    let s = Session::new(spec.to_string(), spec, o, 0x1234);
    let mm = s.memory(2 * space_len() + (16 << 20))?;
    let sp = mm.new_space(VirtAddr(BASE), space_len())?;
    let files = map_layout(&mm, &sp)?;
    {
        let acc = sp.accessor();
        let mut buf = vec![0u8; PAGE_SIZE];
        for p in 0..space_len() / PAGE_SIZE {
            if is_writer_page(p) {
                let mut b = [0u8; 16];
                b[8..].copy_from_slice(&(!0u64 ^ p as u64).to_le_bytes());
                acc.write(
                    VirtAddr(BASE + (p * PAGE_SIZE + (p * 16) % PAGE_SIZE) as u64),
                    &b,
                )?;
            } else {
                for (w, c) in buf.chunks_exact_mut(8).enumerate() {
                    c.copy_from_slice(&pattern_word(p, w).to_le_bytes());
                }
                acc.write(VirtAddr(BASE + (p * PAGE_SIZE) as u64), &buf)?;
            }
        }
    }
    let engine = s.start(&mm)?;
    let (stop, totals) = (&s.stop, &s.totals);
    let mut handles = Vec::new();
    for i in 0..o.accessors {
        let (sp, stop, t) = (sp.clone(), stop.clone(), totals.clone());
        let n = o.accessors;
        handles.push(std::thread::spawn(move || {
            accessor_loop(sp, i, n, stop, t, 77 + i as u64)
        }));
    }
    for i in 0..o.migrators {
        let (mm, sp, stop, t) = (mm.clone(), sp.clone(), stop.clone(), totals.clone());
        handles.push(std::thread::spawn(move || {
            migrator_loop(mm, sp, stop, t, 1000 + i as u64)
        }));
    }
    {
        // The pattern pages of the files, read through the cache.
        let mut pages = Vec::new();
        for (&(va, order), &kind) in folio_starts().iter().zip(&folio_kinds()) {
            let first = ((va - BASE) / PAGE_SIZE as u64) as usize;
            for p in first..first + (1 << order) {
                if kind != 0 && !is_writer_page(p) {
                    pages.push((kind, p));
                }
            }
        }
        let (files, stop, t) = (files.clone(), stop.clone(), totals.clone());
        handles.push(std::thread::spawn(move || {
            cache_reader_loop(files, pages, stop, t, 4242)
        }));
    }
    if !o.inject.is_empty() {
        let (mm, sp, stop, t, inj) = (
            mm.clone(),
            sp.clone(),
            stop.clone(),
            totals.clone(),
            o.inject.clone(),
        );
        handles.push(std::thread::spawn(move || {
            chaos_loop(mm, sp, stop, t, inj, folio_starts(), 5)
        }));
    }
    let seconds = s.run(&engine, 99, handles, |secs| {
        format!(
            "[{spec} {secs:>5.0}s] ops {} pages migrated {} failed {:?} lost {} torn {} mismatches {}",
            totals.ops.load(Ordering::Relaxed),
            totals.migrated.load(Ordering::Relaxed),
            totals.failed.lock().ignore_poison().clone(),
            totals.lost.load(Ordering::Relaxed),
            totals.torn.load(Ordering::Relaxed),
            totals.mismatches.load(Ordering::Relaxed),
        )
    })?;
    // Pattern pages, checked once more in full.
    {
        let acc = sp.accessor();
        let mut buf = vec![0u8; PAGE_SIZE];
        for p in (0..space_len() / PAGE_SIZE).filter(|p| !is_writer_page(*p)) {
            acc.read(VirtAddr(BASE + (p * PAGE_SIZE) as u64), &mut buf)?;
            if buf
                .chunks_exact(8)
                .enumerate()
                .any(|(w, c)| u64::from_le_bytes(c.try_into().expect("8")) != pattern_word(p, w))
            {
                totals.mismatches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let counters = Session::engine_counters(&engine);
    s.finish(seconds, engine, counters, mm, move || {
        // The mappings go first, then the files' page cache.
        drop(sp);
        drop(files);
    })
}
