//! [`BenchError`]: why a benchmark run failed.

#![forbid(unsafe_code)]

/// Benchmark failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The backend cannot migrate this kind of folio.
    #[error("the {backend} backend migrates anonymous memory only, not {kind} folios (use --kind anon, or the builtin backend)")]
    KindUnsupported {
        /// backend
        backend: &'static str,
        /// kind asked
        kind: &'static str,
    },
    /// `--from` and `--to` name the same node.
    #[error("--from and --to are both node {0}: a migration needs two different nodes")]
    SameNode(u32),
    /// Setting up memory failed.
    #[error("memory setup: {0}")]
    Mm(#[from] pagemig::mm::MmError),
    /// Engine setup failed.
    #[error("engine setup: {0}")]
    Engine(#[from] pagemig_engines::ParamError),
    /// A driver's counters disagree with what the core handed it.
    #[error("engine {engine}: counters do not add up: {detail}")]
    Counters {
        /// engine
        engine: String,
        /// what disagreed
        detail: String,
    },
    /// The live backend cannot run here.
    #[error("live backend: {0}")]
    Live(#[from] pagemig_live::LiveError),
    /// Content did not survive migration.
    #[error("checksum mismatch after migration: engine {engine}, folio size {size}, {nr_bad} folio(s) differ")]
    Mismatch {
        /// engine
        engine: String,
        /// folio size
        size: String,
        /// number of bad folios
        nr_bad: usize,
    },
    /// A folio ended on the wrong node.
    #[error(
        "engine {engine}: {nr} folio(s) not on node {node} after a migration that reported success"
    )]
    Misplaced {
        /// engine
        engine: String,
        /// count
        nr: usize,
        /// expected node
        node: u32,
    },
}
