//! mtcopy pins its pool threads within the CPUs the process may use (its own test binary:
//! it narrows a thread's CPU set, as `taskset -c` does to a whole process).

use pagemig::migrate::{alloc_on_node, migrate_pages, Mode, Reason};
use pagemig::mm::{Memory, MemoryConfig, NodeId, Order, VirtAddr};
use pagemig_engines::mtcopy::MtCopy;
use pagemig_engines::ModuleParams;

#[test]
fn pool_threads_are_pinned_within_a_restricted_cpu_set() {
    let allowed = pagemig::sys::allowed_cpus().unwrap();
    // The highest CPU allowed: with two or more CPUs it is not CPU 0, where pinning by
    // `i % nr_cpus` would put a thread.
    let only = *allowed.last().unwrap();
    std::thread::spawn(move || {
        pagemig::sys::set_allowed_cpus(&[only]).unwrap();
        let mm = Memory::new(MemoryConfig::with_nodes(2, 8 << 20)).unwrap();
        let space = mm.new_space(VirtAddr(0x10_0000_0000), 4 << 20).unwrap();
        let mt = MtCopy::new(&mm);
        mt.set_param("threads", "3").unwrap();
        for (k, sel) in ["fill", "spread"].into_iter().enumerate() {
            mt.set_param("cpuselect", sel).unwrap();
            mt.set_param("offloading", "1").unwrap();
            assert_eq!(mt.pool_cpus(), vec![vec![only]; 2], "cpuselect={sel}");
            // The pinned pool copies.
            let va = VirtAddr(0x10_0000_0000 + (k as u64) * (2 << 20));
            let f = space.map_anon(va, NodeId(0), Order(9)).unwrap();
            mm.folio_fill(f, 7);
            let sum = mm.folio_checksum(f);
            mm.isolate_folio(f).unwrap();
            let mut list = vec![f];
            let res = migrate_pages(
                &mm,
                &mut list,
                &mut alloc_on_node(NodeId(1)),
                None,
                Mode::Sync,
                Reason::Syscall,
            )
            .unwrap();
            assert_eq!(res.rc, Ok(0));
            let now = space.folio_at(va).unwrap();
            assert_eq!(mm.folio(now).node(), NodeId(1));
            assert_eq!(mm.folio_checksum(now), sum);
            assert!(mt.param("folios_migrated").unwrap().parse::<u64>().unwrap() > k as u64);
            mt.set_param("offloading", "0").unwrap();
        }
        // Unpinned threads inherit the set.
        mt.set_param("cpuselect", "none").unwrap();
        mt.set_param("offloading", "1").unwrap();
        assert_eq!(mt.pool_cpus(), vec![vec![only]; 2]);
        mt.set_param("offloading", "0").unwrap();
    })
    .join()
    .unwrap();
}
