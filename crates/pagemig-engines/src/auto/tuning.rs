//! The tuning of `auto`: every number its learner and its sampling go by, in one place.
//! Why each has the value it has — the runs on the development machine that set them — is
//! in DESIGN.md ("auto's tuning").

#![forbid(unsafe_code)]

use std::time::Duration;

/// The knobs of `auto`'s online learner and of how it samples batches.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tuning {
    /// Counted samples a visit collects when a candidate is measured.
    pub visit: u32,
    /// A visit ends after this many batches beyond the samples it wanted, counted or not
    /// (a candidate whose copies fail gives no sample).
    pub visit_slack: u32,
    /// Batches after a switch of candidate whose time does not count (the new engine's
    /// threads wake up).
    pub warmup: u32,
    /// A batch that starts sooner than this after another candidate's last batch does not
    /// count either (that candidate's idle threads still spin on the same CPUs).
    pub quiet_after_other: Duration,
    /// Recent samples of the engine in use that a challenger's visit is compared with.
    pub recent_k: usize,
    /// Recent samples kept for the engine in use.
    pub window: usize,
    /// A challenger's visit must beat the engine in use's recent cost by this fraction to
    /// go on to a confirmation.
    pub hysteresis: f64,
    /// The margin a challenger must win each confirmation pair by.
    pub confirm_margin: f64,
    /// Counted samples of each confirmation visit.
    pub confirm_visit: u32,
    /// (engine in use, challenger) pairs of visits in a confirmation; the challenger must
    /// win each, so a confirmation ends with the first pair it loses.
    pub confirm_pairs: usize,
    /// After the first rounds, a runner-up within this fraction of the fastest is settled
    /// against it in a confirmation without margin.
    pub settle_within: f64,
    /// A switch is checked again: the engine it left challenges back (without margin) this
    /// many batches after it.
    pub recheck_after: [u64; 5],
    /// Batches after the first rounds when every other candidate gets a second look.
    pub second_look_after: u64,
    /// Decisions kept for `explain`.
    pub events: usize,
    /// After the first rounds, every `refresh_every`-th batch starts a challenge (the
    /// runner-up every other time, the others round robin).
    pub refresh_every: u64,
    /// Challenges come four times as often over a folio order's first `early` batches.
    pub early: u64,
    /// A sample is clipped at this many times the median of its visit before the mean is
    /// taken (a batch the host stalled must not decide a visit).
    pub clip: f64,
    /// A batch cycle that ends later than this after its copy ended is not a sample (the
    /// migration ended, or the thread did something else, in between).
    pub max_tail: Duration,
    /// Single-folio batches smaller than this follow the start-up calibration.
    pub small_batch_bytes: usize,
    /// Folios of a batch whose sizes are read to find its shape.
    pub shape_samples: usize,
}

/// The tuning `auto` runs with.
pub(crate) const TUNING: Tuning = Tuning {
    visit: 3,
    visit_slack: 24,
    warmup: 2,
    quiet_after_other: Duration::from_micros(250),
    recent_k: 5,
    window: 16,
    hysteresis: 0.08,
    confirm_margin: 0.03,
    confirm_visit: 32,
    confirm_pairs: 2,
    settle_within: 0.15,
    recheck_after: [64, 128, 256, 512, 1024],
    second_look_after: 64,
    events: 24,
    refresh_every: 1024,
    early: 2048,
    clip: 2.0,
    max_tail: Duration::from_millis(2),
    small_batch_bytes: 256 << 10,
    shape_samples: 32,
};
