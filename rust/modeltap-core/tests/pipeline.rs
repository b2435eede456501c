//! The pipeline end to end in Rust: slots in, encoded batches out, decoded
//! back exactly, counters adding up.

use std::time::Duration;

use modeltap_core::batch::{Schema, VocabEntry, VocabTarget};
use modeltap_core::pipeline::{Outcome, Pipeline, PipelineConfig, Take};
use modeltap_core::record::{flags, PredictionKind};
use modeltap_core::{decode, proto, CodecError};
use prost::Message;

fn pipeline(batch_size: usize, capacity: usize) -> std::sync::Arc<Pipeline> {
    let p = Pipeline::start(PipelineConfig {
        capacity,
        batch_size,
        flush_interval: Duration::from_millis(20),
        max_pending_batches: 4,
        model: proto::ModelInfo {
            model: "m".into(),
            version: "1".into(),
            agent_id: "a".repeat(32),
            ..Default::default()
        },
        ..PipelineConfig::default()
    })
    .unwrap();
    p.init_schema(Schema {
        feature_names: vec!["x".into(), "city".into()],
        categorical: vec![false, true],
        out_cap: 1,
        prob_cap: 2,
    })
    .unwrap();
    p
}

fn take_all(p: &Pipeline) -> Vec<proto::RecordBatch> {
    let mut out = Vec::new();
    while let Take::Batch(b) = p.take_batch(Duration::from_millis(200)) {
        let batch = decode(&b.bytes).unwrap();
        assert_eq!(batch.n_records as u64, b.n_records);
        assert!(p.settle(b.seq, Outcome::Shipped));
        out.push(batch);
    }
    out
}

#[test]
fn records_round_trip_through_batches() {
    let p = pipeline(3, 16);
    p.announce_vocab(VocabEntry {
        target: VocabTarget::Feature(1),
        code: 0,
        value: "paris".into(),
    });
    for i in 0..7u32 {
        assert!(p.push(|s| {
            s.unix_nano = 1000 + u64::from(i);
            s.request_id = u128::from(i) + 1;
            s.values[0] = f64::from(i) * 0.5;
            s.values[1] = 0.0;
            s.values[2] = f64::from(i);
            s.values[3] = 0.25;
            s.values[4] = 0.75;
            s.n_outputs = 1;
            s.n_probabilities = 2;
            s.prediction_kind = PredictionKind::Int;
            s.latency_s = 0.001;
            s.flags = if i == 3 { flags::MISSING } else { 0 };
            s.side = None;
        }));
    }
    p.shutdown();
    let batches = take_all(&p);
    assert_eq!(batches.iter().map(|b| b.n_records).sum::<u32>(), 7);
    assert_eq!(batches[0].n_records, 3, "sealed at batch_size");
    let xs: Vec<f64> = batches
        .iter()
        .flat_map(|b| b.features.chunks(2).map(|r| r[0]).collect::<Vec<_>>())
        .collect();
    assert_eq!(xs, (0..7).map(|i| f64::from(i) * 0.5).collect::<Vec<_>>());
    let first = &batches[0];
    assert_eq!(first.categories[0].values, vec!["paris".to_string()]);
    assert_eq!(
        first.probabilities,
        vec![0.25, 0.75, 0.25, 0.75, 0.25, 0.75]
    );
    assert_eq!(first.model.as_ref().unwrap().model, "m");
    assert_eq!(batches[1].flags[0], flags::MISSING);
    let s = p.stats();
    assert_eq!(s.logged, 7);
    assert_eq!(s.shipped, 7);
    assert_eq!(s.pending, 0);
}

#[test]
fn flush_waits_for_settlement() {
    let p = pipeline(1000, 64);
    for _ in 0..10 {
        p.push(|s| {
            s.n_outputs = 1;
            s.side = None;
        });
    }
    let p2 = std::sync::Arc::clone(&p);
    let exporter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        take_all(&p2)
    });
    assert!(p.flush(Duration::from_secs(5)));
    assert_eq!(p.stats().shipped, 10);
    p.shutdown();
    let _ = exporter.join().unwrap();
}

#[test]
fn full_ring_counts_drops() {
    // Nobody takes batches: 4 pending batches of 2, one in the builder,
    // then the ring's 4 slots; everything past that is dropped and counted.
    let p = pipeline(2, 4);
    for _ in 0..200 {
        p.push(|s| s.side = None);
        std::thread::sleep(Duration::from_micros(200));
    }
    let s = p.stats();
    assert_eq!(s.logged, 200);
    assert!(s.dropped_full >= 180, "{s:?}");
    assert_eq!(s.pending + s.dropped_full, 200);
    assert!(s.pending <= 4 * 2 + 2 + 4);
}

#[test]
fn stopped_pipeline_drops() {
    let p = pipeline(10, 4);
    p.shutdown();
    assert!(!p.push(|_| {}));
    let s = p.stats();
    assert_eq!(s.logged, 1);
    assert_eq!(s.dropped_full, 1);
}

