//! dcbm — the DMA Core Batch Migrator (`drivers/migrate_offload/dcbm/dcbm.c`), in the
//! newest public design:
//!
//! * channels are acquired once when offloading is switched on and released when it is
//!   switched off (so `nr_dma_chan` changes only while off);
//! * each batch claims free channels with a try-lock; if all are busy it refuses with
//!   `EBUSY` (`batches_refused`) and the batch falls back to the CPU;
//! * folios are split evenly across the claimed channels (⌊n·(i+1)/c⌋ − ⌊n·i/c⌋); with fewer
//!   folios than channels each folio is cut into one chunk per channel, so a single 2 MiB
//!   folio uses every channel; physically contiguous folios of a slice are merged into one
//!   scatter-gather descriptor;
//! * **one completion per descriptor** (a callback on only the last descriptor is the bug
//!   reviewers found with engines that complete out of order);
//! * a timeout, after which the claimed channels are terminated (`terminate_sync`): no
//!   engine writes a destination after dcbm returns;
//! * every folio whose descriptors all completed without error is marked; the rest fall
//!   back to the CPU.
//!
//! Knobs ([`ModuleParams`]): `offloading`, `nr_dma_chan` (1..=16, default 1),
//! `reason_mask`, `min_batch_bytes` (below it the batch is declined and copied by the
//! default copier on the calling CPU, where that wins), `timeout_ms`, `max_desc_bytes`
//! (the largest scatter-gather descriptor), `spin_us` (how long the submitter spins
//! before sleeping on the completion),
//! and counters `folios_migrated` (copied by the engine), `folios_failures` (left to the
//! CPU fallback), `batches_refused`, `batches_declined` and `folios_declined` (copied by
//! the default copier instead); any write resets a counter. Every folio offered lands in
//! exactly one of `folios_migrated`, `folios_failures`, `folios_declined`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::time::{Duration, Instant};

use pagemig::mm::{migrate_info, Memory, Pfn, PAGE_SIZE};
use pagemig::offload::{migrate_folios_mc_copy, CopyBatch, Migrator, ReasonMask};
use pagemig::Errno;

use crate::dmaengine::{DmaAddr, DmaChannel, DmaDevice, DmaResult};
use crate::lifecycle::{DriverResource, Lifecycle};
use crate::params::{parse_bool, parse_range, ModuleParams, ParamError};
use crate::sync::{lock, Pending};

/// `MAX_DMA_CHANNELS`.
pub const MAX_DMA_CHANNELS: usize = 16;

/// dcbm's knobs as one typed value ([`Dcbm::config`], [`Dcbm::configure`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DcbmConfig {
    /// Channels per batch (1..=16); changes only while offloading is off.
    pub nr_dma_chan: usize,
    /// Reasons this driver copies for.
    pub reason_mask: ReasonMask,
    /// Batches smaller than this are declined (copied by the default copier).
    pub min_batch_bytes: usize,
    /// Completion timeout (ms, 1..=600000).
    pub timeout_ms: u64,
    /// Largest scatter-gather descriptor (bytes, 4096..=1 GiB).
    pub max_desc_bytes: usize,
    /// How long the submitter spins before sleeping on the completion (µs, 0..=100000).
    pub spin_us: u64,
}

/// The channels a running dcbm holds, returned to their device on release.
struct Channels {
    chans: Arc<Vec<Claimable>>,
    device: Arc<dyn DmaDevice>,
}

impl DriverResource for Channels {
    fn release(self) {
        // Released after unregister: no batch holds a clone any more.
        match Arc::try_unwrap(self.chans) {
            Ok(chans) => {
                for c in chans {
                    self.device.release_channel(c.ch);
                }
            }
            Err(_) => debug_assert!(false, "a batch holds the channels after unregister"),
        }
    }
}

struct Claimable {
    ch: Arc<dyn DmaChannel>,
    busy: Mutex<()>,
}

struct Inner {
    mm: Weak<Memory>,
    device: Arc<dyn DmaDevice>,
    params: Mutex<DcbmConfig>,
    /// The channel pool and the registration.
    life: Lifecycle<Channels>,
    rotor: AtomicUsize,
    folios_migrated: AtomicU64,
    folios_failures: AtomicU64,
    batches_refused: AtomicU64,
    batches_declined: AtomicU64,
    folios_declined: AtomicU64,
}

