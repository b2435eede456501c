//! Spans: the stages of a request (`Agent.span`), recorded natively into
//! the same ring as records (`SlotKind::Span`), no Python object kept once
//! a span ended.
//!
//! The current span lives in one `contextvars.ContextVar` (threads and
//! asyncio tasks each see their own), read and set through the C API. Its
//! value is the current [`Span`] itself, whose [`SpanContext`] holds the
//! W3C trace id, span id, sampled flag and `tracestate`. A record logged
//! inside a span carries that span's ids.
//!
//! Head sampling: a trace's first local span decides (`trace_sample_rate`),
//! or follows the sampled flag of a remote parent. The spans of a trace not
//! sampled are held (at most [`MAX_KEPT_SPANS`] a trace, within the
//! recorder's [`HoldBudget`]: a sixteenth of `buffer_bytes` and
//! [`MAX_HELD_TRACES`] traces) until its local root ends: should any of
//! them end in an exception, what is held of the trace is recorded. Spans
//! let go early for want of room are counted in `spans_released`, those of
//! traces that ended without an error in `spans_sampled_out`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use modeltap_core::ids::{hex_u128, random_u128, random_u64};
use modeltap_core::pipeline::now_unix_nano;
use modeltap_core::record::{Side, Slot, SlotKind};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyInt, PyString};

use super::single::error_parts;
use super::{clip, Recorder, MAX_ATTRIBUTES, MAX_TEXT_BYTES};
use crate::errors::guard;
use crate::parse::to_str;

/// Spans of a trace not sampled held until its root ends (in case one
/// ends in an exception); past that the oldest are let go.
pub(crate) const MAX_KEPT_SPANS: usize = 256;
/// Longest `tracestate` propagated: W3C asks for at least 512 characters,
/// and for whole members to go when it must be shortened (see
/// [`limit_trace_state`]).
const MAX_TRACE_STATE_BYTES: usize = 512;
/// Members longer than this go first when a `tracestate` is shortened.
const LONG_TRACE_STATE_MEMBER: usize = 128;

/// `tracestate` cut to [`MAX_TRACE_STATE_BYTES`] the way W3C Trace Context
/// says: whole members only, those over 128 characters first, then from
/// the end; never a byte of a member. None when nothing remains, or when
/// it holds anything but printable ASCII (it goes into a header).
fn limit_trace_state(s: &str) -> Option<String> {
    if s.bytes().any(|b| !(0x20..=0x7e).contains(&b)) {
        return None;
    }
    let mut members: Vec<&str> = s
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .collect();
    let size = |m: &[&str]| m.iter().map(|x| x.len()).sum::<usize>() + m.len().saturating_sub(1);
    if size(&members) > MAX_TRACE_STATE_BYTES {
        members.retain(|m| m.len() <= LONG_TRACE_STATE_MEMBER);
    }
    while size(&members) > MAX_TRACE_STATE_BYTES {
        members.pop();
    }
    (!members.is_empty()).then(|| members.join(","))
}

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
    fn PyContextVar_Set(var: *mut ffi::PyObject, value: *mut ffi::PyObject) -> *mut ffi::PyObject;
    fn PyContextVar_Reset(var: *mut ffi::PyObject, token: *mut ffi::PyObject) -> std::ffi::c_int;
}

static CURRENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static HELPERS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

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

/// `modeltap.tracing` (the Python half: decorators, capture, OpenTelemetry).
fn helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    HELPERS
        .get_or_try_init(py, || {
            py.import("modeltap.tracing").map(|m| m.into_any().unbind())
        })
        .map(|m| m.bind(py))
}

/// The current span's context, if any. The variable holds the current
/// `Span` itself (no object of its own per span), or a `SpanContext`.
pub(crate) fn current(py: Python<'_>) -> Option<SpanContext> {
    context_of(current_object(py)?)
}

