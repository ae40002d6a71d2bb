//! Thin wrappers over system calls that the safe crates need (one of the few `unsafe`
//! modules).

#![allow(
    unsafe_code,
    reason = "raw memory and system calls, behind the contracts above"
)]

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
/// address aligned to `align` (a power of two, at least a page; anything else is
/// `InvalidInput`): maps `len + align` and unmaps the head and the tail. The caller owns
/// `[addr, addr + len)` and unmaps it (`munmap`); nothing else refers to it.
pub fn mmap_aligned(len: usize, align: usize) -> io::Result<*mut u8> {
    if !align.is_power_of_two() || align < 4096 || len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mmap_aligned({len}, {align}): alignment must be a power of two of at least a page, length positive"),
        ));
    }
    let Some(map_len) = len.checked_add(align) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "mapping length overflows",
        ));
    };
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

/// The kernel release (`uname -r`), e.g. `6.18.44`; empty if `uname(2)` fails.
pub fn kernel_release() -> String {
    // SAFETY: `utsname` is plain data; zeroed is a valid value for uname to fill.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The CPUs this thread may run on (`sched_getaffinity`), ascending: what `taskset` or a
/// cpuset allows, not every CPU of the machine.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a live cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu < CPU_SETSIZE`, inside `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Restricts the calling thread to `cpus` (`sched_setaffinity`): for tests and tools that
/// run under a narrower CPU set, as `taskset -c` does.
pub fn set_allowed_cpus(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpu number out of range",
            ));
        }
        // SAFETY: `cpu < CPU_SETSIZE` (checked), so CPU_SET stays inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A memory policy for [`mbind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemPolicy {
    /// `MPOL_BIND` to one node (any node number: the nodemask has as many words as it needs).
    Bind(u32),
    /// `MPOL_LOCAL`: allocate on the node of the CPU that faults, as the default policy does,
    /// but as a policy of the range's own, without `MPOL_F_NUMA_BALANCING`, so that the
    /// kernel's automatic NUMA balancing leaves the range alone.
    Local,
}

/// `mbind(2)` of `[addr, addr + len)`. The policy decides where pages are allocated from
/// now on; pages already there stay (no `MPOL_MF_MOVE`). Changing the policy of any range
/// is sound: the kernel checks the range and no memory is read or written.
pub fn mbind(addr: usize, len: usize, policy: MemPolicy) -> io::Result<()> {
    let (mode, mask) = match policy {
        MemPolicy::Bind(node) => {
            let mut mask = vec![0u64; node as usize / 64 + 1];
            mask[node as usize / 64] = 1 << (node % 64);
            (libc::MPOL_BIND, mask)
        }
        MemPolicy::Local => (libc::MPOL_LOCAL, Vec::new()),
    };
    let mask_ptr = if mask.is_empty() {
        std::ptr::null()
    } else {
        mask.as_ptr()
    };
    // SAFETY: the nodemask (or NULL with maxnode 0, as MPOL_LOCAL requires) outlives the
    // call and maxnode is its bit width; mbind reads no other memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            mode,
            mask_ptr,
            mask.len() * 64,
            0usize,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The whole machine's CPU time so far, from the `cpu` line of `/proc/stat`, in clock
/// ticks: all of it, the idle part, and the part in which a CPU had work but the
/// hypervisor ran something else (steal), which no guest-side figure shows otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + idle + iowait + irq + softirq + steal (guest time is
    /// counted in user and nice already).
    pub total: u64,
    /// idle + iowait: time no one asked for (a halted virtual CPU is not stolen from).
    pub idle: u64,
    /// steal.
    pub steal: u64,
}

