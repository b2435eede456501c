//! Columnar batches: built from ring slots on the drain thread, encoded with
//! prost, and decoded (with validation) by tools and the collector.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;

use crate::error::CodecError;
use crate::proto;
use crate::record::{PredictionKind, Slot, SlotKind};
pub use crate::schema::{Schema, VocabEntry, VocabTarget};

/// The batch schema version this build writes and the newest it reads.
/// Version 1 batches (vectors padded to a common width) are still read.
pub const SCHEMA_VERSION: u32 = 2;

/// Most system samples a batch may carry (an agent queues at most 1,024).
pub const MAX_SYSTEM_SAMPLES: usize = 4_096;
/// Most window profiles a batch may carry.
pub const MAX_PROFILES: usize = 4_096;
/// Most features a batch may have.
pub const MAX_FEATURES: usize = 1 << 20;
/// Most bytes of feature names a batch may carry.
pub const MAX_NAMES_BYTES: usize = 16 << 20;
/// Most inference parameters a batch may carry (an agent sends at most 256).
pub const MAX_PARAMS: usize = 1_024;
/// Most bytes of inference parameters (an agent sends at most 64 KiB).
pub const MAX_PARAMS_BYTES: usize = 256 * 1024;
/// Most GPUs one system sample may list.
pub const MAX_GPUS: usize = 256;
/// Most attributes one row may carry (an agent keeps at most 64).
pub const MAX_ROW_ATTRIBUTES: usize = 1_024;
/// Most labels (`RecordBatch.truth`) a batch may carry: far more than a
/// batch of `MAX_BATCH_BYTES` holds (every label takes 33 bytes or more).
pub const MAX_LABELS: usize = 1 << 22;

/// Fixed bytes a record adds to a batch besides its values (ids, time,
/// latency, flags, counts), for sizing batches by bytes.
const ROW_OVERHEAD: usize = 16 + 16 + 8 + 8 + 8 + 4 + 4 + 4 + 4;

/// The drain thread's copy of the vocabularies, code → value.
#[derive(Debug, Default)]
pub struct VocabMirror {
    features: BTreeMap<u32, Vec<String>>,
    labels: Vec<String>,
}

impl VocabMirror {
    /// Adds entries announced since the last call.
    pub fn extend(&mut self, entries: impl IntoIterator<Item = VocabEntry>) {
        for e in entries {
            let list = match e.target {
                VocabTarget::Feature(i) => self.features.entry(i).or_default(),
                VocabTarget::Label => &mut self.labels,
            };
            let code = e.code as usize;
            if list.len() <= code {
                list.resize(code + 1, String::new());
            }
            list[code] = e.value;
        }
    }

    fn feature_value(&self, feature: u32, code: u32) -> &str {
        self.features
            .get(&feature)
            .and_then(|v| v.get(code as usize))
            .map_or("", String::as_str)
    }

    fn label(&self, code: u32) -> &str {
        self.labels.get(code as usize).map_or("", String::as_str)
    }
}

/// The class of a LABEL label until the batch is sealed: a code of the
/// label vocabulary, or the text itself (the vocabulary was full).
#[derive(Debug)]
enum LabelClass {
    Code(u32),
    Text(String),
}

/// Accumulates records (and spans and labels) into columns until the batch
/// is sealed.
#[derive(Debug)]
pub struct BatchBuilder {
    schema: Arc<Schema>,
    msg: proto::RecordBatch,
    used_codes: Vec<Vec<u32>>,
    used_labels: Vec<u32>,
    /// (label index, class) of every LABEL label, coded into the batch's
    /// own `truth.classes` at sealing.
    label_classes: Vec<(usize, LabelClass)>,
    span_names: BTreeMap<String, u32>,
    bytes: usize,
}

fn f64_to_code(v: f64) -> Option<u32> {
    // Codes are small non-negative integers carried exactly in an f64.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (v.is_finite() && v >= 0.0 && v <= f64::from(u32::MAX)).then_some(v as u32)
}

