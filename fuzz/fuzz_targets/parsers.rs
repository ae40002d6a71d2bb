//! The size, engine, knob, fault and reason-mask parsers never panic, and what they accept
//! round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pagemig::offload::ReasonMask;
use pagemig_harness::spec;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(m) = s.parse::<ReasonMask>() {
        assert_eq!(m.to_string().parse::<ReasonMask>(), Ok(m));
        assert_eq!(m.clamp(), m);
    }
    if let Ok(n) = spec::parse_size(s) {
        if n > 0 && n % 1024 == 0 {
            assert_eq!(spec::parse_size(&spec::format_size(n)), Ok(n));
        }
    }
    if let Ok(n) = spec::parse_folio_size(s) {
        assert!(n.is_power_of_two() && (4096..=2 << 20).contains(&n));
    }
    if let Ok(e) = spec::parse_engine(s) {
        assert_eq!(spec::parse_engine(&e.to_string()), Ok(e));
    }
    let _ = spec::parse_knob(s);
    let _ = pagemig_harness::stress::parse_inject(s);
});
