//! Reading `log_batch`'s predictions into columns, and the categorical
//! values of a coded batch that did not fit the vocabulary.

use std::collections::HashMap;

use modeltap_core::batch::Schema;
use modeltap_core::record::{PredictionKind, Side};
use numpy::ndarray::ArrayView1;
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::recorder::vocab::MAX_VALUE_BYTES;
use crate::recorder::{clip, type_name, Parsed, Recorder, Reject};

/// Categorical values of a coded batch that did not fit the vocabulary:
/// `(feature, row) -> value`.
#[derive(Debug, Default)]
pub(in crate::recorder) struct Overflow(pub(super) HashMap<(usize, usize), String>);

impl Overflow {
    /// Reads `{feature: [(row, value), ...]}`.
    pub(in crate::recorder) fn read(obj: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
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
pub(super) struct PredColumns {
    /// The widest row.
    pub(super) width: usize,
    /// Every row's values, concatenated: row r is `values[off[r]..off[r + 1]]`.
    values: Vec<f64>,
    off: Vec<usize>,
    pub(super) kinds: Vec<PredictionKind>,
    pub(super) flags: Vec<u32>,
    /// Labels that did not fit the vocabulary, per row (empty: none).
    pub(super) labels: Vec<Option<Box<Side>>>,
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

    pub(super) fn row(&self, r: usize) -> &[f64] {
        &self.values[self.off[r]..self.off[r + 1]]
    }
}

impl Recorder {
    /// Reads the predictions of a batch into columns.
    pub(super) fn pred_columns(
        &self,
        obj: &Bound<'_, PyAny>,
        n: usize,
    ) -> Result<PredColumns, Reject> {
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
