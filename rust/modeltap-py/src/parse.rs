//! Reading Python values (floats, ints, strings, numpy arrays, sequences)
//! into `f64` rows without keeping any Python object.

use modeltap_core::record::flags;
use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyList, PyString, PyTuple};

/// Reads one numeric value; never fails: a value that is not a number
/// becomes NaN with `BAD_VALUE`, `None` and NaN become NaN with `MISSING`.
#[inline]
pub fn number(item: &Bound<'_, PyAny>, flag: &mut u32) -> f64 {
    let v = if let Ok(f) = item.cast::<PyFloat>() {
        f.value()
    } else if item.is_instance_of::<PyInt>() {
        item.extract::<f64>().unwrap_or(f64::NAN)
    } else if item.is_none() {
        *flag |= flags::MISSING;
        return f64::NAN;
    } else if item.is_instance_of::<PyString>() {
        *flag |= flags::BAD_VALUE;
        return f64::NAN;
    } else if let Ok(v) = item.extract::<f64>() {
        v
    } else {
        *flag |= flags::BAD_VALUE;
        return f64::NAN;
    };
    check(v, flag)
}

/// Flags NaN as missing and infinities as non-finite.
#[inline]
pub fn check(v: f64, flag: &mut u32) -> f64 {
    if v.is_nan() {
        *flag |= flags::MISSING;
    } else if v.is_infinite() {
        *flag |= flags::NONFINITE;
    }
    v
}

/// Calls `read` on the values of `obj` when it is a 1-D float64 numpy
/// array (`None` otherwise), without taking one of numpy's tracked
/// borrows: a borrow costs a hash-map insertion and removal, a third of a
/// record's parsing, for a view that lives only while the values are
/// copied out.
#[inline]
pub fn with_f64_array<R>(
    obj: &Bound<'_, PyAny>,
    read: impl FnOnce(ArrayView1<'_, f64>) -> R,
) -> Option<R> {
    let a = obj.cast::<PyArray1<f64>>().ok()?;
    // SAFETY: the view is read and dropped inside `read`, which copies the
    // values out; the GIL is held throughout, so no Python code (nor any
    // thread holding the GIL) can resize or free the array meanwhile, and
    // this crate never holds a mutable borrow of a caller's array.
    let view = unsafe { a.as_array() };
    Some(read(view))
}

/// A 1-D sequence of numbers: a numpy array of any real dtype, a list or a
/// tuple. Returns `None` when `obj` is none of those.
pub fn vector(obj: &Bound<'_, PyAny>, out: &mut Vec<f64>, flag: &mut u32) -> Option<()> {
    out.clear();
    let float64 = with_f64_array(obj, |a| match a.as_slice() {
        Some(s) => out.extend_from_slice(s),
        None => out.extend(a.iter().copied()),
    });
    if float64.is_some() {
        // Read above.
    } else if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, f32>>() {
        out.extend(a.as_array().iter().map(|&v| f64::from(v)));
    } else if let Ok(l) = obj.cast::<PyList>() {
        out.extend(l.iter().map(|i| number(&i, flag)));
        return Some(());
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        out.extend(t.iter().map(|i| number(&i, flag)));
        return Some(());
    } else if let Ok(a) = obj.cast::<numpy::PyUntypedArray>() {
        if a.ndim() != 1 {
            return None;
        }
        // Other dtypes (ints, bools, float16): let numpy convert once.
        let f = obj
            .call_method1("astype", ("float64",))
            .ok()?
            .extract::<PyReadonlyArray1<'_, f64>>()
            .ok()?;
        out.extend(f.as_array().iter().copied());
    } else {
        return None;
    }
    for v in out.iter() {
        check(*v, flag);
    }
    Some(())
}

/// `str(obj)`, or a placeholder when even that fails.
pub fn to_str(obj: &Bound<'_, PyAny>) -> String {
    obj.str().map_or_else(
        |_| "<unprintable>".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    )
}
