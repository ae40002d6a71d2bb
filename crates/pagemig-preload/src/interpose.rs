//! The interposition layer: the C symbols a dynamically linked program calls — the malloc
//! family, `mmap`, `munmap`, `mremap`, `madvise`, `mprotect` — the constructor, the fork
//! handlers, and the raw system calls everything else is forwarded to. The crate's only
//! `unsafe` module; the decisions are [`crate::tier`]'s, in safe code, on addresses.
//!
//! # Contract
//! * The exported functions have the C prototypes of glibc's (x86-64 and aarch64 Linux, where
//!   `mremap`'s variadic fifth argument is passed as a plain fifth argument).
//! * Memory not tiered goes to the *next* allocator in the lookup order (`dlsym(RTLD_NEXT)`):
//!   the program's own (jemalloc in redis) or glibc's. While the next functions are being
//!   looked up, allocations come from a static bootstrap buffer, never freed.
//! * pagemig's own Rust allocations use glibc's `__libc_*` functions directly (the crate's
//!   global allocator), so they never come back here; its calls of `mmap` and friends do
//!   come back here and are forwarded untouched while [`Inside`] is held on the thread.

#![allow(
    unsafe_code,
    reason = "the C ABI of the malloc family and of the mapping calls, behind the contract above"
)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crate::tier::{self, Action, Source, State};

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

/// pagemig's own allocations: glibc's allocator, called by its internal names, so that they
/// never enter the interposed `malloc`.
pub(crate) struct LibcAlloc;

