//! `decode_batch`: a batch's bytes back into numpy columns, for tests,
//! tools and the collector.

use modeltap_core::ids::hex_bytes;
use modeltap_core::proto;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::codec_err;
use crate::recorder::LABEL_OVERFLOW;

fn id_list<'py>(py: Python<'py>, bytes: &[u8], width: usize) -> PyResult<Bound<'py, PyList>> {
    let zero = vec![0u8; width];
    PyList::new(
        py,
        bytes.chunks_exact(width).map(|c| {
            if c == zero.as_slice() {
                None
            } else {
                Some(hex_bytes(c))
            }
        }),
    )
}

/// Row offsets (n + 1) from per-row counts (validated to sum to the values).
fn offsets(counts: &[u32]) -> Vec<usize> {
    let mut off = Vec::with_capacity(counts.len() + 1);
    let mut acc = 0usize;
    off.push(0);
    for &c in counts {
        acc += c as usize;
        off.push(acc);
    }
    off
}

fn to_i64(off: &[usize]) -> Vec<i64> {
    off.iter()
        .map(|&o| i64::try_from(o).unwrap_or(i64::MAX))
        .collect()
}

/// Row vectors as a NaN-padded matrix as wide as the widest row (at least
/// `min_width`), for the convenience form of `decode_batch`.
fn padded(n: usize, values: &[f64], off: &[usize], min_width: usize) -> Array2<f64> {
    let w = off
        .windows(2)
        .map(|p| p[1] - p[0])
        .fold(min_width, usize::max);
    let mut m = Array2::from_elem((n, w), f64::NAN);
    for r in 0..n {
        for (c, &v) in values[off[r]..off[r + 1]].iter().enumerate() {
            m[[r, c]] = v;
        }
    }
    m
}

/// One dictionary-encoded string column: per row an index into the returned
/// values (-1: none). `code_of(row)` gives the row's vocabulary code (NaN:
/// none); `dicts` map codes to values; `over` carries values beside rows.
fn dictionary_column<'a>(
    n: usize,
    dicts: impl Iterator<Item = &'a proto::CategoryDictionary>,
    over: impl Iterator<Item = &'a proto::RowCategory>,
    code_of: impl Fn(usize) -> f64,
) -> (Vec<i32>, Vec<String>) {
    let mut values: Vec<String> = Vec::new();
    let mut index: std::collections::HashMap<u32, i32> = std::collections::HashMap::new();
    for d in dicts {
        for (&code, v) in d.codes.iter().zip(&d.values) {
            index.entry(code).or_insert_with(|| {
                values.push(v.clone());
                i32::try_from(values.len() - 1).unwrap_or(-1)
            });
        }
    }
    let mut codes: Vec<i32> = (0..n)
        .map(|r| {
            let v = code_of(r);
            if v.is_finite() && v >= 0.0 && v <= f64::from(u32::MAX) {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                index.get(&(v as u32)).copied().unwrap_or(-1)
            } else {
                -1
            }
        })
        .collect();
    for o in over {
        if let Some(c) = codes.get_mut(o.row as usize) {
            values.push(o.value.clone());
            *c = i32::try_from(values.len() - 1).unwrap_or(-1);
        }
    }
    (codes, values)
}

/// Each categorical column as (name, per-row index into its values or -1,
/// values).
fn categorical_columns<'b>(
    b: &'b proto::RecordBatch,
    features: &Array2<f64>,
) -> Vec<(&'b str, Vec<i32>, Vec<String>)> {
    let n = b.n_records as usize;
    b.feature_names
        .iter()
        .enumerate()
        .filter(|(i, _)| b.feature_kinds[*i] == proto::FeatureKind::Categorical as i32)
        .map(|(i, name)| {
            let fi = u32::try_from(i).unwrap_or(u32::MAX);
            let dicts = b.categories.iter().filter(|c| c.feature_index == fi);
            let over = b.category_overflow.iter().filter(|o| o.feature_index == fi);
            let (codes, values) = dictionary_column(n, dicts, over, |r| features[[r, i]]);
            (name.as_str(), codes, values)
        })
        .collect()
}

