//! The `pagemig` command line as a library: argument parsing ([`cli`]) and reporting
//! ([`tables`], [`report`], [`info`]). The workloads themselves are in `pagemig-harness`.

#![forbid(unsafe_code)]

pub mod cli;
pub mod info;
pub mod report;
pub mod run;
pub mod tables;
