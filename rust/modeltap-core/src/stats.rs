//! Drift statistics of a current profile against a reference profile.
//!
//! All statistics are computed from profiles (never from raw records), in
//! one place, so every surface (agent, collector, reports, metrics) shows
//! the same numbers.
//!
//! Numeric columns. `p` (reference) and `q` (current) are the proportions of
//! non-missing values in the reference's PSI bins (10 quantile bins by
//! default; the outer bins extend to ±∞, so out-of-range values count in
//! them).
//! - PSI = Σ (q − p) ln(q / p), each proportion floored at ε = 1e-4 so an
//!   empty bin contributes a finite amount. Default threshold 0.2.
//! - Jensen–Shannon distance = sqrt(JS divergence, base 2), in [0, 1].
//! - Hellinger distance = sqrt(1 − Σ sqrt(p q)), in [0, 1].
//! - chi-square = Σ (O − E)² / E over the PSI bins, E from the (floored,
//!   renormalised) reference proportions; p-value from χ²(bins − 1).
//! - Kolmogorov–Smirnov D = max |F_ref − F_cur| over the reference's fine
//!   bin edges (quantiles at 0.5 % steps). Error: at most the largest fine
//!   bin's reference mass (about 0.005) below the exact two-sample D.
//!   p-value: the asymptotic Kolmogorov distribution with n·m/(n+m).
//! - Wasserstein-1, normalised by the reference standard deviation: the
//!   integral of |F_ref − F_cur| with both CDFs linear inside each fine bin,
//!   plus the exact contribution of values outside the reference range.
//!   Error: at most Σ width × max(p, q) over fine bins, small where the
//!   reference is dense.
//!
//! Categorical columns: the same PSI, JS, Hellinger and chi-square over the
//! reference's categories plus "other" and "unseen" (a category never seen
//! in the reference, counted, never dropped). Default decision: JS distance
//! ≥ 0.1. KS and Wasserstein do not apply (NaN).
//!
//! The default decisions rest on effect sizes; p-values are reported beside
//! them, since with windows of hundreds of thousands of records they flag
//! every negligible shift.

use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::error::ProfileError;
use crate::profile::{empty_profile, moments, window_mismatches, MAX_PSI_BINS};
use crate::proto;

/// Floor of a bin proportion in PSI and chi-square.
pub const EPSILON: f64 = 1e-4;
/// Default PSI threshold (numeric columns).
pub const DEFAULT_PSI: f64 = 0.2;
/// Default Jensen–Shannon distance threshold (categorical columns).
pub const DEFAULT_JS: f64 = 0.1;
/// A column whose missing rate moves by at least this much (absolute) is
/// drifted, whatever its distribution statistic says...
pub const MISSING_SHIFT: f64 = 0.1;
/// ...once the current window holds at least this many rows of it.
pub const MISSING_MIN_ROWS: u64 = 100;
/// Fewest non-missing values a column needs, in the reference and in the
/// current window, for a decision; with fewer it is "insufficient data".
pub const MIN_DECISION_VALUES: u64 = 30;
/// A column is drifted only when its difference is also significant at
/// this level (the chi-square test of homogeneity on the same bins, sparse
/// ones merged, see [`chi_square_grouped_pvalue`], or the KS test when KS
/// decides): effect sizes of small samples from one
/// distribution pass any fixed threshold by chance (PSI's null value is
/// about (bins - 1)(1/N + 1/M)), a p-value that small rarely.
pub const SIGNIFICANCE: f64 = 0.005;

/// The statistic a column's drift decision uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Population stability index.
    Psi,
    /// Jensen–Shannon distance.
    Js,
    /// Kolmogorov–Smirnov D.
    Ks,
    /// Normalised Wasserstein distance.
    Wasserstein,
    /// Hellinger distance.
    Hellinger,
}

impl Decision {
    /// Parses "psi", "js", "ks", "wasserstein" or "hellinger".
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "psi" => Self::Psi,
            "js" => Self::Js,
            "ks" => Self::Ks,
            "wasserstein" => Self::Wasserstein,
            "hellinger" => Self::Hellinger,
            _ => return None,
        })
    }

    /// The name of the statistic.
    pub fn name(self) -> &'static str {
        match self {
            Self::Psi => "psi",
            Self::Js => "js",
            Self::Ks => "ks",
            Self::Wasserstein => "wasserstein",
            Self::Hellinger => "hellinger",
        }
    }
}

