//! The copy-offload framework: one active migrator, the gate, the reason mask, and safe
//! unregistration while copies are in flight.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pagemig::migrate::{Mode, Reason};
use pagemig::offload::{CopyBatch, DefaultCopier, Migrator, OffloadError, ReasonMask};
use pagemig::Errno;

const MB: usize = 1 << 20;

#[test]
fn gate_is_off_by_default_and_on_only_while_registered() {
    let mm = memory(4 * MB);
    let reg = mm.offload();
    assert!(!reg.is_enabled());
    assert!(!reg.should_offload(Reason::Compaction));
    let m: Arc<dyn Migrator> = Arc::new(DefaultCopier);
    reg.register(m.clone(), ReasonMask::ALL).unwrap();
    assert!(reg.is_enabled());
    assert!(Reason::ALL.iter().all(|&r| reg.should_offload(r)));
    assert_eq!(reg.active_name().as_deref(), Some("mc_copy"));
    let back = reg.unregister(&m).unwrap();
    assert!(Arc::ptr_eq(&back, &m));
    assert!(!reg.is_enabled());
    assert_eq!(reg.reason_mask(), ReasonMask::NONE);
    assert_eq!(reg.active_name(), None);
}

#[test]
fn a_second_registration_is_ebusy_and_only_the_active_one_may_unregister() {
    let mm = memory(4 * MB);
    let reg = mm.offload();
    let a: Arc<dyn Migrator> = Arc::new(DefaultCopier);
    let b: Arc<dyn Migrator> = Arc::new(CountingCopier::default());
    reg.register(a.clone(), ReasonMask::ALL).unwrap();
    let e = reg.register(b.clone(), ReasonMask::ALL).unwrap_err();
    assert_eq!(
        e,
        OffloadError::Busy {
            active: "mc_copy".into()
        }
    );
    assert_eq!(e.errno(), Errno::Busy);
    assert_eq!(reg.unregister(&b).unwrap_err().errno(), Errno::Inval);
    assert_eq!(
        reg.set_reason_mask(&b, ReasonMask::NONE)
            .unwrap_err()
            .errno(),
        Errno::Inval
    );
    assert_eq!(
        reg.active_name().as_deref(),
        Some("mc_copy"),
        "failed calls changed nothing"
    );
    reg.unregister(&a).unwrap();
    reg.register(b.clone(), ReasonMask::ALL).unwrap();
    reg.unregister(&b).unwrap();
}

#[test]
fn registering_and_unregistering_thousands_of_times_keeps_nothing_alive() {
    let mm = memory(4 * MB);
    let m: Arc<dyn Migrator> = Arc::new(CountingCopier::default());
    for _ in 0..5000 {
        mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
        mm.offload().unregister(&m).unwrap();
    }
    assert_eq!(
        Arc::strong_count(&m),
        1,
        "the registry dropped every owner reference"
    );
}

#[test]
fn the_reason_mask_filters_which_migrations_take_the_batch_path() {
    let mm = memory(8 * MB);
    let sp = space(&mm, MB);
    let copier = Arc::new(CountingCopier::default());
    let m: Arc<dyn Migrator> = copier.clone();
    mm.offload()
        .register(m.clone(), "compaction,demotion".parse().unwrap())
        .unwrap();
    let folios = map_filled(&sp, 4, 0, 21);

    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(
        copier.nr_calls.load(Ordering::SeqCst),
        0,
        "syscall is not in the mask"
    );
    assert_eq!(res.stats.nr_copied_on_cpu, 4);

    let folios: Vec<_> = (0..4)
        .map(|i| {
            sp.folio_at(pagemig::mm::VirtAddr(BASE + (i * 4096) as u64))
                .unwrap()
        })
        .collect();
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 0, Mode::Async, Reason::Demotion);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(copier.nr_calls.load(Ordering::SeqCst), 1);
    assert_eq!(res.stats.nr_copied_by_batch, 4);

    mm.offload().set_reason_mask(&m, ReasonMask::NONE).unwrap();
    let folios: Vec<_> = (0..4)
        .map(|i| {
            sp.folio_at(pagemig::mm::VirtAddr(BASE + (i * 4096) as u64))
                .unwrap()
        })
        .collect();
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Demotion);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(
        copier.nr_calls.load(Ordering::SeqCst),
        1,
        "mask none: no batch"
    );
    check_filled(&sp, 4, 0, 21);
    mm.offload().unregister(&m).unwrap();
    drop(sp);
    assert_frames_balanced(&mm);
}

