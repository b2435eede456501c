//! Labels (ground truth) from Python values: what a label and its request
//! id may be (shared by `Agent.log_label(s)` and the encoder), and
//! `encode_label_batch`, a whole `RecordBatch` of labels for label
//! services that run no agent.

use std::borrow::Cow;
use std::collections::HashMap;

use modeltap_core::ids::parse_hex_u128;
use modeltap_core::pipeline::now_unix_nano;
use modeltap_core::proto;
use numpy::PyReadonlyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyString};

use crate::recorder::{canonical, is_numpy_bool, MAX_ID_BYTES};

/// A label as read from Python: its type decides its kind, as for a
/// prediction (`log`): a float is a number (integral or not), an int or a
/// bool an integer class (`True` is 1), a string a class.
pub(crate) enum LabelValue<'a> {
    Number(f64),
    Int(f64),
    Class(Cow<'a, str>),
}

/// The request id of a label: 32 lowercase hex digits travel as the 16
/// bytes they spell, any other id as text.
pub(crate) enum LabelId {
    Hex(u128),
    Text(String),
}

/// Reads one label; `Err` says why it cannot be one.
pub(crate) fn label_value<'a>(obj: &'a Bound<'_, PyAny>) -> Result<LabelValue<'a>, String> {
    let number = |v: f64| {
        if v.is_finite() {
            Ok(LabelValue::Number(v))
        } else {
            Err(format!("the label {v} is not a finite number"))
        }
    };
    if obj.is_none() {
        return Err("the label is None".into());
    }
    if obj.is_instance_of::<PyBool>() || is_numpy_bool(obj) {
        let one = obj.is_truthy().unwrap_or(false);
        return Ok(LabelValue::Int(if one { 1.0 } else { 0.0 }));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return number(f.value());
    }
    if obj.is_instance_of::<PyInt>() {
        return match obj.extract::<i64>() {
            #[allow(clippy::cast_precision_loss)]
            Ok(i) => Ok(LabelValue::Int(i as f64)),
            Err(_) => Err("the integer label does not fit 64 bits".into()),
        };
    }
    if obj.is_instance_of::<PyString>() {
        return canonical(obj)
            .map(LabelValue::Class)
            .ok_or_else(|| "the label is not a valid string".into());
    }
    // numpy integer scalars have `__index__`, numpy floats `__float__`.
    if let Ok(i) = obj.extract::<i64>() {
        #[allow(clippy::cast_precision_loss)]
        return Ok(LabelValue::Int(i as f64));
    }
    if is_number_scalar(obj) {
        if let Ok(v) = obj.extract::<f64>() {
            return number(v);
        }
    }
    Err(format!(
        "a label must be a class (int, str, bool) or a number (float), not {}",
        crate::recorder::type_name(obj)
    ))
}

/// A float-like scalar (numpy floats, `decimal.Decimal`, ...), not a
/// container that happens to convert (a one-element array).
fn is_number_scalar(obj: &Bound<'_, PyAny>) -> bool {
    !obj.hasattr("__len__").unwrap_or(true)
}

/// Reads one request id (a `str`).
pub(crate) fn label_id(obj: &Bound<'_, PyAny>) -> Result<LabelId, String> {
    match obj.cast::<PyString>() {
        Ok(s) => match s.to_str() {
            Ok(text) => label_id_str(text),
            Err(_) => Err("the request id is not valid UTF-8".into()),
        },
        Err(_) if obj.is_none() => Err("the request id is None".into()),
        Err(_) => Err(format!(
            "a request id must be a str, not {}",
            crate::recorder::type_name(obj)
        )),
    }
}

/// Reads one request id from text: 1 to `MAX_ID_BYTES` bytes.
pub(crate) fn label_id_str(text: &str) -> Result<LabelId, String> {
    if text.is_empty() {
        return Err("the request id is empty".into());
    }
    if text.len() > MAX_ID_BYTES {
        return Err(format!(
            "the request id takes {} bytes, at most {MAX_ID_BYTES}",
            text.len()
        ));
    }
    Ok(match parse_hex_u128(text.as_bytes()) {
        Some(v) if v != 0 => LabelId::Hex(v),
        _ => LabelId::Text(text.to_owned()),
    })
}

