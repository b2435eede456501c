//! Cost of profiling: nanoseconds per feature value added to a window
//! profile (20 numeric features binned against a reference), record by
//! record (the agent's drain thread) and a whole column at a time (the
//! offline path of `Reference.drift`).
//! Run: `cargo bench -p modeltap-core --bench profile`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use modeltap_core::batch::Schema;
use modeltap_core::profile::{
    add_numeric_slice, build_numeric, empty_profile, fingerprint, Compiled, Profiler,
};
use modeltap_core::{proto, Slot};

const FEATURES: usize = 20;

fn lcg(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    #[allow(clippy::cast_precision_loss)]
    let u = (*state >> 11) as f64 / (1u64 << 53) as f64;
    // roughly normal: sum of uniforms
    u * 6.0 - 3.0
}

fn reference() -> Compiled {
    let mut s = 7u64;
    let mut columns = Vec::new();
    let mut profiles = Vec::new();
    for f in 0..FEATURES {
        let values: Vec<f64> = (0..100_000).map(|_| lcg(&mut s)).collect();
        let (spec, prof) = build_numeric(
            &format!("f{f}"),
            proto::ColumnRole::Feature,
            0,
            &values,
            10,
            false,
        );
        columns.push(spec);
        profiles.push(prof);
    }
    Compiled::new(proto::Reference {
        format_version: 1,
        fingerprint: fingerprint(&columns),
        columns,
        profiles,
        ..Default::default()
    })
}

fn bench(c: &mut Criterion) {
    let compiled = Arc::new(reference());
    let schema = Schema {
        feature_names: (0..FEATURES).map(|f| format!("f{f}")).collect(),
        categorical: vec![false; FEATURES],
        out_cap: 1,
        prob_cap: 0,
    };
    let mut s = 11u64;
    let slots: Vec<Slot> = (0..4096)
        .map(|i| {
            let mut slot = Slot::with_stride(FEATURES + 1);
            for v in slot.values.iter_mut() {
                *v = lcg(&mut s);
            }
            slot.unix_nano = 1_000_000_000 * 60 + i;
            slot.n_outputs = 1;
            slot
        })
        .collect();
    let mut g = c.benchmark_group("profile");
    g.throughput(Throughput::Elements((slots.len() * FEATURES) as u64));
    g.bench_function("add 4096 records x 20 features", |b| {
        let mut p = Profiler::new(Arc::clone(&compiled), &schema, 60_000_000_000);
        b.iter(|| {
            for slot in &slots {
                p.add(black_box(slot), &mut Vec::new);
            }
            black_box(p.take());
        });
    });
    let column: Vec<f64> = (0..65_536).map(|_| lcg(&mut s)).collect();
    g.throughput(Throughput::Elements(column.len() as u64));
    g.bench_function("add a column of 65536 values", |b| {
        let spec = &compiled.reference.columns[0];
        let rp = &compiled.reference.profiles[0];
        let mut p = empty_profile(spec, rp.sum / 1e5, rp.min, rp.max);
        b.iter(|| add_numeric_slice(&mut p, compiled.binner(0), black_box(&column)));
        black_box(p);
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
