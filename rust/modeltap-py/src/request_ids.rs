//! `RequestIds`: the request ids `log_batch` returns, kept as 16-byte ids
//! (or the caller's own strings) and spelled as hex strings only when read,
//! so a million-row batch does not build a million Python strings nobody
//! asked for.

use modeltap_core::ids::hex_u128;
use pyo3::exceptions::{PyIndexError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PySlice, PyString};

enum Ids {
    /// Generated: 32 hex digits each when read.
    Generated(Vec<u128>),
    /// Given by the caller (already clipped).
    Given(Vec<String>),
}

/// The request ids of a `log_batch` call, in row order: a read-only
/// sequence of `str` (indexing, slicing, iteration, `len`, `in`, `==` with
/// any sequence of strings). Each id is spelled as a Python string only
/// when read; `tolist()` gives them all at once.
#[pyclass(module = "modeltap._core", frozen, sequence)]
pub struct RequestIds {
    ids: Ids,
}

impl RequestIds {
    pub fn generated(ids: Vec<u128>) -> Self {
        Self {
            ids: Ids::Generated(ids),
        }
    }

    pub fn given(ids: Vec<String>) -> Self {
        Self {
            ids: Ids::Given(ids),
        }
    }

    fn len(&self) -> usize {
        match &self.ids {
            Ids::Generated(v) => v.len(),
            Ids::Given(v) => v.len(),
        }
    }

    fn get<'py>(&self, py: Python<'py>, i: usize) -> Bound<'py, PyString> {
        match &self.ids {
            Ids::Generated(v) => {
                let mut buf = [0u8; 32];
                hex_u128(v[i], &mut buf);
                // Hex digits are ASCII, hence valid UTF-8.
                PyString::new(py, std::str::from_utf8(&buf).unwrap_or_default())
            }
            Ids::Given(v) => PyString::new(py, &v[i]),
        }
    }

    /// The ids as label request ids, without spelling generated ones.
    pub(crate) fn label_ids(&self) -> Vec<Result<crate::labels::LabelId, String>> {
        match &self.ids {
            Ids::Generated(v) => v
                .iter()
                .map(|&id| Ok(crate::labels::LabelId::Hex(id)))
                .collect(),
            Ids::Given(v) => v.iter().map(|s| crate::labels::label_id_str(s)).collect(),
        }
    }

    /// Whether id `i` is spelled `s`, without building a Python string.
    fn is(&self, i: usize, s: &str) -> bool {
        match &self.ids {
            Ids::Generated(v) => {
                let mut buf = [0u8; 32];
                hex_u128(v[i], &mut buf);
                buf == s.as_bytes()
            }
            Ids::Given(v) => v[i] == s,
        }
    }
}

#[pymethods]
impl RequestIds {
    /// Ids from strings (an empty sequence by default).
    #[new]
    #[pyo3(signature = (ids=None))]
    fn new(ids: Option<Vec<String>>) -> Self {
        Self::given(ids.unwrap_or_default())
    }

    /// The ids of several calls, in order, as one `RequestIds`.
    #[staticmethod]
    fn join(parts: Vec<PyRef<'_, RequestIds>>) -> Self {
        if parts.iter().all(|p| matches!(p.ids, Ids::Generated(_))) {
            let mut all = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
            for p in &parts {
                if let Ids::Generated(v) = &p.ids {
                    all.extend_from_slice(v);
                }
            }
            return Self::generated(all);
        }
        let mut all = Vec::new();
        for p in &parts {
            match &p.ids {
                Ids::Generated(v) => all.extend(v.iter().map(|&id| {
                    let mut buf = [0u8; 32];
                    hex_u128(id, &mut buf);
                    String::from_utf8_lossy(&buf).into_owned()
                })),
                Ids::Given(v) => all.extend(v.iter().cloned()),
            }
        }
        Self::given(all)
    }

    fn __len__(&self) -> usize {
        self.len()
    }

