//! The `pagemig` command line as a library: the benchmark, the stress test, and the
//! parsers of their value syntaxes (so that they can be fuzzed).

#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod kernel;
pub mod report;
pub mod spec;
pub mod stress;
