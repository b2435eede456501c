//! `Recorder`: the native half of `modeltap.Agent`. One file per job:
//! `single` logs one record (`log`), `bulk/` logs arrays (`log_batch`),
//! `bulk_profile` profiles a large batch in the caller's call, `features`
//! views its feature array, `schema` fixes the feature schema, `vocab`
//! interns categories and labels, `trace/` records spans, `labels` logs
//! ground truth (`log_label`, `log_labels`); `parsed` is a
//! record as read from Python, `text` the text limits and spellings,
//! `failures` what the recorder does with what goes wrong (contained
//! failures, warnings, rejected records), `args` the Python methods'
//! arguments (seconds, outcomes, GPU samples). This file holds the
//! recorder and its Python methods, which only dispatch, among them the
//! exporter's side of the pipeline (`take_batch` / `settle` / counters).
//!
//! Every method runs inside `errors::guard`, so a panic becomes
//! `InternalError` rather than a `BaseException`. After `fork()` the agent
//! points the parent's recorder at the child's (`forward_to`): every method,
//! also through a bound method the user cached before the fork, then acts
//! on the child's recorder.

mod args;
mod bulk;
mod bulk_profile;
mod failures;
mod features;
mod labels;
mod parsed;
mod schema;
mod single;
mod text;
mod trace;
mod vocab;

pub(crate) use text::{clip, type_name, MAX_ID_BYTES};
pub(crate) use trace::{current as current_context, Span, SpanContext};
pub(crate) use vocab::{canonical, float_spelling, is_numpy_bool, MAX_VALUE_BYTES};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use modeltap_core::batch::VocabTarget;
use modeltap_core::pipeline::{Pipeline, PipelineConfig, Take, DEFAULT_BUFFER_BYTES};
use modeltap_core::proto;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::errors::guard;
use crate::request_ids::RequestIds;
use args::{parse_outcome, seconds, GpuTuple};
use parsed::{flag_names, u16_len, Parsed, Reject, PROBLEM_FLAGS};
use text::{hex_py, MAX_ATTRIBUTES, MAX_TEXT_BYTES};
use vocab::Vocab;

/// `RowCategory.feature_index` of a prediction label carried as a string.
pub const LABEL_OVERFLOW: u32 = modeltap_core::profile::LABEL_OVERFLOW_INDEX;

/// The native recorder behind `modeltap.Agent`.
#[pyclass(frozen, module = "modeltap._core")]
pub struct Recorder {
    pipe: Arc<Pipeline>,
    strict: bool,
    block: bool,
    declared: Option<Vec<String>>,
    declared_cat: Vec<String>,
    keys: OnceLock<Vec<Py<PyString>>>,
    /// One vocabulary per categorical feature (None for numeric ones).
    cat_vocabs: OnceLock<Vec<Option<Vocab>>>,
    labels: Vocab,
    /// What the vocabularies may take together.
    vocab_budget: Arc<vocab::VocabBudget>,
    /// Profilers for large `log_batch` calls, one per call at a time (see
    /// `bulk_profile`): a pool, so concurrent calls never wait on each other.
    caller_prof: Mutex<Vec<bulk_profile::CallerProfiler>>,
    /// Set once that profiler failed: batches are profiled by the drain
    /// thread from then on.
    caller_prof_failed: AtomicBool,
    /// The child's recorder, once this one was inherited across `fork()`.
    forward: OnceLock<Py<Recorder>>,
    logger: Py<PyAny>,
    warn_last: AtomicU64,
    warn_suppressed: AtomicU64,
    warn_interval: Duration,
    born: Instant,
    /// Share of traces recorded (head sampling, see `trace`).
    trace_sample_rate: f64,
    /// What the held spans of traces not sampled may take (see `trace`).
    holds: Arc<trace::HoldBudget>,
    /// `capture(stage, "input" | "output", value) -> str | None`: what a
    /// span keeps of a stage's input or output (`Span.set_input`).
    capture: OnceLock<Py<PyAny>>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Stops (and, in the process that started it, joins) the drain thread.
        self.pipe.shutdown();
    }
}

impl Recorder {
    /// The recorder that does the work: this one, or the newest one it was
    /// forwarded to after `fork()`.
    fn live(&self) -> &Self {
        let mut r = self;
        while let Some(next) = r.forward.get() {
            r = next.get();
        }
        r
    }
}