/// The dcbm driver over one DMA device. Cheap to clone (a handle).
#[derive(Clone)]
pub struct Dcbm {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dcbm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dcbm")
            .field("params", &*lock(&self.inner.params))
            .finish()
    }
}

impl Dcbm {
    /// A driver for `mm` using `device`, offloading off.
    pub fn new(mm: &Arc<Memory>, device: Arc<dyn DmaDevice>) -> Dcbm {
        Dcbm {
            inner: Arc::new(Inner {
                mm: Arc::downgrade(mm),
                device,
                params: Mutex::new(DcbmConfig {
                    nr_dma_chan: 1,
                    reason_mask: ReasonMask::ALL,
                    min_batch_bytes: 0,
                    timeout_ms: 10_000,
                    max_desc_bytes: 2 << 20,
                    spin_us: 30,
                }),
                life: Lifecycle::new(),
                rotor: AtomicUsize::new(0),
                folios_migrated: AtomicU64::new(0),
                folios_failures: AtomicU64::new(0),
                batches_refused: AtomicU64::new(0),
                batches_declined: AtomicU64::new(0),
                folios_declined: AtomicU64::new(0),
            }),
        }
    }

    fn as_migrator(&self) -> Arc<dyn Migrator> {
        self.inner.clone()
    }

    /// The driver as the core sees it (what `offloading=1` registers).
    pub fn migrator(&self) -> Arc<dyn Migrator> {
        self.as_migrator()
    }

    /// Whether offloading is on (registered with the core).
    pub fn is_offloading(&self) -> bool {
        self.inner.life.is_offloading()
    }

    fn request_channels(&self, nr: usize) -> Result<Vec<Claimable>, ParamError> {
        let mut chans = Vec::new();
        for _ in 0..nr {
            match self.inner.device.request_channel() {
                Ok(ch) => chans.push(Claimable {
                    ch,
                    busy: Mutex::new(()),
                }),
                Err(_) => break,
            }
        }
        if chans.is_empty() {
            return Err(ParamError::Start(format!(
                "no DMA channel on {}",
                self.inner.device.name()
            )));
        }
        Ok(chans)
    }

    fn request_pool(&self) -> Result<Channels, ParamError> {
        let n = lock(&self.inner.params).nr_dma_chan;
        Ok(Channels {
            chans: Arc::new(self.request_channels(n)?),
            device: self.inner.device.clone(),
        })
    }

    /// Acquires the channels without registering, for a driver that dispatches batches
    /// to this one (the `auto` engine).
    pub fn attach(&self) -> Result<(), ParamError> {
        self.inner
            .life
            .attach("channels are held", || self.request_pool())
    }

    /// Whether channels acquired by [`Dcbm::attach`] are held.
    pub fn is_attached(&self) -> bool {
        self.inner.life.is_attached()
    }

    /// Releases channels acquired by [`Dcbm::attach`].
    pub fn detach(&self) {
        self.inner.life.detach();
    }

    fn set_offloading(&self, on: bool) -> Result<(), ParamError> {
        let mask = lock(&self.inner.params).reason_mask;
        self.inner
            .life
            .set_offloading(on, &self.inner.mm, self.as_migrator(), mask, || {
                self.request_pool()
            })
    }

    /// The knobs in force.
    pub fn config(&self) -> DcbmConfig {
        lock(&self.inner.params).clone()
    }

    /// Sets every knob at once; all are validated first, so an invalid value changes
    /// nothing.
    pub fn configure(&self, c: &DcbmConfig) -> Result<(), ParamError> {
        let bad = |name: &str, v: String, why: &str| Err(ParamError::invalid(name, &v, why));
        if !(1..=MAX_DMA_CHANNELS).contains(&c.nr_dma_chan) {
            return bad("nr_dma_chan", c.nr_dma_chan.to_string(), "must be 1..=16");
        }
        if !(1..=600_000).contains(&c.timeout_ms) {
            return bad("timeout_ms", c.timeout_ms.to_string(), "must be 1..=600000");
        }
        if !(PAGE_SIZE..=1 << 30).contains(&c.max_desc_bytes) {
            return bad(
                "max_desc_bytes",
                c.max_desc_bytes.to_string(),
                "must be 4096..=1073741824",
            );
        }
        if c.spin_us > 100_000 {
            return bad("spin_us", c.spin_us.to_string(), "must be 0..=100000");
        }
        let old = self.config();
        if self.is_offloading() && old.nr_dma_chan != c.nr_dma_chan {
            return Err(ParamError::Busy {
                name: "nr_dma_chan".into(),
                why: "offloading is on (channels are held)".into(),
            });
        }
        *lock(&self.inner.params) = c.clone();
        if self.is_offloading() && old.reason_mask != c.reason_mask {
            if let Some(mm) = self.inner.mm.upgrade() {
                mm.offload()
                    .set_reason_mask(&self.as_migrator(), c.reason_mask)
                    .map_err(ParamError::Offload)?;
            }
        }
        Ok(())
    }

