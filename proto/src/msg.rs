//! Messages between two agents over QUIC, and connection close codes.
//!
//! Every exchange is one request and one response on a fresh bidirectional
//! stream, each a single frame (see [`crate::codec`]). A paired peer may send
//! any [`Request`] but [`Request::Join`]; a client whose certificate is not
//! a paired peer may send exactly one [`Request::Join`] and nothing else.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::codec::Message;
use crate::token::TokenId;

/// ALPN protocol name; a connection without it is refused by TLS.
pub const ALPN: &[u8] = b"mxfed/1";

/// TLS exporter label for the join proof (RFC 5705 / 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-mxfed/1-join";

/// The server name the dialer sends; certificates are pinned by key, not name.
pub const SERVER_NAME: &str = "mxfed.invalid";

/// What an agent tells a peer about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The agent's name, as shown in `status`.
    pub name: String,
    /// Host name of the agent's own mail server.
    pub mail_host: String,
    /// Where the agent can be dialled.
    pub addrs: Vec<SocketAddr>,
    /// The agent's software version.
    pub agent_version: String,
}

/// A request on a new stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First request on every session: who I am now.
    Hello(PeerInfo),
    /// Liveness check; answered with [`Response::Pong`].
    Ping(u64),
    /// "Forget me": the sender has removed the receiver.
    Unpair,
    /// Present an invite. The only request an unpaired client may send.
    Join {
        /// Which invite.
        token_id: TokenId,
        /// [`crate::token::join_proof`] over this connection.
        proof: [u8; 32],
        /// The joiner.
        info: PeerInfo,
    },
}

impl Message for Request {
    const VARIANTS: u8 = 4;
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Hello`] and, on success, to [`Request::Join`].
    Hello(PeerInfo),
    /// Answer to [`Request::Ping`], echoing its nonce.
    Pong(u64),
    /// The request was carried out.
    Done,
    /// The request was refused; `message` says why, for the other side's user.
    Refused {
        /// Human-readable reason.
        message: String,
    },
}

impl Message for Response {
    const VARIANTS: u8 = 4;
}

/// QUIC application close codes.
pub mod close {
    /// Normal close.
    pub const DONE: u32 = 0;
    /// The agent is shutting down.
    pub const SHUTDOWN: u32 = 1;
    /// A message did not decode.
    pub const MALFORMED: u32 = 2;
    /// A frame was longer than the limit.
    pub const FRAME_TOO_LARGE: u32 = 3;
    /// A message of an unknown type.
    pub const UNKNOWN_MESSAGE: u32 = 4;
    /// Too many streams opened in a short time.
    pub const TOO_MANY_STREAMS: u32 = 5;
    /// The client is not a paired peer and did not present an invite.
    pub const NOT_PAIRED: u32 = 6;
    /// The peer unpaired us.
    pub const UNPAIRED: u32 = 7;
    /// Another connection to the same peer is kept instead.
    pub const DUPLICATE: u32 = 8;
    /// A request that is not allowed in this state (e.g. Join on a session).
    pub const UNEXPECTED: u32 = 9;
    /// A stream stalled mid-message.
    pub const TIMEOUT: u32 = 10;

    /// Name of a close code, for logs.
    pub fn name(code: u64) -> &'static str {
        match code {
            0 => "done",
            1 => "shutdown",
            2 => "malformed message",
            3 => "frame too large",
            4 => "unknown message type",
            5 => "too many streams",
            6 => "not paired",
            7 => "unpaired",
            8 => "duplicate connection",
            9 => "unexpected request",
            10 => "timeout",
            _ => "unknown close code",
        }
    }
}
