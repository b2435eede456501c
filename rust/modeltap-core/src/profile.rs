//! References and window profiles: per-column histograms over bins fixed by
//! the reference, plus moments, extremes, missing and out-of-range counts.
//! Profiles are mergeable (counts add, moments combine, extremes take the
//! min/max), so window profiles from many agents and time ranges combine
//! into one without re-reading records.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::ProfileError;
use crate::proto;

/// Fine bins of a numeric reference: quantiles at 1/FINE_BINS steps, so
/// each holds at most about 1/FINE_BINS of the reference mass. This bounds
/// the error of sketch-based statistics (KS, Wasserstein).
pub const FINE_BINS: usize = 200;
/// Fewest reference values a tail bin is split down to (see
/// `build_numeric`).
const TAIL_MIN_VALUES: f64 = 8.0;
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
/// Latency buckets: bucket i holds latencies in [2^((i-1)/4), 2^(i/4)) µs,
/// bucket 0 everything below 1 µs, the last everything above.
pub const LATENCY_BUCKETS: usize = 96;
/// Most stage names a window profile keeps (see `StageLatency`); spans of
/// other names count under [`OTHER_STAGE`].
pub const MAX_STAGES: usize = 64;
/// The stage the spans of names past [`MAX_STAGES`] count under.
pub const OTHER_STAGE: &str = "(other)";
/// Longest stage name kept in a profile (bytes; longer ones are cut).
pub const MAX_STAGE_NAME: usize = 256;

/// Reference file format version this build writes and the newest it reads.
/// Version 2 adds a fine and a PSI bin below the reference minimum (its
/// first cut is the float just below it) and point-mass bins; version 1
/// files are read as they are.
pub const REFERENCE_FORMAT: u32 = 2;

/// Latency bucket of a duration in seconds.
#[inline]
pub fn latency_bucket(seconds: f64) -> usize {
    let us = seconds * 1e6;
    if us.is_nan() || us < 1.0 {
        return 0;
    }
    // Saturating: an infinite latency casts to usize::MAX, and it belongs
    // in the last bucket, not wrapped into the first.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let b = ((us.log2() * 4.0) as usize).saturating_add(1);
    b.min(LATENCY_BUCKETS - 1)
}

/// Number of `cuts` strictly below `v` (the fine bin of `v`), branch-free.
#[inline]
pub fn bin_of(cuts: &[f64], v: f64) -> usize {
    let mut size = cuts.len();
    if size == 0 {
        return 0;
    }
    let mut base = 0usize;
    while size > 1 {
        let half = size / 2;
        let mid = base + half;
        base = if cuts[mid] < v { mid } else { base };
        size -= half;
    }
    base + usize::from(cuts[base] < v)
}

/// Finds fine bins in O(1): a uniform grid over the cuts' range whose cells
/// hold the first candidate bin (that of a little below the cell's start,
/// so never above the bin of a value the cell receives), then a short
/// upward scan, or a binary search where a cell spans many bins (skewed
/// data). Equivalent to [`bin_of`].
///
/// The grid has 32 cells per bin by default (a value's cell then nearly
/// always holds its bin: no scan, no mispredicted branch); profiles of many
/// columns at once use fewer ([`Binner::compact`]), so that every column's
/// tables stay in the outer caches. Entries are 16-bit.
#[derive(Debug, Clone)]
pub struct Binner {
    cuts: Vec<f64>,
    lo: f64,
    scale: f64,
    table: Vec<u16>,
    /// Some cell spans more than `SCAN_MAX` bins (data far from uniform):
    /// those are bisected rather than scanned.
    skewed: bool,
}

/// Bins of one grid cell scanned one by one; a cell spanning more is
/// bisected.
const SCAN_MAX: usize = 2;

impl Default for Binner {
    /// A binner without cuts: every value in bin 0. (A derived default would
    /// have no grid cell, and `bin` needs one.)
    fn default() -> Self {
        Self::new(&[])
    }
}

/// Cuts a [`Binner`] indexes with its grid; more are searched by bisection
/// alone (a reference never has that many: see `FINE_BINS`).
const GRID_MAX_CUTS: usize = u16::MAX as usize;

/// Grid cells per bin of [`Binner::compact`].
pub const COMPACT_DENSITY: usize = 16;

/// Numeric columns profiled together from which [`Binner::compact`] pays.
pub const COMPACT_FROM_COLUMNS: usize = 64;

impl Binner {
    /// A binner for `cuts` (strictly increasing).
    pub fn new(cuts: &[f64]) -> Self {
        Self::with_density(cuts, 32)
    }

    /// A binner with a smaller grid (a few KiB per column), for profiles of
    /// hundreds of columns at a time.
    pub fn compact(cuts: &[f64]) -> Self {
        Self::with_density(cuts, COMPACT_DENSITY)
    }

    /// A binner whose grid has about `density` cells per bin.
    pub fn with_density(cuts: &[f64], density: usize) -> Self {
        let cuts = cuts.to_vec();
        let (Some(&lo), Some(&hi)) = (cuts.first(), cuts.last()) else {
            return Self {
                cuts,
                lo: 0.0,
                scale: 0.0,
                table: vec![0, 0],
                skewed: false,
            };
        };
        if cuts.len() > GRID_MAX_CUTS {
            // One cell: every value bisects the whole range.
            return Self {
                cuts,
                lo,
                scale: 0.0,
                table: vec![0, u16::MAX],
                skewed: true,
            };
        }
        let cells = (cuts.len() * density.max(1)).next_power_of_two().max(64);
        #[allow(clippy::cast_precision_loss)]
        let scale = if hi > lo {
            cells as f64 / (hi - lo)
        } else {
            0.0
        };
        // How far below a cell's start a value that rounds into the cell
        // can lie (the cell of `v` is computed in floating point): some 8
        // times the error of `(v - lo) * scale` and of the start itself (an
        // ulp or so of the magnitudes involved), each end scaled apart so
        // the sum stays finite near the largest floats.
        let slack = lo.abs() * (8.0 * f64::EPSILON) + hi.abs() * (8.0 * f64::EPSILON);
        #[allow(clippy::cast_precision_loss)]
        let mut table: Vec<u16> = (0..=cells)
            .map(|c| {
                let x = lo + c as f64 / scale.max(f64::MIN_POSITIVE);
                // The bin of a little below the cell's start: at or below
                // the bin of every value the cell receives, so `bin` only
                // ever scans upwards.
                u16::try_from(bin_of(&cuts, x - slack)).unwrap_or(u16::MAX)
            })
            .collect();
        // A sentinel past the last cell: the last cell's bins run to the end.
        table.push(u16::try_from(cuts.len()).unwrap_or(u16::MAX));
        let skewed = table
            .windows(2)
            .any(|w| usize::from(w[1]).saturating_sub(usize::from(w[0])) > SCAN_MAX);
        Self {
            cuts,
            lo,
            scale,
            table,
            skewed,
        }
    }

    /// Where a cell spans many bins, the first candidate at or past the
    /// bin of `v` by bisection (kept out of line: `bin` stays small enough
    /// to inline into the per-value loops).
    #[inline(never)]
    fn bisect(&self, cell: usize, b: usize, v: f64) -> usize {
        let n = self.cuts.len();
        let end = match self.table[cell + 1] {
            u16::MAX => n,
            e => usize::from(e).min(n),
        };
        if end > b + SCAN_MAX {
            b + self.cuts[b..end].partition_point(|&c| c < v)
        } else {
            b
        }
    }