/// Drift of one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDrift {
    /// Column name.
    pub name: String,
    /// "numeric" or "categorical".
    pub kind: &'static str,
    /// "feature", "prediction" or "probability".
    pub role: &'static str,
    /// Non-missing values in the reference / current profile.
    pub n_ref: u64,
    /// Current non-missing values.
    pub n_cur: u64,
    /// Missing rates.
    pub missing_ref: f64,
    /// Current missing rate.
    pub missing_cur: f64,
    /// Share of current values outside the reference range (numeric) or
    /// never seen in the reference (categorical).
    pub out_of_range: f64,
    /// Statistics (NaN where they do not apply or without data).
    pub psi: f64,
    /// KS D.
    pub ks: f64,
    /// KS p-value.
    pub ks_pvalue: f64,
    /// JS distance.
    pub js: f64,
    /// Normalised Wasserstein-1.
    pub wasserstein: f64,
    /// Chi-square statistic.
    pub chi2: f64,
    /// Chi-square p-value.
    pub chi2_pvalue: f64,
    /// Hellinger distance.
    pub hellinger: f64,
    /// Means and standard deviations (numeric).
    pub mean_ref: f64,
    /// Current mean.
    pub mean_cur: f64,
    /// Reference std.
    pub std_ref: f64,
    /// Current std.
    pub std_cur: f64,
    /// The statistic that decided, its threshold, and the decision.
    pub decided_by: Decision,
    /// Threshold.
    pub threshold: f64,
    /// Drifted?
    pub drifted: bool,
    /// Too few values (`MIN_DECISION_VALUES`) in the reference or the
    /// window for a decision on the distribution (the missing-rate rule
    /// still applies).
    pub insufficient: bool,
}

#[allow(clippy::cast_precision_loss)]
fn rate(a: u64, b: u64) -> f64 {
    // In f64: the two may add past u64::MAX in a merged profile.
    let total = a as f64 + b as f64;
    if total == 0.0 {
        f64::NAN
    } else {
        a as f64 / total
    }
}

#[allow(clippy::cast_precision_loss)]
fn proportions(counts: &[u64]) -> Vec<f64> {
    // In f64: u64 counts of a hostile profile may overflow a u64 sum.
    let n: f64 = counts.iter().map(|&c| c as f64).sum();
    if n == 0.0 {
        return vec![f64::NAN; counts.len()];
    }
    counts.iter().map(|&c| c as f64 / n).collect()
}

/// PSI of proportions `q` against `p`, floored at [`EPSILON`].
pub fn psi(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let (a, b) = (a.max(EPSILON), b.max(EPSILON));
            (b - a) * (b / a).ln()
        })
        .sum()
}

/// Jensen–Shannon distance (base 2).
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    let mut d = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let m = 0.5 * (a + b);
        if a > 0.0 {
            d += 0.5 * a * (a / m).log2();
        }
        if b > 0.0 {
            d += 0.5 * b * (b / m).log2();
        }
    }
    d.max(0.0).sqrt()
}

/// Hellinger distance.
pub fn hellinger(p: &[f64], q: &[f64]) -> f64 {
    let bc: f64 = p.iter().zip(q).map(|(&a, &b)| (a * b).sqrt()).sum();
    (1.0 - bc).max(0.0).sqrt()
}

/// A fixed 64-bit FNV-1a hash (an order of categories independent of any
/// counts and of the process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Expected count every group of bins needs, in both samples, for the
/// chi-square p-value a decision rests on: the floor of Cochran's rule
/// (with [`SIGNIFICANCE`] at 0.5 %, identical draws of 10 to 3,000
/// categories at 100 to 10,000 rows are flagged 0-3 % of the time; see
/// tests/test_drift.py).
pub const MIN_EXPECTED: f64 = 1.0;

