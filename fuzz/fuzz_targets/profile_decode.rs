//! The window-profile decoder: any bytes are either refused with an error,
//! or give a profile that merges with itself and gives drift against a
//! valid reference (with notes where it does not fit), without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modeltap_core::profile::{decode_window, merge_parts, try_merge_window, window_mismatches};
use modeltap_core::stats::window_drift;
use modeltap_fuzz::{drift_ok, reference};

fuzz_target!(|data: &[u8]| {
    let r = reference();
    // Whatever the bytes, merging them with a valid profile never panics.
    let merged = merge_parts(r, [data, data]);
    let Ok(w) = decode_window(data) else {
        assert_eq!(merged.skipped.len(), 2);
        return;
    };
    let mut twice = w.clone();
    try_merge_window(&mut twice, &w).expect("a profile merges with itself");
    assert_eq!(twice.columns.len(), w.columns.len());
    // As built against the reference it claims, or against another one.
    let _ = window_drift(r, &twice, |_| None);
    let mut claimed = twice;
    claimed.reference_fingerprint.clone_from(&r.fingerprint);
    let fits = window_mismatches(r, &claimed).is_empty();
    drift_ok(r, &claimed, fits);
});
