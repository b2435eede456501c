use super::*;

#[test]
fn stages_merge_by_name_and_cap_their_names() {
    let stage = |name: &str, root: bool, n: u64| proto::StageLatency {
        name: name.into(),
        root,
        counts: {
            let mut c = vec![0; LATENCY_BUCKETS];
            c[10] = n;
            c
        },
        sum: n as f64,
        errors: 1,
    };
    let mut a = Vec::new();
    merge_stages(&mut a, &[stage("x", false, 2), stage("x", true, 3)]);
    merge_stages(&mut a, &[stage("x", false, 5)]);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].counts[10], 7);
    assert_eq!(a[0].errors, 2);
    assert_eq!(a[1].counts[10], 3);
    // past MAX_STAGES names the rest count under "(other)"
    let many: Vec<_> = (0..MAX_STAGES + 10)
        .map(|i| stage(&format!("s{i}"), false, 1))
        .collect();
    merge_stages(&mut a, &many);
    let plain: Vec<_> = a.iter().filter(|s| !s.root).collect();
    assert_eq!(plain.len(), MAX_STAGES + 1);
    let other = plain.iter().find(|s| s.name == OTHER_STAGE).unwrap();
    assert_eq!(other.counts[10], 11);
    let total: u64 = plain.iter().map(|s| s.counts[10]).sum();
    assert_eq!(total, 7 + (MAX_STAGES + 10) as u64);
    // a profile carrying them is valid; a forged one is not
    let mut w = proto::WindowProfile {
        stages: a,
        ..Default::default()
    };
    assert!(validate_window(&w).is_ok());
    w.stages[0].errors = 1_000;
    assert!(validate_window(&w).is_err());
    w.stages[0].errors = 0;
    w.stages[0].sum = f64::NAN;
    assert!(validate_window(&w).is_err());
    w.stages[0].sum = 0.0;
    w.stages[0].counts = vec![1; LATENCY_BUCKETS + 1];
    assert!(validate_window(&w).is_err());
}

#[test]
fn split_columns_keeps_every_column_once_and_the_totals_last() {
    let w = proto::WindowProfile {
        reference_fingerprint: "f".into(),
        window_start_unix_nano: 60,
        window_nano: 60,
        records: 10,
        errors: 2,
        flagged: 3,
        latency_counts: vec![1; 40],
        latency_sum: 1.5,
        stages: Vec::new(),
        columns: (0..50u64)
            .map(|i| proto::ColumnProfile {
                counts: vec![i; 10 + i as usize],
                ..Default::default()
            })
            .collect(),
    };
    let whole = crate::record::profile_heap_bytes(&w);
    let one = split_columns(w.clone(), whole).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0], (w.clone(), 0));
    let max = whole / 5;
    let groups = split_columns(w.clone(), max).unwrap();
    assert!(groups.len() >= 5, "{}", groups.len());
    let mut next = 0;
    let mut columns = Vec::new();
    for (k, (g, from)) in groups.iter().enumerate() {
        assert!(crate::record::profile_heap_bytes(g) <= max);
        assert_eq!(*from, next);
        next += g.columns.len();
        columns.extend(g.columns.iter().cloned());
        assert_eq!(g.reference_fingerprint, "f");
        assert_eq!((g.window_start_unix_nano, g.window_nano), (60, 60));
        let last = k + 1 == groups.len();
        assert_eq!(g.records, if last { 10 } else { 0 });
        assert_eq!(g.latency_counts.len(), if last { 40 } else { 0 });
    }
    assert_eq!(columns, w.columns);
    // one column larger than a part: no split
    assert!(split_columns(w, 200).is_none());
}

#[test]
fn latency_buckets_cover_every_value() {
    assert_eq!(latency_bucket(f64::NAN), 0);
    assert_eq!(latency_bucket(-1.0), 0);
    assert_eq!(latency_bucket(1e-6), 1);
    assert_eq!(latency_bucket(1e300), LATENCY_BUCKETS - 1);
    // found by the reference_read fuzz target: wrapped to bucket 0
    assert_eq!(latency_bucket(f64::INFINITY), LATENCY_BUCKETS - 1);
}