/// Categorical columns as lists of strings (None: missing).
fn categories<'py>(
    b: &proto::RecordBatch,
    features: &Array2<f64>,
    py: Python<'py>,
) -> PyResult<Bound<'py, PyDict>> {
    let cats = PyDict::new(py);
    for (name, codes, values) in categorical_columns(b, features) {
        let col: Vec<Option<&str>> = codes
            .iter()
            .map(|&c| usize::try_from(c).ok().map(|c| values[c].as_str()))
            .collect();
        cats.set_item(name, col)?;
    }
    Ok(cats)
}

fn model_dict<'py>(py: Python<'py>, m: &proto::ModelInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("model", &m.model)?;
    d.set_item("version", &m.version)?;
    d.set_item("params", m.params.clone())?;
    d.set_item("host", &m.host)?;
    d.set_item("pid", m.pid)?;
    d.set_item("agent_id", &m.agent_id)?;
    d.set_item("agent_start_unix_nano", m.agent_start_unix_nano)?;
    d.set_item("agent_version", &m.agent_version)?;
    Ok(d)
}

fn system_list<'py>(
    py: Python<'py>,
    samples: &[proto::SystemSample],
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for s in samples {
        let d = PyDict::new(py);
        d.set_item("unix_nano", s.unix_nano)?;
        d.set_item("process_cpu_percent", s.process_cpu_percent)?;
        d.set_item("rss_bytes", s.rss_bytes)?;
        d.set_item("threads", s.threads)?;
        d.set_item("system_cpu_percent", s.system_cpu_percent)?;
        d.set_item("system_memory_used_bytes", s.system_memory_used_bytes)?;
        d.set_item("system_memory_total_bytes", s.system_memory_total_bytes)?;
        if s.gpu_available {
            let gpus = PyList::empty(py);
            for g in &s.gpus {
                let gd = PyDict::new(py);
                gd.set_item("index", g.index)?;
                gd.set_item("name", &g.name)?;
                gd.set_item("utilization_percent", g.utilization_percent)?;
                gd.set_item("memory_used_bytes", g.memory_used_bytes)?;
                gd.set_item("memory_total_bytes", g.memory_total_bytes)?;
                gd.set_item("temperature_celsius", g.temperature_celsius)?;
                gpus.append(gd)?;
            }
            d.set_item("gpus", gpus)?;
        }
        out.append(d)?;
    }
    Ok(out)
}

fn spans_dict<'py>(py: Python<'py>, s: &proto::SpanColumns) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("trace_ids", id_list(py, &s.trace_ids, 16)?)?;
    d.set_item("span_ids", id_list(py, &s.span_ids, 8)?)?;
    d.set_item("parent_span_ids", id_list(py, &s.parent_span_ids, 8)?)?;
    let names: Vec<&str> = s
        .name_codes
        .iter()
        .map(|&c| s.names[c as usize].as_str())
        .collect();
    d.set_item("names", names)?;
    d.set_item(
        "start_unix_nano",
        s.start_unix_nano.clone().into_pyarray(py),
    )?;
    d.set_item("duration_nano", s.duration_nano.clone().into_pyarray(py))?;
    d.set_item("status", s.status.clone().into_pyarray(py))?;
    let mut req: Vec<Option<String>> = vec![None; s.start_unix_nano.len()];
    for r in &s.request_ids {
        if let Some(slot) = req.get_mut(r.row as usize) {
            *slot = Some(r.value.clone());
        }
    }
    d.set_item("request_ids", req)?;
    let n = s.start_unix_nano.len();
    let kinds: Vec<u32> = if s.kinds.len() == n {
        s.kinds.clone()
    } else {
        vec![1; n]
    };
    d.set_item("kinds", kinds.into_pyarray(py))?;
    let mut error_types: Vec<Option<&str>> = vec![None; n];
    let mut error_messages: Vec<Option<&str>> = vec![None; n];
    for e in &s.errors {
        let r = e.row as usize;
        if r < n {
            error_types[r] = Some(e.r#type.as_str());
            error_messages[r] = Some(e.message.as_str());
        }
    }
    d.set_item("error_types", error_types)?;
    d.set_item("error_messages", error_messages)?;
    let attributes = pyo3::types::PyList::new(py, (0..n).map(|_| py.None()))?;
    for a in &s.attributes {
        if (a.row as usize) < n {
            let m = PyDict::new(py);
            let mut keys: Vec<_> = a.attributes.iter().collect();
            keys.sort();
            for (k, v) in keys {
                m.set_item(k, v)?;
            }
            attributes.set_item(a.row as usize, m)?;
        }
    }
    d.set_item("attributes", attributes)?;
    let mut states: Vec<Option<&str>> = vec![None; n];
    for t in &s.trace_states {
        if let Some(slot) = states.get_mut(t.row as usize) {
            *slot = Some(t.value.as_str());
        }
    }
    d.set_item("trace_states", states)?;
    Ok(d)
}

