//! [`Recipients`]: recipient lists, mine and my friends'.
//!
//! **Mine.** The valid recipients of my domains come from `recipients` in
//! the config: this Postfix's tables (`postfix`, the default), a file, or
//! nothing (`off`). [`Recipients::run_publish`] reads them at start, again
//! within [`POLL`] of a change to any file they were read from (its size or
//! time), when my domain list changes, and every [`REREAD`] in any case;
//! each change is signed as a new version, stored (the header; the items
//! are read again each run) and offered to every friend that understands
//! recipient lists. A friend holding a recent version gets only the
//! changes since ([`ChangeLog`]).
//!
//! **Theirs.** A friend's offer is fetched (at most once per
//! [`MIN_FETCH_GAP`]), checked by the proto receivers (signature, bounds,
//! canonical items), stored as the difference from what was held, and the
//! relay maps are rewritten: each of the friend's accepted domains with
//! recipients gets exactly those in `relay_recipient_maps`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use mxfed_proto::domain::Domain;
use mxfed_proto::msg::{understand_changes, Request, Response};
use mxfed_proto::recipients::{
    recipient_change_chunks, recipient_changes, valid_delimiter, Recipient, RecipientChangesHeader,
    RecipientChangesReceiver, RecipientList, RecipientReceiver, WireRecipientChange,
    MAX_FINGERPRINTS,
};
use mxfed_proto::PeerId;

use crate::clock::Clock;
use crate::config::{BackupMode, RecipientsSource, Shared};
use crate::identity::Identity;
use crate::lists::Lists;
use crate::peer::{Caller, PeerEvent, Peers, Responder};
use crate::postfix::Postfix;
use crate::relay::Relay;
use crate::store::{RecipientHead, Store, StoreError};
use crate::util::lock;

use crate::lists::ChangeLog;

/// How often the files my recipients were read from are checked for a change.
pub const POLL: Duration = Duration::from_millis(250);
/// How often my recipients are read again even if no file changed.
const REREAD: Duration = Duration::from_secs(600);
/// How soon a failed read is tried again.
const RETRY: Duration = Duration::from_secs(30);
/// Re-sign my recipient list once it is this old.
const REFRESH_AFTER: Duration = Duration::from_secs(86_400);
/// How long a signed recipient list of mine is valid.
const LIFETIME: Duration = Duration::from_secs(14 * 86_400);
/// Least time between two fetches of one friend's recipient list.
const MIN_FETCH_GAP: Duration = Duration::from_secs(1);
/// Least time between two transfers of one version to one friend.
const SERVE_GAP: Duration = Duration::from_secs(5);
/// How long a transfer may take in all, and each frame.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// My current signed recipient list.
#[derive(Debug)]
struct Published {
    list: RecipientList,
    signature: Vec<u8>,
}

/// Why each of my domains has no recipient list, as last read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Unlisted {
    /// Every one of my domains, for one reason (recipients off, no
    /// Postfix, a delimiter friends cannot use), and how many they are:
    /// not a copy of 100,000 names.
    every: Option<(Arc<str>, usize)>,
    /// Else each domain without a list, and why.
    each: BTreeMap<Domain, Arc<str>>,
}

impl Unlisted {
    /// All of `domains`, for `why`.
    pub(crate) fn every(why: &str, domains: usize) -> Self {
        Self {
            every: (domains > 0).then(|| (Arc::from(why), domains)),
            each: BTreeMap::new(),
        }
    }

    /// These domains, each for its reason.
    pub(crate) fn each(each: BTreeMap<Domain, Arc<str>>) -> Self {
        Self { every: None, each }
    }

    /// Why `domain` (one of mine) has no recipient list, if it has none.
    pub(crate) fn get(&self, domain: &Domain) -> Option<&str> {
        match &self.every {
            Some((why, _)) => Some(why),
            None => self.each.get(domain).map(|w| &**w),
        }
    }