    /// The fine bin of `v` (`v` not NaN).
    #[inline]
    pub fn bin(&self, v: f64) -> usize {
        if self.skewed {
            self.bin_in::<true>(v)
        } else {
            self.bin_in::<false>(v)
        }
    }

    /// Whether some grid cell spans many bins (then [`bin_in`] must be
    /// called with `SKEWED` true).
    ///
    /// [`bin_in`]: Self::bin_in
    #[inline]
    pub fn skewed(&self) -> bool {
        self.skewed
    }

    /// [`bin`](Self::bin) for a binner whose [`skewed`](Self::skewed) is
    /// `SKEWED` (a loop over many values tests that once).
    #[inline]
    pub fn bin_in<const SKEWED: bool>(&self, v: f64) -> usize {
        let t = (v - self.lo) * self.scale;
        // Negative (or NaN, for an infinite value and a zero scale) gives
        // cell 0, past the grid its last cell; a signed conversion is the
        // cheaper one.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let cell = ((t as i64).max(0) as usize).min(self.table.len() - 2);
        let n = self.cuts.len();
        let mut b = usize::from(self.table[cell]);
        if SKEWED {
            b = self.bisect(cell, b, v);
        }
        // The cell's entry is at or below the bin of `v`.
        while b < n && self.cuts[b] < v {
            b += 1;
        }
        b
    }
}

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

/// The largest float below `x` (`f64::next_down`, which needs a newer
/// Rust than this crate's minimum); NaN and -inf are returned as they are.
pub fn next_down(x: f64) -> f64 {
    if x.is_nan() || x == f64::NEG_INFINITY {
        return x;
    }
    if x == 0.0 {
        return -f64::from_bits(1);
    }
    let bits = x.to_bits();
    f64::from_bits(if x > 0.0 { bits - 1 } else { bits + 1 })
}

/// Half-width of a point mass's bin around `v`: a float32 rounding of it,
/// with room to spare (float32 keeps 24 bits).
pub fn atom_tolerance(v: f64) -> f64 {
    v.abs() / 1_048_576.0
}

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

/// Adds a categorical value (a bucket index; `None` for missing).
#[inline]
pub fn add_category(p: &mut proto::ColumnProfile, bucket: Option<usize>) {
    match bucket {
        Some(b) => {
            if let Some(c) = p.counts.get_mut(b) {
                *c += 1;
                p.n += 1;
            }
        }
        None => p.missing += 1,
    }
}

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
fn merge_totals(a: &mut proto::WindowProfile, b: &proto::WindowProfile) {
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

/// Adds the stage latencies of `b` to `a` (by name and root; names past
/// [`MAX_STAGES`] under [`OTHER_STAGE`]).
pub fn merge_stages(a: &mut Vec<proto::StageLatency>, b: &[proto::StageLatency]) {
    for st in b {
        let at = stage_entry(a, &st.name, st.root);
        if at.counts.len() < st.counts.len() {
            at.counts.resize(st.counts.len(), 0);
        }
        for (x, y) in at.counts.iter_mut().zip(&st.counts) {
            *x = x.saturating_add(*y);
        }
        at.sum = (at.sum + st.sum).min(f64::MAX);
        at.errors = at.errors.saturating_add(st.errors);
    }
}

/// The entry of stage `(name, root)` in `stages`, added if there is room,
/// else the [`OTHER_STAGE`] entry of the same `root`.
fn stage_entry<'a>(
    stages: &'a mut Vec<proto::StageLatency>,
    name: &str,
    root: bool,
) -> &'a mut proto::StageLatency {
    let find = |stages: &[proto::StageLatency], n: &str| {
        stages.iter().position(|s| s.root == root && s.name == n)
    };
    let named = stages
        .iter()
        .filter(|s| s.root == root && s.name != OTHER_STAGE)
        .count();
    let i = match find(stages, name) {
        Some(i) => i,
        None => {
            let name = if named < MAX_STAGES {
                name
            } else {
                OTHER_STAGE
            };
            match find(stages, name) {
                Some(i) => i,
                None => {
                    stages.push(proto::StageLatency {
                        name: name.to_owned(),
                        root,
                        counts: vec![0; LATENCY_BUCKETS],
                        ..Default::default()
                    });
                    stages.len() - 1
                }
            }
        }
    };
    &mut stages[i]
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

/// Builds a categorical column spec from distinct values and their counts.
pub fn build_categorical(
    name: &str,
    role: proto::ColumnRole,
    class_index: u32,
    values: Vec<(String, u64)>,
    missing: u64,
    max_categories: usize,
) -> (proto::ColumnSpec, proto::ColumnProfile) {
    build_categorical_chosen(
        name,
        role,
        class_index,
        values,
        missing,
        max_categories,
        None,
        &[],
    )
}

/// [`build_categorical`], keeping the categories `chosen` (at most
/// `max_categories` of them) when given instead of the most frequent of
/// `values`: a caller that picks them on other rows than it counts keeps
/// their counts free of the luck that made them frequent.
#[allow(clippy::too_many_arguments)]
pub fn build_categorical_chosen(
    name: &str,
    role: proto::ColumnRole,
    class_index: u32,
    values: Vec<(String, u64)>,
    missing: u64,
    max_categories: usize,
    chosen: Option<&[String]>,
    seen: &[String],
) -> (proto::ColumnSpec, proto::ColumnProfile) {
    let mut values = values;
    let (keep, complete) = match chosen {
        Some(chosen) => {
            let chosen: std::collections::HashSet<&str> = chosen
                .iter()
                .take(max_categories.max(1))
                .map(String::as_str)
                .collect();
            let mut kept: Vec<(String, u64)> = Vec::with_capacity(chosen.len());
            let mut rest: Vec<(String, u64)> = Vec::new();
            let mut present = std::collections::HashSet::new();
            for v in values {
                if chosen.contains(v.0.as_str()) {
                    present.insert(v.0.clone());
                    kept.push(v);
                } else {
                    rest.push(v);
                }
            }
            // A chosen category these rows lack is kept, with no count.
            for c in &chosen {
                if !present.contains(*c) {
                    kept.push(((*c).to_owned(), 0));
                }
            }
            kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let keep = kept.len();
            kept.extend(rest);
            values = kept;
            (keep, false)
        }
        None => {
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let keep = values.len().min(max_categories.max(1));
            (keep, keep == values.len())
        }
    };
    let other: u64 = values[keep..].iter().map(|v| v.1).sum();
    let all: Vec<String> = if complete || !seen.is_empty() {
        Vec::new()
    } else {
        values.iter().map(|v| v.0.clone()).collect()
    };
    values.truncate(keep);
    let spec = proto::ColumnSpec {
        name: name.to_owned(),
        kind: proto::ColumnKind::Categorical as i32,
        role: role as i32,
        class_index,
        numeric: None,
        categorical: Some(proto::CategoricalSpec {
            categories: values.iter().map(|v| v.0.clone()).collect(),
            complete,
            ..Default::default()
        }),
    };
    let mut spec = spec;
    if !complete {
        // Every value held, kept or not (`seen`, else the ones counted).
        let (filter, hashes) = if seen.is_empty() {
            SeenFilter::build(all.iter().map(String::as_str))
        } else {
            SeenFilter::build(seen.iter().map(String::as_str))
        };
        if let Some(c) = spec.categorical.as_mut() {
            c.seen_filter = filter;
            c.seen_hashes = hashes;
        }
    }
    let mut prof = empty_profile(&spec, 0.0, 0.0, 0.0);
    for (i, (_, c)) in values.iter().enumerate() {
        prof.counts[i] = *c;
    }
    prof.counts[keep] = other;
    prof.n = values.iter().map(|v| v.1).sum::<u64>() + other;
    prof.missing = missing;
    (spec, prof)
}

