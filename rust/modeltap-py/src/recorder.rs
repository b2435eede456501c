//! `Recorder`: the native half of `modeltap.Agent`. `log` and `log_batch`
//! copy records into the core's ring; `take_batch` / `settle` are the
//! exporter's side of the pipeline.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use modeltap_core::batch::{Schema, VocabEntry, VocabTarget};
use modeltap_core::ids::{hex_u128, random_u128};
use modeltap_core::pipeline::{now_unix_nano, Outcome, Pipeline, PipelineConfig, Take};
use modeltap_core::proto;
use modeltap_core::record::{flags, PredictionKind, Side, Slot, SlotKind};
use numpy::ndarray::{ArrayView1, ArrayView2};
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::InvalidRecord;
use crate::parse::{check, number, to_str, vector};

/// Distinct values kept per categorical feature (and for string labels);
/// values past this travel as strings beside the record.
const MAX_VOCAB: usize = 65_536;
/// Inline probability width when the first record carries none.
const DEFAULT_PROB_CAP: usize = 4;
/// How long `log_batch` waits for a drain thread that makes no progress
/// before dropping the rest of a batch that does not fit the ring.
const BULK_STALL: Duration = Duration::from_millis(20);
/// `RowCategory.feature_index` of a prediction label carried as a string.
pub const LABEL_OVERFLOW: u32 = u32::MAX;
const PROBLEM_FLAGS: u32 =
    flags::MISSING | flags::NONFINITE | flags::BAD_VALUE | flags::NO_PREDICTION;

thread_local! {
    static SCRATCH: RefCell<(Vec<f64>, Vec<f64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `(index, name, utilization_percent, memory_used, memory_total, temperature_c)`.
type GpuTuple = (u32, String, f64, u64, u64, f64);

/// A record that cannot be accepted, with the reason.
struct Reject(String);

/// The parsed header of one record; its values sit in the scratch row.
struct Parsed {
    flags: u32,
    kind: PredictionKind,
    n_outputs: u16,
    n_probabilities: u16,
    side: Option<Box<Side>>,
}

impl Parsed {
    fn side(&mut self) -> &mut Side {
        self.side.get_or_insert_with(Box::default)
    }
}

fn flag_names(f: u32) -> String {
    let mut v = Vec::new();
    if f & flags::MISSING != 0 {
        v.push("missing or NaN values");
    }
    if f & flags::NONFINITE != 0 {
        v.push("infinite values");
    }
    if f & flags::BAD_VALUE != 0 {
        v.push("non-numeric values where numbers were expected");
    }
    if f & flags::NO_PREDICTION != 0 {
        v.push("no prediction");
    }
    v.join(", ")
}

fn u16_len(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX - 1)
}

/// The native recorder behind `modeltap.Agent`.
#[pyclass(frozen, module = "modeltap._core")]
pub struct Recorder {
    pipe: Arc<Pipeline>,
    strict: bool,
    block: bool,
    declared: Option<Vec<String>>,
    declared_cat: Vec<String>,
    keys: OnceLock<Vec<Py<PyString>>>,
    cat_dicts: OnceLock<Vec<Option<Py<PyDict>>>>,
    labels: Py<PyDict>,
    logger: Py<PyAny>,
    warn_last: AtomicU64,
    warn_suppressed: AtomicU64,
    warn_interval: Duration,
    born: Instant,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Stops (and, in the process that started it, joins) the drain thread.
        self.pipe.shutdown();
    }
}

impl Recorder {
    fn warn(&self, py: Python<'_>, msg: &str) {
        #[allow(clippy::cast_possible_truncation)]
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let last = self.warn_last.load(Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation)]
        let interval = self.warn_interval.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < interval {
            self.warn_suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self
            .warn_last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.warn_suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.warn_suppressed.swap(0, Ordering::Relaxed);
        let text = if suppressed > 0 {
            format!("{msg} ({suppressed} similar problems since the last warning)")
        } else {
            msg.to_owned()
        };
        // Logging must never break the caller; a failing handler is ignored.
        let _ = self.logger.bind(py).call_method1("warning", (text,));
    }

    /// Handles a rejected record: raises in strict mode, else counts and warns.
    fn reject(&self, py: Python<'_>, n: u64, msg: &str) -> PyResult<()> {
        for _ in 0..n {
            self.pipe.count_invalid();
        }
        if self.strict {
            return Err(InvalidRecord::new_err(msg.to_owned()));
        }
        self.warn(py, &format!("modeltap rejected {n} record(s): {msg}"));
        Ok(())
    }

