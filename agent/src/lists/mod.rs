//! [`Lists`]: signed domain lists, both ways.
//!
//! *Mine* (`mine`): `mxfed domains add/remove` changes the set, which is
//! re-signed with a new version, stored, and offered at once to every
//! connected peer. It is re-signed daily so it never expires while this
//! agent runs ([`Lists::run_refresh`]).
//!
//! *Theirs*: on a peer coming up ([`PeerEvent::Up`]) or a `ListOffer`
//! announcing a version newer than the one held, the list is fetched
//! (`fetch`) and checked by [`mxfed_proto::list::ListReceiver`] before
//! anything is stored. Its new entries (and entries with a new next hop)
//! are then judged (`judge`, with the facts from `facts`); unchanged ones
//! keep their verdicts until their re-check, and the store writes only the
//! difference. An entry is refused if it is one of my domains or a local
//! one, if its next hop's port or addresses are not allowed, without proof
//! that the peer speaks for the domain (`proof`), if another peer holds it
//! with proof, and — with `verify_mx = "require"` — unless its MX records
//! name both my mail host and the entry's next hop. A DNS failure makes an
//! entry pending, never revokes an accepted one, and is retried every
//! `recheck_interval` ([`Lists::run_recheck`]); accepted entries are
//! checked again once `reverify_interval` has passed, so relay ends for a
//! domain whose MX or proof fails even if the friend stays offline. The
//! outcome goes back to the signer as a [`ListAck`] (`ack`), and every
//! change of the accepted set asks [`Relay`] for an apply.
//!
//! Peers are reached only through [`Peers`]; requests from them arrive
//! through the wiring in `services`.

mod ack;
mod changelog;

pub(crate) use changelog::ChangeLog;
mod facts;
mod fetch;
mod judge;
mod mine;
mod proof;
mod special;
mod turn;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use mxfed_proto::control::{
    DomainReason, DomainsChanged, EntryState, MyDomains, MyListAtPeer, PeerDomain,
};
use mxfed_proto::domain::{Domain, Host, NextHop};
use mxfed_proto::list::{change_chunks, ChangesHeader, DomainList, Entry};
use mxfed_proto::msg::{understand_changes, EntryNote, ListAck, Request, Response};
use mxfed_proto::PeerId;

use crate::clock::{rfc3339, Clock};
use crate::config::Shared;
use crate::dns::Dns;
use crate::identity::Identity;
use crate::peer::{Caller, PeerEvent, Peers, Responder};
use crate::postfix::Postfix;
use crate::relay::Relay;
use crate::store::{HeldEntry, ListChange, ListHead, Store, StoreError};
use crate::util::lock;

use ack::{check_ack, make_ack};
use facts::Gathered;
use fetch::{Fetched, Received, SERVE_GAP};
use judge::{conclusive, judge, Ownership};
use mine::Mine;

/// How far a friend's acknowledgement may move my list version forward
/// (after a restore from backup): far more versions than a backup can be
/// behind, far fewer than a hostile friend would like.
const MAX_VERSION_JUMP: u64 = 100_000;
/// Least time between two re-signs asked for by friends' acknowledgements,
/// so that no friend can make me re-sign (and every other friend re-fetch
/// my list) at its own pace.
const RESIGN_GAP: Duration = Duration::from_secs(600);
/// Entries of a new list judged and stored together (see `accept_list`):
/// a batch's DNS facts and verdicts are about 700 bytes an entry.
const JUDGE_BATCH: usize = 5_000;

/// A verified list being judged: its fresh entries (those not held as
/// they are) and what is stored as signed with its last batch.
enum Judging {
    /// Received whole; `fresh` indexes its entries. Encoded as signed only
    /// when it is stored, not kept beside it while all are judged.
    Whole { list: DomainList, fresh: Vec<u32> },
    /// Received as changes: already encoded, as the changes were applied;
    /// `fresh` are the entries they put in.
    Changes { head: ListHead, fresh: Vec<Entry> },
}

impl Judging {
    fn version(&self) -> u64 {
        match self {
            Self::Whole { list, .. } => list.version,
            Self::Changes { head, .. } => head.version,
        }
    }

    fn fresh_len(&self) -> usize {
        match self {
            Self::Whole { fresh, .. } => fresh.len(),
            Self::Changes { fresh, .. } => fresh.len(),
        }
    }

    /// The fresh entries in `range` (names shared, not copied).
    fn batch(&self, range: std::ops::Range<usize>) -> std::borrow::Cow<'_, [Entry]> {
        match self {
            Self::Whole { list, fresh } => fresh[range]
                .iter()
                .map(|&i| list.entries()[i as usize].clone())
                .collect(),
            Self::Changes { fresh, .. } => std::borrow::Cow::Borrowed(&fresh[range]),
        }
    }

    /// The list as signed, as the store keeps it.
    fn head(&self) -> std::borrow::Cow<'_, ListHead> {
        match self {
            Self::Whole { list, .. } => std::borrow::Cow::Owned(ListHead::from(list)),
            Self::Changes { head, .. } => std::borrow::Cow::Borrowed(head),
        }
    }
}
/// Least time between two fetches of one peer's list.
const MIN_FETCH_GAP: Duration = Duration::from_secs(1);
/// How often to look whether my list is due for re-signing.
const REFRESH_CHECK: Duration = Duration::from_secs(3600);
/// Entries re-checked per peer per `recheck_interval` (refused, pending, and
/// accepted ones due for re-verification); a peer with more has them
/// re-checked in turn, so what DNS load a peer's list can cause does not
/// grow with its length.
pub const RECHECK_BUDGET: usize = 1000;

/// A peer's list as `status` shows it: version, expiry, entries, and what
/// the peer holds of my list.
pub(crate) type ListStatus = (Option<u64>, Option<String>, Vec<PeerDomain>, MyListAtPeer);

