//! Generates the gRPC front door's types and service traits from
//! `proto/grpc_predict_v2.proto`. protox parses the file in Rust, so a build
//! needs no `protoc` on the machine. The client is generated only for the
//! `test-util` feature: the server itself never calls the protocol.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/grpc_predict_v2.proto");
    let descriptors = protox::compile(["grpc_predict_v2.proto"], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_TEST_UTIL").is_some())
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