/// The label columns of a batch as a dict (see `decode_batch`).
fn truth_dict<'py>(
    py: Python<'py>,
    t: &proto::LabelColumns,
    columns: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let n = t.unix_nano.len();
    let d = PyDict::new(py);
    d.set_item("unix_nano", t.unix_nano.clone().into_pyarray(py))?;
    let code = |v: f64| -> i32 {
        // Validated: an integral code below the number of classes.
        #[allow(clippy::cast_possible_truncation)]
        let c = v as i32;
        c
    };
    if columns {
        // Every id spelled into one buffer (Arrow's string layout: offsets
        // and bytes), 16-byte ids as their 32 hex digits: no Python object
        // per label.
        let mut text: Vec<Option<&str>> = vec![None; n];
        for r in &t.request_id_text {
            if let Some(slot) = text.get_mut(r.row as usize) {
                *slot = Some(r.value.as_str());
            }
        }
        let mut offsets: Vec<i64> = Vec::with_capacity(n + 1);
        let mut data: Vec<u8> = Vec::with_capacity(32 * n);
        offsets.push(0);
        for (r, c) in t.request_ids.chunks_exact(16).enumerate() {
            match text.get(r).copied().flatten() {
                Some(id) => data.extend_from_slice(id.as_bytes()),
                None => {
                    let mut buf = [0u8; 32];
                    modeltap_core::ids::hex_u128(
                        u128::from_be_bytes(c.try_into().unwrap_or([0; 16])),
                        &mut buf,
                    );
                    data.extend_from_slice(&buf);
                }
            }
            #[allow(clippy::cast_possible_wrap)]
            offsets.push(data.len() as i64);
        }
        d.set_item("request_id_offsets", offsets.into_pyarray(py))?;
        d.set_item("request_id_data", PyBytes::new(py, &data))?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let kinds: Vec<u8> = t.kinds.iter().map(|&k| k.clamp(0, 2) as u8).collect();
        d.set_item("kind", kinds.into_pyarray(py))?;
        let values: Vec<f64> = t
            .kinds
            .iter()
            .zip(&t.values)
            .map(|(&k, &v)| if k == 2 { f64::NAN } else { v })
            .collect();
        d.set_item("values", values.into_pyarray(py))?;
        let codes: Vec<i32> = t
            .kinds
            .iter()
            .zip(&t.values)
            .map(|(&k, &v)| if k == 2 { code(v) } else { -1 })
            .collect();
        d.set_item("label_codes", codes.into_pyarray(py))?;
        d.set_item("label_values", t.classes.clone())?;
    } else {
        let mut ids: Vec<String> = t.request_ids.chunks_exact(16).map(hex_bytes).collect();
        for r in &t.request_id_text {
            ids[r.row as usize].clone_from(&r.value);
        }
        d.set_item("request_ids", ids)?;
        let labels = PyList::empty(py);
        for (&k, &v) in t.kinds.iter().zip(&t.values) {
            match k {
                #[allow(clippy::cast_possible_truncation)]
                1 => labels.append(v as i64)?,
                2 => labels.append(usize::try_from(code(v)).ok().map(|c| &t.classes[c]))?,
                _ => labels.append(v)?,
            }
        }
        d.set_item("labels", labels)?;
    }
    Ok(d)
}

