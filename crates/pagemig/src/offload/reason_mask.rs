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
    /// An unknown reason name (`-EINVAL`).
    #[error("unknown migration reason {name:?} (known: all, none, {known})")]
    UnknownReason {
        /// the offending word
        name: String,
        /// the valid names
        known: String,
    },
}

/// `kstrtoul(s, 0, &v)`: an optional `+`, then `0x`/`0X` for hex, a leading `0` for
/// octal, decimal otherwise, the whole string (one trailing newline allowed), no overflow.
fn kstrtoul_base0(s: &str) -> Option<u64> {
    let s = s.strip_suffix('\n').unwrap_or(s);
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
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

    /// `migrate_offload_reason_mask_parse()`: a number (`kstrtoul` base 0: `0x101`, `12`,
    /// `012` is octal) is a raw mask; otherwise a comma-separated list of the kernel's
    /// reason names (`compaction,demotion`), each token trimmed, empty tokens skipped,
    /// `none` clearing and `all` setting every allowed reason where they stand. The result
    /// is clamped to the allowed reasons, so `""` is the empty mask and stray bits of a raw
    /// mask are dropped.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mask = match kstrtoul_base0(s) {
            Some(v) => v,
            None => {
                let mut mask = 0u64;
                for tok in s.trim().split(',') {
                    let tok = tok.trim();
                    match tok {
                        "" => continue,
                        "none" => mask = 0,
                        "all" => mask = ReasonMask::ALL.0 as u64,
                        _ => {
                            let r = Reason::from_name(tok).ok_or_else(|| {
                                ReasonMaskError::UnknownReason {
                                    name: tok.to_string(),
                                    known: Reason::ALL
                                        .iter()
                                        .map(|r| r.name())
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                }
                            })?;
                            mask |= 1 << r as u32;
                        }
                    }
                }
                mask
            }
        };
        Ok(ReasonMask((mask & ReasonMask::ALL.0 as u64) as u32))
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
    fn bad_names_are_errors() {
        assert!(matches!(
            "compaction,bogus".parse::<ReasonMask>(),
            Err(ReasonMaskError::UnknownReason { .. })
        ));
        assert!("0xzz".parse::<ReasonMask>().is_err());
        // The kernel knows only its own names: `syscall` is the CLI's alias, not a reason.
        assert!("syscall".parse::<ReasonMask>().is_err());
        assert!("-1".parse::<ReasonMask>().is_err());
    }

    /// Each case is what `migrate_offload_reason_mask_parse()` returns for the input.
    #[test]
    fn parses_as_the_kernel_does() {
        let all = ReasonMask::ALL.bits();
        let syscall = 1 << Reason::Syscall as u32;
        let demotion = 1 << Reason::Demotion as u32;
        for (input, want) in [
            // A raw mask is clamped, not refused.
            ("0xffff", all),
            ("0xffffffffffffffff", all),
            // Base 0: a leading 0 is octal, 0x hex, a sign and a newline are allowed.
            ("012", 0o12),
            ("12", 12),
            ("0x9", 9),
            ("+8", 8),
            ("8\n", 8),
            ("0", 0),
            // The empty string and empty tokens are the empty mask.
            ("", 0),
            (" , ,", 0),
            // Tokens are trimmed; none/all act where they stand in the list.
            (" syscall_or_cpuset , demotion ", syscall | demotion),
            ("all,none", 0),
            ("none,demotion", demotion),
            ("demotion,all", all),
            ("all,none,syscall_or_cpuset", syscall),
            ("syscall_or_cpuset,,demotion,", syscall | demotion),
        ] {
            assert_eq!(
                input.parse::<ReasonMask>().map(ReasonMask::bits),
                Ok(want),
                "{input:?}"
            );
        }
    }
}
