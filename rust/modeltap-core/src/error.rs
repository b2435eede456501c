//! Errors of the core, by what the caller should do about them.

use thiserror::Error;

/// A batch could not be decoded. Every variant means the bytes are bad and
/// resending them cannot help.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The bytes are not a protobuf `RecordBatch`.
    #[error("malformed batch: {0}")]
    Malformed(String),
    /// The batch decodes but its columns disagree with its header.
    #[error("inconsistent batch: {0}")]
    Inconsistent(String),
    /// The batch was written by a newer modeltap than this one.
    #[error(
        "batch schema version {got} is newer than this build reads (up to {max}); upgrade modeltap"
    )]
    UnsupportedVersion {
        /// Version in the batch.
        got: u32,
        /// Newest version this build reads.
        max: u32,
    },
}

/// A window profile that arrived from outside (a batch, a store) and cannot
/// be used. Every variant means the bytes are bad, or do not fit the
/// reference they claim, and resending them cannot help.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProfileError {
    /// The bytes are not a protobuf `WindowProfile`.
    #[error("malformed window profile: {0}")]
    Malformed(String),
    /// The profile decodes, but its sizes exceed the documented maxima or
    /// its counts disagree with its totals.
    #[error("inconsistent window profile: {0}")]
    Inconsistent(String),
    /// The profile does not fit the reference (or the other profile) it is
    /// combined with.
    #[error("window profile does not match: {0}")]
    Mismatch(String),
}
