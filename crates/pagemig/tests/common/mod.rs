//! Shared fixtures for the integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pagemig::migrate::{alloc_on_node, migrate_pages, MigratePagesResult, Mode, Reason};
use pagemig::mm::{
    AddressSpace, FaultHooks, Folio, Memory, MemoryConfig, MovableOps, NodeId, Order, VirtAddr,
    PAGE_SIZE,
};
use pagemig::offload::{CopyBatch, Migrator};
use pagemig::Errno;

pub const BASE: u64 = 0x10_0000_0000;

pub fn memory(capacity_bytes: usize) -> Arc<Memory> {
    with_test_pipeline(Memory::new(MemoryConfig::with_nodes(2, capacity_bytes)).unwrap())
}

/// `PAGEMIG_TEST_PIPELINE=BYTES[,overlap]` runs the suite over the pipelined batch copy
/// with sub-batches from BYTES up, in turn or overlapped by a helper thread (CI runs the
/// suites each way; `4096`: one 4K folio, then two, four, ...). Unset: the series' path,
/// the default.
pub fn with_test_pipeline(mm: Arc<Memory>) -> Arc<Memory> {
    if let Some(cfg) = test_pipeline() {
        mm.offload().set_pipeline(Some(cfg));
    }
    mm
}

/// The pipeline `PAGEMIG_TEST_PIPELINE` asks for.
pub fn test_pipeline() -> Option<pagemig::offload::PipelineConfig> {
    let v = std::env::var("PAGEMIG_TEST_PIPELINE").ok()?;
    let (bytes, overlap) = match v.split_once(',') {
        Some((b, "overlap")) => (b, true),
        None => (v.as_str(), false),
        Some(_) => panic!("PAGEMIG_TEST_PIPELINE is BYTES or BYTES,overlap"),
    };
    Some(pagemig::offload::PipelineConfig {
        first_sub_batch_bytes: bytes
            .parse()
            .expect("PAGEMIG_TEST_PIPELINE starts with the first sub-batch's size in bytes"),
        overlap,
    })
}

pub fn memory_with(
    capacity_bytes: usize,
    hooks: Option<Arc<dyn FaultHooks>>,
    ops: Option<Arc<dyn MovableOps>>,
) -> Arc<Memory> {
    let mut c = MemoryConfig::with_nodes(2, capacity_bytes);
    c.hooks = hooks;
    c.movable_ops = ops;
    with_test_pipeline(Memory::new(c).unwrap())
}

pub fn space(mm: &Arc<Memory>, len: usize) -> Arc<AddressSpace> {
    mm.new_space(VirtAddr(BASE), len).unwrap()
}

/// Deterministic byte pattern of page `p` of a region tagged `tag`.
pub fn pattern(tag: u64, p: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (p as u64 + 1);
    (0..PAGE_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Maps `n` anonymous folios of `order` on node 0 back to back from BASE and fills them
/// through an accessor.
pub fn map_filled(space: &Arc<AddressSpace>, n: usize, order: u8, tag: u64) -> Vec<Folio> {
    let acc = space.accessor();
    let size = PAGE_SIZE << order;
    (0..n)
        .map(|i| {
            let va = VirtAddr(BASE + (i * size) as u64);
            let f = space.map_anon(va, NodeId(0), Order(order)).unwrap();
            for p in 0..(1 << order) {
                acc.write(
                    VirtAddr(va.0 + (p * PAGE_SIZE) as u64),
                    &pattern(tag, i * (1 << order) + p),
                )
                .unwrap();
            }
            f
        })
        .collect()
}

/// Checks every page of the first `n` folios of `order` reads back its pattern.
pub fn check_filled(space: &Arc<AddressSpace>, n: usize, order: u8, tag: u64) {
    let acc = space.accessor();
    let mut buf = vec![0u8; PAGE_SIZE];
    for page in 0..n << order {
        acc.read(VirtAddr(BASE + (page * PAGE_SIZE) as u64), &mut buf)
            .unwrap();
        assert!(buf == pattern(tag, page), "page {page} lost its content");
    }
}

pub fn isolate_all(mm: &Memory, folios: &[Folio]) -> Vec<Folio> {
    for &f in folios {
        mm.isolate_folio(f).unwrap();
    }
    folios.to_vec()
}

pub fn migrate_to(
    mm: &Memory,
    list: &mut Vec<Folio>,
    node: u32,
    mode: Mode,
    reason: Reason,
) -> MigratePagesResult {
    let mut alloc = alloc_on_node(NodeId(node));
    migrate_pages(mm, list, &mut alloc, None, mode, reason).unwrap()
}

pub fn node_at(space: &AddressSpace, va: u64) -> u32 {
    let f = space.folio_at(VirtAddr(va)).expect("mapped");
    space.memory().folio(f).node().0
}

/// Frame accounting: once every space is gone, every frame is free again.
pub fn assert_frames_balanced(mm: &Memory) {
    assert_eq!(
        mm.nr_free_pages_total(),
        mm.nr_pages_total(),
        "frames leaked"
    );
}

/// A migrator that copies with the default copier and counts folios copied.
#[derive(Default)]
pub struct CountingCopier {
    pub nr_calls: AtomicUsize,
    pub nr_copied: AtomicUsize,
}

impl Migrator for CountingCopier {
    fn name(&self) -> &str {
        "counting"
    }
    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        self.nr_calls.fetch_add(1, Ordering::SeqCst);
        for i in 0..batch.len() {
            batch.copy_folio(i)?;
            batch.mark_copied(i);
            self.nr_copied.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Copies the first half of each batch, marks those, then fails.
#[derive(Default)]
pub struct HalfCopier {
    pub nr_copied: AtomicUsize,
}

impl Migrator for HalfCopier {
    fn name(&self) -> &str {
        "half"
    }
    fn offload_copy(&self, batch: &CopyBatch<'_>) -> Result<(), Errno> {
        for i in 0..batch.len() / 2 {
            batch.copy_folio(i)?;
            batch.mark_copied(i);
            self.nr_copied.fetch_add(1, Ordering::SeqCst);
        }
        Err(Errno::Io)
    }
}
