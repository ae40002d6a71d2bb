//! The stress test on the live backend: writer threads on this process's own memory
//! (sequence-numbered records, each checked whole before the next write) while migrating
//! threads move its pages with `move_pages(2)`-shaped calls.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pagemig::mm::PAGE_SIZE;
use pagemig::sync::IgnorePoison as _;
use pagemig_engines::EngineSpec;

use crate::rng::SharedRng;

use super::inject::chaos_loop;
use super::{Session, StressError, StressOptions, StressReport, Totals};

/// Regions of the live stress: (folio order, bytes).
pub(super) const LIVE_LAYOUT: &[(u8, usize)] = &[(0, 4 << 20), (2, 2 << 20), (9, 4 << 20)];
/// Records (8 words) per page of a live region; writer `i` of `n` owns records `i mod n`.
pub(super) const LIVE_RECS: usize = 8;

pub(super) fn live_word(rec: usize, seq: u64, k: usize) -> u64 {
    (seq << 24) ^ ((rec as u64) << 4) ^ k as u64 ^ 0x5A5A_0000_0000_0000
}

/// Writer threads of the live stress: sequence-numbered records of 8 words, each checked
/// whole before the next write (a lost write or a torn record shows as a mismatch).
pub(super) fn live_writer(
    regions: Arc<Vec<pagemig_live::LiveRegion>>,
    me: usize,
    n: usize,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    seed: u64,
) -> Vec<Vec<u64>> {
    let rng = SharedRng::new(seed);
    let mut seqs: Vec<Vec<u64>> = regions
        .iter()
        .map(|r| vec![0; r.len() / PAGE_SIZE * LIVE_RECS])
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let ri = rng.below(regions.len());
        let words = regions[ri].words();
        let nrec = seqs[ri].len();
        let rec = (rng.below(nrec / n) * n + me).min(nrec - 1);
        if rec % n != me {
            continue;
        }
        let base = rec * 8;
        let seq = seqs[ri][rec];
        let mut torn = false;
        let mut lost = false;
        for k in 0..8 {
            let v = words[base + k].load(Ordering::Relaxed);
            if v != live_word(rec, seq, k) {
                if k > 0 && !lost {
                    torn = true;
                } else {
                    lost = true;
                }
            }
        }
        if lost {
            t.lost.fetch_add(1, Ordering::Relaxed);
        } else if torn {
            t.torn.fetch_add(1, Ordering::Relaxed);
        }
        for k in 0..8 {
            words[base + k].store(live_word(rec, seq + 1, k), Ordering::Relaxed);
        }
        seqs[ri][rec] = seq + 1;
        t.ops.fetch_add(1, Ordering::Relaxed);
    }
    seqs
}

/// Migrating threads of the live stress: `move_pages(2)` of random runs of pages to a
/// random node.
pub(super) fn live_migrator(
    regions: Arc<Vec<pagemig_live::LiveRegion>>,
    nodes: usize,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    seed: u64,
) {
    let rng = SharedRng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let r = &regions[rng.below(regions.len())];
        let fb = r.folio_bytes();
        let nf = r.len() / fb;
        let first = rng.below(nf);
        let count = 1 + rng.below((nf - first).min(512 * PAGE_SIZE / fb).max(1));
        let addrs: Vec<usize> = (first..first + count).map(|i| r.addr() + i * fb).collect();
        let node = rng.below(nodes) as i32;
        let mut status = vec![0; addrs.len()];
        t.migrate_calls.fetch_add(1, Ordering::Relaxed);
        match r.move_pages(
            &addrs,
            Some(&vec![node; addrs.len()]),
            &mut status,
            pagemig_live::MPOL_MF_MOVE,
        ) {
            Ok(0) => {
                let moved = status.iter().filter(|&&s| s == node).count();
                t.migrated
                    .fetch_add((moved * fb / PAGE_SIZE) as u64, Ordering::Relaxed);
                let mut f = t.failed.lock().ignore_poison();
                for &s in status.iter().filter(|&&s| s < 0) {
                    *f.entry(format!("status {}", crate::stress::errno_name(-s)))
                        .or_default() += 1;
                }
            }
            Ok(left) => {
                *t.failed
                    .lock()
                    .ignore_poison()
                    .entry("not migrated (call aborted)".into())
                    .or_default() += left as u64;
            }
            Err(e) => {
                *t.calls_failed
                    .lock()
                    .ignore_poison()
                    .entry(e.name().into())
                    .or_default() += 1;
            }
        }
    }
}

/// Pages of `regions` whose node the kernel's `move_pages(2)` query and pagemig's
/// disagree on.
fn placement_mismatches(regions: &[pagemig_live::LiveRegion]) -> u64 {
    let mut n = 0;
    for r in regions {
        let addrs: Vec<usize> = (0..r.len())
            .step_by(PAGE_SIZE)
            .map(|o| r.addr() + o)
            .collect();
        let mut ours = vec![0; addrs.len()];
        let mut theirs = vec![0; addrs.len()];
        if r.move_pages(&addrs, None, &mut ours, 0).is_err()
            || pagemig_live::kernel::move_pages(&addrs, None, &mut theirs, 0).is_err()
        {
            n += addrs.len() as u64;
            continue;
        }
        let bad: Vec<(usize, i32, i32)> = addrs
            .iter()
            .zip(ours.iter().zip(&theirs))
            .filter(|(_, (a, b))| a != b)
            .map(|(&v, (&a, &b))| (v, a, b))
            .collect();
        if !bad.is_empty() {
            // What kind of disagreement, for whoever reads a failed run: the kernel naming
            // another node, or giving a status (a negative errno: the zero page, no page).
            let other = bad.iter().filter(|b| b.2 >= 0).count();
            let first: Vec<String> = bad
                .iter()
                .take(4)
                .map(|(v, a, b)| format!("{v:#x}: pagemig {a}, kernel {b}"))
                .collect();
            eprintln!(
                "placement: {} page(s) of a region of {} disagree ({other} on another node, {} \
                 with a kernel status); first: {}",
                bad.len(),
                r.len(),
                bad.len() - other,
                first.join("; ")
            );
        }
        n += bad.len() as u64;
    }
    n
}

