//! Numeric column profiles: adding values (one at a time, or a whole run
//! with the running sums in registers) and reading their moments.

use super::binner::{bin_of, Binner};
use crate::proto;

/// Adds a numeric value with a precomputed binner.
#[inline]
pub fn add_numeric_binned(p: &mut proto::ColumnProfile, binner: &Binner, v: f64) {
    if v.is_nan() {
        p.missing += 1;
    } else {
        add_in_bin(p, binner.bin(v), v);
    }
}

/// Adds a whole column of values (the offline path): the same result as
/// [`add_numeric_binned`] value by value, with the running sums held in
/// registers instead of the profile.
pub fn add_numeric_slice(p: &mut proto::ColumnProfile, binner: &Binner, values: &[f64]) {
    add_numeric_values(p, binner, values.iter().copied());
}

/// [`add_numeric_slice`] over any run of values (a strided column, a
/// float32 one, a tile of rows).
///
/// Values within the reference's range (nearly all of them) take a short
/// path: their bin, their count and two pairs of running sums (values
/// alternate between the pairs, so consecutive additions do not wait on
/// each other); NaN, infinities and values outside the range take the
/// general one.
#[inline]
pub fn add_numeric_values(
    p: &mut proto::ColumnProfile,
    binner: &Binner,
    values: impl IntoIterator<Item = f64>,
) {
    if p.counts.len() <= binner.cuts.len() {
        // Not a profile of these cuts (never one built from a checked
        // reference): counting into it would pick wrong bins.
        return;
    }
    let mut acc = Sums {
        shift: p.shift,
        ref_min: p.ref_min,
        ref_max: p.ref_max,
        lo: [p.min; 2],
        hi: [p.max; 2],
        ..Sums::default()
    };
    let mut values = values.into_iter();
    // Sums are kept relative to the first finite value a profile sees (a
    // value of this data, so its variance keeps its digits however far it
    // lies from the reference), until then relative to the reference mean.
    if p.n == p.nonfinite {
        for v in values.by_ref() {
            acc.add_other(&mut p.counts, binner, v, 0);
            if v.is_finite() {
                acc.shift = v;
                // The sums of this first value, now relative to itself.
                acc.sum[0] = 0.0;
                acc.sum_sq[0] = 0.0;
                break;
            }
        }
    }
    let counts = &mut p.counts[..];
    if binner.skewed() {
        short_path::<true>(&mut acc, counts, binner, &mut values);
    } else {
        short_path::<false>(&mut acc, counts, binner, &mut values);
    }
    p.shift = acc.shift;
    p.n += acc.n;
    p.missing += acc.missing;
    p.nonfinite += acc.nonfinite;
    p.sum += acc.sum[0] + acc.sum[1];
    p.sum_sq += acc.sum_sq[0] + acc.sum_sq[1];
    p.min = acc.lo[0].min(acc.lo[1]);
    p.max = acc.hi[0].max(acc.hi[1]);
    p.below_min += acc.below;
    p.above_max += acc.above;
    p.below_sum += acc.below_sum;
    p.above_sum += acc.above_sum;
}

/// The loop of [`add_numeric_values`] past the first finite value: values
/// within the reference's range (nearly all) two at a time, each pair of
/// sums taking one of them; others through [`Sums::add_other`].
#[inline]
fn short_path<const SKEWED: bool>(
    acc: &mut Sums,
    counts: &mut [u64],
    binner: &Binner,
    values: &mut impl Iterator<Item = f64>,
) {
    let (ref_min, ref_max, shift) = (acc.ref_min, acc.ref_max, acc.shift);
    // Its own registers (the general path adds into `acc`).
    let (mut s0, mut q0, mut lo0, mut hi0) = (0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY);
    let (mut s1, mut q1, mut lo1, mut hi1) = (0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY);
    let mut n = 0u64;
    while let Some(a) = values.next() {
        let Some(b) = values.next() else {
            acc.add_other(counts, binner, a, 0);
            break;
        };
        if a >= ref_min && a <= ref_max && b >= ref_min && b <= ref_max {
            let (ba, bb) = (binner.bin_in::<SKEWED>(a), binner.bin_in::<SKEWED>(b));
            counts[ba] += 1;
            counts[bb] += 1;
            let (da, db) = (a - shift, b - shift);
            s0 += da;
            s1 += db;
            q0 += da * da;
            q1 += db * db;
            lo0 = if a < lo0 { a } else { lo0 };
            lo1 = if b < lo1 { b } else { lo1 };
            hi0 = if a > hi0 { a } else { hi0 };
            hi1 = if b > hi1 { b } else { hi1 };
            n += 2;
        } else {
            acc.add_other(counts, binner, a, 0);
            acc.add_other(counts, binner, b, 1);
        }
    }
    acc.n += n;
    acc.sum[0] += s0;
    acc.sum[1] += s1;
    acc.sum_sq[0] += q0;
    acc.sum_sq[1] += q1;
    acc.lo = [acc.lo[0].min(lo0), acc.lo[1].min(lo1)];
    acc.hi = [acc.hi[0].max(hi0), acc.hi[1].max(hi1)];
}

