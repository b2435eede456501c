//! A record as read from Python: its parsed header, the reason it is
//! refused, and the value flags that make it a problem.

use modeltap_core::record::{flags, PredictionKind, Side};

pub(super) const PROBLEM_FLAGS: u32 =
    flags::MISSING | flags::NONFINITE | flags::BAD_VALUE | flags::NO_PREDICTION;

/// A record that cannot be accepted, with the reason.
pub(super) struct Reject(pub(super) String);

/// The parsed header of one record; its values sit in the scratch row.
pub(super) struct Parsed {
    pub(super) flags: u32,
    pub(super) kind: PredictionKind,
    pub(super) n_outputs: u16,
    pub(super) n_probabilities: u16,
    pub(super) side: Option<Box<Side>>,
}

impl Parsed {
    pub(super) fn side(&mut self) -> &mut Side {
        self.side.get_or_insert_with(Box::default)
    }
}

pub(super) fn flag_names(f: u32) -> String {
    let mut v = Vec::new();
    if f & flags::MISSING != 0 {
        v.push("missing or NaN values");
    }
    if f & flags::NONFINITE != 0 {
        v.push("infinite values");
    }
    if f & flags::BAD_VALUE != 0 {
        v.push("non-numeric values where numbers were expected");
    }
    if f & flags::NO_PREDICTION != 0 {
        v.push("no prediction");
    }
    v.join(", ")
}

pub(super) fn u16_len(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX - 1)
}
