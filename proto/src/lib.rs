//! mxfed-proto: everything two mxfed agents (and the `mxfed` CLI and its agent)
//! must agree on, with no I/O and no clock.
//!
//! - [`id::PeerId`]: an agent's identity, its Ed25519 public key, shown in a
//!   Syncthing-style base32 form with check characters.
//! - [`token::InviteToken`]: the one-line pairing token and the proof a joiner
//!   sends to show it knows the token's secret.
//! - [`msg`]: messages on the peer-to-peer QUIC session, and the connection
//!   close codes.
//! - [`control`]: messages on the local control socket between CLI and agent,
//!   including the `status` report whose JSON form is a public contract.
//! - [`list`], [`recipients`]: signed domain and recipient lists, their
//!   transfer in chunks or as changes, and every check on them.
//! - [`codec`]: framing and the only place that encodes or decodes bytes.
//!
//! The caller passes `now` (unix seconds) wherever time matters, which keeps
//! this crate deterministic and cheap to test.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod codec;
pub mod control;
pub mod domain;
pub mod id;
pub mod list;
pub mod msg;
pub mod name;
pub mod recipients;
pub mod token;

pub use codec::{CodecError, MAX_FRAME};
pub use id::PeerId;
pub use token::InviteToken;

/// The version of this crate, sent to peers as the agent version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
