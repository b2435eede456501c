//! modeltap's native core: the lock-free record ring, the columnar batch
//! codec, and the pipeline (drain thread, delivery counters) of an agent.
//! Pure Rust; the Python bindings live in the `modeltap-py` crate.

pub mod batch;
pub mod error;
pub mod ids;
pub mod near;
pub mod pipeline;
pub mod profile;
pub mod record;
pub mod ring;
mod schema;
pub mod stats;
mod sync;

/// Types generated from `protos/modeltap/v1/*.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/modeltap.v1.rs"));
}

pub use batch::{decode, encode, Schema, SCHEMA_VERSION};
pub use error::CodecError;
pub use pipeline::{EncodedBatch, Outcome, Pipeline, PipelineConfig, Stats, Take};
pub use record::{PredictionKind, Side, Slot, SlotKind};
pub use ring::Ring;
