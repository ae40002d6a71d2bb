//! Register a copy-offload engine, as a kernel module would: start `mtcopy` with two
//! threads through its module parameters, migrate 2 MiB folios with it, read its counters,
//! switch to `dcbm` (DMA channels of the emulated provider) by name, and switch offload off.
//!
//! `cargo run --release -p pagemig-engines --example register_engine`

use std::sync::Arc;

use pagemig::migrate::{alloc_on_node, migrate_pages, Mode, Reason};
use pagemig::mm::{AddressSpace, Memory, MemoryConfig, NodeId, Order, VirtAddr};
use pagemig_engines::mtcopy::MtCopy;
use pagemig_engines::{Engine, EngineSpec, ModuleParams};

const BASE: u64 = 0x10_0000_0000;
const NR: usize = 8;

/// Moves every folio of `space` to `to`; returns the folios the batch copy copied.
fn migrate_all(
    mm: &Arc<Memory>,
    space: &AddressSpace,
    to: NodeId,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut list = Vec::new();
    for i in 0..NR {
        let f = space
            .folio_at(VirtAddr(BASE + (i as u64) * (2 << 20)))
            .ok_or("not mapped")?;
        mm.isolate_folio(f)?;
        list.push(f);
    }
    let res = migrate_pages(
        mm,
        &mut list,
        &mut alloc_on_node(to),
        None,
        Mode::Sync,
        Reason::Syscall,
    )?;
    mm.putback_movable_pages(&mut list);
    assert_eq!(res.rc, Ok(0));
    Ok(res.stats.nr_copied_by_batch)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mm = Memory::new(MemoryConfig::with_nodes(2, 32 << 20))?;
    let space = mm.new_space(VirtAddr(BASE), NR * (2 << 20))?;
    for i in 0..NR {
        let f = space.map_anon(VirtAddr(BASE + (i as u64) * (2 << 20)), NodeId(0), Order(9))?;
        mm.folio_fill(f, i as u64);
    }

    // A driver and its knobs, like `echo 2 > /sys/module/mtcopy/parameters/threads`.
    let mt = MtCopy::new(&mm);
    mt.set_param("threads", "2")?;
    mt.set_param("offloading", "1")?;
    let copied = migrate_all(&mm, &space, NodeId(1))?;
    println!(
        "mtcopy:2 copied {copied} folios; counters {:?}",
        mt.counters()
    );
    mt.set_param("offloading", "0")?;

    // The same through an engine spec, as the CLI names them.
    let dcbm = Engine::start(EngineSpec::Dcbm(2), &mm, &[])?;
    let copied = migrate_all(&mm, &space, NodeId(0))?;
    println!("dcbm:2 copied {copied} folios");
    dcbm.stop()?;
    assert!(!mm.offload().is_enabled(), "offload is off again");
    Ok(())
}
