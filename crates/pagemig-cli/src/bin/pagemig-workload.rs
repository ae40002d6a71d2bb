//! `pagemig-workload`: the program `pagemig run-bench` measures. Its threads read, modify
//! and write random 8-byte words of one large array (a `Vec`: the malloc family, so
//! `pagemig run` tiers it) for a fixed time, and each records how many operations it made
//! and its stalls: the longest gap between two consecutive operations, and how many gaps
//! passed 100 µs and 1 ms — and, from `/proc/thread-self/schedstat`, how long it was on a
//! CPU and how many times it was switched in (a thread that sleeps on a page under
//! migration is switched in again when the page is back), and from
//! `/proc/thread-self/status` how many of those followed a sleep of its own
//! (`voluntary_ctxt_switches`; the rest are preemptions, which other load on the machine
//! makes). Prints one JSON line. Checks its
//! data at the end: every word holds its index plus the number of times it was incremented.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("pagemig-workload: {name} takes a number");
                std::process::exit(2)
            });
        }
    }
    default
}

/// This thread's (time on a CPU in ns, times switched in), from
/// `/proc/thread-self/schedstat` (`None` where the kernel does not keep it).
fn schedstat() -> Option<(u64, u64)> {
    let t = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = t.split_whitespace().map(|v| v.parse::<u64>().ok());
    let run = f.next()??;
    let _wait = f.next()??;
    Some((run, f.next()??))
}

/// This thread's voluntary context switches (its sleeps), from `/proc/thread-self/status`.
fn voluntary_switches() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

fn main() {
    let mib = arg("--mib", 256);
    let threads = arg("--threads", 1).max(1);
    let secs = arg("--seconds", 5);
    let n = (mib << 20) as usize / 8;
    let words: Vec<AtomicU64> = (0..n as u64).map(AtomicU64::new).collect();
    let counts: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    // Touched before the clock starts (a zeroed allocation is not), so that the run
    // measures steady state, not first touches.
    for c in &counts {
        c.store(0, Ordering::Relaxed);
    }
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    type Res = (
        u64,
        u64,
        u64,
        u64,
        Option<(u64, u64, f64)>,
        Option<(u64, f64)>,
    );
    let results: Vec<Res> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (words, counts) = (&words, &counts);
                s.spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    let (mut ops, mut max_gap, mut over_100us, mut over_1ms) =
                        (0u64, 0u64, 0u64, 0u64);
                    let sched0 = schedstat();
                    let sleeps0 = voluntary_switches();
                    let mut last = Instant::now();
                    let start = last;
                    while last < until {
                        for _ in 0..64 {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let i = (x % n as u64) as usize;
                            words[i].fetch_add(1, Ordering::Relaxed);
                            counts[i].fetch_add(1, Ordering::Relaxed);
                        }
                        ops += 64;
                        let now = Instant::now();
                        let gap = (now - last).as_nanos() as u64;
                        max_gap = max_gap.max(gap);
                        over_100us += (gap > 100_000) as u64;
                        over_1ms += (gap > 1_000_000) as u64;
                        last = now;
                    }
                    let sched = match (sched0, schedstat()) {
                        (Some((r0, n0)), Some((r1, n1))) => Some((
                            r1.saturating_sub(r0),
                            n1.saturating_sub(n0),
                            (last - start).as_secs_f64(),
                        )),
                        _ => None,
                    };
                    let sleeps = sleeps0
                        .zip(voluntary_switches())
                        .map(|(a, b)| (b.saturating_sub(a), (last - start).as_secs_f64()));
                    (ops, max_gap, over_100us, over_1ms, sched, sleeps)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let bad = words
        .iter()
        .zip(&counts)
        .enumerate()
        .filter(|(i, (w, c))| w.load(Ordering::Relaxed) != *i as u64 + c.load(Ordering::Relaxed))
        .count();
    let ops: u64 = results.iter().map(|r| r.0).sum();
    // Over all threads: the share of their time on a CPU, and switches-in per second each.
    let sched: Option<Vec<(u64, u64, f64)>> = results.iter().map(|r| r.4).collect();
    let sched = sched
        .filter(|v| v.iter().all(|t| t.2 > 0.0))
        .map(|v| {
            let secs: f64 = v.iter().map(|t| t.2).sum();
            let on = v.iter().map(|t| t.0 as f64 / 1e9).sum::<f64>() / secs;
            let sw = v.iter().map(|t| t.1 as f64).sum::<f64>() / secs;
            format!(", \"on_cpu\": {on:.4}, \"switches_per_s\": {sw:.1}")
        })
        .unwrap_or_default();
    // Sleeps per second each, over all threads.
    let sleeps: Option<Vec<(u64, f64)>> = results.iter().map(|r| r.5).collect();
    let sleeps = sleeps
        .filter(|v| v.iter().all(|t| t.1 > 0.0))
        .map(|v| {
            let secs: f64 = v.iter().map(|t| t.1).sum();
            let n = v.iter().map(|t| t.0 as f64).sum::<f64>();
            format!(", \"sleeps_per_s\": {:.1}", n / secs)
        })
        .unwrap_or_default();
    println!(
        "{{\"ops\": {ops}, \"seconds\": {elapsed:.3}, \"ops_per_s\": {:.0}, \"max_stall_us\": {:.1}, \"stalls_over_100us\": {}, \"stalls_over_1ms\": {}{sched}{sleeps}, \"bad_words\": {bad}}}",
        ops as f64 / elapsed,
        results.iter().map(|r| r.1).max().unwrap_or(0) as f64 / 1e3,
        results.iter().map(|r| r.2).sum::<u64>(),
        results.iter().map(|r| r.3).sum::<u64>()
    );
    if bad > 0 {
        std::process::exit(1);
    }
}
