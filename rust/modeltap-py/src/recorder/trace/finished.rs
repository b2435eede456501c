//! An ended span, as the ring takes it.

use std::sync::Arc;

use modeltap_core::record::{Side, Slot, SlotKind};

use crate::recorder::Recorder;

/// An ended span, as the ring takes it.
pub(super) struct Finished {
    pub(super) trace_id: u128,
    pub(super) span_id: u64,
    pub(super) parent: u64,
    pub(super) start_unix_nano: u64,
    pub(super) duration_nano: u64,
    pub(super) status: u8,
    pub(super) kind: u8,
    /// The span began its trace in this process (no parent, or a remote one).
    pub(super) root: bool,
    pub(super) name: Arc<str>,
    pub(super) side: Option<Box<Side>>,
}

impl Finished {
    /// What holding this span takes (its side box and itself).
    pub(super) fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.side.as_ref().map_or(0, |s| s.heap_bytes())
    }

    pub(super) fn push(self, rec: &Recorder) {
        let side_bytes = self.side.as_ref().map_or(0, |s| s.heap_bytes());
        let mut side = self.side;
        let mut name = Some(self.name);
        rec.pipe.push_span(side_bytes, |slot: &mut Slot| {
            slot.kind = SlotKind::Span;
            slot.unix_nano = self.start_unix_nano;
            slot.request_id = 0;
            slot.trace_id = self.trace_id;
            slot.span_id = self.span_id;
            slot.parent_span_id = self.parent;
            #[allow(clippy::cast_precision_loss)]
            {
                slot.latency_s = self.duration_nano as f64;
            }
            slot.flags = u32::from(self.root);
            slot.n_outputs = 0;
            slot.n_probabilities = 0;
            slot.status = self.status;
            slot.span_kind = self.kind;
            slot.span_name = name.take();
            slot.side = side.take();
        });
    }
}
