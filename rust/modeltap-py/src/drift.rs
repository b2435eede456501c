//! References, profiles and drift: thin wrappers over `modeltap_core::profile`
//! and `modeltap_core::stats`.

use std::collections::{HashMap, HashSet};

use modeltap_core::error::ProfileError;
use modeltap_core::profile::{self, ReferenceError};
use modeltap_core::proto;
use modeltap_core::stats::{window_drift, Decision, Rule};
use numpy::PyReadonlyArray1;
use prost::Message;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::{guard, BatchDecodeError, ReferenceFormatError};

fn role(s: &str) -> PyResult<proto::ColumnRole> {
    Ok(match s {
        "feature" => proto::ColumnRole::Feature,
        "prediction" => proto::ColumnRole::Prediction,
        "probability" => proto::ColumnRole::Probability,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown column role {other:?}"
            )))
        }
    })
}

fn reference_err(e: &ReferenceError) -> PyErr {
    ReferenceFormatError::new_err(e.to_string())
}

fn profile_err(e: &ProfileError) -> PyErr {
    BatchDecodeError::new_err(e.to_string())
}

/// A numeric reference column: `(spec, profile)` as encoded bytes.
#[pyfunction]
#[pyo3(signature = (name, role_name, class_index, values, bins=10, equal_width=false))]
pub fn build_numeric_column<'py>(
    py: Python<'py>,
    name: &str,
    role_name: &str,
    class_index: u32,
    values: PyReadonlyArray1<'py, f64>,
    bins: usize,
    equal_width: bool,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    guard(|| {
        let r = role(role_name)?;
        if !(1..=profile::MAX_PSI_BINS).contains(&bins) {
            return Err(PyValueError::new_err(format!(
                "bins must be from 1 to {}, not {bins}",
                profile::MAX_PSI_BINS
            )));
        }
        let v = values.as_array();
        let owned: Vec<f64> = v.iter().copied().collect();
        let (spec, prof) =
            py.detach(|| profile::build_numeric(name, r, class_index, &owned, bins, equal_width));
        Ok((
            PyBytes::new(py, &spec.encode_to_vec()),
            PyBytes::new(py, &prof.encode_to_vec()),
        ))
    })
}

/// A categorical reference column from distinct values and their counts.
#[pyfunction]
#[pyo3(signature = (name, role_name, class_index, values, counts, missing, max_categories=profile::MAX_CATEGORIES))]
#[allow(clippy::too_many_arguments)]
pub fn build_categorical_column<'py>(
    py: Python<'py>,
    name: &str,
    role_name: &str,
    class_index: u32,
    values: Vec<String>,
    counts: Vec<u64>,
    missing: u64,
    max_categories: usize,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    guard(|| {
        if values.len() != counts.len() {
            return Err(PyValueError::new_err("values and counts differ in length"));
        }
        if !(1..=profile::CATEGORY_LIMIT).contains(&max_categories) {
            return Err(PyValueError::new_err(format!(
                "max_categories must be from 1 to {}, not {max_categories}",
                profile::CATEGORY_LIMIT
            )));
        }
        let mut seen = HashSet::with_capacity(values.len());
        if let Some(v) = values.iter().find(|v| !seen.insert(v.as_str())) {
            return Err(PyValueError::new_err(format!("value {v:?} listed twice")));
        }
        let (spec, prof) = profile::build_categorical(
            name,
            role(role_name)?,
            class_index,
            values.into_iter().zip(counts).collect(),
            missing,
            max_categories,
        );
        Ok((
            PyBytes::new(py, &spec.encode_to_vec()),
            PyBytes::new(py, &prof.encode_to_vec()),
        ))
    })
}

/// Assembles a reference file from encoded columns, checked as a reference
/// file is when it is read (`ReferenceFormatError` otherwise).
#[pyfunction]
pub fn assemble_reference<'py>(
    py: Python<'py>,
    model: String,
    version: String,
    columns: Vec<(Vec<u8>, Vec<u8>)>,
    rows: u64,
    created_unix_nano: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    guard(|| {
        let mut specs = Vec::new();
        let mut profiles = Vec::new();
        for (i, (s, p)) in columns.iter().enumerate() {
            let bad =
                |e: prost::DecodeError| ReferenceFormatError::new_err(format!("column {i}: {e}"));
            specs.push(proto::ColumnSpec::decode(&s[..]).map_err(bad)?);
            profiles.push(proto::ColumnProfile::decode(&p[..]).map_err(bad)?);
        }
        let r = proto::Reference {
            format_version: profile::REFERENCE_FORMAT,
            model,
            version,
            fingerprint: profile::fingerprint(&specs),
            columns: specs,
            profiles,
            created_unix_nano,
            rows,
        };
        profile::validate_reference(&r).map_err(|e| reference_err(&e))?;
        Ok(PyBytes::new(py, &profile::encode_reference(&r)))
    })
}