    fn __bool__(&self) -> bool {
        self.len() > 0
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = self.len();
        if let Ok(slice) = index.cast::<PySlice>() {
            let ind = slice.indices(isize::try_from(n).unwrap_or(isize::MAX))?;
            let mut out = Vec::with_capacity(ind.slicelength);
            for k in 0..ind.slicelength {
                // Within 0..n by construction of `indices`; computed wide so
                // a huge step cannot overflow past the last element.
                let i = i128::from(ind.start as i64) + (k as i128) * i128::from(ind.step as i64);
                out.push(self.get(py, usize::try_from(i).unwrap_or(0)));
            }
            return Ok(PyList::new(py, out)?.into_any());
        }
        if !index.is_instance_of::<pyo3::types::PyInt>() && !index.hasattr("__index__")? {
            return Err(PyTypeError::new_err(
                "request ids are indexed by integers or slices",
            ));
        }
        let Ok(i) = index.extract::<isize>() else {
            return Err(PyIndexError::new_err("request id index out of range"));
        };
        let n_signed = isize::try_from(n).unwrap_or(isize::MAX);
        let j = if i < 0 { i + n_signed } else { i };
        if j < 0 || j >= n_signed {
            return Err(PyIndexError::new_err("request id index out of range"));
        }
        Ok(self.get(py, j.unsigned_abs()).into_any())
    }

    fn __iter__(slf: Bound<'_, Self>) -> RequestIdsIter {
        RequestIdsIter {
            ids: slf.unbind(),
            next: 0,
        }
    }

    fn __contains__(&self, item: &Bound<'_, PyAny>) -> bool {
        let Ok(s) = item.extract::<&str>() else {
            return false;
        };
        (0..self.len()).any(|i| self.is(i, s))
    }

    /// Equal to a list, a tuple or another `RequestIds` of the same strings
    /// in the same order (as a list would be).
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        let seq = other.is_instance_of::<PyList>()
            || other.is_instance_of::<pyo3::types::PyTuple>()
            || other.is_instance_of::<RequestIds>();
        if !seq {
            return false;
        }
        let Ok(it) = other.try_iter() else {
            return false;
        };
        let mut seen = 0;
        for item in it {
            let Ok(item) = item else {
                return false;
            };
            let Ok(s) = item.extract::<&str>() else {
                return false;
            };
            if seen >= self.len() || !self.is(seen, s) {
                return false;
            }
            seen += 1;
        }
        seen == self.len()
    }

    /// The position of the first id equal to `value` (`ValueError` if none).
    fn index(&self, value: &Bound<'_, PyAny>) -> PyResult<usize> {
        if let Ok(s) = value.extract::<&str>() {
            if let Some(i) = (0..self.len()).find(|&i| self.is(i, s)) {
                return Ok(i);
            }
        }
        Err(pyo3::exceptions::PyValueError::new_err(
            "not among these request ids",
        ))
    }

    /// How many ids equal `value`.
    fn count(&self, value: &Bound<'_, PyAny>) -> usize {
        value
            .extract::<&str>()
            .map_or(0, |s| (0..self.len()).filter(|&i| self.is(i, s)).count())
    }

    /// Pickles (and copies) as the list of strings it holds.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyList>,))> {
        let py = slf.py();
        let cls = py.get_type::<RequestIds>().into_any();
        Ok((cls, (slf.get().tolist(py)?,)))
    }

    /// `ids + other`: a `list[str]` of both (as a list would give).
    fn __add__<'py>(
        &self,
        py: Python<'py>,
        other: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        if !(other.is_instance_of::<PyList>() || other.is_instance_of::<RequestIds>()) {
            return Err(PyTypeError::new_err(
                "request ids concatenate with a list or RequestIds",
            ));
        }
        let out = self.tolist(py)?;
        for item in other.try_iter()? {
            out.append(item?)?;
        }
        Ok(out)
    }

    /// `other + ids`: a `list[str]` of both.
    fn __radd__<'py>(
        &self,
        py: Python<'py>,
        other: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        if !other.is_instance_of::<PyList>() {
            return Err(PyTypeError::new_err(
                "request ids concatenate with a list or RequestIds",
            ));
        }
        let out = PyList::empty(py);
        for item in other.try_iter()? {
            out.append(item?)?;
        }
        for i in 0..self.len() {
            out.append(self.get(py, i))?;
        }
        Ok(out)
    }

    /// Every id as a `list[str]`.
    fn tolist<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, (0..self.len()).map(|i| self.get(py, i)))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let n = self.len();
        let head: Vec<String> = (0..n.min(3))
            .map(|i| format!("'{}'", self.get(py, i).to_string_lossy()))
            .collect();
        let more = if n > 3 { ", ..." } else { "" };
        format!("RequestIds({n}: [{}{more}])", head.join(", "))
    }
}

/// Iterates over a `RequestIds`.
#[pyclass(module = "modeltap._core")]
pub struct RequestIdsIter {
    ids: Py<RequestIds>,
    next: usize,
}

#[pymethods]
impl RequestIdsIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        let ids = self.ids.get();
        if self.next >= ids.len() {
            return None;
        }
        let s = ids.get(py, self.next);
        self.next += 1;
        Some(s)
    }
}
