//! The benchmark's workload: `total` bytes of folios of one size, filled and checksummed,
//! on the built-in backend's node 0 or in a live region of this process.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pagemig::checksum::checksum_words as words_checksum;
use pagemig::mm::{
    AddressSpace, File, FileKind, Folio, Memory, MigrateFolioOp, NodeId, Order, VirtAddr, PAGE_SIZE,
};
use pagemig_live::{Live, LiveRegion, RegionConfig};

use super::{BenchError, FolioKind, SPACE_BASE};

pub(crate) struct Workload {
    pub(crate) space: Arc<AddressSpace>,
    /// The live region, when the folios are this process's memory.
    pub(crate) region: Option<Arc<LiveRegion>>,
    pub(crate) base: u64,
    pub(crate) folio_size: usize,
    pub(crate) nr_folios: usize,
    pub(crate) sums: Vec<u64>,
    pub(crate) node: NodeId,
    /// The file whose page cache the folios are (`--kind file|shmem`), mapped into
    /// `space`; dropped after it (which truncates it).
    #[expect(dead_code, reason = "held for its drop, which truncates the file")]
    pub(crate) file: Option<File>,
}

impl Workload {
    /// `total` bytes of folios of `folio_size` on node `node`, filled and checksummed:
    /// anonymous folios, or a file's (or shmem's) page cache mapped shared.
    pub(crate) fn new(
        mm: &Arc<Memory>,
        folio_size: usize,
        total: usize,
        node: NodeId,
        kind: FolioKind,
    ) -> Result<Workload, BenchError> {
        let order = Order::from_bytes(folio_size).expect("validated folio size");
        let nr_folios = total / folio_size;
        let space = mm.new_space(VirtAddr(SPACE_BASE), total)?;
        let file = match kind {
            FolioKind::Anon => None,
            FolioKind::File => Some(mm.create_file(FileKind::Regular(MigrateFolioOp::Filemap))),
            FolioKind::Shmem => Some(mm.create_file(FileKind::Shmem)),
        };
        let mut sums = Vec::with_capacity(nr_folios);
        let per = (folio_size / PAGE_SIZE) as u64;
        for i in 0..nr_folios {
            let f = match &file {
                None => {
                    let va = VirtAddr(SPACE_BASE + (i * folio_size) as u64);
                    space.map_anon(va, node, order)?
                }
                Some(file) => file.add_folio(i as u64 * per, node, order)?,
            };
            mm.folio_fill(f, 0x5eed ^ i as u64);
            sums.push(mm.folio_checksum(f));
        }
        if let Some(file) = &file {
            space.map_file(VirtAddr(SPACE_BASE), file, 0, total / PAGE_SIZE)?;
        }
        Ok(Workload {
            file,
            space,
            region: None,
            base: SPACE_BASE,
            folio_size,
            nr_folios,
            sums,
            node,
        })
    }

    /// A live region of `total` bytes, populated from `node` and filled by this thread.
    pub(crate) fn new_live(
        live: &Live,
        folio_size: usize,
        total: usize,
        batch_moves: bool,
        node: NodeId,
    ) -> Result<Workload, BenchError> {
        let order = Order::from_bytes(folio_size).expect("validated folio size");
        let mut cfg = RegionConfig::new(total, order.0);
        cfg.batch_moves = batch_moves;
        cfg.placement = node;
        let region = Arc::new(live.region(cfg)?);
        region.populate()?;
        let nr_folios = total / folio_size;
        let per = folio_size / 8;
        let words = region.words();
        let mut sums = Vec::with_capacity(nr_folios);
        for i in 0..nr_folios {
            let w = &words[i * per..(i + 1) * per];
            let seed = 0x5eed ^ i as u64;
            for (j, x) in w.iter().enumerate() {
                x.store(
                    seed ^ (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    Ordering::Relaxed,
                );
            }
            sums.push(words_checksum(w));
        }
        Ok(Workload {
            space: region.space().clone(),
            base: region.addr() as u64,
            region: Some(region),
            folio_size,
            nr_folios,
            sums,
            node,
            file: None,
        })
    }

    pub(crate) fn folio(&self, i: usize) -> Option<Folio> {
        self.space
            .folio_at(VirtAddr(self.base + (i * self.folio_size) as u64))
    }

    pub(crate) fn checksum(&self, mm: &Memory, i: usize) -> u64 {
        match &self.region {
            Some(r) => {
                let per = self.folio_size / 8;
                words_checksum(&r.words()[i * per..(i + 1) * per])
            }
            None => mm.folio_checksum(self.folio(i).expect("workload folio mapped")),
        }
    }
}
