//! [`Queue`]: held mail. What my queue holds for each friend, what each
//! friend holds for me, and flushing when a friend comes back.
//!
//! The scanner ([`Queue::run`]) reads the queue every [`SCAN_EVERY`]
//! (`postqueue -j`, streamed through [`crate::mailq::PeerTally`], kept as
//! the latest [`scan::Scan`]) and each connected friend gets a
//! [`QueueReport`] of what I hold for its domains: when it changed, and at
//! least every [`REPORT_EVERY`] while I hold mail for it. A report also
//! says whether my own MTA is running. When a friend's report says its MTA
//! is accepting, or my probe of its next hop answers (each scan, while I
//! hold mail for it), I run `postqueue -s` for each of its domains with mail, at most
//! once per [`FLUSH_EVERY`]: held mail goes out within seconds instead of
//! waiting out Postfix's retry backoff. `mxfed flush` asks friends to do
//! the same for my domains.
//!
//! - `scan`: one reading of the queue and the views made of it (pure but
//!   for the read).
//! - `probe`: does a friend's next hop answer on its SMTP port.

mod probe;

pub(crate) use probe::any_answers;
mod scan;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use mxfed_proto::control::{FlushResult, HeldStatus, QueueView};
use mxfed_proto::domain::Domain;
use mxfed_proto::msg::{QueueReport, Request, Response, MAX_REPORT_DOMAINS};
use mxfed_proto::PeerId;

use crate::clock::{rfc3339, Clock};
use crate::peer::{Caller, PeerEvent, Peers, SendError};
use crate::postfix::Postfix;
use crate::store::Store;
use crate::util::{lock, printable};

pub(crate) use scan::Scan;

/// How often the queue is read.
pub const SCAN_EVERY: Duration = Duration::from_secs(10);
/// A friend hears from me at least this often while I hold its mail.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);
/// Flushes for one friend (either direction) at most this often.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);

/// The queue service's handle; cheap to clone.
#[derive(Clone)]
pub(crate) struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: Postfix integration is off, and there is no queue to read.
    postfix: Option<Postfix>,
    store: Store,
    peers: Peers,
    clock: Clock,
    /// The latest scan.
    last: Mutex<Option<Arc<Scan>>>,
    /// What each friend last reported holding for me, and when.
    reports: Mutex<HashMap<PeerId, (QueueReport, i64)>>,
    /// What I last reported to each friend, and when.
    sent: Mutex<HashMap<PeerId, (QueueReport, Instant)>>,
    /// When I last flushed for (or at the request of) each friend.
    flushed: Mutex<HashMap<PeerId, Instant>>,
    /// Whether each friend's next hop answered my last probe.
    probes: Mutex<HashMap<PeerId, bool>>,
    /// Friends with a flush in flight.
    flushing: Mutex<HashSet<PeerId>>,
    /// One scan at a time.
    scanning: tokio::sync::Mutex<()>,
    /// My Postfix's state, and when it was looked at.
    mta: Mutex<Option<(bool, Instant)>>,
}

