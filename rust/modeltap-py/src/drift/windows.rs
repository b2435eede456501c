//! Reading encoded window profiles: merging them, summing their stage and
//! prediction latencies, and the reference they were built against.

use modeltap_core::profile;
use modeltap_core::proto;
use prost::Message;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::profile_err;
use crate::errors::{guard, BatchDecodeError};

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
