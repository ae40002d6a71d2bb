//! The host's NUMA topology, as `numactl --hardware` shows it: which nodes are online, their
//! memory, their CPUs (none for a CPU-less node such as a CXL memory expander) and the
//! distance table, read from `/sys/devices/system/node`.

#![forbid(unsafe_code)]

use std::path::Path;

/// The sysfs directory of the host's NUMA nodes.
const NODE_SYSFS: &str = "/sys/devices/system/node";

/// A list of node (or CPU) numbers in the kernel's list syntax is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad node list {list:?}: {reason}")]
pub struct NodeListError {
    /// The text given.
    pub list: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a Linux node or CPU list such as `0-1,4` (the syntax of `/sys/.../online`,
/// `cpulist` and `numactl`): ascending or not, duplicates removed, sorted.
pub fn parse_node_list(s: &str) -> Result<Vec<u32>, NodeListError> {
    let err = |reason| NodeListError {
        list: s.to_string(),
        reason,
    };
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let part = part.trim();
        if part.is_empty() {
            if s.trim().is_empty() {
                break;
            }
            return Err(err("empty element"));
        }
        let num = |t: &str| t.trim().parse::<u32>().map_err(|_| err("not a number"));
        if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(err("a range ends below its start"));
            }
            if b - a > 4096 {
                return Err(err("a range spans more than 4096 entries"));
            }
            out.extend(a..=b);
        } else {
            out.push(num(part)?);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The host's `MemTotal` (`/proc/meminfo`) in bytes; `None` where it cannot be read.
pub fn host_mem_total_bytes() -> Option<usize> {
    let t = std::fs::read_to_string("/proc/meminfo").ok()?;
    let l = t.lines().find(|l| l.starts_with("MemTotal:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<usize>().ok()? << 10)
}

/// Host NUMA nodes that are online (`/sys/devices/system/node/online`); `[0]` where sysfs
/// does not say.
pub fn host_numa_nodes() -> Vec<u32> {
    std::fs::read_to_string(Path::new(NODE_SYSFS).join("online"))
        .ok()
        .and_then(|t| parse_node_list(&t).ok())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec![0])
}

/// One online host node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNode {
    /// Node number.
    pub id: u32,
    /// `MemTotal` of the node, in bytes (0 where sysfs does not say).
    pub mem_total_bytes: u64,
    /// `MemFree` of the node, in bytes.
    pub mem_free_bytes: u64,
    /// CPUs of the node (empty for a CPU-less node).
    pub cpus: Vec<u32>,
    /// Distances to every online node, in the order of [`host_topology`]'s nodes.
    pub distances: Vec<u32>,
}

impl HostNode {
    /// Whether the node has no CPUs (a memory-only tier, like a CXL expander).
    pub fn is_cpuless(&self) -> bool {
        self.cpus.is_empty()
    }
}

fn meminfo_bytes(text: &str, key: &str) -> u64 {
    // Lines read "Node 0 MemTotal:       24586300 kB".
    text.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(key)?;
            let kb = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

/// The online host nodes with their memory, CPUs and distances (`numactl --hardware`).
pub fn host_topology() -> Vec<HostNode> {
    let base = Path::new(NODE_SYSFS);
    host_numa_nodes()
        .into_iter()
        .map(|id| {
            let dir = base.join(format!("node{id}"));
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let meminfo = read("meminfo");
            HostNode {
                id,
                mem_total_bytes: meminfo_bytes(&meminfo, "MemTotal:"),
                mem_free_bytes: meminfo_bytes(&meminfo, "MemFree:"),
                cpus: parse_node_list(&read("cpulist")).unwrap_or_default(),
                distances: read("distance")
                    .split_whitespace()
                    .filter_map(|d| d.parse().ok())
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_node_list("0"), Ok(vec![0]));
        assert_eq!(parse_node_list("0-2,5\n"), Ok(vec![0, 1, 2, 5]));
        assert_eq!(parse_node_list("5,1,1"), Ok(vec![1, 5]));
        assert_eq!(parse_node_list(""), Ok(vec![]));
        for bad in ["1,,2", "a", "3-1", "-1", "1-", "0-100000"] {
            assert!(parse_node_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn meminfo_lines_read_in_bytes() {
        let t = "Node 0 MemTotal:       24586300 kB\nNode 0 MemFree:         100 kB\n";
        assert_eq!(meminfo_bytes(t, "MemTotal:"), 24586300 * 1024);
        assert_eq!(meminfo_bytes(t, "MemFree:"), 100 * 1024);
        assert_eq!(meminfo_bytes(t, "MemUsed:"), 0);
    }

    #[test]
    fn this_host_has_a_node_with_cpus() {
        let topo = host_topology();
        assert!(!topo.is_empty());
        assert!(topo.iter().any(|n| !n.is_cpuless()));
    }
}