/// Runs the live-backend stress for one engine: writer threads on this process's own
/// memory while migrating threads move its pages between nodes, with faults injected.
pub fn run_live(spec: EngineSpec, o: &StressOptions) -> Result<StressReport, StressError> {
    let s = Session::new(format!("live {spec}"), spec, o, 0x4321);
    let total: usize = LIVE_LAYOUT.iter().map(|(_, b)| b).sum();
    let mm = s.memory(2 * total + (16 << 20))?;
    let live = pagemig_live::Live::new(&mm, pagemig_live::LiveConfig::default())?;
    let mut regions = Vec::new();
    for &(order, bytes) in LIVE_LAYOUT {
        let r = live.region(pagemig_live::RegionConfig::new(bytes, order))?;
        r.populate()?;
        for rec in 0..r.len() / PAGE_SIZE * LIVE_RECS {
            for k in 0..8 {
                r.words()[rec * 8 + k].store(live_word(rec, 0, k), Ordering::Relaxed);
            }
        }
        regions.push(r);
    }
    let regions = Arc::new(regions);
    let engine = s.start(&mm)?;
    let (stop, totals) = (&s.stop, &s.totals);
    let writers: Vec<_> = (0..o.accessors)
        .map(|i| {
            let (r, stop, t) = (regions.clone(), stop.clone(), totals.clone());
            let n = o.accessors;
            std::thread::spawn(move || live_writer(r, i, n, stop, t, 77 + i as u64))
        })
        .collect();
    let mut handles = Vec::new();
    for i in 0..o.migrators {
        let (r, stop, t) = (regions.clone(), stop.clone(), totals.clone());
        let nodes = o.nodes;
        handles.push(std::thread::spawn(move || {
            live_migrator(r, nodes, stop, t, 1000 + i as u64)
        }));
    }
    if !o.inject.is_empty() {
        for (k, r) in regions.iter().enumerate() {
            let starts: Vec<(u64, u8)> = (0..r.len() / r.folio_bytes())
                .map(|i| {
                    (
                        (r.addr() + i * r.folio_bytes()) as u64,
                        r.folio_bytes().trailing_zeros() as u8 - 12,
                    )
                })
                .collect();
            let (mm, sp, stop, t, inj) = (
                mm.clone(),
                r.space().clone(),
                stop.clone(),
                totals.clone(),
                o.inject.clone(),
            );
            handles.push(std::thread::spawn(move || {
                chaos_loop(mm, sp, stop, t, inj, starts, 5 + k as u64)
            }));
        }
    }
    let run = s.run(&engine, 98, handles, |secs| {
        format!(
            "[live {spec} {secs:>5.0}s] ops {} pages migrated {} lost {} torn {} {:?}",
            totals.ops.load(Ordering::Relaxed),
            totals.migrated.load(Ordering::Relaxed),
            totals.lost.load(Ordering::Relaxed),
            totals.torn.load(Ordering::Relaxed),
            live.counts(),
        )
    });
    // The writers stop with the others (the stop flag); their last sequence numbers are
    // what every record must hold.
    let mut seqs = Vec::new();
    for h in writers {
        seqs.push(
            h.join()
                .map_err(|_| StressError::ThreadPanicked("a writer thread"))?,
        );
    }
    let seconds = run?;
    // Every record holds its writer's last write, whole.
    let n = o.accessors;
    for (ri, r) in regions.iter().enumerate() {
        for rec in 0..r.len() / PAGE_SIZE * LIVE_RECS {
            let seq = seqs[rec % n][ri][rec];
            if (0..8)
                .any(|k| r.words()[rec * 8 + k].load(Ordering::Relaxed) != live_word(rec, seq, k))
            {
                totals.mismatches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // On a host with these nodes, the kernel must place every page where pagemig says.
    if mm
        .nodes()
        .iter()
        .all(|n| matches!(n.binding(), pagemig::mm::NumaBinding::Bound(_)))
    {
        *totals.placement_mismatches.lock().ignore_poison() = Some(placement_mismatches(&regions));
    }
    let lc = live.counts();
    let mut counters = Session::engine_counters(&engine);
    for (k, v) in [
        ("live.faults", lc.faults),
        ("live.faults_on_migration", lc.faults_on_migration),
        ("live.unmap_ioctls", lc.unmap_ioctls),
        ("live.remap_ioctls", lc.remap_ioctls),
        ("live.unmap_failures", lc.unmap_failures),
        ("live.stray_faults", lc.stray_faults),
        ("live.remap_errors", lc.remap_errors),
        ("live.remap_retries", lc.remap_retries),
        ("live.zero_page_fixups", lc.zero_page_fixups),
        ("live.wrong_node_fixups", lc.wrong_node_fixups),
        ("live.fixup_failures", lc.fixup_failures),
        ("live.moves_misreported", lc.moves_misreported),
        (
            "live.huge_slot_collapses_failed",
            lc.huge_slot_collapses_failed,
        ),
    ] {
        counters.insert(k.into(), v);
    }
    // A stray fault or a failed move into the program is a backend bug: count it as loss.
    totals
        .mismatches
        .fetch_add(lc.stray_faults + lc.remap_errors, Ordering::Relaxed);
    s.finish(seconds, engine, counters, mm, move || {
        drop(regions);
        drop(live);
    })
}