/// Running totals of [`add_numeric_values`], held in registers.
#[derive(Default)]
struct Sums {
    shift: f64,
    ref_min: f64,
    ref_max: f64,
    n: u64,
    missing: u64,
    nonfinite: u64,
    sum: [f64; 2],
    sum_sq: [f64; 2],
    lo: [f64; 2],
    hi: [f64; 2],
    below: u64,
    above: u64,
    below_sum: f64,
    above_sum: f64,
}

impl Sums {
    /// A value off the short path: missing, infinite or outside the
    /// reference's range (or any value before the first finite one).
    #[inline(never)]
    fn add_other(&mut self, counts: &mut [u64], binner: &Binner, v: f64, lane: usize) {
        if v.is_nan() {
            self.missing += 1;
            return;
        }
        counts[binner.bin(v)] += 1;
        self.n += 1;
        self.lo[lane] = self.lo[lane].min(v);
        self.hi[lane] = self.hi[lane].max(v);
        if v.is_finite() {
            let d = v - self.shift;
            self.sum[lane] += d;
            self.sum_sq[lane] += d * d;
            if v < self.ref_min {
                self.below += 1;
                self.below_sum += self.ref_min - v;
            } else if v > self.ref_max {
                self.above += 1;
                self.above_sum += v - self.ref_max;
            }
        } else {
            self.nonfinite += 1;
            if v < 0.0 {
                self.below += 1;
            } else {
                self.above += 1;
            }
        }
    }
}

/// Adds a numeric value to a column profile, finding its bin in `cuts`.
#[inline]
pub fn add_numeric(p: &mut proto::ColumnProfile, cuts: &[f64], v: f64) {
    if v.is_nan() {
        p.missing += 1;
    } else {
        add_in_bin(p, bin_of(cuts, v), v);
    }
}

/// Adds a non-NaN value whose fine bin is known.
#[inline]
fn add_in_bin(p: &mut proto::ColumnProfile, bin: usize, v: f64) {
    // Bins come from the profile's own cuts; a profile of another shape
    // (never built from a checked reference) is not counted into.
    let Some(c) = p.counts.get_mut(bin) else {
        return;
    };
    *c += 1;
    let first = p.n == p.nonfinite;
    p.n += 1;
    if v.is_finite() {
        if first {
            // See `add_numeric_values`: sums relative to the first value.
            p.shift = v;
        }
        let d = v - p.shift;
        p.sum += d;
        p.sum_sq += d * d;
        if v < p.ref_min {
            p.below_min += 1;
            p.below_sum += p.ref_min - v;
        } else if v > p.ref_max {
            p.above_max += 1;
            p.above_sum += v - p.ref_max;
        }
    } else {
        p.nonfinite += 1;
        if v < 0.0 {
            p.below_min += 1;
        } else {
            p.above_max += 1;
        }
    }
    p.min = p.min.min(v);
    p.max = p.max.max(v);
}

/// Mean and standard deviation of a numeric column profile (NaN without
/// finite values; the sums cover finite values only).
#[allow(clippy::cast_precision_loss)]
pub fn moments(p: &proto::ColumnProfile) -> (f64, f64) {
    let n = p.n.saturating_sub(p.nonfinite);
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let n = n as f64;
    let mean = p.sum / n;
    // Squares past f64's range: the variance is too large to hold, not 0
    // (inf - inf would be NaN, and the floor below would make it 0).
    let var = if p.sum_sq.is_finite() {
        (p.sum_sq / n - mean * mean).max(0.0)
    } else {
        f64::INFINITY
    };
    (p.shift + mean, var.sqrt())
}
