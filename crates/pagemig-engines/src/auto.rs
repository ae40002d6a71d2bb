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
use std::sync::{Arc, Mutex, Weak};
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

struct Inner {
    mm: Weak<Memory>,
    candidates: Vec<Candidate>,
    /// Indexed by folio order.
    table: Mutex<Vec<Choice>>,
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
        let auto = Auto {
            inner: Arc::new(Inner {
                mm: Arc::downgrade(mm),
                candidates,
                table: Mutex::new(Vec::new()),
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
        mm.offload()
            .unregister(&self.migrator())
            .map_err(ParamError::Offload)?;
        for c in &self.inner.candidates {
            match &c.kind {
                Kind::Mt(d) => d.detach(),
                Kind::Dma(d) => d.detach(),
                _ => {}
            }
        }
        Ok(())
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
        let pick = {
            let t = lock(&self.table);
            match t.get(order) {
                Some(c) if batch.len() == 1 => c.single,
                Some(c) => c.full,
                None => 0,
            }
        };
        let c = &self.candidates[pick];
        c.nr_chosen.fetch_add(1, Ordering::Relaxed);
        let _ = &self.mm;
        copy_with(&c.kind, batch)
    }
}
