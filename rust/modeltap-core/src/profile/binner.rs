//! Fine-bin lookup: the bin of a value among a numeric column's cuts, by
//! bisection ([`bin_of`]) or through a grid over the cuts' range
//! ([`Binner`]).

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
    pub(super) cuts: Vec<f64>,
    pub(super) lo: f64,
    pub(super) scale: f64,
    pub(super) table: Vec<u16>,
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
