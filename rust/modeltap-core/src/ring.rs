//! A bounded lock-free multi-producer ring of pre-allocated slots.
//!
//! The algorithm is Dmitry Vyukov's bounded MPMC queue: every slot carries a
//! sequence number that tells producers and consumers whose turn it is, so a
//! push is one compare-and-swap on the tail plus one release store, and
//! neither side ever takes a lock or allocates. Slots are allocated once, when
//! the ring is built, and reused: a producer writes into the slot's payload in
//! place (`push_with`), a consumer reads it in place (`pop_with`).
//!
//! The ring never blocks: a full ring makes `push_with` return `false` and the
//! caller counts the drop.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicUsize, Ordering, UnsafeCell};

struct Slot<T> {
    /// `pos` when the slot is free for the producer claiming position `pos`,
    /// `pos + 1` when it holds the record written at `pos`.
    seq: AtomicUsize,
    payload: UnsafeCell<T>,
}

/// The top bit of the tail word: set once the ring is closed to producers.
/// Positions never reach it (2^63 pushes).
const CLOSED: usize = 1 << (usize::BITS - 1);

/// Stores `value` into a slot's sequence number when dropped: on the normal
/// path and on unwinding alike.
struct Release<'a> {
    seq: &'a AtomicUsize,
    value: usize,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.seq.store(self.value, Ordering::Release);
    }
}

/// A bounded multi-producer, multi-consumer ring of `T` payloads.
pub struct Ring<T> {
    slots: Box<[Slot<T>]>,
    mask: usize,
    /// Next position a consumer reads.
    head: CachePadded<AtomicUsize>,
    /// Next position a producer claims.
    tail: CachePadded<AtomicUsize>,
}

// SAFETY: a slot's payload is only touched by the one thread that won its
// position (producer after the tail CAS, consumer after the head CAS), and the
// sequence number's release/acquire pair orders the write before the read. So
// `T` moves between threads but is never shared: `T: Send` is enough.
unsafe impl<T: Send> Sync for Ring<T> {}
// SAFETY: as above, the ring owns its payloads outright.
unsafe impl<T: Send> Send for Ring<T> {}

