//! Labels (ground truth) through the pipeline: label slots in, the truth
//! columns of encoded batches out, refused by validation when malformed.

use std::sync::Arc;
use std::time::Duration;

use modeltap_core::batch::{BatchBuilder, Schema, VocabEntry, VocabMirror, VocabTarget};
use modeltap_core::pipeline::{LabelPush, Outcome, Pipeline, PipelineConfig, Take};
use modeltap_core::profile::LABEL_OVERFLOW_INDEX;
use modeltap_core::record::{PredictionKind, Side, Slot, SlotKind};
use modeltap_core::{decode, proto, CodecError};
use prost::Message;

fn config(batch_size: usize, capacity: usize, sample_rate: f64) -> PipelineConfig {
    PipelineConfig {
        capacity,
        batch_size,
        flush_interval: Duration::from_millis(20),
        max_pending_batches: 4,
        sample_rate,
        model: proto::ModelInfo {
            model: "m".into(),
            version: "1".into(),
            agent_id: "a".repeat(32),
            ..Default::default()
        },
        ..PipelineConfig::default()
    }
}

fn schema() -> Schema {
    Schema {
        feature_names: vec!["x".into()],
        categorical: vec![false],
        out_cap: 1,
        prob_cap: 0,
    }
}

fn take_all(p: &Pipeline) -> Vec<proto::RecordBatch> {
    let mut out = Vec::new();
    while let Take::Batch(b) = p.take_batch(Duration::from_millis(200)) {
        let batch = decode(&b.bytes).unwrap();
        assert!(p.settle(b.seq, Outcome::Shipped));
        out.push(batch);
    }
    out
}

