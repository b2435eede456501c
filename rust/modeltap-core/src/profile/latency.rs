//! Latency histograms: the bucket of a duration, and the per-stage
//! latencies of a window profile (their entries and their merge).

use crate::proto;

/// Latency buckets: bucket i holds latencies in [2^((i-1)/4), 2^(i/4)) µs,
/// bucket 0 everything below 1 µs, the last everything above.
pub const LATENCY_BUCKETS: usize = 96;
/// Most stage names a window profile keeps (see `StageLatency`); spans of
/// other names count under [`OTHER_STAGE`].
pub const MAX_STAGES: usize = 64;
/// The stage the spans of names past [`MAX_STAGES`] count under.
pub const OTHER_STAGE: &str = "(other)";
/// Longest stage name kept in a profile (bytes; longer ones are cut).
pub const MAX_STAGE_NAME: usize = 256;

/// Latency bucket of a duration in seconds.
#[inline]
pub fn latency_bucket(seconds: f64) -> usize {
    let us = seconds * 1e6;
    if us.is_nan() || us < 1.0 {
        return 0;
    }
    // Saturating: an infinite latency casts to usize::MAX, and it belongs
    // in the last bucket, not wrapped into the first.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let b = ((us.log2() * 4.0) as usize).saturating_add(1);
    b.min(LATENCY_BUCKETS - 1)
}

/// Adds the stage latencies of `b` to `a` (by name and root; names past
/// [`MAX_STAGES`] under [`OTHER_STAGE`]).
pub fn merge_stages(a: &mut Vec<proto::StageLatency>, b: &[proto::StageLatency]) {
    for st in b {
        let at = stage_entry(a, &st.name, st.root);
        if at.counts.len() < st.counts.len() {
            at.counts.resize(st.counts.len(), 0);
        }
        for (x, y) in at.counts.iter_mut().zip(&st.counts) {
            *x = x.saturating_add(*y);
        }
        at.sum = (at.sum + st.sum).min(f64::MAX);
        at.errors = at.errors.saturating_add(st.errors);
    }
}

/// The entry of stage `(name, root)` in `stages`, added if there is room,
/// else the [`OTHER_STAGE`] entry of the same `root`.
pub(super) fn stage_entry<'a>(
    stages: &'a mut Vec<proto::StageLatency>,
    name: &str,
    root: bool,
) -> &'a mut proto::StageLatency {
    let find = |stages: &[proto::StageLatency], n: &str| {
        stages.iter().position(|s| s.root == root && s.name == n)
    };
    let named = stages
        .iter()
        .filter(|s| s.root == root && s.name != OTHER_STAGE)
        .count();
    let i = match find(stages, name) {
        Some(i) => i,
        None => {
            let name = if named < MAX_STAGES {
                name
            } else {
                OTHER_STAGE
            };
            match find(stages, name) {
                Some(i) => i,
                None => {
                    stages.push(proto::StageLatency {
                        name: name.to_owned(),
                        root,
                        counts: vec![0; LATENCY_BUCKETS],
                        ..Default::default()
                    });
                    stages.len() - 1
                }
            }
        }
    };
    &mut stages[i]
}
