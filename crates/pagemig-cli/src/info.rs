//! `pagemig info`: what this machine offers pagemig — the NUMA nodes as `numactl --hardware`
//! shows them, transparent huge pages, userfaultfd, the copy primitive and the CPU set.

#![forbid(unsafe_code)]

use std::fmt::Write as _;

use pagemig::mm::numa::{host_topology, HostNode};
use serde::Serialize;

/// One node, as the JSON shows it.
#[derive(Debug, Serialize)]
pub struct NodeInfo {
    /// Node number.
    pub id: u32,
    /// Memory in bytes.
    pub mem_total_bytes: u64,
    /// Free memory in bytes.
    pub mem_free_bytes: u64,
    /// CPUs (empty for a CPU-less node).
    pub cpus: Vec<u32>,
    /// Whether the node has no CPUs (a memory-only tier).
    pub cpuless: bool,
    /// Distances to every node, in node order.
    pub distances: Vec<u32>,
}

/// Everything `pagemig info` reports.
#[derive(Debug, Serialize)]
pub struct Info {
    /// The kernel release.
    pub kernel: String,
    /// The host's NUMA nodes.
    pub nodes: Vec<NodeInfo>,
    /// `/sys/kernel/mm/transparent_hugepage/enabled` (the bracketed choice).
    pub thp_enabled: String,
    /// `/sys/kernel/mm/transparent_hugepage/defrag`.
    pub thp_defrag: String,
    /// The userfaultfd features offered (`UFFDIO_API`), or why none.
    pub uffd_features: Option<u64>,
    /// Why the userfaultfd could not be opened, if it could not.
    pub uffd_error: Option<String>,
    /// Whether `UFFDIO_MOVE` is offered (the live backend needs it).
    pub uffd_move: bool,
    /// Whether this user may take kernel-mode faults through a userfaultfd.
    pub uffd_kernel_mode_faults_allowed: bool,
    /// The copy primitive chosen on this CPU.
    pub copy_primitive: String,
    /// The CPUs this process may run on.
    pub allowed_cpus: Vec<usize>,
}

fn bracketed(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    crate::run::bracketed_word(&text)
        .unwrap_or("unavailable")
        .to_string()
}

impl From<HostNode> for NodeInfo {
    fn from(n: HostNode) -> NodeInfo {
        NodeInfo {
            cpuless: n.is_cpuless(),
            id: n.id,
            mem_total_bytes: n.mem_total_bytes,
            mem_free_bytes: n.mem_free_bytes,
            cpus: n.cpus,
            distances: n.distances,
        }
    }
}

/// Reads the machine.
pub fn gather() -> Info {
    let uffd = pagemig_live::probe_userfaultfd();
    Info {
        kernel: pagemig::sys::kernel_release(),
        nodes: host_topology().into_iter().map(NodeInfo::from).collect(),
        thp_enabled: bracketed("/sys/kernel/mm/transparent_hugepage/enabled"),
        thp_defrag: bracketed("/sys/kernel/mm/transparent_hugepage/defrag"),
        uffd_features: uffd.features.as_ref().ok().copied(),
        uffd_error: uffd.features.as_ref().err().cloned(),
        uffd_move: uffd.has_move,
        uffd_kernel_mode_faults_allowed: uffd.kernel_mode_faults_allowed,
        copy_primitive: pagemig::copy::best_kind().name().into(),
        allowed_cpus: pagemig::sys::allowed_cpus().unwrap_or_default(),
    }
}

fn list(v: &[impl ToString]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text form, laid out like `numactl --hardware`.
pub fn render(i: &Info) -> String {
    let mut s = String::new();
    let ids: Vec<u32> = i.nodes.iter().map(|n| n.id).collect();
    let _ = writeln!(s, "available: {} nodes ({})", i.nodes.len(), list(&ids));
    for n in &i.nodes {
        let _ = writeln!(s, "node {} cpus: {}", n.id, list(&n.cpus));
        let _ = writeln!(s, "node {} size: {} MB", n.id, n.mem_total_bytes >> 20);
        let _ = writeln!(s, "node {} free: {} MB", n.id, n.mem_free_bytes >> 20);
    }
    let _ = writeln!(s, "node distances:");
    let _ = writeln!(
        s,
        "node {}",
        ids.iter().map(|d| format!("{d:>4}")).collect::<String>()
    );
    for n in &i.nodes {
        let row: String = n.distances.iter().map(|d| format!("{d:>4}")).collect();
        let _ = writeln!(s, "{:>4}:{row}", n.id);
    }
    let cpuless: Vec<u32> = i.nodes.iter().filter(|n| n.cpuless).map(|n| n.id).collect();
    let _ = writeln!(
        s,
        "cpu-less nodes: {}",
        if cpuless.is_empty() {
            "none".into()
        } else {
            list(&cpuless)
        }
    );
    if i.nodes.len() <= 1 {
        let _ = writeln!(
            s,
            "(one host node: the built-in backend's nodes are arenas on the same memory, and \
             --backend kernel cannot run)"
        );
    }
    let _ = writeln!(
        s,
        "\ntransparent hugepages: enabled [{}], defrag [{}]",
        i.thp_enabled, i.thp_defrag
    );
    match (&i.uffd_features, &i.uffd_error) {
        (Some(f), _) => {
            let _ = writeln!(
                s,
                "userfaultfd: features {f:#x}; UFFDIO_MOVE {} (the live backend {})",
                if i.uffd_move { "yes" } else { "no" },
                if i.uffd_move {
                    "can run"
                } else {
                    "needs Linux 6.8+"
                }
            );
        }
        (None, e) => {
            let _ = writeln!(
                s,
                "userfaultfd: unavailable ({})",
                e.as_deref().unwrap_or("unknown")
            );
        }
    }
    let _ = writeln!(
        s,
        "userfaultfd kernel-mode faults: {}",
        if i.uffd_kernel_mode_faults_allowed {
            "allowed to this user"
        } else {
            "not allowed to this user (vm.unprivileged_userfaultfd = 0 and no CAP_SYS_PTRACE): user-mode faults only"
        }
    );
    let _ = writeln!(s, "copy primitive: {}", i.copy_primitive);
    let _ = writeln!(s, "allowed cpus: {}", list(&i.allowed_cpus));
    s
}
