//! Copy-offload drivers for pagemig — the analogue of the series' `drivers/migrate_offload/`:
//!
//! * [`mtcopy`] — a multi-threaded CPU copier with a persistent thread pool (Zi Yan's
//!   `mtcopy`, in its padata form);
//! * [`dcbm`] — the DMA batch migrator, over a dmaengine-style provider API
//!   ([`dmaengine`]) with an emulated copy engine ([`emulated`]).
//!
//! A driver sees only the offload API of `pagemig` (the `Migrator` trait, `CopyBatch`, the
//! registry), the way a kernel module sees only exported symbols. Knobs are set through
//! [`ModuleParams`], the analogue of module parameters.

#![forbid(unsafe_code)]

pub mod auto;
pub mod dcbm;
pub mod dmaengine;
pub mod emulated;
mod lifecycle;
pub mod mtcopy;
mod params;
mod sync;

pub use params::{ModuleParams, ParamError};

use std::fmt;
use std::sync::Arc;

use pagemig::mm::Memory;

/// A copy engine named on a command line: `vanilla`, `batch`, `mtcopy:N`, `dcbm:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineSpec {
    /// Offload off: each folio copied inside its own move step (today's kernel).
    Vanilla,
    /// Offload on with the default copier `migrate_folios_mc_copy` (the series, no driver).
    Batch,
    /// The multi-threaded CPU copier with this many threads.
    MtCopy(usize),
    /// The DMA batch migrator with this many channels (emulated provider).
    Dcbm(usize),
    /// Per batch, the engine and width a calibration found fastest (or no batch at all).
    Auto,
}

impl EngineSpec {
    /// Threads or channels.
    pub fn width(&self) -> usize {
        match *self {
            EngineSpec::Vanilla | EngineSpec::Batch => 1,
            EngineSpec::MtCopy(n) | EngineSpec::Dcbm(n) => n,
            EngineSpec::Auto => pagemig::sys::nr_cpus(),
        }
    }
    /// The engine's family name (`mtcopy`), used to route knob flags.
    pub fn family(&self) -> &'static str {
        match self {
            EngineSpec::Vanilla => "vanilla",
            EngineSpec::Batch => "batch",
            EngineSpec::MtCopy(_) => "mtcopy",
            EngineSpec::Dcbm(_) => "dcbm",
            EngineSpec::Auto => "auto",
        }
    }
}

impl fmt::Display for EngineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineSpec::Vanilla => f.write_str("vanilla"),
            EngineSpec::Batch => f.write_str("batch"),
            EngineSpec::MtCopy(n) => write!(f, "mtcopy:{n}"),
            EngineSpec::Dcbm(n) => write!(f, "dcbm:{n}"),
            EngineSpec::Auto => f.write_str("auto"),
        }
    }
}

/// Why a value the user wrote (an engine spec, a size, a knob) did not parse: the message is
/// meant for the user. The one parse error of the command line's value syntaxes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl std::str::FromStr for EngineSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (name, width) = match s.split_once(':') {
            Some((n, w)) => {
                let w: usize = w.parse().map_err(|_| {
                    SpecError(format!(
                        "bad width in engine {s:?}: expected a number after ':'"
                    ))
                })?;
                (n, Some(w))
            }
            None => (s, None),
        };
        let spec = match (name, width) {
            ("vanilla", None) => EngineSpec::Vanilla,
            ("batch", None) => EngineSpec::Batch,
            ("auto", None) => EngineSpec::Auto,
            ("mtcopy", w) => {
                let w = w.unwrap_or_else(mtcopy::default_threads);
                if !(1..=mtcopy::MAX_THREADS).contains(&w) {
                    return Err(SpecError(format!(
                        "mtcopy threads must be 1..={}, got {w}",
                        mtcopy::MAX_THREADS
                    )));
                }
                EngineSpec::MtCopy(w)
            }
            ("dcbm", w) => {
                let w = w.unwrap_or(1);
                if !(1..=dcbm::MAX_DMA_CHANNELS).contains(&w) {
                    return Err(SpecError(format!(
                        "dcbm channels must be 1..={}, got {w}",
                        dcbm::MAX_DMA_CHANNELS
                    )));
                }
                EngineSpec::Dcbm(w)
            }
            ("vanilla" | "batch" | "auto", Some(_)) => {
                return Err(SpecError(format!("engine {name:?} takes no width")))
            }
            _ => {
                return Err(SpecError(format!(
                    "unknown engine {s:?} (known: vanilla, batch, mtcopy:N, dcbm:N, auto)"
                )))
            }
        };
        Ok(spec)
    }
}

