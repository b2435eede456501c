//! Building references column by column, assembling and describing them.

use std::collections::HashSet;

use modeltap_core::profile;
use modeltap_core::proto;
use numpy::PyReadonlyArray1;
use prost::Message;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::{kind_name, reference_err, role, role_name};
use crate::errors::{guard, ReferenceFormatError};

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
