//! `modeltap._core`: the Python face of `modeltap-core`. Only conversions
//! live here; the work is done in the core with the GIL released.

mod decode;
mod drift;
mod errors;
mod labels;
mod parse;
mod recorder;
mod request_ids;

use pyo3::prelude::*;

/// A random 128-bit id as 32 hex digits.
#[pyfunction]
fn random_id() -> String {
    modeltap_core::ids::hex_string(modeltap_core::ids::random_u128())
}

/// Reseeds the id generators of every thread; called in a child after fork.
#[pyfunction]
fn _after_fork() {
    modeltap_core::ids::after_fork();
}

/// The current span's context (None outside every span).
#[pyfunction]
fn current_span_context(py: Python<'_>) -> Option<recorder::SpanContext> {
    recorder::current_context(py)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("InvalidRecord", py.get_type::<errors::InvalidRecord>())?;
    m.add(
        "BatchDecodeError",
        py.get_type::<errors::BatchDecodeError>(),
    )?;
    m.add(
        "UnsupportedSchemaVersion",
        py.get_type::<errors::UnsupportedSchemaVersion>(),
    )?;
    m.add("SCHEMA_VERSION", modeltap_core::SCHEMA_VERSION)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEBUG_BUILD", cfg!(debug_assertions))?;
    m.add_function(wrap_pyfunction!(random_id, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(labels::encode_label_batch, m)?)?;
    m.add_function(wrap_pyfunction!(decode::encode_export_response, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_export_response, m)?)?;
    m.add_function(wrap_pyfunction!(decode::encode_reference_upload, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_reference_upload, m)?)?;
    m.add_function(wrap_pyfunction!(decode::encode_drift_request, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_drift_request, m)?)?;
    m.add_function(wrap_pyfunction!(decode::encode_text_response, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_text_response, m)?)?;
    m.add_function(wrap_pyfunction!(decode::encode_query_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_query_chunk, m)?)?;
    m.add("InternalError", py.get_type::<errors::InternalError>())?;
    m.add(
        "ReferenceFormatError",
        py.get_type::<errors::ReferenceFormatError>(),
    )?;
    m.add_function(wrap_pyfunction!(drift::build_numeric_column, m)?)?;
    m.add_function(wrap_pyfunction!(drift::build_categorical_column, m)?)?;
    m.add_function(wrap_pyfunction!(drift::assemble_reference, m)?)?;
    m.add_function(wrap_pyfunction!(drift::reference_info, m)?)?;
    m.add_function(wrap_pyfunction!(drift::merge_profiles, m)?)?;
    m.add_function(wrap_pyfunction!(drift::stage_latency, m)?)?;
    m.add_function(wrap_pyfunction!(drift::histograms, m)?)?;
    m.add_function(wrap_pyfunction!(drift::record_latency, m)?)?;
    m.add_function(wrap_pyfunction!(drift::drift, m)?)?;
    m.add_function(wrap_pyfunction!(drift::profile_fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(drift::profile_columns, m)?)?;
    m.add_function(wrap_pyfunction!(drift::encode_strings, m)?)?;
    m.add_function(wrap_pyfunction!(drift::spell_floats, m)?)?;
    m.add_function(wrap_pyfunction!(drift::clip_values, m)?)?;
    m.add_class::<recorder::Recorder>()?;
    m.add_class::<recorder::Span>()?;
    m.add_class::<recorder::SpanContext>()?;
    m.add_function(wrap_pyfunction!(current_span_context, m)?)?;
    m.add_class::<request_ids::RequestIds>()?;
    m.add_class::<request_ids::RequestIdsIter>()?;
    Ok(())
}