fn row_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl BatchBuilder {
    /// An empty builder for `schema`.
    pub fn new(schema: Arc<Schema>) -> Self {
        let n = schema.n_features();
        let msg = proto::RecordBatch {
            feature_names: schema.feature_names.clone(),
            feature_kinds: schema
                .categorical
                .iter()
                .map(|&c| {
                    if c {
                        proto::FeatureKind::Categorical as i32
                    } else {
                        proto::FeatureKind::Numeric as i32
                    }
                })
                .collect(),
            ..Default::default()
        };
        Self {
            schema,
            msg,
            used_codes: vec![Vec::new(); n],
            used_labels: Vec::new(),
            label_classes: Vec::new(),
            span_names: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// The schema this builder writes.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Records added so far.
    pub fn len(&self) -> usize {
        self.msg.n_records as usize
    }

    /// Spans added so far.
    pub fn n_spans(&self) -> usize {
        self.msg
            .spans
            .as_ref()
            .map_or(0, |s| s.start_unix_nano.len())
    }

    /// Labels (ground truth) added so far.
    pub fn n_labels(&self) -> usize {
        self.msg.truth.as_ref().map_or(0, |t| t.unix_nano.len())
    }

    /// Approximate bytes the batch holds so far (values, ids and the
    /// variable-length parts), for sealing batches by size.
    pub fn byte_size(&self) -> usize {
        self.bytes
    }

    /// True when no record, span or label was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.n_spans() == 0 && self.n_labels() == 0
    }

    /// Copies one slot into the columns (and takes its side box).
    pub fn push(&mut self, slot: &mut Slot) {
        match slot.kind {
            SlotKind::Record => self.push_record(slot),
            SlotKind::Span => self.push_span(slot),
            SlotKind::Label => self.push_label(slot),
            SlotKind::Void | SlotKind::Profile => {}
        }
    }

    fn push_record(&mut self, slot: &mut Slot) {
        let schema = Arc::clone(&self.schema);
        let row = self.msg.n_records;
        let m = &mut self.msg;
        let nf = schema.n_features();
        m.timestamp_unix_nano.push(slot.unix_nano);
        m.request_ids
            .extend_from_slice(&slot.request_id.to_be_bytes());
        m.trace_ids.extend_from_slice(&slot.trace_id.to_be_bytes());
        m.span_ids.extend_from_slice(&slot.span_id.to_be_bytes());
        let values = &slot.values;
        m.features.extend_from_slice(&values[..nf]);
        for (i, used) in self.used_codes.iter_mut().enumerate() {
            if schema.categorical[i] {
                if let Some(code) = f64_to_code(values[i]) {
                    used.push(code);
                }
            }
        }
        let side = slot.side.take().map(|b| *b);
        let out = &values[nf..nf + schema.out_cap];
        let n_out = usize::from(slot.n_outputs).min(schema.out_cap);
        let outputs: &[f64] = match side.as_ref().and_then(|s| s.outputs.as_deref()) {
            Some(wide) => wide,
            None => &out[..n_out],
        };
        m.predictions.extend_from_slice(outputs);
        m.prediction_count.push(row_u32(outputs.len()));
        m.prediction_kind
            .push(i32::from(slot.prediction_kind as u8));
        if slot.prediction_kind == PredictionKind::Label {
            if let Some(code) = outputs.first().copied().and_then(f64_to_code) {
                self.used_labels.push(code);
            }
        }
        let start = nf + schema.out_cap;
        let probs: &[f64] = match side.as_ref().and_then(|s| s.probabilities.as_deref()) {
            Some(wide) => wide,
            // Marked as carried beside the slot but the side box is gone:
            // no probabilities.
            None if slot.n_probabilities == u16::MAX => &[],
            None => {
                let k = usize::from(slot.n_probabilities).min(schema.prob_cap);
                &values[start..start + k]
            }
        };
        m.probabilities.extend_from_slice(probs);
        m.probability_count.push(row_u32(probs.len()));
        self.bytes += 8 * (nf + outputs.len() + probs.len()) + ROW_OVERHEAD;
        m.latency_s.push(slot.latency_s);
        m.flags.push(slot.flags);
        if let Some(id) = slot.request_id_inline.get() {
            self.bytes += id.len() + 24;
            m.request_id_text.push(proto::RowString {
                row,
                value: id.to_owned(),
            });
            slot.request_id_inline.clear();
        }
        if let Some(side) = side {
            self.bytes += side.heap_bytes();
            if let Some(id) = side.request_id {
                m.request_id_text.push(proto::RowString { row, value: id });
            }
            if let Some((ty, message)) = side.error {
                m.errors.push(proto::RowError {
                    row,
                    r#type: ty,
                    message,
                });
            }
            if !side.attributes.is_empty() {
                m.attributes.push(proto::RowAttributes {
                    row,
                    attributes: side.attributes.into_iter().collect(),
                });
            }
            for (feature_index, value) in side.categories {
                m.category_overflow.push(proto::RowCategory {
                    row,
                    feature_index,
                    value,
                });
            }
        }
        m.n_records += 1;
    }

    fn push_span(&mut self, slot: &mut Slot) {
        let name = slot.span_name.take();
        let name: &str = name.as_deref().unwrap_or("");
        let code = match self.span_names.get(name) {
            Some(&c) => c,
            None => {
                let next = row_u32(self.span_names.len());
                self.span_names.insert(name.to_owned(), next);
                next
            }
        };
        let spans = self.msg.spans.get_or_insert_with(Default::default);
        let row = row_u32(spans.start_unix_nano.len());
        spans
            .trace_ids
            .extend_from_slice(&slot.trace_id.to_be_bytes());
        spans
            .span_ids
            .extend_from_slice(&slot.span_id.to_be_bytes());
        spans
            .parent_span_ids
            .extend_from_slice(&slot.parent_span_id.to_be_bytes());
        spans.name_codes.push(code);
        spans.start_unix_nano.push(slot.unix_nano);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        spans.duration_nano.push(slot.latency_s.max(0.0) as u64);
        spans.status.push(u32::from(slot.status));
        spans.kinds.push(u32::from(slot.span_kind));
        self.bytes += ROW_OVERHEAD;
        let Some(side) = slot.side.take() else {
            return;
        };
        let side = *side;
        self.bytes += side.heap_bytes();
        if let Some(id) = side.request_id {
            spans.request_ids.push(proto::RowString { row, value: id });
        }
        if let Some((r#type, message)) = side.error {
            spans.errors.push(proto::RowError {
                row,
                r#type,
                message,
            });
        }
        if !side.attributes.is_empty() {
            spans.attributes.push(proto::RowAttributes {
                row,
                attributes: side.attributes.into_iter().collect(),
            });
        }
        if let Some(value) = side.trace_state {
            spans.trace_states.push(proto::RowString { row, value });
        }
    }

    /// Copies one label slot (see [`SlotKind::Label`]) into the truth
    /// columns (and takes its side box). A kind other than `Int` or `Label`
    /// is read as `Number`.
    pub fn push_label(&mut self, slot: &mut Slot) {
        let t = self.msg.truth.get_or_insert_with(Default::default);
        let row = t.unix_nano.len();
        t.unix_nano.push(slot.unix_nano);
        t.request_ids
            .extend_from_slice(&slot.request_id.to_be_bytes());
        let kind = match slot.prediction_kind {
            PredictionKind::Int => proto::PredictionKind::Int,
            PredictionKind::Label => proto::PredictionKind::Label,
            PredictionKind::Number | PredictionKind::Vector => proto::PredictionKind::Number,
        };
        t.kinds.push(kind as i32);
        // A LABEL's value becomes its code into `classes` at sealing.
        t.values.push(slot.latency_s);
        self.bytes += ROW_OVERHEAD;
        if let Some(id) = slot.request_id_inline.get() {
            self.bytes += id.len() + 24;
            t.request_id_text.push(proto::RowString {
                row: row_u32(row),
                value: id.to_owned(),
            });
            slot.request_id_inline.clear();
        }
        let mut text = None;
        if let Some(side) = slot.side.take() {
            let side = *side;
            self.bytes += side.heap_bytes();
            if let Some(id) = side.request_id {
                t.request_id_text.push(proto::RowString {
                    row: row_u32(row),
                    value: id,
                });
            }
            text = side
                .categories
                .into_iter()
                .find(|(i, _)| *i == crate::profile::LABEL_OVERFLOW_INDEX)
                .map(|(_, v)| v);
        }
        if kind == proto::PredictionKind::Label {
            let class = match (text, f64_to_code(slot.latency_s)) {
                (Some(text), _) => LabelClass::Text(text),
                (None, Some(code)) => LabelClass::Code(code),
                (None, None) => LabelClass::Text(String::new()),
            };
            self.label_classes.push((row, class));
        }
    }

    /// Finishes the batch: fills in the identity, the dictionaries of the
    /// codes used and the system samples, and returns the message. The
    /// builder is left empty for the next batch.
    pub fn seal(
        &mut self,
        model: &proto::ModelInfo,
        batch_seq: u64,
        vocab: &VocabMirror,
        system: Vec<proto::SystemSample>,
        created_unix_nano: u64,
    ) -> proto::RecordBatch {
        let mut fresh = Self::new(Arc::clone(&self.schema));
        std::mem::swap(self, &mut fresh);
        let mut msg = fresh.msg;
        msg.schema_version = SCHEMA_VERSION;
        msg.agent_id.clone_from(&model.agent_id);
        msg.batch_seq = batch_seq;
        msg.model = Some(model.clone());
        msg.created_unix_nano = created_unix_nano;
        msg.system = system;
        for (i, mut codes) in fresh.used_codes.into_iter().enumerate() {
            if codes.is_empty() {
                continue;
            }
            codes.sort_unstable();
            codes.dedup();
            let feature_index = row_u32(i);
            let values = codes
                .iter()
                .map(|&c| vocab.feature_value(feature_index, c).to_owned())
                .collect();
            msg.categories.push(proto::CategoryDictionary {
                feature_index,
                codes,
                values,
            });
        }
        let mut labels = fresh.used_labels;
        if !labels.is_empty() {
            labels.sort_unstable();
            labels.dedup();
            let values = labels.iter().map(|&c| vocab.label(c).to_owned()).collect();
            msg.labels = Some(proto::CategoryDictionary {
                feature_index: 0,
                codes: labels,
                values,
            });
        }
        if let Some(truth) = msg.truth.as_mut() {
            // The batch's own dictionary of the classes it uses, in order
            // of first use.
            let mut index: std::collections::HashMap<String, u32> =
                std::collections::HashMap::new();
            for (row, class) in fresh.label_classes {
                let text = match class {
                    LabelClass::Code(c) => vocab.label(c).to_owned(),
                    LabelClass::Text(t) => t,
                };
                let next = row_u32(truth.classes.len());
                let code = *index.entry(text).or_insert_with_key(|t| {
                    truth.classes.push(t.clone());
                    next
                });
                truth.values[row] = f64::from(code);
            }
        }
        if let Some(spans) = msg.spans.as_mut() {
            let mut names: Vec<(u32, String)> =
                fresh.span_names.into_iter().map(|(n, c)| (c, n)).collect();
            names.sort_unstable();
            spans.names = names.into_iter().map(|(_, n)| n).collect();
        }
        msg
    }
}

/// Encodes a sealed batch.
pub fn encode(batch: &proto::RecordBatch) -> Vec<u8> {
    batch.encode_to_vec()
}

/// Decodes and validates a batch: every column must have the length the
/// header promises, and the schema version must be one this build reads.
pub fn decode(bytes: &[u8]) -> Result<proto::RecordBatch, CodecError> {
    let mut batch =
        proto::RecordBatch::decode(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    validate(&batch)?;
    if batch.schema_version == 1 {
        upgrade_v1(&mut batch);
    }
    Ok(batch)
}

/// Rewrites a (validated) version 1 batch into the version 2 layout, so
/// readers see one layout: vectors flat with a count per row.
fn upgrade_v1(b: &mut proto::RecordBatch) {
    let n = b.n_records as usize;
    let w = b.n_outputs as usize;
    let kinds = std::mem::take(&mut b.prediction_kind);
    let mut over: BTreeMap<u32, Vec<f64>> = std::mem::take(&mut b.prediction_overflow)
        .into_iter()
        .map(|r| (r.row, r.values))
        .collect();
    let padded = std::mem::take(&mut b.predictions);
    let mut counts = Vec::with_capacity(n);
    for r in 0..n {
        if let Some(v) = over.remove(&row_u32(r)) {
            counts.push(row_u32(v.len()));
            b.predictions.extend(v);
            continue;
        }
        let row = &padded[r * w..(r + 1) * w];
        let no_prediction = b.flags[r] & crate::record::flags::NO_PREDICTION != 0;
        let k = if no_prediction {
            0
        } else if kinds[r] == PredictionKind::Vector as i32 {
            // Version 1 padded vectors with NaN: the row ends at its last value.
            row.iter().rposition(|v| !v.is_nan()).map_or(0, |i| i + 1)
        } else {
            row.len().min(1)
        };
        counts.push(row_u32(k));
        b.predictions.extend_from_slice(&row[..k]);
    }
    b.prediction_kind = kinds;
    b.prediction_count = counts;
    let k = b.n_probabilities as usize;
    let mut over: BTreeMap<u32, Vec<f64>> = std::mem::take(&mut b.probability_overflow)
        .into_iter()
        .map(|r| (r.row, r.values))
        .collect();
    let padded = std::mem::take(&mut b.probabilities);
    for r in 0..n {
        if let Some(v) = over.remove(&row_u32(r)) {
            b.probability_count[r] = row_u32(v.len());
            b.probabilities.extend(v);
        } else {
            let c = (b.probability_count[r] as usize).min(k);
            b.probability_count[r] = row_u32(c);
            b.probabilities.extend_from_slice(&padded[r * k..r * k + c]);
        }
    }
    b.n_outputs = 0;
    b.n_probabilities = 0;
    b.schema_version = SCHEMA_VERSION;
}

fn check(what: &str, got: usize, want: usize) -> Result<(), CodecError> {
    if got == want {
        Ok(())
    } else {
        Err(CodecError::Inconsistent(format!(
            "{what} has {got} entries, expected {want}"
        )))
    }
}

/// Checks a decoded batch for internal consistency.
pub fn validate(b: &proto::RecordBatch) -> Result<(), CodecError> {
    if b.schema_version == 0 {
        return Err(CodecError::Inconsistent(
            "schema_version is missing (0)".into(),
        ));
    }
    if b.schema_version > SCHEMA_VERSION {
        return Err(CodecError::UnsupportedVersion {
            got: b.schema_version,
            max: SCHEMA_VERSION,
        });
    }
    let n = b.n_records as usize;
    let nf = b.feature_names.len();
    check("feature_kinds", b.feature_kinds.len(), nf)?;
    if let Some(k) = b.feature_kinds.iter().find(|&&k| !(0..=1).contains(&k)) {
        return Err(CodecError::Inconsistent(format!(
            "feature kind {k} is not a known kind"
        )));
    }
    check("timestamp_unix_nano", b.timestamp_unix_nano.len(), n)?;
    check("request_ids (bytes)", b.request_ids.len(), 16 * n)?;
    check("trace_ids (bytes)", b.trace_ids.len(), 16 * n)?;
    check("span_ids (bytes)", b.span_ids.len(), 8 * n)?;
    check("features", b.features.len(), n.saturating_mul(nf))?;
    check("prediction_kind", b.prediction_kind.len(), n)?;
    if let Some(k) = b.prediction_kind.iter().find(|&&k| !(0..=3).contains(&k)) {
        return Err(CodecError::Inconsistent(format!(
            "prediction_kind {k} is not a known kind"
        )));
    }
    check("probability_count", b.probability_count.len(), n)?;
    if b.schema_version == 1 {
        let cells = |w: u32| n.saturating_mul(w as usize);
        check("predictions", b.predictions.len(), cells(b.n_outputs))?;
        check(
            "probabilities",
            b.probabilities.len(),
            cells(b.n_probabilities),
        )?;
    } else {
        check("prediction_count", b.prediction_count.len(), n)?;
        let total = |c: &[u32]| c.iter().map(|&x| u64::from(x)).sum::<u64>();
        check(
            "predictions",
            b.predictions.len(),
            usize::try_from(total(&b.prediction_count)).unwrap_or(usize::MAX),
        )?;
        check(
            "probabilities",
            b.probabilities.len(),
            usize::try_from(total(&b.probability_count)).unwrap_or(usize::MAX),
        )?;
        if !b.prediction_overflow.is_empty() || !b.probability_overflow.is_empty() {
            return Err(CodecError::Inconsistent(
                "overflow vectors are not used after schema version 1".into(),
            ));
        }
    }
    check("latency_s", b.latency_s.len(), n)?;
    check("flags", b.flags.len(), n)?;
    let row_ok = |row: u32, what: &str| {
        if (row as usize) < n {
            Ok(())
        } else {
            Err(CodecError::Inconsistent(format!(
                "{what} names row {row} of a batch of {n}"
            )))
        }
    };
    // What a batch may carry besides its columns is bounded by its rows, so
    // decoding stays proportional to them whatever the message holds.
    let at_most = |what: &str, got: usize, max: usize| {
        if got <= max {
            Ok(())
        } else {
            Err(CodecError::Inconsistent(format!(
                "{what} has {got} entries, at most {max} allowed"
            )))
        }
    };
    at_most("request_id_text", b.request_id_text.len(), n)?;
    at_most("errors", b.errors.len(), n)?;
    at_most("attributes", b.attributes.len(), n)?;
    at_most(
        "category_overflow",
        b.category_overflow.len(),
        n.saturating_mul(nf + 1),
    )?;
    at_most("system", b.system.len(), MAX_SYSTEM_SAMPLES)?;
    at_most("feature_names", nf, MAX_FEATURES)?;
    let names_bytes: usize = b.feature_names.iter().map(String::len).sum();
    at_most("feature_names (bytes)", names_bytes, MAX_NAMES_BYTES)?;
    if let Some(m) = &b.model {
        at_most("model.params", m.params.len(), MAX_PARAMS)?;
        let bytes: usize = m.params.iter().map(|(k, v)| k.len() + v.len()).sum();
        at_most("model.params (bytes)", bytes, MAX_PARAMS_BYTES)?;
    }
    for d in b.categories.iter().chain(&b.labels) {
        at_most("a category dictionary", d.codes.len(), n)?;
    }
    at_most("profiles", b.profiles.len(), MAX_PROFILES)?;
    for s in &b.system {
        at_most("system.gpus", s.gpus.len(), MAX_GPUS)?;
    }
    for r in &b.request_id_text {
        row_ok(r.row, "request_id_text")?;
    }
    for r in &b.errors {
        row_ok(r.row, "errors")?;
    }
    for r in &b.attributes {
        row_ok(r.row, "attributes")?;
        at_most(
            "attributes of a row",
            r.attributes.len(),
            MAX_ROW_ATTRIBUTES,
        )?;
    }
    for r in &b.category_overflow {
        row_ok(r.row, "category_overflow")?;
    }
    for w in &b.profiles {
        crate::profile::validate_window(w)
            .map_err(|e| CodecError::Inconsistent(format!("window profile: {e}")))?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &b.prediction_overflow {
        row_ok(r.row, "prediction overflow")?;
        if !seen.insert(r.row) {
            return Err(CodecError::Inconsistent(format!(
                "prediction overflow names row {} twice",
                r.row
            )));
        }
    }
    seen.clear();
    for r in &b.probability_overflow {
        row_ok(r.row, "probability overflow")?;
        if !seen.insert(r.row) {
            return Err(CodecError::Inconsistent(format!(
                "probability overflow names row {} twice",
                r.row
            )));
        }
    }
    for d in &b.categories {
        if d.feature_index as usize >= nf {
            return Err(CodecError::Inconsistent(format!(
                "category dictionary for feature {} of {nf}",
                d.feature_index
            )));
        }
        check("category dictionary values", d.values.len(), d.codes.len())?;
    }
    if let Some(d) = &b.labels {
        check("label dictionary values", d.values.len(), d.codes.len())?;
    }
    if let Some(t) = &b.truth {
        validate_truth(t)?;
    }
    if let Some(s) = &b.spans {
        let ns = s.start_unix_nano.len();
        at_most("spans.names", s.names.len(), ns.max(1))?;
        at_most("spans.request_ids", s.request_ids.len(), ns)?;
        if let Some(r) = s.request_ids.iter().find(|r| r.row as usize >= ns) {
            return Err(CodecError::Inconsistent(format!(
                "spans.request_ids names span {} of {ns}",
                r.row
            )));
        }
        check("spans.trace_ids (bytes)", s.trace_ids.len(), 16 * ns)?;
        check("spans.span_ids (bytes)", s.span_ids.len(), 8 * ns)?;
        check(
            "spans.parent_span_ids (bytes)",
            s.parent_span_ids.len(),
            8 * ns,
        )?;
        check("spans.name_codes", s.name_codes.len(), ns)?;
        check("spans.duration_nano", s.duration_nano.len(), ns)?;
        check("spans.status", s.status.len(), ns)?;
        if !s.kinds.is_empty() {
            check("spans.kinds", s.kinds.len(), ns)?;
        }
        at_most("spans.errors", s.errors.len(), ns)?;
        at_most("spans.attributes", s.attributes.len(), ns)?;
        at_most("spans.trace_states", s.trace_states.len(), ns)?;
        let rows = s
            .errors
            .iter()
            .map(|e| e.row)
            .chain(s.attributes.iter().map(|a| a.row))
            .chain(s.trace_states.iter().map(|t| t.row));
        if let Some(r) = rows.into_iter().find(|&r| r as usize >= ns) {
            return Err(CodecError::Inconsistent(format!(
                "a span error, attribute or tracestate names span {r} of {ns}"
            )));
        }
        if s.name_codes.iter().any(|&c| c as usize >= s.names.len()) {
            return Err(CodecError::Inconsistent(
                "span name code outside the names dictionary".into(),
            ));
        }
    }
    Ok(())
}

/// Checks the label columns of a batch: one entry per label in every
/// column, caller-given ids on labels that exist, in ascending order, and
/// values their kind allows.
fn validate_truth(t: &proto::LabelColumns) -> Result<(), CodecError> {
    let bad = |m: String| Err(CodecError::Inconsistent(m));
    let n = t.unix_nano.len();
    if n > MAX_LABELS {
        return bad(format!(
            "truth has {n} labels, at most {MAX_LABELS} allowed"
        ));
    }
    check("truth.request_ids (bytes)", t.request_ids.len(), 16 * n)?;
    check("truth.kinds", t.kinds.len(), n)?;
    check("truth.values", t.values.len(), n)?;
    if t.request_id_text.len() > n {
        return bad(format!(
            "truth.request_id_text has {} entries for {n} labels",
            t.request_id_text.len()
        ));
    }
    if t.classes.len() > n {
        return bad(format!(
            "truth.classes has {} entries for {n} labels",
            t.classes.len()
        ));
    }
    let mut next = 0u64;
    for r in &t.request_id_text {
        if r.row as usize >= n {
            return bad(format!(
                "truth.request_id_text names label {} of {n}",
                r.row
            ));
        }
        if u64::from(r.row) < next {
            return bad(format!(
                "truth.request_id_text names label {} out of order or twice",
                r.row
            ));
        }
        next = u64::from(r.row) + 1;
    }
    let classes = t.classes.len();
    for (i, (&k, &v)) in t.kinds.iter().zip(&t.values).enumerate() {
        let ok = match k {
            0 => v.is_finite(),
            1 => v.is_finite() && v.fract() == 0.0,
            2 => f64_to_code(v).is_some_and(|c| (c as usize) < classes && f64::from(c) == v),
            _ => {
                return bad(format!(
                    "truth.kinds of label {i} is {k}: not NUMBER, INT or LABEL"
                ))
            }
        };
        if !ok {
            return bad(format!(
                "truth.values of label {i} ({v}) does not fit its kind {k}"
            ));
        }
    }
    Ok(())
}
