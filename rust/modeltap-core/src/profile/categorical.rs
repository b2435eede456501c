//! Categorical column profiles: adding values by bucket, and building a
//! categorical column's spec (the categories kept, its seen-filter) with
//! the reference's profile of it.

use super::empty_profile;
use super::seen_filter::SeenFilter;
use crate::proto;

/// Adds a categorical value (a bucket index; `None` for missing).
#[inline]
pub fn add_category(p: &mut proto::ColumnProfile, bucket: Option<usize>) {
    match bucket {
        Some(b) => {
            if let Some(c) = p.counts.get_mut(b) {
                *c += 1;
                p.n += 1;
            }
        }
        None => p.missing += 1,
    }
}

/// Builds a categorical column spec from distinct values and their counts.
pub fn build_categorical(
    name: &str,
    role: proto::ColumnRole,
    class_index: u32,
    values: Vec<(String, u64)>,
    missing: u64,
    max_categories: usize,
) -> (proto::ColumnSpec, proto::ColumnProfile) {
    build_categorical_chosen(
        name,
        role,
        class_index,
        values,
        missing,
        max_categories,
        None,
        &[],
    )
}

/// [`build_categorical`], keeping the categories `chosen` (at most
/// `max_categories` of them) when given instead of the most frequent of
/// `values`: a caller that picks them on other rows than it counts keeps
/// their counts free of the luck that made them frequent.
#[allow(clippy::too_many_arguments)]
pub fn build_categorical_chosen(
    name: &str,
    role: proto::ColumnRole,
    class_index: u32,
    values: Vec<(String, u64)>,
    missing: u64,
    max_categories: usize,
    chosen: Option<&[String]>,
    seen: &[String],
) -> (proto::ColumnSpec, proto::ColumnProfile) {
    let mut values = values;
    let (keep, complete) = match chosen {
        Some(chosen) => {
            let chosen: std::collections::HashSet<&str> = chosen
                .iter()
                .take(max_categories.max(1))
                .map(String::as_str)
                .collect();
            let mut kept: Vec<(String, u64)> = Vec::with_capacity(chosen.len());
            let mut rest: Vec<(String, u64)> = Vec::new();
            let mut present = std::collections::HashSet::new();
            for v in values {
                if chosen.contains(v.0.as_str()) {
                    present.insert(v.0.clone());
                    kept.push(v);
                } else {
                    rest.push(v);
                }
            }
            // A chosen category these rows lack is kept, with no count.
            for c in &chosen {
                if !present.contains(*c) {
                    kept.push(((*c).to_owned(), 0));
                }
            }
            kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let keep = kept.len();
            kept.extend(rest);
            values = kept;
            (keep, false)
        }
        None => {
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let keep = values.len().min(max_categories.max(1));
            (keep, keep == values.len())
        }
    };
    let other: u64 = values[keep..].iter().map(|v| v.1).sum();
    let all: Vec<String> = if complete || !seen.is_empty() {
        Vec::new()
    } else {
        values.iter().map(|v| v.0.clone()).collect()
    };
    values.truncate(keep);
    let spec = proto::ColumnSpec {
        name: name.to_owned(),
        kind: proto::ColumnKind::Categorical as i32,
        role: role as i32,
        class_index,
        numeric: None,
        categorical: Some(proto::CategoricalSpec {
            categories: values.iter().map(|v| v.0.clone()).collect(),
            complete,
            ..Default::default()
        }),
    };
    let mut spec = spec;
    if !complete {
        // Every value held, kept or not (`seen`, else the ones counted).
        let (filter, hashes) = if seen.is_empty() {
            SeenFilter::build(all.iter().map(String::as_str))
        } else {
            SeenFilter::build(seen.iter().map(String::as_str))
        };
        if let Some(c) = spec.categorical.as_mut() {
            c.seen_filter = filter;
            c.seen_hashes = hashes;
        }
    }
    let mut prof = empty_profile(&spec, 0.0, 0.0, 0.0);
    for (i, (_, c)) in values.iter().enumerate() {
        prof.counts[i] = *c;
    }
    prof.counts[keep] = other;
    prof.n = values.iter().map(|v| v.1).sum::<u64>() + other;
    prof.missing = missing;
    (spec, prof)
}
