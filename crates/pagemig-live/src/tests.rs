//! Tests that need the crate's internals (a test-only hook in the fault handler) and a
//! raw access to a region's memory from a thread that does not own the region: the one
//! place outside `sys` where a test writes through a raw pointer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pagemig::mm::{Memory, MemoryConfig};

use crate::handler::fault_hook;
use crate::{Live, LiveConfig, LiveError, RegionConfig};

#[test]
fn a_remake_waits_for_a_first_touch_the_handler_is_serving() {
    // The handler has found the region's backend alive and is about to populate the
    // touched page when the region is remade. The remake must wait for that fault and
    // then refuse (the region is touched now). Without the per-region lock it went
    // ahead: the page came in through the retired backend, and the new region's shadow
    // page table did not know it (a page pagemig could never move or give back).
    let mm = Memory::new(MemoryConfig::with_nodes(2, 16 << 20)).unwrap();
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let mut r = live.region(RegionConfig::new(2 << 20, 0)).unwrap();
    let base = r.addr();
    fault_hook::hold(&r.backend);
    let toucher = std::thread::spawn(move || {
        // SAFETY: the region lives until this thread is joined; the other threads only
        // remake it, which makes no Rust reference into its memory.
        unsafe { std::ptr::write_volatile(base as *mut u64, 42) };
    });
    fault_hook::wait_paused();
    let (done, remade) = std::sync::mpsc::channel();
    let remaker = std::thread::spawn(move || {
        let res = r.remake(9, 1);
        let _ = done.send(());
        (r, res)
    });
    // Long enough for a remake that does not wait to end (it takes well under a
    // millisecond); one that waits ends only after the fault is let go.
    let _ = remade.recv_timeout(Duration::from_millis(500));
    fault_hook::release();
    let (r, res) = remaker.join().unwrap();
    toucher.join().unwrap();
    assert!(
        matches!(res, Err(LiveError::Touched { .. })),
        "the remake did not wait for the fault being served: {res:?}"
    );
    assert_eq!(r.folio_bytes(), 4096);
    assert!(
        r.folio_at(base).is_some(),
        "the touched page is not the region's"
    );
    assert_eq!(r.words()[0].load(Ordering::Relaxed), 42);
    let c = live.counts();
    assert_eq!(c.remap_errors + c.stray_faults, 0, "{c:?}");
}
