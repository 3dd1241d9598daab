//! Held mail: what my queue holds for each friend, what each friend holds
//! for me, and flushing when a friend comes back.
//!
//! Every [`SCAN_EVERY`] the queue is read (`postqueue -j`, streamed through
//! [`crate::mailq::PeerTally`]) and each connected friend gets a
//! [`QueueReport`] of what I hold for its domains: when it changed, and at
//! least every [`REPORT_EVERY`] while I hold mail for it. A report also says
//! whether my own MTA is running. When a friend's report says its MTA is
//! accepting and I hold mail for it, I run `postqueue -s` for each of its
//! domains with mail, at most once per [`FLUSH_EVERY`]: held mail goes out
//! within seconds instead of waiting out Postfix's retry backoff.
//! `mxfed flush` asks friends to do the same for my domains.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxfed_proto::control::{
    FlushResult, HeldStatus, QueueDomain, QueuePeer, QueueView, ReasonCount,
};
use mxfed_proto::domain::{Domain, Host, NextHop};
use mxfed_proto::list::Entry;
use mxfed_proto::msg::{Held, QueueReport, Request, Response, MAX_REPORT_DOMAINS};
use mxfed_proto::PeerId;

use crate::mailq::{DomainDepth, PeerTally, TOP_REASONS};
use crate::session::{lock, now_unix, printable, request, rfc3339, Shared};
use crate::store::ANY_EXPIRY;

/// How often the queue is read.
pub const SCAN_EVERY: Duration = Duration::from_secs(10);
/// A friend hears from me at least this often while I hold its mail.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);
/// How long a probe of a next hop's SMTP port may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Flushes for one friend (either direction) at most this often.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);

/// Queued mail by peer name or by domain.
type Depths = HashMap<String, DomainDepth>;

/// One scan of my queue, shared (not copied) by reports, flushes, probes,
/// `status` and the metrics until the next.
#[derive(Debug)]
pub(crate) struct Scan {
    pub at: i64,
    /// Per peer name, and per domain; or why the queue could not be read.
    pub result: Result<(Depths, Depths), String>,
    /// The (peer name, entry) routes the tally was made for.
    pub routes: Vec<(String, Entry)>,
}

impl Scan {
    /// The entries relayed for one friend.
    fn entries_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.routes
            .iter()
            .filter(move |(p, _)| p == name)
            .map(|(_, e)| e)
    }
}

/// Queue bookkeeping inside [`Shared`].
#[derive(Default)]
pub(crate) struct QueueState {
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
    flushing: Mutex<std::collections::HashSet<PeerId>>,
    /// One scan at a time.
    scanning: tokio::sync::Mutex<()>,
}

impl QueueState {
    pub(crate) fn forget(&self, peer: &PeerId) {
        lock(&self.reports).remove(peer);
        lock(&self.sent).remove(peer);
        lock(&self.flushed).remove(peer);
        lock(&self.probes).remove(peer);
    }
}

fn held(d: &DomainDepth) -> Held {
    Held {
        messages: d.messages,
        recipients: d.recipients,
        bytes: d.bytes,
        oldest_arrival: d.oldest_arrival,
    }
}

impl Shared {
    /// Reads the queue now and keeps the result.
    async fn scan(&self) -> Arc<Scan> {
        let _one = self.queue.scanning.lock().await;
        let at = now_unix();
        // Mail held for a list past its grace period is still held: count it.
        let routes = self.store.relay_routes(at, ANY_EXPIRY).await;
        let (result, routes) = match (&self.relay.postfix, routes) {
            (None, _) => (Err("Postfix integration is off".to_string()), Vec::new()),
            (_, Err(e)) => (Err(e.to_string()), Vec::new()),
            (Some(postfix), Ok(routes)) => {
                let mut tally = PeerTally::new(
                    routes
                        .iter()
                        .map(|(peer, e)| (peer.clone(), e.domain.to_string())),
                );
                let result = match postfix.read_queue(|l| tally.add_line(l)).await {
                    Ok(()) => Ok((tally.peers, tally.domains.domains)),
                    Err(e) => Err(e.to_string()),
                };
                (result, routes)
            }
        };
        let scan = Arc::new(Scan { at, result, routes });
        *lock(&self.queue.last) = Some(Arc::clone(&scan));
        scan
    }

