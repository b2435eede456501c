//! The `Span` pyclass: creating a span, starting it (its parent, its
//! sampling, making it current), ending it (recording it or holding it),
//! and its Python methods.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use modeltap_core::ids::{random_u128, random_u64};
use modeltap_core::pipeline::now_unix_nano;
use modeltap_core::record::Side;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::current::{
    context_of, current_object, current_var, PyContextVar_Reset, PyContextVar_Set,
};
use super::finished::Finished;
use super::hold::Kept;
use super::otel::{helpers, otel_loaded};
use super::SpanContext;
use crate::errors::guard;
use crate::parse::to_str;
use crate::recorder::single::error_parts;
use crate::recorder::{clip, Recorder, MAX_ATTRIBUTES, MAX_TEXT_BYTES};

/// Span kinds, OpenTelemetry's numbers.
const KINDS: [(&str, u8); 5] = [
    ("internal", 1),
    ("server", 2),
    ("client", 3),
    ("producer", 4),
    ("consumer", 5),
];

/// Span status: unset, ok, error (OpenTelemetry's numbers).
const STATUS_UNSET: u8 = 0;
const STATUS_OK: u8 = 1;
const STATUS_ERROR: u8 = 2;

/// `name` as a shared string, from a small cache of this thread's span
/// names (a span then needs no allocation for its name).
fn intern(name: &str) -> Arc<str> {
    thread_local! {
        static NAMES: std::cell::RefCell<std::collections::HashMap<Box<str>, Arc<str>>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    const MAX_CACHED: usize = 1024;
    NAMES.with(|cell| {
        let Ok(mut names) = cell.try_borrow_mut() else {
            return Arc::from(name);
        };
        if let Some(a) = names.get(name) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(name);
        if names.len() < MAX_CACHED {
            names.insert(Box::from(name), Arc::clone(&a));
        }
        a
    })
}

/// One stage of a request being timed: a context manager (`with`), a
/// decorator (`@`), or started and ended by hand (`start()` / `end()`).
#[pyclass(module = "modeltap._core")]
pub struct Span {
    rec: Py<Recorder>,
    name: Arc<str>,
    kind: u8,
    parent: Option<Py<SpanContext>>,
    pub(super) ctx: Option<SpanContext>,
    parent_span_id: u64,
    local_root: bool,
    start_unix_nano: u64,
    started: bool,
    token: Option<Py<PyAny>>,
    /// What the current-span variable held before this span (see `current`).
    pub(super) previous: Option<Py<PyAny>>,
    /// The address of this span's own object while it is started (only
    /// compared, never dereferenced).
    me: Option<usize>,
    /// Its recorder was already forwarded (to a forked child's) when it began.
    began_forwarded: bool,
    otel_token: Option<Py<PyAny>>,
    side: Option<Box<Side>>,
    status: u8,
    pub(super) ended: bool,
    initial: Option<Py<PyDict>>,
}

fn kind_code(kind: &str) -> PyResult<u8> {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|&(_, c)| c)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "kind must be one of internal, server, client, producer, consumer; not {kind:?}"
            ))
        })
}

impl Span {
    pub(crate) fn create(
        rec: Py<Recorder>,
        name: &str,
        kind: &str,
        attributes: Option<Bound<'_, PyDict>>,
        parent: Option<Py<SpanContext>>,
    ) -> PyResult<Self> {
        let kind = match kind_code(kind) {
            Ok(k) => k,
            Err(e) => {
                let r = rec.get().live();
                if r.strict {
                    return Err(e);
                }
                r.pipe.counters.errors.fetch_add(1, Ordering::Relaxed);
                1 // the caller's path goes on: an internal span
            }
        };
        Ok(Self {
            rec,
            name: if name.len() > MAX_TEXT_BYTES {
                Arc::from(clip(name.to_owned(), MAX_TEXT_BYTES))
            } else {
                intern(name)
            },
            kind,
            parent,
            ctx: None,
            parent_span_id: 0,
            local_root: true,
            start_unix_nano: 0,
            started: false,
            token: None,
            previous: None,
            me: None,
            began_forwarded: false,
            otel_token: None,
            side: None,
            status: STATUS_UNSET,
            ended: false,
            initial: attributes.map(Bound::unbind),
        })
    }

