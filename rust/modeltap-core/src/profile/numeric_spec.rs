//! Building a numeric column's spec from the reference's values: quantile
//! cuts, split tails, point-mass bins and the PSI bin map, with the
//! reference's profile of the column.

use super::numeric::add_numeric;
use super::point_mass::{atom_tolerance, next_down};
use super::{empty_profile, FINE_BINS, MAX_PSI_BINS};
use crate::proto;

/// Fewest reference values a tail bin is split down to (see
/// `build_numeric`).
const TAIL_MIN_VALUES: f64 = 8.0;

/// The `q`-quantile (inverse CDF) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Builds a numeric column spec and the reference's profile of it.
pub fn build_numeric(
    name: &str,
    role: proto::ColumnRole,
    class_index: u32,
    values: &[f64],
    bins: usize,
    equal_width: bool,
) -> (proto::ColumnSpec, proto::ColumnProfile) {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let finite: Vec<f64> = sorted.iter().copied().filter(|v| v.is_finite()).collect();
    let bins = bins.max(1);
    let (mut psi_cuts, mut cuts) = (Vec::new(), Vec::new());
    if let (Some(&lo), Some(&hi)) = (finite.first(), finite.last()) {
        for i in 1..bins {
            #[allow(clippy::cast_precision_loss)]
            let q = i as f64 / bins as f64;
            psi_cuts.push(if equal_width {
                // Weighted, not lo + q * (hi - lo): the span may overflow.
                lo * (1.0 - q) + hi * q
            } else {
                quantile(&finite, q)
            });
        }
        // A value that holds a real share of the reference (a discrete or
        // zero-inflated column, a sentinel) is a point mass: its bin holds
        // it alone, (next_down(v), v], so the statistics that read inside
        // bins (Wasserstein, KS) see the mass where it lies, not spread over
        // the bin below it; the fine quantiles are taken over the rest, so
        // the continuous part keeps its full resolution.
        let n = finite.len();
        let mut atoms = Vec::new();
        let mut i = 0;
        while i < n {
            let run = finite[i..].partition_point(|&x| x <= finite[i]);
            if run >= 2 && run * 4 * FINE_BINS >= n {
                atoms.push(finite[i]);
            }
            i += run;
        }
        let rest: Vec<f64> = if atoms.is_empty() {
            Vec::new()
        } else {
            finite
                .iter()
                .copied()
                .filter(|v| atoms.binary_search_by(|a| a.total_cmp(v)).is_err())
                .collect()
        };
        let spread = if atoms.is_empty() { &finite } else { &rest };
        if !spread.is_empty() {
            for i in 1..FINE_BINS {
                #[allow(clippy::cast_precision_loss)]
                cuts.push(quantile(spread, i as f64 / FINE_BINS as f64));
            }
            // The outer fine bins of a heavy tail span most of the range:
            // halve them again and again (1/400, 1/800, ... of the mass at
            // each end) while each still holds a few values.
            let mut share = 1.0 / (2.0 * FINE_BINS as f64);
            #[allow(clippy::cast_precision_loss)]
            while share * spread.len() as f64 >= TAIL_MIN_VALUES {
                cuts.push(quantile(spread, share));
                cuts.push(quantile(spread, 1.0 - share));
                share /= 2.0;
            }
        }
        // A point mass's bin spans a float32 rounding either side of it
        // ((v - t, v + t], t = |v| / 2^20), so the same values logged as
        // float32 (0.1 as 0.10000000149) land in the same bins; every cut at
        // such a value moves to its upper edge.
        let atom_lower = |v: f64| {
            let t = atom_tolerance(v);
            if t > 0.0 && (v - t).is_finite() {
                v - t
            } else {
                next_down(v)
            }
        };
        let atom_upper = |v: f64| {
            let t = atom_tolerance(v);
            if (v + t).is_finite() {
                v + t
            } else {
                v
            }
        };
        let upper = |c: f64| {
            if atoms.binary_search_by(|a| a.total_cmp(&c)).is_ok() {
                atom_upper(c)
            } else {
                c
            }
        };
        for &v in &atoms {
            cuts.push(atom_upper(v));
            let edge = atom_lower(v);
            if edge.is_finite() {
                cuts.push(edge);
            }
        }
        cuts.extend(psi_cuts.iter().map(|&c| upper(c)));
        cuts.push(upper(hi));
        // Values below the reference minimum get a bin of their own, as
        // values above its maximum do: (-inf, lo) and (hi, inf), in the fine
        // bins and the PSI bins alike.
        let below = if atoms.first() == Some(&lo) {
            atom_lower(lo)
        } else {
            next_down(lo)
        };
        if below.is_finite() {
            cuts.push(below);
        }
        for c in &mut cuts {
            *c = upper(*c);
        }
        for c in &mut psi_cuts {
            *c = upper(*c);
        }
        if psi_cuts.len() + 3 <= MAX_PSI_BINS {
            if below.is_finite() {
                psi_cuts.push(below);
            }
            psi_cuts.push(upper(hi));
        }
    }
    psi_cuts.sort_by(f64::total_cmp);
    psi_cuts.dedup();
    cuts.sort_by(f64::total_cmp);
    cuts.dedup();
    let psi_bin: Vec<u32> = (0..=cuts.len())
        .map(|j| {
            let upper = cuts.get(j).copied().unwrap_or(f64::INFINITY);
            u32::try_from(psi_cuts.partition_point(|&p| p < upper)).unwrap_or(u32::MAX)
        })
        .collect();
    let spec = proto::ColumnSpec {
        name: name.to_owned(),
        kind: proto::ColumnKind::Numeric as i32,
        role: role as i32,
        class_index,
        numeric: Some(proto::NumericSpec {
            n_psi_bins: u32::try_from(psi_cuts.len() + 1).unwrap_or(u32::MAX),
            cuts,
            psi_bin,
            equal_width,
        }),
        categorical: None,
    };
    #[allow(clippy::cast_precision_loss)]
    let mean = if finite.is_empty() {
        0.0
    } else {
        // Divided first, so values near f64::MAX do not overflow the sum.
        let n = finite.len() as f64;
        finite.iter().map(|v| v / n).sum::<f64>()
    };
    let (lo, hi) = (
        finite.first().copied().unwrap_or(0.0),
        finite.last().copied().unwrap_or(0.0),
    );
    let mut prof = empty_profile(&spec, mean, lo, hi);
    let cuts = &spec.numeric.as_ref().map_or(&[][..], |n| &n.cuts[..]);
    for &v in values {
        add_numeric(&mut prof, cuts, v);
    }
    // A reference keeps its sums relative to its own mean (computed above
    // without overflow), not to its first value as a window does.
    prof.shift = mean;
    prof.sum = finite.iter().map(|v| v - mean).sum();
    prof.sum_sq = finite.iter().map(|v| (v - mean) * (v - mean)).sum();
    (spec, prof)
}
