//! The gRPC client for `--protocol grpc`, generated from the server's own
//! `proto/grpc_predict_v2.proto` (protox parses it: no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/grpc_predict_v2.proto");
    let descriptors = protox::compile(["grpc_predict_v2.proto"], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