    /// Channels held while offloading.
    pub fn nr_channels_held(&self) -> usize {
        self.inner
            .life
            .resource()
            .as_ref()
            .map_or(0, |p| p.chans.len())
    }

    /// Counters.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let i = &self.inner;
        vec![
            ("folios_migrated", i.folios_migrated.load(Ordering::Relaxed)),
            ("folios_failures", i.folios_failures.load(Ordering::Relaxed)),
            ("batches_refused", i.batches_refused.load(Ordering::Relaxed)),
            (
                "batches_declined",
                i.batches_declined.load(Ordering::Relaxed),
            ),
            ("folios_declined", i.folios_declined.load(Ordering::Relaxed)),
        ]
    }
}

const PARAMS: &[&str] = &[
    "offloading",
    "nr_dma_chan",
    "reason_mask",
    "min_batch_bytes",
    "timeout_ms",
    "max_desc_bytes",
    "spin_us",
    "folios_migrated",
    "folios_failures",
    "batches_refused",
    "batches_declined",
    "folios_declined",
];

impl ModuleParams for Dcbm {
    fn param_names(&self) -> &'static [&'static str] {
        PARAMS
    }

    fn param(&self, name: &str) -> Result<String, ParamError> {
        let p = lock(&self.inner.params).clone();
        let i = &self.inner;
        Ok(match name {
            "offloading" => (self.is_offloading() as u8).to_string(),
            "nr_dma_chan" => p.nr_dma_chan.to_string(),
            "reason_mask" => p.reason_mask.to_string(),
            "min_batch_bytes" => p.min_batch_bytes.to_string(),
            "timeout_ms" => p.timeout_ms.to_string(),
            "max_desc_bytes" => p.max_desc_bytes.to_string(),
            "spin_us" => p.spin_us.to_string(),
            "folios_migrated" => i.folios_migrated.load(Ordering::Relaxed).to_string(),
            "folios_failures" => i.folios_failures.load(Ordering::Relaxed).to_string(),
            "batches_refused" => i.batches_refused.load(Ordering::Relaxed).to_string(),
            "batches_declined" => i.batches_declined.load(Ordering::Relaxed).to_string(),
            "folios_declined" => i.folios_declined.load(Ordering::Relaxed).to_string(),
            _ => {
                return Err(ParamError::Unknown {
                    name: name.into(),
                    known: PARAMS.join(", "),
                })
            }
        })
    }

    fn set_param(&self, name: &str, value: &str) -> Result<(), ParamError> {
        let i = &self.inner;
        match name {
            "offloading" => return self.set_offloading(parse_bool(name, value)?),
            "nr_dma_chan" => {
                let n = parse_range(name, value, 1, MAX_DMA_CHANNELS)?;
                if self.is_offloading() {
                    return Err(ParamError::Busy {
                        name: name.into(),
                        why: "offloading is on (channels are held)".into(),
                    });
                }
                lock(&i.params).nr_dma_chan = n;
            }
            "reason_mask" => {
                let m: ReasonMask = value
                    .parse()
                    .map_err(|e| ParamError::invalid(name, value, e))?;
                lock(&i.params).reason_mask = m;
                if self.is_offloading() {
                    if let Some(mm) = i.mm.upgrade() {
                        mm.offload()
                            .set_reason_mask(&self.as_migrator(), m)
                            .map_err(ParamError::Offload)?;
                    }
                }
            }
            "min_batch_bytes" => {
                lock(&i.params).min_batch_bytes = parse_range(name, value, 0, usize::MAX)?;
            }
            "timeout_ms" => {
                lock(&i.params).timeout_ms = parse_range(name, value, 1, 600_000)? as u64
            }
            "max_desc_bytes" => {
                lock(&i.params).max_desc_bytes = parse_range(name, value, PAGE_SIZE, 1 << 30)?
            }
            "spin_us" => lock(&i.params).spin_us = parse_range(name, value, 0, 100_000)? as u64,
            "folios_migrated" => i.folios_migrated.store(0, Ordering::Relaxed),
            "folios_failures" => i.folios_failures.store(0, Ordering::Relaxed),
            "batches_refused" => i.batches_refused.store(0, Ordering::Relaxed),
            "batches_declined" => i.batches_declined.store(0, Ordering::Relaxed),
            "folios_declined" => i.folios_declined.store(0, Ordering::Relaxed),
            _ => {
                return Err(ParamError::Unknown {
                    name: name.into(),
                    known: PARAMS.join(", "),
                })
            }
        }
        Ok(())
    }
}