    /// Fixes the schema from the first record when no schema is in force.
    fn schema_for(
        &self,
        py: Python<'_>,
        names: Option<Vec<String>>,
        n_features: usize,
        out_width: usize,
        prob_width: Option<usize>,
    ) -> Result<Arc<Schema>, Reject> {
        self.schema_with(py, names, &[], n_features, out_width, prob_width)
    }

    /// Like `schema_for`, with categorical columns named by the caller too.
    fn schema_with(
        &self,
        py: Python<'_>,
        names: Option<Vec<String>>,
        extra_categorical: &[String],
        n_features: usize,
        out_width: usize,
        prob_width: Option<usize>,
    ) -> Result<Arc<Schema>, Reject> {
        if let Some(s) = self.pipe.schema() {
            return Ok(Arc::clone(s));
        }
        let names = match (&self.declared, names) {
            (Some(d), _) => d.clone(),
            (None, Some(n)) => n,
            (None, None) => (0..n_features).map(|i| format!("f{i}")).collect(),
        };
        let mut categorical = vec![false; names.len()];
        for c in self.declared_cat.iter().chain(extra_categorical) {
            match names.iter().position(|n| n == c) {
                Some(i) => categorical[i] = true,
                None => {
                    return Err(Reject(format!(
                        "categorical feature {c:?} is not among the features {names:?}"
                    )))
                }
            }
        }
        let schema = Schema {
            feature_names: names,
            categorical,
            out_cap: out_width.max(1),
            prob_cap: prob_width.unwrap_or(DEFAULT_PROB_CAP),
        };
        let s = Arc::clone(self.pipe.init_schema(schema));
        let _ = self.keys.set(
            s.feature_names
                .iter()
                .map(|n| PyString::intern(py, n).unbind())
                .collect(),
        );
        let _ = self.cat_dicts.set(
            s.categorical
                .iter()
                .map(|&c| c.then(|| PyDict::new(py).unbind()))
                .collect(),
        );
        Ok(s)
    }