#[test]
fn bin_of_matches_partition_point() {
    let cuts = [-1.0, 0.0, 0.5, 2.0, 7.0];
    for v in [
        -5.0,
        -1.0,
        -0.5,
        0.0,
        0.1,
        0.5,
        1.0,
        2.0,
        3.0,
        7.0,
        8.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        assert_eq!(bin_of(&cuts, v), cuts.partition_point(|&c| c < v), "{v}");
    }
    assert_eq!(bin_of(&[], 3.0), 0);
    assert_eq!(bin_of(&[1.0], 1.0), 0);
    assert_eq!(bin_of(&[1.0], 1.5), 1);
}

#[test]
fn slice_equals_value_by_value() {
    let values: Vec<f64> = (0..3000)
        .map(|i| (f64::from(i) * 0.91).cos() * 4.0)
        .collect();
    let (spec, rp) = build_numeric("x", proto::ColumnRole::Feature, 0, &values, 10, false);
    let cuts = spec.numeric.as_ref().unwrap().cuts.clone();
    let b = Binner::new(&cuts);
    let body: Vec<f64> = values.iter().map(|v| v * 1.7 + 0.3).collect();
    let odd = [f64::NAN, f64::INFINITY, -1e6, 1e6, f64::NEG_INFINITY];
    // Odd values first (before any finite one), last, and between;
    // even and odd lengths; in one call and split over several.
    let probes: Vec<Vec<f64>> = vec![
        body.iter().copied().chain(odd).collect(),
        odd.iter().copied().chain(body.iter().copied()).collect(),
        body.iter()
            .enumerate()
            .map(|(i, &v)| if i % 7 == 3 { odd[i % 5] } else { v })
            .collect(),
        body[..2999].to_vec(),
        vec![f64::NAN, 2.0],
        vec![f64::INFINITY],
    ];
    for probe in &probes {
        for parts in [1, 2, 3, 7] {
            let mut one = empty_profile(&spec, 0.1, rp.ref_min, rp.ref_max);
            let mut bulk = one.clone();
            for &v in probe {
                add_numeric_binned(&mut one, &b, v);
            }
            for chunk in probe.chunks(probe.len().div_ceil(parts)) {
                add_numeric_slice(&mut bulk, &b, chunk);
            }
            assert_eq!(one.counts, bulk.counts);
            assert_eq!(
                (one.n, one.missing, one.nonfinite),
                (bulk.n, bulk.missing, bulk.nonfinite)
            );
            assert_eq!(one.shift.to_bits(), bulk.shift.to_bits());
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1.0);
            assert!(close(one.sum, bulk.sum), "{} {}", one.sum, bulk.sum);
            assert!(
                close(one.sum_sq, bulk.sum_sq),
                "{} {}",
                one.sum_sq,
                bulk.sum_sq
            );
            assert!(close(one.below_sum, bulk.below_sum) && close(one.above_sum, bulk.above_sum));
            assert_eq!(
                (one.below_min, one.above_max),
                (bulk.below_min, bulk.above_max)
            );
            assert_eq!(
                (one.min.to_bits(), one.max.to_bits()),
                (bulk.min.to_bits(), bulk.max.to_bits())
            );
        }
    }
}

