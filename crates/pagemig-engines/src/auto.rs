//! `auto` — picks, per batch, the copy engine and width that a short calibration on this
//! machine found fastest for the batch's folio size, or declines the batch (every folio
//! then copied inside its own move step) where that wins. The series' reviewers left "the
//! best batch size / engine on given hardware" open; this answers it by measuring.
//!
//! Candidates: the default copier (`batch`), `none` (decline), `mtcopy:W` for W in
//! 2..=CPUs, and `dcbm:C` for C in 1..=CPUs on the emulated provider. Calibration copies a
//! full batch (512 base pages) of each folio size, and a single folio, with every
//! candidate, three times, and keeps the best time. Decisions are counted by choice
//! (`chose_*` counters) and explained by [`Auto::explain`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pagemig::mm::{Folio, Memory, NodeId, Order, HPAGE_PMD_ORDER, PAGE_SIZE};
use pagemig::offload::{migrate_folios_mc_copy, CopyBatch, Migrator, ReasonMask};
use pagemig::Errno;

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
    Dma(Dcbm),
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

/// Batches a candidate copies before its learned time counts: the first warms it up (its
/// threads may be asleep) and is not counted.
const EXPLORE: u32 = 4;

/// Single-folio batches smaller than this follow the start-up calibration.
const SMALL_BATCH_BYTES: usize = 256 << 10;

struct Inner {
    candidates: Vec<Candidate>,
    /// Indexed by folio order.
    table: Mutex<Vec<Choice>>,
    /// Learned on real batches, by folio order and candidate: (mean ns per MiB, samples).
    learned: Mutex<Vec<Vec<(f64, u32)>>>,
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
        Kind::Dma(d) => d.migrator().offload_copy(batch),
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
            let d = Dcbm::new(mm, dev);
            d.set_param("nr_dma_chan", &c.to_string())?;
            d.attach()?;
            candidates.push(Candidate {
                name: format!("dcbm:{c}"),
                kind: Kind::Dma(d),
                nr_chosen: AtomicU64::new(0),
            });
        }
        let nr = candidates.len();
        let auto = Auto {
            inner: Arc::new(Inner {
                candidates,
                table: Mutex::new(Vec::new()),
                learned: Mutex::new(vec![vec![(0.0, 0); nr]; 10]),
            }),
        };
        auto.calibrate(mm)?;
        Ok(auto)
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
                        .map_err(|e| ParamError::Start(e.to_string()))?;
                    mm.folio_fill(f, i as u64);
                    Ok(f)
                })
                .collect::<Result<_, ParamError>>()?;
            let dst: Vec<Folio> = (0..nr_full)
                .map(|_| {
                    mm.alloc_folio(NodeId(1), Order(order), 0)
                        .map_err(|e| ParamError::Start(e.to_string()))
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

    /// The auto engine as the core sees it.
    pub fn migrator(&self) -> Arc<dyn Migrator> {
        self.inner.clone()
    }

    /// Registers with the core.
    pub fn register(&self, mm: &Memory, mask: ReasonMask) -> Result<(), ParamError> {
        mm.offload()
            .register(self.migrator(), mask)
            .map_err(ParamError::Offload)
    }

    /// Unregisters and releases every candidate's threads and channels.
    pub fn stop(&self, mm: &Memory) -> Result<(), ParamError> {
        self.unregister(mm)?;
        self.shutdown();
        Ok(())
    }

    /// Unregisters but keeps the candidates and what was learned, to register again.
    pub fn unregister(&self, mm: &Memory) -> Result<(), ParamError> {
        mm.offload()
            .unregister(&self.migrator())
            .map_err(ParamError::Offload)?;
        Ok(())
    }

    /// Releases every candidate's threads and channels (after [`Auto::unregister`]).
    pub fn shutdown(&self) {
        for c in &self.inner.candidates {
            match &c.kind {
                Kind::Mt(d) => d.detach(),
                Kind::Dma(d) => d.detach(),
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
            let size = PAGE_SIZE << order;
            let label = if size >= 1 << 20 {
                format!("{}M", size >> 20)
            } else {
                format!("{}K", size >> 10)
            };
            s.push_str(&format!("{label:<6}"));
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
        s.push_str("\nlearned on the migrations' full batches: mean copy time per MiB (µs) and samples; * = in use\n");
        for (order, row) in l.iter().enumerate() {
            if row.iter().all(|(_, n)| *n == 0) {
                continue;
            }
            let size = PAGE_SIZE << order;
            let label = if size >= 1 << 20 {
                format!("{}M", size >> 20)
            } else {
                format!("{}K", size >> 10)
            };
            let best = (0..row.len())
                .filter(|&k| row[k].1 >= EXPLORE)
                .min_by(|&a, &b| row[a].0.total_cmp(&row[b].0));
            s.push_str(&format!("{label:<6}"));
            for (k, (t, n)) in row.iter().enumerate() {
                let mark = if Some(k) == best { "*" } else { " " };
                s.push_str(&format!(" {:>9.0}{mark}({:<5})", t / 1e3, n));
            }
            s.push('\n');
        }
        s
    }
}

impl Migrator for Inner {
    fn name(&self) -> &str {
        "auto"
    }

    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        if batch.is_empty() {
            return Ok(());
        }
        // The batch's dominant folio order: the one holding the most bytes.
        let mut bytes_by_order = [0usize; 10];
        for i in 0..batch.len() {
            let size = batch.size_bytes(i);
            bytes_by_order[(size / PAGE_SIZE).trailing_zeros().min(9) as usize] += size;
        }
        let order = (0..10).max_by_key(|o| bytes_by_order[*o]).unwrap_or(0);
        if batch.len() == 1 && batch.total_bytes() < SMALL_BATCH_BYTES {
            // A single small folio: the calibration decides, "no batch" included.
            let pick = lock(&self.table).get(order).map_or(0, |c| c.single);
            let c = &self.candidates[pick];
            c.nr_chosen.fetch_add(1, Ordering::Relaxed);
            return copy_with(&c.kind, batch);
        }
        // Full batches: the calibration copies a small, cache-hot batch, which is not what
        // a migration of cold memory sees, so the choice is learned on the real batches:
        // every candidate (but "none", whose cost shows only in the move phase) is tried
        // EXPLORE times per folio order, then the fastest so far is used.
        let pick = {
            let l = lock(&self.learned);
            let row = &l[order];
            let eligible = (0..self.candidates.len())
                .filter(|&k| !matches!(self.candidates[k].kind, Kind::Decline));
            match eligible.clone().find(|&k| row[k].1 < EXPLORE) {
                Some(k) => k,
                None => eligible
                    .min_by(|&a, &b| row[a].0.total_cmp(&row[b].0))
                    .unwrap_or(0),
            }
        };
        let c = &self.candidates[pick];
        c.nr_chosen.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let rc = copy_with(&c.kind, batch);
        let ns_per_mib =
            t.elapsed().as_nanos() as f64 * (1u64 << 20) as f64 / batch.total_bytes().max(1) as f64;
        let mut l = lock(&self.learned);
        let e = &mut l[order][pick];
        e.0 = match e.1 {
            0 => 0.0,                                                    // warm-up batch: not counted
            1 => ns_per_mib,                                             // first counted sample
            n if n < EXPLORE => e.0 + (ns_per_mib - e.0) / f64::from(n), // running mean
            _ => e.0 + (ns_per_mib - e.0) / 8.0, // then a slow moving average
        };
        e.1 = e.1.saturating_add(1);
        rc
    }
}
