//! Generates the protobuf types from `proto/` with prost-build, and their
//! proto3 JSON mapping (serde) with pbjson-build for the text mode.
//!
//! The schema is parsed by `protox`, a pure-Rust protobuf compiler, so a
//! machine without `protoc` builds the crate.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The schema lives at the repository root, shared with the browser
    // SDK's generator.
    const ROOT: &str = "../../proto";
    const SCHEMA: &str = "../../proto/switchboard/v1/signal.proto";
    println!("cargo:rerun-if-changed={SCHEMA}");
    let descriptors = protox::compile([SCHEMA], [ROOT])?;
    let encoded = descriptors.encode_to_vec();
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    pbjson_build::Builder::new()
        .out_dir(&out)
        .register_descriptors(&encoded)?
        .build(&[".switchboard"])?;
    Ok(())
}
