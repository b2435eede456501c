//! The 2-D feature array of a `log_batch` call, viewed in either float
//! width: read by the call's rows (`bulk`) and its profiler
//! (`bulk_profile`).

use numpy::ndarray::ArrayView2;

/// A read-only view of the 2-D feature array, in either float width.
pub(super) enum XView<'a> {
    F64(ArrayView2<'a, f64>),
    F32(ArrayView2<'a, f32>),
}

impl XView<'_> {
    pub(super) fn dim(&self) -> (usize, usize) {
        match self {
            Self::F64(a) => a.dim(),
            Self::F32(a) => a.dim(),
        }
    }

    #[inline]
    pub(super) fn get(&self, r: usize, c: usize) -> f64 {
        match self {
            Self::F64(a) => a[[r, c]],
            Self::F32(a) => f64::from(a[[r, c]]),
        }
    }
}