    /// Code of a categorical value (interning it), NaN for missing, or the
    /// value as a string when the vocabulary is full.
    fn category(
        &self,
        py: Python<'_>,
        feature: usize,
        item: &Bound<'_, PyAny>,
        parsed: &mut Parsed,
    ) -> f64 {
        if item.is_none() {
            parsed.flags |= flags::MISSING;
            return f64::NAN;
        }
        let key: Bound<'_, PyAny> = if let Ok(f) = item.cast::<PyFloat>() {
            let v = f.value();
            if v.is_nan() {
                parsed.flags |= flags::MISSING;
                return f64::NAN;
            }
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                #[allow(clippy::cast_possible_truncation)]
                let i = v as i64;
                i.into_pyobject(py)
                    .map_or_else(|_| item.clone(), |b| b.into_any())
            } else {
                item.clone()
            }
        } else {
            item.clone()
        };
        let Some(Some(dict)) = self.cat_dicts.get().and_then(|d| d.get(feature)) else {
            return f64::NAN;
        };
        let target = VocabTarget::Feature(u32::try_from(feature).unwrap_or(u32::MAX));
        match self.intern(py, dict.bind(py), &key, target) {
            Ok(code) => code,
            Err(value) => {
                parsed
                    .side()
                    .categories
                    .push((u32::try_from(feature).unwrap_or(u32::MAX), value));
                f64::NAN
            }
        }
    }

    /// Looks `key` up in `dict`, adding it with the next code when new.
    /// `Err(value)` when the vocabulary is full (or the key is unhashable).
    fn intern(
        &self,
        py: Python<'_>,
        dict: &Bound<'_, PyDict>,
        key: &Bound<'_, PyAny>,
        target: VocabTarget,
    ) -> Result<f64, String> {
        match dict.get_item(key) {
            Ok(Some(code)) => return Ok(code.extract::<f64>().unwrap_or(f64::NAN)),
            Ok(None) => {}
            Err(_) => return Err(to_str(key)),
        }
        let value = to_str(key);
        let n = dict.len();
        if n >= MAX_VOCAB {
            return Err(value);
        }
        let code = u32::try_from(n).unwrap_or(u32::MAX);
        // Announce before the first record with this code is pushed, so the
        // drain thread knows the value when it seals that record's batch.
        self.pipe.announce_vocab(VocabEntry {
            target,
            code,
            value,
        });
        let _ = dict.set_item(key, code);
        let _ = py;
        Ok(f64::from(code))
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
                            self.category(py, i, &v, p)
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
            if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, f64>>() {
                let view = a.as_array();
                if view.len() != nf {
                    return Err(Reject(format!(
                        "expected {nf} features, got an array of {}",
                        view.len()
                    )));
                }
                for (dst, &v) in row[..nf].iter_mut().zip(view.iter()) {
                    *dst = check(v, &mut p.flags);
                }
                return Ok(());
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
                    self.category(py, i, &item, p)
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
            items = it.filter_map(Result::ok).collect();
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
                self.category(py, i, item, p)
            } else {
                number(item, &mut p.flags)
            };
        }
        Ok(())
    }

    /// Reads the prediction into `out` (inline width `schema.out_cap`).
    fn prediction(
        &self,
        py: Python<'_>,
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
            let code = self
                .intern(py, self.labels.bind(py), obj, VocabTarget::Label)
                .unwrap_or_else(|value| {
                    // Label vocabulary full: the label travels as a string.
                    p.side().categories.push((LABEL_OVERFLOW, value));
                    f64::NAN
                });
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
    fn publish(
        &self,
        py: Python<'_>,
        row: &[f64],
        p: &mut Parsed,
        unix_nano: u64,
        request_id: u128,
        latency_s: f64,
    ) {
        let mut side = p.side.take();
        let (flags, kind, n_out, n_prob) = (p.flags, p.kind, p.n_outputs, p.n_probabilities);
        let mut fill = |slot: &mut Slot| {
            slot.kind = SlotKind::Record;
            slot.unix_nano = unix_nano;
            slot.request_id = request_id;
            slot.trace_id = 0;
            slot.span_id = 0;
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
            self.pipe.push(&mut fill);
            return;
        }
        loop {
            if self.pipe.try_push(&mut fill) {
                return;
            }
            if self.pipe.is_stopping() {
                self.pipe.push(|_| {});
                return;
            }
            py.detach(|| std::thread::sleep(Duration::from_micros(50)));
        }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .qualname()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

fn error_parts(obj: &Bound<'_, PyAny>) -> (String, String) {
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

fn hex_py<'py>(py: Python<'py>, id: u128) -> Bound<'py, PyString> {
    let mut buf = [0u8; 32];
    hex_u128(id, &mut buf);
    // Hex digits are ASCII, hence valid UTF-8.
    PyString::new(py, std::str::from_utf8(&buf).unwrap_or_default())
}

/// Prediction columns of a batch, read once from whatever was given.
struct PredColumns {
    width: usize,
    values: Vec<f64>,
    kinds: Vec<PredictionKind>,
    flags: Vec<u32>,
}

#[pymethods]
impl Recorder {
    /// Creates the recorder and starts its drain thread.
    #[new]
    #[pyo3(signature = (*, model, version, agent_id, params=None, host=String::new(), pid=0,
        start_unix_nano=0, agent_version=String::new(), features=None, categorical=Vec::new(),
        buffer_size=65536, batch_size=4096, flush_interval_s=1.0, max_pending_batches=64,
        on_full="drop", strict=false, warn_interval_s=10.0, reference=None, window_s=60.0,
        sample_rate=1.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: String,
        version: String,
        agent_id: String,
        params: Option<HashMap<String, String>>,
        host: String,
        pid: u32,
        start_unix_nano: u64,
        agent_version: String,
        features: Option<Vec<String>>,
        categorical: Vec<String>,
        buffer_size: usize,
        batch_size: usize,
        flush_interval_s: f64,
        max_pending_batches: usize,
        on_full: &str,
        strict: bool,
        warn_interval_s: f64,
        reference: Option<Vec<u8>>,
        window_s: f64,
        sample_rate: f64,
    ) -> PyResult<Self> {
        if !(window_s.is_finite() && window_s > 0.0) {
            return Err(PyValueError::new_err(
                "window_s must be a positive number of seconds",
            ));
        }
        if !(sample_rate > 0.0 && sample_rate <= 1.0) {
            return Err(PyValueError::new_err("sample_rate must be in (0, 1]"));
        }
        let reference = match reference {
            Some(bytes) => Some(Arc::new(modeltap_core::profile::Compiled::new(
                modeltap_core::profile::decode_reference(&bytes)
                    .map_err(|e| crate::errors::ReferenceFormatError::new_err(e.to_string()))?,
            ))),
            None => None,
        };
        let block = match on_full {
            "drop" => false,
            "block" => true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "on_full must be 'drop' or 'block', not {other:?}"
                )))
            }
        };
        if buffer_size < 2 {
            return Err(PyValueError::new_err("buffer_size must be at least 2"));
        }
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        if !(flush_interval_s.is_finite() && flush_interval_s > 0.0) {
            return Err(PyValueError::new_err(
                "flush_interval_s must be a positive number of seconds",
            ));
        }
        if let Some(f) = &features {
            for c in &categorical {
                if !f.contains(c) {
                    return Err(PyValueError::new_err(format!(
                        "categorical feature {c:?} is not among the features {f:?}"
                    )));
                }
            }
        }
        let cfg = PipelineConfig {
            capacity: buffer_size,
            batch_size,
            flush_interval: Duration::from_secs_f64(flush_interval_s),
            max_pending_batches: max_pending_batches.max(1),
            model: proto::ModelInfo {
                model,
                version,
                params: params.unwrap_or_default(),
                host,
                pid,
                agent_id,
                agent_start_unix_nano: start_unix_nano,
                agent_version,
            },
            reference,
            window: Duration::from_secs_f64(window_s),
            sample_rate,
            max_windows: 1440,
        };
        let pipe = Pipeline::start(cfg).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!("cannot start the drain thread: {e}"))
        })?;
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("modeltap",))?
            .unbind();
        Ok(Self {
            pipe,
            strict,
            block,
            declared: features,
            declared_cat: categorical,
            keys: OnceLock::new(),
            cat_dicts: OnceLock::new(),
            labels: PyDict::new(py).unbind(),
            logger,
            warn_last: AtomicU64::new(0),
            warn_suppressed: AtomicU64::new(0),
            warn_interval: Duration::from_secs_f64(warn_interval_s.max(0.0)),
            born: Instant::now(),
        })
    }

    /// Logs one prediction; returns its request id. See `modeltap.Agent.log`.
    #[pyo3(signature = (features, prediction, probabilities=None, *, latency_s=None,
        request_id=None, error=None, attributes=None))]
    #[allow(clippy::too_many_arguments)]
    fn log<'py>(
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
        let (id, given) = match request_id {
            Some(r) if !r.is_none() => (0u128, Some(r.clone())),
            _ => (random_u128(), None),
        };
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
                self.prediction(
                    py,
                    &schema,
                    prediction,
                    &mut feat_out[nf..],
                    &mut tmp,
                    &mut p,
                );
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
                if let Some(g) = &given {
                    p.side().request_id = Some(to_str(g));
                }
                if let Some(e) = error.filter(|x| !x.is_none()) {
                    p.flags |= flags::ERROR;
                    p.side().error = Some(error_parts(e));
                    self.pipe
                        .counters
                        .inference_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Some(a) = attributes.filter(|x| !x.is_none()) {
                    if let Ok(d) = a.cast::<PyDict>() {
                        let side = p.side();
                        for (k, v) in d.iter() {
                            side.attributes.push((to_str(&k), to_str(&v)));
                        }
                    } else {
                        p.flags |= flags::BAD_VALUE;
                    }
                }
                let problems = p.flags & PROBLEM_FLAGS;
                if problems != 0 && self.strict {
                    self.pipe.count_invalid();
                    Err(InvalidRecord::new_err(format!(
                        "record has {}",
                        flag_names(problems)
                    )))
                } else {
                    self.publish(py, &row, &mut p, unix_nano, id, latency);
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

    /// Logs a batch of predictions from a 2-D float array; returns the
    /// request ids. See `modeltap.Agent.log_batch`.
    #[pyo3(signature = (x, predictions, probabilities=None, *, latency_s=None, request_ids=None,
        coded=false))]
    #[allow(clippy::too_many_arguments)]
    fn log_batch<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        predictions: &Bound<'py, PyAny>,
        probabilities: Option<&Bound<'py, PyAny>>,
        latency_s: Option<&Bound<'py, PyAny>>,
        request_ids: Option<&Bound<'py, PyAny>>,
        coded: bool,
    ) -> PyResult<Bound<'py, PyList>> {
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
            self.reject(
                py,
                n.max(1),
                &format!(
                    "log_batch needs a 2-D float32/float64 array, not {}",
                    type_name(x)
                ),
            )?;
            return Ok(PyList::empty(py));
        };
        let (n, nf_in) = view.dim();
        let preds = match self.pred_columns(py, predictions, n) {
            Ok(p) => p,
            Err(Reject(msg)) => {
                self.reject(py, n as u64, &msg)?;
                return Ok(PyList::empty(py));
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
                            return Ok(PyList::empty(py));
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
                return Ok(PyList::empty(py));
            }
        };
        let nf = schema.n_features();
        if nf_in != nf {
            self.reject(
                py,
                n as u64,
                &format!("expected {nf} features per row, got {nf_in}"),
            )?;
            return Ok(PyList::empty(py));
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
                        return Ok(PyList::empty(py));
                    }
                    v
                }
            }
        };
        let given: Option<Vec<String>> = match request_ids.filter(|r| !r.is_none()) {
            None => None,
            Some(r) => {
                let ids: Vec<String> = match r.try_iter() {
                    Ok(it) => it.filter_map(Result::ok).map(|i| to_str(&i)).collect(),
                    Err(_) => Vec::new(),
                };
                if ids.len() != n {
                    self.reject(
                        py,
                        n as u64,
                        &format!("request_ids must hold {n} ids, got {}", ids.len()),
                    )?;
                    return Ok(PyList::empty(py));
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
        if has_cat && coded {
            // Categorical columns already hold vocabulary codes (see
            // `intern`): only missing values need flagging.
            cat_codes = vec![0.0; n * nf];
            cat_side = (0..n).map(|_| None).collect();
            cat_flags = vec![0; n];
            for r in 0..n {
                for (c, &is_cat) in schema.categorical.iter().enumerate() {
                    if is_cat {
                        let v = view.get(r, c);
                        if v.is_nan() {
                            cat_flags[r] |= flags::MISSING;
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
                        let v = view.get(r, c);
                        let item = if v.is_nan() {
                            py.None().into_bound(py)
                        } else {
                            PyFloat::new(py, v).into_any()
                        };
                        cat_codes[r * nf + c] = self.category(py, c, &item, &mut p);
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
                    .map(|()| PyList::empty(py));
            }
        }
        let unix_nano = now_unix_nano();
        let probs_view = probs.as_ref().map(|p| p.as_array());
        let pipe = &self.pipe;
        let block = self.block;
        let out_cap = schema.out_cap;
        let prob_cap = schema.prob_cap;
        let categorical = &schema.categorical;
        let (ids, flagged) = py.detach(|| {
            let mut ids = Vec::with_capacity(n);
            let mut flagged = 0u64;
            let mut stalled = false;
            for r in 0..n {
                let id = if given.is_some() { 0 } else { random_u128() };
                ids.push(id);
                let mut flags = preds.flags[r] | cat_flags.get(r).copied().unwrap_or(0);
                let mut side = cat_side.get_mut(r).and_then(Option::take);
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
                let mut fill = |slot: &mut Slot| {
                    slot.kind = SlotKind::Record;
                    slot.unix_nano = unix_nano;
                    slot.request_id = id;
                    slot.trace_id = 0;
                    slot.span_id = 0;
                    slot.parent_span_id = 0;
                    slot.latency_s = latency[r];
                    slot.prediction_kind = preds.kinds[r];
                    slot.status = 0;
                    let vals = &mut slot.values;
                    for c in 0..nf {
                        vals[c] = if categorical[c] {
                            cat_codes[r * nf + c]
                        } else {
                            check(view.get(r, c), &mut flags)
                        };
                    }
                    let w = preds.width.min(out_cap);
                    vals[nf..nf + w]
                        .copy_from_slice(&preds.values[r * preds.width..r * preds.width + w]);
                    slot.n_outputs = if preds.flags[r] & flags::NO_PREDICTION != 0 {
                        0
                    } else {
                        u16_len(w)
                    };
                    if preds.width > out_cap {
                        slot.n_outputs = 0;
                        side.get_or_insert_with(Box::default).outputs =
                            Some(preds.values[r * preds.width..(r + 1) * preds.width].to_vec());
                    }
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
                };
                if block {
                    while !pipe.try_push(&mut fill) {
                        if pipe.is_stopping() {
                            pipe.push(|_| {});
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(50));
                    }
                } else if stalled || !pipe.try_push(&mut fill) {
                    // A bulk call may wait while the drain thread is making
                    // room; once it stops making progress (the exporter is
                    // stuck), the rest of the batch is dropped without waiting.
                    let mut progress_at = Instant::now();
                    let mut seen = pipe.consumed();
                    loop {
                        if stalled || pipe.is_stopping() {
                            pipe.push(|_| {});
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(50));
                        if pipe.try_push(&mut fill) {
                            break;
                        }
                        let now_consumed = pipe.consumed();
                        if now_consumed != seen {
                            seen = now_consumed;
                            progress_at = Instant::now();
                        } else if progress_at.elapsed() >= BULK_STALL {
                            stalled = true;
                        }
                    }
                }
                if flags & PROBLEM_FLAGS != 0 {
                    flagged += 1;
                }
            }
            (ids, flagged)
        });
        if flagged > 0 {
            self.pipe
                .counters
                .flagged
                .fetch_add(flagged, Ordering::Relaxed);
            self.warn(py, &format!("modeltap kept {flagged} record(s) of a batch with missing, non-finite or bad values"));
        }
        match given {
            Some(g) => PyList::new(py, g),
            None => PyList::new(py, ids.into_iter().map(|id| hex_py(py, id))),
        }
    }

    /// Rejects `n` records the Python layer found invalid: raises
    /// `InvalidRecord` in strict mode, else counts them and warns.
    #[pyo3(name = "reject")]
    fn reject_records(&self, py: Python<'_>, n: u64, message: &str) -> PyResult<()> {
        self.reject(py, n, message)
    }

    /// Fixes the schema (when no record has yet) from feature names and
    /// categorical names; returns the feature names in force.
    #[pyo3(signature = (names, categorical, out_width=1, prob_width=None))]
    fn init_schema(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        categorical: Vec<String>,
        out_width: usize,
        prob_width: Option<usize>,
    ) -> PyResult<Vec<String>> {
        let n = names.len();
        self.schema_with(py, Some(names), &categorical, n, out_width, prob_width)
            .map(|s| s.feature_names.clone())
            .map_err(|Reject(msg)| PyValueError::new_err(msg))
    }

    /// Vocabulary codes of categorical `values` for feature `feature`
    /// (interning new ones); NaN for missing values and for values past the
    /// vocabulary's capacity.
    #[pyo3(name = "intern")]
    fn intern_values(
        &self,
        py: Python<'_>,
        feature: usize,
        values: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<Vec<f64>> {
        let Some(Some(dict)) = self.cat_dicts.get().and_then(|d| d.get(feature)) else {
            return Err(PyValueError::new_err(format!(
                "feature {feature} is not categorical"
            )));
        };
        let target = VocabTarget::Feature(u32::try_from(feature).unwrap_or(u32::MAX));
        Ok(values
            .iter()
            .map(|v| {
                if v.is_none() {
                    f64::NAN
                } else {
                    self.intern(py, dict.bind(py), v, target)
                        .unwrap_or(f64::NAN)
                }
            })
            .collect())
    }

    /// Waits up to `timeout_s` for the next encoded batch:
    /// `(batch_seq, n_records, bytes)`, or `None`.
    fn take_batch<'py>(
        &self,
        py: Python<'py>,
        timeout_s: f64,
    ) -> Option<(u64, u64, Bound<'py, PyBytes>)> {
        let timeout = Duration::from_secs_f64(timeout_s.max(0.0));
        match py.detach(|| self.pipe.take_batch(timeout)) {
            Take::Batch(b) => Some((b.seq, b.n_records, PyBytes::new(py, &b.bytes))),
            Take::Timeout | Take::Finished => None,
        }
    }

    /// True once the recorder is shut down and every batch has been taken.
    fn finished(&self) -> bool {
        self.pipe.is_finished()
    }

    /// Reports what became of a batch: "shipped", "spooled",
    /// "dropped_spool" or "discarded".
    fn settle(&self, batch_seq: u64, outcome: &str) -> PyResult<bool> {
        Ok(self.pipe.settle(batch_seq, parse_outcome(outcome)?))
    }

    /// Counts `n` records of a spool replay as `outcome` ("shipped" or
    /// "dropped_spool"), moving them out of `spooled`.
    fn unspool(&self, n: u64, outcome: &str) -> PyResult<()> {
        self.pipe.unspool(n, parse_outcome(outcome)?);
        Ok(())
    }

    /// Counts `n` records (outside the queue) as `outcome`.
    fn count(&self, n: u64, outcome: &str) -> PyResult<()> {
        self.pipe.count_outcome(parse_outcome(outcome)?, n);
        Ok(())
    }

    /// Counts one of the agent's own failures.
    fn count_error(&self) {
        self.pipe.counters.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Blocks until every record logged before the call is settled, or
    /// `timeout_s` passes. Returns whether everything was settled.
    fn flush(&self, py: Python<'_>, timeout_s: f64) -> bool {
        let t = Duration::from_secs_f64(timeout_s.max(0.0));
        py.detach(|| self.pipe.flush(t))
    }

    /// Moves everything left in the ring into batches and stops the drain
    /// thread. Logging afterwards counts records as dropped.
    fn shutdown(&self, py: Python<'_>) {
        py.detach(|| self.pipe.shutdown());
    }

    /// The delivery counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.pipe.stats();
        let d = PyDict::new(py);
        for (k, v) in [
            ("logged", s.logged),
            ("pending", s.pending),
            ("shipped", s.shipped),
            ("spooled", s.spooled),
            ("dropped_full", s.dropped_full),
            ("dropped_spool", s.dropped_spool),
            ("discarded", s.discarded),
            ("sampled_out", s.sampled_out),
            ("invalid", s.invalid),
            ("flagged", s.flagged),
            ("inference_errors", s.inference_errors),
            ("errors", s.errors),
            ("batches", s.batches),
            ("bytes", s.bytes),
            ("in_ring", s.in_ring),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Queues a system sample for the next batch. `gpus` is `None` when NVML
    /// is not available, else a list of
    /// `(index, name, utilization_percent, memory_used, memory_total, temperature_c)`.
    #[pyo3(signature = (*, unix_nano, process_cpu_percent, rss_bytes, threads,
        system_cpu_percent=f64::NAN, system_memory_used_bytes=0, system_memory_total_bytes=0, gpus=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_system_sample(
        &self,
        unix_nano: u64,
        process_cpu_percent: f64,
        rss_bytes: u64,
        threads: u32,
        system_cpu_percent: f64,
        system_memory_used_bytes: u64,
        system_memory_total_bytes: u64,
        gpus: Option<Vec<GpuTuple>>,
    ) {
        let gpu_available = gpus.is_some();
        let gpus = gpus
            .unwrap_or_default()
            .into_iter()
            .map(|(index, name, util, used, total, temp)| proto::GpuSample {
                index,
                name,
                utilization_percent: util,
                memory_used_bytes: used,
                memory_total_bytes: total,
                temperature_celsius: temp,
            })
            .collect();
        self.pipe.add_system_sample(proto::SystemSample {
            unix_nano,
            process_cpu_percent,
            rss_bytes,
            threads,
            gpu_available,
            gpus,
            system_cpu_percent,
            system_memory_used_bytes,
            system_memory_total_bytes,
        });
    }

    /// The merged profile of this agent's windows starting in
    /// `[since_unix_nano, until_unix_nano)` (encoded `WindowProfile`), or
    /// `None` when there are none. The last 1440 windows are kept.
    #[pyo3(signature = (since_unix_nano=0, until_unix_nano=u64::MAX))]
    fn profile<'py>(
        &self,
        py: Python<'py>,
        since_unix_nano: u64,
        until_unix_nano: u64,
    ) -> Option<Bound<'py, PyBytes>> {
        use prost::Message;
        self.pipe
            .profile(since_unix_nano, until_unix_nano)
            .map(|w| PyBytes::new(py, &w.encode_to_vec()))
    }

    /// Feature names in force (`None` until the first record fixes them).
    #[getter]
    fn feature_names(&self) -> Option<Vec<String>> {
        self.pipe.schema().map(|s| s.feature_names.clone())
    }

    /// Categorical feature names in force.
    #[getter]
    fn categorical(&self) -> Vec<String> {
        self.pipe.schema().map_or_else(
            || self.declared_cat.clone(),
            |s| {
                s.feature_names
                    .iter()
                    .zip(&s.categorical)
                    .filter(|(_, &c)| c)
                    .map(|(n, _)| n.clone())
                    .collect()
            },
        )
    }

    /// Ring capacity in slots (buffer_size rounded up to a power of two).
    #[getter]
    fn capacity(&self) -> usize {
        self.pipe.capacity()
    }

    /// The agent id written on every batch.
    #[getter]
    fn agent_id(&self) -> String {
        self.pipe.config().model.agent_id.clone()
    }
}

fn parse_outcome(s: &str) -> PyResult<Outcome> {
    Ok(match s {
        "shipped" => Outcome::Shipped,
        "spooled" => Outcome::Spooled,
        "dropped_spool" => Outcome::DroppedSpool,
        "discarded" => Outcome::Discarded,
        other => return Err(PyValueError::new_err(format!("unknown outcome {other:?}"))),
    })
}

/// A read-only view of the 2-D feature array, in either float width.
enum XView<'a> {
    F64(ArrayView2<'a, f64>),
    F32(ArrayView2<'a, f32>),
}

impl XView<'_> {
    fn dim(&self) -> (usize, usize) {
        match self {
            Self::F64(a) => a.dim(),
            Self::F32(a) => a.dim(),
        }
    }

    #[inline]
    fn get(&self, r: usize, c: usize) -> f64 {
        match self {
            Self::F64(a) => a[[r, c]],
            Self::F32(a) => f64::from(a[[r, c]]),
        }
    }
}

impl Recorder {
    /// Reads the predictions of a batch into columns.
    fn pred_columns(
        &self,
        py: Python<'_>,
        obj: &Bound<'_, PyAny>,
        n: usize,
    ) -> Result<PredColumns, Reject> {
        let mismatch = |got: usize| Reject(format!("predictions has {got} rows, X has {n}"));
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, f64>>() {
            let v: ArrayView1<'_, f64> = a.as_array();
            if v.len() != n {
                return Err(mismatch(v.len()));
            }
            return Ok(PredColumns {
                width: 1,
                values: v.to_vec(),
                kinds: vec![PredictionKind::Number; n],
                flags: vec![0; n],
            });
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, i64>>() {
            let v = a.as_array();
            if v.len() != n {
                return Err(mismatch(v.len()));
            }
            #[allow(clippy::cast_precision_loss)]
            let values = v.iter().map(|&i| i as f64).collect();
            return Ok(PredColumns {
                width: 1,
                values,
                kinds: vec![PredictionKind::Int; n],
                flags: vec![0; n],
            });
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'_, f64>>() {
            let v = a.as_array();
            if v.dim().0 != n {
                return Err(mismatch(v.dim().0));
            }
            let width = v.dim().1;
            return Ok(PredColumns {
                width,
                values: v.iter().copied().collect(),
                kinds: vec![PredictionKind::Vector; n],
                flags: vec![0; n],
            });
        }
        // Anything else (a list of labels, an int32 array, ...): one value at
        // a time through the single-record reader.
        let Ok(it) = obj.try_iter() else {
            return Err(Reject(format!(
                "predictions must be an array or a sequence, not {}",
                type_name(obj)
            )));
        };
        let items: Vec<Bound<'_, PyAny>> = it.filter_map(Result::ok).collect();
        if items.len() != n {
            return Err(mismatch(items.len()));
        }
        let width = items.first().map_or(1, |i| {
            if i.is_instance_of::<PyString>() {
                1
            } else {
                i.len().unwrap_or(1).max(1)
            }
        });
        let schema = Schema {
            feature_names: Vec::new(),
            categorical: Vec::new(),
            out_cap: width,
            prob_cap: 0,
        };
        let mut values = vec![f64::NAN; n * width];
        let mut kinds = Vec::with_capacity(n);
        let mut fl = Vec::with_capacity(n);
        let mut tmp = Vec::new();
        for (r, item) in items.iter().enumerate() {
            let mut p = Parsed {
                flags: 0,
                kind: PredictionKind::Number,
                n_outputs: 0,
                n_probabilities: 0,
                side: None,
            };
            self.prediction(
                py,
                &schema,
                item,
                &mut values[r * width..(r + 1) * width],
                &mut tmp,
                &mut p,
            );
            if p.side.is_some_and(|s| s.outputs.is_some()) {
                return Err(Reject(format!(
                    "prediction vectors of a batch must all have {width} values"
                )));
            }
            kinds.push(p.kind);
            fl.push(p.flags);
        }
        Ok(PredColumns {
            width,
            values,
            kinds,
            flags: fl,
        })
    }
}