// SAFETY: glibc's allocator returns memory valid for `size` bytes aligned as asked (16 for
// `malloc`, any power of two for `memalign`), or NULL; `__libc_free` takes what both return.
unsafe impl GlobalAlloc for LibcAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: plain calls into glibc's allocator.
        unsafe {
            if l.align() <= 16 {
                __libc_malloc(l.size()) as *mut u8
            } else {
                __libc_memalign(l.align(), l.size()) as *mut u8
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        // SAFETY: `p` came from `alloc` above (GlobalAlloc's contract).
        unsafe { __libc_free(p as *mut c_void) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.align() <= 16 {
            // SAFETY: a plain call into glibc's allocator.
            unsafe { __libc_calloc(1, l.size()) as *mut u8 }
        } else {
            // SAFETY: `alloc` returns NULL or `l.size()` writable bytes.
            unsafe {
                let p = self.alloc(l);
                if !p.is_null() {
                    std::ptr::write_bytes(p, 0, l.size());
                }
                p
            }
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if l.align() <= 16 {
            // SAFETY: `p` came from `alloc` with this small alignment (contract).
            unsafe { __libc_realloc(p as *mut c_void, new) as *mut u8 }
        } else {
            // SAFETY: the default: allocate, copy the smaller size, free.
            unsafe {
                let q = self.alloc(Layout::from_size_align_unchecked(new, l.align()));
                if !q.is_null() {
                    std::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                    self.dealloc(p, l);
                }
                q
            }
        }
    }
}

thread_local! {
    /// Depth of pagemig's own work on this thread: its `mmap` calls go straight through.
    static INSIDE: Cell<u32> = const { Cell::new(0) };
}

/// Held while pagemig itself runs on this thread (making a region, serving the control
/// socket): the thread's mapping calls are forwarded untouched and its allocations are not
/// tiered.
pub(crate) struct Inside(());

impl Inside {
    /// Enters.
    pub(crate) fn enter() -> Inside {
        INSIDE.with(|c| c.set(c.get() + 1));
        Inside(())
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        INSIDE.with(|c| c.set(c.get() - 1));
    }
}

fn inside() -> bool {
    INSIDE.with(|c| c.get() > 0)
}

// ---- the next allocator ----------------------------------------------------------------

type MallocFn = unsafe extern "C" fn(usize) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type CallocFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type MemalignFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type PosixMemalignFn = unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> c_int;
type UsableFn = unsafe extern "C" fn(*mut c_void) -> usize;

struct Next {
    malloc: MallocFn,
    free: FreeFn,
    calloc: CallocFn,
    realloc: ReallocFn,
    memalign: MemalignFn,
    posix_memalign: PosixMemalignFn,
    aligned_alloc: MemalignFn,
    valloc: MallocFn,
    usable: UsableFn,
}

static NEXT: AtomicPtr<Next> = AtomicPtr::new(std::ptr::null_mut());
static RESOLVING: AtomicBool = AtomicBool::new(false);

/// The static bootstrap buffer: what `dlsym` allocates while the next allocator is looked up.
const BOOT_LEN: usize = 1 << 16;
#[repr(align(16))]
struct Boot(#[allow(dead_code, reason = "written through raw pointers only")] [u8; BOOT_LEN]);
static mut BOOT: Boot = Boot([0; BOOT_LEN]);
static BOOT_USED: AtomicUsize = AtomicUsize::new(0);

fn boot_base() -> usize {
    std::ptr::addr_of!(BOOT) as usize
}

fn in_boot(p: *mut c_void) -> bool {
    let a = p as usize;
    a >= boot_base() && a < boot_base() + BOOT_LEN
}

fn boot_alloc(size: usize) -> *mut c_void {
    let need = size.div_ceil(16) * 16 + 16;
    let off = BOOT_USED.fetch_add(need, Ordering::Relaxed);
    if off + need > BOOT_LEN {
        return std::ptr::null_mut();
    }
    let p = boot_base() + off;
    // SAFETY: [p, p + need) is inside the static buffer and handed out once; the first 16
    // bytes keep the size (for realloc), the rest is the allocation (zero: never reused).
    unsafe {
        (p as *mut usize).write(size);
        (p + 16) as *mut c_void
    }
}

fn boot_size(p: *mut c_void) -> usize {
    // SAFETY: `p` is from boot_alloc, whose header sits 16 bytes before it.
    unsafe { ((p as usize - 16) as *const usize).read() }
}

/// Looks a symbol up after this library in the lookup order.
///
/// # Safety
/// `T` must be the function pointer type of the symbol's C prototype.
unsafe fn lookup<T: Copy>(name: &std::ffi::CStr, fallback: T) -> T {
    // SAFETY: dlsym with a NUL-terminated name; the result is a function of prototype `T`
    // (the caller's contract) or NULL.
    unsafe {
        let p = libc::dlsym(libc::RTLD_NEXT, name.as_ptr());
        if p.is_null() {
            fallback
        } else {
            std::mem::transmute_copy::<*mut c_void, T>(&p)
        }
    }
}

unsafe extern "C" fn libc_posix_memalign(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    // SAFETY: glibc's memalign; `out` is the caller's (posix_memalign's contract).
    unsafe {
        let p = __libc_memalign(align, size);
        if p.is_null() {
            return libc::ENOMEM;
        }
        *out = p;
        0
    }
}

unsafe extern "C" fn libc_valloc(size: usize) -> *mut c_void {
    // SAFETY: glibc's memalign.
    unsafe { __libc_memalign(4096, size) }
}

unsafe extern "C" fn no_usable(_p: *mut c_void) -> usize {
    0
}

/// glibc's allocator, for pagemig's own threads.
static LIBC_NEXT: Next = Next {
    malloc: __libc_malloc,
    free: __libc_free,
    calloc: __libc_calloc,
    realloc: __libc_realloc,
    memalign: __libc_memalign,
    posix_memalign: libc_posix_memalign,
    aligned_alloc: __libc_memalign,
    valloc: libc_valloc,
    usable: no_usable,
};

/// The allocator for a call of the malloc family on this thread: glibc's on pagemig's own
/// threads (the C library's own calls on them, such as the `calloc` of a thread-local
/// destructor's registration, made before the thread's code runs), so that they never wait
/// for a lock of the program's allocator that a program thread holds while it faults on a
/// page under migration (redis's jemalloc did, and the fault handler hung at its start);
/// the next allocator on every other thread.
fn alloc_next() -> &'static Next {
    if pagemig::sys::own_threads::own_thread() {
        return &LIBC_NEXT;
    }
    next()
}

fn next() -> &'static Next {
    let p = NEXT.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: a leaked Box, never freed (below).
        return unsafe { &*p };
    }
    resolve()
}