/// Decodes a batch into a dict of numpy columns and lists.
///
/// Keys: `schema_version`, `agent_id`, `batch_seq`, `created_unix_nano`,
/// `model` (dict), `feature_names`, `feature_kinds` ("numeric" /
/// "categorical"), `n_records`, `timestamp_unix_nano` (uint64),
/// `request_ids` (list of str), `features` (float64, n x features; codes for
/// categorical features), `categories` ({feature: list of str or None}),
/// `prediction_kind` (list of "number" / "int" / "label" / "vector"),
/// `predictions` (float64, n x outputs; codes for labels), `labels` (list of
/// str or None), `probabilities` (float64, n x k, NaN where absent),
/// `probability_count` (uint32), `latency_s` (float64, NaN where absent),
/// `flags` (uint32), `trace_ids` / `span_ids` (list of hex str or None),
/// `errors` (list of (row, type, message)), `attributes` ({row: dict}),
/// `system` (list of dicts; `gpus` present only where NVML was available),
/// `spans` (dict of columns, or None), `agent_counters` (dict, or None),
/// `truth` (the labels: None when the batch has none, else a dict of
/// `request_ids` (list of str), `labels` (list: float for a number, int
/// for an integer class, str for a class) and `unix_nano` (uint64)).
///
/// Raises `BatchDecodeError` for bytes that are not a valid batch and
/// `UnsupportedSchemaVersion` for batches of a newer format.
///
/// With `columns=True` (the collector's form) the result has no per-row
/// Python objects and no padding, so it stays proportional to the message:
/// `request_ids` becomes `request_id_hex` (bytes, 32 hex digits a row) plus
/// `request_id_text` (list of (row, id) for caller-given ids); `trace_ids` /
/// `span_ids` become `trace_id_hex` / `span_id_hex` (bytes, or None when no
/// row has one) with `trace_id_valid` / `span_id_valid` (bool arrays);
/// `prediction_kind` becomes a uint8 array of codes (0 number, 1 int, 2
/// label, 3 vector); predictions and probabilities come as
/// `prediction_values` / `probability_values` (float64, flat) with
/// `prediction_offsets` / `probability_offsets` (int64, n + 1: row r holds
/// `values[off[r]:off[r + 1]]`); categorical columns as `category_codes`
/// ({feature: int32 array, -1 missing}) indexing `category_values`
/// ({feature: list of str}); labels as `label_codes` (int32, -1 none)
/// indexing `label_values`. `predictions`, `probabilities`, `categories` and
/// `labels` are absent in this form. `truth` then holds `unix_nano`
/// (uint64), every id spelled as Arrow strings are (`request_id_offsets`,
/// int64, n + 1, into `request_id_data`, bytes; 16-byte ids as their 32 hex
/// digits), `kind` (uint8: 0 number, 1 int, 2 label), `values` (float64, NaN
/// for label rows), `label_codes` (int32, -1 for number and int rows)
/// indexing `label_values` (list of str).
#[pyfunction]
#[pyo3(signature = (data, *, columns=false))]
pub fn decode_batch<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    columns: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let bytes = data.as_bytes();
    let b = py
        .detach(|| modeltap_core::decode(bytes))
        .map_err(|e| codec_err(&e))?;
    let n = b.n_records as usize;
    let nf = b.feature_names.len();
    let d = PyDict::new(py);
    d.set_item("schema_version", b.schema_version)?;
    d.set_item("agent_id", &b.agent_id)?;
    d.set_item("batch_seq", b.batch_seq)?;
    d.set_item("created_unix_nano", b.created_unix_nano)?;
    match &b.model {
        Some(m) => d.set_item("model", model_dict(py, m)?)?,
        None => d.set_item("model", py.None())?,
    }
    d.set_item("feature_names", b.feature_names.clone())?;
    let kinds: Vec<&str> = b
        .feature_kinds
        .iter()
        .map(|&k| {
            if k == proto::FeatureKind::Categorical as i32 {
                "categorical"
            } else {
                "numeric"
            }
        })
        .collect();
    d.set_item("feature_kinds", kinds)?;
    d.set_item("n_records", n)?;
    d.set_item(
        "timestamp_unix_nano",
        b.timestamp_unix_nano.clone().into_pyarray(py),
    )?;

    if columns {
        let mut hex = vec![0u8; 32 * n];
        for (r, c) in b.request_ids.chunks_exact(16).enumerate() {
            let mut buf = [0u8; 32];
            modeltap_core::ids::hex_u128(
                u128::from_be_bytes(c.try_into().unwrap_or([0; 16])),
                &mut buf,
            );
            hex[32 * r..32 * r + 32].copy_from_slice(&buf);
        }
        d.set_item("request_id_hex", PyBytes::new(py, &hex))?;
        let text: Vec<(u32, String)> = b
            .request_id_text
            .iter()
            .map(|r| (r.row, r.value.clone()))
            .collect();
        d.set_item("request_id_text", text)?;
        for (key, ids, width) in [
            ("trace_id", &b.trace_ids, 16usize),
            ("span_id", &b.span_ids, 8),
        ] {
            let valid: Vec<bool> = ids
                .chunks_exact(width)
                .map(|c| c.iter().any(|&x| x != 0))
                .collect();
            if valid.iter().any(|&v| v) {
                let hex: String = ids.chunks_exact(width).map(hex_bytes).collect();
                d.set_item(format!("{key}_hex"), PyBytes::new(py, hex.as_bytes()))?;
                d.set_item(format!("{key}_valid"), valid.into_pyarray(py))?;
            } else {
                d.set_item(format!("{key}_hex"), py.None())?;
                d.set_item(format!("{key}_valid"), py.None())?;
            }
        }
    }
    if !columns {
        let mut req: Vec<Option<String>> = b
            .request_ids
            .chunks_exact(16)
            .map(|c| {
                if c.iter().all(|&x| x == 0) {
                    None
                } else {
                    Some(hex_bytes(c))
                }
            })
            .collect();
        for r in &b.request_id_text {
            req[r.row as usize] = Some(r.value.clone());
        }
        d.set_item("request_ids", req)?;
    }

    let features = Array2::from_shape_vec((n, nf), b.features.clone())
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    if columns {
        let codes = PyDict::new(py);
        let values = PyDict::new(py);
        for (name, c, v) in categorical_columns(&b, &features) {
            codes.set_item(name, c.into_pyarray(py))?;
            values.set_item(name, v)?;
        }
        d.set_item("category_codes", codes)?;
        d.set_item("category_values", values)?;
    } else {
        d.set_item("categories", categories(&b, &features, py)?)?;
    }
    d.set_item("features", features.into_pyarray(py))?;

    let pred_off = offsets(&b.prediction_count);
    let prob_off = offsets(&b.probability_count);
    let first = |r: usize| {
        if pred_off[r + 1] > pred_off[r] {
            b.predictions[pred_off[r]]
        } else {
            f64::NAN
        }
    };
    let label_rows = b.labels.iter();
    let label_over = b
        .category_overflow
        .iter()
        .filter(|o| o.feature_index == LABEL_OVERFLOW);
    let (label_codes, label_values) = dictionary_column(n, label_rows, label_over, |r| {
        if b.prediction_kind[r] == 2 {
            first(r)
        } else {
            f64::NAN
        }
    });
    if columns {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let kinds: Vec<u8> = b
            .prediction_kind
            .iter()
            .map(|&k| k.clamp(0, 3) as u8)
            .collect();
        d.set_item("prediction_kind", kinds.into_pyarray(py))?;
        d.set_item("label_codes", label_codes.into_pyarray(py))?;
        d.set_item("label_values", label_values)?;
        d.set_item("prediction_values", b.predictions.clone().into_pyarray(py))?;
        d.set_item("prediction_offsets", to_i64(&pred_off).into_pyarray(py))?;
        d.set_item(
            "probability_values",
            b.probabilities.clone().into_pyarray(py),
        )?;
        d.set_item("probability_offsets", to_i64(&prob_off).into_pyarray(py))?;
    } else {
        let pk: Vec<&str> = b
            .prediction_kind
            .iter()
            .map(|&k| match k {
                1 => "int",
                2 => "label",
                3 => "vector",
                _ => "number",
            })
            .collect();
        d.set_item("prediction_kind", pk)?;
        let labels: Vec<Option<&str>> = label_codes
            .iter()
            .map(|&c| usize::try_from(c).ok().map(|c| label_values[c].as_str()))
            .collect();
        d.set_item("labels", labels)?;
        let preds = padded(n, &b.predictions, &pred_off, 1);
        if preds.ncols() == 1 {
            d.set_item("predictions", preds.column(0).to_owned().into_pyarray(py))?;
        } else {
            d.set_item("predictions", preds.into_pyarray(py))?;
        }
        let probs = padded(n, &b.probabilities, &prob_off, 0);
        d.set_item("probabilities", probs.into_pyarray(py))?;
    }
    d.set_item(
        "probability_count",
        b.probability_count.clone().into_pyarray(py),
    )?;
    d.set_item("latency_s", PyArray1::from_vec(py, b.latency_s.clone()))?;
    d.set_item("flags", b.flags.clone().into_pyarray(py))?;
    if !columns {
        d.set_item("trace_ids", id_list(py, &b.trace_ids, 16)?)?;
        d.set_item("span_ids", id_list(py, &b.span_ids, 8)?)?;
    }
    let errors: Vec<(u32, String, String)> = b
        .errors
        .iter()
        .map(|e| (e.row, e.r#type.clone(), e.message.clone()))
        .collect();
    d.set_item("errors", errors)?;
    let attrs = PyDict::new(py);
    for a in &b.attributes {
        attrs.set_item(a.row, a.attributes.clone())?;
    }
    d.set_item("attributes", attrs)?;
    d.set_item("system", system_list(py, &b.system)?)?;
    match &b.agent_counters {
        Some(c) => {
            let m = PyDict::new(py);
            for (k, v) in [
                ("logged", c.logged),
                ("dropped_full", c.dropped_full),
                ("dropped_spool", c.dropped_spool),
                ("discarded", c.discarded),
                ("invalid", c.invalid),
                ("sampled_out", c.sampled_out),
                ("errors", c.errors),
                ("spans", c.spans),
                ("spans_dropped", c.spans_dropped),
                ("spans_lost", c.spans_lost),
                ("labels", c.labels),
                ("labels_dropped", c.labels_dropped),
            ] {
                m.set_item(k, v)?;
            }
            d.set_item("agent_counters", m)?;
        }
        None => d.set_item("agent_counters", py.None())?,
    }
    let profiles = PyList::empty(py);
    for w in &b.profiles {
        use prost::Message;
        profiles.append((
            w.window_start_unix_nano,
            w.window_nano,
            w.records,
            PyBytes::new(py, &w.encode_to_vec()),
        ))?;
    }
    d.set_item("profiles", profiles)?;
    match &b.spans {
        Some(s) => d.set_item("spans", spans_dict(py, s)?)?,
        None => d.set_item("spans", py.None())?,
    }
    match b.truth.as_ref().filter(|t| !t.unix_nano.is_empty()) {
        Some(t) => d.set_item("truth", truth_dict(py, t, columns)?)?,
        None => d.set_item("truth", py.None())?,
    }
    Ok(d)
}

/// Encodes the collector's `ExportResponse`.
#[pyfunction]
pub fn encode_export_response<'py>(
    py: Python<'py>,
    accepted: bool,
    duplicate: bool,
    n_records: u32,
) -> Bound<'py, PyBytes> {
    use prost::Message;
    let msg = proto::ExportResponse {
        accepted,
        duplicate,
        n_records,
    };
    PyBytes::new(py, &msg.encode_to_vec())
}

