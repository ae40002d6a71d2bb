//! The offloading on/off lifecycle every copy driver shares (the series' drivers repeat it
//! in their `offloading` module-parameter handlers): acquire the driver's resource (mtcopy's
//! thread pool, dcbm's DMA channels), register with the core, and in reverse; or hold the
//! resource without registering, for a driver that dispatches batches to this one
//! (`attach`/`detach`, used by `auto`).
//!
//! # Lock ordering
//! Switching is serialised by `ctl`, which no batch copy takes. The resource lock, which
//! batch copies do take, is never held across `register`/`unregister`: holding it there
//! would deadlock with a batch in flight inside the registry's read section. `unregister`
//! returns once in-flight batches are done and none reaches the driver after, so the
//! resource is released only then.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pagemig::mm::Memory;
use pagemig::offload::{Migrator, ReasonMask};

use crate::sync::lock;
use crate::ParamError;

/// What a driver holds while it copies: released exactly once, after the last batch.
pub(crate) trait DriverResource: Send {
    /// Gives the resource back (joins threads, returns channels).
    fn release(self);
}

/// A driver's resource and its registration state.
pub(crate) struct Lifecycle<R: DriverResource> {
    /// `Some` while offloading is on or the driver is attached.
    res: Mutex<Option<R>>,
    /// The resource is held for another driver (not registered).
    attached: AtomicBool,
    /// Serialises switching.
    ctl: Mutex<()>,
}

impl<R: DriverResource> Lifecycle<R> {
    /// Off: nothing held.
    pub(crate) fn new() -> Self {
        Lifecycle {
            res: Mutex::new(None),
            attached: AtomicBool::new(false),
            ctl: Mutex::new(()),
        }
    }

    /// The resource, locked (batch copies take it for their whole copy).
    pub(crate) fn resource(&self) -> MutexGuard<'_, Option<R>> {
        lock(&self.res)
    }

    /// Whether offloading is on (registered with the core).
    pub(crate) fn is_offloading(&self) -> bool {
        lock(&self.res).is_some() && !self.attached.load(Ordering::SeqCst)
    }

    /// Whether the resource is held for another driver.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.load(Ordering::SeqCst)
    }

    /// Acquires the resource without registering; `Busy` if it is held already.
    pub(crate) fn attach(
        &self,
        held: &str,
        acquire: impl FnOnce() -> Result<R, ParamError>,
    ) -> Result<(), ParamError> {
        let _ctl = lock(&self.ctl);
        let mut res = lock(&self.res);
        if res.is_some() {
            return Err(ParamError::Busy {
                name: "attach".into(),
                why: format!("{held} already"),
            });
        }
        *res = Some(acquire()?);
        self.attached.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Releases a resource acquired by [`Lifecycle::attach`].
    pub(crate) fn detach(&self) {
        let _ctl = lock(&self.ctl);
        if self.attached.swap(false, Ordering::SeqCst) {
            self.release();
        }
    }

    /// `offloading=1`: acquire, then register `migrator` for `mask`; `offloading=0`:
    /// unregister, then release. Setting the state it is in already does nothing.
    pub(crate) fn set_offloading(
        &self,
        on: bool,
        mm: &Weak<Memory>,
        migrator: Arc<dyn Migrator>,
        mask: ReasonMask,
        acquire: impl FnOnce() -> Result<R, ParamError>,
    ) -> Result<(), ParamError> {
        let _ctl = lock(&self.ctl);
        if self.attached.load(Ordering::SeqCst) {
            return Err(ParamError::Busy {
                name: "offloading".into(),
                why: "attached to another driver".into(),
            });
        }
        if on == lock(&self.res).is_some() {
            return Ok(());
        }
        let mm = mm
            .upgrade()
            .ok_or_else(|| ParamError::Start("memory is gone".into()))?;
        if on {
            let r = acquire()?;
            *lock(&self.res) = Some(r);
            if let Err(e) = mm.offload().register(migrator, mask) {
                self.release();
                return Err(ParamError::Offload(e));
            }
        } else {
            mm.offload()
                .unregister(&migrator)
                .map_err(ParamError::Offload)?;
            self.release();
        }
        Ok(())
    }

    fn release(&self) {
        // Taken out first: the resource lock is not held while threads are joined.
        let r = lock(&self.res).take();
        if let Some(r) = r {
            r.release();
        }
    }
}

impl<R: DriverResource> Drop for Lifecycle<R> {
    fn drop(&mut self) {
        self.release();
    }
}
