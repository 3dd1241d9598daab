//! Signed domain lists, both ways.
//!
//! *Mine*: `mxfed domains add/remove` changes the set, which is re-signed
//! with a new version, stored, and offered at once to every connected peer
//! ([`Shared::change_my_domains`]). It is re-signed daily so it never
//! expires while this agent runs ([`Shared::refresh_loop`]).
//!
//! *Theirs*: on a `Hello` or `ListOffer` announcing a version newer than the
//! one held, the list is fetched in chunks and checked by
//! [`mxfed_proto::list::ListReceiver`] (signer, version, expiry, bounds,
//! canonical names, signature) before anything is stored. Each entry is then
//! judged by [`judge`]: refused if it is one of my domains or already backed
//! up for another peer, and — with `verify_mx = "require"` — unless its MX
//! records name both my mail host and the entry's next hop. A DNS failure
//! makes an entry pending, never revokes an accepted one, and is retried
//! every `recheck_interval` ([`Shared::recheck_loop`]); accepted entries are
//! checked again once `reverify_interval` has passed, so relay ends for a
//! domain whose MX stops naming both servers even if the friend stays
//! offline. The outcome goes back to the signer as a [`ListAck`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use mxfed_proto::control::{DomainsChanged, EntryState, MyDomain, MyDomains};
use mxfed_proto::domain::{Domain, Host, NextHop};
use mxfed_proto::list::{DomainList, Entry, ListError, ListReceiver};
use mxfed_proto::msg::{close, EntryNote, ListAck, Request, Response, MAX_ACK_NOTES, MAX_REASON};
use mxfed_proto::PeerId;

use crate::config::VerifyMx;
use crate::dns::{Dns, MxAnswer};
use crate::frames::{self, FrameError};
use crate::session::{lock, now_unix, rfc3339, violated, violation, Shared};
use crate::store::HeldEntry;

/// How long a signed list of mine is valid.
pub const LIST_LIFETIME: Duration = Duration::from_secs(14 * 86_400);
/// Re-sign my list once it is this old, well before it expires.
pub const REFRESH_AFTER: Duration = Duration::from_secs(86_400);
/// DNS look-ups in flight at once while judging a list.
const DNS_CONCURRENCY: usize = 32;
/// How far a friend's acknowledgement may move my list version forward
/// (after a restore from backup); bounds what a hostile friend can do.
const MAX_VERSION_JUMP: u64 = 1 << 32;
/// How long a whole list transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long to wait for each frame of a list transfer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two fetches of one peer's list.
const MIN_FETCH_GAP: Duration = Duration::from_secs(1);
/// Entries re-checked per peer per `recheck_interval` (refused, pending, and
/// accepted ones due for re-verification); a peer with more has them
/// re-checked in turn, so what DNS load a peer's list can cause does not
/// grow with its length.
pub const RECHECK_BUDGET: usize = 1000;

/// My current signed list.
#[derive(Debug)]
pub(crate) struct Published {
    pub list: DomainList,
    pub signature: Vec<u8>,
    /// The stored signature does not match the stored entries: re-sign now.
    pub stale: bool,
}

/// List bookkeeping inside [`Shared`].
pub(crate) struct ListState {
    pub dns: Dns,
    /// My current list; its lock also serialises publishing.
    pub mine: tokio::sync::Mutex<Option<Arc<Published>>>,
    /// The newest version each peer has announced.
    offered: std::sync::Mutex<HashMap<PeerId, u64>>,
    /// Peers whose list is being fetched now.
    fetching: std::sync::Mutex<HashSet<PeerId>>,
    /// Serialises judging, so two peers cannot both claim a domain at once.
    judging: tokio::sync::Mutex<()>,
    /// When each peer's list was last fetched (see [`MIN_FETCH_GAP`]).
    last_fetch: std::sync::Mutex<HashMap<PeerId, tokio::time::Instant>>,
    /// The last domain of each peer's previous re-check round; the next
    /// round starts after it.
    recheck_from: std::sync::Mutex<HashMap<PeerId, String>>,
}

impl ListState {
    pub(crate) fn new(dns: Dns, mine: Option<Published>) -> Self {
        Self {
            dns,
            mine: tokio::sync::Mutex::new(mine.map(Arc::new)),
            offered: Default::default(),
            fetching: Default::default(),
            judging: tokio::sync::Mutex::new(()),
            last_fetch: Default::default(),
            recheck_from: Default::default(),
        }
    }

    pub(crate) fn forget(&self, peer: &PeerId) {
        lock(&self.offered).remove(peer);
        lock(&self.recheck_from).remove(peer);
        lock(&self.last_fetch).remove(peer);
    }
}

/// What the judge knows about one entry's DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsFacts {
    /// The MX answer for the domain.
    pub mx: MxAnswer,
    /// For an `[IP]` next hop: whether one of the MX hosts resolves to it
    /// (`Err` if those look-ups failed). Unused for a host-name next hop.
    pub ip_listed: Result<bool, String>,
    /// The addresses the next hop resolves to (for an `[IP]` next hop, that
    /// address), or why they could not be found.
    pub hop_addrs: Result<Vec<IpAddr>, String>,
}

/// Why mail must not be relayed to `ip`, if it must not: only public
/// unicast addresses that are not this server's are a friend's host.
fn forbidden_hop(ip: &IpAddr, mine: &[IpAddr], allow_non_public: bool) -> Option<&'static str> {
    if mine.contains(ip) {
        return Some("is this server");
    }
    if allow_non_public {
        return None;
    }
    let bad = match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| forbidden_hop(&IpAddr::V4(v4), mine, false).is_some())
        }
    };
    bad.then_some("is not a public address")
}

/// DNS and Postfix facts for a batch of entries.
struct Gathered {
    facts: HashMap<Domain, DnsFacts>,
    local: Result<HashSet<Domain>, String>,
    my_addrs: Vec<IpAddr>,
}

/// The local facts an entry is judged against.
pub(crate) struct Ownership<'a> {
    pub my_mail_host: &'a str,
    /// The addresses of my mail host (empty if unknown).
    pub my_addrs: &'a [IpAddr],
    /// `allow_non_public_next_hops`.
    pub allow_non_public: bool,
    pub my_domains: &'a HashSet<Domain>,
    /// Domains this Postfix delivers itself, or why that could not be read.
    pub local: &'a Result<HashSet<Domain>, String>,
    /// Domains accepted for other peers, with the peer's name.
    pub taken: &'a HashMap<Domain, String>,
    pub verify: VerifyMx,
}

