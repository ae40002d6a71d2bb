//! The control protocol of `pagemig run`: what `pagemig ctl` asks the control thread in a
//! tiered program over its Unix socket, and what it answers. One JSON request per line,
//! one JSON response per line.

#![forbid(unsafe_code)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The directory of the control sockets: `$PAGEMIG_RUN_DIR`, else `/tmp/pagemig-UID`.
pub fn socket_dir() -> PathBuf {
    match std::env::var_os("PAGEMIG_RUN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(format!("/tmp/pagemig-{}", crate::kernel::uid())),
    }
}

/// The control socket of the tiered process `pid`.
pub fn socket_path(pid: u32) -> PathBuf {
    socket_dir().join(format!("run-{pid}.sock"))
}

/// A request to a tiered program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Where its pages are.
    Stat,
    /// Migrate pages.
    Move(MoveRequest),
}

/// Which pages go where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// Pages on these nodes only (`None`: on any node). With several, `to` has one node
    /// or as many, paired in order (`migratepages 0,1 1,0` swaps).
    pub from: Option<Vec<u32>>,
    /// The destination node(s).
    pub to: Vec<u32>,
    /// Only pages in `[start, end)`.
    pub range: Option<(u64, u64)>,
    /// The copy engine for this move (`pagemig bench --engines` syntax); `None`: the
    /// program's engine. The engine named stays the program's engine afterwards.
    pub engine: Option<String>,
    /// Hold the rate of migration at this many MB/s (10^6 bytes), sleeping between chunks;
    /// `None`: as fast as it goes.
    pub rate_mb_s: Option<f64>,
    /// Folios per `move_pages` call, so per batch of `migrate_pages` (at most its
    /// `NR_MAX_BATCHED_MIGRATION`); `None`: 512, the series' batch. Smaller batches keep
    /// fewer pages unmapped at a time: a thread of the program that touches one waits for
    /// a shorter batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_pages: Option<usize>,
    /// Copy and move each batch in growing sub-batches, in turn, so that the first pages
    /// of a batch are back in the program early (the pipelined batch copy, beyond the
    /// series; `false`: the series' path).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pipeline: bool,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// The request's result.
    Ok(Reply),
    /// Why the request was refused; nothing was done.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// For [`Request::Stat`].
    Stat(Box<Stat>),
    /// For [`Request::Move`].
    Moved(MoveReport),
}

/// Where a tiered program's pages are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The program's process id.
    pub pid: u32,
    /// Its nodes.
    pub nodes: Vec<NodeStat>,
    /// True when the nodes are pools of one physical node (a single-node host): moves
    /// between them are real copies but change no memory's speed.
    pub one_physical_node: bool,
    /// The engine that copies.
    pub engine: String,
    /// Allocations and anonymous mappings from this size up are tiered.
    pub threshold_bytes: u64,
    /// `NODE` or `interleave`.
    pub place: String,
    /// The tiered regions, by address.
    pub regions: Vec<RegionStat>,
    /// What is not tiered, and why.
    pub untiered: Untiered,
    /// The counters since the program started.
    pub counters: Counters,
    /// The live backend's own counters (every kernel call and fault kind).
    pub live: crate::LiveCounts,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStat {
    /// pagemig's node number.
    pub id: u32,
    /// The host NUMA node its pool is bound to (`None` on a single-node host).
    pub host_node: Option<u32>,
    /// Bytes of the pool now (it grows on demand).
    pub pool_bytes: u64,
    /// Free bytes of the pool.
    pub free_bytes: u64,
    /// The most the pool may grow to.
    pub reserve_bytes: u64,
    /// Base pages of the program's regions on the node.
    pub pages: u64,
}

/// One tiered region (one large allocation or anonymous mapping).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionStat {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Folio size in bytes.
    pub folio_bytes: u64,
    /// Base pages present, per node (index: node).
    pub pages_per_node: Vec<u64>,
    /// `malloc` (the malloc family) or `mmap`.
    pub source: String,
}

/// What is not tiered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Untiered {
    /// Regions given back to the program for good (a partial `munmap`, `mremap`,
    /// `mprotect` or `MAP_FIXED` over them), and their base pages.
    pub detached_regions: u64,
    /// Base pages of those.
    pub detached_pages: u64,
    /// Large allocations or mappings left to the kernel (over the region size limit, or
    /// no region could be made), and their bytes.
    pub passed_through: u64,
    /// Bytes of those.
    pub passed_through_bytes: u64,
}