    /// A span used the wrong way: raised in strict mode, else counted as
    /// one of the agent's errors and logged (the caller's path goes on).
    fn misuse(&self, py: Python<'_>, msg: &str) -> PyResult<()> {
        let rec = self.rec.get().live();
        if rec.strict {
            return Err(PyValueError::new_err(msg.to_owned()));
        }
        rec.pipe.counters.errors.fetch_add(1, Ordering::Relaxed);
        rec.warn(py, &format!("modeltap: {msg}"));
        Ok(())
    }

    pub(crate) fn start_now(&mut self, py: Python<'_>, me: *mut ffi::PyObject) -> PyResult<()> {
        guard(|| self.begin(py, me))
    }

    fn recording(&self) -> bool {
        !self.ended
            && self
                .ctx
                .as_ref()
                .is_some_and(|c| c.sampled || c.kept.is_some())
    }

    fn attribute(&mut self, key: String, value: String) {
        let side = self.side.get_or_insert_with(Box::default);
        if let Some(slot) = side.attributes.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else if side.attributes.len() < MAX_ATTRIBUTES {
            side.attributes.push((key, value));
        }
    }

    /// Starts the span and makes it current: `me` is this span's object
    /// (the context variable holds it).
    fn begin(&mut self, py: Python<'_>, me: *mut ffi::PyObject) -> PyResult<()> {
        if self.ctx.is_some() {
            return self.misuse(
                py,
                &format!(
                    "span {:?} was already started; make a new one per use",
                    &*self.name
                ),
            );
        }
        self.began_forwarded = self.rec.get().forward.get().is_some();
        let rec = self.rec.get().live();
        // Read once: the variable's value now is both what this span
        // restores and where its parent comes from.
        let previous = current_object(py);
        let otel = otel_loaded(py);
        let parent: Option<SpanContext> = match &self.parent {
            Some(p) => Some(p.get().clone()),
            None => {
                let ours = previous.clone().and_then(context_of);
                // OpenTelemetry's current span is the parent when we have
                // none, or when it is a span of our trace started inside
                // ours (ours is OpenTelemetry's current one while it runs).
                let theirs = if otel {
                    helpers(py)?
                        .call_method0("_otel_parent")
                        .ok()
                        .and_then(|o| o.cast::<SpanContext>().ok().map(|c| c.get().clone()))
                } else {
                    None
                };
                match (ours, theirs) {
                    (Some(o), Some(t)) if t.trace_id == o.trace_id && t.span_id != o.span_id => {
                        Some(SpanContext {
                            trace_id: t.trace_id,
                            span_id: t.span_id,
                            sampled: o.sampled,
                            remote: false,
                            trace_state: o.trace_state,
                            kept: o.kept,
                        })
                    }
                    (Some(o), _) => Some(o),
                    (None, t) => t,
                }
            }
        };
        self.previous = previous.map(Bound::unbind);
        let span_id = random_u64();
        let ctx = match parent {
            Some(p) => {
                self.parent_span_id = p.span_id;
                self.local_root = p.remote;
                let kept = if p.sampled {
                    None
                } else {
                    p.kept.or_else(|| Some(Kept::new(&rec.holds)))
                };
                SpanContext {
                    trace_id: p.trace_id,
                    span_id,
                    sampled: p.sampled,
                    remote: false,
                    trace_state: p.trace_state,
                    kept,
                }
            }
            None => {
                let rate = rec.trace_sample_rate;
                #[allow(clippy::cast_precision_loss)]
                let sampled =
                    rate >= 1.0 || (random_u64() as f64) < rate * 18_446_744_073_709_551_616.0;
                SpanContext {
                    trace_id: random_u128(),
                    span_id,
                    sampled,
                    remote: false,
                    trace_state: None,
                    kept: (!sampled).then(|| Kept::new(&rec.holds)),
                }
            }
        };
        let var = current_var(py);
        // SAFETY: `var` is a live ContextVar and `me` this span's live
        // object; the returned token is a new reference (NULL with an
        // exception set on failure).
        let token = unsafe { PyContextVar_Set(var.as_ptr(), me) };
        if token.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: non-NULL new reference.
        self.token = Some(unsafe { Py::from_owned_ptr(py, token) });
        self.me = Some(me as usize);
        if otel {
            self.otel_token = helpers(py)?
                .call_method1("_otel_attach", (ctx.clone(),))
                .ok()
                .filter(|t| !t.is_none())
                .map(Bound::unbind);
        }
        self.ctx = Some(ctx);
        if let Some(attrs) = self.initial.take() {
            for (k, v) in attrs.bind(py).iter() {
                self.attribute(
                    clip(to_str(&k), MAX_TEXT_BYTES),
                    clip(to_str(&v), MAX_TEXT_BYTES),
                );
            }
        }
        self.start_unix_nano = now_unix_nano();
        self.started = true;
        Ok(())
    }