#[cold]
fn resolve() -> &'static Next {
    RESOLVING.store(true, Ordering::Release);
    // SAFETY: each name with its C prototype.
    let n = unsafe {
        Next {
            malloc: lookup(c"malloc", __libc_malloc as MallocFn),
            free: lookup(c"free", __libc_free as FreeFn),
            calloc: lookup(c"calloc", __libc_calloc as CallocFn),
            realloc: lookup(c"realloc", __libc_realloc as ReallocFn),
            memalign: lookup(c"memalign", __libc_memalign as MemalignFn),
            posix_memalign: lookup(c"posix_memalign", libc_posix_memalign as PosixMemalignFn),
            aligned_alloc: lookup(c"aligned_alloc", __libc_memalign as MemalignFn),
            valloc: lookup(c"valloc", libc_valloc as MallocFn),
            usable: lookup(c"malloc_usable_size", no_usable as UsableFn),
        }
    };
    let leaked = Box::into_raw(Box::new(n));
    match NEXT.compare_exchange(
        std::ptr::null_mut(),
        leaked,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {}
        Err(_) => {
            // Another thread resolved first: ours is dropped (from pagemig's allocator).
            // SAFETY: `leaked` is the Box made above, not published.
            drop(unsafe { Box::from_raw(leaked) });
        }
    }
    RESOLVING.store(false, Ordering::Release);
    // SAFETY: published above or by the other thread; never freed.
    unsafe { &*NEXT.load(Ordering::Acquire) }
}

// ---- the tiering state --------------------------------------------------------------

/// The process's state: a leaked `State`, replaced (the old one leaked too) in a forked
/// child.
static STATE: AtomicPtr<State> = AtomicPtr::new(std::ptr::null_mut());
/// Allocations from this size up are tiered; `usize::MAX` until the state is ready.
static THRESHOLD: AtomicUsize = AtomicUsize::new(usize::MAX);
/// A forked child that has not made its own state yet.
static CHILD_NEEDS_STATE: AtomicBool = AtomicBool::new(false);
static INITIALIZING: AtomicBool = AtomicBool::new(false);

pub(crate) fn state() -> Option<&'static State> {
    let p = STATE.load(Ordering::Acquire);
    if p.is_null() {
        if CHILD_NEEDS_STATE.load(Ordering::Acquire) {
            return child_state();
        }
        return None;
    }
    // SAFETY: a leaked Box (`publish`), never freed.
    Some(unsafe { &*p })
}

/// The state if there is one now, never making one (for the fork and exit handlers).
fn current() -> Option<&'static State> {
    let p = STATE.load(Ordering::Acquire);
    // SAFETY: as in `state`.
    (!p.is_null()).then(|| unsafe { &*p })
}

fn publish(st: &'static State) {
    THRESHOLD.store(st.threshold(), Ordering::Release);
    STATE.store(st as *const State as *mut State, Ordering::Release);
}

#[cold]
fn child_state() -> Option<&'static State> {
    if INITIALIZING.swap(true, Ordering::AcqRel) {
        return None;
    }
    let _g = Inside::enter();
    if CHILD_NEEDS_STATE.swap(false, Ordering::AcqRel) {
        if let Some(st) = tier::init(true) {
            publish(st);
        }
    }
    INITIALIZING.store(false, Ordering::Release);
    let p = STATE.load(Ordering::Acquire);
    // SAFETY: as in `state`.
    (!p.is_null()).then(|| unsafe { &*p })
}