/// Counters since the program started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Regions made.
    pub regions_made: u64,
    /// Regions freed.
    pub regions_freed: u64,
    /// Base pages migrated by moves.
    pub pages_migrated: u64,
    /// Base pages a move tried and left where they were.
    pub pages_failed: u64,
    /// Base pages given back to the pools by `MADV_DONTNEED`.
    pub pages_discarded: u64,
    /// Page faults the handler read, and first touches among them.
    pub faults: u64,
    /// First touches served from a pool.
    pub first_touches: u64,
    /// Faults that waited for a page under migration.
    pub faults_on_migration: u64,
    /// Faults on pages already in the program again (the thread was woken).
    pub faults_woken: u64,
    /// Folios populated by fault-around beyond the faulting ones.
    pub faulted_around: u64,
    /// Pages that arrived as the shared zero page and were made real pages.
    pub zero_page_fixups: u64,
    /// Times a pool grew.
    pub pool_growths: u64,
    /// Moves into the program that failed for good (always 0).
    pub remap_errors: u64,
    /// Forks seen (the child runs untiered).
    pub forks: u64,
    /// Regions remade with the folio size the program's `MADV_HUGEPAGE` or
    /// `MADV_NOHUGEPAGE` asked for before it touched them (`--thp=auto`).
    #[serde(default)]
    pub regions_remade: u64,
    /// Regions whose folio size such advice could not change: some of their pages were in
    /// use already, or the advice covered part of them.
    #[serde(default)]
    pub thp_advice_not_followed: u64,
}

/// What a move did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MoveReport {
    /// Base pages migrated.
    pub pages_migrated: u64,
    /// Base pages that were to move and stayed (busy, refused by the kernel, no memory).
    pub pages_failed: u64,
    /// Base pages already where they were to go.
    pub pages_in_place: u64,
    /// Regions looked at.
    pub regions: u64,
    /// Wall time of the move, in seconds.
    pub seconds: f64,
}

/// Sends `req` to the tiered process `pid` and returns its answer. Errors name the socket
/// and say whether the process is not running under `pagemig run`.
pub fn request(pid: u32, req: &Request) -> Result<Response, String> {
    request_at(&socket_path(pid), pid, req)
}

/// [`request`] over the socket at `path` (another directory than [`socket_dir`]'s).
pub fn request_at(path: &std::path::Path, pid: u32, req: &Request) -> Result<Response, String> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        let running = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if running {
            format!(
                "process {pid} has no control socket at {} ({e}): is it running under `pagemig run` (with the same PAGEMIG_RUN_DIR)?",
                path.display()
            )
        } else {
            format!("no process {pid}")
        }
    })?;
    s.set_read_timeout(Some(Duration::from_secs(3600)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if answer.is_empty() {
        return Err(format!(
            "process {pid} closed its control socket without answering"
        ));
    }
    serde_json::from_str(&answer).map_err(|e| format!("a bad answer from process {pid}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_as_one_json_line_each() {
        let r = Request::Move(MoveRequest {
            from: Some(vec![0, 1]),
            to: vec![1, 0],
            range: Some((4096, 8192)),
            engine: Some("mtcopy:2".into()),
            rate_mb_s: None,
            batch_pages: Some(64),
            pipeline: true,
        });
        let j = serde_json::to_string(&r).unwrap();
        assert!(!j.contains('\n'));
        assert!(j.starts_with(r#"{"cmd":"move""#), "{j}");
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"stat"}"#).unwrap(),
            Request::Stat
        );
        let a = Response::Ok(Reply::Moved(MoveReport {
            pages_migrated: 3,
            ..Default::default()
        }));
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&j).unwrap(), a);
        let s = Response::Ok(Reply::Stat(Box::new(Stat {
            pid: 7,
            nodes: vec![],
            one_physical_node: true,
            engine: "batch".into(),
            threshold_bytes: 1 << 20,
            place: "0".into(),
            regions: vec![],
            untiered: Untiered::default(),
            counters: Counters::default(),
            live: crate::LiveCounts::default(),
        })));
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&j).unwrap(), s);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
    }
}
