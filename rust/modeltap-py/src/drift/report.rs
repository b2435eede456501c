//! Drift of window profiles against a reference, and the histograms a
//! report draws.

use std::collections::HashMap;

use modeltap_core::profile;
use modeltap_core::proto;
use modeltap_core::stats::{window_drift, Decision, Rule};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::{kind_name, profile_err, reference_err, role_name};
use crate::errors::guard;

fn parse_rules(m: Option<HashMap<String, (String, f64)>>) -> PyResult<HashMap<String, Rule>> {
    m.unwrap_or_default()
        .into_iter()
        .map(|(k, (stat, thr))| {
            let decision = Decision::parse(&stat).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "unknown statistic {stat:?} (psi, js, ks, wasserstein, hellinger)"
                ))
            })?;
            if thr.is_nan() {
                return Err(PyValueError::new_err(format!("threshold of {k:?} is NaN")));
            }
            Ok((
                k,
                Rule {
                    decision,
                    threshold: thr,
                },
            ))
        })
        .collect()
}

/// Drift of a window profile against a reference.
///
/// `window` is one encoded profile (`BatchDecodeError` when it is damaged,
/// `ValueError` when built against another reference), or a list of them:
/// those that fit the reference are merged, the others left out with a
/// note, so one bad part cannot block the rest. A column whose counts do
/// not fit the reference counts as empty, with a note. `rules` maps column
/// names to `(statistic, threshold)`; `defaults` maps "numeric" /
/// "categorical" to the same. Returns `{"columns": [...], "records",
/// "errors", "flagged", "window_start_unix_nano", "window_nano",
/// "latency_counts", "latency_sum", "notes", "profiles_skipped"}`.
#[pyfunction]
#[pyo3(signature = (reference, window, rules=None, defaults=None))]
pub fn drift<'py>(
    py: Python<'py>,
    reference: &[u8],
    window: &Bound<'py, PyAny>,
    rules: Option<HashMap<String, (String, f64)>>,
    defaults: Option<HashMap<String, (String, f64)>>,
) -> PyResult<Bound<'py, PyDict>> {
    guard(|| {
        let r = profile::decode_reference(reference).map_err(|e| reference_err(&e))?;
        let rules = parse_rules(rules)?;
        let defaults = parse_rules(defaults)?;
        let (w, mut notes, skipped) = if let Ok(b) = window.cast::<PyBytes>() {
            let w = profile::decode_window(b.as_bytes()).map_err(|e| profile_err(&e))?;
            (w, Vec::new(), 0usize)
        } else {
            let parts: Vec<Vec<u8>> = window
                .extract()
                .map_err(|_| PyTypeError::new_err("window must be bytes or a list of bytes"))?;
            let m = py.detach(|| profile::merge_parts(&r, parts.iter().map(Vec::as_slice)));
            let notes: Vec<String> = m
                .skipped
                .iter()
                .map(|(i, why)| format!("profile {i} left out: {why}"))
                .collect();
            (m.window.unwrap_or_default(), notes, m.skipped.len())
        };
        let rule = |spec: &proto::ColumnSpec| {
            let categorical = spec.kind == proto::ColumnKind::Categorical as i32;
            rules.get(&spec.name).copied().or_else(|| {
                defaults
                    .get(if categorical {
                        "categorical"
                    } else {
                        "numeric"
                    })
                    .copied()
            })
        };
        let report = py
            .detach(|| window_drift(&r, &w, rule))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        notes.extend(report.notes);
        let out = PyDict::new(py);
        let cols = PyList::empty(py);
        for c in report.columns {
            let d = PyDict::new(py);
            d.set_item("feature", c.name)?;
            d.set_item("kind", c.kind)?;
            d.set_item("role", c.role)?;
            d.set_item("n_ref", c.n_ref)?;
            d.set_item("n_cur", c.n_cur)?;
            d.set_item("psi", c.psi)?;
            d.set_item("ks", c.ks)?;
            d.set_item("ks_pvalue", c.ks_pvalue)?;
            d.set_item("js", c.js)?;
            d.set_item("wasserstein", c.wasserstein)?;
            d.set_item("chi2", c.chi2)?;
            d.set_item("chi2_pvalue", c.chi2_pvalue)?;
            d.set_item("hellinger", c.hellinger)?;
            d.set_item("missing_ref", c.missing_ref)?;
            d.set_item("missing_cur", c.missing_cur)?;
            d.set_item("out_of_range", c.out_of_range)?;
            d.set_item("mean_ref", c.mean_ref)?;
            d.set_item("mean_cur", c.mean_cur)?;
            d.set_item("std_ref", c.std_ref)?;
            d.set_item("std_cur", c.std_cur)?;
            d.set_item("statistic", c.decided_by.name())?;
            d.set_item("threshold", c.threshold)?;
            d.set_item("drifted", c.drifted)?;
            d.set_item("insufficient", c.insufficient)?;
            cols.append(d)?;
        }
        out.set_item("columns", cols)?;
        out.set_item("records", w.records)?;
        out.set_item("errors", w.errors)?;
        out.set_item("flagged", w.flagged)?;
        out.set_item("window_start_unix_nano", w.window_start_unix_nano)?;
        out.set_item("window_nano", w.window_nano)?;
        out.set_item("latency_counts", w.latency_counts)?;
        out.set_item("latency_sum", w.latency_sum)?;
        out.set_item("notes", notes)?;
        out.set_item("profiles_skipped", skipped)?;
        Ok(out)
    })
}