fn tiered(size: usize) -> Option<&'static State> {
    if size < THRESHOLD.load(Ordering::Relaxed) {
        return None;
    }
    if inside() || RESOLVING.load(Ordering::Acquire) || pagemig::sys::own_threads::own_thread() {
        return None;
    }
    let st = state()?;
    (size >= st.threshold()).then_some(st)
}

/// The C library's constructor list: runs when the program loads the library.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    let _g = Inside::enter();
    next();
    if let Some(st) = tier::init(false) {
        publish(st);
    }
    // SAFETY: registering handlers of the right prototypes; they live as long as the
    // process (this library is never unloaded: it is preloaded).
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
        libc::atexit(at_exit);
    }
}

extern "C" fn at_exit() {
    if let Some(st) = current() {
        let _g = Inside::enter();
        st.at_exit();
    }
}

extern "C" fn fork_prepare() {
    let _g = Inside::enter();
    tier::fork_prepare(current());
}

extern "C" fn fork_parent() {
    let _g = Inside::enter();
    tier::fork_parent();
}

extern "C" fn fork_child() {
    let _g = Inside::enter();
    // THRESHOLD stays: the child makes its own state at its first allocation that large.
    STATE.store(std::ptr::null_mut(), Ordering::Release);
    INITIALIZING.store(false, Ordering::Release);
    if tier::fork_child() {
        CHILD_NEEDS_STATE.store(true, Ordering::Release);
    }
}

// ---- raw system calls ---------------------------------------------------------------

fn raw_mmap(
    a: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: i64,
) -> *mut c_void {
    // SAFETY: the mmap system call with the caller's arguments; it returns an address or
    // -1 with errno set, as mmap(3) does.
    unsafe { libc::syscall(libc::SYS_mmap, a, len, prot, flags, fd, off) as *mut c_void }
}

fn raw_munmap(a: usize, len: usize) -> c_int {
    // SAFETY: the munmap system call; unmapping is what the caller asked for.
    unsafe { libc::syscall(libc::SYS_munmap, a, len) as c_int }
}

fn raw_madvise(a: usize, len: usize, advice: c_int) -> c_int {
    // SAFETY: the madvise system call with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_madvise, a, len, advice) as c_int }
}

/// Whether THP is disabled for this process (`prctl(PR_GET_THP_DISABLE)`: set by the
/// program, or inherited from its parent).
pub(crate) fn thp_disabled() -> bool {
    // SAFETY: prctl(PR_GET_THP_DISABLE) takes no pointer and only reads a flag of the
    // process.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) > 0 }
}

fn set_errno(e: c_int) {
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() = e };
}

fn run_action(a: Action) -> c_int {
    let mut rc = 0;
    for (s, l) in a.unmap {
        if raw_munmap(s, l) != 0 {
            rc = -1;
        }
    }
    for (s, l, adv) in a.madvise {
        if raw_madvise(s, l, adv) != 0 {
            rc = -1;
        }
    }
    rc
}

// ---- the malloc family --------------------------------------------------------------

fn tier_alloc(size: usize, align: usize) -> Option<*mut c_void> {
    let st = tiered(size)?;
    if align > tier::REGION_ALIGN {
        return None;
    }
    let _g = Inside::enter();
    st.alloc(size, Source::Malloc, false)
        .map(|a| a as *mut c_void)
}

/// Frees `p` if it is a region (or one inherited from the parent); false: not ours.
fn tier_free(p: *mut c_void) -> bool {
    if (p as usize) % 4096 != 0 || !tier::may_hold_regions() {
        return false;
    }
    let _g = Inside::enter();
    match tier::free(state(), p as usize) {
        Some(a) => {
            run_action(a);
            true
        }
        None => false,
    }
}

fn tier_usable(p: *mut c_void) -> Option<usize> {
    if (p as usize) % 4096 != 0 || !tier::may_hold_regions() {
        return None;
    }
    tier::usable(state(), p as usize)
}

