//! References and window profiles: per-column histograms over bins fixed by
//! the reference, plus moments, extremes, missing and out-of-range counts.
//! Profiles are mergeable (counts add, moments combine, extremes take the
//! min/max), so window profiles from many agents and time ranges combine
//! into one without re-reading records.

mod binner;
mod categorical;
mod compiled;
mod latency;
mod merge;
mod numeric;
mod numeric_spec;
mod point_mass;
mod profiler;
mod reference;
mod seen_filter;
mod validate;

#[cfg(test)]
mod tests;

use crate::proto;

pub use binner::{bin_of, Binner, COMPACT_DENSITY, COMPACT_FROM_COLUMNS};
pub use categorical::{add_category, build_categorical, build_categorical_chosen};
pub use compiled::Compiled;
pub use latency::{
    latency_bucket, merge_stages, LATENCY_BUCKETS, MAX_STAGES, MAX_STAGE_NAME, OTHER_STAGE,
};
pub use merge::{merge_column, merge_parts, merge_window, split_columns, try_merge_window, Merged};
pub use numeric::{
    add_numeric, add_numeric_binned, add_numeric_slice, add_numeric_values, moments,
};
pub use numeric_spec::build_numeric;
pub use point_mass::{atom_tolerance, next_down};
pub use profiler::{Profiler, LABEL_OVERFLOW_INDEX};
pub use reference::{
    decode_reference, encode_reference, fingerprint, validate_reference, ReferenceError, MAGIC,
    REFERENCE_FORMAT,
};
pub use seen_filter::{SeenFilter, SEEN_FILTER_MAX_VALUES};
pub use validate::{
    check_profile, check_spec, decode_window, validate_window, window_mismatches, Shape,
};

/// Fine bins of a numeric reference: quantiles at 1/FINE_BINS steps, so
/// each holds at most about 1/FINE_BINS of the reference mass. This bounds
/// the error of sketch-based statistics (KS, Wasserstein).
pub const FINE_BINS: usize = 200;
/// Categories a categorical reference keeps by default (the rest are
/// "other").
pub const MAX_CATEGORIES: usize = 1000;
/// Most categories any categorical column may keep.
pub const CATEGORY_LIMIT: usize = 65_536;
/// Most columns a reference (features, prediction and probabilities
/// together), and so a window profile, may have.
pub const MAX_COLUMNS: usize = 65_536;
/// Most PSI bins of a numeric column.
pub const MAX_PSI_BINS: usize = 1_000;
/// Most fine bins of a numeric column (the [`FINE_BINS`] quantiles, up to
/// [`MAX_PSI_BINS`] PSI cuts and the maximum fit well within).
pub const MAX_FINE_BINS: usize = 4_096;
/// Most counts of one column of a window profile (the larger of the numeric
/// and the categorical maximum).
pub const MAX_COUNTS: usize = if MAX_FINE_BINS > CATEGORY_LIMIT + 2 {
    MAX_FINE_BINS
} else {
    CATEGORY_LIMIT + 2
};
/// Most codes of one agent vocabulary (a categorical feature's, or the
/// labels') a profiler maps; agents intern no more than this.
pub const MAX_VOCAB_CODES: usize = 65_536;

/// An empty column profile shaped for `spec`.
pub fn empty_profile(
    spec: &proto::ColumnSpec,
    shift: f64,
    ref_min: f64,
    ref_max: f64,
) -> proto::ColumnProfile {
    let n = match spec.numeric.as_ref() {
        Some(num) if spec.kind == proto::ColumnKind::Numeric as i32 => num.cuts.len() + 1,
        _ => spec.categorical.as_ref().map_or(0, |c| c.categories.len()) + 2,
    };
    proto::ColumnProfile {
        counts: vec![0; n],
        shift,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        ref_min,
        ref_max,
        ..Default::default()
    }
}