/// What a label slot carries, for the tests.
#[derive(Clone)]
enum Id {
    Hex(u128),
    Inline(&'static str),
    Side(String),
}

fn label(p: &Pipeline, id: &Id, kind: PredictionKind, value: f64, text: Option<&str>, ts: u64) {
    let mut side: Option<Box<Side>> = None;
    if let Id::Side(s) = id {
        side.get_or_insert_with(Box::default).request_id = Some(s.clone());
    }
    if let Some(t) = text {
        side.get_or_insert_with(Box::default)
            .categories
            .push((LABEL_OVERFLOW_INDEX, t.to_owned()));
    }
    let bytes = side.as_ref().map_or(0, |s| s.heap_bytes());
    let got = p.try_push_label(bytes, |s| {
        s.unix_nano = ts;
        s.request_id = match id {
            Id::Hex(v) => *v,
            _ => 0,
        };
        if let Id::Inline(t) = id {
            s.request_id_inline.set(t);
        }
        s.prediction_kind = kind;
        s.latency_s = value;
        s.side = side;
    });
    assert_eq!(got, LabelPush::Pushed);
}

/// (request id as text, kind, value or class) of every label of `batches`.
fn labels_of(batches: &[proto::RecordBatch]) -> Vec<(String, u64, i32, String)> {
    let mut out = Vec::new();
    for b in batches {
        let Some(t) = &b.truth else { continue };
        for i in 0..t.unix_nano.len() {
            let id = t
                .request_id_text
                .iter()
                .find(|r| r.row as usize == i)
                .map_or_else(
                    || modeltap_core::ids::hex_bytes(&t.request_ids[16 * i..16 * i + 16]),
                    |r| r.value.clone(),
                );
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let value = if t.kinds[i] == 2 {
                t.classes[t.values[i] as usize].clone()
            } else {
                t.values[i].to_string()
            };
            out.push((id, t.unix_nano[i], t.kinds[i], value));
        }
    }
    out
}

#[test]
fn labels_travel_beside_records_and_are_not_records() {
    // A sample rate this low would sample out nearly every record: labels
    // are never sampled.
    let p = Pipeline::start(config(1000, 64, 0.001)).unwrap();
    p.init_schema(schema()).unwrap();
    p.announce_vocab(VocabEntry {
        target: VocabTarget::Label,
        code: 0,
        value: "cat".into(),
    });
    for i in 0..3u32 {
        assert!(p.push(|s| {
            s.unix_nano = 10 + u64::from(i);
            s.request_id = u128::from(i) + 1;
            s.values[0] = 1.0;
            s.values[1] = 1.0;
            s.n_outputs = 1;
            s.side = None;
        }));
    }
    let long = "r".repeat(100);
    label(&p, &Id::Hex(1), PredictionKind::Int, 3.0, None, 100);
    label(
        &p,
        &Id::Inline("req-2"),
        PredictionKind::Number,
        0.25,
        None,
        200,
    );
    label(
        &p,
        &Id::Side(long.clone()),
        PredictionKind::Label,
        0.0,
        None,
        300,
    );
    label(
        &p,
        &Id::Hex(7),
        PredictionKind::Label,
        f64::NAN,
        Some("dog"),
        400,
    );
    label(&p, &Id::Hex(8), PredictionKind::Label, 0.0, None, 500);
    // Only records count in `in_ring`.
    assert!(p.stats().in_ring <= 3, "{:?}", p.stats());
    p.shutdown();
    let batches = take_all(&p);
    let got = labels_of(&batches);
    assert_eq!(
        got,
        vec![
            (format!("{:032x}", 1), 100, 1, "3".into()),
            ("req-2".into(), 200, 0, "0.25".into()),
            (long, 300, 2, "cat".into()),
            (format!("{:032x}", 7), 400, 2, "dog".into()),
            (format!("{:032x}", 8), 500, 2, "cat".into()),
        ]
    );
    // One dictionary entry per class used in the batch.
    let t = batches.iter().find_map(|b| b.truth.as_ref()).unwrap();
    assert_eq!(t.classes, vec!["cat".to_string(), "dog".to_string()]);
    let s = p.stats();
    assert_eq!(s.labels, 5);
    assert_eq!(s.labels_dropped, 0);
    assert_eq!(s.logged, 3, "labels are not logged records");
    assert_eq!(s.pending, 0);
    assert_eq!(s.in_ring, 0);
    let counters = batches.last().unwrap().agent_counters.unwrap();
    assert_eq!(counters.labels, 5);
}

#[test]
fn labels_before_any_record_make_labels_only_batches() {
    let p = Pipeline::start(config(1000, 64, 1.0)).unwrap();
    for i in 0..10u64 {
        label(
            &p,
            &Id::Hex(u128::from(i) + 1),
            PredictionKind::Number,
            1.5,
            None,
            i,
        );
    }
    let p2 = Arc::clone(&p);
    let exporter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        take_all(&p2)
    });
    assert!(p.flush(Duration::from_secs(5)));
    p.shutdown();
    let batches = exporter.join().unwrap();
    assert!(batches.iter().all(|b| b.n_records == 0));
    assert_eq!(labels_of(&batches).len(), 10);
    assert_eq!(p.stats().labels, 10);
}

