//! The reference file format: its version, magic header, encoding and
//! (checked) decoding, the fingerprint of a reference's column specs, and
//! the complete check of a decoded reference.

use super::point_mass::{atom_tolerance, next_down};
use super::validate::{check_profile, check_spec, label};
use super::MAX_COLUMNS;
use crate::proto;

/// Reference file format version this build writes and the newest it reads.
/// Version 2 adds a fine and a PSI bin below the reference minimum (its
/// first cut is the float just below it) and point-mass bins; version 1
/// files are read as they are.
pub const REFERENCE_FORMAT: u32 = 2;

/// A fingerprint of the column specs (FNV-1a of their encoding).
pub fn fingerprint(columns: &[proto::ColumnSpec]) -> String {
    use prost::Message;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in columns {
        for b in c.encode_to_vec() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Checks a reference's column `c` and its profile `p`: the spec (see
/// [`check_spec`]), the profile's counts against it, and for numeric
/// columns a sane quantile sketch (the cuts inside the reference's range).
fn check_reference_column(c: &proto::ColumnSpec, p: &proto::ColumnProfile) -> Result<(), String> {
    let shape = check_spec(c)?;
    check_profile(shape, p)?;
    if let Some(n) = &c.numeric {
        if p.ref_min > p.ref_max {
            return Err(format!(
                "reference minimum {} above its maximum {}",
                p.ref_min, p.ref_max
            ));
        }
        if let (Some(&lo), Some(&hi)) = (n.cuts.first(), n.cuts.last()) {
            // The first cut may be just below the minimum (the edge of the
            // below-minimum bin) and the last just above the maximum (the
            // upper edge of a point mass there), by a float32 rounding.
            let low = next_down(p.ref_min).min(p.ref_min - 2.0 * atom_tolerance(p.ref_min));
            let high = p.ref_max + 2.0 * atom_tolerance(p.ref_max);
            if lo < low || hi > high {
                return Err(format!(
                    "cuts [{lo}, {hi}] outside the reference range [{}, {}]",
                    p.ref_min, p.ref_max
                ));
            }
        }
    }
    Ok(())
}

/// Checks a decoded reference completely before anything indexes with it:
/// the format version, at most [`MAX_COLUMNS`] columns with distinct names
/// and at most one prediction column, every column's spec and profile (see
/// [`check_spec`]), and the fingerprint. Errors name the column.
pub fn validate_reference(r: &proto::Reference) -> Result<(), ReferenceError> {
    if r.format_version > REFERENCE_FORMAT {
        return Err(ReferenceError::TooNew(r.format_version));
    }
    if r.format_version == 0 {
        return Err(ReferenceError::Corrupt("format version missing".into()));
    }
    if r.columns.len() > MAX_COLUMNS {
        return Err(ReferenceError::Corrupt(format!(
            "{} columns (at most {MAX_COLUMNS})",
            r.columns.len()
        )));
    }
    if r.profiles.len() != r.columns.len() {
        return Err(ReferenceError::Corrupt(format!(
            "{} profiles for {} columns",
            r.profiles.len(),
            r.columns.len()
        )));
    }
    let mut names = std::collections::HashSet::with_capacity(r.columns.len());
    let mut prediction: Option<&str> = None;
    let mut classes = std::collections::HashSet::new();
    for (c, p) in r.columns.iter().zip(&r.profiles) {
        let bad =
            |why: String| ReferenceError::Corrupt(format!("column {}: {why}", label(&c.name)));
        if !names.insert(c.name.as_str()) {
            return Err(bad("listed twice".into()));
        }
        check_reference_column(c, p).map_err(bad)?;
        if c.role == proto::ColumnRole::Prediction as i32 {
            if let Some(first) = prediction {
                return Err(bad(format!(
                    "a second prediction column (the first is {})",
                    label(first)
                )));
            }
            prediction = Some(&c.name);
        }
        if c.role == proto::ColumnRole::Probability as i32 && !classes.insert(c.class_index) {
            return Err(bad(format!(
                "a second probability column for class {}",
                c.class_index
            )));
        }
    }
    if r.fingerprint != fingerprint(&r.columns) {
        return Err(ReferenceError::Corrupt(
            "fingerprint does not match the columns".into(),
        ));
    }
    Ok(())
}

/// Errors reading a reference file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Not a modeltap reference file.
    #[error("not a modeltap reference file (bad magic header)")]
    BadMagic,
    /// Written by a newer modeltap.
    #[error("reference format {0} is newer than this build reads (up to {REFERENCE_FORMAT}); upgrade modeltap")]
    TooNew(u32),
    /// Damaged contents.
    #[error("corrupt reference file: {0}")]
    Corrupt(String),
}

/// Magic header of reference files.
pub const MAGIC: &[u8; 8] = b"MTREF\x00\x01\x00";

/// Encodes a reference as a file: magic, then the protobuf message.
pub fn encode_reference(r: &proto::Reference) -> Vec<u8> {
    use prost::Message;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&r.encode_to_vec());
    out
}

/// Decodes a reference file and checks it completely
/// ([`validate_reference`]) before anything uses it.
pub fn decode_reference(bytes: &[u8]) -> Result<proto::Reference, ReferenceError> {
    use prost::Message;
    let body = bytes
        .strip_prefix(&MAGIC[..])
        .ok_or(ReferenceError::BadMagic)?;
    let r = proto::Reference::decode(body).map_err(|e| ReferenceError::Corrupt(e.to_string()))?;
    validate_reference(&r)?;
    Ok(r)
}
