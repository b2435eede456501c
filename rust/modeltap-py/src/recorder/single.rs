//! `Recorder.log`: one record, parsed from Python values into a scratch row
//! and copied into a ring slot.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use modeltap_core::batch::Schema;
use modeltap_core::ids::{parse_hex_u128, random_u128};
use modeltap_core::pipeline::now_unix_nano;
use modeltap_core::record::{flags, PredictionKind, Slot, SlotKind, INLINE_ID_BYTES};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::{
    clip, flag_names, hex_py, type_name, u16_len, Parsed, Recorder, Reject, MAX_ATTRIBUTES,
    MAX_ID_BYTES, MAX_TEXT_BYTES, PROBLEM_FLAGS,
};
use crate::errors::InvalidRecord;
use crate::parse::{check, number, to_str, vector, with_f64_array};

thread_local! {
    static SCRATCH: RefCell<(Vec<f64>, Vec<f64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl Recorder {
    /// Logs one prediction; returns its request id. See `modeltap.Agent.log`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn log_one<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
        prediction: &Bound<'py, PyAny>,
        probabilities: Option<&Bound<'py, PyAny>>,
        latency_s: Option<&Bound<'py, PyAny>>,
        request_id: Option<&Bound<'py, PyAny>>,
        error: Option<&Bound<'py, PyAny>>,
        attributes: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let unix_nano = now_unix_nano();
        let (mut id, given) = match request_id {
            Some(r) if !r.is_none() => (0u128, Some(r.clone())),
            _ => (random_u128(), None),
        };
        // A given id of 32 lowercase hex digits (what `random_id` makes)
        // travels as the 16 bytes it spells; one of up to
        // `INLINE_ID_BYTES` in the slot; only longer ones as text beside it.
        let mut inline_id: Option<&str> = None;
        let given_text = given.as_ref().and_then(|g| g.cast::<PyString>().ok());
        if let Some(text) = given_text.as_ref().and_then(|s| s.to_str().ok()) {
            match parse_hex_u128(text.as_bytes()) {
                Some(v) if v != 0 => id = v,
                _ if !text.is_empty() && text.len() <= INLINE_ID_BYTES => inline_id = Some(text),
                _ => {}
            }
        }
        let ret = || -> Bound<'py, PyAny> {
            given.clone().map_or_else(
                || hex_py(py, id).into_any(),
                |g| g.str().map_or(g, Bound::into_any),
            )
        };
        let schema = if let Some(s) = self.pipe.schema() {
            Arc::clone(s)
        } else {
            let (names, n) = if let Ok(d) = features.cast::<PyDict>() {
                (
                    Some(d.keys().iter().map(|k| to_str(&k)).collect::<Vec<_>>()),
                    d.len(),
                )
            } else {
                (None, features.len().unwrap_or(0))
            };
            let out_w = if prediction.is_instance_of::<PyString>() {
                1
            } else {
                prediction.len().unwrap_or(1)
            };
            let prob_w = probabilities
                .filter(|p| !p.is_none())
                .and_then(|p| p.len().ok());
            match self.schema_for(py, names, n, out_w, prob_w) {
                Ok(s) => s,
                Err(Reject(msg)) => {
                    self.reject(py, 1, &msg)?;
                    return Ok(ret());
                }
            }
        };
        let stride = schema.stride();
        let nf = schema.n_features();
        let mut guard =
            SCRATCH.with(|s| s.try_borrow_mut().ok().map(|mut b| std::mem::take(&mut *b)));
        let (mut row, mut tmp) = guard.take().unwrap_or_default();
        row.clear();
        row.resize(stride, f64::NAN);
        let mut p = Parsed {
            flags: 0,
            kind: PredictionKind::Number,
            n_outputs: 0,
            n_probabilities: 0,
            side: None,
        };
        let result = self.features(py, &schema, features, &mut row, &mut p);
        let outcome = match result {
            Err(Reject(msg)) => self.reject(py, 1, &msg),
            Ok(()) => {
                let (feat_out, probs) = row.split_at_mut(nf + schema.out_cap);
                self.prediction(&schema, prediction, &mut feat_out[nf..], &mut tmp, &mut p);
                if let Some(pr) = probabilities.filter(|x| !x.is_none()) {
                    let mut f = 0;
                    if vector(pr, &mut tmp, &mut f).is_some() {
                        if tmp.len() <= schema.prob_cap {
                            probs[..tmp.len()].copy_from_slice(&tmp);
                            p.n_probabilities = u16_len(tmp.len());
                        } else {
                            p.n_probabilities = u16::MAX;
                            p.side().probabilities = Some(tmp.clone());
                        }
                        p.flags |= f & flags::BAD_VALUE;
                    } else {
                        p.flags |= flags::BAD_VALUE;
                    }
                }
                let latency = match latency_s.filter(|x| !x.is_none()) {
                    Some(l) => {
                        let mut f = 0;
                        let v = number(l, &mut f);
                        p.flags |= f & flags::BAD_VALUE;
                        v
                    }
                    None => f64::NAN,
                };
                if let Some(g) = given.as_ref().filter(|_| id == 0 && inline_id.is_none()) {
                    p.side().request_id = Some(clip(to_str(g), MAX_ID_BYTES));
                }
                if let Some(e) = error.filter(|x| !x.is_none()) {
                    p.flags |= flags::ERROR;
                    let (ty, msg) = error_parts(e);
                    p.side().error = Some((clip(ty, MAX_TEXT_BYTES), clip(msg, MAX_TEXT_BYTES)));
                    self.pipe
                        .counters
                        .inference_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Some(a) = attributes.filter(|x| !x.is_none()) {
                    if let Ok(d) = a.cast::<PyDict>() {
                        let side = p.side();
                        for (k, v) in d.iter().take(MAX_ATTRIBUTES) {
                            side.attributes.push((
                                clip(to_str(&k), MAX_TEXT_BYTES),
                                clip(to_str(&v), MAX_TEXT_BYTES),
                            ));
                        }
                    } else {
                        p.flags |= flags::BAD_VALUE;
                    }
                }
                let problems = p.flags & PROBLEM_FLAGS;
                let side_bytes = p.side.as_ref().map_or(0, |s| s.heap_bytes());
                let max_side = self.pipe.config().max_record_side_bytes();
                if side_bytes > max_side {
                    // Could never fit, however long one waited.
                    self.reject(
                        py,
                        1,
                        &format!(
                            "record's vectors and texts take {side_bytes} bytes, more than \
                             one record may take ({max_side}); raise buffer_bytes"
                        ),
                    )
                } else if problems != 0 && self.strict {
                    self.pipe.count_invalid();
                    Err(InvalidRecord::new_err(format!(
                        "record has {}",
                        flag_names(problems)
                    )))
                } else {
                    let ids = super::trace::current_ids(py);
                    self.publish(py, &row, &mut p, unix_nano, (id, inline_id), latency, ids);
                    if problems != 0 {
                        self.pipe.counters.flagged.fetch_add(1, Ordering::Relaxed);
                        self.warn(
                            py,
                            &format!("modeltap kept a record with {}", flag_names(problems)),
                        );
                    }
                    Ok(())
                }
            }
        };
        SCRATCH.with(|s| {
            if let Ok(mut b) = s.try_borrow_mut() {
                *b = (row, tmp);
            }
        });
        outcome?;
        Ok(ret())
    }

    /// Reads the features into `row[..nf]`.
    fn features(
        &self,
        py: Python<'_>,
        schema: &Schema,
        obj: &Bound<'_, PyAny>,
        row: &mut [f64],
        p: &mut Parsed,
    ) -> Result<(), Reject> {
        let nf = schema.n_features();
        let has_cat = schema.categorical.iter().any(|&c| c);
        if let Ok(d) = obj.cast::<PyDict>() {
            let keys = self.keys.get().map_or(&[][..], Vec::as_slice);
            let mut matched = 0usize;
            for (i, key) in keys.iter().enumerate() {
                match d.get_item(key.bind(py)) {
                    Ok(Some(v)) => {
                        matched += 1;
                        row[i] = if schema.categorical[i] {
                            self.category(i, &v, p)
                        } else {
                            number(&v, &mut p.flags)
                        };
                    }
                    _ => {
                        p.flags |= flags::MISSING;
                        row[i] = f64::NAN;
                    }
                }
            }
            if d.len() > matched {
                let unknown: Vec<String> = d
                    .keys()
                    .iter()
                    .map(|k| to_str(&k))
                    .filter(|k| !schema.feature_names.contains(k))
                    .collect();
                return Err(Reject(format!(
                    "unknown feature keys {unknown:?}; expected {:?}",
                    schema.feature_names
                )));
            }
            return Ok(());
        }
        if !has_cat {
            let read = with_f64_array(obj, |view| {
                if view.len() != nf {
                    return Err(Reject(format!(
                        "expected {nf} features, got an array of {}",
                        view.len()
                    )));
                }
                for (dst, &v) in row[..nf].iter_mut().zip(view.iter()) {
                    *dst = check(v, &mut p.flags);
                }
                Ok(())
            });
            if let Some(done) = read {
                return done;
            }
        }
        let items: Vec<Bound<'_, PyAny>>;
        let seq: &[Bound<'_, PyAny>] = if let Ok(l) = obj.cast::<PyList>() {
            if l.len() != nf {
                return Err(Reject(format!(
                    "expected {nf} features, got a list of {}",
                    l.len()
                )));
            }
            for (i, item) in l.iter().enumerate() {
                row[i] = if has_cat && schema.categorical[i] {
                    self.category(i, &item, p)
                } else {
                    number(&item, &mut p.flags)
                };
            }
            return Ok(());
        } else if let Ok(t) = obj.cast::<PyTuple>() {
            items = t.iter().collect();
            &items
        } else if obj.hasattr("__len__").unwrap_or(false) && !obj.is_instance_of::<PyString>() {
            // numpy arrays of other dtypes, pandas Series, other sequences.
            let Ok(it) = obj.try_iter() else {
                return Err(Reject(format!(
                    "features must be a 1-D array, a list, a tuple or a dict, not {}",
                    type_name(obj)
                )));
            };
            // At most one more item than needed (an endless iterator must not
            // run for ever), and the first error ends it (an iterator that
            // keeps raising must not either).
            items = match it.take(nf + 1).collect::<PyResult<Vec<_>>>() {
                Ok(v) => v,
                Err(e) => return Err(Reject(format!("reading the features failed: {e}"))),
            };
            &items
        } else {
            return Err(Reject(format!(
                "features must be a 1-D array, a list, a tuple or a dict, not {}",
                type_name(obj)
            )));
        };
        if seq.len() != nf {
            return Err(Reject(format!("expected {nf} features, got {}", seq.len())));
        }
        for (i, item) in seq.iter().enumerate() {
            row[i] = if has_cat && schema.categorical[i] {
                self.category(i, item, p)
            } else {
                number(item, &mut p.flags)
            };
        }
        Ok(())
    }

    /// Reads the prediction into `out` (inline width `schema.out_cap`).
    pub(super) fn prediction(
        &self,
        schema: &Schema,
        obj: &Bound<'_, PyAny>,
        out: &mut [f64],
        tmp: &mut Vec<f64>,
        p: &mut Parsed,
    ) {
        let mut one = |p: &mut Parsed, kind: PredictionKind, v: f64| {
            p.kind = kind;
            p.n_outputs = 1;
            out[0] = v;
        };
        if obj.is_none() {
            p.flags |= flags::NO_PREDICTION;
            p.n_outputs = 0;
        } else if let Ok(f) = obj.cast::<PyFloat>() {
            one(p, PredictionKind::Number, f.value());
        } else if obj.is_instance_of::<PyBool>() {
            one(
                p,
                PredictionKind::Int,
                if obj.is_truthy().unwrap_or(false) {
                    1.0
                } else {
                    0.0
                },
            );
        } else if obj.is_instance_of::<PyInt>() {
            match obj.extract::<i64>() {
                #[allow(clippy::cast_precision_loss)]
                Ok(i) => one(p, PredictionKind::Int, i as f64),
                Err(_) => one(
                    p,
                    PredictionKind::Number,
                    obj.extract::<f64>().unwrap_or(f64::NAN),
                ),
            }
        } else if obj.is_instance_of::<PyString>() {
            let code = self.label(obj, p);
            one(p, PredictionKind::Label, code);
        } else if vector(obj, tmp, &mut p.flags).is_some() {
            p.kind = PredictionKind::Vector;
            if tmp.len() <= schema.out_cap {
                out[..tmp.len()].copy_from_slice(tmp);
                p.n_outputs = u16_len(tmp.len());
            } else {
                p.n_outputs = 0;
                p.side().outputs = Some(tmp.clone());
            }
        } else if let Ok(i) = obj.extract::<i64>() {
            #[allow(clippy::cast_precision_loss)]
            one(p, PredictionKind::Int, i as f64);
        } else if let Ok(v) = obj.extract::<f64>() {
            one(p, PredictionKind::Number, v);
        } else {
            p.flags |= flags::BAD_VALUE | flags::NO_PREDICTION;
            p.n_outputs = 0;
        }
    }

    /// Copies a parsed record into the ring; honours `on_full="block"`.
    /// The record either lands with its own values or is counted in
    /// `dropped_full`, never both.
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        py: Python<'_>,
        row: &[f64],
        p: &mut Parsed,
        unix_nano: u64,
        (request_id, inline_id): (u128, Option<&str>),
        latency_s: f64,
        (trace_id, span_id): (u128, u64),
    ) {
        let mut side = p.side.take();
        let side_bytes = side.as_ref().map_or(0, |s| s.heap_bytes());
        let (flags, kind, n_out, n_prob) = (p.flags, p.kind, p.n_outputs, p.n_probabilities);
        let mut fill = |slot: &mut Slot| {
            slot.kind = SlotKind::Record;
            slot.unix_nano = unix_nano;
            slot.request_id = request_id;
            if let Some(text) = inline_id {
                slot.request_id_inline.set(text);
            }
            slot.trace_id = trace_id;
            slot.span_id = span_id;
            slot.parent_span_id = 0;
            slot.latency_s = latency_s;
            slot.flags = flags;
            slot.prediction_kind = kind;
            slot.n_outputs = n_out;
            slot.n_probabilities = n_prob;
            slot.status = 0;
            slot.values.copy_from_slice(row);
            slot.side = side.take();
        };
        if !self.block {
            self.pipe.push_sized(side_bytes, &mut fill);
            return;
        }
        loop {
            if self.pipe.try_push(side_bytes, &mut fill) {
                return;
            }
            if self.pipe.is_stopping() {
                self.pipe.count_dropped(1);
                return;
            }
            py.detach(|| std::thread::sleep(Duration::from_micros(50)));
        }
    }
}

pub(super) fn error_parts(obj: &Bound<'_, PyAny>) -> (String, String) {
    if let Ok(s) = obj.cast::<PyString>() {
        return (String::new(), s.to_string_lossy().into_owned());
    }
    let ty = obj.get_type();
    let name = ty.qualname().map_or_else(|_| "?".into(), |n| n.to_string());
    let module = ty
        .module()
        .map_or_else(|_| String::new(), |m| m.to_string());
    let full = if module.is_empty() || module == "builtins" {
        name
    } else {
        format!("{module}.{name}")
    };
    (full, to_str(obj))
}