/// The lists service's handle; cheap to clone.
#[derive(Clone)]
pub(crate) struct Lists {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Shared>,
    store: Store,
    dns: Dns,
    /// For Postfix's local domains; `None`: integration off.
    postfix: Option<Postfix>,
    peers: Peers,
    relay: Relay,
    clock: Clock,
    mine: Mine,
    /// The newest version each peer has announced.
    offered: Mutex<HashMap<PeerId, u64>>,
    /// Peers whose list is being fetched now.
    fetching: Mutex<HashSet<PeerId>>,
    /// Serialises judging, so two peers cannot both claim a domain at once.
    judging: tokio::sync::Mutex<()>,
    /// When each peer's list was last fetched (see [`MIN_FETCH_GAP`]).
    last_fetch: Mutex<HashMap<PeerId, tokio::time::Instant>>,
    /// The last domain of each peer's previous re-check round; the next
    /// round starts after it.
    recheck_from: Mutex<HashMap<PeerId, String>>,
    /// The acknowledgement last sent to each peer, re-sent as it is when
    /// the peer comes back (a Hello costs no reading of its whole list).
    acks: Mutex<HashMap<PeerId, ListAck>>,
    /// When a friend's acknowledgement last made me re-sign (see [`RESIGN_GAP`]).
    last_resign: Mutex<Option<tokio::time::Instant>>,
    /// Friends an offer is being sent to, and the newest version to offer.
    offering: Mutex<HashMap<PeerId, u64>>,
    /// The version of my list last sent to each friend, and when, for
    /// `FetchChanges` (true) and `FetchList` (false).
    served: Mutex<HashMap<(PeerId, bool), (u64, tokio::time::Instant)>>,
}

/// One entry as judged, and whether that judgement was [`conclusive`].
struct Judged {
    held: HeldEntry,
    conclusive: bool,
}

/// What one fetch came to, for the fetch loop.
enum Fetch {
    /// A newer list was stored.
    Stored,
    /// Ask again after this.
    Later(Duration),
    /// Refused or failed: wait for the next offer.
    Failed,
}

/// What judging a batch of entries decided.
#[derive(Default)]
struct Verdicts {
    judged: Vec<Judged>,
    /// Domains other peers held without proof, now taken by a proven claim.
    taken_over: Vec<(PeerId, Domain)>,
}

