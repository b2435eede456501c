//! Merging profiles: columns, whole windows (checked or not), encoded
//! parts against a reference, and splitting a window into column groups
//! that merge back.

use super::latency::merge_stages;
use super::validate::{decode_window, label, window_mismatches};
use crate::error::ProfileError;
use crate::proto;

/// Merges `b` into `a`. Both must have the same shape (the same spec; see
/// [`try_merge_window`] for profiles from outside); counts saturate rather
/// than wrap.
pub fn merge_column(a: &mut proto::ColumnProfile, b: &proto::ColumnProfile) {
    if a.counts.len() < b.counts.len() {
        a.counts.resize(b.counts.len(), 0);
    }
    for (x, y) in a.counts.iter_mut().zip(&b.counts) {
        *x = x.saturating_add(*y);
    }
    // Sums are kept relative to a shift; bring b's onto a's (or take b's
    // shift when a has no finite values yet, its sums being zero).
    if a.n == a.nonfinite && b.n > b.nonfinite {
        a.shift = b.shift;
        a.sum = 0.0;
        a.sum_sq = 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let (nb, delta) = (b.n.saturating_sub(b.nonfinite) as f64, b.shift - a.shift);
    if b.n > b.nonfinite {
        a.sum_sq += b.sum_sq + 2.0 * delta * b.sum + nb * delta * delta;
        a.sum += b.sum + nb * delta;
    }
    a.missing = a.missing.saturating_add(b.missing);
    a.nonfinite = a.nonfinite.saturating_add(b.nonfinite);
    a.n = a.n.saturating_add(b.n);
    a.min = a.min.min(b.min);
    a.max = a.max.max(b.max);
    a.below_min = a.below_min.saturating_add(b.below_min);
    a.above_max = a.above_max.saturating_add(b.above_max);
    a.below_sum += b.below_sum;
    a.above_sum += b.above_sum;
}

/// Splits a window profile into column groups of at most `max_bytes`
/// each (by [`crate::record::profile_heap_bytes`]), for a writer whose
/// profile is too large for one ring slot: `(group, first column)` pairs,
/// in column order. The totals (records, errors, flagged, latency) travel
/// with the last group only, so they are merged once the whole profile
/// is in. `None` when one column alone is larger than `max_bytes`.
pub fn split_columns(
    mut w: proto::WindowProfile,
    max_bytes: usize,
) -> Option<Vec<(proto::WindowProfile, usize)>> {
    use crate::record::profile_heap_bytes;
    if profile_heap_bytes(&w) <= max_bytes {
        return Some(vec![(w, 0)]);
    }
    let columns = std::mem::take(&mut w.columns);
    let shell = |w: &proto::WindowProfile| proto::WindowProfile {
        reference_fingerprint: w.reference_fingerprint.clone(),
        window_start_unix_nano: w.window_start_unix_nano,
        window_nano: w.window_nano,
        ..Default::default()
    };
    let per_column = std::mem::size_of::<proto::ColumnProfile>();
    let base = profile_heap_bytes(&w);
    let mut groups: Vec<(proto::WindowProfile, usize)> = Vec::new();
    let mut current = shell(&w);
    let mut from = 0;
    let mut bytes = std::mem::size_of::<proto::WindowProfile>();
    for (i, c) in columns.into_iter().enumerate() {
        let cost = per_column + 8 * c.counts.len();
        if bytes + cost > max_bytes && !current.columns.is_empty() {
            groups.push((std::mem::replace(&mut current, shell(&w)), from));
            from = i;
            bytes = std::mem::size_of::<proto::WindowProfile>();
        }
        if std::mem::size_of::<proto::WindowProfile>() + cost > max_bytes {
            return None;
        }
        bytes += cost;
        current.columns.push(c);
    }
    // The last group takes the totals (and their latency histogram).
    if bytes + base - std::mem::size_of::<proto::WindowProfile>() > max_bytes {
        groups.push((std::mem::replace(&mut current, shell(&w)), from));
        from += groups.last().map_or(0, |(g, _)| g.columns.len());
    }
    current.records = w.records;
    current.errors = w.errors;
    current.flagged = w.flagged;
    current.latency_counts = std::mem::take(&mut w.latency_counts);
    current.latency_sum = w.latency_sum;
    current.stages = std::mem::take(&mut w.stages);
    groups.push((current, from));
    Some(groups)
}

/// Adds `b`'s records, errors, flagged count and latency to `a`'s.
pub(super) fn merge_totals(a: &mut proto::WindowProfile, b: &proto::WindowProfile) {
    a.records = a.records.saturating_add(b.records);
    a.errors = a.errors.saturating_add(b.errors);
    a.flagged = a.flagged.saturating_add(b.flagged);
    if a.latency_counts.len() < b.latency_counts.len() {
        a.latency_counts.resize(b.latency_counts.len(), 0);
    }
    for (x, y) in a.latency_counts.iter_mut().zip(&b.latency_counts) {
        *x = x.saturating_add(*y);
    }
    // A sum that is no time (NaN, infinite, negative: a forged or an old
    // agent's profile) adds nothing, so it cannot poison every later sum.
    if b.latency_sum.is_finite() && b.latency_sum >= 0.0 {
        a.latency_sum = (a.latency_sum + b.latency_sum).min(f64::MAX);
    }
    merge_stages(&mut a.stages, &b.stages);
}

/// Merges window profile `b` into `a`; `a` keeps the earlier start and
/// covers both. The two must have the same shape (profiles of one
/// reference); a column of `b` whose number of counts differs from `a`'s is
/// left out rather than added into the wrong bins. Profiles from outside
/// go through [`try_merge_window`], which refuses such a pair.
pub fn merge_window(a: &mut proto::WindowProfile, b: &proto::WindowProfile) {
    if a.columns.is_empty() && a.records == 0 {
        a.reference_fingerprint.clone_from(&b.reference_fingerprint);
        a.columns.clone_from(&b.columns);
        a.window_start_unix_nano = b.window_start_unix_nano;
        a.window_nano = b.window_nano;
    } else {
        let a_end = a.window_start_unix_nano.saturating_add(a.window_nano);
        let b_end = b.window_start_unix_nano.saturating_add(b.window_nano);
        let start = a.window_start_unix_nano.min(b.window_start_unix_nano);
        a.window_start_unix_nano = start;
        a.window_nano = a_end.max(b_end) - start;
        if a.columns.is_empty() {
            // `a` counted records against no reference: b's columns are
            // the only ones there are.
            a.reference_fingerprint.clone_from(&b.reference_fingerprint);
            a.columns.clone_from(&b.columns);
        } else {
            for (x, y) in a.columns.iter_mut().zip(&b.columns) {
                if x.counts.len() == y.counts.len() {
                    merge_column(x, y);
                }
            }
        }
    }
    merge_totals(a, b);
}

/// Merges `b` into `a` after checking that the two fit together: the same
/// reference fingerprint and, where both have columns, the same number of
/// columns with the same number of counts each. On a mismatch `a` is left
/// unchanged. Both are expected to have passed [`validate_window`].
///
/// [`validate_window`]: super::validate_window
pub fn try_merge_window(
    a: &mut proto::WindowProfile,
    b: &proto::WindowProfile,
) -> Result<(), ProfileError> {
    if !a.columns.is_empty() && !b.columns.is_empty() {
        if a.reference_fingerprint != b.reference_fingerprint {
            return Err(ProfileError::Mismatch(format!(
                "profiles against different references ({} and {})",
                label(&a.reference_fingerprint),
                label(&b.reference_fingerprint)
            )));
        }
        if a.columns.len() != b.columns.len() {
            return Err(ProfileError::Mismatch(format!(
                "{} columns against {}",
                b.columns.len(),
                a.columns.len()
            )));
        }
        for (i, (x, y)) in a.columns.iter().zip(&b.columns).enumerate() {
            if x.counts.len() != y.counts.len() {
                return Err(ProfileError::Mismatch(format!(
                    "column {i}: {} counts against {}",
                    y.counts.len(),
                    x.counts.len()
                )));
            }
        }
    }
    merge_window(a, b);
    Ok(())
}

/// Window profiles merged against a reference, and the parts left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// The merge of the parts that fit (`None` when none did).
    pub window: Option<proto::WindowProfile>,
    /// Parts left out: their index and why.
    pub skipped: Vec<(usize, String)>,
}

