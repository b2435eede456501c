//! `Recorder.log_batch`: many records from 2-D arrays, copied into the ring
//! with the GIL released.
//!
//! This file holds the call itself (`Recorder::log_many`): reading its
//! arguments and pushing the rows. `columns` reads the predictions and the
//! overflow of coded categorical columns, `wait` waits for room in the
//! ring, `prepare` profiles a large batch in the call (see `bulk_profile`).

mod columns;
mod prepare;
mod wait;

pub(super) use columns::Overflow;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use modeltap_core::ids::random_u128;
use modeltap_core::pipeline::now_unix_nano;
use modeltap_core::record::{flags, PredictionKind, Side, Slot, SlotKind};
use numpy::PyReadonlyArray2;
use pyo3::prelude::*;
use pyo3::types::PyString;
use rand::{Rng, SeedableRng};

use super::features::XView;
use super::vocab::float_spelling;
use super::{
    clip, flag_names, type_name, u16_len, Parsed, Recorder, Reject, MAX_ID_BYTES, PROBLEM_FLAGS,
};
use crate::parse::{check, to_str, vector};
use crate::request_ids::RequestIds;
use prepare::BatchRows;
pub(super) use wait::Waiter;

/// How long `log_batch` waits for a drain thread that makes no progress
/// before dropping the rest of a batch that does not fit the ring.
pub(super) const BULK_STALL: Duration = Duration::from_millis(20);
/// In drop mode, `log_batch` waits for room at most as long as the pipeline
/// would need to take its rows at this rate (plus `BULK_STALL`).
pub(super) const BULK_MIN_ROWS_PER_S: f64 = 100_000.0;