#[test]
fn decode_rejects_bad_input() {
    assert!(matches!(
        decode(b"\xff\xff\xff"),
        Err(CodecError::Malformed(_))
    ));
    let mut b = proto::RecordBatch {
        schema_version: 3,
        ..Default::default()
    };
    assert!(matches!(
        decode(&b.encode_to_vec()),
        Err(CodecError::UnsupportedVersion { got: 3, max: 2 })
    ));
    b.schema_version = 1;
    b.n_records = 1;
    assert!(matches!(
        decode(&b.encode_to_vec()),
        Err(CodecError::Inconsistent(_))
    ));
}

/// A version 1 batch (vectors padded to a common width, wider rows beside)
/// reads as the version 2 layout: each row with its own values only.
#[test]
fn version_1_batches_read_unpadded() {
    let nan = f64::NAN;
    let b = proto::RecordBatch {
        schema_version: 1,
        n_records: 3,
        timestamp_unix_nano: vec![1, 2, 3],
        request_ids: vec![0; 48],
        trace_ids: vec![0; 48],
        span_ids: vec![0; 24],
        prediction_kind: vec![0, 3, 3],
        n_outputs: 2,
        predictions: vec![0.5, nan, 1.0, nan, 0.0, 0.0],
        prediction_overflow: vec![proto::RowVector {
            row: 2,
            values: vec![7.0, 8.0, 9.0],
        }],
        n_probabilities: 2,
        probabilities: vec![0.1, 0.9, nan, nan, nan, nan],
        probability_count: vec![2, 0, 3],
        probability_overflow: vec![proto::RowVector {
            row: 2,
            values: vec![0.2, 0.3, 0.5],
        }],
        latency_s: vec![nan; 3],
        flags: vec![0; 3],
        ..Default::default()
    };
    let d = decode(&b.encode_to_vec()).unwrap();
    assert_eq!(d.schema_version, 2);
    assert_eq!(d.prediction_count, vec![1, 1, 3]);
    assert_eq!(d.predictions, vec![0.5, 1.0, 7.0, 8.0, 9.0]);
    assert_eq!(d.probability_count, vec![2, 0, 3]);
    assert_eq!(d.probabilities, vec![0.1, 0.9, 0.2, 0.3, 0.5]);
    // A version 2 batch whose counts disagree with its values is refused.
    let mut bad = d.clone();
    bad.prediction_count[0] = 4;
    assert!(matches!(
        decode(&bad.encode_to_vec()),
        Err(CodecError::Inconsistent(_))
    ));
}

/// A reference the profiler cannot use (a numeric column without its
/// numeric spec, as a hostile or damaged file could carry if it got past
/// validation) must not kill the drain thread or wedge the ring: the column
/// is left out of the profile and every record is delivered. (Should the
/// profiler panic all the same, the drain thread contains it, counts an
/// error and turns profiling off: `Pipeline::contained`.)
#[test]
fn unusable_reference_never_stops_the_drain() {
    use modeltap_core::profile::Compiled;
    let reference = proto::Reference {
        format_version: 1,
        columns: vec![proto::ColumnSpec {
            name: "x".into(),
            kind: proto::ColumnKind::Numeric as i32,
            role: proto::ColumnRole::Feature as i32,
            numeric: None,
            categorical: Some(proto::CategoricalSpec {
                categories: vec!["a".into()],
                complete: true,
                ..Default::default()
            }),
            ..Default::default()
        }],
        profiles: vec![proto::ColumnProfile::default()],
        ..Default::default()
    };
    let p = Pipeline::start(PipelineConfig {
        capacity: 8,
        batch_size: 4,
        flush_interval: Duration::from_millis(20),
        reference: Some(std::sync::Arc::new(Compiled::new(reference))),
        model: proto::ModelInfo {
            agent_id: "a".repeat(32),
            ..Default::default()
        },
        ..PipelineConfig::default()
    })
    .unwrap();
    p.init_schema(Schema {
        feature_names: vec!["x".into()],
        categorical: vec![false],
        out_cap: 1,
        prob_cap: 0,
    })
    .unwrap();
    let consumer = {
        let p = std::sync::Arc::clone(&p);
        std::thread::spawn(move || loop {
            match p.take_batch(Duration::from_millis(50)) {
                Take::Batch(b) => assert!(p.settle(b.seq, Outcome::Shipped)),
                Take::Timeout => {}
                Take::Finished => break,
            }
        })
    };
    let mut pushed = 0;
    for i in 0..100u32 {
        while !p.try_push(0, |s| {
            s.values[0] = f64::from(i);
            s.n_outputs = 1;
        }) {
            std::thread::sleep(Duration::from_millis(1));
        }
        pushed += 1;
    }
    assert!(p.flush(Duration::from_secs(10)));
    p.shutdown();
    consumer.join().unwrap();
    let s = p.stats();
    assert_eq!(s.logged, pushed);
    assert_eq!(s.shipped, pushed, "{s:?}");
    assert_eq!(s.errors, 0, "{s:?}");
    assert!(p.last_error().is_none());
    let w = p.profile(0, u64::MAX).expect("records were profiled");
    assert_eq!(w.records, pushed);
}
