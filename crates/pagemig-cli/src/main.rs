//! `pagemig`: benchmark and stress the page-migration engine.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pagemig_cli::cli::main()
}
