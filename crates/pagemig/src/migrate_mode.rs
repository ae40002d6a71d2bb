//! `enum migrate_mode` and `enum migrate_reason`: the leaf that the memory model, the
//! offload framework and the pipeline all name, as Linux keeps them in
//! `include/linux/migrate_mode.h` so that `mm.h` need not include `migrate.h`.
//! Re-exported as [`crate::migrate::Mode`] and [`crate::migrate::Reason`].

#![forbid(unsafe_code)]

/// `enum migrate_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `MIGRATE_ASYNC`: never block; trylock only; writeback gives `EBUSY`.
    Async,
    /// `MIGRATE_SYNC_LIGHT`: may wait for the folio lock of an uptodate folio; writeback
    /// gives `EBUSY`.
    SyncLight,
    /// `MIGRATE_SYNC`: may block, waits for writeback.
    Sync,
}

/// `enum migrate_reason` (`MR_*`), in kernel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Reason {
    /// `MR_COMPACTION`
    Compaction = 0,
    /// `MR_MEMORY_FAILURE`
    MemoryFailure,
    /// `MR_MEMORY_HOTPLUG`
    MemoryHotplug,
    /// `MR_SYSCALL`: `move_pages(2)`, `migrate_pages(2)`, cpuset
    Syscall,
    /// `MR_MEMPOLICY_MBIND`
    MempolicyMbind,
    /// `MR_NUMA_MISPLACED`: NUMA balancing; large folios are never split
    NumaMisplaced,
    /// `MR_CONTIG_RANGE`
    ContigRange,
    /// `MR_LONGTERM_PIN`
    LongtermPin,
    /// `MR_DEMOTION`: memory tiering
    Demotion,
    /// `MR_DAMON`
    Damon,
}

impl Reason {
    /// Every reason (`MR_TYPES` of them).
    pub const ALL: [Reason; 10] = [
        Reason::Compaction,
        Reason::MemoryFailure,
        Reason::MemoryHotplug,
        Reason::Syscall,
        Reason::MempolicyMbind,
        Reason::NumaMisplaced,
        Reason::ContigRange,
        Reason::LongtermPin,
        Reason::Demotion,
        Reason::Damon,
    ];

    /// The name in `migrate_reason_names[]`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Compaction => "compaction",
            Reason::MemoryFailure => "memory_failure",
            Reason::MemoryHotplug => "memory_hotplug",
            Reason::Syscall => "syscall_or_cpuset",
            Reason::MempolicyMbind => "mempolicy_mbind",
            Reason::NumaMisplaced => "numa_misplaced",
            Reason::ContigRange => "contig_range",
            Reason::LongtermPin => "longterm_pin",
            Reason::Demotion => "demotion",
            Reason::Damon => "damon",
        }
    }

    /// Parses a kernel name (`migrate_reason_names[]`, exactly).
    pub fn from_name(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 3] = [Mode::Async, Mode::SyncLight, Mode::Sync];

    /// The command-line name (`async`, `sync-light`, `sync`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::SyncLight => "sync-light",
            Mode::Sync => "sync",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown migration mode {s:?} (async, sync-light, sync)"))
    }
}

impl std::str::FromStr for Reason {
    type Err = String;
    /// A kernel name (`numa_misplaced`), the same with dashes (`numa-misplaced`), or
    /// `syscall` for `syscall_or_cpuset`.
    fn from_str(s: &str) -> Result<Reason, String> {
        if s == "syscall" {
            return Ok(Reason::Syscall);
        }
        Reason::from_name(&s.replace('-', "_")).ok_or_else(|| {
            let names: Vec<String> = Reason::ALL
                .iter()
                .map(|r| r.name().replace('_', "-"))
                .collect();
            format!("unknown migration reason {s:?} ({})", names.join(", "))
        })
    }
}
