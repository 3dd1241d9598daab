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
    /// Add (or change the next hop of) domains I host.
    DomainsAdd {
        /// Domains as the user typed them; all are checked before any is stored.
        domains: Vec<String>,
        /// Next hop for them; default: my mail host.
        next_hop: Option<String>,
    },
    /// Remove domains I host.
    DomainsRemove {
        /// Domains as the user typed them.
        domains: Vec<String>,
    },
    /// The domains I host.
    DomainsList,
    /// Bring the Postfix maps in line with the accepted entries now.
    Apply {
        /// Only show what would change.
        dry_run: bool,
    },
    /// The last applies.
    History {
        /// How many.
        limit: u32,
    },
    /// What I hold in my queue for each peer (a fresh `postqueue -j` scan).
    Queue,
    /// Ask the peers that hold my mail to deliver it now.
    Flush {
        /// Only this peer.
        peer: Option<String>,
    },
    /// Check the setup and say what to fix.
    Doctor,
}

impl Message for ControlRequest {
    const VARIANTS: u8 = 12;
    // `domains add --from-file` with 100,000 names is one request. Only a
    // local user who can open the 0600 socket can send one.
    const MAX: usize = crate::codec::MAX_CONTROL_FRAME;
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
    /// Answer to [`ControlRequest::DomainsList`]: my list as it stands.
    Domains(MyDomains),
    /// Answer to [`ControlRequest::DomainsAdd`] and [`ControlRequest::DomainsRemove`].
    DomainsChanged(DomainsChanged),
    /// Answer to [`ControlRequest::Apply`].
    Applied(ApplyReport),
    /// Answer to [`ControlRequest::History`], newest first.
    History(Vec<HistoryEntry>),
    /// Answer to [`ControlRequest::Queue`].
    Queue(QueueView),
    /// Answer to [`ControlRequest::Flush`]: per peer, what happened.
    Flushed(Vec<FlushResult>),
    /// Answer to [`ControlRequest::Doctor`].
    Doctor(DoctorReport),
}

/// `mxfed doctor --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// False if any check failed.
    pub ok: bool,
    /// Every check made.
    pub checks: Vec<Check>,
}

/// One finding of `mxfed doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Which check: `mx`, `local-domains`, `queue-lifetime`, `postfix-setup`, `clock`.
    pub check: String,
    /// `ok`, `warn` or `fail`.
    pub status: String,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when ok).
    pub fix: String,
}

/// `mxfed queue --json`: what I hold for each peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    /// False when the queue could not be read (Postfix down): depths unknown.
    pub known: bool,
    /// Why it could not be read.
    pub error: Option<String>,
    /// RFC 3339 time of the scan.
    pub scanned_at: String,
    /// Per peer with accepted domains.
    pub peers: Vec<QueuePeer>,
}

/// Mail held for one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePeer {
    /// Peer name.
    pub name: String,
    /// Messages with a recipient in the peer's domains (each counted once).
    pub messages: u64,
    /// Recipients in the peer's domains.
    pub recipients: u64,
    /// Bytes of those messages.
    pub bytes: u64,
    /// RFC 3339 arrival of the oldest.
    pub oldest_arrival: Option<String>,
    /// Messages per queue: incoming, active, deferred, hold.
    pub queues: std::collections::BTreeMap<String, u64>,
    /// The most common delay reasons.
    pub reasons: Vec<ReasonCount>,
    /// Per domain with mail.
    pub domains: Vec<QueueDomain>,
}

/// Mail held for one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDomain {
    /// The domain.
    pub domain: String,
    /// Messages.
    pub messages: u64,
    /// Recipients.
    pub recipients: u64,
    /// Bytes.
    pub bytes: u64,
    /// RFC 3339 arrival of the oldest.
    pub oldest_arrival: Option<String>,
}

/// A delay reason and how many recipients have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// Postfix's delay reason.
    pub reason: String,
    /// Recipients.
    pub count: u64,
}

/// What `mxfed flush` did for one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushResult {
    /// Peer name.
    pub peer: String,
    /// `flushed`, or why not.
    pub result: String,
}

/// Held mail in `status`: what I hold for a peer, or what it reports
/// holding for me. `messages` and `bytes` are null when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldStatus {
    /// Messages (null: unknown).
    pub messages: Option<u64>,
    /// Bytes (null: unknown).
    pub bytes: Option<u64>,
    /// RFC 3339 arrival of the oldest.
    pub oldest_arrival: Option<String>,
    /// RFC 3339 time of the scan or report.
    pub reported_at: Option<String>,
}

