//! The payload of one ring slot: a fixed-size header plus a pre-allocated
//! row of `f64` values, and an optional side box for the rare variable-length
//! parts (a caller's request id string, error text, attributes, values that
//! do not fit the row).

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlotKind {
    /// A prediction record.
    #[default]
    Record,
    /// A pipeline stage span.
    Span,
    /// Ground truth for an earlier prediction, joined to it by request id
    /// (`request_id` / `request_id_inline` / `side.request_id` as for a
    /// record): `unix_nano` is when the truth became known,
    /// `prediction_kind` is `Number`, `Int` or `Label`, and `latency_s`
    /// holds the value (for `Label` the code into the label vocabulary, or
    /// NaN with the class text in `side.categories` under
    /// [`crate::profile::LABEL_OVERFLOW_INDEX`] when the vocabulary was
    /// full). No record: neither profiled nor sampled.
    Label,
    /// Nothing: a slot whose writer failed; the drain thread skips it (the
    /// writer counted the record as dropped).
    Void,
    /// No record: the window profile of records already profiled by their
    /// writer (`log_batch`), in `side.profile`, for the drain thread to
    /// merge into its own. Its records follow it (marked `profiled`) or
    /// were sampled out.
    Profile,
}

/// How the prediction of a record is stored in its output values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum PredictionKind {
    /// A float.
    #[default]
    Number = 0,
    /// An integer class label.
    Int = 1,
    /// A string class label, stored as a code into the label vocabulary.
    Label = 2,
    /// A 1-D vector.
    Vector = 3,
}

/// Flag bits of a record (the `RecordFlag` enum of the wire format).
pub mod flags {
    /// Some feature is missing or NaN.
    pub const MISSING: u32 = 1;
    /// Some feature is +/-inf.
    pub const NONFINITE: u32 = 2;
    /// A non-numeric value was given for a numeric feature.
    pub const BAD_VALUE: u32 = 4;
    /// The prediction raised.
    pub const ERROR: u32 = 8;
    /// No prediction was given.
    pub const NO_PREDICTION: u32 = 16;
}

/// Variable-length parts of a record; allocated only when a record has any.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Side {
    /// A request id given by the caller.
    pub request_id: Option<String>,
    /// Exception type and message.
    pub error: Option<(String, String)>,
    /// Free-form attributes.
    pub attributes: Vec<(String, String)>,
    /// Categorical values outside the vocabulary: (feature index, value).
    pub categories: Vec<(u32, String)>,
    /// Prediction values when they do not fit the slot's output width.
    pub outputs: Option<Vec<f64>>,
    /// Probabilities when they do not fit the slot's probability width.
    pub probabilities: Option<Vec<f64>>,
    /// A window profile (`SlotKind::Profile` only).
    pub profile: Option<Box<crate::proto::WindowProfile>>,
    /// W3C `tracestate` of a span's trace (spans only).
    pub trace_state: Option<String>,
    /// Index of the reference column `profile`'s first column stands for
    /// (a wide profile travels in column groups, see
    /// [`crate::profile::split_columns`]).
    pub profile_columns_from: usize,
}

impl Side {
    /// Approximate heap bytes held (for the agent's memory budget).
    pub fn heap_bytes(&self) -> usize {
        let s = |x: &String| x.len() + 24;
        std::mem::size_of::<Self>()
            + self.request_id.as_ref().map_or(0, s)
            + self.error.as_ref().map_or(0, |(a, b)| s(a) + s(b))
            + self
                .attributes
                .iter()
                .map(|(a, b)| s(a) + s(b))
                .sum::<usize>()
            + self.categories.iter().map(|(_, v)| s(v) + 8).sum::<usize>()
            + self.outputs.as_ref().map_or(0, |v| 8 * v.len())
            + self.probabilities.as_ref().map_or(0, |v| 8 * v.len())
            + self.trace_state.as_ref().map_or(0, s)
            + self.profile.as_deref().map_or(0, profile_heap_bytes)
    }
}

/// Approximate heap bytes of a window profile in memory.
pub fn profile_heap_bytes(w: &crate::proto::WindowProfile) -> usize {
    let per_column = std::mem::size_of::<crate::proto::ColumnProfile>();
    std::mem::size_of::<crate::proto::WindowProfile>()
        + 8 * w.latency_counts.len()
        + w.stages
            .iter()
            .map(|s| {
                std::mem::size_of::<crate::proto::StageLatency>()
                    + s.name.len()
                    + 8 * s.counts.len()
            })
            .sum::<usize>()
        + w.columns
            .iter()
            .map(|c| per_column + 8 * c.counts.len())
            .sum::<usize>()
}

