//! The drain thread's profiler: window profiles of an agent's records,
//! built against a compiled reference.

use std::collections::HashMap;
use std::sync::Arc;

use super::categorical::add_category;
use super::compiled::Compiled;
use super::latency::{latency_bucket, stage_entry, MAX_STAGE_NAME};
use super::merge::{merge_column, merge_totals, merge_window};
use super::numeric::add_numeric_binned;
use super::validate::Shape;
use super::Binner;
use super::MAX_VOCAB_CODES;
use crate::proto;

/// Builds the window profiles of an agent's records on its drain thread.
/// Each record updates the profile of its event-time window; `take` hands
/// over what was added since the last call (parts of windows, which merge).
#[derive(Debug)]
pub struct Profiler {
    compiled: Arc<Compiled>,
    window_ns: u64,
    /// Per schema feature: the reference column it feeds.
    feature_cols: Vec<Option<usize>>,
    /// Per schema feature: agent category code → bucket.
    cat_maps: Vec<Vec<u32>>,
    label_map: Vec<u32>,
    pred_col: Option<usize>,
    prob_cols: Vec<(usize, usize)>,
    /// Integer predictions → bucket, for a categorical prediction column:
    /// filled once from the reference's categories that are integers, so
    /// it never holds more entries than the reference has categories (any
    /// other integer is "other" or "unseen", `int_miss`), however many
    /// distinct integers the model predicts.
    int_buckets: HashMap<i64, usize>,
    /// The bucket of an integer prediction that is no category.
    int_miss: usize,
    /// (feature, column) of numeric feature columns, for the hot loop.
    numeric_features: Vec<(usize, usize)>,
    /// (feature, column) of categorical feature columns.
    categorical_features: Vec<(usize, usize)>,
    current: usize,
    numeric: Vec<bool>,
    windows: Vec<proto::WindowProfile>,
    n_features: usize,
    out_cap: usize,
    learned: Vec<crate::schema::VocabEntry>,
}

const UNMAPPED: u32 = u32::MAX;

/// `RowCategory.feature_index` of a prediction label carried as a string
/// (past the vocabulary budget).
pub const LABEL_OVERFLOW_INDEX: u32 = u32::MAX;

impl Profiler {
    /// A profiler for records of `schema` against `compiled`. Columns that
    /// failed the reference checks ([`Compiled::shape`] is `None`) are not
    /// profiled.
    pub fn new(compiled: Arc<Compiled>, schema: &crate::schema::Schema, window_ns: u64) -> Self {
        let r = &compiled.reference;
        let valid = |i: usize| compiled.shape(i).is_some();
        let feature_cols: Vec<Option<usize>> =
            schema
                .feature_names
                .iter()
                .map(|n| {
                    compiled.by_name.get(n).copied().filter(|&i| {
                        valid(i) && r.columns[i].role == proto::ColumnRole::Feature as i32
                    })
                })
                .collect();
        let pred_col = r
            .columns
            .iter()
            .enumerate()
            .position(|(i, c)| valid(i) && c.role == proto::ColumnRole::Prediction as i32);
        let prob_cols = r
            .columns
            .iter()
            .enumerate()
            .filter(|&(i, c)| valid(i) && c.role == proto::ColumnRole::Probability as i32)
            .map(|(i, c)| (c.class_index as usize, i))
            .collect();
        let numeric: Vec<bool> = (0..r.columns.len())
            .map(|i| matches!(compiled.shape(i), Some(Shape::Numeric { .. })))
            .collect();
        let numeric_features = feature_cols
            .iter()
            .enumerate()
            .filter_map(|(f, c)| c.filter(|&c| numeric[c]).map(|c| (f, c)))
            .collect();
        let categorical_features = feature_cols
            .iter()
            .enumerate()
            .filter_map(|(f, c)| c.filter(|&c| !numeric[c]).map(|c| (f, c)))
            .collect();
        let (mut int_buckets, mut int_miss) = (HashMap::new(), 0);
        if let Some(col) = pred_col.filter(|&c| !numeric[c]) {
            let cats = r.columns[col]
                .categorical
                .as_ref()
                .map_or(&[][..], |c| &c.categories[..]);
            for v in cats {
                // Only the integer's own spelling matches it ("7", not "07").
                if let Ok(k) = v.parse::<i64>() {
                    if k.to_string() == *v {
                        int_buckets.insert(k, compiled.bucket(col, v));
                    }
                }
            }
            int_buckets.shrink_to_fit();
            int_miss = compiled.miss_bucket(col);
        }
        Self {
            window_ns: window_ns.max(1),
            feature_cols,
            cat_maps: vec![Vec::new(); schema.n_features()],
            label_map: Vec::new(),
            pred_col,
            prob_cols,
            int_buckets,
            int_miss,
            numeric_features,
            categorical_features,
            current: 0,
            numeric,
            windows: Vec::new(),
            n_features: schema.n_features(),
            out_cap: schema.out_cap,
            learned: Vec::new(),
            compiled,
        }
    }