/// A migrator that blocks inside its copy until released, and records whether it was
/// dropped while a copy was running.
struct Gated {
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
    in_copy: AtomicBool,
    finished: AtomicUsize,
    dropped_in_flight: Arc<AtomicBool>,
}

impl Migrator for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        self.in_copy.store(true, Ordering::SeqCst);
        if let Some(tx) = self.entered.lock().unwrap().take() {
            tx.send(()).unwrap();
        }
        if let Some(rx) = self.release.lock().unwrap().take() {
            rx.recv().unwrap();
        }
        for i in 0..batch.len() {
            batch.copy_folio(i)?;
            batch.mark_copied(i);
        }
        self.in_copy.store(false, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        if self.in_copy.load(Ordering::SeqCst) {
            self.dropped_in_flight.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn unregister_waits_for_in_flight_copies_and_new_batches_stop_using_the_driver() {
    let mm = memory(8 * MB);
    let sp = space(&mm, MB);
    let folios = map_filled(&sp, 8, 0, 22);
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let gated = Arc::new(Gated {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(Some(release_rx)),
        in_copy: AtomicBool::new(false),
        finished: AtomicUsize::new(0),
        dropped_in_flight: dropped.clone(),
    });
    let m: Arc<dyn Migrator> = gated.clone();
    mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();

    let migrating = {
        let mm = mm.clone();
        let list = isolate_all(&mm, &folios);
        std::thread::spawn(move || {
            let mut list = list;
            migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall)
        })
    };
    entered_rx.recv().unwrap();
    let unregistered = Arc::new(AtomicBool::new(false));
    let unregistering = {
        let mm = mm.clone();
        let unregistered = unregistered.clone();
        let gated = gated.clone();
        std::thread::spawn(move || {
            let owner = mm
                .offload()
                .unregister(&m)
                .map_err(|e| e.to_string())
                .unwrap();
            // By the time unregister returns, the in-flight copy is over.
            let finished = gated.finished.load(Ordering::SeqCst);
            unregistered.store(true, Ordering::SeqCst);
            drop(owner);
            finished
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !unregistered.load(Ordering::SeqCst),
        "unregister returned while a copy was in flight"
    );
    assert!(!mm.offload().is_enabled(), "the gate closed first");
    release_tx.send(()).unwrap();
    let res = migrating.join().unwrap();
    assert_eq!(
        unregistering.join().unwrap(),
        1,
        "unregister returned after the copy finished"
    );
    assert_eq!(res.rc, Ok(0));
    assert_eq!(res.stats.nr_copied_by_batch, 8);

    // New batches no longer reach the driver.
    let folios: Vec<_> = (0..8)
        .map(|i| {
            sp.folio_at(pagemig::mm::VirtAddr(BASE + (i * 4096) as u64))
                .unwrap()
        })
        .collect();
    let mut list = isolate_all(&mm, &folios);
    let res = migrate_to(&mm, &mut list, 0, Mode::Async, Reason::Syscall);
    assert_eq!(res.rc, Ok(0));
    assert_eq!(gated.finished.load(Ordering::SeqCst), 1);
    assert_eq!(res.stats.nr_copied_by_batch, 0);
    check_filled(&sp, 8, 0, 22);
    drop(gated);
    assert!(!dropped.load(Ordering::SeqCst));
    drop(sp);
    assert_frames_balanced(&mm);
}

/// Holds the batch of the thread named "late" between the gate and the dispatch until an
/// unregister has begun waiting.
struct LateBatch {
    unregistering: Arc<AtomicBool>,
}

impl pagemig::mm::FaultHooks for LateBatch {
    fn before_batch_copy(&self, _mm: &pagemig::mm::Memory) {
        if std::thread::current().name() == Some("late") {
            while !self.unregistering.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Let unregister reach its wait for the in-flight copy.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_batch_copy_that_begins_while_unregister_waits_runs_the_default_copier_at_once() {
    let unregistering = Arc::new(AtomicBool::new(false));
    let mm = memory_with(
        16 * MB,
        Some(Arc::new(LateBatch {
            unregistering: unregistering.clone(),
        })),
        None,
    );
    let sp = space(&mm, MB);
    let first = map_filled(&sp, 8, 0, 23);
    let sp2 = mm
        .new_space(pagemig::mm::VirtAddr(BASE + (1 << 30)), MB)
        .unwrap();
    let acc2 = sp2.accessor();
    let late: Vec<_> = (0..8u64)
        .map(|i| {
            let va = pagemig::mm::VirtAddr(BASE + (1 << 30) + i * 4096);
            let f = sp2
                .map_anon(va, pagemig::mm::NodeId(0), pagemig::mm::Order(0))
                .unwrap();
            acc2.write(va, &pattern(24, i as usize)).unwrap();
            f
        })
        .collect();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gated = Arc::new(Gated {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(Some(release_rx)),
        in_copy: AtomicBool::new(false),
        finished: AtomicUsize::new(0),
        dropped_in_flight: Arc::new(AtomicBool::new(false)),
    });
    let m: Arc<dyn Migrator> = gated.clone();
    mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
    // The slow DMA batch.
    let slow = {
        let mm = mm.clone();
        let list = isolate_all(&mm, &first);
        std::thread::spawn(move || {
            let mut list = list;
            migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall)
        })
    };
    entered_rx.recv().unwrap();
    // A batch that passes the gate now and reaches the dispatch during the unregister.
    let (late_tx, late_rx) = mpsc::channel();
    let late_batch = {
        let mm = mm.clone();
        let list = isolate_all(&mm, &late);
        std::thread::Builder::new()
            .name("late".into())
            .spawn(move || {
                let mut list = list;
                let res = migrate_to(&mm, &mut list, 1, Mode::Async, Reason::Syscall);
                late_tx.send(()).unwrap();
                res
            })
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(20));
    let unregistering_thread = {
        let mm = mm.clone();
        let unregistering = unregistering.clone();
        std::thread::spawn(move || {
            unregistering.store(true, Ordering::SeqCst);
            mm.offload()
                .unregister(&m)
                .map(drop)
                .map_err(|e| e.to_string())
        })
    };
    let done_early = late_rx.recv_timeout(Duration::from_secs(3)).is_ok();
    let still_in_driver = gated.finished.load(Ordering::SeqCst) == 0;
    release_tx.send(()).unwrap();
    let late_res = late_batch.join().unwrap();
    assert!(
        done_early && still_in_driver,
        "the late batch waited for the unregister (done early: {done_early})"
    );
    assert_eq!(late_res.rc, Ok(0));
    assert_eq!(
        late_res.stats.nr_copied_by_batch, 8,
        "the late batch ran the built-in copier"
    );
    assert_eq!(slow.join().unwrap().rc, Ok(0));
    unregistering_thread.join().unwrap().unwrap();
    assert_eq!(gated.finished.load(Ordering::SeqCst), 1);
    drop(acc2);
    check_filled(&sp, 8, 0, 23);
    let acc = sp2.accessor();
    let mut buf = vec![0u8; 4096];
    for i in 0..8u64 {
        acc.read(pagemig::mm::VirtAddr(BASE + (1 << 30) + i * 4096), &mut buf)
            .unwrap();
        assert!(buf == pattern(24, i as usize));
    }
    drop(acc);
    drop((sp, sp2));
    assert_frames_balanced(&mm);
}
