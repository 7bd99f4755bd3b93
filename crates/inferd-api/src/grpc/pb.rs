//! The protocol's types and service traits, generated at build time from
//! `proto/grpc_predict_v2.proto` (see `build.rs`).

#![allow(missing_docs, unreachable_pub, clippy::all, rust_2018_idioms)]

tonic::include_proto!("inference");
