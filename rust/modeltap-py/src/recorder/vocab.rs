//! Vocabularies of categorical features and string labels: each distinct
//! value gets a dense code, announced to the drain thread before the first
//! record that uses it.
//!
//! A value is first spelled as its canonical string (which may run Python
//! code: `__str__` of an `Enum`, say, and with it release the GIL), and only
//! then interned, under a lock held by no Python code: two threads interning
//! at once can never hand out the same code for different values, nor two
//! codes for one value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use modeltap_core::batch::{VocabEntry, VocabTarget};
use modeltap_core::pipeline::Pipeline;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyString};

use crate::parse::to_str;

/// Distinct values kept per vocabulary; values past this travel as strings
/// beside the record.
pub const MAX_VOCAB: usize = 65_536;
/// Bytes a vocabulary entry is charged beside its value: the map entry and
/// string headers here, and the copies the drain thread and the profiler
/// keep (three in all).
const ENTRY_OVERHEAD: usize = 64;
const COPIES: usize = 3;
/// Longest categorical value or label kept (bytes); longer ones are cut.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The canonical spelling of a categorical value, the one references use:
/// strings as they are, booleans as `true` / `false`, integral floats
/// without a decimal point, anything else as `str(value)`. `None` for a
/// missing value (`None`, NaN).
pub fn canonical<'a>(item: &'a Bound<'_, PyAny>) -> Option<Cow<'a, str>> {
    spelled(item).map(|v| {
        if v.len() > MAX_VALUE_BYTES {
            Cow::Owned(super::clip(v.into_owned(), MAX_VALUE_BYTES))
        } else {
            v
        }
    })
}

fn spelled<'a>(item: &'a Bound<'_, PyAny>) -> Option<Cow<'a, str>> {
    if let Ok(s) = item.cast::<PyString>() {
        return Some(match s.to_str() {
            Ok(v) => Cow::Borrowed(v),
            Err(_) => Cow::Owned(s.to_string_lossy().into_owned()),
        });
    }
    if item.is_none() {
        return None;
    }
    if item.is_instance_of::<PyBool>() || is_numpy_bool(item) {
        let t = item.is_truthy().unwrap_or(false);
        return Some(Cow::Borrowed(if t { "true" } else { "false" }));
    }
    if let Ok(f) = item.cast::<PyFloat>() {
        return float_spelling(f.value());
    }
    if let Ok(v) = item.extract::<f64>() {
        if !item.is_instance_of::<pyo3::types::PyInt>() {
            return float_spelling(v);
        }
    }
    Some(Cow::Owned(to_str(item)))
}

/// The canonical spelling of a float category: integral values below 9e15
/// as integers ("3", not "3.0"; -0.0 as "0"), every other value as
/// Python's `repr` spells it ("0.1", "1e-07", "1e+20", "inf"), which is how
/// references, `log`, `log_batch` and DataFrames all spell it. `None` for
/// NaN (missing).
pub fn float_spelling(v: f64) -> Option<Cow<'static, str>> {
    if v.is_nan() {
        return None;
    }
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        #[allow(clippy::cast_possible_truncation)]
        return Some(Cow::Owned((v as i64).to_string()));
    }
    Some(Cow::Owned(python_repr(v)))
}

/// `repr(v)` of a Python float: the shortest digits that read back as `v`,
/// in fixed notation for decimal exponents from -4 to 15 (with ".0" when
/// integral) and scientific ("1.5e+20", "1e-07") outside.
pub fn python_repr(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if v.is_nan() {
        return "nan".to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else {
            let point = point as usize;
            if digits.len() <= point {
                format!("{digits}{}.0", "0".repeat(point - digits.len()))
            } else {
                format!("{}.{}", &digits[..point], &digits[point..])
            }
        };
        return format!("{sign}{body}");
    }
    let (first, rest) = digits.split_at(1);
    let mantissa = if rest.is_empty() {
        first.to_owned()
    } else {
        format!("{first}.{rest}")
    };
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{mantissa}e{esign}{:02}", exp.unsigned_abs())
}

/// Whether `item` is a numpy bool scalar.
pub(crate) fn is_numpy_bool(item: &Bound<'_, PyAny>) -> bool {
    item.get_type()
        .name()
        .is_ok_and(|n| n.to_str().is_ok_and(|n| n == "bool" || n == "bool_"))
        && item
            .get_type()
            .module()
            .is_ok_and(|m| m.to_str().is_ok_and(|m| m == "numpy"))
}

