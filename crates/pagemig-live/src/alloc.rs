//! [`LiveAlloc`]: a global allocator that puts a Rust program's large allocations in live
//! regions, so that pagemig can migrate them while the program runs:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: pagemig_live::LiveAlloc = pagemig_live::LiveAlloc::new(1 << 20);
//!
//! let v = vec![7u64; 4 << 20]; // 32 MiB: a live region, on node 0
//! ALLOC.migrate_all(pagemig::mm::NodeId(1)).unwrap();
//! assert!(v.iter().all(|&x| x == 7));
//! ```
//!
//! It is also an [`allocator_api2::alloc::Allocator`] (the stable form of the standard
//! library's `Allocator`, the one `hashbrown` and `allocator_api2`'s `Vec` and `Box`
//! take), so one collection can be put in live regions without making the allocator
//! global: `allocator_api2::vec::Vec::with_capacity_in(n, &ALLOC)`.
//!
//! # Contract
//! Allocations of at least the threshold, aligned to at most 2 MiB, become regions of a
//! [`Live`] made at the first one (two nodes with pools that grow on demand, or the host's
//! NUMA nodes); all others, and all of them when no `Live` can be made, come from
//! [`std::alloc::System`]. `dealloc` frees a region only for a pointer it handed out as
//! one. The backend's own allocations, and those made while a region is being made or
//! freed, never become regions (a thread-local flag), so the allocator never re-enters
//! itself.

#![allow(
    unsafe_code,
    reason = "GlobalAlloc is an unsafe trait; its contract is met as stated above"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use allocator_api2::alloc::{AllocError, Allocator};

use pagemig::mm::{Memory, MemoryConfig, NodeConfig, NodeId, Pte, VirtAddr, PAGE_SIZE};

use crate::{Live, LiveConfig, LiveError, LiveRegion, RegionConfig, MPOL_MF_MOVE};

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as the backend's own (its allocations never become regions).
pub(crate) fn backend_thread() {
    INSIDE.with(|c| c.set(true));
}

struct Inside(bool);

impl Inside {
    fn enter() -> Inside {
        Inside(INSIDE.with(|c| c.replace(true)))
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let was = self.0;
        INSIDE.with(|c| c.set(was));
    }
}

struct State {
    live: Live,
    regions: Mutex<BTreeMap<usize, LiveRegion>>,
}

/// A global allocator over live regions (see the module documentation).
pub struct LiveAlloc {
    threshold: usize,
    state: OnceLock<Result<State, LiveError>>,
}

impl LiveAlloc {
    /// Allocations of `threshold` bytes and more (at least one page) become regions.
    pub const fn new(threshold: usize) -> LiveAlloc {
        LiveAlloc {
            threshold: if threshold < PAGE_SIZE {
                PAGE_SIZE
            } else {
                threshold
            },
            state: OnceLock::new(),
        }
    }

    fn state(&self) -> Option<&State> {
        self.state
            .get_or_init(|| {
                let _g = Inside::enter();
                make_state()
            })
            .as_ref()
            .ok()
    }

    /// The live backend, once the first large allocation made it (`None` before, or when
    /// it could not be made: see [`LiveAlloc::error`]).
    pub fn live(&self) -> Option<&Live> {
        self.state.get()?.as_ref().ok().map(|s| &s.live)
    }

    /// Why large allocations are not regions, if they are not.
    pub fn error(&self) -> Option<&LiveError> {
        self.state.get()?.as_ref().err()
    }

    /// Base pages of the regions present now, per node.
    pub fn pages_per_node(&self) -> Vec<usize> {
        let Some(st) = self.state.get().and_then(|s| s.as_ref().ok()) else {
            return Vec::new();
        };
        let _g = Inside::enter();
        let regions = pagemig::sync::lock(&st.regions);
        let mut per = vec![0; st.live.memory().nodes().len()];
        for r in regions.values() {
            for (t, n) in per.iter_mut().zip(r.pages_per_node()) {
                *t += n;
            }
        }
        per
    }

    /// Migrates every page of every region to `to` (`move_pages(2)` per region, 512
    /// folios at a time). Returns the base pages migrated. Allocation and freeing of
    /// regions wait meanwhile.
    pub fn migrate_all(&self, to: NodeId) -> Result<usize, LiveError> {
        let Some(st) = self.state() else {
            return Err(LiveError::InvalidConfig(
                "no live backend: large allocations are not regions".into(),
            ));
        };
        let _g = Inside::enter();
        st.live
            .memory()
            .node(to)
            .map_err(|_| LiveError::InvalidConfig(format!("no node {}", to.0)))?;
        let regions = pagemig::sync::lock(&st.regions);
        let mut moved = 0;
        for r in regions.values() {
            let fb = r.folio_bytes();
            let pages: Vec<usize> = (r.addr()..r.addr() + r.len())
                .step_by(fb)
                .filter(|&a| matches!(r.space().pte(VirtAddr(a as u64)), Ok(Pte::Present { .. })))
                .collect();
            for chunk in pages.chunks(512) {
                let mut status = vec![i32::MIN; chunk.len()];
                let nodes = vec![to.0 as i32; chunk.len()];
                r.move_pages(chunk, Some(&nodes), &mut status, MPOL_MF_MOVE)
                    .map_err(|e| LiveError::InvalidConfig(format!("move_pages: {e:?}")))?;
                moved += status.iter().filter(|&&s| s == to.0 as i32).count() * (fb / PAGE_SIZE);
            }
        }
        Ok(moved)
    }
}