    /// How many of my domains have no list.
    pub(crate) fn len(&self) -> usize {
        self.every.as_ref().map_or(self.each.len(), |(_, n)| *n)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The reason every domain shares, if it is one for all.
    pub(crate) fn for_every(&self) -> Option<&str> {
        self.every.as_ref().map(|(why, _)| &**why)
    }

    /// Each domain listed one by one, and why (none if one reason is
    /// for all: see [`Self::for_every`]).
    pub(crate) fn each_domain(&self) -> impl Iterator<Item = (&Domain, &str)> {
        self.each.iter().map(|(d, w)| (d, &**w))
    }
}

/// The recipient lists service (a cheap handle).
#[derive(Clone)]
pub(crate) struct Recipients {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Shared>,
    identity: Arc<Identity>,
    store: Store,
    postfix: Option<Postfix>,
    peers: Peers,
    relay: Relay,
    lists: Lists,
    clock: Clock,
    current: tokio::sync::Mutex<Option<Arc<Published>>>,
    version: watch::Sender<u64>,
    log: Mutex<ChangeLog<Recipient, bool>>,
    unlisted: Mutex<Unlisted>,
    /// The newest version each friend has offered, and friends being fetched.
    offered: Mutex<HashMap<PeerId, u64>>,
    fetching: Mutex<HashSet<PeerId>>,
    /// The version last sent to each friend, and when.
    /// for a request that may get changes (true) or only the whole list.
    served: Mutex<HashMap<(PeerId, bool), (u64, tokio::time::Instant)>>,
    /// When each friend's recipient list was last fetched.
    last_fetch: Mutex<HashMap<PeerId, tokio::time::Instant>>,
    /// When my recipients were last read (None: never, or the last read failed).
    read_ok: Mutex<Option<tokio::time::Instant>>,
    /// My server key fingerprints as last read.
    tls: Mutex<Vec<String>>,
    /// Why I publish no keys although I may have certificates, as last
    /// logged.
    tls_not_offered: Mutex<Option<String>>,
}

/// What my recipients were read from, to notice a change cheaply.
type Fingerprint = Vec<(PathBuf, Option<(u64, SystemTime)>)>;

fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            (f.clone(), meta)
        })
        .collect()
}

