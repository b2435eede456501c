//! The feature schema of an agent and the vocabulary announcements that
//! go with it: shared by the batch codec and the profiler, which depend on
//! this module and not on each other's.

/// The feature schema of an agent, fixed by its first record (or by the
/// `features=` / reference it was given).
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Feature names, in column order.
    pub feature_names: Vec<String>,
    /// `true` where the feature is categorical (values are vocabulary codes).
    pub categorical: Vec<bool>,
    /// Inline width of the prediction values in a slot.
    pub out_cap: usize,
    /// Inline width of the probability values in a slot.
    pub prob_cap: usize,
}

impl Schema {
    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Values per slot: features, outputs, probabilities.
    pub fn stride(&self) -> usize {
        self.n_features() + self.out_cap + self.prob_cap
    }
}

/// Which vocabulary a new entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabTarget {
    /// The categorical feature at this column index.
    Feature(u32),
    /// String prediction labels.
    Label,
}

/// A newly interned category or label, announced by the logging thread
/// before the first record that uses its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabEntry {
    /// Vocabulary.
    pub target: VocabTarget,
    /// Code (dense, from 0, per vocabulary).
    pub code: u32,
    /// Value.
    pub value: String,
}
