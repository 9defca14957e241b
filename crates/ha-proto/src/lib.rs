//! Generated gRPC code for the `pgwarden.v1` package in `proto/`.
//!
//! This crate owns no logic: every gRPC contract between pgwarden services is
//! defined in `proto/` and only compiled here. Hand-written code belongs in
//! the crates that use these types.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("pgwarden.v1");
}