/// Decodes encoded window profiles and merges those that fit the (checked)
/// reference `r`. A part that does not decode or fails [`validate_window`],
/// was built against another reference, or has a column that does not fit
/// its spec is left out and listed: one bad profile (a damaged store, a
/// hostile agent) cannot block the drift of all the others.
///
/// [`validate_window`]: super::validate_window
pub fn merge_parts<'a>(r: &proto::Reference, parts: impl IntoIterator<Item = &'a [u8]>) -> Merged {
    let mut out = Merged::default();
    for (i, bytes) in parts.into_iter().enumerate() {
        let w = match decode_window(bytes) {
            Ok(w) => w,
            Err(e) => {
                out.skipped.push((i, e.to_string()));
                continue;
            }
        };
        if !w.columns.is_empty() && w.reference_fingerprint != r.fingerprint {
            out.skipped.push((
                i,
                format!(
                    "built against reference {}, not {}",
                    label(&w.reference_fingerprint),
                    r.fingerprint
                ),
            ));
            continue;
        }
        if let Some((_, why)) = window_mismatches(r, &w).into_iter().next() {
            out.skipped.push((i, why));
            continue;
        }
        match out.window.as_mut() {
            None => out.window = Some(w),
            Some(acc) => {
                if let Err(e) = try_merge_window(acc, &w) {
                    out.skipped.push((i, e.to_string()));
                }
            }
        }
    }
    out
}
