//! The text a recorder keeps and writes: the longest ids, texts and
//! attributes kept, cutting what is longer, type names in messages and ids
//! spelled in hex.

use modeltap_core::ids::hex_u128;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// Longest caller-given request id kept (bytes); longer ones are cut.
pub(crate) const MAX_ID_BYTES: usize = 256;
/// Longest error type, error message, attribute key or value kept (bytes).
pub(super) const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most attributes kept per record.
pub(super) const MAX_ATTRIBUTES: usize = 64;

/// `s` cut to at most `max` bytes (at a character boundary), marked as cut:
/// one huge string must not cost the agent unbounded memory.
pub(crate) fn clip(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let cut = s.len() - max;
    let mut end = max.saturating_sub(32);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(&format!("…[{cut} bytes cut]"));
    s
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .qualname()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

pub(super) fn hex_py<'py>(py: Python<'py>, id: u128) -> Bound<'py, PyString> {
    let mut buf = [0u8; 32];
    hex_u128(id, &mut buf);
    // Hex digits are ASCII, hence valid UTF-8.
    PyString::new(py, std::str::from_utf8(&buf).unwrap_or_default())
}
