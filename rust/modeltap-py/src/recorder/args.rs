//! Arguments of the Python methods: seconds, batch outcomes, GPU samples.

use std::time::Duration;

use modeltap_core::pipeline::Outcome;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// `(index, name, utilization_percent, memory_used, memory_total, temperature_c)`.
pub(super) type GpuTuple = (u32, String, f64, u64, u64, f64);

/// Seconds as a `Duration`: negative means zero, anything past a century
/// (infinity included) means "as long as it takes" (a century); NaN is an
/// error.
pub(super) fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    const CENTURY: f64 = 100.0 * 365.25 * 86_400.0;
    if s.is_nan() {
        return Err(PyValueError::new_err(format!(
            "{what} must be a number of seconds, not NaN"
        )));
    }
    Ok(Duration::from_secs_f64(s.clamp(0.0, CENTURY)))
}

pub(super) fn parse_outcome(s: &str) -> PyResult<Outcome> {
    Ok(match s {
        "shipped" => Outcome::Shipped,
        "spooled" => Outcome::Spooled,
        "dropped_spool" => Outcome::DroppedSpool,
        "discarded" => Outcome::Discarded,
        other => return Err(PyValueError::new_err(format!("unknown outcome {other:?}"))),
    })
}
