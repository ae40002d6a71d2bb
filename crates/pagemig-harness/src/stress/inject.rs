//! Fault injection of the stress test: the `--inject` kinds and rates, the allocation hook
//! (`should_fail` for destinations), the chaos thread that pins, locks, writes back and
//! poisons folios, and the engine knobs that inject copy failures and stalls.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pagemig::mm::{AddressSpace, FaultHooks, Memory, NodeId, Order, Pfn, VirtAddr};
use pagemig_engines::EngineSpec;

use crate::rng::SharedRng;
use crate::spec::SpecError;

use super::Totals;

/// Fault kinds `--inject` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// An extra reference held across a migration (a GUP pin): `EAGAIN`.
    Eagain,
    /// The folio lock held by someone else for a while.
    Lock,
    /// Writeback in progress for a while (`EBUSY` in async modes, waits in sync).
    Writeback,
    /// A page poisoned for a while (the copy fails with `EHWPOISON`).
    Poison,
    /// Destination allocation fails (`ENOMEM`; large folios split).
    Enomem,
    /// The copy engine fails copies (mtcopy chunks, dcbm descriptors).
    Engine,
    /// A DMA channel stalls past the driver's timeout (dcbm).
    Timeout,
    /// The driver is unregistered and registered again mid-run.
    Unregister,
    /// The reason mask changes mid-run.
    Reason,
}

impl FaultKind {
    const ALL: [FaultKind; 9] = [
        FaultKind::Eagain,
        FaultKind::Lock,
        FaultKind::Writeback,
        FaultKind::Poison,
        FaultKind::Enomem,
        FaultKind::Engine,
        FaultKind::Timeout,
        FaultKind::Unregister,
        FaultKind::Reason,
    ];
    pub(super) fn name(self) -> &'static str {
        match self {
            FaultKind::Eagain => "eagain",
            FaultKind::Lock => "lock",
            FaultKind::Writeback => "writeback",
            FaultKind::Poison => "poison",
            FaultKind::Enomem => "enomem",
            FaultKind::Engine => "engine",
            FaultKind::Timeout => "timeout",
            FaultKind::Unregister => "unregister",
            FaultKind::Reason => "reason",
        }
    }
    /// The rate `all` uses.
    fn default_rate(self) -> f64 {
        match self {
            FaultKind::Eagain | FaultKind::Lock | FaultKind::Writeback => 0.2,
            FaultKind::Poison => 0.05,
            FaultKind::Enomem => 0.01,
            FaultKind::Engine => 0.05,
            FaultKind::Timeout => 0.01,
            FaultKind::Unregister | FaultKind::Reason => 0.05,
        }
    }
}

/// Parses `--inject`: `none`, `all`, or `kind[=rate],...` with rates in (0, 1].
pub fn parse_inject(s: &str) -> Result<Vec<(FaultKind, f64)>, SpecError> {
    match s.trim() {
        "none" | "" => return Ok(Vec::new()),
        "all" => {
            return Ok(FaultKind::ALL
                .iter()
                .map(|k| (*k, k.default_rate()))
                .collect())
        }
        _ => {}
    }
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        let (name, rate) = match item.split_once('=') {
            Some((n, r)) => {
                let r: f64 = r.parse().map_err(|_| {
                    SpecError(format!("bad rate in {item:?}: expected a number in (0, 1]"))
                })?;
                (n, Some(r))
            }
            None => (item, None),
        };
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                SpecError(format!(
                    "unknown fault kind {name:?} (known: all, none, {})",
                    FaultKind::ALL.map(|k| k.name()).join(", ")
                ))
            })?;
        let rate = rate.unwrap_or_else(|| kind.default_rate());
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(SpecError(format!(
                "rate of {name} must be in (0, 1], got {rate}"
            )));
        }
        out.push((kind, rate));
    }
    Ok(out)
}

