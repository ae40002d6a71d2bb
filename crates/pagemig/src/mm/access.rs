//! Accessors: a thread's view of an address space through its own TLB — the part of a CPU
//! that the migration protocol has to coordinate with. A read or write translates through
//! the cached entry or walks the page table; an access that meets a migration entry waits
//! until that folio's migration finishes (`migration_entry_wait`) and then retries.

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};

use std::sync::Arc;

use crate::Errno;

use super::folio::{pg, Folio};
use super::page_table::{AddressSpace, Pte};
use super::tlb::AccessorSlot;
use super::{Pfn, VirtAddr, PAGE_SHIFT, PAGE_SIZE};

const TLB_ENTRIES: usize = 64;

/// A handle that reads and writes one address space, caching translations like a TLB.
/// One per thread (it is `Send` but not `Sync`); dropping it leaves the space's
/// shootdown set.
pub struct Accessor {
    space: Arc<AddressSpace>,
    slot: Arc<AccessorSlot>,
    seen_gen: Cell<u64>,
    /// Direct-mapped TLB: (vpn + 1, pfn); vpn + 1 == 0 means empty.
    tlb: [Cell<(u64, u64)>; TLB_ENTRIES],
    nr_waits: Cell<u64>,
    wait_ns: Cell<u64>,
    /// Each wait's duration, if recording (for stall distributions).
    wait_samples: RefCell<Option<Vec<u64>>>,
}

/// The most wait samples an accessor keeps.
const MAX_WAIT_SAMPLES: usize = 1 << 20;

impl std::fmt::Debug for Accessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accessor")
            .field("space", &self.space.id)
            .finish()
    }
}

impl Accessor {
    pub(crate) fn new(space: Arc<AddressSpace>) -> Accessor {
        let (slot, gen) = space.tlb.register();
        Accessor {
            space,
            slot,
            seen_gen: Cell::new(gen),
            tlb: std::array::from_fn(|_| Cell::new((0, 0))),
            nr_waits: Cell::new(0),
            wait_ns: Cell::new(0),
            wait_samples: RefCell::new(None),
        }
    }

    /// The space accessed.
    pub fn space(&self) -> &Arc<AddressSpace> {
        &self.space
    }

    /// Number of times an access waited on a migration entry, and the total time waited.
    pub fn migration_waits(&self) -> (u64, u64) {
        (self.nr_waits.get(), self.wait_ns.get())
    }

    /// Starts keeping the duration of every migration-entry wait (up to 2^20 of them).
    pub fn record_waits(&self) {
        *self.wait_samples.borrow_mut() = Some(Vec::new());
    }

    /// Takes the wait durations recorded so far (ns), leaving recording on.
    pub fn take_wait_samples(&self) -> Vec<u64> {
        self.wait_samples
            .borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Begins an access: publishes `busy`, then acknowledges any newer shootdown.
    fn enter(&self) {
        let mut seen = self.seen_gen.get();
        if self.slot.enter(&self.space.tlb, &mut seen) {
            for e in &self.tlb {
                e.set((0, 0));
            }
            self.seen_gen.set(seen);
        }
    }

    fn exit(&self) {
        self.slot.exit();
    }

    /// Translates `vpn` inside an access; `Err(Some(pfn))` is a migration entry to wait on.
    fn translate(&self, vaddr: VirtAddr) -> Result<Pfn, Result<Pfn, Errno>> {
        let vpn = vaddr.0 >> PAGE_SHIFT;
        let e = &self.tlb[(vpn as usize) % TLB_ENTRIES];
        let (tag, pfn) = e.get();
        if tag == vpn + 1 {
            return Ok(Pfn(pfn));
        }
        let Some(i) = self.space.slot(vaddr) else {
            return Err(Err(Errno::Fault));
        };
        match self.space.pte_at(i) {
            Pte::Present { pfn } => {
                e.set((vpn + 1, pfn.0));
                Ok(pfn)
            }
            Pte::Migration { pfn } => Err(Ok(pfn)),
            Pte::None => Err(Err(Errno::Fault)),
        }
    }

    /// `migration_entry_wait()`: sleeps until the folio under migration is unlocked.
    fn migration_entry_wait(&self, pfn: Pfn) {
        let t = std::time::Instant::now();
        let mm = &self.space.mm;
        let head = mm.compound_head(pfn);
        mm.wait_on_flag(head, pg::LOCKED);
        let ns = t.elapsed().as_nanos() as u64;
        self.nr_waits.set(self.nr_waits.get() + 1);
        self.wait_ns.set(self.wait_ns.get() + ns);
        if let Some(v) = self.wait_samples.borrow_mut().as_mut() {
            if v.len() < MAX_WAIT_SAMPLES {
                v.push(ns);
            }
        }
    }

    /// One access confined to a single page.
    fn access_page(
        &self,
        vaddr: VirtAddr,
        f: &mut dyn FnMut(Pfn, usize) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let off = (vaddr.0 as usize) & (PAGE_SIZE - 1);
        loop {
            self.enter();
            match self.translate(vaddr) {
                Ok(pfn) => {
                    let r = f(pfn, off);
                    self.exit();
                    return r;
                }
                Err(Ok(pfn)) => {
                    self.exit();
                    self.migration_entry_wait(pfn);
                }
                Err(Err(e)) => {
                    self.exit();
                    return Err(e);
                }
            }
        }
    }

    fn for_each_page(
        &self,
        vaddr: VirtAddr,
        len: usize,
        mut f: impl FnMut(Pfn, usize, usize, usize) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let mut done = 0;
        while done < len {
            let va = VirtAddr(vaddr.0 + done as u64);
            let off = (va.0 as usize) & (PAGE_SIZE - 1);
            let n = (PAGE_SIZE - off).min(len - done);
            self.access_page(va, &mut |pfn, off| f(pfn, off, done, n))?;
            done += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `vaddr`. Each page's part is read atomically with respect
    /// to migration. `EFAULT` for an unmapped address, `EHWPOISON` for a poisoned page.
    pub fn read(&self, vaddr: VirtAddr, buf: &mut [u8]) -> Result<(), Errno> {
        let mm = &self.space.mm;
        let len = buf.len();
        self.for_each_page(vaddr, len, |pfn, off, done, n| {
            mm.page_read(pfn, off, &mut buf[done..done + n])
        })
    }

    /// Writes `buf` at `vaddr`; each page's part is written atomically with respect to
    /// migration.
    pub fn write(&self, vaddr: VirtAddr, buf: &[u8]) -> Result<(), Errno> {
        let mm = &self.space.mm;
        self.for_each_page(vaddr, buf.len(), |pfn, off, done, n| {
            mm.page_write(pfn, off, &buf[done..done + n]);
            Ok(())
        })
    }

    /// Reads a `u64` (must not cross a page).
    pub fn read_u64(&self, vaddr: VirtAddr) -> Result<u64, Errno> {
        let mut b = [0u8; 8];
        self.read(vaddr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a `u64`.
    pub fn write_u64(&self, vaddr: VirtAddr, v: u64) -> Result<(), Errno> {
        self.write(vaddr, &v.to_le_bytes())
    }

    /// The folio currently mapped at `vaddr`, if present.
    pub fn folio_at(&self, vaddr: VirtAddr) -> Option<Folio> {
        self.space.folio_at(vaddr)
    }
}

impl Drop for Accessor {
    fn drop(&mut self) {
        self.space.tlb.unregister(&self.slot);
    }
}