/// A fingerprint of the column specs (FNV-1a of their encoding).
pub fn fingerprint(columns: &[proto::ColumnSpec]) -> String {
    use prost::Message;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in columns {
        for b in c.encode_to_vec() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

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
fn label(name: &str) -> String {
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

/// Checks a reference's column `c` and its profile `p`: the spec (see
/// [`check_spec`]), the profile's counts against it, and for numeric
/// columns a sane quantile sketch (the cuts inside the reference's range).
fn check_reference_column(c: &proto::ColumnSpec, p: &proto::ColumnProfile) -> Result<(), String> {
    let shape = check_spec(c)?;
    check_profile(shape, p)?;
    if let Some(n) = &c.numeric {
        if p.ref_min > p.ref_max {
            return Err(format!(
                "reference minimum {} above its maximum {}",
                p.ref_min, p.ref_max
            ));
        }
        if let (Some(&lo), Some(&hi)) = (n.cuts.first(), n.cuts.last()) {
            // The first cut may be just below the minimum (the edge of the
            // below-minimum bin) and the last just above the maximum (the
            // upper edge of a point mass there), by a float32 rounding.
            let low = next_down(p.ref_min).min(p.ref_min - 2.0 * atom_tolerance(p.ref_min));
            let high = p.ref_max + 2.0 * atom_tolerance(p.ref_max);
            if lo < low || hi > high {
                return Err(format!(
                    "cuts [{lo}, {hi}] outside the reference range [{}, {}]",
                    p.ref_min, p.ref_max
                ));
            }
        }
    }
    Ok(())
}

/// Checks a decoded reference completely before anything indexes with it:
/// the format version, at most [`MAX_COLUMNS`] columns with distinct names
/// and at most one prediction column, every column's spec and profile (see
/// [`check_spec`]), and the fingerprint. Errors name the column.
pub fn validate_reference(r: &proto::Reference) -> Result<(), ReferenceError> {
    if r.format_version > REFERENCE_FORMAT {
        return Err(ReferenceError::TooNew(r.format_version));
    }
    if r.format_version == 0 {
        return Err(ReferenceError::Corrupt("format version missing".into()));
    }
    if r.columns.len() > MAX_COLUMNS {
        return Err(ReferenceError::Corrupt(format!(
            "{} columns (at most {MAX_COLUMNS})",
            r.columns.len()
        )));
    }
    if r.profiles.len() != r.columns.len() {
        return Err(ReferenceError::Corrupt(format!(
            "{} profiles for {} columns",
            r.profiles.len(),
            r.columns.len()
        )));
    }
    let mut names = std::collections::HashSet::with_capacity(r.columns.len());
    let mut prediction: Option<&str> = None;
    let mut classes = std::collections::HashSet::new();
    for (c, p) in r.columns.iter().zip(&r.profiles) {
        let bad =
            |why: String| ReferenceError::Corrupt(format!("column {}: {why}", label(&c.name)));
        if !names.insert(c.name.as_str()) {
            return Err(bad("listed twice".into()));
        }
        check_reference_column(c, p).map_err(bad)?;
        if c.role == proto::ColumnRole::Prediction as i32 {
            if let Some(first) = prediction {
                return Err(bad(format!(
                    "a second prediction column (the first is {})",
                    label(first)
                )));
            }
            prediction = Some(&c.name);
        }
        if c.role == proto::ColumnRole::Probability as i32 && !classes.insert(c.class_index) {
            return Err(bad(format!(
                "a second probability column for class {}",
                c.class_index
            )));
        }
    }
    if r.fingerprint != fingerprint(&r.columns) {
        return Err(ReferenceError::Corrupt(
            "fingerprint does not match the columns".into(),
        ));
    }
    Ok(())
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

/// A reference compiled for fast profiling.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The reference itself.
    pub reference: proto::Reference,
    /// Column index by name.
    pub by_name: HashMap<String, usize>,
    /// Category → bucket, per categorical column.
    pub buckets: Vec<HashMap<String, usize>>,
    /// Per column: its shape, `None` where the column or its profile fails
    /// [`check_spec`] / [`check_profile`] (such a column is never profiled).
    shapes: Vec<Option<Shape>>,
    /// Per column: the binning table of a numeric column (a default one
    /// otherwise), built once and shared by every profiler of this
    /// reference (a thousand columns' tables take megabytes).
    binners: Vec<Binner>,
}

impl Compiled {
    /// Compiles a reference that [`decode_reference`] or
    /// [`validate_reference`] accepted (see [`Compiled::try_new`]). Given
    /// an unchecked one it still never panics nor counts into the wrong
    /// bins: a column that fails the checks is left out of every profile.
    pub fn new(reference: proto::Reference) -> Self {
        let by_name = reference
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let buckets = reference
            .columns
            .iter()
            .map(|c| {
                c.categorical.as_ref().map_or_else(HashMap::new, |cat| {
                    cat.categories
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v.clone(), i))
                        .collect()
                })
            })
            .collect();
        let shapes = reference
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let shape = check_spec(c).ok()?;
                check_profile(shape, reference.profiles.get(i)?).ok()?;
                Some(shape)
            })
            .collect::<Vec<Option<Shape>>>();
        let numeric = |i: usize| matches!(shapes[i], Some(Shape::Numeric { .. }));
        let compact = (0..shapes.len()).filter(|&i| numeric(i)).count() >= COMPACT_FROM_COLUMNS;
        let binners = reference
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| match (&c.numeric, numeric(i)) {
                (Some(n), true) if compact => Binner::compact(&n.cuts),
                (Some(n), true) => Binner::new(&n.cuts),
                _ => Binner::default(),
            })
            .collect();
        Self {
            reference,
            by_name,
            buckets,
            shapes,
            binners,
        }
    }

    /// The binning table of column `col` (a default one for a column that
    /// is not numeric, or out of range).
    pub fn binner(&self, col: usize) -> &Binner {
        static NONE: std::sync::OnceLock<Binner> = std::sync::OnceLock::new();
        self.binners
            .get(col)
            .unwrap_or_else(|| NONE.get_or_init(Binner::default))
    }

    /// Checks a reference completely ([`validate_reference`]), then
    /// compiles it.
    pub fn try_new(reference: proto::Reference) -> Result<Self, ReferenceError> {
        validate_reference(&reference)?;
        Ok(Self::new(reference))
    }

    /// The shape of column `col`, `None` for a column that failed the
    /// checks (or is past the last).
    pub fn shape(&self, col: usize) -> Option<Shape> {
        self.shapes.get(col).copied().flatten()
    }

    /// Bucket of a categorical value in column `col`: a category, "other"
    /// (the reference had more values than it kept) or "unseen".
    pub fn bucket(&self, col: usize, value: &str) -> usize {
        let Some(map) = self.buckets.get(col) else {
            return self.miss_bucket(col);
        };
        map.get(value)
            .copied()
            .unwrap_or_else(|| self.miss_bucket_of(col, value.as_bytes()))
    }

    /// The bucket of `value`, none of column `col`'s categories: "other"
    /// when the reference held it but did not keep it (its seen-filter, or
    /// without one, whenever the reference kept only its most frequent
    /// values), else "unseen".
    pub fn miss_bucket_of(&self, col: usize, value: &[u8]) -> usize {
        let cat = self
            .reference
            .columns
            .get(col)
            .and_then(|c| c.categorical.as_ref());
        match cat {
            Some(c)
                if !c.complete && !SeenFilter::contains(&c.seen_filter, c.seen_hashes, value) =>
            {
                c.categories.len() + 1 // unseen
            }
            _ => self.miss_bucket(col),
        }
    }

    /// The bucket of a value that is none of column `col`'s categories:
    /// "other" when the reference kept only its most frequent values, else
    /// "unseen".
    pub fn miss_bucket(&self, col: usize) -> usize {
        let cat = self
            .reference
            .columns
            .get(col)
            .and_then(|c| c.categorical.as_ref());
        let kept = cat.map_or(0, |c| c.categories.len());
        if cat.is_none_or(|c| c.complete) {
            kept + 1 // unseen
        } else {
            kept // other
        }
    }

    /// An empty window profile for this reference.
    pub fn empty_window(&self, start: u64, width: u64) -> proto::WindowProfile {
        proto::WindowProfile {
            window_start_unix_nano: start,
            window_nano: width,
            reference_fingerprint: self.reference.fingerprint.clone(),
            columns: self
                .reference
                .columns
                .iter()
                .enumerate()
                .map(|(i, spec)| match self.reference.profiles.get(i) {
                    Some(rp) if self.shape(i).is_some() => {
                        let (mean, _) = moments(rp);
                        let shift = if mean.is_finite() { mean } else { 0.0 };
                        empty_profile(spec, shift, rp.ref_min, rp.ref_max)
                    }
                    _ => proto::ColumnProfile::default(),
                })
                .collect(),
            latency_counts: vec![0; LATENCY_BUCKETS],
            ..Default::default()
        }
    }
}

