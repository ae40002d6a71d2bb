//! Parsing of the command line's value syntaxes: sizes (`4K`, `2M`, `1G`) and engine
//! specs (`vanilla`, `batch`), lists of them, knobs and node lists.

#![forbid(unsafe_code)]

/// A parse error with a message meant for the user: the engines crate's, so that an engine
/// spec and a size fail the same way.
pub use pagemig_engines::SpecError;

/// Parses a byte size: a number with an optional `K`, `M` or `G` suffix (binary units).
pub fn parse_size(s: &str) -> Result<usize, SpecError> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul: usize = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => {
                    return Err(SpecError(format!(
                        "bad size {s:?}: unknown unit {c:?} (use K, M or G)"
                    )))
                }
            };
            (&t[..i], mul)
        }
        _ => (t, 1),
    };
    let n: usize = num.parse().map_err(|_| {
        SpecError(format!(
            "bad size {s:?}: expected a number with an optional K/M/G suffix"
        ))
    })?;
    n.checked_mul(mul)
        .ok_or_else(|| SpecError(format!("size {s:?} overflows")))
}

/// Parses a folio size: a power of two from 4K to 2M.
pub fn parse_folio_size(s: &str) -> Result<usize, SpecError> {
    let n = parse_size(s)?;
    if pagemig::mm::Order::from_bytes(n).is_none() {
        return Err(SpecError(format!(
            "bad folio size {s:?}: must be a power of two from 4K to 2M (4K, 8K, 16K, ..., 1M, 2M)"
        )));
    }
    Ok(n)
}

/// Formats a byte count the way the tables show it (`4K`, `2M`).
pub fn format_size(n: usize) -> String {
    if n >= 1 << 30 && n % (1 << 30) == 0 {
        format!("{}G", n >> 30)
    } else if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}K", n >> 10)
    } else {
        format!("{n}")
    }
}

pub use pagemig_engines::EngineSpec;

/// Parses one engine spec (`vanilla`, `batch`, `mtcopy:N`, `dcbm:N`).
pub fn parse_engine(s: &str) -> Result<EngineSpec, SpecError> {
    s.parse::<EngineSpec>().map_err(|e| SpecError(e.0))
}

/// Parses a knob flag `family.name=value` (`dcbm.reason_mask=demotion`).
pub fn parse_knob(s: &str) -> Result<(String, String, String), SpecError> {
    let (lhs, value) = s.split_once('=').ok_or_else(|| {
        SpecError(format!(
            "bad knob {s:?}: expected ENGINE.NAME=VALUE (e.g. dcbm.min_batch_bytes=65536)"
        ))
    })?;
    let (family, name) = lhs
        .split_once('.')
        .ok_or_else(|| SpecError(format!("bad knob {s:?}: expected ENGINE.NAME=VALUE")))?;
    if !["batch", "mtcopy", "dcbm"].contains(&family) {
        return Err(SpecError(format!(
            "bad knob {s:?}: unknown engine {family:?} (batch, mtcopy, dcbm)"
        )));
    }
    Ok((family.to_string(), name.to_string(), value.to_string()))
}

/// Parses a comma-separated list with `f`, rejecting an empty list.
pub fn parse_list<T>(
    s: &str,
    what: &str,
    f: impl Fn(&str) -> Result<T, SpecError>,
) -> Result<Vec<T>, SpecError> {
    let items: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .collect();
    if items.is_empty() {
        return Err(SpecError(format!("empty {what} list")));
    }
    items.into_iter().map(f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("2m").unwrap(), 2 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("3X").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_folio_size("3K").is_err());
        assert!(parse_folio_size("4M").is_err());
        assert!(parse_folio_size("2K").is_err());
        assert_eq!(parse_folio_size("64K").unwrap(), 65536);
        assert_eq!(format_size(2 << 20), "2M");
        assert_eq!(format_size(4096), "4K");
    }

    #[test]
    fn engines() {
        assert_eq!(
            parse_list("vanilla,batch", "engine", parse_engine).unwrap(),
            vec![EngineSpec::Vanilla, EngineSpec::Batch]
        );
        assert!(parse_list("vanilla,turbo", "engine", parse_engine).is_err());
        assert!(parse_list("", "engine", parse_engine).is_err());
    }
}
