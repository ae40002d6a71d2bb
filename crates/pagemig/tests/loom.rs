//! Loom models of pagemig's own concurrency protocols. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release -p pagemig --test loom`.
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use pagemig::migrate::Reason;
use pagemig::mm::tlb::TlbDomain;
use pagemig::mm::waitbit::{self, WaitQueue};
use pagemig::offload::{CopyBatch, Migrator, ReasonMask, Registry};
use pagemig::sync::model::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use pagemig::Errno;

/// After a shootdown returns, no access through a translation cached before the unmap is
/// running, and none can start.
#[test]
fn tlb_shootdown_is_acknowledged_before_the_copy() {
    loom::model(|| {
        let dom = Arc::new(TlbDomain::new());
        let pte = Arc::new(AtomicU64::new(1)); // maps frame 1
        let in_old_access = Arc::new(AtomicBool::new(false));
        let flushed = Arc::new(AtomicBool::new(false));
        let (slot, gen0) = dom.register();
        let accessor = {
            let (dom, pte, in_old_access, flushed) = (
                dom.clone(),
                pte.clone(),
                in_old_access.clone(),
                flushed.clone(),
            );
            thread::spawn(move || {
                let mut seen = gen0;
                let mut cached: Option<u64> = None;
                for _ in 0..2 {
                    if slot.enter(&dom, &mut seen) {
                        cached = None;
                    }
                    let frame = *cached.get_or_insert_with(|| pte.load(SeqCst));
                    if frame == 1 {
                        in_old_access.store(true, SeqCst);
                        assert!(
                            !flushed.load(SeqCst),
                            "a write through the old translation after the shootdown"
                        );
                        in_old_access.store(false, SeqCst);
                    }
                    slot.exit();
                }
            })
        };
        // try_to_migrate: the PTE becomes a migration entry; then the one flush.
        pte.store(2, SeqCst);
        dom.shootdown();
        flushed.store(true, SeqCst);
        assert!(
            !in_old_access.load(SeqCst),
            "an access through the old translation outlived the shootdown"
        );
        accessor.join().unwrap();
    });
}

const LOCKED: u32 = 1;

/// A waiter on the folio lock is always woken: no lost wake-up, even when the lock is
/// taken again between the unlock and the waiter's check.
#[test]
fn migration_entry_wait_is_always_woken() {
    loom::model(|| {
        let flags = Arc::new(AtomicU32::new(LOCKED));
        let q = Arc::new(WaitQueue::new());
        let waiter = {
            let (flags, q) = (flags.clone(), q.clone());
            thread::spawn(move || waitbit::wait_on_bit(&flags, LOCKED, &q))
        };
        waitbit::clear_bit_unlock(&flags, LOCKED, &q);
        // Relock (another migration) and unlock again.
        if flags.fetch_or(LOCKED, SeqCst) & LOCKED == 0 {
            waitbit::clear_bit_unlock(&flags, LOCKED, &q);
        }
        waiter.join().unwrap();
    });
}

struct Dummy;
impl Migrator for Dummy {
    fn name(&self) -> &str {
        "dummy"
    }
    fn offload_copy(&self, _batch: &CopyBatch<'_>) -> Result<(), Errno> {
        Ok(())
    }
}

/// Unregister does not return while a batch copy is inside the driver; after it returns
/// no batch reaches the driver.
#[test]
fn registry_swap_waits_for_the_in_flight_copy() {
    loom::model(|| {
        let reg = Arc::new(Registry::new());
        let m: Arc<dyn Migrator> = Arc::new(Dummy);
        reg.register(m.clone(), ReasonMask::ALL).unwrap();
        let in_driver = Arc::new(AtomicBool::new(false));
        let unregistered = Arc::new(AtomicBool::new(false));
        let batch = {
            let (reg, in_driver, unregistered) =
                (reg.clone(), in_driver.clone(), unregistered.clone());
            thread::spawn(move || {
                if reg.should_offload(Reason::Demotion) {
                    reg.with_dispatch(|d| {
                        if d.is_some() {
                            in_driver.store(true, SeqCst);
                            assert!(
                                !unregistered.load(SeqCst),
                                "driver entered after unregister returned"
                            );
                            in_driver.store(false, SeqCst);
                        }
                    });
                }
            })
        };
        let owner = reg.unregister(&m).unwrap();
        unregistered.store(true, SeqCst);
        assert!(
            !in_driver.load(SeqCst),
            "unregister returned with a copy in flight"
        );
        drop(owner);
        batch.join().unwrap();
        assert!(!reg.is_enabled());
    });
}

/// The registry's read side is SRCU's: a driver's copy may open a nested read section
/// while an unregister waits for it (with a reader-writer lock the queued writer would
/// block the nested reader, and the two would wait for each other), a section that begins
/// during the wait does not wait, and no section is in the driver after unregister returns.
#[test]
fn registry_read_sections_nest_and_never_wait_for_unregister() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let reg = Arc::new(Registry::new());
        let m: Arc<dyn Migrator> = Arc::new(Dummy);
        reg.register(m.clone(), ReasonMask::ALL).unwrap();
        let unregistered = Arc::new(AtomicBool::new(false));
        let reader = {
            let (reg, unregistered) = (reg.clone(), unregistered.clone());
            thread::spawn(move || {
                reg.with_dispatch(|d| {
                    let outer = d.is_some();
                    // The driver re-enters the read side.
                    reg.with_dispatch(|inner| {
                        if outer || inner.is_some() {
                            assert!(
                                !unregistered.load(SeqCst),
                                "driver running after unregister returned"
                            );
                        }
                    });
                });
            })
        };
        let owner = reg.unregister(&m).unwrap();
        unregistered.store(true, SeqCst);
        drop(owner);
        reader.join().unwrap();
        assert_eq!(reg.active_name(), None);
    });
}