/// Decodes an `ExportResponse` into `(accepted, duplicate, n_records)`.
#[pyfunction]
pub fn decode_export_response(data: &[u8]) -> PyResult<(bool, bool, u32)> {
    use prost::Message;
    let m = proto::ExportResponse::decode(data).map_err(|e| {
        crate::errors::BatchDecodeError::new_err(format!("malformed ExportResponse: {e}"))
    })?;
    Ok((m.accepted, m.duplicate, m.n_records))
}

/// Encodes a `ReferenceUpload`.
#[pyfunction]
pub fn encode_reference_upload<'py>(
    py: Python<'py>,
    model: String,
    version: String,
    reference: Vec<u8>,
) -> Bound<'py, PyBytes> {
    use prost::Message;
    let m = proto::ReferenceUpload {
        model,
        version,
        reference,
    };
    PyBytes::new(py, &m.encode_to_vec())
}

/// Decodes a `ReferenceUpload` into `(model, version, reference_bytes)`.
#[pyfunction]
pub fn decode_reference_upload<'py>(
    py: Python<'py>,
    data: &[u8],
) -> PyResult<(String, String, Bound<'py, PyBytes>)> {
    use prost::Message;
    let m = proto::ReferenceUpload::decode(data).map_err(|e| {
        crate::errors::BatchDecodeError::new_err(format!("malformed ReferenceUpload: {e}"))
    })?;
    Ok((m.model, m.version, PyBytes::new(py, &m.reference)))
}