/// Per-batch completion state shared with the descriptors' callbacks.
struct BatchState {
    descs_left: Vec<AtomicU32>,
    failed: Vec<AtomicBool>,
    first_error: Mutex<Option<Errno>>,
    outstanding: Pending,
}

/// One planned descriptor: a byte range covering folios `[first, last]`.
struct Plan {
    chan: usize,
    dst: DmaAddr,
    src: DmaAddr,
    len: usize,
    first: usize,
    last: usize,
}

fn plan_batch(batch: &CopyBatch<'_>, nr_chan: usize, max_desc_bytes: usize) -> Vec<Plan> {
    let n = batch.len();
    let mm = batch.memory();
    let mut plans = Vec::new();
    if n < nr_chan {
        // Fewer folios than channels: one chunk of every folio per channel.
        for i in 0..n {
            let size = batch.size_bytes(i);
            for c in 0..nr_chan {
                let lo = (size * c / nr_chan) & !63;
                let hi = if c + 1 == nr_chan {
                    size
                } else {
                    (size * (c + 1) / nr_chan) & !63
                };
                if hi > lo {
                    plans.push(Plan {
                        chan: c,
                        dst: DmaAddr {
                            pfn: batch.dst(i).pfn(),
                            offset: lo,
                        },
                        src: DmaAddr {
                            pfn: batch.src(i).pfn(),
                            offset: lo,
                        },
                        len: hi - lo,
                        first: i,
                        last: i,
                    });
                }
            }
        }
        return plans;
    }
    for c in 0..nr_chan {
        let (a, b) = (n * c / nr_chan, n * (c + 1) / nr_chan);
        let mut cur: Option<Plan> = None;
        for i in a..b {
            let (d, s, size) = (batch.dst(i).pfn(), batch.src(i).pfn(), batch.size_bytes(i));
            let nr_pages = (size / PAGE_SIZE) as u64;
            let same_node = mm.node_of(d) == mm.node_of(Pfn(d.0 + nr_pages - 1));
            match cur.as_mut() {
                // Scatter-gather: both sides physically contiguous with the previous folio.
                Some(p)
                    if same_node
                        && p.len + size <= max_desc_bytes
                        && p.dst.pfn.0 + (p.len / PAGE_SIZE) as u64 == d.0
                        && p.src.pfn.0 + (p.len / PAGE_SIZE) as u64 == s.0 =>
                {
                    p.len += size;
                    p.last = i;
                }
                _ => {
                    if let Some(p) = cur.take() {
                        plans.push(p);
                    }
                    cur = Some(Plan {
                        chan: c,
                        dst: DmaAddr { pfn: d, offset: 0 },
                        src: DmaAddr { pfn: s, offset: 0 },
                        len: size,
                        first: i,
                        last: i,
                    });
                }
            }
        }
        if let Some(p) = cur.take() {
            plans.push(p);
        }
    }
    plans
}