/// The context `obj` (a value of the current-span variable) stands for.
fn context_of(mut obj: Bound<'_, PyAny>) -> Option<SpanContext> {
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
fn current_object(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
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

/// Whether `opentelemetry.trace` was imported (then its current span is a
/// parent, and ours is made its current span's context).
fn otel_loaded(py: Python<'_>) -> bool {
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

/// Traces not sampled whose spans may be held at once (see [`HoldBudget`]);
/// the spans of traces begun past it are let go as they end.
pub(crate) const MAX_HELD_TRACES: usize = 1024;

/// What the held spans of traces not sampled may take in one recorder.
pub(crate) struct HoldBudget {
    max_bytes: usize,
    bytes: AtomicUsize,
    traces: AtomicUsize,
    /// Spans of traces not sampled that ended without an error.
    pub(crate) sampled_out: AtomicU64,
    /// Spans of traces not sampled let go before their trace ended, for
    /// want of room (per trace, bytes, traces held).
    pub(crate) released: AtomicU64,
}

impl HoldBudget {
    pub(crate) fn new(buffer_bytes: usize) -> Self {
        Self {
            max_bytes: buffer_bytes / 16,
            bytes: AtomicUsize::new(0),
            traces: AtomicUsize::new(0),
            sampled_out: AtomicU64::new(0),
            released: AtomicU64::new(0),
        }
    }

    /// Bytes held now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Traces holding spans now.
    pub(crate) fn traces(&self) -> usize {
        self.traces.load(Ordering::Acquire)
    }

    fn charge(&self, n: usize) -> bool {
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.max_bytes {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A trace not sampled: its finished spans, held until its root ends.
pub(crate) struct Kept {
    errored: AtomicBool,
    spans: Mutex<Held>,
    budget: Arc<HoldBudget>,
    /// Counted in `budget.traces` (room was left when the trace began)
    /// until its local root ends: only meanwhile are its spans held.
    holds: AtomicBool,
}

#[derive(Default)]
struct Held {
    spans: std::collections::VecDeque<Finished>,
    bytes: usize,
}

impl Kept {
    fn new(budget: &Arc<HoldBudget>) -> Arc<Self> {
        let holds = budget
            .traces
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_HELD_TRACES).then_some(n + 1)
            })
            .is_ok();
        Arc::new(Self {
            errored: AtomicBool::new(false),
            spans: Mutex::new(Held::default()),
            budget: Arc::clone(budget),
            holds: AtomicBool::new(holds),
        })
    }

    /// The trace no longer holds spans (its root ended, or it failed and
    /// records every span from now on): its place is given back.
    fn stop_holding(&self) {
        if self.holds.swap(false, Ordering::AcqRel) {
            self.budget.traces.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `done`, letting go of this trace's oldest spans (or of `done`)
    /// when the trace or the budget has no room.
    fn hold(&self, held: &mut Held, done: Finished) {
        let released = &self.budget.released;
        if !self.holds.load(Ordering::Acquire) {
            released.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = done.held_bytes();
        loop {
            if held.spans.len() < MAX_KEPT_SPANS && self.budget.charge(n) {
                held.bytes += n;
                held.spans.push_back(done);
                return;
            }
            let Some(old) = held.spans.pop_front() else {
                released.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let b = old.held_bytes();
            held.bytes -= b;
            self.budget.release(b);
            released.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes every held span out (its bytes given back).
    fn take(&self, held: &mut Held) -> std::collections::VecDeque<Finished> {
        self.budget.release(std::mem::take(&mut held.bytes));
        std::mem::take(&mut held.spans)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // A trace whose root never ended here (ended elsewhere, or never):
        // what it still holds is let go.
        let held = self
            .spans
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.budget.release(std::mem::take(&mut held.bytes));
        let left = held.spans.len() as u64;
        if left > 0 {
            self.budget.released.fetch_add(left, Ordering::Relaxed);
        }
        self.stop_holding();
    }
}

/// An ended span, as the ring takes it.
struct Finished {
    trace_id: u128,
    span_id: u64,
    parent: u64,
    start_unix_nano: u64,
    duration_nano: u64,
    status: u8,
    kind: u8,
    /// The span began its trace in this process (no parent, or a remote one).
    root: bool,
    name: Arc<str>,
    side: Option<Box<Side>>,
}

impl Finished {
    /// What holding this span takes (its side box and itself).
    fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.side.as_ref().map_or(0, |s| s.heap_bytes())
    }

    fn push(self, rec: &Recorder) {
        let side_bytes = self.side.as_ref().map_or(0, |s| s.heap_bytes());
        let mut side = self.side;
        let mut name = Some(self.name);
        rec.pipe.push_span(side_bytes, |slot: &mut Slot| {
            slot.kind = SlotKind::Span;
            slot.unix_nano = self.start_unix_nano;
            slot.request_id = 0;
            slot.trace_id = self.trace_id;
            slot.span_id = self.span_id;
            slot.parent_span_id = self.parent;
            #[allow(clippy::cast_precision_loss)]
            {
                slot.latency_s = self.duration_nano as f64;
            }
            slot.flags = u32::from(self.root);
            slot.n_outputs = 0;
            slot.n_probabilities = 0;
            slot.status = self.status;
            slot.span_kind = self.kind;
            slot.span_name = name.take();
            slot.side = side.take();
        });
    }
}

/// A W3C trace context: the trace and span a new span continues.
#[pyclass(frozen, module = "modeltap._core")]
#[derive(Clone)]
pub struct SpanContext {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) sampled: bool,
    pub(crate) remote: bool,
    pub(crate) trace_state: Option<Arc<str>>,
    kept: Option<Arc<Kept>>,
}

fn id_arg(obj: &Bound<'_, PyAny>, what: &str, hex_len: usize) -> PyResult<u128> {
    let bad = || PyValueError::new_err(format!("{what} must be a non-zero id"));
    let v = if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_str()?;
        if s.len() != hex_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PyValueError::new_err(format!(
                "{what} must be {hex_len} hex digits, not {s:?}"
            )));
        }
        u128::from_str_radix(s, 16).map_err(|_| bad())?
    } else if obj.is_instance_of::<PyInt>() {
        obj.extract::<u128>().map_err(|_| bad())?
    } else {
        return Err(PyTypeError::new_err(format!(
            "{what} must be an int or a hex string"
        )));
    };
    if v == 0 || (hex_len == 16 && v > u128::from(u64::MAX)) {
        return Err(bad());
    }
    Ok(v)
}

#[pymethods]
impl SpanContext {
    /// A context to continue: `trace_id` (16 bytes) and `span_id` (8 bytes)
    /// as ints or hex strings, neither zero.
    #[new]
    #[pyo3(signature = (trace_id, span_id, sampled=true, *, remote=true, trace_state=None))]
    fn new(
        trace_id: &Bound<'_, PyAny>,
        span_id: &Bound<'_, PyAny>,
        sampled: bool,
        remote: bool,
        trace_state: Option<String>,
    ) -> PyResult<Self> {
        let trace_id = id_arg(trace_id, "trace_id", 32)?;
        #[allow(clippy::cast_possible_truncation)]
        let span_id = id_arg(span_id, "span_id", 16)? as u64;
        Ok(Self {
            trace_id,
            span_id,
            sampled,
            remote,
            trace_state: trace_state
                .as_deref()
                .and_then(limit_trace_state)
                .map(Arc::from),
            kept: None,
        })
    }

    /// The trace id (int).
    #[getter]
    fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The span id (int).
    #[getter]
    fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The trace id as 32 lowercase hex digits.
    #[getter]
    fn trace_id_hex(&self) -> String {
        modeltap_core::ids::hex_string(self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    #[getter]
    fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// Whether the trace is recorded.
    #[getter]
    fn sampled(&self) -> bool {
        self.sampled
    }

    /// Whether the context came from another process (a header).
    #[getter]
    fn is_remote(&self) -> bool {
        self.remote
    }

    /// The W3C `tracestate` carried along, if any.
    #[getter]
    fn trace_state(&self) -> Option<String> {
        self.trace_state.as_deref().map(str::to_owned)
    }

    /// The W3C `traceparent` header value of this context.
    fn traceparent(&self) -> String {
        let mut t = [0u8; 32];
        hex_u128(self.trace_id, &mut t);
        format!(
            "00-{}-{:016x}-{:02x}",
            std::str::from_utf8(&t).unwrap_or_default(),
            self.span_id,
            u8::from(self.sampled)
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "SpanContext(trace_id='{}', span_id='{}', sampled={}, remote={})",
            self.trace_id_hex(),
            self.span_id_hex(),
            if self.sampled { "True" } else { "False" },
            if self.remote { "True" } else { "False" }
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<SpanContext>().is_ok_and(|o| {
            let o = o.get();
            o.trace_id == self.trace_id
                && o.span_id == self.span_id
                && o.sampled == self.sampled
                && o.trace_state == self.trace_state
        })
    }

    fn __hash__(&self) -> u64 {
        #[allow(clippy::cast_possible_truncation)]
        let t = self.trace_id as u64 ^ (self.trace_id >> 64) as u64;
        t ^ self.span_id
    }
}

/// One stage of a request being timed: a context manager (`with`), a
/// decorator (`@`), or started and ended by hand (`start()` / `end()`).
#[pyclass(module = "modeltap._core")]
pub struct Span {
    rec: Py<Recorder>,
    name: Arc<str>,
    kind: u8,
    parent: Option<Py<SpanContext>>,
    ctx: Option<SpanContext>,
    parent_span_id: u64,
    local_root: bool,
    start_unix_nano: u64,
    started: bool,
    token: Option<Py<PyAny>>,
    /// What the current-span variable held before this span (see `current`).
    previous: Option<Py<PyAny>>,
    /// The address of this span's own object while it is started (only
    /// compared, never dereferenced).
    me: Option<usize>,
    /// Its recorder was already forwarded (to a forked child's) when it began.
    began_forwarded: bool,
    otel_token: Option<Py<PyAny>>,
    side: Option<Box<Side>>,
    status: u8,
    ended: bool,
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
