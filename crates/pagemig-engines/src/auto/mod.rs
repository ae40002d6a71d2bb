//! `auto` — picks, per batch, the copy engine and width that a short calibration on this
//! machine found fastest for the batch's folio size, or declines the batch (every folio
//! then copied inside its own move step) where that wins. The series' reviewers left "the
//! best batch size / engine on given hardware" open; this answers it by measuring.
//!
//! Candidates: the default copier (`batch`), `none` (decline), `mtcopy:W` for W in
//! 2..=CPUs, and `dcbm:C` for C in 1..=CPUs on the emulated provider. Calibration copies a
//! full batch (512 base pages) of each folio size, and a single folio, with every
//! candidate, three times, and keeps the best time. Single small folios follow it; full
//! batches are learned online on the migrations themselves (`Learned`: three first rounds
//! that measure every candidate's whole batch cycle, a paired settle between the two
//! fastest, then periodic challenges with a paired confirmation, and a recheck after each
//! switch). Decisions are counted by choice (`chose_*` counters) and explained, with the
//! latest events, by [`Auto::explain`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pagemig::mm::{Folio, Memory, NodeId, Order, HPAGE_PMD_ORDER, PAGE_SIZE};
use pagemig::offload::{migrate_folios_mc_copy, CopyBatch, Migrator, ReasonMask};
use pagemig::Errno;

mod learner;
pub mod prior;
mod tuning;

use learner::Learned;
use tuning::TUNING;

use crate::dcbm::Dcbm;
use crate::emulated::{EmulatedConfig, EmulatedDmaDevice};
use crate::mtcopy::MtCopy;
use crate::params::ParamError;
use crate::sync::lock;
use crate::ModuleParams;

enum Kind {
    Batch,
    Decline,
    Mt(MtCopy),
    Dma(Dcbm, Arc<EmulatedDmaDevice>),
}

impl Kind {
    /// Puts the candidate's idle threads to sleep now: auto is about to copy with another
    /// one on the same CPUs, and their spinning would slow it (and its measurement).
    fn quiesce(&self) {
        match self {
            Kind::Mt(d) => d.quiesce(),
            Kind::Dma(_, dev) => dev.quiesce(),
            Kind::Batch | Kind::Decline => {}
        }
    }
}

struct Candidate {
    name: String,
    kind: Kind,
    nr_chosen: AtomicU64,
}

/// The calibrated choice for one folio order: (candidate for a single-folio batch,
/// candidate for a full batch), with the times measured (ns per MiB) for every candidate.
#[derive(Debug, Clone)]
struct Choice {
    single: usize,
    full: usize,
    single_ns_per_mib: Vec<u64>,
    full_ns_per_mib: Vec<u64>,
}

struct Inner {
    candidates: Vec<Candidate>,
    /// The candidates full batches may go to (all but "none").
    eligible: Vec<usize>,
    /// Indexed by folio order.
    table: Mutex<Vec<Choice>>,
    /// Learned on real batches, by folio order.
    learned: Mutex<Vec<Learned>>,
    /// The last full batch copied: (candidate, when it ended), and when the last batch of
    /// a candidate other than that one ended (see [`Tuning::quiet_after_other`](tuning::Tuning::quiet_after_other)).
    last_copy: Mutex<LastCopy>,
}

#[derive(Default)]
struct LastCopy {
    last: Option<(usize, Instant)>,
    other_end: Option<Instant>,
    /// Each migrating thread's previous full batch, whose cycle ends when its next one
    /// starts (see [`Cycle`]).
    open: Vec<(std::thread::ThreadId, Cycle)>,
}

/// Threads with an open cycle kept at most (a thread that stopped migrating leaves one).
const MAX_OPEN: usize = 64;

/// A full batch whose sample is not known yet. What a candidate costs is not only its copy:
/// its threads share the CPUs with the caller's unmap and move phases (a two-channel DMA
/// emulation spins two threads there, a two-thread copier one), so the sample is the whole
/// cycle — from this batch's copy to the next batch's copy on the same thread, which spans
/// this batch's move and the next one's unmap and TLB flush.
struct Cycle {
    order: usize,
    pick: usize,
    warm: bool,
    ok: bool,
    start: Instant,
    copy_end: Instant,
    bytes: usize,
}

