//! `Recorder.log_label` / `log_labels`: ground truth for earlier
//! predictions. Labels are read (and classes interned) with the GIL held,
//! then pushed as `SlotKind::Label` slots with it released. A label is no
//! record: it is counted in `labels` / `labels_dropped`; only a label
//! refused as invalid counts where a refused record does (`invalid`, and
//! so `logged`), so the record counters still add up.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use modeltap_core::pipeline::{now_unix_nano, LabelPush};
use modeltap_core::record::{PredictionKind, Side, INLINE_ID_BYTES};
use numpy::PyReadonlyArray1;
use pyo3::prelude::*;
use pyo3::types::PyString;

use super::bulk::{Waiter, BULK_MIN_ROWS_PER_S, BULK_STALL};
use super::{Recorder, LABEL_OVERFLOW};
use crate::errors::InvalidRecord;
use crate::labels::{label_id, label_times, label_value, LabelId, LabelValue};
use crate::request_ids::RequestIds;

/// One label read from Python, ready for its slot.
struct Ready {
    unix_nano: u64,
    request_id: u128,
    /// A text id short enough for the slot itself.
    inline_id: Option<String>,
    kind: PredictionKind,
    value: f64,
    side: Option<Box<Side>>,
}

/// The labels of a `log_labels` call, as given.
enum Values<'py> {
    F64(Vec<f64>),
    I64(Vec<i64>),
    Items(Vec<Bound<'py, PyAny>>),
}

impl Recorder {
    /// A label ready for its slot, or why it cannot be one. `unix_nano`
    /// `u64::MAX` marks a time the caller could not read.
    fn ready(
        &self,
        id: Result<LabelId, String>,
        label: Result<LabelValue<'_>, String>,
        unix_nano: u64,
    ) -> Result<Ready, String> {
        let id = id?;
        let label = label?;
        if unix_nano == u64::MAX {
            return Err("its time is not a valid time".into());
        }
        let mut side: Option<Box<Side>> = None;
        let (request_id, inline_id) = match id {
            LabelId::Hex(v) => (v, None),
            LabelId::Text(t) if t.len() <= INLINE_ID_BYTES => (0, Some(t)),
            LabelId::Text(t) => {
                side.get_or_insert_with(Box::default).request_id = Some(t);
                (0, None)
            }
        };
        let (kind, value) = match label {
            LabelValue::Number(v) => (PredictionKind::Number, v),
            LabelValue::Int(v) => (PredictionKind::Int, v),
            LabelValue::Class(text) => match self.labels.code(&self.pipe, &text) {
                Some(code) => (PredictionKind::Label, f64::from(code)),
                None => {
                    // The vocabulary is full: the class travels as text.
                    side.get_or_insert_with(Box::default)
                        .categories
                        .push((LABEL_OVERFLOW, text.into_owned()));
                    (PredictionKind::Label, f64::NAN)
                }
            },
        };
        Ok(Ready {
            unix_nano,
            request_id,
            inline_id,
            kind,
            value,
            side,
        })
    }

    /// Pushes labels with the GIL released; returns how many landed. With
    /// `on_full="block"` each waits for room; in drop mode a single label
    /// never waits, and many wait as `log_batch`'s rows do (while the drain
    /// thread makes progress, for a bounded time). The rest are counted in
    /// `labels_dropped`.
    fn push_labels(&self, py: Python<'_>, labels: Vec<Ready>, many: bool) -> u64 {
        let pipe = &self.pipe;
        let block = self.block;
        py.detach(move || {
            #[allow(clippy::cast_precision_loss)]
            let budget = Duration::from_secs_f64(labels.len() as f64 / BULK_MIN_ROWS_PER_S);
            let waiter = Waiter {
                pipe,
                block,
                call_deadline: Instant::now() + BULK_STALL + budget,
            };
            let (mut pushed, mut dropped) = (0u64, 0u64);
            let mut stalled = false;
            for mut l in labels {
                if stalled {
                    dropped += 1;
                    continue;
                }
                let side_bytes = l.side.as_ref().map_or(0, |s| s.heap_bytes());
                let mut outcome = LabelPush::Full;
                {
                    let mut try_push = || {
                        outcome = pipe.try_push_label(side_bytes, |slot| {
                            slot.unix_nano = l.unix_nano;
                            slot.request_id = l.request_id;
                            if let Some(t) = &l.inline_id {
                                slot.request_id_inline.set(t);
                            }
                            slot.trace_id = 0;
                            slot.span_id = 0;
                            slot.parent_span_id = 0;
                            slot.flags = 0;
                            slot.prediction_kind = l.kind;
                            slot.latency_s = l.value;
                            slot.n_outputs = 0;
                            slot.n_probabilities = 0;
                            slot.side = l.side.take();
                        });
                        outcome != LabelPush::Full
                    };
                    if many || block {
                        waiter.push(&mut try_push, &mut stalled);
                    } else {
                        try_push();
                    }
                }
                match outcome {
                    LabelPush::Pushed => pushed += 1,
                    LabelPush::Full => dropped += 1,
                    // Counted by the pipeline.
                    LabelPush::Lost => {}
                }
            }
            pipe.count_labels_dropped(dropped);
            pushed
        })
    }