/// What survives between [`Engine::start_cached`] calls on one memory: the `auto`
/// engine and what it learned (its candidates' threads run only while it is registered).
/// Release it with [`EngineCache::shutdown`].
#[derive(Default)]
pub struct EngineCache {
    auto: Option<auto::Auto>,
    /// Where auto's learned state is kept between runs (`None`: not kept).
    state_dir: Option<std::path::PathBuf>,
    store: Option<auto::prior::PriorStore>,
    state: Option<LearnedState>,
}

/// What became of auto's learned state in one [`EngineCache`]'s life.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LearnedState {
    /// The file.
    pub path: std::path::PathBuf,
    /// Folio orders started from it.
    pub orders_applied: usize,
    /// Its age when it was read, if it was.
    pub age: Option<std::time::Duration>,
    /// Why a file that was there was not trusted (the run started from nothing).
    pub ignored: Option<String>,
    /// Folio orders written back at [`EngineCache::shutdown`], or why writing failed.
    pub saved: Option<Result<usize, String>>,
}

impl EngineCache {
    /// A cache whose auto starts from, and writes back, what earlier runs learned on this
    /// machine, in `dir` (see [`auto::prior`]); `None` keeps nothing.
    pub fn with_state_dir(dir: Option<std::path::PathBuf>) -> EngineCache {
        EngineCache {
            state_dir: dir,
            ..Default::default()
        }
    }

    /// The cached auto engine's calibration and what it learned.
    pub fn explain(&self) -> Option<String> {
        self.auto.as_ref().map(|a| a.explain())
    }

    /// What became of the learned state (once auto was started with a state directory).
    pub fn learned_state(&self) -> Option<&LearnedState> {
        self.state.as_ref()
    }

    /// Reads the learned state for a newly created auto and applies it.
    fn load_state(&mut self, a: &auto::Auto) {
        let Some(dir) = &self.state_dir else { return };
        let store = auto::prior::PriorStore::new(
            dir,
            auto::prior::MachineKey::this_machine(),
            a.candidate_names(),
        );
        let mut st = LearnedState {
            path: store.path().to_path_buf(),
            ..Default::default()
        };
        match store.load() {
            Ok(Some(l)) => {
                st.orders_applied = a.apply_prior(&l.orders);
                st.age = Some(l.age);
            }
            Ok(None) => {}
            Err(why) => st.ignored = Some(why),
        }
        self.store = Some(store);
        self.state = Some(st);
    }

    /// Writes auto's learned state back (if it is kept) and releases the cached engines'
    /// threads and channels.
    pub fn shutdown(&mut self) {
        if let Some(a) = self.auto.take() {
            if let (Some(store), Some(st)) = (&self.store, self.state.as_mut()) {
                let orders = a.learned_state();
                let n = orders.len();
                st.saved = Some(store.save(orders).map(|()| n).map_err(|e| e.to_string()));
            }
            a.shutdown();
        }
    }
}

/// A live engine: the driver behind a spec, switched on for one memory.
pub enum Engine {
    /// No driver (offload off).
    Vanilla,
    /// The default copier, registered.
    Batch(Arc<dyn pagemig::offload::Migrator>, Arc<Memory>),
    /// mtcopy, offloading on.
    MtCopy(mtcopy::MtCopy),
    /// dcbm, offloading on.
    Dcbm(dcbm::Dcbm),
    /// auto, registered (and whether an [`EngineCache`] keeps its candidates).
    Auto(auto::Auto, Arc<Memory>, bool),
}

impl Engine {
    /// Creates the driver for `spec`, applies `knobs` (`name=value`, for this family) and
    /// switches offloading on.
    pub fn start(
        spec: EngineSpec,
        mm: &Arc<Memory>,
        knobs: &[(String, String)],
    ) -> Result<Engine, ParamError> {
        Self::start_cached(spec, mm, knobs, None)
    }

