//! A region dropped while a fork shares its pages. Its own test binary: a `fork()` makes
//! every page of the process copy-on-write shared, so the moves of tests running beside
//! it in the same process would fail with `EBUSY`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{check, fill, memory};
use pagemig::mm::NodeId;
use pagemig_live::{Live, LiveConfig, RegionConfig};

/// A region dropped while its pages are shared with a forked child (`UFFDIO_MOVE` refuses
/// them with `EBUSY`): its frames' slots are backed again and the frames go back to their
/// pools. Before, the shadow page table freed those frames with empty slots, and the next
/// first touch that drew one faulted on the arena in the fault handler itself, which hung
/// the program.
#[test]
fn a_region_dropped_while_a_fork_shares_its_pages_leaves_no_frame_with_an_empty_slot() {
    let mm = memory(16);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let free0 = mm.nr_free_pages(NodeId(0));
    let r = live.region(RegionConfig::new(8 << 20, 0)).unwrap();
    fill(&r, 3);
    // SAFETY: the child only calls _exit, which is async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0);
    let mut st = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    drop(r);
    assert_eq!(live.counts().slots_refilled, 2048, "{:?}", live.counts());
    assert_eq!(mm.nr_free_pages(NodeId(0)), free0, "every frame is back");
    // Every frame of the pool is drawn again; none may fault on the arena.
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let watchdog = std::thread::spawn(move || {
        for _ in 0..300 {
            if d.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("a first touch hung: a frame with an empty slot was handed out");
        std::process::exit(2);
    });
    let r2 = live.region(RegionConfig::new(16 << 20, 0)).unwrap();
    fill(&r2, 4);
    assert_eq!(check(&r2, 4), 0);
    done.store(true, Ordering::Release);
    watchdog.join().unwrap();
    assert_eq!(live.counts().stray_faults, 0);
}
