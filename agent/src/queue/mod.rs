//! [`Queue`]: held mail. What my queue holds for each friend, what each
//! friend holds for me, and flushing while a friend takes mail.
//!
//! The scanner ([`Queue::run`]) reads the queue every [`SCAN_EVERY`]
//! (`postqueue -j`, streamed through [`crate::mailq::PeerTally`], kept as
//! the latest [`scan::Scan`]) and each connected friend gets a
//! [`QueueReport`] of what I hold for its domains: when it changed, and at
//! least every [`REPORT_EVERY`] while I hold mail for it. A report also
//! says whether my own MTA is running; the watcher ([`Queue::run_mta_watch`])
//! looks every [`MTA_WATCH_EVERY`] (no command: the master's pid file) and
//! tells every friend at once when my Postfix starts or stops.
//!
//! The flusher ([`Queue::run_flusher`]) looks at each friend every
//! [`FLUSH_TICK`]: while I hold mail for a friend that takes mail (its
//! report says so, or my probe of its next hop gets a greeting), I run
//! `postqueue -s` for each of its domains with mail, as [`flush::Friend`]
//! decides: at once when it comes back or new mail is held, then with a
//! growing backoff while the same mail stays. While I hold mail and it does
//! not say it accepts, its next hop is probed every second. `mxfed flush`
//! asks friends to do the same for my domains.
//!
//! - `scan`: one reading of the queue and the views made of it (pure but
//!   for the read).
//! - `flush`: when to flush and probe, per friend (pure).
//! - `probe`: does a friend's next hop greet on its SMTP port.

mod flush;
mod probe;

pub(crate) use probe::any_answers;
mod scan;