/// The auto engine. Cheap to clone.
#[derive(Clone)]
pub struct Auto {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auto")
            .field("candidates", &self.inner.candidates.len())
            .finish()
    }
}

fn copy_with(kind: &Kind, batch: &CopyBatch<'_>) -> Result<(), Errno> {
    match kind {
        Kind::Batch => migrate_folios_mc_copy(batch),
        Kind::Decline => Err(Errno::NotSupported),
        Kind::Mt(d) => d.migrator().offload_copy(batch),
        Kind::Dma(d, _) => d.migrator().offload_copy(batch),
    }
}

impl Auto {
    /// Builds the candidates (starting their pools and channels, unregistered) and
    /// calibrates. Needs 4 MiB free on node 0 and node 1.
    pub fn new(mm: &Arc<Memory>) -> Result<Auto, ParamError> {
        let nr_cpus = pagemig::sys::nr_cpus().max(1);
        let mut candidates = vec![
            Candidate {
                name: "batch".into(),
                kind: Kind::Batch,
                nr_chosen: AtomicU64::new(0),
            },
            Candidate {
                name: "none".into(),
                kind: Kind::Decline,
                nr_chosen: AtomicU64::new(0),
            },
        ];
        for w in 2..=nr_cpus.min(crate::mtcopy::MAX_THREADS) {
            let d = MtCopy::new(mm);
            d.set_param("threads", &w.to_string())?;
            d.attach()?;
            candidates.push(Candidate {
                name: format!("mtcopy:{w}"),
                kind: Kind::Mt(d),
                nr_chosen: AtomicU64::new(0),
            });
        }
        for c in 1..=nr_cpus.min(crate::dcbm::MAX_DMA_CHANNELS) {
            let dev = EmulatedDmaDevice::new(mm, EmulatedConfig::default());
            let d = Dcbm::new(mm, dev.clone());
            d.set_param("nr_dma_chan", &c.to_string())?;
            d.attach()?;
            candidates.push(Candidate {
                name: format!("dcbm:{c}"),
                kind: Kind::Dma(d, dev),
                nr_chosen: AtomicU64::new(0),
            });
        }
        let nr = candidates.len();
        let names: Vec<String> = candidates.iter().map(|c| c.name.clone()).collect();
        let auto = Auto {
            inner: Arc::new(Inner {
                eligible: (0..nr)
                    .filter(|&k| !matches!(candidates[k].kind, Kind::Decline))
                    .collect(),
                candidates,
                table: Mutex::new(Vec::new()),
                learned: Mutex::new(vec![Learned::new(&names); 10]),
                last_copy: Mutex::new(LastCopy::default()),
            }),
        };
        auto.calibrate(mm)?;
        // Threads and channels run only while auto is registered.
        auto.shutdown();
        Ok(auto)
    }

    /// Starts every candidate's threads and channels that are not running; whether it
    /// started any.
    fn attach_all(&self) -> Result<bool, ParamError> {
        let mut started = false;
        for c in &self.inner.candidates {
            match &c.kind {
                Kind::Mt(d) if !d.is_attached() => d.attach()?,
                Kind::Dma(d, _) if !d.is_attached() => d.attach()?,
                _ => continue,
            }
            started = true;
        }
        Ok(started)
    }

