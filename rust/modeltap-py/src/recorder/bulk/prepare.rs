//! A large batch profiled in the call, before its rows are pushed (see
//! `bulk_profile`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use modeltap_core::batch::Schema;
use modeltap_core::profile::{merge_window, Compiled};
use modeltap_core::proto;
use modeltap_core::record::{flags, Side, SlotKind};
use numpy::ndarray::ArrayView2;

use super::columns::PredColumns;
use crate::recorder::features::XView;
use crate::recorder::{bulk_profile, u16_len, Recorder, MAX_ID_BYTES};

/// Everything `log_batch` read from its arguments, for profiling.
pub(super) struct BatchRows<'a, 'v> {
    pub(super) schema: &'a Schema,
    pub(super) view: &'a XView<'v>,
    pub(super) preds: &'a PredColumns,
    pub(super) probs: Option<&'a ArrayView2<'v, f64>>,
    pub(super) latency: &'a [f64],
    pub(super) cat_codes: &'a [f64],
    pub(super) cat_flags: &'a [u32],
    pub(super) cat_side: &'a [Option<Box<Side>>],
    pub(super) given_ids: bool,
    pub(super) unix_nano: u64,
}

/// A batch profiled in the call: its window profile (to push ahead of its
/// rows) and each row's value flags.
pub(super) struct Prepared {
    /// The batch's window profile in column groups that each fit a ring
    /// slot, with the reference column each starts at.
    pub(super) parts: Vec<(Option<Box<proto::WindowProfile>>, usize)>,
    pub(super) row_flags: Vec<u32>,
}

impl Recorder {
    /// Profiles a batch in the caller's call (see `bulk_profile`), or
    /// `None` when the drain thread should profile it record by record: a
    /// small batch, a row that might not fit the ring's side budget (its
    /// fate is decided per row), or a profiler that failed before.
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn profile_batch(&self, b: &BatchRows<'_, '_>) -> Option<Prepared> {
        let (n, nf) = b.view.dim();
        if n < bulk_profile::MIN_ROWS || self.caller_prof_failed.load(Ordering::Relaxed) {
            return None;
        }
        let schema = b.schema;
        let prob_w = b.probs.map_or(0, |p| p.dim().1);
        if prob_w >= usize::from(u16::MAX) {
            return None;
        }
        let max_side = self.pipe.config().max_record_side_bytes();
        let fixed = std::mem::size_of::<Side>()
            + if b.given_ids { MAX_ID_BYTES + 64 } else { 0 }
            + if prob_w > schema.prob_cap {
                8 * prob_w
            } else {
                0
            };
        for r in 0..n {
            let mut bytes = fixed;
            let prow = b.preds.row(r);
            if prow.len() > schema.out_cap {
                bytes += 8 * prow.len();
            }
            if let Some(s) = b.cat_side.get(r).and_then(Option::as_deref) {
                bytes += s.heap_bytes();
            }
            if let Some(s) = b.preds.labels.get(r).and_then(Option::as_deref) {
                bytes += s.heap_bytes();
            }
            if bytes > max_side {
                return None;
            }
        }
        // A profiler of the pool (or a new one): a call never waits for
        // another thread's profiling.
        let taken = self
            .caller_prof
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut own = taken.unwrap_or_else(|| {
            let compiled = self
                .pipe
                .config()
                .reference
                .clone()
                .unwrap_or_else(|| Arc::new(Compiled::new(proto::Reference::default())));
            let window_ns = u64::try_from(self.pipe.config().window.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
            bulk_profile::CallerProfiler::new(compiled, schema, window_ns)
        });
        let cp = &mut own;
        cp.sync(self.cat_vocabs.get().map(Vec::as_slice), &self.labels);
        let run = std::panic::AssertUnwindSafe(|| {
            let mut w = std::mem::take(cp.prof.window_mut(b.unix_nano));
            let max_part = self.pipe.max_profile_part_bytes();
            let column_bytes = |c: &proto::ColumnProfile| {
                std::mem::size_of::<proto::WindowProfile>()
                    + std::mem::size_of::<proto::ColumnProfile>()
                    + 8 * c.counts.len()
            };
            if w.columns.iter().any(|c| column_bytes(c) > max_part) {
                return None;
            }
            let row_flags = bulk_profile::profile_numeric(b.view, schema, &cp.prof, &mut w.columns);
            *cp.prof.window_mut(b.unix_nano) = w;
            let mut slot = bulk_profile::scratch_slot(schema, prob_w);
            let (out_cap, stride) = (schema.out_cap, slot.values.len());
            let mut none = Vec::new;
            for (r, &value_flags) in row_flags.iter().enumerate() {
                slot.kind = SlotKind::Record;
                slot.unix_nano = b.unix_nano;
                slot.latency_s = b.latency[r];
                slot.prediction_kind = b.preds.kinds[r];
                slot.flags =
                    b.preds.flags[r] | b.cat_flags.get(r).copied().unwrap_or(0) | value_flags;
                for c in 0..nf {
                    if schema.categorical[c] {
                        slot.values[c] = b.cat_codes[r * nf + c];
                    }
                }
                let prow = b.preds.row(r);
                let w = prow.len().min(out_cap);
                slot.values[nf..nf + w].copy_from_slice(&prow[..w]);
                slot.n_outputs = if b.preds.flags[r] & flags::NO_PREDICTION != 0 {
                    0
                } else {
                    u16_len(w)
                };
                slot.n_probabilities = 0;
                if let Some(pv) = b.probs {
                    let prow = pv.row(r);
                    let at = nf + out_cap;
                    for (k, v) in prow.iter().enumerate().take(stride - at) {
                        slot.values[at + k] = *v;
                    }
                    slot.n_probabilities = u16_len(prow.len());
                }
                let cats = b.cat_side.get(r).and_then(Option::as_deref);
                let label = b.preds.labels.get(r).and_then(Option::as_deref);
                slot.side = (cats.is_some() || label.is_some()).then(|| {
                    let mut s = Side::default();
                    for x in cats.into_iter().chain(label) {
                        s.categories.extend(x.categories.iter().cloned());
                    }
                    Box::new(s)
                });
                cp.prof.add_without_numeric_features(&slot, &mut none);
            }
            slot.side = None;
            Some(row_flags)
        });
        let prepared = match std::panic::catch_unwind(run) {
            Ok(Some(row_flags)) => {
                let mut parts = cp.prof.take().into_iter();
                let max_part = self.pipe.max_profile_part_bytes();
                parts.next().and_then(|mut part| {
                    for p in parts {
                        merge_window(&mut part, &p);
                    }
                    let groups = modeltap_core::profile::split_columns(part, max_part)?;
                    Some(Prepared {
                        parts: groups
                            .into_iter()
                            .map(|(g, from)| (Some(Box::new(g)), from))
                            .collect(),
                        row_flags,
                    })
                })
            }
            Ok(None) => {
                cp.prof.take();
                None
            }
            Err(_) => {
                // Off for good: the drain thread profiles from now on.
                self.caller_prof_failed.store(true, Ordering::Relaxed);
                self.pipe.counters.errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let mut pool = self
            .caller_prof
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < bulk_profile::POOL {
            pool.push(own);
        }
        prepared
    }
}
