//! One reading of my queue ([`Scan`]) and what is made of it: the report a
//! friend gets ([`report_for`]), `mxfed queue` ([`queue_view`]) and the
//! held-mail part of `status` ([`held_for`]). Apart from [`read`], which
//! runs `postqueue -j` through [`crate::postfix`], nothing here does I/O.

use std::collections::HashMap;

use mxfed_proto::control::{HeldStatus, QueueDomain, QueuePeer, QueueView, ReasonCount};
use mxfed_proto::list::Entry;
use mxfed_proto::msg::{Held, QueueReport, MAX_REPORT_DOMAINS};

use crate::clock::rfc3339;
use crate::mailq::{DomainDepth, PeerTally, TOP_REASONS};
use crate::postfix::Postfix;
use crate::store::{RelayRoute, Store, ANY_EXPIRY};

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
    pub routes: Vec<RelayRoute>,
}

impl Scan {
    /// The entries relayed for one friend.
    pub(crate) fn entries_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.routes
            .iter()
            .filter(move |r| r.peer == name)
            .map(|r| &r.entry)
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
        match &self.result {
            Err(_) => Vec::new(),
            Ok((_, domains)) => self
                .entries_of(name)
                .filter(|e| {
                    domains
                        .get(e.domain.as_str())
                        .is_some_and(|d| d.messages > 0)
                })
                .map(|e| e.domain.to_string())
                .collect(),
        }
    }
}

/// Reads the queue at `at`, tallied per friend and per domain.
pub(crate) async fn read(postfix: Option<&Postfix>, store: &Store, at: i64) -> Scan {
    // Mail held for a list past its grace period is still held: count it.
    let routes = store.relay_routes(at, ANY_EXPIRY).await;
    let (result, routes) = match (postfix, routes) {
        (None, _) => (Err("Postfix integration is off".to_string()), Vec::new()),
        (_, Err(e)) => (Err(e.to_string()), Vec::new()),
        (Some(postfix), Ok(routes)) => {
            let mut tally = PeerTally::new(
                routes
                    .iter()
                    .map(|r| (r.peer.clone(), r.entry.domain.to_string())),
            );
            let result = match postfix.read_queue(|l| tally.add_line(l)).await {
                Ok(()) => Ok((tally.peers, tally.domains.domains)),
                Err(e) => Err(e.to_string()),
            };
            (result, routes)
        }
    };
    Scan {
        at,
        taken: tokio::time::Instant::now(),
        result,
        routes,
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

/// `mxfed queue` from a scan, per peer.
pub(crate) fn queue_view(scan: &Scan) -> QueueView {
    let empty = Depths::new();
    let (known, error, peer_depths, domain_depths) = match &scan.result {
        Ok((p, d)) => (true, None, p, d),
        Err(e) => (false, Some(e.clone()), &empty, &empty),
    };
    let mut names: Vec<String> = scan.routes.iter().map(|r| r.peer.clone()).collect();
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