/// Builds the window profiles of an agent's records on its drain thread.
/// Each record updates the profile of its event-time window; `take` hands
/// over what was added since the last call (parts of windows, which merge).
#[derive(Debug)]
pub struct Profiler {
    compiled: Arc<Compiled>,
    window_ns: u64,
    /// Per schema feature: the reference column it feeds.
    feature_cols: Vec<Option<usize>>,
    /// Per schema feature: agent category code → bucket.
    cat_maps: Vec<Vec<u32>>,
    label_map: Vec<u32>,
    pred_col: Option<usize>,
    prob_cols: Vec<(usize, usize)>,
    /// Integer predictions → bucket, for a categorical prediction column:
    /// filled once from the reference's categories that are integers, so
    /// it never holds more entries than the reference has categories (any
    /// other integer is "other" or "unseen", `int_miss`), however many
    /// distinct integers the model predicts.
    int_buckets: HashMap<i64, usize>,
    /// The bucket of an integer prediction that is no category.
    int_miss: usize,
    /// (feature, column) of numeric feature columns, for the hot loop.
    numeric_features: Vec<(usize, usize)>,
    /// (feature, column) of categorical feature columns.
    categorical_features: Vec<(usize, usize)>,
    current: usize,
    numeric: Vec<bool>,
    windows: Vec<proto::WindowProfile>,
    n_features: usize,
    out_cap: usize,
    learned: Vec<crate::schema::VocabEntry>,
}

const UNMAPPED: u32 = u32::MAX;

/// `RowCategory.feature_index` of a prediction label carried as a string
/// (past the vocabulary budget).
pub const LABEL_OVERFLOW_INDEX: u32 = u32::MAX;

impl Profiler {
    /// A profiler for records of `schema` against `compiled`. Columns that
    /// failed the reference checks ([`Compiled::shape`] is `None`) are not
    /// profiled.
    pub fn new(compiled: Arc<Compiled>, schema: &crate::schema::Schema, window_ns: u64) -> Self {
        let r = &compiled.reference;
        let valid = |i: usize| compiled.shape(i).is_some();
        let feature_cols: Vec<Option<usize>> =
            schema
                .feature_names
                .iter()
                .map(|n| {
                    compiled.by_name.get(n).copied().filter(|&i| {
                        valid(i) && r.columns[i].role == proto::ColumnRole::Feature as i32
                    })
                })
                .collect();
        let pred_col = r
            .columns
            .iter()
            .enumerate()
            .position(|(i, c)| valid(i) && c.role == proto::ColumnRole::Prediction as i32);
        let prob_cols = r
            .columns
            .iter()
            .enumerate()
            .filter(|&(i, c)| valid(i) && c.role == proto::ColumnRole::Probability as i32)
            .map(|(i, c)| (c.class_index as usize, i))
            .collect();
        let numeric: Vec<bool> = (0..r.columns.len())
            .map(|i| matches!(compiled.shape(i), Some(Shape::Numeric { .. })))
            .collect();
        let numeric_features = feature_cols
            .iter()
            .enumerate()
            .filter_map(|(f, c)| c.filter(|&c| numeric[c]).map(|c| (f, c)))
            .collect();
        let categorical_features = feature_cols
            .iter()
            .enumerate()
            .filter_map(|(f, c)| c.filter(|&c| !numeric[c]).map(|c| (f, c)))
            .collect();
        let (mut int_buckets, mut int_miss) = (HashMap::new(), 0);
        if let Some(col) = pred_col.filter(|&c| !numeric[c]) {
            let cats = r.columns[col]
                .categorical
                .as_ref()
                .map_or(&[][..], |c| &c.categories[..]);
            for v in cats {
                // Only the integer's own spelling matches it ("7", not "07").
                if let Ok(k) = v.parse::<i64>() {
                    if k.to_string() == *v {
                        int_buckets.insert(k, compiled.bucket(col, v));
                    }
                }
            }
            int_buckets.shrink_to_fit();
            int_miss = compiled.miss_bucket(col);
        }
        Self {
            window_ns: window_ns.max(1),
            feature_cols,
            cat_maps: vec![Vec::new(); schema.n_features()],
            label_map: Vec::new(),
            pred_col,
            prob_cols,
            int_buckets,
            int_miss,
            numeric_features,
            categorical_features,
            current: 0,
            numeric,
            windows: Vec::new(),
            n_features: schema.n_features(),
            out_cap: schema.out_cap,
            learned: Vec::new(),
            compiled,
        }
    }

    /// Entries of the integer-prediction map (bounded by the reference's
    /// categories; see the field's comment).
    pub fn int_bucket_entries(&self) -> usize {
        self.int_buckets.len()
    }

    /// Learns the buckets of newly interned categories and labels.
    pub fn on_vocab(&mut self, entries: &[crate::schema::VocabEntry]) {
        use crate::schema::VocabTarget;
        for e in entries {
            let (map, col) = match e.target {
                VocabTarget::Feature(f) => {
                    let f = f as usize;
                    let Some(col) = self.feature_cols.get(f).copied().flatten() else {
                        continue;
                    };
                    (&mut self.cat_maps[f], col)
                }
                VocabTarget::Label => {
                    let Some(col) = self.pred_col else { continue };
                    (&mut self.label_map, col)
                }
            };
            if !matches!(self.compiled.shape(col), Some(Shape::Categorical { .. })) {
                continue;
            }
            let code = e.code as usize;
            if code >= MAX_VOCAB_CODES {
                // Agents intern no more; a larger code is never logged.
                continue;
            }
            if map.len() <= code {
                map.resize(code + 1, UNMAPPED);
            }
            map[code] = u32::try_from(self.compiled.bucket(col, &e.value)).unwrap_or(UNMAPPED);
        }
    }