/// One ring slot's payload. Values are laid out as
/// `[features (n_features) | outputs (out_cap) | probabilities (prob_cap)]`.
#[derive(Debug, Default)]
pub struct Slot {
    /// Record or span.
    pub kind: SlotKind,
    /// Event time, nanoseconds since the Unix epoch.
    pub unix_nano: u64,
    /// Generated request id (0 when the caller gave one in `side`).
    pub request_id: u128,
    /// W3C trace id (0: none).
    pub trace_id: u128,
    /// Span id (0: none).
    pub span_id: u64,
    /// Parent span id (spans; 0: root).
    pub parent_span_id: u64,
    /// Latency in seconds (NaN: not given). For spans: duration in ns. For
    /// labels: the value (see [`SlotKind::Label`]).
    pub latency_s: f64,
    /// `flags::*` bits.
    pub flags: u32,
    /// How to read the outputs.
    pub prediction_kind: PredictionKind,
    /// Outputs written inline (0..=out_cap); more go to `side.outputs`.
    pub n_outputs: u16,
    /// Probabilities written inline (0..=prob_cap), or `u16::MAX` when they
    /// are in `side.probabilities`.
    pub n_probabilities: u16,
    /// Span status (spans only): 0 unset, 1 ok, 2 error.
    pub status: u8,
    /// Span kind (spans only), OpenTelemetry's numbers (1 internal, 2
    /// server, 3 client, 4 producer, 5 consumer).
    pub span_kind: u8,
    /// Span name (spans only): shared, so a span needs no allocation of
    /// its own for it.
    pub span_name: Option<std::sync::Arc<str>>,
    /// A caller-given request id short enough to travel in the slot (the
    /// logging thread then allocates nothing for it); longer ones go to
    /// `side.request_id`. Cleared by the pipeline before each fill.
    pub request_id_inline: InlineId,
    /// Pre-allocated value row.
    pub values: Box<[f64]>,
    /// Rare variable-length parts.
    pub side: Option<Box<Side>>,
    /// Bytes of the side box charged to the pipeline's side budget (set by
    /// the pipeline, released when the slot is drained).
    pub side_charge: usize,
    /// Already in a window profile its writer sent ahead of it (and already
    /// sampled in): the drain thread neither profiles nor samples it. The
    /// drain thread clears it on every pop.
    pub profiled: bool,
}

/// Bytes of a caller's request id carried in the slot itself (a UUID's
/// 36 characters fit; longer ids take the side box).
pub const INLINE_ID_BYTES: usize = 40;

/// A short caller-given request id stored in place (see
/// [`Slot::request_id_inline`]).
#[derive(Debug, Clone, Copy)]
pub struct InlineId {
    len: u8,
    bytes: [u8; INLINE_ID_BYTES],
}

impl Default for InlineId {
    fn default() -> Self {
        Self {
            len: 0,
            bytes: [0; INLINE_ID_BYTES],
        }
    }
}

impl InlineId {
    /// Stores `id` when it is 1 to [`INLINE_ID_BYTES`] bytes long;
    /// otherwise clears and returns `false`.
    #[inline]
    pub fn set(&mut self, id: &str) -> bool {
        let n = id.len();
        if n == 0 || n > INLINE_ID_BYTES {
            self.len = 0;
            return false;
        }
        self.bytes[..n].copy_from_slice(id.as_bytes());
        self.len = n as u8;
        true
    }

    /// Forgets the id.
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The id stored, if any.
    pub fn get(&self) -> Option<&str> {
        if self.len == 0 {
            return None;
        }
        // Always the bytes of a `&str` (see `set`), so this never fails.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).ok()
    }
}

impl Slot {
    /// A slot with a value row of `stride` values.
    pub fn with_stride(stride: usize) -> Self {
        Self {
            values: vec![0.0; stride].into_boxed_slice(),
            latency_s: f64::NAN,
            ..Self::default()
        }
    }

    /// The side box, allocated on first use.
    pub fn side_mut(&mut self) -> &mut Side {
        self.side.get_or_insert_with(Box::default)
    }

    /// Clears the header for reuse, keeping the value row's allocation.
    pub fn reset(&mut self) {
        self.kind = SlotKind::Record;
        self.request_id = 0;
        self.request_id_inline.clear();
        self.trace_id = 0;
        self.span_id = 0;
        self.parent_span_id = 0;
        self.latency_s = f64::NAN;
        self.flags = 0;
        self.prediction_kind = PredictionKind::Number;
        self.n_outputs = 0;
        self.n_probabilities = 0;
        self.status = 0;
        self.span_kind = 0;
        self.span_name = None;
        self.side = None;
        self.profiled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::{InlineId, INLINE_ID_BYTES};

    #[test]
    fn inline_ids_keep_what_fits_and_nothing_else() {
        let mut id = InlineId::default();
        assert_eq!(id.get(), None);
        assert!(id.set("req-1"));
        assert_eq!(id.get(), Some("req-1"));
        let full = "é".repeat(INLINE_ID_BYTES / 2);
        assert!(id.set(&full));
        assert_eq!(id.get(), Some(full.as_str()));
        assert!(!id.set(&"x".repeat(INLINE_ID_BYTES + 1)));
        assert_eq!(id.get(), None);
        assert!(!id.set(""));
        assert_eq!(id.get(), None);
        assert!(id.set("a"));
        id.clear();
        assert_eq!(id.get(), None);
    }
}
