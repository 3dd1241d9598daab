//! Messages between two agents over QUIC, and connection close codes.
//!
//! Every exchange is one request and one response on a fresh bidirectional
//! stream, each a single frame (see [`crate::codec`]). A paired peer may send
//! any [`Request`] but [`Request::Join`]; a client whose certificate is not
//! a paired peer may send exactly one [`Request::Join`] and nothing else.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::codec::Message;
use crate::list::{ChangesHeader, ListHeader, WireChange, WireEntry};
use crate::recipients::{RecipientChangesHeader, RecipientHeader, WireRecipientChange};
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

/// What each side says first on every session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Who I am now.
    pub info: PeerInfo,
    /// The version of my domain list (0: none yet), so the other side can
    /// fetch it if it holds an older one.
    pub list_version: u64,
    /// The sender's clock (unix seconds), for `mxfed doctor`'s skew check.
    pub now: u64,
}

/// Most notes of each kind in a [`ListAck`].
pub const MAX_ACK_NOTES: usize = 1_000;
/// Longest reason in a [`ListAck`] note.
pub const MAX_REASON: usize = 300;

/// One entry the receiver did not accept (yet), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryNote {
    /// The domain, canonical form.
    pub domain: String,
    /// Why it is refused or pending.
    pub reason: String,
}

/// The receiver's answer to a domain list: what it holds and what it made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAck {
    /// The list version the receiver holds.
    pub version: u64,
    /// Entries accepted.
    pub accepted: u32,
    /// Entries refused, in all.
    pub refused_count: u32,
    /// Entries pending (DNS not answered yet), in all.
    pub pending_count: u32,
    /// Refused entries, at most [`MAX_ACK_NOTES`].
    pub refused: Vec<EntryNote>,
    /// Pending entries, at most [`MAX_ACK_NOTES`].
    pub pending: Vec<EntryNote>,
}

/// Totals of queued mail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Messages.
    pub messages: u64,
    /// Recipients.
    pub recipients: u64,
    /// Bytes.
    pub bytes: u64,
    /// Unix seconds of the oldest message.
    pub oldest_arrival: Option<i64>,
}

/// Most domains listed in a [`QueueReport`].
pub const MAX_REPORT_DOMAINS: usize = 1_000;

/// What I hold in my queue for the peer I send this to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// Whether my own MTA is running and accepting mail.
    pub mta_accepting: bool,
    /// Totals for the receiver's domains; `None` when my queue cannot be
    /// read (Postfix down): unknown, never zero.
    pub held: Option<Held>,
    /// Per domain with mail, at most [`MAX_REPORT_DOMAINS`].
    pub domains: Vec<(String, Held)>,
}

/// A request on a new stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First request on every session: who I am now.
    Hello(Hello),
    /// Liveness check; answered with [`Response::Pong`].
    Ping(u64),
    /// "Forget me": the sender has removed the receiver.
    Unpair,
    /// Present an invite. The only request an unpaired client may send.
    Join {
        /// Which invite.
        token_id: TokenId,
        /// [`crate::InviteToken::join_proof`] over this connection.
        proof: Vec<u8>,
        /// The joiner.
        info: PeerInfo,
    },
    /// "My domain list is now at this version": fetch it if you lack it.
    ListOffer {
        /// The signer's current version.
        version: u64,
    },
    /// Send me your list if it is newer than `have`. Answered with a
    /// [`Response::ListHeader`] and then [`Response::ListChunk`] frames on
    /// the same stream, or [`Response::Refused`].
    FetchList {
        /// The version the asker holds (0: none).
        have: u64,
    },
    /// What I made of your list.
    ListAck(ListAck),
    /// What I hold for you (sent when it changes, and every 30 s while I
    /// hold mail).
    QueueReport(QueueReport),
    /// "Deliver what you hold for me now" (ETRN over the session).
    Flush,
    /// Like [`Request::FetchList`], but the answer may be only the changes
    /// since `have`: a [`Response::ChangesHeader`] and then
    /// [`Response::ListChanges`] frames. The sender may still answer with
    /// the whole list (it cannot tell the changes since `have`). Sent only
    /// to agents that [`understand_changes`].
    FetchChanges {
        /// The version the asker holds.
        have: u64,
    },
    /// "My recipient list is now at this version": fetch it if you lack it
    /// (sent on every new session and on every change; 0.2 and later).
    RecipientOffer {
        /// The signer's current version (0: it publishes none).
        version: u64,
    },
    /// Send me your recipient list if it is newer than `have` (0: none):
    /// a [`Response::RecipientHeader`] and [`Response::RecipientChunk`]s,
    /// or a [`Response::RecipientChangesHeader`] and
    /// [`Response::RecipientChanges`] since `have`, or a refusal.
    FetchRecipients {
        /// The version the asker holds.
        have: u64,
    },
}

impl Message for Request {
    const VARIANTS: u8 = 12;
}

/// The first agent version that understands [`Request::FetchChanges`],
/// [`Request::RecipientOffer`] and [`Request::FetchRecipients`] (older
/// agents close the connection on an unknown request).
pub const CHANGES_SINCE: (u64, u64) = (0, 2);

/// Whether an agent of this version (from its Hello) understands
/// [`Request::FetchChanges`] and the recipient list requests.
pub fn understand_changes(agent_version: &str) -> bool {
    let mut parts = agent_version
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= CHANGES_SINCE
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello(Hello),
    /// Answer to [`Request::Ping`], echoing its nonce.
    Pong(u64),
    /// The request was carried out.
    Done,
    /// The request was refused; `message` says why, for the other side's user.
    Refused {
        /// Human-readable reason.
        message: String,
    },
    /// Answer to a successful [`Request::Join`]: the inviter.
    Welcome(PeerInfo),
    /// First frame of a list transfer.
    ListHeader(ListHeader),
    /// A chunk of list entries.
    ListChunk(Vec<WireEntry>),
    /// First frame of a transfer of changes (answer to
    /// [`Request::FetchChanges`]).
    ChangesHeader(ChangesHeader),
    /// A chunk of changes.
    ListChanges(Vec<WireChange>),
    /// First frame of a recipient list transfer.
    RecipientHeader(RecipientHeader),
    /// A chunk of recipients.
    RecipientChunk(Vec<String>),
    /// First frame of a transfer of changes to a recipient list.
    RecipientChangesHeader(RecipientChangesHeader),
    /// A chunk of recipient changes.
    RecipientChanges(Vec<WireRecipientChange>),
}

impl Message for Response {
    const VARIANTS: u8 = 13;
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

#[cfg(test)]
mod tests {
    use super::understand_changes;

    #[test]
    fn changes_are_understood_from_version_0_2() {
        assert!(!understand_changes("0.1.0"));
        assert!(!understand_changes(""));
        assert!(!understand_changes("garbage"));
        assert!(understand_changes("0.2.0"));
        assert!(understand_changes("0.10.1"));
        assert!(understand_changes("1.0.0"));
    }
}