/// Encodes a `DriftRequest`.
#[pyfunction]
#[pyo3(signature = (model, version, from_unix_nano, to_unix_nano, rules=Vec::new()))]
pub fn encode_drift_request<'py>(
    py: Python<'py>,
    model: String,
    version: String,
    from_unix_nano: u64,
    to_unix_nano: u64,
    rules: Vec<String>,
) -> Bound<'py, PyBytes> {
    use prost::Message;
    let m = proto::DriftRequest {
        model,
        version,
        from_unix_nano,
        to_unix_nano,
        rules,
    };
    PyBytes::new(py, &m.encode_to_vec())
}

/// Decodes a `DriftRequest` into `(model, version, from, to, rules)`.
#[pyfunction]
pub fn decode_drift_request(data: &[u8]) -> PyResult<(String, String, u64, u64, Vec<String>)> {
    use prost::Message;
    let m = proto::DriftRequest::decode(data).map_err(|e| {
        crate::errors::BatchDecodeError::new_err(format!("malformed DriftRequest: {e}"))
    })?;
    Ok((
        m.model,
        m.version,
        m.from_unix_nano,
        m.to_unix_nano,
        m.rules,
    ))
}

/// Encodes a one-string-field response (`RegisterResponse` or
/// `DriftResponse`: both carry their text in field 1).
#[pyfunction]
pub fn encode_text_response<'py>(py: Python<'py>, text: String) -> Bound<'py, PyBytes> {
    use prost::Message;
    let m = proto::DriftResponse { report_json: text };
    PyBytes::new(py, &m.encode_to_vec())
}

/// Encodes one piece of a Query's answer (`QueryChunk`): Arrow IPC bytes.
#[pyfunction]
pub fn encode_query_chunk<'py>(py: Python<'py>, arrow_ipc: &[u8]) -> Bound<'py, PyBytes> {
    use prost::Message;
    let m = proto::QueryChunk {
        arrow_ipc: arrow_ipc.to_vec(),
    };
    PyBytes::new(py, &m.encode_to_vec())
}

/// Decodes one piece of a Query's answer: its Arrow IPC bytes.
#[pyfunction]
pub fn decode_query_chunk<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    use prost::Message;
    let m = proto::QueryChunk::decode(data).map_err(|e| {
        crate::errors::BatchDecodeError::new_err(format!("malformed QueryChunk: {e}"))
    })?;
    Ok(PyBytes::new(py, &m.arrow_ipc))
}

/// Decodes a one-string-field response.
#[pyfunction]
pub fn decode_text_response(data: &[u8]) -> PyResult<String> {
    use prost::Message;
    let m = proto::DriftResponse::decode(data).map_err(|e| {
        crate::errors::BatchDecodeError::new_err(format!("malformed response: {e}"))
    })?;
    Ok(m.report_json)
}
