//! The batch decoder: any bytes either fail to decode with an error or
//! give a batch that encodes and decodes again to the same batch.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use modeltap_core::{batch, proto};
use prost::Message;

/// The batch with its maps (whose encoding order is not fixed) taken out
/// and returned sorted, so the rest can be compared byte for byte.
#[allow(clippy::type_complexity)]
fn canonical(
    mut b: proto::RecordBatch,
) -> (
    Vec<u8>,
    Vec<(u32, BTreeMap<String, String>)>,
    BTreeMap<String, String>,
) {
    let params = b
        .model
        .as_mut()
        .map(|m| std::mem::take(&mut m.params).into_iter().collect())
        .unwrap_or_default();
    let attrs = b
        .attributes
        .iter_mut()
        .map(|a| {
            (
                a.row,
                std::mem::take(&mut a.attributes).into_iter().collect(),
            )
        })
        .collect();
    (b.encode_to_vec(), attrs, params)
}

fuzz_target!(|data: &[u8]| {
    let Ok(b) = batch::decode(data) else {
        return;
    };
    let bytes = batch::encode(&b);
    let again = batch::decode(&bytes).expect("an accepted batch re-encodes to one accepted again");
    assert!(
        canonical(b) == canonical(again),
        "re-encoding changed the batch"
    );
});