    fn window(&mut self, unix_nano: u64) -> usize {
        let start = unix_nano - unix_nano % self.window_ns;
        if let Some(i) = self
            .windows
            .iter()
            .rposition(|w| w.window_start_unix_nano == start)
        {
            return i;
        }
        self.windows
            .push(self.compiled.empty_window(start, self.window_ns));
        self.windows.len() - 1
    }

    /// Vocabulary entries fetched through `refresh` since the last call
    /// (the batch builder needs them too).
    pub fn drain_learned(&mut self) -> Vec<crate::schema::VocabEntry> {
        std::mem::take(&mut self.learned)
    }

    /// A code not learned yet was announced after the last refresh: fetch
    /// the announcements now (rare: once per new category).
    fn learn(&mut self, refresh: &mut dyn FnMut() -> Vec<crate::schema::VocabEntry>) {
        let fresh = refresh();
        self.on_vocab(&fresh);
        self.learned.extend(fresh);
    }

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn code_known(&self, slot: &crate::record::Slot) -> bool {
        use crate::record::PredictionKind;
        // A code past MAX_VOCAB_CODES can never be learned: asking again
        // would refresh on every record.
        let unlearned = |map: &Vec<u32>, v: f64| {
            !v.is_nan() && map.len() <= v as usize && (v as usize) < MAX_VOCAB_CODES
        };
        for &(f, _) in &self.categorical_features {
            let v = slot.values.get(f).copied().unwrap_or(f64::NAN);
            if unlearned(&self.cat_maps[f], v) {
                return false;
            }
        }
        if let Some(col) = self.pred_col {
            let v = slot
                .values
                .get(self.n_features)
                .copied()
                .unwrap_or(f64::NAN);
            if !self.numeric[col]
                && slot.prediction_kind == PredictionKind::Label
                && unlearned(&self.label_map, v)
            {
                return false;
            }
        }
        true
    }

    /// Adds one record; `refresh` fetches vocabulary announcements when the
    /// record uses a code this profiler has not learned yet.
    pub fn add(
        &mut self,
        slot: &crate::record::Slot,
        refresh: &mut dyn FnMut() -> Vec<crate::schema::VocabEntry>,
    ) {
        self.add_record(slot, refresh, true);
    }

    /// Like [`Profiler::add`], leaving out the numeric features: for a
    /// writer that profiles those column by column itself
    /// ([`Profiler::numeric_features`], [`Profiler::window_mut`]).
    pub fn add_without_numeric_features(
        &mut self,
        slot: &crate::record::Slot,
        refresh: &mut dyn FnMut() -> Vec<crate::schema::VocabEntry>,
    ) {
        self.add_record(slot, refresh, false);
    }

    /// `(schema feature, reference column)` of the numeric features profiled.
    pub fn numeric_features(&self) -> &[(usize, usize)] {
        &self.numeric_features
    }

    /// The binning table of reference column `col`.
    pub fn binner(&self, col: usize) -> &Binner {
        self.compiled.binner(col)
    }

    /// The profile of the window holding `unix_nano` (created empty).
    pub fn window_mut(&mut self, unix_nano: u64) -> &mut proto::WindowProfile {
        let i = self.window(unix_nano);
        &mut self.windows[i]
    }

    /// Merges a window profile built elsewhere against the same reference
    /// and window width (a writer's, see `SlotKind::Profile`), whose first
    /// column is reference column `columns_from` (a column group of
    /// [`split_columns`]; 0 and every column for a whole profile).
    pub fn absorb(&mut self, part: &proto::WindowProfile, columns_from: usize) {
        if columns_from > 0 || part.columns.len() != self.compiled.reference.columns.len() {
            let i = self.window(part.window_start_unix_nano);
            let w = &mut self.windows[i];
            for (x, y) in w.columns.iter_mut().skip(columns_from).zip(&part.columns) {
                if x.counts.len() == y.counts.len() {
                    merge_column(x, y);
                }
            }
            merge_totals(w, part);
            return;
        }
        let start = part.window_start_unix_nano;
        match self
            .windows
            .iter()
            .rposition(|w| w.window_start_unix_nano == start)
        {
            Some(i) => merge_window(&mut self.windows[i], part),
            None => self.windows.push(part.clone()),
        }
    }

    /// Counts a span's duration under its stage (its name) in the window
    /// it started in; `flags & 1` marks the span that began its trace here
    /// (also counted as a root: the request end to end).
    pub fn add_span(&mut self, slot: &crate::record::Slot) {
        let name = slot.span_name.as_deref().unwrap_or("");
        let name = if name.len() > MAX_STAGE_NAME {
            let mut end = MAX_STAGE_NAME;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            &name[..end]
        } else {
            name
        };
        let wi = self.window(slot.unix_nano);
        let seconds = slot.latency_s / 1e9;
        let error = slot.status == 2;
        let roots: &[bool] = if slot.flags & 1 != 0 {
            &[false, true]
        } else {
            &[false]
        };
        for &root in roots {
            let st = stage_entry(&mut self.windows[wi].stages, name, root);
            st.counts[latency_bucket(seconds)] += 1;
            st.sum += seconds.max(0.0);
            st.errors += u64::from(error);
        }
    }

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn add_record(
        &mut self,
        slot: &crate::record::Slot,
        refresh: &mut dyn FnMut() -> Vec<crate::schema::VocabEntry>,
        numeric_features: bool,
    ) {
        if !self.code_known(slot) {
            self.learn(refresh);
        }
        use crate::record::{flags, PredictionKind, SlotKind};
        if slot.kind != SlotKind::Record {
            return;
        }
        let wi = self.window(slot.unix_nano);
        let nf = self.n_features;
        let side = slot.side.as_deref();
        let w = &mut self.windows[wi];
        w.records += 1;
        if slot.flags & flags::ERROR != 0 {
            w.errors += 1;
        }
        if slot.flags
            & (flags::MISSING | flags::NONFINITE | flags::BAD_VALUE | flags::NO_PREDICTION)
            != 0
        {
            w.flagged += 1;
        }
        if !slot.latency_s.is_nan() {
            w.latency_counts[latency_bucket(slot.latency_s)] += 1;
            if slot.latency_s.is_finite() && slot.latency_s > 0.0 {
                w.latency_sum += slot.latency_s;
            }
        }
        let value = |f: usize| slot.values.get(f).copied().unwrap_or(f64::NAN);
        if numeric_features {
            for &(f, col) in &self.numeric_features {
                add_numeric_binned(&mut w.columns[col], self.compiled.binner(col), value(f));
            }
        }
        for &(f, col) in &self.categorical_features {
            let v = value(f);
            let cp = &mut w.columns[col];
            if v.is_nan() {
                let overflow = side.and_then(|s| {
                    s.categories
                        .iter()
                        .find(|(i, _)| *i as usize == f)
                        .map(|(_, v)| v)
                });
                add_category(cp, overflow.map(|v| self.compiled.bucket(col, v)));
            } else {
                let b = self.cat_maps[f]
                    .get(v as usize)
                    .copied()
                    .unwrap_or(UNMAPPED);
                add_category(cp, (b != UNMAPPED).then_some(b as usize));
            }
        }
        if let Some(col) = self.pred_col {
            let outputs: &[f64] = match side.and_then(|s| s.outputs.as_deref()) {
                Some(o) => o,
                None => slot
                    .values
                    .get(nf..nf + usize::from(slot.n_outputs).min(self.out_cap))
                    .unwrap_or(&[]),
            };
            let first = outputs.first().copied();
            let cp = &mut w.columns[col];
            if slot.flags & flags::NO_PREDICTION != 0 || first.is_none() {
                cp.missing += 1;
            } else if self.numeric[col] {
                add_numeric_binned(cp, self.compiled.binner(col), first.unwrap_or(f64::NAN));
            } else {
                let v = first.unwrap_or(f64::NAN);
                let bucket = match slot.prediction_kind {
                    PredictionKind::Label if !v.is_nan() => {
                        let b = self.label_map.get(v as usize).copied().unwrap_or(UNMAPPED);
                        (b != UNMAPPED).then_some(b as usize)
                    }
                    // A label past the vocabulary budget travels as a string
                    // beside its record (`LABEL_OVERFLOW_INDEX`).
                    PredictionKind::Label => side
                        .and_then(|s| {
                            s.categories
                                .iter()
                                .find(|(i, _)| *i == LABEL_OVERFLOW_INDEX)
                        })
                        .map(|(_, value)| self.compiled.bucket(col, value)),
                    _ if v.is_nan() => None,
                    _ => Some(
                        self.int_buckets
                            .get(&(v as i64))
                            .copied()
                            .unwrap_or(self.int_miss),
                    ),
                };
                add_category(cp, bucket);
            }
        }
        if !self.prob_cols.is_empty() {
            let start = nf + self.out_cap;
            let probs: &[f64] = match side.and_then(|s| s.probabilities.as_deref()) {
                Some(p) => p,
                None if slot.n_probabilities == u16::MAX => &[],
                None => slot
                    .values
                    .get(start..start + usize::from(slot.n_probabilities))
                    .unwrap_or(&[]),
            };
            for &(class, col) in &self.prob_cols {
                let v = probs.get(class).copied().unwrap_or(f64::NAN);
                add_numeric_binned(&mut w.columns[col], self.compiled.binner(col), v);
            }
        }
    }

