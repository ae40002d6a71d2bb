//! The process's resource use from `/proc/self` (resident set, file descriptors, threads):
//! what a run must give back.

#![forbid(unsafe_code)]

use serde::Serialize;

/// Resource use of the process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Resources {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
}

/// The process's resource use now.
pub fn process_resources() -> Resources {
    resources()
}

pub(super) fn resources() -> Resources {
    let page_kib = 4;
    let rss_kib = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * page_kib;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l[8..].trim().parse().ok())
        })
        .unwrap_or(0);
    Resources {
        rss_kib,
        fds,
        threads,
    }
}