/// The p-value of [`chi_square`] after merging adjacent bins (in the
/// reference's order: the PSI bins along the axis, categories from the most
/// frequent to "other" and "unseen") until each group expects
/// [`MIN_EXPECTED`] values in both samples under the pooled proportions.
/// Sparse tables (hundreds of categories, small windows) make the
/// unmerged p-value far too small under the null; decisions use this one.
#[allow(clippy::cast_precision_loss)]
pub fn chi_square_grouped_pvalue(reference: &[u64], current: &[u64]) -> f64 {
    let nr: f64 = reference.iter().map(|&c| c as f64).sum();
    let nc: f64 = current.iter().map(|&c| c as f64).sum();
    if nr == 0.0 || nc == 0.0 {
        return f64::NAN;
    }
    let n = nr + nc;
    let (mut gr, mut gc) = (Vec::new(), Vec::new());
    let (mut r_acc, mut c_acc) = (0u64, 0u64);
    for (&r, &c) in reference.iter().zip(current) {
        r_acc += r;
        c_acc += c;
        let pooled = (r_acc + c_acc) as f64;
        if nr * pooled / n >= MIN_EXPECTED && nc * pooled / n >= MIN_EXPECTED {
            gr.push(r_acc);
            gc.push(c_acc);
            (r_acc, c_acc) = (0, 0);
        }
    }
    if r_acc + c_acc > 0 {
        match (gr.last_mut(), gc.last_mut()) {
            (Some(a), Some(b)) => {
                *a += r_acc;
                *b += c_acc;
            }
            _ => {
                gr.push(r_acc);
                gc.push(c_acc);
            }
        }
    }
    if gr.len() < 2 {
        // Merged into one group: a reference far smaller than the window
        // (each group must expect a reference value) whose values all lie
        // where the window has none. The bins themselves tell.
        return chi_square(reference, current).1;
    }
    chi_square(&gr, &gc).1
}

/// Chi-square test of homogeneity of two samples over the same bins (the
/// reference's counts and the current ones): a 2 × B contingency table
/// over the bins non-empty in either sample, expected counts from the
/// pooled proportions, B − 1 degrees of freedom, no continuity correction
/// (`scipy.stats.chi2_contingency(..., correction=False)`). Both samples
/// are random, so the p-value is calibrated under the null (a one-sample
/// test against the reference's proportions as if exact is not), and bins
/// empty in both (an "other" never used, an unseen bucket) add nothing.
#[allow(clippy::cast_precision_loss)]
pub fn chi_square(reference: &[u64], current: &[u64]) -> (f64, f64) {
    let nr: f64 = reference.iter().map(|&c| c as f64).sum();
    let nc: f64 = current.iter().map(|&c| c as f64).sum();
    if nr == 0.0 || nc == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let n = nr + nc;
    let (mut stat, mut bins) = (0.0, 0u32);
    for (&r, &c) in reference.iter().zip(current) {
        let pooled = r as f64 + c as f64;
        if pooled == 0.0 {
            continue;
        }
        bins += 1;
        let (er, ec) = (nr * pooled / n, nc * pooled / n);
        stat += (r as f64 - er).powi(2) / er + (c as f64 - ec).powi(2) / ec;
    }
    if bins < 2 {
        // Both samples in one bin: identical.
        return (0.0, 1.0);
    }
    let pv = ChiSquared::new(f64::from(bins - 1)).map_or(f64::NAN, |d| d.sf(stat));
    (stat, pv)
}

/// Asymptotic p-value of a two-sample KS statistic (Stephens' corrected
/// λ, then the Kolmogorov distribution's survival function).
#[allow(clippy::cast_precision_loss)]
pub fn ks_pvalue(d: f64, n: u64, m: u64) -> f64 {
    if n == 0 || m == 0 || d.is_nan() {
        return f64::NAN;
    }
    let ne = (n as f64 * m as f64) / (n as f64 + m as f64);
    kolmogorov_sf((ne.sqrt() + 0.12 + 0.11 / ne.sqrt()) * d)
}