    /// As [`Engine::start`], keeping the `auto` engine in `cache` across starts (a driver
    /// that stays loaded keeps what it learned). Without a cache, stopping `auto` releases
    /// its candidates.
    pub fn start_cached(
        spec: EngineSpec,
        mm: &Arc<Memory>,
        knobs: &[(String, String)],
        cache: Option<&mut EngineCache>,
    ) -> Result<Engine, ParamError> {
        let e = match spec {
            EngineSpec::Vanilla => {
                if let Some((k, _)) = knobs.first() {
                    return Err(ParamError::Unknown {
                        name: k.clone(),
                        known: "none".into(),
                    });
                }
                Engine::Vanilla
            }
            EngineSpec::Batch => {
                let m: Arc<dyn pagemig::offload::Migrator> =
                    Arc::new(pagemig::offload::DefaultCopier);
                let mask = reason_mask_knob(knobs)?;
                mm.offload()
                    .register(m.clone(), mask)
                    .map_err(ParamError::Offload)?;
                Engine::Batch(m, mm.clone())
            }
            EngineSpec::MtCopy(n) => {
                let d = mtcopy::MtCopy::new(mm);
                d.set_param("threads", &n.to_string())?;
                for (k, v) in knobs {
                    d.set_param(k, v)?;
                }
                d.set_param("offloading", "1")?;
                Engine::MtCopy(d)
            }
            EngineSpec::Auto => {
                let cached = cache.is_some();
                let a = match cache {
                    Some(c) => match &c.auto {
                        Some(a) => a.clone(),
                        None => {
                            let a = auto::Auto::new(mm)?;
                            c.load_state(&a);
                            c.auto = Some(a.clone());
                            a
                        }
                    },
                    None => auto::Auto::new(mm)?,
                };
                let mask = reason_mask_knob(knobs)?;
                a.register(mm, mask)?;
                Engine::Auto(a, mm.clone(), cached)
            }
            EngineSpec::Dcbm(n) => {
                let dev = emulated::EmulatedDmaDevice::new(mm, emulated::EmulatedConfig::default());
                let d = dcbm::Dcbm::new(mm, dev.clone());
                d.set_param("nr_dma_chan", &n.to_string())?;
                for (k, v) in knobs {
                    match k.strip_prefix("dma.") {
                        // Fault injection of the emulated provider.
                        Some(f) => set_dma_fault(dev.faults(), f, v)?,
                        None => d.set_param(k, v)?,
                    }
                }
                d.set_param("offloading", "1")?;
                Engine::Dcbm(d)
            }
        };
        Ok(e)
    }

    /// Switches offloading off (unregisters; waits for in-flight copies).
    pub fn stop(self) -> Result<(), ParamError> {
        match self {
            Engine::Vanilla => Ok(()),
            Engine::Batch(m, mm) => mm
                .offload()
                .unregister(&m)
                .map(|_| ())
                .map_err(ParamError::Offload),
            Engine::MtCopy(d) => d.set_param("offloading", "0"),
            Engine::Dcbm(d) => d.set_param("offloading", "0"),
            Engine::Auto(a, mm, cached) => {
                a.unregister(&mm)?;
                if !cached {
                    a.shutdown();
                }
                Ok(())
            }
        }
    }

    /// The auto engine's calibration and decisions, if this is `auto`.
    pub fn explain(&self) -> Option<String> {
        match self {
            Engine::Auto(a, _, _) => Some(a.explain()),
            _ => None,
        }
    }

    /// Changes the reason mask of the running driver (pushed live to the core).
    pub fn set_reason_mask(&self, mask: pagemig::offload::ReasonMask) -> Result<(), ParamError> {
        match self {
            Engine::Vanilla => Ok(()),
            Engine::Batch(m, mm) => mm
                .offload()
                .set_reason_mask(m, mask)
                .map_err(ParamError::Offload),
            Engine::MtCopy(d) => d.set_param("reason_mask", &mask.to_string()),
            Engine::Dcbm(d) => d.set_param("reason_mask", &mask.to_string()),
            Engine::Auto(a, mm, _) => mm
                .offload()
                .set_reason_mask(&a.migrator(), mask)
                .map_err(ParamError::Offload),
        }
    }

