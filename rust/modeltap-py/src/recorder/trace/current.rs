//! The current span: one `contextvars.ContextVar`, read and set through
//! the C API.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use super::{Span, SpanContext};

// The context-variable C API (PEP 567). Not in the limited API's headers,
// but exported with these signatures by every CPython since 3.7; it is what
// `contextvars.ContextVar.get/set/reset` call, without a method call each.
extern "C" {
    fn PyContextVar_New(
        name: *const std::ffi::c_char,
        def: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
    fn PyContextVar_Get(
        var: *mut ffi::PyObject,
        default_value: *mut ffi::PyObject,
        value: *mut *mut ffi::PyObject,
    ) -> std::ffi::c_int;
    pub(super) fn PyContextVar_Set(
        var: *mut ffi::PyObject,
        value: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
    pub(super) fn PyContextVar_Reset(
        var: *mut ffi::PyObject,
        token: *mut ffi::PyObject,
    ) -> std::ffi::c_int;
}

static CURRENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The `ContextVar` holding the current span's context.
pub(crate) fn current_var(py: Python<'_>) -> &Bound<'_, PyAny> {
    CURRENT
        .get_or_init(py, || {
            // SAFETY: a NUL-terminated name and no default; the new
            // reference is owned by the returned `Py` (NULL only on memory
            // exhaustion, which `from_owned_ptr` would turn into a panic
            // caught by `guard`).
            unsafe {
                Py::from_owned_ptr(
                    py,
                    PyContextVar_New(c"modeltap_current_span".as_ptr(), std::ptr::null_mut()),
                )
            }
        })
        .bind(py)
}

/// The current span's context, if any. The variable holds the current
/// `Span` itself (no object of its own per span), or a `SpanContext`.
pub(crate) fn current(py: Python<'_>) -> Option<SpanContext> {
    context_of(current_object(py)?)
}

/// The context `obj` (a value of the current-span variable) stands for.
pub(super) fn context_of(mut obj: Bound<'_, PyAny>) -> Option<SpanContext> {
    let py = obj.py();
    // An ended span left current (ended in another thread or task, or out
    // of order) stands for the one that was current before it.
    for _ in 0..MAX_DEPTH {
        if let Ok(span) = obj.cast::<Span>() {
            // A span busy in a call of its own (a capture hook that opened
            // a span) reads as none: the new span starts a trace of its own.
            let s = span.try_borrow().ok()?;
            if !s.ended {
                return s.ctx.clone();
            }
            let prev = s.previous.as_ref()?.bind(py).clone();
            drop(s);
            obj = prev;
            continue;
        }
        return obj.cast::<SpanContext>().ok().map(|c| c.get().clone());
    }
    None
}

/// Ended spans looked through before giving up (nesting depth).
const MAX_DEPTH: usize = 256;

/// The object the current-span variable holds, if any.
pub(super) fn current_object(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    let var = current_var(py);
    let mut out: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: `var` is a live ContextVar; `out` receives a new reference
    // or stays NULL when the variable has no value in this context.
    let rc = unsafe { PyContextVar_Get(var.as_ptr(), std::ptr::null_mut(), &mut out) };
    if rc < 0 {
        drop(PyErr::take(py));
        return None;
    }
    if out.is_null() {
        return None;
    }
    // SAFETY: `out` is a new, non-NULL reference handed to us.
    Some(unsafe { Bound::from_owned_ptr(py, out) })
}

/// The ids a record logged now carries: the current span's.
pub(crate) fn current_ids(py: Python<'_>) -> (u128, u64) {
    current(py).map_or((0, 0), |c| (c.trace_id, c.span_id))
}
