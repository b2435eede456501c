//! The Python half of tracing (`modeltap.tracing`) and whether
//! OpenTelemetry is loaded.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

static HELPERS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `modeltap.tracing` (the Python half: decorators, capture, OpenTelemetry).
pub(super) fn helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    HELPERS
        .get_or_try_init(py, || {
            py.import("modeltap.tracing").map(|m| m.into_any().unbind())
        })
        .map(|m| m.bind(py))
}

/// Whether `opentelemetry.trace` was imported (then its current span is a
/// parent, and ours is made its current span's context).
pub(super) fn otel_loaded(py: Python<'_>) -> bool {
    static KEY: PyOnceLock<Py<PyString>> = PyOnceLock::new();
    let key = KEY.get_or_init(py, || PyString::intern(py, "opentelemetry.trace").unbind());
    // SAFETY: returns a borrowed reference to sys.modules (or NULL).
    let modules = unsafe { ffi::PyImport_GetModuleDict() };
    if modules.is_null() {
        return false;
    }
    // SAFETY: `modules` is a dict and `key` a live str (its hash cached);
    // the result is borrowed, NULL when absent (no exception set).
    let m = unsafe { ffi::PyDict_GetItem(modules, key.as_ptr()) };
    !m.is_null()
}
