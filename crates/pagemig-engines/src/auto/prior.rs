//! What `auto` learned on this machine, kept between runs: the engine each folio order
//! settled on and the cost of every candidate, in a small JSON file under the user's
//! cache directory, keyed by the machine and the candidate set. The next run starts from
//! it (the prior) instead of three rounds of exploration, and keeps learning.
//!
//! The file is never trusted blindly: a file of another version, another machine (CPU
//! model, CPU count, kernel release, copy primitive, NUMA nodes) or candidate set, one
//! older than [`MAX_AGE`] or dated in the future, one that does not parse, or one whose
//! engines are not candidates is ignored, with the reason returned for a warning.
//!
//! The directory: `$PAGEMIG_CACHE_DIR`, else `$XDG_CACHE_HOME/pagemig`, else
//! `$HOME/.cache/pagemig` (the XDG base-directory rule, written out here: three
//! environment lookups do not need a crate). Forget it by deleting the file
//! (`pagemig cache clear`).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file format's version; a file of any other version is ignored.
pub const VERSION: u32 = 1;

/// A learned state older than this is stale and ignored (the machine's firmware, its
/// neighbours on the host, its memory: what was fastest a month ago is a guess).
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a learned state is valid for: the machine it was learned on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineKey {
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// The copy primitive in use (`nt-avx2`, ...).
    pub copy: String,
    /// The host's NUMA nodes.
    pub numa_nodes: usize,
}

impl MachineKey {
    /// This machine.
    pub fn this_machine() -> MachineKey {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        MachineKey {
            cpu,
            cpus: pagemig::sys::nr_cpus(),
            kernel: pagemig::sys::kernel_release(),
            copy: pagemig::copy::best_kind().name().into(),
            numa_nodes: pagemig::mm::numa::host_numa_nodes().len(),
        }
    }
}

/// What one folio order learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPrior {
    /// The folio order (0: 4K ... 9: 2M).
    pub order: usize,
    /// Full batches it learned on.
    pub batches: u64,
    /// The candidate in use.
    pub current: String,
    /// Each measured candidate's batch-cycle cost, ns per MiB.
    pub costs: BTreeMap<String, f64>,
}

/// The file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PriorFile {
    version: u32,
    machine: MachineKey,
    engines: Vec<String>,
    /// When it was written, seconds since the epoch.
    saved_unix: u64,
    orders: Vec<OrderPrior>,
}

/// A learned state read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// Per folio order.
    pub orders: Vec<OrderPrior>,
    /// How old it is.
    pub age: Duration,
}

/// Where one machine's and candidate set's learned state lives.
#[derive(Debug, Clone)]
pub struct PriorStore {
    path: PathBuf,
    machine: MachineKey,
    engines: Vec<String>,
}

/// The cache directory (see the module documentation); `None` without a home.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("PAGEMIG_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("pagemig")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("pagemig")))
}

