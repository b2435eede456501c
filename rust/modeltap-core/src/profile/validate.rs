//! Checks of what arrives from outside: column specs and their profiles'
//! counts, and window profiles (with their decoding); a reference's own
//! checks build on these (see `reference.rs`).

use super::seen_filter::SEEN_FILTER_MAX_VALUES;
use super::{
    CATEGORY_LIMIT, LATENCY_BUCKETS, MAX_COLUMNS, MAX_COUNTS, MAX_FINE_BINS, MAX_PSI_BINS,
    MAX_STAGES, MAX_STAGE_NAME,
};
use crate::error::ProfileError;
use crate::proto;

/// What a column's profiles hold, by its (checked) spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A numeric column: counts per fine bin, grouped into PSI bins.
    Numeric {
        /// Fine bins (cuts + 1).
        fine_bins: usize,
        /// PSI bins.
        psi_bins: usize,
    },
    /// A categorical column: a count per category, then "other" and
    /// "unseen".
    Categorical {
        /// Categories kept by the reference.
        categories: usize,
    },
}

impl Shape {
    /// The number of counts a profile of this column holds.
    pub fn counts(self) -> usize {
        match self {
            Self::Numeric { fine_bins, .. } => fine_bins,
            Self::Categorical { categories } => categories + 2,
        }
    }
}

/// A name quoted for an error message, cut short: names come from files
/// and messages that may be hostile.
pub(super) fn label(name: &str) -> String {
    const MAX: usize = 64;
    if name.len() <= MAX {
        return format!("{name:?}");
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &name[..end])
}

/// Checks a column spec on its own: a known kind and role, exactly the
/// spec its kind needs, sizes within the maxima; for numeric columns
/// finite, strictly increasing cuts and a PSI bin map that groups adjacent
/// fine bins in order; for categorical ones distinct categories.
pub fn check_spec(c: &proto::ColumnSpec) -> Result<Shape, String> {
    if proto::ColumnRole::try_from(c.role).is_err() {
        return Err(format!("unknown column role {}", c.role));
    }
    let kind = proto::ColumnKind::try_from(c.kind)
        .map_err(|_| format!("unknown column kind {}", c.kind))?;
    match (kind, &c.numeric, &c.categorical) {
        (proto::ColumnKind::Numeric, Some(n), None) => check_numeric(n),
        (proto::ColumnKind::Categorical, None, Some(cat)) => check_categorical(cat),
        (proto::ColumnKind::Numeric, None, _) => {
            Err("numeric column without a numeric spec".into())
        }
        (proto::ColumnKind::Categorical, _, None) => {
            Err("categorical column without a categorical spec".into())
        }
        (_, Some(_), Some(_)) => Err("column with both a numeric and a categorical spec".into()),
    }
}

fn check_numeric(n: &proto::NumericSpec) -> Result<Shape, String> {
    let fine_bins = n.cuts.len() + 1;
    if fine_bins > MAX_FINE_BINS {
        return Err(format!("{fine_bins} fine bins (at most {MAX_FINE_BINS})"));
    }
    if let Some(i) = n.cuts.iter().position(|c| !c.is_finite()) {
        return Err(format!("cut {i} is not finite ({})", n.cuts[i]));
    }
    if let Some(i) = n.cuts.windows(2).position(|w| w[0] >= w[1]) {
        return Err(format!(
            "cuts not strictly increasing at {} ({} then {})",
            i + 1,
            n.cuts[i],
            n.cuts[i + 1]
        ));
    }
    let psi_bins = n.n_psi_bins as usize;
    if psi_bins == 0 || psi_bins > MAX_PSI_BINS {
        return Err(format!("{psi_bins} PSI bins (from 1 to {MAX_PSI_BINS})"));
    }
    if n.psi_bin.len() != fine_bins {
        return Err(format!(
            "PSI bin map has {} entries for {fine_bins} fine bins",
            n.psi_bin.len()
        ));
    }
    // Each PSI bin is a run of adjacent fine bins, in order: the map starts
    // at 0, steps by 0 or 1, and ends at the last PSI bin.
    let mut prev = 0u32;
    for (j, &b) in n.psi_bin.iter().enumerate() {
        if b as usize >= psi_bins {
            return Err(format!(
                "PSI bin index {b} of fine bin {j} is out of range ({psi_bins} PSI bins)"
            ));
        }
        let ok = if j == 0 {
            b == 0
        } else {
            b == prev || b == prev + 1
        };
        if !ok {
            return Err(format!(
                "PSI bin map jumps from {prev} to {b} at fine bin {j}"
            ));
        }
        prev = b;
    }
    if prev as usize != psi_bins - 1 {
        return Err(format!(
            "PSI bin map ends at {prev} but there are {psi_bins} PSI bins"
        ));
    }
    Ok(Shape::Numeric {
        fine_bins,
        psi_bins,
    })
}