/// Times of `n` labels: `None` (now for all), one int, or one per label
/// (a uint64 array or a sequence of ints).
pub(crate) fn label_times(obj: Option<&Bound<'_, PyAny>>, n: usize) -> Result<Vec<u64>, String> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(vec![now_unix_nano(); n]);
    };
    if obj.is_instance_of::<PyInt>() {
        return obj
            .extract::<u64>()
            .map(|t| vec![t; n])
            .map_err(|_| "unix_nano must be in 0..2**64".into());
    }
    let times: Vec<u64> = if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, u64>>() {
        a.as_array().to_vec()
    } else {
        obj.extract::<Vec<u64>>()
            .map_err(|_| "unix_nano must be None, an int or one int in 0..2**64 per label")?
    };
    if times.len() != n {
        return Err(format!(
            "unix_nano holds {} times for {n} labels",
            times.len()
        ));
    }
    Ok(times)
}

/// A whole `RecordBatch` carrying only labels (see `_core.pyi`).
#[pyfunction]
#[pyo3(signature = (agent_id, batch_seq, model, version, request_ids, labels, unix_nano=None))]
#[allow(clippy::too_many_arguments)]
pub fn encode_label_batch<'py>(
    py: Python<'py>,
    agent_id: String,
    batch_seq: u64,
    model: String,
    version: String,
    request_ids: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    unix_nano: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    crate::errors::guard(|| {
        let bad = |i: usize, why: &str| PyValueError::new_err(format!("label {i}: {why}"));
        let ids: Vec<Bound<'py, PyAny>> = request_ids.try_iter()?.collect::<PyResult<_>>()?;
        let values: Vec<Bound<'py, PyAny>> = labels.try_iter()?.collect::<PyResult<_>>()?;
        let n = ids.len();
        if values.len() != n {
            return Err(bad(
                n.min(values.len()),
                &format!("{n} request ids but {} labels", values.len()),
            ));
        }
        if n > modeltap_core::batch::MAX_LABELS {
            return Err(PyValueError::new_err(format!(
                "{n} labels; a batch carries at most {}",
                modeltap_core::batch::MAX_LABELS
            )));
        }
        let times = label_times(unix_nano, n).map_err(PyValueError::new_err)?;
        let mut truth = proto::LabelColumns {
            unix_nano: times,
            request_ids: Vec::with_capacity(16 * n),
            kinds: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            ..Default::default()
        };
        let mut classes: HashMap<String, u32> = HashMap::new();
        for (i, (id, value)) in ids.iter().zip(&values).enumerate() {
            let row = u32::try_from(i).unwrap_or(u32::MAX);
            match label_id(id).map_err(|e| bad(i, &e))? {
                LabelId::Hex(v) => truth.request_ids.extend_from_slice(&v.to_be_bytes()),
                LabelId::Text(t) => {
                    truth.request_ids.extend_from_slice(&[0; 16]);
                    truth
                        .request_id_text
                        .push(proto::RowString { row, value: t });
                }
            }
            let (kind, v) = match label_value(value).map_err(|e| bad(i, &e))? {
                LabelValue::Number(v) => (proto::PredictionKind::Number, v),
                LabelValue::Int(v) => (proto::PredictionKind::Int, v),
                LabelValue::Class(text) => {
                    let next = u32::try_from(classes.len()).unwrap_or(u32::MAX);
                    let code = *classes.entry(text.into_owned()).or_insert_with_key(|t| {
                        truth.classes.push(t.clone());
                        next
                    });
                    (proto::PredictionKind::Label, f64::from(code))
                }
            };
            truth.kinds.push(kind as i32);
            truth.values.push(v);
        }
        let msg = proto::RecordBatch {
            schema_version: modeltap_core::SCHEMA_VERSION,
            agent_id: agent_id.clone(),
            batch_seq,
            model: Some(proto::ModelInfo {
                model,
                version,
                agent_id,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            created_unix_nano: now_unix_nano(),
            truth: Some(truth),
            ..Default::default()
        };
        // What this builds, the decoder must take.
        modeltap_core::batch::validate(&msg).map_err(|e| crate::errors::codec_err(&e))?;
        Ok(PyBytes::new(py, &modeltap_core::encode(&msg)))
    })
}