pub(super) struct Hooks {
    pub(super) enomem_rate: f64,
    pub(super) rng: SharedRng,
    pub(super) injected: AtomicU64,
    /// Off while the space is set up.
    pub(super) armed: AtomicBool,
}

impl FaultHooks for Hooks {
    fn alloc_should_fail(&self, _node: NodeId, _order: Order) -> bool {
        if self.armed.load(Ordering::Relaxed)
            && self.enomem_rate > 0.0
            && self.rng.chance(self.enomem_rate)
        {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

pub(super) fn chaos_loop(
    mm: Arc<Memory>,
    sp: Arc<AddressSpace>,
    stop: Arc<AtomicBool>,
    t: Arc<Totals>,
    inject: Vec<(FaultKind, f64)>,
    starts: Vec<(u64, u8)>,
    seed: u64,
) {
    let rng = SharedRng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_micros(200));
        for &(k, rate) in &inject {
            if !matches!(
                k,
                FaultKind::Eagain | FaultKind::Lock | FaultKind::Writeback | FaultKind::Poison
            ) || !rng.chance(rate)
            {
                continue;
            }
            let (va, order) = starts[rng.below(starts.len())];
            let Some(f) = sp.get_folio(VirtAddr(va)) else {
                continue;
            };
            let fr = mm.folio(f);
            match k {
                FaultKind::Eagain => std::thread::sleep(Duration::from_micros(500)),
                FaultKind::Lock => {
                    if fr.trylock() {
                        std::thread::sleep(Duration::from_micros(500));
                        fr.unlock();
                    } else {
                        fr.put();
                        continue;
                    }
                }
                FaultKind::Writeback => {
                    // Writeback starts under the folio lock, as in the kernel.
                    if fr.trylock() {
                        fr.start_writeback();
                        fr.unlock();
                        std::thread::sleep(Duration::from_micros(500));
                        fr.end_writeback();
                    } else {
                        fr.put();
                        continue;
                    }
                }
                FaultKind::Poison => {
                    let nr = fr.nr_pages().min(1 << order);
                    let pfn = Pfn(f.pfn().0 + rng.below(nr) as u64);
                    let _ = mm.inject_hwpoison(pfn);
                    // Drop the reference while the page is poisoned, so migrations reach
                    // the copy (and fail with EHWPOISON) instead of stopping at EAGAIN.
                    // The frame stays this folio's: a poisoned source cannot be copied.
                    fr.put();
                    std::thread::sleep(Duration::from_millis(2));
                    let _ = mm.clear_hwpoison(pfn);
                    t.inject(k);
                    continue;
                }
                _ => {}
            }
            fr.put();
            t.inject(k);
        }
    }
}

pub(super) fn rate(inject: &[(FaultKind, f64)], k: FaultKind) -> f64 {
    inject
        .iter()
        .find(|(x, _)| *x == k)
        .map_or(0.0, |(_, r)| *r)
}

pub(super) fn engine_knobs(spec: EngineSpec, inject: &[(FaultKind, f64)]) -> Vec<(String, String)> {
    let mut knobs = Vec::new();
    let every = |r: f64| ((1.0 / r).round() as u64).max(1).to_string();
    match spec {
        EngineSpec::MtCopy(_) => {
            let r = rate(inject, FaultKind::Engine);
            if r > 0.0 {
                knobs.push(("inject_fail_every".into(), every(r)));
            }
        }
        EngineSpec::Dcbm(_) => {
            let r = rate(inject, FaultKind::Engine);
            if r > 0.0 {
                knobs.push(("dma.fail_every".into(), every(r)));
            }
            let r = rate(inject, FaultKind::Timeout);
            if r > 0.0 {
                knobs.push(("dma.stall_every".into(), every(r)));
                knobs.push(("dma.stall_ms".into(), "50".into()));
                knobs.push(("timeout_ms".into(), "5".into()));
            }
            knobs.push(("max_desc_bytes".into(), "65536".into()));
        }
        _ => {}
    }
    knobs
}