fn check_categorical(cat: &proto::CategoricalSpec) -> Result<Shape, String> {
    let k = cat.categories.len();
    if k > CATEGORY_LIMIT {
        return Err(format!("{k} categories (at most {CATEGORY_LIMIT})"));
    }
    let mut seen = std::collections::HashSet::with_capacity(k);
    for v in &cat.categories {
        if !seen.insert(v.as_str()) {
            return Err(format!("category {} listed twice", label(v)));
        }
    }
    if !cat.seen_filter.is_empty() {
        if cat.complete {
            return Err("a seen-filter on a complete column".into());
        }
        if !(1..=16).contains(&cat.seen_hashes) {
            return Err(format!(
                "{} seen-filter probes (from 1 to 16)",
                cat.seen_hashes
            ));
        }
        if cat.seen_filter.len() > SEEN_FILTER_MAX_VALUES * 10 / 8 + 8 {
            return Err(format!("a seen-filter of {} bytes", cat.seen_filter.len()));
        }
    }
    Ok(Shape::Categorical { categories: k })
}

/// Checks the totals of a column profile, whatever its spec: counts add up
/// to `n`, and the infinite and out-of-range values are among them.
fn check_totals(p: &proto::ColumnProfile) -> Result<(), String> {
    let total = p
        .counts
        .iter()
        .try_fold(0u64, |acc, &c| acc.checked_add(c))
        .ok_or("counts overflow")?;
    if total != p.n {
        return Err(format!("counts add up to {total} but n is {}", p.n));
    }
    if p.nonfinite > p.n {
        return Err(format!("{} infinite values but n is {}", p.nonfinite, p.n));
    }
    match p.below_min.checked_add(p.above_max) {
        Some(out) if out <= p.n => {}
        _ => {
            return Err(format!(
                "{} values below and {} above the reference range but n is {}",
                p.below_min, p.above_max, p.n
            ))
        }
    }
    if !(p.shift.is_finite() && p.ref_min.is_finite() && p.ref_max.is_finite()) {
        return Err("shift or reference range not finite".into());
    }
    Ok(())
}

/// Checks a profile against the shape of its column.
pub fn check_profile(shape: Shape, p: &proto::ColumnProfile) -> Result<(), String> {
    if p.counts.len() != shape.counts() {
        return Err(format!(
            "{} counts for {} bins",
            p.counts.len(),
            shape.counts()
        ));
    }
    check_totals(p)
}