    /// Counts `n` labels refused as invalid (where refused records count):
    /// raises `InvalidRecord` in strict mode, else warns.
    fn reject_labels(&self, py: Python<'_>, n: u64, msg: &str) -> PyResult<()> {
        for _ in 0..n {
            self.pipe.count_invalid();
        }
        if self.strict {
            return Err(InvalidRecord::new_err(msg.to_owned()));
        }
        self.warn(py, &format!("modeltap rejected {n} label(s): {msg}"));
        Ok(())
    }

    /// Keeps an internal failure of a label call off the caller's path
    /// outside strict mode: counted as one of the agent's errors, warned,
    /// `fallback` returned.
    pub(super) fn contain_labels<T>(
        &self,
        py: Python<'_>,
        result: PyResult<T>,
        fallback: T,
    ) -> PyResult<T> {
        match result {
            Err(e) if !self.strict && e.is_instance_of::<crate::errors::InternalError>(py) => {
                self.pipe.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.warn(py, &format!("modeltap failed to record labels: {e}"));
                Ok(fallback)
            }
            other => other,
        }
    }

    /// `log_label`: one label. See `modeltap.Agent.log_label`.
    pub(super) fn log_label_one(
        &self,
        py: Python<'_>,
        request_id: &Bound<'_, PyAny>,
        label: &Bound<'_, PyAny>,
        unix_nano: Option<u64>,
    ) -> PyResult<()> {
        let t = unix_nano.unwrap_or_else(now_unix_nano);
        match self.ready(label_id(request_id), label_value(label), t) {
            Ok(l) => {
                self.push_labels(py, vec![l], false);
                Ok(())
            }
            Err(why) => self.reject_labels(py, 1, &format!("label refused: {why}")),
        }
    }

    /// `log_labels`: many labels; returns how many landed in the ring.
    /// Every label is read on its own: a bad one is counted invalid and the
    /// others still go in (strict mode raises after they did).
    pub(super) fn log_label_many(
        &self,
        py: Python<'_>,
        request_ids: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        unix_nano: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let n_given = labels.len().or_else(|_| request_ids.len()).unwrap_or(1) as u64;
        let values = if let Ok(a) = labels.extract::<PyReadonlyArray1<'_, f64>>() {
            Values::F64(a.as_array().to_vec())
        } else if let Ok(a) = labels.extract::<PyReadonlyArray1<'_, i64>>() {
            Values::I64(a.as_array().to_vec())
        } else if labels.is_instance_of::<PyString>() {
            self.reject_labels(py, n_given, "labels must be a sequence, not a str")?;
            return Ok(0);
        } else {
            match labels
                .try_iter()
                .and_then(|it| it.collect::<PyResult<Vec<_>>>())
            {
                Ok(v) => Values::Items(v),
                Err(e) => {
                    self.reject_labels(py, n_given, &format!("labels could not be read: {e}"))?;
                    return Ok(0);
                }
            }
        };
        let n = match &values {
            Values::F64(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::Items(v) => v.len(),
        };
        let ids: Vec<Result<LabelId, String>> = if let Ok(r) = request_ids.cast::<RequestIds>() {
            r.get().label_ids()
        } else if request_ids.is_instance_of::<PyString>() {
            self.reject_labels(
                py,
                n as u64,
                "request_ids must be a sequence of str, not a str",
            )?;
            return Ok(0);
        } else {
            match request_ids.try_iter().and_then(|it| {
                it.map(|i| i.map(|i| label_id(&i)))
                    .collect::<PyResult<Vec<_>>>()
            }) {
                Ok(v) => v,
                Err(e) => {
                    self.reject_labels(
                        py,
                        n as u64,
                        &format!("request_ids could not be read: {e}"),
                    )?;
                    return Ok(0);
                }
            }
        };
        if ids.len() != n {
            self.reject_labels(
                py,
                n.max(ids.len()) as u64,
                &format!("{} request ids but {n} labels", ids.len()),
            )?;
            return Ok(0);
        }
        let times = match label_times(unix_nano, n) {
            Ok(t) => t,
            Err(why) => {
                self.reject_labels(py, n as u64, &why)?;
                return Ok(0);
            }
        };
        let mut good = Vec::with_capacity(n);
        let mut bad = 0u64;
        let mut first_bad: Option<String> = None;
        for (i, (id, t)) in ids.into_iter().zip(times).enumerate() {
            let value = match &values {
                Values::F64(v) => {
                    let x = v[i];
                    if x.is_finite() {
                        Ok(LabelValue::Number(x))
                    } else {
                        Err(format!("the label {x} is not a finite number"))
                    }
                }
                #[allow(clippy::cast_precision_loss)]
                Values::I64(v) => Ok(LabelValue::Int(v[i] as f64)),
                Values::Items(v) => label_value(&v[i]),
            };
            match self.ready(id, value, t) {
                Ok(l) => good.push(l),
                Err(why) => {
                    bad += 1;
                    first_bad.get_or_insert_with(|| format!("label {i}: {why}"));
                }
            }
        }
        let pushed = self.push_labels(py, good, true);
        if let Some(first) = first_bad {
            let more = if bad > 1 {
                format!(" ({} more)", bad - 1)
            } else {
                String::new()
            };
            self.reject_labels(py, bad, &format!("{first}{more}"))?;
        }
        Ok(pushed)
    }
}