impl Recipients {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Arc<Shared>,
        identity: Arc<Identity>,
        store: Store,
        postfix: Option<Postfix>,
        peers: Peers,
        relay: Relay,
        lists: Lists,
        clock: Clock,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                identity,
                store,
                postfix,
                peers,
                relay,
                lists,
                clock,
                current: tokio::sync::Mutex::new(None),
                version: watch::Sender::new(0),
                log: Mutex::new(ChangeLog::default()),
                unlisted: Mutex::new(Unlisted::default()),
                offered: Mutex::new(HashMap::new()),
                fetching: Mutex::new(HashSet::new()),
                served: Mutex::new(HashMap::new()),
                last_fetch: Mutex::new(HashMap::new()),
                read_ok: Mutex::new(None),
                tls: Mutex::new(Vec::new()),
                tls_not_offered: Mutex::new(None),
            }),
        }
    }

    /// The version of my recipient list (0: none yet).
    pub(crate) fn my_version(&self) -> u64 {
        *self.inner.version.borrow()
    }

    /// Why each of my domains that has no recipient list has none.
    /// My server key fingerprints as last published.
    pub(crate) fn my_tls(&self) -> Vec<String> {
        lock(&self.inner.tls).clone()
    }

    pub(crate) fn my_unlisted(&self) -> Unlisted {
        lock(&self.inner.unlisted).clone()
    }

    /// How many recipients my list has for each of my domains.
    pub(crate) async fn my_counts(&self) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        if let Some(p) = self.inner.current.lock().await.as_ref() {
            for r in p.list.items() {
                *counts.entry(r.domain().to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    // ----- mine -----------------------------------------------------------

    /// Reads, signs and offers my recipient list as it changes, until `cancel`.
    pub(crate) async fn run_publish(self, cancel: CancellationToken) {
        let mut domains_version = self.inner.lists.version_watch();
        // A reload may change where my recipients come from (`recipients`),
        // `backup_mode` or `tls_next_keys`: all published here.
        let mut config = self.inner.config.changed();
        let mut seen: Option<Fingerprint> = None;
        let mut read_at = tokio::time::Instant::now();
        // My domain list changed: read again for the new set of domains.
        let mut domains_changed = true;
        loop {
            let due = domains_changed
                || read_at.elapsed() >= REREAD
                || seen.as_ref().is_none_or(|f| {
                    let files: Vec<PathBuf> = f.iter().map(|(p, _)| p.clone()).collect();
                    fingerprint(&files) != *f
                });
            domains_changed = false;
            if due {
                domains_version.borrow_and_update();
                read_at = tokio::time::Instant::now();
                // Taken before reading, so a file changed during the read
                // is read again at the next poll.
                let before: Option<Fingerprint> = seen
                    .as_ref()
                    .map(|f| fingerprint(&f.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()));
                seen = match self.publish_now().await {
                    Some(after) => {
                        *lock(&self.inner.read_ok) = Some(tokio::time::Instant::now());
                        let same_files = before.as_ref().is_some_and(|b| {
                            b.iter().map(|(p, _)| p).eq(after.iter().map(|(p, _)| p))
                        });
                        Some(if same_files {
                            before.unwrap_or(after)
                        } else {
                            after
                        })
                    }
                    None => {
                        // Try again in a while, not at every poll.
                        read_at -= REREAD.saturating_sub(RETRY);
                        Some(Vec::new())
                    }
                };
            }
            self.refresh_if_due().await;
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                changed = domains_version.changed() => match changed {
                    Ok(()) => domains_changed = true,
                    // The lists service is gone (shutting down): poll only.
                    Err(_) => tokio::time::sleep(POLL).await,
                },
                Ok(()) = config.changed() => domains_changed = true,
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Reads my recipients, and signs and offers them if they changed;
    /// returns the fingerprint of what they were read from (`None`: they
    /// could not be read).
    async fn publish_now(&self) -> Option<Fingerprint> {
        let inner = &*self.inner;
        // Sorted and canonical already: no view to build, nothing to parse.
        let domains: Vec<Domain> = inner.lists.my_domain_names().await;
        let (items, unlisted, delimiter, mut files) = match self.read(&domains).await {
            Ok(read) => read,
            Err(why) => {
                // Nothing read: what friends hold stays in force.
                tracing::warn!("cannot read the recipients of my domains: {why}; the list friends hold stays in force (trying again in {}s)", RETRY.as_secs());
                return None;
            }
        };
        // My SMTP server's keys, which friends pin when they relay to me.
        let tls = match &inner.postfix {
            None => Vec::new(),
            Some(pf) => match pf
                .tls_fingerprints(
                    &inner.config.get().tls_next_keys,
                    inner.config.get().allow_non_public_next_hops,
                )
                .await
            {
                Ok(keys) => {
                    files.extend(keys.files);
                    let mut said = lock(&inner.tls_not_offered);
                    if *said != keys.not_offered {
                        if let Some(why) = &keys.not_offered {
                            tracing::warn!("{why}: friends relay to me without pinning my server key (their own TLS policy applies)");
                        }
                        *said = keys.not_offered;
                    }
                    keys.fingerprints
                }
                Err(e) => {
                    // Mid-renewal, say: keep what friends pin now; a change
                    // to a watched file, or the 10-minute re-read, tries again.
                    tracing::warn!("cannot read my SMTP server's certificates ({e}); friends keep the keys they pin now");
                    lock(&inner.tls).clone()
                }
            },
        };
        let tls = if tls.len() > MAX_FINGERPRINTS {
            tracing::warn!(
                "{} server certificates; friends pin the first {MAX_FINGERPRINTS}",
                tls.len()
            );
            tls[..MAX_FINGERPRINTS].to_vec()
        } else {
            tls
        };
        *lock(&inner.tls) = tls.clone();
        let files = fingerprint(&files);
        if let Some(why) = unlisted.for_every() {
            tracing::debug!(
                count = unlisted.len(),
                "none of my domains has a recipient list (friends accept every recipient): {why}"
            );
        } else if !unlisted.is_empty() {
            let names: Vec<&str> = unlisted
                .each_domain()
                .take(20)
                .map(|(d, _)| d.as_str())
                .collect();
            tracing::debug!(count = unlisted.len(), first = %names.join(", "), "domains without a recipient list (friends accept every recipient)");
        }
        let (items, unlisted, delimiter) = if valid_delimiter(&delimiter) {
            (items, unlisted, delimiter)
        } else {
            // Backups could not split extensions as I do: no exact lists.
            let why = format!("recipient_delimiter {delimiter:?} cannot be published (at most 8 punctuation characters)");
            tracing::warn!("{why}; friends accept every recipient of my domains");
            let all = Unlisted::every(&why, domains.len());
            (Vec::new(), all, String::new())
        };
        *lock(&inner.unlisted) = unlisted;
        self.sign_if_changed(items, delimiter, tls, false).await;
        Some(files)
    }

    /// My recipients per `recipients`, the domains without a list (and
    /// why), the delimiter, and the files they were read from.
    async fn read(
        &self,
        domains: &[Domain],
    ) -> Result<(Vec<Recipient>, Unlisted, String, Vec<PathBuf>), String> {
        let inner = &*self.inner;
        let all_unlisted = |why: &str| Unlisted::every(why, domains.len());
        match &inner.config.get().recipients {
            RecipientsSource::Off => Ok((
                Vec::new(),
                all_unlisted("recipients = \"off\" in the config"),
                String::new(),
                Vec::new(),
            )),
            RecipientsSource::Postfix => match &inner.postfix {
                None => Ok((
                    Vec::new(),
                    all_unlisted("no Postfix here to read recipients from"),
                    String::new(),
                    Vec::new(),
                )),
                Some(pf) => {
                    let read = pf.recipients(domains).await.map_err(|e| e.to_string())?;
                    Ok((
                        read.items.into_iter().collect(),
                        Unlisted::each(
                            read.unlisted
                                .into_iter()
                                .map(|(d, why)| (d, why.into()))
                                .collect(),
                        ),
                        read.delimiter,
                        read.files,
                    ))
                }
            },
            RecipientsSource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let delimiter = match &inner.postfix {
                    Some(pf) => pf.param("recipient_delimiter").await.unwrap_or_default(),
                    None => String::new(),
                };
                let (items, unlisted) = from_file(&text, domains, path)?;
                Ok((items, unlisted, delimiter, vec![path.clone()]))
            }
        }
    }

    /// Signs a new version if `items` or `delimiter` differ from the
    /// current list (or `force`), stores and offers it.
    async fn sign_if_changed(
        &self,
        items: Vec<Recipient>,
        delimiter: String,
        tls: Vec<String>,
        force: bool,
    ) {
        let inner = &*self.inner;
        let mut current = inner.current.lock().await;
        let now = inner.clock.now_u64();
        let when_down = inner.config.get().backup_mode == BackupMode::WhenDown;
        let mut items = items;
        items.sort();
        items.dedup();
        if current.is_none() {
            // First read of this run: keep the stored version if it signed
            // exactly these items.
            match inner.store.my_recipient_meta().await {
                Ok(Some(meta)) => {
                    let mut list = RecipientList::new(
                        inner.identity.id,
                        meta.version,
                        (meta.issued_at, meta.expires_at),
                        meta.delimiter.clone(),
                        items.clone(),
                    );
                    list.when_down = when_down;
                    list.tls_fingerprints = tls.clone();
                    let same = inner
                        .identity
                        .id
                        .verify(&list.signing_bytes(), &meta.signature);
                    let stored = Arc::new(Published {
                        list,
                        signature: meta.signature,
                    });
                    if same && !force && meta.delimiter == delimiter {
                        inner.version.send_replace(stored.list.version);
                        *current = Some(stored);
                        drop(current);
                        self.offer_to_all();
                        return;
                    }
                    // Changed while I was not running: the next version.
                    inner.version.send_replace(meta.version);
                    *current = Some(Arc::new(Published {
                        list: RecipientList::new(
                            inner.identity.id,
                            meta.version,
                            (meta.issued_at, meta.expires_at),
                            meta.delimiter,
                            Vec::new(),
                        ),
                        signature: Vec::new(),
                    }));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!("{e}");
                    return;
                }
            }
        }
        let (old_items, old_version, old_delimiter) = match current.as_ref() {
            Some(p) => (
                p.list.items().to_vec(),
                p.list.version,
                p.list.delimiter.clone(),
            ),
            None => (Vec::new(), 0, String::new()),
        };
        let old_when_down = current.as_ref().is_some_and(|p| p.list.when_down);
        let old_tls = current
            .as_ref()
            .map(|p| p.list.tls_fingerprints.clone())
            .unwrap_or_default();
        if !force
            && old_version > 0
            && old_items == items
            && old_delimiter == delimiter
            && old_when_down == when_down
            && old_tls == tls
        {
            return;
        }
        // Never below the clock: after a restore from an older backup the
        // next version is still newer than any a friend holds.
        let version = (old_version + 1).max(now);
        let mut list = RecipientList::new(
            inner.identity.id,
            version,
            (now, now + LIFETIME.as_secs()),
            delimiter,
            items,
        );
        list.when_down = when_down;
        list.tls_fingerprints = tls;
        let signature = inner.identity.sign(&list.signing_bytes());
        if let Err(e) = inner.store.publish_my_recipients(&list, &signature).await {
            tracing::error!("cannot store my recipient list: {e}");
            return;
        }
        let from = match current.as_ref() {
            Some(p) if !p.signature.is_empty() => old_version,
            _ => 0,
        };
        // From nothing this run had: no friend can ask for those changes.
        let changes: Vec<(Recipient, bool)> = match from {
            0 => Vec::new(),
            _ => recipient_changes(&old_items, list.items()),
        };
        tracing::info!(
            version,
            recipients = list.items().len(),
            changed = changes.len(),
            "my recipient list changed; signed and offered to friends"
        );
        lock(&inner.log).record(from, version, changes);
        inner.version.send_replace(version);
        *current = Some(Arc::new(Published { list, signature }));
        drop(current);
        self.offer_to_all();
    }

    /// Re-signs my recipient list once a day, so it never expires while I
    /// run; but not if my recipients could not be read for a day (a list
    /// nobody can check any more should expire, not be kept fresh).
    async fn refresh_if_due(&self) {
        let read_lately = lock(&self.inner.read_ok).is_some_and(|at| at.elapsed() < REFRESH_AFTER);
        if !read_lately {
            return;
        }
        let due = {
            let current = self.inner.current.lock().await;
            match current.as_ref() {
                Some(p) if !p.signature.is_empty() => {
                    let now = self.inner.clock.now_u64();
                    (now.saturating_sub(p.list.issued_at) >= REFRESH_AFTER.as_secs())
                        .then(|| (p.list.items().to_vec(), p.list.delimiter.clone()))
                }
                _ => None,
            }
        };
        if let Some((items, delimiter)) = due {
            let tls = lock(&self.inner.tls).clone();
            self.sign_if_changed(items, delimiter, tls, true).await;
        }
    }

    fn offer_to_all(&self) {
        let version = self.my_version();
        for peer in self.inner.peers.connected() {
            self.offer(peer, version);
        }
    }

    /// Offers my recipient list to `peer` if it understands recipient lists.
    fn offer(&self, peer: PeerId, version: u64) {
        if version == 0 || !self.understands(&peer) {
            return;
        }
        let peers = self.inner.peers.clone();
        tokio::spawn(async move {
            if let Err(e) = peers
                .send(&peer, &Request::RecipientOffer { version })
                .await
            {
                tracing::debug!(peer = %peer.short(), "recipient offer: {e}");
            }
        });
    }

    fn understands(&self, peer: &PeerId) -> bool {
        self.inner
            .peers
            .session(peer)
            .and_then(|s| s.agent_version)
            .is_some_and(|v| understand_changes(&v))
    }

    /// Answers `FetchRecipients`: the changes since `have` if known, else
    /// the whole list, or a refusal; each version at most once per
    /// [`SERVE_GAP`] to each friend.
    pub(crate) async fn serve_fetch(&self, from: &Caller, have: u64, reply: &mut Responder) {
        let refuse = |message: String| Response::Refused { message };
        let version = self.my_version();
        if version <= have {
            let _ = reply.send(&refuse("no newer recipient list".into())).await;
            return;
        }
        // A whole list right after changes is no repeat: it is what a
        // friend asks for whose changes did not apply.
        let key = (from.id, have > 0);
        let too_soon = {
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
            let message = format!(
                "version {version} was sent less than {}s ago",
                SERVE_GAP.as_secs()
            );
            let _ = reply.send(&refuse(message)).await;
            return;
        }
        let (published, changes) = {
            let current = self.inner.current.lock().await;
            let Some(p) = current.clone().filter(|p| !p.signature.is_empty()) else {
                drop(current);
                let _ = reply.send(&refuse("no recipient list yet".into())).await;
                return;
            };
            let changes = (have > 0)
                .then(|| lock(&self.inner.log).since(have, p.list.version))
                .flatten()
                .filter(|c| c.len() < p.list.items().len().max(1));
            (p, changes)
        };
        let sent = match changes {
            Some(changes) => {
                let wire: Vec<WireRecipientChange> = changes
                    .into_iter()
                    .map(|(r, present)| WireRecipientChange {
                        item: r.to_string(),
                        present,
                    })
                    .collect();
                let header = RecipientChangesHeader {
                    list: published.list.header(published.signature.clone()),
                    base: have,
                    changes: wire.len() as u32,
                };
                let chunks = recipient_change_chunks(&wire).map(Response::RecipientChanges);
                reply
                    .send_all(Response::RecipientChangesHeader(header), chunks)
                    .await
            }
            None => {
                let header = published.list.header(published.signature.clone());
                let chunks = published.list.chunks().map(Response::RecipientChunk);
                reply
                    .send_all(Response::RecipientHeader(header), chunks)
                    .await
            }
        };
        if let Err(e) = sent {
            lock(&self.inner.served).remove(&key);
            tracing::debug!(peer = %from.name, "recipient list transfer: {e}");
        }
    }

    // ----- theirs ---------------------------------------------------------

    /// Follows peers: one that comes up hears my version; one that is
    /// unpaired is forgotten. Subscribes at once.
    pub(crate) fn follow_peers(
        self,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut events = self.inner.peers.subscribe();
        async move {
            while let Some(event) = events.next(&cancel).await {
                match event {
                    PeerEvent::Up { peer, .. } => self.offer(peer, self.my_version()),
                    PeerEvent::Removed { peer, .. } => {
                        lock(&self.inner.offered).remove(&peer);
                        lock(&self.inner.served).retain(|(p, _), _| *p != peer);
                        lock(&self.inner.last_fetch).remove(&peer);
                    }
                }
            }
        }
    }

    /// Notes that `peer` has recipient list `version`; fetches it if newer.
    pub(crate) fn offered(&self, peer: PeerId, version: u64) {
        {
            let mut offered = lock(&self.inner.offered);
            let v = offered.entry(peer).or_insert(0);
            *v = (*v).max(version);
        }
        if version > 0 && lock(&self.inner.fetching).insert(peer) {
            tokio::spawn(self.clone().fetch_loop(peer));
        }
    }

    async fn fetch_loop(self, peer: PeerId) {
        let inner = &*self.inner;
        loop {
            // At most one fetch per MIN_FETCH_GAP (longer after a refusal),
            // however often the friend offers; only the newest counts.
            let last = lock(&inner.last_fetch).get(&peer).copied();
            if let Some(at) = last {
                tokio::time::sleep_until(at + MIN_FETCH_GAP).await;
            }
            let wanted = lock(&inner.offered).get(&peer).copied().unwrap_or(0);
            let held = inner.store.peer_recipient_version(&peer).await;
            let held = match held {
                Ok(v) if wanted > v && inner.peers.is_connected(&peer) => v,
                other => {
                    if let Err(e) = other {
                        tracing::error!("{e}");
                    }
                    lock(&inner.fetching).remove(&peer);
                    // An offer that came in after the look above but before
                    // the removal saw a fetch running: look once more.
                    let newer = lock(&inner.offered).get(&peer).copied().unwrap_or(0) > wanted;
                    if newer && lock(&inner.fetching).insert(peer) {
                        continue;
                    }
                    return;
                }
            };
            lock(&inner.last_fetch).insert(peer, tokio::time::Instant::now());
            let name = match inner.store.peer(&peer).await {
                Ok(Some(p)) => p.name,
                _ => peer.short(),
            };
            let fetch = |whole| {
                tokio::time::timeout(TRANSFER_TIMEOUT, self.fetch_once(peer, &name, held, whole))
            };
            let mut outcome = fetch(false).await;
            if let Ok(Err(Failed::NotApplied(why))) = &outcome {
                tracing::info!(peer = %name, "its recipient changes did not apply to version {held} held here ({why}); fetching the whole list");
                outcome = fetch(true).await;
            }
            let failed = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(Failed::Later(wait))) => {
                    // Sent moments ago: ask again once the sender allows.
                    let at = tokio::time::Instant::now() + wait - MIN_FETCH_GAP;
                    lock(&inner.last_fetch).insert(peer, at);
                    continue;
                }
                Ok(Err(Failed::NotApplied(why) | Failed::Refused(why))) => why,
                Err(_) => "the transfer timed out".to_string(),
            };
            tracing::warn!(peer = %name, "recipient list not taken: {failed}; the one held stays in force until the friend offers again");
            // Not again for this offer; a newer offer (even one that came
            // in meanwhile) starts over.
            let mut offered = lock(&inner.offered);
            if offered.get(&peer) == Some(&wanted) {
                offered.insert(peer, held);
            }
        }
    }

    /// One fetch: the list (or, unless `whole`, the changes since
    /// `held`), checked, stored.
    async fn fetch_once(
        &self,
        peer: PeerId,
        name: &str,
        held: u64,
        whole: bool,
    ) -> Result<(), Failed> {
        let inner = &*self.inner;
        let now = inner.clock.now_u64();
        let have = if whole { 0 } else { held };
        let mut rx = inner
            .peers
            .open(&peer, &Request::FetchRecipients { have })
            .await
            .map_err(|e| Failed::Refused(e.to_string()))?;
        let (list, signature, changes) = match next_frame(&mut rx).await? {
            Response::RecipientHeader(h) => {
                let signature = h.list.signature.clone();
                let mut r = RecipientReceiver::start(h, peer, (held > 0).then_some(held), now)
                    .map_err(|e| e.to_string())?;
                while !r.is_complete() {
                    match next_frame(&mut rx).await? {
                        Response::RecipientChunk(c) => r.push(c).map_err(|e| e.to_string())?,
                        other => {
                            rx.close_unexpected(
                                name,
                                &format!("sent {other:?} in a recipient list"),
                            );
                            return Err(Failed::Refused("protocol violation".into()));
                        }
                    }
                }
                let list = r.finish().map_err(|e| e.to_string())?;
                let old = inner
                    .store
                    .peer_recipients(&peer)
                    .await
                    .map_err(|e: StoreError| e.to_string())?;
                let changes = recipient_changes(&old, list.items());
                (RecipientHead::from(&list), signature, changes)
            }
            Response::RecipientChangesHeader(h) if have > 0 => {
                let signature = h.list.list.signature.clone();
                let mut r = RecipientChangesReceiver::start(h, peer, held, now)
                    .map_err(|e| e.to_string())?;
                while !r.is_complete() {
                    match next_frame(&mut rx).await? {
                        Response::RecipientChanges(c) => r.push(c).map_err(|e| e.to_string())?,
                        other => {
                            rx.close_unexpected(
                                name,
                                &format!("sent {other:?} in recipient changes"),
                            );
                            return Err(Failed::Refused("protocol violation".into()));
                        }
                    }
                }
                // The list held as signed, if it is the version asked from.
                let held_items = match inner.store.peer_recipient_items(&peer).await {
                    Ok(Some((v, items))) if v == held => items,
                    Ok(Some((v, _))) => {
                        return Err(Failed::NotApplied(format!(
                            "the list held changed during the fetch (version {v}, not {held})"
                        )))
                    }
                    Ok(None) => {
                        return Err(Failed::NotApplied(format!(
                        "version {held} is held without its items as signed (stored by an older mxfed, or not whole)"
                    )))
                    }
                    Err(e) => return Err(Failed::Refused(e.to_string())),
                };
                let list = r
                    .finish_encoded(&held_items)
                    .map_err(|e| Failed::NotApplied(e.to_string()))?;
                let h = list.header;
                let head = RecipientHead {
                    version: h.list.version,
                    issued_at: h.list.issued_at,
                    expires_at: h.list.expires_at,
                    delimiter: h.delimiter,
                    when_down: h.when_down,
                    tls_fingerprints: h.tls_fingerprints,
                    items: list.items,
                };
                (head, signature, list.changes)
            }
            Response::Refused { message } if message.contains("was sent less than") => {
                return Err(Failed::Later(SERVE_GAP))
            }
            Response::Refused { message } => return Err(Failed::Refused(message)),
            other => {
                rx.close_unexpected(name, &format!("answered a recipient fetch with {other:?}"));
                return Err(Failed::Refused("protocol violation".into()));
            }
        };
        // What the maps were made of: if the delimiter, the keys to pin and
        // the list's standing (not expired beyond the grace period) stay,
        // only the domains of the items that changed change in the maps.
        let grace = inner.config.get().expired_list_grace.0.as_secs() as i64;
        let now = inner.clock.now_unix();
        let terms = inner.store.peer_recipient_terms(&peer).await;
        let tls = inner.store.peer_tls(&peer).await;
        let same_terms = match (terms, tls) {
            (Ok(Some((delimiter, expires_at))), Ok(tls)) => {
                delimiter == list.delimiter
                    && tls == list.tls_fingerprints
                    && expires_at.saturating_add(grace) > now
            }
            _ => false,
        };
        inner
            .store
            .store_peer_recipients(&peer, &list, &signature, &changes, now)
            .await
            .map_err(|e| Failed::Refused(e.to_string()))?;
        let count = list.items.items().count();
        tracing::info!(peer = %name, version = list.version, recipients = count, changed = changes.len(), "recipient list stored");
        // Besides addresses, a version may change the keys to pin, the
        // delimiter or the expiry (an apply that changes nothing writes
        // nothing).
        let trigger = format!("{name}'s recipient list v{}", list.version);
        match same_terms {
            true => {
                // By domain, the addresses that changed in it; `@domain`
                // changes the domain's standing.
                let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
                let mut whole_domains = BTreeSet::new();
                for (r, _) in &changes {
                    match r.is_catch_all() {
                        true => {
                            whole_domains.insert(r.domain().to_string());
                        }
                        false => by_domain
                            .entry(r.domain().to_string())
                            .or_default()
                            .push(r.as_str().to_string()),
                    }
                }
                by_domain.retain(|d, _| !whole_domains.contains(d));
                // A domain that keeps an exact list through the change (it
                // has an address besides those) changes in the maps by
                // those addresses alone; one whose list starts or ends
                // (every address of it, or none, is relayed) by its domain.
                let domains: Vec<(String, Vec<String>)> = by_domain.into_iter().collect();
                let keeping = match domains.len() <= crate::relay::MAX_PATCHED_DOMAINS {
                    true => inner
                        .store
                        .recipient_domains_keeping_items(&peer, &domains)
                        .await
                        .unwrap_or_default(),
                    false => Default::default(),
                };
                let mut scope: Vec<String> = whole_domains.into_iter().collect();
                for (domain, items) in domains {
                    match keeping.contains(&domain) {
                        true => scope.extend(items),
                        false => scope.push(domain),
                    }
                }
                inner.relay.request_apply_of(trigger, scope);
            }
            false => inner.relay.request_apply(trigger),
        }
        Ok(())
    }
}

/// The next frame of a transfer, within [`FRAME_TIMEOUT`].
async fn next_frame(rx: &mut crate::peer::Responses) -> Result<Response, String> {
    match tokio::time::timeout(FRAME_TIMEOUT, rx.next()).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no data within {}s", FRAME_TIMEOUT.as_secs())),
    }
}