    /// The last scan, if any.
    pub(crate) fn last_scan(&self) -> Option<Arc<Scan>> {
        lock(&self.queue.last).clone()
    }

    /// Whether my own Postfix is running.
    async fn mta_accepting(&self) -> bool {
        match &self.relay.postfix {
            Some(p) => p.is_running().await,
            None => false,
        }
    }

    /// My report for one friend, from a scan.
    fn report_for(name: &str, scan: &Scan, mta_accepting: bool) -> QueueReport {
        let (held_total, domains) = match &scan.result {
            Err(_) => (None, Vec::new()),
            Ok((peers, domains)) => {
                let total = peers.get(name).map(held).unwrap_or_default();
                let mut mine: Vec<(String, Held)> = scan
                    .entries_of(name)
                    .filter_map(|e| {
                        domains
                            .get(e.domain.as_str())
                            .map(|d| (e.domain.to_string(), held(d)))
                    })
                    .collect();
                mine.sort_by(|a, b| a.0.cmp(&b.0));
                mine.truncate(MAX_REPORT_DOMAINS);
                (Some(total), mine)
            }
        };
        QueueReport {
            mta_accepting,
            held: held_total,
            domains,
        }
    }

    /// Sends `peer` my report if it changed, is due, or `force`.
    /// `mta_accepting`: my Postfix's state if the caller just looked.
    pub(crate) async fn report_to(
        &self,
        peer: PeerId,
        name: &str,
        force: bool,
        mta_accepting: Option<bool>,
    ) {
        let Some(conn) = self.live_conn(&peer) else {
            return;
        };
        let scan = match self.last_scan() {
            Some(s) => s,
            None => self.scan().await,
        };
        let mta_accepting = match mta_accepting {
            Some(m) => m,
            None => self.mta_accepting().await,
        };
        let report = Self::report_for(name, &scan, mta_accepting);
        let due = {
            let sent = lock(&self.queue.sent);
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
        lock(&self.queue.sent).insert(peer, (report.clone(), Instant::now()));
        if let Err(e) = request(&conn, &Request::QueueReport(report)).await {
            tracing::debug!(peer = %name, "queue report: {e}");
        }
    }

    /// The worker: scan, report, repeat.
    pub(crate) async fn queue_loop(self: Arc<Self>) {
        if self.relay.postfix.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(SCAN_EVERY).await;
            let scan = self.scan().await;
            let Ok(peers) = self.store.peers().await else {
                continue;
            };
            // Once per round, not once per friend.
            let mta_accepting = self.mta_accepting().await;
            // Reports and probes run side by side, each bounded by its own
            // timeouts: a friend that never answers, or a next hop that drops
            // packets, delays no one else's. (A probe that finds a friend
            // back flushes its mail, which takes as long as Postfix does.)
            let mut work = tokio::task::JoinSet::new();
            for p in &peers {
                let (me, id, name) = (Arc::clone(&self), p.id, p.name.clone());
                work.spawn(async move {
                    me.report_to(id, &name, false, Some(mta_accepting)).await;
                });
            }
            if let Ok((held, _)) = &scan.result {
                for p in peers
                    .iter()
                    .filter(|p| held.get(&p.name).is_some_and(|d| d.messages > 0))
                {
                    let (me, scan, id, name) =
                        (Arc::clone(&self), Arc::clone(&scan), p.id, p.name.clone());
                    work.spawn(async move { me.probe(id, &name, &scan).await });
                }
            }
            while work.join_next().await.is_some() {}
        }
    }

