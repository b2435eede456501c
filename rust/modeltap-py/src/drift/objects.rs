//! Category values from Python: dictionary-encoding object arrays (a
//! pandas object column), and the spelling and clipping of category values
//! shared with the agent.

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use rustc_hash::FxHashMap;

use crate::errors::guard;

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
pub(super) fn encode_objects(
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