impl Queue {
    pub(crate) fn new(postfix: Option<Postfix>, store: Store, peers: Peers, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                postfix,
                store,
                peers,
                clock,
                last: Mutex::default(),
                reports: Mutex::default(),
                sent: Mutex::default(),
                flushed: Mutex::default(),
                probes: Mutex::default(),
                flushing: Mutex::default(),
                scanning: tokio::sync::Mutex::new(()),
                mta: Mutex::default(),
            }),
        }
    }

    // ----- the scanner --------------------------------------------------

    /// Reads the queue now and keeps the result.
    async fn scan(&self) -> Arc<Scan> {
        let inner = &*self.inner;
        let _one = inner.scanning.lock().await;
        let at = inner.clock.now_unix();
        let scan = Arc::new(scan::read(inner.postfix.as_ref(), &inner.store, at).await);
        *lock(&inner.last) = Some(Arc::clone(&scan));
        scan
    }

    /// The last scan, if any.
    pub(crate) fn last_scan(&self) -> Option<Arc<Scan>> {
        lock(&self.inner.last).clone()
    }

    /// Whether my own Postfix is running: looked at now if `fresh` (each
    /// scan round), else as looked at within the last [`SCAN_EVERY`], so
    /// friends coming and going (each Hello) cost no new `postfix status`.
    async fn mta_accepting(&self, fresh: bool) -> bool {
        let Some(p) = &self.inner.postfix else {
            return false;
        };
        let recent = *lock(&self.inner.mta);
        if let Some((up, at)) = recent.filter(|_| !fresh) {
            if at.elapsed() < SCAN_EVERY {
                return up;
            }
        }
        let up = p.is_running().await;
        *lock(&self.inner.mta) = Some((up, Instant::now()));
        up
    }

    /// The scanner: scan, report, probe, repeat, until `cancel`.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        if self.inner.postfix.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SCAN_EVERY) => {}
                _ = cancel.cancelled() => return,
            }
            // Nothing in a round is left half done if it stops early: scans,
            // reports and probes change nothing, and a flush cut short only
            // leaves mail queued for Postfix's next try.
            tokio::select! {
                _ = self.round() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// One round: scan, then report to every friend and probe the next hops
    /// of those I hold mail for.
    async fn round(&self) {
        let scan = self.scan().await;
        let Ok(peers) = self.inner.store.peers().await else {
            return;
        };
        // Once per round, not once per friend.
        let mta_accepting = self.mta_accepting(true).await;
        // Reports and probes run side by side, each bounded by its own
        // timeouts: a friend that never answers, or a next hop that drops
        // packets, delays no one else's. (A probe that finds a friend
        // back flushes its mail, which takes as long as Postfix does.)
        let mut work = JoinSet::new();
        for p in &peers {
            let (me, id, name) = (self.clone(), p.id, p.name.clone());
            work.spawn(async move {
                me.report_to(id, &name, false, Some(mta_accepting)).await;
            });
        }
        for p in peers
            .iter()
            .filter(|p| scan.held_messages(&p.name).is_some_and(|n| n > 0))
        {
            let (me, scan, id, name) = (self.clone(), Arc::clone(&scan), p.id, p.name.clone());
            work.spawn(async move { me.probe(id, &name, &scan).await });
        }
        while work.join_next().await.is_some() {}
    }

    /// Follows peers: a friend that comes up hears at once what I hold for
    /// it; one that is unpaired is forgotten.
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
                    PeerEvent::Up { peer, name, .. } => {
                        // Tell the friend what I hold for it, and whether my MTA
                        // accepts: that is how it knows I am back and flushes
                        // what it holds for me.
                        let me = self.clone();
                        tokio::spawn(async move { me.report_to(peer, &name, true, None).await });
                    }
                    PeerEvent::Removed { peer, .. } => self.forget(&peer),
                }
            }
        }
    }

    fn forget(&self, peer: &PeerId) {
        let inner = &*self.inner;
        lock(&inner.reports).remove(peer);
        lock(&inner.sent).remove(peer);
        lock(&inner.flushed).remove(peer);
        lock(&inner.probes).remove(peer);
    }

    // ----- reports ------------------------------------------------------

    /// Sends `peer` my report if it changed, is due, or `force`.
    /// `mta_accepting`: my Postfix's state if the caller just looked.
    async fn report_to(&self, peer: PeerId, name: &str, force: bool, mta_accepting: Option<bool>) {
        let inner = &*self.inner;
        if !inner.peers.is_connected(&peer) {
            return;
        }
        let scan = match self.last_scan() {
            Some(s) => s,
            None => self.scan().await,
        };
        let mta_accepting = match mta_accepting {
            Some(m) => m,
            None => self.mta_accepting(false).await,
        };
        let report = scan::report_for(name, &scan, mta_accepting);
        let due = {
            let sent = lock(&inner.sent);
            match sent.get(&peer) {
                None => true,
                Some((last, at)) => {
                    *last != report
                        || (report.held.is_some_and(|h| h.messages > 0)
                            && at.elapsed() >= REPORT_EVERY)
                }
            }
        };
        if !(force || due) {
            return;
        }
        lock(&inner.sent).insert(peer, (report.clone(), Instant::now()));
        if let Err(e) = inner.peers.send(&peer, &Request::QueueReport(report)).await {
            tracing::debug!(peer = %name, "queue report: {e}");
        }
    }

    /// Whether a friend's session is up and its last report says its MTA
    /// accepts mail (for the policy service's `when-down` answers).
    pub(crate) fn friend_says_accepting(&self, peer: &PeerId) -> bool {
        self.inner.peers.is_connected(peer)
            && lock(&self.inner.reports)
                .get(peer)
                .is_some_and(|(r, _)| r.mta_accepting)
    }

    /// A friend tells me what it holds for me. If its MTA is accepting and I
    /// hold mail for it, flush that mail now.
    pub(crate) fn receive_report(&self, from: &Caller, report: QueueReport) -> Response {
        if report.domains.len() > MAX_REPORT_DOMAINS
            || report
                .domains
                .iter()
                .any(|(d, _)| Domain::parse_canonical(d).is_err())
        {
            tracing::warn!(peer = %from.name, "ignored malformed queue report");
            return Response::Refused {
                message: "malformed queue report".into(),
            };
        }
        let accepting = report.mta_accepting;
        lock(&self.inner.reports).insert(from.id, (report, self.inner.clock.now_unix()));
        if accepting {
            let (me, from) = (self.clone(), from.clone());
            tokio::spawn(async move {
                me.flush_for(from.id, &from.name, "its MTA is accepting again")
                    .await;
            });
        }
        Response::Done
    }

    // ----- flushing -----------------------------------------------------

    /// Probes the SMTP port of the next hops I hold mail for; while one
    /// answers, the friend takes mail: flush (at most once per
    /// [`FLUSH_EVERY`]). A state, not an edge: mail deferred for another
    /// reason (a server key announced late) also goes out.
    async fn probe(&self, peer: PeerId, name: &str, scan: &Scan) {
        let targets = probe::targets(
            scan.routes
                .iter()
                .filter(|r| r.peer == name)
                .map(|r| (&r.addrs[..], r.entry.next_hop.port())),
        );
        let up = probe::any_answers(&targets).await;
        let before = lock(&self.inner.probes).insert(peer, up);
        if up {
            let why = match before {
                Some(false) => "its next hop answers again",
                _ => "its next hop answers and I hold mail for it",
            };
            self.flush_for(peer, name, why).await;
        }
    }

    /// Runs `postqueue -s` for each of `peer`'s domains I hold mail for,
    /// at most once per [`FLUSH_EVERY`]. Returns what happened.
    async fn flush_for(&self, peer: PeerId, name: &str, why: &str) -> String {
        let Some(postfix) = &self.inner.postfix else {
            return "no Postfix here".into();
        };
        // One flush in flight per friend; requests meanwhile are dropped.
        if !lock(&self.inner.flushing).insert(peer) {
            return "a flush is already running".into();
        }
        let result = self.flush_with(postfix, peer, name, why).await;
        lock(&self.inner.flushing).remove(&peer);
        result
    }

    async fn flush_with(&self, postfix: &Postfix, peer: PeerId, name: &str, why: &str) -> String {
        // A friend's request must not make me read the whole queue each
        // time: use the periodic scan unless it is stale.
        let now = self.inner.clock.now_unix();
        let cached = self
            .last_scan()
            .filter(|s| now - s.at <= 2 * SCAN_EVERY.as_secs() as i64);
        let scan = match cached {
            Some(s) => s,
            None => self.scan().await,
        };
        if let Err(e) = &scan.result {
            return format!("queue unreadable: {e}");
        }
        if scan.held_messages(name).unwrap_or(0) == 0 {
            return "nothing held".into();
        }
        let domains = scan.domains_with_mail(name);
        {
            let mut flushed = lock(&self.inner.flushed);
            if flushed
                .get(&peer)
                .is_some_and(|t| t.elapsed() < FLUSH_EVERY)
            {
                return format!(
                    "rate limited (at most once every {}s)",
                    FLUSH_EVERY.as_secs()
                );
            }
            flushed.insert(peer, Instant::now());
        }
        let mut done = 0;
        let mut failed = 0;
        for d in &domains {
            let Ok(domain) = Domain::parse_canonical(d) else {
                continue;
            };
            match postfix.flush_domain(&domain).await {
                Ok(()) => done += 1,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(peer = %name, domain = %d, "flush failed: {e}")
                }
            }
        }
        tracing::info!(peer = %name, domains = done, failed, "flushed held mail ({why})");
        if failed > 0 && done == 0 {
            return format!("postqueue -s failed for {failed} domain(s); see the log");
        }
        format!("flushed {done} domain(s)")
    }

    /// A friend asks me to deliver what I hold for it now.
    pub(crate) async fn flush_requested(&self, from: &Caller) -> Response {
        let result = self
            .flush_for(from.id, &from.name, "the friend asked")
            .await;
        if result.starts_with("flushed") || result == "nothing held" {
            Response::Done
        } else {
            Response::Refused { message: result }
        }
    }

    // ----- for control, status and metrics --------------------------------

    /// `mxfed flush`: ask friends that hold my mail to deliver it now.
    pub(crate) async fn request_flush(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<FlushResult>, String> {
        let peers = self.inner.store.peers().await.map_err(|e| e.to_string())?;
        if let Some(n) = only {
            if !peers.iter().any(|p| p.name == n) {
                return Err(format!("no peer named {n:?} (see `mxfed status`)"));
            }
        }
        let mut out = Vec::new();
        for p in peers
            .into_iter()
            .filter(|p| only.is_none_or(|n| n == p.name))
        {
            let result = match self.inner.peers.send(&p.id, &Request::Flush).await {
                Err(SendError::NotConnected) => "not connected".to_string(),
                Err(SendError::Failed(e)) => format!("no answer: {e}"),
                Ok(Response::Done) => "flushed".into(),
                Ok(Response::Refused { message }) => format!("refused: {}", printable(&message)),
                Ok(other) => format!("unexpected answer {other:?}"),
            };
            out.push(FlushResult {
                peer: p.name,
                result,
            });
        }
        Ok(out)
    }

    /// `mxfed queue`: a fresh scan, per peer.
    pub(crate) async fn view(&self) -> QueueView {
        scan::queue_view(&*self.scan().await)
    }

    /// What a friend last reported holding for me (`None`: unknown).
    pub(crate) fn held_by_peer_messages(&self, peer: &PeerId) -> Option<u64> {
        lock(&self.inner.reports)
            .get(peer)
            .and_then(|(r, _)| r.held.map(|h| h.messages))
    }

    /// `held_for_peer`, `held_by_peer` and the peer's MTA state for `status`.
    pub(crate) fn held_status(
        &self,
        peer: &PeerId,
        name: &str,
    ) -> (HeldStatus, HeldStatus, Option<bool>) {
        let mine = scan::held_for(self.last_scan().as_deref(), name);
        let (theirs, accepting) = match lock(&self.inner.reports).get(peer) {
            None => (HeldStatus::default(), None),
            Some((r, at)) => (
                HeldStatus {
                    messages: r.held.map(|h| h.messages),
                    bytes: r.held.map(|h| h.bytes),
                    oldest_arrival: r.held.and_then(|h| h.oldest_arrival).map(rfc3339),
                    reported_at: Some(rfc3339(*at)),
                },
                Some(r.mta_accepting),
            ),
        };
        (mine, theirs, accepting)
    }
}