    /// Measures every candidate for every folio order (0..=9).
    pub fn calibrate(&self, mm: &Memory) -> Result<(), ParamError> {
        let mut table = Vec::new();
        for order in 0..=HPAGE_PMD_ORDER {
            let size = PAGE_SIZE << order;
            let nr_full = ((2 << 20) / size).max(1);
            let src: Vec<Folio> = (0..nr_full)
                .map(|i| {
                    let f = mm
                        .alloc_folio(NodeId(0), Order(order), 0)
                        .map_err(ParamError::Memory)?;
                    mm.folio_fill(f, i as u64);
                    Ok(f)
                })
                .collect::<Result<_, ParamError>>()?;
            let dst: Vec<Folio> = (0..nr_full)
                .map(|_| {
                    mm.alloc_folio(NodeId(1), Order(order), 0)
                        .map_err(ParamError::Memory)
                })
                .collect::<Result<_, _>>()?;
            let measure = |n: usize| -> Vec<u64> {
                self.inner
                    .candidates
                    .iter()
                    .map(|c| {
                        let mut best = u64::MAX;
                        for _ in 0..3 {
                            let b = CopyBatch::new(mm, &dst[..n], &src[..n]);
                            let t = Instant::now();
                            let rc = match &c.kind {
                                // Declining means each folio is copied, and fenced, in its
                                // own move step.
                                Kind::Decline => (0..n).try_for_each(|i| {
                                    let r = b.copy_folio(i);
                                    pagemig::copy::store_fence();
                                    r
                                }),
                                k => copy_with(k, &b),
                            };
                            let ns = t.elapsed().as_nanos() as u64;
                            if rc.is_ok() {
                                best = best.min(ns);
                            }
                        }
                        best.saturating_mul(1 << 20) / (n * size) as u64
                    })
                    .collect()
            };
            let single = measure(1);
            let full = measure(nr_full);
            let argmin = |v: &[u64]| {
                v.iter()
                    .enumerate()
                    .min_by_key(|(_, t)| **t)
                    .map(|(i, _)| i)
                    .unwrap_or(0)
            };
            table.push(Choice {
                single: argmin(&single),
                full: argmin(&full),
                single_ns_per_mib: single,
                full_ns_per_mib: full,
            });
            for f in src.into_iter().chain(dst) {
                mm.folio_put(f);
            }
        }
        *lock(&self.inner.table) = table;
        Ok(())
    }