    /// Entries of the integer-prediction map (bounded by the reference's
    /// categories; see the field's comment).
    pub fn int_bucket_entries(&self) -> usize {
        self.int_buckets.len()
    }

    /// Learns the buckets of newly interned categories and labels.
    pub fn on_vocab(&mut self, entries: &[crate::schema::VocabEntry]) {
        use crate::schema::VocabTarget;
        for e in entries {
            let (map, col) = match e.target {
                VocabTarget::Feature(f) => {
                    let f = f as usize;
                    let Some(col) = self.feature_cols.get(f).copied().flatten() else {
                        continue;
                    };
                    (&mut self.cat_maps[f], col)
                }
                VocabTarget::Label => {
                    let Some(col) = self.pred_col else { continue };
                    (&mut self.label_map, col)
                }
            };
            if !matches!(self.compiled.shape(col), Some(Shape::Categorical { .. })) {
                continue;
            }
            let code = e.code as usize;
            if code >= MAX_VOCAB_CODES {
                // Agents intern no more; a larger code is never logged.
                continue;
            }
            if map.len() <= code {
                map.resize(code + 1, UNMAPPED);
            }
            map[code] = u32::try_from(self.compiled.bucket(col, &e.value)).unwrap_or(UNMAPPED);
        }
    }

    fn window(&mut self, unix_nano: u64) -> usize {
        let start = unix_nano - unix_nano % self.window_ns;
        if let Some(i) = self
            .windows
            .iter()
            .rposition(|w| w.window_start_unix_nano == start)
        {
            return i;
        }
        self.windows
            .push(self.compiled.empty_window(start, self.window_ns));
        self.windows.len() - 1
    }

    /// Vocabulary entries fetched through `refresh` since the last call
    /// (the batch builder needs them too).
    pub fn drain_learned(&mut self) -> Vec<crate::schema::VocabEntry> {
        std::mem::take(&mut self.learned)
    }

    /// A code not learned yet was announced after the last refresh: fetch
    /// the announcements now (rare: once per new category).
    fn learn(&mut self, refresh: &mut dyn FnMut() -> Vec<crate::schema::VocabEntry>) {
        let fresh = refresh();
        self.on_vocab(&fresh);
        self.learned.extend(fresh);
    }

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn code_known(&self, slot: &crate::record::Slot) -> bool {
        use crate::record::PredictionKind;
        // A code past MAX_VOCAB_CODES can never be learned: asking again
        // would refresh on every record.
        let unlearned = |map: &Vec<u32>, v: f64| {
            !v.is_nan() && map.len() <= v as usize && (v as usize) < MAX_VOCAB_CODES
        };
        for &(f, _) in &self.categorical_features {
            let v = slot.values.get(f).copied().unwrap_or(f64::NAN);
            if unlearned(&self.cat_maps[f], v) {
                return false;
            }
        }
        if let Some(col) = self.pred_col {
            let v = slot
                .values
                .get(self.n_features)
                .copied()
                .unwrap_or(f64::NAN);
            if !self.numeric[col]
                && slot.prediction_kind == PredictionKind::Label
                && unlearned(&self.label_map, v)
            {
                return false;
            }
        }
        true
    }