/// Judges one entry. `previous` is its state under the same next hop, if
/// any: a DNS failure keeps an accepted entry accepted.
pub(crate) fn judge(
    entry: &Entry,
    own: &Ownership<'_>,
    dns: Option<&DnsFacts>,
    previous: Option<&(EntryState, Option<String>)>,
) -> (EntryState, Option<String>) {
    let d = &entry.domain;
    if own.my_domains.contains(d) {
        return (
            EntryState::Refused,
            Some(format!("{d} is one of my own domains")),
        );
    }
    match own.local {
        Ok(local) if local.contains(d) => {
            return (
                EntryState::Refused,
                Some("local domain: this Postfix delivers it (mydestination, virtual_*_domains or relay_domains)".into()),
            )
        }
        Ok(_) => {}
        Err(why) => {
            return match previous {
                Some((EntryState::Accepted, reason)) => (EntryState::Accepted, reason.clone()),
                _ => (EntryState::Pending, Some(format!("cannot check Postfix's local domains ({why}); will retry"))),
            }
        }
    }
    if own.taken.contains_key(d) {
        // Do not tell one friend which other friends are paired here.
        return (
            EntryState::Refused,
            Some(format!("{d} is already backed up here for another peer")),
        );
    }
    // Mail goes only to the friend's host: never back to me, never to a
    // loopback, private or otherwise non-public address.
    match entry.next_hop.host() {
        Host::Name(name) if name.as_str() == own.my_mail_host => {
            return (
                EntryState::Refused,
                Some(format!("next hop {name} is this server's own mail host")),
            );
        }
        Host::Ip(ip) => {
            if let Some(why) = forbidden_hop(ip, own.my_addrs, own.allow_non_public) {
                return (EntryState::Refused, Some(format!("next hop {ip} {why}")));
            }
        }
        Host::Name(_) => {}
    }
    if own.verify == VerifyMx::Off {
        return (EntryState::Accepted, None);
    }
    let Some(facts) = dns else {
        return match previous {
            // No answer is not an answer: never a reason to revoke.
            Some((EntryState::Accepted, reason)) => (EntryState::Accepted, reason.clone()),
            _ => (EntryState::Pending, Some("not checked yet".into())),
        };
    };
    let failed = |why: &str| match previous {
        Some((EntryState::Accepted, reason)) => (EntryState::Accepted, reason.clone()),
        _ => (
            EntryState::Pending,
            Some(format!("DNS look-up for {d} failed ({why}); will retry")),
        ),
    };
    if let Host::Name(name) = entry.next_hop.host() {
        match &facts.hop_addrs {
            Err(why) => return failed(why),
            Ok(addrs) if addrs.is_empty() => {
                return (
                    EntryState::Refused,
                    Some(format!("next hop {name} has no address")),
                )
            }
            Ok(addrs) => {
                if let Some((ip, why)) = addrs.iter().find_map(|ip| {
                    forbidden_hop(ip, own.my_addrs, own.allow_non_public).map(|w| (ip, w))
                }) {
                    return (
                        EntryState::Refused,
                        Some(format!("next hop {name} resolves to {ip}, which {why}")),
                    );
                }
            }
        }
    }
    let missing: Vec<String> = match &facts.mx {
        MxAnswer::Failed(why) => return failed(why),
        MxAnswer::NoMx => vec![format!("{d} has no MX records")],
        MxAnswer::Hosts(hosts) => {
            let mut missing = Vec::new();
            if !hosts.iter().any(|h| h == own.my_mail_host) {
                missing.push(format!("MX of {d} does not list {}", own.my_mail_host));
            }
            match entry.next_hop.host() {
                Host::Name(name) => {
                    if !hosts.iter().any(|h| h == name.as_str()) {
                        missing.push(format!("MX of {d} does not list its next hop {name}"));
                    }
                }
                Host::Ip(ip) => match &facts.ip_listed {
                    Ok(true) => {}
                    Ok(false) => {
                        missing.push(format!("no MX host of {d} has the next hop's address {ip}"))
                    }
                    Err(why) => return failed(why),
                },
            }
            missing
        }
    };
    if missing.is_empty() {
        return (EntryState::Accepted, None);
    }
    let reason = missing.join("; ");
    match own.verify {
        VerifyMx::Warn => (EntryState::Accepted, Some(format!("warning: {reason}"))),
        _ => (EntryState::Refused, Some(reason)),
    }
}

/// Whether judging `entry` could check everything it depends on (Postfix's
/// local domains and every DNS look-up it needs), so that keeping it
/// accepted counts as a re-verification: judged afresh, with no earlier
/// state to fall back on, it would not be left pending.
fn conclusive(entry: &Entry, own: &Ownership<'_>, dns: Option<&DnsFacts>) -> bool {
    judge(entry, own, dns, None).0 != EntryState::Pending
}

/// One entry as judged, and whether that judgement was [`conclusive`].
struct Judged {
    held: HeldEntry,
    conclusive: bool,
}

