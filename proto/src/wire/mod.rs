//! HTTP/2 below gRPC on the kubelet's Unix sockets: the `:authority` that
//! the kubelet's clients send, and what a server in front of hyper's h2 must
//! do about it.
//!
//! The kubelet's plugin watcher dials the registration socket with grpc-go's
//! `passthrough` resolver and no `WithAuthority`
//! (`pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go`),
//! and kubelets up to 1.33 dial the DRA socket the same way. grpc-go then
//! sends the socket path as `:authority` (raw before grpc-go 1.57,
//! percent-encoded since); grpcio ≥ 1.57 sends its own encoding of the path.
//! hyper's h2 parses `:authority` as an RFC 3986 authority and answers
//! anything else with RST_STREAM PROTOCOL_ERROR before tonic sees the
//! request.
//!
//! [`ClientFrames`] rewrites a client's byte stream under an
//! [`AuthorityRule`]. The host puts it in front of its servers
//! ([`AuthorityRule::ReplaceInvalid`]); the test kubelet puts it behind its
//! tonic client ([`AuthorityRule::Set`], [`connect_uds_with_authority`]) to
//! send what the real kubelet sends. One mechanism serves both sides.
//! Header blocks are decoded by our own HPACK decoder (`hpack`, RFC 7541;
//! why not a crate's: its module docs).

mod client;
pub mod frame;
mod headers;
mod hpack;
mod io;

pub use client::{ClientFrames, Event};
pub use headers::{AuthorityRule, NORMALISED_AUTHORITY, RequestSummary, encode_literal, is_valid_authority, printable};
pub use io::{RewrittenWrites, connect_uds_with_authority};

#[cfg(test)]
mod tests;