    /// The candidates' names (`batch`, `none`, `mtcopy:2`, ...): the engine set a learned
    /// state is keyed by.
    pub fn candidate_names(&self) -> Vec<String> {
        self.inner
            .candidates
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// Starts the folio orders in `prior` from what an earlier run learned (see
    /// [`prior`]): each one's learner begins with that run's choice in use and its costs,
    /// instead of exploring. Entries naming a candidate this auto does not have as a
    /// full-batch engine are skipped. Returns the orders applied.
    pub fn apply_prior(&self, prior: &[prior::OrderPrior]) -> usize {
        let names = self.candidate_names();
        let idx = |n: &str| names.iter().position(|m| m == n);
        let mut learned = lock(&self.inner.learned);
        let mut applied = 0;
        for o in prior {
            let Some(cur) = idx(&o.current).filter(|k| self.inner.eligible.contains(k)) else {
                continue;
            };
            if o.order >= learned.len() {
                continue;
            }
            // Only full-batch engines: the learner may settle the cheapest of them against
            // the prior's choice from the first batch.
            let costs: Vec<(usize, f64)> = o
                .costs
                .iter()
                .filter_map(|(n, &c)| idx(n).map(|k| (k, c)))
                .filter(|(k, _)| self.inner.eligible.contains(k))
                .collect();
            learned[o.order] = Learned::seeded(&names, cur, &costs, o.batches);
            applied += 1;
        }
        applied
    }

    /// What this auto has learned, to keep for the next run: the folio orders whose first
    /// rounds have settled.
    pub fn learned_state(&self) -> Vec<prior::OrderPrior> {
        let names = self.candidate_names();
        let learned = lock(&self.inner.learned);
        learned
            .iter()
            .enumerate()
            .filter_map(|(order, l)| {
                let e = l.export()?;
                Some(prior::OrderPrior {
                    order,
                    batches: e.batches,
                    current: names[e.current].clone(),
                    costs: e
                        .costs
                        .into_iter()
                        .map(|(k, c)| (names[k].clone(), c))
                        .collect(),
                })
            })
            .collect()
    }

    /// The auto engine as the core sees it.
    pub fn migrator(&self) -> Arc<dyn Migrator> {
        self.inner.clone()
    }

    /// Starts the candidates' threads and channels and registers with the core.
    pub fn register(&self, mm: &Memory, mask: ReasonMask) -> Result<(), ParamError> {
        let started = match self.attach_all() {
            Ok(s) => s,
            Err(e) => {
                self.shutdown();
                return Err(e);
            }
        };
        let rc = mm
            .offload()
            .register(self.migrator(), mask)
            .map_err(ParamError::Offload);
        // A failed registration releases only what this call started: if auto was
        // registered already, its threads serve that registration.
        if rc.is_err() && started {
            self.shutdown();
        }
        rc
    }

    /// Unregisters and releases every candidate's threads and channels.
    pub fn stop(&self, mm: &Memory) -> Result<(), ParamError> {
        self.unregister(mm)?;
        self.shutdown();
        Ok(())
    }

    /// Unregisters (waiting for copies in flight) and releases the candidates' threads and
    /// channels, but keeps what was learned, to register again: an idle auto holds no
    /// thread, and each registration starts fresh ones, as a fixed engine does when it is
    /// switched on.
    pub fn unregister(&self, mm: &Memory) -> Result<(), ParamError> {
        mm.offload()
            .unregister(&self.migrator())
            .map_err(ParamError::Offload)?;
        self.shutdown();
        Ok(())
    }

    /// Releases every candidate's threads and channels (after [`Auto::unregister`]).
    pub fn shutdown(&self) {
        for c in &self.inner.candidates {
            match &c.kind {
                Kind::Mt(d) => d.detach(),
                Kind::Dma(d, _) => d.detach(),
                _ => {}
            }
        }
    }

    /// Batches handed to each choice: (`chose_<name>`, count).
    pub fn counters(&self) -> Vec<(String, u64)> {
        self.inner
            .candidates
            .iter()
            .map(|c| {
                (
                    format!("chose_{}", c.name),
                    c.nr_chosen.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// The calibration and the decisions, as a table for people.
    pub fn explain(&self) -> String {
        let t = lock(&self.inner.table);
        let names: Vec<&str> = self
            .inner
            .candidates
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let mut s = String::from(
            "auto: copy time per MiB (µs) by folio size, for one folio / a full 512-page batch\n",
        );
        s.push_str(&format!("{:<6}", "size"));
        for n in &names {
            s.push_str(&format!(" {:>15}", n));
        }
        s.push_str("   choice (one / full)\n");
        for (order, c) in t.iter().enumerate() {
            s.push_str(&format!("{:<6}", order_label(order)));
            for k in 0..names.len() {
                s.push_str(&format!(
                    " {:>7.0}/{:<7.0}",
                    c.single_ns_per_mib[k] as f64 / 1e3,
                    c.full_ns_per_mib[k] as f64 / 1e3
                ));
            }
            s.push_str(&format!("   {} / {}\n", names[c.single], names[c.full]));
        }
        let l = lock(&self.inner.learned);
        s.push_str("\nlearned on the migrations' full batches: batch cycle per MiB (µs; the copy, then the CPU phases until the next batch's copy; mean of samples clipped at twice their median) in use or at the last visit, and batches copied; * = in use\n");
        for (order, lr) in l.iter().enumerate() {
            if lr.stats.iter().all(|st| st.n == 0) {
                continue;
            }
            s.push_str(&format!("{:<6}", order_label(order)));
            for k in 0..lr.stats.len() {
                let mark = if lr.current == Some(k) { "*" } else { " " };
                let t = lr.shown(k).unwrap_or(0.0);
                s.push_str(&format!(" {:>9.0}{mark}({:<5})", t / 1e3, lr.stats[k].n));
            }
            s.push_str(&format!("   switches {}\n", lr.switches));
            for e in &lr.events {
                s.push_str(&format!("      batch {:>6}: {}\n", e.batch, e.text));
            }
        }
        s
    }
}

/// `4K` ... `2M`: the folio size of `order`.
fn order_label(order: usize) -> String {
    let size = PAGE_SIZE << order;
    if size >= 1 << 20 {
        format!("{}M", size >> 20)
    } else {
        format!("{}K", size >> 10)
    }
}

/// A batch's dominant folio order (the one holding the most bytes) and its bytes, from the
/// sizes of at most [`Tuning::shape_samples`](tuning::Tuning::shape_samples) folios spread over it: exact for a batch of
/// one folio size (what migrations of a region of one kind make) or of at most that many
/// folios, an estimate for a larger mixed one (whose samples then go to the order most of
/// it has).
fn batch_shape(nr: usize, size_of: impl Fn(usize) -> usize) -> (usize, usize) {
    let picks = nr.min(TUNING.shape_samples);
    let mut bytes_by_order = [0usize; 10];
    for j in 0..picks {
        // One folio from each of `picks` equal strides, at an offset that moves from
        // stride to stride (by 7, coprime to the power-of-two strides of full batches),
        // so that a mix repeating with the stride's period is not read as one size.
        let (start, end) = (j * nr / picks, (j + 1) * nr / picks);
        let size = size_of(start + (j * 7) % (end - start).max(1));
        bytes_by_order[(size / PAGE_SIZE).trailing_zeros().min(9) as usize] += size;
    }
    let order = (0..10).max_by_key(|o| bytes_by_order[*o]).unwrap_or(0);
    let sampled: usize = bytes_by_order.iter().sum();
    (order, sampled * nr / picks.max(1))
}

impl Migrator for Inner {
    fn name(&self) -> &str {
        "auto"
    }

    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        if batch.is_empty() {
            return Ok(());
        }
        let (order, total_bytes) = batch_shape(batch.len(), |i| batch.size_bytes(i));
        if batch.len() == 1 && total_bytes < TUNING.small_batch_bytes {
            // A single small folio: the calibration decides, "no batch" included.
            let pick = lock(&self.table).get(order).map_or(0, |c| c.single);
            let c = &self.candidates[pick];
            c.nr_chosen.fetch_add(1, Ordering::Relaxed);
            return copy_with(&c.kind, batch);
        }
        // Full batches: the calibration copies a small, cache-hot batch, which is not what
        // a migration of cold memory sees, so the choice is learned on the real batches
        // (see `Learned`). "none" is not a candidate here: its cost shows only in the move
        // phase.
        let eligible = &self.eligible;
        let me = std::thread::current().id();
        let t = Instant::now();
        // This thread's previous batch: its cycle ends now.
        let prev = {
            let mut lc = lock(&self.last_copy);
            let i = lc.open.iter().position(|o| o.0 == me);
            i.map(|i| lc.open.swap_remove(i).1)
        };
        if let Some(p) = prev {
            let sample = (p.ok && t.duration_since(p.copy_end) <= TUNING.max_tail).then(|| {
                t.duration_since(p.start).as_nanos() as f64 * (1u64 << 20) as f64
                    / p.bytes.max(1) as f64
            });
            // A failed copy says nothing about speed: it counts as tried, without a sample.
            lock(&self.learned)[p.order].record(p.pick, sample, p.warm, eligible);
        }
        let (pick, warm) = lock(&self.learned)[order].choose(eligible);
        let c = &self.candidates[pick];
        c.nr_chosen.fetch_add(1, Ordering::Relaxed);
        let settled = {
            let mut lc = lock(&self.last_copy);
            if let Some((prev, end)) = lc.last.filter(|l| l.0 != pick) {
                lc.other_end = Some(end);
                self.candidates[prev].kind.quiesce();
            }
            lc.other_end
                .is_none_or(|e| t.duration_since(e) >= TUNING.quiet_after_other)
        };
        let rc = copy_with(&c.kind, batch);
        let end = Instant::now();
        let mut lc = lock(&self.last_copy);
        lc.last = Some((pick, end));
        if lc.open.len() == MAX_OPEN {
            lc.open.remove(0);
        }
        lc.open.push((
            me,
            Cycle {
                order,
                pick,
                warm: warm && settled,
                ok: rc.is_ok(),
                start: t,
                copy_end: end,
                bytes: total_bytes,
            },
        ));
        rc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_shape_is_exact_for_one_size_and_follows_the_bytes_of_a_mix() {
        let k4 = PAGE_SIZE;
        let m2 = PAGE_SIZE << 9;
        assert_eq!(batch_shape(512, |_| k4), (0, 512 * k4));
        assert_eq!(batch_shape(1, |_| m2), (9, m2));
        assert_eq!(batch_shape(0, |_| k4).1, 0);
        // Few folios: every one is read.
        assert_eq!(batch_shape(3, |i| [k4, m2, k4][i]), (9, m2 + 2 * k4));
        // A large mix that repeats with the sampling stride's divisors: every fourth folio
        // 64K, the rest 4K; 64K holds most bytes.
        let mix = |i: usize| if i % 4 == 0 { PAGE_SIZE << 4 } else { k4 };
        let (order, bytes) = batch_shape(512, mix);
        let exact: usize = (0..512).map(mix).sum();
        assert_eq!(order, 4);
        assert_eq!(bytes, exact);
        // An irregular mix: the estimate is close.
        let mix = |i: usize| if (i * i) % 5 == 1 { PAGE_SIZE << 4 } else { k4 };
        let (order, bytes) = batch_shape(500, mix);
        let exact: usize = (0..500).map(mix).sum();
        assert_eq!(order, 4);
        assert!(bytes.abs_diff(exact) < exact / 5, "{bytes} vs {exact}");
    }
}