    /// Adds one record; `refresh` fetches vocabulary announcements when the
    /// record uses a code this profiler has not learned yet.
    pub fn add(
        &mut self,
        slot: &crate::record::Slot,
        refresh: &mut dyn FnMut() -> Vec<crate::schema::VocabEntry>,
    ) {
        self.add_record(slot, refresh, true);
    }

    /// Like [`Profiler::add`], leaving out the numeric features: for a
    /// writer that profiles those column by column itself
    /// ([`Profiler::numeric_features`], [`Profiler::window_mut`]).
    pub fn add_without_numeric_features(
        &mut self,
        slot: &crate::record::Slot,
        refresh: &mut dyn FnMut() -> Vec<crate::schema::VocabEntry>,
    ) {
        self.add_record(slot, refresh, false);
    }

    /// `(schema feature, reference column)` of the numeric features profiled.
    pub fn numeric_features(&self) -> &[(usize, usize)] {
        &self.numeric_features
    }

    /// The binning table of reference column `col`.
    pub fn binner(&self, col: usize) -> &Binner {
        self.compiled.binner(col)
    }

    /// The profile of the window holding `unix_nano` (created empty).
    pub fn window_mut(&mut self, unix_nano: u64) -> &mut proto::WindowProfile {
        let i = self.window(unix_nano);
        &mut self.windows[i]
    }

    /// Merges a window profile built elsewhere against the same reference
    /// and window width (a writer's, see `SlotKind::Profile`), whose first
    /// column is reference column `columns_from` (a column group of
    /// [`split_columns`]; 0 and every column for a whole profile).
    ///
    /// [`split_columns`]: super::split_columns
    pub fn absorb(&mut self, part: &proto::WindowProfile, columns_from: usize) {
        if columns_from > 0 || part.columns.len() != self.compiled.reference.columns.len() {
            let i = self.window(part.window_start_unix_nano);
            let w = &mut self.windows[i];
            for (x, y) in w.columns.iter_mut().skip(columns_from).zip(&part.columns) {
                if x.counts.len() == y.counts.len() {
                    merge_column(x, y);
                }
            }
            merge_totals(w, part);
            return;
        }
        let start = part.window_start_unix_nano;
        match self
            .windows
            .iter()
            .rposition(|w| w.window_start_unix_nano == start)
        {
            Some(i) => merge_window(&mut self.windows[i], part),
            None => self.windows.push(part.clone()),
        }
    }