    /// Switches offloading off and on again (unregister while batches may be in flight).
    pub fn restart(&self) -> Result<(), ParamError> {
        match self {
            Engine::Vanilla => Ok(()),
            Engine::Batch(m, mm) => {
                let mask = mm.offload().reason_mask();
                mm.offload().unregister(m).map_err(ParamError::Offload)?;
                mm.offload()
                    .register(m.clone(), mask)
                    .map_err(ParamError::Offload)
            }
            Engine::MtCopy(d) => {
                d.set_param("offloading", "0")?;
                d.set_param("offloading", "1")
            }
            Engine::Dcbm(d) => {
                d.set_param("offloading", "0")?;
                d.set_param("offloading", "1")
            }
            Engine::Auto(a, mm, _) => {
                let mask = mm.offload().reason_mask();
                mm.offload()
                    .unregister(&a.migrator())
                    .map_err(ParamError::Offload)?;
                a.register(mm, mask)
            }
        }
    }

    /// The driver's counters as (name, value).
    pub fn counters(&self) -> Vec<(String, u64)> {
        match self {
            Engine::Vanilla | Engine::Batch(..) => Vec::new(),
            Engine::MtCopy(d) => d
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            Engine::Dcbm(d) => d
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            Engine::Auto(a, _, _) => a.counters(),
        }
    }
}

/// The only knob of the engines without a driver of their own (`batch`, `auto`).
fn reason_mask_knob(
    knobs: &[(String, String)],
) -> Result<pagemig::offload::ReasonMask, ParamError> {
    let mut mask = pagemig::offload::ReasonMask::ALL;
    for (k, v) in knobs {
        match k.as_str() {
            "reason_mask" => mask = v.parse().map_err(|e| ParamError::invalid(k, v, e))?,
            _ => {
                return Err(ParamError::Unknown {
                    name: k.clone(),
                    known: "reason_mask".into(),
                })
            }
        }
    }
    Ok(mask)
}

/// Sets a fault of the emulated DMA provider by name (`fail_every`, `stall_every`,
/// `stall_ms`, `reorder_delay_us`, `no_channel`).
pub fn set_dma_fault(f: &emulated::DmaFaults, name: &str, value: &str) -> Result<(), ParamError> {
    use std::sync::atomic::Ordering::SeqCst;
    let full = format!("dma.{name}");
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| ParamError::invalid(&full, value, "expected a number"))?;
    match name {
        "fail_every" => f.fail_every.store(n, SeqCst),
        "stall_every" => f.stall_every.store(n, SeqCst),
        "stall_ms" => f.stall_ms.store(n, SeqCst),
        "reorder_delay_us" => f.reorder_delay_us.store(n, SeqCst),
        "no_channel" => f.no_channel.store(n != 0, SeqCst),
        _ => {
            return Err(ParamError::Unknown {
                name: full,
                known: "dma.fail_every, dma.stall_every, dma.stall_ms, dma.reorder_delay_us, dma.no_channel".into(),
            })
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_specs_parse_with_clear_errors() {
        assert_eq!(
            "vanilla".parse::<EngineSpec>().unwrap(),
            EngineSpec::Vanilla
        );
        assert_eq!(
            "mtcopy:4".parse::<EngineSpec>().unwrap(),
            EngineSpec::MtCopy(4)
        );
        assert_eq!(
            "dcbm:16".parse::<EngineSpec>().unwrap(),
            EngineSpec::Dcbm(16)
        );
        assert_eq!("dcbm".parse::<EngineSpec>().unwrap(), EngineSpec::Dcbm(1));
        assert!("dcbm:0"
            .parse::<EngineSpec>()
            .unwrap_err()
            .0
            .contains("1..=16"));
        assert!("dcbm:17".parse::<EngineSpec>().is_err());
        assert!("mtcopy:65"
            .parse::<EngineSpec>()
            .unwrap_err()
            .0
            .contains("1..=64"));
        assert!("mtcopy:x".parse::<EngineSpec>().is_err());
        assert!("batch:2".parse::<EngineSpec>().is_err());
        assert!("turbo"
            .parse::<EngineSpec>()
            .unwrap_err()
            .0
            .contains("unknown engine"));
        assert_eq!(EngineSpec::Dcbm(8).to_string(), "dcbm:8");
    }
}
