//! The feature schema of a recorder: fixed by `features=`, a reference, or
//! the first record, with inline widths capped so that one wide record never
//! sets the width of every slot.

use std::sync::Arc;

use modeltap_core::batch::{Schema, VocabTarget};
use pyo3::prelude::*;
use pyo3::types::PyString;

use super::vocab::Vocab;
use super::{Recorder, Reject};

/// Inline width of the prediction values in a slot; wider predictions
/// travel beside the slot.
pub const INLINE_OUTPUTS: usize = 16;
/// Inline width of the probabilities in a slot (enough for a 1,000-class
/// model); wider ones travel beside the slot.
pub const INLINE_PROBABILITIES: usize = 1_024;
/// Inline probability width when the first record carries none.
const DEFAULT_PROB_CAP: usize = 4;

impl Recorder {
    /// Fixes the schema from the first record when no schema is in force.
    pub(super) fn schema_for(
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
    pub(super) fn schema_with(
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
            out_cap: out_width.clamp(1, INLINE_OUTPUTS),
            prob_cap: prob_width
                .unwrap_or(DEFAULT_PROB_CAP)
                .min(INLINE_PROBABILITIES),
        };
        let s = Arc::clone(
            self.pipe
                .init_schema(schema)
                .map_err(|e| Reject(e.to_string()))?,
        );
        let _ = self.keys.set(
            s.feature_names
                .iter()
                .map(|n| PyString::intern(py, n).unbind())
                .collect(),
        );
        let _ = self.cat_vocabs.set(
            s.categorical
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    c.then(|| {
                        let target = VocabTarget::Feature(u32::try_from(i).unwrap_or(u32::MAX));
                        Vocab::new(target, &self.vocab_budget)
                    })
                })
                .collect(),
        );
        Ok(s)
    }
}
