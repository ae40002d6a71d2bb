//! [`LiveAlloc`] as this test binary's global allocator: every large allocation of the test
//! harness and of the tests is a live region.

use pagemig::mm::NodeId;
use pagemig_live::LiveAlloc;

#[global_allocator]
static ALLOC: LiveAlloc = LiveAlloc::new(1 << 20);

#[test]
fn large_allocations_are_regions_that_migrate_with_their_bytes_and_small_ones_are_not() {
    let small = vec![3u8; 1000];
    let mut big: Vec<u64> = (0..(32usize << 20) / 8).map(|i| i as u64 * 3).collect();
    let boxed = vec![0u8; 8 << 20].into_boxed_slice();
    assert!(ALLOC.error().is_none(), "{:?}", ALLOC.error());
    assert!(ALLOC.live().is_some());
    let per = ALLOC.pages_per_node();
    assert!(per[0] >= 8192, "{per:?}");
    for to in [1u32, 0, 1] {
        let moved = ALLOC.migrate_all(NodeId(to)).unwrap();
        assert!(moved >= 8192, "{moved}");
        let per = ALLOC.pages_per_node();
        assert_eq!(per[(1 - to) as usize], 0, "{per:?}");
        assert!(big.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    }
    assert!(
        boxed.iter().all(|&b| b == 0),
        "a zeroed allocation reads zero"
    );
    big.resize(big.len() * 2, 5);
    assert!(big[..(32 << 20) / 8]
        .iter()
        .enumerate()
        .all(|(i, &x)| x == i as u64 * 3));
    assert!(big[(32 << 20) / 8..].iter().all(|&x| x == 5));
    assert_eq!(small, vec![3u8; 1000]);
    drop(big);
    drop(boxed);

    // The same allocator as an `allocator_api2` Allocator, for one collection at a time: a
    // Vec and a hashbrown map whose tables are regions, moved with their contents, grown and
    // shrunk.
    let regions = |per: Vec<usize>| per.iter().sum::<usize>();
    let before = regions(ALLOC.pages_per_node());
    let mut v = allocator_api2::vec::Vec::with_capacity_in(1 << 20, &ALLOC);
    v.extend((0..1u64 << 20).map(|i| i ^ 0x5a5a));
    let mut map = hashbrown::HashMap::with_capacity_in(1 << 16, &ALLOC);
    map.extend((0..1u32 << 16).map(|i| (i, u64::from(i) * 7)));
    assert!(
        regions(ALLOC.pages_per_node()) >= before + (8 << 20) / 4096,
        "the Vec's 8 MiB is a region: {:?}",
        ALLOC.pages_per_node()
    );
    for to in [1u32, 0] {
        ALLOC.migrate_all(NodeId(to)).unwrap();
        assert_eq!(ALLOC.pages_per_node()[(1 - to) as usize], 0);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 ^ 0x5a5a));
        assert!((0..1u32 << 16).all(|i| map[&i] == u64::from(i) * 7));
    }
    v.extend(0..1u64 << 20);
    assert!(v[1 << 20..].iter().enumerate().all(|(i, &x)| x == i as u64));
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(
        v[..],
        (0..10u64).map(|i| i ^ 0x5a5a).collect::<Vec<_>>()[..]
    );
    drop((v, map));
    assert_eq!(
        regions(ALLOC.pages_per_node()),
        before,
        "dropping them freed their regions"
    );
    let empty: allocator_api2::vec::Vec<u64, &LiveAlloc> = allocator_api2::vec::Vec::new_in(&ALLOC);
    assert!(empty.is_empty());

    let c = ALLOC.live().unwrap().counts();
    assert_eq!((c.remap_errors, c.stray_faults), (0, 0), "{c:?}");
    assert!(ALLOC.migrate_all(NodeId(9)).is_err());
}