/// Checks a reference file completely and describes it.
#[pyfunction]
pub fn reference_info<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    guard(|| {
        let r = profile::decode_reference(data).map_err(|e| reference_err(&e))?;
        let d = PyDict::new(py);
        d.set_item("model", &r.model)?;
        d.set_item("version", &r.version)?;
        d.set_item("rows", r.rows)?;
        d.set_item("fingerprint", &r.fingerprint)?;
        d.set_item("created_unix_nano", r.created_unix_nano)?;
        let cols = PyList::empty(py);
        for (c, p) in r.columns.iter().zip(&r.profiles) {
            let cd = PyDict::new(py);
            cd.set_item("name", &c.name)?;
            let categorical = c.kind == proto::ColumnKind::Categorical as i32;
            cd.set_item(
                "kind",
                if categorical {
                    "categorical"
                } else {
                    "numeric"
                },
            )?;
            cd.set_item(
                "role",
                match c.role {
                    1 => "prediction",
                    2 => "probability",
                    _ => "feature",
                },
            )?;
            cd.set_item("class_index", c.class_index)?;
            cd.set_item("n", p.n)?;
            cd.set_item("missing", p.missing)?;
            if let Some(n) = &c.numeric {
                let (mean, std) = profile::moments(p);
                cd.set_item("min", p.ref_min)?;
                cd.set_item("max", p.ref_max)?;
                cd.set_item("mean", mean)?;
                cd.set_item("std", std)?;
                cd.set_item("psi_bins", n.n_psi_bins)?;
                // The PSI bins' cuts: the fine cuts where the PSI bin
                // changes (the checked map has one entry per fine bin).
                let psi_cuts: Vec<f64> = n
                    .cuts
                    .iter()
                    .zip(n.psi_bin.windows(2))
                    .filter(|(_, b)| b[0] != b[1])
                    .map(|(&c, _)| c)
                    .collect();
                cd.set_item("psi_cuts", psi_cuts)?;
                cd.set_item("cuts", n.cuts.clone())?;
                cd.set_item("fine_bins", n.cuts.len() + 1)?;
            }
            if let Some(cat) = &c.categorical {
                cd.set_item("categories", cat.categories.clone())?;
                cd.set_item("complete", cat.complete)?;
            }
            cols.append(cd)?;
        }
        d.set_item("columns", cols)?;
        Ok(d)
    })
}

/// Merges encoded window profiles into one. Each is checked first; a part
/// that is damaged, inconsistent, or does not fit the others (another
/// reference, other columns or bins) raises `BatchDecodeError`.
#[pyfunction]
pub fn merge_profiles<'py>(
    py: Python<'py>,
    parts: Vec<Vec<u8>>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guard(|| {
        let merged = py.detach(|| -> Result<Option<proto::WindowProfile>, String> {
            let mut acc: Option<proto::WindowProfile> = None;
            for (i, p) in parts.iter().enumerate() {
                let w = profile::decode_window(p).map_err(|e| format!("profile {i}: {e}"))?;
                match acc.as_mut() {
                    Some(a) => {
                        profile::try_merge_window(a, &w).map_err(|e| format!("profile {i}: {e}"))?
                    }
                    None => acc = Some(w),
                }
            }
            Ok(acc)
        });
        match merged.map_err(BatchDecodeError::new_err)? {
            Some(m) => Ok(Some(PyBytes::new(py, &m.encode_to_vec()))),
            None => Ok(None),
        }
    })
}

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

/// The reference fingerprint an encoded window profile was built against,
/// after checking the profile on its own (`BatchDecodeError` otherwise).
#[pyfunction]
pub fn profile_fingerprint(data: &[u8]) -> PyResult<String> {
    guard(|| {
        profile::decode_window(data)
            .map(|w| w.reference_fingerprint)
            .map_err(|e| profile_err(&e))
    })
}

