//! Window profiles merge associatively and commutatively: the drift of a
//! merged profile does not depend on how records were split or ordered.

use modeltap_core::profile::{add_numeric, build_numeric, merge_window, Compiled};
use modeltap_core::proto;
use proptest::prelude::*;

fn reference() -> Compiled {
    let values: Vec<f64> = (0..2000).map(|i| f64::from(i).sin() * 3.0).collect();
    let (spec, prof) = build_numeric("x", proto::ColumnRole::Feature, 0, &values, 10, false);
    let columns = vec![spec];
    Compiled::new(proto::Reference {
        format_version: 1,
        fingerprint: modeltap_core::profile::fingerprint(&columns),
        columns,
        profiles: vec![prof],
        ..Default::default()
    })
}

fn window(c: &Compiled, start: u64, values: &[f64]) -> proto::WindowProfile {
    let mut w = c.empty_window(start, 60);
    let cuts = c.reference.columns[0]
        .numeric
        .as_ref()
        .unwrap()
        .cuts
        .clone();
    for &v in values {
        add_numeric(&mut w.columns[0], &cuts, v);
        w.records += 1;
    }
    w
}

fn close(a: &proto::WindowProfile, b: &proto::WindowProfile) -> bool {
    let (x, y) = (&a.columns[0], &b.columns[0]);
    let near = |p: f64, q: f64| (p - q).abs() <= 1e-9 * (1.0 + p.abs().max(q.abs()));
    x.counts == y.counts
        && x.n == y.n
        && x.missing == y.missing
        && x.below_min == y.below_min
        && x.above_max == y.above_max
        && near(x.sum, y.sum)
        && near(x.sum_sq, y.sum_sq)
        && near(x.below_sum, y.below_sum)
        && near(x.above_sum, y.above_sum)
        && x.min.to_bits() == y.min.to_bits()
        && x.max.to_bits() == y.max.to_bits()
        && a.records == b.records
        && a.window_start_unix_nano == b.window_start_unix_nano
        && a.window_nano == b.window_nano
}

fn values() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        prop_oneof![-10.0f64..10.0, Just(f64::NAN), Just(f64::INFINITY)],
        0..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 128 }, ..ProptestConfig::default() })]

    #[test]
    fn merge_is_commutative(a in values(), b in values(), sa in 0u64..5, sb in 0u64..5) {
        let c = reference();
        let (wa, wb) = (window(&c, sa * 60, &a), window(&c, sb * 60, &b));
        let mut ab = wa.clone();
        merge_window(&mut ab, &wb);
        let mut ba = wb.clone();
        merge_window(&mut ba, &wa);
        prop_assert!(close(&ab, &ba));
    }

    #[test]
    fn merge_is_associative(a in values(), b in values(), d in values()) {
        let c = reference();
        let (wa, wb, wd) = (window(&c, 0, &a), window(&c, 60, &b), window(&c, 120, &d));
        let mut left = wa.clone();
        merge_window(&mut left, &wb);
        merge_window(&mut left, &wd);
        let mut bd = wb.clone();
        merge_window(&mut bd, &wd);
        let mut right = wa.clone();
        merge_window(&mut right, &bd);
        prop_assert!(close(&left, &right));
    }

    #[test]
    fn merged_equals_one_profile_of_all(a in values(), b in values()) {
        let c = reference();
        let mut merged = window(&c, 0, &a);
        merge_window(&mut merged, &window(&c, 0, &b));
        let all: Vec<f64> = a.iter().chain(&b).copied().collect();
        prop_assert!(close(&merged, &window(&c, 0, &all)));
    }
}