thread_local! {
    /// Rows of the current `log_batch` call already counted (pushed,
    /// dropped or refused), so an internal failure counts only the rest.
    pub(super) static BULK_HANDLED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Recorder {
    /// Logs a batch of predictions from a 2-D float array; returns the
    /// request ids. See `modeltap.Agent.log_batch`.
    ///
    /// Each row either lands in the ring with its own values or is counted
    /// in `dropped_full`. With `on_full="drop"` the call waits for room only
    /// while the drain thread is making progress: once it has made none for
    /// `BULK_STALL` (an exporter that is stuck), the rest of the rows are
    /// counted as dropped at once, so the caller never waits on a stalled
    /// pipeline. With `on_full="block"` it waits for room however long.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn log_many<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        predictions: &Bound<'py, PyAny>,
        probabilities: Option<&Bound<'py, PyAny>>,
        latency_s: Option<&Bound<'py, PyAny>>,
        request_ids: Option<&Bound<'py, PyAny>>,
        coded: Option<&Overflow>,
    ) -> PyResult<RequestIds> {
        BULK_HANDLED.with(|h| h.set(0));
        let x64;
        let x32;
        let view: XView<'_> = if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f64>>() {
            x64 = a;
            XView::F64(x64.as_array())
        } else if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f32>>() {
            x32 = a;
            XView::F32(x32.as_array())
        } else {
            let n = if x.is_instance_of::<PyString>() {
                1
            } else {
                x.len().unwrap_or(1) as u64
            };
            if n == 0 {
                // Nothing was handed over: nothing to count.
                return Ok(RequestIds::given(Vec::new()));
            }
            self.reject(
                py,
                n,
                &format!(
                    "log_batch needs a 2-D float32/float64 array, not {}",
                    type_name(x)
                ),
            )?;
            return Ok(RequestIds::given(Vec::new()));
        };
        let (n, nf_in) = view.dim();
        let mut preds = match self.pred_columns(predictions, n) {
            Ok(p) => p,
            Err(Reject(msg)) => {
                self.reject(py, n as u64, &msg)?;
                return Ok(RequestIds::given(Vec::new()));
            }
        };
        let probs = match probabilities.filter(|p| !p.is_none()) {
            None => None,
            Some(p) => match p.extract::<PyReadonlyArray2<'py, f64>>() {
                Ok(a) if a.as_array().dim().0 == n => Some(a),
                _ => {
                    let a = p
                        .call_method0("__array__")
                        .and_then(|a| a.call_method1("astype", ("float64",)))
                        .and_then(|a| {
                            a.extract::<PyReadonlyArray2<'py, f64>>()
                                .map_err(PyErr::from)
                        });
                    match a {
                        Ok(a) if a.as_array().dim().0 == n => Some(a),
                        _ => {
                            self.reject(
                                py,
                                n as u64,
                                &format!("probabilities must be a 2-D array with {n} rows"),
                            )?;
                            return Ok(RequestIds::given(Vec::new()));
                        }
                    }
                }
            },
        };
        let prob_w = probs.as_ref().map(|p| p.as_array().dim().1);
        let schema = match self.schema_for(py, None, nf_in, preds.width, prob_w) {
            Ok(s) => s,
            Err(Reject(msg)) => {
                self.reject(py, n as u64, &msg)?;
                return Ok(RequestIds::given(Vec::new()));
            }
        };
        let nf = schema.n_features();
        if nf_in != nf {
            self.reject(
                py,
                n as u64,
                &format!("expected {nf} features per row, got {nf_in}"),
            )?;
            return Ok(RequestIds::given(Vec::new()));
        }
        let latency: Vec<f64> = match latency_s.filter(|l| !l.is_none()) {
            None => vec![f64::NAN; n],
            Some(l) => {
                let mut f = 0;
                if let Ok(v) = l.extract::<f64>() {
                    vec![v; n]
                } else {
                    let mut v = Vec::new();
                    if vector(l, &mut v, &mut f).is_none() || v.len() != n {
                        self.reject(
                            py,
                            n as u64,
                            &format!("latency_s must be a number or {n} numbers"),
                        )?;
                        return Ok(RequestIds::given(Vec::new()));
                    }
                    v
                }
            }
        };
        let given: Option<Vec<String>> = match request_ids.filter(|r| !r.is_none()) {
            None => None,
            Some(r) => {
                let ids: Vec<String> = match r.try_iter() {
                    // At most one id more than rows; the first error ends it.
                    Ok(it) => it
                        .take(n + 1)
                        .map_while(Result::ok)
                        .map(|i| clip(to_str(&i), MAX_ID_BYTES))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                if ids.len() != n {
                    self.reject(
                        py,
                        n as u64,
                        &format!("request_ids must hold {n} ids, got {}", ids.len()),
                    )?;
                    return Ok(RequestIds::given(Vec::new()));
                }
                Some(ids)
            }
        };
        // Categorical columns need the vocabularies (Python dicts): read
        // their codes with the GIL held, before the bulk copy.
        let has_cat = schema.categorical.iter().any(|&c| c);
        let mut cat_codes: Vec<f64> = Vec::new();
        let mut cat_side: Vec<Option<Box<Side>>> = Vec::new();
        let mut cat_flags: Vec<u32> = Vec::new();
        if let (true, Some(overflow)) = (has_cat, coded) {
            // Categorical columns already hold vocabulary codes (see
            // `intern`): only missing values need flagging, and values that
            // did not fit the vocabulary travel beside their record.
            cat_codes = vec![0.0; n * nf];
            cat_side = (0..n).map(|_| None).collect();
            cat_flags = vec![0; n];
            for r in 0..n {
                for (c, &is_cat) in schema.categorical.iter().enumerate() {
                    if is_cat {
                        let v = view.get(r, c);
                        if v.is_nan() {
                            match overflow.0.get(&(c, r)) {
                                Some(value) => {
                                    let fi = u32::try_from(c).unwrap_or(u32::MAX);
                                    cat_side[r]
                                        .get_or_insert_with(Box::default)
                                        .categories
                                        .push((fi, value.clone()));
                                }
                                None => cat_flags[r] |= flags::MISSING,
                            }
                        }
                        cat_codes[r * nf + c] = v;
                    }
                }
            }
        } else if has_cat {
            cat_codes = vec![0.0; n * nf];
            cat_side = (0..n).map(|_| None).collect();
            cat_flags = vec![0; n];
            for r in 0..n {
                let mut p = Parsed {
                    flags: 0,
                    kind: PredictionKind::Number,
                    n_outputs: 0,
                    n_probabilities: 0,
                    side: None,
                };
                for (c, &is_cat) in schema.categorical.iter().enumerate() {
                    if is_cat {
                        cat_codes[r * nf + c] = match float_spelling(view.get(r, c)) {
                            Some(key) => self.category_code(c, key, &mut p),
                            None => {
                                p.flags |= flags::MISSING;
                                f64::NAN
                            }
                        };
                    }
                }
                cat_flags[r] = p.flags;
                cat_side[r] = p.side;
            }
        }
        if self.strict {
            let mut problems = 0;
            for r in 0..n {
                let mut f = preds.flags[r] | cat_flags.get(r).copied().unwrap_or(0);
                for c in 0..nf {
                    if !schema.categorical[c] {
                        check(view.get(r, c), &mut f);
                    }
                }
                problems |= f & PROBLEM_FLAGS;
            }
            if problems != 0 {
                return self
                    .reject(py, n as u64, &format!("batch has {}", flag_names(problems)))
                    .map(|()| RequestIds::given(Vec::new()));
            }
        }
        let unix_nano = now_unix_nano();
        let probs_view = probs.as_ref().map(|p| p.as_array());
        let pipe = &self.pipe;
        let block = self.block;
        let out_cap = schema.out_cap;
        let prob_cap = schema.prob_cap;
        let categorical = &schema.categorical;
        let max_side = pipe.config().max_record_side_bytes();
        let sample_rate = pipe.config().sample_rate;
        let (trace_id, span_id) = super::trace::current_ids(py);
        let (ids, flagged, too_large) = py.detach(|| {
            // A large batch is profiled here, in this call (see
            // `bulk_profile`); a small one record by record on the drain
            // thread.
            let mut pre = self.profile_batch(&BatchRows {
                schema: &schema,
                view: &view,
                preds: &preds,
                probs: probs_view.as_ref(),
                latency: &latency,
                cat_codes: &cat_codes,
                cat_flags: &cat_flags,
                cat_side: &cat_side,
                given_ids: given.is_some(),
                unix_nano,
            });
            let mut rng = rand::rngs::SmallRng::seed_from_u64(modeltap_core::ids::random_u64());
            let mut ids = Vec::with_capacity(n);
            let mut flagged = 0u64;
            let mut dropped = 0u64;
            let mut sampled_out = 0u64;
            let mut too_large = 0u64;
            let mut stalled = false;
            // In drop mode a call waits for room only while the pipeline
            // absorbs at least BULK_MIN_ROWS_PER_S rows a second (and never
            // 20 ms without progress); past that the rest is dropped.
            #[allow(clippy::cast_precision_loss)]
            let budget = BULK_STALL + Duration::from_secs_f64(n as f64 / BULK_MIN_ROWS_PER_S);
            let call_deadline = Instant::now() + budget;
            let waiter = Waiter {
                pipe,
                block,
                call_deadline,
            };
            // The batch's profile goes first: its rows are counted only once
            // it is in (else they are dropped with it).
            // A wide profile goes in column groups, the totals last; should
            // one not get in, the groups before it stay in (their columns
            // counted) while the rows are dropped.
            if let Some(p) = pre.as_mut() {
                for (part, from) in &mut p.parts {
                    if !waiter.push(&mut || pipe.try_push_profile(part, *from), &mut stalled) {
                        stalled = true;
                    }
                    if stalled {
                        break;
                    }
                }
            }
            let profiled_here = pre.is_some() && !stalled;
            // Value flags the profile pass already found, row by row.
            let known_flags: Option<&[u32]> = pre
                .as_ref()
                .filter(|_| profiled_here)
                .map(|p| p.row_flags.as_slice());
            for r in 0..n {
                let id = if given.is_some() { 0 } else { random_u128() };
                ids.push(id);
                if let (true, Some(p)) = (profiled_here, pre.as_ref()) {
                    if sample_rate < 1.0 && rng.random::<f64>() >= sample_rate {
                        sampled_out += 1;
                        if (p.row_flags[r]
                            | preds.flags[r]
                            | cat_flags.get(r).copied().unwrap_or(0))
                            & PROBLEM_FLAGS
                            != 0
                        {
                            flagged += 1;
                        }
                        continue;
                    }
                }
                if stalled {
                    dropped += 1;
                    continue;
                }
                let mut flags = preds.flags[r]
                    | cat_flags.get(r).copied().unwrap_or(0)
                    | known_flags.map_or(0, |f| f[r]);
                let mut side = cat_side.get_mut(r).and_then(Option::take);
                if let Some(label) = preds.labels.get_mut(r).and_then(Option::take) {
                    side.get_or_insert_with(Box::default)
                        .categories
                        .extend(label.categories);
                }
                if let Some(g) = &given {
                    side.get_or_insert_with(Box::default).request_id = Some(g[r].clone());
                }
                let mut n_prob = 0u16;
                if let Some(pv) = &probs_view {
                    let prow = pv.row(r);
                    if prow.len() > prob_cap {
                        n_prob = u16::MAX;
                        side.get_or_insert_with(Box::default).probabilities = Some(prow.to_vec());
                    } else {
                        n_prob = u16_len(prow.len());
                    }
                }
                let no_prediction = preds.flags[r] & flags::NO_PREDICTION != 0;
                let prow = preds.row(r);
                let wide = prow.len() > out_cap && !no_prediction;
                if wide {
                    side.get_or_insert_with(Box::default).outputs = Some(prow.to_vec());
                }
                let side_bytes = side.as_ref().map_or(0, |s| s.heap_bytes());
                if side_bytes > max_side {
                    // Could never fit, however long one waited.
                    pipe.count_invalid();
                    too_large += 1;
                    BULK_HANDLED.with(|h| h.set(h.get() + 1));
                    continue;
                }
                let mut fill = |slot: &mut Slot| {
                    slot.kind = SlotKind::Record;
                    slot.unix_nano = unix_nano;
                    slot.request_id = id;
                    slot.trace_id = trace_id;
                    slot.span_id = span_id;
                    slot.parent_span_id = 0;
                    slot.latency_s = latency[r];
                    slot.prediction_kind = preds.kinds[r];
                    slot.status = 0;
                    let vals = &mut slot.values;
                    for c in 0..nf {
                        vals[c] = if categorical[c] {
                            cat_codes[r * nf + c]
                        } else if known_flags.is_some() {
                            view.get(r, c)
                        } else {
                            check(view.get(r, c), &mut flags)
                        };
                    }
                    let w = prow.len().min(out_cap);
                    vals[nf..nf + w].copy_from_slice(&prow[..w]);
                    slot.n_outputs = if no_prediction || wide { 0 } else { u16_len(w) };
                    if let Some(pv) = &probs_view {
                        if n_prob != u16::MAX {
                            for (k, v) in pv.row(r).iter().enumerate() {
                                vals[nf + out_cap + k] = *v;
                            }
                        }
                    }
                    slot.n_probabilities = n_prob;
                    slot.flags = flags;
                    slot.side = side.take();
                    slot.profiled = profiled_here;
                };
                if !waiter.push(&mut || pipe.try_push(side_bytes, &mut fill), &mut stalled) {
                    dropped += 1;
                    continue;
                }
                BULK_HANDLED.with(|h| h.set(h.get() + 1));
                if flags & PROBLEM_FLAGS != 0 {
                    flagged += 1;
                }
            }
            if dropped > 0 {
                pipe.count_dropped(dropped);
                BULK_HANDLED.with(|h| h.set(h.get() + dropped));
            }
            if sampled_out > 0 {
                pipe.count_sampled_out(sampled_out);
                BULK_HANDLED.with(|h| h.set(h.get() + sampled_out));
            }
            (ids, flagged, too_large)
        });
        if flagged > 0 {
            self.pipe
                .counters
                .flagged
                .fetch_add(flagged, Ordering::Relaxed);
            self.warn(py, &format!("modeltap kept {flagged} record(s) of a batch with missing, non-finite or bad values"));
        }
        if too_large > 0 {
            let msg = format!(
                "modeltap refused {too_large} record(s) whose vectors and texts take more \
                 than one record may take ({max_side} bytes); raise buffer_bytes"
            );
            if self.strict {
                return Err(crate::errors::InvalidRecord::new_err(msg));
            }
            self.warn(py, &msg);
        }
        Ok(match given {
            Some(g) => RequestIds::given(g),
            None => RequestIds::generated(ids),
        })
    }
}
