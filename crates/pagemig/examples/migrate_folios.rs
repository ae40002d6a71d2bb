//! Migrate a list of folios from node 0 to node 1 with `migrate_pages()`, as
//! `move_pages(2)` does (`MIGRATE_SYNC`, `MR_SYSCALL`), first with offload off (every folio
//! copied in its own move step), then with the series' batch-copy path and the default
//! copier registered; every folio keeps its bytes.
//!
//! `cargo run --release -p pagemig --example migrate_folios`

use std::sync::Arc;

use pagemig::migrate::{alloc_on_node, migrate_pages, Mode, Reason};
use pagemig::mm::{Memory, MemoryConfig, NodeId, Order, VirtAddr};
use pagemig::offload::{DefaultCopier, Migrator, ReasonMask};

const BASE: u64 = 0x10_0000_0000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two nodes of 64 MiB each, pre-faulted.
    let mm = Memory::new(MemoryConfig::with_nodes(2, 64 << 20))?;
    let space = mm.new_space(VirtAddr(BASE), 32 << 20)?;
    // 16 MiB of 64 KiB folios on node 0, each filled with its own pattern.
    let nr = (16 << 20) / (64 << 10);
    let mut sums = Vec::new();
    for i in 0..nr {
        let f = space.map_anon(VirtAddr(BASE + i as u64 * (64 << 10)), NodeId(0), Order(4))?;
        mm.folio_fill(f, i as u64);
        sums.push(mm.folio_checksum(f));
    }
    let copier: Arc<dyn Migrator> = Arc::new(DefaultCopier);
    for (pass, to) in [("offload off", NodeId(1)), ("batch copy", NodeId(0))] {
        if pass == "batch copy" {
            mm.offload().register(copier.clone(), ReasonMask::ALL)?;
        }
        // Isolate the folios (take them off the LRU with a reference), then migrate.
        let mut list = Vec::new();
        for i in 0..nr {
            let f = space
                .folio_at(VirtAddr(BASE + i as u64 * (64 << 10)))
                .ok_or("a folio is not mapped")?;
            mm.isolate_folio(f)?;
            list.push(f);
        }
        let res = migrate_pages(
            &mm,
            &mut list,
            &mut alloc_on_node(to),
            None,
            Mode::Sync,
            Reason::Syscall,
        )?;
        mm.putback_movable_pages(&mut list);
        println!(
            "{pass}: rc {:?}, {} base pages to node {}, {} folios copied by the batch copy, \
             {} on the CPU, {} TLB flushes",
            res.rc,
            res.stats.nr_succeeded,
            to.0,
            res.stats.nr_copied_by_batch,
            res.stats.nr_copied_on_cpu,
            res.stats.nr_tlb_flushes
        );
        for (i, sum) in sums.iter().enumerate() {
            let f = space
                .folio_at(VirtAddr(BASE + i as u64 * (64 << 10)))
                .ok_or("a folio is not mapped")?;
            assert_eq!(mm.folio(f).node(), to, "folio {i} is on the target node");
            assert_eq!(mm.folio_checksum(f), *sum, "folio {i} kept its bytes");
        }
    }
    mm.offload().unregister(&copier)?;
    println!("every folio moved and kept its bytes");
    Ok(())
}
