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
//!
//! One file per concern: `span` (the `Span` pyclass, its start and end),
//! `context` (`SpanContext`: W3C ids, `traceparent`, `tracestate`),
//! `current` (the current-span context variable, through the C API),
//! `otel` (the Python half in `modeltap.tracing`, and whether OpenTelemetry
//! is loaded), `hold` (the spans held of traces not sampled: `HoldBudget`,
//! `Kept`) and `finished` (an ended span, pushed into the ring).
//!
//! [`MAX_KEPT_SPANS`]: hold::MAX_KEPT_SPANS
//! [`MAX_HELD_TRACES`]: hold::MAX_HELD_TRACES

mod context;
mod current;
mod finished;
mod hold;
mod otel;
mod span;

pub use context::SpanContext;
pub(crate) use current::{current, current_ids};
pub(crate) use hold::HoldBudget;
pub use span::Span;
