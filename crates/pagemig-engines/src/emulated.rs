//! An emulated DMA copy engine that behaves like real copy hardware: each channel is served
//! by engine threads pulling descriptors from a ring of bounded depth; descriptors are
//! started only by `issue_pending`; each completes with its own result; with several
//! engines per channel (as a DSA work queue served by several engines) or with the
//! `reorder` fault, completions come out of order.
//!
//! Programmable faults ([`DmaFaults`]): a descriptor fails, a descriptor stalls (past a
//! driver's timeout), no channel is available, completions are reordered and delayed.

use pagemig::sync::IgnorePoison as _;
use pagemig::sys::own_threads::{self, OwnThread};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use pagemig::mm::Memory;
use pagemig::Errno;

use crate::dmaengine::{Callback, Cookie, Descriptor, DmaAddr, DmaChannel, DmaDevice, DmaResult};
use crate::sync::lock;

/// Shape of the emulated device.
#[derive(Debug, Clone)]
pub struct EmulatedConfig {
    /// Channels the device exposes.
    pub nr_channels: usize,
    /// Descriptors outstanding per channel.
    pub ring_depth: usize,
    /// Engine threads serving each channel (more than one completes out of order).
    pub engines_per_channel: usize,
    /// How long an idle engine spins before it sleeps.
    pub spin_us: u64,
}

impl Default for EmulatedConfig {
    fn default() -> Self {
        EmulatedConfig {
            nr_channels: 16,
            ring_depth: 1024,
            engines_per_channel: 1,
            spin_us: 300,
        }
    }
}

/// Fault injection for the emulated device; every field can change at any time.
#[derive(Debug, Default)]
pub struct DmaFaults {
    /// Every n-th descriptor (device-wide) fails with `EIO` without writing; 0 = never.
    pub fail_every: AtomicU64,
    /// Every n-th descriptor stalls for `stall_ms` (aborted by `terminate_sync`); 0 = never.
    pub stall_every: AtomicU64,
    /// How long a stalled descriptor stalls.
    pub stall_ms: AtomicU64,
    /// `request_channel` fails with `ENODEV`.
    pub no_channel: AtomicBool,
    /// Non-zero: engines take descriptors in pairs and complete the second first, the first
    /// after this many microseconds.
    pub reorder_delay_us: AtomicU64,
    /// Descriptors executed successfully.
    pub nr_done: AtomicU64,
    /// Descriptors failed by injection or by a poisoned source.
    pub nr_failed: AtomicU64,
    /// Descriptors that stalled.
    pub nr_stalled: AtomicU64,
    /// Descriptors aborted by `terminate_sync`.
    pub nr_aborted: AtomicU64,
    /// Descriptors started, device-wide (the n of `fail_every` / `stall_every`).
    seq: AtomicU64,
}

struct ChanState {
    submitted: Vec<Descriptor>,
    ring: VecDeque<Descriptor>,
    /// prepared and not yet completed
    outstanding: usize,
    /// being executed by an engine
    running: usize,
    nr_sleeping: usize,
    aborting: bool,
    stop: bool,
}

struct EmuChannel {
    id: usize,
    ring_depth: usize,
    spin: Duration,
    state: Mutex<ChanState>,
    /// engines wait here for work; terminate waits here for `running == 0`
    cond: Condvar,
    ring_len: AtomicUsize,
    cookie: AtomicU64,
    engines: Mutex<Vec<OwnThread<()>>>,
    mm: Weak<Memory>,
    faults: Arc<DmaFaults>,
    /// Set by [`EmulatedDmaDevice::quiesce`]: idle engines sleep without spinning; cleared
    /// when work is issued.
    nap: AtomicBool,
}

struct DevInner {
    name: String,
    channels: Vec<Arc<EmuChannel>>,
    in_use: Mutex<Vec<bool>>,
    config: EmulatedConfig,
    faults: Arc<DmaFaults>,
}

/// The emulated device. Cheap to clone.
#[derive(Clone)]
pub struct EmulatedDmaDevice {
    inner: Arc<DevInner>,
}

