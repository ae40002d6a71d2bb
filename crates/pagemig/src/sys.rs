//! Thin wrappers over system calls that the safe crates need (one of the few `unsafe`
//! modules).

use std::io;

/// Number of CPUs this process may run on.
pub fn nr_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Pins the calling thread to `cpu` (`sched_setaffinity`).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu number out of range",
        ));
    }
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu < CPU_SETSIZE` (checked), so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps `len` bytes of anonymous private memory (`MAP_NORESERVE`, unpopulated) at an
/// address aligned to `align` (a power of two): maps `len + align` and unmaps the head and
/// the tail. The caller owns `[addr, addr + len)` and unmaps it.
pub(crate) fn mmap_aligned(len: usize, align: usize) -> io::Result<*mut u8> {
    let map_len = len + align;
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let raw = raw as usize;
    let base = raw.div_ceil(align) * align;
    let head = base - raw;
    let tail = map_len - head - len;
    // SAFETY: both trimmed ranges lie inside the mapping just created and are unused.
    unsafe {
        if head > 0 {
            libc::munmap(raw as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((base + len) as *mut libc::c_void, tail);
        }
    }
    Ok(base as *mut u8)
}
