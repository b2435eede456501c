//! Categorical columns of numbers (codes in a float matrix), spelled as
//! the agent spells them.

use std::ops::Range;

use modeltap_core::profile;
use modeltap_core::proto;
use numpy::ndarray::s;
use rustc_hash::FxHashMap;

use super::numeric_array::NumView;

/// A categorical column of numbers (codes in a float matrix): each value's
/// bucket found by its bits in a per-thread cache, spelled (integral values
/// as integers, like the agent) only the first time a thread meets it.
pub(super) struct NumberCategories<'a> {
    pub(super) col: usize,
    pub(super) values: NumView<'a>,
}

impl NumberCategories<'_> {
    pub(super) fn add(
        &self,
        p: &mut proto::ColumnProfile,
        compiled: &profile::Compiled,
        cache: &mut FxHashMap<u64, usize>,
        rows: Range<usize>,
    ) {
        match self.values {
            NumView::F64(a) => {
                self.add_values(p, compiled, cache, a.slice(s![rows]).iter().copied())
            }
            NumView::F32(a) => self.add_values(
                p,
                compiled,
                cache,
                a.slice(s![rows]).iter().map(|&v| f64::from(v)),
            ),
        }
    }

    pub(super) fn add_values(
        &self,
        p: &mut proto::ColumnProfile,
        compiled: &profile::Compiled,
        cache: &mut FxHashMap<u64, usize>,
        values: impl Iterator<Item = f64>,
    ) {
        // A direct-mapped table in front of the map: a column of a few
        // codes finds each in one load. Its empty entries hold a NaN's
        // bits, which no looked-up value has.
        const SLOTS: usize = 64;
        let mut near = [(u64::MAX, 0usize); SLOTS];
        for v in values {
            if v.is_nan() {
                profile::add_category(p, None);
                continue;
            }
            let bits = v.to_bits();
            #[allow(clippy::cast_possible_truncation)]
            let slot = (bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SLOTS;
            let b = if near[slot].0 == bits {
                near[slot].1
            } else {
                let b = *cache.entry(bits).or_insert_with(|| {
                    crate::recorder::float_spelling(v).map_or_else(
                        || compiled.miss_bucket(self.col),
                        |s| compiled.bucket(self.col, &s),
                    )
                });
                near[slot] = (bits, b);
                b
            };
            profile::add_category(p, Some(b));
        }
    }
}
