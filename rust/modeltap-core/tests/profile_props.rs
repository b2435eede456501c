//! Window profiles merge associatively and commutatively: the drift of a
//! merged profile does not depend on how records were split or ordered.

use modeltap_core::profile::{add_numeric, build_numeric, merge_window, moments, Compiled};
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

fn same_moments(x: &proto::ColumnProfile, y: &proto::ColumnProfile) -> bool {
    let near = |p: f64, q: f64| {
        (p.is_nan() && q.is_nan()) || (p - q).abs() <= 1e-9 * (1.0 + p.abs().max(q.abs()))
    };
    let ((mx, sx), (my, sy)) = (moments(x), moments(y));
    near(mx, my) && near(sx, sy)
}

fn close(a: &proto::WindowProfile, b: &proto::WindowProfile) -> bool {
    let (x, y) = (&a.columns[0], &b.columns[0]);
    let near = |p: f64, q: f64| (p - q).abs() <= 1e-9 * (1.0 + p.abs().max(q.abs()));
    x.counts == y.counts
        && x.n == y.n
        && x.missing == y.missing
        && x.below_min == y.below_min
        && x.above_max == y.above_max
        // Sums are kept relative to a shift each profile picks (its first
        // value): compare what they stand for.
        && same_moments(x, y)
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

// -- trust: references and profiles from outside ----------------------------

use modeltap_core::batch::Schema;
use modeltap_core::error::ProfileError;
use modeltap_core::profile::{
    build_categorical, decode_reference, decode_window, encode_reference, fingerprint, merge_parts,
    try_merge_window, validate_reference, Profiler, ReferenceError, MAX_COLUMNS, MAX_PSI_BINS,
};
use modeltap_core::stats::window_drift;
use modeltap_core::{PredictionKind, Slot};
use prost::Message;
use std::sync::Arc;

/// A reference of a numeric feature "x", a categorical feature "c" and a
/// categorical (integer class) prediction.
fn mixed() -> proto::Reference {
    let values: Vec<f64> = (0..2000).map(|i| f64::from(i).cos() * 5.0).collect();
    let (sx, px) = build_numeric("x", proto::ColumnRole::Feature, 0, &values, 10, false);
    let (sc, pc) = build_categorical(
        "c",
        proto::ColumnRole::Feature,
        0,
        vec![("a".into(), 5), ("b".into(), 3)],
        1,
        100,
    );
    let classes: Vec<(String, u64)> = (0..10)
        .map(|k| (k.to_string(), 10))
        .chain([("07".to_owned(), 1), ("cat".to_owned(), 1)])
        .collect();
    let (sp, pp) = build_categorical(
        "prediction",
        proto::ColumnRole::Prediction,
        0,
        classes,
        0,
        100,
    );
    let columns = vec![sx, sc, sp];
    proto::Reference {
        format_version: 1,
        fingerprint: fingerprint(&columns),
        columns,
        profiles: vec![px, pc, pp],
        ..Default::default()
    }
}

fn refingerprint(mut r: proto::Reference) -> proto::Reference {
    r.fingerprint = fingerprint(&r.columns);
    r
}

fn corrupt(r: &proto::Reference) -> String {
    match validate_reference(r) {
        Err(ReferenceError::Corrupt(m)) => m,
        other => panic!("accepted or wrong error: {other:?}"),
    }
}

#[test]
fn psi_bin_index_out_of_range_is_rejected() {
    let mut r = mixed();
    let n = r.columns[0].numeric.as_mut().unwrap();
    let n_psi = n.n_psi_bins;
    *n.psi_bin.last_mut().unwrap() = n_psi + 5;
    let r = refingerprint(r);
    let want = format!("column \"x\": PSI bin index {} of fine bin", n_psi + 5);
    assert!(corrupt(&r).starts_with(&want), "{}", corrupt(&r));
    assert!(decode_reference(&encode_reference(&r)).is_err());
    assert!(Compiled::try_new(r).is_err());
}

#[test]
fn kind_and_spec_must_agree() {
    let mut r = mixed();
    r.columns[0].numeric = None;
    r.columns[0].categorical = r.columns[1].categorical.clone();
    r.profiles[0].counts = vec![r.profiles[0].n, 0, 0, 0];
    assert_eq!(
        corrupt(&refingerprint(r)),
        "column \"x\": numeric column without a numeric spec"
    );
    let mut r = mixed();
    r.columns[1].kind = proto::ColumnKind::Numeric as i32;
    assert!(corrupt(&refingerprint(r)).contains("numeric column without a numeric spec"));
    let mut r = mixed();
    r.columns[1].numeric = r.columns[0].numeric.clone();
    assert!(corrupt(&refingerprint(r)).contains("both a numeric and a categorical spec"));
}

#[test]
fn sizes_are_bounded() {
    let mut r = mixed();
    r.columns[0].numeric.as_mut().unwrap().n_psi_bins = u32::MAX;
    assert!(corrupt(&refingerprint(r)).contains("PSI bins (from 1 to"));
    let mut r = mixed();
    let spec = r.columns[0].clone();
    let prof = r.profiles[0].clone();
    r.columns = (0..=MAX_COLUMNS)
        .map(|i| proto::ColumnSpec {
            name: i.to_string(),
            ..spec.clone()
        })
        .collect();
    r.profiles = vec![prof; MAX_COLUMNS + 1];
    assert!(corrupt(&refingerprint(r)).contains("columns (at most"));
    let w = proto::WindowProfile {
        columns: vec![proto::ColumnProfile::default(); MAX_COLUMNS + 1],
        ..Default::default()
    };
    assert!(matches!(
        decode_window(&w.encode_to_vec()),
        Err(ProfileError::Inconsistent(m)) if m.contains("columns (at most")
    ));
    let mut r = mixed();
    r.columns[0].numeric.as_mut().unwrap().n_psi_bins = u32::try_from(MAX_PSI_BINS + 1).unwrap();
    assert!(corrupt(&refingerprint(r)).contains("PSI bins"));
}

fn int_slot(v: f64) -> Slot {
    let mut s = Slot::with_stride(3);
    s.values[0] = 0.5;
    s.values[1] = f64::NAN;
    s.values[2] = v;
    s.n_outputs = 1;
    s.prediction_kind = PredictionKind::Int;
    s.unix_nano = 60_000_000_000;
    s
}

fn schema() -> Schema {
    Schema {
        feature_names: vec!["x".into(), "c".into()],
        categorical: vec![false, true],
        out_cap: 1,
        prob_cap: 0,
    }
}

#[test]
fn unchecked_reference_never_panics_the_profiler() {
    // What an agent's drain thread met: a numeric column with only a
    // categorical spec. Compiled without the checks, the column is simply
    // not profiled; the others are.
    let mut r = mixed();
    r.columns[0].numeric = None;
    r.columns[0].categorical = r.columns[1].categorical.clone();
    let c = Arc::new(Compiled::new(r));
    assert!(c.shape(0).is_none() && c.shape(1).is_some());
    let mut p = Profiler::new(c, &schema(), 60_000_000_000);
    for k in 0..100 {
        p.add(&int_slot(f64::from(k % 3)), &mut Vec::new);
    }
    let w = p.take();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].records, 100);
    assert_eq!(w[0].columns[0].n + w[0].columns[0].missing, 0);
    assert_eq!(w[0].columns[2].n, 100);
}