/// `malloc(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    if RESOLVING.load(Ordering::Acquire) && NEXT.load(Ordering::Acquire).is_null() {
        return boot_alloc(size);
    }
    if let Some(p) = tier_alloc(size, 16) {
        return p;
    }
    // SAFETY: the next allocator's malloc.
    unsafe { (alloc_next().malloc)(size) }
}

/// `free(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if p.is_null() || in_boot(p) || tier_free(p) {
        return;
    }
    // SAFETY: not ours: the next allocator's pointer.
    unsafe { (alloc_next().free)(p) }
}

/// `calloc(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    if RESOLVING.load(Ordering::Acquire) && NEXT.load(Ordering::Acquire).is_null() {
        return boot_alloc(total);
    }
    // A region reads zero: its pages are zeroed at first touch.
    if let Some(p) = tier_alloc(total, 16) {
        return p;
    }
    // SAFETY: the next allocator's calloc.
    unsafe { (alloc_next().calloc)(n, size) }
}

/// `realloc(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: each branch calls the function that owns `p`, or copies between two live
    // allocations of at least the copied length.
    unsafe {
        if p.is_null() {
            return malloc(size);
        }
        if in_boot(p) {
            let q = malloc(size);
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, boot_size(p).min(size));
            }
            return q;
        }
        if let Some(len) = tier_usable(p) {
            if size == 0 {
                free(p);
                return std::ptr::null_mut();
            }
            if size <= len {
                return p;
            }
            // Grows by half at least, so that a buffer grown step by step is not copied at
            // every step.
            let q = malloc(size.max(len + len / 2));
            if q.is_null() {
                return q;
            }
            std::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, len);
            free(p);
            return q;
        }
        if size > 0 && tiered(size).is_some() {
            let old = (alloc_next().usable)(p);
            if old > 0 {
                if let Some(q) = tier_alloc(size, 16) {
                    std::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, old.min(size));
                    (alloc_next().free)(p);
                    return q;
                }
            }
        }
        (alloc_next().realloc)(p, size)
    }
}

/// `reallocarray(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: realloc's contract is the caller's.
        Some(t) => unsafe { realloc(p, t) },
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// `posix_memalign(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % std::mem::size_of::<usize>() != 0 {
        return libc::EINVAL;
    }
    if let Some(p) = tier_alloc(size, align) {
        // SAFETY: `out` is the caller's pointer to write (the contract).
        unsafe { *out = p };
        return 0;
    }
    // SAFETY: the next allocator's posix_memalign.
    unsafe { (alloc_next().posix_memalign)(out, align, size) }
}

/// `aligned_alloc(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if let Some(p) = tier_alloc(size, align) {
        return p;
    }
    // SAFETY: the next allocator's aligned_alloc.
    unsafe { (alloc_next().aligned_alloc)(align, size) }
}

/// `memalign(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    if let Some(p) = tier_alloc(size, align) {
        return p;
    }
    // SAFETY: the next allocator's memalign.
    unsafe { (alloc_next().memalign)(align, size) }
}

/// `valloc(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    if let Some(p) = tier_alloc(size, 4096) {
        return p;
    }
    // SAFETY: the next allocator's valloc.
    unsafe { (alloc_next().valloc)(size) }
}

/// `pvalloc(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: valloc of the size rounded up to a page, as pvalloc is defined.
    unsafe { valloc(size.div_ceil(4096).max(1) * 4096) }
}

/// `malloc_usable_size(3)`.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    if in_boot(p) {
        return boot_size(p);
    }
    if let Some(len) = tier_usable(p) {
        return len;
    }
    // SAFETY: not ours: the next allocator's pointer.
    unsafe { (alloc_next().usable)(p) }
}

// ---- the mapping calls ----------------------------------------------------------------

const RW: c_int = libc::PROT_READ | libc::PROT_WRITE;