/// P(K > λ) for the Kolmogorov distribution. The alternating series
/// 2 Σ (−1)^(k−1) exp(−2k²λ²) converges slowly for small λ, so below 1.18
/// the Jacobi-theta form 1 − (√(2π)/λ) Σ exp(−(2k−1)²π²/(8λ²)) is used,
/// which converges fast there; both are exact to well below 1e-12.
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda.is_nan() {
        return f64::NAN;
    }
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.18 {
        let a = std::f64::consts::PI * std::f64::consts::PI / (8.0 * lambda * lambda);
        let mut cdf = 0.0;
        for k in 1..=40 {
            let j = f64::from(2 * k - 1);
            let term = (-j * j * a).exp();
            cdf += term;
            if term < 1e-17 * cdf.max(f64::MIN_POSITIVE) {
                break;
            }
        }
        cdf *= (2.0 * std::f64::consts::PI).sqrt() / lambda;
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for k in 1..=100 {
        let kf = f64::from(k);
        let term = sign * (-2.0 * kf * kf * lambda * lambda).exp();
        sum += term;
        if term.abs() < 1e-17 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// KS D over fine bins.
#[allow(clippy::cast_precision_loss)]
pub fn ks_fine(r: &[u64], c: &[u64]) -> f64 {
    let total = |x: &[u64]| x.iter().map(|&v| v as f64).sum::<f64>();
    let (nr, nc) = (total(r), total(c));
    if nr == 0.0 || nc == 0.0 {
        return f64::NAN;
    }
    let (mut fr, mut fc, mut d) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in r.iter().zip(c) {
        fr += a as f64;
        fc += b as f64;
        d = d.max((fr / nr - fc / nc).abs());
    }
    d
}

/// Wasserstein-1 over fine bins (CDFs linear inside each bin), plus the
/// exact contribution of values outside the reference range.
#[allow(clippy::cast_precision_loss)]
fn wasserstein(cuts: &[f64], rp: &proto::ColumnProfile, cp: &proto::ColumnProfile) -> f64 {
    let (nr, nc) = (rp.n as f64, cp.n as f64);
    if rp.n == 0 || cp.n == 0 {
        return f64::NAN;
    }
    let (lo, hi) = (rp.ref_min, rp.ref_max);
    // CDFs at each cut: the mass of the fine bins up to and including it.
    let (mut fr, mut fc) = (0.0f64, 0.0f64);
    // Just past the reference minimum both CDFs hold everything up to and
    // including it (the current one also what lies below it, whose own
    // part of the integral is `below_sum`).
    let mut prev_x = lo;
    let mut prev = cp.below_min as f64 / nc;
    let mut w = 0.0;
    for (j, &x) in cuts.iter().enumerate() {
        fr += rp.counts.get(j).copied().unwrap_or(0) as f64;
        fc += cp.counts.get(j).copied().unwrap_or(0) as f64;
        if x <= lo {
            prev = (fr / nr - fc / nc).abs();
            continue;
        }
        if x > hi {
            continue;
        }
        let cur = (fr / nr - fc / nc).abs();
        w += 0.5 * (prev + cur) * (x - prev_x);
        prev = cur;
        prev_x = x;
    }
    w + cp.below_sum / nc + cp.above_sum / nc
}

/// Thresholds for one column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// The statistic that decides.
    pub decision: Decision,
    /// Drifted when the statistic is at least this.
    pub threshold: f64,
}

impl Rule {
    /// The default rule for a column kind.
    pub fn default_for(categorical: bool) -> Self {
        if categorical {
            Self {
                decision: Decision::Js,
                threshold: DEFAULT_JS,
            }
        } else {
            Self {
                decision: Decision::Psi,
                threshold: DEFAULT_PSI,
            }
        }
    }
}

fn role_name(r: i32) -> &'static str {
    match r {
        1 => "prediction",
        2 => "probability",
        _ => "feature",
    }
}