impl EmulatedDmaDevice {
    /// A device copying within `mm`.
    pub fn new(mm: &Arc<Memory>, config: EmulatedConfig) -> Arc<EmulatedDmaDevice> {
        let faults = Arc::new(DmaFaults::default());
        let inner = Arc::new(DevInner {
            name: "emulated-dma".into(),
            channels: (0..config.nr_channels)
                .map(|id| {
                    Arc::new(EmuChannel {
                        id,
                        ring_depth: config.ring_depth,
                        spin: Duration::from_micros(config.spin_us),
                        state: Mutex::new(ChanState {
                            submitted: Vec::new(),
                            ring: VecDeque::new(),
                            outstanding: 0,
                            running: 0,
                            nr_sleeping: 0,
                            aborting: false,
                            stop: false,
                        }),
                        cond: Condvar::new(),
                        ring_len: AtomicUsize::new(0),
                        cookie: AtomicU64::new(0),
                        engines: Mutex::new(Vec::new()),
                        mm: Arc::downgrade(mm),
                        faults: faults.clone(),
                        nap: AtomicBool::new(false),
                    })
                })
                .collect(),
            in_use: Mutex::new(vec![false; config.nr_channels]),
            config,
            faults,
        });
        Arc::new(EmulatedDmaDevice { inner })
    }

    /// The fault-injection controls.
    pub fn faults(&self) -> &Arc<DmaFaults> {
        &self.inner.faults
    }

    /// Makes idle engines sleep now rather than spin first (a hint, like runtime PM's
    /// idle): for a caller about to copy with another engine on the same CPUs. Issuing
    /// work wakes them as usual.
    pub fn quiesce(&self) {
        for c in &self.inner.channels {
            c.nap.store(true, Ordering::Release);
        }
    }

    /// Channels currently requested.
    pub fn nr_channels_in_use(&self) -> usize {
        lock(&self.inner.in_use).iter().filter(|b| **b).count()
    }
}

impl DmaDevice for EmulatedDmaDevice {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn nr_channels(&self) -> usize {
        self.inner.channels.len()
    }
    fn request_channel(&self) -> Result<Arc<dyn DmaChannel>, Errno> {
        if self.inner.faults.no_channel.load(Ordering::SeqCst) {
            return Err(Errno::NoDev);
        }
        let mut in_use = lock(&self.inner.in_use);
        let Some(i) = in_use.iter().position(|b| !*b) else {
            return Err(Errno::NoDev);
        };
        in_use[i] = true;
        let ch = self.inner.channels[i].clone();
        lock(&ch.state).stop = false;
        {
            let mut engines = lock(&ch.engines);
            for e in 0..self.inner.config.engines_per_channel.max(1) {
                let c = ch.clone();
                let b = std::thread::Builder::new().name(format!("dma0chan{i}/{e}"));
                let h = own_threads::spawn(b, move || engine(c)).map_err(|_| Errno::NoMem)?;
                engines.push(h);
            }
        }
        Ok(ch)
    }
    fn release_channel(&self, ch: Arc<dyn DmaChannel>) {
        let i = ch.id();
        let Some(c) = self.inner.channels.get(i) else {
            return;
        };
        c.terminate_sync();
        {
            let mut st = lock(&c.state);
            st.stop = true;
            c.cond.notify_all();
        }
        for h in lock(&c.engines).drain(..) {
            let _ = h.join();
        }
        lock(&self.inner.in_use)[i] = false;
    }
}

impl Drop for DevInner {
    fn drop(&mut self) {
        // Engines of channels never released exit on their own.
        for c in &self.channels {
            let mut st = lock(&c.state);
            st.stop = true;
            c.cond.notify_all();
        }
    }
}

