//! Messages on the local control socket between the `mxfed` CLI and its agent.
//!
//! [`StatusReport`] doubles as the `mxfed status --json` output, so its field
//! names are a public contract: add fields, never rename them.

use serde::{Deserialize, Serialize};

use crate::codec::Message;
use crate::id::PeerId;

/// What the CLI asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// The status report.
    Status,
    /// Create an invite valid for `ttl_secs`.
    Invite {
        /// Lifetime in seconds.
        ttl_secs: u64,
    },
    /// Join the inviter named in a token.
    Join {
        /// The token text, as the user pasted it.
        token: String,
    },
    /// Remove a peer, telling it when it is reachable.
    Unpair {
        /// Peer name.
        name: String,
    },
}

impl Message for ControlRequest {
    const VARIANTS: u8 = 4;
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// Answer to [`ControlRequest::Status`].
    Status(StatusReport),
    /// Answer to [`ControlRequest::Invite`]: the token text.
    Invite {
        /// The one-line token.
        token: String,
        /// Unix seconds at which it expires.
        expires_at: u64,
    },
    /// Answer to [`ControlRequest::Join`].
    Joined {
        /// The inviter's name.
        name: String,
        /// The inviter's ID.
        id: PeerId,
    },
    /// Answer to [`ControlRequest::Unpair`].
    Unpaired {
        /// Whether the peer was reached and told.
        notified: bool,
    },
    /// The request failed; the message is for the user.
    Error {
        /// What went wrong.
        message: String,
    },
}

impl Message for ControlResponse {
    const VARIANTS: u8 = 5;
}

/// `mxfed status`: this agent and its peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This agent.
    #[serde(rename = "self")]
    pub me: SelfStatus,
    /// Paired peers, sorted by name.
    pub peers: Vec<PeerStatus>,
}

/// This agent, in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfStatus {
    /// Agent name.
    pub name: String,
    /// Peer ID.
    pub id: PeerId,
    /// The bound UDP address.
    pub listen: String,
    /// Addresses put in invites.
    pub advertise: Vec<String>,
    /// This agent's mail host.
    pub mail_host: String,
    /// Software version.
    pub agent_version: String,
}

/// One paired peer, in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer name.
    pub name: String,
    /// Peer ID.
    pub id: PeerId,
    /// Whether a session is up now.
    pub connected: bool,
    /// Remote address of the session in use, or the last one used.
    pub address: Option<String>,
    /// Addresses the peer advertises.
    pub addresses: Vec<String>,
    /// The peer's mail host.
    pub mail_host: String,
    /// RFC 3339 time the current session came up.
    pub connected_since: Option<String>,
    /// RFC 3339 time the peer was last heard from.
    pub last_seen: Option<String>,
    /// Smoothed round-trip time of the session, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// UDP bytes received on the current session.
    pub bytes_in: u64,
    /// UDP bytes sent on the current session.
    pub bytes_out: u64,
    /// The peer's software version, as it last said.
    pub agent_version: Option<String>,
    /// RFC 3339 time of pairing.
    pub paired_at: String,
}
