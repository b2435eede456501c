//! Ring push/pop cost: one producer, and four producers against a consumer.
//! Run: `cargo bench -p modeltap-core --bench ring`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use modeltap_core::{Ring, Slot};

const STRIDE: usize = 24; // 20 features + prediction + 3 probabilities

fn fill(slot: &mut Slot, v: f64) {
    slot.unix_nano = 1;
    slot.request_id = 7;
    slot.values.fill(v);
}

fn single_producer(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    let ring = Ring::new(1 << 16, || Slot::with_stride(STRIDE));
    g.bench_function("push+pop/1 producer", |b| {
        b.iter(|| {
            ring.push_with(|s| fill(s, black_box(1.0)));
            black_box(ring.pop_with(|s| s.values[0]));
        });
    });
    g.bench_function("push/uncontended", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(60_000);
                let start = Instant::now();
                for _ in 0..n {
                    ring.push_with(|s| fill(s, black_box(1.0)));
                }
                total += start.elapsed();
                while ring.pop_with(|_| ()).is_some() {}
                left -= n;
            }
            total
        });
    });
    g.finish();
}

fn four_producers(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.bench_function("push/4 producers + consumer", |b| {
        b.iter_custom(|iters| {
            let ring = Arc::new(Ring::new(1 << 16, || Slot::with_stride(STRIDE)));
            let done = Arc::new(AtomicBool::new(false));
            let consumer = {
                let ring = Arc::clone(&ring);
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    while !done.load(Ordering::Acquire) || !ring.is_empty() {
                        if ring.pop_with(|s| black_box(s.values[0])).is_none() {
                            std::hint::spin_loop();
                        }
                    }
                })
            };
            let per = iters / 4 + 1;
            let start = Instant::now();
            let producers: Vec<_> = (0..4)
                .map(|_| {
                    let ring = Arc::clone(&ring);
                    std::thread::spawn(move || {
                        for _ in 0..per {
                            while !ring.push_with(|s| fill(s, 1.0)) {
                                std::hint::spin_loop();
                            }
                        }
                    })
                })
                .collect();
            for p in producers {
                p.join().unwrap();
            }
            let elapsed = start.elapsed();
            done.store(true, Ordering::Release);
            consumer.join().unwrap();
            elapsed
        });
    });
    g.finish();
}

criterion_group!(benches, single_producer, four_producers);
criterion_main!(benches);
