//! The writers' side: putting records, spans, labels and profile parts in
//! the ring.

use std::sync::atomic::Ordering;

use super::{lock, Pipeline, MAX_EARLY_SPANS};
use crate::proto;
use crate::record::{Slot, SlotKind};

/// What became of [`Pipeline::try_push_label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelPush {
    /// In the ring (or the early queue); counted in `labels`.
    Pushed,
    /// No room now; nothing counted.
    Full,
    /// Could not be taken, ever; counted in `labels_dropped`.
    Lost,
}

/// What became of an attempt to put a record in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insert {
    Pushed,
    /// No room (ring, side budget), no ring yet, or shut down.
    Full,
    /// The record's writer panicked; the slot was published empty.
    Failed,
    /// The record's variable-length parts exceed what one record may take.
    TooLarge,
}

impl Pipeline {
    /// Copies a record into a free slot with `fill`. Counts it as logged,
    /// and as `dropped_full` (returning `false`) when the ring is full or
    /// the schema is not fixed yet. `fill` must not attach a side box (its
    /// bytes would escape the side budget): use [`Pipeline::push_sized`].
    #[inline]
    pub fn push(&self, fill: impl FnOnce(&mut Slot)) -> bool {
        self.push_sized(0, fill)
    }

    /// Like [`Pipeline::push`] for a record whose `fill` attaches a side box
    /// of `side_bytes` (see `Side::heap_bytes`): refused (`dropped_full`)
    /// when the side budget cannot hold it now, and as `invalid` when it
    /// could never hold it ([`PipelineConfig::max_record_side_bytes`]).
    ///
    /// [`PipelineConfig::max_record_side_bytes`]: super::PipelineConfig::max_record_side_bytes
    #[inline]
    pub fn push_sized(&self, side_bytes: usize, fill: impl FnOnce(&mut Slot)) -> bool {
        self.counters.logged.fetch_add(1, Ordering::AcqRel);
        match self.insert(side_bytes, fill) {
            Insert::Pushed => true,
            Insert::TooLarge => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                false
            }
            Insert::Full | Insert::Failed => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Like [`Pipeline::push_sized`] but does not count a refusal, so the
    /// caller can wait for room and try again (`on_full="block"`, bulk
    /// logging). Returns `true` once the record is taken care of: pushed
    /// (counted as logged), or lost because `fill` panicked (counted as
    /// logged and dropped, and as an error): trying again cannot help.
    #[inline]
    pub fn try_push(&self, side_bytes: usize, fill: impl FnOnce(&mut Slot)) -> bool {
        // Counted before the push, so the record is never shipped before it
        // was logged (the counters add up at every moment); taken back when
        // there was no room.
        self.counters.logged.fetch_add(1, Ordering::AcqRel);
        match self.insert(side_bytes, fill) {
            Insert::Pushed => true,
            Insert::Failed => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                true
            }
            Insert::TooLarge => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                true
            }
            Insert::Full => {
                self.counters.logged.fetch_sub(1, Ordering::AcqRel);
                self.wake_drain();
                false
            }
        }
    }

    /// Counts `n` records that were handed to the agent but could not be
    /// taken (no room, shut down), without touching the ring.
    pub fn count_dropped(&self, n: u64) {
        self.counters.logged.fetch_add(n, Ordering::Relaxed);
        self.counters.dropped_full.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` records that their writer profiled (in a part it pushed
    /// with [`Pipeline::try_push_profile`]) and sampled out of the raw rows.
    pub fn count_sampled_out(&self, n: u64) {
        self.counters.logged.fetch_add(n, Ordering::Relaxed);
        self.counters.sampled_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Most [`crate::record::profile_heap_bytes`] a part given to
    /// [`Pipeline::try_push_profile`] may have: a quarter of the side
    /// budget, so that several parts of one wide profile
    /// ([`crate::profile::split_columns`]) fit in the ring at once.
    pub fn max_profile_part_bytes(&self) -> usize {
        (self.cfg.max_record_side_bytes() / 4)
            .saturating_sub(std::mem::size_of::<crate::record::Side>())
    }

    /// Pushes a window profile built by a writer (`SlotKind::Profile`),
    /// taking it out of `part`, whose first column is reference column
    /// `columns_from`; the drain thread merges it into its own windows, in
    /// ring order, so a flush covers it like a record. Counts nothing (it
    /// is no record). Returns `false`, leaving `part` in place, when the
    /// ring or the side budget has no room now; a part larger than
    /// [`PipelineConfig::max_record_side_bytes`] is never taken (keep parts
    /// within [`Pipeline::max_profile_part_bytes`]).
    ///
    /// [`PipelineConfig::max_record_side_bytes`]: super::PipelineConfig::max_record_side_bytes
    pub fn try_push_profile(
        &self,
        part: &mut Option<Box<proto::WindowProfile>>,
        columns_from: usize,
    ) -> bool {
        let Some(bytes) = part.as_deref().map(crate::record::profile_heap_bytes) else {
            return true;
        };
        let side_bytes = bytes + std::mem::size_of::<crate::record::Side>();
        // Counted before it can be popped (and taken back if it was not
        // pushed), so `in_ring` never counts it as a record.
        self.parts_in_ring.fetch_add(1, Ordering::AcqRel);
        match self.insert(side_bytes, |slot| {
            slot.kind = SlotKind::Profile;
            slot.profiled = false;
            slot.side = Some(Box::new(crate::record::Side {
                profile: part.take(),
                profile_columns_from: columns_from,
                ..Default::default()
            }));
        }) {
            Insert::Pushed => true,
            Insert::Failed => {
                // Published as `Void`: the drain skips it without counting.
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                true
            }
            Insert::TooLarge => {
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                false
            }
            Insert::Full => {
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                self.wake_drain();
                false
            }
        }
    }

    /// Puts a span (`SlotKind::Span`, written by `fill` with a side box of
    /// `side_bytes`) in the ring, never waiting: counted in `spans`, or in
    /// `spans_dropped` (returning `false`) when there is no room. A span is
    /// no record: the record counters do not see it.
    /// Before the first record fixes the schema there is no ring: up to
    /// [`MAX_EARLY_SPANS`] spans wait in a small queue instead.
    pub fn push_span(&self, side_bytes: usize, fill: impl FnOnce(&mut Slot)) -> bool {
        if self.ring.get().is_none() {
            let pushed = self.push_early(side_bytes, SlotKind::Span, fill);
            let counter = if pushed {
                &self.counters.spans
            } else {
                &self.counters.spans_dropped
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return pushed;
        }
        self.parts_in_ring.fetch_add(1, Ordering::AcqRel);
        let pushed = match self.insert(side_bytes, fill) {
            Insert::Pushed => true,
            Insert::Full => {
                self.wake_drain();
                false
            }
            Insert::Failed | Insert::TooLarge => false,
        };
        if pushed {
            self.counters.spans.fetch_add(1, Ordering::Relaxed);
        } else {
            self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
            self.counters.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
        pushed
    }

    /// Puts a label (`SlotKind::Label`, written by `fill` with a side box
    /// of `side_bytes`) in the ring, never waiting. A label is no record:
    /// the record counters do not see it. `Pushed` counts it in `labels`;
    /// `Lost` (its writer panicked, or its side box could never fit) in
    /// `labels_dropped`; `Full` counts nothing, so the caller can wait for
    /// room and try again, or count it with [`Pipeline::count_labels_dropped`].
    /// Before the first record fixes the schema there is no ring: up to
    /// [`MAX_EARLY_SPANS`] spans and labels wait in a small queue instead.
    pub fn try_push_label(&self, side_bytes: usize, fill: impl FnOnce(&mut Slot)) -> LabelPush {
        if side_bytes > self.cfg.max_record_side_bytes() {
            self.counters.labels_dropped.fetch_add(1, Ordering::Relaxed);
            return LabelPush::Lost;
        }
        let fill = |slot: &mut Slot| {
            fill(slot);
            slot.kind = SlotKind::Label;
        };
        if self.ring.get().is_none() {
            if self.push_early(side_bytes, SlotKind::Label, fill) {
                self.counters.labels.fetch_add(1, Ordering::Relaxed);
                return LabelPush::Pushed;
            }
            return LabelPush::Full;
        }
        // Counted before it can be popped, so `in_ring` never counts it.
        self.parts_in_ring.fetch_add(1, Ordering::AcqRel);
        match self.insert(side_bytes, fill) {
            Insert::Pushed => {
                self.counters.labels.fetch_add(1, Ordering::Relaxed);
                LabelPush::Pushed
            }
            Insert::Full => {
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                self.wake_drain();
                LabelPush::Full
            }
            Insert::Failed | Insert::TooLarge => {
                // A failed one was published as `Void`: the drain skips it
                // without counting.
                self.parts_in_ring.fetch_sub(1, Ordering::AcqRel);
                self.counters.labels_dropped.fetch_add(1, Ordering::Relaxed);
                LabelPush::Lost
            }
        }
    }

    /// Counts `n` labels that could not be taken (no room, shut down).
    pub fn count_labels_dropped(&self, n: u64) {
        self.counters.labels_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Before the ring exists: queues a span or label for the drain thread,
    /// charged to the side budget like a slot's side box. `false` when the
    /// queue or the budget is full, or the pipeline shut down.
    fn push_early(&self, side_bytes: usize, kind: SlotKind, fill: impl FnOnce(&mut Slot)) -> bool {
        let mut early = lock(&self.early_parts);
        let room = self.side_used.load(Ordering::Acquire) + side_bytes <= self.cfg.side_bytes();
        if self.is_stopping() || early.len() >= MAX_EARLY_SPANS || !room {
            drop(early);
            self.wake_drain();
            return false;
        }
        let mut slot = Slot::with_stride(0);
        let fill = std::panic::AssertUnwindSafe(|| fill(&mut slot));
        if std::panic::catch_unwind(fill).is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.side_used.fetch_add(side_bytes, Ordering::AcqRel);
        slot.kind = kind;
        slot.side_charge = side_bytes;
        early.push(slot);
        let half = early.len() == MAX_EARLY_SPANS / 2;
        drop(early);
        if half {
            self.wake_drain();
        }
        true
    }

    fn insert(&self, side_bytes: usize, fill: impl FnOnce(&mut Slot)) -> Insert {
        if side_bytes > self.cfg.max_record_side_bytes() {
            return Insert::TooLarge;
        }
        // A shut-down pipeline's ring is closed by the drain thread before it
        // finishes, so a push racing the shutdown either lands before the
        // close (and is drained) or is refused: no record is stranded.
        let Some(ring) = self
            .ring
            .get()
            .filter(|_| !self.stop.load(Ordering::Relaxed))
        else {
            // No ring yet, or shut down: nothing would ever drain it.
            return Insert::Full;
        };
        if side_bytes > 0 {
            let before = self.side_used.fetch_add(side_bytes, Ordering::AcqRel);
            if before.saturating_add(side_bytes) > self.cfg.side_bytes() {
                self.side_used.fetch_sub(side_bytes, Ordering::AcqRel);
                return Insert::Full;
            }
        }
        let mut written = true;
        let pushed = ring.push_with_pos(|slot| {
            slot.request_id_inline.clear();
            let fill = std::panic::AssertUnwindSafe(|| fill(slot));
            if std::panic::catch_unwind(fill).is_err() {
                // Half-written: publish nothing the drain would read.
                slot.reset();
                slot.kind = SlotKind::Void;
                written = false;
            }
            slot.side_charge = side_bytes;
        });
        match pushed {
            Some(_) if !written => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                Insert::Failed
            }
            Some(pos) => {
                if pos & self.wake_mask == self.wake_mask {
                    self.wake_drain();
                }
                Insert::Pushed
            }
            None => {
                if side_bytes > 0 {
                    self.side_used.fetch_sub(side_bytes, Ordering::AcqRel);
                }
                Insert::Full
            }
        }
    }

    /// Bytes of side boxes of records now in the ring.
    pub fn side_used(&self) -> usize {
        self.side_used.load(Ordering::Acquire)
    }

    /// Slots the drain thread has taken out of the ring (and, before the
    /// ring exists, out of the early queue) so far: it moves while the
    /// drain thread makes progress.
    pub fn consumed(&self) -> u64 {
        self.ring.get().map_or(0, |r| r.head_pos() as u64)
            + self.early_taken.load(Ordering::Acquire)
    }

    /// Counts a rejected record.
    pub fn count_invalid(&self) {
        self.counters.logged.fetch_add(1, Ordering::Relaxed);
        self.counters.invalid.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn wake_drain(&self) {
        if let Some(t) = self.drain.get() {
            t.unpark();
        }
    }
}