    fn finish(&mut self, py: Python<'_>, error: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        if self.ended {
            return Ok(());
        }
        if !self.started {
            return self.misuse(py, &format!("span {:?} was never started", &*self.name));
        }
        // Wall-clock start and end, as OpenTelemetry takes them (a clock
        // stepped back mid-span gives 0, never a wrapped duration).
        let duration = now_unix_nano().saturating_sub(self.start_unix_nano);
        self.ended = true;
        if let Some(token) = self.token.take() {
            // Only while this span is the current one: ending it out of
            // order, or in another thread or task, leaves the variable as
            // it is (an ended span there reads as the one before it).
            let me = self.me.take();
            let is_current = current_object(py).is_some_and(|o| Some(o.as_ptr() as usize) == me);
            if is_current {
                // SAFETY: both are live objects; a token of another
                // context makes Reset fail with an exception, cleared.
                let rc = unsafe { PyContextVar_Reset(current_var(py).as_ptr(), token.as_ptr()) };
                if rc < 0 {
                    drop(PyErr::take(py));
                }
            }
        }
        if let Some(t) = self.otel_token.take() {
            let _ = helpers(py).and_then(|h| h.call_method1("_otel_detach", (t,)));
        }
        if let Some(e) = error.filter(|e| !e.is_none()) {
            let (ty, msg) = error_parts(e);
            self.side.get_or_insert_with(Box::default).error =
                Some((clip(ty, MAX_TEXT_BYTES), clip(msg, MAX_TEXT_BYTES)));
            self.status = STATUS_ERROR;
        }
        let Some(ctx) = self.ctx.as_ref() else {
            return Ok(());
        };
        let mut side = self.side.take();
        if let Some(ts) = ctx.trace_state.as_ref() {
            side.get_or_insert_with(Box::default).trace_state = Some(ts.to_string());
        }
        let done = Finished {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent: self.parent_span_id,
            start_unix_nano: self.start_unix_nano,
            duration_nano: duration,
            status: self.status,
            kind: self.kind,
            root: self.local_root,
            name: Arc::clone(&self.name),
            side,
        };
        // A span begun before fork() and ended in the child is the
        // parent's to record (it ends there too).
        if !self.began_forwarded && self.rec.get().forward.get().is_some() {
            return Ok(());
        }
        let rec = self.rec.get().live();
        match &ctx.kept {
            None => done.push(rec),
            Some(kept) => {
                let errored = self.status == STATUS_ERROR;
                let mut held = kept.lock();
                if errored && !kept.errored.swap(true, Ordering::AcqRel) {
                    kept.stop_holding();
                    for f in kept.take(&mut held) {
                        f.push(rec);
                    }
                }
                if kept.errored.load(Ordering::Acquire) {
                    drop(held);
                    done.push(rec);
                } else if self.local_root {
                    // The trace ends here without an error: let it go.
                    kept.stop_holding();
                    let gone = kept.take(&mut held).len() as u64 + 1;
                    rec.holds.sampled_out.fetch_add(gone, Ordering::Relaxed);
                } else {
                    kept.hold(&mut held, done);
                }
            }
        }
        Ok(())
    }
}

