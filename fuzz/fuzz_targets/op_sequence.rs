//! An operation sequence over the built-in backend: map, write, migrate subsets with
//! faults. After each step every written word reads back, no migration entry survives,
//! and at the end every frame is free again.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pagemig::migrate::{alloc_on_node, migrate_pages, Mode, Reason};
use pagemig::mm::{Memory, MemoryConfig, NodeId, Order, Pfn, Pte, VirtAddr, PAGE_SIZE};
use pagemig::offload::{DefaultCopier, Migrator, ReasonMask};

const BASE: u64 = 0x10_0000_0000;
const SLOTS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mm = Memory::new(MemoryConfig::with_nodes(2, 4 << 20)).unwrap();
    let sp = mm.new_space(VirtAddr(BASE), SLOTS * (64 << 10)).unwrap();
    let acc = sp.accessor();
    let mut words: BTreeMap<u64, u64> = BTreeMap::new();
    let mut orders = [None::<u8>; SLOTS];
    let m: Arc<dyn Migrator> = Arc::new(DefaultCopier);
    for chunk in data.chunks(4) {
        let [op, a, b, c] = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0), *chunk.get(3).unwrap_or(&0)];
        let slot = a as usize % SLOTS;
        let va = BASE + (slot * (64 << 10)) as u64;
        match op % 5 {
            0 if orders[slot].is_none() => {
                let order = b % 5;
                if sp.map_anon(VirtAddr(va), NodeId(c as u32 % 2), Order(order)).is_ok() {
                    orders[slot] = Some(order);
                }
            }
            1 => {
                if let Some(o) = orders[slot] {
                    let w = va + ((b as usize % (PAGE_SIZE << o)) & !7) as u64;
                    let v = u64::from(c) * 0x0101_0101;
                    acc.write_u64(VirtAddr(w), v).unwrap();
                    words.insert(w, v);
                }
            }
            2 => {
                let mode = [Mode::Async, Mode::SyncLight, Mode::Sync][b as usize % 3];
                let mut list = Vec::new();
                for (i, o) in orders.iter().enumerate() {
                    if o.is_some() && (c >> (i % 8)) & 1 == 1 {
                        let f = sp.folio_at(VirtAddr(BASE + (i * (64 << 10)) as u64)).unwrap();
                        if mm.isolate_folio(f).is_ok() {
                            list.push(f);
                        }
                    }
                }
                let node = NodeId(u32::from(a & 1));
                let mut alloc = alloc_on_node(node);
                let _ = migrate_pages(&mm, &mut list, &mut alloc, None, mode, Reason::Demotion).unwrap();
                mm.putback_movable_pages(&mut list);
            }
            3 => {
                if mm.offload().is_enabled() {
                    mm.offload().unregister(&m).unwrap();
                } else {
                    mm.offload().register(m.clone(), ReasonMask::ALL).unwrap();
                }
            }
            4 => {
                if let Some(f) = sp.folio_at(VirtAddr(va)) {
                    let pfn = Pfn(f.pfn().0 + u64::from(b) % mm.folio(f).nr_pages() as u64);
                    if c & 1 == 0 {
                        mm.inject_hwpoison(pfn).unwrap();
                    } else {
                        mm.clear_hwpoison(pfn).unwrap();
                    }
                }
            }
            _ => {}
        }
        for (&w, &v) in &words {
            match acc.read_u64(VirtAddr(w)) {
                Ok(got) => assert_eq!(got, v),
                Err(pagemig::Errno::HwPoison) => {}
                Err(e) => panic!("{e}"),
            }
        }
        for p in 0..sp.len_bytes() / PAGE_SIZE {
            assert!(!matches!(sp.pte(VirtAddr(BASE + (p * PAGE_SIZE) as u64)).unwrap(), Pte::Migration { .. }));
        }
    }
    if mm.offload().is_enabled() {
        mm.offload().unregister(&m).unwrap();
    }
    drop(acc);
    drop(sp);
    assert_eq!(mm.nr_free_pages_total(), mm.nr_pages_total());
});
