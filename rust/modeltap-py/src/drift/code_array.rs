//! Category codes as given: integer arrays of any width and stride.

use std::ops::Range;

use modeltap_core::profile;
use modeltap_core::proto;
use numpy::ndarray::{s, ArrayView1};
use numpy::PyReadonlyArray1;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

/// Category codes as given (a pandas `category` column's own codes, an
/// Arrow dictionary's indices): any integer width, any stride; negative
/// means missing.
pub(super) enum CodeArray<'py> {
    I8(PyReadonlyArray1<'py, i8>),
    I16(PyReadonlyArray1<'py, i16>),
    I32(PyReadonlyArray1<'py, i32>),
    I64(PyReadonlyArray1<'py, i64>),
}

impl<'py> CodeArray<'py> {
    pub(super) fn read(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
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

    pub(super) fn view(&self) -> CodeView<'_> {
        match self {
            Self::I8(a) => CodeView::I8(a.as_array()),
            Self::I16(a) => CodeView::I16(a.as_array()),
            Self::I32(a) => CodeView::I32(a.as_array()),
            Self::I64(a) => CodeView::I64(a.as_array()),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum CodeView<'a> {
    I8(ArrayView1<'a, i8>),
    I16(ArrayView1<'a, i16>),
    I32(ArrayView1<'a, i32>),
    I64(ArrayView1<'a, i64>),
}

impl CodeView<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::I8(a) => a.len(),
            Self::I16(a) => a.len(),
            Self::I32(a) => a.len(),
            Self::I64(a) => a.len(),
        }
    }

    /// Adds rows `rows` to `p`; `buckets[code]` is each code's bucket.
    pub(super) fn add(&self, p: &mut proto::ColumnProfile, buckets: &[usize], rows: Range<usize>) {
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