#[pymethods]
impl Span {
    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyResult<PyRefMut<'_, Self>> {
        let py = slf.py();
        let me = slf.as_ptr();
        guard(|| slf.begin(py, me))?;
        Ok(slf)
    }

    #[pyo3(signature = (_exc_type=None, exc=None, _tb=None))]
    fn __exit__(
        &mut self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        guard(|| self.finish(py, exc))?;
        Ok(false)
    }

    /// Starts the span by hand (and makes it current); end it with `end()`.
    fn start(mut slf: PyRefMut<'_, Self>) -> PyResult<PyRefMut<'_, Self>> {
        let py = slf.py();
        let me = slf.as_ptr();
        guard(|| slf.begin(py, me))?;
        Ok(slf)
    }

    /// Ends the span, with `error` (an exception) marking it failed.
    #[pyo3(signature = (error=None))]
    fn end(&mut self, py: Python<'_>, error: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        guard(|| self.finish(py, error))
    }

    /// Sets an attribute (key and value kept as text, 64 per span).
    fn set_attribute(&mut self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) {
        if self.recording() || self.ctx.is_none() {
            self.attribute(
                clip(to_str(key), MAX_TEXT_BYTES),
                clip(to_str(value), MAX_TEXT_BYTES),
            );
        }
    }

    /// Keeps what came into this stage (the agent's `capture_bytes` cap
    /// and `redact` hook apply) as the `modeltap.input` attribute.
    fn set_input(&mut self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.capture(py, "input", value)
    }

    /// Keeps what this stage produced, as the `modeltap.output` attribute.
    fn set_output(&mut self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.capture(py, "output", value)
    }

    /// Sets the status: `ok=True` (ok) or `ok=False` (error) with an
    /// optional description.
    #[pyo3(signature = (ok, description=None))]
    fn set_status(&mut self, ok: &Bound<'_, PyAny>, description: Option<&Bound<'_, PyAny>>) {
        let ok = ok.is_truthy().unwrap_or(false);
        self.status = if ok { STATUS_OK } else { STATUS_ERROR };
        if let (false, Some(d)) = (ok, description.filter(|d| !d.is_none())) {
            let side = self.side.get_or_insert_with(Box::default);
            if side.error.is_none() {
                side.error = Some((String::new(), clip(to_str(d), MAX_TEXT_BYTES)));
            }
        }
    }

    /// Marks the span failed with `exc` (type and message kept).
    fn record_exception(&mut self, exc: &Bound<'_, PyAny>) {
        let (ty, msg) = error_parts(exc);
        self.side.get_or_insert_with(Box::default).error =
            Some((clip(ty, MAX_TEXT_BYTES), clip(msg, MAX_TEXT_BYTES)));
        self.status = STATUS_ERROR;
    }

    /// The span's context (None before it started).
    #[getter]
    fn context(&self) -> Option<SpanContext> {
        self.ctx.clone()
    }

    /// The span's name.
    #[getter]
    fn name(&self) -> String {
        self.name.to_string()
    }

    /// Used as a decorator: each call of `fn` (sync or `async def`) runs
    /// in a new span of this name, kind and attributes.
    fn __call__(&self, py: Python<'_>, func: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let kind = KINDS
            .iter()
            .find(|(_, c)| *c == self.kind)
            .map_or("internal", |(k, _)| *k);
        let attrs = self.initial.as_ref().map(|a| a.clone_ref(py));
        Ok(helpers(py)?
            .call_method1(
                "_decorate",
                (self.rec.clone_ref(py), &*self.name, kind, attrs, func),
            )?
            .unbind())
    }
}

impl Span {
    fn capture(&mut self, py: Python<'_>, which: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.recording() {
            return Ok(());
        }
        let rec = self.rec.get().live();
        let Some(hook) = rec.capture.get() else {
            return Ok(());
        };
        // The hook never raises into the caller's stage (it counts its own
        // failures); a failure here is counted as the agent's error.
        match hook.bind(py).call1((&*self.name, which, value)) {
            Ok(text) if !text.is_none() => {
                self.attribute(format!("modeltap.{which}"), to_str(&text));
            }
            Ok(_) => {}
            Err(e) => {
                rec.pipe.counters.errors.fetch_add(1, Ordering::Relaxed);
                if rec.strict {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