/// Checks a window profile that arrived from outside (a batch, a store)
/// on its own: at most [`MAX_COLUMNS`] columns of at most [`MAX_COUNTS`]
/// counts, each column's counts adding up to its totals, no column with
/// more values than the window has records, no more than
/// [`LATENCY_BUCKETS`] latency buckets, errors, flagged records and
/// latencies within the records, and a window end that fits in 64 bits.
pub fn validate_window(w: &proto::WindowProfile) -> Result<(), ProfileError> {
    let bad = |why: String| Err(ProfileError::Inconsistent(why));
    if w.window_start_unix_nano
        .checked_add(w.window_nano)
        .is_none()
    {
        return bad("window end past 2^64 ns".into());
    }
    if w.columns.len() > MAX_COLUMNS {
        return bad(format!(
            "{} columns (at most {MAX_COLUMNS})",
            w.columns.len()
        ));
    }
    if w.latency_counts.len() > LATENCY_BUCKETS {
        return bad(format!(
            "{} latency buckets (at most {LATENCY_BUCKETS})",
            w.latency_counts.len()
        ));
    }
    let latencies = w
        .latency_counts
        .iter()
        .try_fold(0u64, |acc, &c| acc.checked_add(c));
    if latencies.is_none_or(|l| l > w.records) {
        return bad(format!("more latencies than its {} records", w.records));
    }
    if w.errors > w.records || w.flagged > w.records {
        return bad(format!(
            "{} errors and {} flagged of {} records",
            w.errors, w.flagged, w.records
        ));
    }
    // MAX_STAGES names and an "(other)" entry, for roots and for the rest.
    if w.stages.len() > 2 * (MAX_STAGES + 1) {
        return bad(format!(
            "{} stages (at most {})",
            w.stages.len(),
            2 * (MAX_STAGES + 1)
        ));
    }
    for st in &w.stages {
        if st.counts.len() > LATENCY_BUCKETS
            || st.name.len() > MAX_STAGE_NAME
            || !(st.sum.is_finite() && st.sum >= 0.0)
        {
            return bad(format!(
                "stage {:?}: malformed",
                st.name.get(..40).unwrap_or("")
            ));
        }
        let n = st
            .counts
            .iter()
            .try_fold(0u64, |acc, &c| acc.checked_add(c));
        // A span lasts at most ~115 days (1e7 s) for its sum to be believed.
        #[allow(clippy::cast_precision_loss)]
        let believable = |n: u64| st.errors <= n && st.sum <= n as f64 * 1e7;
        if !n.is_some_and(believable) {
            return bad(format!(
                "stage {:?}: more errors than spans, or a sum past its spans",
                st.name.get(..40).unwrap_or("")
            ));
        }
    }
    for (i, c) in w.columns.iter().enumerate() {
        let col = |why: String| bad(format!("column {i}: {why}"));
        if c.counts.len() > MAX_COUNTS {
            return col(format!("{} counts (at most {MAX_COUNTS})", c.counts.len()));
        }
        if let Err(why) = check_totals(c) {
            return col(why);
        }
        if c.n.checked_add(c.missing).is_none_or(|v| v > w.records) {
            return col(format!(
                "{} values and {} missing of {} records",
                c.n, c.missing, w.records
            ));
        }
    }
    Ok(())
}

/// Decodes and checks (see [`validate_window`]) an encoded window profile.
pub fn decode_window(bytes: &[u8]) -> Result<proto::WindowProfile, ProfileError> {
    use prost::Message;
    let w =
        proto::WindowProfile::decode(bytes).map_err(|e| ProfileError::Malformed(e.to_string()))?;
    validate_window(&w)?;
    Ok(w)
}

/// The columns of window profile `w` that do not fit the (checked)
/// reference `r`, each with why: a column whose number of counts differs
/// from its spec's, and a number of columns other than the reference's
/// (a profile without columns, of records counted against no reference,
/// fits any). Empty when `w` fits.
pub fn window_mismatches(r: &proto::Reference, w: &proto::WindowProfile) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, (spec, c)) in r.columns.iter().zip(&w.columns).enumerate() {
        match check_spec(spec) {
            Ok(shape) if shape.counts() == c.counts.len() => {}
            Ok(shape) => out.push((
                i,
                format!(
                    "column {}: the profile has {} counts, the reference {}",
                    label(&spec.name),
                    c.counts.len(),
                    shape.counts()
                ),
            )),
            Err(why) => out.push((i, format!("column {}: {why}", label(&spec.name)))),
        }
    }
    if !w.columns.is_empty() && w.columns.len() != r.columns.len() {
        out.push((
            w.columns.len().min(r.columns.len()),
            format!(
                "the profile has {} columns, the reference {}",
                w.columns.len(),
                r.columns.len()
            ),
        ));
    }
    out
}