impl CpuTimes {
    /// Now; `None` where `/proc/stat` cannot be read or has no steal column.
    pub fn now() -> Option<CpuTimes> {
        cpu_times_in(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The share of the CPU time the machine asked for (everything but idle) that was
    /// stolen between `earlier` and `self`; `None` when the CPUs asked for none.
    pub fn steal_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let idle = self.idle.checked_sub(earlier.idle)?;
        let steal = self.steal.checked_sub(earlier.steal)?;
        let busy = total.checked_sub(idle)?;
        (busy > 0).then(|| (steal as f64 / busy as f64).min(1.0))
    }
}

fn cpu_times_in(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (v.len() == 8).then(|| CpuTimes {
        total: v.iter().sum(),
        idle: v[3] + v[4],
        steal: v[7],
    })
}

/// The CPU's model name when it is emulated in software (QEMU's TCG: "QEMU TCG CPU version
/// 2.5+"), where every timing is the emulator's, not the hardware's; `None` on real or
/// hardware-virtualized CPUs.
pub fn emulated_cpu() -> Option<String> {
    emulated_cpu_in(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

fn emulated_cpu_in(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .filter(|m| m.contains("TCG"))
}

/// TLB shootdowns this machine's CPUs have received since boot: the sum of the `TLB`
/// row of `/proc/interrupts` (each is one remote flush request, an IPI, taken by one
/// CPU). System-wide: other processes' flushes count too. `None` where the file or the
/// row is missing (not x86).
pub fn tlb_shootdowns_received() -> Option<u64> {
    tlb_shootdowns_in(&std::fs::read_to_string("/proc/interrupts").ok()?)
}

fn tlb_shootdowns_in(interrupts: &str) -> Option<u64> {
    let rest = interrupts
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("TLB:"))?;
    let counts: Vec<u64> = rest
        .split_whitespace()
        .map_while(|w| w.parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_set_is_what_was_set() {
        let all = allowed_cpus().unwrap();
        assert!(!all.is_empty());
        let first = all[0];
        // On a thread of its own, so the test's other threads keep every CPU.
        std::thread::spawn(move || {
            set_allowed_cpus(&[first]).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![first]);
            pin_current_thread(first).unwrap();
        })
        .join()
        .unwrap();
        assert!(mmap_aligned(4096, 3).is_err());
        assert!(mmap_aligned(0, 4096).is_err());
    }

    #[test]
    fn steal_is_read_from_the_cpu_line_of_proc_stat() {
        let a = "cpu  100 0 20 800 5 0 1 74 0 0\ncpu0 50 0 10 400 2 0 1 37 0 0\nintr 1\n";
        let b = "cpu  150 0 30 850 5 0 1 114 0 0\n";
        let a = cpu_times_in(a).unwrap();
        let b = cpu_times_in(b).unwrap();
        assert_eq!((a.total, a.idle, a.steal), (1000, 805, 74));
        // 150 ticks passed, 50 of them idle and 40 stolen from the other 100.
        assert!((b.steal_since(&a).unwrap() - 0.4).abs() < 1e-12);
        let idle = "cpu  100 0 20 900 5 0 1 74 0 0\n";
        assert_eq!(cpu_times_in(idle).unwrap().steal_since(&a), None);
        assert_eq!(a.steal_since(&a), None);
        assert_eq!(a.steal_since(&b), None);
        // A kernel without a steal column (before 2.6.11), or no cpu line.
        assert_eq!(cpu_times_in("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(cpu_times_in("intr 1\n"), None);
    }

    #[test]
    fn tlb_shootdowns_are_the_tlb_row_summed_over_cpus() {
        let two = "           CPU0       CPU1\n  NMI:          0          0   Non-maskable interrupts\n  TLB:    3656032    3742221   TLB shootdowns\n  TRM:          0          0   Thermal event interrupts\n";
        assert_eq!(tlb_shootdowns_in(two), Some(3656032 + 3742221));
        let one = "           CPU0\n  TLB:         17   TLB shootdowns\n";
        assert_eq!(tlb_shootdowns_in(one), Some(17));
        assert_eq!(
            tlb_shootdowns_in("           CPU0\n  NMI:   0   Non-maskable\n"),
            None
        );
        assert_eq!(tlb_shootdowns_in("  TLB:   TLB shootdowns\n"), None);
        assert!(CpuTimes::now().is_some());
    }

    #[test]
    fn a_tcg_cpu_is_emulated_and_others_are_not() {
        let tcg = "processor\t: 0\nmodel name\t: QEMU TCG CPU version 2.5+\nflags\t: fpu\n";
        assert_eq!(
            emulated_cpu_in(tcg).as_deref(),
            Some("QEMU TCG CPU version 2.5+")
        );
        assert_eq!(emulated_cpu_in("model name\t: AMD EPYC\n"), None);
        assert_eq!(
            emulated_cpu_in("model name\t: QEMU Virtual CPU version 2.5+\n"),
            None
        );
        assert_eq!(emulated_cpu_in(""), None);
    }
}

/// pagemig's own threads, known by their `pthread_self()` from their first instruction on:
/// where pagemig runs inside a program it did not write (`pagemig run`), the program's
/// allocator may hold a lock while the program faults on a page under migration, so the
/// threads that resolve the fault must never wait for that allocator. A thread's own
/// thread-local set-up (Rust's spawn hooks, the C library's `__cxa_thread_atexit_impl`)
/// calls `calloc` before any code of the thread's closure runs, so a thread-local flag set
/// there would come too late; the preload asks [`own_thread`] in its `malloc` family
/// instead and sends these threads to the C library's allocator.
pub mod own_threads {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::thread::{Builder, JoinHandle};

    const SLOTS: usize = 64;
    static OWN: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
    /// Slots in use are below this.
    static HIGH: AtomicUsize = AtomicUsize::new(0);
    /// Spawns in flight, and the thread making them (0: none).
    static SPAWNING: AtomicUsize = AtomicUsize::new(0);
    static SPAWNER: AtomicU64 = AtomicU64::new(0);

    fn me() -> u64 {
        // SAFETY: pthread_self has no preconditions; it reads the thread pointer.
        unsafe { libc::pthread_self() as u64 }
    }

    thread_local! {
        /// Set once this thread asked while no spawn was in flight and was not one of
        /// pagemig's own: a thread of the program, which never waits for a spawn again.
        static PROGRAM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn registered(t: u64) -> bool {
        let high = HIGH.load(Ordering::Acquire);
        OWN[..high].iter().any(|s| s.load(Ordering::Acquire) == t)
    }

    /// Whether the calling thread is one of pagemig's own (spawned with [`spawn`]). A
    /// thread asking while a spawn is in flight, other than the spawning one, waits until
    /// the new thread is registered (it may be that thread, before its spawn returned) —
    /// unless it is known to be a thread of the program (it once asked with no spawn in
    /// flight). Without that exception a program thread that called `malloc` while it held
    /// a lock of the C library that the spawn needs (`dlopen`'s, which `pthread_create`
    /// takes to set up the new thread's TLS) spun here for ever, and the spawn waited for
    /// it: a python importing `hashlib` while `pagemig ctl` started an `mtcopy` pool.
    #[inline]
    pub fn own_thread() -> bool {
        // No thread of ours yet and no spawn in flight. The count is read first: a thread
        // being spawned starts after its spawn was counted, and reads either the count
        // still raised or, with acquire ordering, the spawn's end — which comes after its
        // registration, so the registry read next shows it. (Read the other way round, the
        // first thread ever spawned could find the registry empty, then the spawn ended,
        // and take itself for the program's.)
        let spawning = SPAWNING.load(Ordering::Acquire);
        #[cfg(test)]
        tests::hook(tests::Step::ReadTheCount);
        if spawning == 0 && HIGH.load(Ordering::Acquire) == 0 {
            PROGRAM.set(true);
            return false;
        }
        let t = me();
        loop {
            if registered(t) {
                return true;
            }
            #[cfg(test)]
            tests::hook(tests::Step::SawItselfUnregistered);
            if SPAWNING.load(Ordering::Acquire) == 0 {
                // The spawn that made this thread, if one did, registered it before it
                // ended: asked again now, the registration is seen. (Answering from the
                // count alone took a thread of ours that was registered between the two
                // loads for one of the program's.)
                if registered(t) {
                    return true;
                }
                PROGRAM.set(true);
                return false;
            }
            if SPAWNER.load(Ordering::Acquire) == t || PROGRAM.get() {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Spawns a thread of pagemig's own (see the module). Joining it through the handle
    /// returned forgets it; a thread never joined stays known for the process's life.
    pub fn spawn<F, T>(b: Builder, f: F) -> std::io::Result<OwnThread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        use std::os::unix::thread::JoinHandleExt as _;
        // One spawn at a time: SPAWNER names the thread whose own allocations pass.
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _g = ONE.lock().unwrap_or_else(|p| p.into_inner());
        SPAWNER.store(me(), Ordering::Release);
        SPAWNING.fetch_add(1, Ordering::AcqRel);
        let r = b.spawn(f);
        #[cfg(test)]
        tests::hook(tests::Step::Started);
        if let Ok(h) = &r {
            let t: u64 = h.as_pthread_t();
            let slot = OWN
                .iter()
                .position(|s| {
                    s.compare_exchange(0, t, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                })
                .unwrap_or(SLOTS);
            if slot < SLOTS {
                HIGH.fetch_max(slot + 1, Ordering::AcqRel);
            }
        }
        SPAWNING.fetch_sub(1, Ordering::AcqRel);
        SPAWNER.store(0, Ordering::Release);
        #[cfg(test)]
        tests::hook(tests::Step::Ended);
        r.map(|h| OwnThread(Some(h)))
    }

    /// The handle of a thread from [`spawn`].
    #[derive(Debug)]
    pub struct OwnThread<T>(Option<JoinHandle<T>>);

    impl<T> OwnThread<T> {
        /// Waits for the thread to end, then forgets it (its `pthread_t` may be another
        /// thread's from then on).
        pub fn join(mut self) -> std::thread::Result<T> {
            use std::os::unix::thread::JoinHandleExt as _;
            let h = self.0.take().expect("joined once");
            let t: u64 = h.as_pthread_t();
            let r = h.join();
            for s in &OWN {
                let _ = s.compare_exchange(t, 0, Ordering::AcqRel, Ordering::Acquire);
            }
            r
        }

        /// The thread.
        pub fn thread(&self) -> &std::thread::Thread {
            self.0.as_ref().expect("not joined").thread()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_thread_is_its_own_from_its_first_instruction_until_it_is_joined() {
            assert!(!own_thread(), "the test's thread");
            let h = spawn(Builder::new(), own_thread).unwrap();
            let t = {
                use std::os::unix::thread::JoinHandleExt as _;
                h.0.as_ref().unwrap().as_pthread_t()
            };
            assert!(registered(t));
            assert!(h.join().unwrap(), "own inside");
            assert!(!registered(t), "forgotten once joined");
            let plain = std::thread::spawn(own_thread).join().unwrap();
            assert!(!plain, "a thread spawned otherwise");
        }

        #[test]
        fn a_program_thread_seen_before_never_waits_for_a_spawn_in_flight() {
            use std::sync::mpsc;
            use std::time::Duration;
            // A thread of the program: it asks once with no spawn of ours in flight (one
            // made by the other test at the same time at most delays this).
            let (ask, asked) = mpsc::channel::<()>();
            let (said, answer) = mpsc::channel();
            let program = std::thread::spawn(move || {
                while SPAWNING.load(Ordering::Acquire) != 0 {
                    std::thread::yield_now();
                }
                let _ = own_thread();
                said.send(own_thread()).unwrap();
                asked.recv().unwrap();
                said.send(own_thread()).unwrap();
            });
            assert!(!answer.recv().unwrap());
            // A spawn in flight that does not end (one blocked inside pthread_create, on a
            // lock the program thread may hold): the program thread must not wait for it.
            SPAWNING.fetch_add(1, Ordering::AcqRel);
            ask.send(()).unwrap();
            let r = answer.recv_timeout(Duration::from_secs(5));
            // A thread never seen before waits (it may be the thread being spawned).
            let (said2, answer2) = mpsc::channel();
            let fresh = std::thread::spawn(move || said2.send(own_thread()).unwrap());
            let waited = answer2.recv_timeout(Duration::from_millis(200)).is_err();
            SPAWNING.fetch_sub(1, Ordering::AcqRel);
            assert_eq!(r, Ok(false), "the program thread waited for the spawn");
            assert!(waited, "a thread never seen before did not wait");
            assert!(
                !answer2.recv().unwrap(),
                "a thread never seen before: not ours"
            );
            program.join().unwrap();
            fresh.join().unwrap();
        }

        /// Points of [`own_thread`] and [`spawn`] at which the tests below order a spawned
        /// thread and its spawner.
        #[derive(Clone, Copy, PartialEq, Debug)]
        pub(super) enum Step {
            /// The spawned thread read the spawn count first (the registry not read yet).
            ReadTheCount,
            /// The spawned thread found itself unregistered (the spawn count not read yet).
            SawItselfUnregistered,
            /// The spawner's `pthread_create` returned (the thread not registered yet).
            Started,
            /// The spawner registered the thread and ended the spawn.
            Ended,
        }

        thread_local! {
            /// Set on the two threads of a test below only (the other tests' threads pass
            /// the hooks untouched): on the spawner `Started`, on the spawned thread the
            /// one step at which it pauses (cleared when it does).
            static ARMED: std::cell::Cell<Option<Step>> = const { std::cell::Cell::new(None) };
        }
        /// Where the hooked spawn is: `None` before, then the spawned thread's step (it
        /// paused), `Started`, `Ended`.
        static REACHED: std::sync::Mutex<Option<Step>> = std::sync::Mutex::new(None);
        static MOVED: std::sync::Condvar = std::sync::Condvar::new();

        fn wait_for(want: impl Fn(Option<Step>) -> bool) {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut r = REACHED.lock().unwrap();
            while !want(*r) {
                let left = until.saturating_duration_since(std::time::Instant::now());
                assert!(!left.is_zero(), "the hooked spawn is stuck at {:?}", *r);
                r = MOVED.wait_timeout(r, left).unwrap().0;
            }
        }

        fn reach(step: Step) {
            *REACHED.lock().unwrap() = Some(step);
            MOVED.notify_all();
        }

        /// Orders a hooked spawn as the races that once happened by chance: the spawned
        /// thread pauses at its armed step; its spawner waits for that, registers it and
        /// ends the spawn; only then does the thread go on.
        pub(super) fn hook(step: Step) {
            match step {
                Step::Started | Step::Ended if ARMED.get() == Some(Step::Started) => {
                    if step == Step::Started {
                        wait_for(|r| {
                            matches!(r, Some(Step::ReadTheCount | Step::SawItselfUnregistered))
                        });
                    }
                    reach(step);
                }
                Step::ReadTheCount | Step::SawItselfUnregistered if ARMED.get() == Some(step) => {
                    ARMED.set(None);
                    reach(step);
                    wait_for(|r| r == Some(Step::Ended));
                }
                _ => {}
            }
        }

        /// A spawn whose new thread pauses at `at` while its spawner registers it; the
        /// thread's answer.
        fn hooked_spawn(at: Step) -> bool {
            *REACHED.lock().unwrap() = None;
            ARMED.set(Some(Step::Started));
            let h = spawn(Builder::new(), move || {
                ARMED.set(Some(at));
                own_thread()
            })
            .unwrap();
            ARMED.set(None);
            h.join().unwrap()
        }

        #[test]
        fn a_thread_registered_after_it_found_itself_unregistered_is_never_taken_for_the_program_s()
        {
            // The spawned thread asks at once and finds itself unregistered; its spawner
            // then registers it and ends the spawn before the thread reads the spawn count.
            // It must answer "ours". (It answered from the count alone, took itself for a
            // program thread, and under `pagemig run` its first allocation came from the
            // program's allocator and its exit freed it into the C library's: redis
            // aborted with "free(): invalid pointer" in a pool thread's TLS destructors.)
            assert!(
                hooked_spawn(Step::SawItselfUnregistered),
                "a thread of ours took itself for the program's"
            );
        }

        /// Set in the process the test below starts.
        const FIRST_SPAWN: &str = "PAGEMIG_TEST_FIRST_SPAWN";

        #[test]
        fn the_first_thread_ever_spawned_is_ours_however_its_spawn_and_its_first_question_interleave(
        ) {
            // The fast path's race needs a process in which nothing was ever spawned: this
            // test runs itself alone in a new process of this test binary.
            let name = "sys::own_threads::tests::the_first_thread_ever_spawned_is_ours_however_its_spawn_and_its_first_question_interleave";
            if std::env::var_os(FIRST_SPAWN).is_none() {
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", name, "--test-threads", "1", "--nocapture"])
                    .env(FIRST_SPAWN, "1")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "{text}");
                assert!(text.contains("1 passed"), "the test did not run: {text}");
                return;
            }
            assert_eq!(
                HIGH.load(Ordering::Acquire),
                0,
                "a thread was spawned before"
            );
            // The spawned thread's first read happens while its spawn is in flight and
            // the registry is empty; the spawner registers it and ends the spawn before
            // its second.
            assert!(
                hooked_spawn(Step::ReadTheCount),
                "the first thread of ours took itself for the program's"
            );
        }
    }
}