impl<T> Ring<T> {
    /// Builds a ring of `capacity` slots (rounded up to a power of two, at
    /// least 2), each payload made by `init`.
    pub fn new(capacity: usize, mut init: impl FnMut() -> T) -> Self {
        let cap = capacity.max(2).next_power_of_two();
        let slots = (0..cap)
            .map(|i| Slot {
                seq: AtomicUsize::new(i),
                payload: UnsafeCell::new(init()),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            slots,
            mask: cap - 1,
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Records currently held (approximate while producers or consumers run).
    pub fn len(&self) -> usize {
        let tail = self.tail.load(Ordering::Relaxed) & !CLOSED;
        let head = self.head.load(Ordering::Relaxed);
        tail.wrapping_sub(head).min(self.capacity())
    }

    /// Closes the ring to producers: every push that has not yet claimed a
    /// position is refused from now on. Returns the final tail position:
    /// once consumers have taken every record up to it, the ring is empty
    /// for good. Idempotent.
    pub fn close(&self) -> usize {
        // The closing bit lives in the tail word itself, so a producer's CAS
        // on the tail either lands before it (its position is below the
        // returned tail) or fails and sees the ring closed: no extra atomic
        // operation on the push path.
        self.tail.fetch_or(CLOSED, Ordering::SeqCst) & !CLOSED
    }

    /// True once [`Ring::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.tail.load(Ordering::Acquire) & CLOSED != 0
    }

    /// True once the ring is closed and every record pushed before that has
    /// been taken.
    pub fn is_drained(&self) -> bool {
        let tail = self.tail.load(Ordering::Acquire);
        tail & CLOSED != 0 && self.head.load(Ordering::Acquire) == tail & !CLOSED
    }

    /// True when no record is held (approximate while threads run).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Claims a free slot and lets `write` fill its payload in place.
    /// Returns `false`, without calling `write`, when the ring is full or
    /// closed.
    #[inline]
    pub fn push_with(&self, write: impl FnOnce(&mut T)) -> bool {
        self.push_with_pos(write).is_some()
    }

    /// Position (count of pops before this one) the next consumer takes.
    pub fn head_pos(&self) -> usize {
        self.head.load(Ordering::Acquire)
    }

    /// Position (count of pushes before this one) the next producer claims.
    pub fn tail_pos(&self) -> usize {
        self.tail.load(Ordering::Acquire) & !CLOSED
    }

    /// Like [`Ring::push_with`], returning the position the record took.
    #[inline]
    pub fn push_with_pos(&self, write: impl FnOnce(&mut T)) -> Option<usize> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        let slot = loop {
            if pos & CLOSED != 0 {
                return None;
            }
            let slot = &self.slots[pos & self.mask];
            let seq = slot.seq.load(Ordering::Acquire);
            // Wrapping difference read as signed: 0 means the slot is free
            // for `pos`, negative means it still holds a record a lap behind.
            #[allow(clippy::cast_possible_wrap)]
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break slot,
                    Err(current) => pos = current,
                }
            } else if diff < 0 {
                return None;
            } else {
                pos = self.tail.load(Ordering::Relaxed);
            }
        };
        // Publishes the slot even if `write` panics: a claimed position that
        // is never published would stop every consumer at it for good.
        let _publish = Release {
            seq: &slot.seq,
            value: pos.wrapping_add(1),
        };
        slot.payload.with_mut(|p| {
            // SAFETY: winning the CAS on `tail` for `pos` while `seq == pos`
            // gives this thread exclusive access to the payload until the
            // release store (when `_publish` drops) hands it to a consumer.
            write(unsafe { &mut *p });
        });
        Some(pos)
    }

    /// Takes the oldest record, letting `read` consume its payload in place.
    /// Returns `None` when the ring is empty.
    #[inline]
    pub fn pop_with<R>(&self, read: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut pos = self.head.load(Ordering::Relaxed);
        let slot = loop {
            let slot = &self.slots[pos & self.mask];
            let seq = slot.seq.load(Ordering::Acquire);
            #[allow(clippy::cast_possible_wrap)]
            let diff = seq.wrapping_sub(pos.wrapping_add(1)) as isize;
            if diff == 0 {
                match self.head.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break slot,
                    Err(current) => pos = current,
                }
            } else if diff < 0 {
                return None;
            } else {
                pos = self.head.load(Ordering::Relaxed);
            }
        };
        // Returns the slot to producers even if `read` panics, so one bad
        // record can never wedge the ring.
        let _release = Release {
            seq: &slot.seq,
            value: pos.wrapping_add(self.mask + 1),
        };
        let out = slot.payload.with_mut(|p| {
            // SAFETY: `seq == pos + 1` (acquire) means the producer's writes
            // are visible and finished, and winning the CAS on `head` makes
            // this thread the only reader until the release store (when
            // `_release` drops) returns the slot to producers.
            read(unsafe { &mut *p })
        });
        Some(out)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn fifo_and_full() {
        let ring = Ring::new(4, || 0u64);
        for i in 0..4 {
            assert!(ring.push_with(|v| *v = i));
        }
        assert!(!ring.push_with(|v| *v = 99), "a full ring refuses");
        assert_eq!(ring.len(), 4);
        for i in 0..4 {
            assert_eq!(ring.pop_with(|v| *v), Some(i));
        }
        assert_eq!(ring.pop_with(|v| *v), None);
        assert!(ring.is_empty());
    }

    /// A producer or consumer closure that panics leaves the ring usable:
    /// the claimed slot is published (or released) on unwinding.
    #[test]
    #[cfg(not(miri))]
    fn panics_do_not_wedge_the_ring() {
        let ring = Ring::new(2, || 0u64);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ring.push_with(|_| panic!("producer fails"));
        }));
        assert!(r.is_err());
        assert!(ring.push_with(|v| *v = 7));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ring.pop_with(|_| -> u64 { panic!("consumer fails") })
        }));
        assert!(r.is_err());
        assert_eq!(ring.pop_with(|v| *v), Some(7));
        for i in 0..10 {
            assert!(ring.push_with(|v| *v = i));
            assert_eq!(ring.pop_with(|v| *v), Some(i));
        }
    }

    #[test]
    fn closed_ring_refuses_pushes_and_drains() {
        let ring = Ring::new(4, || 0u64);
        assert!(ring.push_with(|v| *v = 1));
        assert!(ring.push_with(|v| *v = 2));
        let end = ring.close();
        assert_eq!(end, 2);
        assert_eq!(ring.close(), 2, "closing is idempotent");
        assert!(ring.is_closed());
        assert!(!ring.push_with(|v| *v = 3), "a closed ring refuses");
        assert_eq!(ring.tail_pos(), 2);
        assert_eq!(ring.len(), 2);
        assert!(!ring.is_drained());
        assert_eq!(ring.pop_with(|v| *v), Some(1));
        assert_eq!(ring.pop_with(|v| *v), Some(2));
        assert_eq!(ring.pop_with(|v| *v), None);
        assert!(ring.is_drained());
    }

    #[test]
    fn capacity_rounds_up() {
        assert_eq!(Ring::new(5, || 0u8).capacity(), 8);
        assert_eq!(Ring::new(0, || 0u8).capacity(), 2);
    }

    #[test]
    fn wraps_many_laps() {
        let ring = Ring::new(2, || 0usize);
        for i in 0..1000 {
            assert!(ring.push_with(|v| *v = i));
            assert_eq!(ring.pop_with(|v| *v), Some(i));
        }
    }

    /// Several producers against one consumer: every value pushed comes out
    /// exactly once, and the pushes refused as full are exactly the rest.
    #[test]
    fn threads_exactly_once() {
        const PRODUCERS: usize = 4;
        const PER: usize = if cfg!(miri) { 300 } else { 20_000 };
        let ring = Arc::new(Ring::new(64, || (0usize, Vec::<u8>::new())));
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let ring = Arc::clone(&ring);
                std::thread::spawn(move || {
                    let mut refused = Vec::new();
                    for i in 0..PER {
                        let id = p * PER + i;
                        if !ring.push_with(|v| *v = (id, vec![1, 2, 3])) {
                            refused.push(id);
                        }
                    }
                    refused
                })
            })
            .collect();
        let mut seen = vec![0u8; PRODUCERS * PER];
        let mut done = 0;
        loop {
            while let Some(id) = ring.pop_with(|v| {
                assert_eq!(v.1, vec![1, 2, 3]);
                v.0
            }) {
                seen[id] += 1;
            }
            if done == PRODUCERS {
                break;
            }
            done = handles.iter().filter(|h| h.is_finished()).count();
        }
        let refused: Vec<usize> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        // `is_finished` does not synchronise; `join` does. Records whose
        // publication was not yet visible above are visible now.
        while let Some(id) = ring.pop_with(|v| v.0) {
            seen[id] += 1;
        }
        for id in &refused {
            assert_eq!(seen[*id], 0, "a refused push must not come out");
            seen[*id] = 1;
        }
        assert!(seen.iter().all(|&n| n == 1));
    }
}