#[test]
fn distinct_int_predictions_keep_the_map_bounded_and_exact() {
    let r = mixed();
    let c = Arc::new(Compiled::try_new(r).unwrap());
    let mut p = Profiler::new(c.clone(), &schema(), 60_000_000_000);
    // "0".."9" are the integer categories; "07" and "cat" are not how any
    // integer prints.
    assert_eq!(p.int_bucket_entries(), 10);
    let n = 300_000u32;
    for k in 0..n {
        p.add(&int_slot(f64::from(k)), &mut Vec::new);
    }
    p.add(&int_slot(-3.0), &mut Vec::new);
    p.add(&int_slot(f64::NAN), &mut Vec::new);
    assert_eq!(
        p.int_bucket_entries(),
        10,
        "the map grew with the predictions"
    );
    let w = p.take();
    let col = &w[0].columns[2];
    let k = c.reference.columns[2]
        .categorical
        .as_ref()
        .unwrap()
        .categories
        .clone();
    for (i, name) in k.iter().enumerate() {
        let want = u64::from(name.len() == 1); // "0".."9" once each
        assert_eq!(col.counts[i], want, "category {name}");
    }
    let unseen = *col.counts.last().unwrap();
    assert_eq!(unseen, u64::from(n) - 10 + 1);
    assert_eq!(col.missing, 1);
    assert_eq!(col.n, u64::from(n) + 1);
}