use std::collections::HashMap;
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
/// How often the flusher looks at each friend's state.
pub const FLUSH_TICK: Duration = Duration::from_millis(100);
/// The longest wait for one flush (its scans and `postqueue -s` runs).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How often my own Postfix's state is looked at.
pub const MTA_WATCH_EVERY: Duration = Duration::from_millis(250);

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
    /// One report at a time per friend, so they arrive in order.
    sending: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
    /// Paired friends by name, as of the last scan round or connect.
    names: Mutex<HashMap<PeerId, String>>,
    /// Each friend's flush and probe state.
    friends: Mutex<HashMap<PeerId, flush::Friend>>,
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
                sending: Mutex::default(),
                names: Mutex::default(),
                friends: Mutex::default(),
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
        let previous = self.last_scan().map(|s| Arc::clone(&s.routing));
        let scan =
            Arc::new(scan::read(inner.postfix.as_ref(), &inner.store, at, previous.as_ref()).await);
        *lock(&inner.last) = Some(Arc::clone(&scan));
        scan
    }

    /// The last scan, if any.
    pub(crate) fn last_scan(&self) -> Option<Arc<Scan>> {
        lock(&self.inner.last).clone()
    }

    /// Whether my own Postfix is running: as the watcher last saw it, or
    /// looked at now if that is older than a second.
    async fn mta_accepting(&self) -> bool {
        let Some(p) = &self.inner.postfix else {
            return false;
        };
        let recent = *lock(&self.inner.mta);
        if let Some((up, at)) = recent {
            if at.elapsed() < Duration::from_secs(1) {
                return up;
            }
        }
        let up = p.master_running().await;
        *lock(&self.inner.mta) = Some((up, Instant::now()));
        up
    }

    /// Watches my own Postfix every [`MTA_WATCH_EVERY`] until `cancel`;
    /// when it starts or stops, every connected friend hears at once (a
    /// friend holding my mail flushes it the moment I am back).
    pub(crate) async fn run_mta_watch(self, cancel: CancellationToken) {
        let Some(p) = self.inner.postfix.clone() else {
            return;
        };
        let mut last: Option<Option<u64>> = None;
        loop {
            let master = p.master().await;
            let up = master.is_some();
            *lock(&self.inner.mta) = Some((up, Instant::now()));
            // A different master since the last look (a restart quicker
            // than the interval) is a stop and a start.
            let restarted = matches!(last, Some(Some(was)) if master.is_some_and(|m| m != was));
            if last.is_some_and(|was| was.is_some() != up) || restarted {
                let peers: Vec<(PeerId, String)> = lock(&self.inner.names)
                    .iter()
                    .map(|(id, n)| (*id, n.clone()))
                    .collect();
                tracing::info!(
                    "my Postfix {}; telling {} friend(s)",
                    match (up, restarted) {
                        (true, true) => "restarted",
                        (true, false) => "started",
                        _ => "stopped",
                    },
                    peers.len()
                );
                for (id, name) in peers {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if restarted {
                            me.report_to(id, &name, true, Some(false)).await;
                        }
                        me.report_to(id, &name, true, None).await;
                    });
                }
            }
            last = Some(master);
            tokio::select! {
                _ = tokio::time::sleep(MTA_WATCH_EVERY) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// The scanner: scan, report, repeat, until `cancel`.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        if self.inner.postfix.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SCAN_EVERY) => {}
                _ = cancel.cancelled() => return,
            }
            // Nothing in a round is left half done if it stops early: scans
            // and reports change nothing.
            tokio::select! {
                _ = self.round() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// One round: scan, then report to every friend.
    async fn round(&self) {
        self.scan().await;
        let Ok(peers) = self.inner.store.peers().await else {
            return;
        };
        *lock(&self.inner.names) = peers.iter().map(|p| (p.id, p.name.clone())).collect();
        // Looked at once per round (reports reuse it).
        self.mta_accepting().await;
        // Side by side, each bounded by its own timeouts: a friend that
        // never answers delays no one else's.
        let mut work = JoinSet::new();
        for p in &peers {
            let (me, id, name) = (self.clone(), p.id, p.name.clone());
            work.spawn(async move {
                me.report_to(id, &name, false, None).await;
            });
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
                        lock(&self.inner.names).insert(peer, name.clone());
                        // Its next "accepting" is a comeback: it may have
                        // stopped while we were apart (an agent stops first).
                        if let Some((r, _)) = lock(&self.inner.reports).get_mut(&peer) {
                            r.mta_accepting = false;
                        }
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
        lock(&inner.sending).remove(peer);
        lock(&inner.names).remove(peer);
        lock(&inner.friends).remove(peer);
    }

    // ----- reports ------------------------------------------------------

    /// Sends `peer` my report if it changed, is due, or `force`; one at a
    /// time per friend, built when its turn comes (so the last one sent
    /// says my Postfix's latest state). `mta_accepting`: say this instead
    /// of the state (a restart is told as a stop, then a start).
    async fn report_to(&self, peer: PeerId, name: &str, force: bool, mta_accepting: Option<bool>) {
        let inner = &*self.inner;
        if !inner.peers.is_connected(&peer) {
            return;
        }
        let turn = Arc::clone(lock(&inner.sending).entry(peer).or_default());
        let _turn = turn.lock().await;
        let scan = match self.last_scan() {
            Some(s) => s,
            None => self.scan().await,
        };
        let mta_accepting = match mta_accepting {
            Some(m) => m,
            None => self.mta_accepting().await,
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

    /// A friend tells me what it holds for me, and whether its MTA accepts.
    /// Accepting after not (or first heard of since I started, or since it
    /// reconnected) is a comeback: what I hold for it is flushed at once.
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
        let before = lock(&self.inner.reports)
            .insert(from.id, (report, self.inner.clock.now_unix()))
            .map(|(r, _)| r.mta_accepting);
        lock(&self.inner.names).insert(from.id, from.name.clone());
        // Back (or first heard of since I started): flush what I hold now.
        if accepting && before != Some(true) {
            lock(&self.inner.friends)
                .entry(from.id)
                .or_default()
                .comeback("its MTA accepts again", Instant::now());
        }
        Response::Done
    }

    // ----- flushing -----------------------------------------------------

    /// The flusher: every [`FLUSH_TICK`], for each friend, tells its
    /// [`flush::Friend`] what I hold and whether it accepts, and starts the
    /// probes and flushes that asks for. Until `cancel`; a flush cut short
    /// only leaves mail queued for Postfix's next try.
    pub(crate) async fn run_flusher(self, cancel: CancellationToken) {
        if self.inner.postfix.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(FLUSH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut work = JoinSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => {
                    work.shutdown().await;
                    return;
                }
            }
            while work.try_join_next().is_some() {}
            self.look(&mut work);
        }
    }

    /// One look at every friend (no I/O here; probes and flushes go into
    /// `work`).
    fn look(&self, work: &mut JoinSet<()>) {
        let inner = &*self.inner;
        let Some(scan) = self.last_scan() else {
            return;
        };
        let names: Vec<(PeerId, String)> = lock(&inner.names)
            .iter()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        let now = Instant::now();
        for (peer, name) in names {
            let says = self.friend_says_accepting(&peer);
            let held = scan.held_mark(&name);
            let (probe, due) = {
                let mut friends = lock(&inner.friends);
                let f = friends.entry(peer).or_default();
                let messages = held.map_or(0, |h| h.messages);
                if says {
                    // Its word counts; a later probe starts afresh.
                    f.idle();
                }
                if let Some(h) = held {
                    let accepting = says || f.probe_answers();
                    f.held(h, accepting, now);
                }
                if messages == 0 {
                    f.idle();
                }
                (f.probe_due(messages, says, now), f.due(now))
            };
            if probe {
                let targets = scan.routing.targets.get(&name).cloned().unwrap_or_default();
                let me = self.clone();
                work.spawn(async move {
                    let at = Instant::now();
                    // Whatever happens to this task, the probe is over.
                    let mut over = Over::new(&me, peer, move |f, now| f.probed(false, at, now));
                    let up = probe::any_answers(&targets).await;
                    over.with(move |f, now| f.probed(up, at, now));
                });
            }
            if let Some(due) = due {
                let me = self.clone();
                work.spawn(async move {
                    let mut over = Over::new(&me, peer, |f, now| f.flushed(None, now));
                    let held = tokio::time::timeout(FLUSH_TIMEOUT, me.flush_with(&name, &due))
                        .await
                        .unwrap_or_else(|_| {
                            tracing::warn!(peer = %name, "flush took over {}s; stopped waiting for it", FLUSH_TIMEOUT.as_secs());
                            None
                        });
                    over.with(move |f, now| f.flushed(held, now));
                });
            }
        }
    }

    /// The flush itself; what the scan it used saw held (`None`: nothing,
    /// or the queue is unreadable). A comeback first flushes the domains
    /// the last scan knew (Postfix starts on those at once, however big
    /// the queue), then reads the queue afresh for mail deferred since.
    async fn flush_with(&self, name: &str, due: &flush::Due) -> Option<flush::Held> {
        let postfix = self.inner.postfix.as_ref()?;
        let mut flushed: Vec<String> = Vec::new();
        let mut failed = 0;
        let last = self.last_scan();
        let scan = if due.fresh_scan {
            if let Some(s) = last.as_ref().filter(|s| s.result.is_ok()) {
                let domains = s.domains_with_mail(name);
                failed += flush_domains(postfix, name, domains, &mut flushed).await;
            }
            self.scan().await
        } else {
            match last.filter(|s| s.taken.elapsed() < 2 * SCAN_EVERY) {
                Some(s) => s,
                None => self.scan().await,
            }
        };
        if let Err(e) = &scan.result {
            tracing::debug!(peer = %name, "queue unreadable after the flush: {e}");
            return None;
        }
        let domains = scan.domains_with_mail(name);
        failed += flush_domains(postfix, name, domains, &mut flushed).await;
        let held = scan.held_mark(name).filter(|h| h.messages > 0);
        if !flushed.is_empty() || failed > 0 {
            tracing::info!(peer = %name, domains = flushed.len(), failed, messages = held.map_or(0, |h| h.messages), "flushed held mail ({})", due.why);
        }
        held
    }

    /// A friend asks me to deliver what I hold for it now: as soon as the
    /// flush pace allows (see [`flush`]), or, if it asked within
    /// [`flush::REQUEST_EVERY`], then.
    pub(crate) async fn flush_requested(&self, from: &Caller) -> Response {
        if self.inner.postfix.is_none() {
            return Response::Refused {
                message: "no Postfix here".into(),
            };
        }
        lock(&self.inner.names).insert(from.id, from.name.clone());
        let asked = lock(&self.inner.friends)
            .entry(from.id)
            .or_default()
            .request(Instant::now());
        match asked {
            Ok(()) => Response::Done,
            Err(wait) => Response::Refused {
                message: format!(
                    "rate limited (at most once every {}s); flushing in {}s",
                    flush::REQUEST_EVERY.as_secs(),
                    wait.as_secs().max(1)
                ),
            },
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

/// `postqueue -s` for each of `domains` not in `flushed` yet, adding those
/// done to it; how many failed (each logged).
async fn flush_domains(
    postfix: &Postfix,
    peer: &str,
    domains: Vec<String>,
    flushed: &mut Vec<String>,
) -> usize {
    let mut failed = 0;
    for d in domains {
        if flushed.contains(&d) {
            continue;
        }
        let Ok(domain) = Domain::parse_canonical(&d) else {
            continue;
        };
        match postfix.flush_domain(&domain).await {
            Ok(()) => flushed.push(d),
            Err(e) => {
                failed += 1;
                tracing::warn!(peer = %peer, domain = %d, "flush failed: {e}")
            }
        }
    }
    failed
}

/// Ends a flush or probe in its friend's state however its task ends: with
/// what [`Over::with`] gives, or (a panic, the task cancelled) with the
/// failure given at [`Over::new`]. A friend unpaired meanwhile is not made
/// anew.
struct Over {
    queue: Queue,
    peer: PeerId,
    end: Option<Ending>,
}

/// What ends a flush or probe in its friend's state.
type Ending = Box<dyn FnOnce(&mut flush::Friend, Instant) + Send>;

impl Over {
    fn new(
        queue: &Queue,
        peer: PeerId,
        failed: impl FnOnce(&mut flush::Friend, Instant) + Send + 'static,
    ) -> Self {
        Self {
            queue: queue.clone(),
            peer,
            end: Some(Box::new(failed)),
        }
    }

    fn with(&mut self, end: impl FnOnce(&mut flush::Friend, Instant) + Send + 'static) {
        self.end = Some(Box::new(end));
    }
}

impl Drop for Over {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            if let Some(f) = lock(&self.queue.inner.friends).get_mut(&self.peer) {
                end(f, Instant::now());
            }
        }
    }
}