#[cfg(loom)]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Two producers race for the slots of a two-slot ring while a consumer
    /// drains it: no value is lost or duplicated, and refusals only happen
    /// when the ring is full.
    #[test]
    fn push_pop_contended() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(2, || 0usize));
            let producers: Vec<_> = (0..2)
                .map(|p| {
                    let ring = Arc::clone(&ring);
                    thread::spawn(move || {
                        let mut ok = Vec::new();
                        for i in 0..2 {
                            let v = p * 10 + i + 1;
                            if ring.push_with(|slot| *slot = v) {
                                ok.push(v);
                            }
                        }
                        ok
                    })
                })
                .collect();
            let mut got = Vec::new();
            if let Some(v) = ring.pop_with(|slot| *slot) {
                got.push(v);
            }
            let mut pushed: Vec<usize> = producers
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect();
            while let Some(v) = ring.pop_with(|slot| *slot) {
                got.push(v);
            }
            pushed.sort_unstable();
            got.sort_unstable();
            assert_eq!(pushed, got);
        });
    }

    /// A producer races the ring's closing while a consumer drains up to the
    /// closing position: every push that succeeded is consumed, none after
    /// the close lands, and the ring ends drained.
    #[test]
    fn close_races_push() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(2, || 0usize));
            let r1 = Arc::clone(&ring);
            let prod = thread::spawn(move || {
                let mut ok = Vec::new();
                for v in 1..=2 {
                    if r1.push_with(|s| *s = v) {
                        ok.push(v);
                    }
                }
                ok
            });
            let end = ring.close();
            let mut got = Vec::new();
            while ring.head_pos() != end {
                if let Some(v) = ring.pop_with(|s| *s) {
                    got.push(v);
                } else {
                    thread::yield_now();
                }
            }
            assert!(ring.is_drained());
            let pushed = prod.join().unwrap();
            assert_eq!(pushed, got);
            assert!(ring.pop_with(|s| *s).is_none());
        });
    }

    /// Two consumers race for the records of two producers.
    #[test]
    fn two_consumers() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(2, || 0usize));
            let r1 = Arc::clone(&ring);
            let prod = thread::spawn(move || {
                let mut n = 0;
                for v in 1..=2 {
                    if r1.push_with(|s| *s = v) {
                        n += v;
                    }
                }
                n
            });
            let r2 = Arc::clone(&ring);
            let cons = thread::spawn(move || r2.pop_with(|s| *s).unwrap_or(0));
            let mine = ring.pop_with(|s| *s).unwrap_or(0);
            let pushed = prod.join().unwrap();
            let theirs = cons.join().unwrap();
            let mut rest = 0;
            while let Some(v) = ring.pop_with(|s| *s) {
                rest += v;
            }
            assert_eq!(pushed, mine + theirs + rest);
        });
    }
}