fn make_state() -> Result<State, LiveError> {
    let hosts = pagemig::mm::numa::host_topology();
    let total = pagemig::mm::numa::host_mem_total_bytes().unwrap_or(4 << 30);
    let node = |host: Option<u32>, max: usize| NodeConfig {
        capacity_bytes: 16 << 20,
        max_bytes: Some(max),
        host_node: host,
        no_huge_pages: true,
    };
    let nodes = if hosts.len() > 1 {
        hosts
            .iter()
            .map(|h| node(Some(h.id), h.mem_total_bytes as usize))
            .collect()
    } else {
        vec![node(None, total), node(None, total)]
    };
    let mm = Memory::new(MemoryConfig {
        nodes,
        ..Default::default()
    })?;
    // Kernel-mode faults where allowed (system calls on the memory wait for a migration
    // instead of failing with EFAULT); else user mode only.
    let live = Live::new(
        &mm,
        LiveConfig {
            user_mode_only: false,
            ..Default::default()
        },
    )
    .or_else(|_| Live::new(&mm, LiveConfig::default()))?;
    Ok(State {
        live,
        regions: Mutex::new(BTreeMap::new()),
    })
}

// SAFETY: `alloc` returns either System's memory for the layout or a region's first address:
// a fresh mapping of at least `layout.size()` bytes (rounded up to pages), 2 MiB aligned
// (so aligned for any `layout.align()` up to 2 MiB, the only ones sent there), readable and
// writable, zero, and used by nothing else until `dealloc`. `dealloc` frees a region only
// for the address it was handed out at, and gives everything else back to System.
unsafe impl GlobalAlloc for LiveAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(p) = self.region(layout) {
            return p;
        }
        // SAFETY: the caller's layout (GlobalAlloc's contract).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // A region is zero: its pages are zeroed at first touch.
        if let Some(p) = self.region(layout) {
            return p;
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= self.threshold && !INSIDE.with(|c| c.get()) {
            if let Some(st) = self.state.get().and_then(|s| s.as_ref().ok()) {
                let _g = Inside::enter();
                let r = pagemig::sync::lock(&st.regions).remove(&(ptr as usize));
                if let Some(r) = r {
                    drop(r);
                    return;
                }
            }
        }
        // SAFETY: not a region: System's, with this layout (the caller's contract).
        unsafe { System.dealloc(ptr, layout) }
    }
}

// SAFETY: `allocate` returns, for a zero-sized layout, a dangling pointer aligned to the
// layout (never dereferenced, never freed), and otherwise what `GlobalAlloc::alloc` returns
// above (a region of at least the rounded-up size, or System's block of exactly the size),
// with the length that block really has, so every size between the layout's and that length
// "fits" it; `deallocate` sends every block back through `GlobalAlloc::dealloc`, which tells
// a region from System's by its address and size (a fitting size is at least the requested
// one, so a region's is still at least the threshold). The blocks stay valid until
// deallocated and `LiveAlloc` is not moved while they live (a `&LiveAlloc` holds it), so
// clones of the reference are the same allocator.
unsafe impl Allocator for LiveAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.allocate_with(layout, false)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.allocate_with(layout, true)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: `ptr` was allocated here with a layout that `layout` fits (the
            // caller's contract), by `GlobalAlloc::alloc` or `alloc_zeroed`.
            unsafe { GlobalAlloc::dealloc(self, ptr.as_ptr(), layout) }
        }
    }
}

impl LiveAlloc {
    fn allocate_with(&self, layout: Layout, zeroed: bool) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            let dangling = NonNull::new(std::ptr::without_provenance_mut::<u8>(layout.align()))
                .ok_or(AllocError)?;
            return Ok(NonNull::slice_from_raw_parts(dangling, 0));
        }
        // Only a layout that may become a region is looked up afterwards (the others are
        // System's, and take no lock here).
        let may_be_region = self.may_be_region(layout);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe {
            if zeroed {
                GlobalAlloc::alloc_zeroed(self, layout)
            } else {
                GlobalAlloc::alloc(self, layout)
            }
        };
        let p = NonNull::new(p).ok_or(AllocError)?;
        // A region's length only where it is one (System's block otherwise: the size).
        let len = if may_be_region && self.is_region(p.as_ptr()) {
            layout.size().next_multiple_of(PAGE_SIZE)
        } else {
            layout.size()
        };
        Ok(NonNull::slice_from_raw_parts(p, len))
    }

    fn is_region(&self, p: *mut u8) -> bool {
        let Some(st) = self.state.get().and_then(|s| s.as_ref().ok()) else {
            return false;
        };
        let _g = Inside::enter();
        pagemig::sync::lock(&st.regions).contains_key(&(p as usize))
    }

    /// Whether an allocation of `layout` on this thread becomes a region (if the backend can
    /// make one): at least the threshold, aligned to at most 2 MiB, not the backend's own.
    fn may_be_region(&self, layout: Layout) -> bool {
        layout.size() >= self.threshold && layout.align() <= 2 << 20 && !INSIDE.with(|c| c.get())
    }

    fn region(&self, layout: Layout) -> Option<*mut u8> {
        if !self.may_be_region(layout) {
            return None;
        }
        let st = self.state()?;
        let _g = Inside::enter();
        let len = layout.size().checked_next_multiple_of(PAGE_SIZE)?;
        let r = st.live.region(RegionConfig {
            fault_around: 64,
            ..RegionConfig::new(len, 0)
        });
        let r = r.ok()?;
        let addr = r.addr();
        pagemig::sync::lock(&st.regions).insert(addr, r);
        Some(addr as *mut u8)
    }
}