    /// Counts a span's duration under its stage (its name) in the window
    /// it started in; `flags & 1` marks the span that began its trace here
    /// (also counted as a root: the request end to end).
    pub fn add_span(&mut self, slot: &crate::record::Slot) {
        let name = slot.span_name.as_deref().unwrap_or("");
        let name = if name.len() > MAX_STAGE_NAME {
            let mut end = MAX_STAGE_NAME;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            &name[..end]
        } else {
            name
        };
        let wi = self.window(slot.unix_nano);
        let seconds = slot.latency_s / 1e9;
        let error = slot.status == 2;
        let roots: &[bool] = if slot.flags & 1 != 0 {
            &[false, true]
        } else {
            &[false]
        };
        for &root in roots {
            let st = stage_entry(&mut self.windows[wi].stages, name, root);
            st.counts[latency_bucket(seconds)] += 1;
            st.sum += seconds.max(0.0);
            st.errors += u64::from(error);
        }
    }

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn add_record(
        &mut self,
        slot: &crate::record::Slot,
        refresh: &mut dyn FnMut() -> Vec<crate::schema::VocabEntry>,
        numeric_features: bool,
    ) {
        if !self.code_known(slot) {
            self.learn(refresh);
        }
        use crate::record::{flags, PredictionKind, SlotKind};
        if slot.kind != SlotKind::Record {
            return;
        }
        let wi = self.window(slot.unix_nano);
        let nf = self.n_features;
        let side = slot.side.as_deref();
        let w = &mut self.windows[wi];
        w.records += 1;
        if slot.flags & flags::ERROR != 0 {
            w.errors += 1;
        }
        if slot.flags
            & (flags::MISSING | flags::NONFINITE | flags::BAD_VALUE | flags::NO_PREDICTION)
            != 0
        {
            w.flagged += 1;
        }
        if !slot.latency_s.is_nan() {
            w.latency_counts[latency_bucket(slot.latency_s)] += 1;
            if slot.latency_s.is_finite() && slot.latency_s > 0.0 {
                w.latency_sum += slot.latency_s;
            }
        }
        let value = |f: usize| slot.values.get(f).copied().unwrap_or(f64::NAN);
        if numeric_features {
            for &(f, col) in &self.numeric_features {
                add_numeric_binned(&mut w.columns[col], self.compiled.binner(col), value(f));
            }
        }
        for &(f, col) in &self.categorical_features {
            let v = value(f);
            let cp = &mut w.columns[col];
            if v.is_nan() {
                let overflow = side.and_then(|s| {
                    s.categories
                        .iter()
                        .find(|(i, _)| *i as usize == f)
                        .map(|(_, v)| v)
                });
                add_category(cp, overflow.map(|v| self.compiled.bucket(col, v)));
            } else {
                let b = self.cat_maps[f]
                    .get(v as usize)
                    .copied()
                    .unwrap_or(UNMAPPED);
                add_category(cp, (b != UNMAPPED).then_some(b as usize));
            }
        }
        if let Some(col) = self.pred_col {
            let outputs: &[f64] = match side.and_then(|s| s.outputs.as_deref()) {
                Some(o) => o,
                None => slot
                    .values
                    .get(nf..nf + usize::from(slot.n_outputs).min(self.out_cap))
                    .unwrap_or(&[]),
            };
            let first = outputs.first().copied();
            let cp = &mut w.columns[col];
            if slot.flags & flags::NO_PREDICTION != 0 || first.is_none() {
                cp.missing += 1;
            } else if self.numeric[col] {
                add_numeric_binned(cp, self.compiled.binner(col), first.unwrap_or(f64::NAN));
            } else {
                let v = first.unwrap_or(f64::NAN);
                let bucket = match slot.prediction_kind {
                    PredictionKind::Label if !v.is_nan() => {
                        let b = self.label_map.get(v as usize).copied().unwrap_or(UNMAPPED);
                        (b != UNMAPPED).then_some(b as usize)
                    }
                    // A label past the vocabulary budget travels as a string
                    // beside its record (`LABEL_OVERFLOW_INDEX`).
                    PredictionKind::Label => side
                        .and_then(|s| {
                            s.categories
                                .iter()
                                .find(|(i, _)| *i == LABEL_OVERFLOW_INDEX)
                        })
                        .map(|(_, value)| self.compiled.bucket(col, value)),
                    _ if v.is_nan() => None,
                    _ => Some(
                        self.int_buckets
                            .get(&(v as i64))
                            .copied()
                            .unwrap_or(self.int_miss),
                    ),
                };
                add_category(cp, bucket);
            }
        }
        if !self.prob_cols.is_empty() {
            let start = nf + self.out_cap;
            let probs: &[f64] = match side.and_then(|s| s.probabilities.as_deref()) {
                Some(p) => p,
                None if slot.n_probabilities == u16::MAX => &[],
                None => slot
                    .values
                    .get(start..start + usize::from(slot.n_probabilities))
                    .unwrap_or(&[]),
            };
            for &(class, col) in &self.prob_cols {
                let v = probs.get(class).copied().unwrap_or(f64::NAN);
                add_numeric_binned(&mut w.columns[col], self.compiled.binner(col), v);
            }
        }
    }

    /// The window profiles added since the last call.
    pub fn take(&mut self) -> Vec<proto::WindowProfile> {
        self.current = 0;
        std::mem::take(&mut self.windows)
    }
}