/// Why a fetch stored nothing.
enum Failed {
    /// The changes sent did not make the signed list from the one held.
    NotApplied(String),
    /// Anything else: refused, a bad list, a broken transfer (said why).
    Refused(String),
    /// The sender sent this version moments ago: ask again after this.
    Later(Duration),
}

impl From<String> for Failed {
    fn from(why: String) -> Self {
        Failed::Refused(why)
    }
}

/// My recipients from a `recipients` file: one address or `@domain` per
/// line, `#` comments. Items outside `domains` are ignored; an invalid line
/// is an error that names it (nothing is published from a broken file).
fn from_file(
    text: &str,
    domains: &[Domain],
    path: &std::path::Path,
) -> Result<(Vec<Recipient>, Unlisted), String> {
    let mine: HashSet<&str> = domains.iter().map(Domain::as_str).collect();
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        // `#` starts a comment at the start of a line or after white space
        // (a local part may hold `#`).
        let line = match line.find(" #").or(line.find("\t#")) {
            Some(i) => &line[..i],
            None => line,
        }
        .trim();
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let r = Recipient::parse(line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        if mine.contains(r.domain()) {
            items.push(r);
        }
    }
    let listed: HashSet<&str> = items.iter().map(Recipient::domain).collect();
    let unlisted = Unlisted::each(
        domains
            .iter()
            .filter(|d| !listed.contains(d.as_str()))
            .map(|d| {
                let why = format!("{} lists no recipient of {d}", path.display());
                (d.clone(), why.into())
            })
            .collect(),
    );
    Ok((items, unlisted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipients_file_gives_the_items_of_my_domains_and_names_a_bad_line() {
        let mine = vec![
            Domain::parse("me.example").unwrap(),
            Domain::parse("quiet.example").unwrap(),
        ];
        let path = std::path::Path::new("/etc/mxfed/recipients");
        let (items, unlisted) = from_file(
            "# users\nBob@Me.example\n@me.example # catch-all\nx@other.example\na#b@me.example\n\n",
            &mine,
            path,
        )
        .unwrap();
        let items: Vec<String> = items.iter().map(|r| r.to_string()).collect();
        assert_eq!(items, ["bob@me.example", "@me.example", "a#b@me.example"]);
        assert_eq!(unlisted.len(), 1);
        assert!(unlisted
            .get(&mine[1])
            .unwrap()
            .contains("lists no recipient of quiet.example"));
        let err = from_file("ok@me.example\nnot an address\n", &mine, path).unwrap_err();
        assert!(err.contains("/etc/mxfed/recipients line 2"), "{err}");
    }
}
