//! Generates the protobuf types from `proto/` with prost-build.
//!
//! The schema is parsed by `protox`, a pure-Rust protobuf compiler, so a
//! machine without `protoc` builds the crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The schema lives at the repository root, shared with the browser
    // SDK's generator.
    const ROOT: &str = "../../proto";
    const SCHEMA: &str = "../../proto/switchboard/v1/signal.proto";
    println!("cargo:rerun-if-changed={SCHEMA}");
    let descriptors = protox::compile([SCHEMA], [ROOT])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
