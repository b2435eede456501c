//! `SpanContext`: a W3C trace context (trace id, span id, sampled flag,
//! `tracestate`), read from ids or hex strings and written as `traceparent`.

use std::sync::Arc;

use modeltap_core::ids::hex_u128;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};

use super::hold::Kept;

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

/// A W3C trace context: the trace and span a new span continues.
#[pyclass(frozen, module = "modeltap._core")]
#[derive(Clone)]
pub struct SpanContext {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) sampled: bool,
    pub(crate) remote: bool,
    pub(crate) trace_state: Option<Arc<str>>,
    pub(super) kept: Option<Arc<Kept>>,
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
