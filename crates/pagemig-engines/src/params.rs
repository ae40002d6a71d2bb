//! Module parameters: typed knobs with a string interface, as `/sys/module/*/parameters/`.

use std::fmt;

/// A parameter write or read that failed; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// No such parameter.
    #[error("unknown parameter {name:?} (known: {known})")]
    Unknown {
        /// the name given
        name: String,
        /// the valid names
        known: String,
    },
    /// The value is invalid for this parameter.
    #[error("invalid value {value:?} for {name}: {why}")]
    Invalid {
        /// parameter
        name: String,
        /// value given
        value: String,
        /// why
        why: String,
    },
    /// The parameter cannot change now (e.g. channels while offloading is on).
    #[error("{name} cannot change while {why}")]
    Busy {
        /// parameter
        name: String,
        /// why
        why: String,
    },
    /// Registering or unregistering with the core failed.
    #[error("offload registry: {0}")]
    Offload(pagemig::offload::OffloadError),
    /// The engine could not start (no channel, no memory).
    #[error("cannot switch offloading on: {0}")]
    Start(String),
    /// The memory model refused what the engine needs (its calibration's folios).
    #[error("cannot switch offloading on: {0}")]
    Memory(#[from] pagemig::mm::MmError),
    /// A system call the engine needs failed (starting a thread, reading or setting its
    /// CPU set).
    #[error("cannot switch offloading on: {call}: {source}")]
    Sys {
        /// What was called.
        call: String,
        /// Its error.
        #[source]
        source: pagemig::errno::OsError,
    },
}

impl ParamError {
    pub(crate) fn invalid(name: &str, value: &str, why: impl fmt::Display) -> ParamError {
        ParamError::Invalid {
            name: name.into(),
            value: value.into(),
            why: why.to_string(),
        }
    }
}

/// Knobs of a driver, read and written by name.
pub trait ModuleParams {
    /// Parameter names.
    fn param_names(&self) -> &'static [&'static str];
    /// Reads a parameter: what is in force.
    fn param(&self, name: &str) -> Result<String, ParamError>;
    /// Writes a parameter; an invalid value changes nothing.
    fn set_param(&self, name: &str, value: &str) -> Result<(), ParamError>;
}

pub(crate) fn parse_bool(name: &str, v: &str) -> Result<bool, ParamError> {
    match v.trim() {
        "1" | "y" | "Y" | "on" | "true" => Ok(true),
        "0" | "n" | "N" | "off" | "false" => Ok(false),
        _ => Err(ParamError::invalid(name, v, "expected 0 or 1")),
    }
}

pub(crate) fn parse_range(name: &str, v: &str, lo: usize, hi: usize) -> Result<usize, ParamError> {
    let n: usize = v
        .trim()
        .parse()
        .map_err(|_| ParamError::invalid(name, v, "expected a number"))?;
    if n < lo || n > hi {
        return Err(ParamError::invalid(name, v, format!("must be {lo}..={hi}")));
    }
    Ok(n)
}