#[test]
fn binner_matches_bin_of() {
    let values: Vec<f64> = (0..5000)
        .map(|i| (f64::from(i) * 0.37).sin() * f64::from(i % 17))
        .collect();
    let (spec, _) = build_numeric("x", proto::ColumnRole::Feature, 0, &values, 10, false);
    let cuts = spec.numeric.unwrap().cuts;
    let b = Binner::new(&cuts);
    let mut probes: Vec<f64> = values.clone();
    probes.extend(cuts.iter().copied());
    probes.extend([-1e9, 1e9, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0]);
    for &v in &probes {
        assert_eq!(b.bin(v), bin_of(&cuts, v), "{v}");
    }
    let single = Binner::new(&[2.0]);
    assert_eq!(single.bin(1.0), 0);
    assert_eq!(single.bin(2.0), 0);
    assert_eq!(single.bin(3.0), 1);
    assert_eq!(Binner::new(&[]).bin(5.0), 0);
    // Skewed data (many bins in few grid cells: bisected) and more cuts
    // than the grid indexes.
    let skewed: Vec<f64> = (1..20_000).map(|i| (f64::from(i) / 900.0).exp()).collect();
    let (spec, _) = build_numeric("y", proto::ColumnRole::Feature, 0, &skewed, 10, false);
    let cuts = spec.numeric.unwrap().cuts;
    for b in [
        Binner::new(&cuts),
        Binner::compact(&cuts),
        Binner::with_density(&cuts, 1),
    ] {
        for &v in skewed.iter().chain(&cuts) {
            assert_eq!(b.bin(v), bin_of(&cuts, v), "{v}");
            assert_eq!(b.bin(v * 1.000_001), bin_of(&cuts, v * 1.000_001), "{v}");
        }
    }
    let many: Vec<f64> = (0..70_000).map(|i| f64::from(i).powi(2)).collect();
    let b = Binner::new(&many);
    for v in [-1.0, 0.0, 0.5, 4.0, 4.5, 1e6, 4.9e9, 5e9, f64::INFINITY] {
        assert_eq!(b.bin(v), bin_of(&many, v), "{v}");
    }
}

#[test]
fn binner_at_cell_edges() {
    // Values on and a few ulps around every grid cell's start, for cuts
    // far from zero, straddling it, tiny and huge: the grid's entry
    // never lies above a value's bin.
    let up = |x: f64| {
        f64::from_bits(if x >= 0.0 {
            x.to_bits() + 1
        } else {
            x.to_bits() - 1
        })
    };
    let sets: Vec<Vec<f64>> = vec![
        (0..200).map(|i| 1e8 + f64::from(i) * 0.01).collect(),
        (0..200).map(|i| -1.0 + f64::from(i) * 0.01).collect(),
        (0..200).map(|i| f64::from(i) * 1e-300).collect(),
        (0..200)
            .map(|i| f64::from(i).mul_add(1e300, -1e302))
            .collect(),
        (0..50).map(|i| 1.7e9 + f64::from(i) * 1e-6).collect(),
        (0..200)
            .map(|i| f64::from(i).mul_add(3e305, 1e308))
            .collect(),
        (0..200).map(|i| (f64::from(i) / 20.0).exp()).collect(),
    ];
    for cuts in &sets {
        for b in [
            Binner::new(cuts),
            Binner::compact(cuts),
            Binner::with_density(cuts, 1),
        ] {
            let cells = b.table.len() - 2;
            for c in 0..=cells {
                #[allow(clippy::cast_precision_loss)]
                let start = b.lo + c as f64 / b.scale.max(f64::MIN_POSITIVE);
                let mut v = start;
                for _ in 0..8 {
                    v = next_down(v);
                }
                for _ in 0..16 {
                    assert_eq!(b.bin(v), bin_of(cuts, v), "{v} (cell {c})");
                    v = up(v);
                }
            }
            for &c in cuts {
                for v in [next_down(c), c, up(c)] {
                    assert_eq!(b.bin(v), bin_of(cuts, v), "{v}");
                }
            }
        }
        // A cut moved to a few ulps below a cell's start (the grid
        // unchanged: same count, same ends), values just below it.
        let base = Binner::new(cuts);
        let cells = base.table.len() - 2;
        for k in 1..cuts.len() - 1 {
            #[allow(clippy::cast_precision_loss)]
            let c = (k * cells / (cuts.len() - 1)).max(1);
            #[allow(clippy::cast_precision_loss)]
            let start = base.lo + c as f64 / base.scale.max(f64::MIN_POSITIVE);
            for ulps in 1..4 {
                let mut cut = start;
                for _ in 0..ulps {
                    cut = next_down(cut);
                }
                if cut <= cuts[k - 1] || cut >= cuts[k + 1] {
                    continue;
                }
                let mut moved = cuts.clone();
                moved[k] = cut;
                let b = Binner::new(&moved);
                let mut v = cut;
                for _ in 0..6 {
                    v = next_down(v);
                }
                for _ in 0..12 {
                    assert_eq!(b.bin(v), bin_of(&moved, v), "{v} (cut {cut})");
                    v = up(v);
                }
            }
        }
    }
}

