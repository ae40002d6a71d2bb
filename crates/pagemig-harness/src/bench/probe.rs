//! The copy-limit probe: this machine's single-thread (and all-thread) copy bandwidth with
//! the copy primitive the engines use, sampled between the runs so that every engine is
//! compared with the limit measured beside it.

#![forbid(unsafe_code)]

use std::time::Instant;

use pagemig::mm::{Folio, Memory, NodeId, Order, HPAGE_PMD_ORDER};

use super::BenchError;
use crate::stats::median;

/// Source and destination 2 MiB folios for measuring the single-thread copy limit with
/// the copy primitive the engines use.
pub struct CopyLimitProbe {
    pub(crate) src: Vec<Folio>,
    pub(crate) dst: Vec<Folio>,
    pub(crate) samples: Vec<f64>,
    /// Samples with every CPU copying its share at once, keyed by thread count.
    pub(crate) samples_mt: std::collections::BTreeMap<usize, Vec<f64>>,
}

impl CopyLimitProbe {
    /// Allocates `total` bytes of 2 MiB folios on `from` (filled) and `to`.
    pub fn new(
        mm: &Memory,
        total: usize,
        from: NodeId,
        to: NodeId,
    ) -> Result<CopyLimitProbe, BenchError> {
        let n = (total / (2 << 20)).max(1);
        let mut src = Vec::with_capacity(n);
        let mut dst = Vec::with_capacity(n);
        for i in 0..n {
            let s = mm.alloc_folio(from, Order(HPAGE_PMD_ORDER), 0)?;
            mm.folio_fill(s, i as u64);
            src.push(s);
            dst.push(mm.alloc_folio(to, Order(HPAGE_PMD_ORDER), 0)?);
        }
        Ok(CopyLimitProbe {
            src,
            dst,
            samples: Vec::new(),
            samples_mt: Default::default(),
        })
    }

    /// One pass with `t` threads, each copying a contiguous share of the pairs at once.
    pub fn sample_threads(&mut self, mm: &Memory, t: usize) -> f64 {
        if t <= 1 {
            return self.sample(mm);
        }
        let n = self.src.len();
        let t0 = Instant::now();
        std::thread::scope(|sc| {
            for j in 0..t {
                let (a, b) = (n * j / t, n * (j + 1) / t);
                let (src, dst) = (&self.src[a..b], &self.dst[a..b]);
                sc.spawn(move || {
                    for (d, s) in dst.iter().zip(src) {
                        mm.folio_mc_copy(*d, *s)
                            .expect("fresh folios are not poisoned");
                    }
                    pagemig::copy::store_fence();
                });
            }
        });
        let gbps = (n * (2 << 20)) as f64 / t0.elapsed().as_secs_f64() / 1e9;
        self.samples_mt.entry(t).or_default().push(gbps);
        gbps
    }

    /// Median limit with `t` threads.
    pub fn limit_threads(&self, t: usize) -> f64 {
        if t <= 1 {
            return self.limit();
        }
        self.samples_mt.get(&t).map_or(0.0, |v| median(v))
    }

    /// One pass: copies every pair once and records GB/s.
    pub fn sample(&mut self, mm: &Memory) -> f64 {
        let t = Instant::now();
        for (d, s) in self.dst.iter().zip(&self.src) {
            mm.folio_mc_copy(*d, *s)
                .expect("fresh folios are not poisoned");
        }
        pagemig::copy::store_fence();
        let gbps = (self.src.len() * (2 << 20)) as f64 / t.elapsed().as_secs_f64() / 1e9;
        self.samples.push(gbps);
        gbps
    }

    /// The median of all passes: the limit the results are compared with.
    pub fn limit(&self) -> f64 {
        median(&self.samples)
    }

    /// Frees the folios.
    pub fn release(self, mm: &Memory) {
        for f in self.src.into_iter().chain(self.dst) {
            mm.folio_put(f);
        }
    }
}
