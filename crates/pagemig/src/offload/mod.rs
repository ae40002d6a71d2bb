//! The copy-offload framework — the analogue of the series' `mm/migrate_copy_offload.c`
//! and `include/linux/migrate_copy_offload.h` (v6): the [`Migrator`] trait, the registry
//! with one active migrator, the gate (`migrate_offload_enabled`, off by default), the
//! runtime reason mask, the SRCU-protected dispatch, and the default copier
//! [`migrate_folios_mc_copy`].

#![forbid(unsafe_code)]

mod reason_mask;
mod srcu;

pub use reason_mask::{ReasonMask, ReasonMaskError};

use std::fmt;

use crate::migrate_mode::Reason;
use crate::mm::{Folio, Memory};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use crate::sync::model::{self, AtomicBool, AtomicU32, Mutex, Ordering};
use crate::Errno;

impl Memory {
    /// The copy-offload registry of this memory (the kernel has one per system).
    pub fn offload(&self) -> &Registry {
        self.offload_slot
            .get_or_init(|| Box::new(Registry::new()))
            .downcast_ref()
            .expect("the offload slot holds the registry")
    }
}

/// `MIGRATOR_NAME_LEN`.
pub const MIGRATOR_NAME_LEN: usize = 32;

/// The batch handed to a migrator: destination and source folios paired by position
/// (`dst_list`, `src_list`, `folio_cnt`).
///
/// A migrator copies through the safe helpers here (or [`Memory::copy_phys`]) and calls
/// [`CopyBatch::mark_copied`] for each destination right after its own copy succeeded.
/// Any destination left unmarked is copied on the CPU in the move phase.
pub struct CopyBatch<'a> {
    mm: &'a Memory,
    dst: &'a [Folio],
    src: &'a [Folio],
}

impl fmt::Debug for CopyBatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyBatch")
            .field("nr_folios", &self.len())
            .finish()
    }
}

impl<'a> CopyBatch<'a> {
    /// A batch over paired lists (both the same length).
    pub fn new(mm: &'a Memory, dst: &'a [Folio], src: &'a [Folio]) -> CopyBatch<'a> {
        assert_eq!(dst.len(), src.len(), "dst and src lists differ in length");
        CopyBatch { mm, dst, src }
    }
    /// The memory the folios live in.
    pub fn memory(&self) -> &'a Memory {
        self.mm
    }
    /// `folio_cnt`.
    pub fn len(&self) -> usize {
        self.src.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }
    /// Destination folio `i`.
    pub fn dst(&self, i: usize) -> Folio {
        self.dst[i]
    }
    /// Source folio `i`.
    pub fn src(&self, i: usize) -> Folio {
        self.src[i]
    }
    /// Size of pair `i` in bytes.
    pub fn size_bytes(&self, i: usize) -> usize {
        self.mm.folio(self.src[i]).size_bytes()
    }
    /// Total bytes in the batch.
    pub fn total_bytes(&self) -> usize {
        (0..self.len()).map(|i| self.size_bytes(i)).sum()
    }
    /// Copies bytes `[off, off + len)` of pair `i` (machine-check safe). Streaming stores:
    /// a driver whose worker threads copy calls [`crate::copy::store_fence`] in each worker
    /// before signalling completion.
    pub fn copy_range(&self, i: usize, off: usize, len: usize) -> Result<(), Errno> {
        self.mm.copy_folio_range(self.dst[i], self.src[i], off, len)
    }
    /// Copies all of pair `i` (`folio_mc_copy`).
    pub fn copy_folio(&self, i: usize) -> Result<(), Errno> {
        self.mm.folio_mc_copy(self.dst[i], self.src[i])
    }
    /// Sets `FOLIO_CONTENT_COPIED` on destination `i`.
    pub fn mark_copied(&self, i: usize) {
        self.mm.folio(self.dst[i]).mark_content_copied();
    }
}