/// Drift of one column of `current` against `reference`.
#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
pub fn column_drift(
    spec: &proto::ColumnSpec,
    rp: &proto::ColumnProfile,
    cp: &proto::ColumnProfile,
    rule: Option<Rule>,
) -> ColumnDrift {
    let categorical = spec.kind == proto::ColumnKind::Categorical as i32;
    let rule = rule.unwrap_or_else(|| Rule::default_for(categorical));
    let (coarse_r, coarse_c) = if let (false, Some(num)) = (categorical, &spec.numeric) {
        // A checked spec has at most MAX_PSI_BINS bins, every index in
        // range; the caps keep an unchecked one from allocating or
        // indexing wildly.
        let k = (num.n_psi_bins as usize).min(MAX_PSI_BINS);
        let (mut a, mut b) = (vec![0u64; k], vec![0u64; k]);
        for (j, &bin) in num.psi_bin.iter().enumerate() {
            if let (Some(x), Some(y)) = (a.get_mut(bin as usize), b.get_mut(bin as usize)) {
                *x = x.saturating_add(rp.counts.get(j).copied().unwrap_or(0));
                *y = y.saturating_add(cp.counts.get(j).copied().unwrap_or(0));
            }
        }
        (a, b)
    } else {
        (rp.counts.clone(), cp.counts.clone())
    };
    let p = proportions(&coarse_r);
    let q = proportions(&coarse_c);
    let have = rp.n > 0 && cp.n > 0;
    let nan = f64::NAN;
    let (psi_v, js_v, hel_v) = if have {
        (psi(&p, &q), js_distance(&p, &q), hellinger(&p, &q))
    } else {
        (nan, nan, nan)
    };
    let (chi2, chi2_p) = if have {
        chi_square(&coarse_r, &coarse_c)
    } else {
        (nan, nan)
    };
    let (mut ks, mut ks_p, mut wd) = (nan, nan, nan);
    let (mean_ref, std_ref) = if categorical { (nan, nan) } else { moments(rp) };
    let (mean_cur, std_cur) = if categorical { (nan, nan) } else { moments(cp) };
    let out_of_range;
    if categorical {
        let unseen = cp.counts.last().copied().unwrap_or(0);
        out_of_range = if cp.n > 0 {
            unseen as f64 / cp.n as f64
        } else {
            nan
        };
    } else {
        // Without reference values there is no range to be out of.
        out_of_range = if cp.n > 0 && rp.n > 0 {
            (cp.below_min as f64 + cp.above_max as f64) / cp.n as f64
        } else {
            nan
        };
        if have {
            let cuts = spec.numeric.as_ref().map_or(&[][..], |n| &n.cuts[..]);
            ks = ks_fine(&rp.counts, &cp.counts);
            ks_p = ks_pvalue(ks, rp.n, cp.n);
            // In units of the reference std: undefined for a constant
            // reference, and for infinite values (see `notes`).
            wd = if std_ref > 0.0 && rp.nonfinite == 0 && cp.nonfinite == 0 {
                wasserstein(cuts, rp, cp) / std_ref
            } else {
                nan
            };
        }
    }
    let enough = rp.n >= MIN_DECISION_VALUES && cp.n >= MIN_DECISION_VALUES;
    let p_value = match rule.decision {
        Decision::Ks => ks_p,
        _ if have && categorical => {
            // Categories grouped in an order that does not depend on the
            // counts (ordered by the reference's own frequencies, adjacent
            // categories would carry its sampling luck into every group);
            // "other" and "unseen" last.
            let cats = spec
                .categorical
                .as_ref()
                .map_or(&[][..], |c| &c.categories[..]);
            // "Other" and "unseen" are one bin here: which values a
            // reference never held is luck of its sample too.
            let mut order: Vec<usize> = (0..cats.len()).collect();
            order.sort_by_key(|&i| fnv1a(cats[i].as_bytes()));
            let pick = |v: &[u64]| {
                let mut out: Vec<u64> = order
                    .iter()
                    .map(|&i| v.get(i).copied().unwrap_or(0))
                    .collect();
                out.push(v.iter().skip(cats.len()).sum());
                out
            };
            chi_square_grouped_pvalue(&pick(&coarse_r), &pick(&coarse_c))
        }
        _ if have => chi_square_grouped_pvalue(&coarse_r, &coarse_c),
        _ => nan,
    };
    let significant = p_value < SIGNIFICANCE;
    let value = match rule.decision {
        Decision::Psi => psi_v,
        Decision::Js => js_v,
        Decision::Ks => ks,
        Decision::Wasserstein => wd,
        Decision::Hellinger => hel_v,
    };
    ColumnDrift {
        name: spec.name.clone(),
        kind: if categorical {
            "categorical"
        } else {
            "numeric"
        },
        role: role_name(spec.role),
        n_ref: rp.n,
        n_cur: cp.n,
        missing_ref: rate(rp.missing, rp.n),
        missing_cur: rate(cp.missing, cp.n),
        out_of_range,
        psi: psi_v,
        ks,
        ks_pvalue: ks_p,
        js: js_v,
        wasserstein: wd,
        chi2,
        chi2_pvalue: chi2_p,
        hellinger: hel_v,
        mean_ref,
        mean_cur,
        std_ref,
        std_cur,
        decided_by: rule.decision,
        threshold: rule.threshold,
        drifted: (enough && value >= rule.threshold && significant) || missing_moved(rp, cp),
        insufficient: !enough,
    }
}

