//! Compiles `protos/modeltap/v1/*.proto` with protox (pure Rust, no system
//! `protoc`) and generates the prost types into OUT_DIR.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protos");
    let files = [
        root.join("modeltap/v1/batch.proto"),
        root.join("modeltap/v1/collector.proto"),
        root.join("modeltap/v1/profile.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root]).expect("protos/ must compile");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost code generation");
}