/// A copy-offload driver (`struct migrator`).
///
/// The registry holds an `Arc` of the migrator while it is registered (the owner
/// reference: the driver cannot go away under a running copy).
pub trait Migrator: Send + Sync {
    /// The name (at most [`MIGRATOR_NAME_LEN`] bytes).
    fn name(&self) -> &str;
    /// `offload_copy(dst_list, src_list, folio_cnt)`: copy the batch, marking each
    /// destination copied right after its own copy. May block. The return value is only
    /// informative: the core ignores it and trusts the marks alone.
    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno>;
}

impl fmt::Debug for dyn Migrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrator")
            .field("name", &self.name())
            .finish()
    }
}

/// `migrate_folios_mc_copy()`: the built-in batch copier. Walks the lists in lockstep,
/// copies each pair with `folio_mc_copy`, marks each destination right after its copy, and
/// stops at the first error (the unmarked rest falls back to the per-folio copy).
pub fn migrate_folios_mc_copy(batch: &CopyBatch<'_>) -> Result<(), Errno> {
    let mut rc = Ok(());
    for i in 0..batch.len() {
        if let Err(e) = batch.copy_folio(i) {
            rc = Err(e);
            break;
        }
        batch.mark_copied(i);
    }
    // One fence for the whole batch: the copies stream back to back.
    crate::copy::store_fence();
    rc
}

/// The built-in copier as a registrable migrator: "the series with no driver".
#[derive(Debug, Default)]
pub struct DefaultCopier;

impl Migrator for DefaultCopier {
    fn name(&self) -> &str {
        "mc_copy"
    }
    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        migrate_folios_mc_copy(batch)
    }
}

/// The pipelined batch copy, **beyond the series** and off by default: the batch is
/// still unmapped and flushed once, but copied in sub-batches that grow from
/// `first_sub_batch_bytes` (doubling each time), one migrator call each, and each
/// sub-batch is moved as soon as its copy is done while a helper thread copies the next
/// ones. The first folio of a batch is usable after the unmap, the flush and one small
/// copy instead of after the whole batch's copy. DESIGN.md ("The pipelined batch copy").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Bytes in the first sub-batch (at least one folio); later ones double, up to 256 KiB.
    pub first_sub_batch_bytes: usize,
    /// `false` (the default): the migrating thread copies (through the migrator, with the
    /// engine's own threads) and moves each sub-batch in turn. `true`: a helper thread
    /// copies the next sub-batches while the migrating thread moves the ones done, so the
    /// copy of sub-batch k+1 overlaps the move of sub-batch k. On the two-CPU development
    /// machine the overlap costs more than it hides (DESIGN.md).
    pub overlap: bool,
}

impl PipelineConfig {
    /// 64 KiB: sixteen 4K folios, or one folio of any larger size.
    pub const DEFAULT_FIRST_SUB_BATCH_BYTES: usize = 64 << 10;
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            first_sub_batch_bytes: Self::DEFAULT_FIRST_SUB_BATCH_BYTES,
            overlap: false,
        }
    }
}

/// Errors of registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffloadError {
    /// Another migrator is active (`EBUSY`).
    #[error("migrator {active:?} is already registered")]
    Busy {
        /// the active one's name
        active: String,
    },
    /// The migrator is not the active one, or its name is invalid (`EINVAL`).
    #[error("invalid migrator: {0}")]
    Invalid(String),
}

impl OffloadError {
    /// The errno the kernel returns.
    pub fn errno(&self) -> Errno {
        match self {
            OffloadError::Busy { .. } => Errno::Busy,
            OffloadError::Invalid(_) => Errno::Inval,
        }
    }
}

/// Counters of the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Batches handed to a migrator (or to the built-in copier after an unregister).
    pub nr_batches: u64,
    /// Folios in those batches.
    pub nr_folios_offered: u64,
}

