//! Helpers shared by the fuzz targets: the invariants every accepted input
//! must keep, checked the same way by each target.

use std::sync::{Arc, OnceLock};

use modeltap_core::profile::{
    decode_reference, try_merge_window, validate_window, Compiled, Profiler,
};
use modeltap_core::proto;
use modeltap_core::stats::window_drift;
use modeltap_core::{PredictionKind, Schema, Slot};

/// The valid reference the profile target measures drift against (written
/// by `fuzz/make_corpus.py`, which writes the profile corpus against it).
pub fn reference() -> &'static proto::Reference {
    static R: OnceLock<proto::Reference> = OnceLock::new();
    R.get_or_init(|| {
        decode_reference(include_bytes!("../reference.mtref"))
            .expect("fuzz/reference.mtref must be a valid reference")
    })
}

/// Drift of `w` against the checked reference `r`: it must succeed, with
/// no part left out when `w` was built against `r` (`fits`; notes on what
/// the data itself makes undefined, a constant or empty reference column,
/// may still come).
pub fn drift_ok(r: &proto::Reference, w: &proto::WindowProfile, fits: bool) {
    let d = window_drift(r, w, |_| None).expect("a profile of this reference must give drift");
    assert_eq!(d.columns.len(), r.columns.len());
    if fits {
        assert!(
            !d.notes.iter().any(|n| n.ends_with("ignored")),
            "parts of a fitting profile left out: {:?}",
            d.notes
        );
    }
}

/// The reference's own profiles as a window profile, when their totals
/// allow one (records: the most values of any column).
pub fn self_window(r: &proto::Reference) -> Option<proto::WindowProfile> {
    let records = r
        .profiles
        .iter()
        .map(|p| p.n.checked_add(p.missing))
        .try_fold(0u64, |acc, v| v.map(|v| acc.max(v)))?;
    let w = proto::WindowProfile {
        reference_fingerprint: r.fingerprint.clone(),
        columns: r.profiles.clone(),
        records,
        window_nano: 60,
        ..Default::default()
    };
    validate_window(&w).ok().map(|()| w)
}

/// Everything built from a checked reference: an empty window, the
/// reference against itself (PSI 0), and records profiled the way an
/// agent's drain thread does, each giving drift with no part left out.
pub fn exercise_reference(r: &proto::Reference) {
    let c = Arc::new(Compiled::try_new(r.clone()).expect("decode_reference accepted it"));
    let empty = c.empty_window(0, 60);
    validate_window(&empty).expect("the empty window of a checked reference is valid");
    drift_ok(r, &empty, true);
    if let Some(own) = self_window(r) {
        let d = window_drift(r, &own, |_| None).expect("own profile");
        assert!(
            !d.notes.iter().any(|n| n.ends_with("ignored")),
            "{:?}",
            d.notes
        );
        for col in &d.columns {
            assert!(
                col.psi.is_nan() || col.psi.abs() <= 1e-9,
                "PSI of a profile against itself: {col:?}"
            );
        }
        let mut twice = own.clone();
        try_merge_window(&mut twice, &own).expect("a profile merges with itself");
        drift_ok(r, &twice, true);
    }
    let features: Vec<&proto::ColumnSpec> = r
        .columns
        .iter()
        .filter(|c| c.role == proto::ColumnRole::Feature as i32)
        .collect();
    let probs = r
        .columns
        .iter()
        .filter(|c| c.role == proto::ColumnRole::Probability as i32)
        .map(|c| c.class_index as usize + 1)
        .max()
        .unwrap_or(0)
        .min(64);
    let schema = Schema {
        feature_names: features.iter().map(|c| c.name.clone()).collect(),
        categorical: features
            .iter()
            .map(|c| c.kind == proto::ColumnKind::Categorical as i32)
            .collect(),
        out_cap: 1,
        prob_cap: probs,
    };
    let mut p = Profiler::new(c, &schema, 60_000_000_000);
    let probes = [0.0, -1.0, 1.0, 1e300, -1e300, f64::INFINITY, f64::NAN, 3.5];
    for (i, &v) in probes.iter().enumerate() {
        let mut slot = Slot::with_stride(schema.stride());
        for x in slot.values.iter_mut() {
            *x = v;
        }
        slot.n_outputs = 1;
        slot.n_probabilities = u16::try_from(probs).unwrap_or(0);
        slot.prediction_kind = if i % 2 == 0 {
            PredictionKind::Int
        } else {
            PredictionKind::Number
        };
        slot.unix_nano = 60_000_000_000 * (i as u64 % 3);
        slot.latency_s = v;
        p.add(&slot, &mut Vec::new);
    }
    for w in p.take() {
        validate_window(&w).expect("the profiler builds valid windows");
        drift_ok(r, &w, true);
    }
}