    /// Probes the SMTP port of the next hops I hold mail for; when one
    /// answers after failing, the friend is back: flush.
    async fn probe(&self, peer: PeerId, name: &str, scan: &Scan) {
        let mut hops: Vec<&NextHop> = scan.entries_of(name).map(|e| &e.next_hop).collect();
        hops.sort();
        hops.dedup();
        let mut up = false;
        for hop in hops.iter().take(5) {
            let port = hop.port().unwrap_or(25);
            let addrs = match hop.host() {
                Host::Ip(ip) => vec![*ip],
                Host::Name(n) => self
                    .lists
                    .dns
                    .addresses(n.as_str())
                    .await
                    .unwrap_or_default(),
            };
            for ip in addrs.into_iter().take(4) {
                let connect = tokio::net::TcpStream::connect((ip, port));
                if matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, connect).await,
                    Ok(Ok(_))
                ) {
                    up = true;
                    break;
                }
            }
            if up {
                break;
            }
        }
        let before = lock(&self.queue.probes).insert(peer, up);
        if up && before == Some(false) {
            self.flush_for(peer, name, "its next hop answers again")
                .await;
        }
    }

    /// A friend tells me what it holds for me. If its MTA is accepting and I
    /// hold mail for it, flush that mail now.
    pub(crate) async fn receive_queue_report(
        self: &Arc<Self>,
        peer: PeerId,
        name: &str,
        report: QueueReport,
    ) -> Response {
        if report.domains.len() > MAX_REPORT_DOMAINS
            || report
                .domains
                .iter()
                .any(|(d, _)| Domain::parse_canonical(d).is_err())
        {
            tracing::warn!(peer = %name, "ignored malformed queue report");
            return Response::Refused {
                message: "malformed queue report".into(),
            };
        }
        let accepting = report.mta_accepting;
        lock(&self.queue.reports).insert(peer, (report, now_unix()));
        if accepting {
            let me = Arc::clone(self);
            let name = name.to_string();
            tokio::spawn(async move {
                me.flush_for(peer, &name, "its MTA is accepting again")
                    .await;
            });
        }
        Response::Done
    }

    /// Runs `postqueue -s` for each of `peer`'s domains I hold mail for,
    /// at most once per [`FLUSH_EVERY`]. Returns what happened.
    pub(crate) async fn flush_for(&self, peer: PeerId, name: &str, why: &str) -> String {
        let Some(postfix) = &self.relay.postfix else {
            return "no Postfix here".into();
        };
        // One flush in flight per friend; requests meanwhile are dropped.
        if !lock(&self.queue.flushing).insert(peer) {
            return "a flush is already running".into();
        }
        let result = self.flush_with(postfix, peer, name, why).await;
        lock(&self.queue.flushing).remove(&peer);
        result
    }

    async fn flush_with(
        &self,
        postfix: &crate::postfix::Postfix,
        peer: PeerId,
        name: &str,
        why: &str,
    ) -> String {
        // A friend's request must not make me read the whole queue each
        // time: use the periodic scan unless it is stale.
        let cached = self
            .last_scan()
            .filter(|s| now_unix() - s.at <= 2 * SCAN_EVERY.as_secs() as i64);
        let scan = match cached {
            Some(s) => s,
            None => self.scan().await,
        };
        let domains: Vec<String> = match &scan.result {
            Err(e) => return format!("queue unreadable: {e}"),
            Ok((peers, domains)) => {
                if peers.get(name).is_none_or(|d| d.messages == 0) {
                    return "nothing held".into();
                }
                scan.entries_of(name)
                    .filter(|e| {
                        domains
                            .get(e.domain.as_str())
                            .is_some_and(|d| d.messages > 0)
                    })
                    .map(|e| e.domain.to_string())
                    .collect()
            }
        };
        {
            let mut flushed = lock(&self.queue.flushed);
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
    pub(crate) async fn handle_flush_request(&self, peer: PeerId, name: &str) -> Response {
        let result = self.flush_for(peer, name, "the friend asked").await;
        if result.starts_with("flushed") || result == "nothing held" {
            Response::Done
        } else {
            Response::Refused { message: result }
        }
    }

    /// `mxfed flush`: ask friends that hold my mail to deliver it now.
    pub(crate) async fn request_flush(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<FlushResult>, String> {
        let peers = self.store.peers().await.map_err(|e| e.to_string())?;
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
            let result = match self.live_conn(&p.id) {
                None => "not connected".to_string(),
                Some(conn) => match request(&conn, &Request::Flush).await {
                    Ok(Response::Done) => "flushed".into(),
                    Ok(Response::Refused { message }) => {
                        format!("refused: {}", printable(&message))
                    }
                    Ok(other) => format!("unexpected answer {other:?}"),
                    Err(e) => format!("no answer: {e}"),
                },
            };
            out.push(FlushResult {
                peer: p.name,
                result,
            });
        }
        Ok(out)
    }

    /// `mxfed queue`: a fresh scan, per peer.
    pub(crate) async fn queue_view(&self) -> Result<QueueView, String> {
        let scan = self.scan().await;
        let empty = Depths::new();
        let (known, error, peer_depths, domain_depths) = match &scan.result {
            Ok((p, d)) => (true, None, p, d),
            Err(e) => (false, Some(e.clone()), &empty, &empty),
        };
        let mut names: Vec<String> = scan.routes.iter().map(|(p, _)| p.clone()).collect();
        names.sort();
        names.dedup();
        let peers = names
            .into_iter()
            .map(|name| {
                let total = peer_depths.get(&name).cloned().unwrap_or_default();
                let domains = scan
                    .entries_of(&name)
                    .filter_map(|e| {
                        domain_depths.get(e.domain.as_str()).map(|d| QueueDomain {
                            domain: e.domain.to_string(),
                            messages: d.messages,
                            recipients: d.recipients,
                            bytes: d.bytes,
                            oldest_arrival: d.oldest_arrival.map(rfc3339),
                        })
                    })
                    .collect();
                QueuePeer {
                    messages: total.messages,
                    recipients: total.recipients,
                    bytes: total.bytes,
                    oldest_arrival: total.oldest_arrival.map(rfc3339),
                    queues: total.by_queue.clone(),
                    reasons: total
                        .top_reasons(TOP_REASONS)
                        .into_iter()
                        .map(|(reason, count)| ReasonCount { reason, count })
                        .collect(),
                    domains,
                    name,
                }
            })
            .collect();
        Ok(QueueView {
            known,
            error,
            scanned_at: rfc3339(scan.at),
            peers,
        })
    }

    /// What a friend last reported holding for me (`None`: unknown).
    pub(crate) fn held_by_peer_messages(&self, peer: &PeerId) -> Option<u64> {
        lock(&self.queue.reports)
            .get(peer)
            .and_then(|(r, _)| r.held.map(|h| h.messages))
    }

    /// `held_for_peer`, `held_by_peer` and the peer's MTA state for `status`.
    pub(crate) fn held_status(
        &self,
        peer: &PeerId,
        name: &str,
    ) -> (HeldStatus, HeldStatus, Option<bool>) {
        let mine = match lock(&self.queue.last).as_ref() {
            None => HeldStatus::default(),
            Some(scan) => match &scan.result {
                Err(_) => HeldStatus {
                    reported_at: Some(rfc3339(scan.at)),
                    ..HeldStatus::default()
                },
                Ok((peers, _)) => {
                    let d = peers.get(name).cloned().unwrap_or_default();
                    HeldStatus {
                        messages: Some(d.messages),
                        bytes: Some(d.bytes),
                        oldest_arrival: d.oldest_arrival.map(rfc3339),
                        reported_at: Some(rfc3339(scan.at)),
                    }
                }
            },
        };
        let (theirs, accepting) = match lock(&self.queue.reports).get(peer) {
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
