//! References, profiles and drift: thin wrappers over `modeltap_core::profile`
//! and `modeltap_core::stats`.

use std::collections::{HashMap, HashSet};

use modeltap_core::error::ProfileError;
use modeltap_core::profile::{self, ReferenceError};
use modeltap_core::proto;
use modeltap_core::stats::{window_drift, Decision, Rule};
use std::ops::Range;

use numpy::ndarray::{s, ArrayView1};
use numpy::{PyArray1, PyReadonlyArray1};
use prost::Message;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use rustc_hash::FxHashMap;

use crate::errors::{guard, BatchDecodeError, ReferenceFormatError};
use modeltap_core::near::Near;

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

/// "numeric" or "categorical", as the Python side names column kinds.
fn kind_name(spec: &proto::ColumnSpec) -> &'static str {
    if spec.kind == proto::ColumnKind::Categorical as i32 {
        "categorical"
    } else {
        "numeric"
    }
}

/// "feature", "prediction" or "probability".
fn role_name(spec: &proto::ColumnSpec) -> &'static str {
    match proto::ColumnRole::try_from(spec.role) {
        Ok(proto::ColumnRole::Prediction) => "prediction",
        Ok(proto::ColumnRole::Probability) => "probability",
        _ => "feature",
    }
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

/// A categorical reference column from distinct values and their counts;
/// `chosen`: the categories to keep (else the most frequent); `seen`: every
/// value the reference held, for the filter that tells "other" from
/// "unseen" (else the values given).
#[pyfunction]
#[pyo3(signature = (name, role_name, class_index, values, counts, missing, max_categories=profile::MAX_CATEGORIES, chosen=None, seen=Vec::new()))]
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
    chosen: Option<Vec<String>>,
    seen: Vec<String>,
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
        let mut listed = HashSet::with_capacity(values.len());
        if let Some(v) = values.iter().find(|v| !listed.insert(v.as_str())) {
            return Err(PyValueError::new_err(format!("value {v:?} listed twice")));
        }
        if let Some(c) = &chosen {
            let mut once = HashSet::with_capacity(c.len());
            if let Some(v) = c.iter().find(|v| !once.insert(v.as_str())) {
                return Err(PyValueError::new_err(format!("value {v:?} chosen twice")));
            }
        }
        let (spec, prof) = profile::build_categorical_chosen(
            name,
            role(role_name)?,
            class_index,
            values.into_iter().zip(counts).collect(),
            missing,
            max_categories,
            chosen.as_deref(),
            &seen,
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
            cd.set_item("kind", kind_name(c))?;
            cd.set_item("role", role_name(c))?;
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

/// The stage latencies of encoded window profiles, summed (whatever their
/// references): a list of `{"name", "root", "counts", "sum", "errors"}`
/// (`counts` over the latency buckets of `latency_bucket`). A damaged part
/// raises `BatchDecodeError`.
#[pyfunction]
pub fn stage_latency<'py>(py: Python<'py>, parts: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyList>> {
    guard(|| {
        let stages = py
            .detach(|| -> Result<Vec<proto::StageLatency>, String> {
                let mut acc = Vec::new();
                for (i, p) in parts.iter().enumerate() {
                    let w = profile::decode_window(p).map_err(|e| format!("profile {i}: {e}"))?;
                    profile::merge_stages(&mut acc, &w.stages);
                }
                Ok(acc)
            })
            .map_err(BatchDecodeError::new_err)?;
        let out = PyList::empty(py);
        for st in stages {
            let d = PyDict::new(py);
            d.set_item("name", st.name)?;
            d.set_item("root", st.root)?;
            d.set_item("counts", st.counts)?;
            d.set_item("sum", st.sum)?;
            d.set_item("errors", st.errors)?;
            out.append(d)?;
        }
        Ok(out)
    })
}

/// The prediction latencies of encoded window profiles, summed (whatever
/// their references): `{"records", "errors", "counts", "sum"}` (`counts`
/// over the latency buckets of `latency_bucket`). A damaged part raises
/// `BatchDecodeError`.
#[pyfunction]
pub fn record_latency<'py>(py: Python<'py>, parts: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyDict>> {
    guard(|| {
        let (records, errors, counts, sum) = py
            .detach(|| -> Result<(u64, u64, Vec<u64>, f64), String> {
                let mut counts = vec![0u64; profile::LATENCY_BUCKETS];
                let (mut records, mut errors, mut sum) = (0u64, 0u64, 0.0f64);
                for (i, p) in parts.iter().enumerate() {
                    let w = profile::decode_window(p).map_err(|e| format!("profile {i}: {e}"))?;
                    records = records.saturating_add(w.records);
                    errors = errors.saturating_add(w.errors);
                    for (x, y) in counts.iter_mut().zip(&w.latency_counts) {
                        *x = x.saturating_add(*y);
                    }
                    sum += w.latency_sum;
                }
                Ok((records, errors, counts, sum))
            })
            .map_err(BatchDecodeError::new_err)?;
        let d = PyDict::new(py);
        d.set_item("records", records)?;
        d.set_item("errors", errors)?;
        d.set_item("counts", counts)?;
        d.set_item("sum", sum)?;
        Ok(d)
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

/// A numeric column as given: float64 or float32, any stride (a column of a
/// row-major matrix, a pandas block) — read in place, never copied.
enum NumArray<'py> {
    F64(PyReadonlyArray1<'py, f64>),
    F32(PyReadonlyArray1<'py, f32>),
}

impl<'py> NumArray<'py> {
    fn read(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, f64>>() {
            return Ok(Self::F64(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, f32>>() {
            return Ok(Self::F32(a));
        }
        Err(PyTypeError::new_err(
            "numeric columns must be 1-D float64 or float32 arrays",
        ))
    }

    fn view(&self) -> NumView<'_> {
        match self {
            Self::F64(a) => NumView::F64(a.as_array()),
            Self::F32(a) => NumView::F32(a.as_array()),
        }
    }
}

#[derive(Clone, Copy)]
enum NumView<'a> {
    F64(ArrayView1<'a, f64>),
    F32(ArrayView1<'a, f32>),
}

impl NumView<'_> {
    fn is_contiguous(&self) -> bool {
        match self {
            Self::F64(a) => a.as_slice().is_some(),
            Self::F32(a) => a.as_slice().is_some(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::F64(a) => a.len(),
            Self::F32(a) => a.len(),
        }
    }

    /// Adds rows `rows` of the column to `p`.
    fn add(&self, p: &mut proto::ColumnProfile, binner: &profile::Binner, rows: Range<usize>) {
        match self {
            Self::F64(a) => {
                let t = a.slice(s![rows]);
                match t.as_slice() {
                    Some(values) => profile::add_numeric_slice(p, binner, values),
                    None => profile::add_numeric_values(p, binner, t.iter().copied()),
                }
            }
            Self::F32(a) => {
                let t = a.slice(s![rows]);
                match t.as_slice() {
                    Some(values) => {
                        profile::add_numeric_values(
                            p,
                            binner,
                            values.iter().map(|&v| f64::from(v)),
                        );
                    }
                    None => profile::add_numeric_values(p, binner, t.iter().map(|&v| f64::from(v))),
                }
            }
        }
    }
}

/// Category codes as given (a pandas `category` column's own codes, an
/// Arrow dictionary's indices): any integer width, any stride; negative
/// means missing.
enum CodeArray<'py> {
    I8(PyReadonlyArray1<'py, i8>),
    I16(PyReadonlyArray1<'py, i16>),
    I32(PyReadonlyArray1<'py, i32>),
    I64(PyReadonlyArray1<'py, i64>),
}

impl<'py> CodeArray<'py> {
    fn read(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, i32>>() {
            return Ok(Self::I32(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, i8>>() {
            return Ok(Self::I8(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, i16>>() {
            return Ok(Self::I16(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, i64>>() {
            return Ok(Self::I64(a));
        }
        Err(PyTypeError::new_err(
            "category codes must be 1-D int8, int16, int32 or int64 arrays",
        ))
    }

    fn view(&self) -> CodeView<'_> {
        match self {
            Self::I8(a) => CodeView::I8(a.as_array()),
            Self::I16(a) => CodeView::I16(a.as_array()),
            Self::I32(a) => CodeView::I32(a.as_array()),
            Self::I64(a) => CodeView::I64(a.as_array()),
        }
    }
}

#[derive(Clone, Copy)]
enum CodeView<'a> {
    I8(ArrayView1<'a, i8>),
    I16(ArrayView1<'a, i16>),
    I32(ArrayView1<'a, i32>),
    I64(ArrayView1<'a, i64>),
}

impl CodeView<'_> {
    fn len(&self) -> usize {
        match self {
            Self::I8(a) => a.len(),
            Self::I16(a) => a.len(),
            Self::I32(a) => a.len(),
            Self::I64(a) => a.len(),
        }
    }

    /// Adds rows `rows` to `p`; `buckets[code]` is each code's bucket.
    fn add(&self, p: &mut proto::ColumnProfile, buckets: &[usize], rows: Range<usize>) {
        fn run<T: Copy>(
            p: &mut proto::ColumnProfile,
            buckets: &[usize],
            codes: ArrayView1<'_, T>,
            index: impl Fn(T) -> Option<usize>,
        ) {
            for &c in &codes {
                profile::add_category(p, index(c).and_then(|c| buckets.get(c).copied()));
            }
        }
        match self {
            Self::I8(a) => run(p, buckets, a.slice(s![rows]), |c| usize::try_from(c).ok()),
            Self::I16(a) => run(p, buckets, a.slice(s![rows]), |c| usize::try_from(c).ok()),
            Self::I32(a) => run(p, buckets, a.slice(s![rows]), |c| usize::try_from(c).ok()),
            Self::I64(a) => run(p, buckets, a.slice(s![rows]), |c| usize::try_from(c).ok()),
        }
    }
}

/// Arrow `string` / `large_string` offsets.
enum Offsets<'py> {
    I32(PyReadonlyArray1<'py, i32>),
    I64(PyReadonlyArray1<'py, i64>),
}

/// A categorical column of text as Arrow lays it out (a pandas Arrow-backed
/// string column, an Arrow or polars one): offsets (rows + 1), the UTF-8
/// bytes, and the validity bitmap with its bit offset (`None`: no nulls).
/// Looked up by bytes in the threads, no string built per row.
struct TextArray<'py> {
    layout: TextBuffers<'py>,
    valid: Option<(PyReadonlyArray1<'py, u8>, usize)>,
}

/// How a [`TextArray`] holds its values.
enum TextBuffers<'py> {
    /// `string` / `large_string`: offsets (rows + 1) into one run of bytes.
    Offsets {
        offsets: Offsets<'py>,
        data: PyReadonlyArray1<'py, u8>,
    },
    /// `string_view` (polars' strings): 16 bytes a row, the length (a
    /// little-endian i32) then the value itself when it is at most 12
    /// bytes, else its first 4 bytes, a buffer index and an offset.
    Views {
        views: PyReadonlyArray1<'py, u8>,
        buffers: Vec<PyReadonlyArray1<'py, u8>>,
    },
}

/// `(column_index, views (16 bytes a row), data buffers, validity bitmap,
/// bit offset)`.
type ViewArg<'py> = (
    usize,
    PyReadonlyArray1<'py, u8>,
    Vec<PyReadonlyArray1<'py, u8>>,
    Option<PyReadonlyArray1<'py, u8>>,
    usize,
);

/// Bytes of one `string_view` entry.
const VIEW_BYTES: usize = 16;

/// Longest value a view holds inline.
const VIEW_INLINE: usize = 12;

/// `(column_index, offsets, bytes, validity bitmap, bit offset)`.
type TextArg<'py> = (
    usize,
    Bound<'py, PyAny>,
    PyReadonlyArray1<'py, u8>,
    Option<PyReadonlyArray1<'py, u8>>,
    usize,
);

impl<'py> TextArray<'py> {
    fn read(arg: &TextArg<'py>) -> PyResult<Self> {
        let (_, offsets, data, valid, bit_offset) = arg;
        let offsets = if let Ok(a) = offsets.extract::<PyReadonlyArray1<'py, i32>>() {
            Offsets::I32(a)
        } else if let Ok(a) = offsets.extract::<PyReadonlyArray1<'py, i64>>() {
            Offsets::I64(a)
        } else {
            return Err(PyTypeError::new_err(
                "text offsets must be a 1-D int32 or int64 array",
            ));
        };
        Ok(Self {
            layout: TextBuffers::Offsets {
                offsets,
                data: data.clone(),
            },
            valid: valid.clone().map(|v| (v, *bit_offset)),
        })
    }

    fn read_views(arg: &ViewArg<'py>) -> Self {
        let (_, views, buffers, valid, bit_offset) = arg;
        Self {
            layout: TextBuffers::Views {
                views: views.clone(),
                buffers: buffers.clone(),
            },
            valid: valid.clone().map(|v| (v, *bit_offset)),
        }
    }

    /// Checks the layout (a hostile one is refused, never read past).
    fn view(&self) -> PyResult<TextView<'_>> {
        let bad = |what: &str| PyValueError::new_err(format!("text column: {what}"));
        let (layout, rows) = match &self.layout {
            TextBuffers::Offsets { offsets, data } => {
                let data = data.as_slice().map_err(|_| bad("bytes not contiguous"))?;
                let offsets: Vec<usize> = match offsets {
                    Offsets::I32(a) => a
                        .as_array()
                        .iter()
                        .map(|&o| usize::try_from(o).map_err(|_| bad("negative offset")))
                        .collect::<PyResult<_>>()?,
                    Offsets::I64(a) => a
                        .as_array()
                        .iter()
                        .map(|&o| usize::try_from(o).map_err(|_| bad("negative offset")))
                        .collect::<PyResult<_>>()?,
                };
                let Some(&last) = offsets.last() else {
                    return Err(bad("no offsets"));
                };
                if offsets.windows(2).any(|w| w[0] > w[1]) || last > data.len() {
                    return Err(bad("offsets out of order or past the bytes"));
                }
                let rows = offsets.len() - 1;
                (TextLayout::Offsets { offsets, data }, rows)
            }
            TextBuffers::Views { views, buffers } => {
                let views = views.as_slice().map_err(|_| bad("views not contiguous"))?;
                let buffers: Vec<&[u8]> = buffers
                    .iter()
                    .map(|b| b.as_slice().map_err(|_| bad("buffer not contiguous")))
                    .collect::<PyResult<_>>()?;
                if views.len() % VIEW_BYTES != 0 {
                    return Err(bad("views not a whole number of 16-byte entries"));
                }
                (
                    TextLayout::Views { views, buffers },
                    views.len() / VIEW_BYTES,
                )
            }
        };
        let valid = match &self.valid {
            None => None,
            Some((v, bit)) => {
                let bits = v.as_slice().map_err(|_| bad("bitmap not contiguous"))?;
                if bit
                    .checked_add(rows)
                    .is_none_or(|end| end.div_ceil(8) > bits.len())
                {
                    return Err(bad("validity bitmap too short"));
                }
                Some((bits, *bit))
            }
        };
        let view = TextView {
            layout,
            rows,
            valid,
        };
        if let TextLayout::Views { views, buffers } = &view.layout {
            // Every valid row's view lies within its buffer (null rows'
            // views are never read).
            for r in 0..rows {
                if !view.is_valid(r) {
                    continue;
                }
                let e = &views[r * VIEW_BYTES..(r + 1) * VIEW_BYTES];
                let len = usize::try_from(view_field(e, 0)).map_err(|_| bad("negative length"))?;
                if len <= VIEW_INLINE {
                    continue;
                }
                let at = (
                    usize::try_from(view_field(e, 8)),
                    usize::try_from(view_field(e, 12)),
                );
                let (Ok(buffer), Ok(offset)) = at else {
                    return Err(bad("negative buffer index or offset"));
                };
                if buffers
                    .get(buffer)
                    .is_none_or(|b| offset.checked_add(len).is_none_or(|end| end > b.len()))
                {
                    return Err(bad("a view past its buffer"));
                }
            }
        }
        Ok(view)
    }
}

/// The little-endian i32 at `at` of a `string_view` entry.
#[inline]
fn view_field(entry: &[u8], at: usize) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&entry[at..at + 4]);
    i32::from_le_bytes(b)
}

/// A text column to profile: its index, its layout, its buckets by bytes
/// and the bucket of values the reference does not know.
type TextJob<'a> = (usize, TextView<'a>, FxHashMap<&'a [u8], usize>, usize);

/// A checked [`TextArray`].
struct TextView<'a> {
    layout: TextLayout<'a>,
    rows: usize,
    valid: Option<(&'a [u8], usize)>,
}

enum TextLayout<'a> {
    Offsets {
        offsets: Vec<usize>,
        data: &'a [u8],
    },
    Views {
        views: &'a [u8],
        buffers: Vec<&'a [u8]>,
    },
}

impl<'a> TextView<'a> {
    fn len(&self) -> usize {
        self.rows
    }

    #[inline]
    fn is_valid(&self, r: usize) -> bool {
        self.valid.is_none_or(|(bits, bit)| {
            let i = bit + r;
            bits[i / 8] & (1 << (i % 8)) != 0
        })
    }

    /// The bytes of (valid) row `r`.
    #[inline]
    fn value(&self, r: usize) -> &'a [u8] {
        match &self.layout {
            TextLayout::Offsets { offsets, data } => &data[offsets[r]..offsets[r + 1]],
            TextLayout::Views { views, buffers } => {
                let e = &views[r * VIEW_BYTES..(r + 1) * VIEW_BYTES];
                // Checked in `view`: not negative, and within its buffer.
                let len = view_field(e, 0).unsigned_abs() as usize;
                if len <= VIEW_INLINE {
                    &e[4..4 + len]
                } else {
                    let buffer = view_field(e, 8).unsigned_abs() as usize;
                    let offset = view_field(e, 12).unsigned_abs() as usize;
                    &buffers[buffer][offset..offset + len]
                }
            }
        }
    }

    /// Adds rows `rows` to `p`: each value's bucket found by its bytes in
    /// `near`, else in `buckets`, `miss` for a value the reference does not
    /// know.
    fn add(
        &self,
        p: &mut proto::ColumnProfile,
        buckets: &FxHashMap<&[u8], usize>,
        near: &mut Near<'a>,
        miss: &dyn Fn(&[u8]) -> usize,
        rows: Range<usize>,
    ) {
        for r in rows {
            if !self.is_valid(r) {
                profile::add_category(p, None);
                continue;
            }
            let v = self.value(r);
            let hash = Near::hash(v);
            if let Some(bucket) = near.get(hash, v) {
                profile::add_category(p, Some(bucket));
                continue;
            }
            let bucket = if v.len() > crate::recorder::MAX_VALUE_BYTES {
                // Cut as agents and references cut it.
                let cut = crate::recorder::clip(
                    String::from_utf8_lossy(v).into_owned(),
                    crate::recorder::MAX_VALUE_BYTES,
                );
                buckets
                    .get(cut.as_bytes())
                    .copied()
                    .unwrap_or_else(|| miss(cut.as_bytes()))
            } else {
                buckets.get(v).copied().unwrap_or_else(|| miss(v))
            };
            near.put(hash, v, bucket);
            profile::add_category(p, Some(bucket));
        }
    }
}

/// A categorical column of numbers (codes in a float matrix): each value's
/// bucket found by its bits in a per-thread cache, spelled (integral values
/// as integers, like the agent) only the first time a thread meets it.
struct NumberCategories<'a> {
    col: usize,
    values: NumView<'a>,
}

impl NumberCategories<'_> {
    fn add(
        &self,
        p: &mut proto::ColumnProfile,
        compiled: &profile::Compiled,
        cache: &mut FxHashMap<u64, usize>,
        rows: Range<usize>,
    ) {
        match self.values {
            NumView::F64(a) => {
                self.add_values(p, compiled, cache, a.slice(s![rows]).iter().copied())
            }
            NumView::F32(a) => self.add_values(
                p,
                compiled,
                cache,
                a.slice(s![rows]).iter().map(|&v| f64::from(v)),
            ),
        }
    }

    fn add_values(
        &self,
        p: &mut proto::ColumnProfile,
        compiled: &profile::Compiled,
        cache: &mut FxHashMap<u64, usize>,
        values: impl Iterator<Item = f64>,
    ) {
        // A direct-mapped table in front of the map: a column of a few
        // codes finds each in one load. Its empty entries hold a NaN's
        // bits, which no looked-up value has.
        const SLOTS: usize = 64;
        let mut near = [(u64::MAX, 0usize); SLOTS];
        for v in values {
            if v.is_nan() {
                profile::add_category(p, None);
                continue;
            }
            let bits = v.to_bits();
            #[allow(clippy::cast_possible_truncation)]
            let slot = (bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SLOTS;
            let b = if near[slot].0 == bits {
                near[slot].1
            } else {
                let b = *cache.entry(bits).or_insert_with(|| {
                    crate::recorder::float_spelling(v).map_or_else(
                        || compiled.miss_bucket(self.col),
                        |s| compiled.bucket(self.col, &s),
                    )
                });
                near[slot] = (bits, b);
                b
            };
            profile::add_category(p, Some(b));
        }
    }
}

/// Bytes of a tile of rows across all columns: a row-major matrix is read
/// once, in order, a tile at a time (gathered into a column-major scratch
/// that stays in the outer caches), and each column's binning tables are
/// reloaded only once per tile.
const TILE_BYTES: usize = 2 * 1024 * 1024;

/// Profiles whole columns against a reference (offline data, no agent):
/// `numeric` is a list of `(column_index, float64 or float32 array)`,
/// `categorical` of `(column_index, integer codes (negative for missing),
/// dictionary of values)`. Arrays may have any stride (the columns of a
/// row-major matrix are read in place). Rows are split among threads, each
/// reading tiles of rows across every column (cache-sized, so a row-major
/// matrix is read once), with the GIL released; the threads' profiles are
/// merged. Returns an encoded window profile covering `[start, start +
/// width)`.
///
/// `text` holds categorical columns of text as Arrow lays them out:
/// `(column_index, offsets, utf8 bytes, validity bitmap or None, bit
/// offset)`, and `views` those laid out as Arrow `string_view` (polars):
/// `(column_index, views, [data buffers], validity bitmap or None, bit
/// offset)`; their values are looked up by bytes in the threads.
///
/// `objects` holds categorical columns of Python strings (`(column_index,
/// object array)`, a pandas object column): the calling thread encodes
/// them, holding the GIL, while the threads profile the other columns.
/// Returns `None` when one of them holds anything but strings and missing
/// values (for Arrow to spell), else the encoded profile.
#[pyfunction]
#[pyo3(signature = (reference, numeric, categorical, start_unix_nano=0, width_nano=0, text=Vec::new(),
    number_categories=Vec::new(), views=Vec::new(), objects=Vec::new()))]
#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
pub fn profile_columns<'py>(
    py: Python<'py>,
    reference: &[u8],
    numeric: Vec<(usize, Bound<'py, PyAny>)>,
    categorical: Vec<(usize, Bound<'py, PyAny>, Vec<String>)>,
    start_unix_nano: u64,
    width_nano: u64,
    text: Vec<TextArg<'py>>,
    number_categories: Vec<(usize, Bound<'py, PyAny>)>,
    views: Vec<ViewArg<'py>>,
    objects: Vec<(usize, PyReadonlyArray1<'py, Py<PyAny>>)>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guard(|| {
        let r = profile::decode_reference(reference).map_err(|e| reference_err(&e))?;
        if start_unix_nano.checked_add(width_nano).is_none() {
            return Err(PyValueError::new_err("the window ends past 2^64 ns"));
        }
        let compiled = profile::Compiled::new(r);
        let ncols = compiled.reference.columns.len();
        let mut seen = HashSet::new();
        for (i, _) in &numeric {
            if *i >= ncols || compiled.reference.columns[*i].numeric.is_none() {
                return Err(PyValueError::new_err(format!(
                    "column {i} is not a numeric reference column"
                )));
            }
            if !seen.insert(*i) {
                return Err(PyValueError::new_err(format!("column {i} given twice")));
            }
        }
        let cat_indices: Vec<usize> = categorical
            .iter()
            .map(|c| c.0)
            .chain(text.iter().map(|t| t.0))
            .chain(views.iter().map(|t| t.0))
            .chain(number_categories.iter().map(|t| t.0))
            .chain(objects.iter().map(|t| t.0))
            .collect();
        for i in &cat_indices {
            if *i >= ncols || compiled.reference.columns[*i].categorical.is_none() {
                return Err(PyValueError::new_err(format!(
                    "column {i} is not a categorical reference column"
                )));
            }
            if !seen.insert(*i) {
                return Err(PyValueError::new_err(format!("column {i} given twice")));
            }
        }
        let num_arrays: Vec<(usize, NumArray<'py>)> = numeric
            .iter()
            .map(|(i, a)| NumArray::read(a).map(|a| (*i, a)))
            .collect::<PyResult<_>>()?;
        let cat_arrays: Vec<(usize, CodeArray<'py>, &Vec<String>)> = categorical
            .iter()
            .map(|(i, a, d)| CodeArray::read(a).map(|a| (*i, a, d)))
            .collect::<PyResult<_>>()?;
        let num: Vec<(usize, NumView<'_>, &profile::Binner)> = num_arrays
            .iter()
            .map(|(i, a)| (*i, a.view(), compiled.binner(*i)))
            .collect();
        let cat: Vec<(usize, CodeView<'_>, Vec<usize>)> = cat_arrays
            .iter()
            .map(|(i, a, d)| {
                (
                    *i,
                    a.view(),
                    d.iter().map(|v| compiled.bucket(*i, v)).collect(),
                )
            })
            .collect();
        let mut text_arrays: Vec<(usize, TextArray<'py>)> = text
            .iter()
            .map(|t| TextArray::read(t).map(|a| (t.0, a)))
            .collect::<PyResult<_>>()?;
        text_arrays.extend(views.iter().map(|v| (v.0, TextArray::read_views(v))));
        let texts: Vec<TextJob<'_>> = text_arrays
            .iter()
            .map(|(i, a)| {
                let buckets = compiled.buckets[*i]
                    .iter()
                    .map(|(k, &b)| (k.as_bytes(), b))
                    .collect();
                a.view().map(|v| (*i, v, buckets, compiled.miss_bucket(*i)))
            })
            .collect::<PyResult<_>>()?;
        let number_arrays: Vec<(usize, NumArray<'py>)> = number_categories
            .iter()
            .map(|(i, a)| NumArray::read(a).map(|a| (*i, a)))
            .collect::<PyResult<_>>()?;
        let numcats: Vec<NumberCategories<'_>> = number_arrays
            .iter()
            .map(|(i, a)| NumberCategories {
                col: *i,
                values: a.view(),
            })
            .collect();
        let rows = num
            .first()
            .map(|c| c.1.len())
            .or_else(|| cat.first().map(|c| c.1.len()))
            .or_else(|| texts.first().map(|c| c.1.len()))
            .or_else(|| numcats.first().map(|c| c.values.len()))
            .or_else(|| objects.first().map(|c| c.1.as_array().len()))
            .unwrap_or(0);
        if num.iter().any(|c| c.1.len() != rows)
            || cat.iter().any(|c| c.1.len() != rows)
            || texts.iter().any(|c| c.1.len() != rows)
            || numcats.iter().any(|c| c.values.len() != rows)
            || objects.iter().any(|c| c.1.as_array().len() != rows)
        {
            return Err(PyValueError::new_err("columns differ in length"));
        }
        let window = {
            let mut w = compiled.empty_window(start_unix_nano, width_nano);
            let width = num.len() + cat.len() + texts.len() + numcats.len();
            let row_bytes = (num.len() + numcats.len()) * 8 + cat.len() * 4 + texts.len() * 16;
            let tile = (TILE_BYTES / row_bytes.max(1)).clamp(256, 1 << 17);
            let threads = std::thread::available_parallelism()
                .map_or(1, std::num::NonZero::get)
                .min(rows.div_ceil(tile).max(1));
            let per = rows.div_ceil(threads);
            let (num, cat, texts, numcats, w_ref) = (&num, &cat, &texts, &numcats, &w);
            let compiled = &compiled;
            let cols: Vec<usize> = num
                .iter()
                .map(|c| c.0)
                .chain(cat.iter().map(|c| c.0))
                .chain(texts.iter().map(|c| c.0))
                .chain(numcats.iter().map(|c| c.col))
                .collect();
            let cols_ref = &cols;
            let work = move |range: Range<usize>| -> Vec<proto::ColumnProfile> {
                let mut out: Vec<proto::ColumnProfile> =
                    cols_ref.iter().map(|&c| w_ref.columns[c].clone()).collect();
                let base = num.len() + cat.len();
                let mut caches: Vec<FxHashMap<u64, usize>> =
                    numcats.iter().map(|_| FxHashMap::default()).collect();
                let mut nears: Vec<Near<'_>> = texts.iter().map(|_| Near::new()).collect();
                // Strided columns (a row-major matrix) are gathered row by
                // row into a column-major tile first: memory is then read in
                // order, and each column's kernel runs on a contiguous slice.
                let views: Vec<&NumView<'_>> = num
                    .iter()
                    .map(|c| &c.1)
                    .chain(numcats.iter().map(|c| &c.values))
                    .collect();
                let strided: Vec<usize> = (0..views.len())
                    .filter(|&k| !views[k].is_contiguous())
                    .collect();
                let mut scratch = vec![0.0f64; strided.len() * tile];
                // Typed once, so the per-value loop has no dispatch.
                let mut f64s: Vec<(usize, ArrayView1<'_, f64>)> = Vec::new();
                let mut f32s: Vec<(usize, ArrayView1<'_, f32>)> = Vec::new();
                for (slot, &k) in strided.iter().enumerate() {
                    match *views[k] {
                        NumView::F64(a) => f64s.push((slot * tile, a)),
                        NumView::F32(a) => f32s.push((slot * tile, a)),
                    }
                }
                let mut r = range.start;
                while r < range.end {
                    let t = r..(r + tile).min(range.end);
                    let len = t.len();
                    for (j, row) in t.clone().enumerate() {
                        for (at, a) in &f64s {
                            // SAFETY: `row` is below the view's length (the
                            // tile lies within `range`, within `rows`, the
                            // length of every column, checked above).
                            scratch[at + j] = unsafe { *a.uget(row) };
                        }
                        for (at, a) in &f32s {
                            // SAFETY: as above.
                            scratch[at + j] = f64::from(unsafe { *a.uget(row) });
                        }
                    }
                    let mut next = 0;
                    for (k, (_, values, binner)) in num.iter().enumerate() {
                        if strided.get(next) == Some(&k) {
                            let col = &scratch[next * tile..next * tile + len];
                            profile::add_numeric_slice(&mut out[k], binner, col);
                            next += 1;
                        } else {
                            values.add(&mut out[k], binner, t.clone());
                        }
                    }
                    for (k, (_, codes, buckets)) in cat.iter().enumerate() {
                        codes.add(&mut out[num.len() + k], buckets, t.clone());
                    }
                    for (k, (col, values, buckets, _)) in texts.iter().enumerate() {
                        let miss = |v: &[u8]| compiled.miss_bucket_of(*col, v);
                        values.add(&mut out[base + k], buckets, &mut nears[k], &miss, t.clone());
                    }
                    for (k, values) in numcats.iter().enumerate() {
                        let at = base + texts.len() + k;
                        if strided.get(next) == Some(&(num.len() + k)) {
                            let col = &scratch[next * tile..next * tile + len];
                            let cache = &mut caches[k];
                            values.add_values(&mut out[at], compiled, cache, col.iter().copied());
                            next += 1;
                        } else {
                            values.add(&mut out[at], compiled, &mut caches[k], t.clone());
                        }
                    }
                    r = t.end;
                }
                out
            };
            let mut parts: Vec<Vec<proto::ColumnProfile>> = Vec::with_capacity(threads);
            // Columns of Python strings are read here, with the GIL, while
            // the threads profile the others: `None` where one holds
            // anything else (Arrow spells those).
            let mut encoded: PyResult<Option<Vec<(usize, proto::ColumnProfile)>>> =
                Ok(Some(vec![]));
            std::thread::scope(|sc| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let range = (t * per).min(rows)..((t + 1) * per).min(rows);
                        sc.spawn(move || work(range))
                    })
                    .collect();
                encoded = profile_objects(py, compiled, &objects, w_ref);
                py.detach(|| {
                    for h in handles {
                        // A worker's panic must not pass for a column
                        // without values: carry it on, for `guard` to report.
                        match h.join() {
                            Ok(done) => parts.push(done),
                            Err(payload) => std::panic::resume_unwind(payload),
                        }
                    }
                });
            });
            let Some(encoded) = encoded? else {
                return Ok(None);
            };
            debug_assert_eq!(cols.len(), width);
            for part in &parts {
                for (k, &c) in cols.iter().enumerate() {
                    profile::merge_column(&mut w.columns[c], &part[k]);
                }
            }
            for (c, p) in &encoded {
                profile::merge_column(&mut w.columns[*c], p);
            }
            w.records = rows as u64;
            w
        };
        Ok(Some(PyBytes::new(py, &window.encode_to_vec())))
    })
}

/// Profiles columns of Python objects (strings and missing values): each
/// dictionary-encoded by [`encode_objects`] and its codes counted. `None`
/// where a column holds anything else.
fn profile_objects(
    py: Python<'_>,
    compiled: &profile::Compiled,
    objects: &[(usize, PyReadonlyArray1<'_, Py<PyAny>>)],
    w: &proto::WindowProfile,
) -> PyResult<Option<Vec<(usize, proto::ColumnProfile)>>> {
    let mut out = Vec::with_capacity(objects.len());
    for (c, values) in objects {
        let Some((codes, dictionary)) = encode_objects(py, values.as_array(), false)? else {
            return Ok(None);
        };
        let buckets: Vec<usize> = dictionary.iter().map(|v| compiled.bucket(*c, v)).collect();
        let mut p = w.columns[*c].clone();
        CodeView::I32(ArrayView1::from(&codes[..])).add(&mut p, &buckets, 0..codes.len());
        out.push((*c, p));
    }
    Ok(Some(out))
}

/// Float categories spelled canonically (see `float_spelling`: integral
/// values as integers, others as Python's `repr`), `None` for NaN: the
/// spelling references, `log`, `log_batch` and DataFrames share. Meant for
/// the distinct values of a column (a dictionary), not every row.
#[pyfunction]
pub fn spell_floats(values: PyReadonlyArray1<'_, f64>) -> PyResult<Vec<Option<String>>> {
    guard(|| {
        Ok(values
            .as_array()
            .iter()
            .map(|&v| crate::recorder::float_spelling(v).map(std::borrow::Cow::into_owned))
            .collect())
    })
}

/// Category values cut as an agent cuts them (at
/// `MAX_VALUE_BYTES`, 1,024 bytes, marked with the bytes cut), so a long
/// category is the same value in a reference and in the records.
#[pyfunction]
pub fn clip_values(values: Vec<String>) -> PyResult<Vec<String>> {
    guard(|| {
        Ok(values
            .into_iter()
            .map(|v| crate::recorder::clip(v, crate::recorder::MAX_VALUE_BYTES))
            .collect())
    })
}

/// Codes and dictionary of [`encode_strings`].
type Encoded<'py> = (Bound<'py, PyArray1<i32>>, Bound<'py, PyList>);

/// Dictionary-encodes a NumPy object array of strings (a pandas object
/// column): `(int32 codes, -1 for None or NaN; the distinct strings)`, or
/// `None` when it holds anything but strings and missing values (those go
/// through Arrow's spelling instead). One hash lookup per row, by the
/// string's own UTF-8, no Arrow copy.
///
/// With `spell_all`, any other value (a column mixing strings and numbers,
/// which Arrow cannot read) is spelled as the agent spells it: integers and
/// integral floats as integers, booleans as `true`/`false`, other objects
/// by `str()`.
#[pyfunction]
#[pyo3(signature = (values, spell_all=false))]
pub fn encode_strings<'py>(
    py: Python<'py>,
    values: PyReadonlyArray1<'py, Py<PyAny>>,
    spell_all: bool,
) -> PyResult<Option<Encoded<'py>>> {
    guard(|| {
        Ok(match encode_objects(py, values.as_array(), spell_all)? {
            Some((codes, dictionary)) => {
                Some((PyArray1::from_vec(py, codes), PyList::new(py, dictionary)?))
            }
            None => None,
        })
    })
}

/// [`encode_strings`]' work: codes and dictionary, `None` for a column it
/// leaves to Arrow.
fn encode_objects(
    py: Python<'_>,
    view: ArrayView1<'_, Py<PyAny>>,
    spell_all: bool,
) -> PyResult<Option<(Vec<i32>, Vec<String>)>> {
    {
        let mut codes: Vec<i32> = Vec::with_capacity(view.len());
        let mut index: FxHashMap<String, i32> = FxHashMap::default();
        let mut dictionary: Vec<String> = Vec::new();
        // Rows of a low-cardinality column mostly hold the very same few
        // objects (NumPy and pandas' parsers reuse them): a direct-mapped
        // cache of object address -> code skips the hash of their bytes.
        // The array holds every object it lists, so an address stands for
        // one object for as long as no Python code runs (a `__str__` or
        // `__float__` of the general path, which may replace elements, or
        // let another thread do so): the cache is emptied after any.
        const CACHE: usize = 256;
        let mut cache: [(*mut pyo3::ffi::PyObject, i32); CACHE] =
            [(std::ptr::null_mut(), 0); CACHE];
        let str_type = std::ptr::addr_of_mut!(pyo3::ffi::PyUnicode_Type);
        for item in &view {
            let ptr = item.as_ptr();
            let slot = (ptr as usize >> 4) % CACHE;
            if cache[slot].0 == ptr {
                codes.push(cache[slot].1);
                continue;
            }
            // An exact `str` (most rows): its UTF-8 read straight through
            // the C API, without the checks and wrappers of the general
            // path below.
            // SAFETY: `ptr` is a live object the array holds (the GIL is
            // held); reading its type is what Py_TYPE does.
            if unsafe { pyo3::ffi::Py_TYPE(ptr) } == str_type {
                let mut len: pyo3::ffi::Py_ssize_t = 0;
                // SAFETY: `ptr` is a str; the returned buffer is owned by
                // the object (alive while the array is) and is valid UTF-8.
                let data = unsafe { pyo3::ffi::PyUnicode_AsUTF8AndSize(ptr, &mut len) };
                if !data.is_null() {
                    // SAFETY: `data` points at `len` bytes of UTF-8 (above),
                    // read here only (no Python code runs before its last
                    // use).
                    let text: &str = unsafe {
                        std::str::from_utf8_unchecked(std::slice::from_raw_parts(
                            data.cast::<u8>(),
                            len as usize,
                        ))
                    };
                    let code = match index.get(text) {
                        Some(&c) => c,
                        None => {
                            let Ok(c) = i32::try_from(dictionary.len()) else {
                                return Ok(None);
                            };
                            index.insert(text.to_owned(), c);
                            dictionary.push(crate::recorder::clip(
                                text.to_owned(),
                                crate::recorder::MAX_VALUE_BYTES,
                            ));
                            c
                        }
                    };
                    cache[slot] = (ptr, code);
                    codes.push(code);
                    continue;
                }
                // Not UTF-8 (lone surrogates): the error is the general
                // path's to raise again and handle.
                // SAFETY: the GIL is held.
                unsafe { pyo3::ffi::PyErr_Clear() };
            }
            // Held by a reference of its own: Python code run below may
            // drop the array's.
            let owned = item.clone_ref(py).into_bound(py);
            let obj = &owned;
            let mut ran_python = false;
            let spelled: Option<std::borrow::Cow<'_, str>> = if let Ok(s) = obj.cast::<PyString>() {
                match s.to_str() {
                    Ok(text) => Some(std::borrow::Cow::Borrowed(text)),
                    // Not UTF-8 (lone surrogates): Arrow decides, or spelled lossily.
                    Err(_) if !spell_all => return Ok(None),
                    Err(_) => crate::recorder::canonical(obj),
                }
            } else if obj.is_none() {
                None
            } else if let Ok(f) = obj.cast::<pyo3::types::PyFloat>() {
                if !f.value().is_nan() && !spell_all {
                    return Ok(None);
                }
                crate::recorder::canonical(obj)
            } else if spell_all {
                ran_python = true;
                crate::recorder::canonical(obj)
            } else {
                return Ok(None);
            };

            let code = match spelled {
                None => -1,
                Some(text) => {
                    if let Some(&c) = index.get(text.as_ref()) {
                        c
                    } else {
                        let Ok(c) = i32::try_from(dictionary.len()) else {
                            return Ok(None);
                        };
                        index.insert(text.clone().into_owned(), c);
                        dictionary.push(crate::recorder::clip(
                            text.into_owned(),
                            crate::recorder::MAX_VALUE_BYTES,
                        ));
                        c
                    }
                }
            };
            if ran_python {
                cache = [(std::ptr::null_mut(), 0); CACHE];
            } else {
                cache[slot] = (ptr, code);
            }
            codes.push(code);
        }
        Ok(Some((codes, dictionary)))
    }
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