#[test]
fn seen_filter_holds_what_it_was_given_and_little_else() {
    let held: Vec<String> = (0..20_000).map(|i| format!("id-{i}")).collect();
    let (f, k) = SeenFilter::build(held.iter().map(String::as_str));
    assert!(held
        .iter()
        .all(|v| SeenFilter::contains(&f, k, v.as_bytes())));
    let false_hits = (0..20_000)
        .filter(|i| SeenFilter::contains(&f, k, format!("new-{i}").as_bytes()))
        .count();
    assert!(false_hits < 400, "{false_hits}"); // about 1 %
    assert_eq!(SeenFilter::build(std::iter::empty()), (Vec::new(), 0));
    assert!(SeenFilter::contains(&[], 0, b"anything"));
}

#[test]
fn next_down_is_the_float_below() {
    for x in [
        1.0,
        -1.0,
        0.0,
        -0.0,
        1e-310,
        -1e-310,
        f64::MAX,
        f64::MIN,
        5.0,
        1e300,
    ] {
        let d = next_down(x);
        assert!(d < x, "{x}");
        assert!(d.is_finite() || x == f64::MIN, "{x}");
    }
    assert_eq!(next_down(1.0), 1.0 - f64::EPSILON / 2.0);
    assert_eq!(next_down(f64::MIN), f64::NEG_INFINITY);
    assert!(next_down(f64::NAN).is_nan());
}

#[test]
fn numeric_reference_bins_hold_its_mass() {
    let values: Vec<f64> = (0..10_000).map(|i| f64::from(i) / 10.0).collect();
    let (spec, prof) = build_numeric("x", proto::ColumnRole::Feature, 0, &values, 10, false);
    let num = spec.numeric.unwrap();
    // Ten deciles, and a bin below the minimum and above the maximum.
    assert_eq!(num.n_psi_bins, 12);
    assert_eq!(prof.n, 10_000);
    let mut psi = vec![0u64; 12];
    for (j, c) in prof.counts.iter().enumerate() {
        psi[num.psi_bin[j] as usize] += c;
    }
    assert_eq!(psi[0], 0, "{psi:?}");
    assert_eq!(psi[11], 0, "{psi:?}");
    assert!(psi[1..11].iter().all(|&c| c == 1000), "{psi:?}");
    assert_eq!(bin_of(&num.cuts, -0.000_1), 0);
    assert_eq!(bin_of(&num.cuts, 0.0), 1);
    assert_eq!(bin_of(&num.cuts, 999.9), num.cuts.len() - 1);
    assert_eq!(bin_of(&num.cuts, 1000.0), num.cuts.len());
    assert!(prof
        .counts
        .iter()
        .all(|&c| c <= 10_000 / FINE_BINS as u64 + 1));
}

#[test]
fn reference_file_round_trip_and_errors() {
    let (spec, prof) = build_numeric(
        "x",
        proto::ColumnRole::Feature,
        0,
        &[1.0, 2.0, 3.0],
        2,
        false,
    );
    let cols = vec![spec];
    let r = proto::Reference {
        format_version: REFERENCE_FORMAT,
        fingerprint: fingerprint(&cols),
        columns: cols,
        profiles: vec![prof],
        ..Default::default()
    };
    let bytes = encode_reference(&r);
    assert_eq!(decode_reference(&bytes).unwrap(), r);
    assert_eq!(decode_reference(b"nope"), Err(ReferenceError::BadMagic));
    let mut future = r.clone();
    future.format_version = 9;
    assert_eq!(
        decode_reference(&encode_reference(&future)),
        Err(ReferenceError::TooNew(9))
    );
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() - 5);
    assert!(matches!(
        decode_reference(&cut),
        Err(ReferenceError::Corrupt(_))
    ));
}
