//! One reading of my queue ([`Scan`]) and what is made of it: the report a
//! friend gets ([`report_for`]), `mxfed queue` ([`queue_view`]) and the
//! held-mail part of `status` ([`held_for`]). Apart from [`read`], which
//! runs `postqueue -j` through [`crate::postfix`], nothing here does I/O.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mxfed_proto::control::{HeldStatus, QueueDomain, QueuePeer, QueueView, ReasonCount};
use mxfed_proto::msg::{Held, QueueReport, MAX_REPORT_DOMAINS};

use crate::clock::rfc3339;
use crate::mailq::{DomainDepth, Owners, PeerTally, TOP_REASONS};
use crate::postfix::Postfix;
use crate::store::{Store, ANY_EXPIRY};

/// Queued mail by peer name or by domain.
pub(crate) type Depths = HashMap<String, DomainDepth>;

/// One scan of my queue, shared (not copied) by reports, flushes, probes,
/// `status` and the metrics until the next.
#[derive(Debug)]
pub(crate) struct Scan {
    pub at: i64,
    /// When it was read (monotonic).
    pub taken: tokio::time::Instant,
    /// Per peer name, and per domain; or why the queue could not be read.
    pub result: Result<(Depths, Depths), String>,
    /// The routes the tally was made for.
    pub routing: Arc<Routing>,
}

/// What a scan needs of the accepted routes: each domain's friend, and
/// each friend's next-hop addresses (for probes). Made from the store once
/// per [`Store::routes_generation`] and shared by the scans after, so a
/// scan costs what is in the queue, not the size of the lists.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    /// The store's routes generation it was made at; `None`: not made
    /// from the store (the store could not be read), never reused.
    generation: Option<u64>,
    pub owners: Arc<Owners>,
    /// Per friend, the addresses its relayed mail goes to.
    pub targets: HashMap<String, Vec<SocketAddr>>,
}

impl Routing {
    /// The routing for the store's routes now: `previous` if they have not
    /// changed since it was made.
    pub(crate) async fn now(
        store: &Store,
        at: i64,
        previous: Option<&Arc<Routing>>,
    ) -> Result<Arc<Routing>, String> {
        let generation = store.routes_generation();
        if let Some(p) = previous.filter(|p| p.generation == Some(generation)) {
            return Ok(Arc::clone(p));
        }
        // Mail held for a list past its grace period is still held: count
        // it. The routes are streamed into the owners, never held as a
        // list (100,000 routes as structs were most of a big sync's peak),
        // and the next hops are read distinct.
        let mut owners = Owners::default();
        store
            .each_route(at, ANY_EXPIRY, None, |r| {
                owners.add(&r.peer, r.entry.domain.as_str())
            })
            .await
            .map_err(|e| e.to_string())?;
        owners.shrink_to_fit();
        let hops = store
            .relay_hops(at, ANY_EXPIRY)
            .await
            .map_err(|e| e.to_string())?;
        /// A next hop: its checked addresses and its port.
        type Hop<'a> = (&'a [std::net::IpAddr], Option<u16>);
        // Ordered, so the probes try the same addresses first each time.
        let mut by_peer: HashMap<&str, std::collections::BTreeSet<Hop>> = HashMap::new();
        for (peer, next_hop, addrs) in &hops {
            let hop = (&addrs[..], next_hop.port());
            by_peer.entry(peer).or_default().insert(hop);
        }
        let targets = by_peer
            .into_iter()
            .map(|(peer, hops)| (peer.to_string(), super::probe::targets(hops.into_iter())))
            .collect();
        Ok(Arc::new(Routing {
            generation: Some(generation),
            owners: Arc::new(owners),
            targets,
        }))
    }
}

