//! `Recorder.log_batch`: many records from 2-D arrays, copied into the ring
//! with the GIL released.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::sync::Arc;

use modeltap_core::batch::Schema;
use modeltap_core::ids::random_u128;
use modeltap_core::pipeline::{now_unix_nano, Pipeline};
use modeltap_core::profile::{merge_window, Compiled};
use modeltap_core::proto;
use modeltap_core::record::{flags, PredictionKind, Side, Slot, SlotKind};
use numpy::ndarray::{ArrayView1, ArrayView2};
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use rand::{Rng, SeedableRng};

use super::features::XView;
use super::vocab::{float_spelling, MAX_VALUE_BYTES};
use super::{
    bulk_profile, clip, flag_names, type_name, u16_len, Parsed, Recorder, Reject, MAX_ID_BYTES,
    PROBLEM_FLAGS,
};
use crate::parse::{check, to_str, vector};
use crate::request_ids::RequestIds;

/// How long `log_batch` waits for a drain thread that makes no progress
/// before dropping the rest of a batch that does not fit the ring.
const BULK_STALL: Duration = Duration::from_millis(20);
/// In drop mode, `log_batch` waits for room at most as long as the pipeline
/// would need to take its rows at this rate (plus `BULK_STALL`).
const BULK_MIN_ROWS_PER_S: f64 = 100_000.0;

thread_local! {
    /// Rows of the current `log_batch` call already counted (pushed,
    /// dropped or refused), so an internal failure counts only the rest.
    pub(super) static BULK_HANDLED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Categorical values of a coded batch that did not fit the vocabulary:
/// `(feature, row) -> value`.
#[derive(Debug, Default)]
pub(super) struct Overflow(HashMap<(usize, usize), String>);

impl Overflow {
    /// Reads `{feature: [(row, value), ...]}`.
    pub(super) fn read(obj: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut map = HashMap::new();
        if let Some(d) = obj {
            for (k, v) in d.iter() {
                let feature: usize = k.extract()?;
                for item in v.try_iter()? {
                    let (row, value): (usize, String) = item?.extract()?;
                    map.insert((feature, row), clip(value, MAX_VALUE_BYTES));
                }
            }
        }
        Ok(Self(map))
    }
}

/// Prediction columns of a batch, read once from whatever was given.
struct PredColumns {
    /// The widest row.
    width: usize,
    /// Every row's values, concatenated: row r is `values[off[r]..off[r + 1]]`.
    values: Vec<f64>,
    off: Vec<usize>,
    kinds: Vec<PredictionKind>,
    flags: Vec<u32>,
    /// Labels that did not fit the vocabulary, per row (empty: none).
    labels: Vec<Option<Box<Side>>>,
}

impl PredColumns {
    /// Rows of `width` values each.
    fn uniform(width: usize, values: Vec<f64>, kind: PredictionKind) -> Self {
        let n = values.len() / width.max(1);
        Self {
            width,
            off: (0..=n).map(|r| r * width).collect(),
            values,
            kinds: vec![kind; n],
            flags: vec![0; n],
            labels: Vec::new(),
        }
    }

    fn row(&self, r: usize) -> &[f64] {
        &self.values[self.off[r]..self.off[r + 1]]
    }
}

/// How `log_batch` waits for room in the ring (see `Recorder::log_many`).
struct Waiter<'a> {
    pipe: &'a Pipeline,
    block: bool,
    call_deadline: Instant,
}

