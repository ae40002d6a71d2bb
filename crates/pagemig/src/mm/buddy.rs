//! The buddy frame allocator of one node — the analogue of `mm/page_alloc.c`'s
//! `__rmqueue_smallest()` / `__free_one_page()` for orders `0..=MAX_PAGE_ORDER`.
//!
//! Free blocks sit on per-order intrusive doubly linked lists threaded through two arrays
//! indexed by frame number (the `lru` links of `struct page`), so allocation, freeing and
//! merging are O(1) per order. Frame numbers here are node-local.

#![forbid(unsafe_code)]

/// The largest order the allocator hands out: 2 MiB with 4 KiB pages (a PMD).
pub const MAX_PAGE_ORDER: u8 = 9;
const NR_ORDERS: usize = MAX_PAGE_ORDER as usize + 1;
const NIL: u32 = u32::MAX;
const NOT_FREE: u8 = u8::MAX;

/// A buddy allocator over `nr_frames` frames (a multiple of `1 << MAX_PAGE_ORDER`).
#[derive(Debug)]
pub struct Buddy {
    next: Vec<u32>,
    prev: Vec<u32>,
    /// For the head frame of a free block: its order; otherwise `NOT_FREE`.
    free_order: Vec<u8>,
    heads: [u32; NR_ORDERS],
    nr_free_blocks: [usize; NR_ORDERS],
    nr_free_pages: usize,
}

/// Why a free was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuddyError {
    /// The block is already free (a double free).
    #[error("double free of frame {frame} (order {order})")]
    DoubleFree {
        /// node-local frame number
        frame: u32,
        /// order passed to free
        order: u8,
    },
    /// The frame number or order is out of range or misaligned.
    #[error("bad free of frame {frame} (order {order})")]
    BadFree {
        /// node-local frame number
        frame: u32,
        /// order passed to free
        order: u8,
    },
}

impl Buddy {
    /// An allocator with every frame free.
    pub fn new(nr_frames: usize) -> Buddy {
        assert!(nr_frames % (1 << MAX_PAGE_ORDER) == 0 && nr_frames < NIL as usize);
        let mut b = Buddy {
            next: vec![NIL; nr_frames],
            prev: vec![NIL; nr_frames],
            free_order: vec![NOT_FREE; nr_frames],
            heads: [NIL; NR_ORDERS],
            nr_free_blocks: [0; NR_ORDERS],
            nr_free_pages: 0,
        };
        for f in (0..nr_frames).step_by(1 << MAX_PAGE_ORDER).rev() {
            b.push(f as u32, MAX_PAGE_ORDER);
        }
        b.nr_free_pages = nr_frames;
        b
    }

    /// Grows to `nr_frames` frames (a multiple of `1 << MAX_PAGE_ORDER`, at least the
    /// current count): the new frames are free, in max-order blocks (`online_pages`).
    pub fn grow(&mut self, nr_frames: usize) {
        let old = self.next.len();
        assert!(
            nr_frames >= old && nr_frames % (1 << MAX_PAGE_ORDER) == 0 && nr_frames < NIL as usize
        );
        self.next.resize(nr_frames, NIL);
        self.prev.resize(nr_frames, NIL);
        self.free_order.resize(nr_frames, NOT_FREE);
        for f in (old..nr_frames).step_by(1 << MAX_PAGE_ORDER).rev() {
            self.push(f as u32, MAX_PAGE_ORDER);
        }
        self.nr_free_pages += nr_frames - old;
    }

    /// Number of frames managed.
    pub fn nr_frames(&self) -> usize {
        self.next.len()
    }

    /// Free base pages.
    pub fn nr_free_pages(&self) -> usize {
        self.nr_free_pages
    }

    /// Free blocks of each order (like `/proc/buddyinfo`).
    pub fn buddyinfo(&self) -> [usize; NR_ORDERS] {
        self.nr_free_blocks
    }

