//! Any argument vector is parsed or rejected with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let mut args = vec!["pagemig".to_string()];
    args.extend(s.split('\0').map(str::to_string));
    let _ = pagemig_cli::cli::parse(&args);
});