impl DmaChannel for EmuChannel {
    fn id(&self) -> usize {
        self.id
    }
    fn prep_memcpy(
        &self,
        dst: DmaAddr,
        src: DmaAddr,
        len: usize,
        callback: Callback,
    ) -> Result<Descriptor, Errno> {
        let mut st = lock(&self.state);
        if st.outstanding >= self.ring_depth {
            return Err(Errno::Busy);
        }
        st.outstanding += 1;
        Ok(Descriptor {
            dst,
            src,
            len,
            callback: Some(callback),
        })
    }
    fn submit(&self, desc: Descriptor) -> Result<Cookie, Errno> {
        lock(&self.state).submitted.push(desc);
        Ok(self.cookie.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn issue_pending(&self) {
        self.nap.store(false, Ordering::Release);
        let mut st = lock(&self.state);
        let moved: Vec<Descriptor> = st.submitted.drain(..).collect();
        st.ring.extend(moved);
        self.ring_len.store(st.ring.len(), Ordering::Release);
        if st.nr_sleeping > 0 {
            self.cond.notify_all();
        }
    }
    fn terminate_sync(&self) {
        let aborted: Vec<Descriptor> = {
            let mut st = lock(&self.state);
            st.aborting = true;
            let mut v: Vec<Descriptor> = st.submitted.drain(..).collect();
            v.extend(st.ring.drain(..));
            self.ring_len.store(0, Ordering::Release);
            st.outstanding -= v.len();
            self.cond.notify_all();
            v
        };
        self.faults
            .nr_aborted
            .fetch_add(aborted.len() as u64, Ordering::Relaxed);
        for mut d in aborted {
            if let Some(cb) = d.callback.take() {
                cb(DmaResult::Aborted);
            }
        }
        let mut st = lock(&self.state);
        while st.running > 0 {
            st = self.cond.wait(st).ignore_poison();
        }
        st.aborting = false;
    }
    fn ring_depth(&self) -> usize {
        self.ring_depth
    }
}

/// Executes one descriptor: copies (unless a fault says otherwise) and completes it.
fn execute(ch: &EmuChannel, mut d: Descriptor, delay: Duration) {
    let f = &ch.faults;
    let n = f.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let stall_every = f.stall_every.load(Ordering::Relaxed);
    let fail_every = f.fail_every.load(Ordering::Relaxed);
    let mut result = DmaResult::NoError;
    if stall_every > 0 && n % stall_every == 0 {
        f.nr_stalled.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + Duration::from_millis(f.stall_ms.load(Ordering::Relaxed));
        let mut st = lock(&ch.state);
        while !st.aborting && Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            st = ch.cond.wait_timeout(st, left).ignore_poison().0;
        }
        if st.aborting {
            result = DmaResult::Aborted;
        }
    }
    if result == DmaResult::NoError && fail_every > 0 && n % fail_every == 0 {
        result = DmaResult::Failed(Errno::Io);
    }
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    if result == DmaResult::NoError {
        result = match ch.mm.upgrade() {
            Some(mm) => match mm.copy_phys(d.dst.pfn, d.dst.offset, d.src.pfn, d.src.offset, d.len)
            {
                Ok(()) => DmaResult::NoError,
                Err(e) => DmaResult::Failed(e),
            },
            None => DmaResult::Failed(Errno::Fault),
        };
        pagemig::copy::store_fence();
    }
    match result {
        DmaResult::NoError => f.nr_done.fetch_add(1, Ordering::Relaxed),
        DmaResult::Failed(_) => f.nr_failed.fetch_add(1, Ordering::Relaxed),
        DmaResult::Aborted => f.nr_aborted.fetch_add(1, Ordering::Relaxed),
    };
    if let Some(cb) = d.callback.take() {
        cb(result);
    }
}

fn engine(ch: Arc<EmuChannel>) {
    loop {
        // Spin (yielding) for a while before sleeping: batches come back to back.
        let until = Instant::now() + ch.spin;
        while ch.ring_len.load(Ordering::Acquire) == 0
            && Instant::now() < until
            && !ch.nap.load(Ordering::Acquire)
        {
            std::thread::yield_now();
        }
        let reorder = Duration::from_micros(ch.faults.reorder_delay_us.load(Ordering::Relaxed));
        let batch: Vec<Descriptor> = {
            let mut st = lock(&ch.state);
            loop {
                if !st.ring.is_empty() && !st.aborting {
                    break;
                }
                if st.stop {
                    return;
                }
                st.nr_sleeping += 1;
                st = ch.cond.wait(st).ignore_poison();
                st.nr_sleeping -= 1;
            }
            let take = if reorder.is_zero() { 1 } else { 2 };
            let v: Vec<Descriptor> = (0..take).filter_map(|_| st.ring.pop_front()).collect();
            st.running += v.len();
            ch.ring_len.store(st.ring.len(), Ordering::Release);
            v
        };
        let nr = batch.len();
        if reorder.is_zero() || nr == 1 {
            for d in batch {
                execute(&ch, d, Duration::ZERO);
            }
        } else {
            let mut it = batch.into_iter();
            let first = it.next().expect("two descriptors");
            let second = it.next().expect("two descriptors");
            execute(&ch, second, Duration::ZERO);
            execute(&ch, first, reorder);
        }
        let mut st = lock(&ch.state);
        st.running -= nr;
        st.outstanding -= nr;
        if st.running == 0 && st.aborting {
            ch.cond.notify_all();
        }
    }
}