/// The registry: one active migrator, a gate, a reason mask and the dispatch.
///
/// The dispatch is protected as the series protects its static call, with SRCU: every
/// batch copy holds a read section for the whole call, and reads the dispatch inside it.
/// Unregister, under the registration mutex, closes the gate, clears the mask and resets
/// the dispatch to the built-in copier; it drops the mutex and only then waits for the
/// read sections that may still be in the driver (`synchronize_srcu`), and gives the owner
/// reference back. Readers never wait: a batch that starts during that wait runs the
/// built-in copier, and a driver whose copy re-enters the registry's read side (a nested
/// section) does not deadlock.
pub struct Registry {
    /// `migrate_offload_enabled` (a static key in the kernel).
    enabled: AtomicBool,
    reason_mask: AtomicU32,
    /// `None`: the built-in `migrate_folios_mc_copy` (the static call's target). The
    /// mutex is held only to read or swap the pointer, never across a copy.
    dispatch: Mutex<Option<Arc<dyn Migrator>>>,
    /// `migrate_offload_srcu`.
    srcu: srcu::Srcu,
    /// The registration mutex.
    reg_lock: Mutex<()>,
    nr_batches: AtomicU64,
    nr_folios_offered: AtomicU64,
    /// [`PipelineConfig::first_sub_batch_bytes`]; 0: the series' unpipelined path.
    pipeline_first_bytes: AtomicUsize,
    /// [`PipelineConfig::overlap`].
    pipeline_overlap: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("enabled", &self.enabled.load(Ordering::Relaxed))
            .field("reason_mask", &self.reason_mask())
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

fn same(a: &Arc<dyn Migrator>, b: &Arc<dyn Migrator>) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
}

