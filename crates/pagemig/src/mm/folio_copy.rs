//! Reading, writing and copying folio bytes (`copy_mc_highpage`, `folio_mc_copy`): the
//! bounds-checked, machine-check-safe layer over the node arenas.

#![forbid(unsafe_code)]

use super::node::Node;
use super::{Folio, Memory, Pfn, PAGE_SIZE};
use crate::sync::Ordering;
use crate::Errno;

impl Memory {
    /// Reads within one page. `EHWPOISON` if the page is poisoned.
    pub fn page_read(&self, pfn: Pfn, off: usize, buf: &mut [u8]) -> Result<(), Errno> {
        assert!(off + buf.len() <= PAGE_SIZE);
        if self.page_is_hwpoison(pfn) {
            return Err(Errno::HwPoison);
        }
        let (a, o) = self.arena_off(pfn);
        a.read(o + off, buf);
        Ok(())
    }

    /// Writes within one page.
    pub fn page_write(&self, pfn: Pfn, off: usize, buf: &[u8]) {
        assert!(off + buf.len() <= PAGE_SIZE);
        let (a, o) = self.arena_off(pfn);
        a.write(o + off, buf);
    }

    /// Zero-fills every page of `folio` (`folio_zero_user`, what an anonymous fault does
    /// before a program sees a new page): a frame keeps the bytes of its last use otherwise.
    pub fn folio_zero(&self, folio: Folio) {
        static ZERO: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
        for k in 0..self.folio(folio).nr_pages() as u64 {
            self.page_write(Pfn(folio.0 .0 + k), 0, &ZERO);
        }
    }

    /// Copies `len` bytes at byte offset `off` of folio `src` to the same offset of `dst`,
    /// machine-check safe: if a source page in the range is poisoned, the bytes before it
    /// are copied and `EHWPOISON` is returned (`copy_mc_to_kernel`). The stores stream:
    /// see [`crate::copy::store_fence`] before handing the bytes to another thread.
    pub fn copy_folio_range(
        &self,
        dst: Folio,
        src: Folio,
        off: usize,
        len: usize,
    ) -> Result<(), Errno> {
        let s = self.folio(src);
        let size = s.size_bytes();
        if off
            .checked_add(len)
            .is_none_or(|end| end > size || end > self.folio(dst).size_bytes())
        {
            return Err(Errno::Inval);
        }
        let (sn, s_byte) = self.node_byte(src.0);
        let (dn, d_byte) = self.node_byte(dst.0);
        Self::mc_copy(dn, d_byte + off, sn, s_byte + off, len, s.has_hwpoison())
    }

    pub(in crate::mm) fn node_byte(&self, pfn: Pfn) -> (&Node, usize) {
        let (n, i) = self.node_idx(pfn);
        (n, i * PAGE_SIZE)
    }

    /// The machine-check-safe copy of `len` bytes between two in-bounds node ranges: if a
    /// source page is poisoned, the bytes before it are copied and `EHWPOISON` returned.
    /// `may_be_poisoned = false` (no `PG_has_hwpoisoned`) skips the scan.
    pub(in crate::mm) fn mc_copy(
        dn: &Node,
        d_byte: usize,
        sn: &Node,
        s_byte: usize,
        len: usize,
        may_be_poisoned: bool,
    ) -> Result<(), Errno> {
        let mut copy_len = len;
        if may_be_poisoned {
            let poisoned = (s_byte / PAGE_SIZE..(s_byte + len).div_ceil(PAGE_SIZE))
                .find(|&p| sn.hwpoison[p / 64].load(Ordering::Acquire) & (1 << (p % 64)) != 0);
            if let Some(p) = poisoned {
                copy_len = (p * PAGE_SIZE).saturating_sub(s_byte);
            }
        }
        if copy_len > 0 {
            dn.arena.copy_from(d_byte, &sn.arena, s_byte, copy_len);
        }
        if copy_len < len {
            Err(Errno::HwPoison)
        } else {
            Ok(())
        }
    }

    /// `folio_mc_copy(dst, src)`: copies a whole folio, machine-check safe.
    pub fn folio_mc_copy(&self, dst: Folio, src: Folio) -> Result<(), Errno> {
        let size = self.folio(src).size_bytes();
        self.copy_folio_range(dst, src, 0, size)
    }

    /// Raw copy between two physically addressed ranges (`dst_pfn`/`src_pfn` plus byte
    /// offset), for DMA-style engines: every page in both ranges must exist and the ranges
    /// must stay within one node each. Machine-check safe like [`Memory::copy_folio_range`].
    pub fn copy_phys(
        &self,
        dst: Pfn,
        dst_off: usize,
        src: Pfn,
        src_off: usize,
        len: usize,
    ) -> Result<(), Errno> {
        let (Some(si), Some(di)) = (self.node_index_of(src), self.node_index_of(dst)) else {
            return Err(Errno::Fault);
        };
        let (sn, dn) = (&self.nodes[si], &self.nodes[di]);
        let s_byte = (src.0 - sn.base_pfn) as usize * PAGE_SIZE + src_off;
        let d_byte = (dst.0 - dn.base_pfn) as usize * PAGE_SIZE + dst_off;
        if s_byte + len > sn.arena.len_bytes() || d_byte + len > dn.arena.len_bytes() {
            return Err(Errno::Fault);
        }
        Self::mc_copy(dn, d_byte, sn, s_byte, len, true)
    }

    /// A checksum of a folio's bytes (ignores poison).
    pub fn folio_checksum(&self, folio: Folio) -> u64 {
        let size = self.folio(folio).size_bytes();
        let (a, o) = self.arena_off(folio.0);
        a.checksum(o, size)
    }

    /// Fills a folio's bytes directly (setup for benchmarks; not a migration-aware access).
    pub fn folio_fill(&self, folio: Folio, seed: u64) {
        let size = self.folio(folio).size_bytes();
        let (a, o) = self.arena_off(folio.0);
        let mut buf = vec![0u8; PAGE_SIZE];
        for p in 0..size / PAGE_SIZE {
            let mut x = seed ^ ((p as u64) << 32) ^ folio.0 .0;
            for w in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            a.write(o + p * PAGE_SIZE, &buf);
        }
    }
}
