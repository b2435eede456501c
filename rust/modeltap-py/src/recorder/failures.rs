//! What a recorder does with what goes wrong: an internal failure kept off
//! the inference path, warnings logged at most once an interval, records
//! rejected.

use std::sync::atomic::Ordering;

use pyo3::prelude::*;

use super::Recorder;
use crate::errors::InvalidRecord;

impl Recorder {
    /// Keeps an internal failure (a caught panic) off the inference path:
    /// outside strict mode the `n` records of the call are counted as
    /// discarded, the failure as one of the agent's errors, a warning is
    /// logged and `fallback` is returned.
    pub(super) fn contain<'py, T>(
        &self,
        py: Python<'py>,
        n: u64,
        result: PyResult<T>,
        fallback: impl FnOnce(Python<'py>) -> PyResult<T>,
    ) -> PyResult<T> {
        match result {
            Err(e) if !self.strict && e.is_instance_of::<crate::errors::InternalError>(py) => {
                let c = &self.pipe.counters;
                c.logged.fetch_add(n, Ordering::Relaxed);
                c.discarded.fetch_add(n, Ordering::Relaxed);
                c.errors.fetch_add(1, Ordering::Relaxed);
                self.warn(py, &format!("modeltap failed to record {n} record(s): {e}"));
                fallback(py)
            }
            other => other,
        }
    }

    pub(super) fn warn(&self, py: Python<'_>, msg: &str) {
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
    pub(super) fn reject(&self, py: Python<'_>, n: u64, msg: &str) -> PyResult<()> {
        for _ in 0..n {
            self.pipe.count_invalid();
        }
        if self.strict {
            return Err(InvalidRecord::new_err(msg.to_owned()));
        }
        self.warn(py, &format!("modeltap rejected {n} record(s): {msg}"));
        Ok(())
    }
}