impl PriorStore {
    /// The store for `engines` (auto's candidate names) on `machine`, in `dir`.
    pub fn new(dir: &Path, machine: MachineKey, engines: Vec<String>) -> PriorStore {
        // FNV-1a over the key: a short, stable file name (std's hasher is not stable
        // across releases).
        let mut h = fnv::FnvHasher::default();
        let key = serde_json::to_string(&(&machine, &engines)).unwrap_or_default();
        h.write(key.as_bytes());
        PriorStore {
            path: dir.join(format!("auto-{:016x}.json", h.finish())),
            machine,
            engines,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the learned state: `Ok(None)` if there is none, `Err(why)` if there is one
    /// that must not be trusted (the caller warns and starts from nothing).
    pub fn load(&self) -> Result<Option<Loaded>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let f: PriorFile =
            serde_json::from_str(&text).map_err(|e| format!("it does not parse: {e}"))?;
        if f.version != VERSION {
            return Err(format!(
                "it is version {}, this pagemig reads version {VERSION}",
                f.version
            ));
        }
        if f.machine != self.machine {
            return Err(format!(
                "it was learned on another machine or kernel ({:?}, this is {:?})",
                f.machine, self.machine
            ));
        }
        if f.engines != self.engines {
            return Err(format!(
                "it was learned over other engines ({:?}, now {:?})",
                f.engines, self.engines
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if f.saved_unix > now + 60 {
            return Err("it is dated in the future".into());
        }
        let age = Duration::from_secs(now.saturating_sub(f.saved_unix));
        if age > MAX_AGE {
            return Err(format!(
                "it is stale ({} days old, the limit is {})",
                age.as_secs() / 86400,
                MAX_AGE.as_secs() / 86400
            ));
        }
        for o in &f.orders {
            let bad_cost = o.costs.values().any(|c| !c.is_finite() || *c <= 0.0);
            if o.order > usize::from(pagemig::mm::HPAGE_PMD_ORDER)
                || !self.engines.contains(&o.current)
                || o.costs.keys().any(|k| !self.engines.contains(k))
                || bad_cost
            {
                return Err(format!("its entry for order {} is not valid", o.order));
            }
        }
        Ok(Some(Loaded {
            orders: f.orders,
            age,
        }))
    }

    /// Writes the learned state (to a temporary file renamed over the old one: a reader
    /// never sees half a file).
    pub fn save(&self, orders: Vec<OrderPrior>) -> std::io::Result<()> {
        let f = PriorFile {
            version: VERSION,
            machine: self.machine.clone(),
            engines: self.engines.clone(),
            saved_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            orders,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        let text = serde_json::to_string_pretty(&f).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// Removes every learned state in `dir`; the files removed.
pub fn clear(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for e in entries {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("auto-") && name.ends_with(".json") {
            std::fs::remove_file(&p)?;
            removed.push(p);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> PriorStore {
        PriorStore::new(
            dir,
            MachineKey::this_machine(),
            vec!["batch".into(), "none".into(), "mtcopy:2".into()],
        )
    }

    fn order0() -> OrderPrior {
        OrderPrior {
            order: 0,
            batches: 400,
            current: "mtcopy:2".into(),
            costs: [("batch".to_string(), 120.0), ("mtcopy:2".to_string(), 90.0)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_saved_state_loads_back_and_a_bad_one_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert_eq!(s.load(), Ok(None), "nothing saved yet");
        s.save(vec![order0()]).unwrap();
        let l = s.load().unwrap().unwrap();
        assert_eq!(l.orders, vec![order0()]);
        assert!(l.age < Duration::from_secs(60));

        let text = std::fs::read_to_string(s.path()).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("version", Box::new(|v| v["version"] = 99.into())),
            (
                "another machine",
                Box::new(|v| v["machine"]["cpus"] = 999.into()),
            ),
            (
                "other engines",
                Box::new(|v| v["engines"][2] = "dcbm:1".into()),
            ),
            (
                "stale",
                Box::new(|v| {
                    let old = v["saved_unix"].as_u64().unwrap() - 31 * 86400;
                    v["saved_unix"] = old.into();
                }),
            ),
            ("future", Box::new(|v| v["saved_unix"] = u64::MAX.into())),
            (
                "not valid",
                Box::new(|v| v["orders"][0]["current"] = "turbo".into()),
            ),
            (
                "not valid",
                Box::new(|v| v["orders"][0]["costs"]["batch"] = (-1.0).into()),
            ),
        ];
        for (why, edit) in cases {
            let mut w = v.clone();
            edit(&mut w);
            std::fs::write(s.path(), w.to_string()).unwrap();
            let e = s.load().unwrap_err();
            assert!(
                e.contains(why.split(' ').next_back().unwrap()),
                "{why}: {e}"
            );
        }
        for junk in ["", "{", "[1,2]", "\u{0}\u{1}"] {
            std::fs::write(s.path(), junk).unwrap();
            assert!(s.load().unwrap_err().contains("parse"), "{junk:?}");
        }
        // Back to the good one; clear() forgets it.
        v["version"] = VERSION.into();
        std::fs::write(s.path(), v.to_string()).unwrap();
        assert!(s.load().unwrap().is_some());
        assert_eq!(clear(dir.path()).unwrap(), vec![s.path().to_path_buf()]);
        assert_eq!(s.load(), Ok(None));
    }

    #[test]
    fn the_file_name_follows_the_machine_and_the_engines() {
        let dir = Path::new("/nonexistent");
        let a = store(dir);
        let mut m = MachineKey::this_machine();
        m.kernel.push_str("-other");
        let b = PriorStore::new(
            dir,
            m,
            vec!["batch".into(), "none".into(), "mtcopy:2".into()],
        );
        let c = PriorStore::new(dir, MachineKey::this_machine(), vec!["batch".into()]);
        assert_ne!(a.path(), b.path());
        assert_ne!(a.path(), c.path());
        assert_eq!(a.path(), store(dir).path());
    }
}