#[test]
fn a_full_ring_drops_labels_and_counts_them() {
    // Nobody takes batches: the ring and the pending batches fill up.
    let p = Pipeline::start(config(2, 4, 1.0)).unwrap();
    p.init_schema(schema()).unwrap();
    let mut full = 0u64;
    for _ in 0..200 {
        match p.try_push_label(0, |s| {
            s.prediction_kind = PredictionKind::Int;
            s.latency_s = 1.0;
            s.request_id = 5;
        }) {
            LabelPush::Pushed => {}
            LabelPush::Full => {
                full += 1;
                p.count_labels_dropped(1);
            }
            LabelPush::Lost => panic!("nothing here is too large"),
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let s = p.stats();
    assert!(full >= 150, "{s:?}");
    assert_eq!(s.labels + s.labels_dropped, 200);
    assert_eq!(s.labels_dropped, full);
    assert_eq!(s.logged, 0);
}

/// A valid batch of three labels, built by the builder.
fn valid() -> proto::RecordBatch {
    let mut b = BatchBuilder::new(Arc::new(schema()));
    let mut vocab = VocabMirror::default();
    vocab.extend([VocabEntry {
        target: VocabTarget::Label,
        code: 4,
        value: "yes".into(),
    }]);
    for (i, (kind, v)) in [
        (PredictionKind::Number, 0.5),
        (PredictionKind::Int, 2.0),
        (PredictionKind::Label, 4.0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut slot = Slot::with_stride(2);
        slot.kind = SlotKind::Label;
        slot.unix_nano = 7;
        slot.request_id = 9;
        if i == 1 {
            slot.request_id = 0;
            slot.request_id_inline.set("text-id");
        }
        slot.prediction_kind = kind;
        slot.latency_s = v;
        b.push(&mut slot);
    }
    assert_eq!(b.n_labels(), 3);
    assert_eq!(b.len(), 0);
    let model = proto::ModelInfo::default();
    b.seal(&model, 0, &vocab, Vec::new(), 1)
}

#[test]
fn the_builder_codes_classes_into_the_batch() {
    let msg = valid();
    let back = decode(&msg.encode_to_vec()).unwrap();
    let t = back.truth.unwrap();
    assert_eq!(back.n_records, 0);
    assert_eq!(t.kinds, vec![0, 1, 2]);
    assert_eq!(t.values, vec![0.5, 2.0, 0.0]);
    assert_eq!(t.classes, vec!["yes".to_string()]);
    assert_eq!(t.request_id_text.len(), 1);
    assert_eq!(t.request_id_text[0].row, 1);
    assert_eq!(t.request_ids.len(), 48);
}

#[test]
fn validation_refuses_every_malformed_truth() {
    type Break = fn(&mut proto::LabelColumns);
    let cases: Vec<(&str, Break)> = vec![
        ("short request_ids", |t| {
            t.request_ids.pop();
        }),
        ("missing kind", |t| {
            t.kinds.pop();
        }),
        ("extra value", |t| t.values.push(1.0)),
        ("extra time", |t| t.unix_nano.push(1)),
        ("text id past the end", |t| t.request_id_text[0].row = 3),
        ("text ids out of order", |t| {
            t.request_id_text.insert(
                0,
                proto::RowString {
                    row: 2,
                    value: "z".into(),
                },
            );
        }),
        ("text id twice", |t| {
            let again = t.request_id_text[0].clone();
            t.request_id_text.push(again);
        }),
        ("kind 3 (vector)", |t| t.kinds[0] = 3),
        ("negative kind", |t| t.kinds[0] = -1),
        ("NaN number", |t| t.values[0] = f64::NAN),
        ("infinite number", |t| t.values[0] = f64::INFINITY),
        ("fractional int", |t| t.values[1] = 2.5),
        ("infinite int", |t| t.values[1] = f64::NEG_INFINITY),
        ("code past the classes", |t| t.values[2] = 1.0),
        ("fractional code", |t| t.values[2] = 0.5),
        ("negative code", |t| t.values[2] = -1.0),
        ("more classes than labels", |t| {
            t.classes = vec!["a".into(), "b".into(), "c".into(), "d".into()];
        }),
    ];
    assert!(decode(&valid().encode_to_vec()).is_ok());
    for (what, f) in cases {
        let mut msg = valid();
        f(msg.truth.as_mut().unwrap());
        let got = decode(&msg.encode_to_vec());
        assert!(
            matches!(got, Err(CodecError::Inconsistent(_))),
            "{what}: {got:?}"
        );
    }
    // More labels than a batch may carry.
    let n = modeltap_core::batch::MAX_LABELS + 1;
    let msg = proto::RecordBatch {
        schema_version: 2,
        truth: Some(proto::LabelColumns {
            unix_nano: vec![0; n],
            request_ids: vec![0; 16 * n],
            kinds: vec![0; n],
            values: vec![0.0; n],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(matches!(
        modeltap_core::batch::validate(&msg),
        Err(CodecError::Inconsistent(_))
    ));
}
