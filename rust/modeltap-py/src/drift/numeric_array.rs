//! Numeric columns as given: float64 or float32 arrays of any stride,
//! read in place.

use std::ops::Range;

use modeltap_core::profile;
use modeltap_core::proto;
use numpy::ndarray::{s, ArrayView1};
use numpy::PyReadonlyArray1;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

/// A numeric column as given: float64 or float32, any stride (a column of a
/// row-major matrix, a pandas block) — read in place, never copied.
pub(super) enum NumArray<'py> {
    F64(PyReadonlyArray1<'py, f64>),
    F32(PyReadonlyArray1<'py, f32>),
}

impl<'py> NumArray<'py> {
    pub(super) fn read(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
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

    pub(super) fn view(&self) -> NumView<'_> {
        match self {
            Self::F64(a) => NumView::F64(a.as_array()),
            Self::F32(a) => NumView::F32(a.as_array()),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum NumView<'a> {
    F64(ArrayView1<'a, f64>),
    F32(ArrayView1<'a, f32>),
}

impl NumView<'_> {
    pub(super) fn is_contiguous(&self) -> bool {
        match self {
            Self::F64(a) => a.as_slice().is_some(),
            Self::F32(a) => a.as_slice().is_some(),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Self::F64(a) => a.len(),
            Self::F32(a) => a.len(),
        }
    }

    /// Adds rows `rows` of the column to `p`.
    pub(super) fn add(
        &self,
        p: &mut proto::ColumnProfile,
        binner: &profile::Binner,
        rows: Range<usize>,
    ) {
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