impl Waiter<'_> {
    /// Tries `try_push` until it lands: however long with `on_full="block"`
    /// (unless the pipeline stops); in drop mode while the drain thread
    /// makes progress and the call's deadline has not passed, else sets
    /// `stalled` and gives up.
    fn push(&self, try_push: &mut dyn FnMut() -> bool, stalled: &mut bool) -> bool {
        let pipe = self.pipe;
        if self.block {
            loop {
                if try_push() {
                    return true;
                }
                if pipe.is_stopping() {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        if try_push() {
            return true;
        }
        // Wait while the drain thread makes room; once it stops making
        // progress, give up on this and the rest.
        let mut progress_at = Instant::now();
        let mut seen = pipe.consumed();
        loop {
            if pipe.is_stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
            if try_push() {
                return true;
            }
            let now_consumed = pipe.consumed();
            if now_consumed != seen {
                seen = now_consumed;
                progress_at = Instant::now();
            } else if progress_at.elapsed() >= BULK_STALL {
                *stalled = true;
                return false;
            }
            if Instant::now() >= self.call_deadline {
                *stalled = true;
                return false;
            }
        }
    }
}

/// Everything `log_batch` read from its arguments, for profiling.
struct BatchRows<'a, 'v> {
    schema: &'a Schema,
    view: &'a XView<'v>,
    preds: &'a PredColumns,
    probs: Option<&'a ArrayView2<'v, f64>>,
    latency: &'a [f64],
    cat_codes: &'a [f64],
    cat_flags: &'a [u32],
    cat_side: &'a [Option<Box<Side>>],
    given_ids: bool,
    unix_nano: u64,
}

/// A batch profiled in the call: its window profile (to push ahead of its
/// rows) and each row's value flags.
struct Prepared {
    /// The batch's window profile in column groups that each fit a ring
    /// slot, with the reference column each starts at.
    parts: Vec<(Option<Box<proto::WindowProfile>>, usize)>,
    row_flags: Vec<u32>,
}

impl Recorder {
    /// Profiles a batch in the caller's call (see `bulk_profile`), or
    /// `None` when the drain thread should profile it record by record: a
    /// small batch, a row that might not fit the ring's side budget (its
    /// fate is decided per row), or a profiler that failed before.
    #[allow(clippy::cast_precision_loss)]
    fn profile_batch(&self, b: &BatchRows<'_, '_>) -> Option<Prepared> {
        let (n, nf) = b.view.dim();
        if n < bulk_profile::MIN_ROWS || self.caller_prof_failed.load(Ordering::Relaxed) {
            return None;
        }
        let schema = b.schema;
        let prob_w = b.probs.map_or(0, |p| p.dim().1);
        if prob_w >= usize::from(u16::MAX) {
            return None;
        }
        let max_side = self.pipe.config().max_record_side_bytes();
        let fixed = std::mem::size_of::<Side>()
            + if b.given_ids { MAX_ID_BYTES + 64 } else { 0 }
            + if prob_w > schema.prob_cap {
                8 * prob_w
            } else {
                0
            };
        for r in 0..n {
            let mut bytes = fixed;
            let prow = b.preds.row(r);
            if prow.len() > schema.out_cap {
                bytes += 8 * prow.len();
            }
            if let Some(s) = b.cat_side.get(r).and_then(Option::as_deref) {
                bytes += s.heap_bytes();
            }
            if let Some(s) = b.preds.labels.get(r).and_then(Option::as_deref) {
                bytes += s.heap_bytes();
            }
            if bytes > max_side {
                return None;
            }
        }
        // A profiler of the pool (or a new one): a call never waits for
        // another thread's profiling.
        let taken = self
            .caller_prof
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut own = taken.unwrap_or_else(|| {
            let compiled = self
                .pipe
                .config()
                .reference
                .clone()
                .unwrap_or_else(|| Arc::new(Compiled::new(proto::Reference::default())));
            let window_ns = u64::try_from(self.pipe.config().window.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
            bulk_profile::CallerProfiler::new(compiled, schema, window_ns)
        });
        let cp = &mut own;
        cp.sync(self.cat_vocabs.get().map(Vec::as_slice), &self.labels);
        let run = std::panic::AssertUnwindSafe(|| {
            let mut w = std::mem::take(cp.prof.window_mut(b.unix_nano));
            let max_part = self.pipe.max_profile_part_bytes();
            let column_bytes = |c: &proto::ColumnProfile| {
                std::mem::size_of::<proto::WindowProfile>()
                    + std::mem::size_of::<proto::ColumnProfile>()
                    + 8 * c.counts.len()
            };
            if w.columns.iter().any(|c| column_bytes(c) > max_part) {
                return None;
            }
            let row_flags = bulk_profile::profile_numeric(b.view, schema, &cp.prof, &mut w.columns);
            *cp.prof.window_mut(b.unix_nano) = w;
            let mut slot = bulk_profile::scratch_slot(schema, prob_w);
            let (out_cap, stride) = (schema.out_cap, slot.values.len());
            let mut none = Vec::new;
            for (r, &value_flags) in row_flags.iter().enumerate() {
                slot.kind = SlotKind::Record;
                slot.unix_nano = b.unix_nano;
                slot.latency_s = b.latency[r];
                slot.prediction_kind = b.preds.kinds[r];
                slot.flags =
                    b.preds.flags[r] | b.cat_flags.get(r).copied().unwrap_or(0) | value_flags;
                for c in 0..nf {
                    if schema.categorical[c] {
                        slot.values[c] = b.cat_codes[r * nf + c];
                    }
                }
                let prow = b.preds.row(r);
                let w = prow.len().min(out_cap);
                slot.values[nf..nf + w].copy_from_slice(&prow[..w]);
                slot.n_outputs = if b.preds.flags[r] & flags::NO_PREDICTION != 0 {
                    0
                } else {
                    u16_len(w)
                };
                slot.n_probabilities = 0;
                if let Some(pv) = b.probs {
                    let prow = pv.row(r);
                    let at = nf + out_cap;
                    for (k, v) in prow.iter().enumerate().take(stride - at) {
                        slot.values[at + k] = *v;
                    }
                    slot.n_probabilities = u16_len(prow.len());
                }
                let cats = b.cat_side.get(r).and_then(Option::as_deref);
                let label = b.preds.labels.get(r).and_then(Option::as_deref);
                slot.side = (cats.is_some() || label.is_some()).then(|| {
                    let mut s = Side::default();
                    for x in cats.into_iter().chain(label) {
                        s.categories.extend(x.categories.iter().cloned());
                    }
                    Box::new(s)
                });
                cp.prof.add_without_numeric_features(&slot, &mut none);
            }
            slot.side = None;
            Some(row_flags)
        });
        let prepared = match std::panic::catch_unwind(run) {
            Ok(Some(row_flags)) => {
                let mut parts = cp.prof.take().into_iter();
                let max_part = self.pipe.max_profile_part_bytes();
                parts.next().and_then(|mut part| {
                    for p in parts {
                        merge_window(&mut part, &p);
                    }
                    let groups = modeltap_core::profile::split_columns(part, max_part)?;
                    Some(Prepared {
                        parts: groups
                            .into_iter()
                            .map(|(g, from)| (Some(Box::new(g)), from))
                            .collect(),
                        row_flags,
                    })
                })
            }
            Ok(None) => {
                cp.prof.take();
                None
            }
            Err(_) => {
                // Off for good: the drain thread profiles from now on.
                self.caller_prof_failed.store(true, Ordering::Relaxed);
                self.pipe.counters.errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let mut pool = self
            .caller_prof
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < bulk_profile::POOL {
            pool.push(own);
        }
        prepared
    }
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

    /// Reads the predictions of a batch into columns.
    fn pred_columns(&self, obj: &Bound<'_, PyAny>, n: usize) -> Result<PredColumns, Reject> {
        let mismatch = |got: usize| Reject(format!("predictions has {got} rows, X has {n}"));
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, f64>>() {
            let v: ArrayView1<'_, f64> = a.as_array();
            if v.len() != n {
                return Err(mismatch(v.len()));
            }
            return Ok(PredColumns::uniform(1, v.to_vec(), PredictionKind::Number));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, i64>>() {
            let v = a.as_array();
            if v.len() != n {
                return Err(mismatch(v.len()));
            }
            #[allow(clippy::cast_precision_loss)]
            let values = v.iter().map(|&i| i as f64).collect();
            return Ok(PredColumns::uniform(1, values, PredictionKind::Int));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'_, f64>>() {
            let v = a.as_array();
            if v.dim().0 != n {
                return Err(mismatch(v.dim().0));
            }
            let width = v.dim().1;
            if width == 0 {
                return Err(Reject("predictions has rows of no values".into()));
            }
            let values = v.iter().copied().collect();
            return Ok(PredColumns::uniform(width, values, PredictionKind::Vector));
        }
        // Anything else (a list of labels, an int32 array, ...): one value at
        // a time through the single-record reader.
        let Ok(it) = obj.try_iter() else {
            return Err(Reject(format!(
                "predictions must be an array or a sequence, not {}",
                type_name(obj)
            )));
        };
        // At most one item more than rows; the first error ends the reading.
        let items: Vec<Bound<'_, PyAny>> = match it.take(n + 1).collect::<PyResult<_>>() {
            Ok(v) => v,
            Err(e) => return Err(Reject(format!("reading the predictions failed: {e}"))),
        };
        if items.len() != n {
            return Err(mismatch(items.len()));
        }
        // Each row read on its own: vectors keep their own width (a shorter
        // one is not padded to the first row's).
        let schema = Schema {
            feature_names: Vec::new(),
            categorical: Vec::new(),
            out_cap: 1,
            prob_cap: 0,
        };
        let mut values = Vec::with_capacity(n);
        let mut off = Vec::with_capacity(n + 1);
        off.push(0);
        let mut kinds = Vec::with_capacity(n);
        let mut fl = Vec::with_capacity(n);
        let mut tmp = Vec::new();
        let mut labels = Vec::with_capacity(n);
        let mut width = 1;
        for item in &items {
            let mut p = Parsed {
                flags: 0,
                kind: PredictionKind::Number,
                n_outputs: 0,
                n_probabilities: 0,
                side: None,
            };
            let mut one = [f64::NAN];
            self.prediction(&schema, item, &mut one, &mut tmp, &mut p);
            let mut side = p.side.take();
            match side.as_mut().and_then(|s| s.outputs.take()) {
                Some(wide) => values.extend(wide),
                None => values.extend_from_slice(&one[..usize::from(p.n_outputs).min(1)]),
            }
            // A label past the vocabulary budget travels beside its record.
            labels.push(side.filter(|s| !s.categories.is_empty()));
            off.push(values.len());
            width = width.max(values.len() - off[off.len() - 2]);
            kinds.push(p.kind);
            fl.push(p.flags);
        }
        Ok(PredColumns {
            width,
            values,
            off,
            kinds,
            flags: fl,
            labels,
        })
    }
}
