//! A reference compiled for fast profiling: column indexes, category
//! buckets, checked shapes and shared binning tables.

use std::collections::HashMap;

use super::binner::{Binner, COMPACT_FROM_COLUMNS};
use super::numeric::moments;
use super::reference::{validate_reference, ReferenceError};
use super::seen_filter::SeenFilter;
use super::validate::{check_profile, check_spec, Shape};
use super::{empty_profile, LATENCY_BUCKETS};
use crate::proto;

/// A reference compiled for fast profiling.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The reference itself.
    pub reference: proto::Reference,
    /// Column index by name.
    pub by_name: HashMap<String, usize>,
    /// Category → bucket, per categorical column.
    pub buckets: Vec<HashMap<String, usize>>,
    /// Per column: its shape, `None` where the column or its profile fails
    /// [`check_spec`] / [`check_profile`] (such a column is never profiled).
    shapes: Vec<Option<Shape>>,
    /// Per column: the binning table of a numeric column (a default one
    /// otherwise), built once and shared by every profiler of this
    /// reference (a thousand columns' tables take megabytes).
    binners: Vec<Binner>,
}

impl Compiled {
    /// Compiles a reference that [`decode_reference`] or
    /// [`validate_reference`] accepted (see [`Compiled::try_new`]). Given
    /// an unchecked one it still never panics nor counts into the wrong
    /// bins: a column that fails the checks is left out of every profile.
    ///
    /// [`decode_reference`]: super::decode_reference
    pub fn new(reference: proto::Reference) -> Self {
        let by_name = reference
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let buckets = reference
            .columns
            .iter()
            .map(|c| {
                c.categorical.as_ref().map_or_else(HashMap::new, |cat| {
                    cat.categories
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v.clone(), i))
                        .collect()
                })
            })
            .collect();
        let shapes = reference
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let shape = check_spec(c).ok()?;
                check_profile(shape, reference.profiles.get(i)?).ok()?;
                Some(shape)
            })
            .collect::<Vec<Option<Shape>>>();
        let numeric = |i: usize| matches!(shapes[i], Some(Shape::Numeric { .. }));
        let compact = (0..shapes.len()).filter(|&i| numeric(i)).count() >= COMPACT_FROM_COLUMNS;
        let binners = reference
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| match (&c.numeric, numeric(i)) {
                (Some(n), true) if compact => Binner::compact(&n.cuts),
                (Some(n), true) => Binner::new(&n.cuts),
                _ => Binner::default(),
            })
            .collect();
        Self {
            reference,
            by_name,
            buckets,
            shapes,
            binners,
        }
    }

    /// The binning table of column `col` (a default one for a column that
    /// is not numeric, or out of range).
    pub fn binner(&self, col: usize) -> &Binner {
        static NONE: std::sync::OnceLock<Binner> = std::sync::OnceLock::new();
        self.binners
            .get(col)
            .unwrap_or_else(|| NONE.get_or_init(Binner::default))
    }

    /// Checks a reference completely ([`validate_reference`]), then
    /// compiles it.
    pub fn try_new(reference: proto::Reference) -> Result<Self, ReferenceError> {
        validate_reference(&reference)?;
        Ok(Self::new(reference))
    }

    /// The shape of column `col`, `None` for a column that failed the
    /// checks (or is past the last).
    pub fn shape(&self, col: usize) -> Option<Shape> {
        self.shapes.get(col).copied().flatten()
    }

    /// Bucket of a categorical value in column `col`: a category, "other"
    /// (the reference had more values than it kept) or "unseen".
    pub fn bucket(&self, col: usize, value: &str) -> usize {
        let Some(map) = self.buckets.get(col) else {
            return self.miss_bucket(col);
        };
        map.get(value)
            .copied()
            .unwrap_or_else(|| self.miss_bucket_of(col, value.as_bytes()))
    }

    /// The bucket of `value`, none of column `col`'s categories: "other"
    /// when the reference held it but did not keep it (its seen-filter, or
    /// without one, whenever the reference kept only its most frequent
    /// values), else "unseen".
    pub fn miss_bucket_of(&self, col: usize, value: &[u8]) -> usize {
        let cat = self
            .reference
            .columns
            .get(col)
            .and_then(|c| c.categorical.as_ref());
        match cat {
            Some(c)
                if !c.complete && !SeenFilter::contains(&c.seen_filter, c.seen_hashes, value) =>
            {
                c.categories.len() + 1 // unseen
            }
            _ => self.miss_bucket(col),
        }
    }

    /// The bucket of a value that is none of column `col`'s categories:
    /// "other" when the reference kept only its most frequent values, else
    /// "unseen".
    pub fn miss_bucket(&self, col: usize) -> usize {
        let cat = self
            .reference
            .columns
            .get(col)
            .and_then(|c| c.categorical.as_ref());
        let kept = cat.map_or(0, |c| c.categories.len());
        if cat.is_none_or(|c| c.complete) {
            kept + 1 // unseen
        } else {
            kept // other
        }
    }

    /// An empty window profile for this reference.
    pub fn empty_window(&self, start: u64, width: u64) -> proto::WindowProfile {
        proto::WindowProfile {
            window_start_unix_nano: start,
            window_nano: width,
            reference_fingerprint: self.reference.fingerprint.clone(),
            columns: self
                .reference
                .columns
                .iter()
                .enumerate()
                .map(|(i, spec)| match self.reference.profiles.get(i) {
                    Some(rp) if self.shape(i).is_some() => {
                        let (mean, _) = moments(rp);
                        let shift = if mean.is_finite() { mean } else { 0.0 };
                        empty_profile(spec, shift, rp.ref_min, rp.ref_max)
                    }
                    _ => proto::ColumnProfile::default(),
                })
                .collect(),
            latency_counts: vec![0; LATENCY_BUCKETS],
            ..Default::default()
        }
    }
}