/// The memory all vocabularies of one recorder may take together (the
/// pipeline's `vocab_bytes`); past it, new values travel as strings beside
/// their record, charged to the side budget.
#[derive(Debug)]
pub struct VocabBudget {
    used: AtomicUsize,
    limit: usize,
}

impl VocabBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    fn charge(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > self.limit {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// One vocabulary: value → code.
#[derive(Debug)]
pub struct Vocab {
    target: VocabTarget,
    codes: Mutex<Codes>,
    budget: Arc<VocabBudget>,
}

/// Value → code, and code → value (one shared copy of each string).
#[derive(Debug, Default)]
struct Codes {
    by_value: HashMap<Arc<str>, u32>,
    values: Vec<Arc<str>>,
}

impl Vocab {
    /// An empty vocabulary for `target`, charged to `budget`.
    pub fn new(target: VocabTarget, budget: &Arc<VocabBudget>) -> Self {
        Self {
            target,
            codes: Mutex::new(Codes::default()),
            budget: Arc::clone(budget),
        }
    }

    /// The code of `value`, interning it when new (announced to the drain
    /// thread first). `None` when the vocabulary is full: the value then
    /// travels as a string beside the record.
    pub fn code(&self, pipe: &Pipeline, value: &str) -> Option<u32> {
        let mut codes = self
            .codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&c) = codes.by_value.get(value) {
            return Some(c);
        }
        if codes.values.len() >= MAX_VOCAB
            || !self.budget.charge(COPIES * (value.len() + ENTRY_OVERHEAD))
        {
            return None;
        }
        let code = u32::try_from(codes.values.len()).ok()?;
        // Announce before the first record with this code is pushed, and
        // under the lock, so codes reach the drain thread in order.
        pipe.announce_vocab(VocabEntry {
            target: self.target,
            code,
            value: value.to_owned(),
        });
        let shared: Arc<str> = Arc::from(value);
        codes.by_value.insert(Arc::clone(&shared), code);
        codes.values.push(shared);
        Some(code)
    }

    /// The entries with codes from `start` on, in code order (for a
    /// profiler that learns codes outside the drain thread).
    pub fn entries_from(&self, start: usize) -> Vec<VocabEntry> {
        let codes = self
            .codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        codes
            .values
            .iter()
            .enumerate()
            .skip(start)
            .map(|(code, value)| VocabEntry {
                target: self.target,
                code: u32::try_from(code).unwrap_or(u32::MAX),
                value: value.to_string(),
            })
            .collect()
    }

    /// Codes handed out so far.
    pub fn len(&self) -> usize {
        self.codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values
            .len()
    }
}

impl super::Recorder {
    /// The code of a categorical value of `feature` (interning it), NaN for
    /// a missing value, or NaN with the value carried beside the record as a
    /// string when the vocabulary is full.
    pub(super) fn category(
        &self,
        feature: usize,
        item: &Bound<'_, PyAny>,
        parsed: &mut super::Parsed,
    ) -> f64 {
        match canonical(item) {
            Some(key) => self.category_code(feature, key, parsed),
            None => {
                parsed.flags |= modeltap_core::record::flags::MISSING;
                f64::NAN
            }
        }
    }

    /// Like [`Self::category`] for a value already spelled canonically.
    pub(super) fn category_code(
        &self,
        feature: usize,
        key: Cow<'_, str>,
        parsed: &mut super::Parsed,
    ) -> f64 {
        let Some(Some(vocab)) = self.cat_vocabs.get().and_then(|d| d.get(feature)) else {
            return f64::NAN;
        };
        match vocab.code(&self.pipe, &key) {
            Some(code) => f64::from(code),
            None => {
                let fi = u32::try_from(feature).unwrap_or(u32::MAX);
                parsed.side().categories.push((fi, key.into_owned()));
                f64::NAN
            }
        }
    }

    /// The code of a string prediction label (interning it), or NaN with the
    /// label carried beside the record when the vocabulary is full.
    pub(super) fn label(&self, value: &Bound<'_, PyAny>, parsed: &mut super::Parsed) -> f64 {
        let key = canonical(value).unwrap_or(Cow::Borrowed(""));
        match self.labels.code(&self.pipe, &key) {
            Some(code) => f64::from(code),
            None => {
                parsed
                    .side()
                    .categories
                    .push((super::LABEL_OVERFLOW, key.into_owned()));
                f64::NAN
            }
        }
    }
}
