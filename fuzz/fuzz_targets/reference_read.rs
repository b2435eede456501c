//! The reference-file reader: any bytes are either refused with an error,
//! or give a reference that compiles, profiles records, and gives drift
//! against an empty profile and against itself, without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modeltap_core::profile::{decode_reference, encode_reference, fingerprint, MAGIC};
use modeltap_core::proto;
use modeltap_fuzz::exercise_reference;
use prost::Message;

fn check(data: &[u8]) {
    let Ok(r) = decode_reference(data) else {
        return;
    };
    let again = decode_reference(&encode_reference(&r)).expect("an accepted reference re-encodes");
    assert_eq!(again.fingerprint, r.fingerprint);
    exercise_reference(&r);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // A hostile file carries the fingerprint of its own columns: forge it,
    // so mutations reach the checks behind it.
    let body = data.strip_prefix(&MAGIC[..]).unwrap_or(data);
    if let Ok(mut r) = proto::Reference::decode(body) {
        r.fingerprint = fingerprint(&r.columns);
        check(&encode_reference(&r));
    }
});