/// Drift of every column of a reference against a window profile.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowDrift {
    /// One row per reference column, in its order.
    pub columns: Vec<ColumnDrift>,
    /// What was left out and why (a column of the profile that does not
    /// fit its reference column counts as empty).
    pub notes: Vec<String>,
}

/// Drift of window profile `w` against reference `r`, `rule` giving each
/// column's rule (`None`: the default for its kind). `r` must have passed
/// [`crate::profile::validate_reference`] and `w`
/// [`crate::profile::validate_window`]. A profile built against another
/// reference (a different fingerprint, with columns) is an error; a column
/// whose counts do not fit its spec, or that the profile lacks, counts as
/// empty, with a note for the first.
pub fn window_drift(
    r: &proto::Reference,
    w: &proto::WindowProfile,
    rule: impl Fn(&proto::ColumnSpec) -> Option<Rule>,
) -> Result<WindowDrift, ProfileError> {
    if !w.columns.is_empty() && w.reference_fingerprint != r.fingerprint {
        return Err(ProfileError::Mismatch(format!(
            "the profile was built against reference {:.64} but {} was given",
            w.reference_fingerprint, r.fingerprint
        )));
    }
    let mismatched = window_mismatches(r, w);
    let columns = r
        .columns
        .iter()
        .zip(&r.profiles)
        .enumerate()
        .map(|(i, (spec, rp))| {
            let empty;
            let cp = match w.columns.get(i) {
                Some(c) if !mismatched.iter().any(|m| m.0 == i) => c,
                _ => {
                    empty = empty_profile(spec, 0.0, rp.ref_min, rp.ref_max);
                    &empty
                }
            };
            column_drift(spec, rp, cp, rule(spec))
        })
        .collect();
    let ignored: Vec<usize> = mismatched.iter().map(|m| m.0).collect();
    let mut notes: Vec<String> = mismatched
        .into_iter()
        .map(|(_, why)| format!("{why}; ignored"))
        .collect();
    let none = proto::ColumnProfile::default();
    for (i, ((spec, rp), c)) in r.columns.iter().zip(&r.profiles).zip(&columns).enumerate() {
        let cp = match w.columns.get(i) {
            Some(p) if !ignored.contains(&i) => p,
            _ => &none,
        };
        notes.extend(honesty_notes(spec, rp, cp, c));
    }
    Ok(WindowDrift { columns, notes })
}

/// Whether the missing rate moved by [`MISSING_SHIFT`] or more, with enough
/// current rows to tell.
fn missing_moved(rp: &proto::ColumnProfile, cp: &proto::ColumnProfile) -> bool {
    let (mr, mc) = (rate(rp.missing, rp.n), rate(cp.missing, cp.n));
    cp.n.saturating_add(cp.missing) >= MISSING_MIN_ROWS && (mc - mr).abs() >= MISSING_SHIFT
}

