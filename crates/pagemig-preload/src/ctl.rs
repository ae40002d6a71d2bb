//! The control thread: serves `pagemig ctl` on the process's Unix socket
//! ([`pagemig_live::control`]), one request at a time — where the pages are, and moves.

#![forbid(unsafe_code)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemig::mm::PAGE_SIZE;
use pagemig::offload::PipelineConfig;
use pagemig::sync::lock;
use pagemig_engines::{Engine, EngineSpec};
use pagemig_live::control::{
    self, MoveReport, MoveRequest, NodeStat, RegionStat, Reply, Request, Response, Stat, Untiered,
};
use pagemig_live::MPOL_MF_MOVE;

use crate::interpose::Inside;
use crate::tier::{Entry, Source, State};

/// Pages (or THPs) per `move_pages` call of a move: the unit a fork or a `free` waits for.
const CHUNK: usize = 512;

/// Binds the socket and starts the thread.
pub(crate) fn start(st: &'static State) -> Result<(), String> {
    let dir = control::socket_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let path = control::socket_path(std::process::id());
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // One of pagemig's own threads (its allocations never wait for the program's
    // allocator); never joined.
    pagemig::sys::own_threads::spawn(
        std::thread::Builder::new().name("pagemig-ctl".into()),
        move || {
            let _g = Inside::enter();
            for s in l.incoming().flatten() {
                serve(st, s);
            }
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Removes this process's socket (at exit).
pub(crate) fn remove_socket() {
    let _ = std::fs::remove_file(control::socket_path(std::process::id()));
}

fn serve(st: &'static State, s: UnixStream) {
    let mut line = String::new();
    if BufReader::new(&s).read_line(&mut line).is_err() {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Stat) => Response::Ok(Reply::Stat(Box::new(stat(st)))),
        Ok(Request::Move(m)) => match do_move(st, &m) {
            Ok(r) => Response::Ok(Reply::Moved(r)),
            Err(message) => Response::Error { message },
        },
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_default();
    out.push('\n');
    let _ = (&s).write_all(out.as_bytes());
}

fn snapshot(st: &State) -> Vec<Arc<Entry>> {
    lock(&st.regions).values().cloned().collect()
}

fn stat(st: &State) -> Stat {
    let mm = &st.mm;
    let mut regions = Vec::new();
    let mut per_node = vec![0u64; mm.nodes().len()];
    for e in snapshot(st) {
        let g = e.region.read().unwrap_or_else(|p| p.into_inner());
        let Some(r) = g.as_ref() else { continue };
        let pages: Vec<u64> = r.pages_per_node().into_iter().map(|n| n as u64).collect();
        for (t, p) in per_node.iter_mut().zip(&pages) {
            *t += p;
        }
        regions.push(RegionStat {
            start: e.start as u64,
            end: (e.start + e.len) as u64,
            folio_bytes: r.folio_bytes() as u64,
            pages_per_node: pages,
            source: match e.source {
                Source::Malloc => "malloc",
                Source::Mmap => "mmap",
            }
            .into(),
        });
    }
    let lc = st.live.counts();
    let c = &st.counters;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Stat {
        pid: std::process::id(),
        nodes: mm
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| NodeStat {
                id: i as u32,
                host_node: st.host_nodes[i],
                pool_bytes: (n.nr_pages() * PAGE_SIZE) as u64,
                free_bytes: (n.nr_free_pages() * PAGE_SIZE) as u64,
                reserve_bytes: (n.max_pages() * PAGE_SIZE) as u64,
                pages: per_node[i],
            })
            .collect(),
        one_physical_node: st.host_nodes.iter().all(|h| h.is_none()),
        engine: lock(&st.engine).0.clone(),
        threshold_bytes: st.cfg.threshold as u64,
        place: st.cfg.place.map_or("interleave".into(), |n| n.to_string()),
        regions,
        untiered: Untiered {
            detached_regions: g(&c.detached_regions),
            detached_pages: lc.detached_pages,
            passed_through: g(&c.passed_through),
            passed_through_bytes: g(&c.passed_through_bytes),
        },
        counters: control::Counters {
            regions_made: g(&c.regions_made),
            regions_freed: g(&c.regions_freed),
            pages_migrated: g(&c.pages_migrated),
            pages_failed: g(&c.pages_failed),
            pages_discarded: g(&c.pages_discarded),
            faults: lc.faults,
            first_touches: lc.faults_populated,
            faults_on_migration: lc.faults_on_migration,
            faults_woken: lc.faults_woken,
            faulted_around: lc.faulted_around,
            zero_page_fixups: lc.zero_page_fixups,
            pool_growths: lc.pool_growths,
            remap_errors: lc.remap_errors,
            forks: g(&c.forks),
            regions_remade: g(&c.regions_remade),
            thp_advice_not_followed: g(&c.thp_advice_not_followed),
        },
        live: lc,
    }
}

/// The destination of a page now on `node`, if it is to move.
fn dest(m: &MoveRequest, node: u32) -> Option<u32> {
    let to = match &m.from {
        None => m.to[0],
        Some(from) => {
            let i = from.iter().position(|&f| f == node)?;
            if m.to.len() == 1 {
                m.to[0]
            } else {
                m.to[i]
            }
        }
    };
    Some(to)
}

fn do_move(st: &State, m: &MoveRequest) -> Result<MoveReport, String> {
    let nr = st.mm.nodes().len() as u32;
    let bad = |n: &u32| *n >= nr;
    if m.to.is_empty() {
        return Err("no destination node".into());
    }
    if let Some(n) = m.to.iter().chain(m.from.iter().flatten()).find(|n| bad(n)) {
        return Err(format!(
            "no node {n}: the program has nodes 0 to {}",
            nr - 1
        ));
    }
    match &m.from {
        None if m.to.len() != 1 => {
            return Err("several destinations need as many source nodes".into())
        }
        Some(f) if f.is_empty() => return Err("no source node".into()),
        Some(f) if m.to.len() != 1 && m.to.len() != f.len() => {
            return Err(format!(
                "{} source nodes and {} destinations: give one destination or as many",
                f.len(),
                m.to.len()
            ))
        }
        _ => {}
    }
    if let Some(r) = m.rate_mb_s {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!("rate {r} MB/s: a positive number is needed"));
        }
    }
    let chunk = match m.batch_pages {
        None => CHUNK,
        Some(n) if (1..=CHUNK).contains(&n) => n,
        Some(n) => return Err(format!("batch of {n} pages: 1 to {CHUNK} are possible")),
    };
    let (lo, hi) = m
        .range
        .map_or((0, usize::MAX), |(a, b)| (a as usize, b as usize));
    if lo >= hi {
        return Err(format!("empty range {lo:#x}-{hi:#x}"));
    }
    if let Some(spec) = &m.engine {
        let parsed: EngineSpec = spec
            .parse()
            .map_err(|e| format!("engine {spec:?}: {e:?}"))?;
        let _g = lock(&st.migrating);
        let mut eng = lock(&st.engine);
        if eng.0 != *spec {
            if let Some(old) = eng.1.take() {
                if let Err(e) = old.stop() {
                    return Err(format!("cannot stop engine {:?}: {e}", eng.0));
                }
            }
            match Engine::start(parsed, &st.mm, &[]) {
                Ok(e) => *eng = (spec.clone(), Some(e)),
                Err(e) => {
                    // Back to the engine it had.
                    let old: Option<EngineSpec> = eng.0.parse().ok();
                    eng.1 = old.and_then(|o| Engine::start(o, &st.mm, &[]).ok());
                    return Err(format!("engine {spec:?}: {e}"));
                }
            }
        }
    }
    // The pipeline for this move only (moves are made one at a time, on this thread), and
    // only in turn: the overlap's helper thread would not be one of pagemig's own.
    struct Restore<'a>(&'a pagemig::offload::Registry, Option<PipelineConfig>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.set_pipeline(self.1);
        }
    }
    let _restore = m.pipeline.then(|| {
        let off = st.mm.offload();
        let was = off.pipeline();
        off.set_pipeline(Some(PipelineConfig::default()));
        Restore(off, was)
    });
    let t0 = Instant::now();
    let mut rep = MoveReport::default();
    let mut bytes_moved = 0u64;
    for e in snapshot(st) {
        let (s, t) = (e.start.max(lo), (e.start + e.len).min(hi));
        if s >= t {
            continue;
        }
        rep.regions += 1;
        let step = {
            let g = e.region.read().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(r) => r.folio_bytes(),
                None => continue,
            }
        };
        let first = e.start + (s - e.start) / step * step;
        let addrs: Vec<usize> = (first..t).step_by(step).collect();
        for chunk in addrs.chunks(chunk) {
            let _g = lock(&st.migrating);
            let g = e.region.read().unwrap_or_else(|p| p.into_inner());
            let Some(r) = g.as_ref() else { break };
            let mut status = vec![0i32; chunk.len()];
            if r.move_pages(chunk, None, &mut status, 0).is_err() {
                continue;
            }
            let mut pages = Vec::new();
            let mut nodes = Vec::new();
            for (&a, &n) in chunk.iter().zip(&status) {
                if n < 0 {
                    continue;
                }
                match dest(m, n as u32) {
                    Some(d) if d != n as u32 => {
                        pages.push(a);
                        nodes.push(d as i32);
                    }
                    Some(_) => rep.pages_in_place += (step / PAGE_SIZE) as u64,
                    None => {}
                }
            }
            if pages.is_empty() {
                continue;
            }
            let mut st2 = vec![i32::MIN; pages.len()];
            if let Err(e) = r.move_pages(&pages, Some(&nodes), &mut st2, MPOL_MF_MOVE) {
                return Err(format!("move_pages: {e:?}"));
            }
            let per = (step / PAGE_SIZE) as u64;
            let moved = st2.iter().zip(&nodes).filter(|(s, n)| **s == **n).count() as u64;
            let failed = pages.len() as u64 - moved;
            rep.pages_migrated += moved * per;
            rep.pages_failed += failed * per;
            bytes_moved += moved * per * PAGE_SIZE as u64;
            drop(g);
            drop(_g);
            if let Some(rate) = m.rate_mb_s {
                let due = Duration::from_secs_f64(bytes_moved as f64 / (rate * 1e6));
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
    st.counters
        .pages_migrated
        .fetch_add(rep.pages_migrated, Ordering::Relaxed);
    st.counters
        .pages_failed
        .fetch_add(rep.pages_failed, Ordering::Relaxed);
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}