async fn dns_facts(dns: Dns, entry: Entry, my_mail_host: String) -> DnsFacts {
    let mx = dns.mx(entry.domain.as_str()).await;
    let ip_listed = match (entry.next_hop.host(), &mx) {
        (Host::Ip(ip), MxAnswer::Hosts(hosts)) => {
            let mut found = Ok(false);
            for h in hosts.iter().filter(|h| **h != my_mail_host).take(10) {
                match dns.addresses(h).await {
                    Ok(addrs) if addrs.contains(ip) => {
                        found = Ok(true);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => found = Err(e),
                }
            }
            found
        }
        _ => Ok(false),
    };
    let hop_addrs = match entry.next_hop.host() {
        Host::Ip(ip) => Ok(vec![*ip]),
        Host::Name(name) => dns.addresses(name.as_str()).await,
    };
    DnsFacts {
        mx,
        ip_listed,
        hop_addrs,
    }
}

/// Whether my list should be re-signed now: once a day, so that it is
/// always far from its 14-day expiry while this agent runs.
fn needs_refresh(list: &DomainList, now: u64) -> bool {
    now.saturating_sub(list.issued_at) >= REFRESH_AFTER.as_secs() || list.expires_at <= now
}

/// Counts and notes for the signer.
fn make_ack(version: u64, held: &[HeldEntry]) -> ListAck {
    let mut ack = ListAck {
        version,
        accepted: 0,
        refused_count: 0,
        pending_count: 0,
        refused: Vec::new(),
        pending: Vec::new(),
    };
    for h in held {
        let note = || EntryNote {
            domain: h.entry.domain.to_string(),
            reason: truncate(h.reason.as_deref().unwrap_or(""), MAX_REASON),
        };
        match h.state {
            EntryState::Accepted => ack.accepted += 1,
            EntryState::Refused => {
                ack.refused_count += 1;
                if ack.refused.len() < MAX_ACK_NOTES {
                    ack.refused.push(note());
                }
            }
            EntryState::Pending => {
                ack.pending_count += 1;
                if ack.pending.len() < MAX_ACK_NOTES {
                    ack.pending.push(note());
                }
            }
        }
    }
    ack
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Checks an acknowledgement from a peer before it is stored.
fn check_ack(ack: &ListAck, my_version: u64) -> Result<(), String> {
    if ack.version > my_version {
        return Err(format!(
            "acknowledges version {} but mine is {my_version}",
            ack.version
        ));
    }
    if ack.refused.len() > MAX_ACK_NOTES || ack.pending.len() > MAX_ACK_NOTES {
        return Err("too many notes".into());
    }
    let total =
        u64::from(ack.accepted) + u64::from(ack.refused_count) + u64::from(ack.pending_count);
    if total > u64::from(mxfed_proto::list::MAX_ENTRIES) {
        return Err("counts over the list size limit".into());
    }
    for n in ack.refused.iter().chain(&ack.pending) {
        Domain::parse_canonical(&n.domain).map_err(|e| format!("note: {e}"))?;
        if n.reason.len() > MAX_REASON
            || !n.reason.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        {
            return Err(format!(
                "note for {}: reason too long or not printable",
                n.domain
            ));
        }
    }
    Ok(())
}

fn view(p: Option<&Published>) -> MyDomains {
    match p {
        None => MyDomains {
            version: 0,
            issued_at: None,
            expires_at: None,
            domains: Vec::new(),
        },
        Some(p) => MyDomains {
            version: p.list.version,
            issued_at: Some(rfc3339(p.list.issued_at as i64)),
            expires_at: Some(rfc3339(p.list.expires_at as i64)),
            domains: p
                .list
                .entries()
                .iter()
                .map(|e| MyDomain {
                    domain: e.domain.to_string(),
                    next_hop: e.next_hop.to_string(),
                })
                .collect(),
        },
    }
}

/// Loads my current list from the store, checking it against my own key.
pub(crate) async fn load_mine(
    store: &crate::store::Store,
    id: PeerId,
) -> Result<Option<Published>, crate::store::StoreError> {
    let Some(meta) = store.my_list_meta().await? else {
        return Ok(None);
    };
    let list = DomainList::new(
        id,
        meta.version,
        meta.issued_at,
        meta.expires_at,
        store.my_entries().await?,
    );
    let stale = !id.verify(&list.signing_bytes(), &meta.signature);
    if stale {
        tracing::warn!("my stored domain list does not match its signature; re-signing it");
    }
    Ok(Some(Published {
        list,
        signature: meta.signature,
        stale,
    }))
}

impl Shared {
    /// The version of my list (0: none).
    pub(crate) async fn my_list_version(&self) -> u64 {
        self.lists
            .mine
            .lock()
            .await
            .as_ref()
            .map_or(0, |p| p.list.version)
    }

    /// `mxfed domains list`.
    pub(crate) async fn my_domains(&self) -> MyDomains {
        view(self.lists.mine.lock().await.as_deref())
    }

    /// Adds (or re-targets) and removes my domains; re-signs and offers the
    /// list if anything changed. All input is checked before anything changes.
    pub(crate) async fn change_my_domains(
        self: &Arc<Self>,
        add: &[String],
        next_hop: Option<&str>,
        remove: &[String],
    ) -> Result<DomainsChanged, String> {
        let hop = match next_hop {
            Some(h) => NextHop::parse(h).map_err(|e| format!("invalid next hop: {e}"))?,
            None => NextHop::host_name(
                Domain::parse(&self.config.mail_host).map_err(|e| format!("mail_host: {e}"))?,
            ),
        };
        let add: Vec<Entry> = add
            .iter()
            .map(|d| {
                Domain::parse(d)
                    .map(|domain| Entry {
                        domain,
                        next_hop: hop.clone(),
                    })
                    .map_err(|e| format!("invalid domain: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let remove: Vec<Domain> = remove
            .iter()
            .map(|d| Domain::parse(d).map_err(|e| format!("invalid domain: {e}")))
            .collect::<Result<_, _>>()?;

        let mut mine = self.lists.mine.lock().await;
        let mut current: HashMap<Domain, NextHop> = mine
            .as_ref()
            .map(|p| {
                p.list
                    .entries()
                    .iter()
                    .map(|e| (e.domain.clone(), e.next_hop.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let unknown: Vec<String> = remove
            .iter()
            .filter(|d| !current.contains_key(*d))
            .map(|d| d.to_string())
            .collect();
        if !unknown.is_empty() {
            return Err(format!("not in my list: {}", unknown.join(", ")));
        }
        let mut upserted = Vec::new();
        for e in add {
            if current.get(&e.domain) != Some(&e.next_hop) {
                current.insert(e.domain.clone(), e.next_hop.clone());
                upserted.push(e);
            }
        }
        let mut removed = Vec::new();
        for d in remove {
            if current.remove(&d).is_some() {
                removed.push(d);
            }
        }
        if upserted.is_empty() && removed.is_empty() {
            let (version, total) = mine
                .as_ref()
                .map_or((0, 0), |p| (p.list.version, p.list.entries().len() as u32));
            return Ok(DomainsChanged {
                version,
                added: 0,
                removed: 0,
                total,
            });
        }
        let entries = current
            .into_iter()
            .map(|(domain, next_hop)| Entry { domain, next_hop })
            .collect();
        let version = mine.as_ref().map_or(0, |p| p.list.version) + 1;
        let published = self
            .sign_and_store(version, entries, &upserted, &removed)
            .await?;
        tracing::info!(
            version,
            added = upserted.len(),
            removed = removed.len(),
            total = published.list.entries().len(),
            "my domain list changed; signed and offered to peers"
        );
        let out = DomainsChanged {
            version,
            added: upserted.len() as u32,
            removed: removed.len() as u32,
            total: published.list.entries().len() as u32,
        };
        *mine = Some(published);
        drop(mine);
        self.offer_to_all(version);
        let added: Vec<Domain> = upserted.iter().map(|e| e.domain.clone()).collect();
        self.revoke_now_mine(&added).await;
        Ok(out)
    }

    async fn sign_and_store(
        &self,
        version: u64,
        entries: Vec<Entry>,
        upserted: &[Entry],
        removed: &[Domain],
    ) -> Result<Arc<Published>, String> {
        let now = now_unix().max(0) as u64;
        let list = DomainList::new(
            self.identity.id,
            version,
            now,
            now + LIST_LIFETIME.as_secs(),
            entries,
        );
        let signature = self.identity.sign(&list.signing_bytes());
        self.store
            .publish_my_list(&list, &signature, upserted, removed)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Published {
            list,
            signature,
            stale: false,
        }))
    }

    /// Re-signs my list (same entries, new version) once it is a day old.
    pub(crate) async fn refresh_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let mut mine = self.lists.mine.lock().await;
            let Some(p) = mine.clone() else { continue };
            if !p.stale && !needs_refresh(&p.list, now_unix().max(0) as u64) {
                continue;
            }
            let version = p.list.version + 1;
            match self
                .sign_and_store(version, p.list.entries().to_vec(), &[], &[])
                .await
            {
                Ok(new) => {
                    tracing::info!(version, "re-signed my domain list before it expires");
                    *mine = Some(new);
                    drop(mine);
                    self.offer_to_all(version);
                }
                Err(e) => tracing::error!("cannot re-sign my domain list: {e}"),
            }
        }
    }

    /// Re-signs my list (same entries) with at least `version`, and offers it.
    async fn resign_as(self: &Arc<Self>, version: u64) -> Result<u64, String> {
        let mut mine = self.lists.mine.lock().await;
        let current = mine.as_ref().map_or(0, |p| p.list.version);
        if current >= version {
            return Ok(current);
        }
        let entries = mine
            .as_ref()
            .map(|p| p.list.entries().to_vec())
            .unwrap_or_default();
        let published = self.sign_and_store(version, entries, &[], &[]).await?;
        *mine = Some(published);
        drop(mine);
        self.offer_to_all(version);
        Ok(version)
    }

    fn offer_to_all(self: &Arc<Self>, version: u64) {
        for (id, conn) in self.live_sessions() {
            tokio::spawn(async move {
                if let Err(e) =
                    crate::session::request(&conn, &Request::ListOffer { version }).await
                {
                    tracing::debug!(peer = %id.short(), "list offer: {e}");
                }
            });
        }
    }

    /// Answers `FetchList`: the header and chunks, or a refusal.
    pub(crate) async fn serve_fetch(
        &self,
        have: u64,
        send: &mut quinn::SendStream,
    ) -> Result<(), FrameError> {
        let mine = self.lists.mine.lock().await.clone();
        match mine {
            Some(p) if p.list.version > have => {
                frames::write(
                    send,
                    &Response::ListHeader(p.list.header(p.signature.clone())),
                )
                .await?;
                for chunk in p.list.chunks() {
                    frames::write(send, &Response::ListChunk(chunk)).await?;
                }
            }
            _ => {
                frames::write(
                    send,
                    &Response::Refused {
                        message: "no newer list".into(),
                    },
                )
                .await?
            }
        }
        Ok(())
    }

    /// Notes that `peer` has list `version`, and fetches it if newer than held.
    pub(crate) fn list_offered(self: &Arc<Self>, peer: PeerId, version: u64) {
        {
            let mut offered = lock(&self.lists.offered);
            let v = offered.entry(peer).or_insert(0);
            *v = (*v).max(version);
        }
        if version > 0 {
            tokio::spawn(Arc::clone(self).fetch_loop(peer));
        }
    }

    async fn fetch_loop(self: Arc<Self>, peer: PeerId) {
        if !lock(&self.lists.fetching).insert(peer) {
            return; // a fetch is running; it looks at the offered version when done
        }
        loop {
            // However fast a peer offers versions (and whether or not its
            // lists turn out good), it is fetched, and its new entries looked
            // up in DNS, at most once per MIN_FETCH_GAP; versions offered in
            // between are skipped, only the newest counts.
            let last = lock(&self.lists.last_fetch).get(&peer).copied();
            if let Some(at) = last {
                tokio::time::sleep_until(at + MIN_FETCH_GAP).await;
            }
            let Some((held, offered)) = self.newer_offered(&peer).await else {
                lock(&self.lists.fetching).remove(&peer);
                // An offer that arrived after the check above but before the
                // removal saw a fetch running and returned: look once more.
                if self.newer_offered(&peer).await.is_some()
                    && lock(&self.lists.fetching).insert(peer)
                {
                    continue;
                }
                return;
            };
            lock(&self.lists.last_fetch).insert(peer, tokio::time::Instant::now());
            let ok = match self.live_conn(&peer) {
                Some(conn) => self.fetch_once(&conn, peer, held).await,
                None => false,
            };
            if ok {
                continue;
            }
            // Refused or failed. Try again only if a newer offer came in
            // meanwhile; otherwise wait for the next offer or Hello rather
            // than hammering the peer.
            let now_offered = lock(&self.lists.offered).get(&peer).copied().unwrap_or(0);
            if now_offered > offered {
                continue;
            }
            lock(&self.lists.fetching).remove(&peer);
            return;
        }
    }

    /// `(held, offered)` if the peer has offered a version newer than the one held.
    async fn newer_offered(&self, peer: &PeerId) -> Option<(u64, u64)> {
        let held = match self.store.peer_list_meta(peer).await {
            Ok(m) => m.map_or(0, |m| m.version),
            Err(e) => {
                tracing::error!("{e}");
                return None;
            }
        };
        let offered = lock(&self.lists.offered).get(peer).copied().unwrap_or(0);
        (offered > held).then_some((held, offered))
    }

    /// One fetch; true if a newer list was stored.
    async fn fetch_once(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        peer: PeerId,
        held: u64,
    ) -> bool {
        let name = self.peer_name(&peer).await;
        let transfer = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| FetchError::Io(e.to_string()))?;
            frames::write(&mut send, &Request::FetchList { have: held }).await?;
            let _ = send.finish();
            let header = match read_response(&mut recv).await? {
                Response::ListHeader(h) => h,
                Response::Refused { message } => return Err(FetchError::Nothing(message)),
                other => return Err(FetchError::Unexpected(format!("{other:?}"))),
            };
            let held = (held > 0).then_some(held);
            let now = now_unix().max(0) as u64;
            let mut rx = ListReceiver::start(header, peer, held, now)?;
            let signature = rx.header().signature.clone();
            while !rx.is_complete() {
                match read_response(&mut recv).await? {
                    Response::ListChunk(chunk) => rx.push(chunk)?,
                    other => return Err(FetchError::Unexpected(format!("{other:?}"))),
                }
            }
            Ok((rx.finish()?, signature))
        };
        let result = match tokio::time::timeout(TRANSFER_TIMEOUT, transfer).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Io(format!(
                "transfer not finished within {}s",
                TRANSFER_TIMEOUT.as_secs()
            ))),
        };
        match result {
            Ok((list, signature)) => self.accept_list(peer, &name, list, signature).await,
            Err(FetchError::List(e)) => {
                tracing::warn!(peer = %name, "refused domain list: {e}; the list held before stays in force");
                false
            }
            Err(FetchError::Frame(e)) => {
                match violation(&e) {
                    Some((code, why)) => violated(conn, &name, code, &why),
                    None => tracing::debug!(peer = %name, "list fetch: {e}"),
                }
                false
            }
            Err(FetchError::Unexpected(what)) => {
                violated(
                    conn,
                    &name,
                    close::UNEXPECTED,
                    &format!("answered a list fetch with {what}"),
                );
                false
            }
            Err(FetchError::Nothing(m)) => {
                tracing::debug!(peer = %name, "list fetch: {m}");
                false
            }
            Err(FetchError::Io(e)) => {
                tracing::debug!(peer = %name, "list fetch: {e}");
                false
            }
        }
    }

    async fn peer_name(&self, peer: &PeerId) -> String {
        match self.store.peer(peer).await {
            Ok(Some(p)) => p.name,
            _ => peer.short(),
        }
    }

    /// Judges and stores a verified list, then tells the signer.
    async fn accept_list(
        self: &Arc<Self>,
        peer: PeerId,
        name: &str,
        list: DomainList,
        signature: Vec<u8>,
    ) -> bool {
        let gathered = self.gather(list.entries()).await;
        let judging = self.lists.judging.lock().await;
        let previous = match self.previous_states(&peer).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                return false;
            }
        };
        let held: Vec<HeldEntry> = match self
            .judge_with(&peer, list.entries(), &previous, &gathered)
            .await
        {
            Ok(judged) => judged.into_iter().map(|j| j.held).collect(),
            Err(e) => {
                tracing::error!("{e}");
                return false;
            }
        };
        if let Err(e) = self
            .store
            .store_peer_list(&peer, &list, &signature, &held, now_unix())
            .await
        {
            tracing::error!(peer = %name, "cannot store domain list: {e}");
            return false;
        }
        drop(judging);
        let ack = make_ack(list.version, &held);
        tracing::info!(
            peer = %name,
            version = list.version,
            accepted = ack.accepted,
            refused = ack.refused_count,
            pending = ack.pending_count,
            "stored domain list"
        );
        for n in ack.refused.iter().take(20) {
            tracing::info!(peer = %name, domain = %n.domain, "refused: {}", n.reason);
        }
        self.send_ack(peer, ack);
        self.request_apply(format!("list v{} from {name}", list.version));
        true
    }

    async fn previous_states(
        &self,
        peer: &PeerId,
    ) -> Result<HashMap<Entry, (EntryState, Option<String>)>, crate::store::StoreError> {
        Ok(self
            .store
            .peer_entries(peer)
            .await?
            .into_iter()
            .map(|h| (h.entry, (h.state, h.reason)))
            .collect())
    }

    /// Everything judging needs from DNS and Postfix, gathered without
    /// holding the judging lock (this is the slow part).
    async fn gather(&self, entries: &[Entry]) -> Gathered {
        let my_domains = self.my_domain_set().await;
        let local = match &self.relay.postfix {
            Some(p) => {
                let candidates: Vec<Domain> = entries.iter().map(|e| e.domain.clone()).collect();
                p.local_domains(&candidates)
                    .await
                    .map_err(|e| e.to_string())
            }
            None => Ok(HashSet::new()),
        };
        let my_addrs = self
            .lists
            .dns
            .addresses(&self.config.mail_host)
            .await
            .unwrap_or_default();
        let mut facts: HashMap<Domain, DnsFacts> = HashMap::new();
        if self.config.verify_mx != VerifyMx::Off {
            let limit = Arc::new(Semaphore::new(DNS_CONCURRENCY));
            let mut tasks = JoinSet::new();
            for e in entries.iter().filter(|e| !my_domains.contains(&e.domain)) {
                let (dns, e, host, limit) = (
                    self.lists.dns.clone(),
                    e.clone(),
                    self.config.mail_host.clone(),
                    Arc::clone(&limit),
                );
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let d = e.domain.clone();
                    (d, dns_facts(dns, e, host).await)
                });
            }
            while let Some(r) = tasks.join_next().await {
                if let Ok((d, f)) = r {
                    facts.insert(d, f);
                }
            }
        }
        Gathered {
            facts,
            local,
            my_addrs,
        }
    }

    async fn my_domain_set(&self) -> HashSet<Domain> {
        self.lists
            .mine
            .lock()
            .await
            .as_ref()
            .map(|p| p.list.entries().iter().map(|e| e.domain.clone()).collect())
            .unwrap_or_default()
    }

    /// Judges entries; call with the judging lock held, so that "taken by
    /// another peer" and "one of mine" are read at the moment of deciding.
    async fn judge_with(
        &self,
        peer: &PeerId,
        entries: &[Entry],
        previous: &HashMap<Entry, (EntryState, Option<String>)>,
        gathered: &Gathered,
    ) -> Result<Vec<Judged>, crate::store::StoreError> {
        let my_domains = self.my_domain_set().await;
        let taken: HashMap<Domain, String> = self
            .store
            .accepted_elsewhere(peer)
            .await?
            .into_iter()
            .filter_map(|(d, n)| Domain::parse_canonical(&d).ok().map(|d| (d, n)))
            .collect();
        let own = Ownership {
            my_mail_host: &self.config.mail_host,
            my_addrs: &gathered.my_addrs,
            allow_non_public: self.config.allow_non_public_next_hops,
            my_domains: &my_domains,
            local: &gathered.local,
            taken: &taken,
            verify: self.config.verify_mx,
        };
        Ok(entries
            .iter()
            .map(|e| {
                let facts = gathered.facts.get(&e.domain);
                let (state, reason) = judge(e, &own, facts, previous.get(e));
                Judged {
                    held: HeldEntry {
                        entry: e.clone(),
                        state,
                        reason,
                    },
                    conclusive: conclusive(e, &own, facts),
                }
            })
            .collect())
    }

    /// After my own domains changed: a friend's entry for a domain that is now
    /// mine is refused at once (no DNS needed), and Postfix follows.
    async fn revoke_now_mine(self: &Arc<Self>, added: &[Domain]) {
        if added.is_empty() {
            return;
        }
        let added: HashSet<&Domain> = added.iter().collect();
        let Ok(peers) = self.store.peers().await else {
            return;
        };
        for p in peers {
            let judging = self.lists.judging.lock().await;
            let Ok(held) = self.store.peer_entries(&p.id).await else {
                continue;
            };
            let changed: Vec<HeldEntry> = held
                .into_iter()
                .filter(|h| added.contains(&h.entry.domain) && h.state != EntryState::Refused)
                .map(|h| HeldEntry {
                    reason: Some(format!("{} is one of my own domains", h.entry.domain)),
                    state: EntryState::Refused,
                    entry: h.entry,
                })
                .collect();
            if changed.is_empty() {
                continue;
            }
            if let Err(e) = self
                .store
                .update_entry_states(&p.id, &changed, now_unix())
                .await
            {
                tracing::error!("{e}");
                continue;
            }
            drop(judging);
            for c in &changed {
                tracing::info!(peer = %p.name, domain = %c.entry.domain, "refused now: it is one of my own domains");
            }
            self.resend_ack(p.id).await;
            self.request_apply(format!(
                "{} became one of my domains",
                changed[0].entry.domain
            ));
        }
    }

    /// Sends the current acknowledgement of `peer`'s list, if connected.
    pub(crate) fn send_ack(self: &Arc<Self>, peer: PeerId, ack: ListAck) {
        let Some(conn) = self.live_conn(&peer) else {
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = crate::session::request(&conn, &Request::ListAck(ack)).await {
                tracing::debug!(peer = %peer.short(), "list ack: {e}");
            }
        });
    }

    /// Sends the acknowledgement of what is held for `peer` (after a reconnect).
    pub(crate) async fn resend_ack(self: &Arc<Self>, peer: PeerId) {
        let Ok(Some(meta)) = self.store.peer_list_meta(&peer).await else {
            return;
        };
        match self.store.peer_entries(&peer).await {
            Ok(held) => self.send_ack(peer, make_ack(meta.version, &held)),
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// Stores what a peer made of my list.
    pub(crate) async fn receive_ack(
        self: &Arc<Self>,
        peer: PeerId,
        name: &str,
        ack: ListAck,
    ) -> Response {
        let mine = self.my_list_version().await;
        if ack.version > mine && ack.version - mine <= MAX_VERSION_JUMP {
            // The friend holds a newer version of my list than I do: my
            // database was restored from an older backup. Friends refuse
            // anything not newer than what they hold, so sign past it.
            tracing::warn!(
                peer = %name,
                theirs = ack.version,
                mine,
                "a friend holds a newer version of my list than I have (database restored?); re-signing past it"
            );
            let message = match self.resign_as(ack.version + 1).await {
                Ok(v) => format!(
                    "you hold my list v{}, which I lost; re-signed as v{v}",
                    ack.version
                ),
                Err(e) => format!("cannot re-sign my list: {e}"),
            };
            return Response::Refused { message };
        }
        if let Err(why) = check_ack(&ack, mine) {
            tracing::warn!(peer = %name, "ignored list acknowledgement: {why}");
            return Response::Refused { message: why };
        }
        if let Err(e) = self.store.store_ack(&peer, &ack, now_unix()).await {
            tracing::error!("{e}");
            return Response::Refused {
                message: "internal error".into(),
            };
        }
        tracing::info!(
            peer = %name,
            version = ack.version,
            accepted = ack.accepted,
            refused = ack.refused_count,
            pending = ack.pending_count,
            "peer acknowledged my domain list"
        );
        Response::Done
    }

    /// Re-judges refused and pending entries, and accepted ones due for
    /// re-verification, every `recheck_interval`.
    pub(crate) async fn recheck_loop(self: Arc<Self>) {
        let every = self.config.recheck_interval.0;
        loop {
            tokio::time::sleep(every).await;
            let peers = match self.store.peers().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("recheck: {e}");
                    continue;
                }
            };
            for p in peers {
                self.recheck(p.id, &p.name).await;
            }
        }
    }

    async fn recheck(self: &Arc<Self>, peer: PeerId, name: &str) {
        // Refused and pending entries, and accepted ones not checked for
        // `reverify_interval`: a friend that stays offline (and so never
        // republishes) keeps relay only for domains whose MX still names it.
        let reverify_before = now_unix()
            - self
                .config
                .reverify_interval
                .0
                .as_secs()
                .min(i64::MAX as u64) as i64;
        let open: Vec<Entry> = match self.store.entries_due(&peer, reverify_before).await {
            Ok(held) => held.into_iter().map(|h| h.entry).collect(),
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        if open.is_empty() {
            return;
        }
        let open = {
            let mut from = lock(&self.lists.recheck_from);
            let after = from.remove(&peer);
            let (batch, last) = take_in_turn(open, after.as_deref(), RECHECK_BUDGET, |e| {
                e.domain.as_str()
            });
            if let Some(last) = last {
                from.insert(peer, last);
            }
            batch
        };
        // DNS first, without the lock; then decide against the state as it
        // is under the lock. A newer list stored meanwhile was judged with
        // fresher DNS than this round's: leave it be.
        let version_before = match self.store.peer_list_meta(&peer).await {
            Ok(Some(meta)) => meta.version,
            _ => return,
        };
        let gathered = self.gather(&open).await;
        let judging = self.lists.judging.lock().await;
        let (Ok(Some(meta)), Ok(held)) = (
            self.store.peer_list_meta(&peer).await,
            self.store.peer_entries(&peer).await,
        ) else {
            return;
        };
        if meta.version != version_before {
            return;
        }
        let previous: HashMap<Entry, (EntryState, Option<String>)> = held
            .iter()
            .map(|h| (h.entry.clone(), (h.state, h.reason.clone())))
            .collect();
        let still_held: Vec<Entry> = open
            .into_iter()
            .filter(|e| previous.contains_key(e))
            .collect();
        let judged = match self
            .judge_with(&peer, &still_held, &previous, &gathered)
            .await
        {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        // Entries judged are stored as checked now, changed or not, so an
        // accepted one waits another `reverify_interval`; but not an accepted
        // one kept only because a look-up failed: it comes up again next round.
        let checked: Vec<HeldEntry> = judged
            .iter()
            .filter(|j| j.held.state != EntryState::Accepted || j.conclusive)
            .map(|j| j.held.clone())
            .collect();
        if let Err(e) = self
            .store
            .update_entry_states(&peer, &checked, now_unix())
            .await
        {
            tracing::error!("{e}");
            return;
        }
        let changed: Vec<HeldEntry> = judged
            .into_iter()
            .map(|j| j.held)
            .filter(|j| previous.get(&j.entry) != Some(&(j.state, j.reason.clone())))
            .collect();
        if changed.is_empty() {
            return;
        }
        // What the peer's list now stands at: what was held, with the changes.
        let now_states: HashMap<&Entry, &HeldEntry> =
            changed.iter().map(|c| (&c.entry, c)).collect();
        let all: Vec<HeldEntry> = held
            .iter()
            .map(|h| now_states.get(&h.entry).map_or(h, |c| *c).clone())
            .collect();
        drop(judging);
        for c in &changed {
            tracing::info!(
                peer = %name,
                domain = %c.entry.domain,
                state = c.state.as_str(),
                reason = c.reason.as_deref().unwrap_or(""),
                "re-checked entry changed state"
            );
        }
        self.send_ack(peer, make_ack(meta.version, &all));
        self.request_apply(format!("re-check of {name}'s list"));
    }
}

/// Up to `budget` of `items`, in order of `key`, starting after the key
/// `after` (where the previous turn ended) and going round; and the key of
/// the last one taken, for the next turn (`None` when all fit). Resuming by
/// key, not position, means entries that come or go between turns do not
/// make others skip a turn.
fn take_in_turn<T>(
    mut items: Vec<T>,
    after: Option<&str>,
    budget: usize,
    key: impl Fn(&T) -> &str,
) -> (Vec<T>, Option<String>) {
    if items.len() <= budget {
        return (items, None);
    }
    items.sort_by(|a, b| key(a).cmp(key(b)));
    let start = after.map_or(0, |after| items.partition_point(|t| key(t) <= after));
    let start = if start == items.len() { 0 } else { start };
    items.rotate_left(start);
    items.truncate(budget);
    let last = items.last().map(|t| key(t).to_string());
    (items, last)
}

/// Why a fetch ended without a new list.
enum FetchError {
    Io(String),
    Frame(FrameError),
    List(ListError),
    Nothing(String),
    Unexpected(String),
}

impl From<FrameError> for FetchError {
    fn from(e: FrameError) -> Self {
        FetchError::Frame(e)
    }
}

impl From<ListError> for FetchError {
    fn from(e: ListError) -> Self {
        FetchError::List(e)
    }
}

async fn read_response(recv: &mut quinn::RecvStream) -> Result<Response, FetchError> {
    match tokio::time::timeout(FRAME_TIMEOUT, frames::read::<Response, _>(recv)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(FetchError::Io(format!(
            "no data within {}s",
            FRAME_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rechecks_take_a_budget_in_turn_and_cover_everything() {
        let turn = |items: &[&'static str], after: Option<&str>, budget| {
            take_in_turn(items.to_vec(), after, budget, |s| s)
        };
        let items = ["d", "a", "c", "b", "e", "f", "g"];
        assert_eq!(
            turn(&items, Some("c"), 7),
            (items.to_vec(), None),
            "all fit"
        );
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..3 {
            let (batch, last) = turn(&items, after.as_deref(), 3);
            assert_eq!(batch.len(), 3);
            seen.extend(batch);
            after = last;
        }
        assert_eq!(
            seen,
            ["a", "b", "c", "d", "e", "f", "g", "a", "b"],
            "in order, wrapping round"
        );
        // Entries that went away (c was accepted) or came (ca) since the last
        // turn do not make others skip theirs: the next turn starts after "c".
        assert_eq!(
            turn(&["a", "b", "ca", "d", "e"], Some("c"), 2),
            (vec!["ca", "d"], Some("d".to_string()))
        );
        // Past the end: back to the start.
        assert_eq!(
            turn(&["a", "b", "c"], Some("z"), 2),
            (vec!["a", "b"], Some("b".to_string()))
        );
    }

    fn entry(d: &str, hop: &str) -> Entry {
        Entry {
            domain: Domain::parse(d).unwrap(),
            next_hop: NextHop::parse(hop).unwrap(),
        }
    }

    fn hosts(h: &[&str]) -> DnsFacts {
        DnsFacts {
            mx: MxAnswer::Hosts(h.iter().map(|s| s.to_string()).collect()),
            ip_listed: Ok(false),
            hop_addrs: Ok(vec!["192.0.2.9".parse().unwrap()]),
        }
    }

    const MY_ADDRS: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1))];

    #[test]
    fn mail_never_goes_back_to_me_or_to_a_non_public_address() {
        let w = World::new();
        let f = hosts(&["mail.me.example", "mail.friend.example"]);
        for verify in [VerifyMx::Require, VerifyMx::Off] {
            let (s, r) = judge(
                &entry("friend.example", "mail.me.example"),
                &w.own(verify),
                Some(&f),
                None,
            );
            assert_eq!(s, EntryState::Refused, "{verify:?}");
            assert!(r.unwrap().contains("this server"));
            for ip in [
                "127.0.0.1",
                "10.1.2.3",
                "192.168.1.1",
                "169.254.0.1",
                "0.0.0.0",
                "::1",
                "fd00::1",
                "fe80::1",
                "192.0.2.1",
            ] {
                let hop = format!("[{ip}]:10025");
                let (s, r) = judge(
                    &entry("friend.example", &hop),
                    &w.own(verify),
                    Some(&f),
                    None,
                );
                assert_eq!(s, EntryState::Refused, "{hop} {verify:?}");
                assert!(r.unwrap().contains(ip), "{hop}");
            }
        }
        // A host name that resolves to a forbidden address is refused too.
        for ip in ["127.0.0.1", "10.0.0.7", "192.0.2.1"] {
            let mut facts = hosts(&["mail.me.example", "mail.friend.example"]);
            facts.hop_addrs = Ok(vec![ip.parse().unwrap()]);
            let (s, r) = judge(
                &entry("friend.example", "mail.friend.example"),
                &w.own(VerifyMx::Require),
                Some(&facts),
                None,
            );
            assert_eq!(s, EntryState::Refused, "{ip}");
            assert!(r.unwrap().contains(&format!("resolves to {ip}")));
        }
    }

    struct World {
        mine: HashSet<Domain>,
        taken: HashMap<Domain, String>,
        local: Result<HashSet<Domain>, String>,
    }

    impl World {
        fn new() -> Self {
            let mut taken = HashMap::new();
            taken.insert(Domain::parse("taken.example").unwrap(), "carol".to_string());
            Self {
                mine: [Domain::parse("me.example").unwrap()].into(),
                taken,
                local: Ok([Domain::parse("local.example").unwrap()].into()),
            }
        }
        fn own(&self, verify: VerifyMx) -> Ownership<'_> {
            Ownership {
                my_mail_host: "mail.me.example",
                my_addrs: MY_ADDRS,
                allow_non_public: false,
                my_domains: &self.mine,
                local: &self.local,
                taken: &self.taken,
                verify,
            }
        }
    }

    #[test]
    fn accepted_when_mx_lists_me_and_the_next_hop() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let f = hosts(&["mail.friend.example", "mail.me.example"]);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None),
            (EntryState::Accepted, None)
        );
    }

    #[test]
    fn refused_with_a_reason_naming_what_is_missing() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let (s, r) = judge(
            &e,
            &w.own(VerifyMx::Require),
            Some(&hosts(&["mail.friend.example"])),
            None,
        );
        assert_eq!(s, EntryState::Refused);
        assert_eq!(
            r.unwrap(),
            "MX of friend.example does not list mail.me.example"
        );
        let (s, r) = judge(
            &e,
            &w.own(VerifyMx::Require),
            Some(&hosts(&["mail.me.example"])),
            None,
        );
        assert_eq!(s, EntryState::Refused);
        assert_eq!(
            r.unwrap(),
            "MX of friend.example does not list its next hop mail.friend.example"
        );
        let nomx = DnsFacts {
            mx: MxAnswer::NoMx,
            ip_listed: Ok(false),
            hop_addrs: Ok(vec!["192.0.2.9".parse().unwrap()]),
        };
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&nomx), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("no MX records"));
    }

    #[test]
    fn warn_accepts_but_says_why_and_off_skips_dns() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let (s, r) = judge(
            &e,
            &w.own(VerifyMx::Warn),
            Some(&hosts(&["x.example"])),
            None,
        );
        assert_eq!(s, EntryState::Accepted);
        assert!(r.unwrap().starts_with("warning: "));
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Off), None, None),
            (EntryState::Accepted, None)
        );
    }

    #[test]
    fn my_own_and_other_peers_domains_are_refused_whatever_dns_says() {
        let w = World::new();
        let f = hosts(&["mail.me.example", "mail.friend.example"]);
        for verify in [VerifyMx::Require, VerifyMx::Warn, VerifyMx::Off] {
            let (s, r) = judge(
                &entry("me.example", "mail.friend.example"),
                &w.own(verify),
                Some(&f),
                None,
            );
            assert_eq!(s, EntryState::Refused);
            assert!(r.unwrap().contains("one of my own"));
            let (s, r) = judge(
                &entry("taken.example", "mail.friend.example"),
                &w.own(verify),
                Some(&f),
                None,
            );
            assert_eq!(s, EntryState::Refused);
            assert!(r.unwrap().contains("another peer"));
        }
    }

    #[test]
    fn domains_this_postfix_delivers_are_refused_as_local() {
        let mut w = World::new();
        let f = hosts(&["mail.me.example", "mail.friend.example"]);
        let (s, r) = judge(
            &entry("local.example", "mail.friend.example"),
            &w.own(VerifyMx::Off),
            Some(&f),
            None,
        );
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().starts_with("local domain"));
        // Postfix unreadable: pending, but an accepted entry stays accepted.
        w.local = Err("postconf failed".into());
        let e = entry("friend.example", "mail.friend.example");
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Pending
        );
        let before = (EntryState::Accepted, None);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), Some(&before)),
            before
        );
    }

    #[test]
    fn dns_failure_is_pending_and_never_revokes() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let fail = DnsFacts {
            mx: MxAnswer::Failed("SERVFAIL".into()),
            ip_listed: Ok(false),
            hop_addrs: Ok(vec!["192.0.2.9".parse().unwrap()]),
        };
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&fail), None);
        assert_eq!(s, EntryState::Pending);
        assert!(r.unwrap().contains("will retry"));
        let before = (EntryState::Accepted, None);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&fail), Some(&before)),
            before
        );
        // A definite answer does change an accepted entry's state.
        let (s, _) = judge(
            &e,
            &w.own(VerifyMx::Require),
            Some(&hosts(&["x.example"])),
            Some(&before),
        );
        assert_eq!(s, EntryState::Refused);
    }

    #[test]
    fn no_answer_never_revokes_and_only_full_checks_count_as_reverified() {
        let w = World::new();
        let e = entry("friend.example", "mail.friend.example");
        let before = (EntryState::Accepted, None);
        // No DNS facts at all (a look-up task that died): kept, not pending.
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), None, Some(&before)),
            before
        );
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), None, None).0,
            EntryState::Pending
        );
        let require = w.own(VerifyMx::Require);
        let good = hosts(&["mail.me.example", "mail.friend.example"]);
        assert!(conclusive(&e, &require, Some(&good)));
        let mut unread = World::new();
        unread.local = Err("postconf failed".into());
        assert!(
            !conclusive(&e, &unread.own(VerifyMx::Require), Some(&good)),
            "local domains unread"
        );
        assert!(!conclusive(&e, &require, None));
        let mut failed = good.clone();
        failed.mx = MxAnswer::Failed("SERVFAIL".into());
        assert!(!conclusive(&e, &require, Some(&failed)));
        let mut no_addr = good.clone();
        no_addr.hop_addrs = Err("timeout".into());
        assert!(!conclusive(&e, &require, Some(&no_addr)));
        let ip = entry("friend.example", "[192.0.2.7]");
        let mut unlisted = good.clone();
        unlisted.ip_listed = Err("timeout".into());
        assert!(!conclusive(&ip, &require, Some(&unlisted)));
        assert!(
            conclusive(&e, &w.own(VerifyMx::Off), None),
            "nothing to look up"
        );
    }

    #[test]
    fn ip_next_hops_need_an_mx_host_with_that_address() {
        let w = World::new();
        let e = entry("friend.example", "[192.0.2.7]");
        let mut f = hosts(&["mail.me.example", "mail.friend.example"]);
        f.ip_listed = Ok(true);
        assert_eq!(
            judge(&e, &w.own(VerifyMx::Require), Some(&f), None).0,
            EntryState::Accepted
        );
        f.ip_listed = Ok(false);
        let (s, r) = judge(&e, &w.own(VerifyMx::Require), Some(&f), None);
        assert_eq!(s, EntryState::Refused);
        assert!(r.unwrap().contains("192.0.2.7"));
    }

    #[test]
    fn my_list_is_refreshed_daily_long_before_it_expires() {
        let id = PeerId::from_public_key([1; 32]);
        let day = REFRESH_AFTER.as_secs();
        let list = DomainList::new(id, 1, 1_000, 1_000 + LIST_LIFETIME.as_secs(), vec![]);
        assert!(!needs_refresh(&list, 1_000));
        assert!(!needs_refresh(&list, 1_000 + day - 1));
        assert!(needs_refresh(&list, 1_000 + day));
        assert!(
            LIST_LIFETIME.as_secs() >= 7 * day,
            "a week of margin at least"
        );
    }

    #[test]
    fn acks_count_everything_and_cap_notes() {
        let mut held = Vec::new();
        for i in 0..1500 {
            held.push(HeldEntry {
                entry: entry(&format!("r{i}.example"), "mail.x.example"),
                state: EntryState::Refused,
                reason: Some("x".repeat(400)),
            });
        }
        held.push(HeldEntry {
            entry: entry("a.example", "mail.x.example"),
            state: EntryState::Accepted,
            reason: None,
        });
        let ack = make_ack(7, &held);
        assert_eq!(
            (ack.accepted, ack.refused_count, ack.pending_count),
            (1, 1500, 0)
        );
        assert_eq!(ack.refused.len(), MAX_ACK_NOTES);
        assert!(ack.refused.iter().all(|n| n.reason.len() <= MAX_REASON));
        assert!(check_ack(&ack, 7).is_ok());
        assert!(
            check_ack(&ack, 6).is_err(),
            "cannot acknowledge a version I never made"
        );
        let mut bad = ack.clone();
        bad.refused[0].domain = "evil.example\nOK".into();
        assert!(check_ack(&bad, 7).is_err());
    }
}
