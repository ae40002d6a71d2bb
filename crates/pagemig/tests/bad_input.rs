//! Every public entry point rejects invalid input with a typed error and no side effect.

mod common;

use common::*;
use pagemig::migrate::{migrate_folios_to_node, MigrateError, Mode, Reason};
use pagemig::mm::{
    Memory, MemoryConfig, MmError, NodeConfig, NodeId, Order, Pfn, Pte, VirtAddr, PAGE_SIZE,
};
use pagemig::Errno;

const MB: usize = 1 << 20;

fn snapshot(mm: &Memory) -> (usize, pagemig::mm::VmEventCounts) {
    (mm.nr_free_pages_total(), mm.vm_events())
}

#[test]
fn memory_and_space_configuration_errors() {
    assert!(matches!(
        Memory::new(MemoryConfig::default()),
        Err(MmError::InvalidConfig(_))
    ));
    let zero = MemoryConfig {
        nodes: vec![NodeConfig {
            capacity_bytes: 0,
            max_bytes: None,
            host_node: None,
            no_huge_pages: false,
        }],
        ..Default::default()
    };
    assert!(matches!(Memory::new(zero), Err(MmError::InvalidConfig(_))));
    let mm = memory(4 * MB);
    let before = snapshot(&mm);
    assert!(
        matches!(
            mm.new_space(VirtAddr(BASE), 0),
            Err(MmError::InvalidConfig(_))
        ),
        "zero-length region"
    );
    assert!(matches!(
        mm.new_space(VirtAddr(BASE), 1000),
        Err(MmError::InvalidConfig(_))
    ));
    assert!(matches!(
        mm.new_space(VirtAddr(BASE + 12), PAGE_SIZE),
        Err(MmError::Misaligned { .. })
    ));
    assert!(mm.set_batch_pages(0).is_err());
    assert_eq!(mm.batch_pages(), 512);
    assert_eq!(snapshot(&mm), before);
}

#[test]
fn mapping_errors_change_nothing() {
    let mm = memory(4 * MB);
    let sp = space(&mm, 4 * MB);
    let before = snapshot(&mm);
    assert_eq!(
        sp.map_anon(VirtAddr(BASE + 4096), NodeId(0), Order(1)),
        Err(MmError::Misaligned {
            vaddr: VirtAddr(BASE + 4096),
            align_bytes: 8192
        })
    );
    assert_eq!(
        sp.map_anon(VirtAddr(BASE), NodeId(7), Order(0)),
        Err(MmError::NoSuchNode(NodeId(7)))
    );
    assert_eq!(
        sp.map_anon(VirtAddr(BASE), NodeId(0), Order(10)),
        Err(MmError::BadOrder(10))
    );
    assert!(matches!(
        sp.map_anon(VirtAddr(BASE - 4096), NodeId(0), Order(0)),
        Err(MmError::OutOfRange { .. })
    ));
    assert!(matches!(
        sp.map_anon(VirtAddr(BASE + 4 * MB as u64), NodeId(0), Order(0)),
        Err(MmError::OutOfRange { .. })
    ));
    assert_eq!(
        sp.unmap(VirtAddr(BASE)),
        Err(MmError::NotMapped {
            vaddr: VirtAddr(BASE)
        })
    );
    assert_eq!(snapshot(&mm), before);
    assert_eq!(sp.pte(VirtAddr(BASE)).unwrap(), Pte::None);
    let f = sp.map_anon(VirtAddr(BASE), NodeId(0), Order(0)).unwrap();
    assert_eq!(
        sp.map_anon(VirtAddr(BASE), NodeId(0), Order(0)),
        Err(MmError::AlreadyMapped {
            vaddr: VirtAddr(BASE)
        })
    );
    assert_eq!(mm.folio(f).mapcount(), 1);
    let acc = sp.accessor();
    let mut b = [0u8; 8];
    assert_eq!(
        acc.read(VirtAddr(BASE + PAGE_SIZE as u64), &mut b),
        Err(Errno::Fault),
        "unmapped"
    );
    assert_eq!(
        acc.read(VirtAddr(BASE + 4 * MB as u64), &mut b),
        Err(Errno::Fault),
        "outside"
    );
    drop(acc);
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn isolation_and_poison_reject_what_is_not_a_folio() {
    let mm = memory(4 * MB);
    let sp = space(&mm, 4 * MB);
    let big = sp.map_anon(VirtAddr(BASE), NodeId(0), Order(2)).unwrap();
    let before = snapshot(&mm);
    let tail = pagemig::mm::Folio(Pfn(big.pfn().0 + 1));
    assert!(
        matches!(mm.isolate_folio(tail), Err(MmError::NotAFolio(_))),
        "a tail page"
    );
    let free = pagemig::mm::Folio(Pfn(big.pfn().0 + 64));
    assert!(
        matches!(mm.isolate_folio(free), Err(MmError::NotAFolio(_))),
        "a free frame"
    );
    assert!(matches!(
        mm.isolate_folio(pagemig::mm::Folio(Pfn(u64::MAX >> 12))),
        Err(MmError::NotAFolio(_))
    ));
    assert_eq!(mm.putback_folio(big), Err(MmError::Busy), "not isolated");
    assert!(mm.inject_hwpoison(Pfn(u64::MAX >> 12)).is_err());
    assert_eq!(snapshot(&mm), before);
    assert_eq!(mm.folio(big).ref_count(), 1);
    mm.isolate_folio(big).unwrap();
    assert_eq!(mm.isolate_folio(big), Err(MmError::Busy), "isolated twice");
    mm.putback_folio(big).unwrap();
    drop(sp);
    assert_frames_balanced(&mm);
}

#[test]
fn migrate_to_node_rejects_unknown_and_same_node() {
    let mm = memory(4 * MB);
    let sp = space(&mm, MB);
    let folios = map_filled(&sp, 3, 0, 31);
    let mut list = isolate_all(&mm, &folios);
    let before = snapshot(&mm);
    assert_eq!(
        migrate_folios_to_node(&mm, &mut list, NodeId(5), Mode::Sync, Reason::Syscall).unwrap_err(),
        MigrateError::NoSuchNode(NodeId(5))
    );
    assert_eq!(
        migrate_folios_to_node(&mm, &mut list, NodeId(0), Mode::Sync, Reason::Syscall).unwrap_err(),
        MigrateError::SameNode {
            pfn: folios[0].pfn().0,
            node: NodeId(0)
        }
    );
    assert_eq!(snapshot(&mm), before);
    assert_eq!(list, folios);
    let res =
        migrate_folios_to_node(&mm, &mut list, NodeId(1), Mode::Sync, Reason::Syscall).unwrap();
    assert_eq!(res.rc, Ok(0));
    check_filled(&sp, 3, 0, 31);
    drop(sp);
    assert_frames_balanced(&mm);
}