impl Registry {
    /// An empty registry: gate off.
    pub fn new() -> Registry {
        Registry {
            enabled: AtomicBool::new(false),
            reason_mask: AtomicU32::new(0),
            dispatch: Mutex::new(None),
            srcu: srcu::Srcu::new(),
            reg_lock: Mutex::new(()),
            nr_batches: AtomicU64::new(0),
            nr_folios_offered: AtomicU64::new(0),
            pipeline_first_bytes: AtomicUsize::new(0),
            pipeline_overlap: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// `migrate_offload_register(m, reason_mask)`.
    pub fn register(&self, m: Arc<dyn Migrator>, mask: ReasonMask) -> Result<(), OffloadError> {
        let name = m.name();
        if name.is_empty() || name.len() > MIGRATOR_NAME_LEN {
            return Err(OffloadError::Invalid(format!(
                "name {name:?} must be 1..={MIGRATOR_NAME_LEN} bytes"
            )));
        }
        let _g = model::lock(&self.reg_lock);
        let mut d = model::lock(&self.dispatch);
        if let Some(active) = d.as_ref() {
            return Err(OffloadError::Busy {
                active: active.name().to_string(),
            });
        }
        self.reason_mask
            .store(mask.clamp().bits(), Ordering::SeqCst);
        *d = Some(m);
        drop(d);
        // The static key goes on last.
        self.enabled.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// `migrate_offload_unregister(m)`: closes the gate, resets the dispatch to the
    /// built-in copier, waits for every in-flight copy to finish, and returns the owner
    /// reference. Only the active migrator may unregister (`EINVAL` otherwise).
    pub fn unregister(&self, m: &Arc<dyn Migrator>) -> Result<Arc<dyn Migrator>, OffloadError> {
        let g = model::lock(&self.reg_lock);
        let mut d = model::lock(&self.dispatch);
        match d.as_ref() {
            Some(a) if same(a, m) => {}
            _ => {
                return Err(OffloadError::Invalid(format!(
                    "{} is not the active migrator",
                    m.name()
                )))
            }
        }
        // 1. static key off: new batches stop taking the batch path.
        self.enabled.store(false, Ordering::SeqCst);
        // 2. no reason allowed.
        self.reason_mask.store(0, Ordering::SeqCst);
        // 3. static_call_update() back to the built-in copier.
        let owner = d
            .take()
            .expect("active migrator vanished under the registration lock");
        drop(d);
        drop(g);
        // 4. synchronize_srcu(), outside the mutex: wait for the copies still in the driver.
        self.srcu.synchronize();
        Ok(owner)
    }

    /// `migrate_offload_set_reason_mask(m, mask)`: only the active migrator may change it.
    pub fn set_reason_mask(
        &self,
        m: &Arc<dyn Migrator>,
        mask: ReasonMask,
    ) -> Result<(), OffloadError> {
        let _g = model::lock(&self.reg_lock);
        let d = model::lock(&self.dispatch);
        match d.as_ref() {
            Some(a) if same(a, m) => {
                self.reason_mask
                    .store(mask.clamp().bits(), Ordering::SeqCst);
                Ok(())
            }
            _ => Err(OffloadError::Invalid(format!(
                "{} is not the active migrator",
                m.name()
            ))),
        }
    }

    /// The reason mask in force.
    pub fn reason_mask(&self) -> ReasonMask {
        ReasonMask::from_bits(self.reason_mask.load(Ordering::SeqCst))
    }

    /// Whether the gate is on (a migrator is registered).
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// Name of the active migrator.
    pub fn active_name(&self) -> Option<String> {
        model::lock(&self.dispatch)
            .as_ref()
            .map(|m| m.name().to_string())
    }

    /// `migrate_should_offload(reason)`: gate on and reason allowed.
    pub fn should_offload(&self, reason: Reason) -> bool {
        self.enabled.load(Ordering::SeqCst) && self.reason_mask().contains(reason)
    }

    /// Runs `f` inside a read section of the dispatch (`srcu_read_lock` ..
    /// `srcu_read_unlock`) with the active migrator, or `None` for the built-in copier.
    /// `unregister` does not return while such a section is open; sections nest and never
    /// wait for an unregister.
    pub fn with_dispatch<R>(&self, f: impl FnOnce(Option<&Arc<dyn Migrator>>) -> R) -> R {
        let _section = self.srcu.read_lock();
        let m = model::lock(&self.dispatch).clone();
        f(m.as_ref())
    }

    /// `migrate_offload_batch_copy(dst, src, n)`: the only place a driver is entered.
    pub fn batch_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        self.nr_batches.fetch_add(1, Ordering::Relaxed);
        self.nr_folios_offered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let rc = self.with_dispatch(|m| match m {
            Some(m) => m.offload_copy(batch),
            None => migrate_folios_mc_copy(batch),
        });
        // Whatever the driver did, its streaming stores are ordered before the move phase.
        crate::copy::store_fence();
        rc
    }

    /// Switches the pipelined batch copy on (`Some`) or back to the series' path (`None`,
    /// the default). Read once at the start of each `migrate_pages()` call.
    pub fn set_pipeline(&self, cfg: Option<PipelineConfig>) {
        let v = cfg.map_or(0, |c| c.first_sub_batch_bytes.max(1));
        self.pipeline_overlap.store(
            cfg.is_some_and(|c| c.overlap),
            std::sync::atomic::Ordering::SeqCst,
        );
        self.pipeline_first_bytes
            .store(v, std::sync::atomic::Ordering::SeqCst);
    }

    /// The pipeline in force, if any.
    pub fn pipeline(&self) -> Option<PipelineConfig> {
        match self
            .pipeline_first_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            0 => None,
            n => Some(PipelineConfig {
                first_sub_batch_bytes: n,
                overlap: self
                    .pipeline_overlap
                    .load(std::sync::atomic::Ordering::SeqCst),
            }),
        }
    }

    /// Counters.
    pub fn stats(&self) -> OffloadStats {
        OffloadStats {
            nr_batches: self.nr_batches.load(Ordering::Relaxed),
            nr_folios_offered: self.nr_folios_offered.load(Ordering::Relaxed),
        }
    }
}