/// `mmap(2)`: a large private anonymous read-write mapping with no address asked for
/// becomes a region; a `MAP_FIXED` mapping over regions detaches them first.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    const NOT_TIERED: c_int = libc::MAP_FIXED
        | libc::MAP_FIXED_NOREPLACE
        | libc::MAP_GROWSDOWN
        | libc::MAP_HUGETLB
        | libc::MAP_STACK
        | libc::MAP_32BIT;
    if !inside() {
        if addr.is_null()
            && fd == -1
            && prot == RW
            && flags & libc::MAP_ANONYMOUS != 0
            && private_mapping(flags)
            && flags & NOT_TIERED == 0
        {
            if let Some(st) = tiered(len) {
                let _g = Inside::enter();
                let populate = flags & libc::MAP_POPULATE != 0;
                if let Some(a) = st.alloc(len, Source::Mmap, populate) {
                    return a as *mut c_void;
                }
            }
        } else if flags & libc::MAP_FIXED != 0 && tier::may_hold_regions() {
            let _g = Inside::enter();
            tier::detach_overlapping(state(), addr as usize, len);
        }
    }
    raw_mmap(addr, len, prot, flags, fd, off)
}

/// Whether `flags` ask for a private mapping: the mapping type (the low four bits, the
/// kernel's `MAP_TYPE`) is `MAP_PRIVATE`, not `MAP_SHARED` or `MAP_SHARED_VALIDATE` (which
/// is both bits: tested bit by bit, it excluded every private mapping too).
pub(crate) fn private_mapping(flags: c_int) -> bool {
    const MAP_TYPE: c_int = 0x0f;
    flags & MAP_TYPE == libc::MAP_PRIVATE
}

/// `mmap64`: the same as `mmap` on 64-bit Linux.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: the same contract.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// `munmap(2)`: a region wholly unmapped is freed (its frames back to their pools); one
/// partly unmapped is detached, then the range is unmapped.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let a = addr as usize;
    if inside() || !tier::may_hold_regions() || a % 4096 != 0 || len == 0 {
        return raw_munmap(a, len);
    }
    let _g = Inside::enter();
    let act = tier::munmap(state(), a, len.div_ceil(4096) * 4096);
    run_action(act)
}

/// `mremap(2)`: a region is detached first (the program moves or resizes plain memory).
///
/// # Safety
/// As glibc's; the fifth argument is read only with `MREMAP_FIXED`.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    if !inside() && tier::may_hold_regions() {
        let _g = Inside::enter();
        tier::detach_overlapping(state(), old as usize, old_len.max(1));
        if flags & libc::MREMAP_FIXED != 0 {
            tier::detach_overlapping(state(), new_addr as usize, new_len.max(1));
        }
    }
    // SAFETY: the mremap system call with the caller's arguments.
    unsafe {
        libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) as *mut c_void
    }
}

/// `madvise(2)`: `MADV_DONTNEED` on a region gives its pages back to the pools (the range
/// reads zero); `MADV_FREE`, `MADV_COLD` and `MADV_PAGEOUT` leave a region as it is (its
/// pages keep their contents, which those allow); `MADV_HUGEPAGE` and `MADV_NOHUGEPAGE`
/// remake the untouched regions they cover with the folio size they ask for (under
/// `--thp=auto`) and go to the kernel too; everything else goes to the kernel.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    let a = addr as usize;
    if inside() || !tier::may_hold_regions() || a % 4096 != 0 || !tier::advice_is_followed(advice) {
        return raw_madvise(a, len, advice);
    }
    let _g = Inside::enter();
    let act = tier::madvise(state(), a, len.div_ceil(4096) * 4096, advice);
    run_action(act)
}

/// `mprotect(2)`: a region that stops being read-write is detached first.
///
/// # Safety
/// As glibc's.
#[no_mangle]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int {
    if !inside() && prot != RW && tier::may_hold_regions() {
        let _g = Inside::enter();
        tier::detach_overlapping(state(), addr as usize, len.max(1));
    }
    // SAFETY: the mprotect system call with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot) as c_int }
}
