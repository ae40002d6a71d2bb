//! `pagemig bench --backend kernel`: the same migrations done by the kernel itself with
//! `move_pages(2)` on this process's memory, so that on a host with two or more NUMA
//! nodes the kernel and pagemig are compared side by side. The kernel copies folio by folio
//! on the calling CPU (no batch copy), so there is one row per folio size and no engines.

use std::sync::atomic::Ordering;
use std::time::Instant;

use pagemig::checksum::checksum_words as checksum;
use pagemig_live::kernel::{move_pages as sys_move_pages, AnonMapping};
use pagemig_live::MPOL_MF_MOVE;
use serde::Serialize;

use crate::bench::BenchOptions;
use crate::spec::format_size;

/// One folio size.
#[derive(Debug, Clone, Serialize)]
pub struct KernelResult {
    /// Folio size asked for.
    pub folio_size: usize,
    /// Page size the kernel actually used (4 KiB, or a 2 MiB THP).
    pub kernel_page_size: usize,
    /// Mean GB/s.
    pub gbps_mean: f64,
    /// Standard deviation.
    pub gbps_sd: f64,
    /// Pages move_pages(2) did not migrate (its return value plus the pages whose status
    /// is an error), over all runs.
    pub pages_not_migrated: usize,
    /// Runs.
    pub runs: usize,
}

/// The JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    /// `kernel`.
    pub backend: String,
    /// Kernel release.
    pub kernel: String,
    /// The two host nodes the pages moved between.
    pub nodes: (u32, u32),
    /// Bytes per migration.
    pub total_bytes: usize,
    /// Results.
    pub results: Vec<KernelResult>,
}

/// Why the kernel comparison cannot run, or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The host has fewer than two NUMA nodes.
    #[error("--backend kernel measures the kernel's move_pages(2) between two NUMA nodes of the host (--from, --to), and this host has {} node(s) ({nodes:?}); move_pages(2) to a node that is not there fails with ENODEV. Run it on a host with those nodes, or use --backend builtin or live", nodes.len())]
    TooFewNodes {
        /// The host's nodes.
        nodes: Vec<u32>,
    },
    /// A system call failed.
    #[error("{call}: {source}")]
    Sys {
        /// What was called.
        call: String,
        /// Its error.
        #[source]
        source: std::io::Error,
    },
    /// Content changed across the kernel's migrations.
    #[error("content changed across the kernel's migrations of {0}")]
    ContentChanged(String),
}

/// Runs the comparison, or explains why it cannot run here.
pub fn run(opts: &BenchOptions) -> Result<KernelReport, KernelError> {
    let nodes = pagemig::mm::numa::host_numa_nodes();
    let (a, b) = (opts.from_node.0, opts.to_node.0);
    if nodes.len() < 2 || !nodes.contains(&a) || !nodes.contains(&b) || a == b {
        return Err(KernelError::TooFewNodes { nodes });
    }
    let mut results = Vec::new();
    for &size in &opts.sizes {
        let thp = size == 2 << 20;
        let page = if thp { size } else { 4096 };
        let map = AnonMapping::new(opts.total_bytes, thp).map_err(|e| KernelError::Sys {
            call: "mmap".into(),
            source: e,
        })?;
        for (i, w) in map.words().iter().enumerate() {
            w.store(i as u64 ^ 0x5eed, Ordering::Relaxed);
        }
        let sum = checksum(map.words());
        let addrs: Vec<usize> = (0..map.len())
            .step_by(page)
            .map(|o| map.addr() + o)
            .collect();
        let mut status = vec![0i32; addrs.len()];
        let mut move_to = |node: u32| -> Result<(f64, usize), KernelError> {
            let t = Instant::now();
            let left = sys_move_pages(
                &addrs,
                Some(&vec![node as i32; addrs.len()]),
                &mut status,
                MPOL_MF_MOVE,
            )
            .map_err(|e| KernelError::Sys {
                call: format!("move_pages(2) to node {node}"),
                source: e,
            })?;
            // Pages the call could not queue have a negative status and do not count in
            // its return value.
            let refused = status.iter().filter(|&&st| st < 0).count();
            Ok((t.elapsed().as_secs_f64(), left + refused))
        };
        move_to(a)?;
        let mut g = Vec::new();
        let mut not_migrated = 0;
        for run in 0..opts.runs {
            let node = if run % 2 == 0 { b } else { a };
            let (secs, left) = move_to(node)?;
            not_migrated += left;
            g.push(addrs.len().saturating_sub(left) as f64 * page as f64 / secs / 1e9);
        }
        if checksum(map.words()) != sum {
            return Err(KernelError::ContentChanged(format_size(size)));
        }
        let n = g.len() as f64;
        let mean = g.iter().sum::<f64>() / n;
        let sd = (g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        results.push(KernelResult {
            folio_size: size,
            kernel_page_size: page,
            gbps_mean: mean,
            gbps_sd: sd,
            pages_not_migrated: not_migrated,
            runs: opts.runs,
        });
    }
    Ok(KernelReport {
        backend: "kernel".into(),
        kernel: pagemig::sys::kernel_release(),
        nodes: (a, b),
        total_bytes: opts.total_bytes,
        results,
    })
}
