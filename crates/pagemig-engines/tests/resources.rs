//! Switching drivers on and off thousands of times leaks no thread, file descriptor,
//! channel or registration. (Its own test binary: nothing else runs beside it.)

use std::sync::Arc;

use pagemig::mm::{Memory, MemoryConfig};
use pagemig::offload::{DefaultCopier, Migrator, ReasonMask};
use pagemig_engines::auto::Auto;
use pagemig_engines::dcbm::Dcbm;
use pagemig_engines::emulated::{EmulatedConfig, EmulatedDmaDevice};
use pagemig_engines::mtcopy::MtCopy;
use pagemig_engines::ModuleParams;

fn threads_and_fds() -> (u64, u64) {
    let threads = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l[8..].trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    (threads, fds)
}

/// The counts once they are back to `want`, or what they are after a second. A thread
/// that `pthread_join` has reaped leaves the process's thread count a moment later (the
/// kernel wakes the joiner before it removes the task from the thread group), so a loaded
/// machine can see it for a few microseconds; a leaked thread stays.
fn settled_to(want: (u64, u64)) -> (u64, u64) {
    let t0 = std::time::Instant::now();
    loop {
        let now = threads_and_fds();
        if now == want || t0.elapsed() > std::time::Duration::from_secs(1) {
            return now;
        }
        std::thread::yield_now();
    }
}

#[test]
fn registering_and_switching_drivers_thousands_of_times_leaks_nothing() {
    let mm = Memory::new(MemoryConfig::with_nodes(2, 4 << 20)).unwrap();
    let before = threads_and_fds();

    let m: Arc<dyn Migrator> = Arc::new(DefaultCopier);
    for _ in 0..2000 {
        mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
        mm.offload().unregister(&m).unwrap();
    }
    assert_eq!(Arc::strong_count(&m), 1);

    let mt = MtCopy::new(&mm);
    mt.set_param("threads", "3").unwrap();
    for _ in 0..1000 {
        mt.set_param("offloading", "1").unwrap();
        assert_eq!(mt.nr_pool_threads(), 2);
        mt.set_param("offloading", "0").unwrap();
    }
    let dev = EmulatedDmaDevice::new(&mm, EmulatedConfig::default());
    let d = Dcbm::new(&mm, dev.clone());
    d.set_param("nr_dma_chan", "4").unwrap();
    for _ in 0..1000 {
        d.set_param("offloading", "1").unwrap();
        assert_eq!(dev.nr_channels_in_use(), 4);
        d.set_param("offloading", "0").unwrap();
        assert_eq!(dev.nr_channels_in_use(), 0);
    }
    assert!(!mm.offload().is_enabled());
    assert_eq!(
        settled_to(before),
        before,
        "threads and fds are back where they were"
    );

    // auto runs its candidates' threads only while registered, and a second registration
    // that fails leaves the first one's threads alone.
    let mm2 = Memory::new(MemoryConfig::with_nodes(2, 16 << 20)).unwrap();
    let a = Auto::new(&mm2).unwrap();
    assert_eq!(
        settled_to(before),
        before,
        "an unregistered auto holds no thread"
    );
    for _ in 0..50 {
        a.register(&mm2, ReasonMask::ALL).unwrap();
        let running = threads_and_fds();
        assert!(running.0 > before.0, "registered: candidates' threads run");
        assert!(a.register(&mm2, ReasonMask::ALL).is_err());
        assert_eq!(
            threads_and_fds(),
            running,
            "a failed second register keeps them"
        );
        assert!(mm2.offload().is_enabled());
        a.unregister(&mm2).unwrap();
        assert_eq!(settled_to(before), before, "unregistered: released");
    }
    a.shutdown();
}