    /// The window profiles added since the last call.
    pub fn take(&mut self) -> Vec<proto::WindowProfile> {
        self.current = 0;
        std::mem::take(&mut self.windows)
    }
}

/// A Bloom filter of the values a categorical reference held beyond the
/// categories it kept (`CategoricalSpec.seen_filter`): about 10 bits and
/// 7 probes per value, so about 1 % of never-held values pass for held.
/// The probes are fixed (FNV-1a and a 64-bit mix of it, double hashing), so
/// every reader agrees with the writer.
pub struct SeenFilter;

/// Most values a seen-filter covers (12.5 MB of filter); a reference with
/// more distinct values keeps none, and its misses count as "other".
pub const SEEN_FILTER_MAX_VALUES: usize = 10_000_000;
/// Probes per value.
const SEEN_HASHES: u32 = 7;

impl SeenFilter {
    fn probes(value: &[u8], hashes: u32, bits: u64) -> impl Iterator<Item = u64> {
        let h1 = value.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        // splitmix64 finaliser of h1: a second, independent-enough hash
        let mut z = h1.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let h2 = (z ^ (z >> 31)) | 1;
        (0..u64::from(hashes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
    }

    /// The filter bytes and probe count for `values` (empty when there are
    /// none, or more than [`SEEN_FILTER_MAX_VALUES`]).
    pub fn build<'a>(values: impl ExactSizeIterator<Item = &'a str>) -> (Vec<u8>, u32) {
        let n = values.len();
        if n == 0 || n > SEEN_FILTER_MAX_VALUES {
            return (Vec::new(), 0);
        }
        let bytes = (n * 10).div_ceil(8).max(8);
        let bits = (bytes * 8) as u64;
        let mut filter = vec![0u8; bytes];
        for v in values {
            for b in Self::probes(v.as_bytes(), SEEN_HASHES, bits) {
                filter[(b / 8) as usize] |= 1 << (b % 8);
            }
        }
        (filter, SEEN_HASHES)
    }

    /// Whether `value` may have been held (false: certainly not).
    pub fn contains(filter: &[u8], hashes: u32, value: &[u8]) -> bool {
        if filter.is_empty() || hashes == 0 {
            return true;
        }
        let bits = (filter.len() * 8) as u64;
        Self::probes(value, hashes, bits).all(|b| filter[(b / 8) as usize] & (1 << (b % 8)) != 0)
    }
}

/// Errors reading a reference file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Not a modeltap reference file.
    #[error("not a modeltap reference file (bad magic header)")]
    BadMagic,
    /// Written by a newer modeltap.
    #[error("reference format {0} is newer than this build reads (up to {REFERENCE_FORMAT}); upgrade modeltap")]
    TooNew(u32),
    /// Damaged contents.
    #[error("corrupt reference file: {0}")]
    Corrupt(String),
}

/// Magic header of reference files.
pub const MAGIC: &[u8; 8] = b"MTREF\x00\x01\x00";

/// Encodes a reference as a file: magic, then the protobuf message.
pub fn encode_reference(r: &proto::Reference) -> Vec<u8> {
    use prost::Message;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&r.encode_to_vec());
    out
}

