//! The live backend on this machine's kernel: a program's own pages, moved with
//! userfaultfd while its threads run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pagemig::live::{Live, LiveConfig, LiveError, LiveRegion, RegionConfig, MPOL_MF_MOVE};
use pagemig::mm::{Memory, MemoryConfig, NodeId};

fn memory(mib: usize) -> Arc<Memory> {
    Memory::new(MemoryConfig::with_nodes(2, mib << 20)).unwrap()
}

fn fill(r: &LiveRegion, seed: u64) {
    for (i, w) in r.words().iter().enumerate() {
        w.store(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), Ordering::Relaxed);
    }
}

fn check(r: &LiveRegion, seed: u64) -> usize {
    r.words()
        .iter()
        .enumerate()
        .filter(|(i, w)| w.load(Ordering::Relaxed) != seed ^ (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .count()
}

fn pages(r: &LiveRegion, step: usize) -> Vec<usize> {
    (0..r.len()).step_by(step).map(|o| r.addr() + o).collect()
}

fn nodes_of(r: &LiveRegion, step: usize) -> Vec<i32> {
    let p = pages(r, step);
    let mut st = vec![0; p.len()];
    assert_eq!(r.move_pages(&p, None, &mut st, 0), Ok(0));
    st
}

fn round_trip(order: u8, len: usize) {
    let mm = memory(2 * len >> 20 | 8);
    let live = Live::new(&mm, LiveConfig::default()).unwrap();
    let r = live.region(RegionConfig::new(len, order)).unwrap();
    r.populate().unwrap();
    fill(&r, 7);
    let step = r.folio_bytes();
    assert!(nodes_of(&r, step).iter().all(|&n| n == 0));
    let p = pages(&r, step);
    let mut st = vec![-1; p.len()];
    assert_eq!(r.move_pages(&p, Some(&vec![1; p.len()]), &mut st, MPOL_MF_MOVE), Ok(0));
    assert!(st.iter().all(|&s| s == 1), "{st:?}");
    assert!(nodes_of(&r, step).iter().all(|&n| n == 1));
    assert_eq!(check(&r, 7), 0);
    assert_eq!(r.move_pages(&p, Some(&vec![0; p.len()]), &mut st, MPOL_MF_MOVE), Ok(0));
    assert!(nodes_of(&r, step).iter().all(|&n| n == 0));
    assert_eq!(check(&r, 7), 0);
    let c = live.counts();
    assert_eq!(c.stray_faults + c.remap_errors + c.unmap_failures, 0, "{c:?}");
    eprintln!("{c:?}");
}

#[test]
fn data_survives_4k() {
    round_trip(0, 4 << 20);
}

#[test]
fn data_survives_2m() {
    round_trip(9, 8 << 20);
}