/// Why a statistic of `c` is NaN where a number might be expected, and
/// when a column drifted by its missing rate alone.
fn honesty_notes(
    spec: &proto::ColumnSpec,
    rp: &proto::ColumnProfile,
    cp: &proto::ColumnProfile,
    c: &ColumnDrift,
) -> Vec<String> {
    let mut out = Vec::new();
    if missing_moved(rp, cp) {
        out.push(format!(
            "column {:.64}: missing rate {:.1} % in the reference, {:.1} % now: drifted",
            spec.name,
            100.0 * c.missing_ref,
            100.0 * c.missing_cur
        ));
    }
    if spec.kind == proto::ColumnKind::Categorical as i32 {
        return out;
    }
    if rp.n == 0 {
        out.push(format!(
            "column {:.64}: the reference holds no values (all missing): no statistic, no range",
            spec.name
        ));
    } else if c.n_cur > 0 && c.wasserstein.is_nan() {
        if c.std_ref.is_nan() || c.std_ref <= 0.0 {
            out.push(format!(
                "column {:.64}: the reference is constant: Wasserstein (in reference stds) undefined",
                spec.name
            ));
        } else {
            out.push(format!(
                "column {:.64}: infinite values: Wasserstein undefined",
                spec.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_do_not_drift() {
        let p = [0.1; 10];
        assert!(psi(&p, &p).abs() < 1e-15);
        assert!(js_distance(&p, &p).abs() < 1e-7);
        assert!(hellinger(&p, &p).abs() < 1e-7);
    }

    #[test]
    fn grouped_chi_square_merges_sparse_bins_and_keeps_clear_separations() {
        // 300 sparse bins, one count each side in a different bin: merged,
        // no difference to speak of.
        let r: Vec<u64> = (0..300).map(|i| u64::from(i % 2 == 0)).collect();
        let c: Vec<u64> = (0..300).map(|i| u64::from(i % 2 == 1)).collect();
        assert!(chi_square_grouped_pvalue(&r, &c) > 0.05);
        // Everything moved below the minimum: a clear difference.
        assert!(chi_square_grouped_pvalue(&[0, 1000, 0], &[40, 0, 0]) < 1e-6);
        assert!(chi_square_grouped_pvalue(&[0, 0], &[1, 2]).is_nan());
        // A 100-row reference, a 20,000-row window all above its maximum.
        let mut r = vec![0u64; 12];
        let mut c = vec![0u64; 12];
        r[1..11].fill(10);
        c[11] = 20_000;
        assert!(chi_square_grouped_pvalue(&r, &c) < 1e-6);
    }

    #[test]
    fn psi_floors_empty_bins() {
        let v = psi(&[0.5, 0.5, 0.0], &[0.5, 0.0, 0.5]);
        let e = EPSILON;
        let want = (e - 0.5) * (e / 0.5f64).ln() + (0.5 - e) * (0.5 / e).ln();
        assert!((v - want).abs() < 1e-12);
    }

    #[test]
    fn js_and_hellinger_are_bounded() {
        let (p, q) = ([1.0, 0.0], [0.0, 1.0]);
        assert!((js_distance(&p, &q) - 1.0).abs() < 1e-12);
        assert!((hellinger(&p, &q) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ks_pvalue_behaves() {
        assert!(ks_pvalue(0.0, 100, 100) > 0.99);
        assert!(ks_pvalue(0.5, 1000, 1000) < 1e-10);
        let mid = ks_pvalue(0.05, 1000, 1000);
        assert!(mid > 0.1 && mid < 0.3, "{mid}");
    }

    #[test]
    fn kolmogorov_sf_matches_scipy_over_the_whole_range() {
        // scipy.stats.kstwobign.sf(λ), scipy 1.17.
        let want = [
            (0.001, 1.0),
            (0.01, 1.0),
            (0.05, 1.0),
            (0.1, 1.0),
            (0.3, 0.999_990_694_198_665_5),
            (0.5, 0.963_945_243_664_875_1),
            (0.8, 0.544_142_411_574_198_1),
            (1.0, 0.269_999_671_677_354_56),
            (1.18, 0.123_453_809_429_765_7),
            (1.5, 0.022_217_962_616_525_127),
            (2.0, 0.000_670_925_255_779_695_3),
            (3.0, 3.045_995_948_942_526e-8),
        ];
        for (lambda, p) in want {
            let got = kolmogorov_sf(lambda);
            assert!((got - p).abs() < 1e-12, "λ={lambda}: {got} vs {p}");
        }
        // Continuous across the switch between the two series.
        let (lo, hi) = (kolmogorov_sf(1.18 - 1e-12), kolmogorov_sf(1.18 + 1e-12));
        assert!((lo - hi).abs() < 1e-11, "{lo} {hi}");
        // A sample equal to the reference but for one value: p ≈ 1.
        assert!(ks_pvalue(1.0 / 200_000.0, 200_000, 200_000) > 0.999_999);
    }
}