/// Decodes a reference file and checks it completely
/// ([`validate_reference`]) before anything uses it.
pub fn decode_reference(bytes: &[u8]) -> Result<proto::Reference, ReferenceError> {
    use prost::Message;
    let body = bytes
        .strip_prefix(&MAGIC[..])
        .ok_or(ReferenceError::BadMagic)?;
    let r = proto::Reference::decode(body).map_err(|e| ReferenceError::Corrupt(e.to_string()))?;
    validate_reference(&r)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_merge_by_name_and_cap_their_names() {
        let stage = |name: &str, root: bool, n: u64| proto::StageLatency {
            name: name.into(),
            root,
            counts: {
                let mut c = vec![0; LATENCY_BUCKETS];
                c[10] = n;
                c
            },
            sum: n as f64,
            errors: 1,
        };
        let mut a = Vec::new();
        merge_stages(&mut a, &[stage("x", false, 2), stage("x", true, 3)]);
        merge_stages(&mut a, &[stage("x", false, 5)]);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].counts[10], 7);
        assert_eq!(a[0].errors, 2);
        assert_eq!(a[1].counts[10], 3);
        // past MAX_STAGES names the rest count under "(other)"
        let many: Vec<_> = (0..MAX_STAGES + 10)
            .map(|i| stage(&format!("s{i}"), false, 1))
            .collect();
        merge_stages(&mut a, &many);
        let plain: Vec<_> = a.iter().filter(|s| !s.root).collect();
        assert_eq!(plain.len(), MAX_STAGES + 1);
        let other = plain.iter().find(|s| s.name == OTHER_STAGE).unwrap();
        assert_eq!(other.counts[10], 11);
        let total: u64 = plain.iter().map(|s| s.counts[10]).sum();
        assert_eq!(total, 7 + (MAX_STAGES + 10) as u64);
        // a profile carrying them is valid; a forged one is not
        let mut w = proto::WindowProfile {
            stages: a,
            ..Default::default()
        };
        assert!(validate_window(&w).is_ok());
        w.stages[0].errors = 1_000;
        assert!(validate_window(&w).is_err());
        w.stages[0].errors = 0;
        w.stages[0].sum = f64::NAN;
        assert!(validate_window(&w).is_err());
        w.stages[0].sum = 0.0;
        w.stages[0].counts = vec![1; LATENCY_BUCKETS + 1];
        assert!(validate_window(&w).is_err());
    }

    #[test]
    fn split_columns_keeps_every_column_once_and_the_totals_last() {
        let w = proto::WindowProfile {
            reference_fingerprint: "f".into(),
            window_start_unix_nano: 60,
            window_nano: 60,
            records: 10,
            errors: 2,
            flagged: 3,
            latency_counts: vec![1; 40],
            latency_sum: 1.5,
            stages: Vec::new(),
            columns: (0..50u64)
                .map(|i| proto::ColumnProfile {
                    counts: vec![i; 10 + i as usize],
                    ..Default::default()
                })
                .collect(),
        };
        let whole = crate::record::profile_heap_bytes(&w);
        let one = split_columns(w.clone(), whole).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0], (w.clone(), 0));
        let max = whole / 5;
        let groups = split_columns(w.clone(), max).unwrap();
        assert!(groups.len() >= 5, "{}", groups.len());
        let mut next = 0;
        let mut columns = Vec::new();
        for (k, (g, from)) in groups.iter().enumerate() {
            assert!(crate::record::profile_heap_bytes(g) <= max);
            assert_eq!(*from, next);
            next += g.columns.len();
            columns.extend(g.columns.iter().cloned());
            assert_eq!(g.reference_fingerprint, "f");
            assert_eq!((g.window_start_unix_nano, g.window_nano), (60, 60));
            let last = k + 1 == groups.len();
            assert_eq!(g.records, if last { 10 } else { 0 });
            assert_eq!(g.latency_counts.len(), if last { 40 } else { 0 });
        }
        assert_eq!(columns, w.columns);
        // one column larger than a part: no split
        assert!(split_columns(w, 200).is_none());
    }

    #[test]
    fn latency_buckets_cover_every_value() {
        assert_eq!(latency_bucket(f64::NAN), 0);
        assert_eq!(latency_bucket(-1.0), 0);
        assert_eq!(latency_bucket(1e-6), 1);
        assert_eq!(latency_bucket(1e300), LATENCY_BUCKETS - 1);
        // found by the reference_read fuzz target: wrapped to bucket 0
        assert_eq!(latency_bucket(f64::INFINITY), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn bin_of_matches_partition_point() {
        let cuts = [-1.0, 0.0, 0.5, 2.0, 7.0];
        for v in [
            -5.0,
            -1.0,
            -0.5,
            0.0,
            0.1,
            0.5,
            1.0,
            2.0,
            3.0,
            7.0,
            8.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_eq!(bin_of(&cuts, v), cuts.partition_point(|&c| c < v), "{v}");
        }
        assert_eq!(bin_of(&[], 3.0), 0);
        assert_eq!(bin_of(&[1.0], 1.0), 0);
        assert_eq!(bin_of(&[1.0], 1.5), 1);
    }

    #[test]
    fn slice_equals_value_by_value() {
        let values: Vec<f64> = (0..3000)
            .map(|i| (f64::from(i) * 0.91).cos() * 4.0)
            .collect();
        let (spec, rp) = build_numeric("x", proto::ColumnRole::Feature, 0, &values, 10, false);
        let cuts = spec.numeric.as_ref().unwrap().cuts.clone();
        let b = Binner::new(&cuts);
        let body: Vec<f64> = values.iter().map(|v| v * 1.7 + 0.3).collect();
        let odd = [f64::NAN, f64::INFINITY, -1e6, 1e6, f64::NEG_INFINITY];
        // Odd values first (before any finite one), last, and between;
        // even and odd lengths; in one call and split over several.
        let probes: Vec<Vec<f64>> = vec![
            body.iter().copied().chain(odd).collect(),
            odd.iter().copied().chain(body.iter().copied()).collect(),
            body.iter()
                .enumerate()
                .map(|(i, &v)| if i % 7 == 3 { odd[i % 5] } else { v })
                .collect(),
            body[..2999].to_vec(),
            vec![f64::NAN, 2.0],
            vec![f64::INFINITY],
        ];
        for probe in &probes {
            for parts in [1, 2, 3, 7] {
                let mut one = empty_profile(&spec, 0.1, rp.ref_min, rp.ref_max);
                let mut bulk = one.clone();
                for &v in probe {
                    add_numeric_binned(&mut one, &b, v);
                }
                for chunk in probe.chunks(probe.len().div_ceil(parts)) {
                    add_numeric_slice(&mut bulk, &b, chunk);
                }
                assert_eq!(one.counts, bulk.counts);
                assert_eq!(
                    (one.n, one.missing, one.nonfinite),
                    (bulk.n, bulk.missing, bulk.nonfinite)
                );
                assert_eq!(one.shift.to_bits(), bulk.shift.to_bits());
                let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1.0);
                assert!(close(one.sum, bulk.sum), "{} {}", one.sum, bulk.sum);
                assert!(
                    close(one.sum_sq, bulk.sum_sq),
                    "{} {}",
                    one.sum_sq,
                    bulk.sum_sq
                );
                assert!(
                    close(one.below_sum, bulk.below_sum) && close(one.above_sum, bulk.above_sum)
                );
                assert_eq!(
                    (one.below_min, one.above_max),
                    (bulk.below_min, bulk.above_max)
                );
                assert_eq!(
                    (one.min.to_bits(), one.max.to_bits()),
                    (bulk.min.to_bits(), bulk.max.to_bits())
                );
            }
        }
    }

    #[test]
    fn binner_matches_bin_of() {
        let values: Vec<f64> = (0..5000)
            .map(|i| (f64::from(i) * 0.37).sin() * f64::from(i % 17))
            .collect();
        let (spec, _) = build_numeric("x", proto::ColumnRole::Feature, 0, &values, 10, false);
        let cuts = spec.numeric.unwrap().cuts;
        let b = Binner::new(&cuts);
        let mut probes: Vec<f64> = values.clone();
        probes.extend(cuts.iter().copied());
        probes.extend([-1e9, 1e9, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0]);
        for &v in &probes {
            assert_eq!(b.bin(v), bin_of(&cuts, v), "{v}");
        }
        let single = Binner::new(&[2.0]);
        assert_eq!(single.bin(1.0), 0);
        assert_eq!(single.bin(2.0), 0);
        assert_eq!(single.bin(3.0), 1);
        assert_eq!(Binner::new(&[]).bin(5.0), 0);
        // Skewed data (many bins in few grid cells: bisected) and more cuts
        // than the grid indexes.
        let skewed: Vec<f64> = (1..20_000).map(|i| (f64::from(i) / 900.0).exp()).collect();
        let (spec, _) = build_numeric("y", proto::ColumnRole::Feature, 0, &skewed, 10, false);
        let cuts = spec.numeric.unwrap().cuts;
        for b in [
            Binner::new(&cuts),
            Binner::compact(&cuts),
            Binner::with_density(&cuts, 1),
        ] {
            for &v in skewed.iter().chain(&cuts) {
                assert_eq!(b.bin(v), bin_of(&cuts, v), "{v}");
                assert_eq!(b.bin(v * 1.000_001), bin_of(&cuts, v * 1.000_001), "{v}");
            }
        }
        let many: Vec<f64> = (0..70_000).map(|i| f64::from(i).powi(2)).collect();
        let b = Binner::new(&many);
        for v in [-1.0, 0.0, 0.5, 4.0, 4.5, 1e6, 4.9e9, 5e9, f64::INFINITY] {
            assert_eq!(b.bin(v), bin_of(&many, v), "{v}");
        }
    }

    #[test]
    fn binner_at_cell_edges() {
        // Values on and a few ulps around every grid cell's start, for cuts
        // far from zero, straddling it, tiny and huge: the grid's entry
        // never lies above a value's bin.
        let up = |x: f64| {
            f64::from_bits(if x >= 0.0 {
                x.to_bits() + 1
            } else {
                x.to_bits() - 1
            })
        };
        let sets: Vec<Vec<f64>> = vec![
            (0..200).map(|i| 1e8 + f64::from(i) * 0.01).collect(),
            (0..200).map(|i| -1.0 + f64::from(i) * 0.01).collect(),
            (0..200).map(|i| f64::from(i) * 1e-300).collect(),
            (0..200)
                .map(|i| f64::from(i).mul_add(1e300, -1e302))
                .collect(),
            (0..50).map(|i| 1.7e9 + f64::from(i) * 1e-6).collect(),
            (0..200)
                .map(|i| f64::from(i).mul_add(3e305, 1e308))
                .collect(),
            (0..200).map(|i| (f64::from(i) / 20.0).exp()).collect(),
        ];
        for cuts in &sets {
            for b in [
                Binner::new(cuts),
                Binner::compact(cuts),
                Binner::with_density(cuts, 1),
            ] {
                let cells = b.table.len() - 2;
                for c in 0..=cells {
                    #[allow(clippy::cast_precision_loss)]
                    let start = b.lo + c as f64 / b.scale.max(f64::MIN_POSITIVE);
                    let mut v = start;
                    for _ in 0..8 {
                        v = next_down(v);
                    }
                    for _ in 0..16 {
                        assert_eq!(b.bin(v), bin_of(cuts, v), "{v} (cell {c})");
                        v = up(v);
                    }
                }
                for &c in cuts {
                    for v in [next_down(c), c, up(c)] {
                        assert_eq!(b.bin(v), bin_of(cuts, v), "{v}");
                    }
                }
            }
            // A cut moved to a few ulps below a cell's start (the grid
            // unchanged: same count, same ends), values just below it.
            let base = Binner::new(cuts);
            let cells = base.table.len() - 2;
            for k in 1..cuts.len() - 1 {
                #[allow(clippy::cast_precision_loss)]
                let c = (k * cells / (cuts.len() - 1)).max(1);
                #[allow(clippy::cast_precision_loss)]
                let start = base.lo + c as f64 / base.scale.max(f64::MIN_POSITIVE);
                for ulps in 1..4 {
                    let mut cut = start;
                    for _ in 0..ulps {
                        cut = next_down(cut);
                    }
                    if cut <= cuts[k - 1] || cut >= cuts[k + 1] {
                        continue;
                    }
                    let mut moved = cuts.clone();
                    moved[k] = cut;
                    let b = Binner::new(&moved);
                    let mut v = cut;
                    for _ in 0..6 {
                        v = next_down(v);
                    }
                    for _ in 0..12 {
                        assert_eq!(b.bin(v), bin_of(&moved, v), "{v} (cut {cut})");
                        v = up(v);
                    }
                }
            }
        }
    }

    #[test]
    fn seen_filter_holds_what_it_was_given_and_little_else() {
        let held: Vec<String> = (0..20_000).map(|i| format!("id-{i}")).collect();
        let (f, k) = SeenFilter::build(held.iter().map(String::as_str));
        assert!(held
            .iter()
            .all(|v| SeenFilter::contains(&f, k, v.as_bytes())));
        let false_hits = (0..20_000)
            .filter(|i| SeenFilter::contains(&f, k, format!("new-{i}").as_bytes()))
            .count();
        assert!(false_hits < 400, "{false_hits}"); // about 1 %
        assert_eq!(SeenFilter::build(std::iter::empty()), (Vec::new(), 0));
        assert!(SeenFilter::contains(&[], 0, b"anything"));
    }

    #[test]
    fn next_down_is_the_float_below() {
        for x in [
            1.0,
            -1.0,
            0.0,
            -0.0,
            1e-310,
            -1e-310,
            f64::MAX,
            f64::MIN,
            5.0,
            1e300,
        ] {
            let d = next_down(x);
            assert!(d < x, "{x}");
            assert!(d.is_finite() || x == f64::MIN, "{x}");
        }
        assert_eq!(next_down(1.0), 1.0 - f64::EPSILON / 2.0);
        assert_eq!(next_down(f64::MIN), f64::NEG_INFINITY);
        assert!(next_down(f64::NAN).is_nan());
    }

    #[test]
    fn numeric_reference_bins_hold_its_mass() {
        let values: Vec<f64> = (0..10_000).map(|i| f64::from(i) / 10.0).collect();
        let (spec, prof) = build_numeric("x", proto::ColumnRole::Feature, 0, &values, 10, false);
        let num = spec.numeric.unwrap();
        // Ten deciles, and a bin below the minimum and above the maximum.
        assert_eq!(num.n_psi_bins, 12);
        assert_eq!(prof.n, 10_000);
        let mut psi = vec![0u64; 12];
        for (j, c) in prof.counts.iter().enumerate() {
            psi[num.psi_bin[j] as usize] += c;
        }
        assert_eq!(psi[0], 0, "{psi:?}");
        assert_eq!(psi[11], 0, "{psi:?}");
        assert!(psi[1..11].iter().all(|&c| c == 1000), "{psi:?}");
        assert_eq!(bin_of(&num.cuts, -0.000_1), 0);
        assert_eq!(bin_of(&num.cuts, 0.0), 1);
        assert_eq!(bin_of(&num.cuts, 999.9), num.cuts.len() - 1);
        assert_eq!(bin_of(&num.cuts, 1000.0), num.cuts.len());
        assert!(prof
            .counts
            .iter()
            .all(|&c| c <= 10_000 / FINE_BINS as u64 + 1));
    }

    #[test]
    fn reference_file_round_trip_and_errors() {
        let (spec, prof) = build_numeric(
            "x",
            proto::ColumnRole::Feature,
            0,
            &[1.0, 2.0, 3.0],
            2,
            false,
        );
        let cols = vec![spec];
        let r = proto::Reference {
            format_version: REFERENCE_FORMAT,
            fingerprint: fingerprint(&cols),
            columns: cols,
            profiles: vec![prof],
            ..Default::default()
        };
        let bytes = encode_reference(&r);
        assert_eq!(decode_reference(&bytes).unwrap(), r);
        assert_eq!(decode_reference(b"nope"), Err(ReferenceError::BadMagic));
        let mut future = r.clone();
        future.format_version = 9;
        assert_eq!(
            decode_reference(&encode_reference(&future)),
            Err(ReferenceError::TooNew(9))
        );
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() - 5);
        assert!(matches!(
            decode_reference(&cut),
            Err(ReferenceError::Corrupt(_))
        ));
    }
}