impl Migrator for Inner {
    fn name(&self) -> &str {
        "DCBM"
    }

    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        let p = lock(&self.params).clone();
        if batch.total_bytes() < p.min_batch_bytes {
            // Declined: too small for the engine to win. Copied on this CPU instead.
            self.batches_declined.fetch_add(1, Ordering::Relaxed);
            self.folios_declined.fetch_add(n as u64, Ordering::Relaxed);
            return migrate_folios_mc_copy(batch);
        }
        let Some(pool) = self.life.resource().as_ref().map(|c| c.chans.clone()) else {
            return Err(Errno::NoDev);
        };
        // Claim free channels with a try-lock, starting at a rotating position.
        let start = self.rotor.fetch_add(1, Ordering::Relaxed);
        let want = p.nr_dma_chan.min(pool.len());
        let mut claimed = Vec::with_capacity(want);
        for k in 0..pool.len() {
            if claimed.len() == want {
                break;
            }
            let c = &pool[(start + k) % pool.len()];
            match c.busy.try_lock() {
                Ok(g) => claimed.push((c, g)),
                Err(TryLockError::Poisoned(e)) => claimed.push((c, e.into_inner())),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        if claimed.is_empty() {
            self.batches_refused.fetch_add(1, Ordering::Relaxed);
            self.folios_failures.fetch_add(n as u64, Ordering::Relaxed);
            return Err(Errno::Busy);
        }
        let nr_chan = claimed.len();
        let plans = plan_batch(batch, nr_chan, p.max_desc_bytes);
        let state = Arc::new(BatchState {
            descs_left: (0..n).map(|_| AtomicU32::new(0)).collect(),
            failed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            first_error: Mutex::new(None),
            outstanding: Pending::new(0),
        });
        for pl in &plans {
            for i in pl.first..=pl.last {
                state.descs_left[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(p.timeout_ms);
        let mut rc: Result<(), Errno> = Ok(());
        'submit: for pl in &plans {
            let ch = &claimed[pl.chan].0.ch;
            loop {
                let st = state.clone();
                let (first, last) = (pl.first, pl.last);
                // One completion per descriptor.
                let cb = Box::new(move |r: DmaResult| {
                    for i in first..=last {
                        if r != DmaResult::NoError {
                            st.failed[i].store(true, Ordering::Relaxed);
                        }
                        st.descs_left[i].fetch_sub(1, Ordering::AcqRel);
                    }
                    if let DmaResult::Failed(e) = r {
                        lock(&st.first_error).get_or_insert(e);
                    }
                    st.outstanding.done();
                });
                state.outstanding.add(1);
                match ch.prep_memcpy(pl.dst, pl.src, pl.len, cb) {
                    Ok(desc) => {
                        if ch.submit(desc).is_err() {
                            rc = Err(Errno::Io);
                            state.outstanding.done();
                            break 'submit;
                        }
                        break;
                    }
                    Err(Errno::Busy) => {
                        // Ring full: start what is queued and wait for room.
                        state.outstanding.done();
                        ch.issue_pending();
                        let now = state.outstanding.left();
                        if !state
                            .outstanding
                            .wait_at_most(now.saturating_sub(1), Some(deadline))
                        {
                            rc = Err(Errno::TimedOut);
                            break 'submit;
                        }
                    }
                    Err(e) => {
                        state.outstanding.done();
                        rc = Err(e);
                        break 'submit;
                    }
                }
            }
        }
        for (c, _) in &claimed {
            c.ch.issue_pending();
        }
        // Spin (yielding) for a while before sleeping: a wake-up costs tens of
        // microseconds in a VM, as much as copying 256 KiB.
        if !state
            .outstanding
            .wait_at_most_spin(0, Some(deadline), Duration::from_micros(p.spin_us))
        {
            rc = Err(Errno::TimedOut);
        }
        if rc.is_err() {
            // Nothing may write a destination after we return.
            for (c, _) in &claimed {
                c.ch.terminate_sync();
            }
        }
        drop(claimed);
        let mut nr_marked = 0;
        for i in 0..n {
            if state.descs_left[i].load(Ordering::Acquire) == 0
                && !state.failed[i].load(Ordering::Acquire)
            {
                batch.mark_copied(i);
                nr_marked += 1;
            }
        }
        self.folios_migrated
            .fetch_add(nr_marked as u64, Ordering::Relaxed);
        self.folios_failures
            .fetch_add((n - nr_marked) as u64, Ordering::Relaxed);
        debug_assert!((0..n).all(|i| {
            let marked = batch.memory().folio(batch.dst(i)).migrate_info()
                & migrate_info::CONTENT_COPIED
                != 0;
            !marked || state.descs_left[i].load(Ordering::Relaxed) == 0
        }));
        if rc.is_ok() {
            if let Some(e) = *lock(&state.first_error) {
                rc = Err(e);
            }
        }
        rc
    }
}
