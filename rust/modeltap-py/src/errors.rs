//! The one place where core errors become Python exceptions.

use modeltap_core::CodecError;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

create_exception!(
    _core,
    InvalidRecord,
    PyValueError,
    "A record modeltap cannot accept (wrong shape, unknown keys, bad values). \
     Raised only by agents created with strict=True; otherwise the record is \
     counted in stats()['invalid'] or flagged, and a warning is logged."
);

create_exception!(
    _core,
    BatchDecodeError,
    PyValueError,
    "Bytes that are not a valid modeltap batch (malformed, inconsistent, or \
     written by a newer schema version)."
);

create_exception!(
    _core,
    UnsupportedSchemaVersion,
    BatchDecodeError,
    "A batch written by a newer modeltap than this one: upgrade to read it."
);

create_exception!(
    _core,
    ReferenceFormatError,
    PyValueError,
    "A reference file that is not one, is damaged, or was written by a newer modeltap."
);

/// Maps a codec error to its exception.
pub fn codec_err(e: &CodecError) -> PyErr {
    match e {
        CodecError::UnsupportedVersion { .. } => UnsupportedSchemaVersion::new_err(e.to_string()),
        CodecError::Malformed(_) | CodecError::Inconsistent(_) => {
            BatchDecodeError::new_err(e.to_string())
        }
    }
}

create_exception!(
    _core,
    InternalError,
    pyo3::exceptions::PyRuntimeError,
    "An internal failure of modeltap (a bug, caught at the binding boundary): \
     the call did not complete. The agent's threads and data are unaffected."
);

/// Runs `f`, turning a Rust panic into `InternalError` so that no public call
/// raises a `BaseException` (pyo3's `PanicException`) into the caller. Costs
/// nothing unless a panic happens.
pub fn guard<T>(f: impl FnOnce() -> pyo3::PyResult<T>) -> pyo3::PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(InternalError::new_err(format!(
            "internal error: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}
