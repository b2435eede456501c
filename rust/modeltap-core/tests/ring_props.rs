//! Property tests: every record pushed into the ring is popped exactly once
//! or was refused (and so counted as dropped by the caller).

use std::collections::HashSet;
use std::sync::Arc;

use modeltap_core::{Ring, Slot};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Push,
    Pop,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(prop_oneof![3 => Just(Op::Push), 2 => Just(Op::Pop)], 0..400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

    /// Sequential model: the ring behaves like a bounded FIFO queue.
    #[test]
    fn behaves_like_a_bounded_fifo(cap in 1usize..40, ops in ops()) {
        let ring = Ring::new(cap, || Slot::with_stride(2));
        let capacity = ring.capacity();
        let mut model = std::collections::VecDeque::new();
        let mut next = 0u64;
        let mut dropped = 0u64;
        for op in ops {
            match op {
                Op::Push => {
                    let id = next;
                    next += 1;
                    let ok = ring.push_with(|s| {
                        s.request_id = u128::from(id);
                        s.values[0] = id as f64;
                    });
                    if model.len() < capacity {
                        prop_assert!(ok);
                        model.push_back(id);
                    } else {
                        prop_assert!(!ok);
                        dropped += 1;
                    }
                }
                Op::Pop => {
                    let got = ring.pop_with(|s| (s.request_id, s.values[0]));
                    match model.pop_front() {
                        Some(id) => prop_assert_eq!(got, Some((u128::from(id), id as f64))),
                        None => prop_assert_eq!(got, None),
                    }
                }
            }
            prop_assert_eq!(ring.len(), model.len());
        }
        let mut rest = 0u64;
        while ring.pop_with(|_| ()).is_some() {
            rest += 1;
        }
        prop_assert_eq!(rest as usize, model.len());
        prop_assert_eq!(next, dropped + rest + (next - dropped - rest));
    }

    /// Concurrent producers: pushed-and-accepted records come out exactly
    /// once; refused ones never come out.
    #[test]
    fn concurrent_exactly_once(cap in 1usize..64, producers in 1usize..4, per in 1usize..300) {
        let per = if cfg!(miri) { per.min(20) } else { per };
        let ring = Arc::new(Ring::new(cap, || Slot::with_stride(1)));
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let ring = Arc::clone(&ring);
                std::thread::spawn(move || {
                    let mut accepted = Vec::new();
                    for i in 0..per {
                        let id = (p * per + i) as u128 + 1;
                        if ring.push_with(|s| s.request_id = id) {
                            accepted.push(id);
                        }
                    }
                    accepted
                })
            })
            .collect();
        let mut popped = Vec::new();
        while handles.iter().any(|h| !h.is_finished()) {
            if let Some(id) = ring.pop_with(|s| s.request_id) {
                popped.push(id);
            }
        }
        let accepted: Vec<u128> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        while let Some(id) = ring.pop_with(|s| s.request_id) {
            popped.push(id);
        }
        let set: HashSet<u128> = popped.iter().copied().collect();
        prop_assert_eq!(set.len(), popped.len(), "no record popped twice");
        let acc: HashSet<u128> = accepted.iter().copied().collect();
        prop_assert_eq!(set, acc, "popped exactly the accepted records");
    }
}