#[pymethods]
impl Recorder {
    /// Creates the recorder and starts its drain thread.
    #[new]
    #[pyo3(signature = (*, model, version, agent_id, params=None, host=String::new(), pid=0,
        start_unix_nano=0, agent_version=String::new(), features=None, categorical=Vec::new(),
        buffer_size=65536, batch_size=4096, flush_interval_s=1.0, max_pending_batches=64,
        on_full="drop", strict=false, warn_interval_s=10.0, reference=None, window_s=60.0,
        sample_rate=1.0, buffer_bytes=DEFAULT_BUFFER_BYTES, trace_sample_rate=1.0))]
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
        buffer_bytes: usize,
        trace_sample_rate: f64,
    ) -> PyResult<Self> {
        guard(|| {
            if !(window_s.is_finite() && window_s > 0.0) {
                return Err(PyValueError::new_err(
                    "window_s must be a positive number of seconds",
                ));
            }
            if !(sample_rate > 0.0 && sample_rate <= 1.0) {
                return Err(PyValueError::new_err("sample_rate must be in (0, 1]"));
            }
            if !(0.0..=1.0).contains(&trace_sample_rate) {
                return Err(PyValueError::new_err("trace_sample_rate must be in [0, 1]"));
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
            if buffer_size > 1 << 30 {
                return Err(PyValueError::new_err("buffer_size must be at most 2**30"));
            }
            if buffer_bytes < 1 << 20 {
                return Err(PyValueError::new_err("buffer_bytes must be at least 1 MiB"));
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
                flush_interval: seconds("flush_interval_s", flush_interval_s)?,
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
                window: seconds("window_s", window_s)?,
                sample_rate,
                max_windows: 1440,
                buffer_bytes,
            };
            let pipe = Pipeline::start(cfg).map_err(|e| {
                pyo3::exceptions::PyOSError::new_err(format!("cannot start the drain thread: {e}"))
            })?;
            let logger = py
                .import("logging")?
                .call_method1("getLogger", ("modeltap",))?
                .unbind();
            let vocab_budget = vocab::VocabBudget::new(pipe.config().vocab_bytes());
            Ok(Self {
                pipe,
                strict,
                block,
                declared: features,
                declared_cat: categorical,
                keys: OnceLock::new(),
                cat_vocabs: OnceLock::new(),
                labels: Vocab::new(VocabTarget::Label, &vocab_budget),
                vocab_budget,
                caller_prof: Mutex::new(Vec::new()),
                caller_prof_failed: AtomicBool::new(false),
                forward: OnceLock::new(),
                logger,
                warn_last: AtomicU64::new(0),
                warn_suppressed: AtomicU64::new(0),
                warn_interval: seconds("warn_interval_s", warn_interval_s)?,
                born: Instant::now(),
                trace_sample_rate,
                holds: Arc::new(trace::HoldBudget::new(buffer_bytes)),
                capture: OnceLock::new(),
            })
        })
    }

    /// Sets the hook spans capture inputs and outputs through (once).
    fn set_capture(&self, hook: Py<PyAny>) -> bool {
        self.capture.set(hook).is_ok()
    }

    /// A span named `name` (see `modeltap.Agent.span`).
    #[pyo3(signature = (name, *, kind="internal", attributes=None, parent=None))]
    fn span(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        kind: &str,
        attributes: Option<Bound<'_, PyAny>>,
        parent: Option<Py<SpanContext>>,
    ) -> PyResult<Span> {
        let attributes = match attributes {
            None => None,
            Some(a) => Some(match a.cast_into::<PyDict>() {
                Ok(d) => d,
                Err(e) => {
                    let a = e.into_inner();
                    let d = PyDict::new(a.py());
                    d.call_method1("update", (a,))?;
                    d
                }
            }),
        };
        let name = match name.cast::<PyString>() {
            // A name that is no valid UTF-8 (a lone surrogate) is kept
            // with replacement characters, never raised.
            Ok(n) => n
                .to_cow()
                .unwrap_or_else(|_| std::borrow::Cow::Owned(n.to_string_lossy().into_owned())),
            Err(_) => std::borrow::Cow::Owned(crate::parse::to_str(name)),
        };
        Span::create(slf.clone().unbind(), &name, kind, attributes, parent)
    }

    /// A span named `name`, started (the inference span of
    /// `Agent.monitor`: one call instead of two).
    fn start_span(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<Span>> {
        let py = slf.py();
        let span = Py::new(
            py,
            Span::create(slf.clone().unbind(), name, "internal", None, None)?,
        )?;
        let me = span.as_ptr();
        span.borrow_mut(py).start_now(py, me)?;
        Ok(span)
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
        let result = guard(|| {
            self.live().log_one(
                py,
                features,
                prediction,
                probabilities,
                latency_s,
                request_id,
                error,
                attributes,
            )
        });
        self.live().contain(py, 1, result, |py| {
            Ok(hex_py(py, modeltap_core::ids::random_u128()).into_any())
        })
    }

    /// Logs a batch of predictions from a 2-D float array; returns the
    /// request ids. See `modeltap.Agent.log_batch`.
    ///
    /// With `coded`, categorical columns of `x` already hold vocabulary
    /// codes (see `intern`); `overflow` then maps a categorical column to
    /// the `(row, value)` pairs whose value did not fit the vocabulary (NaN
    /// code): those travel as strings beside their record.
    #[pyo3(signature = (x, predictions, probabilities=None, *, latency_s=None, request_ids=None,
        coded=false, overflow=None))]
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
        overflow: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<RequestIds> {
        let result = guard(|| {
            let coded = if coded {
                Some(bulk::Overflow::read(overflow)?)
            } else {
                None
            };
            self.live().log_many(
                py,
                x,
                predictions,
                probabilities,
                latency_s,
                request_ids,
                coded.as_ref(),
            )
        });
        // Rows already counted before an internal failure are not counted
        // again.
        let handled = bulk::BULK_HANDLED.with(std::cell::Cell::get);
        let n = (x.len().unwrap_or(1) as u64).saturating_sub(handled);
        self.live()
            .contain(py, n, result, |_| Ok(RequestIds::given(Vec::new())))
    }

    /// Logs the ground truth of an earlier prediction (event time
    /// `unix_nano`, now when None). See `modeltap.Agent.log_label`.
    #[pyo3(signature = (request_id, label, *, unix_nano=None))]
    fn log_label(
        &self,
        py: Python<'_>,
        request_id: &Bound<'_, PyAny>,
        label: &Bound<'_, PyAny>,
        unix_nano: Option<u64>,
    ) -> PyResult<()> {
        let result = guard(|| self.live().log_label_one(py, request_id, label, unix_nano));
        self.live().contain_labels(py, result, ())
    }

    /// Logs many labels; `unix_nano` is None (now), one int or a uint64
    /// array with one time per label (`2**64 - 1`: a time the caller could
    /// not read, refused). Returns how many landed in the ring. See
    /// `modeltap.Agent.log_labels`.
    #[pyo3(signature = (request_ids, labels, *, unix_nano=None))]
    fn log_labels(
        &self,
        py: Python<'_>,
        request_ids: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        unix_nano: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let result = guard(|| {
            self.live()
                .log_label_many(py, request_ids, labels, unix_nano)
        });
        self.live().contain_labels(py, result, 0)
    }

    /// After `fork()`: from now on every method of this recorder acts on
    /// `child` (the recorder the agent made for the child process).
    fn forward_to(&self, child: Py<Recorder>) -> PyResult<()> {
        guard(|| {
            let target = child.get().live() as *const Recorder;
            if std::ptr::eq(target, self) || std::ptr::eq(target, self.live()) {
                return Err(PyValueError::new_err("a recorder cannot forward to itself"));
            }
            self.live()
                .forward
                .set(child)
                .map_err(|_| PyValueError::new_err("recorder already forwarded"))
        })
    }

    /// Rejects `n` records the Python layer found invalid: raises
    /// `InvalidRecord` in strict mode, else counts them and warns.
    #[pyo3(name = "reject")]
    fn reject_records(&self, py: Python<'_>, n: u64, message: &str) -> PyResult<()> {
        guard(|| self.live().reject(py, n, message))
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
        guard(|| {
            let n = names.len();
            self.live()
                .schema_with(py, Some(names), &categorical, n, out_width, prob_width)
                .map(|s| s.feature_names.clone())
                .map_err(|Reject(msg)| PyValueError::new_err(msg))
        })
    }

    /// Vocabulary codes of categorical `values` for feature `feature`
    /// (interning new ones); NaN for missing values and for values past the
    /// vocabulary's capacity.
    #[pyo3(name = "intern")]
    fn intern_values(&self, feature: usize, values: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<f64>> {
        guard(|| {
            let this = self.live();
            let Some(Some(vocab)) = this.cat_vocabs.get().and_then(|d| d.get(feature)) else {
                return Err(PyValueError::new_err(format!(
                    "feature {feature} is not categorical"
                )));
            };
            Ok(values
                .iter()
                .map(|v| {
                    canonical(v)
                        .and_then(|key| vocab.code(&this.pipe, &key))
                        .map_or(f64::NAN, f64::from)
                })
                .collect())
        })
    }

    /// Waits up to `timeout_s` for the next encoded batch:
    /// `(batch_seq, n_records, bytes)`, or `None`.
    fn take_batch<'py>(
        &self,
        py: Python<'py>,
        timeout_s: f64,
    ) -> PyResult<Option<(u64, u64, Bound<'py, PyBytes>)>> {
        guard(|| {
            let timeout = seconds("timeout_s", timeout_s)?;
            let pipe = &self.live().pipe;
            Ok(match py.detach(|| pipe.take_batch(timeout)) {
                Take::Batch(b) => Some((b.seq, b.n_records, PyBytes::new(py, &b.bytes))),
                Take::Timeout | Take::Finished => None,
            })
        })
    }

    /// True once the recorder is shut down and every batch has been taken.
    fn finished(&self) -> PyResult<bool> {
        guard(|| Ok(self.live().pipe.is_finished()))
    }

    /// Reports what became of a batch: "shipped", "spooled",
    /// "dropped_spool" or "discarded".
    fn settle(&self, batch_seq: u64, outcome: &str) -> PyResult<bool> {
        guard(|| Ok(self.live().pipe.settle(batch_seq, parse_outcome(outcome)?)))
    }

    /// Counts `n` records of a spool replay as `outcome` ("shipped" or
    /// "dropped_spool"), moving them out of `spooled`.
    fn unspool(&self, n: u64, outcome: &str) -> PyResult<()> {
        guard(|| {
            self.live().pipe.unspool(n, parse_outcome(outcome)?);
            Ok(())
        })
    }

    /// Counts `n` records (outside the queue) as `outcome`.
    fn count(&self, n: u64, outcome: &str) -> PyResult<()> {
        guard(|| {
            self.live().pipe.count_outcome(parse_outcome(outcome)?, n);
            Ok(())
        })
    }

    /// Counts one of the agent's own failures.
    fn count_error(&self) {
        self.live()
            .pipe
            .counters
            .errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Blocks until every record logged before the call is settled, or
    /// `timeout_s` passes (infinity: no limit). Returns whether everything
    /// was settled.
    fn flush(&self, py: Python<'_>, timeout_s: f64) -> PyResult<bool> {
        guard(|| {
            let t = seconds("timeout_s", timeout_s)?;
            let pipe = &self.live().pipe;
            Ok(py.detach(|| pipe.flush(t)))
        })
    }

    /// Moves everything left in the ring into batches and stops the drain
    /// thread. Logging afterwards counts records as dropped.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        guard(|| {
            let pipe = &self.live().pipe;
            py.detach(|| pipe.shutdown());
            Ok(())
        })
    }

    /// The delivery counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        guard(|| {
            let pipe = &self.live().pipe;
            let holds = &self.live().holds;
            let s = pipe.stats();
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
                ("spans", s.spans),
                ("spans_dropped", s.spans_dropped),
                ("spans_lost", s.spans_lost),
                ("labels", s.labels),
                ("labels_dropped", s.labels_dropped),
                ("side_bytes", pipe.side_used() as u64),
                (
                    "spans_sampled_out",
                    holds.sampled_out.load(Ordering::Relaxed),
                ),
                ("spans_released", holds.released.load(Ordering::Relaxed)),
                ("held_span_bytes", holds.bytes() as u64),
                ("held_traces", holds.traces() as u64),
            ] {
                d.set_item(k, v)?;
            }
            Ok(d)
        })
    }

    /// The drain thread's first internal failure (for instance a profile
    /// that could not be updated), or None.
    fn last_error(&self) -> Option<String> {
        self.live().pipe.last_error()
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
    ) -> PyResult<()> {
        guard(|| {
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
            self.live().pipe.add_system_sample(proto::SystemSample {
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
            Ok(())
        })
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
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        use prost::Message;
        guard(|| {
            Ok(self
                .live()
                .pipe
                .profile(since_unix_nano, until_unix_nano)
                .map(|w| PyBytes::new(py, &w.encode_to_vec())))
        })
    }

    /// Feature names in force (`None` until the first record fixes them).
    #[getter]
    fn feature_names(&self) -> Option<Vec<String>> {
        self.live().pipe.schema().map(|s| s.feature_names.clone())
    }

    /// Categorical feature names in force.
    #[getter]
    fn categorical(&self) -> Vec<String> {
        let this = self.live();
        this.pipe.schema().map_or_else(
            || this.declared_cat.clone(),
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

    /// Ring capacity in slots: `buffer_size` rounded up to a power of two,
    /// and once the schema is fixed, no more than fit `buffer_bytes`.
    #[getter]
    fn capacity(&self) -> usize {
        self.live().pipe.capacity()
    }

    /// The agent id written on every batch.
    #[getter]
    fn agent_id(&self) -> String {
        self.live().pipe.config().model.agent_id.clone()
    }
}