/// Profiles whole columns against a reference (offline data, no agent):
/// `numeric` is a list of `(column_index, float64 array)`, `categorical` of
/// `(column_index, int32 codes (-1 for missing), dictionary of values)`.
/// Columns are profiled in parallel with the GIL released. Returns an
/// encoded window profile covering `[start, start + width)`.
#[pyfunction]
#[pyo3(signature = (reference, numeric, categorical, start_unix_nano=0, width_nano=0))]
pub fn profile_columns<'py>(
    py: Python<'py>,
    reference: &[u8],
    numeric: Vec<(usize, PyReadonlyArray1<'py, f64>)>,
    categorical: Vec<(usize, PyReadonlyArray1<'py, i32>, Vec<String>)>,
    start_unix_nano: u64,
    width_nano: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    guard(|| {
        let r = profile::decode_reference(reference).map_err(|e| reference_err(&e))?;
        if start_unix_nano.checked_add(width_nano).is_none() {
            return Err(PyValueError::new_err("the window ends past 2^64 ns"));
        }
        let compiled = profile::Compiled::new(r);
        let ncols = compiled.reference.columns.len();
        for (i, _) in &numeric {
            if *i >= ncols || compiled.reference.columns[*i].numeric.is_none() {
                return Err(PyValueError::new_err(format!(
                    "column {i} is not a numeric reference column"
                )));
            }
        }
        for (i, _, _) in &categorical {
            if *i >= ncols || compiled.reference.columns[*i].categorical.is_none() {
                return Err(PyValueError::new_err(format!(
                    "column {i} is not a categorical reference column"
                )));
            }
        }
        let num: Vec<(usize, &[f64])> = numeric
            .iter()
            .map(|(i, a)| a.as_slice().map(|s| (*i, s)))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                PyValueError::new_err("numeric columns must be contiguous float64 arrays")
            })?;
        let cat: Vec<(usize, &[i32], &Vec<String>)> = categorical
            .iter()
            .map(|(i, a, d)| a.as_slice().map(|s| (*i, s, d)))
            .collect::<Result<_, _>>()
            .map_err(|_| PyValueError::new_err("category codes must be contiguous int32 arrays"))?;
        let rows = num
            .first()
            .map(|c| c.1.len())
            .or_else(|| cat.first().map(|c| c.1.len()))
            .unwrap_or(0);
        if num.iter().any(|c| c.1.len() != rows) || cat.iter().any(|c| c.1.len() != rows) {
            return Err(PyValueError::new_err("columns differ in length"));
        }
        let window = py.detach(|| {
            let mut w = compiled.empty_window(start_unix_nano, width_nano);
            let mut jobs: Vec<(usize, proto::ColumnProfile)> = Vec::new();
            let work = |col: usize| -> proto::ColumnProfile {
                let mut p = w.columns[col].clone();
                if let Some(&(_, values)) = num.iter().find(|c| c.0 == col) {
                    let spec = compiled.reference.columns[col].numeric.as_ref();
                    let binner = profile::Binner::new(spec.map_or(&[][..], |n| &n.cuts[..]));
                    profile::add_numeric_slice(&mut p, &binner, values);
                } else if let Some(&(_, codes, dict)) = cat.iter().find(|c| c.0 == col) {
                    let buckets: Vec<usize> =
                        dict.iter().map(|v| compiled.bucket(col, v)).collect();
                    for &c in codes {
                        let b = usize::try_from(c)
                            .ok()
                            .and_then(|c| buckets.get(c).copied());
                        profile::add_category(&mut p, b);
                    }
                }
                p
            };
            let cols: Vec<usize> = num
                .iter()
                .map(|c| c.0)
                .chain(cat.iter().map(|c| c.0))
                .collect();
            let threads = std::thread::available_parallelism()
                .map_or(1, std::num::NonZero::get)
                .min(cols.len().max(1));
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let cols = &cols;
                        let work = &work;
                        s.spawn(move || {
                            cols.iter()
                                .skip(t)
                                .step_by(threads)
                                .map(|&c| (c, work(c)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for h in handles {
                    // A worker's panic must not pass for a column without
                    // values: carry it on, for `guard` to report.
                    match h.join() {
                        Ok(done) => jobs.extend(done),
                        Err(payload) => std::panic::resume_unwind(payload),
                    }
                }
            });
            for (c, p) in jobs {
                w.columns[c] = p;
            }
            w.records = rows as u64;
            w
        });
        Ok(PyBytes::new(py, &window.encode_to_vec()))
    })
}