/// Reference and window counts of every column of a reference, in the bins
/// its drift statistics compare: for a numeric column the PSI bins (their
/// edges, the outer two open: `-inf` and `inf`), for a categorical one its
/// categories then "(other)" and "(unseen)". A list of `{"feature", "kind",
/// "role", "edges" | "labels", "ref", "cur"}`; a window column that does
/// not fit the reference (or an empty window) counts zero.
#[pyfunction]
pub fn histograms<'py>(
    py: Python<'py>,
    reference: &[u8],
    window: &[u8],
) -> PyResult<Bound<'py, PyList>> {
    guard(|| {
        let r = profile::decode_reference(reference).map_err(|e| reference_err(&e))?;
        let w = if window.is_empty() {
            proto::WindowProfile::default()
        } else {
            profile::decode_window(window).map_err(|e| profile_err(&e))?
        };
        let fits = w.columns.is_empty() || w.reference_fingerprint == r.fingerprint;
        let out = PyList::empty(py);
        let none = proto::ColumnProfile::default();
        for (i, (spec, rp)) in r.columns.iter().zip(&r.profiles).enumerate() {
            let cp = match w.columns.get(i) {
                Some(c) if fits && c.counts.len() == rp.counts.len() => c,
                _ => &none,
            };
            let d = PyDict::new(py);
            d.set_item("feature", &spec.name)?;
            let categorical = spec.kind == proto::ColumnKind::Categorical as i32;
            d.set_item("kind", kind_name(spec))?;
            d.set_item("role", role_name(spec))?;
            let cur = |j: usize| cp.counts.get(j).copied().unwrap_or(0);
            match (&spec.numeric, &spec.categorical) {
                (Some(num), _) if !categorical => {
                    let k = (num.n_psi_bins as usize).min(MAX_REPORT_BINS);
                    let (mut a, mut b) = (vec![0u64; k], vec![0u64; k]);
                    // Upper edge of each coarse bin: the cut closing its
                    // last fine bin (fine bin j is (cuts[j-1], cuts[j]]).
                    let mut upper = vec![f64::NEG_INFINITY; k];
                    for (j, &bin) in num.psi_bin.iter().enumerate() {
                        let bin = bin as usize;
                        if bin < k {
                            a[bin] = a[bin].saturating_add(rp.counts.get(j).copied().unwrap_or(0));
                            b[bin] = b[bin].saturating_add(cur(j));
                            upper[bin] = num.cuts.get(j).copied().unwrap_or(f64::INFINITY);
                        }
                    }
                    let mut edges = Vec::with_capacity(k + 1);
                    edges.push(f64::NEG_INFINITY);
                    edges.extend(upper.iter().take(k.saturating_sub(1)));
                    edges.push(f64::INFINITY);
                    d.set_item("edges", edges)?;
                    d.set_item("ref", a)?;
                    d.set_item("cur", b)?;
                }
                (_, Some(cat)) => {
                    let mut labels: Vec<String> = cat.categories.clone();
                    labels.push("(other)".into());
                    labels.push("(unseen)".into());
                    let n = labels.len();
                    d.set_item("labels", labels)?;
                    d.set_item(
                        "ref",
                        (0..n)
                            .map(|j| rp.counts.get(j).copied().unwrap_or(0))
                            .collect::<Vec<_>>(),
                    )?;
                    d.set_item("cur", (0..n).map(cur).collect::<Vec<_>>())?;
                }
                _ => continue,
            }
            out.append(d)?;
        }
        Ok(out)
    })
}

/// At most this many bins per numeric column in `histograms` (a checked
/// reference has fewer).
const MAX_REPORT_BINS: usize = 1024;
