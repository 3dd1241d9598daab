//! Peers: the sessions with paired friends, pairing, and the one interface
//! the other services use to reach peers.
//!
//! - `link`: [`Peers`], that interface (send a request, open a transfer,
//!   who is connected, [`PeerEvent`]s), and [`Inbound`], what a session
//!   hands other services' requests to. The peer layer's state (live
//!   sessions, clock skew, dial orders) lives behind it.
//! - `session`: [`Sessions`], dialling, accepting, the duplicate-connection
//!   rule, and serving streams.
//! - `pairing`: [`Pairing`], invites, joining and unpairing, with the
//!   failed-join limiter (`limiter`).
//! - `wire`: one request over a QUIC stream, and closing a connection for
//!   a protocol violation.
//!
//! Only this module sees quinn connections and streams.

mod limiter;
mod link;
mod pairing;
mod session;
mod wire;

pub(crate) use link::{Caller, Inbound, PeerEvent, Peers, Responder, Responses, SendError};
pub(crate) use pairing::Pairing;
pub(crate) use session::Sessions;