/// What an apply did (or, with `dry_run`, would do). `mxfed apply --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Only planned.
    pub dry_run: bool,
    /// `applied`, `unchanged`, `planned` (dry run) or `failed`.
    pub result: String,
    /// One line per change to the transport map: `+ domain relay:[host]`,
    /// `- domain ...`, `~ domain old -> new` (at most 1,000 of each kind,
    /// then `... and N more changes`), and a line per other map changed.
    pub changes: Vec<String>,
    /// Domains added to, removed from and re-targeted in the transport
    /// map, in all.
    pub added: u32,
    /// See `added`.
    pub removed: u32,
    /// See `added`.
    pub changed: u32,
    /// Domains relayed afterwards.
    pub total: u32,
    /// The step that failed.
    pub step: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One row of `mxfed history --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// RFC 3339 time.
    pub at: String,
    /// What caused it: a list received, a re-check, an unpair, startup, `mxfed apply`...
    pub trigger: String,
    /// `applied` or `failed`.
    pub result: String,
    /// The step that failed.
    pub step: Option<String>,
    /// The error.
    pub message: Option<String>,
    /// Domains added.
    pub added: u32,
    /// Domains removed.
    pub removed: u32,
    /// Domains whose next hop changed.
    pub changed: u32,
    /// Domains relayed afterwards.
    pub total: u32,
}

/// What `domains add` or `domains remove` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainsChanged {
    /// Version of my list now.
    pub version: u64,
    /// Entries added or given a new next hop.
    pub added: u32,
    /// Entries removed.
    pub removed: u32,
    /// Entries in the list now.
    pub total: u32,
}

impl Message for ControlResponse {
    const VARIANTS: u8 = 12;
    const MAX: usize = crate::codec::MAX_CONTROL_FRAME;
}

/// `mxfed domains list --json`: the domains I host and my signed list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MyDomains {
    /// Version of my signed list (0: never published).
    pub version: u64,
    /// RFC 3339 time the current version was signed.
    pub issued_at: Option<String>,
    /// RFC 3339 time it expires (it is re-signed well before).
    pub expires_at: Option<String>,
    /// The entries, sorted.
    pub domains: Vec<MyDomain>,
}

/// One of my domains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MyDomain {
    /// The domain (punycode).
    pub domain: String,
    /// Where friends relay its mail.
    pub next_hop: String,
    /// How many recipients (addresses and catch-alls) my recipient list
    /// has for it; `None`: none, so friends accept every recipient.
    pub recipients: Option<u64>,
    /// Why there is no count.
    pub recipients_reason: Option<String>,
}

/// What I made of one entry of a friend's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Checked and in force.
    Accepted,
    /// Not backed up; the reason says why.
    Refused,
    /// Not decided yet (DNS did not answer); retried.
    Pending,
}

impl EntryState {
    /// The lower-case name used in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Accepted => "accepted",
            EntryState::Refused => "refused",
            EntryState::Pending => "pending",
        }
    }

    /// Parses [`Self::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(EntryState::Accepted),
            "refused" => Some(EntryState::Refused),
            "pending" => Some(EntryState::Pending),
            _ => None,
        }
    }
}

/// One entry of a friend's list as I hold it, in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDomain {
    /// The domain.
    pub domain: String,
    /// Where I relay its mail.
    pub next_hop: String,
    /// What I made of it.
    pub state: EntryState,
    /// Why (for refused and pending; a warning for some accepted ones).
    pub reason: Option<String>,
    /// How many recipients (addresses and catch-alls) the friend publishes
    /// for it; `None`: it publishes none, so every recipient is accepted.
    pub recipients: Option<u64>,
    /// Why there is no count.
    pub recipients_reason: Option<String>,
}

/// A domain a friend refused or has pending, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainReason {
    /// The domain.
    pub domain: String,
    /// Why.
    pub reason: String,
}

/// What a friend holds of my list, as it last told me.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MyListAtPeer {
    /// The version it acknowledged (null: none yet).
    pub version_acked: Option<u64>,
    /// Entries it accepted.
    pub accepted: u32,
    /// Entries it refused, in all.
    pub refused_count: u32,
    /// Entries pending there, in all.
    pub pending_count: u32,
    /// Refused entries (at most 1,000), with reasons.
    pub refused: Vec<DomainReason>,
    /// Pending entries (at most 1,000), with reasons.
    pub pending: Vec<DomainReason>,
    /// RFC 3339 time of the acknowledgement.
    pub acked_at: Option<String>,
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
    /// SHA-256 fingerprints of my SMTP server keys, as I publish them for
    /// friends to pin (empty: none; see the agent's log for why).
    #[serde(default)]
    pub tls_fingerprints: Vec<String>,
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
    /// Version of its domain list I hold (null: none).
    pub list_version: Option<u64>,
    /// RFC 3339 expiry of the list I hold.
    pub list_expires_at: Option<String>,
    /// Its list as I hold it, with what I made of each entry.
    pub domains: Vec<PeerDomain>,
    /// What it holds of my list.
    pub my_list: MyListAtPeer,
    /// What I hold in my queue for it.
    pub held_for_peer: HeldStatus,
    /// What it reports holding in its queue for me.
    pub held_by_peer: HeldStatus,
    /// Whether its MTA was accepting mail, as it last reported.
    pub peer_mta_accepting: Option<bool>,
    /// Its SMTP server key fingerprints as it publishes them (what I pin
    /// where its agent was seen, with any from before a change in the
    /// last 7 days).
    #[serde(default)]
    pub tls_fingerprints: Vec<String>,
}
