//! How `log_batch` waits for room in the ring.

use std::time::{Duration, Instant};

use modeltap_core::pipeline::Pipeline;

use super::BULK_STALL;

/// How `log_batch` (and `log_labels`) wait for room in the ring (see
/// `Recorder::log_many`).
pub(in crate::recorder) struct Waiter<'a> {
    pub(in crate::recorder) pipe: &'a Pipeline,
    pub(in crate::recorder) block: bool,
    pub(in crate::recorder) call_deadline: Instant,
}

impl Waiter<'_> {
    /// Tries `try_push` until it lands: however long with `on_full="block"`
    /// (unless the pipeline stops); in drop mode while the drain thread
    /// makes progress and the call's deadline has not passed, else sets
    /// `stalled` and gives up.
    pub(in crate::recorder) fn push(
        &self,
        try_push: &mut dyn FnMut() -> bool,
        stalled: &mut bool,
    ) -> bool {
        let pipe = self.pipe;
        if self.block {
            loop {
                if try_push() {
                    return true;
                }
                if pipe.is_stopping() {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        if try_push() {
            return true;
        }
        // Wait while the drain thread makes room; once it stops making
        // progress, give up on this and the rest.
        let mut progress_at = Instant::now();
        let mut seen = pipe.consumed();
        loop {
            if pipe.is_stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
            if try_push() {
                return true;
            }
            let now_consumed = pipe.consumed();
            if now_consumed != seen {
                seen = now_consumed;
                progress_at = Instant::now();
            } else if progress_at.elapsed() >= BULK_STALL {
                *stalled = true;
                return false;
            }
            if Instant::now() >= self.call_deadline {
                *stalled = true;
                return false;
            }
        }
    }
}