impl Lists {
    /// Loads my list from the store; the service is ready to run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn new(
        config: Arc<Shared>,
        identity: Arc<Identity>,
        store: Store,
        dns: Dns,
        postfix: Option<Postfix>,
        peers: Peers,
        relay: Relay,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let mine = Mine::load(identity, store.clone(), clock.clone()).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                dns,
                postfix,
                peers,
                relay,
                clock,
                mine,
                offered: Mutex::default(),
                fetching: Mutex::default(),
                judging: tokio::sync::Mutex::new(()),
                last_fetch: Mutex::default(),
                recheck_from: Mutex::default(),
                acks: Mutex::default(),
                last_resign: Mutex::default(),
                served: Mutex::default(),
                offering: Mutex::default(),
            }),
        })
    }

    // ----- mine -----------------------------------------------------------

    /// Follows the version of my list (for the sessions' Hello).
    pub(crate) fn version_watch(&self) -> watch::Receiver<u64> {
        self.inner.mine.version_watch()
    }

    /// The version of my list (0: none).
    pub(crate) fn my_list_version(&self) -> u64 {
        self.inner.mine.version()
    }

    /// `mxfed domains list`.
    pub(crate) async fn my_domains(&self) -> MyDomains {
        self.inner.mine.view().await
    }

    /// My domains, sorted.
    pub(crate) async fn my_domain_names(&self) -> Vec<Domain> {
        self.inner.mine.domain_names().await
    }

    /// Adds (or re-targets) and removes my domains; re-signs and offers the
    /// list if anything changed. All input is checked before anything changes.
    /// The names are taken, and each freed as it is parsed.
    pub(crate) async fn change_my_domains(
        &self,
        add: Vec<String>,
        next_hop: Option<&str>,
        remove: Vec<String>,
    ) -> Result<DomainsChanged, String> {
        let hop = match next_hop {
            Some(h) => NextHop::parse(h).map_err(|e| format!("invalid next hop: {e}"))?,
            None => NextHop::host_name(
                Domain::parse(&self.inner.config.get().mail_host)
                    .map_err(|e| format!("mail_host: {e}"))?,
            ),
        };
        let add: Vec<Entry> = add
            .into_iter()
            .map(|d| {
                Domain::parse(&d)
                    .map(|domain| Entry {
                        domain,
                        next_hop: hop.clone(),
                    })
                    .map_err(|e| format!("invalid domain: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let remove: Vec<Domain> = remove
            .into_iter()
            .map(|d| Domain::parse(&d).map_err(|e| format!("invalid domain: {e}")))
            .collect::<Result<_, _>>()?;
        let changed = self.inner.mine.change(add, remove).await?;
        if let Some(version) = changed.signed {
            self.offer_to_all(version);
            self.revoke_now_mine(&changed.added).await;
        }
        Ok(changed.summary)
    }

    /// Re-signs my list once a day (checked hourly), until `cancel`.
    pub(crate) async fn run_refresh(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH_CHECK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            match self.inner.mine.refresh_if_due().await {
                Ok(None) => {}
                Ok(Some(version)) => {
                    tracing::info!(version, "re-signed my domain list before it expires");
                    self.offer_to_all(version);
                }
                Err(e) => tracing::error!("cannot re-sign my domain list: {e}"),
            }
        }
    }

    /// Offers `version` to every connected friend: one offer in flight per
    /// friend, and versions signed meanwhile go as one offer of the newest,
    /// so a burst of `domains add` costs each friend a few requests, not one
    /// per version (which could exceed its per-peer budget).
    fn offer_to_all(&self, version: u64) {
        for id in self.inner.peers.connected() {
            let start = {
                let mut sending = lock(&self.inner.offering);
                match sending.get_mut(&id) {
                    Some(newest) => {
                        *newest = (*newest).max(version);
                        false
                    }
                    None => {
                        sending.insert(id, version);
                        true
                    }
                }
            };
            if start {
                tokio::spawn(self.clone().offer_loop(id));
            }
        }
    }

    /// Sends `peer` the newest version to offer until no newer one waits.
    async fn offer_loop(self, peer: PeerId) {
        let mut sent = 0;
        loop {
            let version = {
                let mut sending = lock(&self.inner.offering);
                match sending.get(&peer).copied() {
                    Some(v) if v > sent => v,
                    _ => {
                        sending.remove(&peer);
                        return;
                    }
                }
            };
            if let Err(e) = self
                .inner
                .peers
                .send(&peer, &Request::ListOffer { version })
                .await
            {
                tracing::debug!(peer = %peer.short(), "list offer: {e}");
            }
            sent = version;
        }
    }

    /// Answers `FetchList` (`changes` false) and `FetchChanges` (true):
    /// the changes since `have` if asked and known, else the whole list,
    /// or a refusal. A friend gets each version of my list once per
    /// [`SERVE_GAP`] for each of the two requests: asking for the same one
    /// again at once (a friend that lost it, or one that wants to make me
    /// send my whole list in a loop) waits out the gap, checked before any
    /// work. A whole list after changes is no repeat: it is what a friend
    /// asks for whose changes did not apply.
    pub(crate) async fn serve_fetch(
        &self,
        from: &Caller,
        have: u64,
        changes: bool,
        reply: &mut Responder,
    ) {
        let refuse = |message: String| Response::Refused { message };
        let version = self.inner.mine.version();
        let key = (from.id, changes);
        let too_soon = version > have && {
            let mut served = lock(&self.inner.served);
            let now = tokio::time::Instant::now();
            let soon = served
                .get(&key)
                .is_some_and(|(v, at)| *v == version && now.duration_since(*at) < SERVE_GAP);
            if !soon {
                served.insert(key, (version, now));
            }
            soon
        };
        if too_soon {
            tracing::debug!(peer = %from.name, version, "list fetch refused: sent this version moments ago");
            if let Err(e) = reply.send(&refuse(fetch::too_soon(version))).await {
                tracing::debug!("list transfer: {e}");
            }
            return;
        }
        let found = match changes {
            true => self.inner.mine.current_and_changes(have).await,
            false => self.inner.mine.current().await.map(|p| (p, None)),
        };
        let sent = match found {
            Some((p, Some(diff))) if p.list.version > have => {
                tracing::debug!(peer = %from.name, version = p.list.version, have, changes = diff.len(), "sending the changes to my list");
                let header = ChangesHeader {
                    list: p.list.header(p.signature.clone()),
                    base: have,
                    changes: diff.len() as u32,
                };
                let chunks = change_chunks(&diff).map(Response::ListChanges);
                reply
                    .send_all(Response::ChangesHeader(header), chunks)
                    .await
            }
            Some((p, None)) if p.list.version > have => {
                let header = Response::ListHeader(p.list.header(p.signature.clone()));
                reply
                    .send_all(header, p.list.chunks().map(Response::ListChunk))
                    .await
            }
            _ => reply.send(&refuse("no newer list".into())).await,
        };
        if let Err(e) = sent {
            // Not received: a retry is no repeat.
            lock(&self.inner.served).remove(&key);
            tracing::debug!("list transfer: {e}");
        }
    }

    /// Stores what a peer made of my list.
    pub(crate) async fn receive_ack(&self, from: &Caller, ack: ListAck) -> Response {
        let name = &from.name;
        let mine = self.inner.mine.version();
        if ack.version > mine && ack.version - mine <= MAX_VERSION_JUMP {
            // The friend holds a newer version of my list than I do: my
            // database was restored from an older backup. Friends refuse
            // anything not newer than what they hold, so sign past it.
            let recent = {
                let mut last = lock(&self.inner.last_resign);
                let now = tokio::time::Instant::now();
                let recent = last.is_some_and(|at| now.duration_since(at) < RESIGN_GAP);
                if !recent {
                    *last = Some(now);
                }
                recent
            };
            if recent {
                tracing::debug!(peer = %name, theirs = ack.version, mine, "acknowledgement of a newer version of my list ignored: re-signed recently");
                return Response::Refused {
                    message: format!(
                        "re-signed at a friend's word less than {}s ago; not again yet",
                        RESIGN_GAP.as_secs()
                    ),
                };
            }
            tracing::warn!(
                peer = %name,
                theirs = ack.version,
                mine,
                "a friend holds a newer version of my list than I have (database restored?); re-signing past it"
            );
            let message = match self.inner.mine.resign_as(ack.version + 1).await {
                Ok((v, signed)) => {
                    if signed {
                        self.offer_to_all(v);
                    }
                    format!(
                        "you hold my list v{}, which I lost; re-signed as v{v}",
                        ack.version
                    )
                }
                Err(e) => format!("cannot re-sign my list: {e}"),
            };
            return Response::Refused { message };
        }
        if let Err(why) = check_ack(&ack, mine) {
            tracing::warn!(peer = %name, "ignored list acknowledgement: {why}");
            return Response::Refused { message: why };
        }
        let now = self.inner.clock.now_unix();
        if let Err(e) = self.inner.store.store_ack(&from.id, &ack, now).await {
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

    // ----- theirs ---------------------------------------------------------

    /// Follows peers: one that comes up has its list fetched if newer and
    /// hears what I hold of it; one that is unpaired is forgotten.
    /// Subscribes at once (so no event after this call is missed); the
    /// returned task handles them until `cancel`.
    pub(crate) fn follow_peers(
        self,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut events = self.inner.peers.subscribe();
        async move {
            while let Some(event) = events.next(&cancel).await {
                match event {
                    PeerEvent::Up {
                        peer,
                        name,
                        list_version,
                    } => {
                        // Fetch their list if they have a newer one; tell them what
                        // we hold of theirs, which they may have missed while apart.
                        self.offered(peer, list_version);
                        // Its mail host may have moved (the friends map);
                        // an apply that changes nothing writes nothing.
                        self.inner.relay.request_apply(format!("{name} connected"));
                        let me = self.clone();
                        tokio::spawn(async move { me.resend_ack(peer).await });
                    }
                    PeerEvent::Removed {
                        peer,
                        name,
                        was_paired,
                    } => {
                        self.forget(&peer);
                        if was_paired {
                            self.inner.relay.request_apply(format!("unpaired {name}"));
                        }
                    }
                }
            }
        }
    }

    fn forget(&self, peer: &PeerId) {
        let inner = &*self.inner;
        lock(&inner.served).retain(|(p, _), _| p != peer);
        lock(&inner.acks).remove(peer);
        lock(&inner.offered).remove(peer);
        lock(&inner.recheck_from).remove(peer);
        lock(&inner.last_fetch).remove(peer);
    }

    /// Notes that `peer` has list `version`, and fetches it if newer than held.
    pub(crate) fn offered(&self, peer: PeerId, version: u64) {
        {
            let mut offered = lock(&self.inner.offered);
            let v = offered.entry(peer).or_insert(0);
            *v = (*v).max(version);
        }
        if version > 0 {
            tokio::spawn(self.clone().fetch_loop(peer));
        }
    }

    async fn fetch_loop(self, peer: PeerId) {
        let inner = &*self.inner;
        if !lock(&inner.fetching).insert(peer) {
            return; // a fetch is running; it looks at the offered version when done
        }
        loop {
            // However fast a peer offers versions (and whether or not its
            // lists turn out good), it is fetched, and its new entries looked
            // up in DNS, at most once per MIN_FETCH_GAP; versions offered in
            // between are skipped, only the newest counts.
            let last = lock(&inner.last_fetch).get(&peer).copied();
            if let Some(at) = last {
                tokio::time::sleep_until(at + MIN_FETCH_GAP).await;
            }
            let Some((held, offered)) = self.newer_offered(&peer).await else {
                lock(&inner.fetching).remove(&peer);
                // An offer that arrived after the check above but before the
                // removal saw a fetch running and returned: look once more.
                if self.newer_offered(&peer).await.is_some() && lock(&inner.fetching).insert(peer) {
                    continue;
                }
                return;
            };
            lock(&inner.last_fetch).insert(peer, tokio::time::Instant::now());
            let fetched = match inner.peers.is_connected(&peer) {
                true => self.fetch_once(peer, held).await,
                false => Fetch::Failed,
            };
            match fetched {
                Fetch::Stored => continue,
                Fetch::Later(wait) => {
                    // It sent this version moments ago (to us, and we lost
                    // it): ask again once the gap is over.
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Fetch::Failed => {}
            }
            // Refused or failed. Try again only if a newer offer came in
            // meanwhile; otherwise wait for the next offer or Hello rather
            // than hammering the peer.
            let now_offered = lock(&inner.offered).get(&peer).copied().unwrap_or(0);
            if now_offered > offered {
                continue;
            }
            lock(&inner.fetching).remove(&peer);
            return;
        }
    }

    /// `(held, offered)` if the peer has offered a version newer than the one held.
    async fn newer_offered(&self, peer: &PeerId) -> Option<(u64, u64)> {
        let held = match self.inner.store.peer_list_meta(peer).await {
            Ok(m) => m.map_or(0, |m| m.version),
            Err(e) => {
                tracing::error!("{e}");
                return None;
            }
        };
        let offered = lock(&self.inner.offered).get(peer).copied().unwrap_or(0);
        (offered > held).then_some((held, offered))
    }

    /// One fetch.
    async fn fetch_once(&self, peer: PeerId, held: u64) -> Fetch {
        let name = self.peer_name(&peer).await;
        let now = self.inner.clock.now_u64();
        let inner = &*self.inner;
        // Only the changes, from an agent that can send them.
        let changes = inner
            .peers
            .session(&peer)
            .and_then(|s| s.agent_version)
            .is_some_and(|v| understand_changes(&v));
        let started = tokio::time::Instant::now();
        let mut fetched = fetch::fetch(
            &inner.peers,
            &inner.store,
            peer,
            &name,
            (held, changes),
            now,
        )
        .await;
        if let Fetched::Whole = fetched {
            fetched =
                fetch::fetch(&inner.peers, &inner.store, peer, &name, (held, false), now).await;
        }
        tracing::debug!(peer = %name, took_ms = started.elapsed().as_millis() as u64, "list fetch over");
        match fetched {
            Fetched::List(list, signature) => {
                if self.accept_list(peer, &name, list, signature).await {
                    Fetch::Stored
                } else {
                    Fetch::Failed
                }
            }
            Fetched::Later(wait) => Fetch::Later(wait),
            Fetched::Nothing | Fetched::Whole => Fetch::Failed,
        }
    }

    async fn peer_name(&self, peer: &PeerId) -> String {
        match self.inner.store.peer(peer).await {
            Ok(Some(p)) => p.name,
            _ => peer.short(),
        }
    }

    /// Judges and stores a verified list, then tells the signer. Only what
    /// changed from the list held (new domains, new next hops) is looked up
    /// and judged; the other entries keep their verdicts until their
    /// re-check is due. A list received as changes is never compared entry
    /// by entry: its changes are what changed.
    async fn accept_list(
        &self,
        peer: PeerId,
        name: &str,
        received: Received,
        signature: Vec<u8>,
    ) -> bool {
        let inner = &*self.inner;
        let started = tokio::time::Instant::now();
        // Entries not held as they are (new domains, new next hops), and
        // domains no longer listed. Fetches of one peer's list run one at a
        // time and re-checks change only states, so what is held cannot
        // change until the list is stored.
        let (judging_list, removed) = match received {
            Received::Whole(list) => match self.whole_list_changes(&peer, list.entries()).await {
                // The list as signed is encoded for the store with the last
                // batch, not kept beside the fresh entries while all are
                // judged.
                Ok((fresh, removed)) => (Judging::Whole { list, fresh }, removed),
                Err(e) => {
                    tracing::error!("{e}");
                    return false;
                }
            },
            Received::Changes(list) => {
                let mut fresh = Vec::new();
                let mut removed = Vec::new();
                for c in list.changes {
                    match c.next_hop {
                        Some(next_hop) => fresh.push(Entry {
                            domain: c.domain,
                            next_hop,
                        }),
                        None => removed.push(c.domain),
                    }
                }
                let head = ListHead {
                    version: list.version,
                    issued_at: list.issued_at,
                    expires_at: list.expires_at,
                    entries: list.entries,
                };
                (Judging::Changes { head, fresh }, removed)
            }
        };
        let version = judging_list.version();
        // A list held that had expired beyond the grace period was out of
        // the maps whole: this one brings every entry back, not only those
        // that changed.
        let grace = inner.config.get().expired_list_grace.0.as_secs();
        let was_out = match inner.store.peer_list_meta(&peer).await {
            Ok(meta) => {
                meta.is_some_and(|m| m.expires_at.saturating_add(grace) <= inner.clock.now_u64())
            }
            Err(e) => {
                tracing::error!("{e}");
                return false;
            }
        };
        // Judged and stored in batches, so a list of 100,000 never has all
        // its DNS facts and verdicts in memory at once. Each batch is one
        // transaction under the judging lock; the last one stores the
        // list's header with it, so until then the version held is the old
        // one, and the list held as signed is forgotten (a crash in between
        // means the next fetch is of the whole list).
        let mut judged = 0usize;
        let mut touched: Option<Vec<String>> = (!was_out).then(Vec::new);
        let mut note = |domain: &Domain| {
            if let Some(t) = &mut touched {
                match t.len() < crate::relay::MAX_PATCHED_DOMAINS {
                    true => t.push(domain.as_str().to_string()),
                    false => touched = None,
                }
            }
        };
        removed.iter().for_each(&mut note);
        let fresh = judging_list.fresh_len();
        let batches = fresh.div_ceil(JUDGE_BATCH).max(1);
        let mut batch_no = 0;
        // Milliseconds gathering facts, encoding and waiting for the lock,
        // judging, and storing: the debug log's account of a slow list.
        let mut times = [0u64; 4];
        let summary = loop {
            let from = batch_no * JUDGE_BATCH;
            let batch = judging_list.batch(from..fresh.min(from + JUDGE_BATCH));
            let batch = &batch[..];
            batch_no += 1;
            let last = batch_no == batches;
            let step = tokio::time::Instant::now();
            let gathered = self.gather(batch).await;
            times[0] += step.elapsed().as_millis() as u64;
            // Encoded before the lock: 100,000 entries take a while.
            let step = tokio::time::Instant::now();
            let head = last.then(|| judging_list.head());
            let judging = inner.judging.lock().await;
            times[1] += step.elapsed().as_millis() as u64;
            let step = tokio::time::Instant::now();
            // (None of these is held as it is: no earlier verdict to keep.)
            let verdicts = match self
                .judge_with(&peer, batch, &HashMap::new(), &gathered)
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!("{e}");
                    return false;
                }
            };
            drop(gathered);
            let changed: Vec<HeldEntry> = verdicts.judged.into_iter().map(|j| j.held).collect();
            let handed = match self.handed_over(&verdicts.taken_over).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!("{e}");
                    return false;
                }
            };
            let change = ListChange {
                changed: &changed,
                removed: if last { &removed } else { &[] },
                handed: &handed,
            };
            times[2] += step.elapsed().as_millis() as u64;
            let step = tokio::time::Instant::now();
            let now = inner.clock.now_unix();
            let stored = match &head {
                Some(head) => {
                    inner
                        .store
                        .store_peer_list(&peer, head, &signature, change, now)
                        .await
                }
                None => inner.store.store_peer_entries(&peer, change, now).await,
            };
            drop(head);
            if let Err(e) = stored {
                tracing::error!(peer = %name, "cannot store domain list: {e}");
                return false;
            }
            // What the peer's list now stands at, for the acknowledgement.
            let summary = match last {
                true => Some(
                    inner
                        .store
                        .list_summary(&peer, mxfed_proto::msg::MAX_ACK_NOTES)
                        .await,
                ),
                false => None,
            };
            times[3] += step.elapsed().as_millis() as u64;
            drop(judging);
            self.after_hand_over(&handed).await;
            judged += changed.len();
            changed.iter().map(|h| &h.entry.domain).for_each(&mut note);
            handed
                .iter()
                .map(|(_, h)| &h.entry.domain)
                .for_each(&mut note);
            if let Some(summary) = summary {
                break summary;
            }
        };
        let ack = match summary {
            Ok(s) => make_ack(version, &s),
            Err(e) => {
                tracing::error!("{e}");
                return false;
            }
        };
        tracing::info!(
            peer = %name,
            version,
            judged,
            removed = removed.len(),
            accepted = ack.accepted,
            refused = ack.refused_count,
            pending = ack.pending_count,
            took_ms = started.elapsed().as_millis() as u64,
            "stored domain list"
        );
        tracing::debug!(
            peer = %name,
            gather_ms = times[0],
            lock_ms = times[1],
            judge_ms = times[2],
            store_ms = times[3],
            "stored domain list: where the time went"
        );
        for n in ack.refused.iter().take(20) {
            tracing::info!(peer = %name, domain = %n.domain, "refused: {}", n.reason);
        }
        self.send_ack(peer, ack);
        let trigger = format!("list v{version} from {name}");
        match touched {
            None => inner.relay.request_apply(trigger),
            Some(touched) => inner.relay.request_apply_of(trigger, touched),
        }
        true
    }

    /// For a list received whole (its entries, sorted): the indices of
    /// those not held as they are, and the domains held that it no longer
    /// lists. Compared with the entries as stored, not with the list held as
    /// signed: a whole list is what settles a store whose two disagree.
    /// Indices, not copies: a first list of 100,000 is all fresh.
    async fn whole_list_changes(
        &self,
        peer: &PeerId,
        entries: &[Entry],
    ) -> Result<(Vec<u32>, Vec<Domain>), StoreError> {
        let held: HashMap<Domain, NextHop> = self
            .inner
            .store
            .peer_entries(peer)
            .await?
            .into_iter()
            .map(|h| (h.entry.domain, h.entry.next_hop))
            .collect();
        let removed = held
            .keys()
            .filter(|d| entries.binary_search_by(|e| e.domain.cmp(d)).is_err())
            .cloned()
            .collect();
        let fresh = (0..entries.len() as u32)
            .filter(|&i| {
                let e = &entries[i as usize];
                held.get(&e.domain) != Some(&e.next_hop)
            })
            .collect();
        Ok((fresh, removed))
    }

    /// Everything judging needs from DNS and Postfix, gathered without
    /// holding the judging lock (this is the slow part).
    async fn gather(&self, entries: &[Entry]) -> Gathered {
        let inner = &*self.inner;
        let my_domains = inner.mine.domains().await;
        facts::gather(
            &inner.dns,
            inner.postfix.as_ref(),
            &inner.config.get(),
            &my_domains,
            entries,
        )
        .await
    }

    /// Judges entries; call with the judging lock held, so that "taken by
    /// another peer" and "one of mine" are read at the moment of deciding.
    async fn judge_with(
        &self,
        peer: &PeerId,
        entries: &[Entry],
        previous: &HashMap<Entry, HeldEntry>,
        gathered: &Gathered,
    ) -> Result<Verdicts, StoreError> {
        let inner = &*self.inner;
        let config = inner.config.get();
        let my_domains = inner.mine.domains().await;
        let since = inner.clock.now_unix() - crate::store::SEEN_LATELY.as_secs() as i64;
        let seen = inner.store.seen(peer, since).await?;
        // Domains among these that another peer holds, and whether its claim
        // is still proven (an undecided look-up counts as proven).
        let wanted: HashSet<&Domain> = entries.iter().map(|e| &e.domain).collect();
        let mut holders: HashMap<Domain, PeerId> = HashMap::new();
        let mut taken: HashMap<Domain, bool> = HashMap::new();
        let mut seen_of: HashMap<PeerId, Vec<std::net::IpAddr>> = HashMap::new();
        let wanted_list: Vec<&Domain> = wanted.iter().copied().collect();
        for (held, holder, addrs) in inner.store.accepted_elsewhere(peer, &wanted_list).await? {
            let d = held.domain;
            if !wanted.contains(&d) {
                continue;
            }
            let proven = match gathered.facts.get(&d) {
                // Never take a domain away on missing facts.
                None => true,
                Some(f) => {
                    if let std::collections::hash_map::Entry::Vacant(slot) = seen_of.entry(holder) {
                        slot.insert(inner.store.seen(&holder, since).await?);
                    }
                    let holder_seen = seen_of.get(&holder).map_or(&[][..], |v| &v[..]);
                    // The domain's facts, the holder's own next hop. For an
                    // IP next hop the MX hosts' addresses were not looked
                    // up: undecided, so it keeps the domain.
                    let names = match (config.verify_mx, held.next_hop.host()) {
                        (crate::config::VerifyMx::Off, _) => Ok(true),
                        (_, Host::Name(_)) => {
                            judge::mx_names_hop(&held.next_hop, &f.mx, &Ok(false))
                        }
                        (_, Host::Ip(_)) => Err("not looked up".to_string()),
                    };
                    judge::proven(&holder, &addrs, holder_seen, names, &f.txt_ids).unwrap_or(true)
                }
            };
            holders.insert(d.clone(), holder);
            taken.insert(d, proven);
        }
        let own = Ownership {
            my_mail_host: &config.mail_host,
            my_addrs: gathered.myself.as_ref().map_or(&[], |m| &m.0),
            my_listeners: gathered.myself.as_ref().map_or(&[], |m| &m.1),
            my_addrs_unknown: gathered.myself.as_ref().err().map(String::as_str),
            allow_non_public: config.allow_non_public_next_hops,
            allowed_ports: &config.allowed_next_hop_ports,
            my_domains: &my_domains,
            local: &gathered.local,
            taken: &taken,
            verify: config.verify_mx,
            claimant: *peer,
            seen: &seen,
        };
        let mut verdicts = Verdicts::default();
        for e in entries {
            let facts = gathered.facts.get(&e.domain);
            // An entry accepted before addresses were kept (no addresses)
            // that cannot be checked now stays as it was, relayed to its
            // name: a failed look-up never revokes.
            let before = previous.get(e);
            let prev = before.map(|h| (h.state, h.reason.clone()));
            let (state, reason) = judge(e, &own, facts, prev.as_ref());
            let conclusive = conclusive(e, &own, facts);
            // Relay goes to the addresses this judgement checked; an entry
            // kept accepted by an incomplete one keeps those it had.
            let addrs = match (state, conclusive) {
                (EntryState::Accepted, true) => judge::hop_addrs(e, facts),
                (EntryState::Accepted, false) => {
                    before.map(|h| h.addrs.clone()).unwrap_or_default()
                }
                _ => Vec::new(),
            };
            if state == EntryState::Accepted && taken.get(&e.domain) == Some(&false) {
                if let Some(holder) = holders.get(&e.domain) {
                    verdicts.taken_over.push((*holder, e.domain.clone()));
                }
            }
            verdicts.judged.push(Judged {
                held: HeldEntry {
                    entry: e.clone(),
                    state,
                    reason,
                    addrs,
                },
                conclusive,
            });
        }
        Ok(verdicts)
    }

    /// The entries that other peers held without proof and a proven claim
    /// takes over, refused, to be stored with the claimant's in one
    /// transaction; call with the judging lock held.
    async fn handed_over(
        &self,
        taken_over: &[(PeerId, Domain)],
    ) -> Result<Vec<(PeerId, HeldEntry)>, StoreError> {
        let inner = &*self.inner;
        let mut by_holder: HashMap<PeerId, Vec<&Domain>> = HashMap::new();
        for (holder, d) in taken_over {
            by_holder.entry(*holder).or_default().push(d);
        }
        let mut handed = Vec::new();
        for (holder, domains) in by_holder {
            for h in inner.store.peer_entries(&holder).await? {
                if h.state != EntryState::Accepted || !domains.contains(&&h.entry.domain) {
                    continue;
                }
                let reason = format!(
                    "no proof that this peer speaks for {} (another claim is proven); publish `{}. TXT \"{}\"` if it does",
                    h.entry.domain,
                    proof::txt_name(&h.entry.domain),
                    proof::record_for(&holder)
                );
                handed.push((
                    holder,
                    HeldEntry {
                        reason: Some(reason),
                        state: EntryState::Refused,
                        addrs: Vec::new(),
                        entry: h.entry,
                    },
                ));
            }
        }
        Ok(handed)
    }

    /// After `handed` were stored: log them and tell their old holders.
    async fn after_hand_over(&self, handed: &[(PeerId, HeldEntry)]) {
        let mut holders: Vec<PeerId> = Vec::new();
        for (holder, h) in handed {
            tracing::warn!(peer = %holder.short(), domain = %h.entry.domain, "entry held without proof handed to a peer that proved it speaks for the domain");
            if !holders.contains(holder) {
                holders.push(*holder);
            }
        }
        for holder in holders {
            self.refresh_ack(holder).await;
        }
    }

    /// After my own domains changed: a friend's entry for a domain that is now
    /// mine is refused at once (no DNS needed), and Postfix follows.
    async fn revoke_now_mine(&self, added: &[Domain]) {
        if added.is_empty() {
            return;
        }
        let inner = &*self.inner;
        let Ok(peers) = inner.store.peers().await else {
            return;
        };
        'peers: for p in peers {
            let judging = inner.judging.lock().await;
            // A thousand names a look-up: the names of a `domains add` of
            // 100,000 are not copied into one statement.
            let mut changed: Vec<HeldEntry> = Vec::new();
            for chunk in added.chunks(1000) {
                let domains: Vec<&Domain> = chunk.iter().collect();
                let asked: HashSet<&Domain> = chunk.iter().collect();
                let Ok(held) = inner.store.peer_entries_of(&p.id, &domains).await else {
                    continue 'peers;
                };
                changed.extend(
                    held.into_iter()
                        .filter(|h| {
                            asked.contains(&h.entry.domain) && h.state != EntryState::Refused
                        })
                        .map(|h| HeldEntry {
                            reason: Some(format!("{} is one of my own domains", h.entry.domain)),
                            state: EntryState::Refused,
                            addrs: Vec::new(),
                            entry: h.entry,
                        }),
                );
            }
            if changed.is_empty() {
                continue;
            }
            if let Err(e) = inner
                .store
                .update_entry_states(&p.id, &changed, &[], inner.clock.now_unix())
                .await
            {
                tracing::error!("{e}");
                continue;
            }
            drop(judging);
            for c in &changed {
                tracing::info!(peer = %p.name, domain = %c.entry.domain, "refused now: it is one of my own domains");
            }
            self.refresh_ack(p.id).await;
            inner.relay.request_apply_of(
                format!("{} became one of my domains", changed[0].entry.domain),
                changed
                    .iter()
                    .map(|c| c.entry.domain.as_str().to_string())
                    .collect(),
            );
        }
    }

    /// Sends the current acknowledgement of `peer`'s list, if connected,
    /// and keeps it for the next time the peer comes back.
    fn send_ack(&self, peer: PeerId, ack: ListAck) {
        lock(&self.inner.acks).insert(peer, ack.clone());
        let peers = self.inner.peers.clone();
        if !peers.is_connected(&peer) {
            return;
        }
        tokio::spawn(async move {
            if let Err(e) = peers.send(&peer, &Request::ListAck(ack)).await {
                tracing::debug!(peer = %peer.short(), "list ack: {e}");
            }
        });
    }

    /// Sends a new acknowledgement made from the store, after `peer`'s
    /// entries changed outside a list or re-check of its own.
    async fn refresh_ack(&self, peer: PeerId) {
        lock(&self.inner.acks).remove(&peer);
        self.resend_ack(peer).await;
    }

    /// Sends the acknowledgement of what is held for `peer` (after a
    /// reconnect): the one last sent, or, after a restart, one made from
    /// the store.
    async fn resend_ack(&self, peer: PeerId) {
        let kept = lock(&self.inner.acks).get(&peer).cloned();
        if let Some(ack) = kept {
            self.send_ack(peer, ack);
            return;
        }
        let store = &self.inner.store;
        let Ok(Some(meta)) = store.peer_list_meta(&peer).await else {
            return;
        };
        match store
            .list_summary(&peer, mxfed_proto::msg::MAX_ACK_NOTES)
            .await
        {
            Ok(held) => self.send_ack(peer, make_ack(meta.version, &held)),
            Err(e) => tracing::error!("{e}"),
        }
    }

    // ----- re-checks --------------------------------------------------------

    /// Re-judges refused and pending entries, and accepted ones due for
    /// re-verification, every `recheck_interval`, until `cancel`.
    pub(crate) async fn run_recheck(self, cancel: CancellationToken) {
        let mut config = self.inner.config.changed();
        let mut every = self.inner.config.get().recheck_interval.0;
        let mut round_at = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(round_at) => {}
                Ok(()) = config.changed() => {
                    // A reload with a new recheck_interval: the next round
                    // comes that long after the last one, or now.
                    let now = config.borrow_and_update().recheck_interval.0;
                    if now != every {
                        round_at = round_at - every + now;
                        every = now;
                    }
                    continue;
                }
                _ = cancel.cancelled() => return,
            }
            round_at = tokio::time::Instant::now() + every;
            let peers = match self.inner.store.peers().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("recheck: {e}");
                    continue;
                }
            };
            for p in peers {
                // Stopping inside a re-check is safe: each store write is one
                // transaction, and the next start's apply converges.
                tokio::select! {
                    _ = self.recheck(p.id, &p.name) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }

    async fn recheck(&self, peer: PeerId, name: &str) {
        let inner = &*self.inner;
        // Refused and pending entries, and accepted ones not checked for
        // `reverify_interval`: a friend that stays offline (and so never
        // republishes) keeps relay only for domains whose MX still names it.
        let reverify_before = inner.clock.now_unix()
            - inner
                .config
                .get()
                .reverify_interval
                .0
                .as_secs()
                .min(i64::MAX as u64) as i64;
        let open: Vec<Entry> = match inner.store.entries_due(&peer, reverify_before).await {
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
            let mut from = lock(&inner.recheck_from);
            let after = from.remove(&peer);
            let (batch, last) = turn::take_in_turn(open, after.as_deref(), RECHECK_BUDGET, |e| {
                e.domain.as_str()
            });
            if let Some(last) = last {
                from.insert(peer, last);
            }
            batch
        };
        // DNS first, without the lock; then decide against the state as it
        // is under the lock. Entries the friend changed or dropped meanwhile
        // are left out (`still_held` matches domain and next hop); the rest
        // are judged even if a newer version came in, which judged only what
        // it changed: a friend cannot put off its re-checks by republishing.
        let gathered = self.gather(&open).await;
        let judging = inner.judging.lock().await;
        let domains: Vec<&Domain> = open.iter().map(|e| &e.domain).collect();
        let (Ok(Some(meta)), Ok(held)) = (
            inner.store.peer_list_meta(&peer).await,
            inner.store.peer_entries_of(&peer, &domains).await,
        ) else {
            return;
        };
        drop(domains);
        let previous: HashMap<Entry, HeldEntry> =
            held.iter().map(|h| (h.entry.clone(), h.clone())).collect();
        let still_held: Vec<Entry> = open
            .into_iter()
            .filter(|e| previous.contains_key(e))
            .collect();
        let Verdicts { judged, taken_over } = match self
            .judge_with(&peer, &still_held, &previous, &gathered)
            .await
        {
            Ok(v) => v,
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
        let handed = match self.handed_over(&taken_over).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        if let Err(e) = inner
            .store
            .update_entry_states(&peer, &checked, &handed, inner.clock.now_unix())
            .await
        {
            tracing::error!("{e}");
            return;
        }
        // A changed address counts as a change: Postfix must follow it.
        let changed: Vec<HeldEntry> = judged
            .into_iter()
            .map(|j| j.held)
            .filter(|j| previous.get(&j.entry) != Some(j))
            .collect();
        let touched: Vec<String> = changed
            .iter()
            .chain(handed.iter().map(|(_, h)| h))
            .map(|h| h.entry.domain.as_str().to_string())
            .collect();
        if changed.is_empty() {
            drop(judging);
            if !handed.is_empty() {
                inner
                    .relay
                    .request_apply_of(format!("re-check of {name}'s list"), touched);
            }
            self.after_hand_over(&handed).await;
            return;
        }
        // What the peer's list now stands at.
        let summary = inner
            .store
            .list_summary(&peer, mxfed_proto::msg::MAX_ACK_NOTES)
            .await;
        drop(judging);
        self.after_hand_over(&handed).await;
        for c in &changed {
            tracing::info!(
                peer = %name,
                domain = %c.entry.domain,
                state = c.state.as_str(),
                reason = c.reason.as_deref().unwrap_or(""),
                "re-checked entry changed state"
            );
        }
        match summary {
            Ok(summary) => self.send_ack(peer, make_ack(meta.version, &summary)),
            Err(e) => tracing::error!("{e}"),
        }
        inner
            .relay
            .request_apply_of(format!("re-check of {name}'s list"), touched);
    }

    // ----- for status and metrics -------------------------------------------

    /// The version of `peer`'s list held here (0: none).
    pub(crate) async fn held_version(&self, peer: &PeerId) -> u64 {
        self.inner
            .store
            .peer_list_meta(peer)
            .await
            .ok()
            .flatten()
            .map_or(0, |m| m.version)
    }

    /// A peer's list as held here, and what it holds of mine.
    pub(crate) async fn list_status(&self, id: &PeerId) -> Result<ListStatus, StoreError> {
        let store = &self.inner.store;
        let meta = store.peer_list_meta(id).await?;
        let has_recipients = store.peer_recipient_version(id).await? > 0;
        let mut counts = store.recipient_counts(id).await?;
        // Where the relay writes `@domain` after all (see `relay.rs`), the
        // count would mislead: say why every recipient is accepted.
        let mut overridden = None;
        if let Some((theirs, expires_at)) = store.peer_recipient_terms(id).await? {
            let grace = self.inner.config.get().expired_list_grace.0.as_secs() as i64;
            let mine = match &self.inner.postfix {
                Some(pf) => pf.param("recipient_delimiter").await.ok(),
                None => None,
            };
            if expires_at + grace <= self.inner.clock.now_unix() {
                overridden = Some(
                    "the friend's recipient list has expired: every recipient is accepted"
                        .to_string(),
                );
            } else if let Some(mine) = mine.filter(|m| !crate::relay::same_delimiters(m, &theirs)) {
                overridden = Some(format!(
                    "the friend splits address extensions with {theirs:?} and this Postfix with {mine:?} (recipient_delimiter): every recipient is accepted"
                ));
            }
            if overridden.is_some() {
                counts.clear();
            }
        }
        let domains = store
            .peer_entries(id)
            .await?
            .into_iter()
            .map(|h| {
                let recipients = counts.get(h.entry.domain.as_str()).copied();
                let recipients_reason = match (recipients, has_recipients) {
                    (Some(_), _) => None,
                    (None, true) if overridden.is_some() => overridden.clone(),
                    (None, true) => Some("the friend publishes no recipients for it (its recipient table cannot be listed, or recipients = \"off\"): every recipient is accepted".to_string()),
                    (None, false) => Some("no recipient list from this friend (an agent before 0.2, or not received yet): every recipient is accepted".to_string()),
                };
                PeerDomain {
                    domain: h.entry.domain.to_string(),
                    next_hop: h.entry.next_hop.to_string(),
                    state: h.state,
                    reason: h.reason,
                    recipients,
                    recipients_reason,
                }
            })
            .collect();
        let notes = |v: Vec<EntryNote>| {
            v.into_iter()
                .map(|n| DomainReason {
                    domain: n.domain,
                    reason: n.reason,
                })
                .collect()
        };
        let my_list = match store.ack(id).await? {
            None => MyListAtPeer::default(),
            Some(a) => MyListAtPeer {
                version_acked: Some(a.ack.version),
                accepted: a.ack.accepted,
                refused_count: a.ack.refused_count,
                pending_count: a.ack.pending_count,
                refused: notes(a.ack.refused),
                pending: notes(a.ack.pending),
                acked_at: Some(rfc3339(a.received_at)),
            },
        };
        Ok((
            meta.as_ref().map(|m| m.version),
            meta.map(|m| rfc3339(m.expires_at as i64)),
            domains,
            my_list,
        ))
    }
}
