//! References, profiles and drift: thin wrappers over `modeltap_core::profile`
//! and `modeltap_core::stats`.
//!
//! The pyfunctions live by what they do: building and describing
//! references (`reference.rs`), reading window profiles (`windows.rs`),
//! drift and its histograms (`report.rs`), profiling whole columns offline
//! (`offline.rs`) and encoding Python object columns (`objects.rs`). Each
//! input layout has its own reader (`numeric_array.rs`, `code_array.rs`,
//! `text_array.rs`, `number_categories.rs`), which checks a column as it is
//! laid out and counts its rows into a profile.

mod code_array;
mod number_categories;
mod numeric_array;
mod objects;
mod offline;
mod reference;
mod report;
mod text_array;
mod windows;

pub use objects::{clip_values, encode_strings, spell_floats};
pub use offline::profile_columns;
pub use reference::{
    assemble_reference, build_categorical_column, build_numeric_column, reference_info,
};
pub use report::{drift, histograms};
pub use windows::{merge_profiles, profile_fingerprint, record_latency, stage_latency};

use modeltap_core::error::ProfileError;
use modeltap_core::profile::ReferenceError;
use modeltap_core::proto;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{BatchDecodeError, ReferenceFormatError};

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
