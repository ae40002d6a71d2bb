//! The workloads behind the `pagemig` command, as a library that tests and other programs
//! call directly: the benchmark ([`bench`](mod@bench): runner, JSON schema, copy-limit probe, workload,
//! accessor threads), the stress test ([`stress`]: fault injection, `/proc` sampling, the
//! built-in and live runners), the kernel's own `move_pages(2)` for comparison
//! ([`kernel`]), the value syntaxes ([`spec`]), and the shared statistics ([`stats`]) and
//! random source ([`rng`]). The binary (`pagemig-cli`) parses arguments and reports.

#![forbid(unsafe_code)]

pub mod bench;
pub mod kernel;
pub mod rng;
pub mod spec;
pub mod stats;
pub mod stress;
