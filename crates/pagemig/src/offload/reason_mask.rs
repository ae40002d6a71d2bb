//! The reason mask and its parse / format helpers
//! (`migrate_offload_reason_mask_parse` / `_format`).

use std::fmt;
use std::str::FromStr;

use crate::migrate_mode::Reason;

/// A set of migration reasons (bit `r as u32` for each [`Reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReasonMask(u32);

/// Why a reason mask did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReasonMaskError {
    /// An unknown reason name.
    #[error("unknown migration reason {name:?} (known: all, none, {known})")]
    UnknownReason {
        /// the offending word
        name: String,
        /// the valid names
        known: String,
    },
    /// A raw mask with bits beyond the known reasons.
    #[error("mask {mask:#x} has bits beyond the {nr} known reasons (allowed {allowed:#x})")]
    BitsOutOfRange {
        /// the mask given
        mask: u64,
        /// number of reasons
        nr: usize,
        /// `MIGRATE_OFFLOAD_REASONS_ALLOWED`
        allowed: u32,
    },
    /// Empty input.
    #[error("empty reason mask (use \"none\")")]
    Empty,
}

impl ReasonMask {
    /// `MIGRATE_OFFLOAD_REASONS_ALLOWED`: every reason.
    pub const ALL: ReasonMask = ReasonMask((1 << Reason::ALL.len()) - 1);
    /// No reason.
    pub const NONE: ReasonMask = ReasonMask(0);

    /// From raw bits (not clamped).
    pub fn from_bits(bits: u32) -> ReasonMask {
        ReasonMask(bits)
    }
    /// Raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }
    /// Clamped to the allowed reasons.
    pub fn clamp(self) -> ReasonMask {
        ReasonMask(self.0 & Self::ALL.0)
    }
    /// Whether `reason` is in the set.
    pub fn contains(self, reason: Reason) -> bool {
        self.0 & (1 << reason as u32) != 0
    }
    /// The set with `reason` added.
    pub fn with(self, reason: Reason) -> ReasonMask {
        ReasonMask(self.0 | (1 << reason as u32))
    }
    /// A set of the given reasons.
    pub fn of(reasons: &[Reason]) -> ReasonMask {
        reasons.iter().fold(ReasonMask::NONE, |m, &r| m.with(r))
    }
}

impl FromStr for ReasonMask {
    type Err = ReasonMaskError;

    /// Accepts `all`, `none`, a raw mask (`0x1f`, `12`) or a comma-separated list of
    /// reason names (`compaction,demotion`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ReasonMaskError::Empty);
        }
        match s {
            "all" => return Ok(ReasonMask::ALL),
            "none" => return Ok(ReasonMask::NONE),
            _ => {}
        }
        let raw = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            u64::from_str_radix(h, 16).ok()
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        };
        if let Some(v) = raw {
            if v & !(ReasonMask::ALL.0 as u64) != 0 {
                return Err(ReasonMaskError::BitsOutOfRange {
                    mask: v,
                    nr: Reason::ALL.len(),
                    allowed: ReasonMask::ALL.0,
                });
            }
            return Ok(ReasonMask(v as u32));
        }
        let mut m = ReasonMask::NONE;
        for word in s.split(',').map(str::trim) {
            let r = Reason::from_name(word).ok_or_else(|| ReasonMaskError::UnknownReason {
                name: word.to_string(),
                known: Reason::ALL
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            m = m.with(r);
        }
        Ok(m)
    }
}

impl fmt::Display for ReasonMask {
    /// A comma-separated list of names, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| self.contains(**r))
            .map(|r| r.name())
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_round_trip() {
        assert_eq!("all".parse::<ReasonMask>().unwrap(), ReasonMask::ALL);
        assert_eq!("none".parse::<ReasonMask>().unwrap().to_string(), "none");
        let m: ReasonMask = "compaction,demotion".parse().unwrap();
        assert!(m.contains(Reason::Compaction) && m.contains(Reason::Demotion));
        assert!(!m.contains(Reason::Syscall));
        assert_eq!(m.to_string(), "compaction,demotion");
        assert_eq!(m.to_string().parse::<ReasonMask>().unwrap(), m);
        assert_eq!(
            "0x9".parse::<ReasonMask>().unwrap(),
            ReasonMask::of(&[Reason::Compaction, Reason::Syscall])
        );
        assert_eq!("9".parse::<ReasonMask>().unwrap().bits(), 9);
        assert_eq!(
            ReasonMask::ALL.to_string().parse::<ReasonMask>().unwrap(),
            ReasonMask::ALL
        );
    }

    #[test]
    fn bad_masks_are_errors() {
        assert!(matches!(
            "compaction,bogus".parse::<ReasonMask>(),
            Err(ReasonMaskError::UnknownReason { .. })
        ));
        assert!(matches!(
            "0xffff".parse::<ReasonMask>(),
            Err(ReasonMaskError::BitsOutOfRange { .. })
        ));
        assert_eq!("".parse::<ReasonMask>(), Err(ReasonMaskError::Empty));
        assert!("0xzz".parse::<ReasonMask>().is_err());
    }
}
