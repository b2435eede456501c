//! The spans held of traces not sampled: the recorder's [`HoldBudget`]
//! and each such trace's [`Kept`] spans.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::finished::Finished;

/// Spans of a trace not sampled held until its root ends (in case one
/// ends in an exception); past that the oldest are let go.
pub(crate) const MAX_KEPT_SPANS: usize = 256;

/// Traces not sampled whose spans may be held at once (see [`HoldBudget`]);
/// the spans of traces begun past it are let go as they end.
pub(crate) const MAX_HELD_TRACES: usize = 1024;

/// What the held spans of traces not sampled may take in one recorder.
pub(crate) struct HoldBudget {
    max_bytes: usize,
    bytes: AtomicUsize,
    traces: AtomicUsize,
    /// Spans of traces not sampled that ended without an error.
    pub(crate) sampled_out: AtomicU64,
    /// Spans of traces not sampled let go before their trace ended, for
    /// want of room (per trace, bytes, traces held).
    pub(crate) released: AtomicU64,
}

impl HoldBudget {
    pub(crate) fn new(buffer_bytes: usize) -> Self {
        Self {
            max_bytes: buffer_bytes / 16,
            bytes: AtomicUsize::new(0),
            traces: AtomicUsize::new(0),
            sampled_out: AtomicU64::new(0),
            released: AtomicU64::new(0),
        }
    }

    /// Bytes held now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Traces holding spans now.
    pub(crate) fn traces(&self) -> usize {
        self.traces.load(Ordering::Acquire)
    }

    fn charge(&self, n: usize) -> bool {
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.max_bytes {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A trace not sampled: its finished spans, held until its root ends.
pub(crate) struct Kept {
    pub(super) errored: AtomicBool,
    spans: Mutex<Held>,
    budget: Arc<HoldBudget>,
    /// Counted in `budget.traces` (room was left when the trace began)
    /// until its local root ends: only meanwhile are its spans held.
    holds: AtomicBool,
}

#[derive(Default)]
pub(super) struct Held {
    spans: std::collections::VecDeque<Finished>,
    bytes: usize,
}

impl Kept {
    pub(super) fn new(budget: &Arc<HoldBudget>) -> Arc<Self> {
        let holds = budget
            .traces
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_HELD_TRACES).then_some(n + 1)
            })
            .is_ok();
        Arc::new(Self {
            errored: AtomicBool::new(false),
            spans: Mutex::new(Held::default()),
            budget: Arc::clone(budget),
            holds: AtomicBool::new(holds),
        })
    }

    /// The trace no longer holds spans (its root ended, or it failed and
    /// records every span from now on): its place is given back.
    pub(super) fn stop_holding(&self) {
        if self.holds.swap(false, Ordering::AcqRel) {
            self.budget.traces.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `done`, letting go of this trace's oldest spans (or of `done`)
    /// when the trace or the budget has no room.
    pub(super) fn hold(&self, held: &mut Held, done: Finished) {
        let released = &self.budget.released;
        if !self.holds.load(Ordering::Acquire) {
            released.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = done.held_bytes();
        loop {
            if held.spans.len() < MAX_KEPT_SPANS && self.budget.charge(n) {
                held.bytes += n;
                held.spans.push_back(done);
                return;
            }
            let Some(old) = held.spans.pop_front() else {
                released.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let b = old.held_bytes();
            held.bytes -= b;
            self.budget.release(b);
            released.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes every held span out (its bytes given back).
    pub(super) fn take(&self, held: &mut Held) -> std::collections::VecDeque<Finished> {
        self.budget.release(std::mem::take(&mut held.bytes));
        std::mem::take(&mut held.spans)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // A trace whose root never ended here (ended elsewhere, or never):
        // what it still holds is let go.
        let held = self
            .spans
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.budget.release(std::mem::take(&mut held.bytes));
        let left = held.spans.len() as u64;
        if left > 0 {
            self.budget.released.fetch_add(left, Ordering::Relaxed);
        }
        self.stop_holding();
    }
}