    fn push(&mut self, f: u32, order: u8) {
        let o = order as usize;
        let head = self.heads[o];
        self.next[f as usize] = head;
        self.prev[f as usize] = NIL;
        if head != NIL {
            self.prev[head as usize] = f;
        }
        self.heads[o] = f;
        self.free_order[f as usize] = order;
        self.nr_free_blocks[o] += 1;
    }

    fn unlink(&mut self, f: u32) {
        let o = self.free_order[f as usize] as usize;
        let (n, p) = (self.next[f as usize], self.prev[f as usize]);
        if p != NIL {
            self.next[p as usize] = n;
        } else {
            self.heads[o] = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        }
        self.free_order[f as usize] = NOT_FREE;
        self.nr_free_blocks[o] -= 1;
    }

    /// Allocates a naturally aligned block of `1 << order` frames; `None` is `ENOMEM`.
    pub fn alloc(&mut self, order: u8) -> Option<u32> {
        if order > MAX_PAGE_ORDER {
            return None;
        }
        let mut o = order;
        while o <= MAX_PAGE_ORDER && self.heads[o as usize] == NIL {
            o += 1;
        }
        if o > MAX_PAGE_ORDER {
            return None;
        }
        let f = self.heads[o as usize];
        self.unlink(f);
        while o > order {
            o -= 1;
            self.push(f + (1 << o), o);
        }
        self.nr_free_pages -= 1 << order;
        Some(f)
    }

    /// Frees a block, merging with free buddies.
    pub fn free(&mut self, frame: u32, order: u8) -> Result<(), BuddyError> {
        let nr = self.next.len() as u32;
        if order > MAX_PAGE_ORDER || frame >= nr || frame & ((1 << order) - 1) != 0 {
            return Err(BuddyError::BadFree { frame, order });
        }
        if self.free_order[frame as usize] != NOT_FREE {
            return Err(BuddyError::DoubleFree { frame, order });
        }
        self.nr_free_pages += 1 << order;
        let (mut f, mut o) = (frame, order);
        while o < MAX_PAGE_ORDER {
            let buddy = f ^ (1 << o);
            if buddy >= nr || self.free_order[buddy as usize] != o {
                break;
            }
            self.unlink(buddy);
            f = f.min(buddy);
            o += 1;
        }
        self.push(f, o);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_merge_restore_the_initial_state() {
        let mut b = Buddy::new(1024);
        assert_eq!(b.buddyinfo()[9], 2);
        let a = b.alloc(0).unwrap();
        assert_eq!(b.nr_free_pages(), 1023);
        assert_eq!(b.buddyinfo()[9], 1);
        assert_eq!(b.buddyinfo()[..9].iter().sum::<usize>(), 9);
        let c = b.alloc(3).unwrap();
        assert_eq!(c % 8, 0);
        b.free(a, 0).unwrap();
        b.free(c, 3).unwrap();
        assert_eq!(b.nr_free_pages(), 1024);
        assert_eq!(b.buddyinfo()[9], 2);
    }

    #[test]
    fn exhaustion_is_enomem_and_double_free_is_caught() {
        let mut b = Buddy::new(512);
        let big = b.alloc(9).unwrap();
        assert_eq!(b.alloc(0), None);
        assert_eq!(b.alloc(10), None);
        b.free(big, 9).unwrap();
        assert_eq!(
            b.free(big, 9),
            Err(BuddyError::DoubleFree {
                frame: big,
                order: 9
            })
        );
        assert_eq!(
            b.free(3, 1),
            Err(BuddyError::BadFree { frame: 3, order: 1 })
        );
    }

    #[test]
    fn freeing_a_split_large_block_page_by_page_merges_back() {
        let mut b = Buddy::new(512);
        let f = b.alloc(9).unwrap();
        for i in 0..512 {
            b.free(f + i, 0).unwrap();
        }
        assert_eq!(b.buddyinfo()[9], 1);
        assert_eq!(b.nr_free_pages(), 512);
    }
}
