//! A live region: memory this program uses with plain loads and stores, whose pages
//! pagemig migrates between nodes while a thread keeps writing to it, through
//! userfaultfd's `UFFDIO_MOVE` (Linux 6.8+, no privilege needed).
//!
//! `cargo run --release -p pagemig-live --example live_region`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pagemig::mm::{Memory, MemoryConfig};
use pagemig_live::{Live, LiveConfig, RegionConfig, MPOL_MF_MOVE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mm = Memory::new(MemoryConfig::with_nodes(2, 64 << 20))?;
    let live = match Live::new(&mm, LiveConfig::default()) {
        Ok(l) => l,
        Err(e) => {
            // Say what is missing (an old kernel, no userfaultfd) and fail.
            eprintln!("live_region: the live backend cannot run here: {e}");
            std::process::exit(1);
        }
    };
    // 16 MiB of 4 KiB pages, first touches served from node 0.
    let region = Arc::new(live.region(RegionConfig::new(16 << 20, 0))?);
    for (i, w) in region.words().iter().enumerate() {
        w.store(i as u64, Ordering::Relaxed);
    }
    // A writer thread keeps incrementing word 0 while the pages move.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (region, stop) = (region.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                region.words()[0].fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            n
        })
    };
    let pages: Vec<usize> = (0..region.len())
        .step_by(4096)
        .map(|o| region.addr() + o)
        .collect();
    let mut status = vec![0i32; pages.len()];
    for node in [1, 0, 1] {
        let left = region.move_pages(
            &pages,
            Some(&vec![node; pages.len()]),
            &mut status,
            MPOL_MF_MOVE,
        )?;
        assert_eq!(left, 0, "every page moved");
        assert!(
            status.iter().all(|&s| s == node),
            "every page on node {node}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().map_err(|_| "the writer panicked")?;
    // No write was lost and every other word kept its value.
    assert_eq!(region.words()[0].load(Ordering::Relaxed), writes);
    for (i, w) in region.words().iter().enumerate().skip(1) {
        assert_eq!(w.load(Ordering::Relaxed), i as u64);
    }
    region.move_pages(&pages, None, &mut status, 0)?;
    println!(
        "{} pages now on node {}, {} writes made during three migrations, none lost; {:?}",
        pages.len(),
        status[0],
        writes,
        region.counts()
    );
    Ok(())
}