#[test]
fn mismatched_profiles_are_refused_or_left_out() {
    let r = mixed();
    let c = Compiled::try_new(r.clone()).unwrap();
    let good = c.empty_window(0, 60);
    let mut bad = good.clone();
    bad.columns[0].counts.push(0);
    let mut acc = good.clone();
    assert!(matches!(
        try_merge_window(&mut acc, &bad),
        Err(ProfileError::Mismatch(m)) if m.contains("column 0")
    ));
    assert_eq!(acc, good, "a refused merge leaves the profile unchanged");
    let d = window_drift(&r, &bad, |_| None).unwrap();
    assert_eq!(d.notes.len(), 1);
    assert!(d.notes[0].contains("column \"x\""));
    let (g, b) = (good.encode_to_vec(), bad.encode_to_vec());
    let m = merge_parts(&r, [&b[..], &g[..], &g[..], b"\xff"]);
    assert_eq!(
        m.skipped.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![0, 3]
    );
    assert!(m.window.is_some());
}

fn mutated(bytes: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(pos, op, val) in edits {
        if b.is_empty() {
            break;
        }
        let i = pos % b.len();
        match op % 3 {
            0 => b[i] = val,
            1 => b.truncate(i),
            _ => b.insert(i, val),
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 256 }, ..ProptestConfig::default() })]

    #[test]
    fn any_reference_bytes_are_checked_or_refused(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)
    ) {
        let bytes = mutated(&encode_reference(&mixed()), &edits);
        if let Ok(r) = decode_reference(&bytes) {
            let c = Arc::new(Compiled::try_new(r.clone()).unwrap());
            let mut p = Profiler::new(c.clone(), &schema(), 1);
            p.add(&int_slot(3.0), &mut Vec::new);
            for w in p.take().iter().chain([c.empty_window(0, 1)].iter()) {
                let d = window_drift(&r, w, |_| None).unwrap();
                // A mutation may leave a valid reference of zero spread
                // (its sums edited): that note is the data's, not a fault.
                prop_assert!(
                    d.notes.iter().all(|n| n.contains("the reference is constant")),
                    "{:?}",
                    d.notes
                );
            }
        }
    }

    #[test]
    fn any_profile_bytes_are_checked_or_refused(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)
    ) {
        let r = mixed();
        let c = Compiled::try_new(r.clone()).unwrap();
        let mut good = c.empty_window(0, 60);
        good.records = 10;
        good.columns[0].counts[3] = 4;
        good.columns[0].n = 4;
        let bytes = mutated(&good.encode_to_vec(), &edits);
        if let Ok(w) = decode_window(&bytes) {
            let mut acc = w.clone();
            let _ = try_merge_window(&mut acc, &w);
            let _ = window_drift(&r, &acc, |_| None);
        }
    }
}
