//! The protocol's types and service traits, generated at build time from
//! `proto/grpc_predict_v2.proto` (see `build.rs`).

tonic::include_proto!("inference");