impl Scan {
    /// The domains of one friend that I hold mail for, with their depths.
    pub(crate) fn domains_of<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a DomainDepth)> + 'a {
        let domains = match &self.result {
            Ok((_, domains)) => Some(domains),
            Err(_) => None,
        };
        let owners = &self.routing.owners;
        domains
            .into_iter()
            .flatten()
            .filter(move |(d, _)| owners.owner(d) == Some(name))
            .map(|(d, depth)| (d.as_str(), depth))
    }

    /// What I hold for one friend, for the flusher (`None`: unreadable).
    pub(crate) fn held_mark(&self, name: &str) -> Option<super::flush::Held> {
        match &self.result {
            // Deferred mail is what a flush moves; mail being delivered
            // now counts once it is deferred.
            Ok((peers, _)) => {
                Some(
                    peers
                        .get(name)
                        .map_or_else(Default::default, |d| super::flush::Held {
                            messages: d.by_queue.get("deferred").copied().unwrap_or(0),
                            newest: d.newest_arrival.unwrap_or(0),
                        }),
                )
            }
            Err(_) => None,
        }
    }

    /// The friend's domains I hold mail for.
    pub(crate) fn domains_with_mail(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .domains_of(name)
            .filter(|(_, d)| d.messages > 0)
            .map(|(d, _)| d.to_string())
            .collect();
        v.sort();
        v
    }
}

/// Reads the queue at `at`, tallied per friend and per domain; `previous`
/// is the routing of the scan before, kept if the routes did not change.
pub(crate) async fn read(
    postfix: Option<&Postfix>,
    store: &Store,
    at: i64,
    previous: Option<&Arc<Routing>>,
) -> Scan {
    let routing = Routing::now(store, at, previous).await;
    let (result, routing) = match (postfix, routing) {
        (None, _) => (
            Err("Postfix integration is off".to_string()),
            Arc::default(),
        ),
        (_, Err(e)) => (Err(e), Arc::default()),
        (Some(postfix), Ok(routing)) => {
            let mut tally = PeerTally::with_owners(Arc::clone(&routing.owners));
            let result = match postfix.read_queue(|l| tally.add_line(l)).await {
                Ok(()) => Ok((tally.peers, tally.domains.domains)),
                Err(e) => Err(e.to_string()),
            };
            (result, routing)
        }
    };
    Scan {
        at,
        taken: tokio::time::Instant::now(),
        result,
        routing,
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

/// My report for one friend, from a scan.
pub(crate) fn report_for(name: &str, scan: &Scan, mta_accepting: bool) -> QueueReport {
    let (held_total, domains) = match &scan.result {
        Err(_) => (None, Vec::new()),
        Ok((peers, _)) => {
            let total = peers.get(name).map(held).unwrap_or_default();
            let mut mine: Vec<(String, Held)> = scan
                .domains_of(name)
                .map(|(d, depth)| (d.to_string(), held(depth)))
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

/// `mxfed queue` from a scan, per peer.
pub(crate) fn queue_view(scan: &Scan) -> QueueView {
    let empty = Depths::new();
    let (known, error, peer_depths) = match &scan.result {
        Ok((p, _)) => (true, None, p),
        Err(e) => (false, Some(e.clone()), &empty),
    };
    let mut names: Vec<String> = scan.routing.owners.names().to_vec();
    names.sort();
    let peers = names
        .into_iter()
        .map(|name| {
            let total = peer_depths.get(&name).cloned().unwrap_or_default();
            let mut domains: Vec<QueueDomain> = scan
                .domains_of(&name)
                .map(|(domain, d)| QueueDomain {
                    domain: domain.to_string(),
                    messages: d.messages,
                    recipients: d.recipients,
                    bytes: d.bytes,
                    oldest_arrival: d.oldest_arrival.map(rfc3339),
                })
                .collect();
            domains.sort_by(|a, b| a.domain.cmp(&b.domain));
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
    QueueView {
        known,
        error,
        scanned_at: rfc3339(scan.at),
        peers,
    }
}

/// What I hold for one friend, for `status` (`None`: no scan yet).
pub(crate) fn held_for(scan: Option<&Scan>, name: &str) -> HeldStatus {
    let Some(scan) = scan else {
        return HeldStatus::default();
    };
    match &scan.result {
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
    }
}
